//! Three Docker hosts on one etcd cluster (`common::hosts::Fleet` with a dockerd per host):
//! each dockerd finds its own host's plugin, and its container gets an address from a block
//! affine to that host and reaches its host; with the routes between hosts (issue 17), every
//! container reaches the others' in each of Calico's pool modes.
//!
//! Needs root; holds the host lock.

use crate::common;

use std::net::Ipv4Addr;

use common::docker;
use common::hosts::{Fleet, Host};
use common::plugin::calls;
use common::WEPS_PREFIX;
use ipnet::Ipv4Net;
use serde_json::Value;

const BLOCKS_V4: &str = "/calico/ipam/v2/assignment/ipv4/block/";

/// The IPv4 address container `c` has on its one network.
fn container_ip(h: &Host, c: &str) -> Ipv4Addr {
    let out = h.d().docker_ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        c,
    ]);
    out.parse()
        .unwrap_or_else(|e| panic!("{}: address of {c}: {out:?}: {e}", h.name()))
}

/// The affinity (`host:<node>`) of the block holding `ip`.
fn affinity_of(blocks: &[(String, Value)], ip: Ipv4Addr) -> String {
    blocks
        .iter()
        .find_map(|(_, b)| {
            let cidr: Ipv4Net = b["cidr"].as_str()?.parse().ok()?;
            cidr.contains(&ip)
                .then(|| b["affinity"].as_str().unwrap_or_default().to_string())
        })
        .unwrap_or_else(|| panic!("no block holds {ip}"))
}

/// `docker exec c ping -c 1 -W 2 to` on `h`: Ok, or what it said.
fn ping(h: &Host, c: &str, to: &str) -> Result<(), String> {
    let out = h.d().docker(&["exec", c, "ping", "-c", "1", "-W", "2", to]);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {c} -> {to}: {}{}",
            h.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Per host: `docker network create -d calico --ipam-driver calico net<i>` and a busybox
/// container on it; the container's address.
fn network_and_container(h: &Host, i: usize) -> Ipv4Addr {
    let (net, c) = (format!("net{i}"), format!("c{i}"));
    h.d().calico_network(&net, &[]);
    h.d()
        .sleeper(docker::BUSYBOX_IMAGE, &c, &["--network", &net]);
    container_ip(h, &c)
}

/// Three hosts, three dockerds, three plugins on one etcd cluster: a Calico network and a
/// container on each host. Each dockerd called its own host's plugin only; each container
/// has an address from a block affine to its host, its WorkloadEndpoint names that host, its
/// host-side veth is in that host's namespace, and it pings its host's underlay address.
/// After the fleet is dropped, the machine is as it was (namespaces, processes, mounts,
/// directories, links, Docker's files).
#[test]
fn three_hosts_three_containers() {
    let test = "docker_fleet::three_hosts_three_containers";
    let Some((lock, t0)) = docker::lock_if_root(test) else {
        return;
    };
    let before = crate::docker_ipam::host_state();
    let footprint = {
        let fleet = Fleet::builder().dockerd().under_lock(&lock).start();
        let t_up = t0.elapsed();
        let offsets: Vec<usize> = fleet.hosts.iter().map(|h| h.plugin.log().len()).collect();
        let mut ips = Vec::new();
        for (i, h) in fleet.hosts.iter().enumerate() {
            ips.push(network_and_container(h, i + 1));
        }
        let t_run = t0.elapsed();

        // Each dockerd asked its own plugin: one CreateNetwork and one CreateEndpoint in
        // every plugin's log.
        for (h, off) in fleet.hosts.iter().zip(&offsets) {
            let log = h.plugin.log();
            // One line per answered request (with its outcome).
            let made: Vec<String> = calls(&log[*off..])
                .iter()
                .filter(|c| c.field("outcome").is_some())
                .map(|c| c.method().to_string())
                .filter(|m| {
                    m == "NetworkDriver.CreateNetwork" || m == "NetworkDriver.CreateEndpoint"
                })
                .collect();
            assert_eq!(
                made,
                [
                    "NetworkDriver.CreateNetwork",
                    "NetworkDriver.CreateEndpoint"
                ],
                "{}'s plugin",
                h.name()
            );
        }

        let blocks = fleet.list(BLOCKS_V4);
        let weps = fleet.list(WEPS_PREFIX);
        assert_eq!(weps.len(), 3, "{weps:?}");
        for (h, ip) in fleet.hosts.iter().zip(&ips) {
            assert_eq!(
                affinity_of(&blocks, *ip),
                format!("host:{}", h.name()),
                "{ip}"
            );
            let wep = weps
                .iter()
                .map(|(_, w)| w)
                .find(|w| w["spec"]["ipNetworks"][0] == format!("{ip}/32"))
                .unwrap_or_else(|| panic!("no WorkloadEndpoint with {ip}: {weps:?}"));
            assert_eq!(wep["spec"]["node"], h.name(), "{wep}");
            // The host-side veth is in the host's namespace, not on the machine's.
            let veth = wep["spec"]["interfaceName"].as_str().unwrap();
            h.exec_ok("ip", &["link", "show", veth]);
            assert!(
                !std::path::Path::new("/sys/class/net").join(veth).exists(),
                "{veth} on the machine's own network"
            );
        }
        let mut distinct = ips.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "{ips:?}");

        for (i, h) in fleet.hosts.iter().enumerate() {
            ping(h, &format!("c{}", i + 1), &h.addr().to_string()).unwrap();
        }
        eprintln!(
            "{test}: fleet up in {t_up:?}, containers running at {t_run:?}, checked at {:?}; \
             addresses {ips:?}",
            t0.elapsed()
        );
        fleet.footprint()
    };
    let left = footprint.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(crate::docker_ipam::host_state(), before, "the host changed");
    eprintln!("{test}: {:?} with the clean-up", t0.elapsed());
}

