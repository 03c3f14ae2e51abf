//! Soft cross-entropy and dense MultiMix on tiny tensors, against values worked out by hand.

use candle_core::{Device, Tensor};
use multimix_augment::dense::{attention, dense_weights, gap_query, mix_dense, mix_dense_targets};
use multimix_augment::loss::soft_cross_entropy;
use multimix_augment::AttnNorm;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

/// H(Y, L) = -mean_rows Σ_c Y log softmax(L). Row 1: logits (0, ln 3) give softmax (1/4, 3/4);
/// target (1, 0) costs ln 4. Row 2: logits (0, 0), target (1/2, 1/2) costs ln 2.
#[test]
fn soft_cross_entropy_by_hand() {
    let dev = Device::Cpu;
    let logits = Tensor::new(&[[0f32, 3f32.ln()], [0.0, 0.0]], &dev).unwrap();
    let targets = Tensor::new(&[[1f32, 0.0], [0.5, 0.5]], &dev).unwrap();
    let loss = soft_cross_entropy(&logits, &targets)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let want = (4f64.ln() + 2f64.ln()) / 2.0;
    assert!(close(loss as f64, want, 1e-6), "{loss} vs {want}");
}

/// Two examples, two positions, uniform attention: ξ̂_kij = λ_ki (positions share the weights),
/// so mixed logits are Λ L at each position and targets Λ Y.
#[test]
fn dense_multimix_uniform_attention_by_hand() {
    let dev = Device::Cpu;
    let lambda = Tensor::new(&[[0.25f32, 0.75]], &dev).unwrap(); // n = 1, b = 2
    let attn = Tensor::ones((2, 2), candle_core::DType::F32, &dev).unwrap(); // b = 2, r = 2
    let xi = dense_weights(&lambda, &attn).unwrap(); // [r, n, b]
    let xi = xi.to_vec3::<f32>().unwrap();
    for pos in &xi {
        assert!(
            close(pos[0][0] as f64, 0.25, 1e-6) && close(pos[0][1] as f64, 0.75, 1e-6),
            "{xi:?}"
        );
    }
    // Per-position logits [b, r, c]: example 0 = ((1, 0), (2, 0)), example 1 = ((0, 4), (0, 8)).
    let logits = Tensor::new(&[[[1f32, 0.0], [2.0, 0.0]], [[0.0, 4.0], [0.0, 8.0]]], &dev).unwrap();
    let xi_t = dense_weights(&lambda, &attn).unwrap();
    let mixed = mix_dense(&xi_t, &logits).unwrap().to_vec3::<f32>().unwrap(); // [r, n, c]
    assert_eq!(mixed.len(), 2);
    let want = [[0.25f32, 3.0], [0.5, 6.0]]; // position 0: .25·(1,0)+.75·(0,4); position 1: .25·(2,0)+.75·(0,8)
    for (pos, w) in mixed.iter().zip(want) {
        assert!(
            close(pos[0][0] as f64, w[0] as f64, 1e-6)
                && close(pos[0][1] as f64, w[1] as f64, 1e-6),
            "{mixed:?}"
        );
    }
    let targets = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
    let mixed_t = mix_dense_targets(&xi_t, &targets)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    for pos in &mixed_t {
        assert!(
            close(pos[0][0] as f64, 0.25, 1e-6) && close(pos[0][1] as f64, 0.75, 1e-6),
            "{mixed_t:?}"
        );
    }
}

/// Attention weights change the mix per position: with a = ((1, 3), (1, 1)) and λ = (1/2, 1/2),
/// position 0 has ξ = (1/2, 1/2)·(1, 1) → (1/2, 1/2) and position 1 has (3/2, 1/2)/2 → (3/4, 1/4).
#[test]
fn dense_weights_follow_attention_by_hand() {
    let dev = Device::Cpu;
    let lambda = Tensor::new(&[[0.5f32, 0.5]], &dev).unwrap();
    let attn = Tensor::new(&[[1f32, 3.0], [1.0, 1.0]], &dev).unwrap();
    let xi = dense_weights(&lambda, &attn)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let want = [[0.5f32, 0.5], [0.75, 0.25]];
    for (pos, w) in xi.iter().zip(want) {
        assert!(
            close(pos[0][0] as f64, w[0] as f64, 1e-6)
                && close(pos[0][1] as f64, w[1] as f64, 1e-6),
            "{xi:?}"
        );
    }
}

/// Softmax attention with the gap query: Z = ((1, 0), (0, 0)) for one example gives the query
/// (1/2, 0), scores (1/2, 0) and attention (e^½, 1)/(e^½ + 1).
#[test]
fn gap_softmax_attention_by_hand() {
    let dev = Device::Cpu;
    let z = Tensor::new(&[[[1f32, 0.0], [0.0, 0.0]]], &dev).unwrap(); // [b=1, r=2, d=2]
    let a = attention(&z, Some(&gap_query(&z).unwrap()), AttnNorm::Softmax)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let e = 0.5f64.exp();
    assert!(
        close(a[0][0] as f64, e / (e + 1.0), 1e-6) && close(a[0][1] as f64, 1.0 / (e + 1.0), 1e-6),
        "{a:?}"
    );
    let a = attention(&z, Some(&gap_query(&z).unwrap()), AttnNorm::ReluL1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert!(close(a[0][0] as f64, 1.0, 1e-6) && a[0][1] == 0.0, "{a:?}");
}
