//! Input mixup and CutMix against timm 1.0.31's `Mixup` (fixtures from
//! `tools/make_mixup_fixtures.py`: timm's own code with its random draws replaced by fixed
//! values), and the properties of the sampler.

use candle_core::{Device, Tensor};
use multimix_augment::mixup::{bbox_at, check_batch, corrected_lam};
use multimix_augment::{ElemMix, MixMode, MixPlan, Mixup, Pairing};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

fn fixtures() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mixup.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-6, "{what}[{i}]: got {g}, timm {w}");
    }
}

/// The plan timm followed for a case: flip partners; the fixed λ and CutMix flags per draw
/// (one for `batch`, the first half for `pair`, every element for `elem`); boxes from the fixed
/// centers, consumed in order by the draws that paste.
fn plan_of(f: &HashMap<String, Tensor>, case: &str, mode: MixMode) -> MixPlan {
    let x = &f[&format!("{case}.x")];
    let (b, _, h, w) = x.dims4().unwrap();
    let lam = f[&format!("{case}.lam")].to_vec1::<f64>().unwrap();
    let cut = f[&format!("{case}.cutmix")].to_vec1::<u8>().unwrap();
    let cy = ints(&f[&format!("{case}.cy")]);
    let cx = ints(&f[&format!("{case}.cx")]);
    let correct = f[&format!("{case}.correct_lam")].to_vec1::<u8>().unwrap()[0] == 1;
    let mut centers = cy.iter().zip(&cx);
    let draws: Vec<(f64, ElemMix)> = lam
        .iter()
        .zip(&cut)
        .map(|(&l, &c)| {
            if c == 1 && l != 1.0 {
                let (&y, &x) = centers.next().unwrap();
                let bb = bbox_at(h, w, l, y as usize, x as usize);
                let l = if correct { corrected_lam(h, w, &bb) } else { l };
                (l, ElemMix::Paste(bb))
            } else {
                (l, ElemMix::Blend)
            }
        })
        .collect();
    let partner: Vec<usize> = (0..b).rev().collect();
    match mode {
        MixMode::Batch => MixPlan::uniform(partner, draws[0].0, draws[0].1),
        MixMode::Elem => MixPlan {
            partner,
            lam: draws.iter().map(|d| d.0).collect(),
            op: draws.iter().map(|d| d.1).collect(),
        },
        MixMode::Pair => {
            let mut all = draws.clone();
            all.extend(draws.iter().rev());
            MixPlan {
                partner,
                lam: all.iter().map(|d| d.0).collect(),
                op: all.iter().map(|d| d.1).collect(),
            }
        }
    }
}

#[test]
fn images_and_targets_equal_timm() {
    let f = fixtures();
    for (case, mode) in [
        ("batch_mixup", MixMode::Batch),
        ("batch_cutmix", MixMode::Batch),
        ("batch_cutmix_edge_uncorrected", MixMode::Batch),
        ("elem_switch", MixMode::Elem),
        ("pair_switch", MixMode::Pair),
    ] {
        let x = &f[&format!("{case}.x")];
        let (b, c, h, w) = x.dims4().unwrap();
        let labels: Vec<u32> = ints(&f[&format!("{case}.target")])
            .iter()
            .map(|&v| v as u32)
            .collect();
        let out_y = &f[&format!("{case}.out_y")];
        let classes = out_y.dim(1).unwrap();
        let smoothing = f[&format!("{case}.smoothing")].to_vec1::<f64>().unwrap()[0];
        let plan = plan_of(&f, case, mode);
        let images = plan.apply(&f32s(x), [b, c, h, w]).unwrap();
        assert_close(
            &format!("{case} images"),
            &images,
            &f32s(&f[&format!("{case}.out_x")]),
        );
        let targets = plan.targets(&labels, classes, smoothing).unwrap();
        assert_close(&format!("{case} targets"), &targets, &f32s(out_y));
    }
}

