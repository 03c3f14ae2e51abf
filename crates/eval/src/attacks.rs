//! Adversarial attacks on images in [0, 1] with the normalization inside the model
//! (METHOD.md §5; torchattacks' `FGSM` and `PGD`, step for step).
//!
//! Both are untargeted, run the model in eval mode and take the gradient of the mean
//! cross-entropy of the batch (its sign is that of every image's own loss gradient, so a batch
//! gives the same images as one image at a time).

use candle_core::{Device, Tensor, Var};
use multimix_augment::loss::soft_cross_entropy;
use multimix_augment::targets::smooth_one_hot;
use multimix_backbones::{Ctx, Model};
use rand::Rng;

/// `None` when `model` is already [`Model::frozen`], else its frozen view: the same outputs,
/// but a backward computes `∇_x` only, not the weight gradients an attack throws away. Use as
/// `let view = input_only(model)?; let model = view.as_ref().unwrap_or(model);`.
pub(crate) fn input_only(model: &Model) -> candle_core::Result<Option<Model>> {
    if model.is_frozen() {
        return Ok(None);
    }
    model
        .frozen()
        .map(Some)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// The gradient of the cross-entropy `H(y, f(x) / T)` (mean over the batch) with respect to the
/// images `x`; `temperature` = 1 is the plain loss of the attacks, ODIN uses 1000. Runs on the
/// model's frozen view, so no weight gradient is computed (pass a [`Model::frozen`] model to
/// build the view once for many batches).
pub fn input_gradient_at_temperature(
    model: &Model,
    images: &Tensor,
    labels: &[u32],
    temperature: f64,
) -> candle_core::Result<Tensor> {
    let view = input_only(model)?;
    let model = view.as_ref().unwrap_or(model);
    let x = Var::from_tensor(images)?;
    let logits = (model.forward(x.as_tensor(), &mut Ctx::eval())? / temperature)?;
    let targets = smooth_one_hot(labels, model.config().num_classes(), 0.0, images.device())
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let grads = soft_cross_entropy(&logits, &targets)?.backward()?;
    match grads.get(x.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => Ok(images.zeros_like()?),
    }
}

/// The gradient of the cross-entropy `H(y, f(x))` (mean over the batch) with respect to `x`.
pub fn input_gradient(
    model: &Model,
    images: &Tensor,
    labels: &[u32],
) -> candle_core::Result<Tensor> {
    input_gradient_at_temperature(model, images, labels, 1.0)
}

/// FGSM (Goodfellow et al. 2015): `x_adv = clamp(x + ε · sign(∇_x H(y, f(x))), 0, 1)`.
pub fn fgsm(
    model: &Model,
    images: &Tensor,
    labels: &[u32],
    eps: f64,
) -> candle_core::Result<Tensor> {
    let grad = input_gradient(model, images, labels)?;
    (images + (grad.sign()? * eps)?)?.clamp(0f32, 1f32)
}

/// Hyper-parameters of [`pgd`] (L∞ threat model, pixel units in [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgdConfig {
    /// Radius ε of the L∞ ball.
    pub eps: f64,
    /// Step size α.
    pub alpha: f64,
    /// Number of steps.
    pub steps: usize,
}

impl Default for PgdConfig {
    /// ε = 8/255, α = 2/255, 10 steps (Madry et al. 2018; torchattacks' and OpenMixup's defaults).
    fn default() -> Self {
        Self::for_eps(8.0 / 255.0)
    }
}

impl PgdConfig {
    /// PGD at radius `eps` with the default schedule scaled to it: α = ε / 4, 10 steps.
    pub fn for_eps(eps: f64) -> Self {
        Self {
            eps,
            alpha: eps / 4.0,
            steps: 10,
        }
    }
}

/// A uniform random start for [`pgd`]: offsets drawn independently from U[−ε, ε) by the run's
/// host RNG (torchattacks' `torch.empty_like(x).uniform_(-eps, eps)`), shaped `shape`.
pub fn uniform_start(
    shape: &[usize],
    eps: f64,
    rng: &mut impl Rng,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let e = eps as f32;
    let n: usize = shape.iter().product();
    let values: Vec<f32> = if e > 0.0 {
        (0..n).map(|_| rng.random_range(-e..e)).collect()
    } else {
        vec![0.0; n]
    };
    Tensor::from_vec(values, shape, device)
}

/// PGD (Madry et al. 2018), as torchattacks' `PGD`: from `x_0 = clamp(x + start, 0, 1)`,
/// `x_{t+1} = clamp(x + clamp(x_t + α · sign(∇ H(y, f(x_t))) − x, −ε, ε), 0, 1)` for
/// `cfg.steps` steps. `start` holds the offsets of the random start (see [`uniform_start`];
/// zeros for no random start), shaped like `images`.
pub fn pgd(
    model: &Model,
    images: &Tensor,
    labels: &[u32],
    cfg: &PgdConfig,
    start: &Tensor,
) -> candle_core::Result<Tensor> {
    let eps = cfg.eps as f32;
    let mut adv = (images + start)?.clamp(0f32, 1f32)?;
    for _ in 0..cfg.steps {
        let grad = input_gradient(model, &adv, labels)?;
        let stepped = (&adv + (grad.sign()? * cfg.alpha)?)?;
        let delta = (stepped - images)?.clamp(-eps, eps)?;
        adv = (images + delta)?.clamp(0f32, 1f32)?;
    }
    Ok(adv)
}
