//! Post-hoc OOD detectors (METHOD.md §5), every score "higher = more in-distribution"
//! (pytorch-ood returns the negated "outlier scores"; OpenOOD's confidences are these).
//!
//! * [`msp`] max softmax probability (Hendrycks & Gimpel 2017);
//! * [`max_logit`] (Hendrycks et al. 2022);
//! * [`energy`] `T · logsumexp(f(x) / T)` (Liu et al. 2020), T = 1 by default;
//! * [`odin`] max softmax of `f(x̃) / T` with `x̃ = x − ε · sign(∇ₓ H(ŷ, f(x) / T))`, T = 1000,
//!   ε = 0.0014 (Liang et al. 2018), as pytorch-ood's `ODIN` and OpenOOD's `ODINPostprocessor`;
//! * [`Mahalanobis`] `−min_c (z − μ_c)ᵀ Σ⁺ (z − μ_c)` with class means and one shared covariance
//!   of the training features (Lee et al. 2018; OpenOOD's `MDS`), optionally on inputs
//!   pre-processed by [`Mahalanobis::perturb`] (pytorch-ood's `MahalanobisODIN`);
//! * [`Knn`] minus the Euclidean distance from the L2-normalized feature to its k-th nearest
//!   L2-normalized training feature, k = 50 (Sun et al. 2022). OpenOOD's faiss index returns the
//!   squared distance: a monotone transform, so every OOD metric is the same.

use crate::attacks::input_gradient_at_temperature;
use crate::linalg::{covariance, pinvh};
use crate::ood_metrics::{check_finite, MetricError};
use candle_core::Tensor;
use multimix_backbones::{Ctx, Model};
use std::fmt;
use std::str::FromStr;

/// The detectors of [`crate::suite::evaluate`], by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Detector {
    /// Maximum softmax probability.
    Msp,
    /// Maximum logit.
    MaxLogit,
    /// Energy score, T = 1.
    Energy,
    /// ODIN, T = 1000, ε = 0.0014 (one extra forward and backward pass per image).
    Odin,
    /// Mahalanobis distance to the closest class mean (fit on training features).
    Mahalanobis,
    /// k-th nearest training feature, k = 50 (fit on training features).
    Knn,
}

impl Detector {
    /// Every detector, in report order.
    pub const ALL: [Detector; 6] = [
        Detector::Msp,
        Detector::MaxLogit,
        Detector::Energy,
        Detector::Odin,
        Detector::Mahalanobis,
        Detector::Knn,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Detector::Msp => "msp",
            Detector::MaxLogit => "maxlogit",
            Detector::Energy => "energy",
            Detector::Odin => "odin",
            Detector::Mahalanobis => "mahalanobis",
            Detector::Knn => "knn",
        }
    }

    /// Whether the detector is fit on features of the training set.
    pub fn needs_training_features(self) -> bool {
        matches!(self, Detector::Mahalanobis | Detector::Knn)
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Detector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Detector::ALL
            .into_iter()
            .find(|d| d.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                let known: Vec<&str> = Detector::ALL.iter().map(|d| d.name()).collect();
                format!("unknown detector `{s}` (known: {})", known.join(", "))
            })
    }
}

/// ln Σ exp(z) of a row in `f64`, shifted by the maximum.
fn log_sum_exp(row: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = row.clone().fold(f64::NEG_INFINITY, f64::max);
    max + row.map(|z| (z - max).exp()).sum::<f64>().ln()
}

/// Maximum softmax probability of each row of `logits` `[N, C]`: `1 / Σ_c exp(z_c − max z)`.
pub fn msp(logits: &[f32], num_classes: usize) -> Vec<f32> {
    logits
        .chunks_exact(num_classes)
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z));
            let sum: f64 = row.iter().map(|&z| f64::from(z - max).exp()).sum();
            (1.0 / sum) as f32
        })
        .collect()
}

