//! The training loss of each mixing method: the bridge between a backbone's outputs and the
//! model-free ops of `multimix-augment`.

use crate::config::{DistillConfig, MixConfig, MixMethod, MixSpace};
use crate::error::{RecipeError, Result};
use candle_core::Tensor;
use multimix_augment::dense::{
    attention, cam_query, dense_multimix_loss, gap_attention, mix_dense_factored,
    mix_dense_targets_factored,
};
use multimix_augment::distill::teacher_probs;
use multimix_augment::loss::soft_cross_entropy;
use multimix_augment::manifold::mix_pairs;
use multimix_augment::mixup::check_batch;
use multimix_augment::multimix::{mix_rows, multimix_loss};
use multimix_augment::sample::{beta, partners};
use multimix_augment::targets::smooth_one_hot;
use multimix_augment::{AttnQuery, MixMode, Mixup, MultiMix};
use multimix_backbones::{Ctx, Model};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Check the mixing and distillation options against the batch size before training starts.
pub fn validate(cfg: &MixConfig, distill: &DistillConfig, batch_size: usize) -> Result<()> {
    if !(0.0..1.0).contains(&cfg.label_smoothing) {
        return Err(RecipeError::Config(format!(
            "label-smoothing = {} is out of range: in [0, 1)",
            cfg.label_smoothing
        )));
    }
    if cfg.method.is_multimix() {
        multimix(cfg).validate()?;
        if let Some(m) = cfg.m {
            if m > batch_size {
                return Err(RecipeError::Config(format!(
                    "mix-m = {m} is out of range: at most the batch size {batch_size}"
                )));
            }
        }
    }
    if cfg.method.is_input() {
        mixup(cfg).validate()?;
        check_batch(batch_size, cfg.pairing(), cfg.mode)?;
    }
    if cfg.method == MixMethod::ManifoldMixup {
        let alpha = cfg.alpha();
        if !(alpha > 0.0 && alpha.is_finite()) {
            return Err(RecipeError::Config(format!(
                "mix-alpha = {alpha} is out of range: > 0"
            )));
        }
        check_batch(batch_size, cfg.pairing(), MixMode::Batch)?;
        if cfg.layers.as_ref().is_some_and(|l| l.is_empty()) {
            return Err(RecipeError::Config(
                "mix.layers is empty: list at least one mix point, or leave it out for all".into(),
            ));
        }
    }
    if distill.enabled {
        if !cfg.method.is_multimix() {
            return Err(RecipeError::Config(format!(
                "--self-distill works with --mix multimix or dense-multimix, not `{}`",
                cfg.method
            )));
        }
        if !(0.0..=1.0).contains(&distill.ema_momentum) {
            return Err(RecipeError::Config(format!(
                "ema-momentum = {} is out of range: in [0, 1]",
                distill.ema_momentum
            )));
        }
        if !(distill.weight >= 0.0 && distill.weight.is_finite()) {
            return Err(RecipeError::Config(format!(
                "distill-weight = {} is out of range: >= 0",
                distill.weight
            )));
        }
        if !(distill.temperature > 0.0 && distill.temperature.is_finite()) {
            return Err(RecipeError::Config(format!(
                "distill-temperature = {} is out of range: > 0",
                distill.temperature
            )));
        }
    }
    Ok(())
}

/// Check the mix points of manifold mixup exist in the model.
pub fn validate_for_model(cfg: &MixConfig, model: &Model) -> Result<()> {
    if cfg.method == MixMethod::ManifoldMixup {
        let points = model.backbone().num_mix_points();
        if let Some(&bad) = cfg.layers.iter().flatten().find(|&&k| k >= points) {
            return Err(RecipeError::Config(format!(
                "mix.layers holds mix point {bad}, but `{}` has mix points 0..{}",
                model.config().architecture,
                points - 1
            )));
        }
    }
    Ok(())
}

fn multimix(cfg: &MixConfig) -> MultiMix {
    MultiMix {
        n: cfg.n,
        alpha: cfg.alpha(),
        m: cfg.m,
    }
}

