//! This host's address on its Node: found in the kernel as calico-node finds it, and
//! written to the Node in etcd (or the embedded store), kept current, and refused when
//! another Node has it. Each test runs in a fresh network namespace with `lo` up, veths
//! standing in for the host's interfaces, and etcd started inside it; all of it goes with
//! the namespace's thread.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use calico_libnetwork::dataplane::autodetect::{
    autodetect, IpSetting, IpVersion, Method, NodeAddressConfig,
};
use calico_libnetwork::dataplane::{Dataplane, Linux};
use calico_libnetwork::datastore::Datastore;
use calico_libnetwork::driver::node_address::ADDRESS_CONFLICT_ANNOTATION;
use calico_libnetwork::driver::{Driver, DriverSettings};
use common::block_on;
use common::etcd::Etcd;
use serde_json::{json, Value};

const NODES: &str = "/calico/resources/v3/projectcalico.org/nodes/";
const BIN: &str = env!("CARGO_BIN_EXE_calico-libnetwork");

/// Runs `body` on a thread of its own in a fresh network namespace with `lo` up.
fn in_netns(test: &str, body: impl FnOnce() + Send + 'static) {
    if !common::require_root(test) {
        return;
    }
    common::netns::fresh(move || {
        ip(&["link", "set", "lo", "up"]);
        body()
    });
}

fn ip(args: &[&str]) {
    common::host::run_ok("ip", args);
}

/// A link `name` with `addresses` (IPv6 ones without duplicate address detection, so that
/// they are usable at once), up: one end of a veth pair whose other end, `veth-<name>`, is
/// up too (for carrier) and has no address but its IPv6 link-local. Veths rather than dummy
/// links: loading the dummy (or ifb) module adds a device to the host's namespace.
fn link(name: &str, addresses: &[&str]) {
    let peer = format!("veth-{name}");
    ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
    for a in addresses {
        add_address(name, a);
    }
    ip(&["link", "set", &peer, "up"]);
    ip(&["link", "set", name, "up"]);
}

fn add_address(dev: &str, address: &str) {
    if address.contains(':') {
        ip(&["-6", "addr", "add", address, "dev", dev, "nodad"]);
    } else {
        ip(&["addr", "add", address, "dev", dev]);
    }
}

/// The host most tests use, links in this order (the kernel's index order):
/// `eth0` 10.0.0.5/24 and fd00::5/64; `eth1` a link-local 169.254.1.1/16, then
/// 10.1.0.7/20, and only its IPv6 link-local; `docker0` 172.17.0.1/16; `veth9`
/// 172.31.0.1/16.
fn typical_host() {
    link("eth0", &["10.0.0.5/24", "fd00::5/64"]);
    link("eth1", &["169.254.1.1/16", "10.1.0.7/20"]);
    link("docker0", &["172.17.0.1/16"]);
    link("veth9", &["172.31.0.1/16"]);
}

/// What `method` finds in this namespace through the Linux dataplane: `"<interface>
/// <address/prefix>"`, or the error.
fn pick(method: &str, version: IpVersion) -> Result<String, String> {
    let method = Method::parse(method, version)?;
    block_on(async move {
        let dp = Linux::default();
        let all = dp.interfaces().await.map_err(|e| e.to_string())?;
        autodetect(&dp, &all, &method, version)
            .await
            .map(|f| format!("{} {}", f.interface, f.cidr))
            .map_err(|e| e.to_string())
    })
}

// autodetection_methods.go, autoDetectCIDRFirstFound (filtered.go FilteredEnumeration,
// interfaces.go GetInterfaces): the newest interface not in DEFAULT_INTERFACES_TO_EXCLUDE,
// its first global unicast address (link-local skipped), with the interface's prefix.
#[test]
fn first_found_picks_what_calico_node_picks() {
    in_netns("first_found_picks_what_calico_node_picks", || {
        typical_host();
        // docker0 and veth9 are newer but excluded; eth1's 169.254.1.1 is link-local.
        assert_eq!(
            pick("first-found", IpVersion::V4).unwrap(),
            "eth1 10.1.0.7/20"
        );
        assert_eq!(pick("", IpVersion::V4).unwrap(), "eth1 10.1.0.7/20");
        // eth1 has only its fe80:: link-local: eth0's.
        assert_eq!(
            pick("first-found", IpVersion::V6).unwrap(),
            "eth0 fd00::5/64"
        );
    });
}

