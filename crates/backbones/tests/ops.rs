//! `multimix_backbones::ops` against PyTorch fixtures (tools/make_ops_fixtures.py), against the
//! composite fallback path, and for gradient flow and layout handling.

use candle_core::{DType, Device, Result, Tensor, Var};
use multimix_backbones::ops::{bias_add, gelu_erf, layer_norm, softmax_last_dim};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::collections::HashMap;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/ops.safetensors"
);
const EPS: f64 = 1e-6;

fn fixtures() -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(FIXTURES, &Device::Cpu)
}

fn get(f: &HashMap<String, Tensor>, case: &str, name: &str) -> Tensor {
    f.get(&format!("{case}.{name}"))
        .unwrap_or_else(|| panic!("fixture {case}.{name} missing"))
        .clone()
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
/// gradients: a saturated softmax has gradients far below it).
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

/// Leaves of `dtype` built from fixture inputs, as `Var`s.
fn vars(f: &HashMap<String, Tensor>, case: &str, names: &[&str], dtype: DType) -> Vec<Var> {
    names
        .iter()
        .map(|n| Var::from_tensor(&get(f, case, n).to_dtype(dtype).unwrap()).unwrap())
        .collect()
}

/// Runs `op` on the case's inputs in `dtype`, backpropagates the fixture's `gy` and compares
/// the output and every input gradient with PyTorch.
fn check_case(f: &HashMap<String, Tensor>, case: &str, inputs: &[&str], dtype: DType, op: Op) {
    let vs = vars(f, case, inputs, dtype);
    let ts: Vec<Tensor> = vs.iter().map(|v| v.as_tensor().clone()).collect();
    let y = op(&ts).unwrap();
    assert_eq!(y.dtype(), dtype, "{case}: dtype");
    assert_close(
        &format!("{case}.y ({dtype:?})"),
        &y,
        &get(f, case, "y"),
        0.0,
    );
    let gy = get(f, case, "gy").to_dtype(dtype).unwrap();
    let floor = max_abs(&gy);
    let grads = (y * gy).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in inputs.iter().zip(&vs) {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{case}: no grad for {name}"));
        let want = get(f, case, &format!("g{name}"));
        assert_close(&format!("{case}.g{name} ({dtype:?})"), g, &want, floor);
    }
}

fn ln_op(v: &[Tensor]) -> Result<Tensor> {
    layer_norm(&v[0], &v[1], &v[2], EPS)
}

fn softmax_op(v: &[Tensor]) -> Result<Tensor> {
    softmax_last_dim(&v[0])
}

fn gelu_op(v: &[Tensor]) -> Result<Tensor> {
    gelu_erf(&v[0])
}

fn bias_op(v: &[Tensor]) -> Result<Tensor> {
    bias_add(&v[0], &v[1])
}

/// f32 runs the custom ops, f64 the composite fallback; both must match PyTorch.
const DTYPES: [DType; 2] = [DType::F32, DType::F64];

#[test]
fn layer_norm_matches_torch() {
    let f = fixtures().unwrap();
    for dtype in DTYPES {
        for case in ["ln", "ln_wide", "ln_offset"] {
            check_case(&f, case, &["x", "w", "b"], dtype, ln_op);
        }
    }
}

#[test]
fn softmax_matches_torch() {
    let f = fixtures().unwrap();
    for dtype in DTYPES {
        for case in ["softmax", "softmax_wide", "softmax_large"] {
            check_case(&f, case, &["x"], dtype, softmax_op);
        }
    }
}

#[test]
fn gelu_matches_torch() {
    let f = fixtures().unwrap();
    for dtype in DTYPES {
        for case in ["gelu", "gelu_grid"] {
            check_case(&f, case, &["x"], dtype, gelu_op);
        }
    }
}

#[test]
fn bias_add_matches_torch() {
    let f = fixtures().unwrap();
    for dtype in DTYPES {
        for case in ["bias", "bias_wide"] {
            check_case(&f, case, &["x", "b"], dtype, bias_op);
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

/// `Σ y·gy` backpropagated: the output of `op` and the gradients of the leaves `vars`.
fn eval_with_grads(op: Op, inputs: &[Tensor], vars: &[Var], gy: &Tensor) -> (Tensor, Vec<Tensor>) {
    let y = op(inputs).unwrap();
    let gy = gy.to_dtype(y.dtype()).unwrap();
    let grads = (&y * gy).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = vars
        .iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .expect("gradient reaches every input")
                .clone()
        })
        .collect();
    (y, gs)
}

/// `Var`s holding `inputs`, and the inputs as tensors tracked through them.
fn leaves(inputs: &[Tensor]) -> (Vec<Var>, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let tensors = vars.iter().map(|v| v.as_tensor().clone()).collect();
    (vars, tensors)
}

type Op = fn(&[Tensor]) -> Result<Tensor>;

/// `(name, op, inputs)` for activations `[b, t, d]` and parameters `[d]`.
fn cases(rng: &mut StdRng, b: usize, t: usize, d: usize) -> Vec<(&'static str, Op, Vec<Tensor>)> {
    let mut x = || randn(rng, &[b, t, d], 3.0);
    let (x1, x2, x3, x4) = (x(), x(), x(), x());
    vec![
        (
            "layer_norm",
            ln_op,
            vec![x1, randn(rng, &[d], 1.0), randn(rng, &[d], 1.0)],
        ),
        ("softmax", softmax_op, vec![x2]),
        ("gelu", gelu_op, vec![x3]),
        ("bias_add", bias_op, vec![x4, randn(rng, &[d], 1.0)]),
    ]
}

/// The custom-op path (f32) equals the composite fallback (the same values in f64) on inputs
/// large enough to be split over many parallel tasks (ViT-Tiny activations, batch 8).
#[test]
fn custom_ops_match_composite_fallback_on_large_inputs() {
    let mut rng = StdRng::seed_from_u64(7);
    for (name, op, inputs) in cases(&mut rng, 8, 65, 192) {
        let gy = randn(&mut rng, inputs[0].dims(), 1.0);
        let (vars, tensors) = leaves(&inputs);
        let (y32, g32) = eval_with_grads(op, &tensors, &vars, &gy);
        let inputs64: Vec<Tensor> = inputs
            .iter()
            .map(|t| t.to_dtype(DType::F64).unwrap())
            .collect();
        let (vars, tensors) = leaves(&inputs64);
        let (y64, g64) = eval_with_grads(op, &tensors, &vars, &gy);
        assert_eq!((y32.dtype(), y64.dtype()), (DType::F32, DType::F64));
        assert_close(&format!("{name}.y"), &y32, &y64, 0.0);
        for (i, (a, b)) in g32.iter().zip(&g64).enumerate() {
            assert_close(&format!("{name}.grad[{i}]"), a, b, max_abs(&gy));
        }
    }
}

/// Every input of every op is a `Var` that gets a finite gradient of its shape, not all zero.
#[test]
fn gradients_reach_every_var() {
    let mut rng = StdRng::seed_from_u64(11);
    for (name, op, inputs) in cases(&mut rng, 2, 3, 8) {
        let gy = randn(&mut rng, inputs[0].dims(), 1.0);
        let (vars, tensors) = leaves(&inputs);
        let (_, grads) = eval_with_grads(op, &tensors, &vars, &gy);
        for (i, (g, x)) in grads.iter().zip(&inputs).enumerate() {
            assert_eq!(g.dims(), x.dims(), "{name}: grad {i} shape");
            let v = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                v.iter().all(|x| x.is_finite()),
                "{name}: grad {i} not finite"
            );
            assert!(v.iter().any(|&x| x != 0.0), "{name}: grad {i} is zero");
        }
    }
}

type View = Box<dyn Fn(&Tensor) -> Tensor>;

/// `(base, view)` where `view(base)` is a non-contiguous tensor equal to `t`. For rank ≥ 2:
/// the last two dims stored transposed (`k = 0`) or the last dim narrowed out of a wider one
/// (`k = 1`); for vectors: every second element of a `[d, 2]` matrix.
fn strided_view(t: &Tensor, k: usize) -> (Tensor, View) {
    let last = t.rank() - 1;
    let d = t.dim(last).unwrap();
    if last == 0 {
        let base = Tensor::stack(&[t, &t.zeros_like().unwrap()], 1).unwrap();
        (
            base,
            Box::new(|b: &Tensor| b.narrow(1, 0, 1).unwrap().squeeze(1).unwrap()),
        )
    } else if k == 0 {
        let base = t.transpose(last - 1, last).unwrap().contiguous().unwrap();
        (
            base,
            Box::new(move |b: &Tensor| b.transpose(last - 1, last).unwrap()),
        )
    } else {
        let pad = t.narrow(last, 0, 2).unwrap().zeros_like().unwrap();
        let base = Tensor::cat(&[&pad, t, &pad], last).unwrap();
        (
            base,
            Box::new(move |b: &Tensor| b.narrow(last, 2, d).unwrap()),
        )
    }
}

/// A non-contiguous input (transposed, narrowed; parameters with stride 2) gives the same
/// output and gradients as its contiguous copy.
#[test]
fn non_contiguous_inputs_match_contiguous_copies() {
    let mut rng = StdRng::seed_from_u64(13);
    for (name, op, inputs) in cases(&mut rng, 2, 5, 12) {
        let gy = randn(&mut rng, inputs[0].dims(), 1.0);
        let (vars, tensors) = leaves(&inputs);
        let (y_ref, g_ref) = eval_with_grads(op, &tensors, &vars, &gy);
        for k in 0..2 {
            let mut bases = Vec::new();
            let mut views = Vec::new();
            for x in &inputs {
                let (base, view) = strided_view(x, k);
                let var = Var::from_tensor(&base).unwrap();
                let v = view(var.as_tensor());
                assert!(!v.is_contiguous(), "{name}: view {k} is contiguous");
                bases.push((var, view));
                views.push(v);
            }
            let y = op(&views).unwrap();
            assert_same(&format!("{name}.y view {k}"), &y, &y_ref);
            let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            for (i, ((var, view), g)) in bases.iter().zip(&g_ref).enumerate() {
                let gb = grads
                    .get(var.as_tensor())
                    .expect("gradient reaches the base");
                assert_same(&format!("{name}.grad[{i}] view {k}"), &view(gb), g);
            }
        }
    }
}

/// Wrong parameter shapes and rank-0 inputs are errors, not panics.
#[test]
fn invalid_shapes_are_errors() {
    let x = Tensor::zeros((2, 8), DType::F32, &Device::Cpu).unwrap();
    let p7 = Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap();
    let p8 = Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap();
    let scalar = Tensor::new(1.0f32, &Device::Cpu).unwrap();
    assert!(layer_norm(&x, &p7, &p8, EPS).is_err());
    assert!(layer_norm(&x, &p8, &p7, EPS).is_err());
    assert!(layer_norm(&x, &x, &p8, EPS).is_err());
    assert!(bias_add(&x, &p7).is_err());
    assert!(softmax_last_dim(&scalar).is_err());
    assert!(layer_norm(&x, &p8, &p8, EPS).is_ok());
}

/// Empty inputs give empty outputs of the same shape (and empty gradients).
#[test]
fn empty_inputs_give_empty_outputs() {
    for dims in [[0usize, 8], [3, 0]] {
        let x = Var::zeros(&dims[..], DType::F32, &Device::Cpu).unwrap();
        let p = Var::zeros(dims[1], DType::F32, &Device::Cpu).unwrap();
        let outs = [
            layer_norm(&x, &p, &p, EPS).unwrap(),
            softmax_last_dim(&x).unwrap(),
            gelu_erf(&x).unwrap(),
            bias_add(&x, &p).unwrap(),
        ];
        for y in outs {
            assert_eq!(y.dims(), &dims[..]);
            let grads = y.sum_all().unwrap().backward().unwrap();
            assert_eq!(grads.get(x.as_tensor()).unwrap().dims(), &dims[..]);
        }
    }
}

/// `max |got − want| ≤ tol · max |want|`, shapes equal.
fn assert_rel(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let scale = max_abs(want);
    assert!(scale > 0.0, "{what}: reference is all zero");
    let err = to_f64(got)
        .iter()
        .zip(&to_f64(want))
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= tol * scale,
        "{what}: max error {err} > {tol} · {scale}"
    );
}

