//! Object detection on the backbone's dense outputs: a CenterNet head (Zhou et al., "Objects as
//! Points", 2019), its targets and losses, peak decoding, class-wise NMS, and the training recipe
//! behind `multimix train --task detection`.
//!
//! Why CenterNet rather than FCOS: a ViT gives one map of tokens at one stride (the patch size),
//! with no feature pyramid; CenterNet is built for exactly one output map, assigns each object to
//! one position (its center) without FCOS' scale ranges, center-ness branch or sampling
//! heuristics, and decodes without NMS (3×3 peak picking, top-k). A CNN's last map fits the same
//! way. The head is applied per position (CenterNet's 3×3 then 1×1 convolutions become two
//! linear layers on each token): the tokens already see the whole image through attention, and
//! every op is a matmul or an element-wise op with candle's own backward.

mod recipe;

pub use recipe::{
    build_detector, dense_grid, detection_test_set, is_detection_checkpoint, is_detection_files,
    load_init, output_stride, read_detection_config, read_detection_spec, train_detection,
    DetectionOutcome, DetectionReport, DetectionTrainer, CONVENTION,
};

use crate::error::{RecipeError, Result};
use candle_core::{DType, Device, Tensor, D};
use multimix_backbones::layers::Linear;
use multimix_backbones::{ops, Ctx, Init, Model, ParamStore};
use multimix_data::detection::{DetectionSet, ObjectBox};
use multimix_eval::detection::{coco_ap, CocoAp, Detection, GroundTruth, GtBox, IdEntry};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The file of a detection run directory holding its [`DetectionConfig`] (beside
/// `config.toml`); its presence marks the run as a detection run.
pub const DETECTION_FILE: &str = "detection.toml";

/// Prior probability of an object at initialization: the heatmap bias is `-log((1 - π) / π)`
/// (CenterNet's -2.19).
const PRIOR: f64 = 0.1;

/// Options of the detection recipe (the rest comes from the
/// [`TrainConfig`](crate::config::TrainConfig)); `detection.toml` in a run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectionConfig {
    /// Training canvases of the synthetic set.
    pub train_images: usize,
    /// Test canvases (drawn with another seed).
    pub test_images: usize,
    /// Canvas side in pixels (a multiple of the backbone's output stride).
    pub canvas: usize,
    /// Most objects per canvas (at least one each).
    pub max_objects: usize,
    /// Hidden width of each head branch.
    pub head_hidden: usize,
    /// Weight of the size loss (CenterNet's 0.1).
    pub size_weight: f64,
    /// Weight of the offset loss (CenterNet's 1).
    pub offset_weight: f64,
    /// Minimum IoU a box at the Gaussian's radius keeps with the object (CenterNet's 0.7).
    pub min_overlap: f64,
    /// Detections kept per image after peak picking (COCO's maxDets).
    pub top_k: usize,
    /// A classification run directory whose backbone initializes the detector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Training set from files instead of the synthetic canvases: `coco:DIR`
    /// (`DIR/annotations.json` and `DIR/images/`) or `voc:DIR` (`Annotations/`, `JPEGImages/`);
    /// images are resized to the canvas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_data: Option<String>,
    /// Test set from files (same forms); required with `train_data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_data: Option<String>,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            train_images: 2048,
            test_images: 256,
            canvas: 56,
            max_objects: 3,
            head_hidden: 64,
            size_weight: 0.1,
            offset_weight: 1.0,
            min_overlap: 0.7,
            top_k: 100,
            init: None,
            train_data: None,
            test_data: None,
        }
    }
}

impl DetectionConfig {
    /// Parse `detection.toml`.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The options as TOML.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }
}

/// One branch: `fc2(gelu(fc1(x)))` per position.
struct Branch {
    fc1: Linear,
    fc2: Linear,
}

impl Branch {
    fn new(ps: &ParamStore, dim: usize, hidden: usize, out: usize, bias: Init) -> Result<Self> {
        let fc1 = Linear::torch_default(&ps.pp("fc1"), dim, hidden, true)?;
        let fc2 = Linear::new(&ps.pp("fc2"), hidden, out, true, Init::TorchDefault, bias)?;
        Ok(Self { fc1, fc2 })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&ops::gelu_erf(&self.fc1.forward(x)?)?)
    }
}

