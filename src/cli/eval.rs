//! `multimix eval`.

use anyhow::{bail, Context, Result};
use clap::Args;
use multimix::checkpoint::load_model;
use multimix::evaluation::{default_options, evaluate_model_with, write_report};
use multimix_data::{conform, DataSpec};
use multimix_eval::detectors::Detector;
use multimix_eval::Attack;
use multimix_recipes::run::{RunDir, CONFIG_FILE};
use multimix_recipes::TrainConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// Options of `multimix eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The checkpoint: a run directory (the report is written into it), or a timm directory, a
    /// `.safetensors` file, hf-hub:owner/name[@revision] or a zoo name (with --data and --out).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Write the report into this new directory instead of the run directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Test data spec (default: the run's).
    #[arg(long)]
    data: Option<String>,
    /// Comma-separated OOD sets (default: the run's, mnist and gaussian).
    #[arg(long, value_delimiter = ',')]
    ood: Option<Vec<String>>,
    /// Comma-separated attacks of the robustness curves: fgsm, pgd (default: fgsm).
    #[arg(long, value_delimiter = ',')]
    attack: Option<Vec<String>>,
    /// Comma-separated ε of the robustness curves in [0, 1] pixel units, as decimals or
    /// fractions, e.g. 1/255,2/255,4/255,8/255 (default: the FGSM ε only).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    eps: Option<Vec<String>>,
    /// Comma-separated OOD detectors: msp, maxlogit, energy, odin, mahalanobis, knn
    /// (default: msp, maxlogit, energy; msp always runs; mahalanobis and knn need the data's
    /// training split).
    #[arg(long, value_delimiter = ',')]
    detectors: Option<Vec<String>>,
    /// Input pre-processing ε of the Mahalanobis detector in [0, 1] pixel units, e.g. 0.002
    /// (Lee et al. 2018, pytorch-ood's MahalanobisODIN; default 0: none, as OpenOOD's MDS).
    #[arg(long, allow_negative_numbers = true)]
    mahalanobis_eps: Option<String>,
    /// ε of the headline FGSM number, in [0, 1] pixel units, e.g. 8/255 (default: the run's).
    #[arg(long, allow_negative_numbers = true)]
    fgsm_eps: Option<String>,
    /// Detection checkpoints: write the detections here as a COCO results JSON file (image ids
    /// 1..N in test-set order, category ids class index + 1, boxes in the evaluated images).
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Detection checkpoints: write the COCO ground truth the detections are scored against
    /// (`multimix det-metrics --gt` reads it).
    #[arg(long)]
    ground_truth: Option<PathBuf>,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// A detection run or checkpoint file: COCO AP instead of the classification suite, whose
