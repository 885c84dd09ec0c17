//! The v3 resource envelope and the specs of the kinds we read or write.
//!
//! A stored resource is `{"kind":..,"apiVersion":"projectcalico.org/v3","metadata":{..},
//! "spec":{..}}` (plus a top-level `status` for some kinds). [`Resource<S>`] is that envelope
//! for any [`Spec`]; unknown fields are kept at every level so a rewrite preserves them.
//!
//! `metadata.resourceVersion` is never written (clientv3 blanks it before storing); callers
//! fill it from the datastore revision with [`Resource::from_stored`].

use std::collections::BTreeMap;
use std::fmt::Debug;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::keys;
use super::names::workload_endpoint_name;
use super::rule::{EntityRule, NumOrString, Rule};
use super::serde_util::{null_default, opt_time, trunc_secs};
use crate::error::{Error, Result};

/// The `apiVersion` of every v3 resource.
pub const API_VERSION: &str = "projectcalico.org/v3";

/// Label clientv3 adds to every WorkloadEndpoint: its namespace.
pub const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
/// Label clientv3 adds to every WorkloadEndpoint: its orchestrator.
pub const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
/// The orchestrator (and workload, and namespace) of Docker endpoints.
pub const ORCHESTRATOR_LIBNETWORK: &str = "libnetwork";

/// A resource spec type: names its kind and where it is stored.
pub trait Spec: Serialize + DeserializeOwned + Default + Clone + PartialEq + Debug {
    /// The `kind` field (`IPPool`).
    const KIND: &'static str;
    /// The plural used in keys (`ippools`).
    const PLURAL: &'static str;
    /// Whether keys carry a namespace segment.
    const NAMESPACED: bool = false;
}

/// k8s ObjectMeta as Calico stores it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Resource name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Namespace (namespaced kinds only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Random UUID set on create.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The datastore revision as a decimal string; read-only, never serialized.
    #[serde(skip_serializing)]
    pub resource_version: String,
    /// Creation time (RFC3339, UTC, seconds).
    #[serde(with = "opt_time", skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    /// Set when a k8s-style deletion is pending; IPAM skips such pools.
    #[serde(with = "opt_time", skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<DateTime<Utc>>,
    /// Labels, stored verbatim.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// Annotations, stored verbatim.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ObjectMeta {
    /// Metadata with just a name.
    pub fn named(name: impl Into<String>) -> Self {
        ObjectMeta {
            name: name.into(),
            ..Default::default()
        }
    }

    /// What clientv3 does on Create: set `uid` (UUID v4) and `creationTimestamp` (now, whole
    /// seconds) when missing.
    pub fn stamp_create(&mut self) {
        self.stamp_create_at(Utc::now());
    }

    /// [`ObjectMeta::stamp_create`] with an explicit clock.
    pub fn stamp_create_at(&mut self, now: DateTime<Utc>) {
        if self.uid.is_empty() {
            self.uid = uuid::Uuid::new_v4().to_string();
        }
        if self.creation_timestamp.is_none() {
            self.creation_timestamp = Some(trunc_secs(now));
        }
    }

    /// The revision parsed from `resourceVersion`, if set.
    pub fn revision(&self) -> Option<i64> {
        self.resource_version.parse().ok()
    }
}

