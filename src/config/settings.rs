//! The sections after the datastore: node name, logging, serving (metrics), the driver
//! (interfaces, scope, Docker API, firewall) and its background timers; the default pools
//! are in `pools.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::values::{bad, check_docker_host, nonempty, parse_bool, parse_duration};
use super::{kernel_hostname, ConfigArgs, LogFormat, Vars, IPAM_ALIAS_SOCKET_NAME};
use crate::dataplane::iptables::BackendChoice;
use crate::dataplane::iptables::DataplaneMode;
use crate::driver::heartbeat::MIN_HEARTBEAT_INTERVAL;
use crate::error::Result;

impl ConfigArgs {
    /// The node name in calico-node's order (`DetermineNodeName`): `NODENAME`, else the
    /// nodename file, else `HOSTNAME` lowercased, else the kernel's hostname lowercased.
    pub(super) fn resolve_nodename(&self, vars: Vars<'_>) -> Result<String> {
        let nodename = determine_nodename(
            self.nodename.as_deref(),
            || nodename_from_file(&self.nodename_file),
            nonempty(vars, "HOSTNAME"),
            kernel_hostname,
        )?;
        if nodename.is_empty()
            || nodename.len() > 253
            || nodename.chars().any(|c| c.is_whitespace() || c == '/')
        {
            return Err(bad(
                "NODENAME",
                format!("'{nodename}' is not a valid node name"),
            ));
        }
        Ok(nodename)
    }

