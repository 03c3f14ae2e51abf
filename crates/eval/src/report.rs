//! The evaluation report: `report.json` (machine-readable), `report.md` (for people) and its PNG
//! plots, each stating the conventions its numbers follow.

use crate::calibration::ReliabilityBin;
use crate::detectors::Detector;
use crate::geometry::Geometry;
use crate::ood_metrics::{OodMetrics, RocCurve};
use crate::plot::{Figure, Legend, Mark, PlotError, Series, PALETTE};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Accuracy under FGSM at the headline ε.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FgsmReport {
    /// ε in [0, 1] pixel units.
    pub eps: f64,
    /// Top-1 accuracy on the adversarial images.
    pub accuracy: f64,
    /// `1 - accuracy`.
    pub error: f64,
}

/// Accuracy under one attack at one ε.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AttackPoint {
    /// ε in [0, 1] pixel units.
    pub eps: f64,
    /// Top-1 accuracy on the adversarial images.
    pub accuracy: f64,
    /// `1 - accuracy`.
    pub error: f64,
}

impl AttackPoint {
    /// The point at `eps` with accuracy `accuracy`.
    pub fn new(eps: f64, accuracy: f64) -> Self {
        Self {
            eps,
            accuracy,
            error: 1.0 - accuracy,
        }
    }
}

/// OOD metrics of each detector on one OOD set (MSP always; the others when run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodScores {
    /// Maximum softmax probability.
    pub msp: OodMetrics,
    /// Maximum logit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxlogit: Option<OodMetrics>,
    /// Energy score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<OodMetrics>,
    /// ODIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub odin: Option<OodMetrics>,
    /// Mahalanobis distance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mahalanobis: Option<OodMetrics>,
    /// k-th nearest neighbour distance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn: Option<OodMetrics>,
}

impl OodScores {
    /// Gather per-detector metrics (`metrics` must hold MSP; NaN metrics stand in otherwise).
    pub fn from_metrics(metrics: &BTreeMap<Detector, OodMetrics>) -> Self {
        let get = |d: Detector| metrics.get(&d).copied();
        let nan = OodMetrics {
            auroc: f64::NAN,
            aupr_in: f64::NAN,
            aupr_out: f64::NAN,
            fpr95: f64::NAN,
            fpr95_ood_positive: f64::NAN,
            detection_error: f64::NAN,
        };
        Self {
            msp: get(Detector::Msp).unwrap_or(nan),
            maxlogit: get(Detector::MaxLogit),
            energy: get(Detector::Energy),
            odin: get(Detector::Odin),
            mahalanobis: get(Detector::Mahalanobis),
            knn: get(Detector::Knn),
        }
    }

    /// The metrics of `detector`, if it was run.
    pub fn get(&self, detector: Detector) -> Option<&OodMetrics> {
        match detector {
            Detector::Msp => Some(&self.msp),
            Detector::MaxLogit => self.maxlogit.as_ref(),
            Detector::Energy => self.energy.as_ref(),
            Detector::Odin => self.odin.as_ref(),
            Detector::Mahalanobis => self.mahalanobis.as_ref(),
            Detector::Knn => self.knn.as_ref(),
        }
    }

    /// The detectors that were run with their metrics, in report order.
    pub fn iter(&self) -> impl Iterator<Item = (Detector, &OodMetrics)> {
        Detector::ALL
            .into_iter()
            .filter_map(|d| self.get(d).map(|m| (d, m)))
    }
}

/// The 2-D projection of test embeddings, for the plot.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EmbeddingPlot {
    /// Projected points.
    pub points: Vec<(f64, f64)>,
    /// Their classes.
    pub labels: Vec<u32>,
    /// Class names (index = label).
    pub class_names: Vec<String>,
    /// Variance fraction along each axis.
    pub explained_variance_ratio: [f64; 2],
}

