//! Dense MultiMix (METHOD.md §3): interpolation per spatial position, weighted by attention.
//!
//! For tuple `k` with Dirichlet row `λ_k`, position `j` of example `i` gets weight
//! `ξ_kij = λ_ki · a_ij`, normalized over the examples per position. Embeddings (or, for an
//! affine head, per-position logits) and targets are mixed with the same weights, and the loss
//! is applied over all `n · r` mixed positions.

use crate::error::{AugmentError, Result};
use crate::loss::{
    attention_host, dense_multimix_fused, fused, gap_attention_host, gap_query_host,
    soft_cross_entropy,
};
use candle_core::{Tensor, D};

/// The `ε` of the per-position normalization `ξ̂ = ξ / (Σ_i ξ + ε)` and of `relu-l1`.
pub const DENSE_EPS: f64 = 1e-8;

/// Query `u_i` of the attention `a_i = h(Z_i u_i)` (option `attn-query`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttnQuery {
    /// The mean of the example's own positions (global average pooling); the default.
    #[default]
    Gap,
    /// The classifier row `W_{y_i}` of the example's label (class activation map).
    Cam,
    /// The ViT class token.
    Cls,
    /// No attention: `a_i = 1` at every position.
    Uniform,
}

/// Normalization `h` of the attention over positions (option `attn-norm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttnNorm {
    /// Softmax over the `r` positions; the default.
    #[default]
    Softmax,
    /// ReLU, then divide by the sum over positions plus ε.
    ReluL1,
}

parse_kebab!(AttnQuery, "attention query", "gap" => AttnQuery::Gap, "cam" => AttnQuery::Cam, "cls" => AttnQuery::Cls, "uniform" => AttnQuery::Uniform);
parse_kebab!(AttnNorm, "attention normalization", "softmax" => AttnNorm::Softmax, "relu-l1" => AttnNorm::ReluL1);

/// The `gap` query: the mean over positions of `Z` `[b, r, d]`, giving `[b, d]`.
///
/// Untracked f32 CPU embeddings (the detached attention's) are averaged on the host; otherwise
/// this is the batched product `(1/r)·1ᵀ Z_i` (gemm), which has a backward, not candle's
/// reduction over a middle dimension, which is strided and an order of magnitude slower on the
/// CPU.
pub fn gap_query(z: &Tensor) -> Result<Tensor> {
    let (b, r, _) = z.dims3()?;
    if untracked_host(&[z]) {
        return Ok(gap_query_host(z)?);
    }
    let weights = Tensor::full(1.0 / r as f64, (1, 1, r), z.device())?
        .to_dtype(z.dtype())?
        .broadcast_as((b, 1, r))?;
    Ok(weights.matmul(z)?.squeeze(1)?)
}

/// The `cam` query: the classifier rows `W_{y_i}` of the labels, `[b, d]` from `W` `[c, d]`.
pub fn cam_query(head_weight: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(head_weight.index_select(labels, 0)?)
}

/// Attention `A` `[b, r]`, `a_i = h(Z_i u_i)` for dense embeddings `Z` `[b, r, d]` and queries
/// `U` `[b, d]`; `None` gives uniform attention (all ones).
///
/// With neither `Z` nor `U` tracked (the detached default) and both f32 on the CPU, one host
/// pass per example; otherwise candle ops, through which the gradient flows.
pub fn attention(z: &Tensor, query: Option<&Tensor>, norm: AttnNorm) -> Result<Tensor> {
    let (b, r, d) = z.dims3()?;
    let Some(u) = query else {
        return Ok(Tensor::ones((b, r), z.dtype(), z.device())?);
    };
    if u.dims() != [b, d] {
        return Err(AugmentError::Shape(format!(
            "attention query {:?} does not fit embeddings {:?}",
            u.dims(),
            z.dims()
        )));
    }
    if untracked_host(&[z, u]) {
        let softmax = norm == AttnNorm::Softmax;
        return Ok(attention_host(z, u, softmax, DENSE_EPS)?);
    }
    // Scores s_ij = Z_ij · u_i.
    let scores = z.matmul(&u.unsqueeze(2)?)?.squeeze(2)?;
    Ok(match norm {
        AttnNorm::Softmax => {
            let max = scores.max_keepdim(D::Minus1)?.detach();
            let e = scores.broadcast_sub(&max)?.exp()?;
            e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?
        }
        AttnNorm::ReluL1 => {
            let p = scores.relu()?;
            p.broadcast_div(&(p.sum_keepdim(D::Minus1)? + DENSE_EPS)?)?
        }
    })
}

