//! The coordinator's I/O loop.

use std::collections::{HashMap, HashSet};
use std::process::Child;
use std::time::{Duration, Instant};

use super::error::{bail, Context, Error, Result};
use baton_engine::pipeline::coordinator::{CoordEffect, CoordEvent, Coordinator, JobOutcome, JobPlan, MigrationRecord};
use baton_engine::pipeline::protocol::{self, Message};
use baton_transport::frame::Frame;
use baton_transport::{Event, Node, PeerId};
use crossbeam_channel::RecvTimeoutError;

use super::{admin, send, worker_id, ADMIN_NAME};

/// How the coordinator reports and watches.
pub struct CoordinatorOptions<'a> {
    /// Called after every finished step with (step, minibatch-mean loss).
    pub on_step: &'a mut dyn FnMut(u32, f32),
    /// Called after every completed migration.
    pub on_migration: &'a mut dyn FnMut(&MigrationRecord),
    /// Called after every evaluation with (step, held-out loss).
    pub on_eval: Option<&'a mut dyn FnMut(u32, f32)>,
    /// Worker processes launched by this coordinator, by worker number: an
    /// exit before the job ends fails the job at once.
    pub children: &'a mut Vec<Child>,
    /// Starts the process of a joining worker (local launches only).
    pub spawn: Option<&'a mut dyn FnMut(u32) -> Result<Child>>,
    /// `--checkpoint-dir`: commits each checkpoint whose parts the workers wrote.
    pub checkpoints: Option<crate::checkpoint::DiskStore>,
}

/// How long a stopped coordinator waits for the step in progress to end and
/// its checkpoint to be written before it gives up on that checkpoint.
const STOP_PATIENCE: Duration = Duration::from_secs(60);

/// A signal's stop while the final checkpoint is written: the signal, when
/// it came, and the checkpoint committer.
#[derive(Default)]
struct Stopping {
    signal: Option<(i32, Instant)>,
    committer: Option<super::committer::Committer>,
}

impl Stopping {
    /// Waits for the queued commits: the last checkpoint written, if any.
    fn committed(&mut self) -> Option<std::path::PathBuf> {
        let committer = self.committer.as_mut()?;
        committer.finish().map_err(|e| eprintln!("{e}")).ok().flatten()
    }
}

/// Who is who: transport peers and worker numbers.
#[derive(Default)]
struct Roster {
    /// When each noticed worker must be gone (its process is killed then).
    deadlines: Vec<(Instant, u32)>,
    names: HashMap<PeerId, String>,
    worker_of: HashMap<PeerId, u32>,
    peer_of: HashMap<u32, PeerId>,
    /// Connected peers with the `admin` certificate (`baton preempt`).
    admins: HashSet<PeerId>,
    /// Launched workers whose failed exit was reported.
    exited: HashSet<u32>,
}

/// What one transport event asks of the coordinator.
enum Inbound {
    /// Events for the state machine (none for a connect or an ignored frame).
    Job(Vec<CoordEvent>),
    /// A request frame from an admin, answered by [`admin::serve`].
    Admin(PeerId, Frame),
}

