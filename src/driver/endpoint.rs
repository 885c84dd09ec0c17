//! Docker's network driver calls for endpoints: CreateEndpoint, Join, Leave and
//! DeleteEndpoint, with the veth dataplane they drive.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::{Driver, EndpointSpec, JoinInfo};
use crate::dataplane::{self, EndpointVeth};
use crate::datastore::resources;
use crate::error::{Error, Result, ResultExt};
use crate::model::libnetwork::{
    host_veth_name, short_id, temp_veth_name, CONTAINER_ANNOTATION, SANDBOX_ANNOTATION,
    WEP_NAMESPACE,
};
use crate::model::resources::{WorkloadEndpointSpec, ORCHESTRATOR_LIBNETWORK};
use crate::model::{keys, WorkloadEndpoint};

/// What Join needs of an endpoint, kept from CreateEndpoint.
#[derive(Clone, Debug)]
pub(crate) struct EndpointCache {
    ipv4: Vec<std::net::Ipv4Addr>,
    ipv6: Vec<std::net::Ipv6Addr>,
    mac: [u8; 6],
}

fn random_mac() -> [u8; 6] {
    let mut mac: [u8; 6] = rand::random();
    // Locally administered, unicast.
    mac[0] = (mac[0] | 0x02) & 0xfe;
    mac
}

impl Driver {
    fn wep_name(&self, endpoint_id: &str) -> Result<String> {
        crate::model::workload_endpoint_name(
            &self.settings.nodename,
            ORCHESTRATOR_LIBNETWORK,
            ORCHESTRATOR_LIBNETWORK,
            endpoint_id,
        )
    }

