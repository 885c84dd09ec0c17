//! Reliability under faults, against real components (no Docker here; see
//! tests/docker/docker_reliability.rs for the Docker scenarios):
//!
//! - two plugin instances (in-process servers with different node names, each with its own
//!   etcd connection) allocating concurrently from one small pool: no address handed out twice,
//!   and borrowing from the other host's blocks happens;
//! - the embedded store survives a SIGKILL in the middle of allocations: every allocation the
//!   writer reported as committed is there after reopening;
//! - the start-up reconciliation removes exactly the stale records of its own node, and a
//!   `--ip` request takes over an address only from a dead owner.
//!
//! `CALICO_LONG_TESTS=1` runs longer versions (more allocations, more kills).

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calico_libnetwork::datastore::local::LocalStore;
use calico_libnetwork::datastore::{Datastore, KeyValue, Write};
use calico_libnetwork::driver::reconcile::ReconcileReport;
use calico_libnetwork::driver::{Driver, DriverSettings, EndpointSpec, NetworkSpec};
use calico_libnetwork::ipam::{default_pool, AutoAssign, Ipam};
use calico_libnetwork::model::IpFamily;
use common::etcd::Etcd;
use common::server::Server;
use serde_json::json;

fn long() -> bool {
    std::env::var("CALICO_LONG_TESTS").as_deref() == Ok("1")
}

/// Every allocated address in every block: address → (handle, block affinity).
async fn allocations(ipam: &Ipam) -> Vec<(IpAddr, String, Option<String>)> {
    let mut out = Vec::new();
    for (b, _) in ipam.list_blocks(None).await.unwrap() {
        for ip in b.allocated_ips() {
            let attr = b.attribute_of(&ip).unwrap();
            if attr.released_at.is_some() {
                continue;
            }
            out.push((
                ip,
                attr.handle().unwrap_or_default().to_string(),
                b.host_affinity().map(str::to_string),
            ));
        }
    }
    out
}

// ------------------------------------------------------------------ two hosts, one etcd

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_concurrent_allocations_never_duplicate() {
    let etcd = Etcd::start();
    // A /22 of /26 blocks: 16 blocks, 1,024 addresses. Each round allocates 1,000 of them,
    // 600 by one host and 400 by the other (alternating), concurrently: together they need
    // at least 17 blocks, so a host runs out of blocks to claim and borrows from the
    // other's; then everything is released for the next round. Two rounds: 2,000
    // allocations (six with CALICO_LONG_TESTS=1).
    let pool = "10.77.0.0/22";
    let rounds = if long() { 6 } else { 2 };
    let a = Server::start(Arc::new(etcd.store()), "rel-host-a", &[pool]).await;
    let b = Server::start(Arc::new(etcd.store()), "rel-host-b", &[pool]).await;
    let started = Instant::now();
    let mut total = 0usize;
    let mut borrowed_total = 0usize;
    for round in 0..rounds {
        let mut tasks = Vec::new();
        let (na, nb) = if round % 2 == 0 {
            (600, 400)
        } else {
            (400, 600)
        };
        for (node, srv, per_node) in [("rel-host-a", &a, na), ("rel-host-b", &b, nb)] {
            // 8 concurrent requesters per host, through the plugin socket.
            for w in 0..8 {
                let client = common::client::PluginClient::new(&srv.client.path);
                let n = per_node / 8 + usize::from(w < per_node % 8);
                tasks.push(tokio::spawn(async move {
                    let mut got = Vec::with_capacity(n);
                    for _ in 0..n {
                        let s = client.request_address("CalicoPoolIPv4").await;
                        let ip: IpAddr = s.trim_end_matches("/32").parse().unwrap();
                        got.push((ip, node));
                    }
                    got
                }));
            }
        }
        let mut seen: HashMap<IpAddr, &str> = HashMap::new();
        for t in tasks {
            for (ip, node) in t.await.unwrap() {
                if let Some(other) = seen.insert(ip, node) {
                    panic!("{ip} handed out twice (to {other} and {node})");
                }
            }
        }
        assert_eq!(seen.len(), na + nb);
        // The datastore agrees: each address allocated once, under one handle, and each
        // host's addresses recorded with its node.
        let ipam = Ipam::new(Arc::new(etcd.store()));
        let allocs = allocations(&ipam).await;
        assert_eq!(allocs.len(), na + nb, "allocations in etcd");
        let handles: HashSet<&String> = allocs.iter().map(|(_, h, _)| h).collect();
        assert_eq!(handles.len(), allocs.len(), "one handle per address");
        let mut borrowed = 0;
        for (ip, _, aff) in &allocs {
            let node = seen
                .get(ip)
                .unwrap_or_else(|| panic!("{ip} allocated by nobody"));
            if aff.as_deref() != Some(*node) {
                borrowed += 1;
            }
        }
        eprintln!(
            "round {round}: {} allocations by 2 hosts, no duplicate; {borrowed} from blocks \
             affine to the other host (or to none); {:?} so far",
            allocs.len(),
            started.elapsed()
        );
        total += allocs.len();
        borrowed_total += borrowed;
        // Release everything (concurrently from both hosts) for the next round.
        let ips: Vec<(IpAddr, &str)> = seen.into_iter().collect();
        let mut rel = Vec::new();
        for chunk in ips.chunks(ips.len().div_ceil(8)) {
            let chunk: Vec<(IpAddr, String)> =
                chunk.iter().map(|(ip, n)| (*ip, n.to_string())).collect();
            let pa = a.client.path.clone();
            let pb = b.client.path.clone();
            rel.push(tokio::spawn(async move {
                for (ip, n) in chunk {
                    let c = common::client::PluginClient::new(if n == "rel-host-a" {
                        &pa
                    } else {
                        &pb
                    });
                    c.ok(
                        "IpamDriver.ReleaseAddress",
                        json!({"PoolID": "CalicoPoolIPv4", "Address": ip.to_string()}),
                    )
                    .await;
                }
            }));
        }
        for r in rel {
            r.await.unwrap();
        }
        assert!(allocations(&ipam).await.is_empty(), "all released");
    }
    assert!(borrowed_total > 0, "the small pool made the hosts borrow");
    eprintln!(
        "{total} allocations checked in {:?}; {borrowed_total} borrowed",
        started.elapsed()
    );
    a.stop().await;
    b.stop().await;
}

