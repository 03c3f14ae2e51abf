//! `multimix infer`: logits (and features) of a batch of images from a checkpoint.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use multimix::backbones::{ArchConfig, Ctx, Model};
use multimix::checkpoint::load_model_at;
use multimix_hub::checkpoint::{load_safetensors, save_safetensors};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Options of `multimix infer`.
#[derive(Debug, Args)]
pub struct InferArgs {
    /// A run directory or `.safetensors` file of this project, or a timm directory
    /// (`config.json` + `model.safetensors`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// A safetensors file with the tensor `images`: float32 `[N, C, H, W]` in [0, 1].
    #[arg(long)]
    input: PathBuf,
    /// Where to write `logits` (and with --features `pre_logits` and `features`), atomically.
    #[arg(long)]
    output: PathBuf,
    /// Also write the pooled features `pre_logits` `[N, D]` and `features` in timm's layout
    /// (ViT `[N, prefix + T, D]`, CNN `[N, C, h, w]`).
    #[arg(long)]
    features: bool,
    /// Build the model for N×N inputs (a ViT's position embeddings are resampled).
    #[arg(long)]
    img_size: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// The tensor `images` of `args.input`, checked against the model.
fn read_images(args: &InferArgs, model: &Model, device: &candle_core::Device) -> Result<Tensor> {
    let input = args.input.display();
    let file = load_safetensors(&args.input, device).with_context(|| format!("--input {input}"))?;
    let Some(images) = file.tensors.get("images") else {
        let names: Vec<&str> = file.tensors.keys().map(String::as_str).collect();
        bail!(
            "--input {input} has no tensor `images` (it holds: {})",
            names.join(", ")
        );
    };
    if images.dtype() != DType::F32 {
        bail!(
            "--input {input}: `images` is {:?}, expected float32 in [0, 1]",
            images.dtype()
        );
    }
    let arch = &model.config().arch;
    let (n, c, h, w) = images.dims4().map_err(|_| {
        anyhow::anyhow!(
            "--input {input}: `images` has shape {:?}, expected [N, C, H, W]",
            images.dims()
        )
    })?;
    if n == 0 || c != arch.in_chans() {
        bail!(
            "--input {input}: `images` has shape {:?}, the model takes [N ≥ 1, {}, H, W]",
            images.dims(),
            arch.in_chans()
        );
    }
    if matches!(arch, ArchConfig::Vit(_)) && (h != arch.img_size() || w != arch.img_size()) {
        bail!(
            "--input {input}: images are {h}×{w}, the ViT is built for {s}×{s}: pass --img-size {h} (square images only)",
            s = arch.img_size()
        );
    }
    let (lo, hi) = (
        images.min_all()?.to_scalar::<f32>()?,
        images.max_all()?.to_scalar::<f32>()?,
    );
    if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) {
        bail!("--input {input}: `images` values span [{lo}, {hi}], expected pixels in [0, 1]");
    }
    Ok(images.clone())
}

/// Run the model over the images and write the outputs.
pub fn run(args: InferArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = super::device(&args.device)?;
    let model = load_model_at(&args.checkpoint, &device, args.img_size)
        .with_context(|| format!("--checkpoint {}", args.checkpoint.display()))?;
    let images = read_images(&args, &model, &device)?;
    let n = images.dim(0)?;
    let (mut logits, mut pooled, mut features) = (Vec::new(), Vec::new(), Vec::new());
    for start in (0..n).step_by(args.batch_size) {
        let batch = images.narrow(0, start, args.batch_size.min(n - start))?;
        let feats = model.forward_features(&batch, &mut Ctx::eval())?;
        let pre = model.backbone().pre_logits(&feats, &mut Ctx::eval())?;
        logits.push(model.backbone().head().forward(&pre)?);
        if args.features {
            pooled.push(pre);
            features.push(feats);
        }
    }
    let mut out = BTreeMap::from([("logits".to_string(), Tensor::cat(&logits, 0)?)]);
    if args.features {
        out.insert("pre_logits".into(), Tensor::cat(&pooled, 0)?);
        out.insert("features".into(), Tensor::cat(&features, 0)?);
    }
    let meta = BTreeMap::from([(
        "multimix.architecture".to_string(),
        model.config().architecture.clone(),
    )]);
    save_safetensors(&args.output, &out, &meta)
        .with_context(|| format!("--output {}", args.output.display()))?;
    println!(
        "wrote {} ({n} images, {} classes)",
        args.output.display(),
        model.config().num_classes()
    );
    Ok(())
}
