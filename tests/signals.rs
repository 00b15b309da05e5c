//! Signal handling, as the service uses it: `install()` first thing in `main`, then threads.
//! This test has its own `main` (`harness = false`) because libtest's threads would otherwise
//! receive process-directed signals with their default action.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nats_k8s_callout::signals::{self, Signal};

const CHILD_ENV: &str = "NKC_SIGNALS_TEST_CHILD";

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_drops_receiver();
    }
    // libtest-style arguments (filters, --list) are ignored: there are only these checks.
    if std::env::args().any(|a| a == "--list") {
        println!("signals: test");
        return;
    }
    let rx = signals::install();

    // A thread started after install() inherits the mask.
    let worker = std::thread::spawn(|| {
        (
            signals::is_blocked_here(Signal::Terminate),
            signals::is_blocked_here(Signal::Interrupt),
        )
    });
    assert_eq!(
        worker.join().unwrap(),
        (true, true),
        "later threads must have both signals blocked"
    );

    // Process-directed signals, sent from another thread, arrive on the channel in order.
    for (num, want) in [
        (libc::SIGTERM, Signal::Terminate),
        (libc::SIGINT, Signal::Interrupt),
        (libc::SIGTERM, Signal::Terminate),
    ] {
        std::thread::spawn(move || {
            // SAFETY: sending a signal to our own process.
            unsafe { libc::kill(libc::getpid(), num) };
        });
        let got = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("no {want:?} within 5 s: {e}"));
        assert_eq!(got, want);
    }
    assert!(rx.try_recv().is_err(), "no extra signal expected");
    println!("test signals_arrive_on_the_channel ... ok");

    // Nobody listening any more: the signal takes its default action (the process ends).
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "child did not get ready");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "child should die of SIGTERM once nobody listens, got {status:?}"
    );
    println!("test unheard_signal_takes_default_action ... ok");
    println!("\ntest result: ok. 2 passed; 0 failed");
}

fn child_drops_receiver() -> ! {
    let rx = signals::install();
    drop(rx);
    println!("ready");
    std::thread::sleep(Duration::from_secs(10));
    // Still alive: the signal was swallowed.
    std::process::exit(3);
}
