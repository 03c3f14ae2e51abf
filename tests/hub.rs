//! Checkpoints that travel: timm repositories load with timm's logits, `hf-hub:` references and
//! zoo names resolve, and `multimix hub` / `multimix zoo` work end to end against the local hub
//! of `crates/hub/tests/support/mock_hub.rs` on 127.0.0.1.

mod common;
#[path = "../crates/hub/tests/support/mock_hub.rs"]
mod mock_hub;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{Device, Tensor};
use common::multimix_hub_env as run;
use mock_hub::MockHub;
use multimix::checkpoint::{load_model, CheckpointSource};
use multimix_backbones::{Ctx, Model, ModelConfig};
use multimix_hub::checkpoint::save_safetensors;
use multimix_hub::{HubOptions, RepoId, Token};
use multimix_recipes::train::META_MODEL_CONFIG;

const TOKEN: &str = "hf_cli_secret_token";
const ZOO_VIT: &str = "vit_tiny_patch16_224.augreg_in21k_ft_in1k";

fn timm_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/hub/tests/fixtures/vit_tiny")
}

fn timm_file(name: &str) -> Vec<u8> {
    std::fs::read(timm_repo().join(name)).unwrap()
}

/// The batch of `tools/make_timm_logits_fixture.py`: ((7b + 13c + 3h + 5w) mod 17) / 16.
fn batch(shape: [usize; 4]) -> Tensor {
    let [b, c, h, w] = shape;
    let mut v = Vec::with_capacity(b * c * h * w);
    for bi in 0..b {
        for ci in 0..c {
            for hi in 0..h {
                for wi in 0..w {
                    v.push(((7 * bi + 13 * ci + 3 * hi + 5 * wi) % 17) as f32 / 16.0);
                }
            }
        }
    }
    Tensor::from_vec(v, (b, c, h, w), &Device::Cpu).unwrap()
}

/// The model's logits on the fixture batch next to timm's.
fn logits_vs_timm(model: &Model) -> (Vec<f32>, Vec<f32>) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/timm_vit_tiny_logits.json");
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let shape: Vec<usize> = serde_json::from_value(fixture["shape"].clone()).unwrap();
    let expected: Vec<Vec<f32>> = serde_json::from_value(fixture["logits"].clone()).unwrap();
    let got = model
        .forward(
            &batch([shape[0], shape[1], shape[2], shape[3]]),
            &mut Ctx::eval(),
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (got, expected.concat())
}

fn assert_close(got: &[f32], expected: &[f32]) {
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(expected) {
        assert!((g - e).abs() < 1e-5, "{got:?} vs timm {expected:?}");
    }
}

#[test]
fn timm_repository_directory_loads_with_timm_logits() {
    let model = load_model(&timm_repo(), &Device::Cpu).unwrap();
    assert_eq!(model.config().architecture, "vit_tiny_patch16_224");
    assert_eq!(model.config().num_classes(), 5);
    let (got, expected) = logits_vs_timm(&model);
    assert_close(&got, &expected);
}

fn options(hub: &MockHub, cache: &Path) -> HubOptions {
    HubOptions {
        endpoint: hub.url().to_string(),
        cache_dir: cache.to_path_buf(),
        token: Token::new(TOKEN),
        offline: false,
        progress: false,
        retries: 0,
    }
}

/// A hub serving the timm fixture as `owner/tiny` and as the zoo's ViT-Tiny repository.
fn hub_with_timm_repos() -> MockHub {
    let hub = MockHub::start();
    let (config, weights) = (timm_file("config.json"), timm_file("model.safetensors"));
    for repo in ["owner/tiny", &format!("timm/{ZOO_VIT}")] {
        hub.put(
            repo,
            &[("config.json", &config), ("model.safetensors", &weights)],
        );
    }
    hub
}

#[test]
fn hub_references_and_zoo_names_resolve_and_load() {
    let hub = hub_with_timm_repos();
    let cache = tempfile::tempdir().unwrap();
    let hf = CheckpointSource::parse(Path::new("hf-hub:owner/tiny@main")).unwrap();
    assert_eq!(
        hf,
        CheckpointSource::Hub {
            repo: RepoId::parse("owner/tiny").unwrap(),
            revision: "main".into()
        }
    );
    let zoo = CheckpointSource::parse(Path::new(ZOO_VIT)).unwrap();
    assert_eq!(zoo, CheckpointSource::Zoo(ZOO_VIT.into()));
    for source in [hf, zoo] {
        let dir = source.fetch(options(&hub, cache.path())).unwrap();
        let model = load_model(&dir, &Device::Cpu).unwrap();
        let (got, expected) = logits_vs_timm(&model);
        assert_close(&got, &expected);
    }
    let default_rev = CheckpointSource::parse(Path::new("hf-hub:owner/tiny")).unwrap();
    assert!(matches!(default_rev, CheckpointSource::Hub { revision, .. } if revision == "main"));
    for bad in ["hf-hub:not a repo", "no/such/path/or-zoo-name"] {
        let err = CheckpointSource::parse(Path::new(bad)).unwrap_err();
        assert!(
            format!("{err:#}").contains(bad.trim_start_matches("hf-hub:")),
            "{err:#}"
        );
    }
}

