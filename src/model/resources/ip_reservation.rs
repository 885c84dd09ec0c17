//! IPReservation: addresses Calico's IPAM must not hand out automatically (Calico v3.22+,
//! `api/pkg/apis/projectcalico/v3/ipreservation.go`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Resource, Spec};
use crate::model::keys;
use crate::model::omitempty::{null_default, omitempty};

/// IPReservation (cluster-scoped).
pub type IpReservation = Resource<IpReservationSpec>;

/// IPReservationSpec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct IpReservationSpec {
    /// CIDRs or bare addresses (`10.0.0.5` means `/32`), `omitempty`.
    #[serde(
        rename = "reservedCIDRs",
        deserialize_with = "null_default",
        skip_serializing_if = "omitempty"
    )]
    pub reserved_cidrs: Vec<String>,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Spec for IpReservationSpec {
    const KIND: &'static str = "IPReservation";
    const PLURAL: &'static str = keys::PLURAL_IP_RESERVATIONS;
}
