//! The real `calico-libnetwork` binary serving the socket dockerd discovers,
//! `/run/docker/plugins/calico.sock`, and [`DockerEnv`]: lock + etcd + plugin + dockerd.
//!
//! The socket path is fixed, so tests using [`Plugin`] must hold [`lock`] (re-exported from
//! `super::docker`) for their whole duration; [`DockerEnv`] does.

use std::io::{Read, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::docker::Dockerd;
pub use super::docker::{assert_locked, lock, HostLock};
use super::etcd::Etcd;
use super::host::{log_tail, spawn_logged, stop_child, PATH};

/// The plugin binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_calico-libnetwork");
/// Where dockerd looks for the `calico` plugin.
pub const SOCKET: &str = "/run/docker/plugins/calico.sock";
/// The IPAM-only socket the plugin serves beside [`SOCKET`] (the Go plugin's `calico-ipam`).
pub const IPAM_SOCKET: &str = "/run/docker/plugins/calico-ipam.sock";
/// The Calico node name the plugin runs as.
pub const NODENAME: &str = "calico-test-node";

/// A running plugin process; stopped by PID (SIGTERM, then SIGKILL) and its socket removed on
/// drop.
pub struct Plugin {
    child: Option<Child>,
    /// Removes the plugin's firewall rules and the veths left after it stopped (dropped
    /// after `Drop::drop`); none for a plugin in a namespace of its own
    /// ([`Plugin::start_in_netns`]), whose rules and veths go with the namespace.
    _fw: Option<super::firewall::HostCleanup>,
    env: Vec<(String, String)>,
    /// The socket it serves ([`SOCKET`] but in a namespace of its own).
    socket: PathBuf,
    /// The network namespace it runs in (a `/run/netns/NAME` path); `None`: the test's.
    netns: Option<String>,
    /// Log file and (for the local datastore) the store.
    pub dir: tempfile::TempDir,
}

/// One blocking HTTP/1.1 POST over a unix socket, the way Docker calls plugins (no
/// Content-Type). Returns the status and body.
pub fn call(socket: &Path, method: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect {socket:?}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "POST /{method} HTTP/1.1\r\nHost: plugin.moby.localhost\r\n\
         Accept: application/vnd.docker.plugins.v1.2+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("read: {e}"))?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed response: {resp:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Fails when a live process already serves `socket`; removes a stale socket file.
fn claim_socket(socket: &Path) {
    if std::fs::symlink_metadata(socket).is_err() {
        return;
    }
    if UnixStream::connect(socket).is_ok() {
        panic!(
            "a process we did not start already serves {} (a calico-libnetwork or other plugin \
             installed on this host?); stop it before running the Docker tests \
             (find it with `ss -xlp | grep calico.sock`)",
            socket.display()
        );
    }
    let _ = std::fs::remove_file(socket);
}

impl Plugin {
    /// Starts the plugin with `env` on top of the defaults (socket, node name, debug logging)
    /// and waits until it answers `Plugin.Activate` (at most 20 s). Hold [`lock`].
    pub fn start(env: &[(&str, &str)]) -> Plugin {
        let mut p = Plugin::new(env);
        p.spawn();
        p
    }

    /// Settings and temp dir, not started yet.
    fn new(env: &[(&str, &str)]) -> Plugin {
        assert_locked("Plugin::start");
        // On the machine's own network there is no other host to route to, and a plugin
        // killed mid-test would leave its blackhole routes there: a test routes in a fleet
        // (`super::hosts`), or asks for it.
        let mut with_routes = vec![("CALICO_LIBNETWORK_ROUTES", "false")];
        with_routes.extend_from_slice(env);
        Self::configured(
            Path::new(SOCKET),
            None,
            Some(super::firewall::HostCleanup::new()),
            &with_routes,
        )
    }

    /// The plugin of one host of a `super::hosts::Fleet`: started in network namespace
    /// `netns` (a `/run/netns/NAME` path), serving `socket` (its IPAM alias beside it), with
    /// `env` on top of the defaults (set `NODENAME` and the datastore there). Needs no host
    /// lock: nothing of it is on the host's network (its firewall rules and veths live, and
    /// go, with the namespace). Waits until it answers `Plugin.Activate`.
    pub fn start_in_netns(netns: &str, socket: &Path, env: &[(&str, &str)]) -> Plugin {
        let mut p = Self::configured(socket, Some(netns.to_string()), None, env);
        p.spawn();
        p
    }

    fn configured(
        socket: &Path,
        netns: Option<String>,
        fw: Option<super::firewall::HostCleanup>,
        env: &[(&str, &str)],
    ) -> Plugin {
        let dir = tempfile::Builder::new()
            .prefix("cdt-plugin-")
            .tempdir_in("/tmp")
            .expect("plugin temp dir");
        let mut p = Plugin {
            child: None,
            _fw: fw,
            env: Vec::new(),
            socket: socket.to_path_buf(),
            netns,
            dir,
        };
        p.set_env("CALICO_LIBNETWORK_SOCKET", &socket.display().to_string());
        p.set_env("NODENAME", NODENAME);
        p.set_env("CALICO_NODENAME_FILE", super::NO_NODENAME_FILE);
        p.set_env("LOG_LEVEL", "debug");
        for (k, v) in env {
            p.set_env(k, v);
        }
        p
    }

    /// The plugin on `etcd`.
    pub fn with_etcd(etcd: &Etcd) -> Plugin {
        Plugin::start(&[
            ("DATASTORE_TYPE", "etcdv3"),
            ("ETCD_ENDPOINTS", &etcd.endpoint()),
        ])
    }

    /// The plugin on the embedded store, in a file of its temp dir ([`Plugin::store_path`]).
    pub fn with_local_store() -> Plugin {
        let mut p = Plugin::new(&[("DATASTORE_TYPE", "local")]);
        let store = p.store_path().display().to_string();
        p.set_env("CALICO_LIBNETWORK_STORE", &store);
        p.spawn();
        p
    }

    /// The embedded store's file (local datastore only).
    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("store.redb")
    }

    /// Changes an environment variable for the next (re)start.
    /// The value of setting `key` the plugin runs with, if set.
    pub fn env_value(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// The plugin's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("plugin.log")
    }

    /// The plugin's log (every run of it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The plugin's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The IPAM-only socket beside [`Self::socket`] ([`IPAM_SOCKET`] for the host's plugin).
    pub fn ipam_socket(&self) -> PathBuf {
        self.socket.with_file_name("calico-ipam.sock")
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "plugin already running");
        claim_socket(self.socket());
        let mut cmd = Command::new(BINARY);
        cmd.env_clear()
            .env("PATH", PATH)
            .env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(ns) = &self.netns {
            super::netns::command_in(&mut cmd, ns);
        }
        self.child = Some(spawn_logged(cmd, &self.log_path(), libc::SIGKILL, BINARY));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        loop {
            if let Some(Ok(Some(s))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                panic!(
                    "calico-libnetwork exited ({s}) before serving {}:\n{}",
                    self.socket.display(),
                    log_tail(&self.log_path(), 60)
                );
            }
            if self.socket().exists() {
                match call(self.socket(), "Plugin.Activate", "") {
                    Ok((200, body)) if body.contains("NetworkDriver") => return,
                    Ok((st, body)) => last = format!("Plugin.Activate -> {st} {body}"),
                    Err(e) => last = e,
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "calico-libnetwork did not answer Plugin.Activate on {} within 20 s \
                     ({last}):\n{}",
                    self.socket.display(),
                    log_tail(&self.log_path(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the plugin (SIGTERM, up to 10 s, then SIGKILL) and removes its socket.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, libc::SIGTERM, Duration::from_secs(10));
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(self.ipam_socket());
    }

    /// Kills the plugin with SIGKILL (a crash: the socket file stays behind).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops and starts the plugin again with the same settings and log.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "----- calico-libnetwork log of {} (last 150 lines of {}) -----\n{}\n-----",
                self.env_value("NODENAME").unwrap_or("?"),
                self.log_path().display(),
                log_tail(&self.log_path(), 150)
            );
        }
    }
}

/// One request the plugin logged: a line with `request method="…"` (and `address`,
/// `outcome`, `duration_ms`, ...).
#[derive(Clone, Debug)]
pub struct Call {
    pub line: String,
}

impl Call {
    /// The value of ` key=` on the line (quoted or bare).
    pub fn field(&self, key: &str) -> Option<&str> {
        let pat = format!(" {key}=");
        let rest = &self.line[self.line.find(&pat)? + pat.len()..];
        Some(match rest.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next().unwrap_or(""),
            None => rest.split_whitespace().next().unwrap_or(""),
        })
    }

    pub fn method(&self) -> &str {
        self.field("method").unwrap_or("")
    }

    pub fn duration_ms(&self) -> Option<f64> {
        self.field("duration_ms")?.parse().ok()
    }

    /// `method address outcome`, for a test's record of what Docker sent.
    pub fn summary(&self) -> String {
        let f = |k| self.field(k).unwrap_or("");
        format!("{} {} {}", f("method"), f("address"), f("outcome"))
    }
}

