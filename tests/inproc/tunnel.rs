//! This host's tunnel addresses (`Driver::reconcile_tunnel_addresses`), as calico-node
//! allocates them (node/pkg/allocateip/allocateip.go), on both datastores: the allocation
//! in IPAM (handle, attributes) and the address on the Node, kept, released and cleared.

use crate::common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use calico_libnetwork::dataplane::iptables::DataplaneMode;
use calico_libnetwork::datastore::resources;
use calico_libnetwork::driver::heartbeat::HEARTBEAT_ANNOTATION;
use calico_libnetwork::driver::tunnel::TunnelAddresses;
use calico_libnetwork::driver::{Driver, DriverSettings};
use calico_libnetwork::ipam::AssignIp;
use calico_libnetwork::model::block::AllocationBlock;
use calico_libnetwork::model::keys;
use calico_libnetwork::model::resources::NodeSpec;
use calico_libnetwork::model::{IpPool, IpPoolSpec};
use common::backends::{backends, Store};
use serde_json::{json, Value};

const HOST: &str = "host-a";
// Felix's MACs for "host-a" and "host-a-v6" (vtepMACForHost: 'f' + sha1(name)[0:5];
// sha1("host-a") = b7a07e28cc..., sha1("host-a-v6") = 4e42d9734b..., by Python's hashlib).
const MAC: &str = "66:b7:a0:7e:28:cc";
const MAC_V6: &str = "66:4e:42:d9:73:4b";

/// The driver of `HOST` over `store`, started as the plugin starts (its Node created).
async fn driver(store: &Store) -> Driver {
    let d = Driver::new(store.clone(), DriverSettings::new(HOST));
    d.init(&[]).await.unwrap();
    d
}

/// Creates pool `name` on `cidr` with `f` applied to its spec.
async fn add_pool(d: &Driver, name: &str, cidr: &str, f: impl FnOnce(&mut IpPoolSpec)) {
    let mut spec = IpPoolSpec::with_cidr(&cidr.parse().unwrap());
    f(&mut spec);
    d.ipam().create_pool(IpPool::new(name, spec)).await.unwrap();
}

/// Edits pool `name` in the datastore, as calicoctl would.
async fn edit_pool(store: &Store, name: &str, f: impl Fn(&mut IpPoolSpec)) {
    let written =
        resources::update_with::<IpPoolSpec, _>(store.as_ref(), &keys::ip_pool_key(name), |p| {
            f(&mut p.spec);
            true
        })
        .await
        .unwrap();
    assert!(written, "pool {name}");
}

/// The stored Node of `HOST`, as JSON, and its revision.
async fn node(store: &Store) -> (Value, i64) {
    let kv = store.get(&keys::node_key(HOST)).await.unwrap().unwrap();
    (serde_json::from_slice(&kv.value).unwrap(), kv.revision)
}

/// The stored block holding `ip`, as JSON and decoded.
async fn block_of(store: &Store, ip: IpAddr) -> (Value, AllocationBlock) {
    for kv in store.list(keys::ALL_BLOCKS_PREFIX).await.unwrap() {
        let b = AllocationBlock::from_json(&kv.value).unwrap();
        if b.cidr.contains(&ip) {
            return (serde_json::from_slice(&kv.value).unwrap(), b);
        }
    }
    panic!("no block holds {ip}");
}

/// The allocation attribute of `ip` as stored: `{"handle_id": ..., "secondary": ...}`;
/// `None` when `ip` is not allocated.
async fn allocation(store: &Store, ip: IpAddr) -> Option<Value> {
    let (json, b) = block_of(store, ip).await;
    let idx = b.allocations[b.ordinal_of(&ip).unwrap()]?;
    Some(json["attributes"][idx as usize].clone())
}

async fn handle_exists(store: &Store, handle: &str) -> bool {
    store
        .get(&keys::handle_key(handle))
        .await
        .unwrap()
        .is_some()
}

