//! Docker's network and IPAM driver calls, on top of the allocator and the dataplane.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use serde_json::Value;

use crate::datastore::Datastore;
use crate::error::Result;
use crate::ipam::Ipam;

pub mod docker;
pub mod endpoint;
pub mod heartbeat;
pub mod init;
pub mod ipam;
pub mod members;
pub mod network;
pub mod node_address;
pub mod node_remove;
pub mod profiles;
pub mod ready;
pub mod reconcile;
pub mod routes;
pub mod rules;
pub mod sandbox;
#[cfg(test)]
mod sequence_tests;
pub mod tunnel;

/// Address space names the IPAM driver reports (the original plugin's names).
pub const LOCAL_ADDRESS_SPACE: &str = "CalicoLocalAddressSpace";
/// See [`LOCAL_ADDRESS_SPACE`].
pub const GLOBAL_ADDRESS_SPACE: &str = "CalicoGlobalAddressSpace";

/// Settings of the driver.
#[derive(Clone, Debug)]
pub struct DriverSettings {
    /// This host's node name.
    pub nodename: String,
    /// `local` or `global` capability scope.
    pub scope: String,
    /// Create a Calico profile per network (`CALICO_LIBNETWORK_CREATE_PROFILES`).
    pub create_profiles: bool,
    /// Container interface name prefix (`CALICO_LIBNETWORK_IFPREFIX`).
    pub ifprefix: String,
    /// veth MTU (`CALICO_LIBNETWORK_VETH_MTU`); kernel default when `None`.
    pub veth_mtu: Option<u32>,
    /// The Docker API (`CALICO_LIBNETWORK_DOCKER_HOST`), asked for network names and
    /// container labels from background tasks only. `None`: no Docker API; profiles stay
    /// named after the network ID and endpoints are not labelled.
    pub docker_host: Option<String>,
    /// Copy `org.projectcalico.label.*` container labels onto WorkloadEndpoints
    /// (`CALICO_LIBNETWORK_LABEL_ENDPOINTS`).
    pub label_endpoints: bool,
    /// How long to wait for Docker to show an endpoint's container
    /// (`CALICO_LIBNETWORK_LABEL_POLL_TIMEOUT`).
    pub label_poll_timeout: std::time::Duration,
    /// Which firewall rules the plugin keeps (`CALICO_LIBNETWORK_DATAPLANE`).
    pub dataplane: crate::dataplane::iptables::DataplaneMode,
    /// Records younger than this are never reclaimed as stale
    /// (`CALICO_LIBNETWORK_RECONCILE_GRACE`; see `reconcile`).
    pub reconcile_grace: std::time::Duration,
    /// Interval of the periodic reconciliation after the start-up passes; zero: none
    /// (`CALICO_LIBNETWORK_RECONCILE_INTERVAL`).
    pub reconcile_interval: std::time::Duration,
    /// How often the firewall rules are checked and, when something removed them,
    /// rewritten (`CALICO_LIBNETWORK_RULES_CHECK_INTERVAL`).
    pub rules_check_interval: std::time::Duration,
    /// How often the plugin renews its heartbeat on its Node
    /// (`CALICO_LIBNETWORK_HEARTBEAT_INTERVAL`; see `heartbeat`).
    pub heartbeat_interval: std::time::Duration,
    /// This machine's ID (`/etc/machine-id`), recorded on its Node: another machine under
    /// the same node name turns destructive clean-up off. `None`: not checked.
    pub machine_id: Option<String>,
    /// calico-node's nodename file (`CALICO_NODENAME_FILE`): written with the node name when
    /// [`Driver::init`] creates this host's Node and the file does not exist. `None`: never.
    pub nodename_file: Option<std::path::PathBuf>,
    /// This host's address on its Node (`IP`, `IP6`, ...; see `node_address`).
    pub node_address: crate::dataplane::autodetect::NodeAddressConfig,
    /// Keep routes to the other hosts' containers and accept their traffic
    /// (`CALICO_LIBNETWORK_ROUTES`; see `routes`).
    pub routes: bool,
}

