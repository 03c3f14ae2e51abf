//! Parity with timm (fixtures from tools/make_backbone_fixtures.py, timm 1.0.31, random weights):
//! `forward_features`, `pre_logits`, logits and the input gradient of `Σ gy ⊙ logits` in eval
//! mode, and BatchNorm's training mode (logits from batch statistics, updated running stats),
//! all within 1e-4 of the reference's scale. Also `resample_abs_pos_embed` against timm's.

use candle_core::{DType, Device, Tensor, Var};
use multimix_backbones::pos_embed::resample_abs_pos_embed;
use multimix_backbones::{Ctx, Model, ModelConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};

const TOL: f64 = 1e-4;

struct Fixture {
    tensors: HashMap<String, Tensor>,
    metadata: HashMap<String, String>,
}

fn fixture(name: &str) -> Fixture {
    let path = format!(
        "{}/tests/fixtures/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = meta.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    Fixture { tensors, metadata }
}

impl Fixture {
    fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture tensor {name} missing"))
    }

    fn weights(&self) -> BTreeMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("w.").map(|n| (n.to_string(), v.clone())))
            .collect()
    }

    fn model(&self) -> Model {
        let cfg: serde_json::Value = serde_json::from_str(&self.metadata["config"]).unwrap();
        let arch = cfg["architecture"].as_str().unwrap();
        let args = cfg["args"].as_object().unwrap();
        let config = ModelConfig::from_preset(arch, args).unwrap();
        let model = Model::new(&config, &Device::Cpu, 0).unwrap();
        model.load_weights(&self.weights(), true).unwrap();
        model
    }
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Same shape and `max |got − want| ≤ 1e-4 · max |want|`.
fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (to_f64(got), to_f64(want));
    let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: reference is all zeros");
    let err = g
        .iter()
        .zip(&w)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= TOL * scale,
        "{what}: max error {err:.3e} > {TOL:.0e} × scale {scale:.3e}"
    );
}

/// Eval-mode outputs and the input gradient against timm.
fn check_eval(case: &str) {
    let f = fixture(&format!("parity_{case}"));
    let model = f.model();
    let backbone = model.backbone();
    let x = Var::from_tensor(f.get("x")).unwrap();
    let mut ctx = Ctx::eval();
    let features = backbone.forward_features(x.as_tensor(), &mut ctx).unwrap();
    let pre = backbone.pre_logits(&features, &mut ctx).unwrap();
    let logits = backbone.head().forward(&pre).unwrap();
    assert_close(&format!("{case}: features"), &features, f.get("features"));
    assert_close(&format!("{case}: pre_logits"), &pre, f.get("pre_logits"));
    assert_close(&format!("{case}: logits"), &logits, f.get("logits"));
    let grads = (logits * f.get("gy"))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gx = grads.get(x.as_tensor()).expect("no gradient for the input");
    assert_close(&format!("{case}: grad_x"), gx, f.get("grad_x"));
}

/// Training-mode logits (batch statistics) and the running statistics after that forward.
fn check_train(case: &str) {
    let f = fixture(&format!("parity_{case}"));
    let model = f.model();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let logits = model
        .backbone()
        .forward_features(f.get("x"), &mut Ctx::train(&mut rng))
        .and_then(|feat| {
            let pre = model
                .backbone()
                .pre_logits(&feat, &mut Ctx::train(&mut rng))?;
            model.backbone().head().forward(&pre)
        })
        .unwrap();
    assert_close(
        &format!("{case}: train logits"),
        &logits,
        f.get("train.logits"),
    );
    let buffers = model.params().buffers();
    assert!(buffers.len() >= 3, "{case}: {} buffers", buffers.len());
    for (name, var) in buffers {
        let want = f.get(&format!("train.{name}"));
        if name.ends_with("num_batches_tracked") {
            let got = var.as_tensor().to_scalar::<i64>().unwrap();
            assert_eq!(got, want.to_scalar::<i64>().unwrap(), "{case}: {name}");
        } else {
            assert_close(&format!("{case}: {name}"), var.as_tensor(), want);
        }
    }
}

#[test]
fn vit_with_class_token_matches_timm() {
    check_eval("vit_token");
}

#[test]
fn vit_with_avg_pool_matches_timm() {
    check_eval("vit_avg");
}

/// A patch-16 checkpoint made at 224 px, loaded into a 64 px model: position embeddings are
/// resampled as timm's checkpoint filter does, and the outputs match timm's filtered model.
#[test]
fn vit_checkpoint_at_another_size_matches_timm() {
    let f = fixture("parity_vit_224_at_64");
    assert_eq!(f.get("w.pos_embed").dims(), [1, 197, 32]);
    check_eval("vit_224_at_64");
}

#[test]
fn resnet18_matches_timm() {
    check_eval("resnet18");
    check_train("resnet18");
}

#[test]
fn resnet50_matches_timm() {
    check_eval("resnet50");
    check_train("resnet50");
}

#[test]
fn resnet18_cifar_stem_matches_timm() {
    check_eval("resnet18_cifar");
    check_train("resnet18_cifar");
}

#[test]
fn preact_resnet18_matches_timm() {
    check_eval("preact_resnet18");
    check_train("preact_resnet18");
}

#[test]
fn resnetv2_18_imagenet_stem_matches_timm() {
    check_eval("resnetv2_18");
    check_train("resnetv2_18");
}

/// timm's `resample_abs_pos_embed` (bicubic, align_corners=False), down- and upsampling, with
/// and without antialiasing, with and without a class token.
#[test]
fn pos_embed_resampling_matches_timm() {
    let f = fixture("resample");
    for prefix in [0usize, 1] {
        let posemb = f.get(&format!("p{prefix}.posemb"));
        for new in [4usize, 20] {
            for aa in [false, true] {
                let got = resample_abs_pos_embed(posemb, (new, new), None, prefix, aa).unwrap();
                let want = f.get(&format!("p{prefix}.to{new}.aa{}", u8::from(aa)));
                assert_close(
                    &format!("prefix {prefix}, 14→{new}, antialias {aa}"),
                    &got,
                    want,
                );
            }
        }
    }
}

/// timm's `adapt_input_conv`: an RGB kernel for 1, 2 and 5 input channels.
#[test]
fn input_conv_adaptation_matches_timm() {
    let f = fixture("adapt_input_conv");
    for c in [1usize, 2, 5] {
        let got = multimix_backbones::adapt::adapt_input_conv(c, f.get("weight")).unwrap();
        assert_close(&format!("to {c} channels"), &got, f.get(&format!("to{c}")));
    }
}

/// An RGB checkpoint loads into a model for gray images: the first convolution is adapted as
/// timm's `load_pretrained` does, everything else is loaded as is.
#[test]
fn rgb_checkpoint_loads_into_a_gray_model() {
    let f = fixture("parity_resnet18");
    let cfg: serde_json::Value = serde_json::from_str(&f.metadata["config"]).unwrap();
    let mut args = cfg["args"].as_object().unwrap().clone();
    args.insert("in_chans".into(), 1.into());
    let config = ModelConfig::from_preset("resnet18", &args).unwrap();
    let model = Model::new(&config, &Device::Cpu, 0).unwrap();
    model.load_weights(&f.weights(), true).unwrap();
    let tensors = model.params().tensors().unwrap();
    let want = f.get("w.conv1.weight").sum_keepdim(1).unwrap();
    assert_close("conv1.weight", &tensors["conv1.weight"], &want);
    assert_close("fc.weight", &tensors["fc.weight"], f.get("w.fc.weight"));
}
