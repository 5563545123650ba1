//! The coordinator's side of a migration: notices, the new layout, the
//! drain counts, and completion.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{CoordEffect, Coordinator, MigrationRecord, Phase};
use crate::pipeline::migrate::MovedBytes;
use crate::pipeline::protocol::{Message, Placement, Span, WorkDone};
use crate::pipeline::{Layout, Partition};
use crate::{Error, Result};

/// A migration under way.
#[derive(Debug)]
pub(super) struct Migration {
    generation: u32,
    leaving: BTreeSet<u32>,
    joining: Vec<u32>,
    notice_at: Duration,
    deadline: Duration,
    partition: Partition,
    placements: Vec<Placement>,
    /// Data messages each member sent to each other member in the old generation.
    paused: BTreeMap<u32, Vec<(u32, u64)>>,
    migrated: BTreeMap<u32, (MovedBytes, Duration)>,
    resumed: BTreeSet<u32>,
}

impl Migration {
    /// True for a worker leaving in this migration.
    pub(super) fn is_leaving(&self, worker: u32) -> bool {
        self.leaving.contains(&worker)
    }

    /// True for a worker leaving or joining in this migration.
    pub(super) fn involves(&self, worker: u32) -> bool {
        self.leaving.contains(&worker) || self.joining.contains(&worker)
    }

    /// Cancels the migration (a member was lost meanwhile): its generation,
    /// the notices of its leaving workers (to queue again) and its joiners.
    pub(super) fn cancel(self) -> (u32, Vec<(u32, Duration, Duration)>, Vec<u32>) {
        let notices = self.leaving.iter().map(|&w| (w, self.notice_at, self.deadline)).collect();
        (self.generation, notices, self.joining)
    }

    /// True for a leaving worker whose handovers were all delivered.
    pub(super) fn has_shipped_and_leaves(&self, worker: u32) -> bool {
        self.leaving.contains(&worker) && self.migrated.contains_key(&worker)
    }
}

impl Coordinator {
    /// An admin's request (`baton preempt`) to preempt `worker` with
    /// `grace`: the worker is told, and answers with its notice as if it
    /// came from its cloud. Refused (the job goes on) when the worker holds
    /// no layers, is already leaving, or training is not running.
    pub fn preempt(&self, worker: u32, grace: Duration) -> Result<Vec<CoordEffect>> {
        let refuse = |why: String| Err(Error::Usage(format!("cannot preempt worker {worker}: {why}")));
        if !self.training() {
            return refuse("training is not running (it has not started, or is finishing)".into());
        }
        let leaving = self.migration.as_ref().is_some_and(|m| m.leaving.contains(&worker));
        if leaving || self.notices.iter().any(|(w, _, _)| *w == worker) {
            return refuse("it is already leaving".into());
        }
        if !self.members().contains(&worker) {
            return refuse(format!("it is not a member of the job (members: {:?})", self.members()));
        }
        let going = |w: &u32| {
            *w == worker
                || self.migration.as_ref().is_some_and(|m| m.leaving.contains(w))
                || self.notices.iter().any(|(n, _, _)| n == w)
        };
        if self.members().iter().all(going) {
            return refuse("it is the last worker left: nobody could take over its layers".into());
        }
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        Ok(vec![CoordEffect::Send { worker, message: Message::Preempt { worker, grace_ms } }])
    }

    pub(super) fn on_notice(&mut self, worker: u32, grace: Duration, now: Duration) -> Result<Vec<CoordEffect>> {
        let leaving = self.migration.as_ref().is_some_and(|m| m.leaving.contains(&worker));
        let queued = self.notices.iter().any(|(w, _, _)| *w == worker);
        if leaving || queued || self.retired.contains(&worker) || self.phase == Phase::Finishing {
            return Ok(Vec::new());
        }
        if !self.members().contains(&worker) {
            return Err(Error::peer(format!("worker {worker}"), "it sent a notice but holds no layers"));
        }
        self.notices.push_back((worker, now, now + grace));
        self.start_migration()
    }

