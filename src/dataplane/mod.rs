//! The Linux dataplane: host veths, host routes and per-interface sysctls.
//!
//! - [`autodetect`]: this host's address for its Node, found as calico-node finds it.
//! - [`iptables`]: the plugin's firewall rules (isolation, NAT outgoing, published ports).
//! - [`netlink`]: a [`Netlink`] handle with one async function per kernel operation.
//! - [`routes`]: routes between hosts as Felix programs them (our protocol-81 routes, the
//!   VXLAN and IP-in-IP devices, permanent neighbour and FDB entries), as [`Netlink`] methods.
//! - [`sysctl`]: idempotent `/proc/sys` writes, Calico's host-veth knobs and IPv6 forwarding.
//! - [`Dataplane`]: the kernel operations the driver uses, as one trait: [`Linux`] in the
//!   plugin, [`fake::Recording`] in tests that need no root.
//! - [`setup_endpoint_veth`] / [`teardown_endpoint_veth`]: a Calico endpoint's veth, composed
//!   from the above, all-or-nothing.
//!
//! What Calico expects of a workload's host side (as its CNI plugin does it):
//! a veth `cali…` with MAC `ee:ee:ee:ee:ee:ee`, proxy ARP/NDP and forwarding on, and one
//! `<ip>/32|/128 dev cali… scope link` route per workload address. Felix does the rest.
//! The container side is left to Docker: the Join response names the peer (`SrcName`),
//! Docker moves it into the sandbox, renames it and configures addresses and routes.

pub mod autodetect;
pub mod fake;
pub mod ipset;
pub mod iptables;
pub mod netlink;
pub mod routes;
pub mod sysctl;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use tracing::{debug, info, warn};

pub use self::netlink::{Netlink, Route};

/// Returns the heap's free memory to the kernel (glibc keeps what a burst of allocations
/// freed, per thread arena, and RSS with it); nothing elsewhere.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own heap under its locks; no pointer of ours
    // is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}
pub use self::routes::{vxlan_mac, IpipDevice, OwnedRoute, RouteKind, VxlanDevice, ROUTE_PROTOCOL};
use crate::error::{Error, Result};

/// The MAC of every Calico host veth.
///
/// All host veths share it, so a container's neighbour entry for its gateway stays valid
/// whichever veth it sits behind, and the IPv6 link-local is always the same
/// (`fe80::ecee:eeff:feee:eeee`). Locally administered unicast: no real NIC uses it.
pub const HOST_VETH_MAC: [u8; 6] = [0xee; 6];

/// How many times to re-set the host MAC if something rewrote it, and the pause between.
const MAC_FIX_TRIES: u32 = 10;
const MAC_FIX_INTERVAL: Duration = Duration::from_millis(50);

/// The interface alias of every host veth this plugin makes: what marks it as ours, so
/// clean-up never deletes another program's `cali*` veth (Calico's CNI plugin names pod
/// veths the same way).
pub const VETH_ALIAS: &str = "calico-libnetwork";

/// The host-side wiring of one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointVeth {
    /// Host end, e.g. `cali` + EndpointID[..11].
    pub host_name: String,
    /// Container end while still in the host namespace, e.g. `temp` + EndpointID[..11];
    /// Docker moves and renames it.
    pub temp_name: String,
    /// MTU of both ends; `None` leaves the kernel default (1500).
    pub mtu: Option<u32>,
    /// Workload IPv4 addresses: one `/32 scope link` host route each.
    pub ipv4: Vec<Ipv4Addr>,
    /// Workload IPv6 addresses: one `/128` host route each; non-empty enables IPv6 knobs.
    pub ipv6: Vec<Ipv6Addr>,
    /// MAC to give the container end (`docker run --mac-address`); `None` keeps the
    /// kernel's random one.
    pub container_mac: Option<[u8; 6]>,
    /// Leave `route_localnet` off: nothing guards the host's loopback services (the plugin
    /// keeps no firewall rules, so it publishes no ports either).
    pub no_route_localnet: bool,
}

/// What setup learnt, for the endpoint record and Docker's Join answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VethInfo {
    /// MAC of the container end (requested or kernel-chosen); goes into the WEP `mac`.
    pub container_mac: [u8; 6],
    /// The host veth's link-local, the container's IPv6 gateway; `Some` iff IPv6 is used.
    pub host_ipv6_link_local: Option<Ipv6Addr>,
}

