//! The rule set, rendered as `iptables-restore` input from the endpoint and pool state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::*;
use crate::dataplane::ipset;

/// A short stable name part for a profile (chain names are limited to 28 characters, set
/// names to 31): a 64-bit FNV-1a hash, so two profiles of one host sharing a chain (and so
/// their members) is out of reach in practice (32 bits would collide among ~65,000 profiles
/// by chance).
pub fn profile_hash(profile: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in profile.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

pub(super) fn profile_chain(profile: &str) -> String {
    format!("{CHAIN_PREFIX}PRO-{}", profile_hash(profile))
}

pub(super) fn endpoint_chain(iface: &str) -> String {
    // `cali` + 11 characters: unique per endpoint on this host.
    format!("{CHAIN_PREFIX}TW-{}", iface.trim_start_matches("cali"))
}

/// The filter and nat tables, as `iptables-restore --noflush` input, and every chain they
/// declare (to tell which old chains to delete).
pub struct Rendered {
    /// `*filter ... COMMIT` (empty in felix mode).
    pub filter: String,
    /// `*nat ... COMMIT`.
    pub nat: String,
    /// Chains declared, per table.
    pub chains: BTreeMap<&'static str, BTreeSet<String>>,
    /// IP sets the rules match (they must exist before the rules are written).
    pub sets: BTreeSet<String>,
}

/// Renders the rules of one family.
pub fn render(state: &RuleState, family: Family, mode: Mode) -> Rendered {
    let mut chains: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    let eps: Vec<(&String, &EndpointRules, Vec<&IpAddr>)> = state
        .endpoints
        .iter()
        .map(|(id, e)| {
            (
                id,
                e,
                e.ips
                    .iter()
                    .filter(|ip| family.matches(ip))
                    .collect::<Vec<_>>(),
            )
        })
        // An endpoint with no address of this family has no rules in it either, so adding
        // an IPv4-only endpoint leaves the IPv6 rule set unchanged (and not re-applied).
        .filter(|(_, _, ips)| !ips.is_empty())
        .collect();
    let len = family.host_len();

    // ---- filter
    let mut filter = String::new();
    let mut decl = Vec::new();
    let mut rules = Vec::new();
    let mut sets = BTreeSet::new();
    if family == Family::V4 {
        // Host veths have route_localnet=1 (for published ports reached via localhost), so
        // the kernel would deliver a frame a workload addresses to 127.0.0.0/8 to the
        // host's loopback-only services (CVE-2020-8558). Only replies, and traffic a rule
        // DNATed there on purpose, may arrive from a workload with such a destination.
        decl.push(INPUT_CHAIN.to_string());
        rules.push(format!(
            "-A {INPUT_CHAIN} -d 127.0.0.0/8 -i cali+ -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        ));
    }
    if mode == Mode::Standalone {
        decl.extend([
            FORWARD_CHAIN.to_string(),
            FROM_WL.to_string(),
            TO_WL.to_string(),
        ]);
        // Replies first; INVALID never reaches a workload.
        rules.push(format!(
            "-A {FORWARD_CHAIN} -i cali+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ));
        rules.push(format!(
            "-A {FORWARD_CHAIN} -o cali+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ));
        rules.push(format!(
            "-A {FORWARD_CHAIN} -i cali+ -m conntrack --ctstate INVALID -j DROP"
        ));
        rules.push(format!(
            "-A {FORWARD_CHAIN} -o cali+ -m conntrack --ctstate INVALID -j DROP"
        ));
        // From a workload: its own addresses only (RETURN), anything else is spoofed.
        rules.push(format!("-A {FORWARD_CHAIN} -i cali+ -j {FROM_WL}"));
        // To a workload: allowed by its profiles, or a published port.
        rules.push(format!("-A {FORWARD_CHAIN} -o cali+ -j {TO_WL}"));
        // Towards Docker's own bridges, Docker's chains decide (its isolation between
        // networks, `--internal`, unpublished ports); the names are Docker's defaults.
        for bridge in DOCKER_BRIDGES {
            rules.push(format!("-A {FORWARD_CHAIN} -i cali+ -o {bridge} -j RETURN"));
        }
        // Left: workload to a non-workload destination. Profiles allow all egress.
        rules.push(format!("-A {FORWARD_CHAIN} -i cali+ -j ACCEPT"));

        for (_, e, ips) in &eps {
            for ip in ips {
                rules.push(format!(
                    "-A {FROM_WL} -i {} -s {ip}/{len} -j RETURN",
                    e.iface
                ));
            }
        }
        // Like Felix: an unknown cali interface, or a spoofed source, is dropped.
        rules.push(format!("-A {FROM_WL} -j DROP"));

        // Published ports: Docker's own bridge does the same with ctstate DNAT.
        rules.push(format!("-A {TO_WL} -m conntrack --ctstate DNAT -j ACCEPT"));
        if state.other_hosts {
            // From outside this host (another host's workload, routed, VXLAN or IP-in-IP):
            // only an address of another host's workload may be the source, never one of
            // this host's (their rules below accept them) nor anything unassigned.
            let remote = ipset::remote_set(family);
            rules.push(format!(
                "-A {TO_WL} ! -i cali+ -m set ! --match-set {remote} src -j DROP"
            ));
            sets.insert(remote);
        }
        // Docker's reach on several networks: a container on networks A and B sends to B's
        // containers from whichever interface its routes pick (with a pool shared by A and
        // B, A's, with A's address), so each of its addresses is a member of the profiles of
        // all its endpoints. The profiles' ingress is unchanged: a container on A only still
        // cannot reach one on B only.
        let mut sandbox_profiles: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for e in state.endpoints.values() {
            if !e.sandbox.is_empty() {
                sandbox_profiles
                    .entry(e.sandbox.as_str())
                    .or_default()
                    .extend(e.profiles.iter().map(String::as_str));
            }
        }
        let mut members: BTreeMap<&str, BTreeSet<&IpAddr>> = BTreeMap::new();
        for (_, e, ips) in &eps {
            let shared = sandbox_profiles.get(e.sandbox.as_str());
            for p in e
                .profiles
                .iter()
                .map(String::as_str)
                .chain(shared.into_iter().flatten().copied())
            {
                members.entry(p).or_default().extend(ips.iter().copied());
            }
        }
        for (_, e, _) in &eps {
            let chain = endpoint_chain(&e.iface);
            rules.push(format!("-A {TO_WL} -o {} -j {chain}", e.iface));
            for p in &e.profiles {
                rules.push(format!("-A {chain} -j {}", profile_chain(p)));
            }
            rules.push(format!("-A {chain} -j DROP"));
            decl.push(chain);
        }
        rules.push(format!("-A {TO_WL} -j DROP"));
        for (p, ips) in &members {
            let chain = profile_chain(p);
            // Ingress from the profile's members (the `has(<profile>)` selector).
            for ip in ips {
                rules.push(format!("-A {chain} -s {ip}/{len} -j ACCEPT"));
            }
            if state.other_hosts {
                // The profile's members on other hosts, kept by the members keeper.
                let set = ipset::profile_set(p, family);
                rules.push(format!("-A {chain} -m set --match-set {set} src -j ACCEPT"));
                sets.insert(set);
            }
            decl.push(chain);
        }
    }
    // In felix mode Felix owns filtering: only the loopback guard is ours.
    decl.sort();
    decl.dedup();
    if !decl.is_empty() {
        filter.push_str("*filter\n");
        for c in &decl {
            filter.push_str(&format!(":{c} - [0:0]\n"));
        }
        for r in rules {
            filter.push_str(&r);
            filter.push('\n');
        }
        filter.push_str("COMMIT\n");
    }
    chains.insert("filter", decl.into_iter().collect());

    // ---- nat
    let mut decl = vec![DNAT_CHAIN.to_string(), POSTROUTING_CHAIN.to_string()];
    let mut rules = Vec::new();
    for (_, e, ips) in &eps {
        let Some(target) = ips.first() else { continue };
        for p in &e.ports {
            if let Some(hip) = &p.host_ip {
                if !family.matches(hip) {
                    continue;
                }
            }
            // Every local address, but of the loopback ones only localhost itself: the host's
            // other loopback services (systemd-resolved's 127.0.0.53, ...) stay its own.
            let dsts: Vec<String> = match (p.host_ip, family) {
                (Some(h), _) => vec![format!(" -d {h}/{len}")],
                (None, Family::V4) => vec![
                    " ! -d 127.0.0.0/8".to_string(),
                    " -d 127.0.0.1/32".to_string(),
                ],
                (None, Family::V6) => vec![String::new()],
            };
            let to = match target {
                IpAddr::V4(a) => format!("{a}:{}", p.port),
                IpAddr::V6(a) => format!("[{a}]:{}", p.port),
            };
            for dst in dsts {
                rules.push(format!(
                    "-A {DNAT_CHAIN}{dst} -p {proto} -m {proto} --dport {hp} -j DNAT --to-destination {to}",
                    proto = p.protocol,
                    hp = p.host_port
                ));
            }
        }
    }
    if family == Family::V4 {
        // Published ports reached via localhost: the source 127.x must not leave on a veth.
        rules.push(format!(
            "-A {POSTROUTING_CHAIN} -o cali+ -s 127.0.0.0/8 -j MASQUERADE"
        ));
    }
    if mode == Mode::Standalone {
        let pools: Vec<&PoolRules> = state
            .pools
            .iter()
            .filter(|p| family.matches(&p.cidr.addr()))
            .collect();
        if pools.iter().any(|p| p.nat_outgoing) {
            decl.push(NAT_OUT.to_string());
            for p in pools.iter().filter(|p| p.nat_outgoing) {
                rules.push(format!("-A {POSTROUTING_CHAIN} -s {} -j {NAT_OUT}", p.cidr));
            }
            // Destinations inside any Calico pool keep their source address.
            for p in &pools {
                rules.push(format!("-A {NAT_OUT} -d {} -j RETURN", p.cidr));
            }
            rules.push(format!("-A {NAT_OUT} -j MASQUERADE"));
        }
    }
    let mut nat = String::from("*nat\n");
    for c in &decl {
        nat.push_str(&format!(":{c} - [0:0]\n"));
    }
    for r in rules {
        nat.push_str(&r);
        nat.push('\n');
    }
    nat.push_str("COMMIT\n");
    chains.insert("nat", decl.into_iter().collect());
    Rendered {
        filter,
        nat,
        chains,
        sets,
    }
}
