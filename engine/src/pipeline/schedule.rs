//! Pipeline schedules as data.
//!
//! An [`Action`] prints as `2F0` (stage 2, forward, micro-batch 0) and parses
//! back, so a schedule can be printed, diffed, simulated and re-planned.
//! Backward on every stage runs micro-batches in increasing order; together
//! with the ordered gradient accumulator this makes the step's bits
//! independent of the schedule.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// Forward or backward of one micro-batch through a stage's layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Forward,
    Backward,
}

/// One compute action of one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Action {
    pub stage: u32,
    pub phase: Phase,
    pub micro: u32,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = if self.phase == Phase::Forward { 'F' } else { 'B' };
        write!(f, "{}{p}{}", self.stage, self.micro)
    }
}

impl FromStr for Action {
    type Err = Error;
    fn from_str(s: &str) -> Result<Action> {
        let bad = || Error::Schedule(format!("`{s}` is not an action like 2F0 or 1B3"));
        let at = s.find(['F', 'B']).ok_or_else(bad)?;
        let phase = if &s[at..=at] == "F" { Phase::Forward } else { Phase::Backward };
        let stage = s[..at].parse().map_err(|_| bad())?;
        let micro = s[at + 1..].parse().map_err(|_| bad())?;
        Ok(Action { stage, phase, micro })
    }
}

/// Which schedule the stages follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScheduleKind {
    /// All forwards, then all backwards.
    Gpipe,
    /// Warm-up forwards, then alternate one forward and one backward.
    #[default]
    OneFOneB,
}

impl FromStr for ScheduleKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<ScheduleKind> {
        match s {
            "gpipe" => Ok(ScheduleKind::Gpipe),
            "1f1b" => Ok(ScheduleKind::OneFOneB),
            other => Err(Error::Schedule(format!("unknown schedule `{other}` (gpipe, 1f1b)"))),
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if *self == ScheduleKind::Gpipe { "gpipe" } else { "1f1b" })
    }
}

/// The actions of `stage` (of `stages`) for one step of `micro_batches`.
pub fn stage_actions(kind: ScheduleKind, stage: u32, stages: u32, micro_batches: u32) -> Vec<Action> {
    let all: Vec<u32> = (0..micro_batches).collect();
    plan_actions(kind, (stage, stages), &all, &all, 0)
}

/// Orders a stage's remaining work: forwards of `forwards` and backwards of
/// `backwards` (each in increasing micro-batch order); `in_flight`
/// micro-batches already went forward here and wait for their backward.
/// GPipe runs every forward first; 1F1B runs `stages - 1 - stage` warm-up
/// forwards (fewer by `in_flight`), then alternates, then drains backwards.
/// At the start of a step this is the textbook schedule; after a migration
/// it is the same rule applied to what is left.
pub fn plan_actions(
    kind: ScheduleKind,
    (stage, stages): (u32, u32),
    forwards: &[u32],
    backwards: &[u32],
    in_flight: usize,
) -> Vec<Action> {
    let f = |&micro: &u32| Action { stage, phase: Phase::Forward, micro };
    let b = |&micro: &u32| Action { stage, phase: Phase::Backward, micro };
    if kind == ScheduleKind::Gpipe {
        return forwards.iter().map(f).chain(backwards.iter().map(b)).collect();
    }
    let warmup = ((stages - 1 - stage) as usize).saturating_sub(in_flight).min(forwards.len());
    let mut actions: Vec<Action> = forwards[..warmup].iter().map(f).collect();
    let (mut fs, mut bs) = (forwards[warmup..].iter(), backwards.iter());
    loop {
        match (fs.next(), bs.next()) {
            (None, None) => return actions,
            (fwd, bwd) => actions.extend(fwd.map(f).into_iter().chain(bwd.map(b))),
        }
    }
}

/// Every stage's actions for one step.
pub fn schedule(kind: ScheduleKind, stages: u32, micro_batches: u32) -> Vec<Vec<Action>> {
    (0..stages).map(|s| stage_actions(kind, s, stages, micro_batches)).collect()
}

