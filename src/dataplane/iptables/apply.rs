//! Bringing the kernel's tables to a rendering: one `iptables-restore --noflush` per
//! table, the jumps from the built-in chains, and the garbage collection of old chains.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use tracing::{debug, warn};

use super::*;
use crate::error::{Error, Result};

/// Inserts `rule` at the top of `chain` in `table` unless it is there already.
pub(super) fn ensure_jump(family: Family, table: &str, chain: &str, rule: &[&str]) -> Result<()> {
    let mut check = vec!["-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if run(family.bin(), &check)?.status.success() {
        return Ok(());
    }
    let pos = jump_position(family, table, chain)?.to_string();
    let mut insert = vec!["-t", table, "-I", chain, pos.as_str()];
    insert.extend_from_slice(rule);
    let out = run(family.bin(), &insert)?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "insert jump into {table} {chain}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Where our jump goes in `chain`: first, except in filter `FORWARD`, where it goes just
/// after Docker's jump to `DOCKER-USER` when there is one, so that the administrator's
/// rules there apply to containers on calico networks too (Docker puts that jump first,
/// and puts it back first when it restarts).
pub(super) fn jump_position(family: Family, table: &str, chain: &str) -> Result<usize> {
    if (table, chain) != ("filter", "FORWARD") {
        return Ok(1);
    }
    let out = run(family.bin(), &["-t", table, "-S", chain])?;
    let rules: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect();
    Ok(rules
        .iter()
        .position(|l| l.ends_with("-j DOCKER-USER"))
        .map_or(1, |i| i + 2))
}

pub(super) fn remove_jump(family: Family, table: &str, chain: &str, rule: &[&str]) {
    let mut del = vec!["-t", table, "-D", chain];
    del.extend_from_slice(rule);
    // Delete every copy (a jump may have been inserted twice by an old version).
    for _ in 0..8 {
        match run(family.bin(), &del) {
            Ok(o) if o.status.success() => continue,
            _ => break,
        }
    }
}

/// Our chains present in `table`.
pub(super) fn our_chains(family: Family, table: &str) -> Result<BTreeSet<String>> {
    let out = run(family.bin(), &["-t", table, "-S"])?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "list {table} chains: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|c| c.starts_with(CHAIN_PREFIX) || c.starts_with("CALICO-LIBNETWORK-"))
        .map(str::to_string)
        .collect())
}

pub(super) const JUMP_FORWARD: &[&str] = &["-j", FORWARD_CHAIN];
pub(super) const JUMP_INPUT: &[&str] = &["-j", INPUT_CHAIN];
pub(super) const JUMP_DNAT: &[&str] = &["-m", "addrtype", "--dst-type", "LOCAL", "-j", DNAT_CHAIN];
pub(super) const JUMP_POSTROUTING: &[&str] = &["-j", POSTROUTING_CHAIN];

/// The jumps into our chains that `mode` keeps in `family`: (table, chain, rule), each
/// inserted first in its chain:
/// - `INPUT` (IPv4): the loopback guard, before anything that accepts (an administrator's
///   `-i cali+ -j ACCEPT`, firewalld's zones);
/// - `FORWARD` (standalone): Docker's FORWARD policy is DROP and its rules only name its
///   bridges, so our accepts must be reached from filter FORWARD itself (an nft table of our
///   own cannot undo iptables' DROP); Docker <=27 re-inserts DOCKER-USER above us, which
///   only RETURNs, so that is harmless;
/// - `PREROUTING` and `OUTPUT`: published ports from outside and from this host;
/// - `POSTROUTING`: our masquerade decisions precede Docker's.
pub(super) fn jumps(
    family: Family,
    mode: Mode,
) -> Vec<(&'static str, &'static str, &'static [&'static str])> {
    let mut out = Vec::new();
    if family == Family::V4 {
        out.push(("filter", "INPUT", JUMP_INPUT));
    }
    if mode == Mode::Standalone {
        out.push(("filter", "FORWARD", JUMP_FORWARD));
    }
    out.push(("nat", "PREROUTING", JUMP_DNAT));
    out.push(("nat", "OUTPUT", JUMP_DNAT));
    out.push(("nat", "POSTROUTING", JUMP_POSTROUTING));
    out
}

