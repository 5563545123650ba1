//! The messages coordinator and workers exchange, and the protocol version.
//!
//! One rkyv-archived [`Message`] per transport frame. Every frame is
//! validated on receipt ([`decode`]); a frame that does not validate is an
//! error naming the problem, never a panic. Tensors travel inside the
//! archive and are read in place.

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

use super::checkpoint::SavedPart;
use super::migrate::{Handover, MovedBytes};
use crate::train::Counters;
use crate::{Error, Result, Targets, Tensor};

/// Bumped whenever [`Message`] changes shape; checked at registration.
pub const PROTOCOL_VERSION: u32 = 11;

/// A worker's place in one generation.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Placement {
    pub worker: u32,
    pub address: String,
    /// Layers `first..end` (end exclusive).
    pub first: u32,
    pub end: u32,
}

/// What a worker needs to run its stage.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Assignment {
    pub generation: u32,
    /// The model spec (JSON), so every worker builds the same layers.
    pub spec: String,
    pub optimizer: String,
    /// The learning rate of each step; checked against the optimizer's rate.
    pub lr_schedule: crate::LrSchedule,
    pub schedule: String,
    /// Every worker's placement, in stage order.
    pub placements: Vec<Placement>,
    /// Initial values of the parameters of this worker's layers.
    pub params: Vec<(String, Tensor)>,
    /// Scripted preemption notices for this worker (`--preempt`).
    pub notices: Vec<PlannedNotice>,
    /// Ship saved tensors as bf16 in migrations (halves their bytes; the
    /// run is then no longer bit-identical to an uninterrupted one).
    pub ship_bf16: bool,
    /// `--clip-grad-norm`: updates wait for each step's [`Message::ClipScale`].
    pub clip_grad_norm: Option<f32>,
    /// The run's seed, which keys dropout masks (the same on every worker).
    pub seed: u64,
    /// Optimizer state of this worker's layers, from the checkpoint resumed from.
    pub optim: Vec<(String, crate::optim::OptState)>,
    /// `--checkpoint-dir`: where this worker writes its checkpoint parts
    /// (shared storage when workers run on other machines).
    pub checkpoint_dir: Option<String>,
    /// Keep a replica of a neighbour's layers (crashes without notice).
    pub replicas: bool,
    /// `--peer-timeout`: the coordinator counts a worker silent this long
    /// as lost; workers send a heartbeat every quarter of it.
    pub peer_timeout_ms: u64,
    /// With replicas: the layers of the previous stage (ring order), as
    /// they are at the start of the first step, so this worker holds their
    /// replica before any seed could arrive (a crash in the first step).
    pub replica: Option<InitialReplica>,
}

/// The replica a worker starts with (see [`Assignment::replica`]).
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct InitialReplica {
    /// The step at whose start these values hold (the first of the job).
    pub step: u32,
    /// The layers replicated.
    pub layers: Vec<ReplicaLayer>,
}

/// One layer of an [`InitialReplica`]: its parameters and optimizer state.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ReplicaLayer {
    pub layer: u32,
    pub params: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, crate::optim::OptState)>,
}

/// A scripted notice: after `actions` compute actions of `step`, the worker
/// is told it dies in `grace_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PlannedNotice {
    pub step: u32,
    pub actions: u32,
    pub grace_ms: u64,
}

/// A named span of work for the timeline, in microseconds since the run started.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Span {
    pub name: String,
    pub category: String,
    pub start_us: u64,
    pub duration_us: u64,
}

/// One report a worker owes the coordinator. A worker collects them while it
/// has work ready and sends them together as one [`Message::Reports`] when it
/// runs out of work (or before any other message to the coordinator), so a
/// step costs a few frames instead of one per layer and micro-batch; the
/// coordinator takes them in the order they were made.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Report {
    /// As [`Message::Loss`].
    Loss { step: u32, micro: u32, value: f32 },
    /// As [`Message::LayerUpdated`].
    LayerUpdated { step: u32, layer: u32, replica: Option<u32> },
    /// As [`Message::LayerNorms`].
    LayerNorms { step: u32, layer: u32, norms: Vec<f32> },
    /// The work this worker has done so far (last in every `Reports`).
    Work(WorkDone),
}

