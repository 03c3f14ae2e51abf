//! Soft-target cross-entropy as one custom op (gradient to the logits only).

use super::cpu::{dot_shifted_f64, exp_shifted, max_f32, rows_and_len, storage_f32, sum_f64};
use super::cpu::{task_rows, with_f32};
use candle_core::{CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `−mean_rows Σ_c Y·log_softmax(L)`; backward `dL = g·(softmax(L)·Σ_c Y − Y)/N`, none for `Y`.
pub(super) struct SoftCrossEntropy;

simd_kernel! {
    /// Σ over the rows of `Σ_c y·(lse − x) = ln(s)·Σ y − Σ y·(x − max)`, `s = Σ exp(x − max)`
    /// (f64); `scratch` holds one row.
    fn forward(x: &[f32], y: &[f32], scratch: &mut [f32]) -> f64 {
        let d = scratch.len();
        let mut total = 0.0f64;
        for (x, y) in x.chunks_exact(d).zip(y.chunks_exact(d)) {
            let max = max_f32(x);
            let ln_s = f64::from(exp_shifted(x, max, scratch)).ln();
            total += ln_s * sum_f64(y) - dot_shifted_f64(y, x, max);
        }
        total
    }
}

simd_kernel! {
    /// Rows of `dx = scale·(softmax(x)·Σ y − y)`.
    fn backward(x: &[f32], y: &[f32], dx: &mut [f32], d: usize, scale: f32) {
        let rows = x.chunks_exact(d).zip(y.chunks_exact(d));
        for ((x, y), dx) in rows.zip(dx.chunks_exact_mut(d)) {
            // `dx` holds the exponentials until it is overwritten below.
            let s = exp_shifted(x, max_f32(x), dx);
            let p_scale = sum_f64(y) as f32 / s;
            for (dx, &y) in dx.iter_mut().zip(y) {
                *dx = scale * (*dx * p_scale - y);
            }
        }
    }
}

/// The mean over `rows` of per-row sums; NaN for no rows (as `torch.mean` of an empty tensor).
fn mean_rows(total: f64, rows: usize) -> f32 {
    (total / rows as f64) as f32
}

impl CustomOp2 for SoftCrossEntropy {
    fn name(&self) -> &'static str {
        "soft-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = storage_f32(self.name(), s1, l1)?;
        let y = storage_f32(self.name(), s2, l2)?;
        let (rows, d) = rows_and_len(l1.shape());
        let total = if x.is_empty() {
            0.0
        } else {
            let step = task_rows(rows, d) * d;
            let partials: Vec<f64> = x
                .par_chunks(step)
                .zip(y.par_chunks(step))
                .map(|(x, y)| forward(x, y, &mut vec![0.0f32; d]))
                .collect();
            partials.iter().sum()
        };
        Ok((
            CpuStorage::F32(vec![mean_rows(total, rows)]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, d) = rows_and_len(logits.shape());
        let scale = grad_res.to_scalar::<f32>()? / rows.max(1) as f32;
        let dx = with_f32(self.name(), logits, |x| {
            with_f32(self.name(), targets, |y| {
                let mut dx = vec![0.0f32; x.len()];
                if !x.is_empty() {
                    let step = task_rows(rows, d) * d;
                    dx.par_chunks_mut(step)
                        .zip(x.par_chunks(step).zip(y.par_chunks(step)))
                        .for_each(|(dx, (x, y))| backward(x, y, dx, d, scale));
                }
                Ok(dx)
            })
        })?;
        let dx = Tensor::from_vec(dx, logits.shape().clone(), &Device::Cpu)?;
        Ok((Some(dx), None))
    }
}
