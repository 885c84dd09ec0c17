//! Settings from flags and environment, checked once at start.
//!
//! Every setting has a flag and an environment variable (clap `env =`). Calico's tools also
//! accept the `CALICO_`-prefixed forms of the datastore variables (`CALICO_ETCD_ENDPOINTS`,
//! ...), so we do too: the plain name wins when both are set.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ipnet::IpNet;

use crate::datastore::etcd::EtcdConfig;
use crate::error::{Error, Result};

/// Default path of the plugin socket, where Docker discovers the `calico` plugin.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/calico.sock";
/// Default path of the embedded store.
pub const DEFAULT_STORE: &str = "/var/lib/calico-libnetwork/store.redb";

/// The raw settings as flags and environment give them.
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// Datastore: `etcdv3` or `local` (default: etcdv3 when an etcd endpoint is set, else local).
    #[arg(long, env = "DATASTORE_TYPE", global = true)]
    pub datastore_type: Option<String>,
    /// Comma-separated etcd URLs, e.g. http://127.0.0.1:2379.
    #[arg(long, env = "ETCD_ENDPOINTS", global = true)]
    pub etcd_endpoints: Option<String>,
    /// etcd host:port (used with ETCD_SCHEME when ETCD_ENDPOINTS is unset).
    #[arg(long, env = "ETCD_AUTHORITY", global = true)]
    pub etcd_authority: Option<String>,
    /// Scheme for ETCD_AUTHORITY: http or https.
    #[arg(long, env = "ETCD_SCHEME", global = true)]
    pub etcd_scheme: Option<String>,
    /// PEM CA certificate for etcd TLS.
    #[arg(long, env = "ETCD_CA_CERT_FILE", global = true)]
    pub etcd_ca_cert_file: Option<PathBuf>,
    /// PEM client certificate for etcd TLS.
    #[arg(long, env = "ETCD_CERT_FILE", global = true)]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM client key for etcd TLS.
    #[arg(long, env = "ETCD_KEY_FILE", global = true)]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd username.
    #[arg(long, env = "ETCD_USERNAME", global = true)]
    pub etcd_username: Option<String>,
    /// etcd password.
    #[arg(long, env = "ETCD_PASSWORD", global = true, hide_env_values = true)]
    pub etcd_password: Option<crate::datastore::etcd::Secret>,
    /// File of the embedded (local) store.
    #[arg(long, env = "CALICO_LIBNETWORK_STORE", global = true, default_value = DEFAULT_STORE)]
    pub store_path: PathBuf,
    /// Plugin socket Docker connects to.
    #[arg(long, env = "CALICO_LIBNETWORK_SOCKET", global = true, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// This host's Calico node name (default: $HOSTNAME, then the kernel hostname).
    #[arg(long, env = "NODENAME", global = true)]
    pub nodename: Option<String>,
    /// Log level: error, warn, info, debug or trace (CALICO_DEBUG set means debug).
    #[arg(long, env = "LOG_LEVEL", global = true)]
    pub log_level: Option<String>,
    /// Log format: text or json (one JSON object per line).
    #[arg(long, env = "LOG_FORMAT", global = true, default_value = "text")]
    pub log_format: String,
    /// Deadline for each Docker request, e.g. 10s or 500ms.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_REQUEST_TIMEOUT",
        global = true,
        default_value = "10s"
    )]
    pub request_timeout: String,
    /// Deadline for each datastore request.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_DATASTORE_TIMEOUT",
        global = true,
        default_value = "5s"
    )]
    pub datastore_timeout: String,
    /// IPv4 pool created at start when no IP pool exists at all.
    #[arg(
        long,
        env = "CALICO_IPV4POOL_CIDR",
        global = true,
        default_value = "192.168.0.0/16"
    )]
    pub ipv4_pool_cidr: String,
    /// IPv6 pool created at start when no IP pool exists at all (none by default).
    #[arg(long, env = "CALICO_IPV6POOL_CIDR", global = true)]
    pub ipv6_pool_cidr: Option<String>,
    /// Create a Calico profile per network (true/false).
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_CREATE_PROFILES",
        global = true,
        default_value = "true"
    )]
    pub create_profiles: String,
    /// Container interface name prefix (Docker appends a number).
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_IFPREFIX",
        global = true,
        default_value = "eth"
    )]
    pub ifprefix: String,
    /// MTU of the veth pairs (kernel default when unset).
    #[arg(long, env = "CALICO_LIBNETWORK_VETH_MTU", global = true)]
    pub veth_mtu: Option<String>,
    /// TCP address (host:port) to serve Prometheus metrics on at /metrics; off when unset.
    #[arg(long, env = "CALICO_LIBNETWORK_METRICS_ADDR", global = true)]
    pub metrics_addr: Option<String>,
    /// Capability scope reported to Docker: local or global.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_SCOPE",
        global = true,
        default_value = "local"
    )]
    pub scope: String,
    /// Set to true to create no default pool at start.
    #[arg(long, env = "NO_DEFAULT_POOLS", global = true, default_value = "false")]
    pub no_default_pools: String,
    /// Docker API address, asked (in the background) for network names and container labels
    /// (default: $DOCKER_HOST, then unix:///var/run/docker.sock).
    #[arg(long, env = "CALICO_LIBNETWORK_DOCKER_HOST", global = true)]
    pub docker_host: Option<String>,
    /// Copy `org.projectcalico.label.*` container labels onto WorkloadEndpoints (true/false).
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_LABEL_ENDPOINTS",
        global = true,
        default_value = "false"
    )]
    pub label_endpoints: String,
    /// How long to wait for Docker to show an endpoint's container, for its labels.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_LABEL_POLL_TIMEOUT",
        global = true,
        default_value = "30s"
    )]
    pub label_poll_timeout: String,
    /// Records younger than this are never reclaimed as stale by the start-up
    /// reconciliation or a `--ip` takeover.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_RECONCILE_GRACE",
        global = true,
        default_value = "2m"
    )]
    pub reconcile_grace: String,
    /// How often to reconcile this host after the start-up passes (0: only at start).
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_RECONCILE_INTERVAL",
        global = true,
        default_value = "10m"
    )]
    pub reconcile_interval: String,
    /// How often to check that the plugin's firewall rules are still in place (rewritten
    /// when something removed them: `iptables -F`, a firewall reload).
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_RULES_CHECK_INTERVAL",
        global = true,
        default_value = "30s"
    )]
    pub rules_check_interval: String,
    /// Firewall rules the plugin keeps: auto, standalone, felix or off.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_DATAPLANE",
        global = true,
        default_value = "auto"
    )]
    pub dataplane: String,
    /// Which iptables the rules are written with: auto (the variant the host's rules are
    /// in), legacy or nft.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_IPTABLES_BACKEND",
        global = true,
        default_value = "auto"
    )]
    pub iptables_backend: String,
}

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
    /// This host's node name.
    pub nodename: String,
    /// tracing filter directive (`info`, `debug`, ...).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Deadline for each Docker request.
    pub request_timeout: Duration,
    /// Default pools created when none exists.
    pub default_pools: Vec<IpNet>,
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
    /// Firewall mode.
    pub dataplane: crate::driver::rules::DataplaneMode,
    /// iptables variant.
    pub iptables_backend: crate::dataplane::standalone::BackendChoice,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The value from the flag or plain variable, else from `CALICO_<NAME>`.
