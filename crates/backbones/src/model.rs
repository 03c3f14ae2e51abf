//! The backbone interface, model configurations in timm's layout, the registry of presets, and
//! [`Model`]: a backbone with its input normalization inside, taking images in [0, 1].

use crate::adapt::adapt_input_conv;
use crate::error::{BackboneError, Result};
use crate::layers::{Ctx, Linear};
use crate::params::{describe_report, LoadReport, ParamStore};
use crate::preact::{PreActConfig, PreActResNet};
use crate::resnet::{BlockKind, ResNet, ResNetConfig, Stem};
use crate::vit::{GlobalPool, VisionTransformer, VitConfig};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One interface for every backbone (timm's contract): features, dense and pooled embeddings,
/// the affine head, and hooks to mix hidden states at an intermediate point.
pub trait Backbone: Send + Sync {
    /// timm `forward_features`: ViT `[B, prefix + T, D]` after the final norm, CNN `[B, C, h, w]`.
    fn forward_features(&self, x: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor>;
    /// Dense embeddings `[B, r, D]`: the positions the head is applied to in dense MultiMix
    /// (ViT patch tokens without the class token, a CNN's last map flattened).
    fn dense(&self, features: &Tensor) -> candle_core::Result<Tensor>;
    /// Pooled embeddings `[B, D]` (timm `forward_head(pre_logits=True)`).
    fn pre_logits(&self, features: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor>;
    /// The affine classifier `g(z) = W z + β`.
    fn head(&self) -> &Linear;
    /// The class-token embedding `[B, D]`, for models that have one.
    fn class_token(&self, features: &Tensor) -> candle_core::Result<Option<Tensor>>;
    /// timm's classifier name (`pretrained_cfg.classifier`): the prefix of the head's tensors.
    fn classifier(&self) -> &'static str;
    /// timm's first convolution (`pretrained_cfg.first_conv`), adapted when a checkpoint was
    /// made for another number of input channels.
    fn first_conv(&self) -> &'static str;
    /// Number of points where hidden states can be mixed (manifold mixup): point 0 is the input;
    /// for a ViT point `k ≥ 1` is the hidden state entering block `k - 1`, for a CNN the output
    /// of stage `k`.
    fn num_mix_points(&self) -> usize;
    /// Run the network from the input up to mix point `point`.
    fn forward_to(&self, x: &Tensor, point: usize, ctx: &mut Ctx) -> candle_core::Result<Tensor>;
    /// Run the network from mix point `point` to the features (`forward_features` layout).
    fn forward_from(&self, h: &Tensor, point: usize, ctx: &mut Ctx) -> candle_core::Result<Tensor>;
    /// Names of parameters exempt from weight decay beyond biases and norms.
    fn no_weight_decay(&self) -> Vec<String>;
    /// Adapt checkpoint tensors made for another configuration of the same architecture before
    /// loading (timm's `checkpoint_filter_fn`; e.g. a ViT resamples its position embeddings).
    fn adapt_weights(&self, _tensors: &mut BTreeMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}

/// Architecture-specific arguments, resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchConfig {
    /// A Vision Transformer.
    Vit(VitConfig),
    /// A ResNet (basic or bottleneck blocks).
    ResNet(ResNetConfig),
    /// A pre-activation ResNet.
    PreAct(PreActConfig),
}

impl ArchConfig {
    /// Number of classes of the head.
    pub fn num_classes(&self) -> usize {
        match self {
            ArchConfig::Vit(c) => c.num_classes,
            ArchConfig::ResNet(c) => c.num_classes,
            ArchConfig::PreAct(c) => c.num_classes,
        }
    }

    /// Input channels.
    pub fn in_chans(&self) -> usize {
        match self {
            ArchConfig::Vit(c) => c.in_chans,
            ArchConfig::ResNet(c) => c.in_chans,
            ArchConfig::PreAct(c) => c.in_chans,
        }
    }

    /// Input height and width.
    pub fn img_size(&self) -> usize {
        match self {
            ArchConfig::Vit(c) => c.img_size,
            ArchConfig::ResNet(c) => c.img_size,
            ArchConfig::PreAct(c) => c.img_size,
        }
    }

    fn to_args(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let value = match self {
            ArchConfig::Vit(c) => serde_json::to_value(c),
            ArchConfig::ResNet(c) => serde_json::to_value(c),
            ArchConfig::PreAct(c) => serde_json::to_value(c),
        };
        match value {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            _ => unreachable_config(),
        }
    }
}

fn unreachable_config<T>() -> Result<T> {
    Err(BackboneError::InvalidConfig {
        architecture: "?".into(),
        message: "configuration does not serialize to a map".into(),
    })
}

/// A preset: an architecture name (timm's where timm has it) with its arguments and the input
/// normalization its weights expect.
struct Preset {
    name: &'static str,
    family: Family,
    args: fn() -> ArchConfig,
    mean: [f64; 3],
    std: [f64; 3],
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Vit,
    ResNet,
    PreAct,
}

const INCEPTION_MEAN: [f64; 3] = [0.5, 0.5, 0.5];
const INCEPTION_STD: [f64; 3] = [0.5, 0.5, 0.5];
const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];
/// CIFAR-10 normalization of the PreAct-ResNet CIFAR code bases (Kuang Liu's `pytorch-cifar`).
const CIFAR_MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
const CIFAR_STD: [f64; 3] = [0.2023, 0.1994, 0.2010];

fn vit(patch_size: usize, embed_dim: usize, depth: usize, num_heads: usize) -> VitConfig {
    VitConfig {
        patch_size,
        embed_dim,
        depth,
        num_heads,
        ..VitConfig::default()
    }
}

fn resnet(block: BlockKind, layers: [usize; 4]) -> ResNetConfig {
    ResNetConfig {
        block,
        layers: layers.to_vec(),
        ..ResNetConfig::default()
    }
}

/// A CIFAR-stem (3×3/1 conv, no pool) model for 32×32 images and 10 classes.
fn resnet_cifar(block: BlockKind, layers: [usize; 4]) -> ResNetConfig {
    ResNetConfig {
        stem: Stem::Cifar,
        img_size: 32,
        num_classes: 10,
        ..resnet(block, layers)
    }
}

/// The registry. timm names come with timm's arguments; the small presets are this project's.
const PRESETS: &[Preset] = &[
    Preset {
        name: "vit_tiny_patch16_224",
        family: Family::Vit,
        args: || ArchConfig::Vit(vit(16, 192, 12, 3)),
        mean: INCEPTION_MEAN,
        std: INCEPTION_STD,
    },
    Preset {
        name: "vit_small_patch16_224",
        family: Family::Vit,
        args: || ArchConfig::Vit(vit(16, 384, 12, 6)),
        mean: INCEPTION_MEAN,
        std: INCEPTION_STD,
    },
    Preset {
        name: "vit_base_patch16_224",
        family: Family::Vit,
        args: || ArchConfig::Vit(vit(16, 768, 12, 12)),
        mean: INCEPTION_MEAN,
        std: INCEPTION_STD,
    },
    Preset {
        name: "vit_tiny_patch4_32",
        family: Family::Vit,
        args: || {
            ArchConfig::Vit(VitConfig {
                img_size: 32,
                num_classes: 10,
                ..vit(4, 192, 12, 3)
            })
        },
        mean: INCEPTION_MEAN,
        std: INCEPTION_STD,
    },
    Preset {
        // The project's default: 4 blocks of width 96 on 4×4 patches of 7×7 pixels, patch tokens
        // normed then averaged (so dense and pooled logits agree), for 28×28 gray images.
        name: "vit_mini_patch7_28",
        family: Family::Vit,
        args: || {
            ArchConfig::Vit(VitConfig {
                img_size: 28,
                in_chans: 1,
                num_classes: 10,
                global_pool: GlobalPool::Avg,
                class_token: false,
                fc_norm: Some(false),
                mlp_ratio: 2.0,
                ..vit(7, 96, 4, 3)
            })
        },
        mean: INCEPTION_MEAN,
        std: INCEPTION_STD,
    },
    Preset {
        name: "resnet18",
        family: Family::ResNet,
        args: || ArchConfig::ResNet(resnet(BlockKind::Basic, [2, 2, 2, 2])),
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    Preset {
        name: "resnet34",
        family: Family::ResNet,
        args: || ArchConfig::ResNet(resnet(BlockKind::Basic, [3, 4, 6, 3])),
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    Preset {
        name: "resnet50",
        family: Family::ResNet,
        args: || ArchConfig::ResNet(resnet(BlockKind::Bottleneck, [3, 4, 6, 3])),
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    Preset {
        name: "resnet18_cifar",
        family: Family::ResNet,
        args: || ArchConfig::ResNet(resnet_cifar(BlockKind::Basic, [2, 2, 2, 2])),
        mean: CIFAR_MEAN,
        std: CIFAR_STD,
    },
    Preset {
        name: "resnet34_cifar",
        family: Family::ResNet,
        args: || ArchConfig::ResNet(resnet_cifar(BlockKind::Basic, [3, 4, 6, 3])),
        mean: CIFAR_MEAN,
        std: CIFAR_STD,
    },
    Preset {
        name: "resnet50_cifar",
        family: Family::ResNet,
        args: || ArchConfig::ResNet(resnet_cifar(BlockKind::Bottleneck, [3, 4, 6, 3])),
        mean: CIFAR_MEAN,
        std: CIFAR_STD,
    },
    Preset {
        // timm's pre-activation ResNet-18 (ImageNet stem).
        name: "resnetv2_18",
        family: Family::PreAct,
        args: || ArchConfig::PreAct(PreActConfig::default()),
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    Preset {
        // The MultiMix paper's CIFAR backbone: resnetv2_18 with the CIFAR stem.
        name: "preact_resnet18",
        family: Family::PreAct,
        args: || {
            ArchConfig::PreAct(PreActConfig {
                stem: Stem::Cifar,
                img_size: 32,
                num_classes: 10,
                ..PreActConfig::default()
            })
        },
        mean: CIFAR_MEAN,
        std: CIFAR_STD,
    },
];

/// The names of the registered architectures.
pub fn architectures() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

fn preset(name: &str) -> Result<&'static Preset> {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| BackboneError::UnknownArchitecture {
            name: name.to_string(),
            known: architectures().join(", "),
        })
}

/// A complete model configuration: architecture name, resolved arguments and the input
/// normalization (timm's `pretrained_cfg` mean and std). Serialized as
/// `{architecture, mean, std, args: {...}}`, with `args` in timm's `model_args` names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawModelConfig", into = "RawModelConfig")]
pub struct ModelConfig {
    /// Registered architecture name.
    pub architecture: String,
    /// Resolved arguments.
    pub arch: ArchConfig,
    /// Per-channel mean subtracted from [0, 1] images.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation images are divided by.
    pub std: Vec<f64>,
}

/// The serialized form of [`ModelConfig`]: arguments override the preset's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelConfig {
    /// Registered architecture name.
    pub architecture: String,
    /// Per-channel mean (the preset's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f64>>,
    /// Per-channel std (the preset's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f64>>,
    /// Argument overrides in timm's `model_args` names.
    #[serde(default)]
    pub args: serde_json::Map<String, serde_json::Value>,
}

impl ModelConfig {
    /// The preset `architecture` with `args` overriding its arguments.
    pub fn from_preset(
        architecture: &str,
        args: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self> {
        let p = preset(architecture)?;
        let mut merged = (p.args)().to_args()?;
        for (k, v) in args {
            merged.insert(k.clone(), v.clone());
        }
        let invalid = |e: serde_json::Error| BackboneError::InvalidConfig {
            architecture: architecture.to_string(),
            message: e.to_string(),
        };
        let arch = match p.family {
            Family::Vit => {
                let c: VitConfig = serde_json::from_value(merged.into()).map_err(invalid)?;
                c.validate(architecture)?;
                ArchConfig::Vit(c)
            }
            Family::ResNet => {
                let c: ResNetConfig = serde_json::from_value(merged.into()).map_err(invalid)?;
                c.validate(architecture)?;
                ArchConfig::ResNet(c)
            }
            Family::PreAct => {
                let c: PreActConfig = serde_json::from_value(merged.into()).map_err(invalid)?;
                c.validate(architecture)?;
                ArchConfig::PreAct(c)
            }
        };
        let channels = arch.in_chans();
        let per_channel = |v: [f64; 3]| {
            if channels == 3 {
                v.to_vec()
            } else {
                vec![v[0]; channels]
            }
        };
        Ok(Self {
            architecture: architecture.to_string(),
            arch,
            mean: per_channel(p.mean),
            std: per_channel(p.std),
        })
    }

    /// The configuration a timm `config.json` describes (the layout of timm's
    /// `save_config_for_hf`): `architecture` (a registered name), `model_args`, `num_classes`,
    /// `global_pool`, and `pretrained_cfg` `input_size` `[C, H, W]` (square), `mean`, `std`.
    /// Other fields are ignored; unknown `model_args` are an error naming them.
    pub fn from_timm_json(config: &serde_json::Value) -> Result<Self> {
        let architecture = config
            .get("architecture")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        let invalid = |message: String| BackboneError::InvalidConfig {
            architecture: architecture.to_string(),
            message,
        };
        preset(architecture)?;
        let mut args = match config.get("model_args") {
            None | Some(serde_json::Value::Null) => serde_json::Map::new(),
            Some(serde_json::Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(invalid(format!(
                    "model_args must be an object, got {other}"
                )))
            }
        };
        for key in ["num_classes", "global_pool"] {
            if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
                args.insert(key.into(), v.clone());
            }
        }
        let pretrained = config
            .get("pretrained_cfg")
            .ok_or_else(|| invalid("config.json has no pretrained_cfg".into()))?;
        let field = |name: &str| -> Result<Vec<f64>> {
            serde_json::from_value(pretrained.get(name).cloned().unwrap_or_default())
                .map_err(|e| invalid(format!("pretrained_cfg.{name}: {e}")))
        };
        let input_size = field("input_size")?;
        let (c, h) = match input_size[..] {
            [c, h, w] if h == w && c >= 1.0 && h >= 1.0 => (c as usize, h as usize),
            _ => {
                return Err(invalid(format!(
                    "pretrained_cfg.input_size {input_size:?} must be [C, H, W] with H = W"
                )))
            }
        };
        // timm builds the model from `model_args` (its `img_size` may be `[H, W]`); the input
        // size fills in what they leave out.
        let img_size = match args.get("img_size") {
            None => h,
            Some(v) => square_size(v)
                .ok_or_else(|| invalid(format!("model_args.img_size {v} must be N or [N, N]")))?,
        };
        args.insert("img_size".into(), img_size.into());
        args.entry("in_chans").or_insert(c.into());
        Self::from_preset(architecture, &args)?.with_normalization(field("mean")?, field("std")?)
    }

    /// This configuration for `img_size`×`img_size` inputs (a ViT's position embeddings are
    /// then resampled when its weights are loaded).
    pub fn with_img_size(&self, img_size: usize) -> Result<Self> {
        let mut args = self.arch.to_args()?;
        args.insert("img_size".into(), img_size.into());
        Self::from_preset(&self.architecture, &args)?
            .with_normalization(self.mean.clone(), self.std.clone())
    }

    /// Set the input normalization, checking it has one positive std per input channel.
    pub fn with_normalization(mut self, mean: Vec<f64>, std: Vec<f64>) -> Result<Self> {
        let c = self.arch.in_chans();
        if mean.len() != c || std.len() != c || std.iter().any(|s| *s <= 0.0) {
            return Err(BackboneError::InvalidConfig {
                architecture: self.architecture.clone(),
                message: format!(
                    "mean {mean:?} and std {std:?} need {c} values each (std > 0), one per input channel"
                ),
            });
        }
        self.mean = mean;
        self.std = std;
        Ok(self)
    }

    /// Number of classes of the head.
    pub fn num_classes(&self) -> usize {
        self.arch.num_classes()
    }
}

impl TryFrom<RawModelConfig> for ModelConfig {
    type Error = BackboneError;
    fn try_from(raw: RawModelConfig) -> Result<Self> {
        let cfg = Self::from_preset(&raw.architecture, &raw.args)?;
        let mean = raw.mean.unwrap_or_else(|| cfg.mean.clone());
        let std = raw.std.unwrap_or_else(|| cfg.std.clone());
        cfg.with_normalization(mean, std)
    }
}

impl From<ModelConfig> for RawModelConfig {
    fn from(c: ModelConfig) -> Self {
        Self {
            args: c.arch.to_args().unwrap_or_default(),
            architecture: c.architecture,
            mean: Some(c.mean),
            std: Some(c.std),
        }
    }
}

/// `N` from a JSON `N` or `[N, N]`.
fn square_size(v: &serde_json::Value) -> Option<usize> {
    let n = |v: &serde_json::Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
    match v {
        serde_json::Value::Array(hw) if hw.len() == 2 && hw[0] == hw[1] => n(&hw[0]),
        other => n(other),
    }
}

/// A backbone with its parameters and input normalization: takes images in [0, 1], so attacks
/// perturb pixels and the normalization is part of the differentiated function.
pub struct Model {
    config: ModelConfig,
    params: ParamStore,
    backbone: Box<dyn Backbone>,
    mean: Tensor,
    std: Tensor,
}

impl Model {
    /// Build the model on `device`, initializing weights from a generator seeded with `seed`.
    pub fn new(config: &ModelConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::build(config, ParamStore::new(device, seed))
    }

    /// The same model over a [`ParamStore::frozen`] view of its weights: outputs are equal, the
    /// weights are shared (updates to this model show), and a backward of the outputs computes
    /// the gradient with respect to the input only, skipping every weight gradient. For
    /// attacks and input pre-processing, which need `∇_x` alone.
    pub fn frozen(&self) -> Result<Self> {
        Self::build(&self.config, self.params.frozen())
    }

    /// Whether this model was made by [`Model::frozen`].
    pub fn is_frozen(&self) -> bool {
        self.params.is_frozen()
    }

    /// The backbone of `config` over `params` (created there, or looked up in a frozen view).
    fn build(config: &ModelConfig, params: ParamStore) -> Result<Self> {
        let device = &params.device().clone();
        let backbone: Box<dyn Backbone> = match &config.arch {
            ArchConfig::Vit(c) => Box::new(VisionTransformer::new(&params, c)?),
            ArchConfig::ResNet(c) => Box::new(ResNet::new(&params, c)?),
            ArchConfig::PreAct(c) => Box::new(PreActResNet::new(&params, c)?),
        };
        let c = config.mean.len();
        let to_tensor = |v: &[f64]| -> Result<Tensor> {
            let v: Vec<f32> = v.iter().map(|x| *x as f32).collect();
            Ok(Tensor::from_vec(v, (1, c, 1, 1), device)?)
        };
        Ok(Self {
            mean: to_tensor(&config.mean)?,
            std: to_tensor(&config.std)?,
            config: config.clone(),
            params,
            backbone,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The parameters and buffers.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// The backbone.
    pub fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }

    /// `(x - mean) / std` per channel, for images `x` in [0, 1] of shape `[B, C, H, W]`.
    pub fn normalize(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        images.broadcast_sub(&self.mean)?.broadcast_div(&self.std)
    }

    /// Features of images in [0, 1] (timm `forward_features` layout).
    pub fn forward_features(&self, images: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        self.backbone
            .forward_features(&self.normalize(images)?, ctx)
    }

    /// Logits `[B, classes]` of images in [0, 1].
    pub fn forward(&self, images: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let features = self.forward_features(images, ctx)?;
        let pooled = self.backbone.pre_logits(&features, ctx)?;
        self.backbone.head().forward(&pooled)
    }

    /// Overwrite weights by name (see [`ParamStore::load`]), after adapting them to this
    /// configuration as timm's checkpoint filter does ([`Backbone::adapt_weights`]).
    pub fn load_weights(
        &self,
        tensors: &BTreeMap<String, Tensor>,
        strict: bool,
    ) -> Result<LoadReport> {
        self.params.load(&self.adapted(tensors.clone())?, strict)
    }

    /// Checkpoint tensors adapted to this configuration: the backbone's own filter
    /// ([`Backbone::adapt_weights`]), then a first convolution made for 3 input channels adapted
    /// to this model's (timm's `adapt_input_conv`).
    fn adapted(&self, mut tensors: BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
        self.backbone.adapt_weights(&mut tensors)?;
        let name = format!("{}.weight", self.backbone.first_conv());
        let in_chans = self.config.arch.in_chans();
        if let Some(w) = tensors.get(&name) {
            if w.rank() == 4 && w.dim(1)? == 3 && in_chans != 3 {
                let adapted = adapt_input_conv(in_chans, w)?;
                tensors.insert(name, adapted);
            }
        }
        Ok(tensors)
    }

    /// Load every weight except the classifier's (which keeps its fresh initialization): for
    /// fine-tuning with another class count. Any other missing or unexpected tensor is an error,
    /// and then nothing is loaded.
    pub fn load_weights_new_head(&self, tensors: &BTreeMap<String, Tensor>) -> Result<LoadReport> {
        let prefix = format!("{}.", self.backbone.classifier());
        let body = self.adapted(
            tensors
                .iter()
                .filter(|(name, _)| !name.starts_with(&prefix))
                .map(|(name, t)| (name.clone(), t.clone()))
                .collect(),
        )?;
        let names = self.params.names();
        let stray = LoadReport {
            missing: names
                .iter()
                .filter(|n| !n.starts_with(&prefix) && !body.contains_key(*n))
                .cloned()
                .collect(),
            unexpected: body
                .keys()
                .filter(|k| names.binary_search(k).is_err())
                .cloned()
                .collect(),
        };
        if !stray.missing.is_empty() || !stray.unexpected.is_empty() {
            return Err(BackboneError::WeightMismatch(describe_report(&stray)));
        }
        self.params.load(&body, false)
    }
}
