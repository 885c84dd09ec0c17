//! What the kernel should hold for the other hosts: computed, with no I/O, from the
//! cluster's Nodes, IP pools, IPAM blocks and WorkloadEndpoints as they are watched.
//!
//! The rules are Felix's in its non-BGP modes (`felix/calc/l3_route_resolver.go`,
//! `felix/dataplane/linux/vxlan_mgr.go`, `ipip_mgr.go`, `felix/vxlanfdb/vxlan_fdb.go`):
//! - each block affine to another host is routed to that host, each block of this host is a
//!   blackhole (its free addresses go nowhere, its used ones have their own `/32` routes);
//! - an address borrowed from a block of one host by a workload of another gets a `/32`
//!   (`/128`) route to the workload's host;
//! - the pool holding the destination says how: VXLAN (`vxlanMode`), IP-in-IP (`ipipMode`),
//!   each `Always`, `CrossSubnet` (only to hosts outside this host's subnet) or `Never`;
//!   without encapsulation the route goes via the other host's address, which must then be
//!   on this host's subnet;
//! - with VXLAN, every other host with a tunnel address and MAC gets a permanent neighbour
//!   entry (its tunnel address → its MAC) and a forwarding entry (its MAC → its address).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::dataplane::routes::{
    vxlan_mac, IpipDevice, OwnedRoute, RouteKind, VxlanDevice, IPIP_DEVICE, IPIP_OVERHEAD,
    VXLAN_DEVICE, VXLAN_OVERHEAD, VXLAN_PORT, VXLAN_V6_DEVICE, VXLAN_V6_OVERHEAD, VXLAN_VNI,
};
use crate::model::keys;
use crate::model::{IpPool, Node};

/// How a pool reaches other hosts, one of Calico's encapsulation modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encap {
    /// `Never` (Calico's default for an empty field).
    #[default]
    Never,
    /// `Always`.
    Always,
    /// `CrossSubnet`: only to hosts outside this host's subnet.
    CrossSubnet,
}

impl Encap {
    fn parse(s: &str) -> Encap {
        match s {
            "Always" => Encap::Always,
            "CrossSubnet" => Encap::CrossSubnet,
            _ => Encap::Never,
        }
    }

    fn applies(self, same_subnet: bool) -> bool {
        match self {
            Encap::Never => false,
            Encap::Always => true,
            Encap::CrossSubnet => !same_subnet,
        }
    }
}

/// What routing needs of a Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `spec.bgp.ipv4Address`, with its prefix length (the host's subnet).
    pub ipv4: Option<IpNet>,
    /// `spec.bgp.ipv6Address`.
    pub ipv6: Option<IpNet>,
    /// `spec.ipv4VXLANTunnelAddr`.
    pub vxlan_v4: Option<IpAddr>,
    /// `spec.ipv6VXLANTunnelAddr`.
    pub vxlan_v6: Option<IpAddr>,
    /// `spec.vxlanTunnelMACAddr`, else Felix's MAC computed from the node name.
    pub mac_v4: [u8; 6],
    /// `spec.vxlanTunnelMACAddrV6`, else Felix's MAC computed from the node name.
    pub mac_v6: [u8; 6],
    /// `spec.bgp.ipv4IPIPTunnelAddr`.
    pub ipip: Option<IpAddr>,
}

impl NodeInfo {
    /// What routing needs of `node`.
    pub fn from_node(node: &Node) -> NodeInfo {
        let name = node.name();
        let bgp = node.spec.bgp.as_ref();
        let net = |s: Option<&String>| s.and_then(|s| parse_net(s));
        let addr = |s: &str| s.parse::<IpAddr>().ok();
        let mac = |s: &str, v6: bool| {
            crate::dataplane::parse_mac(s).unwrap_or_else(|_| vxlan_mac(name, v6))
        };
        NodeInfo {
            ipv4: net(bgp.map(|b| &b.ipv4_address)).filter(|n| n.addr().is_ipv4()),
            ipv6: net(bgp.map(|b| &b.ipv6_address)).filter(|n| n.addr().is_ipv6()),
            vxlan_v4: addr(&node.spec.ipv4_vxlan_tunnel_addr).filter(IpAddr::is_ipv4),
            vxlan_v6: addr(&node.spec.ipv6_vxlan_tunnel_addr).filter(IpAddr::is_ipv6),
            mac_v4: mac(&node.spec.vxlan_tunnel_mac_addr, false),
            mac_v6: mac(&node.spec.vxlan_tunnel_mac_addr_v6, true),
            ipip: bgp
                .and_then(|b| addr(&b.ipv4_ipip_tunnel_addr))
                .filter(IpAddr::is_ipv4),
        }
    }

