//! The whole suite on the fixture model: every attack and detector runs, the report keeps its
//! keys and conventions, the plots are written, PGD is reproducible from the seed, and bad
//! options are refused.

mod common;

use candle_core::Device;
use multimix_data::Dataset;
use multimix_eval::detectors::Detector;
use multimix_eval::{evaluate, Attack, EvalError, EvalOptions};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn random_set(name: &str, n: usize, seed: u64) -> Arc<Dataset> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let images: Vec<u8> = (0..n * 64).map(|_| rng.random()).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
    let names = vec!["a".into(), "b".into(), "c".into()];
    Arc::new(Dataset::new(name, images, labels, (1, 8, 8), 3, names).unwrap())
}

fn options() -> EvalOptions {
    EvalOptions {
        batch_size: 7,
        attacks: vec![Attack::Fgsm, Attack::Pgd],
        eps: vec![2.0 / 255.0, 8.0 / 255.0],
        pgd_steps: 3,
        detectors: Detector::ALL.to_vec(),
        knn_k: 5,
        seed: 11,
        ..EvalOptions::default()
    }
}

#[test]
fn every_attack_and_detector_reports_with_plots() {
    let t = common::tensors();
    let model = common::model(&t);
    let (test, train) = (random_set("test", 24, 1), random_set("train", 30, 2));
    let ood = vec![("noise set".to_string(), random_set("ood", 20, 3))];
    let opts = options();
    let report = evaluate(&model, &test, Some(&train), &ood, &opts, &Device::Cpu).unwrap();

    let json: serde_json::Value = serde_json::from_str(&report.to_json().unwrap()).unwrap();
    for key in ["accuracy", "ece", "nll", "brier", "mce"] {
        assert!(json[key].is_number(), "{key}");
    }
    assert_eq!(json["fgsm"]["eps"].as_f64(), Some(8.0 / 255.0));
    assert_eq!(json["reliability"].as_array().unwrap().len(), 15);
    for d in Detector::ALL {
        let m = &json["ood"]["noise set"][d.name()];
        assert!(m["auroc"].is_number() && m["fpr95"].is_number(), "{d}");
        assert!(json["conventions"][d.name()].is_string(), "{d}");
    }
    for key in [
        "fgsm",
        "pgd",
        "ece",
        "fpr95",
        "fpr95_ood_positive",
        "geometry",
    ] {
        assert!(json["conventions"][key].is_string(), "{key}");
    }
    // The headline FGSM number is the curve's point at the same ε.
    let curve = &report.robustness["fgsm"];
    assert_eq!(curve.len(), 2);
    assert_eq!(curve[1].accuracy, report.fgsm.accuracy);
    assert_eq!(report.robustness["pgd"].len(), 2);
    assert_eq!(report.pgd_steps, Some(3));
    let g = report.geometry.unwrap();
    assert!((0.0..=4.0).contains(&g.alignment) && (-8.0..=0.0).contains(&g.uniformity));

    let dir = tempfile::tempdir().unwrap();
    report.save_plots(dir.path()).unwrap();
    let md = report.to_markdown("t");
    let files = report.plot_files();
    let names: Vec<&str> = files.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        names,
        [
            "reliability.png",
            "robustness.png",
            "roc_noise_set.png",
            "embedding.png"
        ]
    );
    for (file, _) in &files {
        let bytes = std::fs::read(dir.path().join(file)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{file}");
        let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        assert_eq!(width, 640, "{file}");
        assert!(
            md.contains(&format!("]({file})")),
            "{file} not in report.md"
        );
    }
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), files.len());
}

#[test]
fn mahalanobis_preprocessing_is_reported_and_changes_the_scores() {
    let t = common::tensors();
    let model = common::model(&t);
    let (test, train) = (random_set("test", 24, 1), random_set("train", 30, 2));
    let ood = vec![("o".to_string(), random_set("ood", 20, 3))];
    let plain = EvalOptions {
        detectors: vec![Detector::Mahalanobis],
        attacks: vec![],
        ..options()
    };
    let pre = EvalOptions {
        mahalanobis_eps: 0.01,
        ..plain.clone()
    };
    let a = evaluate(&model, &test, Some(&train), &ood, &plain, &Device::Cpu).unwrap();
    let b = evaluate(&model, &test, Some(&train), &ood, &pre, &Device::Cpu).unwrap();
    assert_eq!(a.mahalanobis_eps, None);
    assert_eq!(b.mahalanobis_eps, Some(0.01));
    let json: serde_json::Value = serde_json::from_str(&b.to_json().unwrap()).unwrap();
    assert_eq!(json["mahalanobis_eps"].as_f64(), Some(0.01));
    let (ma, mb) = (&a.ood["o"], &b.ood["o"]);
    assert_ne!(ma.mahalanobis, mb.mahalanobis);
    // the other detectors do not depend on it
    assert_eq!(ma.msp, mb.msp);
}

#[test]
fn pgd_is_reproducible_from_the_seed() {
    let t = common::tensors();
    let model = common::model(&t);
    let test = random_set("test", 24, 1);
    let opts = EvalOptions {
        detectors: vec![],
        ..options()
    };
    let a = evaluate(&model, &test, None, &[], &opts, &Device::Cpu).unwrap();
    let b = evaluate(&model, &test, None, &[], &opts, &Device::Cpu).unwrap();
    assert_eq!(a, b);
}

#[test]
fn bad_options_are_refused_with_the_reason() {
    let t = common::tensors();
    let model = common::model(&t);
    let test = random_set("test", 12, 1);
    let ood = vec![("o".to_string(), random_set("ood", 12, 3))];
    let bad_eps = EvalOptions {
        eps: vec![1.5],
        ..EvalOptions::default()
    };
    let err = evaluate(&model, &test, None, &ood, &bad_eps, &Device::Cpu).unwrap_err();
    assert!(matches!(&err, EvalError::Invalid(m) if m.contains("1.5") && m.contains("[0, 1]")));
    let needs_train = EvalOptions {
        detectors: vec![Detector::Knn],
        ..EvalOptions::default()
    };
    let err = evaluate(&model, &test, None, &ood, &needs_train, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, EvalError::Invalid(m) if m.contains("knn") && m.contains("training split"))
    );
    let bad_mahalanobis = EvalOptions {
        mahalanobis_eps: -0.1,
        ..EvalOptions::default()
    };
    let err = evaluate(&model, &test, None, &ood, &bad_mahalanobis, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, EvalError::Invalid(m) if m.contains("Mahalanobis") && m.contains("-0.1"))
    );
    assert!("nope"
        .parse::<Detector>()
        .unwrap_err()
        .contains("known: msp"));
}
