//! ResNet (He et al. 2016) with timm's `ResNet` names and semantics (`resnet.py`, the
//! torchvision-compatible "b" variant: 7×7 stem, stride in the 3×3 conv of a bottleneck,
//! `downsample.0/1` = 1×1 conv + BN), plus a CIFAR stem (3×3/1 conv, no max pool).
//!
//! `forward_features` returns the last stage's map `[B, C, h, w]`; [`Backbone::dense`] flattens
//! it to `[B, h·w, C]`, so the mean of the dense logits equals the pooled logits exactly.
//! Mix points (manifold mixup): 0 is the input, `k ≥ 1` the output of stage `k` (`layer{k}`).

use crate::error::{BackboneError, Result};
use crate::layers::{drop_path, dropout, BatchNorm2d, Conv2d, Ctx, Linear};
use crate::model::Backbone;
use crate::ops;
use crate::params::{Init, ParamStore};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// The residual block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34), expansion 1.
    Basic,
    /// 1×1, 3×3 (strided), 1×1 convolutions (ResNet-50 and up), expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `planes`.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// The stem: how the image is reduced before stage 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 7×7 stride-2 convolution, then 3×3 stride-2 max pool (ImageNet; stride 4).
    Imagenet,
    /// 3×3 stride-1 convolution, no pool (CIFAR papers; stride 1).
    Cifar,
}

impl Stem {
    /// `(kernel, stride, padding)` of the stem convolution.
    pub(crate) fn conv_geometry(self) -> (usize, usize, usize) {
        match self {
            Stem::Imagenet => (7, 2, 3),
            Stem::Cifar => (3, 1, 1),
        }
    }

    /// The stem's max pool (3×3, stride 2, padding 1), if it has one.
    pub(crate) fn pool(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Stem::Imagenet => ops::max_pool2d(x, 3, 2, 1),
            Stem::Cifar => Ok(x.clone()),
        }
    }
}

/// ResNet configuration; names follow timm's `ResNet` arguments where timm has them (`block`,
/// `stem` and `stem_chs` are this crate's: timm passes a block class, and has no CIFAR stem).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResNetConfig {
    /// Residual block type.
    pub block: BlockKind,
    /// Blocks per stage.
    pub layers: Vec<usize>,
    /// `planes` per stage (block output = planes × expansion).
    pub channels: Vec<usize>,
    /// Output channels of the stem convolution (timm's ResNet fixes 64 for its single-conv stems;
    /// this crate's name, so that timm's `stem_width`, which sizes deep stems, is not confused
    /// with it).
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
    /// Zero-initialize the last BatchNorm weight of every residual branch (timm's default).
    pub zero_init_last: bool,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self {
            block: BlockKind::Basic,
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
            zero_init_last: true,
        }
    }
}

/// Checks shared by the CNN configurations.
pub(crate) fn validate_cnn(
    architecture: &str,
    layers: &[usize],
    channels: &[usize],
    sizes: &[(&str, usize)],
    global_pool: &str,
    rates: [(&str, f64); 2],
) -> Result<()> {
    let invalid = |message: String| {
        Err(BackboneError::InvalidConfig {
            architecture: architecture.to_string(),
            message,
        })
    };
    if layers.is_empty() || layers.len() != channels.len() {
        return invalid(format!(
            "layers {layers:?} and channels {channels:?} need one entry per stage (at least one)"
        ));
    }
    if layers.contains(&0) || channels.contains(&0) {
        return invalid("every stage needs at least one block and one channel".into());
    }
    for &(name, v) in sizes {
        if v == 0 {
            return invalid(format!("{name} must be positive"));
        }
    }
    if global_pool != "avg" {
        return invalid(format!(
            "global_pool \"{global_pool}\" is not supported (only \"avg\")"
        ));
    }
    for (name, p) in rates {
        if !(0.0..1.0).contains(&p) {
            return invalid(format!("{name} = {p} must be in [0, 1)"));
        }
    }
    Ok(())
}

impl ResNetConfig {
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

/// Stochastic depth rates of all blocks, `rate · i / (n − 1)` for block `i` of `n` (timm).
pub(crate) fn linear_drop_path(rate: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            if n > 1 {
                rate * i as f64 / (n - 1) as f64
            } else {
                0.0
            }
        })
        .collect()
}

