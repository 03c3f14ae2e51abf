//! Vision Transformer with timm's `VisionTransformer` names and semantics
//! (Dosovitskiy et al. 2021; timm `vision_transformer.py`).
//!
//! `forward_features` returns all tokens `[B, prefix + T, D]` after the final norm, as timm
//! does; [`Backbone::dense`] returns the patch tokens that dense MultiMix mixes. With
//! `global_pool = "avg"` and `fc_norm = false` the norm is applied per token before pooling, so
//! the mean of the dense logits equals the pooled logits exactly (`METHOD.md` §3).

use crate::error::{BackboneError, Result};
use crate::layers::{drop_path, dropout, Ctx, LayerNorm, Linear};
use crate::model::Backbone;
use crate::ops;
use crate::params::{Init, ParamStore};
use crate::pos_embed::resample_abs_pos_embed;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a ViT pools its tokens before the head (timm `global_pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GlobalPool {
    /// The class token.
    Token,
    /// The mean of the patch tokens (prefix tokens excluded).
    Avg,
}

/// ViT configuration; field names and defaults are timm's `VisionTransformer` arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VitConfig {
    /// Input height and width (square images).
    pub img_size: usize,
    /// Patch height and width.
    pub patch_size: usize,
    /// Input channels.
    pub in_chans: usize,
    /// Classes of the head.
    pub num_classes: usize,
    /// Token pooling before the head.
    pub global_pool: GlobalPool,
    /// Token width `D`.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// MLP hidden width as a multiple of `embed_dim`.
    pub mlp_ratio: f64,
    /// Bias in the qkv projection.
    pub qkv_bias: bool,
    /// Whether a class token is prepended.
    pub class_token: bool,
    /// Norm after pooling instead of before (timm: `None` means `global_pool == "avg"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fc_norm: Option<bool>,
    /// Dropout before the head.
    pub drop_rate: f64,
    /// Dropout after adding position embeddings.
    pub pos_drop_rate: f64,
    /// Dropout after the attention and MLP projections.
    pub proj_drop_rate: f64,
    /// Dropout on attention weights.
    pub attn_drop_rate: f64,
    /// Stochastic depth rate of the last block (linearly increasing from 0 over blocks).
    pub drop_path_rate: f64,
}

impl Default for VitConfig {
    fn default() -> Self {
        Self {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            num_classes: 1000,
            global_pool: GlobalPool::Token,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4.0,
            qkv_bias: true,
            class_token: true,
            fc_norm: None,
            drop_rate: 0.0,
            pos_drop_rate: 0.0,
            proj_drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.0,
        }
    }
}

impl VitConfig {
    /// Whether the norm is applied after pooling (timm's `use_fc_norm` rule).
    pub fn use_fc_norm(&self) -> bool {
        self.fc_norm.unwrap_or(self.global_pool == GlobalPool::Avg)
    }

