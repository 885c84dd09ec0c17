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
/// its namespaces), directory or host link behind; twice in a row. On the way, a plugin
/// stopped with no endpoint takes its ip sets and rules with it.
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
            let mut fleet = Fleet::builder().start();
            let h = fleet.host("h3");
            let pool = request_pool(h);
            request_address(h, &pool);
            // The isolation sets are made (empty: no endpoint anywhere) ...
            common::wait_until("h3's sets", Duration::from_secs(10), || {
                our_sets(fleet.host("h3")).contains_key("cln4-remote")
            });
            // ... and a plugin stopped with no endpoint left takes them with its rules.
            fleet.host_mut("h3").plugin.stop();
            let h = fleet.host("h3");
            assert!(our_sets(h).is_empty(), "sets left: {:?}", our_sets(h));
            let rules = h.exec_ok("iptables", &["-w", "-S"]);
            assert!(!rules.contains("CLN-"), "rules left:\n{rules}");
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

/// `calico-libnetwork <args>` run as host `h` (its node name, its plugin's socket) in its
/// namespace, on the fleet's etcd, with the heartbeat interval `every`: the exit status and
/// stdout+stderr.
fn cli_as(fleet: &Fleet, h: &Host, every: &str, args: &[&str]) -> (i32, String) {
    let vars = [
        "DATASTORE_TYPE=etcdv3".to_string(),
        format!("ETCD_ENDPOINTS={}", fleet.etcd.endpoints_var()),
        format!("NODENAME={}", h.name()),
        format!("CALICO_LIBNETWORK_SOCKET={}", h.socket().display()),
        format!("CALICO_LIBNETWORK_HEARTBEAT_INTERVAL={every}"),
    ];
    // `sh` reports the exit status on a last line of its own, after the output.
    let mut full = vec!["-c", "\"$@\" 2>&1; echo \"exit status $?\"", "sh", "env"];
    full.extend(vars.iter().map(String::as_str));
    full.push(common::plugin::BINARY);
    full.extend_from_slice(args);
    let (_, out) = h.exec("sh", &full);
    let (text, last) = out
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("{args:?}: no exit status in {out}"));
    let code = last
        .strip_prefix("exit status ")
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{args:?}: no exit status in {out}"));
    (code, format!("{text}\n"))
}

/// The cells of the line of `table` whose first cell is `first`, if there is one.
fn table_row(table: &str, first: &str) -> Option<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cells| cells.first().map(String::as_str) == Some(first))
}

/// The handle of `ip` in its block (`allocations` gives the attribute index), or `None`
/// when the block holds it unallocated.
fn handle_in(blocks: &[(String, Value)], ip: Ipv4Addr) -> Option<String> {
    let (_, cidr) = block_of(blocks, ip);
    let block = blocks
        .iter()
        .map(|(_, b)| b)
        .find(|b| b["cidr"] == cidr.to_string())
        .unwrap();
    let ordinal = (u32::from(ip) - u32::from(cidr.network())) as usize;
    let index = block["allocations"][ordinal].as_u64()? as usize;
    Some(
        block["attributes"][index]["handle_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{ip}: no handle_id in {block}"))
            .to_string(),
    )
}

