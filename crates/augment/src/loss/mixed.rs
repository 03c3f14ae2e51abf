//! The losses of MultiMix and dense MultiMix with an affine head as single custom ops: mixing,
//! soft cross-entropy and their backward in one autograd node each (METHOD.md §2–§3).
//!
//! Both mix `[b, c]` (or per-position `[b, r, c]`) logits with the constant interpolation `Λ`
//! `[n, b]`; the mixing products go through gemm, everything elementwise is fused per tuple and
//! rayon-parallel over tuples. Targets that are one-hot (label-smoothed or not) are mixed in
//! `O(b)` per tuple (and position) instead of a product over the classes.

use super::cpu::{dot_shifted_f64, exp_nonpositive, exp_shifted, matmul, matmul_new, max_f32};
use super::cpu::{storage_f32, sum_f64};
use super::cpu::{with_f32, Mat, SpikedRows};
use crate::math::ln_positive;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Error, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// Tuples per parallel task.
const TUPLES_PER_TASK: usize = 16;

simd_kernel! {
    /// One row of the soft cross-entropy: returns `Σ_c y·(lse(x) − x)` (f64) and writes
    /// `g = scale·(softmax(x)·Σ y − y)`.
    fn ce_row(x: &[f32], y: &[f32], g: &mut [f32], scale: f32) -> f64 {
        let max = max_f32(x);
        // `g` holds the exponentials until it is overwritten below.
        let s = exp_shifted(x, max, g);
        let sy = sum_f64(y);
        let loss = f64::from(s).ln() * sy - dot_shifted_f64(y, x, max);
        let p_scale = sy as f32 / s;
        for (g, &y) in g.iter_mut().zip(y) {
            *g = scale * (*g * p_scale - y);
        }
        loss
    }
}

simd_kernel! {
    /// Rows of `[rows, c]` logits `x` and targets `y`: returns the summed row losses and writes
    /// the rows of `g` (see [`ce_row`]).
    fn ce_rows(x: &[f32], y: &[f32], g: &mut [f32], c: usize, scale: f32) -> f64 {
        let rows = x.chunks_exact(c).zip(y.chunks_exact(c));
        let mut total = 0.0;
        for ((x, y), g) in rows.zip(g.chunks_exact_mut(c)) {
            total += ce_row(x, y, g, scale);
        }
        total
    }
}

simd_kernel! {
    /// Row `k` of `Λ Y` for spiked targets, `t = (Σ_i λ_ki off_i)·1 + Σ_i λ_ki spike_i e_{class_i}`;
    /// the constant as eight partial sums (a single running sum is a chain of dependent adds).
    fn spiked_row(lambda: &[f32], y: &SpikedRows, t: &mut [f32]) {
        let mut partial = [0.0f32; BLOCK];
        let (mut l, mut o) = (lambda.chunks_exact(BLOCK), y.off.chunks_exact(BLOCK));
        for (l, o) in (&mut l).zip(&mut o) {
            for q in 0..BLOCK {
                partial[q] += l[q] * o[q];
            }
        }
        let rest: f32 = l.remainder().iter().zip(o.remainder()).map(|(l, o)| l * o).sum();
        t.fill(partial.iter().sum::<f32>() + rest);
        for ((&l, &s), &k) in lambda.iter().zip(&y.spike).zip(&y.class) {
            t[k] += l * s;
        }
    }
}

/// `Λ Y` `[n, c]` for spiked targets ([`spiked_row`] per tuple, tuples in parallel).
fn mix_spiked_rows(lambda: &[f32], b: usize, y: &SpikedRows, c: usize) -> Vec<f32> {
    let n = lambda.len() / b;
    let mut out = vec![0.0f32; n * c];
    out.par_chunks_mut(TUPLES_PER_TASK * c)
        .zip(lambda.par_chunks(TUPLES_PER_TASK * b))
        .for_each(|(t, l)| {
            for (t, l) in t.chunks_exact_mut(c).zip(l.chunks_exact(b)) {
                spiked_row(l, y, t);
            }
        });
    out
}

