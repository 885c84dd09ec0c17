//! Dataplane tests against the real kernel.
//!
//! Each test runs on its own thread after `unshare(CLONE_NEWNET)`, so it gets a fresh, empty
//! network namespace: the netlink socket, `/proc/sys/net` and the `ip` commands spawned
//! from that thread all see only that namespace, and it vanishes when the thread ends.
//! Needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN). Without it the tests fail, unless
//! `CALICO_TEST_ALLOW_SKIP=1`, in which case they print a loud SKIPPED line and pass.

use crate::common;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use calico_libnetwork::dataplane::{
    self, eui64_link_local, format_mac, setup_endpoint_veth, sysctl, teardown_endpoint_veth,
    EndpointVeth, Netlink, HOST_VETH_MAC,
};
use ipnet::IpNet;
use serde_json::Value;

const HOST: &str = "cali0123456789a";
const TEMP: &str = "temp0123456789a";

/// Runs `body` on a dedicated thread inside a fresh network namespace.
fn in_private_netns<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if !common::require_root(test) {
        return;
    }
    common::netns::fresh_async(move || {
        // Guard: a fresh namespace has nothing but lo; never touch the host's.
        let links = ip_json(&["link", "show"]);
        assert_eq!(links.len(), 1, "not in a fresh netns: {links:?}");
        assert_eq!(links[0]["ifname"], "lo");
        async move {
            let nl = Netlink::new().expect("open netlink");
            body(nl).await;
        }
    });
}

/// `ip -j <args>`; an empty array when ip fails (e.g. the device does not exist).
fn ip_json(args: &[&str]) -> Vec<Value> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .expect("run ip");
    if !out.status.success() || out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Vec::new();
    }
    match serde_json::from_slice(&out.stdout).expect("ip -j output is json") {
        Value::Array(items) => items,
        other => panic!("ip -j {args:?}: not an array: {other}"),
    }
}

/// `ip <args>`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn link(name: &str) -> Option<Value> {
    ip_json(&["link", "show", "dev", name]).into_iter().next()
}

fn link_names() -> Vec<String> {
    ip_json(&["link", "show"])
        .iter()
        .map(|l| l["ifname"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn is_up(link: &Value) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|flags| flags.iter().any(|f| f == "UP"))
}

fn read_sysctl(path: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .unwrap_or_else(|e| panic!("read /proc/sys/{path}: {e}"))
        .trim()
        .to_string()
}

/// All routes of one family in the main table, as (dst, dev, scope) triples.
fn routes(family: &str) -> Vec<(String, String, String)> {
    ip_json(&[family, "route", "show", "table", "main"])
        .iter()
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (field("dst"), field("dev"), field("scope"))
        })
        .collect()
}

fn has_route(family: &str, dst: &str, dev: &str) -> bool {
    routes(family).iter().any(|(d, v, _)| d == dst && v == dev)
}

fn host_net(ip: impl Into<IpAddr>) -> IpNet {
    IpNet::from(ip.into())
}

fn endpoint() -> EndpointVeth {
    EndpointVeth {
        host_name: HOST.into(),
        temp_name: TEMP.into(),
        ..Default::default()
    }
}

/// [`endpoint`] with these workload IPv4 addresses.
fn endpoint_v4(ips: &[&str]) -> EndpointVeth {
    EndpointVeth {
        ipv4: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        ..endpoint()
    }
}

/// [`endpoint`] with these workload IPv6 addresses.
fn endpoint_v6(ips: &[&str]) -> EndpointVeth {
    EndpointVeth {
        ipv6: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        ..endpoint()
    }
}

