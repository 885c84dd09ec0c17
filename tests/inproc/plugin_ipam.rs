//! Docker's IPAM call sequences through the plugin socket, on both datastores.

use crate::common;

use common::backends::{backends, Store};

use common::server::Server;
use serde_json::{json, Value};

const DEFAULT_V4: &str = "10.90.0.0/16";
const DEFAULT_V6: &str = "fd90::/64";

async fn keys_under(store: &Store, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}

async fn allocated(store: &Store) -> usize {
    let mut n = 0;
    for kv in store.list("/calico/ipam/v2/assignment/").await.unwrap() {
        let v: Value = serde_json::from_slice(&kv.value).unwrap();
        n += v["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| !a.is_null())
            .count();
    }
    n
}

/// `docker network create` with no --subnet, `docker run`, `docker rm`, `docker network rm`.
async fn default_pool_sequence(store: Store) {
    let s = Server::start(store.clone(), "host-a", &[DEFAULT_V4]).await;
    let c = &s.client;
    c.ok("IpamDriver.GetDefaultAddressSpaces", json!(null))
        .await;
    let pool = c
        .ok(
            "IpamDriver.RequestPool",
            json!({"AddressSpace": "CalicoLocalAddressSpace", "Pool": "", "SubPool": "", "Options": null, "V6": false}),
        )
        .await;
    assert_eq!(pool["PoolID"], "CalicoPoolIPv4");
    assert_eq!(pool["Pool"], "0.0.0.0/0");
    assert_eq!(pool["Data"]["com.docker.network.gateway"], "0.0.0.0/0");

    let mut addrs = Vec::new();
    for _ in 0..3 {
        let a = c.request_address("CalicoPoolIPv4").await;
        assert!(a.ends_with("/32"), "{a}");
        let ip: std::net::IpAddr = a.trim_end_matches("/32").parse().unwrap();
        assert!(
            DEFAULT_V4.parse::<ipnet::IpNet>().unwrap().contains(&ip),
            "{a} in the default pool"
        );
        addrs.push(a);
    }
    // Steady state (an affine block with room): the pool list and one transaction.
    let before = store.stats().snapshot();
    let a = c.request_address("CalicoPoolIPv4").await;
    let rt = store.stats().snapshot().since(&before);
    assert!(rt.round_trips <= 2, "RequestAddress made {rt:?}");
    let extra = a.trim_end_matches("/32").to_string();
    c.release_address("CalicoPoolIPv4", &extra).await;
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 3, "distinct addresses");
    assert_eq!(allocated(&store).await, 3);
    assert_eq!(keys_under(&store, "/calico/ipam/v2/handle/").await.len(), 3);
    let aff = keys_under(&store, "/calico/ipam/v2/host/host-a/ipv4/block/").await;
    assert_eq!(aff.len(), 1, "one affine block");

    for a in &addrs {
        let ip = a.trim_end_matches("/32");
        c.release_address("CalicoPoolIPv4", ip).await;
        // Idempotent: Docker may release twice after errors.
        c.release_address("CalicoPoolIPv4", ip).await;
    }
    // Docker releases the pool data gateway too.
    c.release_address("CalicoPoolIPv4", "0.0.0.0").await;
    c.ok(
        "IpamDriver.ReleasePool",
        json!({"PoolID": "CalicoPoolIPv4"}),
    )
    .await;
    assert_eq!(allocated(&store).await, 0);
    assert!(
        keys_under(&store, "/calico/ipam/v2/handle/")
            .await
            .is_empty(),
        "no handle left"
    );
    s.stop().await;
}

