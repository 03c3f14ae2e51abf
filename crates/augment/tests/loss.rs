//! `multimix_augment::loss` against PyTorch/timm fixtures (tools/make_ops_fixtures.py), against
//! the composite fallback path, and for gradient flow, layouts and edge cases.

use candle_core::{DType, Device, IndexOp, Result, Tensor, Var};
use multimix_augment::loss::{log_softmax_last_dim, soft_cross_entropy};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::collections::HashMap;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/loss.safetensors"
);

/// f32 runs the custom ops, f64 the composite fallback; both must match PyTorch.
const DTYPES: [DType; 2] = [DType::F32, DType::F64];

fn fixtures() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(FIXTURES, &Device::Cpu).unwrap()
}

fn get(f: &HashMap<String, Tensor>, case: &str, name: &str, dtype: DType) -> Tensor {
    f.get(&format!("{case}.{name}"))
        .unwrap_or_else(|| panic!("fixture {case}.{name} missing"))
        .to_dtype(dtype)
        .unwrap()
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    to_f64(t).iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// `|got − want| ≤ 1e-5·|want| + 1e-6·max(max|want|, floor)` elementwise, shapes equal. `floor`
/// is the magnitude where f32 rounding of the op's inputs sets the error (`max|gy|` for
/// gradients).
fn assert_close(what: &str, got: &Tensor, want: &Tensor, floor: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let atol = 1e-6 * max_abs(want).max(floor);
    for (i, (a, b)) in to_f64(got).iter().zip(&to_f64(want)).enumerate() {
        let tol = 1e-5 * b.abs() + atol;
        assert!(
            (a - b).abs() <= tol,
            "{what}[{i}]: got {a}, want {b} (tol {tol})"
        );
    }
}

/// Bitwise equal values and equal shapes.
fn assert_same(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    assert_eq!(to_f64(got), to_f64(want), "{what}");
}

fn var(t: &Tensor) -> Var {
    Var::from_tensor(t).unwrap()
}

/// Loss `Σ y·gy` backpropagated; returns the output and the gradient of `x` (if any).
fn run(y: &Tensor, gy: &Tensor, x: &Var) -> Option<Tensor> {
    let grads = (y * gy).unwrap().sum_all().unwrap().backward().unwrap();
    grads.get(x.as_tensor()).cloned()
}

#[test]
fn soft_cross_entropy_matches_timm() {
    let f = fixtures();
    for dtype in DTYPES {
        for case in ["ce", "ce_nd", "ce_large"] {
            let logits = var(&get(&f, case, "logits", dtype));
            let targets = var(&get(&f, case, "targets", dtype));
            let loss = soft_cross_entropy(&logits, &targets).unwrap();
            assert_eq!((loss.rank(), loss.dtype()), (0, dtype), "{case}: scalar");
            assert_close(
                &format!("{case}.y ({dtype:?})"),
                &loss,
                &get(&f, case, "y", dtype),
                0.0,
            );
            let gy = get(&f, case, "gy", dtype);
            let grads = (&loss * &gy).unwrap().backward().unwrap();
            let g = grads
                .get(logits.as_tensor())
                .expect("gradient reaches the logits");
            let want = get(&f, case, "glogits", dtype);
            let rows = (logits.elem_count() / logits.dims()[logits.rank() - 1]) as f64;
            let floor = max_abs(&gy) / rows;
            assert_close(&format!("{case}.glogits ({dtype:?})"), g, &want, floor);
            assert!(
                grads.get(targets.as_tensor()).is_none(),
                "{case}: targets are constants"
            );
        }
    }
}

#[test]
fn log_softmax_matches_torch() {
    let f = fixtures();
    for dtype in DTYPES {
        for case in ["lsm", "lsm_large"] {
            let x = var(&get(&f, case, "x", dtype));
            let y = log_softmax_last_dim(&x).unwrap();
            assert_eq!(y.dtype(), dtype);
            assert_close(
                &format!("{case}.y ({dtype:?})"),
                &y,
                &get(&f, case, "y", dtype),
                0.0,
            );
            let gy = get(&f, case, "gy", dtype);
            let g = run(&y, &gy, &x).expect("gradient reaches x");
            let want = get(&f, case, "gx", dtype);
            assert_close(&format!("{case}.gx ({dtype:?})"), &g, &want, max_abs(&gy));
        }
    }
}

fn randn(rng: &mut StdRng, dims: &[usize], scale: f32) -> Tensor {
    let n = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| scale * Distribution::<f32>::sample(&StandardNormal, rng))
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// Soft targets: a row-normalized random positive matrix.
fn soft_targets(rng: &mut StdRng, dims: &[usize]) -> Tensor {
    let e = randn(rng, dims, 2.0).exp().unwrap();
    e.broadcast_div(&e.sum_keepdim(dims.len() - 1).unwrap())
        .unwrap()
}

/// The custom ops (f32) equal the composite fallback (the same values in f64) on inputs large
/// enough to be split over many parallel tasks.
#[test]
fn custom_ops_match_composite_fallback_on_large_inputs() {
    let mut rng = StdRng::seed_from_u64(5);
    let logits = randn(&mut rng, &[512, 100], 5.0);
    let targets = soft_targets(&mut rng, &[512, 100]);
    let gy = randn(&mut rng, &[512, 100], 1.0);
    let mut results = Vec::new();
    for dtype in DTYPES {
        let x = var(&logits.to_dtype(dtype).unwrap());
        let t = targets.to_dtype(dtype).unwrap();
        let loss = soft_cross_entropy(&x, &t).unwrap();
        let g_loss = loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
        let lsm = log_softmax_last_dim(&x).unwrap();
        let g_lsm = run(&lsm, &gy.to_dtype(dtype).unwrap(), &x).unwrap();
        results.push([loss, g_loss, lsm, g_lsm]);
    }
    let floors = [0.0, 1.0 / 512.0, 0.0, max_abs(&gy)];
    let names = ["loss", "loss grad", "log_softmax", "log_softmax grad"];
    for i in 0..4 {
        assert_eq!(results[0][i].dtype(), DType::F32);
        assert_eq!(results[1][i].dtype(), DType::F64);
        assert_close(names[i], &results[0][i], &results[1][i], floors[i]);
    }
}

/// Gradients reach the logits `Var` (finite, not all zero, right shape); the targets `Var`
/// gets none, on both paths.
#[test]
fn gradients_reach_logits_not_targets() {
    let mut rng = StdRng::seed_from_u64(9);
    for dtype in DTYPES {
        let x = var(&randn(&mut rng, &[2, 3, 7], 2.0).to_dtype(dtype).unwrap());
        let t = var(&soft_targets(&mut rng, &[2, 3, 7]).to_dtype(dtype).unwrap());
        let loss = soft_cross_entropy(&x, &t).unwrap();
        let lsm = log_softmax_last_dim(&x).unwrap().sum_all().unwrap();
        let grads = (loss + lsm.affine(1e-2, 0.0).unwrap())
            .unwrap()
            .backward()
            .unwrap();
        let g = to_f64(
            grads
                .get(x.as_tensor())
                .expect("gradient reaches the logits"),
        );
        assert_eq!(g.len(), 42);
        assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|&v| v != 0.0));
        assert!(
            grads.get(t.as_tensor()).is_none(),
            "{dtype:?}: targets got a gradient"
        );
    }
}

