//! The mean over a range of tokens, `[B, N, D]` → `[B, D]` (a ViT's average pooling), as one
//! custom op.
//!
//! candle's `mean(1)` of the narrowed tokens reduces over a strided middle dim element by
//! element, single-threaded, and its backward broadcasts and pads back through a `narrow`:
//! in a profile (`perf`) of the default ViT's MultiMix step, 3 % of it while the
//! pooling ran twice.

use super::cpu::{cpu_tensor, filled_vec, storage_f32, with_f32};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `y[b, :] = mean_{t ∈ [start, start + len)} x[b, t, :]`; backward `dx[b, t, :] = dy[b, :]/len`
/// on the range, 0 elsewhere.
pub(super) struct MeanTokens {
    /// The first token averaged.
    pub(super) start: usize,
    /// Tokens averaged (≥ 1).
    pub(super) len: usize,
}

simd_kernel! {
    /// `y = Σ_t rows[t] · scale` over the rows `[len, D]` of one batch element (f32, token order).
    fn mean_rows(rows: &[f32], y: &mut [MaybeUninit<f32>], scale: f32) {
        let d = y.len();
        let mut acc = rows[..d].to_vec();
        for row in rows[d..].chunks_exact(d) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
        for (y, a) in y.iter_mut().zip(acc) {
            y.write(a * scale);
        }
    }
}

impl CustomOp1 for MeanTokens {
    fn name(&self) -> &'static str {
        "mean-tokens"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = storage_f32(self.name(), storage, layout)?;
        let (b, n, d) = layout.shape().dims3()?;
        let (start, len) = (self.start, self.len);
        let scale = 1.0 / len as f32;
        let fill = |y: &mut [MaybeUninit<f32>]| {
            if d > 0 {
                y.par_chunks_mut(d).enumerate().for_each(|(i, y)| {
                    mean_rows(&x[(i * n + start) * d..][..len * d], y, scale);
                });
            }
        };
        // SAFETY: `mean_rows` writes all `D` values of each batch element's row, and the `B`
        // rows cover `y`; with `D = 0` it is empty.
        let y = unsafe { filled_vec(b * d, fill) };
        Ok((CpuStorage::F32(y), Shape::from((b, d))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (b, n, d) = arg.dims3()?;
        let (start, len) = (self.start, self.len);
        let scale = 1.0 / len as f32;
        let dx = with_f32(self.name(), grad_res, |dy| {
            let mut dx = vec![0.0f32; b * n * d];
            if d > 0 {
                dx.par_chunks_mut(n * d)
                    .zip(dy.par_chunks(d))
                    .for_each(|(dx, dy)| {
                        for row in dx[start * d..(start + len) * d].chunks_exact_mut(d) {
                            for (v, &g) in row.iter_mut().zip(dy) {
                                *v = g * scale;
                            }
                        }
                    });
            }
            Ok(dx)
        })?;
        cpu_tensor(dx, arg.shape()).map(Some)
    }
}
