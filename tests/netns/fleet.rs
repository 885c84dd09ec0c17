//! The multi-host harness (`common::hosts::Fleet`) without dockerd: three hosts as network
//! namespaces (h1 and h2 on one segment, h3 behind a router), one etcd cluster of three
//! members, a plugin per host. Checks what the routing scenarios will stand on: the hosts
//! reach each other, every plugin allocates from a block affine to its own node, and the
//! plugins keep answering with one etcd member killed. The Docker end-to-end smoke test is
//! `docker_fleet` in the Docker tier.

use crate::common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::hosts::{Fleet, Host};
use ipnet::Ipv4Net;
use serde_json::{json, Value};

const BLOCKS_V4: &str = "/calico/ipam/v2/assignment/ipv4/block/";

/// `IpamDriver.RequestPool` for Calico's pools, as dockerd asks for it: the pool ID.
fn request_pool(h: &Host) -> String {
    let v = h.call_ok(
        "IpamDriver.RequestPool",
        &json!({"AddressSpace": "CalicoGlobalAddressSpace", "Pool": "", "SubPool": "",
                "Options": {}, "V6": false}),
    );
    v["PoolID"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no PoolID in {v}", h.name()))
        .to_string()
}

/// `IpamDriver.RequestAddress` of any address of `pool`: the address, without its length.
fn request_address(h: &Host, pool: &str) -> Ipv4Addr {
    let v = h.call_ok(
        "IpamDriver.RequestAddress",
        &json!({"PoolID": pool, "Address": "", "Options": null}),
    );
    let a = v["Address"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no Address in {v}", h.name()));
    a.parse::<Ipv4Net>()
        .unwrap_or_else(|e| panic!("{}: Address {a}: {e}", h.name()))
        .addr()
}

/// The host the block holding `ip` is affine to (`host:<name>` in the block), and the
/// block's CIDR.
fn block_of(blocks: &[(String, Value)], ip: Ipv4Addr) -> (String, Ipv4Net) {
    blocks
        .iter()
        .find_map(|(_, b)| {
            let cidr: Ipv4Net = b["cidr"].as_str()?.parse().ok()?;
            cidr.contains(&ip).then(|| {
                let affinity = b["affinity"].as_str().unwrap_or_default();
                (affinity.to_string(), cidr)
            })
        })
        .unwrap_or_else(|| panic!("no block holds {ip}: {blocks:?}"))
}

/// The hosts reach each other's underlay addresses: h1 and h2 directly (TTL 64 in the
/// reply), h3 through the router (TTL 63: one hop).
fn assert_underlay(fleet: &Fleet) {
    let (h1, h2, h3) = (fleet.host("h1"), fleet.host("h2"), fleet.host("h3"));
    for (from, to, ttl) in [
        (h1, h2, 64),
        (h2, h1, 64),
        (h1, h3, 63),
        (h3, h1, 63),
        (h2, h3, 63),
        (h3, h2, 63),
    ] {
        let out = from.exec_ok("ping", &["-c", "1", "-W", "2", &to.addr().to_string()]);
        assert!(
            out.contains(&format!("ttl={ttl}")),
            "{} -> {} ({}): expected ttl={ttl} ({}):\n{out}",
            from.name(),
            to.name(),
            to.addr(),
            if ttl == 64 {
                "same segment"
            } else {
                "through the router"
            }
        );
    }
    // Positive control of the TTL: h3's route to h1 goes via the router.
    let route = h3.exec_ok("ip", &["-4", "route", "get", &h1.addr().to_string()]);
    assert!(
        route.contains(&format!("via {}", h3.gateway())),
        "h3 -> h1 not via the router: {route}"
    );
}

/// Three plugins on one three-member etcd cluster: each answers Activate; each host's
/// RequestAddress comes from a block affine to that host; the hosts reach each other over
/// the underlay (h3 through the router); with one etcd member killed (the first endpoint
/// every plugin lists) every plugin still allocates; the member comes back on its data.
#[test]
fn three_hosts_one_etcd_cluster() {
    let t0 = Instant::now();
    let Some(mut fleet) = Fleet::builder().start_if_root("fleet::three_hosts_one_etcd_cluster")
    else {
        return;
    };
    let t_up = t0.elapsed();
    for h in &fleet.hosts {
        let v = h.call_ok("Plugin.Activate", &json!({}));
        let implements = v["Implements"].to_string();
        assert!(
            implements.contains("NetworkDriver") && implements.contains("IpamDriver"),
            "{}: {v}",
            h.name()
        );
    }
    assert_underlay(&fleet);
    // As on a Docker host: forwarding on, FORWARD dropped but for what a rule accepts.
    for h in &fleet.hosts {
        let policy = h.exec_ok("iptables", &["-w", "-S", "FORWARD"]);
        assert!(
            policy.starts_with("-P FORWARD DROP"),
            "{}: {policy}",
            h.name()
        );
        let fwd = h.exec_ok("sysctl", &["-n", "net.ipv4.ip_forward"]);
        assert_eq!(fwd.trim(), "1", "{}", h.name());
    }

    // One address per host, each from a block of its own.
    let mut first = Vec::new();
    for h in &fleet.hosts {
        let pool = request_pool(h);
        first.push((
            h.name().to_string(),
            pool.clone(),
            request_address(h, &pool),
        ));
    }
    let blocks = fleet.list(BLOCKS_V4);
    let mut cidrs = Vec::new();
    for (host, _, ip) in &first {
        let (affinity, cidr) = block_of(&blocks, *ip);
        assert_eq!(affinity, format!("host:{host}"), "{ip} of {host}");
        let key = format!(
            "/calico/ipam/v2/host/{host}/ipv4/block/{}-{}",
            cidr.addr(),
            cidr.prefix_len()
        );
        let aff = fleet
            .get(&key)
            .unwrap_or_else(|| panic!("no affinity {key}"));
        assert_eq!(aff["state"], "confirmed", "{key}: {aff}");
        cidrs.push(cidr);
    }
    cidrs.sort();
    cidrs.dedup();
    assert_eq!(cidrs.len(), 3, "three hosts, three blocks: {first:?}");
    eprintln!("addresses: {first:?}");

    // One member down: h1's, the first of every plugin's ETCD_ENDPOINTS.
    fleet.kill_etcd_member(0);
    // The other two keep the quorum: a (linearizable) read through them is served.
    assert_eq!(fleet.list(BLOCKS_V4).len(), 3);
    for h in &fleet.hosts {
        h.call_ok("Plugin.Activate", &json!({}));
    }
    // That every RequestAddress succeeds meanwhile: `allocations_with_one_etcd_member_down`.

    // Back on its data directory: it serves again (restart waits for a read through it),
    // and every host allocates again, from its own block.
    fleet.etcd.restart(0);
    for (host, pool, ip) in &first {
        let again = request_address(fleet.host(host), pool);
        assert_ne!(again, *ip, "{host}");
        let blocks = fleet.list(BLOCKS_V4);
        assert_eq!(
            block_of(&blocks, again).0,
            format!("host:{host}"),
            "{again}"
        );
    }
    eprintln!(
        "three_hosts_one_etcd_cluster: up in {t_up:?}, done in {:?}",
        t0.elapsed()
    );
}

/// Scenario 5's first half: with one etcd member of three killed (the first of every
/// plugin's `ETCD_ENDPOINTS`, which each plugin was using), every plugin keeps allocating:
/// all 30 RequestAddress calls (10 rounds over the three hosts) succeed, none near the
/// datastore deadline.
#[test]
fn allocations_with_one_etcd_member_down() {
    let Some(mut fleet) =
        Fleet::builder().start_if_root("fleet::allocations_with_one_etcd_member_down")
    else {
        return;
    };
    let pools: Vec<String> = fleet.hosts.iter().map(request_pool).collect();
    fleet.kill_etcd_member(0);
    let mut failed = Vec::new();
    let mut longest = Duration::ZERO;
    let t0 = Instant::now();
    for round in 0..10 {
        for (h, pool) in fleet.hosts.iter().zip(&pools) {
            let t = Instant::now();
            let (status, v) = h.call(
                "IpamDriver.RequestAddress",
                &json!({"PoolID": pool, "Address": "", "Options": null}),
            );
            longest = longest.max(t.elapsed());
            if status != 200 {
                failed.push(format!("round {round} {}: {status} {v}", h.name()));
            }
        }
    }
    eprintln!(
        "member h1 down: 30 RequestAddress, {} failed, longest {longest:?}, all in {:?}",
        failed.len(),
        t0.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} of 30 RequestAddress failed with one member down:\n{}",
        failed.len(),
        failed.join("\n")
    );
    // The plugin's datastore deadline is 5 s: a call that waited it out would show here.
    assert!(longest < Duration::from_secs(5), "{longest:?}");
}

/// Harness check: a fleet, dropped, leaves no namespace, process (nor any process in one of
/// its namespaces), directory or host link behind; twice in a row.
#[test]
fn fleet_leaves_nothing_behind() {
    if !common::require_root("fleet::fleet_leaves_nothing_behind") {
        return;
    }
    let links = || -> Vec<String> {
        std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let before = links();
    let t0 = Instant::now();
    for round in 1..=2 {
        let footprint = {
            let fleet = Fleet::builder().start();
            let h = fleet.host("h3");
            let pool = request_pool(h);
            request_address(h, &pool);
            fleet.footprint()
        };
        common::wait_until(
            "the fleet's processes and namespaces gone",
            Duration::from_secs(10),
            || {
                let left = footprint.leftovers();
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(left.join(", "))
                }
            },
        );
        // The fleet makes no link on the host's network; others' tests may make theirs.
        let new: Vec<String> = links()
            .into_iter()
            .filter(|l| !before.contains(l))
            .filter(|l| l.starts_with("seg-") || l.starts_with('h') || l.starts_with("eth"))
            .collect();
        assert!(new.is_empty(), "round {round}: links on the host: {new:?}");
    }
    eprintln!("fleet_leaves_nothing_behind: {:?}", t0.elapsed());
}

/// Our routes on `h` (`ip -4 route show proto 81`), one line each.
fn our_routes(h: &Host) -> Vec<String> {
    h.exec_ok("ip", &["-4", "route", "show", "proto", "81"])
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// `NetworkDriver.CreateNetwork` then `CreateEndpoint` of `address` (`a.b.c.d/32`) on `h`,
/// as dockerd makes them: the endpoint's WorkloadEndpoint names `h`.
fn endpoint_on(h: &Host, net: &str, ep: &str, address: &str) {
    h.call_ok(
        "NetworkDriver.CreateNetwork",
        &json!({"NetworkID": net, "Options": {},
                "IPv4Data": [{"AddressSpace": "CalicoGlobalAddressSpace", "Pool": "0.0.0.0/0",
                              "Gateway": "0.0.0.0/0"}], "IPv6Data": []}),
    );
    h.call_ok(
        "NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": net, "EndpointID": ep, "Interface": {"Address": address},
                "Options": {}}),
    );
}

