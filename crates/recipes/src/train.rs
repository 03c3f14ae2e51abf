//! The classification training loop: data, model, optimizer and schedule from a
//! [`TrainConfig`], a checkpoint every epoch, exact resume.

use crate::config::{OptimizerKind, ScheduleKind, TrainConfig};
use crate::ema::Ema;
use crate::error::{RecipeError, Result};
use crate::mixing::{training_loss, validate, validate_for_model, StepBatch};
use crate::optim::{
    clip_grad_norm, param_groups_weight_decay, AdamW, AdamWConfig, NamedParam, Optimizer, Sgd,
    SgdConfig,
};
use crate::progress::Progress;
use crate::run::{EpochMetrics, RngState, RunDir, CHECKPOINT_FILE, MODEL_FILE};
use crate::schedule::LrSchedule;
use candle_core::{Device, Tensor};
use multimix_backbones::{Model, ModelConfig, ParamStore, RawModelConfig};
use multimix_data::{conform, Augment, Batches, DataSpec, Dataset, LoaderConfig};
use multimix_eval::suite::{logits, top1};
use multimix_hub::checkpoint::{load_safetensors, save_safetensors};
use multimix_hub::config::{TimmConfig, TIMM_CONFIG_FILE};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Metadata key of the model configuration (JSON) in safetensors files.
pub const META_MODEL_CONFIG: &str = "multimix.model_config";
const META_EPOCH: &str = "multimix.epoch";
const META_STEP: &str = "multimix.step";
const META_RNG: &str = "multimix.rng";
const META_METRICS: &str = "multimix.metrics";
const META_EPOCH_STATE: &str = "multimix.epoch_state";

/// Run-time controls that are not part of the configuration.
#[derive(Debug, Clone, Default)]
pub struct TrainControl {
    /// Stop (with a checkpoint) once this many epochs are done, as if interrupted.
    pub stop_after_epochs: Option<usize>,
    /// When set (e.g. by a Ctrl-C handler), stop after the current step with a checkpoint that
    /// `--resume` continues from mid-epoch.
    pub interrupt: Option<&'static AtomicBool>,
}

/// Where an interrupted epoch stood: its loader seed, the batches done and the running sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct EpochState {
    pub(crate) seed: u64,
    pub(crate) batches: usize,
    pub(crate) loss_sum: f64,
    pub(crate) seen: usize,
    pub(crate) busy: f64,
    pub(crate) lr: f64,
}

/// What a finished (or stopped) run leaves in memory.
pub struct TrainOutcome {
    /// The trained model.
    pub model: Model,
    /// The resolved configuration (as written to `config.toml`).
    pub config: TrainConfig,
    /// The test split, shaped for the model.
    pub test: Arc<Dataset>,
    /// Per-epoch metrics.
    pub metrics: Vec<EpochMetrics>,
    /// The run stopped on [`TrainControl::interrupt`] before its end (a checkpoint was saved).
    pub interrupted: bool,
}

/// Fill the model arguments the data determines (classes, input channels, image size) unless
/// set, and the normalization from the training images unless set; then resolve.
pub fn resolve_model(cfg: &mut TrainConfig, train: &Dataset) -> Result<ModelConfig> {
    let args = &mut cfg.model.args;
    args.entry("num_classes")
        .or_insert(train.num_classes.into());
    args.entry("in_chans").or_insert(train.channels.into());
    if train.height == train.width {
        args.entry("img_size").or_insert(train.height.into());
    }
    let resolved = ModelConfig::from_preset(&cfg.model.architecture, &cfg.model.args)?;
    let (mean, std) = match (&cfg.model.mean, &cfg.model.std) {
        (Some(m), Some(s)) => (m.clone(), s.clone()),
        _ => {
            let (m, s) = conform(
                train.clone(),
                (resolved.arch.in_chans(), train.height, train.width),
            )?
            .mean_std();
            (m, s)
        }
    };
    let resolved = resolved.with_normalization(mean, std)?;
    cfg.model = resolved.clone().into();
    Ok(resolved)
}

/// Build the optimizer of the configuration over the model's trainable parameters.
fn build_optimizer(cfg: &TrainConfig, model: &Model) -> Result<Box<dyn Optimizer>> {
    let no_decay = model.backbone().no_weight_decay();
    let no_decay: Vec<&str> = no_decay.iter().map(String::as_str).collect();
    optimizer_for(cfg, named(model.params().trainable()), &no_decay)
}

