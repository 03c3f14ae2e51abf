//! Data specs as written on the command line, and loading them.

use crate::cifar::{load_cifar, CifarKind};
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::folder::load_folder;
use crate::idx::{find_idx, idx_dataset, parse_idx, read_idx};
use crate::parquet::{read_parquet_split, SplitLayout};
use crate::transform::{convert_image, converts_channels};
use multimix_hub::remote::DEFAULT_REVISION;
use multimix_hub::{Hub, HubError, HubOptions, RepoId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Fashion-MNIST's class names.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// A data set named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    /// The embedded class-balanced Fashion-MNIST subset (10 000 train, 2 000 test); the default.
    FashionMnistMini,
    /// The embedded MNIST subset (2 000 images), the usual OOD partner of Fashion-MNIST.
    MnistMini,
    /// The full Fashion-MNIST: `$MULTIMIX_DATA/fashion-mnist` or Debian's package files.
    FashionMnist,
    /// A folder of IDX files `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`.
    Idx(PathBuf),
    /// The CIFAR-10 binary release (`data_batch_{1..5}.bin`, `test_batch.bin`) in a folder.
    Cifar10(PathBuf),
    /// The CIFAR-100 binary release (`train.bin`, `test.bin`; fine labels) in a folder.
    Cifar100(PathBuf),
    /// An image folder, one subfolder per class (optionally under `train/` and `test/` or
    /// `val/`), PNG or JPEG, every image resized to `size` (height, width) when given.
    Folder {
        /// The folder.
        dir: PathBuf,
        /// The size to resize every image to (`folder:DIR@HxW`).
        size: Option<(usize, usize)>,
    },
    /// Gaussian noise images, pixels i.i.d. `N(0.5, 1)` clipped to [0, 1] (ODIN's set).
    Gaussian,
    /// Uniform noise images, pixels i.i.d. `U[0, 1]`.
    Uniform,
    /// A Hugging Face data set repository stored as parquet (`hub:owner/name[/config][@rev]`),
    /// downloaded through `multimix_hub` (`HF_ENDPOINT`, `HF_HOME`, `HF_TOKEN`,
    /// `HF_HUB_OFFLINE`) and read by [`crate::parquet`].
    Hub {
        /// The repository, `owner/name`.
        repo: String,
        /// The configuration, when the repository holds several.
        config: Option<String>,
        /// The branch, tag or commit (`main` when not given).
        revision: Option<String>,
    },
}

const FORMS: &str = "fashion-mnist-mini, mnist-mini, fashion-mnist, idx:DIR, cifar10:DIR, \
                     cifar100:DIR, folder:DIR, folder:DIR@HxW, hub:owner/name[/config][@revision], \
                     gaussian, uniform";

/// Parse a `hub:` argument: `owner/name`, an optional `/config`, an optional `@revision`.
fn hub_spec(arg: &str) -> Option<DataSpec> {
    let (id, revision) = match arg.split_once('@') {
        Some((id, rev)) => (id, Some(rev)),
        None => (arg, None),
    };
    let mut parts = id.splitn(3, '/');
    let (owner, name, config) = (parts.next()?, parts.next()?, parts.next());
    let repo = format!("{owner}/{name}");
    RepoId::parse(&repo).ok()?;
    if revision.is_some_and(str::is_empty)
        || config.is_some_and(|c| c.is_empty() || c.contains('/'))
    {
        return None;
    }
    Some(DataSpec::Hub {
        repo,
        config: config.map(str::to_string),
        revision: revision.map(str::to_string),
    })
}

/// Parse a `folder:` argument: the folder, then an optional `@HxW` size suffix.
fn folder_spec(arg: &str) -> Option<DataSpec> {
    let size = arg.rsplit_once('@').and_then(|(dir, hw)| {
        let (h, w) = hw.split_once('x')?;
        let (h, w) = (h.parse::<usize>().ok()?, w.parse::<usize>().ok()?);
        (h > 0 && w > 0 && !dir.is_empty()).then_some((dir, (h, w)))
    });
    match size {
        Some((dir, size)) => Some(DataSpec::Folder {
            dir: dir.into(),
            size: Some(size),
        }),
        None => (!arg.is_empty()).then(|| DataSpec::Folder {
            dir: arg.into(),
            size: None,
        }),
    }
}

