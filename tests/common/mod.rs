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