    /// Patches per side.
    pub fn grid_size(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Check the arguments describe a buildable model.
    pub fn validate(&self, architecture: &str) -> Result<()> {
        let invalid = |message: String| {
            Err(BackboneError::InvalidConfig {
                architecture: architecture.to_string(),
                message,
            })
        };
        if self.patch_size == 0
            || self.img_size == 0
            || !self.img_size.is_multiple_of(self.patch_size)
        {
            return invalid(format!(
                "img_size {} must be a positive multiple of patch_size {}",
                self.img_size, self.patch_size
            ));
        }
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            return invalid(format!(
                "embed_dim {} must be divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if self.depth == 0 || self.in_chans == 0 || self.num_classes == 0 || self.mlp_ratio <= 0.0 {
            return invalid("depth, in_chans, num_classes and mlp_ratio must be positive".into());
        }
        if self.global_pool == GlobalPool::Token && !self.class_token {
            return invalid("global_pool \"token\" needs class_token = true".into());
        }
        let rates = [
            ("drop_rate", self.drop_rate),
            ("pos_drop_rate", self.pos_drop_rate),
            ("proj_drop_rate", self.proj_drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ];
        for (name, p) in rates {
            if !(0.0..1.0).contains(&p) {
                return invalid(format!("{name} = {p} must be in [0, 1)"));
            }
        }
        Ok(())
    }
}

/// Multi-head self-attention (names `qkv`, `proj`).
struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    attn_drop: f64,
    proj_drop: f64,
}

impl Attention {
    fn new(ps: &ParamStore, cfg: &VitConfig) -> Result<Self> {
        let d = cfg.embed_dim;
        let trunc = Init::TruncNormal { std: 0.02 };
        Ok(Self {
            qkv: Linear::new(
                &ps.pp("qkv"),
                d,
                3 * d,
                cfg.qkv_bias,
                trunc,
                Init::Const(0.0),
            )?,
            proj: Linear::new(&ps.pp("proj"), d, d, true, trunc, Init::Const(0.0))?,
            num_heads: cfg.num_heads,
            attn_drop: cfg.attn_drop_rate,
            proj_drop: cfg.proj_drop_rate,
        })
    }

    /// The attention weights `[B, H, N, N]` for the (normed) tokens `x`.
    fn weights(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (q, k, _) = ops::split_qkv_heads(&self.qkv.forward(x)?, self.num_heads)?;
        ops::attention_weights(&q, &k)
    }

    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let qkv = self.qkv.forward(x)?;
        let y = if ctx.is_train() && self.attn_drop > 0.0 {
            // Dropout on the weights needs them as a tensor: the composed path.
            let (q, k, v) = ops::split_qkv_heads(&qkv, self.num_heads)?;
            let attn = ops::attention_weights(&q, &k)?;
            let y = dropout(&attn, self.attn_drop, ctx)?.matmul(&v)?;
            y.transpose(1, 2)?.reshape((b, n, d))?
        } else {
            ops::qkv_attention(&qkv, self.num_heads)?
        };
        dropout(&self.proj.forward(&y)?, self.proj_drop, ctx)
    }
}

/// Transformer block: `x + drop_path(attn(norm1(x)))`, then `x + drop_path(mlp(norm2(x)))`.
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    drop_path: f64,
    proj_drop: f64,
}

impl Block {
    fn new(ps: &ParamStore, cfg: &VitConfig, drop_path: f64) -> Result<Self> {
        let d = cfg.embed_dim;
        let hidden = (d as f64 * cfg.mlp_ratio) as usize;
        let trunc = Init::TruncNormal { std: 0.02 };
        Ok(Self {
            norm1: LayerNorm::new(&ps.pp("norm1"), d, 1e-6)?,
            attn: Attention::new(&ps.pp("attn"), cfg)?,
            norm2: LayerNorm::new(&ps.pp("norm2"), d, 1e-6)?,
            fc1: Linear::new(&ps.pp("mlp.fc1"), d, hidden, true, trunc, Init::Const(0.0))?,
            fc2: Linear::new(&ps.pp("mlp.fc2"), hidden, d, true, trunc, Init::Const(0.0))?,
            drop_path,
            proj_drop: cfg.proj_drop_rate,
        })
    }

    fn mlp(&self, x: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let h = dropout(&ops::gelu_erf(&self.fc1.forward(x)?)?, self.proj_drop, ctx)?;
        dropout(&self.fc2.forward(&h)?, self.proj_drop, ctx)
    }

    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let a = self.attn.forward(&self.norm1.forward(x)?, ctx)?;
        let x = (x + drop_path(&a, self.drop_path, ctx)?)?;
        let m = self.mlp(&self.norm2.forward(&x)?, ctx)?;
        &x + drop_path(&m, self.drop_path, ctx)?
    }

    /// The attention weights of this block for its input tokens `x`.
    fn attention_weights(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.attn.weights(&self.norm1.forward(x)?)
    }
}

/// The Vision Transformer.
pub struct VisionTransformer {
    cfg: VitConfig,
    patch_weight: Tensor,
    patch_bias: Tensor,
    cls_token: Option<Tensor>,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: Option<LayerNorm>,
    fc_norm: Option<LayerNorm>,
    head: Linear,
}

