//! `multimix train --task detection`: a CenterNet head on the backbone's dense outputs, trained
//! on synthetic Fashion-MNIST canvases, with COCO AP in `report.json`.

use anyhow::{bail, Result};
use multimix_recipes::config::TrainConfig;
use multimix_recipes::detection::{train_detection, DetectionConfig};
use multimix_recipes::progress::Bar;
use multimix_recipes::run::RunDir;
use std::path::PathBuf;

/// What `multimix train` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// Image classification (the default).
    Classification,
    /// Object detection (CenterNet) on synthetic canvases of the data's images.
    Detection,
}

/// Options of the detection task beyond the training configuration.
#[derive(Debug, Clone, Default)]
pub struct DetectArgs {
    /// The run directory (default: runs/<architecture>-detection-s<seed>-<time>).
    pub out: Option<PathBuf>,
    /// A classification run whose backbone initializes the detector.
    pub init: Option<PathBuf>,
    /// `--resume` was given (not supported for detection).
    pub resume: bool,
    /// Synthetic training canvases.
    pub images: Option<usize>,
    /// Synthetic test canvases.
    pub test_images: Option<usize>,
    /// Training files (`coco:DIR`, `voc:DIR`).
    pub data: Option<String>,
    /// Test files.
    pub test_data: Option<String>,
}

/// Train the detector, write the run directory and print its path.
pub fn run(cfg: TrainConfig, args: DetectArgs, device: &str) -> Result<()> {
    if args.resume {
        bail!("--resume is not supported with --task detection yet: start a new run");
    }
    let device = super::device(device)?;
    let defaults = DetectionConfig::default();
    let det = DetectionConfig {
        init: args.init,
        train_images: args.images.unwrap_or(defaults.train_images),
        test_images: args.test_images.unwrap_or(defaults.test_images),
        train_data: args.data,
        test_data: args.test_data,
        ..defaults
    };
    let path = args.out.unwrap_or_else(|| {
        let default = RunDir::default_path(&cfg);
        let name = default.file_name().map(|n| n.to_string_lossy().to_string());
        default.with_file_name(format!("det-{}", name.unwrap_or_default()))
    });
    let run = RunDir::create(&path)?;
    let outcome = train_detection(cfg, &det, &device, Some(&run), &mut Bar::new())?;
    eprintln!(
        "test AP {:.4}, AP50 {:.4}, AP75 {:.4} (COCO bbox, as pycocotools)",
        outcome.test_ap.ap, outcome.test_ap.ap50, outcome.test_ap.ap75
    );
    println!("{}", run.path().display());
    Ok(())
}