/// MultiMix's loss `H(ΛY, ΛZ)` averaged over the `n` tuples (eqs. 6–7 with `g(ΛZ) = Λ g(Z)`),
/// applied to the logits `Z` `[b, c]`; `Λ` and `Y` are constants.
/// Backward: `dZ = Λᵀ (softmax(ΛZ)·Σ_c ΛY − ΛY) / n`.
pub(super) struct MultiMixCe {
    /// `Λ` `[n, b]`, row-major.
    lambda: Vec<f32>,
    /// `b`.
    b: usize,
    /// `Y` `[b, c]`, row-major.
    targets: Vec<f32>,
    /// `c`.
    c: usize,
    /// `∂loss/∂(ΛZ)` `[n, c]`, written by the forward pass for the backward pass.
    grad: Mutex<Vec<f32>>,
}

impl MultiMixCe {
    /// The op for `Λ` `[n, b]` and targets `[b, c]` (row-major).
    pub(super) fn new(lambda: Vec<f32>, b: usize, targets: Vec<f32>, c: usize) -> Self {
        Self {
            lambda,
            b,
            targets,
            c,
            grad: Mutex::new(Vec::new()),
        }
    }

    fn n(&self) -> usize {
        self.lambda.len() / self.b.max(1)
    }

    /// `Ỹ = Λ Y` `[n, c]`.
    fn mixed_targets(&self) -> Vec<f32> {
        let (n, b, c) = (self.n(), self.b, self.c);
        match SpikedRows::detect(&self.targets, c) {
            Some(spiked) => mix_spiked_rows(&self.lambda, b, &spiked, c),
            None => {
                let y = Mat::row_major(&self.targets, b, c);
                matmul_new(Mat::row_major(&self.lambda, n, b), y)
            }
        }
    }
}

impl CustomOp1 for MultiMixCe {
    fn name(&self) -> &'static str {
        "multimix-soft-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = storage_f32(self.name(), storage, layout)?;
        let (n, b, c) = (self.n(), self.b, self.c);
        if layout.dims() != [b, c] {
            return Err(Error::Msg(format!(
                "{}: logits {:?} do not fit Λ [{n}, {b}] and targets [{b}, {c}]",
                self.name(),
                layout.dims()
            )));
        }
        let lambda = Mat::row_major(&self.lambda, n, b);
        let mixed = matmul_new(lambda, Mat::row_major(z, b, c));
        let targets = self.mixed_targets();
        let mut grad = vec![0.0f32; n * c];
        let step = TUPLES_PER_TASK * c;
        let scale = 1.0 / n as f32;
        let total: f64 = mixed
            .par_chunks(step)
            .zip(targets.par_chunks(step))
            .zip(grad.par_chunks_mut(step))
            .map(|((x, y), g)| ce_rows(x, y, g, c, scale))
            .sum();
        *self
            .grad
            .lock()
            .map_err(|_| Error::Msg("poisoned".into()))? = grad;
        let loss = (total / n as f64) as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(&self, _z: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (n, b, c) = (self.n(), self.b, self.c);
        let gamma = grad_res.to_scalar::<f32>()?;
        let grad = self
            .grad
            .lock()
            .map_err(|_| Error::Msg("poisoned".into()))?;
        let lambda_t = Mat::row_major(&self.lambda, n, b).t();
        let mut dz = matmul_new(lambda_t, Mat::row_major(&grad, n, c));
        dz.iter_mut().for_each(|v| *v *= gamma);
        Tensor::from_vec(dz, (b, c), &Device::Cpu).map(Some)
    }
}

/// Targets of dense MultiMix.
pub(super) enum DenseTargets {
    /// `[b, c]`, shared by all positions of an example.
    PerExample(Vec<f32>),
    /// `[b, r, c]`, one per position (teacher predictions).
    PerPosition(Vec<f32>),
}

/// What the forward pass of [`DenseMultiMixCe`] keeps for the backward pass, per tuple `k` in
/// the class-major layout `[c, r]`.
#[derive(Default)]
struct DenseSaved {
    /// `H_kp = ∂loss/∂L̃_kp / den_kp`: the first `c·r` entries (`[c, r]`) of each of the `n` rows
    /// of `w` entries.
    h: Vec<f32>,
    /// The row length of `h`.
    w: usize,
    /// `s_kp = H_kp · L̃_kp` `[n, r]` (zeros when the attention is not tracked).
    s: Vec<f32>,
}

