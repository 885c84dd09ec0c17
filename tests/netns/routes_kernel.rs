//! The kernel layer of routes between hosts (`dataplane::routes`) against the real kernel.
//!
//! Each test makes its own named network namespaces (`ip netns add`, one, or two joined by
//! a veth "underlay" where packets must cross), runs the code under test inside them on a
//! thread of their own, checks with `ip`/`bridge`/`ping` there, and deletes them on drop
//! (also when it fails half-way). Needs root: without it the tests fail, unless
//! `CALICO_TEST_ALLOW_SKIP=1`, in which case they say SKIPPED loudly and pass.
//!
//! Only veth, bridge and vxlan link kinds are assumed (some kernels have no `dummy`):
//! an underlay is a veth pair with both ends up, a workload address sits on `lo`.

use crate::common;

use std::future::Future;
use std::net::IpAddr;
use std::process::Command;

use calico_libnetwork::dataplane::routes::{
    IPIP_DEVICE, VXLAN_DEVICE, VXLAN_PORT, VXLAN_V6_DEVICE, VXLAN_VNI,
};
use calico_libnetwork::dataplane::{
    format_mac, vxlan_mac, IpipDevice, Netlink, OwnedRoute, VxlanDevice,
};
use ipnet::IpNet;
use serde_json::Value;

/// Prefix of this file's namespaces: `<prefix><pid>x<n><tag>`.
const NS_PREFIX: &str = "calrk";

/// A named network namespace, deleted on drop.
struct Ns {
    name: String,
}

