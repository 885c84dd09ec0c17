//! The allocations the blocks hold, as `ipam check` judges them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use crate::error::Result;
use crate::ipam::Ipam;

/// Handles of the allocations this plugin makes (`libnetwork.<uuid>`): the only ones
/// `ipam check` judges, since other orchestrators' allocations have other owners.
pub(crate) const HANDLE_PREFIX: &str = "libnetwork.";

/// Parses the `timestamp` allocation attribute: Go's `time.Time.String()` form that Calico
/// stores, or RFC3339.
pub(crate) fn parse_attr_time(s: &str) -> Option<DateTime<Utc>> {
    if let Some(t) = crate::model::parse_time(s) {
        return Some(t);
    }
    // `2025-06-01 12:00:00.123456789 +0000 UTC` (a monotonic `m=+...` suffix is possible).
    let s = s.split(" m=").next().unwrap_or(s);
    let mut parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() == 4 {
        parts.pop(); // zone abbreviation
    }
    let s = parts.join(" ");
    DateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f %z")
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// One allocation seen in a block.
pub(super) struct Alloc {
    pub(super) block: IpNet,
    pub(super) handle: Option<String>,
    pub(super) node: Option<String>,
    pub(super) since: Option<DateTime<Utc>>,
    pub(super) sequence: u64,
}

impl Alloc {
    /// The allocation's handle when it is one of ours.
    pub(super) fn our_handle(&self) -> Option<&str> {
        self.handle
            .as_deref()
            .filter(|h| h.starts_with(HANDLE_PREFIX))
    }
}

#[cfg(test)]
impl Alloc {
    /// An allocation in `block` under `handle`, with no node, time or sequence.
    pub(super) fn in_block(block: &str, handle: Option<&str>) -> Self {
        Alloc {
            block: block.parse().unwrap(),
            handle: handle.map(str::to_string),
            node: None,
            since: None,
            sequence: 0,
        }
    }
}

/// Every allocation in every block, by address.
pub(super) async fn all_allocations(ipam: &Ipam) -> Result<BTreeMap<IpAddr, Alloc>> {
    let mut out = BTreeMap::new();
    for (block, _) in ipam.list_blocks(None).await? {
        for (ordinal, slot) in block.allocations.iter().enumerate() {
            let Some(idx) = slot else { continue };
            let Some(ip) = block.ip_of(ordinal) else {
                continue;
            };
            let attr = block.attributes.get(*idx as usize);
            out.insert(
                ip,
                Alloc {
                    block: block.cidr,
                    handle: attr.and_then(|a| a.handle()).map(str::to_string),
                    node: attr.and_then(|a| a.secondary.get("node").cloned()),
                    since: attr
                        .and_then(|a| a.secondary.get("timestamp"))
                        .and_then(|t| parse_attr_time(t)),
                    sequence: block.sequence_for(ordinal),
                },
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_times_in_go_and_rfc3339_forms() {
        let want = DateTime::parse_from_rfc3339("2025-06-01T12:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_attr_time("2025-06-01 12:00:00.5 +0000 UTC"),
            Some(want)
        );
        assert_eq!(
            parse_attr_time("2025-06-01 12:00:00.5 +0000 UTC m=+3.25"),
            Some(want)
        );
        assert_eq!(parse_attr_time("2025-06-01T12:00:00.5Z"), Some(want));
        assert_eq!(parse_attr_time("yesterday"), None);
    }
}
