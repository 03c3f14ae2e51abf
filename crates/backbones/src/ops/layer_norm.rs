//! Layer norm over the last dim as one custom op with gradients for x, γ and β.

use super::cpu::{
    assume_init_vec, cpu_tensor, filled_chunks, rows_and_len, storage_f32, task_rows, uninit_vec,
    with_f32,
};
use super::math::{sum2_f64, sum_f64, sum_sq_dev_f64};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `y = (x − mean)·rstd·γ + β`, `rstd = 1/√(var + eps)`, biased variance (torch semantics).
pub(super) struct LayerNorm {
    eps: f64,
}

impl LayerNorm {
    /// The op with variance offset `eps`.
    pub(super) fn new(eps: f64) -> Self {
        Self { eps }
    }
}

/// Row statistics: the mean as an f32 pair `hi + lo` (so `x − hi − lo` keeps the precision of
/// an f64 mean when |mean| ≫ std) and `rstd`. Two passes, f64 accumulation.
struct Moments {
    hi: f32,
    lo: f32,
    rstd: f32,
}

impl Moments {
    /// The statistics of one row.
    #[inline(always)]
    fn of(x: &[f32], eps: f64) -> Self {
        let n = x.len() as f64;
        let mean = sum_f64(x) / n;
        let hi = mean as f32;
        let lo = (mean - f64::from(hi)) as f32;
        let var = sum_sq_dev_f64(x, hi, lo) / n;
        Self {
            hi,
            lo,
            rstd: (1.0 / (var + eps).sqrt()) as f32,
        }
    }

    /// `(x − mean)·rstd`.
    #[inline(always)]
    fn normalize(&self, x: f32) -> f32 {
        ((x - self.hi) - self.lo) * self.rstd
    }
}

simd_kernel! {
    /// Rows of `y = (x − mean)·rstd·γ + β`.
    fn forward(x: &[f32], gamma: &[f32], beta: &[f32], y: &mut [MaybeUninit<f32>], eps: f64) {
        let d = gamma.len();
        for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let m = Moments::of(x, eps);
            for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
                y.write(m.normalize(x) * g + b);
            }
        }
    }
}

simd_kernel! {
    /// Rows of `dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))` with `ĝ = dy·γ`, `x̂ = (x − mean)·rstd`;
    /// adds `Σ dy·x̂` to `dgamma` and `Σ dy` to `dbeta` (f64).
    fn backward(
        x: &[f32],
        dy: &[f32],
        gamma: &[f32],
        dx: &mut [MaybeUninit<f32>],
        dgamma: &mut [f64],
        dbeta: &mut [f64],
        eps: f64,
    ) {
        let d = gamma.len();
        let inv_d = 1.0 / d as f64;
        let rows = x.chunks_exact(d).zip(dy.chunks_exact(d));
        for ((x, dy), dx) in rows.zip(dx.chunks_exact_mut(d)) {
            let m = Moments::of(x, eps);
            let (s1, s2) = sum2_f64(x, dy, gamma, |x, dy, g| {
                let gh = dy * g;
                (gh, gh * m.normalize(x))
            });
            let m1 = (s1 * inv_d) as f32;
            let m2 = (s2 * inv_d) as f32;
            let cols = dx.iter_mut().zip(dgamma.iter_mut()).zip(dbeta.iter_mut());
            for ((((dx, dgam), dbet), (&x, &dy)), &g) in cols.zip(x.iter().zip(dy)).zip(gamma) {
                let xh = m.normalize(x);
                dx.write(m.rstd * (dy * g - m1 - xh * m2));
                *dgam += f64::from(dy * xh);
                *dbet += f64::from(dy);
            }
        }
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = storage_f32(self.name(), s1, l1)?;
        let gamma = storage_f32(self.name(), s2, l2)?;
        let beta = storage_f32(self.name(), s3, l3)?;
        let (rows, d) = rows_and_len(l1.shape());
        let step = task_rows(rows, d) * d;
        let chunk = |y: &mut [MaybeUninit<f32>], at: usize| {
            forward(&x[at..][..y.len()], gamma, beta, y, self.eps);
        };
        // SAFETY: the chunks are whole rows, and `forward` writes each.
        let y = unsafe { filled_chunks(x.len(), step, chunk) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, d) = rows_and_len(x.shape());
        let (dx, dgamma, dbeta) = with_f32(self.name(), x, |xs| {
            with_f32(self.name(), grad_res, |dy| {
                with_f32(
                    self.name(),
                    gamma,
                    |g| Ok(self.backward(xs, dy, g, rows, d)),
                )
            })
        })?;
        Ok((
            Some(cpu_tensor(dx, x.shape())?),
            Some(cpu_tensor(dgamma, gamma.shape())?),
            Some(cpu_tensor(dbeta, beta.shape())?),
        ))
    }
}

impl LayerNorm {
    /// `(dx, dγ, dβ)`: per-task f64 partial sums of dγ/dβ, added in task order (deterministic).
    fn backward(
        &self,
        x: &[f32],
        dy: &[f32],
        gamma: &[f32],
        rows: usize,
        d: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut dx = uninit_vec(x.len());
        let mut dgamma = vec![0.0f64; d];
        let mut dbeta = vec![0.0f64; d];
        if rows > 0 {
            let step = task_rows(rows, d) * d;
            let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
                .par_chunks_mut(step)
                .zip(x.par_chunks(step).zip(dy.par_chunks(step)))
                .map(|(dx, (x, dy))| {
                    let mut dg = vec![0.0f64; d];
                    let mut db = vec![0.0f64; d];
                    backward(x, dy, gamma, dx, &mut dg, &mut db, self.eps);
                    (dg, db)
                })
                .collect();
            for (dg, db) in &partials {
                for (t, &v) in dgamma.iter_mut().zip(dg) {
                    *t += v;
                }
                for (t, &v) in dbeta.iter_mut().zip(db) {
                    *t += v;
                }
            }
        }
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
        // SAFETY: the chunks (whole rows) of `dx` pair with equal chunks of `x` and `dy`, and
        // `backward` writes each row; with no rows `dx` is empty.
        let dx = unsafe { assume_init_vec(dx) };
        (dx, to_f32(dgamma), to_f32(dbeta))
    }
}
