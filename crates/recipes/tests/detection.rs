//! The CenterNet detection recipe: it overfits a tiny synthetic set, deterministically, on a ViT
//! and on a ResNet; every backbone trains (or is refused by name); a run stopped and resumed
//! ends as the run straight through.

use candle_core::Device;
use multimix_recipes::config::TrainConfig;
use multimix_recipes::detection::{train_detection, DetectionConfig, DetectionTrainer};
use multimix_recipes::progress::Silent;
use multimix_recipes::run::RunDir;
use multimix_recipes::train::TrainControl;

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
    let ap = a.train_ap.unwrap();
    assert!(ap.ap50 > 0.9, "AP50 on the training canvases {ap:?}");
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
    assert!((-1.0..=1.0).contains(&out.test_ap.unwrap().ap50));
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

/// A tiny CIFAR-stem ResNet: four stages (output stride 8, a 7×7 map on the 56-pixel canvases)
/// of one basic block, 8 to 16 channels.
fn tiny_resnet() -> (TrainConfig, DetectionConfig) {
    let (mut cfg, det) = tiny();
    cfg.model = toml::from_str(
        r#"
architecture = "resnet18_cifar"
[args]
layers = [1, 1, 1, 1]
channels = [8, 8, 16, 16]
stem_chs = 8
"#,
    )
    .unwrap();
    (cfg, det)
}

/// The head on a ResNet's last feature map overfits the tiny set too: an ImageNet-stem ResNet
/// (stride 4) of two stages (output stride 8, a 7×7 map) of one basic block.
#[test]
fn overfits_a_tiny_synthetic_set_on_a_resnet() {
    let (mut cfg, det) = tiny();
    cfg.model = toml::from_str(
        r#"
architecture = "resnet18"
[args]
layers = [1, 1]
channels = [16, 32]
stem_chs = 16
"#,
    )
    .unwrap();
    cfg.train.epochs = 100;
    cfg.optim.lr = 1e-2;
    let out = train_detection(cfg, &det, &Device::Cpu, None, &mut Silent).unwrap();
    let ap = out.train_ap.unwrap();
    eprintln!("ResNet train AP {ap:?}");
    assert_eq!(out.detector.grid, (7, 7));
    assert_eq!(out.detector.stride, 8.0);
    assert!(ap.ap50 > 0.9, "AP50 on the training canvases {ap:?}");
}

/// Small arguments of each backbone family, keeping the preset's stem and stage count (so its
/// output stride).
fn tiny_args(architecture: &str) -> serde_json::Map<String, serde_json::Value> {
    let json = if architecture.starts_with("vit") {
        r#"{"embed_dim": 16, "depth": 1, "num_heads": 2}"#
    } else {
        r#"{"layers": [1, 1, 1, 1], "channels": [4, 4, 4, 4], "stem_chs": 4}"#
    };
    serde_json::from_str(json).unwrap()
}

/// Every architecture of the backbones crate trains with the detection head on a canvas that
/// is a multiple of its output stride, and is refused by name on one that is not.
#[test]
fn every_backbone_trains_a_detector_or_names_the_canvas_it_needs() {
    for architecture in multimix_backbones::architectures() {
        let (mut cfg, mut det) = tiny();
        cfg.model.architecture = architecture.to_string();
        cfg.model.args = tiny_args(architecture);
        cfg.train.epochs = 1;
        cfg.train.batch_size = 2;
        det.train_images = 2;
        det.test_images = 1;
        let preset =
            multimix_backbones::ModelConfig::from_preset(architecture, &cfg.model.args).unwrap();
        let stride = multimix_recipes::detection::output_stride(&preset.arch);
        det.canvas = stride * (32 / stride).max(2);
        let out = train_detection(cfg.clone(), &det, &Device::Cpu, None, &mut Silent)
            .unwrap_or_else(|e| panic!("{architecture}: {e}"));
        assert!(out.metrics[0].train_loss.is_finite(), "{architecture}");
        assert_eq!(out.detector.stride as usize, stride, "{architecture}");
        if stride > 1 {
            det.canvas += 1;
            let err = train_detection(cfg, &det, &Device::Cpu, None, &mut Silent)
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains(architecture) && err.contains("--det-canvas"),
                "{architecture}: {err}"
            );
        }
    }
}

