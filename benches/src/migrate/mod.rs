//! `baton-bench migrate`: the time from a preemption notice to resumed
//! training, and the bytes moved, when a worker's 4 layers (width W, Adam
//! state, M micro-batches in flight) move to a neighbour, by five methods in
//! one run (see [`methods`]): (a) baton's segment shipping, (b) shipping the
//! inputs and recomputing, (c) checkpoint-restart in a fresh process, and
//! as limits (d) a raw QUIC and (e) a raw TCP transfer of (a)'s bytes.
//!
//! Every scenario first runs each method once untimed, checking that the
//! receiver can run a backward, that (b) rebuilds (a)'s tape bit for bit
//! and that (c) rebuilds as many bytes of it; then `--repeats` timed rounds
//! run the five methods in turn, so load from elsewhere hits all alike. The
//! table shows medians.

pub mod fixture;
mod links;
mod methods;
mod restart;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use baton_engine::pipeline::migrate::MovedBytes;
use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use self::fixture::{Fixture, MOVING, OPTIMIZER};
use self::links::Links;
use self::methods::{Reference, Restarter, Run};
use super::{median, write_json};
pub use restart::{run as restart, RestartArgs};

/// The targets: (a) <= SLACK x (d) + GRACE_MS, and (c) >= SPEEDUP x (a).
const SLACK: f64 = 1.2;
const GRACE_MS: f64 = 20.0;
const SPEEDUP: f64 = 10.0;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Layer widths W, comma-separated (4 layers of W x W move).
    #[arg(long, value_delimiter = ',', value_name = "W,W,..", default_values_t = [256, 1024, 2048])]
    widths: Vec<usize>,
    /// Micro-batches in flight on the moving layers (forward done, backward not), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "M,M,..", default_values_t = [1, 4])]
    in_flight: Vec<u32>,
    /// Rows per micro-batch.
    #[arg(long, value_name = "B", default_value_t = 32)]
    rows: usize,
    /// Timed runs of each method per scenario (after one untimed check run); the table shows the median.
    #[arg(long, value_name = "N", default_value_t = 5)]
    repeats: usize,
    /// Where checkpoint-restart writes its file (default: the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Also write the table as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// [`baton_engine::pipeline::migrate::MovedBytes`], by kind, for the JSON.
#[derive(Debug, Serialize)]
struct Moved {
    parameters: u64,
    optimizer_state: u64,
    gradients: u64,
    segments: u64,
    queued_messages: u64,
    /// Every kind `MovedBytes::total` counts (the frame adds names and framing).
    total: u64,
}

/// One method in one scenario: medians, and every timed run.
#[derive(Debug, Serialize)]
struct Summary {
    ms: f64,
    bytes: u64,
    parts_ms: BTreeMap<&'static str, f64>,
    runs_ms: Vec<f64>,
    /// Median CPU ms of this process over the runs (see `Run::cpu_ms`).
    cpu_ms: f64,
    cpu_runs_ms: Vec<f64>,
}

impl Summary {
    fn of(runs: &[Run]) -> Summary {
        let mut parts_ms = BTreeMap::new();
        let names: Vec<&'static str> = runs.first().map(|r| r.parts_ms.keys().copied().collect()).unwrap_or_default();
        for name in names {
            let mut values: Vec<f64> = runs.iter().filter_map(|r| r.parts_ms.get(name).copied()).collect();
            parts_ms.insert(name, median(&mut values));
        }
        let runs_ms: Vec<f64> = runs.iter().map(|r| r.total_ms).collect();
        let cpu_runs_ms: Vec<f64> = runs.iter().map(|r| r.cpu_ms).collect();
        Summary {
            ms: median(&mut runs_ms.clone()),
            bytes: runs.first().map_or(0, |r| r.bytes),
            parts_ms,
            runs_ms,
            cpu_ms: median(&mut cpu_runs_ms.clone()),
            cpu_runs_ms,
        }
    }
}

/// One scenario: width and in-flight count, each method's summary, the
/// ratios and whether the targets hold.
#[derive(Debug, Serialize)]
struct Row {
    width: usize,
    in_flight: u32,
    moved_bytes: Moved,
    segments: Summary,
    recompute: Summary,
    restart: Summary,
    raw_quic: Summary,
    raw_tcp: Summary,
    a_over_d: f64,
    c_over_a: f64,
    /// (a) <= 1.2 x (d) + 20 ms.
    a_target_met: bool,
    /// (c) >= 10 x (a).
    c_target_met: bool,
}

