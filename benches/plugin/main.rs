//! The benchmark of BENCHMARKS.md: `cargo bench --bench plugin` (as root; see
//! scripts/bench.sh for the packages it needs).
//!
//! Parts (select with `BENCH_PARTS=docker,plugin,rtt,ipam,footprint`, default all):
//! - `docker`: `docker run --rm busybox` on a calico network vs `--net bridge` vs `--net none`
//!   through a dockerd of our own (tests/common/docker.rs), paired and alternated, on etcd and
//!   on the embedded store; then N containers started and removed in parallel.
//! - `plugin`: the real plugin binary driven over its socket with Docker's call sequence,
//!   inside a private network namespace (Join creates real veths there), with etcd started
//!   in that namespace too; the kernel floor (the same netlink code, nothing else); Debian's
//!   CNI `ptp` + `host-local` run directly, for reference.
//! - `rtt`: datastore round trips per Docker call, counted by the datastore layer
//!   (`Datastore::stats`), on an in-process driver.
//! - `ipam`: allocations/s, 8 simulated hosts on one etcd, 10,000 allocations on one host.
//! - `footprint`: RSS of the real binary idle and with 1,000 endpoints; start to ready.
//!
//! Sizes: `BENCH_N` (per-container loops, default 1000), `BENCH_DOCKER_RUNS` (default 20),
//! `BENCH_PARALLEL` (default 20), `BENCH_PARALLEL_REPS` (default 3), `BENCH_SCALE_N`
//! (default 10000), `BENCH_HOSTS` (default 8), `BENCH_PER_HOST` (default 250),
//! `BENCH_STORES` (default `etcd,local`).
//!
//! Output: markdown tables on stdout and in `bench-results/results.md`, charts
//! `bench-results/latency.svg` (docker part) and `bench-results/plugin-latency.svg`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calico_libnetwork::datastore::local::LocalStore;
use calico_libnetwork::datastore::{Datastore, StatsSnapshot};
use calico_libnetwork::driver::{Driver, DriverSettings, PoolRequest};
use serde_json::{json, Value};

use common::docker::{Dockerd, HostLock};
use common::etcd::Etcd;
use common::plugin::Plugin;

/// The plugin binary cargo built for this bench (release profile).
const BINARY: &str = env!("CARGO_BIN_EXE_calico-libnetwork");
const NODE: &str = "bench-node";

// ---------------------------------------------------------------------------------------
// Settings.

struct Cfg {
    parts: Vec<String>,
    stores: Vec<String>,
    n: usize,
    docker_runs: usize,
    parallel: usize,
    parallel_reps: usize,
    scale_n: usize,
    hosts: usize,
    per_host: usize,
    out: PathBuf,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Cfg {
    fn from_env() -> Cfg {
        Cfg {
            parts: env_list("BENCH_PARTS", "docker,plugin,rtt,ipam,footprint"),
            stores: env_list("BENCH_STORES", "etcd,local"),
            n: env_usize("BENCH_N", 1000),
            docker_runs: env_usize("BENCH_DOCKER_RUNS", 20),
            parallel: env_usize("BENCH_PARALLEL", 20),
            parallel_reps: env_usize("BENCH_PARALLEL_REPS", 3),
            scale_n: env_usize("BENCH_SCALE_N", 10_000),
            hosts: env_usize("BENCH_HOSTS", 8),
            per_host: env_usize("BENCH_PER_HOST", 250),
            out: Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results"),
        }
    }
    fn part(&self, p: &str) -> bool {
        self.parts.iter().any(|x| x == p || x == "all")
    }
}

// ---------------------------------------------------------------------------------------
// Statistics and report.

#[derive(Clone, Copy, Debug, Default)]
struct Summary {
    n: usize,
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summarize(v: &[f64]) -> Summary {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return Summary::default();
    }
    Summary {
        n: s.len(),
        min: s[0],
        p50: pct(&s, 50.0),
        p90: pct(&s, 90.0),
        p99: pct(&s, 99.0),
        max: s[s.len() - 1],
        mean: s.iter().sum::<f64>() / s.len() as f64,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn f(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// `p50 / p90 / p99 / min / max` cells.
fn cells(s: &Summary) -> Vec<String> {
    vec![
        s.n.to_string(),
        f(s.p50),
        f(s.p90),
        f(s.p99),
        f(s.min),
        f(s.max),
    ]
}
const CELL_HEAD: [&str; 6] = ["n", "p50 ms", "p90 ms", "p99 ms", "min ms", "max ms"];

#[derive(Default)]
struct Report {
    md: String,
    /// Sequential `docker run` latencies per series, for latency.svg.
    docker_series: Vec<(String, Vec<f64>)>,
    /// Per-container setup latencies per series, for plugin-latency.svg.
    plugin_series: Vec<(String, Vec<f64>)>,
}

impl Report {
    fn h(&mut self, level: usize, title: &str) {
        let _ = writeln!(self.md, "\n{} {title}\n", "#".repeat(level));
        println!("\n{} {title}\n", "#".repeat(level));
    }
    fn p(&mut self, text: &str) {
        let _ = writeln!(self.md, "{text}\n");
        println!("{text}\n");
    }
    fn table(&mut self, head: &[&str], rows: &[Vec<String>]) {
        let mut t = String::new();
        let _ = writeln!(t, "| {} |", head.join(" | "));
        let _ = writeln!(
            t,
            "|{}|",
            head.iter().map(|_| "---").collect::<Vec<_>>().join("|")
        );
        for r in rows {
            let _ = writeln!(t, "| {} |", r.join(" | "));
        }
        let _ = writeln!(self.md, "{t}");
        println!("{t}");
    }
}

fn goal(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**missed**"
    }
}

// ---------------------------------------------------------------------------------------
// Processes, namespaces, the plugin socket.

/// Runs `f` on a thread of its own inside a fresh network namespace with `lo` up. Children
/// spawned from that thread (etcd, the plugin, CNI plugins) are in the namespace too.
fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // SAFETY: unshare(CLONE_NEWNET) only changes this thread's namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
            let ok = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("run ip");
            assert!(ok.success(), "ip link set lo up");
            f()
        })
        .expect("spawn netns thread")
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn hex64() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A keep-alive HTTP/1.1 client on the plugin socket, sending what Docker sends.
struct Conn {
    path: PathBuf,
    r: Option<BufReader<UnixStream>>,
}

impl Conn {
    fn new(path: &Path) -> Conn {
        Conn {
            path: path.to_path_buf(),
            r: None,
        }
    }

    fn try_call(&mut self, method: &str, body: &str) -> std::io::Result<(u16, String)> {
        if self.r.is_none() {
            let s = UnixStream::connect(&self.path)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.r = Some(BufReader::new(s));
        }
        let r = self.r.as_mut().unwrap();
        let req = format!(
            "POST /{method} HTTP/1.1\r\nHost: plugin.moby.localhost\r\nUser-Agent: Go-http-client/1.1\r\n\
             Content-Length: {}\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\
             Accept-Encoding: gzip\r\n\r\n{body}",
            body.len()
        );
        r.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            } else if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = len {
            out.resize(n, 0);
            r.read_exact(&mut out)?;
        } else {
            r.read_to_end(&mut out)?;
            close = true;
        }
        if close {
            self.r = None;
        }
        Ok((status, String::from_utf8_lossy(&out).into_owned()))
    }

    /// One call; reconnects once if the kept-alive connection went away.
    fn call(&mut self, method: &str, body: &Value) -> (u16, Value) {
        let body = if body.is_null() {
            String::new()
        } else {
            format!("{body}\n")
        };
        let (st, text) = match self.try_call(method, &body) {
            Ok(x) => x,
            Err(_) => {
                self.r = None;
                self.try_call(method, &body)
                    .unwrap_or_else(|e| panic!("{method}: {e}"))
            }
        };
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (st, v)
    }

    fn ok(&mut self, method: &str, body: Value) -> Value {
        let (st, v) = self.call(method, &body);
        assert!(
            st == 200 && v.get("Err").is_none(),
            "{method} {body} -> {st} {v}"
        );
        v
    }
}

/// Where a plugin process keeps its state.
#[derive(Clone)]
enum Store {
    Etcd(String),
    Local(PathBuf),
}

