//! Readers on real CIFAR test images (foolbox's fixtures, checked against PIL's decoding), CIFAR
//! binary files written from them, image folders, and bad input.

use multimix_data::cifar::CIFAR10_CLASSES;
use multimix_data::{conform, DataSpec, Dataset};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The fixture PNGs of one release (`cifar10_` or `cifar100_`), sorted, with their labels.
fn fixture_pngs(prefix: &str) -> Vec<(PathBuf, u32)> {
    let mut out: Vec<(PathBuf, u32)> = fs::read_dir(Path::new(FIXTURES).join("foolbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with(prefix) && n.ends_with(".png")
        })
        .map(|p| {
            let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
            let label = stem.rsplit('_').next().unwrap().parse().unwrap();
            (p, label)
        })
        .collect();
    out.sort();
    assert_eq!(out.len(), 20, "{prefix}");
    out
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_str().unwrap().to_string()
}

/// An image folder `root/<class>/<file>` of the CIFAR-10 fixtures.
fn cifar10_folder(root: &Path) {
    for (png, label) in fixture_pngs("cifar10_") {
        let dir = root.join(CIFAR10_CLASSES[label as usize]);
        fs::create_dir_all(&dir).unwrap();
        fs::copy(&png, dir.join(name(&png))).unwrap();
    }
}

/// PIL's checksums of a decoded image (`decoded` in the transforms fixture).
fn checksums(img: &[u8]) -> (i64, i64) {
    let sum = img.iter().map(|&v| v as i64).sum();
    let weighted = img
        .iter()
        .enumerate()
        .map(|(i, &v)| i as i64 * v as i64)
        .sum();
    (sum, weighted)
}

fn pil_checksums() -> Value {
    let doc: Value = serde_json::from_str(
        &fs::read_to_string(Path::new(FIXTURES).join("transforms.json")).unwrap(),
    )
    .unwrap();
    doc["decoded"].clone()
}

fn load(spec: &str) -> multimix_data::Splits {
    spec.parse::<DataSpec>().unwrap().load().unwrap()
}

#[test]
fn image_folder_of_real_cifar_images_matches_pil() {
    let tmp = tempfile::tempdir().unwrap();
    cifar10_folder(tmp.path());
    let splits = load(&format!("folder:{}", tmp.path().display()));
    assert!(
        splits.train.is_none(),
        "a plain class folder is a test split"
    );
    let ds = splits.test;
    // Classes present in the 20 images, sorted (bird and deer have none).
    let present = [
        "airplane",
        "automobile",
        "cat",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ];
    assert_eq!(ds.class_names, present);
    assert_eq!(
        (ds.len(), ds.channels, ds.height, ds.width),
        (20, 3, 32, 32)
    );
    // Files are read class by class, each class in file-name order.
    let mut expected: Vec<(usize, PathBuf)> = fixture_pngs("cifar10_")
        .into_iter()
        .map(|(p, l)| {
            let class = CIFAR10_CLASSES[l as usize];
            (present.iter().position(|c| *c == class).unwrap(), p)
        })
        .collect();
    expected.sort();
    let pil = pil_checksums();
    for (i, (label, png)) in expected.iter().enumerate() {
        assert_eq!(ds.labels[i] as usize, *label);
        let want = &pil[name(png)];
        let (s, w) = checksums(ds.image(i));
        assert_eq!(
            (s, w),
            (want[0].as_i64().unwrap(), want[1].as_i64().unwrap()),
            "{png:?}"
        );
    }
}

/// Write CIFAR binary records (label bytes, then the 3072 pixels) for `images` of `ds`.
fn write_records(path: &Path, ds: &Dataset, indices: &[usize], labels: &[Vec<u8>]) {
    let mut bytes = Vec::new();
    for (&i, label) in indices.iter().zip(labels) {
        bytes.extend_from_slice(label);
        bytes.extend_from_slice(ds.image(i));
    }
    fs::write(path, bytes).unwrap();
}

