//! Calibration metrics against torchmetrics 1.9.0, PyTorch 2.15 and scikit-learn 1.9.1
//! (fixtures from `tools/make_metric_fixtures.py`).

use multimix_eval::calibration::{
    accuracy, bin_boundaries, calibration, calibration_from_logits, Calibration, NLL_PROB_FLOOR,
};
use multimix_eval::ood_metrics::MetricError;
use serde_json::Value;

const TOL: f64 = 1e-9;
/// torchmetrics' public metric accumulates in f32.
const TOL_F32: f64 = 2e-6;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/calibration.json")).expect("valid fixture JSON")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    f64s(v).into_iter().map(|x| x as f32).collect()
}

fn labels(case: &Value) -> Vec<u32> {
    case["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|y| y.as_u64().expect("label") as u32)
        .collect()
}

fn num(case: &Value, key: &str) -> f64 {
    case[key].as_f64().expect("number")
}

fn close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol
}

/// Metrics and every bin against the torchmetrics reference of one case.
fn check_case(case: &Value, got: &Calibration) {
    let name = case["name"].as_str().expect("name");
    for (what, g, tol) in [
        ("ece", got.ece, TOL),
        ("mce", got.mce, TOL),
        ("ece_f32", got.ece, TOL_F32),
        ("mce_f32", got.mce, TOL_F32),
        ("accuracy", got.accuracy, TOL),
        ("nll", got.nll, TOL),
        ("brier", got.brier, TOL),
    ] {
        let want = num(case, what);
        assert!(
            close(g, want, tol),
            "{name}: {what} = {g}, reference {want}"
        );
    }
    let counts: Vec<usize> = case["bin_counts"]
        .as_array()
        .expect("counts")
        .iter()
        .map(|c| c.as_u64().expect("count") as usize)
        .collect();
    let bin_acc = f64s(&case["bin_accuracy"]);
    let bin_conf = f64s(&case["bin_confidence"]);
    let edges = f64s(&case["boundaries"]);
    let n_bins = case["n_bins"].as_u64().expect("n_bins") as usize;
    assert_eq!(got.bins.len(), n_bins, "{name}: n_bins bins");
    // torchmetrics has n_bins + 1 buckets, the last one [1, 1]
    assert_eq!(counts.len(), n_bins + 1);
    let buckets = got.bins.iter().chain(std::iter::once(&got.saturated));
    for (b, bin) in buckets.enumerate() {
        assert_eq!(bin.count, counts[b], "{name}: count of bin {b}");
        assert!(
            close(bin.accuracy, bin_acc[b], TOL),
            "{name}: accuracy of bin {b}"
        );
        assert!(
            close(bin.confidence, bin_conf[b], TOL),
            "{name}: confidence of bin {b}"
        );
        assert_eq!(
            bin.lower,
            edges[b.min(n_bins)],
            "{name}: lower edge of bin {b}"
        );
        assert_eq!(
            bin.upper,
            edges[(b + 1).min(n_bins)],
            "{name}: upper edge of bin {b}"
        );
    }
}

#[test]
fn bin_boundaries_are_torch_float32_linspace() {
    let fx = fixture();
    let table = fx["linspace_f32"].as_object().expect("table");
    assert_eq!(table.len(), 64);
    for (n, edges) in table {
        let n: usize = n.parse().expect("n");
        assert_eq!(bin_boundaries(n), f32s(edges), "linspace(0, 1, {})", n + 1);
    }
}

#[test]
fn calibration_from_probabilities_matches_torchmetrics() {
    let fx = fixture();
    assert_eq!(num(&fx, "nll_prob_floor"), NLL_PROB_FLOOR);
    let mut checked = 0;
    for case in fx["cases"].as_array().expect("cases") {
        if case.get("probs").is_none() {
            continue;
        }
        let c = case["num_classes"].as_u64().expect("C") as usize;
        let n_bins = case["n_bins"].as_u64().expect("n_bins") as usize;
        let got =
            calibration(&f32s(&case["probs"]), &labels(case), c, n_bins).expect("calibration");
        check_case(case, &got);
        checked += 1;
    }
    assert!(checked >= 9);
}

