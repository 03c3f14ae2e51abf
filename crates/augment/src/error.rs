//! Typed errors of the augment crate.

/// What can go wrong when configuring or applying a mixing op.
#[derive(Debug, thiserror::Error)]
pub enum AugmentError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A parameter is out of its range.
    #[error("{name} = {value} is out of range: {expected}")]
    OutOfRange {
        /// The option's name as the user writes it (e.g. `mix-alpha`).
        name: &'static str,
        /// The value given.
        value: String,
        /// The valid range.
        expected: String,
    },
    /// Tensor shapes do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
}

/// Result alias of the augment crate.
pub type Result<T, E = AugmentError> = std::result::Result<T, E>;

/// An [`AugmentError::OutOfRange`] for option `name`.
pub(crate) fn out_of_range(
    name: &'static str,
    value: impl ToString,
    expected: impl ToString,
) -> AugmentError {
    AugmentError::OutOfRange {
        name,
        value: value.to_string(),
        expected: expected.to_string(),
    }
}
