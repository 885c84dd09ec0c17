//! Keeping the host's firewall rules (standalone mode) in step with this host's endpoints.
//!
//! The rule state lives in memory, is rebuilt from the datastore at start (this host's
//! WorkloadEndpoints and the IP pools), changes on CreateEndpoint/DeleteEndpoint and when
//! a network's endpoints move to its named profile. It is applied in Join (before the
//! container can send) and, for removals, in the background after DeleteEndpoint has
//! answered. Applying renders the whole rule set and writes only the difference, so it is
//! idempotent and removes what belongs to endpoints that went away.

use std::net::IpAddr;

use crate::dataplane::iptables::{
    self, EndpointRules, Family, Mode, PoolRules, PortMap, RuleState,
};
use crate::datastore::resources;
use crate::error::{Error, Result, ResultExt};
use crate::model::libnetwork::WEP_NAMESPACE;
use crate::model::{NumOrString, WorkloadEndpoint};

mod keeper;
mod ports;

use crate::dataplane::iptables::DataplaneMode;
use ports::{held_by_host, proto_name};
pub use ports::{parse_portmap, wep_ports};

const UNDECIDED: u8 = 0;

fn encode_mode(mode: Option<Mode>) -> u8 {
    match mode {
        None => 1,
        Some(Mode::Standalone) => 2,
        Some(Mode::Felix) => 3,
    }
}

fn decode_mode(v: u8) -> Option<Mode> {
    match v {
        2 => Some(Mode::Standalone),
        3 => Some(Mode::Felix),
        _ => None,
    }
}

fn mode_name(mode: Option<Mode>) -> &'static str {
    match mode {
        None => "off",
        Some(Mode::Standalone) => "standalone",
        Some(Mode::Felix) => "felix",
    }
}

/// `auto`: Felix's rules on the host mean Felix is in charge of filtering.
fn auto_mode(felix: bool) -> Mode {
    if felix {
        Mode::Felix
    } else {
        Mode::Standalone
    }
}

/// The rule state and the mode it is applied in. Cheap to clone: clones share one state,
/// so background tasks (profile moves, deferred applies) can change and apply it.
#[derive(Clone)]
pub(crate) struct Rules {
    inner: std::sync::Arc<RulesInner>,
}

struct RulesInner {
    /// The mode in force: 0 not decided yet, then [`encode_mode`]'s values. `auto` is
    /// decided at start and looked at again at every rules check (Felix may start later).
    mode: std::sync::atomic::AtomicU8,
    configured: DataplaneMode,
    /// This host's Calico node name: whose WorkloadEndpoints the rules are made from.
    nodename: String,
    /// Pools are read fresh for every apply (NAT outgoing follows pool changes made by
    /// calicoctl or other hosts).
    ipam: crate::ipam::Ipam,
    state: tokio::sync::Mutex<RuleState>,
    /// Remembers what was applied, so an unchanged family costs nothing and a change one
    /// small iptables-restore.
    applier: std::sync::Arc<std::sync::Mutex<iptables::Applier>>,
    /// A deferred apply is queued and has not read the state yet: further changes ride on it.
    queued: std::sync::atomic::AtomicBool,
    /// The state was rebuilt from the datastore at least once: until then an empty state
    /// says nothing about the endpoints running on this host.
    known: std::sync::atomic::AtomicBool,
    /// Endpoints removed before the state was known (changed only under the state lock): a
    /// load that listed their WorkloadEndpoints before DeleteEndpoint removed them must not
    /// bring them back.
    removed_before_known: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The last apply failed: the keeper applies again (with back-off) until one succeeds.
    failed: std::sync::atomic::AtomicBool,
    /// Wakes the keeper early (an apply failed).
    wake: tokio::sync::Notify,
    /// Numbers the state snapshots, so an apply never writes an older snapshot over a newer.
    seq: std::sync::atomic::AtomicU64,
    /// Other hosts' workloads are routed here (see [`RuleState::other_hosts`]).
    other_hosts: std::sync::atomic::AtomicBool,
    /// Counts profile moves (changed only under the state lock): a profile refresh made
    /// from WorkloadEndpoints listed before a move must not undo it.
    profile_moves: std::sync::atomic::AtomicU64,
}