/// Runs `plan` on `node` until the job is done or fails.
pub fn run_coordinator(node: &Node, plan: JobPlan, mut options: CoordinatorOptions<'_>) -> Result<JobOutcome> {
    let start = Instant::now();
    super::lifetime::install()?;
    let mut coordinator = Coordinator::new(plan, Duration::ZERO)?;
    let mut roster = Roster::default();
    let mut last_child_check = Duration::ZERO;
    let mut stopping = Stopping::default();
    if let Some(store) = options.checkpoints.take() {
        crate::checkpoint::prepare(&store.dir).what("--checkpoint-dir")?;
        stopping.committer = Some(super::committer::Committer::start(store));
    }
    loop {
        // Sleep until the next event, the state machine's next deadline, or
        // the next check of the child processes (their exit is not an event).
        let now = start.elapsed();
        let deadline = coordinator.poll_timeout().map_or(Duration::from_secs(1), |t| t.saturating_sub(now));
        let children = if options.children.is_empty() { Duration::from_secs(1) } else { CHILD_CHECK };
        // This thread drives the node while it waits (no hand-off per frame).
        let event = node.next_event(deadline.min(children));
        // Before the event: a Ctrl-C that also reached the workers must
        // read as a stop, not as a lost worker.
        if let Some(signal) = super::lifetime::stop_signal() {
            if on_stop_signal(&mut coordinator, &mut stopping, signal, start.elapsed()).is_err() {
                return Err(stop(node, &roster, &mut coordinator, signal, &mut stopping, start.elapsed()));
            }
        }
        let inbound = match event {
            Ok(event) => on_event(node, event, &mut roster)?,
            Err(RecvTimeoutError::Timeout) => Inbound::Job(Vec::new()),
            Err(RecvTimeoutError::Disconnected) => bail!("the transport stopped"),
        };
        let now = start.elapsed();
        let mut effects: Vec<CoordEffect> = match inbound {
            Inbound::Job(events) => events.into_iter().flat_map(|e| coordinator.handle(e, now)).collect(),
            Inbound::Admin(peer, frame) => admin::serve(node, &coordinator, peer, &frame),
        };
        // Silence is judged only once every event already queued is handled:
        // after a stall (an overloaded machine, a slow effect), a worker's
        // messages waiting in the queue must not read as a lost worker.
        if node.events().is_empty() && coordinator.poll_timeout().is_some_and(|t| t <= now) {
            effects.extend(coordinator.handle_timeout(now));
        }
        // Child processes are checked every CHILD_CHECK, not on every message.
        if now.saturating_sub(last_child_check) >= CHILD_CHECK {
            last_child_check = now;
            kill_at_deadline(&mut roster, options.children);
            for lost in exited_children(options.children, &mut roster.exited) {
                effects.extend(coordinator.handle(lost, now));
            }
        }
        for effect in effects {
            match effect {
                CoordEffect::Send { worker, message } => deliver(node, &roster, worker, &message)?,
                CoordEffect::Spawn { worker } => match options.spawn.as_mut() {
                    Some(spawn) => options.children.push(spawn(worker)?),
                    None => eprintln!("waiting for worker {worker} to join: start `baton worker --id {worker} ...`"),
                },
                CoordEffect::StepFinished { step, loss } => (options.on_step)(step, loss),
                CoordEffect::Migrated(record) => (options.on_migration)(&record),
                CoordEffect::EvalFinished(point) => {
                    if let Some(on_eval) = options.on_eval.as_mut() {
                        on_eval(point.step, point.loss)
                    }
                }
                CoordEffect::Checkpoint { step, parts } => {
                    stopping.committer.as_ref().what("a checkpoint without --checkpoint-dir")?.commit(step, parts)
                }
                CoordEffect::Done(outcome) => {
                    if let Some(committer) = stopping.committer.as_mut() {
                        committer.finish()?;
                    }
                    return Ok(*outcome);
                }
                CoordEffect::Failed(_) if stopping.signal.is_some() => {
                    let signal = stopping.signal.map_or(0, |(s, _)| s);
                    let checkpoint = super::lifetime::final_checkpoint(stopping.committed().as_deref());
                    return Err(Error::Interrupted(super::lifetime::Interrupted { signal, checkpoint }));
                }
                CoordEffect::Recovered(c) => match c.checkpoint {
                    Some(from) => eprintln!(
                        "lost worker(s) {:?} without notice ({}): no survivor held all their layers; fell back to \
                         the checkpoint before step {from} ({:.1?} after the detection at {:.1?}); redoing steps {from}-{}",
                        c.lost, c.reason, c.restored_after, c.detected_at, c.step
                    ),
                    None => eprintln!(
                        "lost worker(s) {:?} without notice ({}): detected at {:.1?}, layers restored {:.1?} later; \
                         redoing step {}",
                        c.lost, c.reason, c.detected_at, c.restored_after, c.step
                    ),
                },
                CoordEffect::Failed(reason) => bail!("training failed: {reason}"),
            }
        }
    }
}

/// The first stop signal: with `--checkpoint-dir` the coordinator lets the
/// step in progress end and writes its checkpoint (until [`STOP_PATIENCE`]
/// runs out); an error means the wait is over.
fn on_stop_signal(coordinator: &mut Coordinator, stopping: &mut Stopping, signal: i32, now: Duration) -> Result<()> {
    match stopping.signal {
        // Without a checkpoint to wait for, [`stop`] fails the job at once.
        None if !coordinator.stops_with_checkpoint() => bail!("stopped"),
        None => {
            stopping.signal = Some((signal, Instant::now()));
            let reason = format!("the coordinator was stopped by signal {signal}");
            let effects = coordinator.handle(CoordEvent::Stop { reason }, now);
            debug_assert!(effects.is_empty(), "a stop with a checkpoint to write waits: {effects:?}");
            eprintln!("signal {signal}: finishing the step in progress and writing a final checkpoint");
            Ok(())
        }
        Some((_, since)) if since.elapsed() > STOP_PATIENCE => bail!("the final checkpoint took too long"),
        Some(_) => Ok(()),
    }
}

/// A signal stops the job: every worker is told to abort (best effort: the
/// caller closes the connections next), and the error says which
/// checkpoint holds the job's state.
fn stop(
    node: &Node,
    roster: &Roster,
    coordinator: &mut Coordinator,
    signal: i32,
    stopping: &mut Stopping,
    now: Duration,
) -> Error {
    let checkpoint = super::lifetime::final_checkpoint(stopping.committed().as_deref());
    let interrupted = super::lifetime::Interrupted { signal, checkpoint };
    let reason = format!("the coordinator was {interrupted}");
    for effect in coordinator.handle(CoordEvent::Stop { reason }, now) {
        if let CoordEffect::Send { worker, message } = effect {
            deliver(node, roster, worker, &message).ok();
        }
    }
    Error::Interrupted(interrupted)
}