/// A worker's work so far, so the run report counts the work of a worker
/// lost without notice (its final counters die with it).
///
/// Invariant: `counters` are cumulative and include the attempt in
/// progress; `attempt_forwards` / `attempt_backwards` of them were run in
/// the attempt of `step` that was in progress in `generation`. If that
/// attempt is later abandoned (a rollback of `step` to a later
/// generation), they count as recomputed forwards / abandoned backwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WorkDone {
    /// Increases with every report of one worker (frames may overtake each other).
    pub seq: u64,
    pub generation: u32,
    pub step: u32,
    pub counters: Counters,
    pub attempt_forwards: u64,
    pub attempt_backwards: u64,
}

/// Everything on the wire between coordinator and workers.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Message {
    /// Worker → coordinator, first message: who it is and where peers reach it.
    Register { worker: u32, protocol: u32, address: String },
    /// Coordinator → worker: its stage in this generation (boxed: it is
    /// by far the largest message, and rare).
    Assign(Box<Assignment>),
    /// Worker → coordinator: connected to every peer, ready for steps.
    Ready { worker: u32 },
    /// Coordinator → worker: a step begins (inputs for the first stage, targets for the last).
    StepStart { step: u32, rows: Vec<u32>, inputs: Vec<(u32, Tensor)>, targets: Vec<(u32, Targets)> },
    /// Worker → worker: the activation entering `layer`, sent in `generation`.
    Activation { generation: u32, step: u32, micro: u32, layer: u32, tensor: Tensor },
    /// Worker → worker: the gradient of `layer`'s output, sent in `generation`.
    Gradient { generation: u32, step: u32, micro: u32, layer: u32, tensor: Tensor },
    /// Last stage → coordinator: one micro-batch's mean loss.
    Loss { step: u32, micro: u32, value: f32 },
    /// Worker → coordinator: `layer` received its update for `step`; its
    /// step gradient went to the holder of its replica, `replica`, which
    /// confirms with [`Message::Replicated`].
    LayerUpdated { step: u32, layer: u32, replica: Option<u32> },
    /// Owner → replica holder: the step gradients of `step` (after
    /// clipping) of the owner's layers whose replica it holds, by layer (one
    /// message per holder and step), applied to the replicas once the step
    /// is complete.
    Replica { generation: u32, step: u32, layers: Vec<(u32, Vec<(String, Tensor)>)> },
    /// Owner → replica holder: `layer`'s parameters and optimizer state at
    /// the start of `step` (a new holder, or a layer with a new owner).
    ReplicaSeed {
        generation: u32,
        step: u32,
        layer: u32,
        params: Vec<(String, Tensor)>,
        optimizer: Vec<(String, crate::optim::OptState)>,
    },
    /// Replica holder → coordinator: it holds these layers' gradients of `step`.
    Replicated { step: u32, layers: Vec<u32> },
    /// Worker → coordinator: alive (sent every quarter of the peer timeout).
    Heartbeat { worker: u32 },
    /// Coordinator → worker: a member was lost; abandon step `step` (roll
    /// the own layers back to its start, drop its tape, sums and messages),
    /// enter `generation`, and report once `starts` step starts arrived.
    Rollback { generation: u32, step: u32, starts: u64 },
    /// Worker → coordinator: rolled back; the layers it holds at the
    /// step's start (`clean`) and those it holds a valid replica of.
    RolledBack { worker: u32, generation: u32, clean: Vec<u32>, replicas: Vec<u32> },
    /// Coordinator → worker: the layout after a loss; `sources` names, per
    /// layer with parameters, the worker that sends its step-start state.
    Restore { generation: u32, step: u32, placements: Vec<Placement>, sources: Vec<(u32, u32)> },
    /// Worker → coordinator (clipping): the norms of `layer`'s complete step
    /// gradient, its parameters in name order.
    LayerNorms { step: u32, layer: u32, norms: Vec<f32> },
    /// Coordinator → workers (clipping): multiply step `step`'s gradients by
    /// `scale` before updating.
    ClipScale { step: u32, scale: f32 },
    /// Coordinator → worker: training is over; send parameters and report.
    Finish,
    /// Worker → coordinator: final parameters, counters and timeline spans.
    Final { worker: u32, params: Vec<(String, Tensor)>, counters: Counters, spans: Vec<Span> },
    /// Worker → coordinator: a preemption notice; the worker stopped at an
    /// action boundary and must be gone within `grace_ms`.
    Notice { worker: u32, grace_ms: u64 },
    /// Coordinator → workers: stop at the next action boundary; generation
    /// `generation` is being planned.
    Pause { generation: u32 },
    /// Worker → coordinator: paused; `sent[w]` data messages went to worker w
    /// in the current generation.
    Paused { worker: u32, sent: Vec<(u32, u64)> },
    /// Coordinator → worker: the new layout. Receive `expected[w]` data
    /// messages from worker w (the old generation drains) and the
    /// `StepStart` of `step`, the step in progress (it travels on the bulk
    /// lane, so this message may overtake it); then hand layers to their
    /// new owners.
    Repartition { generation: u32, step: u32, placements: Vec<Placement>, expected: Vec<(u32, u64)> },
    /// Worker → worker: layers (and what waits at them) that change owner.
    Handover { generation: u32, handover: Handover },
    /// Worker → coordinator: every handover of this worker was delivered;
    /// a leaving worker adds its work and timeline.
    Migrated { worker: u32, generation: u32, bytes: MovedBytes, ship_us: u64, farewell: Option<(WorkDone, Vec<Span>)> },
    /// Worker → coordinator: every handover to this worker arrived; computing again.
    Resumed { worker: u32, generation: u32 },
    /// Coordinator → leaving worker: your layers are safe elsewhere; exit.
    Retire,
    /// Either way: stop now, with the reason.
    Abort { reason: String },
    /// Admin → coordinator (`baton preempt`): preempt `worker` with this
    /// grace; coordinator → that worker: the same, taken as a notice.
    Preempt { worker: u32, grace_ms: u64 },
    /// Coordinator → admin: the request was taken (`error` is None) or refused.
    Reply { error: Option<String> },
    /// Leaving worker → holder of the activation entering `layer` (sent in
    /// `generation`, the new one): micro-batch `micro`'s segments of layers
    /// `layer..stop` were not shipped; send that activation again as a [`Message::Replay`].
    Recompute { generation: u32, step: u32, micro: u32, layer: u32, stop: u32 },
    /// Worker → worker: the activation entering `layer`, sent again so that
    /// the forward of layers `layer..stop` is recomputed (and goes no further).
    Replay { generation: u32, step: u32, micro: u32, layer: u32, stop: u32, tensor: Tensor },
    /// Coordinator → every member: the evaluation after step `step` begins
    /// (the K held-out batches' inputs for the first stage, their targets
    /// for the last). Forward only; it changes no parameter.
    EvalStart { step: u32, inputs: Vec<(u32, Tensor)>, targets: Vec<(u32, Targets)> },
    /// Worker → worker: held-out batch `batch`'s activation entering `layer`
    /// in the evaluation after `step` (no migration runs during one, so it
    /// needs no generation and is not counted in drains).
    EvalActivation { step: u32, batch: u32, layer: u32, tensor: Tensor },
    /// Last stage → coordinator: held-out batch `batch`'s mean loss.
    EvalLoss { step: u32, batch: u32, value: f32 },
    /// Coordinator → worker: every step before `step` is complete; copy your
    /// layers' state for a checkpoint (step `step` waits for the answer).
    Snapshot { step: u32 },
    /// Worker → coordinator: the state before `step` is copied; writing goes on.
    Snapshotted { worker: u32, step: u32 },
    /// Worker → coordinator: its part of the checkpoint before `step` is
    /// written (`part`), or could not be (`error`).
    Saved { worker: u32, step: u32, part: Option<SavedPart>, error: Option<String> },
    /// Worker → coordinator: reports in the order they were made (never empty).
    Reports { reports: Vec<Report> },
    /// Coordinator → worker, after its `RolledBack`: some lost layer is held
    /// by no survivor, so the job falls back to the committed checkpoint
    /// before `step`. Drop every layer and replica, report `Migrated`
    /// (nothing shipped), then, if `placements` gives this worker a range,
    /// load that range from `parts` (its driver reads the files of the
    /// shared checkpoint directory) and report `Resumed`.
    Fallback { generation: u32, step: u32, placements: Vec<Placement>, parts: Vec<SavedPart> },
}

