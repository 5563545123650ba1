//! A worker process's I/O loop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::error::{bail, Context, Error, Result};
use baton_engine::pipeline::protocol::{Message, Span, PROTOCOL_VERSION};
use baton_engine::pipeline::worker::{Dest, Out, Worker};
use baton_engine::pipeline::Work;
use baton_engine::{device, Backend, Device};
use baton_transport::{Event, Interrupt, Lane, Node, PeerId};
use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::budget::ShipBudget;
use super::fault::{Crash, FAULT_ENV};
use super::{decode_frame, frame_owned, send, send_owned, send_wait, worker_id, COORDINATOR_NAME};

/// Where the worker finds the coordinator and what it advertises to peers.
pub struct WorkerOptions {
    pub id: u32,
    pub coordinator: SocketAddr,
    /// The address peers should dial (default: the node's bound address).
    pub advertise: Option<String>,
    /// Preemption notices from outside (SIGTERM, a cloud metadata poller):
    /// each carries the grace in milliseconds.
    pub notices: Option<Receiver<u64>>,
    /// Where this worker computes: forward, backward and optimizer updates of
    /// its layers, including layers and segments it adopts in a migration.
    pub device: Device,
    /// Layer types beyond the built-ins that the job's spec may name (a
    /// user's own binary registers its layers here).
    pub layers: crate::spec::Registry,
}

/// The transport side of one worker.
struct Links {
    coordinator: PeerId,
    crash: Option<Crash>,
    /// The step being counted, and compute actions completed in it.
    counted_step: u32,
    actions_done: u32,
    peers: HashMap<u32, PeerId>,
    workers: HashMap<PeerId, u32>,
    ready_sent: bool,
    clock: Instant,
    /// Set once this worker is noticed: what it can ship before its deadline.
    budget: Option<ShipBudget>,
    /// Checkpoint parts being written on threads: their reports come back here.
    saves: super::saves::Saves,
}

/// Registers with the coordinator and runs the assigned stage until the
/// coordinator says the job is finished.
///
/// Opens `options.device` first (so a missing GPU fails before anything is
/// sent) and makes it the process's default backend: the stage runs forward,
/// backward and updates there, whatever device recorded a segment it adopts.
pub fn run_worker(node: &Node, options: WorkerOptions) -> Result<()> {
    let backend = Backend::open(options.device).what_with(|| format!("--device {}", options.device))?;
    device::set_process_default(backend.clone())?;
    tracing::info!(worker = options.id, device = %backend.describe(), "computing on");
    let (coordinator, name) = node
        .connect(options.coordinator)
        .what_with(|| format!("connecting to the coordinator at {}", options.coordinator))?;
    if name != COORDINATOR_NAME {
        bail!("{} holds the certificate of `{name}`, not the coordinator's", options.coordinator);
    }
    let address = options.advertise.unwrap_or_else(|| node.local_addr().to_string());
    tracing::info!(worker = options.id, %address, "registering with the coordinator");
    send(node, coordinator, &Message::Register { worker: options.id, protocol: PROTOCOL_VERSION, address })?;
    let crash = Crash::from_env(options.id)?;
    super::budget::bandwidth_from_env()?;
    let mut links = Links {
        coordinator,
        crash,
        counted_step: 0,
        actions_done: 0,
        peers: HashMap::new(),
        workers: HashMap::new(),
        ready_sent: false,
        clock: Instant::now(),
        budget: None,
        saves: super::saves::Saves::new(node.interrupter()),
    };
    let mut worker = Worker::new(options.id, crate::spec::factory_on(backend, options.layers));
    let notices = match options.notices {
        Some(notices) => forward(notices, node.interrupter())?,
        None => crossbeam_channel::never(),
    };
    let result = serve(node, &mut worker, &mut links, &notices).map(|()| {
        // A retired worker's layers are safe elsewhere: it just goes.
        if !worker.retired() {
            linger(node, &links);
        }
    });
    if let Err(e) = &result {
        // Tell the coordinator why, so the whole job stops with this reason.
        send_wait(node, coordinator, &Message::Abort { reason: format!("worker {}: {e:#}", options.id) }).ok();
    }
    result
}

