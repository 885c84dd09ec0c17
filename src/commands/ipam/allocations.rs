//! The allocations the blocks hold, as `ipam check` judges them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use crate::error::Result;
use crate::ipam::Ipam;

pub(crate) use crate::model::libnetwork::HANDLE_PREFIX;
use crate::model::parse_go_time;

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
                        .and_then(|t| parse_go_time(t)),
                    sequence: block.sequence_for(ordinal),
                },
            );
        }
    }
    Ok(out)
}
