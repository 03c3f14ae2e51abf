//! Typed errors of the backbones crate.

/// What can go wrong when building, loading or running a backbone.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The architecture name is not in the registry.
    #[error("unknown architecture `{name}`; known architectures: {known}")]
    UnknownArchitecture {
        /// The name asked for.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },
    /// A model argument is invalid or not supported.
    #[error("invalid model configuration for `{architecture}`: {message}")]
    InvalidConfig {
        /// The architecture being configured.
        architecture: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Weights do not match the model: names missing, unexpected or of the wrong shape.
    #[error("weights do not match the model: {0}")]
    WeightMismatch(String),
    /// A parameter name was registered twice while building a model.
    #[error("parameter `{0}` registered twice")]
    DuplicateParam(String),
}

/// Result alias of the backbones crate.
pub type Result<T, E = BackboneError> = std::result::Result<T, E>;
