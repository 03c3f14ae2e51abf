//! Input-space mixing: mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) with the options of
//! timm's `Mixup` (`data/mixup.py`): per-batch probability, the mixup/CutMix switch, modes
//! `batch | pair | elem`, `correct_lam`, `minmax` boxes and label smoothing folded into the
//! targets. Partners are timm's flipped batch (`flip`) or a random permutation (`random`).
//!
//! Sampling ([`Mixup::sample`]) and application ([`MixPlan::apply`], [`MixPlan::targets`]) are
//! separate, so a plan can be built by hand (a fixed λ, partner and box) and checked against timm.

use crate::error::{out_of_range, AugmentError, Result};
use crate::sample::{beta, partners};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// How λ is shared over a batch (timm `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MixMode {
    /// One λ (and one box) for the whole batch; the default.
    #[default]
    Batch,
    /// One λ per pair of partners, both directions mixed.
    Pair,
    /// One λ per element.
    Elem,
}

/// How each example's partner is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pairing {
    /// timm: the reversed batch, `π(i) = b - 1 - i` (the batch size must be even).
    Flip,
    /// A random permutation of the batch (Zhang et al., Verma et al.).
    Random,
}

parse_kebab!(MixMode, "mix mode", "batch" => MixMode::Batch, "pair" => MixMode::Pair, "elem" => MixMode::Elem);
parse_kebab!(Pairing, "pairing", "flip" => Pairing::Flip, "random" => Pairing::Random);

/// A box `[y0, y1) × [x0, x1)` in pixels (timm's `yl, yh, xl, xh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BBox {
    /// First row.
    pub y0: usize,
    /// One past the last row.
    pub y1: usize,
    /// First column.
    pub x0: usize,
    /// One past the last column.
    pub x1: usize,
}

impl BBox {
    /// Number of pixels in the box.
    pub fn area(&self) -> usize {
        (self.y1 - self.y0) * (self.x1 - self.x0)
    }
}

/// What one example of the batch receives from its partner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ElemMix {
    /// `x̃ = λ x + (1 - λ) x_π`.
    Blend,
    /// The partner's pixels inside the box (CutMix).
    Paste(BBox),
}

/// A sampled (or hand-made) mixing of one batch: each example's partner, its λ (the weight of its
/// own target, after `correct_lam`) and the op.
#[derive(Debug, Clone, PartialEq)]
pub struct MixPlan {
    /// Partner index `π(i)` of each example.
    pub partner: Vec<usize>,
    /// Weight `λ_i` of example `i`'s own image and target.
    pub lam: Vec<f64>,
    /// The op of each example.
    pub op: Vec<ElemMix>,
}

/// Mixup and CutMix options, as timm's `Mixup(mixup_alpha, cutmix_alpha, cutmix_minmax, prob,
/// switch_prob, mode, correct_lam, label_smoothing)`; an α of 0 disables that method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mixup {
    /// Beta(α, α) concentration of mixup (0: off).
    pub mixup_alpha: f64,
    /// Beta(α, α) concentration of CutMix (0: off).
    pub cutmix_alpha: f64,
    /// CutMix box side ratios `(min, max)` drawn uniformly instead of from λ.
    pub cutmix_minmax: Option<(f64, f64)>,
    /// Probability of mixing a batch (or element, in `pair`/`elem` modes).
    pub prob: f64,
    /// Probability of CutMix rather than mixup when both are on.
    pub switch_prob: f64,
    /// How λ is shared.
    pub mode: MixMode,
    /// Recompute λ from the area of the clipped box.
    pub correct_lam: bool,
    /// Label smoothing folded into the targets.
    pub label_smoothing: f64,
    /// Partner choice.
    pub pairing: Pairing,
}

impl Default for Mixup {
    /// timm's `Mixup()` defaults.
    fn default() -> Self {
        Self {
            mixup_alpha: 1.0,
            cutmix_alpha: 0.0,
            cutmix_minmax: None,
            prob: 1.0,
            switch_prob: 0.5,
            mode: MixMode::Batch,
            correct_lam: true,
            label_smoothing: 0.1,
            pairing: Pairing::Flip,
        }
    }
}

