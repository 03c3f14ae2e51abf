//! The training loss of MultiMix and dense MultiMix through the fused ops (the affine head's
//! logits mixed inside one custom op, the teacher's soft targets folded into the targets) equals
//! the composite path of mixing the embeddings, in value and in every parameter's gradient.

use candle_core::Device;
use multimix_backbones::{Model, ModelConfig};
use multimix_recipes::config::{
    DistillConfig, MixConfig, MixMethod, MixSpace, DEFAULT_ARCHITECTURE,
};
use multimix_recipes::mixing::{training_loss, StepBatch};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn model(seed: u64) -> Model {
    let cfg = ModelConfig::from_preset(DEFAULT_ARCHITECTURE, &Default::default()).unwrap();
    Model::new(&cfg, &Device::Cpu, seed).unwrap()
}

/// Logit mixing (fused) equals embedding mixing (composite) for an affine head, with and
/// without self-distillation (both teacher variants) and with the attention tracked or not.
#[test]
fn fused_training_loss_equals_embedding_mixing() {
    let (student, teacher) = (model(1), model(2));
    let mut data_rng = ChaCha8Rng::seed_from_u64(0);
    let b = 8;
    let x: Vec<f32> = (0..b * 28 * 28).map(|_| data_rng.random::<f32>()).collect();
    let x2: Vec<f32> = (0..b * 28 * 28).map(|_| data_rng.random::<f32>()).collect();
    let y: Vec<u32> = (0..b).map(|i| (i % 10) as u32).collect();
    let step = StepBatch {
        images: &x,
        shape: [b, 1, 28, 28],
        labels: &y,
        teacher_view: Some(&x2),
    };
    let distills = [(false, false), (true, false), (true, true)];
    for method in [MixMethod::Multimix, MixMethod::DenseMultimix] {
        for (enabled, teacher_mixed) in distills {
            for attn_detach in [true, false] {
                let distill = DistillConfig {
                    enabled,
                    teacher_mixed,
                    weight: 0.7,
                    ..DistillConfig::default()
                };
                let run = |space: MixSpace| {
                    let mut cfg = MixConfig {
                        method,
                        n: 50,
                        space,
                        attn_detach,
                        label_smoothing: 0.1,
                        ..MixConfig::default()
                    };
                    cfg.resolve();
                    let mut rng = ChaCha8Rng::seed_from_u64(5);
                    let loss =
                        training_loss(&student, Some(&teacher), &step, &cfg, &distill, &mut rng)
                            .unwrap();
                    let grads = loss.backward().unwrap();
                    (loss.to_scalar::<f32>().unwrap(), grads)
                };
                let ctx = format!(
                    "{method}, distill {enabled} (teacher mixed {teacher_mixed}), detach {attn_detach}"
                );
                let (fused, g_fused) = run(MixSpace::Logits);
                let (composite, g_composite) = run(MixSpace::Embeddings);
                assert!(
                    (fused - composite).abs() < 1e-5 * (1.0 + composite.abs()),
                    "{ctx}: loss {fused} vs {composite}"
                );
                for (name, var) in student.params().trainable() {
                    let (a, b) = (
                        g_fused.get(var.as_tensor()).unwrap(),
                        g_composite.get(var.as_tensor()).unwrap(),
                    );
                    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
                    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
                    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                    let diff = a
                        .iter()
                        .zip(&b)
                        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
                    assert!(
                        diff < 1e-4 * scale,
                        "{ctx}: gradient of {name} differs by {diff}"
                    );
                }
            }
        }
    }
}
