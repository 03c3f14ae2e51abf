//! The classification training loop: data, model, optimizer and schedule from a
//! [`TrainConfig`], a checkpoint every epoch, exact resume.

use crate::config::{OptimizerKind, ScheduleKind, TrainConfig};
use crate::error::{RecipeError, Result};
use crate::mixing::{training_loss, validate};
use crate::optim::{
    clip_grad_norm, param_groups_weight_decay, AdamW, AdamWConfig, NamedParam, Optimizer, Sgd,
    SgdConfig,
};
use crate::progress::Progress;
use crate::run::{EpochMetrics, RngState, RunDir, CHECKPOINT_FILE, MODEL_FILE};
use crate::schedule::LrSchedule;
use candle_core::{Device, Tensor};
use multimix_backbones::{Model, ModelConfig, RawModelConfig};
use multimix_data::{conform, Augment, Batches, DataSpec, Dataset, LoaderConfig};
use multimix_eval::suite::{logits, top1};
use multimix_hub::checkpoint::{load_safetensors, save_safetensors};
use multimix_hub::config::{TimmConfig, TIMM_CONFIG_FILE};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Metadata key of the model configuration (JSON) in safetensors files.
pub const META_MODEL_CONFIG: &str = "multimix.model_config";
const META_EPOCH: &str = "multimix.epoch";
const META_STEP: &str = "multimix.step";
const META_RNG: &str = "multimix.rng";
const META_METRICS: &str = "multimix.metrics";