/// Check a probability option lies in `[0, 1]`.
pub(crate) fn check_prob(name: &'static str, p: f64) -> Result<()> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(out_of_range(name, p, "in [0, 1]"))
    }
}

/// Check a batch size suits the pairing and mode: timm's flip pairing and every `pair` mode
/// need an even batch.
pub fn check_batch(batch_size: usize, pairing: Pairing, mode: MixMode) -> Result<()> {
    if batch_size % 2 == 1 && (pairing == Pairing::Flip || mode == MixMode::Pair) {
        return Err(out_of_range(
            "batch-size",
            batch_size,
            "even with flip pairing or pair mode (use --batch-size of an even number)",
        ));
    }
    Ok(())
}

impl Mixup {
    /// Check the options (independent of the batch).
    pub fn validate(&self) -> Result<()> {
        for (name, a) in [
            ("mix-alpha", self.mixup_alpha),
            ("cutmix-alpha", self.cutmix_alpha),
        ] {
            if !(a >= 0.0 && a.is_finite()) {
                return Err(out_of_range(name, a, ">= 0 (0 turns the method off)"));
            }
        }
        if self.mixup_alpha == 0.0 && self.cutmix_alpha == 0.0 && self.cutmix_minmax.is_none() {
            return Err(out_of_range("mix-alpha", 0, "> 0 for mixup or CutMix"));
        }
        check_prob("mix-prob", self.prob)?;
        check_prob("switch-prob", self.switch_prob)?;
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(out_of_range(
                "label-smoothing",
                self.label_smoothing,
                "in [0, 1)",
            ));
        }
        if let Some((lo, hi)) = self.cutmix_minmax {
            if !(0.0 < lo && lo < hi && hi <= 1.0) {
                return Err(out_of_range(
                    "cutmix-minmax",
                    format!("[{lo}, {hi}]"),
                    "0 < min < max <= 1",
                ));
            }
        }
        Ok(())
    }

    /// Whether CutMix can be drawn (timm: `cutmix_alpha > 0` or `cutmix_minmax` set).
    fn cutmix_on(&self) -> bool {
        self.cutmix_alpha > 0.0 || self.cutmix_minmax.is_some()
    }

    /// timm `_params_per_batch` / one draw of `_params_per_elem`: `(λ, use_cutmix)`.
    fn draw(&self, rng: &mut impl Rng) -> Result<(f64, bool)> {
        if rng.random::<f64>() >= self.prob {
            return Ok((1.0, false));
        }
        let mixup_on = self.mixup_alpha > 0.0;
        let use_cutmix = match (mixup_on, self.cutmix_on()) {
            (true, true) => rng.random::<f64>() < self.switch_prob,
            (false, true) => true,
            _ => false,
        };
        let alpha = if use_cutmix {
            // With only minmax boxes λ comes from the box; any α serves (timm uses cutmix_alpha).
            if self.cutmix_alpha > 0.0 {
                self.cutmix_alpha
            } else {
                1.0
            }
        } else {
            self.mixup_alpha
        };
        Ok((beta(alpha, rng)?, use_cutmix))
    }

    /// Sample the mixing of a batch of `b` images of `h × w` pixels.
    pub fn sample(&self, b: usize, h: usize, w: usize, rng: &mut impl Rng) -> Result<MixPlan> {
        self.validate()?;
        check_batch(b, self.pairing, self.mode)?;
        // Random partners pair up (an involution), as `pair` mode, which mixes both ways, needs.
        let partner = partners(b, self.pairing, true, rng);
        // The pairs `(i, π(i))` for `pair` mode: each unordered pair once, in index order.
        let draws = match self.mode {
            MixMode::Batch => 1,
            MixMode::Pair => b / 2,
            MixMode::Elem => b,
        };
        let mut params = Vec::with_capacity(draws);
        for _ in 0..draws {
            let (lam, cut) = self.draw(rng)?;
            let (lam, op) = if cut && lam < 1.0 {
                let (bbox, lam) = self.cutmix_box(h, w, lam, rng);
                (lam, ElemMix::Paste(bbox))
            } else {
                (lam, ElemMix::Blend)
            };
            params.push((lam, op));
        }
        let mut lam = vec![1.0; b];
        let mut op = vec![ElemMix::Blend; b];
        match self.mode {
            MixMode::Batch => {
                lam.fill(params[0].0);
                op.fill(params[0].1);
            }
            MixMode::Elem => {
                for (i, (l, o)) in params.into_iter().enumerate() {
                    (lam[i], op[i]) = (l, o);
                }
            }
            MixMode::Pair => {
                let firsts = (0..b).filter(|&i| i < partner[i]);
                for (i, (l, o)) in firsts.zip(params) {
                    (lam[i], op[i]) = (l, o);
                    (lam[partner[i]], op[partner[i]]) = (l, o);
                }
            }
        }
        Ok(MixPlan { partner, lam, op })
    }

    /// timm `cutmix_bbox_and_lam`: a box from λ (or from `minmax`), and λ corrected to the box.
    fn cutmix_box(&self, h: usize, w: usize, lam: f64, rng: &mut impl Rng) -> (BBox, f64) {
        let bbox = match self.cutmix_minmax {
            Some(minmax) => rand_bbox_minmax(h, w, minmax, rng),
            None => {
                let cy = rng.random_range(0..h);
                let cx = rng.random_range(0..w);
                bbox_at(h, w, lam, cy, cx)
            }
        };
        if self.correct_lam || self.cutmix_minmax.is_some() {
            (bbox, corrected_lam(h, w, &bbox))
        } else {
            (bbox, lam)
        }
    }
}

