//! Image classification sets stored as parquet, as Hugging Face `datasets` writes them.
//!
//! Columns tried, in order: images [`IMAGE_COLUMNS`] (`image`, then `img`), labels
//! [`LABEL_COLUMNS`] (`label`, `labels`, then `fine_label`). An image column is either HF's
//! `Image` feature, a struct `{bytes: binary, path: string}` whose `bytes` hold the encoded
//! file, or a plain binary column; PNG and JPEG are decoded. Labels are integers of any width,
//! signed or not, and must be non-negative. Class names come from the `ClassLabel` feature in
//! the `huggingface` key of the file's metadata when there is one, else they are the label
//! values `0..=max`.
//!
//! A split (one or several shards) is read in two passes, row group by row group: the first
//! reads the labels and the image headers (sizes and colors, to choose one shape), the second
//! decodes every image straight into its slot of the data set, on all cores. Only one row
//! group's encoded images are in memory at a time, and the decoded set exists once.
//!
//! Codecs: the `parquet` crate without arrow, with every codec pyarrow and polars write: snappy
//! (pyarrow's and HF `datasets`' default), zstd (polars' default; its crate builds the reference
//! C library), gzip, brotli and lz4. A file in any other codec (LZO) gets an error saying how to
//! rewrite it.

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::folder::{image_header, write_chw};
use ::parquet::basic::Type as PhysicalType;
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::record::{Field, Row};
use ::parquet::schema::types::Type;
use image::ImageReader;
use rayon::prelude::*;
use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Names of the image column, tried in this order.
pub const IMAGE_COLUMNS: [&str; 2] = ["image", "img"];

/// Names of the label column, tried in this order.
pub const LABEL_COLUMNS: [&str; 3] = ["label", "labels", "fine_label"];

