//! FGSM, PGD and ODIN against torchattacks and pytorch-ood's formulas on a tiny timm ViT
//! (fixtures from `tools/make_eval_fixtures.py`).

mod common;

use common::{labels, max_abs_diff, model, tensors, values};
use multimix_backbones::Ctx;
use multimix_eval::attacks::{fgsm, pgd, uniform_start, PgdConfig};
use rand::SeedableRng;

/// One float rounding step of values in [0, 1].
const ULP: f32 = f32::EPSILON;

#[test]
fn the_fixture_model_reproduces_timm_logits() {
    let t = tensors();
    let m = model(&t);
    let logits = m.forward(&t["images"], &mut Ctx::eval()).unwrap();
    assert!(max_abs_diff(&values(&logits), &values(&t["logits"])) < 1e-4);
}

#[test]
fn fgsm_equals_torchattacks() {
    let t = tensors();
    let m = model(&t);
    let y = labels(&t);
    for k in [1u32, 2, 8] {
        let adv = fgsm(&m, &t["images"], &y, f64::from(k) / 255.0).unwrap();
        let expected = values(&t[&format!("fgsm.eps{k}")]);
        let d = max_abs_diff(&values(&adv), &expected);
        assert!(d <= ULP, "eps {k}/255: max difference {d}");
        // the attack moved every unclamped pixel
        assert!(max_abs_diff(&values(&adv), &values(&t["images"])) > 0.0);
    }
}

#[test]
fn pgd_equals_torchattacks_from_the_same_start() {
    let t = tensors();
    let m = model(&t);
    let y = labels(&t);
    let cases = [
        ("pgd", PgdConfig::default()),
        (
            "pgd3",
            PgdConfig {
                eps: 4.0 / 255.0,
                alpha: 1.0 / 255.0,
                steps: 3,
            },
        ),
    ];
    for (name, cfg) in cases {
        let adv = pgd(&m, &t["images"], &y, &cfg, &t[&format!("{name}.start")]).unwrap();
        let (got, expected) = (values(&adv), values(&t[&format!("{name}.adv")]));
        let d = max_abs_diff(&got, &expected);
        assert!(d <= 2.0 * ULP, "{name}: max difference {d}");
        // inside the ε-ball around the clean images and inside [0, 1]
        let clean = values(&t["images"]);
        assert!(max_abs_diff(&got, &clean) <= cfg.eps as f32 + ULP);
        assert!(got.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}

#[test]
fn pgd_is_stronger_than_fgsm_on_the_fixture() {
    let t = tensors();
    let m = model(&t);
    let y = labels(&t);
    let loss = |x: &candle_core::Tensor| {
        let l = m.forward(x, &mut Ctx::eval()).unwrap();
        let targets =
            multimix_augment::targets::smooth_one_hot(&y, 3, 0.0, &candle_core::Device::Cpu)
                .unwrap();
        multimix_augment::loss::soft_cross_entropy(&l, &targets)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let eps = 8.0 / 255.0;
    let f = loss(&fgsm(&m, &t["images"], &y, eps).unwrap());
    let p = loss(&pgd(&m, &t["images"], &y, &PgdConfig::default(), &t["pgd.start"]).unwrap());
    assert!(p > f && f > loss(&t["images"]), "clean < FGSM < PGD loss");
}

#[test]
fn the_uniform_start_is_seeded_and_in_the_ball() {
    let draw = |seed| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        values(&uniform_start(&[4, 1, 8, 8], 0.1, &mut rng, &candle_core::Device::Cpu).unwrap())
    };
    let a = draw(3);
    assert_eq!(a, draw(3));
    assert_ne!(a, draw(4));
    assert!(a.iter().all(|v| (-0.1..0.1).contains(v)));
    assert!(a.iter().any(|v| *v < -0.05) && a.iter().any(|v| *v > 0.05));
}

#[test]
fn odin_equals_pytorch_ood() {
    use multimix_eval::detectors::{odin, OdinConfig};
    let t = tensors();
    let m = model(&t);
    for (images, expected) in [("images", "odin.scores"), ("noise", "odin.noise_scores")] {
        let scores = odin(&m, &t[images], &OdinConfig::default()).unwrap();
        let d = max_abs_diff(&scores, &values(&t[expected]));
        assert!(d < 1e-6, "{images}: max difference {d}");
    }
}

#[test]
fn mahalanobis_preprocessing_equals_pytorch_ood() {
    use multimix_eval::detectors::Mahalanobis;
    let t = tensors();
    let m = model(&t);
    let path = common::fixture("mahalanobis.safetensors");
    let r = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    let train_labels: Vec<u32> = r["train.labels"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|y| y as u32)
        .collect();
    let mut ctx = Ctx::eval();
    let f = m.forward_features(&r["train.images"], &mut ctx).unwrap();
    let z = m.backbone().pre_logits(&f, &mut ctx).unwrap();
    let fitted = Mahalanobis::fit(&values(&z), &train_labels, z.dim(1).unwrap(), 3).unwrap();
    for eps in ["0.002", "0.01"] {
        let e: f64 = eps.parse().unwrap();
        for set in ["images", "noise"] {
            let x = &t[set];
            let got = fitted.perturb(&m, x, e).unwrap();
            let expected = values(&r[&format!("eps{eps}.{set}.x_hat")]);
            let d = max_abs_diff(&values(&got), &expected);
            assert!(d <= ULP, "eps {eps}, {set}: x' differs by {d}");
            // every pixel moved by ε (no pixel of the fixture has a tied gradient)
            let moved = max_abs_diff(&values(&got), &values(x));
            assert!((moved - e as f32).abs() < 1e-6, "moved {moved}");
            let scores = fitted.score_images(&m, x, e).unwrap();
            let want = values(&r[&format!("eps{eps}.{set}.scores")]);
            for (g, w) in scores.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-3 * w.abs().max(1.0),
                    "eps {eps}, {set}: {g} vs {w}"
                );
            }
        }
    }
}
