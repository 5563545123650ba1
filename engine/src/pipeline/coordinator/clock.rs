//! Time as an input of the coordinator: the deadlines it keeps (workers
//! joining, a due joiner, a migration's deadline, each member's peer
//! timeout), [`Coordinator::poll_timeout`] to say when it next needs the
//! time, and [`Coordinator::handle_timeout`] to act on it. Drivers sleep
//! until the next event or that deadline.

use std::time::Duration;

use super::{CoordEffect, Coordinator, Phase};

impl Coordinator {
    /// Checks deadlines at time `now` (the same as [`Coordinator::handle_timeout`]).
    pub fn tick(&mut self, now: Duration) -> Vec<CoordEffect> {
        self.handle_timeout(now)
    }

    /// Acts on every deadline passed at `now`: workers that did not join in
    /// time, a planned joiner overdue, a migration past its deadline, and
    /// members silent for longer than the peer timeout (lost).
    pub fn handle_timeout(&mut self, now: Duration) -> Vec<CoordEffect> {
        self.observe(now);
        if self.phase == Phase::Over {
            return Vec::new();
        }
        let waiting = matches!(self.phase, Phase::Registering | Phase::Connecting);
        if waiting && now.saturating_sub(self.started_at) > self.plan.join_timeout {
            let joined = self.addresses.len();
            return self.fail(format!(
                "workers did not join within {:?}: {joined} of {} registered, {} connected to their peers",
                self.plan.join_timeout,
                self.plan.workers,
                self.ready.len()
            ));
        }
        let join_overdue = self.join_wait_since.is_some_and(|t| now.saturating_sub(t) > self.plan.join_timeout);
        if join_overdue && self.join_due() {
            return self.fail(format!("a planned worker did not join within {:?}", self.plan.join_timeout));
        }
        if let Some(reason) = self.migration_overdue(now) {
            return self.fail(reason);
        }
        let mut effects = Vec::new();
        for worker in self.silent(now) {
            let reason = format!("it was silent for more than {:?} (--peer-timeout)", self.plan.faults.peer_timeout);
            effects.extend(self.handle(super::CoordEvent::Lost { worker, reason }, now));
        }
        effects
    }

    /// When the coordinator next needs [`Coordinator::handle_timeout`]
    /// (None: only events can change anything).
    pub fn poll_timeout(&self) -> Option<Duration> {
        let waiting = matches!(self.phase, Phase::Registering | Phase::Connecting);
        let join = waiting.then(|| self.started_at + self.plan.join_timeout);
        let joiner = self.join_wait_since.map(|t| t + self.plan.join_timeout);
        let migration = self.migration_deadline();
        let peers = self.watched().into_iter().map(|w| self.heard(w) + self.plan.faults.peer_timeout).min();
        [join, joiner, migration, peers].into_iter().flatten().min().map(|t| t + Duration::from_millis(1))
    }

    /// Workers whose silence is watched: the members (and survivors of a
    /// recovery) while training runs, except a worker leaving in the
    /// migration under way: its sends may queue behind its own handovers on
    /// a slow link, and the migration's deadline bounds it instead.
    fn watched(&self) -> Vec<u32> {
        if !matches!(self.phase, Phase::Running { .. }) {
            return Vec::new();
        }
        let mut watched = self.members();
        if let Some(r) = &self.recovery {
            watched.extend(r.survivors());
        }
        let leaving = |w: &u32| self.migration.as_ref().is_some_and(|m| m.is_leaving(*w));
        watched.retain(|w| !self.lost.contains(w) && !self.may_go(*w) && !leaving(w));
        watched.sort_unstable();
        watched.dedup();
        watched
    }

    /// Takes in the time of an event or timeout. Called long after its own
    /// deadline (later than [`Coordinator::poll_timeout`] plus a quarter of
    /// the peer timeout), the coordinator itself was not running (an
    /// overloaded machine, a stopped process): it heard nobody in that gap
    /// because it did not listen, so the whole gap since it last ran is not
    /// counted as any worker's silence. Invariant: a worker is declared
    /// silent only for time the coordinator was running and due to hear it.
    pub(super) fn observe(&mut self, now: Duration) {
        let slack = self.plan.faults.peer_timeout / 4;
        if self.poll_timeout().is_some_and(|due| now > due + slack) {
            let gap = now.saturating_sub(self.now);
            self.last_heard.values_mut().for_each(|t| *t += gap);
            self.stalls.push((self.now, gap));
        }
        self.now = self.now.max(now);
    }

    /// The coordinator's own stalls: (when it last ran before, how long).
    pub fn stalls(&self) -> &[(Duration, Duration)] {
        &self.stalls
    }

    fn heard(&self, worker: u32) -> Duration {
        self.last_heard.get(&worker).copied().unwrap_or(self.now)
    }

    /// Watched workers not heard from for longer than the peer timeout.
    fn silent(&self, now: Duration) -> Vec<u32> {
        let timeout = self.plan.faults.peer_timeout;
        self.watched().into_iter().filter(|&w| now.saturating_sub(self.heard(w)) > timeout).collect()
    }
}
