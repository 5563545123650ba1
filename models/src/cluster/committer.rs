//! The coordinator's checkpoint commits (manifest, rename, `latest`,
//! prune: several fsyncs) on a thread of their own, in step order, so that
//! the coordinator's loop and the next step never wait for the disk.

use std::path::PathBuf;
use std::thread::JoinHandle;

use baton_engine::pipeline::checkpoint::SavedPart;
use crossbeam_channel::Sender;

use super::error::{Error, Result};
use crate::checkpoint::DiskStore;

/// A thread committing checkpoints in the order they are handed over.
pub struct Committer {
    tx: Option<Sender<(u32, Vec<SavedPart>)>>,
    thread: Option<JoinHandle<(Option<PathBuf>, Option<String>)>>,
}

impl Committer {
    /// Starts the thread for `store`'s directory.
    pub fn start(store: DiskStore) -> Committer {
        let (tx, rx) = crossbeam_channel::unbounded::<(u32, Vec<SavedPart>)>();
        let thread = std::thread::spawn(move || {
            let (mut last, mut error) = (None, None);
            for (step, parts) in rx {
                let tokens = store.tokens.get(&step).copied();
                match crate::checkpoint::commit(&store.dir, step, &parts, &store.run, tokens) {
                    Ok(path) if error.is_none() => {
                        eprintln!("checkpoint: steps 0..{step} saved in {}", path.display());
                        last = Some(path);
                    }
                    Ok(_) => {}
                    Err(e) => error = error.or(Some(format!("writing the checkpoint of step {step}: {e}"))),
                }
            }
            (last, error)
        });
        Committer { tx: Some(tx), thread: Some(thread) }
    }

    /// Queues the commit of the checkpoint before `step`.
    pub fn commit(&self, step: u32, parts: Vec<SavedPart>) {
        if let Some(tx) = &self.tx {
            tx.send((step, parts)).ok();
        }
    }

    /// Waits for every queued commit; returns the last checkpoint written,
    /// or the first commit that failed.
    pub fn finish(&mut self) -> Result<Option<PathBuf>> {
        self.tx.take();
        let Some(thread) = self.thread.take() else { return Ok(None) };
        match thread.join() {
            Ok((last, None)) => Ok(last),
            Ok((_, Some(error))) => Err(Error::Job(error)),
            Err(_) => Err(Error::Job("the checkpoint thread panicked".into())),
        }
    }
}