impl DriverSettings {
    /// Defaults for `nodename` (no Docker API: profiles named after network IDs).
    pub fn new(nodename: &str) -> Self {
        DriverSettings {
            nodename: nodename.to_string(),
            scope: "local".to_string(),
            create_profiles: true,
            ifprefix: "eth".to_string(),
            veth_mtu: None,
            docker_host: None,
            label_endpoints: false,
            label_poll_timeout: std::time::Duration::from_secs(30),
            // Embedding code and tests get no firewall changes unless they ask; the
            // command line defaults to `auto`.
            dataplane: crate::dataplane::iptables::DataplaneMode::Off,
            reconcile_grace: reconcile::DEFAULT_GRACE,
            reconcile_interval: std::time::Duration::ZERO,
            rules_check_interval: std::time::Duration::from_secs(30),
            heartbeat_interval: heartbeat::DEFAULT_HEARTBEAT_INTERVAL,
            machine_id: None,
            nodename_file: None,
            // Like the firewall: embedding code and tests write no address unless they ask.
            node_address: crate::dataplane::autodetect::NodeAddressConfig::off(),
            routes: false,
        }
    }
}

/// A `RequestPool` call, decoded.
#[derive(Clone, Debug, Default)]
pub struct PoolRequest {
    /// `--subnet`.
    pub pool: Option<IpNet>,
    /// `--ip-range`.
    pub sub_pool: Option<IpNet>,
    /// `--ipam-opt`.
    pub options: BTreeMap<String, String>,
    /// IPv6 pool.
    pub v6: bool,
}

/// The answer to `RequestPool`.
#[derive(Clone, Debug)]
pub struct PoolGrant {
    /// Our ID for the pool request.
    pub pool_id: String,
    /// What Docker is told the pool is.
    pub pool: IpNet,
    /// Pool data (the dummy gateway).
    pub data: BTreeMap<String, String>,
}

/// A `CreateNetwork` call, decoded.
#[derive(Clone, Debug, Default)]
pub struct NetworkSpec {
    /// Docker's network ID.
    pub network_id: String,
    /// Docker's options map.
    pub options: BTreeMap<String, Value>,
    /// (pool, gateway) per IPv4 data entry.
    pub ipv4_data: Vec<(String, String)>,
    /// (pool, gateway) per IPv6 data entry.
    pub ipv6_data: Vec<(String, String)>,
}

/// A `CreateEndpoint` call, decoded.
#[derive(Clone, Debug, Default)]
pub struct EndpointSpec {
    /// Docker's network ID.
    pub network_id: String,
    /// Docker's endpoint ID.
    pub endpoint_id: String,
    /// IPv4 address from IPAM.
    pub ipv4: Option<IpNet>,
    /// IPv6 address from IPAM.
    pub ipv6: Option<IpNet>,
    /// `--mac-address`.
    pub mac: Option<[u8; 6]>,
    /// Endpoint options.
    pub options: BTreeMap<String, Value>,
}

