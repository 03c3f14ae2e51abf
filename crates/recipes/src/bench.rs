//! A benchmark harness: one training step (forward, loss, backward, optimizer step) or one FGSM
//! batch of a preset model on a fixed random batch, run exactly as training
//! ([`training_loss`], the configured optimizer) and evaluation ([`fgsm`], then a forward pass)
//! run them, and the analytic FLOP count of a model's forward pass.
//!
//! Timing, memory and reporting are the caller's (`multimix bench`, `benches/mixing.rs`).

use crate::config::{MixConfig, MixMethod, OptimizerKind, TrainConfig};
use crate::error::{RecipeError, Result};
use crate::mixing::{training_loss, validate, validate_for_model, StepBatch};
use crate::optim::Optimizer;
use crate::train::optimizer_for;
use candle_core::{Device, Tensor};
use multimix_backbones::resnet::{BlockKind, ResNetConfig, Stem};
use multimix_backbones::vit::VitConfig;
use multimix_backbones::{ArchConfig, Ctx, Model, ModelConfig};
use multimix_eval::attacks::fgsm;
use multimix_eval::suite::top1;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What one benchmarked training step runs.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSpec {
    /// A registered architecture, at its preset's image size, channels and classes.
    pub architecture: String,
    /// The mixing method (α = 1 for every method; the other options are the training defaults).
    pub method: MixMethod,
    /// MultiMix tuples per batch.
    pub mix_n: usize,
    /// Images per batch.
    pub batch_size: usize,
    /// AdamW (lr 2e-3, weight decay 0.05, the training default) or SGD (lr 0.05, momentum 0.9,
    /// weight decay 5e-4).
    pub optimizer: OptimizerKind,
    /// Seed of the weights, the batch and the mixing.
    pub seed: u64,
}

impl StepSpec {
    /// The training configuration of the step: the defaults with this model, method and
    /// optimizer.
    pub fn train_config(&self) -> TrainConfig {
        let mut cfg = TrainConfig {
            seed: self.seed,
            ..TrainConfig::default()
        };
        cfg.model.architecture = self.architecture.clone();
        cfg.train.batch_size = self.batch_size;
        cfg.mix = MixConfig {
            method: self.method,
            alpha: Some(1.0),
            n: self.mix_n,
            ..MixConfig::default()
        };
        cfg.mix.resolve();
        cfg.optim.name = self.optimizer;
        if self.optimizer == OptimizerKind::Sgd {
            (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) = (0.05, 0.9, 5e-4);
        }
        cfg
    }
}

/// A fixed random batch for a model: pixels uniform in [0, 1), labels `i mod classes`.
struct FixedBatch {
    images: Vec<f32>,
    labels: Vec<u32>,
    shape: [usize; 4],
}

impl FixedBatch {
    fn new(config: &ModelConfig, batch_size: usize, rng: &mut ChaCha8Rng) -> Result<Self> {
        if batch_size == 0 {
            return Err(RecipeError::Config("batch-size must be at least 1".into()));
        }
        let (c, s) = (config.arch.in_chans(), config.arch.img_size());
        let classes = config.num_classes();
        Ok(Self {
            images: (0..batch_size * c * s * s).map(|_| rng.random()).collect(),
            labels: (0..batch_size).map(|i| (i % classes) as u32).collect(),
            shape: [batch_size, c, s, s],
        })
    }
}

/// The preset's model configuration, with a clear error for an unknown name.
pub fn preset_config(architecture: &str) -> Result<ModelConfig> {
    Ok(ModelConfig::from_preset(architecture, &Default::default())?)
}

/// A prepared training step: model, optimizer, batch and mixing, ready to run repeatedly.
pub struct TrainStep {
    model: Model,
    opt: Box<dyn Optimizer>,
    batch: FixedBatch,
    cfg: TrainConfig,
    rng: ChaCha8Rng,
}

