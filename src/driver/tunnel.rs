//! This host's tunnel addresses, allocated as calico-node allocates them
//! (`node/pkg/allocateip/allocateip.go`, `reconcileTunnelAddrs`): for IP-in-IP, VXLAN and
//! VXLAN over IPv6, when an IP pool with that encapsulation selects this node, one address
//! from those pools under Calico's handle (`ipip-tunnel-addr-<node>`, ...) with Calico's
//! allocation attributes (`node`, `type`), written to this host's Node
//! (`spec.bgp.ipv4IPIPTunnelAddr`, `spec.ipv4VXLANTunnelAddr`, `spec.ipv6VXLANTunnelAddr`);
//! released, and the field cleared, when no pool needs it any more.
//!
//! Beside calico-node, the VXLAN MAC (`spec.vxlanTunnelMACAddr`, `vxlanTunnelMACAddrV6`) is
//! written with the address, as Felix computes it for a Node without one, unless the Node
//! already has one; the MAC is cleared with the address only when it is that computed one
//! (a MAC someone set stays). Other hosts then read the MAC instead of computing it.
//!
//! In `felix` mode (`CALICO_LIBNETWORK_DATAPLANE`, or `auto` with Felix found) calico-node
//! runs on the host and keeps these addresses and fields itself, as Felix keeps the routes:
//! the plugin then allocates, releases and writes none of them.
//!
//! Run at start and every [`TUNNEL_INTERVAL`] (at most) by the node-address loop
//! ([`Driver::keep_node_address_in_background`]): calico-node reacts to pool changes through
//! a watch; a pool added or removed by `calico-libnetwork pool` (another process) or
//! calicoctl is seen at the next pass. Every Node write is a compare-and-swap of the Node as
//! read, keeping every other field.

use std::net::IpAddr;

use ipnet::IpNet;

use super::Driver;
use crate::datastore::resources;
use crate::error::{Error, Result};
use crate::ipam::{AssignIp, AutoAssign};
use crate::model::block::{ReleaseOptions, ATTR_NODE, ATTR_TYPE};
use crate::model::ippool::{MODE_ALWAYS, MODE_CROSS_SUBNET, USE_TUNNEL};
use crate::model::keys;
use crate::model::resources::{NodeBgpSpec, NodeSpec};
use crate::model::{IpFamily, IpPool, Node};

/// How often, at most, the tunnel addresses are reconciled: calico-node reacts to a pool
/// change at once (it watches pools); the plugin polls, so a pool change made elsewhere
/// takes effect within this time.
pub const TUNNEL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// One kind of tunnel address calico-node allocates (WireGuard's aside: the plugin runs no
/// WireGuard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// IP-in-IP (`tunl0`), IPv4 only.
    Ipip,
    /// VXLAN over IPv4 (`vxlan.calico`).
    Vxlan,
    /// VXLAN over IPv6 (`vxlan-v6.calico`).
    VxlanV6,
}

impl TunnelKind {
    /// Every kind, in calico-node's order (`reconcileTunnelAddrs`).
    pub const ALL: [TunnelKind; 3] = [TunnelKind::Ipip, TunnelKind::Vxlan, TunnelKind::VxlanV6];

