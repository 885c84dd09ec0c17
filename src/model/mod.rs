//! Calico's data model, in Calico's exact JSON.
//!
//! Everything here is pure data: no I/O, no datastore calls. The types serialize to the
//! bytes Calico's Go code (`libcalico-go`) writes and read everything it may have written,
//! including legacy shapes, so that Felix, calicoctl and calico-node interoperate with us.
//!
//! - [`keys`]: etcd key paths (v3 resources, IPAM blocks/affinities/handles/config, and our
//!   own plugin-private records) with parsers for the ones we list.
//! - [`resources`]: the v3 envelope ([`Resource`], [`ObjectMeta`]) and the specs for
//!   WorkloadEndpoint, Profile, Node, ClusterInformation and IPReservation; [`rule`] holds
//!   policy rules.
//! - [`ippool`]: IPPool with clientv3's defaulting and validation.
//! - [`block`]: [`AllocationBlock`], the per-CIDR allocation table, with assign/release.
//! - [`affinity`]: [`BlockAffinity`], which host a block belongs to; [`handle`]: [`IpamHandle`],
//!   the per-owner address count; [`ipam_config`]: [`IpamConfig`], the global IPAM settings.
//! - [`libnetwork`]: the plugin's own records, WorkloadEndpoint namespace, handle prefix
//!   and veth names.
//! - [`names`]: WorkloadEndpoint names and DNS-1123 resource names.
//! - [`selector`]: the label selector language used by pool `nodeSelector`s.
//! - Go's time formats: [`format_time`]/[`parse_time`] for k8s `metav1.Time` (RFC3339),
//!   [`go_time_string`]/[`parse_go_time`] for `time.Time.String()` (the `timestamp` IPAM
//!   attribute).
//!
//! # JSON fidelity
//! - Unknown fields are kept (`#[serde(flatten)] extra`) at the envelope, metadata, spec and
//!   IPAM levels, so a read-modify-write never drops what a newer Calico added.
//! - `omitempty` fields are skipped when empty; fields Go always writes are always written.
//! - Field names come from one `rename_all = "camelCase"` per struct; an explicit `rename`
//!   marks each tag that is not plain camelCase (Go acronyms such as `containerID`, snake_case
//!   tags such as `handle_id`). Absent fields read as Go's zero values (`#[serde(default)]` on
//!   the struct; `IpamConfig` keeps per-field defaults, since its `Default` is the absent-key
//!   config).
//! - `u64` sequence numbers never pass through `f64`.
//! - `metadata.resourceVersion` is never written; callers fill it from the revision on read.

pub mod affinity;
pub mod block;
mod gotime;
pub mod handle;
pub mod ipam_config;
pub mod ippool;
pub mod keys;
pub mod libnetwork;
pub mod names;
mod omitempty;
pub mod resources;
pub mod rule;
pub mod selector;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

pub use affinity::{AffinityState, BlockAffinity};
pub use block::{AllocationAttribute, AllocationBlock, BlockError, ReleaseOptions, Released};
pub use gotime::{format_time, go_time_string, parse_go_time, parse_time};
pub use handle::IpamHandle;
pub use ipam_config::IpamConfig;
pub use ippool::{IpPool, IpPoolSpec};
pub use names::{label_key, resource_name_from, validate_resource_name, workload_endpoint_name};
pub use resources::{
    ClusterInformation, ClusterInformationSpec, IpReservation, IpReservationSpec, Node, NodeSpec,
    ObjectMeta, Profile, ProfileSpec, Resource, Spec, Tier, TierSpec, WorkloadEndpoint,
    WorkloadEndpointSpec, API_VERSION,
};
pub use rule::{EntityRule, NumOrString, Rule};
pub use selector::Selector;

/// The stored JSON of a value; a failure reads `encode <what>: <cause>`.
fn encode<T: Serialize>(what: impl fmt::Display, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::msg(format!("encode {what}: {e}")))
}

/// A value from its stored JSON; a failure is an [`Error::Json`] naming `what`.
fn decode<T: DeserializeOwned>(what: impl fmt::Display, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::json(what, e))
}

/// An IP address family, as used in key paths (`ipv4`/`ipv6`) and pool defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of a network.
    pub fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => IpFamily::V4,
            IpNet::V6(_) => IpFamily::V6,
        }
    }

    /// The family of an address.
    pub fn of_addr(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// 4 or 6, as in Calico's `ipv%d` path segment.
    pub fn number(self) -> u8 {
        match self {
            IpFamily::V4 => 4,
            IpFamily::V6 => 6,
        }
    }

    /// The address width in bits (32 or 128).
    pub fn max_prefix_len(self) -> u8 {
        match self {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }

    /// Calico's default IPAM block size for the family (26 or 122).
    pub fn default_block_size(self) -> u8 {
        match self {
            IpFamily::V4 => 26,
            IpFamily::V6 => 122,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ipv{}", self.number())
    }
}

/// Annotation on a Node naming the machine (`/etc/machine-id`) that runs the plugin under
/// that node name: two hosts sharing one name (cloned VMs) would delete each other's
/// endpoints in their clean-up, so a mismatch turns destructive clean-up off.
pub const MACHINE_ID_ANNOTATION: &str = "libnetwork.projectcalico.org/machine-id";

/// This machine's ID (`/etc/machine-id`, else D-Bus's copy), if it has one.
pub fn machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
