//! Keeping the host's firewall rules (standalone mode) in step with this host's endpoints.
//!
//! The rule state lives in memory, is rebuilt from the datastore at start (this host's
//! WorkloadEndpoints and the IP pools), changes on CreateEndpoint/DeleteEndpoint and when
//! a network's endpoints move to its named profile. It is applied in Join (before the
//! container can send) and, for removals, in the background after DeleteEndpoint has
//! answered. Applying renders the whole rule set and writes only the difference, so it is
//! idempotent and removes what belongs to endpoints that went away.

use std::net::IpAddr;

use serde_json::Value;

use super::Driver;
use crate::dataplane::standalone::{
    self, EndpointRules, Family, Mode, PoolRules, PortMap, RuleState,
};
use crate::datastore::resources;
use crate::error::{Error, Result, ResultExt};
use crate::model::libnetwork::WEP_NAMESPACE;
use crate::model::resources::WorkloadEndpointPort;
use crate::model::{NumOrString, WorkloadEndpoint};

/// Which firewall the plugin keeps (`CALICO_LIBNETWORK_DATAPLANE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataplaneMode {
    /// `felix` when Felix's rules are on the host at start, else `standalone`.
    Auto,
    /// The plugin keeps forwarding, isolation, NAT outgoing and published ports.
    Standalone,
    /// Felix does policy and NAT outgoing; the plugin keeps only published ports.
    Felix,
    /// The plugin touches no firewall rule (published ports are refused).
    Off,
}

