//! A small process-wide pool of freed `f32` buffers, keyed by length.
//!
//! A training step allocates buffers of the same lengths every step
//! (activations, weight gradients, input gradients). An output that its
//! kernel writes in full does not need the zeroing pass of a fresh buffer:
//! [`reusable`] hands out a recycled buffer of exactly the requested length
//! whose elements hold the values some earlier tensor left in it.
//!
//! Invariants: every element of a buffer handed out is an initialised `f32`
//! (the pool only holds buffers that were `Vec<f32>` of their length), so
//! reading one is never undefined behaviour, only meaningless; a caller of
//! [`reusable`] must overwrite every element before the values mean
//! anything. The pool holds at most [`MAX_BUFFERS`] buffers and
//! [`MAX_BYTES`] bytes; beyond that a recycled buffer is simply freed.

use std::sync::Mutex;

/// Buffers shorter than this are not pooled: zeroing them costs less than
/// the lock.
pub const RECYCLE_MIN_LEN: usize = 1 << 14;

/// At most this many buffers wait in the pool.
const MAX_BUFFERS: usize = 96;

/// At most this many bytes wait in the pool.
const MAX_BYTES: usize = 512 << 20;

struct Pool {
    buffers: Vec<Vec<f32>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { buffers: Vec::new(), bytes: 0 });

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    // A panic while holding the lock leaves the pool consistent (every
    // operation below updates `bytes` together with `buffers`).
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A buffer of `len` elements with unspecified (but initialised) contents:
/// the most recently recycled one of that length, else fresh zeros. For
/// outputs the kernel overwrites in full.
pub fn reusable(len: usize) -> Vec<f32> {
    if len >= RECYCLE_MIN_LEN {
        let mut pool = lock();
        if let Some(i) = pool.buffers.iter().rposition(|b| b.len() == len) {
            let buf = pool.buffers.swap_remove(i);
            pool.bytes -= len * 4;
            return buf;
        }
    }
    crate::elementwise::zeros(len)
}

/// Gives `buf` back for a later [`reusable`] of its length (freed instead
/// when it is short, has spare capacity (held memory `reusable` would never
/// hand out), or the pool is full).
pub fn recycle(buf: Vec<f32>) {
    let len = buf.len();
    if len < RECYCLE_MIN_LEN || buf.capacity() != len {
        return;
    }
    let mut pool = lock();
    if pool.buffers.len() >= MAX_BUFFERS || pool.bytes + len * 4 > MAX_BYTES {
        return;
    }
    pool.bytes += len * 4;
    pool.buffers.push(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_buffer_comes_back_for_its_length_only() {
        let len = RECYCLE_MIN_LEN + 7;
        let mut buf = vec![0.0f32; len];
        buf[3] = 42.5;
        let ptr = buf.as_ptr();
        recycle(buf);
        // Another length gets fresh zeros.
        let other = reusable(len + 1);
        assert!(other.iter().all(|&v| v == 0.0));
        let again = reusable(len);
        assert_eq!(again.len(), len);
        // Other tests may recycle buffers of other lengths meanwhile, but
        // only this test uses this length.
        assert_eq!(again.as_ptr(), ptr);
        assert_eq!(again[3], 42.5);
    }

    #[test]
    fn short_buffers_are_not_pooled() {
        let len = RECYCLE_MIN_LEN - 1;
        let mut buf = vec![1.0f32; len];
        buf[0] = 2.0;
        recycle(buf);
        assert!(reusable(len).iter().all(|&v| v == 0.0));
    }
}
