//! What each mixing op of `multimix-augment` costs alone, for a batch of 128: sampling `Λ`,
//! MultiMix (fused logits loss, and the composite mixing of logits or embeddings) and dense
//! MultiMix (fused and composite), each with its backward. Medians after warm-up. The share of a
//! training step is measured by the workspace bench (`cargo bench --bench mixing`), which knows
//! the models.
//!
//! ```sh
//! cargo bench -p multimix-augment            # or: cargo bench -p multimix-augment -- --quick
//! ```

use candle_core::{Device, Tensor, Var};
use multimix_augment::dense::{
    attention, dense_multimix_loss, gap_query, mix_dense_factored, mix_dense_targets_factored,
};
use multimix_augment::loss::soft_cross_entropy;
use multimix_augment::multimix::{mix_rows, multimix_loss};
use multimix_augment::sample::dirichlet_rows;
use multimix_augment::targets::smooth_one_hot;
use multimix_augment::{AttnNorm, MultiMix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

const B: usize = 128;

/// Median milliseconds of `f` after one warm-up: 9 runs, or 3 when one run takes over 100 ms.
fn median_ms(mut f: impl FnMut()) -> f64 {
    let time = |f: &mut dyn FnMut()| {
        let t0 = Instant::now();
        f();
        t0.elapsed().as_secs_f64() * 1e3
    };
    let first = time(&mut f);
    let reps = if first > 100.0 { 3 } else { 9 };
    let mut t: Vec<f64> = (0..reps).map(|_| time(&mut f)).collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn uniform(rng: &mut ChaCha8Rng, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).expect("host tensor")
}

fn targets(c: usize) -> Tensor {
    let labels: Vec<u32> = (0..B).map(|i| (i % c) as u32).collect();
    smooth_one_hot(&labels, c, 0.0, &Device::Cpu).expect("targets")
}

/// How MultiMix's loss is computed.
#[derive(Clone, Copy)]
enum Pooled {
    /// [`multimix_loss`] on the logits.
    Fused,
    /// Mixing the logits, then `soft_cross_entropy`.
    Logits,
    /// Mixing `[b, d]` embeddings, then a `[c, d]` head.
    Embeddings(usize),
}

/// MultiMix: sample Λ, mix, loss, backward.
fn multimix_op(n: usize, c: usize, how: Pooled, rng: &mut ChaCha8Rng) -> f64 {
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
    median_ms(|| {
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
    })
}

/// Dense MultiMix on `[b, r, d]` embeddings with per-position `[b, r, c]` logits: attention (gap
/// query, softmax, detached), sample Λ, mixed logits and targets, loss, backward.
fn dense_op(n: usize, r: usize, d: usize, c: usize, fused: bool, rng: &mut ChaCha8Rng) -> f64 {
    let z = uniform(rng, &[B, r, d]);
    let logits = Var::from_tensor(&uniform(rng, &[B, r, c])).expect("var");
    let y = targets(c);
    let cfg = MultiMix {
        n,
        alpha: 1.0,
        m: None,
    };
    let mut op_rng = ChaCha8Rng::seed_from_u64(2);
    median_ms(|| {
        let attn = attention(&z, Some(&gap_query(&z).expect("q")), AttnNorm::Softmax).expect("a");
        let lambda = cfg.sample(B, &mut op_rng, &Device::Cpu).expect("Λ");
        let loss = if fused {
            dense_multimix_loss(&lambda, &attn, &logits, &y).expect("loss")
        } else {
            let mixed = mix_dense_factored(&lambda, &attn, &logits).expect("mix");
            let mixed_y = mix_dense_targets_factored(&lambda, &attn, &y).expect("targets");
            soft_cross_entropy(&mixed, &mixed_y).expect("loss")
        };
        loss.backward().expect("backward");
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let ns: &[usize] = if quick { &[1000] } else { &[128, 1000, 10000] };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let threads = rayon::current_num_threads();
    println!("multimix-augment ops, batch {B}, {threads} threads; medians in ms\n");

    println!("Λ [n, b] (Dirichlet rows through Gamma, α = 1, m = b):");
    println!("| n | 1 thread | {threads} threads |\n|---|---|---|");
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    for &n in ns {
        let mut sample = || {
            dirichlet_rows(n, B, B, 1.0, &mut rng).expect("Λ");
        };
        let single = one.install(|| median_ms(&mut sample));
        println!("| {n} | {single:.3} | {:.3} |", median_ms(&mut sample));
    }

    println!("\nMultiMix (sample Λ, mix, loss, backward):");
    println!("| op | n | d | c | ms |\n|---|---|---|---|---|");
    for &n in ns {
        for c in [10, 100] {
            for (name, how) in [("fused", Pooled::Fused), ("logits", Pooled::Logits)] {
                let t = multimix_op(n, c, how, &mut rng);
                println!("| {name} | {n} | - | {c} | {t:.3} |");
            }
            for d in [192, 512] {
                let t = multimix_op(n, c, Pooled::Embeddings(d), &mut rng);
                println!("| embeddings | {n} | {d} | {c} | {t:.3} |");
            }
        }
    }

    println!("\ndense MultiMix (attention, sample Λ, mixed logits and targets, loss, backward):");
    println!("| n | r | d | c | fused ms | composite ms |\n|---|---|---|---|---|---|");
    for &n in ns {
        for r in [16, 64] {
            for d in [192, 512] {
                for c in [10, 100] {
                    let fused = dense_op(n, r, d, c, true, &mut rng);
                    let composite = dense_op(n, r, d, c, false, &mut rng);
                    println!("| {n} | {r} | {d} | {c} | {fused:.3} | {composite:.3} |");
                }
            }
        }
    }
}
