//! The residual `relu(a + b)` as one elementwise custom op, and the ReLU gradient mask it shares
//! with the batch norms that fuse ReLU.
//!
//! candle's `relu` backward builds `zeros_like`, a `ge` mask, its f32 cast and a product: four
//! passes over the activation and three temporaries. Here the backward is one pass over the
//! output and its gradient, `dx = dy` where `y > 0` (PyTorch's `threshold_backward` on the
//! result), and the residual sum is not stored apart from its rectified output.

use super::cpu::{cpu_tensor, filled_chunks, storage_f32, task_rows, with_f32};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
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
            let chunk = |dx: &mut [MaybeUninit<f32>], at: usize| {
                let n = dx.len();
                mask(&y[at..][..n], &dy[at..][..n], dx);
            };
            // SAFETY: `mask` writes all of its chunk (`y` and `dy` have one shape).
            Ok(unsafe { filled_chunks(y.len(), s, chunk) })
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
        let chunk = |y: &mut [MaybeUninit<f32>], at: usize| {
            let n = y.len();
            add_rectify(&a[at..][..n], &b[at..][..n], y);
        };
        // SAFETY: `add_rectify` writes all of its chunk (`a` and `b` have one shape).
        let y = unsafe { filled_chunks(a.len(), s, chunk) };
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
