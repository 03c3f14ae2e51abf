//! Exponential moving average of a model's parameters (the mean teacher), as timm's
//! `ModelEmaV3(decay=tau, exclude_buffers=True)` updated without a step (no decay warmup).

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Shape, Tensor};

use crate::optim::kernels::{
    assign_in_place, deep_copy, fused_cpu_f32, lerp_f32, lerp_tensor, map2_inplace,
};
use crate::optim::NamedParam;

/// Errors of the EMA teacher.
#[derive(Debug, thiserror::Error)]
pub enum EmaError {
    /// A decay outside `[0, 1]`.
    #[error("EMA decay tau = {0} must be in [0, 1]")]
    InvalidTau(f64),
    /// Two tensors with one name.
    #[error("EMA tensor `{0}` appears twice")]
    DuplicateName(String),
    /// A parameter (averaged) whose dtype is not a float.
    #[error("EMA parameter `{name}` has dtype {dtype:?}, not a float")]
    NonFloatParam {
        /// The parameter.
        name: String,
        /// Its dtype.
        dtype: DType,
    },
    /// A teacher tensor the student or the loaded map does not provide.
    #[error("EMA tensor `{0}` is missing")]
    Missing(String),
    /// A tensor the teacher does not have (or a parameter given as a buffer, or the reverse).
    #[error("`{0}` is not a tensor of the EMA teacher in that role")]
    Unknown(String),
    /// A tensor whose shape is not the teacher's.
    #[error("EMA tensor `{name}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor.
        name: String,
        /// The teacher's shape.
        expected: Shape,
        /// The given shape.
        got: Shape,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The mean teacher: `teacher = tau·teacher + (1 − tau)·student` for every trainable parameter
/// (computed as torch's `teacher.lerp_(student, 1 − tau)`), buffers (e.g. BatchNorm running
/// statistics) copied from the student.
///
/// The teacher tensors are updated in place: clones of [`Ema::tensors`] (e.g. a teacher model
/// built on them) follow every [`Ema::update`] and [`Ema::load`]; copy them to keep a snapshot.
#[derive(Debug)]
pub struct Ema {
    tau: f64,
    teacher: BTreeMap<String, Tensor>,
    params: BTreeSet<String>,
    buffers: BTreeSet<String>,
}

impl Ema {
    /// A teacher initialized to a copy of the student (new tensors, no gradient tracking).
    /// `tau` must be in `[0, 1]`; names must be unique across `student` and `buffers`.
    pub fn new(student: &[NamedParam], buffers: &[NamedParam], tau: f64) -> Result<Self, EmaError> {
        Self::build(student, buffers, tau, |t| Ok(deep_copy(t)?))
    }

    /// A teacher that averages into the storage of `teacher` and `buffers` themselves (shared,
    /// not copied), e.g. the variables of a teacher model initialized to the student's weights:
    /// that model then runs the averaged weights after every [`Ema::update`] without a copy.
    pub fn over(
        teacher: &[NamedParam],
        buffers: &[NamedParam],
        tau: f64,
    ) -> Result<Self, EmaError> {
        Self::build(teacher, buffers, tau, |t| Ok(t.clone()))
    }

    fn build(
        params: &[NamedParam],
        buffers: &[NamedParam],
        tau: f64,
        take: impl Fn(&Tensor) -> Result<Tensor, EmaError>,
    ) -> Result<Self, EmaError> {
        if !(0.0..=1.0).contains(&tau) {
            return Err(EmaError::InvalidTau(tau));
        }
        let mut teacher = BTreeMap::new();
        for p in params.iter().chain(buffers) {
            if teacher.contains_key(&p.name) {
                return Err(EmaError::DuplicateName(p.name.clone()));
            }
            teacher.insert(p.name.clone(), take(&p.var.as_detached_tensor())?);
        }
        if let Some(p) = params.iter().find(|p| !p.var.dtype().is_float()) {
            return Err(EmaError::NonFloatParam {
                name: p.name.clone(),
                dtype: p.var.dtype(),
            });
        }
        Ok(Self {
            tau,
            teacher,
            params: params.iter().map(|p| p.name.clone()).collect(),
            buffers: buffers.iter().map(|p| p.name.clone()).collect(),
        })
    }