// ------------------------------------------------------------------ embedded store, kill -9

const CHILD_ENV: &str = "CALICO_RELIABILITY_CHILD_STORE";

/// Not a test on its own (hence ignored): the writer the kill test starts, re-running this
/// test binary with `--ignored --exact reliability::child_store_writer`. Allocates one address at a time on the embedded
/// store and prints `COMMITTED <ip> <handle>` after each allocation returned, before
/// starting the next.
#[tokio::test]
#[ignore = "a helper process of local_store_survives_sigkill"]
async fn child_store_writer() {
    let path = std::env::var(CHILD_ENV)
        .expect("child_store_writer is started by local_store_survives_sigkill");
    use std::io::Write;
    let store: Arc<dyn Datastore> = Arc::new(LocalStore::open(&path).unwrap());
    let ipam = Ipam::new(store);
    let tag = std::process::id();
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        let handle = format!("libnetwork.kill{tag}x{i}");
        let got = ipam
            .auto_assign(&AutoAssign::new(1, IpFamily::V4, "rel-local", &handle))
            .await
            .unwrap();
        let ip = got.ips[0].addr();
        writeln!(out, "COMMITTED {ip} {handle}").unwrap();
        out.flush().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let store: Arc<dyn Datastore> = Arc::new(LocalStore::open(&path).unwrap());
        let ipam = Ipam::new(store);
        let net: ipnet::IpNet = "10.88.0.0/16".parse().unwrap();
        calico_libnetwork::driver::init::ensure_node(ipam.store().as_ref(), "rel-local")
            .await
            .unwrap();
        ipam.ensure_default_pools(&[default_pool(&net)])
            .await
            .unwrap();
    }
    let kills = if long() { 12 } else { 4 };
    let exe = std::env::current_exe().unwrap();
    // The test's path in this binary (`reliability::child_store_writer`): libtest names
    // tests by their module path without the crate.
    let writer = format!(
        "{}::child_store_writer",
        module_path!().split_once("::").unwrap().1
    );
    let mut committed: Vec<(IpAddr, String)> = Vec::new();
    let started = Instant::now();
    for k in 0..kills {
        // Kill after a varying number of commits, so the kill lands at varying points of
        // a write (the next allocation is always under way when the signal comes).
        let stop_after = 40 + 37 * k;
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                &writer,
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut n = 0;
        // Every line up to EOF counts: the writer goes on between the line that triggers
        // the kill and the signal's arrival, and what it reported meanwhile is committed too.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Some(rest) = line.strip_prefix("COMMITTED ") else {
                continue;
            };
            let (ip, handle) = rest.split_once(' ').unwrap();
            committed.push((ip.parse().unwrap(), handle.to_string()));
            n += 1;
            if n == stop_after {
                crate::common::host::signal(&child, libc::SIGKILL);
            }
        }
        let status = child.wait().unwrap();
        assert!(
            n >= stop_after,
            "writer {k} stopped by itself after {n} commits ({status})"
        );
        // Reopen (recovery after the unclean stop) and check everything reported so far.
        let store: Arc<dyn Datastore> = Arc::new(
            LocalStore::open(&path).unwrap_or_else(|e| panic!("reopen after kill {k}: {e}")),
        );
        let ipam = Ipam::new(store);
        let allocs = allocations(&ipam).await;
        let by_ip: HashMap<IpAddr, String> =
            allocs.iter().map(|(ip, h, _)| (*ip, h.clone())).collect();
        assert_eq!(by_ip.len(), allocs.len(), "no address twice after kill {k}");
        for (ip, handle) in &committed {
            assert_eq!(
                by_ip.get(ip),
                Some(handle),
                "committed {ip} ({handle}) lost after kill {k}"
            );
            assert_eq!(ipam.ips_by_handle(handle).await.unwrap(), vec![*ip]);
        }
        // At most the one allocation under way when killed may exist beyond those reported.
        assert!(
            allocs.len() <= committed.len() + k as usize + 1,
            "{} allocations, {} reported",
            allocs.len(),
            committed.len()
        );
    }
    eprintln!(
        "{kills} SIGKILLs during allocations; {} committed allocations all present after each \
         reopen ({:?})",
        committed.len(),
        started.elapsed()
    );
}

// ------------------------------------------------------------------ reconciliation

fn endpoint_id(tag: &str) -> String {
    // 64 hex characters, like Docker's (the tag hex-encoded), distinct per test run.
    let r: u64 = rand_u64();
    let tag: String = tag.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{tag}{r:016x}{}", "0".repeat(64 - tag.len() - 16))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// For each `name: body`, `#[test] fn name()` running `body` in a private network namespace
/// ([`in_private_netns`]).
macro_rules! netns_tests {
    ($($name:ident: $body:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                in_private_netns(stringify!($name), $body);
            }
        )*
    };
}

// The tests of this module that need a namespace of their own; each body is below.
netns_tests! {
    reconcile_removes_only_own_stale_records: reconcile_body,
    requested_address_taken_over_only_from_dead_owner: takeover_body,
    an_address_given_out_again_is_never_released_by_reconciliation: reuse_body,
    a_create_endpoint_cut_by_the_deadline_leaves_no_record: deadline_body,
    damaged_records_give_errors_not_panics: damaged_body,
    two_machines_under_one_node_name_delete_nothing_of_each_other: twins_body,
    an_address_docker_gave_to_another_drivers_container_stays: other_driver_body,
    an_endpoint_deleted_during_the_restart_load_stays_deleted: deleted_during_load_body,
    a_join_during_the_restart_load_keeps_a_deleted_endpoint_deleted: join_during_load_body,
    a_profile_move_during_a_reconciliation_pass_is_not_undone: profile_move_during_reconcile_body,
    a_slow_pool_list_never_takes_a_newer_pools_nat_away: slow_pool_list_body,
    a_join_right_after_a_restart_shares_its_containers_networks: join_after_restart_body,
    a_published_port_is_judged_against_the_endpoints_from_before_a_restart: port_after_restart_body,
}

