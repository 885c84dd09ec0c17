//! IPAM records other than blocks: block affinities, handles and the global IPAM config.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::serde_util::{is_false, is_zero, null_default};
use crate::error::{Error, Result};

// ---------------- BlockAffinity ----------------

/// The state of a block affinity. Routing (confd, Felix) only uses confirmed ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum AffinityState {
    /// Claimed and the block confirmed; also what an empty state (old data) means.
    #[default]
    Confirmed,
    /// A claim in progress.
    Pending,
    /// A release in progress.
    PendingDeletion,
    /// A state this version does not know, kept verbatim.
    Other(String),
}

impl AffinityState {
    /// The stored string.
    pub fn as_str(&self) -> &str {
        match self {
            AffinityState::Confirmed => "confirmed",
            AffinityState::Pending => "pending",
            AffinityState::PendingDeletion => "pendingDeletion",
            AffinityState::Other(s) => s,
        }
    }

    fn from_stored(s: &str) -> Self {
        match s {
            "" | "confirmed" => AffinityState::Confirmed,
            "pending" => AffinityState::Pending,
            "pendingDeletion" => AffinityState::PendingDeletion,
            other => AffinityState::Other(other.to_string()),
        }
    }
}

impl fmt::Display for AffinityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AffinityState {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AffinityState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        Ok(AffinityState::from_stored(&s))
    }
}

/// A block affinity value: `{"state":"confirmed","deleted":false}` (both always written).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockAffinity {
    /// The state; empty or absent reads as confirmed.
    pub state: AffinityState,
    /// Only the Kubernetes backend sets this.
    pub deleted: bool,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl BlockAffinity {
    /// An affinity in `state`.
    pub fn new(state: AffinityState) -> Self {
        BlockAffinity {
            state,
            deleted: false,
            extra: Map::new(),
        }
    }

    /// `{"state":"pending","deleted":false}`.
    pub fn pending() -> Self {
        Self::new(AffinityState::Pending)
    }

    /// `{"state":"confirmed","deleted":false}`.
    pub fn confirmed() -> Self {
        Self::new(AffinityState::Confirmed)
    }

    /// `{"state":"pendingDeletion","deleted":false}`.
    pub fn pending_deletion() -> Self {
        Self::new(AffinityState::PendingDeletion)
    }

    /// Whether the affinity is confirmed.
    pub fn is_confirmed(&self) -> bool {
        self.state == AffinityState::Confirmed
    }

    /// Decodes a stored value; an empty value (old data) is a confirmed affinity.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::confirmed());
        }
        serde_json::from_slice(bytes).map_err(|e| Error::json("block affinity", e))
    }

    /// The JSON to store.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::msg(format!("encode block affinity: {e}")))
    }
}

// ---------------- IpamHandle ----------------

/// A handle: how many addresses it holds in each block (keyed by CIDR with `/`).
/// `{"block":{"10.0.0.0/26":1},"deleted":false}`. Handles are written before blocks, so
/// a handle may over-count; readers must tolerate that.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpamHandle {
    /// Block CIDR → number of addresses.
    #[serde(deserialize_with = "null_default")]
    pub block: BTreeMap<String, u64>,
    /// Only the Kubernetes backend sets this.
    pub deleted: bool,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl IpamHandle {
    /// Adds `n` addresses in `block`; returns the new count for the block.
    pub fn increment(&mut self, block: &IpNet, n: u64) -> u64 {
        let c = self.block.entry(block.trunc().to_string()).or_default();
        *c += n;
        *c
    }

    /// Removes `n` addresses in `block` (dropping the entry at zero); returns the new count.
    /// Fails when the block isn't linked or holds fewer than `n`, leaving the handle as is.
    pub fn decrement(&mut self, block: &IpNet, n: u64, handle_id: &str) -> Result<u64> {
        let key = block.trunc().to_string();
        let Some(&current) = self.block.get(&key) else {
            return Err(Error::msg(format!(
                "decrement handle {handle_id}: block {key} is not linked to the handle"
            )));
        };
        let Some(left) = current.checked_sub(n) else {
            return Err(Error::msg(format!(
                "decrement handle {handle_id}: block {key} holds only {current} addresses, not {n}"
            )));
        };
        if left == 0 {
            self.block.remove(&key);
        } else {
            self.block.insert(key, left);
        }
        Ok(left)
    }

    /// True when no block is linked (the handle should be deleted).
    pub fn is_empty(&self) -> bool {
        self.block.is_empty()
    }

    /// Total addresses over all blocks.
    pub fn total(&self) -> u64 {
        self.block.values().sum()
    }

    /// The linked blocks that parse as CIDRs.
    pub fn blocks(&self) -> Vec<IpNet> {
        self.block.keys().filter_map(|k| k.parse().ok()).collect()
    }

    /// Decodes a stored value.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::json("ipam handle", e))
    }

    /// The JSON to store.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::msg(format!("encode ipam handle: {e}")))
    }
}

