//! A worker's checkpoint writes: each snapshot is written on its own
//! thread while training goes on; the reports come back on a channel the
//! worker's loop listens to.

use std::path::Path;

use baton_engine::pipeline::checkpoint::{SavedPart, Snapshot};
use baton_transport::Interrupt;
use crossbeam_channel::{Receiver, Sender};

/// What a finished write reports: the checkpoint's step and its part (or why not).
pub type SaveReport = (u32, Result<SavedPart, String>);

/// The writes in progress.
pub struct Saves {
    tx: Sender<SaveReport>,
    rx: Receiver<SaveReport>,
    /// Writes started and not yet reported.
    pending: usize,
    /// Ends the worker loop's wait on its node when a write reports.
    interrupt: Interrupt,
}

impl Saves {
    pub fn new(interrupt: Interrupt) -> Saves {
        let (tx, rx) = crossbeam_channel::unbounded();
        Saves { tx, rx, pending: 0, interrupt }
    }

    /// Writes `snapshot` into `dir` on a thread.
    pub fn start(&mut self, dir: String, spec: String, optimizer: String, snapshot: Snapshot) {
        let tx = self.tx.clone();
        let interrupt = self.interrupt.clone();
        self.pending += 1;
        std::thread::spawn(move || {
            let result = crate::checkpoint::write_part(Path::new(&dir), &spec, &optimizer, &snapshot);
            if let Err(e) = &result {
                tracing::error!(step = snapshot.step, error = %e, "writing a checkpoint part failed");
            }
            tx.send((snapshot.step, result.map_err(|e| e.to_string()))).ok();
            interrupt.interrupt();
        });
    }

    /// The channel finished writes report on (call [`Saves::finished`] per report).
    pub fn done(&self) -> &Receiver<SaveReport> {
        &self.rx
    }

    /// One report was taken from [`Saves::done`].
    pub fn finished(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// Waits for every write in progress and returns their reports.
    pub fn wait_all(&mut self) -> Vec<SaveReport> {
        let mut reports = Vec::new();
        while self.pending > 0 {
            match self.rx.recv() {
                Ok(report) => reports.push(report),
                Err(_) => break,
            }
            self.pending -= 1;
        }
        reports
    }
}
