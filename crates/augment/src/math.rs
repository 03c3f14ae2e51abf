//! Elementwise math shared by the samplers and the fused losses.

/// `ln x` for finite, normal `x > 0` (Cephes `logf`: `x = 2^e·m`, `m ∈ [√½, √2)`, degree-8
/// polynomial; ≈1 ulp). Branch-free, so it vectorizes.
#[inline(always)]
pub(crate) fn ln_positive(x: f32) -> f32 {
    let bits = x.to_bits();
    // x = 2^e · m with m ∈ [0.5, 1).
    let e = ((bits >> 23) as i32 - 126) as f32;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let small = m < std::f32::consts::FRAC_1_SQRT_2;
    let e = if small { e - 1.0 } else { e };
    let m = if small { m + m - 1.0 } else { m - 1.0 };
    let z = m * m;
    let p = 7.037_683_6e-2;
    let p = p * m - 1.151_461e-1;
    let p = p * m + 1.167_699_9e-1;
    let p = p * m - 1.242_014_1e-1;
    let p = p * m + 1.424_932_3e-1;
    let p = p * m - 1.666_805_8e-1;
    let p = p * m + 2.000_071_4e-1;
    let p = p * m - 2.499_999_4e-1;
    let p = p * m + 3.333_333e-1;
    let y = p * m * z - 2.121_944_4e-4 * e - 0.5 * z;
    m + y + 0.693_359_4 * e
}

#[cfg(test)]
mod tests {
    use super::ln_positive;

    /// Relative error of `ln_positive` against std's `f64::ln` over [2⁻²⁴, 10⁴] (the uniforms of
    /// the Exp(1) sampler and the sums of exponentials of the losses).
    #[test]
    fn ln_matches_std() {
        let mut worst = 0.0f64;
        let below_one = (1..=1u32 << 24)
            .step_by(7)
            .map(|k| k as f32 / (1u32 << 24) as f32);
        let above_one = (0..=1_000_000).map(|i| 1.0 + i as f32 * 1e-2);
        for x in below_one.chain(above_one) {
            let want = f64::from(x).ln();
            let got = f64::from(ln_positive(x));
            worst = worst.max((got - want).abs() / want.abs().max(1e-30));
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(ln_positive(1.0), 0.0);
    }
}
