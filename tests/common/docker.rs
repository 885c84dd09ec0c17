//! A real Docker engine of our own: Debian's `docker.io` 20.10 (`/usr/sbin/dockerd`) with its
//! own containerd, data root, exec root, API socket, cgroup parent and bridge.
//!
//! Which engine: [`ENGINE_VAR`] (`CALICO_TEST_DOCKER_ENGINE`): `20.10` (the default) is Debian
//! 12's `docker.io` and `containerd`; any other value names a Debian suite whose `docker.io`,
//! `docker-cli` and `containerd` `scripts/fetch-docker-engine.sh <suite>` unpacked into its
//! cache (`sid`: Docker 28 with containerd 2.1, and Compose v2, sid's `docker-compose`, as the
//! client's `docker compose`). See [`engine`]. The harness prints the engine's versions once
//! per test process.
//!
//! It never touches `/var/run/docker.sock`, `/var/lib/docker`, `/run/containerd/containerd.sock`
//! or any process it did not start. It keeps Docker's default firewall settings as on users'
//! hosts (`--iptables`, `--ip-forward`, `--ip-masq` on): the default `bridge` network uses a
//! bridge we create (`calitestbr0`, 172.31.250.1/24) instead of `docker0`, so it cannot clash
//! with another dockerd.
//!
//! containerd: dockerd 20.10 connects to `/run/containerd/containerd.sock` whenever that
//! socket exists (and only starts a managed containerd when it does not), so to be sure ours
//! never talks to a containerd of the host we start a containerd of our own (root, state,
//! socket and `opt` directory in our temp dir) and pass it with `--containerd`.
//!
//! Host state Docker changes and we put back on drop (checked by `harness_leaves_nothing_behind` in
//! tests/docker/docker_ipam.rs): iptables rules and `DOCKER*` chains it added, the FORWARD policy
//! (DROP when Docker itself turned on forwarding), the `ip_forward` / `bridge-nf-call-*`
//! sysctls, `/etc/docker/key.json` (20.10 always creates it) and containerd's shim socket
//! directory `/run/containerd/s`. With a foreign dockerd running, only rules naming our bridge
//! or subnet are removed and shared state (chains, policy, sysctls) is left as it is.
//!
//! With [`DockerdOptions::netns`] containerd and dockerd run in a network namespace of their
//! own instead (one host of `super::hosts::Fleet`): no bridge of ours, and Docker's rules,
//! chains and sysctls are the namespace's; [`HostRestore`] puts back the files.
//!
//! Everything here changes host-wide state, so a test must hold [`lock`] while it uses a
//! [`Dockerd`] (the plugin harness, `super::plugin`, needs the same lock).
//!
//! Like the etcd harness, the processes get PR_SET_PDEATHSIG, which fires when the *thread*
//! that started them ends: create a [`Dockerd`] on the test's own thread (a `#[tokio::test]`
//! body is fine), not on a short-lived helper thread.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

pub use super::host::{log_tail, run_with_timeout, stop_child};
use super::host::{output, run_ok, spawn_logged, PATH};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

/// Debian's dockerd.
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's docker client (another, newer client may come first on PATH).
pub const DOCKER: &str = "/usr/bin/docker";
/// Debian's containerd.
pub const CONTAINERD: &str = "/usr/bin/containerd";
/// The bridge of our dockerd's default `bridge` network (created and deleted by us).
pub const BRIDGE: &str = "calitestbr0";
/// The address of [`BRIDGE`].
pub const BRIDGE_ADDR: &str = "172.31.250.1/24";
/// The subnet of [`BRIDGE`].
pub const BRIDGE_SUBNET: &str = "172.31.250.0/24";
/// Where our dockerd takes the subnets of bridge networks created without `--subnet`.
pub const DEFAULT_POOL: &str = "172.31.240.0/21";
/// The image [`Dockerd::import_busybox`] creates.
pub const BUSYBOX_IMAGE: &str = "busybox:calico-test";
/// Parent cgroup of our containers (in each cgroup hierarchy; removed on drop).
pub const CGROUP_PARENT: &str = "calico-libnetwork-test";
/// Lock file serialising every test that uses Docker or the plugin socket, across processes.
pub const LOCK_FILE: &str = "/run/docker/plugins/.calico-test.lock";
/// Deadline of one `docker` command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// Chooses the engine: `20.10` (Debian 12's, the default) or a Debian suite fetched by
/// `scripts/fetch-docker-engine.sh` (`sid`).
pub const ENGINE_VAR: &str = "CALICO_TEST_DOCKER_ENGINE";
/// The engine of Debian 12 (installed), the default.
pub const DEBIAN_ENGINE: &str = "20.10";
/// Where `scripts/fetch-docker-engine.sh` unpacks a suite's engine (`<cache>/<suite>`), unless
/// `CALICO_TEST_ENGINE_CACHE` says otherwise.
pub const ENGINE_CACHE: &str = "/var/cache/calico-libnetwork-test/engines";

