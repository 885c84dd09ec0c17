//! `status`: health of the datastore, this node's Node resource and its address, the pools,
//! the plugin socket and the endpoints (exit 1 on a problem, one line each saying what to do);
//! with `--all-hosts`, every Node too: its addresses, blocks, endpoints and heartbeat.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::commands::output::{header, print_json, table, Output};
use crate::config::{Config, DatastoreConfig};
use crate::datastore::resources;
use crate::datastore::Datastore;
use crate::driver::heartbeat::{
    fresh_for, heartbeat_of, heartbeat_text, liveness, seconds_text, Liveness, HEARTBEAT_ANNOTATION,
};
use crate::driver::node_address::ADDRESS_CONFLICT_ANNOTATION;
use crate::error::Result;
use crate::ipam::Ipam;
use crate::model::keys;
use crate::model::libnetwork::WEP_NAMESPACE;
use crate::model::resources::{NodeSpec, WorkloadEndpointSpec};
use crate::model::Node;

use super::open_datastore_for_command;
use super::plugin_socket::{plugin_activate, SOCKET_TIMEOUT};

/// The datastore part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub(crate) struct DatastoreStatus {
    /// `etcdv3` or `local`.
    pub(crate) kind: String,
    /// Whether a read succeeded.
    pub(crate) reachable: bool,
    /// Time of one read round trip, in milliseconds.
    pub(crate) latency_ms: Option<f64>,
    /// Why it could not be read, or why it was not checked.
    pub(crate) error: Option<String>,
}

/// This host's address on its Node (`spec.bgp`), for [`Status`].
#[derive(Clone, Debug, Serialize)]
pub(crate) struct NodeAddressStatus {
    /// `spec.bgp.ipv4Address` (empty: none).
    pub(crate) ipv4: String,
    /// `spec.bgp.ipv6Address` (empty: none).
    pub(crate) ipv6: String,
    /// Why the plugin did not write the address it found (another Node has it).
    pub(crate) conflict: Option<String>,
}

/// One pool's use, for [`Status`].
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PoolUse {
    /// Pool name.
    pub(crate) name: String,
    /// Pool CIDR.
    pub(crate) cidr: String,
    /// Addresses in the pool.
    pub(crate) size: u128,
    /// Addresses allocated.
    pub(crate) used: u64,
    /// `used / size` in percent.
    pub(crate) percent_used: f64,
    /// Whether the pool takes no new allocations.
    pub(crate) disabled: bool,
}

/// The plugin-socket part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SocketStatus {
    /// The socket path checked.
    pub(crate) path: String,
    /// Whether it accepted a connection and answered `Plugin.Activate` with both drivers.
    pub(crate) up: bool,
    /// What went wrong.
    pub(crate) error: Option<String>,
}

/// One Calico Node, for `status --all-hosts`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct HostStatus {
    /// The node's name.
    pub(crate) node: String,
    /// What its heartbeat says: `alive`, `dead` or `no heartbeat`.
    pub(crate) heartbeat: Liveness,
    /// When its plugin last renewed the heartbeat (RFC 3339).
    pub(crate) heartbeat_at: Option<String>,
    /// How long ago, in seconds (0 for a time ahead of this host's clock).
    pub(crate) heartbeat_age_s: Option<i64>,
    /// `spec.bgp.ipv4Address` (empty: none).
    pub(crate) ipv4_address: String,
    /// `spec.bgp.ipv6Address` (empty: none).
    pub(crate) ipv6_address: String,
    /// `spec.ipv4VXLANTunnelAddr` (empty: none).
    pub(crate) ipv4_vxlan_tunnel_addr: String,
    /// `spec.ipv6VXLANTunnelAddr` (empty: none).
    pub(crate) ipv6_vxlan_tunnel_addr: String,
    /// `spec.bgp.ipv4IPIPTunnelAddr` (empty: none).
    pub(crate) ipv4_ipip_tunnel_addr: String,
    /// IPAM blocks affine to it.
    pub(crate) blocks: usize,
    /// Its container endpoints (WorkloadEndpoints of ours naming it).
    pub(crate) endpoints: usize,
}