impl Message {
    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Register { .. } => "register",
            Message::Assign(_) => "assign",
            Message::Ready { .. } => "ready",
            Message::StepStart { .. } => "step-start",
            Message::Activation { .. } => "activation",
            Message::Gradient { .. } => "gradient",
            Message::Loss { .. } => "loss",
            Message::LayerUpdated { .. } => "layer-updated",
            Message::LayerNorms { .. } => "layer-norms",
            Message::ClipScale { .. } => "clip-scale",
            Message::Finish => "finish",
            Message::Final { .. } => "final",
            Message::Notice { .. } => "notice",
            Message::Pause { .. } => "pause",
            Message::Paused { .. } => "paused",
            Message::Repartition { .. } => "repartition",
            Message::Handover { .. } => "handover",
            Message::Migrated { .. } => "migrated",
            Message::Resumed { .. } => "resumed",
            Message::Retire => "retire",
            Message::Abort { .. } => "abort",
            Message::Preempt { .. } => "preempt",
            Message::Reply { .. } => "reply",
            Message::Recompute { .. } => "recompute",
            Message::Replay { .. } => "replay",
            Message::EvalStart { .. } => "eval-start",
            Message::EvalActivation { .. } => "eval-activation",
            Message::EvalLoss { .. } => "eval-loss",
            Message::Snapshot { .. } => "snapshot",
            Message::Snapshotted { .. } => "snapshotted",
            Message::Saved { .. } => "saved",
            Message::Reports { .. } => "reports",
            Message::Replica { .. } => "replica",
            Message::ReplicaSeed { .. } => "replica-seed",
            Message::Replicated { .. } => "replicated",
            Message::Heartbeat { .. } => "heartbeat",
            Message::Rollback { .. } => "rollback",
            Message::RolledBack { .. } => "rolled-back",
            Message::Restore { .. } => "restore",
            Message::Fallback { .. } => "fallback",
        }
    }

    /// True for the messages workers send each other (data, recompute
    /// requests, handovers); every other message a worker takes in is a
    /// control message, which only the coordinator may send.
    pub fn is_between_workers(&self) -> bool {
        matches!(
            self,
            Message::Activation { .. }
                | Message::Gradient { .. }
                | Message::Replay { .. }
                | Message::Recompute { .. }
                | Message::Handover { .. }
                | Message::EvalActivation { .. }
                | Message::Replica { .. }
                | Message::ReplicaSeed { .. }
        )
    }

    /// The generation a message between workers was sent in.
    pub fn generation(&self) -> Option<u32> {
        match self {
            Message::Activation { generation, .. }
            | Message::Gradient { generation, .. }
            | Message::Replay { generation, .. }
            | Message::Recompute { generation, .. }
            | Message::Handover { generation, .. }
            | Message::Replica { generation, .. }
            | Message::ReplicaSeed { generation, .. } => Some(*generation),
            _ => None,
        }
    }

    /// True for messages that carry tensors (sent on the bulk lane).
    pub fn is_bulk(&self) -> bool {
        matches!(
            self,
            Message::Assign(_)
                | Message::StepStart { .. }
                | Message::Activation { .. }
                | Message::Gradient { .. }
                | Message::Replay { .. }
                | Message::Final { .. }
                | Message::Handover { .. }
                | Message::EvalStart { .. }
                | Message::EvalActivation { .. }
                | Message::Replica { .. }
                | Message::ReplicaSeed { .. }
        )
    }
}

