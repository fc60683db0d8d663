//! `log.csv`: one row per optimizer step, as one serde record written and read here only
//! (the `csv` crate), with the official logger's columns: epoch, itr, step, loss, mask-A,
//! mask-B, time (ms), lr, wd, momentum.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// The file name inside a run folder.
pub const LOG: &str = "log.csv";

/// One optimizer step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    /// 1-based epoch.
    pub epoch: usize,
    /// Step within the epoch (0-based).
    pub itr: usize,
    /// Optimizer steps of the run so far, this one included.
    pub step: u64,
    pub loss: f64,
    /// Context length after truncation (official `mask-A`).
    #[serde(rename = "mask-A")]
    pub mask_a: usize,
    /// Target length after truncation (official `mask-B`).
    #[serde(rename = "mask-B")]
    pub mask_b: usize,
    #[serde(rename = "time (ms)")]
    pub time_ms: u64,
    pub lr: f64,
    pub wd: f64,
    pub momentum: f64,
}

/// Every row of a run's log.
pub fn read(path: &Path) -> Result<Vec<LogRow>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = csv::Reader::from_reader(file);
    reader
        .deserialize()
        .map(|row| row.map_err(|e| csv_error(path, e)))
        .collect()
}

fn csv_error(path: &Path, error: csv::Error) -> Error {
    Error::Log {
        path: path.to_path_buf(),
        error,
    }
}

/// The log of a run being trained: rows are appended (and flushed) one step at a time.
pub struct LogWriter {
    path: PathBuf,
    writer: csv::Writer<File>,
}

impl LogWriter {
    /// Starts the log of a run: a fresh one, or, when resuming from `resume_step`, the rows
    /// up to that step (later ones belong to steps that will be redone).
    pub fn start(path: &Path, resume_step: Option<u64>) -> Result<Self> {
        let kept: Vec<LogRow> = match resume_step {
            Some(step) if path.is_file() => {
                read(path)?.into_iter().filter(|r| r.step <= step).collect()
            }
            _ => Vec::new(),
        };
        write_atomic(path, |w| {
            let mut csv = csv::Writer::from_writer(w);
            if kept.is_empty() {
                csv.write_record(columns())?;
            }
            for row in &kept {
                csv.serialize(row)?;
            }
            csv.flush()
        })?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(LogWriter {
            path: path.to_path_buf(),
            writer: csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(file),
        })
    }

    pub fn append(&mut self, row: &LogRow) -> Result<()> {
        self.writer
            .serialize(row)
            .map_err(|e| csv_error(&self.path, e))?;
        self.writer.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// The column names, in order: the header `serialize` writes for a [`LogRow`].
pub fn columns() -> Vec<String> {
    let mut csv = csv::Writer::from_writer(Vec::new());
    // Serialising a plain struct into memory cannot fail.
    let bytes = csv
        .serialize(LogRow::default())
        .ok()
        .and_then(|()| csv.into_inner().ok())
        .unwrap_or_default();
    csv::Reader::from_reader(bytes.as_slice())
        .headers()
        .map(|h| h.iter().map(String::from).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: u64) -> LogRow {
        LogRow {
            epoch: 1,
            itr: step as usize - 1,
            step,
            loss: 0.5 / step as f64,
            mask_a: 27,
            mask_b: 11,
            time_ms: 12,
            lr: 2e-4,
            wd: 0.04,
            momentum: 0.996,
        }
    }

    /// The official logger's columns, in its order.
    #[test]
    fn columns_are_the_official_ones() {
        let official = [
            "epoch",
            "itr",
            "step",
            "loss",
            "mask-A",
            "mask-B",
            "time (ms)",
            "lr",
            "wd",
            "momentum",
        ];
        assert_eq!(columns(), official);
    }

    #[test]
    fn written_rows_read_back_and_resume_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG);
        let mut log = LogWriter::start(&path, None).unwrap();
        for s in 1..=5 {
            log.append(&row(s)).unwrap();
        }
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().next().unwrap(), columns().join(","));
        assert_eq!(read(&path).unwrap(), (1..=5).map(row).collect::<Vec<_>>());
        let mut log = LogWriter::start(&path, Some(3)).unwrap();
        log.append(&row(4)).unwrap();
        drop(log);
        assert_eq!(read(&path).unwrap(), (1..=4).map(row).collect::<Vec<_>>());
        // Resuming at step 0 keeps the header only.
        drop(LogWriter::start(&path, Some(0)).unwrap());
        assert!(read(&path).unwrap().is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        std::fs::write(&path, "epoch,itr\n1,oops\n").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("log.csv"));
    }
}
