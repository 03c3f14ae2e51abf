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
