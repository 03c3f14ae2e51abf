//! `multimix train`.

use anyhow::{bail, Context, Result};
use clap::Args;
use multimix::checkpoint::{load_model, CheckpointSource};
use multimix::evaluation::{evaluate_model, write_report};
use multimix_augment::{AttnNorm, AttnQuery, MixMode, Pairing};
use multimix_hub::HubOptions;
use multimix_recipes::config::{MixMethod, OptimizerKind, ScheduleKind, TrainConfig};
use multimix_recipes::progress::Bar;
use multimix_recipes::run::RunDir;
use multimix_recipes::train::{TrainControl, Trainer};
use std::path::{Path, PathBuf};

/// Options of `multimix train`; each overrides the same key of `--config`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A TOML configuration (e.g. the `config.toml` of an earlier run).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The run directory (default: runs/<architecture>-<method>-s<seed>-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Data spec: fashion-mnist-mini (default), mnist-mini, fashion-mnist, idx:DIR, cifar10:DIR,
    /// cifar100:DIR, folder:DIR[@HxW].
    #[arg(long)]
    data: Option<String>,
    /// Architecture (e.g. vit_mini_patch7_28, vit_tiny_patch16_224).
    #[arg(long)]
    model: Option<String>,
    /// Mixing method: none, mixup, cutmix, mixup-cutmix, manifold-mixup, multimix,
    /// dense-multimix.
    #[arg(long)]
    mix: Option<MixMethod>,
    /// Number of interpolated tuples per batch (MultiMix).
    #[arg(long)]
    mix_n: Option<usize>,
    /// Beta / Dirichlet concentration α (default: 1; 2 for manifold mixup).
    #[arg(long)]
    mix_alpha: Option<f64>,
    /// MultiMix tuple length m (default: the whole batch).
    #[arg(long)]
    mix_m: Option<usize>,
    /// Probability of mixing a batch (mixup, CutMix).
    #[arg(long)]
    mix_prob: Option<f64>,
    /// mixup-cutmix: probability of CutMix rather than mixup.
    #[arg(long)]
    switch_prob: Option<f64>,
    /// λ per batch, pair or element (mixup, CutMix): batch, pair, elem.
    #[arg(long)]
    mix_mode: Option<MixMode>,
    /// Partners: flip (timm) or random.
    #[arg(long)]
    mix_pairing: Option<Pairing>,
    /// Label smoothing folded into the targets.
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// Dense MultiMix attention query: gap, cam, cls, uniform.
    #[arg(long)]
    attn_query: Option<AttnQuery>,
    /// Dense MultiMix attention normalization: softmax, relu-l1.
    #[arg(long)]
    attn_norm: Option<AttnNorm>,
    /// MultiMix with online self-distillation from an EMA teacher.
    #[arg(long)]
    self_distill: bool,
    /// Momentum τ of the EMA teacher.
    #[arg(long)]
    ema_momentum: Option<f64>,
    /// Weight of the distillation term.
    #[arg(long)]
    distill_weight: Option<f64>,
    /// Temperature of the teacher's softmax.
    #[arg(long)]
    distill_temperature: Option<f64>,
    /// Optimizer: sgd (momentum 0.9) or adamw.
    #[arg(long, value_parser = parse_enum::<OptimizerKind>)]
    optimizer: Option<OptimizerKind>,
    /// Weight decay (not on biases, norms, position embeddings, class tokens).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Learning-rate schedule: cosine, step or constant.
    #[arg(long, value_parser = parse_enum::<ScheduleKind>)]
    schedule: Option<ScheduleKind>,
    /// Linear warmup in epochs (fractions allowed).
    #[arg(long)]
    warmup_epochs: Option<f64>,
    /// Clip the gradient to this global L2 norm.
    #[arg(long)]
    clip_grad: Option<f64>,
    /// Start from a checkpoint's weights, all but the classifier: a run directory, a timm
    /// directory, hf-hub:owner/name[@revision] or a zoo name (multimix zoo list).
    #[arg(long)]
    pretrained: Option<String>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Images per batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the run's random generator.
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, conflicts_with_all = ["config", "out"])]
    resume: Option<PathBuf>,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Task: classification, or detection (a CenterNet head on the dense outputs: ViT tokens or
    /// a CNN's last map, trained on synthetic canvases of the data's images; COCO AP in
    /// report.json).
    #[arg(long, value_enum, default_value = "classification")]
    task: super::detect::Task,
    /// Detection: a classification run of this project (directory, file or
    /// hf-hub:owner/name) whose backbone initializes the detector.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Detection: synthetic training canvases (default 2048).
    #[arg(long)]
    det_images: Option<usize>,
    /// Detection: synthetic test canvases (default 256).
    #[arg(long)]
    det_test_images: Option<usize>,
    /// Detection: canvas side in pixels, a multiple of the backbone's output stride (default
    /// 56; e.g. 64 or 224 for ImageNet-stem ResNets and 16-pixel patches).
    #[arg(long)]
    det_canvas: Option<usize>,
    /// Detection: train on files instead: coco:DIR (DIR/annotations.json, DIR/images/) or
    /// voc:DIR (Annotations/, JPEGImages/).
    #[arg(long, requires = "det_test_data")]
    det_data: Option<String>,
    /// Detection: test files (same forms as --det-data).
    #[arg(long, requires = "det_data")]
    det_test_data: Option<String>,
}