/// The v3 envelope around a spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource<S> {
    /// The kind (`IPPool`).
    #[serde(default)]
    pub kind: String,
    /// Always `projectcalico.org/v3`.
    #[serde(default)]
    pub api_version: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: S,
    /// Top-level status (IPPool, Node), kept verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl<S: Spec> Resource<S> {
    /// A cluster-scoped resource.
    pub fn new(name: impl Into<String>, spec: S) -> Self {
        Resource {
            kind: S::KIND.to_string(),
            api_version: API_VERSION.to_string(),
            metadata: ObjectMeta::named(name),
            spec,
            status: None,
            extra: Map::new(),
        }
    }

    /// A namespaced resource.
    pub fn namespaced(namespace: impl Into<String>, name: impl Into<String>, spec: S) -> Self {
        let mut r = Self::new(name, spec);
        r.metadata.namespace = namespace.into();
        r
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The key this resource is stored under.
    pub fn key(&self) -> Result<String> {
        let name = &self.metadata.name;
        if name.is_empty() {
            return Err(Error::invalid(format!(
                "build key for {}: name is empty",
                S::KIND
            )));
        }
        if S::NAMESPACED {
            let ns = &self.metadata.namespace;
            if ns.is_empty() {
                return Err(Error::invalid(format!(
                    "build key for {} {name}: namespace is empty",
                    S::KIND
                )));
            }
            Ok(keys::resource_key(S::PLURAL, Some(ns), name))
        } else {
            Ok(keys::resource_key(S::PLURAL, None, name))
        }
    }

    /// The key of a resource by name (`namespace` is used for namespaced kinds only).
    pub fn key_for(namespace: &str, name: &str) -> String {
        let ns = S::NAMESPACED.then_some(namespace);
        keys::resource_key(S::PLURAL, ns, name)
    }

    /// The list prefix of this kind (in `namespace`, for namespaced kinds, if given).
    pub fn list_prefix(namespace: Option<&str>) -> String {
        keys::resource_prefix(S::PLURAL, namespace.filter(|_| S::NAMESPACED))
    }

    /// The JSON to store: `kind`/`apiVersion` always set, `resourceVersion` never written.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let encode = |r: &Self| {
            serde_json::to_vec(r).map_err(|e| Error::msg(format!("encode {}: {e}", S::KIND)))
        };
        if self.kind == S::KIND && self.api_version == API_VERSION {
            encode(self)
        } else {
            let mut fixed = self.clone();
            fixed.kind = S::KIND.to_string();
            fixed.api_version = API_VERSION.to_string();
            encode(&fixed)
        }
    }

    /// Decodes a stored value; missing `kind`/`apiVersion` are filled in.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let mut r: Self = serde_json::from_slice(bytes).map_err(|e| Error::json(S::KIND, e))?;
        if r.kind.is_empty() {
            r.kind = S::KIND.to_string();
        }
        if r.api_version.is_empty() {
            r.api_version = API_VERSION.to_string();
        }
        Ok(r)
    }

    /// Decodes a value read from `key` and sets `resourceVersion` from its revision.
    pub fn from_stored(key: &str, bytes: &[u8], revision: i64) -> Result<Self> {
        let mut r: Self = Self::from_json(bytes).map_err(|e| match e {
            Error::Json { source, .. } => Error::json(key, source),
            other => other,
        })?;
        r.metadata.resource_version = revision.to_string();
        Ok(r)
    }
}

// ---------------- WorkloadEndpoint ----------------

/// A WorkloadEndpoint (stored as `projectcalico.org/v3` although it is an internal type).
pub type WorkloadEndpoint = Resource<WorkloadEndpointSpec>;

/// WorkloadEndpointSpec; all fields `omitempty` except inside `ports` and `ipNATs` entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadEndpointSpec {
    /// `libnetwork`, `cni`, `k8s`, ...
    #[serde(skip_serializing_if = "String::is_empty")]
    pub orchestrator: String,
    /// Workload name (`libnetwork` for Docker).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub workload: String,
    /// The node (host) name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Container ID (CNI).
    #[serde(rename = "containerID", skip_serializing_if = "String::is_empty")]
    pub container_id: String,
    /// Pod name (k8s).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// Endpoint name (the Docker EndpointID for us).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// k8s service account.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,
    /// Host networks (`/32` or `/128`).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_networks: Vec<String>,
    /// 1:1 NAT mappings.
    #[serde(
        rename = "ipNATs",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_nats: Vec<IpNat>,
    /// IPv4 gateway.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ipv4_gateway: String,
    /// IPv6 gateway.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ipv6_gateway: String,
    /// Profiles applied to the endpoint.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub profiles: Vec<String>,
    /// Host-side interface name (`cali...`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub interface_name: String,
    /// Container-side MAC.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Named ports.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<WorkloadEndpointPort>,
    /// Source prefixes the workload may spoof.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allow_spoofed_source_prefixes: Vec<String>,
    /// QoS controls, verbatim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos_controls: Option<Value>,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A 1:1 NAT entry; both fields are always written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpNat {
    /// The workload's address.
    #[serde(rename = "internalIP")]
    pub internal_ip: String,
    /// The external address.
    #[serde(rename = "externalIP")]
    pub external_ip: String,
}

