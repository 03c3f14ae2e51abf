//! What mixing costs: each op of `multimix-augment` for a batch of 128 across tuple counts,
//! widths, class counts and positions, and full training steps (forward, backward, AdamW) of the
//! default ViT with ERM, mixup, manifold mixup, MultiMix and dense MultiMix, all in one run so
//! the ratios compare like with like. Medians of several repetitions after warm-up, of wall time
//! and of the process's CPU time (user + system, all threads: steadier than wall time on a
//! shared machine). The ERM step is timed first and last; shares are of the mean of the two.
//!
//! ```sh
//! cargo bench --bench mixing            # or: cargo bench --bench mixing -- --quick
//! ```

#[path = "../crates/augment/benches/cases/mod.rs"]
mod cases;

use candle_core::Device;
use cases::{dense_case, multimix_case, Pooled, B};
use multimix_recipes::bench::{StepSpec, TrainStep};
use multimix_recipes::config::{MixMethod, OptimizerKind, DEFAULT_ARCHITECTURE};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// Median wall and CPU seconds of a repeated run.
#[derive(Clone, Copy)]
struct Timing {
    wall: f64,
    cpu: f64,
}

impl Timing {
    /// `self` as a percentage of `of`, wall and CPU.
    fn percent(self, of: Timing) -> (f64, f64) {
        (100.0 * self.wall / of.wall, 100.0 * self.cpu / of.cpu)
    }
}

/// CPU seconds (user + system) of this process so far, all threads.
fn cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Medians of wall and CPU seconds of `reps` runs of `f` after `warmup` runs.
fn median(warmup: usize, reps: usize, mut f: impl FnMut()) -> Timing {
    for _ in 0..warmup {
        f();
    }
    let (mut wall, mut cpu): (Vec<f64>, Vec<f64>) = (0..reps)
        .map(|_| {
            let (t0, c0) = (Instant::now(), cpu_seconds());
            f();
            (t0.elapsed().as_secs_f64(), cpu_seconds() - c0)
        })
        .unzip();
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    Timing {
        wall: wall[reps / 2],
        cpu: cpu[reps / 2],
    }
}

/// One full training step of the default ViT on a batch of 128 under `method`, as
/// `multimix bench` runs it (the training loss, backward, AdamW).
fn train_step(method: MixMethod, reps: usize) -> Timing {
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

/// MultiMix op timings (see [`multimix_case`]).
fn multimix_op(n: usize, c: usize, how: Pooled, rng: &mut ChaCha8Rng) -> Timing {
    median(2, 9, multimix_case(n, c, how, rng))
}

/// Dense MultiMix op timings (see [`dense_case`]).
fn dense_op(n: usize, r: usize, d: usize, c: usize, fused: bool, rng: &mut ChaCha8Rng) -> Timing {
    median(2, 9, dense_case(n, r, d, c, fused, rng))
}

fn main() {
    // The program's allocator and thread settings, so the step and the ops are timed as
    // `multimix train` runs them.
    multimix::runtime::configure();
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 3 } else { 7 };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    println!("training step of {DEFAULT_ARCHITECTURE}, batch {B} (forward, backward, AdamW):");
    let first = train_step(MixMethod::None, reps);
    println!("| method | ms | × ERM | CPU ms | × ERM (CPU) |\n|---|---|---|---|---|");
    println!(
        "| none | {:.1} | 1.00 | {:.1} | 1.00 |",
        first.wall * 1e3,
        first.cpu * 1e3
    );
    for (name, m) in MixMethod::ALL.iter().skip(1) {
        let t = train_step(*m, reps);
        println!(
            "| {name} | {:.1} | {:.3} | {:.1} | {:.3} |",
            t.wall * 1e3,
            t.wall / first.wall,
            t.cpu * 1e3,
            t.cpu / first.cpu
        );
    }
    let ns: &[usize] = if quick { &[1000] } else { &[128, 1000, 10000] };
    let mut pooled = Vec::new();
    for &n in ns {
        for c in [10, 100] {
            let mut ops = vec![
                ("fused", "-".to_string(), Pooled::Fused),
                ("logits", "-".to_string(), Pooled::Logits),
            ];
            for d in [192, 512] {
                ops.push(("embeddings", d.to_string(), Pooled::Embeddings(d)));
            }
            for (name, d, how) in ops {
                pooled.push((name, n, d, c, multimix_op(n, c, how, &mut rng)));
            }
        }
    }
    let mut dense = Vec::new();
    for &n in ns {
        for r in [16, 64] {
            for (d, c) in [(192, 10), (512, 100)] {
                let fused = dense_op(n, r, d, c, true, &mut rng);
                let composite = dense_op(n, r, d, c, false, &mut rng);
                dense.push((n, r, d, c, fused, composite));
            }
        }
    }
    let last = train_step(MixMethod::None, reps);
    let erm = Timing {
        wall: 0.5 * (first.wall + last.wall),
        cpu: 0.5 * (first.cpu + last.cpu),
    };
    println!(
        "\nERM step: {:.1} ms first, {:.1} ms last (CPU {:.1}, {:.1}); shares below are of the means.",
        first.wall * 1e3,
        last.wall * 1e3,
        first.cpu * 1e3,
        last.cpu * 1e3
    );
    println!("\nMultiMix ops, b = {B} (sample Λ, mix values and targets, loss, backward):");
    println!("| op | n | d | c | ms | % of ERM step | % (CPU) |\n|---|---|---|---|---|---|---|");
    for (name, n, d, c, t) in pooled {
        let (pw, pc) = t.percent(erm);
        println!(
            "| {name} | {n} | {d} | {c} | {:.3} | {pw:.2} | {pc:.2} |",
            t.wall * 1e3
        );
    }
    println!(
        "\ndense MultiMix ops, b = {B} (attention, Λ, mixed logits and targets, loss, backward):"
    );
    println!(
        "| n | r | d | c | fused ms | % of ERM step | % (CPU) | composite ms | % of ERM step |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (n, r, d, c, fused, composite) in dense {
        let (fw, fc) = fused.percent(erm);
        let (cw, _) = composite.percent(erm);
        println!(
            "| {n} | {r} | {d} | {c} | {:.3} | {fw:.2} | {fc:.2} | {:.3} | {cw:.2} |",
            fused.wall * 1e3,
            composite.wall * 1e3
        );
    }
}