/// The optimizer of `cfg` over `params` (timm's weight-decay groups: no decay on biases, norms
/// and the names in `no_decay`).
pub(crate) fn optimizer_for(
    cfg: &TrainConfig,
    params: Vec<NamedParam>,
    no_decay: &[&str],
) -> Result<Box<dyn Optimizer>> {
    let groups = param_groups_weight_decay(params, cfg.optim.weight_decay, no_decay);
    let o = &cfg.optim;
    Ok(match o.name {
        OptimizerKind::Sgd => Box::new(Sgd::new(
            groups,
            SgdConfig {
                momentum: o.momentum,
                dampening: 0.0,
                nesterov: o.nesterov,
            },
        )?),
        OptimizerKind::Adamw => Box::new(AdamW::new(
            groups,
            AdamWConfig {
                beta1: o.beta1,
                beta2: o.beta2,
                eps: o.eps,
            },
        )?),
    })
}

/// `(name, var)` pairs as [`NamedParam`]s.
fn named(pairs: Vec<(String, candle_core::Var)>) -> Vec<NamedParam> {
    pairs
        .into_iter()
        .map(|(name, var)| NamedParam { name, var })
        .collect()
}

/// The EMA teacher of self-distillation: a model whose variables the EMA averages in place.
pub(crate) struct Teacher {
    ema: Ema,
    model: Model,
}

impl Teacher {
    /// A teacher equal to the student, averaging with momentum `tau`.
    fn new(student: &Model, tau: f64, device: &Device) -> Result<Self> {
        let model = Model::new(student.config(), device, 0)?;
        model.load_weights(&student.params().tensors()?, true)?;
        let ema = Ema::over(
            &named(model.params().trainable()),
            &named(model.params().buffers()),
            tau,
        )
        .map_err(|e| RecipeError::Config(e.to_string()))?;
        Ok(Self { ema, model })
    }

    /// One EMA step from the student, written into the teacher model's variables.
    fn update(&mut self, student: &Model) -> Result<()> {
        self.ema
            .update(
                &named(student.params().trainable()),
                &named(student.params().buffers()),
            )
            .map_err(|e| RecipeError::Config(e.to_string()))?;
        Ok(())
    }

    /// Restore saved teacher tensors (into the teacher model's variables).
    fn load(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        self.ema
            .load(tensors)
            .map_err(|e| RecipeError::Config(format!("checkpoint EMA teacher: {e}")))?;
        Ok(())
    }
}

/// The schedule of the configuration for `total_steps` steps of `steps_per_epoch` per epoch.
pub(crate) fn build_schedule(
    cfg: &TrainConfig,
    steps_per_epoch: usize,
    total_steps: usize,
) -> LrSchedule {
    let s = &cfg.schedule;
    let warmup_steps = ((s.warmup_epochs * steps_per_epoch as f64).round() as usize)
        .min(total_steps.saturating_sub(1));
    match s.name {
        ScheduleKind::Cosine => LrSchedule::Cosine {
            base_lr: cfg.optim.lr,
            total_steps,
            warmup_steps,
            warmup_lr_init: s.warmup_lr,
            min_lr: s.min_lr,
            warmup_prefix: false,
        },
        ScheduleKind::Step => LrSchedule::Step {
            base_lr: cfg.optim.lr,
            decay_steps: ((s.decay_epochs * steps_per_epoch as f64).round() as usize).max(1),
            decay_rate: s.decay_rate,
            warmup_steps,
            warmup_lr_init: s.warmup_lr,
        },
        ScheduleKind::Constant => LrSchedule::Constant { lr: cfg.optim.lr },
    }
}

/// The training state restored from a checkpoint.
pub(crate) struct Resumed {
    pub(crate) epoch: usize,
    pub(crate) step: usize,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) metrics: Vec<EpochMetrics>,
    pub(crate) partial: Option<EpochState>,
}

fn meta_json<T: serde::de::DeserializeOwned>(
    meta: &BTreeMap<String, String>,
    key: &str,
    file: &str,
) -> Result<T> {
    let text = meta
        .get(key)
        .ok_or_else(|| RecipeError::Config(format!("{file} lacks the metadata entry `{key}`")))?;
    serde_json::from_str(text)
        .map_err(|e| RecipeError::Config(format!("{file}: corrupt `{key}`: {e}")))
}