/// `(y, dx, dw)` of `Σ conv(x, w) · gy` for the f32 leaves `x`, `w`.
fn conv_with_grads(
    conv: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    x: &Tensor,
    w: &Tensor,
    gy: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let (vx, vw) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
    let y = conv(vx.as_tensor(), vw.as_tensor()).unwrap();
    let grads = (&y * gy.to_dtype(y.dtype()).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let dx = grads.get(vx.as_tensor()).expect("dx").clone();
    let dw = grads.get(vw.as_tensor()).expect("dw").clone();
    (y, dx, dw)
}

/// Sizes of one conv2d case: batch, channels, height, width, outputs, kernel, stride, padding.
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize);

/// A random case: its label, `x`, the kernel, an output gradient `gy`, and the project's
/// conv2d `(y, dx, dw)` of `Σ conv(x, w) · gy`.
fn conv_case(rng: &mut StdRng, case: ConvCase) -> (String, [Tensor; 3], (Tensor, Tensor, Tensor)) {
    let (b, c, h, w, o, k, s, p) = case;
    let x = randn(rng, &[b, c, h, w], 1.0);
    let wt = randn(rng, &[o, c, k, k], 0.5);
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let gy = randn(rng, &[b, o, oh, ow], 1.0);
    let got = conv_with_grads(
        |x, w| multimix_backbones::ops::conv2d(x, w, s, p),
        &x,
        &wt,
        &gy,
    );
    let what = format!("b{b} c{c} {h}×{w} o{o} k{k} s{s} p{p}");
    (what, [x, wt, gy], got)
}