impl VisionTransformer {
    /// Build a ViT with timm's initialization (`init_weights_vit_timm`: trunc-normal(.02)
    /// linears with zero bias, trunc-normal(.02) position embeddings, class token N(0, 1e-6²),
    /// PyTorch's default for the patch-embedding convolution).
    pub fn new(ps: &ParamStore, cfg: &VitConfig) -> Result<Self> {
        cfg.validate("vit")?;
        let d = cfg.embed_dim;
        let patch_in = cfg.in_chans * cfg.patch_size * cfg.patch_size;
        let pe = ps.pp("patch_embed.proj");
        let patch_weight = pe.param(
            "weight",
            (d, cfg.in_chans, cfg.patch_size, cfg.patch_size),
            Init::TorchDefault,
        )?;
        let bound = 1.0 / (patch_in as f64).sqrt();
        let patch_bias = pe.param("bias", d, Init::Uniform { bound })?;
        let cls_token = if cfg.class_token {
            Some(ps.param("cls_token", (1, 1, d), Init::Normal { std: 1e-6 })?)
        } else {
            None
        };
        let num_tokens = cfg.grid_size() * cfg.grid_size() + usize::from(cfg.class_token);
        let pos_embed = ps.param(
            "pos_embed",
            (1, num_tokens, d),
            Init::TruncNormal { std: 0.02 },
        )?;
        let blocks = (0..cfg.depth)
            .map(|i| {
                // Stochastic depth rule: linearly increasing from 0 to drop_path_rate.
                let dpr = if cfg.depth > 1 {
                    cfg.drop_path_rate * i as f64 / (cfg.depth - 1) as f64
                } else {
                    0.0
                };
                Block::new(&ps.pp(format!("blocks.{i}")), cfg, dpr)
            })
            .collect::<Result<Vec<_>>>()?;
        let (norm, fc_norm) = if cfg.use_fc_norm() {
            (None, Some(LayerNorm::new(&ps.pp("fc_norm"), d, 1e-6)?))
        } else {
            (Some(LayerNorm::new(&ps.pp("norm"), d, 1e-6)?), None)
        };
        let trunc = Init::TruncNormal { std: 0.02 };
        let head = Linear::new(
            &ps.pp("head"),
            d,
            cfg.num_classes,
            true,
            trunc,
            Init::Const(0.0),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_weight,
            patch_bias,
            cls_token,
            pos_embed,
            blocks,
            norm,
            fc_norm,
            head,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// Number of prefix (class) tokens.
    pub fn num_prefix_tokens(&self) -> usize {
        usize::from(self.cls_token.is_some())
    }

    /// Patch embedding as a matmul over non-overlapping patches (identical to timm's
    /// `Conv2d(k = s = patch)`, `[B, C, H, W] → [B, T, D]`, T in row-major patch order).
    fn patch_embed(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let p = self.cfg.patch_size;
        if c != self.cfg.in_chans || h != self.cfg.img_size || w != self.cfg.img_size {
            candle_core::bail!(
                "ViT expects input [B, {}, {}, {}], got {:?}",
                self.cfg.in_chans,
                self.cfg.img_size,
                self.cfg.img_size,
                x.dims()
            );
        }
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, c * p * p))?;
        let d = self.cfg.embed_dim;
        let w2 = self.patch_weight.reshape((d, c * p * p))?;
        let y = ops::bias_add(&patches.matmul(&w2.t()?)?, &self.patch_bias)?;
        y.reshape((b, gh * gw, d))
    }

    /// Tokens entering block 0: patch embeddings, class token prepended, position embeddings added.
    fn embed(&self, x: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let x = self.patch_embed(x)?;
        let x = match &self.cls_token {
            Some(cls) => {
                let (b, _, d) = x.dims3()?;
                Tensor::cat(&[&cls.broadcast_as((b, 1, d))?, &x], 1)?
            }
            None => x,
        };
        dropout(
            &x.broadcast_add(&self.pos_embed)?,
            self.cfg.pos_drop_rate,
            ctx,
        )
    }

    fn final_norm(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.norm {
            Some(n) => n.forward(x),
            None => Ok(x.clone()),
        }
    }

    /// Mix points are 0 (input) to `depth` (entering the last block).
    fn check_point(&self, point: usize) -> candle_core::Result<()> {
        if point > self.blocks.len() {
            candle_core::bail!(
                "mix point {point} out of range: this ViT has points 0 (input) to {} (entering block {})",
                self.blocks.len(),
                self.blocks.len() - 1
            );
        }
        Ok(())
    }

