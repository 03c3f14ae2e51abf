//! The evaluation suite of a trained classifier: accuracy, calibration, robustness to FGSM and
//! PGD over a list of ε, OOD detection with any of the [`Detector`]s, and the embedding
//! geometry, gathered into a [`Report`].

use crate::attacks::{fgsm, input_only, pgd, uniform_start, PgdConfig};
use crate::calibration::calibration_from_logits;
use crate::detectors::{self, odin, Detector, Knn, Mahalanobis, OdinConfig, KNN_K};
use crate::geometry::{alignment_uniformity, pca_2d};
use crate::ood_metrics::{ood_metrics, roc_curve};
use crate::report::{AttackPoint, EmbeddingPlot, FgsmReport, Figures, OodScores, Report};
use candle_core::{Device, Tensor};
use multimix_backbones::{Ctx, Model};
use multimix_data::{Batch, Batches, Dataset, LoaderConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// An adversarial attack of the robustness curves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attack {
    /// FGSM, one step of size ε.
    Fgsm,
    /// PGD with α = ε / 4 and [`EvalOptions::pgd_steps`] steps from a uniform random start.
    Pgd,
}

impl Attack {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Attack::Fgsm => "fgsm",
            Attack::Pgd => "pgd",
        }
    }
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Attack {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fgsm" => Ok(Attack::Fgsm),
            "pgd" => Ok(Attack::Pgd),
            _ => Err(format!("unknown attack `{s}` (known: fgsm, pgd)")),
        }
    }
}

/// Options of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Images per forward pass.
    pub batch_size: usize,
    /// ε of the headline FGSM number, in [0, 1] pixel units (8/255 by default).
    pub fgsm_eps: f64,
    /// Bins of the expected calibration error (15 by default).
    pub ece_bins: usize,
    /// Attacks of the robustness curves (FGSM by default).
    pub attacks: Vec<Attack>,
    /// ε of the robustness curves (empty: `fgsm_eps` only).
    pub eps: Vec<f64>,
    /// Steps of PGD (10; the step size is ε / 4, 2/255 at ε = 8/255).
    pub pgd_steps: usize,
    /// OOD detectors (by default the free ones: MSP, MaxLogit, Energy; MSP is always run).
    pub detectors: Vec<Detector>,
    /// ODIN's temperature and input perturbation.
    pub odin: OdinConfig,
    /// Input pre-processing ε of the Mahalanobis detector in [0, 1] pixel units (Lee et al.
    /// 2018; pytorch-ood's `MahalanobisODIN` uses 0.002); 0, the default, scores the plain
    /// features (OpenOOD's `MDS`).
    pub mahalanobis_eps: f64,
    /// Neighbours of the KNN detector.
    pub knn_k: usize,
    /// At most this many test embeddings (the first ones) enter alignment, uniformity and the
    /// projection (the pairwise terms cost O(n²)).
    pub geometry_max: usize,
    /// Seed of the host RNG of PGD's random starts.
    pub seed: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            batch_size: 250,
            fgsm_eps: 8.0 / 255.0,
            ece_bins: 15,
            attacks: vec![Attack::Fgsm],
            eps: Vec::new(),
            pgd_steps: 10,
            detectors: vec![Detector::Msp, Detector::MaxLogit, Detector::Energy],
            odin: OdinConfig::default(),
            mahalanobis_eps: 0.0,
            knn_k: KNN_K,
            geometry_max: 2000,
            seed: 0,
        }
    }
}