impl Rules {
    pub(crate) fn new(configured: DataplaneMode, ipam: crate::ipam::Ipam, nodename: &str) -> Self {
        Rules {
            inner: std::sync::Arc::new(RulesInner {
                mode: std::sync::atomic::AtomicU8::new(UNDECIDED),
                configured,
                nodename: nodename.to_string(),
                ipam,
                state: Default::default(),
                applier: Default::default(),
                queued: Default::default(),
                known: Default::default(),
                removed_before_known: Default::default(),
                failed: Default::default(),
                wake: Default::default(),
                seq: Default::default(),
                other_hosts: Default::default(),
                profile_moves: Default::default(),
            }),
        }
    }

    /// The applier (shared): the members keeper asks it which sets the rules match.
    pub(crate) fn applier(&self) -> std::sync::Arc<std::sync::Mutex<iptables::Applier>> {
        self.inner.applier.clone()
    }

    /// Takes `endpoint_id` out of `state` (held by the caller); before the state is known,
    /// remembers it so that a load in flight does not bring it back. Whether it was there.
    fn forget_endpoint(&self, state: &mut RuleState, endpoint_id: &str) -> bool {
        // With the firewall off no load ever runs to clear them.
        if self.inner.configured != DataplaneMode::Off
            && !self.inner.known.load(std::sync::atomic::Ordering::SeqCst)
        {
            self.inner
                .removed_before_known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(endpoint_id.to_string());
        }
        state.endpoints.remove(endpoint_id).is_some()
    }

    /// Records `rules` for `endpoint_id` in `state` (held by the caller): a new endpoint
    /// under an ID removed before the state was known is live again.
    fn record_endpoint(&self, state: &mut RuleState, endpoint_id: &str, rules: EndpointRules) {
        self.inner
            .removed_before_known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(endpoint_id);
        state.endpoints.insert(endpoint_id.to_string(), rules);
    }

