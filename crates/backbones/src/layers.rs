//! Trainable layers: linear, layer norm, dropout and drop-path driven by the run's seeded RNG.
//!
//! Every layer routes through [`crate::ops`], whose fused CPU kernels carry their own backward
//! (candle's fused `LayerNorm` and `softmax_last_dim` silently drop gradients).

use crate::error::Result;
use crate::ops;
use crate::params::{Init, ParamStore};
use candle_core::{DType, Tensor, Var};
use rand::{Rng, RngCore};

/// The forward context: training or evaluation mode, and in training mode the generator that
/// draws dropout and drop-path masks (the run's seeded host RNG).
pub struct Ctx<'a> {
    rng: Option<&'a mut dyn RngCore>,
}

impl Ctx<'static> {
    /// Evaluation mode: dropout and drop-path are identities, BatchNorm uses running statistics.
    pub fn eval() -> Self {
        Self { rng: None }
    }
}

impl<'a> Ctx<'a> {
    /// Training mode, drawing masks from `rng`.
    pub fn train(rng: &'a mut dyn RngCore) -> Self {
        Self { rng: Some(rng) }
    }

    /// Whether this is training mode.
    pub fn is_train(&self) -> bool {
        self.rng.is_some()
    }

    /// The training generator (`None` in evaluation mode).
    pub fn rng(&mut self) -> Option<&mut dyn RngCore> {
        match &mut self.rng {
            Some(r) => Some(&mut **r),
            None => None,
        }
    }
}

