//! Out-of-distribution detection metrics, exact to scikit-learn.
//!
//! Scores follow the convention "higher = more in-distribution" (MSP, MaxLogit, Energy, …).
//! The binary curves reproduce `sklearn.metrics.roc_curve` / `precision_recall_curve`
//! (scikit-learn 1.9) step by step: samples are sorted by decreasing score, tied scores form one
//! threshold, counts are exact integers, and the ratios are taken in `f64` as scikit-learn does.
//! Inputs are `f32` (what the models produce); every output is `f64`.
//!
//! Conventions of [`ood_metrics`] (see METHOD.md §5 and peers.md §5.2):
//! * AUROC and AUPR-In treat in-distribution (ID) samples as the positive class;
//! * AUPR-Out treats OOD samples as positive and ranks them by the negated score;
//! * FPR@95 is reported twice: ID positive (ODIN / Hendrycks, the default) and OOD positive
//!   (OpenOOD v1.5 / pytorch-ood). The two are not comparable.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors of the metrics in this crate (OOD detection, calibration, accuracy).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MetricError {
    /// An input set has no samples.
    #[error("{what} is empty")]
    Empty {
        /// Which input.
        what: &'static str,
    },
    /// An input holds NaN or infinite values.
    #[error("{what} contain {count} non-finite value(s), the first at index {first_index}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// How many values are NaN or infinite.
        count: usize,
        /// Index of the first of them.
        first_index: usize,
    },
    /// Two inputs that must align have incompatible lengths.
    #[error("length mismatch: {what} has {got} entries, expected {expected}")]
    LengthMismatch {
        /// Which input.
        what: &'static str,
        /// The length implied by the other inputs.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A binary metric needs samples of a class that is absent.
    #[error("no {class} samples: the metric is undefined")]
    MissingClass {
        /// The missing class ("positive" or "negative").
        class: &'static str,
    },
    /// A class label is not below the number of classes.
    #[error("label {label} at index {index} is out of range for {num_classes} classes")]
    LabelOutOfRange {
        /// Position of the label.
        index: usize,
        /// The label.
        label: u32,
        /// The number of classes.
        num_classes: usize,
    },
    /// A probability lies outside [0, 1].
    #[error("probability {value} at row {row}, class {class} is outside [0, 1] (logits? use calibration_from_logits)")]
    ProbabilityOutOfRange {
        /// Sample index.
        row: usize,
        /// Class index.
        class: usize,
        /// The value.
        value: f32,
    },
    /// A row of probabilities does not sum to one.
    #[error(
        "probabilities of row {row} sum to {sum}, not 1 (logits? use calibration_from_logits)"
    )]
    RowSumNotOne {
        /// Sample index.
        row: usize,
        /// The row sum (in `f64`).
        sum: f64,
    },
    /// A class has no training sample (a class mean is undefined).
    #[error("class {class} has no training sample: every class needs one")]
    EmptyClass {
        /// The class.
        class: usize,
    },
    /// Fewer samples than a method needs.
    #[error("{what}: {got} given, at least {need} needed")]
    TooFewSamples {
        /// Which input.
        what: &'static str,
        /// The number needed.
        need: usize,
        /// The number given.
        got: usize,
    },
    /// A tensor operation inside a metric failed.
    #[error("tensor operation failed: {message}")]
    Tensor {
        /// The cause.
        message: String,
    },
    /// A size parameter is zero.
    #[error("{what} must be at least 1")]
    ZeroSize {
        /// Which parameter.
        what: &'static str,
    },
}

/// Binary ROC curve exactly as `sklearn.metrics.roc_curve(y_true, y_score)` with default
/// arguments (`drop_intermediate=True`, thresholds in decreasing order, first threshold = +inf).
#[derive(Debug, Clone, PartialEq)]
pub struct RocCurve {
    /// False positive rate at each threshold (non-decreasing, from 0 to 1).
    pub fpr: Vec<f64>,
    /// True positive rate at each threshold (non-decreasing, from 0 to 1).
    pub tpr: Vec<f64>,
    /// Decreasing thresholds: `+inf` first, then the kept distinct scores (as `f64`).
    pub thresholds: Vec<f64>,
}

impl RocCurve {
    /// Area under the curve by the trapezoidal rule (`sklearn.metrics.auc(fpr, tpr)`).
    pub fn auc(&self) -> f64 {
        // numpy.trapezoid: Σ (x[i+1] − x[i]) · (y[i+1] + y[i]) / 2
        self.fpr
            .windows(2)
            .zip(self.tpr.windows(2))
            .map(|(x, y)| (x[1] - x[0]) * (y[1] + y[0]) / 2.0)
            .sum()
    }

