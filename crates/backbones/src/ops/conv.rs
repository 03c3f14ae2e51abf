//! 2-D convolution (NCHW, groups 1, dilation 1, zero padding, no bias) as im2col + GEMM, with a
//! hand-written backward.
//!
//! candle 0.11.1's CPU conv2d backward computes the input gradient with a direct
//! `conv_transpose2d` loop and the weight gradient with a second convolution, together 3.5–4.5×
//! the forward. Here a batch is split into chunks of samples; for each chunk the input patches
//! are unfolded into `cols` `[C·kh·kw, n]` (`n` = samples × output pixels) and
//! * forward: `y = W · cols` `[O, n]` (one GEMM, `W` seen as `[O, C·kh·kw]`), scattered to NCHW;
//! * backward (`cols` unfolded again, not kept from the forward): `dW += dy · colsᵀ` with `dy`
//!   gathered to `[O, n]`; `dx = col2im(Wᵀ · dy)`, or for stride 1 (padding < kernel) the
//!   equal and cheaper convolution of `dy` with the flipped, transposed kernel
//!   (`W'[c, o, ky, kx] = W[o, c, k−1−ky, k−1−kx]`, padding `k−1−p`), which needs no fold and no
//!   `[C·k², n]` buffer.
//!
//! Output planes of at least 8×8 (a CIFAR ResNet's first three stages, and their input
//! gradients) run sample by sample, one GEMM thread per sample, the GEMM written straight into
//! the sample's NCHW output:
//! * stride 1, ≥ 16 input channels, planes ≥ 32×32 ([`conv_shifted`]): no unfold at all, `kh·kw`
//!   GEMMs of the kernel slice `W[:, :, ky, kx]` with the zero-padded input shifted by
//!   `(ky, kx)`; the unfolded matrix (`kh·kw` times the input) would not stay in cache there;
//! * 1×1, stride 1, no padding ([`conv_pointwise`]): one GEMM on the sample in place;
//! * otherwise ([`conv_unfolded`]; strided, a stem's 3 channels, 8×8 and 16×16 planes): the
//!   sample's patches unfolded in cache, then one GEMM with `K = C·kh·kw`; its input gradient
//!   folds `Wᵀ · dy` sample by sample too ([`input_grad_unfolded`]).
//!
//! The GEMMs are candle's CPU matmul or the `gemm` crate directly (parallel over both cores, or
//! one thread per sample for the per-sample forms); unfolding, folding and the NCHW gathers are
//! rayon-parallel over rows or planes.

use super::cpu::{assume_init_vec, cpu_tensor, filled_vec, uninit_vec, write_slice, write_zeros};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, DeviceLocation, Error, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Output columns (samples × output pixels) a chunk should reach, so the GEMMs are wide enough
/// to amortize packing the weight.
const MIN_CHUNK_COLUMNS: usize = 2048;
/// Most elements of one chunk's unfolded patches (8 MiB of f32: small chunks stay in cache,
/// which matters more than GEMM width for the wide early layers).
const MAX_CHUNK_COLS: usize = 1 << 21;

/// `y = conv2d(x, weight)` of `x` `[B, C, H, W]` with `weight` `[O, C, kh, kw]` (torch
/// `F.conv2d(x, weight, stride=stride, padding=padding)`); gradients reach `x` and `weight`.
///
/// f32 CPU tensors take the im2col + GEMM op of this module; other dtypes and devices take
/// candle's `conv2d` (with candle's backward).
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    Geometry::new(x.shape(), weight.shape(), stride, padding)?;
    if super::fused(&[x, weight]) {
        x.contiguous()?
            .apply_op2(&weight.contiguous()?, Conv2d { stride, padding })
    } else {
        x.conv2d(weight, padding, stride, 1, 1)
    }
}