/// What `Join` answers.
#[derive(Clone, Debug)]
pub struct JoinInfo {
    /// The temporary veth peer Docker moves into the container.
    pub src_name: String,
    /// Container interface name prefix.
    pub dst_prefix: String,
    /// IPv4 gateway.
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 gateway (the host veth's link-local address).
    pub gateway_ipv6: Option<Ipv6Addr>,
    /// Routes Docker installs in the container (connected ones on this endpoint's interface).
    pub static_routes: Vec<sandbox::ContainerRoute>,
}

pub use crate::dataplane::{format_mac, parse_mac};

/// At most this many container names wait for their CreateEndpoint.
const CONTAINER_NAMES_KEPT: usize = 4096;

/// The network and IPAM driver.
pub struct Driver {
    store: Arc<dyn Datastore>,
    ipam: Ipam,
    settings: DriverSettings,
    /// The kernel side (veths, links): Linux, or a recording fake in tests.
    dataplane: Arc<dyn crate::dataplane::Dataplane>,
    endpoints: std::sync::Mutex<std::collections::HashMap<String, endpoint::EndpointCache>>,
    /// Host firewall rules for this host's endpoints (see `rules`).
    rules: rules::Rules,
    /// Each network's explicit IPv4 pools, which never change: Join needs them without a read.
    network_pools: std::sync::Mutex<std::collections::HashMap<String, Vec<IpNet>>>,
    /// Network records that can no longer change, by network ID (see
    /// `Driver::network_record`).
    settled_records: std::sync::Mutex<
        std::collections::HashMap<String, crate::model::libnetwork::NetworkRecord>,
    >,
    /// Docker's IPAM driver (pools and addresses).
    ipam_driver: ipam::IpamDriver,
    /// Gateways and routes given to the endpoints of each container sandbox (see `sandbox`).
    sandboxes: sandbox::Sandboxes,
    /// Container names from RequestAddress (Docker 29+), by address, until CreateEndpoint.
    container_names: std::sync::Mutex<std::collections::HashMap<IpAddr, String>>,
    /// The Docker API, for background tasks only (never awaited by a handler).
    docker: Option<Arc<docker::DockerApi>>,
    /// Docker's events, followed in the background (see `follow_docker_events_in_background`).
    docker_events: Arc<docker::DockerEvents>,
    /// The machine ID another machine recorded on this node's Node (see
    /// [`DriverSettings::machine_id`]): while set, reconciliation deletes nothing.
    foreign_owner: std::sync::Mutex<Option<String>>,
    /// Whether Calico lets us write (`datastoreReady`; see `ready`).
    ready: ready::ReadyGate,
    /// Held by each pass of the route keeper; `true` once the routes were removed at stop,
    /// after which no pass writes any (see `routes`).
    routes_stopped: Arc<tokio::sync::Mutex<bool>>,
    /// One tunnel-address pass at a time on this host: two passes (the node loop's and a pool
    /// change's) would each allocate under the one handle, and the loser's release by that
    /// handle would free the winner's address too.
    tunnel_pass: tokio::sync::Mutex<()>,
    /// Whether the last tunnel-address pass left them to calico-node (`felix` mode), so
    /// that the change is logged once.
    tunnel_left_to_calico_node: std::sync::atomic::AtomicBool,
}

/// Runs the future `make` gives on a task of its own and, when it panics (a bug: stored data
/// no check foresaw, ...), logs it, counts it and starts a new one a second later, so a
/// background loop never disappears silently. Returns at once.
pub(crate) fn supervise<F, Fut>(task: &'static str, make: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    tracing::error!(task, "background task panicked; restarting it in 1 s");
                    crate::metrics::background_restart(task);
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                // Cancelled: the runtime is shutting down.
                Err(_) => return,
            }
        }
    });
}

impl Driver {
    /// Builds the driver over a datastore.
    pub fn new(store: Arc<dyn Datastore>, settings: DriverSettings) -> Self {
        Self::with_dataplane(
            store,
            settings,
            Arc::new(crate::dataplane::Linux::default()),
        )
    }

    /// Builds the driver over a datastore and a given dataplane (a fake in tests).
    pub fn with_dataplane(
        store: Arc<dyn Datastore>,
        settings: DriverSettings,
        dataplane: Arc<dyn crate::dataplane::Dataplane>,
    ) -> Self {
        let docker = settings
            .docker_host
            .as_deref()
            .map(|h| Arc::new(docker::DockerApi::new(h, docker::CALL_TIMEOUT)));
        let ipam = Ipam::new(store.clone());
        let rules = rules::Rules::new(settings.dataplane, ipam.clone(), &settings.nodename);
        // Without the ipset command the rules could not match other hosts' members (and
        // every Join would fail on them): other hosts' traffic stays dropped instead.
        let sets = !settings.routes || crate::dataplane::ipset::available();
        if !sets {
            tracing::error!(
                "the ipset command is not installed: containers on other hosts cannot reach \
                 this host's (install Debian's ipset package and restart the plugin)"
            );
        }
        rules.set_other_hosts(settings.routes && sets);
        Driver {
            ipam_driver: ipam::IpamDriver::new(store.clone(), ipam.clone(), &settings.nodename),
            rules,
            ready: ready::ReadyGate::new(store.clone(), ready::READY_TTL),
            ipam,
            store,
            docker,
            foreign_owner: Default::default(),
            routes_stopped: Default::default(),
            tunnel_pass: Default::default(),
            tunnel_left_to_calico_node: Default::default(),
            settings,
            dataplane,
            endpoints: Default::default(),
            network_pools: Default::default(),
            settled_records: Default::default(),
            sandboxes: Default::default(),
            container_names: Default::default(),
            docker_events: Default::default(),
        }
    }

    /// The allocator.
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// Docker's IPAM driver: `RequestPool`, `ReleasePool`, `ReleaseAddress` go straight to
    /// it; `RequestAddress` through [`Driver::request_address`].
    pub fn ipam_driver(&self) -> &ipam::IpamDriver {
        &self.ipam_driver
    }

