//! Reconciliation: bringing this host's dataplane and datastore records back in line after a
//! crash (of the plugin, of dockerd, of the host), and reclaiming a specific address whose
//! owner is gone.
//!
//! A plugin killed in the middle of Docker's calls (RequestAddress → CreateEndpoint → Join,
//! or Leave → DeleteEndpoint → ReleaseAddress) leaves some of: an allocated address, a
//! WorkloadEndpoint, a host veth with its routes. Docker does not come back for them: its
//! rollback calls went to a plugin that was not there. [`Driver::reconcile`] runs in the
//! background once the datastore is prepared at start (and once more when the grace period
//! has passed), and removes, one logged line each:
//!
//! 1. host veths `cali<11 chars>` for which no WorkloadEndpoint of this node (any
//!    namespace, any orchestrator) names that interface, and that belong to no endpoint
//!    Docker knows (only when the Docker API answers);
//! 2. this node's WorkloadEndpoints of namespace `libnetwork` that Docker does not know
//!    (no network of Docker's lists the endpoint), created longer than the grace period ago,
//!    whose host veth is gone or was never handed to a container (its `temp…` peer is still
//!    in the host namespace); their addresses are released. Without an answer from the
//!    Docker API, no endpoint is removed (logged);
//! 3. this node's allocations (attribute `node` = this node, handle `libnetwork.…`) whose
//!    address is in no WorkloadEndpoint at all and whose `timestamp` attribute is older than
//!    the grace period: a younger one may belong to a RequestAddress whose CreateEndpoint is
//!    still on its way.
//!
//! It never touches another node's records, another orchestrator's endpoints, an allocation
//! without our handle prefix or a parsable timestamp, and every release is guarded by the
//! handle seen (an address released and re-assigned meanwhile is left alone).
//!
//! `Driver::reclaim_stale_address` serves `RequestAddress` of a specific address (`docker
//! run --ip`) that is already allocated: Docker 20.10 does not replay addresses to remote
//! IPAM drivers (we answer `RequiresRequestReplay: false`), so a `--restart=always`
//! container restarted after dockerd died asks for its `--ip` again while its previous
//! allocation, and possibly its previous WorkloadEndpoint, still exist (the ReleaseAddress
//! of a graceful stop never came). The address is taken over only when its owner is
//! provably dead: an allocation of ours (our handle prefix, this node) that is either in no
//! WorkloadEndpoint and older than the grace period (not an in-flight request of another
//! container), or only in WorkloadEndpoints of this node's `libnetwork` namespace that are
//! older than the grace period and whose host veth no longer exists (the container's
//! network namespace is gone). A live container always has its veth, so an address in use
//! is never handed out twice; in every other case the request fails with "already in use".
//! Request handlers never call the Docker API (dockerd may be waiting on us), so this check
//! relies on the kernel and the datastore only.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Driver;
use crate::error::{Error, Result};
use crate::model::block::{AllocationBlock, ReleaseOptions, ATTR_NODE, ATTR_TIMESTAMP};
use crate::model::libnetwork::{
    host_veth_name, is_docker_id, temp_veth_name, HANDLE_PREFIX, HOST_VETH_PREFIX,
    TEMP_VETH_PREFIX, WEP_NAMESPACE,
};
use crate::model::parse_go_time;
use crate::model::{IpFamily, WorkloadEndpoint};

/// Default of `CALICO_LIBNETWORK_RECONCILE_GRACE`: records younger than this are never
/// removed by the reconciliation (they may belong to a request in flight).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(120);

/// What one reconciliation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Host veths deleted (no WorkloadEndpoint of this node names them).
    pub veths_removed: Vec<String>,
    /// WorkloadEndpoint names deleted.
    pub endpoints_removed: Vec<String>,
    /// Addresses released.
    pub addresses_released: Vec<IpAddr>,
    /// Whether the Docker API answered (without it no WorkloadEndpoint is removed).
    pub docker_answered: bool,
    /// Whether the host's links could be listed (without it no veth or WEP is removed).
    pub links_listed: bool,
}