/// Every tensor of a run's checkpoint (model, head, optimizer state) by name.
fn checkpoint(run: &RunDir) -> Vec<(String, Vec<f64>)> {
    let ckpt = multimix_hub::checkpoint::load_safetensors(
        &run.file("checkpoint.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let names: Vec<&String> = ckpt.tensors.keys().collect();
    assert!(
        names.iter().any(|n| n.starts_with("model.det_head.")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.starts_with("optim.")), "{names:?}");
    assert!(
        names.iter().any(|n| n.ends_with("running_mean")),
        "{names:?}"
    );
    ckpt.tensors
        .iter()
        .map(|(k, t)| {
            let v = t.to_dtype(candle_core::DType::F64).unwrap();
            (
                k.clone(),
                v.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            )
        })
        .collect()
}

/// The resume tests' run: the tiny ResNet (batch-norm buffers are state too), two epochs of
/// two steps.
fn resume_config() -> (TrainConfig, DetectionConfig) {
    let (mut cfg, det) = tiny_resnet();
    cfg.train.epochs = 2;
    cfg.train.batch_size = 8;
    (cfg, det)
}

fn curve(m: &[multimix_recipes::run::EpochMetrics]) -> Vec<(usize, f64, f64, f64)> {
    m.iter()
        .map(|e| (e.step, e.train_loss, e.test_accuracy, e.lr))
        .collect()
}

/// A run stopped after epoch 1 and resumed from its directory ends with the weights, optimizer
/// state, metrics and report of the run straight through; both write their training curves.
#[test]
fn stopped_and_resumed_equals_straight_through() {
    let device = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, det) = resume_config();
    let straight = RunDir::create(&dir.path().join("straight")).unwrap();
    let a = train_detection(cfg.clone(), &det, &device, Some(&straight), &mut Silent).unwrap();

    let stopped = RunDir::create(&dir.path().join("stopped")).unwrap();
    let stop = TrainControl {
        stop_after_epochs: Some(1),
        ..TrainControl::default()
    };
    let first = DetectionTrainer::new(cfg, &det, &device)
        .unwrap()
        .run(Some(&stopped), false, &stop, &mut Silent)
        .unwrap();
    assert_eq!(first.metrics.len(), 1);
    assert!(first.test_ap.is_none() && !first.interrupted);
    assert!(!stopped.file("report.json").exists());
    let b = DetectionTrainer::resume(&stopped, &device)
        .unwrap()
        .run(Some(&stopped), true, &TrainControl::default(), &mut Silent)
        .unwrap();
    assert_eq!(a.metrics.len(), 2);
    assert_eq!(curve(&a.metrics), curve(&b.metrics));
    assert_eq!(a.test_ap, b.test_ap);
    assert_eq!(checkpoint(&straight), checkpoint(&stopped));
    let report = |r: &RunDir| std::fs::read_to_string(r.file("report.json")).unwrap();
    assert_eq!(report(&straight), report(&stopped));
    assert!(report(&stopped).contains("pycocotools"));
    for run in [&straight, &stopped] {
        let png = std::fs::read(run.file(multimix_recipes::run::CURVES_PNG)).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{}", run.path().display());
    }
}

/// An interrupt (Ctrl-C) mid-epoch saves a checkpoint that resume continues from exactly.
#[test]
fn interrupted_mid_epoch_and_resumed_equals_straight_through() {
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
    let device = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, det) = resume_config();
    let straight = RunDir::create(&dir.path().join("straight")).unwrap();
    let a = train_detection(cfg.clone(), &det, &device, Some(&straight), &mut Silent).unwrap();

    let stopped = RunDir::create(&dir.path().join("stopped")).unwrap();
    let stop = TrainControl {
        interrupt: Some(&STOP),
        ..TrainControl::default()
    };
    let first = DetectionTrainer::new(cfg, &det, &device)
        .unwrap()
        .run(Some(&stopped), false, &stop, &mut Silent)
        .unwrap();
    assert!(
        first.interrupted && first.metrics.is_empty(),
        "stops after one step"
    );
    let b = DetectionTrainer::resume(&stopped, &device)
        .unwrap()
        .run(Some(&stopped), true, &TrainControl::default(), &mut Silent)
        .unwrap();
    assert_eq!(curve(&a.metrics), curve(&b.metrics));
    assert_eq!(checkpoint(&straight), checkpoint(&stopped));
}

/// A loss that turns non-finite stops the run with the classification loop's error; what was
/// written before stays (here only the configuration: no epoch finished).
#[test]
fn non_finite_loss_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, det) = resume_config();
    cfg.optim.lr = 1e30;
    cfg.schedule.warmup_epochs = 0.0;
    let run = RunDir::create(&dir.path().join("run")).unwrap();
    let err = train_detection(cfg, &det, &Device::Cpu, Some(&run), &mut Silent)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            multimix_recipes::RecipeError::NonFiniteLoss { epoch: 1, .. }
        ),
        "{err}"
    );
    let mut files: Vec<String> = std::fs::read_dir(run.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["config.toml", "detection.toml"]);
}
