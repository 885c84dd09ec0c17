//! The real `calico-libnetwork` binary serving the socket dockerd discovers,
//! `/run/docker/plugins/calico.sock`, and [`DockerEnv`]: lock + etcd + plugin + dockerd.
//!
//! The socket path is fixed, so tests using [`Plugin`] must hold [`lock`] (re-exported from
//! `super::docker`) for their whole duration; [`DockerEnv`] does.

use std::io::{Read, Write as _};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use super::docker::{assert_locked, lock, HostLock};
use super::docker::{log_tail, stop_child, Dockerd};
use super::etcd::Etcd;

/// The plugin binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_calico-libnetwork");
/// Where dockerd looks for the `calico` plugin.
pub const SOCKET: &str = "/run/docker/plugins/calico.sock";
/// The Calico node name the plugin runs as.
pub const NODENAME: &str = "calico-test-node";

/// A running plugin process; stopped by PID (SIGTERM, then SIGKILL) and its socket removed on
/// drop.
pub struct Plugin {
    child: Option<Child>,
    /// Removes the plugin's firewall rules and the veths left after it stopped (dropped
    /// after `Drop::drop`).
    _fw: super::firewall::HostCleanup,
    env: Vec<(String, String)>,
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
        let dir = tempfile::Builder::new()
            .prefix("cdt-plugin-")
            .tempdir_in("/tmp")
            .expect("plugin temp dir");
        let mut p = Plugin {
            child: None,
            _fw: super::firewall::HostCleanup::new(),
            env: Vec::new(),
            dir,
        };
        p.set_env("CALICO_LIBNETWORK_SOCKET", SOCKET);
        p.set_env("NODENAME", NODENAME);
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
    pub fn socket(&self) -> &'static Path {
        Path::new(SOCKET)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "plugin already running");
        claim_socket(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path().display()));
        let mut cmd = Command::new(BINARY);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("start {BINARY}: {e}")),
        );
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        loop {
            if let Some(Ok(Some(s))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                panic!(
                    "calico-libnetwork exited ({s}) before serving {SOCKET}:\n{}",
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
                    "calico-libnetwork did not answer Plugin.Activate on {SOCKET} within 20 s \
                     ({last}):\n{}",
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
        let _ = std::fs::remove_file(SOCKET);
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
                "----- calico-libnetwork log (last 150 lines of {}) -----\n{}\n-----",
                self.log_path().display(),
                log_tail(&self.log_path(), 150)
            );
        }
    }
}

/// A whole Docker test setup: the host lock, a datastore, the plugin and our own dockerd.
/// Dropped in field order: dockerd first (its containers are removed while the plugin still
/// answers), then the plugin, then etcd, then the lock.
pub struct DockerEnv {
    pub docker: Dockerd,
    pub plugin: Plugin,
    pub etcd: Option<Etcd>,
    _lock: HostLock,
}

impl DockerEnv {
    /// Lock, a fresh etcd, the plugin on it, then dockerd.
    pub fn with_etcd() -> DockerEnv {
        let lock = lock();
        let etcd = Etcd::start();
        let plugin = Plugin::with_etcd(&etcd);
        let docker = Dockerd::start();
        DockerEnv {
            docker,
            plugin,
            etcd: Some(etcd),
            _lock: lock,
        }
    }

    /// Lock, the plugin on a fresh embedded store, then dockerd.
    pub fn with_local_store() -> DockerEnv {
        let lock = lock();
        let plugin = Plugin::with_local_store();
        let docker = Dockerd::start();
        DockerEnv {
            docker,
            plugin,
            etcd: None,
            _lock: lock,
        }
    }

    /// The etcd (panics for a local-store setup).
    pub fn etcd(&self) -> &Etcd {
        self.etcd.as_ref().expect("this DockerEnv has no etcd")
    }
}
