//! `--preempt WORKER@STEP:ACTIONS[,grace=DURATION]`: scripted preemption
//! notices, checked before training starts.

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use baton_engine::pipeline::protocol::PlannedNotice;

/// Default grace of a notice, as AWS gives spot instances.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(120);

/// Parses one `--preempt` value.
pub fn parse(text: &str) -> anyhow::Result<(u32, PlannedNotice)> {
    let form = "expected WORKER@STEP:ACTIONS[,grace=DURATION], e.g. 1@2:5,grace=120s";
    let (point, options) = text.split_once(',').unwrap_or((text, ""));
    let (worker, rest) = point.split_once('@').with_context(|| format!("`{text}`: {form}"))?;
    let (step, actions) = rest.split_once(':').with_context(|| format!("`{text}`: {form}"))?;
    let number = |what: &str, v: &str| {
        v.trim().parse::<u32>().with_context(|| format!("`{text}`: {what} `{v}` is not a number"))
    };
    let mut grace = DEFAULT_GRACE;
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            Some(("grace", value)) => grace = duration(value).with_context(|| format!("`{text}`"))?,
            _ => bail!("`{text}`: unknown option `{option}` (grace=DURATION)"),
        }
    }
    let notice = PlannedNotice {
        step: number("step", step)?,
        actions: number("actions", actions)?,
        grace_ms: grace.as_millis() as u64,
    };
    Ok((number("worker", worker)?, notice))
}

pub use baton_models::runtime::duration;

/// Checks that every notice names a worker, step and action that exist, and
/// that someone is left to take the layers at each notice: the workers not
/// yet preempted, plus those that joined (`--join`) in an earlier step (a
/// step waits for the joiners due before it; one joining in the same step
/// might not be there yet).
pub fn check(
    notices: &[(u32, PlannedNotice)],
    workers: usize,
    joins: &[(u32, u32)],
    steps: usize,
    micro_batches: usize,
) -> anyhow::Result<()> {
    let max_actions = 2 * micro_batches as u32;
    for (worker, n) in notices {
        ensure!((*worker as usize) < workers, "--preempt {worker}@..: there are only workers 0..{}", workers - 1);
        ensure!(
            (n.step as usize) < steps,
            "--preempt {worker}@{}: steps count from 0 and this run has {steps}",
            n.step
        );
        ensure!(
            n.actions <= max_actions,
            "--preempt {worker}@{}:{}: a worker completes at most {max_actions} actions per step (2 x {micro_batches} micro-batches)",
            n.step,
            n.actions
        );
    }
    let mut seen: Vec<u32> = notices.iter().map(|(w, _)| *w).collect();
    seen.sort_unstable();
    ensure!(seen.windows(2).all(|w| w[0] != w[1]), "--preempt: a worker can be preempted only once");
    for (worker, n) in notices {
        let joined = joins.iter().filter(|(step, _)| *step < n.step).count();
        let gone = notices.iter().filter(|(_, m)| (m.step, m.actions) <= (n.step, n.actions)).count();
        ensure!(
            gone < workers + joined,
            "--preempt {worker}@{}:{}: every worker would be preempted by then ({gone} of {workers} started{}), \
             so nothing could take over the layers",
            n.step,
            n.actions,
            match joined {
                0 => String::new(),
                j => format!(" and {j} joined before step {}", n.step),
            }
        );
    }
    Ok(())
}

/// Parses one `--join STEP[:LOSSES]` value.
pub fn parse_join(text: &str) -> anyhow::Result<(u32, u32)> {
    let (step, losses) = text.split_once(':').unwrap_or((text, "0"));
    let number = |what: &str, v: &str| {
        v.trim().parse::<u32>().with_context(|| format!("`{text}`: {what} `{v}` is not a number (STEP[:LOSSES])"))
    };
    Ok((number("step", step)?, number("losses", losses)?))
}

/// Checks that every join point exists; joins happen in the order given.
pub fn check_joins(joins: &[(u32, u32)], steps: usize, micro_batches: usize) -> anyhow::Result<()> {
    for &(step, losses) in joins {
        ensure!((step as usize) < steps, "--join {step}: steps count from 0 and this run has {steps}");
        ensure!(
            losses as usize <= micro_batches,
            "--join {step}:{losses}: a step reports at most {micro_batches} micro-batch losses"
        );
    }
    ensure!(joins.windows(2).all(|w| w[0] <= w[1]), "--join: give join points in order");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_points_and_graces() {
        let (w, n) = parse("1@2:5,grace=120s").unwrap();
        assert_eq!((w, n.step, n.actions, n.grace_ms), (1, 2, 5, 120_000));
        assert_eq!(parse("0@0:0").unwrap().1.grace_ms, 120_000);
        assert_eq!(parse("2@1:3,grace=250ms").unwrap().1.grace_ms, 250);
        assert_eq!(parse("2@1:3,grace=2m").unwrap().1.grace_ms, 120_000);
        for bad in ["1", "1@2", "x@2:5", "1@2:5,grace=soon", "1@2:5,wait=1s", "1@2:5,grace=-1s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn impossible_points_are_refused() {
        let n = |w, step, actions| (w, PlannedNotice { step, actions, grace_ms: 1000 });
        assert!(check(&[n(1, 2, 5)], 3, &[], 6, 4).is_ok());
        assert!(check(&[n(3, 0, 1)], 3, &[], 6, 4).unwrap_err().to_string().contains("only workers 0..2"));
        assert!(check(&[n(1, 6, 1)], 3, &[], 6, 4).unwrap_err().to_string().contains("has 6"));
        assert!(check(&[n(1, 0, 9)], 3, &[], 6, 4).unwrap_err().to_string().contains("at most 8 actions"));
        assert!(check(&[n(1, 0, 1), n(1, 2, 1)], 3, &[], 6, 4).is_err());
        assert!(check(&[n(0, 0, 1), n(1, 0, 1)], 2, &[], 6, 4).unwrap_err().to_string().contains("every worker"));
    }

    #[test]
    fn a_joiner_can_take_the_layers_of_every_preempted_worker() {
        let n = |w, step, actions| (w, PlannedNotice { step, actions, grace_ms: 1000 });
        assert!(check(&[n(0, 2, 1)], 1, &[(1, 0)], 6, 4).is_ok());
        assert!(check(&[n(0, 2, 1), n(1, 3, 0)], 2, &[(0, 2)], 6, 4).is_ok());
        // The joiner is due in the same step: it may not be there yet.
        let err = check(&[n(0, 1, 1)], 1, &[(1, 0)], 6, 4).unwrap_err().to_string();
        assert!(err.contains("every worker would be preempted by then"), "{err}");
        // Two preempted, one joined: the second notice leaves nobody.
        assert!(check(&[n(0, 2, 1), n(1, 3, 0)], 2, &[], 6, 4).is_err());
    }
}