/// What `calico-libnetwork status` reports.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Status {
    /// This host's Calico node name.
    pub(crate) node: String,
    /// The datastore.
    pub(crate) datastore: DatastoreStatus,
    /// Whether this node's `Node` resource exists (`None`: not checked).
    pub(crate) node_resource: Option<bool>,
    /// The Node's address (`None`: no Node, or not checked).
    pub(crate) node_address: Option<NodeAddressStatus>,
    /// Every IP pool with its use.
    pub(crate) pools: Vec<PoolUse>,
    /// The plugin socket.
    pub(crate) socket: SocketStatus,
    /// WorkloadEndpoints of this host (`None`: not checked).
    pub(crate) endpoints: Option<usize>,
    /// Every Node, with `--all-hosts` (`None`: not asked, or not read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hosts: Option<Vec<HostStatus>>,
    /// Remarks that are not problems.
    pub(crate) notes: Vec<String>,
    /// One line per problem, saying what to do; empty when all is well.
    pub(crate) problems: Vec<String>,
}

/// Runs `status` (with every Node when `all_hosts`); returns the exit code (1 when there is
/// a problem).
pub(crate) async fn run(config: &Config, all_hosts: bool, output: Output) -> Result<i32> {
    let kind = match config.datastore {
        DatastoreConfig::Etcd(_) => "etcdv3",
        DatastoreConfig::Local(_) => "local",
    };
    let st = status(
        &config.nodename,
        &config.socket,
        kind,
        open_datastore_for_command(config).await,
        all_hosts,
        config.heartbeat_interval,
    )
    .await;
    if output == Output::Json {
        print_json(&st);
    } else {
        print!("{}", table(table_rows(&st)));
        if let Some(hosts) = &st.hosts {
            print!("\n{}", table(host_rows(hosts)));
        }
        for n in &st.notes {
            println!("note: {n}");
        }
        for p in &st.problems {
            println!("problem: {p}");
        }
    }
    Ok(i32::from(!st.problems.is_empty()))
}

/// Gathers [`Status`], from the datastore as the command could open it (directly, or
/// through the running plugin for an embedded store it holds); every Node's too when
/// `all_hosts`, judged by heartbeats renewed every `heartbeat_interval`.
pub(crate) async fn status(
    nodename: &str,
    socket: &Path,
    kind: &str,
    store: Result<Arc<dyn Datastore>>,
    all_hosts: bool,
    heartbeat_interval: Duration,
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
        node_address: None,
        pools: Vec::new(),
        socket: SocketStatus {
            path: socket.display().to_string(),
            up: false,
            error: None,
        },
        endpoints: None,
        hosts: None,
        notes: Vec::new(),
        problems: Vec::new(),
    };
    check_socket(&mut st, socket).await;
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
    if !check_node(&mut st, store.as_ref()).await {
        return st;
    }
    check_pools(&mut st, store.clone()).await;
    let per_node = match endpoints_per_node(store.as_ref()).await {
        Ok(counts) => {
            st.endpoints = Some(counts.get(nodename).copied().unwrap_or(0));
            Some(counts)
        }
        Err(e) => {
            st.problems.push(format!(
                "cannot read WorkloadEndpoints ({e}): check the datastore"
            ));
            None
        }
    };
    if all_hosts {
        if let Some(per_node) = per_node {
            list_hosts(&mut st, store, &per_node, Utc::now(), heartbeat_interval).await;
        }
    }
    st
}

/// Whether a plugin answers on the socket.
async fn check_socket(st: &mut Status, socket: &Path) {
    match plugin_activate(socket, SOCKET_TIMEOUT).await {
        Ok(()) => st.socket.up = true,
        Err(e) => {
            st.problems.push(format!(
                "plugin socket {} is not answering ({e}): start the plugin \
                 (`systemctl start calico-libnetwork`), or point CALICO_LIBNETWORK_SOCKET at \
                 its socket",
                socket.display()
            ));
            st.socket.error = Some(e.to_string());
        }
    }
}