/// The timm `Mixup` of an input method.
fn mixup(cfg: &MixConfig) -> Mixup {
    let alpha = cfg.alpha();
    let (mixup_alpha, cutmix_alpha) = match cfg.method {
        MixMethod::Cutmix => (0.0, alpha),
        MixMethod::MixupCutmix => (alpha, cfg.cutmix_alpha.unwrap_or(alpha)),
        _ => (alpha, 0.0),
    };
    Mixup {
        mixup_alpha,
        cutmix_alpha,
        cutmix_minmax: cfg.cutmix_minmax.map(|[lo, hi]| (lo, hi)),
        prob: cfg.prob,
        switch_prob: cfg.switch_prob,
        mode: cfg.mode,
        correct_lam: cfg.correct_lam,
        label_smoothing: cfg.label_smoothing,
        pairing: cfg.pairing(),
    }
}

/// One training batch: images in [0, 1] (`[B, C, H, W]` row-major), labels, and the teacher's
/// view for self-distillation.
pub struct StepBatch<'a> {
    /// Pixels of the student's view.
    pub images: &'a [f32],
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
    /// Labels.
    pub labels: &'a [u32],
    /// The teacher's view (absent: the student's).
    pub teacher_view: Option<&'a [f32]>,
}

/// The interpolation of a MultiMix step, kept to mix the teacher's predictions the same way.
enum Interp {
    /// `Λ` `[n, b]` (pooled MultiMix).
    Rows(Tensor),
    /// `Λ` `[n, b]` and the attention `A` `[b, r]` (dense MultiMix: `ξ̂_kij ∝ λ_ki a_ij`).
    Dense(Tensor, Tensor),
}

impl Interp {
    /// Mix per-example (`[b, k]`) or per-position (`[b, r, k]`) values.
    fn mix(&self, values: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Interp::Rows(lambda) => mix_rows(lambda, values)?,
            Interp::Dense(lambda, attn) => mix_dense_factored(lambda, attn, values)?,
        })
    }

    /// Mix per-example targets `[b, c]` (shared by all positions for dense MultiMix).
    fn mix_targets(&self, targets: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Interp::Rows(lambda) => mix_rows(lambda, targets)?,
            Interp::Dense(lambda, attn) => mix_dense_targets_factored(lambda, attn, targets)?,
        })
    }

    /// `H(mix(Y), mix(L))` for unmixed logits `L` of the affine head and unmixed targets `Y`
    /// (`[b, c]`, or per position `[b, r, c]` for dense MultiMix), as one fused op.
    fn loss(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Interp::Rows(lambda) => multimix_loss(lambda, logits, targets)?,
            Interp::Dense(lambda, attn) => dense_multimix_loss(lambda, attn, logits, targets)?,
        })
    }
}

/// The student's logits of a MultiMix step.
enum Student {
    /// The affine head's logits of the unmixed embeddings (`[b, c]` or `[b, r, c]`), mixed
    /// inside the fused loss (`g(Λ Z) = Λ g(Z)`).
    Logits(Tensor),
    /// The head applied to the mixed embeddings.
    Mixed(Tensor),
}

/// The teacher's soft targets of self-distillation.
enum TeacherTargets {
    /// `P'` per example (or per position), to be mixed with the student's weights.
    Unmixed(Tensor),
    /// The teacher's predictions on its own mixed embeddings, already mixed.
    Mixed(Tensor),
}

