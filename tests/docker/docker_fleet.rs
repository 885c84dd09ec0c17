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
    container_address(h, c, "IPAddress")
}

/// The address in field `field` (`IPAddress`, `GlobalIPv6Address`) of container `c`'s one
/// network.
fn container_address<A: std::str::FromStr>(h: &Host, c: &str, field: &str) -> A
where
    A::Err: std::fmt::Display,
{
    let format = format!("{{{{range .NetworkSettings.Networks}}}}{{{{.{field}}}}}{{{{end}}}}");
    let out = h.d().docker_ok(&["inspect", "-f", &format, c]);
    out.parse()
        .unwrap_or_else(|e| panic!("{}: {field} of {c}: {out:?}: {e}", h.name()))
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

/// `docker exec c ping -c 1 -W 2 to` on `h` (`ping6` to an IPv6 address): Ok, or what it
/// said.
fn ping(h: &Host, c: &str, to: &str) -> Result<(), String> {
    let prog = if to.contains(':') { "ping6" } else { "ping" };
    let out = h.d().docker(&["exec", c, prog, "-c", "1", "-W", "2", to]);
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
    on_fleet(test, |fleet, t0| {
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
            set_pool_modes(fleet, vxlan, ipip);
            let mode = format!("vxlanMode {vxlan}, ipipMode {ipip}");
            if ipip == "Always" && !ipip_available() {
                eprintln!(
                    "!!!!! SKIPPED {test}: {mode}: this kernel has no ipip module (modprobe ipip \
                     failed); only the Nodes' tunnel addresses are checked !!!!!"
                );
                check_ipip_shape(fleet, false);
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
                check_vxlan_shape(fleet);
            }
            if ipip == "Always" {
                check_ipip_shape(fleet, true);
            }
        }
        eprintln!("{test}: all modes in {:?}", t0.elapsed());
    });
}

/// Runs `body` on a fresh three-host fleet with a dockerd per host (under the Docker host
/// lock), then checks that the fleet, dropped, left nothing behind and the machine is as it
/// was. Loudly skipped without root.
fn on_fleet(test: &str, body: impl FnOnce(&Fleet, std::time::Instant)) {
    on_fleet_with(test, &[], body)
}

/// [`on_fleet`] with `env` set for every host's plugin.
fn on_fleet_with(test: &str, env: &[(&str, &str)], body: impl FnOnce(&Fleet, std::time::Instant)) {
    let Some((lock, t0)) = docker::lock_if_root(test) else {
        return;
    };
    let before = crate::docker_ipam::host_state();
    let footprint = {
        let builder = env
            .iter()
            .fold(Fleet::builder(), |b, (k, v)| b.plugin_env(k, v));
        let fleet = builder.dockerd().under_lock(&lock).start();
        body(&fleet, t0);
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

// ---------------------------------------------------------------------------------------------
// Scenarios 3 (churn) and 5 (etcd trouble) of issue 17.

/// The interval of the background pingers: five packets a second.
const PING_INTERVAL: &str = "0.2";

/// A `docker exec <container> ping -i 0.2 <to>` running in the background on a host, its
/// output in a file of the fleet's; [`stop_pingers`] ends it with SIGINT (so that ping
/// prints its statistics) and reads what it saw.
struct Pinger<'a> {
    h: &'a Host,
    container: String,
    to: Ipv4Addr,
    child: std::process::Child,
    log: std::path::PathBuf,
}

/// What one pinger's ping saw.
#[derive(Debug)]
struct PingReport {
    /// `N packets transmitted`: sequence numbers 0..N were sent.
    sent: u32,
    /// `M packets received`.
    received: u32,
    /// The sequence numbers answered (`seq=` of each reply line).
    answered: std::collections::BTreeSet<u32>,
}

impl PingReport {
    /// Sequence numbers sent and never answered, but the last one: SIGINT ends ping at
    /// once, so the packet sent just before it may still be on its way (with replies in
    /// well under a millisecond and a packet every 200 ms, rarely). Nothing else is
    /// excused: each pinger starts only once its path was seen to work.
    fn lost(&self) -> Vec<u32> {
        (0..self.sent.saturating_sub(1))
            .filter(|s| !self.answered.contains(s))
            .collect()
    }
}

impl<'a> Pinger<'a> {
    /// Starts pinging `to` from container `c` on `h` (on the test's own thread).
    fn start(fleet: &Fleet, h: &'a Host, c: &str, to: Ipv4Addr) -> Pinger<'a> {
        let log = fleet
            .dir
            .path()
            .join(format!("ping-{}-{c}-{to}.log", h.name()));
        let child = h.d().docker_spawn(
            &["exec", c, "ping", "-i", PING_INTERVAL, &to.to_string()],
            &log,
        );
        Pinger {
            h,
            container: c.to_string(),
            to,
            child,
            log,
        }
    }

    /// `host: container -> address`.
    fn name(&self) -> String {
        format!("{}: {} -> {}", self.h.name(), self.container, self.to)
    }

    /// Its output so far.
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 10 s) for ping, once signalled, to end, and parses its output.
    fn finish(mut self) -> PingReport {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{}: ping did not stop on SIGINT:\n{}",
                    self.name(),
                    self.output()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let text = self.output();
        // busybox: "N packets transmitted, M packets received, ..."
        let count = |what: &str| -> u32 {
            text.lines()
                .find_map(|l| {
                    let at = l.find(what)?;
                    l[..at].trim().rsplit([' ', ',']).next()?.parse().ok()
                })
                .unwrap_or_else(|| panic!("{}: no '{what}' in:\n{text}", self.name()))
        };
        let answered = text
            .lines()
            .filter_map(|l| {
                let seq = l.split_whitespace().find_map(|w| w.strip_prefix("seq="))?;
                seq.parse().ok()
            })
            .collect();
        PingReport {
            sent: count("packets transmitted"),
            received: count("packets received"),
            answered,
        }
    }
}

/// Stops `pingers` (each must still be running): SIGINT to the pings of each container
/// (`killall -INT ping`, once per container), then each one's report, by name.
fn stop_pingers(mut pingers: Vec<Pinger>) -> Vec<(String, PingReport)> {
    for p in &mut pingers {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("{}: ping ended early ({status}):\n{}", p.name(), p.output());
        }
    }
    let mut signalled: Vec<(String, String)> = Vec::new();
    for p in &pingers {
        let key = (p.h.name().to_string(), p.container.clone());
        if !signalled.contains(&key) {
            p.h.d()
                .docker_ok(&["exec", &p.container, "killall", "-INT", "ping"]);
            signalled.push(key);
        }
    }
    pingers
        .into_iter()
        .map(|p| (p.name(), p.finish()))
        .collect()
}