/// The head's outputs for `B` images of `r = h·w` positions.
pub struct HeadOutput {
    /// Heatmap logits `[B, r, classes]`.
    pub heatmap: Tensor,
    /// Box width and height in cells `[B, r, 2]`.
    pub size: Tensor,
    /// Sub-cell offset of the center `[B, r, 2]`.
    pub offset: Tensor,
}

/// CenterNet's three branches (`hm`, `wh`, `reg`) on per-position embeddings.
pub struct CenterNetHead {
    heatmap: Branch,
    size: Branch,
    offset: Branch,
}

impl CenterNetHead {
    /// A head on `dim`-wide embeddings for `classes` classes, parameters under `ps`.
    pub fn new(ps: &ParamStore, dim: usize, hidden: usize, classes: usize) -> Result<Self> {
        let prior_bias = Init::Const(-((1.0 - PRIOR) / PRIOR).ln());
        let zero = Init::Const(0.0);
        Ok(Self {
            heatmap: Branch::new(&ps.pp("hm"), dim, hidden, classes, prior_bias)?,
            size: Branch::new(&ps.pp("wh"), dim, hidden, 2, zero)?,
            offset: Branch::new(&ps.pp("reg"), dim, hidden, 2, zero)?,
        })
    }

    /// Apply to dense embeddings `[B, r, D]`.
    pub fn forward(&self, dense: &Tensor) -> candle_core::Result<HeadOutput> {
        Ok(HeadOutput {
            heatmap: self.heatmap.forward(dense)?,
            size: self.size.forward(dense)?,
            offset: self.offset.forward(dense)?,
        })
    }
}

/// CenterNet's `gaussian_radius` (kept as CenterNet computes it, which differs from CornerNet's
/// derivation): the smallest of three quadratic roots for a `height × width` box (in cells) and
/// the IoU `min_overlap` a shifted box must keep.
pub fn gaussian_radius(height: f64, width: f64, min_overlap: f64) -> f64 {
    let disc = |a: f64, b: f64, c: f64| (b * b - 4.0 * a * c).sqrt();
    let (sum, area) = (height + width, height * width);
    // Both corners shifted outward or inward in one direction.
    let c1 = area * (1.0 - min_overlap) / (1.0 + min_overlap);
    let r1 = (sum - disc(1.0, sum, c1)) / 2.0;
    // Both corners shifted inward.
    let c2 = (1.0 - min_overlap) * area;
    let r2 = (2.0 * sum - disc(4.0, 2.0 * sum, c2)) / 8.0;
    // Both corners shifted outward.
    let (a3, b3) = (4.0 * min_overlap, -2.0 * min_overlap * sum);
    let r3 = (b3 + disc(a3, b3, (min_overlap - 1.0) * area)) / (2.0 * a3);
    r1.min(r2).min(r3)
}

/// CenterNet's `draw_umich_gaussian`: `map = max(map, exp(-(dx² + dy²) / (2σ²)))` within `radius`
/// of `(cx, cy)`, `σ = (2·radius + 1) / 6`, on a row-major `h × w` map.
pub fn draw_gaussian(
    map: &mut [f32],
    (h, w): (usize, usize),
    (cx, cy): (usize, usize),
    radius: usize,
) {
    let sigma = (2 * radius + 1) as f64 / 6.0;
    let r = radius as isize;
    for dy in -r..=r {
        for dx in -r..=r {
            let (x, y) = (cx as isize + dx, cy as isize + dy);
            if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
                continue;
            }
            let g = (-((dx * dx + dy * dy) as f64) / (2.0 * sigma * sigma)).exp();
            // numpy's `gaussian[gaussian < eps * gaussian.max()] = 0`
            let g = if g < f64::EPSILON { 0.0 } else { g as f32 };
            let cell = &mut map[y as usize * w + x as usize];
            *cell = cell.max(g);
        }
    }
}

