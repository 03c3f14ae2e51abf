//! `hub:owner/name` data sets: parquet files of a data set repository, downloaded from the local
//! hub of `crates/hub/tests/support/mock_hub.rs` on 127.0.0.1 (never the internet), read with
//! the pixels of `tools/make_parquet_fixtures.py`, and used by `multimix train` and `eval`.

mod common;
#[path = "../crates/hub/tests/support/mock_hub.rs"]
mod mock_hub;

use common::multimix_hub_env;
use mock_hub::MockHub;
use multimix_hub::remote::DatasetFiles;
use multimix_hub::{Hub, HubOptions, RepoId};
use std::path::{Path, PathBuf};
use std::process::Output;

const SHAPES: &str = "owner/shapes";
const TRAIN: [&str; 2] = [
    "data/train-00000-of-00002.parquet",
    "data/train-00001-of-00002.parquet",
];
const TEST: &str = "data/test-00000-of-00001.parquet";
const CONVERTED: &str = "owner/converted";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/data/tests/fixtures/parquet")
        .join(name)
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// A hub serving the HF-written fixture as the data set `owner/shapes`, laid out as
/// `push_to_hub` leaves it, with the plain RGB set as a test-only `owner/rgb`.
fn hub_with_datasets() -> MockHub {
    let hub = MockHub::start();
    let mut files: Vec<(String, Vec<u8>)> = TRAIN
        .iter()
        .chain([&TEST])
        .map(|f| (f.to_string(), bytes(&format!("hf/{f}"))))
        .collect();
    files.push(("README.md".into(), b"---\nlicense: cc0\n---\n".to_vec()));
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    hub.put_dataset(SHAPES, &refs);
    hub.put_dataset("owner/rgb", &[(TEST, &bytes("plain_rgb.parquet"))]);
    // No parquet on `main`; the hub's conversion on `refs/convert/parquet`.
    hub.put_dataset(
        CONVERTED,
        &[("README.md", b"a data set with a loading script")],
    );
    let converted = [
        (
            "default/train/0000.parquet",
            bytes(&format!("hf/{}", TRAIN[0])),
        ),
        (
            "default/train/0001.parquet",
            bytes(&format!("hf/{}", TRAIN[1])),
        ),
        ("default/test/0000.parquet", bytes(&format!("hf/{TEST}"))),
    ];
    let refs: Vec<(&str, &[u8])> = converted.iter().map(|(p, b)| (*p, b.as_slice())).collect();
    hub.put_dataset_ref(CONVERTED, "refs/convert/parquet", &refs);
    hub
}

fn options(hub: &MockHub, cache: &Path, offline: bool) -> HubOptions {
    HubOptions {
        endpoint: hub.url().to_string(),
        cache_dir: cache.to_path_buf(),
        token: None,
        offline,
        progress: false,
        retries: 0,
    }
}

fn download(
    hub: &MockHub,
    cache: &Path,
    repo: &str,
    with_train: bool,
) -> Result<DatasetFiles, String> {
    Hub::new(options(hub, cache, false))
        .unwrap()
        .download_dataset(&RepoId::parse(repo).unwrap(), "main", None, with_train)
        .map_err(|e| e.to_string())
}

#[test]
fn a_dataset_repository_downloads_its_splits_into_the_dataset_cache() {
    let hub = hub_with_datasets();
    let cache = tempfile::tempdir().unwrap();
    let files = download(&hub, cache.path(), SHAPES, true).unwrap();
    assert_eq!(files.test_split, "test");
    let snapshots = cache.path().join("datasets--owner--shapes/snapshots");
    for (path, name) in files.train.iter().zip(TRAIN) {
        assert!(path.starts_with(&snapshots), "{}", path.display());
        assert!(path.ends_with(name), "{}", path.display());
        assert_eq!(std::fs::read(path).unwrap(), bytes(&format!("hf/{name}")));
    }
    assert_eq!(
        std::fs::read(&files.test[0]).unwrap(),
        bytes(&format!("hf/{TEST}"))
    );
    assert!(hub.count("GET /api/datasets/owner/shapes/revision/main") >= 1);
    assert_eq!(hub.count("GET /datasets/owner/shapes/resolve/"), 3);
    // The README was not downloaded, and a second call transfers nothing again.
    assert_eq!(
        hub.count("GET /datasets/owner/shapes/resolve/main/README.md"),
        0
    );
    assert_eq!(download(&hub, cache.path(), SHAPES, true).unwrap(), files);
    assert_eq!(hub.count("GET /datasets/owner/shapes/resolve/"), 3);
    // Offline, the cached snapshot serves the same files without a request.
    let requests = hub.log().len();
    let offline = Hub::new(options(&hub, cache.path(), true))
        .unwrap()
        .download_dataset(&RepoId::parse(SHAPES).unwrap(), "main", None, true)
        .unwrap();
    assert_eq!(offline, files);
    assert_eq!(hub.log().len(), requests);
    // An OOD set needs only the test split.
    let other = tempfile::tempdir().unwrap();
    let test_only = download(&hub, other.path(), SHAPES, false).unwrap();
    assert!(test_only.train.is_empty());
    assert_eq!(hub.count("GET /datasets/owner/shapes/resolve/"), 4);
}

