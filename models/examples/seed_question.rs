//! The seed question, answered with baton's Rust API in two processes (see
//! `baton_models::seed_question`): process A records `Linear(4, 5)` on
//! `x = [[1, 2, 3, 4]]` and ships the segment, the parameters and the SGD
//! state; process B (this binary again, with `--receive`) backwards
//! `loss = (z - y).sum() / 5` through it and steps its own copy. A checks
//! B's numbers against PyTorch's (`../shared/golden/seed_question.safetensors`).
//!
//! Run: `cargo run --release -p baton-models --example seed_question`

use std::path::PathBuf;
use std::process::Command;

use baton_models::seed_question;

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--receive") {
        return seed_question::receive();
    }
    let dir = std::env::var_os("BATON_GOLDEN_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"), PathBuf::from);
    let mut receiver = Command::new(std::env::current_exe()?);
    receiver.arg("--receive");
    seed_question::send(&dir.join("seed_question.safetensors"), receiver)?;
    Ok(())
}
