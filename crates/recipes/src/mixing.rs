//! The training loss of each mixing method: the bridge between a backbone's outputs and the
//! model-free ops of `multimix-augment`.

use crate::config::{MixConfig, MixMethod, MixSpace};
use crate::error::{RecipeError, Result};
use candle_core::Tensor;
use multimix_augment::dense::{
    attention, cam_query, dense_weights, gap_query, mix_dense, mix_dense_targets,
};
use multimix_augment::loss::soft_cross_entropy;
use multimix_augment::multimix::mix_rows;
use multimix_augment::targets::smooth_one_hot;
use multimix_augment::{AttnQuery, MultiMix};
use multimix_backbones::{Ctx, Model};
use rand_chacha::ChaCha8Rng;

/// Check the mixing options against the batch size before training starts.
pub fn validate(cfg: &MixConfig, batch_size: usize) -> Result<()> {
    if matches!(cfg.method, MixMethod::Multimix | MixMethod::DenseMultimix) {
        multimix(cfg).validate()?;
        if let Some(m) = cfg.m {
            if m > batch_size {
                return Err(RecipeError::Config(format!(
                    "mix-m = {m} is out of range: at most the batch size {batch_size}"
                )));
            }
        }
    }
    if !(0.0..1.0).contains(&cfg.label_smoothing) {
        return Err(RecipeError::Config(format!(
            "label-smoothing = {} is out of range: in [0, 1)",
            cfg.label_smoothing
        )));
    }
    Ok(())
}

fn multimix(cfg: &MixConfig) -> MultiMix {
    MultiMix {
        n: cfg.n,
        alpha: cfg.alpha,
        m: cfg.m,
    }
}

/// The loss of one training batch of images in [0, 1] under the configured mixing method,
/// plus the clean cross-entropy when `clean_loss` is set. Dropout masks are drawn first, then
/// the mixing coefficients, both from `rng`.
pub fn training_loss(
    model: &Model,
    images: &Tensor,
    labels: &[u32],
    cfg: &MixConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Tensor> {
    let num_classes = model.config().num_classes();
    let targets = smooth_one_hot(labels, num_classes, cfg.label_smoothing, images.device())?;
    let features = model.forward_features(images, &mut Ctx::train(rng))?;
    let mixed = mixed_loss(model, &features, labels, &targets, cfg, rng)?;
    if cfg.clean_loss && matches!(cfg.method, MixMethod::Multimix | MixMethod::DenseMultimix) {
        let z = model
            .backbone()
            .pre_logits(&features, &mut Ctx::train(rng))?;
        let clean = soft_cross_entropy(&model.backbone().head().forward(&z)?, &targets)?;
        Ok((mixed + clean)?)
    } else {
        Ok(mixed)
    }
}

/// The loss of the configured method on the `features` of a batch with `targets` `[b, c]`.
fn mixed_loss(
    model: &Model,
    features: &Tensor,
    labels: &[u32],
    targets: &Tensor,
    cfg: &MixConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Tensor> {
    let device = features.device();
    let head = model.backbone().head();
    let b = labels.len();
    match cfg.method {
        MixMethod::None => {
            let z = model
                .backbone()
                .pre_logits(features, &mut Ctx::train(rng))?;
            Ok(soft_cross_entropy(&head.forward(&z)?, targets)?)
        }
        MixMethod::Multimix => {
            // METHOD.md §2: Z̃ = Λ Z, Ỹ = Λ Y, loss H(Ỹ, g(Z̃)); g(ΛZ) = Λ g(Z) for the affine head.
            let z = model
                .backbone()
                .pre_logits(features, &mut Ctx::train(rng))?;
            let lambda = multimix(cfg).sample(b, rng, device)?;
            let mixed_logits = match cfg.space {
                MixSpace::Logits => mix_rows(&lambda, &head.forward(&z)?)?,
                MixSpace::Embeddings => head.forward(&mix_rows(&lambda, &z)?)?,
            };
            Ok(soft_cross_entropy(
                &mixed_logits,
                &mix_rows(&lambda, targets)?,
            )?)
        }
        MixMethod::DenseMultimix => {
            // METHOD.md §3: per-position weights ξ̂ from Λ and the attention, dense loss over n·r terms.
            let z = model.backbone().dense(features)?;
            let z_att = if cfg.attn_detach {
                z.detach()
            } else {
                z.clone()
            };
            let query = match cfg.attn_query {
                AttnQuery::Gap => Some(gap_query(&z_att)?),
                AttnQuery::Cam => {
                    let ids = Tensor::from_slice(labels, b, device)?;
                    let w = if cfg.attn_detach {
                        head.weight().detach()
                    } else {
                        head.weight().clone()
                    };
                    Some(cam_query(&w, &ids)?)
                }
                AttnQuery::Cls => {
                    let cls = model.backbone().class_token(features)?.ok_or_else(|| {
                        RecipeError::Config(format!(
                            "attn-query cls needs a model with a class token; `{}` has none",
                            model.config().architecture
                        ))
                    })?;
                    Some(if cfg.attn_detach { cls.detach() } else { cls })
                }
                AttnQuery::Uniform => None,
            };
            let attn = attention(&z_att, query.as_ref(), cfg.attn_norm)?;
            let lambda = multimix(cfg).sample(b, rng, device)?;
            let xi = dense_weights(&lambda, &attn)?;
            let mixed_logits = match cfg.space {
                MixSpace::Logits => mix_dense(&xi, &head.forward(&z)?)?,
                MixSpace::Embeddings => head.forward(&mix_dense(&xi, &z)?)?,
            };
            Ok(soft_cross_entropy(
                &mixed_logits,
                &mix_dense_targets(&xi, targets)?,
            )?)
        }
    }
}
