//! `multimix ood-metrics` against scikit-learn (the fixture of `tools/make_metric_fixtures.py`)
//! and its errors on bad score files.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn multimix(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_multimix"))
        .args(args)
        .output()
        .expect("the multimix binary runs")
}

fn write_scores(path: &Path, scores: &[f64]) {
    let text: String = scores.iter().map(|s| format!("{}\n", *s as f32)).collect();
    std::fs::write(path, text).unwrap();
}

fn one_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    lines[0].to_string()
}

#[test]
fn json_output_equals_scikit_learn_on_tied_scores() {
    let fixture: Value = serde_json::from_str(include_str!(
        "../crates/eval/tests/fixtures/ood_metrics.json"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (p_in, p_out) = (dir.path().join("in.txt"), dir.path().join("out.txt"));
    let f64s = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    for name in ["integers_0_5", "repeated_values", "tpr_exactly_095"] {
        let case = fixture["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        write_scores(&p_in, &f64s(&case["scores_in"]));
        write_scores(&p_out, &f64s(&case["scores_out"]));
        let out = multimix(&[
            "ood-metrics",
            "--in",
            p_in.to_str().unwrap(),
            "--out",
            p_out.to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        let keys = [
            "auroc",
            "aupr_in",
            "aupr_out",
            "fpr95",
            "fpr95_ood_positive",
            "detection_error",
        ];
        assert_eq!(got.as_object().unwrap().len(), keys.len());
        for key in keys {
            let (g, e) = (got[key].as_f64().unwrap(), case[key].as_f64().unwrap());
            assert!((g - e).abs() < 1e-12, "{name} {key}: {g} vs {e}");
        }
    }
}

#[test]
fn a_bad_line_is_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (p_in, p_out) = (dir.path().join("in.txt"), dir.path().join("out.txt"));
    std::fs::write(&p_in, "0.9\n0.8\n").unwrap();
    std::fs::write(&p_out, "0.1\n\n0.2x\n").unwrap();
    let run = |a: &Path, b: &Path| {
        multimix(&[
            "ood-metrics",
            "--in",
            a.to_str().unwrap(),
            "--out",
            b.to_str().unwrap(),
        ])
    };
    let line = one_error_line(&run(&p_in, &p_out));
    assert!(
        line.contains("out.txt:3") && line.contains("0.2x"),
        "{line}"
    );
    std::fs::write(&p_out, "nan\n").unwrap();
    let line = one_error_line(&run(&p_in, &p_out));
    assert!(line.contains("out.txt:1") && line.contains("nan"), "{line}");
    std::fs::write(&p_out, "\n  \n").unwrap();
    let line = one_error_line(&run(&p_in, &p_out));
    assert!(
        line.contains("out.txt") && line.contains("no scores"),
        "{line}"
    );
    let missing = dir.path().join("missing.txt");
    let line = one_error_line(&run(&missing, &p_in));
    assert!(line.contains("missing.txt"), "{line}");
    // Human-readable output names both conventions of FPR@95.
    std::fs::write(&p_out, "0.1\n0.85\n").unwrap();
    let out = run(&p_in, &p_out);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ID positive") && text.contains("OOD positive"),
        "{text}"
    );
}
