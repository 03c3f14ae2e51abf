//! `multimix train --task detection`: a CenterNet head on the backbone's dense outputs (ViT
//! tokens as a map, a CNN's last feature map), trained on synthetic canvases of the data's
//! images or on COCO / VOC files, with COCO AP in `report.json`; and `multimix eval` of such a
//! run.

use anyhow::{bail, Context, Result};
use multimix_eval::detection::coco_ap;
use multimix_hub::checkpoint::write_atomic;
use multimix_recipes::config::TrainConfig;
use multimix_recipes::detection::{
    coco_ground_truth, detection_test_set, is_detection_files, read_detection_config,
    DetectionConfig, DetectionReport, DetectionTrainer, Detector,
};
use multimix_recipes::progress::Bar;
use multimix_recipes::run::{RunDir, CONFIG_FILE};
use multimix_recipes::train::TrainControl;
use std::path::{Path, PathBuf};

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
    /// The run directory (default: runs/det-<architecture>-<method>-s<seed>-<time>).
    pub out: Option<PathBuf>,
    /// A classification run whose backbone initializes the detector.
    pub init: Option<PathBuf>,
    /// Continue the detection run in this directory.
    pub resume: Option<PathBuf>,
    /// Synthetic training canvases.
    pub images: Option<usize>,
    /// Synthetic test canvases.
    pub test_images: Option<usize>,
    /// Canvas side in pixels.
    pub canvas: Option<usize>,
    /// Training files (`coco:DIR`, `voc:DIR`).
    pub data: Option<String>,
    /// Test files.
    pub test_data: Option<String>,
}

/// Train the detector (or continue it), write the run directory and print its path. An
/// interrupt (`control`) saves a checkpoint and exits with 130, as classification does.
pub fn run(cfg: TrainConfig, args: DetectArgs, device: &str, control: TrainControl) -> Result<()> {
    let device = super::device(device)?;
    let (run, trainer, resume) = match &args.resume {
        Some(dir) => {
            let run = RunDir::open(dir)?;
            (run.clone(), DetectionTrainer::resume(&run, &device)?, true)
        }
        None => {
            let defaults = DetectionConfig::default();
            let det = DetectionConfig {
                init: args.init,
                train_images: args.images.unwrap_or(defaults.train_images),
                test_images: args.test_images.unwrap_or(defaults.test_images),
                canvas: args.canvas.unwrap_or(defaults.canvas),
                train_data: args.data,
                test_data: args.test_data,
                ..defaults
            };
            let trainer = DetectionTrainer::new(cfg, &det, &device)?;
            let path = args.out.unwrap_or_else(|| {
                let default = RunDir::default_path(trainer.config());
                let name = default.file_name().map(|n| n.to_string_lossy().to_string());
                default.with_file_name(format!("det-{}", name.unwrap_or_default()))
            });
            (RunDir::create(&path)?, trainer, false)
        }
    };
    let outcome = trainer.run(Some(&run), resume, &control, &mut Bar::new())?;
    if outcome.interrupted {
        eprintln!(
            "interrupted: checkpoint saved; continue with `multimix train --resume {}`",
            run.path().display()
        );
        println!("{}", run.path().display());
        std::process::exit(130);
    }
    if let Some(ap) = outcome.test_ap {
        eprintln!(
            "test AP {:.4}, AP50 {:.4}, AP75 {:.4} (COCO bbox, as pycocotools)",
            ap.ap, ap.ap50, ap.ap75
        );
    }
    println!("{}", run.path().display());
    Ok(())
}

/// Options of `multimix eval` for a detection checkpoint.
#[derive(Debug, Clone)]
pub struct DetEvalArgs {
    /// A detection run directory, or a detection `model.safetensors` (with `data` and `out`).
    pub checkpoint: PathBuf,
    /// A new directory for the report instead of the run directory.
    pub out: Option<PathBuf>,
    /// The test set: `coco:DIR`, `voc:DIR`, or a data spec to draw synthetic canvases from.
    pub data: Option<String>,
    /// Write the detections here as a COCO results file.
    pub predictions: Option<PathBuf>,
    /// Write the ground truth they are scored against here as a COCO JSON file.
    pub ground_truth: Option<PathBuf>,
    /// Device name.
    pub device: String,
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T, flag: &str) -> Result<()> {
    let json = serde_json::to_vec(value)?;
    write_atomic(path, &json).with_context(|| format!("cannot write {flag} {}", path.display()))
}

/// Evaluate a detector: COCO AP@[0.5:0.95], AP50, AP75 on the run's test set (or `--data`'s),
/// as pycocotools computes them; write `report.json` and `report.md`, and print the report.
pub fn eval(args: DetEvalArgs) -> Result<()> {
    let device = super::device(&args.device)?;
    let is_run = args.checkpoint.join(CONFIG_FILE).is_file();
    let (mut cfg, mut det) = if is_run {
        let run = RunDir::open(&args.checkpoint)?;
        (run.read_config()?, read_detection_config(&run)?)
    } else {
        if args.data.is_none() || args.out.is_none() {
            bail!(
                "detection checkpoint `{}` is not a run directory: give --data (coco:DIR, voc:DIR, or a data spec for synthetic canvases) and --out DIR (a new directory for the report)",
                args.checkpoint.display()
            );
        }
        (TrainConfig::default(), DetectionConfig::default())
    };
    if let Some(out) = &args.out {
        if out.exists() && std::fs::read_dir(out)?.next().is_some() {
            bail!(
                "--out {} exists and is not empty: choose a new directory",
                out.display()
            );
        }
    }
    match args.data {
        Some(spec) if is_detection_files(&spec) => det.test_data = Some(spec),
        Some(spec) => {
            cfg.data.spec = spec;
            det.test_data = None;
        }
        None => {}
    }
    let detector = Detector::load(&args.checkpoint, &device)
        .with_context(|| format!("--checkpoint {}", args.checkpoint.display()))?;
    let arch = &detector.model.config().arch;
    det.canvas = arch.img_size();
    let test = detection_test_set(&cfg, &det, arch.in_chans())?;
    if test.is_empty() || test.num_classes() != detector.num_classes() {
        bail!(
            "test set `{}` has {} images of {} classes; the detector needs images of its {} classes",
            test.name,
            test.len(),
            test.num_classes(),
            detector.num_classes()
        );
    }
    if test.channels != arch.in_chans() {
        bail!(
            "test set `{}` has {}-channel images; the detector takes {} channels",
            test.name,
            test.channels,
            arch.in_chans()
        );
    }
    let dets = detector.detect(&test, cfg.eval.batch_size, det.top_k, &device)?;
    let gt = coco_ground_truth(&test);
    let ap = coco_ap(&gt, &dets)?;
    let report = DetectionReport::new(&test, ap, None, &det);
    let run = match &args.out {
        Some(out) => RunDir::create(out)?,
        None => RunDir::open(&args.checkpoint)?,
    };
    report.write(&run)?;
    if let Some(path) = &args.predictions {
        write_json(path, &dets, "--predictions")?;
    }
    if let Some(path) = &args.ground_truth {
        write_json(path, &gt, "--ground-truth")?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