/// The requests logged in `log`, in order.
pub fn calls(log: &str) -> Vec<Call> {
    log.lines()
        .filter(|l| l.contains("request method="))
        .map(|l| Call {
            line: l.to_string(),
        })
        .collect()
}

impl Plugin {
    /// The requests the plugin logged after byte `offset` of its log (take the offset with
    /// `plugin.log().len()` before the step of interest).
    pub fn calls_since(&self, offset: usize) -> Vec<Call> {
        calls(&self.log()[offset..])
    }
}

/// A whole Docker test setup, made by [`DockerEnv::builder`]: the host lock, a datastore
/// (a fresh etcd, or the plugin's embedded store), the plugin and our own dockerd.
///
/// Dropped in field order: dockerd first (its containers are removed while the plugin still
/// answers), then the plugin (which stops, and then its [`super::firewall::HostCleanup`]
/// removes, and reports, any rule or veth it left: the one firewall clean-up), then etcd,
/// then the lock. Fields a test adds next to it (an outside namespace, ...) go in a local
/// declared *after* the env, so they drop before it.
pub struct DockerEnv {
    pub docker: Dockerd,
    pub plugin: Plugin,
    pub etcd: Option<Etcd>,
    /// The busybox image ([`DockerEnvBuilder::busybox`]).
    image: Option<&'static str>,
    _lock: HostLock,
}