/// Data behind the plots that is not part of `report.json`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Figures {
    /// ROC curves (ID positive) per OOD set, one per detector.
    pub roc: BTreeMap<String, Vec<(String, RocCurve)>>,
    /// The embedding projection.
    pub embedding: Option<EmbeddingPlot>,
}

/// The conventions every report states.
pub const CONVENTIONS: &[(&str, &str)] = &[
    ("images", "attacks and detectors take images in [0, 1]; the normalization is inside the model; the model is in eval mode"),
    ("accuracy", "top-1, the first maximal logit on ties"),
    ("ece", "15 equal-width bins over the max softmax probability, |acc - conf| weighted by bin size (torchmetrics CalibrationError(n_bins=15, norm=\"l1\")); mce is the largest gap (norm=\"max\")"),
    ("reliability", "the 15 bins [lower, upper) with their count, accuracy and mean confidence; reliability_saturated is torchmetrics' extra bucket of confidences exactly 1.0, which counts in the ECE like a bin"),
    ("nll", "mean negative log-likelihood of the true class (F.cross_entropy)"),
    ("brier", "mean over images of the squared L2 distance between probabilities and one-hot labels, in [0, 2]"),
    ("fgsm", "x_adv = clamp(x + eps * sign(grad_x CE(y, f(x))), 0, 1), untargeted (torchattacks FGSM); error = 1 - accuracy"),
    ("pgd", "from x_0 = clamp(x + U[-eps, eps), 0, 1) (seeded host RNG): x_t+1 = clamp(x + clamp(x_t + alpha * sign(grad) - x, -eps, eps), 0, 1), alpha = eps / 4, 10 steps (torchattacks PGD; 8/255, 2/255, 10 at the default)"),
    ("robustness", "accuracy under each attack for each eps, eps in [0, 1] pixel units (8/255 = 0.0314)"),
    ("ood", "scores: higher = more in-distribution; auroc and aupr_in with in-distribution as positive, aupr_out with OOD positive and the score negated; ties as in scikit-learn roc_auc_score / average_precision_score"),
    ("fpr95", "FPR on OOD data at the first threshold (scikit-learn roc_curve order) where the TPR on in-distribution data reaches 95% (in-distribution positive: ODIN / Hendrycks convention)"),
    ("fpr95_ood_positive", "FPR on in-distribution data when 95% of OOD data is detected (OOD positive: OpenOOD v1.5 / pytorch-ood convention)"),
    ("detection_error", "min over thresholds of 0.5 (1 - TPR) + 0.5 FPR, in-distribution positive"),
    ("msp", "max softmax probability (Hendrycks & Gimpel 2017)"),
    ("maxlogit", "max logit (Hendrycks et al. 2022)"),
    ("energy", "T * logsumexp(logits / T), T = 1 (Liu et al. 2020)"),
    ("odin", "max softmax(f(x') / T), x' = x - eps * sign(grad_x CE(argmax, f(x) / T)), T = 1000, eps = 0.0014 in [0, 1] pixel units, no clamp (Liang et al. 2018; pytorch-ood / OpenOOD)"),
    ("mahalanobis", "-min_c (z - mu_c)^T pinv(S) (z - mu_c) on the pooled penultimate features z; class means mu_c and one shared covariance S fit on the training set (Lee et al. 2018; OpenOOD MDS); with mahalanobis_eps, on x' = x - eps * sign(grad_x (z - mu_c*)^T pinv(S) (z - mu_c*)), c* the closest class, eps in [0, 1] pixel units, no clamp (pytorch-ood MahalanobisODIN), otherwise no input pre-processing"),
    ("knn", "-(Euclidean distance to the k-th nearest training feature), k = 50, features L2-normalized (Sun et al. 2022; OpenOOD's faiss score is the squared distance: same ranking)"),
    ("geometry", "on the L2-normalized pooled penultimate features of the first geometry_images test images: alignment = mean over same-class pairs of ||u - v||^2 (lower = tighter classes), uniformity = log mean over all pairs of exp(-2 ||u - v||^2) (lower = more uniform) (Wang & Isola 2020)"),
    ("projection", "embedding.png: the same features projected on their first two principal components (PCA), colored by class"),
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
    /// Maximum calibration error.
    pub mce: f64,
    /// Negative log-likelihood.
    pub nll: f64,
    /// Brier score.
    pub brier: f64,
    /// Reliability diagram bins.
    pub reliability: Vec<ReliabilityBin>,
    /// The bucket of confidences exactly 1.0 (torchmetrics' extra bucket).
    pub reliability_saturated: ReliabilityBin,
    /// FGSM robustness at the headline ε.
    pub fgsm: FgsmReport,
    /// Accuracy under each attack (`"fgsm"`, `"pgd"`) for each ε.
    pub robustness: BTreeMap<String, Vec<AttackPoint>>,
    /// PGD steps, when PGD was run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgd_steps: Option<usize>,
    /// OOD detection per OOD set.
    pub ood: BTreeMap<String, OodScores>,
    /// ε of the Mahalanobis detector's input pre-processing, when it was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mahalanobis_eps: Option<f64>,
    /// Alignment and uniformity of the test embeddings.
    pub geometry: Option<Geometry>,
    /// How many test embeddings the geometry and the projection use.
    pub geometry_images: usize,
    /// Plot data (not serialized).
    #[serde(skip)]
    pub figures: Figures,
}

