//! Test harness: real components started per test and stopped by PID.
#![allow(dead_code)]

pub mod client;
pub mod docker;
pub mod etcd;
pub mod firewall;
pub mod plugin;
pub mod server;

/// Fails loudly when not root, unless CALICO_TEST_ALLOW_SKIP=1 (then says it skipped).
/// Returns false when the caller should skip.
pub fn require_root(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CALICO_TEST_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("!!!!! SKIPPED {test}: requires root (CALICO_TEST_ALLOW_SKIP=1) !!!!!");
        return false;
    }
    panic!("{test} requires root; run as root or set CALICO_TEST_ALLOW_SKIP=1 to skip loudly");
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}
