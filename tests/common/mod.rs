//! Shared helpers of the end-to-end tests.
// Each test crate includes this module and uses a part of it.
#![allow(dead_code)]

use std::process::{Command, Output};

/// A configuration small enough for a test: a one-block ViT, a few steps of dense MultiMix.
pub const TINY_CONFIG: &str = r#"
seed = 3

[model]
architecture = "vit_mini_patch7_28"

[model.args]
patch_size = 7
embed_dim = 16
depth = 1
num_heads = 2

[mix]
n = 64

[train]
epochs = 2
max_steps = 4
batch_size = 32

[eval]
batch_size = 500
"#;

/// Run the `multimix` binary with `args`.
pub fn multimix(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_multimix"))
        .args(args)
        .output()
        .expect("the multimix binary runs")
}

/// Run the `multimix` binary with a clean hub environment (`HF_HOME` set to `home`, no token,
/// endpoint, cache or offline variable of the caller's) plus `env`.
pub fn multimix_hub_env(args: &[&str], home: &std::path::Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_multimix"));
    for var in [
        "HF_TOKEN",
        "HF_ENDPOINT",
        "HF_HUB_OFFLINE",
        "HF_HUB_CACHE",
        "HF_TOKEN_PATH",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HF_HOME", home)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("the multimix binary runs")
}

/// Start `multimix` with `args` (a training run writing into `run`), send it SIGINT once training
/// has started, and check that it exits with 130, names `--resume` and leaves a checkpoint and
/// no report.
pub fn interrupt_training(args: &[&str], run: &std::path::Path) {
    let child = Command::new(env!("CARGO_BIN_EXE_multimix"))
        .args(args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // config.toml is written once training starts, after the handler is installed.
    let t0 = std::time::Instant::now();
    while !run.join("config.toml").exists() {
        assert!(t0.elapsed().as_secs() < 60, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    // SAFETY: sends SIGINT to the child process we spawned.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert!(run.join("checkpoint.safetensors").is_file());
    assert!(!run.join("report.json").exists());
}
