//! The losses of MultiMix and dense MultiMix with an affine head as single custom ops: mixing,
//! soft cross-entropy and their backward in one autograd node each (METHOD.md §2–§3).
//!
//! Both mix `[b, c]` (or per-position `[b, r, c]`) logits with the constant interpolation `Λ`
//! `[n, b]`; the mixing products go through gemm, everything elementwise is fused per tuple and
//! rayon-parallel over tuples. Targets that are one-hot (label-smoothed or not) are mixed in
//! `O(b)` per tuple (and position) instead of a product over the classes.

use super::cpu::{axpy, dot_shifted_f64, exp_nonpositive, exp_shifted, matmul, max_f32};
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
                let mut t = vec![0.0f32; n * c];
                let y = Mat::row_major(&self.targets, b, c);
                matmul(Mat::row_major(&self.lambda, n, b), y, &mut t);
                t
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
        let mut mixed = vec![0.0f32; n * c];
        let lambda = Mat::row_major(&self.lambda, n, b);
        matmul(lambda, Mat::row_major(z, b, c), &mut mixed);
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
        let mut dz = vec![0.0f32; b * c];
        let lambda_t = Mat::row_major(&self.lambda, n, b).t();
        matmul(lambda_t, Mat::row_major(&grad, n, c), &mut dz);
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
    /// `H_kp = ∂loss/∂L̃_kp / den_kp` `[n, c, r]`.
    h: Vec<f32>,
    /// `s_kp = H_kp · L̃_kp` `[n, r]`.
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

/// Positions `p0..p0 + W` of [`dense_tuple`]; returns their summed loss.
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
) -> f64 {
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
        let (x, l) = (&h[at(j)], &mut lx[at(j)]);
        for q in 0..W {
            l[q] = x[q] * inv[q];
            mx[q] = max(mx[q], l[q]);
        }
    }
    let (mut se, mut sy, mut dot) = ([0.0f32; W], [0.0f32; W], [0.0f32; W]);
    // `h` holds exp(L̃ − max) until it is overwritten below.
    for j in 0..c {
        let (l, t, e) = (&lx[at(j)], &tnum[at(j)], &mut h[at(j)]);
        for q in 0..W {
            let shifted = l[q] - mx[q];
            e[q] = exp_nonpositive(shifted);
            se[q] += e[q];
            let y = t[q] * inv[q];
            sy[q] += y;
            dot[q] += y * shifted;
        }
    }
    // Loss per position: Σ_c ỹ·(lse − l̃) = ln(Σ e)·Σ ỹ − Σ ỹ·(l̃ − max).
    let mut total = 0.0f64;
    let mut ratio = [0.0f32; W];
    for q in 0..W {
        total += f64::from(ln_positive(se[q]) * sy[q] - dot[q]);
        ratio[q] = sy[q] / se[q];
    }
    let mut acc = [0.0f32; W];
    for j in 0..c {
        let (l, t, h) = (&lx[at(j)], &tnum[at(j)], &mut h[at(j)]);
        for q in 0..W {
            let g = scale * (h[q] * ratio[q] - t[q] * inv[q]);
            h[q] = g * inv[q];
            acc[q] += h[q] * l[q];
        }
    }
    s[p0..p0 + W].copy_from_slice(&acc);
    total
}

simd_kernel! {
    /// One tuple `k` of dense MultiMix, class-major: `h` `[c, r]` holds the numerators of the
    /// mixed logits on entry, `tnum` `[c, r]` those of the targets, `den` `[r]` the normalizers.
    /// Returns the loss summed over the `r` positions and overwrites
    /// `h = scale·(softmax(L̃)·Σ_c Ỹ − Ỹ) / den`; writes `s = Σ_c h·L̃` `[r]`.
    /// `lx` `[c, r]` is scratch.
    fn dense_tuple(
        h: &mut [f32],
        tnum: &[f32],
        den: &[f32],
        s: &mut [f32],
        lx: &mut [f32],
        scale: f32,
    ) -> f64 {
        let r = den.len();
        let mut total = 0.0;
        by_blocks!(r, |W, p0| total += tuple_block::<W>(h, tnum, den, s, lx, r, p0, scale));
        total
    }
}

simd_kernel! {
    /// The target numerators of tuple `k` for spiked targets, class-major `[c, r]`:
    /// `tnum_jp = base_p + Σ_{i: class_i = j} λ_ki spike_i a_ip`.
    fn spiked_tuple(lambda: &[f32], attn: &[f32], y: &SpikedRows, base: &[f32], tnum: &mut [f32]) {
        let r = base.len();
        for t in tnum.chunks_exact_mut(r) {
            t.copy_from_slice(base);
        }
        let examples = lambda.iter().zip(attn.chunks_exact(r));
        for ((&l, a), (&sp, &j)) in examples.zip(y.spike.iter().zip(&y.class)) {
            axpy(&mut tnum[j * r..(j + 1) * r], l * sp, a);
        }
    }
}

