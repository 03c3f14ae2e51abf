//! CPU f32 data access, the row partition and the vectorizable math shared by the loss ops.
//!
//! Everything numeric is `#[inline(always)]` so it is compiled into the callers' AVX2 versions.

use candle_core::{CpuStorage, DeviceLocation, Error, Layout, Result, Shape, Storage, Tensor};

/// Elements below which a parallel task is not worth its scheduling cost.
const MIN_TASK_ELEMS: usize = 8 * 1024;
/// Parallel tasks per rayon thread, so a busy core does not stall the others.
const TASKS_PER_THREAD: usize = 8;
/// Independent accumulators of the reductions: enough for the compiler to vectorize the loop.
const LANES: usize = 8;

/// Rows per parallel task for `rows` rows of `row_len` elements (at least 1).
pub(super) fn task_rows(rows: usize, row_len: usize) -> usize {
    let tasks = TASKS_PER_THREAD * rayon::current_num_threads();
    let by_tasks = rows.div_ceil(tasks);
    let by_size = MIN_TASK_ELEMS.div_ceil(row_len.max(1));
    by_tasks.max(by_size).max(1)
}

/// `(rows, row_len)` of a shape seen as `[leading dims…, last dim]` (rank ≥ 1).
pub(super) fn rows_and_len(shape: &Shape) -> (usize, usize) {
    match shape.dims().split_last() {
        Some((&len, lead)) => (lead.iter().product(), len),
        None => (1, 1),
    }
}

/// The f32 elements of a storage seen through a contiguous layout.
pub(super) fn storage_f32<'a>(
    op: &'static str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or(Error::RequiresContiguous { op })?;
    Ok(&data[start..end])
}

/// Runs `f` on the f32 elements of the CPU tensor `t` in row-major order (copied only if `t` is
/// not contiguous).
pub(super) fn with_f32<R>(
    op: &'static str,
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(storage_f32(op, cpu, layout)?),
        _ => Err(Error::DeviceMismatchBinaryOp {
            lhs: t.device().location(),
            rhs: DeviceLocation::Cpu,
            op,
        }
        .bt()),
    }
}

