//! Train a small ViT with dense MultiMix on the embedded Fashion-MNIST subset and evaluate it,
//! as a library user writes it (the same flow as `multimix train` with no flag).
//!
//! ```sh
//! cargo run --release --example train_vit_dense_multimix -- [EPOCHS] [RUN_DIR]
//! ```

use anyhow::Result;
use candle_core::Device;
use multimix::evaluation::{evaluate_model, write_report};
use multimix::recipes::config::MixMethod;
use multimix::recipes::progress::Bar;
use multimix::recipes::run::RunDir;
use multimix::recipes::train::{TrainControl, Trainer};
use multimix::recipes::TrainConfig;
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut cfg = TrainConfig::default();
    assert_eq!(cfg.mix.method, MixMethod::DenseMultimix);
    if let Some(epochs) = args.next() {
        cfg.train.epochs = epochs.parse()?;
    }
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| RunDir::default_path(&cfg));

    let device = Device::Cpu;
    // Everything is validated and built before anything is written.
    let trainer = Trainer::new(cfg, &device)?;
    println!(
        "{}: {} trainable parameters, dense MultiMix with n = {}, α = {}",
        trainer.config().model.architecture,
        trainer.model().params().num_trainable(),
        trainer.config().mix.n,
        trainer.config().mix.alpha(),
    );
    let run = RunDir::create(&out)?;
    let outcome = trainer.run(&run, false, &TrainControl::default(), &mut Bar::new())?;

    let report = evaluate_model(&outcome.model, &outcome.config.eval, &outcome.test, &device)?;
    write_report(&run, &report)?;
    println!(
        "{}",
        report.to_markdown(&format!("Evaluation of {}", run.path().display()))
    );
    println!("{}", run.path().display());
    Ok(())
}
