//! The checkpoint format: safetensors files, read with validation and written atomically.
//!
//! A safetensors file is an 8-byte little-endian header length `n`, `n` bytes of JSON mapping
//! tensor names to `{"dtype", "shape", "data_offsets": [start, end]}` (plus an optional
//! `"__metadata__"` map of strings), then the data section the offsets index into.
//!
//! Reading trusts nothing in the file. safetensors 0.8's `SafeTensors::read_metadata` checks the
//! 100 MB header cap, that the header lies inside the file and is UTF-8 JSON, that the offsets,
//! in offset order, start at 0 and follow each other without gap or overlap, that each tensor's
//! byte size is its element count times its dtype size, and that the last offset is the end of
//! the file. Those checks are redone here because `read_metadata` needs the whole file in memory
//! (so it cannot back [`inspect_safetensors`]) and its errors name neither the file nor, mostly,
//! the tensor. Added on top: files of other formats are recognized and named (PyTorch pickles,
//! Git LFS pointers, text), a tensor name listed twice is refused (safetensors keeps one of them
//! silently), and a dtype candle cannot hold exactly is refused by name.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};
use safetensors::View;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest JSON header read, in bytes (safetensors' own `MAX_HEADER_SIZE`).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Size of the little-endian `u64` header length that opens a safetensors file.
const LEN_PREFIX: u64 = 8;

/// Bytes read from the start of a file to recognize other formats.
const SNIFF_LEN: u64 = 512;

/// Header key of the string-to-string metadata map.
const METADATA_KEY: &str = "__metadata__";

/// The safetensors dtypes read and written, each with the candle dtype that holds it exactly.
const DTYPES: [(&str, DType); 9] = [
    ("U8", DType::U8),
    ("I16", DType::I16),
    ("U32", DType::U32),
    ("I32", DType::I32),
    ("I64", DType::I64),
    ("F16", DType::F16),
    ("BF16", DType::BF16),
    ("F32", DType::F32),
    ("F64", DType::F64),
];

/// Tensors by name plus the safetensors `__metadata__` map.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The tensors, on the device they were loaded to.
    pub tensors: BTreeMap<String, Tensor>,
    /// The header's `__metadata__` entries (empty when the file has none).
    pub metadata: BTreeMap<String, String>,
}

/// One row of a safetensors file's tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (timm's state-dict key).
    pub name: String,
    /// Its element type.
    pub dtype: DType,
    /// Its shape; empty for a scalar.
    pub shape: Vec<usize>,
}

/// A file format recognized where a safetensors file was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignFormat {
    /// The file has no bytes at all.
    Empty,
    /// A zip archive holding a pickle: what `torch.save` writes (`.bin`, `.pth`, `.pt`).
    PyTorchZip,
    /// A zip archive of another kind (e.g. numpy's `.npz`).
    Zip,
    /// A raw pickle stream, as `torch.save(..., _use_new_zipfile_serialization=False)` writes.
    Pickle {
        /// The pickle protocol named by the stream's first opcode.
        protocol: u8,
    },
    /// A Git LFS pointer: the file was cloned without `git lfs pull`.
    GitLfsPointer,
    /// Plain text (JSON, HTML error pages, ...).
    Text,
}

impl fmt::Display for ForeignFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("is an empty file"),
            Self::PyTorchZip => {
                f.write_str("is a PyTorch pickle checkpoint (zip, as torch.save writes)")
            }
            Self::Zip => f.write_str("is a zip archive"),
            Self::Pickle { protocol } => {
                write!(
                    f,
                    "is a PyTorch pickle checkpoint (raw pickle, protocol {protocol})"
                )
            }
            Self::GitLfsPointer => {
                f.write_str("is a Git LFS pointer, not the file it points to (run `git lfs pull`)")
            }
            Self::Text => f.write_str("is a text file"),
        }
    }
}

