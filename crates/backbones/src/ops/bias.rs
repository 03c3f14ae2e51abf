//! `x[..., n] + bias[n]` as one custom op whose bias gradient is a parallel column sum.

use super::cpu::{cpu_tensor, filled_chunks, rows_and_len, storage_f32, task_rows, with_f32};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Bias add over the last dim; backward `dx = dy`, `dbias = Σ_rows dy`.
pub(super) struct BiasAdd;

simd_kernel! {
    /// Rows of `y = x + bias`.
    fn forward(x: &[f32], bias: &[f32], y: &mut [MaybeUninit<f32>]) {
        let d = bias.len();
        for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            for ((y, &x), &b) in y.iter_mut().zip(x).zip(bias) {
                y.write(x + b);
            }
        }
    }
}

simd_kernel! {
    /// Adds the column sums of the rows of `dy` to `acc` (f64).
    fn column_sums(dy: &[f32], acc: &mut [f64]) {
        for row in dy.chunks_exact(acc.len()) {
            for (a, &g) in acc.iter_mut().zip(row) {
                *a += f64::from(g);
            }
        }
    }
}

/// Σ over rows of the `[rows, d]` matrix `dy`: per-task f64 partial sums added in task order
/// (deterministic).
fn column_sum(dy: &[f32], rows: usize, d: usize) -> Vec<f32> {
    let step = task_rows(rows, d) * d;
    let partials: Vec<Vec<f64>> = dy
        .par_chunks(step)
        .map(|chunk| {
            let mut acc = vec![0.0f64; d];
            column_sums(chunk, &mut acc);
            acc
        })
        .collect();
    let mut total = vec![0.0f64; d];
    for p in &partials {
        for (t, &v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total.into_iter().map(|v| v as f32).collect()
}

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = storage_f32(self.name(), s1, l1)?;
        let bias = storage_f32(self.name(), s2, l2)?;
        let (rows, d) = rows_and_len(l1.shape());
        let step = task_rows(rows, d) * d;
        // SAFETY: the chunks are whole rows, and `forward` writes each.
        let y =
            unsafe { filled_chunks(x.len(), step, |y, at| forward(&x[at..][..y.len()], bias, y)) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // A detached bias (a frozen model) needs no column sums.
        if !bias.track_op() {
            return Ok((Some(grad_res.clone()), None));
        }
        let (rows, d) = rows_and_len(grad_res.shape());
        let dbias = if rows > 0 {
            with_f32(self.name(), grad_res, |dy| Ok(column_sum(dy, rows, d)))?
        } else {
            vec![0.0f32; d]
        };
        Ok((
            Some(grad_res.clone()),
            Some(cpu_tensor(dbias, bias.shape())?),
        ))
    }
}
