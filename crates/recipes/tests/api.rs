//! Validation, typed errors, state handling and serialization of optimizers, schedules and EMA.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use multimix_recipes::ema::{Ema, EmaError};
use multimix_recipes::optim::{
    AdamW, AdamWConfig, NamedParam, OptimError, Optimizer, ParamGroup, Sgd, SgdConfig,
};
use multimix_recipes::schedule::{LrSchedule, ScheduleError};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SGD: SgdConfig = SgdConfig {
    momentum: 0.9,
    dampening: 0.0,
    nesterov: true,
};

fn var(values: &[f32]) -> candle_core::Result<Var> {
    Var::new(values, &Device::Cpu)
}

fn group(params: &[(&str, &Var)], weight_decay: f64) -> Vec<ParamGroup> {
    vec![ParamGroup {
        params: params
            .iter()
            .map(|(n, v)| NamedParam::new(*n, (*v).clone()))
            .collect(),
        weight_decay,
    }]
}

fn grads_for(pairs: &[(&Var, &[f32])]) -> candle_core::Result<GradStore> {
    let mut grads = GradStore::default();
    for (v, g) in pairs {
        grads.insert(v.as_tensor(), Tensor::new(*g, &Device::Cpu)?);
    }
    Ok(grads)
}

#[test]
fn invalid_hyperparameters_are_typed_errors() -> TestResult {
    let w = var(&[1.0, 2.0])?;
    let bad = |momentum, dampening, nesterov| {
        Sgd::new(
            group(&[("w", &w)], 0.0),
            SgdConfig {
                momentum,
                dampening,
                nesterov,
            },
        )
    };
    assert!(matches!(
        bad(-0.1, 0.0, false),
        Err(OptimError::InvalidHyperparameter {
            name: "momentum",
            ..
        })
    ));
    assert!(matches!(
        bad(0.9, f64::NAN, false),
        Err(OptimError::InvalidHyperparameter {
            name: "dampening",
            ..
        })
    ));
    assert!(matches!(
        bad(0.0, 0.0, true),
        Err(OptimError::NesterovWithoutMomentum)
    ));
    assert!(matches!(
        bad(0.9, 0.1, true),
        Err(OptimError::NesterovWithoutMomentum)
    ));
    assert!(bad(0.9, 0.1, false).is_ok());
    assert!(matches!(
        Sgd::new(group(&[("w", &w)], -1e-4), SGD),
        Err(OptimError::InvalidHyperparameter {
            name: "weight_decay",
            ..
        })
    ));
    assert!(matches!(
        Sgd::new(group(&[("w", &w), ("w", &w)], 0.0), SGD),
        Err(OptimError::DuplicateParam(n)) if n == "w"
    ));
    let ints = Var::from_tensor(&Tensor::new(&[1u32, 2], &Device::Cpu)?)?;
    assert!(matches!(
        Sgd::new(group(&[("i", &ints)], 0.0), SGD),
        Err(OptimError::NonFloatParam { .. })
    ));
    let adamw =
        |beta1, beta2, eps| AdamW::new(group(&[("w", &w)], 0.0), AdamWConfig { beta1, beta2, eps });
    for (b1, b2, eps, name) in [
        (1.0, 0.999, 1e-8, "beta1"),
        (0.9, -0.1, 1e-8, "beta2"),
        (0.9, 0.999, -1.0, "eps"),
    ] {
        assert!(
            matches!(adamw(b1, b2, eps), Err(OptimError::InvalidHyperparameter { name: n, .. }) if n == name),
            "{name}"
        );
    }
    assert_eq!(
        AdamWConfig::default(),
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8
        }
    );
    Ok(())
}

#[test]
fn step_checks_lr_and_gradient_shape() -> TestResult {
    let w = var(&[1.0, 2.0])?;
    let mut opt = Sgd::new(group(&[("w", &w)], 0.0), SGD)?;
    let grads = grads_for(&[(&w, &[0.5, 0.5])])?;
    for lr in [-0.1, f64::NAN, f64::INFINITY] {
        let err = opt.step(&grads, lr).unwrap_err();
        assert!(err.to_string().contains("lr"), "{err}");
    }
    let wrong = grads_for(&[(&w, &[0.5, 0.5, 0.5])])?;
    assert!(opt.step(&wrong, 0.1).is_err());
    assert_eq!(
        w.to_vec1::<f32>()?,
        [1.0, 2.0],
        "failed steps leave the parameter"
    );
    opt.step(&grads, 0.0)?;
    assert_eq!(w.to_vec1::<f32>()?, [1.0, 2.0], "lr 0 leaves the parameter");
    Ok(())
}