/// --subnet equal to an existing pool; --subnet creating a pool (removed on ReleasePool);
/// overlapping subnet refused; --ip.
async fn subnet_sequences(store: Store) {
    let s = Server::start(store.clone(), "host-a", &[DEFAULT_V4]).await;
    let c = &s.client;
    // Exactly the default pool's CIDR.
    let p = c
        .ok(
            "IpamDriver.RequestPool",
            json!({"AddressSpace": "CalicoLocalAddressSpace", "Pool": DEFAULT_V4, "V6": false}),
        )
        .await;
    assert_eq!(p["PoolID"], "default-ipv4-ippool");
    assert_eq!(p["Pool"], DEFAULT_V4);
    let ip = c.request_any_address("default-ipv4-ippool").await;
    c.release_address("default-ipv4-ippool", &ip).await;
    c.ok(
        "IpamDriver.ReleasePool",
        json!({"PoolID": "default-ipv4-ippool"}),
    )
    .await;
    assert!(
        store
            .get("/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool")
            .await
            .unwrap()
            .is_some(),
        "a pool the plugin did not create is never deleted"
    );

    // A new subnet: the plugin creates the pool, with options.
    let p = c
        .ok(
            "IpamDriver.RequestPool",
            json!({"Pool": "10.91.0.0/24", "Options": {"nat-outgoing": "false", "block-size": "28"}, "V6": false}),
        )
        .await;
    let id = p["PoolID"].as_str().unwrap().to_string();
    let kv = pool_record(&store, &id).await.expect("pool created");
    let pool: Value = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!(pool["spec"]["cidr"], "10.91.0.0/24");
    assert_eq!(pool["spec"]["blockSize"], 28);
    assert!(
        pool["spec"].get("natOutgoing").is_none(),
        "natOutgoing false is omitted: {pool}"
    );
    // Only its own network allocates from a pool created for --subnet: libcalico-go
    // ipam/ipam.go determinePools skips a non-Automatic pool unless requested
    // (api/pkg/apis/projectcalico/v3/ippool.go AssignmentMode, from v3.30.0).
    assert_eq!(pool["spec"]["assignmentMode"], "Manual", "{pool}");
    assert!(
        std::str::from_utf8(&kv.value)
            .unwrap()
            .contains(r#""assignmentMode":"Manual""#),
        "stored as Calico writes it"
    );
    let auto = c.request_any_address("CalicoPoolIPv4").await;
    assert!(
        auto.starts_with("10.90."),
        "all-pools networks skip the created pool: {auto}"
    );
    c.release_address("CalicoPoolIPv4", &auto).await;
    // --ip inside it, then the same --ip again: in use.
    let a = c
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID": id, "Address": "10.91.0.7"}),
        )
        .await;
    assert_eq!(a["Address"], "10.91.0.7/32");
    for (address, want) in [
        ("10.91.0.7", "already in use"),
        ("10.92.0.7", "not in the network's Calico pool"),
    ] {
        let (_, msg) = c
            .err(
                "IpamDriver.RequestAddress",
                json!({"PoolID": id, "Address": address}),
            )
            .await;
        assert!(msg.contains(want), "{msg}");
    }
    // A second network on the same subnet shares the pool.
    let p2 = c
        .ok("IpamDriver.RequestPool", json!({"Pool": "10.91.0.0/24"}))
        .await;
    assert_eq!(p2["PoolID"], id.as_str());
    c.release_address(&id, "10.91.0.7").await;
    c.ok("IpamDriver.ReleasePool", json!({"PoolID": id})).await;
    assert!(
        pool_record(&store, &id).await.is_some(),
        "still referenced by the second network"
    );
    c.ok("IpamDriver.ReleasePool", json!({"PoolID": id})).await;
    assert!(
        pool_record(&store, &id).await.is_none(),
        "created pool removed with its last reference"
    );
    assert!(keys_under(&store, "/calico/libnetwork/v1/pools/")
        .await
        .is_empty());
    let blocks = keys_under(&store, "/calico/ipam/v2/assignment/ipv4/block/").await;
    assert!(
        !blocks.iter().any(|k| k.contains("10.91.0.")),
        "no block of the removed pool left: {blocks:?}"
    );
    assert!(
        !keys_under(&store, "/calico/ipam/v2/host/host-a/ipv4/block/")
            .await
            .iter()
            .any(|k| k.contains("10.91.0."))
    );
    // ReleasePool again: idempotent.
    c.ok("IpamDriver.ReleasePool", json!({"PoolID": id})).await;

    // Overlap with the default pool: refused, naming it; nothing created.
    let before = keys_under(&store, "/calico/resources/v3/projectcalico.org/ippools/").await;
    let (_, msg) = c
        .err("IpamDriver.RequestPool", json!({"Pool": "10.90.5.0/24"}))
        .await;
    assert!(
        msg.contains("overlaps") && msg.contains("default-ipv4-ippool"),
        "{msg}"
    );
    assert_eq!(
        before,
        keys_under(&store, "/calico/resources/v3/projectcalico.org/ippools/").await
    );
    s.stop().await;
}