    fn address(&self, v6: bool) -> Option<IpNet> {
        if v6 {
            self.ipv6
        } else {
            self.ipv4
        }
    }
}

/// The host address of a WorkloadEndpoint's `ipNetworks` entry, as routes and the member
/// sets both take it: `/32` or `/128` whatever the record says (a wider prefix there would
/// route, or admit, a whole range), a bare address accepted.
pub fn workload_address(s: &str) -> Option<IpNet> {
    let net = parse_net(s)?;
    IpNet::new(net.addr(), net.max_prefix_len()).ok()
}

/// A host address as Calico writes it (`10.0.0.5/24`); a bare address is a host route.
fn parse_net(s: &str) -> Option<IpNet> {
    if s.is_empty() {
        return None;
    }
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// What routing needs of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    /// The pool's CIDR.
    pub cidr: IpNet,
    /// `spec.vxlanMode`.
    pub vxlan: Encap,
    /// `spec.ipipMode` (IPv4 pools only).
    pub ipip: Encap,
}

impl PoolInfo {
    /// What routing needs of `pool`; `None` for an unusable CIDR.
    pub fn from_pool(pool: &IpPool) -> Option<PoolInfo> {
        let cidr = pool.spec.cidr_net().ok()?;
        Some(PoolInfo {
            cidr,
            vxlan: Encap::parse(&pool.spec.vxlan_mode),
            // Calico refuses IP-in-IP on IPv6 pools; one written anyway means nothing.
            ipip: if cidr.addr().is_ipv4() {
                Encap::parse(&pool.spec.ipip_mode)
            } else {
                Encap::Never
            },
        })
    }
}

/// The two fields of a block that routing needs (its allocations are not decoded).
#[derive(Deserialize)]
struct BlockHead {
    cidr: String,
    #[serde(default)]
    affinity: Option<String>,
    #[serde(default)]
    deleted: bool,
}

/// A WorkloadEndpoint's host and addresses.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WepHead {
    #[serde(default)]
    spec: WepSpecHead,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WepSpecHead {
    #[serde(default)]
    node: String,
    #[serde(default)]
    ip_networks: Vec<String>,
}

/// The cluster as routing sees it, kept from watched keys.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    nodes: BTreeMap<String, NodeInfo>,
    /// By datastore key.
    pools: BTreeMap<String, PoolInfo>,
    /// By datastore key: the block's CIDR and the host it is affine to.
    blocks: BTreeMap<String, (IpNet, Option<String>)>,
    /// By datastore key: the workload's host and its addresses.
    workloads: BTreeMap<String, (String, Vec<IpNet>)>,
}

/// Which kind of key a watched key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    /// `/calico/resources/v3/projectcalico.org/nodes/`.
    Nodes,
    /// `/calico/resources/v3/projectcalico.org/ippools/`.
    Pools,
    /// `/calico/ipam/v2/assignment/`.
    Blocks,
    /// `/calico/resources/v3/projectcalico.org/workloadendpoints/`.
    Workloads,
}

impl Watched {
    /// Every prefix routing follows.
    pub const ALL: [Watched; 4] = [
        Watched::Nodes,
        Watched::Pools,
        Watched::Blocks,
        Watched::Workloads,
    ];

    /// The prefix followed.
    pub fn prefix(self) -> String {
        match self {
            Watched::Nodes => keys::resource_prefix(keys::PLURAL_NODES, None),
            Watched::Pools => keys::resource_prefix(keys::PLURAL_IP_POOLS, None),
            Watched::Blocks => keys::ALL_BLOCKS_PREFIX.to_string(),
            Watched::Workloads => keys::resource_prefix(keys::PLURAL_WORKLOAD_ENDPOINTS, None),
        }
    }
}