fn with_calico_prefix<T: Clone>(
    v: &Option<T>,
    name: &str,
    parse: impl Fn(String) -> T,
) -> Option<T> {
    v.clone()
        .or_else(|| env_nonempty(&format!("CALICO_{name}")).map(parse))
}

fn bad(var: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("{var}: {msg}"))
}

fn parse_duration(var: &str, s: &str) -> Result<Duration> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| bad(var, format!("cannot parse duration '{s}': {e}")))?;
    if d.is_zero() {
        return Err(bad(var, "must be greater than zero"));
    }
    Ok(d)
}

fn parse_bool(var: &str, s: &str) -> Result<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        other => Err(bad(var, format!("expected true or false, got '{other}'"))),
    }
}

fn check_endpoint(var: &str, url: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/').to_string();
    let uri: http::Uri = url
        .parse()
        .map_err(|e| bad(var, format!("cannot parse URL '{url}': {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(bad(
                var,
                format!("URL '{url}' must start with http:// or https://"),
            ))
        }
    }
    if uri.authority().is_none() {
        return Err(bad(var, format!("URL '{url}' has no host")));
    }
    Ok(url)
}

fn check_file(var: &str, path: &Option<PathBuf>) -> Result<()> {
    if let Some(p) = path {
        std::fs::File::open(p)
            .map_err(|e| bad(var, format!("cannot read {}: {e}", p.display())))?;
    }
    Ok(())
}

