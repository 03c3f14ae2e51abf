//! multimix: MultiMix, dense MultiMix and the mixup baselines in embedding space, on candle.
//!
//! This crate re-exports the workspace's crates and holds the `multimix` command-line program:
//!
//! - [`augment`]: the mixing ops, their targets and losses;
//! - [`backbones`]: ViT (and the other backbones) with dense outputs and timm names;
//! - [`data`]: data sets and deterministic batch loading;
//! - [`recipes`]: optimizers, schedules and the training loop;
//! - [`eval`]: calibration, attacks, OOD detection and reports;
//! - [`hub`]: the checkpoint format;
//! - [`runtime`]: the program's process settings (allocator, candle threads).

pub use multimix_augment as augment;
pub use multimix_backbones as backbones;
pub use multimix_data as data;
pub use multimix_eval as eval;
pub use multimix_hub as hub;
pub use multimix_recipes as recipes;

pub mod checkpoint;
pub mod compare;
pub mod evaluation;
pub mod runtime;