/// Training targets of a batch on an `h × w` grid of `stride` pixels.
pub struct Targets {
    /// Gaussian-splatted centers `[B, r, classes]` (1 exactly at each center).
    pub heatmap: Tensor,
    /// Flat indices `b·r + cell` of the centers `[N]`.
    pub centers: Tensor,
    /// Box width and height in cells at the centers `[N, 2]`.
    pub size: Tensor,
    /// Sub-cell center offsets `[N, 2]`.
    pub offset: Tensor,
}

/// CenterNet targets of `boxes` (one list per image).
pub fn build_targets(
    boxes: &[&[ObjectBox]],
    (h, w): (usize, usize),
    stride: f64,
    classes: usize,
    min_overlap: f64,
    device: &Device,
) -> Result<Targets> {
    let r = h * w;
    let mut heat = vec![0f32; boxes.len() * r * classes];
    let (mut centers, mut size, mut offset) = (Vec::new(), Vec::new(), Vec::new());
    for (b, list) in boxes.iter().enumerate() {
        for ob in list.iter() {
            let [x, y, bw, bh] = ob.bbox.map(f64::from);
            let (cx, cy) = ((x + bw / 2.0) / stride, (y + bh / 2.0) / stride);
            let (ix, iy) = (
                (cx.floor() as usize).min(w - 1),
                (cy.floor() as usize).min(h - 1),
            );
            let (sw, sh) = (bw / stride, bh / stride);
            let radius = gaussian_radius(sh.ceil(), sw.ceil(), min_overlap).max(0.0) as usize;
            let mut plane = vec![0f32; r];
            let c = ob.class as usize;
            for (cell, v) in plane.iter_mut().enumerate() {
                *v = heat[(b * r + cell) * classes + c];
            }
            draw_gaussian(&mut plane, (h, w), (ix, iy), radius);
            for (cell, v) in plane.iter().enumerate() {
                heat[(b * r + cell) * classes + c] = *v;
            }
            centers.push((b * r + iy * w + ix) as u32);
            size.extend([sw as f32, sh as f32]);
            offset.extend([(cx - ix as f64) as f32, (cy - iy as f64) as f32]);
        }
    }
    let n = centers.len();
    Ok(Targets {
        heatmap: Tensor::from_vec(heat, (boxes.len(), r, classes), device)?,
        centers: Tensor::from_vec(centers, n, device)?,
        size: Tensor::from_vec(size, (n, 2), device)?,
        offset: Tensor::from_vec(offset, (n, 2), device)?,
    })
}

/// `log(1 + exp(x))`, stable: `relu(x) + log(1 + exp(-|x|))`.
fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// CenterNet's penalty-reduced focal loss (eq. 1, α = 2, β = 4) of heatmap logits against the
/// Gaussian targets, summed and divided by the number of centers (target exactly 1):
/// `-1/N Σ [(1-p)² log p  if y = 1;  (1-y)⁴ p² log(1-p)  otherwise]`. `log p` is computed as
/// `-softplus(-z)` (CenterNet clamps p to [1e-4, 1 - 1e-4] instead).
pub fn focal_loss(logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    let pos = target.eq(1f64)?.to_dtype(logits.dtype())?;
    let neg = (1.0 - &pos)?;
    let log_p = softplus(&logits.neg()?)?.neg()?;
    let log_1mp = softplus(logits)?.neg()?;
    let p = log_p.exp()?;
    let pos_loss = ((1.0 - &p)?.sqr()? * log_p)?.mul(&pos)?;
    let neg_weight = (1.0 - target)?.sqr()?.sqr()?.mul(&neg)?;
    let neg_loss = (p.sqr()? * log_1mp)?.mul(&neg_weight)?;
    let num_pos = pos.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    (pos_loss + neg_loss)?.sum_all()?.neg()? / num_pos.max(1.0)
}

/// CenterNet's `RegL1Loss`: `Σ |pred - target| / (2N + 1e-4)` over the `N` centers.
fn reg_l1(pred: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    let n = target.elem_count() as f64;
    (pred - target)?.abs()?.sum_all()? / (n + 1e-4)
}

/// The three loss terms and their weighted sum.
pub struct Losses {
    /// `hm + size_weight · wh + offset_weight · off`.
    pub total: Tensor,
    /// Focal loss of the heatmap.
    pub heatmap: f32,
    /// L1 loss of the sizes.
    pub size: f32,
    /// L1 loss of the offsets.
    pub offset: f32,
}

