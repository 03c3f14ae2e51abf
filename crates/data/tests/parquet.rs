//! The parquet reader against the fixtures of `tools/make_parquet_fixtures.py`: HF `datasets`'
//! own files (Image struct, ClassLabel, shards, row groups) and pyarrow's in every codec, pixels
//! as PIL decodes them, and the errors on files that are not image sets or that no decoder reads.

use multimix_data::parquet::{read_parquet_split, SplitLayout};
use multimix_data::DataSpec;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parquet")
        .join(name)
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("hf/expected.json")).unwrap()).unwrap()
}

fn labels(v: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn read(files: &[&str]) -> multimix_data::error::Result<multimix_data::Dataset> {
    let files: Vec<PathBuf> = files.iter().map(|f| fixture(f)).collect();
    read_parquet_split(&files, "t".into(), &SplitLayout::default())
}

#[test]
fn hf_datasets_shards_read_as_pil_decodes_them() {
    let exp = expected();
    let train = read(&[
        "hf/data/train-00000-of-00002.parquet",
        "hf/data/train-00001-of-00002.parquet",
    ])
    .unwrap();
    assert_eq!((train.channels, train.height, train.width), (1, 28, 28));
    assert_eq!(train.labels, labels(&exp["train"]));
    assert_eq!(train.images, std::fs::read(fixture("hf/train.u8")).unwrap());
    let classes: Vec<String> = serde_json::from_value(exp["classes"].clone()).unwrap();
    assert_eq!(
        train.class_names, classes,
        "ClassLabel names from the metadata"
    );
    let test = read(&["hf/data/test-00000-of-00001.parquet"]).unwrap();
    assert_eq!(test.labels, labels(&exp["test"]));
    assert_eq!(test.images, std::fs::read(fixture("hf/test.u8")).unwrap());
}

#[test]
fn plain_binary_column_rgb_and_unsigned_labels() {
    let ds = read(&["plain_rgb.parquet"]).unwrap();
    assert_eq!((ds.channels, ds.height, ds.width), (3, 28, 28));
    assert_eq!(ds.labels, vec![4, 0, 2, 4, 1]);
    // No ClassLabel: the classes are the label values 0..=max.
    assert_eq!(ds.class_names, ["0", "1", "2", "3", "4"]);
    assert_eq!(ds.images, std::fs::read(fixture("plain_rgb.u8")).unwrap());
}

/// The same table written by pyarrow in every other codec reads the same.
#[test]
fn every_codec_pyarrow_writes_reads_the_same() {
    let pixels = std::fs::read(fixture("plain_rgb.u8")).unwrap();
    for codec in ["zstd", "brotli", "gzip", "lz4"] {
        let ds = read(&[&format!("plain_rgb_{codec}.parquet")]).unwrap();
        assert_eq!(ds.labels, vec![4, 0, 2, 4, 1], "{codec}");
        assert!(ds.images == pixels, "{codec}: pixels differ");
    }
}

#[test]
fn jpeg_images_match_pil_within_decoder_rounding() {
    let ds = read(&["jpeg.parquet"]).unwrap();
    assert_eq!((ds.len(), ds.channels), (2, 3));
    assert_eq!(ds.labels, vec![1, 0]);
    let pil = std::fs::read(fixture("jpeg.u8")).unwrap();
    let diffs: Vec<i32> = ds
        .images
        .iter()
        .zip(&pil)
        .map(|(&a, &b)| (a as i32 - b as i32).abs())
        .collect();
    let max = diffs.iter().max().unwrap();
    let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
    // libjpeg (PIL) and the Rust decoder differ in IDCT and upsampling rounding only.
    assert!(*max <= 8 && mean < 1.5, "max {max}, mean {mean}");
}

#[test]
fn test_split_takes_the_training_layout() {
    let layout = SplitLayout {
        classes: Some(&["a".into(), "b".into(), "c".into(), "d".into()]),
        channels: Some(3),
        size: Some((14, 14)),
    };
    let files = [fixture("hf/data/test-00000-of-00001.parquet")];
    let ds = read_parquet_split(&files, "t".into(), &layout).unwrap();
    assert_eq!(
        (ds.channels, ds.height, ds.width, ds.num_classes),
        (3, 14, 14, 4)
    );
    assert_eq!(ds.class_names, ["a", "b", "c", "d"]);
}

fn error_of(files: &[&str]) -> String {
    read(files).unwrap_err().to_string()
}

#[test]
fn a_file_without_an_image_column_names_the_columns_present() {
    let err = error_of(&["no_image.parquet"]);
    assert!(err.contains("no_image.parquet"), "{err}");
    assert!(err.contains("no image column"), "{err}");
    assert!(err.contains("image or img"), "{err}");
    assert!(err.contains("text, label"), "{err}");
}

#[test]
fn a_file_without_a_label_column_says_so() {
    let err = error_of(&["no_label.parquet"]);
    assert!(err.contains("no_label.parquet"), "{err}");
    assert!(err.contains("no label column"), "{err}");
    assert!(err.contains("image, idx"), "{err}");
}

#[test]
fn undecodable_image_bytes_name_file_and_row() {
    let err = error_of(&["bad_image.parquet"]);
    assert!(err.contains("bad_image.parquet"), "{err}");
    assert!(err.contains("row 2"), "{err}");
    assert!(err.contains("not a readable PNG or JPEG"), "{err}");
}

#[test]
fn a_codec_without_a_decoder_names_the_ones_that_work() {
    let err = error_of(&["lzo.parquet"]);
    assert!(err.contains("lzo.parquet"), "{err}");
    assert!(err.contains("LZO"), "{err}");
    assert!(err.contains("snappy, zstd, gzip, brotli and lz4"), "{err}");
}

#[test]
fn truncated_and_corrupt_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("hf/data/test-00000-of-00001.parquet")).unwrap();
    let truncated = dir.path().join("truncated.parquet");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = dir.path().join("garbage.parquet");
    std::fs::write(&garbage, b"PAR1 this is not a parquet file PAR1").unwrap();
    // A flipped byte in the middle of the data pages, footer intact.
    let mut flipped = bytes.clone();
    for b in &mut flipped[200..1200] {
        *b ^= 0x5a;
    }
    let damaged = dir.path().join("damaged.parquet");
    std::fs::write(&damaged, &flipped).unwrap();
    for path in [&truncated, &garbage, &damaged] {
        let err = read_parquet_split(
            std::slice::from_ref(path),
            "t".into(),
            &SplitLayout::default(),
        )
        .unwrap_err()
        .to_string();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(name), "{err}");
    }
    let err = read_parquet_split(
        &[dir.path().join("missing.parquet")],
        "t".into(),
        &SplitLayout::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing.parquet"), "{err}");
}

#[test]
fn hub_specs_parse_and_print() {
    for s in [
        "hub:owner/name",
        "hub:owner/name@v1.0",
        "hub:owner/name/plain_text",
        "hub:o/n/cfg@refs/convert/parquet",
    ] {
        assert_eq!(s.parse::<DataSpec>().unwrap().to_string(), s);
    }
    assert_eq!(
        "hub:a/b/c@d".parse::<DataSpec>().unwrap(),
        DataSpec::Hub {
            repo: "a/b".into(),
            config: Some("c".into()),
            revision: Some("d".into()),
        }
    );
    for bad in [
        "hub:",
        "hub:noslash",
        "hub:a/b@",
        "hub:a/-b",
        "hub:a/b/",
        "hub:a/b/c/d",
    ] {
        let err = bad.parse::<DataSpec>().unwrap_err().to_string();
        assert!(err.contains("hub:owner/name"), "{bad}: {err}");
    }
}