impl FromStr for DataSpec {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        let unknown = || DataError::UnknownSpec {
            spec: s.into(),
            expected: FORMS.into(),
        };
        Ok(match s {
            "fashion-mnist-mini" => Self::FashionMnistMini,
            "mnist-mini" | "mnist" => Self::MnistMini,
            "fashion-mnist" => Self::FashionMnist,
            "gaussian" => Self::Gaussian,
            "uniform" => Self::Uniform,
            _ => match s.split_once(':') {
                Some(("idx", dir)) if !dir.is_empty() => Self::Idx(PathBuf::from(dir)),
                Some(("cifar10", dir)) if !dir.is_empty() => Self::Cifar10(PathBuf::from(dir)),
                Some(("cifar100", dir)) if !dir.is_empty() => Self::Cifar100(PathBuf::from(dir)),
                Some(("folder", arg)) => folder_spec(arg).ok_or_else(unknown)?,
                Some(("hub", arg)) => hub_spec(arg).ok_or_else(unknown)?,
                _ => return Err(unknown()),
            },
        })
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FashionMnistMini => f.write_str("fashion-mnist-mini"),
            Self::MnistMini => f.write_str("mnist-mini"),
            Self::FashionMnist => f.write_str("fashion-mnist"),
            Self::Idx(dir) => write!(f, "idx:{}", dir.display()),
            Self::Cifar10(dir) => write!(f, "cifar10:{}", dir.display()),
            Self::Cifar100(dir) => write!(f, "cifar100:{}", dir.display()),
            Self::Folder { dir, size: None } => write!(f, "folder:{}", dir.display()),
            Self::Folder {
                dir,
                size: Some((h, w)),
            } => write!(f, "folder:{}@{h}x{w}", dir.display()),
            Self::Gaussian => f.write_str("gaussian"),
            Self::Uniform => f.write_str("uniform"),
            Self::Hub {
                repo,
                config,
                revision,
            } => {
                write!(f, "hub:{repo}")?;
                if let Some(c) = config {
                    write!(f, "/{c}")?;
                }
                if let Some(r) = revision {
                    write!(f, "@{r}")?;
                }
                Ok(())
            }
        }
    }
}

/// A training split (absent for evaluation-only sets) and a test split.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Training images.
    pub train: Option<Dataset>,
    /// Test images.
    pub test: Dataset,
}

macro_rules! asset {
    ($dir:literal, $file:literal) => {
        (
            concat!($dir, "/", $file),
            include_bytes!(concat!("../assets/", $dir, "/", $file)).as_slice(),
        )
    };
}

fn embedded_split(
    name: &str,
    images: (&str, &[u8]),
    labels: (&str, &[u8]),
    classes: Vec<String>,
) -> Result<Dataset> {
    let img = parse_idx(images.1, Path::new(images.0))?;
    let lab = parse_idx(labels.1, Path::new(labels.0))?;
    idx_dataset(
        name.to_string(),
        img,
        lab,
        Path::new(images.0),
        Some(classes),
    )
}

