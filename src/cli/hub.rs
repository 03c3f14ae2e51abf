//! `multimix hub download` and `multimix hub push`.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use multimix::checkpoint::weights_file;
use multimix_hub::checkpoint::{inspect_safetensors, write_atomic};
use multimix_hub::config::TIMM_CONFIG_FILE;
use multimix_hub::remote::DEFAULT_REVISION;
use multimix_hub::{Hub, HubOptions, ModelCard, RepoId, TimmConfig, UploadFile};
use multimix_recipes::run::{MODEL_FILE, REPORT_JSON};
use multimix_recipes::train::{timm_config, META_MODEL_CONFIG};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The model card's file name.
const README: &str = "README.md";

/// Options of `multimix hub`.
#[derive(Debug, Args)]
pub struct HubArgs {
    #[command(subcommand)]
    command: HubCommand,
}

#[derive(Debug, Subcommand)]
enum HubCommand {
    /// Download a checkpoint (config.json and model.safetensors) or one file into the hub
    /// cache; prints the local directory last.
    Download(DownloadArgs),
    /// Upload a run directory (weights, config, model card, report) to a hub repository,
    /// creating it if needed.
    Push(PushArgs),
}

/// Where the hub is and how to use it; unset options follow the environment.
#[derive(Debug, Args)]
pub struct HubFlags {
    /// Hub base URL (default: HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    endpoint: Option<String>,
    /// Download cache (default: HF_HUB_CACHE, else $HF_HOME/hub, else
    /// ~/.cache/huggingface/hub).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Use the cache only, never the network (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
}

impl HubFlags {
    /// The options: the environment's, with these flags on top.
    pub fn options(&self) -> HubOptions {
        let mut options = HubOptions::from_env();
        if let Some(endpoint) = &self.endpoint {
            options.endpoint = endpoint.clone();
        }
        if let Some(dir) = &self.cache_dir {
            options.cache_dir = dir.clone();
        }
        options.offline |= self.offline;
        options
    }
}

/// Options of `multimix hub download`.
#[derive(Debug, Args)]
struct DownloadArgs {
    /// Repository, `owner/name`.
    repo: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = DEFAULT_REVISION)]
    revision: String,
    /// Download only this file.
    #[arg(long)]
    file: Option<String>,
    #[command(flatten)]
    hub: HubFlags,
}

/// Options of `multimix hub push`.
#[derive(Debug, Args)]
struct PushArgs {
    /// The run directory to upload.
    run_dir: PathBuf,
    /// Repository, `owner/name`.
    repo: String,
    /// Make the repository private (when this push creates it).
    #[arg(long)]
    private: bool,
    /// Commit message.
    #[arg(long, default_value = "Upload multimix run")]
    message: String,
    /// Hub base URL (default: HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    endpoint: Option<String>,
}

/// Run `multimix hub`.
pub fn run(args: HubArgs) -> Result<()> {
    match args.command {
        HubCommand::Download(args) => download(args),
        HubCommand::Push(args) => push(args),
    }
}

/// The snapshot directory holding `file` at `path` (`file` may contain `/`).
fn snapshot_dir(path: &Path, file: &str) -> PathBuf {
    let depth = Path::new(file).components().count();
    path.ancestors()
        .nth(depth)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| path.to_path_buf())
}

fn download(args: DownloadArgs) -> Result<()> {
    let repo = RepoId::parse(&args.repo)?;
    let hub = Hub::new(args.hub.options())?;
    let dir = match &args.file {
        Some(file) => snapshot_dir(&hub.download_file(&repo, &args.revision, file)?, file),
        None => hub.download_checkpoint(&repo, &args.revision)?,
    };
    println!("{}", dir.display());
    Ok(())
}

/// The run's `config.json`: read when present, else written from the weights' metadata.
fn ensure_config(
    run_dir: &Path,
    weights: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<TimmConfig> {
    let path = run_dir.join(TIMM_CONFIG_FILE);
    if path.is_file() {
        return Ok(TimmConfig::read(&path)?);
    }
    let json = metadata.get(META_MODEL_CONFIG).with_context(|| {
        format!(
            "{} has no {TIMM_CONFIG_FILE} and {} no `{META_MODEL_CONFIG}` metadata",
            run_dir.display(),
            weights.display()
        )
    })?;
    let model: multimix_backbones::ModelConfig = serde_json::from_str(json)
        .with_context(|| format!("{}: invalid model configuration", weights.display()))?;
    let config = timm_config(&model);
    config.write(&path)?;
    Ok(config)
}

fn push(args: PushArgs) -> Result<()> {
    let repo = RepoId::parse(&args.repo)?;
    let mut options = HubOptions::from_env();
    if let Some(endpoint) = args.endpoint {
        options.endpoint = endpoint;
    }
    if options.offline {
        bail!(
            "HF_HUB_OFFLINE is set: unset it to push to {}",
            options.endpoint
        );
    }
    if !args.run_dir.is_dir() {
        bail!("run directory {} does not exist", args.run_dir.display());
    }
    let weights = weights_file(&args.run_dir)?;
    // Refuse a damaged checkpoint before anything is uploaded.
    let (metadata, _) = inspect_safetensors(&weights)?;
    let config = ensure_config(&args.run_dir, &weights, &metadata)?;
    let report_path = args.run_dir.join(REPORT_JSON);
    let report: Option<serde_json::Value> = if report_path.is_file() {
        let bytes = std::fs::read(&report_path)
            .with_context(|| format!("reading {}", report_path.display()))?;
        Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not JSON", report_path.display()))?,
        )
    } else {
        eprintln!(
            "note: {} has no {REPORT_JSON} (run `multimix eval`); the card will list no metrics",
            args.run_dir.display()
        );
        None
    };
    let readme = args.run_dir.join(README);
    if !readme.exists() {
        let card = ModelCard::for_run(&repo, &config, report.as_ref()).render();
        write_atomic(&readme, card.as_bytes())
            .with_context(|| format!("writing {}", readme.display()))?;
    }
    let mut files: Vec<UploadFile> = [MODEL_FILE, TIMM_CONFIG_FILE, README]
        .into_iter()
        .map(|name| UploadFile {
            path_in_repo: name.to_string(),
            local: args.run_dir.join(name),
        })
        .collect();
    if report.is_some() {
        files.push(UploadFile {
            path_in_repo: REPORT_JSON.to_string(),
            local: report_path,
        });
    }
    let hub = Hub::new(options)?;
    let commit = hub.push(&repo, &files, args.private, &args.message)?;
    for f in &files {
        eprintln!("uploaded {}", f.path_in_repo);
    }
    if let Some(commit) = commit {
        eprintln!("commit {commit}");
    }
    println!("{}/{}", hub.options().endpoint.trim_end_matches('/'), repo);
    Ok(())
}