/// Pool choice by name, refused options, IPv6, and bad input.
async fn options_ipv6_and_errors(store: Store) {
    let s = Server::start(store.clone(), "host-a", &[DEFAULT_V4, DEFAULT_V6]).await;
    let c = &s.client;
    let (_, msg) = c
        .err(
            "IpamDriver.RequestPool",
            json!({"SubPool": "10.90.1.0/24", "Pool": DEFAULT_V4}),
        )
        .await;
    assert!(msg.contains("--ip-range"), "{msg}");
    let (_, msg) = c
        .err("IpamDriver.RequestPool", json!({"Options": {"foo": "bar"}}))
        .await;
    assert!(msg.contains("foo") && msg.contains("ipv4-pools"), "{msg}");
    let (_, msg) = c
        .err("IpamDriver.RequestPool", json!({"Pool": "10.1.2.3/33"}))
        .await;
    assert!(msg.contains("CIDR"), "{msg}");
    for (request, want) in [
        (
            json!({"PoolID": "CalicoPoolIPv4", "Address": "10.90.0.1", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
            "gateway",
        ),
        (json!({"PoolID": "no-such-pool", "Address": ""}), "deleted"),
        (
            json!({"PoolID": "CalicoPoolIPv4", "Address": "1.1.1.1"}),
            "not in any enabled Calico IP pool",
        ),
    ] {
        let (_, msg) = c.err("IpamDriver.RequestAddress", request).await;
        assert!(msg.contains(want), "{msg}");
    }

    // Pool by name.
    let p = c
        .ok(
            "IpamDriver.RequestPool",
            json!({"Options": {"ipv4-pools": "default-ipv4-ippool"}}),
        )
        .await;
    assert_eq!(p["PoolID"], "default-ipv4-ippool");
    assert_eq!(p["Pool"], "0.0.0.0/0");
    let (_, msg) = c
        .err(
            "IpamDriver.RequestPool",
            json!({"Options": {"ipv4-pools": "default-ipv6-ippool"}}),
        )
        .await;
    assert!(msg.contains("not an IPv4 pool"), "{msg}");

    // IPv6.
    let p = c.ok("IpamDriver.RequestPool", json!({"V6": true})).await;
    assert_eq!(p["PoolID"], "CalicoPoolIPv6");
    // The IPv6 pools themselves, not ::/0, which dockerd would check against its IPv6
    // nameservers (and, overlapping one, ask again forever).
    assert_eq!(p["Pool"], DEFAULT_V6);
    assert_eq!(p["Data"]["com.docker.network.gateway"], "::/0");
    let a = c
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID": "CalicoPoolIPv6", "Address": ""}),
        )
        .await;
    let a = a["Address"].as_str().unwrap();
    assert!(a.starts_with("fd90::") && a.ends_with("/128"), "{a}");
    let ip = a.trim_end_matches("/128");
    c.release_address("CalicoPoolIPv6", ip).await;
    let a = c
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID": "CalicoPoolIPv6", "Address": "fd90::abcd"}),
        )
        .await;
    assert_eq!(a["Address"], "fd90::abcd/128");
    c.release_address("CalicoPoolIPv6", "fd90::abcd").await;
    assert_eq!(allocated(&store).await, 0);
    s.stop().await;
}

/// An exhausted pool is a clear error, and nothing is half-written.
async fn exhausted_pool(store: Store) {
    let s = Server::start(store.clone(), "host-a", &["10.93.0.0/30"]).await;
    let c = &s.client;
    for _ in 0..4 {
        c.ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID": "CalicoPoolIPv4", "Address": ""}),
        )
        .await;
    }
    let before = keys_under(&store, "/calico/ipam/v2/").await;
    let (status, msg) = c
        .err(
            "IpamDriver.RequestAddress",
            json!({"PoolID": "CalicoPoolIPv4", "Address": ""}),
        )
        .await;
    assert_eq!(status, 500);
    assert!(
        msg.contains("no address available") && msg.contains("10.93.0.0/30"),
        "{msg}"
    );
    assert_eq!(
        before,
        keys_under(&store, "/calico/ipam/v2/").await,
        "nothing half-written"
    );
    assert_eq!(allocated(&store).await, 4);
    s.stop().await;
}