/// Options of a [`DockerEnv`]; [`DockerEnvBuilder::start`] starts it.
#[must_use]
pub struct DockerEnvBuilder {
    etcd: bool,
    docker_api: bool,
    plugin_env: Vec<(String, String)>,
    busybox: bool,
    forward_drop: bool,
    resolv_conf: Option<String>,
}

impl DockerEnvBuilder {
    /// The plugin on a fresh etcd (the default).
    pub fn etcd(mut self) -> Self {
        self.etcd = true;
        self
    }

    /// The plugin on the embedded store, in a file of its temp dir ([`Plugin::store_path`]).
    pub fn local_store(mut self) -> Self {
        self.etcd = false;
        self
    }

    /// The plugin gets our dockerd's API (`CALICO_LIBNETWORK_DOCKER_HOST`): dockerd starts
    /// first. A `plugin_env` of that variable overrides it.
    pub fn docker_api(mut self) -> Self {
        self.docker_api = true;
        self
    }

    /// An environment variable of the plugin (on top of the harness's defaults).
    pub fn plugin_env(mut self, key: &str, value: &str) -> Self {
        self.plugin_env.push((key.to_string(), value.to_string()));
        self
    }

    /// Environment variables of the plugin ([`Self::plugin_env`] for each).
    pub fn plugin_envs(mut self, env: &[(&str, &str)]) -> Self {
        for (k, v) in env {
            self = self.plugin_env(k, v);
        }
        self
    }

    /// Imports the busybox image ([`DockerEnv::image`]).
    pub fn busybox(mut self) -> Self {
        self.busybox = true;
        self
    }

    /// Puts iptables FORWARD at DROP if Docker did not (Docker's own default when it turns
    /// on forwarding), so a test passes only through the plugin's rules.
    pub fn forward_drop(mut self) -> Self {
        self.forward_drop = true;
        self
    }

