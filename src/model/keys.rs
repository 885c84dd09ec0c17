//! etcd key paths, exactly as libcalico-go builds them, and parsers for those we list.
//!
//! - v3 resources: `/calico/resources/v3/projectcalico.org/<plural>/[<namespace>/]<name>`.
//! - IPAM: blocks `/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26`, affinities
//!   `/calico/ipam/v2/host/<host>/ipv4/block/10.0.0.0-26`, handles
//!   `/calico/ipam/v2/handle/<id>` and the config `/calico/ipam/v2/config`. In keys the
//!   masked CIDR is written with its `/` replaced by `-`.
//! - Ours: `/calico/libnetwork/v1/networks/<networkID>` and `/calico/libnetwork/v1/pools/<poolID>`.
//!
//! Prefix helpers end in `/` so that listing `/a/` never matches `/ab`.

use std::net::IpAddr;

use ipnet::IpNet;

use super::IpFamily;

/// Root of all v3 resources.
pub const RESOURCES_PREFIX: &str = "/calico/resources/v3/projectcalico.org";
/// Plural of WorkloadEndpoint (namespaced).
pub const PLURAL_WORKLOAD_ENDPOINTS: &str = "workloadendpoints";
/// Plural of Profile.
pub const PLURAL_PROFILES: &str = "profiles";
/// Plural of IPPool.
pub const PLURAL_IP_POOLS: &str = "ippools";
/// Plural of Node.
pub const PLURAL_NODES: &str = "nodes";
/// Plural of ClusterInformation (the one instance is named `default`).
pub const PLURAL_CLUSTER_INFORMATIONS: &str = "clusterinformations";
/// Plural of Tier.
pub const PLURAL_TIERS: &str = "tiers";
/// Plural of IPReservation.
pub const PLURAL_IP_RESERVATIONS: &str = "ipreservations";
/// Plural of BGPPeer (one with `spec.node` applies to that node only).
pub const PLURAL_BGP_PEERS: &str = "bgppeers";
/// Plural of HostEndpoint (each on the node its `spec.node` names).
pub const PLURAL_HOST_ENDPOINTS: &str = "hostendpoints";
/// Plural of FelixConfiguration (`node.<name>` is that node's own).
pub const PLURAL_FELIX_CONFIGURATIONS: &str = "felixconfigurations";
/// Plural of BGPConfiguration (`node.<name>` is that node's own).
pub const PLURAL_BGP_CONFIGURATIONS: &str = "bgpconfigurations";

/// Root of Calico's IPAM keys.
pub const IPAM_PREFIX: &str = "/calico/ipam/v2";
/// The global IPAM configuration key.
pub const IPAM_CONFIG_KEY: &str = "/calico/ipam/v2/config";
/// Prefix of every block of every family.
pub const ALL_BLOCKS_PREFIX: &str = "/calico/ipam/v2/assignment/";
/// Prefix of every handle.
pub const HANDLES_PREFIX: &str = "/calico/ipam/v2/handle/";

/// Root of this plugin's private records.
pub const LIBNETWORK_PREFIX: &str = "/calico/libnetwork/v1";

// ---- v3 resources ----

/// The key of a v3 resource; `namespace` is `Some` only for namespaced kinds.
pub fn resource_key(plural: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{RESOURCES_PREFIX}/{plural}/{ns}/{name}"),
        None => format!("{RESOURCES_PREFIX}/{plural}/{name}"),
    }
}

/// The list prefix of a kind (all namespaces when `namespace` is `None`), ending in `/`.
pub fn resource_prefix(plural: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{RESOURCES_PREFIX}/{plural}/{ns}/"),
        None => format!("{RESOURCES_PREFIX}/{plural}/"),
    }
}

/// The parts of a v3 resource key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceKey {
    /// The kind's plural (`ippools`).
    pub plural: String,
    /// The namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// The resource name.
    pub name: String,
}

/// Splits a v3 resource key; three segments after the prefix mean a namespaced resource.
pub fn parse_resource_key(key: &str) -> Option<ResourceKey> {
    let rest = key.strip_prefix(RESOURCES_PREFIX)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    match parts.as_slice() {
        [plural, name] => Some(ResourceKey {
            plural: plural.to_string(),
            namespace: None,
            name: name.to_string(),
        }),
        [plural, ns, name] => Some(ResourceKey {
            plural: plural.to_string(),
            namespace: Some(ns.to_string()),
            name: name.to_string(),
        }),
        _ => None,
    }
}