/// Attention with the `gap` query (the default), `attention(z, Some(&gap_query(z)?), norm)`.
///
/// With `Z` untracked (the detached default) and f32 on the CPU, one host pass per example that
/// reads its positions from memory once; otherwise candle ops, through which the gradient flows.
pub fn gap_attention(z: &Tensor, norm: AttnNorm) -> Result<Tensor> {
    z.dims3()?;
    if untracked_host(&[z]) {
        let softmax = norm == AttnNorm::Softmax;
        return Ok(gap_attention_host(z, softmax, DENSE_EPS)?);
    }
    attention(z, Some(&gap_query(z)?), norm)
}

/// True when the host kernels apply: every tensor is a non-empty f32 CPU tensor that needs no
/// gradient.
fn untracked_host(tensors: &[&Tensor]) -> bool {
    fused(tensors) && tensors.iter().all(|t| !t.track_op() && t.elem_count() > 0)
}

/// Dense interpolation weights `ξ̂` `[r, n, b]` from `Λ` `[n, b]` and `A` `[b, r]`:
/// `ξ_kij = λ_ki a_ij`, `ξ̂_kij = ξ_kij / (Σ_i' ξ_ki'j + ε)`.
pub fn dense_weights(lambda: &Tensor, attn: &Tensor) -> Result<Tensor> {
    let (_, b) = lambda.dims2()?;
    let (ba, _) = attn.dims2()?;
    if b != ba {
        return Err(AugmentError::Shape(format!(
            "interpolation matrix {:?} does not fit attention {:?}",
            lambda.dims(),
            attn.dims()
        )));
    }
    let xi = lambda.unsqueeze(2)?.broadcast_mul(&attn.unsqueeze(0)?)?; // [n, b, r]
    let norm = (xi.sum_keepdim(1)? + DENSE_EPS)?;
    Ok(xi.broadcast_div(&norm)?.permute((2, 0, 1))?.contiguous()?)
}

/// Mix per-position values `V` `[b, r, k]` (embeddings or logits): `Ṽ_kj = Σ_i ξ̂_kij V_ij`,
/// giving `[r, n, k]`.
pub fn mix_dense(xi: &Tensor, values: &Tensor) -> Result<Tensor> {
    let (r, _, b) = xi.dims3()?;
    let (bv, rv, _) = values.dims3()?;
    if (b, r) != (bv, rv) {
        return Err(AugmentError::Shape(format!(
            "dense weights {:?} do not fit values {:?}",
            xi.dims(),
            values.dims()
        )));
    }
    Ok(xi.matmul(&values.transpose(0, 1)?.contiguous()?)?)
}

/// Mix targets `Y` `[b, c]` shared by all positions of an example: `Ỹ_kj = Σ_i ξ̂_kij Y_i`,
/// giving `[r, n, c]`.
pub fn mix_dense_targets(xi: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (r, n, b) = xi.dims3()?;
    let (bt, c) = targets.dims2()?;
    if b != bt {
        return Err(AugmentError::Shape(format!(
            "dense weights {:?} do not fit targets {:?}",
            xi.dims(),
            targets.dims()
        )));
    }
    Ok(xi
        .reshape((r * n, b))?
        .matmul(targets)?
        .reshape((r, n, c))?)
}