/// Dense MultiMix's loss (METHOD.md §3) applied to per-position logits `Z` `[b, r, c]` and the
/// attention `A` `[b, r]`: `L̃_kp = Σ_i λ_ki a_ip Z_ip / den_kp`, `den_kp = Σ_i λ_ki a_ip + ε`,
/// targets `Ỹ_kp` mixed with the same weights (constants: no gradient through them), soft
/// cross-entropy averaged over the `n·r` positions.
/// Backward with `Q = Λᵀ H`: `dZ_ip = a_ip Q_ip`, `dA_ip = Q_ip · Z_ip − (Λᵀ s)_ip`.
///
/// Internally every tuple's mixed values are class-major (`[c, r]`, positions contiguous), so the
/// softmax over classes runs with the positions in the SIMD lanes, however few classes there are.
pub(super) struct DenseMultiMixCe {
    /// `Λ` `[n, b]`, row-major.
    lambda: Vec<f32>,
    /// `b`.
    b: usize,
    /// The targets.
    targets: DenseTargets,
    /// `ε` of the per-position normalization.
    eps: f32,
    /// Whether the attention gets a gradient (then the forward pass keeps `s`).
    track_attn: bool,
    /// Written by the forward pass for the backward pass.
    saved: Mutex<DenseSaved>,
}

/// Positions per SIMD block of the dense kernels (one AVX2 register of f32).
const BLOCK: usize = 8;

/// Runs `block::<BLOCK>(p0)` over the full blocks of `r` positions and `block::<1>(p)` over the
/// rest (the const width lets every per-position loop become straight SIMD code).
macro_rules! by_blocks {
    ($r:expr, |$w:ident, $p0:ident| $body:expr) => {{
        let r = $r;
        let full = r - r % BLOCK;
        let mut p = 0;
        while p < full {
            let $p0 = p;
            {
                const $w: usize = BLOCK;
                $body;
            }
            p += BLOCK;
        }
        while p < r {
            let $p0 = p;
            {
                const $w: usize = 1;
                $body;
            }
            p += 1;
        }
    }};
}

/// Positions `p0..p0 + W` of [`dense_tuple`]; adds position `p0 + q`'s loss to `total[q]`.
/// Writes `s` only when it is not empty (the attention is tracked).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tuple_block<const W: usize>(
    h: &mut [f32],
    tnum: &[f32],
    den: &[f32],
    s: &mut [f32],
    lx: &mut [f32],
    r: usize,
    p0: usize,
    scale: f32,
    total: &mut [f64; BLOCK],
) {
    let c = h.len() / r;
    let at = |j: usize| j * r + p0..j * r + p0 + W;
    let max = |a: f32, b: f32| if a > b { a } else { b };
    let mut inv = [0.0f32; W];
    let den = &den[p0..p0 + W];
    for q in 0..W {
        inv[q] = 1.0 / den[q];
    }
    let mut mx = [f32::NEG_INFINITY; W];
    for j in 0..c {
        let x = &h[at(j)];
        for q in 0..W {
            mx[q] = max(mx[q], x[q] * inv[q]);
        }
    }
    // Σ_c of the target numerators, and of them times the shifted logits.
    let (mut se, mut st, mut dot) = ([0.0f32; W], [0.0f32; W], [0.0f32; W]);
    let with_s = !s.is_empty();
    // `h` holds exp(L̃ − max) until it is overwritten below.
    for j in 0..c {
        let (t, e) = (&tnum[at(j)], &mut h[at(j)]);
        let mut l = [0.0f32; W];
        for q in 0..W {
            l[q] = e[q] * inv[q];
            let shifted = l[q] - mx[q];
            e[q] = exp_nonpositive(shifted);
            se[q] += e[q];
            st[q] += t[q];
            dot[q] += t[q] * shifted;
        }
        if with_s {
            lx[at(j)].copy_from_slice(&l);
        }
    }
    // Loss per position, with ỹ = t/den: Σ_c ỹ·(lse − l̃) = ln(Σ e)·Σ ỹ − Σ ỹ·(l̃ − max);
    // H = scale·(softmax·Σ ỹ − ỹ)/den = e·α − t·β.
    let (mut loss, mut alpha, mut beta) = ([0.0f32; W], [0.0f32; W], [0.0f32; W]);
    for q in 0..W {
        loss[q] = (ln_positive(se[q]) * st[q] - dot[q]) * inv[q];
        beta[q] = scale * inv[q] * inv[q];
        alpha[q] = beta[q] * st[q] / se[q];
    }
    for q in 0..W {
        total[q] += f64::from(loss[q]);
    }
    for j in 0..c {
        let (t, h) = (&tnum[at(j)], &mut h[at(j)]);
        for q in 0..W {
            h[q] = h[q] * alpha[q] - t[q] * beta[q];
        }
    }
    if with_s {
        let mut acc = [0.0f32; W];
        for j in 0..c {
            let (l, h) = (&lx[at(j)], &h[at(j)]);
            for q in 0..W {
                acc[q] += h[q] * l[q];
            }
        }
        s[p0..p0 + W].copy_from_slice(&acc);
    }
}