/// The convolution as a custom op over `(x, weight)`.
#[derive(Debug, Clone, Copy)]
struct Conv2d {
    stride: usize,
    padding: usize,
}

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    /// Checks the shapes; output size `⌊(n + 2p − k)/s⌋ + 1` per spatial dim.
    fn new(x: &Shape, k: &Shape, stride: usize, padding: usize) -> Result<Self> {
        let (b, c, h, w) = x.dims4()?;
        let (o, kc, kh, kw) = k.dims4()?;
        if kc != c
            || stride == 0
            || kh == 0
            || kw == 0
            || h + 2 * padding < kh
            || w + 2 * padding < kw
        {
            candle_core::bail!(
                "conv2d: input {:?}, kernel {:?}, stride {stride}, padding {padding} do not fit (need kernel [O, C, kh, kw] with the input's C, stride > 0, kernel ≤ size + 2·padding)",
                x.dims(),
                k.dims()
            );
        }
        let out = |n: usize, k: usize| (n + 2 * padding - k) / stride + 1;
        Ok(Self {
            b,
            c,
            h,
            w,
            o,
            kh,
            kw,
            oh: out(h, kh),
            ow: out(w, kw),
            stride,
            padding,
        })
    }

    /// Rows of the unfolded patches: `C·kh·kw` (the GEMMs' inner dim for the forward).
    fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// The geometry of the input gradient of a stride-1 convolution as a convolution of `dy`
    /// (`O` channels, `OH×OW`) with the flipped kernel (`C` outputs, padding `k − 1 − p`), when
    /// that applies (square kernel, `p < k`) and pays (`C ≥ 16` rows for the GEMM; a stem's 3
    /// input channels fold faster).
    fn adjoint(&self) -> Option<Self> {
        let fits = self.stride == 1 && self.kh == self.kw && self.padding < self.kh;
        (fits && self.c >= MIN_SHIFTED_CHANNELS).then_some(Self {
            c: self.o,
            h: self.oh,
            w: self.ow,
            o: self.c,
            oh: self.h,
            ow: self.w,
            padding: self.kh - 1 - self.padding,
            ..*self
        })
    }

    /// Output pixels per plane.
    fn plane(&self) -> usize {
        self.oh * self.ow
    }

    /// Samples per chunk: enough for [`MIN_CHUNK_COLUMNS`] columns, few enough for
    /// [`MAX_CHUNK_COLS`] unfolded elements, at least 1, balanced over the batch.
    fn chunk(&self) -> usize {
        let per_sample = (self.rows() * self.plane()).max(1);
        let want = MIN_CHUNK_COLUMNS
            .div_ceil(self.plane().max(1))
            .min(MAX_CHUNK_COLS / per_sample)
            .clamp(1, self.b.max(1));
        let chunks = self.b.div_ceil(want).max(1);
        self.b.div_ceil(chunks).max(1)
    }

    /// The output positions `[lo, hi)` along a dim whose input index `o·s + k − p` lies in
    /// `[0, n)`, for kernel offset `k`.
    fn valid(&self, k: usize, n: usize, out: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        let hi = if n + p > k {
            ((n + p - k - 1) / s + 1).min(out)
        } else {
            0
        };
        let lo = p.saturating_sub(k).div_ceil(s).min(hi);
        (lo, hi)
    }
}

/// Unfolds `bc` samples `x` `[bc, C, H, W]` into `cols` `[C·kh·kw, bc·OH·OW]`:
/// `cols[(c, ky, kx), (i, oy, ox)] = x[i, c, oy·s + ky − p, ox·s + kx − p]` (0 in the padding),
/// rayon-parallel over rows.
fn im2col(x: &[f32], g: &Geometry, bc: usize, cols: &mut [f32]) {
    cols.par_chunks_mut(bc * g.plane())
        .enumerate()
        .for_each(|(r, row)| im2col_row(x, g, r, row));
}

/// [`im2col`] of one sample on the calling thread.
fn im2col_sample(x: &[f32], g: &Geometry, cols: &mut [f32]) {
    for (r, row) in cols.chunks_exact_mut(g.plane()).enumerate() {
        im2col_row(x, g, r, row);
    }
}