    /// `fpr[argmax(tpr >= level)]`: the FPR at the first threshold (walking the curve in order)
    /// whose TPR reaches `level`. The curve ends at TPR = 1, so any `level <= 1` is reached.
    pub fn fpr_at_tpr(&self, level: f64) -> f64 {
        self.tpr
            .iter()
            .zip(&self.fpr)
            .find(|(tpr, _)| **tpr >= level)
            .map_or(1.0, |(_, fpr)| *fpr)
    }

    /// Detection error `min over the curve's points of 0.5 (1 − TPR) + 0.5 FPR`.
    pub fn detection_error(&self) -> f64 {
        self.tpr
            .iter()
            .zip(&self.fpr)
            .map(|(tpr, fpr)| 0.5 * (1.0 - tpr) + 0.5 * fpr)
            .fold(f64::INFINITY, f64::min)
    }
}

/// True and false positive counts at each distinct score, scores decreasing
/// (`sklearn.metrics.confusion_matrix_at_thresholds`, unweighted).
struct ThresholdCounts {
    /// Positives with `score >= thresholds[i]`.
    tps: Vec<u64>,
    /// Negatives with `score >= thresholds[i]`.
    fps: Vec<u64>,
    /// The distinct scores, decreasing.
    thresholds: Vec<f32>,
}

impl ThresholdCounts {
    /// Counts of already validated (non-empty, finite, aligned) inputs.
    fn new(positive: &[bool], scores: &[f32]) -> Self {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        // Decreasing score; the order among tied scores does not change any count.
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let mut counts = Self {
            tps: Vec::new(),
            fps: Vec::new(),
            thresholds: Vec::new(),
        };
        let (mut tp, mut fp) = (0u64, 0u64);
        for (rank, &i) in order.iter().enumerate() {
            if positive[i] {
                tp += 1;
            } else {
                fp += 1;
            }
            // A threshold closes where the next score differs (`-0.0 == 0.0` is a tie, as in numpy).
            let last_of_tie = order
                .get(rank + 1)
                .is_none_or(|&next| scores[next] != scores[i]);
            if last_of_tie {
                counts.tps.push(tp);
                counts.fps.push(fp);
                counts.thresholds.push(scores[i]);
            }
        }
        counts
    }

    /// Total number of positives.
    fn positives(&self) -> u64 {
        self.tps.last().copied().unwrap_or(0)
    }

    /// Total number of negatives.
    fn negatives(&self) -> u64 {
        self.fps.last().copied().unwrap_or(0)
    }
}

/// Checks that `positive` and `scores` align, are non-empty and finite.
fn validate_binary(positive: &[bool], scores: &[f32]) -> Result<(), MetricError> {
    if positive.len() != scores.len() {
        return Err(MetricError::LengthMismatch {
            what: "scores",
            expected: positive.len(),
            got: scores.len(),
        });
    }
    validate_scores(scores, "scores")
}

/// Checks that a score set is non-empty and finite, naming it in the error.
fn validate_scores(scores: &[f32], what: &'static str) -> Result<(), MetricError> {
    if scores.is_empty() {
        return Err(MetricError::Empty { what });
    }
    check_finite(scores, what)
}

/// Fails with the number and first index of non-finite values, if any.
pub(crate) fn check_finite(values: &[f32], what: &'static str) -> Result<(), MetricError> {
    let mut bad = values.iter().enumerate().filter(|(_, v)| !v.is_finite());
    match bad.next() {
        None => Ok(()),
        Some((first_index, _)) => Err(MetricError::NonFinite {
            what,
            count: 1 + bad.count(),
            first_index,
        }),
    }
}

/// Binary ROC curve exactly as `sklearn.metrics.roc_curve(positive, scores)` with default
/// arguments: tied scores form one threshold, collinear intermediate points are dropped
/// (`drop_intermediate=True`), and the curve starts at `(0, 0)` with threshold `+inf`.
///
/// Both classes must be present (scikit-learn returns NaN rates with a warning instead).
pub fn roc_curve(positive: &[bool], scores: &[f32]) -> Result<RocCurve, MetricError> {
    validate_binary(positive, scores)?;
    let counts = ThresholdCounts::new(positive, scores);
    roc_from_counts(&counts)
}

/// ROC curve from threshold counts (the body of `sklearn.metrics.roc_curve`).
fn roc_from_counts(counts: &ThresholdCounts) -> Result<RocCurve, MetricError> {
    let (p, n) = (counts.positives(), counts.negatives());
    if p == 0 {
        return Err(MetricError::MissingClass { class: "positive" });
    }
    if n == 0 {
        return Err(MetricError::MissingClass { class: "negative" });
    }
    let k = counts.tps.len();
    // Keep the ends and every corner: a non-zero second difference of fps or tps.
    let second_diff = |v: &[u64], i: usize| v[i + 1] as i64 - 2 * v[i] as i64 + v[i - 1] as i64;
    let keep = |i: usize| {
        k <= 2
            || i == 0
            || i == k - 1
            || second_diff(&counts.fps, i) != 0
            || second_diff(&counts.tps, i) != 0
    };
    let mut curve = RocCurve {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![f64::INFINITY],
    };
    for i in (0..k).filter(|&i| keep(i)) {
        curve.fpr.push(counts.fps[i] as f64 / n as f64);
        curve.tpr.push(counts.tps[i] as f64 / p as f64);
        curve.thresholds.push(f64::from(counts.thresholds[i]));
    }
    Ok(curve)
}

