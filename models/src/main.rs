//! The `baton` binary: train a model from a spec, replay the relocation of
//! tape segments, run the demo and the step benchmark.
//!
//! Every failure prints `error: ...` naming the flag, file or tensor at
//! fault and exits with status 1.

mod cli;

/// Large blocks (received tensors among them) on huge pages: see [`baton_models::alloc`].
#[global_allocator]
static ALLOC: baton_models::alloc::HugePages = baton_models::alloc::HugePages;

fn main() -> std::process::ExitCode {
    cli::main()
}
