//! What hf-hub reports during a download: drawn as a progress bar on a terminal, and kept so
//! the download can be checked afterwards (which files were transferred, and their announced
//! sizes).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use hf_hub::progress::{DownloadEvent, FileStatus, Progress, ProgressEvent, ProgressHandler};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What one download call did to one file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferRecord {
    /// Bytes were transferred (the file was not served from the cache).
    pub transferred: bool,
    /// The size the hub announced (0 when it announced none).
    pub total_bytes: u64,
    /// Bytes received so far.
    pub bytes_completed: u64,
}

/// The state behind the handler given to hf-hub.
struct Inner {
    label: String,
    draw: bool,
    total_bytes: u64,
    files: BTreeMap<String, TransferRecord>,
    bar: Option<ProgressBar>,
}

/// Records the events of one download call and draws its progress bar.
pub struct TransferLog(Arc<Mutex<Inner>>);

/// The handler registered with hf-hub.
struct Handler(Arc<Mutex<Inner>>);

impl TransferLog {
    /// A log for a download of `label` (file names); `draw` enables the bar, which is only
    /// drawn on a terminal and only once bytes flow.
    pub fn new(label: &str, draw: bool) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            label: label.to_string(),
            draw,
            total_bytes: 0,
            files: BTreeMap::new(),
            bar: None,
        })))
    }

    /// The handler to pass to hf-hub's `.progress(...)`.
    pub fn handler(&self) -> Progress {
        Progress::new(Handler(Arc::clone(&self.0)))
    }

    /// What happened to `file`.
    pub fn record(&self, file: &str) -> TransferRecord {
        lock(&self.0).files.get(file).copied().unwrap_or_default()
    }

    /// Finish the bar, if one was drawn.
    pub fn finish(&self) {
        if let Some(bar) = lock(&self.0).bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for TransferLog {
    fn drop(&mut self) {
        if let Some(bar) = lock(&self.0).bar.take() {
            bar.abandon();
        }
    }
}

/// The lock, also after a panic elsewhere (the state stays usable: it is only counters).
fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inner {
    fn bar(&mut self) -> &ProgressBar {
        let (label, total, draw) = (self.label.clone(), self.total_bytes, self.draw);
        self.bar.get_or_insert_with(|| {
            let target = if draw {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            };
            let bar = ProgressBar::with_draw_target(Some(total), target);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label);
            bar
        })
    }
}

impl ProgressHandler for Handler {
    fn on_progress(&self, event: &ProgressEvent) {
        let ProgressEvent::Download(event) = event else {
            return;
        };
        let mut inner = lock(&self.0);
        match event {
            DownloadEvent::Start { total_bytes, .. } => inner.total_bytes = *total_bytes,
            DownloadEvent::Progress { files } => {
                for f in files {
                    let record = inner.files.entry(f.filename.clone()).or_default();
                    record.total_bytes = record.total_bytes.max(f.total_bytes);
                    if f.status != FileStatus::Complete {
                        record.transferred = true;
                        record.bytes_completed = f.bytes_completed;
                    }
                }
                let done: u64 = inner
                    .files
                    .values()
                    .filter(|r| r.transferred)
                    .map(|r| r.bytes_completed)
                    .sum();
                if inner.files.values().any(|r| r.transferred) {
                    inner.bar().set_position(done);
                }
            }
            DownloadEvent::AggregateProgress {
                bytes_completed, ..
            } => inner.bar().set_position(*bytes_completed),
            DownloadEvent::Complete => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hf_hub::progress::FileProgress;

    fn file(name: &str, done: u64, total: u64, status: FileStatus) -> DownloadEvent {
        DownloadEvent::Progress {
            files: vec![FileProgress {
                filename: name.into(),
                bytes_completed: done,
                total_bytes: total,
                status,
            }],
        }
    }

    #[test]
    fn transfers_and_cache_hits_are_told_apart() {
        let log = TransferLog::new("a, b", false);
        let h = log.handler();
        let events = [
            DownloadEvent::Start {
                total_files: 2,
                total_bytes: 10,
            },
            file("a", 0, 10, FileStatus::Started),
            file("a", 4, 10, FileStatus::InProgress),
            file("a", 10, 10, FileStatus::Complete),
            file("b", 7, 7, FileStatus::Complete),
        ];
        for e in events {
            h.on_progress(&ProgressEvent::Download(e));
        }
        let a = log.record("a");
        assert!(a.transferred);
        assert_eq!((a.total_bytes, a.bytes_completed), (10, 4));
        let b = log.record("b");
        assert!(!b.transferred);
        assert_eq!(log.record("c"), TransferRecord::default());
        log.finish();
    }
}
