//! Policy rules as used in Profile `ingress`/`egress` (Calico v3 `Rule` and `EntityRule`).
//!
//! Every optional field is `omitempty`; `source`/`destination` are left out when empty
//! (current Calico's `omitzero`; older versions wrote `{}`, which reads the same).
//! Nested structures we never interpret (`icmp`, `http`, `services`, ...) are kept as raw JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::omitempty::{null_default, omitempty};

/// Calico's `numorstring` values (protocols and ports): a number or a string such as
/// `"TCP"`, `"80:90"` or a named port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NumOrString {
    /// A number (`6`, `8080`).
    Num(u64),
    /// A string (`"TCP"`, `"1000:2000"`, `"http"`).
    Str(String),
}

impl Default for NumOrString {
    /// Go's zero value marshals as the number `0`.
    fn default() -> Self {
        NumOrString::Num(0)
    }
}

/// One policy rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Rule {
    /// `Allow`, `Deny`, `Log` or `Pass` (always written).
    pub action: String,
    /// 4 or 6.
    #[serde(skip_serializing_if = "omitempty")]
    pub ip_version: Option<u8>,
    /// Protocol name or number.
    #[serde(skip_serializing_if = "omitempty")]
    pub protocol: Option<NumOrString>,
    /// ICMP type/code match, verbatim.
    #[serde(skip_serializing_if = "omitempty")]
    pub icmp: Option<Value>,
    /// Negated protocol.
    #[serde(skip_serializing_if = "omitempty")]
    pub not_protocol: Option<NumOrString>,
    /// Negated ICMP match, verbatim.
    #[serde(rename = "notICMP", skip_serializing_if = "omitempty")]
    pub not_icmp: Option<Value>,
    /// Source match.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "EntityRule::is_empty"
    )]
    pub source: EntityRule,
    /// Destination match.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "EntityRule::is_empty"
    )]
    pub destination: EntityRule,
    /// HTTP match, verbatim.
    #[serde(skip_serializing_if = "omitempty")]
    pub http: Option<Value>,
    /// Rule metadata (annotations), verbatim.
    #[serde(skip_serializing_if = "omitempty")]
    pub metadata: Option<Value>,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Rule {
    /// A rule with only an action (`{"action":"Allow"}`).
    pub fn action(action: &str) -> Self {
        Rule {
            action: action.to_string(),
            ..Default::default()
        }
    }
}

/// The source or destination side of a rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EntityRule {
    /// CIDRs to match.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub nets: Vec<String>,
    /// Label selector.
    #[serde(skip_serializing_if = "omitempty")]
    pub selector: String,
    /// Namespace selector.
    #[serde(skip_serializing_if = "omitempty")]
    pub namespace_selector: String,
    /// Service match, verbatim.
    #[serde(skip_serializing_if = "omitempty")]
    pub services: Option<Value>,
    /// Ports (numbers, ranges or names).
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub ports: Vec<NumOrString>,
    /// Negated CIDRs.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub not_nets: Vec<String>,
    /// Negated selector.
    #[serde(skip_serializing_if = "omitempty")]
    pub not_selector: String,
    /// Negated ports.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub not_ports: Vec<NumOrString>,
    /// Service account match, verbatim.
    #[serde(skip_serializing_if = "omitempty")]
    pub service_accounts: Option<Value>,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl EntityRule {
    /// True when nothing is set (the side is then left out of the JSON).
    pub fn is_empty(&self) -> bool {
        self == &EntityRule::default()
    }

    /// A side that matches a selector only.
    pub fn selector(selector: impl Into<String>) -> Self {
        EntityRule {
            selector: selector.into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_sides_are_omitted_and_old_empty_objects_read() {
        let r = Rule::action("Allow");
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"action":"Allow"}"#);
        let old: Rule =
            serde_json::from_str(r#"{"action":"Allow","source":{},"destination":{}}"#).unwrap();
        assert_eq!(old, r);
    }

    #[test]
    fn full_rule_round_trips() {
        let s = r#"{"action":"Deny","ipVersion":4,"protocol":"TCP","notProtocol":17,"source":{"nets":["10.0.0.0/8"],"selector":"has(a)","ports":[80,"1000:2000","http"],"notSelector":"b == 'c'"},"destination":{"notNets":["10.1.0.0/16"],"notPorts":[22]},"metadata":{"annotations":{"x":"y"}},"future":1}"#;
        let r: Rule = serde_json::from_str(s).unwrap();
        assert_eq!(r.protocol, Some(NumOrString::Str("TCP".into())));
        assert_eq!(r.not_protocol, Some(NumOrString::Num(17)));
        assert_eq!(r.source.ports[1], NumOrString::Str("1000:2000".into()));
        assert_eq!(serde_json::to_string(&r).unwrap(), s);
    }
}