impl DataplaneMode {
    /// Parses `auto`, `standalone`, `felix` or `off`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Some(DataplaneMode::Auto),
            "standalone" => Some(DataplaneMode::Standalone),
            "felix" => Some(DataplaneMode::Felix),
            "off" | "none" => Some(DataplaneMode::Off),
            _ => None,
        }
    }
}

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
    applier: std::sync::Arc<std::sync::Mutex<standalone::Applier>>,
    /// A deferred apply is queued and has not read the state yet: further changes ride on it.
    queued: std::sync::atomic::AtomicBool,
    /// The state was rebuilt from the datastore at least once: until then an empty state
    /// says nothing about the endpoints running on this host.
    known: std::sync::atomic::AtomicBool,
    /// The last apply failed: the keeper applies again (with back-off) until one succeeds.
    failed: std::sync::atomic::AtomicBool,
    /// Wakes the keeper early (an apply failed).
    wake: tokio::sync::Notify,
    /// Numbers the state snapshots, so an apply never writes an older snapshot over a newer.
    seq: std::sync::atomic::AtomicU64,
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
                failed: Default::default(),
                wake: Default::default(),
                seq: Default::default(),
            }),
        }
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
            DataplaneMode::Auto => Some(auto_mode(standalone::felix_present())),
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
        let felix = tokio::task::spawn_blocking(standalone::felix_present)
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
        for e in self.inner.state.lock().await.endpoints.values_mut() {
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
        if changed {
            self.apply_soon();
        }
    }

    /// Takes the profiles of the endpoints it knows from their WorkloadEndpoints (this
    /// host's), and applies in the background if any changed. Endpoints it does not know
    /// are left alone: one being created may not be in the state yet.
    pub(crate) async fn refresh_profiles<'a>(
        &self,
        weps: impl Iterator<Item = &'a WorkloadEndpoint>,
    ) {
        if self.mode().is_none() {
            return;
        }
        let mut changed = false;
        {
            let mut state = self.inner.state.lock().await;
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
        for (id, rules) in found {
            state.endpoints.entry(id).or_insert(rules);
        }
        self.inner
            .known
            .store(true, std::sync::atomic::Ordering::SeqCst);
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
        let pools = self.inner.ipam.list_pools().await?;
        let (snapshot, seq) = {
            let mut state = self.inner.state.lock().await;
            state.pools = pools
                .iter()
                .filter_map(|p| {
                    Some(PoolRules {
                        cidr: p.spec.cidr_net().ok()?,
                        nat_outgoing: p.spec.nat_outgoing,
                    })
                })
                .collect();
            let seq = self
                .inner
                .seq
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            (state.clone(), seq)
        };
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

/// Whether a program of this host holds the port (a bind on it fails as in use). TCP and UDP
/// only; a bind is one instant system call.
fn held_by_host(p: &PortMap) -> bool {
    let ip = p
        .host_ip
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let addr = std::net::SocketAddr::new(ip, p.host_port);
    let res = match p.protocol.as_str() {
        "tcp" => std::net::TcpListener::bind(addr).map(drop),
        "udp" => std::net::UdpSocket::bind(addr).map(drop),
        _ => Ok(()),
    };
    matches!(res, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

/// Docker's protocol numbers in `com.docker.network.portmap`.
fn proto_name(n: u64) -> Option<&'static str> {
    match n {
        6 => Some("tcp"),
        17 => Some("udp"),
        132 => Some("sctp"),
        _ => None,
    }
}

/// Decodes Docker's `com.docker.network.portmap` option.
pub fn parse_portmap(options: &std::collections::BTreeMap<String, Value>) -> Result<Vec<PortMap>> {
    let Some(Value::Array(entries)) = options.get("com.docker.network.portmap") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries {
        let num = |k: &str| e.get(k).and_then(Value::as_u64).unwrap_or(0);
        let proto = proto_name(num("Proto")).ok_or_else(|| {
            Error::invalid(format!("publish port: unknown protocol {}", num("Proto")))
        })?;
        let port = num("Port");
        let host_port = num("HostPort");
        if host_port == 0 {
            // Remote drivers get no port from Docker's allocator: say so instead of guessing.
            return Err(Error::invalid(format!(
                "publish port {port}/{proto}: calico networks need an explicit host port (-p HOSTPORT:{port})"
            )));
        }
        if port == 0 || port > 65535 || host_port > 65535 {
            return Err(Error::invalid(format!(
                "publish port {host_port}:{port}: out of range"
            )));
        }
        let host_ip = match e.get("HostIP").and_then(Value::as_str).unwrap_or("") {
            "" | "0.0.0.0" | "::" => None,
            s => Some(s.parse::<IpAddr>().map_err(|_| {
                Error::invalid(format!(
                    "publish port {host_port}:{port}: invalid host address {s:?}"
                ))
            })?),
        };
        out.push(PortMap {
            protocol: proto.to_string(),
            host_ip,
            host_port: host_port as u16,
            port: port as u16,
        });
    }
    Ok(out)
}

/// The WorkloadEndpoint `ports` entries for published ports (Calico's shape).
pub fn wep_ports(ports: &[PortMap]) -> Vec<WorkloadEndpointPort> {
    ports
        .iter()
        .map(|p| WorkloadEndpointPort {
            name: String::new(),
            protocol: NumOrString::Str(p.protocol.to_ascii_uppercase()),
            port: p.port,
            host_port: p.host_port,
            host_ip: p.host_ip.map(|i| i.to_string()).unwrap_or_default(),
        })
        .collect()
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
    })
}

impl Driver {
    /// The firewall mode in force (`None`: the plugin keeps no rules).
    pub(crate) fn rule_mode(&self) -> Option<Mode> {
        self.rules.mode()
    }

    /// Records (not yet applies) the rules of an endpoint of this host. Its published ports
    /// are refused, in Docker's words, when another endpoint of this host publishes the same
    /// one or a program of the host holds it (a probe bind, as docker-proxy would do).
    pub(crate) async fn rules_add_endpoint(
        &self,
        endpoint_id: &str,
        rules: EndpointRules,
    ) -> Result<()> {
        if self.rule_mode().is_none() {
            return Ok(());
        }
        let mut state = self.rules.inner.state.lock().await;
        for p in &rules.ports {
            let taken = state
                .endpoints
                .iter()
                .filter(|(id, _)| id.as_str() != endpoint_id)
                .flat_map(|(_, e)| &e.ports)
                .any(|q| {
                    q.protocol == p.protocol
                        && q.host_port == p.host_port
                        && (q.host_ip.is_none() || p.host_ip.is_none() || q.host_ip == p.host_ip)
                });
            if taken || held_by_host(p) {
                return Err(Error::invalid(format!(
                    "publish port {}/{}: Bind for {}:{} failed: port is already allocated",
                    p.host_port,
                    p.protocol,
                    p.host_ip
                        .map_or_else(|| "0.0.0.0".to_string(), |ip| ip.to_string()),
                    p.host_port
                )));
            }
        }
        state.endpoints.insert(endpoint_id.to_string(), rules);
        Ok(())
    }

    /// Forgets an endpoint's rules and removes them from the host in the background.
    pub(crate) async fn rules_remove_endpoint(&self, endpoint_id: &str) {
        let removed = self
            .rules
            .inner
            .state
            .lock()
            .await
            .endpoints
            .remove(endpoint_id)
            .is_some();
        if removed {
            self.rules.apply_soon();
        }
    }

    /// Applies the current rule state now.
    pub(crate) async fn rules_apply(&self) -> Result<()> {
        self.rules.apply().await
    }

    /// Applies a queued change now and waits for any apply in progress (applies hold the
    /// state lock throughout): for a clean stop.
    pub async fn settle_rules(&self) {
        if self.rule_mode().is_none() {
            return;
        }
        if self
            .rules
            .inner
            .queued
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            if let Err(e) = self.rules.apply().await {
                tracing::warn!(error = %e, "apply firewall rules before stopping");
            }
        }
        let applier = self.rules.inner.applier.clone();
        let _ = tokio::task::spawn_blocking(move || {
            drop(applier.lock().unwrap_or_else(|p| p.into_inner()));
        })
        .await;
    }

    /// At a graceful stop: removes every rule and chain the plugin owns when this host has
    /// no endpoint left, so a stopped plugin leaves nothing behind; with endpoints (running
    /// containers) the rules stay and keep them working until the plugin is back. Returns
    /// whether the rules were removed. Nothing is removed while the endpoints are unknown
    /// (the start-up rebuild never succeeded) or in `off` mode (the plugin wrote nothing).
    pub async fn remove_rules_if_idle(&self) -> Result<bool> {
        if self.rule_mode().is_none() {
            return Ok(false);
        }
        if !self
            .rules
            .inner
            .known
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            // Stopped before the keeper loaded the endpoints (a stop right after start):
            // one bounded try now; without an answer, the rules stay.
            match tokio::time::timeout(std::time::Duration::from_secs(3), self.rules.load()).await {
                Ok(Ok(_)) => {}
                _ => return Ok(false),
            }
        }
        // Held throughout, so no apply can run (and write rules again) meanwhile.
        let state = self.rules.inner.state.lock().await;
        if !state.endpoints.is_empty() {
            return Ok(false);
        }
        let applier = self.rules.inner.applier.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let mut applier = applier.lock().unwrap_or_else(|p| p.into_inner());
            // Stopping: no apply still on its way may write the rules again.
            applier.close();
            standalone::remove_all()
        })
        .await
        .map_err(|e| Error::msg(format!("remove firewall rules: {e}")))??;
        drop(state);
        tracing::debug!(lines = removed, "firewall rules removed");
        Ok(true)
    }

    /// Loads the rule state from the datastore (retried with back-off until it answers) and
    /// applies it, then keeps the rules in place: every `rules_check_interval` (sooner, with
    /// back-off, after a failed apply) it checks them and rewrites what an `iptables -F` or
    /// a firewall reload took away. Returns at once; nothing to do in `off` mode.
    pub fn keep_rules_in_background(self: &std::sync::Arc<Self>) {
        let me = self.clone();
        super::supervise("firewall-keeper", move || {
            let driver = me.clone();
            async move { driver.keep_rules().await }
        });
    }

    async fn keep_rules(self: std::sync::Arc<Self>) {
        let driver = self;
        {
            driver.rules.resolve_mode().await;
            if driver.rule_mode().is_none() {
                return;
            }
            let mut delay = std::time::Duration::from_millis(500);
            loop {
                match driver.rebuild_rules().await {
                    Ok(n) => {
                        tracing::info!(endpoints = n, "firewall rules rebuilt");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "rebuild firewall rules; the running containers' rules are left as they are");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(10));
                    }
                }
            }
            let interval = driver.settings.rules_check_interval;
            let mut delay = interval;
            let mut backoff: Option<std::time::Duration> = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = driver.rules.inner.wake.notified() => {
                        // An apply failed: try again soon, backing off.
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
                match driver.rules.check_and_repair().await {
                    Ok(_) => {
                        backoff = None;
                        delay = interval;
                    }
                    Err(e) => {
                        let next = backoff.map_or(std::time::Duration::from_secs(1), |b| b * 2);
                        delay = next.min(interval);
                        backoff = Some(delay);
                        tracing::warn!(error = %e, retry_in = ?delay, "firewall rules not in place");
                    }
                }
            }
        }
    }

    /// A handle on the rule state for background tasks.
    pub(crate) fn rules(&self) -> Rules {
        self.rules.clone()
    }

    /// Loads the rule state from this host's WorkloadEndpoints (merged with endpoints made
    /// since the start) and applies it: rules of endpoints that no longer exist go, nothing
    /// is duplicated. Fails only when the datastore cannot be listed; the state then stays
    /// unknown and nothing is applied until a load succeeds.
    pub async fn rebuild_rules(&self) -> Result<usize> {
        if self.rule_mode().is_none() {
            return Ok(0);
        }
        let n = self.rules.load().await?;
        // Known now: a failed apply (iptables missing, the xtables lock held) is retried at
        // the next change and by the periodic rewrite.
        if let Err(e) = self.rules_apply().await {
            tracing::warn!(error = %e, "apply firewall rules; retried at the next change");
        }
        Ok(n)
    }
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
        let r = crate::dataplane::standalone::render(
            &crate::dataplane::standalone::RuleState {
                endpoints: [(id.clone(), good)].into_iter().collect(),
                pools: vec![],
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