    /// `NetworkDriver.CreateEndpoint`: writes the WorkloadEndpoint. Returns the MAC we
    /// chose when Docker left it empty (Docker applies it to the container interface).
    ///
    /// All or nothing: Docker calls no DeleteEndpoint after a failed CreateEndpoint (it
    /// releases the address at once), so a failure after the write undoes it. The work runs on
    /// a task of its own, so the request deadline cannot cut it between the write and its
    /// undoing; when the deadline answered Docker first (Docker takes it as a failure), the
    /// task undoes what it did once it is done.
    pub async fn create_endpoint(self: &Arc<Self>, spec: EndpointSpec) -> Result<Option<String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let driver = self.clone();
        tokio::spawn(async move {
            let mut written = false;
            let res = driver.create_endpoint_once(&spec, &mut written).await;
            let failed = res.is_err();
            // Err from send: the handler is gone (deadline), Docker was told it failed.
            let abandoned = tx.send(res).is_err();
            if written && (failed || abandoned) {
                driver
                    .undo_create_endpoint(&spec.network_id, &spec.endpoint_id)
                    .await;
            }
        });
        rx.await
            .map_err(|_| Error::msg("create endpoint: the task doing it ended early"))?
    }

    /// Undoes a CreateEndpoint that failed after writing: the WorkloadEndpoint and the local
    /// state go (as DeleteEndpoint would do).
    async fn undo_create_endpoint(&self, network_id: &str, endpoint_id: &str) {
        match self.delete_endpoint(network_id, endpoint_id).await {
            Ok(()) => {
                tracing::info!(endpoint = %short_id(endpoint_id), "create endpoint failed: its WorkloadEndpoint was removed again")
            }
            Err(e) => tracing::warn!(
                endpoint = %short_id(endpoint_id), error = %e,
                "create endpoint failed and its WorkloadEndpoint could not be removed; reconciliation removes it"
            ),
        }
    }

    async fn create_endpoint_once(
        &self,
        spec: &EndpointSpec,
        written: &mut bool,
    ) -> Result<Option<String>> {
        let ipv4: Vec<std::net::Ipv4Addr> = spec
            .ipv4
            .iter()
            .filter_map(|n| match n.addr() {
                IpAddr::V4(a) => Some(a),
                _ => None,
            })
            .collect();
        let ipv6: Vec<std::net::Ipv6Addr> = spec
            .ipv6
            .iter()
            .filter_map(|n| match n.addr() {
                IpAddr::V6(a) => Some(a),
                _ => None,
            })
            .collect();
        if ipv4.is_empty() && ipv6.is_empty() {
            return Err(Error::invalid(
                "create endpoint: no address assigned for endpoint",
            ));
        }
        // Docker's port mapper belongs to its bridge driver: for a remote driver nothing
        // publishes `-p` unless we do (DNAT rules, see `rules`), so with the plugin's
        // firewall off, refuse rather than silently ignore it.
        let ports = super::rules::parse_portmap(&spec.options)?;
        if !ports.is_empty() && self.rule_mode().is_none() {
            return Err(Error::invalid(
                "published ports (-p) need the plugin's firewall rules, which are off (CALICO_LIBNETWORK_DATAPLANE=off)",
            ));
        }
        // Adopted only once the request is known to be acceptable: a refused one changes
        // nothing.
        let rec = match self.network_record(&spec.network_id).await? {
            Some(rec) => rec,
            // Docker never calls CreateNetwork again for a network it has: one we have no
            // record of (lost store, another datastore, the original plugins) is adopted.
            None => {
                let mut addrs: Vec<IpAddr> = ipv4.iter().map(|a| IpAddr::V4(*a)).collect();
                addrs.extend(ipv6.iter().map(|a| IpAddr::V6(*a)));
                self.adopt_network(&spec.network_id, &addrs).await?
            }
        };
        let (mac, filled) = match spec.mac {
            Some(m) => (m, None),
            None => {
                let m = random_mac();
                (m, Some(super::format_mac(m)))
            }
        };
        let mut ip_networks: Vec<String> = ipv4.iter().map(|a| format!("{a}/32")).collect();
        ip_networks.extend(ipv6.iter().map(|a| format!("{a}/128")));
        let name = self.wep_name(&spec.endpoint_id)?;
        let mut wep = WorkloadEndpoint::namespaced(
            WEP_NAMESPACE,
            &name,
            WorkloadEndpointSpec {
                orchestrator: ORCHESTRATOR_LIBNETWORK.to_string(),
                workload: ORCHESTRATOR_LIBNETWORK.to_string(),
                node: self.settings.nodename.clone(),
                endpoint: spec.endpoint_id.clone(),
                ip_networks,
                profiles: if rec.profile.is_empty() {
                    Vec::new()
                } else {
                    vec![rec.profile.clone()]
                },
                interface_name: host_veth_name(&spec.endpoint_id),
                mac: super::format_mac(mac),
                ports: super::rules::wep_ports(&ports),
                ..Default::default()
            },
        );
        wep.apply_calico_labels();
        let mut addrs: Vec<IpAddr> = ipv4.iter().map(|a| IpAddr::V4(*a)).collect();
        addrs.extend(ipv6.iter().map(|a| IpAddr::V6(*a)));
        if let Some(name) = self.take_container_name(&addrs) {
            wep.metadata
                .annotations
                .insert(CONTAINER_ANNOTATION.to_string(), name);
        }
        // From here on a failure (or the deadline) undoes the write: a put or create that
        // errored may still have been applied.
        *written = true;
        // The rules go into the state before the record is written (a published port held
        // by another endpoint or a host program is refused here) and before it is read again
        // below, so that a move seen there is followed, and one not seen yet finds them
        // (`rename_profile`).
        let mut ips: Vec<IpAddr> = ipv4.iter().map(|a| IpAddr::V4(*a)).collect();
        ips.extend(ipv6.iter().map(|a| IpAddr::V6(*a)));
        self.rules_add_endpoint(
            &spec.endpoint_id,
            crate::dataplane::iptables::EndpointRules {
                iface: host_veth_name(&spec.endpoint_id),
                ips,
                profiles: wep.spec.profiles.clone(),
                ports,
                // Known at Join.
                sandbox: String::new(),
            },
        )
        .await?;
        match resources::create(self.store.as_ref(), &mut wep).await {
            Ok(_) => {}
            Err(e) if e.is_exists() => {
                // Docker retrying the same endpoint: replace what an earlier attempt wrote,
                // keeping its identity (clientv3 never changes `uid` or `creationTimestamp`
                // on an update).
                let key = wep.key()?;
                if let Ok(Some(old)) =
                    resources::get::<WorkloadEndpointSpec>(self.store.as_ref(), &key).await
                {
                    wep.metadata.uid = old.metadata.uid;
                    wep.metadata.creation_timestamp = old.metadata.creation_timestamp;
                }
                wep.metadata.stamp_create();
                self.store
                    .put(&key, wep.to_json()?)
                    .await
                    .ctx(format!("write WorkloadEndpoint {name}"))?;
            }
            Err(e) => return Err(e.context(format!("create WorkloadEndpoint {name}"))),
        }
        // The network may have moved to its named profile meanwhile (a background task
        // learns the name): read the record again after our write, so that either we see
        // the move and follow it, or the mover saw our endpoint. Only the fallback moves.
        if !rec.profile.is_empty()
            && rec.profile == crate::model::libnetwork::fallback_profile(&spec.network_id)
        {
            if let Some(now) = self.network_record(&spec.network_id).await? {
                if !now.profile.is_empty() && now.profile != rec.profile {
                    let key = keys::workload_endpoint_key(WEP_NAMESPACE, &name);
                    super::profiles::move_wep_profile(
                        self.store.as_ref(),
                        &key,
                        &rec.profile,
                        &now.profile,
                    )
                    .await?;
                    self.rules()
                        .rename_profile(&rec.profile, &now.profile)
                        .await;
                }
            }
        }
        // Container labels: Docker shows the endpoint's container only after Join, so a
        // task of its own waits for it (never this handler).
        if self.settings.label_endpoints {
            if let Some(bg) = self.background() {
                let (net, ep) = (spec.network_id.clone(), spec.endpoint_id.clone());
                let key = keys::workload_endpoint_key(WEP_NAMESPACE, &name);
                tokio::spawn(async move { bg.label_endpoint(&net, &ep, &key).await });
            }
        }
        self.endpoints
            .lock()
            .unwrap()
            .insert(spec.endpoint_id.clone(), EndpointCache { ipv4, ipv6, mac });
        Ok(filled)
    }

    pub(crate) async fn endpoint_cache(&self, endpoint_id: &str) -> Result<EndpointCache> {
        if let Some(c) = self.endpoints.lock().unwrap().get(endpoint_id) {
            return Ok(c.clone());
        }
        // After a restart: the WorkloadEndpoint has all we need.
        let name = self.wep_name(endpoint_id)?;
        let key = keys::workload_endpoint_key(WEP_NAMESPACE, &name);
        let wep: WorkloadEndpoint = resources::get(self.store.as_ref(), &key)
            .await?
            .ok_or_else(|| Error::msg(format!("join: endpoint {endpoint_id} was never created")))?;
        let mut c = EndpointCache {
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            mac: super::parse_mac(&wep.spec.mac)?,
        };
        for n in wep.spec.ip_nets()? {
            match n.addr() {
                IpAddr::V4(a) => c.ipv4.push(a),
                IpAddr::V6(a) => c.ipv6.push(a),
            }
        }
        self.endpoints
            .lock()
            .unwrap()
            .insert(endpoint_id.to_string(), c.clone());
        Ok(c)
    }

    /// `NetworkDriver.Join`: creates the veth pair and answers the gateway and the
    /// container's routes. `sandbox` is Docker's `SandboxKey` (the container's netns path):
    /// each Calico endpoint of one container gets its own gateway (see `super::sandbox`).
    pub async fn join(
        &self,
        network_id: &str,
        endpoint_id: &str,
        sandbox: &str,
    ) -> Result<JoinInfo> {
        let ep = self.endpoint_cache(endpoint_id).await?;
        // The network's own IPv4 pools (`--subnet`, `ipv4-pools=`) get a route via this
        // endpoint's gateway, so a container on several networks reaches each network's
        // containers through that network's interface. Best effort: without them the
        // default route still reaches every Calico address.
        let cached = self.network_pools.lock().unwrap().get(network_id).cloned();
        let pools: Vec<IpNet> = match cached {
            Some(p) => Ok(p),
            None => self.network_record(network_id).await.map(|rec| {
                let p: Vec<IpNet> = rec
                    .map(|r| r.ipv4_pools)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|p| p.parse().ok())
                    .collect();
                self.network_pools
                    .lock()
                    .unwrap()
                    .insert(network_id.to_string(), p.clone());
                p
            }),
        }
        .or_else(|e| -> Result<Vec<IpNet>> {
            tracing::warn!(network = %network_id, error = %e, "join: network pools unknown, no pool routes");
            Ok(Vec::new())
        })?;
        let info = self
            .dataplane
            .setup_endpoint_veth(EndpointVeth {
                host_name: host_veth_name(endpoint_id),
                temp_name: temp_veth_name(endpoint_id),
                mtu: self.settings.veth_mtu,
                ipv4: ep.ipv4.clone(),
                ipv6: ep.ipv6.clone(),
                container_mac: Some(ep.mac),
                // With the firewall off there is no loopback guard (and no published port).
                no_route_localnet: self.rule_mode().is_none(),
            })
            .await
            .ctx(format!("join endpoint {}", short_id(endpoint_id)))?;
        // Its container's other endpoints share their networks' membership with it (and it
        // with them) from this apply on. Recorded once the endpoints are known: after a
        // restart between CreateEndpoint and Join, this endpoint is not in the state before.
        let known = self.rules().ensure_known().await;
        if known.is_ok() {
            self.rules().set_sandbox(endpoint_id, sandbox).await;
        }
        // The host firewall for this endpoint (forwarding past Docker's FORWARD DROP,
        // isolation, published ports). Without it the endpoint's traffic is dropped (ours
        // drops unknown cali interfaces) and its ports go nowhere: fail, so Docker rolls the
        // container's start back and says why.
        let applied = match known {
            Ok(()) => self.rules_apply().await,
            Err(e) => Err(e),
        };
        if let Err(e) = applied {
            let e = e.context(format!(
                "join endpoint {}: install its firewall rules",
                short_id(endpoint_id)
            ));
            return Err(self.undo_join(endpoint_id, e).await);
        }
        if !ep.ipv6.is_empty() {
            if let Err(e) = dataplane::sysctl::ensure_ipv6_forwarding().await {
                tracing::warn!(error = %e, "could not turn on IPv6 forwarding; IPv6 traffic will not be routed");
            }
        }
        let plan = match self.sandboxes.join(
            sandbox,
            endpoint_id,
            !ep.ipv4.is_empty(),
            info.host_ipv6_link_local,
            &pools,
        ) {
            Ok(plan) => plan,
            Err(e) => return Err(self.undo_join(endpoint_id, e).await),
        };
        self.record_sandbox(endpoint_id, sandbox).await;
        Ok(JoinInfo {
            src_name: temp_veth_name(endpoint_id),
            dst_prefix: self.settings.ifprefix.clone(),
            gateway: plan.gateway,
            gateway_ipv6: info.host_ipv6_link_local,
            static_routes: plan.routes,
        })
    }

    /// `NetworkDriver.Leave` (idempotent): removes the veth pair and its routes, after
    /// answering.
    pub async fn leave(&self, _network_id: &str, endpoint_id: &str) -> Result<()> {
        self.sandboxes.leave(endpoint_id);
        if self.rules().set_sandbox(endpoint_id, "").await {
            self.rules().apply_soon();
        }
        // Leave comes before Docker moves the interface back, so delete via the host end.
        // Deleting a link waits for an RCU grace period (about 10 ms) and nothing Docker does
        // next needs it gone: it moves the container end back or finds it gone, and
        // DeleteEndpoint deletes it again if it is still there. So answer first.
        let dp = self.dataplane.clone();
        let name = host_veth_name(endpoint_id);
        tokio::spawn(async move {
            if let Err(e) = dp.teardown_endpoint_veth(&name).await {
                tracing::warn!(host = %name, error = %e, "leave: delete veth; DeleteEndpoint retries");
            }
        });
        Ok(())
    }

    /// `NetworkDriver.DeleteEndpoint` (idempotent).
    pub async fn delete_endpoint(&self, _network_id: &str, endpoint_id: &str) -> Result<()> {
        let name = self.wep_name(endpoint_id)?;
        // Every step runs whatever an earlier one said; the errors are reported together.
        let mut errors = Vec::new();
        // While Calico's datastore is locked, or the lock cannot be read (the datastore does
        // not answer), the record stays, for reconciliation.
        if let Err(e) = self.check_ready().await {
            errors.push(e);
        } else {
            match self
                .store
                .delete(&keys::workload_endpoint_key(WEP_NAMESPACE, &name), None)
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => errors.push(e.context(format!("delete WorkloadEndpoint {name}"))),
            }
        }
        // The local state goes whatever the datastore said: Docker forgets the endpoint and
        // releases its address even when this call fails, so rules left here would follow
        // the address to its next owner. The record left behind is reconciliation's.
        self.endpoints.lock().unwrap().remove(endpoint_id);
        self.sandboxes.leave(endpoint_id);
        // Its rules go in the background, after this answer.
        self.rules_remove_endpoint(endpoint_id).await;
        // In case Leave never came (a crashed container start): the veth goes too.
        let veth = host_veth_name(endpoint_id);
        if let Err(e) = self.dataplane.teardown_endpoint_veth(&veth).await {
            errors.push(e.context(format!("delete veth {veth}")));
        }
        Error::from_list(errors)
    }

    /// Records on the endpoint's WorkloadEndpoint the sandbox it joined
    /// ([`SANDBOX_ANNOTATION`]), so that the membership it gives survives a plugin restart.
    /// Best effort: the rules in memory have it already, and a failure is logged.
    async fn record_sandbox(&self, endpoint_id: &str, sandbox: &str) {
        if sandbox.is_empty() {
            return;
        }
        let key = match self.wep_name(endpoint_id) {
            Ok(name) => keys::workload_endpoint_key(WEP_NAMESPACE, &name),
            Err(_) => return,
        };
        let res =
            resources::update_with::<WorkloadEndpointSpec, _>(self.store.as_ref(), &key, |w| {
                let old = w
                    .metadata
                    .annotations
                    .insert(SANDBOX_ANNOTATION.to_string(), sandbox.to_string());
                old.as_deref() != Some(sandbox)
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(
                endpoint = %short_id(endpoint_id), error = %e,
                "join: record the container sandbox on the WorkloadEndpoint; after a plugin restart its other networks' peers may not reach it until it joins again"
            );
        }
    }

    /// Join failed after the veth was made: removes it again and returns `cause`, with the
    /// removal's own failure added.
    async fn undo_join(&self, endpoint_id: &str, cause: Error) -> Error {
        let veth = host_veth_name(endpoint_id);
        match self.dataplane.teardown_endpoint_veth(&veth).await {
            Ok(()) => cause,
            Err(e) => Error::from_list(vec![cause, e.context(format!("roll back veth {veth}"))])
                .unwrap_err(),
        }
    }
}
