//! This host's address, found as calico-node finds the address it writes to its Node
//! (`spec.bgp.ipv4Address` / `ipv6Address`): the settings `IP` / `IP6` ([`IpSetting`]) and
//! `IP_AUTODETECTION_METHOD` / `IP6_AUTODETECTION_METHOD` ([`Method`]), and the rules of
//! calico-node's `node/pkg/lifecycle/startup/autodetection/` as pure functions over the
//! host's interfaces ([`get_interfaces`], [`filtered_enumeration`], [`local_cidr`]), which
//! [`autodetect`] runs on what the kernel reports ([`super::Dataplane::interfaces`],
//! [`super::Dataplane::source_address_towards`]).
//!
//! The order matters as much as the filters: the kernel lists links by index, calico-node
//! walks that list backwards (`GetInterfaces`: "loop in reverse order to maintain behavior
//! with older versions"), and takes an interface's addresses in the kernel's order. So
//! `first-found` picks the newest interface's first global unicast address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use regex::Regex;

use super::Dataplane;
use crate::error::{Error, Result};

/// Interfaces calico-node never takes an address from with `first-found` and
/// `skip-interface=` (`DEFAULT_INTERFACES_TO_EXCLUDE`, autodetection_linux.go): bridges,
/// veths, tunnels and Calico's own devices. Unanchored at the end, as written: `^lo` also
/// skips `lower0`.
pub const DEFAULT_INTERFACES_TO_EXCLUDE: &[&str] = &[
    "^docker.*",
    "^cbr.*",
    "^dummy.*",
    "^podman.*",
    "^virbr.*",
    "^lxcbr.*",
    "^veth.*",
    "^lo",
    "^br-.*",
    "^cali.*",
    "^tunl.*",
    "^flannel.*",
    "^kube-ipvs.*",
    "^cni.*",
    "^vxlan\\.calico.*",
    "^vxlan-v6\\.calico.*",
    "^wireguard\\.cali.*",
    "^wg-v6\\.cali.*",
    "^nodelocaldns.*",
];

/// calico-node's monitor interval (`DEFAULT_MONITOR_IP_POLL_INTERVAL`, startup.go), which
/// `AUTODETECT_POLL_INTERVAL` changes.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// IPv4 or IPv6: calico-node's `version` (4 or 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpVersion {
    /// The version of an address.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => IpVersion::V4,
            IpAddr::V6(_) => IpVersion::V6,
        }
    }

    /// 4 or 6.
    pub fn number(self) -> u8 {
        match self {
            IpVersion::V4 => 4,
            IpVersion::V6 => 6,
        }
    }

    /// The host prefix length: 32 or 128.
    pub fn max_prefix(self) -> u8 {
        match self {
            IpVersion::V4 => 32,
            IpVersion::V6 => 128,
        }
    }
}

/// One interface of the host and its addresses (both versions), each with the prefix length
/// the interface gives it, in the kernel's order (calico-node's `autodetection.Interface`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// The interface's name.
    pub name: String,
    /// Its addresses, each with its prefix length (`10.0.0.5/24`).
    pub addresses: Vec<IpNet>,
}

/// How an address is looked for when `IP` / `IP6` is `autodetect` (calico-node's
/// `AutoDetectCIDR`, autodetection_methods.go).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `first-found` (also empty): the first global unicast address on an interface that
    /// [`DEFAULT_INTERFACES_TO_EXCLUDE`] does not exclude.
    FirstFound,
    /// `interface=<regex>,...`: the first global unicast address on an interface whose name
    /// one of the regexes matches (anywhere in the name: `^...$` to match it whole); the
    /// default exclusions do not apply.
    Interface(Vec<String>),
    /// `skip-interface=<regex>,...`: `first-found`, also skipping the interfaces these match.
    SkipInterface(Vec<String>),
    /// `cidr=<cidr>,...`: the first global unicast address inside one of the CIDRs, on any
    /// interface.
    Cidr(Vec<IpNet>),
    /// `can-reach=<address or name>`: the source address the kernel would use towards it
    /// (a connected UDP socket's local address: no packet is sent).
    CanReach(String),
}