    /// dockerd in a mount namespace of its own that sees `text` as `/etc/resolv.conf`
    /// ([`Dockerd::start_with`]).
    pub fn resolv_conf(mut self, text: &str) -> Self {
        self.resolv_conf = Some(text.to_string());
        self
    }

    /// [`Self::start`] when we are root; `None` (after saying loudly that `test` is skipped,
    /// or panicking: see [`super::require_root`]) when not.
    pub fn start_if_root(self, test: &str) -> Option<DockerEnv> {
        super::require_root(test).then(|| self.start())
    }

    /// Takes the host lock, then starts etcd, the plugin and dockerd (dockerd before the
    /// plugin with [`Self::docker_api`]), then imports busybox and sets FORWARD to DROP.
    pub fn start(self) -> DockerEnv {
        let lock = lock();
        let etcd = self.etcd.then(Etcd::start);
        let resolv_conf = self.resolv_conf.as_deref();
        let early = self.docker_api.then(|| Dockerd::start_with(resolv_conf));
        let mut plugin = Plugin::new(&[]);
        match &etcd {
            Some(etcd) => {
                plugin.set_env("DATASTORE_TYPE", "etcdv3");
                plugin.set_env("ETCD_ENDPOINTS", &etcd.endpoint());
            }
            None => {
                let store = plugin.store_path().display().to_string();
                plugin.set_env("DATASTORE_TYPE", "local");
                plugin.set_env("CALICO_LIBNETWORK_STORE", &store);
            }
        }
        if let Some(d) = &early {
            plugin.set_env("CALICO_LIBNETWORK_DOCKER_HOST", &d.host());
        }
        for (k, v) in &self.plugin_env {
            plugin.set_env(k, v);
        }
        plugin.spawn();
        let mut docker = early.unwrap_or_else(|| Dockerd::start_with(resolv_conf));
        let image = self.busybox.then(|| docker.import_busybox());
        if self.forward_drop {
            docker.force_forward_drop();
        }
        DockerEnv {
            docker,
            plugin,
            etcd,
            image,
            _lock: lock,
        }
    }
}

impl DockerEnv {
    /// Options, starting from: etcd, no Docker API for the plugin, no busybox, FORWARD as
    /// dockerd left it.
    pub fn builder() -> DockerEnvBuilder {
        DockerEnvBuilder {
            etcd: true,
            docker_api: false,
            plugin_env: Vec::new(),
            busybox: false,
            forward_drop: false,
            resolv_conf: None,
        }
    }

    /// Lock, a fresh etcd, the plugin on it, then dockerd.
    pub fn with_etcd() -> DockerEnv {
        Self::builder().etcd().start()
    }

    /// Lock, the plugin on a fresh embedded store, then dockerd.
    pub fn with_local_store() -> DockerEnv {
        Self::builder().local_store().start()
    }

    /// The etcd (panics for a local-store setup).
    pub fn etcd(&self) -> &Etcd {
        self.etcd.as_ref().expect("this DockerEnv has no etcd")
    }

    /// The etcd, to stop and restart it (panics for a local-store setup).
    pub fn etcd_mut(&mut self) -> &mut Etcd {
        self.etcd.as_mut().expect("this DockerEnv has no etcd")
    }

    /// Our dockerd.
    pub fn d(&self) -> &Dockerd {
        &self.docker
    }

    /// The busybox image (panics unless built with [`DockerEnvBuilder::busybox`]).
    pub fn image(&self) -> &'static str {
        self.image
            .expect("this DockerEnv has no busybox: DockerEnv::builder().busybox()")
    }

    /// Every key under `prefix` in etcd, its value parsed as JSON.
    pub fn list(&self, prefix: &str) -> Vec<(String, serde_json::Value)> {
        self.etcd().list_json(prefix)
    }

    /// `docker network create -d calico --ipam-driver calico extra... name`; the network ID.
    pub fn network(&self, name: &str, extra: &[&str]) -> String {
        self.docker.calico_network(name, extra)
    }

    /// `docker run -d --name name extra... busybox sleep 600`.
    pub fn run(&self, name: &str, extra: &[&str]) {
        self.docker.sleeper(self.image(), name, extra)
    }
}