    /// The decay `tau`.
    pub fn tau(&self) -> f64 {
        self.tau
    }

    /// One EMA step: averages `student` into the teacher and copies `buffers`. Both must name
    /// exactly the tensors given to [`Ema::new`], with their shapes; on error nothing is changed.
    pub fn update(
        &mut self,
        student: &[NamedParam],
        buffers: &[NamedParam],
    ) -> Result<(), EmaError> {
        let student = self.matched(student, &self.params)?;
        let buffers = self.matched(buffers, &self.buffers)?;
        let weight = 1.0 - self.tau;
        for (teacher, p) in student {
            let s = p.var.as_detached_tensor();
            if fused_cpu_f32(teacher) && fused_cpu_f32(&s) {
                let w = weight as f32;
                map2_inplace("ema-update", teacher, &s, |t, s| lerp_f32(t, s, w))?;
            } else {
                let s = s.to_device(teacher.device())?.to_dtype(teacher.dtype())?;
                assign_in_place(teacher, &lerp_tensor(teacher, &s, weight)?)?;
            }
        }
        for (teacher, b) in buffers {
            assign_in_place(teacher, &b.var.as_detached_tensor())?;
        }
        Ok(())
    }

    /// The teacher's parameters and buffers by name (to build or run a teacher model, and to
    /// checkpoint).
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.teacher
    }

    /// Restores teacher tensors saved from [`Ema::tensors`]: the names must be exactly the
    /// teacher's, with its shapes (values are cast to its dtype and device); on error nothing is
    /// changed.
    pub fn load(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<(), EmaError> {
        if let Some(name) = tensors.keys().find(|k| !self.teacher.contains_key(*k)) {
            return Err(EmaError::Unknown(name.clone()));
        }
        for (name, teacher) in &self.teacher {
            let t = tensors
                .get(name)
                .ok_or_else(|| EmaError::Missing(name.clone()))?;
            check_shape(name, teacher, t)?;
        }
        for (name, teacher) in &self.teacher {
            if let Some(t) = tensors.get(name) {
                assign_in_place(teacher, t)?;
            }
        }
        Ok(())
    }

    /// Pairs each given tensor with its teacher tensor, checking that `given` names exactly
    /// `expected`, once each, with the teacher's shapes.
    fn matched<'a>(
        &'a self,
        given: &'a [NamedParam],
        expected: &BTreeSet<String>,
    ) -> Result<Vec<(&'a Tensor, &'a NamedParam)>, EmaError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(given.len());
        for p in given {
            let teacher = self
                .teacher
                .get(&p.name)
                .filter(|_| expected.contains(&p.name))
                .ok_or_else(|| EmaError::Unknown(p.name.clone()))?;
            if !seen.insert(p.name.as_str()) {
                return Err(EmaError::DuplicateName(p.name.clone()));
            }
            check_shape(&p.name, teacher, &p.var)?;
            out.push((teacher, p));
        }
        if let Some(missing) = expected.iter().find(|n| !seen.contains(n.as_str())) {
            return Err(EmaError::Missing(missing.clone()));
        }
        Ok(out)
    }
}

/// Fails unless `given` has the teacher tensor's shape.
fn check_shape(name: &str, teacher: &Tensor, given: &Tensor) -> Result<(), EmaError> {
    if teacher.dims() == given.dims() {
        Ok(())
    } else {
        Err(EmaError::ShapeMismatch {
            name: name.to_owned(),
            expected: teacher.shape().clone(),
            got: given.shape().clone(),
        })
    }
}
