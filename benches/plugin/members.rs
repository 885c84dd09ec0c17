//! Part `members`: isolation across hosts (issue 18). The release binary in a private network
//! namespace (standalone firewall, routes between hosts on, `IP` on a veth underlay), etcd in
//! the same namespace, and before the start `BENCH_MEMBERS_NODES` (250) simulated Nodes with
//! `BENCH_MEMBERS_ENDPOINTS` (10,000) WorkloadEndpoints between them (each address from its
//! node's block, as Calico allocates them) over
//! `BENCH_MEMBERS_PROFILES` (20) profiles, written as Calico stores them. Measured:
//! - the start: spawn → every remote member in its kernel set (`ipset save` polled every
//!   20 ms), and the plugin's own figure for its first full write (list, compute, one `ipset
//!   restore` filling each set aside and swapping it in: its log's `took_ms`);
//! - a full resync while running: a set flushed by hand (`ipset flush cln4-remote`), found by
//!   the plugin's 10-second kernel check and written whole again (`took_ms` again);
//! - `BENCH_MEMBERS_CHURN` (200) times one endpoint of a simulated node written (then
//!   deleted) → its address in (out of) its profile's set: the etcd write returning → the
//!   first `ipset test` that sees it (polled back to back, ~1 ms each);
//! - RSS (`VmRSS`, `VmHWM`) after the start and after the churn.

use super::routes::{block_cidr, cpu_secs, make_underlay, sim_name, spawn_plugin, write_cluster};
use super::*;

use calico_libnetwork::dataplane::ipset::{profile_set, remote_set};
use calico_libnetwork::dataplane::iptables::Family;
use calico_libnetwork::model::names::workload_endpoint_name;
use calico_libnetwork::model::resources::WorkloadEndpointSpec;
use calico_libnetwork::model::WorkloadEndpoint;

/// Endpoint `k`'s address: endpoint `k` is on simulated node `k % nodes`, and takes the next
/// address of that node's block (so no endpoint is borrowed: routes have nothing to do).
fn member_ip(k: usize, nodes: usize) -> Ipv4Addr {
    let block = block_cidr(k % nodes);
    let q = (k / nodes + 1) as u32;
    assert!(q < 63, "more than 62 endpoints per simulated node");
    Ipv4Addr::from(u32::from(block.network()) + q)
}

fn profile(k: usize, profiles: usize) -> String {
    format!("bench-net-{}", k % profiles)
}

/// WorkloadEndpoint `k` of simulated node `node`: its key and value.
fn wep(node: &str, k: usize, nodes: usize, profile: &str) -> (String, Vec<u8>) {
    let ep = format!("{k:064x}");
    let name = workload_endpoint_name(node, "libnetwork", "libnetwork", &ep).unwrap();
    let spec = WorkloadEndpointSpec {
        orchestrator: "libnetwork".into(),
        workload: "libnetwork".into(),
        node: node.into(),
        endpoint: ep.clone(),
        ip_networks: vec![format!("{}/32", member_ip(k, nodes))],
        profiles: vec![profile.into()],
        interface_name: format!("cali{}", &ep[..11]),
        ..Default::default()
    };
    let mut w = WorkloadEndpoint::namespaced("libnetwork", name, spec);
    w.apply_calico_labels();
    (w.key().unwrap(), w.to_json().unwrap())
}

/// Members in our sets (`ipset save`): (sets, members).
fn kernel_members() -> (usize, usize) {
    let out = common::host::run("ipset", &["save"]).1;
    let sets = out
        .lines()
        .filter(|l| l.starts_with("create cln4-") || l.starts_with("create cln6-"))
        .count();
    let members = out
        .lines()
        .filter(|l| l.starts_with("add cln4-") || l.starts_with("add cln6-"))
        .count();
    (sets, members)
}

