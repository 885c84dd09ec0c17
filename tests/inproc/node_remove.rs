//! Removing a node that is gone (`calico-libnetwork node remove`, `driver::node_remove`), on
//! both datastores: a second host's data written through the real driver and IPAM under
//! another node name, refused while its heartbeat is fresh, then removed to the last record
//! with this host's data untouched.

use crate::common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use calico_libnetwork::dataplane::fake::Recording;
use calico_libnetwork::datastore::resources;
use calico_libnetwork::driver::heartbeat::{DEFAULT_HEARTBEAT_INTERVAL, HEARTBEAT_ANNOTATION};
use calico_libnetwork::driver::node_remove::{remove_node, NodeRemoval};
use calico_libnetwork::driver::{Driver, DriverSettings, EndpointSpec, NetworkSpec};
use calico_libnetwork::ipam::{default_attrs, default_pool, AssignIp};
use calico_libnetwork::model::block::AllocationBlock;
use calico_libnetwork::model::keys;
use calico_libnetwork::model::resources::NodeSpec;
use common::backends::{backends, Store};

const HERE: &str = "host-a";
const GONE: &str = "host-b";

/// A host's driver over `store` with the recording dataplane (no root), started; the first
/// to start makes the pool (VXLAN: each host also gets a tunnel address).
pub(super) async fn host(store: &Store, name: &str) -> Arc<Driver> {
    let d = Arc::new(Driver::with_dataplane(
        store.clone(),
        DriverSettings::new(name),
        Arc::new(Recording::default()),
    ));
    let mut pool = default_pool(&"10.90.0.0/24".parse().unwrap());
    pool.spec.block_size = 28;
    // VXLAN: each host also gets a tunnel address.
    pool.spec.vxlan_mode = "Always".into();
    d.init(&[pool]).await.unwrap();
    d
}

/// A network (Docker's ID `id`) made on `d`, as Docker creates it.
pub(super) async fn network(d: &Driver, id: &str) {
    d.create_network(NetworkSpec {
        network_id: id.to_string(),
        ipv4_data: vec![("CalicoPoolIPv4".into(), "0.0.0.0/0".into())],
        ..Default::default()
    })
    .await
    .unwrap();
}

/// An address and an endpoint with it on `d`, as Docker asks for them; returns the address.
pub(super) async fn endpoint(d: &Arc<Driver>, net: &str, ep: &str) -> IpAddr {
    let ip = d
        .request_address("CalicoPoolIPv4", None, &BTreeMap::new())
        .await
        .unwrap();
    d.create_endpoint(EndpointSpec {
        network_id: net.to_string(),
        endpoint_id: ep.to_string(),
        ipv4: Some(ip),
        ..Default::default()
    })
    .await
    .unwrap();
    ip.addr()
}

/// Both hosts with two endpoints and a tunnel address each, heartbeats fresh, and one
/// address of this host borrowed from the gone host's block. Returns this host's driver,
/// the gone host's addresses and the borrowed address.
async fn two_hosts(store: &Store) -> (Arc<Driver>, Vec<IpAddr>, IpAddr) {
    let here = host(store, HERE).await;
    let gone = host(store, GONE).await;
    let net = "ab".repeat(32);
    network(&here, &net).await;
    let mut gone_ips = Vec::new();
    for (d, name, ips) in [(&here, "a", None), (&gone, "b", Some(&mut gone_ips))] {
        let e1 = endpoint(d, &net, &format!("{name}1").repeat(32)).await;
        let e2 = endpoint(d, &net, &format!("{name}2").repeat(32)).await;
        let t = d.reconcile_tunnel_addresses().await.unwrap();
        assert!(d.renew_heartbeat().await.unwrap());
        if let Some(ips) = ips {
            ips.extend([e1, e2, t.vxlan.expect("tunnel address")]);
        }
    }
    // This host borrows an address from the gone host's block (strict affinity off).
    let gone_block = block_of(store, gone_ips[0]).await;
    let borrowed = gone_block
        .cidr
        .hosts()
        .find(|ip| gone_block.attribute_of(ip).is_none())
        .unwrap();
    here.ipam()
        .assign_ip(&AssignIp {
            ip: borrowed,
            handle: "libnetwork.borrowed".into(),
            attrs: default_attrs(HERE),
            host: HERE.into(),
            intended_use: String::new(),
        })
        .await
        .unwrap();
    (here, gone_ips, borrowed)
}

pub(super) async fn block_of(store: &Store, ip: IpAddr) -> AllocationBlock {
    blocks(store)
        .await
        .into_iter()
        .find(|b| b.cidr.contains(&ip))
        .unwrap_or_else(|| panic!("no block holds {ip}"))
}

pub(super) async fn blocks(store: &Store) -> Vec<AllocationBlock> {
    store
        .list(keys::ALL_BLOCKS_PREFIX)
        .await
        .unwrap()
        .iter()
        .map(|kv| AllocationBlock::from_json(&kv.value).unwrap())
        .collect()
}

