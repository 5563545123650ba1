//! Argument checks shared by every GPU op. They return
//! [`Error::CudaInvalidArgument`] with the op's name and the lengths, worded
//! like the CPU kernels' assertions.

use crate::{Error, Result};

use super::MAX_ELEMS;

/// The error for a bad argument of `op`.
pub(crate) fn invalid(op: &str, what: impl std::fmt::Display) -> Error {
    Error::CudaInvalidArgument(format!("{op}: {what}"))
}

/// `Ok` when `cond`, else the error `op: what`.
pub(crate) fn ensure(cond: bool, op: &str, what: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(invalid(op, what()))
    }
}

/// `lhs == rhs`, naming both lengths otherwise.
pub(crate) fn eq(op: &str, lhs: (&str, usize), rhs: (&str, usize)) -> Result<()> {
    ensure(lhs.1 == rhs.1, op, || format!("{} = {} != {} = {}", lhs.0, lhs.1, rhs.0, rhs.1))
}

/// `a · b`, an error (not a wrap) when it overflows.
pub(crate) fn mul(op: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| invalid(op, format!("{a}·{b} overflows")))
}

/// A buffer of `n` elements fits the GPU limit ([`MAX_ELEMS`]).
pub(crate) fn capacity(op: &str, n: usize) -> Result<()> {
    ensure(n <= MAX_ELEMS, op, || format!("{n} elements exceed the GPU buffer limit of {MAX_ELEMS}"))
}

/// A size passed to a kernel as `unsigned int`. Sizes here are bounded by
/// buffer lengths (at most [`MAX_ELEMS`]), so this fails only for shape
/// arguments of empty buffers (e.g. 0 rows of 10^10 columns).
pub(crate) fn dim(op: &str, v: usize) -> Result<u32> {
    capacity(op, v)?;
    Ok(v as u32)
}

/// `rows = len / cols` for a row-major buffer, checking `cols > 0` and that
/// `len` is a whole number of rows.
pub(crate) fn rows(op: &str, name: &str, len: usize, cols: usize) -> Result<usize> {
    ensure(cols > 0, op, || "cols == 0".into())?;
    let (rows, rest) = (len / cols, len % cols);
    ensure(rest == 0, op, || format!("{name}.len() = {len} is not a multiple of cols = {cols}"))?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_op_and_lengths() {
        let e = eq("add", ("a.len()", 3), ("out.len()", 4)).unwrap_err();
        assert_eq!(e.to_string(), "invalid GPU op arguments: add: a.len() = 3 != out.len() = 4");
        assert!(eq("add", ("a", 2), ("b", 2)).is_ok());
        assert!(mul("matmul", usize::MAX, 2).is_err());
        assert!(capacity("zeros", MAX_ELEMS + 1).is_err());
        assert_eq!(dim("x", 7).unwrap(), 7);
        assert_eq!(rows("ln", "x", 12, 4).unwrap(), 3);
        assert!(rows("ln", "x", 12, 5).unwrap_err().to_string().contains("x.len() = 12"));
        assert!(rows("ln", "x", 0, 0).is_err());
    }
}
