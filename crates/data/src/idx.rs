//! IDX files (the format of MNIST and Fashion-MNIST), gzipped or not.

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// An IDX array of unsigned bytes: its dims and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<u8>,
}

/// Decompress `bytes` if they start with the gzip magic.
fn maybe_gunzip(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| DataError::Format {
                path: path.to_path_buf(),
                message: format!("corrupt gzip stream: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

/// Parse an IDX array of `u8` (type code 0x08) from `bytes` (gzipped or not); `path` names the
/// source in errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    let raw = maybe_gunzip(bytes, path)?;
    let bad = |message: String| DataError::Format {
        path: path.to_path_buf(),
        message,
    };
    if raw.len() < 4 || raw[0] != 0 || raw[1] != 0 {
        return Err(bad("not an IDX file (bad magic number)".into()));
    }
    if raw[2] != 0x08 {
        return Err(bad(format!(
            "IDX type code 0x{:02x} is not unsigned byte (0x08)",
            raw[2]
        )));
    }
    let ndim = raw[3] as usize;
    let header = 4 + 4 * ndim;
    if ndim == 0 || raw.len() < header {
        return Err(bad(format!("IDX header for {ndim} dims is truncated")));
    }
    let dims: Vec<usize> = raw[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match count {
        Some(n) if raw.len() - header == n => Ok(IdxArray {
            dims,
            data: raw[header..].to_vec(),
        }),
        Some(n) => Err(bad(format!(
            "IDX dims {dims:?} need {n} bytes of data, the file has {} (truncated or corrupt)",
            raw.len() - header
        ))),
        None => Err(bad(format!("IDX dims {dims:?} overflow"))),
    }
}

/// Read an IDX file from disk.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_idx(&bytes, path)
}

/// Find `stem` or `stem.gz` in `dir`.
pub fn find_idx(dir: &Path, stem: &str) -> Option<PathBuf> {
    [dir.join(stem), dir.join(format!("{stem}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// A data set from an images array `[N, H, W]` and a labels array `[N]` read from `source`;
/// the class names default to the label values `0..=max`.
pub fn idx_dataset(
    name: String,
    images: IdxArray,
    labels: IdxArray,
    source: &Path,
    classes: Option<Vec<String>>,
) -> Result<Dataset> {
    let bad = |message: String| DataError::Format {
        path: source.to_path_buf(),
        message,
    };
    let [n, h, w] = images.dims[..] else {
        return Err(bad(format!(
            "images must have 3 dims [N, H, W], found {:?}",
            images.dims
        )));
    };
    if labels.dims != [n] {
        return Err(bad(format!(
            "{n} images but labels of dims {:?}",
            labels.dims
        )));
    }
    let labels: Vec<u32> = labels.data.into_iter().map(u32::from).collect();
    let classes = classes.unwrap_or_else(|| {
        let count = labels.iter().max().map_or(1, |m| *m as usize + 1);
        (0..count).map(|c| c.to_string()).collect()
    });
    Dataset::new(name, images.data, labels, (1, h, w), classes.len(), classes)
}
