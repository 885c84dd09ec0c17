//! Operator commands behind `calico-libnetwork status`, `endpoint list` and
//! `ipam check [--repair]`: each gathers a report (serializable for `-o json`) that the
//! command line prints as a table. Every problem comes with one line saying what to do.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::datastore::resources;
use crate::datastore::{Datastore, Write};
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::model::libnetwork::{NetworkRecord, WEP_NAMESPACE};
use crate::model::resources::WorkloadEndpointSpec;
use crate::model::{keys, IpamHandle, ReleaseOptions, WorkloadEndpoint};

/// Handles of the allocations this plugin makes (`libnetwork.<uuid>`): the only ones
/// `ipam check` judges, since other orchestrators' allocations have other owners.
pub const HANDLE_PREFIX: &str = "libnetwork.";
/// Prefix of Calico's host-side workload interfaces.
pub const VETH_PREFIX: &str = "cali";
/// How long `status` waits for the plugin socket to answer.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(3);

// ------------------------------------------------------------------ status

/// The datastore part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct DatastoreStatus {
    /// `etcdv3` or `local`.
    pub kind: String,
    /// Whether a read succeeded.
    pub reachable: bool,
    /// Time of one read round trip, in milliseconds.
    pub latency_ms: Option<f64>,
    /// Why it could not be read, or why it was not checked.
    pub error: Option<String>,
}

/// One pool's use, for [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct PoolUse {
    /// Pool name.
    pub name: String,
    /// Pool CIDR.
    pub cidr: String,
    /// Addresses in the pool.
    pub size: u128,
    /// Addresses allocated.
    pub used: u64,
    /// `used / size` in percent.
    pub percent_used: f64,
    /// Whether the pool takes no new allocations.
    pub disabled: bool,
}

/// The plugin-socket part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct SocketStatus {
    /// The socket path checked.
    pub path: String,
    /// Whether it accepted a connection and answered `Plugin.Activate` with both drivers.
    pub up: bool,
    /// What went wrong.
    pub error: Option<String>,
}

/// What `calico-libnetwork status` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// This host's Calico node name.
    pub node: String,
    /// The datastore.
    pub datastore: DatastoreStatus,
    /// Whether this node's `Node` resource exists (`None`: not checked).
    pub node_resource: Option<bool>,
    /// Every IP pool with its use.
    pub pools: Vec<PoolUse>,
    /// The plugin socket.
    pub socket: SocketStatus,
    /// WorkloadEndpoints of this host (`None`: not checked).
    pub endpoints: Option<usize>,
    /// Remarks that are not problems.
    pub notes: Vec<String>,
    /// One line per problem, saying what to do; empty when all is well.
    pub problems: Vec<String>,
}

/// Posts `Plugin.Activate` on `path` as Docker does; Ok when both drivers are announced.
pub async fn plugin_activate(path: &Path, timeout: Duration) -> std::result::Result<(), String> {
    let attempt = async {
        let mut s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(
            b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 0\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf);
        let first = text.lines().next().unwrap_or("").trim().to_string();
        if first.split_whitespace().nth(1) == Some("200")
            && text.contains("NetworkDriver")
            && text.contains("IpamDriver")
        {
            Ok(())
        } else {
            Err(format!("Plugin.Activate answered '{first}'"))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer to Plugin.Activate within {}",
            humantime::format_duration(timeout)
        )),
    }
}

fn percent(used: u64, size: u128) -> f64 {
    if size == 0 {
        0.0
    } else {
        (used as f64) * 100.0 / (size as f64)
    }
}

