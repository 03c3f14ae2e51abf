//! Object detection data: images with labelled boxes; readers of COCO JSON (with an image
//! folder) and Pascal VOC XML; and a synthetic set built offline by placing Fashion-MNIST
//! objects on larger canvases (deterministic from the seed).

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

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

/// How files read from disk are shaped: every image is resized to `size × size` (bilinear,
/// boxes scaled with it) and converted to `channels` (1: luma, 3: RGB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    /// Side of the square images.
    pub size: usize,
    /// 1 or 3.
    pub channels: usize,
}

fn format_error(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Decode an image file and shape it (planes `C × size × size`); also its original width and
/// height.
fn load_image(path: &Path, shape: ImageShape) -> Result<(Vec<u8>, u32, u32)> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| format_error(path, format!("not a decodable PNG or JPEG image: {e}")))?;
    let (w, h) = (img.width(), img.height());
    let side = shape.size as u32;
    let img = img.resize_exact(side, side, image::imageops::FilterType::Triangle);
    let pixels = match shape.channels {
        1 => img.to_luma8().into_raw(),
        3 => {
            let hwc = img.to_rgb8().into_raw();
            let n = shape.size * shape.size;
            (0..3)
                .flat_map(|c| (0..n).map(move |i| (c, i)))
                .map(|(c, i)| hwc[i * 3 + c])
                .collect()
        }
        c => {
            return Err(DataError::Invalid(format!(
                "{c} channels requested: images are read as 1 (gray) or 3 (RGB) channels"
            )))
        }
    };
    Ok((pixels, w, h))
}

/// Scale a box of an image `w × h` to the `size × size` image.
fn scale_box(b: [f32; 4], w: u32, h: u32, size: usize) -> [f32; 4] {
    let (sx, sy) = (size as f32 / w as f32, size as f32 / h as f32);
    [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]
}

#[derive(serde::Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(serde::Deserialize)]
struct CocoImage {
    id: i64,
    file_name: String,
}

#[derive(serde::Deserialize)]
struct CocoAnnotation {
    image_id: i64,
    category_id: i64,
    bbox: [f32; 4],
    #[serde(default)]
    iscrowd: u8,
}

#[derive(serde::Deserialize)]
struct CocoCategory {
    id: i64,
    name: String,
}

/// A COCO detection set: the `annotations` JSON file (`images` with `file_name`, `annotations`
/// with `bbox` `[x, y, w, h]`, `categories`) and the folder of its images. Classes are the
/// categories in increasing id order; crowd annotations are left out (a [`DetectionSet`] has no
/// ignore regions).
pub fn read_coco(annotations: &Path, image_dir: &Path, shape: ImageShape) -> Result<DetectionSet> {
    let text = std::fs::read_to_string(annotations).map_err(|source| DataError::Io {
        path: annotations.to_path_buf(),
        source,
    })?;
    let file: CocoFile = serde_json::from_str(&text)
        .map_err(|e| format_error(annotations, format!("not a COCO annotations file: {e}")))?;
    let mut categories: Vec<&CocoCategory> = file.categories.iter().collect();
    categories.sort_by_key(|c| c.id);
    let class_of = |id: i64| categories.iter().position(|c| c.id == id);
    let mut images = Vec::new();
    let mut boxes = Vec::with_capacity(file.images.len());
    for im in &file.images {
        let path = image_dir.join(&im.file_name);
        let (pixels, w, h) = load_image(&path, shape)?;
        images.extend(pixels);
        let mut list = Vec::new();
        for a in file.annotations.iter().filter(|a| a.image_id == im.id) {
            let class = class_of(a.category_id).ok_or_else(|| {
                format_error(
                    annotations,
                    format!(
                        "an annotation of image {} has category {} which is not in `categories`",
                        im.id, a.category_id
                    ),
                )
            })?;
            if a.iscrowd == 0 {
                list.push(ObjectBox {
                    class: class as u32,
                    bbox: scale_box(a.bbox, w, h, shape.size),
                });
            }
        }
        boxes.push(list);
    }
    Ok(DetectionSet {
        name: format!("coco:{}", annotations.display()),
        images,
        boxes,
        channels: shape.channels,
        height: shape.size,
        width: shape.size,
        class_names: categories.iter().map(|c| c.name.clone()).collect(),
    })
}

