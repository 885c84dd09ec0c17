//! Isolation across hosts: the other hosts' members of each profile, kept in kernel IP sets
//! (see [`crate::dataplane::ipset`]) that the standalone rules match.
//!
//! The route keeper's watch of every WorkloadEndpoint of the cluster feeds [`run`] (one
//! watch, one list, for both); those of other hosts are grouped by container (their host and
//! sandbox annotation: a container on several networks is one peer, as on this host, see
//! `render`), and each group's addresses go into the set of every profile of the group and
//! into the set of all remote workloads. [`MemberIndex`] keeps that change by change, with a
//! count per address, so a change costs the work of its own container. A change is one
//! small `ipset` transaction of adds and deletes; the first list, a resync of the watch, a
//! failed write and a kernel check (every 10 s) that finds the sets changed behind our back
//! replace every set whole (filled aside, then swapped in).
//!
//! Runs with the route keeper, in standalone mode (the rules that match the sets are ours).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::routes::CHECK_INTERVAL;
use crate::dataplane::ipset::{self, Sets};
use crate::dataplane::iptables::Family;
use crate::datastore::resources;
use crate::datastore::Event;
use crate::error::{Error, Result};
use crate::model::libnetwork::SANDBOX_ANNOTATION;
use crate::model::resources::WorkloadEndpointSpec;
use crate::model::WorkloadEndpoint;

/// What isolation needs of one WorkloadEndpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// `spec.node`.
    pub node: String,
    /// The container sandbox it is joined to (our annotation; empty when not known).
    pub sandbox: String,
    /// `spec.profiles`.
    pub profiles: Vec<String>,
    /// `spec.ipNetworks` that parse, each as its host address (`/32`, `/128`).
    pub nets: Vec<IpNet>,
}

impl Member {
    /// What isolation needs of `wep`.
    pub fn from_wep(wep: &WorkloadEndpoint) -> Member {
        Member {
            node: wep.spec.node.clone(),
            sandbox: wep
                .metadata
                .annotations
                .get(SANDBOX_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
            profiles: wep.spec.profiles.clone(),
            // Each a host address, read as the route keeper reads it: a record with a wide
            // prefix must not admit a range, nor one ipset refuses (`/0`) stop every write.
            nets: wep
                .spec
                .ip_networks
                .iter()
                .filter_map(|n| super::routes::state::workload_address(n))
                .collect(),
        }
    }
}

/// One container of another host: its endpoints' profiles and addresses.
type Group<'a> = (BTreeSet<&'a str>, BTreeSet<IpNet>);

/// The sets host `local` needs, computed from scratch (the reference [`MemberIndex`] keeps
/// up to date change by change, and is tested against): per profile, the addresses of the other hosts' containers
/// with an endpoint in it; and every address of the other hosts' containers. Both remote
/// sets are always there (the rules match them even when empty).
pub fn desired_sets<'a>(local: &str, members: impl IntoIterator<Item = &'a Member>) -> Sets {
    let mut sets = Sets::new();
    // A container on several networks: each of its addresses is a member of every profile
    // of its endpoints (Docker's reach, as on this host).
    let mut groups: BTreeMap<(&str, &str), Group<'a>> = BTreeMap::new();
    let mut alone: Vec<&'a Member> = Vec::new();
    for m in members {
        if m.node == local {
            continue;
        }
        if m.sandbox.is_empty() {
            alone.push(m);
            continue;
        }
        let g = groups.entry((&m.node, &m.sandbox)).or_default();
        g.0.extend(m.profiles.iter().map(String::as_str));
        g.1.extend(m.nets.iter().copied());
    }
    // By profile first, named at the end: one name per profile, not one per member.
    let mut by_profile: BTreeMap<&str, BTreeSet<IpNet>> = BTreeMap::new();
    let mut remote: BTreeSet<IpNet> = BTreeSet::new();
    let mut add = |profiles: Vec<&'a str>, nets: &BTreeSet<IpNet>| {
        remote.extend(nets.iter().copied());
        for p in profiles {
            by_profile
                .entry(p)
                .or_default()
                .extend(nets.iter().copied());
        }
    };
    for (profiles, nets) in groups.values() {
        add(profiles.iter().copied().collect(), nets);
    }
    for m in alone {
        let nets: BTreeSet<IpNet> = m.nets.iter().copied().collect();
        add(m.profiles.iter().map(String::as_str).collect(), &nets);
    }
    for f in [Family::V4, Family::V6] {
        let of_family = |nets: &BTreeSet<IpNet>| -> BTreeSet<IpNet> {
            nets.iter()
                .filter(|n| ipset::family_of_net(n) == f)
                .copied()
                .collect()
        };
        sets.insert(ipset::remote_set(f), of_family(&remote));
        for (p, nets) in &by_profile {
            let members = of_family(nets);
            if !members.is_empty() {
                sets.insert(ipset::profile_set(p, f), members);
            }
        }
    }
    sets
}