/// Dense MultiMix of per-position values `V` `[b, r, k]` without forming `ξ̂`: since
/// `ξ̂_kij = λ_ki a_ij / (Σ_i' λ_ki' a_i'j + ε)`, the mix is `(Λ (A ⊙ V))_kj / ((Λ A)_kj + ε)`,
/// two matrix products over the batch (`[n, b] × [b, r·k]` and `[n, b] × [b, r]`). Gives
/// `[n, r, k]`, equal to [`mix_dense`] of [`dense_weights`] up to the layout.
pub fn mix_dense_factored(lambda: &Tensor, attn: &Tensor, values: &Tensor) -> Result<Tensor> {
    let (n, b) = lambda.dims2()?;
    let (ba, r) = attn.dims2()?;
    let (bv, rv, k) = values.dims3()?;
    if b != ba || (b, r) != (bv, rv) {
        return Err(AugmentError::Shape(format!(
            "interpolation matrix {:?}, attention {:?} and values {:?} do not fit",
            lambda.dims(),
            attn.dims(),
            values.dims()
        )));
    }
    let weighted = values
        .broadcast_mul(&attn.unsqueeze(2)?)?
        .reshape((b, r * k))?;
    let num = lambda.matmul(&weighted)?.reshape((n, r, k))?;
    let den = (lambda.matmul(attn)? + DENSE_EPS)?.unsqueeze(2)?;
    Ok(num.broadcast_div(&den)?)
}

/// Dense targets without forming `ξ̂`: `Ỹ_kj = (Λ (A ⊗ Y))_kj / ((Λ A)_kj + ε)` for targets
/// `Y` `[b, c]` shared by all positions of an example, giving `[n, r, c]`.
pub fn mix_dense_targets_factored(
    lambda: &Tensor,
    attn: &Tensor,
    targets: &Tensor,
) -> Result<Tensor> {
    let (b, c) = targets.dims2()?;
    let (_, r) = attn.dims2()?;
    let per_position = targets.unsqueeze(1)?.broadcast_as((b, r, c))?;
    mix_dense_factored(lambda, attn, &per_position)
}

/// Dense MultiMix's loss for an affine head (METHOD.md §3): per-position logits `L` `[b, r, c]`
/// mixed as in [`mix_dense_factored`], targets `Y` (`[b, c]` shared by an example's positions,
/// or `[b, r, c]` per position) mixed with the same weights, soft cross-entropy averaged over
/// the `n · r` mixed positions.
///
/// Equals `soft_cross_entropy` of [`mix_dense_factored`] and [`mix_dense_targets_factored`]. For
/// f32 on the CPU it is one autograd node with a hand-written backward: to the logits, and to
/// the attention `A` `[b, r]` when `A` is tracked (`--attn-detach false`); the mixed targets are
/// constants, as in [`soft_cross_entropy`].
pub fn dense_multimix_loss(
    lambda: &Tensor,
    attn: &Tensor,
    logits: &Tensor,
    targets: &Tensor,
) -> Result<Tensor> {
    let (_, b) = lambda.dims2()?;
    let (bl, r, c) = logits.dims3()?;
    let targets_fit = targets.dims() == [bl, c] || targets.dims() == [bl, r, c];
    if b != bl || attn.dims() != [bl, r] || !targets_fit {
        return Err(AugmentError::Shape(format!(
            "interpolation matrix {:?}, attention {:?}, logits {:?} and targets {:?} do not fit",
            lambda.dims(),
            attn.dims(),
            logits.dims(),
            targets.dims()
        )));
    }
    // The custom op needs non-empty operands; empty ones take the composition.
    if fused(&[lambda, attn, logits, targets]) && lambda.elem_count() > 0 && logits.elem_count() > 0
    {
        return Ok(dense_multimix_fused(
            lambda, attn, logits, targets, DENSE_EPS,
        )?);
    }
    let mixed = mix_dense_factored(lambda, attn, logits)?;
    let mixed_targets = match targets.rank() {
        2 => mix_dense_targets_factored(lambda, attn, targets)?,
        _ => mix_dense_factored(lambda, attn, targets)?,
    };
    Ok(soft_cross_entropy(&mixed, &mixed_targets)?)
}
