//! The default training path end to end at the level of one step: every parameter of the ViT
//! gets a gradient from the dense MultiMix loss, and the mixed targets are convex.

use candle_core::{Device, Tensor};
use multimix_augment::dense::{attention, dense_weights, gap_query, mix_dense_targets};
use multimix_augment::targets::smooth_one_hot;
use multimix_augment::{AttnNorm, MultiMix};
use multimix_backbones::{Model, ModelConfig};
use multimix_recipes::config::{DistillConfig, MixConfig, MixMethod, DEFAULT_ARCHITECTURE};
use multimix_recipes::mixing::{training_loss, validate, StepBatch};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn batch(b: usize, rng: &mut ChaCha8Rng) -> (Vec<f32>, Vec<u32>) {
    let pixels: Vec<f32> = (0..b * 28 * 28).map(|_| rng.random::<f32>()).collect();
    let labels = (0..b).map(|i| (i % 10) as u32).collect();
    (pixels, labels)
}

fn default_model(seed: u64) -> Model {
    let cfg = ModelConfig::from_preset(DEFAULT_ARCHITECTURE, &Default::default()).unwrap();
    Model::new(&cfg, &Device::Cpu, seed).unwrap()
}

/// candle's fused layer norm and softmax silently drop gradients; ours must not. After one
/// backward pass of each mixing method's loss (and of MultiMix with self-distillation), every
/// trainable tensor has a finite, nonzero gradient.
#[test]
fn every_vit_parameter_gets_a_gradient() {
    let distilled = [MixMethod::Multimix, MixMethod::DenseMultimix].map(|m| (m, true));
    let plain = MixMethod::ALL.map(|(_, m)| (m, false));
    for (method, self_distill) in plain.into_iter().chain(distilled) {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let model = default_model(1);
        let teacher = default_model(2);
        let (x, y) = batch(8, &mut rng);
        let (x2, _) = batch(8, &mut rng);
        let mut cfg = MixConfig {
            method,
            n: 64,
            ..MixConfig::default()
        };
        cfg.resolve();
        let distill = DistillConfig {
            enabled: self_distill,
            ..DistillConfig::default()
        };
        validate(&cfg, &distill, 8).unwrap();
        let step = StepBatch {
            images: &x,
            shape: [8, 1, 28, 28],
            labels: &y,
            teacher_view: Some(&x2),
        };
        let loss = training_loss(&model, Some(&teacher), &step, &cfg, &distill, &mut rng).unwrap();
        let grads = loss.backward().unwrap();
        let params = model.params().trainable();
        assert!(
            params.len() > 20,
            "{method}: only {} parameters",
            params.len()
        );
        for (name, var) in params {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{method}: no gradient for {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm.is_finite() && norm > 0.0,
                "{method}: gradient of {name} has squared norm {norm}"
            );
        }
    }
}

/// Dense targets Ỹ_kj = Σ_i ξ̂_kij Y_i are convex at every position: nonnegative, rows summing
/// to 1 (smoothed one-hot targets are distributions and each ξ̂_k·j sums to 1).
#[test]
fn dense_targets_are_convex() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let dev = Device::Cpu;
    let (b, r, d, c) = (16, 9, 5, 10);
    let z: Vec<f32> = (0..b * r * d)
        .map(|_| rng.random::<f32>() * 4.0 - 2.0)
        .collect();
    let z = Tensor::from_vec(z, (b, r, d), &dev).unwrap();
    let labels: Vec<u32> = (0..b).map(|_| rng.random_range(0..c as u32)).collect();
    let y = smooth_one_hot(&labels, c, 0.1, &dev).unwrap();
    let lambda = MultiMix {
        n: 200,
        alpha: 1.0,
        m: None,
    }
    .sample(b, &mut rng, &dev)
    .unwrap();
    let attn = attention(&z, Some(&gap_query(&z).unwrap()), AttnNorm::Softmax).unwrap();
    let mixed = mix_dense_targets(&dense_weights(&lambda, &attn).unwrap(), &y).unwrap();
    assert_eq!(mixed.dims(), [r, 200, c]);
    for pos in mixed.to_vec3::<f32>().unwrap() {
        for row in pos {
            assert!(row.iter().all(|v| *v >= 0.0), "negative target {row:?}");
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "target row sums to {s}");
        }
    }
}

/// Every mixing method (and MultiMix with self-distillation) runs with every backbone family:
/// tiny CNNs with BatchNorm included, 1-channel 8×8 inputs; the loss is finite and every
/// trainable tensor gets a gradient.
#[test]
fn every_method_runs_with_every_backbone() {
    let cnn = serde_json::json!({"layers": [1, 1, 1, 1], "channels": [4, 4, 6, 6], "stem_chs": 4});
    let families = [
        (
            "vit_mini_patch7_28",
            serde_json::json!({"img_size": 8, "patch_size": 4, "embed_dim": 8, "depth": 2, "num_heads": 2}),
        ),
        ("resnet18_cifar", cnn.clone()),
        ("resnet50", cnn.clone()),
        ("preact_resnet18", cnn),
    ];
    let (b, c) = (8, 5);
    for (arch, args) in families {
        let mut args = args.as_object().unwrap().clone();
        args.insert("num_classes".into(), c.into());
        args.insert("in_chans".into(), 1.into());
        args.insert("img_size".into(), 8.into());
        let cfg = ModelConfig::from_preset(arch, &args).unwrap();
        let model = Model::new(&cfg, &Device::Cpu, 1).unwrap();
        let teacher = Model::new(&cfg, &Device::Cpu, 2).unwrap();
        let runs = MixMethod::ALL.map(|(_, m)| (m, false)).into_iter().chain([
            (MixMethod::Multimix, true),
            (MixMethod::DenseMultimix, true),
        ]);
        for (method, self_distill) in runs {
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let images: Vec<f32> = (0..b * 64).map(|_| rng.random::<f32>()).collect();
            let labels: Vec<u32> = (0..b).map(|i| (i % c) as u32).collect();
            let mut mix = MixConfig {
                method,
                n: 32,
                ..MixConfig::default()
            };
            mix.resolve();
            let distill = DistillConfig {
                enabled: self_distill,
                ..DistillConfig::default()
            };
            let step = StepBatch {
                images: &images,
                shape: [b, 1, 8, 8],
                labels: &labels,
                teacher_view: None,
            };
            let loss = training_loss(&model, Some(&teacher), &step, &mix, &distill, &mut rng)
                .unwrap_or_else(|e| panic!("{arch} {method}: {e}"));
            let value = loss.to_scalar::<f32>().unwrap();
            assert!(value.is_finite(), "{arch} {method}: loss {value}");
            let grads = loss.backward().unwrap();
            for (name, var) in model.params().trainable() {
                assert!(
                    grads.get(var.as_tensor()).is_some(),
                    "{arch} {method}: no gradient for {name}"
                );
            }
        }
    }
}
