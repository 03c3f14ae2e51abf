//! timm's `config.json`, against files written by timm's `save_for_hf`
//! (`tools/make_hub_fixtures.py`).

use std::fs;
use std::path::{Path, PathBuf};

use multimix_hub::{CheckpointError, LabelNames, TimmConfig};
use serde_json::{json, Value};

fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(model)
        .join("config.json")
}

/// A fresh, empty directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("multimix-hub-config")
        .join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn json_of(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

#[test]
fn reads_timm_vit_config() {
    let cfg = TimmConfig::read(&fixture("vit_tiny")).unwrap();
    assert_eq!(cfg.architecture, "vit_tiny_patch16_224");
    assert_eq!(cfg.num_classes, 5);
    assert_eq!(cfg.num_features, Some(16));
    assert_eq!(cfg.global_pool.as_deref(), Some("token"));
    assert_eq!(cfg.model_args["embed_dim"], json!(16));
    assert_eq!(cfg.model_args["img_size"], json!([32, 32]));
    let p = &cfg.pretrained_cfg;
    assert_eq!(p.input_size, [3, 32, 32]);
    assert_eq!(p.mean, [0.5; 3]);
    assert_eq!(p.std, [0.5; 3]);
    assert_eq!(p.interpolation.as_deref(), Some("bicubic"));
    assert_eq!(p.crop_pct, Some(0.9));
    assert_eq!(p.num_classes, Some(5));
    assert_eq!(p.first_conv.as_deref(), Some("patch_embed.proj"));
    assert_eq!(p.classifier.as_deref(), Some("head"));
    assert_eq!(p.license.as_deref(), Some("apache-2.0"));
    assert_eq!(p.extra["crop_mode"], json!("center"));
    assert_eq!(p.extra["fixed_input_size"], json!(true));
    assert_eq!(p.extra["pool_size"], Value::Null);
    let labels = cfg.label_names.as_ref().unwrap();
    assert_eq!(
        labels,
        &LabelNames::List(["a", "b", "c", "d", "e"].map(String::from).to_vec())
    );
    assert_eq!(labels.name(4), Some("e"));
    assert_eq!(labels.name(5), None);
}

#[test]
fn reads_timm_resnet_config_with_labels_by_id() {
    let cfg = TimmConfig::read(&fixture("resnet_tiny")).unwrap();
    assert_eq!(cfg.architecture, "resnet18");
    assert_eq!(cfg.num_classes, 4);
    assert_eq!(cfg.global_pool.as_deref(), Some("avg"));
    assert_eq!(cfg.pretrained_cfg.mean, [0.485, 0.456, 0.406]);
    assert_eq!(cfg.pretrained_cfg.std, [0.229, 0.224, 0.225]);
    assert_eq!(cfg.pretrained_cfg.crop_pct, Some(0.95));
    assert_eq!(
        cfg.pretrained_cfg.extra["test_input_size"],
        json!([3, 288, 288])
    );
    let labels = cfg.label_names.as_ref().unwrap();
    assert!(matches!(labels, LabelNames::ById(_)));
    assert_eq!(
        (labels.name(0), labels.name(1), labels.name(3)),
        (Some("cat"), None, Some("dog"))
    );
    assert_eq!(cfg.extra["label_descriptions"]["dog"], json!("a canine"));
}

#[test]
fn round_trip_keeps_every_field() {
    for model in ["vit_tiny", "resnet_tiny"] {
        let cfg = TimmConfig::read(&fixture(model)).unwrap();
        let out = scratch(&format!("round_trip_{model}")).join("config.json");
        cfg.write(&out).unwrap();
        assert_eq!(TimmConfig::read(&out).unwrap(), cfg, "{model}");
        assert_eq!(json_of(&out), json_of(&fixture(model)), "{model}");
        let text = fs::read_to_string(&out).unwrap();
        assert!(text.starts_with("{\n  \"architecture\": "), "{text}");
    }
}

/// Writes the vit config with `edit` applied and reads it back.
fn read_edited(test: &str, edit: impl FnOnce(&mut Value)) -> (PathBuf, CheckpointError) {
    let mut value = json_of(&fixture("vit_tiny"));
    edit(&mut value);
    let path = scratch(test).join("config.json");
    fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
    let err = TimmConfig::read(&path).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    (path, err)
}

#[test]
fn missing_required_fields_are_named() {
    let cases: [(&str, &str, &str); 6] = [
        ("", "architecture", "architecture"),
        ("", "num_classes", "num_classes"),
        ("", "pretrained_cfg", "pretrained_cfg"),
        ("pretrained_cfg", "input_size", "pretrained_cfg.input_size"),
        ("pretrained_cfg", "mean", "pretrained_cfg.mean"),
        ("pretrained_cfg", "std", "pretrained_cfg.std"),
    ];
    for (parent, key, dotted) in cases {
        let (_, err) = read_edited(&format!("missing_{key}"), |v| {
            let object = if parent.is_empty() { v } else { &mut v[parent] };
            object.as_object_mut().unwrap().remove(key);
        });
        assert!(
            matches!(err, CheckpointError::MissingField { field, .. } if field == dotted),
            "{err:?}"
        );
        assert!(err.to_string().contains(&format!("`{dotted}`")), "{err}");
    }
    let (_, err) = read_edited("null_architecture", |v| v["architecture"] = Value::Null);
    assert!(
        matches!(
            err,
            CheckpointError::MissingField {
                field: "architecture",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn wrong_types_and_values_are_refused() {
    let (_, err) = read_edited("string_classes", |v| v["num_classes"] = json!("five"));
    assert!(
        matches!(err, CheckpointError::InvalidConfig { .. }),
        "{err:?}"
    );
    let (_, err) = read_edited("label_key", |v| v["label_names"] = json!({"first": "a"}));
    assert!(
        matches!(err, CheckpointError::InvalidConfig { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("`first` is not a class index"),
        "{err}"
    );
    let (_, err) = read_edited("input_size", |v| {
        v["pretrained_cfg"]["input_size"] = json!([32, 32])
    });
    assert!(
        matches!(err, CheckpointError::InvalidInputSize { ref input_size, .. } if input_size == &[32, 32]),
        "{err:?}"
    );
    let (_, err) = read_edited("not_object", |v| *v = json!([1, 2]));
    assert!(
        matches!(err, CheckpointError::InvalidConfig { .. }),
        "{err:?}"
    );

    let path = scratch("not_json").join("config.json");
    fs::write(&path, b"{\"architecture\": ").unwrap();
    let err = TimmConfig::read(&path).unwrap_err();
    assert!(
        matches!(err, CheckpointError::ConfigNotJson { .. }),
        "{err:?}"
    );
    let err = TimmConfig::read(&path.with_file_name("absent.json")).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }) && err.to_string().contains("absent.json"));
}

#[test]
fn new_config_has_timm_layout_and_reads_back() {
    let args = json!({"patch_size": 7, "embed_dim": 96, "img_size": 28, "in_chans": 1});
    let config = TimmConfig::new(
        "vit_mini_patch7_28",
        10,
        args.as_object().unwrap().clone(),
        [1, 28, 28],
        vec![0.5],
        vec![0.5],
    );
    let path = scratch("new_config").join("config.json");
    config.write(&path).unwrap();
    let written = json_of(&path);
    assert_eq!(written["architecture"], "vit_mini_patch7_28");
    assert_eq!(written["num_classes"], 10);
    assert_eq!(written["model_args"], args);
    assert_eq!(written["pretrained_cfg"]["input_size"], json!([1, 28, 28]));
    assert_eq!(written["pretrained_cfg"]["mean"], json!([0.5]));
    assert_eq!(written["pretrained_cfg"]["num_classes"], 10);
    assert_eq!(TimmConfig::read(&path).unwrap(), config);
}
