//! `multimix eval`'s flags: bad values exit nonzero with one clear line before anything is
//! loaded; good ones run the opt-in attacks and detectors and write the plots.

mod common;

use common::multimix;
use std::process::Output;

fn one_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    lines[0].to_string()
}

#[test]
fn bad_flags_are_named_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().to_str().unwrap();
    let cases: [(&[&str], &[&str]); 8] = [
        (&["--eps", "1/255,2"], &["--eps `2`", "outside [0, 1]"]),
        (&["--eps", "-0.1"], &["--eps `-0.1`", "outside [0, 1]"]),
        (&["--eps", "8/0"], &["--eps `8/0`", "division by zero"]),
        (&["--fgsm-eps", "abc"], &["--fgsm-eps `abc`"]),
        (
            &["--detectors", "msp,foo"],
            &["unknown detector `foo`", "mahalanobis"],
        ),
        (&["--attack", "cw"], &["unknown attack `cw`", "fgsm, pgd"]),
        (
            &["--mahalanobis-eps", "2"],
            &["--mahalanobis-eps `2`", "outside [0, 1]"],
        ),
        (
            &["--mahalanobis-eps", "0.002"],
            &["--detectors mahalanobis"],
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["eval", "--checkpoint", run];
        args.extend_from_slice(flags);
        let line = one_error_line(&multimix(&args));
        for e in expected {
            assert!(line.contains(e), "{flags:?}: `{line}` lacks `{e}`");
        }
    }
    // Nothing was written into the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn opt_in_attacks_and_detectors_write_the_report_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, common::TINY_CONFIG).unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let train = multimix(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--max-steps",
        "1",
        "--out",
        run_s,
    ]);
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
    let out = multimix(&[
        "eval",
        "--checkpoint",
        run_s,
        "--ood",
        "gaussian",
        "--attack",
        "fgsm",
        "--eps",
        "8/255",
        "--detectors",
        "mahalanobis,knn",
        "--mahalanobis-eps",
        "0.002",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
    for d in ["msp", "mahalanobis", "knn"] {
        assert!(report["ood"]["gaussian"][d]["auroc"].is_number(), "{d}");
    }
    assert!(report["ood"]["gaussian"].get("energy").is_none());
    assert_eq!(report["mahalanobis_eps"].as_f64(), Some(0.002));
    assert!(report["robustness"]["fgsm"][0]["accuracy"].is_number());
    assert_eq!(
        report["robustness"]["fgsm"][0]["eps"].as_f64(),
        Some(8.0 / 255.0)
    );
    assert!(report["geometry"]["alignment"].is_number());
    for png in [
        "reliability.png",
        "robustness.png",
        "roc_gaussian.png",
        "embedding.png",
    ] {
        assert!(run.join(png).is_file(), "{png}");
    }
    // The printed JSON is the report.
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, report);
}