/// CenterNet's loss of `out` against `targets`.
pub fn centernet_loss(out: &HeadOutput, t: &Targets, cfg: &DetectionConfig) -> Result<Losses> {
    let hm = focal_loss(&out.heatmap, &t.heatmap)?;
    let at_centers = |x: &Tensor| -> candle_core::Result<Tensor> {
        let (b, r, c) = x.dims3()?;
        x.reshape((b * r, c))?.index_select(&t.centers, 0)
    };
    let total = if t.centers.elem_count() == 0 {
        hm.clone()
    } else {
        let wh = reg_l1(&at_centers(&out.size)?, &t.size)?;
        let off = reg_l1(&at_centers(&out.offset)?, &t.offset)?;
        let total = ((&hm + (&wh * cfg.size_weight)?)? + (&off * cfg.offset_weight)?)?;
        return Ok(Losses {
            heatmap: hm.to_scalar()?,
            size: wh.to_scalar()?,
            offset: off.to_scalar()?,
            total,
        });
    };
    Ok(Losses {
        heatmap: hm.to_scalar()?,
        size: 0.0,
        offset: 0.0,
        total,
    })
}

/// One decoded detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoded {
    /// Class index.
    pub class: usize,
    /// `[x, y, width, height]` in pixels.
    pub bbox: [f32; 4],
    /// Heatmap probability at the peak.
    pub score: f32,
}

/// Peaks of a `[r, classes]` probability map on an `h × w` grid: positions equal to the maximum
/// of their 3×3 neighbourhood in their class (CenterNet's `max_pool2d(3, stride 1, pad 1) ==
/// heat`), as `(score, cell, class)`.
pub fn peaks_3x3(heat: &[f32], (h, w): (usize, usize), classes: usize) -> Vec<(f32, usize, usize)> {
    let mut out = Vec::new();
    for y in 0..h {
        for x in 0..w {
            for c in 0..classes {
                let v = heat[(y * w + x) * classes + c];
                let mut is_max = true;
                for ny in y.saturating_sub(1)..(y + 2).min(h) {
                    for nx in x.saturating_sub(1)..(x + 2).min(w) {
                        is_max &= heat[(ny * w + nx) * classes + c] <= v;
                    }
                }
                if is_max {
                    out.push((v, y * w + x, c));
                }
            }
        }
    }
    out
}

/// Decode a batch of head outputs: sigmoid heatmap, 3×3 peaks, the `top_k` highest, each with
/// its regressed size and offset (no gradient).
pub fn decode(
    out: &HeadOutput,
    (h, w): (usize, usize),
    stride: f32,
    top_k: usize,
) -> Result<Vec<Vec<Decoded>>> {
    let heat = candle_core::Tensor::exp(&softplus(&out.heatmap.neg()?)?.neg()?)?;
    let heat: Vec<Vec<Vec<f32>>> = heat.to_dtype(DType::F32)?.to_vec3()?;
    let size: Vec<Vec<Vec<f32>>> = out.size.to_dtype(DType::F32)?.to_vec3()?;
    let offset: Vec<Vec<Vec<f32>>> = out.offset.to_dtype(DType::F32)?.to_vec3()?;
    let classes = out.heatmap.dim(D::Minus1)?;
    let mut all = Vec::with_capacity(heat.len());
    for (b, rows) in heat.iter().enumerate() {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let mut peaks = peaks_3x3(&flat, (h, w), classes);
        peaks.sort_by(|a, b| b.0.total_cmp(&a.0));
        peaks.truncate(top_k);
        let dets = peaks
            .into_iter()
            .map(|(score, cell, class)| {
                let (x, y) = ((cell % w) as f32, (cell / w) as f32);
                let (ox, oy) = (offset[b][cell][0], offset[b][cell][1]);
                let (bw, bh) = (
                    size[b][cell][0].max(0.0) * stride,
                    size[b][cell][1].max(0.0) * stride,
                );
                let (cx, cy) = ((x + ox) * stride, (y + oy) * stride);
                Decoded {
                    class,
                    bbox: [cx - bw / 2.0, cy - bh / 2.0, bw, bh],
                    score,
                }
            })
            .collect();
        all.push(dets);
    }
    Ok(all)
}

