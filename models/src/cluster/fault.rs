//! Scriptable fault injection for tests (STYLE: fault injection is
//! scriptable). `BATON_FAULT=crash:worker=W,step=S,actions=A` makes worker W
//! die abruptly (abort: no goodbye to its peers, like a SIGKILL) once it has
//! completed A compute actions of step S; several crashes are separated by
//! `;` (`crash:worker=1,step=3,actions=0;crash:worker=2,step=3,actions=0`:
//! two workers gone at once). `BATON_FAULT=hang-after-ship:worker=W`
//! makes worker W hang once it has shipped its layers on leaving (before the
//! coordinator retires it), so the launcher's SIGKILL at the end of its
//! grace is what ends it.

use super::error::{refuse as bail, Context, Result};

/// Environment variable read by worker processes.
pub const FAULT_ENV: &str = "BATON_FAULT";

/// A planned crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crash {
    pub worker: u32,
    pub step: u32,
    pub actions: u32,
}

impl Crash {
    /// The crash planned for `worker` in the environment, if any.
    pub fn from_env(worker: u32) -> Result<Option<Crash>> {
        match std::env::var(FAULT_ENV) {
            Ok(text) => for_worker(&text, worker).what_with(|| format!("{FAULT_ENV}={text}")),
            Err(_) => Ok(None),
        }
    }

    /// True when `worker` must hang after retiring (`hang-after-ship:worker=W`).
    pub fn hangs_after_ship(worker: u32) -> bool {
        std::env::var(FAULT_ENV).is_ok_and(|t| t == format!("hang-after-ship:worker={worker}"))
    }

    /// True when a worker that completed `actions` compute actions of `step` must die now.
    pub fn due(&self, step: u32, actions: u32) -> bool {
        step == self.step && actions == self.actions
    }
}

/// The crash of `worker` among the `;`-separated specs of `text`, if any.
fn for_worker(text: &str, worker: u32) -> Result<Option<Crash>> {
    for spec in text.split(';') {
        let crash = parse(spec)?;
        if crash.worker == worker {
            return Ok(Some(crash));
        }
    }
    Ok(None)
}

fn parse(text: &str) -> Result<Crash> {
    if text.starts_with("hang-after-ship:") {
        return Ok(Crash { worker: u32::MAX, step: 0, actions: 0 });
    }
    let Some(args) = text.strip_prefix("crash:") else {
        bail!("known faults: `crash:worker=W,step=S,actions=A`, `hang-after-ship:worker=W`")
    };
    let mut crash = Crash { worker: u32::MAX, step: 0, actions: 0 };
    for pair in args.split(',') {
        let (key, value) = pair.split_once('=').what_with(|| format!("`{pair}` is not key=value"))?;
        let value: u32 = value.parse().what_with(|| format!("`{key}` must be a number"))?;
        match key {
            "worker" => crash.worker = value,
            "step" => crash.step = value,
            "actions" => crash.actions = value,
            other => bail!("unknown key `{other}` (worker, step, actions)"),
        }
    }
    if crash.worker == u32::MAX {
        bail!("`worker=` is required");
    }
    Ok(crash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(parse("crash:worker=1,step=2,actions=3").unwrap(), Crash { worker: 1, step: 2, actions: 3 });
        assert!(parse("hang:worker=1").is_err());
        assert!(parse("crash:step=1").is_err());
        assert!(parse("crash:worker=x").is_err());
        assert!(parse("crash:worker=1,when=2").is_err());
        let two = "crash:worker=1,step=3,actions=0;crash:worker=2,step=3,actions=4";
        assert_eq!(for_worker(two, 2).unwrap(), Some(Crash { worker: 2, step: 3, actions: 4 }));
        assert_eq!(for_worker(two, 0).unwrap(), None);
        assert!(for_worker("crash:worker=1,step=3;crash:step=1", 0).is_err());
    }
}