simd_kernel! {
    /// The target numerators of tuple `k` from per-class spikes, class-major `[c, r]`:
    /// `tnum_jp = base_p + spikes_jp`, with class `j` of the spikes at `spikes[j·stride..]`.
    fn tuple_from_class_spikes(spikes: &[f32], stride: usize, base: &[f32], tnum: &mut [f32]) {
        let r = base.len();
        for (j, t) in tnum.chunks_exact_mut(r).enumerate() {
            let sp = &spikes[j * stride..j * stride + r];
            for ((t, &b), &sp) in t.iter_mut().zip(base).zip(sp) {
                *t = b + sp;
            }
        }
    }
}

/// The spike parts of spiked targets' numerators, `[c, n, r]`:
/// `spikes_jkp = Σ_{i: class_i = j} λ_ki spike_i a_ip`, one product per class over its examples
/// (worth it when the classes have several examples each; else [`spiked_tuple`] per tuple).
fn class_spikes(lambda: &[f32], n: usize, attn: &[f32], y: &SpikedRows, c: usize) -> Vec<f32> {
    let b = y.class.len();
    let r = attn.len() / b.max(1);
    let mut order: Vec<usize> = (0..b).collect();
    order.sort_by_key(|&i| y.class[i]);
    // Λ with its columns, and spike ⊙ A with its rows, ordered by class.
    let lambda_by_class: Vec<f32> = lambda
        .chunks_exact(b)
        .flat_map(|l| order.iter().map(move |&i| l[i]))
        .collect();
    let spiked_attn: Vec<f32> = order
        .iter()
        .flat_map(|&i| {
            attn[i * r..(i + 1) * r]
                .iter()
                .map(move |&a| a * y.spike[i])
        })
        .collect();
    let mut spikes = vec![0.0f32; c * n * r];
    let mut start = 0;
    for (j, out) in spikes.chunks_exact_mut(n * r).enumerate() {
        let end = start
            + order[start..]
                .iter()
                .take_while(|&&i| y.class[i] == j)
                .count();
        if end > start {
            let lhs = Mat {
                data: &lambda_by_class[start..],
                rows: n,
                cols: end - start,
                rs: b,
                cs: 1,
            };
            let rhs = Mat::row_major(&spiked_attn[start * r..end * r], end - start, r);
            matmul(lhs, rhs, out);
        }
        start = end;
    }
    spikes
}

/// Spiked targets go through [`class_spikes`] when the classes have at least this many examples
/// of the batch on average.
const MIN_EXAMPLES_PER_CLASS: usize = 4;

impl DenseMultiMixCe {
    /// The op for `Λ` `[n, b]` (row-major), the targets and the normalization's `ε`.
    pub(super) fn new(lambda: Vec<f32>, b: usize, targets: DenseTargets, eps: f32) -> Self {
        Self {
            lambda,
            b,
            targets,
            eps,
            saved: Mutex::new(DenseSaved::default()),
        }
    }

    fn n(&self) -> usize {
        self.lambda.len() / self.b.max(1)
    }
}

/// The target numerators of dense MultiMix: per tuple from spiked targets, or all at once.
enum TargetNums {
    /// Computed per tuple ([`spiked_tuple`]).
    Spiked(SpikedRows),
    /// From the spike parts `[c, n, r]` ([`class_spikes`]), completed per tuple.
    ByClass(Vec<f32>),
    /// `Λ (A ⊙ Y)` `[n, c, r]`.
    Mixed(Vec<f32>),
}