/// Gathers [`Status`], from the datastore as the command could open it (directly, or
/// through the running plugin for an embedded store it holds).
pub async fn status(
    nodename: &str,
    socket: &Path,
    kind: &str,
    store: Result<Arc<dyn Datastore>>,
) -> Status {
    let mut st = Status {
        node: nodename.to_string(),
        datastore: DatastoreStatus {
            kind: kind.to_string(),
            reachable: false,
            latency_ms: None,
            error: None,
        },
        node_resource: None,
        pools: Vec::new(),
        socket: SocketStatus {
            path: socket.display().to_string(),
            up: false,
            error: None,
        },
        endpoints: None,
        notes: Vec::new(),
        problems: Vec::new(),
    };
    match plugin_activate(socket, SOCKET_TIMEOUT).await {
        Ok(()) => st.socket.up = true,
        Err(e) => {
            st.problems.push(format!(
                "plugin socket {} is not answering ({e}): start the plugin \
                 (`systemctl start calico-libnetwork`), or point CALICO_LIBNETWORK_SOCKET at \
                 its socket",
                socket.display()
            ));
            st.socket.error = Some(e);
        }
    }
    let store = match store {
        Ok(s) => s,
        Err(e) => {
            let msg = e.to_string();
            st.problems.push(format!(
                "cannot open the {kind} datastore ({msg}): check the datastore settings \
                 (DATASTORE_TYPE, ETCD_ENDPOINTS, CALICO_LIBNETWORK_STORE)"
            ));
            st.datastore.error = Some(msg);
            return st;
        }
    };
    // The first read also connects; the second is one plain round trip.
    let node_key = keys::node_key(nodename);
    let mut node = store.get(&node_key).await;
    if node.is_ok() {
        let t = Instant::now();
        node = store.get(&node_key).await;
        st.datastore.latency_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
    }
    match node {
        Ok(n) => {
            st.datastore.reachable = true;
            st.node_resource = Some(n.is_some());
            if n.is_none() {
                st.problems.push(format!(
                    "Calico Node resource {nodename} does not exist: start the plugin (it \
                     creates it), or set NODENAME to this host's Calico node name"
                ));
            }
        }
        Err(e) => {
            st.problems.push(format!(
                "datastore {kind} unreachable ({e}): check that etcd is running and \
                 ETCD_ENDPOINTS (and its TLS settings)"
            ));
            st.datastore.error = Some(e.to_string());
            st.datastore.latency_ms = None;
            return st;
        }
    }
    let ipam = Ipam::new(store.clone());
    match ipam.summary().await {
        Ok(pools) => {
            for p in pools {
                if !p.disabled && u128::from(p.used) >= p.size {
                    st.problems.push(format!(
                        "IP pool {} ({}) is full: add a pool (`calico-libnetwork pool add`) \
                         or remove containers",
                        p.name, p.cidr
                    ));
                }
                st.pools.push(PoolUse {
                    percent_used: percent(p.used, p.size),
                    name: p.name,
                    cidr: p.cidr,
                    size: p.size,
                    used: p.used,
                    disabled: p.disabled,
                });
            }
            if st.pools.iter().all(|p| p.disabled) {
                st.problems.push(
                    "no enabled IP pool: add one with `calico-libnetwork pool add NAME CIDR` \
                     (the plugin creates a default pool at start only when no pool exists)"
                        .to_string(),
                );
            }
        }
        Err(e) => st
            .problems
            .push(format!("cannot read IP pools ({e}): check the datastore")),
    }
    match resources::list::<WorkloadEndpointSpec>(store.as_ref(), Some(WEP_NAMESPACE)).await {
        Ok(weps) => {
            st.endpoints = Some(weps.iter().filter(|w| w.spec.node == nodename).count());
        }
        Err(e) => st.problems.push(format!(
            "cannot read WorkloadEndpoints ({e}): check the datastore"
        )),
    }
    st
}

// ------------------------------------------------------------------ endpoint list

/// One endpoint, for `endpoint list`.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointRow {
    /// Docker's endpoint ID.
    pub endpoint: String,
    /// The WorkloadEndpoint's name.
    pub name: String,
    /// The node it is on.
    pub node: String,
    /// The Docker network (name once known, else its ID), when profiles tell.
    pub network: Option<String>,
    /// Calico profiles.
    pub profiles: Vec<String>,
    /// Addresses (CIDRs).
    pub addresses: Vec<String>,
    /// Host-side interface.
    pub interface: String,
    /// The container interface's MAC.
    pub mac: String,
}

