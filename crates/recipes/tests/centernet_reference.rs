//! CenterNet pieces against PyTorch 2.15 / torchvision 0.29 (fixtures from
//! `tools/make_centernet_fixtures.py`): focal loss and its gradient, class-wise NMS, 3×3 peak
//! picking, bilinear position-embedding resampling.

use candle_core::{Device, Tensor, Var};
use multimix_recipes::detection::{focal_loss, nms_classwise, peaks_3x3, Decoded};
use serde_json::Value;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/centernet.json")).expect("valid fixture JSON")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn focal_loss_and_gradient_equal_torch() {
    let f = &fixture()["focal"];
    let shape: Vec<usize> = f["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let dev = Device::Cpu;
    let logits =
        Var::from_tensor(&Tensor::from_vec(floats(&f["logits"]), shape.as_slice(), &dev).unwrap())
            .unwrap();
    let target = Tensor::from_vec(floats(&f["target"]), shape.as_slice(), &dev).unwrap();
    let loss = focal_loss(logits.as_tensor(), &target).unwrap();
    let got = loss.to_scalar::<f64>().unwrap();
    let want = f["loss"].as_f64().unwrap();
    assert!(
        (got - want).abs() < 1e-9 * want.abs().max(1.0),
        "{got} vs torch {want}"
    );
    let grads = loss.backward().unwrap();
    let g: Vec<f64> = grads
        .get(&logits)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (i, (a, b)) in g.iter().zip(floats(&f["grad"])).enumerate() {
        assert!((a - b).abs() < 1e-9, "grad[{i}]: {a} vs torch {b}");
    }
}

#[test]
fn classwise_nms_equals_torchvision_batched_nms() {
    let f = &fixture()["nms"];
    let scores = floats(&f["scores"]);
    let dets: Vec<Decoded> = f["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(f["classes"].as_array().unwrap())
        .zip(&scores)
        .map(|((b, c), s)| {
            let b = floats(b);
            Decoded {
                class: c.as_u64().unwrap() as usize,
                bbox: [b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32],
                score: *s as f32,
            }
        })
        .collect();
    let want: Vec<usize> = f["keep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let got = nms_classwise(&dets, f["threshold"].as_f64().unwrap() as f32);
    assert!(want.len() < dets.len(), "the fixture suppresses something");
    assert_eq!(got, want);
}

#[test]
fn peaks_equal_torch_max_pool() {
    let f = &fixture()["peaks"];
    let heat: Vec<f32> = floats(&f["heat"]).into_iter().map(|v| v as f32).collect();
    let mut got: Vec<[usize; 3]> = peaks_3x3(&heat, (5, 6), 2)
        .into_iter()
        .map(|(_, cell, c)| [c, cell / 6, cell % 6])
        .collect();
    got.sort();
    let want: Vec<[usize; 3]> = f["peaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let p = floats(p);
            [p[0] as usize, p[1] as usize, p[2] as usize]
        })
        .collect();
    assert_eq!(got, want);
}
