//! `multimix mixviz` writes the grid of mixed inputs (and attention maps, with a checkpoint).

mod common;

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20))
}

#[test]
fn grid_of_inputs_and_of_attention_maps() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.png");
    let out = common::multimix(&["mixviz", "--out", plain.to_str().unwrap(), "--count", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (w4, h4) = png_size(&std::fs::read(&plain).unwrap());

    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, common::TINY_CONFIG).unwrap();
    let run = dir.path().join("run");
    let out = common::multimix(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let with_attn = dir.path().join("attn.png");
    let out = common::multimix(&[
        "mixviz",
        "--out",
        with_attn.to_str().unwrap(),
        "--count",
        "8",
        "--checkpoint",
        run.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (w8, h8) = png_size(&std::fs::read(&with_attn).unwrap());
    assert!(w8 > w4, "8 columns are wider than 4");
    // One more row (the attention maps) with the checkpoint: rows are evenly spaced.
    let row = (h8 - h4) as f64;
    assert!(
        row > 28.0 * 3.0,
        "the attention row adds a row of tiles ({row} px)"
    );

    let bad = common::multimix(&["mixviz", "--out", plain.to_str().unwrap(), "--count", "3"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--count 3"));
}