#[test]
fn boxes_equal_timm_rand_bbox() {
    let f = fixtures();
    let cases = f["bbox.cases"].to_vec2::<i64>().unwrap();
    for (k, row) in cases.iter().enumerate() {
        let v: Vec<usize> = row.iter().map(|&x| x as usize).collect();
        let lam = f[&format!("bbox.lam{k}")].to_vec1::<f64>().unwrap()[0];
        let bb = bbox_at(v[0], v[1], lam, v[2], v[3]);
        assert_eq!(
            [bb.y0, bb.y1, bb.x0, bb.x1],
            [v[4], v[5], v[6], v[7]],
            "case {k}: h, w, cy, cx = {:?}, λ = {lam}",
            &v[..4]
        );
    }
}

/// Sampled plans are self-consistent: λ in [0, 1], `correct_lam` makes λ the share of the
/// image left, pairs share λ and box, `prob = 0` never mixes, the same seed gives the same plan.
#[test]
fn sampled_plans_are_consistent_and_seeded() {
    let (b, h, w) = (8, 12, 10);
    let cfg = Mixup {
        mixup_alpha: 0.8,
        cutmix_alpha: 1.0,
        label_smoothing: 0.0,
        mode: MixMode::Pair,
        ..Mixup::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut pasted = 0;
    for _ in 0..200 {
        let plan = cfg.sample(b, h, w, &mut rng).unwrap();
        for i in 0..b {
            let j = plan.partner[i];
            assert_eq!(plan.partner[j], i, "pairs are mutual");
            assert_eq!((plan.lam[i], plan.op[i]), (plan.lam[j], plan.op[j]));
            assert!((0.0..=1.0).contains(&plan.lam[i]));
            if let ElemMix::Paste(bb) = plan.op[i] {
                pasted += 1;
                assert!((plan.lam[i] - corrected_lam(h, w, &bb)).abs() < 1e-12);
            }
        }
    }
    assert!(pasted > 0, "switch_prob 0.5 never chose CutMix");
    let again = |seed| {
        cfg.sample(b, h, w, &mut ChaCha8Rng::seed_from_u64(seed))
            .unwrap()
    };
    assert_eq!(again(9), again(9));
    let never = Mixup { prob: 0.0, ..cfg };
    let plan = never.sample(b, h, w, &mut rng).unwrap();
    assert!(plan.lam.iter().all(|&l| l == 1.0));

    let minmax = Mixup {
        mixup_alpha: 0.0,
        cutmix_minmax: Some((0.2, 0.6)),
        mode: MixMode::Elem,
        pairing: Pairing::Random,
        ..cfg
    };
    for _ in 0..50 {
        let plan = minmax.sample(b, h, w, &mut rng).unwrap();
        for op in plan.op {
            let ElemMix::Paste(bb) = op else {
                panic!("minmax boxes always paste")
            };
            // Sides in [⌊0.2·side⌋, ⌊0.6·side⌋) as timm draws them: [2, 7) of 12, [2, 6) of 10.
            assert!((2..7).contains(&(bb.y1 - bb.y0)), "{bb:?}");
            assert!((2..6).contains(&(bb.x1 - bb.x0)), "{bb:?}");
        }
    }
}

#[test]
fn out_of_range_options_are_named() {
    let bad = |m: Mixup, b: usize| {
        m.sample(b, 8, 8, &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap_err()
            .to_string()
    };
    let base = Mixup::default();
    assert!(bad(
        Mixup {
            mixup_alpha: -1.0,
            ..base
        },
        4
    )
    .contains("mix-alpha"));
    assert!(bad(Mixup { prob: 1.5, ..base }, 4).contains("mix-prob"));
    assert!(bad(
        Mixup {
            switch_prob: -0.1,
            ..base
        },
        4
    )
    .contains("switch-prob"));
    assert!(bad(base, 5).contains("batch-size = 5"));
    assert!(check_batch(5, Pairing::Random, MixMode::Elem).is_ok());
    assert!(check_batch(5, Pairing::Random, MixMode::Pair).is_err());
}
