//! Kernel IP sets (`ipset`) holding the addresses of other hosts' workloads, which the
//! standalone rules match (`-m set --match-set`) when routes between hosts are on:
//! - `cln4-remote` / `cln6-remote`: every workload address of another host (what traffic
//!   arriving from outside this host may carry as its source);
//! - `cln4-<hash>` / `cln6-<hash>`: the other hosts' members of one profile (the hash is the
//!   profile chain's, see [`crate::dataplane::iptables::profile_hash`]).
//!
//! Every write is one `ipset -exist restore` transaction: a change is a few `add`/`del`
//! lines; a full resync fills a temporary set per set and `swap`s it in, so a rule never
//! sees a half-filled set. Names are ours (`cln4-`, `cln6-`), never Calico's `cali40`/`cali60`.
//! Sets are `hash:net`, so a member may be any prefix (workloads are `/32` and `/128`).
//! Blocking: call from the blocking pool.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use ipnet::IpNet;

use crate::dataplane::iptables::{output_within, profile_hash, Family};
use crate::error::{Error, Result};

/// Set name prefix, IPv4.
pub const PREFIX_V4: &str = "cln4-";
/// Set name prefix, IPv6.
pub const PREFIX_V6: &str = "cln6-";
/// Suffix of the temporary set a full resync fills before swapping it in.
const TMP_SUFFIX: &str = "-t";
/// Enough for any fleet (ipset's default is 65,536).
const MAX_ELEM: u32 = 1 << 20;

/// Set contents by set name.
pub type Sets = BTreeMap<String, BTreeSet<IpNet>>;

fn prefix(family: Family) -> &'static str {
    match family {
        Family::V4 => PREFIX_V4,
        Family::V6 => PREFIX_V6,
    }
}

/// The set of every other host's workload addresses.
pub fn remote_set(family: Family) -> String {
    format!("{}remote", prefix(family))
}

/// The set of the other hosts' members of `profile` (at most 21 characters: ipset allows 31).
pub fn profile_set(profile: &str, family: Family) -> String {
    format!("{}{}", prefix(family), profile_hash(profile))
}

/// The family of a set of ours, by its name; `None` for anyone else's set.
pub fn family_of(name: &str) -> Option<Family> {
    if name.starts_with(PREFIX_V4) {
        Some(Family::V4)
    } else if name.starts_with(PREFIX_V6) {
        Some(Family::V6)
    } else {
        None
    }
}

/// The family of an address.
pub fn family_of_net(net: &IpNet) -> Family {
    match net {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    }
}

/// The `create` line of a set of ours (`-exist` makes it a no-op when it is there).
pub fn create_line(name: &str) -> String {
    let family = match family_of(name) {
        Some(Family::V6) => "inet6",
        _ => "inet",
    };
    format!("create {name} hash:net family {family} maxelem {MAX_ELEM}\n")
}

/// A member as ipset writes it: a host prefix as a bare address (`ipset save` shows it so).
fn member(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// Input turning the sets `old` into `new`: members added and removed one by one, sets new
/// to `new` created, sets not in `new` flushed (not destroyed: a rule may still refer to
/// one, and the kernel refuses to destroy a set in use). Empty when nothing changed.
pub fn delta_script(old: &Sets, new: &Sets) -> String {
    let mut out = String::new();
    let empty = BTreeSet::new();
    for (name, want) in new {
        let had = match old.get(name) {
            Some(h) => h,
            None => {
                out.push_str(&create_line(name));
                &empty
            }
        };
        for n in had.difference(want) {
            out.push_str(&format!("del {name} {}\n", member(n)));
        }
        for n in want.difference(had) {
            out.push_str(&format!("add {name} {}\n", member(n)));
        }
    }
    for (name, had) in old {
        if !new.contains_key(name) && !had.is_empty() {
            out.push_str(&format!("flush {name}\n"));
        }
    }
    out
}

/// Input making the kernel's sets exactly `new`, each set swapped in whole: a temporary set
/// is filled and exchanged with the live one (`swap` is atomic for the rules matching it).
/// `present` are our sets in the kernel now: those not in `new` are flushed.
pub fn replace_script(new: &Sets, present: &BTreeSet<String>) -> String {
    let mut out = String::new();
    for (name, want) in new {
        let tmp = format!("{name}{TMP_SUFFIX}");
        out.push_str(&create_line(&tmp));
        out.push_str(&format!("flush {tmp}\n"));
        for n in want {
            out.push_str(&format!("add {tmp} {}\n", member(n)));
        }
        out.push_str(&create_line(name));
        out.push_str(&format!("swap {tmp} {name}\n"));
        out.push_str(&format!("destroy {tmp}\n"));
    }
    for name in present {
        if !new.contains_key(name) {
            out.push_str(&format!("flush {name}\n"));
        }
    }
    out
}

/// Runs `ipset -exist restore` with `script` (nothing when it is empty).
pub fn restore(script: &str) -> Result<()> {
    if script.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ipset");
    cmd.args(["-exist", "restore"]);
    let out = output_within(cmd, Some(script.to_string()))?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "update ip sets: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Parses `ipset save` output: our sets and their members (a set with none is listed empty;
/// anyone else's sets are left out).
pub fn parse_save(text: &str) -> Sets {
    let mut sets = Sets::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("create"), Some(name), _) if family_of(name).is_some() => {
                sets.entry(name.to_string()).or_default();
            }
            (Some("add"), Some(name), Some(m)) if family_of(name).is_some() => {
                let net = m
                    .parse::<IpNet>()
                    .ok()
                    .or_else(|| m.parse::<std::net::IpAddr>().ok().map(IpNet::from));
                if let Some(net) = net {
                    sets.entry(name.to_string()).or_default().insert(net);
                }
            }
            _ => {}
        }
    }
    sets
}