    /// The allocation attribute `type` (Calico's `ipam.AttributeType...`).
    pub fn attr_type(self) -> &'static str {
        match self {
            TunnelKind::Ipip => "ipipTunnelAddress",
            TunnelKind::Vxlan => "vxlanTunnelAddress",
            TunnelKind::VxlanV6 => "vxlanV6TunnelAddress",
        }
    }

    /// The IPAM handle of `node`'s address of this kind (`generateHandleAndAttributes`).
    pub fn handle(self, node: &str) -> String {
        match self {
            TunnelKind::Ipip => format!("ipip-tunnel-addr-{node}"),
            TunnelKind::Vxlan => format!("vxlan-tunnel-addr-{node}"),
            TunnelKind::VxlanV6 => format!("vxlan-v6-tunnel-addr-{node}"),
        }
    }

    /// The allocation attributes of `node`'s address of this kind: `node` and `type` only
    /// (`generateHandleAndAttributes`: no timestamp).
    pub fn attrs(self, node: &str) -> std::collections::BTreeMap<String, String> {
        [
            (ATTR_NODE.to_string(), node.to_string()),
            (ATTR_TYPE.to_string(), self.attr_type().to_string()),
        ]
        .into()
    }

    fn family(self) -> IpFamily {
        match self {
            TunnelKind::Ipip | TunnelKind::Vxlan => IpFamily::V4,
            TunnelKind::VxlanV6 => IpFamily::V6,
        }
    }

    /// Whether `pool`'s encapsulation mode asks for this kind (`Always` or `CrossSubnet`).
    fn mode_enabled(self, pool: &IpPool) -> bool {
        let mode = match self {
            TunnelKind::Ipip => &pool.spec.ipip_mode,
            TunnelKind::Vxlan | TunnelKind::VxlanV6 => &pool.spec.vxlan_mode,
        };
        mode == MODE_ALWAYS || mode == MODE_CROSS_SUBNET
    }

    /// The Node's address of this kind (empty: none).
    fn get(self, spec: &NodeSpec) -> &str {
        match self {
            TunnelKind::Ipip => spec
                .bgp
                .as_ref()
                .map_or("", |b| b.ipv4_ipip_tunnel_addr.as_str()),
            TunnelKind::Vxlan => &spec.ipv4_vxlan_tunnel_addr,
            TunnelKind::VxlanV6 => &spec.ipv6_vxlan_tunnel_addr,
        }
    }

    /// Sets the Node's address of this kind (`updateNodeWithAddress`; empty clears it, and
    /// a BGP section left empty goes, as `removeHostTunnelAddr` sets it to nil).
    fn set(self, spec: &mut NodeSpec, addr: &str) {
        match self {
            TunnelKind::Ipip => {
                let mut bgp = spec.bgp.take().unwrap_or_default();
                bgp.ipv4_ipip_tunnel_addr = addr.to_string();
                spec.bgp = (bgp != NodeBgpSpec::default()).then_some(bgp);
            }
            TunnelKind::Vxlan => spec.ipv4_vxlan_tunnel_addr = addr.to_string(),
            TunnelKind::VxlanV6 => spec.ipv6_vxlan_tunnel_addr = addr.to_string(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            TunnelKind::Ipip => "IP-in-IP",
            TunnelKind::Vxlan => "VXLAN",
            TunnelKind::VxlanV6 => "VXLAN (IPv6)",
        }
    }
}

/// This host's tunnel addresses in force after a reconciliation (`None`: none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelAddresses {
    /// `spec.bgp.ipv4IPIPTunnelAddr`.
    pub ipip: Option<IpAddr>,
    /// `spec.ipv4VXLANTunnelAddr`.
    pub vxlan: Option<IpAddr>,
    /// `spec.ipv6VXLANTunnelAddr`.
    pub vxlan_v6: Option<IpAddr>,
    /// `spec.vxlanTunnelMACAddr` (empty: none).
    pub vxlan_mac: String,
    /// `spec.vxlanTunnelMACAddrV6` (empty: none).
    pub vxlan_mac_v6: String,
}

impl TunnelAddresses {
    fn of(spec: &NodeSpec) -> Self {
        let parse = |k: TunnelKind| k.get(spec).parse().ok();
        TunnelAddresses {
            ipip: parse(TunnelKind::Ipip),
            vxlan: parse(TunnelKind::Vxlan),
            vxlan_v6: parse(TunnelKind::VxlanV6),
            vxlan_mac: spec.vxlan_tunnel_mac_addr.clone(),
            vxlan_mac_v6: spec.vxlan_tunnel_mac_addr_v6.clone(),
        }
    }
}

/// Felix's deterministic VXLAN MAC for a node, as the Node field holds it.
fn felix_vxlan_mac(nodename: &str, v6: bool) -> String {
    crate::dataplane::format_mac(crate::dataplane::vxlan_mac(nodename, v6))
}

