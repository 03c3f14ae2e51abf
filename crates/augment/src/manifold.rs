//! Pairwise mixing of hidden states (manifold mixup, Verma et al. 2019) and of their targets:
//! `h̃ = λ h + (1 - λ) h_π`, `ỹ = λ y + (1 - λ) y_π`, one λ for the batch.

use crate::error::{AugmentError, Result};
use candle_core::{Device, Tensor};

fn check_partner(partner: &[usize], b: usize) -> Result<()> {
    if partner.len() != b || partner.iter().any(|&p| p >= b) {
        return Err(AugmentError::Shape(format!(
            "partners {partner:?} do not fit a batch of {b}"
        )));
    }
    Ok(())
}

/// `λ x + (1 - λ) x_π` along the batch dimension of any tensor `[b, ...]` (hidden states,
/// images, targets).
pub fn mix_pairs(x: &Tensor, lam: f64, partner: &[usize]) -> Result<Tensor> {
    let b = x.dim(0)?;
    check_partner(partner, b)?;
    let idx: Vec<u32> = partner.iter().map(|&p| p as u32).collect();
    let idx = Tensor::from_vec(idx, b, x.device())?;
    let other = x.index_select(&idx, 0)?;
    Ok(((x * lam)? + (other * (1.0 - lam))?)?)
}

/// The interpolation matrix `[b, b]` of a pairwise mixing: row `i` holds `λ` at `i` and `1 - λ`
/// at `π(i)` (summed where `π(i) = i`). MultiMix with this `Λ` is manifold mixup at the last
/// layer (METHOD.md §2: `m = 2`, `n = b`).
pub fn pair_lambda(lam: f64, partner: &[usize], device: &Device) -> Result<Tensor> {
    let b = partner.len();
    check_partner(partner, b)?;
    let mut data = vec![0f32; b * b];
    for (i, &p) in partner.iter().enumerate() {
        data[i * b + i] += lam as f32;
        data[i * b + p] += (1.0 - lam) as f32;
    }
    Ok(Tensor::from_vec(data, (b, b), device)?)
}