/// The network driver's datastore cost and clean-up: CreateEndpoint makes one round trip
/// once the network's record is settled on its named profile; DeleteNetwork makes at most
/// four and removes the record and the unused profile; a profile that does not decode is
/// left alone, and the record still goes.
async fn network_round_trips_and_unreadable_profile(store: Store) {
    use calico_libnetwork::model::keys;
    use calico_libnetwork::model::libnetwork::fallback_profile;
    let s = Server::start(store.clone(), "host-a", &[DEFAULT_V4]).await;
    let c = &s.client;
    let hex = |n: u8| format!("{n:02x}").repeat(32);
    let create_network = |id: String| {
        c.ok(
            "NetworkDriver.CreateNetwork",
            json!({"NetworkID": id, "Options": {"com.docker.network.generic": {}},
                   "IPv4Data": [{"AddressSpace": "CalicoLocalAddressSpace", "Pool": "0.0.0.0/0", "Gateway": "0.0.0.0/0"}],
                   "IPv6Data": []}),
        )
    };
    let net = hex(0xa1);
    create_network(net.clone()).await;
    // The name learned from Docker (there is no Docker here): the record moves to the
    // profile named after the network, as the background lookup writes it.
    let rkey = keys::network_key(&net);
    let kv = store.get(&rkey).await.unwrap().unwrap();
    let mut rec: Value = serde_json::from_slice(&kv.value).unwrap();
    rec["name"] = json!("web");
    rec["profile"] = json!("web");
    store
        .put(&rkey, rec.to_string().into_bytes())
        .await
        .unwrap();
    let mut trips = Vec::new();
    for (i, ep) in [hex(0xe1), hex(0xe2)].iter().enumerate() {
        let before = store.stats().snapshot();
        c.ok(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": net, "EndpointID": ep,
                   "Interface": {"Address": format!("10.90.200.{}/32", i + 1), "AddressIPv6": "", "MacAddress": ""},
                   "Options": {}}),
        )
        .await;
        trips.push(store.stats().snapshot().since(&before).round_trips);
        c.ok(
            "NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": net, "EndpointID": ep}),
        )
        .await;
    }
    // The first reads the record, the second has it in memory: only the endpoint's write.
    assert_eq!(trips, vec![2, 1], "CreateEndpoint round trips");
    let fallback = fallback_profile(&net);
    assert!(store
        .get(&keys::profile_key(&fallback))
        .await
        .unwrap()
        .is_some());
    let before = store.stats().snapshot();
    c.ok("NetworkDriver.DeleteNetwork", json!({"NetworkID": net}))
        .await;
    let rt = store.stats().snapshot().since(&before);
    assert!(rt.round_trips <= 4, "DeleteNetwork made {rt:?}");
    assert!(store.get(&rkey).await.unwrap().is_none(), "record left");
    assert!(
        store
            .get(&keys::profile_key(&fallback))
            .await
            .unwrap()
            .is_none(),
        "unused fallback profile left"
    );

    // A profile that is not ours to read: it stays, the record goes anyway.
    let odd = hex(0xb2);
    create_network(odd.clone()).await;
    let pkey = keys::profile_key(&fallback_profile(&odd));
    store.put(&pkey, b"{not json".to_vec()).await.unwrap();
    c.ok("NetworkDriver.DeleteNetwork", json!({"NetworkID": odd}))
        .await;
    assert!(store.get(&keys::network_key(&odd)).await.unwrap().is_none());
    assert_eq!(store.get(&pkey).await.unwrap().unwrap().value, b"{not json");
    s.stop().await;
}

