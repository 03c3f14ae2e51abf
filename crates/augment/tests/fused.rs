//! The fused losses of MultiMix and dense MultiMix (one custom op each) against their candle
//! compositions (mix, then `soft_cross_entropy`, candle's autograd) in loss and gradients, and
//! against central finite differences; the host attention against its composition; and the
//! parallel Dirichlet sampler's determinism.

use candle_core::{DType, Device, Tensor, Var};
use multimix_augment::dense::{
    attention, dense_multimix_loss, gap_attention, gap_query, mix_dense_factored,
    mix_dense_targets_factored,
};
use multimix_augment::loss::soft_cross_entropy;
use multimix_augment::multimix::{mix_rows, multimix_loss};
use multimix_augment::sample::dirichlet_rows;
use multimix_augment::targets::smooth_one_hot;
use multimix_augment::{AttnNorm, MultiMix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn uniform(rng: &mut ChaCha8Rng, dims: &[usize], scale: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// max |a − b| / (1 + max |b|): absolute near zero, relative for large values.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (values(a), values(b));
    assert_eq!(a.len(), b.len());
    let scale = 1.0 + b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Soft targets: positive rows summing to 1 (teacher-like, not one-hot).
fn soft_targets(rng: &mut ChaCha8Rng, dims: &[usize]) -> Tensor {
    let t = uniform(rng, dims, 2.0).exp().unwrap();
    let sum = t.sum_keepdim(dims.len() - 1).unwrap();
    t.broadcast_div(&sum).unwrap()
}

fn sample_lambda(n: usize, b: usize, m: Option<usize>, rng: &mut ChaCha8Rng) -> Tensor {
    MultiMix { n, alpha: 1.0, m }
        .sample(b, rng, &Device::Cpu)
        .unwrap()
}

/// MultiMix's fused loss equals `soft_cross_entropy(ΛL, ΛY)` in value and in `∂/∂L`, for
/// one-hot (plain and label-smoothed) and soft targets, whole-batch and subset tuples.
#[test]
fn fused_multimix_loss_equals_composite() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for (n, b, c, m) in [
        (1, 3, 2, None),
        (7, 5, 4, Some(2)),
        (64, 16, 10, None),
        (300, 32, 100, Some(9)),
        (1000, 128, 10, None),
    ] {
        let lambda = sample_lambda(n, b, m, &mut rng);
        let logits = Var::from_tensor(&uniform(&mut rng, &[b, c], 4.0)).unwrap();
        let labels: Vec<u32> = (0..b).map(|_| rng.random_range(0..c as u32)).collect();
        let one_hot = smooth_one_hot(&labels, c, 0.0, &Device::Cpu).unwrap();
        let smoothed = smooth_one_hot(&labels, c, 0.1, &Device::Cpu).unwrap();
        // A distillation-like sum of targets (rows sum to 1.5).
        let summed = (&smoothed + (soft_targets(&mut rng, &[b, c]) * 0.5).unwrap()).unwrap();
        for (what, y) in [
            ("one-hot", one_hot),
            ("smoothed", smoothed),
            ("soft", summed),
        ] {
            let fused = multimix_loss(&lambda, &logits, &y).unwrap();
            let mixed = mix_rows(&lambda, &logits).unwrap();
            let reference = soft_cross_entropy(&mixed, &mix_rows(&lambda, &y).unwrap()).unwrap();
            let ctx = format!("n {n} b {b} c {c} m {m:?} {what}");
            assert!(rel_diff(&fused, &reference) < 1e-5, "loss, {ctx}");
            let g_fused = fused.backward().unwrap().get(&logits).unwrap().clone();
            let g_ref = reference.backward().unwrap().get(&logits).unwrap().clone();
            assert!(rel_diff(&g_fused, &g_ref) < 1e-5, "gradient, {ctx}");
            // The gradient is not trivially zero.
            assert!(values(&g_ref).iter().any(|g| g.abs() > 1e-5), "{ctx}");
        }
    }
}

/// The composite dense MultiMix loss of `mix_dense_factored` and its targets.
fn dense_composite(lambda: &Tensor, attn: &Tensor, logits: &Tensor, y: &Tensor) -> Tensor {
    let mixed = mix_dense_factored(lambda, attn, logits).unwrap();
    let targets = match y.rank() {
        2 => mix_dense_targets_factored(lambda, attn, y).unwrap(),
        _ => mix_dense_factored(lambda, attn, y).unwrap(),
    };
    soft_cross_entropy(&mixed, &targets).unwrap()
}

/// Dense MultiMix's fused loss equals the composite in value and in the gradients to the logits
/// and, when the attention is tracked, to the attention (and through it to the embeddings), for
/// per-example one-hot, soft and per-position targets, softmax and relu-l1 attention (whose zeros
/// make some normalizers just ε).
#[test]
fn fused_dense_loss_equals_composite() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (n, b, r, c, d, m) in [
        (1, 2, 1, 2, 3, None),
        (9, 6, 4, 3, 5, Some(2)),
        (40, 16, 16, 10, 8, None),
        (200, 32, 9, 100, 6, Some(5)),
        (50, 64, 8, 4, 5, None),
        (30, 40, 3, 10, 4, Some(7)),
        // 49 positions: the spikes' register blocks of 32, 8 and 1 positions.
        (20, 24, 49, 5, 4, None),
    ] {
        let lambda = sample_lambda(n, b, m, &mut rng);
        let z = Var::from_tensor(&uniform(&mut rng, &[b, r, d], 2.0)).unwrap();
        let logits = Var::from_tensor(&uniform(&mut rng, &[b, r, c], 4.0)).unwrap();
        let labels: Vec<u32> = (0..b).map(|_| rng.random_range(0..c as u32)).collect();
        let smoothed = smooth_one_hot(&labels, c, 0.1, &Device::Cpu).unwrap();
        let targets = [
            (
                "one-hot",
                smooth_one_hot(&labels, c, 0.0, &Device::Cpu).unwrap(),
            ),
            ("soft", soft_targets(&mut rng, &[b, c])),
            (
                "per-position",
                smoothed
                    .unsqueeze(1)
                    .unwrap()
                    .broadcast_add(&soft_targets(&mut rng, &[b, r, c]))
                    .unwrap(),
            ),
            ("smoothed", smoothed),
        ];
        for (what, y) in &targets {
            for norm in [AttnNorm::Softmax, AttnNorm::ReluL1] {
                for detach in [true, false] {
                    let za = if detach {
                        z.as_tensor().detach()
                    } else {
                        z.as_tensor().clone()
                    };
                    let attn = attention(&za, Some(&za.mean(1).unwrap()), norm).unwrap();
                    let fused = dense_multimix_loss(&lambda, &attn, &logits, y).unwrap();
                    let reference = dense_composite(&lambda, &attn, &logits, y);
                    let ctx = format!("n {n} b {b} r {r} c {c} {what} {norm:?} detach {detach}");
                    assert!(rel_diff(&fused, &reference) < 1e-5, "loss, {ctx}");
                    let (gf, gr) = (fused.backward().unwrap(), reference.backward().unwrap());
                    let (lf, lr) = (gf.get(&logits).unwrap(), gr.get(&logits).unwrap());
                    assert!(rel_diff(lf, lr) < 1e-5, "logit gradient, {ctx}");
                    assert!(values(lr).iter().any(|g| g.abs() > 1e-6), "{ctx}");
                    match (gf.get(&z), gr.get(&z)) {
                        (None, None) => assert!(detach, "{ctx}: no gradient to Z"),
                        (Some(zf), Some(zr)) => {
                            assert!(!detach, "{ctx}: gradient through detached attention");
                            assert!(rel_diff(zf, zr) < 1e-5, "embedding gradient, {ctx}");
                        }
                        _ => panic!("{ctx}: gradient to Z in one version only"),
                    }
                }
            }
        }
    }
}