/// Scenario 2 of issue 17, as routes: h1's block is full (a /29 pool of /30 blocks, one
/// per host), so its fifth address is borrowed from h2's block; h2 keeps its block as a
/// blackhole and routes the borrowed address to h1 (a /32, more specific), h1 routes h2's
/// block to h2 and keeps its own as a blackhole (Felix's rules: `l3_route_resolver.go`).
/// When the borrower's endpoint goes, h2's /32 goes within seconds; a route of someone
/// else's on the same host is never touched.
#[test]
fn borrowed_addresses_are_routed_to_the_borrower() {
    let test = "fleet::borrowed_addresses_are_routed_to_the_borrower";
    let Some(fleet) = Fleet::builder()
        .plugin_env("CALICO_IPV4POOL_CIDR", "10.77.0.0/29")
        .plugin_env("CALICO_IPV4POOL_BLOCK_SIZE", "30")
        .start_if_root(test)
    else {
        return;
    };
    let t0 = Instant::now();
    let (h1, h2) = (fleet.host("h1"), fleet.host("h2"));
    // Someone else's route beside ours, in h2: never ours to delete.
    h2.exec_ok(
        "ip",
        &[
            "route",
            "add",
            "blackhole",
            "10.78.0.0/24",
            "proto",
            "static",
        ],
    );
    let pool2 = request_pool(h2);
    let a2 = request_address(h2, &pool2);
    endpoint_on(h2, &"b".repeat(64), &"2".repeat(64), &format!("{a2}/32"));
    let pool1 = request_pool(h1);
    let mine: Vec<Ipv4Addr> = (0..5).map(|_| request_address(h1, &pool1)).collect();
    let blocks = fleet.list(BLOCKS_V4);
    let (aff2, b2) = block_of(&blocks, a2);
    assert_eq!(aff2, "host:h2");
    let (aff1, b1) = block_of(&blocks, mine[0]);
    assert_eq!(aff1, "host:h1");
    let borrowed = mine[4];
    assert_eq!(
        block_of(&blocks, borrowed).1,
        b2,
        "{mine:?}: the fifth is h2's"
    );
    endpoint_on(
        h1,
        &"a".repeat(64),
        &"1".repeat(64),
        &format!("{borrowed}/32"),
    );

    let want_h2 = [
        format!("blackhole {b2}"),
        format!("{borrowed} via {} dev", h1.addr()),
    ];
    let want_h1 = [
        format!("blackhole {b1}"),
        format!("{b2} via {} dev", h2.addr()),
    ];
    for (h, want) in [(h2, &want_h2), (h1, &want_h1)] {
        common::wait_until(
            &format!("{}'s routes", h.name()),
            Duration::from_secs(10),
            || {
                let have = our_routes(h);
                if want
                    .iter()
                    .all(|w| have.iter().any(|l| l.starts_with(w.as_str())))
                {
                    Ok(())
                } else {
                    Err(format!("want {want:?}, have {have:?}"))
                }
            },
        );
    }
    eprintln!("{test}: routes in place after {:?}", t0.elapsed());
    // The borrower's endpoint gone: its /32 goes from h2 (the block stays h2's blackhole).
    h1.call_ok(
        "NetworkDriver.DeleteEndpoint",
        &json!({"NetworkID": "a".repeat(64), "EndpointID": "1".repeat(64)}),
    );
    let t = Instant::now();
    common::wait_until(
        "h2's /32 to the borrower removed",
        Duration::from_secs(10),
        || {
            let have = our_routes(h2);
            if have.iter().any(|l| l.starts_with(&borrowed.to_string())) {
                Err(format!("{have:?}"))
            } else if have.iter().any(|l| l.starts_with(&want_h2[0])) {
                Ok(())
            } else {
                Err(format!("blackhole gone too: {have:?}"))
            }
        },
    );
    eprintln!("{test}: /32 removed after {:?}", t.elapsed());
    let other = h2.exec_ok("ip", &["route", "show", "10.78.0.0/24"]);
    assert!(
        other.contains("blackhole"),
        "someone else's route touched: {other:?}"
    );
}