#[test]
fn calibration_from_logits_matches_torchmetrics_and_cross_entropy() {
    let fx = fixture();
    let mut checked = 0;
    for case in fx["cases"].as_array().expect("cases") {
        let Some(logits) = case.get("logits") else {
            continue;
        };
        let c = case["num_classes"].as_u64().expect("C") as usize;
        let n_bins = case["n_bins"].as_u64().expect("n_bins") as usize;
        let got =
            calibration_from_logits(&f32s(logits), &labels(case), c, n_bins).expect("calibration");
        check_case(case, &got);
        checked += 1;
    }
    assert!(checked >= 5);
}

#[test]
fn edge_cases_put_confidences_on_boundaries_and_at_one() {
    let fx = fixture();
    let cases = fx["cases"].as_array().expect("cases");
    let edges15 = cases
        .iter()
        .find(|c| c["name"] == "edges_b15")
        .expect("edges_b15");
    let counts = edges15["bin_counts"].as_array().expect("counts");
    // Confidences of exactly 1.0 fill the extra bucket [1, 1].
    assert!(counts[15].as_u64().expect("count") >= 5);
    let got = calibration(&f32s(&edges15["probs"]), &labels(edges15), 3, 15).expect("calibration");
    assert_eq!((got.saturated.lower, got.saturated.upper), (1.0, 1.0));
    assert_eq!(
        got.saturated.count as u64,
        counts[15].as_u64().expect("count")
    );
    assert_eq!(got.bins.len(), 15);
    assert_eq!(got.bins[14].upper, 1.0);
}

#[test]
fn accuracy_takes_the_first_maximum() {
    let fx = fixture();
    for case in fx["cases"].as_array().expect("cases") {
        let c = case["num_classes"].as_u64().expect("C") as usize;
        let values = case.get("probs").or(case.get("logits")).expect("values");
        let got = accuracy(&f32s(values), &labels(case), c).expect("accuracy");
        if case.get("probs").is_some() {
            assert!(close(got, num(case, "accuracy"), TOL), "{}", case["name"]);
        }
        assert!((0.0..=1.0).contains(&got));
    }
    // Ties go to the lowest index.
    assert_eq!(accuracy(&[0.4, 0.4, 0.2], &[0], 3), Ok(1.0));
    assert_eq!(accuracy(&[0.4, 0.4, 0.2], &[1], 3), Ok(0.0));
    assert_eq!(
        accuracy(&[1.0, 3.0, 3.0, 2.0, 2.0, 0.0], &[1, 0], 3),
        Ok(1.0)
    );
}

#[test]
fn errors_are_typed() {
    let probs = [0.7f32, 0.3, 0.2, 0.8];
    assert_eq!(
        calibration(&probs, &[0, 2], 2, 15),
        Err(MetricError::LabelOutOfRange {
            index: 1,
            label: 2,
            num_classes: 2
        })
    );
    assert_eq!(
        calibration(&probs, &[0], 2, 15),
        Err(MetricError::LengthMismatch {
            what: "probabilities",
            expected: 2,
            got: 4
        })
    );
    assert_eq!(
        calibration(&[], &[], 2, 15),
        Err(MetricError::Empty { what: "labels" })
    );
    assert_eq!(
        calibration(&[0.5, f32::NAN], &[0], 2, 15),
        Err(MetricError::NonFinite {
            what: "probabilities",
            count: 1,
            first_index: 1
        })
    );
    assert_eq!(
        calibration_from_logits(&[f32::NAN, f32::INFINITY, 0.0, 1.0], &[0, 1], 2, 15),
        Err(MetricError::NonFinite {
            what: "logits",
            count: 2,
            first_index: 0
        })
    );
    assert_eq!(
        calibration(&[2.0, -1.0], &[0], 2, 15),
        Err(MetricError::ProbabilityOutOfRange {
            row: 0,
            class: 0,
            value: 2.0
        })
    );
    assert!(matches!(
        calibration(&[0.5, 0.5, 0.5, 0.4], &[0, 0], 2, 15),
        Err(MetricError::RowSumNotOne { row: 1, .. })
    ));
    assert_eq!(
        calibration(&probs, &[0, 1], 2, 0),
        Err(MetricError::ZeroSize { what: "n_bins" })
    );
    assert_eq!(
        accuracy(&[], &[0], 0),
        Err(MetricError::ZeroSize {
            what: "num_classes"
        })
    );
    assert_eq!(
        calibration_from_logits(&[1.0, 2.0], &[5], 2, 15),
        Err(MetricError::LabelOutOfRange {
            index: 0,
            label: 5,
            num_classes: 2
        })
    );
}