const METHOD_FIRST: &str = "first-found";
const METHOD_CAN_REACH: &str = "can-reach=";
const METHOD_INTERFACE: &str = "interface=";
const METHOD_SKIP_INTERFACE: &str = "skip-interface=";
const METHOD_CIDR: &str = "cidr=";
const METHOD_K8S_INTERNAL_IP: &str = "kubernetes-internal-ip";

impl Method {
    /// Parses an `IP_AUTODETECTION_METHOD` (`version` 4) or `IP6_AUTODETECTION_METHOD`
    /// value; the error says what is wrong with it. calico-node finds a bad regex or CIDR
    /// only when it detects (and then finds no address); here it stops the start.
    pub fn parse(value: &str, version: IpVersion) -> std::result::Result<Method, String> {
        let value = value.trim();
        if value.is_empty() || value == METHOD_FIRST {
            return Ok(Method::FirstFound);
        }
        if let Some(rest) = value.strip_prefix(METHOD_INTERFACE) {
            return Ok(Method::Interface(regexes(rest)?));
        }
        if let Some(rest) = value.strip_prefix(METHOD_CIDR) {
            return Ok(Method::Cidr(cidrs(rest, version)?));
        }
        if let Some(rest) = value.strip_prefix(METHOD_CAN_REACH) {
            return Ok(Method::CanReach(reach_destination(rest, version)?));
        }
        if let Some(rest) = value.strip_prefix(METHOD_SKIP_INTERFACE) {
            return Ok(Method::SkipInterface(regexes(rest)?));
        }
        if value.starts_with(METHOD_K8S_INTERNAL_IP) {
            return Err(format!(
                "{METHOD_K8S_INTERNAL_IP} reads the address of this host's Kubernetes node, \
                 and a Docker host has none: use {METHOD_FIRST}, {METHOD_CAN_REACH}..., \
                 {METHOD_INTERFACE}..., {METHOD_SKIP_INTERFACE}... or {METHOD_CIDR}..."
            ));
        }
        Err(format!(
            "invalid IP autodetection method '{value}' (expected {METHOD_FIRST}, \
             {METHOD_CAN_REACH}<address or name>, {METHOD_INTERFACE}<regex,...>, \
             {METHOD_SKIP_INTERFACE}<regex,...> or {METHOD_CIDR}<cidr,...>)"
        ))
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::FirstFound => f.write_str(METHOD_FIRST),
            Method::Interface(r) => write!(f, "{METHOD_INTERFACE}{}", r.join(",")),
            Method::SkipInterface(r) => write!(f, "{METHOD_SKIP_INTERFACE}{}", r.join(",")),
            Method::Cidr(c) => {
                let c: Vec<String> = c.iter().map(IpNet::to_string).collect();
                write!(f, "{METHOD_CIDR}{}", c.join(","))
            }
            Method::CanReach(d) => write!(f, "{METHOD_CAN_REACH}{d}"),
        }
    }
}

/// The list after `interface=` / `skip-interface=`, split as calico-node splits it (on
/// commas and the blanks around them), each a valid regex.
fn regexes(list: &str) -> std::result::Result<Vec<String>, String> {
    let list: Vec<String> = list.split(',').map(|r| r.trim().to_string()).collect();
    for r in &list {
        Regex::new(r).map_err(|e| format!("invalid interface regex '{r}': {e}"))?;
    }
    Ok(list)
}

/// The list after `cidr=`: CIDRs of the version detected (calico-node takes one of the
/// other version too, which then matches nothing).
fn cidrs(list: &str, version: IpVersion) -> std::result::Result<Vec<IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .map(|c| {
            let net: IpNet = c
                .parse()
                .map_err(|e| format!("invalid CIDR '{c}' for IP autodetection: {e}"))?;
            if IpVersion::of(&net.addr()) != version {
                return Err(format!(
                    "'{c}' is not an IPv{} CIDR: it can never match",
                    version.number()
                ));
            }
            Ok(net)
        })
        .collect()
}

