//! The v3 resource envelope and the specs of the kinds we read or write, one file per kind
//! (WorkloadEndpoint, Profile, Node, ClusterInformation, Tier, IPReservation; IPPool is in
//! [`super::ippool`]).
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
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::gotime::{opt_time, trunc_secs};
use super::keys;
use super::omitempty::{null_default, omitempty};
use crate::error::{Error, Result};

mod cluster_information;
mod ip_reservation;
mod node;
mod profile;
mod tier;
mod workload_endpoint;

pub use cluster_information::{ClusterInformation, ClusterInformationSpec};
pub use ip_reservation::{IpReservation, IpReservationSpec};
pub use node::{Node, NodeAddress, NodeBgpSpec, NodeSpec, OrchRef};
pub use profile::{Profile, ProfileSpec};
pub use tier::{Tier, TierSpec, TIER_DEFAULT, TIER_KUBE_ADMIN, TIER_KUBE_BASELINE};
pub use workload_endpoint::{
    IpNat, WorkloadEndpoint, WorkloadEndpointPort, WorkloadEndpointSpec, LABEL_NAMESPACE,
    LABEL_ORCHESTRATOR, ORCHESTRATOR_LIBNETWORK,
};

/// The `apiVersion` of every v3 resource.
pub const API_VERSION: &str = "projectcalico.org/v3";

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
    #[serde(skip_serializing_if = "omitempty")]
    pub name: String,
    /// Namespace (namespaced kinds only).
    #[serde(skip_serializing_if = "omitempty")]
    pub namespace: String,
    /// Random UUID set on create.
    #[serde(skip_serializing_if = "omitempty")]
    pub uid: String,
    /// The datastore revision as a decimal string; read-only, never serialized.
    #[serde(skip_serializing)]
    pub resource_version: String,
    /// Creation time (RFC3339, UTC, seconds).
    #[serde(with = "opt_time", skip_serializing_if = "omitempty")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    /// Set when a k8s-style deletion is pending; IPAM skips such pools.
    #[serde(with = "opt_time", skip_serializing_if = "omitempty")]
    pub deletion_timestamp: Option<DateTime<Utc>>,
    /// Labels, stored verbatim.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations, stored verbatim.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
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
    #[serde(default, skip_serializing_if = "omitempty")]
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
        if self.kind == S::KIND && self.api_version == API_VERSION {
            super::encode(S::KIND, self)
        } else {
            let mut fixed = self.clone();
            fixed.kind = S::KIND.to_string();
            fixed.api_version = API_VERSION.to_string();
            super::encode(S::KIND, &fixed)
        }
    }

    /// Decodes a stored value; missing `kind`/`apiVersion` are filled in.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let mut r: Self = super::decode(S::KIND, bytes)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

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
    fn bad_json_names_what_failed() {
        let e = Profile::from_stored("/k/p", b"{", 1).unwrap_err();
        assert!(e.to_string().starts_with("decode /k/p: "), "{e}");
        assert!(matches!(e, Error::Json { .. }));
    }
}