/// The pools `kind` allocates from for `node` (`determineEnabledPoolCIDRs`), in list (name)
/// order: pools whose `allowedUses`, when set, include `Tunnel`, whose node selector selects
/// the Node (an empty one selects every Node; one that does not parse is skipped), that are
/// neither disabled nor being deleted, whose mode for `kind` is `Always` or `CrossSubnet`, of
/// `kind`'s family.
pub fn enabled_pool_cidrs(kind: TunnelKind, pools: &[IpPool], node: &Node) -> Vec<IpNet> {
    let mut out = Vec::new();
    for pool in pools {
        let Ok(cidr) = pool.spec.cidr_net() else {
            tracing::warn!(pool = %pool.name(), cidr = %pool.spec.cidr, "IP pool with an invalid CIDR: skipped for tunnel addresses");
            continue;
        };
        if !pool.spec.allowed_uses.is_empty()
            && !pool.spec.allowed_uses.iter().any(|u| u == USE_TUNNEL)
        {
            continue;
        }
        match pool.spec.node_selector() {
            Ok(sel) if sel.matches(&node.metadata.labels) => {}
            Ok(_) => continue,
            Err(e) => {
                tracing::error!(pool = %pool.name(), selector = %pool.spec.node_selector, error = %e, "IP pool's nodeSelector does not parse: skipped for tunnel addresses");
                continue;
            }
        }
        let disabled = pool.spec.disabled || pool.metadata.deletion_timestamp.is_some();
        if kind.mode_enabled(pool) && !disabled && IpFamily::of_net(&cidr) == kind.family() {
            out.push(cidr);
        }
    }
    out
}

impl Driver {
    /// Reconciles this host's tunnel addresses as calico-node does (see the module
    /// documentation) and returns those in force. Does nothing when this host has no Node,
    /// or another machine runs under its node name (its Node is that machine's); in `felix`
    /// mode changes nothing and returns the Node's (calico-node's).
    pub async fn reconcile_tunnel_addresses(&self) -> Result<TunnelAddresses> {
        use std::sync::atomic::Ordering;
        let _one_at_a_time = self.tunnel_pass.lock().await;
        let host = &self.settings.nodename;
        let key = keys::node_key(host);
        let felix = self.rules.mode() == Some(crate::dataplane::iptables::Mode::Felix);
        if self
            .tunnel_left_to_calico_node
            .swap(felix, Ordering::SeqCst)
            != felix
        {
            if felix {
                tracing::info!(node = %host, "Felix runs on this host: calico-node keeps its tunnel addresses");
            } else {
                tracing::info!(node = %host, "Felix no longer runs on this host: the plugin keeps its tunnel addresses");
            }
        }
        if felix {
            let node = resources::get::<NodeSpec>(self.store.as_ref(), &key).await?;
            return Ok(node.map_or_else(TunnelAddresses::default, |n| TunnelAddresses::of(&n.spec)));
        }
        if self.foreign_owner.lock().unwrap().is_some() {
            return Ok(TunnelAddresses::default());
        }
        for _ in 0..resources::UPDATE_ATTEMPTS {
            let Some(mut node) = resources::get::<NodeSpec>(self.store.as_ref(), &key).await?
            else {
                tracing::debug!(node = %host, "no Node resource: no tunnel address");
                return Ok(TunnelAddresses::default());
            };
            let pools = self.ipam.list_pools().await?;
            let before = node.clone();
            // Addresses newly allocated in this pass: released again if it fails
            // (`reconcileTunnelAddrs`' deferred release), so none leaks.
            let mut assigned = Vec::new();
            if let Err(e) = self
                .reconcile_tunnel_pass(&mut node, &pools, &mut assigned)
                .await
            {
                self.release_tunnel_addresses(&assigned).await;
                return Err(e.context(format!("reconcile the tunnel addresses of Node {host}")));
            }
            if node == before {
                return Ok(TunnelAddresses::of(&node.spec));
            }
            let written = match self.check_ready().await {
                Ok(()) => resources::update(self.store.as_ref(), &mut node).await,
                Err(e) => Err(e),
            };
            match written {
                Ok(_) => {
                    let now = TunnelAddresses::of(&node.spec);
                    tracing::info!(node = %host, ipip = ?now.ipip, vxlan = ?now.vxlan, vxlan_v6 = ?now.vxlan_v6, "wrote this host's tunnel addresses on its Node");
                    return Ok(now);
                }
                Err(e) => {
                    self.release_tunnel_addresses(&assigned).await;
                    if e.is_conflict() {
                        continue;
                    }
                    if e.is_not_found() {
                        return Ok(TunnelAddresses::default());
                    }
                    return Err(e.context(format!("write the tunnel addresses of Node {host}")));
                }
            }
        }
        Err(Error::msg(format!(
            "reconcile the tunnel addresses of Node {host}: still conflicting after {} attempts",
            resources::UPDATE_ATTEMPTS
        )))
    }