// ---------------- IpamConfig ----------------

/// The global IPAM configuration at `/calico/ipam/v2/config`; every field is `omitempty`.
///
/// Mind the asymmetry: with no key at all Calico uses strict=false, auto=**true**
/// ([`IpamConfig::missing`]); with a key present an absent field is false/0, so a stored
/// `{}` turns automatic block allocation **off**. Use [`IpamConfig::from_stored`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Go's tags: two snake_case fields, then camelCase with Go's acronyms.
#[serde(rename_all = "camelCase")]
pub struct IpamConfig {
    /// Only allocate from blocks affine to the host (no borrowing).
    #[serde(rename = "strict_affinity", default, skip_serializing_if = "is_false")]
    pub strict_affinity: bool,
    /// Claim new blocks when affine ones are full.
    #[serde(
        rename = "auto_allocate_blocks",
        default,
        skip_serializing_if = "is_false"
    )]
    pub auto_allocate_blocks: bool,
    /// Most blocks a host may own (0 = no global limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_blocks_per_host: u32,
    /// `Enabled` or `Disabled`.
    #[serde(
        rename = "kubeVirtVMAddressPersistence",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kube_virt_vm_address_persistence: Option<String>,
    /// Seconds a released address stays unusable (0 = immediate).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ip_cooldown_seconds: i64,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for IpamConfig {
    /// Same as [`IpamConfig::missing`].
    fn default() -> Self {
        Self::missing()
    }
}

impl IpamConfig {
    /// What Calico uses when the key is absent: strict false, auto-allocate true, no block
    /// limit, no cooldown, KubeVirt persistence `Enabled`. Reading never writes it.
    pub fn missing() -> Self {
        IpamConfig {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
            kube_virt_vm_address_persistence: Some("Enabled".into()),
            ip_cooldown_seconds: 0,
            extra: Map::new(),
        }
    }

