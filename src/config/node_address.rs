//! The node address section: this host's address on its Node (`spec.bgp.ipv4Address` /
//! `ipv6Address`) with calico-node's variables (`IP`, `IP6`, `IP_AUTODETECTION_METHOD`,
//! `IP6_AUTODETECTION_METHOD`, `AUTODETECT_POLL_INTERVAL`, `DISABLE_NODE_IP_CHECK`), checked
//! at start: a bad address, method, regex or CIDR stops the program, where calico-node
//! would find it only when it detects (and then exit for want of an address).

use super::values::{bad, parse_duration};
use super::ConfigArgs;
use crate::dataplane::autodetect::{IpSetting, IpVersion, Method, NodeAddressConfig};
use crate::error::Result;

impl ConfigArgs {
    /// `IP` (default `autodetect`, as Calico's manifests set it for calico-node), `IP6`
    /// (default `none`), their methods (default `first-found`), the interval of the check
    /// and whether a new address is checked against the other Nodes'.
    pub(super) fn resolve_node_address(&self) -> Result<NodeAddressConfig> {
        let ipv4 = setting(
            "IP",
            self.ip.as_deref(),
            IpVersion::V4,
            IpSetting::Autodetect,
        )?;
        let ipv6 = setting("IP6", self.ip6.as_deref(), IpVersion::V6, IpSetting::None)?;
        let ipv4_method = method(
            "IP_AUTODETECTION_METHOD",
            self.ip_autodetection_method.as_deref(),
            IpVersion::V4,
        )?;
        let ipv6_method = method(
            "IP6_AUTODETECTION_METHOD",
            self.ip6_autodetection_method.as_deref(),
            IpVersion::V6,
        )?;
        let poll_interval =
            parse_duration("AUTODETECT_POLL_INTERVAL", &self.autodetect_poll_interval)?;
        // calico-node skips the check only for exactly `true`; anything else but `false` is
        // refused here rather than read as "check".
        let check_conflicts = match self.disable_node_ip_check.as_deref().map(str::trim) {
            None | Some("") | Some("false") => true,
            Some("true") => false,
            Some(other) => {
                return Err(bad(
                    "DISABLE_NODE_IP_CHECK",
                    format!("expected true or false, got '{other}'"),
                ))
            }
        };
        Ok(NodeAddressConfig {
            ipv4,
            ipv6,
            ipv4_method,
            ipv6_method,
            poll_interval,
            check_conflicts,
        })
    }
}

/// `IP` or `IP6`; unset or empty gives `default`.
fn setting(
    var: &str,
    value: Option<&str>,
    version: IpVersion,
    default: IpSetting,
) -> Result<IpSetting> {
    match value.map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => IpSetting::parse(v, version).map_err(|e| bad(var, e)),
    }
}

/// `IP_AUTODETECTION_METHOD` or `IP6_AUTODETECTION_METHOD`; unset is `first-found`.
fn method(var: &str, value: Option<&str>, version: IpVersion) -> Result<Method> {
    Method::parse(value.unwrap_or_default(), version).map_err(|e| bad(var, e))
}
