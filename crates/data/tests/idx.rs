//! The IDX reader: the embedded Fashion-MNIST subset against foolbox's PNGs of the same test
//! images, IDX folders written here (gzipped or not), and corrupt files.

use flate2::write::GzEncoder;
use multimix_data::idx::parse_idx;
use multimix_data::DataSpec;
use std::fs;
use std::io::Write;
use std::path::Path;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[test]
fn embedded_fashion_mnist_starts_with_the_real_test_images() {
    let splits = DataSpec::FashionMnistMini.load().unwrap();
    let (train, test) = (splits.train.unwrap(), splits.test);
    assert_eq!((train.len(), test.len()), (10_000, 2_000));
    for (ds, per) in [(&train, 1000), (&test, 200)] {
        for c in 0..10 {
            assert_eq!(ds.labels.iter().filter(|&&y| y == c).count(), per);
        }
    }
    assert_eq!(test.class_names[9], "Ankle boot");
    // The subset keeps file order, so its first 20 test images are the set's first 20, which
    // foolbox ships as PNGs (decoded here by the `image` crate, not by the IDX reader).
    let mut checked = 0;
    for entry in fs::read_dir(Path::new(FIXTURES).join("foolbox")).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let Some(rest) = stem.strip_prefix("fashionMNIST_") else {
            continue;
        };
        let (index, label) = rest.split_once('_').unwrap();
        let (i, label): (usize, u32) = (index.parse().unwrap(), label.parse().unwrap());
        let png = image::open(&path).unwrap().to_luma8().into_raw();
        assert_eq!(test.image(i), png.as_slice(), "{stem}");
        assert_eq!(test.labels[i], label, "{stem}");
        checked += 1;
    }
    assert_eq!(checked, 20);
}

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn idx_folder_gzipped_or_not() {
    let tmp = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..3 * 2 * 4).map(|v| v as u8).collect();
    let d = tmp.path();
    fs::write(
        d.join("t10k-images-idx3-ubyte"),
        idx_bytes(&[3, 2, 4], &pixels),
    )
    .unwrap();
    fs::write(
        d.join("t10k-labels-idx1-ubyte.gz"),
        gzip(&idx_bytes(&[3], &[4, 0, 2])),
    )
    .unwrap();
    let splits: multimix_data::Splits = format!("idx:{}", d.display())
        .parse::<DataSpec>()
        .unwrap()
        .load()
        .unwrap();
    assert!(splits.train.is_none());
    let t = splits.test;
    assert_eq!(
        (t.len(), t.channels, t.height, t.width, t.num_classes),
        (3, 1, 2, 4, 5)
    );
    assert_eq!(t.image(2), &pixels[16..]);
    assert_eq!(t.labels, [4, 0, 2]);
}

#[test]
fn corrupt_idx_files_are_clear_errors() {
    let p = Path::new("t10k-images-idx3-ubyte");
    let err = |bytes: &[u8]| parse_idx(bytes, p).unwrap_err().to_string();
    let good = idx_bytes(&[2, 2, 2], &[0; 8]);
    let e = err(&good[..good.len() - 3]);
    assert!(
        e.contains("t10k-images-idx3-ubyte") && e.contains("need 8 bytes") && e.contains("has 5"),
        "{e}"
    );
    assert!(err(b"PK\x03\x04zip").contains("bad magic"));
    let mut float = good.clone();
    float[2] = 0x0d;
    assert!(err(&float).contains("type code 0x0d"));
    assert!(err(&[0, 0, 8, 3, 0, 0]).contains("header for 3 dims is truncated"));
    let gz = gzip(&good);
    assert!(err(&gz[..gz.len() / 2]).contains("corrupt gzip"));
    assert_eq!(parse_idx(&gz, p).unwrap().dims, [2, 2, 2]);
    // A folder without the test split names the files it needs.
    let tmp = tempfile::tempdir().unwrap();
    let e = format!("idx:{}", tmp.path().display())
        .parse::<DataSpec>()
        .unwrap()
        .load()
        .unwrap_err()
        .to_string();
    assert!(e.contains("t10k-images-idx3-ubyte"), "{e}");
}
