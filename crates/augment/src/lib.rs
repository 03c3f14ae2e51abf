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

/// Defines `$name`, whose body is compiled twice: portable, and for AVX2 (+FMA) when the running
/// CPU supports it (checked at run time, the result is cached by std).
///
/// The body must only call `#[inline(always)]` helpers so they are compiled for AVX2 too.
/// Neither version uses fused multiply-add, so both give bit-identical results.
macro_rules! simd_kernel {
    ($(#[doc = $doc:expr])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[doc = $doc])*
        pub(super) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the running CPU supports AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}

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