simd_kernel! {
    /// One tuple `k` of dense MultiMix, class-major: `h` `[c, r]` holds the numerators of the
    /// mixed logits on entry, `tnum` `[c, r]` those of the targets, `den` `[r]` the normalizers.
    /// Returns the loss summed over the `r` positions and overwrites
    /// `h = scale·(softmax(L̃)·Σ_c Ỹ − Ỹ) / den`; writes `s = Σ_c h·L̃` `[r]` unless `s` is
    /// empty. `lx` `[c, r]` is scratch (used only for `s`).
    fn dense_tuple(
        h: &mut [f32],
        tnum: &[f32],
        den: &[f32],
        s: &mut [f32],
        lx: &mut [f32],
        scale: f32,
    ) -> f64 {
        let r = den.len();
        // Per-lane sums of the positions' losses.
        let mut total = [0.0f64; BLOCK];
        by_blocks!(r, |W, p0| tuple_block::<W>(h, tnum, den, s, lx, r, p0, scale, &mut total));
        total.iter().sum()
    }
}

/// Examples per parallel task of dense MultiMix's backward pass.
const EXAMPLES_PER_TASK: usize = 8;

simd_kernel! {
    /// One example's gradients from `q = (Λᵀ H)_i` (`[c, r]`, class-major): `dz = γ·a ⊙ q`
    /// (`[r, c]`), and, unless `da` is empty, `da = γ·(Σ_c q ⊙ z − da)` with `(Λᵀ s)_i` in `da`
    /// on entry.
    fn example_grads(q: &[f32], a: &[f32], z: &[f32], dz: &mut [f32], da: &mut [f32], gamma: f32) {
        let c = q.len() / a.len();
        for (j, q) in q.chunks_exact(a.len()).enumerate() {
            let column = dz.iter_mut().skip(j).step_by(c);
            for ((dz, &q), &a) in column.zip(q).zip(a) {
                *dz = gamma * a * q;
            }
        }
        if da.is_empty() {
            return;
        }
        let mut qz = vec![0.0f32; a.len()];
        for (j, q) in q.chunks_exact(a.len()).enumerate() {
            let column = z.iter().skip(j).step_by(c);
            for ((qz, &q), &z) in qz.iter_mut().zip(q).zip(column) {
                *qz += q * z;
            }
        }
        for (da, &qz) in da.iter_mut().zip(&qz) {
            *da = gamma * (qz - *da);
        }
    }
}

/// Spiked targets in the order of their classes, for [`spiked_tuple`].
struct SortedSpikes {
    /// The examples, ordered by the class of their spike (`[b]`).
    order: Vec<usize>,
    /// Where each class's examples start in `order`, and the end (`[c + 1]`).
    starts: Vec<usize>,
    /// `spike_i · a_i` `[b, r]`, rows in `order`.
    spiked_attn: Vec<f32>,
}

impl SortedSpikes {
    /// The spikes of `y` for attention `a` `[b, r]` and `c` classes.
    fn new(y: &SpikedRows, a: &[f32], r: usize, c: usize) -> Self {
        let mut order: Vec<usize> = (0..y.class.len()).collect();
        order.sort_by_key(|&i| y.class[i]);
        let mut starts = vec![0; c + 1];
        for &class in &y.class {
            starts[class + 1] += 1;
        }
        for j in 0..c {
            starts[j + 1] += starts[j];
        }
        let spiked_attn = order
            .iter()
            .flat_map(|&i| a[i * r..(i + 1) * r].iter().map(move |&a| a * y.spike[i]))
            .collect();
        Self {
            order,
            starts,
            spiked_attn,
        }
    }
}