/// Turns a transport event into coordinator events or an admin request.
/// A peer that is neither a worker nor the admin is disconnected at once.
fn on_event(node: &Node, event: Event, roster: &mut Roster) -> Result<Inbound> {
    Ok(match event {
        Event::Connected { peer, name, .. } => {
            if name == ADMIN_NAME {
                roster.admins.insert(peer);
            } else if worker_id(&name).is_none() {
                tracing::warn!(%peer, name, "refusing a peer that is neither a worker nor the admin");
                node.disconnect(peer, &format!("the coordinator takes only workers and `{ADMIN_NAME}`, not `{name}`"));
            }
            roster.names.insert(peer, name);
            Inbound::Job(Vec::new())
        }
        Event::Message { peer, bytes, .. } if roster.admins.contains(&peer) => Inbound::Admin(peer, bytes),
        Event::Message { peer, bytes, .. } => Inbound::Job(on_message(node, peer, &bytes, roster)?),
        Event::Disconnected { peer, reason } => {
            roster.admins.remove(&peer);
            match roster.worker_of.remove(&peer) {
                Some(worker) => Inbound::Job(vec![CoordEvent::Lost { worker, reason }]),
                None => Inbound::Job(Vec::new()),
            }
        }
    })
}

/// A frame from a worker (or a refused peer's, still in flight: ignored).
fn on_message(node: &Node, peer: PeerId, bytes: &Frame, roster: &mut Roster) -> Result<Vec<CoordEvent>> {
    let name = roster.names.get(&peer).map_or("", String::as_str);
    if worker_id(name).is_none() {
        tracing::warn!(%peer, name, "ignoring a frame from a refused peer");
        return Ok(Vec::new());
    }
    let message = protocol::decode(bytes).what_with(|| format!("a frame from {peer}"))?;
    tracing::debug!(from = name, kind = message.kind(), "received");
    if let Message::Register { worker, .. } = &message {
        tracing::info!(worker, %peer, "worker registered");
        check_claim(name, *worker)?;
        if roster.peer_of.get(worker).is_some_and(|&other| other != peer && roster.worker_of.contains_key(&other)) {
            // The transport refuses a second live connection of one name;
            // this catches one that raced it. The member keeps its place.
            tracing::warn!(worker, %peer, "refusing a second registration of a connected worker");
            node.disconnect(peer, &format!("duplicate identity: worker {worker} is already connected"));
            return Ok(Vec::new());
        }
        roster.worker_of.insert(peer, *worker);
        roster.peer_of.insert(*worker, peer);
    }
    if let (Message::Notice { grace_ms, .. }, Some(&worker)) = (&message, roster.worker_of.get(&peer)) {
        roster.deadlines.push((Instant::now() + Duration::from_millis(*grace_ms), worker));
    }
    match roster.worker_of.get(&peer) {
        Some(&worker) => Ok(vec![CoordEvent::Message { worker, message }]),
        None => bail!("{peer} sent a {} message before registering", message.kind()),
    }
}

fn deliver(node: &Node, roster: &Roster, worker: u32, message: &Message) -> Result<()> {
    let peer = roster.peer_of.get(&worker).copied();
    if let Message::Abort { .. } = message {
        // Best effort: the worker may be the one that is gone.
        if let Some(peer) = peer {
            send(node, peer, message).ok();
        }
        return Ok(());
    }
    let peer = peer.what_with(|| format!("worker {worker} is not connected"))?;
    send(node, peer, message).what_with(|| format!("sending {} to worker {worker}", message.kind()))
}

/// Kills launched workers whose notice's grace ran out, whatever they are
/// doing, as the cloud would.
fn kill_at_deadline(roster: &mut Roster, children: &mut [Child]) {
    let now = Instant::now();
    roster.deadlines.retain(|&(deadline, worker)| {
        if deadline > now {
            return true;
        }
        if let Some(child) = children.get_mut(worker as usize) {
            if matches!(child.try_wait(), Ok(None)) {
                tracing::warn!(worker, "the grace period ran out: killing the worker");
                child.kill().ok();
            }
        }
        false
    });
}

/// How often launched worker processes are checked for an exit.
const CHILD_CHECK: Duration = Duration::from_millis(50);

/// Launched worker processes that failed since the last check, as
/// lost-worker events (each once). A worker exits successfully only after
/// its final message was delivered, so a clean exit is not a loss.
fn exited_children(children: &mut [Child], reported: &mut HashSet<u32>) -> Vec<CoordEvent> {
    let mut lost = Vec::new();
    for (i, child) in children.iter_mut().enumerate() {
        if let Ok(Some(status)) = child.try_wait() {
            if !status.success() && reported.insert(i as u32) {
                lost.push(CoordEvent::Lost { worker: i as u32, reason: format!("its process exited ({status})") });
            }
        }
    }
    lost
}

/// Checks that a registering peer's certificate name matches the worker
/// number it claims, so one worker cannot pose as another.
fn check_claim(cert_name: &str, claimed: u32) -> Result<()> {
    match worker_id(cert_name) {
        Some(id) if id == claimed => Ok(()),
        _ => bail!("a peer with the certificate of `{cert_name}` claims to be worker {claimed}"),
    }
}
