//! Part `routes`: routes between hosts (issue 17). Sub-parts, chosen with
//! `BENCH_ROUTES=scale,scale-vxlan,fleet` (default all):
//! - `scale` (`scale-vxlan`): the release binary in a private network namespace with an
//!   underlay veth on 10.250.0.0/16, etcd in the namespace, `BENCH_ROUTES_NODES` (250)
//!   simulated Nodes with `BENCH_ROUTES_BLOCKS` (4) blocks affine to each, and a default pool
//!   with `vxlanMode` `Never` (`Always`: the Nodes also carry VXLAN tunnel addresses and MACs,
//!   so neighbour and FDB entries are part of the work). Timed with the kernel's own netlink
//!   notifications ([`super::nlwatch`]): process start → every route in the kernel; then
//!   `BENCH_ROUTES_CHURN` (100) times a block added (and deleted) → its route in (out of) the
//!   kernel; RSS after each.
//! - `fleet`: three hosts with a dockerd each (`common::hosts::Fleet`): `docker run` on h1
//!   returning → first ping reply from a container on h2 (direct) / h3 (VXLAN CrossSubnet),
//!   `BENCH_ROUTES_CONTAINERS` (100) containers per mode; then iperf3 between containers,
//!   side by side with host to host over the same path (`BENCH_IPERF_SECS` (10) s,
//!   `BENCH_IPERF_REPS` (3) runs each, alternated): direct h1 → h2, VXLAN h1 → h3
//!   (CrossSubnet, through the router) and VXLAN h1 → h2 (Always, the direct case's link);
//!   for VXLAN also host to host through the plugin's tunnel and through a plain kernel VXLAN
//!   device of the bench's own. `BENCH_ROUTES_HOLD=<s>` keeps the fleet that long afterwards.
//!
//! IP-in-IP is not measured: the machine this was written on has no `ipip` module.

use super::nlwatch::{dump_routes, dump_vteps, NlEvent, NlWatch};
use super::*;

use std::collections::BTreeSet;
use std::time::SystemTime;

use calico_libnetwork::dataplane::{format_mac, vxlan_mac, ROUTE_PROTOCOL};
use calico_libnetwork::datastore::etcd::EtcdStore;
use calico_libnetwork::model::resources::NodeBgpSpec;
use calico_libnetwork::model::{keys, AffinityState, AllocationBlock, BlockAffinity};
use calico_libnetwork::model::{IpPool, IpPoolSpec, Node, NodeSpec};
use common::hosts::{Fleet, Host};
use ipnet::{IpNet, Ipv4Net};

/// This host's node name in the scale runs.
const LOCAL_NODE: &str = "bench-local";
/// The underlay: this host is .0.1, the simulated Nodes follow from .1.1.
const UNDERLAY: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 0);
const UNDERLAY_PREFIX: u8 = 16;
/// The pool of the scale runs (/26 blocks from its start; the churn block is its last).
const SCALE_POOL: &str = "172.16.0.0/12";
const POOL_KEY: &str = "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool";

/// The part's sizes as this run has them, for the report's machine table.
pub(crate) fn routes_settings() -> String {
    format!(
        "BENCH_ROUTES={} BENCH_ROUTES_NODES={} BENCH_ROUTES_BLOCKS={} BENCH_ROUTES_CHURN={} \
         BENCH_ROUTES_CONTAINERS={} BENCH_IPERF_SECS={} BENCH_IPERF_REPS={}",
        env_list("BENCH_ROUTES", "scale,scale-vxlan,fleet").join(","),
        env_usize("BENCH_ROUTES_NODES", 250),
        env_usize("BENCH_ROUTES_BLOCKS", 4),
        env_usize("BENCH_ROUTES_CHURN", 100),
        env_usize("BENCH_ROUTES_CONTAINERS", 100),
        env_usize("BENCH_IPERF_SECS", 10),
        env_usize("BENCH_IPERF_REPS", 3),
    )
}

fn sub(p: &str) -> bool {
    env_list("BENCH_ROUTES", "scale,scale-vxlan,fleet")
        .iter()
        .any(|x| x == p || x == "all")
}

pub(crate) fn part_routes(cfg: &Cfg, rep: &mut Report) {
    let out = cfg.out.clone();
    rep.h(2, "Routes between hosts (issue 17)");
    rep.p(
        "IP-in-IP is **not measured**: this machine's kernel has no `ipip` module \
         (`ip link add type ipip` fails: unknown device type), so neither its data path \
         nor its device can be made here.",
    );
    let mut scale = Vec::new();
    for (name, vxlan) in [("scale", false), ("scale-vxlan", true)] {
        if sub(name) {
            let t = Instant::now();
            let out = cfg.out.join(format!("routes-{name}-plugin.log"));
            scale.push(in_netns(move || scale_run(vxlan, &out)));
            eprintln!("[routes] {name} done in {:.0} s", t.elapsed().as_secs_f64());
        }
    }
    if !scale.is_empty() {
        report_scale(rep, &scale);
    }
    if sub("fleet") {
        let t = Instant::now();
        fleet_runs(rep, &out);
        eprintln!("[routes] fleet done in {:.0} s", t.elapsed().as_secs_f64());
    }
}

// ---------------------------------------------------------------------------------------
// Scale: one host, many simulated others.

struct ScaleResult {
    vxlan: bool,
    nodes: usize,
    blocks: usize,
    /// Spawn → `Plugin.Activate` answered.
    ready: f64,
    /// Spawn → the last of the blocks' routes in the kernel (notifications).
    routes: f64,
    /// Spawn → the last neighbour and FDB entry (VXLAN only; notifications).
    vteps: Option<f64>,
    /// Spawn → routes complete for good (the start of the last 1 s they were all in a
    /// dump), and how often they were found incomplete after being complete.
    stable_routes: (f64, usize),
    /// The same for the neighbour and FDB entries.
    stable_vteps: (f64, usize),
    /// Counted in the kernel afterwards: routes (dump), neighbours, FDB entries.
    counted: (usize, usize, usize),
    rss_start: (f64, f64),
    rss_churn: (f64, f64),
    /// User + system CPU seconds of the plugin: after the start, after the churn.
    cpu: (f64, f64),
    /// Write returned → route in the kernel (add) / out of it (delete), ms.
    add: Vec<f64>,
    del: Vec<f64>,
    /// The etcd write itself (put / delete), ms.
    put: Vec<f64>,
    /// Warnings the plugin logged about routes.
    warnings: Vec<String>,
    /// One of the routes, as `ip route` shows it.
    sample: String,
}