/// Creates and configures an endpoint's veth pair; on failure removes it again.
///
/// Steps: delete a stale host veth of the same name; create the pair; host MAC
/// `ee:ee:ee:ee:ee:ee` (and the requested container MAC); sysctls; both ends up; host
/// routes; read back the container MAC and, with IPv6, the host link-local.
pub async fn setup_endpoint_veth(nl: &Netlink, veth: EndpointVeth) -> Result<VethInfo> {
    validate_ifname(&veth.host_name)?;
    validate_ifname(&veth.temp_name)?;
    if veth.host_name == veth.temp_name {
        return Err(Error::invalid(format!(
            "set up veth {}: host and temporary names are the same",
            veth.host_name
        )));
    }
    if let Some(mac) = veth.container_mac {
        validate_unicast_mac(mac)?;
    }
    // A leftover host veth (a crashed run, or Docker retrying the endpoint) would make the
    // create fail; like Calico, replace it. Its peer and routes go with it.
    nl.delete_link(&veth.host_name).await?;
    nl.create_veth(&veth.host_name, &veth.temp_name, veth.mtu)
        .await?;
    match configure_endpoint_veth(nl, &veth).await {
        Ok(info) => {
            info!(
                host = %veth.host_name,
                temp = %veth.temp_name,
                container_mac = %format_mac(info.container_mac),
                "endpoint veth ready"
            );
            Ok(info)
        }
        Err(e) => {
            // All or nothing: deleting the host end removes the peer and the routes.
            if let Err(cleanup) = nl.delete_link(&veth.host_name).await {
                warn!(host = %veth.host_name, error = %cleanup, "roll back veth");
            }
            Err(e)
        }
    }
}

async fn configure_endpoint_veth(nl: &Netlink, veth: &EndpointVeth) -> Result<VethInfo> {
    let host = veth.host_name.as_str();
    let temp = veth.temp_name.as_str();
    let ipv6 = !veth.ipv6.is_empty();

    // Marked as ours: clean-up deletes only marked `cali*` veths (Calico's CNI plugin names
    // its pod veths the same way).
    nl.set_alias(host, VETH_ALIAS).await?;
    // Before link up, so IPv6 derives the link-local from this MAC, not the random one.
    nl.set_mac(host, HOST_VETH_MAC).await?;
    if let Some(mac) = veth.container_mac {
        nl.set_mac(temp, mac).await?;
    }

    // Before link up: the per-interface sysctl files exist only once the link does, and
    // accept_dad/accept_ra/disable_ipv6 must be in force when IPv6 starts on the link.
    // Blocking pool: /proc/sys/net resolves per thread, and pool threads inherit the
    // namespace of the thread that spawned them, i.e. this process's.
    let name = host.to_string();
    let localnet = !veth.no_route_localnet;
    tokio::task::spawn_blocking(move || sysctl::configure_host_veth(&name, ipv6, localnet))
        .await
        .map_err(|e| Error::msg(format!("set sysctls of {host}: {e}")))??;

    nl.set_link_up(host).await?;
    // The host end has carrier only while its peer is up too, and without carrier IPv6
    // never adds the host link-local. The peer stays in this namespace: Docker moves it.
    nl.set_link_up(temp).await?;
    ensure_host_mac(nl, host, ipv6).await?;

    // Routes after link up: the kernel refuses a route through a device that is down.
    for ip in &veth.ipv4 {
        nl.add_route(IpNet::from(IpAddr::V4(*ip)), host).await?;
    }
    for ip in &veth.ipv6 {
        nl.add_route(IpNet::from(IpAddr::V6(*ip)), host).await?;
    }

    let container_mac = nl.get_mac(temp).await?;
    let host_ipv6_link_local = if ipv6 {
        let ll = nl.ipv6_link_local(host).await?.ok_or_else(|| {
            Error::msg(format!(
                "find ipv6 link-local of {host}: none appeared (is IPv6 enabled?)"
            ))
        })?;
        if ll != eui64_link_local(HOST_VETH_MAC) {
            // Not an error: addr_gen_mode stable-privacy/random gives other addresses.
            debug!(host, link_local = %ll, "host link-local is not the EUI-64 one");
        }
        Some(ll)
    } else {
        None
    };
    Ok(VethInfo {
        container_mac,
        host_ipv6_link_local,
    })
}

