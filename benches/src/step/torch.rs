//! The PyTorch side of `baton-bench step`: one Python child running
//! bench_torch.py, which times one configuration per request, so baton's
//! and PyTorch's timings of a row can alternate round by round in one run.
//!
//! The protocol is JSON lines: the child prints `{"torch": version}` once,
//! then answers each configuration it reads on stdin with `{"ms": median}`;
//! it exits when its stdin closes. Its stderr is ours (a Python traceback
//! shows there).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde::Deserialize;

use super::arch::Config;

/// The PyTorch side of the comparison.
const TORCH_SCRIPT: &str = include_str!("bench_torch.py");
/// Environment variable naming the Python interpreter.
const PYTHON_ENV: &str = "BATON_PYTHON";

/// A running bench_torch.py. Errors are reasons there is no comparison
/// (the caller prints them as the table's note).
pub(super) struct Torch {
    python: String,
    child: Child,
    /// `None` once closed (which ends the child).
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// PyTorch's version, as the child reports it.
    pub(super) version: String,
}

impl Torch {
    /// Starts the child timing on `device` (`cpu` or `cuda:N`), or says why
    /// there is no comparison (no PyTorch, the child failed to start).
    pub(super) fn start(device: &str) -> Result<Torch, String> {
        let python = std::env::var(PYTHON_ENV).unwrap_or_else(|_| "python3".into());
        let probe =
            Command::new(&python).args(["-c", "import torch"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !probe.is_ok_and(|s| s.success()) {
            return Err(format!("PyTorch not found ({python} -c 'import torch' failed): no comparison"));
        }
        let mut child = Command::new(&python)
            .args(["-c", TORCH_SCRIPT, device])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {python} failed: {e}: no comparison"))?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take().map(BufReader::new));
        let Some(stdout) = stdout else {
            return Err(format!("{python}: no pipe to the PyTorch benchmark: no comparison"));
        };
        let mut torch = Torch { python, child, stdin, stdout, version: String::new() };
        #[derive(Deserialize)]
        struct Hello {
            torch: String,
        }
        torch.version = torch.reply::<Hello>()?.torch;
        Ok(torch)
    }

    /// PyTorch's median milliseconds per step of `config`.
    pub(super) fn time(&mut self, config: &Config) -> Result<f64, String> {
        let job = serde_json::to_string(config).map_err(|e| e.to_string())?;
        let sent = match self.stdin.as_mut() {
            Some(stdin) => writeln!(stdin, "{job}").and_then(|()| stdin.flush()),
            None => return Err("the PyTorch benchmark was closed: no comparison".into()),
        };
        if let Err(e) = sent {
            return Err(self.failed(&format!("could not send it a configuration ({e})")));
        }
        #[derive(Deserialize)]
        struct Timing {
            ms: f64,
        }
        Ok(self.reply::<Timing>()?.ms)
    }

    /// The child's next line, parsed; a closed or unreadable stdout is an
    /// error naming the child's exit status.
    fn reply<T: for<'de> Deserialize<'de>>(&mut self) -> Result<T, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(self.failed("it stopped answering")),
            Ok(_) => serde_json::from_str(&line)
                .map_err(|e| format!("unreadable output of the PyTorch benchmark ({e}): {line:?}: no comparison")),
            Err(e) => Err(self.failed(&format!("its output could not be read ({e})"))),
        }
    }

    /// Why the comparison stops: `what`, with the child's exit status.
    fn failed(&mut self, what: &str) -> String {
        self.stdin = None;
        let status = self.child.wait().map_or_else(|e| e.to_string(), |s| s.to_string());
        format!("the PyTorch benchmark ({}) failed: {what}, {status} (its stderr above): no comparison", self.python)
    }
}

impl Drop for Torch {
    /// Closes the child's stdin, which ends it, and reaps it.
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.wait();
    }
}