/// The destination after `can-reach=`: an address of the version detected, or a host name
/// (resolved at each detection, as calico-node resolves it).
fn reach_destination(dest: &str, version: IpVersion) -> std::result::Result<String, String> {
    let dest = dest.trim();
    if dest.is_empty() {
        return Err(format!(
            "{METHOD_CAN_REACH} needs an address or a host name"
        ));
    }
    match dest.parse::<IpAddr>() {
        Ok(ip) if IpVersion::of(&ip) != version => Err(format!(
            "{METHOD_CAN_REACH}{dest}: not an IPv{} address",
            version.number()
        )),
        Ok(_) => Ok(dest.to_string()),
        // What Go's JoinHostPort(dest, "80") cannot make an address of.
        Err(_) if dest.contains([':', '[', ']', '/']) => Err(format!(
            "{METHOD_CAN_REACH}{dest}: not an address or a host name"
        )),
        Err(_) => Ok(dest.to_string()),
    }
}

/// `IP` / `IP6`: what this host's Node gets as its address of one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpSetting {
    /// `autodetect`: found by the version's [`Method`] at each check.
    Autodetect,
    /// `none`: never written (an address already on the Node stays, as calico-node leaves it).
    None,
    /// An address, with its prefix length when given (`10.0.0.5/24`); without one, IPv4
    /// takes the prefix of the interface that has the address, IPv6 is written as `/128`
    /// (calico-node's `GetLocalCIDR`, used for `IP` only).
    Address {
        /// The address.
        addr: IpAddr,
        /// Its prefix length, when given.
        prefix: Option<u8>,
    },
}

impl IpSetting {
    /// Parses `IP` (`version` 4) or `IP6`: `autodetect`, `none`, or an address with or
    /// without its prefix length (calico-node's `parseIPEnvironment`).
    pub fn parse(value: &str, version: IpVersion) -> std::result::Result<IpSetting, String> {
        let value = value.trim();
        match value {
            "autodetect" => return Ok(IpSetting::Autodetect),
            "none" => return Ok(IpSetting::None),
            _ => {}
        }
        let want = || {
            format!(
                "'{value}' is not a valid IPv{} address (expected an address, with or \
                 without its prefix length, autodetect or none)",
                version.number()
            )
        };
        let (addr, prefix) = match value.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| want())?)),
            None => (value, None),
        };
        let addr = go_ip(addr.parse::<IpAddr>().map_err(|_| want())?);
        if IpVersion::of(&addr) != version {
            return Err(want());
        }
        if let Some(p) = prefix {
            IpNet::new(addr, p).map_err(|_| want())?;
        }
        Ok(IpSetting::Address { addr, prefix })
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it maps, as Go's `To4` sees it.
fn go_ip(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The whole address setting of this host's Node, from `IP`, `IP6`, their methods,
/// `AUTODETECT_POLL_INTERVAL` and `DISABLE_NODE_IP_CHECK`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddressConfig {
    /// `IP`.
    pub ipv4: IpSetting,
    /// `IP6`.
    pub ipv6: IpSetting,
    /// `IP_AUTODETECTION_METHOD`.
    pub ipv4_method: Method,
    /// `IP6_AUTODETECTION_METHOD`.
    pub ipv6_method: Method,
    /// How often the address is found again and, when it changed, rewritten.
    pub poll_interval: Duration,
    /// Whether a new address is first checked against every other Node's (off with
    /// `DISABLE_NODE_IP_CHECK=true`, as in calico-node).
    pub check_conflicts: bool,
}

impl NodeAddressConfig {
    /// Neither version written: what embedding code and tests get unless they ask.
    pub fn off() -> Self {
        NodeAddressConfig {
            ipv4: IpSetting::None,
            ipv6: IpSetting::None,
            ipv4_method: Method::FirstFound,
            ipv6_method: Method::FirstFound,
            poll_interval: DEFAULT_POLL_INTERVAL,
            check_conflicts: true,
        }
    }

    /// The setting of one version.
    pub fn setting(&self, version: IpVersion) -> &IpSetting {
        match version {
            IpVersion::V4 => &self.ipv4,
            IpVersion::V6 => &self.ipv6,
        }
    }

    /// The method of one version.
    pub fn method(&self, version: IpVersion) -> &Method {
        match version {
            IpVersion::V4 => &self.ipv4_method,
            IpVersion::V6 => &self.ipv6_method,
        }
    }
}