/// Archives a message into one frame.
pub fn encode(message: &Message) -> Result<AlignedVec> {
    // Sized up front: growing a buffer of hundreds of MiB by doubling would
    // copy it several times.
    encode_in(message, AlignedVec::with_capacity(size_hint(message)))
}

/// Archives a message into `buffer` (best given [`size_hint`] bytes of room).
/// Tensors resident in device memory are downloaded first (counted): this
/// is where their bytes leave the device.
pub fn encode_in(message: &Message, buffer: AlignedVec) -> Result<AlignedVec> {
    let host;
    let message = if super::host::is_resident(message) {
        host = super::host::to_host(message)?;
        &host
    } else {
        message
    };
    rkyv::api::high::to_bytes_in::<_, BoxedError>(message, buffer)
        .map_err(|e| Error::Protocol(format!("cannot encode {}: {e}", message.kind())))
}

/// About the archived size of `message`: its tensor payload plus room for
/// names and headers.
pub fn size_hint(message: &Message) -> usize {
    let payload = match message {
        Message::Handover { handover, .. } => handover.bytes().total() as usize,
        Message::Activation { tensor, .. }
        | Message::Gradient { tensor, .. }
        | Message::Replay { tensor, .. }
        | Message::EvalActivation { tensor, .. } => tensor.len() * 4,
        // Room for every gradient, so a large frame is not grown by copying.
        Message::Replica { layers, .. } => {
            layers.iter().flat_map(|(_, g)| g).map(|(n, t)| t.len() * 4 + n.len() + 64).sum()
        }
        Message::ReplicaSeed { params, optimizer, .. } => {
            let params: usize = params.iter().map(|(n, t)| t.len() * 4 + n.len() + 64).sum();
            params + optimizer.iter().flat_map(|(_, s)| &s.buffers).map(|b| b.len() * 4 + 16).sum::<usize>()
        }
        _ => 0,
    };
    payload + 4096
}

