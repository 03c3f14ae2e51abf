//! OOD metrics against scikit-learn 1.9.1 (fixtures from `tools/make_metric_fixtures.py`).

use multimix_eval::ood_metrics::{
    average_precision, ood_metrics, roc_auc, roc_curve, MetricError, RocCurve,
};
use serde_json::Value;

const TOL: f64 = 1e-9;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/ood_metrics.json")).expect("valid fixture JSON")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| match x.as_str() {
            Some("inf") => f64::INFINITY,
            _ => x.as_f64().expect("number"),
        })
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    f64s(v).into_iter().map(|x| x as f32).collect()
}

fn assert_close(name: &str, what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= TOL,
        "{name}: {what} = {got}, sklearn {want}"
    );
}

/// The curve must be sklearn's point for point (rates as exact ratios, thresholds exact).
fn assert_curve(name: &str, got: &RocCurve, want: &Value) {
    for (field, values) in [
        ("fpr", &got.fpr),
        ("tpr", &got.tpr),
        ("thresholds", &got.thresholds),
    ] {
        let expected = f64s(&want[field]);
        assert_eq!(values.len(), expected.len(), "{name}: {field} length");
        for (i, (g, w)) in values.iter().zip(&expected).enumerate() {
            assert!(g == w, "{name}: {field}[{i}] = {g}, sklearn {w}");
        }
    }
}

fn binary(case: &Value) -> (Vec<f32>, Vec<f32>, Vec<bool>, Vec<f32>) {
    let s_in = f32s(&case["scores_in"]);
    let s_out = f32s(&case["scores_out"]);
    let is_id: Vec<bool> = s_in
        .iter()
        .map(|_| true)
        .chain(s_out.iter().map(|_| false))
        .collect();
    let score: Vec<f32> = s_in.iter().chain(&s_out).copied().collect();
    (s_in, s_out, is_id, score)
}

#[test]
fn roc_curves_match_sklearn_point_for_point() {
    let fx = fixture();
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 15);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let (_, _, is_id, score) = binary(case);
        let is_ood: Vec<bool> = is_id.iter().map(|b| !b).collect();
        let negated: Vec<f32> = score.iter().map(|s| -s).collect();
        assert_curve(
            name,
            &roc_curve(&is_id, &score).expect("roc in"),
            &case["roc_in"],
        );
        assert_curve(
            name,
            &roc_curve(&is_ood, &negated).expect("roc out"),
            &case["roc_out"],
        );
    }
}

#[test]
fn binary_scores_match_sklearn() {
    let fx = fixture();
    for case in fx["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let (_, _, is_id, score) = binary(case);
        let is_ood: Vec<bool> = is_id.iter().map(|b| !b).collect();
        let negated: Vec<f32> = score.iter().map(|s| -s).collect();
        let want = |k: &str| case[k].as_f64().expect("number");
        assert_close(
            name,
            "roc_auc",
            roc_auc(&is_id, &score).expect("auc"),
            want("auroc"),
        );
        assert_close(
            name,
            "average_precision (ID)",
            average_precision(&is_id, &score).expect("ap in"),
            want("aupr_in"),
        );
        assert_close(
            name,
            "average_precision (OOD)",
            average_precision(&is_ood, &negated).expect("ap out"),
            want("aupr_out"),
        );
    }
}

#[test]
fn ood_metrics_match_sklearn_and_numpy() {
    let fx = fixture();
    for case in fx["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let (s_in, s_out, _, _) = binary(case);
        let m = ood_metrics(&s_in, &s_out).expect("metrics");
        let want = |k: &str| case[k].as_f64().expect("number");
        assert_close(name, "auroc", m.auroc, want("auroc"));
        assert_close(name, "aupr_in", m.aupr_in, want("aupr_in"));
        assert_close(name, "aupr_out", m.aupr_out, want("aupr_out"));
        assert_close(name, "fpr95", m.fpr95, want("fpr95"));
        assert_close(
            name,
            "fpr95_ood_positive",
            m.fpr95_ood_positive,
            want("fpr95_ood_positive"),
        );
        assert_close(
            name,
            "detection_error",
            m.detection_error,
            want("detection_error"),
        );
    }
}

#[test]
fn fixture_covers_ties_and_both_fpr95_conventions_differ() {
    let fx = fixture();
    let cases = fx["cases"].as_array().expect("cases");
    let by_name = |n: &str| {
        cases
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("case {n}"))
    };
    // All-equal scores: one threshold, chance-level AUROC, AP = prevalence.
    let all_equal = by_name("all_equal");
    assert_eq!(f64s(&all_equal["roc_in"]["fpr"]), vec![0.0, 1.0]);
    assert_eq!(all_equal["auroc"].as_f64(), Some(0.5));
    // The two FPR@95 conventions give different numbers on some case.
    assert!(cases
        .iter()
        .any(|c| c["fpr95"].as_f64() != c["fpr95_ood_positive"].as_f64()));
}

#[test]
fn errors_are_typed() {
    assert_eq!(
        ood_metrics(&[], &[1.0]),
        Err(MetricError::Empty {
            what: "in-distribution scores"
        })
    );
    assert_eq!(
        ood_metrics(&[1.0], &[]),
        Err(MetricError::Empty { what: "OOD scores" })
    );
    assert_eq!(
        ood_metrics(&[1.0, 2.0], &[0.5, f32::NAN, 1.0, f32::INFINITY]),
        Err(MetricError::NonFinite {
            what: "OOD scores",
            count: 2,
            first_index: 1
        })
    );
    assert_eq!(
        ood_metrics(&[f32::NEG_INFINITY], &[0.0]),
        Err(MetricError::NonFinite {
            what: "in-distribution scores",
            count: 1,
            first_index: 0
        })
    );
    assert_eq!(
        roc_curve(&[true, false], &[1.0]),
        Err(MetricError::LengthMismatch {
            what: "scores",
            expected: 2,
            got: 1
        })
    );
    assert_eq!(
        roc_auc(&[], &[]),
        Err(MetricError::Empty { what: "scores" })
    );
    assert_eq!(
        roc_auc(&[true, true], &[1.0, 2.0]),
        Err(MetricError::MissingClass { class: "negative" })
    );
    assert_eq!(
        roc_curve(&[false], &[1.0]),
        Err(MetricError::MissingClass { class: "positive" })
    );
    assert_eq!(
        average_precision(&[false, false], &[1.0, 2.0]),
        Err(MetricError::MissingClass { class: "positive" })
    );
    // With positives only, average precision is defined (and 1), as in scikit-learn.
    assert_eq!(average_precision(&[true, true], &[1.0, 2.0]), Ok(1.0));
    let message = ood_metrics(&[f32::NAN], &[0.0]).unwrap_err().to_string();
    assert!(message.contains("in-distribution scores") && message.contains("1 non-finite"));
}
