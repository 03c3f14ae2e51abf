//! Typed errors of the data crate.

use std::path::PathBuf;

/// What can go wrong when reading or preparing data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not in the expected format.
    #[error("{path}: {message}")]
    Format {
        /// The file (or embedded asset name).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A data set could not be found.
    #[error("{0}")]
    NotFound(String),
    /// A data spec could not be parsed.
    #[error("unknown data spec `{spec}`; expected one of: {expected}")]
    UnknownSpec {
        /// The spec given.
        spec: String,
        /// The accepted forms.
        expected: String,
    },
    /// Data sets or options that do not fit together.
    #[error("{0}")]
    Invalid(String),
    /// A hub data set could not be downloaded.
    #[error(transparent)]
    Hub(Box<multimix_hub::HubError>),
}

/// Result alias of the data crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
