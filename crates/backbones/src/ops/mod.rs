//! Trainable fused ops that candle 0.11.1 lacks: layer norm, softmax, exact GELU and bias add.
//!
//! Why these exist:
//! * candle's fused `candle_nn::ops::layer_norm` and `softmax_last_dim` (and `rms_norm`) are
//!   applied with `apply_op*_no_bwd`: their outputs are detached, so every parameter upstream
//!   silently gets no gradient;
//! * the composite replacements (`layer_norm_slow`, `ops::softmax`, `Tensor::gelu_erf`,
//!   `broadcast_add` for biases) are correct but slow on CPU: in a profiled ViT-Tiny training
//!   step, scalar `erf` (GELU ≈ 25 % of the step), single-threaded strided reductions for the
//!   bias/γ/β gradients (≈ 16 %) and the many autograd nodes per layer dominate, not the matmuls.
//!   Fused, the forward + backward of GELU on `[8320, 768]` is ≈ 4× faster than
//!   `Tensor::gelu_erf`, layer norm ≈ 7× and softmax ≈ 10× faster than their compositions.
//!
//! Each op here is one autograd node: a [`candle_core::CustomOp1`]/`2`/`3` with a CPU forward and a
//! hand-written backward, rayon-parallel over rows (≈8 tasks per thread), with inner loops written
//! so the compiler vectorizes them (and compiled a second time for AVX2 when the CPU has it). The
//! custom ops run for f32 tensors on the CPU; any other dtype or device (f64, bf16, CUDA, Metal)
//! takes an equivalent composition of candle tensor ops, which has candle's backward.
//!
//! Accuracy: statistics and gradient reductions accumulate in f64; `exp` is a Cephes-style
//! polynomial (≈1 ulp) and `erf` is Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7, the formula of
//! PyTorch's vectorized CPU `erf`), evaluated in its `erfc` form so GELU's negative tail has no
//! cancellation.

mod attention;
mod batch_norm;
mod bias;
mod conv;
mod cpu;
mod gelu;
mod layer_norm;
mod math;
mod pool;
mod pool_tokens;
mod relu;
mod softmax;

pub use conv::conv2d;

use candle_core::{DType, Device, Error, Result, Tensor, D};

pub use attention::{attention_weights, qkv_attention, split_qkv_heads};

/// Layer normalization over the last dim (torch.nn.functional.layer_norm semantics, biased variance).
///
/// `y = (x - mean) / sqrt(var + eps) * weight + bias` with `mean`, `var` over the last dim of `x`
/// (`[..., D]`, any number of leading dims) and `weight`, `bias` of shape `[D]`. Gradients reach
/// `x`, `weight` and `bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    check_vector("layer_norm", x, weight, d)?;
    check_vector("layer_norm", x, bias, d)?;
    if fused(&[x, weight, bias]) {
        let x = x.contiguous()?;
        x.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            layer_norm::LayerNorm::new(eps),
        )
    } else {
        composite::layer_norm(x, weight, bias, eps)
    }
}

/// Softmax over the last dim: `y_i = exp(x_i - max) / Σ_j exp(x_j - max)`. Gradient reaches `x`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.dim(D::Minus1)?;
    if fused(&[x]) {
        x.contiguous()?.apply_op1(softmax::Softmax)
    } else {
        composite::softmax_last_dim(x)
    }
}

/// Exact GELU, 0.5·x·(1+erf(x/√2)) (torch.nn.GELU() default, as timm uses). Gradient reaches `x`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if fused(&[x]) {
        x.contiguous()?.apply_op1(gelu::GeluErf)
    } else {
        x.gelu_erf()
    }
}

/// `max(a + b, 0)` of two tensors of one shape, NaN kept: a residual block's output (torch
/// `relu(a + b)`), one node whose backward gives both `dy·[y > 0]`.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(Error::ShapeMismatchBinaryOp {
            lhs: a.shape().clone(),
            rhs: b.shape().clone(),
            op: "add_relu",
        }
        .bt());
    }
    if fused(&[a, b]) {
        a.contiguous()?.apply_op2(&b.contiguous()?, relu::AddRelu)
    } else {
        (a + b)?.relu()
    }
}

