//! The five ways of moving the layers, each timed from the notice (t0) to
//! the moment the receiver could run its first backward:
//!
//! - (a) segments: release, encode one `Message::Handover` per layer and
//!   queue each on QUIC as soon as it is encoded, decode and adopt each as
//!   it arrives, re-plan (what `baton train` does);
//! - (b) recompute: the same message without the tape but with the
//!   activations that entered the layers; the receiver runs those forwards
//!   again after adopting;
//! - (c) restart: see [`super::restart`]; until the fresh process, having
//!   joined, loaded and recomputed, exits;
//! - (d), (e): a raw QUIC frame and raw TCP bytes of (a)'s frame length,
//!   over the same open connections: the limits (a) is measured against.
//!
//! Stages are built before t0 (the pipeline was running); nothing else is.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use baton_engine::pipeline::migrate::{Handover, MovedBytes};
use baton_engine::pipeline::protocol::Message;
use baton_engine::pipeline::Stage;
use baton_engine::Segment;
use bytes::Bytes;
use serde::Serialize;

use super::fixture::{self, Fixture, Prepared, MOVING, RECEIVER_LAYERS, RECEIVER_POSITION};
use super::links::Links;
use super::restart::{self, ChildReport};

/// One timed run of one method.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Run {
    pub total_ms: f64,
    /// Consecutive phases of the run, by name.
    pub parts_ms: BTreeMap<&'static str, f64>,
    /// Bytes on the wire (the frame) or on disk (the checkpoint file).
    pub bytes: u64,
    /// CPU time of this process (user + sys, every thread: both QUIC
    /// endpoints, the TCP reader) from t0 to the end of the run; for (c)
    /// without the restarted process. Fairer than wall time on a machine
    /// with fewer free cores than busy threads.
    pub cpu_ms: f64,
}