/// The fixtures of one release as a data set in file order, read through the folder reader.
fn fixtures_in_file_order(prefix: &str) -> (Dataset, Vec<u32>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("all");
    fs::create_dir_all(&dir).unwrap();
    let pngs = fixture_pngs(prefix);
    for (png, _) in &pngs {
        fs::copy(png, dir.join(name(png))).unwrap();
    }
    let ds = load(&format!("folder:{}", tmp.path().display())).test;
    (ds, pngs.iter().map(|(_, l)| *l).collect())
}

#[test]
fn cifar10_binary_round_trip_of_real_images() {
    let (ds, labels) = fixtures_in_file_order("cifar10_");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cifar-10-batches-bin");
    fs::create_dir_all(&root).unwrap();
    let label_bytes: Vec<Vec<u8>> = labels.iter().map(|&l| vec![l as u8]).collect();
    let all: Vec<usize> = (0..20).collect();
    // Any record count: 12 and 5 training records in two batches, 20 test records.
    write_records(
        &root.join("data_batch_1.bin"),
        &ds,
        &all[..12],
        &label_bytes[..12],
    );
    write_records(
        &root.join("data_batch_2.bin"),
        &ds,
        &all[12..17],
        &label_bytes[12..17],
    );
    write_records(&root.join("test_batch.bin"), &ds, &all, &label_bytes);
    fs::write(
        root.join("batches.meta.txt"),
        CIFAR10_CLASSES.join("\n") + "\n\n",
    )
    .unwrap();
    // The parent folder works too (the release folder is found inside it).
    let splits = load(&format!("cifar10:{}", tmp.path().display()));
    let (train, test) = (splits.train.unwrap(), splits.test);
    assert_eq!((train.len(), test.len()), (17, 20));
    assert_eq!(test.num_classes, 10);
    assert_eq!(test.class_names, CIFAR10_CLASSES);
    assert_eq!(test.labels, labels);
    assert_eq!(test.images, ds.images);
    assert_eq!(train.labels, labels[..17]);
    assert_eq!(train.images, ds.images[..17 * 3072]);
    // The foolbox labels are the first CIFAR-10 test labels.
    assert_eq!(&labels[..8], &[3, 8, 8, 0, 6, 6, 1, 6]);
}

#[test]
fn cifar100_binary_round_trip_uses_fine_labels() {
    let (ds, labels) = fixtures_in_file_order("cifar100_");
    let tmp = tempfile::tempdir().unwrap();
    // Coarse label 7 everywhere: only the fine label may be read.
    let label_bytes: Vec<Vec<u8>> = labels.iter().map(|&l| vec![7, l as u8]).collect();
    let all: Vec<usize> = (0..20).collect();
    write_records(&tmp.path().join("train.bin"), &ds, &all, &label_bytes);
    write_records(
        &tmp.path().join("test.bin"),
        &ds,
        &all[..3],
        &label_bytes[..3],
    );
    let splits = load(&format!("cifar100:{}", tmp.path().display()));
    let (train, test) = (splits.train.unwrap(), splits.test);
    assert_eq!((train.len(), test.len(), train.num_classes), (20, 3, 100));
    assert_eq!(train.labels, labels);
    assert_eq!(train.images, ds.images);
    assert_eq!(
        train.class_names[49], "49",
        "label numbers without fine_label_names.txt"
    );
    assert_eq!(&labels[..4], &[49, 33, 72, 51]);
    // Names from fine_label_names.txt when present; a wrong count is an error naming the file.
    let names: Vec<String> = (0..100).map(|i| format!("class{i}")).collect();
    fs::write(tmp.path().join("fine_label_names.txt"), names.join("\n")).unwrap();
    assert_eq!(
        load(&format!("cifar100:{}", tmp.path().display()))
            .test
            .class_names[3],
        "class3"
    );
    fs::write(tmp.path().join("fine_label_names.txt"), "a\nb\n").unwrap();
    let err = format!("cifar100:{}", tmp.path().display())
        .parse::<DataSpec>()
        .unwrap()
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fine_label_names.txt") && err.contains("2 class names"),
        "{err}"
    );
}

