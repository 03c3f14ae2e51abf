//! Batch loading: a deterministic order from a seed, light augmentation, and a thread that
//! prepares the next batches while the model trains.
//!
//! The shuffle and each batch's augmentation draw from generators derived from one seed (the
//! caller draws it from the run's RNG at the start of an epoch), so the batches are the same
//! whatever the timing of the threads.

use crate::dataset::Dataset;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Per-image training augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augment {
    /// Random crop of the original size from the image zero-padded by this many pixels (0: off).
    pub crop_padding: usize,
    /// Random horizontal flip with probability 1/2.
    pub hflip: bool,
}

/// A batch: images in [0, 1] as `[B, C, H, W]` f32 values, and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Pixels scaled to [0, 1], image after image.
    pub images: Vec<f32>,
    /// Labels.
    pub labels: Vec<u32>,
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
    /// A second, independently augmented view of the same images (self-distillation's teacher
    /// view), when the loader makes two views.
    pub second_view: Option<Vec<f32>>,
}

/// How to cut a data set into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Shuffle the order (from the seed) or keep the data set's order.
    pub shuffle: bool,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Augmentation applied to each image.
    pub augment: Augment,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Also make a second, independently augmented view of every batch.
    pub two_views: bool,
}

impl LoaderConfig {
    /// Training: shuffled, last incomplete batch dropped.
    pub fn train(batch_size: usize, augment: Augment) -> Self {
        Self {
            batch_size,
            shuffle: true,
            drop_last: true,
            augment,
            prefetch: 2,
            two_views: false,
        }
    }

    /// Evaluation: data set order, every image, no augmentation.
    pub fn eval(batch_size: usize) -> Self {
        Self {
            batch_size,
            shuffle: false,
            drop_last: false,
            augment: Augment::default(),
            prefetch: 2,
            two_views: false,
        }
    }

    /// Number of batches an epoch of `len` images gives.
    pub fn batches_per_epoch(&self, len: usize) -> usize {
        let b = self.batch_size.max(1);
        if self.drop_last {
            len / b
        } else {
            len.div_ceil(b)
        }
    }
}

/// The image order of an epoch: a seeded permutation or the identity.
pub fn epoch_order(len: usize, shuffle: bool, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    }
    order
}

/// Copy image `src` (`C × H × W` u8) into `dst` as [0, 1] floats, cropped from the zero-padded
/// image at offset `(dy, dx)` (in padded coordinates) and optionally mirrored.
fn write_image(
    src: &[u8],
    (c, h, w): (usize, usize, usize),
    pad: usize,
    (dy, dx): (usize, usize),
    flip: bool,
    dst: &mut [f32],
) {
    for ch in 0..c {
        for y in 0..h {
            let sy = (y + dy) as isize - pad as isize;
            for x in 0..w {
                let xx = if flip { w - 1 - x } else { x };
                let sx = (xx + dx) as isize - pad as isize;
                let inside = sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w;
                dst[(ch * h + y) * w + x] = if inside {
                    src[(ch * h + sy as usize) * w + sx as usize] as f32 / 255.0
                } else {
                    0.0
                };
            }
        }
    }
}

/// Assemble one batch of the images at `indices`, augmenting with `rng`.
pub fn make_batch(ds: &Dataset, indices: &[usize], augment: Augment, rng: &mut impl Rng) -> Batch {
    let n = ds.image_len();
    let shape = (ds.channels, ds.height, ds.width);
    let mut images = vec![0f32; indices.len() * n];
    for (dst, &i) in images.chunks_exact_mut(n).zip(indices) {
        let pad = augment.crop_padding;
        let offset = if pad > 0 {
            (rng.random_range(0..=2 * pad), rng.random_range(0..=2 * pad))
        } else {
            (0, 0)
        };
        let flip = augment.hflip && rng.random::<bool>();
        write_image(ds.image(i), shape, pad, offset, flip, dst);
    }
    Batch {
        images,
        labels: indices.iter().map(|&i| ds.labels[i]).collect(),
        shape: [indices.len(), ds.channels, ds.height, ds.width],
        second_view: None,
    }
}

/// An epoch of batches, prepared on a background thread.
pub struct Batches {
    rx: Receiver<Batch>,
    worker: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Batches {
    /// Start an epoch over `ds` with order and augmentation drawn from `seed`.
    pub fn new(ds: Arc<Dataset>, cfg: LoaderConfig, seed: u64) -> Self {
        let order = epoch_order(ds.len(), cfg.shuffle, seed);
        let count = cfg.batches_per_epoch(ds.len());
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let worker = std::thread::spawn(move || {
            for (k, indices) in order.chunks(cfg.batch_size.max(1)).take(count).enumerate() {
                // Batch k augments with its own stream of the epoch's generator.
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(k as u64 + 1);
                let mut batch = make_batch(&ds, indices, cfg.augment, &mut rng);
                if cfg.two_views {
                    batch.second_view =
                        Some(make_batch(&ds, indices, cfg.augment, &mut rng).images);
                }
                if tx.send(batch).is_err() {
                    return; // the consumer stopped early
                }
            }
        });
        Self {
            rx,
            worker: Some(worker),
            remaining: count,
        }
    }
}

impl Iterator for Batches {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        self.rx.recv().ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Batches {}

impl Drop for Batches {
    fn drop(&mut self) {
        // Unblock the worker (its sends fail once the receiver is gone), then join it.
        let (_, dead) = sync_channel(1);
        self.rx = dead;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
