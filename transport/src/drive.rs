//! Who drives the node's tokio runtime: its own helper thread, or the
//! thread that waits for the node's events.
//!
//! The runtime is a current-thread one: whichever thread is inside its
//! `block_on` holds the one core and runs every task of the node (quinn's
//! drivers, stream readers and writers). A waiting caller that drives it
//! itself gets its frames without a thread hand-off: the reader task emits
//! on the caller's own thread, and frames the caller sends go to the socket
//! without waking another thread. The helper drives only while no caller
//! has driven for [`TICK`] (the caller computes), so heartbeats, ACKs and
//! timers still flow through a long computation.
//!
//! Invariants:
//! - `who` says which side holds (or is about to hold) the core; only
//!   the side named there calls `block_on`, except that a caller may wait
//!   for the core in tokio's own `block_on`, which takes it once the
//!   helper lets go (tokio's current-thread scheduler hands the core to a
//!   waiting `block_on` when the holder returns);
//! - the helper gives the core up as soon as a caller asks (`release`);
//! - until a caller has asked for [`Drive::wait_event`] (`lazy` unset),
//!   the helper takes the core back at once after a caller let go, as the
//!   node did before callers could drive: events read from the channel
//!   alone arrive without delay.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tokio::sync::Notify;

/// How long the helper lets the core lie idle before it drives: a caller
/// that computes for less than this gets the node back untouched, without
/// a hand-off. With [`PERIOD`], bounds the extra delay of a frame that
/// arrives while the caller computes.
const TICK: Duration = Duration::from_millis(2);

/// How often the helper looks while a caller drives: it cannot know when
/// the caller lets go without being woken for it, which would cost a
/// hand-off per wait. So the helper takes over at most this long after a
/// caller stopped driving, and wakes about once per period (5 ms: about 4
/// fewer context switches per mlp12 step than 2 ms in 2 runs each, CPU the
/// same within noise; see the README).
const PERIOD: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Nobody,
    Helper,
    /// This many caller threads are in (or waiting for) `block_on`.
    Callers(usize),
}

struct State {
    who: Who,
    /// When the last caller let go of the core.
    released: Instant,
    lazy: bool,
    stop: bool,
}

/// The runtime and the rules for taking its core. Shared by the node, its
/// helper thread and [`crate::Delivery`] handles.
pub(crate) struct Drive {
    runtime: tokio::runtime::Runtime,
    state: Mutex<State>,
    /// Wakes the helper while it sleeps (stop, or the core is free again).
    helper: Condvar,
    /// Tells the helper, while it drives, to give the core up.
    release: Notify,
    /// Woken on every event emitted and by [`Drive::interrupt`].
    pub(crate) ready: Arc<Notify>,
    interrupted: AtomicBool,
    /// A frame was queued since the core last ran (see [`Drive::flush`]).
    pub(crate) queued: Arc<AtomicBool>,
}

impl Drive {
    pub fn new(runtime: tokio::runtime::Runtime) -> Drive {
        Drive {
            runtime,
            state: Mutex::new(State { who: Who::Nobody, released: Instant::now(), lazy: false, stop: false }),
            helper: Condvar::new(),
            release: Notify::new(),
            ready: Arc::new(Notify::new()),
            interrupted: AtomicBool::new(false),
            queued: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("drive state lock")
    }

    /// The helper thread's loop: drives whenever the core lies idle long
    /// enough; returns on [`Drive::stop`].
    pub fn helper_loop(&self) {
        let mut state = self.lock();
        while !state.stop {
            let idle = state.released.elapsed();
            if state.who == Who::Nobody && (!state.lazy || idle >= TICK) {
                state.who = Who::Helper;
                drop(state);
                self.runtime.block_on(self.release.notified());
                state = self.lock();
                if state.who == Who::Helper {
                    state.who = Who::Nobody;
                }
                continue;
            }
            let wait = match (state.who, state.lazy) {
                (Who::Nobody, true) => TICK.saturating_sub(idle),
                (_, true) => PERIOD,
                (_, false) => Duration::from_secs(1),
            };
            state = self.helper.wait_timeout(state, wait).expect("drive state lock").0;
        }
    }

    /// Asks the helper to return; it gives up the core first.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.helper.notify_all();
        self.release.notify_one();
    }

    /// Runs `future` to completion on the calling thread, driving the
    /// runtime meanwhile (after the helper let go of it, if it held it).
    /// Must not be called from inside a tokio runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.claim();
        let out = self.runtime.block_on(future);
        self.unclaim();
        out
    }

    fn claim(&self) {
        let mut state = self.lock();
        state.who = match state.who {
            Who::Nobody => Who::Callers(1),
            Who::Helper => {
                self.release.notify_one();
                Who::Callers(1)
            }
            Who::Callers(n) => Who::Callers(n + 1),
        };
    }

    fn unclaim(&self) {
        let mut state = self.lock();
        state.who = match state.who {
            Who::Callers(n) if n > 1 => Who::Callers(n - 1),
            _ => Who::Nobody,
        };
        if state.who == Who::Nobody {
            state.released = Instant::now();
            if !state.lazy {
                self.helper.notify_one();
            }
        }
    }

    /// The next event, driving the runtime on this thread until one is
    /// there, `timeout` passed or [`Drive::interrupt`] was called (both
    /// read as `Timeout`). From the first call on, the helper drives only
    /// while no caller did for [`TICK`].
    pub fn wait_event<T>(&self, events: &Receiver<T>, timeout: Duration) -> Result<T, RecvTimeoutError> {
        if let Ok(event) = events.try_recv() {
            return Ok(event);
        }
        if !std::mem::replace(&mut self.lock().lazy, true) {
            self.helper.notify_one();
        }
        let wait = async {
            loop {
                let ready = self.ready.notified();
                tokio::pin!(ready);
                ready.as_mut().enable();
                match events.try_recv() {
                    Ok(event) => return Ok(event),
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                    Err(crossbeam_channel::TryRecvError::Empty) => {}
                }
                if self.interrupted.swap(false, Ordering::AcqRel) {
                    return Err(RecvTimeoutError::Timeout);
                }
                ready.await;
            }
        };
        self.block_on(async { tokio::time::timeout(timeout, wait).await.unwrap_or(Err(RecvTimeoutError::Timeout)) })
    }

    /// Makes a [`Drive::wait_event`] in progress (or the next one) return.
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    /// Runs the tasks that frames queued since the core last ran woke, on
    /// this thread, so those frames leave now; does nothing when nothing was
    /// queued or another thread drives (it sends them).
    pub fn flush(&self) {
        if !self.queued.swap(false, Ordering::AcqRel) {
            return;
        }
        {
            let mut state = self.lock();
            if state.who != Who::Nobody {
                return;
            }
            state.who = Who::Callers(1);
        }
        self.runtime.block_on(tokio::task::yield_now());
        self.unclaim();
    }

    /// The runtime, once no other thread holds the drive.
    pub fn into_runtime(self: Arc<Self>) -> Option<tokio::runtime::Runtime> {
        Arc::try_unwrap(self).ok().map(|drive| drive.runtime)
    }
}

/// Lets other threads end a wait in [`crate::Node::next_event`] early, so a
/// caller can wait for the node and for its own channels at once.
#[derive(Clone)]
pub struct Interrupt(pub(crate) std::sync::Weak<Drive>);

impl Interrupt {
    /// The node's current or next `next_event` returns now (nothing once
    /// the node is gone).
    pub fn interrupt(&self) {
        if let Some(drive) = self.0.upgrade() {
            drive.interrupt();
        }
    }
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interrupt")
    }
}