/// A strided f32 matrix view: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A contiguous row-major `[rows, cols]` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// True when every element `(i, j)` lies inside `data`.
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = a · b` into a contiguous row-major `dst` of `[a.rows, b.cols]` (the gemm crate, as
/// candle's CPU matmul, rayon-parallel when there is more than one thread).
pub(super) fn matmul(a: Mat, b: Mat, dst: &mut [f32]) {
    assert!(dst.len() == a.rows * b.cols);
    // SAFETY: `dst` is exclusively borrowed and holds `a.rows · b.cols` elements.
    unsafe { matmul_raw(a, b, dst.as_mut_ptr()) }
}

/// `a · b` as a new row-major `[a.rows, b.cols]` vector, written once by the product (not zeroed
/// first: at the sizes of dense MultiMix, a memset of the product's size).
pub(super) fn matmul_new(a: Mat, b: Mat) -> Vec<f32> {
    let len = a.rows * b.cols;
    let mut dst = Vec::with_capacity(len);
    // SAFETY: the buffer has room for `len` elements and is not aliased; `matmul_raw` writes all
    // of them, so the length may then cover them.
    unsafe {
        matmul_raw(a, b, dst.as_mut_ptr());
        dst.set_len(len);
    }
    dst
}

/// `dst = a · b` for a row-major `dst` of `[a.rows, b.cols]`; writes every element of `dst`
/// and reads none.
///
/// # Safety
/// `dst` must be valid for writes of `a.rows · b.cols` f32 values and not aliased.
unsafe fn matmul_raw(a: Mat, b: Mat, dst: *mut f32) {
    assert!(a.cols == b.rows && a.fits() && b.fits());
    if a.rows == 0 || b.cols == 0 {
        return;
    }
    if a.cols == 0 {
        // SAFETY: the caller guarantees room for the `a.rows · b.cols` elements.
        unsafe { std::ptr::write_bytes(dst, 0, a.rows * b.cols) };
        return;
    }
    let parallelism = match rayon::current_num_threads() {
        1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    // SAFETY: the assert above keeps every element read of `a` and `b` inside their slices; the
    // caller guarantees `dst` for every element written; `read_dst = false`, so gemm writes each
    // element of `dst` without reading it.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst,
            1,
            b.cols as isize,
            false,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Targets `[b, c]` whose rows are a constant plus at most one spike,
/// `Y_i = off_i·1 + spike_i·e_{class_i}` (one-hot targets, label-smoothed or not): mixing them
/// costs `O(b)` per tuple instead of `O(b·c)`.
pub(super) struct SpikedRows {
    /// The constant of each row.
    pub off: Vec<f32>,
    /// The spike of each row (`on − off`; 0 for a constant row).
    pub spike: Vec<f32>,
    /// The class of each row's spike.
    pub class: Vec<usize>,
}

impl SpikedRows {
    /// The spiked form of row-major `[b, c]` targets `y`, if every row has one.
    pub fn detect(y: &[f32], c: usize) -> Option<Self> {
        let b = y.len().checked_div(c).unwrap_or(0);
        let mut out = Self {
            off: Vec::with_capacity(b),
            spike: Vec::with_capacity(b),
            class: Vec::with_capacity(b),
        };
        for row in y.chunks_exact(c.max(1)) {
            // The constant is the value shared by two of the first three entries (any value of a
            // row with fewer than three entries).
            let off = match *row {
                [a, b, x, ..] if a != b && a != x => b,
                [a, ..] => a,
                [] => 0.0,
            };
            let mut others = row.iter().enumerate().filter(|(_, &v)| v != off);
            let (class, spike) = match (others.next(), others.next()) {
                (None, _) => (0, 0.0),
                (Some((j, &v)), None) => (j, v - off),
                (Some(_), Some(_)) => return None,
            };
            out.off.push(off);
            out.spike.push(spike);
            out.class.push(class);
        }
        Some(out)
    }
}

/// `e^x` for `x ≤ 0` (also exact enough up to `x ≈ 88`); 0 below −87.3, where `e^x` is subnormal.
///
/// Cephes `expf`: `x = n·ln2 + r`, `|r| ≤ ln2/2`, degree-7 polynomial for `e^r`, `2^n` built in
/// the exponent bits (≈1 ulp). Branch-free; NaN propagates.
#[inline(always)]
pub(super) fn exp_nonpositive(x: f32) -> f32 {
    // Adding 1.5·2^23 rounds to an integer kept in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4; // 355/512: n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MIN_ARG: f32 = -87.3;
    let xc = if x < MIN_ARG { MIN_ARG } else { x };
    let shifted = xc * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // The low 9 bits of `shifted` hold n (mod 512); n + 127 in the exponent field is 2^n.
    let two_n = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    let y = er * two_n;
    if x < MIN_ARG {
        0.0
    } else {
        y
    }
}

/// `y_i = exp(x_i − shift)` for every element; returns `Σ y` (f32 lanes: positive terms).
#[inline(always)]
pub(super) fn exp_shifted(x: &[f32], shift: f32, y: &mut [f32]) -> f32 {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = exp_nonpositive(x - shift);
    }
    let mut acc = [0.0f32; LANES];
    let chunks = y.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// max x (−∞ for an empty slice; NaNs are skipped, the callers' `exp` propagates them).
#[inline(always)]
pub(super) fn max_f32(x: &[f32]) -> f32 {
    let max = |a: f32, b: f32| if a > b { a } else { b };
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = max(*a, v);
        }
    }
    acc.iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &v| max(m, v))
}

/// `Σ a·b` with [`LANES`] partial sums.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for ((acc, &x), &y) in acc.iter_mut().zip(xa).zip(xb) {
            *acc += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ a·(b − shift) in f64 (`shift = 0` gives a dot product).
#[inline(always)]
pub(super) fn dot_shifted_f64(a: &[f32], b: &[f32], shift: f32) -> f64 {
    let shift = f64::from(shift);
    let term = |x: f32, y: f32| f64::from(x) * (f64::from(y) - shift);
    let mut acc = [0.0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| term(x, y))
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for ((acc, &x), &y) in acc.iter_mut().zip(xa).zip(xb) {
            *acc += term(x, y);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Σ x in f64.
#[inline(always)]
pub(super) fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f64::from(v);
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|&v| f64::from(v)).sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error of `exp_nonpositive` against std's `f64::exp` over [-87, 0].
    #[test]
    fn exp_matches_std() {
        let mut worst = 0.0f64;
        for i in 0..=87_000 {
            let x = -(i as f32) * 1e-3;
            let want = f64::from(x).exp();
            worst = worst.max((f64::from(exp_nonpositive(x)) - want).abs() / want);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    /// The lane-split reductions equal plain sequential sums, tails included.
    #[test]
    fn reductions_match_sequential() {
        let x: Vec<f32> = (0..29).map(|i| ((i * 7919) % 23) as f32 - 11.5).collect();
        let y: Vec<f32> = (0..29)
            .map(|i| ((i * 104_729) % 17) as f32 * 0.25)
            .collect();
        let seq: f64 = x.iter().map(|&v| f64::from(v)).sum();
        assert!((sum_f64(&x) - seq).abs() < 1e-12);
        let dot: f64 = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| f64::from(a) * f64::from(b - 2.0))
            .sum();
        assert!((dot_shifted_f64(&x, &y, 2.0) - dot).abs() < 1e-9);
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        assert_eq!(max_f32(&x), max);
        let mut e = vec![0.0f32; x.len()];
        let s = exp_shifted(&x, max, &mut e);
        let want: f64 = x.iter().map(|&v| f64::from(v - max).exp()).sum();
        assert!((f64::from(s) - want).abs() < 1e-6 * want);
    }
}