/// Validates and decodes one frame (16-byte aligned).
pub fn decode(frame: &[u8]) -> Result<Message> {
    let message = decode_unchecked(frame)?;
    check_message(&message)?;
    Ok(message)
}

/// Validates the archive and decodes it, without [`check_message`] (for
/// the head of a split frame, whose element buffers are still missing).
pub(crate) fn decode_unchecked(frame: &[u8]) -> Result<Message> {
    if frame.is_empty() {
        return Err(Error::Protocol("empty frame (0 bytes): not a message".into()));
    }
    if !crate::segment::is_aligned(frame) {
        return Err(Error::Protocol("frame buffer is not 16-byte aligned".into()));
    }
    let archived = rkyv::access::<ArchivedMessage, BoxedError>(frame).map_err(|e| {
        Error::Protocol(format!("invalid frame of {} bytes: {}", frame.len(), without_addresses(&e.to_string(), frame)))
    })?;
    let message = rkyv::deserialize::<Message, BoxedError>(archived)
        .map_err(|e| Error::Protocol(format!("undecodable frame: {e}")))?;
    Ok(message)
}

/// What a decoded message must satisfy: tensors as large as their shapes,
/// valid segments.
pub(crate) fn check_message(message: &Message) -> Result<()> {
    check_tensors(message)?;
    if let Message::Handover { handover, .. } = message {
        for segment in handover.layers.iter().flat_map(|l| &l.segments) {
            segment.validate()?;
        }
        handover.layers.iter().try_for_each(check_optimizer_state)?;
    }
    Ok(())
}

/// A handed-over layer's optimizer state must match its parameters: each
/// buffer as long as the parameter it belongs to (a sender's state that does
/// not fit is the sender's fault, caught here rather than at the next update).
fn check_optimizer_state(layer: &crate::pipeline::migrate::LayerState) -> Result<()> {
    for (name, state) in &layer.optimizer {
        let Some((_, param)) = layer.params.iter().find(|(n, _)| n == name) else {
            return Err(Error::Protocol(format!(
                "layer {} hands over optimizer state of `{name}`, a parameter it does not carry",
                layer.layer
            )));
        };
        if let Some(bad) = state.buffers.iter().find(|b| b.len() != param.len()) {
            return Err(Error::Protocol(format!(
                "layer {} hands over optimizer state of `{name}` of {} elements; the parameter has {}",
                layer.layer,
                bad.len(),
                param.len()
            )));
        }
    }
    Ok(())
}

/// Tensors that arrive must hold as many elements as their shape says.
fn check_tensors(message: &Message) -> Result<()> {
    let tensors: Vec<&Tensor> = match message {
        Message::Assign(a) => a.params.iter().map(|(_, t)| t).collect(),
        Message::StepStart { inputs, targets, .. } | Message::EvalStart { inputs, targets, .. } => inputs
            .iter()
            .map(|(_, t)| t)
            .chain(targets.iter().map(|(_, t)| match t {
                Targets::Values(v) | Targets::Classes(v) => v,
            }))
            .collect(),
        Message::Activation { tensor, .. }
        | Message::Gradient { tensor, .. }
        | Message::Replay { tensor, .. }
        | Message::EvalActivation { tensor, .. } => vec![tensor],
        Message::Handover { handover, .. } => handover_tensors(handover),
        Message::Final { params, .. } | Message::ReplicaSeed { params, .. } => params.iter().map(|(_, t)| t).collect(),
        Message::Replica { layers, .. } => layers.iter().flat_map(|(_, g)| g).map(|(_, t)| t).collect(),
        _ => Vec::new(),
    };
    for t in tensors {
        t.check().map_err(|e| Error::Protocol(format!("a received tensor is malformed: {e}")))?;
    }
    Ok(())
}