fn fashion_classes() -> Vec<String> {
    FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn digit_classes() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

/// Read `{split}-images-idx3-ubyte[.gz]` and labels from `dir`, or `None` if the split is absent.
fn idx_split(
    dir: &Path,
    split: &str,
    name: &str,
    classes: Option<Vec<String>>,
) -> Result<Option<Dataset>> {
    let (Some(img), Some(lab)) = (
        find_idx(dir, &format!("{split}-images-idx3-ubyte")),
        find_idx(dir, &format!("{split}-labels-idx1-ubyte")),
    ) else {
        return Ok(None);
    };
    idx_dataset(
        format!("{name}/{split}"),
        read_idx(&img)?,
        read_idx(&lab)?,
        &img,
        classes,
    )
    .map(Some)
}

/// The folder holding the full Fashion-MNIST: `$MULTIMIX_DATA/fashion-mnist` if set, else Debian's.
fn fashion_mnist_dir() -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(root) = std::env::var_os("MULTIMIX_DATA") {
        tried.push(PathBuf::from(root).join("fashion-mnist"));
    }
    tried.push(PathBuf::from(DEBIAN_FASHION_MNIST));
    tried
        .iter()
        .find(|d| find_idx(d, "train-images-idx3-ubyte").is_some())
        .cloned()
        .ok_or_else(|| {
            let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
            DataError::NotFound(format!(
                "Fashion-MNIST not found in {}: install it with `apt-get install dataset-fashion-mnist`, \
                 or put the IDX files in $MULTIMIX_DATA/fashion-mnist",
                list.join(" or ")
            ))
        })
}

impl DataSpec {
    /// Whether this is a synthetic noise set (it has no classes and is made to measure).
    pub fn is_noise(&self) -> bool {
        matches!(self, Self::Gaussian | Self::Uniform)
    }

    /// Load a real data set's splits. Noise sets are made with [`DataSpec::load_ood`].
    pub fn load(&self) -> Result<Splits> {
        match self {
            Self::FashionMnistMini => {
                let c = fashion_classes();
                Ok(Splits {
                    train: Some(embedded_split(
                        "fashion-mnist-mini/train",
                        asset!("fashion-mnist-mini", "train-images-idx3-ubyte.gz"),
                        asset!("fashion-mnist-mini", "train-labels-idx1-ubyte.gz"),
                        c.clone(),
                    )?),
                    test: embedded_split(
                        "fashion-mnist-mini/test",
                        asset!("fashion-mnist-mini", "t10k-images-idx3-ubyte.gz"),
                        asset!("fashion-mnist-mini", "t10k-labels-idx1-ubyte.gz"),
                        c,
                    )?,
                })
            }
            Self::MnistMini => Ok(Splits {
                train: None,
                test: embedded_split(
                    "mnist-mini/test",
                    asset!("mnist-mini", "t10k-images-idx3-ubyte.gz"),
                    asset!("mnist-mini", "t10k-labels-idx1-ubyte.gz"),
                    digit_classes(),
                )?,
            }),
            Self::FashionMnist => {
                let dir = fashion_mnist_dir()?;
                load_idx_dir(&dir, "fashion-mnist", Some(fashion_classes()))
            }
            Self::Idx(dir) => load_idx_dir(dir, &self.to_string(), None),
            Self::Cifar10(dir) => load_cifar(CifarKind::Cifar10, dir, &self.to_string()),
            Self::Cifar100(dir) => load_cifar(CifarKind::Cifar100, dir, &self.to_string()),
            Self::Folder { dir, size } => load_folder(dir, *size, &self.to_string()),
            Self::Hub {
                repo,
                config,
                revision,
            } => load_hub(
                self.to_string(),
                repo,
                config.as_deref(),
                revision.as_deref(),
                true,
            ),
            Self::Gaussian | Self::Uniform => Err(DataError::Invalid(format!(
                "`{self}` is a noise set for OOD evaluation; it has no training split"
            ))),
        }
    }

    /// An OOD set shaped like `like` (same channels, height and width; `count` images): the test
    /// split of a real data set (gray converted to RGB when needed), or noise drawn from `seed`.
    pub fn load_ood(&self, like: &Dataset, count: usize, seed: u64) -> Result<Dataset> {
        let shape = (like.channels, like.height, like.width);
        match self {
            Self::Gaussian | Self::Uniform => noise(self, shape, count, seed),
            Self::Hub {
                repo,
                config,
                revision,
            } => {
                let name = self.to_string();
                let splits = load_hub(name, repo, config.as_deref(), revision.as_deref(), false)?;
                conform(splits.test, shape)
            }
            _ => conform(self.load()?.test, shape),
        }
    }
}