#[test]
fn params_without_grads_are_skipped_and_have_no_state() -> TestResult {
    let (a, b) = (var(&[1.0, 2.0])?, var(&[3.0])?);
    let mut opt = AdamW::new(group(&[("a", &a), ("b", &b)], 0.1), AdamWConfig::default())?;
    opt.step(&grads_for(&[(&a, &[1.0, -1.0])])?, 0.1)?;
    assert_eq!(b.to_vec1::<f32>()?, [3.0]);
    let state = opt.state()?;
    let names: Vec<&str> = state.keys().map(String::as_str).collect();
    assert_eq!(names, ["a.exp_avg", "a.exp_avg_sq", "a.step"]);
    assert_eq!(state["a.step"].dtype(), DType::F64);
    assert_eq!(state["a.step"].rank(), 0);
    assert_eq!(state["a.step"].to_scalar::<f64>()?, 1.0);
    // First AdamW step moves each coordinate by about lr against its gradient sign.
    let a_now = a.to_vec1::<f32>()?;
    assert!((a_now[0] - (1.0 * 0.99 - 0.1)).abs() < 1e-6, "{a_now:?}");
    assert!((a_now[1] - (2.0 * 0.99 + 0.1)).abs() < 1e-6, "{a_now:?}");
    Ok(())
}

#[test]
fn load_state_rejects_bad_entries_and_changes_nothing() -> TestResult {
    let (a, b) = (var(&[1.0, 2.0])?, var(&[3.0])?);
    let mut opt = AdamW::new(group(&[("a", &a), ("b", &b)], 0.0), AdamWConfig::default())?;
    opt.step(&grads_for(&[(&a, &[1.0, -1.0]), (&b, &[0.5])])?, 0.1)?;
    let good = opt.state()?;
    let check = |state: &BTreeMap<String, Tensor>, opt: &mut AdamW| opt.load_state(state);

    let mut unknown = good.clone();
    unknown.insert(
        "c.exp_avg".into(),
        Tensor::zeros(1, DType::F32, &Device::Cpu)?,
    );
    assert!(
        matches!(check(&unknown, &mut opt), Err(OptimError::UnknownStateEntry(k)) if k == "c.exp_avg")
    );
    let mut bad_suffix = good.clone();
    bad_suffix.insert(
        "a.momentum_buffer".into(),
        Tensor::zeros(2, DType::F32, &Device::Cpu)?,
    );
    assert!(matches!(
        check(&bad_suffix, &mut opt),
        Err(OptimError::UnknownStateEntry(_))
    ));
    let mut partial = good.clone();
    partial.remove("b.exp_avg_sq");
    assert!(
        matches!(check(&partial, &mut opt), Err(OptimError::MissingStateEntry(k)) if k == "b.exp_avg_sq")
    );
    let mut shape = good.clone();
    shape.insert(
        "a.exp_avg".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu)?,
    );
    assert!(
        matches!(check(&shape, &mut opt), Err(OptimError::StateShapeMismatch { name, .. }) if name == "a.exp_avg")
    );
    for step in [1.5, -1.0, f64::NAN] {
        let mut bad_step = good.clone();
        bad_step.insert("b.step".into(), Tensor::new(step, &Device::Cpu)?);
        assert!(
            matches!(
                check(&bad_step, &mut opt),
                Err(OptimError::InvalidStateValue { .. })
            ),
            "{step}"
        );
    }
    // None of the failed loads touched the state.
    let after = opt.state()?;
    for (k, t) in &good {
        assert_eq!(
            t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
            after[k]
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?
        );
    }
    // A state without entries for a parameter resets it, as torch starts it fresh.
    let only_a: BTreeMap<String, Tensor> = good
        .into_iter()
        .filter(|(k, _)| k.starts_with("a."))
        .collect();
    opt.load_state(&only_a)?;
    assert_eq!(opt.state()?.len(), 3);

    let w = var(&[1.0])?;
    let mut plain = Sgd::new(
        group(&[("w", &w)], 0.0),
        SgdConfig {
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
        },
    )?;
    let buf: BTreeMap<String, Tensor> = [(
        "w.momentum_buffer".to_string(),
        Tensor::zeros(1, DType::F32, &Device::Cpu)?,
    )]
    .into();
    assert!(matches!(
        plain.load_state(&buf),
        Err(OptimError::UnknownStateEntry(_))
    ));
    let mut momentum = Sgd::new(group(&[("w", &w)], 0.0), SGD)?;
    momentum.load_state(&buf)?;
    assert_eq!(
        momentum.state()?.keys().collect::<Vec<_>>(),
        ["w.momentum_buffer"]
    );
    Ok(())
}