    /// One pass of `reconcileTunnelAddrs` over `node` (changed in memory only); the kinds
    /// that got a new address are added to `assigned`.
    async fn reconcile_tunnel_pass(
        &self,
        node: &mut Node,
        pools: &[IpPool],
        assigned: &mut Vec<TunnelKind>,
    ) -> Result<()> {
        for kind in TunnelKind::ALL {
            let cidrs = enabled_pool_cidrs(kind, pools, node);
            if cidrs.is_empty() {
                self.remove_host_tunnel_addr(node, kind).await?;
            } else if self.ensure_host_tunnel_address(node, &cidrs, kind).await? {
                assigned.push(kind);
            }
        }
        for (v6, kind) in [(false, TunnelKind::Vxlan), (true, TunnelKind::VxlanV6)] {
            let has_address = !kind.get(&node.spec).is_empty();
            let computed = felix_vxlan_mac(node.name(), v6);
            let mac = if v6 {
                &mut node.spec.vxlan_tunnel_mac_addr_v6
            } else {
                &mut node.spec.vxlan_tunnel_mac_addr
            };
            if has_address && mac.is_empty() {
                *mac = computed;
            } else if !has_address && *mac == computed {
                mac.clear();
            }
        }
        Ok(())
    }

    /// Releases, by handle, the addresses a failed pass allocated (failures logged).
    async fn release_tunnel_addresses(&self, kinds: &[TunnelKind]) {
        for kind in kinds {
            let handle = kind.handle(&self.settings.nodename);
            if let Err(e) = self.ipam.release_by_handle(&handle).await {
                tracing::error!(handle = %handle, error = %e, "release a tunnel address after a failed reconciliation");
            }
        }
    }