    /// Accept traffic from other hosts' workloads (routes between hosts are on).
    pub(crate) fn set_other_hosts(&self, on: bool) {
        self.inner
            .other_hosts
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// The firewall mode in force (`None`: the plugin keeps no rules). `Auto` is decided
    /// by [`Rules::resolve_mode`] at start (here, if something asks before it ran) and
    /// again at every rules check.
    pub(crate) fn mode(&self) -> Option<Mode> {
        let now = self.inner.mode.load(std::sync::atomic::Ordering::SeqCst);
        if now != UNDECIDED {
            return decode_mode(now);
        }
        let mode = match self.inner.configured {
            DataplaneMode::Off => None,
            DataplaneMode::Standalone => Some(Mode::Standalone),
            DataplaneMode::Felix => Some(Mode::Felix),
            DataplaneMode::Auto => Some(auto_mode(iptables::felix_present())),
        };
        self.set_mode(mode);
        mode
    }

    /// Records `mode`; true (and logged) when it changed.
    fn set_mode(&self, mode: Option<Mode>) -> bool {
        let old = self
            .inner
            .mode
            .swap(encode_mode(mode), std::sync::atomic::Ordering::SeqCst);
        if old == encode_mode(mode) {
            return false;
        }
        tracing::info!(
            mode = mode_name(mode),
            configured = ?self.inner.configured,
            previous = mode_name(decode_mode(old)),
            "dataplane mode chosen"
        );
        true
    }

    /// Decides (or, for `auto`, decides again) the mode with Felix's detection (iptables and
    /// nft subprocesses) on the blocking pool, never on an async worker. True when it
    /// changed from a decided mode.
    pub(crate) async fn resolve_mode(&self) -> bool {
        if self.inner.configured != DataplaneMode::Auto {
            self.mode();
            return false;
        }
        let felix = tokio::task::spawn_blocking(iptables::felix_present)
            .await
            .unwrap_or(false);
        let decided = self.inner.mode.load(std::sync::atomic::Ordering::SeqCst) != UNDECIDED;
        self.set_mode(Some(auto_mode(felix))) && decided
    }

    /// Replaces profile `from` by `to` on this host's endpoints (a network's name was
    /// learned and its endpoints moved to the named profile) and applies the change in the
    /// background.
    pub(crate) async fn rename_profile(&self, from: &str, to: &str) {
        if self.mode().is_none() {
            return;
        }
        // Not before this host's endpoints are loaded (normally milliseconds after start;
        // at most 10 s): a load that listed them before the move would bring the old
        // profile back after the rename. (Reconciliation's profile refresh mends it anyway.)
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.inner.known.load(std::sync::atomic::Ordering::SeqCst)
            && std::time::Instant::now() < until
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let mut changed = false;
        let mut state = self.inner.state.lock().await;
        self.inner
            .profile_moves
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        for e in state.endpoints.values_mut() {
            if e.profiles.iter().any(|p| p == from) {
                let mut profiles: Vec<String> = Vec::new();
                for p in &e.profiles {
                    let p = if p == from { to } else { p.as_str() };
                    if !p.is_empty() && !profiles.iter().any(|q| q == p) {
                        profiles.push(p.to_string());
                    }
                }
                e.profiles = profiles;
                changed = true;
            }
        }
        drop(state);
        if changed {
            self.apply_soon();
        }
    }

    /// Loads this host's endpoints unless they are known already: before anything judges
    /// the state (who publishes a port) or records into an endpoint it may not hold yet (a
    /// Join's sandbox).
    pub(crate) async fn ensure_known(&self) -> Result<()> {
        if self.mode().is_none() || self.inner.known.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        self.load()
            .await
            .map(|_| ())
            .map_err(|e| e.context("this host's endpoints are not known yet"))
    }

    /// How many profile moves this host has made: read before listing the
    /// WorkloadEndpoints given to [`Rules::refresh_profiles`].
    pub(crate) fn profile_moves(&self) -> u64 {
        self.inner
            .profile_moves
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records the sandbox `endpoint_id` joined (`""` after Leave). True when it changed;
    /// the caller applies. An endpoint not in the state (firewall off) is no change.
    pub(crate) async fn set_sandbox(&self, endpoint_id: &str, sandbox: &str) -> bool {
        let mut state = self.inner.state.lock().await;
        match state.endpoints.get_mut(endpoint_id) {
            Some(e) if e.sandbox != sandbox => {
                e.sandbox = sandbox.to_string();
                true
            }
            _ => false,
        }
    }

    /// Takes the profiles of the endpoints it knows from their WorkloadEndpoints (this
    /// host's), and applies in the background if any changed. Endpoints it does not know
    /// are left alone: one being created may not be in the state yet. `moves_before`: what
    /// [`Rules::profile_moves`] said before the list was taken; a move made since (the list
    /// may hold the profiles from before it) skips this refresh, the next one follows.
    pub(crate) async fn refresh_profiles<'a>(
        &self,
        moves_before: u64,
        weps: impl Iterator<Item = &'a WorkloadEndpoint>,
    ) {
        if self.mode().is_none() {
            return;
        }
        let mut changed = false;
        {
            let mut state = self.inner.state.lock().await;
            if self.profile_moves() != moves_before {
                tracing::debug!("profiles moved while the WorkloadEndpoints were listed: profile refresh left to the next pass");
                return;
            }
            for w in weps {
                if let Some(e) = state.endpoints.get_mut(&w.spec.endpoint) {
                    if e.profiles != w.spec.profiles {
                        e.profiles.clone_from(&w.spec.profiles);
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.apply_soon();
        }
    }

    /// Loads this host's endpoints from its WorkloadEndpoints into the state, merged with
    /// the endpoints recorded since the start (they are newer), and marks the state known.
    /// Records are decoded one by one: one that does not decode is skipped and logged, never
    /// a reason to know nothing. Returns how many endpoints were loaded.
    async fn load(&self) -> Result<usize> {
        let store = self.inner.ipam.store();
        let kvs = store
            .list(&WorkloadEndpoint::list_prefix(Some(WEP_NAMESPACE)))
            .await
            .ctx("list WorkloadEndpoints for the firewall rules")?;
        let mut found = Vec::new();
        for kv in &kvs {
            match resources::decode::<crate::model::resources::WorkloadEndpointSpec>(kv) {
                Ok(w) if w.spec.node == self.inner.nodename => {
                    if let Some(rules) = rules_of(&w) {
                        found.push((w.spec.endpoint.clone(), rules));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "skipping a WorkloadEndpoint that does not decode");
                }
            }
        }
        let n = found.len();
        let mut state = self.inner.state.lock().await;
        if self.inner.known.load(std::sync::atomic::Ordering::SeqCst) {
            // Another load (a stop's, the keeper's) ended first: the state is whole and has
            // every change since, so this list can only bring back endpoints deleted since.
            return Ok(n);
        }
        let mut removed = self
            .inner
            .removed_before_known
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (id, rules) in found {
            // Listed before its DeleteEndpoint took it away: gone, not to be brought back.
            if !removed.contains(&id) {
                state.endpoints.entry(id).or_insert(rules);
            }
        }
        self.inner
            .known
            .store(true, std::sync::atomic::Ordering::SeqCst);
        removed.clear();
        Ok(n)
    }

    /// Applies the current state (IPv4; IPv6 best effort), with the pools read fresh.
    /// Until this host's endpoints are known (loaded from the datastore once), nothing is
    /// applied: a rule set rendered without them would delete the running containers'
    /// rules. The load is tried first, so the state becomes known as soon as the datastore
    /// answers.
    pub(crate) async fn apply(&self) -> Result<()> {
        let Some(mode) = self.mode() else {
            return Ok(());
        };
        if !self.inner.known.load(std::sync::atomic::Ordering::SeqCst) {
            self.load().await.map_err(|e| {
                e.context("apply firewall rules: this host's endpoints are not known yet")
            })?;
        }
        // Cleared before anything can fail: a change made from here on queues an apply of
        // its own (at worst one too many, never one lost).
        self.inner
            .queued
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let res = self.apply_snapshot(mode).await;
        if res.is_err() {
            self.inner
                .failed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.inner.wake.notify_one();
        }
        res
    }

    async fn apply_snapshot(&self, mode: Mode) -> Result<()> {
        let (mut snapshot, seq) = {
            let mut state = self.inner.state.lock().await;
            state.other_hosts = self
                .inner
                .other_hosts
                .load(std::sync::atomic::Ordering::SeqCst);
            let seq = self
                .inner
                .seq
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            (state.clone(), seq)
        };
        // Listed after the sequence number is taken: a later number lists later, so the
        // apply that wins never has an older pool list than one it refused (a slow list
        // taken first would otherwise take a new pool's NAT rule away).
        let pools = self.inner.ipam.list_pools().await?;
        snapshot.pools = pools
            .iter()
            .filter_map(|p| {
                Some(PoolRules {
                    cidr: p.spec.cidr_net().ok()?,
                    nat_outgoing: p.spec.nat_outgoing,
                })
            })
            .collect();
        // No async lock is held while iptables runs; the applier's own lock keeps two
        // applies from interleaving, and its sequence check from going back in time.
        let applier = self.inner.applier.clone();
        tokio::task::spawn_blocking(move || {
            let mut applier = applier.lock().unwrap_or_else(|p| p.into_inner());
            if !applier.take_turn(seq) {
                return Ok(());
            }
            applier.apply(&snapshot, Family::V4, mode)?;
            if let Err(e) = applier.apply(&snapshot, Family::V6, mode) {
                tracing::debug!(error = %e, "IPv6 rules not applied (ip6tables missing or IPv6 off?)");
            }
            Ok::<_, Error>(())
        })
        .await
        .map_err(|e| Error::msg(format!("apply firewall rules: {e}")))?
    }

    /// Checks that the rules last applied are all still in place (chains, their rule
    /// counts, the jumps into them) and rewrites everything when not, or when the last apply
    /// failed. Returns whether it rewrote.
    pub(crate) async fn check_and_repair(&self) -> Result<bool> {
        if self.mode().is_none() {
            return Ok(false);
        }
        if self.resolve_mode().await {
            // Felix came (or went): the rule set of the new mode, written in full.
            self.apply().await?;
            return Ok(true);
        }
        if !self.inner.known.load(std::sync::atomic::Ordering::SeqCst) {
            self.apply().await?;
            return Ok(true);
        }
        let failed = self
            .inner
            .failed
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        let applier = self.inner.applier.clone();
        let intact = tokio::task::spawn_blocking(move || {
            let mut applier = applier.lock().unwrap_or_else(|p| p.into_inner());
            let intact = applier.verify(Family::V4)? && applier.verify(Family::V6).unwrap_or(true);
            if !intact || failed {
                // The next apply rewrites everything and re-checks the jumps.
                applier.invalidate();
            }
            Ok::<_, Error>(intact)
        })
        .await
        .map_err(|e| Error::msg(format!("check firewall rules: {e}")))??;
        if intact && !failed {
            return Ok(false);
        }
        if !intact {
            tracing::warn!("firewall rules of the plugin were changed or removed behind its back: rewriting them");
        }
        self.apply().await?;
        Ok(true)
    }

    /// Applies the current state after the caller has answered (removals: a rule left for
    /// a moment for an endpoint that is gone harms nothing, and the next apply, deferred
    /// or not, renders the whole state anyway). Changes made while one is queued ride on it.
    pub(crate) fn apply_soon(&self) {
        if self.mode().is_none()
            || self
                .inner
                .queued
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let rules = self.clone();
        tokio::spawn(async move {
            if let Err(e) = rules.apply().await {
                tracing::warn!(error = %e, "apply firewall rules; the next change re-applies");
            }
        });
    }
}

/// The rules of a stored WorkloadEndpoint of this host, or `None` for a record that is not
/// one of ours as we write them. Stored text never reaches `iptables-restore` as it is (any
/// writer of the datastore could put a newline and `COMMIT` in it): the interface name is
/// derived from the endpoint ID (and must match the stored one), protocols are tcp, udp or
/// sctp, host addresses parse; a port that fails is skipped, and each is logged.
fn rules_of(wep: &WorkloadEndpoint) -> Option<EndpointRules> {
    let id = &wep.spec.endpoint;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        tracing::warn!(endpoint = %id.escape_default(), "skipping a WorkloadEndpoint whose endpoint is not a Docker ID");
        return None;
    }
    let iface = crate::model::libnetwork::host_veth_name(id);
    if wep.spec.interface_name != iface {
        tracing::warn!(
            endpoint = %id,
            interface = %wep.spec.interface_name.escape_default(),
            "skipping a WorkloadEndpoint whose interface is not the one its endpoint ID names"
        );
        return None;
    }
    let ports = wep
        .spec
        .ports
        .iter()
        .filter(|p| p.host_port != 0)
        .filter_map(|p| {
            let protocol = match &p.protocol {
                NumOrString::Str(s) => ["tcp", "udp", "sctp"]
                    .into_iter()
                    .find(|known| s.eq_ignore_ascii_case(known)),
                NumOrString::Num(n) => proto_name(*n),
            };
            let host_ip = match p.host_ip.as_str() {
                "" => Ok(None),
                s => s.parse::<IpAddr>().map(Some),
            };
            match (protocol, host_ip) {
                (Some(protocol), Ok(host_ip)) => Some(PortMap {
                    protocol: protocol.to_string(),
                    host_ip,
                    host_port: p.host_port,
                    port: p.port,
                }),
                _ => {
                    tracing::warn!(
                        endpoint = %id,
                        port = ?p,
                        "skipping a published port with an unknown protocol or host address"
                    );
                    None
                }
            }
        })
        .collect();
    Some(EndpointRules {
        iface,
        ips: wep
            .spec
            .ip_nets()
            .unwrap_or_default()
            .iter()
            .map(|n| n.addr())
            .collect(),
        profiles: wep.spec.profiles.clone(),
        ports,
        sandbox: wep
            .metadata
            .annotations
            .get(crate::model::libnetwork::SANDBOX_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn portmap_decodes_docker_option() {
        let mut o = std::collections::BTreeMap::new();
        o.insert(
            "com.docker.network.portmap".to_string(),
            json!([{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":18080,"HostPortEnd":18080},
                   {"Proto":17,"IP":"","Port":53,"HostIP":"127.0.0.1","HostPort":5353,"HostPortEnd":5353}]),
        );
        let p = parse_portmap(&o).unwrap();
        assert_eq!(
            p[0],
            PortMap {
                protocol: "tcp".into(),
                host_ip: None,
                host_port: 18080,
                port: 80
            }
        );
        assert_eq!(p[1].protocol, "udp");
        assert_eq!(p[1].host_ip, Some("127.0.0.1".parse().unwrap()));
        let w = wep_ports(&p);
        assert_eq!(serde_json::to_value(&w[0]).unwrap()["protocol"], "TCP");
    }

    /// Stored text never reaches iptables-restore: an interface name that is not the one
    /// the endpoint ID gives (here with a newline and COMMIT in it), or an unknown protocol.
    #[test]
    fn stored_endpoints_are_checked_before_they_become_rules() {
        let id = "ab".repeat(32);
        let wep = |iface: &str, proto: &str, host_ip: &str| -> WorkloadEndpoint {
            serde_json::from_value(json!({
                "kind": "WorkloadEndpoint",
                "apiVersion": "projectcalico.org/v3",
                "metadata": {"name": "n", "namespace": "libnetwork"},
                "spec": {
                    "node": "h", "orchestrator": "libnetwork", "endpoint": id,
                    "interfaceName": iface, "ipNetworks": ["10.0.0.5/32"],
                    "profiles": ["net1"],
                    "ports": [{"name": "", "protocol": proto, "port": 80, "hostPort": 8080, "hostIP": host_ip}]
                }
            }))
            .unwrap()
        };
        let good = rules_of(&wep("caliabababababa", "TCP", "")).unwrap();
        assert_eq!(good.iface, "caliabababababa");
        assert_eq!(good.ports[0].protocol, "tcp");
        assert!(rules_of(&wep("caliabababababa\nCOMMIT\n*filter\n-F", "TCP", "")).is_none());
        assert!(rules_of(&wep("calixxxxxxxxxxx", "TCP", "")).is_none());
        let bad = rules_of(&wep("caliabababababa", "tcp\nCOMMIT", "")).unwrap();
        assert!(bad.ports.is_empty());
        let bad = rules_of(&wep("caliabababababa", "udp", "not-an-address")).unwrap();
        assert!(bad.ports.is_empty(), "{bad:?}");
        let r = crate::dataplane::iptables::render(
            &crate::dataplane::iptables::RuleState {
                endpoints: [(id.clone(), good)].into_iter().collect(),
                pools: vec![],
                other_hosts: false,
            },
            Family::V4,
            Mode::Standalone,
        );
        assert!(r
            .filter
            .contains("-A CLN-FROM-WL -i caliabababababa -s 10.0.0.5/32 -j RETURN"));
    }

    #[test]
    fn portmap_without_host_port_is_refused() {
        let mut o = std::collections::BTreeMap::new();
        o.insert(
            "com.docker.network.portmap".to_string(),
            json!([{"Proto":6,"Port":80,"HostPort":0}]),
        );
        let e = parse_portmap(&o).unwrap_err().to_string();
        assert!(e.contains("explicit host port"), "{e}");
    }
}