/// The whole result, as written by --json.
#[derive(Debug, Serialize)]
struct Table {
    layers_moved: usize,
    rows_per_micro_batch: usize,
    optimizer: &'static str,
    repeats: usize,
    checkpoint_dir: String,
    cores: usize,
    rows: Vec<Row>,
}

/// Runs `baton-bench migrate`.
pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    let exe = std::env::current_exe().context("locating baton-bench to restart it")?;
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let cluster_dir = tempfile::tempdir().context("creating a directory for certificates")?;
    let mut links = Links::open(cluster_dir.path())?;
    let restarter = Restarter { exe: &exe, dir: &dir, cluster_dir: cluster_dir.path(), connect: links.receiver_addr() };
    let scenarios: Vec<(usize, u32)> =
        args.widths.iter().flat_map(|&w| args.in_flight.iter().map(move |&m| (w, m))).collect();
    let progress = Ticker::new((scenarios.len() * (args.repeats + 1)) as u64);
    let mut rows = Vec::with_capacity(scenarios.len());
    for (width, in_flight) in scenarios {
        progress.say(format!("width {width}, {in_flight} in flight: 1 check run and {} timed runs", args.repeats));
        let fixture = Fixture::new(width, args.rows, in_flight)?;
        let bench = Bench { fixture: &fixture, restarter: &restarter };
        let row = bench
            .measure(&mut links, args.repeats, &progress)
            .with_context(|| format!("width {width}, {in_flight} in flight"))?;
        rows.push(row);
    }
    progress.finish();
    let table = Table {
        layers_moved: MOVING.len(),
        rows_per_micro_batch: args.rows,
        optimizer: OPTIMIZER,
        repeats: args.repeats,
        checkpoint_dir: dir.display().to_string(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rows,
    };
    print_table(&table);
    if let Some(path) = &args.json {
        write_json(path, &table)?;
    }
    Ok(())
}

/// Refuses empty lists, zeros and widths whose handover would not fit one frame.
fn check_args(args: &MigrateArgs) -> anyhow::Result<()> {
    if args.widths.is_empty() || args.widths.contains(&0) {
        bail!("--widths: give one or more widths of at least 1");
    }
    if args.in_flight.is_empty() || args.in_flight.contains(&0) {
        bail!("--in-flight: give one or more micro-batch counts of at least 1");
    }
    if args.rows == 0 || args.repeats == 0 {
        bail!("--rows and --repeats must be at least 1");
    }
    let max_frame = baton_models::cluster::net_config().max_frame_bytes as u64;
    let largest = args.widths.iter().max().copied().unwrap_or(0) as u64;
    // Parameters, then Adam's two buffers: 3 x 4 layers x (W^2 + W) f32s, before the tape.
    let state = 3 * MOVING.len() as u64 * (largest * largest + largest) * 4;
    if state > max_frame {
        bail!(
            "--widths {largest}: the layers' state alone ({state} bytes) exceeds the largest frame ({max_frame} bytes)"
        );
    }
    Ok(())
}

/// One scenario's fixture, and how (c) restarts.
struct Bench<'a> {
    fixture: &'a Fixture,
    restarter: &'a Restarter<'a>,
}