/// Go's `IsGlobalUnicast`, the one test `FilteredEnumeration` applies to an address: not
/// unspecified, loopback, multicast, link-local (169.254/16, fe80::/10) or 255.255.255.255.
/// Private ranges (10/8, fd00::/8) are global unicast here.
pub fn is_global_unicast(ip: IpAddr) -> bool {
    match go_ip(ip) {
        IpAddr::V4(v4) => {
            v4 != Ipv4Addr::BROADCAST
                && !v4.is_unspecified()
                && !v4.is_loopback()
                && !v4.is_multicast()
                && !v4.is_link_local()
        }
        IpAddr::V6(v6) => {
            !v6.is_unspecified()
                && !v6.is_loopback()
                && !v6.is_multicast()
                && !is_ipv6_link_local(&v6)
        }
    }
}

fn is_ipv6_link_local(v6: &Ipv6Addr) -> bool {
    v6.segments()[0] & 0xffc0 == 0xfe80
}

/// calico-node's `GetInterfaces`: `all` (in the kernel's order) walked backwards, keeping
/// those whose name some regex of `include` matches (all when it is empty) and none of
/// `exclude` matches, each with its addresses of `version` only. The regexes are combined as
/// calico-node combines them, `(a)|(b)`, and match anywhere in the name.
pub fn get_interfaces(
    all: &[Interface],
    include: &[String],
    exclude: &[String],
    version: IpVersion,
) -> Result<Vec<Interface>> {
    let combine = |list: &[String]| -> Result<Option<Regex>> {
        if list.is_empty() {
            return Ok(None);
        }
        let joined = format!("({})", list.join(")|("));
        Regex::new(&joined)
            .map(Some)
            .map_err(|e| Error::invalid(format!("compile interface regex '{joined}': {e}")))
    };
    let (include, exclude) = (combine(include)?, combine(exclude)?);
    Ok(all
        .iter()
        .rev()
        .filter(|i| include.as_ref().is_none_or(|r| r.is_match(&i.name)))
        .filter(|i| !exclude.as_ref().is_some_and(|r| r.is_match(&i.name)))
        .map(|i| Interface {
            name: i.name.clone(),
            addresses: i
                .addresses
                .iter()
                .filter(|a| IpVersion::of(&a.addr()) == version)
                .copied()
                .collect(),
        })
        .collect())
}

/// An address found, and the interface it is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The interface's name.
    pub interface: String,
    /// The address with the interface's prefix length.
    pub cidr: IpNet,
}

/// calico-node's `FilteredEnumeration`: of [`get_interfaces`]' interfaces, the first global
/// unicast address (inside one of `cidrs`, when given), in that order.
pub fn filtered_enumeration(
    all: &[Interface],
    include: &[String],
    exclude: &[String],
    cidrs: &[IpNet],
    version: IpVersion,
) -> Result<Found> {
    let interfaces = get_interfaces(all, include, exclude, version)?;
    if interfaces.is_empty() {
        return Err(Error::msg("no valid host interfaces found"));
    }
    for i in &interfaces {
        for c in &i.addresses {
            let ip = c.addr();
            if is_global_unicast(ip) && (cidrs.is_empty() || cidrs.iter().any(|n| n.contains(&ip)))
            {
                return Ok(Found {
                    interface: i.name.clone(),
                    cidr: *c,
                });
            }
        }
    }
    Err(Error::msg(format!(
        "no valid IPv{} addresses found on the host interfaces",
        version.number()
    )))
}

/// The address `ip` with the prefix length of the interface that has it, looking at every
/// interface in [`get_interfaces`]' order (calico-node's `GetLocalCIDR` and the end of
/// `ReachDestination`); `None` when no interface has it.
pub fn local_cidr(all: &[Interface], ip: IpAddr) -> Option<Found> {
    let ip = go_ip(ip);
    let interfaces = get_interfaces(all, &[], &[], IpVersion::of(&ip)).ok()?;
    interfaces.into_iter().find_map(|i| {
        let cidr = *i.addresses.iter().find(|c| c.addr() == ip)?;
        Some(Found {
            interface: i.name,
            cidr,
        })
    })
}

