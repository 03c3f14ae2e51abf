//! COCO box AP exactly as pycocotools' `COCOeval` (iouType "bbox") computes it.
//!
//! Defaults of `pycocotools.cocoeval.Params`: IoU thresholds `0.5:0.05:0.95` (numpy's
//! `linspace`, so the same floats), 101 recall thresholds `0:0.01:1`, at most 100 detections per
//! image, area range "all" (`[0, 1e10]`). Per image and category the detections, sorted by score
//! (stable), are matched greedily to the best unmatched ground truth; crowd annotations are
//! ignored ground truth that can match several detections (IoU over the detection's area).
//! Per category the detections of all images are sorted by score (stable, images in id order),
//! precision is made monotone (the envelope) and read at the recall thresholds (0 beyond the last
//! recall reached). Categories without ground truth have precision -1 and are left out of the
//! mean, as in `COCOeval.summarize`; when nothing is left the AP is -1.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Number of IoU thresholds (`0.5:0.05:0.95`).
pub const NUM_IOU_THRESHOLDS: usize = 10;
/// Number of recall thresholds (`0:0.01:1`).
pub const NUM_RECALL_THRESHOLDS: usize = 101;
/// Detections per image kept (`maxDets[-1]`), the highest scores first.
pub const MAX_DETS: usize = 100;
/// The area range "all" (`[0, 1e5²]`).
const AREA_ALL: [f64; 2] = [0.0, 1e10];

/// Errors of COCO files and of the evaluation.
#[derive(Debug, thiserror::Error)]
pub enum DetectionError {
    /// The text is not the JSON layout expected.
    #[error("not a COCO {what} file: {message}")]
    Json {
        /// "ground-truth" or "results".
        what: &'static str,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value that is well-formed JSON but cannot be right.
    #[error("{0}")]
    Invalid(String),
}

/// One ground-truth box (a COCO `annotations` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GtBox {
    /// Annotation id.
    pub id: i64,
    /// Image id.
    pub image_id: i64,
    /// Category id.
    pub category_id: i64,
    /// `[x, y, width, height]` in pixels.
    pub bbox: [f64; 4],
    /// Area used for the area ranges (the box's `w·h` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<f64>,
    /// Crowd region: ignored ground truth.
    #[serde(default, deserialize_with = "flag")]
    pub iscrowd: bool,
}

/// `iscrowd` as COCO writes it: 0 or 1 (or a boolean).
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Int(i64),
    }
    match Flag::deserialize(d)? {
        Flag::Bool(b) => Ok(b),
        Flag::Int(i) => Ok(i != 0),
    }
}

/// One detection (an entry of a COCO results file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Image id.
    pub image_id: i64,
    /// Category id.
    pub category_id: i64,
    /// `[x, y, width, height]` in pixels.
    pub bbox: [f64; 4],
    /// Confidence; higher first.
    pub score: f64,
}

/// An id entry of `images` or `categories`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdEntry {
    /// The id.
    pub id: i64,
}

/// A COCO ground-truth file: the images, the categories and the annotations (other keys are
/// ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    /// The images evaluated (all of them, with or without annotations).
    pub images: Vec<IdEntry>,
    /// The annotations.
    pub annotations: Vec<GtBox>,
    /// The categories evaluated.
    pub categories: Vec<IdEntry>,
}

/// AP@[0.5:0.95], AP50 and AP75 (`COCOeval.stats[0..3]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CocoAp {
    /// Mean AP over IoU 0.5:0.05:0.95.
    pub ap: f64,
    /// AP at IoU 0.5.
    pub ap50: f64,
    /// AP at IoU 0.75.
    pub ap75: f64,
}

fn check_box(bbox: &[f64; 4], what: &str) -> Result<(), DetectionError> {
    if bbox.iter().any(|v| !v.is_finite()) || bbox[2] < 0.0 || bbox[3] < 0.0 {
        return Err(DetectionError::Invalid(format!(
            "{what} has bbox {bbox:?}: expected finite [x, y, width, height] with width, height >= 0"
        )));
    }
    Ok(())
}

impl GroundTruth {
    /// Parse a COCO ground-truth JSON file's text and check its ids and boxes.
    pub fn from_json(text: &str) -> Result<Self, DetectionError> {
        let gt: Self = serde_json::from_str(text).map_err(|e| DetectionError::Json {
            what: "ground-truth",
            message: e.to_string(),
        })?;
        gt.validate()?;
        Ok(gt)
    }

