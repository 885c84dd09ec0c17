//! Routes to the other hosts' containers, as Felix programs them in its non-BGP modes:
//! the cluster's Nodes, pools, blocks and WorkloadEndpoints are watched ([`Watcher`]), the
//! kernel state they call for is computed ([`state::ClusterView::desired`]) and the kernel
//! is brought to it: tunnel devices, VXLAN neighbour and forwarding entries, and our routes
//! (protocol [`crate::dataplane::routes::ROUTE_PROTOCOL`], so that they are reconciled as a set and never confused
//! with anyone else's). A full check runs every [`CHECK_INTERVAL`] and after every error.
//!
//! Runs only in `standalone` mode on a shared datastore: with Felix on the host (`felix`
//! mode) Felix routes, and the embedded store has one host.

pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Driver;
use crate::dataplane::netlink::Netlink;
use crate::dataplane::routes::OwnedRoute;
use crate::datastore::watch::{Update, Watcher};
use crate::datastore::{Datastore, Event};
use crate::error::Result;
use state::{ClusterView, Desired, Link, Problem, ProblemKind, Underlay, VxlanPlan, Watched};

/// How often the kernel is checked against the cluster when nothing changed (a route
/// someone deleted comes back), and the pause after a failed pass.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// How often each watched prefix is listed again in full, in case a change was missed.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(300);
/// How many problems a summary line names as examples.
const PROBLEM_EXAMPLES: usize = 3;

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Routes added or changed.
    pub replaced: usize,
    /// Routes deleted.
    pub deleted: usize,
    /// Routes of ours in the kernel after the pass.
    pub total: usize,
}

impl Driver {
    /// Keeps the routes to the other hosts in the background, when routing is on
    /// ([`super::DriverSettings::routes`]). Returns at once.
    pub fn keep_routes_in_background(self: &Arc<Self>) {
        if !self.settings.routes {
            return;
        }
        if self.rules.mode() == Some(crate::dataplane::iptables::Mode::Felix) {
            tracing::info!("Felix runs on this host: it keeps the routes to other hosts");
            return;
        }
        // Isolation across hosts needs the other hosts' members wherever routes reach them
        // (in standalone mode: with the firewall off nothing matches them).
        let members = (self.rules.mode() == Some(crate::dataplane::iptables::Mode::Standalone))
            .then(|| self.rules.applier());
        // A pool changed (its mode, say): this host's tunnel addresses follow at once, not at
        // the next periodic pass, so the routes that wait on them come within a second.
        let pools_changed = Arc::new(tokio::sync::Notify::new());
        let me = self.clone();
        let notified = pools_changed.clone();
        super::supervise("tunnel-addresses", move || {
            let driver = me.clone();
            let notified = notified.clone();
            async move {
                loop {
                    notified.notified().await;
                    if let Err(e) = driver.reconcile_tunnel_addresses().await {
                        tracing::warn!(error = %e, "tunnel addresses after a pool change");
                    }
                }
            }
        });
        let me = self.clone();
        super::supervise("routes", move || {
            let driver = me.clone();
            let pools_changed = pools_changed.clone();
            let members = members.clone();
            async move {
                let mut delay = Duration::from_millis(500);
                loop {
                    match Netlink::new() {
                        Ok(nl) => {
                            let gate = driver.routes_stopped.clone();
                            let store = driver.store.clone();
                            let local = &driver.settings.nodename;
                            run(store, local, nl, gate, pools_changed, members).await;
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "routes: open netlink socket");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(CHECK_INTERVAL);
                        }
                    }
                }
            }
        });
    }
}