/// `x[..., n] + bias[n]`; the backward of bias is a (parallel) column sum. Gradients reach `x` and
/// `bias`.
pub fn bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    check_vector("bias_add", x, bias, n)?;
    if fused(&[x, bias]) {
        x.contiguous()?
            .apply_op2(&bias.contiguous()?, bias::BiasAdd)
    } else {
        x.broadcast_add(bias)
    }
}

/// Batch normalization with batch statistics over `[B, C, …]` (torch `batch_norm` in training
/// mode): `y = (x − μ_c)/√(σ²_c + eps)·weight_c + bias_c`, `μ`, `σ²` (biased) over all dims but
/// dim 1, followed by `max(y, 0)` in the same pass when `relu` (torch `relu(batch_norm(…))`).
/// Returns `(y, μ, σ²)` with the statistics `[C]` detached (for the running averages);
/// gradients reach `x` (through the statistics too), `weight` and `bias`.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = x.dim(1)?;
    check_vector("batch_norm", x, weight, c)?;
    check_vector("batch_norm", x, bias, c)?;
    if fused(&[x, weight, bias]) {
        let x = x.contiguous()?;
        let shape = batch_norm::channel_dims(x.shape())?;
        let stats = cpu::with_f32("batch_norm", &x, |v| {
            Ok(batch_norm::channel_stats(v, shape, eps))
        })?;
        let mean: Vec<f64> = stats.iter().map(|s| s.mean).collect();
        let var: Vec<f64> = stats.iter().map(|s| s.var).collect();
        let y = x.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            batch_norm::BatchNormTrain { stats, relu },
        )?;
        let device = x.device();
        Ok((
            y,
            Tensor::from_vec(mean, c, device)?.to_dtype(DType::F32)?,
            Tensor::from_vec(var, c, device)?.to_dtype(DType::F32)?,
        ))
    } else {
        let (y, mean, var) = composite::batch_norm_train(x, weight, bias, eps)?;
        Ok((if relu { y.relu()? } else { y }, mean, var))
    }
}

/// `y = x·scale_c + shift_c` over `[B, C, …]` (evaluation-mode batch norm with its running
/// statistics folded into `scale`, `shift` `[C]`), followed by `max(y, 0)` in the same pass when
/// `relu`. Gradients reach all three.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor, relu: bool) -> Result<Tensor> {
    let c = x.dim(1)?;
    check_vector("channel_affine", x, scale, c)?;
    check_vector("channel_affine", x, shift, c)?;
    if fused(&[x, scale, shift]) {
        x.contiguous()?.apply_op3(
            &scale.contiguous()?,
            &shift.contiguous()?,
            batch_norm::ChannelAffine { relu },
        )
    } else {
        let y = composite::channel_affine(x, scale, shift)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

/// The mean of tokens `start..start + len` of `x` `[B, N, D]`, `[B, D]` (a ViT's average pooling
/// over its patch tokens: timm's `x[:, prefix:].mean(dim=1)`). Gradient reaches `x`.
pub fn mean_tokens(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    let (_, n, _) = x.dims3()?;
    if len == 0 || start + len > n {
        candle_core::bail!(
            "mean_tokens: tokens {start}..{} of {n} (need at least one token inside the input {:?})",
            start + len,
            x.dims()
        );
    }
    if fused(&[x]) {
        x.contiguous()?
            .apply_op1(pool_tokens::MeanTokens { start, len })
    } else {
        x.narrow(1, start, len)?.mean(1)
    }
}

/// Max pooling over `[B, C, H, W]` with a square `kernel`, `stride` and implicit −∞ `padding`
/// (torch `nn.MaxPool2d(kernel, stride, padding)`, `ceil_mode=False`). Unlike candle's
/// `max_pool2d`, it has a backward for any geometry (a ResNet stem's 3×3/2 pool): the gradient of
/// each output goes to the first maximum of its window, as in PyTorch.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if kernel == 0
        || stride == 0
        || 2 * padding > kernel
        || h + 2 * padding < kernel
        || w + 2 * padding < kernel
    {
        candle_core::bail!(
            "max_pool2d: kernel {kernel}, stride {stride}, padding {padding} do not fit input {:?} (need kernel, stride > 0, padding ≤ kernel/2, kernel ≤ size + 2·padding)",
            x.dims()
        );
    }
    let pool = pool::MaxPool2d {
        kernel,
        stride,
        padding,
    };
    if fused(&[x]) {
        x.contiguous()?.apply_op1(pool)
    } else {
        composite::max_pool2d(x, kernel, stride, padding)
    }
}

