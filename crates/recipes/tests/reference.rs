//! Optimizers, clipping, schedules, EMA and parameter groups against PyTorch 2.15 / timm 1.0.31.
//! Fixtures: `tools/make_optim_fixtures.py` (see its header to re-run).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use multimix_recipes::ema::Ema;
use multimix_recipes::optim::{
    clip_grad_norm, fnmatch, param_groups_weight_decay, AdamW, AdamWConfig, NamedParam, Optimizer,
    ParamGroup, Sgd, SgdConfig,
};
use multimix_recipes::schedule::LrSchedule;
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixtures() -> &'static Value {
    static FIXTURES: OnceLock<Value> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        serde_json::from_str(include_str!("fixtures/optim.json")).expect("fixture is valid JSON")
    })
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn shape(v: &Value) -> Vec<usize> {
    floats(v).into_iter().map(|x| x as usize).collect()
}

fn tensor(data: &Value, shape: &[usize], dtype: DType) -> candle_core::Result<Tensor> {
    Tensor::from_vec(floats(data), shape, &Device::Cpu)?.to_dtype(dtype)
}

fn values(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w} (tol {tol})"
        );
    }
}

/// The parameters of a trajectory case, as fresh variables.
fn init_params(case: &Value, dtype: DType) -> candle_core::Result<BTreeMap<String, Var>> {
    let init = case["init"].as_object().expect("init object");
    init.iter()
        .map(|(name, p)| {
            let t = tensor(&p["data"], &shape(&p["shape"]), dtype)?;
            Ok((name.clone(), Var::from_tensor(&t)?))
        })
        .collect()
}

fn build_optimizer(
    case: &Value,
    vars: &BTreeMap<String, Var>,
) -> Result<Box<dyn Optimizer>, Box<dyn std::error::Error>> {
    let groups = case["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| ParamGroup {
            params: g["names"]
                .as_array()
                .expect("names")
                .iter()
                .map(|n| {
                    let n = n.as_str().expect("name");
                    NamedParam::new(n, vars[n].clone())
                })
                .collect(),
            weight_decay: g["weight_decay"].as_f64().expect("weight decay"),
        })
        .collect();
    let cfg = &case["config"];
    Ok(match case["optimizer"].as_str() {
        Some("sgd") => Box::new(Sgd::new(
            groups,
            SgdConfig {
                momentum: cfg["momentum"].as_f64().expect("momentum"),
                dampening: cfg["dampening"].as_f64().expect("dampening"),
                nesterov: cfg["nesterov"].as_bool().expect("nesterov"),
            },
        )?),
        _ => Box::new(AdamW::new(
            groups,
            AdamWConfig {
                beta1: cfg["betas"][0].as_f64().expect("beta1"),
                beta2: cfg["betas"][1].as_f64().expect("beta2"),
                eps: cfg["eps"].as_f64().expect("eps"),
            },
        )?),
    })
}

/// The gradients of one fixture step (parameters without one are left out, as `p.grad = None`).
fn step_grads(
    step: &Value,
    vars: &BTreeMap<String, Var>,
    dtype: DType,
) -> candle_core::Result<GradStore> {
    let mut grads = GradStore::default();
    for (name, g) in step["grads"].as_object().expect("grads") {
        let var = &vars[name];
        grads.insert(var.as_tensor(), tensor(g, var.dims(), dtype)?);
    }
    Ok(grads)
}

fn cases() -> &'static [Value] {
    fixtures()["trajectories"].as_array().expect("trajectories")
}

/// Runs every trajectory with parameters of `dtype` and compares with torch's float32 run.
fn check_trajectories(dtype: DType, tol: f64) -> TestResult {
    for case in cases() {
        let name = case["name"].as_str().unwrap_or_default();
        let vars = init_params(case, dtype)?;
        let mut opt = build_optimizer(case, &vars)?;
        for (i, step) in case["steps"].as_array().expect("steps").iter().enumerate() {
            let grads = step_grads(step, &vars, dtype)?;
            opt.step(&grads, step["lr"].as_f64().expect("lr"))?;
            for (p, want) in step["params"].as_object().expect("params") {
                let what = format!("{name} step {i} {p}");
                assert_close(&what, &values(&vars[p])?, &floats(want), tol);
            }
        }
        let state = opt.state()?;
        let want = case["state"].as_object().expect("state");
        let got: Vec<&String> = state.keys().collect();
        assert_eq!(got, want.keys().collect::<Vec<_>>(), "{name}: state names");
        for (k, w) in want {
            assert_close(
                &format!("{name} state {k}"),
                &values(&state[k])?,
                &floats(w),
                tol,
            );
        }
    }
    Ok(())
}

