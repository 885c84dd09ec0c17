//! Removing a host from IPAM: every allocation made for it, then its block affinities, as
//! Calico's `RemoveIPAMHost` does after calico-kube-controllers' garbage collection of a
//! deleted node's addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{enc, Ipam, RETRIES};
use crate::datastore::Write;
use crate::error::{Error, Result};
use crate::model::block::{ReleaseOptions, ATTR_NODE};
use crate::model::keys;

/// What [`Ipam::release_host`] released.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostRelease {
    /// Addresses whose allocation attributes named the host.
    pub addresses: usize,
    /// Handles those addresses were released by.
    pub handles: usize,
    /// Block affinities of the host released (an empty block goes with its affinity; one
    /// still holding other hosts' addresses stays, without affinity).
    pub affinities: usize,
}

impl Ipam {
    /// Releases everything IPAM holds for `host`: every allocation whose attributes name it
    /// (`node`), by its handle where it has one (the whole handle goes, as
    /// `ReleaseByHandle` does) and by address otherwise; then its block affinities
    /// (Calico's `ReleaseHostAffinities` without `mustBeEmpty`: a block left empty is
    /// deleted, one holding addresses of other hosts keeps them and loses its affinity),
    /// blocks still naming it without an affinity record likewise, and whatever else is
    /// left under `/calico/ipam/v2/host/<host>/` (`RemoveIPAMHost` deletes that tree).
    /// Idempotent.
    pub async fn release_host(&self, host: &str) -> Result<HostRelease> {
        let mut out = HostRelease::default();
        let mut by_handle: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        let mut bare = Vec::new();
        for (block, _) in self.list_blocks(None).await? {
            for ip in block.allocated_ips() {
                let Some(attr) = block.attribute_of(&ip) else {
                    continue;
                };
                if attr.released_at.is_some()
                    || attr.secondary.get(ATTR_NODE).map(String::as_str) != Some(host)
                {
                    continue;
                }
                match attr.handle() {
                    Some(h) => by_handle.entry(h.to_string()).or_default().push(ip),
                    None => bare.push(ip),
                }
            }
        }
        for (handle, ips) in &by_handle {
            match self.release_by_handle(handle).await {
                Ok(()) => {}
                // The handle record is gone but its addresses are not: release them one by
                // one, still checking the handle.
                Err(e) if e.is_not_found() => {
                    let opts: Vec<ReleaseOptions> = ips
                        .iter()
                        .map(|ip| ReleaseOptions::new(*ip).with_handle(handle.clone()))
                        .collect();
                    self.release(&opts).await?;
                }
                Err(e) => return Err(e.context(format!("release handle {handle} of {host}"))),
            }
            out.handles += 1;
            out.addresses += ips.len();
        }
        if !bare.is_empty() {
            self.release_ips(&bare).await?;
            out.addresses += bare.len();
        }

        let tree = keys::host_all_affinities_prefix(host);
        let affinities = self.store.list(&tree).await?;
        out.affinities += affinities
            .iter()
            .filter(|kv| keys::parse_block_affinity_key(&kv.key).is_some())
            .count();
        self.release_host_affinities(host, false)
            .await
            .map_err(|e| e.context(format!("release the block affinities of {host}")))?;
        for (block, _) in self.list_blocks(None).await? {
            if block.host_affinity() == Some(host) {
                self.release_orphan_block(&block.cidr, host).await?;
                out.affinities += 1;
            }
        }
        for kv in self.store.list(&tree).await? {
            match self.store.delete(&kv.key, Some(kv.revision)).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.context(format!("delete {}", kv.key))),
            }
        }
        Ok(out)
    }

    /// A block affine to `host` without an affinity record: deleted when empty, else left
    /// without affinity (what releasing its affinity would have done).
    async fn release_orphan_block(&self, cidr: &ipnet::IpNet, host: &str) -> Result<()> {
        for _ in 0..RETRIES {
            let Some(cur) = self.get_block(cidr).await? else {
                return Ok(());
            };
            if cur.block.host_affinity() != Some(host) {
                return Ok(());
            }
            let w = if cur.block.is_empty() {
                Write::delete(keys::block_key(cidr), cur.rev)
            } else {
                let mut b = cur.block;
                b.clear_affinity();
                b.bump_sequence();
                Write::update(keys::block_key(cidr), enc("block", &b)?, cur.rev)
            };
            match self.store.txn(vec![w]).await {
                Ok(_) => {
                    self.cache_forget(cidr);
                    return Ok(());
                }
                Err(e) if e.is_lost_race() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::msg(format!(
            "release block {cidr} of {host}: Max retries hit - excessive concurrent IPAM requests"
        )))
    }
}
