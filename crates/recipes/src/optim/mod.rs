//! Optimizers with parameter groups and exposed state, exact to `torch.optim`, and gradient-norm
//! clipping exact to `torch.nn.utils.clip_grad_norm_`.
//!
//! candle's own SGD has no momentum, weight decay or Nesterov, and its AdamW has a single group and
//! private moments; these work on [`Var`]s and a [`GradStore`] and expose their state as named
//! tensors for checkpoints.

mod adamw;
mod clip;
mod groups;
pub(crate) mod kernels;
mod sgd;

use std::collections::{BTreeMap, BTreeSet};

use candle_core::backprop::GradStore;
use candle_core::{DType, Shape, Tensor, Var};

pub use adamw::{AdamW, AdamWConfig};
pub use clip::clip_grad_norm;
pub use groups::{fnmatch, param_groups_weight_decay};
pub use sgd::{Sgd, SgdConfig};

/// A named trainable parameter.
#[derive(Debug, Clone)]
pub struct NamedParam {
    /// The parameter's name (timm's `named_parameters` spelling, e.g. `blocks.0.attn.qkv.weight`).
    pub name: String,
    /// The parameter, updated in place by the optimizers.
    pub var: Var,
}

impl NamedParam {
    /// Pairs a name with its variable.
    pub fn new(name: impl Into<String>, var: Var) -> Self {
        Self {
            name: name.into(),
            var,
        }
    }
}

/// A group of parameters sharing a weight decay (timm's `param_groups_weight_decay`).
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// The parameters of the group.
    pub params: Vec<NamedParam>,
    /// The group's weight decay (L2 for SGD, decoupled for AdamW).
    pub weight_decay: f64,
}

/// Errors of optimizer construction and state loading.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A hyper-parameter outside its domain.
    #[error("invalid {name} = {value}: must be {requirement}")]
    InvalidHyperparameter {
        /// The hyper-parameter.
        name: &'static str,
        /// Its value.
        value: f64,
        /// Its domain, in words.
        requirement: &'static str,
    },
    /// Nesterov momentum without momentum or with dampening (as `torch.optim.SGD` refuses).
    #[error("nesterov momentum requires a positive momentum and zero dampening")]
    NesterovWithoutMomentum,
    /// Two parameters with one name: their state could not be told apart.
    #[error("parameter `{0}` appears twice")]
    DuplicateParam(String),
    /// A parameter whose dtype is not a float.
    #[error("parameter `{name}` has dtype {dtype:?}, not a float")]
    NonFloatParam {
        /// The parameter.
        name: String,
        /// Its dtype.
        dtype: DType,
    },
    /// A state entry that names no parameter of this optimizer or no state it keeps.
    #[error("unknown optimizer state entry `{0}`")]
    UnknownStateEntry(String),
    /// A parameter with part of its state entries.
    #[error("optimizer state entry `{0}` is missing")]
    MissingStateEntry(String),
    /// A state tensor whose shape is not its parameter's.
    #[error("optimizer state entry `{name}` has shape {got:?}, expected {expected:?}")]
    StateShapeMismatch {
        /// The state entry.
        name: String,
        /// The parameter's shape.
        expected: Shape,
        /// The entry's shape.
        got: Shape,
    },
    /// A state value that cannot be (a step count that is not a non-negative integer).
    #[error("optimizer state entry `{name}` is invalid: {reason}")]
    InvalidStateValue {
        /// The state entry.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A first-order optimizer over named parameters.
pub trait Optimizer {
    /// One update with learning rate `lr`; params without a gradient in `grads` are skipped (as
    /// torch skips `p.grad is None`).
    fn step(&mut self, grads: &GradStore, lr: f64) -> candle_core::Result<()>;

    /// Optimizer state for checkpoints, as named tensors (copies): `<param>.momentum_buffer` (SGD),
    /// `<param>.exp_avg`, `<param>.exp_avg_sq`, `<param>.step` (AdamW, the step count as an `f64`
    /// scalar). Parameters that never had a gradient have no entries, as in torch.
    fn state(&self) -> candle_core::Result<BTreeMap<String, Tensor>>;

    /// Restores state saved by [`Optimizer::state`]. Every entry must name a parameter of this
    /// optimizer and a state it keeps, with the parameter's shape; a parameter has all its entries
    /// or none (none: it starts fresh, as in torch). On error nothing is changed.
    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), OptimError>;
}

/// One parameter with its group's weight decay and its optimizer state.
#[derive(Debug)]
struct Slot<S> {
    name: String,
    var: Var,
    weight_decay: f64,
    state: Option<S>,
}

