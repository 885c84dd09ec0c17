//! Profile: the per-network policy endpoints refer to by name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Resource, Spec};
use crate::model::keys;
use crate::model::omitempty::{null_default, omitempty};
use crate::model::rule::{EntityRule, Rule};

/// A Profile.
pub type Profile = Resource<ProfileSpec>;

/// ProfileSpec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProfileSpec {
    /// Inbound rules.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub ingress: Vec<Rule>,
    /// Outbound rules.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub egress: Vec<Rule>,
    /// Labels applied to every endpoint using the profile.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
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
    /// and anywhere out. `{"ingress":[{"action":"Allow","source":{"selector":"has(<key>)"}}],
    /// "egress":[{"action":"Allow"}],"labelsToApply":{"<key>":""}}`, where the key is the
    /// name when Calico accepts it as a label key (see [`crate::model::label_key`]).
    pub fn for_network(name: &str) -> Self {
        Self::with_label(&crate::model::names::label_key(name))
    }

    /// Whether this is the profile the plugin creates for `name`: today's shape, or the one
    /// earlier versions wrote with the whole name as the label key (so those are still
    /// recognised as ours when their network goes).
    pub fn is_for_network(&self, name: &str) -> bool {
        *self == Self::for_network(name) || *self == Self::with_label(name)
    }

    fn with_label(key: &str) -> Self {
        let mut allow_members = Rule::action("Allow");
        allow_members.source = EntityRule::selector(format!("has({key})"));
        ProfileSpec {
            ingress: vec![allow_members],
            egress: vec![Rule::action("Allow")],
            labels_to_apply: BTreeMap::from([(key.to_string(), String::new())]),
            extra: Map::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

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
}
