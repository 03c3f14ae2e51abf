//! Softmax over the last dim as one custom op.

use super::cpu::{
    assume_init, cpu_tensor, filled_chunks, rows_and_len, storage_f32, task_rows, with_f32,
};
use super::math::{dot_f64, exp_nonpositive, max_f32, sum_f32};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;

/// Softmax over the last dim; backward `dx = y ⊙ (dy − Σ dy·y)` from the saved output.
pub(super) struct Softmax;

simd_kernel! {
    /// Rows of `y = exp(x − max) / Σ exp(x − max)`.
    fn forward(x: &[f32], y: &mut [MaybeUninit<f32>], d: usize) {
        for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let max = max_f32(x);
            for (y, &x) in y.iter_mut().zip(x) {
                y.write(exp_nonpositive(x - max));
            }
            // SAFETY: every element of the row was just written.
            let y = unsafe { assume_init(y) };
            let inv = 1.0 / sum_f32(y);
            for y in y.iter_mut() {
                *y *= inv;
            }
        }
    }
}

simd_kernel! {
    /// Rows of `dx = y ⊙ (dy − Σ dy·y)`.
    fn backward(y: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>], d: usize) {
        let rows = y.chunks_exact(d).zip(dy.chunks_exact(d));
        for ((y, dy), dx) in rows.zip(dx.chunks_exact_mut(d)) {
            let s = dot_f64(y, dy) as f32;
            for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                dx.write(y * (dy - s));
            }
        }
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = storage_f32(self.name(), storage, layout)?;
        let (rows, d) = rows_and_len(layout.shape());
        let step = task_rows(rows, d) * d;
        // SAFETY: the chunks are whole rows, and `forward` writes each.
        let y = unsafe { filled_chunks(x.len(), step, |y, at| forward(&x[at..][..y.len()], y, d)) };
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (rows, d) = rows_and_len(res.shape());
        let dx = with_f32(self.name(), res, |y| {
            with_f32(self.name(), grad_res, |dy| {
                let step = task_rows(rows, d) * d;
                let chunk = |dx: &mut [MaybeUninit<f32>], at: usize| {
                    let n = dx.len();
                    backward(&y[at..][..n], &dy[at..][..n], dx, d);
                };
                // SAFETY: the chunks are whole rows, and `backward` writes each.
                Ok(unsafe { filled_chunks(y.len(), step, chunk) })
            })
        })?;
        cpu_tensor(dx, res.shape()).map(Some)
    }
}