impl TrainStep {
    /// Build the model (weights from the seed), its optimizer and a fixed random batch on
    /// `device`, checking the method against the batch and the model as training does.
    pub fn new(spec: &StepSpec, device: &Device) -> Result<Self> {
        let cfg = spec.train_config();
        validate(&cfg.mix, &cfg.distill, cfg.train.batch_size)?;
        let model_cfg = preset_config(&spec.architecture)?;
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let model = Model::new(&model_cfg, device, rng.random())?;
        validate_for_model(&cfg.mix, &model)?;
        let no_decay = model.backbone().no_weight_decay();
        let no_decay: Vec<&str> = no_decay.iter().map(String::as_str).collect();
        let params = model
            .params()
            .trainable()
            .into_iter()
            .map(|(name, var)| crate::optim::NamedParam { name, var })
            .collect();
        let opt = optimizer_for(&cfg, params, &no_decay)?;
        let batch = FixedBatch::new(&model_cfg, spec.batch_size, &mut rng)?;
        Ok(Self {
            model,
            opt,
            batch,
            cfg,
            rng,
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// One step: the method's training loss, backward, optimizer update (device synchronized).
    /// Returns the loss.
    pub fn run(&mut self) -> Result<f32> {
        let batch = StepBatch {
            images: &self.batch.images,
            shape: self.batch.shape,
            labels: &self.batch.labels,
            teacher_view: None,
        };
        let loss = training_loss(
            &self.model,
            None,
            &batch,
            &self.cfg.mix,
            &self.cfg.distill,
            &mut self.rng,
        )?;
        let grads = loss.backward()?;
        self.opt.step(&grads, self.cfg.optim.lr)?;
        let value = loss.to_scalar::<f32>()?;
        self.model.params().device().synchronize()?;
        Ok(value)
    }
}

/// A prepared FGSM batch: the evaluation's attack (forward, gradient of the loss with respect
/// to the input, signed step) and the forward pass on the adversarial images, in eval mode.
pub struct FgsmStep {
    model: Model,
    images: Tensor,
    labels: Vec<u32>,
    eps: f64,
}

impl FgsmStep {
    /// Build the model `architecture` (weights from `seed`) and a fixed random batch on `device`;
    /// the attack's ε is the evaluation default, 8/255.
    pub fn new(architecture: &str, batch_size: usize, seed: u64, device: &Device) -> Result<Self> {
        let config = preset_config(architecture)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Frozen once, as the evaluation suite does: the attack's backward skips weight grads.
        let model = Model::new(&config, device, rng.random())?.frozen()?;
        let batch = FixedBatch::new(&config, batch_size, &mut rng)?;
        Ok(Self {
            images: Tensor::from_vec(batch.images, batch.shape.to_vec(), device)?,
            labels: batch.labels,
            model,
            eps: crate::config::EvalConfig::default().fgsm_eps,
        })
    }

    /// The model attacked.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Attack the batch and classify the adversarial images; returns the top-1 accuracy.
    pub fn run(&mut self) -> Result<f64> {
        let adv = fgsm(&self.model, &self.images, &self.labels, self.eps)?;
        let logits = self.model.forward(&adv, &mut Ctx::eval())?;
        let logits = logits.flatten_all()?.to_vec1::<f32>()?;
        Ok(top1(
            &logits,
            &self.labels,
            self.model.config().num_classes(),
        ))
    }
}

/// Multiply-accumulate FLOPs (2 per multiply-add) of one image's forward pass, counting what
/// `torch.utils.flop_counter` counts: matrix products (linear layers, attention's `q·kᵀ` and
/// `a·v`) and convolutions; normalization, activations, softmax, pooling and elementwise ops are
/// not counted. `None` for an architecture family without a count (PreAct-ResNet).
pub fn forward_flops(config: &ModelConfig) -> Option<u64> {
    match &config.arch {
        ArchConfig::Vit(c) => Some(vit_flops(c)),
        ArchConfig::ResNet(c) => Some(resnet_flops(c)),
        ArchConfig::PreAct(_) => None,
    }
}

/// FLOPs of a `k×k` convolution from `cin` to `cout` channels producing an `h×w` map.
fn conv_flops(cin: usize, cout: usize, k: usize, h: usize, w: usize) -> u64 {
    2 * (cin * cout * k * k * h * w) as u64
}

/// ViT: patch embedding, per block qkv, `q·kᵀ`, `a·v`, proj, fc1, fc2, then the head.
fn vit_flops(c: &VitConfig) -> u64 {
    let grid = c.img_size / c.patch_size;
    let patches = grid * grid;
    let t = patches + usize::from(c.class_token);
    let d = c.embed_dim;
    let hidden = (d as f64 * c.mlp_ratio) as usize;
    let mm = |m: usize, n: usize, k: usize| 2 * (m * n * k) as u64;
    let embed = conv_flops(c.in_chans, d, c.patch_size, grid, grid);
    let block = mm(t, 3 * d, d) + 2 * mm(t, t, d) + mm(t, d, d) + 2 * mm(t, hidden, d);
    embed + c.depth as u64 * block + mm(1, c.num_classes, d)
}

/// ResNet: stem, every block's convolutions and 1×1 downsample, then the head.
fn resnet_flops(c: &ResNetConfig) -> u64 {
    let (k, stride, pad) = match c.stem {
        Stem::Imagenet => (7, 2, 3),
        Stem::Cifar => (3, 1, 1),
    };
    let out = |size: usize, k: usize, s: usize, p: usize| (size + 2 * p - k) / s + 1;
    let mut size = out(c.img_size, k, stride, pad);
    let mut flops = conv_flops(c.in_chans, c.stem_chs, k, size, size);
    if c.stem == Stem::Imagenet {
        size = out(size, 3, 2, 1);
    }
    let expansion = match c.block {
        BlockKind::Basic => 1,
        BlockKind::Bottleneck => 4,
    };
    let mut cin = c.stem_chs;
    for (stage, (&blocks, &planes)) in c.layers.iter().zip(&c.channels).enumerate() {
        for b in 0..blocks {
            let s = if stage > 0 && b == 0 { 2 } else { 1 };
            let o = out(size, 3, s, 1);
            let cout = planes * expansion;
            flops += match c.block {
                BlockKind::Basic => {
                    conv_flops(cin, planes, 3, o, o) + conv_flops(planes, planes, 3, o, o)
                }
                BlockKind::Bottleneck => {
                    conv_flops(cin, planes, 1, size, size)
                        + conv_flops(planes, planes, 3, o, o)
                        + conv_flops(planes, cout, 1, o, o)
                }
            };
            if s != 1 || cin != cout {
                flops += conv_flops(cin, cout, 1, o, o);
            }
            (cin, size) = (cout, o);
        }
    }
    flops + 2 * (cin * c.num_classes) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forward FLOPs per image as `torch.utils.flop_counter.FlopCounterMode` counts them for the
    /// timm models (fixture written by `tools/bench_torch.py --flops-fixture`).
    #[test]
    fn forward_flops_match_torch_flop_counter() {
        let text = include_str!("../tests/fixtures/forward_flops.json");
        let fixture: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).expect("fixture is JSON");
        assert!(fixture.len() >= 5, "fixture holds {} models", fixture.len());
        for (name, flops) in fixture {
            let expected = flops.as_u64().expect("a count");
            let got = forward_flops(&preset_config(&name).expect("preset")).expect("counted");
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn a_training_step_lowers_the_loss_on_its_fixed_batch() {
        let spec = StepSpec {
            architecture: "vit_mini_patch7_28".into(),
            method: MixMethod::None,
            mix_n: 1000,
            batch_size: 8,
            optimizer: OptimizerKind::Sgd,
            seed: 0,
        };
        let mut step = TrainStep::new(&spec, &Device::Cpu).expect("step");
        let first = step.run().expect("run");
        let mut last = first;
        for _ in 0..4 {
            last = step.run().expect("run");
        }
        assert!(first.is_finite() && last < first, "{first} -> {last}");
    }

    #[test]
    fn the_batch_must_fit_the_method() {
        let spec = StepSpec {
            architecture: "vit_mini_patch7_28".into(),
            method: MixMethod::Mixup,
            mix_n: 1000,
            batch_size: 7,
            optimizer: OptimizerKind::Adamw,
            seed: 0,
        };
        let err = TrainStep::new(&spec, &Device::Cpu)
            .err()
            .expect("odd batch refused");
        assert!(err.to_string().contains('7'), "{err}");
    }
}
