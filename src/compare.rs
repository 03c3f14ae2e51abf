//! `multimix compare`: the reports of several runs side by side, as one markdown table — the
//! table a paper prints (accuracy, calibration, robustness, OOD detection, embedding geometry).

use anyhow::{bail, Context, Result};
use multimix_recipes::run::{RunDir, REPORT_JSON};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// A run's name (its directory's) and its `report.json`.
pub struct RunReport {
    /// The run directory's name.
    pub name: String,
    /// The mixing method of its `config.toml`, when it has one.
    pub method: Option<String>,
    /// The parsed `report.json`.
    pub report: Value,
}

/// Read the report (and the method) of the run directory `dir`.
pub fn read_run(dir: &Path) -> Result<RunReport> {
    let path = dir.join(REPORT_JSON);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} has no readable {REPORT_JSON}: run `multimix eval --checkpoint {}` first",
            dir.display(),
            dir.display()
        )
    })?;
    let report: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    if !report.is_object() {
        bail!("{}: not a report (expected a JSON object)", path.display());
    }
    let method = RunDir::open(dir)
        .and_then(|r| r.read_config())
        .ok()
        .map(|c| c.mix.method.to_string());
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    Ok(RunReport {
        name,
        method,
        report,
    })
}

/// A fraction as a percentage with 2 decimals, or `–` when absent.
fn pct(v: Option<&Value>) -> String {
    v.and_then(Value::as_f64)
        .map_or("–".into(), |x| format!("{:.2}", 100.0 * x))
}

/// Accuracy under `attack` at the largest ε of the report's robustness curve, with that ε.
fn attack_at_max_eps(report: &Value, attack: &str) -> Option<(f64, f64)> {
    let points = report.get("robustness")?.get(attack)?.as_array()?;
    points
        .iter()
        .filter_map(|p| Some((p.get("eps")?.as_f64()?, p.get("accuracy")?.as_f64()?)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// The markdown table of `runs`: accuracy, ECE, NLL, FGSM and PGD accuracy (at the largest ε
/// of each run's curve), MSP AUROC and FPR@95 for every OOD set any run has, alignment and
/// uniformity. Percentages except NLL and the geometry; `–` where a run lacks a number.
pub fn compare_table(runs: &[RunReport]) -> String {
    let sets: BTreeSet<String> = runs
        .iter()
        .filter_map(|r| r.report.get("ood")?.as_object())
        .flat_map(|o| o.keys().cloned())
        .collect();
    let mut head = vec![
        "run".to_string(),
        "method".into(),
        "acc".into(),
        "ECE".into(),
        "NLL".into(),
        "FGSM acc".into(),
        "PGD acc".into(),
    ];
    for s in &sets {
        head.push(format!("{s} AUROC"));
        head.push(format!("{s} FPR@95"));
    }
    head.extend(["alignment".into(), "uniformity".into()]);
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for r in runs {
        let rep = &r.report;
        let attack = |a: &str| {
            attack_at_max_eps(rep, a).map_or("–".into(), |(eps, acc)| {
                format!("{:.2} (ε {:.0}/255)", 100.0 * acc, eps * 255.0)
            })
        };
        let number = |v: Option<&Value>, digits: usize| {
            v.and_then(Value::as_f64)
                .map_or("–".into(), |x| format!("{x:.digits$}"))
        };
        let mut row = vec![
            r.name.clone(),
            r.method.clone().unwrap_or_else(|| "–".into()),
            pct(rep.get("accuracy")),
            pct(rep.get("ece")),
            number(rep.get("nll"), 4),
            attack("fgsm"),
            attack("pgd"),
        ];
        for s in &sets {
            let msp = rep
                .get("ood")
                .and_then(|o| o.get(s))
                .and_then(|o| o.get("msp"));
            row.push(pct(msp.and_then(|m| m.get("auroc"))));
            row.push(pct(msp.and_then(|m| m.get("fpr95"))));
        }
        let geometry = rep.get("geometry");
        row.push(number(geometry.and_then(|g| g.get("alignment")), 4));
        row.push(number(geometry.and_then(|g| g.get("uniformity")), 4));
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out.push_str(
        "\nacc, ECE, attack accuracy, AUROC and FPR@95 in %; OOD scores by MSP, FPR@95 with \
         in-distribution positive (each report.md states its conventions).\n",
    );
    out
}