/// The worker's loop: handles notices, finished saves, deadlines and
/// ready work, and otherwise waits for the next event with this thread
/// driving the node ([`Node::next_event`]: a frame is read here, without
/// a hand-off from another thread). Notices and saves interrupt that wait.
fn serve(node: &Node, worker: &mut Worker, links: &mut Links, notices: &Receiver<u64>) -> Result<()> {
    loop {
        if let Ok(grace_ms) = notices.try_recv() {
            on_notice(node, worker, links, grace_ms)?;
        }
        if let Ok((step, result)) = links.saves.done().try_recv() {
            links.saves.finished();
            send(node, links.coordinator, &worker.saved(step, result))?;
        }
        let now = links.clock.elapsed();
        if worker.poll_timeout().is_some_and(|t| t <= now) {
            let outs = worker.handle_timeout(now);
            execute(node, worker, links, outs)?;
        }
        if let Some(work) = worker.ready() {
            // What the last actions sent leaves before this one computes.
            node.flush();
            let start = links.clock.elapsed();
            let outs = worker.run_next()?;
            record(worker, work, start, links.clock.elapsed());
            if execute(node, worker, links, outs)? {
                return Ok(());
            }
            count(links, work, worker.current_step().unwrap_or(0));
            continue;
        }
        // Sleeps until the next event or the state machine's deadline (the
        // next heartbeat); at most a second before it is assigned.
        let event = match node.next_event(until(worker.poll_timeout(), links.clock.elapsed())) {
            Ok(event) => event,
            // A deadline, a notice or a finished save: the loop's top handles it.
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Err(Error::Job("the transport stopped".into())),
        };
        if on_event(node, worker, links, event)? {
            return Ok(());
        }
    }
}

/// Forwards what arrives on `from` and interrupts the node's wait for each
/// item, so the loop waiting in [`Node::next_event`] hears it at once. The
/// thread ends when either channel closes (noticed at the next item).
fn forward<T: Send + 'static>(from: Receiver<T>, interrupt: Interrupt) -> Result<Receiver<T>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("baton-notices".into())
        .spawn(move || {
            for item in from {
                if tx.send(item).is_err() {
                    return;
                }
                interrupt.interrupt();
            }
        })
        .what("starting the notice forwarder")?;
    Ok(rx)
}

/// How long to wait for an event before the deadline `next` (time since the clock started).
fn until(next: Option<Duration>, now: Duration) -> Duration {
    next.map_or(Duration::from_secs(1), |t| t.saturating_sub(now))
}

/// A notice from outside: the worker stops at this action boundary.
fn on_notice(node: &Node, worker: &mut Worker, links: &mut Links, grace_ms: u64) -> Result<()> {
    tracing::warn!(worker = worker.id, grace_ms, "preemption notice");
    let outs = worker.notice(grace_ms);
    execute(node, worker, links, outs).map(drop)
}

