//! Docker's network driver flow end to end: two busybox containers on a Calico network
//! (Calico IPAM) reach each other through the host, routed over their `cali*` veths, while
//! dockerd keeps iptables FORWARD at DROP. Our own real dockerd (Debian's 20.10), a real etcd
//! (or the embedded store) and the real `calico-libnetwork` binary.
//!
//! Needs root. Every test holds the host lock, so they run one at a time.

use crate::common;

use common::{BLOCKS_PREFIXES, HANDLES_PREFIX, HOST_MAC, PROFILES_PREFIX, WEPS_PREFIX};

use std::net::Ipv4Addr;
use std::time::Instant;

use common::docker::{self, Dockerd};
use common::etcd::Etcd;
use common::firewall::{forward_policy, host, CHAIN};
use common::plugin::DockerEnv;
use serde_json::Value;

/// Lock, a datastore (etcd, or the embedded store when `local`), the plugin, dockerd.
fn start(local: bool) -> DockerEnv {
    if local {
        DockerEnv::with_local_store()
    } else {
        DockerEnv::with_etcd()
    }
}

fn list(etcd: &Etcd, prefix: &str) -> Vec<(String, Value)> {
    etcd.list_json(prefix)
}

fn in_pool(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 192 && o[1] == 168
}

struct Container {
    name: &'static str,
    ip: Ipv4Addr,
    mac: String,
    endpoint_id: String,
}

impl Container {
    fn host_veth(&self) -> String {
        format!("cali{}", &self.endpoint_id[..11])
    }
}

fn inspect_container(d: &Dockerd, name: &'static str) -> Container {
    let fmt = "{{range .NetworkSettings.Networks}}{{.EndpointID}} {{.IPAddress}}{{end}}";
    let out = d.docker_ok(&["inspect", "-f", fmt, name]);
    let (endpoint_id, docker_ip) = out.split_once(' ').unwrap_or_else(|| panic!("{out:?}"));
    let addr = d.docker_ok(&["exec", name, "ip", "-4", "-o", "addr", "show", "eth0"]);
    let ip: Ipv4Addr = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no IPv4 address on eth0: {addr}"));
    assert_eq!(ip.to_string(), docker_ip, "{name}: eth0 vs docker inspect");
    assert!(in_pool(ip), "{name}: {ip} not in 192.168.0.0/16");
    let mac = d.docker_ok(&["exec", name, "cat", "/sys/class/net/eth0/address"]);
    let routes = d.docker_ok(&["exec", name, "ip", "-4", "route"]);
    assert!(
        routes
            .lines()
            .any(|l| l.trim_end() == "default via 169.254.1.1 dev eth0"),
        "{name}: no default via 169.254.1.1 dev eth0:\n{routes}"
    );
    Container {
        name,
        ip,
        mac,
        endpoint_id: endpoint_id.to_string(),
    }
}