/// A container of another host: its node and sandbox, or, for an endpoint joined to no
/// known sandbox, its node and its record's key (a peer of its own).
type GroupKey = (String, String);

/// The other hosts' members as the sets hold them, kept up to date one WorkloadEndpoint at a
/// time: a change costs the work of its own container, not of the whole fleet.
#[derive(Debug, Default)]
pub struct MemberIndex {
    local: String,
    /// Other hosts' endpoints, by record key.
    members: HashMap<String, Member>,
    /// Record keys by container (sandbox), for containers with a sandbox.
    groups: HashMap<GroupKey, BTreeSet<String>>,
    /// Per set, how many containers put each address in it.
    counts: HashMap<String, HashMap<IpNet, u32>>,
}

/// One change to a set: the address added (`true`) or removed.
pub type SetChange = (String, IpNet, bool);

impl MemberIndex {
    /// An empty index for host `local` (whose own endpoints are never members here).
    pub fn new(local: &str) -> Self {
        MemberIndex {
            local: local.to_string(),
            ..Default::default()
        }
    }

    fn group_key(key: &str, m: &Member) -> GroupKey {
        if m.sandbox.is_empty() {
            (m.node.clone(), format!("\0{key}"))
        } else {
            (m.node.clone(), m.sandbox.clone())
        }
    }

    /// What container `g` puts in the sets.
    fn contribution(&self, g: &GroupKey) -> BTreeSet<(String, IpNet)> {
        let mut out = BTreeSet::new();
        let alone: Vec<&Member>;
        let of_group: Box<dyn Iterator<Item = &Member>> = match g.1.strip_prefix('\0') {
            // An endpoint of its own is not kept in `groups` (its key would be stored
            // twice more, for each of a fleet's thousands of endpoints).
            Some(key) => {
                // (The record under that key may now belong to a sandbox: then not here.)
                alone = self
                    .members
                    .get(key)
                    .filter(|m| m.sandbox.is_empty() && m.node == g.0)
                    .into_iter()
                    .collect();
                Box::new(alone.into_iter())
            }
            None => match self.groups.get(g) {
                Some(keys) => Box::new(keys.iter().filter_map(|k| self.members.get(k))),
                None => return out,
            },
        };
        let mut profiles: BTreeSet<&str> = BTreeSet::new();
        let mut nets: BTreeSet<IpNet> = BTreeSet::new();
        for m in of_group {
            profiles.extend(m.profiles.iter().map(String::as_str));
            nets.extend(m.nets.iter().copied());
        }
        for n in nets {
            let f = ipset::family_of_net(&n);
            out.insert((ipset::remote_set(f), n));
            for p in &profiles {
                out.insert((ipset::profile_set(p, f), n));
            }
        }
        out
    }