/// Reads this node's Node resource: whether the datastore answers (and how fast), and
/// whether the Node exists. False when the datastore is unreachable (nothing else to check).
async fn check_node(st: &mut Status, store: &dyn Datastore) -> bool {
    let kind = st.datastore.kind.clone();
    let nodename = st.node.clone();
    // The first read also connects; the second is one plain round trip.
    let node_key = keys::node_key(&nodename);
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
            match n {
                None => st.problems.push(format!(
                    "Calico Node resource {nodename} does not exist: start the plugin (it \
                     creates it), or set NODENAME to this host's Calico node name"
                )),
                Some(kv) => check_node_address(st, &kv),
            }
            true
        }
        Err(e) => {
            st.problems.push(format!(
                "datastore {kind} unreachable ({e}): check that etcd is running and \
                 ETCD_ENDPOINTS (and its TLS settings)"
            ));
            st.datastore.error = Some(e.to_string());
            st.datastore.latency_ms = None;
            false
        }
    }
}

/// This host's address on its Node: a conflict the plugin recorded is a problem, no address
/// at all a note (a single host needs none; other hosts route to this one through it).
fn check_node_address(st: &mut Status, kv: &crate::datastore::KeyValue) {
    let Ok(node) = resources::decode::<NodeSpec>(kv) else {
        return;
    };
    let bgp = node.spec.bgp.clone().unwrap_or_default();
    let conflict = node
        .metadata
        .annotations
        .get(ADDRESS_CONFLICT_ANNOTATION)
        .cloned();
    if let Some(why) = &conflict {
        st.problems.push(format!(
            "this host's address is not on its Node {}: {why}: give each host its own \
             address (IP, IP6, IP_AUTODETECTION_METHOD), or delete the other Node if it is \
             gone",
            st.node
        ));
    } else if bgp.ipv4_address.is_empty() && bgp.ipv6_address.is_empty() {
        st.notes.push(format!(
            "Node {} has no address (spec.bgp): other hosts cannot route to its containers \
             (the plugin writes it when IP or IP6 finds one; see its log)",
            st.node
        ));
    }
    st.node_address = Some(NodeAddressStatus {
        ipv4: bgp.ipv4_address,
        ipv6: bgp.ipv6_address,
        conflict,
    });
}

fn percent(used: u64, size: u128) -> f64 {
    if size == 0 {
        0.0
    } else {
        (used as f64) * 100.0 / (size as f64)
    }
}

/// Every pool's use; full pools and the lack of an enabled pool are problems.
async fn check_pools(st: &mut Status, store: Arc<dyn Datastore>) {
    let ipam = Ipam::new(store);
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
}

/// How many of our WorkloadEndpoints each node has.
async fn endpoints_per_node(store: &dyn Datastore) -> Result<BTreeMap<String, usize>> {
    let weps = resources::list::<WorkloadEndpointSpec>(store, Some(WEP_NAMESPACE)).await?;
    let mut counts = BTreeMap::new();
    for w in weps {
        *counts.entry(w.spec.node).or_default() += 1;
    }
    Ok(counts)
}

/// A Node's addresses (`spec.bgp`), IPv4 then IPv6, comma-separated; empty when it has none.
pub(crate) fn node_addresses(node: &Node) -> String {
    let bgp = node.spec.bgp.clone().unwrap_or_default();
    joined(&[&bgp.ipv4_address, &bgp.ipv6_address])
}