/// Every IPAM record (blocks, affinities, handles) and WorkloadEndpoint, by key, except
/// those of node `but`: its blocks, the handles its blocks name, its affinities and its
/// endpoints.
fn records_but(fleet: &Fleet, but: &str) -> std::collections::BTreeMap<String, Value> {
    let all: Vec<(String, Value)> = fleet
        .list("/calico/ipam/v2/")
        .into_iter()
        .chain(fleet.list(common::WEPS_PREFIX))
        .collect();
    let affinity = format!("host:{but}");
    let theirs: std::collections::BTreeSet<String> = all
        .iter()
        .filter(|(_, v)| v["affinity"] == affinity.as_str())
        .flat_map(|(_, b)| b["attributes"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| {
            Some(format!(
                "/calico/ipam/v2/handle/{}",
                a["handle_id"].as_str()?
            ))
        })
        .collect();
    all.into_iter()
        .filter(|(k, v)| {
            v["affinity"] != affinity.as_str()
                && v["spec"]["node"] != but
                && !theirs.contains(k)
                && !k.contains(&format!("/host/{but}/"))
        })
        .collect()
}

/// Scenario 5 of issue 18, with heartbeats every second (`CALICO_LIBNETWORK_HEARTBEAT_INTERVAL`
/// on the plugins and the commands): h2's plugin is killed; `status --all-hosts` on h1 shows
/// h2 alive before, dead within seconds after (exit status 1, a problem line naming h2);
/// `ipam check --all-hosts` on h1 lists h2's leaked address; `--repair --node h2` releases
/// it and its handle and changes no record of h1's or h3's (each has a leak of its own it
/// must not touch); `--repair --node h1` (alive) is refused, changing nothing.
#[test]
fn a_killed_host_turns_dead_and_its_leak_is_repaired_from_another() {
    let test = "fleet::a_killed_host_turns_dead_and_its_leak_is_repaired_from_another";
    let every = "1s";
    let Some(mut fleet) = Fleet::builder()
        .plugin_env("CALICO_LIBNETWORK_HEARTBEAT_INTERVAL", every)
        .start_if_root(test)
    else {
        return;
    };
    // On every host: an endpoint, and a leaked address (RequestAddress, then no endpoint).
    let mut used = std::collections::BTreeMap::new();
    let mut leaks = std::collections::BTreeMap::new();
    for (name, c) in [("h1", '1'), ("h2", '2'), ("h3", '3')] {
        let h = fleet.host(name);
        let pool = request_pool(h);
        let a = request_address(h, &pool);
        endpoint_on(
            h,
            &c.to_string().repeat(64),
            &format!("e{c}").repeat(32),
            &format!("{a}/32"),
        );
        used.insert(name, a);
        leaks.insert(name, request_address(h, &pool));
    }
    let blocks = fleet.list(BLOCKS_V4);
    for (name, ip) in used.iter().chain(leaks.iter()) {
        assert_eq!(block_of(&blocks, *ip).0, format!("host:{name}"), "{ip}");
    }
    let leak2 = leaks["h2"];
    let leak2_handle = handle_in(&blocks, leak2).expect("h2's leak is allocated");
    let leak2_handle_key = format!("/calico/ipam/v2/handle/{leak2_handle}");
    assert!(fleet.get(&leak2_handle_key).is_some(), "{leak2_handle_key}");

    // Alive while its plugin runs.
    let (code, out) = cli_as(&fleet, fleet.host("h1"), every, &["status", "--all-hosts"]);
    let row = table_row(&out, "h2").unwrap_or_else(|| panic!("no h2 row: {out}"));
    assert_eq!(row[1], "alive", "{out}");
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("problem:"), "{out}");

    fleet.host_mut("h2").plugin.kill();
    let killed = Instant::now();
    let h1 = fleet.host("h1");
    let mut seen = Vec::new();
    let (code, out) = loop {
        let (code, out) = cli_as(&fleet, h1, every, &["status", "--all-hosts"]);
        let row = table_row(&out, "h2").unwrap_or_else(|| panic!("no h2 row: {out}"));
        seen.push(row[1].clone());
        if row[1] == "dead" {
            break (code, out);
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "h2 not dead 10 s after its plugin was killed (seen {seen:?}): {out}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "{test}: h2 dead {:?} after the kill (seen {seen:?})",
        killed.elapsed()
    );
    assert_eq!(code, 1, "{out}");
    let problem = out
        .lines()
        .find(|l| l.starts_with("problem: node h2 is dead"))
        .unwrap_or_else(|| panic!("no problem line naming h2: {out}"));
    assert!(problem.contains("more than 3 s"), "{problem}");
    for alive in ["h1", "h3"] {
        assert_eq!(table_row(&out, alive).unwrap()[1], "alive", "{out}");
    }

    // Every host's records are checked; h2's leak is listed.
    let (code, out) = cli_as(&fleet, h1, every, &["ipam", "check", "--all-hosts"]);
    assert_eq!(code, 1, "leaks are unresolved: {out}");
    for (name, ip) in &leaks {
        // KIND NODE OBJECT DETAIL ACTION
        let row = out
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|r| r.len() > 2 && r[0] == "orphan-allocation" && r[2] == ip.to_string())
            .unwrap_or_else(|| panic!("{name}'s leak {ip} not listed: {out}"));
        assert_eq!(row[1], *name, "{out}");
    }

    // The dead host's repair: its leak released, its handle gone, its endpoint's address
    // kept, nobody else's record changed.
    let others = records_but(&fleet, "h2");
    let (code, out) = cli_as(
        &fleet,
        h1,
        every,
        &["ipam", "check", "--repair", "--node", "h2", "--grace", "0s"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(&leak2.to_string()) && l.contains("repaired: released")),
        "{out}"
    );
    let blocks = fleet.list(BLOCKS_V4);
    assert_eq!(
        handle_in(&blocks, leak2),
        None,
        "{leak2} still allocated: {blocks:?}"
    );
    assert!(
        fleet.get(&leak2_handle_key).is_none(),
        "{leak2_handle_key} left behind"
    );
    assert!(
        handle_in(&blocks, used["h2"]).is_some(),
        "h2's endpoint lost its address"
    );
    assert_eq!(
        records_but(&fleet, "h2"),
        others,
        "the repair of h2 changed another's record"
    );
    for name in ["h1", "h3"] {
        assert!(
            handle_in(&blocks, leaks[name]).is_some(),
            "{name}'s leak released"
        );
    }

    // A live host's repair from elsewhere: refused, nothing changed.
    let before = records_but(&fleet, "nobody");
    let (code, out) = cli_as(
        &fleet,
        fleet.host("h3"),
        every,
        &["ipam", "check", "--repair", "--node", "h1", "--grace", "0s"],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("repair node h1's records") && out.contains("its plugin is likely running"),
        "{out}"
    );
    assert_eq!(
        records_but(&fleet, "nobody"),
        before,
        "the refused repair changed something"
    );
}

