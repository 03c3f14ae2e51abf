//! Properties of MultiMix that follow from its definition (METHOD.md §2–§3): Dirichlet moments
//! and marginals, the reduction to manifold mixup, logit mixing = embedding mixing for an affine
//! head, and dense MultiMix with uniform attention = pooled MultiMix at every position.

use candle_core::{Device, Tensor, D};
use multimix_augment::dense::{attention, dense_weights, mix_dense, mix_dense_targets};
use multimix_augment::loss::soft_cross_entropy;
use multimix_augment::manifold::{mix_pairs, pair_lambda};
use multimix_augment::multimix::mix_rows;
use multimix_augment::sample::dirichlet_rows;
use multimix_augment::targets::smooth_one_hot;
use multimix_augment::{AttnNorm, MultiMix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn randn(rng: &mut ChaCha8Rng, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The affine head `g(z) = z Wᵀ + β` on the last dimension.
fn head(z: &Tensor, w: &Tensor, bias: &Tensor) -> Tensor {
    let dims = z.dims().to_vec();
    let d = *dims.last().unwrap();
    let flat = z.reshape(((), d)).unwrap();
    let out = flat
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(bias)
        .unwrap();
    let mut out_dims = dims;
    *out_dims.last_mut().unwrap() = w.dim(0).unwrap();
    out.reshape(out_dims).unwrap()
}

/// Mean and (population) variance of the nonzero weights, and every row a distribution with
/// exactly `m` nonzero entries.
fn moments(rows: &[f32], b: usize, m: usize) -> (f64, f64) {
    let mut vals = Vec::new();
    for row in rows.chunks_exact(b) {
        let nz: Vec<f64> = row
            .iter()
            .filter(|v| **v > 0.0)
            .map(|v| *v as f64)
            .collect();
        assert_eq!(nz.len(), m, "row {row:?}");
        assert!((nz.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        vals.extend(nz);
    }
    let mean = vals.iter().sum::<f64>() / vals.len() as f64;
    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
    (mean, var)
}

#[test]
fn dirichlet_rows_have_the_dirichlet_moments() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let n = 40_000;
    // (b, m, α): whole batch, subsets, m = 2 (= Beta(α, α)), small and large α; α = 1 (the
    // Exp(1) sampler) with even and odd m, whole batch and subset.
    for (b, m, alpha) in [
        (8, 8, 1.0),
        (7, 5, 1.0),
        (16, 13, 1.0),
        (8, 3, 0.5),
        (16, 2, 2.0),
        (6, 6, 0.2),
        (10, 4, 5.0),
    ] {
        let rows = dirichlet_rows(n, b, m, alpha, &mut rng).unwrap();
        let (mean, var) = moments(&rows, b, m);
        let mf = m as f64;
        let want_var = (mf - 1.0) / (mf * mf * (mf * alpha + 1.0));
        // Tolerances: about 5 standard errors of the estimates.
        assert!(
            (mean - 1.0 / mf).abs() < 1e-6,
            "b {b} m {m} α {alpha}: mean {mean}"
        );
        assert!(
            (var / want_var - 1.0).abs() < 0.03,
            "b {b} m {m} α {alpha}: variance {var}, Dir(α·1_m) has {want_var}"
        );
    }
    // The same seed gives the same Λ.
    let a = dirichlet_rows(5, 7, 4, 1.0, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    let b = dirichlet_rows(5, 7, 4, 1.0, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    assert_eq!(a, b);
}

/// A weight of `Dir(1_m)` has the marginal `Beta(1, m − 1)`, `P(λ ≤ x) = 1 − (1 − x)^(m − 1)`:
/// the Kolmogorov–Smirnov distance of the first weight of 40 000 rows from it stays under the
/// 0.1 % critical value `1.95/√N`, for rows over the whole batch (the Exp(1) sampler's SIMD
/// blocks and remainder) and over random subsets.
#[test]
fn dirichlet_weights_have_the_beta_marginal() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let n = 40_000;
    for (b, m) in [(13, 13), (128, 128), (9, 3)] {
        let rows = dirichlet_rows(n, b, m, 1.0, &mut rng).unwrap();
        // The first nonzero weight of each row (the first weight when m = b).
        let mut first: Vec<f64> = rows
            .chunks_exact(b)
            .map(|row| f64::from(*row.iter().find(|&&v| v > 0.0).unwrap()))
            .collect();
        first.sort_by(f64::total_cmp);
        let cdf = |x: f64| 1.0 - (1.0 - x).powi(m as i32 - 1);
        let d = first
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = cdf(x);
                (f - i as f64 / n as f64).max((i + 1) as f64 / n as f64 - f)
            })
            .fold(0.0f64, f64::max);
        let critical = 1.95 / (n as f64).sqrt();
        assert!(
            d < critical,
            "b {b} m {m}: KS distance {d}, critical {critical}"
        );
    }
}

/// With m = 2 tuples pairing each example with its partner, MultiMix at the last layer is
/// manifold mixup there: same mixed logits, targets and loss.
#[test]
fn multimix_with_pairs_is_manifold_mixup_at_the_last_layer() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (b, d, c) = (6, 5, 4);
    let z = randn(&mut rng, &[b, d]);
    let (w, bias) = (randn(&mut rng, &[c, d]), randn(&mut rng, &[c]));
    let labels: Vec<u32> = (0..b).map(|i| (i % c) as u32).collect();
    let y = smooth_one_hot(&labels, c, 0.1, &Device::Cpu).unwrap();
    let partner = vec![3, 0, 5, 1, 2, 4];
    let lam = 0.37;
    let lambda = pair_lambda(lam, &partner, &Device::Cpu).unwrap();
    let manifold_logits = head(&mix_pairs(&z, lam, &partner).unwrap(), &w, &bias);
    let manifold_targets = mix_pairs(&y, lam, &partner).unwrap();
    let multimix_logits = mix_rows(&lambda, &head(&z, &w, &bias)).unwrap();
    let multimix_targets = mix_rows(&lambda, &y).unwrap();
    assert!(max_abs_diff(&manifold_logits, &multimix_logits) < 1e-5);
    assert!(max_abs_diff(&manifold_targets, &multimix_targets) < 1e-6);
    let l1 = soft_cross_entropy(&manifold_logits, &manifold_targets).unwrap();
    let l2 = soft_cross_entropy(&multimix_logits, &multimix_targets).unwrap();
    assert!(max_abs_diff(&l1, &l2) < 1e-5);
}

/// `g(Λ Z) = Λ g(Z)` for the affine head (rows of Λ sum to 1), pooled and dense.
#[test]
fn mixing_logits_equals_mixing_embeddings() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (b, r, d, c, n) = (16, 9, 24, 10, 300);
    let (w, bias) = (randn(&mut rng, &[c, d]), randn(&mut rng, &[c]));
    let cfg = MultiMix {
        n,
        alpha: 1.0,
        m: None,
    };
    let lambda = cfg.sample(b, &mut rng, &Device::Cpu).unwrap();
    let z = randn(&mut rng, &[b, d]);
    let a = head(&mix_rows(&lambda, &z).unwrap(), &w, &bias);
    let e = mix_rows(&lambda, &head(&z, &w, &bias)).unwrap();
    assert!(
        max_abs_diff(&a, &e) < 1e-5,
        "pooled: {}",
        max_abs_diff(&a, &e)
    );

    let zd = randn(&mut rng, &[b, r, d]);
    let q = zd.mean(1).unwrap();
    let attn = attention(&zd, Some(&q), AttnNorm::Softmax).unwrap();
    let xi = dense_weights(&lambda, &attn).unwrap();
    let a = head(&mix_dense(&xi, &zd).unwrap(), &w, &bias);
    let e = mix_dense(&xi, &head(&zd, &w, &bias)).unwrap();
    assert!(
        max_abs_diff(&a, &e) < 1e-5,
        "dense: {}",
        max_abs_diff(&a, &e)
    );
}

