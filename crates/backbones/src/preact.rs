//! Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks") with
//! timm's `ResNetV2` names and semantics for basic blocks (`resnetv2.py`: `PreActBasic`,
//! `resnetv2_18`): `stem.conv`, `stages.{i}.blocks.{j}.{norm1,conv1,norm2,conv2,downsample.conv}`,
//! a final `norm` (BatchNorm + ReLU) and a 1×1-conv classifier `head.fc`.
//!
//! With the CIFAR stem (3×3/1 conv, no pool) this is the PreAct-ResNet-18 of the mixup, Manifold
//! Mixup and MultiMix papers (Kuang Liu's `PreActResNet18`, final BN-ReLU before the pool).

use crate::error::Result;
use crate::layers::{drop_path, BatchNorm2d, Conv2d, Ctx, Linear};
use crate::model::Backbone;
use crate::params::{Init, ParamStore};
use crate::resnet::{
    avg_pool_head, check_point, flatten_positions, linear_drop_path, validate_cnn, Stem,
};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// PreAct-ResNet configuration; names follow timm's `ResNetV2` arguments (`stem` is this
/// crate's: timm has no CIFAR stem).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreActConfig {
    /// Blocks per stage.
    pub layers: Vec<usize>,
    /// Output channels per stage.
    pub channels: Vec<usize>,
    /// Output channels of the stem convolution.
    pub stem_chs: usize,
    /// Stem type.
    pub stem: Stem,
    /// Input channels.
    pub in_chans: usize,
    /// Classes of the head.
    pub num_classes: usize,
    /// Input height and width the model is configured for (informative for a CNN).
    pub img_size: usize,
    /// Global pooling before the head (only `avg`).
    pub global_pool: String,
    /// Dropout before the head.
    pub drop_rate: f64,
    /// Stochastic depth rate of the last block (linear in the block index from 0).
    pub drop_path_rate: f64,
    /// Zero-initialize the last convolution of every residual branch (timm's default: off).
    pub zero_init_last: bool,
}

impl Default for PreActConfig {
    fn default() -> Self {
        Self {
            layers: vec![2, 2, 2, 2],
            channels: vec![64, 128, 256, 512],
            stem_chs: 64,
            stem: Stem::Imagenet,
            in_chans: 3,
            num_classes: 1000,
            img_size: 224,
            global_pool: "avg".into(),
            drop_rate: 0.0,
            drop_path_rate: 0.0,
            zero_init_last: false,
        }
    }
}

impl PreActConfig {
    /// Check the arguments describe a buildable model.
    pub fn validate(&self, architecture: &str) -> Result<()> {
        validate_cnn(
            architecture,
            &self.layers,
            &self.channels,
            &[
                ("in_chans", self.in_chans),
                ("num_classes", self.num_classes),
                ("stem_chs", self.stem_chs),
                ("img_size", self.img_size),
            ],
            &self.global_pool,
            [
                ("drop_rate", self.drop_rate),
                ("drop_path_rate", self.drop_path_rate),
            ],
        )
    }
}

/// `x + branch(x)` with `branch = conv2(relu(norm2(conv1(relu(norm1(x))))))`; the projection
/// shortcut (when the shape changes) takes the pre-activated input.
struct Block {
    norm1: BatchNorm2d,
    conv1: Conv2d,
    norm2: BatchNorm2d,
    conv2: Conv2d,
    downsample: Option<Conv2d>,
    drop_path: f64,
}