/// Our WorkloadEndpoints: this node's (`node = Some`) or every host's.
pub async fn endpoints(store: &dyn Datastore, node: Option<&str>) -> Result<Vec<EndpointRow>> {
    let weps: Vec<WorkloadEndpoint> = resources::list(store, Some(WEP_NAMESPACE)).await?;
    let mut by_profile: HashMap<String, String> = HashMap::new();
    for kv in store.list(&keys::networks_prefix()).await? {
        let Ok(rec) = serde_json::from_slice::<NetworkRecord>(&kv.value) else {
            continue;
        };
        let label = if rec.name.is_empty() {
            rec.network_id.clone()
        } else {
            rec.name.clone()
        };
        if !rec.profile.is_empty() {
            by_profile.insert(rec.profile.clone(), label.clone());
        }
        by_profile
            .entry(crate::driver::profiles::fallback_profile(&rec.network_id))
            .or_insert(label);
    }
    let mut rows: Vec<EndpointRow> = weps
        .into_iter()
        .filter(|w| node.is_none_or(|n| w.spec.node == n))
        .map(|w| EndpointRow {
            network: w
                .spec
                .profiles
                .iter()
                .find_map(|p| by_profile.get(p).cloned()),
            endpoint: w.spec.endpoint.clone(),
            name: w.name().to_string(),
            node: w.spec.node.clone(),
            profiles: w.spec.profiles.clone(),
            addresses: w.spec.ip_networks.clone(),
            interface: w.spec.interface_name.clone(),
            mac: w.spec.mac.clone(),
        })
        .collect();
    rows.sort_by(|a, b| (&a.node, &a.endpoint).cmp(&(&b.node, &b.endpoint)));
    Ok(rows)
}

// ------------------------------------------------------------------ ipam check

/// Kinds of inconsistency found by `ipam check`.
pub mod kind {
    /// An address allocated under a `libnetwork.` handle that no WorkloadEndpoint uses.
    pub const ORPHAN_ALLOCATION: &str = "orphan-allocation";
    /// A WorkloadEndpoint address that is not allocated.
    pub const UNALLOCATED_ADDRESS: &str = "unallocated-endpoint-address";
    /// A handle whose per-block counts differ from the blocks (or that is missing).
    pub const HANDLE_MISMATCH: &str = "handle-mismatch";
    /// A `cali*` veth on this host that belongs to no WorkloadEndpoint of this node.
    pub const ORPHAN_VETH: &str = "orphan-veth";
}

/// One inconsistency.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// One of [`kind`].
    pub kind: &'static str,
    /// The address, handle or interface.
    pub object: String,
    /// What is wrong.
    pub detail: String,
    /// Whether `--repair` fixes it.
    pub repairable: bool,
    /// Whether this run fixed it.
    pub repaired: bool,
    /// What to do (or what was done).
    pub action: String,
}

/// What `ipam check` found (and did).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Every inconsistency.
    pub findings: Vec<Finding>,
    /// Remarks (parts not checked, and why).
    pub notes: Vec<String>,
}

impl CheckReport {
    /// Findings not fixed by this run.
    pub fn unresolved(&self) -> usize {
        self.findings.iter().filter(|f| !f.repaired).count()
    }
}

/// Settings of [`ipam_check`].
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// This host's node name (for its veths).
    pub nodename: String,
    /// Fix what is safe to fix.
    pub repair: bool,
    /// Orphan allocations younger than this are left alone (a container may be starting).
    pub grace: Duration,
    /// Look at this host's `cali*` veths.
    pub check_veths: bool,
    /// This machine's ID: `--repair` refuses when the Node names another machine.
    pub machine_id: Option<String>,
}

