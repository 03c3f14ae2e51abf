//! Robustness, OOD detection, calibration and embedding geometry for multimix.
//!
//! The conventions are those of `METHOD.md` §5 (torchattacks, OpenOOD, scikit-learn,
//! torchmetrics); every report states them.

#![warn(missing_docs)]

pub mod attacks;
pub mod calibration;
pub mod detection;
pub mod detectors;
pub mod geometry;
mod linalg;
pub mod ood_metrics;
pub mod plot;
pub mod report;
pub mod suite;

pub use ood_metrics::MetricError;
pub use report::Report;
pub use suite::{evaluate, Attack, EvalError, EvalOptions};