fn load_err(spec: &str) -> String {
    spec.parse::<DataSpec>()
        .unwrap()
        .load()
        .unwrap_err()
        .to_string()
}

#[test]
fn cifar_bad_input_names_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = format!("cifar10:{}", tmp.path().display());
    let err = load_err(&spec);
    assert!(
        err.contains("test_batch.bin") && err.contains("cifar-10-batches-bin"),
        "{err}"
    );
    // 2 records and 1000 bytes of a third.
    fs::write(
        tmp.path().join("test_batch.bin"),
        vec![1u8; 2 * 3073 + 1000],
    )
    .unwrap();
    let err = load_err(&spec);
    assert!(
        err.contains("test_batch.bin") && err.contains("byte offset 6146"),
        "{err}"
    );
    // CIFAR-100 records read as CIFAR-10: a label byte out of range.
    let mut rec = vec![0u8; 3073];
    rec[3072] = 0;
    rec[0] = 42;
    fs::write(tmp.path().join("test_batch.bin"), rec).unwrap();
    let err = load_err(&spec);
    assert!(err.contains("label 42 at byte offset 0"), "{err}");
}

fn write_png(path: &Path, img: image::DynamicImage) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

fn gray(w: u32, h: u32, v: u8) -> image::DynamicImage {
    image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(w, h, image::Luma([v])))
}

fn rgb(w: u32, h: u32, v: [u8; 3]) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb(v)))
}

#[test]
fn folder_splits_gray_rgb_jpeg_and_resizing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // train: gray and RGB mixed (so 3 channels), PNG and JPEG; val: one class only.
    write_png(&root.join("train/b_class/x.png"), gray(4, 4, 200));
    write_png(&root.join("train/a_class/y.png"), rgb(4, 4, [10, 20, 30]));
    write_png(&root.join("train/a_class/z.jpg"), rgb(4, 4, [250, 0, 0]));
    fs::write(root.join("train/a_class/notes.txt"), "ignored").unwrap();
    write_png(&root.join("val/b_class/v.png"), gray(8, 8, 100));
    let splits = load(&format!("folder:{}", root.display()));
    let train = splits.train.unwrap();
    assert_eq!(train.class_names, ["a_class", "b_class"]);
    assert_eq!(train.labels, [0, 0, 1]);
    assert_eq!((train.channels, train.height, train.width), (3, 4, 4));
    assert_eq!(&train.image(0)[..1], &[10]);
    assert_eq!(train.image(0)[16], 20);
    assert_eq!(train.image(0)[32], 30);
    // JPEG is lossy: close to pure red.
    let jpg = train.image(1);
    assert!(
        jpg[..16].iter().all(|&v| v > 230) && jpg[16..].iter().all(|&v| v < 25),
        "{jpg:?}"
    );
    assert!(
        train.image(2).iter().all(|&v| v == 200),
        "gray repeated to RGB"
    );
    // The test split takes the training split's classes, channels and size.
    let test = splits.test;
    assert_eq!((test.labels.as_slice(), test.num_classes), (&[1u32][..], 2));
    assert_eq!((test.channels, test.height, test.width), (3, 4, 4));
    assert!(test.images.iter().all(|&v| v == 100));

    // All gray: one channel. Different sizes: an error saying how to fix it, or `@HxW`.
    let g = tmp.path().join("gray");
    write_png(&g.join("c/1.png"), gray(6, 5, 1));
    write_png(&g.join("c/2.png"), gray(3, 3, 9));
    let err = load_err(&format!("folder:{}", g.display()));
    assert!(
        err.contains("different sizes") && err.contains("@5x6"),
        "{err}"
    );
    let ds = load(&format!("folder:{}@2x3", g.display())).test;
    assert_eq!((ds.channels, ds.height, ds.width), (1, 2, 3));
    assert_eq!(ds.image(1), &[9; 6]);
}