#[test]
fn ipv4_endpoint_is_wired_like_calico() {
    in_private_netns("ipv4_endpoint_is_wired_like_calico", |nl| async move {
        let ips: Vec<Ipv4Addr> = vec!["10.65.0.5".parse().unwrap(), "10.65.0.6".parse().unwrap()];
        let info = setup_endpoint_veth(
            &nl,
            EndpointVeth {
                mtu: Some(1440),
                ipv4: ips.clone(),
                ..endpoint()
            },
        )
        .await
        .expect("setup");

        let host = link(HOST).expect("host veth exists");
        assert_eq!(host["address"], "ee:ee:ee:ee:ee:ee");
        assert_eq!(host["mtu"], 1440);
        // Marked as ours: clean-up deletes only marked cali* veths.
        assert_eq!(host["ifalias"], "calico-libnetwork", "{host}");
        assert_eq!(
            nl.list_veths_marked("cali").await.unwrap(),
            vec![(HOST.to_string(), true)]
        );
        assert!(is_up(&host), "host veth up: {host}");

        // The peer stays in this namespace for Docker to move; MTU set on both ends.
        let temp = link(TEMP).expect("temp peer exists");
        assert_eq!(temp["mtu"], 1440);
        assert!(is_up(&temp), "temp peer up: {temp}");
        assert_eq!(temp["address"], format_mac(info.container_mac).as_str());
        assert_ne!(info.container_mac, HOST_VETH_MAC);
        assert_eq!(info.host_ipv6_link_local, None);

        for (knob, want) in [
            (format!("net/ipv4/conf/{HOST}/route_localnet"), "1"),
            (format!("net/ipv4/neigh/{HOST}/proxy_delay"), "0"),
            (format!("net/ipv4/conf/{HOST}/proxy_arp"), "1"),
            (format!("net/ipv4/conf/{HOST}/forwarding"), "1"),
            (format!("net/ipv6/conf/{HOST}/accept_ra"), "0"),
            // IPv6 knobs only with IPv6 addresses: proxy_ndp keeps its default.
            (format!("net/ipv6/conf/{HOST}/proxy_ndp"), "0"),
        ] {
            assert_eq!(read_sysctl(&knob), want, "{knob}");
        }

        for ip in &ips {
            let ip = ip.to_string();
            let found = routes("-4");
            assert!(
                found.contains(&(ip.clone(), HOST.to_string(), "link".to_string())),
                "route {ip} dev {HOST} scope link in {found:?}"
            );
        }
        let listed = nl.list_routes(HOST).await.expect("list routes");
        for ip in &ips {
            assert!(
                listed
                    .iter()
                    .any(|r| r.dest == host_net(*ip) && r.link_scope),
                "{ip} in {listed:?}"
            );
        }

        // Teardown is idempotent and takes the peer and the routes with it.
        teardown_endpoint_veth(&nl, HOST).await.expect("teardown");
        teardown_endpoint_veth(&nl, HOST)
            .await
            .expect("teardown again");
        assert!(
            link(HOST).is_none() && link(TEMP).is_none(),
            "{:?}",
            link_names()
        );
        assert!(!has_route("-4", "10.65.0.5", HOST));
        assert!(!nl.link_exists(TEMP).await.unwrap());
    });
}

