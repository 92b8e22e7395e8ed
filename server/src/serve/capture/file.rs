//! The file sink: JSON Lines in `<dir>/capture-<UTC time>-<n>.jsonl`, rotated
//! when a file reaches `max_file_bytes` or has been open `rotate_interval`;
//! only the newest `keep_files` rotated files are kept. Writes go through a
//! buffer flushed whenever the queue runs dry, so a reader sees every record
//! the sink has taken within moments. Disk errors drop records, counted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{CaptureSettings, Record, next_batch};
use crate::metrics::CaptureSinkMetrics;

pub(super) struct FileSink {
    dir: PathBuf,
    max_file_bytes: u64,
    rotate_interval: Duration,
    keep_files: usize,
    metrics: CaptureSinkMetrics,
    current: Option<Open>,
    sequence: u64,
    /// One line's buffer, reused for every record.
    line: String,
}

struct Open {
    writer: std::io::BufWriter<std::fs::File>,
    written: u64,
    opened: Instant,
}

impl FileSink {
    pub(super) fn new(
        dir: &Path,
        settings: &CaptureSettings,
        metrics: CaptureSinkMetrics,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|err| format!("--capture-dir {}: {err}", dir.display()))?;
        Ok(FileSink {
            dir: dir.to_owned(),
            max_file_bytes: settings.max_file_bytes.max(1024),
            rotate_interval: settings.rotate_interval,
            keep_files: settings.keep_files.max(1),
            metrics,
            current: None,
            sequence: 0,
            line: String::new(),
        })
    }

    pub(super) async fn run(
        mut self,
        mut records: mpsc::Receiver<Arc<Record>>,
        stop: CancellationToken,
    ) {
        // Runs on its own thread (see `Capture::start`): writing blocks it, not a reactor.
        while let Some(batch) = next_batch(&mut records, &stop, 256).await {
            self.metrics.queue.sub(batch.len() as i64);
            self.write(&batch);
        }
    }

    fn write(&mut self, batch: &[Arc<Record>]) {
        for record in batch {
            let mut line = std::mem::take(&mut self.line);
            line.clear();
            record.write_json_line(&mut line);
            let result = self.file(line.len() as u64);
            let written = match result {
                Ok(open) => match open.writer.write_all(line.as_bytes()) {
                    Ok(()) => {
                        open.written += line.len() as u64;
                        Ok(())
                    }
                    Err(err) => Err(err.to_string()),
                },
                Err(err) => Err(err),
            };
            self.line = line;
            match written {
                Ok(()) => self.metrics.records.inc(),
                Err(err) => self.failed(&err),
            }
        }
        if let Some(open) = &mut self.current
            && let Err(err) = open.writer.flush()
        {
            self.failed(&err.to_string());
        }
    }

    fn failed(&mut self, reason: &str) {
        let errors = self.metrics.error();
        self.metrics.sink_error.inc();
        if errors.is_power_of_two() {
            warn!(dir = %self.dir.display(), %reason, errors, "Capture file write failed; records dropped.");
        }
        // Start a fresh file next time (the disk may be back).
        self.current = None;
    }

    /// The file to append `len` bytes to, rotating first when due.
    fn file(&mut self, len: u64) -> Result<&mut Open, String> {
        let due = self.current.as_ref().is_some_and(|open| {
            (open.written > 0 && open.written + len > self.max_file_bytes)
                || open.opened.elapsed() >= self.rotate_interval
        });
        if due && let Some(mut open) = self.current.take() {
            let _ = open.writer.flush();
            self.prune();
        }
        if self.current.is_none() {
            self.sequence += 1;
            let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
                .to_string()
                .replace([':', '-'], "");
            let path = self
                .dir
                .join(format!("capture-{stamp}-{}.jsonl", self.sequence));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|err| format!("{}: {err}", path.display()))?;
            self.current = Some(Open {
                writer: std::io::BufWriter::with_capacity(256 << 10, file),
                written: 0,
                opened: Instant::now(),
            });
        }
        self.current
            .as_mut()
            .ok_or_else(|| "no capture file".to_owned())
    }

    /// Keeps the newest `keep_files` files besides the open one.
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("capture-") && name.ends_with(".jsonl")
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.sort();
        // The newest file is the one about to be opened's predecessor; keep `keep_files`.
        let excess = files.len().saturating_sub(self.keep_files);
        for (_, path) in files.into_iter().take(excess) {
            let _ = std::fs::remove_file(path);
        }
    }
}
