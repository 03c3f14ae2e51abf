//! Dense MultiMix's attention on the host for untracked inputs (the default: the attention is
//! detached, METHOD.md §3), where candle's composition (a batched product per query, then five
//! elementwise and reduction ops over `[b, r]`) cost more than the mixing it weights.

use super::cpu::{dot, exp_nonpositive, max_f32, with_f32};
use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

simd_kernel! {
    /// `u = (1/r) Σ_p z_p` for one example's `[r, d]` embeddings `z` and `u` `[d]`.
    fn mean_positions(z: &[f32], u: &mut [f32]) {
        let d = u.len();
        u.fill(0.0);
        for row in z.chunks_exact(d) {
            for (u, &z) in u.iter_mut().zip(row) {
                *u += z;
            }
        }
        let inv = 1.0 / (z.len() / d) as f32;
        u.iter_mut().for_each(|u| *u *= inv);
    }
}

simd_kernel! {
    /// One example's attention `a = h(z u)` over its `r` positions (`z` `[r, d]`, `u` `[d]`,
    /// `a` `[r]`): `softmax` (max subtracted), or ReLU divided by its sum plus `eps`.
    fn attention_row(z: &[f32], u: &[f32], a: &mut [f32], softmax: bool, eps: f32) {
        for (a, z) in a.iter_mut().zip(z.chunks_exact(u.len())) {
            *a = dot(z, u);
        }
        let sum = if softmax {
            let max = max_f32(a);
            a.iter_mut().for_each(|a| *a = exp_nonpositive(*a - max));
            a.iter().sum::<f32>()
        } else {
            a.iter_mut().for_each(|a| *a = a.max(0.0));
            a.iter().sum::<f32>() + eps
        };
        let inv = 1.0 / sum;
        a.iter_mut().for_each(|a| *a *= inv);
    }
}

/// The `gap` query `[b, d]` of untracked, non-empty f32 CPU embeddings `z` `[b, r, d]`: the mean
/// over the positions of each example, one example per task.
pub(crate) fn gap_query_host(z: &Tensor) -> Result<Tensor> {
    let (b, r, d) = z.dims3()?;
    let u = with_f32("gap-query", z, |z| {
        let mut u = vec![0.0f32; b * d];
        u.par_chunks_mut(d)
            .zip(z.par_chunks(r * d))
            .for_each(|(u, z)| mean_positions(z, u));
        Ok(u)
    })?;
    Tensor::from_vec(u, (b, d), &Device::Cpu)
}

/// The attention `[b, r]` of untracked, non-empty f32 CPU embeddings `z` `[b, r, d]` and queries
/// `u` `[b, d]` (shapes checked by the caller, `dense::attention`), one example per task.
pub(crate) fn attention_host(z: &Tensor, u: &Tensor, softmax: bool, eps: f64) -> Result<Tensor> {
    let (b, r, d) = z.dims3()?;
    let a = with_f32("attention", z, |z| {
        with_f32("attention", u, |u| {
            let mut a = vec![0.0f32; b * r];
            a.par_chunks_mut(r)
                .zip(z.par_chunks(r * d))
                .zip(u.par_chunks(d))
                .for_each(|((a, z), u)| attention_row(z, u, a, softmax, eps as f32));
            Ok(a)
        })
    })?;
    Tensor::from_vec(a, (b, r), &Device::Cpu)
}

/// The attention `[b, r]` of untracked, non-empty f32 CPU embeddings `z` `[b, r, d]` with the
/// `gap` query: per example, the mean of its positions and then their scores, so the example's
/// embeddings are read from memory once and from cache the second time.
pub(crate) fn gap_attention_host(z: &Tensor, softmax: bool, eps: f64) -> Result<Tensor> {
    let (b, r, d) = z.dims3()?;
    let a = with_f32("gap-attention", z, |z| {
        let mut a = vec![0.0f32; b * r];
        a.par_chunks_mut(r).zip(z.par_chunks(r * d)).for_each_init(
            || vec![0.0f32; d],
            |u, (a, z)| {
                mean_positions(z, u);
                attention_row(z, u, a, softmax, eps as f32);
            },
        );
        Ok(a)
    })?;
    Tensor::from_vec(a, (b, r), &Device::Cpu)
}
