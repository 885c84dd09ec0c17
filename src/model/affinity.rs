//! Block affinities: which host (or virtual owner) a block belongs to, and whether the claim
//! is settled. Stored at `/calico/ipam/v2/host/<host>/ipv4/block/10.0.0.0-26` (see
//! [`super::keys`]).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::Result;

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
        super::decode("block affinity", bytes)
    }

    /// The JSON to store.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        super::encode("block affinity", self)
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
}