/// Runs `body` on a thread of its own in a fresh network namespace (with etcd started from
/// it, so inside it too): the reconciliation lists and deletes `cali*` veths, and must see
/// only this test's, never the host's.
fn in_private_netns<Fut: std::future::Future<Output = ()> + 'static>(
    test: &str,
    body: fn() -> Fut,
) {
    if !common::require_root(test) {
        return;
    }
    common::netns::fresh_async(move || {
        assert!(ip_link(&["set", "lo", "up"]));
        body()
    });
}

fn ip_link(args: &[&str]) -> bool {
    Command::new("ip")
        .args(["link"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn driver(store: Arc<dyn Datastore>, node: &str, grace: Duration) -> Arc<Driver> {
    let mut s = DriverSettings::new(node);
    s.reconcile_grace = grace;
    Arc::new(Driver::new(store, s))
}

/// A fresh etcd, and on it node `node`'s driver (reconciliation grace `grace`), prepared
/// with the default pool `pool`.
async fn node_on_etcd(
    node: &str,
    grace: Duration,
    pool: &str,
) -> (Etcd, Arc<dyn Datastore>, Arc<Driver>) {
    let etcd = Etcd::start();
    let store: Arc<dyn Datastore> = Arc::new(etcd.store());
    let me = driver(store.clone(), node, grace);
    me.init(&[default_pool(&pool.parse().unwrap())])
        .await
        .unwrap();
    (etcd, store, me)
}

/// A calico network `id` on `d` (its addresses from the default IPv4 pool), as Docker makes it.
async fn network(d: &Driver, id: &str) {
    d.create_network(NetworkSpec {
        network_id: id.to_string(),
        ipv4_data: vec![("CalicoPoolIPv4".into(), "0.0.0.0/0".into())],
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn request(d: &Driver, ip: Option<IpAddr>) -> calico_libnetwork::Result<IpAddr> {
    d.request_address("CalicoPoolIPv4", ip, &BTreeMap::new())
        .await
        .map(|n| n.addr())
}

async fn endpoint(d: &Arc<Driver>, net: &str, ep: &str, ip: IpAddr) {
    d.create_endpoint(EndpointSpec {
        network_id: net.to_string(),
        endpoint_id: ep.to_string(),
        ipv4: Some(ipnet::IpNet::new(ip, 32).unwrap()),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// A veth pair `name`/`peer` in this namespace: whether `ip link add` succeeded.
fn add_veth(name: &str, peer: &str) -> bool {
    ip_link(&["add", name, "type", "veth", "peer", "name", peer])
}

/// An endpoint `endpoint_id(tag)` on `net` of `d` with an address `d` gives out: its ID and
/// address.
async fn new_endpoint(d: &Arc<Driver>, net: &str, tag: &str) -> (String, IpAddr) {
    let ep = endpoint_id(tag);
    let ip = request(d, None).await.unwrap();
    endpoint(d, net, &ep, ip).await;
    (ep, ip)
}

/// `d`'s reconciliation with Docker knowing the one endpoint `known`.
async fn reconcile_knowing(d: &Driver, known: &str) -> ReconcileReport {
    d.reconcile_with(Some(&HashSet::from([known.to_string()])))
        .await
        .unwrap()
}

async fn reconcile_body() {
    let etcd = Etcd::start();
    let store: Arc<dyn Datastore> = Arc::new(etcd.store());
    let grace = Duration::from_millis(1500);
    let me = driver(store.clone(), "rel-rec-me", grace);
    let other = driver(store.clone(), "rel-rec-other", grace);
    me.init(&[default_pool(&"10.66.0.0/24".parse().unwrap())])
        .await
        .unwrap();
    other.init(&[]).await.unwrap();
    let net = "ab".repeat(32);
    for d in [&me, &other] {
        network(d, &net).await;
    }
    // Of this node: a leaked address (no endpoint), an endpoint without veth that Docker
    // does not know, an endpoint Docker knows, and one with a live veth.
    let leaked = request(&me, None).await.unwrap();
    let (dead_ep, dead_ip) = new_endpoint(&me, &net, "dead").await;
    let (known_ep, known_ip) = new_endpoint(&me, &net, "known").await;
    let (live_ep, live_ip) = new_endpoint(&me, &net, "live").await;
    let live_veth = format!("cali{}", &live_ep[..11]);
    let _ = ip_link(&["del", &live_veth]);
    assert!(add_veth(&live_veth, "relpeer0"));
    // A veth of ours no endpoint names (a crashed Join after DeleteEndpoint), marked as the
    // plugin marks its own ...
    let orphan_veth = format!("cali{}", &endpoint_id("orph")[..11]);
    assert!(add_veth(&orphan_veth, "relpeer1"));
    assert!(ip_link(&[
        "set",
        &orphan_veth,
        "alias",
        "calico-libnetwork"
    ]));
    // ... and another program's (Calico CNI names pod veths the same way): never ours.
    let foreign_veth = format!("cali{}", &endpoint_id("frgn")[..11]);
    assert!(add_veth(&foreign_veth, "relpeer3"));
    // Of the other node: a leaked address and a dead endpoint; never touched by us.
    let other_leaked = request(&other, None).await.unwrap();
    let (_, other_ip) = new_endpoint(&other, &net, "othr").await;

    // Young records: nothing of any endpoint or allocation goes, only the orphan veth.
    let r = reconcile_knowing(&me, &known_ep).await;
    assert_eq!(r.veths_removed, vec![orphan_veth.clone()], "{r:?}");
    assert!(
        r.endpoints_removed.is_empty() && r.addresses_released.is_empty(),
        "{r:?}"
    );

    tokio::time::sleep(grace + Duration::from_millis(200)).await;
    // Without Docker's answer: endpoints stay; the leaked allocation goes.
    let r = me.reconcile_with(None).await.unwrap();
    assert!(r.endpoints_removed.is_empty(), "{r:?}");
    assert_eq!(r.addresses_released, vec![leaked], "{r:?}");

    // With it: the dead endpoint and its address go; the known and live ones stay.
    let r = reconcile_knowing(&me, &known_ep).await;
    assert_eq!(r.endpoints_removed.len(), 1, "{r:?}");
    assert!(r.endpoints_removed[0].ends_with(&dead_ep), "{r:?}");
    assert_eq!(r.addresses_released, vec![dead_ip], "{r:?}");
    let ipam = Ipam::new(store.clone());
    let left: HashSet<IpAddr> = allocations(&ipam).await.iter().map(|a| a.0).collect();
    assert_eq!(
        left,
        HashSet::from([known_ip, live_ip, other_leaked, other_ip]),
        "what remains allocated"
    );
    // Idempotent.
    let r = reconcile_knowing(&me, &known_ep).await;
    assert!(
        r.veths_removed.is_empty()
            && r.endpoints_removed.is_empty()
            && r.addresses_released.is_empty(),
        "second run: {r:?}"
    );
    // (`ip link show` runs in this thread's namespace; /sys shows the host's.)
    assert!(
        ip_link(&["show", &foreign_veth]),
        "another program's veth is left alone"
    );
    ip_link(&["del", &live_veth]);
    ip_link(&["del", &orphan_veth]);
    ip_link(&["del", &foreign_veth]);
}

async fn takeover_body() {
    let grace = Duration::from_millis(1500);
    let (_etcd, store, me) = node_on_etcd("rel-ip-me", grace, "10.65.0.0/24").await;
    let net = "cd".repeat(32);
    network(&me, &net).await;
    let ip: IpAddr = "10.65.0.7".parse().unwrap();
    let ip2: IpAddr = "10.65.0.8".parse().unwrap();
    // A container with --ip 10.65.0.7 that ran (endpoint, live veth) and one whose request
    // for 10.65.0.8 is in flight (allocated, no endpoint yet).
    assert_eq!(request(&me, Some(ip)).await.unwrap(), ip);
    let ep1 = endpoint_id("run1");
    endpoint(&me, &net, &ep1, ip).await;
    let veth1 = format!("cali{}", &ep1[..11]);
    let _ = ip_link(&["del", &veth1]);
    assert!(add_veth(&veth1, "relpeer2"));
    assert_eq!(request(&me, Some(ip2)).await.unwrap(), ip2);
    // Young: both refused.
    for a in [ip, ip2] {
        let e = request(&me, Some(a)).await.unwrap_err().to_string();
        assert!(e.contains("already in use"), "{e}");
    }
    tokio::time::sleep(grace + Duration::from_millis(200)).await;
    // Old, and the container alive (its veth exists): still refused.
    let e = request(&me, Some(ip)).await.unwrap_err().to_string();
    assert!(e.contains("already in use"), "{e}");
    // The container died (dockerd crashed: its netns and veth went, nothing was released):
    // Docker restarting it asks for the same --ip, and gets it.
    assert!(ip_link(&["del", &veth1]));
    assert_eq!(request(&me, Some(ip)).await.unwrap(), ip);
    // The old endpoint went with it; one allocation, under the new handle.
    let ipam = Ipam::new(store.clone());
    let allocs = allocations(&ipam).await;
    assert_eq!(allocs.iter().filter(|a| a.0 == ip).count(), 1);
    let weps = store
        .list("/calico/resources/v3/projectcalico.org/workloadendpoints/")
        .await
        .unwrap();
    assert!(weps.is_empty(), "stale endpoint removed: {weps:?}");
    // An old allocation without endpoint (a release that never came) is taken over too.
    assert_eq!(request(&me, Some(ip2)).await.unwrap(), ip2);
    // A fresh allocation (the one just made) is not.
    let e = request(&me, Some(ip)).await.unwrap_err().to_string();
    assert!(e.contains("already in use"), "{e}");
    // Another node's address never is, however old.
    let other = driver(store.clone(), "rel-ip-other", grace);
    let ip3: IpAddr = "10.65.0.9".parse().unwrap();
    assert_eq!(request(&other, Some(ip3)).await.unwrap(), ip3);
    tokio::time::sleep(grace + Duration::from_millis(200)).await;
    let e = request(&me, Some(ip3)).await.unwrap_err().to_string();
    assert!(e.contains("already in use"), "{e}");
    assert_eq!(allocations(&ipam).await.len(), 3);
}

/// A DeleteEndpoint that etcd's outage makes fail; Docker forgets the endpoint and releases
/// its address anyway, and the address goes to a new container (`--ip`). Reconciliation then
/// removes the dead endpoint's record, but never the new owner's allocation (before, it
/// released whatever allocation of ours held the dead record's address).
async fn reuse_body() {
    let mut etcd = Etcd::start();
    let store: Arc<dyn Datastore> = Arc::new(etcd.store_with_timeout(Duration::from_secs(1)));
    let grace = Duration::from_millis(1500);
    let me = driver(store.clone(), "rel-reuse", grace);
    me.init(&[default_pool(&"10.69.0.0/24".parse().unwrap())])
        .await
        .unwrap();
    let net = "cd".repeat(32);
    network(&me, &net).await;
    let old_ep = endpoint_id("old");
    let ip = request(&me, None).await.unwrap();
    endpoint(&me, &net, &old_ep, ip).await;

    // DeleteEndpoint during an outage fails; Docker releases the address all the same.
    etcd.stop();
    let err = me.delete_endpoint(&net, &old_ep).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    etcd.restart();
    me.ipam_driver()
        .release_address("CalicoPoolIPv4", ip)
        .await
        .unwrap();
    // The address goes to a new container.
    let new_ep = endpoint_id("new");
    assert_eq!(request(&me, Some(ip)).await.unwrap(), ip);
    endpoint(&me, &net, &new_ep, ip).await;
    let ipam = Ipam::new(store.clone());
    let owner = |allocs: Vec<(IpAddr, String, Option<String>)>| {
        allocs.into_iter().find(|a| a.0 == ip).map(|a| a.1)
    };
    let new_handle = owner(allocations(&ipam).await).expect("allocated to the new owner");

    tokio::time::sleep(grace + Duration::from_millis(200)).await;
    let r = reconcile_knowing(&me, &new_ep).await;
    // The dead endpoint's record goes ...
    assert_eq!(r.endpoints_removed.len(), 1, "{r:?}");
    assert!(r.endpoints_removed[0].ends_with(&old_ep), "{r:?}");
    // ... and the address stays with its new owner.
    assert!(r.addresses_released.is_empty(), "{r:?}");
    assert_eq!(
        owner(allocations(&ipam).await).as_deref(),
        Some(new_handle.as_str()),
        "the new container keeps its address"
    );
    let weps: Vec<String> = store
        .list("/calico/resources/v3/projectcalico.org/workloadendpoints/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(weps.len(), 1, "{weps:?}");
    assert!(weps[0].ends_with(&new_ep), "{weps:?}");
}

/// etcd, with reads made slow once a WorkloadEndpoint has been written: the latency of a
/// busy cluster, at the one point where it matters here (between CreateEndpoint's write and
/// its re-read of the network record). Everything still goes to the real etcd.
struct SlowReadsAfterWrite {
    inner: Arc<dyn Datastore>,
    written: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Datastore for SlowReadsAfterWrite {
    async fn get(&self, key: &str) -> calico_libnetwork::Result<Option<KeyValue>> {
        if self.written.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> calico_libnetwork::Result<Vec<KeyValue>> {
        self.inner.list(prefix).await
    }
    async fn txn(&self, writes: Vec<Write>) -> calico_libnetwork::Result<i64> {
        let wep = writes
            .iter()
            .any(|w| w.key.contains("/workloadendpoints/") && w.value.is_some());
        let r = self.inner.txn(writes).await;
        if wep {
            self.written
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        r
    }
    fn stats(&self) -> &calico_libnetwork::datastore::Stats {
        self.inner.stats()
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

/// The request deadline answers Docker after CreateEndpoint's write landed but before the
/// call was done (a slow read after it): Docker takes the call as failed and releases the
/// address, so the write is undone (before, the record stayed until reconciliation, and its
/// address could be given out again meanwhile).
async fn deadline_body() {
    let etcd = Etcd::start();
    let real: Arc<dyn Datastore> = Arc::new(etcd.store());
    let store: Arc<dyn Datastore> = Arc::new(SlowReadsAfterWrite {
        inner: real.clone(),
        written: Default::default(),
    });
    let me = driver(store.clone(), "rel-deadline", Duration::from_secs(60));
    me.init(&[default_pool(&"10.71.0.0/24".parse().unwrap())])
        .await
        .unwrap();
    let net = "ef".repeat(32);
    network(&me, &net).await;
    let ip = request(&me, None).await.unwrap();
    let ep = endpoint_id("cut");
    // The server's deadline, as it wraps every request.
    let cut = tokio::time::timeout(
        Duration::from_millis(500),
        me.create_endpoint(EndpointSpec {
            network_id: net.clone(),
            endpoint_id: ep.clone(),
            ipv4: Some(ipnet::IpNet::new(ip, 32).unwrap()),
            ..Default::default()
        }),
    )
    .await;
    assert!(cut.is_err(), "the deadline answered first: {cut:?}");
    let prefix = "/calico/resources/v3/projectcalico.org/workloadendpoints/";
    let wep_keys = || async {
        real.list(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|kv| kv.key)
            .collect::<Vec<String>>()
    };
    assert!(
        wep_keys().await.iter().any(|k| k.ends_with(&ep)),
        "the write had landed when the deadline cut the call"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = wep_keys().await;
        if !keys.iter().any(|k| k.ends_with(&ep)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the record of a CreateEndpoint Docker saw fail is still there: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A block whose allocations do not match its size, a pool with an impossible block size and
/// an endpoint record whose ID is not ASCII (each written by hand or by a buggy tool): the
/// requests that meet them get errors naming the key, the others work, and reconciliation
/// runs through (before: panics, and the reconciliation loop gone for good).
async fn damaged_body() {
    let (_etcd, store, me) =
        node_on_etcd("rel-damaged", Duration::from_millis(500), "10.72.0.0/16").await;
    let bad_block = "/calico/ipam/v2/assignment/ipv4/block/10.72.200.0-26";
    for (key, record) in [
        (
            bad_block,
            json!({"cidr": "10.72.200.0/26", "affinity": "host:rel-damaged", "allocations": [null],
                   "unallocated": [], "attributes": [], "strictAffinity": false}),
        ),
        (
            "/calico/resources/v3/projectcalico.org/ippools/broken",
            json!({"kind": "IPPool", "apiVersion": "projectcalico.org/v3",
                   "metadata": {"name": "broken"},
                   "spec": {"cidr": "10.73.0.0/16", "blockSize": 40}}),
        ),
        (
            "/calico/resources/v3/projectcalico.org/workloadendpoints/libnetwork/rel--damaged-libnetwork-libnetwork-x",
            json!({"kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
                   "metadata": {"name": "rel--damaged-libnetwork-libnetwork-x", "namespace": "libnetwork",
                                "creationTimestamp": "2020-01-01T00:00:00Z"},
                   "spec": {"node": "rel-damaged", "orchestrator": "libnetwork", "endpoint": "ééééééééééééé",
                            "interfaceName": "caliééééé", "ipNetworks": ["10.72.0.99/32"]}}),
        ),
    ] {
        store
            .put(key, record.to_string().into_bytes())
            .await
            .unwrap();
    }
    // An address in the damaged block: an error that names it.
    let err = request(&me, Some("10.72.200.5".parse().unwrap()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(bad_block), "{err}");
    // Any address: still served (the damaged block and pool left out).
    let ip = request(&me, None).await.unwrap();
    assert!(ip.to_string().starts_with("10.72."), "{ip}");
    // Reconciliation runs through them.
    tokio::time::sleep(Duration::from_millis(600)).await;
    me.reconcile_with(Some(&HashSet::new())).await.unwrap();
    me.reconcile_with(None).await.unwrap();
}

/// Cloned VMs keep one hostname, so two machines run under one node name: each one's
/// endpoints look stale to the other (its Docker does not know them). The Node records the
/// first machine's ID; the second sees another ID there and its reconciliation deletes
/// nothing (before, it removed the first machine's endpoints and released their addresses).
async fn twins_body() {
    let etcd = Etcd::start();
    let store: Arc<dyn Datastore> = Arc::new(etcd.store());
    let grace = Duration::from_millis(300);
    let twin = |id: &str| {
        let mut s = DriverSettings::new("rel-twin");
        s.reconcile_grace = grace;
        s.machine_id = Some(id.to_string());
        Arc::new(Driver::new(store.clone(), s))
    };
    let first = twin("0123456789abcdef0123456789abcdef");
    first
        .init(&[default_pool(&"10.74.0.0/24".parse().unwrap())])
        .await
        .unwrap();
    let net = "ab".repeat(32);
    network(&first, &net).await;
    let ip = request(&first, None).await.unwrap();
    endpoint(&first, &net, &endpoint_id("twin"), ip).await;
    let node = store
        .get("/calico/resources/v3/projectcalico.org/nodes/rel-twin")
        .await
        .unwrap()
        .unwrap();
    let node: serde_json::Value = serde_json::from_slice(&node.value).unwrap();
    assert_eq!(
        node["metadata"]["annotations"]["libnetwork.projectcalico.org/machine-id"],
        "0123456789abcdef0123456789abcdef"
    );

    let second = twin("fedcba9876543210fedcba9876543210");
    second.init(&[]).await.unwrap();
    tokio::time::sleep(grace + Duration::from_millis(200)).await;
    let err = second
        .reconcile_with(Some(&HashSet::new()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("another machine"), "{err}");
    let weps = || async {
        store
            .list("/calico/resources/v3/projectcalico.org/workloadendpoints/")
            .await
            .unwrap()
            .len()
    };
    assert_eq!(weps().await, 1, "the first machine's endpoint stays");
    // Positive control: for its own machine the same record is stale (Docker does not know
    // it here, no veth), and goes.
    let r = first.reconcile_with(Some(&HashSet::new())).await.unwrap();
    assert_eq!(r.endpoints_removed.len(), 1, "{r:?}");
    assert_eq!(weps().await, 0);
}

/// `docker network create -d macvlan --ipam-driver calico`: Docker takes addresses from
/// Calico IPAM for containers that never get a WorkloadEndpoint (another driver serves the
/// network). Reconciliation, which releases allocations of ours in no WorkloadEndpoint, keeps
/// those Docker says it has given out; an allocation Docker knows nothing of still goes
/// (a RequestAddress whose CreateEndpoint never came).
async fn other_driver_body() {
    let grace = Duration::from_millis(300);
    let (_etcd, store, me) = node_on_etcd("rel-macvlan", grace, "10.75.0.0/24").await;
    let macvlan_ip = request(&me, None).await.unwrap();
    let leaked_ip = request(&me, None).await.unwrap();
    tokio::time::sleep(grace + Duration::from_millis(200)).await;
    let r = me
        .reconcile_with_view(Some(&HashSet::new()), &HashSet::from([macvlan_ip]))
        .await
        .unwrap();
    assert_eq!(r.addresses_released, vec![leaked_ip], "{r:?}");
    let ipam = Ipam::new(store.clone());
    let left: Vec<IpAddr> = allocations(&ipam).await.iter().map(|a| a.0).collect();
    assert_eq!(
        left,
        vec![macvlan_ip],
        "the macvlan container keeps its address"
    );
}

/// etcd, with one listing of a kind of resource held back (a busy cluster): after
/// [`HeldList::hold`], the next list under a prefix containing `kind` is taken at once and
/// answered only once [`HeldList::release`] is called, so a change made meanwhile is not in
/// it.
#[derive(Default)]
struct HeldList {
    inner: Option<Arc<dyn Datastore>>,
    kind: &'static str,
    hold: std::sync::atomic::AtomicBool,
    listing: std::sync::atomic::AtomicBool,
    released: tokio::sync::Notify,
}

impl HeldList {
    /// Holds WorkloadEndpoint lists.
    fn over(inner: Arc<dyn Datastore>) -> Arc<Self> {
        Self::of(inner, "/workloadendpoints/")
    }

    fn of(inner: Arc<dyn Datastore>, kind: &'static str) -> Arc<Self> {
        Arc::new(HeldList {
            inner: Some(inner),
            kind,
            ..Default::default()
        })
    }

    fn inner(&self) -> &dyn Datastore {
        self.inner.as_deref().expect("a store under the held list")
    }

    fn hold(&self) {
        self.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits (10 s at most) until the held list has been taken.
    async fn wait_listing(&self, who: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.listing.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "{who} never listed the endpoints"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn release(&self) {
        self.released.notify_one();
    }
}

#[async_trait::async_trait]
impl Datastore for HeldList {
    async fn get(&self, key: &str) -> calico_libnetwork::Result<Option<KeyValue>> {
        self.inner().get(key).await
    }
    async fn list(&self, prefix: &str) -> calico_libnetwork::Result<Vec<KeyValue>> {
        let r = self.inner().list(prefix).await;
        if prefix.contains(self.kind) && self.hold.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.listing
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.released.notified().await;
        }
        r
    }
    async fn txn(&self, writes: Vec<Write>) -> calico_libnetwork::Result<i64> {
        self.inner().txn(writes).await
    }
    fn stats(&self) -> &calico_libnetwork::datastore::Stats {
        self.inner().stats()
    }
    fn kind(&self) -> &'static str {
        self.inner().kind()
    }
}

/// A restarted plugin loads its endpoints' rules from etcd in the background; Docker's
/// DeleteEndpoint of one of them comes while that load's list is on its way. The endpoint
/// stays deleted: the load does not bring its rules back, and a stop with no endpoint left
/// removes every rule (before, the load merged the listed endpoint back in and the stop kept
/// the rules, for an endpoint that no longer existed: the suite's
/// `a_plugin_stopped_with_no_endpoint_left_leaves_no_firewall_rule` failed that way under
/// load).
async fn deleted_during_load_body() {
    deleted_during_load(false).await
}

/// The same, with another container joining before the load's list comes back: its Join
/// loads the endpoints itself (the deleted one is not among them) and applies; the
/// keeper's load, ending after it, must not bring the deleted endpoint back (its address,
/// given to a container of another network, would pass that network's profile rules).
async fn join_during_load_body() {
    deleted_during_load(true).await
}

async fn deleted_during_load(join_first: bool) {
    let etcd = Etcd::start();
    let real: Arc<dyn Datastore> = Arc::new(etcd.store());
    let before = driver(real.clone(), "rel-load", Duration::from_secs(60));
    before
        .init(&[default_pool(&"10.74.0.0/24".parse().unwrap())])
        .await
        .unwrap();
    let net = "ab".repeat(32);
    network(&before, &net).await;
    let (ep, _) = new_endpoint(&before, &net, "load").await;
    drop(before);

    let store = HeldList::over(real.clone());
    let settings = standalone("rel-load");
    let me = Arc::new(Driver::new(store.clone(), settings));
    me.init(&[]).await.unwrap();
    store.hold();
    me.keep_rules_in_background();
    store.wait_listing("the rules keeper").await;
    // The load's list holds the endpoint; Docker deletes it before the list returns.
    me.delete_endpoint(&net, &ep).await.unwrap();
    let other = if join_first {
        let (f, _) = new_endpoint(&me, &net, "loadf").await;
        me.join(&net, &f, "/var/run/docker/netns/loadf")
            .await
            .unwrap();
        Some(f)
    } else {
        None
    };
    store.release();
    // The load ends milliseconds after its list is answered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(f) = other {
        me.delete_endpoint(&net, &f).await.unwrap();
    }
    let removed = me.remove_rules_if_idle().await.unwrap();
    assert!(
        removed,
        "the stop kept the rules: the deleted endpoint came back with the load"
    );
    let left = iptables_rules("filter");
    assert!(!left.contains("CLN-"), "rules left:\n{left}");
}

/// A Docker API that knows one network, `id`, under the name `late` once `named` is set
/// (until then it answers 404, as dockerd does for a network it is still creating), and
/// nothing else.
async fn fake_docker(
    sock: &std::path::Path,
    id: String,
    named: Arc<std::sync::atomic::AtomicBool>,
) {
    let listener = tokio::net::UnixListener::bind(sock).unwrap();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let (id, named) = (id.clone(), named.clone());
        async move {
            let path = uri.path();
            let not_found = (
                axum::http::StatusCode::NOT_FOUND,
                axum::Json(json!({"message": format!("no such object: {path}")})),
            );
            if path.ends_with("/version") {
                return (
                    axum::http::StatusCode::OK,
                    axum::Json(json!({"ApiVersion": "1.41", "MinAPIVersion": "1.12", "Version": "20.10.24"})),
                );
            }
            if path.ends_with(&format!("/networks/{id}"))
                && named.load(std::sync::atomic::Ordering::SeqCst)
            {
                return (
                    axum::http::StatusCode::OK,
                    axum::Json(json!({"Name": "late", "Id": id, "Driver": "calico"})),
                );
            }
            not_found
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

/// The chain that endpoint `ep`'s inbound rules jump to (its profile's), from `iptables -S`.
fn profile_chain_of(ep: &str) -> Option<String> {
    let iface = calico_libnetwork::model::libnetwork::host_veth_name(ep);
    let from = format!("-A CLN-TW-{} -j ", iface.trim_start_matches("cali"));
    iptables_rules("filter")
        .lines()
        .find_map(|l| l.strip_prefix(&from).filter(|c| c.starts_with("CLN-PRO-")))
        .map(str::to_string)
}

/// Docker tells the plugin a network's name while a reconciliation pass's list of
/// WorkloadEndpoints is on its way: the network's endpoints move to the named profile (in
/// etcd and in the firewall), and the pass's profile refresh, made from the list taken
/// before the move, does not move the firewall back. Before, it did: the running container
/// stayed cut off from the network's new containers until the next pass (the Docker suite's
/// `standalone_isolation_nat_ports_restart_and_felix_mode` failed that way in CI).
async fn profile_move_during_reconcile_body() {
    let etcd = Etcd::start();
    let store = HeldList::over(Arc::new(etcd.store()));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let net = "cd".repeat(32);
    let named = Arc::new(std::sync::atomic::AtomicBool::new(false));
    fake_docker(&sock, net.clone(), named.clone()).await;
    let mut settings = standalone("rel-move");
    settings.docker_host = Some(format!("unix://{}", sock.display()));
    // Nothing is old enough for the pass to clean up: it only refreshes profiles.
    settings.reconcile_grace = Duration::from_secs(600);
    let me = Arc::new(Driver::new(store.clone(), settings));
    me.init(&[default_pool(&"10.75.0.0/24".parse().unwrap())])
        .await
        .unwrap();
    // Docker does not know the name yet: the endpoint joins on the fallback profile.
    network(&me, &net).await;
    let (a, _) = new_endpoint(&me, &net, "mova").await;
    me.join(&net, &a, "/var/run/docker/netns/mova")
        .await
        .unwrap();
    let fallback = calico_libnetwork::model::libnetwork::fallback_profile(&net);
    let named_profile = calico_libnetwork::model::libnetwork::named_profile("late");

    store.hold();
    let pass = {
        let (me, a) = (me.clone(), a.clone());
        tokio::spawn(async move { me.reconcile_with(Some(&HashSet::from([a]))).await })
    };
    store.wait_listing("the reconciliation pass").await;
    // The pass holds the list from before the move; Docker now answers with the name.
    named.store(true, std::sync::atomic::Ordering::SeqCst);
    let profile_key = format!("/calico/resources/v3/projectcalico.org/profiles/{fallback}");
    let deadline = Instant::now() + Duration::from_secs(20);
    // The fallback profile goes once the endpoints (and the firewall) have moved.
    while store.get(&profile_key).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the network's name was never learned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.release();
    pass.await.unwrap().unwrap();

    // A container started now is on the named profile; the first one must be with it.
    let (b, _) = new_endpoint(&me, &net, "movb").await;
    me.join(&net, &b, "/var/run/docker/netns/movb")
        .await
        .unwrap();
    let (chain_a, chain_b) = (profile_chain_of(&a), profile_chain_of(&b));
    assert!(chain_b.is_some(), "no profile rule for the second endpoint");
    assert_eq!(
        chain_a, chain_b,
        "the first endpoint's rules went back to profile {fallback} (the second's is {named_profile})"
    );
}

/// The firewall keeper's first apply lists the IP pools slowly (held); meanwhile a pool is
/// created and a container joins, whose apply writes the new pool's NAT-outgoing rule. The
/// slow apply, ending last, must not write its older pool list over it (before, it did: the
/// new pool's containers lost their way out until the next endpoint change).
async fn slow_pool_list_body() {
    let etcd = Etcd::start();
    let real: Arc<dyn Datastore> = Arc::new(etcd.store());
    let store = HeldList::of(real.clone(), "/ippools/");
    let settings = standalone("rel-pools");
    let me = Arc::new(Driver::new(store.clone(), settings));
    me.init(&[default_pool(&"10.76.0.0/24".parse().unwrap())])
        .await
        .unwrap();
    let net = "ef".repeat(32);
    network(&me, &net).await;
    let (a, _) = new_endpoint(&me, &net, "poola").await;
    store.hold();
    me.keep_rules_in_background();
    store.wait_listing("the rules keeper's apply").await;
    // A pool of its own for a new network (NAT outgoing, as `docker network create
    // --subnet` makes them), then a container joins.
    let spec = default_pool(&"10.77.0.0/24".parse().unwrap()).spec;
    let pool = calico_libnetwork::model::IpPool::new("rel-pools-new", spec);
    Ipam::new(real.clone()).create_pool(pool).await.unwrap();
    me.join(&net, &a, "/var/run/docker/netns/poola")
        .await
        .unwrap();
    let nat = |pool: &str| {
        let out = iptables_rules("nat");
        (
            out.lines().any(|l| l.contains(&format!("-s {pool} -j "))),
            out,
        )
    };
    let (written, rules) = nat("10.77.0.0/24");
    assert!(
        written,
        "the Join's apply wrote no NAT rule for the new pool:\n{rules}"
    );
    store.release();
    // The held apply ends milliseconds after its list is answered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (kept, rules) = nat("10.77.0.0/24");
    assert!(
        kept,
        "the slow apply took the new pool's NAT rule away:\n{rules}"
    );
}

/// The plugin restarts between a container's CreateEndpoints and its Joins (one container
/// on two networks): the first Join comes before the endpoints are known. Its sandbox is
/// still recorded, so the container's address on the first network is a member of the
/// second network's profile, as it is without the restart (before, the first Join's
/// sandbox was lost until the next restart).
async fn join_after_restart_body() {
    let etcd = Etcd::start();
    let real: Arc<dyn Datastore> = Arc::new(etcd.store());
    let (net_a, net_b) = ("a1".repeat(32), "b1".repeat(32));
    let (a, b) = (endpoint_id("sba"), endpoint_id("sbb"));
    // Created by a plugin that then stopped; the new one has not loaded its endpoints (no
    // keeper started) when the Joins come.
    let before = driver(real.clone(), "rel-sandbox", Duration::from_secs(600));
    before
        .init(&[default_pool(&"10.78.0.0/24".parse().unwrap())])
        .await
        .unwrap();
    network(&before, &net_a).await;
    network(&before, &net_b).await;
    let ip_a = request(&before, None).await.unwrap();
    endpoint(&before, &net_a, &a, ip_a).await;
    let ip_b = request(&before, None).await.unwrap();
    endpoint(&before, &net_b, &b, ip_b).await;
    drop(before);
    let me = Arc::new(Driver::new(real.clone(), standalone("rel-sandbox")));
    me.init(&[]).await.unwrap();
    let sandbox = "/var/run/docker/netns/shared";
    me.join(&net_a, &a, sandbox).await.unwrap();
    me.join(&net_b, &b, sandbox).await.unwrap();
    let chain_b = profile_chain_of(&b).expect("no profile rule for the second network's endpoint");
    let member = format!("-A {chain_b} -s {ip_a}/32 -j ACCEPT");
    let rules = iptables_rules("filter");
    assert!(
        rules.lines().any(|l| l == member),
        "the container's first-network address is not a member of its second network's profile (no `{member}`):\n{rules}"
    );
}

/// A published port is refused when an endpoint from before a restart publishes it, also
/// while the restarted plugin has not loaded its endpoints yet (before, the check saw only
/// the endpoints created since the start, and two DNAT rules for one port were written).
async fn port_after_restart_body() {
    let etcd = Etcd::start();
    let real: Arc<dyn Datastore> = Arc::new(etcd.store());
    let net = "c1".repeat(32);
    let settings = standalone("rel-port");
    let before = Arc::new(Driver::new(real.clone(), settings.clone()));
    before
        .init(&[default_pool(&"10.79.0.0/24".parse().unwrap())])
        .await
        .unwrap();
    network(&before, &net).await;
    let published = |ep: &str, ip: IpAddr| EndpointSpec {
        network_id: net.clone(),
        endpoint_id: ep.to_string(),
        ipv4: Some(ipnet::IpNet::new(ip, 32).unwrap()),
        options: BTreeMap::from([(
            "com.docker.network.portmap".to_string(),
            json!([{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18089, "HostPortEnd": 18089}]),
        )]),
        ..Default::default()
    };
    let ip = request(&before, None).await.unwrap();
    before
        .create_endpoint(published(&endpoint_id("porta"), ip))
        .await
        .unwrap();
    drop(before);
    let me = Arc::new(Driver::new(real.clone(), settings));
    me.init(&[]).await.unwrap();
    let ip = request(&me, None).await.unwrap();
    let err = me
        .create_endpoint(published(&endpoint_id("portb"), ip))
        .await
        .expect_err("a second endpoint got a host port the first still publishes");
    assert!(
        err.to_string().contains("port is already allocated"),
        "unexpected error: {err}"
    );
}

/// Settings of node `node`'s driver with the plugin's own firewall rules (standalone mode).
fn standalone(node: &str) -> DriverSettings {
    let mut settings = DriverSettings::new(node);
    settings.dataplane = calico_libnetwork::dataplane::iptables::DataplaneMode::Standalone;
    settings
}

/// `iptables -S` of `table` (this namespace's).
fn iptables_rules(table: &str) -> String {
    let out = Command::new("iptables")
        .args(["-w", "-t", table, "-S"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
