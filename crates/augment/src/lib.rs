//! Mixing ops of MultiMix, dense MultiMix and the mixup baselines, with their targets and losses.
//!
//! Everything here works on plain tensors (inputs, embeddings, logits, targets) and knows no
//! model. All randomness is drawn on the host from a caller-provided, seeded `rand::Rng`.

pub mod dense;
pub mod error;
pub mod loss;
pub mod multimix;
pub mod sample;
pub mod targets;

pub use dense::{AttnNorm, AttnQuery};
pub use error::AugmentError;
pub use multimix::MultiMix;