impl ClusterView {
    /// Takes in a key's new value (`None`: deleted). A value that does not decode is taken
    /// as absent (and said so in the result): one bad record must not stop routing.
    pub fn apply(&mut self, kind: Watched, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let Some(value) = value else {
            match kind {
                Watched::Nodes => {
                    if let Some(name) = key.rsplit('/').next() {
                        self.nodes.remove(name);
                    }
                }
                Watched::Pools => {
                    self.pools.remove(key);
                }
                Watched::Blocks => {
                    self.blocks.remove(key);
                }
                Watched::Workloads => {
                    self.workloads.remove(key);
                }
            }
            return Ok(());
        };
        let res = match kind {
            Watched::Nodes => Node::from_json(value).map_err(|e| e.to_string()).map(|n| {
                self.nodes
                    .insert(n.name().to_string(), NodeInfo::from_node(&n));
            }),
            Watched::Pools => IpPool::from_json(value)
                .map_err(|e| e.to_string())
                .and_then(|p| PoolInfo::from_pool(&p).ok_or_else(|| "invalid CIDR".to_string()))
                .map(|p| {
                    self.pools.insert(key.to_string(), p);
                }),
            Watched::Blocks => serde_json::from_slice::<BlockHead>(value)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    let cidr = b
                        .cidr
                        .parse::<IpNet>()
                        .map_err(|e| format!("cidr {:?}: {e}", b.cidr))?;
                    // Calico's block affinity is `host:<node>`; other kinds route nowhere.
                    let host = if b.deleted {
                        None
                    } else {
                        b.affinity
                            .as_deref()
                            .and_then(|a| a.strip_prefix("host:"))
                            .map(str::to_string)
                    };
                    self.blocks.insert(key.to_string(), (cidr.trunc(), host));
                    Ok(())
                }),
            Watched::Workloads => serde_json::from_slice::<WepHead>(value)
                .map_err(|e| e.to_string())
                .map(|w| {
                    let nets = w
                        .spec
                        .ip_networks
                        .iter()
                        .filter_map(|s| parse_net(s))
                        .collect();
                    self.workloads.insert(key.to_string(), (w.spec.node, nets));
                }),
        };
        if res.is_err() {
            // Keep nothing stale under that key.
            let _ = self.apply(kind, key, None);
        }
        res.map_err(|e| format!("decode {key}: {e}"))
    }

    /// How many nodes, pools, blocks and workloads are known.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.nodes.len(),
            self.pools.len(),
            self.blocks.len(),
            self.workloads.len(),
        )
    }

    /// The Node named `name`, as routing sees it.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }

    /// The pool holding `net` (the longest match, as pools may nest).
    fn pool_of(&self, net: &IpNet) -> Option<&PoolInfo> {
        self.pools
            .values()
            .filter(|p| p.cidr.contains(net))
            .max_by_key(|p| p.cidr.prefix_len())
    }

    /// The host a block holding `net` is affine to, if any block holds it.
    /// The addresses of WorkloadEndpoint `key` that need a route of their own (outside
    /// every block of its host): its host and them; `None` for an unknown key.
    pub fn borrowed(&self, key: &str) -> Option<(String, Vec<IpNet>)> {
        let (host, nets) = self.workloads.get(key)?;
        let out = nets
            .iter()
            .map(|n| IpNet::new(n.addr(), n.max_prefix_len()).unwrap_or(*n))
            .filter(|n| self.block_host(n) != Some(Some(host.as_str())))
            .collect();
        Some((host.clone(), out))
    }

    fn block_host(&self, net: &IpNet) -> Option<Option<&str>> {
        self.blocks
            .values()
            .filter(|(cidr, _)| cidr.contains(net))
            .max_by_key(|(cidr, _)| cidr.prefix_len())
            .map(|(_, host)| host.as_deref())
    }

    fn encap_wanted(&self, v6: bool) -> (bool, bool) {
        let pools = self
            .pools
            .values()
            .filter(|p| p.cidr.addr().is_ipv6() == v6);
        let mut vxlan = false;
        let mut ipip = false;
        for p in pools {
            vxlan |= p.vxlan != Encap::Never;
            ipip |= p.ipip != Encap::Never;
        }
        (vxlan, ipip)
    }

    /// What the kernel should hold on host `local`, whose underlay interfaces are
    /// `underlay` (the interface holding its Node's address, per version).
    pub fn desired(&self, local: &str, underlay: &Underlay) -> Desired {
        let mut out = Desired::default();
        let me = self.nodes.get(local).cloned().unwrap_or_default();

        // This host's tunnel devices, where a pool needs them and this host has what they
        // need: Felix makes no VXLAN device without a tunnel address (its VTEP).
        for v6 in [false, true] {
            let (vxlan, ipip) = self.encap_wanted(v6);
            let link = if v6 { &underlay.v6 } else { &underlay.v4 };
            let (Some(link), Some(addr)) = (link, me.address(v6)) else {
                if vxlan || ipip {
                    let family = if v6 { "IPv6" } else { "IPv4" };
                    out.problems.push(Problem::new(
                        ProblemKind::NoHostAddress,
                        family,
                        format!("no {family} tunnel device: this host has no {family} address on its Node"),
                    ));
                }
                continue;
            };
            let tunnel = if v6 { me.vxlan_v6 } else { me.vxlan_v4 };
            if vxlan {
                match tunnel {
                    Some(t) => {
                        let dev = VxlanDevice {
                            name: if v6 { VXLAN_V6_DEVICE } else { VXLAN_DEVICE }.to_string(),
                            vni: VXLAN_VNI,
                            port: VXLAN_PORT,
                            local: addr.addr(),
                            parent: link.name.clone(),
                            mac: if v6 { me.mac_v6 } else { me.mac_v4 },
                            mtu: link.mtu.saturating_sub(if v6 {
                                VXLAN_V6_OVERHEAD
                            } else {
                                VXLAN_OVERHEAD
                            }),
                            address: Some(t),
                        };
                        if v6 {
                            out.vxlan_v6 = Some(VxlanPlan::new(dev));
                        } else {
                            out.vxlan_v4 = Some(VxlanPlan::new(dev));
                        }
                    }
                    None => {
                        let dev = if v6 { VXLAN_V6_DEVICE } else { VXLAN_DEVICE };
                        out.problems.push(Problem::new(
                            ProblemKind::NoHostTunnelAddress,
                            dev,
                            format!(
                                "no {dev} device yet: this host's Node has no IPv{} VXLAN tunnel address",
                                if v6 { 6 } else { 4 },
                            ),
                        ));
                    }
                }
            }
            if ipip && !v6 {
                out.ipip = Some(IpipDevice {
                    mtu: link.mtu.saturating_sub(IPIP_OVERHEAD),
                    address: me.ipip,
                });
            }
        }

        // Every other host's VTEP, as Felix's FDB manager writes them.
        for (name, n) in &self.nodes {
            if name == local {
                continue;
            }
            for v6 in [false, true] {
                let plan = if v6 {
                    out.vxlan_v6.as_mut()
                } else {
                    out.vxlan_v4.as_mut()
                };
                let (Some(plan), Some(tunnel), Some(addr)) = (
                    plan,
                    if v6 { n.vxlan_v6 } else { n.vxlan_v4 },
                    n.address(v6),
                ) else {
                    continue;
                };
                let mac = if v6 { n.mac_v6 } else { n.mac_v4 };
                plan.neighbours.insert((tunnel, mac));
                plan.fdb.insert((mac, addr.addr()));
            }
        }

        // Blocks: this host's are blackholes, others' go to their host.
        for (cidr, host) in self.blocks.values() {
            match host.as_deref() {
                Some(h) if h == local => {
                    out.routes.insert(OwnedRoute {
                        dest: *cidr,
                        kind: RouteKind::Blackhole,
                    });
                }
                Some(h) => self.route_to(&me, h, *cidr, underlay, &mut out),
                None => {}
            }
        }
        // Borrowed addresses: a workload's address outside its host's blocks.
        for (host, nets) in self.workloads.values() {
            if host == local {
                continue;
            }
            for net in nets {
                let net = IpNet::new(net.addr(), net.max_prefix_len()).unwrap_or(*net);
                if self.block_host(&net) != Some(Some(host.as_str())) {
                    self.route_to(&me, host, net, underlay, &mut out);
                }
            }
        }
        out
    }

    /// The route to `dest` on host `to`, by the encapsulation its pool asks for.
    fn route_to(
        &self,
        me: &NodeInfo,
        to: &str,
        dest: IpNet,
        underlay: &Underlay,
        out: &mut Desired,
    ) {
        let v6 = dest.addr().is_ipv6();
        let problem =
            |kind, message: String| Problem::new(kind, format!("{dest} on {to}"), message);
        let Some(peer) = self.nodes.get(to) else {
            out.problems.push(problem(
                ProblemKind::PeerWithoutNode,
                format!("no route to {dest}: its host {to} has no Node"),
            ));
            return;
        };
        let Some(peer_addr) = peer.address(v6) else {
            out.problems.push(problem(
                ProblemKind::PeerWithoutAddress,
                format!(
                    "no route to {dest}: Node {to} has no IPv{} address",
                    if v6 { 6 } else { 4 }
                ),
            ));
            return;
        };
        let Some(my_addr) = me.address(v6) else {
            out.problems.push(problem(
                ProblemKind::HostWithoutAddress,
                format!(
                    "no route to {dest}: this host's Node has no IPv{} address",
                    if v6 { 6 } else { 4 }
                ),
            ));
            return;
        };
        // Felix's `CrossSubnet` test: is the peer on this host's subnet?
        let same_subnet = my_addr.trunc().contains(&peer_addr.addr());
        let pool = self.pool_of(&dest).copied();
        let vxlan = pool.is_some_and(|p| p.vxlan.applies(same_subnet));
        let ipip = pool.is_some_and(|p| p.ipip.applies(same_subnet));
        let kind = if vxlan {
            let plan = if v6 { &out.vxlan_v6 } else { &out.vxlan_v4 };
            let Some(plan) = plan else {
                out.problems.push(problem(
                    ProblemKind::NoVxlanDevice,
                    format!("no route to {dest} on {to}: no VXLAN device on this host"),
                ));
                return;
            };
            let Some(gw) = (if v6 { peer.vxlan_v6 } else { peer.vxlan_v4 }) else {
                out.problems.push(problem(
                    ProblemKind::PeerWithoutTunnelAddress,
                    format!("no route to {dest}: Node {to} has no VXLAN tunnel address yet"),
                ));
                return;
            };
            RouteKind::Via {
                gateway: gw,
                dev: plan.device.name.clone(),
                // The tunnel addresses share no subnet: the neighbour entry resolves it.
                onlink: true,
            }
        } else if ipip {
            if out.ipip.is_none() {
                out.problems.push(problem(
                    ProblemKind::NoIpipDevice,
                    format!("no route to {dest} on {to}: no IP-in-IP device on this host"),
                ));
                return;
            }
            RouteKind::Via {
                gateway: peer_addr.addr(),
                dev: IPIP_DEVICE.to_string(),
                // The peer's underlay address is not on tunl0's (absent) subnet.
                onlink: true,
            }
        } else if same_subnet {
            let link = if v6 { &underlay.v6 } else { &underlay.v4 };
            let Some(link) = link else {
                return;
            };
            RouteKind::Via {
                gateway: peer_addr.addr(),
                dev: link.name.clone(),
                onlink: false,
            }
        } else {
            // Without encapsulation only a router that knows the block (BGP) could carry
            // it, and no BGP runs here.
            out.problems.push(problem(
                ProblemKind::NoEncapsulation,
                format!(
                    "no route to {dest} on {to}: {to} ({}) is outside this host's subnet ({}) and the pool uses no encapsulation (use vxlanMode or ipipMode CrossSubnet or Always)",
                    peer_addr.addr(),
                    my_addr.trunc()
                ),
            ));
            return;
        };
        out.routes.insert(OwnedRoute { dest, kind });
    }
}

