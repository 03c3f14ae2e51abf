//! Download a zoo entry from the Hugging Face hub, load it, and classify an image.
//!
//! ```sh
//! cargo run --release --example download_pretrained -- [ZOO_NAME] [IMAGE.ppm]
//! ```
//!
//! `ZOO_NAME` defaults to timm's ViT-Tiny (`multimix zoo list` shows the others whose
//! architecture this build has). The image is a binary PPM (`P6`, e.g. `convert cat.jpg cat.ppm`);
//! without one, a synthetic gradient is classified. The image is resized (bilinear, shorter side
//! to `input_size / crop_pct`) and center-cropped as timm's evaluation transform does (timm
//! resizes bicubically, so scores differ slightly from timm's). The hub is reached as configured
//! by `HF_ENDPOINT`, `HF_HOME`, `HF_TOKEN` and `HF_HUB_OFFLINE`.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use multimix::backbones::Ctx;
use multimix::checkpoint::load_model;
use multimix::hub::{Hub, HubOptions, TimmConfig, Zoo};
use std::path::Path;

/// An RGB image, row-major `[H, W, 3]`, values in [0, 1].
struct Image {
    height: usize,
    width: usize,
    pixels: Vec<f32>,
}

/// The next whitespace-separated header token of a PPM file, skipping `#` comments.
fn ppm_token(bytes: &[u8], pos: &mut usize) -> Result<usize> {
    loop {
        while *pos < bytes.len() && bytes[*pos].is_ascii_whitespace() {
            *pos += 1;
        }
        if bytes.get(*pos) == Some(&b'#') {
            while *pos < bytes.len() && bytes[*pos] != b'\n' {
                *pos += 1;
            }
        } else {
            break;
        }
    }
    let start = *pos;
    while *pos < bytes.len() && bytes[*pos].is_ascii_digit() {
        *pos += 1;
    }
    std::str::from_utf8(&bytes[start..*pos])?
        .parse()
        .context("malformed PPM header")
}

/// Read a binary 8-bit PPM (`P6`).
fn read_ppm(path: &Path) -> Result<Image> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if !bytes.starts_with(b"P6") {
        bail!("{}: not a binary PPM (P6) image", path.display());
    }
    let mut pos = 2;
    let width = ppm_token(&bytes, &mut pos)?;
    let height = ppm_token(&bytes, &mut pos)?;
    let max = ppm_token(&bytes, &mut pos)?;
    if max == 0 || max > 255 {
        bail!("{}: only 8-bit PPM images are read", path.display());
    }
    let data = bytes.get(pos + 1..).unwrap_or_default();
    if data.len() < width * height * 3 {
        bail!("{}: truncated PPM image", path.display());
    }
    let pixels = data[..width * height * 3]
        .iter()
        .map(|&v| v as f32 / max as f32)
        .collect();
    Ok(Image {
        height,
        width,
        pixels,
    })
}

/// A synthetic 256×256 image: red grows to the right, green downwards.
fn gradient() -> Image {
    let n = 256;
    let mut pixels = Vec::with_capacity(n * n * 3);
    for y in 0..n {
        for x in 0..n {
            pixels.extend([x as f32 / 255.0, y as f32 / 255.0, 0.5]);
        }
    }
    Image {
        height: n,
        width: n,
        pixels,
    }
}

/// timm's evaluation transform: resize the shorter side to `size / crop_pct`, center-crop
/// `size × size`; returns `[1, 3, size, size]` in [0, 1]. Bilinear sampling at pixel centers.
fn preprocess(image: &Image, size: usize, crop_pct: f64) -> Result<Tensor> {
    let short = image.height.min(image.width) as f64;
    let scale = (size as f64 / crop_pct) / short;
    let (h, w) = (image.height as f64 * scale, image.width as f64 * scale);
    let (top, left) = ((h - size as f64) / 2.0, (w - size as f64) / 2.0);
    let sample = |y: f64, x: f64, c: usize| -> f32 {
        let y = y.clamp(0.0, (image.height - 1) as f64);
        let x = x.clamp(0.0, (image.width - 1) as f64);
        let (y0, x0) = (y.floor() as usize, x.floor() as usize);
        let (y1, x1) = (
            (y0 + 1).min(image.height - 1),
            (x0 + 1).min(image.width - 1),
        );
        let (fy, fx) = ((y - y0 as f64) as f32, (x - x0 as f64) as f32);
        let at = |yy: usize, xx: usize| image.pixels[(yy * image.width + xx) * 3 + c];
        let row0 = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
        let row1 = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
        row0 * (1.0 - fy) + row1 * fy
    };
    let mut out = vec![0f32; 3 * size * size];
    for c in 0..3 {
        for i in 0..size {
            for j in 0..size {
                // Center of output pixel (i, j) in source coordinates.
                let y = (top + i as f64 + 0.5) / scale - 0.5;
                let x = (left + j as f64 + 0.5) / scale - 0.5;
                out[(c * size + i) * size + j] = sample(y, x, c);
            }
        }
    }
    Ok(Tensor::from_vec(out, (1, 3, size, size), &Device::Cpu)?)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args
        .next()
        .unwrap_or_else(|| "vit_tiny_patch16_224.augreg_in21k_ft_in1k".to_string());
    let image = match args.next() {
        Some(path) => read_ppm(Path::new(&path))?,
        None => gradient(),
    };

    let zoo = Zoo::builtin()?;
    let entry = zoo.entry(&name)?;
    let dir = entry.download(&Hub::new(HubOptions::from_env())?)?;
    let model = load_model(&dir, &Device::Cpu)?;
    let config = TimmConfig::read(&dir.join("config.json"))?;
    let cfg = &config.pretrained_cfg;
    if cfg.input_size[0] != 3 {
        bail!(
            "{name} takes {} channels, this example feeds RGB",
            cfg.input_size[0]
        );
    }
    let x = preprocess(&image, cfg.input_size[1], cfg.crop_pct.unwrap_or(1.0))?;

    let logits = model.forward(&x, &mut Ctx::eval())?;
    // softmax, shifted by the maximum for stability
    let probs = logits
        .broadcast_sub(&logits.max_keepdim(D::Minus1)?)?
        .exp()?;
    let probs = probs.broadcast_div(&probs.sum_keepdim(D::Minus1)?)?;
    let mut ranked: Vec<(usize, f32)> = probs
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .enumerate()
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("{name} ({}, {})", entry.repo, dir.display());
    for (class, p) in ranked.iter().take(5) {
        let label = config
            .label_names
            .as_ref()
            .and_then(|names| names.name(*class))
            .unwrap_or("");
        println!("{class:>5} {:6.2}%  {label}", 100.0 * p);
    }
    Ok(())
}
