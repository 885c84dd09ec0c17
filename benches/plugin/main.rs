//! The benchmark of BENCHMARKS.md: `cargo bench --bench plugin` (as root; see
//! scripts/bench.sh for the packages it needs).
//!
//! Parts (select with `BENCH_PARTS=docker,plugin,rtt,ipam,footprint,routes,members`, default
//! all but `routes` and `members`; `all` is every part):
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
//! - `routes` (not in the default list: `BENCH_PARTS=routes`): routes between hosts (issue
//!   17): 1,000 blocks of 250 simulated Nodes to the kernel, one change, RSS; `docker run` to
//!   the first ping from another host of a three-host fleet; iperf3 containers vs hosts
//!   (see routes.rs for its own `BENCH_ROUTES*` / `BENCH_IPERF_*` sizes).
//! - `members` (not in the default list: `BENCH_PARTS=members`): isolation across hosts
//!   (issue 18): 10,000 remote endpoints into the kernel's ip sets, one change, a full
//!   resync, RSS (see members.rs for its `BENCH_MEMBERS_*` sizes).
//!
//! Sizes: `BENCH_N` (per-container loops, default 1000), `BENCH_DOCKER_RUNS` (default 20),
//! `BENCH_PARALLEL` (default 20), `BENCH_PARALLEL_REPS` (default 3), `BENCH_SCALE_N`
//! (default 10000), `BENCH_HOSTS` (default 8), `BENCH_PER_HOST` (default 250),
//! `BENCH_STORES` (default `etcd,local`).
//!
//! Output: markdown tables on stdout and in `bench-results/results.md`, charts
//! `bench-results/latency.svg` (docker part) and `bench-results/plugin-latency.svg`.

mod calls;
mod chart;
#[path = "../../tests/common/mod.rs"]
mod common;
mod docker;
mod footprint;
mod harness;
mod ipam;
mod members;
mod nlwatch;
mod report;
mod routes;
mod rtt;

use calls::*;
use chart::*;
use docker::*;
use footprint::*;
use harness::*;
use ipam::*;
use members::*;
use report::*;
use routes::*;
use rtt::*;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calico_libnetwork::datastore::local::LocalStore;
use calico_libnetwork::datastore::{Datastore, StatsSnapshot};
use calico_libnetwork::driver::{Driver, DriverSettings, PoolRequest};
use serde_json::{json, Value};

use common::docker::Dockerd;
use common::etcd::Etcd;
use common::plugin::DockerEnv;

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
            // BENCH_OUT: another results directory (scripts/bench.sh gives each further
            // Docker engine its own).
            out: std::env::var_os("BENCH_OUT")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results")),
        }
    }
    fn part(&self, p: &str) -> bool {
        self.parts.iter().any(|x| x == p || x == "all")
    }
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
    let mut rows = vec![
        vec!["CPU".into(), format!("{} × {}", sh("nproc"), sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"))],
        vec!["memory".into(), sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")],
        vec!["kernel".into(), sh("uname -r")],
        vec!["OS".into(), sh(". /etc/os-release; echo $PRETTY_NAME")],
        vec![
            "Docker".into(),
            format!(
                "{} ({}={})",
                sh(&format!("{} --version", common::docker::engine().dockerd.display())),
                common::docker::ENGINE_VAR,
                common::docker::engine().name
            ),
        ],
        vec![
            "containerd".into(),
            sh(&format!("{} --version", common::docker::engine().containerd.display())),
        ],
        vec!["etcd".into(), sh("etcd --version | head -1")],
        vec!["CNI plugins".into(), sh("dpkg-query -W -f='${Version}' containernetworking-plugins")],
        vec!["iperf3".into(), sh("iperf3 --version 2>/dev/null | head -1")],
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
    if cfg.part("routes") {
        rows.push(vec!["routes settings".into(), routes_settings()]);
    }
    rep.table(&["", ""], &rows);
}

/// One part of the benchmark.
type Part = fn(&Cfg, &mut Report);

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported (use BENCH_PARTS).
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the benchmark (benches/plugin) needs root (network namespaces, veths, dockerd)");
        std::process::exit(1);
    }
    let cfg = Cfg::from_env();
    std::fs::create_dir_all(&cfg.out).unwrap();
    let started = Instant::now();
    let mut rep = Report::default();
    machine(&mut rep, &cfg);
    let parts: [(&str, Part); 7] = [
        ("plugin", part_plugin),
        ("rtt", part_rtt),
        ("ipam", part_ipam),
        ("footprint", part_footprint),
        ("routes", part_routes),
        ("members", part_members),
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
