//! An in-memory image classification data set, stored once as `u8`.

use crate::error::{DataError, Result};

/// Images `[N, C, H, W]` as `u8` (decoded once, converted to `f32` per batch) with labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// A short name (the data spec it came from, with the split).
    pub name: String,
    /// Pixels, image after image, each `C × H × W` row-major.
    pub images: Vec<u8>,
    /// One label per image, `< num_classes`.
    pub labels: Vec<u32>,
    /// Channels per image.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Class names, `num_classes` of them.
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Build a data set, checking that sizes and labels agree.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: impl Into<String>,
        images: Vec<u8>,
        labels: Vec<u32>,
        (channels, height, width): (usize, usize, usize),
        num_classes: usize,
        class_names: Vec<String>,
    ) -> Result<Self> {
        let name = name.into();
        let per = channels * height * width;
        if per == 0 || images.len() != labels.len() * per {
            return Err(DataError::Invalid(format!(
                "{name}: {} bytes of pixels do not hold {} images of {channels}x{height}x{width}",
                images.len(),
                labels.len()
            )));
        }
        if let Some(bad) = labels.iter().find(|&&y| y as usize >= num_classes) {
            return Err(DataError::Invalid(format!(
                "{name}: label {bad} is out of range for {num_classes} classes"
            )));
        }
        if class_names.len() != num_classes {
            return Err(DataError::Invalid(format!(
                "{name}: {} class names for {num_classes} classes",
                class_names.len()
            )));
        }
        Ok(Self {
            name,
            images,
            labels,
            channels,
            height,
            width,
            num_classes,
            class_names,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the data set has no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image (`C·H·W`).
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1] (population std).
    pub fn mean_std(&self) -> (Vec<f64>, Vec<f64>) {
        let hw = self.height * self.width;
        let mut sum = vec![0f64; self.channels];
        let mut sq = vec![0f64; self.channels];
        for img in self.images.chunks_exact(self.image_len()) {
            for (c, plane) in img.chunks_exact(hw).enumerate() {
                for &p in plane {
                    let v = p as f64 / 255.0;
                    sum[c] += v;
                    sq[c] += v * v;
                }
            }
        }
        let count = (self.len() * hw).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| (q / count - m * m).max(0.0).sqrt())
            .collect();
        (mean, std)
    }
}
