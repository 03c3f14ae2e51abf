//! Per-step learning-rate schedules, exact to timm's schedulers stepped every optimizer update
//! (`t_in_epochs=False`, `step_update(num_updates)`).

use serde::{Deserialize, Serialize};

/// A learning-rate schedule over optimizer updates; [`LrSchedule::lr_at`] gives the rate of
/// update number `step` (0-based: the first update uses `lr_at(0)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// timm `CosineLRScheduler(t_initial=total_steps, lr_min=min_lr, warmup_t=warmup_steps,
    /// warmup_lr_init, warmup_prefix, cycle_limit=1)`: a linear warmup then one cosine cycle,
    /// `min_lr` after it.
    Cosine {
        /// Peak learning rate.
        base_lr: f64,
        /// Length of the cosine cycle (`t_initial`).
        total_steps: usize,
        /// Length of the linear warmup.
        #[serde(default)]
        warmup_steps: usize,
        /// Learning rate at step 0 of the warmup.
        #[serde(default)]
        warmup_lr_init: f64,
        /// Floor of the cosine (`lr_min`).
        #[serde(default)]
        min_lr: f64,
        /// Whether the cycle starts after the warmup (`true`) or the warmup overlays its start.
        #[serde(default)]
        warmup_prefix: bool,
    },
    /// timm `StepLRScheduler(decay_t=decay_steps, decay_rate, warmup_t=warmup_steps,
    /// warmup_lr_init)` with the class's default `warmup_prefix=True`: the rate is multiplied by
    /// `decay_rate` every `decay_steps` updates counted after the warmup.
    Step {
        /// Learning rate after the warmup.
        base_lr: f64,
        /// Updates between two decays (`decay_t`).
        decay_steps: usize,
        /// Factor applied at each decay.
        decay_rate: f64,
        /// Length of the linear warmup.
        #[serde(default)]
        warmup_steps: usize,
        /// Learning rate at step 0 of the warmup.
        #[serde(default)]
        warmup_lr_init: f64,
    },
    /// A fixed learning rate.
    Constant {
        /// The learning rate.
        lr: f64,
    },
}

/// A schedule parameter outside its domain.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// A rate that must be finite and positive (`base_lr`, `lr`, `decay_rate`).
    #[error("{name} = {value} must be finite and > 0")]
    NotPositive {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A rate that must be finite and non-negative (`min_lr`, `warmup_lr_init`).
    #[error("{name} = {value} must be finite and >= 0")]
    Negative {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A zero length (`total_steps`, `decay_steps`).
    #[error("{0} must be > 0")]
    ZeroLength(&'static str),
    /// A warmup as long as the cosine cycle.
    #[error("warmup_steps = {warmup_steps} must be < total_steps = {total_steps}")]
    WarmupTooLong {
        /// The warmup length.
        warmup_steps: usize,
        /// The cycle length.
        total_steps: usize,
    },
}

impl LrSchedule {
    /// Checks the parameters: positive rates and lengths, non-negative floors, and a warmup
    /// shorter than the cosine cycle.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        match *self {
            Self::Cosine {
                base_lr,
                total_steps,
                warmup_steps,
                warmup_lr_init,
                min_lr,
                ..
            } => {
                positive("base_lr", base_lr)?;
                non_negative("warmup_lr_init", warmup_lr_init)?;
                non_negative("min_lr", min_lr)?;
                if total_steps == 0 {
                    return Err(ScheduleError::ZeroLength("total_steps"));
                }
                if warmup_steps >= total_steps {
                    return Err(ScheduleError::WarmupTooLong {
                        warmup_steps,
                        total_steps,
                    });
                }
                Ok(())
            }
            Self::Step {
                base_lr,
                decay_steps,
                decay_rate,
                warmup_lr_init,
                ..
            } => {
                positive("base_lr", base_lr)?;
                positive("decay_rate", decay_rate)?;
                non_negative("warmup_lr_init", warmup_lr_init)?;
                if decay_steps == 0 {
                    return Err(ScheduleError::ZeroLength("decay_steps"));
                }
                Ok(())
            }
            Self::Constant { lr } => positive("lr", lr),
        }
    }

    /// The learning rate of optimizer update `step` (timm `_get_lr(step)`), for a schedule that
    /// passed [`LrSchedule::validate`].
    pub fn lr_at(&self, step: usize) -> f64 {
        match *self {
            Self::Cosine {
                base_lr,
                total_steps,
                warmup_steps,
                warmup_lr_init,
                min_lr,
                warmup_prefix,
            } => {
                if step < warmup_steps {
                    return warmup_lr(base_lr, warmup_lr_init, warmup_steps, step);
                }
                let t = if warmup_prefix {
                    step - warmup_steps
                } else {
                    step
                };
                cosine_lr(base_lr, min_lr, total_steps, t)
            }
            Self::Step {
                base_lr,
                decay_steps,
                decay_rate,
                warmup_steps,
                warmup_lr_init,
            } => {
                if step < warmup_steps {
                    return warmup_lr(base_lr, warmup_lr_init, warmup_steps, step);
                }
                step_lr(base_lr, decay_rate, decay_steps, step - warmup_steps)
            }
            Self::Constant { lr } => lr,
        }
    }
}

/// timm warmup: `warmup_lr_init + t · (base − warmup_lr_init) / warmup_t`.
fn warmup_lr(base: f64, init: f64, warmup_steps: usize, t: usize) -> f64 {
    init + t as f64 * ((base - init) / warmup_steps as f64)
}

/// timm single cosine cycle: `lr_min + 0.5 (lr_max − lr_min)(1 + cos(π t / T))` for `t < T`,
/// then `lr_min`.
fn cosine_lr(base: f64, min: f64, total_steps: usize, t: usize) -> f64 {
    if t >= total_steps {
        return min;
    }
    let angle = std::f64::consts::PI * t as f64 / total_steps as f64;
    min + 0.5 * (base - min) * (1.0 + angle.cos())
}

/// timm step decay: `base · rate^(t // decay_t)` (an unvalidated `decay_t = 0` never decays).
fn step_lr(base: f64, rate: f64, decay_steps: usize, t: usize) -> f64 {
    base * rate.powf(t.checked_div(decay_steps).unwrap_or(0) as f64)
}

/// Checks a finite, positive rate.
fn positive(name: &'static str, value: f64) -> Result<(), ScheduleError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ScheduleError::NotPositive { name, value })
    }
}

/// Checks a finite, non-negative rate.
fn non_negative(name: &'static str, value: f64) -> Result<(), ScheduleError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ScheduleError::Negative { name, value })
    }
}