/// The project's conv2d (f32: im2col + GEMM over batch chunks; on output planes ≥ 8×8, per
/// sample, one GEMM in place for 1×1/1, shifted GEMMs for stride 1 with ≥ 16 channels on planes
/// ≥ 32×32, else unfolded patches) equals candle's `conv2d` and its backward (computed in f64) in output, input gradient
/// and weight gradient, for every kernel/stride/padding a ResNet uses (3×3/1, 3×3/2, 1×1/1,
/// 1×1/2, 7×7/2 pad 3), with few and with ≥ 16 input channels (the input gradient is a fold, or
/// for stride 1 the adjoint convolution), odd and non-square sizes, each per-sample form with
/// its input gradient (shifted: a 48×48 plane with 16 channels; unfolded: 64×64 with 2, 16×16
/// with 16; stride 2 onto 48×48, 16×16 and 20×18 planes, 3×3, 1×1 and 7×7; in place: a 1×1
/// stride-1 convolution on a 9×8 plane with 17 channels, and its adjoint),
/// and im2col over several batch chunks (stride 1 and 2). candle's backward takes the transposed
/// conv's output padding from the height for both dims, so its input gradient has the wrong
/// shape when `(h + 2p − k) mod s ≠ (w + 2p − k) mod s`; such shapes are checked in
/// `conv2d_backward_is_the_adjoint_of_the_forward`.
#[test]
fn conv2d_matches_candle_conv2d_and_its_backward() {
    let mut rng = StdRng::seed_from_u64(23);
    // (b, c, h, w, o, k, stride, padding)
    let cases = [
        (3, 5, 7, 9, 4, 3, 1, 1),
        (2, 4, 8, 8, 6, 3, 1, 1),
        (3, 5, 7, 9, 4, 3, 2, 1),
        (2, 3, 8, 6, 5, 3, 2, 1),
        (3, 6, 5, 7, 4, 1, 1, 0),
        (2, 6, 7, 9, 5, 1, 2, 0),
        (2, 6, 8, 8, 5, 1, 2, 0),
        (2, 3, 15, 13, 4, 7, 2, 3),
        (1, 3, 9, 9, 2, 3, 1, 0),
        (3, 2, 64, 64, 3, 3, 1, 1),
        (2, 16, 9, 7, 8, 3, 1, 1),
        (2, 16, 8, 8, 4, 3, 1, 0),
        (2, 17, 6, 6, 4, 1, 1, 0),
        (2, 16, 48, 48, 4, 3, 1, 1),
        // Per sample: unfolded at stride 1 on a 16×16 plane, in place for 1×1/1 on 9×8;
        // unfolded at stride 2 onto planes of ≥ 16×16 (3×3, 1×1, a 7×7 stem).
        (2, 16, 16, 16, 8, 3, 1, 1),
        (2, 17, 9, 8, 4, 1, 1, 0),
        (3, 4, 96, 96, 4, 3, 2, 1),
        (2, 6, 32, 32, 5, 1, 2, 0),
        (2, 3, 40, 36, 4, 7, 2, 3),
        // im2col over several batch chunks: many small planes, at stride 1 and 2.
        (70, 3, 6, 6, 4, 3, 1, 1),
        (70, 3, 12, 12, 4, 3, 2, 1),
    ];
    for case in cases {
        let (_, _, _, _, _, _, s, p) = case;
        let (what, [x, wt, gy], (y, dx, dw)) = conv_case(&mut rng, case);
        assert_eq!(y.dtype(), DType::F32);
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let (y_ref, dx_ref, dw_ref) =
            conv_with_grads(|x, w| x.conv2d(w, p, s, 1, 1), &f64s(&x), &f64s(&wt), &gy);
        assert_rel(&format!("{what}: y"), &y, &y_ref, 1e-5);
        assert_rel(&format!("{what}: dx"), &dx, &dx_ref, 1e-5);
        assert_rel(&format!("{what}: dw"), &dw, &dw_ref, 1e-5);
        // candle's own f32 conv2d agrees too (the switch layers.rs made).
        let (y32, dx32, dw32) = conv_with_grads(|x, w| x.conv2d(w, p, s, 1, 1), &x, &wt, &gy);
        assert_rel(&format!("{what}: y vs candle f32"), &y, &y32, 1e-4);
        assert_rel(&format!("{what}: dx vs candle f32"), &dx, &dx32, 1e-4);
        assert_rel(&format!("{what}: dw vs candle f32"), &dw, &dw32, 1e-4);
    }
}