impl EvalOptions {
    /// Check ε values, sizes and the detector list; the message names the bad value.
    pub fn validate(&self) -> Result<(), EvalError> {
        let bad = |m: String| Err(EvalError::Invalid(m));
        for &e in self.eps.iter().chain([&self.fgsm_eps]) {
            if !(0.0..=1.0).contains(&e) {
                return bad(format!(
                    "ε = {e} is outside [0, 1] (pixel units: 8/255 = 0.0314)"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.mahalanobis_eps) {
            return bad(format!(
                "Mahalanobis pre-processing ε = {} is outside [0, 1] (pixel units; 0 turns it off, pytorch-ood uses 0.002)",
                self.mahalanobis_eps
            ));
        }
        if self.batch_size == 0 || self.ece_bins == 0 || self.knn_k == 0 {
            return bad("batch size, ECE bins and KNN k must be at least 1".into());
        }
        Ok(())
    }

    /// The ε list of the robustness curves, increasing, without repeats.
    pub fn curve_eps(&self) -> Vec<f64> {
        let mut eps = if self.eps.is_empty() {
            vec![self.fgsm_eps]
        } else {
            self.eps.clone()
        };
        eps.sort_by(f64::total_cmp);
        eps.dedup();
        eps
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
    /// The inputs or options do not fit the model.
    #[error("{0}")]
    Invalid(String),
}

fn batch_tensor(batch: &Batch, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(&batch.images, batch.shape.to_vec(), device)
}

fn eval_batches(ds: &Arc<Dataset>, batch_size: usize) -> Batches {
    Batches::new(ds.clone(), LoaderConfig::eval(batch_size), 0)
}

/// Logits `[N, C]` (row-major) of every image of `ds`, in data set order, model in eval mode.
pub fn logits(
    model: &Model,
    ds: &Arc<Dataset>,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<f32>, EvalError> {
    Ok(outputs(model, ds, batch_size, device)?.logits)
}

/// What one pass over a data set gives: logits `[N, C]` and pooled penultimate features
/// `[N, D]` (timm `forward_head(pre_logits=True)`), row-major, in data set order.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// Logits, `N × C`.
    pub logits: Vec<f32>,
    /// Pooled features, `N × dim`.
    pub features: Vec<f32>,
    /// Feature width `D`.
    pub dim: usize,
}

/// Logits and pooled features of every image of `ds`, model in eval mode.
pub fn outputs(
    model: &Model,
    ds: &Arc<Dataset>,
    batch_size: usize,
    device: &Device,
) -> Result<Outputs, EvalError> {
    let mut out = Outputs {
        logits: Vec::new(),
        features: Vec::new(),
        dim: 0,
    };
    for batch in eval_batches(ds, batch_size) {
        let mut ctx = Ctx::eval();
        let f = model.forward_features(&batch_tensor(&batch, device)?, &mut ctx)?;
        let pooled = model.backbone().pre_logits(&f, &mut ctx)?;
        let logits = model.backbone().head().forward(&pooled)?;
        out.dim = pooled.dim(1)?;
        out.features.extend(pooled.flatten_all()?.to_vec1::<f32>()?);
        out.logits.extend(logits.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
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

/// Top-1 accuracy on the images of `ds` transformed batch by batch by `attack`, which gets the
/// model's frozen view (input gradients only).
fn accuracy_under(
    model: &Model,
    ds: &Arc<Dataset>,
    batch_size: usize,
    device: &Device,
    mut attack: impl FnMut(&Model, &Tensor, &[u32]) -> candle_core::Result<Tensor>,
) -> Result<f64, EvalError> {
    let view = input_only(model)?;
    let attacked = view.as_ref().unwrap_or(model);
    let c = model.config().num_classes();
    let mut correct = 0usize;
    for batch in eval_batches(ds, batch_size) {
        let adv = attack(attacked, &batch_tensor(&batch, device)?, &batch.labels)?;
        let l = model
            .forward(&adv, &mut Ctx::eval())?
            .flatten_all()?
            .to_vec1::<f32>()?;
        correct += (top1(&l, &batch.labels, c) * batch.labels.len() as f64).round() as usize;
    }
    Ok(correct as f64 / ds.len().max(1) as f64)
}

/// Top-1 accuracy under FGSM at `eps` over `ds`.
pub fn fgsm_accuracy(
    model: &Model,
    ds: &Arc<Dataset>,
    eps: f64,
    batch_size: usize,
    device: &Device,
) -> Result<f64, EvalError> {
    accuracy_under(model, ds, batch_size, device, |m, x, y| fgsm(m, x, y, eps))
}

/// Top-1 accuracy under PGD (`cfg`) over `ds`, each batch's random start drawn from `rng`.
pub fn pgd_accuracy(
    model: &Model,
    ds: &Arc<Dataset>,
    cfg: &PgdConfig,
    batch_size: usize,
    device: &Device,
    rng: &mut ChaCha8Rng,
) -> Result<f64, EvalError> {
    accuracy_under(model, ds, batch_size, device, |m, x, y| {
        let start = uniform_start(x.dims(), cfg.eps, rng, device)?;
        pgd(m, x, y, cfg, &start)
    })
}

/// Scores of every image of `ds`, batch by batch, from a detector that perturbs its input
/// (ODIN, Mahalanobis with pre-processing) and so gets the model's frozen view.
fn input_gradient_scores(
    model: &Model,
    ds: &Arc<Dataset>,
    batch_size: usize,
    device: &Device,
    mut score: impl FnMut(&Model, &Tensor) -> candle_core::Result<Vec<f32>>,
) -> Result<Vec<f32>, EvalError> {
    let view = input_only(model)?;
    let model = view.as_ref().unwrap_or(model);
    let mut scores = Vec::with_capacity(ds.len());
    for batch in eval_batches(ds, batch_size) {
        scores.extend(score(model, &batch_tensor(&batch, device)?)?);
    }
    Ok(scores)
}

/// The feature-space detectors fit on the training set.
struct FittedDetectors {
    mahalanobis: Option<Mahalanobis>,
    knn: Option<Knn>,
}

/// Scores of every requested detector on one set (MSP always).
fn detector_scores(
    model: &Model,
    ds: &Arc<Dataset>,
    out: &Outputs,
    requested: &[Detector],
    fitted: &FittedDetectors,
    opts: &EvalOptions,
    device: &Device,
) -> Result<BTreeMap<Detector, Vec<f32>>, EvalError> {
    let c = model.config().num_classes();
    let mut scores = BTreeMap::new();
    for &d in requested {
        let s = match d {
            Detector::Msp => detectors::msp(&out.logits, c),
            Detector::MaxLogit => detectors::max_logit(&out.logits, c),
            Detector::Energy => detectors::energy(&out.logits, c, 1.0),
            Detector::Odin => input_gradient_scores(model, ds, opts.batch_size, device, |m, x| {
                odin(m, x, &opts.odin)
            })?,
            Detector::Mahalanobis => match &fitted.mahalanobis {
                Some(fit) if opts.mahalanobis_eps > 0.0 => {
                    input_gradient_scores(model, ds, opts.batch_size, device, |m, x| {
                        fit.score_images(m, x, opts.mahalanobis_eps)
                    })?
                }
                Some(m) => m.score(&out.features)?,
                None => continue,
            },
            Detector::Knn => match &fitted.knn {
                Some(k) => k.score(&out.features)?,
                None => continue,
            },
        };
        scores.insert(d, s);
    }
    Ok(scores)
}

/// Evaluate `model` on the test set and against each OOD set (name, images shaped like the
/// test set). `train` is needed by the detectors fit on training features (Mahalanobis, KNN).
pub fn evaluate(
    model: &Model,
    test: &Arc<Dataset>,
    train: Option<&Arc<Dataset>>,
    ood: &[(String, Arc<Dataset>)],
    opts: &EvalOptions,
    device: &Device,
) -> Result<Report, EvalError> {
    opts.validate()?;
    let c = model.config().num_classes();
    if test.num_classes != c {
        return Err(EvalError::Invalid(format!(
            "{} has {} classes, the model {c}",
            test.name, test.num_classes
        )));
    }
    let mut requested: Vec<Detector> = vec![Detector::Msp];
    requested.extend(opts.detectors.iter().copied());
    requested.sort();
    requested.dedup();

    let test_out = outputs(model, test, opts.batch_size, device)?;
    let cal = calibration_from_logits(&test_out.logits, &test.labels, c, opts.ece_bins)?;

    // Robustness: the headline FGSM number and the curves.
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut robustness: BTreeMap<String, Vec<AttackPoint>> = BTreeMap::new();
    for &attack in &opts.attacks {
        let mut points = Vec::new();
        for eps in opts.curve_eps() {
            let accuracy = match attack {
                Attack::Fgsm => fgsm_accuracy(model, test, eps, opts.batch_size, device)?,
                Attack::Pgd => {
                    let cfg = PgdConfig {
                        steps: opts.pgd_steps,
                        ..PgdConfig::for_eps(eps)
                    };
                    pgd_accuracy(model, test, &cfg, opts.batch_size, device, &mut rng)?
                }
            };
            points.push(AttackPoint::new(eps, accuracy));
        }
        robustness.insert(attack.name().to_string(), points);
    }
    let headline = robustness
        .get(Attack::Fgsm.name())
        .and_then(|p| p.iter().find(|p| p.eps == opts.fgsm_eps))
        .map(|p| p.accuracy);
    let fgsm_acc = match headline {
        Some(a) => a,
        None => fgsm_accuracy(model, test, opts.fgsm_eps, opts.batch_size, device)?,
    };

    // OOD detection.
    let needs_train = requested.iter().any(|d| d.needs_training_features());
    let fitted = if needs_train && !ood.is_empty() {
        let Some(train) = train else {
            let names: Vec<&str> = requested
                .iter()
                .filter(|d| d.needs_training_features())
                .map(|d| d.name())
                .collect();
            return Err(EvalError::Invalid(format!(
                "detectors {} are fit on training features, but `{}` has no training split",
                names.join(", "),
                test.name
            )));
        };
        let train_out = outputs(model, train, opts.batch_size, device)?;
        let fit_m = requested.contains(&Detector::Mahalanobis);
        let fit_k = requested.contains(&Detector::Knn);
        FittedDetectors {
            mahalanobis: fit_m
                .then(|| Mahalanobis::fit(&train_out.features, &train.labels, train_out.dim, c))
                .transpose()?,
            knn: fit_k
                .then(|| Knn::fit(&train_out.features, train_out.dim, opts.knn_k))
                .transpose()?,
        }
    } else {
        FittedDetectors {
            mahalanobis: None,
            knn: None,
        }
    };
    let in_scores = if ood.is_empty() {
        BTreeMap::new()
    } else {
        detector_scores(model, test, &test_out, &requested, &fitted, opts, device)?
    };
    let mut ood_report = BTreeMap::new();
    let mut roc = BTreeMap::new();
    for (name, set) in ood {
        let out = outputs(model, set, opts.batch_size, device)?;
        let out_scores = detector_scores(model, set, &out, &requested, &fitted, opts, device)?;
        let mut metrics = BTreeMap::new();
        let mut curves = Vec::new();
        for (d, s_in) in &in_scores {
            let s_out = &out_scores[d];
            metrics.insert(*d, ood_metrics(s_in, s_out)?);
            let is_id: Vec<bool> = s_in
                .iter()
                .map(|_| true)
                .chain(s_out.iter().map(|_| false))
                .collect();
            let all: Vec<f32> = s_in.iter().chain(s_out).copied().collect();
            curves.push((d.name().to_string(), roc_curve(&is_id, &all)?));
        }
        ood_report.insert(name.clone(), OodScores::from_metrics(&metrics));
        roc.insert(name.clone(), curves);
    }

    // Embedding geometry on the first test embeddings.
    let n_geo = test.len().min(opts.geometry_max);
    let (feats, labels) = (
        &test_out.features[..n_geo * test_out.dim],
        &test.labels[..n_geo],
    );
    let geometry = alignment_uniformity(feats, labels, test_out.dim).ok();
    let embedding = pca_2d(feats, test_out.dim).ok().map(|p| EmbeddingPlot {
        points: p.points.chunks_exact(2).map(|q| (q[0], q[1])).collect(),
        labels: labels.to_vec(),
        class_names: test.class_names.clone(),
        explained_variance_ratio: p.explained_variance_ratio,
    });

    Ok(Report {
        data: test.name.clone(),
        test_images: test.len(),
        accuracy: cal.accuracy,
        ece: cal.ece,
        mce: cal.mce,
        nll: cal.nll,
        brier: cal.brier,
        reliability: cal.bins,
        reliability_saturated: cal.saturated,
        fgsm: FgsmReport {
            eps: opts.fgsm_eps,
            accuracy: fgsm_acc,
            error: 1.0 - fgsm_acc,
        },
        robustness,
        pgd_steps: opts
            .attacks
            .contains(&Attack::Pgd)
            .then_some(opts.pgd_steps),
        ood: ood_report,
        mahalanobis_eps: (requested.contains(&Detector::Mahalanobis) && opts.mahalanobis_eps > 0.0)
            .then_some(opts.mahalanobis_eps),
        geometry,
        geometry_images: n_geo,
        figures: Figures { roc, embedding },
    })
}
