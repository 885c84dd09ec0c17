//! Docker's IPAM driver calls over Calico IPAM.
//!
//! Pool IDs given to Docker:
//! - `CalicoPoolIPv4` / `CalicoPoolIPv6`: every enabled pool that selects this node;
//! - otherwise a comma-separated list of Calico pool names: the pool matching `--subnet`
//!   (found or created), or the pools chosen with `--ipam-opt ipv4-pools=a,b`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use std::future::Future;
use std::sync::Arc;

use super::{PoolGrant, PoolRequest};
use crate::datastore::Datastore;
use crate::datastore::Write;
use crate::error::{Error, Result, ResultExt};
use crate::ipam::{default_attrs, AssignIp, AutoAssign, Ipam};
use crate::model::ippool::{ASSIGNMENT_MANUAL, MODE_ALWAYS, MODE_CROSS_SUBNET, MODE_NEVER};
use crate::model::libnetwork::PoolRecord;
use crate::model::{keys, IpFamily, IpPool, IpPoolSpec};

/// Pool ID for "all of Calico's IPv4 pools".
pub const POOL_ID_V4: &str = "CalicoPoolIPv4";
/// Pool ID for "all of Calico's IPv6 pools".
pub const POOL_ID_V6: &str = "CalicoPoolIPv6";
/// The pool-data key Docker reads the gateway from.
pub const GATEWAY_DATA_KEY: &str = "com.docker.network.gateway";
/// `RequestAddressType` value Docker uses when it asks for a gateway address.
const GATEWAY_REQUEST: &str = "com.docker.network.gateway";

// The original plugins' refusals (Calico's Go libnetwork-plugin, and its tests, match these
// sentences): ours start with them, so users searching for them find their cause, and add
// what to do instead.
/// `--ip-range` (RequestPool's `SubPool`).
pub const ORIGINAL_SUB_POOL: &str = "Calico IPAM does not support sub pool configuration on 'docker create network'. Calico IP Pools should be configured first and IP assignment is from those pre-configured pools.";
/// An `--ipam-opt` it does not know.
pub const ORIGINAL_OPTIONS: &str = "Arbitrary options are not supported";
/// A `--subnet` that is not a Calico pool's CIDR (here: one overlapping a pool).
pub const ORIGINAL_SUBNET: &str =
    "The requested subnet must match the CIDR of a configured Calico IP Pool.";
/// `--gateway`.
pub const ORIGINAL_GATEWAY: &str = "Calico IPAM does not support specifying a gateway.";

/// `--ipam-opt` keys understood, and what they do.
pub const IPAM_OPTIONS: &[(&str, &str)] = &[
    (
        "ipv4-pools",
        "comma-separated Calico pool names to allocate IPv4 addresses from",
    ),
    (
        "ipv6-pools",
        "comma-separated Calico pool names to allocate IPv6 addresses from",
    ),
    (
        "ipip-mode",
        "Never|Always|CrossSubnet, for a pool created from --subnet",
    ),
    (
        "vxlan-mode",
        "Never|Always|CrossSubnet, for a pool created from --subnet",
    ),
    (
        "nat-outgoing",
        "true|false, for a pool created from --subnet (default true)",
    ),
    (
        "block-size",
        "block prefix length, for a pool created from --subnet",
    ),
    (
        "node-selector",
        "Calico selector of nodes, for a pool created from --subnet",
    ),
];
const CREATE_OPTIONS: &[&str] = &[
    "ipip-mode",
    "vxlan-mode",
    "nat-outgoing",
    "block-size",
    "node-selector",
];

fn dummy_gateway(v6: bool) -> &'static str {
    // A gateway in the pool data stops Docker asking us for a gateway address; containers
    // on Calico route through 169.254.1.1 instead.
    if v6 {
        "::/0"
    } else {
        "0.0.0.0/0"
    }
}