/// Uniform attention gives ξ̂_kij = λ_ki at every position j, so dense MultiMix mixes every
/// position (values and targets) exactly as pooled MultiMix mixes examples.
#[test]
fn dense_with_uniform_attention_is_pooled_multimix_at_every_position() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (b, r, k, c, n) = (8, 5, 7, 3, 50);
    let lambda = MultiMix {
        n,
        alpha: 0.7,
        m: Some(5),
    }
    .sample(b, &mut rng, &Device::Cpu)
    .unwrap();
    let v = randn(&mut rng, &[b, r, k]);
    let attn = attention(&v, None, AttnNorm::Softmax).unwrap();
    let xi = dense_weights(&lambda, &attn).unwrap();
    let dense = mix_dense(&xi, &v).unwrap(); // [r, n, k]
    let labels: Vec<u32> = (0..b).map(|_| rng.random_range(0..c as u32)).collect();
    let y = smooth_one_hot(&labels, c, 0.0, &Device::Cpu).unwrap();
    let dense_y = mix_dense_targets(&xi, &y).unwrap();
    let pooled_y = mix_rows(&lambda, &y).unwrap();
    for j in 0..r {
        let pooled = mix_rows(&lambda, &v.narrow(1, j, 1).unwrap().squeeze(1).unwrap()).unwrap();
        assert!(
            max_abs_diff(&dense.get(j).unwrap(), &pooled) < 1e-5,
            "position {j}"
        );
        assert!(
            max_abs_diff(&dense_y.get(j).unwrap(), &pooled_y) < 1e-5,
            "targets {j}"
        );
    }
    // The weights of every position are convex.
    let sums = xi
        .sum(D::Minus1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
}

/// The factored dense mix (two products over the batch) equals the explicit `ξ̂` mix.
#[test]
fn factored_dense_mix_equals_explicit_weights() {
    use multimix_augment::dense::{mix_dense_factored, mix_dense_targets_factored};
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (b, r, k, c, n) = (12, 6, 5, 4, 40);
    let lambda = MultiMix {
        n,
        alpha: 1.0,
        m: Some(4),
    }
    .sample(b, &mut rng, &Device::Cpu)
    .unwrap();
    let v = randn(&mut rng, &[b, r, k]);
    for norm in [AttnNorm::Softmax, AttnNorm::ReluL1] {
        let attn = attention(&v, Some(&v.mean(1).unwrap()), norm).unwrap();
        let xi = dense_weights(&lambda, &attn).unwrap();
        let explicit = mix_dense(&xi, &v).unwrap().transpose(0, 1).unwrap();
        let factored = mix_dense_factored(&lambda, &attn, &v).unwrap();
        assert!(max_abs_diff(&explicit, &factored) < 1e-5, "{norm:?}");
        let labels: Vec<u32> = (0..b).map(|i| (i % c) as u32).collect();
        let y = smooth_one_hot(&labels, c, 0.1, &Device::Cpu).unwrap();
        let explicit = mix_dense_targets(&xi, &y).unwrap().transpose(0, 1).unwrap();
        let factored = mix_dense_targets_factored(&lambda, &attn, &y).unwrap();
        assert!(
            max_abs_diff(&explicit, &factored) < 1e-5,
            "{norm:?} targets"
        );
    }
}
