//! A run stopped after an epoch and resumed ends exactly as the run straight through: weights,
//! EMA teacher, metrics (MultiMix with self-distillation, so every piece of state is saved).

mod common;

use candle_core::Device;
use multimix_recipes::progress::Silent;
use multimix_recipes::run::RunDir;
use multimix_recipes::train::{TrainControl, Trainer};
use multimix_recipes::TrainConfig;

fn config() -> TrainConfig {
    let mut cfg = TrainConfig::from_toml(common::TINY_CONFIG).unwrap();
    cfg.mix.method = multimix_recipes::config::MixMethod::Multimix;
    cfg.distill.enabled = true;
    cfg.distill.ema_momentum = 0.9;
    cfg.train.max_steps = None;
    cfg.train.epochs = 2;
    cfg.train.batch_size = 500;
    cfg
}

/// Every tensor of the run's checkpoint (model, optimizer state, EMA teacher) by name.
fn tensors(run: &std::path::Path) -> Vec<(String, Vec<f64>)> {
    let ckpt = multimix_hub::checkpoint::load_safetensors(
        &run.join("checkpoint.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let names: Vec<&String> = ckpt.tensors.keys().collect();
    assert!(names.iter().any(|n| n.starts_with("ema.")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("optim.")), "{names:?}");
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

#[test]
fn stopped_and_resumed_equals_straight_through() {
    let device = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let straight = RunDir::create(&dir.path().join("straight")).unwrap();
    let a = Trainer::new(config(), &device)
        .unwrap()
        .run(&straight, false, &TrainControl::default(), &mut Silent)
        .unwrap();

    let stopped = RunDir::create(&dir.path().join("stopped")).unwrap();
    let stop = TrainControl {
        stop_after_epochs: Some(1),
        ..TrainControl::default()
    };
    let first = Trainer::new(config(), &device)
        .unwrap()
        .run(&stopped, false, &stop, &mut Silent)
        .unwrap();
    assert_eq!(first.metrics.len(), 1);
    let cfg = stopped.read_config().unwrap();
    let b = Trainer::new(cfg, &device)
        .unwrap()
        .run(&stopped, true, &TrainControl::default(), &mut Silent)
        .unwrap();

    assert_eq!(a.metrics.len(), 2);
    let curve = |m: &[multimix_recipes::run::EpochMetrics]| -> Vec<(f64, f64, f64)> {
        m.iter()
            .map(|e| (e.train_loss, e.test_accuracy, e.lr))
            .collect()
    };
    assert_eq!(curve(&a.metrics), curve(&b.metrics));
    // Model, optimizer state and EMA teacher: the same values.
    assert_eq!(tensors(straight.path()), tensors(stopped.path()));
}

/// An interrupt mid-epoch saves a checkpoint that `--resume` continues from exactly.
#[test]
fn interrupted_mid_epoch_and_resumed_equals_straight_through() {
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
    let device = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let straight = RunDir::create(&dir.path().join("straight")).unwrap();
    let a = Trainer::new(config(), &device)
        .unwrap()
        .run(&straight, false, &TrainControl::default(), &mut Silent)
        .unwrap();
    assert!(!a.interrupted);

    let stopped = RunDir::create(&dir.path().join("stopped")).unwrap();
    let stop = TrainControl {
        interrupt: Some(&STOP),
        ..TrainControl::default()
    };
    let first = Trainer::new(config(), &device)
        .unwrap()
        .run(&stopped, false, &stop, &mut Silent)
        .unwrap();
    assert!(
        first.interrupted && first.metrics.is_empty(),
        "stops after one step"
    );
    let b = Trainer::new(stopped.read_config().unwrap(), &device)
        .unwrap()
        .run(&stopped, true, &TrainControl::default(), &mut Silent)
        .unwrap();
    let curve = |m: &[multimix_recipes::run::EpochMetrics]| -> Vec<(usize, f64, f64)> {
        m.iter()
            .map(|e| (e.step, e.train_loss, e.test_accuracy))
            .collect()
    };
    assert_eq!(curve(&a.metrics), curve(&b.metrics));
    assert_eq!(tensors(straight.path()), tensors(stopped.path()));
}