// autodetection_methods.go, autoDetectCIDRByInterface: only interfaces a regex matches
// (anywhere in the name), without the default exclusions.
#[test]
fn interface_picks_what_calico_node_picks() {
    in_netns("interface_picks_what_calico_node_picks", || {
        typical_host();
        assert_eq!(
            pick("interface=eth0", IpVersion::V4).unwrap(),
            "eth0 10.0.0.5/24"
        );
        assert_eq!(
            pick("interface=^eth", IpVersion::V4).unwrap(),
            "eth1 10.1.0.7/20"
        );
        // Unanchored, as in calico-node: "eth" matches veth9, the newest.
        assert_eq!(
            pick("interface=eth", IpVersion::V4).unwrap(),
            "veth9 172.31.0.1/16"
        );
        assert_eq!(
            pick("interface=nope, docker.*", IpVersion::V4).unwrap(),
            "docker0 172.17.0.1/16"
        );
        assert_eq!(
            pick("interface=^lo$", IpVersion::V4).unwrap_err(),
            "autodetect an IPv4 address on interfaces [\"^lo$\"]: no valid IPv4 addresses \
             found on the host interfaces"
        );
    });
}

// autodetection_methods.go, autoDetectCIDRBySkipInterface: first-found, skipping the given
// interfaces as well as the default ones.
#[test]
fn skip_interface_picks_what_calico_node_picks() {
    in_netns("skip_interface_picks_what_calico_node_picks", || {
        typical_host();
        assert_eq!(
            pick("skip-interface=eth1", IpVersion::V4).unwrap(),
            "eth0 10.0.0.5/24"
        );
        assert_eq!(
            pick("skip-interface=eth.*", IpVersion::V4).unwrap_err(),
            "autodetect an IPv4 address skipping interfaces [\"eth.*\"]: no valid host \
             interfaces found"
        );
    });
}

// autodetection_methods.go, autoDetectCIDRByCIDR (filtered.go matchCIDRs): any interface,
// the first global unicast address inside one of the CIDRs.
#[test]
fn cidr_picks_what_calico_node_picks() {
    in_netns("cidr_picks_what_calico_node_picks", || {
        typical_host();
        // No default exclusion: veth9 is the newest with an address in 172.16/12.
        assert_eq!(
            pick("cidr=172.16.0.0/12", IpVersion::V4).unwrap(),
            "veth9 172.31.0.1/16"
        );
        assert_eq!(
            pick("cidr=10.0.0.0/24, 192.168.0.0/16", IpVersion::V4).unwrap(),
            "eth0 10.0.0.5/24"
        );
        assert_eq!(
            pick("cidr=fd00::/8", IpVersion::V6).unwrap(),
            "eth0 fd00::5/64"
        );
        assert!(pick("cidr=192.168.0.0/16", IpVersion::V4)
            .unwrap_err()
            .ends_with("no valid IPv4 addresses found on the host interfaces"));
    });
}

// reachaddr.go, ReachDestination: the source address of a UDP socket connected to the
// destination, with the prefix of the interface that has it (any interface, even lo).
#[test]
fn can_reach_picks_what_calico_node_picks() {
    in_netns("can_reach_picks_what_calico_node_picks", || {
        typical_host();
        assert_eq!(
            pick("can-reach=10.0.0.77", IpVersion::V4).unwrap(),
            "eth0 10.0.0.5/24"
        );
        assert_eq!(
            pick("can-reach=10.1.15.1", IpVersion::V4).unwrap(),
            "eth1 10.1.0.7/20"
        );
        assert_eq!(
            pick("can-reach=fd00::77", IpVersion::V6).unwrap(),
            "eth0 fd00::5/64"
        );
        // A name, resolved (here by /etc/hosts) to its IPv4 address.
        assert_eq!(
            pick("can-reach=localhost", IpVersion::V4).unwrap(),
            "lo 127.0.0.1/8"
        );
        // No route (no default route in this namespace): nothing, and why.
        let e = pick("can-reach=203.0.113.9", IpVersion::V4).unwrap_err();
        assert!(e.contains("network is unreachable"), "{e}");
        // A default route through eth1 makes it reachable, from eth1's address.
        ip(&["route", "add", "default", "via", "10.1.0.1"]);
        assert_eq!(
            pick("can-reach=203.0.113.9", IpVersion::V4).unwrap(),
            "eth1 10.1.0.7/20"
        );
    });
}

