//! `threads::run_inside`: the closure runs on a pool thread when the pool
//! has several, on the caller's with one, and keeps the caller's kernel path.
//! (One test in its own binary: it sets the process's thread count.)

use baton_kernels::isa::{self, Isa};
use baton_kernels::threads;

#[test]
fn run_inside_moves_to_the_pool_and_keeps_the_kernel_path() {
    let where_and_path = || (rayon::current_thread_index().is_some(), isa::current());
    threads::set_num_threads(2).expect("thread count");
    let seen = isa::with_isa(Isa::Generic, || threads::run_inside(where_and_path)).expect("generic always runs");
    assert_eq!(seen, (true, Isa::Generic), "on a pool thread, with the caller's override");
    assert!(threads::run_inside(|| threads::run_inside(where_and_path)).0, "nested: stays where it is");
    threads::set_num_threads(1).expect("thread count");
    assert_eq!(threads::run_inside(where_and_path), (false, isa::current()), "1 thread: on the caller's");
}
