//! The plugin's own facts about what it stores and names: its records under
//! `/calico/libnetwork/v1/`, the WorkloadEndpoint namespace, the IPAM handle prefix and the
//! names of the veths it creates. One home, so that the driver, the reconciliation and the
//! operator commands agree on them.

use serde::{Deserialize, Serialize};

/// Namespace of the plugin's WorkloadEndpoints.
pub const WEP_NAMESPACE: &str = "libnetwork";

/// Prefix of the IPAM handles the plugin records its addresses under.
pub const HANDLE_PREFIX: &str = "libnetwork.";

/// WorkloadEndpoint annotation naming the container sandbox (Docker's `SandboxKey`) the
/// endpoint joined: the endpoints of one container on several networks share it, so that
/// its addresses count as members of each of those networks (Docker's reach). An annotation,
/// not a label: Calico's policy never selects on it, and it survives calicoctl round trips.
pub const SANDBOX_ANNOTATION: &str = "calico-libnetwork/sandbox";

/// WorkloadEndpoint annotation, and IPAM allocation attribute, with the name of the container
/// an endpoint belongs to, where Docker says it (29 and later, in RequestAddress's options).
pub const CONTAINER_ANNOTATION: &str = "calico-libnetwork/container";

/// The allocation attribute (Calico's `attrSecondary`) naming the container, beside Calico's
/// own `node` and `timestamp`.
pub const CONTAINER_ATTRIBUTE: &str = "container";

/// The container's name from Docker's RequestAddress options (`com.docker.network.endpoint.name`,
/// Docker 29+), when it is one Docker could have made: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most
/// 255 characters, a leading `/` dropped. Anything else is ignored (it only names things).
pub fn container_name(options: &std::collections::BTreeMap<String, String>) -> Option<String> {
    let raw = options.get("com.docker.network.endpoint.name")?;
    let name = raw.strip_prefix('/').unwrap_or(raw);
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    ok.then(|| name.to_string())
}

/// Prefix of host-side veth names (Calico's `cali` interface prefix, which Felix matches).
pub const HOST_VETH_PREFIX: &str = "cali";

/// Prefix of the temporary peer's name until Docker moves it into the container.
pub const TEMP_VETH_PREFIX: &str = "temp";

/// The profile a network falls back to while its name is unknown: named after its ID.
pub fn fallback_profile(network_id: &str) -> String {
    super::resource_name_from(network_id)
}

/// The profile of a network named `name` (the same name on every host gives one profile).
pub fn named_profile(name: &str) -> String {
    super::resource_name_from(name)
}

/// A new IPAM handle ID for one address request.
pub fn new_handle() -> String {
    format!("{HANDLE_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

/// What the plugin stores about a Docker network at `/calico/libnetwork/v1/networks/<id>`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRecord {
    /// Docker's network ID.
    pub network_id: String,
    /// The Calico profile its endpoints carry (empty when profiles are off): named after
    /// the network ID until the network's name is learned from Docker, then after the name.
    pub profile: String,
    /// The Docker network name, once learned from the Docker API (empty until then, and in
    /// records written before names were learned).
    #[serde(default)]
    pub name: String,
    /// IPv4 pools from IPAM (`0.0.0.0/0` for all of Calico's pools).
    pub ipv4_pools: Vec<String>,
    /// IPv6 pools from IPAM.
    pub ipv6_pools: Vec<String>,
}

/// What the plugin stores about a pool requested with `--subnet`, at
/// `/calico/libnetwork/v1/pools/<name>`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PoolRecord {
    /// The subnet.
    pub cidr: String,
    /// Whether the plugin created the IPPool (and so deletes it with the last reference).
    #[serde(rename = "createdByPlugin")]
    pub created_by_plugin: bool,
    /// How many Docker networks use it.
    pub references: u64,
}

/// A Docker object ID: 64 hex digits. Only those name the plugin's endpoints and veths, so
/// a veth name made from one can never split a character or come out short.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DockerId(String);

impl DockerId {
    /// Checks `id`; `what` names it in the error (`invalid NetworkID '...'`).
    pub fn parse(what: &str, id: &str) -> crate::Result<DockerId> {
        if is_docker_id(id) {
            Ok(DockerId(id.to_string()))
        } else {
            Err(crate::Error::invalid(format!(
                "invalid {what} '{}': expected 64 hex characters",
                // At most 80 characters of whatever was sent reach the error.
                id.escape_default()
                    .to_string()
                    .chars()
                    .take(80)
                    .collect::<String>()
            )))
        }
    }

    /// The ID as Docker wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Host-side veth name: `cali` + the first 11 hex digits.
    pub fn host_veth(&self) -> String {
        format!("{HOST_VETH_PREFIX}{}", &self.0[..11])
    }

    /// The temporary peer Docker moves into the container: `temp` + the first 11 hex digits.
    pub fn temp_veth(&self) -> String {
        format!("{TEMP_VETH_PREFIX}{}", &self.0[..11])
    }
}

impl std::fmt::Display for DockerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `id` is a Docker ID (64 hex digits): only those name our endpoints and veths.
pub fn is_docker_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The first 11 characters of an endpoint ID (a stored string may be anything, so never a
/// byte slice that could split a character).
fn id_part(endpoint_id: &str) -> String {
    endpoint_id.chars().take(11).collect()
}

/// The first 12 characters of an ID, for logs and messages (Docker's short form); the whole
/// string when shorter or when 12 bytes would split a character.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Host-side veth name for a stored endpoint ID: `cali` + its first 11 characters.
pub fn host_veth_name(endpoint_id: &str) -> String {
    format!("{HOST_VETH_PREFIX}{}", id_part(endpoint_id))
}

/// The temporary peer's name for a stored endpoint ID.
pub fn temp_veth_name(endpoint_id: &str) -> String {
    format!("{TEMP_VETH_PREFIX}{}", id_part(endpoint_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_id_names_its_veths() {
        let id = "0123456789abcdef".repeat(4);
        let d = DockerId::parse("EndpointID", &id).unwrap();
        assert_eq!(d.host_veth(), "cali0123456789a");
        assert_eq!(d.temp_veth(), "temp0123456789a");
        assert_eq!(d.host_veth(), host_veth_name(&id));
        assert_eq!(d.temp_veth(), temp_veth_name(&id));
    }

    #[test]
    fn docker_id_refuses_what_is_not_64_hex_digits() {
        for bad in ["", "abc", &"g".repeat(64), &"é".repeat(32), &"a".repeat(65)] {
            let e = DockerId::parse("NetworkID", bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid NetworkID '"), "{e}");
            assert!(e.ends_with("': expected 64 hex characters"), "{e}");
        }
    }

    #[test]
    fn short_stored_ids_still_name_a_veth() {
        assert_eq!(host_veth_name("é1"), "caliDé1".replace('D', ""));
        assert!(new_handle().starts_with(HANDLE_PREFIX));
        assert_eq!(new_handle().len(), HANDLE_PREFIX.len() + 32);
    }

    #[test]
    fn pool_record_keeps_its_json_names() {
        let r = PoolRecord {
            cidr: "10.0.0.0/24".into(),
            created_by_plugin: true,
            references: 2,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"cidr":"10.0.0.0/24","createdByPlugin":true,"references":2}"#
        );
    }
}