/// Maximum logit of each row of `logits` `[N, C]`.
pub fn max_logit(logits: &[f32], num_classes: usize) -> Vec<f32> {
    logits
        .chunks_exact(num_classes)
        .map(|row| row.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z)))
        .collect()
}

/// Energy score `T · logsumexp(z / T)` of each row of `logits` `[N, C]` (the negated free
/// energy of Liu et al. 2020).
pub fn energy(logits: &[f32], num_classes: usize, temperature: f64) -> Vec<f32> {
    logits
        .chunks_exact(num_classes)
        .map(|row| {
            let scaled = row.iter().map(|&z| f64::from(z) / temperature);
            (temperature * log_sum_exp(scaled)) as f32
        })
        .collect()
}

/// Hyper-parameters of [`odin`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OdinConfig {
    /// Softmax temperature T.
    pub temperature: f64,
    /// Input perturbation ε, in [0, 1] pixel units.
    pub eps: f64,
}

impl Default for OdinConfig {
    /// T = 1000, ε = 0.0014 (ODIN's CIFAR setting; OpenOOD's and pytorch-ood's defaults).
    fn default() -> Self {
        Self {
            temperature: 1000.0,
            eps: 0.0014,
        }
    }
}

/// ODIN scores of a batch of images in [0, 1]: `max softmax(f(x̃) / T)` with
/// `x̃ = x − ε · sign(∇ₓ H(ŷ, f(x) / T))`, ŷ the predicted class, not clamped to [0, 1].
///
/// ODIN's code perturbs normalized inputs by `ε · sign(g) / std`, which is `ε · sign(g)` in
/// pixel units: the model here takes pixels and normalizes inside.
pub fn odin(model: &Model, images: &Tensor, cfg: &OdinConfig) -> candle_core::Result<Vec<f32>> {
    let c = model.config().num_classes();
    let logits = model.forward(images, &mut Ctx::eval())?;
    let predicted: Vec<u32> = logits.argmax(1)?.to_vec1::<u32>()?;
    let grad = input_gradient_at_temperature(model, images, &predicted, cfg.temperature)?;
    let perturbed = (images - (grad.sign()? * cfg.eps)?)?;
    let logits = (model.forward(&perturbed, &mut Ctx::eval())? / cfg.temperature)?;
    Ok(msp(&logits.flatten_all()?.to_vec1::<f32>()?, c))
}

/// Checks a row-major `N × dim` feature matrix: `dim ≥ 1`, whole rows, finite values.
fn validate_features(features: &[f32], dim: usize, what: &'static str) -> Result<(), MetricError> {
    if dim == 0 {
        return Err(MetricError::ZeroSize { what: "dim" });
    }
    if features.is_empty() {
        return Err(MetricError::Empty { what });
    }
    if !features.len().is_multiple_of(dim) {
        return Err(MetricError::LengthMismatch {
            what,
            expected: features.len().div_ceil(dim) * dim,
            got: features.len(),
        });
    }
    check_finite(features, what)
}

/// The Mahalanobis detector fit on training features.
#[derive(Debug, Clone, PartialEq)]
pub struct Mahalanobis {
    dim: usize,
    /// Class means, `num_classes × dim` row-major.
    means: Vec<f64>,
    /// Pseudo-inverse of the shared covariance, `dim × dim`.
    precision: Vec<f64>,
}