impl Bench<'_> {
    /// The check run, then `repeats` rounds of the five methods.
    fn measure(&self, links: &mut Links, repeats: usize, progress: &Ticker) -> anyhow::Result<Row> {
        let f = self.fixture;
        let mut reference = Reference::default();
        methods::segments(f, links, Some(&mut reference)).context("(a) segment shipping")?;
        methods::recompute(f, links, Some(&reference)).context("(b) shipping inputs and recomputing")?;
        methods::restart(f, self.restarter, Some(&reference)).context("(c) checkpoint-restart")?;
        progress.tick();
        let mut runs: [Vec<Run>; 5] = Default::default();
        for _ in 0..repeats {
            let a = methods::segments(f, links, None).context("(a) segment shipping")?;
            let payload = Bytes::from(vec![0xA5u8; a.bytes as usize]);
            runs[0].push(a);
            runs[1].push(methods::recompute(f, links, None).context("(b) shipping inputs and recomputing")?);
            runs[2].push(methods::restart(f, self.restarter, None).context("(c) checkpoint-restart")?);
            runs[3].push(methods::raw_quic(links, &payload).context("(d) raw QUIC transfer")?);
            runs[4].push(methods::raw_tcp(links, &payload).context("(e) raw TCP transfer")?);
            progress.tick();
        }
        Ok(self.row(&reference.moved, runs))
    }

    /// The medians of every method, their ratios and the verdicts.
    fn row(&self, m: &MovedBytes, runs: [Vec<Run>; 5]) -> Row {
        let [a, b, c, d, e] = runs.map(|r| Summary::of(&r));
        Row {
            width: self.fixture.width,
            in_flight: self.fixture.in_flight,
            moved_bytes: Moved {
                parameters: m.parameters,
                optimizer_state: m.optimizer_state,
                gradients: m.gradients,
                segments: m.segments,
                queued_messages: m.queued_messages,
                total: m.total(),
            },
            a_over_d: a.ms / d.ms,
            c_over_a: c.ms / a.ms,
            a_target_met: a.ms <= SLACK * d.ms + GRACE_MS,
            c_target_met: c.ms >= SPEEDUP * a.ms,
            segments: a,
            recompute: b,
            restart: c,
            raw_quic: d,
            raw_tcp: e,
        }
    }
}

/// Progress on stderr: a bar when stderr is a terminal, plain lines otherwise.
struct Ticker(Option<ProgressBar>);

impl Ticker {
    fn new(total: u64) -> Ticker {
        Ticker(std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} runs {elapsed}") {
                bar.set_style(style);
            }
            bar
        }))
    }

    fn say(&self, line: String) {
        match &self.0 {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn tick(&self) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

const HEADER: [&str; 12] =
    ["width", "M", "(a) bytes", "(a) ms", "(b) ms", "(c) ms", "(d) ms", "(e) ms", "a/d", "c/a", "a<=1.2d+20", "c>=10a"];

fn format_header() -> String {
    let [w, m, bytes, a, b, c, d, e, ad, ca, ta, tc] = HEADER;
    format!("{w:>6} {m:>3} {bytes:>10} {a:>8} {b:>8} {c:>8} {d:>8} {e:>8} {ad:>6} {ca:>6} {ta:>10} {tc:>6}")
}

fn format_row(row: &Row) -> String {
    let yes = |met: bool| if met { "yes" } else { "NO" };
    format!(
        "{:>6} {:>3} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6.2} {:>6.1} {:>10} {:>6}",
        row.width,
        row.in_flight,
        human_bytes(row.segments.bytes),
        row.segments.ms,
        row.recompute.ms,
        row.restart.ms,
        row.raw_quic.ms,
        row.raw_tcp.ms,
        row.a_over_d,
        row.c_over_a,
        yes(row.a_target_met),
        yes(row.c_target_met),
    )
}

fn print_table(table: &Table) {
    println!(
        "migration of {} linear layers (width W, {}, {} rows per micro-batch, M micro-batches in flight), \
         notice to resumed training; median of {} runs",
        table.layers_moved, table.optimizer, table.rows_per_micro_batch, table.repeats
    );
    println!(
        "(a) ship segments over QUIC  (b) ship inputs, recompute  (c) checkpoint to {}, restart a process  \
         (d) raw QUIC, (e) raw TCP of (a)'s bytes; {} cores",
        table.checkpoint_dir, table.cores
    );
    println!("{}", format_header());
    for row in &table.rows {
        println!("{}", format_row(row));
    }
    println!("CPU ms of this process (every thread: both QUIC endpoints, the TCP reader), medians:");
    println!("{}", format_cpu_header());
    for row in &table.rows {
        println!("{}", format_cpu_row(row));
    }
}

fn format_cpu_header() -> String {
    let [w, m, a, b, d, e, ad] = ["width", "M", "(a) cpu", "(b) cpu", "(d) cpu", "(e) cpu", "a/d cpu"];
    format!("{w:>6} {m:>3} {a:>8} {b:>8} {d:>8} {e:>8} {ad:>8}")
}

fn format_cpu_row(row: &Row) -> String {
    let (a, d) = (row.segments.cpu_ms, row.raw_quic.cpu_ms);
    format!(
        "{:>6} {:>3} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.2}",
        row.width,
        row.in_flight,
        a,
        row.recompute.cpu_ms,
        d,
        row.raw_tcp.cpu_ms,
        a / d
    )
}

/// `n` bytes in KiB or MiB with one decimal.
fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / f64::from(1 << 10)),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests;
