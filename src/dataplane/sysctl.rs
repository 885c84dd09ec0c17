//! Idempotent writes under `/proc/sys`, and the per-interface knobs Calico sets on a host veth.
//!
//! Paths are slash-style and relative to `/proc/sys` (`net/ipv4/conf/<if>/proxy_arp`).
//! `/proc/sys/net` resolves against the network namespace of the *calling thread*, so call
//! these from a thread in the namespace the interface lives in.
//!
//! These are synchronous file operations; callers on a tokio runtime should batch them
//! into one `tokio::task::spawn_blocking` (see [`super::setup_endpoint_veth`]).

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use tracing::{debug, warn};

use super::netlink::errno_error;
use super::validate_ifname;
use crate::error::{Error, Result};

const PROC_SYS: &str = "/proc/sys";

/// One per-interface sysctl: `<dir>/<interface>/<name> = <value>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knob {
    /// Directory under `/proc/sys` that holds one subdirectory per interface.
    pub dir: &'static str,
    /// File name inside the interface's directory.
    pub name: &'static str,
    /// Value Calico wants.
    pub value: &'static str,
    /// A failure only logs a warning (the knob may be missing on some kernels).
    pub warn_only: bool,
}

impl Knob {
    /// The knob's path for one interface, relative to `/proc/sys`.
    pub fn path(&self, ifname: &str) -> Result<String> {
        // The name becomes a path component: refuse anything that could leave the directory.
        validate_ifname(ifname)?;
        Ok(format!("{}/{ifname}/{}", self.dir, self.name))
    }

    /// Sets the knob on `ifname`; a `warn_only` knob logs instead of failing.
    pub fn apply(&self, ifname: &str) -> Result<()> {
        let path = self.path(ifname)?;
        if self.warn_only {
            write_soft(&path, self.value);
            Ok(())
        } else {
            write(&path, self.value).map(|_| ())
        }
    }
}

const fn knob(dir: &'static str, name: &'static str, value: &'static str) -> Knob {
    Knob {
        dir,
        name,
        value,
        warn_only: false,
    }
}

const fn soft_knob(dir: &'static str, name: &'static str, value: &'static str) -> Knob {
    Knob {
        dir,
        name,
        value,
        warn_only: true,
    }
}

/// IPv4 knobs for a host veth.
pub const HOST_VETH_IPV4: &[Knob] = &[
    // Lets workload traffic be DNATed to 127.0.0.0/8 (node-local services) instead of
    // being dropped as martian.
    knob("net/ipv4/conf", "route_localnet", "1"),
    // Proxy ARP replies are normally delayed by a random 0-0.8 s; answer the container's
    // first ARP for its gateway at once.
    soft_knob("net/ipv4/neigh", "proxy_delay", "0"),
    // The container's gateway 169.254.1.1 exists nowhere: proxy ARP makes the host answer
    // for it (and any address it routes) with the veth's MAC.
    knob("net/ipv4/conf", "proxy_arp", "1"),
    // The host routes the workload's packets.
    knob("net/ipv4/conf", "forwarding", "1"),
];

/// IPv6 knobs for a host veth, set only when the endpoint has IPv6 addresses.
pub const HOST_VETH_IPV6: &[Knob] = &[
    // No duplicate address detection: otherwise the host link-local stays tentative for
    // a second or more after link up and cannot answer the container's NDP for its gateway.
    knob("net/ipv6/conf", "accept_dad", "0"),
    // Without IPv6 on the host veth there is no link-local to serve as the gateway.
    knob("net/ipv6/conf", "disable_ipv6", "0"),
    // The IPv6 counterpart of proxy_arp: answer neighbour solicitations for routed addresses.
    knob("net/ipv6/conf", "proxy_ndp", "1"),
    // The host routes the workload's packets.
    knob("net/ipv6/conf", "forwarding", "1"),
];

/// Knobs set on every host veth: a host interface must never autoconfigure from router
/// advertisements a workload sends. Warn only: the file is missing when IPv6 is off.
pub const HOST_VETH_ALWAYS: &[Knob] = &[soft_knob("net/ipv6/conf", "accept_ra", "0")];

/// Applies Calico's host-veth knobs to `ifname`: IPv4 and the always-set ones, plus the
/// IPv6 ones when `ipv6` is true; `route_localnet` only when `localnet` (the plugin's
/// loopback guard is in place). Stops at the first hard failure.
pub fn configure_host_veth(ifname: &str, ipv6: bool, localnet: bool) -> Result<()> {
    let ipv6_knobs: &[Knob] = if ipv6 { HOST_VETH_IPV6 } else { &[] };
    HOST_VETH_IPV4
        .iter()
        .filter(|k| localnet || k.name != "route_localnet")
        .chain(ipv6_knobs)
        .chain(HOST_VETH_ALWAYS)
        .try_for_each(|knob| knob.apply(ifname))
}

/// Reads a sysctl (trimmed), `path` relative to `/proc/sys`.
pub fn read(path: &str) -> Result<String> {
    let full = full_path(path)?;
    fs::read_to_string(&full)
        .map(|s| s.trim().to_string())
        .map_err(|e| io_error(format!("read sysctl {path}"), &e))
}