/// Row `r` = `(c, ky, kx)` of the unfolded patches of the samples `x`, over their output pixels.
fn im2col_row(x: &[f32], g: &Geometry, r: usize, row: &mut [f32]) {
    let (s, p) = (g.stride, g.padding);
    let (ci, ky, kx) = (r / (g.kh * g.kw), r / g.kw % g.kh, r % g.kw);
    let (y0, y1) = g.valid(ky, g.h, g.oh);
    let (x0, x1) = g.valid(kx, g.w, g.ow);
    for (i, out) in row.chunks_exact_mut(g.plane()).enumerate() {
        let plane = &x[(i * g.c + ci) * g.h * g.w..][..g.h * g.w];
        for (oy, seg) in out.chunks_exact_mut(g.ow).enumerate() {
            if oy < y0 || oy >= y1 {
                seg.fill(0.0);
                continue;
            }
            let src = &plane[(oy * s + ky - p) * g.w..][..g.w];
            seg[..x0].fill(0.0);
            seg[x1..].fill(0.0);
            if s == 1 {
                seg[x0..x1].copy_from_slice(&src[x0 + kx - p..x1 + kx - p]);
            } else {
                for (ox, v) in seg[x0..x1].iter_mut().enumerate() {
                    *v = src[(x0 + ox) * s + kx - p];
                }
            }
        }
    }
}

/// Folds `dcols` `[C·kh·kw, bc·OH·OW]` back onto `dx` `[bc, C, H, W]` (the adjoint of
/// [`im2col`]: every patch element adds to the input pixel it was read from), rayon-parallel over
/// planes.
fn col2im(dcols: &[f32], g: &Geometry, bc: usize, dx: &mut [f32]) {
    dx.par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(pi, plane)| {
            plane.fill(0.0);
            col2im_plane(dcols, g, bc, pi, plane);
        });
}

/// [`col2im`] of one sample (`bc` = 1) on the calling thread, writing every plane of `dx`.
fn col2im_sample(dcols: &[f32], g: &Geometry, dx: &mut [MaybeUninit<f32>]) {
    for (pi, plane) in dx.chunks_exact_mut(g.h * g.w).enumerate() {
        col2im_plane(dcols, g, 1, pi, write_zeros(plane));
    }
}

/// Plane `pi` = `(sample, channel)` of [`col2im`], added onto `plane`.
fn col2im_plane(dcols: &[f32], g: &Geometry, bc: usize, pi: usize, plane: &mut [f32]) {
    let (l, n) = (g.plane(), bc * g.plane());
    let (s, p) = (g.stride, g.padding);
    let (i, ci) = (pi / g.c, pi % g.c);
    for ky in 0..g.kh {
        let (y0, y1) = g.valid(ky, g.h, g.oh);
        for kx in 0..g.kw {
            let (x0, x1) = g.valid(kx, g.w, g.ow);
            let r = (ci * g.kh + ky) * g.kw + kx;
            let src = &dcols[r * n + i * l..][..l];
            for oy in y0..y1 {
                let dst = &mut plane[(oy * s + ky - p) * g.w..][..g.w];
                let seg = &src[oy * g.ow + x0..oy * g.ow + x1];
                if s == 1 {
                    for (d, &v) in dst[x0 + kx - p..x1 + kx - p].iter_mut().zip(seg) {
                        *d += v;
                    }
                } else {
                    for (j, &v) in seg.iter().enumerate() {
                        dst[(x0 + j) * s + kx - p] += v;
                    }
                }
            }
        }
    }
}

/// `[bc, O, L]` (NCHW planes) → `[O, bc·L]`.
fn gather_planes(dy: &[f32], o: usize, l: usize, bc: usize, out: &mut [f32]) {
    out.par_chunks_mut(bc * l)
        .enumerate()
        .for_each(|(oc, row)| {
            for (i, seg) in row.chunks_exact_mut(l).enumerate() {
                seg.copy_from_slice(&dy[(i * o + oc) * l..][..l]);
            }
        });
}

/// `[O, bc·L]` → `[bc, O, L]` (NCHW planes), writing every element of `y`.
fn scatter_planes(src: &[f32], o: usize, l: usize, bc: usize, y: &mut [MaybeUninit<f32>]) {
    y.par_chunks_mut(l).enumerate().for_each(|(pi, seg)| {
        let (i, oc) = (pi / o, pi % o);
        write_slice(seg, &src[oc * bc * l + i * l..][..l]);
    });
}

