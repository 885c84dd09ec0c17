//! Reliability with Docker: our own dockerd (Debian's 20.10), a real etcd and the real
//! `calico-libnetwork` binary, with faults injected:
//!
//! - the plugin SIGKILLed in the middle of 20 parallel `docker run`s, then restarted: every
//!   running container has working networking, and nothing of the failed ones is left
//!   (address, WorkloadEndpoint, veth, route) once Docker's own teardown and the plugin's
//!   start-up reconciliation ran;
//! - dockerd restarted (gracefully, then SIGKILLed) with `--restart=always` containers, one
//!   with `--ip`: they come back with networking, no address leaked or given twice;
//! - etcd frozen (SIGSTOP), then stopped (SIGKILL), while containers start and stop (8 s in
//!   all; 30 s with `CALICO_LONG_TESTS=1`):
//!   each Docker call fails within the request deadline naming the datastore, none hangs;
//!   after etcd returns on the same port and data, a new container works and the records
//!   are consistent.
//!
//! Needs root. Every test holds the host lock, so they run one at a time.

use crate::common;

use common::block_on;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use calico_libnetwork::datastore::Datastore;
use common::docker;
use common::firewall::host;
use common::plugin::{DockerEnv, Plugin, NODENAME};
use serde_json::Value;

const WEPS_PREFIX: &str = "/calico/resources/v3/projectcalico.org/workloadendpoints/";
const BLOCKS_PREFIX: &str = "/calico/ipam/v2/assignment/";
/// The grace period the plugin is started with (records younger than this are left alone).
const GRACE: &str = "3s";

fn long() -> bool {
    std::env::var("CALICO_LONG_TESTS").as_deref() == Ok("1")
}

/// What the datastore says about this node.
#[derive(Debug, Default)]
struct State {
    /// Endpoint ID → addresses, of this node's WorkloadEndpoints.
    weps: BTreeMap<String, BTreeSet<IpAddr>>,
    /// This node's allocations (attribute `node`), address → handle.
    allocs: BTreeMap<IpAddr, String>,
}

/// What Docker sent the plugin after byte `log_from` of its log, as `method address outcome`
/// (the successful calls, without the handshake).
fn docker_calls(plugin: &Plugin, log_from: usize) -> Vec<String> {
    plugin
        .calls_since(log_from)
        .iter()
        .filter(|c| c.line.contains("INFO"))
        .filter(|c| !c.method().contains("Activate") && !c.method().contains("GetCapabilities"))
        .map(|c| c.summary())
        .collect()
}

/// Root (or `None`: skipped, loudly), then the lock, etcd, dockerd with busybox, then the
/// plugin with our dockerd's API, a short grace period and `extra` settings.
fn start(test: &str, extra: &[(&str, &str)]) -> Option<DockerEnv> {
    DockerEnv::builder()
        .etcd()
        .docker_api()
        .busybox()
        .plugin_env("CALICO_LIBNETWORK_RECONCILE_GRACE", GRACE)
        .plugin_envs(extra)
        .start_if_root(test)
}