/// A non-contiguous input (a transposed view) gives the result of its contiguous copy; shapes
/// that do not fit are errors naming the sizes, not panics.
#[test]
fn conv2d_handles_views_and_rejects_bad_shapes() {
    let mut rng = StdRng::seed_from_u64(29);
    let x = randn(&mut rng, &[2, 3, 6, 5], 1.0);
    let w = randn(&mut rng, &[4, 3, 3, 3], 1.0);
    let view = x
        .transpose(2, 3)
        .unwrap()
        .contiguous()
        .unwrap()
        .transpose(2, 3)
        .unwrap();
    assert!(!view.is_contiguous());
    let conv = multimix_backbones::ops::conv2d;
    assert_same(
        "view",
        &conv(&view, &w, 2, 1).unwrap(),
        &conv(&x, &w, 2, 1).unwrap(),
    );
    let w_bad_c = randn(&mut rng, &[4, 2, 3, 3], 1.0);
    let err = conv(&x, &w_bad_c, 1, 1).unwrap_err().to_string();
    assert!(
        err.contains("conv2d") && err.contains("[4, 2, 3, 3]"),
        "{err}"
    );
    assert!(conv(&x, &w, 0, 1).is_err());
    let w_big = randn(&mut rng, &[4, 3, 7, 7], 1.0);
    assert!(conv(&x, &w_big, 1, 0).is_err());
    assert!(conv(&x, &w_big, 1, 1).is_ok());
}