fn host_link_mac(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/address"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The whole flow on one setup; `etcd` adds the datastore checks.
fn scenario(test: &str, env: &mut DockerEnv) {
    let t0 = Instant::now();
    let image = env.docker.import_busybox();
    let d = &env.docker;

    // FORWARD DROP, as Docker leaves it on users' hosts, so the test shows our rule matters.
    d.force_forward_drop();
    assert_eq!(forward_policy(), "-P FORWARD DROP");

    d.calico_network("net1", &[]);
    let net_id = d.docker_ok(&["network", "inspect", "-f", "{{.Id}}", "net1"]);
    for name in ["c1", "c2"] {
        d.docker_ok(&[
            "run", "-d", "--net", "net1", "--name", name, image, "sleep", "600",
        ]);
    }
    let c1 = inspect_container(d, "c1");
    let c2 = inspect_container(d, "c2");
    assert_ne!(c1.ip, c2.ip);
    eprintln!(
        "{test}: c1 {} {} c2 {} {} ({:?})",
        c1.ip,
        c1.mac,
        c2.ip,
        c2.mac,
        t0.elapsed()
    );

    // Host side: cali veths with Calico's MAC and one host route each.
    for c in [&c1, &c2] {
        let veth = c.host_veth();
        assert_eq!(
            host_link_mac(&veth).as_deref(),
            Some(HOST_MAC),
            "{}: host veth {veth}",
            c.name
        );
        let (_, route) = host("ip", &["-4", "route", "show", &format!("{}/32", c.ip)]);
        assert!(
            route.contains(&format!("{} dev {veth}", c.ip)),
            "{}: host route to {}: {route:?}",
            c.name,
            c.ip
        );
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );
    let (_, rules) = host("iptables", &["-w", "-S"]);
    assert!(rules.contains(&format!("-A FORWARD -j {CHAIN}")), "{rules}");
    assert!(
        rules.contains(&format!("-A {CHAIN} -i cali+ -j ACCEPT")),
        "{rules}"
    );
    assert!(
        rules.contains(&format!("-A {CHAIN} -o cali+ -j CLN-TO-WL")),
        "{rules}"
    );
    // Still DROP: the accept is what lets the pings through.
    assert_eq!(forward_policy(), "-P FORWARD DROP");

    for (from, to) in [(&c1, &c2), (&c2, &c1)] {
        let out = d.docker(&[
            "exec",
            from.name,
            "ping",
            "-c",
            "2",
            "-W",
            "2",
            &to.ip.to_string(),
        ]);
        assert!(
            out.status.success(),
            "ping {} -> {}: {}{}",
            from.name,
            to.ip,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Docker's embedded DNS serves user-defined networks of remote drivers too.
    let out = d.docker(&["exec", "c1", "ping", "-c", "1", "-W", "2", "c2"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ping c2 by name: {text}");
    assert!(
        text.contains(&c2.ip.to_string()),
        "c2 resolved elsewhere: {text}"
    );
    eprintln!("{test}: pings ok ({:?})", t0.elapsed());

    if let Some(etcd) = env.etcd.as_ref() {
        let weps = list(etcd, WEPS_PREFIX);
        assert_eq!(weps.len(), 2, "{weps:?}");
        let profile = calico_libnetwork::model::resource_name_from(&net_id);
        for c in [&c1, &c2] {
            let (key, w) = weps
                .iter()
                .find(|(_, w)| w["spec"]["endpoint"] == c.endpoint_id.as_str())
                .unwrap_or_else(|| panic!("{}: no WorkloadEndpoint: {weps:?}", c.name));
            assert_eq!(w["kind"], "WorkloadEndpoint", "{key}");
            assert_eq!(w["metadata"]["namespace"], "libnetwork", "{key}");
            assert_eq!(w["spec"]["orchestrator"], "libnetwork", "{key}");
            assert_eq!(
                w["spec"]["ipNetworks"],
                serde_json::json!([format!("{}/32", c.ip)]),
                "{key}"
            );
            assert_eq!(w["spec"]["interfaceName"], c.host_veth().as_str(), "{key}");
            assert_eq!(
                w["spec"]["mac"],
                c.mac.as_str(),
                "{key}: MAC vs container eth0"
            );
            assert_eq!(w["spec"]["profiles"], serde_json::json!([profile]), "{key}");
        }
        let profiles = list(etcd, PROFILES_PREFIX);
        assert!(
            profiles
                .iter()
                .any(|(k, p)| k.ends_with(&format!("/{profile}")) && p["kind"] == "Profile"),
            "no Profile {profile}: {profiles:?}"
        );
    }

    d.docker_ok(&["rm", "-f", "c1", "c2"]);
    d.docker_ok(&["network", "rm", "net1"]);
    for c in [&c1, &c2] {
        assert_eq!(host_link_mac(&c.host_veth()), None, "{} veth left", c.name);
        let (_, route) = host("ip", &["-4", "route", "show", &format!("{}/32", c.ip)]);
        assert!(route.trim().is_empty(), "{}: route left: {route}", c.name);
    }
    let (_, links) = host("ip", &["-o", "link", "show"]);
    assert!(
        !links
            .lines()
            .any(|l| l.contains(": cali") && !l.contains(&format!(": {}:", docker::BRIDGE))),
        "cali veths left:\n{links}"
    );
    if let Some(etcd) = env.etcd.as_ref() {
        assert_eq!(list(etcd, WEPS_PREFIX).len(), 0, "WorkloadEndpoints left");
        for prefix in BLOCKS_PREFIXES {
            for (key, b) in list(etcd, prefix) {
                let allocs = b["allocations"].as_array().cloned().unwrap_or_default();
                assert!(
                    allocs.iter().all(Value::is_null),
                    "{key}: allocations left: {b}"
                );
            }
        }
        let handles = list(etcd, HANDLES_PREFIX);
        assert!(handles.is_empty(), "handles left: {handles:?}");
    }
    eprintln!("{test}: {:?}", t0.elapsed());
}

/// Two containers on a Calico network reach each other (etcd datastore).
#[test]
fn containers_ping_each_other_on_etcd() {
    ping_test("containers_ping_each_other_on_etcd", false);
}

/// The same on the embedded store (only container- and host-visible checks).
#[test]
fn containers_ping_each_other_on_local_store() {
    ping_test("containers_ping_each_other_on_local_store", true);
}

/// [`scenario`] on a fresh env (`local`: on the embedded store), then the plugin's own
/// clean-up checked.
fn ping_test(test: &str, local: bool) {
    if !common::require_root(test) {
        return;
    }
    let t0 = Instant::now();
    let mut env = start(local);
    scenario(test, &mut env);
    if local {
        assert!(env.plugin.store_path().exists());
    }
    assert_plugin_leaves_no_rule(&mut env);
    eprintln!("{test} total: {:?}", t0.elapsed());
}

/// Containers gone (dockerd stopped) and the plugin stopped gracefully: the plugin itself
/// removed every rule it had (checked before the harness's own clean-up, which would hide
/// a leak, and under the lock, so no other test's plugin can have added rules meanwhile).
fn assert_plugin_leaves_no_rule(env: &mut DockerEnv) {
    env.docker.shutdown();
    env.plugin.stop();
    common::firewall::assert_no_chain();
}