/// Parse a flag value as the configuration file spells it (the enum's serde names).
fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    use serde::de::IntoDeserializer;
    T::deserialize(s.into_deserializer()).map_err(|e: serde::de::value::Error| e.to_string())
}

/// Set each configuration key whose flag was given; true when any was.
macro_rules! overrides {
    ($args:expr, $cfg:expr; $($flag:ident => $($key:ident).+),+ $(,)?) => {{
        let mut any = false;
        $(
            if let Some(v) = &$args.$flag {
                $cfg.$($key).+ = v.clone().into();
                any = true;
            }
        )+
        any
    }};
}

impl TrainArgs {
    /// Apply the flags other than `--config`, `--out`, `--model` to `cfg`; true when any was given.
    fn apply(&self, cfg: &mut TrainConfig) -> bool {
        let any = overrides!(self, cfg;
            data => data.spec,
            mix => mix.method,
            mix_n => mix.n,
            mix_alpha => mix.alpha,
            mix_m => mix.m,
            mix_prob => mix.prob,
            switch_prob => mix.switch_prob,
            mix_mode => mix.mode,
            mix_pairing => mix.pairing,
            label_smoothing => mix.label_smoothing,
            attn_query => mix.attn_query,
            attn_norm => mix.attn_norm,
            ema_momentum => distill.ema_momentum,
            distill_weight => distill.weight,
            distill_temperature => distill.temperature,
            optimizer => optim.name,
            weight_decay => optim.weight_decay,
            schedule => schedule.name,
            warmup_epochs => schedule.warmup_epochs,
            clip_grad => optim.clip_grad,
            pretrained => train.pretrained,
            epochs => train.epochs,
            max_steps => train.max_steps,
            batch_size => train.batch_size,
            lr => optim.lr,
            seed => seed,
        );
        if self.self_distill {
            cfg.distill.enabled = true;
        }
        any || self.self_distill
    }

    fn has_overrides(&self) -> bool {
        self.model.is_some() || self.apply(&mut TrainConfig::default())
    }

    /// The configuration: `--config` (or the defaults) with the flags applied.
    fn config(&self) -> Result<TrainConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --config {}", path.display()))?;
                TrainConfig::from_toml(&text)
                    .with_context(|| format!("--config {}", path.display()))?
            }
            None => TrainConfig::default(),
        };
        if let Some(v) = &self.model {
            if *v != cfg.model.architecture {
                cfg.model.architecture = v.clone();
                cfg.model.args.clear();
                cfg.model.mean = None;
                cfg.model.std = None;
            }
        }
        self.apply(&mut cfg);
        Ok(cfg)
    }
}

