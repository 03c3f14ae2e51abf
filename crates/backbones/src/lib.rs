//! ResNet, PreAct-ResNet and ViT with dense outputs and timm tensor names, on candle.
//!
//! Every model implements [`Backbone`]: timm's `forward_features` layout, dense per-position
//! embeddings for dense MultiMix, pooled embeddings, the affine head, and mix points for
//! manifold mixup. [`Model`] wraps a backbone with its input normalization.

// `simd_kernel!` for every module (the kernels' portable and AVX2 builds).
#[macro_use]
extern crate multimix_simd;

pub mod adapt;
pub mod error;
pub mod layers;
pub mod model;
pub mod ops;
pub mod params;
pub mod pos_embed;
pub mod preact;
pub mod resnet;
pub mod vit;

pub use error::BackboneError;
pub use layers::Ctx;
pub use model::{architectures, ArchConfig, Backbone, Model, ModelConfig, RawModelConfig};
pub use params::{Init, LoadReport, ParamStore};