/// timm `rand_bbox` with its center given: sides `⌊√(1 - λ)·h⌋ × ⌊√(1 - λ)·w⌋`, from
/// `c - ⌊side/2⌋` to `c + ⌈side/2⌉` around the center `(cy, cx)`, clipped to the image.
pub fn bbox_at(h: usize, w: usize, lam: f64, cy: usize, cx: usize) -> BBox {
    let ratio = (1.0 - lam).max(0.0).sqrt();
    let (cut_h, cut_w) = ((h as f64 * ratio) as usize, (w as f64 * ratio) as usize);
    let clip = |v: isize, hi: usize| v.clamp(0, hi as isize) as usize;
    let (cy, cx) = (cy as isize, cx as isize);
    let (lo_h, lo_w) = ((cut_h / 2) as isize, (cut_w / 2) as isize);
    let (hi_h, hi_w) = (cut_h.div_ceil(2) as isize, cut_w.div_ceil(2) as isize);
    BBox {
        y0: clip(cy - lo_h, h),
        y1: clip(cy + hi_h, h),
        x0: clip(cx - lo_w, w),
        x1: clip(cx + hi_w, w),
    }
}

/// timm `rand_bbox_minmax`: box sides drawn uniformly in `[⌊min·side⌋, ⌊max·side⌋)`, the box
/// placed uniformly inside the image.
fn rand_bbox_minmax(h: usize, w: usize, (lo, hi): (f64, f64), rng: &mut impl Rng) -> BBox {
    let side = |n: usize, rng: &mut dyn rand::RngCore| {
        let (a, b) = ((n as f64 * lo) as usize, (n as f64 * hi) as usize);
        if b > a {
            rng.random_range(a..b)
        } else {
            a
        }
    };
    let (cut_h, cut_w) = (side(h, rng), side(w, rng));
    let y0 = rng.random_range(0..=h - cut_h);
    let x0 = rng.random_range(0..=w - cut_w);
    BBox {
        y0,
        y1: y0 + cut_h,
        x0,
        x1: x0 + cut_w,
    }
}

