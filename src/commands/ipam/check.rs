//! `ipam check [--repair]`: inconsistencies between allocations, WorkloadEndpoints, handles
//! and this host's veths, and (with `--repair`) the safe fixes.
//!
//! Every record is a node's ([`Finding::node`]): an allocation is the node's its `node`
//! attribute names (else its block's host), a handle its addresses' node (else its blocks'
//! host), an endpoint its `spec.node`'s, a veth this host's. The check judges this host's
//! records, `--node`'s, or with `--all-hosts` everyone's; `--repair` fixes only this host's,
//! or those of the `--node` whose heartbeat has lapsed ([`Liveness::Dead`]: its plugin
//! writes none of them any more), and with `--all-hosts` those naming no node.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use crate::dataplane::Netlink;
use crate::datastore::resources;
use crate::datastore::Datastore;
use crate::driver::heartbeat::{alive_refusal, liveness, Liveness, HEARTBEAT_ANNOTATION};
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::model::libnetwork::WEP_NAMESPACE;
use crate::model::{keys, Node, ReleaseOptions, WorkloadEndpoint};

use super::allocations::{read_blocks, Alloc, Blocks};
use super::handles::{
    counts_from_blocks, fmt_counts, normalize_counts, our_handles, repair_handle,
};
use super::report::{kind, CheckOptions, CheckReport, Finding};

use crate::model::libnetwork::HOST_VETH_PREFIX as VETH_PREFIX;

/// What one check works from: the allocator, the datastore, the options and the time of
/// the check.
struct Check<'a> {
    ipam: Ipam,
    store: &'a dyn Datastore,
    opts: &'a CheckOptions,
    now: DateTime<Utc>,
}

/// This host's veths (`name`, made by us), with the netlink handle to delete them.
type Veths = Result<(Netlink, Vec<(String, bool)>)>;

/// Finds (and with `repair`, fixes) inconsistencies between allocations, WorkloadEndpoints,
/// handles and this host's veths.
pub(crate) async fn ipam_check(
    store: Arc<dyn Datastore>,
    opts: &CheckOptions,
) -> Result<CheckReport> {
    let check = Check {
        ipam: Ipam::new(store.clone()),
        store: store.as_ref(),
        opts,
        now: Utc::now(),
    };
    let mut report = CheckReport {
        scope: opts.scope(),
        ..Default::default()
    };
    if opts.repair {
        if opts.on_this_host() {
            check.refuse_other_machine().await?;
        } else {
            check.refuse_unless_dead().await?;
        }
    }
    // Links first, records second: a veth listed here had its WorkloadEndpoint written
    // before it (Join follows CreateEndpoint), so one found without a record is not a
    // container starting right now.
    let links = if !opts.check_veths {
        None
    } else if opts.shows(Some(&opts.nodename)) {
        Some(list_veths().await)
    } else {
        report.notes.push(format!(
            "this host's interfaces not checked: the check is of node {}'s records",
            opts.target
        ));
        None
    };
    let blocks = read_blocks(&check.ipam).await?;
    // Strict: an endpoint skipped here would make its address look unused to --repair.
    let weps: Vec<WorkloadEndpoint> = resources::list_strict(check.store, None).await?;
    // Handles first: releasing an orphan below then counts down a correct handle.
    check.handles(&blocks, &mut report).await?;
    check
        .orphan_allocations(&blocks.allocs, &endpoint_addresses(&weps), &mut report)
        .await;
    let shown = weps.iter().filter(|w| opts.shows(Some(&w.spec.node)));
    unallocated_addresses(&blocks.allocs, shown, &mut report);
    if let Some(listed) = links {
        check.veths(listed, &weps, &mut report).await;
    }
    Ok(report)
}

async fn list_veths() -> Veths {
    let nl = Netlink::new()?;
    nl.list_veths_marked(VETH_PREFIX).await.map(|v| (nl, v))
}

