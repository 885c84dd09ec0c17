//! Unit tests of rendering, deltas, deadlines and rule ownership (no process runs iptables).

use super::apply::*;
use super::exec::*;
use super::remove::*;
use super::render::*;
use super::*;
use crate::error::Error;
use std::process::Command;

fn state() -> RuleState {
    let mut s = RuleState::default();
    s.endpoints.insert(
        "a".repeat(64),
        EndpointRules {
            iface: "caliaaaaaaaaaaa".into(),
            ips: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            profiles: vec!["net1".into()],
            ports: vec![PortMap {
                protocol: "tcp".into(),
                host_ip: None,
                host_port: 18080,
                port: 80,
            }],
            sandbox: String::new(),
        },
    );
    s.endpoints.insert(
        "b".repeat(64),
        EndpointRules {
            iface: "calibbbbbbbbbbb".into(),
            ips: vec!["10.0.0.2".parse().unwrap()],
            profiles: vec!["net2".into()],
            ports: vec![],
            sandbox: String::new(),
        },
    );
    s.pools = vec![
        PoolRules {
            cidr: "10.0.0.0/24".parse().unwrap(),
            nat_outgoing: true,
        },
        PoolRules {
            cidr: "10.1.0.0/24".parse().unwrap(),
            nat_outgoing: false,
        },
    ];
    s
}

#[test]
fn standalone_v4_rules_isolate_profiles_and_publish_ports() {
    let r = render(&state(), Family::V4, Mode::Standalone);
    let f = &r.filter;
    assert!(f.contains(":CALICO-LIBNETWORK-FORWARD - [0:0]"));
    assert!(f.contains("-A CLN-FROM-WL -i caliaaaaaaaaaaa -s 10.0.0.1/32 -j RETURN"));
    assert!(!f.contains("fd00::1"), "no IPv6 in IPv4 rules");
    assert!(f.contains("-A CLN-TO-WL -o caliaaaaaaaaaaa -j CLN-TW-aaaaaaaaaaa"));
    let pro1 = profile_chain("net1");
    assert!(f.contains(&format!("-A CLN-TW-aaaaaaaaaaa -j {pro1}")));
    assert!(f.contains(&format!("-A {pro1} -s 10.0.0.1/32 -j ACCEPT")));
    assert!(
        !f.contains(&format!("-A {pro1} -s 10.0.0.2/32")),
        "net2's member is not in net1"
    );
    assert!(r.nat.contains("-A CALICO-LIBNETWORK-DNAT ! -d 127.0.0.0/8 -p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.0.0.1:80"));
    assert!(r.nat.contains("-A CALICO-LIBNETWORK-DNAT -d 127.0.0.1/32 -p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.0.0.1:80"));
    assert!(r
        .nat
        .contains("-A CALICO-LIBNETWORK-SNAT -s 10.0.0.0/24 -j CLN-NAT-OUT"));
    assert!(!r.nat.contains("-s 10.1.0.0/24 -j CLN-NAT-OUT"));
    assert!(r.nat.contains("-A CLN-NAT-OUT -d 10.1.0.0/24 -j RETURN"));
    assert!(r.nat.trim_end().ends_with("COMMIT"));
}

#[test]
fn ipv4_only_endpoint_leaves_ipv6_rules_unchanged() {
    let before = render(&state(), Family::V6, Mode::Standalone);
    let mut s = state();
    s.endpoints.insert(
        "c".repeat(64),
        EndpointRules {
            iface: "caliccccccccccc".into(),
            ips: vec!["10.0.0.3".parse().unwrap()],
            profiles: vec!["net1".into()],
            ports: vec![],
            sandbox: String::new(),
        },
    );
    let after = render(&s, Family::V6, Mode::Standalone);
    assert_eq!(before.filter, after.filter);
    assert_eq!(before.nat, after.nat);
    assert!(render(&s, Family::V4, Mode::Standalone)
        .filter
        .contains("CLN-TW-ccccccccccc"));
}

#[test]
fn felix_mode_keeps_only_port_nat_and_the_loopback_guard() {
    let r = render(&state(), Family::V4, Mode::Felix);
    assert!(!r.filter.contains(FORWARD_CHAIN), "{}", r.filter);
    assert!(
        r.filter.contains("-A CALICO-LIBNETWORK-INPUT -d 127.0.0.0/8 -i cali+ -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"),
        "{}",
        r.filter
    );
    assert!(render(&state(), Family::V6, Mode::Felix).filter.is_empty());
    assert!(r.nat.contains("--dport 18080"));
    assert!(!r.nat.contains(NAT_OUT));
}

#[test]
fn v6_rules_use_v6_addresses_and_brackets() {
    let r = render(&state(), Family::V6, Mode::Standalone);
    assert!(r.filter.contains("-s fd00::1/128 -j RETURN"));
    assert!(r.nat.contains("--to-destination [fd00::1]:80"));
    assert!(!r.nat.contains("127.0.0.0/8"));
}