/// `sklearn.metrics.roc_auc_score(positive, scores)`: the trapezoidal area under
/// [`roc_curve`], so tied scores count one half, as in scikit-learn.
///
/// Both classes must be present (scikit-learn returns NaN with a warning instead).
pub fn roc_auc(positive: &[bool], scores: &[f32]) -> Result<f64, MetricError> {
    Ok(roc_curve(positive, scores)?.auc())
}

/// `sklearn.metrics.average_precision_score(positive, scores)`: the step-wise (uninterpolated)
/// area `Σ_i (R_i − R_{i−1}) P_i` over the distinct thresholds in decreasing order.
///
/// At least one positive sample is needed (scikit-learn returns 0 with a warning instead); with
/// no negatives the result is 1.
pub fn average_precision(positive: &[bool], scores: &[f32]) -> Result<f64, MetricError> {
    validate_binary(positive, scores)?;
    let counts = ThresholdCounts::new(positive, scores);
    average_precision_from_counts(&counts)
}

/// Average precision from threshold counts (`_binary_uninterpolated_average_precision`).
fn average_precision_from_counts(counts: &ThresholdCounts) -> Result<f64, MetricError> {
    let p = counts.positives();
    if p == 0 {
        return Err(MetricError::MissingClass { class: "positive" });
    }
    let mut previous_recall = 0.0;
    let mut area = 0.0;
    for (&tp, &fp) in counts.tps.iter().zip(&counts.fps) {
        let recall = tp as f64 / p as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        area += (recall - previous_recall) * precision;
        previous_recall = recall;
    }
    // scikit-learn clips the -0.0 that rounding can produce.
    Ok(area.max(0.0))
}

/// All OOD-detection metrics for one (ID set, OOD set) pair, scores "higher = more ID".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OodMetrics {
    /// Area under the ROC curve, ID positive.
    pub auroc: f64,
    /// Average precision with ID positive and the score as is.
    pub aupr_in: f64,
    /// Average precision with OOD positive and the score negated.
    pub aupr_out: f64,
    /// FPR on OOD data at the first threshold where the TPR on ID data reaches 95 %
    /// (ID positive: the ODIN / Hendrycks convention; the default to report).
    pub fpr95: f64,
    /// Fraction of ID samples flagged OOD when 95 % of OOD samples are caught
    /// (`roc_curve(is_ood, −score)`: the OpenOOD v1.5 / pytorch-ood convention).
    pub fpr95_ood_positive: f64,
    /// `min over the ROC points of 0.5 (1 − TPR) + 0.5 FPR`, ID positive.
    pub detection_error: f64,
}

/// TPR level of the FPR@TPR metrics.
const FPR_AT_TPR_LEVEL: f64 = 0.95;

/// All OOD metrics of [`OodMetrics`] from the scores of ID samples and of OOD samples
/// (higher = more in-distribution). Both sets must be non-empty and finite.
pub fn ood_metrics(scores_in: &[f32], scores_out: &[f32]) -> Result<OodMetrics, MetricError> {
    validate_scores(scores_in, "in-distribution scores")?;
    validate_scores(scores_out, "OOD scores")?;
    let is_id: Vec<bool> = scores_in
        .iter()
        .map(|_| true)
        .chain(scores_out.iter().map(|_| false))
        .collect();
    let is_ood: Vec<bool> = is_id.iter().map(|id| !id).collect();
    let score: Vec<f32> = scores_in.iter().chain(scores_out).copied().collect();
    let negated: Vec<f32> = score.iter().map(|s| -s).collect();

    let counts_in = ThresholdCounts::new(&is_id, &score);
    let counts_out = ThresholdCounts::new(&is_ood, &negated);
    let roc_in = roc_from_counts(&counts_in)?;
    let roc_out = roc_from_counts(&counts_out)?;
    Ok(OodMetrics {
        auroc: roc_in.auc(),
        aupr_in: average_precision_from_counts(&counts_in)?,
        aupr_out: average_precision_from_counts(&counts_out)?,
        fpr95: roc_in.fpr_at_tpr(FPR_AT_TPR_LEVEL),
        fpr95_ood_positive: roc_out.fpr_at_tpr(FPR_AT_TPR_LEVEL),
        detection_error: roc_in.detection_error(),
    })
}
