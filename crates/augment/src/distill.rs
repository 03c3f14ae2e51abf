//! Online self-distillation targets (METHOD.md §4): the teacher's soft predictions at
//! temperature `T`, interpolated with the same weights as the hard targets.

use crate::error::{out_of_range, Result};
use crate::loss::log_softmax_last_dim;
use candle_core::Tensor;

/// `P' = softmax(L' / T)` over the last dimension of teacher logits `L'` (any rank), detached.
pub fn teacher_probs(logits: &Tensor, temperature: f64) -> Result<Tensor> {
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(out_of_range("distill-temperature", temperature, "> 0"));
    }
    Ok(log_softmax_last_dim(&(logits.detach() / temperature)?)?.exp()?)
}