/// A named namespace of our own (the underlay veth's far end), deleted on drop.
pub(crate) struct PeerNs(String);

impl PeerNs {
    fn new() -> PeerNs {
        let name = format!("calbench{}r", std::process::id());
        let _ = common::host::run("ip", &["netns", "del", &name]);
        common::host::run_ok("ip", &["netns", "add", &name]);
        PeerNs(name)
    }
}

impl Drop for PeerNs {
    fn drop(&mut self) {
        let _ = common::host::run("ip", &["netns", "del", &self.0]);
    }
}

fn v4(base: Ipv4Addr, offset: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + offset)
}

pub(crate) fn sim_name(i: usize) -> String {
    format!("sim-{i:04}")
}

/// Block `j` of the scale pool.
pub(crate) fn block_cidr(j: usize) -> Ipv4Net {
    let pool: Ipv4Net = SCALE_POOL.parse().unwrap();
    Ipv4Net::new(v4(pool.network(), (j as u32) * 64), 26).unwrap()
}

/// The underlay (a veth to a namespace of our own, `ul0` here at 10.250.0.1/16).
pub(crate) fn make_underlay() -> PeerNs {
    let peer = PeerNs::new();
    let ip = |args: &[&str]| {
        common::host::run_ok("ip", args);
    };
    ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul0p"]);
    ip(&["link", "set", "ul0p", "netns", &peer.0]);
    ip(&["-n", &peer.0, "link", "set", "ul0p", "up"]);
    let me = format!("{}/{UNDERLAY_PREFIX}", v4(UNDERLAY, 1));
    ip(&["addr", "add", &me, "dev", "ul0"]);
    ip(&["link", "set", "ul0", "up"]);
    peer
}

/// Writes the pool, the simulated Nodes and their blocks (with their affinities), as Calico
/// stores them. Returns the blocks' CIDRs, the Nodes' tunnel addresses and MACs.
pub(crate) fn write_cluster(
    rt: &tokio::runtime::Runtime,
    store: &EtcdStore,
    nodes: usize,
    per_node: usize,
    vxlan: bool,
) -> (BTreeSet<Ipv4Net>, BTreeSet<Ipv4Addr>, BTreeSet<[u8; 6]>) {
    let pool_net: IpNet = SCALE_POOL.parse().unwrap();
    let mut spec = IpPoolSpec::with_cidr(&pool_net);
    spec.set_defaults();
    spec.vxlan_mode = if vxlan { "Always" } else { "Never" }.into();
    spec.ipip_mode = "Never".into();
    let pool = IpPool::new("default-ipv4-ippool", spec);
    let mut writes: Vec<(String, Vec<u8>)> = vec![(POOL_KEY.into(), pool.to_json().unwrap())];
    let (mut cidrs, mut tunnels, mut macs) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let now = chrono::Utc::now();
    for i in 0..nodes {
        let name = sim_name(i);
        let mut spec = NodeSpec {
            bgp: Some(NodeBgpSpec {
                ipv4_address: format!("{}/{UNDERLAY_PREFIX}", v4(UNDERLAY, 257 + i as u32)),
                ..Default::default()
            }),
            ..Default::default()
        };
        if vxlan {
            // calico-node's tunnel address comes from a block affine to the node: its first.
            let t = block_cidr(i * per_node).network();
            let mac = vxlan_mac(&name, false);
            spec.ipv4_vxlan_tunnel_addr = t.to_string();
            spec.vxlan_tunnel_mac_addr = format_mac(mac);
            tunnels.insert(t);
            macs.insert(mac);
        }
        writes.push((
            keys::node_key(&name),
            Node::new(&name, spec).to_json().unwrap(),
        ));
        for b in 0..per_node {
            let cidr = block_cidr(i * per_node + b);
            let net = IpNet::V4(cidr);
            let block = AllocationBlock::new(net, Some(&name), now).unwrap();
            writes.push((keys::block_key(&net), block.to_json().unwrap()));
            writes.push((
                keys::block_affinity_key(&name, &net),
                BlockAffinity::new(AffinityState::Confirmed)
                    .to_json()
                    .unwrap(),
            ));
            cidrs.insert(cidr);
        }
    }
    rt.block_on(async {
        use futures::StreamExt;
        let results: Vec<_> = futures::stream::iter(writes)
            .map(|(k, v)| async move { store.put(&k, v).await.map(|_| ()) })
            .buffer_unordered(32)
            .collect()
            .await;
        for r in results {
            r.expect("write the simulated cluster");
        }
    });
    (cidrs, tunnels, macs)
}

/// The plugin as a host routing between hosts runs it, with firewall mode `dataplane` (`off`
/// for the routes figures: no firewall work in them), on a socket of its own.
pub(crate) fn spawn_plugin(etcd: &Etcd, dir: &Path, dataplane: &str) -> Child {
    let mut cmd = Command::new(BINARY);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CALICO_LIBNETWORK_SOCKET", dir.join("calico.sock"))
        .env("NODENAME", LOCAL_NODE)
        .env("CALICO_NODENAME_FILE", common::NO_NODENAME_FILE)
        .env("LOG_LEVEL", "info")
        .env("CALICO_LIBNETWORK_DATAPLANE", dataplane)
        .env("CALICO_LIBNETWORK_ROUTES", "true")
        .env("IP", format!("{}/{UNDERLAY_PREFIX}", v4(UNDERLAY, 1)))
        .env("DATASTORE_TYPE", "etcdv3")
        .env("ETCD_ENDPOINTS", etcd.endpoint())
        .env(
            "CALICO_LIBNETWORK_DOCKER_HOST",
            "unix:///run/calico-bench-no-docker.sock",
        );
    common::host::spawn_logged(
        cmd,
        &dir.join("plugin.log"),
        libc::SIGKILL,
        "calico-libnetwork",
    )
}

/// User + system CPU seconds of a process (`/proc/<pid>/stat` fields 14 and 15).
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = 100.0; // USER_HZ on Linux
    let get = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // After ')': field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    (get(11) + get(12)) / tick
}