/// The fused ops' gradients against central finite differences of their own forward pass, on a
/// tiny case (logits and attention as leaves). The mixed targets are constants of the gradient
/// (as in `soft_cross_entropy`), so the attention's check uses targets shared by all examples,
/// whose mix does not depend on the attention.
#[test]
fn fused_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (n, b, r, c) = (5, 3, 2, 3);
    let lambda = sample_lambda(n, b, None, &mut rng);
    let y = soft_targets(&mut rng, &[1, c]).repeat((b, 1)).unwrap();
    let logits = uniform(&mut rng, &[b, r, c], 2.0);
    let attn_data = soft_targets(&mut rng, &[b, r]);
    let (lv, av) = (
        Var::from_tensor(&logits).unwrap(),
        Var::from_tensor(&attn_data).unwrap(),
    );
    let dense = |l: &Tensor, a: &Tensor| {
        dense_multimix_loss(&lambda, a, l, &y)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let grads = dense_multimix_loss(&lambda, &av, &lv, &y)
        .unwrap()
        .backward()
        .unwrap();
    let pooled_logits = logits.get_on_dim(1, 0).unwrap();
    let pv = Var::from_tensor(&pooled_logits).unwrap();
    let y_pooled = soft_targets(&mut rng, &[b, c]);
    let pooled = |l: &Tensor| {
        multimix_loss(&lambda, l, &y_pooled)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let pooled_grad = multimix_loss(&lambda, &pv, &y_pooled)
        .unwrap()
        .backward()
        .unwrap();
    let h = 1e-3f32;
    let bump = |t: &Tensor, i: usize, by: f32| {
        let mut v = values(t);
        v[i] += by;
        Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
    };
    let check = |what: &str, analytic: &Tensor, f: &dyn Fn(&Tensor) -> f32, at: &Tensor| {
        let analytic = values(analytic);
        for (i, g) in analytic.iter().enumerate() {
            let fd = (f(&bump(at, i, h)) - f(&bump(at, i, -h))) / (2.0 * h);
            assert!(
                (fd - g).abs() < 1e-3 * (1.0 + g.abs()),
                "{what} [{i}]: analytic {g}, fd {fd}"
            );
        }
        assert!(analytic.iter().any(|g| g.abs() > 1e-3), "{what}: all zero");
    };
    check(
        "dense dL",
        grads.get(&lv).unwrap(),
        &|l| dense(l, &attn_data),
        &logits,
    );
    check(
        "dense dA",
        grads.get(&av).unwrap(),
        &|a| dense(&logits, a),
        &attn_data,
    );
    check(
        "pooled dL",
        pooled_grad.get(&pv).unwrap(),
        &pooled,
        &pooled_logits,
    );
}

/// Off the fused path (f64) the same functions give the composite's values: the f32 fused ops
/// agree with the f64 compositions.
#[test]
fn f64_fallback_agrees_with_fused_f32() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (n, b, r, c) = (30, 8, 4, 5);
    let lambda = sample_lambda(n, b, Some(3), &mut rng);
    let logits = uniform(&mut rng, &[b, r, c], 3.0);
    let attn = soft_targets(&mut rng, &[b, r]);
    let y = soft_targets(&mut rng, &[b, c]);
    let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let dense32 = dense_multimix_loss(&lambda, &attn, &logits, &y).unwrap();
    let dense64 = dense_multimix_loss(&f64s(&lambda), &f64s(&attn), &f64s(&logits), &f64s(&y))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert!(rel_diff(&dense32, &dense64) < 1e-5);
    let pooled = logits.get_on_dim(1, 0).unwrap();
    let pooled32 = multimix_loss(&lambda, &pooled, &y).unwrap();
    let pooled64 = multimix_loss(&f64s(&lambda), &f64s(&pooled), &f64s(&y))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert!(rel_diff(&pooled32, &pooled64) < 1e-5);
}

