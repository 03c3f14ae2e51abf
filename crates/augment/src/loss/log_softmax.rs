//! log_softmax over the last dim as one custom op.

use super::cpu::{exp_nonpositive, exp_shifted, max_f32, rows_and_len, storage_f32, sum_f64};
use super::cpu::{task_rows, with_f32};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// log_softmax over the last dim; backward `dx = dy − exp(y)·Σ dy` from the saved output.
pub(super) struct LogSoftmax;

simd_kernel! {
    /// Rows of `y = (x − max) − ln Σ exp(x − max)`.
    fn forward(x: &[f32], y: &mut [f32], d: usize) {
        for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let max = max_f32(x);
            // `y` holds the exponentials until it is overwritten below.
            let ln_s = f64::from(exp_shifted(x, max, y)).ln() as f32;
            for (y, &x) in y.iter_mut().zip(x) {
                *y = (x - max) - ln_s;
            }
        }
    }
}

simd_kernel! {
    /// Rows of `dx = dy − exp(y)·Σ dy`.
    fn backward(y: &[f32], dy: &[f32], dx: &mut [f32], d: usize) {
        let rows = y.chunks_exact(d).zip(dy.chunks_exact(d));
        for ((y, dy), dx) in rows.zip(dx.chunks_exact_mut(d)) {
            let s = sum_f64(dy) as f32;
            for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                *dx = dy - exp_nonpositive(y) * s;
            }
        }
    }
}

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "log-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = storage_f32(self.name(), storage, layout)?;
        let (rows, d) = rows_and_len(layout.shape());
        let mut y = vec![0.0f32; x.len()];
        if !x.is_empty() {
            let step = task_rows(rows, d) * d;
            y.par_chunks_mut(step)
                .zip(x.par_chunks(step))
                .for_each(|(y, x)| forward(x, y, d));
        }
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (rows, d) = rows_and_len(res.shape());
        let dx = with_f32(self.name(), res, |y| {
            with_f32(self.name(), grad_res, |dy| {
                let mut dx = vec![0.0f32; y.len()];
                if !y.is_empty() {
                    let step = task_rows(rows, d) * d;
                    dx.par_chunks_mut(step)
                        .zip(y.par_chunks(step).zip(dy.par_chunks(step)))
                        .for_each(|(dx, (y, dy))| backward(y, dy, dx, d));
                }
                Ok(dx)
            })
        })?;
        Tensor::from_vec(dx, res.shape().clone(), &Device::Cpu).map(Some)
    }
}