/// Every key with its value under `prefix`.
async fn dump(store: &Store, prefix: &str) -> Vec<(String, Vec<u8>)> {
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

/// This host's records that the removal must leave as they are: its Node, its
/// WorkloadEndpoints, the handles of its allocations, its affinities and blocks.
async fn this_hosts(store: &Store) -> Vec<(String, Vec<u8>)> {
    let mut handles = Vec::new();
    for b in blocks(store).await {
        for ip in b.allocated_ips() {
            let a = b.attribute_of(&ip).unwrap();
            if a.secondary.get("node").map(String::as_str) == Some(HERE) {
                handles.push(keys::handle_key(a.handle().unwrap()));
            }
        }
    }
    assert!(handles.len() >= 4, "this host's handles: {handles:?}");
    let mut out = Vec::new();
    for (k, v) in dump(store, "/calico/").await {
        let text = String::from_utf8_lossy(&v);
        let ours = k == keys::node_key(HERE)
            || k.starts_with(&keys::host_all_affinities_prefix(HERE))
            || (k.starts_with(keys::ALL_BLOCKS_PREFIX) && text.contains("\"host:host-a\""))
            || (k.contains("/workloadendpoints/") && text.contains("\"node\":\"host-a\""))
            || handles.contains(&k);
        if ours {
            out.push((k, v));
        }
    }
    out
}

/// What the store still holds of the gone host; empty when it is all gone.
async fn leftovers(store: &Store, ips: &[IpAddr]) -> Vec<String> {
    let mut left = Vec::new();
    if store.get(&keys::node_key(GONE)).await.unwrap().is_some() {
        left.push("its Node".to_string());
    }
    for (k, v) in dump(store, "/calico/").await {
        let text = String::from_utf8_lossy(&v);
        if k.starts_with(&keys::host_all_affinities_prefix(GONE))
            || (k.starts_with(keys::HANDLES_PREFIX) && k.contains(GONE))
            || (k.contains("/workloadendpoints/") && text.contains("\"node\":\"host-b\""))
        {
            left.push(k);
        }
    }
    for b in blocks(store).await {
        if b.host_affinity() == Some(GONE) {
            left.push(format!("block {} affine to it", b.cidr));
        }
        for ip in b.allocated_ips() {
            let a = b.attribute_of(&ip).unwrap();
            if a.secondary.get("node").map(String::as_str) == Some(GONE) || ips.contains(&ip) {
                left.push(format!("allocation of {ip}: {a:?}"));
            }
        }
    }
    left
}

/// Calico's per-node configuration as calicoctl writes it: BGPPeers and HostEndpoints for
/// both hosts and for none, FelixConfiguration and BGPConfiguration `node.<host>` for both
/// and `default`. Returns the keys that are the gone host's.
async fn node_configuration(store: &Store) -> Vec<String> {
    let res = |plural: &str, name: &str| keys::resource_key(plural, None, name);
    let kind = |k: &str, name: &str, spec: &str| {
        format!(
            r#"{{"kind":"{k}","apiVersion":"projectcalico.org/v3","metadata":{{"name":"{name}","uid":"u-{name}","creationTimestamp":"2026-01-01T00:00:00Z"}},"spec":{spec}}}"#
        )
    };
    let mut gone = Vec::new();
    for host in [HERE, GONE] {
        let peer = res(keys::PLURAL_BGP_PEERS, &format!("peer-{host}"));
        let hep = res(keys::PLURAL_HOST_ENDPOINTS, &format!("{host}-eth0"));
        let felix = res(keys::PLURAL_FELIX_CONFIGURATIONS, &format!("node.{host}"));
        let bgp = res(keys::PLURAL_BGP_CONFIGURATIONS, &format!("node.{host}"));
        let writes = [
            (
                &peer,
                kind(
                    "BGPPeer",
                    &format!("peer-{host}"),
                    &format!(r#"{{"node":"{host}","peerIP":"10.1.1.1","asNumber":64512}}"#),
                ),
            ),
            (
                &hep,
                kind(
                    "HostEndpoint",
                    &format!("{host}-eth0"),
                    &format!(
                        r#"{{"node":"{host}","interfaceName":"eth0","expectedIPs":["10.1.1.2"]}}"#
                    ),
                ),
            ),
            (
                &felix,
                kind(
                    "FelixConfiguration",
                    &format!("node.{host}"),
                    r#"{"defaultEndpointToHostAction":"Return"}"#,
                ),
            ),
            (
                &bgp,
                kind(
                    "BGPConfiguration",
                    &format!("node.{host}"),
                    r#"{"listenPort":179}"#,
                ),
            ),
        ];
        for (k, v) in writes {
            store.create(k, v.into_bytes()).await.unwrap();
        }
        if host == GONE {
            gone = vec![peer, hep, felix, bgp];
        }
    }
    // A global peer (no node) and the cluster's default configuration stay.
    for (k, v) in [
        (
            res(keys::PLURAL_BGP_PEERS, "global"),
            kind(
                "BGPPeer",
                "global",
                r#"{"peerIP":"10.1.1.9","asNumber":64512}"#,
            ),
        ),
        (
            res(keys::PLURAL_FELIX_CONFIGURATIONS, "default"),
            kind(
                "FelixConfiguration",
                "default",
                r#"{"logSeverityScreen":"Info"}"#,
            ),
        ),
        // A node whose name begins with the gone one's: Calico matches spec.node exactly.
        (
            res(keys::PLURAL_HOST_ENDPOINTS, "host-bb-eth0"),
            kind(
                "HostEndpoint",
                "host-bb-eth0",
                r#"{"node":"host-bb","interfaceName":"eth0"}"#,
            ),
        ),
    ] {
        store.create(&k, v.into_bytes()).await.unwrap();
    }
    gone
}

// libcalico-go/lib/clientv3/node.go, nodes.Delete (the node's addresses, WorkloadEndpoints,
// IPAM host data via ipam.RemoveIPAMHost, BGPPeers and HostEndpoints naming the node, its
// FelixConfiguration and BGPConfiguration `node.<name>`, then the Node), with every allocation naming the
// node released as calico-kube-controllers' IPAM garbage collection does, and
// ipam.ReleaseHostAffinities without mustBeEmpty (a block holding another host's address
// stays, without affinity). Refused first, changing nothing, while the heartbeat is fresh.
async fn a_gone_node_is_removed_only_when_forced_or_stale(store: Store) {
    let (_here, gone_ips, borrowed) = two_hosts(&store).await;
    let gone_config = node_configuration(&store).await;
    let before = this_hosts(&store).await;
    let all_before = dump(&store, "/calico/").await;
    // Positive control: the gone host's data is there to remove.
    assert!(leftovers(&store, &gone_ips).await.len() >= 6);

    let err = remove_node(&store, GONE, false, DEFAULT_HEARTBEAT_INTERVAL)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("remove node host-b: its plugin is likely running")
            && msg.contains(HEARTBEAT_ANNOTATION)
            && msg.contains("--force"),
        "{msg}"
    );
    assert_eq!(
        dump(&store, "/calico/").await,
        all_before,
        "changed by a refusal"
    );

    let removed = remove_node(&store, GONE, true, DEFAULT_HEARTBEAT_INTERVAL)
        .await
        .unwrap();
    assert_eq!(
        removed,
        NodeRemoval {
            node: GONE.into(),
            // Two workloads and the tunnel address, each under its own handle.
            addresses: 3,
            handles: 3,
            affinities: 1,
            workload_endpoints: 2,
            node_resources: gone_config.clone(),
        }
    );
    assert_eq!(leftovers(&store, &gone_ips).await, Vec::<String>::new());
    // Of the configuration, exactly the gone host's went.
    let config_before: Vec<_> = all_before
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| is_config(k))
        .collect();
    let config_after: Vec<_> = dump(&store, "/calico/")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| is_config(k))
        .collect();
    assert_eq!(config_before.len(), 11);
    let expected: Vec<_> = config_before
        .into_iter()
        .filter(|k| !gone_config.contains(k))
        .collect();
    assert_eq!(config_after, expected);
    // The borrowed address stays, in its block now without affinity.
    let b = block_of(&store, borrowed).await;
    assert_eq!(b.host_affinity(), None);
    assert_eq!(
        b.attribute_of(&borrowed).unwrap().handle(),
        Some("libnetwork.borrowed")
    );
    assert_eq!(this_hosts(&store).await, before, "this host's data changed");

    // Idempotent: the second run finds no Node.
    let err = remove_node(&store, GONE, true, DEFAULT_HEARTBEAT_INTERVAL)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(
        err.to_string(),
        "remove node host-b: Node host-b does not exist"
    );
}

