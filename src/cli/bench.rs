//! `multimix bench`: time full training steps (forward, loss, backward, optimizer step) or FGSM
//! batches of preset models under each mixing method, with images per second, peak memory and
//! achieved GFLOP/s against the machine's peak; `tools/bench_torch.py` writes the same JSON for
//! PyTorch + timm and `tools/bench_compare.py` puts the two side by side.

use anyhow::{bail, Context, Result};
use clap::Args;
use multimix_hub::checkpoint::write_atomic;
use multimix_recipes::bench::{forward_flops, preset_config, FgsmStep, StepSpec, TrainStep};
use multimix_recipes::config::{MixMethod, OptimizerKind, DEFAULT_ARCHITECTURE};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

/// The JSON schema shared with `tools/bench_torch.py`.
const SCHEMA: &str = "multimix-bench/1";
/// The workspace's pinned candle-core.
const CANDLE_VERSION: &str = "0.11.1";
/// The methods benchmarked by default (issue #8's set).
const DEFAULT_METHODS: &str = "none,mixup,manifold-mixup,multimix,dense-multimix";
/// FP32 FLOPs per cycle and core of two 256-bit FMA units (AVX2 + FMA: 2 × 8 lanes × 2).
const FLOP_PER_CYCLE: f64 = 32.0;