/// options are refused in one line.
fn run_detection(args: EvalArgs) -> Result<()> {
    let classification_only: Vec<&str> = [
        ("--ood", args.ood.is_some()),
        ("--attack", args.attack.is_some()),
        ("--eps", args.eps.is_some()),
        ("--detectors", args.detectors.is_some()),
        ("--fgsm-eps", args.fgsm_eps.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect();
    if !classification_only.is_empty() {
        bail!(
            "{} {}; {} is a detection checkpoint (evaluated with COCO AP): drop {}",
            classification_only.join(", "),
            match classification_only.len() {
                1 => "is a classification option",
                _ => "are classification options",
            },
            args.checkpoint.display(),
            match classification_only.len() {
                1 => "it",
                _ => "them",
            }
        );
    }
    super::detect::eval(super::detect::DetEvalArgs {
        checkpoint: args.checkpoint,
        out: args.out,
        data: args.data,
        predictions: args.predictions,
        ground_truth: args.ground_truth,
        device: args.device,
    })
}

/// Parse an ε given as a decimal (`0.0314`) or a fraction (`8/255`), in [0, 1].
pub fn parse_eps(text: &str) -> Result<f64> {
    let t = text.trim();
    let value = match t.split_once('/') {
        Some((a, b)) => {
            let (a, b): (f64, f64) = (a.trim().parse()?, b.trim().parse()?);
            if b == 0.0 {
                bail!("division by zero");
            }
            a / b
        }
        None => t.parse()?,
    };
    if !(0.0..=1.0).contains(&value) {
        bail!("{value} is outside [0, 1] (ε is in pixel units of images in [0, 1], e.g. 8/255)");
    }
    Ok(value)
}

fn parse_list<T>(
    flag: &str,
    items: &[String],
    parse: impl Fn(&str) -> Result<T>,
) -> Result<Vec<T>> {
    items
        .iter()
        .map(|s| parse(s).with_context(|| format!("--{flag} `{s}`")))
        .collect()
}

/// What the flags ask for, parsed and checked before anything is loaded.
struct Requested {
    fgsm_eps: Option<f64>,
    attacks: Option<Vec<Attack>>,
    eps: Option<Vec<f64>>,
    detectors: Option<Vec<Detector>>,
    mahalanobis_eps: Option<f64>,
}

fn parse_flags(args: &EvalArgs) -> Result<Requested> {
    let fgsm_eps = match &args.fgsm_eps {
        Some(v) => Some(parse_eps(v).with_context(|| format!("--fgsm-eps `{v}`"))?),
        None => None,
    };
    let attacks = match &args.attack {
        Some(v) => Some(parse_list("attack", v, |s| {
            s.parse::<Attack>().map_err(anyhow::Error::msg)
        })?),
        None => None,
    };
    let eps = match &args.eps {
        Some(v) => Some(parse_list("eps", v, parse_eps)?),
        None => None,
    };
    let detectors = match &args.detectors {
        Some(v) => Some(parse_list("detectors", v, |s| {
            s.parse::<Detector>().map_err(anyhow::Error::msg)
        })?),
        None => None,
    };
    let mahalanobis_eps = match &args.mahalanobis_eps {
        Some(v) => Some(parse_eps(v).with_context(|| format!("--mahalanobis-eps `{v}`"))?),
        None => None,
    };
    if mahalanobis_eps.is_some_and(|e| e > 0.0)
        && !detectors
            .as_ref()
            .is_some_and(|d| d.contains(&Detector::Mahalanobis))
    {
        bail!("--mahalanobis-eps pre-processes the inputs of the Mahalanobis detector: add --detectors mahalanobis");
    }
    Ok(Requested {
        fgsm_eps,
        attacks,
        eps,
        detectors,
        mahalanobis_eps,
    })
}

/// Evaluate the run and rewrite its report.
pub fn run(args: EvalArgs) -> Result<()> {
    if multimix_recipes::detection::is_detection_checkpoint(&args.checkpoint) {
        return run_detection(args);
    }
    if args.predictions.is_some() || args.ground_truth.is_some() {
        bail!(
            "--predictions and --ground-truth are for detection checkpoints; {} is not one",
            args.checkpoint.display()
        );
    }
    let requested = parse_flags(&args)?;
    let device = super::device(&args.device)?;
    // A run directory brings its configuration (data, OOD sets, ε, seed) and takes the report;
    // any other checkpoint (timm directory, file, hf-hub:owner/name, zoo name) needs --data and
    // --out.
    let is_run = args.checkpoint.join(CONFIG_FILE).is_file();
    let mut cfg = if is_run {
        RunDir::open(&args.checkpoint)?.read_config()?
    } else {
        if args.data.is_none() || args.out.is_none() {
            bail!(
                "checkpoint `{}` is not a run directory of this project: give --data SPEC (the test set) and --out DIR (a new directory for the report)",
                args.checkpoint.display()
            );
        }
        TrainConfig::default()
    };
    if let Some(out) = &args.out {
        if out.exists() && std::fs::read_dir(out)?.next().is_some() {
            bail!(
                "--out {} exists and is not empty: choose a new directory",
                out.display()
            );
        }
    }
    if let Some(v) = args.data {
        cfg.data.spec = v;
    }
    if let Some(v) = args.ood {
        cfg.eval.ood = v;
    }
    if let Some(v) = requested.fgsm_eps {
        cfg.eval.fgsm_eps = v;
    }
    let mut opts = default_options(&cfg.eval);
    opts.seed = cfg.seed;
    if let Some(v) = requested.attacks {
        opts.attacks = v;
    }
    if let Some(v) = requested.eps {
        opts.eps = v;
    }
    if let Some(v) = requested.detectors {
        opts.detectors = v;
    }
    if let Some(v) = requested.mahalanobis_eps {
        opts.mahalanobis_eps = v;
    }
    opts.validate()?;
    let model = load_model(&args.checkpoint, &device)?;
    let spec: DataSpec = cfg.data.spec.parse()?;
    let arch = &model.config().arch;
    let shape = (arch.in_chans(), arch.img_size(), arch.img_size());
    let splits = spec.load()?;
    let test =
        Arc::new(conform(splits.test, shape).with_context(|| format!("test data `{spec}`"))?);
    let train = if opts.detectors.iter().any(|d| d.needs_training_features()) {
        let Some(train) = splits.train else {
            bail!("--detectors mahalanobis and knn are fit on training features, but `{spec}` has no training split (use --data with one, e.g. fashion-mnist-mini)");
        };
        Some(Arc::new(
            conform(train, shape).with_context(|| format!("training data `{spec}`"))?,
        ))
    } else {
        None
    };
    let report = evaluate_model_with(&model, &cfg.eval, &test, train.as_ref(), &opts, &device)?;
    let run = match &args.out {
        Some(out) => RunDir::create(out)?,
        None => RunDir::open(&args.checkpoint)?,
    };
    write_report(&run, &report)?;
    println!("{}", report.to_json()?);
    Ok(())
}