    /// `IpamDriver.RequestAddress`: the IPAM driver's, with this side's check that a requested
    /// address's owner is provably gone (a dead container's endpoint: see `reconcile`).
    pub async fn request_address(
        &self,
        pool_id: &str,
        address: Option<IpAddr>,
        options: &BTreeMap<String, String>,
    ) -> Result<IpNet> {
        let got = self
            .ipam_driver
            .request_address(pool_id, address, options, |ip| async move {
                self.reclaim_stale_address(ip).await.unwrap_or_else(|e| {
                    tracing::warn!(address = %ip, error = %e, "check stale owner of requested address");
                    false
                })
            })
            .await?;
        // Docker 29 names the container here, and not in CreateEndpoint: kept for the
        // CreateEndpoint that comes with this address.
        if let Some(name) = crate::model::libnetwork::container_name(options) {
            let mut names = self.container_names.lock().unwrap();
            // Addresses whose CreateEndpoint never came (Docker failed in between) must not
            // pile up: the names only label things.
            if names.len() >= CONTAINER_NAMES_KEPT {
                names.clear();
            }
            names.insert(got.addr(), name);
        }
        Ok(got)
    }

    /// The container name Docker gave with one of `addrs` in RequestAddress, taken out.
    pub(crate) fn take_container_name(&self, addrs: &[IpAddr]) -> Option<String> {
        let mut names = self.container_names.lock().unwrap();
        let mut found = None;
        for a in addrs {
            if let Some(n) = names.remove(a) {
                found.get_or_insert(n);
            }
        }
        found
    }

    /// Handles for a background task that uses the Docker API; `None` without one.
    pub(crate) fn background(&self) -> Option<profiles::Background> {
        Some(profiles::Background {
            store: self.store.clone(),
            docker: self.docker.clone()?,
            settings: self.settings.clone(),
            rules: self.rules(),
            events: self.docker_events.clone(),
        })
    }

    /// With container labels on (`label_endpoints`) and a Docker API: follows Docker's
    /// events in the background, so labels are copied as soon as a container starts. Returns
    /// at once.
    pub fn follow_docker_events_in_background(&self) {
        let (Some(docker), true) = (self.docker.clone(), self.settings.label_endpoints) else {
            return;
        };
        let events = self.docker_events.clone();
        supervise("docker-events", move || {
            let (docker, events) = (docker.clone(), events.clone());
            async move { docker.follow_events(&events).await }
        });
    }

    /// Starts learning, in the background, the names of networks recorded without one
    /// (records from before names were learned, or whose name lookup did not finish).
    /// Returns at once; does nothing without a Docker API.
    pub fn resolve_network_names_in_background(&self) {
        if let Some(bg) = self.background() {
            tokio::spawn(async move { bg.resolve_unnamed_networks().await });
        }
    }

    /// `Ok` unless Calico's `datastoreReady` is false (a migration or upgrade lock), when
    /// nothing may be written: [`crate::Error::NotReady`]; or cannot be read: the
    /// datastore's error. Read at most once a second.
    pub async fn check_ready(&self) -> Result<()> {
        self.ready.check().await
    }

    /// The datastore.
    pub fn store(&self) -> &Arc<dyn Datastore> {
        &self.store
    }

    /// Capability scope.
    pub fn scope(&self) -> &str {
        &self.settings.scope
    }

    /// `NetworkDriver.EndpointOperInfo`.
    pub async fn endpoint_oper_info(
        &self,
        _network_id: &str,
        _endpoint_id: &str,
    ) -> Result<BTreeMap<String, Value>> {
        Ok(BTreeMap::new())
    }
    /// `NetworkDriver.ProgramExternalConnectivity`.
    pub async fn program_external_connectivity(
        &self,
        _network_id: &str,
        _endpoint_id: &str,
        _options: &BTreeMap<String, Value>,
    ) -> Result<()> {
        Ok(())
    }
    /// `NetworkDriver.RevokeExternalConnectivity`.
    pub async fn revoke_external_connectivity(
        &self,
        _network_id: &str,
        _endpoint_id: &str,
    ) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod supervise_tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// A background task that panics is started again; one that returns is not.
    #[tokio::test]
    async fn a_panicking_background_task_is_restarted() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        super::supervise("test-task", move || {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first run fails");
                }
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while runs.load(Ordering::SeqCst) < 2 {
            assert!(std::time::Instant::now() < deadline, "not restarted");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "a task that returned is not restarted"
        );
    }
}
