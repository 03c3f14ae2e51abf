//! The residual `relu(a + b)` as one elementwise custom op, and the ReLU gradient mask it shares
//! with the batch norms that fuse ReLU.
//!
//! candle's `relu` backward builds `zeros_like`, a `ge` mask, its f32 cast and a product: four
//! passes over the activation and three temporaries. Here the backward is one pass over the
//! output and its gradient, `dx = dy` where `y > 0` (PyTorch's `threshold_backward` on the
//! result), and the residual sum is not stored apart from its rectified output.

use super::cpu::{cpu_tensor, filled_vec, storage_f32, task_rows, with_f32};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

simd_kernel! {
    /// `y = max(a + b, 0)`, NaN kept.
    fn add_rectify(a: &[f32], b: &[f32], y: &mut [MaybeUninit<f32>]) {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            let s = a + b;
            y.write(if s < 0.0 { 0.0 } else { s });
        }
    }
}

simd_kernel! {
    /// `dx = dy` where `y > 0`, else 0 (the gradient of a ReLU given its output `y`), written to
    /// every element of `dx` (all three of one length).
    fn mask(y: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
        for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
            dx.write(if y <= 0.0 { 0.0 } else { g });
        }
    }
}

/// Elements per parallel task for a flat elementwise pass over `n` values.
fn step(n: usize) -> usize {
    task_rows(n, 1)
}

/// The input gradient `dy·[y > 0]` from the op's output `res` and its gradient.
fn masked_grad(op: &'static str, res: &Tensor, grad_res: &Tensor) -> Result<Tensor> {
    let dx = with_f32(op, res, |y| {
        with_f32(op, grad_res, |dy| {
            let s = step(y.len());
            let fill = |dx: &mut [MaybeUninit<f32>]| {
                dx.par_chunks_mut(s)
                    .zip(y.par_chunks(s).zip(dy.par_chunks(s)))
                    .for_each(|(dx, (y, dy))| mask(y, dy, dx));
            };
            // SAFETY: the chunks of `dx` pair with equal chunks of `y` and `dy` (one length), and
            // `mask` writes each whole.
            Ok(unsafe { filled_vec(y.len(), fill) })
        })
    })?;
    cpu_tensor(dx, res.shape())
}

/// `max(a + b, 0)` of two tensors of one shape; both get `dy·[y > 0]`.
pub(super) struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = storage_f32(self.name(), s1, l1)?;
        let b = storage_f32(self.name(), s2, l2)?;
        let s = step(a.len());
        let fill = |y: &mut [MaybeUninit<f32>]| {
            y.par_chunks_mut(s)
                .zip(a.par_chunks(s).zip(b.par_chunks(s)))
                .for_each(|(y, (a, b))| add_rectify(a, b, y));
        };
        // SAFETY: the chunks of `y` pair with equal chunks of `a` and `b` (one shape), and
        // `add_rectify` writes each whole.
        let y = unsafe { filled_vec(a.len(), fill) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = masked_grad(self.name(), res, grad_res)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}