/// A fully connected layer `y = x Wᵀ + b` over the last dim (torch `nn.Linear`, names `weight`,
/// `bias`).
#[derive(Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A linear layer `in_dim → out_dim` with the given initializers.
    pub fn new(
        ps: &ParamStore,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        weight_init: Init,
        bias_init: Init,
    ) -> Result<Self> {
        let weight = ps.param("weight", (out_dim, in_dim), weight_init)?;
        let bias = if bias {
            Some(ps.param("bias", out_dim, bias_init)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// PyTorch's default initialization (`U(±1/√in_dim)` for weight and bias).
    pub fn torch_default(
        ps: &ParamStore,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let bound = 1.0 / (in_dim.max(1) as f64).sqrt();
        Self::new(
            ps,
            in_dim,
            out_dim,
            bias,
            Init::TorchDefault,
            Init::Uniform { bound },
        )
    }

    /// A linear layer over existing tensors (`weight` `[out, in]`, e.g. a reshaped 1×1
    /// convolution kernel); gradients reach whatever `weight` and `bias` derive from.
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Apply to `x` of shape `[..., in]`, giving `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let (in_dim, out_dim) = (self.weight.dim(1)?, self.weight.dim(0)?);
        let x2 = x.reshape(((), in_dim))?;
        let y = x2.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => ops::bias_add(&y, b)?,
            None => y,
        };
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = out_dim;
        }
        y.reshape(out_dims)
    }
}

/// Layer normalization over the last dim (names `weight`, `bias`).
#[derive(Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// A layer norm of width `dim` (weight 1, bias 0).
    pub fn new(ps: &ParamStore, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: ps.param("weight", dim, Init::Const(1.0))?,
            bias: ps.param("bias", dim, Init::Const(0.0))?,
            eps,
        })
    }

    /// Normalize `x` over its last dim.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// A 2-D convolution without bias or dilation (torch `nn.Conv2d(bias=False)`, name `weight`),
/// as every convolution of a ResNet.
#[derive(Clone)]
pub struct Conv2d {
    weight: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// A `k×k` convolution `in_chans → out_chans` with the given stride and zero padding, weight
    /// drawn from `init`.
    pub fn no_bias(
        ps: &ParamStore,
        in_chans: usize,
        out_chans: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        init: Init,
    ) -> Result<Self> {
        Ok(Self {
            weight: ps.param("weight", (out_chans, in_chans, kernel, kernel), init)?,
            stride,
            padding,
        })
    }

    /// The kernel `[out, in, k, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Apply to `x` of shape `[B, in, H, W]` (im2col + GEMM with its own backward,
    /// [`ops::conv2d`]).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::conv2d(x, &self.weight, self.stride, self.padding)
    }
}

/// 2-D batch normalization with PyTorch's semantics (`nn.BatchNorm2d`, momentum 0.1): names
/// `weight`, `bias` (trained) and the buffers `running_mean`, `running_var`,
/// `num_batches_tracked` (saved with the weights, updated in place in training mode).
#[derive(Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// A batch norm over `channels` (eps 1e-5, momentum 0.1), weight `gamma` (1, or 0 for a
    /// residual branch's last norm under `zero_init_last`), bias 0, running stats 0 and 1.
    pub fn new(ps: &ParamStore, channels: usize, gamma: f64) -> Result<Self> {
        Ok(Self {
            weight: ps.param("weight", channels, Init::Const(gamma))?,
            bias: ps.param("bias", channels, Init::Const(0.0))?,
            running_mean: ps.buffer("running_mean", channels, Init::Const(0.0), DType::F32)?,
            running_var: ps.buffer("running_var", channels, Init::Const(1.0), DType::F32)?,
            num_batches_tracked: ps.buffer(
                "num_batches_tracked",
                (),
                Init::Const(0.0),
                DType::I64,
            )?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// Normalize `x` `[B, C, H, W]`: with the batch's statistics in training mode (updating the
    /// running statistics), with the running statistics in evaluation mode.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> candle_core::Result<Tensor> {
        self.normalize(x, ctx, false)
    }

    /// `relu(self.forward(x, ctx))` as one op (forward and backward in one pass each).
    pub fn forward_relu(&self, x: &Tensor, ctx: &Ctx) -> candle_core::Result<Tensor> {
        self.normalize(x, ctx, true)
    }

    /// The normalization of the mode, then ReLU if `relu`.
    fn normalize(&self, x: &Tensor, ctx: &Ctx, relu: bool) -> candle_core::Result<Tensor> {
        if ctx.is_train() {
            self.forward_train(x, relu)
        } else {
            self.forward_eval(x, relu)
        }
    }

    /// `y = (x − μ_B) / √(σ²_B + ε) · γ + β` with biased batch variance; then
    /// `running ← (1 − m)·running + m·stat` with the unbiased variance (PyTorch).
    fn forward_train(&self, x: &Tensor, relu: bool) -> candle_core::Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let n = b * h * w;
        if n < 2 {
            candle_core::bail!(
                "BatchNorm2d in training mode needs more than 1 value per channel, got input {:?}",
                x.dims()
            );
        }
        let (y, mean, var) = ops::batch_norm_train(x, &self.weight, &self.bias, self.eps, relu)?;
        self.update_running(&mean, &var, n)?;
        Ok(y)
    }

    fn update_running(&self, mean: &Tensor, var: &Tensor, n: usize) -> candle_core::Result<()> {
        let m = self.momentum;
        let mean = mean.to_dtype(DType::F32)?;
        let unbiased = (var.to_dtype(DType::F32)? * (n as f64 / (n - 1) as f64))?;
        let rm = self.running_mean.as_detached_tensor();
        let rv = self.running_var.as_detached_tensor();
        self.running_mean.set(&((rm * (1.0 - m))? + (mean * m)?)?)?;
        self.running_var
            .set(&((rv * (1.0 - m))? + (unbiased * m)?)?)?;
        // +1 on the device (an i64 affine), without a host round trip.
        let count = self.num_batches_tracked.as_detached_tensor();
        self.num_batches_tracked.set(&count.affine(1.0, 1.0)?)
    }

    /// `y = x · γ/√(running_var + ε) + (β − running_mean · γ/√(running_var + ε))`.
    fn forward_eval(&self, x: &Tensor, relu: bool) -> candle_core::Result<Tensor> {
        let rm = self.running_mean.as_detached_tensor().to_dtype(x.dtype())?;
        let rv = self.running_var.as_detached_tensor().to_dtype(x.dtype())?;
        let scale = (rv + self.eps)?.sqrt()?.recip()?.mul(&self.weight)?;
        let shift = (&self.bias - rm.mul(&scale)?)?;
        ops::channel_affine(x, &scale, &shift, relu)
    }
}

/// Inverted dropout: zero each element with probability `p` and scale the rest by `1/(1-p)`
/// (torch `nn.Dropout`). Identity in evaluation mode or when `p = 0`.
pub fn dropout(x: &Tensor, p: f64, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let Some(rng) = ctx.rng() else {
        return Ok(x.clone());
    };
    let scale = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.random::<f64>() < p { 0.0 } else { scale })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}

/// Stochastic depth (timm `drop_path`, `scale_by_keep=True`): drop the residual branch `x` of a
/// whole sample with probability `p`, scaling kept samples by `1/(1-p)`.
pub fn drop_path(x: &Tensor, p: f64, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let Some(rng) = ctx.rng() else {
        return Ok(x.clone());
    };
    let b = x.dim(0)?;
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..b)
        .map(|_| {
            if rng.random::<f64>() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    let mut shape = vec![1usize; x.rank()];
    shape[0] = b;
    let mask = Tensor::from_vec(mask, shape, x.device())?.to_dtype(x.dtype())?;
    x.broadcast_mul(&mask)
}
