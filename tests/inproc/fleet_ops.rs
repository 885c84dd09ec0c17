//! Operating a fleet from one host, as users run the binary: `status --all-hosts`,
//! `endpoint list --all-hosts` and `ipam check --all-hosts` / `--repair --node`, on etcd and
//! on the embedded store. Three plugin hosts share the datastore, their records written by
//! the real driver and IPAM: `fleet-h1` serves the socket the commands run beside (this
//! host), `fleet-h2` and `fleet-h3` are drivers of this process under their own node names;
//! a fourth Node, `fleet-felix`, is calico-node's (no heartbeat). A host's death is its
//! heartbeat, written by the plugin's own code, dated back past the threshold (the threshold
//! is three 30 s renewals: a test cannot wait it out).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;

use calico_libnetwork::datastore::{resources, Datastore};
use calico_libnetwork::driver::heartbeat::{heartbeat_text, HEARTBEAT_ANNOTATION};
use calico_libnetwork::driver::Driver;
use calico_libnetwork::model::keys;
use calico_libnetwork::model::resources::{NodeBgpSpec, NodeSpec, WorkloadEndpointSpec};
use calico_libnetwork::model::{Node, WorkloadEndpoint};

use super::cli::op;
use super::node_remove::{block_of, blocks, endpoint, host, network};

const H1: &str = "fleet-h1";
const H2: &str = "fleet-h2";
const H3: &str = "fleet-h3";
const FELIX: &str = "fleet-felix";

type Store = Arc<dyn Datastore>;

/// This host's address on a host's Node, as the plugin writes what it found.
fn address_of(node: &str) -> &'static str {
    match node {
        H1 => "10.211.0.11/24",
        H2 => "10.211.0.12/24",
        H3 => "10.211.0.13/24",
        _ => "10.211.0.20/24",
    }
}

/// An address asked for on `d` (Docker's RequestAddress).
async fn address(d: &Driver) -> IpAddr {
    d.request_address("CalicoPoolIPv4", None, &BTreeMap::new())
        .await
        .unwrap()
        .addr()
}

/// A host's leaks: an address no endpoint uses (Docker's RequestAddress, then nothing) and
/// the handle of its endpoint's address `used` counting 5 addresses where its block holds 1.
/// Returns the leaked address, its handle and the endpoint's handle.
async fn leak(store: &Store, d: &Driver, used: IpAddr) -> (IpAddr, String, String) {
    let orphan = address(d).await;
    let orphan_handle = handle_of(store, orphan).await;
    let block = block_of(store, used).await;
    let handle = handle_of(store, used).await;
    let corrupt = serde_json::json!({"block": {block.cidr.to_string(): 5}});
    store
        .put(&keys::handle_key(&handle), corrupt.to_string().into_bytes())
        .await
        .unwrap();
    (orphan, orphan_handle, handle)
}

/// The handle of an allocated address; panics when it is not allocated.
async fn handle_of(store: &Store, ip: IpAddr) -> String {
    let b = block_of(store, ip).await;
    let a = b.attribute_of(&ip);
    let a = a.unwrap_or_else(|| panic!("{ip} is not allocated"));
    a.handle().unwrap().to_string()
}

/// Whether a block holds `ip` allocated.
async fn allocated(store: &Store, ip: IpAddr) -> bool {
    block_of(store, ip).await.attribute_of(&ip).is_some()
}

