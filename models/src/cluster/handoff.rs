//! Handing a local worker process its identity through a pipe, so that the
//! ephemeral CA of `baton train --workers W` never leaves the coordinator's
//! memory and no private key is ever written to disk (nothing is left
//! behind even when the coordinator is SIGKILLed).
//!
//! The coordinator starts each worker with `--identity-stdin` and writes the
//! worker's certificate, key and CA certificate ([`Identity::to_bundle`])
//! into its stdin, then keeps that pipe open for as long as it runs. The
//! worker reads the bundle up to its end line and goes on reading: end of
//! file means the process that started it is gone, and the worker exits at
//! once instead of waiting for a QUIC idle timeout.

use std::io::{BufRead, Read, Write};
use std::process::Child;

use super::error::{bail, Context, Result};
use baton_transport::pki::BUNDLE_END;
use baton_transport::Identity;

/// Exit status of a worker whose launcher is gone.
pub const ORPHANED_EXIT: i32 = 3;

/// Writes `identity` into `child`'s stdin (which must be piped), leaving
/// the pipe open: the child exits when it closes.
pub fn send_identity(child: &mut Child, identity: &Identity) -> Result<()> {
    let stdin = child.stdin.as_mut().what("the worker's stdin is not a pipe")?;
    stdin.write_all(identity.to_bundle().as_bytes()).what("handing the worker its identity through its stdin")?;
    stdin.flush().what("handing the worker its identity through its stdin")
}

/// Reads this worker's identity from stdin (written by [`send_identity`]),
/// then watches stdin on a thread of its own: once it closes, the process
/// that started this worker is gone, and this process exits with status
/// [`ORPHANED_EXIT`] after saying so.
pub fn receive_identity(who: &str) -> Result<Identity> {
    let mut stdin = std::io::BufReader::new(std::io::stdin());
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = stdin.read_line(&mut line).what("reading this worker's identity from stdin")?;
        if n == 0 {
            bail!("stdin ended before the identity bundle did (--identity-stdin is for workers that `baton train` starts)");
        }
        text.push_str(&line);
        if line.trim_end() == BUNDLE_END {
            break;
        }
    }
    let identity = Identity::from_bundle(&text).what("the identity bundle on stdin")?;
    let who = who.to_string();
    std::thread::Builder::new()
        .name("launcher-watch".into())
        .spawn(move || {
            // Anything after the bundle is ignored; only the end matters.
            let mut sink = [0u8; 256];
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            eprintln!("{who}: the coordinator that started it is gone (its pipe closed): exiting");
            std::process::exit(ORPHANED_EXIT);
        })
        .what("starting the thread that watches the launcher")?;
    Ok(identity)
}