/// The addresses that are set, comma-separated.
fn joined(addresses: &[&str]) -> String {
    addresses
        .iter()
        .filter(|a| !a.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(",")
}

/// Every Node, with its blocks, endpoints (`per_node`) and heartbeat at `now` (renewed
/// every `interval`); a dead one is a problem (its plugin stopped: its containers get no
/// updates, and its records stay).
async fn list_hosts(
    st: &mut Status,
    store: Arc<dyn Datastore>,
    per_node: &BTreeMap<String, usize>,
    now: DateTime<Utc>,
    interval: Duration,
) {
    let nodes = match resources::list::<NodeSpec>(store.as_ref(), None).await {
        Ok(nodes) => nodes,
        Err(e) => {
            st.problems
                .push(format!("cannot read Nodes ({e}): check the datastore"));
            return;
        }
    };
    let mut blocks: BTreeMap<String, usize> = BTreeMap::new();
    match Ipam::new(store).list_blocks(None).await {
        Ok(all) => {
            for (b, _) in all {
                if let Some(host) = b.host_affinity() {
                    *blocks.entry(host.to_string()).or_default() += 1;
                }
            }
        }
        Err(e) => {
            st.problems.push(format!(
                "cannot read IPAM blocks ({e}): check the datastore"
            ));
            return;
        }
    }
    let mut hosts: Vec<HostStatus> = nodes
        .iter()
        .map(|n| host_status(n, &blocks, per_node, now, interval))
        .collect();
    hosts.sort_by(|a, b| a.node.cmp(&b.node));
    for h in hosts.iter().filter(|h| h.heartbeat == Liveness::Dead) {
        st.problems.push(format!(
            "node {} is dead: its heartbeat ({HEARTBEAT_ANNOTATION}) was last renewed {} ago, \
             more than {} s: start its plugin, or remove the host with \
             `calico-libnetwork node remove {}` if it is gone for good",
            h.node,
            age_text(h.heartbeat_age_s.unwrap_or_default()),
            seconds_text(fresh_for(interval)),
            h.node
        ));
    }
    st.hosts = Some(hosts);
}

/// One Node's row of [`Status::hosts`].
fn host_status(
    node: &Node,
    blocks: &BTreeMap<String, usize>,
    per_node: &BTreeMap<String, usize>,
    now: DateTime<Utc>,
    interval: Duration,
) -> HostStatus {
    let name = node.name().to_string();
    let at = heartbeat_of(node);
    let bgp = node.spec.bgp.clone().unwrap_or_default();
    HostStatus {
        heartbeat: liveness(node, now, interval),
        heartbeat_at: at.map(heartbeat_text),
        heartbeat_age_s: at.map(|t| (now - t).num_seconds().max(0)),
        ipv4_address: bgp.ipv4_address,
        ipv6_address: bgp.ipv6_address,
        ipv4_vxlan_tunnel_addr: node.spec.ipv4_vxlan_tunnel_addr.clone(),
        ipv6_vxlan_tunnel_addr: node.spec.ipv6_vxlan_tunnel_addr.clone(),
        ipv4_ipip_tunnel_addr: bgp.ipv4_ipip_tunnel_addr,
        blocks: blocks.get(&name).copied().unwrap_or(0),
        endpoints: per_node.get(&name).copied().unwrap_or(0),
        node: name,
    }
}

/// An age in its largest unit: `45s`, `12m`, `5h`, `3d`.
fn age_text(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The table of `status --all-hosts`: one row per Node.
fn host_rows(hosts: &[HostStatus]) -> Vec<Vec<String>> {
    let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let mut rows = vec![header(&[
        "NODE",
        "HEARTBEAT",
        "AGE",
        "ADDRESS",
        "TUNNEL ADDRESSES",
        "BLOCKS",
        "ENDPOINTS",
    ])];
    for h in hosts {
        let addresses = joined(&[&h.ipv4_address, &h.ipv6_address]);
        let tunnels = [
            ("vxlan", &h.ipv4_vxlan_tunnel_addr),
            ("vxlan-v6", &h.ipv6_vxlan_tunnel_addr),
            ("ipip", &h.ipv4_ipip_tunnel_addr),
        ]
        .into_iter()
        .filter(|(_, a)| !a.is_empty())
        .map(|(kind, a)| format!("{kind}={a}"))
        .collect::<Vec<_>>()
        .join(",");
        rows.push(vec![
            h.node.clone(),
            h.heartbeat.as_str().to_string(),
            h.heartbeat_age_s
                .map(age_text)
                .unwrap_or_else(|| "-".into()),
            or_dash(addresses),
            or_dash(tunnels),
            h.blocks.to_string(),
            h.endpoints.to_string(),
        ]);
    }
    rows
}

/// The table of `status`: one row per check.
fn table_rows(st: &Status) -> Vec<Vec<String>> {
    let ok = |b: bool| if b { "ok" } else { "FAIL" }.to_string();
    let mut rows = vec![header(&["CHECK", "STATUS", "DETAIL"])];
    let ds = &st.datastore;
    rows.push(vec![
        "datastore".into(),
        if ds.reachable {
            "ok".into()
        } else if st.problems.iter().any(|p| p.contains("datastore")) {
            "FAIL".into()
        } else {
            "skipped".into()
        },
        match (ds.latency_ms, &ds.error) {
            (Some(ms), _) => format!("{} reachable, {ms:.1} ms per read", ds.kind),
            (None, Some(e)) => format!("{}: {e}", ds.kind),
            (None, None) => ds.kind.clone(),
        },
    ]);
    if let Some(exists) = st.node_resource {
        rows.push(vec![
            "node".into(),
            ok(exists),
            format!(
                "Node resource {} {}",
                st.node,
                if exists { "exists" } else { "missing" }
            ),
        ]);
    }
    if let Some(a) = &st.node_address {
        let or_none = |s: &str| {
            if s.is_empty() {
                "none".to_string()
            } else {
                s.to_string()
            }
        };
        rows.push(vec![
            "address".into(),
            ok(a.conflict.is_none()),
            match &a.conflict {
                None => format!("IPv4 {}, IPv6 {}", or_none(&a.ipv4), or_none(&a.ipv6)),
                Some(why) => why.clone(),
            },
        ]);
    }
    for p in &st.pools {
        rows.push(vec![
            "pool".into(),
            ok(p.disabled || u128::from(p.used) < p.size),
            format!(
                "{} {}: {}/{} used ({:.1}%){}",
                p.name,
                p.cidr,
                p.used,
                p.size,
                p.percent_used,
                if p.disabled { ", disabled" } else { "" }
            ),
        ]);
    }
    rows.push(vec![
        "socket".into(),
        ok(st.socket.up),
        match &st.socket.error {
            None => format!("{} answers Plugin.Activate", st.socket.path),
            Some(e) => format!("{}: {e}", st.socket.path),
        },
    ]);
    if let Some(n) = st.endpoints {
        rows.push(vec![
            "endpoints".into(),
            "ok".into(),
            format!("{n} on node {}", st.node),
        ]);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::heartbeat::tests::node;
    use crate::driver::heartbeat::DEFAULT_HEARTBEAT_INTERVAL;

    fn status() -> Status {
        Status {
            node: "node-1".to_string(),
            datastore: DatastoreStatus {
                kind: "etcdv3".to_string(),
                reachable: true,
                latency_ms: Some(1.25),
                error: None,
            },
            node_resource: Some(true),
            node_address: Some(NodeAddressStatus {
                ipv4: "10.0.0.5/24".to_string(),
                ipv6: String::new(),
                conflict: None,
            }),
            pools: vec![PoolUse {
                name: "default-ipv4-ippool".to_string(),
                cidr: "192.168.0.0/16".to_string(),
                size: 65536,
                used: 65536,
                percent_used: 100.0,
                disabled: false,
            }],
            socket: SocketStatus {
                path: "/run/calico.sock".to_string(),
                up: false,
                error: Some("connect: refused".to_string()),
            },
            endpoints: Some(3),
            hosts: None,
            notes: Vec::new(),
            problems: vec!["plugin socket ...".to_string()],
        }
    }

    #[test]
    fn one_row_per_check() {
        assert_eq!(
            table(table_rows(&status())),
            "CHECK      STATUS  DETAIL\n\
             datastore  ok      etcdv3 reachable, 1.2 ms per read\n\
             node       ok      Node resource node-1 exists\n\
             address    ok      IPv4 10.0.0.5/24, IPv6 none\n\
             pool       FAIL    default-ipv4-ippool 192.168.0.0/16: 65536/65536 used (100.0%)\n\
             socket     FAIL    /run/calico.sock: connect: refused\n\
             endpoints  ok      3 on node node-1\n"
        );
    }

    #[test]
    fn an_unopened_datastore_fails_and_the_rest_is_not_shown() {
        let mut st = status();
        st.datastore = DatastoreStatus {
            kind: "local".to_string(),
            reachable: false,
            latency_ms: None,
            error: Some("in use".to_string()),
        };
        st.node_resource = None;
        st.node_address = None;
        st.pools.clear();
        st.endpoints = None;
        st.problems = vec!["cannot open the local datastore (in use): ...".to_string()];
        let rows = table_rows(&st);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1], ["datastore", "FAIL", "local: in use"]);
        // Not checked (no problem names the datastore): skipped.
        st.problems.clear();
        assert_eq!(
            table_rows(&st)[1],
            ["datastore", "skipped", "local: in use"]
        );
    }

    #[test]
    fn every_node_with_its_heartbeat_addresses_blocks_and_endpoints() {
        let now: DateTime<Utc> = "2025-06-01T12:00:00Z".parse().unwrap();
        let spec: NodeSpec = serde_json::from_value(serde_json::json!({
            "bgp": {"ipv4Address": "10.0.0.1/24", "ipv4IPIPTunnelAddr": "10.90.0.1"},
            "ipv4VXLANTunnelAddr": "10.90.0.2",
        }))
        .unwrap();
        let v6: NodeSpec =
            serde_json::from_value(serde_json::json!({"bgp": {"ipv6Address": "fd00::3/64"}}))
                .unwrap();
        let blocks = BTreeMap::from([("a".to_string(), 2), ("c".to_string(), 1)]);
        let per_node = BTreeMap::from([("a".to_string(), 3)]);
        let hosts: Vec<HostStatus> = [
            node("a", Some("2025-06-01T11:59:48Z"), spec),
            node("b", Some("2025-06-01T11:50:00Z"), NodeSpec::default()),
            node("c", None, v6),
        ]
        .iter()
        .map(|n| host_status(n, &blocks, &per_node, now, DEFAULT_HEARTBEAT_INTERVAL))
        .collect();
        assert_eq!(
            table(host_rows(&hosts)),
            "NODE  HEARTBEAT     AGE  ADDRESS      TUNNEL ADDRESSES                BLOCKS  ENDPOINTS\n\
             a     alive         12s  10.0.0.1/24  vxlan=10.90.0.2,ipip=10.90.0.1  2       3\n\
             b     dead          10m  -            -                               0       0\n\
             c     no heartbeat  -    fd00::3/64   -                               1       0\n"
        );
        let json = serde_json::to_value(&hosts[1]).unwrap();
        assert_eq!(json["heartbeat"], "dead");
        assert_eq!(json["heartbeat_at"], "2025-06-01T11:50:00Z");
        assert_eq!(json["heartbeat_age_s"], 600);
        assert_eq!(
            serde_json::to_value(&hosts[2]).unwrap()["heartbeat"],
            "no heartbeat"
        );
    }

    #[test]
    fn ages_are_shown_in_their_largest_unit() {
        let ages: Vec<String> = [0, 119, 120, 7199, 7200, 172_799, 172_800]
            .into_iter()
            .map(age_text)
            .collect();
        assert_eq!(ages, ["0s", "119s", "2m", "119m", "2h", "47h", "2d"]);
    }
}
