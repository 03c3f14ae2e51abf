//! The kernel macro shared by `multimix-augment` and `multimix-backbones`, which may not depend
//! on each other: [`simd_kernel!`] compiles a function twice, portable and for AVX2 (+FMA), and
//! picks the version the running CPU supports.

/// Defines `$name` (visible to the parent of the invoking module), whose body is compiled
/// twice: portable, and for AVX2 (+FMA) when the running CPU supports it (checked at run time,
/// the result is cached by std).
///
/// The body must only call `#[inline(always)]` helpers so they are compiled for AVX2 too.
/// Neither version uses fused multiply-add, so both give bit-identical results.
///
/// ```
/// mod kernels {
///     multimix_simd::simd_kernel! {
///         /// `Σ x`.
///         fn total(x: &[f32]) -> f32 {
///             x.iter().sum()
///         }
///     }
/// }
/// assert_eq!(kernels::total(&[1.0, 2.0, 3.5]), 6.5);
/// ```
#[macro_export]
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
                if ::std::is_x86_feature_detected!("avx2")
                    && ::std::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the running CPU supports AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}
