//! Releasing addresses, by address or by handle, and reading a handle's addresses and an
//! address's allocation attributes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{enc, handle_id, HandleState, Ipam, RETRIES};
use crate::datastore::Write;
use crate::error::{Error, Result};
use crate::model::block::{AllocationAttribute, ReleaseOptions};
use crate::model::keys;

impl Ipam {
    /// Releases addresses (idempotent). Returns those that were not allocated.
    pub async fn release_ips(&self, ips: &[IpAddr]) -> Result<Vec<IpAddr>> {
        let opts: Vec<ReleaseOptions> = ips.iter().map(|ip| ReleaseOptions::new(*ip)).collect();
        self.release(&opts).await
    }

    /// Releases addresses with optional handle and sequence-number checks; a check that
    /// fails makes that whole block fail with a conflict, as in Calico.
    pub async fn release(&self, opts: &[ReleaseOptions]) -> Result<Vec<IpAddr>> {
        let pools = self.list_pools().await?;
        let mut by_block: BTreeMap<IpNet, Vec<ReleaseOptions>> = BTreeMap::new();
        let mut unallocated = Vec::new();
        let mut orphans = Vec::new();
        for o in opts {
            match pools.iter().find_map(|p| p.spec.block_for(&o.address)) {
                Some(cidr) => by_block.entry(cidr).or_default().push(o.clone()),
                None => orphans.push(o.clone()),
            }
        }
        if !orphans.is_empty() {
            // Addresses in no pool (the pool was deleted): look through every block.
            let blocks = self.list_blocks(None).await?;
            for o in orphans {
                match blocks
                    .iter()
                    .map(|(b, _)| b.cidr)
                    .find(|c| c.contains(&o.address))
                {
                    Some(cidr) => by_block.entry(cidr).or_default().push(o),
                    None => unallocated.push(o.address),
                }
            }
        }
        for (cidr, opts) in by_block {
            unallocated.extend(self.release_from_block(&cidr, &opts).await?);
        }
        Ok(unallocated)
    }