    /// `LOG_LEVEL` (Calico's and logrus' names accepted), else `debug` when `CALICO_DEBUG`
    /// is set (to anything but a false value), else `info`.
    pub(super) fn resolve_log_level(&self, vars: Vars<'_>) -> Result<String> {
        let debug = nonempty(vars, "CALICO_DEBUG")
            .map(|v| parse_bool("CALICO_DEBUG", &v).unwrap_or(true))
            .unwrap_or(false);
        let Some(level) = self
            .log_level
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|l| !l.is_empty())
        else {
            return Ok(if debug { "debug" } else { "info" }.to_string());
        };
        match level.as_str() {
            "error" | "warn" | "info" | "debug" | "trace" => Ok(level),
            "warning" => Ok("warn".to_string()),
            "fatal" | "panic" => Ok("error".to_string()),
            other => Err(bad(
                "LOG_LEVEL",
                format!("unknown level '{other}' (expected error, warn, info, debug or trace)"),
            )),
        }
    }

    pub(super) fn resolve_log_format(&self) -> Result<LogFormat> {
        match self.log_format.trim().to_ascii_lowercase().as_str() {
            "text" | "" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(bad(
                "LOG_FORMAT",
                format!("expected text or json, got '{other}'"),
            )),
        }
    }

    pub(super) fn resolve_metrics_addr(&self) -> Result<Option<std::net::SocketAddr>> {
        match self.metrics_addr.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(a) => a.parse().map(Some).map_err(|_| {
                bad(
                    "CALICO_LIBNETWORK_METRICS_ADDR",
                    format!("expected a TCP address like 127.0.0.1:9091, got '{a}'"),
                )
            }),
        }
    }

    /// The container interface prefix: 1 to 12 characters (Docker appends a number).
    /// `CALICO_LIBNETWORK_IPAM_ALIAS_SOCKET`: `off` (or empty) turns it off; unset means
    /// `calico-ipam.sock` beside the plugin socket; a path must be absolute and differ from
    /// the plugin socket.
    pub(super) fn resolve_ipam_alias_socket(&self) -> Result<Option<PathBuf>> {
        let var = "CALICO_LIBNETWORK_IPAM_ALIAS_SOCKET";
        let path = match self.ipam_alias_socket.as_deref().map(str::trim) {
            None => self.socket.with_file_name(IPAM_ALIAS_SOCKET_NAME),
            Some("") => return Ok(None),
            Some(v) if v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("false") => {
                return Ok(None)
            }
            Some(v) => PathBuf::from(v),
        };
        if !path.is_absolute() {
            return Err(bad(
                var,
                format!("'{}' must be an absolute path, or off", path.display()),
            ));
        }
        if path == self.socket {
            return Err(bad(
                var,
                format!(
                    "'{}' is the plugin socket itself (CALICO_LIBNETWORK_SOCKET)",
                    path.display()
                ),
            ));
        }
        Ok(Some(path))
    }

    pub(super) fn resolve_ifprefix(&self) -> Result<String> {
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
        Ok(ifprefix)
    }

    /// The veth MTU; unset, empty or `0`: the kernel's default.
    pub(super) fn resolve_veth_mtu(&self) -> Result<Option<u32>> {
        match self
            .veth_mtu
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None | Some("0") => Ok(None),
            Some(v) => match v.parse::<u32>() {
                Ok(m) if (68..=65535).contains(&m) => Ok(Some(m)),
                _ => Err(bad(
                    "CALICO_LIBNETWORK_VETH_MTU",
                    format!("'{v}' is not an MTU between 68 and 65535"),
                )),
            },
        }
    }

    pub(super) fn resolve_scope(&self) -> Result<String> {
        match self.scope.trim() {
            "local" => Ok("local".to_string()),
            "global" => Ok("global".to_string()),
            other => Err(bad(
                "CALICO_LIBNETWORK_SCOPE",
                format!("expected local or global, got '{other}'"),
            )),
        }
    }

    /// The Docker API: `CALICO_LIBNETWORK_DOCKER_HOST`, else `DOCKER_HOST`, else the local
    /// socket; the error names the variable it came from.
    pub(super) fn resolve_docker_host(&self, vars: Vars<'_>) -> Result<String> {
        let (docker_host, docker_host_var) = match self
            .docker_host
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(h) => (h.to_string(), "CALICO_LIBNETWORK_DOCKER_HOST"),
            None => match nonempty(vars, "DOCKER_HOST") {
                Some(h) => (h.trim().to_string(), "DOCKER_HOST"),
                None => (
                    super::DEFAULT_DOCKER_HOST.to_string(),
                    "CALICO_LIBNETWORK_DOCKER_HOST",
                ),
            },
        };
        check_docker_host(docker_host_var, &docker_host)?;
        Ok(docker_host)
    }

    /// `auto`: routes with etcd (other hosts may share it), none with the embedded store
    /// (one host).
    pub(super) fn resolve_routes(&self, datastore: &super::DatastoreConfig) -> Result<bool> {
        match self.routes.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(matches!(datastore, super::DatastoreConfig::Etcd(_))),
            _ => parse_bool("CALICO_LIBNETWORK_ROUTES", &self.routes).map_err(|_| {
                bad(
                    "CALICO_LIBNETWORK_ROUTES",
                    format!("expected auto, true or false, got '{}'", self.routes),
                )
            }),
        }
    }

    pub(super) fn resolve_dataplane(&self) -> Result<DataplaneMode> {
        DataplaneMode::parse(&self.dataplane).ok_or_else(|| {
            bad(
                "CALICO_LIBNETWORK_DATAPLANE",
                format!(
                    "expected auto, standalone, felix or off, got '{}'",
                    self.dataplane
                ),
            )
        })
    }

    pub(super) fn resolve_iptables_backend(&self) -> Result<BackendChoice> {
        BackendChoice::parse(&self.iptables_backend).ok_or_else(|| {
            bad(
                "CALICO_LIBNETWORK_IPTABLES_BACKEND",
                format!(
                    "expected auto, legacy or nft, got '{}'",
                    self.iptables_backend
                ),
            )
        })
    }

    /// A duration of at least [`MIN_HEARTBEAT_INTERVAL`].
    pub(super) fn resolve_heartbeat_interval(&self) -> Result<Duration> {
        const VAR: &str = "CALICO_LIBNETWORK_HEARTBEAT_INTERVAL";
        let d = parse_duration(VAR, &self.heartbeat_interval)?;
        if d < MIN_HEARTBEAT_INTERVAL {
            return Err(bad(
                VAR,
                format!(
                    "'{}' is shorter than the minimum of 1s",
                    self.heartbeat_interval.trim()
                ),
            ));
        }
        Ok(d)
    }

    /// `0` turns the periodic passes off; any other value is a duration as usual.
    pub(super) fn resolve_reconcile_interval(&self) -> Result<Duration> {
        match self.reconcile_interval.trim() {
            "0" => Ok(Duration::ZERO),
            s => parse_duration("CALICO_LIBNETWORK_RECONCILE_INTERVAL", s),
        }
    }
}

/// calico-node's order of sources for the node name, each tried only when the ones before it
/// give nothing: `nodename` trimmed (kept as given), the nodename file, `hostname` trimmed and
/// lowercased, the kernel's hostname trimmed and lowercased (`names.Hostname`).
pub(super) fn determine_nodename(
    nodename: Option<&str>,
    file: impl FnOnce() -> Result<Option<String>>,
    hostname: Option<String>,
    kernel: impl FnOnce() -> String,
) -> Result<String> {
    if let Some(n) = nodename.map(str::trim).filter(|n| !n.is_empty()) {
        return Ok(n.to_string());
    }
    if let Some(n) = file()? {
        return Ok(n);
    }
    if let Some(h) = hostname
        .map(|h| h.trim().to_lowercase())
        .filter(|h| !h.is_empty())
    {
        return Ok(h);
    }
    Ok(kernel().trim().to_lowercase())
}

/// The node name in calico-node's nodename file, trimmed; `None` when the file is missing or
/// empty. Any other read error stops the program, as it stops calico-node.
fn nodename_from_file(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        // calico-node writes the bare name, but a file written by hand often ends in a newline.
        Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(bad(
            "CALICO_NODENAME_FILE",
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}