#[test]
fn dual_stack_endpoint_gets_ipv6_knobs_route_and_link_local() {
    in_private_netns(
        "dual_stack_endpoint_gets_ipv6_knobs_route_and_link_local",
        |nl| async move {
            let v6: Ipv6Addr = "fd00:65::7".parse().unwrap();
            let info = setup_endpoint_veth(
                &nl,
                EndpointVeth {
                    ipv6: vec![v6],
                    ..endpoint_v4(&["10.65.0.7"])
                },
            )
            .await
            .expect("setup");

            for (knob, want) in [
                ("accept_dad", "0"),
                ("disable_ipv6", "0"),
                ("proxy_ndp", "1"),
                ("forwarding", "1"),
                ("accept_ra", "0"),
            ] {
                let path = format!("net/ipv6/conf/{HOST}/{knob}");
                assert_eq!(read_sysctl(&path), want, "{path}");
            }
            assert!(has_route("-4", "10.65.0.7", HOST), "{:?}", routes("-4"));
            assert!(has_route("-6", "fd00:65::7", HOST), "{:?}", routes("-6"));
            let listed = nl.list_routes(HOST).await.unwrap();
            assert!(listed.iter().any(|r| r.dest == host_net(v6)), "{listed:?}");

            let ll = info.host_ipv6_link_local.expect("host link-local");
            let addrs = ip_json(&["-6", "addr", "show", "dev", HOST]);
            let on_link = addrs[0]["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["local"] == ll.to_string().as_str() && a["scope"] == "link");
            assert!(on_link, "{ll} on {HOST}: {addrs:?}");
            if read_sysctl(&format!("net/ipv6/conf/{HOST}/addr_gen_mode")) == "0" {
                // EUI-64 from ee:ee:ee:ee:ee:ee, as Felix and the container expect.
                assert_eq!(ll, "fe80::ecee:eeff:feee:eeee".parse::<Ipv6Addr>().unwrap());
                assert_eq!(ll, eui64_link_local(HOST_VETH_MAC));
            }
            assert_eq!(nl.ipv6_link_local(HOST).await.unwrap(), Some(ll));

            teardown_endpoint_veth(&nl, HOST).await.unwrap();
            assert!(!has_route("-6", "fd00:65::7", HOST));
            assert!(link(TEMP).is_none());
        },
    );
}

#[test]
fn requested_container_mac_is_honoured() {
    in_private_netns("requested_container_mac_is_honoured", |nl| async move {
        let mac = dataplane::parse_mac("02:42:ac:11:00:02").unwrap();
        let info = setup_endpoint_veth(
            &nl,
            EndpointVeth {
                container_mac: Some(mac),
                ..endpoint_v4(&["10.65.0.8"])
            },
        )
        .await
        .expect("setup");
        assert_eq!(info.container_mac, mac);
        assert_eq!(link(TEMP).unwrap()["address"], "02:42:ac:11:00:02");
        assert_eq!(link(HOST).unwrap()["address"], "ee:ee:ee:ee:ee:ee");
        teardown_endpoint_veth(&nl, HOST).await.unwrap();
    });
}

#[test]
fn failed_setup_leaves_nothing_behind() {
    in_private_netns("failed_setup_leaves_nothing_behind", |nl| async move {
        // Another interface already owns the workload's routes.
        ip(&[
            "link", "add", "othr0", "type", "veth", "peer", "name", "othr1",
        ]);
        ip(&["link", "set", "othr0", "up"]);
        ip(&["link", "set", "othr1", "up"]);
        ip(&[
            "route",
            "add",
            "10.65.0.9/32",
            "dev",
            "othr0",
            "scope",
            "link",
        ]);
        ip(&["-6", "route", "add", "fd00:65::9/128", "dev", "othr0"]);

        let err = setup_endpoint_veth(&nl, endpoint_v4(&["10.65.0.10", "10.65.0.9"]))
            .await
            .expect_err("route owned by othr0");
        assert!(err.is_exists(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "route 10.65.0.9 already exists for an interface other than {HOST}"
            )),
            "{text}"
        );
        assert!(
            link(HOST).is_none() && link(TEMP).is_none(),
            "{:?}",
            link_names()
        );
        // The first route was added, and went with the veth.
        assert!(!has_route("-4", "10.65.0.10", HOST));
        assert!(has_route("-4", "10.65.0.9", "othr0"));

        let err = setup_endpoint_veth(&nl, endpoint_v6(&["fd00:65::9"]))
            .await
            .expect_err("ipv6 route owned by othr0");
        assert!(
            err.to_string()
                .contains("already exists for an interface other than"),
            "{err}"
        );
        assert!(
            link(HOST).is_none() && link(TEMP).is_none(),
            "{:?}",
            link_names()
        );
        assert!(has_route("-6", "fd00:65::9", "othr0"));

        nl.delete_link("othr0").await.unwrap();
        assert_eq!(link_names(), vec!["lo".to_string()]);
    });
}