#[test]
fn owned_lines_are_our_chains_and_the_jumps_into_them() {
    let listing = "-P FORWARD DROP\n\
        -N CALICO-LIBNETWORK-FORWARD\n\
        -N CLN-TW-aaa\n\
        -N DOCKER-USER\n\
        -A FORWARD -j CALICO-LIBNETWORK-FORWARD\n\
        -A FORWARD -j DOCKER-USER\n\
        -A FORWARD -m comment --comment \"to CLN-x\" -j ACCEPT\n\
        -A CALICO-LIBNETWORK-FORWARD -o cali+ -j CLN-TW-aaa\n\
        -A CLN-TW-aaa -j DROP\n\
        -A DOCKER-USER -j RETURN\n";
    let owned = owned_lines(listing);
    assert_eq!(
        owned,
        vec![
            "-N CALICO-LIBNETWORK-FORWARD",
            "-N CLN-TW-aaa",
            "-A FORWARD -j CALICO-LIBNETWORK-FORWARD",
            "-A CALICO-LIBNETWORK-FORWARD -o cali+ -j CLN-TW-aaa",
            "-A CLN-TW-aaa -j DROP",
        ]
    );
    assert_eq!(
        removal("filter", &owned),
        "*filter\n-D FORWARD -j CALICO-LIBNETWORK-FORWARD\n\
         -F CALICO-LIBNETWORK-FORWARD\n-F CLN-TW-aaa\n\
         -X CALICO-LIBNETWORK-FORWARD\n-X CLN-TW-aaa\nCOMMIT\n"
    );
    assert_eq!(removal("nat", &[]), "");
}

