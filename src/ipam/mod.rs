//! Calico's block allocator over the datastore.
//!
//! The data and the algorithm are Calico's (`libcalico-go/lib/ipam`): addresses come from
//! host-affine blocks (`/calico/ipam/v2/assignment/...`), claimed through block affinities
//! (`/calico/ipam/v2/host/<node>/...`) and counted in handles (`/calico/ipam/v2/handle/...`).
//! Every write is a compare-and-swap on the key's revision, retried a bounded number of
//! times on conflict. Where Calico writes two keys in two steps (handle then block; block
//! then affinity), we write both in one datastore transaction, so no reader ever sees one
//! without the other.

mod pools;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use chrono::Utc;
use ipnet::IpNet;

use crate::datastore::{resources, Datastore, KeyValue, Revision, Write};
use crate::error::{Error, Result};
use crate::model::block::{AllocationBlock, ReleaseOptions};
use crate::model::ipam::{BlockAffinity, IpamConfig, IpamHandle};
use crate::model::keys;
use crate::model::{IpFamily, IpPool};

pub use pools::PoolSummary;

/// How many times a lost compare-and-swap is retried (Calico's `datastoreRetries`).
pub const RETRIES: usize = 100;
/// Blocks a host may own when neither the config nor the request sets a limit.
pub const DEFAULT_MAX_BLOCKS: usize = 20;
/// The use our addresses are for.
pub const USE_WORKLOAD: &str = crate::model::ippool::USE_WORKLOAD;

/// Arguments of [`Ipam::auto_assign`] (one address family per call).
#[derive(Clone, Debug)]
pub struct AutoAssign {
    /// How many addresses.
    pub num: usize,
    /// Which family.
    pub family: IpFamily,
    /// Pools to use, in order (CIDRs); empty means every enabled pool that selects the node.
    pub pools: Vec<IpNet>,
    /// Handle the addresses are recorded under.
    pub handle: String,
    /// Attributes stored with the allocation (`node`, `timestamp`, ...).
    pub attrs: BTreeMap<String, String>,
    /// The host allocating.
    pub host: String,
    /// Per-request limit on blocks owned by the host.
    pub max_blocks: Option<usize>,
    /// Intended use (`Workload`).
    pub intended_use: String,
}

impl AutoAssign {
    /// `num` workload addresses of `family` for `host` under `handle`.
    pub fn new(num: usize, family: IpFamily, host: &str, handle: &str) -> Self {
        AutoAssign {
            num,
            family,
            pools: Vec::new(),
            handle: handle.to_string(),
            attrs: default_attrs(host),
            host: host.to_string(),
            max_blocks: None,
            intended_use: USE_WORKLOAD.to_string(),
        }
    }
}

/// The attributes every allocation of ours carries.
pub fn default_attrs(host: &str) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert("node".to_string(), host.to_string());
    a.insert(
        "timestamp".to_string(),
        crate::model::go_time_string(&Utc::now()),
    );
    a
}

/// What [`Ipam::auto_assign`] got.
#[derive(Clone, Debug, Default)]
pub struct Assigned {
    /// Addresses, with the block's prefix length (Calico's convention).
    pub ips: Vec<IpNet>,
    /// Why fewer than asked were assigned, in Calico's words.
    pub msgs: Vec<String>,
    /// Set when the host's block limit stopped the assignment.
    pub block_limit: Option<String>,
}

impl Assigned {
    /// Calico's `PartialFulfillmentError` text.
    pub fn shortfall(&self, asked: usize, family: IpFamily) -> String {
        let mut s = format!(
            "Assigned {} out of {} requested IPv{} addresses",
            self.ips.len(),
            asked,
            family.number()
        );
        for m in self.msgs.iter().chain(self.block_limit.iter()) {
            s.push_str("; ");
            s.push_str(m);
        }
        s
    }
}

/// Arguments of [`Ipam::assign_ip`].
#[derive(Clone, Debug)]
pub struct AssignIp {
    /// The address.
    pub ip: IpAddr,
    /// Handle it is recorded under.
    pub handle: String,
    /// Attributes stored with it.
    pub attrs: BTreeMap<String, String>,
    /// The host.
    pub host: String,
    /// Intended use; empty skips the check.
    pub intended_use: String,
}