/// The address of `version` that `method` finds among `all` (the host's interfaces, in the
/// kernel's order), as calico-node's `AutoDetectCIDR` does; `can-reach=` asks the kernel for
/// the source address towards its destination through `dataplane`.
pub async fn autodetect(
    dataplane: &dyn Dataplane,
    all: &[Interface],
    method: &Method,
    version: IpVersion,
) -> Result<Found> {
    let default_excl = || -> Vec<String> {
        DEFAULT_INTERFACES_TO_EXCLUDE
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let v = version.number();
    match method {
        Method::FirstFound => filtered_enumeration(all, &[], &default_excl(), &[], version)
            .map_err(|e| e.context(format!("autodetect an IPv{v} address"))),
        Method::Interface(include) => filtered_enumeration(all, include, &[], &[], version)
            .map_err(|e| {
                e.context(format!(
                    "autodetect an IPv{v} address on interfaces {include:?}"
                ))
            }),
        Method::SkipInterface(skip) => {
            let mut exclude = default_excl();
            exclude.extend(skip.iter().cloned());
            filtered_enumeration(all, &[], &exclude, &[], version).map_err(|e| {
                e.context(format!(
                    "autodetect an IPv{v} address skipping interfaces {skip:?}"
                ))
            })
        }
        Method::Cidr(cidrs) => filtered_enumeration(all, &[], &[], cidrs, version)
            .map_err(|e| e.context(format!("autodetect an IPv{v} address in {method}"))),
        Method::CanReach(dest) => reach_destination_cidr(dataplane, all, dest, version)
            .await
            .map_err(|e| {
                e.context(format!(
                    "autodetect an IPv{v} address by connecting to {dest}"
                ))
            }),
    }
}

/// calico-node's `ReachDestination`: the local address of a UDP socket connected to
/// `dest` port 80 (a name resolved to its first address of `version` that connects), with
/// the prefix of the interface that has it.
async fn reach_destination_cidr(
    dataplane: &dyn Dataplane,
    all: &[Interface],
    dest: &str,
    version: IpVersion,
) -> Result<Found> {
    let candidates: Vec<SocketAddr> = match dest.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, 80)],
        Err(_) => tokio::net::lookup_host((dest, 80))
            .await
            .map_err(|e| Error::io(format!("resolve {dest}"), e))?
            .collect(),
    };
    let mut last = None;
    for dest in candidates
        .into_iter()
        .filter(|a| IpVersion::of(&a.ip()) == version)
    {
        match dataplane.source_address_towards(dest).await {
            Ok(source) => {
                return local_cidr(all, source).ok_or_else(|| {
                    Error::msg(format!(
                        "autodetected IPv{} address does not match any addresses found on \
                         local interfaces: {source}",
                        version.number()
                    ))
                })
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| Error::msg(format!("{dest} has no IPv{} address", version.number()))))
}

