//! How the process's allocator treats freed buffers.
//!
//! A training step allocates and frees the same large buffers (activations,
//! gradients, packed operands) over and over. glibc's malloc serves blocks
//! of 128 KiB and more with a fresh `mmap` and returns them with `munmap`
//! (and trims the heap top with `brk` once 128 KiB are free there). With
//! more than one kernel thread each unmapping shoots down the other
//! threads' TLB entries with inter-processor interrupts, which a virtual
//! machine traps: measured on the 2-core KVM build machine (README,
//! Measured), the W=1024 MLP step spent a third of its time there and ran no
//! faster at 2 threads than at 1. Keeping freed memory for reuse removes it,
//! and reused pages need no page faults either.

/// Largest block glibc accepts as its `mmap` threshold (64-bit builds):
/// blocks below it come from the heap and are reused after a free.
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Free memory at the heap top that glibc keeps instead of trimming.
const TRIM_THRESHOLD: i32 = i32::MAX;

/// Makes the allocator keep freed blocks below 32 MiB for reuse instead of
/// returning them to the kernel after every free. Call it once, early in
/// `main`, before other threads start. Returns whether the setting took
/// (false off glibc, where nothing is changed). Memory use: freed blocks
/// stay resident, so a process's RSS stays near its high-water mark
/// between steps instead of falling back.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; glibc documents
        // both as safe to change at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_accepts_both_settings() {
        let took = super::keep_freed_memory();
        assert_eq!(took, cfg!(all(target_os = "linux", target_env = "gnu")));
    }
}
