//! End-to-end scenarios beyond one network: `--subnet` and `--ip`, IPv6, a container on
//! several Calico networks, 20 containers started at once, refusals, and a plugin restart
//! between run and removal. Our own dockerd (Debian's 20.10), a real etcd and the real
//! `calico-libnetwork` binary; iptables FORWARD stays at DROP throughout.
//!
//! Needs root. Every test holds the host lock, so they run one at a time.

use crate::common;

use common::{
    BLOCKS_PREFIXES, HANDLES_PREFIX, HOST_MAC, POOLS_PREFIX, PROFILES_PREFIX, WEPS_PREFIX,
};

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::process::Command;
use std::time::Instant;

use calico_libnetwork::model::keys;
use common::docker::{self, Dockerd};
use common::firewall::{self, host};
use common::plugin::{DockerEnv, BINARY};
use ipnet::IpNet;
use serde_json::Value;

/// Root (else a loud skip), then the lock, etcd, the plugin, dockerd with busybox and FORWARD
/// at DROP; runs `body` on that env (with when the test started), then [`finish`].
fn run(test: &str, body: impl FnOnce(&mut DockerEnv, Instant)) {
    let t0 = Instant::now();
    let Some(mut env) = DockerEnv::builder()
        .etcd()
        .busybox()
        .forward_drop()
        .start_if_root(test)
    else {
        return;
    };
    body(&mut env, t0);
    finish(test, env, t0);
}

