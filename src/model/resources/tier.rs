//! Tier: an ordered group of policies. Calico's `EnsureInitialized` creates three, and
//! `calicoctl create networkpolicy` needs the `default` one.

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use super::{Resource, Spec};
use crate::model::keys;

/// A Tier.
pub type Tier = Resource<TierSpec>;

/// The tier policies go in when they name none; its default action is `Deny`.
pub const TIER_DEFAULT: &str = "default";
/// The tier before `default` (Calico v3.32+; `adminnetworkpolicy` before that).
pub const TIER_KUBE_ADMIN: &str = "kube-admin";
/// The tier after `default` (Calico v3.32+; `baselineadminnetworkpolicy` before that).
pub const TIER_KUBE_BASELINE: &str = "kube-baseline";

/// TierSpec; both fields `omitempty` pointers in Go.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TierSpec {
    /// Tiers apply in increasing order; none means last.
    #[serde(serialize_with = "go_float64", skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// `Deny` or `Pass`: what happens to traffic no policy of the tier decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_action: Option<String>,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Spec for TierSpec {
    const KIND: &'static str = "Tier";
    const PLURAL: &'static str = keys::PLURAL_TIERS;
}

impl Tier {
    /// The Tiers Calico's `EnsureInitialized` creates (v3.32+: clientv3/client.go,
    /// `ensureTierExists`), each as Go stores it: order, default action, and an empty
    /// `status` (Go's non-pointer `TierStatus` is never omitted).
    pub fn calico_defaults() -> Vec<Tier> {
        [
            (TIER_DEFAULT, "Deny", 1_000_000.0),
            (TIER_KUBE_ADMIN, "Pass", 1_000.0),
            (TIER_KUBE_BASELINE, "Pass", 10_000_000.0),
        ]
        .into_iter()
        .map(|(name, action, order)| {
            let mut tier = Tier::new(
                name,
                TierSpec {
                    order: Some(order),
                    default_action: Some(action.to_string()),
                    extra: Map::new(),
                },
            );
            tier.status = Some(Value::Object(Map::new()));
            tier
        })
        .collect()
    }
}

/// A float64 as Go's encoding/json writes it: whole numbers without a fraction (`1000000`,
/// where serde_json would write `1000000.0`).
fn go_float64<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        // Exact as an integer (|f| < 2^53), and below Go's switch to exponents (1e21).
        Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
            s.serialize_i64(*f as i64)
        }
        Some(f) => s.serialize_f64(*f),
        None => s.serialize_none(),
    }
}