/// IoU of two `[x, y, w, h]` boxes.
fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let h = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    if w <= 0.0 || h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    i / (a[2] * a[3] + b[2] * b[3] - i)
}

/// Class-wise greedy NMS (torchvision's `batched_nms`): the indices of the boxes kept, highest
/// score first; a box is dropped when its IoU with a kept box of its class is above `threshold`.
pub fn nms_classwise(dets: &[Decoded], threshold: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..dets.len()).collect();
    order.sort_by(|&a, &b| dets[b].score.total_cmp(&dets[a].score));
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        let d = &dets[i];
        let suppressed = kept
            .iter()
            .any(|&k| dets[k].class == d.class && iou(&dets[k].bbox, &d.bbox) > threshold);
        if !suppressed {
            kept.push(i);
        }
    }
    kept
}

/// The COCO ground truth of a detection set: image ids `1..=N`, category ids `class + 1`.
pub fn coco_ground_truth(set: &DetectionSet) -> GroundTruth {
    let mut annotations = Vec::new();
    for (i, boxes) in set.boxes.iter().enumerate() {
        for b in boxes {
            annotations.push(GtBox {
                id: annotations.len() as i64 + 1,
                image_id: i as i64 + 1,
                category_id: b.class as i64 + 1,
                bbox: b.bbox.map(f64::from),
                area: Some(f64::from(b.bbox[2] * b.bbox[3])),
                iscrowd: false,
            });
        }
    }
    GroundTruth {
        images: (1..=set.len() as i64).map(|id| IdEntry { id }).collect(),
        annotations,
        categories: (1..=set.num_classes() as i64)
            .map(|id| IdEntry { id })
            .collect(),
    }
}

/// A backbone with a CenterNet head.
pub struct Detector {
    /// The backbone (with its input normalization).
    pub model: Model,
    /// The head's parameters (names `det_head.*`).
    pub head_params: ParamStore,
    /// The head.
    pub head: CenterNetHead,
    /// The token grid `(h, w)`.
    pub grid: (usize, usize),
    /// Pixels per cell.
    pub stride: f32,
}

impl Detector {
    /// Head outputs for images `[B, C, H, W]` in [0, 1].
    pub fn forward(&self, images: &Tensor, ctx: &mut Ctx) -> candle_core::Result<HeadOutput> {
        let features = self.model.forward_features(images, ctx)?;
        let dense = self.model.backbone().dense(&features)?;
        let (h, w) = self.grid;
        if dense.dim(1)? != h * w {
            candle_core::bail!(
                "the backbone gives {} positions for {:?} images, the head expects a {h}×{w} map",
                dense.dim(1)?,
                images.dims()
            );
        }
        self.head.forward(&dense)
    }

    /// Number of classes the head detects.
    pub fn num_classes(&self) -> usize {
        self.head.heatmap.fc2.weight().dims()[0]
    }

    /// Detections of every image of `set`, in COCO's results layout.
    pub fn detect(
        &self,
        set: &DetectionSet,
        batch: usize,
        top_k: usize,
        device: &Device,
    ) -> Result<Vec<Detection>> {
        let mut out = Vec::new();
        let indices: Vec<usize> = (0..set.len()).collect();
        for chunk in indices.chunks(batch.max(1)) {
            let x = images_tensor(set, chunk, device)?;
            let head = self.forward(&x, &mut Ctx::eval())?;
            for (k, dets) in decode(&head, self.grid, self.stride, top_k)?
                .into_iter()
                .enumerate()
            {
                out.extend(dets.into_iter().map(|d| Detection {
                    image_id: chunk[k] as i64 + 1,
                    category_id: d.class as i64 + 1,
                    bbox: d.bbox.map(f64::from),
                    score: f64::from(d.score),
                }));
            }
        }
        Ok(out)
    }

    /// COCO AP of the detections on `set`.
    pub fn evaluate(
        &self,
        set: &DetectionSet,
        batch: usize,
        top_k: usize,
        device: &Device,
    ) -> Result<CocoAp> {
        let dets = self.detect(set, batch, top_k, device)?;
        coco_ap(&coco_ground_truth(set), &dets).map_err(|e| RecipeError::Config(e.to_string()))
    }
}