/// Waits for the start's routes (and VTEP entries) to be complete: ms since `t0`.
fn wait_complete(
    nl: &mut NlWatch,
    t0: Instant,
    want: &BTreeSet<Ipv4Net>,
    tunnels: &BTreeSet<Ipv4Addr>,
    macs: &BTreeSet<[u8; 6]>,
    child: &mut Child,
    log: &Path,
) -> (f64, Option<f64>) {
    let (mut routes, mut neigh, mut fdb) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let (mut t_routes, mut t_vteps) = (None, None);
    let vxlan = !tunnels.is_empty();
    let deadline = t0 + Duration::from_secs(120);
    while t_routes.is_none() || (vxlan && t_vteps.is_none()) {
        if let Ok(Some(s)) = child.try_wait() {
            panic!("plugin exited ({s}): {}", common::host::log_tail(log, 30));
        }
        assert!(
            Instant::now() < deadline,
            "routes not complete after 120 s: {} of {} routes, {} neighbours, {} FDB; log:\n{}",
            routes.len(),
            want.len(),
            neigh.len(),
            fdb.len(),
            common::host::log_tail(log, 30)
        );
        for ev in nl.next(Duration::from_millis(200)) {
            match ev {
                NlEvent::Route {
                    added,
                    dst,
                    protocol,
                } if protocol == ROUTE_PROTOCOL && want.contains(&dst) => {
                    if added {
                        routes.insert(dst);
                    } else {
                        routes.remove(&dst);
                    }
                }
                NlEvent::Neigh { added, ip, .. } if tunnels.contains(&ip) => {
                    if added {
                        neigh.insert(ip);
                    } else {
                        neigh.remove(&ip);
                    }
                }
                NlEvent::Fdb {
                    added,
                    mac,
                    dst: Some(_),
                    ..
                } if macs.contains(&mac) => {
                    if added {
                        fdb.insert(mac);
                    } else {
                        fdb.remove(&mac);
                    }
                }
                _ => {}
            }
        }
        let now = ms(t0.elapsed());
        if t_routes.is_none() && routes.len() == want.len() {
            t_routes = Some(now);
        }
        if vxlan && t_vteps.is_none() && neigh.len() == tunnels.len() && fdb.len() == macs.len() {
            t_vteps = Some(now);
        }
    }
    (t_routes.unwrap(), t_vteps)
}

/// Since when (ms after `t0`) something has held, and how often it stopped holding.
#[derive(Default)]
struct Tracker {
    since: Option<f64>,
    lapses: usize,
}

impl Tracker {
    fn see(&mut self, holds: bool, now: f64) {
        match (holds, self.since) {
            (true, None) => self.since = Some(now),
            (false, Some(_)) => {
                self.since = None;
                self.lapses += 1;
            }
            _ => {}
        }
    }
    fn stable(&self, now: f64, window: f64) -> bool {
        self.since.is_some_and(|s| now - s >= window)
    }
}