/// Parses the `timestamp` allocation attribute: Go's `time.Time.String()` form that Calico
/// stores, or RFC3339.
pub fn parse_attr_time(s: &str) -> Option<DateTime<Utc>> {
    if let Some(t) = crate::model::parse_time(s) {
        return Some(t);
    }
    // `2025-06-01 12:00:00.123456789 +0000 UTC` (a monotonic `m=+...` suffix is possible).
    let s = s.split(" m=").next().unwrap_or(s);
    let mut parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() == 4 {
        parts.pop(); // zone abbreviation
    }
    let s = parts.join(" ");
    DateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f %z")
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// One allocation seen in a block.
struct Alloc {
    block: IpNet,
    handle: Option<String>,
    node: Option<String>,
    since: Option<DateTime<Utc>>,
    sequence: u64,
}

fn normalize_counts(h: &IpamHandle) -> BTreeMap<String, u64> {
    h.block
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| {
            let k = k
                .parse::<IpNet>()
                .map(|c| c.trunc().to_string())
                .unwrap_or_else(|_| k.clone());
            (k, *n)
        })
        .collect()
}

fn fmt_counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "nothing".to_string();
    }
    m.iter()
        .map(|(k, v)| format!("{v} in {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn all_allocations(ipam: &Ipam) -> Result<BTreeMap<IpAddr, Alloc>> {
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
                        .and_then(|t| parse_attr_time(t)),
                    sequence: block.sequence_for(ordinal),
                },
            );
        }
    }
    Ok(out)
}

/// Per handle (ours only), per block: how many addresses the blocks hold.
fn counts_from_blocks(allocs: &BTreeMap<IpAddr, Alloc>) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for a in allocs.values() {
        if let Some(h) = a.handle.as_deref().filter(|h| h.starts_with(HANDLE_PREFIX)) {
            *out.entry(h.to_string())
                .or_default()
                .entry(a.block.trunc().to_string())
                .or_default() += 1;
        }
    }
    out
}

/// Stored handles of ours, with their revisions.
async fn our_handles(store: &dyn Datastore) -> Result<BTreeMap<String, (IpamHandle, i64)>> {
    let mut out = BTreeMap::new();
    for kv in store.list(keys::HANDLES_PREFIX).await? {
        let Some(id) = keys::parse_handle_key(&kv.key) else {
            continue;
        };
        if !id.starts_with(HANDLE_PREFIX) {
            continue;
        }
        out.insert(
            id.to_string(),
            (IpamHandle::from_json(&kv.value)?, kv.revision),
        );
    }
    Ok(out)
}