fn older_than(t: Option<DateTime<Utc>>, grace: Duration, now: DateTime<Utc>) -> bool {
    match (t, chrono::Duration::from_std(grace)) {
        (Some(t), Ok(g)) => t + g <= now,
        _ => false,
    }
}

/// The parts of an allocation the decisions need.
struct Allocation {
    handle: String,
    node: Option<String>,
    timestamp: Option<DateTime<Utc>>,
}

fn allocation_of(block: &AllocationBlock, ip: &IpAddr) -> Option<Allocation> {
    let attr = block.attribute_of(ip)?;
    if attr.released_at.is_some() {
        return None; // Cooling down: not allocated.
    }
    Some(Allocation {
        handle: attr.handle().unwrap_or_default().to_string(),
        node: attr.secondary.get(ATTR_NODE).cloned(),
        timestamp: attr
            .secondary
            .get(ATTR_TIMESTAMP)
            .and_then(|t| parse_go_time(t)),
    })
}

impl Driver {
    fn is_ours(&self, a: &Allocation) -> bool {
        a.handle.starts_with(HANDLE_PREFIX) && a.node.as_deref() == Some(&self.settings.nodename)
    }

    /// Every WorkloadEndpoint of every node and namespace, with its key and revision.
    /// Records that do not decode are skipped (logged): they are not ours to judge.
    async fn all_weps(&self) -> Result<Vec<(String, i64, WorkloadEndpoint)>> {
        let kvs = self
            .store
            .list(&crate::model::keys::resource_prefix(
                crate::model::keys::PLURAL_WORKLOAD_ENDPOINTS,
                None,
            ))
            .await?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in kvs {
            match WorkloadEndpoint::from_stored(&kv.key, &kv.value, kv.revision) {
                Ok(w) => out.push((kv.key, kv.revision, w)),
                Err(e) => tracing::debug!(key = %kv.key, error = %e, "reconcile: skip record"),
            }
        }
        Ok(out)
    }

    /// Refuses destructive clean-up while another machine runs under this node name: its
    /// endpoints would look stale here (Docker here does not know them).
    fn check_node_owner(&self) -> Result<()> {
        match &*self.foreign_owner.lock().unwrap() {
            Some(other) => Err(Error::msg(format!(
                "reconcile node {}: another machine (machine-id {other}) runs under this node \
                 name, so nothing is cleaned up; give each host its own NODENAME",
                self.settings.nodename
            ))),
            None => Ok(()),
        }
    }

    /// Releases `ip` if it is still allocated to `handle` (no-op otherwise). True if released.
    async fn release_guarded(&self, ip: IpAddr, handle: &str) -> Result<bool> {
        match self
            .ipam
            .release(&[ReleaseOptions::new(ip).with_handle(handle)])
            .await
        {
            Ok(unallocated) => Ok(unallocated.is_empty()),
            // Re-assigned to another handle meanwhile: not ours any more.
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Forgets a removed endpoint's in-memory state and firewall rules.
    async fn forget_endpoint(&self, endpoint_id: &str) {
        self.endpoints.lock().unwrap().remove(endpoint_id);
        self.sandboxes.leave(endpoint_id);
        self.rules_remove_endpoint(endpoint_id).await;
    }

    /// Runs [`Driver::reconcile`] on a task of its own, logging the outcome: now, once more
    /// when the grace period has passed, so that records too young to judge at start (those
    /// of the requests a crash interrupted) are judged too, and then every
    /// `reconcile_interval` (what a DeleteEndpoint lost to a datastore outage left behind).
    pub fn reconcile_in_background(self: &std::sync::Arc<Self>) {
        let me = self.clone();
        // Shared by restarts: a loop restarted after a panic goes on with the next pass's
        // wait instead of running (and perhaps panicking) again at once.
        let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
        super::supervise("reconcile", move || {
            let (driver, next) = (me.clone(), next.clone());
            async move {
                let interval = driver.settings.reconcile_interval;
                loop {
                    let pass = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if pass == 2 {
                        tokio::time::sleep(
                            driver.settings.reconcile_grace + Duration::from_secs(1),
                        )
                        .await;
                    } else if pass > 2 {
                        if interval.is_zero() {
                            break;
                        }
                        tokio::time::sleep(interval).await;
                    }
                    match driver.reconcile().await {
                        Ok(r) => tracing::info!(
                            pass,
                            veths = r.veths_removed.len(),
                            endpoints = r.endpoints_removed.len(),
                            addresses = r.addresses_released.len(),
                            docker = r.docker_answered,
                            "reconciliation done"
                        ),
                        Err(e) => tracing::warn!(pass, error = %e, "reconciliation stopped"),
                    }
                }
            }
        });
    }

    /// Reconciles this host (see the module documentation), asking the Docker API which
    /// endpoints it knows.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let known = match &self.docker {
            Some(api) => match api.view().await {
                Ok(view) => Some(view),
                Err(e) => {
                    tracing::warn!(error = %e, "reconcile: Docker API unreachable; leaving WorkloadEndpoints alone");
                    None
                }
            },
            None => {
                tracing::info!(
                    "reconcile: no Docker API configured; leaving WorkloadEndpoints alone"
                );
                None
            }
        };
        match known {
            Some(view) => {
                self.reconcile_with_view(Some(&view.endpoints), &view.addresses)
                    .await
            }
            None => self.reconcile_with_view(None, &HashSet::new()).await,
        }
    }

