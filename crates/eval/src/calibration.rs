//! Classifier calibration: top-1 accuracy, ECE / MCE with a reliability diagram, NLL and Brier
//! score, exact to torchmetrics 1.9 and scikit-learn 1.9.
//!
//! ECE and MCE follow `torchmetrics.classification.MulticlassCalibrationError(num_classes,
//! n_bins, norm="l1" | "max")`:
//! * confidence = the largest probability of a row (as `f32`), prediction = its index, the
//!   first one on ties (`torch.max(dim=1)` / `torch.argmax`);
//! * the bin edges are torch's `float32` `torch.linspace(0, 1, n_bins + 1)` ([`bin_boundaries`]);
//! * a confidence `c` falls in bin `b` when `edge[b] <= c < edge[b + 1]`
//!   (`torch.bucketize(c, edges, right=True) - 1`): a confidence exactly on an inner edge goes to
//!   the bin above it, and a confidence of exactly 1.0 goes to an extra bucket `[1, 1]`, the
//!   `(n_bins + 1)`-th of torchmetrics' `_binning_bucketize` (it allocates
//!   `len(bin_boundaries)` buckets). Saturated `f32` softmax outputs are exactly 1.0, so this
//!   bucket matters for over-confident models. [`Calibration`] keeps it apart from the
//!   `n_bins` bins of the reliability diagram ([`Calibration::saturated`]), and the ECE sums
//!   over both, as torchmetrics does;
//! * ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|, MCE = max_b |acc(B_b) − conf(B_b)|, an empty
//!   bin having accuracy and confidence 0 (torch's `nan_to_num`).
//!
//! torchmetrics accumulates in `f32`; this module bins exactly as it does and accumulates in `f64`
//! (the fixtures check both the bins and the `f64` values).
//!
//! NLL = mean of −ln p_label with p clamped below at [`NLL_PROB_FLOOR`] (from logits it is the
//! exact cross-entropy, `F.cross_entropy`). Brier = mean over rows of Σ_c (p_c − y_c)², the
//! original multiclass score of Brier (1950), i.e. `sklearn.metrics.brier_score_loss(y, p,
//! labels=range(C), scale_by_half=False)`; it lies in [0, 2].

use serde::{Deserialize, Serialize};

use crate::ood_metrics::{check_finite, MetricError};

/// Smallest probability used in the NLL of [`calibration`]: the smallest normal `f32`, so one
/// sample contributes at most −ln(1.18e-38) ≈ 87.3 (a zero probability would give +inf).
pub const NLL_PROB_FLOOR: f64 = f32::MIN_POSITIVE as f64;

/// Largest accepted |Σ_c p_c − 1| for a row of probabilities.
pub const ROW_SUM_TOLERANCE: f64 = 1e-3;

/// Calibration of a classifier, from probabilities and labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Top-1 accuracy (argmax, first index on ties).
    pub accuracy: f64,
    /// Expected calibration error (torchmetrics `norm="l1"`), in [0, 1].
    pub ece: f64,
    /// Maximum calibration error (torchmetrics `norm="max"`), in [0, 1].
    pub mce: f64,
    /// Mean negative log-likelihood of the labels (natural log).
    pub nll: f64,
    /// Multiclass Brier score, mean of Σ_c (p_c − y_c)², in [0, 2].
    pub brier: f64,
    /// Reliability diagram: the `n_bins` equal-width bins `[lower, upper)`.
    pub bins: Vec<ReliabilityBin>,
    /// torchmetrics' extra bucket `[1, 1]` of confidences exactly 1.0 (see the module
    /// documentation); it counts in the ECE and the MCE like a bin.
    pub saturated: ReliabilityBin,
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Lower edge (inclusive).
    pub lower: f64,
    /// Upper edge (exclusive; inclusive for the saturated bucket `[1, 1]`).
    pub upper: f64,
    /// Number of samples whose confidence falls in the bin.
    pub count: usize,
    /// Fraction of them predicted correctly (0 when empty).
    pub accuracy: f64,
    /// Their mean confidence (0 when empty).
    pub confidence: f64,
}

