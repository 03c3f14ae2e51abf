//! The detection recipe: data sets, the detector on any backbone, the training loop with the
//! classification loop's checkpoints and exact resume, and the report.

use super::{build_targets, centernet_loss, CenterNetHead, DetectionConfig};
use super::{Detector, DETECTION_FILE};
use crate::config::TrainConfig;
use crate::error::{io_error, RecipeError, Result};
use crate::optim::{clip_grad_norm, NamedParam, Optimizer};
use crate::progress::Progress;
use crate::run::{EpochMetrics, RunDir, MODEL_FILE, REPORT_JSON, REPORT_MD};
use crate::schedule::LrSchedule;
use crate::train::{
    build_schedule, load_checkpoint, optimizer_for, save_checkpoint, EpochState, TrainControl,
    META_MODEL_CONFIG,
};
use candle_core::{Device, Tensor};
use multimix_backbones::resnet::Stem;
use multimix_backbones::{ArchConfig, Ctx, Model, ModelConfig, ParamStore};
use multimix_data::detection::{
    read_coco, read_voc, synthetic, DetectionSet, ImageShape, ObjectBox, SyntheticConfig,
};
use multimix_data::loader::epoch_order;
use multimix_data::DataSpec;
use multimix_eval::detection::CocoAp;
use multimix_hub::checkpoint::load_safetensors;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// How the APs are computed, as the reports state it.
pub const CONVENTION: &str = "COCO bbox AP as pycocotools' COCOeval: IoU 0.5:0.05:0.95, \
     101-point recall, maxDets 100, area all; image ids 1..N in test-set order, category ids \
     class index + 1";

/// The backbone weights and configuration of a classification run directory (or a
/// `model.safetensors` file).
pub fn load_init(path: &Path, device: &Device) -> Result<(ModelConfig, BTreeMap<String, Tensor>)> {
    load_weights_file(path, device, "--init ")
}

/// The model configuration and tensors of a run directory's `model.safetensors` (or that file);
/// errors start with `what` and the path.
fn load_weights_file(
    path: &Path,
    device: &Device,
    what: &str,
) -> Result<(ModelConfig, BTreeMap<String, Tensor>)> {
    let file = if path.is_dir() {
        path.join(MODEL_FILE)
    } else {
        path.to_path_buf()
    };
    let ckpt = load_safetensors(&file, device)?;
    let json = ckpt.metadata.get(META_MODEL_CONFIG).ok_or_else(|| {
        RecipeError::Config(format!(
            "{what}{}: {} has no `{META_MODEL_CONFIG}` metadata: not a multimix checkpoint",
            path.display(),
            file.display()
        ))
    })?;
    let cfg: ModelConfig = serde_json::from_str(json).map_err(|e| {
        RecipeError::Config(format!(
            "{what}{}: invalid model configuration: {e}",
            file.display()
        ))
    })?;
    Ok((cfg, ckpt.tensors))
}

/// Read a detection set named `coco:DIR` or `voc:DIR`, images shaped to `shape`.
pub fn read_detection_spec(spec: &str, shape: ImageShape) -> Result<DetectionSet> {
    match spec.split_once(':') {
        Some(("coco", dir)) if !dir.is_empty() => {
            let dir = Path::new(dir);
            Ok(read_coco(&dir.join("annotations.json"), &dir.join("images"), shape)?)
        }
        Some(("voc", dir)) if !dir.is_empty() => Ok(read_voc(Path::new(dir), shape)?),
        _ => Err(RecipeError::Config(format!(
            "detection data `{spec}`: expected coco:DIR (DIR/annotations.json, DIR/images/) or voc:DIR"
        ))),
    }
}

/// Whether a data spec names detection files (`coco:DIR`, `voc:DIR`) rather than images to
/// draw synthetic canvases from.
pub fn is_detection_files(spec: &str) -> bool {
    spec.starts_with("coco:") || spec.starts_with("voc:")
}