/// True when the custom ops apply: every tensor is f32 and on the CPU.
fn fused(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu))
}

/// Checks that a per-feature parameter has shape `[len]`.
fn check_vector(op: &'static str, x: &Tensor, param: &Tensor, len: usize) -> Result<()> {
    if param.dims() == [len] {
        Ok(())
    } else {
        Err(Error::ShapeMismatchBinaryOp {
            lhs: x.shape().clone(),
            rhs: param.shape().clone(),
            op,
        }
        .bt())
    }
}

/// The same ops composed from candle tensor ops (which have backward): the path for non-f32
/// dtypes and non-CPU devices.
pub(crate) mod composite {
    use candle_core::{Result, Tensor, D};

    /// `(x - mean) / sqrt(var + eps) * weight + bias` over the last dim, biased variance.
    pub(crate) fn layer_norm(
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
        normed.broadcast_mul(weight)?.broadcast_add(bias)
    }

    /// Per-channel shape `[1, C, 1, …]` for broadcasting over `x`.
    fn per_channel(x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let mut dims = vec![1usize; x.rank()];
        dims[1] = x.dim(1)?;
        v.reshape(dims)
    }

    /// Batch norm from composed ops; returns `(y, μ, σ²)` with detached `[C]` statistics.
    pub(crate) fn batch_norm_train(
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let c = x.dim(1)?;
        let dims: Vec<usize> = (0..x.rank()).filter(|d| *d != 1).collect();
        let mean = x.mean_keepdim(dims.as_slice())?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(dims.as_slice())?;
        let scale = (&var + eps)?
            .sqrt()?
            .recip()?
            .broadcast_mul(&per_channel(x, weight)?)?;
        let y = centered
            .broadcast_mul(&scale)?
            .broadcast_add(&per_channel(x, bias)?)?;
        Ok((y, mean.detach().reshape(c)?, var.detach().reshape(c)?))
    }