/// One call to the plugin at `socket`, asserting success; the body.
fn call_at(socket: &std::path::Path, method: &str, body: &Value) -> Value {
    let (status, text) = common::plugin::call(socket, method, &body.to_string())
        .unwrap_or_else(|e| panic!("{method}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method}: {e}: {text}"));
    assert!(
        status == 200 && v.get("Err").is_none(),
        "{method} {body} -> {status} {v}"
    );
    v
}

/// Our ip sets on `h` (`ipset save`): name → members, each as ipset prints it.
fn our_sets(h: &Host) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut sets = std::collections::BTreeMap::new();
    for line in h.exec_ok("ipset", &["save"]).lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["create", name, ..] if name.starts_with("cln4-") || name.starts_with("cln6-") => {
                sets.entry(name.to_string()).or_default();
            }
            ["add", name, member, ..] if name.starts_with("cln4-") || name.starts_with("cln6-") => {
                sets.entry(name.to_string())
                    .or_insert_with(std::collections::BTreeSet::new)
                    .insert(member.to_string());
            }
            _ => {}
        }
    }
    sets
}

/// What `h`'s sets must hold, from the WorkloadEndpoints in etcd: per profile, the other
/// hosts' endpoint addresses (none of these endpoints is joined to a sandbox, so each is a
/// peer of its own); and all of them in `cln4-remote`. Empty sets are left out.
fn expected_sets(
    fleet: &Fleet,
    h: &Host,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    use calico_libnetwork::dataplane::ipset::{profile_set, remote_set};
    use calico_libnetwork::dataplane::iptables::Family;
    let mut sets: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for (_, w) in fleet.list(common::WEPS_PREFIX) {
        if w["spec"]["node"] == h.name() {
            continue;
        }
        let ip = w["spec"]["ipNetworks"][0]
            .as_str()
            .unwrap()
            .trim_end_matches("/32")
            .to_string();
        sets.entry(remote_set(Family::V4))
            .or_default()
            .insert(ip.clone());
        for p in w["spec"]["profiles"].as_array().unwrap() {
            sets.entry(profile_set(p.as_str().unwrap(), Family::V4))
                .or_default()
                .insert(ip.clone());
        }
    }
    sets
}

