//! `multimix mixviz`: a PNG grid of what the mixing methods do to a batch — the images, their
//! partners, mixup and CutMix results with their λ, and (given a trained checkpoint) the
//! attention maps that weight dense MultiMix.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use multimix::checkpoint::load_model;
use multimix_augment::dense::gap_attention;
use multimix_augment::{AttnNorm, MixMode, MixPlan, Mixup, Pairing};
use multimix_backbones::Ctx;
use multimix_data::loader::{epoch_order, make_batch};
use multimix_data::{conform, Augment, DataSpec};
use multimix_eval::plot::grid::{ImageGrid, Tile};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;

/// Options of `multimix mixviz`.
#[derive(Debug, Args)]
pub struct MixvizArgs {
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// Data spec of the images (default: fashion-mnist-mini).
    #[arg(long, default_value = "fashion-mnist-mini")]
    data: String,
    /// A trained run: adds its dense MultiMix attention maps (gap query, softmax).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Images in the batch shown (even: partners are timm's flipped batch).
    #[arg(long, default_value_t = 8)]
    count: usize,
    /// Beta concentration α of mixup and CutMix.
    #[arg(long, default_value_t = 1.0)]
    mix_alpha: f64,
    /// Seed of the image choice and of λ.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// One λ and op per element, as timm's `elem` mode draws them.
fn plan(alpha: f64, cutmix: bool, shape: [usize; 4], rng: &mut ChaCha8Rng) -> Result<MixPlan> {
    let [b, _, h, w] = shape;
    let (mixup_alpha, cutmix_alpha) = if cutmix { (0.0, alpha) } else { (alpha, 0.0) };
    let mixup = Mixup {
        mixup_alpha,
        cutmix_alpha,
        mode: MixMode::Elem,
        pairing: Pairing::Flip,
        label_smoothing: 0.0,
        ..Mixup::default()
    };
    Ok(mixup.sample(b, h, w, rng)?)
}

/// Write the grid.
pub fn run(args: MixvizArgs) -> Result<()> {
    if args.count < 2 || args.count % 2 == 1 || args.count > 32 {
        bail!("--count {} must be even, between 2 and 32", args.count);
    }
    let device = Device::Cpu;
    let model = match &args.checkpoint {
        Some(dir) => Some(load_model(dir, &device)?),
        None => None,
    };
    let spec: DataSpec = args.data.parse()?;
    let splits = spec.load()?;
    let mut ds = splits.train.unwrap_or(splits.test);
    if let Some(m) = &model {
        let a = &m.config().arch;
        ds = conform(ds, (a.in_chans(), a.img_size(), a.img_size()))?;
    }
    if ds.len() < args.count {
        bail!(
            "data `{spec}` has {} images, fewer than --count {}",
            ds.len(),
            args.count
        );
    }
    let order = epoch_order(ds.len(), true, args.seed);
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let batch = make_batch(&ds, &order[..args.count], Augment::default(), &mut rng);
    let [b, c, h, w] = batch.shape;
    let per = c * h * w;
    let image = |v: &[f32], i: usize| v[i * per..(i + 1) * per].to_vec();
    let class = |i: usize| {
        let y = batch.labels[i] as usize;
        ds.class_names
            .get(y)
            .cloned()
            .unwrap_or_else(|| y.to_string())
    };
    let tiles = |v: &[f32], caption: &dyn Fn(usize) -> String| -> Vec<Tile> {
        (0..b)
            .map(|i| Tile::image(&image(v, i), (c, h, w), caption(i)))
            .collect()
    };
    let partners: Vec<f32> = (0..b).rev().flat_map(|i| image(&batch.images, i)).collect();
    let mut grid = ImageGrid::new(format!("mixing a batch of {spec}"), 3)
        .row("images", tiles(&batch.images, &|i| class(i)))
        .row("partners (flip)", tiles(&partners, &|i| class(b - 1 - i)));
    for (name, cutmix) in [("mixup", false), ("CutMix", true)] {
        let p = plan(args.mix_alpha, cutmix, batch.shape, &mut rng)?;
        let mixed = p.apply(&batch.images, batch.shape)?;
        let row_name = format!("{name} (alpha {})", args.mix_alpha);
        grid = grid.row(row_name, tiles(&mixed, &|i| format!("lam {:.2}", p.lam[i])));
    }
    if let Some(m) = &model {
        let x = Tensor::from_slice(&batch.images, batch.shape.to_vec(), &device)?;
        let z = m
            .backbone()
            .dense(&m.forward_features(&x, &mut Ctx::eval())?)?;
        let r = z.dim(1)?;
        let g = (r as f64).sqrt().round() as usize;
        if g * g != r {
            bail!("the model's {r} dense positions do not form a square grid");
        }
        let a = gap_attention(&z, AttnNorm::Softmax)?.to_vec2::<f32>()?;
        let tiles = (0..b)
            .map(|i| {
                let peak = a[i].iter().cloned().fold(0.0, f32::max);
                let caption = format!("max {peak:.2}");
                Tile::attention(
                    &image(&batch.images, i),
                    (c, h, w),
                    &a[i],
                    (g, g),
                    0.6,
                    caption,
                )
            })
            .collect();
        grid = grid.row("attention (gap, softmax)", tiles);
    }
    grid.save_png(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", args.out.display());
    Ok(())
}