/// `count` synthetic canvases of the data spec's training images, drawn from `seed`.
fn synthetic_set(
    cfg: &TrainConfig,
    det: &DetectionConfig,
    count: usize,
    seed: u64,
) -> Result<DetectionSet> {
    let spec: DataSpec = cfg.data.spec.parse()?;
    let source = spec.load()?.train.ok_or_else(|| {
        RecipeError::Config(format!(
            "data `{spec}` has no training split to draw objects from"
        ))
    })?;
    let sc = SyntheticConfig {
        count,
        canvas: det.canvas,
        max_objects: det.max_objects,
        ..SyntheticConfig::default()
    };
    Ok(synthetic(&source, &sc, seed)?)
}

/// The training and test sets: files when `det.train_data` is set, else synthetic canvases of
/// the data spec's training images (two seeds drawn from `rng`); file images get `channels`.
fn detection_sets(
    cfg: &TrainConfig,
    det: &DetectionConfig,
    rng: &mut ChaCha8Rng,
    channels: impl FnOnce() -> Result<usize>,
) -> Result<(DetectionSet, DetectionSet)> {
    if let Some(train) = &det.train_data {
        let test = det.test_data.as_deref().ok_or_else(|| {
            RecipeError::Config(
                "detection training data from files needs test data too (--det-test-data)".into(),
            )
        })?;
        let shape = ImageShape {
            size: det.canvas,
            channels: channels()?,
        };
        let (train, test) = (
            read_detection_spec(train, shape)?,
            read_detection_spec(test, shape)?,
        );
        if train.class_names != test.class_names {
            return Err(RecipeError::Config(format!(
                "detection training classes {:?} differ from test classes {:?}",
                train.class_names, test.class_names
            )));
        }
        return Ok((train, test));
    }
    let (train_seed, test_seed) = (rng.next_u64(), rng.next_u64());
    Ok((
        synthetic_set(cfg, det, det.train_images, train_seed)?,
        synthetic_set(cfg, det, det.test_images, test_seed)?,
    ))
}

/// The test set of a detection run, as [`train_detection`] made it: `det.test_data`'s files, or
/// the synthetic test canvases of `cfg.data.spec` drawn from `cfg.seed`; file images get
/// `channels`.
pub fn detection_test_set(
    cfg: &TrainConfig,
    det: &DetectionConfig,
    channels: usize,
) -> Result<DetectionSet> {
    if let Some(test) = &det.test_data {
        let shape = ImageShape {
            size: det.canvas,
            channels,
        };
        return read_detection_spec(test, shape);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let (_train_seed, test_seed) = (rng.next_u64(), rng.next_u64());
    synthetic_set(cfg, det, det.test_images, test_seed)
}

/// Per-channel mean and std of a detection set's pixels in [0, 1].
fn mean_std(set: &DetectionSet) -> (Vec<f64>, Vec<f64>) {
    let hw = set.height * set.width;
    let (mut sum, mut sq) = (vec![0f64; set.channels], vec![0f64; set.channels]);
    for img in set.images.chunks_exact(set.image_len()) {
        for (c, plane) in img.chunks_exact(hw).enumerate() {
            for &p in plane {
                let v = f64::from(p) / 255.0;
                sum[c] += v;
                sq[c] += v * v;
            }
        }
    }
    let n = (set.len() * hw).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / n - m * m).max(1e-12).sqrt())
        .collect();
    (mean, std)
}

/// The pixels per cell of the map the head runs on: a ViT's patch size; a CNN's last map, its
/// stem's stride (4 with the ImageNet stem, 1 with the CIFAR stem) halved again by every stage
/// after the first.
pub fn output_stride(arch: &ArchConfig) -> usize {
    let cnn = |stem: Stem, stages: usize| {
        let stem = match stem {
            Stem::Imagenet => 4,
            Stem::Cifar => 1,
        };
        stem << stages.saturating_sub(1)
    };
    match arch {
        ArchConfig::Vit(v) => v.patch_size,
        ArchConfig::ResNet(c) => cnn(c.stem, c.layers.len()),
        ArchConfig::PreAct(c) => cnn(c.stem, c.layers.len()),
    }
}