/// Run-time controls that are not part of the configuration.
#[derive(Debug, Clone, Default)]
pub struct TrainControl {
    /// Stop (with a checkpoint) once this many epochs are done, as if interrupted.
    pub stop_after_epochs: Option<usize>,
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
    let params: Vec<NamedParam> = model
        .params()
        .trainable()
        .into_iter()
        .map(|(name, var)| NamedParam { name, var })
        .collect();
    let no_decay = model.backbone().no_weight_decay();
    let no_decay: Vec<&str> = no_decay.iter().map(String::as_str).collect();
    let groups = param_groups_weight_decay(params, cfg.optim.weight_decay, &no_decay);
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

/// The schedule of the configuration for `total_steps` steps of `steps_per_epoch` per epoch.
fn build_schedule(cfg: &TrainConfig, steps_per_epoch: usize, total_steps: usize) -> LrSchedule {
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
struct Resumed {
    epoch: usize,
    step: usize,
    rng: ChaCha8Rng,
    metrics: Vec<EpochMetrics>,
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
fn save_checkpoint(
    run: &RunDir,
    model: &Model,
    opt: &dyn Optimizer,
    rng: &ChaCha8Rng,
    epoch: usize,
    step: usize,
    metrics: &[EpochMetrics],
) -> Result<()> {
    let weights = model.params().tensors()?;
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
    let json = |v: &dyn erased::Json| v.json();
    let meta = BTreeMap::from([
        (META_MODEL_CONFIG.to_string(), config_json.clone()),
        (META_EPOCH.to_string(), epoch.to_string()),
        (META_STEP.to_string(), step.to_string()),
        (META_RNG.to_string(), json(&RngState::capture(rng))),
        (META_METRICS.to_string(), json(&metrics.to_vec())),
    ]);
    save_safetensors(&run.file(CHECKPOINT_FILE), &all, &meta)?;
    let model_meta = BTreeMap::from([(META_MODEL_CONFIG.to_string(), config_json)]);
    save_safetensors(&run.file(MODEL_FILE), &weights, &model_meta)?;
    timm_config(model.config()).write(&run.file(TIMM_CONFIG_FILE))?;
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

fn load_checkpoint(
    run: &RunDir,
    model: &Model,
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
    let mut weights = BTreeMap::new();
    let mut state = BTreeMap::new();
    for (name, t) in ckpt.tensors {
        if let Some(n) = name.strip_prefix("model.") {
            weights.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix("optim.") {
            state.insert(n.to_string(), t);
        }
    }
    model.load_weights(&weights, true)?;
    opt.load_state(&state)?;
    let rng: RngState = meta_json(&ckpt.metadata, META_RNG, &file)?;
    Ok(Resumed {
        epoch: meta_json(&ckpt.metadata, META_EPOCH, &file)?,
        step: meta_json(&ckpt.metadata, META_STEP, &file)?,
        rng: rng.restore()?,
        metrics: meta_json(&ckpt.metadata, META_METRICS, &file)?,
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
        validate(&cfg.mix, cfg.train.batch_size)?;
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
        let loader = LoaderConfig::train(
            cfg.train.batch_size,
            Augment {
                crop_padding: cfg.data.crop_padding,
                hflip: cfg.data.hflip,
            },
        );
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

    /// Train, writing the run directory as it goes: `config.toml` first, then after every epoch
    /// a checkpoint, the weights and `metrics.jsonl`. With `resume`, continue from the run's
    /// `checkpoint.safetensors` exactly where it stopped (same batches, same mixing
    /// coefficients, same result as a run straight through).
    pub fn run(
        mut self,
        run: &RunDir,
        resume: bool,
        control: &TrainControl,
        progress: &mut dyn Progress,
    ) -> Result<TrainOutcome> {
        let (mut epoch, mut step, mut metrics) = (0, 0, Vec::new());
        if resume {
            let r = load_checkpoint(run, &self.model, self.opt.as_mut(), &self.device)?;
            (epoch, step, metrics, self.rng) = (r.epoch, r.step, r.metrics, r.rng);
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
        progress.start(self.total_steps, step);
        while epoch < cfg.train.epochs && step < self.total_steps {
            epoch += 1;
            let epoch_seed = self.rng.next_u64();
            let (mut loss_sum, mut seen, mut busy, mut lr) = (0.0f64, 0usize, 0.0f64, 0.0);
            for batch in Batches::new(self.train_set.clone(), self.loader, epoch_seed) {
                if step >= self.total_steps {
                    break;
                }
                let t0 = Instant::now();
                let images = Tensor::from_slice(&batch.images, batch.shape.to_vec(), device)?;
                let loss = training_loss(model, &images, &batch.labels, &cfg.mix, &mut self.rng)?;
                let loss_value = loss.to_scalar::<f32>()?;
                if !loss_value.is_finite() {
                    return Err(RecipeError::NonFiniteLoss {
                        epoch,
                        step: step + 1,
                        loss: loss_value,
                    });
                }
                let mut grads = loss.backward()?;
                if let Some(max_norm) = cfg.optim.clip_grad {
                    clip_grad_norm(&mut grads, &vars, max_norm)?;
                }
                lr = self.schedule.lr_at(step);
                self.opt.step(&grads, lr)?;
                step += 1;
                busy += t0.elapsed().as_secs_f64();
                seen += batch.labels.len();
                loss_sum += loss_value as f64 * batch.labels.len() as f64;
                progress.step(
                    epoch,
                    cfg.train.epochs,
                    loss_value as f64,
                    seen as f64 / busy.max(1e-9),
                );
            }
            let test_logits = logits(model, &self.test_set, cfg.eval.batch_size, device)?;
            let m = EpochMetrics {
                epoch,
                step,
                train_loss: loss_sum / seen.max(1) as f64,
                test_accuracy: top1(
                    &test_logits,
                    &self.test_set.labels,
                    model.config().num_classes(),
                ),
                lr,
                images_per_sec: seen as f64 / busy.max(1e-9),
            };
            progress.epoch(&m, cfg.train.epochs);
            metrics.push(m);
            save_checkpoint(
                run,
                model,
                self.opt.as_ref(),
                &self.rng,
                epoch,
                step,
                &metrics,
            )?;
            run.write_metrics(&metrics)?;
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
        })
    }
}
