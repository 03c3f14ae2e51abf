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

use crate::config::TrainConfig;
use crate::error::{RecipeError, Result};
use crate::optim::{clip_grad_norm, NamedParam};
use crate::progress::Progress;
use crate::run::{EpochMetrics, RunDir, MODEL_FILE, REPORT_JSON};
use crate::train::{build_schedule, optimizer_for, META_MODEL_CONFIG};
use candle_core::{DType, Device, Tensor, D};
use multimix_backbones::layers::Linear;
use multimix_backbones::{ops, Ctx, Init, Model, ModelConfig, ParamStore};
use multimix_data::detection::{
    read_coco, read_voc, synthetic, DetectionSet, ImageShape, ObjectBox, SyntheticConfig,
};
use multimix_data::loader::epoch_order;
use multimix_data::DataSpec;
use multimix_eval::detection::{coco_ap, CocoAp, Detection, GroundTruth, GtBox, IdEntry};
use multimix_hub::checkpoint::{load_safetensors, save_safetensors};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Prior probability of an object at initialization: the heatmap bias is `-log((1 - π) / π)`
/// (CenterNet's -2.19).
const PRIOR: f64 = 0.1;

/// Options of the detection recipe (the rest comes from the [`TrainConfig`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionConfig {
    /// Training canvases of the synthetic set.
    pub train_images: usize,
    /// Test canvases (drawn with another seed).
    pub test_images: usize,
    /// Canvas side in pixels (a multiple of the patch size).
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
        self.head.forward(&self.model.backbone().dense(&features)?)
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

/// The backbone weights and configuration of a classification run directory (or a
/// `model.safetensors` file).
pub fn load_init(path: &Path, device: &Device) -> Result<(ModelConfig, BTreeMap<String, Tensor>)> {
    let file = if path.is_dir() {
        path.join(MODEL_FILE)
    } else {
        path.to_path_buf()
    };
    let ckpt = load_safetensors(&file, device)?;
    let json = ckpt.metadata.get(META_MODEL_CONFIG).ok_or_else(|| {
        RecipeError::Config(format!(
            "--init {}: {} has no `{META_MODEL_CONFIG}` metadata: not a multimix checkpoint",
            path.display(),
            file.display()
        ))
    })?;
    let cfg: ModelConfig = serde_json::from_str(json).map_err(|e| {
        RecipeError::Config(format!(
            "--init {}: invalid model configuration: {e}",
            file.display()
        ))
    })?;
    Ok((cfg, ckpt.tensors))
}

/// Read a detection set named `coco:DIR` or `voc:DIR`, images shaped to `shape`.
pub fn read_detection_spec(spec: &str, shape: ImageShape) -> Result<DetectionSet> {
    match spec.split_once(':') {
        Some(("coco", dir)) if !dir.is_empty() => {
            let dir = Path::new(dir);
            Ok(read_coco(&dir.join("annotations.json"), &dir.join("images"), shape)?)
        }
        Some(("voc", dir)) if !dir.is_empty() => Ok(read_voc(Path::new(dir), shape)?),
        _ => Err(RecipeError::Config(format!(
            "detection data `{spec}`: expected coco:DIR (DIR/annotations.json, DIR/images/) or voc:DIR"
        ))),
    }
}

/// The training and test sets: files when `det.train_data` is set, else synthetic canvases of
/// the data spec's training images (two seeds drawn from `rng`).
fn detection_sets(
    cfg: &TrainConfig,
    det: &DetectionConfig,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<(DetectionSet, DetectionSet)> {
    if let Some(train) = &det.train_data {
        let test = det.test_data.as_deref().ok_or_else(|| {
            RecipeError::Config(
                "detection training data from files needs test data too (--det-test-data)".into(),
            )
        })?;
        let channels = match &det.init {
            Some(p) => load_init(p, device)?.0.arch.in_chans(),
            None => ModelConfig::from_preset(&cfg.model.architecture, &cfg.model.args)?
                .arch
                .in_chans(),
        };
        let shape = ImageShape {
            size: det.canvas,
            channels,
        };
        let (train, test) = (
            read_detection_spec(train, shape)?,
            read_detection_spec(test, shape)?,
        );
        if train.class_names != test.class_names {
            return Err(RecipeError::Config(format!(
                "detection training classes {:?} differ from test classes {:?}",
                train.class_names, test.class_names
            )));
        }
        return Ok((train, test));
    }
    let spec: DataSpec = cfg.data.spec.parse()?;
    let source = spec.load()?.train.ok_or_else(|| {
        RecipeError::Config(format!(
            "data `{spec}` has no training split to draw objects from"
        ))
    })?;
    let synth = |count: usize, seed: u64| {
        let sc = SyntheticConfig {
            count,
            canvas: det.canvas,
            max_objects: det.max_objects,
            ..SyntheticConfig::default()
        };
        synthetic(&source, &sc, seed)
    };
    let train = synth(det.train_images, rng.next_u64())?;
    let test = synth(det.test_images, rng.next_u64())?;
    Ok((train, test))
}

/// Per-channel mean and std of a detection set's pixels in [0, 1].
fn mean_std(set: &DetectionSet) -> (Vec<f64>, Vec<f64>) {
    let hw = set.height * set.width;
    let (mut sum, mut sq) = (vec![0f64; set.channels], vec![0f64; set.channels]);
    for img in set.images.chunks_exact(set.image_len()) {
        for (c, plane) in img.chunks_exact(hw).enumerate() {
            for &p in plane {
                let v = f64::from(p) / 255.0;
                sum[c] += v;
                sq[c] += v * v;
            }
        }
    }
    let n = (set.len() * hw).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / n - m * m).max(1e-12).sqrt())
        .collect();
    (mean, std)
}

