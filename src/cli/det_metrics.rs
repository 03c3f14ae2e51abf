//! `multimix det-metrics`: COCO box AP of a results file against a ground-truth file.

use anyhow::{Context, Result};
use clap::Args;
use multimix_eval::detection::{coco_ap, parse_results, GroundTruth};
use std::path::{Path, PathBuf};

/// Options of `multimix det-metrics`.
#[derive(Debug, Args)]
pub struct DetMetricsArgs {
    /// COCO ground-truth JSON (`images`, `annotations`, `categories`).
    #[arg(long)]
    gt: PathBuf,
    /// COCO results JSON (a list of `{image_id, category_id, bbox, score}`).
    #[arg(long)]
    pred: PathBuf,
    /// Print `{"ap": …, "ap50": …, "ap75": …}` instead of text.
    #[arg(long)]
    json: bool,
}

fn read(path: &Path, flag: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {flag} {}", path.display()))
}

/// Compute and print AP@[0.5:0.95], AP50 and AP75 (pycocotools' `COCOeval`, bbox).
pub fn run(args: DetMetricsArgs) -> Result<()> {
    let gt = GroundTruth::from_json(&read(&args.gt, "--gt")?)
        .with_context(|| format!("--gt {}", args.gt.display()))?;
    let dets = parse_results(&read(&args.pred, "--pred")?)
        .with_context(|| format!("--pred {}", args.pred.display()))?;
    let ap = coco_ap(&gt, &dets).with_context(|| {
        format!(
            "--pred {} does not fit --gt {}",
            args.pred.display(),
            args.gt.display()
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&ap)?);
    } else {
        println!(
            "AP@[0.5:0.95] {:.4}  AP50 {:.4}  AP75 {:.4}  (COCO bbox, 101-point, maxDets 100)",
            ap.ap, ap.ap50, ap.ap75
        );
    }
    Ok(())
}