/// Where candle's backward cannot serve as the reference (stride 2 with height and width
/// leaving different remainders): the forward equals candle's, and since the convolution is
/// linear in `x` and in `w`, `Σ y·gy = Σ x·dx = Σ w·dw` for the backward to be its adjoint.
#[test]
fn conv2d_backward_is_the_adjoint_of_the_forward() {
    let mut rng = StdRng::seed_from_u64(31);
    // (b, c, h, w, o, k, stride, padding)
    for case in [
        (2, 3, 7, 8, 4, 3, 2, 1),
        (2, 6, 8, 7, 5, 1, 2, 0),
        (2, 3, 33, 34, 4, 3, 2, 1),
    ] {
        let (_, _, _, _, _, _, s, p) = case;
        let (what, [x, wt, gy], (y, dx, dw)) = conv_case(&mut rng, case);
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let y_ref = f64s(&x).conv2d(&f64s(&wt), p, s, 1, 1).unwrap();
        assert_rel(&format!("{what}: y"), &y, &y_ref, 1e-5);
        let dot = |a: &Tensor, b: &Tensor| -> f64 {
            (f64s(a) * f64s(b))
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let (yy, xx, ww) = (dot(&y_ref, &gy), dot(&x, &dx), dot(&wt, &dw));
        assert!(
            (xx - yy).abs() <= 1e-5 * yy.abs().max(1.0),
            "{what}: Σx·dx {xx} vs Σy·gy {yy}"
        );
        assert!(
            (ww - yy).abs() <= 1e-5 * yy.abs().max(1.0),
            "{what}: Σw·dw {ww} vs Σy·gy {yy}"
        );
    }
}

/// Only arguments that track gradients get one: with a plain input, the kernel's gradient is
/// the same as with a `Var` input and the input gets none.
#[test]
fn conv2d_skips_the_gradient_of_an_untracked_input() {
    let mut rng = StdRng::seed_from_u64(37);
    let x = randn(&mut rng, &[2, 16, 6, 6], 1.0);
    let w = Var::from_tensor(&randn(&mut rng, &[4, 16, 3, 3], 1.0)).unwrap();
    let gy = randn(&mut rng, &[2, 4, 6, 6], 1.0);
    let conv = |x: &Tensor| multimix_backbones::ops::conv2d(x, w.as_tensor(), 1, 1).unwrap();
    let grads = (conv(&x) * &gy)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&x).is_none());
    let (_, dx, dw) = conv_with_grads(
        |x, w| multimix_backbones::ops::conv2d(x, w, 1, 1),
        &x,
        w.as_tensor(),
        &gy,
    );
    assert_eq!(dx.dims(), x.dims());
    assert_same("dw", grads.get(w.as_tensor()).unwrap(), &dw);
}