/// After the notifications said complete: the kernel dumped every 10 ms until routes (and
/// VTEP entries) have been complete for `window`. The kernel flushes a device's routes and
/// neighbours without a notification (its last address removed, say), so the notifications
/// alone can claim a completeness that did not last. Returns the trackers of both and the
/// counts of the last dump (routes, neighbours, FDB entries).
fn settle(
    t0: Instant,
    want: &BTreeSet<Ipv4Net>,
    tunnels: &BTreeSet<Ipv4Addr>,
    macs: &BTreeSet<[u8; 6]>,
    window: Duration,
) -> (Tracker, Tracker, (usize, usize, usize)) {
    let (mut routes, mut vteps) = (Tracker::default(), Tracker::default());
    let window = ms(window);
    loop {
        let in_kernel: BTreeSet<Ipv4Net> = dump_routes(ROUTE_PROTOCOL).into_iter().collect();
        let (ips, fdb) = dump_vteps();
        let (ips, fdb): (BTreeSet<_>, BTreeSet<_>) =
            (ips.into_iter().collect(), fdb.into_iter().collect());
        let counted = (
            want.intersection(&in_kernel).count(),
            tunnels.intersection(&ips).count(),
            macs.intersection(&fdb).count(),
        );
        let now = ms(t0.elapsed());
        routes.see(counted.0 == want.len(), now);
        vteps.see(counted.1 == tunnels.len() && counted.2 == macs.len(), now);
        if routes.stable(now, window) && vteps.stable(now, window) {
            return (routes, vteps, counted);
        }
        assert!(
            now < 120_000.0,
            "routes not complete and stable within 120 s: {counted:?} of {} routes, {} \
             neighbours, {} FDB entries",
            want.len(),
            tunnels.len(),
            macs.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads notifications until one about `dst` (protocol 81) added (`added`) or deleted
/// arrives; when, or `None` after 10 s.
fn wait_route(nl: &mut NlWatch, dst: Ipv4Net, added: bool) -> Option<Instant> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for ev in nl.next(Duration::from_millis(100)) {
            if ev
                == (NlEvent::Route {
                    added,
                    dst,
                    protocol: ROUTE_PROTOCOL,
                })
            {
                return Some(Instant::now());
            }
        }
    }
    None
}

/// Counts lines of `prog args` (run in this namespace) containing `needle`.
fn count_lines(prog: &str, args: &[&str], needle: &str) -> usize {
    common::host::run(prog, args)
        .1
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

fn scale_run(vxlan: bool, keep_log: &Path) -> ScaleResult {
    let nodes = env_usize("BENCH_ROUTES_NODES", 250);
    let per_node = env_usize("BENCH_ROUTES_BLOCKS", 4);
    let churn = env_usize("BENCH_ROUTES_CHURN", 100);
    eprintln!(
        "[routes] scale{}: {nodes} nodes × {per_node} blocks",
        if vxlan { " (VXLAN)" } else { "" }
    );
    let _peer = make_underlay();
    let etcd = Etcd::start();
    let store = etcd.store_with_timeout(Duration::from_secs(10));
    let rt = runtime();
    let (want, tunnels, macs) = write_cluster(&rt, &store, nodes, per_node, vxlan);
    let dir = tempfile::Builder::new()
        .prefix("calico-bench-routes-")
        .tempdir()
        .unwrap();
    let log = dir.path().join("plugin.log");
    let socket = dir.path().join("calico.sock");

    let mut nl = NlWatch::open();
    let t0 = Instant::now();
    let mut child = spawn_plugin(&etcd, dir.path(), "off");
    let ready = std::thread::spawn(move || loop {
        if let Ok((200, body)) = common::plugin::call(&socket, "Plugin.Activate", "") {
            if body.contains("NetworkDriver") {
                return ms(t0.elapsed());
            }
        }
        if t0.elapsed() > Duration::from_secs(120) {
            return f64::NAN;
        }
        std::thread::sleep(Duration::from_millis(1));
    });
    let (routes, vteps) = wait_complete(&mut nl, t0, &want, &tunnels, &macs, &mut child, &log);
    let ready = ready.join().unwrap();
    let (stable_routes, stable_vteps, counted) =
        settle(t0, &want, &tunnels, &macs, Duration::from_secs(1));
    // Cross-check of the netlink dump with iproute2.
    if vxlan {
        let n = count_lines(
            "ip",
            &[
                "-4",
                "neigh",
                "show",
                "dev",
                "vxlan.calico",
                "nud",
                "permanent",
            ],
            "lladdr",
        );
        let f = count_lines("bridge", &["fdb", "show", "dev", "vxlan.calico"], " dst ");
        assert_eq!(
            (n, f),
            (counted.1, counted.2),
            "ip neigh / bridge fdb vs netlink dump"
        );
    }
    let sample = common::host::run("ip", &["-4", "route", "show", "proto", "81"])
        .1
        .lines()
        .find(|l| !l.starts_with("blackhole"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let pid = child.id();
    let rss_start = rss_mib(pid);
    let cpu_start = cpu_secs(pid);

    // Churn: one block of a simulated Node added, then deleted, `churn` times.
    let mut j = (1usize << (32 - 12 - 6)) - 1;
    let churn_key = |j: usize| keys::block_key(&IpNet::V4(block_cidr(j)));
    // The plugin's own tunnel block (VXLAN) might have landed there.
    while rt.block_on(store.get(&churn_key(j))).unwrap().is_some() {
        j -= 1;
    }
    let (cidr, key) = (block_cidr(j), churn_key(j));
    let (mut add, mut del, mut put) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..churn {
        let owner = sim_name(i % nodes);
        let block = AllocationBlock::new(IpNet::V4(cidr), Some(&owner), chrono::Utc::now())
            .unwrap()
            .to_json()
            .unwrap();
        while !nl.next(Duration::ZERO).is_empty() {}
        let t = Instant::now();
        rt.block_on(store.put(&key, block)).unwrap();
        let written = Instant::now();
        put.push(ms(written - t));
        let seen = wait_route(&mut nl, cidr, true)
            .unwrap_or_else(|| panic!("route {cidr} not added within 10 s"));
        add.push(ms(seen - written));
        while !nl.next(Duration::ZERO).is_empty() {}
        let t = Instant::now();
        rt.block_on(store.delete(&key, None)).unwrap();
        let written = Instant::now();
        put.push(ms(written - t));
        let seen = wait_route(&mut nl, cidr, false)
            .unwrap_or_else(|| panic!("route {cidr} not deleted within 10 s"));
        del.push(ms(seen - written));
    }
    let rss_churn = rss_mib(pid);
    let cpu_churn = cpu_secs(pid);
    common::host::stop_child(&mut child, libc::SIGTERM, Duration::from_secs(10));
    let _ = std::fs::copy(&log, keep_log);
    let warnings = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("routes"))
        .map(str::to_string)
        .collect();
    ScaleResult {
        vxlan,
        nodes,
        blocks: want.len(),
        ready,
        routes,
        vteps,
        stable_routes: (
            stable_routes.since.unwrap_or(f64::NAN),
            stable_routes.lapses,
        ),
        stable_vteps: (stable_vteps.since.unwrap_or(f64::NAN), stable_vteps.lapses),
        counted,
        rss_start,
        rss_churn,
        cpu: (cpu_start, cpu_churn),
        add,
        del,
        put,
        warnings,
        sample,
    }
}

fn report_scale(rep: &mut Report, runs: &[ScaleResult]) {
    rep.h(3, "Scale: one host, simulated others");
    rep.p(
        "The release binary in a private network namespace (dataplane `off`, `LOG_LEVEL=info`, \
         `CALICO_LIBNETWORK_ROUTES=true`, `IP=10.250.0.1/16` on a veth underlay `ul0` whose far \
         end is in a namespace of its own), etcd in the same namespace. Before the start: the \
         default pool 172.16.0.0/12 (`ipipMode` Never, `vxlanMode` as in the row), the simulated \
         Nodes (`spec.bgp.ipv4Address` 10.250.1.1/16 onwards; with VXLAN also \
         `ipv4VXLANTunnelAddr`, the first address of the Node's first block, and \
         `vxlanTunnelMACAddr`, Felix's MAC for the name) and their /26 blocks with `affinity: \
         host:<node>` and their affinity keys. Times come from the kernel's netlink \
         notifications (`RTMGRP_IPV4_ROUTE`, `RTMGRP_NEIGH`), read as they arrive: start = \
         spawn → the last block route (protocol 81) in the kernel. The kernel flushes a \
         device's routes and neighbours without notifying (when its last address goes), so \
         the start is also checked with netlink dumps every 10 ms until everything has been \
         there for 1 s: 'for good' is the start of that second, 'lapses' how often a dump \
         found something missing after it had all been there. One change = the etcd write \
         (put of a new block affine to a simulated Node, or its delete) returning → the route's \
         notification read. RSS = `VmRSS` (`VmHWM`) of /proc/<pid>/status, 1 s after the start \
         and right after the churn.",
    );
    let mut rows = Vec::new();
    let mut goals = Vec::new();
    for r in runs {
        let mode = if r.vxlan {
            "VXLAN Always"
        } else {
            "no encapsulation"
        };
        let (a, d, p) = (summarize(&r.add), summarize(&r.del), summarize(&r.put));
        rows.push(vec![
            mode.to_string(),
            format!("{} / {}", r.nodes, r.blocks),
            f(r.ready),
            f(r.routes),
            format!("{} ({} lapses)", f(r.stable_routes.0), r.stable_routes.1),
            r.vteps.map_or("–".into(), f),
            if r.vxlan {
                format!("{} ({} lapses)", f(r.stable_vteps.0), r.stable_vteps.1)
            } else {
                "–".into()
            },
            format!("{} / {} / {}", r.counted.0, r.counted.1, r.counted.2),
            format!("{} / {} (max {})", f(a.p50), f(a.p99), f(a.max)),
            format!("{} / {} (max {})", f(d.p50), f(d.p99), f(d.max)),
            format!("{} / {}", f(p.p50), f(p.p99)),
            format!("{:.1} ({:.1})", r.rss_start.0, r.rss_start.1),
            format!("{:.1} ({:.1})", r.rss_churn.0, r.rss_churn.1),
            format!("{:.2} / {:.2}", r.cpu.0, r.cpu.1),
        ]);
        let rss = r.rss_start.0.max(r.rss_churn.0);
        let start = r
            .stable_routes
            .0
            .max(if r.vxlan { r.stable_vteps.0 } else { 0.0 });
        goals.push(vec![
            format!(
                "start to all {} routes{} < 2 s ({mode}; complete for good)",
                r.blocks,
                if r.vxlan {
                    ", neighbours and FDB entries"
                } else {
                    ""
                }
            ),
            format!("{} ms", f(start)),
            goal(start < 2000.0).into(),
        ]);
        goals.push(vec![
            format!("one change < 50 ms, p50/p99 of {} adds ({mode})", a.n),
            format!("{} / {} ms", f(a.p50), f(a.p99)),
            goal(a.p99 < 50.0).into(),
        ]);
        goals.push(vec![
            format!("one change < 50 ms, p50/p99 of {} deletes ({mode})", d.n),
            format!("{} / {} ms", f(d.p50), f(d.p99)),
            goal(d.p99 < 50.0).into(),
        ]);
        goals.push(vec![
            format!("RSS < 40 MiB ({mode})"),
            format!("{rss:.1} MiB (HWM {:.1})", r.rss_churn.1),
            goal(rss < 40.0).into(),
        ]);
    }
    rep.table(
        &[
            "pool mode",
            "Nodes / blocks",
            "ready ms",
            "all routes ms (notifications)",
            "all routes for good ms (dumps)",
            "all neighbours + FDB ms (notifications)",
            "… for good ms (dumps)",
            "in the kernel: routes / neighbours / FDB",
            "add p50 / p99 ms",
            "delete p50 / p99 ms",
            "etcd write p50 / p99 ms",
            "RSS after start MiB (HWM)",
            "RSS after churn MiB (HWM)",
            "CPU s after start / after churn",
        ],
        &rows,
    );
    for r in runs {
        rep.p(&format!(
            "A route ({}): `{}`",
            if r.vxlan { "VXLAN" } else { "no encapsulation" },
            r.sample
        ));
        if !r.warnings.is_empty() {
            rep.p(&format!(
                "Route warnings in the plugin's log ({}): {} lines, the first: `{}`",
                if r.vxlan { "VXLAN" } else { "no encapsulation" },
                r.warnings.len(),
                r.warnings[0]
            ));
        }
    }
    rep.h(4, "Goals (scale)");
    rep.table(&["goal", "measured", ""], &goals);
}

// ---------------------------------------------------------------------------------------
// Fleet: three hosts with Docker.

/// Sets the default pool's modes as `calicoctl apply` would.
fn set_pool_modes(fleet: &Fleet, vxlan: &str, ipip: &str) {
    let mut pool = fleet
        .etcd
        .get_json(POOL_KEY)
        .unwrap_or_else(|| panic!("no {POOL_KEY}"));
    pool["spec"]["vxlanMode"] = vxlan.into();
    pool["spec"]["ipipMode"] = ipip.into();
    fleet.etcd.put_json(POOL_KEY, &pool);
}

fn inspect(h: &Host, c: &str, what: &str) -> String {
    h.d().docker_ok(&["inspect", "-f", what, c])
}

fn container_ip(h: &Host, c: &str) -> String {
    inspect(
        h,
        c,
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    )
}

/// `/proc/<pid>/ns/net` of container `c` on `h`.
fn container_ns(h: &Host, c: &str) -> String {
    format!("/proc/{}/ns/net", inspect(h, c, "{{.State.Pid}}"))
}

/// A command run in network namespace `ns` (a path).
fn cmd_in(ns: &str, prog: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(prog);
    cmd.args(args).env_clear().env("PATH", common::host::PATH);
    common::netns::command_in(&mut cmd, ns);
    cmd
}

fn ok_in(ns: &str, prog: &str, args: &[&str], timeout: Duration) -> Result<String, String> {
    let out = common::host::run_with_timeout(cmd_in(ns, prog, args), None, timeout)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Pings `to` from `ns` once a second until it answers (`within`); panics after.
fn wait_ping(ns: &str, to: &str, within: Duration, what: &str) {
    let t = Instant::now();
    loop {
        match ok_in(
            ns,
            "ping",
            &["-c", "1", "-W", "1", to],
            Duration::from_secs(5),
        ) {
            Ok(_) => return,
            Err(e) if t.elapsed() > within => panic!("{what}: no reply from {to}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `ping -D -i 0.01` from `ns` to `to`: the wall-clock time of the first reply, and when the
/// ping started; `None` after 10 s without one.
fn first_reply(ns: &str, to: &str) -> (SystemTime, Option<SystemTime>) {
    let mut cmd = cmd_in(
        ns,
        "ping",
        &["-n", "-D", "-i", "0.01", "-W", "1", "-w", "10", to],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let started = SystemTime::now();
    let mut child = cmd.spawn().expect("start ping");
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut reply = None;
    for line in out.lines().map_while(Result::ok) {
        // [1700000000.123456] 64 bytes from 10.0.0.1: icmp_seq=3 ttl=63 time=0.1 ms
        if line.contains("bytes from") {
            reply = line
                .strip_prefix('[')
                .and_then(|l| l.split(']').next())
                .and_then(|s| s.parse::<f64>().ok())
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(s));
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    (started, reply)
}

fn since(later: SystemTime, earlier: SystemTime) -> f64 {
    match later.duration_since(earlier) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    }
}

/// One mode's convergence: per container, docker run returned → first reply; the part of
/// it before the address was known (docker inspect); and ping start → first reply.
struct Converge {
    label: String,
    total: Vec<f64>,
    inspect: Vec<f64>,
    after_start: Vec<f64>,
    lost: usize,
}

fn converge(fleet: &Fleet, from_ns: &str, n: usize, label: &str, tag: &str) -> Converge {
    let h1 = fleet.host("h1");
    let mut c = Converge {
        label: label.to_string(),
        total: Vec::new(),
        inspect: Vec::new(),
        after_start: Vec::new(),
        lost: 0,
    };
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("{tag}{i}");
        h1.d().docker_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "calinet",
            common::docker::BUSYBOX_IMAGE,
            "sleep",
            "3600",
        ]);
        let returned = SystemTime::now();
        names.push(name.clone());
        let ip = container_ip(h1, &name);
        c.inspect.push(since(SystemTime::now(), returned));
        match first_reply(from_ns, &ip) {
            (started, Some(reply)) => {
                c.total.push(since(reply, returned));
                c.after_start.push(since(reply, started));
            }
            (_, None) => c.lost += 1,
        }
        if (i + 1) % 20 == 0 {
            eprintln!("[routes] {label}: {} containers", i + 1);
        }
    }
    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    h1.d().docker_ok(&rm);
    c
}

/// One iperf3 run: Gbit/s received, the sender's retransmissions, the sender's and the
/// receiver's CPU use (iperf3's own processes, % of one core).
struct Iperf {
    gbits: f64,
    retransmits: f64,
    cpu_sender: f64,
    cpu_receiver: f64,
}

/// One iperf3 run from `client_ns` to `server` (address) with the server in `server_ns`.
fn iperf(client_ns: &str, server_ns: &str, server: &str, secs: u64) -> Iperf {
    let mut srv = cmd_in(server_ns, "iperf3", &["-s", "-1", "-p", "5201"]);
    srv.stdout(Stdio::null()).stderr(Stdio::null());
    let mut srv = srv
        .spawn()
        .expect("start iperf3 -s (Debian package iperf3)");
    let secs_s = secs.to_string();
    let mut res = Err(String::new());
    // The server needs a moment to listen.
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        res = ok_in(
            client_ns,
            "iperf3",
            &["-c", server, "-p", "5201", "-t", &secs_s, "-J"],
            Duration::from_secs(secs + 30),
        );
        if res.is_ok() {
            break;
        }
    }
    let _ = srv.kill();
    let _ = srv.wait();
    let out = res.unwrap_or_else(|e| panic!("iperf3 -c {server}: {e}"));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("iperf3 -J: {e}: {out}"));
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    Iperf {
        gbits: num(&v["end"]["sum_received"]["bits_per_second"]) / 1e9,
        retransmits: num(&v["end"]["sum_sent"]["retransmits"]),
        cpu_sender: num(&v["end"]["cpu_utilization_percent"]["host_total"]),
        cpu_receiver: num(&v["end"]["cpu_utilization_percent"]["remote_total"]),
    }
}

struct Throughput {
    label: String,
    host: Vec<Iperf>,
    containers: Vec<Iperf>,
    /// VXLAN only: host to host through the tunnel (to the other host's tunnel address),
    /// which tells the tunnel's cost from the containers' hops.
    tunnel: Vec<Iperf>,
    /// VXLAN only: host to host through a VXLAN device of the bench's own (no plugin), the
    /// same underlay path: what the kernel does with VXLAN there.
    control: Vec<Iperf>,
}

/// A VXLAN device `vxbench` (VNI 77, port 4790, MTU underlay − 50) in hosts `a` and `b`
/// with `198.18.77.1/24` and `.2`, each flooding to the other: the kernel's VXLAN on the
/// fleet's underlay without the plugin. Removed on drop.
struct ControlVxlan<'a>(&'a Host, &'a Host);

impl<'a> ControlVxlan<'a> {
    fn new(a: &'a Host, b: &'a Host) -> ControlVxlan<'a> {
        let c = ControlVxlan(a, b);
        for (h, other, addr) in [(a, b, "198.18.77.1/24"), (b, a, "198.18.77.2/24")] {
            let local = h.addr().to_string();
            let remote = other.addr().to_string();
            h.exec_ok(
                "ip",
                &[
                    "link", "add", "vxbench", "type", "vxlan", "id", "77", "dstport", "4790",
                    "local", &local, "dev", "eth0",
                ],
            );
            h.exec_ok("ip", &["addr", "add", addr, "dev", "vxbench"]);
            h.exec_ok("ip", &["link", "set", "vxbench", "up"]);
            h.exec_ok(
                "bridge",
                &[
                    "fdb",
                    "append",
                    "00:00:00:00:00:00",
                    "dev",
                    "vxbench",
                    "dst",
                    &remote,
                ],
            );
        }
        c
    }
}

impl Drop for ControlVxlan<'_> {
    fn drop(&mut self) {
        for h in [self.0, self.1] {
            let _ = h.exec("ip", &["link", "del", "vxbench"]);
        }
    }
}

/// `spec.ipv4VXLANTunnelAddr` of host `h`'s Node.
fn tunnel_addr(fleet: &Fleet, h: &str) -> Option<String> {
    let node = fleet.get(&keys::node_key(h))?;
    node["spec"]["ipv4VXLANTunnelAddr"]
        .as_str()
        .map(str::to_string)
}

/// iperf3 container to container and host to host, alternated, `reps` times each.
fn throughput(
    fleet: &Fleet,
    label: &str,
    (a, b): (&str, &str),
    vxlan: bool,
    secs: u64,
    reps: usize,
) -> Throughput {
    let (ha, hb) = (fleet.host(a), fleet.host(b));
    let (ca, cb) = (format!("p-{a}"), format!("p-{b}"));
    let (ca_ns, cb_ns) = (container_ns(ha, &ca), container_ns(hb, &cb));
    let cb_ip = container_ip(hb, &cb);
    let mut t = Throughput {
        label: label.to_string(),
        host: Vec::new(),
        containers: Vec::new(),
        tunnel: Vec::new(),
        control: Vec::new(),
    };
    let control = vxlan.then(|| ControlVxlan::new(ha, hb));
    let tunnel = if vxlan {
        Some(tunnel_addr(fleet, b).unwrap_or_else(|| panic!("{b} has no VXLAN tunnel address")))
    } else {
        None
    };
    for i in 0..reps {
        eprintln!("[routes] iperf3 {label}: run {}/{reps}", i + 1);
        let host = || iperf(&ha.ns_path(), &hb.ns_path(), &hb.addr().to_string(), secs);
        let cont = || iperf(&ca_ns, &cb_ns, &cb_ip, secs);
        if i % 2 == 0 {
            t.host.push(host());
            t.containers.push(cont());
        } else {
            t.containers.push(cont());
            t.host.push(host());
        }
        if let Some(addr) = &tunnel {
            t.tunnel
                .push(iperf(&ha.ns_path(), &hb.ns_path(), addr, secs));
        }
        if control.is_some() {
            t.control
                .push(iperf(&ha.ns_path(), &hb.ns_path(), "198.18.77.2", secs));
        }
    }
    t
}

/// Our routes on `h` (`ip -4 route show proto 81`).
fn routes_of(h: &Host) -> String {
    h.exec("ip", &["-4", "route", "show", "proto", "81"]).1
}

fn fleet_runs(rep: &mut Report, out: &Path) {
    let n = env_usize("BENCH_ROUTES_CONTAINERS", 100);
    let secs = env_usize("BENCH_IPERF_SECS", 10) as u64;
    let reps = env_usize("BENCH_IPERF_REPS", 3);
    eprintln!("[routes] fleet: waiting for the host lock (Docker tests hold it)");
    // The plugins' address on eth0 only: `first-found` would take the bench's own VXLAN
    // device (`vxbench`, below) for the host's address once its periodic check ran.
    let fleet = Fleet::builder()
        .dockerd()
        .plugin_env("IP_AUTODETECTION_METHOD", "interface=eth0")
        .start();
    let load = sh("cut -d' ' -f1-3 /proc/loadavg");
    for h in &fleet.hosts {
        h.d().calico_network("calinet", &[]);
        let c = format!("p-{}", h.name());
        h.d()
            .sleeper(common::docker::BUSYBOX_IMAGE, &c, &["--network", "calinet"]);
    }
    let (h1, h2, h3) = (fleet.host("h1"), fleet.host("h2"), fleet.host("h3"));
    let p1_ip = container_ip(h1, "p-h1");
    let (p2_ns, p3_ns) = (container_ns(h2, "p-h2"), container_ns(h3, "p-h3"));

    let mut conv = Vec::new();
    let mut thr = Vec::new();
    // Direct: h1 and h2 share a subnet.
    set_pool_modes(&fleet, "Never", "Never");
    wait_ping(&p2_ns, &p1_ip, Duration::from_secs(60), "direct h2 -> h1");
    eprintln!("[routes] h2's routes (direct):\n{}", routes_of(h2));
    conv.push(converge(
        &fleet,
        &p2_ns,
        n,
        "direct (h1 → h2, vxlanMode Never)",
        "cd",
    ));
    thr.push(throughput(
        &fleet,
        "direct h1 → h2 (vxlanMode Never)",
        ("h1", "h2"),
        false,
        secs,
        reps,
    ));
    // VXLAN CrossSubnet: h3 is on another subnet, behind the router.
    set_pool_modes(&fleet, "CrossSubnet", "Never");
    wait_ping(&p3_ns, &p1_ip, Duration::from_secs(60), "VXLAN h3 -> h1");
    eprintln!("[routes] h3's routes (CrossSubnet):\n{}", routes_of(h3));
    conv.push(converge(
        &fleet,
        &p3_ns,
        n,
        "VXLAN (h1 → h3, vxlanMode CrossSubnet)",
        "cx",
    ));
    thr.push(throughput(
        &fleet,
        "VXLAN h1 → h3 (CrossSubnet; through the router)",
        ("h1", "h3"),
        true,
        secs,
        reps,
    ));
    // VXLAN Always: the same link as the direct case, encapsulated.
    set_pool_modes(&fleet, "Always", "Never");
    let p1_ns = container_ns(h1, "p-h1");
    let p2_ip = container_ip(h2, "p-h2");
    // Every route of h1's but its blackholes through the tunnel, before measuring.
    let t = Instant::now();
    loop {
        let routes = routes_of(h1);
        let via: Vec<&str> = routes
            .lines()
            .filter(|l| !l.starts_with("blackhole"))
            .collect();
        if !via.is_empty() && via.iter().all(|l| l.contains("vxlan.calico")) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "h1: not all via VXLAN: {routes}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_ping(&p1_ns, &p2_ip, Duration::from_secs(60), "VXLAN h1 -> h2");
    let mtu = h1.exec("ip", &["-o", "link", "show", "vxlan.calico"]).1;
    for h in [h1, h2] {
        eprintln!(
            "[routes] {} before VXLAN Always iperf3: {}\n{}",
            h.name(),
            h.exec("ip", &["-d", "-o", "link", "show", "vxlan.calico"])
                .1
                .trim(),
            routes_of(h)
        );
    }
    thr.push(throughput(
        &fleet,
        "VXLAN h1 → h2 (Always; same link as direct)",
        ("h1", "h2"),
        true,
        secs,
        reps,
    ));
    for h in [h1, h2] {
        eprintln!(
            "[routes] {} after VXLAN Always iperf3: {}\n{}",
            h.name(),
            h.exec("ip", &["-d", "-o", "link", "show", "vxlan.calico"])
                .1
                .trim(),
            routes_of(h)
        );
    }
    let veth_mtu = ok_in(
        &p1_ns,
        "ip",
        &["-o", "link", "show"],
        Duration::from_secs(5),
    )
    .unwrap_or_default();
    // The plugins' logs, for what the figures do not show; and how often each made its
    // VXLAN device (once is right: a re-creation mid-run would spoil the figures).
    let mut made = Vec::new();
    for h in &fleet.hosts {
        let to = out.join(format!("routes-fleet-{}-plugin.log", h.name()));
        let _ = std::fs::copy(h.plugin.log_path(), to);
        let n = h.plugin.log().matches("create vxlan device").count();
        made.push(format!("{} {n}", h.name()));
    }
    let made = made.join(", ");
    // BENCH_ROUTES_HOLD=<s>: keep the fleet that long after measuring, to look at it.
    let hold = env_usize("BENCH_ROUTES_HOLD", 0);
    if hold > 0 {
        for h in &fleet.hosts {
            eprintln!(
                "[routes] holding {hold} s: {} = {}, container p-{} = {}",
                h.name(),
                h.ns_path(),
                h.name(),
                container_ns(h, &format!("p-{}", h.name()))
            );
        }
        std::thread::sleep(Duration::from_secs(hold as u64));
    }
    drop(fleet);
    let links = (mtu.as_str(), veth_mtu.as_str(), made.as_str());
    report_fleet(rep, &conv, &thr, (n, secs, reps), &load, links);
}

/// `sizes`: containers per mode, iperf3 seconds and runs; `links`: `ip -o link` of h1's
/// VXLAN device and of its container's links, and how often each host made its device.
fn report_fleet(
    rep: &mut Report,
    conv: &[Converge],
    thr: &[Throughput],
    (n, secs, reps): (usize, u64, usize),
    load: &str,
    (vxlan_link, container_links, made): (&str, &str, &str),
) {
    rep.h(
        3,
        "Convergence: docker run on h1 → first ping reply from another host",
    );
    rep.p(&format!(
        "Three hosts (`tests/common/hosts.rs` `Fleet` with a dockerd each, Debian's Docker; h1 \
         and h2 on one /24, h3 behind a router), one etcd cluster, the plugins as the fleet \
         runs them (dataplane `auto`, routes on) plus `IP_AUTODETECTION_METHOD=interface=eth0` \
         (the data-path part adds a VXLAN device of its own, which `first-found` would take \
         for the host's address). Load average when the fleet was up: {load}. \
         Per container: `docker run -d --network calinet busybox sleep` on h1; the clock starts \
         when the docker client returns; `docker inspect` gives its address; then `ping -n -D \
         -i 0.01` runs in the network namespace of a container already running on the other \
         host (a container, not the host itself: the network's profile admits traffic from its \
         own members only) and the first reply's timestamp stops the clock. {n} containers per \
         mode, kept running until the mode ends (so the 65th lands in a new block, whose route \
         must reach the other host). The figure includes `docker inspect` and starting ping \
         (columns 'address known' and 'ping start → reply' split it)."
    ));
    let mut rows = Vec::new();
    let mut goals = Vec::new();
    for c in conv {
        let (t, i, a) = (
            summarize(&c.total),
            summarize(&c.inspect),
            summarize(&c.after_start),
        );
        rows.push(vec![
            c.label.clone(),
            format!(
                "{}{}",
                t.n,
                if c.lost > 0 {
                    format!(" ({} no reply in 10 s)", c.lost)
                } else {
                    String::new()
                }
            ),
            f(t.p50),
            f(t.p90),
            f(t.p99),
            f(t.max),
            f(i.p50),
            format!("{} / {}", f(a.p50), f(a.p99)),
        ]);
        goals.push(vec![
            format!("p50 < 100 ms, {}", c.label),
            format!("{} ms", f(t.p50)),
            goal(t.p50 < 100.0).into(),
        ]);
        goals.push(vec![
            format!("p99 < 500 ms, {}", c.label),
            format!("{} ms", f(t.p99)),
            goal(t.p99 < 500.0 && c.lost == 0).into(),
        ]);
    }
    rep.table(
        &[
            "mode",
            "n",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "address known (inspect) p50 ms",
            "ping start → reply p50 / p99 ms",
        ],
        &rows,
    );
    rep.h(3, "Data path: TCP throughput, containers vs hosts");
    rep.p(&format!(
        "iperf3 ({}), one TCP stream, {secs} s per run, {reps} runs each, container pairs and \
         host pairs alternated; the same fleet right after the convergence runs. Containers: \
         iperf3 from the host run in the busybox containers' network namespaces (client on \
         h1, server on the other host). Hosts: the same between the hosts' namespaces over \
         the same underlay (the veths and bridge of the fleet; through the router for h3). \
         Figures are Gbit/s received, median of the runs (min–max); retransmits and iperf3's \
         own CPU (% of one core) are medians too. 'Hosts through the tunnel': h1's namespace \
         to the other host's VXLAN tunnel address (routed via `vxlan.calico`), no container \
         hop. 'Plain kernel VXLAN': a VXLAN device of the bench's own (VNI 77, port 4790, \
         MTU 1450, flooding to the other host) between the same two host namespaces, which \
         shows what the kernel does with VXLAN on this underlay without the plugin. VXLAN \
         device: `{}`. h1's container links: `{}`. VXLAN devices made per host during the \
         run (from the plugins' logs; 1 = never re-made): {made}.",
        sh("iperf3 --version | head -1"),
        vxlan_link
            .split_whitespace()
            .take(6)
            .collect::<Vec<_>>()
            .join(" "),
        container_links
            .lines()
            .filter(|l| !l.contains(" lo:"))
            .map(|l| l.split_whitespace().take(5).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    let mut rows = Vec::new();
    let med =
        |runs: &[Iperf], f: fn(&Iperf) -> f64| summarize(&runs.iter().map(f).collect::<Vec<_>>());
    let pct_of = |runs: &[Iperf], host: f64| {
        if runs.is_empty() {
            "–".to_string()
        } else {
            let g = med(runs, |r| r.gbits).p50;
            format!("{g:.2} ({:.1} %)", g / host * 100.0)
        }
    };
    for t in thr {
        let (h, c) = (med(&t.host, |r| r.gbits), med(&t.containers, |r| r.gbits));
        let ratio = c.p50 / h.p50;
        let target = if t.label.starts_with("direct") {
            0.95
        } else {
            0.70
        };
        let extra = |runs: &[Iperf]| {
            format!(
                "{:.0} / {:.0} % / {:.0} %",
                med(runs, |r| r.retransmits).p50,
                med(runs, |r| r.cpu_sender).p50,
                med(runs, |r| r.cpu_receiver).p50
            )
        };
        rows.push(vec![
            t.label.clone(),
            format!("{:.2} ({:.2}–{:.2})", h.p50, h.min, h.max),
            format!("{:.2} ({:.2}–{:.2})", c.p50, c.min, c.max),
            format!("{:.1} %", ratio * 100.0),
            format!("≥ {:.0} %", target * 100.0),
            goal(ratio >= target).into(),
            extra(&t.host),
            extra(&t.containers),
            pct_of(&t.tunnel, h.p50),
            pct_of(&t.control, h.p50),
        ]);
    }
    rows.push(vec![
        "IP-in-IP".into(),
        "–".into(),
        "–".into(),
        "–".into(),
        "≥ 70 %".into(),
        "not measured: no `ipip` module in this kernel".into(),
        "–".into(),
        "–".into(),
        "–".into(),
        "–".into(),
    ]);
    rep.table(
        &[
            "path",
            "host to host Gbit/s",
            "container to container Gbit/s",
            "ratio",
            "goal",
            "",
            "hosts: retransmits / CPU sender / receiver",
            "containers: retransmits / CPU sender / receiver",
            "hosts through the tunnel Gbit/s (of host to host)",
            "hosts through a plain kernel VXLAN, no plugin (of host to host)",
        ],
        &rows,
    );
    rep.h(4, "Goals (convergence)");
    rep.table(&["goal", "measured", ""], &goals);
}