/// Flattens groups into slots, checking names are unique, dtypes are floats and decays are valid.
fn slots<S>(groups: Vec<ParamGroup>) -> Result<Vec<Slot<S>>, OptimError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for group in groups {
        non_negative("weight_decay", group.weight_decay)?;
        for p in group.params {
            if !seen.insert(p.name.clone()) {
                return Err(OptimError::DuplicateParam(p.name));
            }
            if !p.var.dtype().is_float() {
                return Err(OptimError::NonFloatParam {
                    dtype: p.var.dtype(),
                    name: p.name,
                });
            }
            out.push(Slot {
                name: p.name,
                var: p.var,
                weight_decay: group.weight_decay,
                state: None,
            });
        }
    }
    Ok(out)
}

/// Checks that a hyper-parameter is finite and `>= 0`.
fn non_negative(name: &'static str, value: f64) -> Result<(), OptimError> {
    check(
        name,
        value,
        value.is_finite() && value >= 0.0,
        "finite and >= 0",
    )
}

/// Checks that a hyper-parameter is in `[0, 1)` (Adam's betas).
fn unit_interval(name: &'static str, value: f64) -> Result<(), OptimError> {
    check(name, value, (0.0..1.0).contains(&value), "in [0, 1)")
}

/// `Ok` when `ok`, else the hyper-parameter error.
fn check(
    name: &'static str,
    value: f64,
    ok: bool,
    requirement: &'static str,
) -> Result<(), OptimError> {
    if ok {
        Ok(())
    } else {
        Err(OptimError::InvalidHyperparameter {
            name,
            value,
            requirement,
        })
    }
}

/// The learning rate check of [`Optimizer::step`], as a candle error.
fn check_lr(lr: f64) -> candle_core::Result<()> {
    non_negative("lr", lr).map_err(candle_core::Error::wrap)
}

/// The gradient of `var` in `grads`, checked against its shape and cast to its dtype.
fn grad_for(grads: &GradStore, slot_name: &str, var: &Var) -> candle_core::Result<Option<Tensor>> {
    let Some(g) = grads.get(var.as_tensor()) else {
        return Ok(None);
    };
    if g.dims() != var.dims() {
        candle_core::bail!(
            "gradient of `{slot_name}` has shape {:?}, parameter {:?}",
            g.dims(),
            var.dims()
        )
    }
    Ok(Some(
        g.detach().to_dtype(var.dtype())?.to_device(var.device())?,
    ))
}

/// Splits state keys `<param>.<suffix>` by parameter index. Keys whose suffix is not one of
/// `suffixes` or whose parameter is not in `slots` are errors.
fn state_by_param<'a, S>(
    state: &'a BTreeMap<String, Tensor>,
    slots: &[Slot<S>],
    suffixes: &[&'static str],
) -> Result<BTreeMap<usize, BTreeMap<&'static str, &'a Tensor>>, OptimError> {
    let index: BTreeMap<&str, usize> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut out: BTreeMap<usize, BTreeMap<&'static str, &Tensor>> = BTreeMap::new();
    for (key, t) in state {
        let found = suffixes.iter().find_map(|&suffix| {
            let param = key.strip_suffix(suffix)?.strip_suffix('.')?;
            index.get(param).map(|&i| (i, suffix))
        });
        let (i, suffix) = found.ok_or_else(|| OptimError::UnknownStateEntry(key.clone()))?;
        out.entry(i).or_default().insert(suffix, t);
    }
    Ok(out)
}

/// The entry `<name>.<suffix>` of one parameter's state, or the missing-entry error.
fn entry<'a>(
    entries: &BTreeMap<&'static str, &'a Tensor>,
    name: &str,
    suffix: &str,
) -> Result<&'a Tensor, OptimError> {
    entries
        .get(suffix)
        .copied()
        .ok_or_else(|| OptimError::MissingStateEntry(format!("{name}.{suffix}")))
}

/// A loaded state tensor: checked against the parameter's shape, copied to its device and dtype.
fn load_like(key: String, t: &Tensor, var: &Var) -> Result<Tensor, OptimError> {
    if t.dims() != var.dims() {
        return Err(OptimError::StateShapeMismatch {
            name: key,
            expected: var.shape().clone(),
            got: t.shape().clone(),
        });
    }
    Ok(kernels::deep_copy(
        &t.to_device(var.device())?.to_dtype(var.dtype())?,
    )?)
}