    /// Starts a migration for every queued notice and every joiner whose
    /// join point was reached, unless one is under way (a notice or join
    /// arriving meanwhile waits for it to complete).
    pub(super) fn start_migration(&mut self) -> Result<Vec<CoordEffect>> {
        // A planned joiner comes in at its join point; one that connected
        // by itself (a hand joiner) as soon as it is ready.
        let due = self.join_due();
        let hand = self.joiners.iter().copied().find(|w| self.hand_joiners.contains(w));
        let planned = self.joiners.iter().copied().find(|w| !self.hand_joiners.contains(w)).filter(|_| due);
        let joining: Vec<u32> = planned.or(hand).into_iter().collect();
        let idle = self.notices.is_empty() && joining.is_empty();
        let busy = self.migration.is_some() || self.recovering();
        if busy || idle || !matches!(self.phase, Phase::Running { .. }) {
            return Ok(Vec::new());
        }
        for w in &joining {
            self.joiners.remove(w);
            if !self.hand_joiners.remove(w) {
                self.joins.pop_front();
                self.join_wait_since = None;
            }
        }
        let notices: Vec<_> = self.notices.drain(..).collect();
        let leaving: BTreeSet<u32> = notices.iter().map(|(w, _, _)| *w).collect();
        let mut survivors: Vec<u32> = self.members().into_iter().filter(|w| !leaving.contains(w)).collect();
        survivors.extend(&joining);
        survivors.sort_unstable();
        if survivors.is_empty() {
            return Err(Error::Usage("every worker was preempted: nothing is left to take over the layers".into()));
        }
        let partition = Partition::balanced(&self.plan.costs, survivors.len())?;
        let generation = self.generation + 1;
        let now = notices.iter().map(|n| n.1).min();
        self.migration = Some(Migration {
            generation,
            notice_at: now.unwrap_or(self.now),
            deadline: notices.iter().map(|n| n.2).min().unwrap_or(Duration::MAX),
            placements: self.placements_for(&partition, &survivors),
            partition,
            leaving,
            joining,
            paused: BTreeMap::new(),
            migrated: BTreeMap::new(),
            resumed: BTreeSet::new(),
        });
        let pause = |w| CoordEffect::Send { worker: w, message: Message::Pause { generation } };
        Ok(self.members().into_iter().map(pause).collect())
    }

    fn migration_mut(&mut self, worker: u32, what: &str) -> Result<&mut Migration> {
        self.migration
            .as_mut()
            .ok_or_else(|| Error::peer(format!("worker {worker}"), format!("it sent `{what}` outside a migration")))
    }

    /// Once every member paused: the new layout, with each member's drain counts.
    pub(super) fn on_paused(&mut self, worker: u32, sent: Vec<(u32, u64)>) -> Result<Vec<CoordEffect>> {
        self.migration_mut(worker, "paused")?.paused.insert(worker, sent);
        let members = self.members();
        let m = self.migration.as_ref().expect("checked above");
        if members.iter().any(|w| !m.paused.contains_key(w)) {
            return Ok(Vec::new());
        }
        // A migration starts and ends within one step (no step starts
        // during one), and every member was sent that step's start.
        let Phase::Running { step, .. } = self.phase else {
            let detail = "paused while training is not running".to_string();
            return Err(Error::Peer { peer: format!("worker {worker}"), detail });
        };
        let expected_by = |receiver: u32| -> Vec<(u32, u64)> {
            let from = |(sender, sent): (&u32, &Vec<(u32, u64)>)| {
                sent.iter().find(|(to, _)| *to == receiver).map(|(_, n)| (*sender, *n))
            };
            m.paused.iter().filter_map(from).collect()
        };
        let repartition = |w: u32| CoordEffect::Send {
            worker: w,
            message: Message::Repartition {
                generation: m.generation,
                step,
                placements: m.placements.clone(),
                expected: expected_by(w),
            },
        };
        Ok(members.into_iter().chain(m.joining.iter().copied()).map(repartition).collect())
    }