/// Profiles as Calico validates and shares them: the fallback profile (named after the
/// 64-character network ID) applies a label key calicoctl accepts (at most 63 characters:
/// `validateLabels` in libcalico-go/lib/validator/v3/validator.go) and selects on that same
/// key; and `docker network rm` leaves a same-named profile that Calico CNI endpoints in
/// another namespace still use (the CNI plugin, cni-plugin/pkg/plugin/plugin.go, makes the
/// same profile shape for its network name and never deletes it).
async fn profiles_within_calico_validation_and_shared_with_cni(store: Store) {
    use calico_libnetwork::model::keys;
    use calico_libnetwork::model::libnetwork::fallback_profile;
    let s = Server::start(store.clone(), "host-a", &[DEFAULT_V4]).await;
    let c = &s.client;
    let net = "c3".repeat(32);
    c.ok(
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": net, "Options": {"com.docker.network.generic": {}},
               "IPv4Data": [{"AddressSpace": "CalicoLocalAddressSpace", "Pool": "0.0.0.0/0", "Gateway": "0.0.0.0/0"}],
               "IPv6Data": []}),
    )
    .await;
    let fallback = fallback_profile(&net);
    assert_eq!(fallback.len(), 64);
    let kv = store
        .get(&keys::profile_key(&fallback))
        .await
        .unwrap()
        .expect("fallback profile");
    let p: Value = serde_json::from_slice(&kv.value).unwrap();
    let labels = p["spec"]["labelsToApply"].as_object().unwrap();
    assert_eq!(labels.len(), 1, "{p}");
    let key = labels.keys().next().unwrap();
    assert!(
        key.len() <= 63,
        "label key of {} characters: {p}",
        key.len()
    );
    assert_eq!(
        p["spec"]["ingress"][0]["source"]["selector"],
        format!("has({key})"),
        "{p}"
    );

    // The network learned its name, `shared`; Calico's CNI plugin has a network of that name
    // too, with an endpoint in namespace `default` on the (identical) profile.
    let rkey = keys::network_key(&net);
    let kv = store.get(&rkey).await.unwrap().unwrap();
    let mut rec: Value = serde_json::from_slice(&kv.value).unwrap();
    rec["name"] = json!("shared");
    rec["profile"] = json!("shared");
    store
        .put(&rkey, rec.to_string().into_bytes())
        .await
        .unwrap();
    let profile = json!({"kind": "Profile", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "shared"},
        "spec": {"ingress": [{"action": "Allow", "source": {"selector": "has(shared)"}}],
                 "egress": [{"action": "Allow"}], "labelsToApply": {"shared": ""}}});
    store
        .put(
            &keys::profile_key("shared"),
            profile.to_string().into_bytes(),
        )
        .await
        .unwrap();
    let wep_key = keys::workload_endpoint_key("default", "host--b-cni-0123456789ab-eth0");
    let wep = json!({"kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "host--b-cni-0123456789ab-eth0", "namespace": "default"},
        "spec": {"orchestrator": "cni", "workload": "", "node": "host-b", "containerID": "0123456789ab",
                 "endpoint": "eth0", "ipNetworks": ["10.90.9.9/32"], "profiles": ["shared"],
                 "interfaceName": "cali0123456789a"}});
    store
        .put(&wep_key, wep.to_string().into_bytes())
        .await
        .unwrap();
    c.ok("NetworkDriver.DeleteNetwork", json!({"NetworkID": net}))
        .await;
    assert!(store.get(&rkey).await.unwrap().is_none(), "record left");
    assert!(
        store
            .get(&keys::profile_key("shared"))
            .await
            .unwrap()
            .is_some(),
        "the profile a CNI endpoint uses was deleted"
    );
    assert!(
        store
            .get(&keys::profile_key(&fallback))
            .await
            .unwrap()
            .is_none(),
        "unused fallback profile left"
    );
    s.stop().await;
}