/// The kernel's hostname.
pub fn kernel_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

impl ConfigArgs {
    /// Resolves and checks the settings; the error names the variable at fault.
    pub fn resolve(&self) -> Result<Config> {
        let datastore_type = with_calico_prefix(&self.datastore_type, "DATASTORE_TYPE", |s| s);
        let endpoints = with_calico_prefix(&self.etcd_endpoints, "ETCD_ENDPOINTS", |s| s);
        let authority = with_calico_prefix(&self.etcd_authority, "ETCD_AUTHORITY", |s| s);
        let scheme = with_calico_prefix(&self.etcd_scheme, "ETCD_SCHEME", |s| s);
        let ca = with_calico_prefix(&self.etcd_ca_cert_file, "ETCD_CA_CERT_FILE", PathBuf::from);
        let cert = with_calico_prefix(&self.etcd_cert_file, "ETCD_CERT_FILE", PathBuf::from);
        let key = with_calico_prefix(&self.etcd_key_file, "ETCD_KEY_FILE", PathBuf::from);
        let username = with_calico_prefix(&self.etcd_username, "ETCD_USERNAME", |s| s);
        let password = with_calico_prefix(&self.etcd_password, "ETCD_PASSWORD", Into::into);

        let mut urls = Vec::new();
        if let Some(list) = endpoints.as_deref().filter(|s| !s.trim().is_empty()) {
            for u in list.split(',').filter(|u| !u.trim().is_empty()) {
                urls.push(check_endpoint("ETCD_ENDPOINTS", u)?);
            }
        } else if let Some(auth) = authority.as_deref().filter(|s| !s.trim().is_empty()) {
            let scheme = scheme.as_deref().unwrap_or("http");
            if scheme != "http" && scheme != "https" {
                return Err(bad(
                    "ETCD_SCHEME",
                    format!("expected http or https, got '{scheme}'"),
                ));
            }
            urls.push(check_endpoint(
                "ETCD_AUTHORITY",
                &format!("{scheme}://{auth}"),
            )?);
        }

        let kind = match datastore_type.as_deref().map(str::trim) {
            None | Some("") => {
                if urls.is_empty() {
                    "local"
                } else {
                    "etcdv3"
                }
            }
            Some("etcdv3") => "etcdv3",
            Some("local") => "local",
            Some("kubernetes") => {
                return Err(bad(
                    "DATASTORE_TYPE",
                    "the kubernetes datastore is not supported; use etcdv3 or local",
                ))
            }
            Some(other) => {
                return Err(bad(
                    "DATASTORE_TYPE",
                    format!("unknown datastore type '{other}' (expected etcdv3 or local)"),
                ))
            }
        };

        let ds_timeout = parse_duration(
            "CALICO_LIBNETWORK_DATASTORE_TIMEOUT",
            &self.datastore_timeout,
        )?;
        let datastore = if kind == "etcdv3" {
            if urls.is_empty() {
                return Err(bad(
                    "ETCD_ENDPOINTS",
                    "DATASTORE_TYPE is etcdv3 but no etcd endpoint is set (ETCD_ENDPOINTS or ETCD_AUTHORITY)",
                ));
            }
            check_file("ETCD_CA_CERT_FILE", &ca)?;
            check_file("ETCD_CERT_FILE", &cert)?;
            check_file("ETCD_KEY_FILE", &key)?;
            if cert.is_some() != key.is_some() {
                return Err(bad(
                    if cert.is_some() {
                        "ETCD_KEY_FILE"
                    } else {
                        "ETCD_CERT_FILE"
                    },
                    "ETCD_CERT_FILE and ETCD_KEY_FILE must be set together",
                ));
            }
            let tls = ca.is_some() || cert.is_some();
            if tls && urls.iter().any(|u| u.starts_with("http://")) {
                return Err(bad(
                    "ETCD_ENDPOINTS",
                    "TLS certificates are set but an endpoint uses http://; use https://",
                ));
            }
            if username.is_some() != password.is_some() {
                return Err(bad(
                    if username.is_some() {
                        "ETCD_PASSWORD"
                    } else {
                        "ETCD_USERNAME"
                    },
                    "ETCD_USERNAME and ETCD_PASSWORD must be set together",
                ));
            }
            DatastoreConfig::Etcd(EtcdConfig {
                endpoints: urls,
                username,
                password,
                ca_cert_file: ca,
                cert_file: cert,
                key_file: key,
                timeout: ds_timeout,
            })
        } else {
            if self.store_path.as_os_str().is_empty() {
                return Err(bad("CALICO_LIBNETWORK_STORE", "must not be empty"));
            }
            DatastoreConfig::Local(self.store_path.clone())
        };

        let nodename = self
            .nodename
            .clone()
            .or_else(|| env_nonempty("HOSTNAME"))
            .unwrap_or_else(kernel_hostname);
        let nodename = nodename.trim().to_string();
        if nodename.is_empty()
            || nodename.len() > 253
            || nodename.chars().any(|c| c.is_whitespace() || c == '/')
        {
            return Err(bad(
                "NODENAME",
                format!("'{nodename}' is not a valid node name"),
            ));
        }

        let debug = env_nonempty("CALICO_DEBUG")
            .map(|v| parse_bool("CALICO_DEBUG", &v).unwrap_or(true))
            .unwrap_or(false);
        let log_level = match self
            .log_level
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
        {
            Some(l) if !l.is_empty() => match l.as_str() {
                "error" | "warn" | "info" | "debug" | "trace" => l,
                "warning" => "warn".to_string(),
                "fatal" | "panic" => "error".to_string(),
                other => {
                    return Err(bad(
                        "LOG_LEVEL",
                        format!(
                            "unknown level '{other}' (expected error, warn, info, debug or trace)"
                        ),
                    ))
                }
            },
            _ if debug => "debug".to_string(),
            _ => "info".to_string(),
        };
        let log_format = match self.log_format.trim().to_ascii_lowercase().as_str() {
            "text" | "" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(bad(
                    "LOG_FORMAT",
                    format!("expected text or json, got '{other}'"),
                ))
            }
        };
        let request_timeout =
            parse_duration("CALICO_LIBNETWORK_REQUEST_TIMEOUT", &self.request_timeout)?;
        let metrics_addr = match self.metrics_addr.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) => Some(a.parse::<std::net::SocketAddr>().map_err(|_| {
                bad(
                    "CALICO_LIBNETWORK_METRICS_ADDR",
                    format!("expected a TCP address like 127.0.0.1:9091, got '{a}'"),
                )
            })?),
        };

        let mut default_pools = Vec::new();
        if !parse_bool("NO_DEFAULT_POOLS", &self.no_default_pools)? {
            let v4: IpNet = self.ipv4_pool_cidr.trim().parse().map_err(|e| {
                bad(
                    "CALICO_IPV4POOL_CIDR",
                    format!("invalid CIDR '{}': {e}", self.ipv4_pool_cidr),
                )
            })?;
            if !matches!(v4, IpNet::V4(_)) {
                return Err(bad("CALICO_IPV4POOL_CIDR", "must be an IPv4 CIDR"));
            }
            default_pools.push(v4.trunc());
            if let Some(v6) = self
                .ipv6_pool_cidr
                .as_deref()
                .filter(|s| !s.trim().is_empty())
            {
                let n: IpNet = v6.trim().parse().map_err(|e| {
                    bad("CALICO_IPV6POOL_CIDR", format!("invalid CIDR '{v6}': {e}"))
                })?;
                if !matches!(n, IpNet::V6(_)) {
                    return Err(bad("CALICO_IPV6POOL_CIDR", "must be an IPv6 CIDR"));
                }
                default_pools.push(n.trunc());
            }
        }

        let create_profiles =
            parse_bool("CALICO_LIBNETWORK_CREATE_PROFILES", &self.create_profiles)?;
        let ifprefix = self.ifprefix.trim().to_string();
        if ifprefix.is_empty()
            || ifprefix.len() > 12
            || !ifprefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                "CALICO_LIBNETWORK_IFPREFIX",
                format!("'{ifprefix}' must be 1 to 12 characters of letters, digits, '_' or '-'"),
            ));
        }
        let veth_mtu = match self
            .veth_mtu
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None | Some("0") => None,
            Some(v) => match v.parse::<u32>() {
                Ok(m) if (68..=65535).contains(&m) => Some(m),
                _ => {
                    return Err(bad(
                        "CALICO_LIBNETWORK_VETH_MTU",
                        format!("'{v}' is not an MTU between 68 and 65535"),
                    ))
                }
            },
        };
        let scope = match self.scope.trim() {
            "local" => "local".to_string(),
            "global" => "global".to_string(),
            other => {
                return Err(bad(
                    "CALICO_LIBNETWORK_SCOPE",
                    format!("expected local or global, got '{other}'"),
                ))
            }
        };

        let (docker_host, docker_host_var) = match self
            .docker_host
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(h) => (h.to_string(), "CALICO_LIBNETWORK_DOCKER_HOST"),
            None => match env_nonempty("DOCKER_HOST") {
                Some(h) => (h.trim().to_string(), "DOCKER_HOST"),
                None => (
                    crate::driver::docker::DEFAULT_DOCKER_HOST.to_string(),
                    "CALICO_LIBNETWORK_DOCKER_HOST",
                ),
            },
        };
        crate::driver::docker::check_host(&docker_host).map_err(|e| bad(docker_host_var, e))?;
        let label_endpoints =
            parse_bool("CALICO_LIBNETWORK_LABEL_ENDPOINTS", &self.label_endpoints)?;
        let dataplane =
            crate::driver::rules::DataplaneMode::parse(&self.dataplane).ok_or_else(|| {
                bad(
                    "CALICO_LIBNETWORK_DATAPLANE",
                    format!(
                        "expected auto, standalone, felix or off, got '{}'",
                        self.dataplane
                    ),
                )
            })?;
        let iptables_backend = crate::dataplane::standalone::BackendChoice::parse(
            &self.iptables_backend,
        )
        .ok_or_else(|| {
            bad(
                "CALICO_LIBNETWORK_IPTABLES_BACKEND",
                format!(
                    "expected auto, legacy or nft, got '{}'",
                    self.iptables_backend
                ),
            )
        })?;
        let label_poll_timeout = parse_duration(
            "CALICO_LIBNETWORK_LABEL_POLL_TIMEOUT",
            &self.label_poll_timeout,
        )?;

        let reconcile_grace =
            parse_duration("CALICO_LIBNETWORK_RECONCILE_GRACE", &self.reconcile_grace)?;
        // `0` turns the periodic passes off; any other value is a duration as usual.
        let reconcile_interval = match self.reconcile_interval.trim() {
            "0" => Duration::ZERO,
            s => parse_duration("CALICO_LIBNETWORK_RECONCILE_INTERVAL", s)?,
        };

        let rules_check_interval = parse_duration(
            "CALICO_LIBNETWORK_RULES_CHECK_INTERVAL",
            &self.rules_check_interval,
        )?;

        Ok(Config {
            metrics_addr,
            reconcile_grace,
            reconcile_interval,
            rules_check_interval,
            docker_host,
            label_endpoints,
            label_poll_timeout,
            dataplane,
            iptables_backend,
            create_profiles,
            ifprefix,
            veth_mtu,
            scope,
            datastore,
            socket: self.socket.clone(),
            nodename,
            log_level,
            log_format,
            request_timeout,
            default_pools,
        })
    }
}
