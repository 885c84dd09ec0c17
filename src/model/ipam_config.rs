//! The global IPAM configuration (`/calico/ipam/v2/config`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::omitempty::omitempty;
use crate::error::{Error, Result};

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
    #[serde(rename = "strict_affinity", default, skip_serializing_if = "omitempty")]
    pub strict_affinity: bool,
    /// Claim new blocks when affine ones are full.
    #[serde(
        rename = "auto_allocate_blocks",
        default,
        skip_serializing_if = "omitempty"
    )]
    pub auto_allocate_blocks: bool,
    /// Most blocks a host may own (0 = no global limit).
    #[serde(default, skip_serializing_if = "omitempty")]
    pub max_blocks_per_host: u32,
    /// `Enabled` or `Disabled`.
    #[serde(
        rename = "kubeVirtVMAddressPersistence",
        default,
        skip_serializing_if = "omitempty"
    )]
    pub kube_virt_vm_address_persistence: Option<String>,
    /// Seconds a released address stays unusable (0 = immediate).
    #[serde(default, skip_serializing_if = "omitempty")]
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
            Some(bytes) => super::decode("ipam config", bytes),
        }
    }

    /// The JSON to store.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        super::encode("ipam config", self)
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
