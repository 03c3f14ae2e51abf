//! Loading a model from a checkpoint, given as any of:
//!
//! - a run directory of this project, or its `.safetensors` file (the model configuration is in
//!   the safetensors metadata);
//! - a timm repository directory: `config.json` (timm's layout) and `model.safetensors`;
//! - `hf-hub:owner/name[@revision]` (as timm writes it): downloaded through the hub cache;
//! - a zoo name (`multimix zoo list`): downloaded, and checked against the card's sha256.
//!
//! Hub references follow `HF_ENDPOINT`, `HF_HOME`, `HF_TOKEN` and `HF_HUB_OFFLINE`.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use multimix_backbones::{Model, ModelConfig};
use multimix_hub::checkpoint::load_safetensors;
use multimix_hub::config::TIMM_CONFIG_FILE;
use multimix_hub::remote::DEFAULT_REVISION;
use multimix_hub::{Hub, HubOptions, RepoId, TimmConfig, Zoo};
use multimix_recipes::run::MODEL_FILE;
use multimix_recipes::train::META_MODEL_CONFIG;
use std::path::{Path, PathBuf};

/// The prefix of hub references (`hf-hub:owner/name[@revision]`), as timm writes them.
pub const HF_HUB_PREFIX: &str = "hf-hub:";

/// Where a checkpoint comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointSource {
    /// A local file or directory.
    Local(PathBuf),
    /// A hub repository at a revision.
    Hub {
        /// The repository.
        repo: RepoId,
        /// Branch, tag or commit.
        revision: String,
    },
    /// A zoo entry by name.
    Zoo(String),
}

impl CheckpointSource {
    /// Read a checkpoint argument: `hf-hub:` references first, then existing paths, then zoo
    /// names.
    pub fn parse(spec: &Path) -> Result<Self> {
        let text = spec.to_string_lossy();
        if let Some(reference) = text.strip_prefix(HF_HUB_PREFIX) {
            let (id, revision) = match reference.split_once('@') {
                Some((id, revision)) => (id, revision.to_string()),
                None => (reference, DEFAULT_REVISION.to_string()),
            };
            let repo = RepoId::parse(id).with_context(|| format!("checkpoint `{text}`"))?;
            return Ok(Self::Hub { repo, revision });
        }
        if spec.exists() {
            return Ok(Self::Local(spec.to_path_buf()));
        }
        let zoo = Zoo::builtin()?;
        if zoo.get(&text).is_some() {
            return Ok(Self::Zoo(text.into_owned()));
        }
        bail!(
            "checkpoint `{text}` is neither a file or directory, nor `hf-hub:owner/name[@revision]`, \
             nor a zoo name (multimix zoo list)"
        )
    }

    /// The local directory or weights file of the checkpoint, downloading it first when it is
    /// remote (a zoo entry gives its weights file, whose `config.json` is beside it).
    pub fn fetch(&self, options: HubOptions) -> Result<PathBuf> {
        match self {
            Self::Local(path) => Ok(path.clone()),
            Self::Hub { repo, revision } => {
                Ok(Hub::new(options)?.download_checkpoint(repo, revision)?)
            }
            Self::Zoo(name) => {
                let zoo = Zoo::builtin()?;
                let entry = zoo.entry(name)?;
                Ok(entry.download(&Hub::new(options)?)?.join(&entry.file))
            }
        }
    }
}

/// The weights file of a checkpoint given as a run directory, a timm directory or a file.
pub fn weights_file(checkpoint: &Path) -> Result<PathBuf> {
    if checkpoint.is_dir() {
        let file = checkpoint.join(MODEL_FILE);
        if !file.is_file() {
            bail!(
                "{} holds no {MODEL_FILE}: is it a run directory of a finished epoch or a timm checkpoint directory?",
                checkpoint.display()
            );
        }
        Ok(file)
    } else if checkpoint.is_file() {
        Ok(checkpoint.to_path_buf())
    } else {
        bail!("checkpoint {} does not exist", checkpoint.display())
    }
}

/// The model configuration a timm `config.json` describes: the architecture with its
/// `model_args`, the head size, the input channels and size, and the normalization
/// ([`ModelConfig::from_timm_json`]).
pub fn model_config_from_timm(config: &TimmConfig) -> Result<ModelConfig> {
    Ok(ModelConfig::from_timm_json(&serde_json::to_value(config)?)?)
}

/// The model configuration of a weights file: from its metadata (this project's files), else
/// from the timm `config.json` beside it.
fn model_config(
    file: &Path,
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<ModelConfig> {
    if let Some(json) = metadata.get(META_MODEL_CONFIG) {
        return serde_json::from_str(json).with_context(|| {
            format!(
                "{}: invalid model configuration in the metadata",
                file.display()
            )
        });
    }
    let config_path = file.with_file_name(TIMM_CONFIG_FILE);
    if !config_path.is_file() {
        bail!(
            "{} has no `{META_MODEL_CONFIG}` metadata and no {TIMM_CONFIG_FILE} beside it: \
             cannot tell which model it holds",
            file.display()
        );
    }
    let config = TimmConfig::read(&config_path)?;
    model_config_from_timm(&config).with_context(|| format!("{}", config_path.display()))
}

/// Build the model a checkpoint describes and load its weights, all of them. The checkpoint is
/// any of the forms in the module documentation.
pub fn load_model(checkpoint: &Path, device: &Device) -> Result<Model> {
    load_model_at(checkpoint, device, None)
}

/// [`load_model`], with the model built for `img_size`×`img_size` inputs when given (a ViT's
/// position embeddings are resampled as timm does).
pub fn load_model_at(checkpoint: &Path, device: &Device, img_size: Option<usize>) -> Result<Model> {
    let local = CheckpointSource::parse(checkpoint)?.fetch(HubOptions::from_env())?;
    let file = weights_file(&local)?;
    let ckpt = load_safetensors(&file, device)?;
    let config = model_config(&file, &ckpt.metadata)?;
    let config = match img_size {
        Some(n) => config
            .with_img_size(n)
            .with_context(|| format!("--img-size {n}"))?,
        None => config,
    };
    let model = Model::new(&config, device, 0)?;
    model
        .load_weights(&ckpt.tensors, true)
        .with_context(|| format!("loading {}", file.display()))?;
    Ok(model)
}