/// Why a checkpoint or config file could not be read or written; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The operating system refused an operation on the file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is of another, recognized format.
    #[error("{}: {kind}; only safetensors are read", path.display())]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        kind: ForeignFormat,
    },
    /// The file is shorter than the 8-byte header length.
    #[error("{}: {len} bytes is too short for a safetensors file (8-byte header length first)", path.display())]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
    },
    /// A header (declared by a file read, or built for a file to write) exceeds [`MAX_HEADER_LEN`].
    #[error("{}: the header length {header_len} exceeds the {MAX_HEADER_LEN}-byte cap", path.display())]
    HeaderTooLarge {
        /// The file.
        path: PathBuf,
        /// The declared header length.
        header_len: u64,
    },
    /// The declared header length runs past the end of the file.
    #[error("{}: the header length {header_len} runs past the end of the {file_len}-byte file", path.display())]
    HeaderBeyondFile {
        /// The file.
        path: PathBuf,
        /// The declared header length.
        header_len: u64,
        /// The file's length in bytes.
        file_len: u64,
    },
    /// The header is not UTF-8 JSON.
    #[error("{}: the header is not JSON: {source}", path.display())]
    HeaderNotJson {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The header is JSON but not a table of tensors (missing or mistyped fields, a name twice).
    #[error("{}: the header does not describe safetensors tensors: {source}", path.display())]
    InvalidHeader {
        /// The file.
        path: PathBuf,
        /// The parser's error, naming the problem.
        #[source]
        source: serde_json::Error,
    },
    /// A tensor's dtype is not one of U8, I16, U32, I32, I64, F16, BF16, F32, F64.
    #[error("{}: tensor `{tensor}` has dtype {dtype}, which is not supported (U8, I16, U32, I32, I64, F16, BF16, F32, F64 are)", path.display())]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The dtype's name.
        dtype: String,
    },
    /// A tensor's end offset precedes its start offset.
    #[error("{}: tensor `{tensor}` has data_offsets [{start}, {end}], which end before they start", path.display())]
    OffsetsReversed {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Declared start offset.
        start: u64,
        /// Declared end offset.
        end: u64,
    },
    /// A tensor's end offset lies past the data section.
    #[error("{}: tensor `{tensor}` ends at offset {end}, past the {data_len}-byte data section", path.display())]
    OffsetsOutOfRange {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Declared end offset.
        end: u64,
        /// Length of the data section.
        data_len: u64,
    },
    /// A tensor's element count times its dtype size overflows 64 bits.
    #[error("{}: tensor `{tensor}` has shape {shape:?}, whose byte size overflows", path.display())]
    ShapeOverflow {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Declared shape.
        shape: Vec<usize>,
    },
    /// A tensor's offsets span another byte count than its dtype and shape need.
    #[error("{}: tensor `{tensor}` of dtype {dtype} and shape {shape:?} needs {expected} bytes but its data_offsets span {actual}", path.display())]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dtype's name.
        dtype: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Element count times dtype size.
        expected: u64,
        /// `end - start` of its offsets.
        actual: u64,
    },
    /// Two tensors share bytes of the data section.
    #[error("{}: tensors `{first}` and `{second}` overlap in the data section", path.display())]
    Overlap {
        /// The file.
        path: PathBuf,
        /// The tensor starting first.
        first: String,
        /// The tensor starting inside it.
        second: String,
    },
    /// Bytes of the data section belong to no tensor.
    #[error("{}: bytes {start}..{end} of the data section belong to no tensor", path.display())]
    Gap {
        /// The file.
        path: PathBuf,
        /// First byte of the gap (offset in the data section).
        start: u64,
        /// One past its last byte.
        end: u64,
    },
    /// A tensor to save is named like the header's metadata key.
    #[error("{}: a tensor cannot be named `{METADATA_KEY}`", path.display())]
    ReservedTensorName {
        /// The file.
        path: PathBuf,
    },
    /// candle could not build a tensor from its bytes, or copy it to the host to save it.
    #[error("{}: tensor `{tensor}`: {source}", path.display())]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// candle's error (boxed: it is large).
        #[source]
        source: Box<candle_core::Error>,
    },
    /// The header of a file to write could not be serialized.
    #[error("{}: cannot serialize the header: {source}", path.display())]
    SerializeHeader {
        /// The file.
        path: PathBuf,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A config file is not JSON.
    #[error("{}: not JSON: {source}", path.display())]
    ConfigNotJson {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A required config field is absent or null.
    #[error("{}: missing required field `{field}`", path.display())]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The field, dotted for nested ones (`pretrained_cfg.mean`).
        field: &'static str,
    },
    /// A config field has the wrong type or an unusable value.
    #[error("{}: not a timm config: {source}", path.display())]
    InvalidConfig {
        /// The file.
        path: PathBuf,
        /// The error, naming the problem.
        #[source]
        source: serde_json::Error,
    },
    /// `pretrained_cfg.input_size` is not `[C, H, W]`.
    #[error("{}: pretrained_cfg.input_size must be [C, H, W], got {input_size:?}", path.display())]
    InvalidInputSize {
        /// The file.
        path: PathBuf,
        /// The value found.
        input_size: Vec<usize>,
    },
}

