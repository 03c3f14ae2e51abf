//! `multimix det-metrics` against pycocotools 2.0.11 (the fixtures of
//! `tools/make_det_fixtures.py`), and its errors on bad files.

mod common;

use serde_json::Value;

fn write_case(dir: &std::path::Path, case: &Value) -> (String, String) {
    let gt = dir.join("gt.json");
    let pred = dir.join("pred.json");
    std::fs::write(&gt, case["gt"].to_string()).unwrap();
    std::fs::write(&pred, case["dt"].to_string()).unwrap();
    (gt.display().to_string(), pred.display().to_string())
}

#[test]
fn json_output_equals_pycocotools() {
    let cases: Vec<Value> =
        serde_json::from_str(include_str!("../crates/eval/tests/fixtures/coco_ap.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for case in cases.iter().take(2) {
        let (gt, pred) = write_case(dir.path(), case);
        let out = common::multimix(&["det-metrics", "--gt", &gt, "--pred", &pred, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        for key in ["ap", "ap50", "ap75"] {
            let (g, w) = (got[key].as_f64().unwrap(), case[key].as_f64().unwrap());
            assert!((g - w).abs() < 1e-6, "{key}: {g} vs pycocotools {w}");
        }
    }
}

#[test]
fn bad_files_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let gt = dir.path().join("gt.json");
    let pred = dir.path().join("pred.json");
    std::fs::write(
        &gt,
        r#"{"images": [{"id": 1}], "categories": [{"id": 1}], "annotations": []}"#,
    )
    .unwrap();
    std::fs::write(&pred, "[{\"image_id\": 1, \"bbox\": [0, 0, 1, 1]").unwrap();
    let (g, p) = (gt.display().to_string(), pred.display().to_string());
    let out = common::multimix(&["det-metrics", "--gt", &g, "--pred", &p]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&p) && err.contains("results"), "{err}");
    let missing = dir.path().join("nope.json").display().to_string();
    let out = common::multimix(&["det-metrics", "--gt", &missing, "--pred", &p]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--gt") && err.contains("nope.json"), "{err}");
    std::fs::write(
        &pred,
        "[{\"image_id\": 7, \"category_id\": 1, \"bbox\": [0, 0, 1, 1], \"score\": 1}]",
    )
    .unwrap();
    let out = common::multimix(&["det-metrics", "--gt", &g, "--pred", &p]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("image 7"), "{err}");
}

#[test]
fn train_task_detection_reports_coco_ap() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, common::TINY_CONFIG).unwrap();
    let out_dir = dir.path().join("det");
    let out = common::multimix(&[
        "train",
        "--task",
        "detection",
        "--config",
        &config.display().to_string(),
        "--out",
        &out_dir.display().to_string(),
        "--det-images",
        "16",
        "--det-test-images",
        "4",
        "--batch-size",
        "8",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["task"], "detection");
    for key in ["ap", "ap50", "ap75"] {
        let v = report[key].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&v), "{key} = {v}");
    }
    assert!(out_dir.join("model.safetensors").is_file());
    assert!(out_dir.join("config.toml").is_file());
    let bad = common::multimix(&["train", "--init", "nowhere", "--max-steps", "1"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--task detection"));
}
