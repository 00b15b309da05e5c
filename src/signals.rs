//! SIGTERM and SIGINT as messages on a channel, without a signal-handling crate.
//!
//! [`install`] blocks both signals in the calling thread (call it first thing in `main`,
//! before any other thread starts, so every later thread inherits the mask), then starts a
//! thread that `sigwait`s for them and sends each one as a [`Signal`]. No code runs in
//! signal-handler context. If nobody listens any more (the receiver was dropped), the next
//! signal gets its default action (the process ends), so a signal is never silently lost.
//!
//! This module never decides what a signal means: `main` does, for example:
//!
//! ```text
//! let signals = signals::install();        // first thing in main, before any thread
//! /* start the threads, http::serve(...) */
//! let first = signals.recv();              // wait for SIGTERM / SIGINT
//! health.begin_shutdown();                 // /readyz → 503 from now on
//! /* drain the callout subscription, answer requests in flight, join threads */
//! // a second signal while draining (signals.try_recv()) may cut the drain short
//! std::process::exit(0);
//! ```

use crossbeam_channel::{Receiver, Sender};

/// A signal the service reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM (Kubernetes stopping the pod).
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        }
    }

    fn number(self) -> libc::c_int {
        match self {
            Signal::Terminate => libc::SIGTERM,
            Signal::Interrupt => libc::SIGINT,
        }
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a plain C struct we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread and starts the thread that waits for them.
/// Call once, from `main`, before spawning other threads.
///
/// # Panics
/// If the signal mask cannot be set or the thread cannot start (neither happens on Linux
/// with valid arguments and available memory).
pub fn install() -> Receiver<Signal> {
    let set = signal_set();
    // SAFETY: a valid, initialised set; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "pthread_sigmask failed: {rc}");
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || wait_loop(set, tx))
        .expect("cannot start the signal thread");
    rx
}

fn wait_loop(set: libc::sigset_t, tx: Sender<Signal>) {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised and blocked in this thread (inherited from install).
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc != 0 {
            continue;
        }
        let signal = match sig {
            libc::SIGTERM => Signal::Terminate,
            libc::SIGINT => Signal::Interrupt,
            _ => continue,
        };
        log::info!(signal = signal.name(); "signal received");
        if tx.send(signal).is_err() {
            default_action(signal);
            return;
        }
    }
}

/// Nobody listens: restore the default disposition, unblock here and re-raise.
fn default_action(signal: Signal) {
    let n = signal.number();
    // SAFETY: plain libc calls with valid arguments; the signal is then delivered to this
    // thread (the only one that has it unblocked) and takes its default action.
    unsafe {
        libc::signal(n, libc::SIG_DFL);
        let mut one: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut one);
        libc::sigaddset(&mut one, n);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
        libc::raise(n);
    }
}

/// Whether `signal` is blocked in the calling thread (for tests and start-up checks).
pub fn is_blocked_here(signal: Signal) -> bool {
    // SAFETY: querying the current mask into a set we own.
    unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
        libc::sigismember(&cur, signal.number()) == 1
    }
}
