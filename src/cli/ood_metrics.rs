//! `multimix ood-metrics`: OOD-detection metrics of two score files.

use anyhow::{bail, Context, Result};
use clap::Args;
use multimix_eval::ood_metrics::{ood_metrics, OodMetrics};
use std::path::{Path, PathBuf};

/// Options of `multimix ood-metrics`.
#[derive(Debug, Args)]
pub struct OodMetricsArgs {
    /// Scores of in-distribution samples, one number per line (higher = more in-distribution).
    #[arg(long = "in", value_name = "FILE")]
    scores_in: PathBuf,
    /// Scores of OOD samples, one number per line.
    #[arg(long = "out", value_name = "FILE")]
    scores_out: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Parse one score per line; blank lines are skipped, anything else must be a finite number.
pub fn parse_scores(text: &str, path: &Path) -> Result<Vec<f32>> {
    let mut scores = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let field = line.trim();
        if field.is_empty() {
            continue;
        }
        match field.parse::<f32>() {
            Ok(v) if v.is_finite() => scores.push(v),
            _ => bail!(
                "{}:{}: `{field}` is not a finite number (expected one score per line)",
                path.display(),
                index + 1
            ),
        }
    }
    if scores.is_empty() {
        bail!(
            "{} holds no scores (expected one number per line)",
            path.display()
        );
    }
    Ok(scores)
}

fn read_scores(path: &Path) -> Result<Vec<f32>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read scores from {}", path.display()))?;
    parse_scores(&text, path)
}

/// The metrics as the JSON object the command prints.
pub fn metrics_json(m: &OodMetrics) -> serde_json::Value {
    serde_json::json!({
        "auroc": m.auroc,
        "aupr_in": m.aupr_in,
        "aupr_out": m.aupr_out,
        "fpr95": m.fpr95,
        "fpr95_ood_positive": m.fpr95_ood_positive,
        "detection_error": m.detection_error,
    })
}

/// Compute and print the metrics.
pub fn run(args: OodMetricsArgs) -> Result<()> {
    let scores_in = read_scores(&args.scores_in)?;
    let scores_out = read_scores(&args.scores_out)?;
    let m = ood_metrics(&scores_in, &scores_out)?;
    if args.json {
        println!("{}", metrics_json(&m));
    } else {
        println!(
            "in-distribution: {} scores, OOD: {} scores (higher = more in-distribution)",
            scores_in.len(),
            scores_out.len()
        );
        println!("AUROC (ID positive)                  {:.6}", m.auroc);
        println!("AUPR-In (ID positive)                {:.6}", m.aupr_in);
        println!("AUPR-Out (OOD positive)              {:.6}", m.aupr_out);
        println!("FPR@95 (ID positive, ODIN)           {:.6}", m.fpr95);
        println!(
            "FPR@95 (OOD positive, OpenOOD)       {:.6}",
            m.fpr95_ood_positive
        );
        println!(
            "detection error                      {:.6}",
            m.detection_error
        );
    }
    Ok(())
}