fn supported_options() -> String {
    IPAM_OPTIONS
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

fn mode(key: &str, v: &str) -> Result<String> {
    for m in [MODE_NEVER, MODE_ALWAYS, MODE_CROSS_SUBNET] {
        if v.eq_ignore_ascii_case(m) {
            return Ok(m.to_string());
        }
    }
    Err(Error::invalid(format!(
        "--ipam-opt {key}={v}: expected Never, Always or CrossSubnet"
    )))
}

/// The Calico pool name for a pool we create from `--subnet`.
pub fn pool_name_for(cidr: &IpNet) -> String {
    let raw = format!(
        "libnetwork-{}",
        cidr.to_string().replace(['/', ':', '.'], "-")
    );
    crate::model::resource_name_from(&raw)
}

/// Docker's IPAM driver: pools and addresses over Calico IPAM, for one node.
pub struct IpamDriver {
    store: Arc<dyn Datastore>,
    ipam: Ipam,
    nodename: String,
    /// Taken around this host's address requests and releases: they all write this host's
    /// affine blocks, so one at a time they never fail each other's compare-and-swap (what
    /// Calico's CNI plugin does with a host-wide lock). Other hosts still race through CAS.
    serial: tokio::sync::Mutex<()>,
    /// When the recent IPv6 `RequestPool`s without `--subnet` came (see [`V6_LOOP_CALLS`]).
    v6_requests: std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>,
}

/// dockerd checks a pool it did not ask for against the networks it reserves (its
/// nameservers) and, on overlap, asks again without releasing, forever (only `0.0.0.0/0` is
/// exempt: moby/libnetwork#1386). This many IPv6 `RequestPool`s without `--subnet` within
/// [`V6_LOOP_WINDOW`] is taken for that loop and refused, which ends it.
const V6_LOOP_CALLS: usize = 16;
/// See [`V6_LOOP_CALLS`].
const V6_LOOP_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// The smallest prefix holding every one of `nets` (all of one family), `None` for none.
fn covering(nets: &[IpNet]) -> Option<IpNet> {
    let first = nets.first()?.trunc();
    nets.iter().skip(1).try_fold(first, |acc, n| {
        let mut acc = acc;
        while !acc.contains(n) {
            acc = acc.supernet()?;
        }
        Some(acc)
    })
}

impl IpamDriver {
    /// The IPAM driver of node `nodename` over `store`, sharing `ipam`'s block cache.
    pub fn new(store: Arc<dyn Datastore>, ipam: Ipam, nodename: &str) -> Self {
        IpamDriver {
            store,
            ipam,
            nodename: nodename.to_string(),
            serial: Default::default(),
            v6_requests: Default::default(),
        }
    }

    /// `IpamDriver.RequestPool`.
    pub async fn request_pool(&self, req: PoolRequest) -> Result<PoolGrant> {
        if let Some(sub) = req.sub_pool {
            return Err(Error::invalid(format!(
                "{ORIGINAL_SUB_POOL} (--ip-range {sub}: create a Calico IP pool with that CIDR and pass it as --subnet)"
            )));
        }
        for k in req.options.keys() {
            if !IPAM_OPTIONS.iter().any(|(o, _)| o == k) {
                return Err(Error::invalid(format!(
                    "{ORIGINAL_OPTIONS}: Calico IPAM does not support --ipam-opt {k}; supported: {}",
                    supported_options()
                )));
            }
        }
        let family = if req.v6 { IpFamily::V6 } else { IpFamily::V4 };
        let mut data = BTreeMap::new();
        data.insert(
            GATEWAY_DATA_KEY.to_string(),
            dummy_gateway(req.v6).to_string(),
        );
        let any: IpNet = dummy_gateway(req.v6).parse().unwrap();

        if let Some(subnet) = req.pool {
            if IpFamily::of_net(&subnet) != family {
                return Err(Error::invalid(format!(
                    "--subnet {subnet} is not an IPv{} subnet",
                    family.number()
                )));
            }
            let name = self.pool_for_subnet(&subnet.trunc(), &req.options).await?;
            return Ok(PoolGrant {
                pool_id: name,
                pool: subnet.trunc(),
                data,
            });
        }

        let sel_key = if req.v6 { "ipv6-pools" } else { "ipv4-pools" };
        if let Some(created) = CREATE_OPTIONS
            .iter()
            .find(|k| req.options.contains_key(**k))
        {
            return Err(Error::invalid(format!(
                "--ipam-opt {created} applies only with --subnet (to the pool created for it)"
            )));
        }
        if let Some(list) = req.options.get(sel_key) {
            let names: Vec<&str> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if names.is_empty() {
                return Err(Error::invalid(format!(
                    "--ipam-opt {sel_key}: no pool named"
                )));
            }
            for n in &names {
                let pool = self.ipam.get_pool(n).await?.ok_or_else(|| {
                    Error::invalid(format!("--ipam-opt {sel_key}: no Calico IP pool named {n}"))
                })?;
                if pool.spec.family() != Some(family) {
                    return Err(Error::invalid(format!(
                        "--ipam-opt {sel_key}: pool {n} ({}) is not an IPv{} pool",
                        pool.spec.cidr,
                        family.number()
                    )));
                }
                if pool.spec.disabled {
                    return Err(Error::invalid(format!(
                        "--ipam-opt {sel_key}: pool {n} is disabled"
                    )));
                }
                refuse_unless_workload(&pool, &format!("--ipam-opt {sel_key}"))?;
            }
            let pool = if req.v6 {
                self.v6_pool_answer(Some(&names)).await?
            } else {
                any
            };
            return Ok(PoolGrant {
                pool_id: names.join(","),
                pool,
                data,
            });
        }
        let pool = if req.v6 {
            self.v6_pool_answer(None).await?
        } else {
            any
        };
        Ok(PoolGrant {
            pool_id: if req.v6 { POOL_ID_V6 } else { POOL_ID_V4 }.to_string(),
            pool,
            data,
        })
    }

    /// The `Pool` to answer an IPv6 `RequestPool` without `--subnet`: the smallest prefix
    /// holding the chosen pools (`names`, else every enabled IPv6 pool). Not `::/0`, which
    /// dockerd would check against its IPv6 nameservers and, overlapping them, ask again
    /// forever (see [`V6_LOOP_CALLS`], which still ends that loop if the pools overlap one).
    async fn v6_pool_answer(&self, names: Option<&[&str]>) -> Result<IpNet> {
        {
            let now = std::time::Instant::now();
            let mut recent = self.v6_requests.lock().unwrap();
            recent.retain(|t| now.duration_since(*t) < V6_LOOP_WINDOW);
            recent.push_back(now);
            if recent.len() >= V6_LOOP_CALLS {
                recent.clear();
                return Err(Error::invalid(format!(
                    "request IPv6 pool: Docker asked {V6_LOOP_CALLS} times within {V6_LOOP_WINDOW:?}: \
                     the Calico IPv6 pools overlap a network dockerd reserves (an IPv6 nameserver \
                     in its resolv.conf?); pass --subnet with a Calico pool's CIDR"
                )));
            }
        }
        let nets: Vec<IpNet> = self
            .ipam
            .list_pools()
            .await?
            .iter()
            .filter(|p| match names {
                Some(names) => names.contains(&p.metadata.name.as_str()),
                None => !p.spec.disabled && p.spec.family() == Some(IpFamily::V6),
            })
            .filter_map(|p| p.spec.cidr_net().ok())
            .collect();
        covering(&nets).ok_or_else(|| {
            Error::invalid(
                "request IPv6 pool: no enabled Calico IPv6 pool: add one (calico-libnetwork pool add NAME CIDR) or pass --subnet",
            )
        })
    }

    /// Finds the pool whose CIDR is exactly `subnet`, or creates one; counts the reference.
    async fn pool_for_subnet(
        &self,
        subnet: &IpNet,
        options: &BTreeMap<String, String>,
    ) -> Result<String> {
        let pools = self.ipam.list_pools().await?;
        let mut found: Option<&IpPool> = None;
        for p in &pools {
            let Ok(c) = p.spec.cidr_net() else { continue };
            if c == *subnet {
                found = Some(p);
            } else if c.contains(&subnet.network()) || subnet.contains(&c.network()) {
                return Err(Error::invalid(format!(
                    "{ORIGINAL_SUBNET} --subnet {subnet} overlaps Calico IP pool {} ({c}); use exactly that pool's CIDR or a subnet that overlaps no pool",
                    p.name()
                )));
            }
        }
        let (name, created) = match found {
            Some(p) => {
                if let Some(k) = CREATE_OPTIONS.iter().find(|k| options.contains_key(**k)) {
                    return Err(Error::invalid(format!(
                        "--ipam-opt {k} applies only to a pool calico-libnetwork creates; pool {} already has CIDR {subnet}",
                        p.name()
                    )));
                }
                if p.spec.disabled {
                    return Err(Error::invalid(format!(
                        "Calico IP pool {} ({subnet}) is disabled",
                        p.name()
                    )));
                }
                refuse_unless_workload(p, &format!("--subnet {subnet}"))?;
                (p.name().to_string(), false)
            }
            None => {
                let mut spec = IpPoolSpec::with_cidr(subnet);
                spec.nat_outgoing = true;
                // Only the network that asked for this subnet allocates from it: networks
                // using "all of Calico's pools" must not take its addresses.
                spec.assignment_mode = Some(ASSIGNMENT_MANUAL.to_string());
                for (k, v) in options {
                    match k.as_str() {
                        "ipip-mode" => spec.ipip_mode = mode(k, v)?,
                        "vxlan-mode" => spec.vxlan_mode = mode(k, v)?,
                        "nat-outgoing" => {
                            spec.nat_outgoing = match v.to_ascii_lowercase().as_str() {
                                "true" | "1" | "yes" => true,
                                "false" | "0" | "no" => false,
                                _ => {
                                    return Err(Error::invalid(format!(
                                        "--ipam-opt nat-outgoing={v}: expected true or false"
                                    )))
                                }
                            }
                        }
                        "block-size" => {
                            spec.block_size = v.parse().map_err(|_| {
                                Error::invalid(format!(
                                    "--ipam-opt block-size={v}: expected a prefix length"
                                ))
                            })?
                        }
                        "node-selector" => spec.node_selector = v.clone(),
                        _ => {}
                    }
                }
                let name = pool_name_for(subnet);
                match self.ipam.create_pool(IpPool::new(&name, spec)).await {
                    Ok(_) => (name, true),
                    // Created concurrently by another request for the same subnet.
                    Err(e) if e.is_exists() => (name, false),
                    Err(e) => {
                        return Err(
                            e.context(format!("create Calico IP pool for --subnet {subnet}"))
                        )
                    }
                }
            }
        };
        self.add_pool_reference(&name, subnet, created).await?;
        Ok(name)
    }

    async fn add_pool_reference(&self, name: &str, cidr: &IpNet, created: bool) -> Result<()> {
        let key = keys::pool_key(name);
        for _ in 0..crate::ipam::RETRIES {
            let cur = self.store.get(&key).await?;
            let mut rec = match &cur {
                Some(kv) => serde_json::from_slice(&kv.value).map_err(|e| Error::json(&key, e))?,
                None => PoolRecord {
                    cidr: cidr.to_string(),
                    ..Default::default()
                },
            };
            rec.references += 1;
            rec.created_by_plugin |= created;
            let value =
                serde_json::to_vec(&rec).map_err(|e| Error::msg(format!("encode {key}: {e}")))?;
            let w = Write::create_or_update(&key, value, cur.map(|kv| kv.revision));
            match self.store.txn(vec![w]).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_lost_race() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::msg(format!(
            "record pool {name}: too many concurrent updates"
        )))
    }

    /// `IpamDriver.ReleasePool`: drops this request's reference; a pool the plugin created
    /// for `--subnet` is deleted with its last reference once nothing is allocated in it.
    pub async fn release_pool(&self, pool_id: &str) -> Result<()> {
        if pool_id == POOL_ID_V4
            || pool_id == POOL_ID_V6
            || pool_id.contains(',')
            || pool_id.is_empty()
        {
            return Ok(());
        }
        if crate::model::validate_resource_name(pool_id).is_err() {
            return Err(Error::invalid(format!(
                "release pool: invalid pool ID {:?}",
                pool_id
            )));
        }
        let key = keys::pool_key(pool_id);
        for _ in 0..crate::ipam::RETRIES {
            let Some(kv) = self.store.get(&key).await? else {
                return Ok(()); // Not a --subnet request of ours, or already released.
            };
            let mut rec: PoolRecord =
                serde_json::from_slice(&kv.value).map_err(|e| Error::json(&key, e))?;
            rec.references = rec.references.saturating_sub(1);
            let res = if rec.references == 0 {
                self.store.delete(&key, Some(kv.revision)).await.map(|_| 0)
            } else {
                let value = serde_json::to_vec(&rec)
                    .map_err(|e| Error::msg(format!("encode {key}: {e}")))?;
                self.store.update(&key, value, kv.revision).await
            };
            match res {
                Ok(_) => {
                    if rec.references == 0 && rec.created_by_plugin {
                        self.delete_pool_if_unused(pool_id).await?;
                    }
                    return Ok(());
                }
                Err(e) if e.is_lost_race() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::msg(format!(
            "release pool {pool_id}: too many concurrent updates"
        )))
    }

    async fn delete_pool_if_unused(&self, name: &str) -> Result<()> {
        let Some(summary) = self
            .ipam
            .summary()
            .await?
            .into_iter()
            .find(|s| s.name == name)
        else {
            return Ok(());
        };
        if summary.used > 0 {
            tracing::info!(
                pool = name,
                used = summary.used,
                "keeping Calico IP pool: addresses still allocated"
            );
            return Ok(());
        }
        match self.ipam.delete_pool(name).await {
            Ok(()) => {
                tracing::info!(pool = name, "deleted Calico IP pool created for --subnet");
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.context(format!("delete Calico IP pool {name}"))),
        }
    }

    /// The family and pool CIDRs a pool ID stands for.
    async fn resolve_pool_id(&self, pool_id: &str) -> Result<(IpFamily, Vec<IpNet>, Vec<String>)> {
        match pool_id {
            POOL_ID_V4 => return Ok((IpFamily::V4, Vec::new(), Vec::new())),
            POOL_ID_V6 => return Ok((IpFamily::V6, Vec::new(), Vec::new())),
            _ => {}
        }
        let mut family = None;
        let mut cidrs = Vec::new();
        let mut names = Vec::new();
        for name in pool_id.split(',') {
            if crate::model::validate_resource_name(name).is_err() {
                return Err(Error::invalid(format!("invalid PoolID {:?}", pool_id)));
            }
            let pool = self.ipam.get_pool(name).await?.ok_or_else(|| {
                Error::msg(format!(
                    "The network references Calico IP pool {name}, which has been deleted; re-create it (calico-libnetwork pool add) before using the network"
                ))
            })?;
            let cidr = pool.spec.cidr_net()?;
            family.get_or_insert(IpFamily::of_net(&cidr));
            cidrs.push(cidr);
            names.push(name.to_string());
        }
        Ok((family.unwrap_or(IpFamily::V4), cidrs, names))
    }

    /// This host's turn to write its blocks (see `serial`). The turn only saves
    /// compare-and-swap retries, correctness is the CAS's: after a few seconds' wait (a
    /// slow datastore ahead in the queue) a request goes ahead without it.
    async fn ipam_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        tokio::time::timeout(std::time::Duration::from_secs(2), self.serial.lock())
            .await
            .ok()
    }

    /// `IpamDriver.RequestAddress`. A specific `address` found allocated is taken over only
    /// when `reclaim(address)` says its owner is provably gone and has freed it (the network
    /// side knows the endpoints: see [`super::Driver::request_address`]).
    pub async fn request_address<F, Fut>(
        &self,
        pool_id: &str,
        address: Option<IpAddr>,
        options: &BTreeMap<String, String>,
        reclaim: F,
    ) -> Result<IpNet>
    where
        F: FnOnce(IpAddr) -> Fut,
        Fut: Future<Output = bool>,
    {
        if options.get("RequestAddressType").map(String::as_str) == Some(GATEWAY_REQUEST) {
            return Err(Error::invalid(format!(
                "{ORIGINAL_GATEWAY} Containers on Calico networks route through 169.254.1.1: drop --gateway"
            )));
        }
        let (family, pools, names) = self.resolve_pool_id(pool_id).await?;
        let _serial = self.ipam_turn().await;
        let host = self.nodename.clone();
        let handle = crate::model::libnetwork::new_handle();
        let mut attrs = default_attrs(&host);
        // Docker 29 names the container: recorded beside Calico's attributes, so
        // `calicoctl ipam show --ip` names it.
        if let Some(name) = crate::model::libnetwork::container_name(options) {
            attrs.insert(
                crate::model::libnetwork::CONTAINER_ATTRIBUTE.to_string(),
                name,
            );
        }
        let prefix = match family {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        };
        if let Some(ip) = address {
            if IpFamily::of_addr(&ip) != family {
                return Err(Error::invalid(format!(
                    "assign address {ip}: not an IPv{} address",
                    family.number()
                )));
            }
            if !pools.is_empty() && !pools.iter().any(|p| p.contains(&ip)) {
                return Err(Error::invalid(format!(
                    "assign address {ip}: not in the network's Calico pool {} ({})",
                    names.join(","),
                    pools
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                )));
            }
            let args = AssignIp {
                ip,
                handle,
                attrs,
                host,
                intended_use: crate::ipam::USE_WORKLOAD.to_string(),
            };
            let mut result = self.ipam.assign_ip(&args).await;
            // Docker asking again for the `--ip` of a container whose previous run is dead
            // (dockerd crashed before releasing it): take the address over if, and only if,
            // its owner is provably gone (see `super::reconcile`).
            if matches!(&result, Err(e) if e.is_exists()) && reclaim(ip).await {
                result = self.ipam.assign_ip(&args).await;
            }
            return match result {
                Ok(()) => Ok(IpNet::new(ip, prefix).unwrap()),
                Err(e) if e.is_exists() => Err(Error::invalid(format!(
                    "assign address {ip}: address already in use"
                ))),
                Err(e) => Err(e.context(format!("assign address {ip}"))),
            };
        }
        let mut args = AutoAssign::new(1, family, &host, &handle);
        args.pools = pools;
        args.attrs = attrs;
        let got = self
            .ipam
            .auto_assign(&args)
            .await
            .ctx(format!("assign IPv{} address", family.number()))?;
        match got.ips.first() {
            Some(ip) => Ok(IpNet::new(ip.addr(), prefix).unwrap()),
            None => Err(Error::msg(format!(
                "assign IPv{} address: no address available in Calico IP pools: {}",
                family.number(),
                got.shortfall(1, family)
            ))),
        }
    }

    /// `IpamDriver.ReleaseAddress` (idempotent).
    pub async fn release_address(&self, _pool_id: &str, address: IpAddr) -> Result<()> {
        if address.is_unspecified() {
            return Ok(()); // The dummy gateway from the pool data: nothing was allocated.
        }
        let _serial = self.ipam_turn().await;
        self.ipam
            .release_ips(&[address])
            .await
            .ctx(format!("release address {address}"))?;
        Ok(())
    }
}

/// Refuses, at `docker network create`, a pool whose `allowedUses` leave out Workload: Calico
/// would give it no container address (`filterPoolsByUse` applies to named pools too).
fn refuse_unless_workload(pool: &IpPool, what: &str) -> Result<()> {
    if pool.spec.allows_use(crate::ipam::USE_WORKLOAD) {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{what}: pool {} ({}) has allowedUses [{}]: Calico gives container addresses only from pools allowing Workload",
        pool.name(),
        pool.spec.cidr,
        pool.spec.allowed_uses.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::local::LocalStore;

    async fn ipam_driver() -> (tempfile::TempDir, IpamDriver) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Datastore> =
            Arc::new(LocalStore::open(dir.path().join("s.redb")).unwrap());
        let ipam = Ipam::new(store.clone());
        ipam.ensure_default_pools(&[crate::ipam::default_pool(&"10.12.0.0/24".parse().unwrap())])
            .await
            .unwrap();
        (dir, IpamDriver::new(store, ipam, "ipam-host"))
    }

    #[tokio::test]
    async fn a_taken_address_is_reassigned_only_when_its_owner_is_gone() {
        let (_dir, d) = ipam_driver().await;
        let grant = d.request_pool(PoolRequest::default()).await.unwrap();
        assert_eq!(grant.pool_id, POOL_ID_V4);
        let none = BTreeMap::new();
        let ip: IpAddr = "10.12.0.7".parse().unwrap();
        let got = d
            .request_address(POOL_ID_V4, Some(ip), &none, |_| async { false })
            .await
            .unwrap();
        assert_eq!(got, "10.12.0.7/32".parse::<IpNet>().unwrap());
        // Taken: asked whether the owner is gone; it is not.
        let mut asked = None;
        let e = d
            .request_address(POOL_ID_V4, Some(ip), &none, |a| {
                asked = Some(a);
                async { false }
            })
            .await
            .unwrap_err();
        assert_eq!(asked, Some(ip));
        assert_eq!(
            e.to_string(),
            "assign address 10.12.0.7: address already in use"
        );
        // The owner is gone and its address freed: the request gets it.
        let ipam = &d.ipam;
        let e = d
            .request_address(POOL_ID_V4, Some(ip), &none, |a| async move {
                ipam.release_ips(&[a]).await.is_ok()
            })
            .await;
        assert!(e.is_ok(), "{e:?}");
        // An address outside the network's pool never reaches the allocator.
        let e = d
            .request_address(
                POOL_ID_V4,
                Some("10.99.0.1".parse().unwrap()),
                &none,
                |_| async { panic!("not asked") },
            )
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("assign address 10.99.0.1"), "{e}");
    }

    #[test]
    fn covering_prefix_of_pools() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(covering(&[]), None);
        assert_eq!(covering(&[n("fd90::/64")]), Some(n("fd90::/64")));
        assert_eq!(
            covering(&[n("fd90::/64"), n("fd90:0:0:1::/64")]),
            Some(n("fd90::/63"))
        );
        assert_eq!(
            covering(&[n("fd90::/64"), n("fd91::/64")]),
            Some(n("fd90::/15"))
        );
    }

    #[tokio::test]
    async fn ipv6_pool_without_subnet_is_the_pools_and_a_request_loop_ends() {
        let (_dir, d) = ipam_driver().await;
        let v6 = PoolRequest {
            v6: true,
            ..Default::default()
        };
        let e = d.request_pool(v6.clone()).await.unwrap_err().to_string();
        assert!(e.contains("no enabled Calico IPv6 pool"), "{e}");
        let pool = crate::model::IpPool::new(
            "v6",
            IpPoolSpec {
                cidr: "fd90::/64".into(),
                ..Default::default()
            },
        );
        d.ipam.create_pool(pool).await.unwrap();
        let g = d.request_pool(v6.clone()).await.unwrap();
        assert_eq!(g.pool_id, POOL_ID_V6);
        assert_eq!(g.pool, "fd90::/64".parse::<IpNet>().unwrap());
        assert_eq!(g.data[GATEWAY_DATA_KEY], "::/0");
        // dockerd's endless re-ask (its nameservers overlap the answer) is cut off.
        let mut refused = None;
        for i in 0..V6_LOOP_CALLS {
            if let Err(e) = d.request_pool(v6.clone()).await {
                refused = Some((i, e.to_string()));
                break;
            }
        }
        let (i, e) = refused.expect("the loop is refused");
        // Two requests came before the loop: the loop's call number V6_LOOP_CALLS - 2 is the
        // one refused.
        assert_eq!(i + 3, V6_LOOP_CALLS, "{e}");
        assert!(e.contains("overlap a network dockerd reserves"), "{e}");
        // After the refusal a new request is served again.
        assert!(d.request_pool(v6).await.is_ok());
    }

    /// Docker 29's container name (`com.docker.network.endpoint.name`) is recorded on the
    /// allocation beside Calico's `node` and `timestamp`; a name Docker could not have made
    /// is ignored, and the address is given all the same.
    #[tokio::test]
    async fn docker_29_container_name_is_an_allocation_attribute() {
        let (_dir, d) = ipam_driver().await;
        d.request_pool(PoolRequest::default()).await.unwrap();
        let mut opts = BTreeMap::new();
        opts.insert(
            "com.docker.network.endpoint.name".to_string(),
            "/web-1".to_string(),
        );
        let named = d
            .request_address(POOL_ID_V4, None, &opts, |_| async { false })
            .await
            .unwrap();
        opts.insert(
            "com.docker.network.endpoint.name".to_string(),
            "x\n\u{1b}[2J".to_string(),
        );
        let hostile = d
            .request_address(POOL_ID_V4, None, &opts, |_| async { false })
            .await
            .unwrap();
        let attrs_of = |blocks: &[(crate::model::AllocationBlock, i64)], ip: IpAddr| {
            blocks
                .iter()
                .find_map(|(b, _)| {
                    let ord = b.ordinal_of(&ip)?;
                    let idx = b.allocations.get(ord).copied().flatten()?;
                    Some(b.attributes[idx as usize].secondary.clone())
                })
                .unwrap()
        };
        let blocks = d.ipam.list_blocks(None).await.unwrap();
        let a = attrs_of(&blocks, named.addr());
        assert_eq!(
            a.get("container").map(String::as_str),
            Some("web-1"),
            "{a:?}"
        );
        assert_eq!(
            a.get("node").map(String::as_str),
            Some("ipam-host"),
            "{a:?}"
        );
        let b = attrs_of(&blocks, hostile.addr());
        assert!(!b.contains_key("container"), "{b:?}");
    }
}