/// `calico-libnetwork <args>` in `h`'s namespace, on the fleet's etcd: exit success and
/// output.
fn cli_in(fleet: &Fleet, h: &Host, args: &[&str]) -> (bool, String) {
    let endpoints = format!("ETCD_ENDPOINTS={}", fleet.etcd.endpoints_var());
    let mut full = vec![
        "DATASTORE_TYPE=etcdv3",
        endpoints.as_str(),
        common::plugin::BINARY,
    ];
    full.extend_from_slice(args);
    h.exec("env", &full)
}

/// Scenario 4 of issue 17: a host dies (its plugin killed, its etcd member killed, its
/// link down). The others keep working (h1 allocates) and keep the route to its block —
/// it may come back — past a periodic check; `node remove` refuses while the dead host's
/// heartbeat is recent, and with `--force` releases its block, affinity, addresses and
/// endpoints, its Node goes, and h1 drops the route within seconds.
#[test]
fn a_dead_host_keeps_its_routes_until_node_remove() {
    let test = "fleet::a_dead_host_keeps_its_routes_until_node_remove";
    let Some(mut fleet) = Fleet::builder().start_if_root(test) else {
        return;
    };
    let h2_addr = fleet.host("h2").addr();
    // A workload on h2 (its block affine to h2), and one on h1.
    let pool2 = request_pool(fleet.host("h2"));
    let a2 = request_address(fleet.host("h2"), &pool2);
    endpoint_on(
        fleet.host("h2"),
        &"b".repeat(64),
        &"2".repeat(64),
        &format!("{a2}/32"),
    );
    let pool1 = request_pool(fleet.host("h1"));
    let a1 = request_address(fleet.host("h1"), &pool1);
    endpoint_on(
        fleet.host("h1"),
        &"a".repeat(64),
        &"1".repeat(64),
        &format!("{a1}/32"),
    );
    let (_, b2) = block_of(&fleet.list(BLOCKS_V4), a2);
    let to_b2 = format!("{b2} via {h2_addr} dev");
    let has_route = |fleet: &Fleet| {
        our_routes(fleet.host("h1"))
            .iter()
            .any(|l| l.starts_with(&to_b2))
    };
    common::wait_until("h1's route to h2's block", Duration::from_secs(10), || {
        has_route(&fleet)
    });

    // h2 dies: plugin, etcd member (index 1 is h2's), link.
    let t = Instant::now();
    fleet.host_mut("h2").plugin.kill();
    fleet.etcd.kill(1);
    let h2 = fleet.host("h2");
    let dev = h2.exec_ok(
        "ip",
        &["-o", "-4", "addr", "show", "to", &h2_addr.to_string()],
    );
    let dev = dev.split_whitespace().nth(1).unwrap().to_string();
    h2.exec_ok("ip", &["link", "set", &dev, "down"]);
    assert!(
        fleet.host("h1").ping(&h2_addr.to_string()).is_err(),
        "h2 still answers"
    );
    // The others keep working, and keep the route past a periodic check (10 s).
    std::thread::sleep(Duration::from_secs(12));
    let h1 = fleet.host("h1");
    request_address(h1, &pool1);
    assert!(
        has_route(&fleet),
        "h1 dropped the dead host's route: {:?}",
        our_routes(h1)
    );
    eprintln!(
        "{test}: h2 dead for {:?}, h1 still allocates and routes",
        t.elapsed()
    );

    // Refused while the heartbeat is recent (renewed every 30 s, fresh for 90 s).
    let (ok, out) = cli_in(&fleet, h1, &["node", "remove", "h2"]);
    assert!(!ok, "node remove of a live-looking node: {out}");
    assert!(
        out.contains("heartbeat") && out.contains("--force"),
        "{out}"
    );
    assert!(fleet
        .get("/calico/resources/v3/projectcalico.org/nodes/h2")
        .is_some());
    assert!(has_route(&fleet), "the refused remove changed something");

    let (ok, out) = cli_in(&fleet, h1, &["node", "remove", "h2", "--force"]);
    assert!(ok, "node remove --force: {out}");
    let t = Instant::now();
    common::wait_until(
        "h1 drops the route to h2's block",
        Duration::from_secs(10),
        || !has_route(&fleet),
    );
    eprintln!("{test}: route dropped {:?} after node remove", t.elapsed());
    assert!(fleet
        .get("/calico/resources/v3/projectcalico.org/nodes/h2")
        .is_none());
    let blocks = fleet.list(BLOCKS_V4);
    assert!(
        blocks.iter().all(|(_, b)| b["affinity"] != "host:h2"),
        "{blocks:?}"
    );
    let weps = fleet.list(common::WEPS_PREFIX);
    assert!(
        weps.iter().all(|(_, w)| w["spec"]["node"] == "h1"),
        "{weps:?}"
    );
    assert_eq!(weps.len(), 1, "h1's endpoint stays: {weps:?}");
    // h1's own block stays its blackhole.
    let (_, b1) = block_of(&fleet.list(BLOCKS_V4), a1);
    assert!(
        our_routes(h1)
            .iter()
            .any(|l| *l == format!("blackhole {b1}")),
        "{:?}",
        our_routes(h1)
    );
    let (ok, out) = cli_in(&fleet, h1, &["node", "remove", "h2", "--force"]);
    assert!(
        !ok && out.contains("does not exist"),
        "second remove: {out}"
    );
}
