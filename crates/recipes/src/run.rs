//! The run directory: `config.toml`, `model.safetensors`, `checkpoint.safetensors`,
//! `metrics.jsonl`, and the reports. Every file is written atomically (temporary file, then
//! rename), so an interrupted run never leaves a half-written file behind.

use crate::config::TrainConfig;
use crate::error::{io_error, RecipeError, Result};
use multimix_eval::plot::{Figure, Legend};
use multimix_hub::checkpoint::write_atomic;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Optimizer steps done so far.
    pub step: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Top-1 accuracy on the test split after the epoch (a detection run's test AP50).
    pub test_accuracy: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Training throughput (images per second of training steps).
    pub images_per_sec: f64,
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

/// File names inside a run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// The published weights.
pub const MODEL_FILE: &str = "model.safetensors";
/// Everything needed to resume.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// One JSON line per epoch.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The evaluation report, machine-readable.
pub const REPORT_JSON: &str = "report.json";
/// The evaluation report, for people.
pub const REPORT_MD: &str = "report.md";
/// Training loss, test accuracy and learning rate per epoch, plotted.
pub const CURVES_PNG: &str = "training_curves.png";

impl RunDir {
    /// A new run directory at `path`: created if absent; an existing one must be empty, so that
    /// nothing of an earlier run is overwritten (use `--resume` to continue it).
    pub fn create(path: &Path) -> Result<Self> {
        if path.exists() {
            let mut entries = std::fs::read_dir(path).map_err(io_error(path))?;
            if entries.next().is_some() {
                return Err(RecipeError::Config(format!(
                    "run directory {} already exists and is not empty: choose another --out, or --resume it",
                    path.display()
                )));
            }
        }
        std::fs::create_dir_all(path).map_err(io_error(path))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// An existing run directory (it must hold `config.toml`).
    pub fn open(path: &Path) -> Result<Self> {
        let config = path.join(CONFIG_FILE);
        if !config.is_file() {
            return Err(RecipeError::Config(format!(
                "{} is not a run directory: {} is missing",
                path.display(),
                config.display()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// The default location `runs/<architecture>-<method>-s<seed>-<UTC timestamp>`.
    pub fn default_path(cfg: &TrainConfig) -> PathBuf {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from("runs").join(format!(
            "{}-{}-s{}-{}",
            cfg.model.architecture,
            cfg.mix.method,
            cfg.seed,
            utc_timestamp(secs)
        ))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file of the run.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Read `config.toml`.
    pub fn read_config(&self) -> Result<TrainConfig> {
        let path = self.file(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        TrainConfig::from_toml(&text)
            .map_err(|e| RecipeError::Config(format!("{}: {e}", path.display())))
    }

    /// Write `config.toml`.
    pub fn write_config(&self, cfg: &TrainConfig) -> Result<()> {
        let text = cfg
            .to_toml()
            .map_err(|e| RecipeError::Config(format!("cannot write the configuration: {e}")))?;
        self.write(CONFIG_FILE, text.as_bytes())
    }

    /// Write `metrics.jsonl` with one line per epoch.
    pub fn write_metrics(&self, metrics: &[EpochMetrics]) -> Result<()> {
        let mut text = String::new();
        for m in metrics {
            let line = serde_json::to_string(m).map_err(|e| RecipeError::Config(e.to_string()))?;
            text.push_str(&line);
            text.push('\n');
        }
        self.write(METRICS_FILE, text.as_bytes())
    }

    /// Write `training_curves.png`: train loss and learning rate (each divided by its maximum,
    /// named in the legend) and the test score of [`EpochMetrics::test_accuracy`] under the
    /// legend `score` (`"test accuracy"`, or `"test AP50"` for a detection run), per epoch.
    pub fn write_curves(&self, metrics: &[EpochMetrics], score: &str) -> Result<()> {
        let series = |f: fn(&EpochMetrics) -> f64| -> (Vec<(f64, f64)>, f64) {
            let max = metrics.iter().map(f).fold(f64::MIN_POSITIVE, f64::max);
            let points = metrics
                .iter()
                .map(|m| (m.epoch as f64, f(m) / max))
                .collect();
            (points, max)
        };
        let (loss, loss_max) = series(|m| m.train_loss);
        let (lr, lr_max) = series(|m| m.lr);
        let accuracy = metrics
            .iter()
            .map(|m| (m.epoch as f64, m.test_accuracy))
            .collect();
        let last = metrics.last().map_or(1, |m| m.epoch).max(2) as f64;
        let figure = Figure::new("training curves")
            .labels("epoch", "value")
            .x_range(1.0, last)
            .y_range(0.0, 1.0)
            .line(format!("train loss / {loss_max:.3}"), loss)
            .line(score, accuracy)
            .line(format!("lr / {lr_max:.2e}"), lr)
            .legend(Legend::LowerLeft);
        let png = figure
            .to_png()
            .map_err(|e| RecipeError::Config(format!("plotting {CURVES_PNG}: {e}")))?;
        self.write(CURVES_PNG, &png)
    }

    /// Write a file of the run atomically.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.file(name);
        write_atomic(&path, bytes).map_err(io_error(path))
    }
}

/// `YYYYmmdd-HHMMSS` in UTC for seconds since the Unix epoch (Howard Hinnant's civil-from-days).
pub fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The state of the run's RNG, to store in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte seed, hex.
    pub seed: String,
    /// The stream.
    pub stream: u64,
    /// The position in the stream, in 32-bit words (decimal: it can exceed 2^64).
    pub word_pos: String,
}

impl RngState {
    /// Capture `rng`.
    pub fn capture(rng: &ChaCha8Rng) -> Self {
        Self {
            seed: rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    /// Rebuild the generator.
    pub fn restore(&self) -> Result<ChaCha8Rng> {
        use rand::SeedableRng;
        let bad = || RecipeError::Config(format!("corrupt RNG state in checkpoint: {self:?}"));
        if self.seed.len() != 64 {
            return Err(bad());
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&self.seed[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse().map_err(|_| bad())?);
        Ok(rng)
    }
}
