//! Host-side samplers driven by the run's seeded RNG (candle's CPU RNG cannot be seeded).

use crate::error::{out_of_range, Result};
use crate::mixup::Pairing;
use rand::seq::{index, SliceRandom};
use rand::Rng;
use rand_distr::{Beta, Distribution, Gamma};

/// `λ ~ Beta(α, α)` (mixup, manifold mixup).
pub fn beta(alpha: f64, rng: &mut impl Rng) -> Result<f64> {
    let dist = Beta::new(alpha, alpha).map_err(|_| out_of_range("mix-alpha", alpha, "> 0"))?;
    Ok(dist.sample(rng))
}

/// Interpolation matrix `Λ` of shape `[n, b]`, row-major (METHOD.md §2): each row
/// `λ_k ~ Dir(α · 1_m)` over `m` examples of the batch (all of them when `m = b`, else a random
/// subset per row, zeros elsewhere), sampled as normalized `Gamma(α, 1)` draws.
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
    let mut out = vec![0f32; n * b];
    let mut draws = vec![0f64; m];
    for row in out.chunks_exact_mut(b) {
        // Dir(α·1_m) = Gamma(α, 1) draws divided by their sum; redraw in the (measure-zero in
        // exact arithmetic, possible in floating point for tiny α) case of an all-zero draw.
        let sum = loop {
            draws.iter_mut().for_each(|g| *g = gamma.sample(rng));
            let s: f64 = draws.iter().sum();
            if s > 0.0 && s.is_finite() {
                break s;
            }
        };
        if m == b {
            row.iter_mut()
                .zip(&draws)
                .for_each(|(r, g)| *r = (g / sum) as f32);
        } else {
            for (i, g) in index::sample(rng, b, m).into_iter().zip(&draws) {
                row[i] = (g / sum) as f32;
            }
        }
    }
    Ok(out)
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