    /// Reconciles with a given view of Docker: the endpoint IDs it knows, or `None` when
    /// that is unknown (then no WorkloadEndpoint is removed).
    pub async fn reconcile_with(
        &self,
        docker_endpoints: Option<&HashSet<String>>,
    ) -> Result<ReconcileReport> {
        self.reconcile_with_view(docker_endpoints, &HashSet::new())
            .await
    }

    /// [`Driver::reconcile_with`], also given the addresses Docker has handed to its
    /// endpoints (of any driver): those are never released.
    pub async fn reconcile_with_view(
        &self,
        docker_endpoints: Option<&HashSet<String>>,
        docker_addresses: &HashSet<IpAddr>,
    ) -> Result<ReconcileReport> {
        self.check_node_owner()?;
        // Nothing is cleaned up while Calico's datastore is locked: the next pass does it.
        self.check_ready().await?;
        let me = self.settings.nodename.clone();
        let grace = self.settings.reconcile_grace;
        let mut report = ReconcileReport {
            docker_answered: docker_endpoints.is_some(),
            ..Default::default()
        };
        // Links first, records second: a veth listed here had its WorkloadEndpoint written
        // before (Join follows CreateEndpoint), so a veth without one is not in flight.
        let dp = &self.dataplane;
        let links = match (
            dp.list_veths_marked(HOST_VETH_PREFIX).await,
            dp.list_veths(TEMP_VETH_PREFIX).await,
        ) {
            (Ok(c), Ok(t)) => Some((
                c.iter().map(|(n, _)| n.clone()).collect::<HashSet<_>>(),
                t.into_iter().collect::<HashSet<_>>(),
                c.into_iter()
                    .filter(|(_, ours)| *ours)
                    .map(|(n, _)| n)
                    .collect::<HashSet<_>>(),
            )),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "reconcile: list links; leaving veths and WorkloadEndpoints alone");
                None
            }
        };
        report.links_listed = links.is_some();
        // Read before the list: a profile move made while it is on its way is newer than it.
        let moves_before = self.rules().profile_moves();
        let weps = self.all_weps().await?;
        // Profiles of this host's endpoints changed elsewhere (a network's name learned by
        // another host sharing it, calicoctl): the firewall follows the datastore.
        self.rules()
            .refresh_profiles(
                moves_before,
                weps.iter().map(|(_, _, w)| w).filter(|w| w.spec.node == me),
            )
            .await;

        // 1. Host veths no WorkloadEndpoint of this node names (and no endpoint Docker
        // knows: only with Docker's answer, so a datastore that is not this host's does not
        // take every veth with it).
        if let (Some((_, _, ours)), Some(known)) = (&links, docker_endpoints) {
            let mut named: HashSet<String> = weps
                .iter()
                .filter(|(_, _, w)| w.spec.node == me)
                .map(|(_, _, w)| w.spec.interface_name.clone())
                .collect();
            named.extend(
                known
                    .iter()
                    .filter(|e| is_docker_id(e))
                    .map(|e| host_veth_name(e)),
            );
            // Only veths this plugin marked: another program's `cali*` (Calico CNI's pods)
            // is never ours to delete.
            for veth in ours {
                if veth.len() != 15 || named.contains(veth) {
                    continue;
                }
                match self.dataplane.teardown_endpoint_veth(veth).await {
                    Ok(()) => {
                        tracing::info!(veth = %veth, "reconcile: removed host veth without WorkloadEndpoint");
                        report.veths_removed.push(veth.clone());
                    }
                    Err(e) => tracing::warn!(veth = %veth, error = %e, "reconcile: remove veth"),
                }
            }
        }

        // 2. This node's endpoints Docker no longer knows, whose veth is gone.
        let now = Utc::now();
        let mut removed_keys = HashSet::new();
        match (&links, docker_endpoints) {
            (Some((cali, temps, _)), Some(known)) => {
                for (key, rev, w) in &weps {
                    if w.spec.node != me
                        || w.metadata.namespace != WEP_NAMESPACE
                        || !is_docker_id(&w.spec.endpoint)
                        || known.contains(&w.spec.endpoint)
                        || !older_than(w.metadata.creation_timestamp, grace, now)
                    {
                        continue;
                    }
                    let veth = host_veth_name(&w.spec.endpoint);
                    let never_handed_over = temps.contains(&temp_veth_name(&w.spec.endpoint));
                    if cali.contains(&veth) && !never_handed_over {
                        continue;
                    }
                    match self.store.delete(key, Some(*rev)).await {
                        Ok(()) => {}
                        Err(e) if e.is_lost_race() => continue,
                        Err(e) => return Err(e.context(format!("delete WorkloadEndpoint {key}"))),
                    }
                    removed_keys.insert(key.clone());
                    tracing::info!(
                        endpoint = %w.name(),
                        "reconcile: removed WorkloadEndpoint Docker no longer knows (no veth)"
                    );
                    report.endpoints_removed.push(w.name().to_string());
                    if cali.contains(&veth)
                        && self.dataplane.teardown_endpoint_veth(&veth).await.is_ok()
                    {
                        tracing::info!(veth = %veth, "reconcile: removed veth never handed to a container");
                        report.veths_removed.push(veth.clone());
                    }
                    self.forget_endpoint(&w.spec.endpoint).await;
                    // Its addresses are not released here: one may have been released by
                    // Docker and given out again since. Step 3 releases those that no other
                    // WorkloadEndpoint lists and whose allocation is past the grace period.
                }
            }
            (Some(_), None) => {
                let n = weps
                    .iter()
                    .filter(|(_, _, w)| w.spec.node == me && w.metadata.namespace == WEP_NAMESPACE)
                    .count();
                tracing::info!(
                    endpoints = n,
                    "reconcile: without the Docker API, WorkloadEndpoints are left alone"
                );
            }
            _ => {}
        }

        // 3. Allocations of ours in no WorkloadEndpoint, older than the grace period.
        let in_use: HashSet<IpAddr> = weps
            .iter()
            .filter(|(k, _, _)| !removed_keys.contains(k))
            .flat_map(|(_, _, w)| w.spec.ip_nets().unwrap_or_default())
            .map(|n| n.addr())
            .collect();
        for (block, _) in self.ipam.list_blocks(None).await? {
            for ip in block.allocated_ips() {
                // Docker gave it to a container of a network of another driver that uses
                // Calico IPAM (`-d macvlan --ipam-driver calico`): no WorkloadEndpoint, in use.
                if in_use.contains(&ip)
                    || docker_addresses.contains(&ip)
                    || report.addresses_released.contains(&ip)
                {
                    continue;
                }
                let Some(a) = allocation_of(&block, &ip) else {
                    continue;
                };
                if !self.is_ours(&a) || !older_than(a.timestamp, grace, now) {
                    continue;
                }
                if self.release_guarded(ip, &a.handle).await? {
                    tracing::info!(address = %ip, handle = %a.handle, "reconcile: released address in no WorkloadEndpoint");
                    report.addresses_released.push(ip);
                }
            }
        }
        Ok(report)
    }

    /// For `RequestAddress` of `ip` that found it allocated: frees it if its owner is
    /// provably gone (see the module documentation). True if freed (assign again).
    pub(crate) async fn reclaim_stale_address(&self, ip: IpAddr) -> Result<bool> {
        if self.check_node_owner().is_err() {
            // Another machine's endpoints look dead from here: never take their addresses.
            return Ok(false);
        }
        let me = self.settings.nodename.clone();
        let grace = self.settings.reconcile_grace;
        let now = Utc::now();
        let blocks = self.ipam.list_blocks(Some(IpFamily::of_addr(&ip))).await?;
        let Some(a) = blocks
            .iter()
            .find(|(b, _)| b.contains(&ip))
            .and_then(|(b, _)| allocation_of(b, &ip))
        else {
            return Ok(false);
        };
        if !self.is_ours(&a) {
            return Ok(false);
        }
        let holders: Vec<_> = self
            .all_weps()
            .await?
            .into_iter()
            .filter(|(_, _, w)| {
                w.spec
                    .ip_nets()
                    .unwrap_or_default()
                    .iter()
                    .any(|n| n.addr() == ip)
            })
            .collect();
        if holders.is_empty() {
            // No endpoint: a released-too-late allocation, or one whose CreateEndpoint is
            // still coming (then it is young).
            if !older_than(a.timestamp, grace, now) {
                return Ok(false);
            }
        } else {
            for (_, _, w) in &holders {
                if w.spec.node != me
                    || w.metadata.namespace != WEP_NAMESPACE
                    || !is_docker_id(&w.spec.endpoint)
                    || !older_than(w.metadata.creation_timestamp, grace, now)
                {
                    return Ok(false);
                }
                match self
                    .dataplane
                    .link_exists(&host_veth_name(&w.spec.endpoint))
                    .await
                {
                    Ok(false) => {}
                    _ => return Ok(false), // A live container (or unknown): keep it.
                }
            }
            for (key, rev, w) in &holders {
                match self.store.delete(key, Some(*rev)).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) if e.is_conflict() => return Ok(false),
                    Err(e) => return Err(e.context(format!("delete WorkloadEndpoint {key}"))),
                }
                self.forget_endpoint(&w.spec.endpoint).await;
                tracing::info!(
                    endpoint = %w.name(),
                    address = %ip,
                    "removed WorkloadEndpoint of a dead container to reassign its address"
                );
            }
        }
        let freed = self.release_guarded(ip, &a.handle).await?;
        if freed {
            tracing::info!(
                address = %ip,
                handle = %a.handle,
                "released stale allocation of a requested address (its container is gone)"
            );
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_times() {
        let t = Utc::now();
        let s = crate::model::go_time_string(&t);
        let back = parse_go_time(&s).unwrap();
        assert_eq!(back.timestamp_nanos_opt(), t.timestamp_nanos_opt());
        assert!(parse_go_time("2025-06-01 12:00:00 +0000 UTC").is_some());
        assert!(parse_go_time("2025-06-01 12:00:00.5 +0000 UTC m=+0.001").is_some());
        assert!(parse_go_time("2025-06-01T12:00:00Z").is_some());
        assert!(parse_go_time("yesterday").is_none());
        let g = Duration::from_secs(60);
        assert!(older_than(Some(t - chrono::Duration::seconds(61)), g, t));
        assert!(!older_than(Some(t - chrono::Duration::seconds(59)), g, t));
        assert!(!older_than(None, g, t));
    }
}
