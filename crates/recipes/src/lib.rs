//! Optimizers, schedules, EMA teacher and training loops for multimix.
//!
//! A run is described by one [`config::TrainConfig`] (the `config.toml` of its run
//! directory); [`train::train`] trains it, checkpointing every epoch, and resumes exactly.

pub mod bench;
pub mod config;
pub mod detection;
pub mod ema;
pub mod error;
pub mod mixing;
pub mod optim;
pub mod progress;
pub mod run;
pub mod schedule;
pub mod train;

pub use config::TrainConfig;
pub use error::RecipeError;
