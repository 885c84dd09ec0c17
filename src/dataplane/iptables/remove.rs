//! Listing and removing every rule and chain the plugin owns, in both iptables variants.

use tracing::debug;

use super::*;
use crate::error::{Error, Result};

/// Whether `chain` is one of ours (by name: nobody else uses these prefixes).
pub(super) fn is_our_chain(chain: &str) -> bool {
    chain.starts_with(CHAIN_PREFIX) || chain.starts_with("CALICO-LIBNETWORK-")
}

/// The lines of an `iptables -S` listing that belong to the plugin: its chains, their rules,
/// and the rules of other chains (`FORWARD`, `PREROUTING`, ...) that jump into them.
pub fn owned_lines(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            let (Some(cmd), Some(chain)) = (words.next(), words.next()) else {
                return false;
            };
            match cmd {
                "-N" | "-A" if is_our_chain(chain) => true,
                "-A" => {
                    let rest: Vec<&str> = words.collect();
                    rest.windows(2)
                        .any(|w| matches!(w[0], "-j" | "-g") && is_our_chain(w[1]))
                }
                _ => false,
            }
        })
        .map(str::to_string)
        .collect()
}

/// The tables the plugin writes to.
pub const TABLES: [&str; 2] = ["filter", "nat"];

/// Every rule the plugin owns in one family's `table`, as `iptables -S` lines.
pub fn list_owned(family: Family, table: &str) -> Result<Vec<String>> {
    list_owned_in(backend(), family, table)
}

/// [`list_owned`] in backend `b`.
pub fn list_owned_in(b: Backend, family: Family, table: &str) -> Result<Vec<String>> {
    let out = run(family.bin_in(b), &["-t", table, "-S"])?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "list {} {table} rules: {}",
            family.bin_in(b),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(owned_lines(&String::from_utf8_lossy(&out.stdout)))
}

/// The `iptables-restore --noflush` input that deletes `owned` (lines of one table, as
/// [`list_owned`] gives them): the jumps into our chains, then the chains' rules, then the
/// chains. Empty when nothing is owned.
pub(super) fn removal(table: &str, owned: &[String]) -> String {
    let mut jumps = Vec::new();
    let mut chains = Vec::new();
    for l in owned {
        if let Some(c) = l.strip_prefix("-N ") {
            chains.push(c.trim().to_string());
        } else if let Some(rule) = l.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            if !is_our_chain(chain) {
                jumps.push(format!("-D {rule}"));
            }
        }
    }
    if jumps.is_empty() && chains.is_empty() {
        return String::new();
    }
    let mut out = format!("*{table}\n");
    for j in jumps {
        out.push_str(&j);
        out.push('\n');
    }
    // Flush all first: our chains jump to each other, and a chain still referenced cannot go.
    for c in &chains {
        out.push_str(&format!("-F {c}\n"));
    }
    for c in &chains {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str("COMMIT\n");
    out
}

/// Removes every rule and chain the plugin owns in one family (both tables, each in one
/// atomic `iptables-restore`); returns how many listed lines went. A family whose tool
/// cannot list its tables (no ip6tables, IPv6 off) has nothing of ours and is skipped.
pub fn remove_family(b: Backend, family: Family) -> Result<usize> {
    let mut removed = 0;
    for table in TABLES {
        let mut attempt = 0;
        loop {
            let owned = match list_owned_in(b, family, table) {
                Ok(o) => o,
                Err(e) if family == Family::V6 => {
                    debug!(error = %e, "ip6tables unusable: no IPv6 rules to remove");
                    return Ok(removed);
                }
                Err(e) => return Err(e),
            };
            let script = removal(table, &owned);
            if script.is_empty() {
                break;
            }
            match restore_in(b, family, &script) {
                Ok(()) => {
                    removed += owned.len();
                    break;
                }
                // Something changed the table between listing and removing: list again.
                Err(e) if attempt < 3 => {
                    debug!(error = %e, "remove rules: retrying with a fresh listing");
                    attempt += 1;
                }
                Err(e) => {
                    return Err(e.context(format!("remove {} {table} rules", family.bin_in(b))))
                }
            }
        }
    }
    Ok(removed)
}

/// Removes every rule and chain the plugin owns (both families, both tables): what
/// `calico-libnetwork firewall remove` and a stop with no endpoint left do.
/// Every variant this host has is cleaned (rules of a run with the other variant too).
pub fn remove_all() -> Result<usize> {
    let mut removed = 0;
    for b in backends() {
        removed += remove_family(b, Family::V4)? + remove_family(b, Family::V6)?;
    }
    // The sets our rules matched, now that no rule refers to them. One that will not go is
    // no reason to keep anything else: it is logged and left.
    match crate::dataplane::ipset::destroy_all() {
        Ok(sets) => debug!(sets, "ip sets destroyed"),
        Err(e) => tracing::warn!(error = %e, "remove firewall rules: ip sets left"),
    }
    Ok(removed)
}
