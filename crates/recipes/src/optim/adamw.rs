//! Adam with decoupled weight decay, as `torch.optim.AdamW` (single-tensor implementation).

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::kernels::{deep_copy, fused_cpu_f32, lerp_f32, lerp_tensor, map2_inplace, map3_inplace};
use super::{
    check_lr, entry, grad_for, load_like, non_negative, slots, state_by_param, unit_interval,
    OptimError, Optimizer, ParamGroup, Slot,
};

/// Names of the AdamW state entries in [`Optimizer::state`].
const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";
const STEP: &str = "step";

/// Largest step count an `f64` holds exactly.
const MAX_STEP: f64 = 9_007_199_254_740_992.0;

/// Hyper-parameters of [`AdamW`] (the learning rate is given at each step, the weight decay by
/// the groups).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Decay of the first moment (torch `betas[0]`).
    pub beta1: f64,
    /// Decay of the second moment (torch `betas[1]`).
    pub beta2: f64,
    /// Added to `sqrt(v_hat)` in the denominator.
    pub eps: f64,
}

impl Default for AdamWConfig {
    /// torch's defaults: betas (0.9, 0.999), eps 1e-8.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Per-parameter AdamW state.
#[derive(Debug)]
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

/// `torch.optim.AdamW`: at step `t`, `p *= 1 − lr·wd`, `m = lerp(m, g, 1 − β1)`,
/// `v = β2·v + (1 − β2)·g²`, `p −= lr/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + eps)`.
#[derive(Debug)]
pub struct AdamW {
    slots: Vec<Slot<Moments>>,
    cfg: AdamWConfig,
}

impl AdamW {
    /// An optimizer over `groups`; betas outside `[0, 1)`, a negative eps, repeated names and
    /// non-float parameters are errors.
    pub fn new(groups: Vec<ParamGroup>, cfg: AdamWConfig) -> Result<Self, OptimError> {
        unit_interval("beta1", cfg.beta1)?;
        unit_interval("beta2", cfg.beta2)?;
        non_negative("eps", cfg.eps)?;
        Ok(Self {
            slots: slots(groups)?,
            cfg,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> AdamWConfig {
        self.cfg
    }
}

/// The scalars of one AdamW update, in `f64` as torch computes them.
#[derive(Debug, Clone, Copy)]
struct Scalars {
    /// `1 − lr·wd` (decoupled decay factor), `None` without decay.
    decay: Option<f64>,
    /// `lr / (1 − β1^t)`.
    step_size: f64,
    /// `(1 − β2^t)^0.5`.
    bias_correction2_sqrt: f64,
}

impl Scalars {
    fn new(cfg: &AdamWConfig, lr: f64, weight_decay: f64, step: u64) -> Self {
        let t = step as f64;
        Self {
            decay: (weight_decay != 0.0).then_some(1.0 - lr * weight_decay),
            step_size: lr / (1.0 - cfg.beta1.powf(t)),
            bias_correction2_sqrt: (1.0 - cfg.beta2.powf(t)).powf(0.5),
        }
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore, lr: f64) -> candle_core::Result<()> {
        check_lr(lr)?;
        for slot in &mut self.slots {
            let Some(g) = grad_for(grads, &slot.name, &slot.var)? else {
                continue;
            };
            let mut st = match slot.state.take() {
                Some(st) => st,
                None => Moments {
                    exp_avg: Tensor::zeros_like(&slot.var)?,
                    exp_avg_sq: Tensor::zeros_like(&slot.var)?,
                    step: 0,
                },
            };
            st.step += 1;
            let s = Scalars::new(&self.cfg, lr, slot.weight_decay, st.step);
            let updated = if fused_cpu_f32(&slot.var) {
                step_fused(&slot.var, &g, &st, &self.cfg, s)
            } else {
                step_tensor_ops(&slot.var, &g, &mut st, &self.cfg, s)
            };
            slot.state = Some(st);
            updated?;
        }
        Ok(())
    }

    fn state(&self) -> candle_core::Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for slot in &self.slots {
            let Some(st) = &slot.state else { continue };
            let name = &slot.name;
            out.insert(format!("{name}.{EXP_AVG}"), deep_copy(&st.exp_avg)?);
            out.insert(format!("{name}.{EXP_AVG_SQ}"), deep_copy(&st.exp_avg_sq)?);
            let step = Tensor::new(st.step as f64, slot.var.device())?;
            out.insert(format!("{name}.{STEP}"), step);
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), OptimError> {
        let mut by_param = state_by_param(state, &self.slots, &[EXP_AVG, EXP_AVG_SQ, STEP])?;
        let mut loaded = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(entries) = by_param.remove(&i) else {
                loaded.push(None);
                continue;
            };
            let name = &slot.name;
            let tensor = |suffix: &str| -> Result<Tensor, OptimError> {
                let t = entry(&entries, name, suffix)?;
                load_like(format!("{name}.{suffix}"), t, &slot.var)
            };
            loaded.push(Some(Moments {
                exp_avg: tensor(EXP_AVG)?,
                exp_avg_sq: tensor(EXP_AVG_SQ)?,
                step: load_step(format!("{name}.{STEP}"), entry(&entries, name, STEP)?)?,
            }));
        }
        for (slot, st) in self.slots.iter_mut().zip(loaded) {
            slot.state = st;
        }
        Ok(())
    }
}

/// A saved step count: a one-element tensor holding a non-negative integer.
fn load_step(key: String, t: &Tensor) -> Result<u64, OptimError> {
    if t.elem_count() != 1 {
        return Err(OptimError::InvalidStateValue {
            name: key,
            reason: format!(
                "a step count must have one element, got shape {:?}",
                t.dims()
            ),
        });
    }
    let step = t
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?
        .first()
        .copied()
        .unwrap_or(f64::NAN);
    if !((0.0..=MAX_STEP).contains(&step) && step.fract() == 0.0) {
        return Err(OptimError::InvalidStateValue {
            name: key,
            reason: format!("{step} is not a non-negative integer"),
        });
    }
    Ok(step as u64)
}

/// One AdamW update on CPU `f32`: the moments then the parameter, each updated in place in one
/// pass, with the arithmetic of torch's `_single_tensor_adam`.
fn step_fused(
    var: &Var,
    g: &Tensor,
    st: &Moments,
    cfg: &AdamWConfig,
    s: Scalars,
) -> candle_core::Result<()> {
    let w1 = (1.0 - cfg.beta1) as f32;
    let (b2, c2) = (cfg.beta2 as f32, (1.0 - cfg.beta2) as f32);
    // torch `exp_avg.lerp_(grad, 1 - beta1)`
    map2_inplace("adamw-exp-avg", &st.exp_avg, g, |m, g| lerp_f32(m, g, w1))?;
    // torch `exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)`
    map2_inplace("adamw-exp-avg-sq", &st.exp_avg_sq, g, |v, g| {
        v * b2 + c2 * g * g
    })?;
    let decay = s.decay.map(|d| d as f32);
    let neg_step_size = (-s.step_size) as f32;
    let bc2_sqrt = s.bias_correction2_sqrt as f32;
    let eps = cfg.eps as f32;
    // torch `param.mul_(1 - lr * wd)` then
    // `param.addcdiv_(exp_avg, exp_avg_sq.sqrt() / bc2_sqrt + eps, value=-step_size)`
    map3_inplace(
        "adamw-update",
        var.as_tensor(),
        &st.exp_avg,
        &st.exp_avg_sq,
        |p, m, v| {
            let p = decay.map_or(p, |d| p * d);
            p + neg_step_size * m / (v.sqrt() / bc2_sqrt + eps)
        },
    )
}

/// One AdamW update with tensor ops (any device and dtype); same formulas as [`step_fused`].
fn step_tensor_ops(
    var: &Var,
    g: &Tensor,
    st: &mut Moments,
    cfg: &AdamWConfig,
    s: Scalars,
) -> candle_core::Result<()> {
    let p = var.as_detached_tensor();
    let p = match s.decay {
        Some(d) => (p * d)?,
        None => p,
    };
    st.exp_avg = lerp_tensor(&st.exp_avg, g, 1.0 - cfg.beta1)?;
    st.exp_avg_sq = ((&st.exp_avg_sq * cfg.beta2)? + ((g * (1.0 - cfg.beta2))? * g)?)?;
    let denom = ((st.exp_avg_sq.sqrt()? / s.bias_correction2_sqrt)? + cfg.eps)?;
    let update = ((&st.exp_avg * s.step_size)? / denom)?;
    var.set(&(p - update)?)
}
