//! One async function per kernel operation, over a single rtnetlink socket.
//!
//! Every failure comes back as [`Error::Kernel`] with the errno kept, so callers can test
//! [`Error::is_exists`] / [`Error::is_not_found`] instead of matching numbers.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};
use tracing::debug;

use super::{format_mac, validate_ifname};
use crate::error::{Error, Result};

/// How often [`Netlink::ipv6_link_local`] looks for the address.
const LINK_LOCAL_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How many times [`Netlink::ipv6_link_local`] looks before giving up (5 s in all).
const LINK_LOCAL_POLLS: u32 = 100;

/// A route found on a device by [`Netlink::list_routes`] (main table only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix (`0.0.0.0/0` / `::/0` for a default route).
    pub dest: IpNet,
    /// True for `scope link` (the destination is directly on the device).
    pub link_scope: bool,
}

/// A handle on one rtnetlink socket; clone it freely, all clones share the socket.
///
/// The socket belongs to the network namespace of the thread that called [`Netlink::new`]
/// and stays bound to it, whatever thread later uses the handle.
#[derive(Clone, Debug)]
pub struct Netlink {
    pub(super) handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens the socket and spawns its connection task on the current tokio runtime.
    ///
    /// Call it once and reuse the handle; the task ends when the last clone is dropped.
    pub fn new() -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::msg("open netlink socket: no tokio runtime"))?;
        // NETLINK_GET_STRICT_CHK makes the kernel filter route and address dumps by device
        // and table, instead of sending every route on the host for us to sift through.
        let (connection, handle, _) = rtnetlink::new_connection_with_strict_check()
            .map_err(|e| Error::io("open netlink socket", e))?;
        runtime.spawn(connection);
        Ok(Self { handle })
    }

    /// Creates a veth pair `host_name` <-> `peer_name`, both left down in this namespace.
    pub async fn create_veth(
        &self,
        host_name: &str,
        peer_name: &str,
        mtu: Option<u32>,
    ) -> Result<()> {
        validate_ifname(host_name)?;
        validate_ifname(peer_name)?;
        let op = format!("create veth {host_name}");
        debug!(host = host_name, peer = peer_name, ?mtu, "create veth");
        // The kernel applies IFLA_MTU only to the device whose message carries it: the peer
        // would stay at 1500 unless its own nested message names the MTU too.
        let mut peer = LinkUnspec::new_with_name(peer_name);
        let mut host = LinkVeth::new(host_name, peer_name);
        if let Some(mtu) = mtu {
            peer = peer.mtu(mtu);
            host = host.mtu(mtu);
        }
        let message = host
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| kernel_error(op, e))
    }

    /// Sets a link's alias (`ifalias`). The kernel takes one only on an existing link, not
    /// in the message that creates it.
    pub async fn set_alias(&self, name: &str, alias: &str) -> Result<()> {
        validate_ifname(name)?;
        debug!(link = name, alias, "set alias");
        let message = LinkUnspec::new_with_name(name).alias(alias).build();
        self.set_link(message, format!("set alias of {name}")).await
    }

    /// Deletes a link by name; a missing link is success.
    ///
    /// Deleting one end of a veth removes its peer (wherever it is) and every route through it.
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        validate_ifname(name)?;
        debug!(link = name, "delete link");
        let message = LinkUnspec::new_with_name(name).build();
        match self.handle.link().del_with_message(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = kernel_error(format!("delete link {name}"), e);
                if err.is_not_found() {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// True when a link of that name exists in this namespace.
    pub async fn link_exists(&self, name: &str) -> Result<bool> {
        match self.link_index(name).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The ifindex of a link; a missing link is a not-found error.
    pub async fn link_index(&self, name: &str) -> Result<u32> {
        Ok(self.get_link(name).await?.header.index)
    }

    /// Sets a link administratively up.
    pub async fn set_link_up(&self, name: &str) -> Result<()> {
        validate_ifname(name)?;
        debug!(link = name, "set link up");
        let message = LinkUnspec::new_with_name(name).up().build();
        self.set_link(message, format!("set link {name} up")).await
    }

    /// Sets a link administratively down.
    pub async fn set_link_down(&self, name: &str) -> Result<()> {
        validate_ifname(name)?;
        debug!(link = name, "set link down");
        let message = LinkUnspec::new_with_name(name).down().build();
        self.set_link(message, format!("set link {name} down"))
            .await
    }

    /// Sets a link's MAC address.
    pub async fn set_mac(&self, name: &str, mac: [u8; 6]) -> Result<()> {
        validate_ifname(name)?;
        debug!(link = name, mac = %format_mac(mac), "set mac");
        let message = LinkUnspec::new_with_name(name)
            .address(mac.to_vec())
            .build();
        self.set_link(message, format!("set mac of {name} to {}", format_mac(mac)))
            .await
    }

    /// Reads a link's MAC address.
    pub async fn get_mac(&self, name: &str) -> Result<[u8; 6]> {
        let link = self.get_link(name).await?;
        let address = link.attributes.iter().find_map(|attr| match attr {
            LinkAttribute::Address(bytes) => Some(bytes.as_slice()),
            _ => None,
        });
        match address.map(<[u8; 6]>::try_from) {
            Some(Ok(mac)) => Ok(mac),
            Some(Err(_)) => Err(Error::msg(format!(
                "read mac of {name}: not an ethernet address"
            ))),
            None => Err(Error::msg(format!(
                "read mac of {name}: link has no address"
            ))),
        }
    }

    /// Reads a link's MTU.
    pub async fn link_mtu(&self, name: &str) -> Result<u32> {
        let link = self.get_link(name).await?;
        link.attributes
            .iter()
            .find_map(|attr| match attr {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
            .ok_or_else(|| Error::msg(format!("read mtu of {name}: link has none")))
    }

    /// Adds the host route `dest dev <dev> scope link` (dest must be a /32 or /128).
    ///
    /// If the kernel already has a route for `dest`, that is success when it is on `dev`
    /// (Felix may have programmed it first) and an error otherwise.
    pub async fn add_route(&self, dest: IpNet, dev: &str) -> Result<()> {
        let op = format!("add route {dest} dev {dev}");
        check_host_route(dest, &op)?;
        let index = self.link_index(dev).await?;
        debug!(%dest, dev, "add route");
        let message = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dest.addr(), dest.prefix_len())
            .map_err(|e| Error::invalid(format!("{op}: {e}")))?
            .output_interface(index)
            // Scope link: the workload is directly on the veth, no gateway in between.
            .scope(RouteScope::Link)
            // RTPROT_BOOT is what `ip route add` and Calico's CNI plugin write.
            .protocol(RouteProtocol::Boot)
            .build();
        let err = match self.handle.route().add(message).execute().await {
            Ok(()) => return Ok(()),
            Err(e) => kernel_error(op.clone(), e),
        };
        if !err.is_exists() {
            return Err(err);
        }
        // EEXIST means some route for dest is in the main table; Calico's rule: fine if it
        // goes out of this veth, a conflict if it points at another interface.
        if self.list_routes(dev).await?.iter().any(|r| r.dest == dest) {
            debug!(%dest, dev, "route already present on this device");
            return Ok(());
        }
        Err(Error::Kernel {
            op,
            errno: Some(libc::EEXIST),
            msg: format!(
                "route {} already exists for an interface other than {dev}",
                dest.addr()
            ),
        })
    }

    /// Deletes the route for `dest` through `dev`; a missing route or device is success.
    pub async fn del_route(&self, dest: IpNet, dev: &str) -> Result<()> {
        let op = format!("delete route {dest} dev {dev}");
        check_host_route(dest, &op)?;
        let index = match self.link_index(dev).await {
            Ok(index) => index,
            // The route went with the device.
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        debug!(%dest, dev, "delete route");
        let mut message = RouteMessage::default();
        message.header.address_family = family_of(dest.addr());
        message.header.destination_prefix_length = dest.prefix_len();
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.kind = RouteType::Unicast;
        // In a delete, RT_SCOPE_NOWHERE and protocol 0 mean "any": a matching route that
        // Felix added (other protocol or scope) goes too.
        message.header.scope = RouteScope::NoWhere;
        message.header.protocol = RouteProtocol::Unspec;
        message
            .attributes
            .push(RouteAttribute::Destination(dest.addr().into()));
        message.attributes.push(RouteAttribute::Oif(index));
        ignore_not_found(self.handle.route().del(message).execute().await, op)
    }

    /// Lists the IPv4 and IPv6 routes of the main table that go out of `dev`.
    pub async fn list_routes(&self, dev: &str) -> Result<Vec<Route>> {
        let index = self.link_index(dev).await?;
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut filter = RouteMessage::default();
            filter.header.address_family = family;
            filter.header.table = RouteHeader::RT_TABLE_MAIN;
            filter.attributes.push(RouteAttribute::Oif(index));
            let messages: Vec<RouteMessage> = self
                .handle
                .route()
                .get(filter)
                .execute()
                .try_collect()
                .await
                .map_err(|e| kernel_error(format!("list routes of {dev}"), e))?;
            // The kernel already filtered (strict check); filter again in case it did not.
            routes.extend(
                messages
                    .iter()
                    .filter(|m| {
                        route_oif(m) == Some(index)
                            && route_table(m) == u32::from(RouteHeader::RT_TABLE_MAIN)
                    })
                    .filter_map(route_of),
            );
        }
        Ok(routes)
    }

    /// The IPv6 link-local (fe80::/10) address of a link, waiting up to 5 s for it.
    ///
    /// Returns `None` if none shows up (IPv6 disabled, addr_gen_mode none), at once if the
    /// link is administratively down.
    /// Tentative or DAD-failed addresses are not returned: they cannot serve as a gateway.
    pub async fn ipv6_link_local(&self, name: &str) -> Result<Option<Ipv6Addr>> {
        for attempt in 0..LINK_LOCAL_POLLS {
            if attempt > 0 {
                // IPv6 addrconf adds the link-local only once the link has carrier, and the
                // kernel reports carrier through its linkwatch work queue, which can lag link
                // up by up to a second (longer while DAD runs): poll rather than read once.
                tokio::time::sleep(LINK_LOCAL_POLL_INTERVAL).await;
            }
            let (address, up) = self.find_ipv6_link_local(name).await?;
            if address.is_some() || !up {
                // A link that is down will not get one: no point waiting.
                return Ok(address);
            }
        }
        Ok(None)
    }

    /// The usable link-local of a link, if any, and whether the link is up.
    async fn find_ipv6_link_local(&self, name: &str) -> Result<(Option<Ipv6Addr>, bool)> {
        let link = self.get_link(name).await?;
        let index = link.header.index;
        let up = link.header.flags.contains(LinkFlags::Up);
        let mut request = self.handle.address().get().set_link_index_filter(index);
        request.message_mut().header.family = AddressFamily::Inet6;
        request.message_mut().header.index = index;
        let messages: Vec<AddressMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel_error(format!("list addresses of {name}"), e))?;
        Ok((messages.iter().find_map(usable_link_local), up))
    }

    /// The veth links in this namespace whose name starts with `prefix`, with whether each
    /// carries our mark ([`super::VETH_ALIAS`]): only marked ones were made by this plugin.
    pub async fn list_veths_marked(&self, prefix: &str) -> Result<Vec<(String, bool)>> {
        use rtnetlink::packet_route::link::{InfoKind, LinkInfo};
        let mut links = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(|e| kernel_error("list links".to_string(), e))?
        {
            let mut name = None;
            let mut veth = false;
            let mut ours = false;
            for attr in &link.attributes {
                match attr {
                    LinkAttribute::IfName(n) => name = Some(n.clone()),
                    LinkAttribute::IfAlias(a) => ours = a == super::VETH_ALIAS,
                    LinkAttribute::LinkInfo(infos) => {
                        veth = infos
                            .iter()
                            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                    }
                    _ => {}
                }
            }
            if let Some(n) = name.filter(|n| veth && n.starts_with(prefix)) {
                out.push((n, ours));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every link in this namespace as `(index, name)`, in the kernel's order (by index),
    /// which is the order calico-node's address detection walks (backwards).
    pub async fn list_links(&self) -> Result<Vec<(u32, String)>> {
        let mut links = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(|e| kernel_error("list links".to_string(), e))?
        {
            let name = link.attributes.iter().find_map(|attr| match attr {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let Some(name) = name {
                out.push((link.header.index, name));
            }
        }
        Ok(out)
    }

    /// Every address in this namespace, both families, as `(link index, address with its
    /// prefix length)`, in the kernel's order (IPv4 first, each link's in its own order).
    pub async fn list_addresses(&self) -> Result<Vec<(u32, IpNet)>> {
        let mut addresses = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(message) = addresses
            .try_next()
            .await
            .map_err(|e| kernel_error("list addresses".to_string(), e))?
        {
            if let Some(net) = address_of(&message) {
                out.push((message.header.index, net));
            }
        }
        Ok(out)
    }

    pub(super) async fn get_link(&self, name: &str) -> Result<LinkMessage> {
        validate_ifname(name)?;
        let op = format!("find link {name}");
        let found = self
            .handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await
            .map_err(|e| kernel_error(op.clone(), e))?;
        found.ok_or_else(|| errno_error(op, libc::ENODEV))
    }

    pub(super) async fn set_link(&self, message: LinkMessage, op: String) -> Result<()> {
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| kernel_error(op, e))
    }
}

/// Rejects anything but a host prefix: Calico routes each workload address on its own.
fn check_host_route(dest: IpNet, op: &str) -> Result<()> {
    if dest.prefix_len() != dest.max_prefix_len() {
        return Err(Error::invalid(format!(
            "{op}: {dest} is not a host route (/32 or /128)"
        )));
    }
    Ok(())
}

pub(super) fn family_of(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

pub(super) fn route_oif(message: &RouteMessage) -> Option<u32> {
    message.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}

/// The route's table: RTA_TABLE when present (ids above 255), else the header byte.
pub(super) fn route_table(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|attr| match attr {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

fn route_of(message: &RouteMessage) -> Option<Route> {
    Some(Route {
        dest: route_dest(message)?,
        link_scope: message.header.scope == RouteScope::Link,
    })
}

/// A route message's destination prefix.
pub(super) fn route_dest(message: &RouteMessage) -> Option<IpNet> {
    let len = message.header.destination_prefix_length;
    let dest = message.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    // No RTA_DST means the default route of the family.
    let dest = dest.unwrap_or(match message.header.address_family {
        AddressFamily::Inet => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    });
    IpNet::new(dest, len).ok()
}

/// The interface's own address in an address message, with its prefix length, as
/// calico-node's netlink library reads it (`parseAddr` of vishvananda/netlink).
pub(super) fn address_of(message: &AddressMessage) -> Option<IpNet> {
    let (mut address, mut local) = (None, None);
    for attr in &message.attributes {
        match attr {
            AddressAttribute::Address(a) => address = Some(*a),
            AddressAttribute::Local(a) => local = Some(*a),
            _ => {}
        }
    }
    let plen = message.header.prefix_len;
    match (local, address) {
        // IPv4 sends its own address as IFA_LOCAL and IFA_ADDRESS alike, unless the link is
        // point-to-point: then IFA_ADDRESS is the peer, which the prefix length belongs to,
        // and the own address (IFA_LOCAL) stands alone (/32, /128).
        (Some(l), Some(a)) if message.header.family == AddressFamily::Inet && l == a => {
            IpNet::new(a, plen).ok()
        }
        (Some(l), _) => IpNet::new(l, if l.is_ipv4() { 32 } else { 128 }).ok(),
        // IPv6 sends its own address as IFA_ADDRESS alone.
        (None, Some(a)) => IpNet::new(a, plen).ok(),
        (None, None) => None,
    }
}

fn usable_link_local(message: &AddressMessage) -> Option<Ipv6Addr> {
    let unusable = AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed;
    if message.header.flags.intersects(unusable) {
        return None;
    }
    message.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Address(IpAddr::V6(a)) if is_link_local(a) => Some(*a),
        _ => None,
    })
}

pub(super) fn is_link_local(address: &Ipv6Addr) -> bool {
    address.segments()[0] & 0xffc0 == 0xfe80
}

/// Turns an rtnetlink failure into [`Error::Kernel`], keeping the errno.
/// `Ok` for success and for the kernel's "absent" (ENOENT, ESRCH, ENODEV).
pub(super) fn ignore_not_found(
    outcome: std::result::Result<(), rtnetlink::Error>,
    op: String,
) -> Result<()> {
    match outcome {
        Ok(()) => Ok(()),
        Err(e) => {
            let err = kernel_error(op, e);
            if err.is_not_found() {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

pub(super) fn kernel_error(op: String, error: rtnetlink::Error) -> Error {
    match error {
        rtnetlink::Error::NetlinkError(message) if message.raw_code() != 0 => {
            errno_error(op, message.raw_code().abs())
        }
        other => Error::Kernel {
            op,
            errno: None,
            msg: other.to_string(),
        },
    }
}

/// [`Error::Kernel`] for an errno, with the lowercase strerror text ("file exists").
pub(crate) fn errno_error(op: String, errno: i32) -> Error {
    Error::Kernel {
        op,
        errno: Some(errno),
        msg: strerror(errno),
    }
}

/// "File exists (os error 17)" -> "file exists".
pub(crate) fn strerror(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    let text = match text.find(" (os error") {
        Some(cut) => &text[..cut],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("errno {errno}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strerror_is_lowercase_without_os_error_suffix() {
        assert_eq!(strerror(libc::EEXIST), "file exists");
        assert_eq!(strerror(libc::ENODEV), "no such device");
    }

    #[test]
    fn errno_errors_classify_and_read_verb_object_cause() {
        let e = errno_error("create veth cali1234567890a".into(), libc::EEXIST);
        assert_eq!(e.to_string(), "create veth cali1234567890a: file exists");
        assert!(e.is_exists());
        assert!(errno_error("find link x".into(), libc::ENODEV).is_not_found());
    }

    #[test]
    fn link_local_range() {
        assert!(is_link_local(&"fe80::ecee:eeff:feee:eeee".parse().unwrap()));
        assert!(is_link_local(&"febf::1".parse().unwrap()));
        assert!(!is_link_local(&"fec0::1".parse().unwrap()));
        assert!(!is_link_local(&"fd00::1".parse().unwrap()));
    }

    #[test]
    fn only_host_routes_are_accepted() {
        assert!(check_host_route("10.0.0.1/32".parse().unwrap(), "add").is_ok());
        assert!(check_host_route("fd00::1/128".parse().unwrap(), "add").is_ok());
        let e = check_host_route("10.0.0.0/24".parse().unwrap(), "add route").unwrap_err();
        assert!(e.is_invalid());
    }
}