/// The `(h, w)` grid and stride of the map for `canvas`-pixel images; the canvas must be a
/// multiple of the stride, so that every cell covers `stride × stride` pixels exactly.
pub fn dense_grid(cfg: &ModelConfig, canvas: usize) -> Result<((usize, usize), usize)> {
    let stride = output_stride(&cfg.arch);
    if canvas == 0 || !canvas.is_multiple_of(stride) {
        let kind = match cfg.arch {
            ArchConfig::Vit(_) => "patch size",
            _ => "output stride",
        };
        let below = stride * (canvas / stride).max(1);
        let choice = match below < canvas {
            true => format!("{below} or {}", below + stride),
            false => below.to_string(),
        };
        return Err(RecipeError::Config(format!(
            "detection canvas {canvas} is not a multiple of `{}`'s {kind} {stride}: choose \
             --det-canvas {choice}",
            cfg.architecture,
        )));
    }
    Ok(((canvas / stride, canvas / stride), stride))
}

/// A detector for a model configuration: the model built from `seed`, a new head on its dense
/// map drawn from `head_seed`.
fn assemble(
    model_cfg: &ModelConfig,
    canvas: usize,
    head_hidden: usize,
    classes: usize,
    (seed, head_seed): (u64, u64),
    device: &Device,
) -> Result<Detector> {
    let (grid, stride) = dense_grid(model_cfg, canvas)?;
    let model = Model::new(model_cfg, device, seed)?;
    // The classifier reads the pooled dense embeddings: its input width is the map's.
    let dim = model.backbone().head().weight().dim(1)?;
    let head_params = ParamStore::new(device, head_seed);
    let head = CenterNetHead::new(&head_params.pp("det_head"), dim, head_hidden, classes)?;
    Ok(Detector {
        model,
        head_params,
        head,
        grid,
        stride: stride as f32,
    })
}

/// Build the detector: the backbone of `cfg.model` (or of `det.init`, its weights loaded and
/// a ViT's position embeddings resampled to the canvas) at the canvas size, and a new head on
/// its dense map (ViT tokens as a map, a CNN's last feature map) drawn from `rng`. `cfg.model`
/// is set to the resolved backbone configuration.
pub fn build_detector(
    cfg: &mut TrainConfig,
    det: &DetectionConfig,
    train: &DetectionSet,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<Detector> {
    let init = det
        .init
        .as_deref()
        .map(|p| load_init(p, device))
        .transpose()?;
    let (architecture, mut args, norm) = match &init {
        Some((c, _)) => {
            let raw: multimix_backbones::RawModelConfig = c.clone().into();
            (
                raw.architecture,
                raw.args,
                Some((c.mean.clone(), c.std.clone())),
            )
        }
        None => (cfg.model.architecture.clone(), cfg.model.args.clone(), None),
    };
    // Refuse a canvas the map does not tile before the backbone checks its own input size.
    dense_grid(&ModelConfig::from_preset(&architecture, &args)?, det.canvas)?;
    args.insert("img_size".into(), det.canvas.into());
    args.insert("in_chans".into(), train.channels.into());
    args.entry("num_classes")
        .or_insert(train.num_classes().into());
    let model_cfg = ModelConfig::from_preset(&architecture, &args)?;
    let (mean, std) = match (norm, &cfg.model.mean, &cfg.model.std) {
        (Some(n), _, _) => n,
        (None, Some(m), Some(s)) => (m.clone(), s.clone()),
        _ => mean_std(train),
    };
    let model_cfg = model_cfg.with_normalization(mean, std)?;
    cfg.model = model_cfg.clone().into();
    let seeds = (rng.next_u64(), rng.next_u64());
    let detector = assemble(
        &model_cfg,
        det.canvas,
        det.head_hidden,
        train.num_classes(),
        seeds,
        device,
    )?;
    if let Some((_, weights)) = init {
        // Everything but the classifier, position embeddings resampled to the canvas grid as
        // timm's checkpoint filter does (bicubic, antialiased).
        detector.model.load_weights_new_head(&weights)?;
    }
    Ok(detector)
}

impl Detector {
    /// A detector saved by the recipe: a detection run directory or its `model.safetensors`
    /// (the backbone from the model configuration in the metadata, the head from the
    /// `det_head.*` tensors, its width and class count read from their shapes).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let file = if path.is_dir() {
            path.join(MODEL_FILE)
        } else {
            path.to_path_buf()
        };
        let (cfg, tensors) = load_weights_file(&file, device, "")?;
        let (head, body): (BTreeMap<_, _>, BTreeMap<_, _>) = tensors
            .into_iter()
            .partition(|(name, _)| name.starts_with("det_head."));
        let shape = |name: &str| -> Result<Vec<usize>> {
            head.get(name).map(|t| t.dims().to_vec()).ok_or_else(|| {
                RecipeError::Config(format!(
                    "{} has no `{name}`: not a detection checkpoint of this project",
                    file.display()
                ))
            })
        };
        let (hidden, classes) = (
            shape("det_head.hm.fc1.weight")?[0],
            shape("det_head.hm.fc2.weight")?[0],
        );
        let canvas = cfg.arch.img_size();
        let detector = assemble(&cfg, canvas, hidden, classes, (0, 0), device)?;
        detector.model.load_weights(&body, true)?;
        detector.head_params.load(&head, true)?;
        Ok(detector)
    }
}