#[test]
fn route_already_on_same_device_is_accepted() {
    in_private_netns(
        "route_already_on_same_device_is_accepted",
        |nl| async move {
            nl.create_veth("rt0", "rt1", None).await.unwrap();
            nl.set_link_up("rt0").await.unwrap();
            nl.set_link_up("rt1").await.unwrap();
            // Felix got there first (its own protocol and all).
            ip(&[
                "route",
                "add",
                "10.65.0.20/32",
                "dev",
                "rt0",
                "scope",
                "link",
                "proto",
                "static",
            ]);
            ip(&["-6", "route", "add", "fd00:65::20/128", "dev", "rt0"]);

            let v4 = host_net("10.65.0.20".parse::<Ipv4Addr>().unwrap());
            let v6 = host_net("fd00:65::20".parse::<Ipv6Addr>().unwrap());
            for dest in [v4, v6] {
                nl.add_route(dest, "rt0")
                    .await
                    .expect("same route on same dev");
                nl.add_route(dest, "rt0").await.expect("and again");
            }
            let listed = nl.list_routes("rt0").await.unwrap();
            assert!(
                listed.iter().any(|r| r.dest == v4 && r.link_scope),
                "{listed:?}"
            );
            assert!(listed.iter().any(|r| r.dest == v6), "{listed:?}");

            for dest in [v4, v6] {
                nl.del_route(dest, "rt0").await.expect("delete");
                nl.del_route(dest, "rt0").await.expect("delete again");
            }
            assert!(!has_route("-4", "10.65.0.20", "rt0"));
            assert!(!has_route("-6", "fd00:65::20", "rt0"));
            nl.del_route(v4, "gone0").await.expect("missing device");

            let err = nl
                .add_route("10.65.0.0/24".parse().unwrap(), "rt0")
                .await
                .unwrap_err();
            assert!(err.is_invalid(), "{err}");
            nl.delete_link("rt0").await.unwrap();
        },
    );
}

#[test]
fn stale_host_veth_is_replaced() {
    in_private_netns("stale_host_veth_is_replaced", |nl| async move {
        ip(&[
            "link", "add", HOST, "type", "veth", "peer", "name", "stale0",
        ]);
        setup_endpoint_veth(&nl, endpoint_v4(&["10.65.0.11"]))
            .await
            .expect("setup over a stale veth");
        assert!(link("stale0").is_none(), "{:?}", link_names());
        assert!(link(TEMP).is_some());
        teardown_endpoint_veth(&nl, HOST).await.unwrap();
        assert_eq!(link_names(), vec!["lo".to_string()]);
    });
}

#[test]
fn link_primitives() {
    in_private_netns("link_primitives", |nl| async move {
        nl.create_veth("pa0", "pb0", Some(1400)).await.unwrap();
        let err = nl.create_veth("pa0", "pc0", None).await.unwrap_err();
        assert!(err.is_exists(), "{err}");
        assert_eq!(err.to_string(), "create veth pa0: file exists");

        assert!(nl.link_exists("pa0").await.unwrap());
        assert!(nl.link_exists("pb0").await.unwrap());
        assert_eq!(link("pb0").unwrap()["mtu"], 1400);
        let index = nl.link_index("pa0").await.unwrap();
        assert_eq!(link("pa0").unwrap()["ifindex"], index);

        let mac = [0x02, 0, 0, 0, 0, 0x42];
        nl.set_mac("pa0", mac).await.unwrap();
        assert_eq!(nl.get_mac("pa0").await.unwrap(), mac);
        assert_eq!(link("pa0").unwrap()["address"], "02:00:00:00:00:42");

        nl.set_link_up("pa0").await.unwrap();
        assert!(is_up(&link("pa0").unwrap()));
        nl.set_link_down("pa0").await.unwrap();
        assert!(!is_up(&link("pa0").unwrap()));
        // A down link gets no link-local: answered at once, without polling.
        assert_eq!(nl.ipv6_link_local("pa0").await.unwrap(), None);

        nl.delete_link("pa0").await.unwrap();
        assert!(!nl.link_exists("pa0").await.unwrap());
        assert!(!nl.link_exists("pb0").await.unwrap(), "peer goes with it");
        nl.delete_link("pa0").await.expect("idempotent");

        let err = nl.link_index("pa0").await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(nl.get_mac("pa0").await.unwrap_err().is_not_found());
        assert!(nl.set_link_up("pa0").await.unwrap_err().is_not_found());
        assert!(nl.link_exists("../x").await.unwrap_err().is_invalid());
        assert!(nl
            .create_veth("much-too-long-name", "x", None)
            .await
            .unwrap_err()
            .is_invalid());
    });
}