/// A file-name-safe version of an OOD set's name (`folder:/a/b` → `folder__a_b`).
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
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

    /// The plots [`Report::save_plots`] writes: file name and caption.
    pub fn plot_files(&self) -> Vec<(String, String)> {
        let mut files = vec![(
            "reliability.png".to_string(),
            "Reliability diagram".to_string(),
        )];
        if !self.robustness.is_empty() {
            files.push((
                "robustness.png".into(),
                "Accuracy under attack against ε".into(),
            ));
        }
        for name in self.figures.roc.keys() {
            files.push((
                format!("roc_{}.png", file_stem(name)),
                format!("ROC curves, OOD set `{name}`"),
            ));
        }
        if self.figures.embedding.is_some() {
            files.push((
                "embedding.png".into(),
                "Test embeddings, first two principal components".into(),
            ));
        }
        files
    }

    /// Write every plot of [`Report::plot_files`] into `dir` (atomically, file by file).
    pub fn save_plots(&self, dir: &Path) -> Result<(), PlotError> {
        for (file, _) in self.plot_files() {
            let figure = if file == "reliability.png" {
                self.reliability_figure()
            } else if file == "robustness.png" {
                self.robustness_figure()
            } else if file == "embedding.png" {
                match &self.figures.embedding {
                    Some(e) => embedding_figure(e),
                    None => continue,
                }
            } else {
                let Some((name, curves)) = self
                    .figures
                    .roc
                    .iter()
                    .find(|(name, _)| file == format!("roc_{}.png", file_stem(name)))
                else {
                    continue;
                };
                roc_figure(name, curves)
            };
            figure.save_png(&dir.join(&file))?;
        }
        Ok(())
    }

    /// Accuracy (bars) and mean confidence per bin, against the diagonal of perfect calibration.
    pub fn reliability_figure(&self) -> Figure {
        let width = self
            .reliability
            .first()
            .map_or(1.0 / 15.0, |b| b.upper - b.lower);
        let centers = |f: fn(&ReliabilityBin) -> f64| -> Vec<(f64, f64)> {
            self.reliability
                .iter()
                .filter(|b| b.count > 0)
                .map(|b| (0.5 * (b.lower + b.upper), f(b)))
                .collect()
        };
        let mut fig = Figure::new(format!(
            "Reliability diagram (ECE {:.2}%)",
            100.0 * self.ece
        ))
        .labels("confidence (max softmax probability)", "accuracy")
        .x_range(0.0, 1.0)
        .y_range(0.0, 1.0)
        .legend(Legend::UpperLeft)
        // The gap first, so that where accuracy exceeds confidence the bar covers it (the
        // confidence dots still mark it).
        .series(Series {
            name: "gap to mean confidence".into(),
            points: centers(|b| b.confidence),
            bottoms: centers(|b| b.accuracy).into_iter().map(|p| p.1).collect(),
            mark: Mark::Bars { width },
            color: Some(PALETTE[3]),
            opacity: 0.3,
        })
        .series(Series {
            name: "accuracy per bin".into(),
            points: centers(|b| b.accuracy),
            bottoms: Vec::new(),
            mark: Mark::Bars { width },
            color: Some(PALETTE[0]),
            opacity: 1.0,
        })
        .series(Series {
            name: "mean confidence per bin".into(),
            points: centers(|b| b.confidence),
            bottoms: Vec::new(),
            mark: Mark::Scatter { radius: 3 },
            color: Some(PALETTE[3]),
            opacity: 1.0,
        })
        .reference_line("perfect calibration", vec![(0.0, 0.0), (1.0, 1.0)]);
        let s = &self.reliability_saturated;
        if s.count > 0 {
            fig = fig.series(Series {
                name: format!("confidence = 1.0 ({} images)", s.count),
                points: vec![(1.0, s.accuracy)],
                bottoms: Vec::new(),
                mark: Mark::Scatter { radius: 4 },
                color: Some(PALETTE[2]),
                opacity: 1.0,
            });
        }
        fig
    }

    /// Accuracy against ε (in 1/255 units) per attack, from the clean accuracy at ε = 0.
    pub fn robustness_figure(&self) -> Figure {
        let mut fig = Figure::new("Accuracy under attack")
            .labels("eps (x 1/255)", "top-1 accuracy")
            .y_range(0.0, 1.0)
            .legend(Legend::UpperRight);
        for (i, (attack, points)) in self.robustness.iter().enumerate() {
            let color = Some(PALETTE[i % PALETTE.len()]);
            let mut line = vec![(0.0, self.accuracy)];
            line.extend(points.iter().map(|p| (p.eps * 255.0, p.accuracy)));
            let label = match (attack.as_str(), self.pgd_steps) {
                ("pgd", Some(steps)) => format!("PGD-{steps}"),
                (a, _) => a.to_ascii_uppercase(),
            };
            let series = |name: String, points, mark| Series {
                name,
                points,
                bottoms: Vec::new(),
                mark,
                color,
                opacity: 1.0,
            };
            fig = fig
                .series(series(label, line.clone(), Mark::Line { dashed: false }))
                .series(series(String::new(), line, Mark::Scatter { radius: 3 }));
        }
        fig
    }

    /// `report.md`: tables for people, the plots, and the conventions.
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
            "| accuracy (%) | ECE (%) | MCE (%) | NLL | Brier | FGSM ε | FGSM accuracy (%) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.4} | {:.4} | {:.4} ({:.0}/255) | {} |\n",
            pct(self.accuracy),
            pct(self.ece),
            pct(self.mce),
            self.nll,
            self.brier,
            self.fgsm.eps,
            self.fgsm.eps * 255.0,
            pct(self.fgsm.accuracy)
        );
        if !self.robustness.is_empty() {
            let _ = writeln!(s, "## Robustness (top-1 accuracy under attack, %)\n");
            let eps: Vec<f64> = {
                let mut e: Vec<f64> = self.robustness.values().flatten().map(|p| p.eps).collect();
                e.sort_by(f64::total_cmp);
                e.dedup();
                e
            };
            let header: Vec<String> = eps
                .iter()
                .map(|e| format!("ε = {:.0}/255", e * 255.0))
                .collect();
            let _ = writeln!(s, "| attack | clean | {} |", header.join(" | "));
            let _ = writeln!(s, "|---|---|{}", "---|".repeat(eps.len()));
            for (attack, points) in &self.robustness {
                let cells: Vec<String> = eps
                    .iter()
                    .map(|e| {
                        points
                            .iter()
                            .find(|p| p.eps == *e)
                            .map_or("".into(), |p| pct(p.accuracy))
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "| {attack} | {} | {} |",
                    pct(self.accuracy),
                    cells.join(" | ")
                );
            }
            s.push('\n');
        }
        if !self.ood.is_empty() {
            let _ = writeln!(s, "## Out-of-distribution detection\n");
            let _ = writeln!(s, "| OOD set | detector | AUROC (%) | AUPR-In (%) | AUPR-Out (%) | FPR@95, ID positive (%) | FPR@95, OOD positive (%) | detection error (%) |");
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
            for (name, o) in &self.ood {
                for (d, m) in o.iter() {
                    let _ = writeln!(
                        s,
                        "| {name} | {d} | {} | {} | {} | {} | {} | {} |",
                        pct(m.auroc),
                        pct(m.aupr_in),
                        pct(m.aupr_out),
                        pct(m.fpr95),
                        pct(m.fpr95_ood_positive),
                        pct(m.detection_error)
                    );
                }
            }
            s.push('\n');
        }
        if let Some(g) = &self.geometry {
            let _ = writeln!(
                s,
                "## Embedding geometry ({} test images)\n",
                self.geometry_images
            );
            let _ = writeln!(s, "| alignment | uniformity |\n|---|---|");
            let _ = writeln!(s, "| {:.4} | {:.4} |\n", g.alignment, g.uniformity);
        }
        let _ = writeln!(s, "## Plots\n");
        for (file, caption) in self.plot_files() {
            let _ = writeln!(s, "![{caption}]({file})\n");
        }
        let _ = writeln!(s, "## Conventions\n");
        for (k, v) in CONVENTIONS {
            let _ = writeln!(s, "- **{k}**: {v}");
        }
        s
    }
}