fn images_tensor(set: &DetectionSet, indices: &[usize], device: &Device) -> Result<Tensor> {
    let shape = (indices.len(), set.channels, set.height, set.width);
    Ok(Tensor::from_vec(set.batch_pixels(indices), shape, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_radius_is_centernets() {
        // Values of CenterNet's `gaussian_radius((h, w), 0.7)` (src/lib/utils/image.py), run
        // once with numpy 2.
        for (h, w, want) in [
            (3.0, 3.0, 0.24500996019888666),
            (4.0, 2.0, 0.2154767421334871),
            (10.0, 25.0, 1.1465468371272252),
            (96.0, 40.0, 4.538160274687531),
        ] {
            let got = gaussian_radius(h, w, 0.7);
            assert!((got - want).abs() < 1e-12, "({h}, {w}): {got} vs {want}");
        }
    }

    #[test]
    fn gaussians_peak_at_one_and_keep_the_maximum() {
        let mut map = vec![0f32; 5 * 5];
        draw_gaussian(&mut map, (5, 5), (0, 0), 2);
        assert_eq!(map[0], 1.0);
        // σ = 5/6: one cell away exp(-1 / (2σ²)).
        let sigma = 5.0f64 / 6.0;
        assert!((f64::from(map[1]) - (-1.0 / (2.0 * sigma * sigma)).exp()).abs() < 1e-6);
        assert_eq!(map[3], 0.0);
        let before = map.clone();
        draw_gaussian(&mut map, (5, 5), (4, 4), 1);
        assert_eq!(map[24], 1.0);
        assert_eq!(map[0..5], before[0..5]);
    }

    #[test]
    fn targets_put_one_peak_per_object_with_its_size_and_offset() {
        let boxes = [ObjectBox {
            class: 1,
            bbox: [10.0, 3.0, 14.0, 7.0],
        }];
        let t = build_targets(&[&boxes], (4, 4), 8.0, 2, 0.7, &Device::Cpu).unwrap();
        let heat: Vec<f32> = t.heatmap.flatten_all().unwrap().to_vec1().unwrap();
        // Center (17, 6.5) pixels = cell (2, 0), offset (0.125, 0.8125).
        assert_eq!(heat.iter().filter(|v| **v == 1.0).count(), 1);
        assert_eq!(heat[2 * 2 + 1], 1.0);
        assert_eq!(t.centers.to_vec1::<u32>().unwrap(), vec![2]);
        assert_eq!(t.size.to_vec2::<f32>().unwrap(), vec![vec![1.75, 0.875]]);
        assert_eq!(
            t.offset.to_vec2::<f32>().unwrap(),
            vec![vec![0.125, 0.8125]]
        );
    }

    #[test]
    fn decoding_inverts_the_targets() {
        let (h, w) = (4, 4);
        let mut heat = vec![-9f32; h * w * 2];
        heat[5 * 2] = 4.0; // class 0 at cell (1, 1)
        let mut size = vec![0f32; h * w * 2];
        let mut offset = vec![0f32; h * w * 2];
        size[10..12].copy_from_slice(&[2.0, 1.0]);
        offset[10..12].copy_from_slice(&[0.5, 0.25]);
        let t = |v: Vec<f32>, c: usize| Tensor::from_vec(v, (1, h * w, c), &Device::Cpu).unwrap();
        let out = HeadOutput {
            heatmap: t(heat, 2),
            size: t(size, 2),
            offset: t(offset, 2),
        };
        let dets = decode(&out, (h, w), 8.0, 3).unwrap();
        assert_eq!(dets[0].len(), 3);
        let best = dets[0][0];
        assert_eq!(best.class, 0);
        // Center ((1 + 0.5)·8, (1 + 0.25)·8) = (12, 10), size (16, 8).
        assert_eq!(best.bbox, [4.0, 6.0, 16.0, 8.0]);
        assert!((best.score - 1.0 / (1.0 + (-4f32).exp())).abs() < 1e-6);
    }
}
