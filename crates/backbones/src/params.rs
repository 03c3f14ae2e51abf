//! Named parameters and buffers with deterministic initialization.
//!
//! candle's CPU RNG cannot be seeded, so initial weights are drawn on the host from a seeded
//! ChaCha8 generator, in construction order: the same seed and configuration give the same
//! weights. Names follow timm's state-dict names, so timm checkpoints load by name.

use crate::error::{BackboneError, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// How a new tensor is initialized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Every element equal to the constant.
    Const(f64),
    /// `N(0, std²)`.
    Normal {
        /// Standard deviation.
        std: f64,
    },
    /// timm `trunc_normal_(std=std, a=-2, b=2)`: normal, redrawn outside the absolute bounds ±2.
    TruncNormal {
        /// Standard deviation.
        std: f64,
    },
    /// `U(-bound, bound)`.
    Uniform {
        /// Half-width of the interval.
        bound: f64,
    },
    /// PyTorch's default for `nn.Linear`/`nn.Conv2d` weights, `kaiming_uniform_(a=√5)`:
    /// `U(±1/√fan_in)` with `fan_in` the product of all dims but the first.
    TorchDefault,
    /// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: `N(0, 2/fan_out)`, `fan_out` the
    /// product of all dims but the second (timm's ResNet convolutions).
    KaimingNormalFanOut,
}

/// Sample `count` values of an initializer for a tensor of `dims` (fans computed from `dims`).
fn sample_init(init: Init, dims: &[usize], rng: &mut ChaCha8Rng) -> Vec<f32> {
    let count: usize = dims.iter().product();
    let receptive: usize = dims.iter().skip(2).product();
    let fan_in = dims.get(1).copied().unwrap_or(1) * receptive.max(1);
    let fan_out = dims.first().copied().unwrap_or(1) * receptive.max(1);
    let normal = |rng: &mut ChaCha8Rng, std: f64| {
        let z: f64 = StandardNormal.sample(rng);
        (z * std) as f32
    };
    let uniform = |rng: &mut ChaCha8Rng, bound: f64| rng.random_range(-bound..=bound) as f32;
    (0..count)
        .map(|_| match init {
            Init::Const(v) => v as f32,
            Init::Normal { std } => normal(rng, std),
            Init::TruncNormal { std } => loop {
                let v = normal(rng, std);
                if (-2.0..=2.0).contains(&v) {
                    break v;
                }
            },
            Init::Uniform { bound } => uniform(rng, bound),
            Init::TorchDefault => {
                let fan_in = if dims.len() == 1 { dims[0] } else { fan_in };
                uniform(rng, 1.0 / (fan_in.max(1) as f64).sqrt())
            }
            Init::KaimingNormalFanOut => normal(rng, (2.0 / fan_out.max(1) as f64).sqrt()),
        })
        .collect()
}

#[derive(Clone)]
struct Entry {
    var: Var,
    trainable: bool,
}

struct Inner {
    entries: BTreeMap<String, Entry>,
    rng: ChaCha8Rng,
}

/// A store of named tensors: trainable parameters (`Var`s that receive gradients) and buffers
/// (`Var`s updated in place, such as BatchNorm running statistics, that the optimizer skips).
/// Cloning shares the store; [`ParamStore::pp`] returns a view under a name prefix and
/// [`ParamStore::frozen`] a view whose parameters track no gradient.
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<Inner>>,
    prefix: String,
    device: Device,
    frozen: bool,
}

/// What a non-strict load left out: names the model has but the weights lack, and the reverse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Model tensors with no weight in the file (left at their initial values).
    pub missing: Vec<String>,
    /// Tensors in the file that the model does not have (ignored).
    pub unexpected: Vec<String>,
}

/// The entry `full` of a built store, checked against the shape a frozen rebuild asks for.
fn existing(inner: &Inner, full: &str, shape: &Shape) -> Result<Var> {
    match inner.entries.get(full) {
        Some(e) if e.var.shape() == shape => Ok(e.var.clone()),
        Some(e) => Err(BackboneError::WeightMismatch(format!(
            "frozen view: `{full}` is {:?} in the store, the model asks for {:?}",
            e.var.dims(),
            shape.dims()
        ))),
        None => Err(BackboneError::WeightMismatch(format!(
            "frozen view: `{full}` is not in the store; build the model before freezing it"
        ))),
    }
}