/// How many addresses the stored handle `id` counts (`None`: no handle).
async fn handle_count(store: &Store, id: &str) -> Option<u64> {
    let kv = store.get(&keys::handle_key(id)).await.unwrap()?;
    let v: Value = serde_json::from_slice(&kv.value).unwrap();
    Some(
        v["block"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum(),
    )
}

async fn node(store: &Store, name: &str) -> Node {
    resources::get::<NodeSpec>(store.as_ref(), &keys::node_key(name))
        .await
        .unwrap()
        .unwrap()
}

/// Every key with its value.
async fn dump(store: &Store) -> BTreeMap<String, Vec<u8>> {
    store
        .list("/calico/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

/// The keys added, changed or removed between two dumps.
fn changed(before: &BTreeMap<String, Vec<u8>>, after: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect()
}

/// What each plugin host leaked, and its endpoints' addresses.
struct Fleet {
    /// Per host: its endpoints' addresses.
    endpoints: BTreeMap<&'static str, Vec<IpAddr>>,
    /// Per leaking host (h2, h3): the leaked address, its handle, the corrupted handle.
    leaks: BTreeMap<&'static str, (IpAddr, String, String)>,
}

/// The fleet's records: this host `h1` (`here`, the serving plugin's driver) with two
/// endpoints, `h2` and `h3` with one each and a leak each, every plugin host with its
/// address, tunnel address and a fresh heartbeat; and calico-node's `fleet-felix`.
async fn seed(store: &Store, here: &Arc<Driver>) -> Fleet {
    // h2 starts first: it makes the pool.
    let h2 = host(store, H2).await;
    let h3 = host(store, H3).await;
    let net = "cd".repeat(32);
    network(here, &net).await;
    let mut fleet = Fleet {
        endpoints: BTreeMap::new(),
        leaks: BTreeMap::new(),
    };
    for (d, name, count) in [(here, H1, 2), (&h2, H2, 1), (&h3, H3, 1)] {
        let mut ips = Vec::new();
        for i in 0..count {
            let ep = format!("{}{i}", &name[name.len() - 1..]).repeat(32);
            ips.push(endpoint(d, &net, &ep).await);
        }
        let tunnels = d.reconcile_tunnel_addresses().await.unwrap();
        assert!(tunnels.vxlan.is_some(), "{name}: no tunnel address");
        let written =
            resources::update_with::<NodeSpec, _>(store.as_ref(), &keys::node_key(name), |n| {
                n.spec
                    .bgp
                    .get_or_insert_with(NodeBgpSpec::default)
                    .ipv4_address = address_of(name).into();
                true
            })
            .await
            .unwrap();
        assert!(written);
        assert!(d.renew_heartbeat().await.unwrap());
        if name != H1 {
            fleet.leaks.insert(name, leak(store, d, ips[0]).await);
        }
        fleet.endpoints.insert(name, ips);
    }
    // calico-node's Node: an address, no heartbeat, nothing else of ours.
    let mut felix = Node::new(
        FELIX,
        NodeSpec {
            bgp: Some(NodeBgpSpec {
                ipv4_address: address_of(FELIX).into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    resources::create(store.as_ref(), &mut felix).await.unwrap();
    fleet
}

/// Dates `name`'s heartbeat back 10 minutes (its plugin stopped renewing it).
async fn lapse_heartbeat(store: &Store, name: &str) {
    let old = heartbeat_text(chrono::Utc::now() - chrono::Duration::minutes(10));
    let written =
        resources::update_with::<NodeSpec, _>(store.as_ref(), &keys::node_key(name), |n| {
            n.metadata
                .annotations
                .insert(HEARTBEAT_ANNOTATION.into(), old.clone());
            true
        })
        .await
        .unwrap();
    assert!(written);
}

/// Adds `labels` to node `name`'s WorkloadEndpoint in the datastore, keeping Calico's own
/// (which it has: checked); the labels `endpoint list` should show, as JSON.
async fn label_endpoint_of(store: &Store, name: &str, labels: &[(&str, &str)]) -> Value {
    let weps: Vec<WorkloadEndpoint> = resources::list(store.as_ref(), None).await.unwrap();
    let wep = weps.iter().find(|w| w.spec.node == name).unwrap();
    let calico: Vec<&String> = wep
        .metadata
        .labels
        .keys()
        .filter(|k| k.starts_with("projectcalico.org/"))
        .collect();
    assert_eq!(
        calico.len(),
        2,
        "Calico's own labels: {:?}",
        wep.metadata.labels
    );
    let written = resources::update_with::<WorkloadEndpointSpec, _>(
        store.as_ref(),
        &wep.key().unwrap(),
        |w| {
            for (k, v) in labels {
                w.metadata.labels.insert(k.to_string(), v.to_string());
            }
            true
        },
    )
    .await
    .unwrap();
    assert!(written);
    let shown: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    Value::Object(shown)
}

/// Runs the binary as this host (`h1`) with the datastore settings `envs`; the JSON it
/// printed, and its exit code.
fn json(envs: &[(&str, &str)], args: &[&str]) -> (i32, Value) {
    let (code, out, err) = op(envs, args);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}{err}"));
    (code, v)
}

/// The line of a table that starts with `first` (its first cell).
fn row<'a>(table: &'a str, first: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first}: {table}"))
}

/// `ipam check` findings as (kind, node, object, repaired).
fn findings(report: &Value) -> BTreeSet<(String, String, String, bool)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["node"].as_str().unwrap_or("-").to_string(),
                f["object"].as_str().unwrap().to_string(),
                f["repaired"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// A host's two leaks as `findings` lists them.
fn leak_findings(fleet: &Fleet, name: &str, repaired: bool) -> [(String, String, String, bool); 2] {
    let (orphan, _, handle) = &fleet.leaks[name];
    [
        (
            "handle-mismatch".into(),
            name.into(),
            handle.clone(),
            repaired,
        ),
        (
            "orphan-allocation".into(),
            name.into(),
            orphan.to_string(),
            repaired,
        ),
    ]
}

/// Everything the commands show and do, on the store `store` that the commands reach with
/// `envs` (this host's plugin serving its socket, as on a Docker host).
async fn fleet_operations(store: Store, envs: Vec<(&'static str, String)>) {
    let server = common::server::Server::start(store.clone(), H1, &[]).await;
    let fleet = seed(&store, &server.driver).await;
    let sock = server.client.path.to_str().unwrap().to_string();
    let mut env: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend([
        ("NODENAME", H1),
        ("CALICO_LIBNETWORK_SOCKET", sock.as_str()),
    ]);
    let run = |args: &[&str]| tokio::task::block_in_place(|| json(&env, args));
    let text = |args: &[&str]| tokio::task::block_in_place(|| op(&env, args));

    // ---- status --all-hosts: every Node, all alive (exit 0: no problem).
    let (code, st) = run(&["status", "--all-hosts", "-o", "json"]);
    assert_eq!(code, 0, "{st:#}");
    let hosts = st["hosts"].as_array().unwrap();
    let names: Vec<&str> = hosts.iter().map(|h| h["node"].as_str().unwrap()).collect();
    assert_eq!(names, [FELIX, H1, H2, H3], "{st:#}");
    let all_blocks = blocks(&store).await;
    for h in &hosts[1..] {
        let name = h["node"].as_str().unwrap();
        let n = node(&store, name).await;
        assert_eq!(h["heartbeat"], "alive", "{h:#}");
        assert!(h["heartbeat_age_s"].as_i64().unwrap() < 90, "{h:#}");
        assert_eq!(h["ipv4_address"], address_of(name), "{h:#}");
        let tunnel: IpAddr = h["ipv4_vxlan_tunnel_addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(tunnel.to_string(), n.spec.ipv4_vxlan_tunnel_addr, "{h:#}");
        assert_eq!(
            block_of(&store, tunnel).await.host_affinity(),
            Some(name),
            "the tunnel address is in the host's block"
        );
        assert_eq!(h["ipv4_ipip_tunnel_addr"], "", "{h:#}");
        let affine = all_blocks
            .iter()
            .filter(|b| b.host_affinity() == Some(name))
            .count();
        assert_eq!(h["blocks"], affine, "{h:#}");
        assert_eq!(affine, 1, "{name}'s three addresses fit in one /28");
        assert_eq!(h["endpoints"], fleet.endpoints[name].len(), "{h:#}");
    }
    assert_eq!(hosts[1]["endpoints"], 2);
    let felix = &hosts[0];
    assert_eq!(felix["heartbeat"], "no heartbeat", "{felix:#}");
    assert_eq!(felix["heartbeat_age_s"], Value::Null);
    assert_eq!(felix["ipv4_address"], address_of(FELIX));
    assert_eq!(felix["blocks"], 0);
    assert_eq!(felix["endpoints"], 0);
    assert_eq!(st["endpoints"], 2, "this host's own count: {st:#}");

    // ---- h3 stops renewing: dead, a problem; the others alive.
    lapse_heartbeat(&store, H3).await;
    let (code, st) = run(&["status", "--all-hosts", "-o", "json"]);
    assert_eq!(code, 1, "a dead host is a problem: {st:#}");
    let state = |name: &str| {
        st["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["node"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(state(H3)["heartbeat"], "dead");
    assert!(state(H3)["heartbeat_age_s"].as_i64().unwrap() >= 600);
    assert_eq!(state(H2)["heartbeat"], "alive");
    assert_eq!(state(H1)["heartbeat"], "alive");
    let problems = st["problems"].to_string();
    assert!(
        problems.contains("node fleet-h3 is dead")
            && problems.contains("calico-libnetwork node remove fleet-h3"),
        "{problems}"
    );
    assert!(!problems.contains("fleet-h2"), "{problems}");
    let (code, out, _) = text(&["status", "--all-hosts"]);
    assert_eq!(code, 1);
    let tunnel3 = node(&store, H3).await.spec.ipv4_vxlan_tunnel_addr;
    let vxlan3 = format!("vxlan={tunnel3}");
    let cells: Vec<&str> = row(&out, H3).split_whitespace().collect();
    assert_eq!(
        cells,
        [H3, "dead", "10m", address_of(H3), &vxlan3, "1", "1"],
        "{out}"
    );
    assert!(row(&out, H2).contains(" alive "), "{out}");
    assert!(row(&out, FELIX).contains(" no heartbeat "), "{out}");
    assert!(
        out.contains("problem: node fleet-h3 is dead: its heartbeat (calico-libnetwork/heartbeat)"),
        "{out}"
    );

    // ---- ipam check: this host's records by default, every host's with --all-hosts.
    let (code, r) = run(&["ipam", "check", "--no-veths", "-o", "json"]);
    assert_eq!(code, 0, "this host leaked nothing: {r:#}");
    assert_eq!(r["scope"], "node fleet-h1");
    let (code, r) = run(&["ipam", "check", "--all-hosts", "--no-veths", "-o", "json"]);
    assert_eq!(code, 1, "{r:#}");
    let mut want: BTreeSet<_> = leak_findings(&fleet, H2, false).into();
    want.extend(leak_findings(&fleet, H3, false));
    assert_eq!(findings(&r), want, "{r:#}");
    let (_, out, _) = text(&["ipam", "check", "--all-hosts", "--no-veths"]);
    assert!(
        out.contains("`calico-libnetwork ipam check --repair --node fleet-h3` here once")
            && out.contains("4 inconsistencies found, 0 repaired, 4 left (all hosts)"),
        "{out}"
    );

    // ---- --repair with every host's records in view: only this host's are its to repair,
    // and it has none.
    let before = dump(&store).await;
    let (code, r) = run(&[
        "ipam",
        "check",
        "--all-hosts",
        "--repair",
        "--grace",
        "0s",
        "--no-veths",
        "-o",
        "json",
    ]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(findings(&r), want, "{r:#}");
    assert_eq!(dump(&store).await, before, "another host's record repaired");

    // ---- --repair --node of a live host, or of one without a heartbeat: refused, nothing
    // changed.
    for (name, why) in [
        (
            H2,
            "its plugin is likely running: heartbeat calico-libnetwork/heartbeat renewed",
        ),
        (FELIX, "it has no heartbeat"),
    ] {
        let (code, out, err) = text(&[
            "ipam",
            "check",
            "--repair",
            "--node",
            name,
            "--grace",
            "0s",
            "--no-veths",
        ]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            err.starts_with(&format!(
                "calico-libnetwork: repair node {name}'s records: {why}"
            )),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(dump(&store).await, before, "changed by a refused repair");
    }

    // ---- --repair --node of the dead host: its leaks repaired, nobody else's record touched.
    let (code, r) = run(&[
        "ipam",
        "check",
        "--repair",
        "--node",
        H3,
        "--grace",
        "0s",
        "--no-veths",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["scope"], "node fleet-h3");
    assert_eq!(
        findings(&r),
        BTreeSet::from(leak_findings(&fleet, H3, true)),
        "{r:#}"
    );
    let after = dump(&store).await;
    let (orphan3, orphan3_handle, handle3) = &fleet.leaks[H3];
    let block3 = block_of(&store, *orphan3).await;
    let mut expected = vec![
        keys::block_key(&block3.cidr),
        keys::handle_key(orphan3_handle),
        keys::handle_key(handle3),
    ];
    expected.sort();
    assert_eq!(changed(&before, &after), expected);
    assert!(
        !allocated(&store, *orphan3).await,
        "h3's leaked address released"
    );
    assert_eq!(handle_count(&store, orphan3_handle).await, None);
    assert_eq!(handle_count(&store, handle3).await, Some(1));
    assert!(
        allocated(&store, fleet.endpoints[H3][0]).await,
        "its endpoint's address stays"
    );
    let (orphan2, _, handle2) = &fleet.leaks[H2];
    assert!(
        allocated(&store, *orphan2).await,
        "h2's leak is h2's to repair"
    );
    assert_eq!(handle_count(&store, handle2).await, Some(5));
    // What is left: h2's two, as found before.
    let (code, r) = run(&["ipam", "check", "--all-hosts", "--no-veths", "-o", "json"]);
    assert_eq!(code, 1);
    assert_eq!(
        findings(&r),
        BTreeSet::from(leak_findings(&fleet, H2, false)),
        "{r:#}"
    );

    // ---- endpoint list --all-hosts: each endpoint with its node and the node's address,
    // and its labels: h2's endpoint labelled on h2 (as CALICO_LIBNETWORK_LABEL_ENDPOINTS
    // copies a container's), shown here without Calico's own.
    let shown = label_endpoint_of(&store, H2, &[("app", "shop"), ("example.com/tier", "db")]).await;
    let (code, out, err) = text(&["endpoint", "list", "--all-hosts"]);
    assert_eq!(code, 0, "{out}{err}");
    let head: Vec<&str> = out
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(&head[..3], ["ENDPOINT", "NODE", "HOST ADDRESS"], "{out}");
    assert_eq!(out.lines().count(), 5, "four endpoints: {out}");
    for (name, ips) in &fleet.endpoints {
        for ip in ips {
            let line = out
                .lines()
                .find(|l| l.contains(&format!(" {ip}/")))
                .unwrap_or_else(|| panic!("no row with {ip}: {out}"));
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(&cells[1..3], [*name, address_of(name)], "{out}");
            let labels = if *name == H2 {
                "app=shop,example.com/tier=db"
            } else {
                "-"
            };
            assert_eq!(cells.last(), Some(&labels), "{out}");
        }
    }
    assert_eq!(head.last(), Some(&"LABELS"), "{out}");
    assert!(!out.contains("projectcalico.org/"), "{out}");
    let (_, eps) = run(&["endpoint", "list", "--all-hosts", "-o", "json"]);
    for e in eps.as_array().unwrap() {
        let name = e["node"].as_str().unwrap();
        assert_eq!(e["host_address"], address_of(name), "{e:#}");
        let labels = if name == H2 {
            shown.clone()
        } else {
            serde_json::json!({})
        };
        assert_eq!(e["labels"], labels, "{e:#}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_operations_on_etcd() {
    let etcd = common::etcd::Etcd::start();
    let store: Store = Arc::new(etcd.store());
    fleet_operations(store, vec![("ETCD_ENDPOINTS", etcd.endpoint())]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_operations_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store: Store =
        Arc::new(calico_libnetwork::datastore::local::LocalStore::open(&path).unwrap());
    // The plugin holds the file: the commands reach it through its socket.
    let envs = vec![(
        "CALICO_LIBNETWORK_STORE",
        path.to_str().unwrap().to_string(),
    )];
    fleet_operations(store, envs).await;
}
