//! Data sets, transforms and deterministic batch loading for multimix.
//!
//! Readers: IDX (MNIST, Fashion-MNIST), the CIFAR-10/100 binary release, image folders (PNG,
//! JPEG), hub data sets stored as parquet (downloaded through `multimix_hub`). Images are decoded once and kept as `u8`; batches are converted to `f32` in [0, 1] on a
//! background thread. The embedded default data (`fashion-mnist-mini`, `mnist-mini`) needs no
//! download; see `assets/README.md` for their sources and licenses.

pub mod cifar;
pub mod dataset;
pub mod detection;
pub mod error;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod parquet;
pub mod spec;
pub mod transform;

pub use dataset::Dataset;
pub use error::DataError;
pub use loader::{Augment, Batch, Batches, LoaderConfig};
pub use spec::{conform, DataSpec, Splits};