/// Whether `key` is one of the per-node configuration kinds `node_configuration` writes.
fn is_config(key: &str) -> bool {
    [
        keys::PLURAL_BGP_PEERS,
        keys::PLURAL_HOST_ENDPOINTS,
        keys::PLURAL_FELIX_CONFIGURATIONS,
        keys::PLURAL_BGP_CONFIGURATIONS,
    ]
    .iter()
    .any(|p| key.starts_with(&keys::resource_prefix(p, None)))
}

// The heartbeat is stale (older than 3 intervals): no --force needed.
async fn a_node_with_a_stale_heartbeat_is_removed(store: Store) {
    let (_here, gone_ips, _) = two_hosts(&store).await;
    let before = this_hosts(&store).await;
    let written =
        resources::update_with::<NodeSpec, _>(store.as_ref(), &keys::node_key(GONE), |n| {
            n.metadata
                .annotations
                .insert(HEARTBEAT_ANNOTATION.into(), "2025-06-01T12:00:00Z".into());
            true
        })
        .await
        .unwrap();
    assert!(written);
    let removed = remove_node(&store, GONE, false, DEFAULT_HEARTBEAT_INTERVAL)
        .await
        .unwrap();
    assert_eq!(removed.workload_endpoints, 2);
    assert_eq!(leftovers(&store, &gone_ips).await, Vec::<String>::new());
    assert_eq!(this_hosts(&store).await, before);
}

backends!(
    threads = 2,
    timeout = Some(Duration::from_secs(60)),
    [
        a_gone_node_is_removed_only_when_forced_or_stale,
        a_node_with_a_stale_heartbeat_is_removed,
    ]
);