#[test]
fn sgd_first_step_initializes_the_buffer_to_the_gradient() -> TestResult {
    let w = var(&[1.0, -2.0])?;
    let cfg = SgdConfig {
        momentum: 0.9,
        dampening: 0.5,
        nesterov: false,
    };
    let mut opt = Sgd::new(group(&[("w", &w)], 0.1), cfg)?;
    opt.step(&grads_for(&[(&w, &[0.5, 0.5])])?, 1.0)?;
    // d = g + 0.1 p; the first buffer is d itself (no dampening applied).
    let d = [0.5f32 + 0.1 * 1.0, 0.5 + 0.1 * -2.0];
    assert_eq!(opt.state()?["w.momentum_buffer"].to_vec1::<f32>()?, d);
    assert_eq!(w.to_vec1::<f32>()?, [1.0 - d[0], -2.0 - d[1]]);
    Ok(())
}

#[test]
fn ema_extremes_buffers_and_errors() -> TestResult {
    let (w, b, rm) = (var(&[1.0, 2.0])?, var(&[0.5])?, var(&[0.0, 0.0])?);
    let params = [
        NamedParam::new("w", w.clone()),
        NamedParam::new("b", b.clone()),
    ];
    let buffers = [NamedParam::new("running_mean", rm.clone())];
    for tau in [-0.1, 1.1, f64::NAN] {
        assert!(matches!(
            Ema::new(&params, &buffers, tau),
            Err(EmaError::InvalidTau(_))
        ));
    }
    let dup = [NamedParam::new("w", rm.clone())];
    assert!(matches!(Ema::new(&params, &dup, 0.9), Err(EmaError::DuplicateName(n)) if n == "w"));

    let mut frozen = Ema::new(&params, &buffers, 1.0)?;
    let mut copy = Ema::new(&params, &buffers, 0.0)?;
    w.set(&Tensor::new(&[5.0f32, 6.0], &Device::Cpu)?)?;
    rm.set(&Tensor::new(&[0.25f32, -0.75], &Device::Cpu)?)?;
    frozen.update(&params, &buffers)?;
    copy.update(&params, &buffers)?;
    assert_eq!(frozen.tensors()["w"].to_vec1::<f32>()?, [1.0, 2.0]);
    assert_eq!(copy.tensors()["w"].to_vec1::<f32>()?, [5.0, 6.0]);
    for ema in [&frozen, &copy] {
        assert_eq!(
            ema.tensors()["running_mean"].to_vec1::<f32>()?,
            [0.25, -0.75]
        );
    }

    let mut ema = Ema::new(&params, &buffers, 0.5)?;
    assert!(matches!(ema.update(&params[..1], &buffers), Err(EmaError::Missing(n)) if n == "b"));
    assert!(matches!(ema.update(&params, &[]), Err(EmaError::Missing(n)) if n == "running_mean"));
    let swapped = [NamedParam::new("running_mean", rm.clone())];
    assert!(matches!(
        ema.update(&swapped, &buffers),
        Err(EmaError::Unknown(_))
    ));
    let reshaped = [
        NamedParam::new("w", var(&[1.0, 2.0, 3.0])?),
        params[1].clone(),
    ];
    assert!(matches!(
        ema.update(&reshaped, &buffers),
        Err(EmaError::ShapeMismatch { .. })
    ));
    let twice = [params[0].clone(), params[0].clone(), params[1].clone()];
    assert!(matches!(
        ema.update(&twice, &buffers),
        Err(EmaError::DuplicateName(_))
    ));
    assert_eq!(
        ema.tensors()["w"].to_vec1::<f32>()?,
        [5.0, 6.0],
        "failed updates change nothing"
    );

    let saved: BTreeMap<String, Tensor> = ema
        .tensors()
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.copy()?)))
        .collect::<candle_core::Result<_>>()?;
    let view = ema.tensors()["w"].clone();
    ema.update(&params, &buffers)?;
    let mut extra = saved.clone();
    extra.insert(
        "head.weight".into(),
        Tensor::zeros(1, DType::F32, &Device::Cpu)?,
    );
    assert!(matches!(ema.load(&extra), Err(EmaError::Unknown(_))));
    let mut short = saved.clone();
    short.remove("b");
    assert!(matches!(ema.load(&short), Err(EmaError::Missing(_))));
    w.set(&Tensor::new(&[9.0f32, 9.0], &Device::Cpu)?)?;
    ema.update(&params, &buffers)?;
    ema.load(&saved)?;
    assert_eq!(view.to_vec1::<f32>()?, [5.0, 6.0], "load writes in place");
    assert_eq!(ema.tau(), 0.5);
    Ok(())
}

