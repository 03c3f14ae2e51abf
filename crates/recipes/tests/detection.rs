//! The CenterNet detection recipe: it overfits a tiny synthetic set, deterministically.

use candle_core::Device;
use multimix_recipes::config::TrainConfig;
use multimix_recipes::detection::{train_detection, DetectionConfig};
use multimix_recipes::progress::Silent;

fn tiny() -> (TrainConfig, DetectionConfig) {
    let cfg = TrainConfig::from_toml(
        r#"
seed = 5
[model]
architecture = "vit_mini_patch7_28"
[model.args]
embed_dim = 32
depth = 2
num_heads = 2
[optim]
lr = 4e-3
weight_decay = 0.0
[schedule]
warmup_epochs = 10
[train]
epochs = 150
batch_size = 16
"#,
    )
    .unwrap();
    let det = DetectionConfig {
        train_images: 16,
        test_images: 4,
        head_hidden: 32,
        ..DetectionConfig::default()
    };
    (cfg, det)
}

#[test]
fn overfits_a_tiny_synthetic_set_deterministically() {
    let (cfg, det) = tiny();
    let a = train_detection(cfg.clone(), &det, &Device::Cpu, None, &mut Silent).unwrap();
    eprintln!(
        "train AP {:?}, loss {:?}",
        a.train_ap,
        a.metrics.last().map(|m| m.train_loss)
    );
    assert!(
        a.train_ap.ap50 > 0.9,
        "AP50 on the training canvases {:?}",
        a.train_ap
    );
    let first = a.metrics.first().unwrap().train_loss;
    let last = a.metrics.last().unwrap().train_loss;
    assert!(last < 0.2 * first, "loss {first} -> {last}");
    let cfg_short = TrainConfig {
        train: multimix_recipes::config::LoopConfig {
            epochs: 3,
            ..cfg.train.clone()
        },
        ..cfg
    };
    let b = train_detection(cfg_short.clone(), &det, &Device::Cpu, None, &mut Silent).unwrap();
    let c = train_detection(cfg_short, &det, &Device::Cpu, None, &mut Silent).unwrap();
    // Same seed, same run (throughput aside).
    let curve = |o: &multimix_recipes::detection::DetectionOutcome| -> Vec<(f64, f64, f64)> {
        o.metrics
            .iter()
            .map(|m| (m.train_loss, m.test_accuracy, m.lr))
            .collect()
    };
    assert_eq!(curve(&b), curve(&c));
    assert_eq!(b.train_ap, c.train_ap);
    let wb = b.detector.head_params.tensors().unwrap();
    let wc = c.detector.head_params.tensors().unwrap();
    for (k, t) in &wb {
        let diff = (t - &wc[k]).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{k}");
    }
}

/// `--init`: the backbone of a classification checkpoint (28×28 inputs, a 4×4 token grid) is
/// loaded into the detector (56×56 canvases, 8×8 grid), its position embeddings resampled; the
/// classifier is left out and the head is new.
#[test]
fn init_loads_a_classification_backbone() {
    use multimix_backbones::pos_embed::resample_abs_pos_embed;
    use multimix_backbones::{Model, ModelConfig};
    use multimix_data::detection::{synthetic, SyntheticConfig};
    use multimix_data::DataSpec;
    use multimix_hub::checkpoint::save_safetensors;
    use multimix_recipes::detection::build_detector;
    use multimix_recipes::train::META_MODEL_CONFIG;
    use rand::SeedableRng;

    let (mut cfg, mut det) = tiny();
    let dir = std::env::temp_dir().join(format!("multimix-det-init-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cls_cfg = ModelConfig::from_preset("vit_mini_patch7_28", &cfg.model.args).unwrap();
    let cls = Model::new(&cls_cfg, &Device::Cpu, 11).unwrap();
    let weights = cls.params().tensors().unwrap();
    let meta = std::collections::BTreeMap::from([(
        META_MODEL_CONFIG.to_string(),
        serde_json::to_string(cls.config()).unwrap(),
    )]);
    save_safetensors(&dir.join("model.safetensors"), &weights, &meta).unwrap();
    det.init = Some(dir.clone());
    let source = "fashion-mnist-mini"
        .parse::<DataSpec>()
        .unwrap()
        .load()
        .unwrap()
        .train
        .unwrap();
    let sc = SyntheticConfig {
        count: 4,
        canvas: det.canvas,
        ..SyntheticConfig::default()
    };
    let train = synthetic(&source, &sc, 0).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let detector = build_detector(&mut cfg, &det, &train, &mut rng, &Device::Cpu).unwrap();
    let loaded = detector.model.params().tensors().unwrap();
    let same = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        let d = (a - b).unwrap().abs().unwrap().sum_all().unwrap();
        d.to_scalar::<f32>().unwrap() == 0.0
    };
    for name in [
        "blocks.0.attn.qkv.weight",
        "patch_embed.proj.weight",
        "norm.weight",
    ] {
        assert!(same(&loaded[name], &weights[name]), "{name} not loaded");
    }
    let want = resample_abs_pos_embed(&weights["pos_embed"], (8, 8), None, 0, true).unwrap();
    assert_eq!(loaded["pos_embed"].dims(), &[1, 64, 32]);
    assert!(same(&loaded["pos_embed"], &want));
    assert!(!same(&loaded["head.weight"], &weights["head.weight"]));
    assert_eq!(cfg.model.mean, Some(cls.config().mean.clone()));

    det.init = Some(dir.join("missing"));
    let err = build_detector(&mut cfg, &det, &train, &mut rng, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Training and evaluating on COCO files (the data crate's reader fixtures) instead of the
/// synthetic canvases; a bad spec is refused by name.
#[test]
fn trains_on_coco_files() {
    let (mut cfg, mut det) = tiny();
    cfg.train.epochs = 2;
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/tests/fixtures/det/coco"
    );
    det.train_data = Some(format!("coco:{dir}"));
    det.test_data = Some(format!("coco:{dir}"));
    let out = train_detection(cfg.clone(), &det, &Device::Cpu, None, &mut Silent).unwrap();
    assert_eq!(out.metrics.len(), 2);
    assert!((-1.0..=1.0).contains(&out.test_ap.ap50));
    det.test_data = Some("yolo:somewhere".into());
    let err = train_detection(cfg, &det, &Device::Cpu, None, &mut Silent)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("yolo:somewhere") && err.contains("coco:DIR"),
        "{err}"
    );
}
