//! A worker's protocol logic without I/O: turns the coordinator's assignment
//! into a [`Stage`], feeds it messages, and routes its effects to the owner
//! of each layer. The driver moves the bytes and runs the ready actions one
//! at a time (so it can time them and stop at action boundaries).

use std::sync::Arc;

use super::protocol::{Assignment, Message, Placement, Span};
use super::stage::Work;
use super::{Effect, Stage, StageEvent};
use crate::{Error, Model, Optimizer, ParamStore, Result};

/// Builds a model from its spec (JSON); the models crate provides it.
pub type ModelFactory = Box<dyn Fn(&str) -> Result<Model> + Send>;

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    Coordinator,
    Worker(u32),
}

/// What the worker asks the driver to do.
#[derive(Debug, PartialEq)]
pub enum Out {
    Send {
        to: Dest,
        message: Message,
    },
    /// Connect to these workers (the ones with a lower number; higher ones connect to us).
    Connect(Vec<Placement>),
    /// Training is over: the driver sends nothing more and exits.
    Exit,
}

/// One worker process's state.
pub struct Worker {
    pub id: u32,
    factory: ModelFactory,
    stage: Option<Stage>,
    placements: Vec<Placement>,
    pub spans: Vec<Span>,
}

impl Worker {
    pub fn new(id: u32, factory: ModelFactory) -> Worker {
        Worker { id, factory, stage: None, placements: Vec::new(), spans: Vec::new() }
    }

    /// True once the coordinator's assignment arrived.
    pub fn assigned(&self) -> bool {
        self.stage.is_some()
    }

    /// Workers this one must be connected to before it is ready (all others).
    pub fn peers(&self) -> Vec<u32> {
        self.placements.iter().map(|p| p.worker).filter(|&w| w != self.id).collect()
    }

    /// The message (to the coordinator) that says every peer is connected.
    pub fn ready_message(&self) -> Message {
        Message::Ready { worker: self.id }
    }

    /// Takes in a message from the coordinator or a peer.
    pub fn handle(&mut self, message: Message) -> Result<Vec<Out>> {
        let event = match message {
            Message::Assign(assignment) => return self.assign(assignment),
            Message::StepStart { step, rows, inputs, targets } => StageEvent::StepStart { step, rows, inputs, targets },
            Message::Activation { step, micro, layer, tensor } => StageEvent::Activation { step, micro, layer, tensor },
            Message::Gradient { step, micro, layer, tensor } => StageEvent::Gradient { step, micro, layer, tensor },
            Message::Finish => return self.finish(),
            Message::Abort { reason } => {
                return Err(Error::Pipeline(format!("the coordinator aborted the run: {reason}")))
            }
            other => {
                return Err(Error::Pipeline(format!("worker {} got an unexpected {} message", self.id, other.kind())))
            }
        };
        self.stage_mut()?.handle(event)?;
        Ok(Vec::new())
    }

    fn stage_mut(&mut self) -> Result<&mut Stage> {
        self.stage.as_mut().ok_or_else(|| Error::Pipeline("a step message arrived before the assignment".into()))
    }

    fn assign(&mut self, a: Assignment) -> Result<Vec<Out>> {
        let me = a
            .placements
            .iter()
            .position(|p| p.worker == self.id)
            .ok_or_else(|| Error::Pipeline(format!("the assignment has no place for worker {}", self.id)))?;
        let model = Arc::new((self.factory)(&a.spec)?);
        let place = &a.placements[me];
        let params: ParamStore = a.params.into_iter().collect();
        let stages = (me as u32, a.placements.len() as u32);
        let optimizer = Optimizer::new(a.optimizer.parse()?);
        self.stage = Some(Stage::new(model, place.first..place.end, stages, a.schedule.parse()?, params, optimizer)?);
        let lower = a.placements.iter().filter(|p| p.worker < self.id).cloned().collect();
        self.placements = a.placements;
        Ok(vec![Out::Connect(lower)])
    }

    /// The step in progress, once the stage has one.
    pub fn current_step(&self) -> Option<u32> {
        self.stage.as_ref().and_then(Stage::current_step)
    }

    /// The next ready unit of work, if any.
    pub fn ready(&self) -> Option<Work> {
        self.stage.as_ref().and_then(Stage::ready)
    }

    /// Runs the next ready action and routes its effects.
    pub fn run_next(&mut self) -> Result<Vec<Out>> {
        let effects = self.stage_mut()?.run_next()?;
        effects.into_iter().map(|e| self.route(e)).collect()
    }

    fn owner(&self, layer: u32) -> Result<Dest> {
        self.placements
            .iter()
            .find(|p| (p.first..p.end).contains(&layer))
            .map(|p| Dest::Worker(p.worker))
            .ok_or_else(|| Error::Pipeline(format!("no worker holds layer {layer}")))
    }

    fn route(&self, effect: Effect) -> Result<Out> {
        let (to, message) = match effect {
            Effect::SendActivation { step, micro, layer, tensor } => {
                (self.owner(layer)?, Message::Activation { step, micro, layer, tensor })
            }
            Effect::SendGradient { step, micro, layer, tensor } => {
                (self.owner(layer)?, Message::Gradient { step, micro, layer, tensor })
            }
            Effect::Loss { step, micro, value } => (Dest::Coordinator, Message::Loss { step, micro, value }),
            Effect::LayerUpdated { step, layer } => (Dest::Coordinator, Message::LayerUpdated { step, layer }),
        };
        Ok(Out::Send { to, message })
    }

    fn finish(&mut self) -> Result<Vec<Out>> {
        let stage = self.stage.take().ok_or_else(|| Error::Pipeline("finish before any assignment".into()))?;
        if !stage.idle() {
            return Err(Error::Pipeline("finish arrived in the middle of a step".into()));
        }
        let message = Message::Final {
            worker: self.id,
            params: stage.params.into_iter().collect(),
            counters: stage.counters,
            spans: std::mem::take(&mut self.spans),
        };
        Ok(vec![Out::Send { to: Dest::Coordinator, message }, Out::Exit])
    }
}
