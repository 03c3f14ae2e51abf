//! Download and upload through hf-hub against the hub of `support/mock_hub.rs` on 127.0.0.1.

#[path = "support/mock_hub.rs"]
mod mock_hub;

use std::path::{Path, PathBuf};

use mock_hub::MockHub;
use multimix_hub::remote::CHECKPOINT_FILES;
use multimix_hub::{Hub, HubError, HubOptions, RepoId, Token, UploadFile, ZooEntry};

const REPO: &str = "owner/tiny";
const TOKEN: &str = "hf_test_secret";

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

fn fixture(name: &str) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vit_tiny");
    std::fs::read(dir.join(name)).unwrap()
}

/// A hub holding the timm-exported tiny ViT fixture as `owner/tiny`.
fn hub_with_checkpoint() -> MockHub {
    let hub = MockHub::start();
    let (config, weights) = (fixture("config.json"), fixture("model.safetensors"));
    hub.put(
        REPO,
        &[
            ("config.json", &config),
            ("model.safetensors", &weights),
            ("README.md", b"# tiny"),
        ],
    );
    hub
}

fn repo() -> RepoId {
    RepoId::parse(REPO).unwrap()
}

/// Every file under `dir`, recursively, relative to it.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn resolve_gets(hub: &MockHub) -> usize {
    hub.count(&format!("GET /{REPO}/resolve/"))
}

#[test]
fn checkpoint_download_then_cache_then_offline() {
    let mut hub = hub_with_checkpoint();
    let cache = tempfile::tempdir().unwrap();
    let client = Hub::new(options(&hub, cache.path())).unwrap();

    let dir = client.download_checkpoint(&repo(), "main").unwrap();
    for file in CHECKPOINT_FILES {
        assert_eq!(
            std::fs::read(dir.join(file)).unwrap(),
            fixture(file),
            "{file}"
        );
    }
    assert!(
        !dir.join("README.md").exists(),
        "only the checkpoint files are fetched"
    );
    assert_eq!(resolve_gets(&hub), 2);
    assert!(
        hub.authorizations()
            .iter()
            .all(|a| a == &format!("Bearer {TOKEN}")),
        "the token is sent as a bearer token"
    );

    // Again: served from the cache, nothing transferred.
    let again = client.download_checkpoint(&repo(), "main").unwrap();
    assert_eq!(again, dir);
    assert_eq!(resolve_gets(&hub), 2, "{:?}", hub.log());

    // A single file by revision: a conditional HEAD answered 304, no GET.
    let config = client
        .download_file(&repo(), "main", "config.json")
        .unwrap();
    assert_eq!(std::fs::read(&config).unwrap(), fixture("config.json"));
    assert_eq!(resolve_gets(&hub), 2, "{:?}", hub.log());

    // The server goes away: offline mode serves the cache, and says what it lacks.
    hub.stop();
    let offline = Hub::new(HubOptions {
        offline: true,
        ..options(&hub, cache.path())
    })
    .unwrap();
    assert_eq!(offline.download_checkpoint(&repo(), "main").unwrap(), dir);
    assert_eq!(
        offline
            .download_file(&repo(), "main", "config.json")
            .unwrap(),
        config
    );
    let err = offline
        .download_file(&repo(), "main", "README.md")
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::NotCached { .. }), "{msg}");
    assert!(
        msg.contains("README.md") && msg.contains(REPO) && msg.contains("offline"),
        "{msg}"
    );
    let other = RepoId::parse("owner/never").unwrap();
    let msg = offline
        .download_checkpoint(&other, "main")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("owner/never") && msg.contains("offline"),
        "{msg}"
    );

    // Not offline but unreachable: hf-hub falls back to the cache too.
    assert_eq!(
        client
            .download_file(&repo(), "main", "config.json")
            .unwrap(),
        config
    );
}

#[test]
fn missing_file_and_repository_are_named() {
    let hub = hub_with_checkpoint();
    let cache = tempfile::tempdir().unwrap();
    let client = Hub::new(options(&hub, cache.path())).unwrap();
    let err = client
        .download_file(&repo(), "main", "missing.bin")
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::FileNotFound { .. }), "{msg}");
    assert!(
        msg.contains(REPO) && msg.contains("missing.bin") && msg.contains("404"),
        "{msg}"
    );

    let other = RepoId::parse("owner/absent").unwrap();
    let msg = client
        .download_checkpoint(&other, "main")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("owner/absent") && msg.contains("not found"),
        "{msg}"
    );

    // A repository without weights: the checkpoint download names the missing file.
    hub.put("owner/noweights", &[("config.json", b"{}")]);
    let bare = RepoId::parse("owner/noweights").unwrap();
    let msg = client
        .download_checkpoint(&bare, "main")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("owner/noweights") && msg.contains("model.safetensors"),
        "{msg}"
    );
    assert!(!msg.contains(TOKEN));
}

/// The snapshot entries and blobs of the repository in the cache.
fn cached_files(cache: &Path) -> Vec<String> {
    tree(&cache.join(repo().cache_folder()))
        .into_iter()
        .filter(|p| p.starts_with("blobs") || p.starts_with("snapshots"))
        .collect()
}