/// How long jumps into our chains are trusted before being checked again (a firewalld
/// reload or an administrator may remove them behind our back).
pub(super) const JUMP_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// One table's rules: chain → rule bodies (what follows `-A CHAIN `), in order.
pub(super) type TableRules = BTreeMap<String, Vec<String>>;

/// The chains and rules of `iptables-restore` input as rendered by [`render`].
pub(super) fn parse_table(text: &str) -> TableRules {
    let mut t = TableRules::new();
    for l in text.lines() {
        if let Some(decl) = l.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or(decl);
            t.entry(chain.to_string()).or_default();
        } else if let Some(rest) = l.strip_prefix("-A ") {
            let (chain, body) = rest.split_once(' ').unwrap_or((rest, ""));
            t.entry(chain.to_string())
                .or_default()
                .push(body.to_string());
        }
    }
    t
}

/// If `new` is `old` with rules added (anywhere), the 1-based positions, in order, at
/// which to insert them; `None` when a rule of `old` is missing from `new`.
pub(super) fn insertions<'a>(old: &[String], new: &'a [String]) -> Option<Vec<(usize, &'a str)>> {
    let mut j = 0;
    let mut out = Vec::new();
    for (i, r) in new.iter().enumerate() {
        if j < old.len() && old[j] == *r {
            j += 1;
        } else {
            // Inserted at i+1, the chain reads new[..=i] followed by old[j..].
            out.push((i + 1, r.as_str()));
        }
    }
    (j == old.len()).then_some(out)
}

