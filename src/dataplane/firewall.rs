//! The minimum host firewall a routed `cali*` endpoint needs on a Docker host: an accept
//! for traffic to and from `cali+` reached from filter FORWARD, and IPv4 forwarding on
//! (IPv6 forwarding too once an endpoint has IPv6).
//!
//! Uses the system `iptables`/`ip6tables` binaries. Full isolation comes later.

use std::process::Command;

use tracing::{debug, warn};

use crate::error::{Error, Result};

/// Our chain in table `filter`, jumped to from `FORWARD`.
pub const FORWARD_CHAIN: &str = "CALICO-LIBNETWORK-FORWARD";

/// Where the kernel's IPv4 forwarding switch lives.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Runs one iptables command; `Ok(true)` on exit 0, `Ok(false)` on another exit status.
fn run(bin: &str, args: &[&str]) -> Result<bool> {
    // -w: wait for the xtables lock instead of failing when dockerd holds it.
    let out = Command::new(bin)
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| Error::msg(format!("run {bin}: {e}")))?;
    if !out.status.success() {
        debug!(
            bin,
            ?args,
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "iptables command failed"
        );
    }
    Ok(out.status.success())
}

fn run_ok(bin: &str, args: &[&str]) -> Result<()> {
    if run(bin, args)? {
        Ok(())
    } else {
        Err(Error::msg(format!("{bin} {} failed", args.join(" "))))
    }
}

/// Makes `FORWARD_CHAIN` hold exactly the two `cali+` accepts and jumps to it from position 1
/// of `FORWARD` unless a jump is already there. Idempotent.
fn ensure_forward_accept(bin: &str) -> Result<()> {
    // Docker's bridge driver sets the FORWARD policy to DROP and only accepts its own
    // bridges, so container-to-container traffic routed over cali* veths needs an accept.
    // iptables, not a table of our own in nft: an nft accept does not undo another base
    // chain's drop, so the accept must sit in iptables' filter FORWARD (firewall-notes §2).
    if !run(bin, &["-t", "filter", "-n", "-L", FORWARD_CHAIN])? {
        // Another process may create it between the check and here: re-check on failure.
        if !run(bin, &["-t", "filter", "-N", FORWARD_CHAIN])?
            && !run(bin, &["-t", "filter", "-n", "-L", FORWARD_CHAIN])?
        {
            return Err(Error::msg(format!("{bin}: create chain {FORWARD_CHAIN}")));
        }
    }
    run_ok(bin, &["-t", "filter", "-F", FORWARD_CHAIN])?;
    run_ok(
        bin,
        &[
            "-t",
            "filter",
            "-A",
            FORWARD_CHAIN,
            "-i",
            "cali+",
            "-j",
            "ACCEPT",
        ],
    )?;
    run_ok(
        bin,
        &[
            "-t",
            "filter",
            "-A",
            FORWARD_CHAIN,
            "-o",
            "cali+",
            "-j",
            "ACCEPT",
        ],
    )?;
    if !run(bin, &["-t", "filter", "-C", "FORWARD", "-j", FORWARD_CHAIN])? {
        // Position 1: ahead of whatever Docker (or anyone) appends that could drop first.
        run_ok(
            bin,
            &["-t", "filter", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN],
        )?;
    }
    Ok(())
}

/// Turns on `net.ipv4.ip_forward` if it is off; routed containers need it.
fn ensure_ip_forward() -> Result<()> {
    let now = std::fs::read_to_string(IP_FORWARD)
        .map_err(|e| Error::msg(format!("read {IP_FORWARD}: {e}")))?;
    if now.trim() != "1" {
        // Docker turns it on only when its bridge driver sets up a network, and not at all
        // with "bridge": "none" or its nftables backend.
        std::fs::write(IP_FORWARD, "1")
            .map_err(|e| Error::msg(format!("write {IP_FORWARD}: {e}")))?;
    }
    Ok(())
}

/// Blocking: IPv4 forwarding on, the IPv4 accept rules (errors returned) and the IPv6 ones
/// (only warned about: ip6tables may be missing or IPv6 disabled).
pub fn ensure_forwarding_blocking() -> Result<()> {
    ensure_ip_forward()?;
    ensure_forward_accept("iptables")?;
    if let Err(e) = ensure_forward_accept("ip6tables") {
        warn!(error = %e, "could not add the ip6tables cali+ forward accept");
    }
    Ok(())
}

/// Where the kernel's host-wide IPv6 forwarding switch lives.
const IPV6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Turns on `net.ipv6.conf.all.forwarding` if it is off (as Felix does with IPv6): the
/// per-interface `forwarding=1` on the host veth is not enough, the kernel forwards IPv6
/// only with the host-wide switch on. Note: with it on, interfaces whose `accept_ra` is 1
/// stop taking router advertisements (2 keeps them).
fn ensure_ipv6_forward() -> Result<()> {
    let now = std::fs::read_to_string(IPV6_FORWARD)
        .map_err(|e| Error::msg(format!("read {IPV6_FORWARD}: {e}")))?;
    if now.trim() != "1" {
        std::fs::write(IPV6_FORWARD, "1")
            .map_err(|e| Error::msg(format!("write {IPV6_FORWARD}: {e}")))?;
    }
    Ok(())
}

/// [`ensure_ipv6_forward`] on the blocking pool; for endpoints with IPv6 addresses.
pub async fn ensure_ipv6_forwarding() -> Result<()> {
    tokio::task::spawn_blocking(ensure_ipv6_forward)
        .await
        .map_err(|e| Error::msg(format!("ensure ipv6 forwarding: {e}")))?
}

/// [`ensure_forwarding_blocking`] on the blocking pool.
pub async fn ensure_forwarding() -> Result<()> {
    tokio::task::spawn_blocking(ensure_forwarding_blocking)
        .await
        .map_err(|e| Error::msg(format!("ensure forwarding: {e}")))?
}