impl Ns {
    fn new(tag: &str) -> Ns {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        sweep_leftovers();
        let name = format!(
            "{NS_PREFIX}{}x{}{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        host_ok("ip", &["netns", "add", &name]);
        let ns = Ns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` with a netlink socket of this namespace, on a thread inside it.
    fn nl<T, Fut>(&self, f: impl FnOnce(Netlink) -> Fut + Send + 'static) -> T
    where
        T: Send + 'static,
        Fut: Future<Output = T>,
    {
        common::netns::enter(&format!("/run/netns/{}", self.name), move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build runtime")
                .block_on(async move { f(Netlink::new().expect("open netlink")).await })
        })
    }

    /// `prog args...` inside the namespace: (success, stdout + stderr).
    fn exec(&self, prog: &str, args: &[&str]) -> (bool, String) {
        let mut all = vec!["netns", "exec", self.name.as_str(), prog];
        all.extend_from_slice(args);
        host_run("ip", &all)
    }

    /// `ip -n <ns> args...`, which must succeed; its stdout.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        host_ok("ip", &all)
    }

    /// `ip -j -n <ns> args...` as a JSON array (empty when ip fails or prints nothing).
    fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["-j", "-n", self.name.as_str()];
        all.extend_from_slice(args);
        let (ok, out) = host_run("ip", &all);
        if !ok || out.trim().is_empty() {
            return Vec::new();
        }
        match serde_json::from_str(&out).expect("ip -j prints json") {
            Value::Array(items) => items,
            other => panic!("ip -j {args:?}: not an array: {other}"),
        }
    }

    /// `ip -d link show dev <dev>`, which must succeed.
    fn link_details(&self, dev: &str) -> String {
        self.ip(&["-d", "link", "show", "dev", dev])
    }

    fn link_exists(&self, dev: &str) -> bool {
        !self.ip_json(&["link", "show", "dev", dev]).is_empty()
    }

    /// The addresses of `dev` as `addr/len`.
    fn addresses(&self, dev: &str) -> Vec<String> {
        let links = self.ip_json(&["addr", "show", "dev", dev]);
        let Some(link) = links.first() else {
            return Vec::new();
        };
        link["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["scope"] != "link")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    /// A veth pair `name` <-> `name`p in this namespace, both up (so `name` has carrier).
    fn veth(&self, name: &str) {
        let peer = format!("{name}p");
        self.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
        self.ip(&["link", "set", &peer, "up"]);
        self.ip(&["link", "set", name, "up"]);
    }

    /// True when one ping gets an answer within a second.
    fn ping_once(&self, to: &str) -> bool {
        self.exec("ping", &["-c", "1", "-W", "1", to]).0
    }

    /// One ping, retried twice (the first one may race a link coming up).
    fn ping(&self, to: &str) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..3 {
            match self.exec("ping", &["-c", "1", "-W", "2", to]) {
                (true, _) => return Ok(()),
                (false, out) => last = out,
            }
        }
        Err(format!("{} -> {to}: {last}", self.name))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let (ok, out) = host_run("ip", &["netns", "del", &self.name]);
        if !ok {
            eprintln!("ip netns del {}: {}", self.name, out.trim());
        }
    }
}

/// Deletes this file's namespaces left by test processes that are gone (killed before
/// their drop ran).
fn sweep_leftovers() {
    let (_, list) = host_run("ip", &["netns", "list"]);
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("deleting namespace {name} left by test process {pid}");
            let _ = host_run("ip", &["netns", "del", name]);
        }
    }
}

fn host_run(prog: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn host_ok(prog: &str, args: &[&str]) -> String {
    let (ok, out) = host_run(prog, args);
    assert!(ok, "{prog} {}: {out}", args.join(" "));
    out
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One host of a two-namespace test.
#[derive(Clone, Debug)]
struct Side {
    node: &'static str,
    /// Its address on the veth underlay (`eth0`, /24).
    underlay: &'static str,
    /// Its tunnel address (first of its block).
    tunnel: &'static str,
    /// Its block.
    block: &'static str,
    /// A "workload" address in its block, on `lo`.
    workload: &'static str,
}

impl Side {
    fn mac(&self) -> [u8; 6] {
        vxlan_mac(self.node, false)
    }

    fn vxlan(&self) -> VxlanDevice {
        VxlanDevice {
            name: VXLAN_DEVICE.into(),
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            local: ip(self.underlay),
            parent: "eth0".into(),
            mac: self.mac(),
            mtu: UNDERLAY_MTU - 50,
            address: Some(ip(self.tunnel)),
        }
    }
}

const UNDERLAY_MTU: u32 = 1500;

const A: Side = Side {
    node: "node-a",
    underlay: "10.99.0.1",
    tunnel: "10.65.0.1",
    block: "10.65.0.0/26",
    workload: "10.65.0.10",
};

const B: Side = Side {
    node: "node-b",
    underlay: "10.99.0.2",
    tunnel: "10.65.1.1",
    block: "10.65.1.0/26",
    workload: "10.65.1.10",
};

/// Two namespaces joined by a veth `eth0` <-> `eth0` (10.99.0.1/24, 10.99.0.2/24), each
/// with its workload address on `lo`.
fn underlay_pair(tag: &str) -> (Ns, Ns) {
    let a = Ns::new(&format!("{tag}a"));
    let b = Ns::new(&format!("{tag}b"));
    let mtu = UNDERLAY_MTU.to_string();
    a.ip(&[
        "link", "add", "eth0", "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu", &mtu,
        "netns", &b.name,
    ]);
    for (ns, side) in [(&a, &A), (&b, &B)] {
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", side.underlay),
            "dev",
            "eth0",
        ]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["addr", "add", &format!("{}/32", side.workload), "dev", "lo"]);
    }
    (a, b)
}

/// `me`'s VXLAN device, and neighbour, FDB entry and onlink route for `peer`; the device's
/// ifindex.
fn wire_vxlan(ns: &Ns, me: &Side, peer: &Side) -> u32 {
    let (me, peer) = (me.clone(), peer.clone());
    ns.nl(move |nl| async move {
        let index = nl.ensure_vxlan_device(&me.vxlan()).await.unwrap();
        nl.replace_neighbour(VXLAN_DEVICE, ip(peer.tunnel), peer.mac())
            .await
            .unwrap();
        nl.replace_fdb(VXLAN_DEVICE, peer.mac(), ip(peer.underlay))
            .await
            .unwrap();
        let route = OwnedRoute::via(net(peer.block), ip(peer.tunnel), VXLAN_DEVICE, true);
        nl.replace_owned_route(&route).await.unwrap();
        index
    })
}

/// Every route of both families in the main table that is not ours, as text (but the
/// link-local prefixes, which IPv6 adds whenever a link gets carrier).
fn foreign_routes(ns: &Ns) -> Vec<String> {
    let mut out: Vec<String> = ["-4", "-6"]
        .iter()
        .flat_map(|family| ns.ip_json(&[family, "route", "show", "table", "main"]))
        .filter(|r| r["protocol"] != "81" && r["dst"] != "fe80::/64")
        .map(|r| r.to_string())
        .collect();
    out.sort();
    out
}

/// Our routes as `ip -j route show proto 81` has them (both families).
fn ip_owned_routes(ns: &Ns) -> Vec<Value> {
    ["-4", "-6"]
        .iter()
        .flat_map(|family| ns.ip_json(&[family, "route", "show", "table", "main", "proto", "81"]))
        .collect()
}

/// `ip -d link show` output without the leading `<ifindex>: `.
fn without_index(details: &str) -> &str {
    details.split_once(": ").map_or(details, |(_, rest)| rest)
}

fn has_flag(route: &Value, flag: &str) -> bool {
    route["flags"]
        .as_array()
        .is_some_and(|flags| flags.iter().any(|f| f == flag))
}

#[test]
fn owned_routes_are_listed_replaced_and_deleted_exactly() {
    const TEST: &str = "owned_routes_are_listed_replaced_and_deleted_exactly";
    if !common::require_root(TEST) {
        return;
    }
    let ns = Ns::new("own");
    ns.veth("dum0");
    ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "dum0"]);
    ns.ip(&["addr", "add", "fd99::1/64", "dev", "dum0", "nodad"]);
    // Other programs' routes (Felix's protocol 80, static, boot) next to ours.
    for args in [
        &[
            "-4",
            "route",
            "add",
            "10.70.9.0/26",
            "via",
            "10.99.0.2",
            "proto",
            "static",
        ][..],
        &[
            "-4",
            "route",
            "add",
            "10.70.7.0/26",
            "via",
            "10.99.0.3",
            "proto",
            "80",
        ],
        &["-4", "route", "add", "blackhole", "10.70.8.0/26"],
        &[
            "-6",
            "route",
            "add",
            "blackhole",
            "fd70::300/122",
            "proto",
            "static",
        ],
        &[
            "-6",
            "route",
            "add",
            "fd70::3c0/122",
            "via",
            "fd99::3",
            "proto",
            "80",
        ],
    ] {
        ns.ip(args);
    }
    let foreign = foreign_routes(&ns);

    let mut wanted = vec![
        OwnedRoute::blackhole(net("10.70.0.0/26")),
        OwnedRoute::blackhole(net("fd70::/122")),
        OwnedRoute::via(net("10.70.1.0/26"), ip("10.99.0.2"), "dum0", false),
        OwnedRoute::via(net("10.70.2.0/26"), ip("10.98.0.7"), "dum0", true),
        OwnedRoute::via(net("fd70::40/122"), ip("fd99::2"), "dum0", false),
        OwnedRoute::via(net("fd70::80/122"), ip("fd98::7"), "dum0", true),
    ];
    wanted.sort();
    let listed = {
        let wanted = wanted.clone();
        ns.nl(move |nl| async move {
            let none = nl.list_owned_routes().await.unwrap();
            assert!(none.is_empty(), "nothing of ours yet: {none:?}");
            // Twice: replace is idempotent.
            for _ in 0..2 {
                for route in &wanted {
                    nl.replace_owned_route(route).await.unwrap();
                }
            }
            nl.list_owned_routes().await.unwrap()
        })
    };
    assert_eq!(listed, wanted);
    let shown = ip_owned_routes(&ns);
    assert_eq!(shown.len(), 6, "{shown:#?}");
    let find = |dst: &str| {
        shown
            .iter()
            .find(|r| r["dst"] == dst)
            .unwrap_or_else(|| panic!("{dst} in {shown:#?}"))
    };
    assert_eq!(find("10.70.0.0/26")["type"], "blackhole");
    assert_eq!(find("fd70::/122")["type"], "blackhole");
    assert_eq!(find("10.70.2.0/26")["gateway"], "10.98.0.7");
    assert!(has_flag(find("10.70.2.0/26"), "onlink"));
    assert!(has_flag(find("fd70::80/122"), "onlink"));
    assert!(!has_flag(find("10.70.1.0/26"), "onlink"));
    assert_eq!(
        foreign_routes(&ns),
        foreign,
        "other programs' routes untouched"
    );

    // Replace changes a gateway, or the kind, in place: still one route per prefix.
    let changed = vec![
        OwnedRoute::via(net("10.70.0.0/26"), ip("10.99.0.4"), "dum0", false),
        OwnedRoute::via(net("10.70.1.0/26"), ip("10.99.0.3"), "dum0", false),
        OwnedRoute::via(net("fd70::/122"), ip("fd99::4"), "dum0", false),
        OwnedRoute::via(net("fd70::40/122"), ip("fd99::3"), "dum0", false),
    ];
    let mut now: Vec<OwnedRoute> = wanted
        .iter()
        .filter(|r| !changed.iter().any(|c| c.dest == r.dest))
        .chain(changed.iter())
        .cloned()
        .collect();
    now.sort();
    let listed = {
        let changed = changed.clone();
        ns.nl(move |nl| async move {
            for route in &changed {
                nl.replace_owned_route(route).await.unwrap();
            }
            nl.list_owned_routes().await.unwrap()
        })
    };
    assert_eq!(listed, now);
    assert_eq!(ip_owned_routes(&ns).len(), 6, "{:#?}", ip_owned_routes(&ns));

    // Deletes take exactly the route named: not a route of ours with another kind or
    // gateway on the same prefix, never another program's.
    let listed = {
        let now = now.clone();
        ns.nl(move |nl| async move {
            for stale in [
                OwnedRoute::blackhole(net("10.70.0.0/26")),
                OwnedRoute::blackhole(net("fd70::/122")),
                OwnedRoute::via(net("10.70.1.0/26"), ip("10.99.0.2"), "dum0", false),
                OwnedRoute::via(net("fd70::40/122"), ip("fd99::2"), "dum0", false),
                // Other programs' routes, as if they were ours.
                OwnedRoute::via(net("10.70.9.0/26"), ip("10.99.0.2"), "dum0", false),
                OwnedRoute::via(net("10.70.7.0/26"), ip("10.99.0.3"), "dum0", false),
                OwnedRoute::blackhole(net("10.70.8.0/26")),
                OwnedRoute::blackhole(net("fd70::300/122")),
                OwnedRoute::via(net("fd70::3c0/122"), ip("fd99::3"), "dum0", false),
            ] {
                nl.delete_owned_route(&stale).await.unwrap();
            }
            assert_eq!(nl.list_owned_routes().await.unwrap(), now);
            // Idempotent: each one twice.
            for route in &now {
                nl.delete_owned_route(route).await.unwrap();
                nl.delete_owned_route(route).await.unwrap();
            }
            // A missing device: its routes went with it.
            let gone = OwnedRoute::via(net("10.70.1.0/26"), ip("10.99.0.3"), "nosuch0", false);
            nl.delete_owned_route(&gone).await.unwrap();
            // A route through a missing device cannot be added.
            assert!(nl
                .replace_owned_route(&gone)
                .await
                .unwrap_err()
                .is_not_found());
            nl.list_owned_routes().await.unwrap()
        })
    };
    assert!(listed.is_empty(), "{listed:?}");
    assert_eq!(ip_owned_routes(&ns), Vec::<Value>::new());
    assert_eq!(
        foreign_routes(&ns),
        foreign,
        "other programs' routes untouched"
    );
}

#[test]
fn vxlan_carries_traffic_between_two_namespaces() {
    const TEST: &str = "vxlan_carries_traffic_between_two_namespaces";
    if !common::require_root(TEST) {
        return;
    }
    let (a, b) = underlay_pair("vx");
    let index_a = wire_vxlan(&a, &A, &B);
    wire_vxlan(&b, &B, &A);
    a.ping(B.workload).unwrap();
    b.ping(A.workload).unwrap();

    for (ns, side) in [(&a, &A), (&b, &B)] {
        let details = ns.link_details(VXLAN_DEVICE);
        for want in [
            "vxlan id 4096 ".to_string(),
            "dstport 4789 ".into(),
            " nolearning ".into(),
            format!(" mtu {} ", UNDERLAY_MTU - 50),
            format!("local {} ", side.underlay),
            "dev eth0 ".into(),
            format!("link/ether {} ", format_mac(side.mac())),
            ",UP".into(),
        ] {
            assert!(details.contains(&want), "{want:?} in {details}");
        }
        assert_eq!(
            ns.addresses(VXLAN_DEVICE),
            vec![format!("{}/32", side.tunnel)]
        );
    }
    let peer_mac = format_mac(B.mac());
    let neigh = a.ip(&["neigh", "show", "dev", VXLAN_DEVICE]);
    assert!(
        neigh.contains(&format!("{} lladdr {peer_mac} PERMANENT", B.tunnel)),
        "{neigh}"
    );
    let (_, fdb) = a.exec("bridge", &["fdb", "show", "dev", VXLAN_DEVICE]);
    assert!(
        fdb.contains(&format!("{peer_mac} dst {} self permanent", B.underlay)),
        "{fdb}"
    );
    let route = a.ip(&["route", "show", B.block]);
    assert!(
        route.contains(&format!(
            "via {} dev {VXLAN_DEVICE} proto 81 onlink",
            B.tunnel
        )),
        "{route}"
    );

    // Ensure again: nothing changes, same device.
    let details = a.link_details(VXLAN_DEVICE);
    assert_eq!(
        a.nl(|nl| async move { nl.ensure_vxlan_device(&A.vxlan()).await.unwrap() }),
        index_a
    );
    assert_eq!(a.link_details(VXLAN_DEVICE), details);

    // MTU, MAC, learning, addresses: fixed in place (same ifindex).
    a.ip(&["link", "set", VXLAN_DEVICE, "mtu", "1300"]);
    a.ip(&["link", "set", VXLAN_DEVICE, "address", "02:00:00:00:00:01"]);
    a.ip(&["link", "set", VXLAN_DEVICE, "type", "vxlan", "learning"]);
    a.ip(&["addr", "add", "10.65.0.99/24", "dev", VXLAN_DEVICE]);
    a.ip(&[
        "addr",
        "del",
        &format!("{}/32", A.tunnel),
        "dev",
        VXLAN_DEVICE,
    ]);
    let broken = a.link_details(VXLAN_DEVICE);
    assert!(
        !broken.contains(" nolearning ") && broken.contains(" mtu 1300 "),
        "{broken}"
    );
    assert!(!b.ping_once(A.workload), "B's FDB names A's real MAC");
    assert_eq!(wire_vxlan(&a, &A, &B), index_a);
    assert_eq!(a.link_details(VXLAN_DEVICE), details);
    assert_eq!(a.addresses(VXLAN_DEVICE), vec![format!("{}/32", A.tunnel)]);
    a.ping(B.workload).unwrap();
    b.ping(A.workload).unwrap();
    // Down (which drops the device's routes and neighbours): up again, and the next
    // pass of the caller puts those back.
    a.ip(&["link", "set", VXLAN_DEVICE, "down", "mtu", "1400"]);
    assert!(!a.ping_once(B.workload));
    assert_eq!(wire_vxlan(&a, &A, &B), index_a);
    assert_eq!(a.link_details(VXLAN_DEVICE), details);
    a.ping(B.workload).unwrap();
    b.ping(A.workload).unwrap();

    // What cannot change in place (here the port) means a new device, as Felix does;
    // its neighbours, FDB entries and routes went with the old one.
    let moved = a.nl(|nl| async move {
        let other_port = VxlanDevice {
            port: 4790,
            ..A.vxlan()
        };
        let index = nl.ensure_vxlan_device(&other_port).await.unwrap();
        (
            index,
            nl.list_neighbours(VXLAN_DEVICE).await.unwrap(),
            nl.list_fdb(VXLAN_DEVICE).await.unwrap(),
            nl.list_owned_routes().await.unwrap(),
        )
    });
    assert_ne!(moved.0, index_a);
    assert!(
        moved.1.is_empty() && moved.2.is_empty() && moved.3.is_empty(),
        "{moved:?}"
    );
    assert!(a.link_details(VXLAN_DEVICE).contains("dstport 4790 "));
    assert!(!a.ping_once(B.workload), "no route any more");
    let index_a2 = wire_vxlan(&a, &A, &B);
    assert_ne!(index_a2, moved.0, "back to port 4789: recreated again");
    assert_eq!(
        without_index(&a.link_details(VXLAN_DEVICE)),
        without_index(&details)
    );
    a.ping(B.workload).unwrap();
    b.ping(A.workload).unwrap();

    // Clean-up: deleting the device is idempotent and takes its routes along.
    for ns in [&a, &b] {
        ns.nl(|nl| async move {
            nl.delete_link(VXLAN_DEVICE).await.unwrap();
            nl.delete_link(VXLAN_DEVICE).await.unwrap();
            assert!(nl.list_owned_routes().await.unwrap().is_empty());
        });
        assert!(!ns.link_exists(VXLAN_DEVICE));
    }
}

/// True when the kernel can make IP-in-IP devices: `modprobe ipip` works, or ipip is
/// built in (or already loaded).
fn ipip_available() -> bool {
    let (loaded, out) = host_run("modprobe", &["ipip"]);
    if loaded || std::path::Path::new("/sys/module/ipip").exists() {
        return true;
    }
    common::say_skipped(&format!(
        "ipip_carries_traffic_between_two_namespaces: `modprobe ipip` failed and the kernel \
         has no ipip built in, so IP-in-IP cannot be tested here: {}",
        out.trim()
    ));
    false
}

#[test]
fn ipip_carries_traffic_between_two_namespaces() {
    const TEST: &str = "ipip_carries_traffic_between_two_namespaces";
    if !common::require_root(TEST) || !ipip_available() {
        return;
    }
    let (a, b) = underlay_pair("ipip");
    let mtu = UNDERLAY_MTU - 20;
    let wire = |ns: &Ns, me: &Side, peer: &Side| {
        let (me, peer) = (me.clone(), peer.clone());
        ns.nl(move |nl| async move {
            let device = IpipDevice {
                mtu,
                address: Some(ip(me.tunnel)),
            };
            let index = nl.ensure_ipip_device(&device).await.unwrap();
            let route = OwnedRoute::via(net(peer.block), ip(peer.underlay), IPIP_DEVICE, true);
            nl.replace_owned_route(&route).await.unwrap();
            index
        })
    };
    let index_a = wire(&a, &A, &B);
    wire(&b, &B, &A);
    a.ping(B.workload).unwrap();
    b.ping(A.workload).unwrap();

    let details = a.link_details(IPIP_DEVICE);
    for want in [format!(" mtu {mtu} "), "ipip ".into(), ",UP".into()] {
        assert!(details.contains(&want), "{want:?} in {details}");
    }
    assert_eq!(a.addresses(IPIP_DEVICE), vec![format!("{}/32", A.tunnel)]);
    let route = a.ip(&["route", "show", B.block]);
    assert!(
        route.contains(&format!(
            "via {} dev {IPIP_DEVICE} proto 81 onlink",
            B.underlay
        )),
        "{route}"
    );

    // Idempotent; MTU, address and down fixed in place.
    assert_eq!(wire(&a, &A, &B), index_a);
    a.ip(&["link", "set", IPIP_DEVICE, "down", "mtu", "1300"]);
    a.ip(&["addr", "add", "10.65.0.99/24", "dev", IPIP_DEVICE]);
    assert_eq!(wire(&a, &A, &B), index_a);
    assert_eq!(a.link_details(IPIP_DEVICE), details);
    assert_eq!(a.addresses(IPIP_DEVICE), vec![format!("{}/32", A.tunnel)]);
    a.ping(B.workload).unwrap();

    // No address wanted: none left (tunl0 itself cannot be deleted, it is the fallback).
    for ns in [&a, &b] {
        ns.nl(move |nl| async move {
            nl.ensure_ipip_device(&IpipDevice { mtu, address: None })
                .await
                .unwrap();
        });
        assert_eq!(ns.addresses(IPIP_DEVICE), Vec::<String>::new());
    }
}

/// A new tunnel address (the Node's changed) leaves the routes and neighbours through the
/// device in place, both families, with no pass of the caller to put them back: the new
/// address goes on before the old one comes off. The control at the end shows the kernel
/// behaviour that order avoids.
#[test]
fn a_new_tunnel_address_keeps_the_routes() {
    const TEST: &str = "a_new_tunnel_address_keeps_the_routes";
    if !common::require_root(TEST) {
        return;
    }
    let ns = Ns::new("readdr");
    ns.veth("ul0");
    ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "ul0"]);
    ns.ip(&["addr", "add", "fd99::1/64", "dev", "ul0", "nodad"]);
    let v4 = VxlanDevice {
        name: VXLAN_DEVICE.into(),
        vni: VXLAN_VNI,
        port: VXLAN_PORT,
        local: ip("10.99.0.1"),
        parent: "ul0".into(),
        mac: vxlan_mac("node-a", false),
        mtu: 1450,
        address: Some(ip("10.65.0.1")),
    };
    let v6 = VxlanDevice {
        name: VXLAN_V6_DEVICE.into(),
        local: ip("fd99::1"),
        mac: vxlan_mac("node-a", true),
        mtu: 1430,
        address: Some(ip("fd65::1")),
        ..v4.clone()
    };
    let peer = vxlan_mac("node-b", false);
    let mut routes = vec![
        OwnedRoute::via(net("10.65.1.0/26"), ip("10.65.1.1"), VXLAN_DEVICE, true),
        OwnedRoute::via(net("fd65:1::/122"), ip("fd65:1::1"), VXLAN_V6_DEVICE, true),
    ];
    routes.sort();
    let neighbours = (vec![(ip("10.65.1.1"), peer)], vec![(ip("fd65:1::1"), peer)]);
    let indexes = {
        let (v4, v6, routes) = (v4.clone(), v6.clone(), routes.clone());
        ns.nl(move |nl| async move {
            let indexes = (
                nl.ensure_vxlan_device(&v4).await.unwrap(),
                nl.ensure_vxlan_device(&v6).await.unwrap(),
            );
            nl.replace_neighbour(VXLAN_DEVICE, ip("10.65.1.1"), peer)
                .await
                .unwrap();
            nl.replace_neighbour(VXLAN_V6_DEVICE, ip("fd65:1::1"), peer)
                .await
                .unwrap();
            for r in &routes {
                nl.replace_owned_route(r).await.unwrap();
            }
            indexes
        })
    };
    // Ensures the devices with these addresses; what the kernel then has, untouched.
    let readdress = |a4: &str, a6: &str| {
        let v4 = VxlanDevice {
            address: Some(ip(a4)),
            ..v4.clone()
        };
        let v6 = VxlanDevice {
            address: Some(ip(a6)),
            ..v6.clone()
        };
        ns.nl(move |nl| async move {
            (
                (
                    nl.ensure_vxlan_device(&v4).await.unwrap(),
                    nl.ensure_vxlan_device(&v6).await.unwrap(),
                ),
                nl.list_owned_routes().await.unwrap(),
                (
                    nl.list_neighbours(VXLAN_DEVICE).await.unwrap(),
                    nl.list_neighbours(VXLAN_V6_DEVICE).await.unwrap(),
                ),
            )
        })
    };

    // The Node's tunnel addresses change.
    let (same, after, neigh) = readdress("10.65.0.2", "fd65::2");
    assert_eq!(same, indexes, "changed in place, not recreated");
    assert_eq!(ns.addresses(VXLAN_DEVICE), vec!["10.65.0.2/32".to_string()]);
    assert_eq!(
        ns.addresses(VXLAN_V6_DEVICE),
        vec!["fd65::2/128".to_string()]
    );
    assert_eq!(after, routes, "routes through the devices kept");
    assert_eq!(neigh, neighbours, "neighbours kept");

    // The wanted address already there with another prefix length: IPv4 takes both side by
    // side; IPv6 refuses the second (EEXIST), so that one comes off first.
    ns.ip(&["addr", "add", "10.65.0.3/24", "dev", VXLAN_DEVICE]);
    ns.ip(&["addr", "add", "fd65::3/64", "dev", VXLAN_V6_DEVICE, "nodad"]);
    let (same, after, neigh) = readdress("10.65.0.3", "fd65::3");
    assert_eq!(same, indexes);
    assert_eq!(ns.addresses(VXLAN_DEVICE), vec!["10.65.0.3/32".to_string()]);
    assert_eq!(
        ns.addresses(VXLAN_V6_DEVICE),
        vec!["fd65::3/128".to_string()]
    );
    assert_eq!(after, routes);
    assert_eq!(neigh, neighbours);

    // Control: the last IPv4 address taken off alone takes the IPv4 routes and neighbours
    // through the device with it (onlink and permanent ones too); IPv6 keeps its own.
    ns.ip(&["addr", "del", "10.65.0.3/32", "dev", VXLAN_DEVICE]);
    ns.ip(&["addr", "del", "fd65::3/128", "dev", VXLAN_V6_DEVICE]);
    let (left, neigh) = ns.nl(|nl| async move {
        (
            nl.list_owned_routes().await.unwrap(),
            (
                nl.list_neighbours(VXLAN_DEVICE).await.unwrap(),
                nl.list_neighbours(VXLAN_V6_DEVICE).await.unwrap(),
            ),
        )
    });
    let v6_routes: Vec<OwnedRoute> = routes
        .iter()
        .filter(|r| r.dest.addr().is_ipv6())
        .cloned()
        .collect();
    assert_eq!(left, v6_routes, "only the IPv6 route is left");
    assert_eq!(neigh, (vec![], neighbours.1.clone()));
}

#[test]
fn neighbours_and_fdb_entries_round_trip() {
    const TEST: &str = "neighbours_and_fdb_entries_round_trip";
    if !common::require_root(TEST) {
        return;
    }
    let ns = Ns::new("nfdb");
    ns.veth("ul0");
    ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "ul0"]);
    ns.ip(&["addr", "add", "fd99::1/64", "dev", "ul0", "nodad"]);
    // Something else under the IPv6 device's name: not a VXLAN device, so replaced.
    ns.ip(&["link", "add", VXLAN_V6_DEVICE, "type", "bridge"]);
    let v4 = VxlanDevice {
        name: VXLAN_DEVICE.into(),
        vni: VXLAN_VNI,
        port: VXLAN_PORT,
        local: ip("10.99.0.1"),
        parent: "ul0".into(),
        mac: vxlan_mac("node-a", false),
        mtu: 1450,
        address: Some(ip("10.65.0.1")),
    };
    let v6 = VxlanDevice {
        name: VXLAN_V6_DEVICE.into(),
        local: ip("fd99::1"),
        mac: vxlan_mac("node-a", true),
        mtu: 1430,
        address: Some(ip("fd65::1")),
        ..v4.clone()
    };
    {
        let (v4, v6) = (v4.clone(), v6.clone());
        ns.nl(move |nl| async move {
            nl.ensure_vxlan_device(&v4).await.unwrap();
            nl.ensure_vxlan_device(&v6).await.unwrap();
        });
    }
    let details = ns.link_details(VXLAN_V6_DEVICE);
    for want in [
        "vxlan id 4096 ".to_string(),
        "local fd99::1 ".into(),
        "dstport 4789 ".into(),
        " nolearning ".into(),
        " mtu 1430 ".into(),
        format!("link/ether {} ", format_mac(v6.mac)),
    ] {
        assert!(details.contains(&want), "{want:?} in {details}");
    }
    assert_eq!(
        ns.addresses(VXLAN_V6_DEVICE),
        vec!["fd65::1/128".to_string()]
    );

    let (m1, m2, m3) = (
        vxlan_mac("node-b", false),
        vxlan_mac("node-c", false),
        vxlan_mac("node-d", false),
    );
    // A neighbour the kernel learnt (not permanent) is not ours to list.
    ns.ip(&[
        "neigh",
        "add",
        "10.65.3.1",
        "lladdr",
        "02:00:00:00:00:03",
        "nud",
        "stale",
        "dev",
        VXLAN_DEVICE,
    ]);
    let (neigh, neigh6, after_delete) = ns.nl(move |nl| async move {
        nl.replace_neighbour(VXLAN_DEVICE, ip("10.65.1.1"), m1)
            .await
            .unwrap();
        nl.replace_neighbour(VXLAN_DEVICE, ip("10.65.2.1"), m2)
            .await
            .unwrap();
        // Replace: the MAC changes in place.
        nl.replace_neighbour(VXLAN_DEVICE, ip("10.65.1.1"), m3)
            .await
            .unwrap();
        nl.replace_neighbour(VXLAN_V6_DEVICE, ip("fd65::2"), m1)
            .await
            .unwrap();
        let neigh = nl.list_neighbours(VXLAN_DEVICE).await.unwrap();
        let neigh6 = nl.list_neighbours(VXLAN_V6_DEVICE).await.unwrap();
        for _ in 0..2 {
            nl.delete_neighbour(VXLAN_DEVICE, ip("10.65.1.1"))
                .await
                .unwrap();
            nl.delete_neighbour(VXLAN_V6_DEVICE, ip("fd65::2"))
                .await
                .unwrap();
        }
        let after_delete = (
            nl.list_neighbours(VXLAN_DEVICE).await.unwrap(),
            nl.list_neighbours(VXLAN_V6_DEVICE).await.unwrap(),
        );
        // No device: deleting is fine, listing is not found.
        nl.delete_neighbour("nosuch0", ip("10.65.1.1"))
            .await
            .unwrap();
        assert!(nl
            .list_neighbours("nosuch0")
            .await
            .unwrap_err()
            .is_not_found());
        assert!(nl
            .replace_neighbour("nosuch0", ip("10.65.1.1"), m1)
            .await
            .unwrap_err()
            .is_not_found());
        (neigh, neigh6, after_delete)
    });
    assert_eq!(neigh, vec![(ip("10.65.1.1"), m3), (ip("10.65.2.1"), m2)]);
    assert_eq!(neigh6, vec![(ip("fd65::2"), m1)]);
    assert_eq!(after_delete, (vec![(ip("10.65.2.1"), m2)], vec![]));
    let shown = ns.ip(&["neigh", "show", "dev", VXLAN_DEVICE]);
    assert!(
        shown.contains(&format!("10.65.2.1 lladdr {} PERMANENT", format_mac(m2))),
        "{shown}"
    );
    assert!(!shown.contains("10.65.1.1 "), "{shown}");

    let (fdb, shown_fdb, fdb_after, fdb6) = {
        let name = ns.name.clone();
        ns.nl(move |nl| async move {
            nl.replace_fdb(VXLAN_DEVICE, m1, ip("10.99.0.2"))
                .await
                .unwrap();
            nl.replace_fdb(VXLAN_DEVICE, m2, ip("10.99.0.3"))
                .await
                .unwrap();
            // Replace: the remote changes in place (not a second remote).
            nl.replace_fdb(VXLAN_DEVICE, m1, ip("10.99.0.4"))
                .await
                .unwrap();
            nl.replace_fdb(VXLAN_DEVICE, m1, ip("10.99.0.4"))
                .await
                .unwrap();
            let fdb = nl.list_fdb(VXLAN_DEVICE).await.unwrap();
            let (_, shown) = host_run("bridge", &["-n", &name, "fdb", "show", "dev", VXLAN_DEVICE]);
            // The old remote is not there to delete; then the real one, twice.
            nl.delete_fdb(VXLAN_DEVICE, m1, ip("10.99.0.2"))
                .await
                .unwrap();
            assert_eq!(nl.list_fdb(VXLAN_DEVICE).await.unwrap(), fdb);
            for _ in 0..2 {
                nl.delete_fdb(VXLAN_DEVICE, m1, ip("10.99.0.4"))
                    .await
                    .unwrap();
            }
            let after = nl.list_fdb(VXLAN_DEVICE).await.unwrap();
            nl.replace_fdb(VXLAN_V6_DEVICE, m3, ip("fd99::2"))
                .await
                .unwrap();
            let fdb6 = nl.list_fdb(VXLAN_V6_DEVICE).await.unwrap();
            nl.delete_fdb(VXLAN_V6_DEVICE, m3, ip("fd99::2"))
                .await
                .unwrap();
            assert!(nl.list_fdb(VXLAN_V6_DEVICE).await.unwrap().is_empty());
            nl.delete_fdb("nosuch0", m3, ip("fd99::2")).await.unwrap();
            assert!(nl.list_fdb("nosuch0").await.unwrap_err().is_not_found());
            (fdb, shown, after, fdb6)
        })
    };
    let mut want = vec![(m1, ip("10.99.0.4")), (m2, ip("10.99.0.3"))];
    want.sort();
    assert_eq!(fdb, want);
    assert!(
        shown_fdb.contains(&format!("{} dst 10.99.0.4 self permanent", format_mac(m1))),
        "{shown_fdb}"
    );
    assert!(!shown_fdb.contains("10.99.0.2"), "{shown_fdb}");
    assert_eq!(fdb_after, vec![(m2, ip("10.99.0.3"))]);
    assert_eq!(fdb6, vec![(m3, ip("fd99::2"))]);

    ns.nl(|nl| async move {
        for dev in [VXLAN_DEVICE, VXLAN_V6_DEVICE] {
            nl.delete_link(dev).await.unwrap();
            nl.delete_link(dev).await.unwrap();
        }
    });
    assert!(!ns.link_exists(VXLAN_DEVICE) && !ns.link_exists(VXLAN_V6_DEVICE));
}
