//! Isolation across hosts: the other hosts' members of each profile, kept in kernel IP sets
//! (see [`crate::dataplane::ipset`]) that the standalone rules match.
//!
//! Every WorkloadEndpoint of the cluster is watched ([`Watcher`]); those of other hosts are
//! grouped by container (their host and sandbox annotation: a container on several networks
//! is one peer, as on this host, see `render`), and each group's addresses go into the set
//! of every profile of the group and into the set of all remote workloads. A change is one
//! small `ipset` transaction of adds and deletes; the first list, a resync of the watch, a
//! failed write and a kernel check that finds the sets changed behind our back replace every
//! set whole (filled aside, then swapped in).
//!
//! Runs where the route keeper runs (standalone mode, routes between hosts on).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::mpsc;

use super::routes::{CHECK_INTERVAL, RESYNC_INTERVAL};
use super::Driver;
use crate::dataplane::ipset::{self, Sets};
use crate::dataplane::iptables::Family;
use crate::datastore::resources;
use crate::datastore::watch::{Update, Watcher};
use crate::datastore::Event;
use crate::error::{Error, Result};
use crate::model::libnetwork::SANDBOX_ANNOTATION;
use crate::model::resources::WorkloadEndpointSpec;
use crate::model::{keys, WorkloadEndpoint};

/// What isolation needs of one WorkloadEndpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// `spec.node`.
    pub node: String,
    /// The container sandbox it is joined to (our annotation; empty when not known).
    pub sandbox: String,
    /// `spec.profiles`.
    pub profiles: Vec<String>,
    /// `spec.ipNetworks` that parse.
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
            nets: wep
                .spec
                .ip_networks
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
        }
    }
}

/// One container of another host: its endpoints' profiles and addresses.
type Group<'a> = (BTreeSet<&'a str>, BTreeSet<IpNet>);

/// The sets host `local` needs: per profile, the addresses of the other hosts' containers
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

/// Whether the kernel's sets `live` hold what was `applied`: each applied set with exactly
/// its members, and every other set of ours empty (the rules' own, made before a member).
fn kernel_matches(live: &Sets, applied: &Sets) -> bool {
    applied
        .iter()
        .all(|(name, want)| live.get(name) == Some(want))
        && live
            .iter()
            .all(|(name, have)| applied.contains_key(name) || have.is_empty())
}

/// One write: from `applied` to `desired` by a delta, or (`applied` unknown) whole sets
/// swapped in. With `check`, the kernel is read first and a difference from `applied`
/// makes it a whole replacement. Returns whether it was one. Blocking.
fn write_sets(applied: Option<Sets>, desired: &Sets, check: bool) -> Result<bool> {
    let applied = match applied {
        Some(a) if check => {
            let live = ipset::list()?;
            if kernel_matches(&live, &a) {
                Some(a)
            } else {
                tracing::warn!(
                    "ip sets of the plugin were changed behind its back: rewriting them"
                );
                None
            }
        }
        other => other,
    };
    match applied {
        Some(old) => ipset::restore(&ipset::delta_script(&old, desired)).map(|()| false),
        None => {
            let present: BTreeSet<String> = ipset::list()?.into_keys().collect();
            ipset::restore(&ipset::replace_script(desired, &present)).map(|()| true)
        }
    }
}

impl Driver {
    /// Keeps the sets of other hosts' profile members in the background (called where the
    /// route keeper starts). Returns at once.
    pub(crate) fn keep_members_in_background(self: &Arc<Self>) {
        if !ipset::available() {
            tracing::error!(
                "the ipset command is not installed: containers on other hosts cannot reach \
                 this host's (install Debian's ipset package)"
            );
        }
        let me = self.clone();
        super::supervise("members", move || {
            let driver = me.clone();
            async move { driver.keep_members().await }
        });
    }

    async fn keep_members(self: Arc<Self>) {
        let prefix = keys::resource_prefix(keys::PLURAL_WORKLOAD_ENDPOINTS, None);
        let (tx, mut rx) = mpsc::channel::<Result<Update>>(64);
        let mut w = Watcher::new(self.store.clone(), &prefix).resync_every(RESYNC_INTERVAL);
        tokio::spawn(async move {
            loop {
                let update = w.next().await;
                if tx.send(update).await.is_err() {
                    return;
                }
            }
        });
        let local = self.settings.nodename.clone();
        let mut view: HashMap<String, Member> = HashMap::new();
        let mut listed = false;
        let mut applied: Option<Sets> = None;
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut delay = Duration::from_millis(200);
        let mut again = false;
        loop {
            let mut check = false;
            if std::mem::take(&mut again) {
                // A failed write is retried without waiting for a change.
            } else {
                tokio::select! {
                msg = rx.recv() => {
                    let Some(first) = msg else { return };
                    // Every update already queued: one transaction for a burst.
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    for update in batch {
                        match update {
                            Ok(Update::Events(events)) => apply_events(&mut view, events),
                            Ok(Update::Resynced { diff, .. }) => {
                                listed = true;
                                // A fresh list: the sets are replaced whole, so anything
                                // missed (a set flushed by hand, ...) is mended too.
                                applied = None;
                                apply_events(&mut view, diff);
                            }
                            Err(e) => tracing::warn!(error = %e, "members: follow the WorkloadEndpoints"),
                        }
                    }
                }
                _ = tick.tick() => check = true,
                }
            }
            if !listed {
                continue;
            }
            let started = std::time::Instant::now();
            let desired = desired_sets(&local, view.values());
            if !check && applied.as_ref() == Some(&desired) {
                continue;
            }
            let gate = self.routes_stopped.lock().await;
            if *gate {
                return;
            }
            let prev = applied.take();
            let res = tokio::task::spawn_blocking(move || {
                write_sets(prev, &desired, check).map(|whole| (whole, desired))
            })
            .await
            .map_err(|e| Error::msg(format!("update ip sets: {e}")))
            .and_then(|r| r);
            drop(gate);
            match res {
                Ok((whole, d)) => {
                    if whole {
                        tracing::info!(
                            sets = d.len(),
                            members = d.values().map(BTreeSet::len).sum::<usize>(),
                            endpoints = view.len(),
                            took_ms = started.elapsed().as_secs_f64() * 1000.0,
                            "ip sets of other hosts' members written"
                        );
                    }
                    applied = Some(d);
                    delay = Duration::from_millis(200);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "members: update the ip sets");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(CHECK_INTERVAL);
                    // Again at once, whole (nothing is known of the kernel's sets now).
                    again = true;
                }
            }
        }
    }
}

/// Takes watched WorkloadEndpoint changes into the view (a record that does not decode is
/// logged and counts as gone).
fn apply_events(view: &mut HashMap<String, Member>, events: Vec<Event>) {
    for ev in events {
        match ev {
            Event::Put(kv) => match resources::decode::<WorkloadEndpointSpec>(&kv) {
                Ok(w) => {
                    view.insert(kv.key, Member::from_wep(&w));
                }
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "members: ignoring a WorkloadEndpoint");
                    view.remove(&kv.key);
                }
            },
            Event::Delete { key, .. } => {
                view.remove(&key);
            }
        }
    }
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