/// `lhs · rhs` for `[m, k]` and `[k, n]` matrices stored in CPU storages with the given layouts
/// (any row/column strides), as an `[m, n]` row-major vector (candle's CPU GEMM).
fn matmul(
    lhs: &CpuStorage,
    lhs_l: &Layout,
    rhs: &CpuStorage,
    rhs_l: &Layout,
    (m, n, k): (usize, usize, usize),
) -> Result<Vec<f32>> {
    match lhs.matmul(rhs, (1, m, n, k), lhs_l, rhs_l)? {
        CpuStorage::F32(v) => Ok(v),
        other => Err(Error::UnexpectedDType {
            msg: "conv2d: matmul result",
            expected: candle_core::DType::F32,
            got: other.dtype(),
        }
        .bt()),
    }
}

/// The f32 elements of a CPU storage seen through a contiguous layout.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or(Error::RequiresContiguous { op: "conv2d" })?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// A vector's storage.
fn storage(v: Vec<f32>) -> CpuStorage {
    CpuStorage::F32(v)
}

/// The vector of a storage made by [`storage`].
fn as_mut(s: &mut CpuStorage) -> Result<&mut [f32]> {
    match s {
        CpuStorage::F32(v) => Ok(v),
        other => Err(Error::UnexpectedDType {
            msg: "conv2d: buffer",
            expected: candle_core::DType::F32,
            got: other.dtype(),
        }
        .bt()),
    }
}

/// Runs `f` on the CPU storage of the contiguous tensor `t` and its layout.
fn with_cpu<R>(t: &Tensor, f: impl FnOnce(&CpuStorage, &Layout) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (s, layout) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(cpu) => f(cpu, layout),
        _ => Err(Error::DeviceMismatchBinaryOp {
            lhs: t.device().location(),
            rhs: DeviceLocation::Cpu,
            op: "conv2d",
        }
        .bt()),
    }
}

/// `W'[c, o, ky, kx] = W[o, c, kh−1−ky, kw−1−kx]`: the kernel of the adjoint convolution.
fn flip_transpose(w: &[f32], g: &Geometry) -> Vec<f32> {
    let k2 = g.kh * g.kw;
    let mut out = vec![0.0f32; w.len()];
    out.par_chunks_mut(g.o * k2)
        .enumerate()
        .for_each(|(ci, rows)| {
            for (oc, dst) in rows.chunks_exact_mut(k2).enumerate() {
                let src = &w[(oc * g.c + ci) * k2..][..k2];
                for (d, v) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = *v;
                }
            }
        });
    out
}

/// Output pixels per plane from which a convolution runs sample by sample, one GEMM thread per
/// sample, with GEMMs `N` = a plane wide ([`conv_shifted`] or [`conv_unfolded`]). Smaller planes
/// make these GEMMs too narrow and take the chunked im2col path. Measured on a CIFAR ResNet-18
/// at batch 250 (`cargo bench -p multimix-backbones --bench conv`): per sample is faster for
/// 8×8 outputs (stride 2 from 16×16: forward 74 → 66 ms, input gradient 90 → 76 ms), slower for
/// 4×4 (124 → 134 ms).
const MIN_PER_SAMPLE_PLANE: usize = 64;

/// Output pixels per plane from which a stride-1 convolution with at least
/// [`MIN_SHIFTED_CHANNELS`] inputs takes [`conv_shifted`] rather than [`conv_unfolded`]: at
/// 32×32 (64 channels) unfolding a sample's patches (2.4 MB) leaves the cache (shifted 137 ms,
/// unfolded 173 ms), at 16×16 (128 channels, 1.2 MB) it does not and unfolding's one long-`K`
/// GEMM beats nine short ones (shifted 140 ms, unfolded 131 ms).
const MIN_SHIFTED_PLANE: usize = 1024;

