//! Small dense linear algebra in `f64` for the feature-space detectors and the embedding
//! projection: covariance, symmetric eigendecomposition (cyclic Jacobi) and the pseudo-inverse
//! of a symmetric matrix (`scipy.linalg.pinvh`).

/// A symmetric matrix's eigenvalues (decreasing) and eigenvectors (row `i` of the `n × n`
/// row-major matrix is the unit eigenvector of eigenvalue `i`), by cyclic Jacobi rotations.
pub(crate) fn symmetric_eigen(matrix: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = matrix.to_vec();
    // v holds the eigenvectors as columns while rotating.
    let mut v: Vec<f64> = (0..n * n)
        .map(|i| f64::from(u8::from(i / n == i % n)))
        .collect();
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|p| (0..n).filter(move |&q| q != p).map(move |q| (p, q)))
            .map(|(p, q)| a[p * n + q] * a[p * n + q])
            .sum::<f64>()
            .sqrt();
        if off <= f64::EPSILON * scale * 1e-3 || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // Rotation zeroing a[p][q] (Golub & Van Loan, Algorithm 8.4.2).
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let vectors = order
        .iter()
        .flat_map(|&i| (0..n).map(move |k| (k, i)))
        .map(|(k, i)| v[k * n + i])
        .collect();
    (values, vectors)
}

/// Pseudo-inverse of a symmetric matrix, as `scipy.linalg.pinvh` (what scikit-learn's
/// `EmpiricalCovariance.precision_` is): eigenvalues with `|λ| <= n · ε_f64 · max|λ|` are
/// treated as zero.
pub(crate) fn pinvh(matrix: &[f64], n: usize) -> Vec<f64> {
    let (values, vectors) = symmetric_eigen(matrix, n);
    let largest = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let cutoff = n as f64 * f64::EPSILON * largest;
    let mut inverse = vec![0.0; n * n];
    for (i, &lambda) in values.iter().enumerate() {
        if lambda.abs() <= cutoff {
            continue;
        }
        let u = &vectors[i * n..(i + 1) * n];
        for r in 0..n {
            for c in 0..n {
                inverse[r * n + c] += u[r] * u[c] / lambda;
            }
        }
    }
    inverse
}

/// Mean of the rows of a row-major `rows × dim` matrix.
pub(crate) fn column_means(x: &[f64], dim: usize) -> Vec<f64> {
    let rows = x.len() / dim;
    let mut mean = vec![0.0; dim];
    for row in x.chunks_exact(dim) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows as f64);
    mean
}

/// Biased covariance `(1/N) Σ (x − x̄)(x − x̄)ᵀ` of the rows (`EmpiricalCovariance`, numpy's
/// `cov(bias=True)`), `dim × dim` row-major.
pub(crate) fn covariance(x: &[f64], dim: usize) -> Vec<f64> {
    let mean = column_means(x, dim);
    let rows = x.len() / dim;
    let mut cov = vec![0.0; dim * dim];
    let mut centered = vec![0.0; dim];
    for row in x.chunks_exact(dim) {
        for (c, (v, m)) in centered.iter_mut().zip(row.iter().zip(&mean)) {
            *c = v - m;
        }
        for r in 0..dim {
            let cr = centered[r];
            for c in r..dim {
                cov[r * dim + c] += cr * centered[c];
            }
        }
    }
    for r in 0..dim {
        for c in r..dim {
            let v = cov[r * dim + c] / rows as f64;
            cov[r * dim + c] = v;
            cov[c * dim + r] = v;
        }
    }
    cov
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_reconstructs_the_matrix() {
        let m = [4.0, 1.0, 2.0, 1.0, 3.0, 0.5, 2.0, 0.5, 5.0];
        let (values, vectors) = symmetric_eigen(&m, 3);
        assert!(values.windows(2).all(|w| w[0] >= w[1]));
        for r in 0..3 {
            for c in 0..3 {
                let v: f64 = (0..3)
                    .map(|i| values[i] * vectors[i * 3 + r] * vectors[i * 3 + c])
                    .sum();
                assert!((v - m[r * 3 + c]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn pinvh_inverts_a_regular_matrix_and_drops_a_null_space() {
        let m = [2.0, 1.0, 1.0, 3.0];
        let inv = pinvh(&m, 2);
        let expected = [0.6, -0.2, -0.2, 0.4];
        assert!(inv.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-12));
        let singular = [1.0, 0.0, 0.0, 0.0];
        assert_eq!(pinvh(&singular, 2), vec![1.0, 0.0, 0.0, 0.0]);
    }
}