// node/pkg/allocateip/allocateip.go: reconcileTunnelAddrs, determineEnabledPoolCIDRs,
// ensureHostTunnelAddress, assignHostTunnelAddr (handle "vxlan-tunnel-addr-<node>",
// attributes {"node", "type": "vxlanTunnelAddress"} from generateHandleAndAttributes, intended
// use Tunnel), updateNodeWithAddress (spec.ipv4VXLANTunnelAddr / ipv6VXLANTunnelAddr); the
// MAC is Felix's (felix/calc/vxlan_resolver.go, vtepMACForHost). removeHostTunnelAddr when
// the pool is switched to Never.
async fn a_vxlan_pool_gives_one_tunnel_address_kept_until_no_pool_needs_it(store: Store) {
    let d = driver(&store).await;
    // Fields of others on the Node, kept by every write.
    resources::update_with::<calico_libnetwork::model::resources::NodeSpec, _>(
        store.as_ref(),
        &keys::node_key(HOST),
        |n| {
            n.metadata.labels.insert("rack".into(), "r1".into());
            n.spec
                .extra
                .insert("interfaces".into(), json!([{"name": "eth0"}]));
            true
        },
    )
    .await
    .unwrap();
    // No pool with encapsulation yet: nothing (positive control below).
    add_pool(&d, "plain", "10.71.0.0/24", |_| {}).await;
    assert_eq!(
        d.reconcile_tunnel_addresses().await.unwrap(),
        TunnelAddresses::default()
    );
    add_pool(&d, "vxlan4", "10.70.0.0/24", |s| {
        s.vxlan_mode = "Always".into();
        s.block_size = 28;
    })
    .await;
    add_pool(&d, "vxlan6", "fd00:70::/120", |s| {
        s.vxlan_mode = "CrossSubnet".into();
        s.block_size = 124;
    })
    .await;

    let t = d.reconcile_tunnel_addresses().await.unwrap();
    let v4 = t.vxlan.expect("a VXLAN address");
    let v6 = t.vxlan_v6.expect("a VXLAN IPv6 address");
    assert!(
        "10.70.0.0/24"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(&v4),
        "{t:?}"
    );
    assert!(
        "fd00:70::/120"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(&v6),
        "{t:?}"
    );
    assert_eq!(t.ipip, None);
    assert_eq!(
        (t.vxlan_mac.as_str(), t.vxlan_mac_v6.as_str()),
        (MAC, MAC_V6)
    );
    // In IPAM as Calico writes it: the handle, exactly `node` and `type` (no timestamp),
    // in a block affine to this host.
    assert_eq!(
        allocation(&store, v4).await.unwrap(),
        json!({"handle_id": "vxlan-tunnel-addr-host-a", "secondary": {"node": HOST, "type": "vxlanTunnelAddress"}})
    );
    assert_eq!(
        allocation(&store, v6).await.unwrap(),
        json!({"handle_id": "vxlan-v6-tunnel-addr-host-a", "secondary": {"node": HOST, "type": "vxlanV6TunnelAddress"}})
    );
    assert_eq!(block_of(&store, v4).await.0["affinity"], "host:host-a");
    let ipam = d.ipam();
    assert_eq!(
        ipam.ips_by_handle("vxlan-tunnel-addr-host-a")
            .await
            .unwrap(),
        vec![v4]
    );
    // On the Node, every other field kept.
    let (n, rev) = node(&store).await;
    assert_eq!(n["spec"]["ipv4VXLANTunnelAddr"], v4.to_string(), "{n}");
    assert_eq!(n["spec"]["ipv6VXLANTunnelAddr"], v6.to_string(), "{n}");
    assert_eq!(n["spec"]["vxlanTunnelMACAddr"], MAC, "{n}");
    assert_eq!(n["spec"]["vxlanTunnelMACAddrV6"], MAC_V6, "{n}");
    assert_eq!(n["metadata"]["labels"]["rack"], "r1", "{n}");
    assert_eq!(n["spec"]["interfaces"], json!([{"name": "eth0"}]), "{n}");
    assert_eq!(
        n["spec"]["orchRefs"][0]["orchestrator"], "libnetwork",
        "{n}"
    );
    assert!(n["spec"].get("bgp").is_none(), "{n}");

    // Idempotent: the same addresses, nothing written, one address per handle.
    assert_eq!(d.reconcile_tunnel_addresses().await.unwrap(), t);
    assert_eq!(node(&store).await.1, rev, "Node rewritten");
    // A restart keeps them.
    let again = driver(&store).await;
    assert_eq!(again.reconcile_tunnel_addresses().await.unwrap(), t);
    assert_eq!(
        ipam.ips_by_handle("vxlan-tunnel-addr-host-a")
            .await
            .unwrap(),
        vec![v4]
    );

    // A MAC someone set stays, and stays when the address goes.
    resources::update_with::<calico_libnetwork::model::resources::NodeSpec, _>(
        store.as_ref(),
        &keys::node_key(HOST),
        |n| {
            n.spec.vxlan_tunnel_mac_addr_v6 = "66:00:00:00:00:01".into();
            true
        },
    )
    .await
    .unwrap();
    assert_eq!(
        d.reconcile_tunnel_addresses().await.unwrap().vxlan_mac_v6,
        "66:00:00:00:00:01"
    );

    // No pool needs them any more: released, fields cleared (the computed MAC too).
    edit_pool(&store, "vxlan4", |s| s.vxlan_mode = "Never".into()).await;
    edit_pool(&store, "vxlan6", |s| s.vxlan_mode = "Never".into()).await;
    let t = d.reconcile_tunnel_addresses().await.unwrap();
    assert_eq!(
        t,
        TunnelAddresses {
            vxlan_mac_v6: "66:00:00:00:00:01".into(),
            ..Default::default()
        }
    );
    assert_eq!(allocation(&store, v4).await, None);
    assert_eq!(allocation(&store, v6).await, None);
    assert!(!handle_exists(&store, "vxlan-tunnel-addr-host-a").await);
    assert!(!handle_exists(&store, "vxlan-v6-tunnel-addr-host-a").await);
    let (n, _) = node(&store).await;
    for field in [
        "ipv4VXLANTunnelAddr",
        "ipv6VXLANTunnelAddr",
        "vxlanTunnelMACAddr",
    ] {
        assert!(n["spec"].get(field).is_none(), "{field}: {n}");
    }
    assert_eq!(n["spec"]["vxlanTunnelMACAddrV6"], "66:00:00:00:00:01");
    assert_eq!(n["metadata"]["labels"]["rack"], "r1", "{n}");
}