impl Block {
    fn new(
        ps: &ParamStore,
        cfg: &PreActConfig,
        (in_chans, out): (usize, usize),
        stride: usize,
        drop_path: f64,
    ) -> Result<Self> {
        let kaiming = Init::KaimingNormalFanOut;
        let last_init = if cfg.zero_init_last {
            Init::Const(0.0)
        } else {
            kaiming
        };
        let downsample = if stride != 1 || in_chans != out {
            Some(Conv2d::no_bias(
                &ps.pp("downsample.conv"),
                in_chans,
                out,
                1,
                stride,
                0,
                kaiming,
            )?)
        } else {
            None
        };
        Ok(Self {
            downsample,
            norm1: BatchNorm2d::new(&ps.pp("norm1"), in_chans, 1.0)?,
            conv1: Conv2d::no_bias(&ps.pp("conv1"), in_chans, out, 3, stride, 1, kaiming)?,
            norm2: BatchNorm2d::new(&ps.pp("norm2"), out, 1.0)?,
            conv2: Conv2d::no_bias(&ps.pp("conv2"), out, out, 3, 1, 1, last_init)?,
            drop_path,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let pre = self.norm1.forward_relu(x, ctx)?;
        let shortcut = match &self.downsample {
            Some(conv) => conv.forward(&pre)?,
            None => x.clone(),
        };
        let h = self.conv1.forward(&pre)?;
        let h = self.conv2.forward(&self.norm2.forward_relu(&h, ctx)?)?;
        drop_path(&h, self.drop_path, ctx)? + shortcut
    }
}

/// The pre-activation ResNet.
pub struct PreActResNet {
    cfg: PreActConfig,
    stem: Conv2d,
    stages: Vec<Vec<Block>>,
    norm: BatchNorm2d,
    head: Linear,
}

impl PreActResNet {
    /// Build with timm's `ResNetV2` initialization (convolutions `kaiming_normal_(fan_out, relu)`,
    /// BatchNorm 1/0, `head.fc` N(0, 0.01²) with zero bias).
    pub fn new(ps: &ParamStore, cfg: &PreActConfig) -> Result<Self> {
        cfg.validate("preact_resnet")?;
        let (k, s, p) = cfg.stem.conv_geometry();
        let stem = Conv2d::no_bias(
            &ps.pp("stem.conv"),
            cfg.in_chans,
            cfg.stem_chs,
            k,
            s,
            p,
            Init::KaimingNormalFanOut,
        )?;
        let total: usize = cfg.layers.iter().sum();
        let dpr = linear_drop_path(cfg.drop_path_rate, total);
        let mut in_chans = cfg.stem_chs;
        let mut index = 0;
        let mut stages = Vec::new();
        for (stage, (&depth, &out)) in cfg.layers.iter().zip(&cfg.channels).enumerate() {
            let mut blocks = Vec::new();
            for b in 0..depth {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let ps = ps.pp(format!("stages.{stage}.blocks.{b}"));
                blocks.push(Block::new(&ps, cfg, (in_chans, out), stride, dpr[index])?);
                in_chans = out;
                index += 1;
            }
            stages.push(blocks);
        }
        let norm = BatchNorm2d::new(&ps.pp("norm"), in_chans, 1.0)?;
        // timm's head is a 1×1 convolution: its kernel [classes, C, 1, 1] is the Linear weight.
        let fc = ps.pp("head.fc");
        let weight = fc.param(
            "weight",
            (cfg.num_classes, in_chans, 1, 1),
            Init::Normal { std: 0.01 },
        )?;
        let bias = fc.param("bias", cfg.num_classes, Init::Const(0.0))?;
        let head = Linear::from_parts(weight.reshape((cfg.num_classes, in_chans))?, Some(bias));
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            stages,
            norm,
            head,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PreActConfig {
        &self.cfg
    }

    fn run_stages(
        &self,
        mut h: Tensor,
        range: std::ops::Range<usize>,
        ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        for stage in &self.stages[range] {
            for block in stage {
                h = block.forward(&h, ctx)?;
            }
        }
        Ok(h)
    }
}

impl Backbone for PreActResNet {
    fn forward_features(&self, x: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        self.forward_from(x, 0, ctx)
    }

    fn dense(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        flatten_positions(features)
    }

    fn pre_logits(&self, features: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        avg_pool_head(features, self.cfg.drop_rate, ctx)
    }

    fn head(&self) -> &Linear {
        &self.head
    }

    fn classifier(&self) -> &'static str {
        "head.fc"
    }

    fn first_conv(&self) -> &'static str {
        "stem.conv"
    }

    fn class_token(&self, _features: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }

    fn num_mix_points(&self) -> usize {
        self.stages.len()
    }

    fn forward_to(&self, x: &Tensor, point: usize, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        check_point(point, self.stages.len())?;
        if point == 0 {
            return Ok(x.clone());
        }
        let h = self.cfg.stem.pool(&self.stem.forward(x)?)?;
        self.run_stages(h, 0..point, ctx)
    }

    /// Stages from `point`, then the final norm (BatchNorm + ReLU), as timm's `forward_features`.
    fn forward_from(&self, h: &Tensor, point: usize, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        check_point(point, self.stages.len())?;
        let h = if point == 0 {
            self.cfg.stem.pool(&self.stem.forward(h)?)?
        } else {
            h.clone()
        };
        let h = self.run_stages(h, point..self.stages.len(), ctx)?;
        self.norm.forward_relu(&h, ctx)
    }

    fn no_weight_decay(&self) -> Vec<String> {
        Vec::new()
    }
}