/// `/calico/resources/v3/projectcalico.org/workloadendpoints/<namespace>/<name>`.
pub fn workload_endpoint_key(namespace: &str, name: &str) -> String {
    resource_key(PLURAL_WORKLOAD_ENDPOINTS, Some(namespace), name)
}

/// `/calico/resources/v3/projectcalico.org/profiles/<name>`.
pub fn profile_key(name: &str) -> String {
    resource_key(PLURAL_PROFILES, None, name)
}

/// `/calico/resources/v3/projectcalico.org/ippools/<name>`.
pub fn ip_pool_key(name: &str) -> String {
    resource_key(PLURAL_IP_POOLS, None, name)
}

/// `/calico/resources/v3/projectcalico.org/nodes/<name>`.
pub fn node_key(name: &str) -> String {
    resource_key(PLURAL_NODES, None, name)
}

/// `/calico/resources/v3/projectcalico.org/clusterinformations/<name>` (normally `default`).
pub fn cluster_information_key(name: &str) -> String {
    resource_key(PLURAL_CLUSTER_INFORMATIONS, None, name)
}

/// `/calico/resources/v3/projectcalico.org/tiers/<name>`.
pub fn tier_key(name: &str) -> String {
    resource_key(PLURAL_TIERS, None, name)
}

// ---- CIDR segments ----

/// A masked CIDR as a key segment: `10.0.0.0-26`, `fd80:24e2:f998:72d6::-122`.
pub fn cidr_segment(cidr: &IpNet) -> String {
    format!("{}-{}", cidr.network(), cidr.prefix_len())
}

/// Parses a key segment back into a masked CIDR (the last `-` separates the prefix length).
pub fn parse_cidr_segment(seg: &str) -> Option<IpNet> {
    let (addr, len) = seg.rsplit_once('-')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    IpNet::new(addr, len).ok().map(|n| n.trunc())
}

fn family_segment(seg: &str) -> Option<IpFamily> {
    match seg {
        "ipv4" => Some(IpFamily::V4),
        "ipv6" => Some(IpFamily::V6),
        _ => None,
    }
}

// ---- blocks ----

/// The key of the allocation block for `cidr`.
pub fn block_key(cidr: &IpNet) -> String {
    format!(
        "{ALL_BLOCKS_PREFIX}{}/block/{}",
        IpFamily::of_net(cidr),
        cidr_segment(cidr)
    )
}

/// The prefix of all blocks of one family: `/calico/ipam/v2/assignment/ipv4/block/`.
pub fn blocks_prefix(family: IpFamily) -> String {
    format!("{ALL_BLOCKS_PREFIX}{family}/block/")
}

/// The CIDR of a block key, or `None` if the key is not a block key (or its family segment
/// disagrees with the CIDR).
pub fn parse_block_key(key: &str) -> Option<IpNet> {
    let rest = key.strip_prefix(ALL_BLOCKS_PREFIX)?;
    let (fam, rest) = rest.split_once('/')?;
    let seg = rest.strip_prefix("block/")?;
    if seg.contains('/') {
        return None;
    }
    let cidr = parse_cidr_segment(seg)?;
    (family_segment(fam)? == IpFamily::of_net(&cidr)).then_some(cidr)
}

// ---- affinities ----

/// The kind of owner a block affinity names (the first path segment after `ipam/v2/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AffinityType {
    /// A node (`host/`); block `affinity` is `host:<node>`.
    Host,
    /// A virtual owner for LoadBalancer pools (`virtual/`); block `affinity` is `virtual:<n>`.
    Virtual,
}

impl AffinityType {
    /// `host` or `virtual`.
    pub fn as_str(self) -> &'static str {
        match self {
            AffinityType::Host => "host",
            AffinityType::Virtual => "virtual",
        }
    }
}

/// The key of `host`'s affinity to the block `cidr`.
pub fn block_affinity_key(host: &str, cidr: &IpNet) -> String {
    typed_affinity_key(AffinityType::Host, host, cidr)
}