// allocateip.go: the IPIP case of ensureHostTunnelAddress (handle "ipip-tunnel-addr-<node>",
// type ipipTunnelAddress, spec.bgp.ipv4IPIPTunnelAddr via updateNodeWithAddress), and of
// removeHostTunnelAddr (a BGP spec left empty is set to nil); a pool with allowedUses
// without Tunnel is not used (determineEnabledPoolCIDRs).
async fn an_ipip_pool_gives_one_tunnel_address_released_with_the_mode(store: Store) {
    let d = driver(&store).await;
    add_pool(&d, "a-workload-only", "10.72.0.0/24", |s| {
        s.ipip_mode = "Always".into();
        s.allowed_uses = vec!["Workload".into()];
    })
    .await;
    assert_eq!(d.reconcile_tunnel_addresses().await.unwrap().ipip, None);
    add_pool(&d, "b-ipip", "10.73.0.0/24", |s| {
        s.ipip_mode = "CrossSubnet".into()
    })
    .await;
    let t = d.reconcile_tunnel_addresses().await.unwrap();
    let ip = t.ipip.expect("an IPIP address");
    assert!(ip.to_string().starts_with("10.73.0."), "{t:?}");
    assert_eq!((t.vxlan, t.vxlan_v6), (None, None));
    assert_eq!(
        (t.vxlan_mac.as_str(), t.vxlan_mac_v6.as_str()),
        ("", ""),
        "no MAC without VXLAN"
    );
    assert_eq!(
        allocation(&store, ip).await.unwrap(),
        json!({"handle_id": "ipip-tunnel-addr-host-a", "secondary": {"node": HOST, "type": "ipipTunnelAddress"}})
    );
    let (n, rev) = node(&store).await;
    assert_eq!(
        n["spec"]["bgp"],
        json!({"ipv4IPIPTunnelAddr": ip.to_string()}),
        "{n}"
    );
    assert!(n["spec"].get("vxlanTunnelMACAddr").is_none(), "{n}");
    assert_eq!(d.reconcile_tunnel_addresses().await.unwrap(), t);
    assert_eq!(
        driver(&store)
            .await
            .reconcile_tunnel_addresses()
            .await
            .unwrap(),
        t
    );
    assert_eq!(node(&store).await.1, rev, "Node rewritten");

    edit_pool(&store, "b-ipip", |s| s.ipip_mode = "Never".into()).await;
    assert_eq!(
        d.reconcile_tunnel_addresses().await.unwrap(),
        TunnelAddresses::default()
    );
    assert_eq!(allocation(&store, ip).await, None);
    assert!(!handle_exists(&store, "ipip-tunnel-addr-host-a").await);
    let (n, _) = node(&store).await;
    assert!(n["spec"].get("bgp").is_none(), "{n}");
}

