//! WorkloadEndpoint: one container interface as Felix sees it.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Resource, Spec};
use crate::error::{Error, Result};
use crate::model::keys;
use crate::model::names::workload_endpoint_name;
use crate::model::omitempty::{null_default, omitempty};
use crate::model::rule::NumOrString;

/// Label clientv3 adds to every WorkloadEndpoint: its namespace.
pub const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
/// Label clientv3 adds to every WorkloadEndpoint: its orchestrator.
pub const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
/// The orchestrator (and workload, and namespace) of Docker endpoints.
pub const ORCHESTRATOR_LIBNETWORK: &str = "libnetwork";

/// A WorkloadEndpoint (stored as `projectcalico.org/v3` although it is an internal type).
pub type WorkloadEndpoint = Resource<WorkloadEndpointSpec>;

/// WorkloadEndpointSpec; all fields `omitempty` except inside `ports` and `ipNATs` entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadEndpointSpec {
    /// `libnetwork`, `cni`, `k8s`, ...
    #[serde(skip_serializing_if = "omitempty")]
    pub orchestrator: String,
    /// Workload name (`libnetwork` for Docker).
    #[serde(skip_serializing_if = "omitempty")]
    pub workload: String,
    /// The node (host) name.
    #[serde(skip_serializing_if = "omitempty")]
    pub node: String,
    /// Container ID (CNI).
    #[serde(rename = "containerID", skip_serializing_if = "omitempty")]
    pub container_id: String,
    /// Pod name (k8s).
    #[serde(skip_serializing_if = "omitempty")]
    pub pod: String,
    /// Endpoint name (the Docker EndpointID for us).
    #[serde(skip_serializing_if = "omitempty")]
    pub endpoint: String,
    /// k8s service account.
    #[serde(skip_serializing_if = "omitempty")]
    pub service_account_name: String,
    /// Host networks (`/32` or `/128`).
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub ip_networks: Vec<String>,
    /// 1:1 NAT mappings.
    #[serde(
        rename = "ipNATs",
        deserialize_with = "null_default",
        skip_serializing_if = "omitempty"
    )]
    pub ip_nats: Vec<IpNat>,
    /// IPv4 gateway.
    #[serde(skip_serializing_if = "omitempty")]
    pub ipv4_gateway: String,
    /// IPv6 gateway.
    #[serde(skip_serializing_if = "omitempty")]
    pub ipv6_gateway: String,
    /// Profiles applied to the endpoint.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub profiles: Vec<String>,
    /// Host-side interface name (`cali...`).
    #[serde(skip_serializing_if = "omitempty")]
    pub interface_name: String,
    /// Container-side MAC.
    #[serde(skip_serializing_if = "omitempty")]
    pub mac: String,
    /// Named ports.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub ports: Vec<WorkloadEndpointPort>,
    /// Source prefixes the workload may spoof.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub allow_spoofed_source_prefixes: Vec<String>,
    /// QoS controls, verbatim.
    #[serde(skip_serializing_if = "omitempty")]
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

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
}