/// The `n_bins + 1` bin edges torchmetrics uses for `float32` confidences:
/// `torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)` as torch computes it on CPU: with
/// `step = 1 / n_bins` in `f32`, `step · i` below `steps / 2` and the fused multiply-add
/// `1 − step · (steps − 1 − i)` from there (torch's x86-64 kernels are compiled with FMA
/// contraction; checked against torch 2.15 for `n_bins` up to 999, the fixtures hold 1..=64).
pub fn bin_boundaries(n_bins: usize) -> Vec<f32> {
    let steps = n_bins + 1;
    let step = 1.0f32 / n_bins as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step * i as f32
            } else {
                (-step).mul_add((steps - 1 - i) as f32, 1.0)
            }
        })
        .collect()
}

/// Calibration of a classifier from probabilities (`probs`: rows of an N×C matrix, row-major,
/// each row in [0, 1] summing to 1 within [`ROW_SUM_TOLERANCE`]) and labels in `0..num_classes`,
/// with `n_bins` equal-width confidence bins (15 is the standard).
pub fn calibration(
    probs: &[f32],
    labels: &[u32],
    num_classes: usize,
    n_bins: usize,
) -> Result<Calibration, MetricError> {
    validate_rows(probs, labels, num_classes, "probabilities")?;
    validate_probabilities(probs, num_classes)?;
    require_nonzero(n_bins, "n_bins")?;
    // NLL = mean −ln max(p[label], floor)
    let nll = mean(
        rows(probs, num_classes)
            .zip(labels)
            .map(|(row, &y)| -f64::from(row[y as usize]).max(NLL_PROB_FLOOR).ln()),
    );
    Ok(summarize(probs, labels, num_classes, n_bins, nll))
}

/// Convenience: the (numerically stable, `f64`) softmax of `logits` rounded to `f32`, then
/// [`calibration`]; the NLL is the exact cross-entropy `mean(logsumexp(z) − z_label)`
/// (`F.cross_entropy`), with no floor.
pub fn calibration_from_logits(
    logits: &[f32],
    labels: &[u32],
    num_classes: usize,
    n_bins: usize,
) -> Result<Calibration, MetricError> {
    validate_rows(logits, labels, num_classes, "logits")?;
    require_nonzero(n_bins, "n_bins")?;
    let mut probs = Vec::with_capacity(logits.len());
    let mut nll_terms = Vec::with_capacity(labels.len());
    for (row, &y) in rows(logits, num_classes).zip(labels) {
        let lse = log_sum_exp(row);
        probs.extend(row.iter().map(|&z| (f64::from(z) - lse).exp() as f32));
        nll_terms.push(lse - f64::from(row[y as usize]));
    }
    let nll = mean(nll_terms.into_iter());
    Ok(summarize(&probs, labels, num_classes, n_bins, nll))
}

/// Top-1 accuracy of logits or probabilities (rows of N×C, row-major): the fraction of rows
/// whose largest entry (the first one on ties, as `torch.argmax`) is at the label.
pub fn accuracy(
    logits_or_probs: &[f32],
    labels: &[u32],
    num_classes: usize,
) -> Result<f64, MetricError> {
    validate_rows(
        logits_or_probs,
        labels,
        num_classes,
        "logits or probabilities",
    )?;
    Ok(mean(rows(logits_or_probs, num_classes).zip(labels).map(
        |(row, &y)| f64::from(u8::from(argmax(row).0 == y as usize)),
    )))
}

