//! The CIFAR-10 and CIFAR-100 binary releases (`cifar-10-batches-bin`, `cifar-100-binary`).
//!
//! A record is the label byte(s) followed by 3 072 pixel bytes: the 1 024 red values of the
//! 32 × 32 image row-major, then green, then blue, which is already the `C × H × W` layout of
//! [`Dataset`]. CIFAR-10 has one label byte; CIFAR-100 has the coarse label then the fine label
//! (the fine one is used). Files may hold any number of records.

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::spec::Splits;
use std::path::{Path, PathBuf};

/// Pixel bytes per CIFAR image (3 × 32 × 32).
pub const CIFAR_IMAGE_BYTES: usize = 3 * 32 * 32;

/// CIFAR-10's class names (the content of `batches.meta.txt`).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Which of the two releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    /// CIFAR-10: 1 label byte, 10 classes.
    Cifar10,
    /// CIFAR-100: coarse then fine label byte, 100 (fine) classes.
    Cifar100,
}

impl CifarKind {
    /// Label bytes before the pixels of each record.
    pub fn label_bytes(self) -> usize {
        match self {
            Self::Cifar10 => 1,
            Self::Cifar100 => 2,
        }
    }

    /// Number of classes (fine classes for CIFAR-100).
    pub fn num_classes(self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100 => 100,
        }
    }

    /// Bytes per record.
    pub fn record_bytes(self) -> usize {
        self.label_bytes() + CIFAR_IMAGE_BYTES
    }

    /// The folder name of the extracted release archive.
    fn release_folder(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-batches-bin",
            Self::Cifar100 => "cifar-100-binary",
        }
    }

    /// The training files, in order (the ones present are read).
    fn train_files(self) -> Vec<String> {
        match self {
            Self::Cifar10 => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Self::Cifar100 => vec!["train.bin".into()],
        }
    }

    /// The test file.
    fn test_file(self) -> &'static str {
        match self {
            Self::Cifar10 => "test_batch.bin",
            Self::Cifar100 => "test.bin",
        }
    }

    /// The class-names file (one name a line).
    fn names_file(self) -> &'static str {
        match self {
            Self::Cifar10 => "batches.meta.txt",
            Self::Cifar100 => "fine_label_names.txt",
        }
    }
}

/// Append the records of `bytes` (read from `path`) to `images` and `labels`; a truncated
/// record or an out-of-range label is an error naming the file and the byte offset.
pub fn parse_records(
    kind: CifarKind,
    bytes: &[u8],
    path: &Path,
    images: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<()> {
    let bad = |message: String| DataError::Format {
        path: path.to_path_buf(),
        message,
    };
    let record = kind.record_bytes();
    if bytes.is_empty() {
        return Err(bad("empty file: no CIFAR record".into()));
    }
    let whole = bytes.len() / record;
    if !bytes.len().is_multiple_of(record) {
        return Err(bad(format!(
            "truncated: the record at byte offset {} has only {} of its {record} bytes; the \
             file is cut short or not a CIFAR-{} binary file",
            whole * record,
            bytes.len() % record,
            kind.num_classes()
        )));
    }
    images.reserve(whole * CIFAR_IMAGE_BYTES);
    labels.reserve(whole);
    for (k, rec) in bytes.chunks_exact(record).enumerate() {
        let at = kind.label_bytes() - 1; // the fine label for CIFAR-100
        let label = rec[at] as usize;
        if label >= kind.num_classes() {
            return Err(bad(format!(
                "label {label} at byte offset {} (record {k}) is out of range for {} classes; \
                 the file is corrupt or from the other CIFAR release",
                k * record + at,
                kind.num_classes()
            )));
        }
        labels.push(label as u32);
        images.extend_from_slice(&rec[kind.label_bytes()..]);
    }
    Ok(())
}

/// Read class names from `path` (one a line, blank lines ignored), when the file exists.
fn read_names(path: &Path, count: usize) -> Result<Option<Vec<String>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != count {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            message: format!("{} class names, expected {count}", names.len()),
        });
    }
    Ok(Some(names))
}