/// A network Docker knows and the plugin has no record of (its datastore was lost or
/// switched, or the original plugins made it): its first CreateEndpoint adopts it, as
/// CreateNetwork would have recorded it: all of Calico's pools for an address of an automatic
/// pool, the `--subnet` pool for an address of one, the network-ID profile until the name is
/// learned. Two endpoints adopting at once agree on one record.
async fn unknown_networks_are_adopted(store: Store) {
    use calico_libnetwork::model::keys;
    use calico_libnetwork::model::libnetwork::fallback_profile;
    let s = Server::start(store.clone(), "host-a", &[DEFAULT_V4]).await;
    let c = &s.client;
    let address = |pool: Value| async move {
        c.ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID": pool, "Address": "", "Options": {}}),
        )
        .await["Address"]
            .clone()
    };
    let endpoint = |net: String, ep: String, addr: Value| async move {
        c.ok(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": net, "EndpointID": ep,
                   "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""},
                   "Options": {}}),
        )
        .await
    };
    let record = |net: &str| {
        let store = store.clone();
        let key = keys::network_key(net);
        async move {
            let kv = store.get(&key).await.unwrap().expect("network record");
            serde_json::from_slice::<Value>(&kv.value).unwrap()
        }
    };

    // On the default pool, two endpoints at once.
    let pool = c.ok("IpamDriver.RequestPool", json!({"Pool": ""})).await["PoolID"].clone();
    let net = "d4".repeat(32);
    let (a1, a2) = (address(pool.clone()).await, address(pool.clone()).await);
    let (r1, r2) = tokio::join!(
        endpoint(net.clone(), "e1".repeat(32), a1),
        endpoint(net.clone(), "e2".repeat(32), a2)
    );
    assert!(r1.is_object() && r2.is_object());
    let rec = record(&net).await;
    assert_eq!(rec["ipv4Pools"], json!(["0.0.0.0/0"]), "{rec}");
    assert_eq!(rec["profile"], fallback_profile(&net), "{rec}");
    assert!(store
        .get(&keys::profile_key(&fallback_profile(&net)))
        .await
        .unwrap()
        .is_some());
    let weps = keys_under(&store, common::WEPS_PREFIX).await;
    assert_eq!(weps.len(), 2, "{weps:?}");
    for k in &weps {
        let w: Value = serde_json::from_slice(&store.get(k).await.unwrap().unwrap().value).unwrap();
        assert_eq!(
            w["spec"]["profiles"],
            json!([fallback_profile(&net)]),
            "{w}"
        );
    }

    // On a --subnet pool (assignmentMode Manual): the network's pool is that one.
    let sub = c
        .ok("IpamDriver.RequestPool", json!({"Pool": "10.92.0.0/24"}))
        .await["PoolID"]
        .clone();
    let net2 = "d5".repeat(32);
    endpoint(net2.clone(), "e3".repeat(32), address(sub).await).await;
    assert_eq!(record(&net2).await["ipv4Pools"], json!(["10.92.0.0/24"]));
    // Gone with DeleteNetwork like any other.
    for (n, eps) in [(&net, vec!["e1", "e2"]), (&net2, vec!["e3"])] {
        for e in eps {
            c.ok(
                "NetworkDriver.DeleteEndpoint",
                json!({"NetworkID": n, "EndpointID": e.repeat(32)}),
            )
            .await;
        }
        c.ok("NetworkDriver.DeleteNetwork", json!({"NetworkID": n}))
            .await;
        assert!(store.get(&keys::network_key(n)).await.unwrap().is_none());
    }
    s.stop().await;
}

/// Sets `datastoreReady` in ClusterInformation `default`, as `calicoctl datastore migrate
/// lock` (false) and `unlock` (true) do, and waits out the plugin's reading of it.
async fn set_datastore_ready(store: &Store, ready: bool) {
    use calico_libnetwork::driver::ready::READY_TTL;
    let key = "/calico/resources/v3/projectcalico.org/clusterinformations/default";
    let kv = store.get(key).await.unwrap().expect("ClusterInformation");
    let mut ci: Value = serde_json::from_slice(&kv.value).unwrap();
    ci["spec"]["datastoreReady"] = json!(ready);
    store
        .update(key, ci.to_string().into_bytes(), kv.revision)
        .await
        .unwrap();
    // The plugin trusts what it read for READY_TTL: the lock holds after that.
    tokio::time::sleep(READY_TTL + std::time::Duration::from_millis(100)).await;
}

