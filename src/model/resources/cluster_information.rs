//! ClusterInformation: the cluster-wide record Felix waits for.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Resource, Spec};
use crate::model::keys;
use crate::model::omitempty::omitempty;

/// ClusterInformation (Felix waits for `default` with `datastoreReady: true`).
pub type ClusterInformation = Resource<ClusterInformationSpec>;

/// ClusterInformationSpec; all fields `omitempty`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClusterInformationSpec {
    /// Random cluster GUID.
    #[serde(rename = "clusterGUID", skip_serializing_if = "omitempty")]
    pub cluster_guid: String,
    /// Comma-separated cluster types.
    #[serde(skip_serializing_if = "omitempty")]
    pub cluster_type: String,
    /// Calico version string.
    #[serde(skip_serializing_if = "omitempty")]
    pub calico_version: String,
    /// Whether the datastore is ready for Felix.
    #[serde(skip_serializing_if = "omitempty")]
    pub datastore_ready: Option<bool>,
    /// Product variant.
    #[serde(skip_serializing_if = "omitempty")]
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
}