/// The text inside each `<tag>…</tag>` (or `<tag attr="…">…</tag>`) of `xml`, outermost first.
/// Enough for Pascal VOC's annotation files, which have no repeated nesting of one tag.
fn xml_elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        // `<tag>` or `<tag ...>`, not `<tagname>`.
        if !after.starts_with('>') && !after.starts_with(char::is_whitespace) {
            rest = after;
            continue;
        }
        let Some(gt) = after.find('>') else { break };
        let body = &after[gt + 1..];
        let Some(end) = body.find(&close) else { break };
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    out
}

/// XML's five predefined entities decoded.
fn xml_text(s: &str) -> String {
    s.trim()
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn xml_number(xml: &str, tag: &str, path: &Path) -> Result<f32> {
    let text = xml_elements(xml, tag)
        .first()
        .map(|t| xml_text(t))
        .ok_or_else(|| format_error(path, format!("missing <{tag}>")))?;
    text.parse()
        .map_err(|_| format_error(path, format!("<{tag}> is `{text}`, not a number")))
}

/// A Pascal VOC detection set: `root/Annotations/*.xml` (in file-name order) and
/// `root/JPEGImages/`. Boxes are VOC's 1-based inclusive pixel corners, converted to
/// `[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]`; `difficult` objects are left out (as
/// VOC's evaluation ignores them); classes are the object names in sorted order.
pub fn read_voc(root: &Path, shape: ImageShape) -> Result<DetectionSet> {
    let dir = root.join("Annotations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| DataError::Io {
            path: dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(DataError::NotFound(format!(
            "{} holds no .xml annotation files: is {} a Pascal VOC folder?",
            dir.display(),
            root.display()
        )));
    }
    let mut parsed = Vec::with_capacity(files.len());
    for path in &files {
        let xml = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })?;
        let annotation = xml_elements(&xml, "annotation");
        let annotation = annotation.first().ok_or_else(|| {
            format_error(path, "no <annotation> element: not a VOC annotation file")
        })?;
        let filename = xml_elements(annotation, "filename")
            .first()
            .map(|t| xml_text(t))
            .ok_or_else(|| format_error(path, "missing <filename>"))?;
        let mut objects = Vec::new();
        for obj in xml_elements(annotation, "object") {
            let name = xml_elements(obj, "name")
                .first()
                .map(|t| xml_text(t))
                .ok_or_else(|| format_error(path, "an <object> without <name>"))?;
            let difficult = xml_elements(obj, "difficult")
                .first()
                .is_some_and(|d| xml_text(d) == "1");
            let bndbox = xml_elements(obj, "bndbox");
            let b = bndbox
                .first()
                .ok_or_else(|| format_error(path, format!("object `{name}` has no <bndbox>")))?;
            let [x0, y0, x1, y1] = ["xmin", "ymin", "xmax", "ymax"].map(|t| xml_number(b, t, path));
            let (x0, y0, x1, y1) = (x0?, y0?, x1?, y1?);
            if x1 < x0 || y1 < y0 {
                return Err(format_error(
                    path,
                    format!("object `{name}` has xmax < xmin or ymax < ymin"),
                ));
            }
            if !difficult {
                objects.push((name, [x0 - 1.0, y0 - 1.0, x1 - x0 + 1.0, y1 - y0 + 1.0]));
            }
        }
        parsed.push((filename, objects));
    }
    let mut class_names: Vec<String> = parsed
        .iter()
        .flat_map(|(_, o)| o.iter().map(|(n, _)| n.clone()))
        .collect();
    class_names.sort();
    class_names.dedup();
    let mut images = Vec::new();
    let mut boxes = Vec::with_capacity(parsed.len());
    for (filename, objects) in parsed {
        let (pixels, w, h) = load_image(&root.join("JPEGImages").join(&filename), shape)?;
        images.extend(pixels);
        boxes.push(
            objects
                .into_iter()
                .map(|(n, b)| ObjectBox {
                    class: class_names.iter().position(|c| *c == n).unwrap_or(0) as u32,
                    bbox: scale_box(b, w, h, shape.size),
                })
                .collect(),
        );
    }
    Ok(DetectionSet {
        name: format!("voc:{}", root.display()),
        images,
        boxes,
        channels: shape.channels,
        height: shape.size,
        width: shape.size,
        class_names,
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