/// Makes sure the host end still has [`HOST_VETH_MAC`] after link up.
///
/// systemd-udevd (MACAddressPolicy=persistent) may rewrite a new veth's MAC after we set
/// ours; if so set it again, and with IPv6 bounce the link so the link-local is regenerated
/// from the right MAC (IPv6 derives it only when the link comes up).
async fn ensure_host_mac(nl: &Netlink, host: &str, ipv6: bool) -> Result<()> {
    for attempt in 0..MAC_FIX_TRIES {
        let mac = nl.get_mac(host).await?;
        if mac == HOST_VETH_MAC {
            return Ok(());
        }
        warn!(
            host,
            mac = %format_mac(mac),
            attempt,
            "host veth mac was rewritten, setting ee:ee:ee:ee:ee:ee again"
        );
        nl.set_mac(host, HOST_VETH_MAC).await?;
        if ipv6 {
            nl.set_link_down(host).await?;
            nl.set_link_up(host).await?;
        }
        tokio::time::sleep(MAC_FIX_INTERVAL).await;
    }
    let mac = nl.get_mac(host).await?;
    if mac == HOST_VETH_MAC {
        return Ok(());
    }
    Err(Error::msg(format!(
        "set mac of {host} to {}: it keeps changing to {}",
        format_mac(HOST_VETH_MAC),
        format_mac(mac)
    )))
}

/// Deletes an endpoint's host veth; its peer and routes go with it. Missing is success.
pub async fn teardown_endpoint_veth(nl: &Netlink, host_name: &str) -> Result<()> {
    nl.delete_link(host_name).await
}

/// The kernel operations the driver needs, behind one seam: [`Linux`] (netlink) in the
/// plugin, [`fake::Recording`] where a test checks the driver's order of operations without
/// root. Firewall rules stay with `iptables`, which the driver reaches through its rule state.
#[async_trait::async_trait]
pub trait Dataplane: Send + Sync {
    /// [`setup_endpoint_veth`].
    async fn setup_endpoint_veth(&self, veth: EndpointVeth) -> Result<VethInfo>;
    /// [`teardown_endpoint_veth`]: deletes the pair by its host end; absent is not an error.
    async fn teardown_endpoint_veth(&self, host_name: &str) -> Result<()>;
    /// Whether a link of that name exists.
    async fn link_exists(&self, name: &str) -> Result<bool>;
    /// Veths whose name starts with `prefix`, each with whether it carries [`VETH_ALIAS`].
    async fn list_veths_marked(&self, prefix: &str) -> Result<Vec<(String, bool)>>;
    /// Veths whose name starts with `prefix`.
    async fn list_veths(&self, prefix: &str) -> Result<Vec<String>> {
        let veths = self.list_veths_marked(prefix).await?;
        Ok(veths.into_iter().map(|(name, _)| name).collect())
    }
    /// Every interface with its addresses, in the kernel's order ([`autodetect::Interface`]).
    async fn interfaces(&self) -> Result<Vec<autodetect::Interface>>;
    /// [`autodetect::source_address_towards`]: the source address the kernel would use
    /// towards `dest`.
    async fn source_address_towards(&self, dest: std::net::SocketAddr) -> Result<IpAddr>;
}

/// The Linux dataplane: one netlink socket, opened on first use (IPAM-only use never needs
/// one, and a process without `CAP_NET_ADMIN` can still serve IPAM).
#[derive(Default)]
pub struct Linux {
    nl: std::sync::OnceLock<Netlink>,
}

impl Linux {
    fn netlink(&self) -> Result<&Netlink> {
        if let Some(nl) = self.nl.get() {
            return Ok(nl);
        }
        let nl = Netlink::new()?;
        Ok(self.nl.get_or_init(|| nl))
    }
}

