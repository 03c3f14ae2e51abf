//! Multi-head self-attention from the packed qkv projection as one custom op.
//!
//! `y = softmax(q kᵀ·scale) v` per (batch, head), with q, k, v read in place from the `[B, N, 3D]`
//! output of timm's `qkv` Linear (layout `(3, heads, head_dim)` on the last dim) and `y` written
//! heads-merged as `[B, N, D]`, ready for `proj`. The composition (reshape, permute, copy, three
//! `get`s, transpose back) materializes two copies forward, and its backward is three zero-padded
//! `cat`s plus adds; here the backward writes dq, dk, dv straight into one `[B, N, 3D]` gradient.
//! Every matrix product is a single-threaded gemm on strided views, parallel over the batch.

use super::cpu::{
    assume_init, assume_init_vec, cpu_tensor, filled_vec, storage_f32, uninit_vec, with_f32,
};
use super::softmax::{backward as softmax_backward, forward as softmax_forward};
use candle_core::{CpuStorage, CustomOp1, Error, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Mutex;

/// Attention over packed `[B, N, 3D]` qkv; keeps its softmax weights `[B, H, N, N]` for the
/// backward (the composition keeps the same tensor).
pub(super) struct QkvAttention {
    heads: usize,
    scale: f32,
    weights: Mutex<Option<Vec<f32>>>,
}

impl QkvAttention {
    pub(super) fn new(heads: usize, scale: f64) -> Self {
        Self {
            heads,
            scale: scale as f32,
            weights: Mutex::new(None),
        }
    }
}

/// A row-major view: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

impl View {
    fn new(data: &[f32], offset: usize, rs: usize, cs: usize) -> Self {
        Self {
            ptr: data[offset..].as_ptr(),
            rs,
            cs,
        }
    }

    /// The transposed view (no copy).
    fn t(self) -> Self {
        Self {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `dst[m, n] = beta · lhs[m, k] · rhs[k, n]` (dst written, not read: it may be
/// uninitialized), single-threaded.
///
/// # Safety
/// The views must address `m×k` and `k×n` matrices of initialized values inside live buffers,
/// and `dst` (row stride `dst_rs`, column stride 1) an `m×n` matrix inside `dst`'s slice, not
/// overlapping the inputs.
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    lhs: View,
    rhs: View,
    beta: f32,
) {
    debug_assert!(m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len());
    gemm(
        m,
        n,
        k,
        dst.as_mut_ptr().cast::<f32>(),
        1,
        dst_rs as isize,
        false,
        lhs.ptr,
        lhs.cs as isize,
        lhs.rs as isize,
        rhs.ptr,
        rhs.cs as isize,
        rhs.rs as isize,
        0.0,
        beta,
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// Sizes of one call: batch, tokens, heads, head dim, width.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    n: usize,
    h: usize,
    hd: usize,
    d: usize,
}

impl Dims {
    fn of(shape: &Shape, heads: usize) -> Result<Self> {
        let (b, n, three_d) = shape.dims3()?;
        if heads == 0 || !three_d.is_multiple_of(3 * heads) {
            candle_core::bail!(
                "qkv_attention: last dim {three_d} is not 3 × heads ({heads}) × head_dim"
            );
        }
        let d = three_d / 3;
        Ok(Self {
            b,
            n,
            h: heads,
            hd: d / heads,
            d,
        })
    }
}

/// One batch element: `y[N, D]` and the weights `p[H, N, N]` from `qkv[N, 3D]`, every element of
/// both written (`s` is `N×N` scratch).
fn forward_one(
    qkv: &[f32],
    y: &mut [MaybeUninit<f32>],
    p: &mut [MaybeUninit<f32>],
    s: &mut [MaybeUninit<f32>],
    dm: Dims,
    scale: f32,
) {
    let Dims { n, hd, d, .. } = dm;
    let rs = 3 * d;
    for (head, p) in p.chunks_exact_mut(n * n).enumerate() {
        let q = View::new(qkv, head * hd, rs, 1);
        let k = View::new(qkv, d + head * hd, rs, 1);
        let v = View::new(qkv, 2 * d + head * hd, rs, 1);
        // SAFETY: q, k, v are N×hd views of this element's qkv rows; s, p are N×N buffers and
        // the head's y columns lie inside y (N rows of D), none overlapping.
        // The N×N products write all of `s` and `p` before they are read as initialized; the
        // heads' `y` blocks cover its D columns.
        unsafe {
            matmul((n, n, hd), s, n, q, k.t(), scale);
            softmax_forward(assume_init(s), p, n);
            let pv = View::new(assume_init(p), 0, n, 1);
            matmul((n, hd, n), &mut y[head * hd..], d, pv, v, 1.0);
        }
    }
}

/// One batch element of the backward: `dqkv[N, 3D]` from `dy[N, D]`, the weights and qkv, every
/// element written (`dp`, `ds` are `N×N` scratch).
#[allow(clippy::too_many_arguments)]
fn backward_one(
    qkv: &[f32],
    p: &[f32],
    dy: &[f32],
    dqkv: &mut [MaybeUninit<f32>],
    dp: &mut [MaybeUninit<f32>],
    ds: &mut [MaybeUninit<f32>],
    dm: Dims,
    scale: f32,
) {
    let Dims { n, hd, d, .. } = dm;
    let rs = 3 * d;
    for (head, p) in p.chunks_exact(n * n).enumerate() {
        let q = View::new(qkv, head * hd, rs, 1);
        let k = View::new(qkv, d + head * hd, rs, 1);
        let v = View::new(qkv, 2 * d + head * hd, rs, 1);
        let g = View::new(dy, head * hd, d, 1);
        let pv = View::new(p, 0, n, 1);
        // SAFETY: as in `forward_one`; dq, dk, dv are the head's disjoint column blocks of dqkv,
        // which the heads cover; `dp` and `ds` are written whole before they are read.
        unsafe {
            // dP = dY·Vᵀ; dS = P ⊙ (dP − Σ dP⊙P) (softmax backward), scale folded in below.
            matmul((n, n, hd), dp, n, g, v.t(), 1.0);
            softmax_backward(p, assume_init(dp), ds, n);
            let dsv = View::new(assume_init(ds), 0, n, 1);
            // dQ = dS·K·scale, dK = dSᵀ·Q·scale, dV = Pᵀ·dY.
            matmul((n, hd, n), &mut dqkv[head * hd..], rs, dsv, k, scale);
            matmul(
                (n, hd, n),
                &mut dqkv[d + head * hd..],
                rs,
                dsv.t(),
                q,
                scale,
            );
            matmul(
                (n, hd, n),
                &mut dqkv[2 * d + head * hd..],
                rs,
                pv.t(),
                g,
                1.0,
            );
        }
    }
}

impl CustomOp1 for QkvAttention {
    fn name(&self) -> &'static str {
        "qkv-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = storage_f32(self.name(), storage, layout)?;
        let dm = Dims::of(layout.shape(), self.heads)?;
        let (n, d) = (dm.n, dm.d);
        let (y_len, p_len) = (dm.b * n * d, dm.b * dm.h * n * n);
        let (y, p) = if y_len == 0 || p_len == 0 {
            // Nothing to compute (no tokens, or head_dim 0): zeros of the right sizes.
            (vec![0.0f32; y_len], vec![0.0f32; p_len])
        } else {
            let (mut y, mut p) = (uninit_vec(y_len), uninit_vec(p_len));
            y.par_chunks_mut(n * d)
                .zip(p.par_chunks_mut(dm.h * n * n))
                .zip(qkv.par_chunks(n * 3 * d))
                .for_each_init(
                    || uninit_vec(n * n),
                    |s, ((y, p), qkv)| forward_one(qkv, y, p, s, dm, self.scale),
                );
            // SAFETY: `forward_one` writes every element of its batch element's `y` and `p`,
            // and the B (non-empty) elements cover both.
            unsafe { (assume_init_vec(y), assume_init_vec(p)) }
        };
        *self
            .weights
            .lock()
            .map_err(|_| Error::Msg("qkv_attention: lock".into()))? = Some(p);
        Ok((CpuStorage::F32(y), Shape::from((dm.b, n, d))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dm = Dims::of(arg.shape(), self.heads)?;
        let (n, d) = (dm.n, dm.d);
        let guard = self
            .weights
            .lock()
            .map_err(|_| Error::Msg("qkv_attention: lock".into()))?;
        let p = guard
            .as_ref()
            .ok_or_else(|| Error::Msg("qkv_attention: backward before forward".into()))?;
        let dqkv = with_f32(self.name(), arg, |qkv| {
            with_f32(self.name(), grad_res, |dy| {
                let fill = |dqkv: &mut [MaybeUninit<f32>]| {
                    if !dqkv.is_empty() && !p.is_empty() {
                        dqkv.par_chunks_mut(n * 3 * d)
                            .zip(qkv.par_chunks(n * 3 * d))
                            .zip(p.par_chunks(dm.h * n * n).zip(dy.par_chunks(n * d)))
                            .for_each_init(
                                || (uninit_vec(n * n), uninit_vec(n * n)),
                                |(dp, ds), ((dqkv, qkv), (p, dy))| {
                                    backward_one(qkv, p, dy, dqkv, dp, ds, dm, self.scale)
                                },
                            );
                    }
                };
                // SAFETY: `backward_one` writes every element of its batch element's `dqkv`, and
                // the B elements cover it; `p` is empty only when `dqkv` is (see the forward).
                Ok(unsafe { filled_vec(qkv.len(), fill) })
            })
        })?;
        cpu_tensor(dqkv, arg.shape()).map(Some)
    }
}

/// Multi-head self-attention from packed qkv (timm `Attention.forward` without dropout):
/// `[B, N, 3D]` (last dim `(3, heads, head_dim)`) → `softmax(q kᵀ/√head_dim) v` with heads merged,
/// `[B, N, D]`. Gradient reaches `qkv`. One custom op for f32 on the CPU, else the composition
/// of [`split_qkv_heads`] and [`attention_weights`].
pub fn qkv_attention(qkv: &Tensor, num_heads: usize) -> Result<Tensor> {
    let dm = Dims::of(qkv.shape(), num_heads)?;
    if super::fused(&[qkv]) {
        let scale = (dm.hd as f64).powf(-0.5);
        qkv.contiguous()?
            .apply_op1(QkvAttention::new(num_heads, scale))
    } else {
        let (q, k, v) = split_qkv_heads(qkv, num_heads)?;
        attention_weights(&q, &k)?
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((dm.b, dm.n, dm.d))
    }
}

/// Split `[B, N, 3D]` into q, k, v of shape `[B, H, N, hd]` (timm's `(3, heads, head_dim)` layout).
pub fn split_qkv_heads(qkv: &Tensor, num_heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let Dims { b, n, h, hd, .. } = Dims::of(qkv.shape(), num_heads)?;
    let qkv = qkv
        .reshape((b, n, 3, h, hd))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    Ok((qkv.get(0)?, qkv.get(1)?, qkv.get(2)?))
}

/// Attention weights `[B, H, N, N]` = softmax(q kᵀ / √hd) of `q`, `k` `[B, H, N, hd]`.
pub fn attention_weights(q: &Tensor, k: &Tensor) -> Result<Tensor> {
    let hd = q.dim(candle_core::D::Minus1)?;
    let scores = (q * (hd as f64).powf(-0.5))?.matmul(&k.t()?)?;
    super::softmax_last_dim(&scores)
}