/// Accuracy, ECE, MCE, Brier and the bins of validated probabilities, with a given NLL.
fn summarize(
    probs: &[f32],
    labels: &[u32],
    num_classes: usize,
    n_bins: usize,
    nll: f64,
) -> Calibration {
    let edges = bin_boundaries(n_bins);
    // One accumulator per torchmetrics bucket: n_bins bins, then [1, 1].
    let mut counts = vec![0usize; n_bins + 1];
    let mut correct = vec![0usize; n_bins + 1];
    let mut conf_sums = vec![0.0f64; n_bins + 1];
    let mut brier_sum = 0.0f64;
    for (row, &y) in rows(probs, num_classes).zip(labels) {
        let (prediction, confidence) = argmax(row);
        // torch.bucketize(c, edges, right=True) − 1 = #{edges <= c} − 1
        let bin = edges
            .partition_point(|&e| e <= confidence)
            .saturating_sub(1);
        counts[bin] += 1;
        correct[bin] += usize::from(prediction == y as usize);
        conf_sums[bin] += f64::from(confidence);
        brier_sum += brier_row(row, y as usize);
    }
    let n = labels.len() as f64;
    let mut bins: Vec<ReliabilityBin> = (0..=n_bins)
        .map(|b| {
            let lower = f64::from(edges[b.min(n_bins)]);
            let upper = f64::from(edges[(b + 1).min(n_bins)]);
            let (accuracy, confidence) = match counts[b] {
                0 => (0.0, 0.0),
                c => (correct[b] as f64 / c as f64, conf_sums[b] / c as f64),
            };
            ReliabilityBin {
                lower,
                upper,
                count: counts[b],
                accuracy,
                confidence,
            }
        })
        .collect();
    // ECE = Σ_b |acc − conf| · |B_b| / N ; MCE = max_b |acc − conf|
    let gap = |bin: &ReliabilityBin| (bin.accuracy - bin.confidence).abs();
    let ece = bins.iter().map(|b| gap(b) * (b.count as f64 / n)).sum();
    let mce = bins.iter().map(gap).fold(0.0, f64::max);
    let saturated = bins.pop().unwrap_or(ReliabilityBin {
        lower: 1.0,
        upper: 1.0,
        count: 0,
        accuracy: 0.0,
        confidence: 0.0,
    });
    Calibration {
        accuracy: correct.iter().sum::<usize>() as f64 / n,
        ece,
        mce,
        nll,
        brier: brier_sum / n,
        bins,
        saturated,
    }
}

/// Σ_c (p_c − 1[c = label])² of one row.
fn brier_row(row: &[f32], label: usize) -> f64 {
    row.iter()
        .enumerate()
        .map(|(c, &p)| {
            let d = f64::from(p) - f64::from(u8::from(c == label));
            d * d
        })
        .sum()
}

/// Index and value of the largest entry, the first one on ties.
fn argmax(row: &[f32]) -> (usize, f32) {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
}

/// ln Σ exp(z) in `f64`, shifted by the maximum for stability.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &z| m.max(f64::from(z)));
    max + row
        .iter()
        .map(|&z| (f64::from(z) - max).exp())
        .sum::<f64>()
        .ln()
}

/// Arithmetic mean of a non-empty sequence.
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    sum / count as f64
}

/// The rows of a row-major N×C matrix.
fn rows(values: &[f32], num_classes: usize) -> std::slice::ChunksExact<'_, f32> {
    values.chunks_exact(num_classes)
}

/// Fails on a zero size parameter.
fn require_nonzero(value: usize, what: &'static str) -> Result<(), MetricError> {
    if value == 0 {
        return Err(MetricError::ZeroSize { what });
    }
    Ok(())
}

/// Checks shape (N×C values for N labels, N ≥ 1, C ≥ 1), finiteness and label range.
fn validate_rows(
    values: &[f32],
    labels: &[u32],
    num_classes: usize,
    what: &'static str,
) -> Result<(), MetricError> {
    require_nonzero(num_classes, "num_classes")?;
    if labels.is_empty() {
        return Err(MetricError::Empty { what: "labels" });
    }
    let expected = labels.len() * num_classes;
    if values.len() != expected {
        return Err(MetricError::LengthMismatch {
            what,
            expected,
            got: values.len(),
        });
    }
    check_finite(values, what)?;
    match labels
        .iter()
        .enumerate()
        .find(|(_, &y)| y as usize >= num_classes)
    {
        Some((index, &label)) => Err(MetricError::LabelOutOfRange {
            index,
            label,
            num_classes,
        }),
        None => Ok(()),
    }
}

/// Checks that every value is in [0, 1] and every row sums to 1 within [`ROW_SUM_TOLERANCE`].
fn validate_probabilities(probs: &[f32], num_classes: usize) -> Result<(), MetricError> {
    for (row_index, row) in rows(probs, num_classes).enumerate() {
        if let Some((class, &value)) = row
            .iter()
            .enumerate()
            .find(|(_, p)| !(0.0..=1.0).contains(*p))
        {
            return Err(MetricError::ProbabilityOutOfRange {
                row: row_index,
                class,
                value,
            });
        }
        let sum: f64 = row.iter().map(|&p| f64::from(p)).sum();
        if (sum - 1.0).abs() > ROW_SUM_TOLERANCE {
            return Err(MetricError::RowSumNotOne {
                row: row_index,
                sum,
            });
        }
    }
    Ok(())
}