    /// Releases whatever `handle` holds (calico-node's defensive release); an absent handle
    /// is nothing to do (and no write, so a datastore lock does not stop the check).
    async fn release_tunnel_handle(&self, handle: &str) -> Result<()> {
        match self.ipam.ips_by_handle(handle).await {
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        self.check_ready().await?;
        match self.ipam.release_by_handle(handle).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// calico-node's `ensureHostTunnelAddress`: keeps the Node's address of `kind` when it
    /// is allocated to this node for `kind` in one of `cidrs`; otherwise releases what the
    /// handle holds and allocates a new one, written to `node`. An old address allocated
    /// without handle or attributes (from before Calico used them) is allocated again with
    /// them, keeping it. Returns whether a new address was allocated.
    async fn ensure_host_tunnel_address(
        &self,
        node: &mut Node,
        cidrs: &[IpNet],
        kind: TunnelKind,
    ) -> Result<bool> {
        let name = node.name().to_string();
        let handle = kind.handle(&name);
        let addr = kind.get(&node.spec).to_string();
        let mut release = false;
        if addr.is_empty() {
            // Also covers a Node that lost its address while the allocation stayed.
            release = true;
        } else {
            let ip: IpAddr = addr.parse().map_err(|_| {
                Error::msg(format!(
                    "parse the {} tunnel address '{addr}' of Node {name}",
                    kind.name()
                ))
            })?;
            match self.ipam.assignment_attributes(ip).await? {
                Some(attr)
                    if attr.secondary.get(ATTR_TYPE).map(String::as_str)
                        == Some(kind.attr_type())
                        && attr.secondary.get(ATTR_NODE) == Some(&name) =>
                {
                    if cidrs.iter().any(|c| c.contains(&ip)) {
                        return Ok(false);
                    }
                    tracing::info!(node = %name, address = %ip, "{} tunnel address is not in a pool for it any more: allocating another", kind.name());
                    release = true;
                }
                Some(attr) if attr.secondary.is_empty() => {
                    if attr.handle().is_some() {
                        // A workload's address (workloads always had handles): leave it.
                        tracing::info!(node = %name, address = %ip, "{} tunnel address is a workload's: allocating another", kind.name());
                    } else if self.correct_allocation_with_handle(ip, &name, kind).await? {
                        tracing::info!(node = %name, address = %ip, "{} tunnel address allocated again with its handle and attributes", kind.name());
                        return Ok(false);
                    }
                }
                Some(_) => {
                    tracing::info!(node = %name, address = %ip, "{} tunnel address is allocated to something else: allocating another", kind.name());
                }
                None => {
                    tracing::info!(node = %name, address = %ip, "{} tunnel address is not allocated: allocating another", kind.name());
                    release = true;
                }
            }
        }
        if release {
            self.release_tunnel_handle(&handle).await?;
        }
        self.check_ready().await?;
        let ip = self.assign_host_tunnel_addr(&name, cidrs, kind).await?;
        kind.set(&mut node.spec, &ip.to_string());
        tracing::info!(node = %name, address = %ip, "allocated {} tunnel address", kind.name());
        Ok(true)
    }

    /// calico-node's `correctAllocationWithHandle`: releases `ip` and allocates it again
    /// under `kind`'s handle and attributes. `false` when someone else took it in between.
    async fn correct_allocation_with_handle(
        &self,
        ip: IpAddr,
        node: &str,
        kind: TunnelKind,
    ) -> Result<bool> {
        self.check_ready().await?;
        self.ipam.release_ips(&[ip]).await?;
        let args = AssignIp {
            ip,
            handle: kind.handle(node),
            attrs: kind.attrs(node),
            host: node.to_string(),
            // calico-node states no use here (Calico's AssignIP then checks none).
            intended_use: String::new(),
        };
        match self.ipam.assign_ip(&args).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// calico-node's `assignHostTunnelAddr`: one address for `kind` from `cidrs` (in that
    /// order), intended use `Tunnel`.
    async fn assign_host_tunnel_addr(
        &self,
        node: &str,
        cidrs: &[IpNet],
        kind: TunnelKind,
    ) -> Result<IpAddr> {
        let family = kind.family();
        let mut args = AutoAssign::new(1, family, node, &kind.handle(node));
        args.pools = cidrs.to_vec();
        args.attrs = kind.attrs(node);
        args.intended_use = USE_TUNNEL.to_string();
        let got = self
            .ipam
            .auto_assign(&args)
            .await
            .map_err(|e| e.context(format!("allocate a {} tunnel address", kind.name())))?;
        match got.ips.first() {
            Some(ip) => Ok(ip.addr()),
            None => Err(Error::msg(format!(
                "allocate a {} tunnel address: {}",
                kind.name(),
                got.shortfall(1, family)
            ))),
        }
    }

    /// calico-node's `removeHostTunnelAddr`: clears the Node's address of `kind` and
    /// releases what its handle holds; without a handle, the Node's address itself when its
    /// allocation has no handle and no attributes (from before Calico used them) or carries
    /// this handle (the handle record was lost).
    async fn remove_host_tunnel_addr(&self, node: &mut Node, kind: TunnelKind) -> Result<()> {
        let name = node.name().to_string();
        let handle = kind.handle(&name);
        let addr = kind.get(&node.spec).to_string();
        kind.set(&mut node.spec, "");
        match self.ipam.ips_by_handle(&handle).await {
            Ok(_) => {
                self.check_ready().await?;
                match self.ipam.release_by_handle(&handle).await {
                    Ok(()) => {
                        tracing::info!(node = %name, "released the {} tunnel address: no pool needs it", kind.name());
                        return Ok(());
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let Ok(ip) = addr.parse::<IpAddr>() else {
            return Ok(());
        };
        match self.ipam.assignment_attributes(ip).await? {
            None => Ok(()),
            Some(attr) if attr.secondary.is_empty() && attr.handle().is_none() => {
                self.check_ready().await?;
                self.ipam.release_ips(&[ip]).await.map(|_| ())
            }
            Some(attr) if attr.handle() == Some(handle.as_str()) => {
                self.check_ready().await?;
                self.ipam
                    .release(&[ReleaseOptions::new(ip).with_handle(handle)])
                    .await
                    .map(|_| ())
            }
            Some(attr) => {
                tracing::warn!(node = %name, address = %ip, attributes = ?attr.secondary, "the Node's {} tunnel address has been reused by something else", kind.name());
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IpPoolSpec;

    fn pool(name: &str, cidr: &str, f: impl FnOnce(&mut IpPoolSpec)) -> IpPool {
        let mut spec = IpPoolSpec::with_cidr(&cidr.parse().unwrap());
        f(&mut spec);
        IpPool::new(name, spec)
    }

    fn node(labels: &[(&str, &str)]) -> Node {
        let mut n = Node::new("host-a", NodeSpec::default());
        for (k, v) in labels {
            n.metadata.labels.insert(k.to_string(), v.to_string());
        }
        n
    }

    // felix/calc/vxlan_resolver.go, vtepMACForHost: 'f' then sha1(name)[0:5] as Go's
    // HardwareAddr.String() writes it; IPv6 hashes "<name>-v6". The expected values are
    // sha1("node1") = f937c37e94..., sha1("node1-v6") = 0f35f260df... (Python's hashlib).
    #[test]
    fn the_vxlan_mac_is_felixs() {
        assert_eq!(felix_vxlan_mac("node1", false), "66:f9:37:c3:7e:94");
        assert_eq!(felix_vxlan_mac("node1", true), "66:0f:35:f2:60:df");
    }

    // node/pkg/allocateip/allocateip.go, determineEnabledPoolCIDRs: mode Always or
    // CrossSubnet, not disabled, selecting the node, Tunnel among allowedUses when set, the
    // kind's family.
    #[test]
    fn pools_are_filtered_as_calico_node_filters_them() {
        let pools = vec![
            pool("a-vxlan", "10.1.0.0/16", |s| s.vxlan_mode = "Always".into()),
            pool("b-cross", "10.2.0.0/16", |s| {
                s.vxlan_mode = "CrossSubnet".into()
            }),
            pool("c-never", "10.3.0.0/16", |s| s.vxlan_mode = "Never".into()),
            pool("d-disabled", "10.4.0.0/16", |s| {
                s.vxlan_mode = "Always".into();
                s.disabled = true;
            }),
            pool("e-other-nodes", "10.5.0.0/16", |s| {
                s.vxlan_mode = "Always".into();
                s.node_selector = "zone == 'b'".into();
            }),
            pool("f-workload-only", "10.6.0.0/16", |s| {
                s.vxlan_mode = "Always".into();
                s.allowed_uses = vec!["Workload".into()];
            }),
            pool("g-ipip", "10.7.0.0/16", |s| s.ipip_mode = "Always".into()),
            pool("h-v6", "fd00:1::/64", |s| s.vxlan_mode = "Always".into()),
            pool("i-bad-selector", "10.9.0.0/16", |s| {
                s.vxlan_mode = "Always".into();
                s.node_selector = "has(".into();
            }),
        ];
        let n = node(&[("zone", "a")]);
        let nets = |v: &[&str]| -> Vec<IpNet> { v.iter().map(|s| s.parse().unwrap()).collect() };
        assert_eq!(
            enabled_pool_cidrs(TunnelKind::Vxlan, &pools, &n),
            nets(&["10.1.0.0/16", "10.2.0.0/16"])
        );
        assert_eq!(
            enabled_pool_cidrs(TunnelKind::Ipip, &pools, &n),
            nets(&["10.7.0.0/16"])
        );
        assert_eq!(
            enabled_pool_cidrs(TunnelKind::VxlanV6, &pools, &n),
            nets(&["fd00:1::/64"])
        );
        // The selector that left the pool out takes it in for a node it selects.
        assert!(
            enabled_pool_cidrs(TunnelKind::Vxlan, &pools, &node(&[("zone", "b")]))
                .contains(&"10.5.0.0/16".parse().unwrap())
        );
    }

    // allocateip.go, removeHostTunnelAddr: a BGP section left empty is set to nil; one
    // with anything else in it stays.
    #[test]
    fn clearing_the_ipip_address_drops_an_empty_bgp_section() {
        let mut spec = NodeSpec::default();
        TunnelKind::Ipip.set(&mut spec, "10.7.0.1");
        assert_eq!(TunnelKind::Ipip.get(&spec), "10.7.0.1");
        TunnelKind::Ipip.set(&mut spec, "");
        assert_eq!(spec.bgp, None);
        spec.bgp = Some(NodeBgpSpec {
            ipv4_address: "192.0.2.1/24".into(),
            ..Default::default()
        });
        TunnelKind::Ipip.set(&mut spec, "10.7.0.1");
        TunnelKind::Ipip.set(&mut spec, "");
        assert_eq!(spec.bgp.unwrap().ipv4_address, "192.0.2.1/24");
    }
}