/// `conv → bn` of the shortcut when the shape changes (names `downsample.0`, `downsample.1`).
struct Downsample {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl Downsample {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> candle_core::Result<Tensor> {
        self.bn.forward(&self.conv.forward(x)?, ctx)
    }
}

/// A residual block: `relu(branch(x) + shortcut(x))`, branch = conv-bn-relu (…) conv-bn.
struct Block {
    convs: Vec<Conv2d>,
    bns: Vec<BatchNorm2d>,
    downsample: Option<Downsample>,
    drop_path: f64,
}

impl Block {
    fn new(
        ps: &ParamStore,
        cfg: &ResNetConfig,
        in_chans: usize,
        planes: usize,
        stride: usize,
        drop_path: f64,
    ) -> Result<Self> {
        let out = planes * cfg.block.expansion();
        let kaiming = Init::KaimingNormalFanOut;
        // (in, out, kernel, stride, padding) of each conv of the branch.
        let geometry = match cfg.block {
            BlockKind::Basic => vec![(in_chans, planes, 3, stride, 1), (planes, planes, 3, 1, 1)],
            BlockKind::Bottleneck => vec![
                (in_chans, planes, 1, 1, 0),
                (planes, planes, 3, stride, 1),
                (planes, out, 1, 1, 0),
            ],
        };
        let last = geometry.len();
        let mut convs = Vec::new();
        let mut bns = Vec::new();
        for (i, (cin, cout, k, s, p)) in geometry.into_iter().enumerate() {
            convs.push(Conv2d::no_bias(
                &ps.pp(format!("conv{}", i + 1)),
                cin,
                cout,
                k,
                s,
                p,
                kaiming,
            )?);
            let gamma = if cfg.zero_init_last && i + 1 == last {
                0.0
            } else {
                1.0
            };
            bns.push(BatchNorm2d::new(
                &ps.pp(format!("bn{}", i + 1)),
                cout,
                gamma,
            )?);
        }
        let downsample = if stride != 1 || in_chans != out {
            Some(Downsample {
                conv: Conv2d::no_bias(
                    &ps.pp("downsample.0"),
                    in_chans,
                    out,
                    1,
                    stride,
                    0,
                    kaiming,
                )?,
                bn: BatchNorm2d::new(&ps.pp("downsample.1"), out, 1.0)?,
            })
        } else {
            None
        };
        Ok(Self {
            convs,
            bns,
            downsample,
            drop_path,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().zip(&self.bns).enumerate() {
            let y = conv.forward(&h)?;
            h = if i < last {
                bn.forward_relu(&y, ctx)?
            } else {
                bn.forward(&y, ctx)?
            };
        }
        let h = drop_path(&h, self.drop_path, ctx)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, ctx)?,
            None => x.clone(),
        };
        ops::add_relu(&h, &shortcut)
    }
}

/// The ResNet.
pub struct ResNet {
    cfg: ResNetConfig,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    stages: Vec<Vec<Block>>,
    fc: Linear,
}

impl ResNet {
    /// Build a ResNet with timm's initialization (convolutions `kaiming_normal_(fan_out, relu)`,
    /// BatchNorm 1/0 with the last of each branch 0 under `zero_init_last`, `fc` PyTorch default).
    pub fn new(ps: &ParamStore, cfg: &ResNetConfig) -> Result<Self> {
        cfg.validate("resnet")?;
        let (k, s, p) = cfg.stem.conv_geometry();
        let conv1 = Conv2d::no_bias(
            &ps.pp("conv1"),
            cfg.in_chans,
            cfg.stem_chs,
            k,
            s,
            p,
            Init::KaimingNormalFanOut,
        )?;
        let bn1 = BatchNorm2d::new(&ps.pp("bn1"), cfg.stem_chs, 1.0)?;
        let total: usize = cfg.layers.iter().sum();
        let dpr = linear_drop_path(cfg.drop_path_rate, total);
        let mut in_chans = cfg.stem_chs;
        let mut index = 0;
        let mut stages = Vec::new();
        for (stage, (&depth, &planes)) in cfg.layers.iter().zip(&cfg.channels).enumerate() {
            let mut blocks = Vec::new();
            for b in 0..depth {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let ps = ps.pp(format!("layer{}.{b}", stage + 1));
                blocks.push(Block::new(&ps, cfg, in_chans, planes, stride, dpr[index])?);
                in_chans = planes * cfg.block.expansion();
                index += 1;
            }
            stages.push(blocks);
        }
        let fc = Linear::torch_default(&ps.pp("fc"), in_chans, cfg.num_classes, true)?;
        Ok(Self {
            cfg: cfg.clone(),
            conv1,
            bn1,
            stages,
            fc,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    fn stem(&self, x: &Tensor, ctx: &Ctx) -> candle_core::Result<Tensor> {
        let h = self.bn1.forward_relu(&self.conv1.forward(x)?, ctx)?;
        self.cfg.stem.pool(&h)
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

/// `[B, C, h, w] → [B, h·w, C]` (row-major positions).
pub(crate) fn flatten_positions(features: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = features.dims4()?;
    features.reshape((b, c, h * w))?.transpose(1, 2)
}

/// Global average pool then dropout (timm `forward_head(pre_logits=True)` of a CNN).
pub(crate) fn avg_pool_head(
    features: &Tensor,
    drop_rate: f64,
    ctx: &mut Ctx,
) -> candle_core::Result<Tensor> {
    dropout(&features.mean((2, 3))?, drop_rate, ctx)
}

/// Checks a mix point of a CNN with `stages` stages (points `0..stages`).
pub(crate) fn check_point(point: usize, stages: usize) -> candle_core::Result<()> {
    if point >= stages {
        candle_core::bail!(
            "mix point {point} out of range: this CNN has points 0 (input) to {} (output of stage {})",
            stages - 1,
            stages - 1
        );
    }
    Ok(())
}

impl Backbone for ResNet {
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
        &self.fc
    }

    fn classifier(&self) -> &'static str {
        "fc"
    }

    fn first_conv(&self) -> &'static str {
        "conv1"
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
        let h = self.stem(x, ctx)?;
        self.run_stages(h, 0..point, ctx)
    }

    fn forward_from(&self, h: &Tensor, point: usize, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        check_point(point, self.stages.len())?;
        let h = if point == 0 {
            self.stem(h, ctx)?
        } else {
            h.clone()
        };
        self.run_stages(h, point..self.stages.len(), ctx)
    }

    fn no_weight_decay(&self) -> Vec<String> {
        Vec::new()
    }
}