/// Every address a WorkloadEndpoint (any orchestrator's) uses.
fn endpoint_addresses(weps: &[WorkloadEndpoint]) -> HashSet<IpAddr> {
    let mut addrs: HashSet<IpAddr> = HashSet::new();
    for w in weps {
        for n in &w.spec.ip_networks {
            if let Ok(net) = n.parse::<IpNet>() {
                addrs.insert(net.addr());
            } else if let Ok(ip) = n.parse::<IpAddr>() {
                addrs.insert(ip);
            }
        }
    }
    addrs
}

/// Our endpoints (of `weps`) whose address is not allocated: it may be handed out again.
fn unallocated_addresses<'a>(
    allocs: &BTreeMap<IpAddr, Alloc>,
    weps: impl Iterator<Item = &'a WorkloadEndpoint>,
    report: &mut CheckReport,
) {
    for w in weps.filter(|w| w.metadata.namespace == WEP_NAMESPACE) {
        for n in &w.spec.ip_networks {
            let Ok(net) = n.parse::<IpNet>() else {
                continue;
            };
            if allocs.contains_key(&net.addr()) {
                continue;
            }
            report.findings.push(Finding {
                kind: kind::UNALLOCATED_ADDRESS,
                object: net.addr().to_string(),
                node: Some(w.spec.node.clone()),
                detail: format!(
                    "WorkloadEndpoint {} (node {}) uses it, but it is not allocated",
                    w.name(),
                    w.spec.node
                ),
                repairable: false,
                repaired: false,
                action: "not repaired (another container may get this address): restart the \
                         container, or disconnect and reconnect it (`docker network disconnect`/`connect`)"
                    .to_string(),
            });
        }
    }
}

