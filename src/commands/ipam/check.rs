//! `ipam check [--repair]`: inconsistencies between allocations, WorkloadEndpoints, handles
//! and this host's veths, and (with `--repair`) the safe fixes.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use crate::dataplane::Netlink;
use crate::datastore::resources;
use crate::datastore::Datastore;
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::model::libnetwork::WEP_NAMESPACE;
use crate::model::{keys, ReleaseOptions, WorkloadEndpoint};

use super::allocations::{all_allocations, Alloc};
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
    let mut report = CheckReport::default();
    if opts.repair {
        check.refuse_other_machine().await?;
    }
    // Links first, records second: a veth listed here had its WorkloadEndpoint written
    // before it (Join follows CreateEndpoint), so one found without a record is not a
    // container starting right now.
    let links = if opts.check_veths {
        Some(list_veths().await)
    } else {
        None
    };
    let allocs = all_allocations(&check.ipam).await?;
    // Strict: an endpoint skipped here would make its address look unused to --repair.
    let weps: Vec<WorkloadEndpoint> = resources::list_strict(check.store, None).await?;
    // Handles first: releasing an orphan below then counts down a correct handle.
    check.handles(&allocs, &mut report).await?;
    check
        .orphan_allocations(&allocs, &endpoint_addresses(&weps), &mut report)
        .await;
    unallocated_addresses(&allocs, &weps, &mut report);
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

/// Our endpoints whose address is not allocated: it may be handed out again.
fn unallocated_addresses(
    allocs: &BTreeMap<IpAddr, Alloc>,
    weps: &[WorkloadEndpoint],
    report: &mut CheckReport,
) {
    for w in weps
        .iter()
        .filter(|w| w.metadata.namespace == WEP_NAMESPACE)
    {
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

    /// Handles of ours whose per-block counts differ from the blocks.
    async fn handles(
        &self,
        allocs: &BTreeMap<IpAddr, Alloc>,
        report: &mut CheckReport,
    ) -> Result<()> {
        let actual = counts_from_blocks(allocs);
        let stored = our_handles(self.store).await?;
        let ids: BTreeSet<&String> = actual.keys().chain(stored.keys()).collect();
        for id in ids {
            let have = stored.get(id).map(|(h, _)| normalize_counts(h));
            let want = actual.get(id).cloned().unwrap_or_default();
            if have.as_ref() == Some(&want) {
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
                detail,
                repairable: true,
                repaired: false,
                action:
                    "run `calico-libnetwork ipam check --repair` to set the handle from the blocks"
                        .to_string(),
            };
            if self.opts.repair {
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
            if wep_addrs.contains(ip) {
                continue;
            }
            let mut f = self.orphan_allocation(*ip, handle, a);
            if self.opts.repair && f.repairable {
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
            detail: format!(
                "handle {handle}, node {}, {age_text}; no WorkloadEndpoint has it",
                a.node.as_deref().unwrap_or("?")
            ),
            repairable: old,
            repaired: false,
            action: if old {
                "run `calico-libnetwork ipam check --repair` to release it".to_string()
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
            let mut f = Finding {
                kind: kind::ORPHAN_VETH,
                object: v.clone(),
                detail: format!(
                    "host veth with no WorkloadEndpoint on node {}",
                    self.opts.nodename
                ),
                repairable: true,
                repaired: false,
                action: "run `calico-libnetwork ipam check --repair` to delete it".to_string(),
            };
            if self.opts.repair {
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
        unallocated_addresses(&allocs, &weps, &mut report);
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
