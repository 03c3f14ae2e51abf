//! Properties every registered backbone family must have, on tiny configurations: every
//! trainable tensor gets a gradient, train and eval modes differ exactly where they should
//! (BatchNorm, dropout, drop-path), mix points compose, dense and pooled logits agree, BatchNorm
//! buffers round-trip with the weights, and the head can be replaced for another class count.

use candle_core::{DType, Device, Tensor, Var};
use multimix_backbones::ops::max_pool2d;
use multimix_backbones::{architectures, Ctx, Model, ModelConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

/// A tiny model per family and stem, labelled; `vit_extra` and `cnn_extra` add arguments.
fn tiny_configs(vit_extra: &Value, cnn_extra: &Value) -> Vec<(String, ModelConfig)> {
    let cnn = json!({"layers": [1, 1, 1, 1], "channels": [4, 4, 6, 6], "num_classes": 3});
    let cases = [
        (
            "vit token",
            "vit_tiny_patch16_224",
            json!({"img_size": 8, "patch_size": 4, "embed_dim": 8, "depth": 2, "num_heads": 2, "num_classes": 3}),
        ),
        (
            "vit avg",
            "vit_mini_patch7_28",
            json!({"img_size": 8, "in_chans": 3, "patch_size": 4, "embed_dim": 8, "depth": 2, "num_heads": 2, "num_classes": 3}),
        ),
        (
            "resnet basic",
            "resnet18",
            merge(&cnn, &json!({"stem_chs": 4, "img_size": 16})),
        ),
        (
            "resnet bottleneck",
            "resnet50",
            merge(&cnn, &json!({"stem_chs": 4, "img_size": 16})),
        ),
        (
            "resnet cifar",
            "resnet18_cifar",
            merge(&cnn, &json!({"stem_chs": 4, "img_size": 8})),
        ),
        (
            "preact cifar",
            "preact_resnet18",
            merge(&cnn, &json!({"stem_chs": 4, "img_size": 8})),
        ),
        (
            "preact imagenet",
            "resnetv2_18",
            merge(&cnn, &json!({"stem_chs": 4, "img_size": 16})),
        ),
    ];
    cases
        .into_iter()
        .map(|(label, arch, args)| {
            let extra = if label.starts_with("vit") {
                vit_extra
            } else {
                cnn_extra
            };
            let args = merge(&args, extra);
            let cfg = ModelConfig::from_preset(arch, args.as_object().unwrap())
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            (label.to_string(), cfg)
        })
        .collect()
}

fn merge(a: &Value, b: &Value) -> Value {
    let mut m: Map<String, Value> = a.as_object().cloned().unwrap_or_default();
    for (k, v) in b.as_object().into_iter().flatten() {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

fn images(cfg: &ModelConfig, b: usize, seed: u64) -> Tensor {
    let s = cfg.arch.img_size();
    let c = cfg.arch.in_chans();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..b * c * s * s).map(|_| rng.random::<f32>()).collect();
    Tensor::from_vec(v, (b, c, s, s), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    values(&(a - b).unwrap().abs().unwrap())
        .into_iter()
        .fold(0.0, f32::max)
}

/// Tiny models with every residual branch live at initialization.
fn live_configs() -> Vec<(String, ModelConfig)> {
    tiny_configs(&json!({}), &json!({"zero_init_last": false}))
}

/// The architectures the registry lists are all covered by `tiny_configs`.
#[test]
fn every_registered_family_is_covered() {
    let tiny = live_configs();
    let covered: Vec<&str> = tiny.iter().map(|(_, c)| c.architecture.as_str()).collect();
    for arch in architectures() {
        let cfg = ModelConfig::from_preset(arch, &Map::new()).unwrap();
        let family = std::mem::discriminant(&cfg.arch);
        assert!(
            tiny.iter()
                .any(|(_, c)| std::mem::discriminant(&c.arch) == family),
            "{arch}: no tiny configuration of its family among {covered:?}"
        );
    }
}

/// After one backward pass of a training-mode loss, every trainable tensor of every family has
/// a finite, nonzero gradient (and buffers are not trainable).
#[test]
fn every_parameter_gets_a_gradient() {
    for (label, cfg) in live_configs() {
        let model = Model::new(&cfg, &Device::Cpu, 3).unwrap();
        let x = images(&cfg, 2, 1);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let logits = model.forward(&x, &mut Ctx::train(&mut rng)).unwrap();
        let gy = images(&cfg, 1, 9)
            .flatten_all()
            .unwrap()
            .narrow(0, 0, logits.elem_count())
            .unwrap();
        let loss = (logits * gy.reshape((2, 3)).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let params = model.params().trainable();
        assert!(params.len() >= 10, "{label}: {} parameters", params.len());
        for (name, var) in params {
            assert!(
                !name.contains("running_") && !name.contains("num_batches"),
                "{label}: buffer {name} is trainable"
            );
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{label}: no gradient for {name}"));
            let norm: f32 = values(&g.sqr().unwrap()).iter().sum();
            assert!(
                norm.is_finite() && norm > 0.0,
                "{label}: gradient of {name} has squared norm {norm}"
            );
        }
    }
}

/// The frozen view of every family gives the model's eval outputs and the same input gradient
/// (to float rounding: the backward sums in another order), no gradient for any weight, and
/// follows later updates of the shared weights.
#[test]
fn frozen_view_computes_input_gradients_only() {
    for (label, cfg) in live_configs() {
        let model = Model::new(&cfg, &Device::Cpu, 3).unwrap();
        let frozen = model.frozen().unwrap();
        assert!(frozen.is_frozen() && !model.is_frozen(), "{label}");
        let input_grad = |m: &Model| {
            let x = Var::from_tensor(&images(&cfg, 2, 1)).unwrap();
            let logits = m.forward(x.as_tensor(), &mut Ctx::eval()).unwrap();
            let gy = Tensor::from_vec(vec![1f32, -2., 0.5, 3., -1., 0.25], (2, 3), &Device::Cpu);
            let loss = (&logits * gy.unwrap()).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let weight_grads = m
                .params()
                .trainable()
                .iter()
                .filter(|(_, v)| grads.get(v.as_tensor()).is_some())
                .count();
            (
                logits,
                grads.get(x.as_tensor()).unwrap().clone(),
                weight_grads,
            )
        };
        let (logits, gx, n) = input_grad(&model);
        let (frozen_logits, frozen_gx, frozen_n) = input_grad(&frozen);
        assert!(
            n >= 10,
            "{label}: the plain model gives {n} weight gradients"
        );
        assert_eq!(
            frozen_n, 0,
            "{label}: the frozen view computed weight gradients"
        );
        assert_eq!(
            values(&logits),
            values(&frozen_logits),
            "{label}: outputs differ"
        );
        let scale = values(&gx.abs().unwrap()).into_iter().fold(0.0, f32::max);
        assert!(scale > 0.0, "{label}: zero input gradient");
        let diff = max_diff(&gx, &frozen_gx);
        assert!(
            diff <= 1e-5 * scale,
            "{label}: input gradients differ by {diff}"
        );
        // An in-place update of the model's weights shows in the frozen view.
        for (_, var) in model.params().trainable() {
            var.set(&var.as_tensor().affine(0.5, 0.01).unwrap())
                .unwrap();
        }
        let x = images(&cfg, 2, 1);
        let after = model.forward(&x, &mut Ctx::eval()).unwrap();
        assert_ne!(
            values(&after),
            values(&logits),
            "{label}: the update changed nothing"
        );
        let frozen_after = frozen.forward(&x, &mut Ctx::eval()).unwrap();
        assert_eq!(
            values(&after),
            values(&frozen_after),
            "{label}: the view kept old weights"
        );
    }
}

/// With no dropout and no drop-path, a ViT gives bit-identical outputs in both modes; CNNs
/// (BatchNorm) differ. Evaluation never touches the running statistics; training updates them.
#[test]
fn train_and_eval_differ_only_through_batch_norm_without_dropout() {
    for (label, cfg) in live_configs() {
        let model = Model::new(&cfg, &Device::Cpu, 3).unwrap();
        let x = images(&cfg, 2, 1);
        let before = model.params().tensors().unwrap();
        let eval1 = model.forward(&x, &mut Ctx::eval()).unwrap();
        let eval2 = model.forward(&x, &mut Ctx::eval()).unwrap();
        assert_eq!(
            values(&eval1),
            values(&eval2),
            "{label}: eval is not deterministic"
        );
        for (name, var) in model.params().buffers() {
            assert_eq!(
                values(&var.as_tensor().to_dtype(DType::F32).unwrap()),
                values(&before[&name].to_dtype(DType::F32).unwrap()),
                "{label}: eval changed {name}"
            );
        }
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let train = model.forward(&x, &mut Ctx::train(&mut rng)).unwrap();
        let has_bn = !model.params().buffers().is_empty();
        if has_bn {
            assert!(
                max_diff(&train, &eval1) > 1e-4,
                "{label}: BatchNorm train equals eval"
            );
            for (name, var) in model.params().buffers() {
                let changed = values(&var.as_tensor().to_dtype(DType::F32).unwrap())
                    != values(&before[&name].to_dtype(DType::F32).unwrap());
                assert!(changed, "{label}: training did not update {name}");
            }
        } else {
            assert_eq!(
                values(&train),
                values(&eval1),
                "{label}: train differs from eval without dropout"
            );
        }
    }
}

/// Dropout and drop-path act in training mode only: in eval mode a model with positive rates
/// equals the same model (same seed, same weights) with zero rates; in training mode it does not.
#[test]
fn dropout_and_drop_path_act_in_training_only() {
    let rates = json!({"drop_rate": 0.5, "drop_path_rate": 0.5});
    let vit_rates = json!({"drop_rate": 0.5, "drop_path_rate": 0.5, "attn_drop_rate": 0.3, "proj_drop_rate": 0.3, "pos_drop_rate": 0.3});
    let dropped = tiny_configs(
        &vit_rates,
        &merge(&json!({"zero_init_last": false}), &rates),
    );
    for ((label, cfg), (_, dropped_cfg)) in live_configs().into_iter().zip(dropped) {
        let base = Model::new(&cfg, &Device::Cpu, 3).unwrap();
        let dropped = Model::new(&dropped_cfg, &Device::Cpu, 3).unwrap();
        let x = images(&cfg, 2, 1);
        let e0 = base.forward(&x, &mut Ctx::eval()).unwrap();
        let e1 = dropped.forward(&x, &mut Ctx::eval()).unwrap();
        assert_eq!(
            values(&e0),
            values(&e1),
            "{label}: rates change eval outputs"
        );
        let (mut r0, mut r1) = (ChaCha8Rng::seed_from_u64(0), ChaCha8Rng::seed_from_u64(0));
        let t0 = base.forward(&x, &mut Ctx::train(&mut r0)).unwrap();
        let t1 = dropped.forward(&x, &mut Ctx::train(&mut r1)).unwrap();
        assert!(
            max_diff(&t0, &t1) > 1e-6,
            "{label}: dropout has no effect in training"
        );
    }
}

/// Running the network to mix point k and from there gives `forward_features`, at every point;
/// the mean of the dense logits equals the pooled logits for the CNNs.
#[test]
fn mix_points_compose_and_dense_logits_average_to_logits() {
    for (label, cfg) in live_configs() {
        let model = Model::new(&cfg, &Device::Cpu, 3).unwrap();
        let b = model.backbone();
        let x = model.normalize(&images(&cfg, 2, 1)).unwrap();
        let features = b.forward_features(&x, &mut Ctx::eval()).unwrap();
        assert!(b.num_mix_points() >= 2, "{label}");
        for k in 0..b.num_mix_points() {
            let h = b.forward_to(&x, k, &mut Ctx::eval()).unwrap();
            let f = b.forward_from(&h, k, &mut Ctx::eval()).unwrap();
            assert!(max_diff(&f, &features) < 1e-5, "{label}: point {k}");
        }
        let past = b.num_mix_points();
        assert!(b.forward_to(&x, past, &mut Ctx::eval()).is_err(), "{label}");
        assert!(
            b.forward_from(&x, past, &mut Ctx::eval()).is_err(),
            "{label}"
        );
        if features.rank() == 4 {
            let (_, c, h, w) = features.dims4().unwrap();
            let dense = b.dense(&features).unwrap();
            assert_eq!(dense.dims(), [2, h * w, c], "{label}: dense layout");
            let dense_logits = b.head().forward(&dense).unwrap().mean(1).unwrap();
            let logits = b
                .head()
                .forward(&b.pre_logits(&features, &mut Ctx::eval()).unwrap())
                .unwrap();
            assert!(
                max_diff(&dense_logits, &logits) < 1e-5,
                "{label}: dense mean"
            );
        }
    }
}

/// `zero_init_last` zeroes the last BatchNorm weight of every ResNet branch (timm's default);
/// the block output is then its shortcut, and those weights still get a gradient.
#[test]
fn zero_init_last_zeroes_the_last_norm_of_each_branch() {
    for (arch, last) in [("resnet18", "bn2"), ("resnet50", "bn3")] {
        let args = json!({"layers": [1, 1, 1, 1], "channels": [4, 4, 6, 6], "num_classes": 3, "stem_chs": 4, "img_size": 16});
        let cfg = ModelConfig::from_preset(arch, args.as_object().unwrap()).unwrap();
        let model = Model::new(&cfg, &Device::Cpu, 3).unwrap();
        let tensors = model.params().tensors().unwrap();
        let lasts: Vec<_> = tensors
            .iter()
            .filter(|(n, _)| n.starts_with("layer") && n.ends_with(&format!("{last}.weight")))
            .collect();
        assert_eq!(lasts.len(), 4, "{arch}");
        for (n, t) in lasts {
            assert!(values(t).iter().all(|v| *v == 0.0), "{arch}: {n} not zero");
        }
        assert!(values(&tensors["layer1.0.bn1.weight"])
            .iter()
            .all(|v| *v == 1.0));
        let x = images(&cfg, 2, 1);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let grads = model
            .forward(&x, &mut Ctx::train(&mut rng))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gamma = model
            .params()
            .trainable()
            .into_iter()
            .find(|(n, _)| n == &format!("layer4.0.{last}.weight"))
            .unwrap()
            .1;
        let g: f32 = values(&grads.get(gamma.as_tensor()).unwrap().abs().unwrap())
            .iter()
            .sum();
        assert!(g > 0.0, "{arch}: zero-initialized gamma gets no gradient");
    }
}

/// BatchNorm running statistics are saved with the weights under timm's names and restore the
/// same evaluation outputs in a fresh model.
#[test]
fn batch_norm_buffers_round_trip_with_the_weights() {
    let (_, cfg) = live_configs()
        .into_iter()
        .find(|(l, _)| l == "resnet basic")
        .unwrap();
    let model = Model::new(&cfg, &Device::Cpu, 3).unwrap();
    let x = images(&cfg, 2, 1);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for _ in 0..3 {
        model.forward(&x, &mut Ctx::train(&mut rng)).unwrap();
    }
    let saved = model.params().tensors().unwrap();
    assert_eq!(
        saved["bn1.num_batches_tracked"].to_scalar::<i64>().unwrap(),
        3
    );
    assert_eq!(saved["bn1.num_batches_tracked"].dtype(), DType::I64);
    assert!(saved.contains_key("layer2.0.downsample.1.running_var"));
    let fresh = Model::new(&cfg, &Device::Cpu, 99).unwrap();
    fresh.load_weights(&saved, true).unwrap();
    let a = model.forward(&x, &mut Ctx::eval()).unwrap();
    let b = fresh.forward(&x, &mut Ctx::eval()).unwrap();
    assert_eq!(values(&a), values(&b));
}

/// Loading into a model with another class count keeps everything but the classifier, whose
/// fresh initialization stays; any other mismatch is an error that names the tensors.
#[test]
fn new_head_loads_everything_but_the_classifier() {
    for (label, cfg) in live_configs() {
        let source = Model::new(&cfg, &Device::Cpu, 3).unwrap();
        let weights = source.params().tensors().unwrap();
        let mut args = serde_json::to_value(&cfg).unwrap()["args"].clone();
        args["num_classes"] = json!(7);
        let target_cfg =
            ModelConfig::from_preset(&cfg.architecture, args.as_object().unwrap()).unwrap();
        let target = Model::new(&target_cfg, &Device::Cpu, 4).unwrap();
        let err = target.load_weights(&weights, true).unwrap_err().to_string();
        assert!(err.contains("shape mismatch"), "{label}: {err}");
        let head_before = target.backbone().head().weight().copy().unwrap();
        let report = target.load_weights_new_head(&weights).unwrap();
        assert!(report.unexpected.is_empty(), "{label}: {report:?}");
        assert_eq!(
            values(&target.backbone().head().weight().copy().unwrap()),
            values(&head_before),
            "{label}: head changed"
        );
        let x = source.normalize(&images(&cfg, 2, 1)).unwrap();
        let fa = source
            .backbone()
            .forward_features(&x, &mut Ctx::eval())
            .unwrap();
        let fb = target
            .backbone()
            .forward_features(&x, &mut Ctx::eval())
            .unwrap();
        assert_eq!(values(&fa), values(&fb), "{label}: body differs");
        let mut partial = weights.clone();
        let dropped = partial
            .keys()
            .find(|k| !k.contains("head") && !k.starts_with("fc"))
            .cloned()
            .unwrap();
        partial.remove(&dropped);
        partial.insert(
            "extra.weight".into(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = target
            .load_weights_new_head(&partial)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&dropped) && err.contains("extra.weight"),
            "{label}: {err}"
        );
    }
}

/// The fused max pool and its composite fallback (f64 path) agree on outputs and input
/// gradients (inputs without ties), for the stem's 3×3/2/1 and an uneven geometry.
#[test]
fn max_pool_fused_equals_composite() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (k, s, p, h, w) in [
        (3, 2, 1, 9, 8),
        (2, 2, 0, 6, 6),
        (3, 1, 1, 5, 7),
        (3, 2, 0, 7, 7),
    ] {
        let v: Vec<f32> = (0..2 * 3 * h * w).map(|_| rng.random::<f32>()).collect();
        let x32 =
            Var::from_tensor(&Tensor::from_vec(v, (2, 3, h, w), &Device::Cpu).unwrap()).unwrap();
        let x64 = Var::from_tensor(&x32.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let y32 = max_pool2d(x32.as_tensor(), k, s, p).unwrap();
        let y64 = max_pool2d(x64.as_tensor(), k, s, p).unwrap();
        let gy = Tensor::from_vec(
            (0..y32.elem_count())
                .map(|_| rng.random::<f32>() - 0.5)
                .collect::<Vec<_>>(),
            y32.shape(),
            &Device::Cpu,
        )
        .unwrap();
        assert!(
            max_diff(&y32, &y64.to_dtype(DType::F32).unwrap()) == 0.0,
            "{k}/{s}/{p}: output"
        );
        let g32 = (&y32 * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let g64 = (&y64 * gy.to_dtype(DType::F64).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let a = g32.get(x32.as_tensor()).unwrap();
        let b = g64
            .get(x64.as_tensor())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert!(max_diff(a, &b) < 1e-6, "{k}/{s}/{p}: gradient");
    }
    assert!(max_pool2d(
        &Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap(),
        3,
        2,
        2
    )
    .is_err());
}

/// The fused batch-norm ops (train: batch statistics with the backward through them; eval: the
/// per-channel affine map), alone and with ReLU fused, equal their composite fallbacks (f64 path:
/// candle's own ops, then candle's `relu`), outputs, statistics and the gradients of x, weight
/// and bias.
#[test]
fn batch_norm_ops_fused_equal_composite() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut var = |dims: &[usize], offset: f32| {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0 + offset)
            .collect();
        Var::from_tensor(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap()).unwrap()
    };
    let x = var(&[3, 5, 4, 3], 3.0);
    let w = var(&[5], 1.0);
    let b = var(&[5], 0.0);
    let gy = var(&[3, 5, 4, 3], 0.0).as_tensor().clone();
    let f64v = |v: &Var| Var::from_tensor(&v.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
    let (x64, w64, b64) = (f64v(&x), f64v(&w), f64v(&b));
    type Run = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> Vec<Tensor>>;
    use multimix_backbones::ops::{batch_norm_train, channel_affine};
    let train = |relu: bool| -> Run {
        Box::new(move |x, w, b| {
            let (y, m, v) = batch_norm_train(x, w, b, 1e-5, relu).unwrap();
            vec![y, m, v]
        })
    };
    // Evaluation-mode inputs sit at 2..4, so the shift moves about half the outputs below 0.
    let eval = |relu: bool| -> Run {
        Box::new(move |x, w, b| vec![channel_affine(x, w, &(b - 3.0).unwrap(), relu).unwrap()])
    };
    let cases: [(&str, Run); 4] = [
        ("train", train(false)),
        ("train+relu", train(true)),
        ("eval", eval(false)),
        ("eval+relu", eval(true)),
    ];
    for (name, run) in cases {
        let fused = run(x.as_tensor(), w.as_tensor(), b.as_tensor());
        let reference = run(x64.as_tensor(), w64.as_tensor(), b64.as_tensor());
        let y = values(&fused[0]);
        let zeros = y.iter().filter(|v| **v == 0.0).count() as f64 / y.len() as f64;
        if name.ends_with("relu") {
            assert!(
                (0.2..0.8).contains(&zeros),
                "{name}: {zeros} of outputs rectified"
            );
        }
        for (i, (a, r)) in fused.iter().zip(&reference).enumerate() {
            let r = r.to_dtype(DType::F32).unwrap();
            assert!(max_diff(a, &r) < 1e-5, "{name}: output {i}");
        }
        let g = (&fused[0] * &gy)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gr = (&reference[0] * gy.to_dtype(DType::F64).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (label, (v, v64)) in
            ["x", "weight", "bias"]
                .iter()
                .zip([(&x, &x64), (&w, &w64), (&b, &b64)])
        {
            let a = g.get(v.as_tensor()).unwrap();
            let r = gr
                .get(v64.as_tensor())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let scale = values(&r.abs().unwrap())
                .into_iter()
                .fold(0.0f32, f32::max)
                .max(1e-3);
            assert!(
                max_diff(a, &r) < 1e-5 * scale.max(1.0),
                "{name}: gradient of {label}"
            );
        }
    }
}
