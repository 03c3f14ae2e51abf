//! Loading a trained model from a run directory or a `.safetensors` file of this project.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use multimix_backbones::{Model, ModelConfig};
use multimix_hub::checkpoint::load_safetensors;
use multimix_recipes::run::MODEL_FILE;
use multimix_recipes::train::META_MODEL_CONFIG;
use std::path::{Path, PathBuf};

/// The weights file of a checkpoint given as a run directory or a file.
pub fn weights_file(checkpoint: &Path) -> Result<PathBuf> {
    if checkpoint.is_dir() {
        let file = checkpoint.join(MODEL_FILE);
        if !file.is_file() {
            bail!(
                "{} holds no {MODEL_FILE}: is it a run directory of a finished epoch?",
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

/// Build the model a checkpoint describes (its configuration is in the safetensors metadata)
/// and load its weights, all of them.
pub fn load_model(checkpoint: &Path, device: &Device) -> Result<Model> {
    let file = weights_file(checkpoint)?;
    let ckpt = load_safetensors(&file, device)?;
    let config_json = ckpt.metadata.get(META_MODEL_CONFIG).with_context(|| {
        format!(
            "{} has no `{META_MODEL_CONFIG}` metadata: not a checkpoint written by multimix",
            file.display()
        )
    })?;
    let config: ModelConfig = serde_json::from_str(config_json).with_context(|| {
        format!(
            "{}: invalid model configuration in the metadata",
            file.display()
        )
    })?;
    let model = Model::new(&config, device, 0)?;
    model
        .load_weights(&ckpt.tensors, true)
        .with_context(|| format!("loading {}", file.display()))?;
    Ok(model)
}