impl CheckpointError {
    /// Wraps an I/O error with the file it concerns.
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Write tensors to `path` as safetensors, atomically: a temporary file in the same directory,
/// fsync, rename.
///
/// The metadata always contains `{"format": "pt"}` (added if absent) plus the caller's entries.
/// Tensors may live on any device (they are copied to the host). Nothing at `path` is touched if
/// anything fails. The layout is safetensors' own (tensors by decreasing dtype, then name; header
/// padded to 8 bytes) with the metadata keys sorted, so equal inputs give equal files; tensors
/// are streamed to the file one at a time.
pub fn save_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    let mut host = tensors
        .iter()
        .map(|(name, tensor)| Ok((name.as_str(), to_host(path, name, tensor)?)))
        .collect::<Result<Vec<_>, CheckpointError>>()?;
    // safetensors' order: larger dtypes first (keeps data aligned), then by name.
    host.sort_by(|(a_name, a), (b_name, b)| st_dtype(b).cmp(&st_dtype(a)).then(a_name.cmp(b_name)));
    let header = header_bytes(&host, &header_metadata(metadata)).map_err(|source| {
        CheckpointError::SerializeHeader {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let header_len = header.len() as u64;
    if header_len > MAX_HEADER_LEN {
        return Err(CheckpointError::HeaderTooLarge {
            path: path.to_path_buf(),
            header_len,
        });
    }
    write_atomic_with(path, |writer| {
        writer.write_all(&header_len.to_le_bytes())?;
        writer.write_all(&header)?;
        // candle's `View` copies one tensor to bytes at a time; it cannot fail for the host
        // tensors of supported dtypes built above.
        host.iter()
            .try_for_each(|(_, tensor)| writer.write_all(&View::data(tensor)))
    })
    .map_err(|source| CheckpointError::io(path, source))
}

/// Read and validate a safetensors file into tensors on `device`.
///
/// The header is read and validated first; the data section is then read with a single read and
/// dropped once the tensors are built from it.
pub fn load_safetensors(path: &Path, device: &Device) -> Result<Checkpoint, CheckpointError> {
    let mut file = File::open(path).map_err(|source| CheckpointError::io(path, source))?;
    let layout = read_layout(path, &mut file)?;
    let data = read_exactly(&mut file, layout.data_len)
        .map_err(|source| CheckpointError::io(path, source))?;
    let tensors = layout
        .entries
        .into_iter()
        .map(|entry| {
            let tensor = build_tensor(path, &entry, &data, device)?;
            Ok((entry.name, tensor))
        })
        .collect::<Result<BTreeMap<_, _>, CheckpointError>>()?;
    Ok(Checkpoint {
        tensors,
        metadata: layout.metadata,
    })
}

/// Read only the metadata and the (name, dtype, shape) table, without loading data.
///
/// The table is validated against the file's length as [`load_safetensors`] does, and sorted by
/// name.
pub fn inspect_safetensors(
    path: &Path,
) -> Result<(BTreeMap<String, String>, Vec<TensorInfo>), CheckpointError> {
    let mut file = File::open(path).map_err(|source| CheckpointError::io(path, source))?;
    let layout = read_layout(path, &mut file)?;
    let mut infos: Vec<TensorInfo> = layout
        .entries
        .into_iter()
        .map(|entry| TensorInfo {
            name: entry.name,
            dtype: entry.dtype,
            shape: entry.shape,
        })
        .collect();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((layout.metadata, infos))
}

/// Write bytes atomically (temporary file in the same directory, fsync, rename); used for
/// reports and configs too.
///
/// On failure the temporary file is removed and `path` is left as it was, except when only the
/// final fsync of the directory fails: the new file is then in place but may not survive a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), io::Error> {
    write_atomic_with(path, |writer| writer.write_all(bytes))
}

/// [`write_atomic`] with the content written by `fill` through a buffer.
fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> io::Result<()> {
    let pending = PendingFile::beside(path)?;
    let mut writer = BufWriter::new(&pending.file);
    fill(&mut writer)?;
    writer
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    pending.commit()
}

/// A temporary file beside its destination, removed when dropped uncommitted.
struct PendingFile {
    file: File,
    temp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

/// Distinguishes the temporary files of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Attempts at a fresh temporary name before giving up.
const TEMP_ATTEMPTS: usize = 64;

impl PendingFile {
    /// Creates `.<name>.<pid>-<n>.tmp` in `dest`'s directory; never reuses an existing file.
    fn beside(dest: &Path) -> io::Result<Self> {
        let name = dest.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no file", dest.display()),
            )
        })?;
        let dir = parent_dir(dest);
        for _ in 0..TEMP_ATTEMPTS {
            let mut temp_name = OsString::from(".");
            temp_name.push(name);
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            temp_name.push(format!(".{}-{n}.tmp", std::process::id()));
            let temp = dir.join(temp_name);
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(Self {
                        file,
                        temp,
                        dest: dest.to_path_buf(),
                        committed: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free temporary file name beside {}", dest.display()),
        ))
    }

    /// fsync, rename over the destination, fsync the directory.
    fn commit(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        fs::rename(&self.temp, &self.dest)?;
        self.committed = true;
        sync_dir(parent_dir(&self.dest))
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the error that got us here is the one worth reporting.
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Makes a rename inside `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for syncing here; the rename is as durable as the OS makes it.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// The caller's metadata with `format: pt` added when absent.
fn header_metadata(metadata: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut header = metadata.clone();
    header
        .entry("format".to_string())
        .or_insert_with(|| "pt".to_string());
    header
}

/// The safetensors name of a candle dtype (every candle dtype has one).
fn st_dtype(tensor: &Tensor) -> safetensors::Dtype {
    safetensors::Dtype::from(tensor.dtype())
}

/// The JSON header for `tensors` stored back to back in this order, padded with spaces to a
/// multiple of 8 bytes as safetensors pads it.
fn header_bytes(
    tensors: &[(&str, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut offset = 0;
    let infos = tensors
        .iter()
        .map(|(name, tensor)| {
            let start = offset;
            offset += View::data_len(tensor);
            let info = safetensors::tensor::TensorInfo {
                dtype: st_dtype(tensor),
                shape: tensor.dims().to_vec(),
                data_offsets: (start, offset),
            };
            (*name, info)
        })
        .collect();
    let mut bytes = serde_json::to_vec(&Header {
        metadata,
        tensors: infos,
    })?;
    bytes.resize(bytes.len().next_multiple_of(LEN_PREFIX as usize), b' ');
    Ok(bytes)
}

/// A header to write: `__metadata__` first, then the tensors in file order (as safetensors).
struct Header<'a> {
    metadata: &'a BTreeMap<String, String>,
    tensors: Vec<(&'a str, safetensors::tensor::TensorInfo)>,
}

impl Serialize for Header<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.tensors.len() + 1))?;
        map.serialize_entry(METADATA_KEY, self.metadata)?;
        for (name, info) in &self.tensors {
            map.serialize_entry(name, info)?;
        }
        map.end()
    }
}

/// `tensor` on the host, after checking that its name and dtype can be saved.
fn to_host(path: &Path, name: &str, tensor: &Tensor) -> Result<Tensor, CheckpointError> {
    if name == METADATA_KEY {
        return Err(CheckpointError::ReservedTensorName {
            path: path.to_path_buf(),
        });
    }
    if dtype_name(tensor.dtype()).is_none() {
        return Err(CheckpointError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            dtype: safetensors::Dtype::from(tensor.dtype()).to_string(),
        });
    }
    tensor
        .to_device(&Device::Cpu)
        .map_err(|source| CheckpointError::Tensor {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            source: Box::new(source),
        })
}

/// The candle dtype holding safetensors dtype `name` exactly, if supported.
fn dtype_from_name(name: &str) -> Option<DType> {
    DTYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, dtype)| dtype)
}

/// The safetensors name of a supported candle dtype.
fn dtype_name(dtype: DType) -> Option<&'static str> {
    DTYPES
        .iter()
        .find(|(_, d)| *d == dtype)
        .map(|&(name, _)| name)
}

/// A header entry as written in the file, before validation.
#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// A parsed header: metadata and tensors by name, with each name seen once.
struct RawHeader {
    metadata: BTreeMap<String, String>,
    tensors: BTreeMap<String, RawTensor>,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawHeaderVisitor)
    }
}

/// Reads the header map entry by entry, refusing a key seen twice.
struct RawHeaderVisitor;

impl<'de> Visitor<'de> for RawHeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map from tensor names to {dtype, shape, data_offsets}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let mut metadata = None;
        let mut tensors = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == METADATA_KEY {
                let value: Option<BTreeMap<String, String>> = map.next_value()?;
                if metadata.replace(value.unwrap_or_default()).is_some() {
                    return Err(de::Error::custom(format!(
                        "`{METADATA_KEY}` is listed twice"
                    )));
                }
            } else {
                let tensor: RawTensor = map.next_value()?;
                if tensors.contains_key(&key) {
                    return Err(de::Error::custom(format!("tensor `{key}` is listed twice")));
                }
                tensors.insert(key, tensor);
            }
        }
        Ok(RawHeader {
            metadata: metadata.unwrap_or_default(),
            tensors,
        })
    }
}

/// A validated tensor entry: `start..end` of the data section holds it.
struct Entry {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// A validated header.
struct Layout {
    metadata: BTreeMap<String, String>,
    /// Sorted by offsets.
    entries: Vec<Entry>,
    data_len: u64,
}

/// Reads and validates the header of `file`, leaving it positioned at the data section.
fn read_layout(path: &Path, file: &mut File) -> Result<Layout, CheckpointError> {
    let io_err = |source| CheckpointError::io(path, source);
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut head = Vec::new();
    Read::by_ref(file)
        .take(SNIFF_LEN)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    let header_len = header_len(path, &head, file_len)?;
    file.seek(SeekFrom::Start(LEN_PREFIX)).map_err(io_err)?;
    let header = read_exactly(file, header_len).map_err(io_err)?;
    let raw: RawHeader = serde_json::from_slice(&header).map_err(|source| {
        let path = path.to_path_buf();
        match source.classify() {
            serde_json::error::Category::Data => CheckpointError::InvalidHeader { path, source },
            _ => CheckpointError::HeaderNotJson { path, source },
        }
    })?;
    let data_len = file_len.saturating_sub(LEN_PREFIX + header_len);
    let entries = validate_entries(path, raw.tensors, data_len)?;
    Ok(Layout {
        metadata: raw.metadata,
        entries,
        data_len,
    })
}

/// The declared header length, checked against the cap and the file; files too short or
/// pointing past themselves are named when their first bytes show another format.
fn header_len(path: &Path, head: &[u8], file_len: u64) -> Result<u64, CheckpointError> {
    let path = path.to_path_buf();
    let declared = head
        .first_chunk::<8>()
        .map(|prefix| u64::from_le_bytes(*prefix));
    let room = file_len.saturating_sub(LEN_PREFIX);
    let fits = declared.is_some_and(|n| n <= MAX_HEADER_LEN && n <= room);
    if !fits {
        if let Some(kind) = foreign_format(head) {
            return Err(CheckpointError::NotSafetensors { path, kind });
        }
    }
    match declared {
        None => Err(CheckpointError::TooShort {
            path,
            len: file_len,
        }),
        Some(n) if n > MAX_HEADER_LEN => Err(CheckpointError::HeaderTooLarge {
            path,
            header_len: n,
        }),
        Some(n) if n > room => Err(CheckpointError::HeaderBeyondFile {
            path,
            header_len: n,
            file_len,
        }),
        Some(n) => Ok(n),
    }
}

/// Recognizes other formats from a file's first bytes.
fn foreign_format(head: &[u8]) -> Option<ForeignFormat> {
    // Zip local file header: signature, then the first entry's name length at 26, name at 30.
    const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
    const LFS_MAGIC: &[u8] = b"version https://git-lfs";
    match head {
        [] => Some(ForeignFormat::Empty),
        [0x80, protocol @ 2..=5, ..] => Some(ForeignFormat::Pickle {
            protocol: *protocol,
        }),
        _ if head.starts_with(ZIP_MAGIC) => Some(if zip_first_entry(head).ends_with(b".pkl") {
            ForeignFormat::PyTorchZip
        } else {
            ForeignFormat::Zip
        }),
        _ if head.starts_with(LFS_MAGIC) => Some(ForeignFormat::GitLfsPointer),
        _ if is_text(head) => Some(ForeignFormat::Text),
        _ => None,
    }
}

/// The name of a zip archive's first entry, as far as `head` holds it (PKWARE APPNOTE 4.3.7).
fn zip_first_entry(head: &[u8]) -> &[u8] {
    let name_len = head
        .get(26..28)
        .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    head.get(30..)
        .map_or(&[], |rest| &rest[..name_len.min(rest.len())])
}

/// Whether `head` is UTF-8 without control characters other than tab and line breaks (a
/// character cut by the end of `head` is allowed).
fn is_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(text) => text,
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return false,
    };
    !valid.is_empty()
        && valid
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
}

/// Checks every entry on its own, then that together they tile the data section exactly.
fn validate_entries(
    path: &Path,
    tensors: BTreeMap<String, RawTensor>,
    data_len: u64,
) -> Result<Vec<Entry>, CheckpointError> {
    let mut entries = tensors
        .into_iter()
        .map(|(name, raw)| validate_entry(path, name, raw, data_len))
        .collect::<Result<Vec<_>, _>>()?;
    // Stable: entries with equal offsets (empty tensors) stay in name order.
    entries.sort_by_key(|entry| (entry.start, entry.end));
    check_tiling(path, &entries, data_len)?;
    Ok(entries)
}

/// Checks one entry's dtype, offsets and byte size.
fn validate_entry(
    path: &Path,
    name: String,
    raw: RawTensor,
    data_len: u64,
) -> Result<Entry, CheckpointError> {
    let path = path.to_path_buf();
    let Some(dtype) = dtype_from_name(&raw.dtype) else {
        return Err(CheckpointError::UnsupportedDtype {
            path,
            tensor: name,
            dtype: raw.dtype,
        });
    };
    let (start, end) = raw.data_offsets;
    if end < start {
        return Err(CheckpointError::OffsetsReversed {
            path,
            tensor: name,
            start,
            end,
        });
    }
    if end > data_len {
        return Err(CheckpointError::OffsetsOutOfRange {
            path,
            tensor: name,
            end,
            data_len,
        });
    }
    let Some(expected) = byte_size(&raw.shape, dtype) else {
        return Err(CheckpointError::ShapeOverflow {
            path,
            tensor: name,
            shape: raw.shape,
        });
    };
    if end - start != expected {
        return Err(CheckpointError::SizeMismatch {
            path,
            tensor: name,
            dtype: raw.dtype,
            shape: raw.shape,
            expected,
            actual: end - start,
        });
    }
    Ok(Entry {
        name,
        dtype,
        shape: raw.shape,
        start,
        end,
    })
}

/// Bytes needed by a tensor: product of the shape times the dtype size, `None` on overflow.
fn byte_size(shape: &[usize], dtype: DType) -> Option<u64> {
    shape
        .iter()
        .try_fold(dtype.size_in_bytes() as u64, |acc, &dim| {
            acc.checked_mul(u64::try_from(dim).ok()?)
        })
}

/// Checks that entries sorted by offsets cover `0..data_len` without gap or overlap.
fn check_tiling(path: &Path, entries: &[Entry], data_len: u64) -> Result<(), CheckpointError> {
    let mut covered = 0;
    let mut last = "";
    for entry in entries {
        if entry.start < covered {
            return Err(CheckpointError::Overlap {
                path: path.to_path_buf(),
                first: last.to_string(),
                second: entry.name.clone(),
            });
        }
        if entry.start > covered {
            return Err(CheckpointError::Gap {
                path: path.to_path_buf(),
                start: covered,
                end: entry.start,
            });
        }
        covered = entry.end;
        last = &entry.name;
    }
    if covered < data_len {
        return Err(CheckpointError::Gap {
            path: path.to_path_buf(),
            start: covered,
            end: data_len,
        });
    }
    Ok(())
}

/// Reads the next `len` bytes of `file` in one read.
fn read_exactly(file: &mut File, len: u64) -> io::Result<Vec<u8>> {
    let too_large = || {
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("{len} bytes do not fit in memory"),
        )
    };
    let mut bytes = vec![0; usize::try_from(len).map_err(|_| too_large())?];
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Builds `entry`'s tensor on `device` from its bytes of the data section.
fn build_tensor(
    path: &Path,
    entry: &Entry,
    data: &[u8],
    device: &Device,
) -> Result<Tensor, CheckpointError> {
    let bytes = byte_range(entry)
        .and_then(|range| data.get(range))
        .ok_or_else(|| CheckpointError::OffsetsOutOfRange {
            path: path.to_path_buf(),
            tensor: entry.name.clone(),
            end: entry.end,
            data_len: data.len() as u64,
        })?;
    Tensor::from_raw_buffer(bytes, entry.dtype, &entry.shape, device).map_err(|source| {
        CheckpointError::Tensor {
            path: path.to_path_buf(),
            tensor: entry.name.clone(),
            source: Box::new(source),
        }
    })
}

/// `start..end` of an entry as memory indices.
fn byte_range(entry: &Entry) -> Option<Range<usize>> {
    Some(usize::try_from(entry.start).ok()?..usize::try_from(entry.end).ok()?)
}