/// Calico's IPAM over one datastore.
#[derive(Clone)]
pub struct Ipam {
    store: Arc<dyn Datastore>,
    /// Blocks as last read or written, with their revision. Writes are still compare-and-swap
    /// on the revision, so a stale entry costs a retry, never a wrong allocation.
    blocks: Arc<std::sync::Mutex<HashMap<IpNet, CachedBlock>>>,
}

/// A cached block and when it was read.
#[derive(Clone)]
struct CachedBlock {
    block: AllocationBlock,
    rev: Revision,
    at: std::time::Instant,
}

/// How long a block seen full is trusted to stay full (others may release into it).
const FULL_BLOCK_TTL: std::time::Duration = std::time::Duration::from_secs(10);

fn handle_id(h: &str) -> String {
    // Calico cuts handle IDs at the first carriage return.
    h.split('\r').next().unwrap_or("").to_string()
}

fn enc<T: serde::Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::msg(format!("encode {what}: {e}")))
}

fn dec<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|e| Error::json(&kv.key, e))
}

/// A stored block, decoded and checked (one allocation entry per address, attribute
/// indexes in range, ...): the allocator indexes into it, so a damaged one (edited by hand,
/// written by a buggy tool) is an error naming its key, never a panic.
fn dec_block(kv: &KeyValue) -> Result<AllocationBlock> {
    AllocationBlock::from_json(&kv.value).map_err(|e| e.context(format!("read {}", kv.key)))
}

