//! Block affinities: where a host looks for blocks, claiming them, confirming and
//! releasing affinities.

use std::net::IpAddr;

use chrono::Utc;
use ipnet::IpNet;

use super::{dec, enc, BlockKv, Ipam, RETRIES};
use crate::datastore::Write;
use crate::error::{Error, Result};
use crate::model::block::AllocationBlock;
use crate::model::keys;
use crate::model::BlockAffinity;
use crate::model::IpFamily;

/// FNV-1 (32-bit) of the host name: where the host starts looking for a free block, so
/// hosts spread over a pool instead of racing for its first block.
pub(super) fn fnv1_32(s: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in s.as_bytes() {
        h = h.wrapping_mul(0x01000193);
        h ^= *b as u32;
    }
    h
}

/// The blocks of `pool` (block prefix `block_size`), starting at a host-specific offset and
/// wrapping around: the order in which `host` tries to claim new blocks.
pub fn block_order(pool: &IpNet, block_size: u8, host: &str) -> impl Iterator<Item = IpNet> {
    let (bits, base): (u8, u128) = match pool {
        IpNet::V4(n) => (32, u32::from(n.network()) as u128),
        IpNet::V6(n) => (128, u128::from(n.network())),
    };
    let shift = (block_size.saturating_sub(pool.prefix_len())).min(64) as u32;
    let count: u128 = 1u128 << shift;
    let step: u128 = if bits - block_size >= 128 {
        0
    } else {
        1u128 << (bits - block_size) as u32
    };
    let start = (fnv1_32(host) as u128) % count;
    let is_v4 = matches!(pool, IpNet::V4(_));
    (0..count).map(move |i| {
        let idx = (start + i) % count;
        let addr = base + idx * step;
        if is_v4 {
            IpNet::new(
                IpAddr::from(std::net::Ipv4Addr::from(addr as u32)),
                block_size,
            )
            .unwrap()
        } else {
            IpNet::new(IpAddr::from(std::net::Ipv6Addr::from(addr)), block_size).unwrap()
        }
    })
}