/// A named port; all fields are always written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadEndpointPort {
    /// Port name.
    pub name: String,
    /// Protocol name or number.
    pub protocol: NumOrString,
    /// Port number.
    pub port: u16,
    /// Host port (0 for none).
    pub host_port: u16,
    /// Host IP for the host port.
    #[serde(rename = "hostIP")]
    pub host_ip: String,
}

impl Spec for WorkloadEndpointSpec {
    const KIND: &'static str = "WorkloadEndpoint";
    const PLURAL: &'static str = keys::PLURAL_WORKLOAD_ENDPOINTS;
    const NAMESPACED: bool = true;
}

impl WorkloadEndpointSpec {
    /// The Calico name of this endpoint, from node/orchestrator/workload/endpoint
    /// (`pod` for k8s, `containerID` for cni).
    pub fn calico_name(&self) -> Result<String> {
        let workload = match self.orchestrator.as_str() {
            "k8s" => &self.pod,
            "cni" => &self.container_id,
            _ => &self.workload,
        };
        workload_endpoint_name(&self.node, &self.orchestrator, workload, &self.endpoint)
    }

    /// `ipNetworks` parsed.
    pub fn ip_nets(&self) -> Result<Vec<IpNet>> {
        self.ip_networks
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .map_err(|e| Error::invalid(format!("parse ipNetwork {s:?}: {e}")))
            })
            .collect()
    }
}

impl Resource<WorkloadEndpointSpec> {
    /// Sets the two labels clientv3 adds on every WEP create and update
    /// (`projectcalico.org/namespace`, `projectcalico.org/orchestrator`).
    pub fn apply_calico_labels(&mut self) {
        let ns = self.metadata.namespace.clone();
        let orch = self.spec.orchestrator.clone();
        self.metadata.labels.insert(LABEL_NAMESPACE.to_string(), ns);
        self.metadata
            .labels
            .insert(LABEL_ORCHESTRATOR.to_string(), orch);
    }

