//! `multimix eval`.

use anyhow::{Context, Result};
use clap::Args;
use multimix::checkpoint::load_model;
use multimix::evaluation::{evaluate_model, write_report};
use multimix_data::{conform, DataSpec};
use multimix_recipes::run::RunDir;
use std::path::PathBuf;
use std::sync::Arc;

/// Options of `multimix eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The run directory to evaluate.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Test data spec (default: the run's).
    #[arg(long)]
    data: Option<String>,
    /// Comma-separated OOD sets (default: the run's, mnist and gaussian).
    #[arg(long, value_delimiter = ',')]
    ood: Option<Vec<String>>,
    /// FGSM ε in [0, 1] pixel units, e.g. 0.0314 (8/255).
    #[arg(long)]
    fgsm_eps: Option<f64>,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Evaluate the run and rewrite its report.
pub fn run(args: EvalArgs) -> Result<()> {
    let device = super::device(&args.device)?;
    let run = RunDir::open(&args.checkpoint)?;
    let mut cfg = run.read_config()?;
    if let Some(v) = args.data {
        cfg.data.spec = v;
    }
    if let Some(v) = args.ood {
        cfg.eval.ood = v;
    }
    if let Some(v) = args.fgsm_eps {
        cfg.eval.fgsm_eps = v;
    }
    let model = load_model(run.path(), &device)?;
    let spec: DataSpec = cfg.data.spec.parse()?;
    let arch = &model.config().arch;
    let test = spec.load()?.test;
    let test = Arc::new(
        conform(test, (arch.in_chans(), arch.img_size(), arch.img_size()))
            .with_context(|| format!("test data `{spec}`"))?,
    );
    let report = evaluate_model(&model, &cfg.eval, &test, &device)?;
    write_report(&run, &report)?;
    println!("{}", report.to_json()?);
    Ok(())
}