/// Shapes that do not fit are errors naming the shapes, not panics.
#[test]
fn fused_losses_reject_mismatched_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let lambda = sample_lambda(4, 3, None, &mut rng);
    let logits = uniform(&mut rng, &[3, 5], 1.0);
    let err = multimix_loss(&lambda, &logits, &uniform(&mut rng, &[3, 4], 1.0)).unwrap_err();
    assert!(err.to_string().contains("[3, 4]"), "{err}");
    let dense = uniform(&mut rng, &[3, 2, 5], 1.0);
    let attn = uniform(&mut rng, &[3, 3], 1.0);
    let y = uniform(&mut rng, &[3, 5], 1.0);
    let err = dense_multimix_loss(&lambda, &attn, &dense, &y).unwrap_err();
    assert!(err.to_string().contains("attention [3, 3]"), "{err}");
}

/// The `gap` query (a batched product) is the mean over positions, in value and gradient.
#[test]
fn gap_query_is_the_mean_over_positions() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let z = Var::from_tensor(&uniform(&mut rng, &[6, 5, 4], 2.0)).unwrap();
    let w = uniform(&mut rng, &[6, 4], 1.0);
    let gap = gap_query(&z).unwrap();
    let mean = z.mean(1).unwrap();
    assert!(rel_diff(&gap, &mean) < 1e-6);
    let g_gap = (gap * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let g_mean = (mean * &w).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(rel_diff(g_gap.get(&z).unwrap(), g_mean.get(&z).unwrap()) < 1e-6);
}

