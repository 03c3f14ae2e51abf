//! The evaluation report: `report.json` (machine-readable) and `report.md` (for people), each
//! stating the conventions its numbers follow.

use crate::calibration::ReliabilityBin;
use crate::ood_metrics::OodMetrics;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Accuracy under FGSM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FgsmReport {
    /// ε in [0, 1] pixel units.
    pub eps: f64,
    /// Top-1 accuracy on the adversarial images.
    pub accuracy: f64,
    /// `1 - accuracy`.
    pub error: f64,
}

/// OOD metrics of each detector on one OOD set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodScores {
    /// Maximum softmax probability.
    pub msp: OodMetrics,
}

/// The conventions every report states.
pub const CONVENTIONS: &[(&str, &str)] = &[
    ("images", "attacks and detectors take images in [0, 1]; the normalization is inside the model"),
    ("ece", "15 equal-width bins over the max softmax probability (torchmetrics, norm=l1)"),
    ("nll", "mean negative log-likelihood of the true class"),
    ("brier", "mean over images of the squared L2 distance between probabilities and one-hot labels"),
    ("fgsm", "x_adv = clamp(x + eps * sign(grad_x CE(y, f(x))), 0, 1), untargeted, model in eval mode"),
    ("ood", "scores: higher = more in-distribution; auroc and aupr_in with in-distribution as positive, aupr_out with OOD positive"),
    ("fpr95", "FPR on OOD data at the first threshold (scikit-learn roc_curve order) where the TPR on in-distribution data reaches 95% (in-distribution positive: ODIN / Hendrycks convention)"),
    ("fpr95_ood_positive", "FPR on in-distribution data when 95% of OOD data is detected (OOD positive: OpenOOD v1.5 / pytorch-ood convention)"),
];

/// Everything `multimix eval` measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The test set.
    pub data: String,
    /// Number of test images.
    pub test_images: usize,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Expected calibration error.
    pub ece: f64,
    /// Negative log-likelihood.
    pub nll: f64,
    /// Brier score.
    pub brier: f64,
    /// Reliability diagram bins.
    pub reliability: Vec<ReliabilityBin>,
    /// FGSM robustness.
    pub fgsm: FgsmReport,
    /// OOD detection per OOD set.
    pub ood: BTreeMap<String, OodScores>,
}

impl Report {
    /// `report.json`: the report with its conventions, pretty-printed.
    pub fn to_json(&self) -> serde_json::Result<String> {
        let mut value = serde_json::to_value(self)?;
        if let serde_json::Value::Object(map) = &mut value {
            let conventions: serde_json::Map<String, serde_json::Value> = CONVENTIONS
                .iter()
                .map(|(k, v)| (k.to_string(), (*v).into()))
                .collect();
            map.insert("conventions".into(), conventions.into());
        }
        serde_json::to_string_pretty(&value)
    }

    /// `report.md`: tables for people, with the conventions.
    pub fn to_markdown(&self, title: &str) -> String {
        let pct = |v: f64| format!("{:.2}", 100.0 * v);
        let mut s = String::new();
        let _ = writeln!(s, "# {title}\n");
        let _ = writeln!(
            s,
            "Test set: `{}` ({} images).\n",
            self.data, self.test_images
        );
        let _ = writeln!(
            s,
            "| accuracy (%) | ECE (%) | NLL | Brier | FGSM ε | FGSM accuracy (%) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        let _ = writeln!(
            s,
            "| {} | {} | {:.4} | {:.4} | {:.4} ({:.0}/255) | {} |\n",
            pct(self.accuracy),
            pct(self.ece),
            self.nll,
            self.brier,
            self.fgsm.eps,
            self.fgsm.eps * 255.0,
            pct(self.fgsm.accuracy)
        );
        if !self.ood.is_empty() {
            let _ = writeln!(s, "## Out-of-distribution detection (MSP)\n");
            let _ = writeln!(s, "| OOD set | AUROC (%) | AUPR-In (%) | AUPR-Out (%) | FPR@95 (%) | FPR@95, OOD positive (%) | detection error (%) |");
            let _ = writeln!(s, "|---|---|---|---|---|---|---|");
            for (name, o) in &self.ood {
                let m = &o.msp;
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} | {} | {} | {} |",
                    pct(m.auroc),
                    pct(m.aupr_in),
                    pct(m.aupr_out),
                    pct(m.fpr95),
                    pct(m.fpr95_ood_positive),
                    pct(m.detection_error)
                );
            }
            s.push('\n');
        }
        let _ = writeln!(s, "## Conventions\n");
        for (k, v) in CONVENTIONS {
            let _ = writeln!(s, "- **{k}**: {v}");
        }
        s
    }
}