// vishvananda/netlink addr_linux.go, parseAddr (calico-node's address list): on a
// point-to-point address the prefix belongs to the peer, and the own address stands alone.
#[test]
fn a_point_to_point_address_is_taken_alone() {
    in_netns("a_point_to_point_address_is_taken_alone", || {
        typical_host();
        link("eth2", &[]);
        ip(&[
            "addr",
            "add",
            "10.9.0.1",
            "peer",
            "10.9.0.2/30",
            "dev",
            "eth2",
        ]);
        assert_eq!(
            pick("first-found", IpVersion::V4).unwrap(),
            "eth2 10.9.0.1/32"
        );
    });
}

// ------------------------------------------------------------------ the Node in the datastore

/// A driver for node `node` whose address settings are `IP` = `ip`, `IP6` = `ip6` and
/// `IP_AUTODETECTION_METHOD` = `method`.
fn driver(store: Arc<dyn Datastore>, node: &str, ip: &str, ip6: &str, method: &str) -> Driver {
    let mut s = DriverSettings::new(node);
    s.node_address = NodeAddressConfig {
        ipv4: IpSetting::parse(ip, IpVersion::V4).unwrap(),
        ipv6: IpSetting::parse(ip6, IpVersion::V6).unwrap(),
        ipv4_method: Method::parse(method, IpVersion::V4).unwrap(),
        poll_interval: Duration::from_millis(200),
        ..NodeAddressConfig::off()
    };
    Driver::new(store, s)
}

/// The stored Node `name`, and its revision.
async fn node(store: &dyn Datastore, name: &str) -> (Value, i64) {
    let kv = store
        .get(&format!("{NODES}{name}"))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no Node {name}"));
    (serde_json::from_slice(&kv.value).unwrap(), kv.revision)
}

/// Writes Node `name` as another writer (calico-node, calicoctl) would.
async fn put_node(store: &dyn Datastore, name: &str, spec: Value) {
    let n = json!({"kind": "Node", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "creationTimestamp": "2025-06-01T12:00:00Z"},
        "spec": spec});
    store
        .put(&format!("{NODES}{name}"), serde_json::to_vec(&n).unwrap())
        .await
        .unwrap();
}

/// A Node as BIRD, Felix and an operator left it: fields of theirs the plugin must keep.
fn node_of_others() -> Value {
    json!({"kind": "Node", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "h1", "uid": "uid-h1", "creationTimestamp": "2025-06-01T12:00:00Z",
            "labels": {"rack": "r1"}, "annotations": {"note": "kept"}},
        "spec": {
            "bgp": {"asNumber": 64512, "ipv4IPIPTunnelAddr": "192.168.10.1", "routeReflectorClusterID": "224.0.0.1"},
            "ipv4VXLANTunnelAddr": "192.168.20.1", "vxlanTunnelMACAddr": "66:aa:bb:cc:dd:ee",
            "orchRefs": [{"nodeName": "h1", "orchestrator": "libnetwork"}],
            "addresses": [{"address": "10.0.0.5/24", "type": "CalicoNodeIP"}],
            "interfaces": [{"name": "eth0", "addresses": ["10.0.0.5"]}]},
        "status": {"podCIDRs": ["10.244.0.0/24"]}})
}

/// On `store`: the Node gets the host's address with its interface's prefix, every other
/// field kept; a changed address is rewritten at the next check; an unchanged one is not
/// written again.
async fn address_written_with_others_fields_kept(store: Arc<dyn Datastore>) {
    typical_host();
    let others = node_of_others();
    store
        .put(&format!("{NODES}h1"), serde_json::to_vec(&others).unwrap())
        .await
        .unwrap();
    let d = driver(
        store.clone(),
        "h1",
        "autodetect",
        "autodetect",
        "interface=eth0",
    );
    d.init(&[]).await.unwrap();
    let (got, _) = node(store.as_ref(), "h1").await;
    let mut want = others.clone();
    want["spec"]["bgp"]["ipv4Address"] = json!("10.0.0.5/24");
    want["spec"]["bgp"]["ipv6Address"] = json!("fd00::5/64");
    assert_eq!(got, want);

    // The host's address changes: the next check rewrites it, and only it.
    ip(&["addr", "del", "10.0.0.5/24", "dev", "eth0"]);
    add_address("eth0", "10.0.0.6/16");
    let check = d.check_node_address().await.unwrap();
    assert!(check.written, "{check:?}");
    let (got, rev) = node(store.as_ref(), "h1").await;
    want["spec"]["bgp"]["ipv4Address"] = json!("10.0.0.6/16");
    assert_eq!(got, want);
    // Unchanged: not written again.
    let check = d.check_node_address().await.unwrap();
    assert!(!check.written, "{check:?}");
    assert_eq!(node(store.as_ref(), "h1").await.1, rev);
}

