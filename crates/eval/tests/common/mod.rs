//! The fixture model of `tools/make_eval_fixtures.py`: a tiny timm ViT with its batch.

#![allow(dead_code)]

use candle_core::{Device, Tensor};
use multimix_backbones::{Model, ModelConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// Path of a fixture file.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// Every tensor of `attacks.safetensors`.
pub fn tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("attacks.safetensors"), &Device::Cpu).unwrap()
}

/// The fixture's ViT (`vit_mini_patch7_28` shrunk to 8×8 inputs, 3 classes) with timm's weights.
pub fn model(t: &HashMap<String, Tensor>) -> Model {
    let args = serde_json::json!({
        "img_size": 8, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2,
        "num_classes": 3, "mlp_ratio": 2.0,
    });
    let cfg = ModelConfig::from_preset("vit_mini_patch7_28", args.as_object().unwrap()).unwrap();
    let model = Model::new(&cfg, &Device::Cpu, 0).unwrap();
    let weights: BTreeMap<String, Tensor> = t
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("net.").map(|n| (n.to_string(), v.clone())))
        .collect();
    model.load_weights(&weights, true).unwrap();
    model
}

/// The labels of the fixture batch.
pub fn labels(t: &HashMap<String, Tensor>) -> Vec<u32> {
    t["labels"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|y| y as u32)
        .collect()
}

/// A tensor's values, flattened.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
