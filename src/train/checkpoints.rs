//! When the trainer writes checkpoints, and where: `latest` after every epoch, every
//! `logging.checkpoint_every` steps and when the run stops early, plus a kept copy `epN` of
//! every epoch's end (`logging.keep_epochs`). Only peer 0 writes.

use std::path::{Path, PathBuf};

use super::optim::AdamW;
use super::state::{self, TrainingMeta};
use super::step::Networks;
use crate::checkpoint::native::{self, Description};
use crate::error::Result;

/// The latest checkpoint's file name inside a run folder.
pub const LATEST: &str = "latest.safetensors";

/// The path of epoch `epoch`'s kept checkpoint in `out`.
pub fn epoch_path(out: &Path, epoch: usize) -> PathBuf {
    out.join(format!("ep{epoch}.{}", native::EXTENSION))
}

/// The checkpoint policy of one run.
pub struct Checkpoints {
    pub latest: PathBuf,
    out: PathBuf,
    description: Description,
    writer: bool,
    keep_epochs: bool,
    every: u64,
}

impl Checkpoints {
    pub fn new(
        out: &Path,
        description: Description,
        writer: bool,
        keep_epochs: bool,
        every: u64,
    ) -> Self {
        Checkpoints {
            latest: out.join(LATEST),
            out: out.to_path_buf(),
            description,
            writer,
            keep_epochs,
            every,
        }
    }

    fn save<B: crate::ops::TrainBackend>(
        &self,
        path: &Path,
        nets: &Networks<B>,
        adam: &AdamW<B::InnerBackend>,
        meta: &TrainingMeta,
    ) -> Result<()> {
        if !self.writer {
            return Ok(());
        }
        state::save(path, &self.description, nets, adam, meta)
    }

    /// `latest` now (the run stops, or nothing is left to do).
    pub fn save_latest<B: crate::ops::TrainBackend>(
        &self,
        nets: &Networks<B>,
        adam: &AdamW<B::InnerBackend>,
        meta: &TrainingMeta,
    ) -> Result<()> {
        self.save(&self.latest, nets, adam, meta)
    }

    /// After optimizer step `global` inside an epoch (`step_in_epoch < ipe`): `latest` every
    /// `checkpoint_every` steps.
    pub fn after_step<B: crate::ops::TrainBackend>(
        &self,
        global: u64,
        nets: &Networks<B>,
        adam: &AdamW<B::InnerBackend>,
        meta: &TrainingMeta,
    ) -> Result<()> {
        if self.every > 0 && global.is_multiple_of(self.every) {
            self.save_latest(nets, adam, meta)?;
        }
        Ok(())
    }

    /// At the end of an epoch: `latest`, then the epoch's kept copy (a kill between the two
    /// is repaired by [`Self::restore_epoch_copy`] when the run resumes).
    pub fn after_epoch<B: crate::ops::TrainBackend>(
        &self,
        nets: &Networks<B>,
        adam: &AdamW<B::InnerBackend>,
        meta: &TrainingMeta,
    ) -> Result<()> {
        self.save_latest(nets, adam, meta)?;
        if self.keep_epochs {
            let path = epoch_path(&self.out, meta.progress.epoch);
            self.save(&path, nets, adam, meta)?;
        }
        Ok(())
    }

    /// On resuming at the end of an epoch: its kept copy, when a kill after `latest` was
    /// written lost it (the resumed state is exactly that epoch's end).
    pub fn restore_epoch_copy<B: crate::ops::TrainBackend>(
        &self,
        nets: &Networks<B>,
        adam: &AdamW<B::InnerBackend>,
        meta: &TrainingMeta,
    ) -> Result<()> {
        let epoch = meta.progress.epoch;
        if self.keep_epochs && epoch > 0 && meta.progress.step_in_epoch == 0 {
            let path = epoch_path(&self.out, epoch);
            if !path.is_file() {
                self.save(&path, nets, adam, meta)?;
            }
        }
        Ok(())
    }
}