/// The host attention of untracked embeddings (the detached default) equals candle's composition
/// (which a tracked input takes), for the gap query (also fused, `gap_attention`) and a query of
/// other directions, softmax and relu-l1 (whose all-negative rows give all-zero attention), and
/// odd sizes (SIMD tails).
#[test]
fn host_attention_equals_composite() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for (b, r, d) in [(1, 1, 1), (3, 5, 7), (8, 16, 96), (4, 49, 33)] {
        let z = Var::from_tensor(&uniform(&mut rng, &[b, r, d], 2.0)).unwrap();
        let zd = z.as_tensor().detach();
        let gap = gap_query(&zd).unwrap();
        assert!(
            rel_diff(&gap, &gap_query(&z).unwrap()) < 1e-6,
            "gap, b {b} r {r} d {d}"
        );
        let other = uniform(&mut rng, &[b, d], 1.0);
        for norm in [AttnNorm::Softmax, AttnNorm::ReluL1] {
            let composite = attention(&z, Some(&gap_query(&z).unwrap()), norm).unwrap();
            for (name, fused) in [("host", &zd), ("tracked", &z)] {
                let a = gap_attention(fused, norm).unwrap();
                let ctx = format!("gap_attention {name}, b {b} r {r} d {d} {norm:?}");
                assert!(rel_diff(&a, &composite) < 1e-6, "{ctx}");
            }
            for (name, u) in [
                ("gap", &gap),
                ("other", &other),
                ("negated", &other.neg().unwrap()),
            ] {
                let host = attention(&zd, Some(u), norm).unwrap();
                let composite = attention(&z, Some(u), norm).unwrap();
                let ctx = format!("b {b} r {r} d {d} {name} {norm:?}");
                assert!(rel_diff(&host, &composite) < 1e-6, "{ctx}");
                assert!(!host.track_op(), "{ctx}");
            }
        }
    }
}

/// The parallel sampler gives the same Λ for the same seed whatever the number of threads, and
/// different Λ for different seeds.
#[test]
fn dirichlet_rows_do_not_depend_on_the_thread_count() {
    // α = 0.5 takes the Gamma sampler, α = 1 the Exp(1) one.
    for alpha in [0.5, 1.0] {
        let draw = |threads: usize, seed: u64| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    dirichlet_rows(333, 17, 6, alpha, &mut rng).unwrap()
                })
        };
        let one = draw(1, 9);
        assert_eq!(one, draw(3, 9), "α {alpha}");
        assert_eq!(one, draw(8, 9), "α {alpha}");
        assert_ne!(one, draw(1, 10), "α {alpha}");
    }
}
