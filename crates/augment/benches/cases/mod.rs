//! The mixing ops the benches time, shared by `cargo bench -p multimix-augment` (the ops alone)
//! and the workspace's `cargo bench --bench mixing` (the ops as a share of a training step).
//! Each case builds its inputs once and returns the closure to time: sample Λ, mix, loss,
//! backward.

use candle_core::{Device, Tensor, Var};
use multimix_augment::dense::{
    dense_multimix_loss, gap_attention, mix_dense_factored, mix_dense_targets_factored,
};
use multimix_augment::loss::soft_cross_entropy;
use multimix_augment::multimix::{mix_rows, multimix_loss};
use multimix_augment::targets::smooth_one_hot;
use multimix_augment::{AttnNorm, MultiMix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The batch size of every case.
pub const B: usize = 128;

/// A host tensor of `dims` with entries uniform in [-1, 1).
pub fn uniform(rng: &mut ChaCha8Rng, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).expect("host tensor")
}

/// One-hot targets `[B, c]` of the labels `i mod c`.
fn targets(c: usize) -> Tensor {
    let labels: Vec<u32> = (0..B).map(|i| (i % c) as u32).collect();
    smooth_one_hot(&labels, c, 0.0, &Device::Cpu).expect("targets")
}

/// How MultiMix's loss is computed.
#[derive(Clone, Copy)]
pub enum Pooled {
    /// The fused op on the logits (what training runs for the affine head).
    Fused,
    /// Mixing the logits, then `soft_cross_entropy` (the composite reference).
    Logits,
    /// Mixing `[b, d]` embeddings and applying a `[c, d]` head (the non-affine fallback).
    Embeddings(usize),
}

/// MultiMix for a batch of `B` with `n` tuples and `c` classes: sample Λ, mix values and
/// targets, loss, backward.
pub fn multimix_case(n: usize, c: usize, how: Pooled, rng: &mut ChaCha8Rng) -> impl FnMut() {
    let k = match how {
        Pooled::Embeddings(d) => d,
        _ => c,
    };
    let values = Var::from_tensor(&uniform(rng, &[B, k])).expect("var");
    let head = uniform(rng, &[c, k]).t().expect("t");
    let y = targets(c);
    let cfg = MultiMix {
        n,
        alpha: 1.0,
        m: None,
    };
    let mut op_rng = ChaCha8Rng::seed_from_u64(1);
    move || {
        let lambda = cfg.sample(B, &mut op_rng, &Device::Cpu).expect("Λ");
        let loss = match how {
            Pooled::Fused => multimix_loss(&lambda, &values, &y).expect("loss"),
            Pooled::Logits | Pooled::Embeddings(_) => {
                let mixed = mix_rows(&lambda, &values).expect("mix");
                let logits = match how {
                    Pooled::Embeddings(_) => mixed.matmul(&head).expect("head"),
                    _ => mixed,
                };
                let mixed_y = mix_rows(&lambda, &y).expect("targets");
                soft_cross_entropy(&logits, &mixed_y).expect("loss")
            }
        };
        loss.backward().expect("backward");
    }
}

/// Dense MultiMix on `[b, r, d]` embeddings with per-position `[b, r, c]` logits: attention (gap
/// query, softmax, detached), Λ, mixed logits and targets, loss, backward; fused (as training
/// runs) or composite.
pub fn dense_case(
    n: usize,
    r: usize,
    d: usize,
    c: usize,
    fused: bool,
    rng: &mut ChaCha8Rng,
) -> impl FnMut() {
    let z = uniform(rng, &[B, r, d]);
    let logits = Var::from_tensor(&uniform(rng, &[B, r, c])).expect("var");
    let y = targets(c);
    let cfg = MultiMix {
        n,
        alpha: 1.0,
        m: None,
    };
    let mut op_rng = ChaCha8Rng::seed_from_u64(2);
    move || {
        let attn = gap_attention(&z, AttnNorm::Softmax).expect("attention");
        let lambda = cfg.sample(B, &mut op_rng, &Device::Cpu).expect("Λ");
        let loss = if fused {
            dense_multimix_loss(&lambda, &attn, &logits, &y).expect("loss")
        } else {
            let mixed = mix_dense_factored(&lambda, &attn, &logits).expect("mix");
            let mixed_y = mix_dense_targets_factored(&lambda, &attn, &y).expect("targets");
            soft_cross_entropy(&mixed, &mixed_y).expect("loss")
        };
        loss.backward().expect("backward");
    }
}
