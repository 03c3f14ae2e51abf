//! `multimix bench`: the JSON it writes, and one clear line for a model or method it does not
//! know. Speed is never asserted.

mod common;

/// The single non-empty line of a failed run's stderr.
fn stderr_line(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure, got success");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    lines[0].to_string()
}

#[test]
fn a_multimix_step_is_timed_into_well_formed_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = common::multimix(&[
        "bench",
        "--model",
        "vit_mini_patch7_28",
        "--method",
        "multimix",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--batch-size",
        "8",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("well-formed JSON");
    assert_eq!(v["schema"], "multimix-bench/1");
    assert_eq!(v["framework"], "candle");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(
        (&r["model"], &r["method"], &r["mode"]),
        (
            &"vit_mini_patch7_28".into(),
            &"multimix".into(),
            &"train".into()
        )
    );
    assert_eq!(r["batch_size"], 8);
    assert_eq!(r["input"], serde_json::json!([1, 28, 28]));
    // timm's VisionTransformer with the preset's arguments has 306,634 parameters, and
    // torch.utils.flop_counter counts 9,982,848 forward FLOPs per image (tools/bench_torch.py).
    assert_eq!(r["params"], 306_634);
    let fwd = r["forward_gflop"].as_f64().unwrap();
    assert!((fwd - 8.0 * 9_982_848e-9).abs() < 1e-9, "{fwd}");
    assert_eq!(r["wall_s"].as_array().map(Vec::len), Some(1));
    for key in [
        "median_s",
        "min_s",
        "max_s",
        "images_per_s",
        "achieved_gflops",
        "peak_rss_bytes",
    ] {
        let x = r[key].as_f64().unwrap_or(f64::NAN);
        assert!(x > 0.0 && x.is_finite(), "{key} = {}", r[key]);
    }
    assert!(r["last_loss"].as_f64().is_some_and(f64::is_finite));
    assert!(r["min_s"].as_f64() <= r["median_s"].as_f64());
    // Nothing but the JSON is left in the directory (the write is atomic).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn an_unknown_model_or_method_is_one_line_naming_it() {
    let line = stderr_line(&common::multimix(&["bench", "--model", "vit_huge_nope"]));
    assert!(
        line.contains("vit_huge_nope") && line.contains("vit_mini_patch7_28"),
        "{line}"
    );
    let line = stderr_line(&common::multimix(&["bench", "--method", "none,blend"]));
    assert!(
        line.contains("blend") && line.contains("dense-multimix"),
        "{line}"
    );
    let line = stderr_line(&common::multimix(&["bench", "--fgsm", "--method", "none"]));
    assert!(line.contains("--fgsm"), "{line}");
}
