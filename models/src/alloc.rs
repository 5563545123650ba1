//! The global allocator of baton's binaries: the system allocator, except
//! that blocks of at least [`HUGE_MIN`] bytes are backed by transparent huge
//! pages where Linux allows (`madvise(MADV_HUGEPAGE)`, before first touch).
//!
//! Why: filling fresh memory costs a page fault per 4 KiB page. A received
//! handover is decoded into fresh tensor buffers (the parameters, optimizer
//! state and saved tensors of the layers it moves), and those faults, not
//! the copy, dominated decoding (README, Measured: migration). The transport
//! already asks for huge pages for its large receive buffers
//! (`baton_transport::frame::receive_buffer`); this does the same for every
//! large block, so the tensors a frame is decoded into get them too.
//!
//! Invariant: the advice changes only how the kernel backs pages, never the
//! contents or layout of any allocation, so it cannot change results.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

/// Blocks at least this large get the advice.
pub const HUGE_MIN: usize = 4 << 20;

/// Whether the advice is given: `BATON_HUGE_PAGES=off` turns it off (to
/// compare, or where huge pages misbehave); read once, at the first large
/// block. 0: not read yet, 1: on, 2: off.
static STATE: AtomicU8 = AtomicU8::new(0);

fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            // libc::getenv allocates nothing, so it may run inside the allocator.
            // SAFETY: the name is a NUL-terminated constant; the result is
            // only compared and read up to its NUL while the environment is
            // not being modified (baton sets no variables after start-up).
            let off = unsafe {
                let value = libc::getenv(c"BATON_HUGE_PAGES".as_ptr());
                !value.is_null() && std::ffi::CStr::from_ptr(value).to_bytes() == b"off"
            };
            STATE.store(if off { 2 } else { 1 }, Ordering::Relaxed);
            !off
        }
        state => state == 1,
    }
}

/// See the module docs. Use as `#[global_allocator] static A: HugePages = HugePages;`.
pub struct HugePages;

#[cfg(target_os = "linux")]
fn advise(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let base = ptr as usize;
    let start = base.next_multiple_of(HUGE);
    let end = (base + len) & !(HUGE - 1);
    if end > start {
        // SAFETY: [start, end) is page-aligned and lies inside the block of
        // `len` bytes at `ptr` just returned by the system allocator.
        // MADV_HUGEPAGE never changes memory contents; its result is
        // ignored on purpose (huge pages may be off).
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_ptr: *mut u8, _len: usize) {}

// SAFETY: every method forwards to `System` with the same arguments and
// returns its result unchanged; `advise` only adds a hint on memory the
// returned block owns.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() && layout.size() >= HUGE_MIN && enabled() {
            advise(ptr, layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() && layout.size() >= HUGE_MIN && enabled() {
            advise(ptr, layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() && new_size >= HUGE_MIN && enabled() {
            advise(new, new_size);
        }
        new
    }
}
