//! timm checkpoint directories (`config.json` + `model.safetensors` as timm's `save_for_hf`
//! writes them, tools/make_backbone_fixtures.py) build the same model and give timm's outputs;
//! bad configurations and mismatched weights give errors that name the problem.

use candle_core::{Device, Tensor};
use multimix_backbones::{BackboneError, Ctx, Model, ModelConfig};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn config_json(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir(name).join("config.json")).unwrap()).unwrap()
}

fn load(name: &str, file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir(name).join(file), &Device::Cpu).unwrap()
}

fn weights(name: &str) -> BTreeMap<String, Tensor> {
    load(name, "model.safetensors").into_iter().collect()
}

fn max_rel_err(got: &Tensor, want: &Tensor) -> f32 {
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

/// The model a timm directory describes, normalizing with its mean and std, gives timm's
/// features, pooled features and logits for images in [0, 1].
#[test]
fn timm_directories_load_and_match_timm() {
    for name in ["timm_vit", "timm_resnet18"] {
        let cfg = ModelConfig::from_timm_json(&config_json(name)).unwrap();
        assert_eq!(cfg.num_classes(), 5, "{name}");
        let model = Model::new(&cfg, &Device::Cpu, 0).unwrap();
        model.load_weights(&weights(name), true).unwrap();
        let reference = load(name, "reference.safetensors");
        let images = &reference["images"];
        let features = model.forward_features(images, &mut Ctx::eval()).unwrap();
        let pre = model
            .backbone()
            .pre_logits(&features, &mut Ctx::eval())
            .unwrap();
        let logits = model.forward(images, &mut Ctx::eval()).unwrap();
        for (what, got) in [
            ("features", &features),
            ("pre_logits", &pre),
            ("logits", &logits),
        ] {
            let err = max_rel_err(got, &reference[what]);
            assert!(err < 1e-4, "{name}: {what} relative error {err}");
        }
    }
}

/// The ViT's `model_args.img_size` `[16, 16]` and the ResNet's `channels` are honoured;
/// `pretrained_cfg` gives the normalization.
#[test]
fn timm_config_fields_are_read() {
    let vit = ModelConfig::from_timm_json(&config_json("timm_vit")).unwrap();
    assert_eq!(vit.arch.img_size(), 16);
    assert_eq!(vit.mean, vec![0.5, 0.5, 0.5]);
    let resnet = ModelConfig::from_timm_json(&config_json("timm_resnet18")).unwrap();
    assert_eq!(resnet.arch.img_size(), 224);
    assert_eq!(resnet.std, vec![0.229, 0.224, 0.225]);
    let multimix_backbones::ArchConfig::ResNet(r) = &resnet.arch else {
        panic!("resnet18 is not a ResNet")
    };
    assert_eq!(r.channels, vec![8, 16, 24, 32]);
}

fn err_of(cfg: &Value) -> String {
    ModelConfig::from_timm_json(cfg).unwrap_err().to_string()
}

/// Unknown architectures list the known ones; unknown or invalid arguments are named.
#[test]
fn bad_timm_configs_are_named() {
    let mut cfg = config_json("timm_vit");
    cfg["architecture"] = json!("convnext_tiny");
    let err = err_of(&cfg);
    assert!(
        err.contains("convnext_tiny") && err.contains("resnet50"),
        "{err}"
    );

    let mut cfg = config_json("timm_vit");
    cfg["model_args"]["act_layer"] = json!("gelu_tanh");
    let err = err_of(&cfg);
    assert!(err.contains("act_layer"), "{err}");

    let mut cfg = config_json("timm_vit");
    cfg["global_pool"] = json!("map");
    let err = err_of(&cfg);
    assert!(err.contains("map"), "{err}");

    let mut cfg = config_json("timm_resnet18");
    cfg["pretrained_cfg"]["input_size"] = json!([3, 224]);
    let err = err_of(&cfg);
    assert!(err.contains("input_size"), "{err}");

    let mut cfg = config_json("timm_resnet18");
    cfg["pretrained_cfg"]["std"] = json!([0.2, 0.2]);
    let err = err_of(&cfg);
    assert!(err.contains("std"), "{err}");
}

/// Weights with a tensor missing, an extra tensor, or a wrong shape are refused with the names.
#[test]
fn mismatched_weights_are_listed() {
    let cfg = ModelConfig::from_timm_json(&config_json("timm_resnet18")).unwrap();
    let model = Model::new(&cfg, &Device::Cpu, 0).unwrap();
    let mut w = weights("timm_resnet18");
    w.remove("layer3.1.bn2.running_var");
    w.insert(
        "layer9.0.conv1.weight".into(),
        Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let err = model.load_weights(&w, true).unwrap_err();
    assert!(matches!(err, BackboneError::WeightMismatch(_)));
    let msg = err.to_string();
    assert!(msg.contains("missing 1: layer3.1.bn2.running_var"), "{msg}");
    assert!(msg.contains("unexpected 1: layer9.0.conv1.weight"), "{msg}");

    let mut w = weights("timm_resnet18");
    w.insert(
        "fc.bias".into(),
        Tensor::zeros(7, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let msg = model.load_weights(&w, true).unwrap_err().to_string();
    assert!(msg.contains("fc.bias"), "{msg}");
}

/// The full-size presets hold exactly timm's tensors (names, shapes, dtypes), built from the
/// `config.json` timm writes for them, so their checkpoints load without conversion.
#[test]
fn full_size_presets_hold_timms_tensors() {
    let path = dir("timm_presets.json");
    let tables: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    for (arch, table) in tables.as_object().unwrap() {
        let cfg = ModelConfig::from_timm_json(&table["config"]).unwrap();
        assert_eq!(&cfg.architecture, arch);
        let model = Model::new(&cfg, &Device::Cpu, 0).unwrap();
        let ours: BTreeMap<String, (Vec<usize>, String)> = model
            .params()
            .tensors()
            .unwrap()
            .into_iter()
            .map(|(k, t)| {
                (
                    k,
                    (t.dims().to_vec(), format!("{:?}", t.dtype()).to_lowercase()),
                )
            })
            .collect();
        let timm: BTreeMap<String, (Vec<usize>, String)> = table["tensors"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let shape = serde_json::from_value(v[0].clone()).unwrap();
                let dtype = v[1]
                    .as_str()
                    .unwrap()
                    .replace("float32", "f32")
                    .replace("int64", "i64");
                (k.clone(), (shape, dtype))
            })
            .collect();
        let missing: Vec<_> = timm.keys().filter(|k| !ours.contains_key(*k)).collect();
        let extra: Vec<_> = ours.keys().filter(|k| !timm.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{arch}: missing {missing:?}, extra {extra:?}"
        );
        for (name, want) in &timm {
            assert_eq!(&ours[name], want, "{arch}: {name}");
        }
    }
}
