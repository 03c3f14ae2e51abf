//! Adapting a checkpoint's first convolution to another input-channel count, as timm's
//! `load_pretrained` does with `adapt_input_conv` (e.g. RGB weights for grayscale images).

use candle_core::{Result, Tensor};

/// timm `adapt_input_conv(in_chans, weight)` for a Conv2d kernel `[O, 3, k, k]` made for 3
/// channels: one channel sums the RGB kernels; `c` channels repeat them cyclically and scale by
/// `3 / c`; 3 channels keep the kernel.
pub fn adapt_input_conv(in_chans: usize, weight: &Tensor) -> Result<Tensor> {
    const BASE: usize = 3;
    let (_, i, _, _) = weight.dims4()?;
    if i != BASE || in_chans == 0 {
        candle_core::bail!(
            "adapt_input_conv: a kernel with {i} input channels cannot be adapted to {in_chans} (needs {BASE})"
        );
    }
    match in_chans {
        BASE => Ok(weight.clone()),
        1 => weight.sum_keepdim(1),
        c => {
            let repeat = c.div_ceil(BASE);
            weight.repeat((1, repeat, 1, 1))?.narrow(1, 0, c)? * (BASE as f64 / c as f64)
        }
    }
}