/// The source address the kernel picks towards `dest`: the local address of a UDP socket
/// connected to it. Connecting a UDP socket only looks up the route; no packet is sent.
pub fn source_address_towards(dest: SocketAddr) -> Result<IpAddr> {
    let any: SocketAddr = match dest {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let kernel = |op: String, e: std::io::Error| match e.raw_os_error() {
        Some(errno) => super::netlink::errno_error(op, errno),
        None => Error::io(op, e),
    };
    let socket = std::net::UdpSocket::bind(any)
        .map_err(|e| kernel(format!("open a UDP socket towards {dest}"), e))?;
    socket
        .connect(dest)
        .map_err(|e| kernel(format!("connect a UDP socket to {dest}"), e))?;
    let local = socket
        .local_addr()
        .map_err(|e| kernel(format!("read the local address towards {dest}"), e))?;
    Ok(local.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, addresses: &[&str]) -> Interface {
        Interface {
            name: name.to_string(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A host as the kernel lists it: by index, each link's addresses in its order.
    fn host() -> Vec<Interface> {
        vec![
            iface("lo", &["127.0.0.1/8", "::1/128"]),
            iface("eth0", &["10.0.0.5/24", "fe80::1/64", "fd00::5/64"]),
            iface("eth1", &["169.254.3.3/16", "192.168.7.9/20", "fe80::2/64"]),
            iface("docker0", &["172.17.0.1/16"]),
            iface("veth1234", &["172.18.0.1/16"]),
            iface("lower0", &["10.99.0.1/24"]),
        ]
    }

    // autodetection_methods.go, AutoDetectCIDR: the prefixes it knows, a list split on commas
    // (and the blanks around them); an empty method is first-found.
    #[test]
    fn methods_parse_as_calico_node_reads_them() {
        let v4 = IpVersion::V4;
        assert_eq!(Method::parse("", v4).unwrap(), Method::FirstFound);
        assert_eq!(
            Method::parse("first-found", v4).unwrap(),
            Method::FirstFound
        );
        assert_eq!(
            Method::parse("interface=eth.*, ens[0-9]+ ,bond0", v4).unwrap(),
            Method::Interface(strings(&["eth.*", "ens[0-9]+", "bond0"]))
        );
        assert_eq!(
            Method::parse("skip-interface=eth1", v4).unwrap(),
            Method::SkipInterface(strings(&["eth1"]))
        );
        assert_eq!(
            Method::parse("cidr=10.0.0.0/8, 192.168.0.0/16", v4).unwrap(),
            Method::Cidr(vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.168.0.0/16".parse().unwrap()
            ])
        );
        assert_eq!(
            Method::parse("can-reach=8.8.8.8", v4).unwrap(),
            Method::CanReach("8.8.8.8".to_string())
        );
        assert_eq!(
            Method::parse("can-reach=www.example.org", v4).unwrap(),
            Method::CanReach("www.example.org".to_string())
        );
        assert_eq!(
            Method::parse("can-reach=2001:db8::1", IpVersion::V6).unwrap(),
            Method::CanReach("2001:db8::1".to_string())
        );
        for m in [
            "first-found",
            "interface=eth.*,ens3",
            "skip-interface=eth1",
            "cidr=10.0.0.0/8,192.168.0.0/16",
            "can-reach=8.8.8.8",
        ] {
            assert_eq!(Method::parse(m, v4).unwrap().to_string(), m);
        }
    }

    // autodetection_methods.go, AutoDetectCIDR: what calico-node gives up on (an unknown
    // method, a bad CIDR, kubernetes-internal-ip without Kubernetes) stops the start here.
    #[test]
    fn bad_methods_are_refused_with_their_reason() {
        let v4 = IpVersion::V4;
        let err = |m: &str, v| Method::parse(m, v).unwrap_err();
        assert!(err("first", v4).starts_with("invalid IP autodetection method 'first'"));
        assert!(err("Interface=eth0", v4).starts_with("invalid IP autodetection method"));
        assert!(err("kubernetes-internal-ip", v4).contains("a Docker host has none"));
        assert!(err("interface=eth(", v4).starts_with("invalid interface regex 'eth('"));
        assert!(err("skip-interface=a,[b", v4).starts_with("invalid interface regex '[b'"));
        assert!(err("cidr=10.0.0.0", v4).starts_with("invalid CIDR '10.0.0.0'"));
        assert!(err("cidr=", v4).starts_with("invalid CIDR ''"));
        assert_eq!(
            err("cidr=fd00::/8", v4),
            "'fd00::/8' is not an IPv4 CIDR: it can never match"
        );
        assert_eq!(
            err("can-reach=", v4),
            "can-reach= needs an address or a host name"
        );
        assert_eq!(
            err("can-reach=2001:db8::1", v4),
            "can-reach=2001:db8::1: not an IPv4 address"
        );
        assert_eq!(
            err("can-reach=[2001:db8::1]", IpVersion::V6),
            "can-reach=[2001:db8::1]: not an address or a host name"
        );
    }

    // startup.go, parseIPEnvironment and configureIPsAndSubnets: `autodetect`, `none`, or
    // an address of the right version with or without its prefix length.
    #[test]
    fn ip_settings() {
        let (v4, v6) = (IpVersion::V4, IpVersion::V6);
        assert_eq!(
            IpSetting::parse("autodetect", v4).unwrap(),
            IpSetting::Autodetect
        );
        assert_eq!(IpSetting::parse(" none ", v6).unwrap(), IpSetting::None);
        assert_eq!(
            IpSetting::parse("10.0.0.5/24", v4).unwrap(),
            IpSetting::Address {
                addr: "10.0.0.5".parse().unwrap(),
                prefix: Some(24)
            }
        );
        assert_eq!(
            IpSetting::parse("10.0.0.5", v4).unwrap(),
            IpSetting::Address {
                addr: "10.0.0.5".parse().unwrap(),
                prefix: None
            }
        );
        assert_eq!(
            IpSetting::parse("fd00::5/64", v6).unwrap(),
            IpSetting::Address {
                addr: "fd00::5".parse().unwrap(),
                prefix: Some(64)
            }
        );
        // Go reads an IPv4-mapped IPv6 address as IPv4.
        assert_eq!(
            IpSetting::parse("::ffff:10.0.0.5", v4).unwrap(),
            IpSetting::Address {
                addr: "10.0.0.5".parse().unwrap(),
                prefix: None
            }
        );
        for bad in [
            "fd00::5",
            "10.0.0.5/33",
            "10.0.0.5/x",
            "Autodetect",
            "10.0.0",
            "",
        ] {
            let e = IpSetting::parse(bad, v4).unwrap_err();
            assert!(e.contains("is not a valid IPv4 address"), "{bad}: {e}");
        }
        assert!(IpSetting::parse("10.0.0.5", v6).is_err());
    }

    // filtered.go, FilteredEnumeration: only Go's IsGlobalUnicast addresses are taken.
    #[test]
    fn global_unicast_as_go_sees_it() {
        for yes in [
            "10.0.0.5",
            "192.168.1.1",
            "100.64.0.1",
            "8.8.8.8",
            "fd00::1",
            "2001:db8::1",
            "fec0::1",
        ] {
            assert!(is_global_unicast(yes.parse().unwrap()), "{yes}");
        }
        for no in [
            "0.0.0.0",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_global_unicast(no.parse().unwrap()), "{no}");
        }
    }

    // interfaces.go, GetInterfaces: walked backwards, include and exclude regexes anywhere
    // in the name, addresses of the version only.
    #[test]
    fn interfaces_are_walked_backwards_and_filtered() {
        let names = |l: Vec<Interface>| l.into_iter().map(|i| i.name).collect::<Vec<_>>();
        let all = host();
        let got = get_interfaces(&all, &[], &[], IpVersion::V6).unwrap();
        assert_eq!(
            names(got.clone()),
            ["lower0", "veth1234", "docker0", "eth1", "eth0", "lo"]
        );
        assert_eq!(
            got[4].addresses,
            [
                "fe80::1/64".parse::<IpNet>().unwrap(),
                "fd00::5/64".parse().unwrap()
            ]
        );
        let default = strings(DEFAULT_INTERFACES_TO_EXCLUDE);
        // `^lo` skips lower0 too: the regexes are not anchored at the end.
        assert_eq!(
            names(get_interfaces(&all, &[], &default, IpVersion::V4).unwrap()),
            ["eth1", "eth0"]
        );
        // `eth0` matches anywhere: in veth0 as in eth0.
        let both = vec![iface("eth0", &[]), iface("veth0", &[])];
        assert_eq!(
            names(get_interfaces(&both, &strings(&["eth0"]), &[], IpVersion::V4).unwrap()),
            ["veth0", "eth0"]
        );
        assert_eq!(
            names(get_interfaces(&both, &strings(&["^eth0$"]), &[], IpVersion::V4).unwrap()),
            ["eth0"]
        );
    }

    // filtered.go, FilteredEnumeration (first-found: DEFAULT_INTERFACES_TO_EXCLUDE of
    // autodetection_linux.go): the newest interface's first global unicast address.
    #[test]
    fn first_found_takes_the_newest_interfaces_first_global_address() {
        let default = strings(DEFAULT_INTERFACES_TO_EXCLUDE);
        let all = host();
        let found = filtered_enumeration(&all, &[], &default, &[], IpVersion::V4).unwrap();
        // eth1 comes after eth0; its link-local 169.254.3.3 is passed over.
        assert_eq!(
            found,
            Found {
                interface: "eth1".into(),
                cidr: "192.168.7.9/20".parse().unwrap()
            }
        );
        let found = filtered_enumeration(&all, &[], &default, &[], IpVersion::V6).unwrap();
        assert_eq!(found.cidr, "fd00::5/64".parse::<IpNet>().unwrap());
        assert_eq!(found.interface, "eth0");
        // Nothing left once every interface is skipped, or no address qualifies.
        let e = filtered_enumeration(&all, &[], &strings(&[".*"]), &[], IpVersion::V4).unwrap_err();
        assert_eq!(e.to_string(), "no valid host interfaces found");
        let e =
            filtered_enumeration(&all, &strings(&["^lo$"]), &[], &[], IpVersion::V4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no valid IPv4 addresses found on the host interfaces"
        );
    }

    // filtered.go, FilteredEnumeration with cidrs (matchCIDRs): any interface, the first
    // global unicast address inside one of them.
    #[test]
    fn cidr_takes_the_first_address_inside() {
        let all = host();
        let cidrs: Vec<IpNet> = vec!["172.16.0.0/12".parse().unwrap()];
        let found = filtered_enumeration(&all, &[], &[], &cidrs, IpVersion::V4).unwrap();
        // veth1234 is newer than docker0; no default exclusion applies.
        assert_eq!(found.interface, "veth1234");
        assert_eq!(found.cidr, "172.18.0.1/16".parse::<IpNet>().unwrap());
        let cidrs: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        assert_eq!(
            filtered_enumeration(&all, &[], &[], &cidrs, IpVersion::V4)
                .unwrap()
                .interface,
            "eth0"
        );
    }

    // autodetection_methods.go, GetLocalCIDR / reachaddr.go, ReachDestination: the address
    // with its interface's prefix, on any interface.
    #[test]
    fn local_cidr_finds_the_prefix_of_an_address() {
        let all = host();
        assert_eq!(
            local_cidr(&all, "10.0.0.5".parse().unwrap()).unwrap().cidr,
            "10.0.0.5/24".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            local_cidr(&all, "127.0.0.1".parse().unwrap())
                .unwrap()
                .interface,
            "lo"
        );
        assert_eq!(
            local_cidr(&all, "::ffff:10.0.0.5".parse().unwrap())
                .unwrap()
                .interface,
            "eth0"
        );
        assert_eq!(local_cidr(&all, "10.0.0.6".parse().unwrap()), None);
    }

    // autodetection_methods.go, AutoDetectCIDR: each method over the same host, through
    // the dataplane (can-reach asks it for the source address).
    #[tokio::test]
    async fn each_method_over_one_host() {
        let fake = super::super::fake::Recording::default();
        fake.set_interfaces(host());
        let all = fake.interfaces().await.unwrap();
        let pick = |m: &str, v| {
            let (fake, all) = (&fake, &all);
            let m = Method::parse(m, v).unwrap();
            async move {
                autodetect(fake, all, &m, v)
                    .await
                    .map(|f| f.cidr.to_string())
                    .map_err(|e| e.to_string())
            }
        };
        assert_eq!(
            pick("first-found", IpVersion::V4).await.unwrap(),
            "192.168.7.9/20"
        );
        assert_eq!(
            pick("interface=eth0", IpVersion::V4).await.unwrap(),
            "10.0.0.5/24"
        );
        assert_eq!(
            pick("interface=^docker", IpVersion::V4).await.unwrap(),
            "172.17.0.1/16"
        );
        assert_eq!(
            pick("skip-interface=eth1", IpVersion::V4).await.unwrap(),
            "10.0.0.5/24"
        );
        assert_eq!(
            pick("cidr=10.0.0.0/8", IpVersion::V4).await.unwrap(),
            "10.99.0.1/24"
        );
        assert_eq!(
            pick("can-reach=10.0.0.77", IpVersion::V4).await.unwrap(),
            "10.0.0.5/24"
        );
        assert_eq!(
            pick("can-reach=fd00::77", IpVersion::V6).await.unwrap(),
            "fd00::5/64"
        );
        assert_eq!(
            pick("interface=nothing", IpVersion::V4).await.unwrap_err(),
            "autodetect an IPv4 address on interfaces [\"nothing\"]: no valid host interfaces found"
        );
        assert_eq!(
            pick("can-reach=203.0.113.1", IpVersion::V4).await.unwrap_err(),
            "autodetect an IPv4 address by connecting to 203.0.113.1: connect a UDP socket to 203.0.113.1:80: network is unreachable"
        );
    }
}