/// Non-empty sets only (a set the rules made for a profile without remote members is empty).
fn non_empty(
    sets: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    sets.into_iter().filter(|(_, m)| !m.is_empty()).collect()
}

/// Our filter rules on `h` that match a set (`iptables -S`): the anti-spoofing rule and each
/// profile chain's remote members. (An endpoint's own rules are written at its Join, which
/// these endpoints never have, so only a start writes theirs.)
fn set_rules(h: &Host) -> Vec<String> {
    h.exec_ok("iptables", &["-w", "-S"])
        .lines()
        .filter(|l| l.contains("--match-set"))
        .map(str::to_string)
        .collect()
}

/// Issue 18's scenario 3: 1,000 endpoints over the three hosts through the plugin API (two
/// networks, `red` and `blue`; every fifth endpoint of h1 deleted again), h3's plugin
/// restarted in the middle of it. Afterwards every host's ip sets hold exactly the other
/// hosts' endpoints of each profile and nothing else (from the WorkloadEndpoints in etcd);
/// h3's sets and the rules matching them are what a plugin started afresh on the same
/// datastore makes.
#[test]
fn a_thousand_endpoints_reach_every_hosts_sets() {
    let test = "fleet::a_thousand_endpoints_reach_every_hosts_sets";
    let Some(mut fleet) = Fleet::builder().start_if_root(test) else {
        return;
    };
    let t0 = Instant::now();
    let nets = ["e".repeat(64), "f".repeat(64)];
    let mut pools = Vec::new();
    for h in &fleet.hosts {
        pools.push(request_pool(h));
        for net in &nets {
            h.call_ok(
                "NetworkDriver.CreateNetwork",
                &json!({"NetworkID": net, "Options": {},
                        "IPv4Data": [{"AddressSpace": "CalicoGlobalAddressSpace",
                                      "Pool": "0.0.0.0/0", "Gateway": "0.0.0.0/0"}],
                        "IPv6Data": []}),
            );
        }
    }
    // One endpoint on the plugin at `socket` (host `n`): an address, then CreateEndpoint
    // on network k % 2.
    let make = |socket: &std::path::Path, n: usize, pool: &str, k: usize| {
        let v = call_at(
            socket,
            "IpamDriver.RequestAddress",
            &json!({"PoolID": pool, "Address": "", "Options": null}),
        );
        let addr = v["Address"].as_str().unwrap().to_string();
        let ip: Ipv4Net = addr.parse().unwrap();
        let net = nets[k % 2].clone();
        let ep = format!("{n}{k:063}");
        call_at(
            socket,
            "NetworkDriver.CreateEndpoint",
            &json!({"NetworkID": net, "EndpointID": ep,
                    "Interface": {"Address": format!("{}/32", ip.addr())}, "Options": {}}),
        );
        (net, ep, ip.addr())
    };
    let remove =
        |socket: &std::path::Path, pool: &str, (net, ep, ip): &(String, String, Ipv4Addr)| {
            call_at(
                socket,
                "NetworkDriver.DeleteEndpoint",
                &json!({"NetworkID": net, "EndpointID": ep}),
            );
            call_at(
                socket,
                "IpamDriver.ReleaseAddress",
                &json!({"PoolID": pool, "Address": ip.to_string()}),
            );
        };
    let sockets: Vec<std::path::PathBuf> = fleet
        .hosts
        .iter()
        .map(|h| h.socket().to_path_buf())
        .collect();
    let per_host = [375, 333, 334];
    std::thread::scope(|s| {
        for i in 0..2 {
            let (socket, pool, make, remove) = (&sockets[i], &pools[i], &make, &remove);
            s.spawn(move || {
                for k in 0..per_host[i] {
                    let made = make(socket, i + 1, pool, k);
                    if i == 0 && k % 5 == 4 {
                        remove(socket, pool, &made);
                    }
                }
            });
        }
        for k in 0..per_host[2] / 2 {
            make(&sockets[2], 3, &pools[2], k);
        }
    });
    let made = t0.elapsed();
    // h3's plugin restarted while h1 and h2 go on making endpoints.
    let churn = {
        let (sockets, pools) = (sockets.clone(), pools.clone());
        let nets = nets.clone();
        std::thread::spawn(move || {
            for k in 1000..1040 {
                let i = k % 2;
                let v = call_at(
                    &sockets[i],
                    "IpamDriver.RequestAddress",
                    &json!({"PoolID": pools[i], "Address": "", "Options": null}),
                );
                let ip: Ipv4Net = v["Address"].as_str().unwrap().parse().unwrap();
                call_at(
                    &sockets[i],
                    "NetworkDriver.CreateEndpoint",
                    &json!({"NetworkID": nets[k % 2], "EndpointID": format!("{}{k:063}", i + 1),
                            "Interface": {"Address": format!("{}/32", ip.addr())},
                            "Options": {}}),
                );
            }
        })
    };
    fleet.host_mut("h3").plugin.restart();
    churn.join().expect("churn on h1 and h2");
    let pool3 = request_pool(fleet.host("h3"));
    for k in per_host[2] / 2..per_host[2] {
        make(&sockets[2], 3, &pool3, k);
    }
    let weps = fleet.list(common::WEPS_PREFIX).len();
    assert_eq!(weps, 375 - 75 + 333 + 334 + 40, "endpoints in etcd");
    eprintln!(
        "{test}: {weps} endpoints made in {made:?} (+ restart and the rest: {:?})",
        t0.elapsed()
    );

    for h in &fleet.hosts {
        let want = non_empty(expected_sets(&fleet, h));
        assert_eq!(want.len(), 3, "{}: red, blue and remote", h.name());
        common::wait_until(
            &format!("{}'s sets hold the other hosts' members", h.name()),
            Duration::from_secs(15),
            || {
                let have = non_empty(our_sets(h));
                if have == want {
                    Ok(())
                } else {
                    let diff: Vec<String> = want
                        .iter()
                        .map(|(n, m)| {
                            let got = have.get(n).map_or(0, |s| s.len());
                            format!("{n}: want {} have {got}", m.len())
                        })
                        .collect();
                    Err(format!(
                        "{diff:?}; sets {:?}",
                        have.keys().collect::<Vec<_>>()
                    ))
                }
            },
        );
    }
    eprintln!("{test}: every host's sets right at {:?}", t0.elapsed());

    // A fresh start of h3's plugin makes the same sets and rules.
    let h3_sets = our_sets(fleet.host("h3"));
    let h3_rules = set_rules(fleet.host("h3"));
    assert!(
        h3_rules
            .iter()
            .any(|l| l.contains("--match-set cln4-remote src -j DROP")),
        "{h3_rules:?}"
    );
    let off = fleet.host("h3").plugin.log().len();
    fleet.host_mut("h3").plugin.restart();
    let h3 = fleet.host("h3");
    common::wait_until(
        "h3's restarted plugin writes its sets",
        Duration::from_secs(15),
        || h3.plugin.log()[off..].contains("ip sets of other hosts' members written"),
    );
    common::wait_until("h3's rules rewritten", Duration::from_secs(15), || {
        let now = set_rules(h3);
        if now == h3_rules {
            Ok(())
        } else {
            Err(format!("{} lines, before {}", now.len(), h3_rules.len()))
        }
    });
    assert_eq!(our_sets(h3), h3_sets, "h3's sets after a fresh start");
    eprintln!("{test}: done in {:?}", t0.elapsed());
}