#[test]
fn a_cut_transfer_leaves_nothing_in_the_cache() {
    let hub = hub_with_datasets();
    let cache = tempfile::tempdir().unwrap();
    hub.cut("train-00001-of-00002.parquet");
    let err = download(&hub, cache.path(), SHAPES, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("owner/shapes"), "{err}");
    let blobs = cache.path().join("datasets--owner--shapes/blobs");
    let left: Vec<PathBuf> = std::fs::read_dir(&blobs)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "incomplete"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let snapshot_file = std::fs::read_dir(cache.path().join("datasets--owner--shapes/snapshots"))
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path().join(TRAIN[1]))
        .find(|p| p.exists());
    assert!(snapshot_file.is_none(), "{snapshot_file:?}");
    hub.heal();
    let files = download(&hub, cache.path(), SHAPES, true).unwrap();
    assert_eq!(
        std::fs::read(&files.train[1]).unwrap(),
        bytes(&format!("hf/{}", TRAIN[1]))
    );
}

#[test]
fn missing_repositories_parquet_files_and_splits_are_named() {
    let hub = hub_with_datasets();
    hub.put_dataset("owner/csv", &[("data.csv", b"a,b\n"), ("README.md", b"hi")]);
    let cache = tempfile::tempdir().unwrap();
    let err = download(&hub, cache.path(), "owner/none", true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dataset repository owner/none@main not found"),
        "{err}"
    );
    let err = download(&hub, cache.path(), "owner/csv", true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no parquet file") && err.contains("README.md, data.csv"),
        "{err}"
    );
    // A model repository of that name is not a data set.
    hub.put("owner/model", &[(TEST, &bytes(&format!("hf/{TEST}")))]);
    let err = download(&hub, cache.path(), "owner/model", true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dataset repository owner/model@main not found"),
        "{err}"
    );
    let err = download(&hub, cache.path(), CONVERTED, true)
        .unwrap_err()
        .to_string();
    let hint = format!("hub:{CONVERTED}@refs/convert/parquet");
    assert!(
        err.contains("no parquet file") && err.contains(&hint),
        "{err}"
    );
    let converted = Hub::new(options(&hub, cache.path(), false))
        .unwrap()
        .download_dataset(
            &RepoId::parse(CONVERTED).unwrap(),
            "refs/convert/parquet",
            None,
            true,
        )
        .unwrap();
    assert_eq!((converted.train.len(), converted.test.len()), (2, 1));
    assert_eq!(
        std::fs::read(&converted.test[0]).unwrap(),
        bytes(&format!("hf/{TEST}"))
    );
    let err = download(&hub, cache.path(), "owner/rgb", true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no train split") && err.contains(TEST),
        "{err}"
    );
    assert!(download(&hub, cache.path(), "owner/rgb", false).is_ok());
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "failed: {stderr}");
    stderr
}

#[test]
fn train_and_eval_on_hub_data_from_the_command_line() {
    let hub = hub_with_datasets();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf");
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, common::TINY_CONFIG).unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let env = [("HF_ENDPOINT", hub.url())];
    let data = format!("hub:{SHAPES}");
    let train = multimix_hub_env(
        &[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--data",
            &data,
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--out",
            run_s,
        ],
        &home,
        &env,
    );
    ok(&train);
    // The model has the data set's three ClassLabel classes.
    let weights =
        candle_core::safetensors::load(run.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(weights["head.weight"].dims()[0], 3);
    let eval = multimix_hub_env(
        &[
            "eval",
            "--checkpoint",
            run_s,
            "--data",
            &format!("hub:{CONVERTED}@refs/convert/parquet"),
            "--ood",
            "hub:owner/rgb,gaussian",
            "--out",
            dir.path().join("report").to_str().unwrap(),
        ],
        &home,
        &env,
    );
    ok(&eval);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report/report.json")).unwrap())
            .unwrap();
    assert!(
        report["ood"]["hub:owner/rgb"]["msp"]["auroc"].is_number(),
        "{report}"
    );
    // Each set downloaded the splits it needs: the OOD set only its test split.
    assert_eq!(hub.count("GET /datasets/owner/converted/resolve/"), 3);
    assert_eq!(hub.count("GET /datasets/owner/rgb/resolve/"), 1);
    let unknown = multimix_hub_env(
        &[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--data",
            "hub:owner/none",
        ],
        &home,
        &env,
    );
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("dataset repository owner/none@main not found"),
        "{err}"
    );
}