/// Lists a prefix, retrying a few times (a fresh connection on a loaded host may be
/// refused once).
fn list_kv(env: &DockerEnv, prefix: &str) -> Vec<calico_libnetwork::datastore::KeyValue> {
    let mut last = String::new();
    for _ in 0..20 {
        match block_on(env.etcd().store().list(prefix)) {
            Ok(kvs) => return kvs,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("list {prefix}: {last}");
}

fn state(env: &DockerEnv) -> State {
    let mut st = State::default();
    for kv in list_kv(env, WEPS_PREFIX) {
        let v: Value = serde_json::from_slice(&kv.value).unwrap();
        if v["spec"]["node"] != NODENAME {
            continue;
        }
        let ips = v["spec"]["ipNetworks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|n| n.as_str()?.split('/').next()?.parse().ok())
            .collect();
        st.weps
            .insert(v["spec"]["endpoint"].as_str().unwrap().to_string(), ips);
    }
    for kv in list_kv(env, BLOCKS_PREFIX) {
        let b: calico_libnetwork::model::block::AllocationBlock =
            serde_json::from_slice(&kv.value).unwrap();
        for ip in b.allocated_ips() {
            let a = b.attribute_of(&ip).unwrap();
            if a.released_at.is_some()
                || a.secondary.get("node").map(String::as_str) != Some(NODENAME)
            {
                continue;
            }
            assert!(
                st.allocs
                    .insert(ip, a.handle().unwrap_or_default().to_string())
                    .is_none(),
                "{ip} allocated twice"
            );
        }
    }
    st
}

/// `docker inspect` of a container: (running, endpoint ID → address) on Calico networks.
fn inspect(env: &DockerEnv, c: &str) -> Option<(bool, BTreeMap<String, IpAddr>)> {
    let out = env.d().docker(&["inspect", c]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let running = v[0]["State"]["Running"].as_bool().unwrap_or(false);
    let mut eps = BTreeMap::new();
    if let Some(nets) = v[0]["NetworkSettings"]["Networks"].as_object() {
        for n in nets.values() {
            let ep = n["EndpointID"].as_str().unwrap_or_default();
            if let (false, Ok(ip)) = (ep.is_empty(), n["IPAddress"].as_str().unwrap_or("").parse())
            {
                eps.insert(ep.to_string(), ip);
            }
        }
    }
    Some((running, eps))
}

/// Host `cali*` veths.
fn host_veths() -> BTreeSet<String> {
    let (_, out) = host("ip", &["-o", "link", "show", "type", "veth"]);
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .filter(|n| n.starts_with("cali"))
        .collect()
}

/// Host routes through `cali*` veths: address → device.
fn host_routes() -> BTreeMap<IpAddr, String> {
    let (_, out) = host("ip", &["-4", "route", "show"]);
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dev = f.iter().position(|w| *w == "dev").map(|i| f[i + 1])?;
            // Our veths (`cali` + 11), not the test bridge `calitestbr0`.
            if !dev.starts_with("cali") || dev.len() != 15 || dev == docker::BRIDGE {
                return None;
            }
            Some((f[0].split('/').next()?.parse().ok()?, dev.to_string()))
        })
        .collect()
}

fn ping(env: &DockerEnv, from: &str, to: IpAddr) -> bool {
    env.d()
        .docker(&["exec", from, "ping", "-c", "1", "-W", "3", &to.to_string()])
        .status
        .success()
}

/// The records match the running containers exactly: a WorkloadEndpoint, an allocation,
/// a veth and a route for each of their endpoints, nothing else. Waits up to `within`
/// (the plugin's reconciliation may still be on its way); panics with the difference.
fn assert_consistent(
    env: &DockerEnv,
    containers: &[String],
    within: Duration,
) -> BTreeMap<String, IpAddr> {
    let deadline = Instant::now() + within;
    loop {
        let mut eps = BTreeMap::new();
        for c in containers {
            if let Some((true, e)) = inspect(env, c) {
                eps.extend(e);
            }
        }
        let st = state(env);
        let want_ips: BTreeSet<IpAddr> = eps.values().copied().collect();
        let want_veths: BTreeSet<String> =
            eps.keys().map(|e| format!("cali{}", &e[..11])).collect();
        let want_weps: BTreeMap<String, BTreeSet<IpAddr>> = eps
            .iter()
            .map(|(e, ip)| (e.clone(), BTreeSet::from([*ip])))
            .collect();
        let routes = host_routes();
        let problems = [
            (st.weps != want_weps).then(|| {
                format!(
                    "WorkloadEndpoints {:?} != running endpoints {want_weps:?}",
                    st.weps
                )
            }),
            (st.allocs.keys().copied().collect::<BTreeSet<_>>() != want_ips).then(|| {
                format!(
                    "allocations {:?} != running addresses {want_ips:?}",
                    st.allocs
                )
            }),
            (host_veths() != want_veths)
                .then(|| format!("veths {:?} != {want_veths:?}", host_veths())),
            (routes.keys().copied().collect::<BTreeSet<_>>() != want_ips)
                .then(|| format!("routes {routes:?} != {want_ips:?}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
        if problems.is_empty() {
            return eps;
        }
        if Instant::now() > deadline {
            panic!("inconsistent after {within:?}:\n{}", problems.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

// ------------------------------------------------------------------ 1. plugin SIGKILL

#[test]
fn plugin_sigkill_during_parallel_runs() {
    let started = Instant::now();
    let Some(mut env) = start("plugin_sigkill_during_parallel_runs", &[]) else {
        return;
    };
    env.network("relnet", &[]);
    let n = 20;
    let names: Vec<String> = (0..n).map(|i| format!("rel-kill-{i}")).collect();
    let host = env.d().host();
    let image = env.image();
    let runs: Vec<_> = names
        .iter()
        .map(|name| {
            let (name, host) = (name.clone(), host.clone());
            std::thread::spawn(move || {
                let t = Instant::now();
                let out = std::process::Command::new(&docker::engine().docker)
                    .args(["-H", &host, "run", "-d", "--name", &name, "--net", "relnet"])
                    .args([image, "sleep", "600"])
                    .env_clear()
                    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                    .output()
                    .unwrap();
                (out, t.elapsed())
            })
        })
        .collect();
    // Kill the plugin once some endpoints exist (the others are mid-flight).
    let t0 = Instant::now();
    while state(&env).weps.len() < 4 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let at_kill = state(&env);
    // The fault must hit runs in flight, or this is a plain restart test.
    let in_flight = runs.iter().filter(|r| !r.is_finished()).count();
    assert!(
        in_flight > 0 && at_kill.weps.len() < n,
        "every docker run had finished before the kill ({} endpoints recorded)",
        at_kill.weps.len()
    );
    env.plugin.kill();
    std::thread::sleep(Duration::from_secs(2));
    env.plugin.restart();
    let mut ok = 0;
    let mut failed = Vec::new();
    for (name, r) in names.iter().zip(runs) {
        let (out, took) = r.join().unwrap();
        if out.status.success() {
            ok += 1;
        } else {
            failed.push((
                name.clone(),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
                took,
            ));
        }
    }
    eprintln!(
        "plugin killed with {} endpoints and {} allocations recorded; {ok} runs succeeded, {} failed",
        at_kill.weps.len(),
        at_kill.allocs.len(),
        failed.len()
    );
    for (n, e, t) in &failed {
        eprintln!("  {n} failed after {t:?}: {e}");
    }
    // Failed containers are left as Docker leaves them (created, not running); the
    // records must match the running ones once the reconciliation's second pass ran.
    let eps = assert_consistent(&env, &names, Duration::from_secs(30));
    let running: Vec<&String> = names
        .iter()
        .filter(|c| matches!(inspect(&env, c), Some((true, _))))
        .collect();
    assert_eq!(
        running.len(),
        eps.len(),
        "one endpoint per running container"
    );
    // Every running container reaches every other.
    if let Some(first) = running.first() {
        for ip in eps.values() {
            assert!(ping(&env, first, *ip), "{first} -> {ip}");
        }
    }
    // Those that failed start again, now that the plugin is back.
    for (n, _, _) in &failed {
        if matches!(inspect(&env, n), Some((false, _))) {
            env.d().docker_ok(&["start", n]);
        }
    }
    let eps = assert_consistent(&env, &names, Duration::from_secs(30));
    assert_eq!(
        eps.len(),
        n,
        "all {n} containers running with networking: {eps:?}"
    );
    let log = env.plugin.log();
    eprintln!(
        "reconciliation: {} veth, {} endpoint, {} address removals logged; {:?} in all",
        log.matches("reconcile: removed host veth").count()
            + log.matches("reconcile: removed veth").count(),
        log.matches("reconcile: removed WorkloadEndpoint").count(),
        log.matches("reconcile: released address").count(),
        started.elapsed()
    );
    env.plugin.stop();
}

// ------------------------------------------------------------------ 2. dockerd restart

#[test]
fn dockerd_restart_keeps_restart_always_containers_networked() {
    let started = Instant::now();
    let Some(mut env) = start(
        "dockerd_restart_keeps_restart_always_containers_networked",
        &[],
    ) else {
        return;
    };
    env.network("relrst", &["--subnet", "10.99.0.0/24"]);
    let fixed: IpAddr = "10.99.0.50".parse().unwrap();
    let names = vec!["rel-rst-auto".to_string(), "rel-rst-ip".to_string()];
    let image = env.image();
    env.d().docker_ok(&[
        "run",
        "-d",
        "--restart=always",
        "--name",
        "rel-rst-auto",
        "--net",
        "relrst",
        image,
        "sleep",
        "600",
    ]);
    env.d().docker_ok(&[
        "run",
        "-d",
        "--restart=always",
        "--name",
        "rel-rst-ip",
        "--net",
        "relrst",
        "--ip",
        "10.99.0.50",
        image,
        "sleep",
        "600",
    ]);
    let before = assert_consistent(&env, &names, Duration::from_secs(10));
    assert!(before.values().any(|ip| *ip == fixed));
    for crash in [false, true] {
        // Older than the grace period: a dead owner's records may be reclaimed.
        std::thread::sleep(Duration::from_secs(4));
        let t = Instant::now();
        let log_from = env.plugin.log().len();
        env.docker.restart_dockerd(crash);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = names
                .iter()
                .all(|c| matches!(inspect(&env, c), Some((true, e)) if !e.is_empty()));
            if up {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "containers not back after dockerd {}: {:?}\n{}",
                    if crash { "crash" } else { "restart" },
                    names.iter().map(|c| inspect(&env, c)).collect::<Vec<_>>(),
                    docker::log_tail(&env.d().log_path(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let eps = assert_consistent(&env, &names, Duration::from_secs(20));
        assert!(eps.values().any(|ip| *ip == fixed), "--ip kept: {eps:?}");
        let ips: Vec<IpAddr> = eps.values().copied().collect();
        assert!(ping(&env, "rel-rst-auto", fixed));
        assert!(ping(
            &env,
            "rel-rst-ip",
            ips.iter().copied().find(|i| *i != fixed).unwrap()
        ));
        eprintln!(
            "dockerd {}: containers back with networking in {:?}; endpoints {:?}",
            if crash { "SIGKILLed" } else { "restarted" },
            t.elapsed(),
            eps
        );
        // What Docker sent us around the restart (for the record: the order of teardown
        // and re-request decides whether a `--ip` is re-requested while still allocated).
        let calls = docker_calls(&env.plugin, log_from);
        eprintln!("  plugin calls: {}", calls.join(" | "));
    }
    // dockerd SIGKILLed while the plugin is down too (a host crash with the plugin coming
    // up after dockerd): dockerd's clean-up calls go nowhere, so the old endpoints and
    // addresses stay behind; the plugin comes back while dockerd restores its containers.
    std::thread::sleep(Duration::from_secs(4));
    let t = Instant::now();
    let log_from = env.plugin.log().len();
    env.plugin.kill();
    let plugin = &mut env.plugin;
    env.docker.restart_dockerd_with(true, || {
        std::thread::sleep(Duration::from_secs(3));
        plugin.restart();
    });
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut restarted_by_hand = Vec::new();
    loop {
        let down: Vec<&String> = names
            .iter()
            .filter(|c| !matches!(inspect(&env, c), Some((true, e)) if !e.is_empty()))
            .collect();
        if down.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            // Docker gave up restarting them while the plugin was away: an operator's
            // `docker start` must work (the --ip one asks for its still-allocated address).
            for c in down {
                if !restarted_by_hand.contains(c) {
                    env.d().docker_ok(&["start", c]);
                    restarted_by_hand.push(c.clone());
                }
            }
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // `--restart=always`: Docker brings them back itself (a hand `docker start` above is
    // only the operator's fallback for a container Docker gave up on).
    assert!(
        restarted_by_hand.len() < names.len(),
        "Docker restarted none of the --restart=always containers by itself: {restarted_by_hand:?}"
    );
    let eps = assert_consistent(&env, &names, Duration::from_secs(20));
    assert!(eps.values().any(|ip| *ip == fixed), "--ip kept: {eps:?}");
    let other = eps.values().copied().find(|i| *i != fixed).unwrap();
    assert!(ping(&env, "rel-rst-auto", fixed));
    assert!(ping(&env, "rel-rst-ip", other));
    let calls = docker_calls(&env.plugin, log_from);
    eprintln!(
        "dockerd SIGKILLed with the plugin down: containers back in {:?} (by hand: \
         {restarted_by_hand:?}); endpoints {eps:?}\n  plugin calls: {}",
        t.elapsed(),
        calls.join(" | ")
    );
    eprintln!(
        "takeovers logged: {}; total {:?}",
        env.plugin
            .log()
            .matches("released stale allocation of a requested address")
            .count(),
        started.elapsed()
    );
}

// ------------------------------------------------------------------ 3. etcd outage

#[test]
fn etcd_outage_fails_fast_and_recovers() {
    let started = Instant::now();
    // A request deadline of 6 s over etcd calls of 2 s: Docker hears within ~6 s.
    let deadline = Duration::from_secs(6);
    let Some(mut env) = start(
        "etcd_outage_fails_fast_and_recovers",
        &[
            ("CALICO_LIBNETWORK_REQUEST_TIMEOUT", "6s"),
            ("CALICO_LIBNETWORK_DATASTORE_TIMEOUT", "2s"),
        ],
    ) else {
        return;
    };
    env.network("relout", &[]);
    let image = env.image();
    let mut names = Vec::new();
    for i in 0..3 {
        let n = format!("rel-out-pre{i}");
        env.d().docker_ok(&[
            "run", "-d", "--name", &n, "--net", "relout", image, "sleep", "600",
        ]);
        names.push(n);
    }
    assert_consistent(&env, &names, Duration::from_secs(10));
    let outage = Duration::from_secs(if long() { 30 } else { 8 });
    // First half: etcd frozen (SIGSTOP: connections hang, only deadlines help); second
    // half: etcd gone (SIGKILL: connections refused).
    let pid = env.etcd().pid().unwrap() as i32;
    crate::common::host::signal_pid(pid, libc::SIGSTOP);
    let mut frozen = true;
    let down = Instant::now();
    let mut calls = 0;
    let mut failed_in_time = 0;
    let mut i = 0;
    // Start and stop containers while etcd is away.
    while down.elapsed() < outage {
        if frozen && down.elapsed() >= outage / 2 {
            env.etcd_mut().stop();
            frozen = false;
        }
        let n = format!("rel-out-{i}");
        i += 1;
        let t = Instant::now();
        let out = env
            .d()
            .docker_timeout(
                &[
                    "run", "-d", "--name", &n, "--net", "relout", image, "sleep", "600",
                ],
                deadline + Duration::from_secs(30),
            )
            .unwrap_or_else(|e| panic!("docker run hung during the outage: {e}"));
        let took = t.elapsed();
        calls += 1;
        names.push(n.clone());
        assert!(
            !out.status.success(),
            "docker run {n} succeeded without etcd"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            took < deadline + Duration::from_secs(5),
            "docker run {n} took {took:?} (deadline {deadline:?}): {err}"
        );
        assert!(
            err.contains("datastore"),
            "error names the datastore: {err}"
        );
        failed_in_time += 1;
        eprintln!(
            "during outage (etcd {}): docker run {n} failed in {took:?}: {}",
            if frozen { "frozen" } else { "killed" },
            err.trim()
        );
        if i == 1 {
            // A stop, too: dockerd must not hang on Leave/DeleteEndpoint/ReleaseAddress.
            let t = Instant::now();
            let out = env
                .d()
                .docker_timeout(&["stop", "-t", "1", "rel-out-pre0"], deadline * 4)
                .unwrap_or_else(|e| panic!("docker stop hung during the outage: {e}"));
            calls += 1;
            eprintln!(
                "during outage: docker stop took {:?} ({})",
                t.elapsed(),
                out.status
            );
            assert!(t.elapsed() < deadline * 3 + Duration::from_secs(5));
        }
    }
    if frozen {
        env.etcd_mut().stop();
    }
    env.etcd_mut().restart();
    eprintln!("etcd back after {:?}", down.elapsed());
    // Everything works again: a new container gets networking.
    env.d().docker_ok(&[
        "run",
        "-d",
        "--name",
        "rel-out-after",
        "--net",
        "relout",
        image,
        "sleep",
        "600",
    ]);
    names.push("rel-out-after".to_string());
    let after = inspect(&env, "rel-out-after").unwrap().1;
    let ip = *after.values().next().unwrap();
    assert!(ping(&env, "rel-out-pre1", ip), "new container reachable");
    // Consistent: every WEP's addresses allocated; every allocation of this node in a WEP
    // (a stop whose DeleteEndpoint failed may leave its endpoint and address: both, then).
    let st = state(&env);
    for (ep, ips) in &st.weps {
        for a in ips {
            assert!(
                st.allocs.contains_key(a),
                "endpoint {ep}: {a} not allocated"
            );
        }
    }
    let in_weps: HashSet<IpAddr> = st.weps.values().flatten().copied().collect();
    for a in st.allocs.keys() {
        assert!(
            in_weps.contains(a),
            "allocation {a} in no WorkloadEndpoint: {st:?}"
        );
    }
    // And a plugin restart (reconciliation) brings the records exactly in line with what
    // runs, whatever the outage left behind.
    env.plugin.restart();
    std::thread::sleep(Duration::from_secs(5));
    assert_consistent(&env, &names, Duration::from_secs(30));
    eprintln!(
        "etcd outage of {outage:?}: {calls} Docker calls, {failed_in_time} failed within the \
         deadline naming the datastore, none hung; {:?} in all",
        started.elapsed()
    );
}
