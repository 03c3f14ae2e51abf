//! MultiMix (METHOD.md §2): `n` interpolated tuples of the whole batch, one Dirichlet vector each.

use crate::error::{out_of_range, AugmentError, Result};
use crate::loss::{fused, multimix_fused, soft_cross_entropy};
use crate::sample::dirichlet_rows;
use candle_core::{Device, Tensor};
use rand::Rng;

/// MultiMix options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultiMix {
    /// Number of interpolated tuples per batch.
    pub n: usize,
    /// Dirichlet concentration α.
    pub alpha: f64,
    /// Tuple length: `None` for the whole batch, else a random subset of `m` examples per tuple.
    pub m: Option<usize>,
}

impl Default for MultiMix {
    /// The paper's defaults: `n = 1000`, `α = 1`, `m = b`.
    fn default() -> Self {
        Self {
            n: 1000,
            alpha: 1.0,
            m: None,
        }
    }
}

impl MultiMix {
    /// Check the options (independent of the batch size).
    pub fn validate(&self) -> Result<()> {
        if self.n == 0 {
            return Err(out_of_range("mix-n", self.n, ">= 1"));
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(out_of_range("mix-alpha", self.alpha, "> 0"));
        }
        if self.m == Some(0) {
            return Err(out_of_range("mix-m", 0, ">= 1"));
        }
        Ok(())
    }

    /// Sample `Λ` `[n, b]` for a batch of `b` examples.
    pub fn sample(&self, b: usize, rng: &mut impl Rng, device: &Device) -> Result<Tensor> {
        self.validate()?;
        let m = self.m.unwrap_or(b);
        let lambda = dirichlet_rows(self.n, b, m, self.alpha, rng)?;
        Ok(Tensor::from_vec(lambda, (self.n, b), device)?)
    }
}

/// Convex combinations of rows: `Λ X` for `Λ` `[n, b]` and `X` `[b, k]` (eqs. 6–7: embeddings,
/// targets, or logits, since `g(Λ Z) = Λ g(Z)` for an affine head whose rows of `Λ` sum to 1).
pub fn mix_rows(lambda: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (_, b) = lambda.dims2()?;
    let (bx, _) = x.dims2()?;
    if b != bx {
        return Err(AugmentError::Shape(format!(
            "interpolation matrix {:?} does not fit {:?} rows",
            lambda.dims(),
            x.dims()
        )));
    }
    Ok(lambda.matmul(x)?)
}

/// MultiMix's loss for an affine head (eqs. 6–7 with `g(ΛZ) = Λ g(Z)`): `H(ΛY, Λ L)` averaged
/// over the `n` tuples, from the batch's logits `L` `[b, c]`, `Λ` `[n, b]` and targets `Y`
/// `[b, c]` (a weighted sum of targets works too: the loss is linear in them).
///
/// Equals `soft_cross_entropy(&mix_rows(Λ, L)?, &mix_rows(Λ, Y)?)`. For f32 on the CPU it is one
/// autograd node instead of a dozen: gradient `dL = Λᵀ (softmax(ΛL)·Σ_c ΛY − ΛY) / n`, to the
/// logits only (`Λ` and `Y` are constants).
pub fn multimix_loss(lambda: &Tensor, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (_, b) = lambda.dims2()?;
    let (bl, c) = logits.dims2()?;
    if targets.dims() != [bl, c] || b != bl {
        return Err(AugmentError::Shape(format!(
            "interpolation matrix {:?}, logits {:?} and targets {:?} do not fit",
            lambda.dims(),
            logits.dims(),
            targets.dims()
        )));
    }
    // The custom op needs non-empty operands; empty ones take the composition.
    if fused(&[lambda, logits, targets]) && lambda.elem_count() > 0 && logits.elem_count() > 0 {
        Ok(multimix_fused(lambda, logits, targets)?)
    } else {
        let mixed = mix_rows(lambda, logits)?;
        Ok(soft_cross_entropy(&mixed, &mix_rows(lambda, targets)?)?)
    }
}