#[test]
fn schedule_validation() {
    let cosine = |total_steps, warmup_steps, min_lr| LrSchedule::Cosine {
        base_lr: 0.1,
        total_steps,
        warmup_steps,
        warmup_lr_init: 0.0,
        min_lr,
        warmup_prefix: false,
    };
    assert_eq!(cosine(100, 5, 0.0).validate(), Ok(()));
    assert_eq!(
        cosine(0, 0, 0.0).validate(),
        Err(ScheduleError::ZeroLength("total_steps"))
    );
    assert!(matches!(
        cosine(10, 10, 0.0).validate(),
        Err(ScheduleError::WarmupTooLong { .. })
    ));
    assert!(matches!(
        cosine(10, 0, -1e-5).validate(),
        Err(ScheduleError::Negative { name: "min_lr", .. })
    ));
    let step = |decay_steps, decay_rate| LrSchedule::Step {
        base_lr: 0.1,
        decay_steps,
        decay_rate,
        warmup_steps: 0,
        warmup_lr_init: 0.0,
    };
    assert_eq!(
        step(0, 0.1).validate(),
        Err(ScheduleError::ZeroLength("decay_steps"))
    );
    assert!(matches!(
        step(10, 0.0).validate(),
        Err(ScheduleError::NotPositive {
            name: "decay_rate",
            ..
        })
    ));
    assert!(matches!(
        LrSchedule::Constant { lr: f64::NAN }.validate(),
        Err(ScheduleError::NotPositive { .. })
    ));
    assert_eq!(LrSchedule::Constant { lr: 0.3 }.lr_at(12345), 0.3);
}

#[test]
fn schedule_serialization() -> TestResult {
    let parsed: LrSchedule = toml::from_str(
        "kind = \"cosine\"\nbase_lr = 0.001\ntotal_steps = 500\nwarmup_steps = 10\n",
    )?;
    assert_eq!(
        parsed,
        LrSchedule::Cosine {
            base_lr: 0.001,
            total_steps: 500,
            warmup_steps: 10,
            warmup_lr_init: 0.0,
            min_lr: 0.0,
            warmup_prefix: false
        }
    );
    let step = LrSchedule::Step {
        base_lr: 0.1,
        decay_steps: 30,
        decay_rate: 0.1,
        warmup_steps: 2,
        warmup_lr_init: 1e-3,
    };
    let json = serde_json::to_string(&step)?;
    assert!(json.contains("\"kind\":\"step\""), "{json}");
    assert_eq!(serde_json::from_str::<LrSchedule>(&json)?, step);
    assert!(toml::from_str::<LrSchedule>("kind = \"constant\"\nlr = 0.1\nlr_typo = 1\n").is_err());
    Ok(())
}

#[test]
fn an_ema_over_variables_averages_into_them() -> TestResult {
    let (teacher_w, student_w) = (var(&[1.0, 2.0])?, var(&[3.0, 6.0])?);
    let (teacher_rm, student_rm) = (var(&[0.0])?, var(&[0.5])?);
    let mut ema = Ema::over(
        &[NamedParam::new("w", teacher_w.clone())],
        &[NamedParam::new("rm", teacher_rm.clone())],
        0.75,
    )?;
    ema.update(
        &[NamedParam::new("w", student_w)],
        &[NamedParam::new("rm", student_rm)],
    )?;
    // the variables themselves hold 0.75·teacher + 0.25·student, and the copied buffer
    assert_eq!(teacher_w.as_tensor().to_vec1::<f32>()?, [1.5, 3.0]);
    assert_eq!(teacher_rm.as_tensor().to_vec1::<f32>()?, [0.5]);
    assert!(matches!(
        Ema::over(&[NamedParam::new("w", teacher_w)], &[], 2.0),
        Err(EmaError::InvalidTau(_))
    ));
    Ok(())
}