/// ROC curves (TPR on in-distribution data against FPR on OOD data) of each detector.
pub fn roc_figure(set: &str, curves: &[(String, RocCurve)]) -> Figure {
    let mut fig = Figure::new(format!("ROC, in-distribution vs `{set}`"))
        .labels(
            "false positive rate (OOD accepted)",
            "true positive rate (ID accepted)",
        )
        .x_range(0.0, 1.0)
        .y_range(0.0, 1.0)
        .legend(Legend::LowerRight);
    for (name, curve) in curves {
        let points = curve
            .fpr
            .iter()
            .copied()
            .zip(curve.tpr.iter().copied())
            .collect();
        fig = fig.line(
            format!("{name} (AUROC {:.1}%)", 100.0 * curve.auc()),
            points,
        );
    }
    fig.reference_line("chance", vec![(0.0, 0.0), (1.0, 1.0)])
}

/// The 2-D projection, one color per class.
pub fn embedding_figure(e: &EmbeddingPlot) -> Figure {
    let mut fig = Figure::new("Test embeddings (PCA)")
        .labels(
            format!(
                "PC 1 ({:.1}% of variance)",
                100.0 * e.explained_variance_ratio[0]
            ),
            format!(
                "PC 2 ({:.1}% of variance)",
                100.0 * e.explained_variance_ratio[1]
            ),
        )
        .size(640, 560)
        .legend(Legend::UpperRight);
    let classes = e.labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    for class in 0..classes {
        let points: Vec<(f64, f64)> = e
            .points
            .iter()
            .zip(&e.labels)
            .filter(|(_, &y)| y as usize == class)
            .map(|(p, _)| *p)
            .collect();
        let name = e
            .class_names
            .get(class)
            .cloned()
            .unwrap_or_else(|| class.to_string());
        fig = fig.series(Series {
            name,
            points,
            bottoms: Vec::new(),
            mark: Mark::Scatter { radius: 1 },
            color: Some(PALETTE[class % PALETTE.len()]),
            opacity: 0.8,
        });
    }
    fig
}
