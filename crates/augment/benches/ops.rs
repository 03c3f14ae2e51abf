//! What each mixing op of `multimix-augment` costs alone, for a batch of 128: sampling `Λ`,
//! MultiMix (fused logits loss, and the composite mixing of logits or embeddings) and dense
//! MultiMix (fused and composite), each with its backward. Medians after warm-up. The share of a
//! training step is measured by the workspace bench (`cargo bench --bench mixing`), which knows
//! the models.
//!
//! ```sh
//! cargo bench -p multimix-augment            # or: cargo bench -p multimix-augment -- --quick
//! ```

mod cases;

use cases::{dense_case, multimix_case, Pooled, B};
use multimix_augment::sample::dirichlet_rows;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

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

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let ns: &[usize] = if quick { &[1000] } else { &[128, 1000, 10000] };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let threads = rayon::current_num_threads();
    let multimix_op = |n, c, how, rng: &mut ChaCha8Rng| median_ms(multimix_case(n, c, how, rng));
    let dense_op =
        |n, r, d, c, fused, rng: &mut ChaCha8Rng| median_ms(dense_case(n, r, d, c, fused, rng));
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