/// Input channels from which [`conv_shifted`] beats unfolding: its `kh·kw` GEMMs have `K = C`,
/// so a 3-channel stem's would each re-read and re-write the whole output for 3 multiply-adds.
const MIN_SHIFTED_CHANNELS: usize = 16;

/// `dst = lhs · rhs` (or `dst += lhs · rhs` if `accumulate`) on the calling thread, for an
/// `[m, n]` row-major `dst` and `[m, k]`, `[k, n]` operands given as slices with (row, column)
/// strides in elements.
///
/// # Panics
/// If an operand's last element lies outside its slice.
fn gemm_into(
    dst: &mut [f32],
    mnk: (usize, usize, usize),
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    accumulate: bool,
) {
    // SAFETY: `dst` is `dst.len()` initialized, writable values.
    unsafe { gemm_raw((dst.as_mut_ptr(), dst.len()), mnk, lhs, rhs, accumulate) }
}

/// `dst = lhs · rhs` as [`gemm_into`], into a destination that may be uninitialized: every one of
/// its first `m·n` elements is written, none read.
fn gemm_uninit(
    dst: &mut [MaybeUninit<f32>],
    mnk: (usize, usize, usize),
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
) {
    // SAFETY: `dst` is `dst.len()` writable values, not read as `read_dst` is false.
    unsafe { gemm_raw((dst.as_mut_ptr().cast(), dst.len()), mnk, lhs, rhs, false) }
}

/// The `gemm` crate's single-threaded `dst (+)= lhs · rhs`, bounds-checked against the slices.
///
/// # Safety
/// `dst.0` must point to `dst.1` writable f32 values, initialized if `read_dst`.
///
/// # Panics
/// If `m·n > dst.1` or an operand's last element lies outside its slice.
unsafe fn gemm_raw(
    (dst, dst_len): (*mut f32, usize),
    (m, n, k): (usize, usize, usize),
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
    read_dst: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| {
        (rows - 1) * rs + cols.saturating_sub(1) * cs
    };
    assert!(m * n <= dst_len, "gemm: dst");
    assert!(
        k == 0 || last(m, lhs_rs, k, lhs_cs) < lhs.len(),
        "gemm: lhs"
    );
    assert!(
        k == 0 || last(k, rhs_rs, n, rhs_cs) < rhs.len(),
        "gemm: rhs"
    );
    // SAFETY: the asserts above keep every element gemm touches inside its slice: dst (i, j) at
    // i·n + j < m·n, lhs (i, p) at i·lhs_rs + p·lhs_cs, rhs (p, j) at p·rhs_rs + j·rhs_cs. With
    // `read_dst = false` gemm writes every dst element without reading it (k = 0 included);
    // otherwise the caller guarantees dst is initialized.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            read_dst,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `y = conv(x, W)` sample by sample (in parallel, one GEMM thread each), for planes the shifted
/// form does not take (strided, or a stem's few channels): the sample's patches unfolded to
/// `[C·kh·kw, OH·OW]` (in cache at these sizes), then one GEMM with the kernel straight into the
/// sample's NCHW output `[O, OH·OW]`.
fn conv_unfolded(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    let (rows, l) = (g.rows(), g.plane());
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(g.o * l)
            .zip(x.par_chunks(g.c * g.h * g.w))
            .for_each_init(
                || vec![0.0f32; rows * l],
                |cols, (y, x)| {
                    im2col_sample(x, g, cols);
                    gemm_uninit(y, (g.o, l, rows), (w, rows, 1), (cols, l, 1));
                },
            );
    };
    // SAFETY: the GEMM writes all `O·L` values of each sample's chunk, and the B chunks cover
    // the output (the caller has B·O·L > 0, so the chunks are non-empty).
    unsafe { filled_vec(g.b * g.o * l, fill) }
}

