//! Batch loading: a deterministic order from a seed, light augmentation, and worker threads that
//! prepare the next batches while the model trains.
//!
//! The shuffle and each batch's augmentation draw from generators derived from one seed (the
//! caller draws it from the run's RNG at the start of an epoch), so the batches are the same
//! whatever the number and timing of the threads: worker `w` of `N` prepares batches
//! `w, w + N, …` into its own queue and the batches are taken from the queues in turn. The
//! workers share the data set (`Arc`); only the batches in flight are extra memory.

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
    /// Batches prepared ahead of the consumer (at least one per worker).
    pub prefetch: usize,
    /// Threads preparing batches (at least 1); the batches do not depend on it.
    pub workers: usize,
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
            workers: 1,
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
            workers: 1,
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

/// Batch `k` of an epoch: its images in `order`, augmented from its own stream of `seed`.
fn epoch_batch(ds: &Dataset, order: &[usize], k: usize, cfg: &LoaderConfig, seed: u64) -> Batch {
    let b = cfg.batch_size.max(1);
    let indices = &order[k * b..((k + 1) * b).min(order.len())];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(k as u64 + 1);
    let mut batch = make_batch(ds, indices, cfg.augment, &mut rng);
    if cfg.two_views {
        batch.second_view = Some(make_batch(ds, indices, cfg.augment, &mut rng).images);
    }
    batch
}

/// An epoch of batches, prepared on worker threads.
pub struct Batches {
    queues: Vec<Receiver<Batch>>,
    workers: Vec<Option<JoinHandle<()>>>,
    next: usize,
    count: usize,
}

impl Batches {
    /// Start an epoch over `ds` with order and augmentation drawn from `seed`.
    pub fn new(ds: Arc<Dataset>, cfg: LoaderConfig, seed: u64) -> Self {
        let order = Arc::new(epoch_order(ds.len(), cfg.shuffle, seed));
        let count = cfg.batches_per_epoch(ds.len());
        let n = cfg.workers.clamp(1, count.max(1));
        let depth = cfg.prefetch.div_ceil(n).max(1);
        let (queues, workers) = (0..n)
            .map(|w| {
                let (tx, rx) = sync_channel(depth);
                let (ds, order) = (Arc::clone(&ds), Arc::clone(&order));
                let worker = std::thread::spawn(move || {
                    for k in (w..count).step_by(n) {
                        if tx.send(epoch_batch(&ds, &order, k, &cfg, seed)).is_err() {
                            return; // the consumer stopped early
                        }
                    }
                });
                (rx, Some(worker))
            })
            .unzip();
        Self {
            queues,
            workers,
            next: 0,
            count,
        }
    }
}

impl Iterator for Batches {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        if self.next == self.count {
            return None;
        }
        let w = self.next % self.queues.len();
        self.next += 1;
        match self.queues[w].recv() {
            Ok(batch) => Some(batch),
            Err(_) => {
                // The worker ended without its batch: it panicked; pass the panic on.
                if let Some(Err(panic)) = self.workers[w].take().map(JoinHandle::join) {
                    std::panic::resume_unwind(panic);
                }
                unreachable!("a loader worker stopped before its last batch without panicking")
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.count - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches {}

impl Drop for Batches {
    fn drop(&mut self) {
        // Unblock the workers (their sends fail once the queues are gone), then join them.
        self.queues.clear();
        for w in self.workers.iter_mut().filter_map(Option::take) {
            let _ = w.join();
        }
    }
}
