//! IPAM handles (`/calico/ipam/v2/handle/<id>`): per allocation owner, how many addresses it
//! holds in each block.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::omitempty::null_default;
use crate::error::{Error, Result};

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
        super::decode("ipam handle", bytes)
    }

    /// The JSON to store.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        super::encode("ipam handle", self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