#[test]
fn trajectories_match_torch_cpu_f32() -> TestResult {
    check_trajectories(DType::F32, 1e-6)
}

#[test]
fn trajectories_match_torch_tensor_ops_f64() -> TestResult {
    check_trajectories(DType::F64, 2e-6)
}

fn bits(t: &Tensor) -> candle_core::Result<Vec<u64>> {
    Ok(match t.dtype() {
        DType::F32 => t
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|x| u64::from(x.to_bits()))
            .collect(),
        _ => t
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?
            .iter()
            .map(|x| x.to_bits())
            .collect(),
    })
}

#[test]
fn resume_from_state_is_bit_exact() -> TestResult {
    for dtype in [DType::F32, DType::F64] {
        for case in cases() {
            let name = case["name"].as_str().unwrap_or_default();
            let steps = case["steps"].as_array().expect("steps");
            for k in [1, 3, 4] {
                let vars = init_params(case, dtype)?;
                let mut straight = build_optimizer(case, &vars)?;
                let resumed_vars = init_params(case, dtype)?;
                let mut first = build_optimizer(case, &resumed_vars)?;
                for step in &steps[..k] {
                    first.step(
                        &step_grads(step, &resumed_vars, dtype)?,
                        step["lr"].as_f64().expect("lr"),
                    )?;
                }
                let saved = first.state()?;
                // Continuing the first optimizer must not change the saved copy.
                let saved_bits: Vec<_> = saved.values().map(bits).collect::<Result<_, _>>()?;
                first.step(&step_grads(&steps[k], &resumed_vars, dtype)?, 0.1)?;
                let after: Vec<_> = saved.values().map(bits).collect::<Result<_, _>>()?;
                assert_eq!(saved_bits, after, "{name}: state() must return copies");

                // A fresh optimizer on parameters restored to step k.
                let fresh_vars = init_params(case, dtype)?;
                for step in &steps[..k] {
                    straight.step(
                        &step_grads(step, &vars, dtype)?,
                        step["lr"].as_f64().expect("lr"),
                    )?;
                }
                for (n, v) in &fresh_vars {
                    v.set(&vars[n].as_tensor().copy()?)?;
                }
                let mut resumed = build_optimizer(case, &fresh_vars)?;
                resumed.load_state(&saved)?;
                for step in &steps[k..] {
                    let lr = step["lr"].as_f64().expect("lr");
                    straight.step(&step_grads(step, &vars, dtype)?, lr)?;
                    resumed.step(&step_grads(step, &fresh_vars, dtype)?, lr)?;
                }
                for (n, v) in &vars {
                    assert_eq!(
                        bits(v)?,
                        bits(&fresh_vars[n])?,
                        "{name} {dtype:?} k={k} {n}"
                    );
                }
                let (a, b) = (straight.state()?, resumed.state()?);
                assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
                for (key, t) in &a {
                    assert_eq!(
                        bits(t)?,
                        bits(&b[key])?,
                        "{name} {dtype:?} k={k} state {key}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn clip_grad_norm_matches_torch() -> TestResult {
    for dtype in [DType::F32, DType::F64] {
        for case in fixtures()["clip"].as_array().expect("clip cases") {
            let max_norm = case["max_norm"].as_f64().expect("max_norm");
            let mut vars = Vec::new();
            let mut grads = GradStore::default();
            for (name, g) in case["grads"].as_object().expect("grads") {
                let dims = shape(&case["shapes"][name]);
                let var = Var::zeros(dims.as_slice(), dtype, &Device::Cpu)?;
                grads.insert(var.as_tensor(), tensor(g, &dims, dtype)?);
                vars.push((name.clone(), var));
            }
            let params: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
            let total = clip_grad_norm(&mut grads, &params, max_norm)?;
            let want = case["total_norm"].as_f64().expect("total norm");
            assert_close(&format!("norm max={max_norm}"), &[total], &[want], 1e-6);
            for (name, var) in &vars {
                let got = values(grads.get(var.as_tensor()).expect("grad kept"))?;
                let what = format!("clipped {name} max={max_norm} {dtype:?}");
                assert_close(&what, &got, &floats(&case["clipped"][name]), 1e-6);
            }
        }
    }
    Ok(())
}

fn schedule_of(case: &Value) -> LrSchedule {
    let k = &case["kwargs"];
    let base_lr = case["base_lr"].as_f64().expect("base lr");
    let int = |key: &str| k[key].as_u64().expect("integer") as usize;
    let float = |key: &str| k[key].as_f64().expect("float");
    match case["kind"].as_str() {
        Some("cosine") => LrSchedule::Cosine {
            base_lr,
            total_steps: int("t_initial"),
            warmup_steps: int("warmup_t"),
            warmup_lr_init: float("warmup_lr_init"),
            min_lr: float("lr_min"),
            warmup_prefix: k["warmup_prefix"].as_bool().expect("bool"),
        },
        _ => LrSchedule::Step {
            base_lr,
            decay_steps: int("decay_t"),
            decay_rate: float("decay_rate"),
            warmup_steps: int("warmup_t"),
            warmup_lr_init: float("warmup_lr_init"),
        },
    }
}

#[test]
fn schedules_match_timm() -> TestResult {
    for case in fixtures()["schedules"].as_array().expect("schedules") {
        let schedule = schedule_of(case);
        schedule.validate()?;
        let want: Vec<f64> = case["lrs"]
            .as_array()
            .expect("lrs")
            .iter()
            .map(|v| v.as_str().expect("repr string").parse())
            .collect::<Result<_, _>>()?;
        for (t, want) in want.iter().enumerate() {
            assert_eq!(schedule.lr_at(t), *want, "{schedule:?} at {t}");
        }
    }
    Ok(())
}

#[test]
fn ema_matches_timm_model_ema_v3() -> TestResult {
    for case in fixtures()["ema"].as_array().expect("ema cases") {
        let tau = case["tau"].as_f64().expect("tau");
        let shapes = case["shapes"].as_object().expect("shapes");
        let buffer_names: Vec<&str> = case["buffers"]
            .as_array()
            .expect("buffers")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for dtype in [DType::F32, DType::F64] {
            let (mut params, mut buffers) = (Vec::new(), Vec::new());
            for (name, s) in shapes {
                let t = tensor(&case["init"][name], &shape(s), dtype)?;
                let p = NamedParam::new(name, Var::from_tensor(&t)?);
                if buffer_names.contains(&name.as_str()) {
                    buffers.push(p);
                } else {
                    params.push(p);
                }
            }
            let mut ema = Ema::new(&params, &buffers, tau)?;
            let clone = ema.tensors()[&params[0].name].clone();
            for (i, step) in case["steps"].as_array().expect("steps").iter().enumerate() {
                for p in params.iter().chain(&buffers) {
                    p.var
                        .set(&tensor(&step["student"][&p.name], p.var.dims(), dtype)?)?;
                }
                ema.update(&params, &buffers)?;
                for (name, want) in step["teacher"].as_object().expect("teacher") {
                    let what = format!("tau={tau} {dtype:?} step {i} {name}");
                    assert_close(&what, &values(&ema.tensors()[name])?, &floats(want), 1e-6);
                }
            }
            // The teacher is updated in place: an earlier clone follows it.
            assert_eq!(bits(&clone)?, bits(&ema.tensors()[&params[0].name])?);
            assert!(!ema.tensors()[&params[0].name].is_variable());
        }
    }
    Ok(())
}

#[test]
fn param_groups_match_timm() -> TestResult {
    let pg = &fixtures()["param_groups"];
    let shapes = pg["params"].as_array().expect("params");
    for case in pg["cases"].as_array().expect("cases") {
        let params: Vec<NamedParam> = shapes
            .iter()
            .map(|p| {
                let name = p[0].as_str().unwrap_or_default();
                Ok(NamedParam::new(
                    name,
                    Var::zeros(shape(&p[1]), DType::F32, &Device::Cpu)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        let wd = case["weight_decay"].as_f64().expect("wd");
        let no_decay: Vec<&str> = case["no_decay"]
            .as_array()
            .expect("no decay")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let groups = param_groups_weight_decay(params, wd, &no_decay);
        let got: Vec<(Vec<&str>, f64)> = groups
            .iter()
            .map(|g| {
                (
                    g.params.iter().map(|p| p.name.as_str()).collect(),
                    g.weight_decay,
                )
            })
            .collect();
        let want: Vec<(Vec<&str>, f64)> = case["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .map(|g| {
                let names = g["names"].as_array().expect("names");
                let names = names.iter().filter_map(Value::as_str).collect();
                (names, g["weight_decay"].as_f64().expect("wd"))
            })
            .collect();
        assert_eq!(got, want, "wd={wd} no_decay={no_decay:?}");
    }
    Ok(())
}

#[test]
fn fnmatch_matches_python() {
    for m in fixtures()["param_groups"]["fnmatch"]
        .as_array()
        .expect("fnmatch cases")
    {
        let (pattern, name) = (
            m["pattern"].as_str().unwrap_or_default(),
            m["name"].as_str().unwrap_or_default(),
        );
        assert_eq!(
            fnmatch(name, pattern),
            m["matches"].as_bool().expect("bool"),
            "{pattern:?} on {name:?}"
        );
    }
}