/// Whether `path` is a detection run directory (it has `detection.toml`) or a weights file (or
/// a directory's `model.safetensors`) with a detection head (`det_head.*` tensors). Anything
/// unreadable is not.
pub fn is_detection_checkpoint(path: &Path) -> bool {
    if path.join(DETECTION_FILE).is_file() {
        return true;
    }
    let file = match path.is_dir() {
        true => path.join(MODEL_FILE),
        false => path.to_path_buf(),
    };
    multimix_hub::checkpoint::inspect_safetensors(&file)
        .is_ok_and(|(_, infos)| infos.iter().any(|i| i.name.starts_with("det_head.")))
}

/// The detection options of a run directory (`detection.toml`).
pub fn read_detection_config(run: &RunDir) -> Result<DetectionConfig> {
    let path = run.file(DETECTION_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
    DetectionConfig::from_toml(&text)
        .map_err(|e| RecipeError::Config(format!("{}: {e}", path.display())))
}

/// What a detection run leaves: the detector, its per-epoch metrics and the final APs.
pub struct DetectionOutcome {
    /// The trained detector.
    pub detector: Detector,
    /// Per-epoch metrics (`test_accuracy` holds the test AP50).
    pub metrics: Vec<EpochMetrics>,
    /// AP on the training images; `None` when the run stopped before its end.
    pub train_ap: Option<CocoAp>,
    /// AP on the test images (-1 each without test images, as pycocotools); `None` when the
    /// run stopped before its end.
    pub test_ap: Option<CocoAp>,
    /// The run stopped on [`TrainControl::interrupt`] (a checkpoint was saved).
    pub interrupted: bool,
}

/// The report of a detection run or evaluation (`report.json`, `report.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectionReport {
    /// "detection".
    pub task: String,
    /// The evaluation convention ([`CONVENTION`]).
    pub convention: String,
    /// The test set's name.
    pub test_set: String,
    /// Its number of images.
    pub images: usize,
    /// COCO AP@[0.5:0.95] on the test set.
    pub ap: f64,
    /// AP50 on the test set.
    pub ap50: f64,
    /// AP75 on the test set.
    pub ap75: f64,
    /// The same on the training set (written by training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<CocoAp>,
    /// The detection options.
    pub detection: DetectionConfig,
}

impl DetectionReport {
    /// The report of `test_ap` on `test` (and `train_ap`) for the options `det`.
    pub fn new(
        test: &DetectionSet,
        test_ap: CocoAp,
        train_ap: Option<CocoAp>,
        det: &DetectionConfig,
    ) -> Self {
        Self {
            task: "detection".into(),
            convention: CONVENTION.into(),
            test_set: test.name.clone(),
            images: test.len(),
            ap: test_ap.ap,
            ap50: test_ap.ap50,
            ap75: test_ap.ap75,
            train: train_ap,
            detection: det.clone(),
        }
    }

