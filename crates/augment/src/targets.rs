//! Targets: one-hot with label smoothing (timm `one_hot` / `mixup_target`).

use crate::error::{out_of_range, Result};
use candle_core::{Device, Tensor};

/// One-hot targets `[b, c]` with label smoothing as timm folds it in: `off = smoothing / c`,
/// `on = 1 - smoothing + off`.
pub fn smooth_one_hot(
    labels: &[u32],
    num_classes: usize,
    smoothing: f64,
    device: &Device,
) -> Result<Tensor> {
    if !(0.0..1.0).contains(&smoothing) {
        return Err(out_of_range("label-smoothing", smoothing, "in [0, 1)"));
    }
    let off = smoothing / num_classes as f64;
    let on = 1.0 - smoothing + off;
    let mut data = vec![off as f32; labels.len() * num_classes];
    for (row, &y) in labels.iter().enumerate() {
        let y = y as usize;
        if y >= num_classes {
            return Err(out_of_range("label", y, format!("< {num_classes} classes")));
        }
        data[row * num_classes + y] = on as f32;
    }
    Ok(Tensor::from_vec(data, (labels.len(), num_classes), device)?)
}
