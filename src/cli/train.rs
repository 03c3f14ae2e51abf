//! `multimix train`.

use anyhow::{bail, Context, Result};
use clap::Args;
use multimix::evaluation::{evaluate_model, write_report};
use multimix_recipes::config::{MixMethod, TrainConfig};
use multimix_recipes::progress::Bar;
use multimix_recipes::run::RunDir;
use multimix_recipes::train::{TrainControl, Trainer};
use std::path::PathBuf;

/// Options of `multimix train`; each overrides the same key of `--config`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A TOML configuration (e.g. the `config.toml` of an earlier run).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The run directory (default: runs/<architecture>-<method>-s<seed>-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Data spec: fashion-mnist-mini (default), fashion-mnist, idx:DIR.
    #[arg(long)]
    data: Option<String>,
    /// Architecture (e.g. vit_mini_patch7_28, vit_tiny_patch16_224).
    #[arg(long)]
    model: Option<String>,
    /// Mixing method: none, multimix, dense-multimix.
    #[arg(long)]
    mix: Option<MixMethod>,
    /// Number of interpolated tuples per batch (MultiMix).
    #[arg(long)]
    mix_n: Option<usize>,
    /// Dirichlet concentration α.
    #[arg(long)]
    mix_alpha: Option<f64>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Images per batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the run's random generator.
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, conflicts_with_all = ["config", "out"])]
    resume: Option<PathBuf>,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl TrainArgs {
    fn has_overrides(&self) -> bool {
        self.data.is_some()
            || self.model.is_some()
            || self.mix.is_some()
            || self.mix_n.is_some()
            || self.mix_alpha.is_some()
            || self.epochs.is_some()
            || self.max_steps.is_some()
            || self.batch_size.is_some()
            || self.lr.is_some()
            || self.seed.is_some()
    }

    /// The configuration: `--config` (or the defaults) with the flags applied.
    fn config(&self) -> Result<TrainConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --config {}", path.display()))?;
                TrainConfig::from_toml(&text)
                    .with_context(|| format!("--config {}", path.display()))?
            }
            None => TrainConfig::default(),
        };
        if let Some(v) = &self.data {
            cfg.data.spec = v.clone();
        }
        if let Some(v) = &self.model {
            if *v != cfg.model.architecture {
                cfg.model.architecture = v.clone();
                cfg.model.args.clear();
                cfg.model.mean = None;
                cfg.model.std = None;
            }
        }
        if let Some(v) = self.mix {
            cfg.mix.method = v;
        }
        if let Some(v) = self.mix_n {
            cfg.mix.n = v;
        }
        if let Some(v) = self.mix_alpha {
            cfg.mix.alpha = v;
        }
        if let Some(v) = self.epochs {
            cfg.train.epochs = v;
        }
        if let Some(v) = self.max_steps {
            cfg.train.max_steps = Some(v);
        }
        if let Some(v) = self.batch_size {
            cfg.train.batch_size = v;
        }
        if let Some(v) = self.lr {
            cfg.optim.lr = v;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        Ok(cfg)
    }
}

/// Train, evaluate, write the report, print the run directory.
pub fn run(args: TrainArgs) -> Result<()> {
    let device = super::device(&args.device)?;
    let (run, trainer, resume) = match &args.resume {
        Some(dir) => {
            if args.has_overrides() {
                bail!(
                    "--resume continues {} with its own config.toml; drop the other training flags",
                    dir.display()
                );
            }
            let run = RunDir::open(dir)?;
            let trainer = Trainer::new(run.read_config()?, &device)?;
            (run, trainer, true)
        }
        None => {
            let trainer = Trainer::new(args.config()?, &device)?;
            let path = args
                .out
                .clone()
                .unwrap_or_else(|| RunDir::default_path(trainer.config()));
            (RunDir::create(&path)?, trainer, false)
        }
    };
    let outcome = trainer.run(&run, resume, &TrainControl::default(), &mut Bar::new())?;
    eprintln!("evaluating (accuracy, calibration, FGSM, OOD) ...");
    let report = evaluate_model(&outcome.model, &outcome.config.eval, &outcome.test, &device)?;
    write_report(&run, &report)?;
    eprintln!(
        "test accuracy {:.2}%, ECE {:.2}%, FGSM accuracy {:.2}% (eps {:.0}/255)",
        100.0 * report.accuracy,
        100.0 * report.ece,
        100.0 * report.fgsm.accuracy,
        report.fgsm.eps * 255.0
    );
    for (name, o) in &report.ood {
        eprintln!(
            "OOD {name}: MSP AUROC {:.2}%, FPR@95 {:.2}%",
            100.0 * o.msp.auroc,
            100.0 * o.msp.fpr95
        );
    }
    println!("{}", run.path().display());
    Ok(())
}