fn stdout_last_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    stdout.lines().last().unwrap_or_default().to_string()
}

fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    lines[0].to_string()
}

/// A run directory as `multimix train` leaves it, minus `config.json` (runs from before it
/// existed): weights with the model configuration in their metadata, and a report.
fn tiny_run(dir: &Path) -> ModelConfig {
    let args = serde_json::json!({"embed_dim": 16, "depth": 1, "num_heads": 2});
    let config = ModelConfig::from_preset("vit_mini_patch7_28", args.as_object().unwrap()).unwrap();
    let model = Model::new(&config, &Device::Cpu, 7).unwrap();
    let weights = model.params().tensors().unwrap();
    let meta = BTreeMap::from([(
        META_MODEL_CONFIG.to_string(),
        serde_json::to_string(&config).unwrap(),
    )]);
    std::fs::create_dir_all(dir).unwrap();
    save_safetensors(&dir.join("model.safetensors"), &weights, &meta).unwrap();
    let report = serde_json::json!({"data": "fashion-mnist", "test_images": 100, "accuracy": 0.5, "ece": 0.125});
    std::fs::write(dir.join("report.json"), report.to_string()).unwrap();
    config
}

#[test]
fn push_then_download_from_the_command_line() {
    let mut hub = MockHub::start();
    hub.require_token(TOKEN);
    let url = hub.url().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (home, cache, run_dir) = (
        tmp.path().join("home"),
        tmp.path().join("cache"),
        tmp.path().join("run"),
    );
    let config = tiny_run(&run_dir);
    let cache_arg = cache.to_str().unwrap();
    let endpoint = [("HF_ENDPOINT", url.as_str())];
    let with_token = [("HF_ENDPOINT", url.as_str()), ("HF_TOKEN", TOKEN)];

    // Without a token the hub refuses, and the message says what to set.
    let out = run(
        &["hub", "push", run_dir.to_str().unwrap(), "me/run"],
        &home,
        &endpoint,
    );
    let line = error_line(&out);
    assert!(
        line.contains("me/run") && line.contains("HF_TOKEN"),
        "{line}"
    );

    let out = run(
        &[
            "hub",
            "push",
            run_dir.to_str().unwrap(),
            "me/run",
            "--private",
        ],
        &home,
        &with_token,
    );
    assert_eq!(stdout_last_line(&out), format!("{}/me/run", url.as_str()));
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!shown.contains(TOKEN), "the token was printed: {shown}");
    assert_eq!(hub.is_private("me/run"), Some(true));
    for file in [
        "model.safetensors",
        "config.json",
        "README.md",
        "report.json",
    ] {
        let local = std::fs::read(run_dir.join(file)).unwrap();
        assert_eq!(
            hub.file("me/run", file).as_deref(),
            Some(local.as_slice()),
            "{file}"
        );
    }
    let card = String::from_utf8(hub.file("me/run", "README.md").unwrap()).unwrap();
    assert!(card.starts_with("---\nlibrary_name: multimix\n"), "{card}");
    assert!(
        card.contains("- \"fashion-mnist\"") && card.contains("value: 0.125"),
        "{card}"
    );
    let timm: serde_json::Value =
        serde_json::from_slice(&hub.file("me/run", "config.json").unwrap()).unwrap();
    assert_eq!(timm["architecture"], "vit_mini_patch7_28");
    assert_eq!(
        timm["pretrained_cfg"]["input_size"],
        serde_json::json!([1, 28, 28])
    );

    // Download: the local directory is printed last and holds identical bytes.
    let out = run(
        &[
            "hub",
            "download",
            "me/run",
            "--endpoint",
            url.as_str(),
            "--cache-dir",
            cache_arg,
        ],
        &home,
        &[],
    );
    let dir = PathBuf::from(stdout_last_line(&out));
    for file in ["model.safetensors", "config.json"] {
        assert_eq!(
            std::fs::read(dir.join(file)).unwrap(),
            std::fs::read(run_dir.join(file)).unwrap()
        );
    }
    let model = load_model(&dir, &Device::Cpu).unwrap();
    assert_eq!(model.config(), &config);
    let out = run(
        &[
            "hub",
            "download",
            "me/run",
            "--file",
            "report.json",
            "--endpoint",
            url.as_str(),
            "--cache-dir",
            cache_arg,
        ],
        &home,
        &[],
    );
    assert_eq!(PathBuf::from(stdout_last_line(&out)), dir);
    assert!(dir.join("report.json").is_file());

    // A missing file is named with its repository.
    let out = run(
        &[
            "hub",
            "download",
            "me/run",
            "--file",
            "missing.bin",
            "--endpoint",
            url.as_str(),
            "--cache-dir",
            cache_arg,
        ],
        &home,
        &[],
    );
    let line = error_line(&out);
    assert!(
        line.contains("me/run") && line.contains("missing.bin"),
        "{line}"
    );

    // The hub goes away: offline, the cache serves; a miss says so.
    hub.stop();
    let offline = [("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", url.as_str())];
    let out = run(
        &["hub", "download", "me/run", "--cache-dir", cache_arg],
        &home,
        &offline,
    );
    assert_eq!(PathBuf::from(stdout_last_line(&out)), dir);
    let out = run(
        &[
            "hub",
            "download",
            "me/run",
            "--offline",
            "--cache-dir",
            cache_arg,
        ],
        &home,
        &endpoint,
    );
    assert_eq!(PathBuf::from(stdout_last_line(&out)), dir);
    let out = run(
        &["hub", "download", "me/other", "--cache-dir", cache_arg],
        &home,
        &offline,
    );
    let line = error_line(&out);
    assert!(
        line.contains("me/other") && line.contains("offline"),
        "{line}"
    );
}