fn format_err(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A parquet error, with what multimix can read when it is a codec the `parquet` crate does not
/// implement (LZO).
fn parquet_err(path: &Path, what: &str, e: ::parquet::errors::ParquetError) -> DataError {
    let e = e.to_string();
    let hint = if e.contains("codec type") && e.contains("not supported") {
        " (multimix reads uncompressed, snappy, zstd, gzip, brotli and lz4 parquet; rewrite the \
         file with one of these, e.g. pyarrow's default snappy)"
    } else {
        ""
    };
    format_err(path, format!("{what}: {e}{hint}"))
}

/// One parquet file, opened, with the columns to read.
struct Shard {
    path: PathBuf,
    reader: SerializedFileReader<File>,
    image: Arc<Type>,
    label: Arc<Type>,
}

/// Whether `t` holds encoded images: binary, or a struct with a binary `bytes` field.
fn is_image_type(t: &Type) -> bool {
    let binary = |t: &Type| t.is_primitive() && t.get_physical_type() == PhysicalType::BYTE_ARRAY;
    binary(t)
        || (!t.is_primitive()
            && t.get_fields()
                .iter()
                .any(|f| f.name() == "bytes" && binary(f)))
}

/// Whether `t` holds integers (int8..int64 and their unsigned kinds).
fn is_integer_type(t: &Type) -> bool {
    t.is_primitive()
        && matches!(
            t.get_physical_type(),
            PhysicalType::INT32 | PhysicalType::INT64
        )
}

/// The first column of `root` named one of `names`.
fn find_column(root: &Type, names: &[&str]) -> Option<Arc<Type>> {
    names
        .iter()
        .find_map(|n| root.get_fields().iter().find(|f| f.name() == *n).cloned())
}

fn column_list(root: &Type) -> String {
    let names: Vec<&str> = root.get_fields().iter().map(|f| f.name()).collect();
    names.join(", ")
}

impl Shard {
    /// Open `path` and find its image and label columns.
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let reader = SerializedFileReader::new(file)
            .map_err(|e| parquet_err(path, "not a readable parquet file", e))?;
        let root = reader.metadata().file_metadata().schema();
        let image = find_column(root, &IMAGE_COLUMNS).ok_or_else(|| {
            format_err(
                path,
                format!(
                    "no image column: expected one named {}, the file has {}",
                    IMAGE_COLUMNS.join(" or "),
                    column_list(root)
                ),
            )
        })?;
        if !is_image_type(&image) {
            return Err(format_err(
                path,
                format!(
                    "column `{}` does not hold encoded images: expected binary or a struct \
                     {{bytes: binary, path: string}} (HF datasets' Image feature)",
                    image.name()
                ),
            ));
        }
        let label = find_column(root, &LABEL_COLUMNS).ok_or_else(|| {
            format_err(
                path,
                format!(
                    "no label column: expected one named {}, the file has {}",
                    LABEL_COLUMNS.join(", "),
                    column_list(root)
                ),
            )
        })?;
        if !is_integer_type(&label) {
            return Err(format_err(
                path,
                format!(
                    "label column `{}` does not hold integers (it is {})",
                    label.name(),
                    label.get_physical_type()
                ),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            image,
            label,
        })
    }

    /// Class names of the label column's `ClassLabel` feature, from the `huggingface` metadata.
    fn class_names(&self) -> Option<Vec<String>> {
        let kv = self
            .reader
            .metadata()
            .file_metadata()
            .key_value_metadata()?;
        let text = kv
            .iter()
            .find(|kv| kv.key == "huggingface")?
            .value
            .as_ref()?;
        let meta: serde_json::Value = serde_json::from_str(text).ok()?;
        let names = meta["info"]["features"][self.label.name()]["names"].as_array()?;
        names
            .iter()
            .map(|n| n.as_str().map(str::to_string))
            .collect()
    }

    /// Call `visit(first_row, rows)` for each row group, with rows holding only `columns`.
    fn for_each_row_group(
        &self,
        columns: &[Arc<Type>],
        mut visit: impl FnMut(usize, Vec<Row>) -> Result<()>,
    ) -> Result<()> {
        let root = self.reader.metadata().file_metadata().schema();
        let projection = Type::group_type_builder(root.name())
            .with_fields(columns.to_vec())
            .build()
            .map_err(|e| parquet_err(&self.path, "cannot select the columns", e))?;
        let mut first = 0;
        for g in 0..self.reader.num_row_groups() {
            let what = format!("row group {g} is unreadable");
            let group = self
                .reader
                .get_row_group(g)
                .map_err(|e| parquet_err(&self.path, &what, e))?;
            let rows: Vec<Row> = group
                .get_row_iter(Some(projection.clone()))
                .map_err(|e| parquet_err(&self.path, &what, e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| parquet_err(&self.path, &what, e))?;
            let n = rows.len();
            visit(first, rows)?;
            first += n;
        }
        Ok(())
    }
}

/// The `i`-th field of a projected row.
fn field(row: &Row, i: usize) -> &Field {
    row.get_column_iter()
        .nth(i)
        .expect("rows hold the projected columns")
        .1
}

/// The encoded image of a field: binary, or the `bytes` of an HF `Image` struct.
fn image_bytes(f: &Field) -> std::result::Result<&[u8], String> {
    match f {
        Field::Bytes(b) => Ok(b.data()),
        Field::Group(row) => match row.get_column_iter().find(|(n, _)| *n == "bytes") {
            Some((_, Field::Bytes(b))) => Ok(b.data()),
            _ => {
                let path = row
                    .get_column_iter()
                    .find_map(|(n, v)| (n == "path").then(|| v.to_string()))
                    .unwrap_or_else(|| "none".into());
                Err(format!(
                    "the image has no bytes, only a path ({path}); multimix reads images \
                     embedded in the parquet file"
                ))
            }
        },
        Field::Null => Err("the image is null".into()),
        other => Err(format!("the image is not binary: {other}")),
    }
}

/// A label field as a class id.
fn label_value(f: &Field) -> std::result::Result<u32, String> {
    let v: i128 = match *f {
        Field::Byte(v) => v.into(),
        Field::Short(v) => v.into(),
        Field::Int(v) => v.into(),
        Field::Long(v) => v.into(),
        Field::UByte(v) => v.into(),
        Field::UShort(v) => v.into(),
        Field::UInt(v) => v.into(),
        Field::ULong(v) => v.into(),
        Field::Null => return Err("the label is null".into()),
        ref other => return Err(format!("the label is not an integer: {other}")),
    };
    match u32::try_from(v) {
        Ok(v) => Ok(v),
        Err(_) if v < 0 => Err(format!(
            "label {v} is negative (HF datasets marks a missing label with -1: this split has \
             no labels; use a labelled split)"
        )),
        Err(_) => Err(format!("label {v} is too large for a class id")),
    }
}

/// What the first pass learns about one image.
#[derive(Debug, Clone, Copy)]
struct Header {
    height: usize,
    width: usize,
    gray: bool,
}

fn row_err(path: &Path, row: usize, message: impl std::fmt::Display) -> DataError {
    format_err(path, format!("row {row}: {message}"))
}

/// The header of encoded image bytes.
fn header_of(bytes: &[u8]) -> std::result::Result<Header, String> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let (height, width, gray) = image_header(reader).map_err(|e| e.to_string())?;
    Ok(Header {
        height,
        width,
        gray,
    })
}

fn not_image(e: impl std::fmt::Display) -> String {
    format!("the image bytes are not a readable PNG or JPEG image: {e}")
}

/// The images and labels of one split, before decoding.
struct Scan {
    /// Per shard: its rows' headers and labels.
    shards: Vec<(Vec<Header>, Vec<u32>)>,
    /// Class names from the first shard's `ClassLabel` feature.
    class_names: Option<Vec<String>>,
}

/// First pass: labels and image headers of every row of every shard.
fn scan(shards: &[Shard]) -> Result<Scan> {
    let mut out = Vec::with_capacity(shards.len());
    for shard in shards {
        let (mut headers, mut labels) = (Vec::new(), Vec::new());
        let columns = [shard.image.clone(), shard.label.clone()];
        shard.for_each_row_group(&columns, |first, rows| {
            let scanned: Vec<(Header, u32)> = rows
                .par_iter()
                .enumerate()
                .map(|(i, row)| {
                    let err = |m| row_err(&shard.path, first + i, m);
                    let bytes = image_bytes(field(row, 0)).map_err(err)?;
                    let header = header_of(bytes).map_err(|e| err(not_image(e)))?;
                    let label = label_value(field(row, 1)).map_err(err)?;
                    Ok((header, label))
                })
                .collect::<Result<_>>()?;
            for (h, y) in scanned {
                headers.push(h);
                labels.push(y);
            }
            Ok(())
        })?;
        out.push((headers, labels));
    }
    Ok(Scan {
        class_names: shards.first().and_then(Shard::class_names),
        shards: out,
    })
}

/// The size every image has, or an error naming two that differ.
fn common_size(shards: &[Shard], scan: &Scan) -> Result<(usize, usize)> {
    let all = scan
        .shards
        .iter()
        .enumerate()
        .flat_map(|(s, (headers, _))| {
            headers
                .iter()
                .enumerate()
                .map(move |(r, h)| (s, r, (h.height, h.width)))
        });
    let mut first = None;
    for (s, r, size) in all {
        match first {
            None => first = Some((s, r, size)),
            Some((s0, r0, size0)) if size0 != size => {
                return Err(DataError::Invalid(format!(
                    "images of different sizes: {} row {r0} is {}x{}, {} row {r} is {}x{} \
                     (height x width); multimix reads parquet sets whose images share one size",
                    shards[s0].path.display(),
                    size0.0,
                    size0.1,
                    shards[s].path.display(),
                    size.0,
                    size.1
                )))
            }
            Some(_) => {}
        }
    }
    first.map(|(_, _, size)| size).ok_or_else(|| {
        let files: Vec<String> = shards
            .iter()
            .map(|s| s.path.display().to_string())
            .collect();
        DataError::NotFound(format!("no rows in {}", files.join(", ")))
    })
}

/// Second pass: decode every image of `shards` into `images` (`per` bytes per image).
fn decode_all(
    shards: &[Shard],
    channels: usize,
    size: (usize, usize),
    images: &mut [u8],
) -> Result<()> {
    let per = channels * size.0 * size.1;
    let mut rest = images;
    for shard in shards {
        shard.for_each_row_group(std::slice::from_ref(&shard.image), |first, rows| {
            let (slots, tail) = std::mem::take(&mut rest).split_at_mut(rows.len() * per);
            rest = tail;
            slots
                .par_chunks_mut(per)
                .zip(rows.par_iter())
                .enumerate()
                .try_for_each(|(i, (dst, row))| {
                    let err = |m| row_err(&shard.path, first + i, m);
                    let bytes = image_bytes(field(row, 0)).map_err(err)?;
                    let img = image::load_from_memory(bytes).map_err(|e| err(not_image(e)))?;
                    write_chw(&img, channels, size, dst);
                    Ok(())
                })
        })?;
    }
    Ok(())
}

/// How a split is read: the class list and shape to impose (a test split takes the training
/// split's), or `None` to take them from the data.
#[derive(Debug, Clone, Default)]
pub struct SplitLayout<'a> {
    /// The class names.
    pub classes: Option<&'a [String]>,
    /// Channels per image.
    pub channels: Option<usize>,
    /// Image size (height, width); every image is resized to it.
    pub size: Option<(usize, usize)>,
}