/// `correct_lam`: `λ = 1 - area(box) / (h w)`, the share of the image that stays its own.
pub fn corrected_lam(h: usize, w: usize, bbox: &BBox) -> f64 {
    1.0 - bbox.area() as f64 / (h * w) as f64
}

impl MixPlan {
    /// One op and λ for the whole batch, with the given partners (a hand-made plan).
    pub fn uniform(partner: Vec<usize>, lam: f64, op: ElemMix) -> Self {
        let b = partner.len();
        Self {
            partner,
            lam: vec![lam; b],
            op: vec![op; b],
        }
    }

    /// Mix images `[b, c, h, w]` (row-major, values of the original batch read, never the
    /// already mixed ones): blend with the partner or paste the partner's box.
    pub fn apply(&self, images: &[f32], shape: [usize; 4]) -> Result<Vec<f32>> {
        let [b, c, h, w] = shape;
        self.check(b)?;
        if images.len() != b * c * h * w {
            return Err(AugmentError::Shape(format!(
                "{} values do not make images {shape:?}",
                images.len()
            )));
        }
        let per = c * h * w;
        let mut out = images.to_vec();
        for i in 0..b {
            let (own, other) = (
                &images[i * per..][..per],
                &images[self.partner[i] * per..][..per],
            );
            let dst = &mut out[i * per..][..per];
            let lam = self.lam[i];
            match self.op[i] {
                ElemMix::Blend => {
                    if lam != 1.0 {
                        let (l, m) = (lam as f32, (1.0 - lam) as f32);
                        for ((d, a), o) in dst.iter_mut().zip(own).zip(other) {
                            *d = a * l + o * m;
                        }
                    }
                }
                ElemMix::Paste(bb) => {
                    if bb.y1 > h || bb.x1 > w || bb.y0 > bb.y1 || bb.x0 > bb.x1 {
                        return Err(AugmentError::Shape(format!(
                            "box {bb:?} does not fit images of {h}×{w}"
                        )));
                    }
                    for ch in 0..c {
                        for y in bb.y0..bb.y1 {
                            let row = ch * h * w + y * w;
                            dst[row + bb.x0..row + bb.x1]
                                .copy_from_slice(&other[row + bb.x0..row + bb.x1]);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// timm `mixup_target`: `λ_i ȳ_i + (1 - λ_i) ȳ_π(i)` with `ȳ` one-hot smoothed
    /// (`off = s / c`, `on = 1 - s + off`), as `[b, c]` row-major values.
    pub fn targets(&self, labels: &[u32], num_classes: usize, smoothing: f64) -> Result<Vec<f32>> {
        self.check(labels.len())?;
        let off = smoothing / num_classes as f64;
        let on = 1.0 - smoothing + off;
        let mut out = vec![0f32; labels.len() * num_classes];
        for (i, row) in out.chunks_exact_mut(num_classes).enumerate() {
            let (a, p) = (labels[i] as usize, labels[self.partner[i]] as usize);
            if a >= num_classes || p >= num_classes {
                return Err(out_of_range(
                    "label",
                    a.max(p),
                    format!("< {num_classes} classes"),
                ));
            }
            let lam = self.lam[i];
            for (k, v) in row.iter_mut().enumerate() {
                let y1 = if k == a { on } else { off };
                let y2 = if k == p { on } else { off };
                *v = (y1 * lam + y2 * (1.0 - lam)) as f32;
            }
        }
        Ok(out)
    }

    fn check(&self, b: usize) -> Result<()> {
        if self.partner.len() != b || self.lam.len() != b || self.op.len() != b {
            return Err(AugmentError::Shape(format!(
                "a mixing plan for {} examples applied to a batch of {b}",
                self.partner.len()
            )));
        }
        if let Some(&p) = self.partner.iter().find(|&&p| p >= b) {
            return Err(AugmentError::Shape(format!(
                "partner {p} outside a batch of {b}"
            )));
        }
        Ok(())
    }
}