/// Non-contiguous logits and targets (transposed, narrowed) give the same loss, log_softmax
/// and gradients as contiguous copies.
#[test]
fn non_contiguous_inputs_match_contiguous_copies() {
    let mut rng = StdRng::seed_from_u64(3);
    let logits = randn(&mut rng, &[6, 11], 3.0);
    let targets = soft_targets(&mut rng, &[6, 11]);
    let gy = randn(&mut rng, &[6, 11], 1.0);
    let x = var(&logits);
    let loss_ref = soft_cross_entropy(&x, &targets).unwrap();
    let g_ref = loss_ref
        .backward()
        .unwrap()
        .get(x.as_tensor())
        .unwrap()
        .clone();
    let lsm_ref = log_softmax_last_dim(&x).unwrap();
    let g_lsm_ref = run(&lsm_ref, &gy, &x).unwrap();

    // Logits stored transposed, targets narrowed out of a wider tensor.
    let base = var(&logits.t().unwrap().contiguous().unwrap());
    let xt = base.as_tensor().t().unwrap();
    let pad = Tensor::zeros((6, 2), DType::F32, &Device::Cpu).unwrap();
    let wide = Tensor::cat(&[&pad, &targets, &pad], 1).unwrap();
    let tn = wide.narrow(1, 2, 11).unwrap();
    assert!(!xt.is_contiguous() && !tn.is_contiguous());
    let loss = soft_cross_entropy(&xt, &tn).unwrap();
    assert_same("loss", &loss, &loss_ref);
    let g = loss
        .backward()
        .unwrap()
        .get(base.as_tensor())
        .unwrap()
        .t()
        .unwrap();
    assert_same("loss grad", &g, &g_ref);
    let lsm = log_softmax_last_dim(&xt).unwrap();
    assert_same("log_softmax", &lsm, &lsm_ref);
    let g_lsm = run(&lsm, &gy, &base).unwrap().t().unwrap();
    assert_same("log_softmax grad", &g_lsm, &g_lsm_ref);
}

/// Mismatched shapes and rank-0 inputs are errors; empty inputs follow torch (NaN loss for
/// zero rows, 0 for zero classes, empty log_softmax).
#[test]
fn edge_cases() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((4, 5), DType::F32, &dev)?;
    assert!(soft_cross_entropy(&x, &x.i((.., ..4))?).is_err());
    assert!(soft_cross_entropy(&x, &x.t()?).is_err());
    let s = Tensor::new(1.0f32, &dev)?;
    assert!(soft_cross_entropy(&s, &s).is_err());
    assert!(log_softmax_last_dim(&s).is_err());

    let no_rows = Tensor::zeros((0, 5), DType::F32, &dev)?;
    assert!(soft_cross_entropy(&no_rows, &no_rows)?
        .to_scalar::<f32>()?
        .is_nan());
    let no_classes = Var::zeros((3, 0), DType::F32, &dev)?;
    let loss = soft_cross_entropy(&no_classes, &no_classes)?;
    assert_eq!(loss.to_scalar::<f32>()?, 0.0);
    let g = loss.backward()?;
    assert_eq!(
        g.get(no_classes.as_tensor()).map(|g| g.dims().to_vec()),
        Some(vec![3, 0])
    );
    assert_eq!(log_softmax_last_dim(&no_rows)?.dims(), &[0, 5]);
    Ok(())
}
