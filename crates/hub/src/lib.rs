//! Checkpoint format, Hugging Face hub download and upload, and the multimix model zoo.

pub mod card;
pub mod checkpoint;
pub mod config;
pub mod progress;
pub mod remote;
pub mod zoo;

pub use card::ModelCard;
pub use checkpoint::{
    inspect_safetensors, load_safetensors, save_safetensors, write_atomic, Checkpoint,
    CheckpointError, ForeignFormat, TensorInfo,
};
pub use config::{LabelNames, PretrainedCfg, TimmConfig};
pub use remote::{Hub, HubError, HubOptions, RepoId, Token, UploadFile};
pub use zoo::{Zoo, ZooEntry, ZooError};