/// Waits (at most `within`) until every `(host index, container, address)` pings; the
/// time it took.
fn wait_pings(
    fleet: &Fleet,
    paths: &[(usize, String, Ipv4Addr)],
    within: std::time::Duration,
) -> std::time::Duration {
    let t = std::time::Instant::now();
    loop {
        let failed: Vec<String> = paths
            .iter()
            .filter_map(|(i, c, to)| ping(&fleet.hosts[*i], c, &to.to_string()).err())
            .collect();
        if failed.is_empty() {
            return t.elapsed();
        }
        if t.elapsed() > within {
            let routes: Vec<String> = fleet
                .hosts
                .iter()
                .map(|h| format!("{}: {:?}", h.name(), our_routes(h)))
                .collect();
            panic!(
                "still failing after {within:?}:\n{}\nroutes:\n{}",
                failed.join("\n"),
                routes.join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Every WorkloadEndpoint: its node and IPv4 address.
fn endpoints(fleet: &Fleet) -> std::collections::BTreeSet<(String, Ipv4Addr)> {
    fleet
        .list(WEPS_PREFIX)
        .iter()
        .map(|(k, w)| {
            let net = w["spec"]["ipNetworks"][0].as_str().unwrap_or_default();
            let ip = net
                .split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("{k}: no IPv4 address: {w}"));
            (
                w["spec"]["node"].as_str().unwrap_or_default().to_string(),
                ip,
            )
        })
        .collect()
}

/// Every address allocated to a container (an allocation whose handle is `libnetwork.…`),
/// from the blocks.
fn container_allocations(fleet: &Fleet) -> std::collections::BTreeSet<Ipv4Addr> {
    let mut out = std::collections::BTreeSet::new();
    for (_, b) in fleet.list(BLOCKS_V4) {
        let cidr: Ipv4Net = b["cidr"].as_str().unwrap().parse().unwrap();
        let allocations = b["allocations"].as_array().cloned().unwrap_or_default();
        for (ord, idx) in allocations.iter().enumerate() {
            let Some(idx) = idx.as_u64() else { continue };
            let handle = b["attributes"][idx as usize]["handle_id"]
                .as_str()
                .unwrap_or_default();
            if handle.starts_with("libnetwork.") {
                out.insert(Ipv4Addr::from(u32::from(cidr.network()) + ord as u32));
            }
        }
    }
    out
}

/// The host-side veths (`cali…`) in `h`'s namespace.
fn host_veths(h: &Host) -> Vec<String> {
    h.exec_ok("ip", &["-o", "link", "show"])
        .lines()
        .filter_map(|l| {
            let name = l.split_whitespace().nth(1)?.trim_end_matches(':');
            let name = name.split('@').next()?;
            name.starts_with("cali").then(|| name.to_string())
        })
        .collect()
}

/// Checks every host's routes of ours against the datastore: each block route is a block
/// in etcd (a blackhole exactly for the host's own blocks), each `/32` an address of a
/// live WorkloadEndpoint of another host, and each block affine to a host has its route on
/// every host (the pool is `CrossSubnet`: every host reaches every other). The number of
/// `/32` routes, or what does not match.
fn routes_match_datastore(fleet: &Fleet) -> Result<usize, String> {
    let blocks: Vec<(Ipv4Net, Option<String>)> = fleet
        .list(BLOCKS_V4)
        .iter()
        .filter(|(_, b)| b["deleted"] != true)
        .map(|(_, b)| {
            let cidr: Ipv4Net = b["cidr"].as_str().unwrap().parse().unwrap();
            let host = b["affinity"]
                .as_str()
                .and_then(|a| a.strip_prefix("host:"))
                .map(str::to_string);
            (cidr, host)
        })
        .collect();
    let weps = endpoints(fleet);
    let mut problems = Vec::new();
    let mut host_routes = 0;
    for h in &fleet.hosts {
        let mut routed = Vec::new();
        for line in our_routes(h) {
            let mut words = line.split_whitespace();
            let mut first = words.next().unwrap_or_default();
            let blackhole = first == "blackhole";
            if blackhole {
                first = words.next().unwrap_or_default();
            }
            let dest: Ipv4Net = first
                .parse()
                .or_else(|_| first.parse::<Ipv4Addr>().map(Ipv4Net::from))
                .map_err(|e| format!("{}: route {line:?}: {e}", h.name()))?;
            routed.push(dest);
            if dest.prefix_len() == 32 {
                host_routes += 1;
                if !weps
                    .iter()
                    .any(|(n, ip)| n != h.name() && *ip == dest.addr())
                {
                    problems.push(format!(
                        "{}: {line:?}: no WorkloadEndpoint of another host has {}",
                        h.name(),
                        dest.addr()
                    ));
                }
                continue;
            }
            match blocks.iter().find(|(c, _)| *c == dest) {
                None => problems.push(format!("{}: {line:?}: no such block", h.name())),
                Some((_, owner)) => {
                    let own = owner.as_deref() == Some(h.name());
                    if own != blackhole {
                        problems.push(format!(
                            "{}: {line:?}: the block is affine to {owner:?}",
                            h.name()
                        ));
                    }
                }
            }
        }
        for (cidr, _) in blocks.iter().filter(|(_, o)| o.is_some()) {
            if !routed.contains(cidr) {
                problems.push(format!("{}: no route to block {cidr}", h.name()));
            }
        }
    }
    if problems.is_empty() {
        Ok(host_routes)
    } else {
        Err(problems.join("\n"))
    }
}

/// Starts and removes `per_host[i]` containers on host `i`, all hosts at once: on each,
/// rounds of `batch` `docker run -d` in parallel, then one `docker rm -f` of the round.
/// Every `docker run` and `docker rm -f` must succeed. The durations of the runs and of the
/// removals.
fn churn(
    fleet: &Fleet,
    per_host: &[usize],
    batch: usize,
) -> (Vec<std::time::Duration>, Vec<std::time::Duration>) {
    use std::sync::Mutex;
    let runs = Mutex::new(Vec::new());
    let rms = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for (h, &n) in fleet.hosts.iter().zip(per_host) {
            let (runs, rms) = (&runs, &rms);
            s.spawn(move || {
                let names: Vec<String> = (1..=n).map(|k| format!("churn-{k:02}")).collect();
                for round in names.chunks(batch) {
                    std::thread::scope(|s| {
                        for name in round {
                            s.spawn(move || {
                                let t = std::time::Instant::now();
                                h.d().sleeper(
                                    docker::BUSYBOX_IMAGE,
                                    name,
                                    &["--network", "calinet"],
                                );
                                runs.lock().unwrap().push(t.elapsed());
                            });
                        }
                    });
                    let t = std::time::Instant::now();
                    let mut args = vec!["rm", "-f"];
                    args.extend(round.iter().map(String::as_str));
                    h.d().docker_ok(&args);
                    rms.lock().unwrap().push(t.elapsed());
                }
            });
        }
    });
    (runs.into_inner().unwrap(), rms.into_inner().unwrap())
}

/// The longest and the mean of `d`.
fn max_mean(d: &[std::time::Duration]) -> (std::time::Duration, std::time::Duration) {
    let max = d.iter().max().copied().unwrap_or_default();
    let mean = d.iter().sum::<std::time::Duration>() / (d.len().max(1) as u32);
    (max, mean)
}

/// Scenario 3 of issue 17, churn: the pool in `vxlanMode: CrossSubnet` (h1 <-> h2 direct,
/// h3 over VXLAN) with /30 blocks (so that the churn also claims blocks, whose routes the
/// other hosts add while traffic flows). A long-lived target and a pinger container per
/// host; each pinger pings another host's target five times a second (h1 -> h2, h2 -> h3,
/// h3 -> h1) while 50 containers are started and removed on the three hosts at once (rounds
/// of three in parallel per host). No pinger loses a packet (but the last, possibly in
/// flight when ping is stopped: `PingReport::lost`). Afterwards only the targets' and
/// pingers' WorkloadEndpoints, allocations and veths are left, and every route of ours on
/// every host matches the datastore (`routes_match_datastore`).
#[test]
fn churn_of_fifty_containers_loses_no_ping() {
    let test = "docker_fleet::churn_of_fifty_containers_loses_no_ping";
    let Some((lock, t0)) = docker::lock_if_root(test) else {
        return;
    };
    let fleet = Fleet::builder()
        .dockerd()
        .under_lock(&lock)
        .plugin_env("CALICO_IPV4POOL_VXLAN", "CrossSubnet")
        .plugin_env("CALICO_IPV4POOL_BLOCK_SIZE", "30")
        .start();
    let t_up = t0.elapsed();
    let mut targets = Vec::new();
    for (i, h) in fleet.hosts.iter().enumerate() {
        h.d().calico_network("calinet", &[]);
        for c in [format!("t{}", i + 1), format!("p{}", i + 1)] {
            h.d()
                .sleeper(docker::BUSYBOX_IMAGE, &c, &["--network", "calinet"]);
        }
        targets.push(container_ip(h, &format!("t{}", i + 1)));
    }
    let baseline = endpoints(&fleet);
    assert_eq!(baseline.len(), 6, "{baseline:?}");
    // p1 -> t2 (direct), p2 -> t3 and p3 -> t1 (VXLAN).
    let paths: Vec<(usize, String, Ipv4Addr)> = (0..3)
        .map(|i| (i, format!("p{}", i + 1), targets[(i + 1) % 3]))
        .collect();
    let t_conv = wait_pings(&fleet, &paths, std::time::Duration::from_secs(40));
    let blocks = fleet.list(BLOCKS_V4);
    let (h1, h2, h3) = (fleet.host("h1"), fleet.host("h2"), fleet.host("h3"));
    let to_t2 = route_to(h1, block_cidr(&blocks, targets[1])).unwrap_or_default();
    assert!(
        to_t2.contains(&format!("via {} dev eth0", h2.addr())),
        "{to_t2}"
    );
    let to_t1 = route_to(h3, block_cidr(&blocks, targets[0])).unwrap_or_default();
    assert!(to_t1.contains("dev vxlan.calico onlink"), "{to_t1}");

    let pingers: Vec<Pinger> = paths
        .iter()
        .map(|(i, c, to)| Pinger::start(&fleet, &fleet.hosts[*i], c, *to))
        .collect();
    let t = std::time::Instant::now();
    let (runs, rms) = churn(&fleet, &[17, 17, 16], 3);
    let t_churn = t.elapsed();
    assert_eq!(runs.len(), 50);
    // A second more of traffic after the last removal.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let reports = stop_pingers(pingers);
    let (run_max, run_mean) = max_mean(&runs);
    let (rm_max, rm_mean) = max_mean(&rms);
    eprintln!(
        "{test}: fleet up in {t_up:?}, pingers' paths working {t_conv:?} after the containers \
         started; 50 containers started and removed in {t_churn:?} (docker run: longest \
         {run_max:?}, mean {run_mean:?}; docker rm -f of a round: longest {rm_max:?}, mean \
         {rm_mean:?})"
    );
    for (name, r) in &reports {
        eprintln!(
            "{test}: {name}: {} sent, {} received, lost {:?}",
            r.sent,
            r.received,
            r.lost()
        );
    }
    for (name, r) in &reports {
        // Five a second during the whole churn.
        assert!(
            f64::from(r.sent) >= t_churn.as_secs_f64() * 4.0,
            "{name}: only {} sent in {t_churn:?}",
            r.sent
        );
        assert!(r.lost().is_empty(), "{name}: lost {:?} ({r:?})", r.lost());
    }

    // Nothing of the churn is left: endpoints, allocations, veths, routes.
    let t = std::time::Instant::now();
    common::wait_until(
        "only the targets' and pingers' WorkloadEndpoints",
        std::time::Duration::from_secs(15),
        || {
            let now = endpoints(&fleet);
            if now == baseline {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    );
    let addrs: std::collections::BTreeSet<Ipv4Addr> = baseline.iter().map(|(_, a)| *a).collect();
    assert_eq!(container_allocations(&fleet), addrs);
    for h in &fleet.hosts {
        assert_eq!(host_veths(h).len(), 2, "{}: {:?}", h.name(), host_veths(h));
    }
    let host_routes = common::wait_until(
        "every host's routes as the datastore says",
        std::time::Duration::from_secs(15),
        || routes_match_datastore(&fleet),
    );
    let nblocks = fleet.list(BLOCKS_V4).len();
    eprintln!(
        "{test}: clean {:?} after the churn: {nblocks} blocks, each routed on every host, \
         {host_routes} /32 routes; {:?} in all",
        t.elapsed(),
        t0.elapsed()
    );
    assert_eq!(host_routes, 0, "no address was borrowed, so no /32 route");
}

/// `iptables -I OUTPUT -p tcp --dport 2379 -j DROP` in a host's namespace, deleted on drop:
/// the host's plugin reaches no etcd member, its own included (the members still reach
/// each other on 2380, and other hosts' plugins still reach this host's member).
struct EtcdCut<'a>(&'a Host);

const CUT_RULE: [&str; 8] = ["OUTPUT", "-p", "tcp", "--dport", "2379", "-j", "DROP", "-w"];

impl<'a> EtcdCut<'a> {
    fn new(h: &'a Host) -> EtcdCut<'a> {
        let mut args = vec!["-I"];
        args.extend_from_slice(&CUT_RULE);
        h.exec_ok("iptables", &args);
        EtcdCut(h)
    }
}

impl Drop for EtcdCut<'_> {
    fn drop(&mut self) {
        let mut args = vec!["-D"];
        args.extend_from_slice(&CUT_RULE);
        let (ok, out) = self.0.exec("iptables", &args);
        if !ok {
            eprintln!("{}: iptables -D: {out}", self.0.name());
        }
    }
}

/// Scenario 5 of issue 17, etcd trouble, with the pool in `vxlanMode: CrossSubnet` and /31
/// blocks (so that new containers need new blocks, and the other hosts new routes).
/// (a) One etcd member killed (h1's, the first of every plugin's `ETCD_ENDPOINTS`): a new
/// container starts on every host, and every pair of them pings, within bounds printed.
/// (b) h3 cut off from etcd (its plugin reaches no member): h3's container keeps pinging
/// h1's and h2's, losing nothing, for 15 s (past a periodic route check); `docker run` on
/// h3 fails within the plugin's request deadline (10 s) with an error naming etcd, and
/// leaves no WorkloadEndpoint, allocation or veth; the routes stay as they were. Cut
/// removed: a new container on h3 starts and pings every other host's containers, and every
/// route matches the datastore again, those from before the cut all still there.
#[test]
fn etcd_member_down_and_host_cut_off() {
    use std::time::{Duration, Instant};
    let test = "docker_fleet::etcd_member_down_and_host_cut_off";
    let Some((lock, t0)) = docker::lock_if_root(test) else {
        return;
    };
    let mut fleet = Fleet::builder()
        .dockerd()
        .under_lock(&lock)
        .plugin_env("CALICO_IPV4POOL_VXLAN", "CrossSubnet")
        .plugin_env("CALICO_IPV4POOL_BLOCK_SIZE", "31")
        .start();
    let mut first = Vec::new();
    for (i, h) in fleet.hosts.iter().enumerate() {
        h.d().calico_network("calinet", &[]);
        let c = format!("a{}", i + 1);
        h.d()
            .sleeper(docker::BUSYBOX_IMAGE, &c, &["--network", "calinet"]);
        first.push(container_ip(h, &c));
    }
    let pairs = |prefix: &str, ips: &[Ipv4Addr]| -> Vec<(usize, String, Ipv4Addr)> {
        (0..3)
            .flat_map(|i| (0..3).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| (i, format!("{prefix}{}", i + 1), ips[j]))
            .collect()
    };
    let t_conv = wait_pings(&fleet, &pairs("a", &first), Duration::from_secs(40));
    eprintln!("{test}: every pair of a1..a3 pings after {t_conv:?}");

    // (a) One member down.
    fleet.kill_etcd_member(0);
    let t = Instant::now();
    let mut second = Vec::new();
    for (i, h) in fleet.hosts.iter().enumerate() {
        let c = format!("n{}", i + 1);
        let tr = Instant::now();
        h.d()
            .sleeper(docker::BUSYBOX_IMAGE, &c, &["--network", "calinet"]);
        let took = tr.elapsed();
        eprintln!(
            "{test}: member h1 down: docker run {c} on {} in {took:?}",
            h.name()
        );
        assert!(took < Duration::from_secs(10), "{c}: {took:?}");
        second.push(container_ip(h, &c));
    }
    let t_started = t.elapsed();
    let t_pairs = wait_pings(&fleet, &pairs("n", &second), Duration::from_secs(30));
    let blocks = fleet.list(BLOCKS_V4);
    for (a, n) in first.iter().zip(&second) {
        assert_ne!(
            block_cidr(&blocks, *a),
            block_cidr(&blocks, *n),
            "{n} should have needed a new block"
        );
    }
    eprintln!(
        "{test}: (a) member h1 down: n1..n3 started in {t_started:?}, every pair pings \
         {t_pairs:?} later ({:?} in all)",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let t = Instant::now();
    fleet.etcd.restart(0);
    eprintln!("{test}: member h1 back in {:?}", t.elapsed());

    // (b) h3 cut off from etcd.
    let h3 = fleet.host("h3");
    let routes_before: Vec<Vec<String>> = fleet.hosts.iter().map(our_routes).collect();
    let weps_before = endpoints(&fleet);
    let veths_before = host_veths(h3);
    let cut = EtcdCut::new(h3);
    let t_cut = Instant::now();
    // Positive control: no member answers h3, its own included.
    for url in fleet.etcd.endpoints() {
        let (ok, out) = h3.exec("curl", &["-sS", "-m", "1", &format!("{url}/health")]);
        assert!(!ok, "h3 still reaches {url}: {out}");
    }
    let pingers: Vec<Pinger> = [first[0], first[1]]
        .iter()
        .map(|to| Pinger::start(&fleet, h3, "a3", *to))
        .collect();
    let tr = Instant::now();
    let err = h3.d().docker_err(&[
        "run",
        "-d",
        "--name",
        "x3",
        "--network",
        "calinet",
        docker::BUSYBOX_IMAGE,
        "sleep",
        "600",
    ]);
    let t_fail = tr.elapsed();
    eprintln!("{test}: (b) h3 cut off: docker run failed after {t_fail:?}: {err}");
    assert!(err.contains("etcd"), "{err}");
    // Within the plugin's request deadline (10 s): the answer is etcd's failure, after one
    // datastore deadline (5 s), not the request's own timeout (the read of datastoreReady
    // once cost a deadline of its own before the call's first read, ~10 s in all).
    assert!(t_fail < Duration::from_secs(9), "{t_fail:?}");
    // Each pinger answered for 15 s (76 replies, one every 200 ms) with h3 cut off: a
    // periodic route check (every 10 s) runs meanwhile on every host.
    common::wait_until(
        "15 s of replies to h3's pingers",
        Duration::from_secs(40),
        || -> Result<(), String> {
            for p in &pingers {
                let replies = p.output().matches(" seq=").count();
                if replies < 76 {
                    return Err(format!("{}: {replies} replies", p.name()));
                }
            }
            Ok(())
        },
    );
    for (h, before) in fleet.hosts.iter().zip(&routes_before) {
        assert_eq!(&our_routes(h), before, "{}'s routes changed", h.name());
    }
    let reports = stop_pingers(pingers);
    for (name, r) in &reports {
        eprintln!(
            "{test}: (b) h3 cut off for {:?}: {name}: {} sent, {} received, lost {:?}",
            t_cut.elapsed(),
            r.sent,
            r.received,
            r.lost()
        );
        assert!(r.sent >= 76, "{name}: {r:?}");
        assert!(r.lost().is_empty(), "{name}: lost {:?} ({r:?})", r.lost());
    }
    assert_eq!(
        host_veths(h3),
        veths_before,
        "the failed container left a veth"
    );
    drop(cut);
    let t_back = Instant::now();

    // Nothing of x3 in etcd (the test reads through the members, not through h3).
    assert_eq!(endpoints(&fleet), weps_before);
    let addrs: std::collections::BTreeSet<Ipv4Addr> = weps_before.iter().map(|(_, a)| *a).collect();
    assert_eq!(container_allocations(&fleet), addrs);
    h3.d().docker_ok(&["rm", "-f", "x3"]);
    let tr = Instant::now();
    h3.d()
        .sleeper(docker::BUSYBOX_IMAGE, "y3", &["--network", "calinet"]);
    let t_run = tr.elapsed();
    let y3 = container_ip(h3, "y3");
    let others: Vec<(usize, String, Ipv4Addr)> = [first[0], first[1], second[0], second[1]]
        .iter()
        .map(|ip| (2, "y3".to_string(), *ip))
        .collect();
    let t_pings = wait_pings(&fleet, &others, Duration::from_secs(30));
    let host_routes = common::wait_until(
        "every host's routes as the datastore says",
        Duration::from_secs(15),
        || routes_match_datastore(&fleet),
    );
    assert_eq!(host_routes, 0);
    for (h, before) in fleet.hosts.iter().zip(&routes_before) {
        let now = our_routes(h);
        let gone: Vec<&String> = before.iter().filter(|r| !now.contains(r)).collect();
        assert!(gone.is_empty(), "{}: routes gone: {gone:?}", h.name());
        // Only y3's block, when it needed a new one, is new.
        let y3_block = block_cidr(&fleet.list(BLOCKS_V4), y3).to_string();
        let new: Vec<&String> = now
            .iter()
            .filter(|r| !before.contains(r) && !r.contains(&y3_block))
            .collect();
        assert!(new.is_empty(), "{}: new routes: {new:?}", h.name());
    }
    eprintln!(
        "{test}: cut removed: docker run y3 on h3 in {t_run:?}, it pings h1's and h2's \
         containers {t_pings:?} later, routes as the datastore says {:?} after the cut's \
         end; {:?} in all",
        t_back.elapsed(),
        t0.elapsed()
    );
}

/// `ping` from container `c` on `h` to `to`, waiting at most one second for the reply:
/// whether it came.
fn reaches(h: &Host, c: &str, to: Ipv4Addr) -> bool {
    h.d()
        .docker(&["exec", c, "ping", "-c", "1", "-W", "1", &to.to_string()])
        .status
        .success()
}

/// The address container `c` has on network `net`.
fn ip_on(h: &Host, c: &str, net: &str) -> Ipv4Addr {
    let f = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
    let out = h.d().docker_ok(&["inspect", "-f", &f, c]);
    out.parse()
        .unwrap_or_else(|e| panic!("{}: {c} on {net}: {out:?}: {e}", h.name()))
}

/// Packets the container behind host-side veth `veth` on `h` has been sent (the veth's
/// transmit counter, `ip -s link`: what reached the container).
fn delivered(h: &Host, veth: &str) -> u64 {
    let out = h.exec_ok("ip", &["-j", "-s", "link", "show", "dev", veth]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    v[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: no tx packets for {veth}: {out}", h.name()))
}

/// The host-side veth of the endpoint holding `ip`.
fn veth_of(fleet: &Fleet, ip: Ipv4Addr) -> String {
    fleet
        .list(WEPS_PREFIX)
        .iter()
        .find(|(_, w)| w["spec"]["ipNetworks"][0] == format!("{ip}/32"))
        .and_then(|(_, w)| w["spec"]["interfaceName"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no WorkloadEndpoint with {ip}"))
}

/// An address of `block` that no WorkloadEndpoint holds and that is not the block's first
/// or last.
fn unused_in(fleet: &Fleet, block: Ipv4Net) -> Ipv4Addr {
    let weps = fleet.list(WEPS_PREFIX);
    block
        .hosts()
        .skip(8)
        .find(|ip| {
            weps.iter()
                .all(|(_, w)| w["spec"]["ipNetworks"][0] != format!("{ip}/32"))
        })
        .unwrap_or_else(|| panic!("no free address in {block}"))
}

/// Issue 18's scenarios 1, 2 and 4 on three hosts with VXLAN between them (so that h3,
/// behind the router, is reached too):
/// 1. networks `red` and `blue` on every host, a container on each: red reaches red and
///    blue reaches blue across every pair of hosts; red never reaches blue, nor blue red
///    (each refusal beside its positive control from the same host);
/// 2. `docker network connect blue r1` on h1: within a second the blue containers of h2
///    and h3 reach r1's new address and r1 reaches them, the red ones still reach its red
///    address; after `network disconnect` neither way works any more;
/// 3. a packet sent from h2 (its host, not a container) to r1 with a source address from
///    h3's block that no container holds, or from h1's own block, never reaches r1, while
///    r2's own packets do (counted on r1's veth).
#[test]
fn isolation_across_hosts() {
    let test = "docker_fleet::isolation_across_hosts";
    on_fleet(test, |fleet, t0| {
        set_pool_modes(fleet, "Always", "Never");
        let mut red = Vec::new();
        let mut blue = Vec::new();
        for (i, h) in fleet.hosts.iter().enumerate() {
            h.d().calico_network("red", &[]);
            h.d().calico_network("blue", &[]);
            let (r, b) = (format!("r{}", i + 1), format!("b{}", i + 1));
            h.d()
                .sleeper(docker::BUSYBOX_IMAGE, &r, &["--network", "red"]);
            h.d()
                .sleeper(docker::BUSYBOX_IMAGE, &b, &["--network", "blue"]);
            red.push(container_ip(h, &r));
            blue.push(container_ip(h, &b));
        }
        let hosts = &fleet.hosts;
        let pairs: Vec<(usize, usize)> = (0..3)
            .flat_map(|i| (0..3).filter(move |&j| j != i).map(move |j| (i, j)))
            .collect();
        // Tunnel addresses, routes and sets come within seconds of the start.
        common::wait_until(
            "red and blue reach their own across hosts",
            std::time::Duration::from_secs(40),
            || {
                let failed: Vec<String> = pairs
                    .iter()
                    .flat_map(|&(i, j)| {
                        [("r", &red), ("b", &blue)]
                            .into_iter()
                            .filter(move |(c, ips)| {
                                !reaches(&hosts[i], &format!("{c}{}", i + 1), ips[j])
                            })
                            .map(move |(c, _)| format!("{c}{} -> {c}{}", i + 1, j + 1))
                    })
                    .collect();
                if failed.is_empty() {
                    Ok(())
                } else {
                    Err(failed.join(", "))
                }
            },
        );
        eprintln!(
            "{test}: red<->red and blue<->blue across hosts after {:?}",
            t0.elapsed()
        );
        for &(i, j) in &pairs {
            let h = &hosts[i];
            let (r, b) = (format!("r{}", i + 1), format!("b{}", i + 1));
            assert!(reaches(h, &r, red[j]), "control: {r} -> r{}", j + 1);
            assert!(
                !reaches(h, &r, blue[j]),
                "{r} reached b{} ({})",
                j + 1,
                blue[j]
            );
            assert!(reaches(h, &b, blue[j]), "control: {b} -> b{}", j + 1);
            assert!(
                !reaches(h, &b, red[j]),
                "{b} reached r{} ({})",
                j + 1,
                red[j]
            );
        }
        eprintln!("{test}: scenario 1 (red/blue) done at {:?}", t0.elapsed());

        // Scenario 2: r1 joins blue at runtime.
        let (h1, h2, h3) = (fleet.host("h1"), fleet.host("h2"), fleet.host("h3"));
        h1.d().docker_ok(&["network", "connect", "blue", "r1"]);
        let t = std::time::Instant::now();
        let r1_blue = ip_on(h1, "r1", "blue");
        for (h, b) in [(h2, "b2"), (h3, "b3")] {
            while !reaches(h, b, r1_blue) {
                assert!(
                    t.elapsed() < std::time::Duration::from_secs(1),
                    "{b} does not reach r1's blue address {r1_blue} within 1 s of the connect"
                );
            }
        }
        let t_connect = t.elapsed();
        // Docker's reach on two networks: r1 reaches blue's containers too (from whichever of
        // its addresses its routes pick: the other hosts count both as blue's).
        for (b, ip) in [("b2", blue[1]), ("b3", blue[2])] {
            assert!(reaches(h1, "r1", ip), "r1 (now on blue) does not reach {b}");
        }
        for (h, r) in [(h2, "r2"), (h3, "r3")] {
            assert!(
                reaches(h, r, red[0]),
                "{r} no longer reaches r1 after the connect"
            );
        }
        // Still only through the network they share: blue's containers to r1's red address
        // is blue to red.
        assert!(!reaches(h2, "b2", red[0]), "b2 reached r1's red address");
        eprintln!("{test}: scenario 2: b2 and b3 reach r1 {t_connect:?} after the connect");
        h1.d().docker_ok(&["network", "disconnect", "blue", "r1"]);
        common::wait_until(
            "b2 and b3 lose r1 after the disconnect",
            std::time::Duration::from_secs(10),
            || {
                let still: Vec<&str> = [(h2, "b2"), (h3, "b3")]
                    .into_iter()
                    .filter(|(h, b)| reaches(h, b, r1_blue) || reaches(h, b, red[0]))
                    .map(|(_, b)| b)
                    .collect();
                if still.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{still:?} still reach r1"))
                }
            },
        );
        assert!(
            reaches(h2, "r2", red[0]),
            "control: r2 -> r1 after the disconnect"
        );
        for (b, ip) in [("b2", blue[1]), ("b3", blue[2])] {
            assert!(
                !reaches(h1, "r1", ip),
                "r1 still reaches {b} after the disconnect"
            );
        }

        // Scenario 4: spoofed sources from h2's host towards r1 (on h1).
        let blocks = fleet.list(BLOCKS_V4);
        let veth = veth_of(fleet, red[0]);
        let spoofed = [
            ("h3's block", unused_in(fleet, block_cidr(&blocks, red[2]))),
            (
                "h1's own block",
                unused_in(fleet, block_cidr(&blocks, red[0])),
            ),
        ];
        for (what, src) in spoofed {
            h2.exec_ok("ip", &["addr", "add", &format!("{src}/32"), "dev", "lo"]);
            let n0 = delivered(h1, &veth);
            let (_, out) = h2.exec(
                "ping",
                &[
                    "-c",
                    "50",
                    "-i",
                    "0.01",
                    "-W",
                    "1",
                    "-I",
                    &src.to_string(),
                    &red[0].to_string(),
                ],
            );
            let got = delivered(h1, &veth) - n0;
            h2.exec_ok("ip", &["addr", "del", &format!("{src}/32"), "dev", "lo"]);
            assert!(
                got < 10,
                "{got} of 50 packets from h2 with a source in {what} ({src}) reached r1: {out}"
            );
            // Positive control: r2's own 50 packets arrive.
            let n0 = delivered(h1, &veth);
            h2.d().docker_ok(&[
                "exec",
                "r2",
                "ping",
                "-c",
                "50",
                "-i",
                "0.01",
                "-W",
                "1",
                &red[0].to_string(),
            ]);
            let control = delivered(h1, &veth) - n0;
            assert!(
                control >= 50,
                "control: only {control} of r2's 50 pings reached r1"
            );
            eprintln!("{test}: spoofed from {what}: {got} of 50 delivered; r2's: {control}");
        }
        eprintln!("{test}: all in {:?}", t0.elapsed());
    });
}

/// The IPv6 address container `c` has on its one network.
fn container_ip6(h: &Host, c: &str) -> std::net::Ipv6Addr {
    container_address(h, c, "GlobalIPv6Address")
}

/// [`ping`] to an IPv6 address.
fn ping6(h: &Host, c: &str, to: std::net::Ipv6Addr) -> Result<(), String> {
    ping(h, c, &to.to_string())
}

/// Our IPv6 route on `h` to the block holding `ip` (`ip -6 route show proto 81`).
fn route6_to(h: &Host, fleet: &Fleet, ip: std::net::Ipv6Addr) -> Option<String> {
    let cidr = fleet
        .list("/calico/ipam/v2/assignment/ipv6/block/")
        .iter()
        .find_map(|(_, b)| {
            let cidr: ipnet::Ipv6Net = b["cidr"].as_str()?.parse().ok()?;
            cidr.contains(&ip).then_some(cidr)
        })
        .unwrap_or_else(|| panic!("no block holds {ip}"));
    h.exec_ok("ip", &["-6", "route", "show", "proto", "81"])
        .lines()
        .map(|l| l.trim().to_string())
        .find(|l| l.split_whitespace().take(2).any(|w| w == cidr.to_string()))
}

/// Sets the default IPv6 pool's `vxlanMode` as `calicoctl apply` would.
fn set_pool6_vxlan(fleet: &Fleet, vxlan: &str) {
    const KEY: &str = "/calico/resources/v3/projectcalico.org/ippools/default-ipv6-ippool";
    let mut pool = fleet
        .etcd
        .get_json(KEY)
        .unwrap_or_else(|| panic!("no {KEY}"));
    pool["spec"]["vxlanMode"] = vxlan.into();
    fleet.etcd.put_json(KEY, &pool);
}

/// IPv6 between hosts (issue 17's "IPv6 likewise", issue 18's isolation in IPv6): with
/// `IP6=autodetect` (and `CALICO_IPV6POOL_CIDR`) each Node gets its underlay IPv6 address (`spec.bgp.ipv6Address`); a
/// `--ipv6` Calico network (no `--subnet`: the default IPv6 pool) with a container on each
/// host; with the pool's `vxlanMode` Never, h1 and h2 (one segment) reach each other by a
/// route via the peer's IPv6 address and h3 stays out of reach (no BGP); with Always, every
/// pair pings over `vxlan-v6.calico` (Felix's IPv6 device: VNI 4096, port 4789, MTU
/// underlay − 70) via the peers' IPv6 tunnel addresses. A container of another network on
/// h2 stays out of c1's reach (the IPv6 member sets), ip6tables `FORWARD` at `DROP`.
#[test]
fn ipv6_containers_on_three_hosts_reach_each_other() {
    let test = "docker_fleet::ipv6_containers_on_three_hosts_reach_each_other";
    // As calico-node: the default IPv6 pool only where one is given (calico-node would make
    // up a random ULA /48; the plugin makes none).
    let env = [
        ("IP6", "autodetect"),
        ("CALICO_IPV6POOL_CIDR", "fd5e:c0de:1::/48"),
    ];
    on_fleet_with(test, &env, |fleet, t0| {
        for h in &fleet.hosts {
            let key = format!("/calico/resources/v3/projectcalico.org/nodes/{}", h.name());
            let want = format!("{}/64", h.addr6());
            common::wait_until(
                &format!("{}'s Node has its IPv6 address", h.name()),
                std::time::Duration::from_secs(20),
                || {
                    let node = fleet.etcd.get_json(&key);
                    let have = node
                        .as_ref()
                        .map(|n| n["spec"]["bgp"]["ipv6Address"].clone());
                    if have == Some(Value::from(want.clone())) {
                        Ok(())
                    } else {
                        Err(format!("{have:?}"))
                    }
                },
            );
        }
        let mut ips = Vec::new();
        for (i, h) in fleet.hosts.iter().enumerate() {
            h.d().calico_network("v6net", &["--ipv6"]);
            let c = format!("c{}", i + 1);
            h.d()
                .sleeper(docker::BUSYBOX_IMAGE, &c, &["--network", "v6net"]);
            ips.push(container_ip6(h, &c));
        }
        // Another network's container on h2: never reached from c1.
        let h2 = fleet.host("h2");
        h2.d().calico_network("other6", &["--ipv6"]);
        h2.d()
            .sleeper(docker::BUSYBOX_IMAGE, "o2", &["--network", "other6"]);
        let other = container_ip6(h2, "o2");
        let (h1, h3) = (fleet.host("h1"), fleet.host("h3"));
        let all_pairs: Vec<(usize, usize)> = (0..3)
            .flat_map(|i| (0..3).filter(move |&j| j != i).map(move |j| (i, j)))
            .collect();
        for (vxlan, pairs) in [("Never", vec![(0, 1), (1, 0)]), ("Always", all_pairs)] {
            let t = std::time::Instant::now();
            set_pool6_vxlan(fleet, vxlan);
            common::wait_until(
                &format!("vxlanMode {vxlan}: every pair pings over IPv6"),
                std::time::Duration::from_secs(40),
                || {
                    let failed: Vec<String> = pairs
                        .iter()
                        .filter_map(|&(i, j)| {
                            ping6(&fleet.hosts[i], &format!("c{}", i + 1), ips[j]).err()
                        })
                        .collect();
                    if failed.is_empty() {
                        Ok(())
                    } else {
                        let routes: Vec<String> = fleet
                            .hosts
                            .iter()
                            .map(|h| {
                                format!(
                                    "{}: {}",
                                    h.name(),
                                    h.exec_ok("ip", &["-6", "route", "show", "proto", "81"])
                                )
                            })
                            .collect();
                        Err(format!(
                            "{}\nroutes:\n{}",
                            failed.join("\n"),
                            routes.join("\n")
                        ))
                    }
                },
            );
            eprintln!(
                "{test}: vxlanMode {vxlan}: every pair pings after {:?}",
                t.elapsed()
            );
            let to_h2 = route6_to(h1, fleet, ips[1]).unwrap_or_default();
            let to_h3 = route6_to(h1, fleet, ips[2]).unwrap_or_default();
            if vxlan == "Never" {
                assert!(
                    to_h2.contains(&format!("via {} dev eth0", h2.addr6())),
                    "h1 -> h2: {to_h2}"
                );
                assert!(to_h3.is_empty(), "h1 -> h3 needs BGP: {to_h3}");
                // Positive control of that: h3's container is out of h1's reach.
                assert!(ping6(h1, "c1", ips[2]).is_err());
            } else {
                for r in [&to_h2, &to_h3] {
                    assert!(
                        r.contains("dev vxlan-v6.calico") && r.contains("onlink"),
                        "{r}"
                    );
                }
                for h in [h1, h2, h3] {
                    let key = format!("/calico/resources/v3/projectcalico.org/nodes/{}", h.name());
                    let node = fleet.etcd.get_json(&key).unwrap();
                    let tunnel = node["spec"]["ipv6VXLANTunnelAddr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no IPv6 VXLAN tunnel address on {node}"));
                    let mac = node["spec"]["vxlanTunnelMACAddrV6"].as_str().unwrap();
                    let link = h.exec_ok("ip", &["-d", "link", "show", "vxlan-v6.calico"]);
                    for want in [
                        "vxlan id 4096",
                        "dstport 4789",
                        "mtu 1430",
                        &format!("local {}", h.addr6()),
                        mac,
                    ] {
                        assert!(link.contains(want), "{}: no {want:?} in {link}", h.name());
                    }
                    let a = h.exec_ok("ip", &["-6", "addr", "show", "vxlan-v6.calico"]);
                    assert!(a.contains(&format!("{tunnel}/128")), "{}: {a}", h.name());
                }
            }
            // Isolation: c1 reaches c2 (above) but not h2's container of another network.
            assert!(
                ping6(h1, "c1", other).is_err(),
                "vxlanMode {vxlan}: c1 reached o2 of another network"
            );
        }
        eprintln!("{test}: done in {:?}", t0.elapsed());
    });
}