/// The Docker engine the harness starts: its programs and the PATH they run with.
pub struct Engine {
    /// [`DEBIAN_ENGINE`] or a Debian suite (`sid`).
    pub name: String,
    pub dockerd: PathBuf,
    pub docker: PathBuf,
    pub containerd: PathBuf,
    /// PATH of dockerd, containerd and the client: the engine's directories first, so that
    /// containerd finds the engine's shim (`containerd-shim-runc-v2`) and dockerd its
    /// `docker-proxy` and `docker-init`; then Debian 12's (its `runc` for every engine: sid's
    /// runc 1.3 needs a newer glibc).
    pub path: String,
    /// The directory of the client's CLI plugins (sid's `docker-compose` unpacked:
    /// `usr/libexec/docker/cli-plugins`), when the engine has one: the client of
    /// [`Dockerd`] finds them there (`cliPluginsExtraDirs` of its config file). Debian 12's
    /// engine has none (its `docker-compose` is the Python Compose v1, not a plugin).
    pub cli_plugins: Option<PathBuf>,
}

impl Engine {
    /// Whether this is Debian 12's Docker 20.10.
    pub fn is_debian(&self) -> bool {
        self.name == DEBIAN_ENGINE
    }

    /// Whether the client has Compose v2 (`docker compose`).
    pub fn has_compose(&self) -> bool {
        self.cli_plugins
            .as_ref()
            .is_some_and(|d| d.join("docker-compose").exists())
    }
}

/// The engine chosen by [`ENGINE_VAR`] (read once per process). Panics, saying how to fetch
/// it, when a suite's engine is not in the cache.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let name = std::env::var(ENGINE_VAR)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEBIAN_ENGINE.to_string());
        if name == DEBIAN_ENGINE {
            return Engine {
                name,
                dockerd: DOCKERD.into(),
                docker: DOCKER.into(),
                containerd: CONTAINERD.into(),
                path: PATH.to_string(),
                cli_plugins: None,
            };
        }
        let cache =
            std::env::var("CALICO_TEST_ENGINE_CACHE").unwrap_or_else(|_| ENGINE_CACHE.to_string());
        let root = Path::new(&cache).join(&name);
        let e = Engine {
            dockerd: root.join("usr/sbin/dockerd"),
            docker: root.join("usr/bin/docker"),
            containerd: root.join("usr/bin/containerd"),
            path: format!("{r}/usr/sbin:{r}/usr/bin:{PATH}", r = root.display()),
            cli_plugins: Some(root.join("usr/libexec/docker/cli-plugins")).filter(|d| d.is_dir()),
            name,
        };
        for prog in [&e.dockerd, &e.docker, &e.containerd] {
            assert!(
                prog.exists(),
                "{ENGINE_VAR}={}: {} missing: run `bash scripts/fetch-docker-engine.sh {}`",
                e.name,
                prog.display(),
                e.name
            );
        }
        e
    })
}

static LOCK: Mutex<()> = Mutex::new(());
static HELD: AtomicBool = AtomicBool::new(false);

/// Exclusive use of the host's Docker-related state: held for a whole Docker test.
pub struct HostLock {
    // Field order matters: the file lock is released before the in-process mutex.
    file: File,
    _guard: MutexGuard<'static, ()>,
}

/// Takes the process-wide lock, then the file lock on [`LOCK_FILE`] (which also keeps two
/// test binaries apart). Blocks until both are free.
pub fn lock() -> HostLock {
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::create_dir_all(Path::new(LOCK_FILE).parent().unwrap())
        .expect("create /run/docker/plugins");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .unwrap_or_else(|e| panic!("open {LOCK_FILE}: {e}"));
    let fd = file.as_raw_fd();
    // SAFETY: `fd` belongs to `file`, which is open for the whole call.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("waiting for {LOCK_FILE}: another test process is using Docker");
        // SAFETY: as above.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            panic!("flock {LOCK_FILE}: {}", std::io::Error::last_os_error());
        }
    }
    HELD.store(true, Ordering::SeqCst);
    HostLock {
        file,
        _guard: guard,
    }
}

/// Root (see [`super::require_root`]: `None` after a loud skip), then [`lock`]: the lock and
/// when the test started (before it waited for the lock).
pub fn lock_if_root(test: &str) -> Option<(HostLock, Instant)> {
    if !super::require_root(test) {
        return None;
    }
    let t0 = Instant::now();
    Some((lock(), t0))
}

impl Drop for HostLock {
    fn drop(&mut self) {
        HELD.store(false, Ordering::SeqCst);
        // SAFETY: the descriptor belongs to `self.file`, still open here.
        unsafe {
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Panics unless some thread of this process holds [`lock`].
pub fn assert_locked(what: &str) {
    assert!(
        HELD.load(Ordering::SeqCst),
        "{what} changes host-wide state: hold common::docker::lock() for the whole test"
    );
}

// ---------------------------------------------------------------------------------------------
// Processes and commands.

/// The PIDs in /proc for which `keep(pid, /proc/PID)` holds.
fn scan_proc(keep: impl Fn(i32, &Path) -> bool) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            keep(pid, &e.path()).then_some(pid)
        })
        .collect()
}