/// A network's ip sets live as long as something uses them: on h1, whose endpoint is joined
/// (its profile chain matches the set), the set stays when the last remote member goes,
/// empty; once the network's last endpoint anywhere is gone, both hosts destroy its sets at
/// their next kernel check (before, they stayed until the plugin stopped: one pair of sets
/// per network ever made). The sets the anti-spoofing rule matches stay.
#[test]
fn a_network_gone_everywhere_takes_its_sets_with_it() {
    use calico_libnetwork::dataplane::ipset::profile_set;
    use calico_libnetwork::dataplane::iptables::Family;
    let test = "fleet::a_network_gone_everywhere_takes_its_sets_with_it";
    let Some(fleet) = Fleet::builder().start_if_root(test) else {
        return;
    };
    let t0 = Instant::now();
    let net = "5e".repeat(32);
    let (h1, h2) = (fleet.host("h1"), fleet.host("h2"));
    let mut made = Vec::new();
    for (h, ep) in [(h1, "e1".repeat(32)), (h2, "e2".repeat(32))] {
        let pool = request_pool(h);
        let ip = request_address(h, &pool);
        endpoint_on(h, &net, &ep, &format!("{ip}/32"));
        made.push((pool, ep, ip));
    }
    // h1's endpoint joined: its rules match the network's set.
    let join = h1.call_ok(
        "NetworkDriver.Join",
        &json!({"NetworkID": net, "EndpointID": made[0].1,
                "SandboxKey": "/var/run/docker/netns/fleet-sets", "Options": {}}),
    );
    assert!(join["InterfaceName"]["SrcName"].is_string(), "{join}");
    let (_, wep) = fleet
        .list(common::WEPS_PREFIX)
        .into_iter()
        .find(|(_, w)| w["spec"]["node"] == "h1")
        .expect("h1's WorkloadEndpoint");
    let profile = wep["spec"]["profiles"][0].as_str().unwrap().to_string();
    let (set4, set6) = (
        profile_set(&profile, Family::V4),
        profile_set(&profile, Family::V6),
    );
    let member_of = |h: &Host, ip: Ipv4Addr| {
        let sets = our_sets(h);
        match sets.get(&set4) {
            Some(m) if m.contains(&ip.to_string()) => Ok(()),
            _ => Err(format!("{}: {sets:?}", h.name())),
        }
    };
    common::wait_until(
        "each host's set holds the other's",
        Duration::from_secs(15),
        || member_of(h1, made[1].2).and(member_of(h2, made[0].2)),
    );
    assert!(
        set_rules(h1).iter().any(|l| l.contains(&set4)),
        "h1's rules match {set4}: {:?}",
        set_rules(h1)
    );

    // An endpoint gone as Docker removes it: DeleteEndpoint, then its address released.
    let remove = |h: &Host, (pool, ep, ip): &(String, String, Ipv4Addr)| {
        h.call_ok(
            "NetworkDriver.DeleteEndpoint",
            &json!({"NetworkID": net, "EndpointID": ep}),
        );
        h.call_ok(
            "IpamDriver.ReleaseAddress",
            &json!({"PoolID": pool, "Address": ip.to_string()}),
        );
    };
    // h2's endpoint goes: h1's set is empty but its rules use it, through a kernel check.
    remove(h2, &made[1]);
    common::wait_until("h1's set emptied", Duration::from_secs(15), || {
        our_sets(h1).get(&set4).is_some_and(|m| m.is_empty())
    });
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(
        our_sets(h1).get(&set4),
        Some(&Default::default()),
        "h1's set, used by its rules, after a kernel check"
    );
    assert!(member_of(h2, made[0].2).is_ok(), "h2 still has h1's member");

    // The network's last endpoint goes, and the network on both hosts.
    h1.call_ok(
        "NetworkDriver.Leave",
        &json!({"NetworkID": net, "EndpointID": made[0].1}),
    );
    remove(h1, &made[0]);
    for h in [h1, h2] {
        h.call_ok("NetworkDriver.DeleteNetwork", &json!({"NetworkID": net}));
    }
    for h in [h1, h2] {
        common::wait_until(
            &format!("{}: the network's sets destroyed", h.name()),
            Duration::from_secs(25),
            || {
                let sets = our_sets(h);
                if sets.contains_key(&set4) || sets.contains_key(&set6) {
                    Err(format!("{:?}", sets.keys().collect::<Vec<_>>()))
                } else {
                    Ok(())
                }
            },
        );
        let sets = our_sets(h);
        assert!(
            sets.contains_key("cln4-remote") && sets.contains_key("cln6-remote"),
            "{}: the anti-spoofing sets stay: {sets:?}",
            h.name()
        );
        assert!(
            !set_rules(h).iter().any(|l| l.contains(&set4)),
            "{}",
            h.name()
        );
    }
    eprintln!("{test}: done in {:?}", t0.elapsed());
}
