//! IP pools: listing, creating, deleting, the start-up defaults and usage summaries.

use ipnet::IpNet;

use super::reservations::Reservations;
use super::Ipam;
use crate::datastore::{resources, KeyValue};
use crate::error::{Error, Result};
use crate::model::keys;
use crate::model::{IpFamily, IpPool, IpPoolSpec, IpReservation};

/// calico-node's default pool for `cidr` (`createIPPool`): named `default-ipv4-ippool` or
/// `default-ipv6-ippool`, NAT outgoing on for IPv4 and off for IPv6, no encapsulation, the
/// family's default block size (or the pool's own size when it is smaller than a block), on
/// every node. The settings (`CALICO_IPV4POOL_IPIP`, ...) change the fields.
pub fn default_pool(cidr: &IpNet) -> IpPool {
    let family = IpFamily::of_net(cidr);
    let name = match family {
        IpFamily::V4 => "default-ipv4-ippool",
        IpFamily::V6 => "default-ipv6-ippool",
    };
    let mut spec = IpPoolSpec::with_cidr(&cidr.trunc());
    spec.nat_outgoing = family == IpFamily::V4;
    // A pool smaller than the default block gets blocks of its own size.
    spec.block_size = family.default_block_size().max(cidr.prefix_len());
    IpPool::new(name, spec)
}

/// One pool with its block usage, for `ipam show`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PoolSummary {
    /// Pool name.
    pub name: String,
    /// Pool CIDR.
    pub cidr: String,
    /// Addresses in the pool.
    pub size: u128,
    /// Addresses allocated.
    pub used: u64,
    /// Whether the pool takes new allocations.
    pub disabled: bool,
    /// Each block inside the pool.
    pub blocks: Vec<BlockSummary>,
}

/// One block, for `ipam show`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BlockSummary {
    /// Block CIDR.
    pub cidr: String,
    /// Addresses in the block.
    pub size: u64,
    /// Allocated.
    pub used: u64,
    /// Free.
    pub free: u64,
    /// `host:<node>` or none.
    pub affinity: Option<String>,
}

fn net_size(n: &IpNet) -> u128 {
    let bits = match n {
        IpNet::V4(_) => 32,
        IpNet::V6(_) => 128,
    };
    let host_bits = bits - n.prefix_len() as u32;
    if host_bits >= 128 {
        u128::MAX
    } else {
        1u128 << host_bits
    }
}

/// Decodes listed pools; see [`Ipam::list_pools`].
fn decode_pools(kvs: &[KeyValue]) -> Vec<IpPool> {
    let mut pools = Vec::with_capacity(kvs.len());
    for kv in kvs {
        match resources::decode::<crate::model::IpPoolSpec>(kv).and_then(|mut p| {
            p.spec.set_defaults();
            p.spec.check_usable()?;
            Ok(p)
        }) {
            Ok(p) => pools.push(p),
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "skipping an unusable IP pool"),
        }
    }
    pools
}

impl Ipam {
    /// Every IP pool, in name order (defaults applied as clientv3 applies them on read).
    /// Pools that do not decode, or that no allocator could use (a CIDR that does not parse,
    /// a block size outside the family's range, which Calico refuses too), are left out and
    /// logged, never a reason to fail every request.
    pub async fn list_pools(&self) -> Result<Vec<IpPool>> {
        let kvs = self.store.list(&IpPool::list_prefix(None)).await?;
        Ok(decode_pools(&kvs))
    }

    /// Every IP pool (as [`Ipam::list_pools`]) and every IP reservation, read together in
    /// one round trip: what an assignment needs to know before it looks at blocks.
    pub(super) async fn pools_and_reservations(&self) -> Result<(Vec<IpPool>, Reservations)> {
        let prefixes = [IpPool::list_prefix(None), IpReservation::list_prefix(None)];
        let mut lists = self.store.list_many(&prefixes).await?.into_iter();
        let pools = decode_pools(&lists.next().unwrap_or_default());
        let reservations = Reservations::from_kvs(&lists.next().unwrap_or_default());
        Ok((pools, reservations))
    }

    /// The pool named `name`.
    pub async fn get_pool(&self, name: &str) -> Result<Option<IpPool>> {
        let mut p: Option<IpPool> =
            resources::get(self.store.as_ref(), &keys::ip_pool_key(name)).await?;
        if let Some(p) = &mut p {
            p.spec.set_defaults();
        }
        Ok(p)
    }