// startup.go, configureIPsAndSubnets and CreateOrUpdate (an Update of the Node as read): the
// address with its interface's prefix, everything else on the Node as it was.
#[test]
fn the_address_is_written_and_others_fields_kept_on_etcd() {
    in_netns(
        "the_address_is_written_and_others_fields_kept_on_etcd",
        || {
            let etcd = Etcd::start();
            block_on(address_written_with_others_fields_kept(Arc::new(
                etcd.store(),
            )));
        },
    );
}

// startup.go, configureIPsAndSubnets: the same on the embedded store.
#[test]
fn the_address_is_written_and_others_fields_kept_on_the_embedded_store() {
    in_netns(
        "the_address_is_written_and_others_fields_kept_on_the_embedded_store",
        || {
            let (store, _dir) = common::backends::local();
            block_on(address_written_with_others_fields_kept(store));
        },
    );
}

// startup.go, MonitorIPAddressSubnets: the address is found again every poll interval
// (AUTODETECT_POLL_INTERVAL) and a change is written without a restart.
#[test]
fn a_changed_address_is_rewritten_by_the_periodic_check() {
    in_netns(
        "a_changed_address_is_rewritten_by_the_periodic_check",
        || {
            typical_host();
            let etcd = Etcd::start();
            // Workers spawned from this thread: in this namespace too.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let store: Arc<dyn Datastore> = Arc::new(etcd.store());
            let d = Arc::new(driver(store, "h1", "autodetect", "none", "first-found"));
            rt.block_on(async {
                d.init(&[]).await.unwrap();
                d.keep_node_address_in_background();
            });
            let address = || {
                let nodes = etcd.list_json(NODES);
                nodes[0].1["spec"]["bgp"]["ipv4Address"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            };
            assert_eq!(address(), "10.1.0.7/20");
            ip(&["addr", "del", "10.1.0.7/20", "dev", "eth1"]);
            add_address("eth1", "10.1.0.8/24");
            common::wait_until(
                "the new address on the Node",
                Duration::from_secs(10),
                || {
                    let a = address();
                    (a == "10.1.0.8/24").then_some(()).ok_or(a)
                },
            );
            drop(rt);
        },
    );
}

// startup.go, configureIPsAndSubnets and configureAndCheckIPAddressSubnetsErr: with IP and
// IP6 `none` nothing is written and an empty BGP spec is left out; an address already there
// stays.
#[test]
fn none_writes_nothing_and_leaves_an_address_there() {
    in_netns("none_writes_nothing_and_leaves_an_address_there", || {
        typical_host();
        let etcd = Etcd::start();
        let store: Arc<dyn Datastore> = Arc::new(etcd.store());
        block_on(async {
            driver(store.clone(), "h1", "none", "none", "")
                .init(&[])
                .await
                .unwrap();
            let (n, _) = node(store.as_ref(), "h1").await;
            assert!(n["spec"].get("bgp").is_none(), "{n}");
            put_node(
                store.as_ref(),
                "h2",
                json!({"bgp": {"ipv4Address": "10.9.9.9/24"}}),
            )
            .await;
            let check = driver(store.clone(), "h2", "none", "none", "")
                .check_node_address()
                .await
                .unwrap();
            assert!(!check.written);
            assert_eq!(
                node(store.as_ref(), "h2").await.0["spec"]["bgp"]["ipv4Address"],
                "10.9.9.9/24"
            );
            // Positive control: autodetect on the same host writes.
            driver(store.clone(), "h2", "autodetect", "none", "")
                .check_node_address()
                .await
                .unwrap();
            assert_eq!(
                node(store.as_ref(), "h2").await.0["spec"]["bgp"]["ipv4Address"],
                "10.1.0.7/20"
            );
        });
    });
}

// startup.go, checkConflictingNodes and clearNodeIPs: an address another Node has is not
// written (calico-node exits; the plugin records why on its Node); an autodetected old
// address is cleared, a configured one kept; once the other Node is gone it is written.
#[test]
fn an_address_another_node_has_is_not_written() {
    in_netns("an_address_another_node_has_is_not_written", || {
        typical_host();
        let etcd = Etcd::start();
        let store: Arc<dyn Datastore> = Arc::new(etcd.store());
        block_on(async {
            let s = store.as_ref();
            put_node(
                s,
                "other",
                json!({"bgp": {"ipv4Address": "10.0.0.5/16", "asNumber": 64512}}),
            )
            .await;
            let why = "IPv4 address 10.0.0.5/24 is already Node other's: not written";

            // A new Node: no address, and the conflict recorded.
            let d = driver(store.clone(), "h1", "autodetect", "none", "interface=eth0");
            d.init(&[]).await.unwrap();
            let (n, rev) = node(s, "h1").await;
            assert!(n["spec"].get("bgp").is_none(), "{n}");
            assert_eq!(
                n["metadata"]["annotations"][ADDRESS_CONFLICT_ANNOTATION], why,
                "{n}"
            );
            // Every check finds it again, and writes nothing.
            let check = d.check_node_address().await.unwrap();
            assert_eq!(
                (check.written, check.conflict.as_deref()),
                (false, Some(why))
            );
            assert_eq!(node(s, "h1").await.1, rev);

            // An autodetected old address goes (it is no longer this host's).
            put_node(
                s,
                "h2",
                json!({"bgp": {"ipv4Address": "10.0.0.9/24", "asNumber": 65001}}),
            )
            .await;
            driver(store.clone(), "h2", "autodetect", "none", "interface=eth0")
                .check_node_address()
                .await
                .unwrap();
            let (n, _) = node(s, "h2").await;
            assert_eq!(n["spec"]["bgp"], json!({"asNumber": 65001}), "{n}");
            // A configured one stays.
            put_node(s, "h3", json!({"bgp": {"ipv4Address": "10.0.0.9/24"}})).await;
            driver(store.clone(), "h3", "10.0.0.5", "none", "")
                .check_node_address()
                .await
                .unwrap();
            let (n, _) = node(s, "h3").await;
            assert_eq!(n["spec"]["bgp"]["ipv4Address"], "10.0.0.9/24", "{n}");
            assert_eq!(
                n["metadata"]["annotations"][ADDRESS_CONFLICT_ANNOTATION], why,
                "{n}"
            );

            // DISABLE_NODE_IP_CHECK=true writes it all the same.
            let mut unchecked = DriverSettings::new("h4");
            unchecked.node_address = NodeAddressConfig {
                ipv4: IpSetting::Autodetect,
                check_conflicts: false,
                ..NodeAddressConfig::off()
            };
            calico_libnetwork::driver::init::ensure_node(s, "h4")
                .await
                .unwrap();
            Driver::new(store.clone(), unchecked)
                .check_node_address()
                .await
                .unwrap();
            assert_eq!(
                node(s, "h4").await.0["spec"]["bgp"]["ipv4Address"],
                "10.1.0.7/20"
            );

            // The other Node gone: written at the next check, the record removed.
            s.delete(&format!("{NODES}other"), None).await.unwrap();
            let check = d.check_node_address().await.unwrap();
            assert!(check.written && check.conflict.is_none(), "{check:?}");
            let (n, _) = node(s, "h1").await;
            assert_eq!(
                n["spec"]["bgp"],
                json!({"ipv4Address": "10.0.0.5/24"}),
                "{n}"
            );
            assert!(n["metadata"].get("annotations").is_none(), "{n}");
        });
    });
}

// startup.go, checkConflictingNodes (calico-node logs and exits, to be restarted into the
// same exit): the running plugin logs an error at every check and `status` reports it until
// the other Node is gone; then the address is written and status is clean.
#[test]
fn status_reports_an_address_clash_until_it_is_gone() {
    in_netns("status_reports_an_address_clash_until_it_is_gone", || {
        typical_host();
        let etcd = Etcd::start();
        block_on(put_node(
            &etcd.store(),
            "other",
            json!({"bgp": {"ipv4Address": "10.1.0.7/24"}}),
        ));
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("calico.sock");
        let log = dir.path().join("plugin.log");
        let bin = |args: &[&str]| {
            let mut c = std::process::Command::new(BIN);
            c.env_clear()
                .env("PATH", common::host::PATH)
                .env("ETCD_ENDPOINTS", etcd.endpoint())
                .env("NODENAME", "h1")
                .env("CALICO_NODENAME_FILE", common::NO_NODENAME_FILE)
                .env("CALICO_LIBNETWORK_SOCKET", &socket)
                .env("CALICO_LIBNETWORK_DATAPLANE", "off")
                .env(
                    "CALICO_LIBNETWORK_DOCKER_HOST",
                    "unix:///nonexistent/docker.sock",
                )
                .env("CALICO_IPV4POOL_CIDR", "10.66.0.0/16")
                .env("AUTODETECT_POLL_INTERVAL", "300ms")
                .args(args);
            c
        };
        let status = || {
            let (code, out, err) = common::host::code_out_err(&mut bin(&["status", "-o", "json"]));
            let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
            (code, v)
        };
        let mut plugin = common::ChildGuard::new(common::host::spawn_logged(
            bin(&[]),
            &log,
            libc::SIGKILL,
            "calico-libnetwork",
        ));
        let errors = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("ERROR") && l.contains("is already Node other's"))
                .count()
        };
        // At start and at every check after it.
        common::wait_until(
            "the clash logged at two checks",
            Duration::from_secs(20),
            || {
                (errors() >= 2)
                    .then_some(())
                    .ok_or_else(|| common::host::log_tail(&log, 20))
            },
        );
        let (code, st) = status();
        assert_eq!(code, 1, "{st:#}");
        assert_eq!(st["node_address"]["ipv4"], "", "{st:#}");
        assert_eq!(
            st["node_address"]["conflict"],
            "IPv4 address 10.1.0.7/20 is already Node other's: not written"
        );
        let problems = st["problems"].as_array().unwrap();
        assert!(
            problems.iter().any(|p| p
                .as_str()
                .unwrap()
                .contains("10.1.0.7/20 is already Node other's")),
            "{st:#}"
        );
        let (_, table, _) = common::host::code_out_err(&mut bin(&["status"]));
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("address") && l.contains("FAIL")),
            "{table}"
        );

        // The other Node gone: the next check writes the address, status is clean.
        block_on(etcd.store().delete(&format!("{NODES}other"), None)).unwrap();
        common::wait_until("the address on the Node", Duration::from_secs(10), || {
            let n = etcd.list_json(NODES);
            let a = n[0].1["spec"]["bgp"]["ipv4Address"].clone();
            (a == "10.1.0.7/20").then_some(()).ok_or(a)
        });
        let (code, st) = status();
        assert_eq!(code, 0, "{st:#}");
        assert_eq!(
            st["node_address"],
            json!({"ipv4": "10.1.0.7/20", "ipv6": "", "conflict": null})
        );
        let (_, table, _) = common::host::code_out_err(&mut bin(&["status"]));
        assert!(
            table.lines().any(|l| l.starts_with("address")
                && l.contains("ok")
                && l.contains("IPv4 10.1.0.7/20, IPv6 none")),
            "{table}"
        );
        assert!(plugin.stop().success());
    });
}