/// Read the parquet shards `files` of one split, in order, as one data set named `name`.
///
/// Unless `layout` imposes them, gray images give one channel and any color image three, all
/// images must have one size, and the classes are the `ClassLabel` names or `0..=max label`.
pub fn read_parquet_split(
    files: &[PathBuf],
    name: String,
    layout: &SplitLayout<'_>,
) -> Result<Dataset> {
    let shards: Vec<Shard> = files
        .iter()
        .map(|p| Shard::open(p))
        .collect::<Result<_>>()?;
    let scan = scan(&shards)?;
    let size = match layout.size {
        Some(size) => size,
        None => common_size(&shards, &scan)?,
    };
    let headers = scan.shards.iter().flat_map(|(h, _)| h);
    let channels = layout
        .channels
        .unwrap_or(if headers.clone().all(|h| h.gray) {
            1
        } else {
            3
        });
    let labels: Vec<u32> = scan.shards.iter().flat_map(|(_, y)| y).copied().collect();
    let classes: Vec<String> = match (layout.classes, scan.class_names) {
        (Some(c), _) => c.to_vec(),
        (None, Some(c)) => c,
        (None, None) => {
            let max = labels.iter().max().copied().unwrap_or(0);
            (0..=max).map(|y| y.to_string()).collect()
        }
    };
    let mut images = vec![0u8; labels.len() * channels * size.0 * size.1];
    decode_all(&shards, channels, size, &mut images)?;
    Dataset::new(
        name,
        images,
        labels,
        (channels, size.0, size.1),
        classes.len(),
        classes,
    )
}
