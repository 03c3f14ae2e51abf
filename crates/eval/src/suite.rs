//! The evaluation suite of a trained classifier: accuracy, calibration, FGSM robustness and
//! MSP out-of-distribution detection, gathered into a [`Report`].

use crate::attacks::fgsm;
use crate::calibration::calibration_from_logits;
use crate::ood_metrics::ood_metrics;
use crate::report::{FgsmReport, OodScores, Report};
use candle_core::{Device, Tensor};
use multimix_backbones::{Ctx, Model};
use multimix_data::{Batch, Batches, Dataset, LoaderConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Options of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Images per forward pass.
    pub batch_size: usize,
    /// FGSM ε in [0, 1] pixel units (8/255 by default).
    pub fgsm_eps: f64,
    /// Bins of the expected calibration error (15 by default).
    pub ece_bins: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            batch_size: 250,
            fgsm_eps: 8.0 / 255.0,
            ece_bins: 15,
        }
    }
}

/// An error of the evaluation suite.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A metric could not be computed.
    #[error(transparent)]
    Metric(#[from] crate::MetricError),
    /// The inputs do not fit the model.
    #[error("{0}")]
    Invalid(String),
}

fn batch_tensor(batch: &Batch, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(&batch.images, batch.shape.to_vec(), device)
}

/// Logits `[N, C]` (row-major) of every image of `ds`, in data set order, model in eval mode.
pub fn logits(
    model: &Model,
    ds: &Arc<Dataset>,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<f32>, EvalError> {
    let mut out = Vec::with_capacity(ds.len() * model.config().num_classes());
    for batch in Batches::new(ds.clone(), LoaderConfig::eval(batch_size), 0) {
        let l = model.forward(&batch_tensor(&batch, device)?, &mut Ctx::eval())?;
        out.extend(l.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Maximum softmax probability of each row of `logits` `[N, C]` (higher = more in-distribution).
pub fn msp_scores(logits: &[f32], num_classes: usize) -> Vec<f32> {
    logits
        .chunks_exact(num_classes)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
            (1.0 / sum) as f32
        })
        .collect()
}

/// Top-1 accuracy of `logits` `[N, C]` against `labels` (ties to the lowest index).
pub fn top1(logits: &[f32], labels: &[u32], num_classes: usize) -> f64 {
    let correct = logits
        .chunks_exact(num_classes)
        .zip(labels)
        .filter(|(row, &y)| argmax(row) == y as usize)
        .count();
    correct as f64 / labels.len().max(1) as f64
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Top-1 accuracy under FGSM at `eps` over `ds`.
pub fn fgsm_accuracy(
    model: &Model,
    ds: &Arc<Dataset>,
    eps: f64,
    batch_size: usize,
    device: &Device,
) -> Result<f64, EvalError> {
    let c = model.config().num_classes();
    let mut correct = 0usize;
    for batch in Batches::new(ds.clone(), LoaderConfig::eval(batch_size), 0) {
        let x = batch_tensor(&batch, device)?;
        let adv = fgsm(model, &x, &batch.labels, eps)?;
        let l = model
            .forward(&adv, &mut Ctx::eval())?
            .flatten_all()?
            .to_vec1::<f32>()?;
        correct += (top1(&l, &batch.labels, c) * batch.labels.len() as f64).round() as usize;
    }
    Ok(correct as f64 / ds.len().max(1) as f64)
}

/// Evaluate `model` on the test set and against each OOD set (name, images shaped like the test set).
pub fn evaluate(
    model: &Model,
    test: &Arc<Dataset>,
    ood: &[(String, Arc<Dataset>)],
    opts: &EvalOptions,
    device: &Device,
) -> Result<Report, EvalError> {
    let c = model.config().num_classes();
    if test.num_classes != c {
        return Err(EvalError::Invalid(format!(
            "{} has {} classes, the model {c}",
            test.name, test.num_classes
        )));
    }
    let test_logits = logits(model, test, opts.batch_size, device)?;
    let cal = calibration_from_logits(&test_logits, &test.labels, c, opts.ece_bins)?;
    let in_scores = msp_scores(&test_logits, c);
    let fgsm_acc = fgsm_accuracy(model, test, opts.fgsm_eps, opts.batch_size, device)?;
    let mut ood_report = BTreeMap::new();
    for (name, set) in ood {
        let out_scores = msp_scores(&logits(model, set, opts.batch_size, device)?, c);
        let msp = ood_metrics(&in_scores, &out_scores)?;
        ood_report.insert(name.clone(), OodScores { msp });
    }
    Ok(Report {
        data: test.name.clone(),
        test_images: test.len(),
        accuracy: cal.accuracy,
        ece: cal.ece,
        nll: cal.nll,
        brier: cal.brier,
        reliability: cal.bins,
        fgsm: FgsmReport {
            eps: opts.fgsm_eps,
            accuracy: fgsm_acc,
            error: 1.0 - fgsm_acc,
        },
        ood: ood_report,
    })
}
