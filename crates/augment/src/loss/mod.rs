//! Soft-target losses with hand-written backward: soft cross-entropy and log-softmax.
//!
//! candle 0.11.1 has no soft-target cross-entropy (`candle_nn::loss::cross_entropy` takes class
//! ids), its fused `softmax_last_dim` drops gradients, and the composite `log_softmax` costs six
//! autograd nodes and as many full passes over the logits. Here each loss is one autograd node:
//! a [`candle_core::CustomOp1`]/`2` with a CPU forward and backward for f32 tensors, rayon-parallel
//! over rows, numerically stable (max subtraction, f64 accumulation of row and batch sums). Any
//! other dtype or device (f64, bf16, CUDA, Metal) takes an equivalent composition of candle
//! tensor ops, which has candle's backward. Dense MultiMix's detached attention is computed on
//! the host the same way (no backward needed).

mod attention;
mod cpu;
mod log_softmax;
mod mixed;
mod soft_ce;

use candle_core::{DType, Device, Error, Result, Tensor, D};

pub(crate) use attention::{attention_host, gap_attention_host, gap_query_host};

/// Soft-target cross-entropy H(Y, L) = -mean_rows(sum_c Y * log_softmax(L)) (timm SoftTargetCrossEntropy).
///
/// `logits` and `targets` are `[N, C]` (or `[..., C]`: all leading dims are rows) of the same
/// shape; returns a scalar tensor (NaN for zero rows, as `torch.mean` of an empty tensor).
/// Targets need not sum to 1 per row.
///
/// The gradient flows to `logits` only: `targets` are treated as constants (mixed labels are
/// data, not parameters), even when they are computed from tracked tensors.
/// `∂H/∂L = (softmax(L)·Σ_c Y − Y) / N`.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.dim(D::Minus1)?;
    if logits.dims() != targets.dims() {
        return Err(Error::ShapeMismatchBinaryOp {
            lhs: logits.shape().clone(),
            rhs: targets.shape().clone(),
            op: "soft_cross_entropy",
        }
        .bt());
    }
    if fused(&[logits, targets]) {
        logits
            .contiguous()?
            .apply_op2(&targets.detach().contiguous()?, soft_ce::SoftCrossEntropy)
    } else {
        composite::soft_cross_entropy(logits, targets)
    }
}

/// log_softmax over the last dim, with backward (used by NLL and KL terms).
///
/// `y_i = x_i − max − ln Σ_j exp(x_j − max)`; gradient `dx = dy − softmax(x)·Σ dy` reaches `x`.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.dim(D::Minus1)?;
    if fused(&[x]) {
        x.contiguous()?.apply_op1(log_softmax::LogSoftmax)
    } else {
        composite::log_softmax_last_dim(x)
    }
}

/// True when the custom ops apply: every tensor is f32 and on the CPU.
pub(crate) fn fused(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu))
}

/// MultiMix's loss `H(ΛY, ΛZ)` over logits `Z` `[b, c]` as one custom op (CPU, f32; shapes
/// checked by the caller, `multimix::multimix_loss`).
pub(crate) fn multimix_fused(lambda: &Tensor, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (_, b) = lambda.dims2()?;
    let (_, c) = targets.dims2()?;
    let lambda = lambda.detach().flatten_all()?.to_vec1()?;
    let targets = targets.detach().flatten_all()?.to_vec1()?;
    let op = mixed::MultiMixCe::new(lambda, b, targets, c);
    logits.contiguous()?.apply_op1(op)
}

/// Dense MultiMix's loss over per-position logits `[b, r, c]` and attention `[b, r]` as one
/// custom op, targets `[b, c]` or `[b, r, c]` (CPU, f32; shapes checked by the caller,
/// `dense::dense_multimix_loss`).
pub(crate) fn dense_multimix_fused(
    lambda: &Tensor,
    attn: &Tensor,
    logits: &Tensor,
    targets: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let (_, b) = lambda.dims2()?;
    let lambda = lambda.detach().flatten_all()?.to_vec1()?;
    let values = targets.detach().flatten_all()?.to_vec1()?;
    let targets = match targets.rank() {
        2 => mixed::DenseTargets::PerExample(values),
        _ => mixed::DenseTargets::PerPosition(values),
    };
    let op = mixed::DenseMultiMixCe::new(lambda, b, targets, eps as f32, attn.track_op());
    logits.contiguous()?.apply_op2(&attn.contiguous()?, op)
}

/// The same losses composed from candle tensor ops (which have backward): the path for non-f32
/// dtypes and non-CPU devices.
pub(crate) mod composite {
    use candle_core::{Result, Tensor, D};

    /// `x − max − ln Σ exp(x − max)`; the max is detached (log-softmax is shift invariant).
    pub(crate) fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        shifted.broadcast_sub(&lse)
    }

    /// `−mean_rows Σ_c Y·log_softmax(L)` with `Y` detached.
    pub(crate) fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let log_p = log_softmax_last_dim(logits)?;
        (targets.detach() * log_p)?
            .sum(D::Minus1)?
            .mean_all()?
            .neg()
    }
}
