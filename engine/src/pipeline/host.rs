//! Bytes leave the device here: before a message is encoded, every tensor
//! it carries that is resident in device memory (an activation, a gradient,
//! a handover's parameters, sums and segments, a worker's final parameters)
//! is downloaded, one counted transfer each. Host messages pass unchanged.

use super::migrate::Handover;
use super::protocol::Message;
use crate::{Result, Targets, Tensor};

/// Whether `message` carries a resident tensor.
pub fn is_resident(message: &Message) -> bool {
    let resident = |t: &Tensor| t.device_buf().is_some();
    let targets = |t: &Targets| match t {
        Targets::Values(v) | Targets::Classes(v) => resident(v),
    };
    match message {
        Message::Assign(a) => a.params.iter().any(|(_, t)| resident(t)),
        Message::StepStart { inputs, targets: ts, .. } => {
            inputs.iter().any(|(_, t)| resident(t)) || ts.iter().any(|(_, t)| targets(t))
        }
        Message::Activation { tensor, .. } | Message::Gradient { tensor, .. } | Message::Replay { tensor, .. } => {
            resident(tensor)
        }
        Message::Final { params, .. } | Message::ReplicaSeed { params, .. } => params.iter().any(|(_, t)| resident(t)),
        Message::Replica { layers, .. } => layers.iter().flat_map(|(_, g)| g).any(|(_, t)| resident(t)),
        Message::EvalActivation { tensor, .. } => resident(tensor),
        Message::EvalStart { inputs, targets: ts, .. } => {
            inputs.iter().any(|(_, t)| resident(t)) || ts.iter().any(|(_, t)| targets(t))
        }
        Message::Handover { handover: h, .. } => {
            h.activations.iter().chain(&h.gradients).any(|(_, _, _, t)| resident(t))
                || h.targets.iter().any(|(_, _, t)| targets(t))
                || h.replays.iter().any(|(_, _, _, _, t)| resident(t))
                || h.layers.iter().any(|l| {
                    l.params.iter().any(|(_, t)| resident(t))
                        || l.kept.iter().any(|(_, _, _, t)| resident(t))
                        || l.segments.iter().any(|s| s.is_resident())
                        || l.grads.as_ref().is_some_and(|g| {
                            g.sum.iter().any(|(_, t)| resident(t))
                                || g.pending.iter().flat_map(|(_, p)| p).any(|(_, t)| resident(t))
                        })
                })
        }
        _ => false,
    }
}

/// A copy of `message` with every resident tensor downloaded.
pub fn to_host(message: &Message) -> Result<Message> {
    let mut out = message.clone();
    visit(&mut out, &mut |t| {
        if t.device_buf().is_some() {
            *t = t.to_host()?;
        }
        Ok(())
    })?;
    if let Message::Handover { handover, .. } = &mut out {
        for segment in handover.layers.iter_mut().flat_map(|l| &mut l.segments) {
            segment.to_host()?;
        }
    }
    Ok(out)
}

pub(super) type Visit<'a> = dyn FnMut(&mut Tensor) -> Result<()> + 'a;

pub(super) fn visit(message: &mut Message, f: &mut Visit<'_>) -> Result<()> {
    match message {
        Message::Assign(a) => a.params.iter_mut().try_for_each(|(_, t)| f(t)),
        Message::StepStart { inputs, targets, .. } => {
            inputs.iter_mut().try_for_each(|(_, t)| f(t))?;
            targets.iter_mut().try_for_each(|(_, t)| targets_visit(t, f))
        }
        Message::Activation { tensor, .. } | Message::Gradient { tensor, .. } | Message::Replay { tensor, .. } => {
            f(tensor)
        }
        Message::Handover { handover, .. } => handover_visit(handover, f),
        Message::Final { params, .. } | Message::ReplicaSeed { params, .. } => {
            params.iter_mut().try_for_each(|(_, t)| f(t))
        }
        Message::Replica { layers, .. } => layers.iter_mut().flat_map(|(_, g)| g).try_for_each(|(_, t)| f(t)),
        Message::EvalActivation { tensor, .. } => f(tensor),
        Message::EvalStart { inputs, targets, .. } => {
            inputs.iter_mut().try_for_each(|(_, t)| f(t))?;
            targets.iter_mut().try_for_each(|(_, t)| targets_visit(t, f))
        }
        _ => Ok(()),
    }
}

fn targets_visit(t: &mut Targets, f: &mut Visit<'_>) -> Result<()> {
    match t {
        Targets::Values(v) | Targets::Classes(v) => f(v),
    }
}

fn handover_visit(h: &mut Handover, f: &mut Visit<'_>) -> Result<()> {
    h.activations.iter_mut().chain(&mut h.gradients).try_for_each(|(_, _, _, t)| f(t))?;
    h.targets.iter_mut().try_for_each(|(_, _, t)| targets_visit(t, f))?;
    h.replays.iter_mut().try_for_each(|(_, _, _, _, t)| f(t))?;
    for layer in &mut h.layers {
        layer.params.iter_mut().try_for_each(|(_, t)| f(t))?;
        layer.kept.iter_mut().try_for_each(|(_, _, _, t)| f(t))?;
        if let Some(g) = &mut layer.grads {
            g.sum.iter_mut().try_for_each(|(_, t)| f(t))?;
            g.pending.iter_mut().flat_map(|(_, p)| p.iter_mut()).try_for_each(|(_, t)| f(t))?;
        }
    }
    Ok(())
}