/// One underlay interface: its name and MTU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
}

/// The interfaces that hold this host's Node addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Underlay {
    /// The one holding `spec.bgp.ipv4Address`.
    pub v4: Option<Link>,
    /// The one holding `spec.bgp.ipv6Address`.
    pub v6: Option<Link>,
}

/// A VXLAN device with its neighbour and forwarding entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanPlan {
    /// The device.
    pub device: VxlanDevice,
    /// Each other host's tunnel address and MAC.
    pub neighbours: BTreeSet<(IpAddr, [u8; 6])>,
    /// Each other host's MAC and underlay address.
    pub fdb: BTreeSet<([u8; 6], IpAddr)>,
}

impl VxlanPlan {
    fn new(device: VxlanDevice) -> Self {
        VxlanPlan {
            device,
            neighbours: BTreeSet::new(),
            fdb: BTreeSet::new(),
        }
    }
}

/// What the kernel should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Our routes (protocol [`crate::dataplane::routes::ROUTE_PROTOCOL`]).
    pub routes: BTreeSet<OwnedRoute>,
    /// `vxlan.calico`, when a pool uses VXLAN.
    pub vxlan_v4: Option<VxlanPlan>,
    /// `vxlan-v6.calico`, when an IPv6 pool uses VXLAN.
    pub vxlan_v6: Option<VxlanPlan>,
    /// `tunl0`, when a pool uses IP-in-IP.
    pub ipip: Option<IpipDevice>,
    /// Why some destination has no route (logged by kind: `super::problem_lines`).
    pub problems: Vec<Problem>,
}

