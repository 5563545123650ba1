//! Which instruction set the CPU kernels run on.
//!
//! Every [`Isa`] gives the *same bits* (see [`crate::matmul()`]): the choice
//! changes speed only. `BATON_KERNEL_ISA=avx512|avx2|generic` forces a path;
//! unset (or empty), the best the CPU has is used. An unknown value, or a
//! path this CPU lacks, is an error: [`init`] returns it, and a kernel that
//! runs without [`init`] having been called panics with the same message
//! (a forced path is never silently replaced by another).
//!
//! The process-wide selection is read from the environment once. Tests (and
//! anything else that wants to compare paths in one process) override it for
//! the calling thread with [`with_isa`]; kernels read [`current`] on the
//! calling thread and hand the choice to their worker threads.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::{Error, Result};

/// Environment variable that forces a kernel path.
pub const ISA_ENV: &str = "BATON_KERNEL_ISA";

/// A CPU kernel code path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// x86-64 AVX-512F (16-lane `f32` vectors, fused multiply-add).
    Avx512,
    /// x86-64 AVX2 with FMA (8-lane `f32` vectors).
    Avx2,
    /// Portable scalar code (`f32::mul_add`): runs anywhere.
    Generic,
}

impl Isa {
    /// Every path, fastest first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Generic];

    /// The name `BATON_KERNEL_ISA` uses for this path.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Generic => "generic",
        }
    }

    /// Whether this CPU (and this build's target) can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Generic => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 | Isa::Avx2 => false,
        }
    }

    /// The fastest path this CPU has.
    pub fn best() -> Isa {
        Isa::ALL.into_iter().find(|isa| isa.is_available()).unwrap_or(Isa::Generic)
    }

    /// The paths this CPU has, fastest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.is_available()).collect()
    }

    /// `Ok(self)` if the CPU has the path, else [`Error::IsaUnavailable`].
    pub fn check(self) -> Result<Isa> {
        if self.is_available() {
            return Ok(self);
        }
        let names: Vec<&str> = Isa::available().into_iter().map(Isa::name).collect();
        Err(Error::IsaUnavailable { wanted: self, available: names.join(", ") })
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = Error;

    /// Parses `avx512`, `avx2` or `generic` (ASCII case and surrounding
    /// whitespace ignored). Does not check that the CPU has the path.
    fn from_str(s: &str) -> Result<Isa> {
        let t = s.trim();
        Isa::ALL.into_iter().find(|isa| t.eq_ignore_ascii_case(isa.name())).ok_or_else(|| Error::UnknownIsa(s.into()))
    }
}

/// The path `value` (a `BATON_KERNEL_ISA` value) selects: `None` or empty
/// means the best available; otherwise it must name a path this CPU has.
pub fn parse_env_value(value: Option<&str>) -> Result<Isa> {
    match value.map(str::trim) {
        None | Some("") => Ok(Isa::best()),
        Some(v) => v.parse::<Isa>()?.check(),
    }
}

/// The path `BATON_KERNEL_ISA` selects now (read on every call; the
/// process-wide selection itself is read once, see [`init`]).
pub fn from_env() -> Result<Isa> {
    match std::env::var(ISA_ENV) {
        Ok(v) => parse_env_value(Some(&v)),
        Err(std::env::VarError::NotPresent) => parse_env_value(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(Error::UnknownIsa(v.to_string_lossy().into_owned())),
    }
}

fn process() -> &'static Result<Isa> {
    static PROCESS: OnceLock<Result<Isa>> = OnceLock::new();
    PROCESS.get_or_init(from_env)
}

/// Initialises the process-wide path from `BATON_KERNEL_ISA` (once; later
/// calls return the same outcome). Binaries call this at startup so a bad
/// value is reported as an error instead of a kernel panic.
pub fn init() -> Result<Isa> {
    process().clone()
}

thread_local! {
    static OVERRIDE: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// The path kernels called from this thread use: the [`with_isa`] override
/// if one is active, else the process-wide selection.
///
/// # Panics
/// If there is no override and `BATON_KERNEL_ISA` is invalid (call [`init`]
/// first to get that as an error).
pub fn current() -> Isa {
    if let Some(isa) = OVERRIDE.with(Cell::get) {
        return isa;
    }
    match process() {
        Ok(isa) => *isa,
        Err(e) => panic!("{e}"),
    }
}

/// Runs `f` with kernels called from this thread on `isa`, then restores the
/// previous selection (also when `f` panics). Errors, without running `f`,
/// if the CPU lacks `isa`.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> Result<R> {
    isa.check()?;
    Ok(scoped(isa, f))
}

/// [`with_isa`] for a path already checked (one [`current`] returned).
pub(crate) fn scoped<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(isa))));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for isa in Isa::ALL {
            assert_eq!(isa.to_string().parse::<Isa>().unwrap(), isa);
        }
        assert_eq!(" AVX2 ".parse::<Isa>().unwrap(), Isa::Avx2);
        assert!(matches!("sse4".parse::<Isa>(), Err(Error::UnknownIsa(v)) if v == "sse4"));
    }

    #[test]
    fn env_values() {
        assert_eq!(parse_env_value(None).unwrap(), Isa::best());
        assert_eq!(parse_env_value(Some(" ")).unwrap(), Isa::best());
        assert_eq!(parse_env_value(Some("generic")).unwrap(), Isa::Generic);
        assert!(matches!(parse_env_value(Some("neon")), Err(Error::UnknownIsa(_))));
        for isa in Isa::ALL {
            assert_eq!(parse_env_value(Some(isa.name())).is_ok(), isa.is_available());
        }
    }

    #[test]
    fn override_is_scoped() {
        let before = current();
        let inner = with_isa(Isa::Generic, current).unwrap();
        assert_eq!(inner, Isa::Generic);
        assert_eq!(current(), before);
    }
}