    /// Check that annotations name known images and categories, with valid boxes.
    pub fn validate(&self) -> Result<(), DetectionError> {
        let images: BTreeSet<i64> = self.images.iter().map(|i| i.id).collect();
        let cats: BTreeSet<i64> = self.categories.iter().map(|c| c.id).collect();
        for a in &self.annotations {
            let what = format!("annotation {}", a.id);
            if !images.contains(&a.image_id) {
                return Err(DetectionError::Invalid(format!(
                    "{what} refers to image {} which is not in `images`",
                    a.image_id
                )));
            }
            if !cats.contains(&a.category_id) {
                return Err(DetectionError::Invalid(format!(
                    "{what} refers to category {} which is not in `categories`",
                    a.category_id
                )));
            }
            check_box(&a.bbox, &what)?;
        }
        Ok(())
    }
}

/// Parse a COCO results file's text (a list of `{image_id, category_id, bbox, score}`).
pub fn parse_results(text: &str) -> Result<Vec<Detection>, DetectionError> {
    let dets: Vec<Detection> = serde_json::from_str(text).map_err(|e| DetectionError::Json {
        what: "results",
        message: e.to_string(),
    })?;
    for (i, d) in dets.iter().enumerate() {
        let what = format!("detection {i}");
        check_box(&d.bbox, &what)?;
        if !d.score.is_finite() {
            return Err(DetectionError::Invalid(format!(
                "{what} has score {}: expected a finite number",
                d.score
            )));
        }
    }
    Ok(dets)
}

/// The IoU thresholds as `np.linspace(.5, 0.95, 10)` computes them.
pub fn iou_thresholds() -> [f64; NUM_IOU_THRESHOLDS] {
    linspace(0.5, 0.95)
}

/// The recall thresholds as `np.linspace(.0, 1.00, 101)` computes them.
pub fn recall_thresholds() -> [f64; NUM_RECALL_THRESHOLDS] {
    linspace(0.0, 1.0)
}

/// numpy's `linspace(start, stop, N)`: `i · step + start`, the last value set to `stop`.
fn linspace<const N: usize>(start: f64, stop: f64) -> [f64; N] {
    let step = (stop - start) / (N - 1) as f64;
    let mut out = [0.0; N];
    for (i, v) in out.iter_mut().enumerate() {
        *v = i as f64 * step + start;
    }
    out[N - 1] = stop;
    out
}

/// IoU of boxes `[x, y, w, h]` as pycocotools' `bbIou`; for a crowd `g` the union is `d`'s area.
pub fn box_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[0] + d[2]).min(g[0] + g[2]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[1] + d[3]).min(g[1] + g[3]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let (da, ga, i) = (d[2] * d[3], g[2] * g[3], w * h);
    let u = if crowd { da } else { da + ga - i };
    i / u
}

/// The outcome of one image and category (`COCOeval.evaluateImg`): per detection, sorted by
/// score, its score and per IoU threshold whether it matched and whether it is ignored; and how
/// many ground truths count (not ignored).
struct ImageEval {
    scores: Vec<f64>,
    matched: Vec<[bool; NUM_IOU_THRESHOLDS]>,
    ignored: Vec<[bool; NUM_IOU_THRESHOLDS]>,
    num_positive: usize,
}

