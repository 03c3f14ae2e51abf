//! The main flow end to end: a tiny configuration trains a few steps, saves, reloads, and
//! `multimix eval` reproduces the in-memory model's numbers exactly.

mod common;

use candle_core::{Device, Tensor};
use multimix::checkpoint::load_model;
use multimix::evaluation::evaluate_model;
use multimix_backbones::Ctx;
use multimix_recipes::progress::Silent;
use multimix_recipes::run::{
    RunDir, CHECKPOINT_FILE, CONFIG_FILE, CURVES_PNG, METRICS_FILE, MODEL_FILE, REPORT_JSON,
    REPORT_MD,
};
use multimix_recipes::train::{TrainControl, Trainer};
use multimix_recipes::TrainConfig;

#[test]
fn train_save_reload_eval_reproduces_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let run_path = dir.path().join("run");
    let cfg = TrainConfig::from_toml(common::TINY_CONFIG).unwrap();
    let device = Device::Cpu;
    let trainer = Trainer::new(cfg, &device).unwrap();
    let run = RunDir::create(&run_path).unwrap();
    let outcome = trainer
        .run(&run, false, &TrainControl::default(), &mut Silent)
        .unwrap();
    for file in [
        CONFIG_FILE,
        MODEL_FILE,
        CHECKPOINT_FILE,
        METRICS_FILE,
        CURVES_PNG,
    ] {
        assert!(run_path.join(file).is_file(), "{file} missing");
    }
    assert!(run_path.join("config.json").is_file(), "no config.json");
    assert_eq!(
        outcome.metrics.len(),
        1,
        "4 steps of batch 32 fit in one epoch"
    );

    // The reloaded model computes bit-identical logits.
    let reloaded = load_model(&run_path, &device).unwrap();
    let x = Tensor::rand(0f32, 1f32, (5, 1, 28, 28), &device).unwrap();
    let a = outcome
        .model
        .forward(&x, &mut Ctx::eval())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = reloaded
        .forward(&x, &mut Ctx::eval())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, b);

    // `multimix eval` on the saved run gives exactly the in-memory evaluation.
    let in_memory =
        evaluate_model(&outcome.model, &outcome.config.eval, &outcome.test, &device).unwrap();
    let out = common::multimix(&["eval", "--checkpoint", run_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_path.join(REPORT_JSON)).unwrap()).unwrap();
    assert_eq!(report["accuracy"].as_f64().unwrap(), in_memory.accuracy);
    assert_eq!(report["ece"].as_f64().unwrap(), in_memory.ece);
    assert_eq!(report["nll"].as_f64().unwrap(), in_memory.nll);
    assert_eq!(
        report["fgsm"]["accuracy"].as_f64().unwrap(),
        in_memory.fgsm.accuracy
    );
    assert_eq!(report["fgsm"]["eps"].as_f64().unwrap(), 8.0 / 255.0);
    for set in ["mnist", "gaussian"] {
        let msp = &report["ood"][set]["msp"];
        assert_eq!(msp["auroc"].as_f64().unwrap(), in_memory.ood[set].msp.auroc);
        assert_eq!(msp["fpr95"].as_f64().unwrap(), in_memory.ood[set].msp.fpr95);
    }
    // The epoch's test accuracy in metrics.jsonl is the same number.
    let metrics = std::fs::read_to_string(run_path.join(METRICS_FILE)).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["test_accuracy"].as_f64().unwrap(), in_memory.accuracy);
    assert!(run_path.join(REPORT_MD).is_file());
}

/// The same seed and configuration give the same numbers.
#[test]
fn same_seed_same_run() {
    let device = Device::Cpu;
    let losses: Vec<Vec<f64>> = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let cfg = TrainConfig::from_toml(common::TINY_CONFIG).unwrap();
            let run = RunDir::create(&dir.path().join("run")).unwrap();
            let outcome = Trainer::new(cfg, &device)
                .unwrap()
                .run(&run, false, &TrainControl::default(), &mut Silent)
                .unwrap();
            outcome
                .metrics
                .iter()
                .flat_map(|m| [m.train_loss, m.test_accuracy])
                .collect()
        })
        .collect();
    assert_eq!(losses[0], losses[1]);
}

/// `--pretrained`: a new run starts from another run's weights, all but the classifier; a model
/// the weights do not fit is refused by name.
#[test]
fn pretrained_weights_start_a_new_run() {
    let device = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let first = RunDir::create(&dir.path().join("first")).unwrap();
    let cfg = TrainConfig::from_toml(common::TINY_CONFIG).unwrap();
    let source = Trainer::new(cfg.clone(), &device)
        .unwrap()
        .run(&first, false, &TrainControl::default(), &mut Silent)
        .unwrap()
        .model;
    let mut other = cfg.clone();
    other.seed = 99;
    let mut trainer = Trainer::new(other, &device).unwrap();
    let loaded = load_model(first.path(), &device).unwrap();
    trainer
        .load_pretrained(&loaded.params().tensors().unwrap())
        .unwrap();
    let (a, b) = (
        source.params().tensors().unwrap(),
        trainer.model().params().tensors().unwrap(),
    );
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (name, t) in &a {
        if name.starts_with("head.") {
            assert_ne!(values(t), values(&b[name]), "{name}: the classifier is new");
        } else {
            assert_eq!(values(t), values(&b[name]), "{name}");
        }
    }
    // A wider model does not take these weights.
    let mut wide = cfg;
    wide.model.args.insert("embed_dim".into(), 32.into());
    let mut trainer = Trainer::new(wide, &device).unwrap();
    assert!(trainer
        .load_pretrained(&loaded.params().tensors().unwrap())
        .is_err());
    // The flag reaches the run through the command line.
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, common::TINY_CONFIG).unwrap();
    let out = common::multimix(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--pretrained",
        first.path().to_str().unwrap(),
        "--out",
        dir.path().join("second").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("starting from"),
        "{err}"
    );
    let bad = common::multimix(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--pretrained",
        "/nonexistent/run",
        "--out",
        dir.path().join("third").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--pretrained /nonexistent/run"));
    assert!(!dir.path().join("third").exists());
}