/// Save `checkpoint.safetensors` (model, optimizer, RNG, progress) and `model.safetensors`.
/// `head` holds parameters trained beside the backbone (the detection head), saved under their
/// own names in both files; a run with one is no timm model and writes no `config.json`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn save_checkpoint(
    run: &RunDir,
    model: &Model,
    head: Option<&ParamStore>,
    teacher: Option<&Teacher>,
    opt: &dyn Optimizer,
    rng: &ChaCha8Rng,
    epoch: usize,
    step: usize,
    metrics: &[EpochMetrics],
    partial: Option<&EpochState>,
) -> Result<()> {
    let mut weights = model.params().tensors()?;
    if let Some(h) = head {
        weights.extend(h.tensors()?);
    }
    let config_json =
        serde_json::to_string(model.config()).map_err(|e| RecipeError::Config(e.to_string()))?;
    let mut all: BTreeMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| (format!("model.{k}"), v.clone()))
        .collect();
    all.extend(
        opt.state()?
            .into_iter()
            .map(|(k, v)| (format!("optim.{k}"), v)),
    );
    if let Some(t) = teacher {
        all.extend(
            t.ema
                .tensors()
                .iter()
                .map(|(k, v)| (format!("ema.{k}"), v.clone())),
        );
    }
    let json = |v: &dyn erased::Json| v.json();
    let mut meta = BTreeMap::from([
        (META_MODEL_CONFIG.to_string(), config_json.clone()),
        (META_EPOCH.to_string(), epoch.to_string()),
        (META_STEP.to_string(), step.to_string()),
        (META_RNG.to_string(), json(&RngState::capture(rng))),
        (META_METRICS.to_string(), json(&metrics.to_vec())),
    ]);
    if let Some(p) = partial {
        meta.insert(META_EPOCH_STATE.to_string(), json(p));
    }
    save_safetensors(&run.file(CHECKPOINT_FILE), &all, &meta)?;
    let model_meta = BTreeMap::from([(META_MODEL_CONFIG.to_string(), config_json)]);
    save_safetensors(&run.file(MODEL_FILE), &weights, &model_meta)?;
    if head.is_none() {
        timm_config(model.config()).write(&run.file(TIMM_CONFIG_FILE))?;
    }
    Ok(())
}

/// timm's `config.json` for a model configuration: the run directory is then a hub repository
/// that timm-style loaders read (architecture, `model_args`, input size and normalization).
pub fn timm_config(config: &ModelConfig) -> TimmConfig {
    let raw = RawModelConfig::from(config.clone());
    let (c, size) = (config.arch.in_chans(), config.arch.img_size());
    TimmConfig::new(
        &config.architecture,
        config.num_classes(),
        raw.args,
        [c, size, size],
        config.mean.clone(),
        config.std.clone(),
    )
}

