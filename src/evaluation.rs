//! Evaluate a model as its run is configured, and write the run's report.

use anyhow::{Context, Result};
use candle_core::Device;
use multimix_backbones::Model;
use multimix_data::{DataSpec, Dataset};
use multimix_eval::{evaluate, EvalOptions, Report};
use multimix_recipes::config::EvalConfig;
use multimix_recipes::run::{RunDir, REPORT_JSON, REPORT_MD};
use std::sync::Arc;

/// Seed of the synthetic OOD sets: fixed, so every run is evaluated on the same noise images.
pub const NOISE_SEED: u64 = 0x5eed;

/// The OOD sets of `cfg`, each shaped like `test` and as large.
pub fn ood_sets(cfg: &EvalConfig, test: &Dataset) -> Result<Vec<(String, Arc<Dataset>)>> {
    cfg.ood
        .iter()
        .map(|name| {
            let spec: DataSpec = name.parse()?;
            let set = spec
                .load_ood(test, test.len(), NOISE_SEED)
                .with_context(|| format!("OOD set `{name}`"))?;
            Ok((name.clone(), Arc::new(set)))
        })
        .collect()
}

/// Evaluate `model` on `test` and the OOD sets of `cfg`.
pub fn evaluate_model(
    model: &Model,
    cfg: &EvalConfig,
    test: &Arc<Dataset>,
    device: &Device,
) -> Result<Report> {
    let ood = ood_sets(cfg, test)?;
    let opts = EvalOptions {
        batch_size: cfg.batch_size,
        fgsm_eps: cfg.fgsm_eps,
        ..EvalOptions::default()
    };
    Ok(evaluate(model, test, &ood, &opts, device)?)
}

/// Write `report.json` and `report.md` into the run directory (atomically).
pub fn write_report(run: &RunDir, report: &Report) -> Result<()> {
    let title = format!("Evaluation of {}", run.path().display());
    run.write(REPORT_JSON, report.to_json()?.as_bytes())?;
    run.write(REPORT_MD, report.to_markdown(&title).as_bytes())?;
    Ok(())
}
