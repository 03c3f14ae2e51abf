//! Loading a model from a checkpoint: a run directory or a `.safetensors` file of this project
//! (the model configuration is in the safetensors metadata), or a timm directory
//! (`config.json` + `model.safetensors`, the layout timm pushes to the hub).

use anyhow::{bail, Context, Result};
use candle_core::Device;
use multimix_backbones::{Model, ModelConfig};
use multimix_hub::checkpoint::load_safetensors;
use multimix_hub::config::TimmConfig;
use multimix_recipes::run::MODEL_FILE;
use multimix_recipes::train::META_MODEL_CONFIG;
use std::path::{Path, PathBuf};

/// timm's configuration file beside `model.safetensors`.
pub const TIMM_CONFIG_FILE: &str = "config.json";

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

/// Build the model a checkpoint describes and load its weights, all of them.
pub fn load_model(checkpoint: &Path, device: &Device) -> Result<Model> {
    load_model_at(checkpoint, device, None)
}

/// [`load_model`], with the model built for `img_size`×`img_size` inputs when given (a ViT's
/// position embeddings are resampled as timm does).
///
/// The configuration comes from the weights file's metadata (this project's checkpoints) or,
/// when that has none, from timm's `config.json` beside it.
pub fn load_model_at(checkpoint: &Path, device: &Device, img_size: Option<usize>) -> Result<Model> {
    let file = weights_file(checkpoint)?;
    let ckpt = load_safetensors(&file, device)?;
    let config = match ckpt.metadata.get(META_MODEL_CONFIG) {
        Some(json) => serde_json::from_str::<ModelConfig>(json).with_context(|| {
            format!(
                "{}: invalid model configuration in the metadata",
                file.display()
            )
        })?,
        None => timm_config(&file)?,
    };
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

/// The model configuration of timm's `config.json` beside `weights`.
fn timm_config(weights: &Path) -> Result<ModelConfig> {
    let path = weights
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(TIMM_CONFIG_FILE);
    if !path.is_file() {
        bail!(
            "{} has no `{META_MODEL_CONFIG}` metadata and no timm {TIMM_CONFIG_FILE} beside it: not a multimix or timm checkpoint",
            weights.display()
        );
    }
    let timm = TimmConfig::read(&path)?;
    let json = serde_json::to_value(&timm)?;
    ModelConfig::from_timm_json(&json).with_context(|| format!("{}", path.display()))
}