/// Train, evaluate, write the report, print the run directory.
pub fn run(args: TrainArgs) -> Result<()> {
    let resumes_detection = args.resume.as_ref().is_some_and(|d| {
        d.join(multimix_recipes::detection::DETECTION_FILE)
            .is_file()
    });
    if args.task == super::detect::Task::Detection || resumes_detection {
        return run_detection(&args);
    }
    if args.init.is_some()
        || args.det_images.is_some()
        || args.det_test_images.is_some()
        || args.det_canvas.is_some()
        || args.det_data.is_some()
    {
        bail!("--init and the --det-* options need --task detection");
    }
    let device = super::device(&args.device)?;
    let (run, trainer, resume) = match &args.resume {
        Some(dir) => {
            if args.has_overrides() {
                bail!(
                    "--resume continues {} with its own config.toml; drop the other training flags",
                    dir.display()
                );
            }
            let run = RunDir::open(dir)?;
            let trainer = Trainer::new(run.read_config()?, &device)?;
            (run, trainer, true)
        }
        None => {
            let mut trainer = Trainer::new(args.config()?, &device)?;
            if let Some(spec) = trainer.config().train.pretrained.clone() {
                let source = load_model(Path::new(&spec), &device)
                    .with_context(|| format!("--pretrained {spec}"))?;
                trainer
                    .load_pretrained(&source.params().tensors()?)
                    .with_context(|| {
                        format!(
                            "--pretrained {spec} does not fit the model `{}`: choose the matching --model",
                            trainer.config().model.architecture
                        )
                    })?;
                eprintln!("starting from {spec} (all weights but the classifier)");
            }
            let path = args
                .out
                .clone()
                .unwrap_or_else(|| RunDir::default_path(trainer.config()));
            (RunDir::create(&path)?, trainer, false)
        }
    };
    let control = TrainControl {
        interrupt: Some(interrupt::on_ctrl_c()),
        ..TrainControl::default()
    };
    let outcome = trainer.run(&run, resume, &control, &mut Bar::new())?;
    if outcome.interrupted {
        eprintln!(
            "interrupted: checkpoint saved; continue with `multimix train --resume {}`",
            run.path().display()
        );
        println!("{}", run.path().display());
        std::process::exit(130);
    }
    eprintln!("evaluating (accuracy, calibration, FGSM, OOD) ...");
    let report = evaluate_model(&outcome.model, &outcome.config.eval, &outcome.test, &device)?;
    write_report(&run, &report)?;
    eprintln!(
        "test accuracy {:.2}%, ECE {:.2}%, FGSM accuracy {:.2}% (eps {:.0}/255)",
        100.0 * report.accuracy,
        100.0 * report.ece,
        100.0 * report.fgsm.accuracy,
        report.fgsm.eps * 255.0
    );
    for (name, o) in &report.ood {
        eprintln!(
            "OOD {name}: MSP AUROC {:.2}%, FPR@95 {:.2}%",
            100.0 * o.msp.auroc,
            100.0 * o.msp.fpr95
        );
    }
    println!("{}", run.path().display());
    Ok(())
}

/// `--task detection` (or `--resume` of a detection run): the detection recipe, with the same
/// Ctrl-C handling as classification.
fn run_detection(args: &TrainArgs) -> Result<()> {
    if let Some(dir) = &args.resume {
        let has_det_flags = args.init.is_some()
            || args.det_images.is_some()
            || args.det_test_images.is_some()
            || args.det_canvas.is_some()
            || args.det_data.is_some();
        if args.has_overrides() || has_det_flags {
            bail!(
                "--resume continues {} with its own config.toml and detection.toml; drop the other training flags",
                dir.display()
            );
        }
        if !dir
            .join(multimix_recipes::detection::DETECTION_FILE)
            .is_file()
        {
            bail!(
                "--task detection --resume {}: not a detection run (it has no detection.toml)",
                dir.display()
            );
        }
    }
    let det = super::detect::DetectArgs {
        out: args.out.clone(),
        // A run pushed to a hub (hf-hub:owner/name) is fetched into the cache first.
        init: match &args.init {
            Some(p) => Some(
                CheckpointSource::parse(p)
                    .and_then(|source| source.fetch(HubOptions::from_env()))
                    .with_context(|| format!("--init {}", p.display()))?,
            ),
            None => None,
        },
        resume: args.resume.clone(),
        images: args.det_images,
        test_images: args.det_test_images,
        canvas: args.det_canvas,
        data: args.det_data.clone(),
        test_data: args.det_test_data.clone(),
    };
    let control = TrainControl {
        interrupt: Some(interrupt::on_ctrl_c()),
        ..TrainControl::default()
    };
    super::detect::run(args.config()?, det, &args.device, control)
}

/// Ctrl-C during training: the first one asks the loop to save a checkpoint and stop after the
/// current step; a second one ends the process at once (the default action is restored).
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static REQUESTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_sigint(_: libc::c_int) {
        REQUESTED.store(true, Ordering::SeqCst);
        // SAFETY: signal() with SIG_DFL is async-signal-safe on Linux and only resets the
        // disposition of SIGINT.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
        }
    }

    /// Install the handler and return the flag it sets.
    pub fn on_ctrl_c() -> &'static AtomicBool {
        let handler = on_sigint as extern "C" fn(libc::c_int);
        // SAFETY: the handler only stores to an atomic and resets the disposition.
        unsafe {
            libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        }
        &REQUESTED
    }
}