    /// The report for people.
    pub fn to_markdown(&self) -> String {
        let mut md = format!(
            "# Detection report\n\nTest set: {} ({} images).\n\n| metric | test |{}\n|---|---|{}\n",
            self.test_set,
            self.images,
            if self.train.is_some() { " train |" } else { "" },
            if self.train.is_some() { "---|" } else { "" },
        );
        let rows: [(&str, f64, Option<f64>); 3] = [
            ("AP@[0.5:0.95]", self.ap, self.train.map(|t| t.ap)),
            ("AP50", self.ap50, self.train.map(|t| t.ap50)),
            ("AP75", self.ap75, self.train.map(|t| t.ap75)),
        ];
        for (name, test, train) in rows {
            md.push_str(&format!("| {name} | {test:.4} |"));
            if let Some(t) = train {
                md.push_str(&format!(" {t:.4} |"));
            }
            md.push('\n');
        }
        md.push_str(&format!("\nConvention: {}.\n", self.convention));
        md
    }

    /// Write `report.json` and `report.md` into `run`, each atomically.
    pub fn write(&self, run: &RunDir) -> Result<()> {
        let json =
            serde_json::to_string_pretty(self).map_err(|e| RecipeError::Config(e.to_string()))?;
        run.write(REPORT_JSON, json.as_bytes())?;
        run.write(REPORT_MD, self.to_markdown().as_bytes())
    }
}

/// A detection run, fully prepared: data sets drawn, detector built (and initialized), optimizer
/// and schedule made. Building it validates the configuration, so nothing is written before it
/// is known to be good.
pub struct DetectionTrainer {
    cfg: TrainConfig,
    det: DetectionConfig,
    device: Device,
    train: DetectionSet,
    test: DetectionSet,
    rng: ChaCha8Rng,
    detector: Detector,
    vars: Vec<candle_core::Var>,
    opt: Box<dyn Optimizer>,
    schedule: LrSchedule,
    total_steps: usize,
    batch: usize,
}

impl DetectionTrainer {
    /// Prepare a run of `cfg` with the detection options `det` on `device`: draw the sets, build
    /// the detector (from `det.init` when set) from the run's RNG, the optimizer and schedule.
    pub fn new(cfg: TrainConfig, det: &DetectionConfig, device: &Device) -> Result<Self> {
        Self::prepare(cfg, det, device, true)
    }

    /// Prepare the continuation of the detection run in `run` from its `config.toml` and
    /// `detection.toml` (the backbone is not read from `init` again: the checkpoint holds it).
    pub fn resume(run: &RunDir, device: &Device) -> Result<Self> {
        let det = read_detection_config(run)?;
        Self::prepare(run.read_config()?, &det, device, false)
    }