    pub(super) async fn release_from_block(
        &self,
        cidr: &IpNet,
        opts: &[ReleaseOptions],
    ) -> Result<Vec<IpAddr>> {
        for _ in 0..RETRIES {
            let Some(cur) = self.get_block(cidr).await? else {
                return Ok(opts.iter().map(|o| o.address).collect());
            };
            let mut block = cur.block;
            let released = block.release(opts).map_err(|e| Error::Conflict {
                key: format!("{} ({e})", keys::block_key(cidr)),
            })?;
            if released.released.is_empty() {
                return Ok(released.unallocated);
            }
            let mut writes = Vec::new();
            if block.is_empty() && block.host_affinity().is_none() {
                writes.push(Write::delete(keys::block_key(cidr), cur.rev));
            } else {
                block.bump_sequence();
                writes.push(Write::update(
                    keys::block_key(cidr),
                    enc("block", &block)?,
                    cur.rev,
                ));
            }
            for (h, n) in &released.count_by_handle {
                let state = self.read_handle(h).await?;
                if let Some(w) = self.handle_write(h, &state, cidr, -(*n as i64))? {
                    writes.push(w);
                }
            }
            match self.store.txn(writes).await {
                Ok(_) => {
                    self.cache_forget(cidr);
                    return Ok(released.unallocated);
                }
                Err(e) if e.is_lost_race() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::msg(format!(
            "release addresses in block {cidr}: Max retries hit - excessive concurrent IPAM requests"
        )))
    }

    /// Releases everything recorded under `handle`. [`Error::NotFound`] if there is no such
    /// handle.
    pub async fn release_by_handle(&self, handle: &str) -> Result<()> {
        let handle = handle_id(handle);
        let HandleState::At(h, _) = self.read_handle(&handle).await? else {
            return Err(Error::NotFound {
                key: keys::handle_key(&handle),
            });
        };
        for cidr_s in h.block.keys() {
            let Ok(cidr) = cidr_s.parse::<IpNet>() else {
                continue;
            };
            let mut done = false;
            for _ in 0..RETRIES {
                let state = self.read_handle(&handle).await?;
                let Some(cur) = self.get_block(&cidr).await? else {
                    // The block is gone: drop its entry from the handle.
                    if let HandleState::At(mut hh, rev) = state {
                        hh.block.remove(cidr_s);
                        let w = if hh.is_empty() {
                            Write::delete(keys::handle_key(&handle), rev)
                        } else {
                            Write::update(keys::handle_key(&handle), enc("handle", &hh)?, rev)
                        };
                        if self.store.txn(vec![w]).await.is_err() {
                            continue;
                        }
                    }
                    done = true;
                    break;
                };
                let mut block = cur.block;
                let n = block.release_by_handle(&handle, None);
                let mut writes = Vec::new();
                if n > 0 {
                    if block.is_empty() && block.host_affinity().is_none() {
                        writes.push(Write::delete(keys::block_key(&cidr), cur.rev));
                    } else {
                        block.bump_sequence();
                        writes.push(Write::update(
                            keys::block_key(&cidr),
                            enc("block", &block)?,
                            cur.rev,
                        ));
                    }
                }
                // Remove this block's whole entry: the handle may over-count (Calico writes
                // handles before blocks), never under-count.
                if let HandleState::At(mut hh, rev) = state {
                    hh.block.remove(cidr_s);
                    writes.push(if hh.is_empty() {
                        Write::delete(keys::handle_key(&handle), rev)
                    } else {
                        Write::update(keys::handle_key(&handle), enc("handle", &hh)?, rev)
                    });
                }
                if writes.is_empty() {
                    done = true;
                    break;
                }
                match self.store.txn(writes).await {
                    Ok(_) => {
                        self.cache_forget(&cidr);
                        done = true;
                        break;
                    }
                    Err(e) if e.is_lost_race() => continue,
                    Err(e) => return Err(e),
                }
            }
            if !done {
                return Err(Error::msg(format!(
                    "release handle {handle}: Max retries hit - excessive concurrent IPAM requests"
                )));
            }
        }
        Ok(())
    }

    /// Addresses recorded under `handle`; [`Error::NotFound`] if there is no such handle.
    pub async fn ips_by_handle(&self, handle: &str) -> Result<Vec<IpAddr>> {
        let handle = handle_id(handle);
        let HandleState::At(h, _) = self.read_handle(&handle).await? else {
            return Err(Error::NotFound {
                key: keys::handle_key(&handle),
            });
        };
        let mut out = Vec::new();
        for cidr_s in h.block.keys() {
            let Ok(cidr) = cidr_s.parse::<IpNet>() else {
                continue;
            };
            if let Some(b) = self.get_block(&cidr).await? {
                out.extend(b.block.ips_with_handle(&handle));
            }
        }
        Ok(out)
    }

    /// The allocation attribute (handle, owner attributes) of `ip`, as Calico's
    /// `GetAssignmentAttributes` finds it: in the block the pool containing `ip` gives it
    /// (any pool, enabled or not). `None` when no pool contains `ip`, its block does not
    /// exist, or `ip` is not allocated; an address cooling down after its release
    /// (`releasedAt` set: Calico's `ErrorIPInCooldown`) is not allocated either.
    pub async fn assignment_attributes(&self, ip: IpAddr) -> Result<Option<AllocationAttribute>> {
        let pools = self.list_pools().await?;
        let Some(cidr) = pools.iter().find_map(|p| p.spec.block_for(&ip)) else {
            return Ok(None);
        };
        let Some(b) = self.get_block(&cidr).await? else {
            return Ok(None);
        };
        Ok(b.block
            .attribute_of(&ip)
            .filter(|a| a.released_at.is_none())
            .cloned())
    }
}
