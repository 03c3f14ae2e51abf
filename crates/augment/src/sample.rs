//! Host-side samplers driven by the run's seeded RNG (candle's CPU RNG cannot be seeded).

use crate::error::{out_of_range, Result};
use crate::math::ln_positive;
use crate::mixup::Pairing;
use rand::seq::{index, SliceRandom};
use rand::{Rng, RngCore, SeedableRng};
use rand_distr::{Beta, Distribution, Gamma};
use rand_pcg::Pcg64Mcg;
use rayon::prelude::*;

/// `λ ~ Beta(α, α)` (mixup, manifold mixup).
pub fn beta(alpha: f64, rng: &mut impl Rng) -> Result<f64> {
    let dist = Beta::new(alpha, alpha).map_err(|_| out_of_range("mix-alpha", alpha, "> 0"))?;
    Ok(dist.sample(rng))
}

/// Interpolation matrix `Λ` of shape `[n, b]`, row-major (METHOD.md §2): each row
/// `λ_k ~ Dir(α · 1_m)` over `m` examples of the batch (all of them when `m = b`, else a random
/// subset per row, zeros elsewhere), sampled as normalized `Gamma(α, 1)` draws (for α = 1,
/// `Exp(1)` draws `−ln u` from eight xoshiro128++ lanes), blocks of rows in parallel from
/// streams seeded in order from `rng`.
pub fn dirichlet_rows(
    n: usize,
    b: usize,
    m: usize,
    alpha: f64,
    rng: &mut impl Rng,
) -> Result<Vec<f32>> {
    if n == 0 {
        return Err(out_of_range("mix-n", n, ">= 1"));
    }
    if m < 1 || m > b {
        return Err(out_of_range(
            "mix-m",
            m,
            format!("1 <= m <= batch size {b}"),
        ));
    }
    let gamma = Gamma::new(alpha, 1.0).map_err(|_| out_of_range("mix-alpha", alpha, "> 0"))?;
    // α = 1 (the default): Gamma(1, 1) = Exp(1), drawn as `−ln u` by a vectorized kernel from
    // eight xoshiro128++ lanes.
    let flat = alpha == 1.0;
    // Streams per block of rows, seeded from `rng` in order: the rows are drawn in parallel, and
    // the same seed gives the same Λ whatever the number of threads. PCG-64 MCG, not the run's
    // ChaCha8, for the subsets and the Gamma draws: 2–3× cheaper per draw, and they need no
    // cryptographic stream.
    let seeds: Vec<(Pcg64Mcg, Option<Xoshiro128x8>)> = (0..n.div_ceil(ROWS_PER_STREAM))
        .map(|_| {
            let pcg = Pcg64Mcg::from_rng(rng);
            (pcg, flat.then(|| Xoshiro128x8::from_rng(rng)))
        })
        .collect();
    let mut out = vec![0f32; n * b];
    out.par_chunks_mut(ROWS_PER_STREAM * b)
        .zip(seeds)
        .for_each(|(rows, (mut rng, lanes))| {
            if let Some(mut lanes) = lanes {
                let mut draws = vec![0f32; m];
                for row in rows.chunks_exact_mut(b) {
                    flat_dirichlet_row(row, &mut draws, &mut lanes, &mut rng);
                }
            } else {
                let mut draws = vec![0f64; m];
                for row in rows.chunks_exact_mut(b) {
                    dirichlet_row(row, &mut draws, &gamma, &mut rng);
                }
            }
        });
    Ok(out)
}

/// `2⁻²⁴`: the spacing of the uniforms `u` of [`exp1_draws`].
const U24: f32 = 1.0 / (1u32 << 24) as f32;

/// Lanes of [`Xoshiro128x8`]: one AVX2 register of u32.
const RNG_LANES: usize = 8;

/// Eight xoshiro128++ generators (Blackman & Vigna 2019) stepped together, one per SIMD lane:
/// the uniforms of the `Exp(1)` draws. A scalar generator is a chain of dependent steps (PCG-64's
/// 128-bit multiply bounded sampling Λ at n = 1000); eight independent lanes vectorize.
struct Xoshiro128x8 {
    /// The four state words of every lane.
    s: [[u32; RNG_LANES]; 4],
}

impl Xoshiro128x8 {
    /// Seeds every lane's state from `rng` (an all-zero state, the generator's one fixed point,
    /// gets a 1).
    fn from_rng(rng: &mut impl RngCore) -> Self {
        let mut s = [[0u32; RNG_LANES]; 4];
        for word in s.iter_mut() {
            word.iter_mut().for_each(|w| *w = rng.next_u32());
        }
        for lane in 0..RNG_LANES {
            if s.iter().all(|word| word[lane] == 0) {
                s[0][lane] = 1;
            }
        }
        Self { s }
    }

    /// The next output of every lane (xoshiro128++: `rotl(s0 + s3, 7) + s0`).
    #[inline(always)]
    fn next(&mut self) -> [u32; RNG_LANES] {
        let [s0, s1, s2, s3] = &mut self.s;
        let mut out = [0u32; RNG_LANES];
        for q in 0..RNG_LANES {
            out[q] = s0[q].wrapping_add(s3[q]).rotate_left(7).wrapping_add(s0[q]);
            let t = s1[q] << 9;
            s2[q] ^= s0[q];
            s3[q] ^= s1[q];
            s1[q] ^= s2[q];
            s0[q] ^= s3[q];
            s2[q] ^= t;
            s3[q] = s3[q].rotate_left(11);
        }
        out
    }
}

