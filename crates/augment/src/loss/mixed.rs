//! The losses of MultiMix and dense MultiMix with an affine head as single custom ops: mixing,
//! soft cross-entropy and their backward in one autograd node each (METHOD.md §2–§3).
//!
//! Both mix `[b, c]` (or per-position `[b, r, c]`) logits with the constant interpolation `Λ`
//! `[n, b]`; the mixing products go through gemm, everything elementwise is fused per tuple and
//! rayon-parallel over tuples. Targets that are one-hot (label-smoothed or not) are mixed in
//! `O(b)` per tuple (and position) instead of a product over the classes.

use super::cpu::{axpy, dot_shifted_f64, exp_shifted, matmul, max_f32, storage_f32, sum_f64};
use super::cpu::{with_f32, Mat, SpikedRows};
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

/// `Λ Y` `[n, c]` for spiked targets: `(Σ_i λ_ki off_i)·1 + Σ_i λ_ki spike_i e_{class_i}`.
fn mix_spiked_rows(lambda: &[f32], b: usize, y: &SpikedRows, c: usize) -> Vec<f32> {
    let n = lambda.len() / b;
    let mut out = vec![0.0f32; n * c];
    out.par_chunks_mut(c)
        .zip(lambda.par_chunks(b))
        .for_each(|(t, l)| {
            let base: f32 = l.iter().zip(&y.off).map(|(l, o)| l * o).sum();
            t.fill(base);
            for ((&l, &s), &k) in l.iter().zip(&y.spike).zip(&y.class) {
                t[k] += l * s;
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

/// What the forward pass of [`DenseMultiMixCe`] keeps for the backward pass.
#[derive(Default)]
struct DenseSaved {
    /// `H_kp = ∂loss/∂L̃_kp / den_kp` `[n, r, c]`.
    h: Vec<f32>,
    /// `s_kp = H_kp · L̃_kp` `[n, r]`.
    s: Vec<f32>,
}

/// Dense MultiMix's loss (METHOD.md §3) applied to per-position logits `Z` `[b, r, c]` and the
/// attention `A` `[b, r]`: `L̃_kp = Σ_i λ_ki a_ip Z_ip / den_kp`, `den_kp = Σ_i λ_ki a_ip + ε`,
/// targets `Ỹ_kp` mixed with the same weights (constants: no gradient through them), soft
/// cross-entropy averaged over the `n·r` positions.
/// Backward with `Q = Λᵀ H`: `dZ_ip = a_ip Q_ip`, `dA_ip = Q_ip · Z_ip − (Λᵀ s)_ip`.
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

simd_kernel! {
    /// One tuple `k` of dense MultiMix: per position `p` the mixed logits `num_p / den_p` and
    /// targets `tnum_p / den_p` (`[r, c]` each, `den` `[r]`), the loss summed over positions,
    /// `h_p = scale·(softmax·Σ ỹ − ỹ) / den_p` and `s_p = h_p · L̃_p`. `lx`, `ly` hold one row.
    fn dense_tuple(
        num: &[f32],
        tnum: &[f32],
        den: &[f32],
        h: &mut [f32],
        s: &mut [f32],
        lx: &mut [f32],
        ly: &mut [f32],
        scale: f32,
    ) -> f64 {
        let c = lx.len();
        let mut total = 0.0;
        let rows = num.chunks_exact(c).zip(tnum.chunks_exact(c));
        let outs = h.chunks_exact_mut(c).zip(s.iter_mut());
        for (((num, tnum), (h, s)), &den) in rows.zip(outs).zip(den) {
            let inv = 1.0 / den;
            for ((lx, ly), (&x, &y)) in lx.iter_mut().zip(ly.iter_mut()).zip(num.iter().zip(tnum)) {
                *lx = x * inv;
                *ly = y * inv;
            }
            total += ce_row(lx, ly, h, scale);
            let mut dot = 0.0f32;
            for (h, &x) in h.iter_mut().zip(lx.iter()) {
                *h *= inv;
                dot += *h * x;
            }
            *s = dot;
        }
        total
    }
}

simd_kernel! {
    /// The target numerators of tuple `k` for spiked targets, `[r, c]`:
    /// `tnum_pj = base_p + Σ_{i: class_i = j} λ_ki spike_i a_ip`, with `spikes` `[c, r]` scratch.
    fn spiked_tuple(
        lambda: &[f32],
        attn: &[f32],
        y: &SpikedRows,
        base: &[f32],
        spikes: &mut [f32],
        tnum: &mut [f32],
    ) {
        let r = base.len();
        spikes.fill(0.0);
        let examples = lambda.iter().zip(attn.chunks_exact(r));
        for ((&l, a), (&sp, &j)) in examples.zip(y.spike.iter().zip(&y.class)) {
            axpy(&mut spikes[j * r..(j + 1) * r], l * sp, a);
        }
        let c = spikes.len() / r;
        for (p, (t, &base)) in tnum.chunks_exact_mut(c).zip(base).enumerate() {
            for (j, t) in t.iter_mut().enumerate() {
                *t = base + spikes[j * r + p];
            }
        }
    }
}

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
        // den = Λ A + ε, num = Λ (A ⊙ Z).
        let mut den = vec![0.0f32; n * r];
        matmul(lambda, Mat::row_major(a, b, r), &mut den);
        den.iter_mut().for_each(|d| *d += self.eps);
        let weighted = |v: &[f32], per_position: bool| -> Vec<f32> {
            let mut out = vec![0.0f32; b * r * c];
            out.par_chunks_mut(c).enumerate().for_each(|(ip, o)| {
                let v = if per_position {
                    &v[ip * c..(ip + 1) * c]
                } else {
                    &v[(ip / r) * c..(ip / r + 1) * c]
                };
                o.iter_mut().zip(v).for_each(|(o, &v)| *o = a[ip] * v);
            });
            out
        };
        let mut num = vec![0.0f32; n * r * c];
        matmul(
            lambda,
            Mat::row_major(&weighted(z, true), b, r * c),
            &mut num,
        );
        // Target numerators Λ (A ⊙ Y): O(n·b·r) for spiked targets, else one more product.
        let spiked = match &self.targets {
            DenseTargets::PerExample(y) => SpikedRows::detect(y, c),
            DenseTargets::PerPosition(_) => None,
        };
        let mut tnum = vec![0.0f32; n * r * c];
        match (&spiked, &self.targets) {
            (Some(y), _) => {
                let off_a: Vec<f32> = a
                    .chunks_exact(r)
                    .zip(&y.off)
                    .flat_map(|(a, &o)| a.iter().map(move |&a| a * o))
                    .collect();
                let mut base = vec![0.0f32; n * r];
                matmul(lambda, Mat::row_major(&off_a, b, r), &mut base);
                tnum.par_chunks_mut(TUPLES_PER_TASK * r * c)
                    .zip(base.par_chunks(TUPLES_PER_TASK * r))
                    .zip(self.lambda.par_chunks(TUPLES_PER_TASK * b))
                    .for_each(|((t, base), l)| {
                        let mut spikes = vec![0.0f32; c * r];
                        let tuples = t.chunks_exact_mut(r * c).zip(base.chunks_exact(r));
                        for ((t, base), l) in tuples.zip(l.chunks_exact(b)) {
                            spiked_tuple(l, a, y, base, &mut spikes, t);
                        }
                    });
            }
            (None, DenseTargets::PerExample(y)) => {
                let ay = weighted(y, false);
                matmul(lambda, Mat::row_major(&ay, b, r * c), &mut tnum);
            }
            (None, DenseTargets::PerPosition(y)) => {
                let ay = weighted(y, true);
                matmul(lambda, Mat::row_major(&ay, b, r * c), &mut tnum);
            }
        }
        let scale = 1.0 / (n * r) as f32;
        let mut saved = DenseSaved {
            h: vec![0.0f32; n * r * c],
            s: vec![0.0f32; n * r],
        };
        let (rc, t) = (r * c, TUPLES_PER_TASK);
        let total: f64 = num
            .par_chunks(t * rc)
            .zip(tnum.par_chunks(t * rc))
            .zip(den.par_chunks(t * r))
            .zip(saved.h.par_chunks_mut(t * rc))
            .zip(saved.s.par_chunks_mut(t * r))
            .map(|((((num, tnum), den), h), s)| {
                let (mut lx, mut ly) = (vec![0.0f32; c], vec![0.0f32; c]);
                let tuples = num.chunks_exact(rc).zip(tnum.chunks_exact(rc));
                let outs = h.chunks_exact_mut(rc).zip(s.chunks_exact_mut(r));
                tuples
                    .zip(den.chunks_exact(r))
                    .zip(outs)
                    .map(|(((num, tnum), den), (h, s))| {
                        dense_tuple(num, tnum, den, h, s, &mut lx, &mut ly, scale)
                    })
                    .sum::<f64>()
            })
            .sum();
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
        // Q = Λᵀ H `[b, r, c]`.
        let mut q = vec![0.0f32; b * r * c];
        matmul(lambda_t, Mat::row_major(&saved.h, n, r * c), &mut q);
        let name = self.name();
        let (dz, da) = with_f32(name, attn, |a| {
            let mut dz = q.clone();
            dz.par_chunks_mut(c).zip(a.par_iter()).for_each(|(dz, &a)| {
                dz.iter_mut().for_each(|v| *v *= gamma * a);
            });
            let da = if attn.track_op() {
                let mut ls = vec![0.0f32; b * r];
                matmul(lambda_t, Mat::row_major(&saved.s, n, r), &mut ls);
                with_f32(name, logits, |z| {
                    ls.par_iter_mut()
                        .zip(q.par_chunks(c).zip(z.par_chunks(c)))
                        .for_each(|(ls, (q, z))| {
                            let qz: f32 = q.iter().zip(z).map(|(q, z)| q * z).sum();
                            *ls = gamma * (qz - *ls);
                        });
                    Ok(())
                })?;
                Some(ls)
            } else {
                None
            };
            Ok((dz, da))
        })?;
        let dz = Tensor::from_vec(dz, (b, r, c), &Device::Cpu)?;
        let da = da
            .map(|da| Tensor::from_vec(da, (b, r), &Device::Cpu))
            .transpose()?;
        Ok((Some(dz), da))
    }
}