    /// Takes `member` (`None`: gone) under record `key`; returns the addresses that entered
    /// or left a set.
    pub fn update(&mut self, key: &str, member: Option<Member>) -> Vec<SetChange> {
        let member = member.filter(|m| m.node != self.local);
        if self.members.get(key) == member.as_ref() {
            return Vec::new();
        }
        let old_g = self.members.get(key).map(|m| Self::group_key(key, m));
        let new_g = member.as_ref().map(|m| Self::group_key(key, m));
        let affected: BTreeSet<GroupKey> = old_g.iter().chain(new_g.iter()).cloned().collect();
        let before: Vec<_> = affected.iter().map(|g| self.contribution(g)).collect();
        if let Some(g) = old_g.as_ref().filter(|g| !g.1.starts_with('\0')) {
            if let Some(keys) = self.groups.get_mut(g) {
                keys.remove(key);
                if keys.is_empty() {
                    self.groups.remove(g);
                }
            }
        }
        self.members.remove(key);
        if let (Some(g), Some(m)) = (new_g, member) {
            if !g.1.starts_with('\0') {
                self.groups.entry(g).or_default().insert(key.to_string());
            }
            self.members.insert(key.to_string(), m);
        }
        let after: Vec<_> = affected.iter().map(|g| self.contribution(g)).collect();
        // Net count changes first, so an address moving between containers is no change.
        let mut delta: BTreeMap<(String, IpNet), i64> = BTreeMap::new();
        for (b, a) in before.iter().zip(&after) {
            for pair in b.difference(a) {
                *delta.entry(pair.clone()).or_default() -= 1;
            }
            for pair in a.difference(b) {
                *delta.entry(pair.clone()).or_default() += 1;
            }
        }
        let mut changes = Vec::new();
        for ((set, net), d) in delta {
            if d == 0 {
                continue;
            }
            let counts = self.counts.entry(set.clone()).or_default();
            let was = counts.get(&net).copied().unwrap_or(0);
            let now = (i64::from(was) + d).max(0) as u32;
            if now == 0 {
                counts.remove(&net);
            } else {
                counts.insert(net, now);
            }
            if counts.is_empty() {
                self.counts.remove(&set);
            }
            if (was == 0) != (now == 0) {
                changes.push((set, net, now > 0));
            }
        }
        changes
    }

    /// Every set with its members; both remote sets always (the rules match them even when
    /// empty).
    pub fn sets(&self) -> Sets {
        let mut sets: Sets = self
            .counts
            .iter()
            .map(|(name, m)| (name.clone(), m.keys().copied().collect()))
            .collect();
        for f in [Family::V4, Family::V6] {
            sets.entry(ipset::remote_set(f)).or_default();
        }
        sets
    }

