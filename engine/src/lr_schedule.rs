//! Learning-rate schedules (`--lr-schedule`), as `torch.optim.lr_scheduler.LambdaLR`
//! with the lambdas of DESIGN.md: the learning rate of step `s` (from 0) is
//! `base · λ(s)`.
//!
//! - `constant`: `λ(s) = 1`.
//! - warmup (`cosine` and `linear`, `warmup = W`): `λ(s) = (s + 1) / W` for `s < W`.
//! - `cosine:warmup=W,min=LR` then gives `min + ½ (1 + cos(π (s − W) / (steps − W))) (base − min)`.
//! - `linear:warmup=W` then gives `base · (steps − s) / (steps − W)`: 1 at
//!   `s = W`, decaying to 0 at `s = steps` (the step after the last), as
//!   `transformers.get_linear_schedule_with_warmup` does after its warmup
//!   (whose own warmup is `s / W`; ours is DESIGN.md's `(s + 1) / W`, so the
//!   first step does not run at lr 0).
//!
//! Invariant: the rate of a step is computed by [`LrSchedule::lr`] alone, in
//! `f64` from plain data (the base rate, the step, the schedule) and rounded
//! to `f32` once, so every worker that updates a layer in step `s` uses the
//! same bits whatever the partition.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// The shape of a schedule, as written after `--lr-schedule`.
#[derive(Clone, Copy, Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum LrShape {
    /// The optimizer's learning rate at every step.
    #[default]
    Constant,
    /// Linear warmup over `warmup` steps, then a half cosine from the base
    /// rate down to `min` (reached at the step after the last).
    Cosine { warmup: u32, min: f64 },
    /// Linear warmup over `warmup` steps, then linear decay to 0 (reached at
    /// the step after the last).
    Linear { warmup: u32 },
}

/// A schedule over a run of `steps` steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LrSchedule {
    pub shape: LrShape,
    /// Steps of the whole run (`--steps`): where the decay ends.
    pub steps: u32,
}

impl LrSchedule {
    /// A schedule of `shape` over `steps` steps, checked against the
    /// optimizer's base rate `base`: warmup ≤ steps, 0 ≤ min ≤ base.
    pub fn new(shape: LrShape, steps: u32, base: f32) -> Result<LrSchedule> {
        let schedule = LrSchedule { shape, steps };
        schedule.check(base)?;
        Ok(schedule)
    }

    /// Checks the schedule against the base rate (also for a schedule that
    /// arrived from a peer).
    pub fn check(&self, base: f32) -> Result<()> {
        let bad = |detail: String| Err(Error::Optimizer(format!("lr schedule `{}`: {detail}", self.shape)));
        match self.shape {
            LrShape::Constant => Ok(()),
            LrShape::Cosine { warmup, .. } | LrShape::Linear { warmup } if warmup > self.steps => {
                bad(format!("warmup={warmup} is longer than the run ({} steps)", self.steps))
            }
            LrShape::Cosine { min, .. } if !(min.is_finite() && min >= 0.0) => {
                bad(format!("min={min} must be a finite number >= 0"))
            }
            LrShape::Cosine { min, .. } if min > base as f64 => {
                bad(format!("min={min} is above the optimizer's lr={base}"))
            }
            _ => Ok(()),
        }
    }

    /// The learning rate of step `step` (from 0) for base rate `base`,
    /// rounded to `f32` once.
    pub fn lr(&self, base: f32, step: u32) -> f32 {
        self.lr_f64(base as f64, step) as f32
    }

    /// [`LrSchedule::lr`] before rounding.
    pub fn lr_f64(&self, base: f64, step: u32) -> f64 {
        let (s, steps) = (step as f64, self.steps as f64);
        let warmup = match self.shape {
            LrShape::Constant => return base,
            LrShape::Cosine { warmup, .. } | LrShape::Linear { warmup } => warmup,
        };
        if step < warmup {
            return base * (s + 1.0) / warmup as f64;
        }
        let w = warmup as f64;
        match self.shape {
            LrShape::Constant => base,
            LrShape::Cosine { min, .. } => {
                min + 0.5 * (1.0 + (std::f64::consts::PI * (s - w) / (steps - w)).cos()) * (base - min)
            }
            LrShape::Linear { .. } => base * ((steps - s) / (steps - w)).max(0.0),
        }
    }
}

impl FromStr for LrShape {
    type Err = Error;

