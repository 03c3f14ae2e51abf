//! OOD detectors and embedding geometry against references written from pytorch-ood's and
//! OpenOOD's formulas with numpy, scikit-learn and torch (`tools/make_eval_fixtures.py`).

use multimix_eval::detectors::{energy, max_logit, msp, Knn, Mahalanobis};
use multimix_eval::geometry::{alignment_uniformity, pca_2d};
use multimix_eval::MetricError;
use serde_json::Value;

fn cases() -> Vec<Value> {
    let v: Value = serde_json::from_str(include_str!("fixtures/detectors.json")).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

/// |a − e| ≤ tol · max(1, |e|) for every entry.
fn assert_close(name: &str, got: &[f32], expected: &[f64], tol: f64) {
    assert_eq!(got.len(), expected.len(), "{name}: lengths");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        let err = (f64::from(*g) - e).abs();
        assert!(err <= tol * e.abs().max(1.0), "{name}[{i}]: {g} vs {e}");
    }
}

#[test]
fn logit_scores_equal_the_torch_formulas() {
    for case in cases() {
        let c = usize_of(&case["num_classes"]);
        let logits = f32s(&case["logits"]);
        assert_close("msp", &msp(&logits, c), &f64s(&case["msp"]), 1e-6);
        assert_close(
            "maxlogit",
            &max_logit(&logits, c),
            &f64s(&case["maxlogit"]),
            0.0,
        );
        assert_close(
            "energy T=1",
            &energy(&logits, c, 1.0),
            &f64s(&case["energy_t1"]),
            1e-6,
        );
        assert_close(
            "energy T=2",
            &energy(&logits, c, 2.0),
            &f64s(&case["energy_t2"]),
            1e-6,
        );
    }
}

#[test]
fn mahalanobis_equals_sklearn_empirical_covariance() {
    for case in cases() {
        let dim = usize_of(&case["dim"]);
        let c = usize_of(&case["num_classes"]);
        let det =
            Mahalanobis::fit(&f32s(&case["train"]), &u32s(&case["train_labels"]), dim, c).unwrap();
        let name = format!("mahalanobis {}", case["name"]);
        let scores = det.score(&f32s(&case["test"])).unwrap();
        assert_close(&name, &scores, &f64s(&case["mahalanobis"]), 1e-5);
    }
}

#[test]
fn knn_equals_sklearn_nearest_neighbors() {
    for case in cases() {
        let dim = usize_of(&case["dim"]);
        let k = usize_of(&case["k"]);
        let det = Knn::fit(&f32s(&case["train"]), dim, k).unwrap();
        let scores = det.score(&f32s(&case["test"])).unwrap();
        assert_close("knn", &scores, &f64s(&case["knn"]), 1e-6);
    }
}

#[test]
fn feature_detectors_refuse_bad_training_sets() {
    let feats = [0.0f32, 1.0, 1.0, 0.0, 2.0, 2.0];
    assert_eq!(
        Mahalanobis::fit(&feats, &[0, 0, 0], 2, 2),
        Err(MetricError::EmptyClass { class: 1 })
    );
    assert!(matches!(
        Mahalanobis::fit(&feats, &[0, 1], 2, 2),
        Err(MetricError::LengthMismatch { .. })
    ));
    assert_eq!(
        Knn::fit(&feats, 2, 50),
        Err(MetricError::TooFewSamples {
            what: "training features for KNN",
            need: 50,
            got: 3
        })
    );
    assert!(matches!(
        Knn::fit(&[f32::NAN, 0.0], 2, 1),
        Err(MetricError::NonFinite { .. })
    ));
}

#[test]
fn alignment_and_uniformity_equal_wang_and_isola() {
    for case in cases() {
        let dim = usize_of(&case["dim"]);
        let g =
            alignment_uniformity(&f32s(&case["train"]), &u32s(&case["train_labels"]), dim).unwrap();
        assert!((g.alignment - case["alignment"].as_f64().unwrap()).abs() < 1e-6);
        assert!((g.uniformity - case["uniformity"].as_f64().unwrap()).abs() < 1e-6);
    }
}

#[test]
fn pca_equals_sklearn() {
    for case in cases() {
        let dim = usize_of(&case["dim"]);
        let p = pca_2d(&f32s(&case["train"]), dim).unwrap();
        let comp: Vec<f32> = p.components.iter().map(|&v| v as f32).collect();
        assert_close("components", &comp, &f64s(&case["pca_components"]), 1e-6);
        let pts: Vec<f32> = p.points.iter().map(|&v| v as f32).collect();
        assert_close("projection", &pts, &f64s(&case["pca_projection"]), 1e-5);
    }
}