/// `y = W · x` per sample for a 1×1, stride-1, unpadded convolution (a bottleneck block's): the
/// sample `[C, H·W]` is its own patch matrix, so one GEMM per sample reads it in place and writes
/// the NCHW output, with no copy on either side.
fn conv_pointwise(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    let l = g.plane();
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(g.o * l)
            .zip(x.par_chunks(g.c * l))
            .for_each(|(y, x)| gemm_uninit(y, (g.o, l, g.c), (w, g.c, 1), (x, l, 1)));
    };
    // SAFETY: the GEMM writes all `O·L` values of each sample's chunk, and the B chunks cover
    // the output (the caller has B·O·L > 0, so the chunks are non-empty).
    unsafe { filled_vec(g.b * g.o * l, fill) }
}

/// The input gradient of [`conv_unfolded`]'s convolution, sample by sample: `Wᵀ · dy` of the
/// sample's NCHW output gradient `[O, OH·OW]` as patches `[C·kh·kw, OH·OW]`, folded onto `dx`.
fn input_grad_unfolded(dy: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    let (rows, l) = (g.rows(), g.plane());
    let fill = |dx: &mut [MaybeUninit<f32>]| {
        dx.par_chunks_mut(g.c * g.h * g.w)
            .zip(dy.par_chunks(g.o * l))
            .for_each_init(
                || vec![0.0f32; rows * l],
                |dcols, (dx, dy)| {
                    gemm_into(dcols, (rows, l, g.o), (w, 1, rows), (dy, l, 1), false);
                    col2im_sample(dcols, g, dx);
                },
            );
    };
    // SAFETY: `col2im_sample` writes every plane of its sample, and the B samples cover `dx`
    // (the caller has a non-empty `dy`, so B·C·H·W > 0 and the chunks are non-empty).
    unsafe { filled_vec(g.b * g.c * g.h * g.w, fill) }
}

/// `y = conv(x, W)` of a stride-1 convolution without unfolding the patches, sample by sample
/// (in parallel, one GEMM thread each): the sample zero-padded to `x_pad` `[C, Hp·Wq]`, then
/// `y_pad[o, q] = Σ_{ky,kx} W[o, :, ky, kx] · x_pad[:, q + ky·Wq + kx]`, `kh·kw` GEMMs with
/// `K = C` accumulated on `OH` output rows of width `Wq`, whose last `Wq − OW` columns are
/// discarded. Reads `C·Hp·Wq` padded values per sample where im2col writes `C·kh·kw·OH·OW`.
///
/// Rows are `Wq = W + p` wide: the `p` zero columns that open each row are also the right
/// padding of the row before (a read past a row's end lands in them), so `p` columns per
/// output row are computed and dropped, not `2p` (at 32×32, 3 % of the GEMM columns, not 6 %).
/// That needs `p < kw` (else `OW > Wq`); other paddings keep both sides, `Wq = W + 2p`.
fn conv_shifted(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    let p = g.padding;
    let (hp, wq) = (g.h + 2 * p, g.w + if p < g.kw { p } else { 2 * p });
    let (pp, k2) = (hp * wq, g.kh * g.kw);
    let n = g.oh * wq;
    let buffers = || (vec![0.0f32; g.c * pp + g.kw], vec![0.0f32; g.o * n]);
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(g.o * g.plane())
            .zip(x.par_chunks(g.c * g.h * g.w))
            .for_each_init(buffers, |(xp, yp), (y, x)| {
                // Pixel (y, x) of a channel at (y + p)·Wq + p + x; the rest stays 0.
                for (xp, x) in xp.chunks_exact_mut(pp).zip(x.chunks_exact(g.h * g.w)) {
                    for (row, src) in xp[p * wq..].chunks_exact_mut(wq).zip(x.chunks_exact(g.w)) {
                        row[p..p + g.w].copy_from_slice(src);
                    }
                }
                for t in 0..k2 {
                    let (ky, kx) = (t / g.kw, t % g.kw);
                    // lhs (o, c) = W[o, c, ky, kx]; rhs (c, q) = x_pad[c·pp + ky·Wq + kx + q], whose
                    // last read is (C−1)·pp + (kh−1)·Wq + kw−1 + OH·Wq − 1 = C·pp + kw − 2
                    // (OH = Hp − kh + 1), inside the kw values of slack.
                    gemm_into(
                        yp,
                        (g.o, n, g.c),
                        (&w[t..], k2 * g.c, k2),
                        (&xp[ky * wq + kx..], pp, 1),
                        t > 0,
                    );
                }
                for (out, src) in y.chunks_exact_mut(g.ow).zip(yp.chunks_exact(wq)) {
                    write_slice(out, &src[..g.ow]);
                }
            });
    };
    // SAFETY: each sample's chunk is `O·OH` rows of `OW`, each written from the GEMM's rows (`yp`
    // holds `O·OH` rows of `Wq ≥ OW`), and the B chunks cover the output (B·O·L > 0).
    unsafe { filled_vec(g.b * g.o * g.plane(), fill) }
}

