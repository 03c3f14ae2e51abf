//! Typed errors of the recipes crate.

use std::path::PathBuf;

/// What can stop a training run.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Data could not be loaded.
    #[error(transparent)]
    Data(#[from] multimix_data::DataError),
    /// The model could not be built or loaded.
    #[error(transparent)]
    Backbone(#[from] multimix_backbones::BackboneError),
    /// A mixing option is invalid.
    #[error(transparent)]
    Augment(#[from] multimix_augment::AugmentError),
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] multimix_hub::checkpoint::CheckpointError),
    /// The optimizer rejected its configuration or state.
    #[error(transparent)]
    Optim(#[from] crate::optim::OptimError),
    /// Evaluation failed.
    #[error(transparent)]
    Eval(#[from] multimix_eval::EvalError),
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The loss stopped being finite.
    #[error(
        "the loss is {loss} at epoch {epoch}, step {step}: training stopped; the last good checkpoint \
         is kept (lower --lr, or set optim.clip_grad)"
    )]
    NonFiniteLoss {
        /// Epoch (1-based).
        epoch: usize,
        /// Global step (1-based).
        step: usize,
        /// The loss value.
        loss: f32,
    },
}

/// Result alias of the recipes crate.
pub type Result<T, E = RecipeError> = std::result::Result<T, E>;

/// An [`RecipeError::Io`] for `path`.
pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RecipeError {
    let path = path.into();
    move |source| RecipeError::Io { path, source }
}