/// Every tensor a handover carries (saved tensors are checked by segment validation).
fn handover_tensors(h: &Handover) -> Vec<&Tensor> {
    let mut all: Vec<&Tensor> = h.activations.iter().chain(&h.gradients).map(|(_, _, _, t)| t).collect();
    all.extend(h.targets.iter().map(|(_, _, t)| match t {
        Targets::Values(v) | Targets::Classes(v) => v,
    }));
    all.extend(h.replays.iter().map(|(_, _, _, _, t)| t));
    for layer in &h.layers {
        all.extend(layer.params.iter().map(|(_, t)| t));
        all.extend(layer.kept.iter().map(|(_, _, _, t)| t));
        if let Some(g) = &layer.grads {
            all.extend(g.sum.iter().map(|(_, t)| t));
            all.extend(g.pending.iter().flat_map(|(_, p)| p.iter().map(|(_, t)| t)));
        }
    }
    all
}

/// `text` (an rkyv validation error) with the memory addresses it prints
/// replaced by offsets into `buffer` ("offset 24"), or by "outside the
/// buffer": an address says nothing to a user and differs on every run.
pub fn without_addresses(text: &str, buffer: &[u8]) -> String {
    let base = buffer.as_ptr() as usize;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at]);
        let digits = rest[at + 2..].find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(rest.len() - at - 2);
        match usize::from_str_radix(&rest[at + 2..at + 2 + digits], 16) {
            Ok(address) if digits > 0 && (base..=base + buffer.len()).contains(&address) => {
                out.push_str(&format!("offset {}", address - base))
            }
            Ok(_) if digits > 0 => out.push_str("(outside the buffer)"),
            _ => out.push_str(&rest[at..at + 2 + digits]),
        }
        rest = &rest[at + 2 + digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(m: &Message) -> AlignedVec {
        encode(m).unwrap()
    }

    #[test]
    fn messages_round_trip() {
        let t = Tensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        for m in [
            Message::Register { worker: 3, protocol: PROTOCOL_VERSION, address: "127.0.0.1:4000".into() },
            Message::Activation { generation: 0, step: 1, micro: 2, layer: 4, tensor: t.clone() },
            Message::StepStart {
                step: 0,
                rows: vec![2],
                inputs: vec![(0, t.clone())],
                targets: vec![(0, Targets::Classes(Tensor::from_ids(vec![2], vec![1, 0]).unwrap()))],
            },
            Message::Abort { reason: "bye".into() },
            Message::Reports {
                reports: vec![
                    Report::Loss { step: 1, micro: 0, value: 0.25 },
                    Report::LayerUpdated { step: 1, layer: 7, replica: Some(2) },
                    Report::LayerNorms { step: 1, layer: 7, norms: vec![1.0, 2.0] },
                ],
            },
        ] {
            assert_eq!(decode(&frame(&m)).unwrap(), m);
        }
    }

    #[test]
    fn garbage_and_truncated_frames_are_errors() {
        let t = Tensor::new(vec![3], vec![1.0, 2.0, 3.0]).unwrap();
        let reports = vec![
            Report::LayerUpdated { step: 0, layer: 1, replica: None },
            Report::Loss { step: 0, micro: 2, value: 0.5 },
        ];
        for good in [
            frame(&Message::Gradient { generation: 0, step: 0, micro: 0, layer: 1, tensor: t }),
            frame(&Message::Reports { reports }),
        ] {
            for cut in [0, 3, good.len() / 2, good.len() - 1] {
                let mut short = AlignedVec::<16>::new();
                short.extend_from_slice(&good[..cut]);
                assert!(decode(&short).is_err(), "truncated to {cut}");
            }
        }
        let mut garbage = AlignedVec::<16>::new();
        garbage.extend_from_slice(&[0xFFu8; 64]);
        assert!(decode(&garbage).unwrap_err().to_string().contains("invalid frame"));
    }

    #[test]
    fn inconsistent_tensors_are_refused() {
        let bad = Tensor::malformed(vec![5], vec![1.0]);
        let msg = decode(&frame(&Message::Activation { generation: 0, step: 0, micro: 0, layer: 1, tensor: bad }))
            .unwrap_err();
        assert!(msg.to_string().contains("shape [5] holds 5 elements but 1 were given"), "{msg}");
    }

    #[test]
    fn errors_name_offsets_not_addresses() {
        let buf = vec![0u8; 64];
        let base = buf.as_ptr() as usize;
        let text = format!("ptr {:#x} in range {:#x}..{:#x}, far {:#x}", base + 8, base, base + 64, 0x10usize);
        assert_eq!(
            without_addresses(&text, &buf),
            "ptr offset 8 in range offset 0..offset 64, far (outside the buffer)"
        );
        assert_eq!(without_addresses("0x without digits", &buf), "0x without digits");
        assert!(decode(&[]).unwrap_err().to_string().contains("empty frame (0 bytes)"));
    }
}
