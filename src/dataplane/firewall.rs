//! Host-wide forwarding switches routed endpoints need. The firewall rules themselves are
//! in [`super::standalone`] (which also turns IPv4 forwarding on).

use crate::error::{Error, Result};

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

/// `ensure_ipv6_forward` on the blocking pool; for endpoints with IPv6 addresses.
pub async fn ensure_ipv6_forwarding() -> Result<()> {
    tokio::task::spawn_blocking(ensure_ipv6_forward)
        .await
        .map_err(|e| Error::msg(format!("ensure ipv6 forwarding: {e}")))?
}