/// timm's attention composed from candle ops: split heads, `softmax(q kᵀ·scale)`, `·v`, heads
/// merged (the path `qkv_attention` takes for non-f32 tensors).
fn composed_attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    use multimix_backbones::ops::{attention_weights, split_qkv_heads};
    let (b, n, three_d) = qkv.dims3()?;
    let (q, k, v) = split_qkv_heads(qkv, heads)?;
    attention_weights(&q, &k)?
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((b, n, three_d / 3))
}

fn attention_op(v: &[Tensor]) -> Result<Tensor> {
    multimix_backbones::ops::qkv_attention(&v[0], 3)
}

fn composed_attention_op(v: &[Tensor]) -> Result<Tensor> {
    composed_attention(&v[0], 3)
}

/// The fused attention (f32) equals the composition in f64 and in f32, output and qkv gradient,
/// at ViT-Tiny/4 shapes (65 tokens, 3 heads of 64) for a batch of 8.
#[test]
fn qkv_attention_matches_composition() {
    let mut rng = StdRng::seed_from_u64(13);
    let qkv = randn(&mut rng, &[8, 65, 3 * 192], 1.5);
    let gy = randn(&mut rng, &[8, 65, 192], 1.0);
    let (vars, tensors) = leaves(std::slice::from_ref(&qkv));
    let (y, g) = eval_with_grads(attention_op, &tensors, &vars, &gy);
    assert_eq!(y.dims(), [8, 65, 192]);
    let qkv64 = qkv.to_dtype(DType::F64).unwrap();
    for (what, x, op) in [
        ("f64 composition", &qkv64, attention_op as Op),
        ("f32 composition", &qkv, composed_attention_op),
    ] {
        let (vars, tensors) = leaves(std::slice::from_ref(x));
        let (y_ref, g_ref) = eval_with_grads(op, &tensors, &vars, &gy);
        let y_ref = y_ref.to_dtype(DType::F64).unwrap();
        assert_close(&format!("attention.y vs {what}"), &y, &y_ref, 1.0);
        let g_ref = g_ref[0].to_dtype(DType::F64).unwrap();
        assert_close(
            &format!("attention.grad vs {what}"),
            &g[0],
            &g_ref,
            max_abs(&g_ref),
        );
    }
}