    /// `x·scale_c + shift_c` from broadcast ops.
    pub(crate) fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&per_channel(x, scale)?)?
            .broadcast_add(&per_channel(x, shift)?)
    }

    /// Max pooling as the elementwise maximum of the `k²` strided views of the −∞-padded input
    /// (ties share the gradient, where PyTorch gives it to the first maximum).
    pub(crate) fn max_pool2d(x: &Tensor, k: usize, s: usize, p: usize) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        // Pad to s·(o + ⌈k/s⌉) per dim so every view is a whole number of stride blocks.
        let blocks = k.div_ceil(s);
        let (hp, wp) = (s * (oh + blocks), s * (ow + blocks));
        let fill = |dims: (usize, usize, usize, usize)| -> Result<Tensor> {
            Tensor::full(f32::NEG_INFINITY, dims, x.device())?.to_dtype(x.dtype())
        };
        let rows = Tensor::cat(&[&fill((b, c, p, w))?, x, &fill((b, c, hp - p - h, w))?], 2)?;
        let padded = Tensor::cat(
            &[&fill((b, c, hp, p))?, &rows, &fill((b, c, hp, wp - p - w))?],
            3,
        )?;
        let phased = padded.reshape((b, c, hp / s, s, wp / s, s))?;
        let mut out: Option<Tensor> = None;
        for dy in 0..k {
            for dx in 0..k {
                let view = phased
                    .narrow(2, dy / s, oh)?
                    .narrow(3, dy % s, 1)?
                    .narrow(4, dx / s, ow)?
                    .narrow(5, dx % s, 1)?
                    .reshape((b, c, oh, ow))?;
                out = Some(match out {
                    Some(m) => m.maximum(&view)?,
                    None => view,
                });
            }
        }
        out.ok_or_else(|| candle_core::Error::Msg("max_pool2d: empty kernel".into()))
    }

    /// `exp(x - max) / Σ exp(x - max)`; the max is detached (softmax is shift invariant).
    pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&max)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic, spread-out test values (no RNG: candle's CPU RNG cannot be seeded).
    fn values(dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 6.0)
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// The token mean equals candle's `narrow` + `mean(1)`, output and input gradient (zero on the
    /// tokens outside the range), and rejects an empty or out-of-range token range.
    #[test]
    fn mean_tokens_equals_narrow_mean() {
        let x = candle_core::Var::from_tensor(&values(&[3, 9, 37])).unwrap();
        let gy = values(&[3, 37]);
        let fused = mean_tokens(&x, 2, 5).unwrap();
        let reference = x.narrow(1, 2, 5).unwrap().mean(1).unwrap();
        assert!(max_diff(&fused, &reference) < 1e-5);
        let grad = |y: &Tensor| {
            let g = (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().clone()
        };
        let (g1, g2) = (grad(&fused), grad(&reference));
        assert!(max_diff(&g1, &g2) < 1e-6);
        let outside = g1
            .narrow(1, 7, 2)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(outside.to_scalar::<f32>().unwrap(), 0.0);
        assert!(mean_tokens(&x, 2, 0).is_err());
        assert!(mean_tokens(&x, 5, 5).is_err());
    }

    /// The fused ReLU keeps NaN and, as PyTorch's `threshold_backward`, passes no gradient where
    /// the output is 0 (a sum of 0 included) and the whole gradient where it is NaN.
    #[test]
    fn relu_matches_torch_at_zero_and_nan() {
        let x = candle_core::Var::new(&[-1.0f32, 0.0, 2.0, f32::NAN], &Device::Cpu).unwrap();
        let y = add_relu(&x, &x.zeros_like().unwrap()).unwrap();
        let v = y.to_vec1::<f32>().unwrap();
        assert_eq!(&v[..3], &[0.0, 0.0, 2.0]);
        assert!(v[3].is_nan());
        let g = (&y * Tensor::new(&[3.0f32, 5.0, 7.0, 11.0], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let dx = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(dx, vec![0.0, 0.0, 7.0, 11.0]);
        let other = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let err = add_relu(&x, &other).unwrap_err().to_string();
        assert!(err.contains("add_relu") && err.contains("[3]"), "{err}");
    }

    /// The custom ops and their f32 composite fallbacks agree, outputs and input gradients.
    #[test]
    fn custom_ops_equal_composite_fallbacks() {
        let x = candle_core::Var::from_tensor(&values(&[4, 9, 37])).unwrap();
        let w = candle_core::Var::from_tensor(&values(&[37])).unwrap();
        let b = candle_core::Var::from_tensor(&(values(&[37]) * 0.5).unwrap()).unwrap();
        let gy = values(&[4, 9, 37]).flip(&[0]).unwrap();
        type Pair = (Tensor, Tensor);
        let pairs: [(&str, Pair); 5] = [
            (
                "layer_norm",
                (
                    layer_norm(&x, &w, &b, 1e-6).unwrap(),
                    composite::layer_norm(&x, &w, &b, 1e-6).unwrap(),
                ),
            ),
            (
                "softmax",
                (
                    softmax_last_dim(&x).unwrap(),
                    composite::softmax_last_dim(&x).unwrap(),
                ),
            ),
            ("gelu", (gelu_erf(&x).unwrap(), x.gelu_erf().unwrap())),
            (
                "add_relu",
                (
                    add_relu(&x, &x.broadcast_mul(&w).unwrap()).unwrap(),
                    (x.as_tensor() + x.broadcast_mul(&w).unwrap())
                        .unwrap()
                        .relu()
                        .unwrap(),
                ),
            ),
            (
                "bias_add",
                (bias_add(&x, &b).unwrap(), x.broadcast_add(&b).unwrap()),
            ),
        ];
        for (name, (fused, reference)) in pairs {
            assert!(max_diff(&fused, &reference) < 1e-5, "{name}: output");
            let g1 = (&fused * &gy)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&reference * &gy)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (i, v) in [&x, &w, &b].into_iter().enumerate() {
                match (g1.get(v.as_tensor()), g2.get(v.as_tensor())) {
                    (Some(a), Some(r)) => {
                        let tol = 1e-5
                            * r.abs()
                                .unwrap()
                                .max_all()
                                .unwrap()
                                .to_scalar::<f32>()
                                .unwrap()
                                .max(1.0);
                        assert!(max_diff(a, r) < tol, "{name}: grad {i}");
                    }
                    (None, None) => {}
                    _ => panic!("{name}: grad {i} present on one path only"),
                }
            }
        }
    }
}
