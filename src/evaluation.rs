//! Evaluate a model as its run is configured, and write the run's report with its plots.

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

/// The evaluation options of a run's configuration: its batch size and FGSM ε, the rest at the
/// defaults (FGSM at that ε, the detectors that cost nothing: MSP, MaxLogit, Energy).
pub fn default_options(cfg: &EvalConfig) -> EvalOptions {
    EvalOptions {
        batch_size: cfg.batch_size,
        fgsm_eps: cfg.fgsm_eps,
        ..EvalOptions::default()
    }
}

/// Evaluate `model` on `test` and the OOD sets of `cfg` with [`default_options`] (what
/// `multimix train` runs at the end: a few seconds for the default model).
pub fn evaluate_model(
    model: &Model,
    cfg: &EvalConfig,
    test: &Arc<Dataset>,
    device: &Device,
) -> Result<Report> {
    evaluate_model_with(model, cfg, test, None, &default_options(cfg), device)
}

/// Evaluate `model` on `test` and the OOD sets of `cfg` with `opts`; `train` is needed by the
/// detectors fit on training features (Mahalanobis, KNN).
pub fn evaluate_model_with(
    model: &Model,
    cfg: &EvalConfig,
    test: &Arc<Dataset>,
    train: Option<&Arc<Dataset>>,
    opts: &EvalOptions,
    device: &Device,
) -> Result<Report> {
    let ood = ood_sets(cfg, test)?;
    Ok(evaluate(model, test, train, &ood, opts, device)?)
}

/// Write `report.json`, `report.md` and the PNG plots into the run directory (each atomically).
pub fn write_report(run: &RunDir, report: &Report) -> Result<()> {
    let title = format!("Evaluation of {}", run.path().display());
    report
        .save_plots(run.path())
        .with_context(|| format!("writing the plots into {}", run.path().display()))?;
    run.write(REPORT_JSON, report.to_json()?.as_bytes())?;
    run.write(REPORT_MD, report.to_markdown(&title).as_bytes())?;
    Ok(())
}