/// The loss of one training batch under the configured method (plus the clean term and the
/// distillation term where configured). Randomness, all from `rng`: input methods draw their
/// mixing before the forward pass; MultiMix methods draw dropout masks first, then `Λ`.
pub fn training_loss(
    model: &Model,
    teacher: Option<&Model>,
    batch: &StepBatch,
    cfg: &MixConfig,
    distill: &DistillConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Tensor> {
    let device = model.params().device().clone();
    let num_classes = model.config().num_classes();
    let labels = batch.labels;
    let [b, _, h, w] = batch.shape;
    let images = |values: &[f32]| Tensor::from_slice(values, batch.shape.to_vec(), &device);
    let targets = smooth_one_hot(labels, num_classes, cfg.label_smoothing, &device)?;
    let head = model.backbone().head();
    match cfg.method {
        MixMethod::None => {
            let logits = model.forward(&images(batch.images)?, &mut Ctx::train(rng))?;
            Ok(soft_cross_entropy(&logits, &targets)?)
        }
        MixMethod::Mixup | MixMethod::Cutmix | MixMethod::MixupCutmix => {
            // METHOD.md §1: x̃ = λ x + (1-λ) x_π (or the partner's box), ỹ = λ y + (1-λ) y_π.
            let plan = mixup(cfg).sample(b, h, w, rng)?;
            let mixed = plan.apply(batch.images, batch.shape)?;
            let mixed_targets = plan.targets(labels, num_classes, cfg.label_smoothing)?;
            let mixed_targets = Tensor::from_vec(mixed_targets, (b, num_classes), &device)?;
            let logits = model.forward(&images(&mixed)?, &mut Ctx::train(rng))?;
            Ok(soft_cross_entropy(&logits, &mixed_targets)?)
        }
        MixMethod::ManifoldMixup => {
            // Verma et al.: mix the hidden states at a point k drawn from the eligible set.
            let points: Vec<usize> = match &cfg.layers {
                Some(layers) => layers.clone(),
                None => (0..model.backbone().num_mix_points()).collect(),
            };
            let k = points[rng.random_range(0..points.len())];
            let lam = beta(cfg.alpha(), rng)?;
            let partner = partners(b, cfg.pairing(), false, rng);
            let x = model.normalize(&images(batch.images)?)?;
            let mut ctx = Ctx::train(rng);
            let hidden = model.backbone().forward_to(&x, k, &mut ctx)?;
            let hidden = mix_pairs(&hidden, lam, &partner)?;
            let features = model.backbone().forward_from(&hidden, k, &mut ctx)?;
            let z = model.backbone().pre_logits(&features, &mut ctx)?;
            let mixed_targets = mix_pairs(&targets, lam, &partner)?;
            Ok(soft_cross_entropy(&head.forward(&z)?, &mixed_targets)?)
        }
        MixMethod::Multimix | MixMethod::DenseMultimix => {
            let features = model.forward_features(&images(batch.images)?, &mut Ctx::train(rng))?;
            let (student, interp, pooled) = multimix_step(model, &features, labels, cfg, rng)?;
            let soft = match (distill.enabled, teacher) {
                (false, _) => None,
                (true, None) => {
                    return Err(RecipeError::Config(
                        "self-distillation needs a teacher model".into(),
                    ))
                }
                (true, Some(teacher)) => {
                    let view = images(batch.teacher_view.unwrap_or(batch.images))?;
                    Some(teacher_targets(teacher, &view, cfg, distill, &interp)?)
                }
            };
            let mut loss =
                student_loss(&student, &interp, &targets, soft.as_ref(), distill.weight)?;
            if cfg.clean_loss {
                // The clean logits `g(Z)` of the embeddings the student mixed (one forward per
                // example): the student's own for pooled MultiMix on logits.
                let clean_logits = match (&student, pooled) {
                    (Student::Logits(logits), Some(_)) => logits.clone(),
                    (_, Some(z)) => head.forward(&z)?,
                    (_, None) => head.forward(
                        &model
                            .backbone()
                            .pre_logits(&features, &mut Ctx::train(rng))?,
                    )?,
                };
                loss = (loss + soft_cross_entropy(&clean_logits, &targets)?)?;
            }
            Ok(loss)
        }
    }
}

/// The MultiMix loss of the student's logits under `interp`, with the distillation term
/// `w·H(Ỹ', L̃)` when teacher targets are given. Logits of the affine head go through one fused
/// op (the teacher's unmixed targets folded into the targets); mixed logits and the
/// teacher-mixed term take the composition.
fn student_loss(
    student: &Student,
    interp: &Interp,
    targets: &Tensor,
    soft: Option<&TeacherTargets>,
    w: f64,
) -> Result<Tensor> {
    Ok(match student {
        Student::Logits(logits) => {
            // H is linear in the targets: H(ΛY, L̃) + w·H(ΛP', L̃) = H(Λ(Y + w·P'), L̃).
            let all_targets = match soft {
                Some(TeacherTargets::Unmixed(p)) => {
                    let y = if p.rank() == 3 {
                        targets.unsqueeze(1)?
                    } else {
                        targets.clone()
                    };
                    (p * w)?.broadcast_add(&y)?
                }
                _ => targets.clone(),
            };
            let loss = interp.loss(logits, &all_targets)?;
            match soft {
                Some(TeacherTargets::Mixed(soft)) => {
                    let term = soft_cross_entropy(&interp.mix(logits)?, soft)?;
                    (loss + (term * w)?)?
                }
                _ => loss,
            }
        }
        Student::Mixed(mixed) => {
            let loss = soft_cross_entropy(mixed, &interp.mix_targets(targets)?)?;
            let soft = match soft {
                Some(TeacherTargets::Unmixed(p)) => Some(interp.mix(p)?),
                Some(TeacherTargets::Mixed(soft)) => Some(soft.clone()),
                None => None,
            };
            match soft {
                Some(soft) => (loss + (soft_cross_entropy(mixed, &soft)? * w)?)?,
                None => loss,
            }
        }
    })
}

/// MultiMix (§2) or dense MultiMix (§3) on a batch's `features`: the student's logits (unmixed
/// for the affine head in logit space, else of the mixed embeddings), the interpolation, and for
/// pooled MultiMix the pooled embeddings `Z` it mixed (dense MultiMix pools none).
fn multimix_step(
    model: &Model,
    features: &Tensor,
    labels: &[u32],
    cfg: &MixConfig,
    rng: &mut ChaCha8Rng,
) -> Result<(Student, Interp, Option<Tensor>)> {
    let device = features.device();
    let backbone = model.backbone();
    let head = backbone.head();
    let b = labels.len();
    if cfg.method == MixMethod::Multimix {
        // METHOD.md §2: Z̃ = Λ Z, Ỹ = Λ Y, loss H(Ỹ, g(Z̃)); g(ΛZ) = Λ g(Z) for the affine head.
        let z = backbone.pre_logits(features, &mut Ctx::train(rng))?;
        let lambda = multimix(cfg).sample(b, rng, device)?;
        let student = match cfg.space {
            MixSpace::Logits => Student::Logits(head.forward(&z)?),
            MixSpace::Embeddings => Student::Mixed(head.forward(&mix_rows(&lambda, &z)?)?),
        };
        return Ok((student, Interp::Rows(lambda), Some(z)));
    }
    // METHOD.md §3: per-position weights ξ̂ from Λ and the attention, dense loss over n·r terms.
    let z = backbone.dense(features)?;
    let z_att = if cfg.attn_detach {
        z.detach()
    } else {
        z.clone()
    };
    let norm = cfg.attn_norm;
    let attn = match cfg.attn_query {
        AttnQuery::Gap => gap_attention(&z_att, norm)?,
        AttnQuery::Cam => {
            let ids = Tensor::from_slice(labels, b, device)?;
            let w = if cfg.attn_detach {
                head.weight().detach()
            } else {
                head.weight().clone()
            };
            attention(&z_att, Some(&cam_query(&w, &ids)?), norm)?
        }
        AttnQuery::Cls => {
            let cls = backbone.class_token(features)?.ok_or_else(|| {
                RecipeError::Config(format!(
                    "attn-query cls needs a model with a class token; `{}` has none",
                    model.config().architecture
                ))
            })?;
            let cls = if cfg.attn_detach { cls.detach() } else { cls };
            attention(&z_att, Some(&cls), norm)?
        }
        AttnQuery::Uniform => attention(&z_att, None, norm)?,
    };
    let lambda = multimix(cfg).sample(b, rng, device)?;
    let student = match cfg.space {
        MixSpace::Logits => Student::Logits(head.forward(&z)?),
        MixSpace::Embeddings => {
            Student::Mixed(head.forward(&mix_dense_factored(&lambda, &attn, &z)?)?)
        }
    };
    Ok((student, Interp::Dense(lambda, attn), None))
}

/// METHOD.md §4: the teacher's soft targets `softmax(g'(Z') / T)` (per position for dense
/// MultiMix), to be interpolated with the student's weights, or with `teacher_mixed` the
/// teacher's predictions on its own mixed embeddings, `softmax(g'(Λ Z') / T)`. No gradient.
fn teacher_targets(
    teacher: &Model,
    view: &Tensor,
    cfg: &MixConfig,
    distill: &DistillConfig,
    interp: &Interp,
) -> Result<TeacherTargets> {
    let mut ctx = Ctx::eval();
    let backbone = teacher.backbone();
    let features = teacher.forward_features(view, &mut ctx)?.detach();
    let z = match cfg.method {
        MixMethod::DenseMultimix => backbone.dense(&features)?,
        _ => backbone.pre_logits(&features, &mut ctx)?,
    };
    let logits = backbone.head().forward(&z)?.detach();
    let t = distill.temperature;
    Ok(if distill.teacher_mixed {
        // g' is affine and the weights sum to 1, so g'(Λ Z') = Λ g'(Z').
        TeacherTargets::Mixed(teacher_probs(&interp.mix(&logits)?, t)?)
    } else {
        TeacherTargets::Unmixed(teacher_probs(&logits, t)?)
    })
}
