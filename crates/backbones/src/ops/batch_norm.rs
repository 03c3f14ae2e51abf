//! Batch normalization over `[B, C, S…]` as custom ops: training mode (batch statistics, with
//! the full backward through them) and the per-channel affine map of evaluation mode, each
//! optionally followed by ReLU in the same pass (a ResNet's conv-bn-relu), whose backward masks
//! the output gradient plane by plane in cache before the normalization's own backward.
//!
//! Channel `c` of sample `b` is the contiguous plane `x[(b·C + c)·S ..][..S]`; statistics are
//! parallel over channels, elementwise work over planes, accumulation in f64.

use super::cpu::{assume_init, cpu_tensor, filled_chunks, storage_f32, with_f32, write_slice};
use super::math::{dot_f64, sum_f64, sum_sq_dev_f64};
use super::relu;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

simd_kernel! {
    /// Σ x of one plane, in f64.
    fn plane_sum(x: &[f32]) -> f64 {
        sum_f64(x)
    }
}

simd_kernel! {
    /// Σ (x − (hi + lo))² of one plane, in f64.
    fn plane_sq_dev(x: &[f32], hi: f32, lo: f32) -> f64 {
        sum_sq_dev_f64(x, hi, lo)
    }
}

simd_kernel! {
    /// `(Σ dy, Σ dy·x)` of one plane, in f64.
    fn plane_dy_sums(dy: &[f32], x: &[f32]) -> (f64, f64) {
        (sum_f64(dy), dot_f64(dy, x))
    }
}

simd_kernel! {
    /// `y = ((x − hi) − lo)·scale + shift` over one plane, then `max(y, 0)` (NaN kept) if `relu`.
    fn normalize_plane(
        x: &[f32],
        y: &mut [MaybeUninit<f32>],
        hi: f32,
        lo: f32,
        scale: f32,
        shift: f32,
        relu: bool,
    ) {
        if relu {
            for (y, &x) in y.iter_mut().zip(x) {
                let v = ((x - hi) - lo) * scale + shift;
                y.write(if v < 0.0 { 0.0 } else { v });
            }
        } else {
            for (y, &x) in y.iter_mut().zip(x) {
                y.write(((x - hi) - lo) * scale + shift);
            }
        }
    }
}

simd_kernel! {
    /// `y = x·scale + shift` over one plane, then `max(y, 0)` (NaN kept) if `relu`.
    fn affine_plane(x: &[f32], y: &mut [MaybeUninit<f32>], scale: f32, shift: f32, relu: bool) {
        if relu {
            for (y, &x) in y.iter_mut().zip(x) {
                let v = x * scale + shift;
                y.write(if v < 0.0 { 0.0 } else { v });
            }
        } else {
            for (y, &x) in y.iter_mut().zip(x) {
                y.write(x * scale + shift);
            }
        }
    }
}

simd_kernel! {
    /// `d ← scale·(d − mean_dy − (x − μ)·k)` over one plane, in place (`d` holds the output
    /// gradient on entry, the input gradient on return), `μ = st.hi + st.lo`.
    fn input_grad_plane(x: &[f32], d: &mut [f32], st: ChannelStats, mean_dy: f32, k: f32, scale: f32) {
        for (d, &xv) in d.iter_mut().zip(x) {
            let xc = (xv - st.hi) - st.lo;
            *d = scale * (*d - mean_dy - xc * k);
        }
    }
}

simd_kernel! {
    /// `d ← d·scale` over one plane, in place.
    fn scale_plane(d: &mut [f32], scale: f32) {
        for d in d.iter_mut() {
            *d *= scale;
        }
    }
}

/// The gradient reaching the normalization's output, for one plane: `dy` itself, or with a
/// fused ReLU `dy·[y > 0]` (`y` the op's rectified output) written to `scratch`.
fn plane_grad<'a>(
    dy: &'a [f32],
    y: Option<&[f32]>,
    scratch: &'a mut [MaybeUninit<f32>],
) -> &'a [f32] {
    match y {
        Some(y) => {
            relu::mask(y, dy, scratch);
            // SAFETY: `mask` wrote every element of `scratch` (its length is the plane's).
            unsafe { assume_init(scratch) }
        }
        None => dy,
    }
}

/// Writes the gradient reaching the normalization's output (see [`plane_grad`]) into `out`,
/// all of it, and returns it.
fn write_plane_grad<'a>(
    dy: &[f32],
    y: Option<&[f32]>,
    out: &'a mut [MaybeUninit<f32>],
) -> &'a mut [f32] {
    match y {
        Some(y) => {
            relu::mask(y, dy, out);
            // SAFETY: `mask` wrote every element of `out` (its length is the plane's).
            unsafe { assume_init(out) }
        }
        None => write_slice(out, dy),
    }
}