    /// Parses `constant`, `cosine:warmup=W,min=LR` or `linear:warmup=W`
    /// (`warmup` defaults to 0, `min` to 0).
    fn from_str(text: &str) -> Result<LrShape> {
        let (name, args) = text.split_once(':').unwrap_or((text, ""));
        let (mut warmup, mut min) = (None, None);
        for pair in args.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| schedule_error(text, "expected key=value"))?;
            match key.trim() {
                "warmup" => {
                    let v = value.trim().parse::<u32>();
                    warmup = Some(v.map_err(|_| schedule_error(text, "warmup must be a whole number of steps"))?);
                }
                "min" => {
                    let v = value.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
                    min = Some(v.ok_or_else(|| schedule_error(text, "min must be a finite number >= 0"))?);
                }
                other => return Err(schedule_error(text, &format!("unknown option `{other}`"))),
            }
        }
        let shape = match name.trim() {
            "constant" if warmup.is_none() && min.is_none() => LrShape::Constant,
            "cosine" => LrShape::Cosine { warmup: warmup.unwrap_or(0), min: min.unwrap_or(0.0) },
            "linear" if min.is_none() => LrShape::Linear { warmup: warmup.unwrap_or(0) },
            "constant" | "linear" => return Err(schedule_error(text, "this schedule takes no such option")),
            _ => return Err(schedule_error(text, "use constant, cosine:warmup=W,min=LR or linear:warmup=W")),
        };
        Ok(shape)
    }
}

fn schedule_error(text: &str, detail: &str) -> Error {
    Error::Optimizer(format!("lr schedule `{text}`: {detail}"))
}

impl fmt::Display for LrShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LrShape::Constant => write!(f, "constant"),
            LrShape::Cosine { warmup, min } => write!(f, "cosine:warmup={warmup},min={min}"),
            LrShape::Linear { warmup } => write!(f, "linear:warmup={warmup}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(text: &str, steps: u32, base: f32) -> LrSchedule {
        LrSchedule::new(text.parse().unwrap(), steps, base).unwrap()
    }

    #[test]
    fn warmup_then_cosine_by_hand() {
        let s = schedule("cosine:warmup=2,min=0.1", 6, 1.0);
        let lrs: Vec<f64> = (0..6).map(|i| s.lr_f64(1.0, i)).collect();
        // warmup 1/2, 2/2; then 0.1 + 0.45 (1 + cos(pi k / 4)), k = 0..3
        let want = [0.5, 1.0, 1.0, 0.1 + 0.45 * (1.0 + std::f64::consts::FRAC_1_SQRT_2), 0.55];
        for (got, want) in lrs.iter().zip(want) {
            assert!((got - want).abs() < 1e-15, "{lrs:?}");
        }
    }

    #[test]
    fn linear_decays_to_zero_after_the_last_step() {
        let s = schedule("linear:warmup=1", 5, 2.0);
        let lrs: Vec<f64> = (0..5).map(|i| s.lr_f64(2.0, i)).collect();
        assert_eq!(lrs, [2.0, 2.0, 1.5, 1.0, 0.5]);
    }

    #[test]
    fn shapes_print_as_they_parse() {
        for text in ["constant", "cosine:warmup=3,min=0.00001", "linear:warmup=0"] {
            let shape: LrShape = text.parse().unwrap();
            assert_eq!(shape.to_string().parse::<LrShape>().unwrap(), shape, "{text}");
        }
    }

    #[test]
    fn impossible_schedules_are_refused() {
        let refused = |text: &str, steps: u32, base: f32, expected: &str| {
            let err = text.parse().and_then(|shape| LrSchedule::new(shape, steps, base)).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        };
        refused("cosine:warmup=11,min=0", 10, 1e-3, "warmup=11 is longer than the run (10 steps)");
        refused("linear:warmup=11", 10, 1e-3, "warmup=11");
        refused("cosine:min=0.01", 10, 1e-3, "min=0.01 is above the optimizer's lr=0.001");
        refused("cosine:min=-1", 10, 1e-3, "min must be a finite number >= 0");
        refused("cosine:min=nan", 10, 1e-3, "min must be");
        refused("cosine:warmup=-1", 10, 1e-3, "warmup must be a whole number");
        refused("cosine:warmup=x", 10, 1e-3, "warmup must be a whole number");
        refused("linear:min=0", 10, 1e-3, "takes no such option");
        refused("cosine:decay=2", 10, 1e-3, "unknown option `decay`");
        refused("step", 10, 1e-3, "use constant, cosine");
    }
}