    /// The config from the stored value: `None` (no key) → [`IpamConfig::missing`];
    /// otherwise the JSON, absent fields false/0.
    pub fn from_stored(value: Option<&[u8]>) -> Result<Self> {
        match value {
            None => Ok(Self::missing()),
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| Error::json("ipam config", e)),
        }
    }

    /// The JSON to store.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::msg(format!("encode ipam config: {e}")))
    }

    /// SetIPAMConfig's checks.
    pub fn validate(&self) -> Result<()> {
        if !self.strict_affinity && !self.auto_allocate_blocks {
            return Err(Error::invalid(
                "set ipam config: cannot disable 'StrictAffinity' and 'AutoAllocateBlocks' at the same time",
            ));
        }
        if self.max_blocks_per_host > 0 && !self.strict_affinity {
            return Err(Error::invalid(
                "set ipam config: MaxBlocksPerHost requires StrictAffinity to be enabled",
            ));
        }
        Ok(())
    }

    /// The cooldown as a duration (negative values mean none).
    pub fn cooldown(&self) -> Duration {
        Duration::from_secs(self.ip_cooldown_seconds.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_states() {
        assert_eq!(
            String::from_utf8(BlockAffinity::confirmed().to_json().unwrap()).unwrap(),
            r#"{"state":"confirmed","deleted":false}"#
        );
        assert_eq!(
            String::from_utf8(BlockAffinity::pending().to_json().unwrap()).unwrap(),
            r#"{"state":"pending","deleted":false}"#
        );
        assert_eq!(
            BlockAffinity::from_json(br#"{"state":"pendingDeletion","deleted":false}"#).unwrap(),
            BlockAffinity::pending_deletion()
        );
        // Old data: empty value, empty or missing state → confirmed.
        for old in [&b""[..], br#"{"state":""}"#, b"{}", br#"{"state":null}"#] {
            assert!(BlockAffinity::from_json(old).unwrap().is_confirmed());
        }
        let odd = BlockAffinity::from_json(br#"{"state":"weird","deleted":false,"x":1}"#).unwrap();
        assert!(!odd.is_confirmed());
        assert_eq!(
            String::from_utf8(odd.to_json().unwrap()).unwrap(),
            r#"{"state":"weird","deleted":false,"x":1}"#
        );
    }

    #[test]
    fn handle_counts() {
        let b1: IpNet = "10.0.0.0/26".parse().unwrap();
        let b2: IpNet = "fd80:24e2:f998:72d6::/122".parse().unwrap();
        let mut h = IpamHandle::default();
        assert_eq!(h.increment(&b1, 1), 1);
        assert_eq!(h.increment(&b1, 2), 3);
        h.increment(&b2, 1);
        assert_eq!(
            String::from_utf8(h.to_json().unwrap()).unwrap(),
            r#"{"block":{"10.0.0.0/26":3,"fd80:24e2:f998:72d6::/122":1},"deleted":false}"#
        );
        assert_eq!(h.total(), 4);
        assert_eq!(h.blocks(), vec![b1, b2]);
        assert_eq!(h.decrement(&b1, 2, "H").unwrap(), 1);
        assert!(h.decrement(&b1, 5, "H").is_err());
        assert_eq!(h.decrement(&b1, 1, "H").unwrap(), 0);
        assert!(!h.block.contains_key("10.0.0.0/26"));
        assert!(h
            .decrement(&b1, 1, "H")
            .unwrap_err()
            .to_string()
            .contains("not linked"));
        h.decrement(&b2, 1, "H").unwrap();
        assert!(h.is_empty());
        let read =
            IpamHandle::from_json(br#"{"block":{"10.0.0.0/26":1},"deleted":false}"#).unwrap();
        assert_eq!(read.block["10.0.0.0/26"], 1);
        assert!(IpamHandle::from_json(br#"{"block":null}"#)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn config_missing_vs_present() {
        let missing = IpamConfig::from_stored(None).unwrap();
        assert!(!missing.strict_affinity && missing.auto_allocate_blocks);
        assert_eq!(missing.max_blocks_per_host, 0);
        assert_eq!(
            missing.kube_virt_vm_address_persistence.as_deref(),
            Some("Enabled")
        );
        let empty = IpamConfig::from_stored(Some(b"{}")).unwrap();
        assert!(
            !empty.strict_affinity && !empty.auto_allocate_blocks,
            "present key: absent = false"
        );
        let strict = IpamConfig::from_stored(Some(br#"{"strict_affinity":true}"#)).unwrap();
        assert!(strict.strict_affinity && !strict.auto_allocate_blocks);
        let full = r#"{"strict_affinity":true,"auto_allocate_blocks":true,"maxBlocksPerHost":4,"kubeVirtVMAddressPersistence":"Enabled","ipCooldownSeconds":30}"#;
        let c = IpamConfig::from_stored(Some(full.as_bytes())).unwrap();
        assert_eq!(c.cooldown(), Duration::from_secs(30));
        assert_eq!(String::from_utf8(c.to_json().unwrap()).unwrap(), full);
        // omitempty: Go never writes zeros or falses.
        let off = IpamConfig {
            strict_affinity: true,
            auto_allocate_blocks: false,
            kube_virt_vm_address_persistence: None,
            ..IpamConfig::missing()
        };
        assert_eq!(
            String::from_utf8(off.to_json().unwrap()).unwrap(),
            r#"{"strict_affinity":true}"#
        );
        assert!(IpamConfig::from_stored(Some(b"nope")).is_err());
    }

    #[test]
    fn config_validation() {
        IpamConfig::missing().validate().unwrap();
        let both_off = IpamConfig {
            auto_allocate_blocks: false,
            ..IpamConfig::missing()
        };
        let max_without_strict = IpamConfig {
            max_blocks_per_host: 2,
            ..IpamConfig::missing()
        };
        for (config, why) in [
            (both_off, "at the same time"),
            (max_without_strict, "requires StrictAffinity"),
        ] {
            let e = config.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }
}
