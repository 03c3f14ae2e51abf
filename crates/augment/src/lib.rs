//! Mixing ops of MultiMix, dense MultiMix and the mixup baselines, with their targets and losses.
//!
//! Everything here works on plain tensors (inputs, embeddings, logits, targets) and knows no
//! model. All randomness is drawn on the host from a caller-provided, seeded `rand::Rng`.

/// `FromStr` for a kebab-case option enum, with an error listing the accepted names.
macro_rules! parse_kebab {
    ($ty:ty, $what:literal, $($s:literal => $v:expr),+) => {
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s {
                    $($s => Ok($v),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " `{}`; expected one of: {}"),
                        other,
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}

// `simd_kernel!` for every module (the kernels' portable and AVX2 builds).
#[macro_use]
extern crate multimix_simd;

pub mod dense;
pub mod distill;
pub mod error;
pub mod loss;
pub mod manifold;
mod math;
pub mod mixup;
pub mod multimix;
pub mod sample;
pub mod targets;

pub use dense::{AttnNorm, AttnQuery};
pub use error::AugmentError;
pub use mixup::{BBox, ElemMix, MixMode, MixPlan, Mixup, Pairing};
pub use multimix::MultiMix;
