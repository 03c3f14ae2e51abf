//! Exact GELU `0.5·x·(1 + erf(x/√2))` as one elementwise custom op.

use super::cpu::{cpu_tensor, filled_chunks, storage_f32, task_rows, with_f32};
use super::math::gelu_cdf_and_kernel;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;

/// 1/√(2π), the normal density at 0.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// GELU with the erf cdf; backward `dy·(Φ(x) + x·φ(x))`.
pub(super) struct GeluErf;

simd_kernel! {
    /// y = 0.5·x·(1 + erf(x/√2)).
    fn forward(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        for (y, &x) in y.iter_mut().zip(x) {
            let (cdf, _) = gelu_cdf_and_kernel(x);
            y.write(0.5 * x * cdf);
        }
    }
}

simd_kernel! {
    /// dx = dy·(0.5·(1 + erf(x/√2)) + x·e^{−x²/2}/√(2π)).
    fn backward(x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            let (cdf, kernel) = gelu_cdf_and_kernel(x);
            dx.write(dy * (0.5 * cdf + x * kernel * INV_SQRT_2PI));
        }
    }
}

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = storage_f32(self.name(), storage, layout)?;
        let step = task_rows(x.len(), 1);
        // SAFETY: `forward` writes all of its chunk (of `x`'s length).
        let y = unsafe { filled_chunks(x.len(), step, |y, at| forward(&x[at..][..y.len()], y)) };
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(self.name(), arg, |x| {
            with_f32(self.name(), grad_res, |dy| {
                let step = task_rows(x.len(), 1);
                let chunk = |dx: &mut [MaybeUninit<f32>], at: usize| {
                    let n = dx.len();
                    backward(&x[at..][..n], &dy[at..][..n], dx);
                };
                // SAFETY: `backward` writes all of its chunk (`x` and `dy` have one shape).
                Ok(unsafe { filled_chunks(x.len(), step, chunk) })
            })
        })?;
        cpu_tensor(dx, arg.shape()).map(Some)
    }
}
