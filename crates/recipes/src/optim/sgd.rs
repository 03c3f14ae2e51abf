//! Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight decay,
//! as `torch.optim.SGD` (single-tensor implementation).

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::kernels::{deep_copy, fused_cpu_f32, map2_inplace, map3_inplace};
use super::{
    check_lr, entry, grad_for, load_like, non_negative, slots, state_by_param, OptimError,
    Optimizer, ParamGroup, Slot,
};

/// Name of the momentum buffer in [`Optimizer::state`].
const MOMENTUM_BUFFER: &str = "momentum_buffer";

/// Hyper-parameters of [`Sgd`] (the learning rate is given at each step, the weight decay by
/// the groups).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    /// Momentum factor (0 disables the momentum buffer).
    pub momentum: f64,
    /// Dampening of the gradient added to the momentum buffer.
    pub dampening: f64,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
}

/// `torch.optim.SGD`: with `d = g + wd·p` (L2 decay added to the gradient), the buffer
/// `b = d` at the first step then `b = momentum·b + (1 − dampening)·d`, and
/// `p -= lr·(d + momentum·b)` (Nesterov) or `p -= lr·b` (or `p -= lr·d` without momentum).
#[derive(Debug)]
pub struct Sgd {
    slots: Vec<Slot<Tensor>>,
    cfg: SgdConfig,
}

impl Sgd {
    /// An optimizer over `groups`; negative hyper-parameters, Nesterov without momentum or with
    /// dampening, repeated names and non-float parameters are errors.
    pub fn new(groups: Vec<ParamGroup>, cfg: SgdConfig) -> Result<Self, OptimError> {
        non_negative("momentum", cfg.momentum)?;
        non_negative("dampening", cfg.dampening)?;
        if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
            return Err(OptimError::NesterovWithoutMomentum);
        }
        Ok(Self {
            slots: slots(groups)?,
            cfg,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> SgdConfig {
        self.cfg
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore, lr: f64) -> candle_core::Result<()> {
        check_lr(lr)?;
        for slot in &mut self.slots {
            let Some(g) = grad_for(grads, &slot.name, &slot.var)? else {
                continue;
            };
            let buf = if fused_cpu_f32(&slot.var) {
                step_fused(
                    &slot.var,
                    &g,
                    slot.state.as_ref(),
                    slot.weight_decay,
                    lr,
                    self.cfg,
                )?
            } else {
                step_tensor_ops(
                    &slot.var,
                    &g,
                    slot.state.as_ref(),
                    slot.weight_decay,
                    lr,
                    self.cfg,
                )?
            };
            slot.state = buf;
        }
        Ok(())
    }

    fn state(&self) -> candle_core::Result<BTreeMap<String, Tensor>> {
        self.slots
            .iter()
            .filter_map(|s| s.state.as_ref().map(|b| (s, b)))
            .map(|(s, b)| Ok((format!("{}.{MOMENTUM_BUFFER}", s.name), deep_copy(b)?)))
            .collect()
    }

    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), OptimError> {
        let suffixes: &[&str] = if self.cfg.momentum == 0.0 {
            &[]
        } else {
            &[MOMENTUM_BUFFER]
        };
        let mut by_param = state_by_param(state, &self.slots, suffixes)?;
        let mut loaded = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter().enumerate() {
            let buf = match by_param.remove(&i) {
                Some(entries) => Some(load_like(
                    format!("{}.{MOMENTUM_BUFFER}", slot.name),
                    entry(&entries, &slot.name, MOMENTUM_BUFFER)?,
                    &slot.var,
                )?),
                None => None,
            };
            loaded.push(buf);
        }
        for (slot, buf) in self.slots.iter_mut().zip(loaded) {
            slot.state = buf;
        }
        Ok(())
    }
}

/// One SGD update on CPU `f32`, each tensor read and written once with torch's arithmetic.
/// Returns the momentum buffer (updated in place when it existed).
fn step_fused(
    var: &Var,
    g: &Tensor,
    buf: Option<&Tensor>,
    weight_decay: f64,
    lr: f64,
    cfg: SgdConfig,
) -> candle_core::Result<Option<Tensor>> {
    let p = var.as_tensor();
    let (wd, has_wd) = (weight_decay as f32, weight_decay != 0.0);
    // torch `grad.add(param, alpha=weight_decay)`, skipped without decay.
    let decayed = move |g: f32, p: f32| if has_wd { g + wd * p } else { g };
    let neg_lr = (-lr) as f32;
    if cfg.momentum == 0.0 {
        map2_inplace("sgd-update", p, g, |p, g| p + neg_lr * decayed(g, p))?;
        return Ok(None);
    }
    let (m, keep) = (cfg.momentum as f32, (1.0 - cfg.dampening) as f32);
    let buf = match buf {
        None => {
            let b = Tensor::zeros_like(g)?;
            map3_inplace("sgd-momentum-init", &b, g, p, |_, g, p| decayed(g, p))?;
            b
        }
        Some(b) => {
            // torch `buf.mul_(momentum).add_(d, alpha=1 - dampening)`
            map3_inplace("sgd-momentum", b, g, p, |b, g, p| {
                b * m + keep * decayed(g, p)
            })?;
            b.clone()
        }
    };
    if cfg.nesterov {
        map3_inplace("sgd-nesterov-update", p, g, &buf, |p, g, b| {
            p + neg_lr * (decayed(g, p) + m * b)
        })?;
    } else {
        map2_inplace("sgd-momentum-update", p, &buf, |p, b| p + neg_lr * b)?;
    }
    Ok(Some(buf))
}

/// One SGD update with tensor ops (any device and dtype); same formulas as [`step_fused`].
fn step_tensor_ops(
    var: &Var,
    g: &Tensor,
    buf: Option<&Tensor>,
    weight_decay: f64,
    lr: f64,
    cfg: SgdConfig,
) -> candle_core::Result<Option<Tensor>> {
    let p = var.as_detached_tensor();
    let d = if weight_decay != 0.0 {
        (g + (&p * weight_decay)?)?
    } else {
        g.clone()
    };
    let (direction, buf) = if cfg.momentum == 0.0 {
        (d, None)
    } else {
        let buf = match buf {
            None => deep_copy(&d)?,
            Some(b) => ((b * cfg.momentum)? + (&d * (1.0 - cfg.dampening))?)?,
        };
        let direction = if cfg.nesterov {
            (&d + (&buf * cfg.momentum)?)?
        } else {
            buf.clone()
        };
        (direction, Some(buf))
    };
    var.set(&(p - (direction * lr)?)?)?;
    Ok(buf)
}