// allocateip.go, determineEnabledPoolCIDRs with ipam.SelectsNode (libcalico-go
// ipam/pools.go): a pool whose nodeSelector does not select this Node gives no address;
// labelled so that it does, it gives one.
async fn a_pool_selecting_other_nodes_gives_no_tunnel_address(store: Store) {
    let d = driver(&store).await;
    add_pool(&d, "zone-b", "10.74.0.0/24", |s| {
        s.vxlan_mode = "Always".into();
        s.node_selector = "zone == 'b'".into();
    })
    .await;
    assert_eq!(
        d.reconcile_tunnel_addresses().await.unwrap(),
        TunnelAddresses::default()
    );
    assert!(store
        .list(keys::ALL_BLOCKS_PREFIX)
        .await
        .unwrap()
        .is_empty());
    let (n, _) = node(&store).await;
    assert!(n["spec"].get("ipv4VXLANTunnelAddr").is_none(), "{n}");
    resources::update_with::<calico_libnetwork::model::resources::NodeSpec, _>(
        store.as_ref(),
        &keys::node_key(HOST),
        |n| {
            n.metadata.labels.insert("zone".into(), "b".into());
            true
        },
    )
    .await
    .unwrap();
    let t = d.reconcile_tunnel_addresses().await.unwrap();
    assert!(
        t.vxlan
            .is_some_and(|ip| ip.to_string().starts_with("10.74.0.")),
        "{t:?}"
    );
}

// allocateip.go, ensureHostTunnelAddress and correctAllocationWithHandle: an address on the
// Node allocated without handle and attributes (from before calico-node used them) is
// allocated again with them, and kept; one whose allocation is another's is left to its
// owner and a new one allocated.
async fn an_old_tunnel_address_without_handle_is_kept_and_given_one(store: Store) {
    let d = driver(&store).await;
    add_pool(&d, "vxlan4", "10.75.0.0/24", |s| {
        s.vxlan_mode = "Always".into()
    })
    .await;
    let old: IpAddr = "10.75.0.9".parse().unwrap();
    d.ipam()
        .assign_ip(&AssignIp {
            ip: old,
            handle: String::new(),
            attrs: Default::default(),
            host: HOST.into(),
            intended_use: String::new(),
        })
        .await
        .unwrap();
    resources::update_with::<calico_libnetwork::model::resources::NodeSpec, _>(
        store.as_ref(),
        &keys::node_key(HOST),
        |n| {
            n.spec.ipv4_vxlan_tunnel_addr = old.to_string();
            true
        },
    )
    .await
    .unwrap();
    let t = d.reconcile_tunnel_addresses().await.unwrap();
    assert_eq!(t.vxlan, Some(old));
    assert_eq!(
        allocation(&store, old).await.unwrap(),
        json!({"handle_id": "vxlan-tunnel-addr-host-a", "secondary": {"node": HOST, "type": "vxlanTunnelAddress"}})
    );

    // The address now a workload's (another handle, other attributes): it stays the
    // workload's, and this host gets another.
    d.ipam()
        .release_by_handle("vxlan-tunnel-addr-host-a")
        .await
        .unwrap();
    let mut attrs = calico_libnetwork::ipam::default_attrs("host-z");
    attrs.insert("container".into(), "web".into());
    d.ipam()
        .assign_ip(&AssignIp {
            ip: old,
            handle: "libnetwork.someone".into(),
            attrs,
            host: "host-z".into(),
            intended_use: String::new(),
        })
        .await
        .unwrap();
    let t = d.reconcile_tunnel_addresses().await.unwrap();
    let new = t.vxlan.expect("a new address");
    assert_ne!(new, old);
    assert_eq!(
        allocation(&store, old).await.unwrap()["handle_id"],
        "libnetwork.someone"
    );
    assert_eq!(
        allocation(&store, new).await.unwrap()["handle_id"],
        "vxlan-tunnel-addr-host-a"
    );
}