#[test]
fn zoo_list_and_download_from_the_command_line() {
    let hub = hub_with_timm_repos();
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&["zoo", "list"], tmp.path(), &[]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success());
    assert_eq!(table.lines().count(), 6, "{table}");
    for name in [
        ZOO_VIT,
        "vit_small_patch16_224.augreg_in21k_ft_in1k",
        "resnet50.a1_in1k",
    ] {
        assert!(table.contains(name), "{table}");
    }

    let cache = tmp.path().join("cache");
    let args = [
        "zoo",
        "download",
        ZOO_VIT,
        "--endpoint",
        hub.url(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    let dir = PathBuf::from(stdout_last_line(&run(&args, tmp.path(), &[])));
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        timm_file("model.safetensors")
    );

    let line = error_line(&run(&["zoo", "download", "nope"], tmp.path(), &[]));
    assert!(line.contains("nope") && line.contains(ZOO_VIT), "{line}");
    let line = error_line(&run(&["hub", "download", "not-a-repo"], tmp.path(), &[]));
    assert!(
        line.contains("not-a-repo") && line.contains("owner/name"),
        "{line}"
    );
}

#[test]
fn timm_config_of_a_run_rebuilds_the_same_model() {
    for args in [
        serde_json::json!({"embed_dim": 16, "depth": 1, "num_heads": 2}),
        serde_json::json!({}),
    ] {
        let config =
            ModelConfig::from_preset("vit_mini_patch7_28", args.as_object().unwrap()).unwrap();
        let timm = multimix_recipes::train::timm_config(&config);
        assert_eq!(timm.pretrained_cfg.input_size, [1, 28, 28]);
        let back = multimix::checkpoint::model_config_from_timm(&timm).unwrap();
        assert_eq!(back, config);
    }
    let mut timm = multimix_recipes::train::timm_config(
        &ModelConfig::from_preset("vit_tiny_patch16_224", &serde_json::Map::new()).unwrap(),
    );
    timm.model_args
        .insert("img_size".into(), serde_json::json!([224, 160]));
    let err = multimix::checkpoint::model_config_from_timm(&timm).unwrap_err();
    assert!(err.to_string().contains("img_size"), "{err}");
    timm.model_args.insert("img_size".into(), 224.into());
    timm.model_args.insert("no_such_arg".into(), 1.into());
    let err = format!(
        "{:#}",
        multimix::checkpoint::model_config_from_timm(&timm).unwrap_err()
    );
    assert!(err.contains("no_such_arg"), "{err}");
}

/// `multimix eval` takes a hub reference (with --data and --out) like a run directory.
#[test]
fn eval_of_a_hub_checkpoint_writes_its_report() {
    let hub = hub_with_timm_repos();
    let home = tempfile::tempdir().unwrap();
    let run_dir = home.path().join("run");
    let config = tiny_run(&run_dir);
    multimix_recipes::train::timm_config(&config)
        .write(&run_dir.join("config.json"))
        .unwrap();
    let weights = std::fs::read(run_dir.join("model.safetensors")).unwrap();
    let timm_json = std::fs::read(run_dir.join("config.json")).unwrap();
    hub.put(
        "owner/run",
        &[("config.json", &timm_json), ("model.safetensors", &weights)],
    );
    let out = home.path().join("report");
    let env = [("HF_ENDPOINT", hub.url()), ("HF_TOKEN", TOKEN)];
    let args = [
        "eval",
        "--checkpoint",
        "hf-hub:owner/run",
        "--data",
        "fashion-mnist-mini",
    ];
    let line = error_line(&run(&args, home.path(), &env));
    assert!(line.contains("--out"), "{line}");
    let mut with_out = args.to_vec();
    with_out.extend(["--out", out.to_str().unwrap()]);
    let done = run(&with_out, home.path(), &env);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert!(report["accuracy"].as_f64().is_some() && report["ood"]["mnist"].is_object());
    // A model whose head does not fit the data's classes is refused by name.
    let timm = [
        "eval",
        "--checkpoint",
        "hf-hub:owner/tiny",
        "--data",
        "fashion-mnist-mini",
    ];
    let mut timm = timm.to_vec();
    let other = home.path().join("other");
    timm.extend(["--out", other.to_str().unwrap()]);
    let line = error_line(&run(&timm, home.path(), &env));
    assert!(line.contains("10 classes"), "{line}");
    assert!(!other.exists(), "nothing written for a failed evaluation");
}
