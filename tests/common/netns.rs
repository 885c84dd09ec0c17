//! Network namespaces: a fresh one per test ([`fresh`], [`fresh_async`]), or an existing one
//! entered by path ([`enter`]). A namespace belongs to a thread: each helper runs its closure
//! on a thread of its own, so the test's thread (and every other test) keeps the host's, and
//! a fresh namespace vanishes with its thread. Threads and processes started from inside
//! inherit it (`ip`, `iptables` and the plugin see only that namespace).
//!
//! Needs root: call [`super::require_root`] first.

use std::future::Future;
use std::os::unix::io::AsRawFd;

/// Moves the calling thread into a fresh, empty network namespace.
pub fn unshare() {
    // SAFETY: unshare(CLONE_NEWNET) only changes the calling thread's namespace membership;
    // it takes no pointers.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
}

/// Runs `f` on a new thread (named like the calling test) in a fresh network namespace, and
/// returns its value; a panic in `f` is the caller's panic.
pub fn fresh<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    on_thread(move || {
        unshare();
        f()
    })
}

/// [`fresh`] for async code: `f`'s future runs on a current-thread runtime in the namespace.
pub fn fresh_async<T, Fut>(f: impl FnOnce() -> Fut + Send + 'static) -> T
where
    T: Send + 'static,
    Fut: Future<Output = T>,
{
    fresh(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build runtime")
            .block_on(f())
    })
}

/// Runs `f` on a new thread inside the network namespace at `ns` (a `/proc/PID/ns/net` or
/// `/run/netns/NAME` path); sockets made there stay in that namespace.
pub fn enter<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    on_thread(move || {
        let file = std::fs::File::open(&ns).unwrap_or_else(|e| panic!("open {ns}: {e}"));
        // SAFETY: setns on a file descriptor we own, which stays open during the call; it
        // changes only this thread's namespace, and the thread ends with `f`.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
        f()
    })
}

fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let name = std::thread::current().name().unwrap_or("netns").to_string();
    let outcome = std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("spawn a thread")
        .join();
    match outcome {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Makes `cmd` start in the network namespace at `ns` (a `/run/netns/NAME` or
/// `/proc/PID/ns/net` path): the child enters it between fork and exec, so the PID the test
/// gets is the program's own (to stop it by), and `host::spawn_logged`'s PR_SET_PDEATHSIG
/// still applies. Start it from the test's own thread (not from [`enter`]'s, which ends).
pub fn command_in<'a>(
    cmd: &'a mut std::process::Command,
    ns: &str,
) -> &'a mut std::process::Command {
    use std::os::unix::process::CommandExt;
    let path = std::ffi::CString::new(ns).expect("namespace path without NUL");
    // SAFETY: the closure runs in the child between fork and exec; it calls only open,
    // setns and close, which are async-signal-safe, and reads `path`, allocated before the
    // fork; `last_os_error` reads errno and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = libc::setns(fd, libc::CLONE_NEWNET);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if rc != 0 {
                return Err(err);
            }
            Ok(())
        });
    }
    cmd
}