    /// Creates a pool after Calico's checks; a pool overlapping another, or existing blocks
    /// of another block size, is refused with a message naming it.
    pub async fn create_pool(&self, mut pool: IpPool) -> Result<IpPool> {
        crate::model::validate_resource_name(pool.name())
            .map_err(|e| Error::invalid(format!("create IP pool {}: {e}", pool.name())))?;
        pool.spec
            .prepare()
            .map_err(|e| e.context(format!("create IP pool {}", pool.name())))?;
        let cidr = pool.spec.cidr_net()?;
        for other in self.list_pools().await? {
            if let Ok(o) = other.spec.cidr_net() {
                if o.contains(&cidr.network()) || cidr.contains(&o.network()) {
                    return Err(Error::invalid(format!(
                        "create IP pool {} ({cidr}): overlaps IP pool {} ({o})",
                        pool.name(),
                        other.name()
                    )));
                }
            }
        }
        // Blocks of another size inside the pool would be looked up at the wrong CIDR by
        // release and AssignIP (Calico's clientv3 IPPool Create refuses such a pool too).
        let bs = pool.spec.block_size_or_default();
        let family = crate::model::IpFamily::of_net(&cidr);
        for kv in self.store.list(&keys::blocks_prefix(family)).await? {
            let Some(b) = keys::parse_block_key(&kv.key) else {
                continue;
            };
            if b.prefix_len() != bs && (b.contains(&cidr.network()) || cidr.contains(&b.network()))
            {
                return Err(Error::invalid(format!(
                    "create IP pool {} ({cidr}): IPPool blocksSize conflicts with existing allocations that use a different blockSize (block {b}, the pool's blocks /{bs})",
                    pool.name()
                )));
            }
        }
        resources::create(self.store.as_ref(), &mut pool)
            .await
            .map_err(|e| e.context(format!("create IP pool {}", pool.name())))?;
        Ok(pool)
    }

    /// Deletes a pool as Calico does: disable it, release every host's affinity for its
    /// blocks (empty blocks go), then delete it. Allocated addresses stay allocated.
    pub async fn delete_pool(&self, name: &str) -> Result<()> {
        let Some(mut pool) = self.get_pool(name).await? else {
            return Err(Error::NotFound {
                key: format!("IP pool {name}"),
            });
        };
        if !pool.spec.disabled {
            pool.spec.disabled = true;
            resources::update(self.store.as_ref(), &mut pool).await?;
        }
        let cidr = pool.spec.cidr_net()?;
        self.release_pool_affinities(&cidr).await?;
        let rev = pool.metadata.revision();
        self.store.delete(&keys::ip_pool_key(name), rev).await
    }

    /// Creates each of `defaults` (see [`default_pool`]) whose family has no IP pool yet, as
    /// calico-node does (`configureIPPools`: a pool per missing family); one created meanwhile
    /// by another host is fine. Returns the names created.
    pub async fn ensure_default_pools(&self, defaults: &[IpPool]) -> Result<Vec<String>> {
        // Every pool whose CIDR parses counts, usable or not, as in calico-node.
        let present: Vec<Option<IpFamily>> = self
            .store
            .list(&IpPool::list_prefix(None))
            .await?
            .iter()
            .filter_map(|kv| resources::decode::<IpPoolSpec>(kv).ok())
            .map(|p| p.spec.family())
            .collect();
        let mut created = Vec::new();
        for pool in defaults {
            if present.contains(&pool.spec.family()) {
                continue;
            }
            match self.create_pool(pool.clone()).await {
                Ok(p) => created.push(p.name().to_string()),
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(created)
    }

    /// Pools with their blocks' usage.
    pub async fn summary(&self) -> Result<Vec<PoolSummary>> {
        let pools = self.list_pools().await?;
        let blocks = self.list_blocks(None).await?;
        let mut out = Vec::new();
        for p in pools {
            let Ok(cidr) = p.spec.cidr_net() else {
                continue;
            };
            let mut s = PoolSummary {
                name: p.name().to_string(),
                cidr: cidr.to_string(),
                size: net_size(&cidr),
                used: 0,
                disabled: p.spec.disabled,
                blocks: Vec::new(),
            };
            for (b, _) in &blocks {
                let bc = b.cidr;
                if !cidr.contains(&bc) {
                    continue;
                }
                let size = net_size(&bc) as u64;
                let free = b.free_count() as u64;
                s.used += size - free;
                s.blocks.push(BlockSummary {
                    cidr: bc.to_string(),
                    size,
                    used: size - free,
                    free,
                    affinity: b.affinity.clone(),
                });
            }
            out.push(s);
        }
        Ok(out)
    }
}