/// Sets a sysctl, `path` relative to `/proc/sys`, writing only when the value differs.
///
/// Returns whether the value changed.
pub fn write(path: &str, value: &str) -> Result<bool> {
    let current = read(path)?;
    if current == value {
        return Ok(false);
    }
    let full = full_path(path)?;
    debug!(sysctl = path, from = %current, to = value, "set sysctl");
    // A single write at offset 0: procfs takes each write() as the whole new value.
    fs::OpenOptions::new()
        .write(true)
        .open(&full)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| io_error(format!("set sysctl {path} to {value}"), &e))?;
    Ok(true)
}

/// Turns on `net.ipv6.conf.all.forwarding` if it is off (as Felix does with IPv6): the
/// per-interface `forwarding=1` on the host veth is not enough, the kernel forwards IPv6
/// only with the host-wide switch on. Note: with it on, interfaces whose `accept_ra` is 1
/// stop taking router advertisements (2 keeps them). Runs on the blocking pool.
pub async fn ensure_ipv6_forwarding() -> Result<()> {
    tokio::task::spawn_blocking(|| write("net/ipv6/conf/all/forwarding", "1").map(drop))
        .await
        .map_err(|e| Error::msg(format!("ensure ipv6 forwarding: {e}")))?
}

/// Like [`write()`] for knobs that may not exist (IPv6 disabled, older kernel, read-only
/// /proc): a failure is logged as a warning. Returns whether the value changed.
pub fn write_soft(path: &str, value: &str) -> bool {
    match write(path, value) {
        Ok(changed) => changed,
        Err(e) => {
            warn!(sysctl = path, value, error = %e, "optional sysctl not set");
            false
        }
    }
}

/// Makes `/proc/sys` writable when this process sees it read-only, as a Docker managed
/// plugin does (its runtime spec mounts `/proc/sys` read-only in the plugin's own mount
/// namespace; with `CAP_SYS_ADMIN` the plugin may remount that view read-write, and with the
/// host network namespace the files are the host's). Returns true when it remounted; a
/// writable `/proc/sys` is left alone.
pub fn ensure_proc_sys_writable() -> Result<bool> {
    let c_path = std::ffi::CString::new(PROC_SYS).expect("no NUL in a constant");
    // SAFETY: statvfs is a plain C struct of integers, for which all-zero bytes are valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string and `st` a valid, writable statvfs that
    // outlive the call.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(io_error(
            format!("statvfs {PROC_SYS}"),
            &io::Error::last_os_error(),
        ));
    }
    if st.f_flag & libc::ST_RDONLY == 0 {
        return Ok(false);
    }
    let flags =
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: `c_path` is NUL-terminated and outlives the call; a remount takes no source,
    // file system type or data, which may be null.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c_path.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io_error(
            format!("remount {PROC_SYS} read-write (needs CAP_SYS_ADMIN)"),
            &io::Error::last_os_error(),
        ));
    }
    Ok(true)
}

/// Joins `path` to `/proc/sys`, refusing absolute paths and `.`/`..` components.
fn full_path(path: &str) -> Result<PathBuf> {
    let ok = !path.is_empty()
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !ok {
        return Err(Error::invalid(format!(
            "invalid sysctl path {path:?}: want a relative path like net/ipv4/conf/eth0/forwarding"
        )));
    }
    Ok(PathBuf::from(PROC_SYS).join(path))
}

fn io_error(op: String, e: &io::Error) -> Error {
    match e.raw_os_error() {
        Some(errno) => errno_error(op, errno),
        None => Error::Kernel {
            op,
            errno: None,
            msg: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_proc_sys() {
        assert_eq!(
            full_path("net/ipv4/conf/eth0/forwarding").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0/forwarding")
        );
        for bad in [
            "",
            "/etc/passwd",
            "net/../../etc",
            "net//x",
            "net/./x",
            "net/x/",
        ] {
            assert!(full_path(bad).unwrap_err().is_invalid(), "{bad:?}");
        }
    }

    #[test]
    fn knob_paths_validate_the_interface() {
        let k = HOST_VETH_IPV4[2];
        assert_eq!(
            k.path("cali1234567890a").unwrap(),
            "net/ipv4/conf/cali1234567890a/proxy_arp"
        );
        assert!(k.path("..").is_err());
        assert!(k.path("a/b").is_err());
    }

    #[test]
    fn missing_sysctl_is_not_found_and_soft_write_does_not_fail() {
        let e = read("net/ipv4/conf/no-such-if-x/forwarding").unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(!write_soft("net/ipv4/conf/no-such-if-x/forwarding", "1"));
    }

    #[test]
    fn calico_knob_values() {
        let all: Vec<(&str, &str, bool)> = HOST_VETH_IPV4
            .iter()
            .chain(HOST_VETH_IPV6)
            .chain(HOST_VETH_ALWAYS)
            .map(|k| (k.name, k.value, k.warn_only))
            .collect();
        assert!(all.contains(&("proxy_delay", "0", true)));
        assert!(all.contains(&("accept_ra", "0", true)));
        assert!(all.contains(&("accept_dad", "0", false)));
        assert!(all.contains(&("proxy_ndp", "1", false)));
        assert_eq!(all.iter().filter(|k| k.0 == "forwarding").count(), 2);
    }
}