/// What keeps routes or devices from the kernel, by kind: a pass's problems are logged one
/// line per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemKind {
    /// This host's Node has no address of the family a tunnel device needs.
    NoHostAddress,
    /// This host's Node has no VXLAN tunnel address (yet: it is allocated at start).
    NoHostTunnelAddress,
    /// A tunnel device could not be made or fixed.
    DeviceFailed,
    /// A destination's host has no Node.
    PeerWithoutNode,
    /// A destination's host's Node has no address of its family.
    PeerWithoutAddress,
    /// This host's Node has no address of a destination's family.
    HostWithoutAddress,
    /// A VXLAN destination's host has no VXLAN tunnel address (yet).
    PeerWithoutTunnelAddress,
    /// A VXLAN destination, and no VXLAN device on this host (it waits for this host's
    /// tunnel address or address).
    NoVxlanDevice,
    /// An IP-in-IP destination, and no IP-in-IP device on this host.
    NoIpipDevice,
    /// A destination outside this host's subnet in a pool without encapsulation.
    NoEncapsulation,
}

impl ProblemKind {
    /// What a line of several problems of this kind says after their count.
    pub fn summary(self) -> &'static str {
        match self {
            ProblemKind::NoHostAddress => {
                "tunnel devices wait for an address of their family on this host's Node"
            }
            ProblemKind::NoHostTunnelAddress => {
                "VXLAN devices wait for this host's VXLAN tunnel address"
            }
            ProblemKind::DeviceFailed => "tunnel devices could not be set up",
            ProblemKind::PeerWithoutNode => "routes wait for their host's Node",
            ProblemKind::PeerWithoutAddress => {
                "routes wait for an address of their family on their host's Node"
            }
            ProblemKind::HostWithoutAddress => {
                "routes wait for an address of their family on this host's Node"
            }
            ProblemKind::PeerWithoutTunnelAddress => {
                "routes wait for their host's VXLAN tunnel address"
            }
            ProblemKind::NoVxlanDevice => {
                "routes wait for this host's VXLAN device (it comes with this host's VXLAN tunnel address)"
            }
            ProblemKind::NoIpipDevice => "routes wait for this host's IP-in-IP device",
            ProblemKind::NoEncapsulation => {
                "routes go to hosts outside this host's subnet in pools without encapsulation (use vxlanMode or ipipMode CrossSubnet or Always)"
            }
        }
    }

    /// Expected for a moment at every start with VXLAN: until this host's tunnel address is
    /// allocated, there is no VXLAN device and no route through it.
    pub fn waits_for_own_tunnel_address(self) -> bool {
        matches!(
            self,
            ProblemKind::NoHostTunnelAddress | ProblemKind::NoVxlanDevice
        )
    }
}