/// Our sets in the kernel with their members (`ipset save`).
pub fn list() -> Result<Sets> {
    let mut cmd = Command::new("ipset");
    cmd.arg("save");
    let out = output_within(cmd, None)?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "list ip sets: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_save(&String::from_utf8_lossy(&out.stdout)))
}

/// Whether the `ipset` command is installed.
pub fn available() -> bool {
    crate::dataplane::iptables::on_path("ipset")
}

/// Destroys every set of ours (after the rules that match them are gone); returns how many
/// went. Nothing to do, and no error, without the `ipset` command. Each set is destroyed
/// on its own, and one still in use is tried again for a second: iptables-nft's rule
/// deletion drops its reference to a set only after the delete has returned, so a destroy
/// right after fails with "in use by a kernel component". A set that still will not go
/// is left (and said so in the error): it holds addresses, never a rule.
pub fn destroy_all() -> Result<usize> {
    if !available() {
        return Ok(0);
    }
    let mut left: Vec<String> = list()?.into_keys().collect();
    let total = left.len();
    for _ in 0..10 {
        left.retain(|n| restore(&format!("destroy {n}\n")).is_err());
        if left.is_empty() {
            return Ok(total);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(Error::msg(format!(
        "destroy ip sets {}: still in use after 1 s",
        left.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(list: &[(&str, &[&str])]) -> Sets {
        list.iter()
            .map(|(n, m)| {
                (
                    n.to_string(),
                    m.iter().map(|s| s.parse().unwrap()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn names_are_ours_and_short() {
        let long = "x".repeat(300);
        for f in [Family::V4, Family::V6] {
            let n = profile_set(&long, f);
            assert!(n.len() <= 31, "{n}");
            assert_eq!(family_of(&n), Some(f));
            assert!(format!("{n}{TMP_SUFFIX}").len() <= 31);
            assert!(!n.starts_with("cali"));
        }
        assert_eq!(remote_set(Family::V4), "cln4-remote");
        assert_ne!(
            profile_set("red", Family::V4),
            profile_set("blue", Family::V4)
        );
        assert_eq!(family_of("cali40all-hosts-net"), None);
    }

    #[test]
    fn delta_adds_and_removes_only_the_changes() {
        let old = sets(&[
            ("cln4-a", &["10.0.0.1/32", "10.0.0.2/32"]),
            ("cln4-gone", &["10.0.0.9/32"]),
        ]);
        let new = sets(&[
            ("cln4-a", &["10.0.0.2/32", "10.0.0.3/32"]),
            ("cln6-b", &["fd00::1/128"]),
        ]);
        assert_eq!(
            delta_script(&old, &new),
            "del cln4-a 10.0.0.1\nadd cln4-a 10.0.0.3\n\
             create cln6-b hash:net family inet6 maxelem 1048576\nadd cln6-b fd00::1\n\
             flush cln4-gone\n"
        );
        assert_eq!(delta_script(&new, &new), "");
    }

    #[test]
    fn replace_swaps_each_set_in_whole() {
        let new = sets(&[("cln4-a", &["10.0.0.1/32", "10.1.0.0/26"])]);
        let present = BTreeSet::from(["cln4-a".to_string(), "cln4-old".to_string()]);
        assert_eq!(
            replace_script(&new, &present),
            "create cln4-a-t hash:net family inet maxelem 1048576\nflush cln4-a-t\n\
             add cln4-a-t 10.0.0.1\nadd cln4-a-t 10.1.0.0/26\n\
             create cln4-a hash:net family inet maxelem 1048576\n\
             swap cln4-a-t cln4-a\ndestroy cln4-a-t\nflush cln4-old\n"
        );
    }

    #[test]
    fn save_output_is_read_back() {
        let text = "create cln4-remote hash:net family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x1\n\
                    add cln4-remote 10.0.0.1\nadd cln4-remote 10.1.0.0/26\n\
                    create cln6-x hash:net family inet6 hashsize 1024 maxelem 1048576\n\
                    create cali40all-hosts-net hash:net family inet\nadd cali40all-hosts-net 1.2.3.4\n";
        assert_eq!(
            parse_save(text),
            sets(&[
                ("cln4-remote", &["10.0.0.1/32", "10.1.0.0/26"]),
                ("cln6-x", &[]),
            ])
        );
    }
}