impl Check<'_> {
    /// `--repair` refuses when this node's Node records another machine.
    async fn refuse_other_machine(&self) -> Result<()> {
        let Some(mine) = &self.opts.machine_id else {
            return Ok(());
        };
        let node: Option<crate::model::Node> =
            resources::get(self.store, &keys::node_key(&self.opts.nodename)).await?;
        if let Some(other) = node
            .as_ref()
            .and_then(|n| {
                n.metadata
                    .annotations
                    .get(crate::model::MACHINE_ID_ANNOTATION)
            })
            .filter(|other| *other != mine)
        {
            return Err(Error::msg(format!(
                "repair node {}: it belongs to another machine (machine-id {other}, this one is \
                 {mine}); run the check on that host, or with that host's NODENAME there",
                self.opts.nodename
            )));
        }
        Ok(())
    }

    /// `--repair --node` of another host: refused unless that host is dead (its heartbeat
    /// lapsed, as `status --all-hosts` shows it), since a running plugin writes its records.
    async fn refuse_unless_dead(&self) -> Result<()> {
        let name = &self.opts.target;
        let ctx = |e: Error| e.context(format!("repair node {name}'s records"));
        let node: Option<Node> = resources::get(self.store, &keys::node_key(name))
            .await
            .map_err(ctx)?;
        let Some(node) = node else {
            return Err(ctx(Error::invalid(format!(
                "Node {name} does not exist, so no heartbeat shows it dead: check the name \
                 (`calico-libnetwork status --all-hosts` lists the nodes)"
            ))));
        };
        let interval = self.opts.heartbeat_interval;
        match liveness(&node, self.now, interval) {
            Liveness::Dead => Ok(()),
            Liveness::Alive => Err(ctx(alive_refusal(
                &node,
                self.now,
                interval,
                ", or run the repair on that host",
            ))),
            Liveness::NoHeartbeat => Err(ctx(Error::invalid(format!(
                "it has no heartbeat ({HEARTBEAT_ANNOTATION}: a node of calico-node, or of a \
                 plugin from before heartbeats), so nothing shows it dead: run the repair on \
                 that host"
            )))),
        }
    }

    /// What to run to fix a finding of `owner` that this run does not fix (`what` says
    /// what the fix does).
    fn advice(&self, owner: Option<&str>, what: &str) -> String {
        let cmd = "calico-libnetwork ipam check --repair";
        match owner {
            None => format!("run `{cmd} --all-hosts` to {what}"),
            Some(n) if n == self.opts.nodename => format!("run `{cmd}` to {what}"),
            Some(n) => format!(
                "node {n}'s record: run `{cmd}` on that host to {what}, or `{cmd} --node {n}` \
                 here once `calico-libnetwork status --all-hosts` shows it dead"
            ),
        }
    }

    /// Handles of ours whose per-block counts differ from the blocks.
    async fn handles(&self, blocks: &Blocks, report: &mut CheckReport) -> Result<()> {
        let actual = counts_from_blocks(&blocks.allocs);
        let stored = our_handles(self.store).await?;
        // A handle's node: its first address's, else its first recorded block's host.
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        for a in blocks.allocs.values() {
            if let (Some(h), Some(n)) = (a.our_handle(), a.owner()) {
                owners.entry(h).or_insert(n);
            }
        }
        let ids: BTreeSet<&String> = actual.keys().chain(stored.keys()).collect();
        for id in ids {
            let have = stored.get(id).map(|(h, _)| normalize_counts(h));
            let want = actual.get(id).cloned().unwrap_or_default();
            if have.as_ref() == Some(&want) {
                continue;
            }
            let owner = owners.get(id.as_str()).map(|n| n.to_string()).or_else(|| {
                have.iter()
                    .flat_map(|h| h.keys())
                    .find_map(|b| blocks.hosts.get(b).cloned())
            });
            let owner = owner.as_deref();
            if !self.opts.shows(owner) {
                continue;
            }
            let detail = match &have {
                Some(h) => format!(
                    "handle records {}, blocks hold {}",
                    fmt_counts(h),
                    fmt_counts(&want)
                ),
                None => format!("no handle record; blocks hold {}", fmt_counts(&want)),
            };
            let mut f = Finding {
                kind: kind::HANDLE_MISMATCH,
                object: id.clone(),
                node: owner.map(str::to_string),
                detail,
                repairable: true,
                repaired: false,
                action: self.advice(owner, "set the handle from the blocks"),
            };
            if self.opts.repairs(owner) {
                match repair_handle(&self.ipam, self.store, id).await {
                    Ok(done) => {
                        f.repaired = true;
                        f.action = format!("repaired: {done}");
                    }
                    Err(e) => f.action = format!("repair failed ({e}): run the check again"),
                }
            }
            report.findings.push(f);
        }
        Ok(())
    }

    /// Allocations of ours that no endpoint uses.
    async fn orphan_allocations(
        &self,
        allocs: &BTreeMap<IpAddr, Alloc>,
        wep_addrs: &HashSet<IpAddr>,
        report: &mut CheckReport,
    ) {
        for (ip, a) in allocs {
            let Some(handle) = a.our_handle() else {
                continue;
            };
            if wep_addrs.contains(ip) || !self.opts.shows(a.owner()) {
                continue;
            }
            let mut f = self.orphan_allocation(*ip, handle, a);
            if self.opts.repairs(a.owner()) && f.repairable {
                let release = ReleaseOptions::new(*ip)
                    .with_handle(handle)
                    .with_sequence(a.sequence);
                match self.ipam.release(&[release]).await {
                    Ok(left) if left.is_empty() => {
                        f.repaired = true;
                        f.action = "repaired: released".to_string();
                    }
                    Ok(_) => {
                        f.repaired = true;
                        f.action = "repaired: already released meanwhile".to_string();
                    }
                    Err(e) => {
                        f.action = format!("not released ({e}): it changed meanwhile; check again")
                    }
                }
            }
            report.findings.push(f);
        }
    }

    /// The finding for an orphan allocation: repairable once older than the grace period.
    fn orphan_allocation(&self, ip: IpAddr, handle: &str, a: &Alloc) -> Finding {
        // Every allocation of ours is time-stamped: one without a stamp is not in flight.
        let age = a.since.map(|t| (self.now - t).to_std().unwrap_or_default());
        let old = age.is_none_or(|age| age >= self.opts.grace);
        let age_text = match age {
            Some(age) => format!(
                "allocated {} ago",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            ),
            None => "allocation time unknown".to_string(),
        };
        Finding {
            kind: kind::ORPHAN_ALLOCATION,
            object: ip.to_string(),
            node: a.owner().map(str::to_string),
            detail: format!(
                "handle {handle}, node {}, {age_text}; no WorkloadEndpoint has it",
                a.node.as_deref().unwrap_or("?")
            ),
            repairable: old,
            repaired: false,
            action: if old {
                self.advice(a.owner(), "release it")
            } else {
                format!(
                    "younger than the grace period ({}): a container may be starting; check again later",
                    humantime::format_duration(self.opts.grace)
                )
            },
        }
    }

    /// This host's veths of ours that belong to no WorkloadEndpoint of this node.
    async fn veths(&self, listed: Veths, weps: &[WorkloadEndpoint], report: &mut CheckReport) {
        let (nl, veths) = match listed {
            Ok(listed) => listed,
            Err(e) => {
                report.notes.push(format!(
                    "host interfaces not checked ({e}): run as root on the Docker host"
                ));
                return;
            }
        };
        let expected: HashSet<&str> = weps
            .iter()
            .filter(|w| w.spec.node == self.opts.nodename)
            .map(|w| w.spec.interface_name.as_str())
            .collect();
        let others = veths.iter().filter(|(_, ours)| !ours).count();
        if others > 0 {
            report.notes.push(format!(
                "{others} {VETH_PREFIX}* veths not made by this plugin (no \
                 `{}` alias: Calico CNI's, or an older version's) were left alone",
                crate::dataplane::VETH_ALIAS
            ));
        }
        let ours = veths
            .iter()
            .filter(|(_, ours)| *ours)
            .map(|(n, _)| n)
            .filter(|v| !expected.contains(v.as_str()));
        for v in ours {
            let here = Some(self.opts.nodename.as_str());
            let mut f = Finding {
                kind: kind::ORPHAN_VETH,
                object: v.clone(),
                node: here.map(str::to_string),
                detail: format!(
                    "host veth with no WorkloadEndpoint on node {}",
                    self.opts.nodename
                ),
                repairable: true,
                repaired: false,
                action: self.advice(here, "delete it"),
            };
            if self.opts.repairs(here) {
                match nl.delete_link(v).await {
                    Ok(()) => {
                        f.repaired = true;
                        f.action = "repaired: deleted".to_string();
                    }
                    Err(e) => f.action = format!("delete failed ({e}): run as root"),
                }
            }
            report.findings.push(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resources::WorkloadEndpointSpec;

    fn wep(namespace: &str, name: &str, addrs: &[&str]) -> WorkloadEndpoint {
        let spec = WorkloadEndpointSpec {
            node: "node-1".to_string(),
            ip_networks: addrs.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        WorkloadEndpoint::namespaced(namespace, name, spec)
    }

    #[test]
    fn endpoint_addresses_take_cidrs_and_bare_addresses() {
        let weps = [
            wep(WEP_NAMESPACE, "a", &["10.0.0.1/32", "fd00::1/128"]),
            wep("other", "b", &["10.0.0.2", "junk"]),
        ];
        let mut addrs: Vec<String> = endpoint_addresses(&weps)
            .iter()
            .map(|a| a.to_string())
            .collect();
        addrs.sort();
        assert_eq!(addrs, ["10.0.0.1", "10.0.0.2", "fd00::1"]);
    }

    #[test]
    fn only_our_endpoints_unallocated_addresses_are_found() {
        let allocs = BTreeMap::from([(
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            Alloc::in_block("10.0.0.0/26", Some("libnetwork.a")),
        )]);
        let weps = [
            wep(WEP_NAMESPACE, "ours", &["10.0.0.1/32", "10.0.0.9/32"]),
            wep("cni", "theirs", &["10.0.0.10/32"]),
        ];
        let mut report = CheckReport::default();
        unallocated_addresses(&allocs, weps.iter(), &mut report);
        assert_eq!(report.findings.len(), 1);
        let f = &report.findings[0];
        assert_eq!(
            (f.kind, f.object.as_str()),
            (kind::UNALLOCATED_ADDRESS, "10.0.0.9")
        );
        assert_eq!(
            f.detail,
            "WorkloadEndpoint ours (node node-1) uses it, but it is not allocated"
        );
        assert!(!f.repairable && !f.repaired);
        assert_eq!(report.unresolved(), 1);
    }
}