/// What a detection run leaves: the detector, its per-epoch metrics and the final APs.
pub struct DetectionOutcome {
    /// The trained detector.
    pub detector: Detector,
    /// Per-epoch metrics (`test_accuracy` holds the test AP50).
    pub metrics: Vec<EpochMetrics>,
    /// AP on the training canvases.
    pub train_ap: CocoAp,
    /// AP on the test canvases.
    pub test_ap: CocoAp,
}

/// The report of a detection run (`report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectionReport {
    /// "detection".
    pub task: String,
    /// The evaluation convention.
    pub convention: String,
    /// COCO AP@[0.5:0.95] on the test canvases.
    pub ap: f64,
    /// AP50 on the test canvases.
    pub ap50: f64,
    /// AP75 on the test canvases.
    pub ap75: f64,
    /// The same on the training canvases.
    pub train: CocoAp,
    /// The detection options.
    pub detection: DetectionConfig,
}

/// Build the detector: the backbone of `cfg.model` (or of `det.init`, its weights loaded and
/// its position embeddings resampled to the canvas) at the canvas size, and a new head drawn
/// from `rng`. `cfg.model` is set to the resolved backbone configuration.
pub fn build_detector(
    cfg: &mut TrainConfig,
    det: &DetectionConfig,
    train: &DetectionSet,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<Detector> {
    let init = det
        .init
        .as_deref()
        .map(|p| load_init(p, device))
        .transpose()?;
    let (architecture, mut args, norm) = match &init {
        Some((c, _)) => {
            let raw: multimix_backbones::RawModelConfig = c.clone().into();
            (
                raw.architecture,
                raw.args,
                Some((c.mean.clone(), c.std.clone())),
            )
        }
        None => (cfg.model.architecture.clone(), cfg.model.args.clone(), None),
    };
    args.insert("img_size".into(), det.canvas.into());
    args.insert("in_chans".into(), train.channels.into());
    args.entry("num_classes")
        .or_insert(train.num_classes().into());
    let model_cfg = ModelConfig::from_preset(&architecture, &args)?;
    let (mean, std) = match (norm, &cfg.model.mean, &cfg.model.std) {
        (Some(n), _, _) => n,
        (None, Some(m), Some(s)) => (m.clone(), s.clone()),
        _ => mean_std(train),
    };
    let model_cfg = model_cfg.with_normalization(mean, std)?;
    cfg.model = model_cfg.clone().into();
    let multimix_backbones::ArchConfig::Vit(vit) = &model_cfg.arch else {
        return Err(RecipeError::Config(format!(
            "--task detection needs a ViT backbone (its patch tokens form the map); `{architecture}` is not one"
        )));
    };
    let (patch, grid) = (vit.patch_size, vit.grid_size());
    if grid * patch != det.canvas {
        return Err(RecipeError::Config(format!(
            "detection canvas {} is not a multiple of the patch size {patch}",
            det.canvas
        )));
    }
    let model = Model::new(&model_cfg, device, rng.next_u64())?;
    if let Some((_, weights)) = init {
        // Everything but the classifier, position embeddings resampled to the canvas grid as
        // timm's checkpoint filter does (bicubic, antialiased).
        model.load_weights_new_head(&weights)?;
    }
    let dim = vit.embed_dim;
    let head_params = ParamStore::new(device, rng.next_u64());
    let head = CenterNetHead::new(
        &head_params.pp("det_head"),
        dim,
        det.head_hidden,
        train.num_classes(),
    )?;
    Ok(Detector {
        model,
        head_params,
        head,
        grid: (grid, grid),
        stride: patch as f32,
    })
}

/// Train a CenterNet detector on the synthetic Fashion-MNIST canvases (or on COCO / VOC files,
/// [`DetectionConfig::train_data`]): `cfg` gives the seed,
/// model, optimizer, schedule, epochs, steps and batch size; `det` the detection options. With
/// `run`, write `config.toml`, `metrics.jsonl`, `model.safetensors` (backbone and `det_head.*`)
/// and `report.json` with AP, AP50, AP75 on the test canvases.
pub fn train_detection(
    mut cfg: TrainConfig,
    det: &DetectionConfig,
    device: &Device,
    run: Option<&RunDir>,
    progress: &mut dyn Progress,
) -> Result<DetectionOutcome> {
    if cfg.train.batch_size == 0
        || cfg.train.epochs == 0
        || (det.train_images == 0 && det.train_data.is_none())
    {
        return Err(RecipeError::Config(
            "batch-size, epochs and training images must be at least 1".into(),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let (train, test) = detection_sets(&cfg, det, &mut rng, device)?;
    let detector = build_detector(&mut cfg, det, &train, &mut rng, device)?;
    let mut params: Vec<NamedParam> = detector
        .model
        .params()
        .trainable()
        .into_iter()
        .map(|(n, v)| NamedParam::new(n, v))
        .collect();
    params.extend(
        detector
            .head_params
            .trainable()
            .into_iter()
            .map(|(n, v)| NamedParam::new(n, v)),
    );
    let vars: Vec<_> = params.iter().map(|p| p.var.clone()).collect();
    let no_decay = detector.model.backbone().no_weight_decay();
    let no_decay: Vec<&str> = no_decay.iter().map(String::as_str).collect();
    let mut opt = optimizer_for(&cfg, params, &no_decay)?;
    let batch = cfg.train.batch_size.min(train.len());
    let steps_per_epoch = train.len().div_ceil(batch);
    let total_steps =
        (cfg.train.epochs * steps_per_epoch).min(cfg.train.max_steps.unwrap_or(usize::MAX));
    let schedule = build_schedule(&cfg, steps_per_epoch, total_steps);
    schedule
        .validate()
        .map_err(|e| RecipeError::Config(e.to_string()))?;
    if let Some(run) = run {
        run.write_config(&cfg)?;
    }
    let classes = train.num_classes();
    let (mut step, mut metrics) = (0usize, Vec::new());
    progress.start(total_steps, 0);
    for epoch in 1..=cfg.train.epochs {
        if step >= total_steps {
            break;
        }
        let order = epoch_order(train.len(), true, rng.next_u64());
        let (mut loss_sum, mut seen, mut lr, t0) = (0f64, 0usize, 0f64, std::time::Instant::now());
        for chunk in order.chunks(batch) {
            if step >= total_steps {
                break;
            }
            let x = images_tensor(&train, chunk, device)?;
            let boxes: Vec<&[ObjectBox]> =
                chunk.iter().map(|&i| train.boxes[i].as_slice()).collect();
            let targets = build_targets(
                &boxes,
                detector.grid,
                f64::from(detector.stride),
                classes,
                det.min_overlap,
                device,
            )?;
            let out = detector.forward(&x, &mut Ctx::train(&mut rng))?;
            let losses = centernet_loss(&out, &targets, det)?;
            let value = losses.total.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(RecipeError::NonFiniteLoss {
                    epoch,
                    step: step + 1,
                    loss: value,
                });
            }
            let mut grads = losses.total.backward()?;
            if let Some(max_norm) = cfg.optim.clip_grad {
                clip_grad_norm(&mut grads, &vars, max_norm)?;
            }
            lr = schedule.lr_at(step);
            opt.step(&grads, lr)?;
            step += 1;
            seen += chunk.len();
            loss_sum += f64::from(value) * chunk.len() as f64;
            progress.step(
                epoch,
                cfg.train.epochs,
                f64::from(value),
                seen as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            );
        }
        let m = EpochMetrics {
            epoch,
            step,
            train_loss: loss_sum / seen.max(1) as f64,
            test_accuracy: match test.is_empty() {
                true => 0.0,
                false => {
                    detector
                        .evaluate(&test, cfg.eval.batch_size, det.top_k, device)?
                        .ap50
                }
            },
            lr,
            images_per_sec: seen as f64 / t0.elapsed().as_secs_f64().max(1e-9),
        };
        progress.epoch(&m, cfg.train.epochs);
        metrics.push(m);
        if let Some(run) = run {
            run.write_metrics(&metrics)?;
        }
    }
    progress.finish();
    let train_ap = detector.evaluate(&train, cfg.eval.batch_size, det.top_k, device)?;
    let test_ap = match test.is_empty() {
        true => CocoAp {
            ap: -1.0,
            ap50: -1.0,
            ap75: -1.0,
        },
        false => detector.evaluate(&test, cfg.eval.batch_size, det.top_k, device)?,
    };
    if let Some(run) = run {
        let mut weights = detector.model.params().tensors()?;
        weights.extend(detector.head_params.tensors()?);
        let config_json = serde_json::to_string(detector.model.config())
            .map_err(|e| RecipeError::Config(e.to_string()))?;
        let meta = BTreeMap::from([(META_MODEL_CONFIG.to_string(), config_json)]);
        save_safetensors(&run.file(MODEL_FILE), &weights, &meta)?;
        let report = DetectionReport {
            task: "detection".into(),
            convention: "COCO bbox AP as pycocotools: IoU 0.5:0.05:0.95, 101-point recall, maxDets 100, area all; test canvases".into(),
            ap: test_ap.ap,
            ap50: test_ap.ap50,
            ap75: test_ap.ap75,
            train: train_ap,
            detection: det.clone(),
        };
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| RecipeError::Config(e.to_string()))?;
        run.write(REPORT_JSON, json.as_bytes())?;
    }
    Ok(DetectionOutcome {
        detector,
        metrics,
        train_ap,
        test_ap,
    })
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