/// Formats a stage's actions as `0F0 0F1 0B0 ...`.
pub fn format_actions(actions: &[Action]) -> String {
    actions.iter().map(Action::to_string).collect::<Vec<_>>().join(" ")
}

/// Runs a schedule in lock-step rounds: an action is ready when its input
/// exists (forward: the previous stage's forward of that micro-batch;
/// backward: the next stage's backward, or the own forward on the last
/// stage). Returns the number of rounds, or an error naming the stuck
/// actions if no stage can progress.
pub fn simulate(per_stage: &[Vec<Action>]) -> Result<usize> {
    use std::collections::HashSet;
    let stages = per_stage.len() as u32;
    let mut done: HashSet<Action> = HashSet::new();
    let mut next = vec![0usize; per_stage.len()];
    let mut rounds = 0;
    while next.iter().zip(per_stage).any(|(&n, a)| n < a.len()) {
        let ready: Vec<Action> = (0..per_stage.len())
            .filter_map(|s| per_stage[s].get(next[s]).copied())
            .filter(|a| prerequisite(*a, stages).is_none_or(|p| done.contains(&p)))
            .collect();
        if ready.is_empty() {
            let stuck: Vec<String> =
                (0..per_stage.len()).filter_map(|s| per_stage[s].get(next[s]).map(|a| a.to_string())).collect();
            return Err(Error::Schedule(format!("deadlock: waiting at {}", stuck.join(", "))));
        }
        for a in ready {
            done.insert(a);
            next[a.stage as usize] += 1;
        }
        rounds += 1;
    }
    Ok(rounds)
}

/// The action whose output `action` consumes, if any.
fn prerequisite(action: Action, stages: u32) -> Option<Action> {
    match action.phase {
        Phase::Forward if action.stage == 0 => None,
        Phase::Forward => Some(Action { stage: action.stage - 1, ..action }),
        Phase::Backward if action.stage + 1 == stages => Some(Action { phase: Phase::Forward, ..action }),
        Phase::Backward => Some(Action { stage: action.stage + 1, ..action }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_print_and_parse_back() {
        let a = Action { stage: 2, phase: Phase::Forward, micro: 0 };
        assert_eq!(a.to_string(), "2F0");
        assert_eq!("2F0".parse::<Action>().unwrap(), a);
        assert_eq!("11B7".parse::<Action>().unwrap(), Action { stage: 11, phase: Phase::Backward, micro: 7 });
        for bad in ["", "F0", "2X0", "2F", "aF1", "2F-1"] {
            assert!(bad.parse::<Action>().is_err(), "{bad}");
        }
    }

    #[test]
    fn one_f_one_b_matches_the_textbook_shape() {
        let s = schedule(ScheduleKind::OneFOneB, 3, 4);
        assert_eq!(format_actions(&s[0]), "0F0 0F1 0F2 0B0 0F3 0B1 0B2 0B3");
        assert_eq!(format_actions(&s[2]), "2F0 2B0 2F1 2B1 2F2 2B2 2F3 2B3");
        let g = schedule(ScheduleKind::Gpipe, 2, 2);
        assert_eq!(format_actions(&g[1]), "1F0 1F1 1B0 1B1");
    }

    #[test]
    fn every_schedule_runs_to_completion_without_deadlock() {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            for stages in 1..=6 {
                for micro in 1..=8 {
                    let s = schedule(kind, stages, micro);
                    assert!(s.iter().all(|a| a.len() == 2 * micro as usize));
                    let rounds = simulate(&s).unwrap_or_else(|e| panic!("{kind} W={stages} M={micro}: {e}"));
                    assert!(rounds >= 2 * micro as usize);
                }
            }
        }
    }

    #[test]
    fn a_bad_schedule_is_reported_as_deadlock() {
        let mut s = schedule(ScheduleKind::Gpipe, 2, 2);
        s[1].swap(0, 2); // stage 1 wants B0 before its F0
        assert!(simulate(&s).unwrap_err().to_string().contains("deadlock"));
    }
}
