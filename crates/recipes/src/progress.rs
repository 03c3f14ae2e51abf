//! Progress reporting: a terminal bar (epoch, step, loss, images/s, ETA) or plain lines.

use crate::run::EpochMetrics;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Receives training progress.
pub trait Progress {
    /// The run starts: `total_steps` optimizer steps in all, `done` of them already (resume).
    fn start(&mut self, total_steps: usize, done: usize);
    /// A step finished.
    fn step(&mut self, epoch: usize, epochs: usize, loss: f64, images_per_sec: f64);
    /// An epoch finished.
    fn epoch(&mut self, metrics: &EpochMetrics, epochs: usize);
    /// Training finished.
    fn finish(&mut self);
}

/// No output (tests, library use).
#[derive(Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn start(&mut self, _: usize, _: usize) {}
    fn step(&mut self, _: usize, _: usize, _: f64, _: f64) {}
    fn epoch(&mut self, _: &EpochMetrics, _: usize) {}
    fn finish(&mut self) {}
}

/// A progress bar on stderr when it is a terminal; one line per epoch otherwise.
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl Bar {
    /// A bar drawn on stderr if it is a terminal.
    pub fn new() -> Self {
        Self { bar: None }
    }
}

impl Progress for Bar {
    fn start(&mut self, total_steps: usize, done: usize) {
        let bar =
            ProgressBar::with_draw_target(Some(total_steps as u64), ProgressDrawTarget::stderr());
        if !std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] step {pos}/{len} | {msg} | ETA {eta}",
        )
        .map(|s| s.progress_chars("=> "));
        if let Ok(style) = style {
            bar.set_style(style);
        }
        bar.set_position(done as u64);
        bar.reset_eta();
        self.bar = Some(bar);
    }

    fn step(&mut self, epoch: usize, epochs: usize, loss: f64, images_per_sec: f64) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(format!("epoch {epoch}/{epochs}"));
            bar.set_message(format!("loss {loss:.4} | {images_per_sec:.0} img/s"));
            bar.inc(1);
        }
    }

    fn epoch(&mut self, m: &EpochMetrics, epochs: usize) {
        let line = format!(
            "epoch {}/{epochs}: train loss {:.4}, test accuracy {:.2}%, lr {:.2e}, {:.0} img/s",
            m.epoch,
            m.train_loss,
            100.0 * m.test_accuracy,
            m.lr,
            m.images_per_sec
        );
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