pub(super) fn pool_cidrs(env: &DockerEnv) -> BTreeMap<String, String> {
    env.list(POOLS_PREFIX)
        .into_iter()
        .map(|(_, p)| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["spec"]["cidr"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// `calico-libnetwork args...` on our etcd; stdout+stderr, asserting success.
fn cli_ok(env: &DockerEnv, args: &[&str]) -> String {
    let o = Command::new(BINARY)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("ETCD_ENDPOINTS", env.etcd().endpoint())
        .env("NODENAME", common::plugin::NODENAME)
        .output()
        .unwrap_or_else(|e| panic!("run {BINARY}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "calico-libnetwork {args:?}: {text}");
    text
}

/// Pings `to` from container `from`, asserting that nothing answers.
fn no_ping(env: &DockerEnv, from: &str, to: IpAddr) {
    let ping = if to.is_ipv6() { "ping6" } else { "ping" };
    let out = env
        .d()
        .docker(&["exec", from, ping, "-c", "1", "-W", "2", &to.to_string()]);
    assert!(
        !out.status.success(),
        "ping {from} -> {to} must fail across networks: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Pings `to` from container `from` (`ping` or `ping6`), asserting success.
fn ping(env: &DockerEnv, from: &str, to: IpAddr) {
    let out = env.d().docker(&[
        "exec",
        from,
        if to.is_ipv6() { "ping6" } else { "ping" },
        "-c",
        "1",
        "-W",
        "3",
        &to.to_string(),
    ]);
    assert!(
        out.status.success(),
        "ping {from} -> {to}: {}{}\nroutes in {from}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        exec(env, from, &["ip", "route"]),
        exec(env, from, &["ip", "-6", "route"]),
    );
}

/// `docker exec c args...` expecting success; stdout.
pub(super) fn exec(env: &DockerEnv, c: &str, args: &[&str]) -> String {
    let mut a = vec!["exec", c];
    a.extend_from_slice(args);
    env.d().docker_ok(&a)
}

/// Nothing of ours left in etcd: no WorkloadEndpoint, allocation or handle.
pub(super) fn assert_no_endpoints_or_allocations(env: &DockerEnv, what: &str) {
    let weps = env.list(WEPS_PREFIX);
    assert!(weps.is_empty(), "{what}: WorkloadEndpoints left: {weps:?}");
    for prefix in BLOCKS_PREFIXES {
        for (key, b) in env.list(prefix) {
            let allocs = b["allocations"].as_array().cloned().unwrap_or_default();
            assert!(
                allocs.iter().all(Value::is_null),
                "{what}: {key}: allocations left: {b}"
            );
        }
    }
    let handles = env.list(HANDLES_PREFIX);
    assert!(handles.is_empty(), "{what}: handles left: {handles:?}");
}

/// One container's endpoint on one network, from `docker inspect`.
#[derive(Clone, Debug)]
pub(super) struct Attachment {
    pub(super) endpoint_id: String,
    pub(super) ipv4: Option<IpAddr>,
    pub(super) ipv6: Option<IpAddr>,
}

impl Attachment {
    pub(super) fn host_veth(&self) -> String {
        format!("cali{}", &self.endpoint_id[..11])
    }
}

/// A container's endpoints by network name.
pub(super) fn attachments(d: &Dockerd, c: &str) -> BTreeMap<String, Attachment> {
    let out = d.docker_ok(&["inspect", "-f", "{{json .NetworkSettings.Networks}}", c]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{c}: {e}: {out}"));
    let ip = |s: &Value| {
        s.as_str()
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
    };
    v.as_object()
        .unwrap()
        .iter()
        .map(|(net, e)| {
            (
                net.clone(),
                Attachment {
                    endpoint_id: e["EndpointID"].as_str().unwrap().to_string(),
                    ipv4: ip(&e["IPAddress"]),
                    ipv6: ip(&e["GlobalIPv6Address"]),
                },
            )
        })
        .collect()
}

pub(super) fn attachment(d: &Dockerd, c: &str, net: &str) -> Attachment {
    attachments(d, c)
        .remove(net)
        .unwrap_or_else(|| panic!("{c} is not on {net}"))
}

fn ipv4_of(d: &Dockerd, c: &str, net: &str) -> IpAddr {
    attachment(d, c, net)
        .ipv4
        .unwrap_or_else(|| panic!("{c}: no IPv4 address on {net}"))
}

pub(super) fn in_net(ip: IpAddr, net: &str) -> bool {
    net.parse::<IpNet>().unwrap().contains(&ip)
}

/// Removes `containers` and `networks`, then checks nothing of them is left: no `cali`
/// link, endpoint, allocation or handle.
fn remove_and_check(env: &DockerEnv, containers: &[&str], networks: &[&str], what: &str) {
    let mut rm = vec!["rm", "-f"];
    rm.extend_from_slice(containers);
    env.d().docker_ok(&rm);
    for net in networks {
        env.d().docker_ok(&["network", "rm", net]);
    }
    assert_no_cali_links();
    assert_no_endpoints_or_allocations(env, what);
}

/// The host has no route to `ip` and no link `veth`.
fn assert_host_clean(ip: IpAddr, veth: &str) {
    assert!(
        !std::path::Path::new("/sys/class/net").join(veth).exists(),
        "host veth {veth} left"
    );
    let fam = if ip.is_ipv6() { "-6" } else { "-4" };
    let (_, route) = host("ip", &[fam, "route", "show", &ip.to_string()]);
    assert!(route.trim().is_empty(), "host route to {ip} left: {route}");
}

pub(super) fn assert_no_cali_links() {
    let (_, links) = host("ip", &["-o", "link", "show"]);
    let left: Vec<&str> = links
        .lines()
        .filter(|l| l.contains(": cali") && !l.contains(&format!(": {}:", docker::BRIDGE)))
        .collect();
    assert!(left.is_empty(), "cali veths left:\n{}", left.join("\n"));
}

/// Containers gone and the plugin stopped gracefully: the plugin itself removed its rules
/// (checked before the harness's clean-up, which would hide a leak; the lock is still held).
pub(super) fn finish(test: &str, mut env: DockerEnv, t0: Instant) {
    env.docker.shutdown();
    env.plugin.stop();
    firewall::assert_no_chain();
    drop(env);
    eprintln!("{test}: total {:?}", t0.elapsed());
}

/// `--subnet` equal to an existing pool, `--subnet` creating a pool, `--ip`, and IPv6.
#[test]
fn subnets_fixed_address_and_ipv6() {
    const T: &str = "subnets_fixed_address_and_ipv6";
    run(T, |env, t0| {
        let d = env.d();

        // A pool made with our CLI; a network whose --subnet is exactly that pool uses it.
        cli_ok(env, &["pool", "add", "p1", "10.81.0.0/24"]);
        env.network("n81", &["--subnet", "10.81.0.0/24"]);
        env.run("c81", &["--net", "n81"]);
        let ip81 = ipv4_of(d, "c81", "n81");
        assert!(in_net(ip81, "10.81.0.0/24"), "c81 got {ip81}");
        let eth0 = exec(env, "c81", &["ip", "-4", "-o", "addr", "show", "eth0"]);
        assert!(eth0.contains(&format!("inet {ip81}/")), "c81 eth0: {eth0}");

        // A --subnet no pool has: the plugin creates one; --ip gets exactly that address.
        env.network("n82", &["--subnet", "10.82.0.0/24"]);
        let pools = pool_cidrs(env);
        assert_eq!(
            pools.get("libnetwork-10-82-0-0-24").map(String::as_str),
            Some("10.82.0.0/24"),
            "{pools:?}"
        );
        env.run("c82", &["--net", "n82", "--ip", "10.82.0.50"]);
        let ip82 = ipv4_of(d, "c82", "n82");
        assert_eq!(ip82.to_string(), "10.82.0.50");
        let eth0 = exec(env, "c82", &["ip", "-4", "-o", "addr", "show", "eth0"]);
        assert!(eth0.contains("inet 10.82.0.50/"), "c82 eth0: {eth0}");
        // The address is taken now: a second container asking for it is told so.
        let err = d.docker_err(&[
            "run",
            "-d",
            "--name",
            "c82b",
            "--net",
            "n82",
            "--ip",
            "10.82.0.50",
            env.image(),
            "true",
        ]);
        assert!(err.contains("already"), "second --ip 10.82.0.50: {err}");
        let _ = d.docker(&["rm", "-f", "c82b"]);
        // Positive controls: each reaches a peer on its own network ...
        env.run("c81p", &["--net", "n81"]);
        env.run("c82p", &["--net", "n82"]);
        ping(env, "c81", ipv4_of(d, "c81p", "n81"));
        ping(env, "c82", ipv4_of(d, "c82p", "n82"));
        // ... and different networks are isolated by their profiles (standalone mode).
        no_ping(env, "c81", ip82);
        no_ping(env, "c82", ip81);
        eprintln!("{T}: subnets and --ip ok ({:?})", t0.elapsed());

        // IPv6: a --subnet network, two containers ping6 each other.
        let mut v6 = Vec::new();
        if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
            common::say_skipped(&format!(
                "{T}: the IPv6 part: this kernel has no IPv6 (/proc/sys/net/ipv6 missing)"
            ));
        } else {
            env.network("n6", &["--ipv6", "--subnet", "fd82::/64"]);
            for c in ["c6a", "c6b"] {
                env.run(c, &["--net", "n6"]);
                let a = attachment(d, c, "n6");
                let ip6 = a
                    .ipv6
                    .unwrap_or_else(|| panic!("{c}: no IPv6 address: {a:?}"));
                assert!(in_net(ip6, "fd82::/64"), "{c} got {ip6}");
                let addrs = exec(env, c, &["ip", "-6", "-o", "addr", "show", "eth0"]);
                assert!(
                    addrs.contains(&format!("inet6 {ip6}/")),
                    "{c} eth0: {addrs}"
                );
                let routes = exec(env, c, &["ip", "-6", "route"]);
                assert!(
                    routes.lines().any(|l| l.starts_with("default via fe80::")),
                    "{c}: no IPv6 default route via the host link-local:\n{routes}"
                );
                v6.push((c, a));
            }
            ping(env, "c6a", v6[1].1.ipv6.unwrap());
            ping(env, "c6b", v6[0].1.ipv6.unwrap());
            // And IPv4 alongside, from Calico's default pool.
            ping(env, "c6a", v6[1].1.ipv4.unwrap());
            // A second IPv6 network on c6a: every host veth has the same link-local gateway, so
            // its connected /128 route must be given only once (else "file exists").
            env.network("n6b", &["--ipv6", "--subnet", "fd83::/64"]);
            d.docker_ok(&["network", "connect", "n6b", "c6a"]);
            let b = attachment(d, "c6a", "n6b");
            let ip6b = b
                .ipv6
                .unwrap_or_else(|| panic!("c6a: no IPv6 address on n6b: {b:?}"));
            assert!(in_net(ip6b, "fd83::/64"), "c6a got {ip6b} on n6b");
            let addrs = exec(env, "c6a", &["ip", "-6", "-o", "addr", "show", "eth1"]);
            assert!(
                addrs.contains(&format!("inet6 {ip6b}/")),
                "c6a eth1: {addrs}"
            );
            ping(env, "c6a", v6[1].1.ipv6.unwrap());
            // c6b is not on n6b: isolated from c6a's n6b address, while reaching its n6 one.
            no_ping(env, "c6b", ip6b);
            d.docker_ok(&["network", "disconnect", "n6b", "c6a"]);
            assert_host_clean(ip6b, &b.host_veth());
            d.docker_ok(&["network", "rm", "n6b"]);
            eprintln!("{T}: IPv6 ok ({:?})", t0.elapsed());
        }

        let a81 = attachment(d, "c81", "n81");
        let a82 = attachment(d, "c82", "n82");
        d.docker_ok(&["rm", "-f", "c81", "c82", "c81p", "c82p"]);
        for (c, _) in &v6 {
            d.docker_ok(&["rm", "-f", c]);
        }
        for net in ["n81", "n82"] {
            d.docker_ok(&["network", "rm", net]);
        }
        if !v6.is_empty() {
            d.docker_ok(&["network", "rm", "n6"]);
        }
        for a in [&a81, &a82].into_iter().chain(v6.iter().map(|(_, a)| a)) {
            for ip in a.ipv4.iter().chain(a.ipv6.iter()) {
                assert_host_clean(*ip, &a.host_veth());
            }
        }
        assert_no_endpoints_or_allocations(env, T);
        // The pool the plugin made goes with its network; the operator's pool stays.
        let pools = pool_cidrs(env);
        assert!(!pools.contains_key("libnetwork-10-82-0-0-24"), "{pools:?}");
        assert!(!pools.contains_key("libnetwork-fd82---64"), "{pools:?}");
        assert_eq!(pools.get("p1").map(String::as_str), Some("10.81.0.0/24"));
    });
}

/// One container on three Calico networks: every endpoint gets its own gateway, each network
/// with its own pool is routed through its own interface, and it reaches containers on all
/// three. Disconnecting and connecting again works too.
#[test]
fn container_on_several_networks() {
    const T: &str = "container_on_several_networks";
    run(T, |env, t0| {
        let d = env.d();

        // na: all of Calico's pools (only the default 192.168.0.0/16 exists yet; once the
        // --subnet pools exist, Calico's AutoAssign may take na's addresses from them too, as it
        // prefers blocks already affine to this host).
        env.network("na", &[]);
        env.run("ca", &["--net", "na"]);
        env.run("multi", &["--net", "na"]);
        env.network("nb", &["--subnet", "10.84.0.0/24"]);
        env.network("nc", &["--subnet", "10.85.0.0/24"]);
        env.run("cb", &["--net", "nb"]);
        env.run("cc", &["--net", "nc"]);
        d.docker_ok(&["network", "connect", "nb", "multi"]);
        d.docker_ok(&["network", "connect", "nc", "multi"]);

        let on = attachments(d, "multi");
        assert_eq!(on.len(), 3, "{on:?}");
        let ip_a = on["na"].ipv4.unwrap();
        let ip_b = on["nb"].ipv4.unwrap();
        let ip_c = on["nc"].ipv4.unwrap();
        assert!(in_net(ip_a, "192.168.0.0/16"), "{ip_a}");
        assert!(in_net(ip_b, "10.84.0.0/24"), "{ip_b}");
        assert!(in_net(ip_c, "10.85.0.0/24"), "{ip_c}");
        // Each interface has its address (Docker names them eth0, eth1, eth2 in connect order).
        for (dev, ip) in [("eth0", ip_a), ("eth1", ip_b), ("eth2", ip_c)] {
            let addrs = exec(env, "multi", &["ip", "-4", "-o", "addr", "show", dev]);
            assert!(
                addrs.contains(&format!("inet {ip}/")),
                "multi {dev}: {addrs}"
            );
        }
        let routes = exec(env, "multi", &["ip", "-4", "route"]);
        let lines: HashSet<&str> = routes.lines().map(str::trim_end).collect();
        for want in [
            "default via 169.254.1.1 dev eth0",
            "169.254.1.1 dev eth0 scope link",
            "169.254.1.2 dev eth1 scope link",
            "10.84.0.0/24 via 169.254.1.2 dev eth1",
            "169.254.1.3 dev eth2 scope link",
            "10.85.0.0/24 via 169.254.1.3 dev eth2",
        ] {
            assert!(lines.contains(want), "multi: no route {want:?}:\n{routes}");
        }
        eprintln!("{T}: three networks joined ({:?})", t0.elapsed());

        for (peer, net) in [("ca", "na"), ("cb", "nb"), ("cc", "nc")] {
            let ip = ipv4_of(d, peer, net);
            ping(env, "multi", ip);
            ping(env, peer, on[net].ipv4.unwrap());
        }
        // The containers on one network only still do not reach each other.
        no_ping(env, "ca", ipv4_of(d, "cb", "nb"));
        no_ping(env, "cb", ipv4_of(d, "cc", "nc"));
        // Traffic to nb's containers leaves by eth1, and the host veth behind eth1 answered ARP
        // for 169.254.1.2 (proxy ARP) with Calico's MAC.
        let get = exec(
            env,
            "multi",
            &["ip", "route", "get", &ipv4_of(d, "cb", "nb").to_string()],
        );
        assert!(get.contains("via 169.254.1.2 dev eth1"), "{get}");
        let neigh = exec(env, "multi", &["ip", "neigh", "show", "169.254.1.2"]);
        assert!(
            neigh.contains(&format!("dev eth1 lladdr {HOST_MAC}")),
            "no ARP entry for 169.254.1.2 on eth1: {neigh:?}"
        );
        for a in on.values() {
            let mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", a.host_veth()))
                .unwrap_or_default();
            assert_eq!(mac.trim(), HOST_MAC, "{}", a.host_veth());
        }

        // Leave nb and join it again: the freed gateway is given out again, without clashes.
        d.docker_ok(&["network", "disconnect", "nb", "multi"]);
        assert_host_clean(ip_b, &on["nb"].host_veth());
        d.docker_ok(&["network", "connect", "nb", "multi"]);
        let again = attachment(d, "multi", "nb");
        // The new interface's name is Docker's choice: eth3 on 20.10; Docker 28 gives eth3 or
        // the freed eth1 from one run to the next. Whichever holds the new address.
        let ip_again = again.ipv4.expect("multi: no IPv4 on nb after reconnect");
        let addrs = exec(env, "multi", &["ip", "-4", "-o", "addr", "show"]);
        let dev = addrs
            .lines()
            .find(|l| l.contains(&format!(" inet {ip_again}/")))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("multi: no interface has {ip_again}:\n{addrs}"))
            .to_string();
        assert!(
            !["eth0", "eth2"].contains(&dev.as_str()),
            "nb's new address {ip_again} is on {dev}, na's or nc's interface:\n{addrs}"
        );
        let routes = exec(env, "multi", &["ip", "-4", "route"]);
        assert!(
            routes
                .lines()
                .any(|l| l.trim_end() == format!("10.84.0.0/24 via 169.254.1.2 dev {dev}")),
            "after reconnect ({ip_again} on {dev}):\n{routes}"
        );
        ping(env, "multi", ipv4_of(d, "cb", "nb"));
        ping(env, "cb", again.ipv4.unwrap());
        eprintln!("{T}: pings ok ({:?})", t0.elapsed());

        let mut all: Vec<Attachment> = vec![again];
        all.extend(on.into_values());
        for (c, net) in [("ca", "na"), ("cb", "nb"), ("cc", "nc")] {
            all.push(attachment(d, c, net));
        }
        d.docker_ok(&["rm", "-f", "multi", "ca", "cb", "cc"]);
        for net in ["na", "nb", "nc"] {
            d.docker_ok(&["network", "rm", net]);
        }
        for a in &all {
            assert_host_clean(a.ipv4.unwrap(), &a.host_veth());
        }
        assert_no_cali_links();
        assert_no_endpoints_or_allocations(env, T);
    });
}

/// Docker's reach on several networks, with networks on the same (default) pools: a container
/// on na and nb reaches na's and nb's containers and each of them reaches it, although its
/// packets to nb's containers leave by its na interface with its na address; containers on
/// only na and only nb still cannot reach each other. It holds across a plugin restart (the
/// sandbox is recorded on the WorkloadEndpoints) and ends with `network disconnect`.
#[test]
fn container_on_two_networks_sharing_pools_reaches_both() {
    const T: &str = "container_on_two_networks_sharing_pools_reaches_both";
    run(T, |env, t0| {
        env.network("sa", &[]);
        env.network("sb", &[]);
        env.run("pa", &["--net", "sa"]);
        env.run("pb", &["--net", "sb"]);
        env.run("both", &["--net", "sa"]);
        env.d().docker_ok(&["network", "connect", "sb", "both"]);
        let d = env.d();
        let (pa, pb) = (ipv4_of(d, "pa", "sa"), ipv4_of(d, "pb", "sb"));
        let (both_a, both_b) = (ipv4_of(d, "both", "sa"), ipv4_of(d, "both", "sb"));
        // One pool for both networks: no route sends sb's traffic by eth1.
        let get = exec(env, "both", &["ip", "route", "get", &pb.to_string()]);
        assert!(get.contains("dev eth0"), "both -> pb leaves by eth0: {get}");
        let check = |env: &DockerEnv, when: &str| {
            ping(env, "both", pa);
            ping(env, "both", pb);
            ping(env, "pa", both_a);
            ping(env, "pb", both_b);
            no_ping(env, "pa", pb);
            no_ping(env, "pb", pa);
            eprintln!(
                "{T}: {when}: both reaches pa and pb, pa and pb not each other ({:?})",
                t0.elapsed()
            );
        };
        check(env, "connected");

        // After a plugin restart the rules are rebuilt from the datastore alone.
        let pid = env.plugin.pid();
        env.plugin.restart();
        assert_ne!(env.plugin.pid(), pid);
        // A new container on sb makes the plugin apply its whole rule set again.
        env.run("pb2", &["--net", "sb"]);
        let pb2 = ipv4_of(env.d(), "pb2", "sb");
        check(env, "after a plugin restart");
        ping(env, "both", pb2);
        ping(env, "pb2", both_b);

        // Disconnected from sb: its sa address is no member of sb any more.
        let sb_ep = attachment(env.d(), "both", "sb");
        env.d().docker_ok(&["network", "disconnect", "sb", "both"]);
        assert_host_clean(both_b, &sb_ep.host_veth());
        ping(env, "both", pa);
        no_ping(env, "both", pb);
        no_ping(env, "both", pb2);

        remove_and_check(env, &["both", "pa", "pb", "pb2"], &["sa", "sb"], T);
    });
}

/// dockerd with `live-restore`: restarted while containers run on a Calico network, it keeps
/// them running without a Leave or DeleteEndpoint; afterwards one of them joins a second
/// Calico network and a new container starts, and everything reaches what it should. Nothing
/// leaks once they are removed.
#[test]
fn live_restore_keeps_containers_through_a_dockerd_restart() {
    const T: &str = "live_restore_keeps_containers_through_a_dockerd_restart";
    run(T, |env, t0| {
        env.docker.set_daemon_config("{\"live-restore\": true}\n");
        env.docker.restart_dockerd(false);
        let on = env
            .d()
            .docker_ok(&["info", "-f", "{{.LiveRestoreEnabled}}"]);
        assert_eq!(on.trim(), "true", "live-restore is not on");
        env.network("lr1", &[]);
        env.network("lr2", &[]);
        env.run("la", &["--net", "lr1"]);
        env.run("lb", &["--net", "lr1"]);
        let pid_of = |env: &DockerEnv, c: &str| {
            env.d()
                .docker_ok(&["inspect", "-f", "{{.State.Pid}}", c])
                .trim()
                .to_string()
        };
        let pids = (pid_of(env, "la"), pid_of(env, "lb"));
        let (la, lb) = (ipv4_of(env.d(), "la", "lr1"), ipv4_of(env.d(), "lb", "lr1"));
        let weps_before = env.list(WEPS_PREFIX).len();
        let calls_from = env.plugin.log().len();

        env.docker.restart_dockerd(false);
        eprintln!("{T}: dockerd restarted ({:?})", t0.elapsed());
        assert_eq!(
            (pid_of(env, "la"), pid_of(env, "lb")),
            pids,
            "live-restore kept the containers"
        );
        let torn: Vec<String> = env
            .plugin
            .calls_since(calls_from)
            .iter()
            .filter(|c| {
                matches!(
                    c.method(),
                    "NetworkDriver.Leave"
                        | "NetworkDriver.DeleteEndpoint"
                        | "IpamDriver.ReleaseAddress"
                )
            })
            .map(|c| c.summary())
            .collect();
        assert!(
            torn.is_empty(),
            "a live-restore restart tore endpoints down: {torn:?}"
        );
        assert_eq!(env.list(WEPS_PREFIX).len(), weps_before);
        ping(env, "la", lb);
        ping(env, "lb", la);

        env.d().docker_ok(&["network", "connect", "lr2", "la"]);
        env.run("lc", &["--net", "lr2"]);
        env.run("ld", &["--net", "lr1"]);
        let (la2, lc) = (ipv4_of(env.d(), "la", "lr2"), ipv4_of(env.d(), "lc", "lr2"));
        let ld = ipv4_of(env.d(), "ld", "lr1");
        ping(env, "la", lc);
        ping(env, "lc", la2);
        ping(env, "ld", la);
        ping(env, "la", ld);
        no_ping(env, "lc", lb);
        eprintln!(
            "{T}: connect and run after the restart work ({:?})",
            t0.elapsed()
        );

        remove_and_check(env, &["la", "lb", "lc", "ld"], &["lr1", "lr2"], T);
    });
}

/// Twenty `docker run -d` at once on one network: twenty distinct addresses, all reachable;
/// after `docker rm -f` nothing is left. Then a plugin restart between run and removal.
#[test]
fn twenty_at_once_and_restart() {
    const T: &str = "twenty_at_once_and_restart";
    run(T, |env, t0| {
        env.network("many", &[]);
        let names: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
        std::thread::scope(|s| {
            for n in &names {
                let env = &env;
                s.spawn(move || env.run(n, &["--net", "many"]));
            }
        });
        eprintln!("{T}: 20 started ({:?})", t0.elapsed());
        let d = env.d();
        let ats: Vec<Attachment> = names.iter().map(|n| attachment(d, n, "many")).collect();
        let ips: HashSet<IpAddr> = ats.iter().map(|a| a.ipv4.unwrap()).collect();
        assert_eq!(ips.len(), 20, "addresses not distinct: {ats:?}");
        assert_eq!(env.list(WEPS_PREFIX).len(), 20);
        // From m00 to every other one, in one exec.
        let script: String = ats[1..]
            .iter()
            .map(|a| {
                let ip = a.ipv4.unwrap();
                format!("ping -c 1 -W 3 {ip} >/dev/null || echo unreachable {ip}; ")
            })
            .collect();
        let out = exec(env, "m00", &["sh", "-c", &script]);
        assert!(out.trim().is_empty(), "from m00: {out}");
        // And m00 from the host, through its host route.
        let (ok, out) = host(
            "ping",
            &["-c", "1", "-W", "3", &ats[0].ipv4.unwrap().to_string()],
        );
        assert!(ok, "host -> m00: {out}");
        eprintln!("{T}: 20 reachable ({:?})", t0.elapsed());

        let mut rm = vec!["rm", "-f"];
        rm.extend(names.iter().map(String::as_str));
        d.docker_ok(&rm);
        for a in &ats {
            assert_host_clean(a.ipv4.unwrap(), &a.host_veth());
        }
        assert_no_cali_links();
        assert_no_endpoints_or_allocations(env, "after rm -f of 20");
        eprintln!("{T}: 20 removed ({:?})", t0.elapsed());

        // The plugin restarted between run and rm: the teardown still finds everything.
        env.run("r1", &["--net", "many"]);
        let r1 = attachment(env.d(), "r1", "many");
        let pid = env.plugin.pid();
        env.plugin.restart();
        assert_ne!(env.plugin.pid(), pid);
        env.d().docker_ok(&["rm", "-f", "r1"]);
        assert_host_clean(r1.ipv4.unwrap(), &r1.host_veth());
        assert_no_endpoints_or_allocations(env, "after restart and rm -f");
        // And a new container after the restart works as before.
        env.run("r2", &["--net", "many"]);
        env.run("r3", &["--net", "many"]);
        ping(env, "r2", ipv4_of(env.d(), "r3", "many"));
        env.d().docker_ok(&["rm", "-f", "r2", "r3"]);
        env.d().docker_ok(&["network", "rm", "many"]);
        assert_no_endpoints_or_allocations(env, "end");
    });
}

/// What the plugin refuses reaches the user in Docker's error, and leaves nothing behind.
#[test]
fn refusals_are_explained_and_leave_nothing() {
    const T: &str = "refusals_are_explained_and_leave_nothing";
    run(T, |env, _| {
        let d = env.d();
        let pools_before = pool_cidrs(env);
        let networks_before = d.networks();

        // The original plugin's sentences first (its tests' strings), then our guidance.
        let cases: [(&[&str], &str); 3] = [
            (
                &["-d", "calico", "--ipam-driver", "calico", "--internal"],
                "NetworkDriver.CreateNetwork: Calico driver does not support the flag --internal.",
            ),
            (
                &["-d", "calico", "--ipam-driver", "calico", "-o", "foo=bar"],
                "NetworkDriver.CreateNetwork: Calico driver does not support the flag foo",
            ),
            (
                &["-d", "calico"],
                "NetworkDriver.CreateNetwork: Non-Calico IPAM driver is used. calico networks need Calico IPAM: add --ipam-driver calico",
            ),
        ];
        for (i, (flags, needle)) in cases.iter().enumerate() {
            let name = format!("bad{i}");
            let mut args = vec!["network", "create"];
            args.extend_from_slice(flags);
            args.push(&name);
            let err = d.docker_err(&args);
            assert!(err.contains(needle), "{flags:?}: want {needle:?} in: {err}");
            assert!(
                err.contains("NetworkDriver.CreateNetwork"),
                "{flags:?}: {err}"
            );
            eprintln!("{T}: {flags:?} -> {err}");
        }
        assert_eq!(d.networks(), networks_before);
        assert!(env.list(&keys::networks_prefix()).is_empty());
        assert!(env.list(PROFILES_PREFIX).is_empty(), "profiles left");
        assert_eq!(pool_cidrs(env), pools_before);
        assert_no_endpoints_or_allocations(env, "refused networks");

        env.network("ok", &[]);
        let err = d.docker_err(&[
            "run",
            "-d",
            "--name",
            "pub",
            "--net",
            "ok",
            "-p",
            "80",
            env.image(),
            "sleep",
            "600",
        ]);
        assert!(err.contains("explicit host port"), "-p: {err}");
        eprintln!("{T}: -p -> {err}");
        let state = d.docker_ok(&["inspect", "-f", "{{.State.Running}}", "pub"]);
        assert_eq!(state, "false");
        assert_no_endpoints_or_allocations(env, "refused -p");
        assert_no_cali_links();
        d.docker_ok(&["rm", "-f", "pub"]);
        d.docker_ok(&["network", "rm", "ok"]);
        assert!(env.list(&keys::networks_prefix()).is_empty());
    });
}

/// The IPv6 pool of [`ipv6_without_subnet_beside_ipv6_nameservers`] (the plugin's
/// `CALICO_IPV6POOL_CIDR`).
const V6_POOL: &str = "fd86::/64";

/// The env of [`ipv6_without_subnet_beside_ipv6_nameservers`]: dockerd sees `resolv_conf`.
fn start_v6(resolv_conf: &str) -> DockerEnv {
    DockerEnv::builder()
        .etcd()
        .busybox()
        .forward_drop()
        .plugin_env("CALICO_IPV6POOL_CIDR", V6_POOL)
        .resolv_conf(resolv_conf)
        .start()
}

/// `docker network create --ipv6 -d calico --ipam-driver calico v6net`, without `--subnet`,
/// under a deadline: (how long it took, the output). Panics (with both logs) if it hangs.
fn create_v6net(env: &DockerEnv) -> (std::time::Duration, std::process::Output) {
    let t = Instant::now();
    let out = env
        .d()
        .docker_timeout(
            &Dockerd::calico_network_args("v6net", &["--ipv6"]),
            std::time::Duration::from_secs(30),
        )
        .unwrap_or_else(|e| {
            panic!(
                "network create --ipv6 without --subnet hung: {e}\nRequestPool calls: {}\ndockerd log:\n{}",
                request_pools(env),
                docker::log_tail(&env.d().log_path(), 40)
            )
        });
    (t.elapsed(), out)
}

/// How many `RequestPool` calls the plugin answered so far.
fn request_pools(env: &DockerEnv) -> usize {
    env.plugin
        .calls_since(0)
        .iter()
        .filter(|c| c.method() == "IpamDriver.RequestPool")
        .count()
}

/// `--ipv6` without `--subnet` with IPv6 nameservers in dockerd's resolv.conf (issue 15;
/// dockerd checks the pool the IPAM driver answers against its nameservers and asks again
/// while they overlap, forever for the `::/0` the plugin once answered): (a) with a
/// nameserver outside the Calico IPv6 pool, the network is made at once and a container on it
/// gets an IPv6 address of the pool; (b) with one inside the pool, the create fails within
/// seconds with the plugin's explanation, after dockerd's repeated RequestPools (the fault
/// hit), and leaves no network.
#[test]
fn ipv6_without_subnet_beside_ipv6_nameservers() {
    const T: &str = "ipv6_without_subnet_beside_ipv6_nameservers";
    if !common::require_root(T) {
        return;
    }
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        common::say_skipped(&format!(
            "{T}: this kernel has no IPv6 (/proc/sys/net/ipv6 missing)"
        ));
        return;
    }

    // (a) A nameserver outside the pool.
    let t0 = Instant::now();
    let env = start_v6("nameserver 2001:db8::53\n");
    let (took, out) = create_v6net(&env);
    assert!(
        out.status.success(),
        "network create --ipv6 (nameserver 2001:db8::53): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert!(took.as_secs() < 5, "network create --ipv6 took {took:?}");
    // The control of (b)'s count: without an overlap, dockerd asks once per family.
    let asked_a = request_pools(&env);
    assert!(asked_a < 16, "{asked_a} RequestPools without an overlap");
    let d = env.d();
    for c in ["v6a", "v6b"] {
        env.run(c, &["--net", "v6net"]);
    }
    let a = attachment(d, "v6a", "v6net");
    let ip6 = a
        .ipv6
        .unwrap_or_else(|| panic!("v6a: no IPv6 address: {a:?}"));
    assert!(in_net(ip6, V6_POOL), "v6a got {ip6}, not from {V6_POOL}");
    let addrs = exec(&env, "v6a", &["ip", "-6", "-o", "addr", "show", "eth0"]);
    assert!(
        addrs.contains(&format!("inet6 {ip6}/")),
        "v6a eth0: {addrs}"
    );
    let b6 = attachment(d, "v6b", "v6net").ipv6.expect("v6b: no IPv6");
    ping(&env, "v6a", b6);
    d.docker_ok(&["rm", "-f", "v6a", "v6b"]);
    d.docker_ok(&["network", "rm", "v6net"]);
    assert_no_endpoints_or_allocations(&env, "after (a)");
    eprintln!(
        "{T}: (a) created in {took:?} after {asked_a} RequestPools ({:?})",
        t0.elapsed()
    );
    finish(T, env, t0);

    // (b) A nameserver inside the pool: dockerd asks again and again; the plugin ends it.
    let t0 = Instant::now();
    let env = start_v6("nameserver fd86::53\n");
    let (took, out) = create_v6net(&env);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(
        !out.status.success(),
        "network create --ipv6 with nameserver fd86::53 in the pool succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains("overlap a network dockerd reserves"),
        "network create --ipv6 (nameserver fd86::53): {err}"
    );
    assert!(took.as_secs() < 10, "refused only after {took:?}: {err}");
    let asked = request_pools(&env);
    assert!(
        asked >= 16,
        "dockerd asked RequestPool only {asked} times: did it see nameserver fd86::53?"
    );
    assert!(
        !env.d().networks().iter().any(|n| n == "v6net"),
        "v6net exists after the refusal"
    );
    eprintln!("{T}: (b) refused in {took:?} after {asked} RequestPools: {err}");
    finish(T, env, t0);
}

/// Docker 28's IPv6-only networks (`--ipv4=false --ipv6`, no `--subnet`): dockerd asks for an
/// IPv6 pool only; the network is made, its containers get an IPv6 address of the Calico pool
/// and no IPv4 one, reach each other over IPv6, and leave nothing behind. Docker 20.10 has no
/// `--ipv4` flag: there this test says it skips.
#[test]
fn ipv6_only_network_on_docker_28() {
    const T: &str = "ipv6_only_network_on_docker_28";
    if !common::require_root(T) {
        return;
    }
    if docker::engine().is_debian() {
        common::say_skipped(&format!(
            "{T}: Docker 20.10 has no IPv6-only networks (--ipv4=false); run with {}=sid",
            docker::ENGINE_VAR
        ));
        return;
    }
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        common::say_skipped(&format!(
            "{T}: this kernel has no IPv6 (/proc/sys/net/ipv6 missing)"
        ));
        return;
    }
    let t0 = Instant::now();
    let env = start_v6("nameserver 192.0.2.53\n");
    let d = env.d();
    let out = d
        .docker_timeout(
            &Dockerd::calico_network_args("v6only", &["--ipv4=false", "--ipv6"]),
            std::time::Duration::from_secs(30),
        )
        .expect("network create --ipv4=false --ipv6 hung");
    assert!(
        out.status.success(),
        "network create --ipv4=false --ipv6: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    for c in ["o6a", "o6b"] {
        env.run(c, &["--net", "v6only"]);
    }
    let a = attachment(d, "o6a", "v6only");
    assert_eq!(a.ipv4, None, "o6a has IPv4 on an IPv6-only network: {a:?}");
    let ip6 = a
        .ipv6
        .unwrap_or_else(|| panic!("o6a: no IPv6 address: {a:?}"));
    assert!(in_net(ip6, V6_POOL), "o6a got {ip6}, not from {V6_POOL}");
    let v4 = exec(&env, "o6a", &["ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(v4.trim().is_empty(), "o6a eth0 has IPv4: {v4}");
    let b6 = attachment(d, "o6b", "v6only").ipv6.expect("o6b: no IPv6");
    ping(&env, "o6a", b6);
    ping(&env, "o6b", ip6);
    d.docker_ok(&["rm", "-f", "o6a", "o6b"]);
    d.docker_ok(&["network", "rm", "v6only"]);
    assert_no_endpoints_or_allocations(&env, T);
    eprintln!("{T}: made, used and removed ({:?})", t0.elapsed());
    finish(T, env, t0);
}
