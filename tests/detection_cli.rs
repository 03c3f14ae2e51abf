//! `multimix train --task detection` and `multimix eval` of its runs, through the binary:
//! COCO AP in the report (equal to `multimix det-metrics` on the written predictions and
//! ground truth), classification options refused, Ctrl-C and `--resume` as in classification.

mod common;

use common::multimix;
use std::path::Path;
use std::process::Output;

/// A one-block ViT that learns the tiny canvases in a few seconds.
const DET_CONFIG: &str = r#"
seed = 5

[model]
architecture = "vit_mini_patch7_28"

[model.args]
embed_dim = 16
depth = 1
num_heads = 2

[optim]
lr = 4e-3
weight_decay = 0.0

[train]
epochs = 40
batch_size = 8

[eval]
batch_size = 64
"#;

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn one_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    lines[0].to_string()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn train(dir: &Path, config: &str, extra: &[&str]) -> std::path::PathBuf {
    let cfg = dir.join("det.toml");
    std::fs::write(&cfg, config).unwrap();
    let run = dir.join("run");
    let mut args = vec![
        "train",
        "--task",
        "detection",
        "--config",
        cfg.to_str().unwrap(),
        "--det-images",
        "16",
        "--det-test-images",
        "4",
        "--out",
        run.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(&multimix(&args));
    run
}

#[test]
fn eval_of_a_detection_run_reports_coco_ap_and_writes_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let run = train(dir.path(), DET_CONFIG, &[]);
    let run_s = run.to_str().unwrap();
    assert!(run.join("detection.toml").is_file());
    let trained = json(&run.join("report.json"));
    let (pred, gt) = (dir.path().join("pred.json"), dir.path().join("gt.json"));
    let stdout = ok(&multimix(&[
        "eval",
        "--checkpoint",
        run_s,
        "--predictions",
        pred.to_str().unwrap(),
        "--ground-truth",
        gt.to_str().unwrap(),
    ]));
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let report = json(&run.join("report.json"));
    assert_eq!(printed, report);
    assert_eq!(report["task"], "detection");
    assert_eq!(report["images"], 4);
    assert!(report["convention"]
        .as_str()
        .unwrap()
        .contains("pycocotools"));
    // The run's own test set: the APs training reported.
    for key in ["ap", "ap50", "ap75"] {
        assert_eq!(report[key], trained[key], "{key}");
    }
    assert!(report["ap50"].as_f64().unwrap() > 0.0, "{report}");
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("AP50") && md.contains("pycocotools"), "{md}");
    // The predictions are a COCO results file that det-metrics scores to the same APs.
    let dets = json(&pred);
    let dets = dets.as_array().unwrap();
    assert!(!dets.is_empty() && dets.len() <= 4 * 100);
    assert!(dets
        .iter()
        .all(|d| (1..=4).contains(&d["image_id"].as_i64().unwrap())));
    let metrics: serde_json::Value = serde_json::from_str(&ok(&multimix(&[
        "det-metrics",
        "--gt",
        gt.to_str().unwrap(),
        "--pred",
        pred.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    for key in ["ap", "ap50", "ap75"] {
        assert_eq!(metrics[key], report[key], "{key}");
    }

    // Classification options are refused in one line, before anything is written.
    let line = one_error_line(&multimix(&[
        "eval",
        "--checkpoint",
        run_s,
        "--ood",
        "gaussian",
        "--attack",
        "fgsm",
    ]));
    assert!(
        line.contains("--ood, --attack") && line.contains("detection checkpoint"),
        "{line}"
    );

    // The weights file alone, with a test set and a new report directory.
    let out = dir.path().join("file-eval");
    let file = run.join("model.safetensors");
    let stdout = ok(&multimix(&[
        "eval",
        "--checkpoint",
        file.to_str().unwrap(),
        "--data",
        "fashion-mnist-mini",
        "--out",
        out.to_str().unwrap(),
    ]));
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed, json(&out.join("report.json")));
    assert!(printed["images"].as_u64().unwrap() > 4);
    let line = one_error_line(&multimix(&["eval", "--checkpoint", file.to_str().unwrap()]));
    assert!(line.contains("--data") && line.contains("--out"), "{line}");
    // A test set of other classes is named.
    let coco = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/data/tests/fixtures/det/coco"
    );
    let line = one_error_line(&multimix(&[
        "eval",
        "--checkpoint",
        run_s,
        "--data",
        &format!("coco:{coco}"),
    ]));
    assert!(line.contains("classes"), "{line}");
}

/// Every backbone family trains with `--task detection`: an ImageNet-stem ResNet on a canvas of
/// its stride 32, and its refusal of the default canvas names the flag.
#[test]
fn a_resnet_trains_with_task_detection_and_names_the_canvas_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let config = DET_CONFIG
        .replace("vit_mini_patch7_28", "resnet18")
        .replace(
            "embed_dim = 16\ndepth = 1\nnum_heads = 2",
            "layers = [1, 1, 1, 1]\nchannels = [4, 4, 4, 4]\nstem_chs = 4",
        )
        .replace("epochs = 40", "epochs = 1");
    let run = train(dir.path(), &config, &["--det-canvas", "64"]);
    let report = json(&run.join("report.json"));
    assert_eq!(report["detection"]["canvas"], 64);
    let cfg = dir.path().join("det.toml");
    let line = one_error_line(&multimix(&[
        "train",
        "--task",
        "detection",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        dir.path().join("other").to_str().unwrap(),
    ]));
    assert!(
        line.contains("resnet18") && line.contains("--det-canvas 32 or 64"),
        "{line}"
    );
}

/// Ctrl-C (SIGINT) while training a detector saves a checkpoint and exits with 130; `--resume`
/// (the run is recognized as a detection run) finishes it and writes the report.
#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("long.toml");
    let text = DET_CONFIG.replace("epochs = 40", "epochs = 400\nmax_steps = 300");
    std::fs::write(&config, text).unwrap();
    let run = dir.path().join("run");
    common::interrupt_training(
        &[
            "train",
            "--task",
            "detection",
            "--config",
            config.to_str().unwrap(),
            "--det-images",
            "16",
            "--det-test-images",
            "2",
            "--out",
            run.to_str().unwrap(),
        ],
        &run,
    );
    let run_s = run.to_str().unwrap();
    // Flags beside --resume are refused; so is --task detection on a run that is not one.
    let line = one_error_line(&multimix(&[
        "train",
        "--resume",
        run_s,
        "--det-images",
        "3",
    ]));
    assert!(line.contains("drop the other training flags"), "{line}");
    let other = dir.path().join("classification");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("config.toml"), "").unwrap();
    let line = one_error_line(&multimix(&[
        "train",
        "--task",
        "detection",
        "--resume",
        other.to_str().unwrap(),
    ]));
    assert!(line.contains("not a detection run"), "{line}");
    ok(&multimix(&["train", "--resume", run_s]));
    let report = json(&run.join("report.json"));
    assert_eq!(report["task"], "detection");
    let last = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 300);
}
