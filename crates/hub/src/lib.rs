//! Checkpoint format, Hugging Face hub download and upload, and the multimix model zoo.

pub mod checkpoint;
pub mod config;

pub use checkpoint::{
    inspect_safetensors, load_safetensors, save_safetensors, write_atomic, Checkpoint,
    CheckpointError, ForeignFormat, TensorInfo,
};
pub use config::{LabelNames, PretrainedCfg, TimmConfig};