/// `out[i, j, p] = a[i, p] · v[i, p, j]` (`[b, c, r]`, class-major) for `v` `[b, r, c]`, or
/// `v[i, j]` when `per_position` is false (`[b, c]`).
fn weighted_class_major(a: &[f32], v: &[f32], r: usize, c: usize, per_position: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; a.len() * c];
    out.par_chunks_mut(c * r)
        .zip(a.par_chunks(r))
        .enumerate()
        .for_each(|(i, (o, a))| {
            for (j, o) in o.chunks_exact_mut(r).enumerate() {
                for (p, (o, &a)) in o.iter_mut().zip(a).enumerate() {
                    let v = if per_position {
                        v[(i * r + p) * c + j]
                    } else {
                        v[i * c + j]
                    };
                    *o = a * v;
                }
            }
        });
    out
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
        let lambda = Mat::row_major(&self.lambda, n, b);
        let (cr, t) = (c * r, TUPLES_PER_TASK);
        // num = Λ (A ⊙ Z), class-major per tuple.
        let mut num = vec![0.0f32; n * cr];
        let weighted = weighted_class_major(a, z, r, c, true);
        matmul(lambda, Mat::row_major(&weighted, b, cr), &mut num);
        // Target numerators Λ (A ⊙ Y): for spiked targets den and their constant part from one
        // product, Λ [A | off ⊙ A], and the spikes in O(n·b·r) (per tuple, or one product per
        // class when classes have several examples); else one product over all classes.
        let spiked = match &self.targets {
            DenseTargets::PerExample(y) => SpikedRows::detect(y, c),
            DenseTargets::PerPosition(_) => None,
        };
        let (den_base, tnum) = match (spiked, &self.targets) {
            (Some(y), _) => {
                let mut rhs = vec![0.0f32; b * 2 * r];
                let rows = rhs.chunks_exact_mut(2 * r).zip(a.chunks_exact(r));
                for ((rhs, a), &off) in rows.zip(&y.off) {
                    rhs[..r].copy_from_slice(a);
                    rhs[r..].iter_mut().zip(a).for_each(|(o, &a)| *o = off * a);
                }
                let mut den_base = vec![0.0f32; n * 2 * r];
                matmul(lambda, Mat::row_major(&rhs, b, 2 * r), &mut den_base);
                if b >= MIN_EXAMPLES_PER_CLASS * c {
                    let spikes = class_spikes(&self.lambda, n, a, &y, c);
                    (den_base, TargetNums::ByClass(spikes))
                } else {
                    (den_base, TargetNums::Spiked(y))
                }
            }
            (None, targets) => {
                let mut den = vec![0.0f32; n * r];
                matmul(lambda, Mat::row_major(a, b, r), &mut den);
                let ay = match targets {
                    DenseTargets::PerExample(y) => weighted_class_major(a, y, r, c, false),
                    DenseTargets::PerPosition(y) => weighted_class_major(a, y, r, c, true),
                };
                let mut tnum = vec![0.0f32; n * cr];
                matmul(lambda, Mat::row_major(&ay, b, cr), &mut tnum);
                (den, TargetNums::Mixed(tnum))
            }
        };
        // Per tuple: the normalizers `[r]` (with ε) and the constant part of spiked targets.
        let dr = match tnum {
            TargetNums::Mixed(_) => r,
            TargetNums::Spiked(_) | TargetNums::ByClass(_) => 2 * r,
        };
        let scale = 1.0 / (n * r) as f32;
        let mut s = vec![0.0f32; n * r];
        // `num` becomes H tuple by tuple.
        let total: f64 = num
            .par_chunks_mut(t * cr)
            .zip(den_base.par_chunks(t * dr))
            .zip(s.par_chunks_mut(t * r))
            .enumerate()
            .map(|(task, ((h, db), s))| {
                let mut lx = vec![0.0f32; cr];
                let mut den = vec![0.0f32; r];
                let mut own_tnum = vec![0.0f32; if dr == r { 0 } else { cr }];
                let tuples = h.chunks_exact_mut(cr).zip(db.chunks_exact(dr));
                let mut total = 0.0;
                for (i, ((h, db), s)) in tuples.zip(s.chunks_exact_mut(r)).enumerate() {
                    let k = task * t + i;
                    den.iter_mut()
                        .zip(&db[..r])
                        .for_each(|(d, &v)| *d = v + self.eps);
                    let tn = match &tnum {
                        TargetNums::Mixed(tnum) => &tnum[k * cr..(k + 1) * cr],
                        TargetNums::Spiked(y) => {
                            let l = &self.lambda[k * b..(k + 1) * b];
                            spiked_tuple(l, a, y, &db[r..], &mut own_tnum);
                            &own_tnum[..]
                        }
                        TargetNums::ByClass(spikes) => {
                            let (spikes, stride) = (&spikes[k * r..], n * r);
                            tuple_from_class_spikes(spikes, stride, &db[r..], &mut own_tnum);
                            &own_tnum[..]
                        }
                    };
                    total += dense_tuple(h, tn, &den, s, &mut lx, scale);
                }
                total
            })
            .sum();
        let saved = DenseSaved { h: num, s };
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
        let mut q = vec![0.0f32; b * c * r];
        matmul(lambda_t, Mat::row_major(&saved.h, n, c * r), &mut q);
        let name = self.name();
        let track_attn = attn.track_op();
        let (dz, da) = with_f32(name, attn, |a| {
            with_f32(name, logits, |z| {
                let mut dz = vec![0.0f32; b * r * c];
                // (Λᵀ s) first, then dA in its place; cheap enough to compute even untracked.
                let mut da = vec![0.0f32; b * r];
                if track_attn {
                    matmul(lambda_t, Mat::row_major(&saved.s, n, r), &mut da);
                }
                dz.par_chunks_mut(r * c)
                    .zip(q.par_chunks(c * r))
                    .zip(a.par_chunks(r).zip(z.par_chunks(r * c)))
                    .zip(da.par_chunks_mut(r))
                    .for_each(|(((dz, q), (a, z)), da)| {
                        let positions = dz.chunks_exact_mut(c).zip(a).zip(da);
                        for (p, ((dz, &a), da)) in positions.enumerate() {
                            let mut qz = 0.0f32;
                            for (j, dz) in dz.iter_mut().enumerate() {
                                let qv = q[j * r + p];
                                *dz = gamma * a * qv;
                                qz += qv * z[p * c + j];
                            }
                            *da = gamma * (qz - *da);
                        }
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