/// Positions `p0..p0 + W` of class `j` for `T` tuples (their numerators at `tnum[u·c·r + o..]`,
/// `o = j·r + p0`): adds `Σ_i lambda_ui · sa_i` over the class's examples, accumulated in
/// registers, so each row of `sa` is loaded once for the `T` tuples.
#[inline(always)]
fn spike_block<const T: usize, const W: usize>(
    lambda: &[&[f32]; T],
    sa: &[f32],
    r: usize,
    p0: usize,
    o: usize,
    tnum: &mut [f32],
) {
    let cr = tnum.len() / T;
    let mut acc = [[0.0f32; W]; T];
    for (u, acc) in acc.iter_mut().enumerate() {
        acc.copy_from_slice(&tnum[u * cr + o..u * cr + o + W]);
    }
    for (i, row) in sa.chunks_exact(r).enumerate() {
        let row = &row[p0..p0 + W];
        for u in 0..T {
            let l = lambda[u][i];
            for q in 0..W {
                acc[u][q] += l * row[q];
            }
        }
    }
    for (u, acc) in acc.iter().enumerate() {
        tnum[u * cr + o..u * cr + o + W].copy_from_slice(acc);
    }
}

/// Tuples per pass of [`spiked_tuples`] over the spiked attention (four register blocks of
/// [`SPIKE_BLOCK`] positions).
const SPIKE_TUPLES: usize = 4;

/// Positions per register block of the spikes (two AVX2 registers of f32 per tuple).
const SPIKE_BLOCK: usize = 16;

/// Adds the spikes of `T` tuples to their target numerators `tnum` `[T, c, r]` (class-major):
/// `tnum_ujp += Σ_{i: class_i = j} λ_ui spike_i a_ip`, with `lambda` `[T, b]` the tuples' weights
/// in the order of `y`.
#[inline(always)]
fn add_spikes<const T: usize>(lambda: &[f32], y: &SortedSpikes, tnum: &mut [f32]) {
    let b = lambda.len() / T;
    let r = y.spiked_attn.len() / b.max(1);
    for j in 0..y.starts.len() - 1 {
        let (start, end) = (y.starts[j], y.starts[j + 1]);
        let weights = std::array::from_fn(|u| &lambda[u * b + start..u * b + end]);
        let sa = &y.spiked_attn[start * r..end * r];
        let mut p = 0;
        while p + SPIKE_BLOCK <= r {
            spike_block::<T, SPIKE_BLOCK>(&weights, sa, r, p, j * r + p, tnum);
            p += SPIKE_BLOCK;
        }
        while p + BLOCK <= r {
            spike_block::<T, BLOCK>(&weights, sa, r, p, j * r + p, tnum);
            p += BLOCK;
        }
        while p < r {
            spike_block::<T, 1>(&weights, sa, r, p, j * r + p, tnum);
            p += 1;
        }
    }
}

simd_kernel! {
    /// [`add_spikes`] for [`SPIKE_TUPLES`] tuples at once.
    fn spiked_tuples(lambda: &[f32], y: &SortedSpikes, tnum: &mut [f32]) {
        add_spikes::<SPIKE_TUPLES>(lambda, y, tnum);
    }
}

simd_kernel! {
    /// [`add_spikes`] for one tuple.
    fn spiked_tuple(lambda: &[f32], y: &SortedSpikes, tnum: &mut [f32]) {
        add_spikes::<1>(lambda, y, tnum);
    }
}

impl DenseMultiMixCe {
    /// The op for `Λ` `[n, b]` (row-major), the targets and the normalization's `ε`.
    pub(super) fn new(
        lambda: Vec<f32>,
        b: usize,
        targets: DenseTargets,
        eps: f32,
        track_attn: bool,
    ) -> Self {
        Self {
            lambda,
            b,
            targets,
            eps,
            track_attn,
            saved: Mutex::new(DenseSaved::default()),
        }
    }

    fn n(&self) -> usize {
        self.lambda.len() / self.b.max(1)
    }
}

/// Each example's row `[w]` of the right-hand side of dense MultiMix's one product, all
/// class-major: `a ⊙ Z` (`[c, r]`), `a` (`[r]`), then `off·a` (`[r]`, or nothing when `out` has
/// no room for it) for spiked targets or `a ⊙ Y` (`[c, r]`) otherwise. `z` `[r, c]`, `a` `[r]`;
/// `y` `[c]` or `[r, c]`.
fn rhs_row(z: &[f32], a: &[f32], targets: RowTargets, out: &mut [f32]) {
    let (r, c) = (a.len(), z.len() / a.len().max(1));
    let (az, rest) = out.split_at_mut(c * r);
    let (den, rest) = rest.split_at_mut(r);
    class_major(a, |p, j| z[p * c + j], az);
    den.copy_from_slice(a);
    match targets {
        RowTargets::Off(off) => rest.iter_mut().zip(a).for_each(|(o, &a)| *o = off * a),
        RowTargets::PerExample(y) => class_major(a, |_, j| y[j], rest),
        RowTargets::PerPosition(y) => class_major(a, |p, j| y[p * c + j], rest),
    }
}