/// Rewrites one handle to what the blocks hold, read afresh; compare-and-swap on the handle
/// (our allocator writes a handle and its block together, so a concurrent change shows as a
/// changed handle). Returns what was done.
async fn repair_handle(ipam: &Ipam, store: &dyn Datastore, id: &str) -> Result<String> {
    for _ in 0..5 {
        let key = keys::handle_key(id);
        let stored = store.get(&key).await?;
        let actual = counts_from_blocks(&all_allocations(ipam).await?)
            .remove(id)
            .unwrap_or_default();
        let write = match &stored {
            None if actual.is_empty() => return Ok("nothing to do any more".to_string()),
            None => {
                let h = IpamHandle {
                    block: actual.clone(),
                    ..Default::default()
                };
                Write::create(&key, h.to_json()?)
            }
            Some(kv) => {
                let mut h = IpamHandle::from_json(&kv.value)?;
                if normalize_counts(&h) == actual {
                    return Ok("nothing to do any more".to_string());
                }
                if actual.is_empty() {
                    Write::delete(&key, kv.revision)
                } else {
                    h.block = actual.clone();
                    Write::update(&key, h.to_json()?, kv.revision)
                }
            }
        };
        match store.txn(vec![write]).await {
            Ok(_) if actual.is_empty() => return Ok("deleted the empty handle".to_string()),
            Ok(_) => return Ok(format!("set the handle to {}", fmt_counts(&actual))),
            Err(e) if e.is_lost_race() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::msg(format!(
        "repair handle {id}: it kept changing (is the plugin busy?)"
    )))
}

/// Finds (and with `repair`, fixes) inconsistencies between allocations, WorkloadEndpoints,
/// handles and this host's veths.
pub async fn ipam_check(store: Arc<dyn Datastore>, opts: &CheckOptions) -> Result<CheckReport> {
    let ipam = Ipam::new(store.clone());
    let mut report = CheckReport::default();
    let now = Utc::now();
    if let (true, Some(mine)) = (opts.repair, &opts.machine_id) {
        let node: Option<crate::model::Node> =
            resources::get(store.as_ref(), &keys::node_key(&opts.nodename)).await?;
        if let Some(other) = node
            .as_ref()
            .and_then(|n| {
                n.metadata
                    .annotations
                    .get(crate::model::MACHINE_ID_ANNOTATION)
            })
            .filter(|other| *other != mine)
        {
            return Err(Error::msg(format!(
                "repair node {}: it belongs to another machine (machine-id {other}, this one is \
                 {mine}); run the check on that host, or with that host's NODENAME there",
                opts.nodename
            )));
        }
    }

    // Links first, records second: a veth listed here had its WorkloadEndpoint written
    // before it (Join follows CreateEndpoint), so one found without a record is not a
    // container starting right now.
    let links = if opts.check_veths {
        Some(match crate::dataplane::Netlink::new() {
            Ok(nl) => nl.list_veths_marked(VETH_PREFIX).await.map(|v| (nl, v)),
            Err(e) => Err(e),
        })
    } else {
        None
    };
    let allocs = all_allocations(&ipam).await?;
    let weps: Vec<WorkloadEndpoint> = resources::list(store.as_ref(), None).await?;
    let mut wep_addrs: HashSet<IpAddr> = HashSet::new();
    for w in &weps {
        for n in &w.spec.ip_networks {
            if let Ok(net) = n.parse::<IpNet>() {
                wep_addrs.insert(net.addr());
            } else if let Ok(ip) = n.parse::<IpAddr>() {
                wep_addrs.insert(ip);
            }
        }
    }

    // Handles first: releasing an orphan below then counts down a correct handle.
    let actual = counts_from_blocks(&allocs);
    let stored = our_handles(store.as_ref()).await?;
    let ids: std::collections::BTreeSet<&String> = actual.keys().chain(stored.keys()).collect();
    for id in ids {
        let have = stored.get(id).map(|(h, _)| normalize_counts(h));
        let want = actual.get(id).cloned().unwrap_or_default();
        if have.as_ref() == Some(&want) {
            continue;
        }
        let detail = match &have {
            Some(h) => format!(
                "handle records {}, blocks hold {}",
                fmt_counts(h),
                fmt_counts(&want)
            ),
            None => format!("no handle record; blocks hold {}", fmt_counts(&want)),
        };
        let mut f = Finding {
            kind: kind::HANDLE_MISMATCH,
            object: id.clone(),
            detail,
            repairable: true,
            repaired: false,
            action: "run `calico-libnetwork ipam check --repair` to set the handle from the blocks"
                .to_string(),
        };
        if opts.repair {
            match repair_handle(&ipam, store.as_ref(), id).await {
                Ok(done) => {
                    f.repaired = true;
                    f.action = format!("repaired: {done}");
                }
                Err(e) => f.action = format!("repair failed ({e}): run the check again"),
            }
        }
        report.findings.push(f);
    }

    // Allocations of ours that no endpoint uses.
    for (ip, a) in &allocs {
        let Some(handle) = a.handle.as_deref().filter(|h| h.starts_with(HANDLE_PREFIX)) else {
            continue;
        };
        if wep_addrs.contains(ip) {
            continue;
        }
        // Every allocation of ours is time-stamped: one without a stamp is not in flight.
        let age = a.since.map(|t| (now - t).to_std().unwrap_or_default());
        let old = age.is_none_or(|age| age >= opts.grace);
        let age_text = match age {
            Some(age) => format!(
                "allocated {} ago",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            ),
            None => "allocation time unknown".to_string(),
        };
        let mut f = Finding {
            kind: kind::ORPHAN_ALLOCATION,
            object: ip.to_string(),
            detail: format!(
                "handle {handle}, node {}, {age_text}; no WorkloadEndpoint has it",
                a.node.as_deref().unwrap_or("?")
            ),
            repairable: old,
            repaired: false,
            action: if old {
                "run `calico-libnetwork ipam check --repair` to release it".to_string()
            } else {
                format!(
                    "younger than the grace period ({}): a container may be starting; check again later",
                    humantime::format_duration(opts.grace)
                )
            },
        };
        if opts.repair && old {
            let release = ReleaseOptions::new(*ip)
                .with_handle(handle)
                .with_sequence(a.sequence);
            match ipam.release(&[release]).await {
                Ok(left) if left.is_empty() => {
                    f.repaired = true;
                    f.action = "repaired: released".to_string();
                }
                Ok(_) => {
                    f.repaired = true;
                    f.action = "repaired: already released meanwhile".to_string();
                }
                Err(e) => {
                    f.action = format!("not released ({e}): it changed meanwhile; check again")
                }
            }
        }
        report.findings.push(f);
    }

    // Our endpoints whose address is not allocated: it may be handed out again.
    for w in weps
        .iter()
        .filter(|w| w.metadata.namespace == WEP_NAMESPACE)
    {
        for n in &w.spec.ip_networks {
            let Ok(net) = n.parse::<IpNet>() else {
                continue;
            };
            if allocs.contains_key(&net.addr()) {
                continue;
            }
            report.findings.push(Finding {
                kind: kind::UNALLOCATED_ADDRESS,
                object: net.addr().to_string(),
                detail: format!(
                    "WorkloadEndpoint {} (node {}) uses it, but it is not allocated",
                    w.name(),
                    w.spec.node
                ),
                repairable: false,
                repaired: false,
                action: "not repaired (another container may get this address): restart the \
                         container, or disconnect and reconnect it (`docker network disconnect`/`connect`)"
                    .to_string(),
            });
        }
    }

    // This host's veths.
    if let Some(listed) = links {
        let expected: HashSet<&str> = weps
            .iter()
            .filter(|w| w.spec.node == opts.nodename)
            .map(|w| w.spec.interface_name.as_str())
            .collect();
        match listed {
            Ok((nl, veths)) => {
                let others = veths.iter().filter(|(_, ours)| !ours).count();
                if others > 0 {
                    report.notes.push(format!(
                        "{others} {VETH_PREFIX}* veths not made by this plugin (no \
                         `{}` alias: Calico CNI's, or an older version's) were left alone",
                        crate::dataplane::VETH_ALIAS
                    ));
                }
                let ours: Vec<&String> = veths
                    .iter()
                    .filter(|(_, ours)| *ours)
                    .map(|(n, _)| n)
                    .collect();
                for v in ours.into_iter().filter(|v| !expected.contains(v.as_str())) {
                    let mut f = Finding {
                        kind: kind::ORPHAN_VETH,
                        object: v.clone(),
                        detail: format!(
                            "host veth with no WorkloadEndpoint on node {}",
                            opts.nodename
                        ),
                        repairable: true,
                        repaired: false,
                        action: "run `calico-libnetwork ipam check --repair` to delete it"
                            .to_string(),
                    };
                    if opts.repair {
                        match nl.delete_link(v).await {
                            Ok(()) => {
                                f.repaired = true;
                                f.action = "repaired: deleted".to_string();
                            }
                            Err(e) => f.action = format!("delete failed ({e}): run as root"),
                        }
                    }
                    report.findings.push(f);
                }
            }
            Err(e) => report.notes.push(format!(
                "host interfaces not checked ({e}): run as root on the Docker host"
            )),
        }
    }
    Ok(report)
}
