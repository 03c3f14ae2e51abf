//! Object detection data: images with labelled boxes, and a synthetic set built offline by
//! placing Fashion-MNIST objects on larger canvases (deterministic from the seed).

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One labelled box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObjectBox {
    /// Class index, `< num_classes`.
    pub class: u32,
    /// `[x, y, width, height]` in pixels (COCO's layout): the object covers pixels
    /// `x ≤ u < x + width`, `y ≤ v < y + height`.
    pub bbox: [f32; 4],
}

/// Images `[N, C, H, W]` as `u8` with their boxes.
#[derive(Debug, Clone)]
pub struct DetectionSet {
    /// A short name (where it came from).
    pub name: String,
    /// Pixels, image after image, each `C × H × W` row-major.
    pub images: Vec<u8>,
    /// The boxes of each image.
    pub boxes: Vec<Vec<ObjectBox>>,
    /// Channels per image.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Class names, one per class.
    pub class_names: Vec<String>,
}

impl DetectionSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    /// Whether the set has no image.
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Values per image (`C·H·W`).
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Images `indices` as `f32` in [0, 1], `[len, C, H, W]` row-major.
    pub fn batch_pixels(&self, indices: &[usize]) -> Vec<f32> {
        let n = self.image_len();
        indices
            .iter()
            .flat_map(|&i| self.images[i * n..(i + 1) * n].iter())
            .map(|&p| p as f32 / 255.0)
            .collect()
    }
}

/// How the synthetic set is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticConfig {
    /// Number of canvases.
    pub count: usize,
    /// Side of the square canvas in pixels (at least the objects' side).
    pub canvas: usize,
    /// Fewest objects per canvas (at least 1).
    pub min_objects: usize,
    /// Most objects per canvas.
    pub max_objects: usize,
    /// Largest IoU allowed between two objects' boxes; an object that cannot be placed within it
    /// after a few tries is left out (the canvas keeps at least one object).
    pub max_iou: f32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            count: 512,
            canvas: 56,
            min_objects: 1,
            max_objects: 3,
            max_iou: 0.1,
        }
    }
}

/// Pixels at or above this value belong to the object (its tight box).
const OBJECT_THRESHOLD: u8 = 32;
/// Placement attempts per object.
const PLACEMENT_TRIES: usize = 50;

/// The tight box `(x0, y0, x1, y1)` (exclusive ends) of the pixels ≥ [`OBJECT_THRESHOLD`] of a
/// single-channel `h × w` image, or `None` when it is blank.
fn tight_box(pixels: &[u8], h: usize, w: usize) -> Option<(usize, usize, usize, usize)> {
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for y in 0..h {
        for x in 0..w {
            if pixels[y * w + x] >= OBJECT_THRESHOLD {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
            }
        }
    }
    (x1 > x0).then_some((x0, y0, x1, y1))
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let h = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    if w <= 0.0 || h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    i / (a[2] * a[3] + b[2] * b[3] - i)
}

