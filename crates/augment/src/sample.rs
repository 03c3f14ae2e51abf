//! Host-side samplers driven by the run's seeded RNG (candle's CPU RNG cannot be seeded).

use crate::error::{out_of_range, Result};
use crate::mixup::Pairing;
use rand::seq::{index, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, Gamma};
use rayon::prelude::*;

/// `λ ~ Beta(α, α)` (mixup, manifold mixup).
pub fn beta(alpha: f64, rng: &mut impl Rng) -> Result<f64> {
    let dist = Beta::new(alpha, alpha).map_err(|_| out_of_range("mix-alpha", alpha, "> 0"))?;
    Ok(dist.sample(rng))
}

/// Interpolation matrix `Λ` of shape `[n, b]`, row-major (METHOD.md §2): each row
/// `λ_k ~ Dir(α · 1_m)` over `m` examples of the batch (all of them when `m = b`, else a random
/// subset per row, zeros elsewhere), sampled as normalized `Gamma(α, 1)` draws, blocks of rows in
/// parallel from ChaCha8 streams seeded in order from `rng`.
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
    // One ChaCha8 stream per block of rows, seeded from `rng` in order: the rows are drawn in
    // parallel, and the same seed gives the same Λ whatever the number of threads.
    let seeds: Vec<ChaCha8Rng> = (0..n.div_ceil(ROWS_PER_STREAM))
        .map(|_| ChaCha8Rng::from_rng(rng))
        .collect();
    let mut out = vec![0f32; n * b];
    out.par_chunks_mut(ROWS_PER_STREAM * b)
        .zip(seeds)
        .for_each(|(rows, mut rng)| {
            let mut draws = vec![0f64; m];
            for row in rows.chunks_exact_mut(b) {
                dirichlet_row(row, &mut draws, &gamma, &mut rng);
            }
        });
    Ok(out)
}

/// Rows of `Λ` drawn from one RNG stream.
const ROWS_PER_STREAM: usize = 32;

/// One row `λ ~ Dir(α·1_m)` over `m = draws.len()` of the `row.len()` examples (a random subset
/// when `m < b`), as normalized `Gamma(α, 1)` draws.
fn dirichlet_row(row: &mut [f32], draws: &mut [f64], gamma: &Gamma<f64>, rng: &mut ChaCha8Rng) {
    // Dir(α·1_m) = Gamma(α, 1) draws divided by their sum; redraw in the (measure-zero in
    // exact arithmetic, possible in floating point for tiny α) case of an all-zero draw.
    let sum = loop {
        draws.iter_mut().for_each(|g| *g = gamma.sample(rng));
        let s: f64 = draws.iter().sum();
        if s > 0.0 && s.is_finite() {
            break s;
        }
    };
    let (b, m) = (row.len(), draws.len());
    if m == b {
        row.iter_mut()
            .zip(draws.iter())
            .for_each(|(r, g)| *r = (g / sum) as f32);
    } else {
        for (i, g) in index::sample(rng, b, m).into_iter().zip(draws.iter()) {
            row[i] = (g / sum) as f32;
        }
    }
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
