//! Embedding geometry (the paper's analysis): alignment and uniformity of L2-normalized
//! embeddings (Wang & Isola 2020) and a 2-D principal-component projection for plots.

use crate::detectors::l2_normalize;
use crate::linalg::{column_means, covariance, symmetric_eigen};
use crate::ood_metrics::MetricError;
use serde::{Deserialize, Serialize};

/// Alignment and uniformity of a set of embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    /// `E_{same class, i < j} ‖u_i − u_j‖²` (Wang & Isola's `align_loss`, α = 2, with the pairs
    /// of a class as positives); lower = tighter classes. In [0, 4].
    pub alignment: f64,
    /// `log E_{i < j} exp(−2 ‖u_i − u_j‖²)` (`uniform_loss`, t = 2); lower = more uniform on the
    /// sphere. In [−8, 0].
    pub uniformity: f64,
}

/// Alignment and uniformity of `embeddings` (`N × dim` row-major, L2-normalized here) with
/// class `labels`; needs two embeddings and one pair of the same class.
pub fn alignment_uniformity(
    embeddings: &[f32],
    labels: &[u32],
    dim: usize,
) -> Result<Geometry, MetricError> {
    if dim == 0 {
        return Err(MetricError::ZeroSize { what: "dim" });
    }
    if labels.len() * dim != embeddings.len() {
        return Err(MetricError::LengthMismatch {
            what: "embeddings",
            expected: labels.len() * dim,
            got: embeddings.len(),
        });
    }
    crate::ood_metrics::check_finite(embeddings, "embeddings")?;
    let u = l2_normalize(embeddings, dim);
    let n = labels.len();
    let (mut same_sum, mut same_count, mut all_sum, mut all_count) = (0.0, 0usize, 0.0, 0usize);
    for i in 0..n {
        let a = &u[i * dim..(i + 1) * dim];
        for j in i + 1..n {
            let b = &u[j * dim..(j + 1) * dim];
            let d2: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
            all_sum += (-2.0 * d2).exp();
            all_count += 1;
            if labels[i] == labels[j] {
                same_sum += d2;
                same_count += 1;
            }
        }
    }
    if same_count == 0 {
        return Err(MetricError::TooFewSamples {
            what: "pairs of embeddings of the same class",
            need: 1,
            got: 0,
        });
    }
    Ok(Geometry {
        alignment: same_sum / same_count as f64,
        uniformity: (all_sum / all_count as f64).ln(),
    })
}

/// A 2-D principal-component projection.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// The two principal directions, `2 × dim` row-major, each signed so that its entry of
    /// largest magnitude is positive (scikit-learn's `svd_flip` for `PCA`).
    pub components: Vec<f64>,
    /// The centered embeddings projected on them, `N × 2` row-major.
    pub points: Vec<f64>,
    /// Fraction of the variance along each direction.
    pub explained_variance_ratio: [f64; 2],
}

/// PCA to two dimensions (`sklearn.decomposition.PCA(n_components=2)`), from the eigenvectors
/// of the covariance; needs `dim ≥ 2` and two rows.
pub fn pca_2d(x: &[f32], dim: usize) -> Result<Projection, MetricError> {
    if dim < 2 {
        return Err(MetricError::TooFewSamples {
            what: "embedding dimensions for a 2-D projection",
            need: 2,
            got: dim,
        });
    }
    if x.len() < 2 * dim || !x.len().is_multiple_of(dim) {
        return Err(MetricError::TooFewSamples {
            what: "whole embeddings for a 2-D projection",
            need: 2,
            got: x.len() / dim,
        });
    }
    crate::ood_metrics::check_finite(x, "embeddings")?;
    let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let (values, vectors) = symmetric_eigen(&covariance(&x, dim), dim);
    let mut components = vectors[..2 * dim].to_vec();
    for c in components.chunks_exact_mut(dim) {
        let largest = c
            .iter()
            .fold(0.0f64, |m, &v| if v.abs() > m.abs() { v } else { m });
        if largest < 0.0 {
            c.iter_mut().for_each(|v| *v = -*v);
        }
    }
    let mean = column_means(&x, dim);
    let (mean, components_ref) = (&mean, &components);
    let points = x
        .chunks_exact(dim)
        .flat_map(|row| {
            components_ref.chunks_exact(dim).map(move |c| {
                row.iter()
                    .zip(mean)
                    .zip(c)
                    .map(|((v, m), w)| (v - m) * w)
                    .sum::<f64>()
            })
        })
        .collect();
    let total: f64 = values.iter().map(|v| v.max(0.0)).sum();
    let ratio = |v: f64| if total > 0.0 { v.max(0.0) / total } else { 0.0 };
    Ok(Projection {
        components,
        points,
        explained_variance_ratio: [ratio(values[0]), ratio(values[1])],
    })
}