/// One thing that keeps a route or device from the kernel.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    /// Its kind.
    pub kind: ProblemKind,
    /// What it is about, short, as an example in a summary: `10.65.1.0/26 on host-3`,
    /// `vxlan.calico`.
    pub subject: String,
    /// The whole sentence.
    pub message: String,
}

impl Problem {
    /// A problem of `kind` about `subject`, saying `message`.
    pub fn new(kind: ProblemKind, subject: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            kind,
            subject: subject.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, v4: &str, vxlan: &str, ipip: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "kind": "Node", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": name},
            "spec": {"bgp": {"ipv4Address": v4, "ipv4IPIPTunnelAddr": ipip},
                     "ipv4VXLANTunnelAddr": vxlan}
        }))
        .unwrap()
    }

    fn pool(cidr: &str, vxlan: &str, ipip: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "kind": "IPPool", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "p"},
            "spec": {"cidr": cidr, "vxlanMode": vxlan, "ipipMode": ipip, "blockSize": 26}
        }))
        .unwrap()
    }

    fn block(cidr: &str, host: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "cidr": cidr, "affinity": host.map(|h| format!("host:{h}")),
            "allocations": [], "unallocated": [], "attributes": [], "deleted": false
        }))
        .unwrap()
    }

    fn wep(node: &str, ip: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "w", "namespace": "libnetwork"},
            "spec": {"node": node, "ipNetworks": [ip], "interfaceName": "cali1"}
        }))
        .unwrap()
    }

    /// h1 and h2 on 10.0.0.0/24, h3 on 10.1.0.0/24; a block each.
    fn fleet(vxlan: &str, ipip: &str) -> ClusterView {
        let mut v = ClusterView::default();
        for (n, a, t, i) in [
            ("h1", "10.0.0.1/24", "192.168.0.1", "192.168.0.2"),
            ("h2", "10.0.0.2/24", "192.168.1.1", "192.168.1.2"),
            ("h3", "10.1.0.3/24", "192.168.2.1", "192.168.2.2"),
        ] {
            v.apply(Watched::Nodes, &format!("/n/{n}"), Some(&node(n, a, t, i)))
                .unwrap();
        }
        v.apply(
            Watched::Pools,
            "/p/p",
            Some(&pool("192.168.0.0/16", vxlan, ipip)),
        )
        .unwrap();
        for (i, h) in ["h1", "h2", "h3"].iter().enumerate() {
            v.apply(
                Watched::Blocks,
                &format!("/b/{i}"),
                Some(&block(&format!("192.168.{i}.0/26"), Some(h))),
            )
            .unwrap();
        }
        v
    }

    fn eth0() -> Underlay {
        Underlay {
            v4: Some(Link {
                name: "eth0".into(),
                mtu: 1500,
            }),
            v6: None,
        }
    }

    fn route(dest: &str, kind: RouteKind) -> OwnedRoute {
        OwnedRoute {
            dest: dest.parse().unwrap(),
            kind,
        }
    }

    fn via(gw: &str, dev: &str, onlink: bool) -> RouteKind {
        RouteKind::Via {
            gateway: gw.parse().unwrap(),
            dev: dev.into(),
            onlink,
        }
    }

    #[test]
    fn no_encapsulation_routes_the_same_subnet_only() {
        let d = fleet("Never", "Never").desired("h1", &eth0());
        assert_eq!(
            d.routes,
            BTreeSet::from([
                route("192.168.0.0/26", RouteKind::Blackhole),
                route("192.168.1.0/26", via("10.0.0.2", "eth0", false)),
            ])
        );
        assert!(d.vxlan_v4.is_none() && d.ipip.is_none());
        assert!(
            d.problems
                .iter()
                .any(|p| p.kind == ProblemKind::NoEncapsulation
                    && p.subject == "192.168.2.0/26 on h3")
        );
    }

    #[test]
    fn vxlan_always_and_cross_subnet() {
        let d = fleet("Always", "Never").desired("h1", &eth0());
        let plan = d.vxlan_v4.as_ref().unwrap();
        assert_eq!(plan.device.name, "vxlan.calico");
        assert_eq!(plan.device.mtu, 1450);
        assert_eq!(plan.device.local, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(plan.device.mac, vxlan_mac("h1", false));
        assert_eq!(plan.neighbours.len(), 2);
        assert!(plan
            .fdb
            .contains(&(vxlan_mac("h3", false), "10.1.0.3".parse().unwrap())));
        assert!(d.routes.contains(&route(
            "192.168.1.0/26",
            via("192.168.1.1", "vxlan.calico", true)
        )));
        assert!(d.routes.contains(&route(
            "192.168.2.0/26",
            via("192.168.2.1", "vxlan.calico", true)
        )));

        let d = fleet("CrossSubnet", "Never").desired("h1", &eth0());
        assert!(d
            .routes
            .contains(&route("192.168.1.0/26", via("10.0.0.2", "eth0", false))));
        assert!(d.routes.contains(&route(
            "192.168.2.0/26",
            via("192.168.2.1", "vxlan.calico", true)
        )));
    }

    #[test]
    fn ipip_routes_via_the_underlay_address_onlink() {
        let d = fleet("Never", "Always").desired("h3", &eth0());
        assert_eq!(d.ipip.as_ref().unwrap().mtu, 1480);
        assert_eq!(
            d.ipip.as_ref().unwrap().address,
            Some("192.168.2.2".parse().unwrap())
        );
        assert!(d
            .routes
            .contains(&route("192.168.0.0/26", via("10.0.0.1", "tunl0", true))));
        assert!(d
            .routes
            .contains(&route("192.168.2.0/26", RouteKind::Blackhole)));
    }

    #[test]
    fn borrowed_addresses_get_host_routes() {
        let mut v = fleet("Always", "Never");
        // h1's workload holds an address of h2's block.
        v.apply(
            Watched::Workloads,
            "/w/1",
            Some(&wep("h1", "192.168.1.9/32")),
        )
        .unwrap();
        // A workload in its own host's block needs nothing more.
        v.apply(
            Watched::Workloads,
            "/w/2",
            Some(&wep("h2", "192.168.1.10/32")),
        )
        .unwrap();
        let on_h2 = v.desired("h2", &eth0());
        assert!(on_h2.routes.contains(&route(
            "192.168.1.9/32",
            via("192.168.0.1", "vxlan.calico", true)
        )));
        assert!(!on_h2
            .routes
            .iter()
            .any(|r| r.dest.to_string() == "192.168.1.10/32"));
        let on_h3 = v.desired("h3", &eth0());
        assert!(on_h3.routes.contains(&route(
            "192.168.1.9/32",
            via("192.168.0.1", "vxlan.calico", true)
        )));
        // h1 itself routes it by its own veth, not by us.
        let on_h1 = v.desired("h1", &eth0());
        assert!(!on_h1
            .routes
            .iter()
            .any(|r| r.dest.to_string() == "192.168.1.9/32"));
        v.apply(Watched::Workloads, "/w/1", None).unwrap();
        assert!(!v
            .desired("h3", &eth0())
            .routes
            .iter()
            .any(|r| r.dest.prefix_len() == 32));
    }

    #[test]
    fn deletions_and_bad_values_remove_routes() {
        let mut v = fleet("Never", "Never");
        v.apply(Watched::Blocks, "/b/1", None).unwrap();
        assert!(!v
            .desired("h1", &eth0())
            .routes
            .iter()
            .any(|r| r.dest.to_string() == "192.168.1.0/26"));
        assert!(v.apply(Watched::Blocks, "/b/0", Some(b"{")).is_err());
        assert!(v.desired("h1", &eth0()).routes.is_empty());
        v.apply(Watched::Nodes, "/n/h2", None).unwrap();
        assert!(v.node("h2").is_none());
    }

    #[test]
    fn vxlan_waits_for_this_hosts_tunnel_address() {
        let mut v = fleet("Always", "Never");
        v.apply(
            Watched::Nodes,
            "/n/h1",
            Some(&node("h1", "10.0.0.1/24", "", "")),
        )
        .unwrap();
        let d = v.desired("h1", &eth0());
        assert!(d.vxlan_v4.is_none());
        assert!(!d
            .routes
            .iter()
            .any(|r| matches!(r.kind, RouteKind::Via { .. })));
        assert!(d
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::NoHostTunnelAddress && p.subject == "vxlan.calico"));
        assert!(d
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::NoVxlanDevice && p.subject == "192.168.1.0/26 on h2"));
    }

    #[test]
    fn ipv6_pools_use_their_own_vxlan_device() {
        let mut v = ClusterView::default();
        for (n, a, t) in [
            ("h1", "fd00::1/64", "fd10::1"),
            ("h2", "fd00::2/64", "fd10:0:0:1::1"),
        ] {
            let node = serde_json::to_vec(&json!({
                "kind": "Node", "apiVersion": "projectcalico.org/v3",
                "metadata": {"name": n},
                "spec": {"bgp": {"ipv6Address": a}, "ipv6VXLANTunnelAddr": t}
            }))
            .unwrap();
            v.apply(Watched::Nodes, &format!("/n/{n}"), Some(&node))
                .unwrap();
        }
        // IP-in-IP on an IPv6 pool means nothing (Calico refuses it).
        v.apply(
            Watched::Pools,
            "/p/6",
            Some(&pool("fd10::/48", "Always", "Always")),
        )
        .unwrap();
        v.apply(
            Watched::Blocks,
            "/b/6",
            Some(&block("fd10:0:0:1::/122", Some("h2"))),
        )
        .unwrap();
        let under = Underlay {
            v4: None,
            v6: Some(Link {
                name: "eth0".into(),
                mtu: 1500,
            }),
        };
        let d = v.desired("h1", &under);
        assert!(d.ipip.is_none() && d.vxlan_v4.is_none());
        let plan = d.vxlan_v6.as_ref().unwrap();
        assert_eq!(plan.device.name, "vxlan-v6.calico");
        assert_eq!(plan.device.mtu, 1430);
        assert_eq!(plan.device.mac, vxlan_mac("h1", true));
        assert!(plan
            .fdb
            .contains(&(vxlan_mac("h2", true), "fd00::2".parse().unwrap())));
        assert!(d.routes.contains(&route(
            "fd10:0:0:1::/122",
            via("fd10:0:0:1::1", "vxlan-v6.calico", true)
        )));
    }
}