#[async_trait::async_trait]
impl Dataplane for Linux {
    async fn setup_endpoint_veth(&self, veth: EndpointVeth) -> Result<VethInfo> {
        setup_endpoint_veth(self.netlink()?, veth).await
    }
    async fn teardown_endpoint_veth(&self, host_name: &str) -> Result<()> {
        teardown_endpoint_veth(self.netlink()?, host_name).await
    }
    async fn link_exists(&self, name: &str) -> Result<bool> {
        self.netlink()?.link_exists(name).await
    }
    async fn list_veths_marked(&self, prefix: &str) -> Result<Vec<(String, bool)>> {
        self.netlink()?.list_veths_marked(prefix).await
    }
    async fn interfaces(&self) -> Result<Vec<autodetect::Interface>> {
        interfaces(self.netlink()?).await
    }
    async fn source_address_towards(&self, dest: std::net::SocketAddr) -> Result<IpAddr> {
        autodetect::source_address_towards(dest)
    }
}

/// Every interface with its addresses: the links in the kernel's order, each with its
/// addresses in the kernel's order (what calico-node's `GetInterfaces` starts from).
pub async fn interfaces(nl: &Netlink) -> Result<Vec<autodetect::Interface>> {
    let links = nl.list_links().await?;
    let addresses = nl.list_addresses().await?;
    Ok(links
        .into_iter()
        .map(|(index, name)| autodetect::Interface {
            name,
            addresses: addresses
                .iter()
                .filter(|(i, _)| *i == index)
                .map(|(_, a)| *a)
                .collect(),
        })
        .collect())
}

/// Checks an interface name before it reaches the kernel or a `/proc/sys` path:
/// 1 to 15 characters (IFNAMSIZ - 1) of `A-Z a-z 0-9 _ . -`, and not `.` or `..`.
pub fn validate_ifname(name: &str) -> Result<()> {
    let ok = (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        // "." and ".." pass the character test but would walk /proc/sys paths.
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid interface name {name:?}: want 1-15 characters of A-Z a-z 0-9 _ . -"
        )))
    }
}

/// `aa:bb:cc:dd:ee:ff`, lowercase.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let invalid = || Error::invalid(format!("invalid MAC address '{}'", text.escape_default()));
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(invalid)?;
        if part.len() != 2 {
            return Err(invalid());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok(mac)
}

/// The EUI-64 link-local the kernel derives from a MAC (addr_gen_mode 0):
/// `fe80::` + MAC with the universal/local bit flipped and `ff:fe` in the middle.
pub fn eui64_link_local(mac: [u8; 6]) -> Ipv6Addr {
    let word = |a: u8, b: u8| u16::from_be_bytes([a, b]);
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        word(mac[0] ^ 0x02, mac[1]),
        word(mac[2], 0xff),
        word(0xfe, mac[3]),
        word(mac[4], mac[5]),
    )
}

/// A container MAC must be unicast and non-zero, or the kernel refuses it.
fn validate_unicast_mac(mac: [u8; 6]) -> Result<()> {
    if mac[0] & 0x01 != 0 || mac == [0; 6] {
        return Err(Error::invalid(format!(
            "invalid container mac {}: not a unicast address",
            format_mac(mac)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for good in [
            "cali1234567890a",
            "temp1234567890a",
            "a",
            "eth0.100",
            "x_y-z",
        ] {
            validate_ifname(good).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "cali1234567890ab",
            "a/b",
            "a b",
            "caf\u{e9}",
            "../etc",
        ] {
            assert!(validate_ifname(bad).unwrap_err().is_invalid(), "{bad:?}");
        }
    }

    #[test]
    fn mac_round_trip() {
        let mac = parse_mac("EE:ee:ee:ee:ee:ee").unwrap();
        assert_eq!(mac, HOST_VETH_MAC);
        assert_eq!(
            format_mac([0x02, 0x42, 0xac, 0x11, 0, 2]),
            "02:42:ac:11:00:02"
        );
        for bad in [
            "",
            "ee:ee:ee:ee:ee",
            "ee:ee:ee:ee:ee:ee:ee",
            "e:ee:ee:ee:ee:eee",
            "zz:ee:ee:ee:ee:ee",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn calico_host_link_local() {
        assert_eq!(
            eui64_link_local(HOST_VETH_MAC),
            "fe80::ecee:eeff:feee:eeee".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn container_mac_must_be_unicast() {
        validate_unicast_mac([0x02, 0x42, 0xac, 0x11, 0, 2]).unwrap();
        assert!(validate_unicast_mac([0x01, 0, 0x5e, 0, 0, 1]).is_err());
        assert!(validate_unicast_mac([0; 6]).is_err());
    }
}
