//! The standalone rule set applied to a real kernel, in a private network namespace.

mod common;

use calico_libnetwork::dataplane::standalone::{
    apply, remove_all, Applier, EndpointRules, Family, Mode, PoolRules, PortMap, RuleState,
};

/// Runs `f` on a thread of its own in a fresh network namespace (iptables children inherit it).
fn in_netns<F: FnOnce() + Send + 'static>(f: F) {
    std::thread::spawn(move || {
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        f()
    })
    .join()
    .unwrap();
}

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
    }
}

#[test]
fn apply_is_idempotent_and_removes_what_went_away() {
    if !common::require_root("apply_is_idempotent_and_removes_what_went_away") {
        return;
    }
    in_netns(|| {
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

        // Felix takes over: no filter rules of ours remain.
        ap.apply(&s, Family::V4, Mode::Felix).unwrap();
        let f3 = save("filter");
        assert!(
            !f3.contains("CALICO-LIBNETWORK") && !f3.contains("CLN-"),
            "{f3}"
        );

        remove_all();
        let all = format!("{}{}", save("filter"), save("nat"));
        assert!(
            !all.contains("CALICO-LIBNETWORK") && !all.contains("CLN-"),
            "{all}"
        );
    });
}