/// After the final message: waits until the coordinator closes the
/// connection, which it does only after reading every worker's final
/// message, so exiting cannot overtake that frame.
fn linger(node: &Node, links: &Links) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match node.next_event(left) {
            Ok(Event::Disconnected { peer, .. }) if peer == links.coordinator => return,
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Handles one transport event; true when the job is over for this worker.
fn on_event(node: &Node, worker: &mut Worker, links: &mut Links, event: Event) -> Result<bool> {
    match event {
        Event::Connected { peer, name, .. } => {
            match worker_id(&name) {
                Some(id) => {
                    links.peers.insert(id, peer);
                    links.workers.insert(peer, id);
                }
                None if peer == links.coordinator => {}
                None => refuse(node, worker.id, peer, &format!("a peer named `{name}` connected")),
            }
            maybe_ready(node, worker, links)?;
            Ok(false)
        }
        // Only the coordinator we dialed and fellow workers are heard: a
        // frame from anyone else (an admin, a refused peer) is dropped.
        Event::Message { peer, .. } if peer != links.coordinator && !links.workers.contains_key(&peer) => {
            refuse(node, worker.id, peer, "a frame came from a peer that is neither the coordinator nor a worker");
            Ok(false)
        }
        Event::Message { peer, bytes, .. } => {
            let mut start = links.clock.elapsed();
            let message = decode_frame(bytes).what_with(|| format!("a frame from {}", who(links, peer)))?;
            let kind = message.kind();
            tracing::debug!(worker = worker.id, from = %who(links, peer), kind, "received");
            if let (Message::StepStart { step, .. }, Some(crash)) = (&message, links.crash) {
                if crash.due(*step, 0) {
                    eprintln!("{FAULT_ENV}: crashing on purpose at the start of step {step}");
                    std::process::abort();
                }
            }
            if kind == "assign" {
                // Every worker gets its assignment at about the same moment:
                // timelines count from there so they line up.
                links.clock = Instant::now();
                start = Duration::ZERO;
            }
            let from = match links.workers.get(&peer) {
                Some(&id) => Dest::Worker(id),
                None => Dest::Coordinator, // checked above: the coordinator
            };
            if let Some(budget) = links.budget {
                worker.set_ship_budget(Some(budget.bytes(node, links.peers.values().copied(), Instant::now())));
            }
            let outs = worker.handle(from, message)?;
            push_span(worker, format!("recv {kind}"), "receive", start, links.clock.elapsed());
            execute(node, worker, links, outs)
        }
        Event::Disconnected { peer, reason } if peer == links.coordinator => {
            bail!("the coordinator went away: {reason}")
        }
        Event::Disconnected { peer, reason } => {
            // A worker that retired may go; one that crashed is the
            // coordinator's to handle (it rolls the step back): from now
            // on, what this worker sends it is dropped.
            if let Some(id) = links.workers.remove(&peer) {
                links.peers.remove(&id);
                if worker.peers().contains(&id) {
                    tracing::warn!(worker = worker.id, peer = id, %reason, "a fellow worker went away");
                }
            }
            Ok(false)
        }
    }
}

/// Disconnects a peer that is neither the coordinator nor a worker: only
/// the coordinator may control a worker, and the job goes on without it.
fn refuse(node: &Node, me: u32, peer: PeerId, what: &str) {
    eprintln!("worker {me}: {what}: disconnected it (only the coordinator may send a worker control messages)");
    node.disconnect(peer, &format!("worker {me} takes messages only from its coordinator and fellow workers"));
}

/// Carries out a worker's outputs; true once it said `Exit`.
fn execute(node: &Node, worker: &mut Worker, links: &mut Links, outs: Vec<Out>) -> Result<bool> {
    for out in outs {
        match out {
            Out::Send { to: Dest::Coordinator, message } if matches!(message, Message::Final { .. }) => {
                // Parts still being written are reported before the end.
                for (step, result) in links.saves.wait_all() {
                    send(node, links.coordinator, &worker.saved(step, result))?;
                }
                send_wait(node, links.coordinator, &message)?;
            }
            Out::Save { dir, spec, optimizer, snapshot } => links.saves.start(dir, spec, optimizer, *snapshot),
            Out::Load { generation, dir, optimizer, step, layers, parts } => {
                // A fallback after a crash: training waits for this anyway.
                let path = std::path::Path::new(&dir);
                let result = crate::checkpoint::load_layers(path, step, layers.clone(), &parts, &optimizer);
                // One write, so the lines of workers loading at once do not interleave.
                let line = format!(
                    "worker {}: falling back to the checkpoint before step {step}: layers {layers:?}\n",
                    worker.id
                );
                std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes()).ok();
                let outs = worker.loaded(generation, result.map_err(|e| e.to_string()))?;
                if execute(node, worker, links, outs)? {
                    return Ok(true);
                }
            }
            Out::Send { to, message } => {
                if let Message::Notice { grace_ms, .. } = message {
                    links.budget = Some(ShipBudget::new(Instant::now(), Duration::from_millis(grace_ms))?);
                }
                let start = links.clock.elapsed();
                let kind = message.kind();
                match (to, destination(links, to)) {
                    (Dest::Coordinator, peer) => send(node, peer?, &message)?,
                    // A fellow worker that is gone (crashed): the coordinator
                    // rolls the step back, so what it would get is moot.
                    (Dest::Worker(id), peer) => {
                        if let Err(e) = peer.and_then(|p| send_owned(node, p, message)) {
                            tracing::warn!(worker = worker.id, to = id, kind, "not sent: {e}");
                        }
                    }
                }
                push_span(worker, format!("send {kind}"), "send", start, links.clock.elapsed());
            }
            Out::Connect(placements) => {
                for p in placements {
                    let addr: SocketAddr =
                        p.address.parse().what_with(|| format!("worker {}'s address `{}`", p.worker, p.address))?;
                    let (peer, _) =
                        node.connect(addr).what_with(|| format!("connecting to worker {} at {addr}", p.worker))?;
                    links.peers.insert(p.worker, peer);
                    links.workers.insert(peer, p.worker);
                }
                maybe_ready(node, worker, links)?;
            }
            Out::Ship { generation, handovers, bytes } => {
                if bytes.unshipped_segments > 0 {
                    tracing::warn!(
                        worker = worker.id,
                        left_out = bytes.unshipped_segments,
                        shipping = bytes.total(),
                        "not enough time to ship every segment: the new owners recompute the rest"
                    );
                }
                let start = links.clock.elapsed();
                // Archive each part while the ones before it travel; then
                // wait until every part is delivered.
                // With replicas, a receiver that is gone (crashed) is the
                // coordinator's to handle: it rolls back and plans again,
                // and this worker keeps what it sent in a restore.
                let tolerate = worker.survives_losses();
                let mut deliveries = Vec::new();
                for (to, message) in handovers {
                    let peer = destination(links, Dest::Worker(to));
                    match peer.and_then(|p| Ok(node.send_tracked(p, Lane::Bulk, frame_owned(message)?)?)) {
                        Ok(delivery) => deliveries.push((to, delivery)),
                        Err(e) if tolerate => tracing::warn!(worker = worker.id, to, "handover not sent: {e}"),
                        Err(e) => return Err(e),
                    }
                }
                for (to, delivery) in deliveries {
                    match delivery.wait().what_with(|| format!("handing layers to worker {to}")) {
                        Err(e) if tolerate => tracing::warn!(worker = worker.id, to, "handover not delivered: {e}"),
                        other => other?,
                    }
                }
                let shipped = links.clock.elapsed();
                push_span(worker, format!("ship g{generation}"), "send", start, shipped);
                let ship_us = (shipped - start).as_micros() as u64;
                let report = worker.migrated(generation, bytes, ship_us);
                send(node, links.coordinator, &report)?;
                if worker.retired() && Crash::hangs_after_ship(worker.id) {
                    eprintln!("{FAULT_ENV}: hanging after shipping, until killed");
                    loop {
                        std::thread::park();
                    }
                }
            }
            Out::Exit => {
                // A retiring worker reports the parts it still writes first.
                for (step, result) in links.saves.wait_all() {
                    send(node, links.coordinator, &worker.saved(step, result))?;
                }
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Counts completed compute actions per step and carries out a planned
/// crash when it is due.
fn count(links: &mut Links, work: Work, step: u32) {
    if step != links.counted_step {
        (links.counted_step, links.actions_done) = (step, 0);
    }
    if let Work::Compute(_) = work {
        links.actions_done += 1;
    }
    if links.crash.is_some_and(|c| c.due(links.counted_step, links.actions_done)) {
        eprintln!("{FAULT_ENV}: crashing on purpose");
        std::process::abort();
    }
}

fn destination(links: &Links, to: Dest) -> Result<PeerId> {
    match to {
        Dest::Coordinator => Ok(links.coordinator),
        Dest::Worker(id) => links.peers.get(&id).copied().what_with(|| format!("worker {id} is not connected")),
    }
}

/// Sends `Ready` once every peer of the assignment is connected.
fn maybe_ready(node: &Node, worker: &Worker, links: &mut Links) -> Result<()> {
    let peers = worker.peers();
    if links.ready_sent || !worker.assigned() || !peers.iter().all(|p| links.peers.contains_key(p)) {
        return Ok(());
    }
    links.ready_sent = true;
    send(node, links.coordinator, &worker.ready_message())
}

fn who(links: &Links, peer: PeerId) -> String {
    match links.workers.get(&peer) {
        Some(id) => format!("worker {id}"),
        None if peer == links.coordinator => "the coordinator".into(),
        None => peer.to_string(),
    }
}

fn record(worker: &mut Worker, work: Work, start: Duration, end: Duration) {
    let category = match work {
        Work::Compute(a) if a.phase == baton_engine::pipeline::Phase::Forward => "forward",
        Work::Compute(_) => "backward",
        Work::Update { .. } | Work::Norms { .. } => "optimizer",
        Work::Replay { .. } => "recompute",
        Work::Resend { .. } => "send",
        Work::Eval { .. } => "eval",
    };
    push_span(worker, work.to_string(), category, start, end);
}

fn push_span(worker: &mut Worker, name: String, category: &str, start: Duration, end: Duration) {
    let start_us = start.as_micros() as u64;
    let duration_us = (end.saturating_sub(start)).as_micros() as u64;
    worker.spans.push(Span { name, category: category.into(), start_us, duration_us });
}
