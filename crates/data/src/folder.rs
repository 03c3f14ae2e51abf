//! Image folders: one subfolder per class (as torchvision's `ImageFolder`), PNG and JPEG.
//!
//! `DIR/<class>/<image>` gives one data set; `DIR/train/<class>/…` with `DIR/test/<class>/…`
//! (or `DIR/val/`) gives a training and a test split. Class ids are the sorted class folder
//! names. Files are read in two passes: the headers first (sizes and colors, to choose one shape),
//! then every image is decoded straight into its slot of the data set, on all cores.

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::spec::Splits;
use crate::transform::resize_bilinear;
use image::{ColorType, DynamicImage, ImageDecoder, ImageError, ImageReader};
use rayon::prelude::*;
use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};

/// File extensions read as images (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// One image file with what its header says.
#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    label: u32,
    height: usize,
    width: usize,
    gray: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn image_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        message: format!("not a readable PNG or JPEG image: {e}"),
    }
}

/// The entries of `dir` that pass `keep`, sorted by name; hidden entries are skipped.
fn sorted_entries(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if !hidden && keep(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn is_image_file(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The class folder names of `root`, sorted.
pub fn class_names(root: &Path) -> Result<Vec<String>> {
    let classes: Vec<String> = sorted_entries(root, Path::is_dir)?
        .iter()
        .map(|p| file_name(p))
        .collect();
    if classes.is_empty() {
        return Err(DataError::NotFound(format!(
            "{}: no class folders; expected one subfolder per class holding its images \
             ({}/<class>/<image>.png or .jpg), optionally under train/ and test/",
            root.display(),
            root.display()
        )));
    }
    Ok(classes)
}

/// Read the header of `path`: (height, width, whether it is gray).
fn read_header(path: &Path) -> Result<(usize, usize, bool)> {
    let reader = ImageReader::open(path)
        .map_err(io_err(path))?
        .with_guessed_format()
        .map_err(io_err(path))?;
    image_header(reader).map_err(|e| image_err(path, e))
}

/// The header of an image: (height, width, whether it is gray).
pub(crate) fn image_header<R: BufRead + Seek>(
    reader: ImageReader<R>,
) -> std::result::Result<(usize, usize, bool), ImageError> {
    let decoder = reader.into_decoder()?;
    let (w, h) = decoder.dimensions();
    let gray = matches!(
        decoder.color_type(),
        ColorType::L8 | ColorType::La8 | ColorType::L16 | ColorType::La16
    );
    Ok((h as usize, w as usize, gray))
}

/// Write `img` into `dst` as `C × H × W` (gray or RGB; alpha dropped), resized to `(h, w)`.
pub(crate) fn write_chw(
    img: &DynamicImage,
    channels: usize,
    (h, w): (usize, usize),
    dst: &mut [u8],
) {
    let hwc = if channels == 1 {
        img.to_luma8().into_raw()
    } else {
        img.to_rgb8().into_raw()
    };
    let (ih, iw) = (img.height() as usize, img.width() as usize);
    let chw: Vec<u8> = (0..channels)
        .flat_map(|c| hwc.iter().skip(c).step_by(channels).copied())
        .collect();
    dst.copy_from_slice(&resize_bilinear(&chw, (channels, ih, iw), (h, w)));
}

/// Decode `e` into `dst` as `C × H × W` (gray or RGB; alpha dropped), resized to `(h, w)`.
fn decode_into(e: &Entry, channels: usize, size: (usize, usize), dst: &mut [u8]) -> Result<()> {
    let img = ImageReader::open(&e.path)
        .map_err(io_err(&e.path))?
        .with_guessed_format()
        .map_err(io_err(&e.path))?
        .decode()
        .map_err(|err| image_err(&e.path, err))?;
    write_chw(&img, channels, size, dst);
    Ok(())
}

/// Read the class folders of `root` as one data set. `classes` fixes the class list (a test
/// split uses the training split's); `shape` fixes channels and size, otherwise gray images
/// give one channel, any color image three, and all images must have one size.
pub fn read_class_folders(
    root: &Path,
    name: String,
    classes: Option<&[String]>,
    channels: Option<usize>,
    size: Option<(usize, usize)>,
) -> Result<Dataset> {
    let found = class_names(root)?;
    let classes: Vec<String> = classes.map_or_else(|| found.clone(), <[String]>::to_vec);
    let mut files = Vec::new();
    for folder in &found {
        let label = classes.iter().position(|c| c == folder).ok_or_else(|| {
            DataError::Invalid(format!(
                "{}: class folder `{folder}` is not a class of the training split ({})",
                root.display(),
                classes.join(", ")
            ))
        })?;
        let dir = root.join(folder);
        let images = sorted_entries(&dir, is_image_file)?;
        if images.is_empty() {
            return Err(DataError::NotFound(format!(
                "{}: no image in this class folder (expected .png, .jpg or .jpeg files)",
                dir.display()
            )));
        }
        files.extend(images.into_iter().map(|p| (p, label as u32)));
    }
    let entries: Vec<Entry> = files
        .into_par_iter()
        .map(|(path, label)| {
            let (height, width, gray) = read_header(&path)?;
            Ok(Entry {
                path,
                label,
                height,
                width,
                gray,
            })
        })
        .collect::<Result<_>>()?;
    let channels = channels.unwrap_or(if entries.iter().all(|e| e.gray) { 1 } else { 3 });
    let (h, w) = match size {
        Some(s) => s,
        None => common_size(root, &entries)?,
    };
    let per = channels * h * w;
    let mut images = vec![0u8; entries.len() * per];
    images
        .par_chunks_mut(per)
        .zip(&entries)
        .try_for_each(|(dst, e)| decode_into(e, channels, (h, w), dst))?;
    let labels = entries.iter().map(|e| e.label).collect();
    Dataset::new(
        name,
        images,
        labels,
        (channels, h, w),
        classes.len(),
        classes,
    )
}

/// The size every image has, or an error naming two that differ and how to fix it.
fn common_size(root: &Path, entries: &[Entry]) -> Result<(usize, usize)> {
    let first = &entries[0];
    match entries
        .iter()
        .find(|e| (e.height, e.width) != (first.height, first.width))
    {
        None => Ok((first.height, first.width)),
        Some(other) => Err(DataError::Invalid(format!(
            "{}: images of different sizes ({} is {}x{}, {} is {}x{}, height x width); \
             give the size to resize them all to in the data spec, e.g. `folder:{}@{}x{}`",
            root.display(),
            first.path.display(),
            first.height,
            first.width,
            other.path.display(),
            other.height,
            other.width,
            root.display(),
            first.height,
            first.width
        ))),
    }
}

/// Load an image folder: `dir/train` + `dir/test` (or `dir/val`) as two splits, or `dir` itself
/// as a test split only (for evaluation and OOD sets). The test split takes the training split's
/// classes, channels and size. `size` (height, width) resizes every image.
pub fn load_folder(dir: &Path, size: Option<(usize, usize)>, name: &str) -> Result<Splits> {
    if !dir.is_dir() {
        return Err(DataError::NotFound(format!(
            "image folder {} does not exist (expected {}/<class>/<image>.png, optionally under \
             train/ and test/)",
            dir.display(),
            dir.display()
        )));
    }
    let train_dir = dir.join("train");
    if !train_dir.is_dir() {
        let test = read_class_folders(dir, format!("{name}/test"), None, None, size)?;
        return Ok(Splits { train: None, test });
    }
    let test_dir = ["test", "val"]
        .iter()
        .map(|s| dir.join(s))
        .find(|d| d.is_dir())
        .ok_or_else(|| {
            DataError::NotFound(format!(
                "{}: has train/ but no test/ or val/ folder; add one (same class folders)",
                dir.display()
            ))
        })?;
    let train = read_class_folders(&train_dir, format!("{name}/train"), None, None, size)?;
    let test = read_class_folders(
        &test_dir,
        format!("{name}/test"),
        Some(&train.class_names),
        Some(train.channels),
        Some((train.height, train.width)),
    )?;
    Ok(Splits {
        train: Some(train),
        test,
    })
}