/// CPU time of this process so far, in ms (0 where getrusage fails).
#[cfg(unix)]
pub fn cpu_ms() -> f64 {
    // SAFETY: an all-zero `rusage` is a valid value (plain integers).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage`; getrusage writes exactly one through it.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 * 1e-3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

#[cfg(not(unix))]
pub fn cpu_ms() -> f64 {
    0.0
}

impl Run {
    /// A run that started at `t0` and went through `marks` in order (each
    /// the end of the named phase); the last mark ends the run.
    fn from_marks(t0: Instant, cpu0: f64, marks: &[(&'static str, Instant)], bytes: u64) -> Run {
        let cpu_ms = cpu_ms() - cpu0;
        let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e3;
        let mut parts_ms = BTreeMap::new();
        let mut last = t0;
        for &(name, at) in marks {
            parts_ms.insert(name, ms(last, at));
            last = at;
        }
        Run { total_ms: ms(t0, last), parts_ms, bytes, cpu_ms }
    }
}

/// What the untimed first run of a scenario checks the others against.
#[derive(Debug, Default)]
pub struct Reference {
    /// The segments (a) shipped, in release order.
    pub segments: Vec<Segment>,
    pub moved: MovedBytes,
}

/// (a): ships the tape. With `reference`, records what moved and checks
/// the receiver can run a backward (outside the timed part of the run).
pub fn segments(fixture: &Fixture, links: &Links, reference: Option<&mut Reference>) -> anyhow::Result<Run> {
    let Prepared { mut receiver, mut leaving, .. } = fixture.prepare()?;
    let (t0, cpu0) = (Instant::now(), cpu_ms());
    let handover = leaving.release(&MOVING)?;
    let moved = handover.bytes();
    let kept = reference.is_some().then(|| handover.layers.iter().flat_map(|l| l.segments.clone()).collect());
    let mut marks = vec![("release", Instant::now())];
    let (bytes, parts) = ship(links, handover, &mut marks)?;
    take(&mut receiver, links, parts)?;
    marks.push(("transfer and adopt", Instant::now()));
    let run = Run::from_marks(t0, cpu0, &marks, bytes);
    if let (Some(reference), Some(segments)) = (reference, kept) {
        *reference = Reference { segments, moved };
        fixture::check_backward(&mut receiver, fixture).context("(a) segment shipping")?;
    }
    Ok(run)
}

/// (b): ships the inputs of the in-flight micro-batches instead of the
/// tape, and recomputes. With `reference`, checks the rebuilt tape is (a)'s.
pub fn recompute(fixture: &Fixture, links: &Links, reference: Option<&Reference>) -> anyhow::Result<Run> {
    let Prepared { mut receiver, mut leaving, entered } = fixture.prepare()?;
    let (t0, cpu0) = (Instant::now(), cpu_ms());
    let mut handover = leaving.release(&MOVING)?;
    let step = handover.step.as_ref().map(|(s, _)| *s).context("no step in progress")?;
    for layer in &mut handover.layers {
        layer.segments.clear();
    }
    handover.activations.extend(entered.into_iter().map(|(micro, t)| (step, micro, MOVING[0], t)));
    let mut marks = vec![("release", Instant::now())];
    let (bytes, parts) = ship(links, handover, &mut marks)?;
    take(&mut receiver, links, parts)?;
    marks.push(("transfer and adopt", Instant::now()));
    let forwards = fixture::recompute(&mut receiver)?;
    marks.push(("recompute", Instant::now()));
    let run = Run::from_marks(t0, cpu0, &marks, bytes);
    if forwards != fixture.in_flight {
        bail!("(b) recomputed {forwards} forwards for {} micro-batches in flight", fixture.in_flight);
    }
    if let Some(reference) = reference {
        let rebuilt = receiver.release(&MOVING)?;
        let segments: Vec<Segment> = rebuilt.layers.into_iter().flat_map(|l| l.segments).collect();
        if segments != reference.segments {
            bail!("(b) the recomputed tape differs from the shipped one");
        }
    }
    Ok(run)
}

/// Where checkpoint-restart writes, what it starts, and whom that joins.
pub struct Restarter<'a> {
    pub exe: &'a Path,
    /// The checkpoint's directory.
    pub dir: &'a Path,
    /// The restarted worker's certificate.
    pub cluster_dir: &'a Path,
    pub connect: SocketAddr,
}

/// (c): checkpoint, then restart as a fresh process that joins the cluster.
/// With `reference`, checks the rebuilt tape has (a)'s size.
pub fn restart(fixture: &Fixture, how: &Restarter<'_>, reference: Option<&Reference>) -> anyhow::Result<Run> {
    let Prepared { mut leaving, entered, .. } = fixture.prepare()?;
    let path = how.dir.join(format!("migrate-w{}-m{}.safetensors", fixture.width, fixture.in_flight));
    let (t0, cpu0) = (Instant::now(), cpu_ms());
    let handover = leaving.release(&MOVING)?;
    let bytes = restart::write(&path, fixture, handover, entered)?;
    let written = Instant::now();
    let mut command = Command::new(how.exe);
    command.arg("restart").arg(&path).arg("--cluster-dir").arg(how.cluster_dir);
    command.arg("--connect").arg(how.connect.to_string());
    let (ready, report) = run_restarted(&mut command);
    let _ = std::fs::remove_file(&path);
    let report = report.with_context(|| format!("{}", how.exe.display()))?;
    if let Some(reference) = reference {
        if report.segment_bytes != reference.moved.segments {
            bail!("(c) rebuilt {} bytes of tape, (a) shipped {}", report.segment_bytes, reference.moved.segments);
        }
    }
    let mut run = Run::from_marks(t0, cpu0, &[("write", written), ("process", ready)], bytes);
    let process = run.parts_ms.get("process").copied().unwrap_or_default();
    run.parts_ms.insert("process", process - report.join_ms - report.load_ms - report.recompute_ms);
    run.parts_ms.insert("join", report.join_ms);
    run.parts_ms.insert("load", report.load_ms);
    run.parts_ms.insert("recompute", report.recompute_ms);
    Ok(run)
}

/// (d): a raw QUIC frame of `payload`'s length on the open connection.
pub fn raw_quic(links: &Links, payload: &Bytes) -> anyhow::Result<Run> {
    let (t0, cpu0) = (Instant::now(), cpu_ms());
    links.quic(payload.clone())?;
    Ok(Run::from_marks(t0, cpu0, &[("transfer", Instant::now())], payload.len() as u64))
}

/// (e): `payload` over the open TCP connection.
pub fn raw_tcp(links: &mut Links, payload: &[u8]) -> anyhow::Result<Run> {
    let (t0, cpu0) = (Instant::now(), cpu_ms());
    let elapsed = links.tcp(payload)?;
    Ok(Run::from_marks(t0, cpu0, &[("transfer", t0 + elapsed)], payload.len() as u64))
}

/// The frame of one handover message, made as the cluster's worker makes
/// it: one part per layer ([`Handover::into_parts`]), each split by
/// [`baton_models::cluster::frame_owned`] (element buffers borrowed, not
/// copied) and queued while the ones before it travel. Marks the end of
/// the encoding; returns the bytes and the parts.
fn ship(links: &Links, handover: Handover, marks: &mut Vec<(&'static str, Instant)>) -> anyhow::Result<(u64, usize)> {
    let parts = handover.into_parts();
    let (count, mut bytes) = (parts.len(), 0);
    for handover in parts {
        let frame = baton_models::cluster::frame_owned(Message::Handover { generation: 1, handover })?;
        bytes += frame.len() as u64;
        links.queue(frame)?;
    }
    marks.push(("encode", Instant::now()));
    Ok((bytes, count))
}

/// Receives `parts` handover frames and installs each as it arrives: the
/// receiver takes layers 0-4 as stage 0 of 2, adopts, and re-plans what is
/// left of the step once all are in.
fn take(receiver: &mut Stage, links: &Links, parts: usize) -> anyhow::Result<()> {
    receiver.reassign(RECEIVER_LAYERS, RECEIVER_POSITION)?;
    for _ in 0..parts {
        let Message::Handover { handover, .. } = baton_models::cluster::decode_frame(links.receive(None)?)? else {
            bail!("the frame is not a handover");
        };
        receiver.adopt(handover)?;
    }
    receiver.resume();
    Ok(())
}

/// Starts the restarted worker and reads its report line, which it prints
/// once it could run a backward; returns when that line came (the clock
/// stops there, not at the process's exit, which tears down its QUIC node)
/// and the report, or why the process failed.
fn run_restarted(command: &mut Command) -> (Instant, anyhow::Result<ChildReport>) {
    let child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return (Instant::now(), Err(anyhow::Error::new(e).context("starting the restarted worker"))),
    };
    let mut line = String::new();
    let read = child.stdout.take().map(|out| std::io::BufReader::new(out).read_line(&mut line));
    let ready = Instant::now();
    let output = match child.wait_with_output() {
        Ok(output) => output,
        Err(e) => return (ready, Err(anyhow::Error::new(e).context("waiting for the restarted worker"))),
    };
    if !output.status.success() || !matches!(read, Some(Ok(n)) if n > 0) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return (ready, Err(anyhow::anyhow!("the restarted worker failed ({}): {}", output.status, stderr.trim())));
    }
    let report = serde_json::from_str(line.trim());
    (ready, report.with_context(|| format!("the restarted worker printed `{}`", line.trim())))
}
