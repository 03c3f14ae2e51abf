//! `multimix infer` end to end: timm directories give timm's logits and features
//! (fixtures of tools/make_backbone_fixtures.py), a file of this project gives the model's own
//! outputs, `--img-size` rebuilds a ViT at another size, and bad input is named without touching
//! an existing output.

use candle_core::{Device, Tensor};
use multimix::backbones::{Ctx, Model, ModelConfig};
use multimix_hub::checkpoint::{load_safetensors, save_safetensors};
use multimix_recipes::train::META_MODEL_CONFIG;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/backbones/tests/fixtures")
        .join(name)
}

fn read(path: &Path) -> BTreeMap<String, Tensor> {
    load_safetensors(path, &Device::Cpu).unwrap().tensors
}

fn infer(checkpoint: &Path, input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "infer",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    std::process::Command::new(env!("CARGO_BIN_EXE_multimix"))
        .args(&args)
        .output()
        .expect("the multimix binary runs")
}

fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let err = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    err / scale
}

fn write_images(path: &Path, images: &Tensor) {
    let t = BTreeMap::from([("images".to_string(), images.clone())]);
    save_safetensors(path, &t, &BTreeMap::new()).unwrap();
}

/// A timm directory as the checkpoint: logits, pre_logits and features equal timm's (the images
/// are normalized with the config's mean and std inside), for a ViT and a ResNet.
#[test]
fn timm_directories_give_timm_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["timm_vit", "timm_resnet18"] {
        let dir = fixture_dir(name);
        let reference = read(&dir.join("reference.safetensors"));
        let input = tmp.path().join(format!("{name}_in.safetensors"));
        write_images(&input, &reference["images"]);
        let output = tmp.path().join(format!("{name}_out.safetensors"));
        let out = infer(&dir, &input, &output, &["--features", "--batch-size", "1"]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = read(&output);
        for key in ["logits", "pre_logits", "features"] {
            let err = rel_err(&got[key], &reference[key]);
            assert!(err < 1e-4, "{name}: {key} relative error {err}");
        }
    }
}

/// A weights file of this project (configuration in the metadata) gives the model's own logits;
/// without --features only `logits` is written.
#[test]
fn a_project_checkpoint_gives_the_models_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let args = serde_json::json!({"layers": [1, 1, 1, 1], "channels": [4, 4, 4, 4], "stem_chs": 4, "img_size": 8});
    let cfg = ModelConfig::from_preset("preact_resnet18", args.as_object().unwrap()).unwrap();
    let model = Model::new(&cfg, &Device::Cpu, 11).unwrap();
    let ckpt = tmp.path().join("model.safetensors");
    let meta = BTreeMap::from([(
        META_MODEL_CONFIG.to_string(),
        serde_json::to_string(&cfg).unwrap(),
    )]);
    save_safetensors(&ckpt, &model.params().tensors().unwrap(), &meta).unwrap();
    let images = (Tensor::arange(0f32, 3.0 * 3.0 * 64.0, &Device::Cpu).unwrap()
        / (3.0 * 3.0 * 64.0))
        .unwrap()
        .reshape((3, 3, 8, 8))
        .unwrap();
    let input = tmp.path().join("in.safetensors");
    write_images(&input, &images);
    let output = tmp.path().join("out.safetensors");
    // A run directory (model.safetensors inside) and the file itself both work.
    for checkpoint in [tmp.path(), ckpt.as_path()] {
        let out = infer(checkpoint, &input, &output, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = read(&output);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["logits"]);
        let want = model.forward(&images, &mut Ctx::eval()).unwrap();
        assert!(rel_err(&got["logits"], &want) < 1e-6);
    }
}

/// `--img-size` builds the ViT for other inputs: 16 px weights run on 32 px images (8×8 grid).
#[test]
fn img_size_rebuilds_a_vit_for_other_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let images = (Tensor::ones((2, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap()
        * 0.25)
        .unwrap();
    let input = tmp.path().join("in.safetensors");
    write_images(&input, &images);
    let output = tmp.path().join("out.safetensors");
    let dir = fixture_dir("timm_vit");
    let out = infer(&dir, &input, &output, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--img-size 32"));
    let out = infer(&dir, &input, &output, &["--img-size", "32", "--features"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = read(&output);
    assert_eq!(got["features"].dims(), [2, 1 + 64, 32]);
    assert_eq!(got["logits"].dims(), [2, 5]);
}

/// Missing tensor, wrong channels, pixels outside [0, 1], an unknown checkpoint: one line naming
/// the problem, and an existing output file is left as it was.
#[test]
fn bad_input_is_named_and_output_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join("out.safetensors");
    std::fs::write(&output, b"keep me").unwrap();
    let dir = fixture_dir("timm_resnet18");
    let cases: [(&str, BTreeMap<String, Tensor>, &str); 3] = [
        (
            "no images",
            BTreeMap::from([(
                "pixels".to_string(),
                Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
            )]),
            "no tensor `images` (it holds: pixels)",
        ),
        (
            "channels",
            BTreeMap::from([(
                "images".to_string(),
                Tensor::zeros((1, 1, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
            )]),
            "the model takes [N ≥ 1, 3, H, W]",
        ),
        (
            "range",
            BTreeMap::from([(
                "images".to_string(),
                (Tensor::ones((1, 3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap()
                    * 255.0)
                    .unwrap(),
            )]),
            "expected pixels in [0, 1]",
        ),
    ];
    for (what, tensors, expected) in cases {
        let input = tmp.path().join("in.safetensors");
        save_safetensors(&input, &tensors, &BTreeMap::new()).unwrap();
        let out = infer(&dir, &input, &output, &[]);
        assert!(!out.status.success(), "{what}");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
        assert!(err.contains(expected), "{what}: {err}");
        assert_eq!(std::fs::read(&output).unwrap(), b"keep me", "{what}");
    }
    let input = tmp.path().join("in.safetensors");
    let out = infer(&tmp.path().join("nowhere"), &input, &output, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
    assert_eq!(std::fs::read(&output).unwrap(), b"keep me");
}