    fn prepare(
        mut cfg: TrainConfig,
        det: &DetectionConfig,
        device: &Device,
        from_init: bool,
    ) -> Result<Self> {
        if cfg.train.batch_size == 0
            || cfg.train.epochs == 0
            || (det.train_images == 0 && det.train_data.is_none())
        {
            return Err(RecipeError::Config(
                "batch-size, epochs and training images must be at least 1".into(),
            ));
        }
        let build = DetectionConfig {
            init: det.init.clone().filter(|_| from_init),
            ..det.clone()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let channels = || -> Result<usize> {
            Ok(match &build.init {
                Some(p) => load_init(p, device)?.0.arch.in_chans(),
                None => ModelConfig::from_preset(&cfg.model.architecture, &cfg.model.args)?
                    .arch
                    .in_chans(),
            })
        };
        let (train, test) = detection_sets(&cfg, &build, &mut rng, channels)?;
        if train.is_empty() {
            return Err(RecipeError::Config(format!(
                "detection training set `{}` has no images",
                train.name
            )));
        }
        let detector = build_detector(&mut cfg, &build, &train, &mut rng, device)?;
        let mut params: Vec<NamedParam> = detector
            .model
            .params()
            .trainable()
            .into_iter()
            .map(|(n, v)| NamedParam::new(n, v))
            .collect();
        params.extend(
            detector
                .head_params
                .trainable()
                .into_iter()
                .map(|(n, v)| NamedParam::new(n, v)),
        );
        let vars = params.iter().map(|p| p.var.clone()).collect();
        let no_decay = detector.model.backbone().no_weight_decay();
        let no_decay: Vec<&str> = no_decay.iter().map(String::as_str).collect();
        let opt = optimizer_for(&cfg, params, &no_decay)?;
        let batch = cfg.train.batch_size.min(train.len());
        let steps_per_epoch = train.len().div_ceil(batch);
        let total_steps =
            (cfg.train.epochs * steps_per_epoch).min(cfg.train.max_steps.unwrap_or(usize::MAX));
        let schedule = build_schedule(&cfg, steps_per_epoch, total_steps);
        schedule
            .validate()
            .map_err(|e| RecipeError::Config(e.to_string()))?;
        Ok(Self {
            cfg,
            det: det.clone(),
            device: device.clone(),
            train,
            test,
            rng,
            detector,
            vars,
            opt,
            schedule,
            total_steps,
            batch,
        })
    }

    /// The resolved configuration (what `config.toml` will hold).
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// COCO AP on the test set, -1 each without test images (pycocotools' value).
    fn test_ap(&self) -> Result<CocoAp> {
        if self.test.is_empty() {
            return Ok(CocoAp {
                ap: -1.0,
                ap50: -1.0,
                ap75: -1.0,
            });
        }
        let (batch, top_k) = (self.cfg.eval.batch_size, self.det.top_k);
        self.detector
            .evaluate(&self.test, batch, top_k, &self.device)
    }

    /// One optimizer step on the training images `chunk`; the loss.
    fn step(&mut self, chunk: &[usize], step: usize, epoch: usize) -> Result<(f32, f64)> {
        let (d, device) = (&self.detector, &self.device);
        let x = super::images_tensor(&self.train, chunk, device)?;
        let boxes: Vec<&[ObjectBox]> = chunk
            .iter()
            .map(|&i| self.train.boxes[i].as_slice())
            .collect();
        let targets = build_targets(
            &boxes,
            d.grid,
            f64::from(d.stride),
            self.train.num_classes(),
            self.det.min_overlap,
            device,
        )?;
        let out = d.forward(&x, &mut Ctx::train(&mut self.rng))?;
        let losses = centernet_loss(&out, &targets, &self.det)?;
        let value = losses.total.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(RecipeError::NonFiniteLoss {
                epoch,
                step: step + 1,
                loss: value,
            });
        }
        let mut grads = losses.total.backward()?;
        if let Some(max_norm) = self.cfg.optim.clip_grad {
            clip_grad_norm(&mut grads, &self.vars, max_norm)?;
        }
        let lr = self.schedule.lr_at(step);
        self.opt.step(&grads, lr)?;
        Ok((value, lr))
    }

