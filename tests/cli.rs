//! Bad input on the command line: a clear one-line error naming the problem, a nonzero exit,
//! and nothing already written is damaged.

mod common;

use std::path::Path;

/// Write the tiny configuration into `dir` and return its path.
fn tiny_config(dir: &Path) -> String {
    let path = dir.join("tiny.toml");
    std::fs::write(&path, common::TINY_CONFIG).unwrap();
    path.display().to_string()
}

fn stderr_line(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure, got success");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    lines[0].to_string()
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn missing_data_path_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let line = stderr_line(&common::multimix(&[
        "train",
        "--data",
        "idx:/nonexistent/fashion",
        "--out",
        out_dir.to_str().unwrap(),
    ]));
    assert!(
        line.starts_with("error: ") && line.contains("/nonexistent/fashion"),
        "{line}"
    );
    assert!(
        !out_dir.exists(),
        "a failed start must not leave a run directory"
    );
}

#[test]
fn zero_tuples_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let line = stderr_line(&common::multimix(&[
        "train",
        "--mix-n",
        "0",
        "--out",
        out_dir.to_str().unwrap(),
    ]));
    assert!(line.contains("mix-n") && line.contains("0"), "{line}");
    assert!(!out_dir.exists());
}

#[test]
fn unknown_flag_value_is_named() {
    let out = common::multimix(&["train", "--mix", "blend"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("blend"));
}

#[test]
fn a_checkpoint_that_is_not_safetensors_is_refused_and_the_run_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = tiny_config(dir.path());
    let out = common::multimix(&["train", "--config", &config, "--out", run.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = snapshot(&run);

    // Training into an existing run directory is refused and changes nothing.
    let line = stderr_line(&common::multimix(&[
        "train",
        "--config",
        &config,
        "--out",
        run.to_str().unwrap(),
    ]));
    assert!(line.contains("already exists"), "{line}");
    assert_eq!(snapshot(&run), before);

    // A pickle where the weights should be: refused with the file named, the report kept.
    let pickle = dir.path().join("pickled");
    std::fs::create_dir(&pickle).unwrap();
    for (name, bytes) in &before {
        let target = pickle.join(Path::new(name).file_name().unwrap());
        std::fs::write(target, bytes).unwrap();
    }
    std::fs::write(pickle.join("model.safetensors"), b"\x80\x02}q\x00.").unwrap();
    let kept = snapshot(&pickle);
    let line = stderr_line(&common::multimix(&[
        "eval",
        "--checkpoint",
        pickle.to_str().unwrap(),
    ]));
    assert!(
        line.contains("model.safetensors") && line.contains("pickle"),
        "{line}"
    );
    assert_eq!(
        snapshot(&pickle),
        kept,
        "a failed eval must not touch the run"
    );
}

/// Every out-of-range mixing option stops before anything is written, with one line naming the
/// flag.
#[test]
fn out_of_range_mixing_options_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path());
    let out_dir = dir.path().join("run");
    let cases: [(&[&str], &str); 9] = [
        (&["--mix", "mixup", "--mix-alpha", "0"], "mix-alpha"),
        (&["--mix-alpha=-1"], "mix-alpha"),
        (
            &["--mix", "manifold-mixup", "--mix-alpha", "0"],
            "mix-alpha",
        ),
        (&["--mix-m", "33"], "mix-m = 33"),
        (&["--mix", "mixup", "--mix-prob", "1.5"], "mix-prob"),
        (
            &["--mix", "mixup-cutmix", "--switch-prob=-0.2"],
            "switch-prob",
        ),
        (
            &["--mix", "cutmix", "--batch-size", "31"],
            "batch-size = 31",
        ),
        (&["--mix", "mixup", "--self-distill"], "self-distill"),
        (
            &["--self-distill", "--distill-temperature", "0"],
            "distill-temperature",
        ),
    ];
    for (flags, named) in cases {
        let mut args = vec![
            "train",
            "--config",
            &config,
            "--out",
            out_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        let line = stderr_line(&common::multimix(&args));
        assert!(line.contains(named), "{flags:?}: {line}");
        assert!(!out_dir.exists(), "{flags:?} left a run directory");
    }
}

/// The mixing flags reach the resolved configuration a run writes (and `--config` reads back).
#[test]
fn mixing_flags_are_written_to_config_toml() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path());
    let out_dir = dir.path().join("run");
    let out = common::multimix(&[
        "train",
        "--config",
        &config,
        "--out",
        out_dir.to_str().unwrap(),
        "--mix",
        "mixup-cutmix",
        "--mix-prob",
        "0.8",
        "--switch-prob",
        "0.25",
        "--mix-mode",
        "elem",
        "--label-smoothing",
        "0.1",
        "--max-steps",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(out_dir.join("config.toml")).unwrap();
    let cfg = multimix_recipes::TrainConfig::from_toml(&written).unwrap();
    assert_eq!(
        cfg.mix.method,
        multimix_recipes::config::MixMethod::MixupCutmix
    );
    assert_eq!((cfg.mix.prob, cfg.mix.switch_prob), (0.8, 0.25));
    assert_eq!(cfg.mix.mode, multimix_augment::MixMode::Elem);
    assert_eq!(cfg.mix.label_smoothing, 0.1);
    assert_eq!(
        cfg.mix.alpha,
        Some(1.0),
        "the method's default α is written out"
    );
    assert_eq!(cfg.mix.pairing, Some(multimix_augment::Pairing::Flip));
}

/// Ctrl-C (SIGINT) while training saves a checkpoint and exits with 130; `--resume` finishes
/// the run and writes the report.
#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("long.toml");
    let text = common::TINY_CONFIG.replace("max_steps = 4", "max_steps = 400");
    std::fs::write(&config, text).unwrap();
    let run = dir.path().join("run");
    common::interrupt_training(
        &[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
        &run,
    );
    let resumed = common::multimix(&["train", "--resume", run.to_str().unwrap()]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(run.join("report.json").is_file());
}

/// A loss that turns non-finite stops the run with one line naming epoch and step; what was
/// written before stays and no temporary file is left.
#[test]
fn non_finite_loss_stops_with_a_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path());
    let run = dir.path().join("run");
    let line = stderr_line(&common::multimix(&[
        "train",
        "--config",
        &config,
        "--out",
        run.to_str().unwrap(),
        "--lr",
        "1e30",
    ]));
    assert!(
        line.contains("epoch 1, step") && line.contains("--lr"),
        "{line}"
    );
    let files: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["config.toml"], "{files:?}");
}