#[test]
fn folder_bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let err = load_err(&format!("folder:{}", root.join("missing").display()));
    assert!(err.contains("does not exist"), "{err}");
    let err = load_err(&format!("folder:{}", root.display()));
    assert!(err.contains("no class folders"), "{err}");
    fs::create_dir_all(root.join("cat")).unwrap();
    let err = load_err(&format!("folder:{}", root.display()));
    assert!(err.contains("cat") && err.contains("no image"), "{err}");
    fs::write(root.join("cat/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let err = load_err(&format!("folder:{}", root.display()));
    assert!(
        err.contains("broken.png") && err.contains("not a readable"),
        "{err}"
    );
    // A truncated PNG: the header reads, the pixels do not.
    let good = fs::read(Path::new(FIXTURES).join("foolbox/cifar10_00_3.png")).unwrap();
    fs::write(root.join("cat/broken.png"), &good[..good.len() / 2]).unwrap();
    let err = load_err(&format!("folder:{}", root.display()));
    assert!(err.contains("broken.png"), "{err}");
    // train/ without test/ or val/.
    fs::remove_file(root.join("cat/broken.png")).unwrap();
    write_png(&root.join("train/cat/a.png"), gray(2, 2, 0));
    let err = load_err(&format!("folder:{}", root.display()));
    assert!(err.contains("no test/ or val/"), "{err}");
    // A test class the training split does not have.
    write_png(&root.join("test/dog/a.png"), gray(2, 2, 0));
    let err = load_err(&format!("folder:{}", root.display()));
    assert!(err.contains("`dog`") && err.contains("cat"), "{err}");
}

#[test]
fn specs_parse_display_and_list_the_forms() {
    for s in [
        "cifar10:/data/c10",
        "cifar100:rel/c100",
        "folder:/imgs",
        "folder:/imgs@32x40",
        "idx:/x",
        "fashion-mnist-mini",
    ] {
        assert_eq!(s.parse::<DataSpec>().unwrap().to_string(), s);
    }
    // `@` not followed by a size stays part of the path.
    let odd: DataSpec = "folder:/a@b".parse().unwrap();
    assert_eq!(
        odd,
        DataSpec::Folder {
            dir: "/a@b".into(),
            size: None
        }
    );
    for bad in ["cifar10:", "folder:", "cifar", "hub"] {
        let err = bad.parse::<DataSpec>().unwrap_err().to_string();
        assert!(
            err.contains("cifar10:DIR") && err.contains("folder:DIR@HxW"),
            "{err}"
        );
    }
}

#[test]
fn conform_converts_gray_28_to_rgb_32() {
    let mnist = load("mnist-mini").test;
    let first: Vec<u8> = mnist.image(0).to_vec();
    let n = mnist.len();
    let ds = conform(mnist, (3, 32, 32)).unwrap();
    assert_eq!((ds.len(), ds.channels, ds.height, ds.width), (n, 3, 32, 32));
    let img = ds.image(0);
    assert_eq!(&img[..1024], &img[1024..2048], "gray repeated");
    let want = multimix_data::transform::resize_bilinear(&first, (1, 28, 28), (32, 32));
    assert_eq!(&img[..1024], want.as_slice());
    let back = conform(ds, (1, 32, 32)).unwrap();
    assert_eq!(
        back.image(0),
        want.as_slice(),
        "luma of equal channels is the gray value"
    );
    let err = conform(back, (2, 32, 32)).unwrap_err().to_string();
    assert!(err.contains("1 and 3 channels"), "{err}");
}

#[test]
fn ood_sets_take_the_shape_of_the_in_distribution_set() {
    let like = Dataset::new(
        "like",
        vec![0; 3 * 32 * 32],
        vec![0],
        (3, 32, 32),
        1,
        vec!["x".into()],
    )
    .unwrap();
    let ood = DataSpec::MnistMini.load_ood(&like, 5, 0).unwrap();
    assert_eq!(
        (ood.channels, ood.height, ood.width, ood.len()),
        (3, 32, 32, 2000)
    );
    let noise = DataSpec::Uniform.load_ood(&like, 5, 0).unwrap();
    assert_eq!(
        (noise.channels, noise.height, noise.width, noise.len()),
        (3, 32, 32, 5)
    );
}