// cni-plugin/pkg/plugin/plugin.go, cmdAdd and cmdDel: "Calico is currently not ready to
// process requests" while ClusterInformation's datastoreReady is false.
async fn a_datastore_lock_refuses_writes_until_unlocked(store: Store) {
    let s = Server::start(store.clone(), "host-a", &[DEFAULT_V4]).await;
    let c = &s.client;
    let (net, net2) = ("a1".repeat(32), "a2".repeat(32));
    let (ep, ep2) = ("e1".repeat(32), "e2".repeat(32));
    let create_network = |id: &str| {
        json!({"NetworkID": id, "Options": {"com.docker.network.generic": {}},
               "IPv4Data": [{"AddressSpace": "CalicoLocalAddressSpace", "Pool": "0.0.0.0/0", "Gateway": "0.0.0.0/0"}],
               "IPv6Data": []})
    };
    let create_endpoint = |id: &str, addr: &str| {
        json!({"NetworkID": net, "EndpointID": id,
               "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""}, "Options": {}})
    };
    // Before the lock: a network with a container.
    let addr = c.request_address("CalicoPoolIPv4").await;
    let ip = addr.trim_end_matches("/32").to_string();
    c.ok("NetworkDriver.CreateNetwork", create_network(&net))
        .await;
    c.ok("NetworkDriver.CreateEndpoint", create_endpoint(&ep, &addr))
        .await;

    set_datastore_ready(&store, false).await;
    let before = store.list("/calico/").await.unwrap();
    for (method, body) in [
        ("IpamDriver.RequestPool", json!({"Pool": "", "V6": false})),
        (
            "IpamDriver.RequestPool",
            json!({"Pool": "10.91.0.0/24", "V6": false}),
        ),
        (
            "IpamDriver.ReleasePool",
            json!({"PoolID": "CalicoPoolIPv4"}),
        ),
        (
            "IpamDriver.RequestAddress",
            json!({"PoolID": "CalicoPoolIPv4", "Address": ""}),
        ),
        (
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": "CalicoPoolIPv4", "Address": ip}),
        ),
        ("NetworkDriver.CreateNetwork", create_network(&net2)),
        (
            "NetworkDriver.CreateEndpoint",
            create_endpoint(&ep2, "10.90.255.1/32"),
        ),
        (
            "NetworkDriver.Join",
            json!({"NetworkID": net, "EndpointID": ep2, "SandboxKey": "/var/run/docker/netns/x"}),
        ),
        (
            "NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": net, "EndpointID": ep}),
        ),
        ("NetworkDriver.DeleteNetwork", json!({"NetworkID": net})),
    ] {
        let (status, msg) = c.err(method, body).await;
        assert_eq!(status, 500, "{method}: {msg}");
        assert!(
            msg.starts_with("Calico is currently not ready to process requests (datastoreReady is false in ClusterInformation default"),
            "{method}: {msg}"
        );
        assert!(
            msg.contains("calicoctl datastore migrate unlock"),
            "{method}: {msg}"
        );
    }
    // Calls that write nothing go on.
    c.ok(
        "NetworkDriver.Leave",
        json!({"NetworkID": net, "EndpointID": ep}),
    )
    .await;
    c.ok("IpamDriver.GetDefaultAddressSpaces", json!(null))
        .await;
    // Reconciliation waits too.
    let e = s.driver.reconcile_with(None).await.unwrap_err();
    assert!(matches!(e, calico_libnetwork::Error::NotReady), "{e}");
    assert_eq!(
        store.list("/calico/").await.unwrap(),
        before,
        "written while locked"
    );

    // Unlocked: the same calls work.
    set_datastore_ready(&store, true).await;
    let wep = format!(
        "/calico/resources/v3/projectcalico.org/workloadendpoints/libnetwork/host--a-libnetwork-libnetwork-{ep}"
    );
    assert!(store.get(&wep).await.unwrap().is_some(), "{wep}");
    c.ok(
        "NetworkDriver.DeleteEndpoint",
        json!({"NetworkID": net, "EndpointID": ep}),
    )
    .await;
    assert!(store.get(&wep).await.unwrap().is_none(), "{wep} left");
    c.release_address("CalicoPoolIPv4", &ip).await;
    assert_eq!(allocated(&store).await, 0);
    c.ok("NetworkDriver.DeleteNetwork", json!({"NetworkID": net}))
        .await;
    let again = c.request_address("CalicoPoolIPv4").await;
    c.release_address("CalicoPoolIPv4", again.trim_end_matches("/32"))
        .await;
    s.stop().await;
}