    /// Endpoints of other hosts known.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no endpoint of another host is known.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// `ipset restore` input for `changes`: each set touched is created first if missing
/// (`-exist`: a no-op when it is there), then its adds and deletes.
pub fn change_script(changes: &[SetChange]) -> String {
    let touched: BTreeSet<&str> = changes.iter().map(|(s, _, _)| s.as_str()).collect();
    let mut out: String = touched.iter().map(|s| ipset::create_line(s)).collect();
    for (set, net, added) in changes {
        let verb = if *added { "add" } else { "del" };
        let m = if net.prefix_len() == net.max_prefix_len() {
            net.addr().to_string()
        } else {
            net.to_string()
        };
        out.push_str(&format!("{verb} {set} {m}\n"));
    }
    out
}

/// Whether the kernel's sets `live` hold what the index says: each of its sets with exactly
/// its members, and every other set of ours empty (the rules' own, made before a member).
fn kernel_matches(live: &Sets, want: &Sets) -> bool {
    want.iter()
        .all(|(name, m)| live.get(name).map_or(m.is_empty(), |l| l == m))
        && live
            .iter()
            .all(|(name, have)| want.contains_key(name) || have.is_empty())
}

/// Writes `want` whole (each set filled aside and swapped in) over the kernel's `live`
/// sets. Blocking.
fn replace_sets(want: &Sets, live: &Sets) -> Result<()> {
    let present: BTreeSet<String> = live.keys().cloned().collect();
    ipset::restore(&ipset::replace_script(want, &present))
}

/// The firewall rules' applier, asked which sets its rules match (see [`run`]).
pub type RulesApplier = Arc<std::sync::Mutex<crate::dataplane::iptables::Applier>>;

/// Destroys the sets of ours among `live` that hold no member (`want` has none of them: a
/// kernel check left them empty) and that no rule matches: a network's sets once its last
/// endpoint anywhere is gone and its rules here with it. Holds the applier meanwhile, so
/// no apply creates or matches one of them in between. A set the kernel still finds in use
/// (iptables-nft drops a deleted rule's reference a moment later) is tried again at the next
/// check. Returns the sets destroyed. Blocking.
fn destroy_unused(live: &Sets, want: &Sets, rules: &RulesApplier) -> Vec<String> {
    let mut applier = rules.lock().unwrap_or_else(|p| p.into_inner());
    let in_use = applier.sets_in_use();
    let mut gone = Vec::new();
    for name in live.keys() {
        if want.contains_key(name) || in_use.contains(name) {
            continue;
        }
        match ipset::restore(&format!("destroy {name}\n")) {
            Ok(()) => {
                applier.forget_set(name);
                gone.push(name.clone());
            }
            Err(e) => {
                tracing::debug!(set = %name, error = %e, "members: unused set not destroyed yet")
            }
        }
    }
    gone
}

/// What the route keeper passes on of the WorkloadEndpoints it watches.
pub struct Feed {
    /// From a fresh list (the sets are then written whole).
    pub resynced: bool,
    /// The changes, as watched.
    pub events: Vec<Event>,
}

/// Keeps the sets from the WorkloadEndpoint changes the route keeper passes on (one watch
/// serves both), until the feed ends or `stopped` holds `true`. Nothing is written before
/// the first fresh list.
///
/// With `rules` (the firewall rules' applier), at each kernel check the sets of ours that
/// hold no member and that no rule matches are destroyed, under the applier's lock.
pub async fn run(
    mut feed: tokio::sync::mpsc::UnboundedReceiver<Feed>,
    local: String,
    stopped: Arc<tokio::sync::Mutex<bool>>,
    rules: Option<RulesApplier>,
) {
    if !ipset::available() {
        // Said once at start (`Driver::with_dataplane`); the rules then match no set.
        return;
    }
    let mut index = MemberIndex::new(&local);
    let mut listed = false;
    // Whether the kernel's sets are known to be what the index said after the last write.
    let mut in_step = false;
    let mut pending: Vec<SetChange> = Vec::new();
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut delay = Duration::from_millis(200);
    let mut again = false;
    loop {
        let mut check = false;
        if !std::mem::take(&mut again) {
            tokio::select! {
                msg = feed.recv() => {
                    let Some(first) = msg else { return };
                    // Everything already queued: one transaction for a burst.
                    let mut batch = vec![first];
                    while let Ok(more) = feed.try_recv() {
                        batch.push(more);
                    }
                    for f in batch {
                        if f.resynced {
                            listed = true;
                            // A fresh list: written whole, so anything missed is mended.
                            in_step = false;
                        }
                        pending.extend(apply_events(&mut index, f.events));
                    }
                }
                _ = tick.tick() => check = true,
            }
        }
        if !listed || (in_step && pending.is_empty() && !check) {
            continue;
        }
        let started = std::time::Instant::now();
        let gate = stopped.lock().await;
        if *gate {
            return;
        }
        let (whole, job) = if in_step && !check {
            (false, Job::Changes(std::mem::take(&mut pending)))
        } else {
            pending.clear();
            (!in_step, Job::Check(index.sets(), !in_step, rules.clone()))
        };
        let res = tokio::task::spawn_blocking(move || job.run())
            .await
            .map_err(|e| Error::msg(format!("update ip sets: {e}")))
            .and_then(|r| r);
        drop(gate);
        match res {
            Ok(rewrote) => {
                in_step = true;
                delay = Duration::from_millis(200);
                if whole || rewrote {
                    // A fresh list of a fleet's endpoints passed through here (megabytes,
                    // freed by now): give the memory back rather than keep it as free heap.
                    crate::dataplane::release_free_memory();
                    let sets = index.sets();
                    tracing::info!(
                        sets = sets.len(),
                        members = sets.values().map(BTreeSet::len).sum::<usize>(),
                        endpoints = index.len(),
                        took_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "ip sets of other hosts' members written"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "members: update the ip sets");
                in_step = false;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(CHECK_INTERVAL);
                // Again at once, whole (nothing is known of the kernel's sets now).
                again = true;
            }
        }
    }
}

/// One write, run off the async workers.
enum Job {
    /// Adds and deletes.
    Changes(Vec<SetChange>),
    /// The sets compared with the kernel and rewritten whole when they differ (or always,
    /// with `true`); then, with the rules' applier, the unused ones destroyed.
    Check(Sets, bool, Option<RulesApplier>),
}

impl Job {
    /// Returns whether the sets were rewritten whole because the kernel's differed.
    fn run(self) -> Result<bool> {
        match self {
            Job::Changes(changes) => ipset::restore(&change_script(&changes)).map(|()| false),
            Job::Check(want, whole, rules) => {
                let live = ipset::list()?;
                let rewrote = if whole {
                    replace_sets(&want, &live)?;
                    false
                } else if kernel_matches(&live, &want) {
                    false
                } else {
                    tracing::warn!(
                        "ip sets of the plugin were changed behind its back: rewriting them"
                    );
                    replace_sets(&want, &live)?;
                    true
                };
                // Every set of ours not in `want` is empty now (flushed by the rewrite, or
                // found empty by the comparison).
                if let Some(rules) = rules {
                    let gone = destroy_unused(&live, &want, &rules);
                    if !gone.is_empty() {
                        tracing::info!(sets = ?gone, "ip sets no member or rule uses destroyed");
                    }
                }
                Ok(rewrote)
            }
        }
    }
}

/// Takes watched WorkloadEndpoint changes into the index (a record that does not decode is
/// logged and counts as gone); the set changes they make.
fn apply_events(index: &mut MemberIndex, events: Vec<Event>) -> Vec<SetChange> {
    let mut changes = Vec::new();
    for ev in events {
        match ev {
            Event::Put(kv) => match resources::decode::<WorkloadEndpointSpec>(&kv) {
                Ok(w) => changes.extend(index.update(&kv.key, Some(Member::from_wep(&w)))),
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "members: ignoring a WorkloadEndpoint");
                    changes.extend(index.update(&kv.key, None));
                }
            },
            Event::Delete { key, .. } => changes.extend(index.update(&key, None)),
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(node: &str, sandbox: &str, profiles: &[&str], nets: &[&str]) -> Member {
        Member {
            node: node.into(),
            sandbox: sandbox.into(),
            profiles: profiles.iter().map(|s| s.to_string()).collect(),
            nets: nets.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    fn set(members: &[&str]) -> BTreeSet<IpNet> {
        members.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn other_hosts_members_by_profile_and_family() {
        let ms = [
            m("a", "", &["red"], &["10.0.0.1/32"]),
            m("b", "", &["red"], &["10.0.1.1/32", "fd00::1/128"]),
            m("b", "", &["blue"], &["10.0.1.2/32"]),
            // This host's own: never in a set (its rules name them one by one).
            m("me", "", &["red"], &["10.0.2.1/32"]),
        ];
        let s = desired_sets("me", &ms);
        let red4 = ipset::profile_set("red", Family::V4);
        let red6 = ipset::profile_set("red", Family::V6);
        let blue4 = ipset::profile_set("blue", Family::V4);
        assert_eq!(s[&red4], set(&["10.0.0.1/32", "10.0.1.1/32"]));
        assert_eq!(s[&red6], set(&["fd00::1/128"]));
        assert_eq!(s[&blue4], set(&["10.0.1.2/32"]));
        assert_eq!(
            s[&ipset::remote_set(Family::V4)],
            set(&["10.0.0.1/32", "10.0.1.1/32", "10.0.1.2/32"])
        );
        assert_eq!(s[&ipset::remote_set(Family::V6)], set(&["fd00::1/128"]));
        assert_eq!(s.len(), 5, "{s:?}");
    }

    #[test]
    fn a_container_on_two_networks_is_a_member_of_both() {
        let ms = [
            m("b", "/var/run/docker/netns/x", &["red"], &["10.0.1.1/32"]),
            m("b", "/var/run/docker/netns/x", &["blue"], &["10.0.1.2/32"]),
            // Same sandbox path on another host: another container.
            m("c", "/var/run/docker/netns/x", &["green"], &["10.0.3.1/32"]),
        ];
        let s = desired_sets("me", &ms);
        let both = set(&["10.0.1.1/32", "10.0.1.2/32"]);
        assert_eq!(s[&ipset::profile_set("red", Family::V4)], both);
        assert_eq!(s[&ipset::profile_set("blue", Family::V4)], both);
        assert_eq!(
            s[&ipset::profile_set("green", Family::V4)],
            set(&["10.0.3.1/32"])
        );
    }

    #[test]
    fn nothing_remote_leaves_two_empty_sets() {
        let s = desired_sets("me", &[m("me", "", &["red"], &["10.0.0.1/32"])]);
        assert_eq!(s.len(), 2);
        assert!(s.values().all(BTreeSet::is_empty));
    }

    /// The index, change by change, always holds what a computation from scratch gives,
    /// and its changes turn the previous sets into the next.
    #[test]
    fn index_follows_every_change_like_a_fresh_computation() {
        let steps: Vec<(&str, Option<Member>)> = vec![
            ("k1", Some(m("b", "", &["red"], &["10.0.1.1/32"]))),
            ("k2", Some(m("b", "/sb/x", &["red"], &["10.0.1.2/32"]))),
            // Same container joins blue: both addresses in blue too.
            (
                "k3",
                Some(m("b", "/sb/x", &["blue"], &["10.0.1.3/32", "fd00::3/128"])),
            ),
            ("k4", Some(m("me", "", &["red"], &["10.0.2.1/32"]))),
            ("k5", Some(m("c", "", &["blue"], &["10.0.3.1/32"]))),
            // k1 changes profile, then k3 leaves the container (disconnect), then k2 goes.
            ("k1", Some(m("b", "", &["blue"], &["10.0.1.1/32"]))),
            ("k3", None),
            ("k2", None),
            // k5 joins a sandbox (its Join): another container key, same members: no change.
            ("k5", Some(m("c", "/sb/y", &["blue"], &["10.0.3.1/32"]))),
            ("k1", None),
            ("k5", None),
        ];
        let mut index = MemberIndex::new("me");
        let mut view: BTreeMap<&str, Member> = BTreeMap::new();
        let mut prev = index.sets();
        for (i, (key, member)) in steps.into_iter().enumerate() {
            match &member {
                Some(m) => view.insert(key, m.clone()),
                None => view.remove(key),
            };
            let changes = index.update(key, member);
            let now = index.sets();
            let mut want = desired_sets("me", view.values());
            want.retain(|_, m| !m.is_empty());
            let mut got = now.clone();
            got.retain(|_, m| !m.is_empty());
            assert_eq!(got, want, "step {i} ({key})");
            // Applying the changes to the previous sets gives the new ones.
            let mut applied = prev.clone();
            for (set, net, added) in &changes {
                let s = applied.entry(set.clone()).or_default();
                assert_eq!(s.contains(net), !added, "step {i}: {set} {net} {added}");
                if *added {
                    s.insert(*net);
                } else {
                    s.remove(net);
                }
            }
            applied.retain(|_, m| !m.is_empty());
            assert_eq!(applied, got, "step {i} ({key}): changes {changes:?}");
            if i == 8 {
                assert!(
                    changes.is_empty(),
                    "an address moving containers: {changes:?}"
                );
            }
            prev = now;
        }
        assert!(index.is_empty());
        assert!(index.sets().values().all(BTreeSet::is_empty));
    }

    #[test]
    fn a_record_admits_only_its_host_addresses() {
        let mut w = WorkloadEndpoint::namespaced(
            "libnetwork",
            "n-libnetwork-libnetwork-e",
            WorkloadEndpointSpec {
                node: "n".into(),
                profiles: vec!["red".into()],
                ip_networks: vec![
                    "0.0.0.0/0".into(),
                    "10.0.1.5/26".into(),
                    "10.0.2.7".into(),
                    "fd00::1/64".into(),
                    "bogus".into(),
                ],
                ..Default::default()
            },
        );
        w.metadata
            .annotations
            .insert(SANDBOX_ANNOTATION.into(), "/sb/1".into());
        let m = Member::from_wep(&w);
        let nets: Vec<String> = m.nets.iter().map(ToString::to_string).collect();
        assert_eq!(
            nets,
            ["0.0.0.0/32", "10.0.1.5/32", "10.0.2.7/32", "fd00::1/128"]
        );
        assert_eq!(m.sandbox, "/sb/1");
    }

    #[test]
    fn change_script_creates_each_set_touched_first() {
        let changes = vec![
            ("cln4-a".to_string(), "10.0.0.1/32".parse().unwrap(), true),
            ("cln4-a".to_string(), "10.0.0.2/32".parse().unwrap(), false),
        ];
        assert_eq!(
            change_script(&changes),
            "create cln4-a hash:net family inet maxelem 1048576\nadd cln4-a 10.0.0.1\ndel cln4-a 10.0.0.2\n"
        );
    }

    #[test]
    fn kernel_check_tolerates_only_empty_extra_sets() {
        let applied: Sets = [("cln4-a".to_string(), set(&["10.0.0.1/32"]))].into();
        let mut live = applied.clone();
        live.insert("cln4-rules-own".into(), BTreeSet::new());
        assert!(kernel_matches(&live, &applied));
        live.insert("cln4-extra".into(), set(&["10.9.9.9/32"]));
        assert!(!kernel_matches(&live, &applied));
        let flushed: Sets = [("cln4-a".to_string(), BTreeSet::new())].into();
        assert!(!kernel_matches(&flushed, &applied));
    }
}