/// Download a hub data set's parquet files (the train split only `with_train`) and read them;
/// the test split takes the training split's classes, channels and size. `name` is the spec.
fn load_hub(
    name: String,
    repo: &str,
    config: Option<&str>,
    revision: Option<&str>,
    with_train: bool,
) -> Result<Splits> {
    let hub_err = |e: HubError| DataError::Hub(Box::new(e));
    let repo = RepoId::parse(repo).map_err(hub_err)?;
    let hub = Hub::new(HubOptions::from_env()).map_err(hub_err)?;
    let revision = revision.unwrap_or(DEFAULT_REVISION);
    let files = hub
        .download_dataset(&repo, revision, config, with_train)
        .map_err(hub_err)?;
    let train = if with_train {
        let layout = SplitLayout::default();
        Some(read_parquet_split(
            &files.train,
            format!("{name}/train"),
            &layout,
        )?)
    } else {
        None
    };
    let layout = match &train {
        Some(t) => SplitLayout {
            classes: Some(&t.class_names),
            channels: Some(t.channels),
            size: Some((t.height, t.width)),
        },
        None => SplitLayout::default(),
    };
    let test = read_parquet_split(&files.test, format!("{name}/{}", files.test_split), &layout)?;
    Ok(Splits { train, test })
}

fn load_idx_dir(dir: &Path, name: &str, classes: Option<Vec<String>>) -> Result<Splits> {
    if !dir.is_dir() {
        return Err(DataError::NotFound(format!(
            "data folder {} does not exist (expected IDX files train-images-idx3-ubyte[.gz] …)",
            dir.display()
        )));
    }
    let train = idx_split(dir, "train", name, classes.clone())?;
    let test = idx_split(dir, "t10k", name, classes)?.ok_or_else(|| {
        DataError::NotFound(format!(
            "{}: no test split (t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz])",
            dir.display()
        ))
    })?;
    Ok(Splits { train, test })
}

/// Noise images of `shape`, quantized to 8 bits like real images.
fn noise(
    spec: &DataSpec,
    (c, h, w): (usize, usize, usize),
    count: usize,
    seed: u64,
) -> Result<Dataset> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = count * c * h * w;
    let pixels: Vec<u8> = match spec {
        DataSpec::Gaussian => {
            let normal = Normal::new(0.5f64, 1.0).map_err(|e| DataError::Invalid(e.to_string()))?;
            (0..n)
                .map(|_| (normal.sample(&mut rng).clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect()
        }
        _ => (0..n)
            .map(|_| (rng.random::<f64>() * 255.0).round() as u8)
            .collect(),
    };
    Dataset::new(
        spec.to_string(),
        pixels,
        vec![0; count],
        (c, h, w),
        1,
        vec!["noise".into()],
    )
}

/// Convert `ds` to `shape` (channels, height, width) as the model takes it: unchanged when it
/// fits, else per image gray repeated to RGB (or RGB to luma), then a bilinear resize
/// ([`crate::transform::convert_image`]). The input is consumed, so only the converted images
/// stay in memory.
pub fn conform(ds: Dataset, (c, h, w): (usize, usize, usize)) -> Result<Dataset> {
    let from = (ds.channels, ds.height, ds.width);
    if from == (c, h, w) {
        return Ok(ds);
    }
    if h == 0 || w == 0 || !converts_channels(ds.channels, c) {
        return Err(DataError::Invalid(format!(
            "{} has images of {}x{}x{}, the model takes {c}x{h}x{w}: only 1 and 3 channels \
             convert into each other",
            ds.name, ds.channels, ds.height, ds.width
        )));
    }
    let mut pixels = Vec::with_capacity(ds.len() * c * h * w);
    for img in ds.images.chunks_exact(ds.image_len()) {
        let out = convert_image(img, from, (c, h, w)).expect("channels checked above");
        pixels.extend_from_slice(&out);
    }
    Dataset::new(
        ds.name,
        pixels,
        ds.labels,
        (c, h, w),
        ds.num_classes,
        ds.class_names,
    )
}
