//! The coordinator's own lifetime: SIGINT or SIGTERM on `baton train` or
//! `baton coordinator` stops the job in an orderly way (the workers are told
//! and stopped, the process exits non-zero saying why) instead of dying with
//! its workers left to time out. A second signal ends the process at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::error::Result;

/// The signal that asked the coordinator to stop, once one did.
static STOP: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// Installs the SIGINT and SIGTERM handlers of a coordinator process
/// (once; later calls do nothing). After this, the first such signal only
/// sets a flag that [`stop_signal`] reads; the second exits at once.
pub fn install() -> Result<()> {
    if STOP.get().is_some() {
        return Ok(());
    }
    let flag = Arc::new(AtomicUsize::new(0));
    #[cfg(unix)]
    {
        use super::error::Context;
        use signal_hook::consts::{SIGINT, SIGTERM};
        // One flag for both signals, each conditional shutdown registered
        // before the flag's setter: it sees the flag as the previous signal
        // left it, so a second signal (of either kind) ends the process.
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for signal in [SIGINT, SIGTERM] {
            let installing = || format!("installing the coordinator's handler of signal {signal}");
            signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, stopping.clone())
                .what_with(installing)?;
            signal_hook::flag::register(signal, stopping.clone()).what_with(installing)?;
            signal_hook::flag::register_usize(signal, flag.clone(), signal as usize).what_with(installing)?;
        }
    }
    let _ = STOP.set(flag);
    Ok(())
}

/// The signal (SIGINT, SIGTERM) that asked this coordinator to stop, if any.
pub fn stop_signal() -> Option<i32> {
    let signal = STOP.get()?.load(Ordering::SeqCst);
    (signal != 0).then_some(signal as i32)
}

/// A coordinator stopped by a signal: the error `baton` exits with, as
/// status 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
#[derive(Debug, thiserror::Error)]
#[error(
    "stopped by {name} (signal {signal}): the workers were told to stop and the job was abandoned; {checkpoint}",
    name = signal_name(*signal)
)]
pub struct Interrupted {
    pub signal: i32,
    /// What became of the job's state (the final-checkpoint hook's answer).
    pub checkpoint: String,
}

impl Interrupted {
    /// The exit status for this stop.
    pub fn exit_code(&self) -> u8 {
        u8::try_from(128 + self.signal).unwrap_or(1)
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// What the user is told about the job's state when it stopped: the
/// checkpoint written last (with `--checkpoint-dir`, the coordinator lets
/// the step in progress end and writes its checkpoint first), or that none
/// exists.
pub fn final_checkpoint(written: Option<&std::path::Path>) -> String {
    match written {
        Some(path) => format!(
            "its latest checkpoint is in {}; continue with --resume {}",
            path.display(),
            path.parent().map_or_else(|| path.display().to_string(), |dir| dir.display().to_string())
        ),
        None => "no checkpoint was written (pass --checkpoint-dir to keep one): the run must start over".into(),
    }
}