impl Driver {
    /// At stop, with no endpoint left on this host: our routes and VXLAN devices removed,
    /// and no later pass writes any. Returns how many routes went.
    pub async fn remove_routes(&self) -> Result<usize> {
        if !self.settings.routes {
            return Ok(0);
        }
        let mut stopped = self.routes_stopped.lock().await;
        *stopped = true;
        let nl = Netlink::new()?;
        let applied = sync_routes(&nl, &BTreeSet::new()).await?;
        for name in [
            crate::dataplane::routes::VXLAN_DEVICE,
            crate::dataplane::routes::VXLAN_V6_DEVICE,
        ] {
            nl.delete_link(name).await?;
        }
        Ok(applied.deleted)
    }
}

/// Follows the cluster and keeps this host's kernel in step, until the process ends or
/// `stopped` holds `true`; with `members`, also the sets of other hosts' profile members
/// ([`super::members::run`], fed from the same watch of WorkloadEndpoints).
pub async fn run(
    store: Arc<dyn Datastore>,
    local: &str,
    nl: Netlink,
    stopped: Arc<tokio::sync::Mutex<bool>>,
    pools_changed: Arc<tokio::sync::Notify>,
    members: Option<super::members::RulesApplier>,
) {
    let members = members.map(|rules| {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(super::members::run(
            rx,
            local.to_string(),
            stopped.clone(),
            Some(rules),
        ));
        (tx, task)
    });
    let (tx, mut rx) = mpsc::channel::<(Watched, Result<Update>)>(64);
    for kind in Watched::ALL {
        let tx = tx.clone();
        let mut w = Watcher::new(store.clone(), &kind.prefix()).resync_every(RESYNC_INTERVAL);
        tokio::spawn(async move {
            loop {
                let update = w.next().await;
                if tx.send((kind, update)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut view = ClusterView::default();
    // Nothing is applied before every prefix was listed once: a partial view (blocks
    // without their Nodes) would take working routes away after a restart.
    let mut listed: BTreeSet<&'static str> = BTreeSet::new();
    let mut problems: BTreeSet<Problem> = BTreeSet::new();
    let mut failed = false;
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut dirty = false;
        tokio::select! {
            msg = rx.recv() => {
                let Some(first) = msg else { return };
                // Take every update already queued: one kernel pass for a burst.
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                for (kind, update) in batch {
                    match update {
                        Ok(u) => {
                            let resynced = matches!(u, Update::Resynced { .. });
                            if resynced {
                                listed.insert(name_of(kind));
                            }
                            let events = match u {
                                Update::Events(ev) => ev,
                                Update::Resynced { diff, .. } => diff,
                            };
                            let changed = apply_events(&mut view, kind, &events);
                            if changed && kind == Watched::Pools {
                                pools_changed.notify_one();
                            }
                            dirty |= changed;
                            if let (Watched::Workloads, Some((tx, task))) = (kind, &members) {
                                if tx.send(super::members::Feed { resynced, events }).is_err() {
                                    // Stopping (it ended at the gate), or without ipset: fine.
                                    // Otherwise it panicked: restarting this task (supervised)
                                    // restarts both.
                                    if *stopped.lock().await || !crate::dataplane::ipset::available() {
                                        continue;
                                    }
                                    task.abort();
                                    panic!("routes: the members keeper ended");
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, prefix = %kind.prefix(), "routes: follow the datastore"),
                    }
                }
            }
            _ = tick.tick() => dirty = true,
        }
        if !dirty || listed.len() < Watched::ALL.len() {
            continue;
        }
        let gate = stopped.lock().await;
        if *gate {
            return;
        }
        let res = reconcile(&nl, &view, local).await;
        drop(gate);
        match res {
            Ok((applied, desired)) => {
                if failed {
                    tracing::info!("routes: kernel in step again");
                    failed = false;
                }
                if applied.replaced + applied.deleted > 0 {
                    tracing::info!(
                        replaced = applied.replaced,
                        deleted = applied.deleted,
                        routes = applied.total,
                        "routes to other hosts updated"
                    );
                }
                let now: BTreeSet<Problem> = desired.problems.into_iter().collect();
                for line in problem_lines(&problems, &now) {
                    tracing::warn!("routes: {line}");
                }
                if now.is_empty() && !problems.is_empty() {
                    tracing::info!("routes: no problem left");
                }
                problems = now;
            }
            Err(e) => {
                tracing::warn!(error = %e, "routes: update the kernel; retrying");
                failed = true;
            }
        }
    }
}

/// What to log of a pass's problems `now`, given the last pass's `before`: one line per kind
/// with a problem `before` did not have, naming the kind's count and a few of its new
/// problems (one problem alone: its whole sentence). A kind expected while this host's
/// tunnel address is being allocated ([`ProblemKind::waits_for_own_tunnel_address`]) only
/// when it appears, not again while it lasts: at a VXLAN start every other host's block
/// waits for it, and blocks keep arriving.
fn problem_lines(before: &BTreeSet<Problem>, now: &BTreeSet<Problem>) -> Vec<String> {
    let mut by_kind: BTreeMap<ProblemKind, Vec<&Problem>> = BTreeMap::new();
    for p in now {
        by_kind.entry(p.kind).or_default().push(p);
    }
    let mut lines = Vec::new();
    for (kind, all) in by_kind {
        let new: Vec<&Problem> = all
            .iter()
            .copied()
            .filter(|p| !before.contains(p))
            .collect();
        if new.is_empty() {
            continue;
        }
        if kind.waits_for_own_tunnel_address() && before.iter().any(|p| p.kind == kind) {
            continue;
        }
        if let [only] = all.as_slice() {
            lines.push(only.message.clone());
            continue;
        }
        let mut examples: Vec<&str> = new
            .iter()
            .take(PROBLEM_EXAMPLES)
            .map(|p| p.subject.as_str())
            .collect();
        if all.len() > examples.len() {
            examples.push("...");
        }
        lines.push(format!(
            "{} {} (e.g. {})",
            all.len(),
            kind.summary(),
            examples.join(", ")
        ));
    }
    lines
}

fn name_of(kind: Watched) -> &'static str {
    match kind {
        Watched::Nodes => "nodes",
        Watched::Pools => "pools",
        Watched::Blocks => "blocks",
        Watched::Workloads => "workloads",
    }
}

/// Takes a watcher's events into the view; true when the routes may have changed. A
/// WorkloadEndpoint matters to routes only through its borrowed addresses (outside its
/// host's blocks): one that has none before and after changes nothing, so a fleet's endpoint
/// churn costs no kernel pass.
fn apply_events(view: &mut ClusterView, kind: Watched, events: &[Event]) -> bool {
    let mut changed = false;
    for ev in events {
        let key = match ev {
            Event::Put(kv) => kv.key.as_str(),
            Event::Delete { key, .. } => key.as_str(),
        };
        // (A record with no borrowed address routes nothing, present or not.)
        let routed = |view: &ClusterView| view.borrowed(key).filter(|(_, nets)| !nets.is_empty());
        let before = (kind == Watched::Workloads).then(|| routed(view));
        let res = match ev {
            Event::Put(kv) => view.apply(kind, &kv.key, Some(&kv.value)),
            Event::Delete { key, .. } => view.apply(kind, key, None),
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "routes: ignoring a record");
        }
        changed |= match before {
            Some(b) => b != routed(view),
            None => true,
        };
    }
    changed
}

/// The interfaces holding this host's Node addresses, with their MTUs.
async fn underlay(nl: &Netlink, view: &ClusterView, local: &str) -> Result<Underlay> {
    let Some(me) = view.node(local) else {
        return Ok(Underlay::default());
    };
    let ifaces = crate::dataplane::interfaces(nl).await?;
    let mut out = Underlay::default();
    for (addr, slot) in [(me.ipv4, &mut out.v4), (me.ipv6, &mut out.v6)] {
        let Some(addr) = addr else { continue };
        if let Some(iface) = ifaces
            .iter()
            .find(|i| i.addresses.iter().any(|a| a.addr() == addr.addr()))
        {
            *slot = Some(Link {
                name: iface.name.clone(),
                mtu: nl.link_mtu(&iface.name).await?,
            });
        }
    }
    Ok(out)
}

/// One pass: the kernel brought to what `view` calls for on host `local`.
pub async fn reconcile(
    nl: &Netlink,
    view: &ClusterView,
    local: &str,
) -> Result<(Applied, Desired)> {
    let underlay = underlay(nl, view, local).await?;
    let mut desired = view.desired(local, &underlay);
    // A device that cannot be made (no `vxlan` or `ipip` module in this kernel, ...) takes
    // its own routes out, never the others'.
    let mut broken: Vec<String> = Vec::new();
    for (plan, name) in [
        (&desired.vxlan_v4, crate::dataplane::routes::VXLAN_DEVICE),
        (&desired.vxlan_v6, crate::dataplane::routes::VXLAN_V6_DEVICE),
    ] {
        match plan {
            Some(plan) => {
                if let Err(e) = sync_vxlan(nl, plan).await {
                    desired.problems.push(Problem::new(
                        ProblemKind::DeviceFailed,
                        name,
                        format!("set up {name}: {e}"),
                    ));
                    broken.push(name.to_string());
                }
            }
            // Only Felix or we make these devices, and Felix is not running here.
            None => {
                if nl.link_exists(name).await? {
                    nl.delete_link(name).await?;
                }
            }
        }
    }
    if let Some(dev) = &desired.ipip {
        if let Err(e) = nl.ensure_ipip_device(dev).await {
            let name = crate::dataplane::routes::IPIP_DEVICE;
            desired.problems.push(Problem::new(
                ProblemKind::DeviceFailed,
                name,
                format!("set up {name}: {e}"),
            ));
            broken.push(name.to_string());
        }
    }
    // tunl0 stays when no pool needs it: the kernel made it with the ipip module, and it
    // carries nothing without our routes.
    if !broken.is_empty() {
        desired.routes.retain(|r| match &r.kind {
            crate::dataplane::routes::RouteKind::Via { dev, .. } => !broken.contains(dev),
            crate::dataplane::routes::RouteKind::Blackhole => true,
        });
    }
    let applied = sync_routes(nl, &desired.routes).await?;
    Ok((applied, desired))
}

async fn sync_vxlan(nl: &Netlink, plan: &VxlanPlan) -> Result<()> {
    let dev = &plan.device.name;
    nl.ensure_vxlan_device(&plan.device).await?;
    let have: BTreeMap<IpAddr, [u8; 6]> = nl.list_neighbours(dev).await?.into_iter().collect();
    for (ip, mac) in &plan.neighbours {
        if have.get(ip) != Some(mac) {
            nl.replace_neighbour(dev, *ip, *mac).await?;
        }
    }
    let wanted: BTreeSet<IpAddr> = plan.neighbours.iter().map(|(ip, _)| *ip).collect();
    for ip in have.keys().filter(|ip| !wanted.contains(ip)) {
        nl.delete_neighbour(dev, *ip).await?;
    }
    let have: BTreeSet<([u8; 6], IpAddr)> = nl.list_fdb(dev).await?.into_iter().collect();
    for (mac, remote) in plan.fdb.difference(&have) {
        nl.replace_fdb(dev, *mac, *remote).await?;
    }
    for (mac, remote) in have.difference(&plan.fdb) {
        nl.delete_fdb(dev, *mac, *remote).await?;
    }
    Ok(())
}

/// Our routes made exactly `want`: each missing or different one replaced (in place, no
/// gap), then each destination no longer wanted deleted.
async fn sync_routes(nl: &Netlink, want: &BTreeSet<OwnedRoute>) -> Result<Applied> {
    let have: BTreeSet<OwnedRoute> = nl.list_owned_routes().await?.into_iter().collect();
    let mut applied = Applied::default();
    for r in want.difference(&have) {
        nl.replace_owned_route(r).await?;
        applied.replaced += 1;
    }
    let wanted_dests: BTreeSet<ipnet::IpNet> = want.iter().map(|r| r.dest).collect();
    for r in have.iter().filter(|r| !wanted_dests.contains(&r.dest)) {
        nl.delete_owned_route(r).await?;
        applied.deleted += 1;
    }
    applied.total = want.len();
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(n: usize, kind: ProblemKind) -> BTreeSet<Problem> {
        (0..n)
            .map(|i| {
                let subject = format!("10.0.{}.{}/26 on host-{i}", i / 4, (i % 4) * 64);
                Problem::new(kind, subject.clone(), format!("no route to {subject}"))
            })
            .collect()
    }

    fn own_address_missing() -> Problem {
        Problem::new(
            ProblemKind::NoHostTunnelAddress,
            "vxlan.calico",
            "no vxlan.calico device yet: this host's Node has no IPv4 VXLAN tunnel address",
        )
    }

    // A VXLAN start: ~1,000 blocks of other hosts, before this host's tunnel address
    // exists (and before theirs): one line per kind, not one per block.
    #[test]
    fn problems_are_summarized_one_line_per_kind() {
        let mut now = waiting(998, ProblemKind::NoVxlanDevice);
        now.extend(waiting(5, ProblemKind::PeerWithoutTunnelAddress));
        now.insert(own_address_missing());
        let lines = problem_lines(&BTreeSet::new(), &now);
        assert_eq!(
            lines,
            vec![
                "no vxlan.calico device yet: this host's Node has no IPv4 VXLAN tunnel address"
                    .to_string(),
                "5 routes wait for their host's VXLAN tunnel address (e.g. 10.0.0.0/26 on \
                 host-0, 10.0.0.128/26 on host-2, 10.0.0.192/26 on host-3, ...)"
                    .to_string(),
                "998 routes wait for this host's VXLAN device (it comes with this host's VXLAN \
                 tunnel address) (e.g. 10.0.0.0/26 on host-0, 10.0.0.128/26 on host-2, \
                 10.0.0.192/26 on host-3, ...)"
                    .to_string(),
            ]
        );
        // Nothing new: nothing logged.
        assert!(problem_lines(&now, &now).is_empty());
    }

    // While this host's tunnel address is being allocated, more blocks arrive and wait
    // for it: not logged again. Other kinds are logged again when they gain a problem,
    // naming the new ones; fewer problems log nothing.
    #[test]
    fn transients_of_our_own_tunnel_address_are_logged_once() {
        let mut before = waiting(10, ProblemKind::NoVxlanDevice);
        before.insert(own_address_missing());
        before.extend(waiting(2, ProblemKind::PeerWithoutNode));
        let mut now = waiting(20, ProblemKind::NoVxlanDevice);
        now.insert(own_address_missing());
        now.extend(waiting(3, ProblemKind::PeerWithoutNode));
        assert_eq!(
            problem_lines(&before, &now),
            vec!["3 routes wait for their host's Node (e.g. 10.0.0.128/26 on host-2, ...)"]
        );
        let fewer = waiting(1, ProblemKind::PeerWithoutNode);
        assert!(problem_lines(&now, &fewer).is_empty());
        // Gone and back (a new episode): logged again.
        let again = waiting(4, ProblemKind::NoVxlanDevice);
        assert_eq!(problem_lines(&fewer, &again).len(), 1);
    }

    // One problem of a kind: its whole sentence, as before summaries.
    #[test]
    fn a_lone_problem_is_logged_whole() {
        let now = waiting(1, ProblemKind::NoEncapsulation);
        assert_eq!(
            problem_lines(&BTreeSet::new(), &now),
            vec!["no route to 10.0.0.0/26 on host-0".to_string()]
        );
    }
}
