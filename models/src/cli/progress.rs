//! Per-step progress on stderr: an indicatif bar when stderr is a terminal,
//! plain lines otherwise (logs, CI, pipes), so output stays greppable.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Reports training steps as they finish.
pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    total: usize,
    rows: usize,
    /// The latest held-out loss, shown on every step line after it.
    eval: Option<f32>,
}

impl Progress {
    /// Starts the clock for a run of `total` steps.
    pub fn new(total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} {msg}") {
                bar.set_style(style);
            }
            bar
        });
        Progress { bar, start: Instant::now(), total, rows: 0, eval: None }
    }

    /// Records that `step` (from 0) finished with `loss` over `rows` rows.
    pub fn step(&mut self, step: usize, loss: f32, rows: usize) {
        self.rows += rows;
        let elapsed = self.start.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 { self.rows as f64 / elapsed } else { 0.0 };
        let eval = self.eval.map_or(String::new(), |l| format!("  eval {l:.6}"));
        let line =
            format!("step {}/{}  loss {loss:.6}{eval}  elapsed {elapsed:.2}s  {rate:.0} rows/s", step + 1, self.total);
        match &self.bar {
            Some(bar) => {
                bar.println(&line);
                bar.set_message(format!("loss {loss:.6}"));
                bar.inc(1);
            }
            None => eprintln!("{line}"),
        }
    }

    /// Records the held-out loss measured after `step` (from 0).
    pub fn eval(&mut self, step: usize, loss: f32) {
        self.eval = Some(loss);
        let line = format!("eval after step {}/{}  loss {loss:.6}", step + 1, self.total);
        match &self.bar {
            Some(bar) => bar.println(&line),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar (if any) and returns the seconds since [`Progress::new`].
    pub fn finish(self) -> f64 {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.start.elapsed().as_secs_f64()
    }
}
