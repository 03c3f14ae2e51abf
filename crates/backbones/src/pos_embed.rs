//! Resampling absolute position embeddings to another grid, as timm's
//! `resample_abs_pos_embed` does (`F.interpolate(mode="bicubic", align_corners=False)` on the
//! grid part, prefix tokens kept), so a checkpoint made at one image size runs at another.
//!
//! Bicubic interpolation is separable: each axis is a fixed `[new, old]` weight matrix (PyTorch's
//! coefficients, computed here in f64), applied with two matmuls.

use candle_core::{DType, Result, Tensor};

/// Keys' cubic convolution kernel with parameter `a` (PyTorch: −0.75 plain, −0.5 antialiased).
fn cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// `[new_len, old_len]` (row-major) bicubic weights of `upsample_bicubic2d(align_corners=False)`:
/// source `(i + ½)·old/new − ½`, four taps with indices clamped to the border.
fn bicubic_weights(old_len: usize, new_len: usize) -> Vec<f64> {
    let scale = old_len as f64 / new_len as f64;
    let mut w = vec![0.0; new_len * old_len];
    for i in 0..new_len {
        let src = scale * (i as f64 + 0.5) - 0.5;
        let x0 = src.floor();
        let t = src - x0;
        for (k, coeff) in [
            cubic(t + 1.0, -0.75),
            cubic(t, -0.75),
            cubic(1.0 - t, -0.75),
            cubic(2.0 - t, -0.75),
        ]
        .into_iter()
        .enumerate()
        {
            let idx = (x0 as i64 - 1 + k as i64).clamp(0, old_len as i64 - 1) as usize;
            w[i * old_len + idx] += coeff;
        }
    }
    w
}

/// `[new_len, old_len]` weights of PyTorch's antialiased bicubic (`_upsample_bicubic2d_aa`, the
/// PIL filter): kernel `a = −0.5` stretched by the scale when downsampling, taps inside the
/// input only, each row normalized to sum 1.
fn bicubic_aa_weights(old_len: usize, new_len: usize) -> Vec<f64> {
    let scale = old_len as f64 / new_len as f64;
    let (support, invscale) = if scale >= 1.0 {
        (2.0 * scale, 1.0 / scale)
    } else {
        (2.0, 1.0)
    };
    let mut w = vec![0.0; new_len * old_len];
    for i in 0..new_len {
        let center = scale * (i as f64 + 0.5);
        // PyTorch truncates toward zero, then clamps.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).min(old_len as i64).max(0) as usize;
        let row = &mut w[i * old_len..(i + 1) * old_len];
        let mut total = 0.0;
        for (j, v) in row.iter_mut().enumerate().take(hi).skip(lo) {
            *v = cubic((j as f64 - center + 0.5) * invscale, -0.5);
            total += *v;
        }
        if total != 0.0 {
            row.iter_mut().for_each(|v| *v /= total);
        }
    }
    w
}

/// timm `resample_abs_pos_embed(posemb, new_size, old_size, num_prefix_tokens, "bicubic",
/// antialias)`: `posemb` `[1, prefix + old_h·old_w, D]` to `[1, prefix + new_h·new_w, D]`.
/// `old_size` defaults to a square grid. timm's checkpoint filter uses `antialias = true`.
pub fn resample_abs_pos_embed(
    posemb: &Tensor,
    new_size: (usize, usize),
    old_size: Option<(usize, usize)>,
    num_prefix_tokens: usize,
    antialias: bool,
) -> Result<Tensor> {
    let (one, n, d) = posemb.dims3()?;
    if one != 1 || n < num_prefix_tokens {
        candle_core::bail!(
            "position embeddings must be [1, prefix + h·w, D] with {num_prefix_tokens} prefix tokens, got {:?}",
            posemb.dims()
        );
    }
    let grid = n - num_prefix_tokens;
    let (oh, ow) = match old_size {
        Some(s) => s,
        None => {
            let side = (grid as f64).sqrt().round() as usize;
            (side, side)
        }
    };
    if oh * ow != grid || new_size.0 == 0 || new_size.1 == 0 {
        candle_core::bail!(
            "position embeddings {:?} with {num_prefix_tokens} prefix tokens do not hold a {oh}×{ow} grid (or the new size {new_size:?} is empty)",
            posemb.dims()
        );
    }
    if (oh, ow) == new_size {
        return Ok(posemb.clone());
    }
    let (nh, nw) = new_size;
    let weights = |old: usize, new: usize| -> Result<Tensor> {
        let w = if antialias {
            bicubic_aa_weights(old, new)
        } else {
            bicubic_weights(old, new)
        };
        Tensor::from_vec(w, (new, old), posemb.device())?.to_dtype(DType::F32)
    };
    let dtype = posemb.dtype();
    let tokens = posemb.to_dtype(DType::F32)?;
    let grid = tokens.narrow(1, num_prefix_tokens, oh * ow)?;
    // Rows: [nh, oh] × [oh, ow·D]; then columns: [nh, nw, ow] × [nh, ow, D].
    let rows = weights(oh, nh)?.matmul(&grid.reshape((oh, ow * d))?)?;
    let cols = weights(ow, nw)?
        .unsqueeze(0)?
        .broadcast_as((nh, nw, ow))?
        .contiguous()?
        .matmul(&rows.reshape((nh, ow, d))?)?;
    let resized = cols.reshape((1, nh * nw, d))?;
    let out = if num_prefix_tokens > 0 {
        Tensor::cat(&[&tokens.narrow(1, 0, num_prefix_tokens)?, &resized], 1)?
    } else {
        resized
    };
    out.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both weight sets reproduce constants (rows sum to 1) and same-size is the identity.
    #[test]
    fn weights_are_partitions_of_unity() {
        for (old, new) in [(14, 4), (14, 20), (7, 7), (3, 8)] {
            for w in [bicubic_weights(old, new), bicubic_aa_weights(old, new)] {
                for row in w.chunks(old) {
                    let s: f64 = row.iter().sum();
                    assert!((s - 1.0).abs() < 1e-12, "{old}->{new}: row sums to {s}");
                }
            }
        }
        let w = bicubic_weights(5, 5);
        for i in 0..5 {
            for j in 0..5 {
                assert!((w[i * 5 + j] - f64::from(u8::from(i == j))).abs() < 1e-12);
            }
        }
    }
}