    /// Train. With `run`, write the run directory as the classification loop does:
    /// `config.toml` and `detection.toml` first, then after every epoch `checkpoint.safetensors`
    /// (model, head, optimizer, RNG, progress), `model.safetensors` (backbone and `det_head.*`),
    /// `metrics.jsonl` and `training_curves.png` (train loss, test AP50, learning rate), and at
    /// the end `report.json` / `report.md` with the COCO APs. With `resume`, continue from the
    /// run's checkpoint exactly where it stopped (at an epoch's end or, after an interrupt,
    /// mid-epoch): the same result as a run straight through.
    pub fn run(
        mut self,
        run: Option<&RunDir>,
        resume: bool,
        control: &TrainControl,
        progress: &mut dyn Progress,
    ) -> Result<DetectionOutcome> {
        let (mut epoch, mut step, mut metrics, mut partial) = (0, 0, Vec::new(), None);
        match (run, resume) {
            (Some(run), true) => {
                let d = &self.detector;
                let r = load_checkpoint(
                    run,
                    &d.model,
                    Some(&d.head_params),
                    None,
                    self.opt.as_mut(),
                    &self.device,
                )?;
                (epoch, step, metrics, self.rng, partial) =
                    (r.epoch, r.step, r.metrics, r.rng, r.partial);
            }
            (Some(run), false) => {
                run.write_config(&self.cfg)?;
                let text = self.det.to_toml().map_err(|e| {
                    RecipeError::Config(format!("cannot write the detection options: {e}"))
                })?;
                run.write(DETECTION_FILE, text.as_bytes())?;
            }
            (None, true) => {
                return Err(RecipeError::Config(
                    "resuming a detection run needs its run directory".into(),
                ))
            }
            (None, false) => {}
        }
        let epochs = self.cfg.train.epochs;
        let interrupted = || control.interrupt.is_some_and(|f| f.load(Ordering::SeqCst));
        progress.start(self.total_steps, step);
        let mut stopped = false;
        while epoch < epochs && step < self.total_steps {
            // A fresh epoch draws its order's seed; an interrupted one continues where it stood.
            let mut state = partial.take().unwrap_or_else(|| EpochState {
                seed: self.rng.next_u64(),
                ..EpochState::default()
            });
            let order = epoch_order(self.train.len(), true, state.seed);
            for chunk in order.chunks(self.batch).skip(state.batches) {
                if step >= self.total_steps {
                    break;
                }
                let t0 = Instant::now();
                let (value, lr) = self.step(chunk, step, epoch + 1)?;
                step += 1;
                state.lr = lr;
                state.batches += 1;
                state.busy += t0.elapsed().as_secs_f64();
                state.seen += chunk.len();
                state.loss_sum += f64::from(value) * chunk.len() as f64;
                progress.step(
                    epoch + 1,
                    epochs,
                    f64::from(value),
                    state.seen as f64 / state.busy.max(1e-9),
                );
                if interrupted() {
                    if let Some(run) = run {
                        self.save(run, epoch, step, &metrics, Some(&state))?;
                    }
                    progress.finish();
                    return Ok(self.outcome(metrics, None, true));
                }
            }
            epoch += 1;
            let m = EpochMetrics {
                epoch,
                step,
                train_loss: state.loss_sum / state.seen.max(1) as f64,
                test_accuracy: match self.test.is_empty() {
                    true => 0.0,
                    false => self.test_ap()?.ap50,
                },
                lr: state.lr,
                images_per_sec: state.seen as f64 / state.busy.max(1e-9),
            };
            progress.epoch(&m, epochs);
            metrics.push(m);
            if let Some(run) = run {
                self.save(run, epoch, step, &metrics, None)?;
                run.write_metrics(&metrics)?;
                run.write_curves(&metrics, "test AP50")?;
            }
            if control.stop_after_epochs.is_some_and(|k| epoch >= k)
                && epoch < epochs
                && step < self.total_steps
            {
                stopped = true;
                break;
            }
        }
        progress.finish();
        if stopped {
            return Ok(self.outcome(metrics, None, false));
        }
        let train_ap = self.detector.evaluate(
            &self.train,
            self.cfg.eval.batch_size,
            self.det.top_k,
            &self.device,
        )?;
        let test_ap = self.test_ap()?;
        if let Some(run) = run {
            DetectionReport::new(&self.test, test_ap, Some(train_ap), &self.det).write(run)?;
        }
        Ok(self.outcome(metrics, Some((train_ap, test_ap)), false))
    }

    /// Save the checkpoint with the classification loop's format (the head under `det_head.*`).
    fn save(
        &self,
        run: &RunDir,
        epoch: usize,
        step: usize,
        metrics: &[EpochMetrics],
        partial: Option<&EpochState>,
    ) -> Result<()> {
        let d = &self.detector;
        save_checkpoint(
            run,
            &d.model,
            Some(&d.head_params),
            None,
            self.opt.as_ref(),
            &self.rng,
            epoch,
            step,
            metrics,
            partial,
        )
    }

    fn outcome(
        self,
        metrics: Vec<EpochMetrics>,
        aps: Option<(CocoAp, CocoAp)>,
        interrupted: bool,
    ) -> DetectionOutcome {
        DetectionOutcome {
            detector: self.detector,
            metrics,
            train_ap: aps.map(|a| a.0),
            test_ap: aps.map(|a| a.1),
            interrupted,
        }
    }
}

/// Train a CenterNet detector straight through ([`DetectionTrainer`]): on the synthetic
/// canvases of the data spec's images (or on COCO / VOC files,
/// [`DetectionConfig::train_data`]); `cfg` gives the seed, model, optimizer, schedule, epochs,
/// steps and batch size, `det` the detection options. With `run`, write the run directory.
pub fn train_detection(
    cfg: TrainConfig,
    det: &DetectionConfig,
    device: &Device,
    run: Option<&RunDir>,
    progress: &mut dyn Progress,
) -> Result<DetectionOutcome> {
    DetectionTrainer::new(cfg, det, device)?.run(run, false, &TrainControl::default(), progress)
}