/// FNV-1 (32-bit) of the host name: where the host starts looking for a free block, so
/// hosts spread over a pool instead of racing for its first block.
fn fnv1_32(s: &str) -> u32 {
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

/// A block as read, with its revision.
struct BlockKv {
    block: AllocationBlock,
    rev: Revision,
}

/// A handle as known: not yet read, read absent, or read at a revision.
#[derive(Clone, Debug)]
enum HandleState {
    Unknown,
    Absent,
    At(IpamHandle, Revision),
}

impl Ipam {
    /// The allocator over `store`.
    pub fn new(store: Arc<dyn Datastore>) -> Self {
        Ipam {
            store,
            blocks: Default::default(),
        }
    }

    /// The datastore.
    pub fn store(&self) -> &Arc<dyn Datastore> {
        &self.store
    }

    // ------------------------------------------------------------ config

    /// IPAM config; a missing key reads as Calico's defaults and writes nothing.
    pub async fn get_config(&self) -> Result<IpamConfig> {
        let kv = self.store.get(keys::IPAM_CONFIG_KEY).await?;
        IpamConfig::from_stored(kv.as_ref().map(|kv| kv.value.as_slice()))
    }

    /// Sets the IPAM config, with Calico's rules.
    pub async fn set_config(&self, cfg: &IpamConfig) -> Result<()> {
        cfg.validate()?;
        self.store
            .put(keys::IPAM_CONFIG_KEY, enc("ipam config", cfg)?)
            .await
            .map(|_| ())
    }

    // ------------------------------------------------------------ blocks

    async fn get_block(&self, cidr: &IpNet) -> Result<Option<BlockKv>> {
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

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<IpNet, CachedBlock>> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache_put(&self, cidr: &IpNet, block: &AllocationBlock, rev: Revision) {
        self.cache().insert(
            *cidr,
            CachedBlock {
                block: block.clone(),
                rev,
                at: std::time::Instant::now(),
            },
        );
    }

    fn cache_forget(&self, cidr: &IpNet) {
        self.cache().remove(cidr);
    }

    /// A cached block of `host` worth trying: with room, or seen full too long ago to trust.
    fn cached_block(&self, cidr: &IpNet) -> Option<CachedBlock> {
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

    /// Claims `cidr` for `host`: the block created with our affinity and the affinity
    /// confirmed, in one transaction. Returns the block if it is ours afterwards.
    async fn claim_block(&self, cidr: &IpNet, host: &str) -> Result<Option<BlockKv>> {
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
                        self.confirm_affinity(cidr, host).await?;
                        return Ok(Some(existing));
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

    async fn confirm_affinity(&self, cidr: &IpNet, host: &str) -> Result<()> {
        let key = keys::block_affinity_key(host, cidr);
        let confirmed = enc("affinity", &BlockAffinity::confirmed())?;
        for _ in 0..RETRIES {
            let res = match self.store.get(&key).await? {
                None => self.store.create(&key, confirmed.clone()).await,
                Some(kv) => {
                    let a: BlockAffinity = dec(&kv)?;
                    if a.is_confirmed() {
                        return Ok(());
                    }
                    self.store
                        .update(&key, confirmed.clone(), kv.revision)
                        .await
                }
            };
            match res {
                Ok(_) => return Ok(()),
                Err(e) if e.is_lost_race() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::msg(format!(
            "confirm affinity {cidr}: Max retries hit - excessive concurrent IPAM requests"
        )))
    }

    /// The handle write that adds `n` addresses of `cidr` (or removes, for negative `n`).
    fn handle_write(
        &self,
        handle: &str,
        state: &HandleState,
        cidr: &IpNet,
        n: i64,
    ) -> Result<Option<Write>> {
        if handle.is_empty() {
            // No handle (AssignIP without a HandleID): nothing to count, as in Calico.
            return Ok(None);
        }
        let key = keys::handle_key(handle);
        let mut h = match state {
            HandleState::At(h, _) => h.clone(),
            _ => IpamHandle::default(),
        };
        if n >= 0 {
            h.increment(cidr, n as u64);
        } else {
            // A handle that under-counts is left as far as it goes (Calico tolerates over-counts).
            let have = h.block.get(&cidr.trunc().to_string()).copied().unwrap_or(0);
            if have > 0 {
                h.decrement(cidr, n.unsigned_abs().min(have), handle)?;
            }
        }
        Ok(match state {
            HandleState::Unknown | HandleState::Absent => {
                if n < 0 {
                    None // nothing recorded under a handle we never saw
                } else {
                    Some(Write::create(key, enc("handle", &h)?))
                }
            }
            HandleState::At(_, rev) => {
                if h.is_empty() {
                    Some(Write::delete(key, *rev))
                } else {
                    Some(Write::update(key, enc("handle", &h)?, *rev))
                }
            }
        })
    }

    async fn read_handle(&self, handle: &str) -> Result<HandleState> {
        Ok(match self.store.get(&keys::handle_key(handle)).await? {
            None => HandleState::Absent,
            Some(kv) => HandleState::At(dec(&kv)?, kv.revision),
        })
    }

    /// Assigns up to `n` addresses from block `cidr`, writing block and handle together.
    /// `first` is a copy of the block already read, to save a round trip.
    async fn assign_from_block(
        &self,
        cidr: &IpNet,
        mut first: Option<BlockKv>,
        n: usize,
        handle: &str,
        attrs: &BTreeMap<String, String>,
        affine_to: Option<&str>,
    ) -> Result<Vec<IpNet>> {
        // A fresh handle is the common case: try creating it before reading it.
        let mut hstate = HandleState::Unknown;
        for _ in 0..RETRIES {
            let cur = match first.take() {
                Some(b) => b,
                None => match self.get_block(cidr).await? {
                    Some(b) => b,
                    None => return Ok(Vec::new()),
                },
            };
            let mut block = cur.block;
            if let Some(host) = affine_to {
                if block.host_affinity() != Some(host) {
                    return Ok(Vec::new());
                }
            }
            let ips = block.assign(n, (!handle.is_empty()).then_some(handle), attrs);
            if ips.is_empty() {
                return Ok(Vec::new());
            }
            block.bump_sequence();
            let mut writes = vec![Write::update(
                keys::block_key(cidr),
                enc("block", &block)?,
                cur.rev,
            )];
            if let Some(w) = self.handle_write(handle, &hstate, cidr, ips.len() as i64)? {
                writes.push(w);
            }
            match self.store.txn(writes).await {
                Ok(rev) => {
                    self.cache_put(cidr, &block, rev);
                    let len = cidr.prefix_len();
                    return Ok(ips
                        .into_iter()
                        .map(|ip| IpNet::new(ip, len).unwrap())
                        .collect());
                }
                Err(e) if e.is_lost_race() => {
                    if let Error::Exists { key }
                    | Error::Conflict { key }
                    | Error::NotFound { key } = e.root()
                    {
                        if key.starts_with(keys::HANDLES_PREFIX) {
                            hstate = self.read_handle(handle).await?;
                        }
                    }
                    continue;
                }
                Err(e) => return Err(e.context(format!("assign from block {cidr}"))),
            }
        }
        Err(Error::msg(format!(
            "assign from block {cidr}: Max retries hit - excessive concurrent IPAM requests"
        )))
    }

    // ------------------------------------------------------------ pools in use

    async fn node_labels(&self, host: &str) -> Result<BTreeMap<String, String>> {
        let node: Option<crate::model::Node> =
            resources::get(self.store.as_ref(), &keys::node_key(host)).await?;
        match node {
            Some(n) => Ok(n.metadata.labels),
            None => Err(Error::NotFound {
                key: format!("node {host} (its Node resource)"),
            }),
        }
    }

    /// Calico's `determinePools`: the explicitly requested pools (each must be enabled),
    /// or every enabled automatic pool whose node selector selects `host`, in name order.
    async fn pools_for(
        &self,
        family: IpFamily,
        requested: &[IpNet],
        host: &str,
        intended_use: &str,
    ) -> Result<Vec<IpPool>> {
        let all = self.list_pools().await?;
        let enabled: Vec<IpPool> = all
            .into_iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && !p.spec.disabled
                    && p.spec.family() == Some(family)
            })
            .collect();
        if !requested.is_empty() {
            let mut out = Vec::new();
            for r in requested {
                match enabled
                    .iter()
                    .find(|p| p.spec.cidr_net().ok().as_ref() == Some(r))
                {
                    Some(p) => out.push(p.clone()),
                    None => {
                        return Err(Error::invalid(format!(
                            "the given pool ({r}) does not exist, or is not enabled"
                        )))
                    }
                }
            }
            return Ok(out);
        }
        let usable: Vec<IpPool> = enabled
            .into_iter()
            .filter(|p| p.spec.allows_use(intended_use))
            .collect();
        if usable.is_empty() {
            return Err(Error::msg(format!(
                "cannot find a qualified ippool, no IPv{} pools match the required use ({intended_use})",
                family.number()
            )));
        }
        // The Node's labels matter only to a selector other than `all()`: skip the read.
        let labels = if usable
            .iter()
            .any(|p| p.spec.is_automatic() && p.spec.node_selector.trim() != "all()")
        {
            self.node_labels(host).await?
        } else {
            BTreeMap::new()
        };
        let mut out = Vec::new();
        for p in usable {
            if !p.spec.is_automatic() {
                continue;
            }
            if p.spec.node_selector()?.matches(&labels) {
                out.push(p);
            }
        }
        if out.is_empty() {
            return Err(Error::msg(format!(
                "no configured Calico IPv{} pools for node {host}",
                family.number()
            )));
        }
        Ok(out)
    }

    // ------------------------------------------------------------ AutoAssign

    /// Assigns `args.num` addresses: this host's affine blocks first, then newly claimed
    /// blocks, then (strict affinity off) free addresses in other hosts' blocks.
    pub async fn auto_assign(&self, args: &AutoAssign) -> Result<Assigned> {
        let handle = handle_id(&args.handle);
        let host = args.host.as_str();
        let pools = self
            .pools_for(args.family, &args.pools, host, &args.intended_use)
            .await?;
        let pool_nets: Vec<(IpNet, u8)> = pools
            .iter()
            .filter_map(|p| Some((p.spec.cidr_net().ok()?, p.spec.block_size_or_default())))
            .collect();
        let in_pools = |b: &IpNet| pool_nets.iter().any(|(p, _)| p.contains(b));
        let mut out = Assigned::default();
        let mut need = args.num;

        // 0. The steady state: a block of ours, known from an earlier read or write, has room.
        // Its write is a compare-and-swap on the revision we know, so a stale copy costs one
        // retry with a fresh read, never a wrong allocation. No config, affinity or block
        // read is needed.
        let mut known: Vec<(IpNet, BlockKv)> = self
            .cache()
            .iter()
            .filter(|(c, b)| {
                IpFamily::of_net(c) == args.family
                    && in_pools(c)
                    && b.block.host_affinity() == Some(host)
                    && b.block.free_count() > 0
            })
            .map(|(c, b)| {
                (
                    *c,
                    BlockKv {
                        block: b.block.clone(),
                        rev: b.rev,
                    },
                )
            })
            .collect();
        known.sort_by_key(|a| a.0);
        for (cidr, block) in known {
            if need == 0 {
                break;
            }
            let got = self
                .assign_from_block(&cidr, Some(block), need, &handle, &args.attrs, Some(host))
                .await?;
            need -= got.len();
            out.ips.extend(got);
        }
        if need == 0 {
            return Ok(out);
        }
        let cfg = self.get_config().await?;

        // 1. Blocks this host already owns, in key order.
        let affs = self
            .store
            .list(&keys::host_affinities_prefix(host, args.family))
            .await?;
        let mut owned = 0usize;
        for kv in &affs {
            let Some((_, cidr)) = keys::parse_block_affinity_key(&kv.key) else {
                continue;
            };
            owned += 1;
            if need == 0 || !in_pools(&cidr) {
                continue;
            }
            let aff: BlockAffinity = dec(kv)?;
            // A block of ours seen full moments ago is skipped without a read, so the cost of
            // an allocation does not grow with the number of full blocks the host owns.
            if aff.is_confirmed() {
                if let Some(c) = self.cached_block(&cidr) {
                    if c.block.free_count() == 0 && c.at.elapsed() < FULL_BLOCK_TTL {
                        continue;
                    }
                }
            }
            let block = match self.get_block(&cidr).await? {
                // An affinity with no block: a claim that never finished. Finish it.
                None => match self.claim_block(&cidr, host).await? {
                    Some(b) => b,
                    None => continue,
                },
                Some(b) if b.block.host_affinity() != Some(host) => {
                    // The block went to another host: this affinity is stale.
                    let _ = self.store.delete(&kv.key, Some(kv.revision)).await;
                    owned -= 1;
                    continue;
                }
                Some(b) => {
                    if !aff.is_confirmed() {
                        self.confirm_affinity(&cidr, host).await?;
                    }
                    b
                }
            };
            if block.block.free_count() == 0 {
                continue;
            }
            let got = self
                .assign_from_block(&cidr, Some(block), need, &handle, &args.attrs, Some(host))
                .await?;
            need -= got.len();
            out.ips.extend(got);
        }

        // 2. New blocks.
        let global = (cfg.max_blocks_per_host > 0).then_some(cfg.max_blocks_per_host as usize);
        let max_blocks = match (global, args.max_blocks) {
            (Some(g), Some(r)) => g.min(r),
            (Some(g), None) => g,
            (None, Some(r)) => r,
            (None, None) => DEFAULT_MAX_BLOCKS,
        };
        // Blocks already counted in `owned` (so a block found again is not counted twice).
        let mut counted: HashSet<IpNet> = affs
            .iter()
            .filter_map(|kv| keys::parse_block_affinity_key(&kv.key).map(|(_, c)| c))
            .collect();
        let mut exhausted = false;
        while need > 0 {
            if owned >= max_blocks {
                out.block_limit = Some(format!(
                    "Need to allocate an IPAM block but could not - limit of {max_blocks} blocks reached for this node"
                ));
                break;
            }
            if !cfg.auto_allocate_blocks {
                break;
            }
            let existing: HashMap<IpNet, AllocationBlock> = self
                .list_blocks(Some(args.family))
                .await?
                .into_iter()
                .map(|(b, _)| (b.cidr, b))
                .collect();
            let mut claimed = None;
            'pools: for (pool, bs) in &pool_nets {
                for cidr in block_order(pool, *bs, host) {
                    match existing.get(&cidr) {
                        // Ours with room: claimed by a concurrent request of this host
                        // since we listed our affinities. Use it, as Calico's
                        // findUsableBlock does, rather than claim yet another block.
                        Some(b) if b.host_affinity() == Some(host) && b.free_count() > 0 => {
                            claimed = Some((cidr, None));
                            break 'pools;
                        }
                        Some(_) => continue,
                        None => {}
                    }
                    if let Some(b) = self.claim_block(&cidr, host).await? {
                        claimed = Some((cidr, Some(b)));
                        break 'pools;
                    }
                }
            }
            let Some((cidr, block)) = claimed else {
                exhausted = true;
                break;
            };
            if counted.insert(cidr) {
                owned += 1;
            }
            let got = self
                .assign_from_block(&cidr, block, need, &handle, &args.attrs, Some(host))
                .await?;
            need -= got.len();
            out.ips.extend(got);
        }

        // 3. Borrow from other hosts' blocks.
        if need > 0 && out.block_limit.is_none() {
            if cfg.strict_affinity {
                out.msgs
                    .push("No more free affine blocks and strict affinity enabled".to_string());
            } else {
                let blocks = self.list_blocks(Some(args.family)).await?;
                for (pool, _) in &pool_nets {
                    for (b, _) in blocks.iter() {
                        if need == 0 {
                            break;
                        }
                        let cidr = b.cidr;
                        if !pool.contains(&cidr) || b.free_count() == 0 {
                            continue;
                        }
                        let got = self
                            .assign_from_block(&cidr, None, need, &handle, &args.attrs, None)
                            .await?;
                        need -= got.len();
                        out.ips.extend(got);
                    }
                }
                if need > 0 {
                    exhausted = true;
                }
            }
        }
        if need > 0 && exhausted {
            let list: Vec<String> = pool_nets.iter().map(|(p, _)| p.to_string()).collect();
            out.msgs
                .push(format!("No IPs available in pools: [{}]", list.join(" ")));
        }
        Ok(out)
    }

    // ------------------------------------------------------------ AssignIP

    /// Assigns one specific address. Errors: not in an enabled pool, not allowed for the
    /// use, already assigned ([`Error::Exists`]), or in another host's block under strict
    /// affinity.
    pub async fn assign_ip(&self, args: &AssignIp) -> Result<()> {
        let handle = handle_id(&args.handle);
        let pools = self.list_pools().await?;
        let pool = pools
            .iter()
            .find(|p| {
                !p.spec.disabled
                    && p.metadata.deletion_timestamp.is_none()
                    && p.spec.contains(&args.ip)
            })
            .ok_or_else(|| {
                Error::invalid(format!(
                    "address {} is not in any enabled Calico IP pool",
                    args.ip
                ))
            })?;
        if !args.intended_use.is_empty() && !pool.spec.allows_use(&args.intended_use) {
            return Err(Error::invalid(format!(
                "address {} is in pool {} which is not allowed for use {}",
                args.ip,
                pool.name(),
                args.intended_use
            )));
        }
        let cidr = pool
            .spec
            .block_for(&args.ip)
            .ok_or_else(|| Error::msg(format!("find block of {}", args.ip)))?;
        let cfg = self.get_config().await?;
        let mut hstate = HandleState::Unknown;
        for _ in 0..RETRIES {
            let cur = match self.get_block(&cidr).await? {
                Some(b) => b,
                None => match self.claim_block(&cidr, &args.host).await? {
                    Some(b) => b,
                    None => continue,
                },
            };
            let mut block = cur.block;
            if cfg.strict_affinity && block.host_affinity() != Some(args.host.as_str()) {
                return Err(Error::msg(format!(
                    "assign address {}: Block host affinity does not match",
                    args.ip
                )));
            }
            block
                .assign_specific(
                    &args.ip,
                    (!handle.is_empty()).then_some(handle.as_str()),
                    &args.attrs,
                )
                .map_err(|e| match e.to_string() {
                    m if m.contains("already assigned") => Error::Exists {
                        key: format!("address {} (already assigned)", args.ip),
                    },
                    m => Error::msg(format!("assign address {}: {m}", args.ip)),
                })?;
            block.bump_sequence();
            let mut writes = vec![Write::update(
                keys::block_key(&cidr),
                enc("block", &block)?,
                cur.rev,
            )];
            if let Some(w) = self.handle_write(&handle, &hstate, &cidr, 1)? {
                writes.push(w);
            }
            match self.store.txn(writes).await {
                Ok(rev) => {
                    self.cache_put(&cidr, &block, rev);
                    return Ok(());
                }
                Err(e) if e.is_lost_race() => {
                    if let Error::Exists { key }
                    | Error::Conflict { key }
                    | Error::NotFound { key } = e.root()
                    {
                        if key.starts_with(keys::HANDLES_PREFIX) {
                            hstate = self.read_handle(&handle).await?;
                        }
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::msg(format!(
            "assign address {}: Max retries hit - excessive concurrent IPAM requests",
            args.ip
        )))
    }

    // ------------------------------------------------------------ release

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

    async fn release_from_block(
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

    // ------------------------------------------------------------ affinities

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