/// `docker network create` naming a pool that gives no Workload address (a Tunnel- or
/// LoadBalancer-only pool, by `ipv4-pools=` or by its exact CIDR as `--subnet`) is refused,
/// naming the pool and its allowedUses.
async fn named_pool_without_workload_use_refused(store: Store) {
    let s = Server::start(store.clone(), "host-a", &[DEFAULT_V4]).await;
    let c = &s.client;
    // As calicoctl stores a pool for tunnel addresses only.
    store
        .put(
            "/calico/resources/v3/projectcalico.org/ippools/tunnels",
            serde_json::to_vec(&json!({
                "kind": "IPPool", "apiVersion": "projectcalico.org/v3",
                "metadata": {"name": "tunnels"},
                "spec": {"cidr": "10.95.0.0/24", "blockSize": 26, "allowedUses": ["Tunnel"]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    // libcalico-go ipam/ipam.go prepareAffinityBlocksForHost: filterPoolsByUse applies to
    // requested pools too, so such a network could never get an address.
    for request in [
        json!({"Options": {"ipv4-pools": "tunnels"}}),
        json!({"Pool": "10.95.0.0/24"}),
    ] {
        let (status, msg) = c.err("IpamDriver.RequestPool", request.clone()).await;
        assert_eq!(status, 400, "{request}: {msg}");
        assert!(
            msg.contains("pool tunnels") && msg.contains("allowedUses [Tunnel]"),
            "{request}: {msg}"
        );
    }
    let p = c
        .ok(
            "IpamDriver.RequestPool",
            json!({"Options": {"ipv4-pools": "default-ipv4-ippool"}}),
        )
        .await;
    assert_eq!(p["PoolID"], "default-ipv4-ippool");
    s.stop().await;
}

/// A `--subnet` pool over blocks left in use with another block size is refused with
/// Calico's message; the same block size is accepted.
async fn subnet_pool_over_blocks_of_another_size_refused(store: Store) {
    let s = Server::start(store.clone(), "host-a", &[DEFAULT_V4]).await;
    let c = &s.client;
    // A --subnet pool with an address in use; the operator deletes the pool; the block
    // stays.
    let p = c
        .ok("IpamDriver.RequestPool", json!({"Pool": "10.96.0.0/24"}))
        .await;
    let id = p["PoolID"].as_str().unwrap().to_string();
    c.request_address(&id).await;
    calico_libnetwork::ipam::Ipam::new(store.clone())
        .delete_pool(&id)
        .await
        .unwrap();
    // libcalico-go clientv3/ippool.go Create refuses a pool over blocks of another size.
    let (status, msg) = c
        .err(
            "IpamDriver.RequestPool",
            json!({"Pool": "10.96.0.0/24", "Options": {"block-size": "28"}}),
        )
        .await;
    assert_eq!(status, 400, "{msg}");
    assert!(
        msg.contains(
            "IPPool blocksSize conflicts with existing allocations that use a different blockSize"
        ),
        "{msg}"
    );
    c.ok("IpamDriver.RequestPool", json!({"Pool": "10.96.0.0/24"}))
        .await;
    s.stop().await;
}

backends!(
    threads = 2,
    timeout = None,
    [
        default_pool_sequence,
        subnet_sequences,
        options_ipv6_and_errors,
        exhausted_pool,
        network_round_trips_and_unreadable_profile,
        profiles_within_calico_validation_and_shared_with_cni,
        unknown_networks_are_adopted,
        a_datastore_lock_refuses_writes_until_unlocked,
        named_pool_without_workload_use_refused,
        subnet_pool_over_blocks_of_another_size_refused,
    ]
);

/// The stored IPPool `name`, if any.
async fn pool_record(store: &Store, name: &str) -> Option<calico_libnetwork::datastore::KeyValue> {
    store
        .get(&format!(
            "/calico/resources/v3/projectcalico.org/ippools/{name}"
        ))
        .await
        .unwrap()
}
