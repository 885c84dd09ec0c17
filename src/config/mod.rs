//! Settings from flags and environment, checked once at start.
//!
//! Every setting has a flag and an environment variable (clap `env =`). Calico's tools also
//! accept the `CALICO_`-prefixed forms of the datastore variables (`CALICO_ETCD_ENDPOINTS`,
//! ...), so we do too: the plain name wins when both are set.
//!
//! [`ConfigArgs::resolve`] checks one section after another, each in its own resolver
//! (`resolve_datastore`, `resolve_log_level`, `resolve_default_pools`,
//! `resolve_node_address`, ...: `datastore.rs`, `settings.rs`, `pools.rs` and
//! `node_address.rs`); the first bad value stops it with an error naming its variable.

mod args;
mod datastore;
mod node_address;
mod pools;
mod settings;
mod values;

use std::path::PathBuf;
use std::time::Duration;

pub use args::ConfigArgs;

use crate::datastore::etcd::EtcdConfig;
use crate::error::Result;

/// The Docker API address used when neither `CALICO_LIBNETWORK_DOCKER_HOST` nor `DOCKER_HOST`
/// is set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
use values::{parse_bool, parse_duration};

/// Default path of the plugin socket, where Docker discovers the `calico` plugin.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/calico.sock";
/// File name of the IPAM-only socket beside the plugin socket: the Go plugin served its
/// IPAM driver as `calico-ipam` (Docker names a plugin after its socket file).
pub const IPAM_ALIAS_SOCKET_NAME: &str = "calico-ipam.sock";
/// Where calico-node keeps the node name it determined (`CALICO_NODENAME_FILE` overrides it).
pub const DEFAULT_NODENAME_FILE: &str = "/var/lib/calico/nodename";
/// Default path of the embedded store.
pub const DEFAULT_STORE: &str = "/var/lib/calico-libnetwork/store.redb";

/// Where state lives.
#[derive(Clone, Debug)]
pub enum DatastoreConfig {
    /// etcd v3.
    Etcd(EtcdConfig),
    /// The embedded store at this path.
    Local(PathBuf),
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Checked, resolved settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The datastore to use.
    pub datastore: DatastoreConfig,
    /// The plugin socket path.
    pub socket: PathBuf,
    /// The IPAM-only socket under the Go plugin's name `calico-ipam`; `None`: off.
    pub ipam_alias_socket: Option<PathBuf>,
    /// This host's node name.
    pub nodename: String,
    /// calico-node's nodename file (`CALICO_NODENAME_FILE`), written when the plugin
    /// creates this host's Node and the file is missing.
    pub nodename_file: PathBuf,
    /// tracing filter directive (`info`, `debug`, ...).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Deadline for each Docker request.
    pub request_timeout: Duration,
    /// Default pools, each created at start when its family has no pool.
    pub default_pools: Vec<crate::model::IpPool>,
    /// This host's address on its Node: how it is found and kept current.
    pub node_address: crate::dataplane::autodetect::NodeAddressConfig,
    /// Create a profile per network.
    pub create_profiles: bool,
    /// Container interface prefix.
    pub ifprefix: String,
    /// veth MTU.
    pub veth_mtu: Option<u32>,
    /// Where to serve Prometheus metrics (`CALICO_LIBNETWORK_METRICS_ADDR`); off when `None`.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `local` or `global`.
    pub scope: String,
    /// Docker API address (`unix://`, `tcp://` or `http://`).
    pub docker_host: String,
    /// Copy container labels onto WorkloadEndpoints.
    pub label_endpoints: bool,
    /// How long to wait for an endpoint's container, for its labels.
    pub label_poll_timeout: Duration,
    /// Grace period of the reconciliation (see `driver::reconcile`).
    pub reconcile_grace: Duration,
    /// Interval of the periodic reconciliation (zero: none).
    pub reconcile_interval: Duration,
    /// Interval of the check that the firewall rules are in place.
    pub rules_check_interval: Duration,
    /// How often the plugin renews its heartbeat; a node is dead once its heartbeat is
    /// older than three (`CALICO_LIBNETWORK_HEARTBEAT_INTERVAL`).
    pub heartbeat_interval: Duration,
    /// Keep routes to the other hosts' containers (`CALICO_LIBNETWORK_ROUTES`).
    pub routes: bool,
    /// Firewall mode.
    pub dataplane: crate::dataplane::iptables::DataplaneMode,
    /// iptables variant.
    pub iptables_backend: crate::dataplane::iptables::BackendChoice,
}