/// A synthetic detection set: each canvas (black, `canvas × canvas`, the channels of `source`)
/// gets `min_objects..=max_objects` images of `source` pasted (pixel-wise maximum) at random
/// positions, each with its class and the tight box of its pixels. Deterministic from `seed`.
pub fn synthetic(source: &Dataset, cfg: &SyntheticConfig, seed: u64) -> Result<DetectionSet> {
    let (c, h, w) = (source.channels, source.height, source.width);
    if cfg.canvas < h.max(w) || cfg.min_objects == 0 || cfg.min_objects > cfg.max_objects {
        return Err(DataError::Invalid(format!(
            "synthetic detection set: canvas {} must hold the {h}x{w} objects and 1 <= min \
             objects ({}) <= max objects ({})",
            cfg.canvas, cfg.min_objects, cfg.max_objects
        )));
    }
    if source.is_empty() {
        return Err(DataError::Invalid(format!(
            "synthetic detection set: {} has no images to place",
            source.name
        )));
    }
    let side = cfg.canvas;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut images = vec![0u8; cfg.count * c * side * side];
    let mut boxes = Vec::with_capacity(cfg.count);
    for canvas in images.chunks_exact_mut(c * side * side) {
        let wanted = rng.random_range(cfg.min_objects..=cfg.max_objects);
        let mut placed: Vec<ObjectBox> = Vec::with_capacity(wanted);
        while placed.len() < wanted {
            let i = rng.random_range(0..source.len());
            let img = source.image(i);
            // The tight box of the first channel (gray images; the first plane of RGB ones).
            let Some((x0, y0, x1, y1)) = tight_box(&img[..h * w], h, w) else {
                continue;
            };
            let spot = (0..PLACEMENT_TRIES).find_map(|_| {
                let ox = rng.random_range(0..=side - w);
                let oy = rng.random_range(0..=side - h);
                let bbox = [
                    (ox + x0) as f32,
                    (oy + y0) as f32,
                    (x1 - x0) as f32,
                    (y1 - y0) as f32,
                ];
                placed
                    .iter()
                    .all(|p| iou(&p.bbox, &bbox) <= cfg.max_iou)
                    .then_some((ox, oy, bbox))
            });
            // With nothing placed yet every spot fits, so the canvas keeps at least one object.
            let Some((ox, oy, bbox)) = spot else {
                break;
            };
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let dst = &mut canvas[(ch * side + oy + y) * side + ox + x];
                        *dst = (*dst).max(img[(ch * h + y) * w + x]);
                    }
                }
            }
            placed.push(ObjectBox {
                class: source.labels[i],
                bbox,
            });
        }
        boxes.push(placed);
    }
    Ok(DetectionSet {
        name: format!("synthetic({}, {side}x{side}, seed {seed})", source.name),
        images,
        boxes,
        channels: c,
        height: side,
        width: side,
        class_names: source.class_names.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Dataset {
        // Four 4x4 objects of two classes: a 2x3 block at (1, 0), a full square, ...
        let mut images = vec![0u8; 4 * 16];
        for (y, x) in [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)] {
            images[y * 4 + x] = 200;
        }
        images[16..32].fill(255);
        images[32..48].fill(100);
        images[48 + 5] = 40;
        Dataset::new(
            "toy",
            images,
            vec![0, 1, 0, 1],
            (1, 4, 4),
            2,
            vec!["a".into(), "b".into()],
        )
        .unwrap()
    }

    #[test]
    fn boxes_are_tight_and_hold_the_object_pixels() {
        let cfg = SyntheticConfig {
            count: 20,
            canvas: 12,
            ..SyntheticConfig::default()
        };
        let set = synthetic(&source(), &cfg, 7).unwrap();
        assert_eq!(set.len(), 20);
        let mut counts = [0usize; 4];
        for (k, boxes) in set.boxes.iter().enumerate() {
            assert!((1..=3).contains(&boxes.len()));
            counts[boxes.len()] += 1;
            let img = &set.images[k * 144..(k + 1) * 144];
            for b in boxes {
                let [x, y, w, h] = b.bbox.map(|v| v as usize);
                assert!(x + w <= 12 && y + h <= 12);
                // Every border row and column of the box has an object pixel.
                let on = |u: usize, v: usize| img[v * 12 + u] >= OBJECT_THRESHOLD;
                assert!((x..x + w).any(|u| on(u, y)) && (x..x + w).any(|u| on(u, y + h - 1)));
                assert!((y..y + h).any(|v| on(x, v)) && (y..y + h).any(|v| on(x + w - 1, v)));
            }
            // Outside every box the canvas is black.
            for v in 0..12 {
                for u in 0..12 {
                    let inside = boxes.iter().any(|b| {
                        let [x, y, w, h] = b.bbox;
                        (u as f32) >= x
                            && (u as f32) < x + w
                            && (v as f32) >= y
                            && (v as f32) < y + h
                    });
                    assert!(inside || img[v * 12 + u] < OBJECT_THRESHOLD);
                }
            }
        }
        assert!(counts[1] > 0 && counts[2] + counts[3] > 0);
    }

    #[test]
    fn deterministic_from_the_seed() {
        let cfg = SyntheticConfig {
            count: 8,
            canvas: 10,
            ..SyntheticConfig::default()
        };
        let a = synthetic(&source(), &cfg, 1).unwrap();
        let b = synthetic(&source(), &cfg, 1).unwrap();
        let c = synthetic(&source(), &cfg, 2).unwrap();
        assert_eq!((&a.images, &a.boxes), (&b.images, &b.boxes));
        assert_ne!(a.images, c.images);
    }

    #[test]
    fn refuses_a_canvas_smaller_than_the_objects() {
        let cfg = SyntheticConfig {
            canvas: 3,
            ..SyntheticConfig::default()
        };
        let e = synthetic(&source(), &cfg, 0).unwrap_err().to_string();
        assert!(e.contains("canvas 3"), "{e}");
    }
}