/// The key of an affinity of either type.
pub fn typed_affinity_key(kind: AffinityType, host: &str, cidr: &IpNet) -> String {
    format!(
        "{IPAM_PREFIX}/{}/{host}/{}/block/{}",
        kind.as_str(),
        IpFamily::of_net(cidr),
        cidr_segment(cidr)
    )
}

/// The prefix of all of `host`'s affinities in one family:
/// `/calico/ipam/v2/host/<host>/ipv4/block/`.
pub fn host_affinities_prefix(host: &str, family: IpFamily) -> String {
    format!("{IPAM_PREFIX}/host/{host}/{family}/block/")
}

/// The prefix of all of `host`'s affinities, both families: `/calico/ipam/v2/host/<host>/`.
pub fn host_all_affinities_prefix(host: &str) -> String {
    format!("{IPAM_PREFIX}/host/{host}/")
}

/// The prefix of every host affinity: `/calico/ipam/v2/host/`.
pub fn all_host_affinities_prefix() -> String {
    format!("{IPAM_PREFIX}/host/")
}

/// The parts of an affinity key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinityKey {
    /// `host` or `virtual`.
    pub kind: AffinityType,
    /// The owner's name.
    pub host: String,
    /// The block.
    pub cidr: IpNet,
}

/// Splits an affinity key of either type.
pub fn parse_affinity_key(key: &str) -> Option<AffinityKey> {
    let rest = key.strip_prefix(IPAM_PREFIX)?.strip_prefix('/')?;
    let (kind, rest) = rest.split_once('/')?;
    let kind = match kind {
        "host" => AffinityType::Host,
        "virtual" => AffinityType::Virtual,
        _ => return None,
    };
    // <host>/ipvN/block/<cidr>; the host itself contains no '/'.
    let mut parts = rest.split('/');
    let (host, fam, block, seg) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || host.is_empty() || block != "block" {
        return None;
    }
    let cidr = parse_cidr_segment(seg)?;
    if family_segment(fam)? != IpFamily::of_net(&cidr) {
        return None;
    }
    Some(AffinityKey {
        kind,
        host: host.to_string(),
        cidr,
    })
}

/// The `(host, cidr)` of a host-type affinity key; `None` for other keys.
pub fn parse_block_affinity_key(key: &str) -> Option<(String, IpNet)> {
    parse_affinity_key(key)
        .filter(|k| k.kind == AffinityType::Host)
        .map(|k| (k.host, k.cidr))
}

// ---- handles ----

/// The key of an IPAM handle.
pub fn handle_key(handle_id: &str) -> String {
    format!("{HANDLES_PREFIX}{handle_id}")
}