#[test]
fn cut_or_failed_transfers_leave_the_cache_clean() {
    let hub = hub_with_checkpoint();
    let cache = tempfile::tempdir().unwrap();
    let client = Hub::new(options(&hub, cache.path())).unwrap();
    let weights_blob = format!("blobs/{}", mock_hub::sha256(&fixture("model.safetensors")));

    // A body cut midway fails in hf-hub; a 500 page hf-hub takes for the file is caught here.
    for (inject, corrupt) in [
        (MockHub::cut as fn(&MockHub, &str), false),
        (MockHub::fail, true),
    ] {
        inject(&hub, "model.safetensors");
        let err = client.download_checkpoint(&repo(), "main").unwrap_err();
        let msg = err.to_string();
        assert_eq!(matches!(err, HubError::Corrupt { .. }), corrupt, "{msg}");
        assert_eq!(
            matches!(err, HubError::Interrupted { .. }),
            !corrupt,
            "{msg}"
        );
        assert!(
            msg.contains(REPO) && msg.contains("model.safetensors"),
            "{msg}"
        );
        let files = cached_files(cache.path());
        assert!(
            !files
                .iter()
                .any(|f| f.contains("model.safetensors") || f.ends_with(".incomplete")),
            "{files:?}"
        );
        assert!(!files.contains(&weights_blob), "{files:?}");
        hub.heal();
    }

    // The same single-file call through the other code path of hf-hub.
    hub.fail("model.safetensors");
    let err = client
        .download_file(&repo(), "main", "model.safetensors")
        .unwrap_err();
    assert!(matches!(err, HubError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");
    assert!(!cached_files(cache.path()).contains(&weights_blob));
    // A file that is not in LFS (no sha256 ETag) is checked by its size.
    hub.fail("README.md");
    let err = client
        .download_file(&repo(), "main", "README.md")
        .unwrap_err();
    assert!(matches!(err, HubError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("14 bytes received, the hub announced 6"),
        "{err}"
    );
    assert!(!cached_files(cache.path())
        .iter()
        .any(|f| f.contains("README.md")));
    hub.heal();

    let dir = client.download_checkpoint(&repo(), "main").unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        fixture("model.safetensors")
    );
}

#[test]
fn push_then_download_gives_the_same_bytes() {
    let hub = MockHub::start();
    hub.require_token(TOKEN);
    let run = tempfile::tempdir().unwrap();
    let names = [
        "model.safetensors",
        "config.json",
        "README.md",
        "report.json",
    ];
    let files: Vec<UploadFile> = names
        .iter()
        .map(|name| {
            let local = run.path().join(name);
            let bytes = match *name {
                "model.safetensors" | "config.json" => fixture(name),
                other => format!("contents of {other}\n").into_bytes(),
            };
            std::fs::write(&local, bytes).unwrap();
            UploadFile {
                path_in_repo: name.to_string(),
                local,
            }
        })
        .collect();
    let cache = tempfile::tempdir().unwrap();
    let target = RepoId::parse("me/pushed").unwrap();

    let anonymous = Hub::new(HubOptions {
        token: None,
        ..options(&hub, cache.path())
    })
    .unwrap();
    let err = anonymous
        .push(&target, &files, false, "upload")
        .unwrap_err();
    assert!(matches!(err, HubError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("HF_TOKEN"), "{err}");

    let client = Hub::new(options(&hub, cache.path())).unwrap();
    let commit = client.push(&target, &files, true, "upload").unwrap();
    assert_eq!(hub.is_private("me/pushed"), Some(true));
    assert_eq!(commit.as_deref().map(str::len), Some(40));
    // Pushing again to the existing repository adds a commit.
    let second = client.push(&target, &files[1..2], true, "again").unwrap();
    assert_ne!(second, commit);

    let dir = client.download_checkpoint(&target, "main").unwrap();
    for f in &files {
        let got = if f.path_in_repo == "config.json" || f.path_in_repo == "model.safetensors" {
            std::fs::read(dir.join(&f.path_in_repo)).unwrap()
        } else {
            let path: PathBuf = client
                .download_file(&target, "main", &f.path_in_repo)
                .unwrap();
            std::fs::read(path).unwrap()
        };
        assert_eq!(got, std::fs::read(&f.local).unwrap(), "{}", f.path_in_repo);
    }
}

#[test]
fn zoo_download_checks_the_card_sha256() {
    let hub = hub_with_checkpoint();
    let cache = tempfile::tempdir().unwrap();
    let client = Hub::new(options(&hub, cache.path())).unwrap();
    let card = |sha: &str| {
        format!(
            "name = \"tiny\"\narchitecture = \"vit_tiny_patch16_224\"\nsource = \"multimix\"\n\
             repo = \"{REPO}\"\nfile = \"model.safetensors\"\nsha256 = \"{sha}\"\n\
             dataset = \"none\"\nlicense = \"apache-2.0\"\n"
        )
    };
    let right = mock_hub::sha256(&fixture("model.safetensors"));
    let entry = ZooEntry::parse(&card(&right.to_uppercase()), "tiny.toml").unwrap();
    let dir = entry.download(&client).unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        fixture("model.safetensors")
    );

    let wrong = "ab".repeat(32);
    let entry = ZooEntry::parse(&card(&wrong), "tiny.toml").unwrap();
    let err = entry.download(&client).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::ChecksumMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&wrong) && msg.contains(&right) && msg.contains(REPO),
        "{msg}"
    );
}
