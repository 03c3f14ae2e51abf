//! Deterministic image transforms on `u8` images stored `C × H × W`: resize (PIL's bilinear
//! filter, which torchvision's `Resize` calls on PIL images) and channel conversion.
//!
//! The random training transforms (crop with padding, horizontal flip) are applied per batch by
//! the loader ([`crate::loader::Augment`]); normalization is part of the model.

/// Fixed-point precision of PIL's 8-bit resampling (`PRECISION_BITS` in `Resample.c`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One output position's filter: the first source index and integer weights (sum `2^22`).
#[derive(Debug, Clone, PartialEq)]
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// PIL's bilinear (triangle) filter.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// The filter of every output position when `in_size` samples are resized to `out_size`
/// (PIL `precompute_coeffs` + `normalize_coeffs_8bpc`: the triangle is widened by the scale when
/// shrinking, which is what antialiasing means here).
fn taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle's support is 1
    let ss = 1.0 / filterscale; // multiplied, not divided, as PIL does (same rounding)
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // PIL truncates `center ± support + 0.5` toward zero ("round the value").
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| triangle((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = raw.iter().sum();
            let one = (1i64 << PRECISION_BITS) as f64;
            let weights = raw
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    if w < 0.0 {
                        (-0.5 + w * one) as i32
                    } else {
                        (0.5 + w * one) as i32
                    }
                })
                .collect();
            Taps {
                first: xmin,
                weights,
            }
        })
        .collect()
}

/// Apply `taps` along a line of samples read with `at(i)`; rounds as PIL does (`clip8`).
fn filter_line(t: &Taps, at: impl Fn(usize) -> u8) -> u8 {
    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
    for (k, &w) in t.weights.iter().enumerate() {
        acc += at(t.first + k) as i64 * w as i64;
    }
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize one `C × H × W` image to `C × out_h × out_w` with PIL's bilinear filter (antialiased
/// when shrinking), rows first, then columns, rounding to `u8` in between as PIL does.
/// Equals `torchvision.transforms.Resize((out_h, out_w))` on a PIL image
/// (`tools/make_transform_fixtures.py`).
pub fn resize_bilinear(
    src: &[u8],
    (c, h, w): (usize, usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<u8> {
    assert_eq!(
        src.len(),
        c * h * w,
        "image buffer does not match its shape"
    );
    if (out_h, out_w) == (h, w) {
        return src.to_vec();
    }
    // Horizontal pass (skipped when the width is unchanged, as PIL does).
    let horizontal: Vec<u8> = if out_w == w {
        src.to_vec()
    } else {
        let tx = taps(w, out_w);
        let mut out = Vec::with_capacity(c * h * out_w);
        for row in src.chunks_exact(w) {
            out.extend(tx.iter().map(|t| filter_line(t, |x| row[x])));
        }
        out
    };
    if out_h == h {
        return horizontal;
    }
    let ty = taps(h, out_h);
    let mut out = Vec::with_capacity(c * out_h * out_w);
    for plane in horizontal.chunks_exact(h * out_w) {
        for t in &ty {
            out.extend((0..out_w).map(|x| filter_line(t, |y| plane[y * out_w + x])));
        }
    }
    out
}

/// A gray `1 × H × W` image as `3 × H × W` (the plane repeated, as PIL's `convert("RGB")`).
pub fn gray_to_rgb(src: &[u8]) -> Vec<u8> {
    src.repeat(3)
}

/// An RGB `3 × H × W` image as gray `1 × H × W` with ITU-R 601-2 luma
/// `L = R·299/1000 + G·587/1000 + B·114/1000`, in PIL's fixed point (`convert("L")`).
pub fn rgb_to_gray(src: &[u8]) -> Vec<u8> {
    let hw = src.len() / 3;
    let (r, rest) = src.split_at(hw);
    let (g, b) = rest.split_at(hw);
    r.iter()
        .zip(g)
        .zip(b)
        .map(|((&r, &g), &b)| {
            ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
        })
        .collect()
}

/// Whether images of `from` channels convert to `to` channels (equal, or 1 and 3).
pub fn converts_channels(from: usize, to: usize) -> bool {
    from == to || matches!((from, to), (1, 3) | (3, 1))
}

/// Convert one image from `from` to `to` (channels, height, width): channels first (1 → 3 by
/// repetition, 3 → 1 by luma), then a bilinear resize. `None` when the channel counts have no
/// conversion.
pub fn convert_image(
    src: &[u8],
    from: (usize, usize, usize),
    to: (usize, usize, usize),
) -> Option<Vec<u8>> {
    let (c, h, w) = from;
    let channels = match (c, to.0) {
        (a, b) if a == b => src.to_vec(),
        (1, 3) => gray_to_rgb(src),
        (3, 1) => rgb_to_gray(src),
        _ => return None,
    };
    Some(resize_bilinear(&channels, (to.0, h, w), (to.1, to.2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(32, 24), (28, 32), (7, 3), (3, 7), (5, 1)] {
            for t in taps(i, o) {
                let s: i32 = t.weights.iter().sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= t.weights.len() as i32);
                assert!(t.first + t.weights.len() <= i);
            }
        }
    }

    #[test]
    fn constant_image_stays_constant_and_identity_is_a_copy() {
        let img = vec![77u8; 3 * 9 * 5];
        assert_eq!(
            resize_bilinear(&img, (3, 9, 5), (4, 11)),
            vec![77u8; 3 * 44]
        );
        let ramp: Vec<u8> = (0..30).collect();
        assert_eq!(resize_bilinear(&ramp, (1, 5, 6), (5, 6)), ramp);
    }

    #[test]
    fn channel_conversion() {
        assert_eq!(gray_to_rgb(&[1, 2]), vec![1, 2, 1, 2, 1, 2]);
        // Pure red, green, blue and white, as PIL's convert("L") gives them.
        let rgb = [255, 0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255];
        assert_eq!(rgb_to_gray(&rgb), vec![76, 150, 29, 255]);
        assert!(convert_image(&[0; 8], (2, 2, 2), (3, 2, 2)).is_none());
        assert_eq!(
            convert_image(&[9; 4], (1, 2, 2), (3, 3, 3)),
            Some(vec![9; 27])
        );
    }
}