/// `iptables-restore --noflush` input turning `old` into `new` in `table`, touching only
/// what changed: new chains are created, rules only added to a chain are inserted in place,
/// a chain that lost rules is rewritten, and chains no longer wanted are deleted (last, once
/// nothing refers to them). Empty when nothing changed.
///
/// Kernel quirk: an nf_tables transaction that removes rules waits for an RCU grace period
/// (about 16 ms here), one that only adds rules does not (about 1 ms), so a new endpoint
/// costs little; removals are paid once per transaction.
pub(super) fn table_delta(table: &str, old: &TableRules, new: &TableRules) -> String {
    let mut decl: Vec<&str> = Vec::new();
    let mut cmds: Vec<String> = Vec::new();
    for (chain, rules) in new {
        match old.get(chain) {
            Some(o) if o == rules => {}
            Some(o) => match insertions(o, rules) {
                Some(ins) => {
                    for (pos, r) in ins {
                        cmds.push(format!("-I {chain} {pos} {r}"));
                    }
                }
                None => {
                    // Declaring an existing chain in --noflush mode flushes it.
                    decl.push(chain);
                    cmds.extend(rules.iter().map(|r| format!("-A {chain} {r}")));
                }
            },
            None => {
                decl.push(chain);
                cmds.extend(rules.iter().map(|r| format!("-A {chain} {r}")));
            }
        }
    }
    let stale: Vec<&String> = old.keys().filter(|c| !new.contains_key(*c)).collect();
    decl.extend(stale.iter().map(|c| c.as_str()));
    cmds.extend(stale.iter().map(|c| format!("-X {c}")));
    if decl.is_empty() && cmds.is_empty() {
        return String::new();
    }
    let mut out = format!("*{table}\n");
    for c in decl {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    for c in cmds {
        out.push_str(&c);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// What was last applied for one family.
#[derive(Default)]
pub(super) struct Applied {
    mode: Option<Mode>,
    /// Per table, the rules as applied (our chains only).
    tables: Option<BTreeMap<&'static str, TableRules>>,
    /// When the jumps into our chains were last checked and everything last rewritten.
    jumps_checked: Option<std::time::Instant>,
}

/// Applies rule sets and remembers what it applied, so that the common case costs one
/// small `iptables-restore`: a new endpoint only inserts rules, a removed one rewrites the
/// chains it was in and deletes its own. Every 30 s (on the next change) and after any
/// failure, the whole rule set is rewritten and the jumps into it are re-checked.
#[derive(Default)]
pub struct Applier {
    families: [Applied; 2],
    /// The newest state snapshot applied (see [`Applier::take_turn`]).
    applied_seq: u64,
    /// Stopping: nothing is applied any more.
    closed: bool,
    /// IP sets created for the rules (both families), so each costs one `ipset` run.
    sets_made: BTreeSet<String>,
    /// Per family, the sets the rules in the kernel may match: those of the last apply
    /// (and, while one runs or after it failed, those of the one being applied too).
    sets_in_use: [BTreeSet<String>; 2],
}

impl Applier {
    /// Whether the snapshot numbered `seq` may be applied: not when a newer one already was
    /// (it holds every change this one does), nor once closed. Records `seq` when it may.
    pub fn take_turn(&mut self, seq: u64) -> bool {
        if self.closed || seq <= self.applied_seq {
            return false;
        }
        self.applied_seq = seq;
        true
    }

    /// Applies nothing from now on (the plugin is stopping and removes its rules).
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Makes the next apply of each family a full rewrite with the jumps re-checked.
    pub fn invalidate(&mut self) {
        for slot in &mut self.families {
            slot.jumps_checked = None;
        }
        self.sets_made.clear();
    }

    /// Whether the rules last applied in `family` are all in the kernel: each chain with
    /// as many rules as applied, and the jumps into them. True when nothing was applied.
    pub fn verify(&self, family: Family) -> Result<bool> {
        let slot = &self.families[family as usize];
        let (Some(tables), Some(mode)) = (&slot.tables, slot.mode) else {
            return Ok(true);
        };
        for (table, want) in tables {
            let out = run(family.bin(), &["-t", table, "-S"])?;
            if !out.status.success() {
                return Err(Error::msg(format!(
                    "list {} {table} rules: {}",
                    family.bin(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let listing = String::from_utf8_lossy(&out.stdout);
            let mut live: BTreeMap<&str, usize> = BTreeMap::new();
            for l in listing.lines() {
                let mut w = l.split_whitespace();
                match (w.next(), w.next()) {
                    (Some("-N"), Some(c)) => {
                        live.entry(c).or_default();
                    }
                    (Some("-A"), Some(c)) => *live.entry(c).or_default() += 1,
                    _ => {}
                }
            }
            if want
                .iter()
                .any(|(chain, rules)| live.get(chain.as_str()) != Some(&rules.len()))
            {
                return Ok(false);
            }
        }
        for (table, chain, rule) in jumps(family, mode) {
            let mut check = vec!["-t", table, "-C", chain];
            check.extend_from_slice(rule);
            if !run(family.bin(), &check)?.status.success() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The sets the rules in the kernel may match (both families): while the caller holds
    /// the applier, no other set is referenced or created by it.
    pub fn sets_in_use(&self) -> BTreeSet<String> {
        self.sets_in_use.iter().flatten().cloned().collect()
    }

    /// Forgets that `name` was made (it was destroyed): an apply that matches it again
    /// creates it first.
    pub fn forget_set(&mut self, name: &str) {
        self.sets_made.remove(name);
    }

    /// Creates the sets among `sets` not made yet (`-exist`: one there already is kept with
    /// its members, which the members keeper fills).
    fn ensure_sets(&mut self, sets: &BTreeSet<String>) -> Result<()> {
        let script: String = sets
            .iter()
            .filter(|s| !self.sets_made.contains(*s))
            .map(|s| crate::dataplane::ipset::create_line(s))
            .collect();
        crate::dataplane::ipset::restore(&script)
            .map_err(|e| e.context("apply firewall rules: create the ip sets they match"))?;
        self.sets_made.extend(sets.iter().cloned());
        Ok(())
    }

    /// Applies the rules of one family (blocking: run it off the async workers).
    pub fn apply(&mut self, state: &RuleState, family: Family, mode: Mode) -> Result<()> {
        let r = render(state, family, mode);
        // Until this apply is done, the kernel may hold the old rules or the new.
        self.sets_in_use[family as usize].extend(r.sets.iter().cloned());
        if self.families[family as usize].jumps_checked.is_none() {
            // A full rewrite: check every set again (one may have been destroyed).
            self.sets_made.clear();
        }
        self.ensure_sets(&r.sets)?;
        let slot = &mut self.families[family as usize];
        let mut wanted: BTreeMap<&'static str, TableRules> = BTreeMap::new();
        wanted.insert("filter", parse_table(&r.filter));
        wanted.insert("nat", parse_table(&r.nat));
        let fresh = slot
            .jumps_checked
            .is_some_and(|t| t.elapsed() < JUMP_RECHECK);
        if let (true, Some(old)) = (fresh && slot.mode == Some(mode), &slot.tables) {
            let delta: String = ["filter", "nat"]
                .iter()
                .map(|t| table_delta(t, &old[t], &wanted[t]))
                .collect();
            if delta.is_empty() {
                return Ok(());
            }
            match restore(family, &delta) {
                Ok(()) => {
                    slot.tables = Some(wanted);
                    self.sets_in_use[family as usize] = r.sets;
                    debug!(?family, endpoints = state.endpoints.len(), "rules updated");
                    return Ok(());
                }
                // Our chains changed behind our back (an administrator, a firewall reload):
                // rewrite everything below.
                Err(e) => warn!(error = %e, "incremental rule update failed, rewriting all rules"),
            }
        }
        if slot.jumps_checked.is_some() {
            // The incremental path failed or was not taken: sets are checked again too.
            self.sets_made.clear();
            self.ensure_sets(&r.sets)?;
        }
        let slot = &mut self.families[family as usize];
        let known = match slot.tables.take() {
            Some(t) if slot.mode == Some(mode) => Some(t),
            _ => None,
        };
        *slot = Applied::default();
        if family == Family::V4 {
            // Routed containers need forwarding; Docker turns it on only when it manages a
            // bridge.
            let _ = crate::dataplane::sysctl::write("net/ipv4/ip_forward", "1");
        }
        // Both tables in one iptables-restore: one process, each table atomic.
        restore(family, &format!("{}{}", r.filter, r.nat))?;
        // Each jump goes first in its chain (see `jumps`); felix mode keeps no FORWARD one.
        for (table, chain, rule) in jumps(family, mode) {
            ensure_jump(family, table, chain, rule)?;
        }
        if mode != Mode::Standalone {
            remove_jump(family, "filter", "FORWARD", JUMP_FORWARD);
        }
        // Chains of endpoints and profiles that went away. Without a previous rule set (first
        // apply, a mode change, a failure), list what is there: rules of an earlier run go too.
        let known: BTreeMap<&str, BTreeSet<String>> = match known {
            Some(t) => t
                .into_iter()
                .map(|(k, v)| (k, v.into_keys().collect()))
                .collect(),
            None => {
                let mut k = BTreeMap::new();
                for table in ["filter", "nat"] {
                    k.insert(table, our_chains(family, table)?);
                }
                k
            }
        };
        for (table, had) in &known {
            let want = r.chains.get(table);
            let stale: Vec<String> = had
                .iter()
                .filter(|c| !want.is_some_and(|w| w.contains(*c)))
                .cloned()
                .collect();
            delete_chains(family, table, &stale);
        }
        slot.tables = Some(wanted);
        slot.mode = Some(mode);
        slot.jumps_checked = Some(std::time::Instant::now());
        self.sets_in_use[family as usize] = r.sets;
        debug!(
            ?family,
            ?mode,
            endpoints = state.endpoints.len(),
            "rules applied"
        );
        Ok(())
    }
}

/// Applies the rules of one family once, with no memory of earlier applies.
pub fn apply(state: &RuleState, family: Family, mode: Mode) -> Result<()> {
    Applier::default().apply(state, family, mode)
}

pub(super) fn delete_chains(family: Family, table: &str, chains: &[String]) {
    for c in chains {
        let _ = run(family.bin(), &["-t", table, "-F", c]);
    }
    for c in chains {
        match run(family.bin(), &["-t", table, "-X", c]) {
            Ok(o) if o.status.success() => {}
            _ => warn!(table, chain = %c, "delete stale chain failed"),
        }
    }
}

/// Felix is taken to be in charge when its FORWARD hook (`-j cali-FORWARD`, which Felix's
/// iptables dataplane inserts first in `filter FORWARD`) or its nftables table (`ip
/// calico`, Felix's nftables dataplane) is present.
pub fn felix_present() -> bool {
    // In either iptables variant: Felix may use the other one than Docker.
    let ipt = backends().into_iter().any(|b| {
        run(Family::V4.bin_in(b), &["-t", "filter", "-S", "FORWARD"])
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("-j cali-FORWARD"))
            .unwrap_or(false)
    });
    let mut nft = Command::new("nft");
    nft.args(["list", "table", "ip", "calico"]);
    let nft = output_within(nft, None)
        .map(|o| o.status.success())
        .unwrap_or(false);
    ipt || nft
}