/// The real plugin binary on a socket of its own (not Docker's fixed one), with the
/// dataplane firewall off; killed with its spawning thread (PR_SET_PDEATHSIG).
struct Proc {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    /// Starts the plugin; returns it and the time from spawn to Activate answered.
    fn start(store: &Store) -> (Proc, Duration) {
        let dir = tempfile::Builder::new()
            .prefix("calico-bench-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("calico.sock");
        let log = std::fs::File::create(dir.path().join("plugin.log")).unwrap();
        let mut cmd = Command::new(BINARY);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CALICO_LIBNETWORK_SOCKET", &socket)
            .env("NODENAME", NODE)
            .env("LOG_LEVEL", "info")
            .env("CALICO_LIBNETWORK_DATAPLANE", "off")
            // No Docker API here: the network-name lookup fails fast in the background.
            .env(
                "CALICO_LIBNETWORK_DOCKER_HOST",
                "unix:///run/calico-bench-no-docker.sock",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        match store {
            Store::Etcd(ep) => {
                cmd.env("DATASTORE_TYPE", "etcdv3")
                    .env("ETCD_ENDPOINTS", ep);
            }
            Store::Local(p) => {
                cmd.env("DATASTORE_TYPE", "local")
                    .env("CALICO_LIBNETWORK_STORE", p);
            }
        }
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let t0 = Instant::now();
        let child = cmd.spawn().expect("start calico-libnetwork");
        let mut p = Proc {
            child,
            socket,
            _dir: dir,
        };
        let deadline = t0 + Duration::from_secs(20);
        loop {
            if let Ok((200, body)) = common::plugin::call(&p.socket, "Plugin.Activate", "") {
                if body.contains("NetworkDriver") {
                    return (p, t0.elapsed());
                }
            }
            if let Ok(Some(s)) = p.child.try_wait() {
                panic!(
                    "plugin exited ({s}): {}",
                    std::fs::read_to_string(p._dir.path().join("plugin.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "plugin not ready within 20 s");
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        common::docker::stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(10));
    }
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// A calico network created the way Docker creates it (RequestPool, then CreateNetwork).
struct Net {
    id: String,
    pool_id: String,
}

fn create_network(c: &mut Conn) -> Net {
    let p = c.ok(
        "IpamDriver.RequestPool",
        json!({"AddressSpace": "CalicoLocalAddressSpace", "Pool": "", "SubPool": "", "Options": {}, "V6": false}),
    );
    let pool_id = p["PoolID"].as_str().unwrap().to_string();
    let id = hex64();
    c.ok(
        "NetworkDriver.CreateNetwork",
        json!({
            "NetworkID": id,
            "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {}},
            "IPv4Data": [{"AddressSpace": "CalicoLocalAddressSpace", "Pool": p["Pool"], "Gateway": "0.0.0.0/0"}],
            "IPv6Data": []
        }),
    );
    Net { id, pool_id }
}

/// One container's endpoint, set up with Docker's calls.
struct Ep {
    id: String,
    addr: String,
}

/// Time of each call of one container's setup and teardown, in ms.
#[derive(Default, Clone)]
struct CallTimes {
    setup: [f64; 4],
    teardown: [f64; 3],
}
const SETUP_CALLS: [&str; 4] = [
    "IpamDriver.RequestAddress",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.Join",
    "NetworkDriver.EndpointOperInfo",
];
const TEARDOWN_CALLS: [&str; 3] = [
    "NetworkDriver.Leave",
    "NetworkDriver.DeleteEndpoint",
    "IpamDriver.ReleaseAddress",
];

fn setup_container(c: &mut Conn, net: &Net, t: &mut CallTimes) -> Ep {
    let id = hex64();
    let t0 = Instant::now();
    let a = c.ok(
        "IpamDriver.RequestAddress",
        json!({"PoolID": net.pool_id, "Address": "", "Options": null}),
    );
    let addr = a["Address"].as_str().unwrap().to_string();
    let t1 = Instant::now();
    c.ok(
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": net.id, "EndpointID": id,
               "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""},
               "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}}),
    );
    let t2 = Instant::now();
    c.ok(
        "NetworkDriver.Join",
        json!({"NetworkID": net.id, "EndpointID": id,
               "SandboxKey": format!("/var/run/docker/netns/{}", &hex64()[..12]), "Options": {}}),
    );
    let t3 = Instant::now();
    c.ok(
        "NetworkDriver.EndpointOperInfo",
        json!({"NetworkID": net.id, "EndpointID": id}),
    );
    let t4 = Instant::now();
    t.setup = [ms(t1 - t0), ms(t2 - t1), ms(t3 - t2), ms(t4 - t3)];
    Ep {
        id,
        addr: addr.split('/').next().unwrap().to_string(),
    }
}

fn teardown_container(c: &mut Conn, net: &Net, ep: &Ep, t: &mut CallTimes) {
    let t0 = Instant::now();
    c.ok(
        "NetworkDriver.Leave",
        json!({"NetworkID": net.id, "EndpointID": ep.id}),
    );
    let t1 = Instant::now();
    c.ok(
        "NetworkDriver.DeleteEndpoint",
        json!({"NetworkID": net.id, "EndpointID": ep.id}),
    );
    let t2 = Instant::now();
    c.ok(
        "IpamDriver.ReleaseAddress",
        json!({"PoolID": net.pool_id, "Address": ep.addr}),
    );
    let t3 = Instant::now();
    t.teardown = [ms(t1 - t0), ms(t2 - t1), ms(t3 - t2)];
}

/// The datastore of a part, started in the current (namespace) thread.
struct StoreEnv {
    name: &'static str,
    store: Store,
    _etcd: Option<Etcd>,
    _dir: tempfile::TempDir,
}

fn store_env(kind: &str) -> StoreEnv {
    let dir = tempfile::tempdir().unwrap();
    match kind {
        "etcd" => {
            let etcd = Etcd::start();
            StoreEnv {
                name: "etcd",
                store: Store::Etcd(etcd.endpoint()),
                _etcd: Some(etcd),
                _dir: dir,
            }
        }
        _ => StoreEnv {
            name: "embedded",
            store: Store::Local(dir.path().join("store.redb")),
            _etcd: None,
            _dir: dir,
        },
    }
}

// ---------------------------------------------------------------------------------------
// Part 1: Docker.

/// Subnet of the user-defined bridge network the bench compares with (outside Calico's
/// default pool and the harness bridge).
const USER_BRIDGE_SUBNET: &str = "10.213.0.0/24";

struct DockerRun {
    seq: BTreeMap<String, Vec<f64>>,
    /// Per plugin call, the durations the plugin logged during the sequential runs.
    calls: BTreeMap<String, Vec<f64>>,
    par_start: BTreeMap<String, Vec<f64>>,
    par_rm: BTreeMap<String, Vec<f64>>,
}

fn docker_session(cfg: &Cfg, kind: &str) -> DockerRun {
    let lock: HostLock = common::docker::lock();
    let fw = common::firewall::HostCleanup::new();
    let etcd = (kind == "etcd").then(Etcd::start);
    let store_dir = tempfile::tempdir().unwrap();
    let mut docker = Dockerd::start();
    let image = docker.import_busybox();
    let host = docker.host();
    let store_path = store_dir.path().join("store.redb").display().to_string();
    // BENCH_DOCKER_DATAPLANE: the plugin's CALICO_LIBNETWORK_DATAPLANE (default `auto`, as
    // users run it), e.g. `off` to see what the firewall rules cost.
    let dataplane = std::env::var("BENCH_DOCKER_DATAPLANE").unwrap_or_else(|_| "auto".into());
    let mut env: Vec<(&str, &str)> = vec![
        ("LOG_LEVEL", "info"),
        ("CALICO_LIBNETWORK_DOCKER_HOST", host.as_str()),
        ("CALICO_LIBNETWORK_DATAPLANE", dataplane.as_str()),
    ];
    let ep;
    match &etcd {
        Some(e) => {
            ep = e.endpoint();
            env.push(("DATASTORE_TYPE", "etcdv3"));
            env.push(("ETCD_ENDPOINTS", ep.as_str()));
        }
        None => {
            env.push(("DATASTORE_TYPE", "local"));
            env.push(("CALICO_LIBNETWORK_STORE", store_path.as_str()));
        }
    }
    let plugin = Plugin::start(&env);
    docker.calico_network("benchnet", &[]);
    // A user-defined network of Docker's own bridge driver: like every user-defined network
    // (calico's too) it gets Docker's embedded DNS, set up in each container's namespace,
    // which `--net bridge` and `--net none` do not.
    docker.docker_ok(&[
        "network",
        "create",
        "-d",
        "bridge",
        "--subnet",
        USER_BRIDGE_SUBNET,
        "benchbr",
    ]);
    let nets = ["benchnet", "benchbr", "bridge", "none"];
    let run = |net: &str| -> f64 {
        let t = Instant::now();
        let out = docker
            .docker_timeout(
                &["run", "--rm", "--net", net, image, "true"],
                Duration::from_secs(90),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "docker run --net {net}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ms(t.elapsed())
    };
    // Warm-up: first use of each network (plugin activation, image layers in cache).
    for _ in 0..2 {
        for n in nets {
            run(n);
        }
    }
    let log_from = plugin.log().len();
    let mut seq: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..cfg.docker_runs {
        for k in 0..nets.len() {
            let n = nets[(i + k) % nets.len()];
            seq.entry(n.to_string()).or_default().push(run(n));
        }
    }
    let calls = plugin_calls(&plugin.log()[log_from..]);
    let mut par_start: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut par_rm: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for rep in 0..cfg.parallel_reps {
        for k in 0..nets.len() {
            let n = nets[(rep + k) % nets.len()];
            let names: Vec<String> = (0..cfg.parallel).map(|i| format!("benchp{i}")).collect();
            let t = Instant::now();
            std::thread::scope(|s| {
                for name in &names {
                    let d = &docker;
                    s.spawn(move || {
                        let out = d
                            .docker_timeout(
                                &[
                                    "run", "-d", "--name", name, "--net", n, image, "sleep", "600",
                                ],
                                Duration::from_secs(120),
                            )
                            .unwrap_or_else(|e| panic!("{e}"));
                        assert!(
                            out.status.success(),
                            "docker run -d --net {n}: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    });
                }
            });
            par_start
                .entry(n.to_string())
                .or_default()
                .push(ms(t.elapsed()));
            let t = Instant::now();
            std::thread::scope(|s| {
                for name in &names {
                    let d = &docker;
                    s.spawn(move || {
                        let out = d
                            .docker_timeout(&["rm", "-f", name], Duration::from_secs(120))
                            .unwrap_or_else(|e| panic!("{e}"));
                        assert!(out.status.success(), "docker rm -f {name}");
                    });
                }
            });
            par_rm
                .entry(n.to_string())
                .or_default()
                .push(ms(t.elapsed()));
        }
    }
    docker.docker_ok(&["network", "rm", "benchnet"]);
    docker.docker_ok(&["network", "rm", "benchbr"]);
    // Drop order: dockerd, plugin, etcd, firewall clean-up, lock.
    drop(docker);
    drop(plugin);
    drop(etcd);
    drop(fw);
    drop(lock);
    DockerRun {
        seq,
        calls,
        par_start,
        par_rm,
    }
}

/// The `duration_ms` of every `request` line in a plugin log, by method.
fn plugin_calls(log: &str) -> BTreeMap<String, Vec<f64>> {
    let field = |l: &str, k: &str| -> Option<String> {
        let rest = &l[l.find(&format!(" {k}="))? + k.len() + 2..];
        let v = rest.split_whitespace().next()?;
        Some(v.trim_matches('"').to_string())
    };
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for l in log.lines().filter(|l| l.contains("request")) {
        if let (Some(m), Some(d)) = (field(l, "method"), field(l, "duration_ms")) {
            if let Ok(d) = d.parse::<f64>() {
                out.entry(m).or_default().push(d);
            }
        }
    }
    out
}

fn part_docker(cfg: &Cfg, rep: &mut Report) {
    rep.h(2, "1. Container start and removal through Docker");
    rep.p(&format!(
        "`docker run --rm --net <net> busybox true` (Debian's docker client → our own dockerd), \
         {} runs per network, the four networks (calico; `benchbr`, a user-defined network of \
         Docker's bridge driver; the default `bridge`; `none`) alternated in rotating order, after \
         2 warm-up runs each; then {} containers `docker run -d ... sleep 600` started in parallel \
         and removed in parallel with `docker rm -f` ({} repetitions, alternated). Like calico's, \
         a user-defined network gets Docker's embedded DNS, set up inside every container's \
         namespace; `bridge` and `none` do not. The plugin runs as users run it (release build, \
         `LOG_LEVEL=info`, dataplane mode `{}`; `auto`, the default, means standalone firewall \
         rules: an endpoint's are inserted before Join answers and removed after DeleteEndpoint \
         answers).",
        cfg.docker_runs,
        cfg.parallel,
        cfg.parallel_reps,
        std::env::var("BENCH_DOCKER_DATAPLANE").unwrap_or_else(|_| "auto".into())
    ));
    let mut goals = Vec::new();
    for kind in &cfg.stores {
        let label = if kind == "etcd" {
            "etcd"
        } else {
            "embedded store"
        };
        eprintln!("[docker] session on {label}");
        let r = docker_session(cfg, kind);
        rep.h(
            3,
            &format!("Calico on {label}: sequential `docker run --rm`"),
        );
        let mut head = vec!["network"];
        head.extend(CELL_HEAD);
        let mut rows = Vec::new();
        let med = |m: &BTreeMap<String, Vec<f64>>, k: &str| {
            summarize(m.get(k).map(|v| v.as_slice()).unwrap_or(&[])).p50
        };
        for (n, label2) in [
            ("benchnet", "calico"),
            ("benchbr", "user-defined bridge"),
            ("bridge", "bridge"),
            ("none", "none"),
        ] {
            let s = summarize(&r.seq[n]);
            let mut row = vec![label2.to_string()];
            row.extend(cells(&s));
            rows.push(row);
        }
        rep.table(&head, &rows);
        let (c, ub, b, nn) = (
            med(&r.seq, "benchnet"),
            med(&r.seq, "benchbr"),
            med(&r.seq, "bridge"),
            med(&r.seq, "none"),
        );
        rep.p(&format!(
            "Ratios of medians: calico/bridge **{:.2}**, calico/user-defined bridge **{:.2}**, \
             calico/none **{:.2}**, bridge/none {:.2}, user-defined bridge/bridge {:.2}; over none, \
             calico costs {:+.0} ms per container, user-defined bridge {:+.0} ms, bridge {:+.0} ms.",
            c / b,
            c / ub,
            c / nn,
            b / nn,
            ub / b,
            c - nn,
            ub - nn,
            b - nn
        ));
        goals.push((format!("sequential calico/bridge ≤ 1.0 ({label})"), c / b));
        goals.push((
            format!("sequential calico/user-defined bridge ≤ 1.0 ({label})"),
            c / ub,
        ));
        if !r.calls.is_empty() {
            rep.p(&format!(
                "Inside those calico runs, the plugin's own time per call (its `duration_ms` log \
                 field; sum of medians {} ms per container):",
                f(r.calls.values().map(|v| summarize(v).p50).sum())
            ));
            let mut head = vec!["call"];
            head.extend(CELL_HEAD);
            let rows: Vec<Vec<String>> = r
                .calls
                .iter()
                .map(|(m, v)| {
                    let mut row = vec![m.clone()];
                    row.extend(cells(&summarize(v)));
                    row
                })
                .collect();
            rep.table(&head, &rows);
        }
        rep.h(
            3,
            &format!(
                "Calico on {label}: {} containers in parallel (wall time of the batch)",
                cfg.parallel
            ),
        );
        let mut rows = Vec::new();
        for (n, label2) in [
            ("benchnet", "calico"),
            ("benchbr", "user-defined bridge"),
            ("bridge", "bridge"),
            ("none", "none"),
        ] {
            let st = summarize(&r.par_start[n]);
            let rm = summarize(&r.par_rm[n]);
            let tot: Vec<f64> = r.par_start[n]
                .iter()
                .zip(&r.par_rm[n])
                .map(|(a, b)| a + b)
                .collect();
            let tot = summarize(&tot);
            rows.push(vec![
                label2.to_string(),
                format!("{} ({}–{})", f(st.p50), f(st.min), f(st.max)),
                format!("{} ({}–{})", f(rm.p50), f(rm.min), f(rm.max)),
                format!("{} ({}–{})", f(tot.p50), f(tot.min), f(tot.max)),
            ]);
        }
        rep.table(
            &[
                "network",
                "start ms, median (min–max)",
                "remove ms",
                "start+remove ms",
            ],
            &rows,
        );
        let tot = |n: &str| {
            let v: Vec<f64> = r.par_start[n]
                .iter()
                .zip(&r.par_rm[n])
                .map(|(a, b)| a + b)
                .collect();
            summarize(&v).p50
        };
        let (c, ub, b, nn) = (tot("benchnet"), tot("benchbr"), tot("bridge"), tot("none"));
        rep.p(&format!(
            "Ratios of medians (start+remove): calico/bridge **{:.2}**, calico/user-defined \
             bridge **{:.2}**, calico/none **{:.2}**, bridge/none {:.2}.",
            c / b,
            c / ub,
            c / nn,
            b / nn
        ));
        goals.push((format!("parallel calico/bridge ≤ 1.0 ({label})"), c / b));
        goals.push((
            format!("parallel calico/user-defined bridge ≤ 1.0 ({label})"),
            c / ub,
        ));
        let short = if kind == "etcd" { "etcd" } else { "embedded" };
        rep.docker_series
            .push((format!("calico ({short})"), r.seq["benchnet"].clone()));
        if kind == cfg.stores.last().unwrap() {
            rep.docker_series
                .push(("user-defined bridge".into(), r.seq["benchbr"].clone()));
            rep.docker_series
                .push(("bridge".into(), r.seq["bridge"].clone()));
            rep.docker_series
                .push(("none".into(), r.seq["none"].clone()));
        }
    }
    rep.h(3, "Goals (Docker)");
    let rows: Vec<Vec<String>> = goals
        .iter()
        .map(|(g, v)| vec![g.clone(), format!("{v:.2}"), goal(*v <= 1.0).into()])
        .collect();
    rep.table(&["goal", "measured", ""], &rows);
    rep.p("![per-container latency](latency.svg)");
}

// ---------------------------------------------------------------------------------------
// Part 2: the plugin's own time per container.

struct PluginTimes {
    setup: Vec<f64>,
    teardown: Vec<f64>,
    calls: Vec<CallTimes>,
}

fn plugin_loop(env: &StoreEnv, n: usize) -> PluginTimes {
    let (p, _) = Proc::start(&env.store);
    let mut c = Conn::new(&p.socket);
    let net = create_network(&mut c);
    let mut t = CallTimes::default();
    for _ in 0..20 {
        let ep = setup_container(&mut c, &net, &mut t);
        teardown_container(&mut c, &net, &ep, &mut t);
    }
    let mut out = PluginTimes {
        setup: Vec::with_capacity(n),
        teardown: Vec::with_capacity(n),
        calls: Vec::with_capacity(n),
    };
    for _ in 0..n {
        let mut t = CallTimes::default();
        let ep = setup_container(&mut c, &net, &mut t);
        teardown_container(&mut c, &net, &ep, &mut t);
        out.setup.push(t.setup.iter().sum());
        out.teardown.push(t.teardown.iter().sum());
        out.calls.push(t);
    }
    p.stop();
    out
}

/// The kernel floor: veth create + up + host route, and delete, with src/dataplane's netlink
/// code; and the plugin's whole veth setup (`setup_endpoint_veth`: also MACs, sysctls,
/// read-backs).
fn kernel_floor(n: usize) -> [(Vec<f64>, Vec<f64>); 2] {
    use calico_libnetwork::dataplane::{
        setup_endpoint_veth, teardown_endpoint_veth, EndpointVeth, Netlink,
    };
    runtime().block_on(async move {
        let nl = Netlink::new().unwrap();
        let mut minimal = (Vec::new(), Vec::new());
        let mut full = (Vec::new(), Vec::new());
        for i in 0..n + 20 {
            let ip = Ipv4Addr::new(10, 77, (i / 250) as u8, (i % 250 + 1) as u8);
            let host = format!("calib{i:010}");
            let temp = format!("tmpb{i:010}");
            let t0 = Instant::now();
            nl.create_veth(&host, &temp, None).await.unwrap();
            nl.set_link_up(&host).await.unwrap();
            nl.set_link_up(&temp).await.unwrap();
            nl.add_route(IpAddr::V4(ip).into(), &host).await.unwrap();
            let t1 = Instant::now();
            nl.delete_link(&host).await.unwrap();
            let t2 = Instant::now();
            let veth = EndpointVeth {
                host_name: host.clone(),
                temp_name: temp.clone(),
                mtu: None,
                ipv4: vec![ip],
                ipv6: vec![],
                container_mac: Some([0x02, 0x42, 0xac, 0x11, (i / 256) as u8, i as u8]),
                no_route_localnet: false,
            };
            setup_endpoint_veth(&nl, veth).await.unwrap();
            let t3 = Instant::now();
            teardown_endpoint_veth(&nl, &host).await.unwrap();
            let t4 = Instant::now();
            if i >= 20 {
                minimal.0.push(ms(t1 - t0));
                minimal.1.push(ms(t2 - t1));
                full.0.push(ms(t3 - t2));
                full.1.push(ms(t4 - t3));
            }
        }
        [minimal, full]
    })
}

/// Debian's CNI ptp plugin with host-local IPAM, run directly against a named netns.
fn cni_ptp(n: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    if !Path::new("/usr/lib/cni/ptp").exists() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("calibench{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap();
    assert!(ok.success(), "ip netns add {ns}");
    let conf = json!({
        "cniVersion": "0.4.0", "name": "benchptp", "type": "ptp", "ipMasq": false,
        "ipam": {"type": "host-local", "subnet": "10.98.0.0/16",
                 "routes": [{"dst": "0.0.0.0/0"}],
                 "dataDir": dir.path().join("ipam")}
    })
    .to_string();
    let run = |cmd: &str, id: &str| {
        let mut c = Command::new("/usr/lib/cni/ptp");
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", format!("/run/netns/{ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t = Instant::now();
        let mut ch = c.spawn().expect("run /usr/lib/cni/ptp");
        ch.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
        let out = ch.wait_with_output().unwrap();
        let d = ms(t.elapsed());
        assert!(
            out.status.success(),
            "ptp {cmd}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        d
    };
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for i in 0..n + 10 {
        let id = format!("bench{i:06}");
        let a = run("ADD", &id);
        let d = run("DEL", &id);
        if i >= 10 {
            add.push(a);
            del.push(d);
        }
    }
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    Some((add, del))
}

fn part_plugin(cfg: &Cfg, rep: &mut Report) {
    rep.h(2, "2. The plugin's own time per container");
    let n = cfg.n;
    let stores = cfg.stores.clone();
    let (results, floor, cni) = in_netns("bench-plugin", move || {
        let mut results = Vec::new();
        for kind in &stores {
            eprintln!("[plugin] {n} containers on {kind}");
            let env = store_env(kind);
            let r = plugin_loop(&env, n);
            results.push((env.name, r));
        }
        eprintln!("[plugin] kernel floor");
        let floor = kernel_floor(n);
        eprintln!("[plugin] CNI ptp");
        let cni = cni_ptp(n);
        (results, floor, cni)
    });
    rep.p(&format!(
        "The release binary `calico-libnetwork` (dataplane mode `off`, `LOG_LEVEL=info`) on a socket \
         of its own, driven over one keep-alive connection with Docker's exact calls and bodies: \
         setup = RequestAddress + CreateEndpoint + Join + EndpointOperInfo, teardown = Leave + \
         DeleteEndpoint + ReleaseAddress; {n} containers one after another (after 20 warm-up), each \
         set up and torn down. Everything runs in a private network namespace (Join's veths are \
         real), etcd included (its data on the same disk as /tmp). Docker's own work between the \
         calls (moving the veth into the container) is not included. Kernel floor: the same \
         netlink code (src/dataplane) creating a veth pair, setting both ends up and adding the \
         /32 host route, then deleting it; 'veth setup as the plugin does it' is \
         `dataplane::setup_endpoint_veth` (also MACs, per-interface sysctls, read-backs). CNI: \
         Debian's `/usr/lib/cni/ptp` with `host-local` IPAM run directly (`CNI_COMMAND=ADD/DEL`) \
         against a named netns, {n} times."
    ));
    let mut head = vec!["what"];
    head.extend(CELL_HEAD);
    let mut rows = Vec::new();
    let push = |rows: &mut Vec<Vec<String>>, name: String, v: &[f64]| {
        let mut r = vec![name];
        r.extend(cells(&summarize(v)));
        rows.push(r);
    };
    for (name, r) in &results {
        push(&mut rows, format!("calico on {name}: setup"), &r.setup);
        push(
            &mut rows,
            format!("calico on {name}: teardown"),
            &r.teardown,
        );
    }
    if let Some((a, d)) = &cni {
        push(&mut rows, "CNI ptp + host-local: ADD".into(), a);
        push(&mut rows, "CNI ptp + host-local: DEL".into(), d);
    }
    push(
        &mut rows,
        "kernel floor: veth + up + route".into(),
        &floor[0].0,
    );
    push(&mut rows, "kernel floor: delete veth".into(), &floor[0].1);
    push(
        &mut rows,
        "veth setup as the plugin does it".into(),
        &floor[1].0,
    );
    push(
        &mut rows,
        "veth teardown as the plugin does it".into(),
        &floor[1].1,
    );
    rep.table(&head, &rows);

    rep.h(3, "Per call (p50 / p99 ms)");
    let mut head = vec!["call".to_string()];
    for (name, _) in &results {
        head.push(format!("{name} p50"));
        head.push(format!("{name} p99"));
    }
    let mut rows = Vec::new();
    for (i, call) in SETUP_CALLS.iter().chain(TEARDOWN_CALLS.iter()).enumerate() {
        let mut row = vec![call.to_string()];
        for (_, r) in &results {
            let v: Vec<f64> = r
                .calls
                .iter()
                .map(|c| if i < 4 { c.setup[i] } else { c.teardown[i - 4] })
                .collect();
            let s = summarize(&v);
            row.push(f(s.p50));
            row.push(f(s.p99));
        }
        rows.push(row);
    }
    let head_ref: Vec<&str> = head.iter().map(String::as_str).collect();
    rep.table(&head_ref, &rows);

    let fl = (summarize(&floor[0].0).p50, summarize(&floor[0].1).p50);
    let mut rows = Vec::new();
    for (name, r) in &results {
        let s = summarize(&r.setup).p50;
        let t = summarize(&r.teardown).p50;
        if *name == "etcd" {
            rows.push(vec![
                "setup p50 < 10 ms (etcd)".into(),
                f(s),
                goal(s < 10.0).into(),
            ]);
            rows.push(vec![
                "teardown p50 < 25 ms (etcd)".into(),
                f(t),
                goal(t < 25.0).into(),
            ]);
        }
        rows.push(vec![
            format!("setup beyond the kernel floor < 3 ms ({name})"),
            f(s - fl.0),
            goal(s - fl.0 < 3.0).into(),
        ]);
        // Leave answers before the veth is deleted, but DeleteEndpoint (and, under Docker,
        // moving the container end back) waits for the kernel's deletion all the same.
        rows.push(vec![
            format!("teardown beyond the kernel floor < 3 ms ({name})"),
            f(t - fl.1),
            goal(t - fl.1 < 3.0).into(),
        ]);
    }
    rep.h(3, "Goals (plugin)");
    rep.table(&["goal", "measured p50 ms", ""], &rows);
    for (name, r) in &results {
        rep.plugin_series
            .push((format!("calico setup ({name})"), r.setup.clone()));
    }
    for (name, r) in &results {
        rep.plugin_series
            .push((format!("calico teardown ({name})"), r.teardown.clone()));
    }
    if let Some((a, d)) = cni {
        rep.plugin_series.push(("CNI ptp ADD".into(), a));
        rep.plugin_series.push(("CNI ptp DEL".into(), d));
    }
    rep.plugin_series
        .push(("kernel: veth+route".into(), floor[0].0.clone()));
    rep.plugin_series
        .push(("kernel: delete veth".into(), floor[0].1.clone()));
    rep.p("![plugin latency](plugin-latency.svg)");
}

// ---------------------------------------------------------------------------------------
// Part 3: datastore round trips per Docker call.

/// Runs one call on the in-process server and returns what it cost the datastore.
async fn counted(
    c: &common::client::PluginClient,
    store: &Arc<dyn Datastore>,
    method: &str,
    body: Value,
) -> (StatsSnapshot, Value, u16) {
    let before = store.stats().snapshot();
    let (st, v) = c.call(method, body).await;
    (store.stats().snapshot().since(&before), v, st)
}

fn rtt_rows(kind: &str) -> Vec<(String, StatsSnapshot, String)> {
    let env = store_env(kind);
    let store: Arc<dyn Datastore> = match &env.store {
        Store::Etcd(_) => Arc::new(env._etcd.as_ref().unwrap().store()),
        Store::Local(p) => Arc::new(LocalStore::open(p).unwrap()),
    };
    runtime().block_on(async move {
        let s = common::server::Server::start(store.clone(), NODE, &["192.168.0.0/16"]).await;
        let c = &s.client;
        let mut rows = Vec::new();
        let mut row = |name: &str, st: StatsSnapshot, note: &str| {
            rows.push((name.to_string(), st, note.to_string()));
        };
        let (x, _, _) = counted(c, &store, "NetworkDriver.DiscoverNew", json!({"DiscoveryType": 1, "DiscoveryData": {}})).await;
        row("DiscoverNew", x, "");
        let (x, p, _) = counted(c, &store, "IpamDriver.RequestPool",
            json!({"AddressSpace": "CalicoLocalAddressSpace", "Pool": "", "SubPool": "", "Options": {}, "V6": false})).await;
        row("RequestPool", x, "no --subnet: every pool of this node");
        let pool_id = p["PoolID"].as_str().unwrap().to_string();
        let (x, _, _) = counted(c, &store, "IpamDriver.RequestPool",
            json!({"AddressSpace": "CalicoLocalAddressSpace", "Pool": "10.66.0.0/24", "SubPool": "", "Options": {}, "V6": false})).await;
        row("RequestPool --subnet (new pool)", x, "creates pool libnetwork-10-66-0-0-24");
        let (x, _, _) = counted(c, &store, "IpamDriver.ReleasePool", json!({"PoolID": "libnetwork-10-66-0-0-24"})).await;
        row("ReleasePool (pool of --subnet)", x, "deletes the pool it created");
        let net = hex64();
        let (x, _, _) = counted(c, &store, "NetworkDriver.CreateNetwork", json!({
            "NetworkID": net,
            "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {}},
            "IPv4Data": [{"AddressSpace": "CalicoLocalAddressSpace", "Pool": p["Pool"], "Gateway": "0.0.0.0/0"}],
            "IPv6Data": []})).await;
        row("CreateNetwork", x, "profile (1 key: rules and labels) + network record");
        let (x, a, _) = counted(c, &store, "IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": "", "Options": null})).await;
        row("RequestAddress (first: claims a block)", x, "");
        let mut addrs = vec![a["Address"].as_str().unwrap().split('/').next().unwrap().to_string()];
        let mut worst = StatsSnapshot::default();
        for _ in 0..20 {
            let (x, a, _) = counted(c, &store, "IpamDriver.RequestAddress",
                json!({"PoolID": pool_id, "Address": "", "Options": null})).await;
            if x.round_trips > worst.round_trips { worst = x; }
            addrs.push(a["Address"].as_str().unwrap().split('/').next().unwrap().to_string());
        }
        row("RequestAddress (steady: affine block with room)", worst, "worst of 20");
        let (x, _, _) = counted(c, &store, "IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": "192.168.200.7", "Options": null})).await;
        row("RequestAddress --ip", x, "specific address");
        let ep = hex64();
        let addr = addrs[0].clone();
        let (x, _, _) = counted(c, &store, "NetworkDriver.CreateEndpoint", json!({"NetworkID": net, "EndpointID": ep,
            "Interface": {"Address": format!("{addr}/32"), "AddressIPv6": "", "MacAddress": ""}, "Options": {}})).await;
        row("CreateEndpoint (network name not learned yet)", x, "read network record, write WorkloadEndpoint, re-read record (the record may move to the named profile meanwhile)");
        // What the background name lookup does once Docker tells the network's name (there
        // is no Docker here): the record moves to the profile named after the network, and
        // never changes again.
        let rkey = calico_libnetwork::model::keys::network_key(&net);
        let kv = store.get(&rkey).await.unwrap().unwrap();
        let mut rec: Value = serde_json::from_slice(&kv.value).unwrap();
        rec["name"] = json!("benchnet");
        rec["profile"] = json!("benchnet");
        store.put(&rkey, rec.to_string().into_bytes()).await.unwrap();
        let extra: Vec<String> = (0..2).map(|_| hex64()).collect();
        let mut named = StatsSnapshot::default();
        for (i, e) in extra.iter().enumerate() {
            let (x, _, st) = counted(c, &store, "NetworkDriver.CreateEndpoint", json!({"NetworkID": net, "EndpointID": e,
                "Interface": {"Address": format!("{}/32", addrs[i + 1]), "AddressIPv6": "", "MacAddress": ""}, "Options": {}})).await;
            assert_eq!(st, 200, "CreateEndpoint on the named network");
            named = x;
        }
        row("CreateEndpoint (steady: network name known)", named, "write WorkloadEndpoint (the record, settled, is kept in memory)");
        for e in &extra {
            c.call("NetworkDriver.DeleteEndpoint", json!({"NetworkID": net, "EndpointID": e})).await;
        }
        let (x, _, _) = counted(c, &store, "NetworkDriver.Join", json!({"NetworkID": net, "EndpointID": ep,
            "SandboxKey": "/var/run/docker/netns/0123456789ab", "Options": {}})).await;
        row("Join", x, "");
        let (x, _, _) = counted(c, &store, "NetworkDriver.EndpointOperInfo", json!({"NetworkID": net, "EndpointID": ep})).await;
        row("EndpointOperInfo", x, "");
        let (x, _, _) = counted(c, &store, "NetworkDriver.Leave", json!({"NetworkID": net, "EndpointID": ep})).await;
        row("Leave", x, "");
        let (x, _, _) = counted(c, &store, "NetworkDriver.DeleteEndpoint", json!({"NetworkID": net, "EndpointID": ep})).await;
        row("DeleteEndpoint", x, "");
        let mut worst = StatsSnapshot::default();
        for a in &addrs {
            let (x, _, _) = counted(c, &store, "IpamDriver.ReleaseAddress", json!({"PoolID": pool_id, "Address": a})).await;
            if x.round_trips > worst.round_trips { worst = x; }
        }
        row("ReleaseAddress", worst, "worst of 21");
        let (x, _, _) = counted(c, &store, "IpamDriver.ReleaseAddress", json!({"PoolID": pool_id, "Address": "0.0.0.0"})).await;
        row("ReleaseAddress (gateway 0.0.0.0 from pool data)", x, "");
        let (x, _, _) = counted(c, &store, "NetworkDriver.DeleteNetwork", json!({"NetworkID": net})).await;
        row("DeleteNetwork", x, "list network records, list endpoints, read both profiles (named and fallback), one transaction deleting the record and unused profiles");
        let (x, _, _) = counted(c, &store, "IpamDriver.ReleasePool", json!({"PoolID": pool_id})).await;
        row("ReleasePool", x, "");
        let (x, _, _) = counted(c, &store, "NetworkDriver.DiscoverDelete", json!({"DiscoveryType": 1, "DiscoveryData": {}})).await;
        row("DiscoverDelete", x, "");
        // Docker's default IPAM with the calico network driver: refused by design.
        let (x, _, st) = counted(c, &store, "NetworkDriver.CreateNetwork", json!({
            "NetworkID": hex64(), "Options": {"com.docker.network.generic": {}},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}],
            "IPv6Data": []})).await;
        assert_ne!(st, 200, "default IPAM CreateNetwork must be refused");
        row("CreateNetwork (default IPAM)", x, "refused: needs --ipam-driver calico");
        s.stop().await;
        rows
    })
}

fn part_rtt(cfg: &Cfg, rep: &mut Report) {
    rep.h(2, "3. Datastore round trips per Docker call");
    let stores = cfg.stores.clone();
    let all = in_netns("bench-rtt", move || {
        stores
            .iter()
            .map(|k| (k.clone(), rtt_rows(k)))
            .collect::<Vec<_>>()
    });
    rep.p(
        "Counted by the datastore layer (`Datastore::stats()`: one round trip per get, list or \
         transaction; writes and deletes are keys written or deleted in transactions), before and \
         after each call on an in-process driver serving a socket, Docker's request bodies. \
         'orig' is the original plugin's table (its README, 'Datastore interactions'); the \
         original counted reads, writes and deletes, each one round trip.",
    );
    // Original figures: (reads, writes, deletes) as its README gives them.
    let orig: BTreeMap<&str, (&str, &str, &str)> = [
        ("DiscoverNew", ("0", "0", "0")),
        ("RequestPool", ("0", "0", "0")),
        ("CreateNetwork", ("0", "3", "0")),
        (
            "RequestAddress (first: claims a block)",
            (">=2", ">=1", ">=0"),
        ),
        (
            "RequestAddress (steady: affine block with room)",
            (">=2", ">=1", ">=0"),
        ),
        (
            "CreateEndpoint (network name not learned yet)",
            ("3", "1", "0"),
        ),
        (
            "CreateEndpoint (steady: network name known)",
            ("3", "1", "0"),
        ),
        ("Join", ("2", "0", "0")),
        ("DiscoverDelete", ("0", "0", "0")),
        ("ReleasePool", ("0", "0", "0")),
        ("DeleteNetwork", ("1", "0", "3 (4 if IPv4 and IPv6)")),
        ("ReleaseAddress", (">=1", ">=1", ">=0")),
        ("DeleteEndpoint", ("0", "0", "1")),
        ("Leave", ("0", "0", "0")),
    ]
    .into_iter()
    .collect();
    let (first_kind, first) = &all[0];
    let same_elsewhere: Vec<&String> = all[1..]
        .iter()
        .filter(|(_, r)| {
            r.iter()
                .zip(first.iter())
                .all(|(a, b)| a.1.round_trips == b.1.round_trips)
        })
        .map(|(k, _)| k)
        .collect();
    rep.h(3, "Datastore interactions using Calico IPAM");
    let mut rows = Vec::new();
    let mut worse = Vec::new();
    for (name, x, note) in first {
        if name.starts_with("CreateNetwork (default") {
            continue;
        }
        let o = orig.get(name.as_str());
        let mut row = vec![
            name.clone(),
            x.round_trips.to_string(),
            x.reads.to_string(),
            x.writes.to_string(),
            x.deletes.to_string(),
        ];
        match o {
            Some((r, w, d)) => {
                row.push(format!("{r} / {w} / {d}"));
                let parse = |s: &str| {
                    s.trim_start_matches(">=")
                        .split_whitespace()
                        .next()
                        .and_then(|t| t.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                let orig_rt = parse(r) + parse(w) + parse(d);
                if x.round_trips > orig_rt && !r.starts_with(">=") {
                    worse.push(format!("{name} ({} > {orig_rt})", x.round_trips));
                }
            }
            None => row.push("(no such row)".into()),
        }
        row.push(note.clone());
        rows.push(row);
    }
    rep.table(
        &[
            "Operation",
            "Round trips",
            "Reads",
            "Writes",
            "Deletes",
            "orig Reads / Writes / Deletes",
            "Notes",
        ],
        &rows,
    );
    rep.p(&format!(
        "Measured on {first_kind}{}.",
        if same_elsewhere.is_empty() {
            String::new()
        } else {
            format!(
                "; the same round-trip counts on {}",
                same_elsewhere
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    for (k, r) in &all[1..] {
        if !same_elsewhere.contains(&k) {
            let rows: Vec<Vec<String>> = r
                .iter()
                .map(|(n, x, _)| {
                    vec![
                        n.clone(),
                        x.round_trips.to_string(),
                        x.reads.to_string(),
                        x.writes.to_string(),
                        x.deletes.to_string(),
                    ]
                })
                .collect();
            rep.p(&format!("On {k}:"));
            rep.table(
                &["Operation", "Round trips", "Reads", "Writes", "Deletes"],
                &rows,
            );
        }
    }
    rep.h(3, "Datastore interactions using default IPAM");
    let def = first
        .iter()
        .find(|(n, _, _)| n.starts_with("CreateNetwork (default"))
        .unwrap();
    rep.table(
        &[
            "Operation",
            "Round trips",
            "orig Reads / Writes / Deletes",
            "Notes",
        ],
        &[
            vec![
                "CreateNetwork".into(),
                def.1.round_trips.to_string(),
                "0 / 4 (5 if IPv4 and IPv6) / 0".into(),
                "refused by design: calico networks need `--ipam-driver calico`".into(),
            ],
            vec![
                "CreateEndpoint, Join, DeleteNetwork, DeleteEndpoint, Leave".into(),
                "-".into(),
                "1/1/0, 1/0/0, 1/0/3, 0/0/1, 0/0/0".into(),
                "never reached (no such network)".into(),
            ],
        ],
    );
    let get = |n: &str| first.iter().find(|(x, _, _)| x == n).unwrap().1.round_trips;
    rep.h(3, "Goals (round trips)");
    rep.table(
        &["goal", "measured", ""],
        &[
            vec![
                "no call makes more round trips than the original".into(),
                if worse.is_empty() {
                    "none more".into()
                } else {
                    worse.join(", ")
                },
                goal(worse.is_empty()).into(),
            ],
            vec![
                "Join and EndpointOperInfo make none".into(),
                format!("{} and {}", get("Join"), get("EndpointOperInfo")),
                goal(get("Join") == 0 && get("EndpointOperInfo") == 0).into(),
            ],
            vec![
                "RequestAddress in steady state ≤ 2".into(),
                get("RequestAddress (steady: affine block with room)").to_string(),
                goal(get("RequestAddress (steady: affine block with room)") <= 2).into(),
            ],
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Part 4: IPAM throughput and scale.

async fn driver_on(store: Arc<dyn Datastore>, node: &str) -> (Arc<Driver>, String) {
    let d = Arc::new(Driver::new(store, DriverSettings::new(node)));
    d.init(&["192.168.0.0/16".parse().unwrap()]).await.unwrap();
    let g = d.request_pool(PoolRequest::default()).await.unwrap();
    (d, g.pool_id)
}

fn open_store(env: &StoreEnv) -> Arc<dyn Datastore> {
    match &env.store {
        Store::Etcd(_) => Arc::new(env._etcd.as_ref().unwrap().store()),
        Store::Local(p) => Arc::new(LocalStore::open(p).unwrap()),
    }
}

fn part_ipam(cfg: &Cfg, rep: &mut Report) {
    rep.h(2, "4. IPAM throughput and scale");
    let none = BTreeMap::new();
    // Sequential, one host.
    let mut rows = Vec::new();
    for kind in &cfg.stores {
        eprintln!("[ipam] sequential on {kind}");
        let env = store_env(kind);
        let store = open_store(&env);
        let n = cfg.n;
        let (lat, wall, rel) = runtime().block_on(async {
            let (d, pool) = driver_on(store, NODE).await;
            let mut lat = Vec::new();
            let mut ips = Vec::new();
            let t = Instant::now();
            for _ in 0..n {
                let t0 = Instant::now();
                ips.push(d.request_address(&pool, None, &none).await.unwrap());
                lat.push(ms(t0.elapsed()));
            }
            let wall = t.elapsed();
            let t = Instant::now();
            for ip in &ips {
                d.release_address(&pool, ip.addr()).await.unwrap();
            }
            (lat, wall, t.elapsed())
        });
        let s = summarize(&lat);
        rows.push(vec![
            env.name.to_string(),
            n.to_string(),
            format!("{:.0}", n as f64 / wall.as_secs_f64()),
            f(s.p50),
            f(s.p99),
            format!("{:.0}", n as f64 / rel.as_secs_f64()),
        ]);
    }
    rep.h(3, "Sequential allocations, one host");
    rep.p(
        "`Driver::request_address` (what `IpamDriver.RequestAddress` runs) in-process, one after \
         another on the default pool 192.168.0.0/16 (blocks /26), then each released.",
    );
    rep.table(
        &[
            "datastore",
            "allocations",
            "allocations/s",
            "p50 ms",
            "p99 ms",
            "releases/s",
        ],
        &rows,
    );

    // Concurrent hosts on one etcd.
    if cfg.stores.iter().any(|s| s == "etcd") {
        eprintln!("[ipam] {} hosts concurrently", cfg.hosts);
        let env = store_env("etcd");
        let etcd = env._etcd.as_ref().unwrap();
        let (hosts, per) = (cfg.hosts, cfg.per_host);
        let stores: Vec<_> = (0..hosts).map(|_| etcd.store()).collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let (all, wall, conflicts, lat) = rt.block_on(async move {
            let mut drivers = Vec::new();
            for (i, s) in stores.into_iter().enumerate() {
                let s: Arc<dyn Datastore> = Arc::new(s);
                drivers.push((driver_on(s.clone(), &format!("bench-host-{i}")).await, s));
            }
            let before: Vec<StatsSnapshot> =
                drivers.iter().map(|(_, s)| s.stats().snapshot()).collect();
            let t = Instant::now();
            let tasks: Vec<_> = drivers
                .iter()
                .map(|((d, pool), _)| {
                    let (d, pool) = (d.clone(), pool.clone());
                    tokio::spawn(async move {
                        let none = BTreeMap::new();
                        let mut got = Vec::new();
                        let mut lat = Vec::new();
                        for _ in 0..per {
                            let t0 = Instant::now();
                            got.push(d.request_address(&pool, None, &none).await.unwrap().addr());
                            lat.push(ms(t0.elapsed()));
                        }
                        (got, lat)
                    })
                })
                .collect();
            let mut all = Vec::new();
            let mut lat = Vec::new();
            for t in tasks {
                let (g, l) = t.await.unwrap();
                all.extend(g);
                lat.extend(l);
            }
            let wall = t.elapsed();
            let conflicts: u64 = drivers
                .iter()
                .zip(&before)
                .map(|((_, s), b)| s.stats().snapshot().since(b).conflicts)
                .sum();
            (all, wall, conflicts, lat)
        });
        let uniq: HashSet<_> = all.iter().collect();
        let dups = all.len() - uniq.len();
        let s = summarize(&lat);
        rep.h(
            3,
            &format!("{hosts} simulated hosts allocating concurrently from one pool (etcd)"),
        );
        rep.p(&format!(
            "{hosts} drivers with node names `bench-host-0..{}`, each with its own etcd client, \
             each allocating {per} addresses one after another, all at once, from the default \
             pool (blocks /26).",
            hosts - 1
        ));
        rep.table(
            &[
                "allocations",
                "wall s",
                "allocations/s total",
                "p50 ms",
                "p99 ms",
                "CAS conflicts",
                "duplicates",
            ],
            &[vec![
                all.len().to_string(),
                format!("{:.2}", wall.as_secs_f64()),
                format!("{:.0}", all.len() as f64 / wall.as_secs_f64()),
                f(s.p50),
                f(s.p99),
                conflicts.to_string(),
                format!(
                    "{dups} {}",
                    if dups == 0 {
                        "(none)"
                    } else {
                        "**DUPLICATES**"
                    }
                ),
            ]],
        );
    }

    // Scale: many allocations on one host.
    let scale = cfg.scale_n;
    let mut rows = Vec::new();
    let mut heads = Vec::new();
    for kind in &cfg.stores {
        eprintln!("[ipam] {scale} allocations on {kind}");
        let env = store_env(kind);
        let store = open_store(&env);
        let lat = runtime().block_on(async {
            let (d, pool) = driver_on(store, NODE).await;
            // Calico's default limit (20 blocks of 64) is below 10,000 addresses.
            let mut c = d.ipam().get_config().await.unwrap();
            c.max_blocks_per_host = 1000;
            c.strict_affinity = true; // Calico: maxBlocksPerHost needs strict affinity
            d.ipam().set_config(&c).await.unwrap();
            let mut lat = Vec::new();
            for _ in 0..scale {
                let t0 = Instant::now();
                d.request_address(&pool, None, &none).await.unwrap();
                lat.push(ms(t0.elapsed()));
            }
            lat
        });
        let bucket = (scale / 10).max(1);
        let chunks: Vec<Summary> = lat.chunks(bucket).map(summarize).collect();
        if heads.is_empty() {
            heads = (0..chunks.len())
                .map(|i| format!("{}–{}", i * bucket + 1, (i + 1) * bucket))
                .collect();
        }
        let mut row = vec![env.name.to_string(), "mean".into()];
        row.extend(chunks.iter().map(|s| f(s.mean)));
        rows.push(row);
        let mut row = vec![env.name.to_string(), "p50".into()];
        row.extend(chunks.iter().map(|s| f(s.p50)));
        rows.push(row);
        let first = chunks.first().map(|s| s.mean).unwrap_or(f64::NAN);
        let last = chunks.last().map(|s| s.mean).unwrap_or(f64::NAN);
        rows.push(vec![
            env.name.to_string(),
            format!("last/first mean = {:.2}", last / first),
        ]);
    }
    rep.h(3, &format!("{scale} allocations on one host"));
    rep.p(&format!(
        "Cost per allocation (ms) by bucket of {} as blocks fill (64 addresses per /26 block, \
         {} blocks at the end; maxBlocksPerHost raised to 1000 with strict affinity for this run, since \
         the default of 20 blocks is below {scale} addresses).",
        (scale / 10).max(1),
        scale.div_ceil(64)
    ));
    let mut head = vec!["datastore".to_string(), "".to_string()];
    head.extend(heads);
    let head_ref: Vec<&str> = head.iter().map(String::as_str).collect();
    rep.table(&head_ref, &rows);
}

// ---------------------------------------------------------------------------------------
// Part 5: footprint.

fn part_footprint(cfg: &Cfg, rep: &mut Report) {
    rep.h(2, "5. Footprint");
    let n = cfg.n;
    let stores = cfg.stores.clone();
    let rows = in_netns("bench-footprint", move || {
        let mut rows = Vec::new();
        for kind in &stores {
            eprintln!("[footprint] {kind}");
            let env = store_env(kind);
            // The first start prepares the datastore (Node, pools); then 10 restarts.
            let (p, first) = Proc::start(&env.store);
            p.stop();
            let mut ready = Vec::new();
            for _ in 0..10 {
                let (p, d) = Proc::start(&env.store);
                ready.push(ms(d));
                p.stop();
            }
            let (p, _) = Proc::start(&env.store);
            std::thread::sleep(Duration::from_secs(1));
            let idle = rss_mib(p.pid());
            let mut c = Conn::new(&p.socket);
            let net = create_network(&mut c);
            let mut t = CallTimes::default();
            let mut eps = Vec::new();
            let mut setup = Vec::new();
            for _ in 0..n {
                let t0 = Instant::now();
                eps.push(setup_container(&mut c, &net, &mut t));
                setup.push(ms(t0.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(500));
            let loaded = rss_mib(p.pid());
            let mut teardown = Vec::new();
            for ep in &eps {
                let t0 = Instant::now();
                teardown_container(&mut c, &net, ep, &mut t);
                teardown.push(ms(t0.elapsed()));
            }
            let after = rss_mib(p.pid());
            p.stop();
            rows.push((
                env.name,
                ms(first),
                summarize(&ready),
                idle,
                loaded,
                after,
                summarize(&setup),
                summarize(&teardown),
            ));
        }
        rows
    });
    rep.p(&format!(
        "The release binary (dataplane `off`, `LOG_LEVEL=info`) in a private network namespace. \
         Ready = spawn → `Plugin.Activate` answered on its socket (polled every 0.5 ms), median of \
         10 restarts on a prepared datastore, plus the first start on an empty one. RSS = `VmRSS` \
         of /proc/<pid>/status: idle 1 s after start; with {n} endpoints = after {n} containers set \
         up with Docker's calls (Join included: {n} veth pairs exist) and none torn down; HWM = \
         `VmHWM`."
    ));
    let mut out = Vec::new();
    let mut goals = Vec::new();
    for (name, first, ready, idle, loaded, after, setup, teardown) in &rows {
        out.push(vec![
            name.to_string(),
            format!("{} ({}–{})", f(ready.p50), f(ready.min), f(ready.max)),
            f(*first),
            format!("{:.1}", idle.0),
            format!("{:.1} (HWM {:.1})", loaded.0, loaded.1),
            format!("{:.1}", after.0),
            format!("{} / {}", f(setup.p50), f(setup.p99)),
            format!("{} / {}", f(teardown.p50), f(teardown.p99)),
        ]);
        goals.push(vec![
            format!("idle RSS < 20 MiB ({name})"),
            format!("{:.1} MiB", idle.0),
            goal(idle.0 < 20.0).into(),
        ]);
        goals.push(vec![
            format!("RSS with {n} endpoints < 40 MiB ({name})"),
            format!("{:.1} MiB", loaded.0),
            goal(loaded.0 < 40.0).into(),
        ]);
        goals.push(vec![
            format!("start to ready < 100 ms ({name})"),
            format!("{} ms", f(ready.p50)),
            goal(ready.p50 < 100.0).into(),
        ]);
    }
    rep.table(
        &[
            "datastore",
            "ready ms, median (min–max)",
            "first start ms",
            "RSS idle MiB",
            &format!("RSS with {n} endpoints MiB"),
            "RSS after teardown MiB",
            "setup p50/p99 ms (endpoints accumulating)",
            "teardown p50/p99 ms",
        ],
        &out,
    );
    rep.h(3, "Goals (footprint)");
    rep.table(&["goal", "measured", ""], &goals);
}

// ---------------------------------------------------------------------------------------
// Charts.

/// Empirical CDFs of `series` (ms) into an SVG.
fn cdf_chart(path: &Path, title: &str, series: &[(String, Vec<f64>)]) {
    use plotters::prelude::*;
    if series.is_empty() {
        return;
    }
    let all: Vec<f64> = series.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // Cut the long tail so the bulk stays readable.
    let xmax = pct(&sorted, 99.5) * 1.05;
    let xmin = 0f64;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(xmin..xmax, 0f64..1f64)
        .unwrap();
    chart
        .configure_mesh()
        .x_desc("latency per container (ms)")
        .y_desc("fraction of containers ≤ x")
        .draw()
        .unwrap();
    for (i, (name, v)) in series.iter().enumerate() {
        let mut s = v.clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = s.len() as f64;
        let pts: Vec<(f64, f64)> = s
            .iter()
            .enumerate()
            .filter(|(_, x)| **x <= xmax)
            .map(|(k, x)| (*x, (k + 1) as f64 / n))
            .collect();
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .unwrap()
            .label(format!("{name} (p50 {} ms)", f(pct(&s, 50.0))))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .unwrap();
    root.present().unwrap();
}

// ---------------------------------------------------------------------------------------
// Machine.

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine(rep: &mut Report, cfg: &Cfg) {
    rep.h(2, "Machine and run");
    let rows = vec![
        vec!["CPU".into(), format!("{} × {}", sh("nproc"), sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"))],
        vec!["memory".into(), sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")],
        vec!["kernel".into(), sh("uname -r")],
        vec!["OS".into(), sh(". /etc/os-release; echo $PRETTY_NAME")],
        vec!["Docker".into(), sh("/usr/sbin/dockerd --version")],
        vec!["containerd".into(), sh("/usr/bin/containerd --version")],
        vec!["etcd".into(), sh("etcd --version | head -1")],
        vec!["CNI plugins".into(), sh("dpkg-query -W -f='${Version}' containernetworking-plugins")],
        vec!["Rust".into(), sh("rustc --version")],
        vec!["load before the run".into(), sh("cut -d' ' -f1-3 /proc/loadavg")],
        vec!["date".into(), sh("date -u +%Y-%m-%dT%H:%MZ")],
        vec!["git".into(), sh(&format!("git -C {} describe --always --dirty", env!("CARGO_MANIFEST_DIR")))],
        vec![
            "settings".into(),
            format!(
                "BENCH_PARTS={} BENCH_STORES={} BENCH_N={} BENCH_DOCKER_RUNS={} BENCH_PARALLEL={} BENCH_PARALLEL_REPS={} BENCH_SCALE_N={} BENCH_HOSTS={} BENCH_PER_HOST={}",
                cfg.parts.join(","), cfg.stores.join(","), cfg.n, cfg.docker_runs, cfg.parallel,
                cfg.parallel_reps, cfg.scale_n, cfg.hosts, cfg.per_host
            ),
        ],
    ];
    rep.table(&["", ""], &rows);
}

/// One part of the benchmark.
type Part = fn(&Cfg, &mut Report);

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported (use BENCH_PARTS).
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("benches/plugin.rs needs root (network namespaces, veths, dockerd)");
        std::process::exit(1);
    }
    let cfg = Cfg::from_env();
    std::fs::create_dir_all(&cfg.out).unwrap();
    let started = Instant::now();
    let mut rep = Report::default();
    machine(&mut rep, &cfg);
    let parts: [(&str, Part); 5] = [
        ("plugin", part_plugin),
        ("rtt", part_rtt),
        ("ipam", part_ipam),
        ("footprint", part_footprint),
        ("docker", part_docker),
    ];
    // Docker last: the longest part, and the one most sensitive to other load.
    for (name, run) in parts {
        if cfg.part(name) {
            let t = Instant::now();
            run(&cfg, &mut rep);
            eprintln!("[{name}] done in {:.0} s", t.elapsed().as_secs_f64());
        }
    }
    rep.p(&format!(
        "Whole run: {:.0} s.",
        started.elapsed().as_secs_f64()
    ));
    if !rep.docker_series.is_empty() {
        cdf_chart(
            &cfg.out.join("latency.svg"),
            "docker run --rm busybox true: calico vs Docker bridges vs none",
            &rep.docker_series,
        );
    }
    if !rep.plugin_series.is_empty() {
        cdf_chart(
            &cfg.out.join("plugin-latency.svg"),
            "Per container, plugin calls only: calico vs CNI ptp vs kernel",
            &rep.plugin_series,
        );
    }
    std::fs::write(cfg.out.join("results.md"), &rep.md).unwrap();
    eprintln!("wrote {}", cfg.out.join("results.md").display());
}