    /// Checks what Felix needs to accept the endpoint: a namespace, a name equal to the
    /// Calico name of the spec (4 dash-separated parts), host-sized `ipNetworks`, a valid
    /// `interfaceName` and a parseable `mac`.
    pub fn validate(&self) -> Result<()> {
        let name = &self.metadata.name;
        let fail =
            |why: String| Error::invalid(format!("validate workload endpoint {name}: {why}"));
        if self.metadata.namespace.is_empty() {
            return Err(fail("namespace is empty".into()));
        }
        let expected = self.spec.calico_name().map_err(|e| fail(e.to_string()))?;
        if &expected != name {
            return Err(fail(format!(
                "name does not match spec (expected {expected})"
            )));
        }
        for net in self.spec.ip_nets().map_err(|e| fail(e.to_string()))? {
            if net.prefix_len() != net.max_prefix_len() {
                return Err(fail(format!("ipNetwork {net} is not a /32 or /128")));
            }
        }
        let ifname = &self.spec.interface_name;
        let ifname_ok = ifname == "*"
            || (!ifname.is_empty()
                && ifname.len() <= 15
                && ifname
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')));
        if !ifname_ok {
            return Err(fail(format!("invalid interfaceName {ifname:?}")));
        }
        let mac = &self.spec.mac;
        if !mac.is_empty() && !is_mac(mac) {
            return Err(fail(format!("invalid mac {mac:?}")));
        }
        Ok(())
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    matches!(parts.len(), 6 | 8 | 20)
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

// ---------------- Profile ----------------

/// A Profile.
pub type Profile = Resource<ProfileSpec>;

/// ProfileSpec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProfileSpec {
    /// Inbound rules.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ingress: Vec<Rule>,
    /// Outbound rules.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub egress: Vec<Rule>,
    /// Labels applied to every endpoint using the profile.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels_to_apply: BTreeMap<String, String>,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Spec for ProfileSpec {
    const KIND: &'static str = "Profile";
    const PLURAL: &'static str = keys::PLURAL_PROFILES;
}

impl ProfileSpec {
    /// The per-network profile Calico's CNI plugin writes: members may talk to each other
    /// and anywhere out. `{"ingress":[{"action":"Allow","source":{"selector":"has(<name>)"}}],
    /// "egress":[{"action":"Allow"}],"labelsToApply":{"<name>":""}}`.
    pub fn for_network(name: &str) -> Self {
        let mut allow_members = Rule::action("Allow");
        allow_members.source = EntityRule::selector(format!("has({name})"));
        ProfileSpec {
            ingress: vec![allow_members],
            egress: vec![Rule::action("Allow")],
            labels_to_apply: BTreeMap::from([(name.to_string(), String::new())]),
            extra: Map::new(),
        }
    }
}

// ---------------- Node ----------------

/// A Node (stored as `projectcalico.org/v3`); its top-level `status` is kept verbatim.
pub type Node = Resource<NodeSpec>;

/// NodeSpec, permissive: what we don't model stays in `extra`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NodeSpec {
    /// BGP settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBgpSpec>,
    /// VXLAN tunnel address (v4).
    #[serde(
        rename = "ipv4VXLANTunnelAddr",
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv4_vxlan_tunnel_addr: String,
    /// VXLAN tunnel MAC (v4).
    #[serde(
        rename = "vxlanTunnelMACAddr",
        skip_serializing_if = "String::is_empty"
    )]
    pub vxlan_tunnel_mac_addr: String,
    /// VXLAN tunnel address (v6).
    #[serde(
        rename = "ipv6VXLANTunnelAddr",
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv6_vxlan_tunnel_addr: String,
    /// VXLAN tunnel MAC (v6).
    #[serde(
        rename = "vxlanTunnelMACAddrV6",
        skip_serializing_if = "String::is_empty"
    )]
    pub vxlan_tunnel_mac_addr_v6: String,
    /// Orchestrator references.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub orch_refs: Vec<OrchRef>,
    /// WireGuard settings, verbatim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<Value>,
    /// Node addresses.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_number: Option<Value>,
    /// IPv4 address with prefix (`192.0.2.10/24`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ipv4_address: String,
    /// IPv6 address with prefix.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ipv6_address: String,
    /// IPIP tunnel address.
    #[serde(
        rename = "ipv4IPIPTunnelAddr",
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv4_ipip_tunnel_addr: String,
    /// Route reflector cluster ID.
    #[serde(
        rename = "routeReflectorClusterID",
        skip_serializing_if = "String::is_empty"
    )]
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
    #[serde(skip_serializing_if = "String::is_empty")]
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
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

impl Spec for NodeSpec {
    const KIND: &'static str = "Node";
    const PLURAL: &'static str = keys::PLURAL_NODES;
}

// ---------------- ClusterInformation ----------------

/// ClusterInformation (Felix waits for `default` with `datastoreReady: true`).
pub type ClusterInformation = Resource<ClusterInformationSpec>;

