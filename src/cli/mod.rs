//! Command-line parsing and the subcommands.

mod bench;
mod compare;
mod det_metrics;
mod detect;
mod eval;
mod hub;
mod infer;
mod mixviz;
mod ood_metrics;
mod train;
mod zoo;

use anyhow::{bail, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};

/// multimix: train with MultiMix and dense MultiMix, evaluate robustness, OOD detection and
/// calibration.
#[derive(Debug, Parser)]
#[command(name = "multimix", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a classifier (by default a small ViT with dense MultiMix on the embedded
    /// Fashion-MNIST subset), then evaluate it.
    Train(Box<train::TrainArgs>),
    /// Evaluate a saved run and rewrite its report.
    Eval(eval::EvalArgs),
    /// OOD-detection metrics (AUROC, AUPR-In/Out, FPR@95 in both conventions, detection error)
    /// of two files of scores, one per line, higher = more in-distribution.
    OodMetrics(ood_metrics::OodMetricsArgs),
    /// Write a PNG grid of a batch mixed by mixup and CutMix, and (with --checkpoint) of the
    /// attention maps that weight dense MultiMix.
    Mixviz(mixviz::MixvizArgs),
    /// The reports of several evaluated runs side by side, as one markdown table.
    Compare(compare::CompareArgs),
    /// Download checkpoints from and push runs to a Hugging Face hub.
    Hub(hub::HubArgs),
    /// The model zoo: pretrained checkpoints by name.
    Zoo(zoo::ZooArgs),
    /// Logits (and features) of images from a checkpoint of this project or of timm.
    Infer(infer::InferArgs),
    /// COCO box AP, AP50, AP75 of a results file against a ground-truth file (as pycocotools).
    DetMetrics(det_metrics::DetMetricsArgs),
    /// Time training steps (or FGSM batches) per model and mixing method: median seconds,
    /// images/s, peak memory, achieved GFLOP/s.
    Bench(bench::BenchArgs),
}

/// Parse the command line and run the subcommand.
pub fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => eval::run(args),
        Command::OodMetrics(args) => ood_metrics::run(args),
        Command::Mixviz(args) => mixviz::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Hub(args) => hub::run(args),
        Command::Zoo(args) => zoo::run(args),
        Command::Infer(args) => infer::run(args),
        Command::DetMetrics(args) => det_metrics::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

/// The device named by `--device`: `cpu`, `cuda` or `cuda:N` (with the `cuda` feature).
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => match rest.strip_prefix(':').and_then(|n| n.parse().ok()) {
                    Some(n) => n,
                    None => bail!("--device {name}: expected cpu, cuda or cuda:N"),
                },
                None => bail!("--device {name}: expected cpu, cuda or cuda:N"),
            };
            if !candle_core::utils::cuda_is_available() {
                bail!("--device {name}: this build has no CUDA support (rebuild with --features cuda)");
            }
            Ok(Device::new_cuda(ordinal)?)
        }
    }
}

/// An error and its causes on one line, each cause cut to its first line (candle appends
/// backtraces to its messages when RUST_BACKTRACE is set).
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let first = text.lines().next().unwrap_or("").trim().to_string();
        if !first.is_empty() && !parts.iter().any(|p| p.contains(&first)) {
            parts.push(first);
        }
    }
    parts.join(": ")
}