/// `y = conv(x, W)` for the whole batch: [`conv_shifted`] for a stride-1 convolution with large
/// planes, else chunk by chunk: unfold, one GEMM with the kernel (the row-major
/// `[O, C·kh·kw]` matrix at `w_offset` of `ws`), scatter to NCHW.
fn conv_forward(x: &[f32], ws: &CpuStorage, w_offset: usize, g: &Geometry) -> Result<Vec<f32>> {
    let (rows, l) = (g.rows(), g.plane());
    let w_l = Layout::contiguous_with_offset((g.o, rows), w_offset);
    if l >= MIN_PER_SAMPLE_PLANE && g.b * g.o * l > 0 {
        let w = f32_slice(ws, &w_l)?;
        let pointwise = (g.kh, g.kw, g.stride, g.padding) == (1, 1, 1, 0);
        let shifted = g.stride == 1 && g.c >= MIN_SHIFTED_CHANNELS && l >= MIN_SHIFTED_PLANE;
        return Ok(if pointwise {
            conv_pointwise(x, w, g)
        } else if shifted {
            conv_shifted(x, w, g)
        } else {
            conv_unfolded(x, w, g)
        });
    }
    let mut y = uninit_vec(g.b * g.o * l);
    if y.is_empty() {
        return Ok(Vec::new());
    }
    let bc = g.chunk();
    let mut cols = storage(vec![0.0f32; rows * bc * l]);
    let sample = g.c * g.h * g.w;
    for b0 in (0..g.b).step_by(bc) {
        let bc = bc.min(g.b - b0);
        let n = bc * l;
        im2col(
            &x[b0 * sample..][..bc * sample],
            g,
            bc,
            &mut as_mut(&mut cols)?[..rows * n],
        );
        let out = matmul(
            ws,
            &w_l,
            &cols,
            &Layout::contiguous((rows, n)),
            (g.o, n, rows),
        )?;
        scatter_planes(&out, g.o, l, bc, &mut y[b0 * g.o * l..][..n * g.o]);
    }
    // SAFETY: the chunks `b0..b0 + bc` cover the batch, and each scatter writes its chunk's
    // `bc·O·L` outputs.
    Ok(unsafe { assume_init_vec(y) })
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d-im2col"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.shape(), l2.shape(), self.stride, self.padding)?;
        f32_slice(s2, l2)?;
        let y = conv_forward(f32_slice(s1, l1)?, s2, l2.start_offset(), &g)?;
        Ok((storage(y), Shape::from((g.b, g.o, g.oh, g.ow))))
    }

    /// `dW = Σ_chunks dy · colsᵀ`; `dx` = the adjoint convolution of `dy` (stride 1) or
    /// `col2im(Wᵀ · dy)`, sample by sample for wide planes ([`input_grad_unfolded`]). A gradient is computed only for an argument that tracks gradients
    /// (an input image's is skipped).
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geometry::new(x.shape(), weight.shape(), self.stride, self.padding)?;
        let (need_dx, need_dw) = (x.track_op(), weight.track_op());
        let (dx, dw) = with_cpu(x, |xs, xl| {
            with_cpu(weight, |ws, wl| {
                with_cpu(grad_res, |dys, dyl| {
                    let (x, dy) = (f32_slice(xs, xl)?, f32_slice(dys, dyl)?);
                    if dy.is_empty() {
                        let zeros = |n: usize, need: bool| need.then(|| vec![0.0f32; n]);
                        return Ok((zeros(x.len(), need_dx), zeros(g.o * g.rows(), need_dw)));
                    }
                    let adjoint = g.adjoint().filter(|_| need_dx);
                    let dx = match &adjoint {
                        Some(ga) => {
                            let wt = storage(flip_transpose(f32_slice(ws, wl)?, &g));
                            Some(conv_forward(dy, &wt, 0, ga)?)
                        }
                        None if need_dx && g.plane() >= MIN_PER_SAMPLE_PLANE => {
                            Some(input_grad_unfolded(dy, f32_slice(ws, wl)?, &g))
                        }
                        None => None,
                    };
                    let fold = need_dx && dx.is_none();
                    let (dw, dx_fold) =
                        backward_chunks(x, (dys, dyl), (ws, wl), &g, need_dw, fold)?;
                    Ok((dx.or(dx_fold), dw))
                })
            })
        })?;
        Ok((
            dx.map(|v| cpu_tensor(v, x.shape())).transpose()?,
            dw.map(|v| cpu_tensor(v, weight.shape())).transpose()?,
        ))
    }
}