    pub(super) fn on_migrated(
        &mut self,
        worker: u32,
        bytes: MovedBytes,
        ship_us: u64,
        farewell: Option<(WorkDone, Vec<Span>)>,
        now: Duration,
    ) -> Result<Vec<CoordEffect>> {
        self.migration_mut(worker, "migrated")?.migrated.insert(worker, (bytes, Duration::from_micros(ship_us)));
        if let Some(farewell) = farewell {
            self.work.farewells.insert(worker, farewell);
        }
        self.maybe_complete(now)
    }

    pub(super) fn on_resumed(&mut self, worker: u32, now: Duration) -> Result<Vec<CoordEffect>> {
        self.migration_mut(worker, "resumed")?.resumed.insert(worker);
        self.maybe_complete(now)
    }

    /// A migration completes when every member shipped and every survivor
    /// resumed: the new generation is in force, leavers may exit, the next
    /// queued notice (or the deferred end of step) is taken up.
    fn maybe_complete(&mut self, now: Duration) -> Result<Vec<CoordEffect>> {
        let members = self.members();
        let Some(m) = &self.migration else { return Ok(Vec::new()) };
        let survivors: Vec<u32> = m.placements.iter().map(|p| p.worker).collect();
        let shipped = members.iter().chain(&m.joining).all(|w| m.migrated.contains_key(w));
        if !shipped || survivors.iter().any(|w| !m.resumed.contains(w)) {
            return Ok(Vec::new());
        }
        let m = self.migration.take().expect("checked above");
        let mut bytes = MovedBytes::default();
        m.migrated.values().for_each(|(b, _)| bytes.add(b));
        let record = MigrationRecord {
            generation: m.generation,
            leaving: m.leaving.iter().copied().collect(),
            joining: m.joining.clone(),
            notice_at: m.notice_at,
            deadline: m.deadline,
            bytes,
            ship_time: m.migrated.values().map(|(_, t)| *t).max().unwrap_or_default(),
            resumed_after: now.saturating_sub(m.notice_at),
            before: self.partition.clone(),
            after: m.partition.clone(),
        };
        let before = std::mem::take(&mut self.placements);
        (self.generation, self.partition, self.placements) = (m.generation, m.partition.clone(), m.placements);
        let workers: Vec<u32> = self.placements.iter().map(|p| p.worker).collect();
        self.partitions.push(Layout::new(m.generation, &m.partition, &workers));
        self.migrations.push(record.clone());
        self.retired.extend(m.leaving.iter().copied());
        let mut effects = self.linger(&m.leaving, &before);
        effects.push(CoordEffect::Migrated(record));
        effects.extend(self.assign_waiting_joiner());
        effects.extend(self.start_migration()?);
        effects.extend(self.maybe_finish_step()?);
        Ok(effects)
    }

    /// When the migration under way must be complete (its first leaver's deadline).
    pub(super) fn migration_deadline(&self) -> Option<Duration> {
        self.migration.as_ref().map(|m| m.deadline).filter(|d| *d != Duration::MAX)
    }

    /// A migration whose leaving worker has not shipped by its deadline.
    pub(super) fn migration_overdue(&self, now: Duration) -> Option<String> {
        let m = self.migration.as_ref()?;
        let late: Vec<u32> = m.leaving.iter().filter(|w| !m.migrated.contains_key(w)).copied().collect();
        (now > m.deadline && !late.is_empty()).then(|| {
            format!(
                "worker(s) {late:?} did not finish shipping their layers before the preemption deadline \
                 ({:?} after the notice), even leaving out segments to recompute",
                m.deadline.saturating_sub(m.notice_at)
            )
        })
    }
}
