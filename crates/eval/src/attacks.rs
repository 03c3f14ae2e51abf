//! Adversarial attacks on images in [0, 1] with the normalization inside the model
//! (METHOD.md §5; torchattacks' conventions).

use candle_core::{Tensor, Var};
use multimix_augment::loss::soft_cross_entropy;
use multimix_augment::targets::smooth_one_hot;
use multimix_backbones::{Ctx, Model};

/// The gradient of the cross-entropy `H(y, f(x))` (mean over the batch) with respect to `x`.
pub fn input_gradient(
    model: &Model,
    images: &Tensor,
    labels: &[u32],
) -> candle_core::Result<Tensor> {
    let x = Var::from_tensor(images)?;
    let logits = model.forward(x.as_tensor(), &mut Ctx::eval())?;
    let targets = smooth_one_hot(labels, model.config().num_classes(), 0.0, images.device())
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let grads = soft_cross_entropy(&logits, &targets)?.backward()?;
    match grads.get(x.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => Ok(images.zeros_like()?),
    }
}

/// FGSM: `x_adv = clamp(x + ε · sign(∇_x H(y, f(x))), 0, 1)`, untargeted, model in eval mode.
pub fn fgsm(
    model: &Model,
    images: &Tensor,
    labels: &[u32],
    eps: f64,
) -> candle_core::Result<Tensor> {
    let grad = input_gradient(model, images, labels)?;
    (images + (grad.sign()? * eps)?)?.clamp(0f32, 1f32)
}
