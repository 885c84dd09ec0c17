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
    /// The host its block is affine to.
    pub(super) affine: Option<String>,
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

    /// The node whose record it is: its `node` attribute, else its block's host.
    pub(super) fn owner(&self) -> Option<&str> {
        self.node.as_deref().or(self.affine.as_deref())
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
            affine: None,
            since: None,
            sequence: 0,
        }
    }
}

/// Every block's allocations, and the blocks' hosts.
pub(super) struct Blocks {
    /// Every allocation in every block, by address.
    pub(super) allocs: BTreeMap<IpAddr, Alloc>,
    /// The host of each block affine to one, by the block's CIDR (`10.0.0.0/26`).
    pub(super) hosts: BTreeMap<String, String>,
}

/// Every allocation in every block, by address.
pub(super) async fn all_allocations(ipam: &Ipam) -> Result<BTreeMap<IpAddr, Alloc>> {
    Ok(read_blocks(ipam).await?.allocs)
}

/// Every block, read once: its allocations and its host.
pub(super) async fn read_blocks(ipam: &Ipam) -> Result<Blocks> {
    let mut out = BTreeMap::new();
    let mut hosts = BTreeMap::new();
    for (block, _) in ipam.list_blocks(None).await? {
        let affine = block.host_affinity().map(str::to_string);
        if let Some(h) = &affine {
            hosts.insert(block.cidr.trunc().to_string(), h.clone());
        }
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
                    affine: affine.clone(),
                    since: attr
                        .and_then(|a| a.secondary.get("timestamp"))
                        .and_then(|t| parse_go_time(t)),
                    sequence: block.sequence_for(ordinal),
                },
            );
        }
    }
    Ok(Blocks { allocs: out, hosts })
}
