//! The loader: order and augmentation fixed by the seed whatever the number of workers, every
//! image once per epoch, augmentations that are crops of the padded image or their mirror, and
//! a data set shared with the workers, never copied.

use multimix_data::{Augment, Batch, Batches, Dataset, LoaderConfig};
use std::sync::Arc;

/// 50 images 2×5×5 whose pixels encode (image, channel, y, x), labels `i % 7`.
fn toy() -> Arc<Dataset> {
    let (n, c, h, w) = (50, 2, 5, 5);
    let images = (0..n * c * h * w).map(|v| (v % 251) as u8 + 1).collect();
    let labels = (0..n as u32).map(|i| i % 7).collect();
    let names = (0..7).map(|i| i.to_string()).collect();
    Arc::new(Dataset::new("toy", images, labels, (c, h, w), 7, names).unwrap())
}

fn epoch(ds: &Arc<Dataset>, cfg: LoaderConfig, seed: u64) -> Vec<Batch> {
    Batches::new(Arc::clone(ds), cfg, seed).collect()
}

fn augmenting(workers: usize) -> LoaderConfig {
    LoaderConfig {
        workers,
        two_views: true,
        prefetch: 3,
        ..LoaderConfig::train(
            8,
            Augment {
                crop_padding: 2,
                hflip: true,
            },
        )
    }
}

#[test]
fn batches_depend_on_the_seed_only() {
    let ds = toy();
    let one = epoch(&ds, augmenting(1), 11);
    assert_eq!(one.len(), 6, "50 images, batches of 8, last one dropped");
    assert_eq!(one, epoch(&ds, augmenting(1), 11));
    for workers in [2, 3, 8] {
        assert_eq!(
            one,
            epoch(&ds, augmenting(workers), 11),
            "{workers} workers"
        );
    }
    let other = epoch(&ds, augmenting(2), 12);
    assert_ne!(
        one.iter().map(|b| b.labels.clone()).collect::<Vec<_>>(),
        other.iter().map(|b| b.labels.clone()).collect::<Vec<_>>()
    );
    // The two views are augmented independently.
    assert!(one
        .iter()
        .any(|b| b.second_view.as_ref() != Some(&b.images)));
}

#[test]
fn every_image_once_per_epoch_and_eval_keeps_the_order() {
    let ds = toy();
    let cfg = LoaderConfig {
        drop_last: false,
        workers: 3,
        ..LoaderConfig::train(8, Augment::default())
    };
    let batches = epoch(&ds, cfg, 5);
    assert_eq!(batches.len(), 7);
    assert_eq!(batches[6].shape, [2, 2, 5, 5]);
    // Without augmentation an image's first pixel tells which image it is.
    let n = ds.image_len();
    let mut seen: Vec<usize> = batches
        .iter()
        .flat_map(|b| b.images.chunks(n).map(|img| img[0]).collect::<Vec<_>>())
        .map(|first| {
            (0..ds.len())
                .find(|&i| ds.image(i)[0] as f32 / 255.0 == first)
                .unwrap()
        })
        .collect();
    assert_ne!(seen, (0..50).collect::<Vec<_>>(), "shuffled");
    seen.sort();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
    let eval = epoch(&ds, LoaderConfig::eval(16), 0);
    let labels: Vec<u32> = eval.iter().flat_map(|b| b.labels.clone()).collect();
    assert_eq!(labels, ds.labels);
}

/// Every transform random crop + flip can make of image `src`.
fn candidates(src: &[u8], (c, h, w): (usize, usize, usize), pad: usize) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for dy in 0..=2 * pad {
        for dx in 0..=2 * pad {
            for flip in [false, true] {
                let mut img = vec![0f32; c * h * w];
                for ch in 0..c {
                    for y in 0..h {
                        for x in 0..w {
                            let xs = if flip { w - 1 - x } else { x };
                            let (sy, sx) = (y + dy, xs + dx);
                            if sy >= pad && sx >= pad && sy - pad < h && sx - pad < w {
                                img[(ch * h + y) * w + x] =
                                    src[(ch * h + sy - pad) * w + sx - pad] as f32 / 255.0;
                            }
                        }
                    }
                }
                out.push(img);
            }
        }
    }
    out
}

#[test]
fn augmentations_are_padded_crops_or_their_mirror() {
    let ds = toy();
    let cfg = LoaderConfig {
        shuffle: false,
        ..augmenting(2)
    };
    let n = ds.image_len();
    let mut distinct = std::collections::HashSet::new();
    for (k, b) in epoch(&ds, cfg, 3).iter().enumerate() {
        for (j, img) in b.images.chunks(n).enumerate() {
            let all = candidates(ds.image(k * 8 + j), (2, 5, 5), 2);
            let which = all.iter().position(|c| c.as_slice() == img);
            assert!(
                which.is_some(),
                "batch {k} image {j} is no crop/flip of its source"
            );
            distinct.insert(which);
        }
    }
    assert!(distinct.len() > 10, "offsets and flips vary: {distinct:?}");
}

#[test]
fn workers_share_the_data_set_and_stop_when_dropped() {
    let ds = toy();
    let mut batches = Batches::new(Arc::clone(&ds), augmenting(3), 1);
    assert_eq!(
        Arc::strong_count(&ds),
        1 + 3,
        "shared by the 3 workers, not copied"
    );
    assert_eq!(batches.len(), 6);
    assert!(batches.next().is_some());
    assert_eq!(batches.len(), 5);
    drop(batches); // the workers are blocked on full queues: dropping must not hang
    assert_eq!(Arc::strong_count(&ds), 1);
}

#[test]
#[should_panic(expected = "range")]
fn a_worker_panic_reaches_the_consumer() {
    // Inconsistent public fields (more labels than images) make the worker panic; the epoch
    // must not silently end early.
    let mut ds = (*toy()).clone();
    ds.labels.extend([0; 10]);
    let cfg = LoaderConfig::eval(100);
    let _ = Batches::new(Arc::new(ds), cfg, 0).count();
}
