//! The training configuration: one TOML file (`config.toml` in every run directory) whose keys
//! the command-line flags override. Unknown keys are errors, so a typo never passes silently.

use multimix_augment::{AttnNorm, AttnQuery, MixMode, Pairing};
use multimix_backbones::RawModelConfig;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The mixing method (`--mix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MixMethod {
    /// Empirical risk minimization: no mixing.
    None,
    /// Input mixup (Zhang et al. 2018; METHOD.md §1).
    Mixup,
    /// CutMix (Yun et al. 2019; METHOD.md §1).
    Cutmix,
    /// Mixup or CutMix per batch, chosen with `switch_prob` (timm's switch).
    MixupCutmix,
    /// Manifold mixup at a mix point drawn from the eligible set (Verma et al. 2019).
    ManifoldMixup,
    /// MultiMix on pooled embeddings (METHOD.md §2).
    Multimix,
    /// Dense MultiMix on per-position embeddings (METHOD.md §3).
    DenseMultimix,
}

impl MixMethod {
    /// Every method, as written on the command line.
    pub const ALL: [(&'static str, MixMethod); 7] = [
        ("none", MixMethod::None),
        ("mixup", MixMethod::Mixup),
        ("cutmix", MixMethod::Cutmix),
        ("mixup-cutmix", MixMethod::MixupCutmix),
        ("manifold-mixup", MixMethod::ManifoldMixup),
        ("multimix", MixMethod::Multimix),
        ("dense-multimix", MixMethod::DenseMultimix),
    ];

    /// Whether the method mixes input images (mixup, CutMix and their switch).
    pub fn is_input(self) -> bool {
        matches!(
            self,
            MixMethod::Mixup | MixMethod::Cutmix | MixMethod::MixupCutmix
        )
    }

    /// Whether the method is MultiMix (pooled or dense).
    pub fn is_multimix(self) -> bool {
        matches!(self, MixMethod::Multimix | MixMethod::DenseMultimix)
    }

    /// The α of the method's defaults: 2 for manifold mixup (Verma et al.'s CIFAR setting),
    /// 1 otherwise (timm's `Mixup`, MultiMix).
    pub fn default_alpha(self) -> f64 {
        match self {
            MixMethod::ManifoldMixup => 2.0,
            _ => 1.0,
        }
    }

    /// The partner choice of the method's defaults: timm's flip for input mixing, a random
    /// permutation for manifold mixup (Verma et al.).
    pub fn default_pairing(self) -> Pairing {
        match self {
            MixMethod::ManifoldMixup => Pairing::Random,
            _ => Pairing::Flip,
        }
    }
}

impl FromStr for MixMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown mixing method `{s}`; expected one of: {}",
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for MixMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(_, m)| m == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

/// Where MultiMix interpolates when the head is affine: the logits (cheaper, identical) or the
/// embeddings (METHOD.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MixSpace {
    /// Mix the `[b, c]` (or `[b, r, c]`) logits: `g(Λ Z) = Λ g(Z)`.
    #[default]
    Logits,
    /// Mix the `[b, d]` (or `[b, r, d]`) embeddings, then apply the head.
    Embeddings,
}

/// `[data]`: what to train and test on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Data spec (see `multimix_data::DataSpec`).
    pub spec: String,
    /// Random-crop padding in pixels (0: off).
    pub crop_padding: usize,
    /// Random horizontal flips.
    pub hflip: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            spec: "fashion-mnist-mini".into(),
            crop_padding: 0,
            hflip: false,
        }
    }
}

/// `[mix]`: the mixing method and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixConfig {
    /// The method.
    pub method: MixMethod,
    /// Concentration α of the Beta (mixup, CutMix, manifold mixup) or Dirichlet (MultiMix)
    /// distribution; absent: the method's default ([`MixMethod::default_alpha`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// `mixup-cutmix`: the Beta concentration of CutMix (absent: `alpha`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cutmix_alpha: Option<f64>,
    /// Probability of mixing a batch (input methods, timm `prob`).
    pub prob: f64,
    /// `mixup-cutmix`: probability of CutMix rather than mixup (timm `switch_prob`).
    pub switch_prob: f64,
    /// Input methods: one λ per batch, pair or element (timm `mode`).
    pub mode: MixMode,
    /// Partners: `flip` (timm) or `random`; absent: the method's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairing: Option<Pairing>,
    /// CutMix: recompute λ from the clipped box (timm `correct_lam`).
    pub correct_lam: bool,
    /// CutMix: box side ratios `[min, max]` drawn uniformly instead of from λ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cutmix_minmax: Option<[f64; 2]>,
    /// Manifold mixup: the eligible mix points (0 = the input, k = the input of stage/block k-1);
    /// absent: all of the backbone's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<usize>>,
    /// Number of interpolated tuples per batch.
    pub n: usize,
    /// Tuple length; absent for the whole batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub m: Option<usize>,
    /// Mix logits or embeddings.
    pub space: MixSpace,
    /// Dense MultiMix attention query.
    pub attn_query: AttnQuery,
    /// Dense MultiMix attention normalization.
    pub attn_norm: AttnNorm,
    /// Detach the attention from the graph (the default).
    pub attn_detach: bool,
    /// Label smoothing folded into the targets.
    pub label_smoothing: f64,
    /// MultiMix methods: add the clean (unmixed) cross-entropy to the mixed loss (the option of
    /// METHOD.md §2). On by default, departing from the paper, which trains on mixed examples
    /// only: with tuples of the whole batch (m = b) and α = 1, every interpolated target is close
    /// to the batch's label histogram and the per-example part of the gradient is about
    /// 1/(mα + 1) of it, so a model trained from scratch for a few epochs barely learns (pooled
    /// MultiMix: 26 % test accuracy in a 3-epoch run on the default data; with the clean term
    /// the default dense MultiMix run reaches 84 %). Set `false` to train as the paper does.
    pub clean_loss: bool,
}

impl MixConfig {
    /// The α in force: the configured one or the method's default.
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or(self.method.default_alpha())
    }

    /// The pairing in force: the configured one or the method's default.
    pub fn pairing(&self) -> Pairing {
        self.pairing.unwrap_or(self.method.default_pairing())
    }

    /// Write the method's defaults into the unset options, so `config.toml` shows what ran.
    pub fn resolve(&mut self) {
        self.alpha = Some(self.alpha());
        self.pairing = Some(self.pairing());
    }
}

impl Default for MixConfig {
    fn default() -> Self {
        Self {
            method: MixMethod::DenseMultimix,
            alpha: None,
            cutmix_alpha: None,
            prob: 1.0,
            switch_prob: 0.5,
            mode: MixMode::Batch,
            pairing: None,
            correct_lam: true,
            cutmix_minmax: None,
            layers: None,
            n: 1000,
            m: None,
            space: MixSpace::Logits,
            attn_query: AttnQuery::Gap,
            attn_norm: AttnNorm::Softmax,
            attn_detach: true,
            label_smoothing: 0.0,
            clean_loss: true,
        }
    }
}

/// `[distill]`: MultiMix with online self-distillation (METHOD.md §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillConfig {
    /// Train with an EMA teacher's soft targets (MultiMix methods only).
    pub enabled: bool,
    /// Momentum τ of the EMA teacher.
    pub ema_momentum: f64,
    /// Weight `w` of the distillation term.
    pub weight: f64,
    /// Temperature `T` of the teacher's softmax.
    pub temperature: f64,
    /// The teacher predicts on its own mixed embeddings, `softmax(g'(Λ Z') / T)`, instead of
    /// interpolating its predictions, `Λ softmax(g'(Z') / T)`.
    pub teacher_mixed: bool,
}

impl Default for DistillConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ema_momentum: 0.999,
            weight: 1.0,
            temperature: 1.0,
            teacher_mixed: false,
        }
    }
}

/// Optimizer choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum (torch semantics).
    Sgd,
    /// AdamW (torch semantics).
    Adamw,
}

/// `[optim]`: optimizer and its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Which optimizer.
    pub name: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Weight decay (not applied to biases, norms, position embeddings and class tokens).
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// SGD Nesterov momentum.
    pub nesterov: bool,
    /// AdamW β1.
    pub beta1: f64,
    /// AdamW β2.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// Clip the gradient to this global L2 norm (absent: no clipping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_grad: Option<f64>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            name: OptimizerKind::Adamw,
            lr: 2e-3,
            weight_decay: 0.05,
            momentum: 0.9,
            nesterov: false,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_grad: None,
        }
    }
}

/// Learning-rate schedule choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Cosine decay after linear warmup.
    Cosine,
    /// Step decay after linear warmup.
    Step,
    /// Constant.
    Constant,
}

/// `[schedule]`: the learning-rate schedule, stepped every optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Which schedule.
    pub name: ScheduleKind,
    /// Linear warmup length in epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// Learning rate at the start of warmup.
    pub warmup_lr: f64,
    /// Final learning rate of the cosine schedule.
    pub min_lr: f64,
    /// Step schedule: epochs between decays.
    pub decay_epochs: f64,
    /// Step schedule: factor per decay.
    pub decay_rate: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            name: ScheduleKind::Cosine,
            warmup_epochs: 1.0,
            warmup_lr: 1e-5,
            min_lr: 1e-5,
            decay_epochs: 30.0,
            decay_rate: 0.1,
        }
    }
}

/// `[train]`: the loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoopConfig {
    /// Epochs.
    pub epochs: usize,
    /// Stop after this many optimizer steps in all (absent: run every epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    /// Images per training batch.
    pub batch_size: usize,
    /// Start from these weights, all but the classifier (a run directory, a timm directory,
    /// `hf-hub:owner/name[@revision]` or a zoo name); the configured model must match them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            epochs: 12,
            max_steps: None,
            pretrained: None,
            batch_size: 128,
        }
    }
}

/// `[eval]`: the evaluation that follows training (and `multimix eval`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// FGSM ε in [0, 1] pixel units.
    pub fgsm_eps: f64,
    /// OOD sets (data specs).
    pub ood: Vec<String>,
    /// Images per evaluation batch.
    pub batch_size: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            fgsm_eps: 8.0 / 255.0,
            ood: vec!["mnist".into(), "gaussian".into()],
            batch_size: 250,
        }
    }
}

/// The whole training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Seed of the run's one host RNG.
    pub seed: u64,
    /// Data.
    pub data: DataConfig,
    /// Model: architecture, normalization and argument overrides (number of classes, input
    /// channels and image size are taken from the data unless set).
    pub model: RawModelConfig,
    /// Mixing.
    pub mix: MixConfig,
    /// Self-distillation.
    pub distill: DistillConfig,
    /// Optimizer.
    pub optim: OptimConfig,
    /// Schedule.
    pub schedule: ScheduleConfig,
    /// Loop.
    pub train: LoopConfig,
    /// Evaluation.
    pub eval: EvalConfig,
}

/// The default model: a small ViT (4 blocks, width 96, 7×7-pixel patches) for 28×28 gray images.
pub const DEFAULT_ARCHITECTURE: &str = "vit_mini_patch7_28";

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            data: DataConfig::default(),
            model: RawModelConfig {
                architecture: DEFAULT_ARCHITECTURE.into(),
                mean: None,
                std: None,
                args: Default::default(),
            },
            mix: MixConfig::default(),
            distill: DistillConfig::default(),
            optim: OptimConfig::default(),
            schedule: ScheduleConfig::default(),
            train: LoopConfig::default(),
            eval: EvalConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Parse a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }
}