    /// The attention weights `[B, H, N, N]` of block `index` (0-based) for inputs `x`.
    pub fn attention_maps(&self, x: &Tensor, index: usize) -> candle_core::Result<Tensor> {
        if index >= self.blocks.len() {
            candle_core::bail!(
                "block {index} out of range: the ViT has {} blocks",
                self.blocks.len()
            );
        }
        let mut ctx = Ctx::eval();
        let mut h = self.embed(x, &mut ctx)?;
        for block in &self.blocks[..index] {
            h = block.forward(&h, &mut ctx)?;
        }
        self.blocks[index].attention_weights(&h)
    }
}

impl Backbone for VisionTransformer {
    fn forward_features(&self, x: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let h = self.forward_to(x, 0, ctx)?;
        self.forward_from(&h, 0, ctx)
    }

    fn dense(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        let (_, n, _) = features.dims3()?;
        let prefix = self.num_prefix_tokens();
        let tokens = features.narrow(1, prefix, n - prefix)?;
        match &self.fc_norm {
            Some(norm) => norm.forward(&tokens),
            None => Ok(tokens),
        }
    }

    fn pre_logits(&self, features: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let pooled = match self.cfg.global_pool {
            GlobalPool::Token => features.narrow(1, 0, 1)?.squeeze(1)?,
            GlobalPool::Avg => {
                let (_, n, _) = features.dims3()?;
                let prefix = self.num_prefix_tokens();
                ops::mean_tokens(features, prefix, n - prefix)?
            }
        };
        let pooled = match &self.fc_norm {
            Some(norm) => norm.forward(&pooled)?,
            None => pooled,
        };
        dropout(&pooled, self.cfg.drop_rate, ctx)
    }

    fn head(&self) -> &Linear {
        &self.head
    }

    fn classifier(&self) -> &'static str {
        "head"
    }

    fn first_conv(&self) -> &'static str {
        "patch_embed.proj"
    }

    fn class_token(&self, features: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if self.cls_token.is_some() {
            Ok(Some(features.narrow(1, 0, 1)?.squeeze(1)?))
        } else {
            Ok(None)
        }
    }

    fn num_mix_points(&self) -> usize {
        self.blocks.len() + 1
    }

    fn forward_to(&self, x: &Tensor, point: usize, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        self.check_point(point)?;
        if point == 0 {
            return Ok(x.clone());
        }
        let mut h = self.embed(x, ctx)?;
        for block in self.blocks.iter().take(point - 1) {
            h = block.forward(&h, ctx)?;
        }
        Ok(h)
    }

    fn forward_from(&self, h: &Tensor, point: usize, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        self.check_point(point)?;
        let (mut h, skip) = if point == 0 {
            (self.embed(h, ctx)?, 0)
        } else {
            (h.clone(), point - 1)
        };
        for block in self.blocks.iter().skip(skip) {
            h = block.forward(&h, ctx)?;
        }
        self.final_norm(&h)
    }

    fn no_weight_decay(&self) -> Vec<String> {
        vec!["pos_embed".into(), "cls_token".into()]
    }

    /// Resample `pos_embed` of a checkpoint made for another image size to this grid, as timm's
    /// `checkpoint_filter_fn` (bicubic, antialiased, prefix tokens kept).
    fn adapt_weights(&self, tensors: &mut BTreeMap<String, Tensor>) -> Result<()> {
        let Some(pos) = tensors.get("pos_embed") else {
            return Ok(());
        };
        if pos.dims() == self.pos_embed.dims() {
            return Ok(());
        }
        let prefix = self.num_prefix_tokens();
        let grid = self.cfg.grid_size();
        let resized = resample_abs_pos_embed(pos, (grid, grid), None, prefix, true).map_err(|e| {
            BackboneError::WeightMismatch(format!(
                "pos_embed {:?} cannot be resampled to {grid}×{grid} patches with {prefix} prefix token(s): {}",
                pos.dims(),
                e.to_string().lines().next().unwrap_or_default()
            ))
        })?;
        tensors.insert("pos_embed".into(), resized);
        Ok(())
    }
}
