//! Who may be in the job: workers that connect by themselves (hand
//! joiners, admitted one at a time at the next safe point through the same
//! repartition as `--join`), and peers that break the protocol while
//! holding nothing, which are dropped rather than failing the job.

use super::{CoordEffect, Coordinator, Phase};
use crate::pipeline::protocol::{Message, Placement};
use crate::pipeline::Partition;
use crate::{Error, Result};

impl Coordinator {
    /// A joiner registers: it gets the current layout (without layers of its
    /// own) and connects to every member.
    pub(super) fn on_join_register(&mut self, worker: u32, protocol: u32, address: String) -> Result<Vec<CoordEffect>> {
        check_protocol(worker, protocol)?;
        if !self.training() || self.addresses.insert(worker, address).is_some() {
            return Err(Error::peer(format!("worker {worker}"), "it registered twice or outside training"));
        }
        Ok(vec![CoordEffect::Send { worker, message: self.assignment(worker) }])
    }

    pub(super) fn on_join_ready(&mut self, worker: u32) -> Result<Vec<CoordEffect>> {
        if !self.addresses.contains_key(&worker) || !self.joiners.insert(worker) {
            return Err(Error::peer(format!("worker {worker}"), "it reported ready out of turn"));
        }
        self.start_migration()
    }

    /// Whether a `Register` from `worker` is a worker joining by itself (not
    /// an initial member, not a planned `--join`): an id the plan does not
    /// know, or, once training runs, a former member coming back.
    pub(super) fn is_hand_joiner(&self, worker: u32) -> bool {
        let planned = (worker as usize) < self.plan.workers + self.plan.joins.len();
        match self.phase {
            Phase::Registering | Phase::Connecting => !planned,
            _ => !planned || (self.addresses.contains_key(&worker) && !self.members().contains(&worker)),
        }
    }

    /// A worker that connected by itself registers: it waits its turn (one
    /// joiner at a time, never during a migration), then gets the current
    /// layout without layers, connects to every member, and takes layers at
    /// the next safe point, through the same repartition as `--join`.
    pub(super) fn on_hand_register(&mut self, worker: u32, protocol: u32, address: String) -> Result<Vec<CoordEffect>> {
        check_protocol(worker, protocol)?;
        let refuse = |reason: String| Ok(vec![CoordEffect::Send { worker, message: Message::Abort { reason } }]);
        if matches!(self.phase, Phase::Finishing | Phase::Over) {
            return refuse(format!("worker {worker} cannot join: the job is finishing"));
        }
        if !self.hand_joiners.insert(worker) {
            return refuse(format!("worker {worker} registered twice while waiting to join"));
        }
        self.retired.remove(&worker);
        self.waiting.push_back((worker, address));
        Ok(self.assign_waiting_joiner())
    }

    /// The next waiting hand joiner gets its assignment once training runs,
    /// no migration is under way and no other hand joiner is on its way in.
    pub(super) fn assign_waiting_joiner(&mut self) -> Vec<CoordEffect> {
        let on_its_way = self.hand_joiners.iter().any(|w| !self.waiting.iter().any(|(v, _)| v == w));
        let busy = self.migration.is_some() || self.recovering();
        if on_its_way || busy || !matches!(self.phase, Phase::Running { .. }) {
            return Vec::new();
        }
        let Some((worker, address)) = self.waiting.pop_front() else { return Vec::new() };
        self.addresses.insert(worker, address);
        vec![CoordEffect::Send { worker, message: self.assignment(worker) }]
    }

    /// True for a hand joiner that is not a member yet.
    pub(super) fn is_pending_hand_joiner(&self, worker: u32) -> bool {
        self.hand_joiners.contains(&worker)
    }

    /// A hand joiner that went away before it held layers: forgotten, and
    /// the job goes on (the next waiting joiner may come in).
    pub(super) fn forget_joiner(&mut self, worker: u32) -> Vec<CoordEffect> {
        self.hand_joiners.remove(&worker);
        self.waiting.retain(|(w, _)| *w != worker);
        self.joiners.remove(&worker);
        self.addresses.remove(&worker);
        self.assign_waiting_joiner()
    }

    /// At the end of training: hand joiners that never got layers are told so.
    pub(super) fn turn_away_joiners(&mut self) -> Vec<CoordEffect> {
        let reason = |w: u32| format!("worker {w} cannot join: the job finished before it could take layers");
        let turned: Vec<u32> = std::mem::take(&mut self.hand_joiners).into_iter().collect();
        self.waiting.clear();
        turned
            .into_iter()
            .map(|w| CoordEffect::Send { worker: w, message: Message::Abort { reason: reason(w) } })
            .collect()
    }

    /// A peer whose misbehaviour need not fail the job: one that never
    /// registered, or a hand joiner that holds no layers yet.
    pub(super) fn may_drop(&self, worker: u32) -> bool {
        self.is_pending_hand_joiner(worker) || !self.addresses.contains_key(&worker)
    }

    /// Tells a misbehaving peer why it is dropped, and forgets it.
    pub(super) fn drop_peer(&mut self, worker: u32, error: &Error) -> Vec<CoordEffect> {
        let reason = format!("the coordinator dropped worker {worker}: {error}");
        let mut effects = vec![CoordEffect::Send { worker, message: Message::Abort { reason } }];
        if self.is_pending_hand_joiner(worker) {
            effects.extend(self.forget_joiner(worker));
        }
        effects
    }
}

pub(super) fn check_protocol(worker: u32, protocol: u32) -> Result<()> {
    use crate::pipeline::protocol::PROTOCOL_VERSION;
    if protocol != PROTOCOL_VERSION {
        return Err(Error::Protocol(format!(
            "worker {worker} speaks protocol {protocol}, this coordinator {PROTOCOL_VERSION}"
        )));
    }
    Ok(())
}

impl Coordinator {
    /// Placements of `partition` on `workers` (stage i on `workers[i]`).
    pub(super) fn placements_for(&self, partition: &Partition, workers: &[u32]) -> Vec<Placement> {
        let place = |(r, &w): (&std::ops::Range<u32>, &u32)| Placement {
            worker: w,
            address: self.addresses.get(&w).cloned().unwrap_or_default(),
            first: r.start,
            end: r.end,
        };
        partition.stages.iter().zip(workers).map(place).collect()
    }
}

/// Planned joins (`--join STEP[:LOSSES]`).
impl Coordinator {
    /// True when the next planned join's point has been reached.
    pub(super) fn join_due(&self) -> bool {
        let (step, losses) = self.losses_in_step();
        self.joins.front().is_some_and(|&(s, l)| step != u32::MAX && (step, losses) >= (s, l))
    }

    /// The joiner's process is started once its join point is reached.
    pub(super) fn spawn_due_joiner(&mut self) -> Vec<CoordEffect> {
        let worker = (self.plan.workers + self.plan.joins.len() - self.joins.len()) as u32;
        match self.join_due() && !self.addresses.contains_key(&worker) && !self.spawned.contains(&worker) {
            true => {
                self.spawned.insert(worker);
                vec![CoordEffect::Spawn { worker }]
            }
            false => Vec::new(),
        }
    }
}