/// Greedy matching of one image and category (`COCOeval.evaluateImg` with area "all").
fn evaluate_image(gts: &[&GtBox], dts: &[&Detection], thresholds: &[f64]) -> ImageEval {
    let in_range = |a: f64| (AREA_ALL[0]..=AREA_ALL[1]).contains(&a);
    let ignore = |g: &GtBox| g.iscrowd || !in_range(g.area.unwrap_or(g.bbox[2] * g.bbox[3]));
    // Ground truth not ignored first (a stable sort, as numpy's mergesort).
    let mut gts: Vec<&GtBox> = gts.to_vec();
    gts.sort_by_key(|g| ignore(g));
    let gt_ignore: Vec<bool> = gts.iter().map(|g| ignore(g)).collect();
    let mut dts: Vec<&Detection> = dts.to_vec();
    dts.sort_by(|a, b| b.score.total_cmp(&a.score));
    dts.truncate(MAX_DETS);
    let ious: Vec<Vec<f64>> = dts
        .iter()
        .map(|d| {
            gts.iter()
                .map(|g| box_iou(&d.bbox, &g.bbox, g.iscrowd))
                .collect()
        })
        .collect();
    let mut matched = vec![[false; NUM_IOU_THRESHOLDS]; dts.len()];
    let mut ignored = vec![[false; NUM_IOU_THRESHOLDS]; dts.len()];
    for (t, &thr) in thresholds.iter().enumerate() {
        let mut gt_taken = vec![false; gts.len()];
        for (di, d) in dts.iter().enumerate() {
            let mut best = thr.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for (gi, g) in gts.iter().enumerate() {
                if gt_taken[gi] && !g.iscrowd {
                    continue;
                }
                // Once matched to a real ground truth, stop at the ignored ones (sorted last).
                if m.is_some_and(|m| !gt_ignore[m]) && gt_ignore[gi] {
                    break;
                }
                if ious[di][gi] < best {
                    continue;
                }
                best = ious[di][gi];
                m = Some(gi);
            }
            if let Some(m) = m {
                ignored[di][t] = gt_ignore[m];
                // pycocotools stores the ground truth's id and tests it for truth: an id of 0
                // counts as no match.
                matched[di][t] = gts[m].id != 0;
                gt_taken[m] = true;
            }
            if !matched[di][t] && !in_range(d.bbox[2] * d.bbox[3]) {
                ignored[di][t] = true;
            }
        }
    }
    ImageEval {
        scores: dts.iter().map(|d| d.score).collect(),
        matched,
        ignored,
        num_positive: gt_ignore.iter().filter(|i| !**i).count(),
    }
}

/// Precision at the recall thresholds for one IoU threshold (`COCOeval.accumulate`): `None` when
/// the category has no ground truth that counts.
fn precision_curve(
    ranked: &[(f64, bool, bool)],
    num_positive: usize,
    recall_thrs: &[f64],
) -> Vec<f64> {
    let (mut tp, mut fp) = (0.0f64, 0.0f64);
    let mut recall = Vec::with_capacity(ranked.len());
    let mut precision = Vec::with_capacity(ranked.len());
    for &(_, matched, ignored) in ranked {
        if ignored {
            // Neither a true nor a false positive: the sums stay, the point repeats.
        } else if matched {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        recall.push(tp / num_positive as f64);
        precision.push(tp / (fp + tp + f64::EPSILON));
    }
    // The envelope: precision made non-increasing from the right.
    for i in (1..precision.len()).rev() {
        if precision[i] > precision[i - 1] {
            precision[i - 1] = precision[i];
        }
    }
    recall_thrs
        .iter()
        .map(|&r| {
            // np.searchsorted(recall, r, side="left")
            let k = recall.partition_point(|&x| x < r);
            precision.get(k).copied().unwrap_or(0.0)
        })
        .collect()
}

/// Mean of the entries above -1 (`COCOeval.summarize`), or -1 when there are none.
fn mean_valid<'a>(values: impl Iterator<Item = &'a f64>) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for &v in values.filter(|v| **v > -1.0) {
        sum += v;
        n += 1;
    }
    if n == 0 {
        -1.0
    } else {
        sum / n as f64
    }
}

