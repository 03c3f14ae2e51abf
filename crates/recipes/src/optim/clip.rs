//! Gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_` (L2 norm).

use std::collections::HashSet;

use candle_core::backprop::GradStore;
use candle_core::Var;

use super::check;
use super::kernels::sum_squares;

/// `torch.nn.utils.clip_grad_norm_`: the total L2 norm over the gradients of `params` (each
/// parameter counted once, those without a gradient skipped), accumulated in `f64`; when
/// `max_norm / (total + 1e-6) < 1` every gradient is scaled by that factor. Returns the total norm
/// before clipping. A non-finite norm is returned as is (an infinite one scales the gradients by
/// zero, as torch does); callers should skip the update then. `max_norm` must be finite and > 0.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    params: &[Var],
    max_norm: f64,
) -> candle_core::Result<f64> {
    check(
        "max_norm",
        max_norm,
        max_norm.is_finite() && max_norm > 0.0,
        "finite and > 0",
    )
    .map_err(candle_core::Error::wrap)?;
    let mut seen = HashSet::new();
    let params: Vec<&Var> = params.iter().filter(|v| seen.insert(v.id())).collect();
    let mut sum = 0.0;
    for var in &params {
        if let Some(g) = grads.get(var.as_tensor()) {
            sum += sum_squares(g)?;
        }
    }
    let total = sum.sqrt();
    let coef = clip_coefficient(max_norm, total);
    if coef < 1.0 {
        for var in &params {
            if let Some(g) = grads.get(var.as_tensor()) {
                let scaled = (g * coef)?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(total)
}

/// torch's clip coefficient `max_norm / (total_norm + 1e-6)`.
fn clip_coefficient(max_norm: f64, total_norm: f64) -> f64 {
    max_norm / (total_norm + 1e-6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn invalid_max_norm_and_missing_grads() -> candle_core::Result<()> {
        let v = Var::new(&[3.0f32, 4.0], &Device::Cpu)?;
        let mut grads = v.as_tensor().sqr()?.sum_all()?.backward()?;
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = clip_grad_norm(&mut grads, std::slice::from_ref(&v), bad).unwrap_err();
            assert!(err.to_string().contains("max_norm"), "{err}");
        }
        // Gradient [6, 8]: norm 10, counted once however often the parameter is listed.
        let total = clip_grad_norm(&mut grads, &[v.clone(), v.clone()], 5.0)?;
        assert_eq!(total, 10.0);
        let clipped = grads.get(v.as_tensor()).map(|g| g.to_vec1::<f32>());
        // The f32 gradient times the coefficient rounded to f32 (candle's affine).
        let coef = (5.0 / (10.0 + 1e-6)) as f32;
        assert_eq!(clipped.transpose()?, Some(vec![6.0 * coef, 8.0 * coef]));
        grads.remove(v.as_tensor());
        assert_eq!(clip_grad_norm(&mut grads, &[v], 1.0)?, 0.0);
        Ok(())
    }

    #[test]
    fn non_finite_norm_is_returned() -> candle_core::Result<()> {
        let v = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
        let mut grads = v.as_tensor().sum_all()?.backward()?;
        grads.insert(v.as_tensor(), Tensor::new(&[f32::NAN, 1.0], &Device::Cpu)?);
        assert!(clip_grad_norm(&mut grads, std::slice::from_ref(&v), 1.0)?.is_nan());
        grads.insert(
            v.as_tensor(),
            Tensor::new(&[f32::INFINITY, 1.0], &Device::Cpu)?,
        );
        assert_eq!(clip_grad_norm(&mut grads, &[v], 1.0)?, f64::INFINITY);
        Ok(())
    }
}
