//! The block cache: blocks as last read or written, with their revision.

use std::collections::HashMap;

use ipnet::IpNet;

use super::{dec_block, BlockKv, Ipam};
use crate::datastore::Revision;
use crate::error::Result;
use crate::model::block::AllocationBlock;
use crate::model::keys;
use crate::model::IpFamily;

/// A cached block and when it was read.
#[derive(Clone)]
pub(super) struct CachedBlock {
    pub(super) block: AllocationBlock,
    pub(super) rev: Revision,
    pub(super) at: std::time::Instant,
}

/// How long a block seen full is trusted to stay full (others may release into it).
pub(super) const FULL_BLOCK_TTL: std::time::Duration = std::time::Duration::from_secs(10);

impl Ipam {
    pub(super) async fn get_block(&self, cidr: &IpNet) -> Result<Option<BlockKv>> {
        match self.store.get(&keys::block_key(cidr)).await? {
            Some(kv) => {
                let b = BlockKv {
                    block: dec_block(&kv)?,
                    rev: kv.revision,
                };
                self.cache_put(cidr, &b.block, b.rev);
                Ok(Some(b))
            }
            None => {
                self.cache_forget(cidr);
                Ok(None)
            }
        }
    }

    pub(super) fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<IpNet, CachedBlock>> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn cache_put(&self, cidr: &IpNet, block: &AllocationBlock, rev: Revision) {
        self.cache().insert(
            *cidr,
            CachedBlock {
                block: block.clone(),
                rev,
                at: std::time::Instant::now(),
            },
        );
    }

    pub(super) fn cache_forget(&self, cidr: &IpNet) {
        self.cache().remove(cidr);
    }

    /// A cached block of `host` worth trying: with room, or seen full too long ago to trust.
    pub(super) fn cached_block(&self, cidr: &IpNet) -> Option<CachedBlock> {
        self.cache().get(cidr).cloned()
    }

    /// All blocks of a family (or both).
    pub async fn list_blocks(
        &self,
        family: Option<IpFamily>,
    ) -> Result<Vec<(AllocationBlock, Revision)>> {
        let prefix = match family {
            Some(f) => keys::blocks_prefix(f),
            None => keys::ALL_BLOCKS_PREFIX.to_string(),
        };
        let kvs = self.store.list(&prefix).await?;
        // A damaged block is left out (and logged): the others stay usable, and nothing
        // claims its CIDR while its key exists (claims are create-if-absent).
        Ok(kvs
            .iter()
            .filter_map(|kv| match dec_block(kv) {
                Ok(b) => Some((b, kv.revision)),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a damaged IPAM block");
                    None
                }
            })
            .collect())
    }
}
