//! `multimix compare`: one markdown table of several runs' reports.

mod common;

fn write_report(dir: &std::path::Path, report: serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("report.json"), report.to_string()).unwrap();
}

#[test]
fn runs_side_by_side_with_gaps_marked() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("erm"), dir.path().join("dense"));
    write_report(
        &a,
        serde_json::json!({"accuracy": 0.8125, "ece": 0.05, "nll": 0.5,
            "robustness": {"fgsm": [{"eps": 0.00392156862745098, "accuracy": 0.7}, {"eps": 0.03137254901960784, "accuracy": 0.3}]},
            "ood": {"mnist": {"msp": {"auroc": 0.9, "fpr95": 0.25}}},
            "geometry": {"alignment": 0.5, "uniformity": -2.0}}),
    );
    write_report(
        &b,
        serde_json::json!({"accuracy": 0.85, "ece": 0.02, "nll": 0.4,
            "robustness": {"fgsm": [{"eps": 0.03137254901960784, "accuracy": 0.45}],
                           "pgd": [{"eps": 0.03137254901960784, "accuracy": 0.1}]},
            "ood": {"gaussian": {"msp": {"auroc": 0.7, "fpr95": 0.6}}}}),
    );
    let out = common::multimix(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("gaussian AUROC") && lines[0].contains("mnist FPR@95"),
        "{text}"
    );
    // Columns: run, method, acc, ECE, NLL, FGSM, PGD, gaussian AUROC/FPR, mnist AUROC/FPR, geometry.
    let row = |l: &str| -> Vec<String> {
        l.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    assert_eq!(
        row(lines[2]),
        [
            "erm",
            "–",
            "81.25",
            "5.00",
            "0.5000",
            "30.00 (ε 8/255)",
            "–",
            "–",
            "–",
            "90.00",
            "25.00",
            "0.5000",
            "-2.0000"
        ]
    );
    assert_eq!(
        row(lines[3]),
        [
            "dense",
            "–",
            "85.00",
            "2.00",
            "0.4000",
            "45.00 (ε 8/255)",
            "10.00 (ε 8/255)",
            "70.00",
            "60.00",
            "–",
            "–",
            "–",
            "–"
        ]
    );

    let missing = dir.path().join("nothing");
    std::fs::create_dir_all(&missing).unwrap();
    let out = common::multimix(&["compare", a.to_str().unwrap(), missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing") && err.contains("multimix eval"),
        "{err}"
    );
}
