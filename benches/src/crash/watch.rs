//! Watching a `baton train` child of `baton bench crash`: its stderr lines,
//! each stamped with the moment it was read, its workers' pids (children
//! whose command line holds `--id N`) and their peak memory (`VmHWM`).
//! Every wait is bounded by [`RUN_LIMIT`] from the child's start.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use super::{RUN_LIMIT, SAMPLE, WORKERS};

/// A finished (or failed) run of `baton train`.
pub(super) struct Finished {
    pub status: ExitStatus,
    pub started: Instant,
    pub ended: Instant,
    /// Every stderr line with the moment it was read.
    pub lines: Vec<(Instant, String)>,
    /// Each worker's largest `VmHWM` seen, KiB.
    pub peak_kib: BTreeMap<u32, u64>,
}

impl Finished {
    /// When the line reporting `done` steps came.
    pub fn step_line(&self, done: usize) -> Option<Instant> {
        self.lines.iter().find(|(_, l)| step_of(l) == Some(done)).map(|(t, _)| *t)
    }

    /// When the first line containing `text` came.
    pub fn line_with(&self, text: &str) -> Option<Instant> {
        self.lines.iter().find(|(_, l)| l.contains(text)).map(|(t, _)| *t)
    }

    /// The most steps any line reported done.
    pub fn last_step(&self) -> usize {
        self.lines.iter().filter_map(|(_, l)| step_of(l)).max().unwrap_or(0)
    }

    pub fn tail(&self) -> String {
        let n = self.lines.len().saturating_sub(6);
        self.lines[n..].iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join(" / ")
    }
}

/// `step N/TOTAL ...` progress lines: N.
pub(super) fn step_of(line: &str) -> Option<usize> {
    line.strip_prefix("step ")?.split('/').next()?.parse().ok()
}

/// A running `baton train` whose stderr is read line by line (stamped),
/// and whose workers' peak memory is sampled; killed on drop.
pub(super) struct Watched {
    child: Child,
    lines: Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
    workers: BTreeMap<u32, i32>,
    peak_kib: BTreeMap<u32, u64>,
    started: Instant,
    last_sample: Instant,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Watched {
    pub fn start(exe: &Path, args: &[OsString]) -> anyhow::Result<Watched> {
        use std::io::BufRead;
        let started = Instant::now();
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", exe.display()))?;
        let pipe = child.stderr.take().context("the child's stderr")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let lines = std::io::BufReader::new(pipe).lines().map_while(Result::ok);
            lines.for_each(|l| drop(tx.send((Instant::now(), l))))
        });
        let (workers, peak_kib) = (BTreeMap::new(), BTreeMap::new());
        Ok(Watched { child, lines, seen: Vec::new(), workers, peak_kib, started, last_sample: started })
    }

    /// Waits up to `wait` for one line (and samples memory when due).
    fn pump(&mut self, wait: Duration) -> Option<(Instant, String)> {
        if self.last_sample.elapsed() >= SAMPLE {
            self.sample();
        }
        match self.lines.recv_timeout(wait.min(SAMPLE)) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    fn sample(&mut self) {
        self.last_sample = Instant::now();
        if self.workers.len() < WORKERS as usize {
            self.workers = worker_pids(self.child.id() as i32);
        }
        for (&id, &pid) in &self.workers {
            if let Some(kib) = vm_hwm_kib(pid) {
                let peak = self.peak_kib.entry(id).or_default();
                *peak = (*peak).max(kib);
            }
        }
    }

    /// Waits for the line saying `done` steps are done; when it came.
    pub fn wait_for_step(&mut self, done: usize) -> anyhow::Result<Instant> {
        let deadline = self.started + RUN_LIMIT;
        while Instant::now() < deadline {
            match self.pump(deadline.saturating_duration_since(Instant::now())) {
                Some((at, line)) if step_of(&line) == Some(done) => return Ok(at),
                Some(_) => {}
                None if matches!(self.child.try_wait(), Ok(Some(_))) => break,
                None => {}
            }
        }
        bail!("`baton train` never reported step {done}: {}", self.tail())
    }

    /// SIGKILLs worker `id` (a child of the run's process); when.
    pub fn kill_worker(&mut self, id: u32) -> anyhow::Result<Instant> {
        let pid = worker_pids(self.child.id() as i32).get(&id).copied().context("the victim's pid")?;
        // SAFETY: kill(2) with a pid read from /proc as a child of our own
        // child, and a valid signal number; it touches no memory of ours.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        ensure!(rc == 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
        Ok(Instant::now())
    }

    /// Waits for the exit (at most [`RUN_LIMIT`] from the start) and the last lines.
    pub fn finish(mut self) -> anyhow::Result<Finished> {
        let deadline = self.started + RUN_LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            ensure!(Instant::now() < deadline, "`baton train` ran over {RUN_LIMIT:?}: {}", self.tail());
            self.pump(SAMPLE);
        };
        let ended = Instant::now();
        // The workers may hold the pipe a moment longer: bounded drain.
        let drain_until = ended + Duration::from_secs(2);
        while let Ok(line) = self.lines.recv_timeout(drain_until.saturating_duration_since(Instant::now())) {
            self.seen.push(line);
        }
        let (lines, peak_kib) = (std::mem::take(&mut self.seen), std::mem::take(&mut self.peak_kib));
        Ok(Finished { status, started: self.started, ended, lines, peak_kib })
    }

    fn tail(&self) -> String {
        let n = self.seen.len().saturating_sub(6);
        self.seen[n..].iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join(" / ")
    }
}

/// Worker number to pid of `parent`'s children whose command line holds `--id N`.
fn worker_pids(parent: i32) -> BTreeMap<u32, i32> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)).and_then(|p| p.parse().ok());
        if ppid != Some(parent) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let id = args.windows(2).find(|w| w[0] == b"--id").and_then(|w| std::str::from_utf8(w[1]).ok()?.parse().ok());
        if let Some(id) = id {
            found.insert(id, pid);
        }
    }
    found
}

/// `VmHWM` of `pid` in KiB (none once it exited).
fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