/// A non-contiguous qkv gives the same result as its contiguous copy; a last dim that is not
/// 3 × heads × head_dim, or a rank other than 3, is an error.
#[test]
fn qkv_attention_layouts_and_shapes() {
    use multimix_backbones::ops::qkv_attention;
    let mut rng = StdRng::seed_from_u64(17);
    let base = randn(&mut rng, &[2, 12, 5], 1.0);
    let strided = base.transpose(1, 2).unwrap();
    assert!(!strided.is_contiguous());
    let from_view = qkv_attention(&strided, 2).unwrap();
    let from_copy = qkv_attention(&strided.contiguous().unwrap(), 2).unwrap();
    assert_same("strided qkv", &from_view, &from_copy);
    assert!(qkv_attention(&randn(&mut rng, &[2, 5, 10], 1.0), 2).is_err());
    assert!(qkv_attention(&randn(&mut rng, &[5, 12], 1.0), 2).is_err());
    assert!(qkv_attention(&randn(&mut rng, &[2, 5, 12], 1.0), 0).is_err());
}

/// Vendored candle patch (d): the backward computes no gradient for an operand that leads to no
/// variable (a constant, a detached weight), and the tracked side's gradient is unchanged:
/// `d/dx Σ (x·W)⊙(x/c) ` checked against its closed form.
#[test]
fn backward_skips_untracked_operands() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::new(&[[1f32, 2.], [3., -1.]], &dev).unwrap()).unwrap();
    let w = Tensor::new(&[[0.5f32, -1.], [2., 0.25]], &dev).unwrap();
    let c = Tensor::new(&[[2f32, 4.], [-1., 0.5]], &dev).unwrap();
    let xw = x.as_tensor().matmul(&w).unwrap();
    let q = (x.as_tensor() / &c).unwrap();
    let loss = (&xw * &q).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, t) in [("W", &w), ("c", &c)] {
        assert!(grads.get(t).is_none(), "a gradient was computed for {name}");
    }
    // ∂/∂x_ij Σ_ab (xW)_ab x_ab / c_ab = (q Wᵀ)_ij + (xW)_ij / c_ij
    let want = (q.matmul(&w.t().unwrap()).unwrap() + (&xw / &c).unwrap()).unwrap();
    assert_same("d loss / dx", grads.get(x.as_tensor()).unwrap(), &want);
}