/// `(dW, dx)`, each when asked for.
type Grads = (Option<Vec<f32>>, Option<Vec<f32>>);

/// The chunked part of the backward: `dW = Σ dy · colsᵀ` (if `need_dw`) and, if `fold`,
/// `dx = col2im(Wᵀ · dy)`; `dy` and `W` are contiguous CPU storages with their layouts.
fn backward_chunks(
    x: &[f32],
    (dys, dyl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
    g: &Geometry,
    need_dw: bool,
    fold: bool,
) -> Result<Grads> {
    let (rows, l) = (g.rows(), g.plane());
    let dy = f32_slice(dys, dyl)?;
    let mut dw = need_dw.then(|| vec![0.0f32; g.o * rows]);
    let mut dx = fold.then(|| vec![0.0f32; x.len()]);
    if !need_dw && !fold {
        return Ok((dw, dx));
    }
    // Wᵀ as a [C·kh·kw, O] view of the row-major [O, C·kh·kw] kernel.
    let wt_l = Layout::new((rows, g.o).into(), vec![1, rows], wl.start_offset());
    let bc = g.chunk();
    let mut cols = storage(vec![0.0f32; if need_dw { rows * bc * l } else { 0 }]);
    let mut dyt = storage(vec![0.0f32; if bc > 1 { g.o * bc * l } else { 0 }]);
    let sample = g.c * g.h * g.w;
    for b0 in (0..g.b).step_by(bc) {
        let bc = bc.min(g.b - b0);
        let n = bc * l;
        // dy of the chunk as [O, n]: in place for one sample, else gathered.
        let (dm, dm_l) = if bc == 1 {
            let offset = dyl.start_offset() + b0 * g.o * l;
            (dys, Layout::contiguous_with_offset((g.o, n), offset))
        } else {
            let dy_chunk = &dy[b0 * g.o * l..][..g.o * n];
            gather_planes(dy_chunk, g.o, l, bc, &mut as_mut(&mut dyt)?[..g.o * n]);
            (&dyt, Layout::contiguous((g.o, n)))
        };
        if let Some(dw) = dw.as_mut() {
            let x_chunk = &x[b0 * sample..][..bc * sample];
            im2col(x_chunk, g, bc, &mut as_mut(&mut cols)?[..rows * n]);
            // colsᵀ as an [n, C·kh·kw] view of the row-major [C·kh·kw, n] patches.
            let cols_t = Layout::new((n, rows).into(), vec![1, n], 0);
            let dw_chunk = matmul(dm, &dm_l, &cols, &cols_t, (g.o, rows, n))?;
            for (a, d) in dw.iter_mut().zip(&dw_chunk) {
                *a += d;
            }
        }
        if let Some(dx) = dx.as_mut() {
            let dcols = matmul(ws, &wt_l, dm, &dm_l, (rows, n, g.o))?;
            col2im(&dcols, g, bc, &mut dx[b0 * sample..][..bc * sample]);
        }
    }
    Ok((dw, dx))
}