impl Mahalanobis {
    /// Fit class means and the shared covariance `(1/N) Σ_i (z_i − μ_{y_i})(z_i − μ_{y_i})ᵀ`
    /// (sklearn's `EmpiricalCovariance` of the class-centered features); every class needs a
    /// sample.
    pub fn fit(
        features: &[f32],
        labels: &[u32],
        dim: usize,
        num_classes: usize,
    ) -> Result<Self, MetricError> {
        validate_features(features, dim, "training features")?;
        if labels.len() * dim != features.len() {
            return Err(MetricError::LengthMismatch {
                what: "training labels",
                expected: features.len() / dim,
                got: labels.len(),
            });
        }
        let mut means = vec![0.0f64; num_classes * dim];
        let mut counts = vec![0usize; num_classes];
        for (index, (row, &y)) in features.chunks_exact(dim).zip(labels).enumerate() {
            let y = y as usize;
            if y >= num_classes {
                return Err(MetricError::LabelOutOfRange {
                    index,
                    label: y as u32,
                    num_classes,
                });
            }
            counts[y] += 1;
            for (m, &v) in means[y * dim..(y + 1) * dim].iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
        if let Some(class) = counts.iter().position(|&c| c == 0) {
            return Err(MetricError::EmptyClass { class });
        }
        for (mean, &count) in means.chunks_exact_mut(dim).zip(&counts) {
            mean.iter_mut().for_each(|m| *m /= count as f64);
        }
        let centered: Vec<f64> = features
            .chunks_exact(dim)
            .zip(labels)
            .flat_map(|(row, &y)| {
                let mean = &means[y as usize * dim..(y as usize + 1) * dim];
                row.iter().zip(mean).map(|(&v, m)| f64::from(v) - m)
            })
            .collect();
        let precision = pinvh(&covariance(&centered, dim), dim);
        Ok(Self {
            dim,
            means,
            precision,
        })
    }

    /// `(z − μ_c)ᵀ Σ⁺ (z − μ_c)` of one feature row for every class `c` (the squared distances).
    fn distances(&self, z: &[f32]) -> Vec<f64> {
        let d = self.dim;
        let mut diff = vec![0.0f64; d];
        self.means
            .chunks_exact(d)
            .map(|mean| {
                for (x, (&v, m)) in diff.iter_mut().zip(z.iter().zip(mean)) {
                    *x = f64::from(v) - m;
                }
                self.precision
                    .chunks_exact(d)
                    .zip(&diff)
                    .map(|(row, &xr)| xr * row.iter().zip(&diff).map(|(p, x)| p * x).sum::<f64>())
                    .sum::<f64>()
            })
            .collect()
    }

    /// Scores `−min_c (z − μ_c)ᵀ Σ⁺ (z − μ_c)` of the rows of `features` (`N × dim`).
    pub fn score(&self, features: &[f32]) -> Result<Vec<f32>, MetricError> {
        validate_features(features, self.dim, "features")?;
        Ok(features
            .chunks_exact(self.dim)
            .map(|z| (-self.distances(z).into_iter().fold(f64::INFINITY, f64::min)) as f32)
            .collect())
    }

    /// The class whose mean is closest to each row of `features` (the first on ties).
    fn closest_classes(&self, features: &[f32]) -> Vec<usize> {
        features
            .chunks_exact(self.dim)
            .map(|z| {
                let dist = self.distances(z);
                (0..dist.len()).fold(0, |best, c| if dist[c] < dist[best] { c } else { best })
            })
            .collect()
    }

    /// Lee et al. (2018)'s input pre-processing of images in [0, 1]:
    /// `x' = x − ε · sign(∇ₓ ½ (z(x) − μ_ĉ)ᵀ Σ⁺ (z(x) − μ_ĉ))`, ĉ the closest class of `z(x)`,
    /// not clamped, as pytorch-ood's `MahalanobisODIN` (whose ε is in input units too: the
    /// model here normalizes inside, so no division by the normalization's std). Σ⁺ is the
    /// fitted pseudo-inverse: pytorch-ood inverts `scatter + 1e-6 I`, which for a ViT's
    /// LayerNorm-ed features (a singular covariance) weighs float noise by 1e6.
    pub fn perturb(&self, model: &Model, images: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
        let mut ctx = Ctx::eval();
        let z = model
            .backbone()
            .pre_logits(&model.forward_features(images, &mut ctx)?, &mut ctx)?;
        let (b, d) = z.dims2()?;
        if d != self.dim {
            return Err(candle_core::Error::Msg(format!(
                "the model's features have {d} dimensions, the Mahalanobis fit {}",
                self.dim
            )));
        }
        let closest = self.closest_classes(&z.flatten_all()?.to_vec1::<f32>()?);
        let mu: Vec<f32> = closest
            .iter()
            .flat_map(|&c| self.means[c * d..(c + 1) * d].iter().map(|&m| m as f32))
            .collect();
        let mu = Tensor::from_vec(mu, (b, d), images.device())?;
        let precision: Vec<f32> = self.precision.iter().map(|&p| p as f32).collect();
        let precision = Tensor::from_vec(precision, (d, d), images.device())?;
        // ∇_x only: the weights of the frozen view take no gradient.
        let view = crate::attacks::input_only(model)?;
        let model = view.as_ref().unwrap_or(model);
        let x = candle_core::Var::from_tensor(images)?;
        let mut ctx = Ctx::eval();
        let z = model
            .backbone()
            .pre_logits(&model.forward_features(x.as_tensor(), &mut ctx)?, &mut ctx)?;
        let diff = (z - mu)?;
        // loss = mean over the batch of ½ (z − μ_ĉ)ᵀ Σ⁺ (z − μ_ĉ), pytorch-ood's `mean(-pure_gau)`
        let loss = ((diff.matmul(&precision)? * &diff)?.sum_all()? * (0.5 / b as f64))?;
        let grads = loss.backward()?;
        let grad = match grads.get(x.as_tensor()) {
            Some(g) => g.clone(),
            None => images.zeros_like()?,
        };
        images - (grad.sign()? * eps)?
    }

    /// Scores of a batch of images in [0, 1] after [`Mahalanobis::perturb`] with `eps`.
    pub fn score_images(
        &self,
        model: &Model,
        images: &Tensor,
        eps: f64,
    ) -> candle_core::Result<Vec<f32>> {
        let x = self.perturb(model, images, eps)?;
        let mut ctx = Ctx::eval();
        let z = model
            .backbone()
            .pre_logits(&model.forward_features(&x, &mut ctx)?, &mut ctx)?;
        self.score(&z.flatten_all()?.to_vec1::<f32>()?)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

/// Default number of neighbours of [`Knn`] (Sun et al. 2022; OpenOOD's CIFAR setting).
pub const KNN_K: usize = 50;

/// `x / (‖x‖₂ + 1e-10)` row by row (OpenOOD's `normalizer`), in `f64`.
pub(crate) fn l2_normalize(features: &[f32], dim: usize) -> Vec<f64> {
    features
        .chunks_exact(dim)
        .flat_map(|row| {
            let norm = row
                .iter()
                .map(|&v| f64::from(v).powi(2))
                .sum::<f64>()
                .sqrt();
            row.iter().map(move |&v| f64::from(v) / (norm + 1e-10))
        })
        .collect()
}

/// The KNN detector: a bank of L2-normalized training features.
#[derive(Debug, Clone, PartialEq)]
pub struct Knn {
    dim: usize,
    k: usize,
    bank: Vec<f64>,
}

impl Knn {
    /// Keep the L2-normalized training features (`N × dim`, N ≥ k, k ≥ 1).
    pub fn fit(features: &[f32], dim: usize, k: usize) -> Result<Self, MetricError> {
        validate_features(features, dim, "training features")?;
        if k == 0 {
            return Err(MetricError::ZeroSize { what: "k" });
        }
        let n = features.len() / dim;
        if n < k {
            return Err(MetricError::TooFewSamples {
                what: "training features for KNN",
                need: k,
                got: n,
            });
        }
        Ok(Self {
            dim,
            k,
            bank: l2_normalize(features, dim),
        })
    }

    /// Scores: minus the Euclidean distance from each normalized row of `features` to its k-th
    /// nearest normalized training feature.
    ///
    /// Exact (`f64`) distances, found fast: an `f32` matrix product gives every squared
    /// distance to within `err ≤ 2 (dim + 2) u` (u = 2⁻²⁴, unit vectors), the points within
    /// `2 · err` of the approximate k-th distance are candidates (the true k nearest are among
    /// them), and the k-th of their exact distances is the score.
    pub fn score(&self, features: &[f32]) -> Result<Vec<f32>, MetricError> {
        validate_features(features, self.dim, "features")?;
        let d = self.dim;
        let n = self.bank.len() / d;
        let queries = l2_normalize(features, d);
        let squared_norms = |x: &[f64]| -> Vec<f64> {
            x.chunks_exact(d)
                .map(|r| r.iter().map(|v| v * v).sum())
                .collect()
        };
        let bank_sq = squared_norms(&self.bank);
        let bank32: Vec<f32> = self.bank.iter().map(|&v| v as f32).collect();
        let tensor_error = |e: candle_core::Error| MetricError::Tensor {
            message: e.to_string(),
        };
        let bank_t = Tensor::from_vec(bank32, (n, d), &candle_core::Device::Cpu)
            .and_then(|t| t.t())
            .map_err(tensor_error)?;
        let margin = 8.0 * (d as f64 + 2.0) * f64::from(f32::EPSILON);
        let mut scores = Vec::with_capacity(queries.len() / d);
        let mut approx = vec![0.0f64; n];
        for block in queries.chunks(KNN_BLOCK * d) {
            let m = block.len() / d;
            let q32: Vec<f32> = block.iter().map(|&v| v as f32).collect();
            let dots = Tensor::from_vec(q32, (m, d), &candle_core::Device::Cpu)
                .and_then(|q| q.matmul(&bank_t))
                .and_then(|s| s.flatten_all())
                .and_then(|s| s.to_vec1::<f32>())
                .map_err(tensor_error)?;
            for ((q, q_sq), row) in block
                .chunks_exact(d)
                .zip(squared_norms(block))
                .zip(dots.chunks_exact(n))
            {
                for ((a, &b_sq), &dot) in approx.iter_mut().zip(&bank_sq).zip(row) {
                    *a = q_sq + b_sq - 2.0 * f64::from(dot);
                }
                let mut sorted = approx.clone();
                let (_, &mut kth, _) = sorted.select_nth_unstable_by(self.k - 1, f64::total_cmp);
                let mut exact: Vec<f64> = approx
                    .iter()
                    .enumerate()
                    .filter(|(_, &a)| a <= kth + margin)
                    .map(|(j, _)| {
                        let b = &self.bank[j * d..(j + 1) * d];
                        q.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
                    })
                    .collect();
                let (_, &mut kth_exact, _) =
                    exact.select_nth_unstable_by(self.k - 1, f64::total_cmp);
                scores.push((-kth_exact.sqrt()) as f32);
            }
        }
        Ok(scores)
    }
}

/// Queries per matrix product in [`Knn::score`].
const KNN_BLOCK: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The k-th exact distance by brute force.
    fn brute_force(bank: &[f64], q: &[f64], dim: usize, k: usize) -> f32 {
        let mut d: Vec<f64> = bank
            .chunks_exact(dim)
            .map(|b| q.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum())
            .collect();
        d.sort_by(f64::total_cmp);
        (-d[k - 1].sqrt()) as f32
    }

    #[test]
    fn knn_candidates_hold_the_exact_kth_neighbour_among_near_ties() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let dim = 16;
        let base: Vec<f32> = (0..40 * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        // 400 training points: 10 near-copies (1e-6 apart) of each of 40 points
        let train: Vec<f32> = (0..10)
            .flat_map(|_| {
                base.iter()
                    .map(|v| v + rng.random_range(-1e-6..1e-6))
                    .collect::<Vec<_>>()
            })
            .collect();
        let queries: Vec<f32> = base
            .iter()
            .map(|v| v + rng.random_range(-1e-3..1e-3))
            .collect();
        for k in [1, 7, 10, 11, 50] {
            let knn = Knn::fit(&train, dim, k).unwrap();
            let got = knn.score(&queries).unwrap();
            let normalized = l2_normalize(&queries, dim);
            for (q, g) in normalized.chunks_exact(dim).zip(&got) {
                assert_eq!(*g, brute_force(&knn.bank, q, dim, k), "k = {k}");
            }
        }
    }
}