#[test]
fn sysctl_writes_only_on_change_and_soft_variant_warns() {
    in_private_netns(
        "sysctl_writes_only_on_change_and_soft_variant_warns",
        |nl| async move {
            nl.create_veth("sy0", "sy1", None).await.unwrap();
            let path = "net/ipv4/conf/sy0/proxy_arp";
            assert_eq!(sysctl::read(path).unwrap(), "0");
            assert!(sysctl::write(path, "1").unwrap(), "changed");
            assert!(!sysctl::write(path, "1").unwrap(), "unchanged");
            assert_eq!(read_sysctl(path), "1");
            // The knob belongs to this namespace's interface: the netns switch covers /proc/sys.
            assert_eq!(read_sysctl("net/ipv4/conf/sy1/proxy_arp"), "0");

            let err = sysctl::write("net/ipv4/conf/nosuch0/proxy_arp", "1").unwrap_err();
            assert!(err.is_not_found(), "{err}");
            assert!(!sysctl::write_soft("net/ipv4/conf/nosuch0/proxy_arp", "1"));
            assert!(sysctl::write("net/../../etc/x", "1")
                .unwrap_err()
                .is_invalid());

            sysctl::configure_host_veth("sy1", true, true).unwrap();
            assert_eq!(read_sysctl("net/ipv6/conf/sy1/proxy_ndp"), "1");
            assert!(sysctl::configure_host_veth("nosuch0", false, true).is_err());
            nl.delete_link("sy0").await.unwrap();
        },
    );
}

#[test]
fn setup_rejects_bad_input_before_touching_the_kernel() {
    in_private_netns(
        "setup_rejects_bad_input_before_touching_the_kernel",
        |nl| async move {
            for veth in [
                EndpointVeth {
                    host_name: "cali/../x".into(),
                    ..endpoint()
                },
                EndpointVeth {
                    temp_name: "temp0123456789ab".into(),
                    ..endpoint()
                },
                EndpointVeth {
                    temp_name: HOST.into(),
                    ..endpoint()
                },
                EndpointVeth {
                    container_mac: Some([0x01, 0, 0x5e, 0, 0, 1]),
                    ..endpoint()
                },
            ] {
                let err = setup_endpoint_veth(&nl, veth.clone()).await.unwrap_err();
                assert!(err.is_invalid(), "{veth:?}: {err}");
            }
            assert_eq!(link_names(), vec!["lo".to_string()]);
        },
    );
}

/// With the plugin's firewall off there is no loopback guard, so the host veth does not get
/// `route_localnet` (a container could reach the host's 127.0.0.1 services with it).
#[test]
fn no_route_localnet_without_the_loopback_guard() {
    in_private_netns(
        "no_route_localnet_without_the_loopback_guard",
        |nl| async move {
            setup_endpoint_veth(
                &nl,
                EndpointVeth {
                    no_route_localnet: true,
                    ..endpoint_v4(&["10.65.0.7"])
                },
            )
            .await
            .expect("setup");
            assert_eq!(
                read_sysctl(&format!("net/ipv4/conf/{HOST}/route_localnet")),
                "0"
            );
            assert_eq!(read_sysctl(&format!("net/ipv4/conf/{HOST}/proxy_arp")), "1");
            teardown_endpoint_veth(&nl, HOST).await.unwrap();
        },
    );
}