/// Options of `multimix bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Architectures, comma-separated, each at its preset's input size (e.g. vit_mini_patch7_28
    /// at 28×28×1, vit_tiny_patch4_32 = timm's vit_tiny_patch16_224 with img_size=32,
    /// patch_size=4, resnet18_cifar at 32×32×3).
    #[arg(long, default_value = DEFAULT_ARCHITECTURE)]
    model: String,
    /// Mixing methods, comma-separated, of: none, mixup, cutmix, mixup-cutmix, manifold-mixup,
    /// multimix, dense-multimix [default: none,mixup,manifold-mixup,multimix,dense-multimix].
    #[arg(long)]
    method: Option<String>,
    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Timed steps (FGSM: timed batches) per configuration.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps before them.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// CPU threads (sets RAYON_NUM_THREADS, which candle's CPU kernels follow; default: its
    /// value, else the physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Optimizer: adamw (lr 2e-3, weight decay 0.05, the training default) or sgd (lr 0.05,
    /// momentum 0.9, weight decay 5e-4).
    #[arg(long, default_value = "adamw")]
    opt: String,
    /// MultiMix tuples per batch.
    #[arg(long, default_value_t = 1000)]
    mix_n: usize,
    /// Seed of the weights, the batch and the mixing.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Time FGSM batches instead (ε = 8/255, eval mode: forward, gradient with respect to the
    /// input, forward on the adversarial images), as the evaluation runs them.
    #[arg(long)]
    fgsm: bool,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Write the results as JSON to this file (atomically; rewritten after every configuration).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Run `multimix bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    let plan = Plan::new(&args)?;
    if let Some(n) = args.threads {
        // Before any candle kernel or rayon pool exists: both read the variable on first use.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let device = super::device(&args.device)?;
    let threads = candle_core::utils::get_num_threads();
    let machine = machine(threads);
    let mut out = json!({
        "schema": SCHEMA,
        "framework": "candle",
        "framework_version": format!(
            "candle-core {CANDLE_VERSION}, multimix {}", env!("CARGO_PKG_VERSION")
        ),
        "device": args.device,
        "machine": machine,
        "env": env_vars(),
        "results": [],
    });
    println!("| model | method | median s | min–max s | img/s | CPU s | peak RSS MiB | GFLOP/s | % of peak |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for architecture in &plan.models {
        for method in &plan.methods {
            let r = run_config(&args, architecture, *method, &plan, &device, &machine)
                .with_context(|| {
                    format!(
                        "{architecture} {}",
                        method.map_or("fgsm".into(), |m| m.to_string())
                    )
                })?;
            println!("{}", table_row(&r));
            if let Some(results) = out["results"].as_array_mut() {
                results.push(r);
            }
            if let Some(path) = &args.json {
                let text = serde_json::to_string_pretty(&out)? + "\n";
                write_atomic(path, text.as_bytes())
                    .with_context(|| format!("--json {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// The checked options: models, methods (`None`: FGSM) and optimizer.
struct Plan {
    models: Vec<String>,
    methods: Vec<Option<MixMethod>>,
    optimizer: OptimizerKind,
}

impl Plan {
    fn new(args: &BenchArgs) -> Result<Self> {
        let models: Vec<String> = args.model.split(',').map(str::to_string).collect();
        for m in &models {
            preset_config(m).with_context(|| format!("--model {m}"))?;
        }
        let methods = match (&args.method, args.fgsm) {
            (Some(_), true) => {
                bail!("--method does not apply to --fgsm (FGSM runs the model in eval mode)")
            }
            (None, true) => vec![None],
            (m, false) => m
                .as_deref()
                .unwrap_or(DEFAULT_METHODS)
                .split(',')
                .map(|s| s.parse().map(Some).map_err(anyhow::Error::msg))
                .collect::<Result<_>>()
                .context("--method")?,
        };
        let optimizer = match args.opt.as_str() {
            "adamw" => OptimizerKind::Adamw,
            "sgd" => OptimizerKind::Sgd,
            other => bail!("--opt {other}: expected adamw or sgd"),
        };
        if args.steps == 0 || args.batch_size == 0 || args.mix_n == 0 {
            bail!("--steps, --batch-size and --mix-n must be at least 1");
        }
        if args.threads == Some(0) {
            bail!("--threads must be at least 1");
        }
        Ok(Self {
            models,
            methods,
            optimizer,
        })
    }
}

/// One configuration: build, warm up, time; its JSON record (the schema of
/// `tools/bench_torch.py`).
fn run_config(
    args: &BenchArgs,
    architecture: &str,
    method: Option<MixMethod>,
    plan: &Plan,
    device: &candle_core::Device,
    machine: &Value,
) -> Result<Value> {
    let reset = reset_peak_rss();
    let rss_start = status_bytes("VmRSS");
    let mut step = match method {
        Some(method) => Step::Train(Box::new(TrainStep::new(
            &StepSpec {
                architecture: architecture.to_string(),
                method,
                mix_n: args.mix_n,
                batch_size: args.batch_size,
                optimizer: plan.optimizer,
                seed: args.seed,
            },
            device,
        )?)),
        None => Step::Fgsm(Box::new(FgsmStep::new(
            architecture,
            args.batch_size,
            args.seed,
            device,
        )?)),
    };
    let config = step.model().config().clone();
    let params = step.model().params().num_trainable();
    let (mut wall, mut cpu, mut last) = (Vec::new(), Vec::new(), f64::NAN);
    for i in 0..args.warmup + args.steps {
        let (w0, c0) = (Instant::now(), cpu_seconds());
        last = step.run()?;
        if i >= args.warmup {
            wall.push(w0.elapsed().as_secs_f64());
            cpu.push(cpu_seconds() - c0);
        }
    }
    let (med, min, max) = (median(&wall), min_of(&wall), max_of(&wall));
    // Training step and FGSM batch alike: about 3 forward passes of matmul/conv work.
    let forward = forward_flops(&config).map(|f| (f * args.batch_size as u64) as f64);
    let achieved = forward.map(|f| 3.0 * f / med / 1e9);
    let peak = machine["peak_gflops"].as_f64();
    let s = config.arch.img_size();
    Ok(json!({
        "model": architecture,
        "method": method.map(|m| m.to_string()),
        "mode": if method.is_some() { "train" } else { "fgsm" },
        "input": [config.arch.in_chans(), s, s],
        "batch_size": args.batch_size,
        "params": params,
        "optimizer": method.map(|_| args.opt.clone()),
        "mix_n": args.mix_n,
        "warmup": args.warmup,
        "steps": args.steps,
        "wall_s": wall,
        "cpu_s": cpu,
        "median_s": med,
        "min_s": min,
        "max_s": max,
        "cpu_median_s": median(&cpu),
        "images_per_s": args.batch_size as f64 / med,
        "rss_start_bytes": rss_start,
        "peak_rss_bytes": status_bytes("VmHWM"),
        "peak_rss_reset": reset,
        "forward_gflop": forward.map(|f| f / 1e9),
        "step_gflop": forward.map(|f| 3.0 * f / 1e9),
        "achieved_gflops": achieved,
        "peak_fraction": achieved.zip(peak).map(|(a, p)| a / p),
        (if method.is_some() { "last_loss" } else { "fgsm_accuracy" }): last,
    }))
}

/// A prepared training step or FGSM batch.
enum Step {
    Train(Box<TrainStep>),
    Fgsm(Box<FgsmStep>),
}

impl Step {
    fn model(&self) -> &multimix_backbones::Model {
        match self {
            Step::Train(s) => s.model(),
            Step::Fgsm(s) => s.model(),
        }
    }

    /// Run once: the loss of a training step, the accuracy under attack of an FGSM batch.
    fn run(&mut self) -> Result<f64> {
        Ok(match self {
            Step::Train(s) => s.run()? as f64,
            Step::Fgsm(s) => s.run()?,
        })
    }
}

/// A markdown row of one record.
fn table_row(r: &Value) -> String {
    let f = |key: &str, digits: usize| {
        r[key]
            .as_f64()
            .map_or("-".to_string(), |v| format!("{v:.digits$}"))
    };
    let mib = r["peak_rss_bytes"]
        .as_f64()
        .map_or("-".to_string(), |b| format!("{:.0}", b / 1048576.0));
    let pct = r["peak_fraction"]
        .as_f64()
        .map_or("-".to_string(), |p| format!("{:.0}", 100.0 * p));
    format!(
        "| {} | {} | {} | {}–{} | {} | {} | {mib} | {} | {pct} |",
        r["model"].as_str().unwrap_or("?"),
        r["method"].as_str().unwrap_or("fgsm"),
        f("median_s", 3),
        f("min_s", 3),
        f("max_s", 3),
        f("images_per_s", 1),
        f("cpu_median_s", 3),
        f("achieved_gflops", 1),
    )
}

/// The median of `v` (the mean of the two middle values for an even count, as Python's
/// `statistics.median`).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn min_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// The CPU, its clock and the assumed FP32 peak of `threads` cores.
fn machine(threads: usize) -> Value {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
    };
    let mhz = field("cpu MHz").and_then(|v| v.parse::<f64>().ok());
    let flags = field("flags").unwrap_or_default();
    let avx2_fma = flags.split_whitespace().any(|f| f == "avx2")
        && flags.split_whitespace().any(|f| f == "fma");
    let peak = mhz
        .filter(|_| avx2_fma)
        .map(|mhz| threads as f64 * FLOP_PER_CYCLE * mhz / 1e3);
    json!({
        "cpu": field("model name").unwrap_or_else(|| "unknown".into()),
        "logical_cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "threads": threads,
        "clock_mhz": mhz,
        "avx2_fma": avx2_fma,
        "peak_gflops": peak,
        "peak_assumption": "threads x 32 FP32 FLOP/cycle (2 x 256-bit FMA per core, AVX2+FMA) \
            x the first 'cpu MHz' of /proc/cpuinfo (under a VM: the reported clock; boost may \
            be higher)",
    })
}

/// The environment variables that change CPU speed, as set.
fn env_vars() -> Value {
    let vars = [
        "RAYON_NUM_THREADS",
        "CANDLE_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "GLIBC_TUNABLES",
    ];
    vars.iter()
        .filter_map(|k| {
            std::env::var(k)
                .ok()
                .map(|v| (k.to_string(), Value::from(v)))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Reset the peak resident set size (`VmHWM`) to the current one: write 5 to
/// `/proc/self/clear_refs` (Linux ≥ 4.0). False where refused.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A `VmRSS` / `VmHWM` line of `/proc/self/status` in bytes (absent off Linux).
fn status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User + system CPU seconds of the process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes a plain struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