impl Ipam {
    /// Claims `cidr` for `host`: the block created with our affinity and the affinity
    /// confirmed, in one transaction. Returns the block if it is ours afterwards.
    pub(super) async fn claim_block(&self, cidr: &IpNet, host: &str) -> Result<Option<BlockKv>> {
        let aff_key = keys::block_affinity_key(host, cidr);
        let block_key = keys::block_key(cidr);
        let confirmed = enc("affinity", &BlockAffinity::confirmed())?;
        for _ in 0..RETRIES {
            let block = AllocationBlock::new(*cidr, Some(host), Utc::now())?;
            let aff = self.store.get(&aff_key).await?;
            let aff_write = match &aff {
                None => Write::create(&aff_key, confirmed.clone()),
                Some(kv) => Write::update(&aff_key, confirmed.clone(), kv.revision),
            };
            match self
                .store
                .txn(vec![
                    aff_write,
                    Write::create(&block_key, enc("block", &block)?),
                ])
                .await
            {
                Ok(rev) => {
                    self.cache_put(cidr, &block, rev);
                    return Ok(Some(BlockKv { block, rev }));
                }
                Err(Error::Exists { key }) if key == block_key => {
                    // Someone created the block first: ours only if it carries our affinity.
                    let Some(existing) = self.get_block(cidr).await? else {
                        continue;
                    };
                    if existing.block.host_affinity() == Some(host) {
                        return self.confirm_affinity(cidr, host, Some(existing)).await;
                    }
                    // Another host's block: drop any affinity of ours we may have left.
                    if let Some(kv) = self.store.get(&aff_key).await? {
                        let _ = self.store.delete(&aff_key, Some(kv.revision)).await;
                    }
                    return Ok(None);
                }
                Err(e)
                    if e.is_conflict()
                        || matches!(e, Error::Exists { .. } | Error::NotFound { .. }) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::msg(format!(
            "claim block {cidr}: Max retries hit - excessive concurrent IPAM requests"
        )))
    }

    /// Confirms `host`'s affinity for block `cidr`, a block affine to `host`, as Calico's
    /// `getBlockFromAffinity` does for an affinity that is pending, pendingDeletion or (through
    /// `getPendingAffinity`) missing: the block is rewritten with `sequenceNumber + 1` and the
    /// affinity written `confirmed`. The rewrite changes the block's revision and sequence
    /// number, so that another host reclaiming the block (Calico v3.32+, which deletes it at
    /// the revision and sequence number it read) fails instead of deleting a block in use.
    /// Calico writes pending, then the block, then confirmed; we write the last two in one
    /// transaction, which leaves no gap for the pending state to guard. A confirmed affinity
    /// is left alone. `block` is a copy just read, to save a round trip. Returns the block as
    /// it now stands, or `None` when it is gone or no longer `host`'s.
    pub(super) async fn confirm_affinity(
        &self,
        cidr: &IpNet,
        host: &str,
        mut block: Option<BlockKv>,
    ) -> Result<Option<BlockKv>> {
        let aff_key = keys::block_affinity_key(host, cidr);
        let confirmed = enc("affinity", &BlockAffinity::confirmed())?;
        for _ in 0..RETRIES {
            let aff = self.store.get(&aff_key).await?;
            let cur = match block.take() {
                Some(b) => b,
                None => match self.get_block(cidr).await? {
                    Some(b) => b,
                    None => return Ok(None),
                },
            };
            if cur.block.host_affinity() != Some(host) {
                return Ok(None);
            }
            if let Some(kv) = &aff {
                if dec::<BlockAffinity>(kv)?.is_confirmed() {
                    return Ok(Some(cur));
                }
            }
            let mut b = cur.block;
            b.bump_sequence();
            let writes = vec![
                Write::create_or_update(&aff_key, confirmed.clone(), aff.map(|kv| kv.revision)),
                Write::update(keys::block_key(cidr), enc("block", &b)?, cur.rev),
            ];
            match self.store.txn(writes).await {
                Ok(rev) => {
                    self.cache_put(cidr, &b, rev);
                    return Ok(Some(BlockKv { block: b, rev }));
                }
                Err(e) if e.is_lost_race() => continue,
                Err(e) => return Err(e.context(format!("confirm affinity of block {cidr}"))),
            }
        }
        Err(Error::msg(format!(
            "confirm affinity of block {cidr}: Max retries hit - excessive concurrent IPAM requests"
        )))
    }

    /// Releases `host`'s affinity for block `cidr`: the block is deleted when empty, else
    /// left without affinity. With `must_be_empty`, a block in use is an error.
    pub async fn release_affinity(
        &self,
        cidr: &IpNet,
        host: &str,
        must_be_empty: bool,
    ) -> Result<()> {
        let aff_key = keys::block_affinity_key(host, cidr);
        for _ in 0..RETRIES {
            let Some(aff) = self.store.get(&aff_key).await? else {
                return Err(Error::NotFound { key: aff_key });
            };
            let block = self.get_block(cidr).await?;
            let mut writes = vec![Write::delete(&aff_key, aff.revision)];
            match block {
                None => {}
                Some(b) if b.block.host_affinity() != Some(host) => {
                    // Stale affinity: the block belongs to another host.
                    let _ = self.store.txn(writes).await;
                    return Err(Error::Conflict {
                        key: format!(
                            "{} (block is affine to another host)",
                            keys::block_key(cidr)
                        ),
                    });
                }
                Some(b) => {
                    if !b.block.is_empty() {
                        if must_be_empty {
                            return Err(Error::msg(format!(
                                "release affinity of block {cidr}: block is not empty"
                            )));
                        }
                        let mut blk = b.block;
                        blk.clear_affinity();
                        blk.bump_sequence();
                        writes.push(Write::update(
                            keys::block_key(cidr),
                            enc("block", &blk)?,
                            b.rev,
                        ));
                    } else {
                        writes.push(Write::delete(keys::block_key(cidr), b.rev));
                    }
                }
            }
            match self.store.txn(writes).await {
                Ok(_) => {
                    self.cache_forget(cidr);
                    return Ok(());
                }
                Err(e) if e.is_lost_race() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::msg(format!(
            "release affinity of block {cidr}: Max retries hit - excessive concurrent IPAM requests"
        )))
    }

    /// Releases every block affinity of `host` (both families).
    pub async fn release_host_affinities(&self, host: &str, must_be_empty: bool) -> Result<()> {
        let mut first_err = None;
        for fam in [IpFamily::V4, IpFamily::V6] {
            for kv in self
                .store
                .list(&keys::host_affinities_prefix(host, fam))
                .await?
            {
                if let Some((_, cidr)) = keys::parse_block_affinity_key(&kv.key) {
                    if let Err(e) = self.release_affinity(&cidr, host, must_be_empty).await {
                        if !e.is_not_found() && first_err.is_none() {
                            first_err = Some(e);
                        }
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Releases every host's affinities for blocks inside `pool`.
    pub async fn release_pool_affinities(&self, pool: &IpNet) -> Result<()> {
        for kv in self.store.list(&keys::all_host_affinities_prefix()).await? {
            if let Some((host, cidr)) = keys::parse_block_affinity_key(&kv.key) {
                if pool.contains(&cidr) {
                    match self.release_affinity(&cidr, &host, false).await {
                        Ok(()) => {}
                        Err(e) if e.is_lost_race() => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// Claims every block of `cidr` for `host`; returns (claimed, owned by another host).
    pub async fn claim_affinity(
        &self,
        cidr: &IpNet,
        host: &str,
    ) -> Result<(Vec<IpNet>, Vec<IpNet>)> {
        let pools = self.list_pools().await?;
        let pool = pools
            .iter()
            .find(|p| p.spec.cidr_net().map(|n| n.contains(cidr)).unwrap_or(false))
            .ok_or_else(|| {
                Error::invalid(format!("The requested CIDR ({cidr}) is not in any pool"))
            })?;
        let bs = pool.spec.block_size_or_default();
        if cidr.prefix_len() > bs {
            return Err(Error::invalid(format!(
                "The requested CIDR ({cidr}) is smaller than the minimum."
            )));
        }
        let (mut claimed, mut failed) = (Vec::new(), Vec::new());
        let subnets: Vec<IpNet> = cidr
            .subnets(bs)
            .map_err(|e| Error::invalid(format!("split {cidr} into /{bs} blocks: {e}")))?
            .collect();
        for b in subnets {
            match self.claim_block(&b, host).await? {
                Some(_) => claimed.push(b),
                None => failed.push(b),
            }
        }
        Ok((claimed, failed))
    }
}