#[test]
fn a_subprocess_past_its_deadline_is_killed() {
    let t = std::time::Instant::now();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo $$; exec sleep 30"]);
    let e = output_within_deadline(cmd, None, std::time::Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    // A child that reads all its input and answers is waited for as usual.
    let mut cat = Command::new("cat");
    cat.arg("-");
    let out = output_within(cat, Some("x".repeat(1 << 20))).unwrap();
    assert_eq!(
        out.stdout.len(),
        1 << 20,
        "a large input and output do not block"
    );
}

#[test]
fn chain_names_fit_iptables_limit() {
    for c in [
        FORWARD_CHAIN,
        DNAT_CHAIN,
        POSTROUTING_CHAIN,
        &profile_chain("x"),
        &endpoint_chain("cali0123456789a"),
    ] {
        assert!(c.len() <= 28, "{c}");
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn insertions_rebuild_new_from_old() {
    let old = strs(&["a", "b", "c"]);
    let new = strs(&["x", "a", "b", "y", "c", "z"]);
    let ins = insertions(&old, &new).unwrap();
    assert_eq!(ins, vec![(1, "x"), (4, "y"), (6, "z")]);
    // Replaying the inserts in order on `old` gives `new`.
    let mut chain = old.clone();
    for (pos, r) in ins {
        chain.insert(pos - 1, r.to_string());
    }
    assert_eq!(chain, new);
    assert_eq!(insertions(&old, &strs(&["a", "c"])), None);
    assert_eq!(insertions(&old, &strs(&["b", "a", "c"])), None);
    assert_eq!(insertions(&old, &old), Some(vec![]));
}

#[test]
fn adding_an_endpoint_only_inserts_removing_rewrites() {
    let one = state();
    let mut two = one.clone();
    two.endpoints.insert(
        "c".repeat(64),
        EndpointRules {
            iface: "calicccccccccc1".into(),
            ips: vec!["10.65.0.9".parse().unwrap()],
            profiles: vec!["net1".into()],
            ports: vec![],
            sandbox: String::new(),
        },
    );
    let tables = |s: &RuleState| {
        let r = render(s, Family::V4, Mode::Standalone);
        (parse_table(&r.filter), parse_table(&r.nat))
    };
    let (f1, n1) = tables(&one);
    let (f2, n2) = tables(&two);
    let add = table_delta("filter", &f1, &f2);
    assert!(
        add.starts_with("*filter\n") && add.ends_with("COMMIT\n"),
        "{add}"
    );
    // Only the new endpoint's chain is declared; nothing existing is flushed or removed.
    let decls: Vec<&str> = add.lines().filter(|l| l.starts_with(':')).collect();
    assert_eq!(decls, vec![":CLN-TW-cccccccccc1 - [0:0]"], "{add}");
    assert!(add.contains("-I CLN-FROM-WL "), "{add}");
    assert!(!add.contains("-X ") && !add.contains("-D "), "{add}");
    // No published port: the nat table is untouched.
    assert_eq!(table_delta("nat", &n1, &n2), "");
    assert_eq!(table_delta("filter", &f2, &f2), "");
    // Removing it rewrites the chains it was in and deletes its own chain last.
    let rm = table_delta("filter", &f2, &f1);
    assert!(rm.contains(":CLN-FROM-WL - [0:0]"), "{rm}");
    assert!(
        rm.trim_end().ends_with("-X CLN-TW-cccccccccc1\nCOMMIT"),
        "{rm}"
    );
}

/// Docker's reach on several networks: a container with endpoints on net1 and net2 (one
/// sandbox) has each address accepted by both networks' members; an endpoint on net2 only
/// still does not reach net1's.
#[test]
fn a_container_on_two_networks_is_a_member_of_both() {
    let mut s = state();
    let pro1 = profile_chain("net1");
    let pro2 = profile_chain("net2");
    let before = render(&s, Family::V4, Mode::Standalone).filter;
    assert!(!before.contains(&format!("-A {pro2} -s 10.0.0.1/32 -j ACCEPT")));
    // Container X: its net1 endpoint (10.0.0.1) and a net2 endpoint (10.0.0.3).
    s.endpoints.get_mut(&"a".repeat(64)).unwrap().sandbox = "/var/run/docker/netns/x".into();
    s.endpoints.insert(
        "c".repeat(64),
        EndpointRules {
            iface: "caliccccccccccc".into(),
            ips: vec!["10.0.0.3".parse().unwrap()],
            profiles: vec!["net2".into()],
            ports: vec![],
            sandbox: "/var/run/docker/netns/x".into(),
        },
    );
    let f = render(&s, Family::V4, Mode::Standalone).filter;
    for (chain, ip) in [
        (&pro1, "10.0.0.1"),
        (&pro1, "10.0.0.3"),
        (&pro2, "10.0.0.1"),
        (&pro2, "10.0.0.3"),
        (&pro2, "10.0.0.2"),
    ] {
        assert!(
            f.contains(&format!("-A {chain} -s {ip}/32 -j ACCEPT")),
            "{chain} {ip}:\n{f}"
        );
    }
    // 10.0.0.2 (net2 only, another sandbox) is no member of net1.
    assert!(
        !f.contains(&format!("-A {pro1} -s 10.0.0.2/32 -j ACCEPT")),
        "{f}"
    );
    // Each endpoint's ingress is still its own profile only.
    assert!(f.contains(&format!("-A CLN-TW-aaaaaaaaaaa -j {pro1}")));
    assert!(
        !f.contains(&format!("-A CLN-TW-aaaaaaaaaaa -j {pro2}")),
        "{f}"
    );
    // The IPv6 address of the net1 endpoint joins net2 as well.
    let f6 = render(&s, Family::V6, Mode::Standalone).filter;
    assert!(
        f6.contains(&format!("-A {pro2} -s fd00::1/128 -j ACCEPT")),
        "{f6}"
    );
}

#[test]
fn other_hosts_members_are_matched_by_set_and_other_sources_dropped() {
    let r = render(&state(), Family::V4, Mode::Standalone);
    assert!(
        !r.filter.contains("--match-set") && r.sets.is_empty(),
        "no routes between hosts: no set\n{}",
        r.filter
    );
    let mut s = state();
    s.other_hosts = true;
    let r = render(&s, Family::V4, Mode::Standalone);
    let f = &r.filter;
    let lines: Vec<&str> = f.lines().collect();
    let at = |rule: &str| {
        lines
            .iter()
            .position(|l| *l == rule)
            .unwrap_or_else(|| panic!("no {rule} in\n{f}"))
    };
    // Nothing from outside this host but another host's workload: no pool-wide accept.
    assert!(!f.contains("! -i cali+ -s"), "{f}");
    let spoof = at("-A CLN-TO-WL ! -i cali+ -m set ! --match-set cln4-remote src -j DROP");
    // Before the per-endpoint chains, after the published ports.
    assert!(spoof < at("-A CLN-TO-WL -o caliaaaaaaaaaaa -j CLN-TW-aaaaaaaaaaa"));
    assert!(spoof > at("-A CLN-TO-WL -m conntrack --ctstate DNAT -j ACCEPT"));
    // Each profile chain accepts its remote members from the profile's set, after its local
    // members.
    let pro = profile_chain("net1");
    let set = crate::dataplane::ipset::profile_set("net1", Family::V4);
    let by_set = at(&format!("-A {pro} -m set --match-set {set} src -j ACCEPT"));
    assert!(by_set > at(&format!("-A {pro} -s 10.0.0.1/32 -j ACCEPT")));
    assert!(
        r.sets.contains(&set) && r.sets.contains("cln4-remote"),
        "{:?}",
        r.sets
    );
    // IPv6 rules match the IPv6 sets.
    let r6 = render(&s, Family::V6, Mode::Standalone);
    assert!(
        r6.filter.contains("! --match-set cln6-remote src -j DROP"),
        "{}",
        r6.filter
    );
    assert!(
        r6.sets.iter().all(|n| n.starts_with("cln6-")),
        "{:?}",
        r6.sets
    );
}