/// Read the records of `files` into one data set.
fn read_split(
    kind: CifarKind,
    files: &[PathBuf],
    name: String,
    classes: &[String],
) -> Result<Dataset> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })?;
        parse_records(kind, &bytes, path, &mut images, &mut labels)?;
    }
    Dataset::new(
        name,
        images,
        labels,
        (3, 32, 32),
        kind.num_classes(),
        classes.to_vec(),
    )
}

/// The folder holding the files: `dir` itself, or the release folder inside it.
fn release_dir(kind: CifarKind, dir: &Path) -> Result<PathBuf> {
    let candidates = [dir.to_path_buf(), dir.join(kind.release_folder())];
    candidates
        .iter()
        .find(|d| d.join(kind.test_file()).is_file())
        .cloned()
        .ok_or_else(|| {
            DataError::NotFound(format!(
                "no CIFAR-{n} binary files in {d}: expected {test} (and {train}) there or in \
                 {d}/{rel}, as extracted from cifar-{n}-binary.tar.gz",
                n = kind.num_classes(),
                d = dir.display(),
                test = kind.test_file(),
                train = kind.train_files().join(", "),
                rel = kind.release_folder(),
            ))
        })
}

/// Load a CIFAR release from `dir` (or `dir/cifar-10-batches-bin`, `dir/cifar-100-binary`):
/// the test file is required, the training split holds the training files that are present.
/// Class names come from `batches.meta.txt` / `fine_label_names.txt` when present (else
/// CIFAR-10's names, or the label numbers for CIFAR-100).
pub fn load_cifar(kind: CifarKind, dir: &Path, name: &str) -> Result<Splits> {
    let root = release_dir(kind, dir)?;
    let classes = read_names(&root.join(kind.names_file()), kind.num_classes())?.unwrap_or_else(
        || match kind {
            CifarKind::Cifar10 => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
            CifarKind::Cifar100 => (0..100).map(|c| c.to_string()).collect(),
        },
    );
    let train_files: Vec<PathBuf> = kind
        .train_files()
        .iter()
        .map(|f| root.join(f))
        .filter(|p| p.is_file())
        .collect();
    let train = if train_files.is_empty() {
        None
    } else {
        Some(read_split(
            kind,
            &train_files,
            format!("{name}/train"),
            &classes,
        )?)
    };
    let test = read_split(
        kind,
        &[root.join(kind.test_file())],
        format!("{name}/test"),
        &classes,
    )?;
    Ok(Splits { train, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: CifarKind, label: u8, fill: u8) -> Vec<u8> {
        let mut r = vec![label; kind.label_bytes()];
        if kind == CifarKind::Cifar100 {
            r[0] = 19; // coarse label, ignored
        }
        r.extend(std::iter::repeat_n(fill, CIFAR_IMAGE_BYTES));
        r
    }

    #[test]
    fn parses_fine_labels_and_pixels() {
        let kind = CifarKind::Cifar100;
        let bytes = [record(kind, 99, 7), record(kind, 3, 8)].concat();
        let (mut img, mut lab) = (Vec::new(), Vec::new());
        parse_records(kind, &bytes, Path::new("t.bin"), &mut img, &mut lab).unwrap();
        assert_eq!(lab, vec![99, 3]);
        assert_eq!(img.len(), 2 * CIFAR_IMAGE_BYTES);
        assert_eq!((img[0], img[CIFAR_IMAGE_BYTES]), (7, 8));
    }

    #[test]
    fn truncated_and_corrupt_records_name_file_and_offset() {
        let kind = CifarKind::Cifar10;
        let mut bytes = [record(kind, 1, 0), record(kind, 2, 0)].concat();
        bytes.truncate(3073 + 100);
        let (mut img, mut lab) = (Vec::new(), Vec::new());
        let err = parse_records(
            kind,
            &bytes,
            Path::new("data_batch_1.bin"),
            &mut img,
            &mut lab,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("data_batch_1.bin") && err.contains("byte offset 3073"),
            "{err}"
        );
        let bytes = [record(kind, 1, 0), record(kind, 10, 0)].concat();
        let err = parse_records(kind, &bytes, Path::new("x.bin"), &mut img, &mut lab)
            .unwrap_err()
            .to_string();
        assert!(err.contains("label 10 at byte offset 3073"), "{err}");
        let err = parse_records(kind, &[], Path::new("x.bin"), &mut img, &mut lab).unwrap_err();
        assert!(err.to_string().contains("empty"));
    }
}
