//! Test harness: real components started per test and stopped by PID.
#![allow(dead_code)]

pub mod backends;
pub mod client;
pub mod docker;
pub mod etcd;
pub mod firewall;
pub mod host;
pub mod hosts;
pub mod netns;
pub mod outside;
pub mod plugin;
pub mod server;

use std::time::{Duration, Instant};

/// `CALICO_NODENAME_FILE` for every plugin a test starts: a file that cannot exist, so no test
/// reads the host's `/var/lib/calico/nodename` or writes one there.
pub const NO_NODENAME_FILE: &str = "/nonexistent/calico-libnetwork-test/nodename";

/// Fails loudly when not root, unless CALICO_TEST_ALLOW_SKIP=1 (then says it skipped).
/// Returns false when the caller should skip.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CALICO_TEST_ALLOW_SKIP").as_deref() == Ok("1") {
        say_skipped(&format!("{test}: requires root (CALICO_TEST_ALLOW_SKIP=1)"));
        return false;
    }
    panic!("{test} requires root; run as root or set CALICO_TEST_ALLOW_SKIP=1 to skip loudly");
}

/// Says on the terminal that something was skipped: straight to stderr, which libtest does
/// not capture (it captures `eprintln!` of passing tests, which would hide the skip).
pub fn say_skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "!!!!! SKIPPED {what} !!!!!");
}

/// A process a test started, killed (by its PID) when the guard goes, even when the test
/// fails half-way: no plugin outlives its test.
pub struct ChildGuard(Option<std::process::Child>);

impl ChildGuard {
    pub fn new(child: std::process::Child) -> Self {
        ChildGuard(Some(child))
    }

    /// The process's PID.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }

    /// Stops it gracefully (SIGTERM) and returns how it exited.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("process already stopped");
        // SAFETY: a signal to the child this guard owns (not yet reaped: its PID is ours).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("wait for child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Ports [`free_port`] hands out: below the kernel's ephemeral range (32768-60999 by
/// default), so that no outgoing connection is given one between the check and the server's
/// bind (or while a stopped etcd is restarted on it).
const TEST_PORTS: std::ops::Range<u16> = 20000..32000;

/// A free TCP port on 127.0.0.1 (bound then released), never the same twice in a process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    // Each process starts at its own place, so two test binaries rarely meet.
    let base = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let offset = (base + NEXT.fetch_add(1, Ordering::Relaxed) % span) % span;
        let port = TEST_PORTS.start + offset;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {TEST_PORTS:?}")
}

/// Key prefixes the Docker tests read (Calico's layout).
pub const WEPS_PREFIX: &str =
    "/calico/resources/v3/projectcalico.org/workloadendpoints/libnetwork/";
pub const POOLS_PREFIX: &str = "/calico/resources/v3/projectcalico.org/ippools/";
pub const PROFILES_PREFIX: &str = "/calico/resources/v3/projectcalico.org/profiles/";
pub const BLOCKS_PREFIXES: &[&str] = &[
    "/calico/ipam/v2/assignment/ipv4/block/",
    "/calico/ipam/v2/assignment/ipv6/block/",
];
pub const HANDLES_PREFIX: &str = "/calico/ipam/v2/handle/";
/// The MAC Calico gives every host-side veth.
pub const HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// Runs a future to completion on a runtime of its own (for synchronous Docker tests).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// What a polled check says: `true`, `Some(v)` or `Ok(v)` when the wait is over.
pub trait Ready {
    type Out;
    /// `Err(why)` while not ready.
    fn ready(self) -> Result<Self::Out, String>;
}

impl Ready for bool {
    type Out = ();
    fn ready(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("still false".into())
        }
    }
}

impl<T> Ready for Option<T> {
    type Out = T;
    fn ready(self) -> Result<T, String> {
        self.ok_or_else(|| "still nothing".into())
    }
}

impl<T, E: std::fmt::Display> Ready for Result<T, E> {
    type Out = T;
    fn ready(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Polls `check` (every 50 ms) until it is ready and returns what it gave; panics after
/// `timeout` naming `what` and the check's last complaint.
pub fn wait_until<R: Ready>(what: &str, timeout: Duration, mut check: impl FnMut() -> R) -> R::Out {
    let deadline = Instant::now() + timeout;
    loop {
        match check().ready() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
