//! Scalar math written to vectorize: fast `exp`, A&S `erf`, and lane-split reductions.
//!
//! Everything is `#[inline(always)]` so it is compiled into the callers' AVX2 versions.

/// Independent accumulators of the reductions: enough for the compiler to vectorize the loop.
const LANES: usize = 8;

/// `e^x` for `x ≤ 0` (also exact enough up to `x ≈ 88`); 0 below −87.3, where `e^x` is subnormal.
///
/// Cephes `expf`: `x = n·ln2 + r`, `|r| ≤ ln2/2`, degree-7 polynomial for `e^r`, `2^n` built in
/// the exponent bits (≈1 ulp). Branch-free; NaN propagates.
#[inline(always)]
pub(super) fn exp_nonpositive(x: f32) -> f32 {
    // Adding 1.5·2^23 rounds to an integer kept in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4; // 355/512: n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MIN_ARG: f32 = -87.3;
    let xc = if x < MIN_ARG { MIN_ARG } else { x };
    let shifted = xc * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // The low 9 bits of `shifted` hold n (mod 512); n + 127 in the exponent field is 2^n.
    let two_n = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    let y = er * two_n;
    if x < MIN_ARG {
        0.0
    } else {
        y
    }
}

/// `(1 + erf(x/√2), e^{−x²/2})`: the GELU cdf term and the Gaussian kernel its derivative needs.
///
/// Abramowitz–Stegun 7.1.26, `erfc(z) ≈ t·(a1 + t·(a2 + …)) · e^{−z²}`, `t = 1/(1 + p·z)`,
/// |error| < 1.5e-7; `1 + erf(−z) = erfc(z)` is used directly for `x < 0` (no cancellation).
#[inline(always)]
pub(super) fn gelu_cdf_and_kernel(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
    let kernel = exp_nonpositive(-0.5 * x * x);
    let erfc = poly * kernel;
    let cdf = if x < 0.0 { erfc } else { 2.0 - erfc };
    (cdf, kernel)
}

/// Σ x in f64.
#[inline(always)]
pub(super) fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f64::from(v);
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|&v| f64::from(v)).sum::<f64>()
}

/// Σ (x − c)² in f64 for `c = hi + lo` (the deviation is formed in f32 as `(x − hi) − lo`).
#[inline(always)]
pub(super) fn sum_sq_dev_f64(x: &[f32], hi: f32, lo: f32) -> f64 {
    let sq = |v: f32| {
        let d = f64::from((v - hi) - lo);
        d * d
    };
    let mut acc = [0.0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += sq(v);
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|&v| sq(v)).sum::<f64>()
}

/// `(Σ u, Σ v)` in f64 over `(u, v) = f(a_i, b_i, c_i)`.
#[inline(always)]
pub(super) fn sum2_f64(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> (f32, f32),
) -> (f64, f64) {
    let mut su = [0.0f64; LANES];
    let mut sv = [0.0f64; LANES];
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let (mut tu, mut tv) = (0.0f64, 0.0f64);
    for ((&x, &y), &z) in ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder())
    {
        let (u, v) = f(x, y, z);
        tu += f64::from(u);
        tv += f64::from(v);
    }
    for ((xa, xb), xc) in ca.zip(cb).zip(cc) {
        for i in 0..LANES {
            let (u, v) = f(xa[i], xb[i], xc[i]);
            su[i] += f64::from(u);
            sv[i] += f64::from(v);
        }
    }
    (su.iter().sum::<f64>() + tu, sv.iter().sum::<f64>() + tv)
}

/// Σ a·b in f64.
#[inline(always)]
pub(super) fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for ((acc, &x), &y) in acc.iter_mut().zip(xa).zip(xb) {
            *acc += f64::from(x) * f64::from(y);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Σ x in f32 over independent lanes (for positive terms, where f32 is accurate).
#[inline(always)]
pub(super) fn sum_f32(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// max x (−∞ for an empty slice; NaNs are skipped, the callers' `exp` propagates them).
#[inline(always)]
pub(super) fn max_f32(x: &[f32]) -> f32 {
    let max = |a: f32, b: f32| if a > b { a } else { b };
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = max(*a, v);
        }
    }
    acc.iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &v| max(m, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error of `exp_nonpositive` against std's `f64::exp` over [-87, 0].
    #[test]
    fn exp_matches_std() {
        let mut worst = 0.0f64;
        for i in 0..=87_000 {
            let x = -(i as f32) * 1e-3;
            let want = f64::from(x).exp();
            let got = f64::from(exp_nonpositive(x));
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-100.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    /// The lane-split reductions equal plain sequential f64 sums, tails included.
    #[test]
    fn reductions_match_sequential() {
        let x: Vec<f32> = (0..29).map(|i| ((i * 7919) % 23) as f32 - 11.5).collect();
        let y: Vec<f32> = (0..29)
            .map(|i| ((i * 104_729) % 17) as f32 * 0.25)
            .collect();
        let seq: f64 = x.iter().map(|&v| f64::from(v)).sum();
        assert!((sum_f64(&x) - seq).abs() < 1e-12);
        assert!(
            (f64::from(sum_f32(&y)) - y.iter().map(|&v| f64::from(v)).sum::<f64>()).abs() < 1e-4
        );
        let dot: f64 = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        assert!((dot_f64(&x, &y) - dot).abs() < 1e-12);
        let sq: f64 = x.iter().map(|&v| f64::from(v - 1.5).powi(2)).sum();
        assert!((sum_sq_dev_f64(&x, 1.5, 0.0) - sq).abs() < 1e-9);
        let (su, sv) = sum2_f64(&x, &y, &x, |a, b, c| (a * b, a + c));
        assert!((su - dot).abs() < 1e-9);
        assert!((sv - 2.0 * seq).abs() < 1e-9);
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        assert_eq!(max_f32(&x), max);
        assert_eq!(
            max_f32(&x[..5]),
            x[..5].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
        );
        assert_eq!(max_f32(&[]), f32::NEG_INFINITY);
    }
}