// allocateip.go, run: calico-node allocates at start, then again on every pool change; the
// plugin's node loop does it at start and then every TUNNEL_INTERVAL (here the shorter
// address interval), and renews its heartbeat.
async fn the_node_loop_allocates_at_start_and_after_a_pool_change(store: Store) {
    let mut settings = DriverSettings::new(HOST);
    settings.node_address.poll_interval = Duration::from_millis(300);
    let d = Arc::new(Driver::new(store.clone(), settings));
    d.init(&[]).await.unwrap();
    add_pool(&d, "ipip", "10.76.0.0/24", |s| {
        s.ipip_mode = "Always".into()
    })
    .await;
    d.keep_node_address_in_background();
    let wait = |what: &str, check: &dyn Fn(&Value) -> bool| {
        tokio::task::block_in_place(|| {
            common::wait_until(what, Duration::from_secs(10), || {
                let h = tokio::runtime::Handle::current();
                let n = h.block_on(node(&store)).0;
                check(&n).then_some(()).ok_or(n)
            })
        })
    };
    wait("the IPIP address and the heartbeat at start", &|n| {
        n["spec"]["bgp"]["ipv4IPIPTunnelAddr"].is_string()
            && n["metadata"]["annotations"][HEARTBEAT_ANNOTATION].is_string()
    });
    add_pool(&d, "vxlan", "10.77.0.0/24", |s| {
        s.vxlan_mode = "Always".into()
    })
    .await;
    wait("the VXLAN address after the pool was added", &|n| {
        n["spec"]["ipv4VXLANTunnelAddr"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.77.0."))
    });
}

/// Two reconciles of one host at the same moment (the node loop's and the one a pool change
/// starts, as at a plugin's start) end with one tunnel address, held by Calico's handle and
/// on the Node, and neither changes it afterwards: the loser must not release the winner's
/// address by their shared handle.
async fn concurrent_reconciles_keep_one_tunnel_address(store: Store) {
    let d = std::sync::Arc::new(driver(&store).await);
    add_pool(&d, "vxlan4", "10.72.0.0/24", |s| {
        s.vxlan_mode = "Always".into();
        s.block_size = 28;
    })
    .await;
    for round in 0..5 {
        let (a, b) = tokio::join!(
            d.reconcile_tunnel_addresses(),
            d.reconcile_tunnel_addresses()
        );
        let (a, b) = (a.unwrap().vxlan, b.unwrap().vxlan);
        let held = d
            .ipam()
            .ips_by_handle(&format!("vxlan-tunnel-addr-{HOST}"))
            .await
            .unwrap();
        let (n, _) = node(&store).await;
        let on_node: IpAddr = n["spec"]["ipv4VXLANTunnelAddr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            held,
            vec![on_node],
            "round {round}: handle holds {held:?}, Node has {on_node}"
        );
        assert_eq!((a, b), (Some(on_node), Some(on_node)), "round {round}");
        let again = d.reconcile_tunnel_addresses().await.unwrap().vxlan;
        assert_eq!(again, Some(on_node), "round {round}: changed afterwards");
        // Next round starts from none again.
        edit_pool(&store, "vxlan4", |p| p.vxlan_mode = "Never".into()).await;
        d.reconcile_tunnel_addresses().await.unwrap();
        edit_pool(&store, "vxlan4", |p| p.vxlan_mode = "Always".into()).await;
    }
}

/// `felix` mode: calico-node runs on the host and keeps its tunnel addresses (allocation and
/// Node fields), as Felix keeps the routes. With a VXLAN and an IP-in-IP pool selecting the
/// node, neither a direct reconcile nor the node loop allocates anything or touches the
/// Node's tunnel fields; the same Node under a driver in another mode would change (control).
async fn felix_mode_leaves_tunnel_addresses_to_calico_node(store: Store) {
    let mut settings = DriverSettings::new(HOST);
    settings.dataplane = DataplaneMode::Felix;
    settings.node_address.poll_interval = Duration::from_millis(300);
    let d = Arc::new(Driver::new(store.clone(), settings));
    d.init(&[]).await.unwrap();
    // calico-node's VXLAN address (in no block the plugin knows of) and MAC; no IP-in-IP
    // address yet.
    resources::update_with::<NodeSpec, _>(store.as_ref(), &keys::node_key(HOST), |n| {
        n.spec.ipv4_vxlan_tunnel_addr = "10.78.0.9".into();
        n.spec.vxlan_tunnel_mac_addr = "66:01:02:03:04:05".into();
        true
    })
    .await
    .unwrap();
    add_pool(&d, "vxlan", "10.78.0.0/24", |s| {
        s.vxlan_mode = "Always".into()
    })
    .await;
    add_pool(&d, "ipip", "10.79.0.0/24", |s| {
        s.ipip_mode = "Always".into()
    })
    .await;
    let (before, _) = node(&store).await;
    let calico_nodes = TunnelAddresses {
        vxlan: Some("10.78.0.9".parse().unwrap()),
        vxlan_mac: "66:01:02:03:04:05".into(),
        ..Default::default()
    };
    let untouched = |n: &Value| {
        n["spec"] == before["spec"] && n["metadata"]["labels"] == before["metadata"]["labels"]
    };

    assert_eq!(d.reconcile_tunnel_addresses().await.unwrap(), calico_nodes);
    // The node loop: its first pass reconciles the tunnel addresses, then renews the
    // heartbeat; then a few more passes (every 300 ms here).
    d.keep_node_address_in_background();
    tokio::task::block_in_place(|| {
        common::wait_until("the node loop's heartbeat", Duration::from_secs(10), || {
            let h = tokio::runtime::Handle::current();
            let n = h.block_on(node(&store)).0;
            n["metadata"]["annotations"][HEARTBEAT_ANNOTATION]
                .is_string()
                .then_some(())
                .ok_or(n)
        })
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (after, _) = node(&store).await;
    assert!(untouched(&after), "before: {before}\nafter: {after}");
    for kind in ["vxlan", "ipip"] {
        let handle = format!("{kind}-tunnel-addr-{HOST}");
        assert!(!handle_exists(&store, &handle).await, "{handle}");
    }
    assert!(
        store
            .list(keys::ALL_BLOCKS_PREFIX)
            .await
            .unwrap()
            .is_empty(),
        "no block claimed, no address allocated"
    );

    // Control: the plugin in charge (another mode) replaces that VXLAN address and adds an
    // IP-in-IP one.
    let other = driver(&store).await;
    let t = other.reconcile_tunnel_addresses().await.unwrap();
    assert_ne!(t.vxlan, calico_nodes.vxlan);
    assert!(t.ipip.is_some());
}

backends!(
    threads = 2,
    timeout = Some(Duration::from_secs(60)),
    [
        a_vxlan_pool_gives_one_tunnel_address_kept_until_no_pool_needs_it,
        an_ipip_pool_gives_one_tunnel_address_released_with_the_mode,
        a_pool_selecting_other_nodes_gives_no_tunnel_address,
        an_old_tunnel_address_without_handle_is_kept_and_given_one,
        the_node_loop_allocates_at_start_and_after_a_pool_change,
        concurrent_reconciles_keep_one_tunnel_address,
        felix_mode_leaves_tunnel_addresses_to_calico_node,
    ]
);