/// The default IPv4 pool's key (the first plugin up creates it).
const POOL_KEY: &str = "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool";

/// Sets the default pool's `vxlanMode` and `ipipMode` as `calicoctl apply` would.
fn set_pool_modes(fleet: &Fleet, vxlan: &str, ipip: &str) {
    let mut pool = fleet
        .etcd
        .get_json(POOL_KEY)
        .unwrap_or_else(|| panic!("no {POOL_KEY}"));
    pool["spec"]["vxlanMode"] = vxlan.into();
    pool["spec"]["ipipMode"] = ipip.into();
    fleet.etcd.put_json(POOL_KEY, &pool);
}

/// Our routes on `h` (`ip -4 route show proto 81`), one line each.
fn our_routes(h: &Host) -> Vec<String> {
    h.exec_ok("ip", &["-4", "route", "show", "proto", "81"])
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// The route of ours on `h` to `block`.
fn route_to(h: &Host, block: Ipv4Net) -> Option<String> {
    our_routes(h)
        .into_iter()
        .find(|l| l.split_whitespace().take(2).any(|w| w == block.to_string()))
}

/// The block (CIDR) holding `ip`.
fn block_cidr(blocks: &[(String, Value)], ip: Ipv4Addr) -> Ipv4Net {
    blocks
        .iter()
        .find_map(|(_, b)| {
            let cidr: Ipv4Net = b["cidr"].as_str()?.parse().ok()?;
            cidr.contains(&ip).then_some(cidr)
        })
        .unwrap_or_else(|| panic!("no block holds {ip}"))
}

/// Scenarios 1 and 6 of issue 17: a container on each of three hosts (h1 and h2 on one
/// subnet, h3 behind a router), every pair pinging by address, with the default pool in
/// each of Calico's modes in turn — no encapsulation (h1 and h2 only: h3 is on another
/// subnet and no BGP runs), VXLAN Always, VXLAN CrossSubnet (encapsulated only to and
/// from h3), IP-in-IP Always — and each host's routes as Felix would program them
/// (`vxlan_mgr.go`, `ipip_mgr.go`: via the peer's address on the same subnet, via its
/// VXLAN tunnel address on `vxlan.calico` onlink, via its address on `tunl0` onlink; a
/// blackhole for its own block). Calico's shape: the tunnel addresses on the Nodes with
/// their IPAM handles and attributes as calico-node writes them (`allocateip.go`
/// `generateHandleAndAttributes`), the VXLAN MAC as Felix computes it.
#[test]
fn containers_on_three_hosts_reach_each_other_in_every_mode() {
    let test = "docker_fleet::containers_on_three_hosts_reach_each_other_in_every_mode";
    let Some((lock, t0)) = docker::lock_if_root(test) else {
        return;
    };
    let before = crate::docker_ipam::host_state();
    let footprint = {
        let fleet = Fleet::builder().dockerd().under_lock(&lock).start();
        let mut ips = Vec::new();
        for (i, h) in fleet.hosts.iter().enumerate() {
            // One network name everywhere: one Calico profile.
            h.d().calico_network("calinet", &[]);
            let c = format!("c{}", i + 1);
            h.d()
                .sleeper(docker::BUSYBOX_IMAGE, &c, &["--network", "calinet"]);
            ips.push(container_ip(h, &c));
        }
        let blocks = fleet.list(BLOCKS_V4);
        let cidrs: Vec<Ipv4Net> = ips.iter().map(|ip| block_cidr(&blocks, *ip)).collect();
        let (h1, h2, h3) = (fleet.host("h1"), fleet.host("h2"), fleet.host("h3"));
        let all_pairs: Vec<(usize, usize)> = (0..3)
            .flat_map(|i| (0..3).filter(move |&j| j != i).map(move |j| (i, j)))
            .collect();
        for (vxlan, ipip, pairs) in [
            ("Never", "Never", vec![(0, 1), (1, 0)]),
            ("Always", "Never", all_pairs.clone()),
            ("CrossSubnet", "Never", all_pairs.clone()),
            ("Never", "Always", all_pairs.clone()),
        ] {
            let t = std::time::Instant::now();
            set_pool_modes(&fleet, vxlan, ipip);
            let mode = format!("vxlanMode {vxlan}, ipipMode {ipip}");
            if ipip == "Always" && !ipip_available() {
                eprintln!(
                    "!!!!! SKIPPED {test}: {mode}: this kernel has no ipip module (modprobe ipip \
                     failed); only the Nodes' tunnel addresses are checked !!!!!"
                );
                check_ipip_shape(&fleet, false);
                continue;
            }
            // Every pair, until all reply: tunnel addresses are allocated and routes
            // follow within seconds.
            let deadline = t + std::time::Duration::from_secs(40);
            loop {
                let failed: Vec<String> = pairs
                    .iter()
                    .filter_map(|&(i, j)| {
                        let h = &fleet.hosts[i];
                        ping(h, &format!("c{}", i + 1), &ips[j].to_string()).err()
                    })
                    .collect();
                if failed.is_empty() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let routes: Vec<String> = fleet
                        .hosts
                        .iter()
                        .map(|h| format!("{}: {:?}", h.name(), our_routes(h)))
                        .collect();
                    panic!(
                        "{mode}: still failing after 40 s:\n{}\nroutes:\n{}",
                        failed.join("\n"),
                        routes.join("\n")
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            eprintln!("{test}: {mode}: every pair pings after {:?}", t.elapsed());
            // Each host's own block is a blackhole.
            for (h, cidr) in fleet.hosts.iter().zip(&cidrs) {
                let r =
                    route_to(h, *cidr).unwrap_or_else(|| panic!("{}: no route {cidr}", h.name()));
                assert!(r.starts_with("blackhole"), "{}: {r}", h.name());
            }
            let to_h2 = route_to(h1, cidrs[1]).unwrap_or_default();
            let to_h3 = route_to(h1, cidrs[2]).unwrap_or_default();
            let from_h3 = route_to(h3, cidrs[0]).unwrap_or_default();
            let direct = format!("via {} dev", h2.addr());
            match (vxlan, ipip) {
                ("Never", "Never") => {
                    assert!(to_h2.contains(&direct), "{mode}: h1 -> h2: {to_h2}");
                    assert!(to_h3.is_empty(), "{mode}: h1 -> h3 needs BGP: {to_h3}");
                    // Positive control of that: h3's container is out of h1's reach.
                    assert!(ping(h1, "c1", &ips[2].to_string()).is_err());
                }
                ("Always", _) => {
                    for r in [&to_h2, &to_h3, &from_h3] {
                        assert!(
                            r.contains("dev vxlan.calico") && r.contains("onlink"),
                            "{mode}: {r}"
                        );
                    }
                }
                ("CrossSubnet", _) => {
                    assert!(to_h2.contains(&direct), "{mode}: h1 -> h2: {to_h2}");
                    for r in [&to_h3, &from_h3] {
                        assert!(
                            r.contains("dev vxlan.calico") && r.contains("onlink"),
                            "{mode}: {r}"
                        );
                    }
                }
                _ => {
                    assert!(
                        to_h2.contains(&format!("via {} dev tunl0", h2.addr()))
                            && to_h2.contains("onlink"),
                        "{mode}: {to_h2}"
                    );
                    assert!(
                        to_h3.contains(&format!("via {} dev tunl0", h3.addr())),
                        "{mode}: {to_h3}"
                    );
                }
            }
            if vxlan == "Always" {
                check_vxlan_shape(&fleet);
            }
            if ipip == "Always" {
                check_ipip_shape(&fleet, true);
            }
        }
        eprintln!("{test}: all modes in {:?}", t0.elapsed());
        fleet.footprint()
    };
    let left = footprint.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(crate::docker_ipam::host_state(), before, "the host changed");
}

/// Felix's VXLAN MAC for a node: `66` then the first five bytes of the SHA-1 of the node
/// name (`felix/calc/vxlan_resolver.go` `vtepMACForHost`), computed with `sha1sum`.
fn felix_vxlan_mac(node: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("printf '%s' '{node}' | sha1sum")])
        .output()
        .unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    let bytes: Vec<&str> = (0..5).map(|i| &hex[2 * i..2 * i + 2]).collect();
    format!("66:{}", bytes.join(":"))
}

/// The allocation attributes of `ip` in its block, and its handle.
fn allocation_of(fleet: &Fleet, ip: Ipv4Addr) -> (Value, Value) {
    let blocks = fleet.list(BLOCKS_V4);
    let b = blocks
        .iter()
        .map(|(_, b)| b)
        .find(|b| {
            b["cidr"]
                .as_str()
                .and_then(|c| c.parse::<Ipv4Net>().ok())
                .is_some_and(|c| c.contains(&ip))
        })
        .unwrap_or_else(|| panic!("no block holds {ip}"));
    let cidr: Ipv4Net = b["cidr"].as_str().unwrap().parse().unwrap();
    let ord = (u32::from(ip) - u32::from(cidr.network())) as usize;
    let idx = b["allocations"][ord]
        .as_u64()
        .unwrap_or_else(|| panic!("{ip} not allocated in {b}"));
    let attr = &b["attributes"][idx as usize];
    (attr["secondary"].clone(), attr["handle_id"].clone())
}

/// Scenario 6, VXLAN: each Node's tunnel address, with Calico's handle and attributes in
/// its block, and the MAC Felix computes; the device as Felix makes it.
fn check_vxlan_shape(fleet: &Fleet) {
    for h in &fleet.hosts {
        let node = fleet
            .etcd
            .get_json(&format!(
                "/calico/resources/v3/projectcalico.org/nodes/{}",
                h.name()
            ))
            .unwrap();
        let addr: Ipv4Addr = node["spec"]["ipv4VXLANTunnelAddr"]
            .as_str()
            .unwrap_or_else(|| panic!("no VXLAN tunnel address on {node}"))
            .parse()
            .unwrap();
        assert_eq!(
            node["spec"]["vxlanTunnelMACAddr"],
            felix_vxlan_mac(h.name()),
            "{node}"
        );
        let (attrs, handle) = allocation_of(fleet, addr);
        assert_eq!(handle, format!("vxlan-tunnel-addr-{}", h.name()));
        assert_eq!(
            attrs,
            serde_json::json!({"node": h.name(), "type": "vxlanTunnelAddress"})
        );
        let link = h.exec_ok("ip", &["-d", "link", "show", "vxlan.calico"]);
        for want in [
            "vxlan id 4096",
            "dstport 4789",
            "nolearning",
            "mtu 1450",
            &format!("local {}", h.addr()),
            &felix_vxlan_mac(h.name()),
        ] {
            assert!(link.contains(want), "{}: no {want:?} in {link}", h.name());
        }
        let a = h.exec_ok("ip", &["-4", "addr", "show", "vxlan.calico"]);
        assert!(a.contains(&format!("{addr}/32")), "{}: {a}", h.name());
    }
}

/// Whether the kernel can make IP-in-IP devices (the `ipip` module loads, or is built in).
fn ipip_available() -> bool {
    let loaded = std::process::Command::new("modprobe")
        .arg("ipip")
        .status()
        .is_ok_and(|s| s.success());
    loaded || std::path::Path::new("/sys/module/ipip").exists()
}

/// Scenario 6, IP-in-IP: each Node's tunnel address with Calico's handle and attributes,
/// and (`device`) on `tunl0`.
fn check_ipip_shape(fleet: &Fleet, device: bool) {
    for h in &fleet.hosts {
        let key = format!("/calico/resources/v3/projectcalico.org/nodes/{}", h.name());
        // Allocated when the pool changed (without the device, nothing waited on it).
        let addr: Ipv4Addr = common::wait_until(
            &format!("{}'s IP-in-IP tunnel address", h.name()),
            std::time::Duration::from_secs(15),
            || {
                let node = fleet.etcd.get_json(&key).unwrap();
                node["spec"]["bgp"]["ipv4IPIPTunnelAddr"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| format!("none on {node}"))
            },
        );
        let (attrs, handle) = allocation_of(fleet, addr);
        assert_eq!(handle, format!("ipip-tunnel-addr-{}", h.name()));
        assert_eq!(
            attrs,
            serde_json::json!({"node": h.name(), "type": "ipipTunnelAddress"})
        );
        if !device {
            continue;
        }
        let a = h.exec_ok("ip", &["-d", "addr", "show", "tunl0"]);
        assert!(
            a.contains(&format!("{addr}/32")) && a.contains("mtu 1480"),
            "{}: {a}",
            h.name()
        );
    }
}