/// Per channel `(Σ g, Σ g·x)` over the batch, in f64, of the gradient `g` reaching the
/// normalization's output ([`plane_grad`]; `y` is the rectified output when ReLU is fused).
fn channel_grad_sums(
    dy: &[f32],
    x: &[f32],
    y: Option<&[f32]>,
    (b, c, s): (usize, usize, usize),
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut scratch = vec![MaybeUninit::uninit(); if y.is_some() { s } else { 0 }];
            let (mut sum_g, mut sum_gx) = (0.0f64, 0.0f64);
            for i in 0..b {
                let off = (i * c + ch) * s;
                let yp = y.map(|y| &y[off..][..s]);
                let g = plane_grad(&dy[off..][..s], yp, &mut scratch);
                let (pg, pgx) = plane_dy_sums(g, &x[off..][..s]);
                sum_g += pg;
                sum_gx += pgx;
            }
            (sum_g, sum_gx)
        })
        .collect()
}

/// `(B, C, S)` of a `[B, C, …]` shape.
pub(super) fn channel_dims(shape: &Shape) -> Result<(usize, usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 2 {
        candle_core::bail!("batch norm needs [B, C, ...], got {dims:?}");
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

/// Per-channel mean as an f32 pair `hi + lo` and `1/√(var + eps)` (biased variance), plus the
/// variance itself.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChannelStats {
    hi: f32,
    lo: f32,
    rstd: f32,
    pub(super) mean: f64,
    pub(super) var: f64,
}

/// The statistics of every channel of `x` `[B, C, S]`.
pub(super) fn channel_stats(
    x: &[f32],
    (b, c, s): (usize, usize, usize),
    eps: f64,
) -> Vec<ChannelStats> {
    let n = (b * s) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = (0..b).map(|i| &x[(i * c + ch) * s..][..s]);
            let mean = planes.clone().map(plane_sum).sum::<f64>() / n;
            let hi = mean as f32;
            let lo = (mean - f64::from(hi)) as f32;
            let var = planes.map(|p| plane_sq_dev(p, hi, lo)).sum::<f64>() / n;
            ChannelStats {
                hi,
                lo,
                rstd: (1.0 / (var + eps).sqrt()) as f32,
                mean,
                var,
            }
        })
        .collect()
}

/// Training-mode batch norm with precomputed batch statistics:
/// `y = (x − μ_c)·rstd_c·γ_c + β_c`; the backward includes the statistics' dependence on x:
/// `dx = γ·rstd·(dy − mean(dy) − x̂·mean(dy·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`.
pub(super) struct BatchNormTrain {
    pub(super) stats: Vec<ChannelStats>,
    /// Whether ReLU follows in the same op.
    pub(super) relu: bool,
}

