//! Assigning addresses: the pools a request may use, `AutoAssign` and `AssignIP`.

use std::collections::{BTreeMap, HashMap, HashSet};

use ipnet::IpNet;

use super::reservations::Reservations;
use super::{
    block_order, dec, enc, handle_id, AssignIp, Assigned, AutoAssign, BlockKv, HandleState, Ipam,
    DEFAULT_MAX_BLOCKS, FULL_BLOCK_TTL, RETRIES,
};
use crate::datastore::{resources, Write};
use crate::error::{Error, Result};
use crate::model::keys;
use crate::model::BlockAffinity;
use crate::model::{IpFamily, IpPool};

/// What every block of one AutoAssign is asked for.
struct Request<'a> {
    /// The handle, sanitized.
    handle: &'a str,
    /// The allocation attributes.
    attrs: &'a BTreeMap<String, String>,
    /// The IP reservations, read once for the request.
    reserved: &'a Reservations,
}

impl Ipam {
    /// Assigns up to `n` addresses from block `cidr`, writing block and handle together.
    /// `first` is a copy of the block already read, to save a round trip.
    async fn assign_from_block(
        &self,
        cidr: &IpNet,
        mut first: Option<BlockKv>,
        n: usize,
        req: &Request<'_>,
        affine_to: Option<&str>,
    ) -> Result<Vec<IpNet>> {
        let (handle, reserved) = (req.handle, req.reserved);
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
            // Reserved addresses are skipped and stay queued in place (Calico's block
            // autoAssign).
            let ips =
                block.assign_filtered(n, (!handle.is_empty()).then_some(handle), req.attrs, |ip| {
                    reserved.matches_ip(ip)
                });
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

    pub(super) async fn node_labels(&self, host: &str) -> Result<BTreeMap<String, String>> {
        let node: Option<crate::model::Node> =
            resources::get(self.store.as_ref(), &keys::node_key(host)).await?;
        match node {
            Some(n) => Ok(n.metadata.labels),
            None => Err(Error::NotFound {
                key: format!("node {host} (its Node resource)"),
            }),
        }
    }

    /// The pools an AutoAssign may use, by Calico's rules in Calico's order (libcalico-go
    /// `ipam/ipam.go`: `determinePools`, then `filterPoolsByUse` in
    /// `prepareAffinityBlocksForHost`), from `all` (every pool, as listed):
    /// 1. the enabled pools of `family` ([`IpPool::is_enabled_for`]);
    /// 2. the `requested` pools, each of which must be enabled, used as given (their selectors
    ///    and `assignmentMode` are not consulted); with none requested, every `Automatic`
    ///    pool whose node selector selects `host` and whose namespace selector selects a
    ///    workload without namespace, in name order;
    /// 3. of those, the pools whose `allowedUses` include `intended_use`.
    pub(super) async fn pools_for(
        &self,
        all: Vec<IpPool>,
        family: IpFamily,
        requested: &[IpNet],
        host: &str,
        intended_use: &str,
    ) -> Result<Vec<IpPool>> {
        let enabled: Vec<IpPool> = all
            .into_iter()
            .filter(|p| p.is_enabled_for(family))
            .collect();
        if enabled.is_empty() {
            return Err(Error::msg(format!(
                "cannot find a qualified ippool: no enabled IPv{} pool",
                family.number()
            )));
        }
        let selected: Vec<IpPool> = if !requested.is_empty() {
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
            out
        } else {
            // The Node's labels matter only to a selector other than `all()`: skip the read.
            let labels = if enabled
                .iter()
                .any(|p| p.spec.is_automatic() && p.spec.node_selector.trim() != "all()")
            {
                self.node_labels(host).await?
            } else {
                BTreeMap::new()
            };
            let mut out = Vec::new();
            for p in enabled {
                if !p.spec.is_automatic()
                    || !p.spec.node_selector()?.matches(&labels)
                    || !p.spec.selects_no_namespace()?
                {
                    continue;
                }
                out.push(p);
            }
            if out.is_empty() {
                return Err(Error::msg(format!(
                    "no configured Calico IPv{} pools for node {host}",
                    family.number()
                )));
            }
            out
        };
        let (usable, refused): (Vec<IpPool>, Vec<IpPool>) = selected
            .into_iter()
            .partition(|p| p.spec.allows_use(intended_use));
        if usable.is_empty() {
            let mut msg = format!(
                "cannot find a qualified ippool, no IPv{} pools match the required use ({intended_use})",
                family.number()
            );
            // A pool asked for by name is named, with what it is for.
            if !requested.is_empty() {
                let why: Vec<String> = refused
                    .iter()
                    .map(|p| {
                        format!(
                            "pool {} ({}) has allowedUses [{}]",
                            p.name(),
                            p.spec.cidr,
                            p.spec.allowed_uses.join(", ")
                        )
                    })
                    .collect();
                msg.push_str(": ");
                msg.push_str(&why.join("; "));
            }
            return Err(Error::invalid(msg));
        }
        Ok(usable)
    }

    /// Assigns from block `cidr` what `out` still lacks of `args.num` (see
    /// `assign_from_block`); returns how many it added.
    async fn fill(
        &self,
        cidr: &IpNet,
        first: Option<BlockKv>,
        req: &Request<'_>,
        affine_to: Option<&str>,
        num: usize,
        out: &mut Assigned,
    ) -> Result<usize> {
        let need = num - out.ips.len();
        let got = self
            .assign_from_block(cidr, first, need, req, affine_to)
            .await?;
        let n = got.len();
        out.ips.extend(got);
        Ok(n)
    }

    /// Assigns `args.num` addresses: this host's affine blocks first, then newly claimed
    /// blocks, then (strict affinity off) free addresses in other hosts' blocks. Addresses of
    /// an IPReservation are never handed out, and a block entirely reserved is neither used
    /// nor claimed (Calico's `autoAssign`, `findOrClaimBlock`, `findUsableBlock`).
    pub async fn auto_assign(&self, args: &AutoAssign) -> Result<Assigned> {
        let handle = handle_id(&args.handle);
        let host = args.host.as_str();
        // Pools and reservations in one read, once for the whole request.
        let (all_pools, reserved) = self.pools_and_reservations().await?;
        let pools = self
            .pools_for(
                all_pools,
                args.family,
                &args.pools,
                host,
                &args.intended_use,
            )
            .await?;
        let req = Request {
            handle: &handle,
            attrs: &args.attrs,
            reserved: &reserved,
        };
        let num = args.num;
        let pool_nets: Vec<(IpNet, u8)> = pools
            .iter()
            .filter_map(|p| Some((p.spec.cidr_net().ok()?, p.spec.block_size_or_default())))
            .collect();
        let in_pools = |b: &IpNet| pool_nets.iter().any(|(p, _)| p.contains(b));
        let mut out = Assigned::default();
        let mut need = num;

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
                    && reserved.free_in(&b.block) > 0
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
            need -= self
                .fill(&cidr, Some(block), &req, Some(host), num, &mut out)
                .await?;
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
            // Calico skips an entirely reserved block before it even reads its affinity.
            if need == 0 || !in_pools(&cidr) || reserved.matches_whole(&cidr) {
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
                // Pending or pendingDeletion: rewrite the block and confirm.
                Some(b) if !aff.is_confirmed() => {
                    match self.confirm_affinity(&cidr, host, Some(b)).await? {
                        Some(b) => b,
                        None => continue,
                    }
                }
                Some(b) => b,
            };
            if reserved.free_in(&block.block) == 0 {
                continue;
            }
            need -= self
                .fill(&cidr, Some(block), &req, Some(host), num, &mut out)
                .await?;
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
            let existing: HashMap<IpNet, BlockKv> = self
                .list_blocks(Some(args.family))
                .await?
                .into_iter()
                .map(|(block, rev)| (block.cidr, BlockKv { block, rev }))
                .collect();
            let mut claimed = None;
            'pools: for (pool, bs) in &pool_nets {
                for cidr in block_order(pool, *bs, host) {
                    if reserved.matches_whole(&cidr) {
                        continue;
                    }
                    match existing.get(&cidr) {
                        // Ours with room: claimed by a concurrent request of this host since
                        // we listed our affinities, or ours with its affinity key lost. Use
                        // it, as Calico's findUsableBlock does rather than claim yet another
                        // block, through its affinity (created or confirmed if need be, as
                        // Calico's getPendingAffinity and getBlockFromAffinity do).
                        Some(b)
                            if b.block.host_affinity() == Some(host)
                                && reserved.free_in(&b.block) > 0 =>
                        {
                            let b = BlockKv {
                                block: b.block.clone(),
                                rev: b.rev,
                            };
                            if let Some(b) = self.confirm_affinity(&cidr, host, Some(b)).await? {
                                claimed = Some((cidr, b));
                                break 'pools;
                            }
                            continue;
                        }
                        Some(_) => continue,
                        None => {}
                    }
                    if let Some(b) = self.claim_block(&cidr, host).await? {
                        claimed = Some((cidr, b));
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
            need -= self
                .fill(&cidr, Some(block), &req, Some(host), num, &mut out)
                .await?;
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
                        // An entirely reserved block has nothing free either.
                        if !pool.contains(&cidr) || reserved.free_in(b) == 0 {
                            continue;
                        }
                        need -= self.fill(&cidr, None, &req, None, num, &mut out).await?;
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

    /// Assigns one specific address. Errors: not in an enabled pool (a pool marked
    /// Allocatable=False is not enabled), not allowed for the use, already assigned
    /// ([`Error::Exists`]), or in another host's block under strict affinity. As in Calico's
    /// `AssignIP`, IP reservations do not apply: they bind automatic assignment only, and a
    /// specific address asked for overrides them.
    pub async fn assign_ip(&self, args: &AssignIp) -> Result<()> {
        let handle = handle_id(&args.handle);
        let pools = self.list_pools().await?;
        let family = IpFamily::of_addr(&args.ip);
        let pool = pools
            .iter()
            .find(|p| p.is_enabled_for(family) && p.spec.contains(&args.ip))
            .ok_or_else(|| {
                // Say why when the address is in a pool that is not usable.
                let why = match pools.iter().find(|p| p.spec.contains(&args.ip)) {
                    Some(p) if p.marked_not_allocatable() => format!(
                        " (it is in pool {}, marked Allocatable=False in its status)",
                        p.name()
                    ),
                    _ => String::new(),
                };
                Error::invalid(format!(
                    "address {} is not in any enabled Calico IP pool{why}",
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
}