/// Processes (other than us) whose command line contains `needle`.
fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    scan_proc(|pid, dir| {
        pid != me
            && std::fs::read(dir.join("cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
    })
}

/// PIDs of dockerd processes other than `except`.
pub fn other_dockerds(except: Option<u32>) -> Vec<i32> {
    scan_proc(|pid, dir| {
        Some(pid as u32) != except
            && std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == "dockerd")
    })
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

// ---------------------------------------------------------------------------------------------
// Host state Docker changes.

/// Sysctls dockerd may switch on.
const SYSCTLS: &[&str] = &[
    "/proc/sys/net/ipv4/ip_forward",
    // Not dockerd's, but the plugin's for IPv6 endpoints; put back the same way.
    "/proc/sys/net/ipv6/conf/all/forwarding",
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
];
/// Files and directories dockerd/containerd may create outside our temp dir, deepest first.
const CREATED_PATHS: &[&str] = &[
    "/etc/docker/key.json",
    "/etc/docker",
    "/run/containerd/s",
    "/run/containerd",
];

/// The host state before our dockerd started, to undo what it changed. A [`Dockerd`] on the
/// host's network takes and restores its own; dockerds in network namespaces of their own
/// (`super::hosts::Fleet`) share one [`HostRestore`].
struct HostSnapshot {
    /// `iptables -t <table> -S` lines per table.
    iptables: Vec<(&'static str, Vec<String>)>,
    /// Sysctl values.
    sysctls: Vec<(&'static str, String)>,
    /// Paths of [`CREATED_PATHS`] that did not exist.
    absent: Vec<&'static str>,
}

fn iptables_rules(table: &str) -> Vec<String> {
    match output("iptables", &["-w", "-t", table, "-S"]) {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

impl HostSnapshot {
    fn take() -> Self {
        HostSnapshot {
            iptables: ["filter", "nat"]
                .into_iter()
                .map(|t| (t, iptables_rules(t)))
                .collect(),
            sysctls: SYSCTLS
                .iter()
                .filter_map(|p| {
                    std::fs::read_to_string(p)
                        .ok()
                        .map(|v| (*p, v.trim().to_string()))
                })
                .collect(),
            absent: CREATED_PATHS
                .iter()
                .copied()
                .filter(|p| std::fs::symlink_metadata(p).is_err())
                .collect(),
        }
    }

    /// Undoes what our dockerd changed. `exclusive`: no other dockerd runs, so Docker's shared
    /// chains, the FORWARD policy and the sysctls are ours to put back.
    fn restore(&self, exclusive: bool) {
        let ours = |line: &str| line.contains(BRIDGE) || line.contains(BRIDGE_SUBNET);
        for (table, before) in &self.iptables {
            let before: HashSet<&String> = before.iter().collect();
            let now = iptables_rules(table);
            // Rules first (newest first), then the chains they used.
            for line in now.iter().rev() {
                let Some(spec) = line.strip_prefix("-A ") else {
                    continue;
                };
                let added = !before.contains(line);
                if ours(line) || (exclusive && added && line.contains("DOCKER")) {
                    let rule = split_rule(spec);
                    let mut args = vec!["-w", "-t", table, "-D"];
                    args.extend(rule.iter().map(String::as_str));
                    if let Ok(o) = output("iptables", &args) {
                        if !o.status.success() {
                            eprintln!(
                                "iptables {args:?}: {}",
                                String::from_utf8_lossy(&o.stderr).trim()
                            );
                        }
                    }
                }
            }
            if exclusive {
                for line in &now {
                    let Some(chain) = line.strip_prefix("-N ") else {
                        continue;
                    };
                    if !before.contains(line) && chain.starts_with("DOCKER") {
                        let _ = output("iptables", &["-w", "-t", table, "-F", chain]);
                        let _ = output("iptables", &["-w", "-t", table, "-X", chain]);
                    }
                }
                // Built-in chain policies (`-P CHAIN POLICY`).
                for line in before.iter().filter(|l| l.starts_with("-P ")) {
                    if !now.contains(*line) {
                        let p: Vec<&str> = line.split_whitespace().collect();
                        if p.len() == 3 {
                            let _ = output("iptables", &["-w", "-t", table, "-P", p[1], p[2]]);
                        }
                    }
                }
            }
        }
        if exclusive {
            for (path, value) in &self.sysctls {
                let now = std::fs::read_to_string(path).unwrap_or_default();
                if now.trim() != value {
                    if let Err(e) = std::fs::write(path, format!("{value}\n")) {
                        eprintln!("restore {path}={value}: {e}");
                    }
                }
            }
        }
        for p in &self.absent {
            let path = Path::new(p);
            if path.is_dir() {
                let _ = std::fs::remove_dir(path); // only when empty
            } else if *p == "/etc/docker/key.json" && exclusive {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// A [`HostSnapshot`] taken before several dockerds start and restored once they are all
/// gone (on drop, after them: declare it before them), so that the files the first of them
/// created (`/etc/docker/key.json`, `/run/containerd/s`) go with the last.
pub struct HostRestore(HostSnapshot);

impl HostRestore {
    /// Takes the snapshot. Hold [`lock`].
    pub fn take() -> Self {
        assert_locked("HostRestore::take");
        HostRestore(HostSnapshot::take())
    }
}

impl Drop for HostRestore {
    fn drop(&mut self) {
        self.0.restore(other_dockerds(None).is_empty());
    }
}

/// Splits an `iptables -S` rule into arguments (quoted comments stay one argument).
fn split_rule(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in spec.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The daemon.

/// Where and how a [`Dockerd`] runs ([`Dockerd::start_opts`]); the default is
/// [`Dockerd::start`]'s: on the host's network and mounts.
#[derive(Clone, Debug, Default)]
pub struct DockerdOptions {
    /// The text of `/etc/resolv.conf` as dockerd sees it (in a mount namespace of its own).
    pub resolv_conf: Option<String>,
    /// A network namespace (a `/run/netns/NAME` path) for containerd and dockerd. Then
    /// dockerd has no default bridge (`--bridge=none`), its firewall rules, chains and
    /// sysctls are the namespace's (gone with it), and the host's are neither touched nor
    /// restored by this `Dockerd`: hold a [`HostRestore`] for the files it may create.
    pub netns: Option<String>,
    /// A directory dockerd sees as `/run/docker/plugins` (in a mount namespace of its own):
    /// the plugin sockets it discovers, and only those.
    pub plugins_dir: Option<PathBuf>,
}

impl DockerdOptions {
    /// Whether dockerd needs a mount namespace of its own.
    fn own_mounts(&self) -> bool {
        self.resolv_conf.is_some() || self.plugins_dir.is_some()
    }
}

/// A running dockerd (with its containerd). Stopped by PID and everything removed on drop.
pub struct Dockerd {
    dockerd: Option<Child>,
    containerd: Option<Child>,
    /// Our directory: data root, exec root, sockets, logs.
    pub dir: tempfile::TempDir,
    /// The host's state to put back (none in a namespace of its own).
    host: Option<HostSnapshot>,
    /// Whether the busybox image has been imported.
    busybox: bool,
    opts: DockerdOptions,
}

impl Dockerd {
    /// Starts containerd and dockerd and waits until the API answers (at most 60 s).
    /// The caller must hold [`lock`].
    pub fn start() -> Dockerd {
        Self::start_with(None)
    }

    /// [`Dockerd::start`], with dockerd in a mount namespace of its own where `resolv_conf`
    /// (the file's text), when given, is bind-mounted over `/etc/resolv.conf`: the
    /// nameservers dockerd sees (it checks the subnets of new networks against them). Only
    /// dockerd's view changes; the host's file and containerd's are left alone.
    pub fn start_with(resolv_conf: Option<&str>) -> Dockerd {
        Self::start_opts(DockerdOptions {
            resolv_conf: resolv_conf.map(str::to_string),
            ..Default::default()
        })
    }

    /// [`Dockerd::start`] where and how `opts` say: in a network namespace of its own,
    /// seeing a `resolv.conf` and a plugin directory of its own.
    pub fn start_opts(opts: DockerdOptions) -> Dockerd {
        assert_locked("Dockerd::start");
        let e = engine();
        for prog in [&e.dockerd, &e.docker, &e.containerd] {
            assert!(
                prog.exists(),
                "{} missing: install Debian's docker.io and containerd",
                prog.display()
            );
        }
        // Short: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("cdt-")
            .tempdir_in("/tmp")
            .expect("docker temp dir");
        let host = opts.netns.is_none().then(HostSnapshot::take);
        let mut d = Dockerd {
            dockerd: None,
            containerd: None,
            dir,
            host,
            busybox: false,
            opts,
        };
        if let Some(text) = &d.opts.resolv_conf {
            std::fs::write(d.path("resolv.conf"), text).unwrap();
        }
        for sub in ["data", "x", "ctd", "ctds", "opt", "cli"] {
            std::fs::create_dir_all(d.path(sub)).unwrap();
        }
        // The client's config (DOCKER_CONFIG): where the engine's CLI plugins are.
        if let Some(dir) = &e.cli_plugins {
            let config = serde_json::json!({ "cliPluginsExtraDirs": [dir] });
            std::fs::write(d.path("cli/config.json"), config.to_string()).unwrap();
        }

        // Our bridge. A leftover one is from a run that was killed (we hold the lock).
        if d.opts.netns.is_none() {
            if link_exists(BRIDGE) {
                eprintln!("deleting leftover bridge {BRIDGE}");
                let _ = output("ip", &["link", "del", BRIDGE]);
            }
            run_ok("ip", &["link", "add", BRIDGE, "type", "bridge"]);
            run_ok("ip", &["addr", "add", BRIDGE_ADDR, "dev", BRIDGE]);
            run_ok("ip", &["link", "set", BRIDGE, "up"]);
        }

        d.start_containerd();
        d.start_dockerd();
        print_versions(&d);
        d
    }

    /// A path in our directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The API socket path.
    pub fn socket(&self) -> PathBuf {
        self.path("docker.sock")
    }

    /// `-H` value for the docker client.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// dockerd's exec root (its `netns/` holds the sandboxes).
    pub fn exec_root(&self) -> PathBuf {
        self.path("x")
    }

    /// The dockerd log file.
    pub fn log_path(&self) -> PathBuf {
        self.path("dockerd.log")
    }

    /// The dockerd log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// dockerd's PID.
    pub fn pid(&self) -> Option<u32> {
        self.dockerd.as_ref().map(|c| c.id())
    }

    fn spawn(&self, cmd: Command, log: &str, what: &str) -> Child {
        // Stopped gracefully if the test process dies before Drop runs.
        spawn_logged(cmd, &self.path(log), libc::SIGTERM, what)
    }

    /// `prog args...` with the engine's PATH and nothing else of our environment, in our
    /// network namespace if we have one.
    fn engine_command(&self, prog: &Path, args: &[String]) -> Command {
        let mut cmd = Command::new(prog);
        cmd.args(args).env_clear().env("PATH", &engine().path);
        if let Some(ns) = &self.opts.netns {
            super::netns::command_in(&mut cmd, ns);
        }
        cmd
    }

    /// The network namespace dockerd runs in (`None`: the host's).
    pub fn netns(&self) -> Option<&str> {
        self.opts.netns.as_deref()
    }

    fn containerd_socket(&self) -> PathBuf {
        self.path("containerd.sock")
    }

    fn start_containerd(&mut self) {
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = self.path("ctd").display(),
            state = self.path("ctds").display(),
            sock = self.containerd_socket().display(),
            opt = self.path("opt").display(),
        );
        std::fs::write(self.path("containerd.toml"), config).unwrap();
        let args = vec![
            "--config".to_string(),
            self.path("containerd.toml").display().to_string(),
        ];
        let cmd = self.engine_command(&engine().containerd, &args);
        self.containerd = Some(self.spawn(cmd, "containerd.log", "containerd"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(self.containerd_socket()).is_ok() {
                return;
            }
            if let Some(Ok(Some(s))) = self.containerd.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "containerd exited ({s}): {}",
                    log_tail(&self.path("containerd.log"), 40)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "containerd did not listen on {} within 20 s: {}",
                    self.containerd_socket().display(),
                    log_tail(&self.path("containerd.log"), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_dockerd(&mut self) {
        self.spawn_dockerd();
        self.wait_dockerd();
    }

    fn spawn_dockerd(&mut self) {
        if !self.path("daemon.json").exists() {
            std::fs::write(self.path("daemon.json"), "{}\n").unwrap();
        }
        let p = |n: &str| self.path(n).display().to_string();
        let args: Vec<String> = vec![
            "--debug".into(),
            // Not /etc/docker/daemon.json: the host's settings are not ours.
            "--config-file".into(),
            p("daemon.json"),
            "--data-root".into(),
            p("data"),
            "--exec-root".into(),
            p("x"),
            "--pidfile".into(),
            p("docker.pid"),
            "-H".into(),
            self.host(),
            "--containerd".into(),
            p("containerd.sock"),
            "--storage-driver".into(),
            "vfs".into(),
            "--bridge".into(),
            if self.opts.netns.is_some() {
                "none".into()
            } else {
                BRIDGE.into()
            },
            // Bridge networks made without --subnet come from a range of ours, not from the
            // host's defaults, which another dockerd's networks may already cover.
            "--default-address-pool".into(),
            format!("base={DEFAULT_POOL},size=24"),
            "--cgroup-parent".into(),
            format!("/{CGROUP_PARENT}"),
        ];
        let cmd = if self.opts.own_mounts() {
            self.own_mounts_command(&args)
        } else {
            self.engine_command(&engine().dockerd, &args)
        };
        self.dockerd = Some(self.spawn(cmd, "dockerd.log", "dockerd"));
    }

    /// dockerd in a mount namespace of its own (`unshare --mount`, which execs: the PID we
    /// get is dockerd's) where our `resolv.conf` is bind-mounted over `/etc/resolv.conf`
    /// and our plugin directory over `/run/docker/plugins` (each when given).
    /// Mounts dockerd makes under our directory (the network namespaces in its exec root,
    /// which runc opens from the host's namespace) must still reach the host: our directory
    /// is made a shared mount point first, and in the new namespace every other mount is
    /// made private, so the binds stay dockerd's alone.
    fn own_mounts_command(&self, args: &[String]) -> Command {
        let dir = self.dir.path().display().to_string();
        if !mount_points_under(&dir).contains(&dir) {
            run_ok("mount", &["--bind", &dir, &dir]);
        }
        run_ok("mount", &["--make-shared", &dir]);
        let script = r#"set -e
dir=$1 conf=$2 plugins=$3 dockerd=$4
shift 4
awk '{ print $5 }' /proc/self/mountinfo | while read -r m; do
    case $m in "$dir"|"$dir"/*) ;; *) mount --make-private "$m" 2>/dev/null || true ;; esac
done
[ -z "$conf" ] || mount --bind "$conf" /etc/resolv.conf
[ -z "$plugins" ] || mount --bind "$plugins" /run/docker/plugins
exec "$dockerd" "$@"
"#;
        let conf = match &self.opts.resolv_conf {
            Some(_) => self.path("resolv.conf").display().to_string(),
            None => String::new(),
        };
        let plugins = match &self.opts.plugins_dir {
            Some(p) => {
                std::fs::create_dir_all("/run/docker/plugins").expect("mkdir /run/docker/plugins");
                p.display().to_string()
            }
            None => String::new(),
        };
        let mut all = vec![
            "--mount".to_string(),
            "--propagation".into(),
            "unchanged".into(),
            "/bin/sh".into(),
            "-c".into(),
            script.into(),
            "sh".into(),
            dir.clone(),
            conf,
            plugins,
            engine().dockerd.display().to_string(),
        ];
        all.extend(args.iter().cloned());
        self.engine_command(Path::new("/usr/bin/unshare"), &all)
    }

    /// Waits (at most 60 s) until the dockerd just spawned answers `docker version`.
    fn wait_dockerd(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(s))) = self.dockerd.as_mut().map(|c| c.try_wait()) {
                panic!("dockerd exited ({s}): {}", log_tail(&self.log_path(), 40));
            }
            if self.socket().exists() {
                if let Ok(o) = self.docker_timeout(&["version"], Duration::from_secs(10)) {
                    if o.status.success() {
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "dockerd did not answer `docker version` within 60 s: {}",
                    log_tail(&self.log_path(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn docker_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&engine().docker);
        cmd.arg("-H")
            .arg(self.host())
            .args(args)
            .env_clear()
            .env("PATH", &engine().path)
            .env("DOCKER_CONFIG", self.path("cli"));
        cmd
    }

    /// Runs the engine's `docker -H <ours> args...` with a deadline.
    pub fn docker_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        run_with_timeout(self.docker_command(args), None, timeout)
    }

    /// Runs the engine's `docker -H <ours> args...` (panics only if it hangs past
    /// [`COMMAND_TIMEOUT`]).
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_timeout(args, COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\ndockerd log:\n{}", log_tail(&self.log_path(), 40)))
    }

    /// Starts `docker -H <ours> args...` in the background (a long-lived `docker exec`, say)
    /// with its stdout and stderr appended to `log`, and returns it: the caller ends it
    /// (e.g. by signalling the process it runs in the container) and waits for it. It gets
    /// SIGKILL when the starting thread ends ([`spawn_logged`]): start it on the test's own
    /// thread.
    pub fn docker_spawn(&self, args: &[&str], log: &Path) -> Child {
        spawn_logged(self.docker_command(args), log, libc::SIGKILL, "docker")
    }

    /// Runs docker, feeding `stdin`.
    pub fn docker_stdin(&self, args: &[&str], stdin: Vec<u8>) -> Output {
        run_with_timeout(self.docker_command(args), Some(stdin), COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\ndockerd log:\n{}", log_tail(&self.log_path(), 40)))
    }

    /// Runs docker, expecting success; returns stdout, trimmed.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        if !out.status.success() {
            panic!(
                "docker {} failed ({}):\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `docker network create -d calico --ipam-driver calico extra... name`; the network ID.
    pub fn calico_network(&self, name: &str, extra: &[&str]) -> String {
        self.docker_ok(&Self::calico_network_args(name, extra))
    }

    /// The arguments of `docker network create -d calico --ipam-driver calico extra... name`.
    pub fn calico_network_args<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "network",
            "create",
            "-d",
            "calico",
            "--ipam-driver",
            "calico",
        ];
        args.extend_from_slice(extra);
        args.push(name);
        args
    }

    /// `docker run -d --name name extra... image sleep 600`.
    pub fn sleeper(&self, image: &str, name: &str, extra: &[&str]) {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[image, "sleep", "600"]);
        self.docker_ok(&args);
    }

    /// Docker's own firewall default on a host: FORWARD DROP (it turns ip_forward on itself).
    /// Should forwarding have been on already, Docker leaves the policy alone: then set DROP
    /// ourselves (the harness restores the policy), unless another dockerd runs here.
    pub fn force_forward_drop(&self) {
        if super::firewall::forward_policy() != "-P FORWARD DROP"
            && other_dockerds(self.pid()).is_empty()
        {
            eprintln!("FORWARD policy was not DROP, setting it");
            assert!(super::firewall::host("iptables", &["-w", "-P", "FORWARD", "DROP"]).0);
        }
    }

    /// Runs docker, expecting failure; returns stderr, trimmed.
    pub fn docker_err(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        if out.status.success() {
            panic!(
                "docker {} unexpectedly succeeded: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    }

    /// Names of the networks Docker has.
    pub fn networks(&self) -> Vec<String> {
        self.docker_ok(&["network", "ls", "--format", "{{.Name}}"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Creates [`BUSYBOX_IMAGE`]: a root filesystem of the static busybox with a symlink per
    /// applet (sh, ping, ip, ifconfig, wget, nc, httpd, sleep, ...), built in our temp dir and
    /// loaded with `docker import`. Returns the image name.
    pub fn import_busybox(&mut self) -> &'static str {
        if self.busybox {
            return BUSYBOX_IMAGE;
        }
        let root = self.path("rootfs");
        let bin = root.join("bin");
        for d in ["bin", "etc", "tmp", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .expect("copy /bin/busybox (install busybox-static)");
        let applets = run_ok("/bin/busybox", &["--list"]);
        for a in applets.lines().map(str::trim) {
            if a.is_empty() || a == "busybox" || a.contains('/') {
                continue;
            }
            let _ = std::os::unix::fs::symlink("busybox", bin.join(a));
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        let tar = output("tar", &["-C", &root.display().to_string(), "-cf", "-", "."])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            tar.status.success(),
            "tar rootfs: {}",
            String::from_utf8_lossy(&tar.stderr)
        );
        let out = self.docker_stdin(
            &[
                "import",
                "--change",
                r#"CMD ["/bin/sh"]"#,
                "-",
                BUSYBOX_IMAGE,
            ],
            tar.stdout,
        );
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&root);
        self.busybox = true;
        BUSYBOX_IMAGE
    }

    /// Replaces dockerd's configuration file (`daemon.json`, ours, never the host's): in
    /// effect from the next [`Dockerd::restart_dockerd`].
    pub fn set_daemon_config(&mut self, json: &str) {
        std::fs::write(self.path("daemon.json"), json).unwrap();
    }

    /// Stops dockerd alone, gracefully (SIGTERM, as `systemctl restart docker`) or as a
    /// crash (SIGKILL), then starts it again on the same data, exec root and containerd
    /// (which, with the containers' shims, keeps running throughout).
    pub fn restart_dockerd(&mut self, crash: bool) {
        self.restart_dockerd_with(crash, || {});
    }

    /// [`Dockerd::restart_dockerd`], calling `while_starting` (on this thread) right after
    /// the new dockerd is spawned, before waiting for it to answer: e.g. to start the plugin
    /// only while dockerd is already restoring its containers.
    pub fn restart_dockerd_with(&mut self, crash: bool, while_starting: impl FnOnce()) {
        let mut d = self.dockerd.take().expect("dockerd running");
        if crash {
            let _ = d.kill();
            let _ = d.wait();
        } else {
            stop_child(&mut d, libc::SIGTERM, Duration::from_secs(30));
        }
        // The log of the first run is kept next to the new one.
        let _ = std::fs::rename(self.log_path(), self.path("dockerd.log.1"));
        self.spawn_dockerd();
        while_starting();
        self.wait_dockerd();
    }

    /// Stops everything and puts the host back as it was. Idempotent; never panics.
    pub fn shutdown(&mut self) {
        let Some(mut dockerd) = self.dockerd.take() else {
            return;
        };
        let pid = dockerd.id();
        // Containers first, while dockerd (and any network plugin) can tear them down.
        if matches!(dockerd.try_wait(), Ok(None)) {
            if let Ok(o) = self.docker_timeout(&["ps", "-aq"], Duration::from_secs(30)) {
                let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids.iter().map(String::as_str));
                    match self.docker_timeout(&args, Duration::from_secs(60)) {
                        Ok(o) if !o.status.success() => eprintln!(
                            "docker rm -f: {}",
                            String::from_utf8_lossy(&o.stderr).trim()
                        ),
                        Err(e) => eprintln!("{e}"),
                        _ => {}
                    }
                }
            }
        }
        // Bridge networks the test created: dockerd keeps their bridges on the host across
        // restarts, so once our data root is gone they would be orphans that still hold
        // their subnets (and in time exhaust Docker's default address pools).
        let bridges = if matches!(dockerd.try_wait(), Ok(None)) {
            self.remove_bridge_networks()
        } else {
            Vec::new()
        };
        stop_child(&mut dockerd, libc::SIGTERM, Duration::from_secs(20));
        // In a namespace of its own, its bridges go with the namespace.
        let on_host = self.opts.netns.is_none();
        for b in bridges.iter().filter(|b| on_host && link_exists(b)) {
            eprintln!("deleting bridge {b} left by our dockerd");
            let _ = output("ip", &["link", "del", b]);
        }
        if let Some(mut c) = self.containerd.take() {
            stop_child(&mut c, libc::SIGTERM, Duration::from_secs(10));
        }
        // Whatever they left running (shims of containers dockerd failed to remove).
        let needle = self.dir.path().display().to_string();
        for p in pids_with_cmdline(&needle) {
            eprintln!("killing leftover process {p} of our dockerd");
            super::host::signal_pid(p, libc::SIGKILL);
        }
        self.unmount_all();
        let exclusive = other_dockerds(Some(pid)).is_empty();
        if let Some(host) = &self.host {
            host.restore(exclusive);
        }
        if on_host && link_exists(BRIDGE) {
            if let Ok(o) = output("ip", &["link", "del", BRIDGE]) {
                if !o.status.success() {
                    eprintln!(
                        "ip link del {BRIDGE}: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                }
            }
        }
        remove_cgroups();
    }

    /// Removes every bridge network but the default one; returns their host bridge names.
    fn remove_bridge_networks(&self) -> Vec<String> {
        let Ok(o) = self.docker_timeout(
            &[
                "network",
                "ls",
                "--no-trunc",
                "--filter",
                "driver=bridge",
                "--format",
                "{{.ID}} {{.Name}}",
            ],
            Duration::from_secs(30),
        ) else {
            return Vec::new();
        };
        let mut bridges = Vec::new();
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let Some((id, name)) = line.split_once(' ') else {
                continue;
            };
            if name == "bridge" {
                continue;
            }
            let custom = self
                .docker_timeout(
                    &[
                        "network",
                        "inspect",
                        "-f",
                        "{{index .Options \"com.docker.network.bridge.name\"}}",
                        id,
                    ],
                    Duration::from_secs(30),
                )
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            bridges.push(if custom.is_empty() || custom == "<no value>" {
                format!("br-{}", &id[..12.min(id.len())])
            } else {
                custom
            });
            match self.docker_timeout(&["network", "rm", id], Duration::from_secs(30)) {
                Ok(o) if !o.status.success() => eprintln!(
                    "docker network rm {name}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("{e}"),
                _ => {}
            }
        }
        bridges
    }

    /// Lazily unmounts everything mounted at or under our directory, deepest first.
    fn unmount_all(&self) {
        let root = self.dir.path().display().to_string();
        for _ in 0..5 {
            let mut points = mount_points_under(&root);
            if points.is_empty() {
                return;
            }
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let c = std::ffi::CString::new(p.clone()).unwrap();
                // SAFETY: `c` is a NUL-terminated path that outlives the call.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                    eprintln!("umount {p}: {}", std::io::Error::last_os_error());
                }
            }
        }
    }
}

/// Mount points (in our mount namespace) at or under `root`.
fn mount_points_under(root: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mount))
        .filter(|p| p == root || p.starts_with(&format!("{root}/")))
        .collect()
}

/// Prints, once per test process, which engine runs: `docker version`'s server (with its
/// components: containerd, runc, docker-init) and client, and the client's Compose v2.
fn print_versions(d: &Dockerd) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let format = "server {{.Server.Version}} (API {{.Server.APIVersion}}; \
                      {{range $i, $c := .Server.Components}}{{if $i}}, {{end}}{{$c.Name}} {{$c.Version}}{{end}}), \
                      client {{.Client.Version}} (API {{.Client.APIVersion}})";
        let v = match d.docker_timeout(&["version", "--format", format], Duration::from_secs(30)) {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => e,
        };
        let compose = if engine().has_compose() {
            match d.docker_timeout(&["compose", "version", "--short"], Duration::from_secs(30)) {
                Ok(o) if o.status.success() => {
                    format!(", compose {}", String::from_utf8_lossy(&o.stdout).trim())
                }
                Ok(o) => format!(", compose: {}", String::from_utf8_lossy(&o.stderr).trim()),
                Err(e) => format!(", compose: {e}"),
            }
        } else {
            String::new()
        };
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "===== Docker engine {}={}: {v}{compose} =====",
            ENGINE_VAR,
            engine().name
        );
    });
}

/// Decodes the octal escapes of /proc/self/mountinfo paths.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes our cgroup parent from every hierarchy (children first).
fn remove_cgroups() {
    fn rmdir_tree(p: &Path) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rmdir_tree(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(p);
    }
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut paths = vec![Path::new("/sys/fs/cgroup").join(CGROUP_PARENT)];
    paths.extend(rd.flatten().map(|e| e.path().join(CGROUP_PARENT)));
    for p in paths {
        if p.is_dir() {
            rmdir_tree(&p);
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- dockerd log (last 60 lines of {}) -----\n{}\n-----",
                self.log_path().display(),
                log_tail(&self.log_path(), 60)
            );
        }
        self.shutdown();
        // The temp dir itself is removed when `dir` drops, after this.
    }
}