/// The handle ID of a handle key.
pub fn parse_handle_key(key: &str) -> Option<&str> {
    key.strip_prefix(HANDLES_PREFIX)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

// ---- plugin-private records ----

/// The key of our record of a Docker network: `/calico/libnetwork/v1/networks/<networkID>`.
pub fn network_key(network_id: &str) -> String {
    format!("{LIBNETWORK_PREFIX}/networks/{network_id}")
}

/// The prefix of all our network records.
pub fn networks_prefix() -> String {
    format!("{LIBNETWORK_PREFIX}/networks/")
}

/// The key of our record of a Docker IPAM pool: `/calico/libnetwork/v1/pools/<poolID>`.
pub fn pool_key(pool_id: &str) -> String {
    format!("{LIBNETWORK_PREFIX}/pools/{pool_id}")
}

/// The prefix of all our pool records.
pub fn pools_prefix() -> String {
    format!("{LIBNETWORK_PREFIX}/pools/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn block_and_affinity_keys_match_calico() {
        // libcalico-go `backend/model/block.go` and `block_affinity.go`: `/` in a CIDR becomes `-`.
        let c = net("10.0.0.0/26");
        assert_eq!(
            block_key(&c),
            "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26"
        );
        assert_eq!(
            block_affinity_key("host-a", &c),
            "/calico/ipam/v2/host/host-a/ipv4/block/10.0.0.0-26"
        );
        let v6 = net("fd80:24e2:f998:72d6::/122");
        assert_eq!(
            block_key(&v6),
            "/calico/ipam/v2/assignment/ipv6/block/fd80:24e2:f998:72d6::-122"
        );
        assert_eq!(
            typed_affinity_key(AffinityType::Virtual, "lb", &v6),
            "/calico/ipam/v2/virtual/lb/ipv6/block/fd80:24e2:f998:72d6::-122"
        );
    }

    #[test]
    fn keys_use_the_masked_cidr() {
        assert_eq!(
            block_key(&net("10.0.0.7/26")),
            "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26"
        );
    }

    #[test]
    fn block_keys_parse_back() {
        for s in [
            "10.0.0.0/26",
            "192.168.91.192/26",
            "fd80:24e2:f998:72d6::/122",
            "10.0.0.4/30",
        ] {
            let c = net(s);
            assert_eq!(parse_block_key(&block_key(&c)), Some(c));
        }
        assert_eq!(
            parse_block_key("/calico/ipam/v2/assignment/ipv6/block/10.0.0.0-26"),
            None
        );
        assert_eq!(
            parse_block_key("/calico/ipam/v2/assignment/ipv4/block/junk"),
            None
        );
        assert_eq!(parse_block_key("/calico/ipam/v2/handle/x"), None);
    }

    #[test]
    fn affinity_keys_parse_back() {
        let c = net("fd80:24e2:f998:72d6::40/122");
        let k = block_affinity_key("my-host", &c);
        assert_eq!(
            parse_block_affinity_key(&k),
            Some(("my-host".to_string(), c))
        );
        assert!(k.starts_with(&host_affinities_prefix("my-host", IpFamily::V6)));
        assert!(k.starts_with(&host_all_affinities_prefix("my-host")));
        let v = typed_affinity_key(AffinityType::Virtual, "my-host", &c);
        assert_eq!(parse_block_affinity_key(&v), None);
        assert_eq!(parse_affinity_key(&v).unwrap().kind, AffinityType::Virtual);
        assert_eq!(
            parse_block_affinity_key("/calico/ipam/v2/host//ipv4/block/10.0.0.0-26"),
            None
        );
        assert_eq!(
            parse_block_affinity_key("/calico/ipam/v2/host/h/ipv6/block/10.0.0.0-26"),
            None
        );
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            blocks_prefix(IpFamily::V4),
            "/calico/ipam/v2/assignment/ipv4/block/"
        );
        assert_eq!(
            host_affinities_prefix("h", IpFamily::V4),
            "/calico/ipam/v2/host/h/ipv4/block/"
        );
        assert_eq!(
            handle_key("libnetwork.abc"),
            "/calico/ipam/v2/handle/libnetwork.abc"
        );
        assert_eq!(
            parse_handle_key("/calico/ipam/v2/handle/libnetwork.abc"),
            Some("libnetwork.abc")
        );
        assert_eq!(network_key("n1"), "/calico/libnetwork/v1/networks/n1");
        assert_eq!(pool_key("p1"), "/calico/libnetwork/v1/pools/p1");
        assert!(network_key("n1").starts_with(&networks_prefix()));
        assert!(pool_key("p1").starts_with(&pools_prefix()));
    }

    #[test]
    fn resource_keys() {
        assert_eq!(
            workload_endpoint_key("libnetwork", "my--host-libnetwork-libnetwork-abc"),
            "/calico/resources/v3/projectcalico.org/workloadendpoints/libnetwork/my--host-libnetwork-libnetwork-abc"
        );
        assert_eq!(
            ip_pool_key("p"),
            "/calico/resources/v3/projectcalico.org/ippools/p"
        );
        assert_eq!(
            resource_prefix(PLURAL_PROFILES, None),
            "/calico/resources/v3/projectcalico.org/profiles/"
        );
        let k = parse_resource_key(&workload_endpoint_key("ns", "n")).unwrap();
        assert_eq!(k.plural, "workloadendpoints");
        assert_eq!(k.namespace.as_deref(), Some("ns"));
        assert_eq!(k.name, "n");
        let k = parse_resource_key(&node_key("n1")).unwrap();
        assert_eq!(
            (k.plural.as_str(), k.namespace, k.name.as_str()),
            ("nodes", None, "n1")
        );
        assert_eq!(
            parse_resource_key("/calico/resources/v3/projectcalico.org/nodes/"),
            None
        );
        assert_eq!(
            cluster_information_key("default"),
            "/calico/resources/v3/projectcalico.org/clusterinformations/default"
        );
        assert_eq!(
            profile_key("net1"),
            "/calico/resources/v3/projectcalico.org/profiles/net1"
        );
    }
}
