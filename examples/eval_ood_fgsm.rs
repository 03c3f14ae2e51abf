//! Evaluate a checkpoint for OOD detection and FGSM robustness, as a library user writes it:
//! load it (a run directory, a timm directory, `hf-hub:owner/name` or a zoo name), evaluate on
//! the embedded Fashion-MNIST test subset against the MNIST and Gaussian OOD sets, and print
//! the comparison table.
//!
//! ```sh
//! cargo run --release --example eval_ood_fgsm -- runs/<name>
//! ```

use anyhow::{Context, Result};
use candle_core::Device;
use multimix::checkpoint::load_model;
use multimix::compare::{compare_table, RunReport};
use multimix::evaluation::evaluate_model;
use multimix::recipes::config::EvalConfig;
use multimix_data::{conform, DataSpec};
use std::path::PathBuf;
use std::sync::Arc;

fn main() -> Result<()> {
    let checkpoint: PathBuf = std::env::args()
        .nth(1)
        .context(
            "usage: eval_ood_fgsm CHECKPOINT (a run directory, hf-hub:owner/name or a zoo name)",
        )?
        .into();
    let device = Device::Cpu;
    let model = load_model(&checkpoint, &device)?;
    let arch = &model.config().arch;
    let test = "fashion-mnist-mini".parse::<DataSpec>()?.load()?.test;
    let test = Arc::new(conform(
        test,
        (arch.in_chans(), arch.img_size(), arch.img_size()),
    )?);
    // FGSM at 8/255, OOD sets mnist and gaussian scored by MSP, MaxLogit and Energy.
    let cfg = EvalConfig::default();
    let report = evaluate_model(&model, &cfg, &test, &device)?;
    let run = RunReport {
        name: checkpoint.display().to_string(),
        method: None,
        report: serde_json::from_str(&report.to_json()?)?,
    };
    print!("{}", compare_table(&[run]));
    Ok(())
}