mod erased {
    /// Serialize values of different types to JSON through one function pointer.
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// Restore what [`save_checkpoint`] saved into `model`, `head`, `teacher` and `opt`.
pub(crate) fn load_checkpoint(
    run: &RunDir,
    model: &Model,
    head: Option<&ParamStore>,
    teacher: Option<&mut Teacher>,
    opt: &mut dyn Optimizer,
    device: &Device,
) -> Result<Resumed> {
    let path = run.file(CHECKPOINT_FILE);
    let file = path.display().to_string();
    let ckpt = load_safetensors(&path, device)?;
    let saved: ModelConfig = meta_json(&ckpt.metadata, META_MODEL_CONFIG, &file)?;
    if &saved != model.config() {
        return Err(RecipeError::Config(format!(
            "{file} was made with another model configuration than {}'s config.toml",
            run.path().display()
        )));
    }
    let head_names = head.map(ParamStore::names).unwrap_or_default();
    let mut weights = BTreeMap::new();
    let mut head_weights = BTreeMap::new();
    let mut state = BTreeMap::new();
    let mut ema = BTreeMap::new();
    for (name, t) in ckpt.tensors {
        if let Some(n) = name.strip_prefix("model.") {
            match head_names.binary_search_by(|h| h.as_str().cmp(n)) {
                Ok(_) => head_weights.insert(n.to_string(), t),
                Err(_) => weights.insert(n.to_string(), t),
            };
        } else if let Some(n) = name.strip_prefix("optim.") {
            state.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix("ema.") {
            ema.insert(n.to_string(), t);
        }
    }
    model.load_weights(&weights, true)?;
    if let Some(h) = head {
        h.load(&head_weights, true)?;
    }
    if let Some(t) = teacher {
        t.load(&ema)?;
    }
    opt.load_state(&state)?;
    let rng: RngState = meta_json(&ckpt.metadata, META_RNG, &file)?;
    Ok(Resumed {
        epoch: meta_json(&ckpt.metadata, META_EPOCH, &file)?,
        step: meta_json(&ckpt.metadata, META_STEP, &file)?,
        rng: rng.restore()?,
        metrics: meta_json(&ckpt.metadata, META_METRICS, &file)?,
        partial: match ckpt.metadata.contains_key(META_EPOCH_STATE) {
            true => Some(meta_json(&ckpt.metadata, META_EPOCH_STATE, &file)?),
            false => None,
        },
    })
}

/// A training run, fully prepared: data loaded, model built and initialized, optimizer and
/// schedule made. Building it validates the whole configuration, so nothing is written before
/// the configuration is known to be good.
pub struct Trainer {
    cfg: TrainConfig,
    device: Device,
    train_set: Arc<Dataset>,
    test_set: Arc<Dataset>,
    loader: LoaderConfig,
    total_steps: usize,
    schedule: LrSchedule,
    rng: ChaCha8Rng,
    model: Model,
    teacher: Option<Teacher>,
    opt: Box<dyn Optimizer>,
}

impl Trainer {
    /// Prepare a run of `cfg` on `device`: load the data, resolve and build the model (its
    /// weights drawn from the run's RNG), the optimizer and the schedule.
    pub fn new(mut cfg: TrainConfig, device: &Device) -> Result<Self> {
        let spec: DataSpec = cfg.data.spec.parse()?;
        let splits = spec.load()?;
        let train_set = splits.train.ok_or_else(|| {
            RecipeError::Config(format!(
                "data `{spec}` has no training split: choose a training set with --data"
            ))
        })?;
        let model_cfg = resolve_model(&mut cfg, &train_set)?;
        cfg.mix.resolve();
        validate(&cfg.mix, &cfg.distill, cfg.train.batch_size)?;
        if cfg.train.batch_size == 0 || cfg.train.epochs == 0 {
            return Err(RecipeError::Config(
                "batch-size and epochs must be at least 1".into(),
            ));
        }
        let shape = (
            model_cfg.arch.in_chans(),
            model_cfg.arch.img_size(),
            model_cfg.arch.img_size(),
        );
        let train_set = Arc::new(conform(train_set, shape)?);
        let test_set = Arc::new(conform(splits.test, shape)?);
        let loader = LoaderConfig {
            two_views: cfg.distill.enabled,
            ..LoaderConfig::train(
                cfg.train.batch_size,
                Augment {
                    crop_padding: cfg.data.crop_padding,
                    hflip: cfg.data.hflip,
                },
            )
        };
        let steps_per_epoch = loader.batches_per_epoch(train_set.len());
        if steps_per_epoch == 0 {
            return Err(RecipeError::Config(format!(
                "batch-size {} is larger than the {} training images",
                cfg.train.batch_size,
                train_set.len()
            )));
        }
        let total_steps =
            (cfg.train.epochs * steps_per_epoch).min(cfg.train.max_steps.unwrap_or(usize::MAX));
        let schedule = build_schedule(&cfg, steps_per_epoch, total_steps);
        schedule
            .validate()
            .map_err(|e| RecipeError::Config(e.to_string()))?;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let model = Model::new(&model_cfg, device, rng.next_u64())?;
        validate_for_model(&cfg.mix, &model)?;
        let teacher = if cfg.distill.enabled {
            Some(Teacher::new(&model, cfg.distill.ema_momentum, device)?)
        } else {
            None
        };
        let opt = build_optimizer(&cfg, &model)?;
        Ok(Self {
            cfg,
            device: device.clone(),
            train_set,
            test_set,
            loader,
            total_steps,
            schedule,
            rng,
            model,
            teacher,
            opt,
        })
    }

    /// The resolved configuration (what `config.toml` will hold).
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The model being trained.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Start from pretrained weights: every tensor but the classifier's (kept at its fresh
    /// initialization, for the data's class count), adapted as timm adapts checkpoints
    /// (resampled position embeddings, first convolution for other channel counts). The EMA
    /// teacher, if any, starts from the same weights.
    pub fn load_pretrained(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        self.model.load_weights_new_head(tensors)?;
        if let Some(t) = self.teacher.as_mut() {
            *t = Teacher::new(&self.model, self.cfg.distill.ema_momentum, &self.device)?;
        }
        Ok(())
    }

    /// Train, writing the run directory as it goes: `config.toml` first, then after every epoch
    /// a checkpoint, the weights and `metrics.jsonl`. With `resume`, continue from the run's
    /// `checkpoint.safetensors` exactly where it stopped, at an epoch's end or (after an
    /// interrupt) in the middle of one: same batches, same mixing coefficients, same result as
    /// a run straight through.
    pub fn run(
        mut self,
        run: &RunDir,
        resume: bool,
        control: &TrainControl,
        progress: &mut dyn Progress,
    ) -> Result<TrainOutcome> {
        let (mut epoch, mut step, mut metrics, mut partial) = (0, 0, Vec::new(), None);
        if resume {
            let r = load_checkpoint(
                run,
                &self.model,
                None,
                self.teacher.as_mut(),
                self.opt.as_mut(),
                &self.device,
            )?;
            (epoch, step, metrics, self.rng, partial) =
                (r.epoch, r.step, r.metrics, r.rng, r.partial);
        } else {
            run.write_config(&self.cfg)?;
        }
        let (cfg, device, model) = (&self.cfg, &self.device, &self.model);
        let vars: Vec<_> = model
            .params()
            .trainable()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let interrupted = || control.interrupt.is_some_and(|f| f.load(Ordering::SeqCst));
        progress.start(self.total_steps, step);
        while epoch < cfg.train.epochs && step < self.total_steps {
            // A fresh epoch draws its loader seed; an interrupted one continues where it stood.
            let mut state = partial.take().unwrap_or_else(|| EpochState {
                seed: self.rng.next_u64(),
                ..EpochState::default()
            });
            let batches = Batches::new(self.train_set.clone(), self.loader, state.seed);
            for batch in batches.skip(state.batches) {
                if step >= self.total_steps {
                    break;
                }
                let t0 = Instant::now();
                let step_batch = StepBatch {
                    images: &batch.images,
                    shape: batch.shape,
                    labels: &batch.labels,
                    teacher_view: batch.second_view.as_deref(),
                };
                let loss = training_loss(
                    model,
                    self.teacher.as_ref().map(|t| &t.model),
                    &step_batch,
                    &cfg.mix,
                    &cfg.distill,
                    &mut self.rng,
                )?;
                let loss_value = loss.to_scalar::<f32>()?;
                if !loss_value.is_finite() {
                    return Err(RecipeError::NonFiniteLoss {
                        epoch: epoch + 1,
                        step: step + 1,
                        loss: loss_value,
                    });
                }
                let mut grads = loss.backward()?;
                if let Some(max_norm) = cfg.optim.clip_grad {
                    clip_grad_norm(&mut grads, &vars, max_norm)?;
                }
                state.lr = self.schedule.lr_at(step);
                self.opt.step(&grads, state.lr)?;
                if let Some(t) = self.teacher.as_mut() {
                    t.update(model)?;
                }
                step += 1;
                state.batches += 1;
                state.busy += t0.elapsed().as_secs_f64();
                state.seen += batch.labels.len();
                state.loss_sum += loss_value as f64 * batch.labels.len() as f64;
                progress.step(
                    epoch + 1,
                    cfg.train.epochs,
                    loss_value as f64,
                    state.seen as f64 / state.busy.max(1e-9),
                );
                if interrupted() {
                    let teacher = self.teacher.as_ref();
                    let opt = self.opt.as_ref();
                    save_checkpoint(
                        run,
                        model,
                        None,
                        teacher,
                        opt,
                        &self.rng,
                        epoch,
                        step,
                        &metrics,
                        Some(&state),
                    )?;
                    progress.finish();
                    return Ok(TrainOutcome {
                        model: self.model,
                        config: self.cfg,
                        test: self.test_set,
                        metrics,
                        interrupted: true,
                    });
                }
            }
            epoch += 1;
            let test_logits = logits(model, &self.test_set, cfg.eval.batch_size, device)?;
            let m = EpochMetrics {
                epoch,
                step,
                train_loss: state.loss_sum / state.seen.max(1) as f64,
                test_accuracy: top1(
                    &test_logits,
                    &self.test_set.labels,
                    model.config().num_classes(),
                ),
                lr: state.lr,
                images_per_sec: state.seen as f64 / state.busy.max(1e-9),
            };
            progress.epoch(&m, cfg.train.epochs);
            metrics.push(m);
            let (teacher, opt) = (self.teacher.as_ref(), self.opt.as_ref());
            save_checkpoint(
                run, model, None, teacher, opt, &self.rng, epoch, step, &metrics, None,
            )?;
            run.write_metrics(&metrics)?;
            run.write_curves(&metrics, "test accuracy")?;
            if control.stop_after_epochs.is_some_and(|k| epoch >= k) {
                break;
            }
        }
        progress.finish();
        Ok(TrainOutcome {
            model: self.model,
            config: self.cfg,
            test: self.test_set,
            metrics,
            interrupted: false,
        })
    }
}