/// The kernel's hostname.
pub fn kernel_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

/// Reads an environment variable that has no flag (the `CALICO_`-prefixed forms,
/// `HOSTNAME`, `CALICO_DEBUG`, `DOCKER_HOST`): the process environment, or a map in tests.
type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

impl ConfigArgs {
    /// Resolves and checks the settings; the error names the variable at fault.
    pub fn resolve(&self) -> Result<Config> {
        self.resolve_with(&|name: &str| std::env::var(name).ok())
    }

    /// [`ConfigArgs::resolve`], reading the variables without a flag through `vars`.
    fn resolve_with(&self, vars: Vars<'_>) -> Result<Config> {
        // In this order: with several bad values, the first one here is reported.
        let datastore = self.resolve_datastore(vars)?;
        let nodename = self.resolve_nodename(vars)?;
        let log_level = self.resolve_log_level(vars)?;
        let log_format = self.resolve_log_format()?;
        let request_timeout =
            parse_duration("CALICO_LIBNETWORK_REQUEST_TIMEOUT", &self.request_timeout)?;
        let metrics_addr = self.resolve_metrics_addr()?;
        let default_pools = self.resolve_default_pools()?;
        let node_address = self.resolve_node_address()?;
        let create_profiles =
            parse_bool("CALICO_LIBNETWORK_CREATE_PROFILES", &self.create_profiles)?;
        let ifprefix = self.resolve_ifprefix()?;
        let ipam_alias_socket = self.resolve_ipam_alias_socket()?;
        let veth_mtu = self.resolve_veth_mtu()?;
        let scope = self.resolve_scope()?;
        let docker_host = self.resolve_docker_host(vars)?;
        let label_endpoints =
            parse_bool("CALICO_LIBNETWORK_LABEL_ENDPOINTS", &self.label_endpoints)?;
        let dataplane = self.resolve_dataplane()?;
        let routes = self.resolve_routes(&datastore)?;
        let iptables_backend = self.resolve_iptables_backend()?;
        let label_poll_timeout = parse_duration(
            "CALICO_LIBNETWORK_LABEL_POLL_TIMEOUT",
            &self.label_poll_timeout,
        )?;
        let reconcile_grace =
            parse_duration("CALICO_LIBNETWORK_RECONCILE_GRACE", &self.reconcile_grace)?;
        let reconcile_interval = self.resolve_reconcile_interval()?;
        let rules_check_interval = parse_duration(
            "CALICO_LIBNETWORK_RULES_CHECK_INTERVAL",
            &self.rules_check_interval,
        )?;
        let heartbeat_interval = self.resolve_heartbeat_interval()?;
        Ok(Config {
            datastore,
            socket: self.socket.clone(),
            ipam_alias_socket,
            nodename,
            nodename_file: self.nodename_file.clone(),
            log_level,
            log_format,
            request_timeout,
            default_pools,
            node_address,
            create_profiles,
            ifprefix,
            veth_mtu,
            metrics_addr,
            scope,
            docker_host,
            label_endpoints,
            label_poll_timeout,
            reconcile_grace,
            reconcile_interval,
            rules_check_interval,
            heartbeat_interval,
            routes,
            dataplane,
            iptables_backend,
        })
    }
}

#[cfg(test)]
mod tests;
