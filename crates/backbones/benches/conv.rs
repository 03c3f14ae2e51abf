//! Times `ops::conv2d` on every convolution shape of a CIFAR-stem ResNet-18 (batch 250, as the
//! evaluation's FGSM batches): the forward, and the backward to the input alone (the attack's
//! backward; the kernel is a constant), best of 3, with the achieved GFLOP/s.
//!
//! `cargo bench -p multimix-backbones --bench conv` (`CONV_BATCH=N` for another batch size).
//! Threads follow `RAYON_NUM_THREADS`; the `multimix` binary also sets `CANDLE_NUM_THREADS=1`.

use candle_core::{DType, Device, Result, Tensor, Var};
use multimix_backbones::ops::conv2d;
use std::time::Instant;

/// `(in channels, out channels, input size, kernel, stride, padding, layers of this shape)`.
const RESNET18_CIFAR: [(usize, usize, usize, usize, usize, usize, usize); 11] = [
    (3, 64, 32, 3, 1, 1, 1),
    (64, 64, 32, 3, 1, 1, 4),
    (64, 128, 32, 3, 2, 1, 1),
    (64, 128, 32, 1, 2, 0, 1),
    (128, 128, 16, 3, 1, 1, 3),
    (128, 256, 16, 3, 2, 1, 1),
    (128, 256, 16, 1, 2, 0, 1),
    (256, 256, 8, 3, 1, 1, 3),
    (256, 512, 8, 3, 2, 1, 1),
    (256, 512, 8, 1, 2, 0, 1),
    (512, 512, 4, 3, 1, 1, 3),
];

/// Seconds of the backward of `Σ y·dy` for `y` of `dy`'s shape: the product's own share of a
/// timed backward, subtracted from it.
fn product_backward(dy: &Tensor) -> Result<f64> {
    let y = Var::from_tensor(&Tensor::zeros(dy.shape(), DType::F32, dy.device())?)?;
    let loss = (y.as_tensor() * dy)?.sum_all()?;
    let t0 = Instant::now();
    loss.backward()?;
    Ok(t0.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let b: usize = match std::env::var("CONV_BATCH") {
        Ok(v) => match v.parse() {
            Ok(b) if b > 0 => b,
            _ => candle_core::bail!("CONV_BATCH={v}: expected a batch size ≥ 1"),
        },
        Err(_) => 250,
    };
    let dev = Device::Cpu;
    println!(
        "| C | O | size | k | s | layers | forward ms | GFLOP/s | input gradient ms | GFLOP/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let (mut forward, mut backward, mut flops) = (0.0, 0.0, 0.0);
    for (c, o, h, k, s, p, count) in RESNET18_CIFAR {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, c, h, h), &dev)?)?;
        let w = Tensor::randn(0f32, 0.1, (o, c, k, k), &dev)?;
        let oh = (h + 2 * p - k) / s + 1;
        let dy = Tensor::randn(0f32, 1., (b, o, oh, oh), &dev)?;
        let (mut tf, mut tb) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let t0 = Instant::now();
            let y = conv2d(x.as_tensor(), &w, s, p)?;
            tf = tf.min(t0.elapsed().as_secs_f64());
            let loss = (y * &dy)?.sum_all()?;
            let t0 = Instant::now();
            let grads = loss.backward()?;
            let t = t0.elapsed().as_secs_f64() - product_backward(&dy)?;
            if grads.get(x.as_tensor()).is_none() {
                candle_core::bail!("conv bench: no input gradient");
            }
            tb = tb.min(t);
        }
        let f = 2.0 * (b * o * oh * oh * c * k * k) as f64;
        println!(
            "| {c} | {o} | {h}×{h} | {k} | {s} | {count} | {:.2} | {:.1} | {:.2} | {:.1} |",
            tf * 1e3,
            f / tf / 1e9,
            tb * 1e3,
            f / tb / 1e9
        );
        forward += tf * count as f64;
        backward += tb * count as f64;
        flops += f * count as f64;
    }
    println!(
        "\nbatch {b}: all layers forward {:.1} ms ({:.1} GFLOP/s), input gradient {:.1} ms ({:.1} GFLOP/s)",
        forward * 1e3,
        flops / forward / 1e9,
        backward * 1e3,
        flops / backward / 1e9
    );
    Ok(())
}
