//! What mixing costs: each op of `multimix-augment` for a batch of 128 across tuple counts,
//! widths, class counts and positions, and full training steps (forward, backward, AdamW) of the
//! default ViT with ERM, mixup, manifold mixup, MultiMix and dense MultiMix, all in one run so
//! the ratios compare like with like. Medians of several repetitions after warm-up.
//!
//! ```sh
//! cargo bench --bench mixing            # or: cargo bench --bench mixing -- --quick
//! ```

use candle_core::{Device, Tensor, Var};
use multimix_augment::dense::{
    attention, gap_query, mix_dense_factored, mix_dense_targets_factored,
};
use multimix_augment::loss::soft_cross_entropy;
use multimix_augment::multimix::mix_rows;
use multimix_augment::targets::smooth_one_hot;
use multimix_augment::{AttnNorm, MultiMix};
use multimix_recipes::bench::{StepSpec, TrainStep};
use multimix_recipes::config::{MixMethod, OptimizerKind, DEFAULT_ARCHITECTURE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

const B: usize = 128;

/// Median seconds of `reps` runs of `f` after `warmup` runs.
fn median(warmup: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn uniform(rng: &mut ChaCha8Rng, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).expect("host tensor")
}

/// One full training step of the default ViT on a batch of 128 under `method`, as
/// `multimix bench` runs it (the training loss, backward, AdamW).
fn train_step_seconds(method: MixMethod, reps: usize) -> f64 {
    let spec = StepSpec {
        architecture: DEFAULT_ARCHITECTURE.into(),
        method,
        mix_n: 1000,
        batch_size: B,
        optimizer: OptimizerKind::Adamw,
        seed: 0,
    };
    let mut step = TrainStep::new(&spec, &Device::Cpu).expect("training step");
    median(2, reps, || {
        step.run().expect("step");
    })
}

/// MultiMix on `[b, k]` logits or embeddings: sample Λ, mix values and targets, loss, backward.
fn multimix_op(n: usize, k: usize, c: usize, head: Option<&Tensor>, rng: &mut ChaCha8Rng) -> f64 {
    let values = Var::from_tensor(&uniform(rng, &[B, k])).expect("var");
    let labels: Vec<u32> = (0..B).map(|i| (i % c) as u32).collect();
    let y = smooth_one_hot(&labels, c, 0.0, &Device::Cpu).expect("targets");
    let cfg = MultiMix {
        n,
        alpha: 1.0,
        m: None,
    };
    let mut op_rng = ChaCha8Rng::seed_from_u64(1);
    median(2, 9, || {
        let lambda = cfg.sample(B, &mut op_rng, &Device::Cpu).expect("Λ");
        let mixed = mix_rows(&lambda, values.as_tensor()).expect("mix");
        let logits = match head {
            Some(w) => mixed.matmul(&w.t().expect("t")).expect("head"),
            None => mixed,
        };
        let loss =
            soft_cross_entropy(&logits, &mix_rows(&lambda, &y).expect("targets")).expect("loss");
        loss.backward().expect("backward");
    })
}

/// Dense MultiMix on `[b, r, d]` embeddings with per-position `[b, r, c]` logits: attention,
/// weights, mixed logits and targets, loss, backward.
fn dense_op(n: usize, r: usize, d: usize, c: usize, rng: &mut ChaCha8Rng) -> f64 {
    let z = uniform(rng, &[B, r, d]);
    let logits = Var::from_tensor(&uniform(rng, &[B, r, c])).expect("var");
    let labels: Vec<u32> = (0..B).map(|i| (i % c) as u32).collect();
    let y = smooth_one_hot(&labels, c, 0.0, &Device::Cpu).expect("targets");
    let cfg = MultiMix {
        n,
        alpha: 1.0,
        m: None,
    };
    let mut op_rng = ChaCha8Rng::seed_from_u64(2);
    median(2, 9, || {
        let attn = attention(&z, Some(&gap_query(&z).expect("q")), AttnNorm::Softmax).expect("a");
        let lambda = cfg.sample(B, &mut op_rng, &Device::Cpu).expect("Λ");
        let mixed = mix_dense_factored(&lambda, &attn, logits.as_tensor()).expect("mix");
        let targets = mix_dense_targets_factored(&lambda, &attn, &y).expect("targets");
        let loss = soft_cross_entropy(&mixed, &targets).expect("loss");
        loss.backward().expect("backward");
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 3 } else { 7 };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    println!("training step of {DEFAULT_ARCHITECTURE}, batch {B} (forward, backward, AdamW):");
    let erm = train_step_seconds(MixMethod::None, reps);
    println!("| method | ms | × ERM |\n|---|---|---|");
    println!("| none | {:.1} | 1.00 |", erm * 1e3);
    for (name, m) in MixMethod::ALL.iter().skip(1) {
        let t = train_step_seconds(*m, reps);
        println!("| {name} | {:.1} | {:.3} |", t * 1e3, t / erm);
    }
    println!("\nMultiMix ops, b = {B} (sample Λ, mix values and targets, loss, backward):");
    println!("| op | n | d | c | ms | % of ERM step |\n|---|---|---|---|---|---|");
    let ns: &[usize] = if quick { &[1000] } else { &[128, 1000, 10000] };
    for &n in ns {
        for c in [10, 100] {
            let t = multimix_op(n, c, c, None, &mut rng);
            println!(
                "| logits | {n} | - | {c} | {:.3} | {:.2} |",
                t * 1e3,
                100.0 * t / erm
            );
            for d in [192, 512] {
                let w = uniform(&mut rng, &[c, d]);
                let t = multimix_op(n, d, c, Some(&w), &mut rng);
                println!(
                    "| embeddings | {n} | {d} | {c} | {:.3} | {:.2} |",
                    t * 1e3,
                    100.0 * t / erm
                );
            }
        }
    }
    println!("\ndense MultiMix ops, b = {B} (attention, weights, mixed logits and targets, loss, backward):");
    println!("| n | r | d | c | ms | % of ERM step |\n|---|---|---|---|---|---|");
    for &n in ns {
        for r in [16, 64] {
            for (d, c) in [(192, 10), (512, 100)] {
                let t = dense_op(n, r, d, c, &mut rng);
                println!(
                    "| {n} | {r} | {d} | {c} | {:.3} | {:.2} |",
                    t * 1e3,
                    100.0 * t / erm
                );
            }
        }
    }
}
