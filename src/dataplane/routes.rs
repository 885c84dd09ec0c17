//! The kernel side of routes between hosts, as Felix programs them in its non-BGP modes.
//!
//! - Our routes: protocol [`ROUTE_PROTOCOL`] in the main table, both families; a blackhole
//!   for each of this host's blocks and `<block> via <gateway> dev <dev> [onlink]` for the
//!   others' ([`Netlink::list_owned_routes`], [`Netlink::replace_owned_route`],
//!   [`Netlink::delete_owned_route`]).
//! - The VXLAN device `vxlan.calico` / `vxlan-v6.calico` ([`Netlink::ensure_vxlan_device`])
//!   with one permanent neighbour ([`Netlink::replace_neighbour`]) and one permanent FDB
//!   entry ([`Netlink::replace_fdb`]) per remote VTEP, and the MAC Felix derives for a node
//!   ([`vxlan_mac`]).
//! - The IP-in-IP device `tunl0` ([`Netlink::ensure_ipip_device`]).
//!
//! Everything runs on the one rtnetlink socket of [`Netlink`]; every failure is an
//! [`Error::Kernel`] (with its errno) or carries one as its root.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkIpIp, LinkMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use sha1::{Digest, Sha1};
use tracing::{debug, info, warn};

use super::netlink::{
    address_of, family_of, ignore_not_found, is_link_local, kernel_error, route_dest, route_oif,
    route_table,
};
use super::{format_mac, validate_ifname, Netlink};
use crate::error::{Error, Result};

/// The route protocol (`proto 81`) that marks a route as ours.
///
/// Never Felix's 80 (its routes are never taken for ours, nor ours for its), never 3/4
/// (boot/static: what `ip route add` and administrators write).
pub const ROUTE_PROTOCOL: u8 = 81;
/// Felix's IPv4 VXLAN device.
pub const VXLAN_DEVICE: &str = "vxlan.calico";
/// Felix's IPv6 VXLAN device.
pub const VXLAN_V6_DEVICE: &str = "vxlan-v6.calico";
/// The kernel's IP-in-IP fallback device, which Felix uses.
pub const IPIP_DEVICE: &str = "tunl0";
/// Felix's default VXLAN VNI.
pub const VXLAN_VNI: u32 = 4096;
/// Felix's default VXLAN UDP port (the IANA one).
pub const VXLAN_PORT: u16 = 4789;
/// What VXLAN over IPv4 takes off the underlay MTU (Felix: MTU − 50).
pub const VXLAN_OVERHEAD: u32 = 50;
/// What VXLAN over IPv6 takes off the underlay MTU (Felix: MTU − 70).
pub const VXLAN_V6_OVERHEAD: u32 = 70;
/// What IP-in-IP takes off the underlay MTU (Felix: MTU − 20).
pub const IPIP_OVERHEAD: u32 = 20;

/// The loopback's ifindex, the same in every namespace (the kernel registers it first).
const LOOPBACK_IFINDEX: u32 = 1;
/// How many find / delete / create steps [`Netlink::ensure_vxlan_device`] takes at most.
const ENSURE_ROUNDS: usize = 5;
/// `NUD_PERMANENT`: the only neighbour state we write and the only one we list.
const NUD_PERMANENT: u16 = 0x80;

/// One route of ours, in the main table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnedRoute {
    /// Destination prefix, without host bits (`10.65.1.0/26`).
    pub dest: IpNet,
    /// What the route does with it.
    pub kind: RouteKind,
}

/// What one of our routes does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    /// `blackhole <dest>`: this host's own blocks.
    Blackhole,
    /// `<dest> via <gateway> dev <dev>`, with `onlink` when `onlink`.
    Via {
        /// Next hop, of the destination's family.
        gateway: IpAddr,
        /// Output device.
        dev: String,
        /// The gateway is on the device even though no prefix of the device covers it
        /// (a tunnel's remote end).
        onlink: bool,
    },
}

impl OwnedRoute {
    /// `blackhole <dest>`.
    pub fn blackhole(dest: IpNet) -> Self {
        Self {
            dest,
            kind: RouteKind::Blackhole,
        }
    }

    /// `<dest> via <gateway> dev <dev> [onlink]`.
    pub fn via(dest: IpNet, gateway: IpAddr, dev: impl Into<String>, onlink: bool) -> Self {
        Self {
            dest,
            kind: RouteKind::Via {
                gateway,
                dev: dev.into(),
                onlink,
            },
        }
    }
}

/// As `ip route` writes it: `blackhole 10.65.0.0/26`, `10.65.1.0/26 via 10.65.1.1 dev
/// vxlan.calico onlink`.
impl fmt::Display for OwnedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            RouteKind::Blackhole => write!(f, "blackhole {}", self.dest),
            RouteKind::Via {
                gateway,
                dev,
                onlink,
            } => {
                write!(f, "{} via {gateway} dev {dev}", self.dest)?;
                if *onlink {
                    f.write_str(" onlink")?;
                }
                Ok(())
            }
        }
    }
}

/// The VXLAN device as Felix configures it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanDevice {
    /// [`VXLAN_DEVICE`] or [`VXLAN_V6_DEVICE`].
    pub name: String,
    /// [`VXLAN_VNI`] unless configured otherwise.
    pub vni: u32,
    /// [`VXLAN_PORT`] unless configured otherwise.
    pub port: u16,
    /// This host's underlay address: the outer source; its family is the device's.
    pub local: IpAddr,
    /// The underlay interface (Felix's VtepDevIndex).
    pub parent: String,
    /// The node's VTEP MAC ([`vxlan_mac`] unless the Node names one).
    pub mac: [u8; 6],
    /// Underlay MTU − [`VXLAN_OVERHEAD`] (IPv6: − [`VXLAN_V6_OVERHEAD`]).
    pub mtu: u32,
    /// The tunnel address, put on the device as `/32` (`/128`); `None` removes any.
    pub address: Option<IpAddr>,
}