// startup.go, checkConflictingNodes warns that a changed address "could happen if there are
// multiple nodes with the same name": the plugin knows (the machine-id it records on the
// Node), and the second machine does not overwrite the first one's address.
#[test]
fn a_second_machine_under_the_node_name_does_not_overwrite_its_address() {
    in_netns(
        "a_second_machine_under_the_node_name_does_not_overwrite_its_address",
        || {
            typical_host();
            let etcd = Etcd::start();
            let store: Arc<dyn Datastore> = Arc::new(etcd.store());
            let machine = |id: &str, method: &str| {
                let mut s = DriverSettings::new("twin");
                s.machine_id = Some(id.to_string());
                s.node_address = NodeAddressConfig {
                    ipv4: IpSetting::Autodetect,
                    ipv4_method: Method::parse(method, IpVersion::V4).unwrap(),
                    ..NodeAddressConfig::off()
                };
                Driver::new(store.clone(), s)
            };
            block_on(async {
                let first = "0123456789abcdef0123456789abcdef";
                machine(first, "interface=eth0").init(&[]).await.unwrap();
                let address = || async {
                    node(store.as_ref(), "twin").await.0["spec"]["bgp"]["ipv4Address"].clone()
                };
                assert_eq!(address().await, "10.0.0.5/24");
                let second = machine("fedcba9876543210fedcba9876543210", "interface=eth1");
                second.init(&[]).await.unwrap();
                second.check_node_address().await.unwrap();
                assert_eq!(address().await, "10.0.0.5/24");
                // Positive control: the first machine, finding another address, writes it.
                machine(first, "interface=eth1").init(&[]).await.unwrap();
                assert_eq!(address().await, "10.1.0.7/20");
            });
        },
    );
}