fn in_set(set: &str, ip: Ipv4Addr) -> bool {
    Command::new("ipset")
        .args(["-q", "test", set, &ip.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Polls until `in_set(set, ip) == present`: when it first was, or `None` after 10 s.
fn wait_set(set: &str, ip: Ipv4Addr, present: bool) -> Option<Instant> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if in_set(set, ip) == present {
            return Some(Instant::now());
        }
    }
    None
}

/// `took_ms` of the plugin's log lines saying the sets were written whole, in order.
fn full_writes(log: &Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ip sets of other hosts' members written"))
        .filter_map(|l| {
            let v = l.split("took_ms=").nth(1)?;
            v.split(|c: char| c != '.' && !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

struct MembersResult {
    nodes: usize,
    endpoints: usize,
    profiles: usize,
    start_ms: f64,
    first_write_ms: f64,
    resync_ms: f64,
    counted: (usize, usize),
    rss_start: (f64, f64),
    rss_churn: (f64, f64),
    cpu: (f64, f64),
    add: Vec<f64>,
    del: Vec<f64>,
}

fn members_run(keep_log: &Path) -> MembersResult {
    let nodes = env_usize("BENCH_MEMBERS_NODES", 250);
    let endpoints = env_usize("BENCH_MEMBERS_ENDPOINTS", 10_000);
    let profiles = env_usize("BENCH_MEMBERS_PROFILES", 20);
    let churn = env_usize("BENCH_MEMBERS_CHURN", 200);
    eprintln!("[members] {nodes} nodes, {endpoints} endpoints, {profiles} profiles");
    let _peer = make_underlay();
    let etcd = Etcd::start();
    let store = etcd.store_with_timeout(Duration::from_secs(10));
    let rt = runtime();
    write_cluster(&rt, &store, nodes, 1, false);
    let writes: Vec<(String, Vec<u8>)> = (0..endpoints)
        .map(|k| wep(&sim_name(k % nodes), k, nodes, &profile(k, profiles)))
        .collect();
    rt.block_on(async {
        use futures::StreamExt;
        let results: Vec<_> = futures::stream::iter(writes)
            .map(|(k, v)| {
                let store = &store;
                async move { store.put(&k, v).await.map(|_| ()) }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        for r in results {
            r.expect("write the simulated endpoints");
        }
    });
    let dir = tempfile::Builder::new()
        .prefix("calico-bench-members-")
        .tempdir()
        .unwrap();
    let log = dir.path().join("plugin.log");
    // Every endpoint in its profile's set and in the remote set.
    let want = 2 * endpoints;
    let t0 = Instant::now();
    let mut child = spawn_plugin(&etcd, dir.path(), "standalone");
    let start_ms = loop {
        let (_, members) = kernel_members();
        if members >= want {
            break ms(t0.elapsed());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "sets not complete after 120 s: {members} of {want}; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let counted = kernel_members();
    let first_write_ms = full_writes(&log).first().copied().unwrap_or(f64::NAN);
    std::thread::sleep(Duration::from_secs(1));
    let pid = child.id();
    let rss_start = rss_mib(pid);
    let cpu_start = cpu_secs(pid);

    // A set emptied behind the plugin's back: written whole again at its next kernel check.
    let before = full_writes(&log).len();
    common::host::run_ok("ipset", &["flush", &remote_set(Family::V4)]);
    let until = Instant::now() + Duration::from_secs(25);
    while full_writes(&log).len() == before && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let resync_ms = full_writes(&log).get(before).copied().unwrap_or(f64::NAN);

    let (mut add, mut del) = (Vec::new(), Vec::new());
    for i in 0..churn {
        let k = endpoints + i;
        let p = profile(k, profiles);
        let set = profile_set(&p, Family::V4);
        let (key, value) = wep(&sim_name(k % nodes), k, nodes, &p);
        let ip = member_ip(k, nodes);
        rt.block_on(store.put(&key, value)).unwrap();
        let written = Instant::now();
        let seen =
            wait_set(&set, ip, true).unwrap_or_else(|| panic!("{ip} not in {set} within 10 s"));
        add.push(ms(seen - written));
        rt.block_on(store.delete(&key, None)).unwrap();
        let written = Instant::now();
        let seen =
            wait_set(&set, ip, false).unwrap_or_else(|| panic!("{ip} still in {set} after 10 s"));
        del.push(ms(seen - written));
    }
    let rss_churn = rss_mib(pid);
    let cpu_churn = cpu_secs(pid);
    common::host::stop_child(&mut child, libc::SIGTERM, Duration::from_secs(10));
    let _ = std::fs::copy(&log, keep_log);
    MembersResult {
        nodes,
        endpoints,
        profiles,
        start_ms,
        first_write_ms,
        resync_ms,
        counted,
        rss_start,
        rss_churn,
        cpu: (cpu_start, cpu_churn),
        add,
        del,
    }
}

pub(crate) fn part_members(cfg: &Cfg, rep: &mut Report) {
    let out = cfg.out.join("members-plugin.log");
    let r = in_netns(move || members_run(&out));
    rep.h(2, "Isolation across hosts (issue 18)");
    rep.p(&format!(
        "The release binary in a private network namespace (dataplane `standalone`, \
         `LOG_LEVEL=info`, `CALICO_LIBNETWORK_ROUTES=true`, `IP=10.250.0.1/16` on a veth \
         underlay), etcd in the same namespace. Before the start: {} simulated Nodes and {} \
         WorkloadEndpoints of theirs (one /32 each, from its node's block) over {} profiles, as Calico stores them. \
         Start = spawn → all {} members in the kernel's sets (`ipset save` every 20 ms); the \
         plugin's full write = its own `took_ms` (compute + one `ipset restore` that fills each \
         set aside and swaps it in). Resync = `ipset flush cln4-remote` by hand, found by the \
         10-s kernel check, everything written whole again (`took_ms`). One change = the etcd \
         write of one endpoint of a simulated node (put, then delete) returning → the first \
         `ipset test` of its profile's set that sees it (polled back to back). RSS = `VmRSS` \
         (`VmHWM`) 1 s after the start and after the churn. Log: `members-plugin.log`.",
        r.nodes,
        r.endpoints,
        r.profiles,
        2 * r.endpoints
    ));
    let (a, d) = (summarize(&r.add), summarize(&r.del));
    rep.table(
        &["", "figure"],
        &[
            vec![
                "remote endpoints / profiles".into(),
                format!("{} / {}", r.endpoints, r.profiles),
            ],
            vec![
                "sets / members in the kernel".into(),
                format!("{} / {}", r.counted.0, r.counted.1),
            ],
            vec!["start → every member in its set, ms".into(), f(r.start_ms)],
            vec![
                "first full write (plugin's took_ms)".into(),
                f(r.first_write_ms),
            ],
            vec![
                "full resync after a flushed set (took_ms)".into(),
                f(r.resync_ms),
            ],
            vec![
                format!("member added → in the set, ms (n={}) p50 / p99 / max", a.n),
                format!("{} / {} / {}", f(a.p50), f(a.p99), f(a.max)),
            ],
            vec![
                format!(
                    "member deleted → out of the set, ms (n={}) p50 / p99 / max",
                    d.n
                ),
                format!("{} / {} / {}", f(d.p50), f(d.p99), f(d.max)),
            ],
            vec![
                "RSS after start, MiB (peak)".into(),
                format!("{:.1} ({:.1})", r.rss_start.0, r.rss_start.1),
            ],
            vec![
                "RSS after churn, MiB (peak)".into(),
                format!("{:.1} ({:.1})", r.rss_churn.0, r.rss_churn.1),
            ],
            vec![
                "CPU s after start / after churn".into(),
                format!("{:.2} / {:.2}", r.cpu.0, r.cpu.1),
            ],
        ],
    );
    let all: Vec<f64> = r.add.iter().chain(&r.del).copied().collect();
    let s = summarize(&all);
    // As the routes part judges it: VmRSS after the start and after the churn (the peak,
    // VmHWM, is in the table above: the start's list of every endpoint passes through).
    let rss = r.rss_start.0.max(r.rss_churn.0);
    let peak = r.rss_start.1.max(r.rss_churn.1);
    let resync = r.first_write_ms.max(r.resync_ms);
    rep.table(
        &["goal", "measured", "met"],
        &[
            vec![
                "policy update p50 < 20 ms".into(),
                f(s.p50),
                goal(s.p50 < 20.0).into(),
            ],
            vec![
                "policy update p99 < 100 ms".into(),
                f(s.p99),
                goal(s.p99 < 100.0).into(),
            ],
            vec![
                format!("{} remote endpoints: full resync < 1 s", r.endpoints),
                format!("{} ms", f(resync)),
                goal(resync < 1000.0).into(),
            ],
            vec![
                "RSS < 60 MiB".into(),
                format!("{rss:.1} MiB (peak {peak:.1})"),
                goal(rss < 60.0).into(),
            ],
        ],
    );
}