/// COCO AP@[0.5:0.95], AP50 and AP75 of `dets` against `gt`, as `COCOeval(..., "bbox")`
/// followed by `evaluate()`, `accumulate()`, `summarize()`. Detections of categories not in
/// `gt.categories` are not evaluated; detections of images not in `gt.images` are an error (as
/// `COCO.loadRes` refuses them).
pub fn coco_ap(gt: &GroundTruth, dets: &[Detection]) -> Result<CocoAp, DetectionError> {
    let image_ids: BTreeSet<i64> = gt.images.iter().map(|i| i.id).collect();
    let cat_ids: BTreeSet<i64> = gt.categories.iter().map(|c| c.id).collect();
    if let Some(d) = dets.iter().find(|d| !image_ids.contains(&d.image_id)) {
        return Err(DetectionError::Invalid(format!(
            "a detection refers to image {} which is not in the ground truth's `images`",
            d.image_id
        )));
    }
    let mut gt_by: BTreeMap<(i64, i64), Vec<&GtBox>> = BTreeMap::new();
    for a in &gt.annotations {
        gt_by
            .entry((a.category_id, a.image_id))
            .or_default()
            .push(a);
    }
    let mut dt_by: BTreeMap<(i64, i64), Vec<&Detection>> = BTreeMap::new();
    for d in dets.iter().filter(|d| cat_ids.contains(&d.category_id)) {
        dt_by
            .entry((d.category_id, d.image_id))
            .or_default()
            .push(d);
    }
    let thresholds = iou_thresholds();
    let recall_thrs = recall_thresholds();
    // precision[t][k][r], -1 for categories without ground truth that counts.
    let mut precision =
        vec![vec![vec![-1.0; NUM_RECALL_THRESHOLDS]; cat_ids.len()]; thresholds.len()];
    for (k, &cat) in cat_ids.iter().enumerate() {
        let mut evals = Vec::new();
        for &img in &image_ids {
            let g = gt_by.get(&(cat, img)).map(Vec::as_slice).unwrap_or(&[]);
            let d = dt_by.get(&(cat, img)).map(Vec::as_slice).unwrap_or(&[]);
            if !g.is_empty() || !d.is_empty() {
                evals.push(evaluate_image(g, d, &thresholds));
            }
        }
        let num_positive: usize = evals.iter().map(|e| e.num_positive).sum();
        if num_positive == 0 {
            continue;
        }
        for (t, row) in precision.iter_mut().enumerate() {
            let mut ranked: Vec<(f64, bool, bool)> = evals
                .iter()
                .flat_map(|e| {
                    (0..e.scores.len())
                        .map(move |i| (e.scores[i], e.matched[i][t], e.ignored[i][t]))
                })
                .collect();
            // np.argsort(-scores, kind="mergesort"): stable, highest first.
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
            row[k] = precision_curve(&ranked, num_positive, &recall_thrs);
        }
    }
    let at = |t: usize| mean_valid(precision[t].iter().flatten());
    Ok(CocoAp {
        ap: mean_valid(precision.iter().flatten().flatten()),
        ap50: at(0),
        ap75: at(5),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_numpys() {
        let t = iou_thresholds();
        assert_eq!(t[0], 0.5);
        assert_eq!(t[5], 0.75);
        assert_eq!(t[9], 0.95);
        assert_eq!(recall_thresholds()[100], 1.0);
    }

    #[test]
    fn crowd_iou_divides_by_the_detection_area() {
        let d = [0.0, 0.0, 2.0, 2.0];
        let g = [1.0, 0.0, 4.0, 2.0];
        assert!((box_iou(&d, &g, false) - 2.0 / 10.0).abs() < 1e-12);
        assert!((box_iou(&d, &g, true) - 0.5).abs() < 1e-12);
        assert_eq!(box_iou(&d, &[5.0, 5.0, 1.0, 1.0], false), 0.0);
    }

    #[test]
    fn perfect_detections_give_ap_one_and_no_ground_truth_gives_minus_one() {
        let gt = GroundTruth {
            images: vec![IdEntry { id: 1 }, IdEntry { id: 2 }],
            annotations: vec![GtBox {
                id: 1,
                image_id: 1,
                category_id: 3,
                bbox: [1.0, 2.0, 5.0, 6.0],
                area: None,
                iscrowd: false,
            }],
            categories: vec![IdEntry { id: 3 }],
        };
        let det = Detection {
            image_id: 1,
            category_id: 3,
            bbox: [1.0, 2.0, 5.0, 6.0],
            score: 0.9,
        };
        let ap = coco_ap(&gt, std::slice::from_ref(&det)).unwrap();
        // Precision is tp / (tp + fp + eps), as in pycocotools: 1 up to rounding.
        for v in [ap.ap, ap.ap50, ap.ap75] {
            assert!((v - 1.0).abs() < 1e-12, "{v}");
        }
        let empty = GroundTruth {
            annotations: vec![],
            ..gt.clone()
        };
        assert_eq!(
            coco_ap(&empty, std::slice::from_ref(&det)).unwrap().ap,
            -1.0
        );
        let stranger = Detection { image_id: 9, ..det };
        assert!(coco_ap(&gt, &[stranger]).is_err());
    }
}