/// A vector of `len` values built plane by plane in parallel: `f(plane, i, channel)` for every
/// `[S]` plane `i`, no zero-fill first.
///
/// # Safety
/// `f` must write every element of the plane it gets.
unsafe fn planes_vec(
    len: usize,
    c: usize,
    s: usize,
    f: impl Fn(&mut [MaybeUninit<f32>], usize, usize) + Sync,
) -> Vec<f32> {
    let plane = |out: &mut [MaybeUninit<f32>], at: usize| {
        let i = at / s.max(1);
        f(out, i, i % c);
    };
    // SAFETY: the chunks are the `[S]` planes (len = B·C·S; none when S = 0), and the caller
    // guarantees `f` writes each whole.
    unsafe { filled_chunks(len, s, plane) }
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        if self.relu {
            "batch-norm-train-relu"
        } else {
            "batch-norm-train"
        }
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
        let (_, c, s) = channel_dims(l1.shape())?;
        // SAFETY: `normalize_plane` writes every element of its plane.
        let y = unsafe {
            planes_vec(x.len(), c, s, |plane, i, ch| {
                let st = self.stats[ch];
                let scale = st.rstd * gamma[ch];
                let (xs, shift) = (&x[i * s..][..s], beta[ch]);
                normalize_plane(xs, plane, st.hi, st.lo, scale, shift, self.relu);
            })
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, s) = channel_dims(x.shape())?;
        let n = (b * s) as f64;
        let name = self.name();
        let (dx, dgamma, dbeta) = with_f32(name, x, |x| {
            with_f32(name, grad_res, |dy| {
                with_f32(name, gamma, |gamma| {
                    with_f32(name, res, |out| {
                        // With ReLU fused, the gradient reaching the normalization is dy·[y > 0].
                        let y = self.relu.then_some(out);
                        // Per channel: Σ g and Σ g·(x − μ) = Σ g·x − μ·Σ g, in f64.
                        let sums: Vec<(f64, f64)> = channel_grad_sums(dy, x, y, (b, c, s))
                            .into_iter()
                            .zip(&self.stats)
                            .map(|((sg, sgx), st)| {
                                (sg, sgx - (f64::from(st.hi) + f64::from(st.lo)) * sg)
                            })
                            .collect();
                        // SAFETY: `write_plane_grad` writes every element of the plane.
                        let dx = unsafe {
                            planes_vec(x.len(), c, s, |plane, i, ch| {
                                let st = self.stats[ch];
                                let (sum_dy, sum_dy_xc) = sums[ch];
                                let rstd = f64::from(st.rstd);
                                let mean_dy = (sum_dy / n) as f32;
                                // mean(dy·x̂)·rstd, applied to (x − μ).
                                let k = (sum_dy_xc / n * rstd * rstd) as f32;
                                let scale = st.rstd * gamma[ch];
                                let yp = y.map(|y| &y[i * s..][..s]);
                                let d = write_plane_grad(&dy[i * s..][..s], yp, plane);
                                input_grad_plane(&x[i * s..][..s], d, st, mean_dy, k, scale);
                            })
                        };
                        let dgamma: Vec<f32> = sums
                            .iter()
                            .zip(&self.stats)
                            .map(|(&(_, sxc), st)| (sxc * f64::from(st.rstd)) as f32)
                            .collect();
                        let dbeta: Vec<f32> = sums.iter().map(|&(sdy, _)| sdy as f32).collect();
                        Ok((dx, dgamma, dbeta))
                    })
                })
            })
        })?;
        Ok((
            Some(cpu_tensor(dx, x.shape())?),
            Some(cpu_tensor(dgamma, gamma.shape())?),
            Some(cpu_tensor(dbeta, beta.shape())?),
        ))
    }
}

/// `y = x·scale_c + shift_c` over `[B, C, S…]` (evaluation-mode batch norm after folding the
/// running statistics), optionally followed by ReLU; with `g` the gradient reaching the affine map
/// (`dy`, or `dy·[y > 0]` with ReLU): `dx = g·scale`, `dscale = Σ g·x`, `dshift = Σ g`.
pub(super) struct ChannelAffine {
    /// Whether ReLU follows in the same op.
    pub(super) relu: bool,
}

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        if self.relu {
            "channel-affine-relu"
        } else {
            "channel-affine"
        }
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
        let scale = storage_f32(self.name(), s2, l2)?;
        let shift = storage_f32(self.name(), s3, l3)?;
        let (_, c, s) = channel_dims(l1.shape())?;
        // SAFETY: `affine_plane` writes every element of its plane.
        let y = unsafe {
            planes_vec(x.len(), c, s, |plane, i, ch| {
                affine_plane(&x[i * s..][..s], plane, scale[ch], shift[ch], self.relu);
            })
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, s) = channel_dims(x.shape())?;
        let name = self.name();
        // A frozen model's detached scale and shift need no channel sums.
        let scale_tracked = scale.track_op() || shift.track_op();
        let (dx, sums) = with_f32(name, x, |x| {
            with_f32(name, grad_res, |dy| {
                with_f32(name, scale, |scale| {
                    with_f32(name, res, |out| {
                        let y = self.relu.then_some(out);
                        // SAFETY: `write_plane_grad` writes every element of the plane.
                        let dx = unsafe {
                            planes_vec(x.len(), c, s, |plane, i, ch| {
                                let yp = y.map(|y| &y[i * s..][..s]);
                                let d = write_plane_grad(&dy[i * s..][..s], yp, plane);
                                scale_plane(d, scale[ch]);
                            })
                        };
                        let sums = scale_tracked.then(|| channel_grad_sums(dy, x, y, (b, c, s)));
                        Ok((dx, sums))
                    })
                })
            })
        })?;
        let (dscale, dshift) = match sums {
            Some(sums) => {
                let dscale: Vec<f32> = sums.iter().map(|p| p.1 as f32).collect();
                let dshift: Vec<f32> = sums.iter().map(|p| p.0 as f32).collect();
                (
                    Some(cpu_tensor(dscale, scale.shape())?),
                    Some(cpu_tensor(dshift, shift.shape())?),
                )
            }
            None => (None, None),
        };
        Ok((Some(cpu_tensor(dx, x.shape())?), dscale, dshift))
    }
}