simd_kernel! {
    /// Fills `draws` with `Exp(1)` variates `−ln u`, `u = (k + 1)·2⁻²⁴ ∈ (0, 1]` with `k` the
    /// top 24 bits of one output of a lane of `rng`, and returns their sum (f64, eight partial
    /// sums in a fixed order). `u` has the resolution of an f32 in (½, 1], so the draws are
    /// exact to f32 rounding except for a tail beyond `24·ln 2 ≈ 16.6` (probability 6·10⁻⁸).
    fn exp1_draws(draws: &mut [f32], rng: &mut Xoshiro128x8) -> f64 {
        let uniform = |bits: u32| ((bits >> 8) + 1) as f32 * U24;
        let mut chunks = draws.chunks_exact_mut(RNG_LANES);
        for chunk in &mut chunks {
            let bits = rng.next();
            for q in 0..RNG_LANES {
                chunk[q] = uniform(bits[q]);
            }
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let bits = rng.next();
            rest.iter_mut().zip(bits).for_each(|(x, bits)| *x = uniform(bits));
        }
        draws.iter_mut().for_each(|x| *x = -ln_positive(*x));
        let mut partial = [0f64; 8];
        let mut chunks = draws.chunks_exact(8);
        for chunk in &mut chunks {
            for (p, &x) in partial.iter_mut().zip(chunk) {
                *p += f64::from(x);
            }
        }
        let rest: f64 = chunks.remainder().iter().map(|&x| f64::from(x)).sum();
        partial.iter().sum::<f64>() + rest
    }
}

/// One row `λ ~ Dir(1_m)` (α = 1) over `m = draws.len()` of the `row.len()` examples (a random
/// subset when `m < b`), as normalized `Exp(1)` draws ([`exp1_draws`]).
fn flat_dirichlet_row(
    row: &mut [f32],
    draws: &mut [f32],
    lanes: &mut Xoshiro128x8,
    rng: &mut Pcg64Mcg,
) {
    // All draws are 0 only if every u is 1 (probability 2^(−24·m)); redraw then.
    let sum = loop {
        let s = exp1_draws(draws, lanes);
        if s > 0.0 {
            break s;
        }
    };
    place_normalized(row, draws, sum, rng);
}

/// `row[i] = draw / sum` for the `m = draws.len()` draws: at every position when `m` is the row's
/// length, else at a random subset of `m` positions (the rest stay 0).
fn place_normalized<T: Copy + Into<f64>>(
    row: &mut [f32],
    draws: &[T],
    sum: f64,
    rng: &mut Pcg64Mcg,
) {
    let inv = 1.0 / sum;
    let (b, m) = (row.len(), draws.len());
    if m == b {
        row.iter_mut()
            .zip(draws)
            .for_each(|(r, &g)| *r = (g.into() * inv) as f32);
    } else {
        for (i, &g) in index::sample(rng, b, m).into_iter().zip(draws) {
            row[i] = (g.into() * inv) as f32;
        }
    }
}

/// Rows of `Λ` drawn from one RNG stream.
const ROWS_PER_STREAM: usize = 32;

/// One row `λ ~ Dir(α·1_m)` over `m = draws.len()` of the `row.len()` examples (a random subset
/// when `m < b`), as normalized `Gamma(α, 1)` draws.
fn dirichlet_row(row: &mut [f32], draws: &mut [f64], gamma: &Gamma<f64>, rng: &mut Pcg64Mcg) {
    // Dir(α·1_m) = Gamma(α, 1) draws divided by their sum; redraw in the (measure-zero in
    // exact arithmetic, possible in floating point for tiny α) case of an all-zero draw.
    let sum = loop {
        draws.iter_mut().for_each(|g| *g = gamma.sample(rng));
        let s: f64 = draws.iter().sum();
        if s > 0.0 && s.is_finite() {
            break s;
        }
    };
    place_normalized(row, draws, sum, rng);
}

/// Each example's partner `π(i)`: timm's flip (`b - 1 - i`) or a random permutation; with
/// `involution` the random partners pair up (`π(π(i)) = i`: consecutive elements of a random
/// permutation swap, an odd one out keeps itself), as mixing both ways of a pair needs.
pub fn partners(b: usize, pairing: Pairing, involution: bool, rng: &mut impl Rng) -> Vec<usize> {
    let flip = || (0..b).rev().collect();
    match pairing {
        Pairing::Flip => flip(),
        Pairing::Random => {
            let mut perm: Vec<usize> = (0..b).collect();
            perm.shuffle(rng);
            if !involution {
                return perm;
            }
            let mut partner: Vec<usize> = (0..b).collect();
            for pair in perm.chunks_exact(2) {
                partner[pair[0]] = pair[1];
                partner[pair[1]] = pair[0];
            }
            partner
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Xoshiro128x8, RNG_LANES};
    use rand::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_xoshiro::Xoshiro128PlusPlus;

    /// Every lane is the xoshiro128++ of `rand_xoshiro` (a translation of the authors' C code)
    /// seeded with that lane's state.
    #[test]
    fn lanes_are_xoshiro128plusplus() {
        let mut lanes = Xoshiro128x8::from_rng(&mut ChaCha8Rng::seed_from_u64(3));
        let mut reference: Vec<Xoshiro128PlusPlus> = (0..RNG_LANES)
            .map(|q| {
                let mut seed = [0u8; 16];
                for (bytes, word) in seed.chunks_exact_mut(4).zip(&lanes.s) {
                    bytes.copy_from_slice(&word[q].to_le_bytes());
                }
                Xoshiro128PlusPlus::from_seed(seed)
            })
            .collect();
        for _ in 0..1000 {
            let out = lanes.next();
            for (q, rng) in reference.iter_mut().enumerate() {
                assert_eq!(out[q], rng.next_u32(), "lane {q}");
            }
        }
    }
}