/// ClusterInformationSpec; all fields `omitempty`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClusterInformationSpec {
    /// Random cluster GUID.
    #[serde(rename = "clusterGUID", skip_serializing_if = "String::is_empty")]
    pub cluster_guid: String,
    /// Comma-separated cluster types.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster_type: String,
    /// Calico version string.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub calico_version: String,
    /// Whether the datastore is ready for Felix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore_ready: Option<bool>,
    /// Product variant.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub variant: String,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Spec for ClusterInformationSpec {
    const KIND: &'static str = "ClusterInformation";
    const PLURAL: &'static str = keys::PLURAL_CLUSTER_INFORMATIONS;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    const WEP: &str = r#"{"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3","metadata":{"name":"my--host-libnetwork-libnetwork-0123456789ab","namespace":"libnetwork","uid":"5f0c2d4e-0000-4000-8000-000000000001","resourceVersion":"42","creationTimestamp":"2025-06-01T12:00:00Z","labels":{"projectcalico.org/namespace":"libnetwork","projectcalico.org/orchestrator":"libnetwork"}},"spec":{"orchestrator":"libnetwork","workload":"libnetwork","node":"my-host","endpoint":"0123456789ab","ipNetworks":["192.168.91.192/32"],"profiles":["net1"],"interfaceName":"cali0123456789a","mac":"ee:ab:01:02:03:04"}}"#;

    #[test]
    fn wep_round_trips_without_resource_version() {
        let w = WorkloadEndpoint::from_stored("/k", WEP.as_bytes(), 42).unwrap();
        assert_eq!(w.metadata.resource_version, "42");
        assert_eq!(w.metadata.revision(), Some(42));
        assert_eq!(w.spec.ip_networks, vec!["192.168.91.192/32"]);
        w.validate().unwrap();
        let out = String::from_utf8(w.to_json().unwrap()).unwrap();
        assert_eq!(out, WEP.replace(r#""resourceVersion":"42","#, ""));
        assert!(!out.contains("resourceVersion"));
        assert_eq!(
            w.key().unwrap(),
            "/calico/resources/v3/projectcalico.org/workloadendpoints/libnetwork/my--host-libnetwork-libnetwork-0123456789ab"
        );
    }

    #[test]
    fn unknown_fields_survive_a_rewrite() {
        let src = json!({
            "kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "n", "namespace": "libnetwork", "generation": 3, "ownerReferences": [{"x": 1}]},
            "spec": {"node": "h", "futureSpec": {"a": [1, 2]}, "ports": [{"name": "http", "protocol": "TCP", "port": 80, "hostPort": 0, "hostIP": ""}]},
            "futureTop": true
        });
        let mut w: WorkloadEndpoint = serde_json::from_value(src.clone()).unwrap();
        w.spec.mac = "ee:ee:ee:ee:ee:ee".into();
        let back: Value = serde_json::from_slice(&w.to_json().unwrap()).unwrap();
        assert_eq!(back["metadata"]["generation"], 3);
        assert_eq!(
            back["metadata"]["ownerReferences"],
            src["metadata"]["ownerReferences"]
        );
        assert_eq!(back["spec"]["futureSpec"], src["spec"]["futureSpec"]);
        assert_eq!(back["futureTop"], true);
        assert_eq!(back["spec"]["ports"], src["spec"]["ports"]);
        assert_eq!(back["spec"]["mac"], "ee:ee:ee:ee:ee:ee");
    }

    #[test]
    fn ports_and_nats_write_every_field() {
        let spec = WorkloadEndpointSpec {
            ports: vec![WorkloadEndpointPort::default()],
            ip_nats: vec![IpNat::default()],
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&spec).unwrap(),
            r#"{"ipNATs":[{"internalIP":"","externalIP":""}],"ports":[{"name":"","protocol":0,"port":0,"hostPort":0,"hostIP":""}]}"#
        );
    }

    #[test]
    fn wep_validation_catches_what_felix_drops() {
        let mut w: WorkloadEndpoint = WorkloadEndpoint::from_json(WEP.as_bytes()).unwrap();
        w.metadata.name = "my-host-libnetwork-libnetwork-0123456789ab".into();
        assert!(w.validate().is_err());
        let mut w: WorkloadEndpoint = WorkloadEndpoint::from_json(WEP.as_bytes()).unwrap();
        w.spec.ip_networks = vec!["192.168.91.192/26".into()];
        assert!(w.validate().is_err());
        let mut w: WorkloadEndpoint = WorkloadEndpoint::from_json(WEP.as_bytes()).unwrap();
        w.spec.interface_name = "cali0123456789abcdef".into();
        assert!(w.validate().is_err());
        let mut w: WorkloadEndpoint = WorkloadEndpoint::from_json(WEP.as_bytes()).unwrap();
        w.metadata.namespace.clear();
        assert!(w.validate().is_err());
        assert!(w.key().is_err());
    }

    #[test]
    fn labels_are_applied() {
        let spec = WorkloadEndpointSpec {
            orchestrator: ORCHESTRATOR_LIBNETWORK.into(),
            ..Default::default()
        };
        let mut w = WorkloadEndpoint::namespaced("libnetwork", "x", spec);
        w.apply_calico_labels();
        assert_eq!(w.metadata.labels[LABEL_NAMESPACE], "libnetwork");
        assert_eq!(w.metadata.labels[LABEL_ORCHESTRATOR], "libnetwork");
    }

    #[test]
    fn network_profile_shape() {
        let mut p = Profile::new("net1", ProfileSpec::for_network("net1"));
        p.metadata.uid = "u".into();
        p.metadata.creation_timestamp = Some(Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap());
        assert_eq!(
            String::from_utf8(p.to_json().unwrap()).unwrap(),
            r#"{"kind":"Profile","apiVersion":"projectcalico.org/v3","metadata":{"name":"net1","uid":"u","creationTimestamp":"2025-06-01T12:00:00Z"},"spec":{"ingress":[{"action":"Allow","source":{"selector":"has(net1)"}}],"egress":[{"action":"Allow"}],"labelsToApply":{"net1":""}}}"#
        );
        assert_eq!(
            p.key().unwrap(),
            "/calico/resources/v3/projectcalico.org/profiles/net1"
        );
        // The older `{}` form parses to the same profile.
        let old = r#"{"kind":"Profile","apiVersion":"projectcalico.org/v3","metadata":{"name":"net1"},"spec":{"ingress":[{"action":"Allow","source":{"selector":"has(net1)"},"destination":{}}],"egress":[{"action":"Allow","source":{},"destination":{}}],"labelsToApply":{"net1":""}}}"#;
        assert_eq!(
            Profile::from_json(old.as_bytes()).unwrap().spec,
            ProfileSpec::for_network("net1")
        );
    }

    #[test]
    fn stamp_create_fills_only_missing() {
        let now = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap()
            + chrono::Duration::milliseconds(700);
        let mut m = ObjectMeta::named("x");
        m.stamp_create_at(now);
        assert_eq!(m.uid.len(), 36);
        assert_eq!(
            serde_json::to_value(&m).unwrap()["creationTimestamp"],
            "2025-06-01T12:00:00Z"
        );
        let (uid, ts) = (m.uid.clone(), m.creation_timestamp);
        m.stamp_create_at(now + chrono::Duration::hours(1));
        assert_eq!((m.uid, m.creation_timestamp), (uid, ts));
    }

    #[test]
    fn node_keeps_status_and_unknowns() {
        let src = r#"{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"my-host","labels":{"foo":"bar"}},"spec":{"bgp":{"asNumber":64512,"ipv4Address":"192.0.2.10/24","futureBgp":1},"orchRefs":[{"nodeName":"my-host","orchestrator":"k8s"}],"addresses":[{"address":"192.0.2.10/24","type":"CalicoNodeIP"}],"interfaces":[{"name":"eth0"}]},"status":{"podCIDRs":["10.0.0.0/24"]}}"#;
        let n = Node::from_json(src.as_bytes()).unwrap();
        assert_eq!(n.metadata.labels["foo"], "bar");
        assert_eq!(n.spec.bgp.as_ref().unwrap().ipv4_address, "192.0.2.10/24");
        assert_eq!(String::from_utf8(n.to_json().unwrap()).unwrap(), src);
    }

    #[test]
    fn cluster_information_shape() {
        let ci = ClusterInformation::new(
            "default",
            ClusterInformationSpec {
                cluster_guid: "abc".into(),
                cluster_type: "docker".into(),
                calico_version: "v3.30.0".into(),
                datastore_ready: Some(true),
                ..Default::default()
            },
        );
        assert_eq!(
            String::from_utf8(ci.to_json().unwrap()).unwrap(),
            r#"{"kind":"ClusterInformation","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"clusterGUID":"abc","clusterType":"docker","calicoVersion":"v3.30.0","datastoreReady":true}}"#
        );
        assert_eq!(ci.key().unwrap(), keys::cluster_information_key("default"));
    }

    #[test]
    fn bad_json_names_what_failed() {
        let e = Profile::from_stored("/k/p", b"{", 1).unwrap_err();
        assert!(e.to_string().starts_with("decode /k/p: "), "{e}");
        assert!(matches!(e, Error::Json { .. }));
    }
}