/// The IP-in-IP device [`IPIP_DEVICE`] as Felix configures it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpipDevice {
    /// Underlay MTU − [`IPIP_OVERHEAD`].
    pub mtu: u32,
    /// The IPv4 tunnel address, put on the device as `/32`; `None` removes any.
    pub address: Option<IpAddr>,
}

/// Felix's VTEP MAC for a node without `vxlanTunnelMACAddr` (`vxlanTunnelMACAddrV6`):
/// `66` (ASCII `f`: unicast, locally administered) then the first five bytes of
/// SHA-1(nodename), or of SHA-1(nodename + "-v6") for IPv6.
pub fn vxlan_mac(nodename: &str, v6: bool) -> [u8; 6] {
    let mut hasher = Sha1::new();
    hasher.update(nodename.as_bytes());
    if v6 {
        hasher.update(b"-v6");
    }
    let sha = hasher.finalize();
    [b'f', sha[0], sha[1], sha[2], sha[3], sha[4]]
}

impl Netlink {
    /// Every route of ours (protocol [`ROUTE_PROTOCOL`]) in the main table, both families,
    /// sorted.
    ///
    /// A route of ours that is neither a blackhole nor a single via-gateway route (no other
    /// program should write protocol 81) is logged and left out.
    pub async fn list_owned_routes(&self) -> Result<Vec<OwnedRoute>> {
        let mut messages = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut filter = RouteMessage::default();
            filter.header.address_family = family;
            // Strict checking (see Netlink::new) makes the kernel filter the dump by table
            // and protocol itself; we filter again below in case it did not.
            filter.header.table = RouteHeader::RT_TABLE_MAIN;
            filter.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
            let found: Vec<RouteMessage> = self
                .handle
                .route()
                .get(filter)
                .execute()
                .try_collect()
                .await
                .map_err(|e| kernel_error("list routes of protocol 81".to_string(), e))?;
            messages.extend(found.into_iter().filter(|m| {
                u8::from(m.header.protocol) == ROUTE_PROTOCOL
                    && route_table(m) == u32::from(RouteHeader::RT_TABLE_MAIN)
            }));
        }
        // Routes name their device by index; ours are compared by name.
        let names: HashMap<u32, String> = if messages.iter().any(|m| route_oif(m).is_some()) {
            self.list_links().await?.into_iter().collect()
        } else {
            HashMap::new()
        };
        let mut routes = Vec::with_capacity(messages.len());
        for message in &messages {
            match owned_route_of(message, &names) {
                Some(route) => routes.push(route),
                None => warn!(
                    route = ?message,
                    "route of protocol 81 that is neither a blackhole nor via a gateway; left alone"
                ),
            }
        }
        routes.sort();
        routes.dedup();
        Ok(routes)
    }

    /// Adds `route` with protocol [`ROUTE_PROTOCOL`], or replaces (NLM_F_REPLACE) the route
    /// the kernel has for the same destination.
    pub async fn replace_owned_route(&self, route: &OwnedRoute) -> Result<()> {
        let op = format!("replace route {route}");
        let oif = match &route.kind {
            RouteKind::Via { dev, .. } => {
                Some(self.link_index(dev).await.map_err(|e| e.context(&op))?)
            }
            RouteKind::Blackhole => None,
        };
        let message = route_message(route, oif, &op)?;
        debug!(%route, "replace route");
        // NLM_F_REPLACE swaps the route with the same destination, TOS and metric in one
        // step (a new gateway or kind never leaves a gap), whatever its protocol, as
        // Felix's RouteReplace does; no metric is set, so IPv4 gets 0 and IPv6 1024, as
        // every earlier replace did.
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|e| kernel_error(op, e))
    }

    /// Deletes exactly this route of ours (protocol, kind, gateway and device must match);
    /// absent is success, and so is a missing device (its routes went with it).
    ///
    /// A route of another protocol on the same destination is never deleted.
    pub async fn delete_owned_route(&self, route: &OwnedRoute) -> Result<()> {
        let op = format!("delete route {route}");
        let oif = match &route.kind {
            RouteKind::Via { dev, .. } => match self.link_index(dev).await {
                Ok(index) => Some(index),
                // Deleting a device deletes every route through it.
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e.context(op)),
            },
            RouteKind::Blackhole => None,
        };
        let message = delete_message(route, oif, &op)?;
        debug!(%route, "delete route");
        // ESRCH (no such route) is the kernel's "absent".
        ignore_not_found(self.handle.route().del(message).execute().await, op)
    }

    /// Creates the VXLAN device or fixes it in place; returns its ifindex.
    ///
    /// A device of that name that is not a VXLAN device, or whose VNI, port, parent, local
    /// address, group, l2miss, GBP or flow-based mode differ, cannot be changed in place:
    /// it is deleted and created again (its neighbours, FDB entries and routes go with it),
    /// as Felix does. MTU, MAC and learning are fixed in place; then the address (a new one
    /// keeps the routes and neighbours: see `ensure_tunnel_address`), then up.
    ///
    /// Whenever the device was recreated or down, the kernel has dropped its neighbour
    /// entries and the routes through it (a device going down takes them, permanent ones
    /// included; permanent FDB entries stay): the caller programs them again after every
    /// ensure, as a full resync does.
    pub async fn ensure_vxlan_device(&self, dev: &VxlanDevice) -> Result<u32> {
        check_vxlan_device(dev)?;
        let op = format!("ensure vxlan device {}", dev.name);
        let parent = self
            .link_index(&dev.parent)
            .await
            .map_err(|e| e.context(&op))?;
        let mut link = None;
        for _ in 0..ENSURE_ROUNDS {
            match self.find_link(&dev.name).await? {
                Some(found) => match vxlan_incompatibility(&found, dev, parent) {
                    None => {
                        link = Some(found);
                        break;
                    }
                    Some(reason) => {
                        warn!(
                            device = %dev.name,
                            %reason,
                            "vxlan device exists with an incompatible configuration; recreating it"
                        );
                        self.delete_link(&dev.name).await?;
                    }
                },
                None => self.create_vxlan(dev, parent).await?,
            }
        }
        let Some(link) = link else {
            return Err(Error::msg(format!(
                "{op}: it keeps changing under us (recreated {ENSURE_ROUNDS} times)"
            )));
        };
        let index = link.header.index;
        let mut up = link.header.flags.contains(LinkFlags::Up);

        if vxlan_info(&link)
            .iter()
            .any(|i| matches!(i, InfoVxlan::Learning(true)))
        {
            info!(device = %dev.name, "turning learning off on the vxlan device");
            // RTM_SETLINK ignores IFLA_INFO_DATA: only RTM_NEWLINK on an existing device
            // (no NLM_F_CREATE/EXCL) reaches the driver's changelink.
            let message = LinkMessageBuilder::<LinkVxlan>::new(&dev.name)
                .index(index)
                .learning(false)
                .build();
            self.handle
                .link()
                .add(message)
                .set_flags(NLM_F_REQUEST | NLM_F_ACK)
                .execute()
                .await
                .map_err(|e| kernel_error(format!("turn learning off on {}", dev.name), e))?;
        }
        if link_mac(&link) != Some(dev.mac) {
            info!(device = %dev.name, mac = %format_mac(dev.mac), "setting the vxlan device's mac");
            match self.set_mac_of(index, &dev.name, dev.mac).await {
                Ok(()) => {}
                Err(e)
                    if up
                        && matches!(
                            e,
                            Error::Kernel {
                                errno: Some(libc::EBUSY),
                                ..
                            }
                        ) =>
                {
                    // A kernel without live MAC changes for VXLAN refuses one while the
                    // device is up (EBUSY): take it down for the change (up again below;
                    // going down drops its routes and neighbours: see the doc).
                    self.set_link(
                        LinkUnspec::new_with_index(index).down().build(),
                        format!("set link {} down", dev.name),
                    )
                    .await?;
                    up = false;
                    self.set_mac_of(index, &dev.name, dev.mac).await?;
                }
                Err(e) => return Err(e),
            }
        }
        self.ensure_mtu(&link, &dev.name, dev.mtu).await?;
        self.ensure_tunnel_address(index, &dev.name, family_of(dev.local), dev.address)
            .await?;
        if !up {
            self.set_link(
                LinkUnspec::new_with_index(index).up().build(),
                format!("set link {} up", dev.name),
            )
            .await?;
        }
        Ok(index)
    }

    /// Makes sure `tunl0` exists, has `dev.mtu` and the tunnel address, and is up; returns
    /// its ifindex.
    ///
    /// `tunl0` is the ipip module's fallback device: [`Netlink::delete_link`] cannot remove
    /// it (the kernel ignores the request), clear its address with `address: None` instead.
    pub async fn ensure_ipip_device(&self, dev: &IpipDevice) -> Result<u32> {
        let op = format!("ensure ipip device {IPIP_DEVICE}");
        if let Some(IpAddr::V6(a)) = dev.address {
            return Err(Error::invalid(format!(
                "{op}: tunnel address {a} is not IPv4"
            )));
        }
        let link = match self.find_link(IPIP_DEVICE).await? {
            Some(link) => link,
            None => {
                self.create_ipip().await?;
                self.get_link(IPIP_DEVICE).await?
            }
        };
        if link_kind(&link) != Some(&InfoKind::IpIp) {
            return Err(Error::msg(format!(
                "{op}: {IPIP_DEVICE} exists and is not an ipip device (kind {:?})",
                link_kind(&link)
            )));
        }
        let index = link.header.index;
        self.ensure_mtu(&link, IPIP_DEVICE, dev.mtu).await?;
        self.ensure_tunnel_address(index, IPIP_DEVICE, AddressFamily::Inet, dev.address)
            .await?;
        if !link.header.flags.contains(LinkFlags::Up) {
            self.set_link(
                LinkUnspec::new_with_index(index).up().build(),
                format!("set link {IPIP_DEVICE} up"),
            )
            .await?;
        }
        Ok(index)
    }

    /// Adds or replaces the permanent neighbour (ARP/NDP) entry `ip lladdr mac` on `dev`.
    pub async fn replace_neighbour(&self, dev: &str, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        let op = format!(
            "replace neighbour {ip} lladdr {} dev {dev}",
            format_mac(mac)
        );
        let index = self.link_index(dev).await.map_err(|e| e.context(&op))?;
        debug!(dev, %ip, mac = %format_mac(mac), "replace neighbour");
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            // Permanent: never aged out nor probed (nobody answers ARP/NDP across the
            // tunnel), as Felix writes it.
            .state(NeighbourState::Permanent)
            .kind(RouteType::Unicast)
            .replace()
            .execute()
            .await
            .map_err(|e| kernel_error(op, e))
    }

    /// Deletes the neighbour entry for `ip` on `dev`; absent (or no device) is success.
    pub async fn delete_neighbour(&self, dev: &str, ip: IpAddr) -> Result<()> {
        let op = format!("delete neighbour {ip} dev {dev}");
        let Some(index) = self.index_if_present(dev, &op).await? else {
            // The device's neighbours went with it.
            return Ok(());
        };
        let mut message = NeighbourMessage::default();
        message.header.family = family_of(ip);
        message.header.ifindex = index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(ip.into()));
        debug!(dev, %ip, "delete neighbour");
        ignore_not_found(self.handle.neighbours().del(message).execute().await, op)
    }

    /// The permanent neighbour entries on `dev` (both families), as `(ip, mac)`, sorted.
    pub async fn list_neighbours(&self, dev: &str) -> Result<Vec<(IpAddr, [u8; 6])>> {
        let op = format!("list neighbours of {dev}");
        let index = self.link_index(dev).await.map_err(|e| e.context(&op))?;
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for message in self.dump_neighbours(family, index, &op).await? {
                if let (Some(ip), Some(mac)) = (neighbour_ip(&message), neighbour_mac(&message)) {
                    out.push((ip, mac));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Adds or replaces the permanent FDB entry `mac dst remote self` on `dev`: frames for
    /// `mac` go to the VTEP at `remote` (the remote host's underlay address).
    pub async fn replace_fdb(&self, dev: &str, mac: [u8; 6], remote: IpAddr) -> Result<()> {
        let op = format!("replace fdb {} dev {dev} dst {remote}", format_mac(mac));
        let index = self.link_index(dev).await.map_err(|e| e.context(&op))?;
        debug!(dev, mac = %format_mac(mac), %remote, "replace fdb");
        self.handle
            .neighbours()
            .add_bridge(index, &mac)
            .destination(remote)
            .state(NeighbourState::Permanent)
            // NTF_SELF: the entry goes into the VXLAN device's own FDB, not into a bridge
            // master's; with NLM_F_REPLACE the kernel swaps the remote of an existing entry.
            .flags(NeighbourFlags::Own)
            .replace()
            .execute()
            .await
            .map_err(|e| kernel_error(op, e))
    }

    /// Deletes the FDB entry `mac dst remote` from `dev`; absent (also: `mac` present with
    /// another remote), or no device, is success.
    pub async fn delete_fdb(&self, dev: &str, mac: [u8; 6], remote: IpAddr) -> Result<()> {
        let op = format!("delete fdb {} dev {dev} dst {remote}", format_mac(mac));
        let Some(index) = self.index_if_present(dev, &op).await? else {
            // The device's FDB went with it.
            return Ok(());
        };
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = index;
        // Without NTF_SELF the kernel looks for a bridge master and refuses (EINVAL).
        message.header.flags = NeighbourFlags::Own;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        // With NDA_DST the VXLAN driver removes only that remote (ENOENT if it has another).
        message
            .attributes
            .push(NeighbourAttribute::Destination(remote.into()));
        debug!(dev, mac = %format_mac(mac), %remote, "delete fdb");
        ignore_not_found(self.handle.neighbours().del(message).execute().await, op)
    }

    /// The permanent FDB entries with a remote on `dev`, as `(mac, remote)`, sorted.
    pub async fn list_fdb(&self, dev: &str) -> Result<Vec<([u8; 6], IpAddr)>> {
        let op = format!("list fdb of {dev}");
        let index = self.link_index(dev).await.map_err(|e| e.context(&op))?;
        let mut out = Vec::new();
        for message in self
            .dump_neighbours(AddressFamily::Bridge, index, &op)
            .await?
        {
            if let (Some(mac), Some(remote)) = (neighbour_mac(&message), neighbour_ip(&message)) {
                out.push((mac, remote));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The permanent entries of one neighbour family (AF_BRIDGE: the FDB) on one device.
    async fn dump_neighbours(
        &self,
        family: AddressFamily,
        index: u32,
        op: &str,
    ) -> Result<Vec<NeighbourMessage>> {
        let mut request = self.handle.neighbours().get().set_address_family(family);
        // Strict checking wants the device as NDA_IFINDEX (a neighbour dump refuses a
        // header ifindex); the FDB dump takes it too.
        request
            .message_mut()
            .attributes
            .push(NeighbourAttribute::IfIndex(index));
        let messages: Vec<NeighbourMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel_error(op.to_string(), e))?;
        Ok(messages
            .into_iter()
            // The kernel filtered by device; filter again in case it did not.
            .filter(|m| m.header.ifindex == index && m.header.family == family)
            .filter(|m| u16::from(m.header.state) & NUD_PERMANENT != 0)
            .collect())
    }

    /// Creates `dev` (down), or finds that its name appeared meanwhile (then the caller
    /// looks at it again).
    async fn create_vxlan(&self, dev: &VxlanDevice, parent: u32) -> Result<()> {
        let op = format!("create vxlan device {}", dev.name);
        info!(
            device = %dev.name,
            vni = dev.vni,
            port = dev.port,
            local = %dev.local,
            parent = %dev.parent,
            mtu = dev.mtu,
            "create vxlan device"
        );
        let err = match self
            .handle
            .link()
            .add(vxlan_message(dev, parent))
            .execute()
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => kernel_error(op.clone(), e),
        };
        if !err.is_exists() {
            return Err(err);
        }
        if self.find_link(&dev.name).await?.is_some() {
            // Someone created it meanwhile: the caller looks at it like any existing one.
            return Ok(());
        }
        // EEXIST without the name: the kernel allows one VXLAN device per VNI, port and
        // family in a namespace, and another device has them.
        Err(Error::Kernel {
            op,
            errno: Some(libc::EEXIST),
            msg: format!(
                "another vxlan device in this namespace already uses VNI {} on port {}",
                dev.vni, dev.port
            ),
        })
    }

    /// Creates `tunl0`; already there is success.
    async fn create_ipip(&self) -> Result<()> {
        let op = format!("create ipip device {IPIP_DEVICE}");
        info!(device = IPIP_DEVICE, "create ipip device");
        match self
            .handle
            .link()
            .add(LinkIpIp::new(IPIP_DEVICE).build())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = kernel_error(op, e);
                if err.is_exists() {
                    // Asking for an ipip link loads the ipip module, which creates the
                    // fallback tunl0 (in every namespace) before our request is served:
                    // that one then has our (empty) parameters, hence EEXIST.
                    Ok(())
                } else if let Error::Kernel {
                    op,
                    errno: Some(libc::EOPNOTSUPP),
                    msg,
                } = err
                {
                    // The kernel knows no "ipip" link kind: no module to load.
                    Err(Error::Kernel {
                        op,
                        errno: Some(libc::EOPNOTSUPP),
                        msg: format!("{msg} (is the ipip kernel module available?)"),
                    })
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Sets a link's MAC, by index.
    async fn set_mac_of(&self, index: u32, name: &str, mac: [u8; 6]) -> Result<()> {
        self.set_link(
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
            format!("set mac of {name} to {}", format_mac(mac)),
        )
        .await
    }

    /// Sets a link's MTU if it differs.
    async fn ensure_mtu(&self, link: &LinkMessage, name: &str, mtu: u32) -> Result<()> {
        let current = link.attributes.iter().find_map(|attr| match attr {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        });
        if current == Some(mtu) {
            return Ok(());
        }
        info!(device = name, old = ?current, new = mtu, "setting tunnel device mtu");
        self.set_link(
            LinkUnspec::new_with_index(link.header.index)
                .mtu(mtu)
                .build(),
            format!("set mtu of {name} to {mtu}"),
        )
        .await
    }

    /// Leaves exactly `address` (as /32, /128) among the device's addresses of `family`,
    /// as Felix does; the kernel's own IPv6 link-local stays.
    ///
    /// The new address goes on before the old ones come off: removing a device's last IPv4
    /// address makes the kernel flush every IPv4 route through the device and its IPv4
    /// neighbours (onlink and permanent ones too), while removing one of two leaves them
    /// (routes with the old address as their source aside; ours have none). IPv6 flushes
    /// neither way. Checked in a netns on Linux 6.18; see
    /// `tests/netns/routes_kernel.rs::a_new_tunnel_address_keeps_the_routes`.
    async fn ensure_tunnel_address(
        &self,
        index: u32,
        name: &str,
        family: AddressFamily,
        address: Option<IpAddr>,
    ) -> Result<()> {
        let want = address.map(IpNet::from);
        let op = format!("list addresses of {name}");
        let mut request = self.handle.address().get().set_link_index_filter(index);
        request.message_mut().header.family = family;
        request.message_mut().header.index = index;
        let messages: Vec<AddressMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel_error(op, e))?;
        let mut present = false;
        let mut unwanted = Vec::new();
        for message in messages {
            if message.header.index != index || message.header.family != family {
                continue;
            }
            let Some(net) = address_of(&message) else {
                continue;
            };
            if Some(net) == want {
                present = true;
                continue;
            }
            if matches!(net.addr(), IpAddr::V6(a) if is_link_local(&a)) {
                continue;
            }
            unwanted.push((net, message));
        }
        if let (Some(want), false) = (want, present) {
            info!(device = name, address = %want, "adding tunnel address");
            match self.add_address(index, name, want).await {
                Ok(()) => {}
                Err(err) if !err.is_exists() => return Err(err),
                Err(err) => {
                    // IPv6 keys an address by itself alone: the same address with another
                    // prefix length is in the way (EEXIST) and must come off first (IPv6
                    // keeps the routes through the device meanwhile). Without one, someone
                    // added the address since the listing.
                    let in_the_way: Vec<_> = unwanted
                        .iter()
                        .filter(|(net, _)| net.addr() == want.addr())
                        .cloned()
                        .collect();
                    if !in_the_way.is_empty() {
                        debug!(device = name, address = %want, error = %err, "the same address with another prefix is in the way");
                        for (net, message) in in_the_way {
                            self.delete_address(name, net, message).await?;
                        }
                        unwanted.retain(|(net, _)| net.addr() != want.addr());
                        if let Err(err) = self.add_address(index, name, want).await {
                            if !err.is_exists() {
                                return Err(err);
                            }
                        }
                    }
                }
            }
        }
        for (net, message) in unwanted {
            self.delete_address(name, net, message).await?;
        }
        Ok(())
    }

    /// Adds `net` to the device `index` (`name` for messages).
    async fn add_address(&self, index: u32, name: &str, net: IpNet) -> Result<()> {
        self.handle
            .address()
            .add(index, net.addr(), net.prefix_len())
            .execute()
            .await
            .map_err(|e| kernel_error(format!("add address {net} to {name}"), e))
    }

    /// Deletes the address `message` (`net`) from `name`; absent is success.
    async fn delete_address(&self, name: &str, net: IpNet, message: AddressMessage) -> Result<()> {
        info!(device = name, address = %net, "removing unwanted address from tunnel device");
        ignore_not_found(
            self.handle.address().del(message).execute().await,
            format!("delete address {net} from {name}"),
        )
    }

    /// A link's message, `None` if there is no link of that name.
    async fn find_link(&self, name: &str) -> Result<Option<LinkMessage>> {
        match self.get_link(name).await {
            Ok(link) => Ok(Some(link)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A link's index, `None` if there is no link of that name.
    async fn index_if_present(&self, dev: &str, op: &str) -> Result<Option<u32>> {
        match self.link_index(dev).await {
            Ok(index) => Ok(Some(index)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.context(op)),
        }
    }
}

/// Rejects what the kernel would refuse with a less helpful error.
fn check_route(route: &OwnedRoute, op: &str) -> Result<()> {
    if route.dest.trunc() != route.dest {
        return Err(Error::invalid(format!(
            "{op}: {} has host bits set (the prefix is {})",
            route.dest,
            route.dest.trunc()
        )));
    }
    if let RouteKind::Via { gateway, dev, .. } = &route.kind {
        validate_ifname(dev)?;
        if gateway.is_ipv4() != route.dest.addr().is_ipv4() {
            return Err(Error::invalid(format!(
                "{op}: gateway {gateway} is not of the destination's family"
            )));
        }
    }
    Ok(())
}

/// The RTM_NEWROUTE message for `route` (`oif`: the index of a via route's device).
fn route_message(route: &OwnedRoute, oif: Option<u32>, op: &str) -> Result<RouteMessage> {
    check_route(route, op)?;
    // Main table, scope universe, as the builder starts; ours by protocol.
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.dest.addr(), route.dest.prefix_len())
        .map_err(|e| Error::invalid(format!("{op}: {e}")))?
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL));
    match &route.kind {
        RouteKind::Blackhole => builder = builder.kind(RouteType::BlackHole),
        RouteKind::Via {
            gateway, onlink, ..
        } => {
            builder = builder
                .gateway(*gateway)
                .map_err(|e| Error::invalid(format!("{op}: {e}")))?;
            if let Some(oif) = oif {
                builder = builder.output_interface(oif);
            }
            if *onlink {
                // RTNH_F_ONLINK: the kernel takes the gateway as on the device without
                // looking for a prefix that covers it (a tunnel's far end).
                builder = builder.onlink();
            }
        }
    }
    Ok(builder.build())
}

/// The RTM_DELROUTE message that matches exactly `route` and nothing of another protocol.
fn delete_message(route: &OwnedRoute, oif: Option<u32>, op: &str) -> Result<RouteMessage> {
    let mut message = route_message(route, oif, op)?;
    // In a delete, RT_SCOPE_NOWHERE is the wildcard; protocol 81, the type (IPv4),
    // gateway and device must match, so a route of another program is never hit.
    message.header.scope = RouteScope::NoWhere;
    message.header.flags = RouteFlags::empty();
    if route.kind == RouteKind::Blackhole && route.dest.addr().is_ipv6() {
        // IPv6 ignores the type in a delete; a blackhole's device is the loopback, so
        // naming it keeps a via route of ours on the same prefix out of the match.
        message
            .attributes
            .push(RouteAttribute::Oif(LOOPBACK_IFINDEX));
    }
    Ok(message)
}

/// One dumped route as ours, `None` when it is neither a blackhole nor a single
/// via-gateway route on a known device.
fn owned_route_of(message: &RouteMessage, names: &HashMap<u32, String>) -> Option<OwnedRoute> {
    let dest = route_dest(message)?;
    match message.header.kind {
        RouteType::BlackHole => Some(OwnedRoute::blackhole(dest)),
        RouteType::Unicast => {
            let gateway = message.attributes.iter().find_map(|attr| match attr {
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                RouteAttribute::Gateway(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                _ => None,
            })?;
            let dev = names.get(&route_oif(message)?)?;
            // The kernel reports RTNH_F_ONLINK of a single-path route in rtm_flags.
            let onlink = message.header.flags.contains(RouteFlags::Onlink);
            Some(OwnedRoute::via(dest, gateway, dev.clone(), onlink))
        }
        _ => None,
    }
}

fn check_vxlan_device(dev: &VxlanDevice) -> Result<()> {
    validate_ifname(&dev.name)?;
    validate_ifname(&dev.parent)?;
    let op = format!("ensure vxlan device {}", dev.name);
    if dev.mac[0] & 0x01 != 0 || dev.mac == [0; 6] {
        return Err(Error::invalid(format!(
            "{op}: mac {} is not a unicast address",
            format_mac(dev.mac)
        )));
    }
    if let Some(address) = dev.address {
        if address.is_ipv4() != dev.local.is_ipv4() {
            return Err(Error::invalid(format!(
                "{op}: tunnel address {address} is not of the family of local {}",
                dev.local
            )));
        }
    }
    if dev.mtu == 0 {
        return Err(Error::invalid(format!("{op}: mtu 0")));
    }
    Ok(())
}

/// The RTM_NEWLINK message that creates the VXLAN device (down), with what Felix sets.
fn vxlan_message(dev: &VxlanDevice, parent: u32) -> LinkMessage {
    let builder = LinkVxlan::new(&dev.name, dev.vni)
        .dev(parent)
        .port(dev.port)
        // Learning off: remote MACs come only from our permanent FDB entries.
        .learning(false)
        .mtu(dev.mtu)
        .address(dev.mac.to_vec());
    match dev.local {
        IpAddr::V4(a) => builder.local(a),
        IpAddr::V6(a) => builder.local6(a),
    }
    .build()
}

/// Why an existing link cannot serve as `dev` without being recreated, Felix's
/// `vxlanLinksIncompat` (the MAC aside: we set it in place); `None` when it can.
fn vxlan_incompatibility(link: &LinkMessage, dev: &VxlanDevice, parent: u32) -> Option<String> {
    if link_kind(link) != Some(&InfoKind::Vxlan) {
        return Some(format!("link type {:?}, not vxlan", link_kind(link)));
    }
    let info = vxlan_info(link);
    if info
        .iter()
        .any(|i| matches!(i, InfoVxlan::CollectMetadata(true)))
    {
        return Some("flow-based (external) device".into());
    }
    let vni = info.iter().find_map(|i| match i {
        InfoVxlan::Id(id) => Some(*id),
        _ => None,
    });
    if vni != Some(dev.vni) {
        return Some(format!("vni {vni:?}, want {}", dev.vni));
    }
    let link_index = info.iter().find_map(|i| match i {
        InfoVxlan::Link(index) => Some(*index),
        _ => None,
    });
    if link_index != Some(parent) {
        return Some(format!("parent ifindex {link_index:?}, want {parent}"));
    }
    let local = info.iter().find_map(|i| match i {
        InfoVxlan::Local(a) => Some(IpAddr::V4(*a)),
        InfoVxlan::Local6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    if local != Some(dev.local) {
        return Some(format!("local address {local:?}, want {}", dev.local));
    }
    let port = info.iter().find_map(|i| match i {
        InfoVxlan::Port(port) => Some(*port),
        _ => None,
    });
    if port != Some(dev.port) {
        return Some(format!("port {port:?}, want {}", dev.port));
    }
    if let Some(group) = info.iter().find_map(|i| match i {
        InfoVxlan::Group(a) if !a.is_unspecified() => Some(a.to_string()),
        InfoVxlan::Group6(a) if !a.is_unspecified() => Some(a.to_string()),
        _ => None,
    }) {
        return Some(format!("group/remote {group} set"));
    }
    if info.iter().any(|i| matches!(i, InfoVxlan::L2Miss(true))) {
        return Some("l2miss on".into());
    }
    if info.iter().any(|i| matches!(i, InfoVxlan::Gbp)) {
        return Some("gbp on".into());
    }
    None
}

fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link_infos(link).iter().find_map(|info| match info {
        LinkInfo::Kind(kind) => Some(kind),
        _ => None,
    })
}

fn vxlan_info(link: &LinkMessage) -> &[InfoVxlan] {
    link_infos(link)
        .iter()
        .find_map(|info| match info {
            LinkInfo::Data(InfoData::Vxlan(data)) => Some(data.as_slice()),
            _ => None,
        })
        .unwrap_or_default()
}

fn link_infos(link: &LinkMessage) -> &[LinkInfo] {
    link.attributes
        .iter()
        .find_map(|attr| match attr {
            LinkAttribute::LinkInfo(infos) => Some(infos.as_slice()),
            _ => None,
        })
        .unwrap_or_default()
}

fn link_mac(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
        _ => None,
    })
}

/// NDA_LLADDR as an Ethernet address.
fn neighbour_mac(message: &NeighbourMessage) -> Option<[u8; 6]> {
    message.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::LinkLayerAddress(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
        _ => None,
    })
}

/// NDA_DST: the neighbour's address, or an FDB entry's remote.
fn neighbour_ip(message: &NeighbourMessage) -> Option<IpAddr> {
    message.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        // AF_BRIDGE (FDB) messages carry the remote as raw bytes: 4 for IPv4, 16 for IPv6.
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(bytes.as_slice())
                .ok()
                .map(IpAddr::from),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn device() -> VxlanDevice {
        VxlanDevice {
            name: VXLAN_DEVICE.into(),
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            local: ip("10.99.0.1"),
            parent: "eth0".into(),
            mac: vxlan_mac("node1", false),
            mtu: 1450,
            address: Some(ip("10.65.0.1")),
        }
    }

    #[test]
    fn vxlan_mac_is_f_then_sha1_of_the_nodename() {
        // printf '%s' node1 | sha1sum    -> f937c37e949d9efa20d2958af309235c73ec039a
        assert_eq!(
            vxlan_mac("node1", false),
            [0x66, 0xf9, 0x37, 0xc3, 0x7e, 0x94]
        );
        // printf '%s' node1-v6 | sha1sum -> 0f35f260dff7b80d63e5e181d04ac9f34b41fc12
        assert_eq!(
            vxlan_mac("node1", true),
            [0x66, 0x0f, 0x35, 0xf2, 0x60, 0xdf]
        );
        // Unicast and locally administered, whatever the node.
        for node in ["a", "node-2", "ip-10-0-0-1.ec2.internal"] {
            let mac = vxlan_mac(node, false);
            assert_eq!(mac[0] & 0x03, 0x02, "{node}");
        }
    }

    #[test]
    fn routes_display_like_ip_route() {
        assert_eq!(
            OwnedRoute::blackhole(net("10.65.0.0/26")).to_string(),
            "blackhole 10.65.0.0/26"
        );
        assert_eq!(
            OwnedRoute::via(net("10.65.1.0/26"), ip("10.65.1.1"), VXLAN_DEVICE, true).to_string(),
            "10.65.1.0/26 via 10.65.1.1 dev vxlan.calico onlink"
        );
        assert_eq!(
            OwnedRoute::via(net("fd65::/122"), ip("fd99::2"), "eth0", false).to_string(),
            "fd65::/122 via fd99::2 dev eth0"
        );
    }

    #[test]
    fn blackhole_message_is_ours_in_the_main_table() {
        let m = route_message(&OwnedRoute::blackhole(net("10.65.0.0/26")), None, "add").unwrap();
        assert_eq!(m.header.kind, RouteType::BlackHole);
        assert_eq!(u8::from(m.header.protocol), ROUTE_PROTOCOL);
        assert_eq!(m.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert_eq!(m.header.address_family, AddressFamily::Inet);
        assert_eq!(route_dest(&m), Some(net("10.65.0.0/26")));
        assert_eq!(route_oif(&m), None);
    }

    #[test]
    fn via_message_carries_gateway_device_and_onlink() {
        let route = OwnedRoute::via(net("fd65::40/122"), ip("fd65::41"), VXLAN_V6_DEVICE, true);
        let m = route_message(&route, Some(7), "add").unwrap();
        assert_eq!(m.header.kind, RouteType::Unicast);
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert!(m.header.flags.contains(RouteFlags::Onlink));
        assert_eq!(route_oif(&m), Some(7));
        let plain = OwnedRoute::via(net("10.65.1.0/26"), ip("10.99.0.2"), "eth0", false);
        let m = route_message(&plain, Some(2), "add").unwrap();
        assert!(!m.header.flags.contains(RouteFlags::Onlink));
    }

    #[test]
    fn dumped_routes_read_back_as_written() {
        let names: HashMap<u32, String> = [(7, VXLAN_DEVICE.to_string()), (2, "eth0".into())]
            .into_iter()
            .collect();
        for (route, oif) in [
            (OwnedRoute::blackhole(net("10.65.0.0/26")), None),
            (OwnedRoute::blackhole(net("fd65::/122")), None),
            (
                OwnedRoute::via(net("10.65.1.0/26"), ip("10.65.1.1"), VXLAN_DEVICE, true),
                Some(7),
            ),
            (
                OwnedRoute::via(net("fd65::80/122"), ip("fd99::2"), "eth0", false),
                Some(2),
            ),
        ] {
            let m = route_message(&route, oif, "add").unwrap();
            assert_eq!(owned_route_of(&m, &names), Some(route));
        }
        // A device we cannot name, a route without gateway, another type: not ours to list.
        let route = OwnedRoute::via(net("10.65.1.0/26"), ip("10.65.1.1"), "gone", true);
        assert_eq!(
            owned_route_of(&route_message(&route, Some(99), "add").unwrap(), &names),
            None
        );
        let mut m =
            route_message(&OwnedRoute::blackhole(net("10.65.0.0/26")), None, "add").unwrap();
        m.header.kind = RouteType::Unicast;
        assert_eq!(owned_route_of(&m, &names), None);
        m.header.kind = RouteType::Unreachable;
        assert_eq!(owned_route_of(&m, &names), None);
    }

    #[test]
    fn delete_matches_only_this_route_of_ours() {
        let m = delete_message(&OwnedRoute::blackhole(net("10.65.0.0/26")), None, "del").unwrap();
        assert_eq!(m.header.scope, RouteScope::NoWhere);
        assert_eq!(u8::from(m.header.protocol), ROUTE_PROTOCOL);
        assert_eq!(m.header.kind, RouteType::BlackHole);
        assert_eq!(route_oif(&m), None);
        // IPv6 matches no type in a delete: the loopback device stands for "blackhole".
        let m = delete_message(&OwnedRoute::blackhole(net("fd65::/122")), None, "del").unwrap();
        assert_eq!(route_oif(&m), Some(LOOPBACK_IFINDEX));
        let via = OwnedRoute::via(net("10.65.1.0/26"), ip("10.65.1.1"), VXLAN_DEVICE, true);
        let m = delete_message(&via, Some(7), "del").unwrap();
        assert_eq!(route_oif(&m), Some(7));
        assert!(m.header.flags.is_empty());
    }

    #[test]
    fn malformed_routes_are_invalid() {
        let host_bits = OwnedRoute::blackhole(net("10.65.0.5/26"));
        assert!(route_message(&host_bits, None, "add")
            .unwrap_err()
            .is_invalid());
        let mixed = OwnedRoute::via(net("10.65.1.0/26"), ip("fd99::2"), "eth0", false);
        assert!(route_message(&mixed, Some(2), "add")
            .unwrap_err()
            .is_invalid());
        let bad_dev = OwnedRoute::via(net("10.65.1.0/26"), ip("10.99.0.2"), "no/such", false);
        assert!(route_message(&bad_dev, Some(2), "add")
            .unwrap_err()
            .is_invalid());
    }

    #[test]
    fn vxlan_device_checks() {
        check_vxlan_device(&device()).unwrap();
        let multicast = VxlanDevice {
            mac: [0x01, 0, 0x5e, 0, 0, 1],
            ..device()
        };
        assert!(check_vxlan_device(&multicast).unwrap_err().is_invalid());
        let mixed = VxlanDevice {
            address: Some(ip("fd65::1")),
            ..device()
        };
        assert!(check_vxlan_device(&mixed).unwrap_err().is_invalid());
    }

    #[test]
    fn vxlan_incompatibility_is_felixs() {
        let dev = device();
        // The create message has the attributes a dump of the device would show.
        let same = vxlan_message(&dev, 2);
        assert_eq!(vxlan_incompatibility(&same, &dev, 2), None);
        assert!(vxlan_incompatibility(&same, &dev, 3)
            .unwrap()
            .contains("parent"));
        for (other, what) in [
            (
                VxlanDevice {
                    vni: 4097,
                    ..device()
                },
                "vni",
            ),
            (
                VxlanDevice {
                    port: 8472,
                    ..device()
                },
                "port",
            ),
            (
                VxlanDevice {
                    local: ip("10.99.0.9"),
                    ..device()
                },
                "local",
            ),
        ] {
            let reason = vxlan_incompatibility(&vxlan_message(&other, 2), &dev, 2).unwrap();
            assert!(reason.contains(what), "{reason}");
        }
        // MTU, MAC and learning are fixed in place, not by recreating.
        let fixable = VxlanDevice {
            mtu: 1300,
            mac: [0x02, 0, 0, 0, 0, 1],
            ..device()
        };
        assert_eq!(
            vxlan_incompatibility(&vxlan_message(&fixable, 2), &dev, 2),
            None
        );
        let dummy = LinkMessageBuilder::<rtnetlink::LinkDummy>::new(VXLAN_DEVICE).build();
        assert!(vxlan_incompatibility(&dummy, &dev, 2)
            .unwrap()
            .contains("not vxlan"));
    }

    #[test]
    fn fdb_remotes_parse_from_raw_bytes() {
        let mut m = NeighbourMessage::default();
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Other(
                vec![10, 99, 0, 2],
            )));
        assert_eq!(neighbour_ip(&m), Some(ip("10.99.0.2")));
        let v6: std::net::Ipv6Addr = "fd99::2".parse().unwrap();
        m.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Other(
            v6.octets().to_vec(),
        ))];
        assert_eq!(neighbour_ip(&m), Some(IpAddr::V6(v6)));
        m.attributes = vec![NeighbourAttribute::LinkLayerAddress(vec![
            0x66, 1, 2, 3, 4, 5,
        ])];
        assert_eq!(neighbour_mac(&m), Some([0x66, 1, 2, 3, 4, 5]));
        assert_eq!(neighbour_ip(&m), None);
    }
}
