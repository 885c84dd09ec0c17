//! The standalone rule set applied to a real kernel, in a private network namespace.

use crate::common;

use common::netns;

use calico_libnetwork::dataplane::iptables::{
    apply, remove_all, Applier, EndpointRules, Family, Mode, PoolRules, PortMap, RuleState,
};

fn save(table: &str) -> String {
    let out = std::process::Command::new("iptables")
        .args(["-w", "-t", table, "-S"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn ep(iface: &str, ip: &str, profile: &str, ports: Vec<PortMap>) -> EndpointRules {
    EndpointRules {
        iface: iface.into(),
        ips: vec![ip.parse().unwrap()],
        profiles: vec![profile.into()],
        ports,
        sandbox: String::new(),
    }
}

#[test]
fn apply_is_idempotent_and_removes_what_went_away() {
    if !common::require_root("apply_is_idempotent_and_removes_what_went_away") {
        return;
    }
    netns::fresh(|| {
        let mut s = RuleState::default();
        s.endpoints.insert(
            "a".repeat(64),
            ep("caliaaaaaaaaaaa", "10.0.0.1", "net1", vec![]),
        );
        s.endpoints.insert(
            "b".repeat(64),
            ep(
                "calibbbbbbbbbbb",
                "10.0.0.2",
                "net1",
                vec![PortMap {
                    protocol: "tcp".into(),
                    host_ip: None,
                    host_port: 18080,
                    port: 80,
                }],
            ),
        );
        s.pools.push(PoolRules {
            cidr: "10.0.0.0/24".parse().unwrap(),
            nat_outgoing: true,
        });
        // One applier across changes, as the plugin keeps it.
        let mut ap = Applier::default();
        ap.apply(&s, Family::V4, Mode::Standalone).unwrap();
        let f1 = save("filter");
        let n1 = save("nat");
        assert!(
            f1.contains("-A FORWARD -j CALICO-LIBNETWORK-FORWARD"),
            "{f1}"
        );
        assert!(f1.contains("-A INPUT -j CALICO-LIBNETWORK-INPUT"), "{f1}");
        assert!(f1.contains("-N CLN-TW-bbbbbbbbbbb"), "{f1}");
        assert!(n1.contains("--to-destination 10.0.0.2:80"), "{n1}");
        assert!(
            n1.contains("-A PREROUTING -m addrtype --dst-type LOCAL -j CALICO-LIBNETWORK-DNAT"),
            "{n1}"
        );
        assert!(
            n1.contains("-A POSTROUTING -j CALICO-LIBNETWORK-SNAT"),
            "{n1}"
        );
        assert!(n1.contains("-A CLN-NAT-OUT -j MASQUERADE"), "{n1}");

        // Again: nothing changes, nothing is duplicated; a fresh applier (a restart) too.
        ap.apply(&s, Family::V4, Mode::Standalone).unwrap();
        assert_eq!(f1, save("filter"));
        assert_eq!(n1, save("nat"));
        apply(&s, Family::V4, Mode::Standalone).unwrap();
        assert_eq!(f1, save("filter"));
        assert_eq!(n1, save("nat"));

        // An endpoint goes: its chain and its port go with it.
        s.endpoints.remove(&"b".repeat(64));
        ap.apply(&s, Family::V4, Mode::Standalone).unwrap();
        let f2 = save("filter");
        assert!(!f2.contains("CLN-TW-bbbbbbbbbbb"), "{f2}");
        assert!(!save("nat").contains("18080"));

        // Felix takes over: no filter rules of ours remain but the loopback guard.
        ap.apply(&s, Family::V4, Mode::Felix).unwrap();
        let f3 = save("filter");
        assert!(
            !f3.contains("CALICO-LIBNETWORK-FORWARD") && !f3.contains("CLN-"),
            "{f3}"
        );
        assert!(f3.contains("-A INPUT -j CALICO-LIBNETWORK-INPUT"), "{f3}");

        let removed = remove_all().unwrap();
        assert!(
            removed > 0,
            "the nat rules of felix mode were there to remove"
        );
        let all = format!("{}{}", save("filter"), save("nat"));
        assert!(
            !all.contains("CALICO-LIBNETWORK") && !all.contains("CLN-"),
            "{all}"
        );
    });
}

/// `iptables -S` of one table grouped by chain (rule order kept within a chain), so two
/// rule sets compare equal whatever order their chains were created in.
fn by_chain(table: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for l in save(table).lines() {
        let mut w = l.split_whitespace();
        let (Some(_), Some(chain)) = (w.next(), w.next()) else {
            continue;
        };
        m.entry(chain.to_string()).or_default().push(l.to_string());
    }
    m
}

#[test]
fn small_updates_end_where_a_fresh_apply_does() {
    if !common::require_root("small_updates_end_where_a_fresh_apply_does") {
        return;
    }
    let port = |hp: u16| PortMap {
        protocol: "udp".into(),
        host_ip: None,
        host_port: hp,
        port: 53,
    };
    let mut steps: Vec<(&str, RuleState)> = Vec::new();
    let mut s = RuleState::default();
    s.pools.push(PoolRules {
        cidr: "10.0.0.0/24".parse().unwrap(),
        nat_outgoing: true,
    });
    s.endpoints.insert(
        "b".repeat(64),
        ep("calibbbbbbbbbbb", "10.0.0.2", "net1", vec![]),
    );
    steps.push(("first endpoint", s.clone()));
    s.endpoints.insert(
        "a".repeat(64),
        ep("caliaaaaaaaaaaa", "10.0.0.1", "net1", vec![port(5353)]),
    );
    steps.push(("endpoint added before it, with a port", s.clone()));
    s.endpoints.insert(
        "c".repeat(64),
        ep("calicccccccccc1", "10.0.0.3", "net2", vec![]),
    );
    steps.push(("endpoint on a new profile", s.clone()));
    s.endpoints.get_mut(&"c".repeat(64)).unwrap().profiles = vec!["net1".into(), "net2".into()];
    steps.push(("profile added to an endpoint", s.clone()));
    s.endpoints.remove(&"a".repeat(64));
    steps.push(("endpoint with a port removed", s.clone()));
    s.endpoints.get_mut(&"c".repeat(64)).unwrap().profiles = vec!["net1".into()];
    steps.push(("profile dropped", s.clone()));
    s.endpoints.clear();
    steps.push(("all endpoints removed", s.clone()));

    netns::fresh(move || {
        let mut ap = Applier::default();
        for (what, state) in steps {
            ap.apply(&state, Family::V4, Mode::Standalone)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let updated = (by_chain("filter"), by_chain("nat"));
            // The same state applied from nothing, in a namespace of its own.
            let fresh = netns::fresh(move || {
                apply(&state, Family::V4, Mode::Standalone).unwrap();
                (by_chain("filter"), by_chain("nat"))
            });
            assert_eq!(updated.0, fresh.0, "filter after {what}");
            assert_eq!(updated.1, fresh.1, "nat after {what}");
        }
        remove_all().unwrap();
    });
}
