//! Node: the host, as calico-node and we register it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Resource, Spec};
use crate::model::keys;
use crate::model::omitempty::{null_default, omitempty};

/// A Node (stored as `projectcalico.org/v3`); its top-level `status` is kept verbatim.
pub type Node = Resource<NodeSpec>;

/// NodeSpec, permissive: what we don't model stays in `extra`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NodeSpec {
    /// BGP settings.
    #[serde(skip_serializing_if = "omitempty")]
    pub bgp: Option<NodeBgpSpec>,
    /// VXLAN tunnel address (v4).
    #[serde(rename = "ipv4VXLANTunnelAddr", skip_serializing_if = "omitempty")]
    pub ipv4_vxlan_tunnel_addr: String,
    /// VXLAN tunnel MAC (v4).
    #[serde(rename = "vxlanTunnelMACAddr", skip_serializing_if = "omitempty")]
    pub vxlan_tunnel_mac_addr: String,
    /// VXLAN tunnel address (v6).
    #[serde(rename = "ipv6VXLANTunnelAddr", skip_serializing_if = "omitempty")]
    pub ipv6_vxlan_tunnel_addr: String,
    /// VXLAN tunnel MAC (v6).
    #[serde(rename = "vxlanTunnelMACAddrV6", skip_serializing_if = "omitempty")]
    pub vxlan_tunnel_mac_addr_v6: String,
    /// Orchestrator references.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub orch_refs: Vec<OrchRef>,
    /// WireGuard settings, verbatim.
    #[serde(skip_serializing_if = "omitempty")]
    pub wireguard: Option<Value>,
    /// Node addresses.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub addresses: Vec<NodeAddress>,
    /// Fields this version does not know (`interfaces`, ...), kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// NodeBGPSpec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NodeBgpSpec {
    /// AS number (number, or dotted string on input), verbatim.
    #[serde(skip_serializing_if = "omitempty")]
    pub as_number: Option<Value>,
    /// IPv4 address with prefix (`192.0.2.10/24`).
    #[serde(skip_serializing_if = "omitempty")]
    pub ipv4_address: String,
    /// IPv6 address with prefix.
    #[serde(skip_serializing_if = "omitempty")]
    pub ipv6_address: String,
    /// IPIP tunnel address.
    #[serde(rename = "ipv4IPIPTunnelAddr", skip_serializing_if = "omitempty")]
    pub ipv4_ipip_tunnel_addr: String,
    /// Route reflector cluster ID.
    #[serde(rename = "routeReflectorClusterID", skip_serializing_if = "omitempty")]
    pub route_reflector_cluster_id: String,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OrchRef: which orchestrator knows the node under which name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct OrchRef {
    /// The orchestrator's name for the node.
    #[serde(skip_serializing_if = "omitempty")]
    pub node_name: String,
    /// The orchestrator (always written).
    pub orchestrator: String,
}

/// NodeAddress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeAddress {
    /// The address (always written).
    pub address: String,
    /// Address type.
    #[serde(rename = "type", skip_serializing_if = "omitempty")]
    pub kind: String,
}

impl Spec for NodeSpec {
    const KIND: &'static str = "Node";
    const PLURAL: &'static str = keys::PLURAL_NODES;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_keeps_status_and_unknowns() {
        let src = r#"{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"my-host","labels":{"foo":"bar"}},"spec":{"bgp":{"asNumber":64512,"ipv4Address":"192.0.2.10/24","futureBgp":1},"orchRefs":[{"nodeName":"my-host","orchestrator":"k8s"}],"addresses":[{"address":"192.0.2.10/24","type":"CalicoNodeIP"}],"interfaces":[{"name":"eth0"}]},"status":{"podCIDRs":["10.0.0.0/24"]}}"#;
        let n = Node::from_json(src.as_bytes()).unwrap();
        assert_eq!(n.metadata.labels["foo"], "bar");
        assert_eq!(n.spec.bgp.as_ref().unwrap().ipv4_address, "192.0.2.10/24");
        assert_eq!(String::from_utf8(n.to_json().unwrap()).unwrap(), src);
    }
}