impl ParamStore {
    /// An empty store on `device` whose initializers draw from a generator seeded with `seed`.
    pub fn new(device: &Device, seed: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                entries: BTreeMap::new(),
                rng: ChaCha8Rng::seed_from_u64(seed),
            })),
            prefix: String::new(),
            device: device.clone(),
            frozen: false,
        }
    }

    /// A view of the same, already built store in which [`ParamStore::param`] and
    /// [`ParamStore::buffer`] look up the existing tensors instead of creating them, and
    /// parameters come back detached: they share the variables' storage (so they see every
    /// later update) but no gradient is computed for them. Building a backbone on this view
    /// gives a model whose backward computes input gradients only (attacks, ODIN).
    pub fn frozen(&self) -> Self {
        Self {
            frozen: true,
            ..self.clone()
        }
    }

    /// Whether this is a [`ParamStore::frozen`] view.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A view of the same store whose names are prefixed with `name.` (as `VarBuilder::pp`).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        };
        Self {
            inner: self.inner.clone(),
            prefix,
            device: self.device.clone(),
            frozen: self.frozen,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    fn create(
        &self,
        name: &str,
        shape: Shape,
        init: Init,
        dtype: DType,
        trainable: bool,
    ) -> Result<Var> {
        let full = self.full_name(name);
        let mut inner = self.lock();
        if self.frozen {
            return existing(&inner, &full, &shape);
        }
        if inner.entries.contains_key(&full) {
            return Err(BackboneError::DuplicateParam(full));
        }
        let values = sample_init(init, shape.dims(), &mut inner.rng);
        let tensor = Tensor::from_vec(values, shape, &self.device)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&tensor)?;
        inner.entries.insert(
            full,
            Entry {
                var: var.clone(),
                trainable,
            },
        );
        Ok(var)
    }

    /// Register a trainable f32 parameter and return it as a tensor that tracks gradients
    /// (in a [`ParamStore::frozen`] view: the existing parameter, detached).
    pub fn param(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        let var = self.create(name, shape.into(), init, DType::F32, true)?;
        if self.frozen {
            return Ok(var.as_detached_tensor());
        }
        Ok(var.as_tensor().clone())
    }

    /// Register a buffer: saved and loaded with the weights, updated in place, never trained.
    pub fn buffer(
        &self,
        name: &str,
        shape: impl Into<Shape>,
        init: Init,
        dtype: DType,
    ) -> Result<Var> {
        self.create(name, shape.into(), init, dtype, false)
    }

    /// The trainable parameters, by name (sorted).
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.lock()
            .entries
            .iter()
            .filter(|(_, e)| e.trainable)
            .map(|(n, e)| (n.clone(), e.var.clone()))
            .collect()
    }

    /// The buffers, by name (sorted).
    pub fn buffers(&self) -> Vec<(String, Var)> {
        self.lock()
            .entries
            .iter()
            .filter(|(_, e)| !e.trainable)
            .map(|(n, e)| (n.clone(), e.var.clone()))
            .collect()
    }

    /// Every tensor (parameters and buffers) by name, as detached copies of the current values.
    pub fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let inner = self.lock();
        let mut out = BTreeMap::new();
        for (name, e) in &inner.entries {
            out.insert(name.clone(), e.var.as_tensor().detach().copy()?);
        }
        Ok(out)
    }

    /// The names of every tensor (parameters and buffers), sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().entries.keys().cloned().collect()
    }

    /// The number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Overwrite the store's tensors with `tensors` of the same names (converted to the store's
    /// dtypes and device). A shape mismatch is always an error; names missing on either side are
    /// an error when `strict`, and are reported otherwise.
    pub fn load(&self, tensors: &BTreeMap<String, Tensor>, strict: bool) -> Result<LoadReport> {
        let inner = self.lock();
        let mut report = LoadReport::default();
        let mut mismatched = Vec::new();
        for (name, e) in &inner.entries {
            match tensors.get(name) {
                None => report.missing.push(name.clone()),
                Some(t) if t.dims() != e.var.dims() => mismatched.push(format!(
                    "{name}: model {:?}, weights {:?}",
                    e.var.dims(),
                    t.dims()
                )),
                Some(_) => {}
            }
        }
        report.unexpected = tensors
            .keys()
            .filter(|k| !inner.entries.contains_key(*k))
            .cloned()
            .collect();
        if !mismatched.is_empty() {
            return Err(BackboneError::WeightMismatch(format!(
                "shape mismatch for {}",
                mismatched.join("; ")
            )));
        }
        if strict && (!report.missing.is_empty() || !report.unexpected.is_empty()) {
            return Err(BackboneError::WeightMismatch(describe_report(&report)));
        }
        for (name, e) in &inner.entries {
            if let Some(t) = tensors.get(name) {
                let t = t.to_device(&self.device)?.to_dtype(e.var.dtype())?;
                e.var.set(&t)?;
            }
        }
        Ok(report)
    }
}

/// A one-line description of missing and unexpected names (the first few of each, with counts).
pub fn describe_report(report: &LoadReport) -> String {
    fn list(names: &[String]) -> String {
        let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
        let more = names.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{} (+{more} more)", shown.join(", "))
        } else {
            shown.join(", ")
        }
    }
    let mut parts = Vec::new();
    if !report.missing.is_empty() {
        parts.push(format!(
            "missing {}: {}",
            report.missing.len(),
            list(&report.missing)
        ));
    }
    if !report.unexpected.is_empty() {
        parts.push(format!(
            "unexpected {}: {}",
            report.unexpected.len(),
            list(&report.unexpected)
        ));
    }
    parts.join("; ")
}