/// `out[j·r + p] = a_p · v(p, j)` for the `[c, r]` class-major `out`, `a` `[r]`.
fn class_major(a: &[f32], v: impl Fn(usize, usize) -> f32, out: &mut [f32]) {
    for (j, o) in out.chunks_exact_mut(a.len()).enumerate() {
        for (p, (o, &a)) in o.iter_mut().zip(a).enumerate() {
            *o = a * v(p, j);
        }
    }
}

/// One example's targets in [`rhs_row`].
#[derive(Clone, Copy)]
enum RowTargets<'a> {
    /// The constant of a spiked row (its spike is mixed per tuple, [`spiked_tuple`]).
    Off(f32),
    /// `[c]`, shared by the positions.
    PerExample(&'a [f32]),
    /// `[r, c]`.
    PerPosition(&'a [f32]),
}

impl CustomOp2 for DenseMultiMixCe {
    fn name(&self) -> &'static str {
        "dense-multimix-soft-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let z = storage_f32(self.name(), s1, l1)?;
        let a = storage_f32(self.name(), s2, l2)?;
        let (n, b) = (self.n(), self.b);
        let (bz, r, c) = l1.shape().dims3()?;
        let targets_fit = match &self.targets {
            DenseTargets::PerExample(y) => y.len() == b * c,
            DenseTargets::PerPosition(y) => y.len() == b * r * c,
        };
        if bz != b || l2.dims() != [b, r] || !targets_fit {
            return Err(Error::Msg(format!(
                "{}: logits {:?}, attention {:?} and targets do not fit Λ [{n}, {b}]",
                self.name(),
                l1.dims(),
                l2.dims()
            )));
        }
        // One product Λ [A ⊙ Z | A | targets' part] (rhs_row) gives, per tuple, the numerators
        // of the mixed logits, the normalizers and the targets' numerators (for spiked targets
        // their constant part; the spikes are added per tuple in O(b·r), spiked_tuple).
        let spiked = match &self.targets {
            DenseTargets::PerExample(y) => SpikedRows::detect(y, c),
            DenseTargets::PerPosition(_) => None,
        };
        let cr = c * r;
        // Targets' columns: the constants of spiked targets (none when they are all 0, as for
        // one-hot targets without label smoothing), or all of `A ⊙ Y`.
        let targets_w = match &spiked {
            Some(y) if y.off.iter().all(|&o| o == 0.0) => 0,
            Some(_) => r,
            None => cr,
        };
        let w = cr + r + targets_w;
        let mut rhs = vec![0.0f32; b * w];
        rhs.par_chunks_mut(w)
            .zip(z.par_chunks(r * c).zip(a.par_chunks(r)))
            .enumerate()
            .for_each(|(i, (out, (z, a)))| {
                let targets = match (&spiked, &self.targets) {
                    (Some(y), _) => RowTargets::Off(y.off[i]),
                    (None, DenseTargets::PerExample(y)) => RowTargets::PerExample(&y[i * c..][..c]),
                    (None, DenseTargets::PerPosition(y)) => {
                        RowTargets::PerPosition(&y[i * r * c..][..r * c])
                    }
                };
                rhs_row(z, a, targets, out);
            });
        let mut num = matmul_new(
            Mat::row_major(&self.lambda, n, b),
            Mat::row_major(&rhs, b, w),
        );
        let sorted = spiked.map(|y| SortedSpikes::new(&y, a, r, c));
        let scale = 1.0 / (n * r) as f32;
        let mut s = vec![0.0f32; n * r];
        let t = TUPLES_PER_TASK;
        // Each tuple's `[h | den | targets]` row: `h` becomes H in place.
        let total: f64 = num
            .par_chunks_mut(t * w)
            .zip(s.par_chunks_mut(t * r))
            .enumerate()
            .map(|(task, (rows, s))| {
                let mut lx = vec![0.0f32; if self.track_attn { cr } else { 0 }];
                let mut den = vec![0.0f32; r];
                let g = SPIKE_TUPLES;
                let (mut own_tnum, mut lambda) = match &sorted {
                    Some(_) => (vec![0.0f32; g * cr], vec![0.0f32; g * b]),
                    None => (Vec::new(), Vec::new()),
                };
                // The constant part of spiked targets when it has no columns.
                let zeros = vec![0.0f32; if targets_w == 0 { r } else { 0 }];
                let mut total = 0.0;
                let groups = rows.chunks_mut(g * w).zip(s.chunks_mut(g * r));
                for (group_index, (group, s)) in groups.enumerate() {
                    let tuples = group.len() / w;
                    if let Some(y) = &sorted {
                        // Spiked targets: the tuples' constants, then their spikes.
                        for u in 0..tuples {
                            let k = task * t + group_index * g + u;
                            let weights = &self.lambda[k * b..(k + 1) * b];
                            let sorted_weights = &mut lambda[u * b..(u + 1) * b];
                            for (l, &i) in sorted_weights.iter_mut().zip(&y.order) {
                                *l = weights[i];
                            }
                            let base = match targets_w {
                                0 => &zeros[..],
                                _ => &group[u * w + cr + r..(u + 1) * w],
                            };
                            for row in own_tnum[u * cr..(u + 1) * cr].chunks_exact_mut(r) {
                                row.copy_from_slice(base);
                            }
                        }
                        if tuples == g {
                            spiked_tuples(&lambda, y, &mut own_tnum);
                        } else {
                            for u in 0..tuples {
                                let tnum = &mut own_tnum[u * cr..(u + 1) * cr];
                                spiked_tuple(&lambda[u * b..(u + 1) * b], y, tnum);
                            }
                        }
                    }
                    let group_rows = group.chunks_exact_mut(w).zip(s.chunks_exact_mut(r));
                    for (u, (row, s)) in group_rows.enumerate() {
                        let (h, rest) = row.split_at_mut(cr);
                        let (den_row, targets) = rest.split_at(r);
                        den.iter_mut()
                            .zip(den_row)
                            .for_each(|(d, &v)| *d = v + self.eps);
                        let tn = match &sorted {
                            None => targets,
                            Some(_) => &own_tnum[u * cr..(u + 1) * cr],
                        };
                        let s = if self.track_attn { s } else { &mut [] };
                        total += dense_tuple(h, tn, &den, s, &mut lx, scale);
                    }
                }
                total
            })
            .sum();
        let saved = DenseSaved { h: num, w, s };
        *self
            .saved
            .lock()
            .map_err(|_| Error::Msg("poisoned".into()))? = saved;
        let loss = (total / (n * r) as f64) as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        attn: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, b) = (self.n(), self.b);
        let (_, r, c) = logits.dims3()?;
        let gamma = grad_res.to_scalar::<f32>()?;
        let saved = self
            .saved
            .lock()
            .map_err(|_| Error::Msg("poisoned".into()))?;
        let lambda_t = Mat::row_major(&self.lambda, n, b).t();
        // Q = Λᵀ H, `[b, c, r]` (class-major).
        let h = Mat {
            data: &saved.h,
            rows: n,
            cols: c * r,
            rs: saved.w,
            cs: 1,
        };
        let q = matmul_new(lambda_t, h);
        let name = self.name();
        let track_attn = self.track_attn;
        let (dz, da) = with_f32(name, attn, |a| {
            with_f32(name, logits, |z| {
                let mut dz = vec![0.0f32; b * r * c];
                // (Λᵀ s) first, then dA in its place; cheap enough to compute even untracked.
                let mut da = vec![0.0f32; b * r];
                if track_attn {
                    matmul(lambda_t, Mat::row_major(&saved.s, n, r), &mut da);
                }
                let da_len = if track_attn { r } else { 0 };
                dz.par_chunks_mut(r * c)
                    .zip(q.par_chunks(c * r))
                    .zip(a.par_chunks(r).zip(z.par_chunks(r * c)))
                    .zip(da.par_chunks_mut(r))
                    .with_min_len(EXAMPLES_PER_TASK)
                    .for_each(|(((dz, q), (a, z)), da)| {
                        example_grads(q, a, z, dz, &mut da[..da_len], gamma)
                    });
                Ok((dz, track_attn.then_some(da)))
            })
        })?;
        let dz = Tensor::from_vec(dz, (b, r, c), &Device::Cpu)?;
        let da = da
            .map(|da| Tensor::from_vec(da, (b, r), &Device::Cpu))
            .transpose()?;
        Ok((Some(dz), da))
    }
}
