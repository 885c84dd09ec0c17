//! Part 1: container start and removal through Docker.

use super::*;

/// Subnet of the user-defined bridge network the bench compares with (outside Calico's
/// default pool and the harness bridge).
/// The networks compared, and their labels in the report.
pub(crate) const NETS: [(&str, &str); 4] = [
    ("benchnet", "calico"),
    ("benchbr", "user-defined bridge"),
    ("bridge", "bridge"),
    ("none", "none"),
];
pub(crate) const USER_BRIDGE_SUBNET: &str = "10.213.0.0/24";

pub(crate) struct DockerRun {
    pub(crate) seq: BTreeMap<String, Vec<f64>>,
    /// Per plugin call, the durations the plugin logged during the sequential runs.
    pub(crate) calls: BTreeMap<String, Vec<f64>>,
    pub(crate) par_start: BTreeMap<String, Vec<f64>>,
    pub(crate) par_rm: BTreeMap<String, Vec<f64>>,
}

pub(crate) fn docker_session(cfg: &Cfg, kind: &str) -> DockerRun {
    // BENCH_DOCKER_DATAPLANE: the plugin's CALICO_LIBNETWORK_DATAPLANE (default `auto`, as
    // users run it), e.g. `off` to see what the firewall rules cost.
    let dataplane = std::env::var("BENCH_DOCKER_DATAPLANE").unwrap_or_else(|_| "auto".into());
    let builder = DockerEnv::builder()
        .docker_api()
        .busybox()
        .plugin_env("LOG_LEVEL", "info")
        .plugin_env("CALICO_LIBNETWORK_DATAPLANE", &dataplane);
    let env = if kind == "etcd" {
        builder.etcd()
    } else {
        builder.local_store()
    }
    .start();
    let (docker, plugin, image) = (&env.docker, &env.plugin, env.image());
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
    let nets = NETS.map(|(n, _)| n);
    let run = |net: &str| -> f64 {
        let t = Instant::now();
        docker_within(
            docker,
            &["run", "--rm", "--net", net, image, "true"],
            Duration::from_secs(90),
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
    let calls = plugin_calls(&plugin.calls_since(log_from));
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
                        docker_within(
                            d,
                            &[
                                "run", "-d", "--name", name, "--net", n, image, "sleep", "600",
                            ],
                            Duration::from_secs(120),
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
                        docker_within(d, &["rm", "-f", name], Duration::from_secs(120));
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
    drop(env);
    DockerRun {
        seq,
        calls,
        par_start,
        par_rm,
    }
}

/// The `duration_ms` of every `request` line in a plugin log, by method.
pub(crate) fn plugin_calls(calls: &[common::plugin::Call]) -> BTreeMap<String, Vec<f64>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for c in calls {
        if let Some(d) = c.duration_ms() {
            out.entry(c.method().to_string()).or_default().push(d);
        }
    }
    out
}

pub(crate) fn part_docker(cfg: &Cfg, rep: &mut Report) {
    rep.h(2, "1. Container start and removal through Docker");
    rep.p(&format!(
        "Docker engine `{}={}`. `docker run --rm --net <net> busybox true` (the engine's docker \
         client → our own dockerd), \
         {} runs per network, the four networks (calico; `benchbr`, a user-defined network of \
         Docker's bridge driver; the default `bridge`; `none`) alternated in rotating order, after \
         2 warm-up runs each; then {} containers `docker run -d ... sleep 600` started in parallel \
         and removed in parallel with `docker rm -f` ({} repetitions, alternated). Like calico's, \
         a user-defined network gets Docker's embedded DNS, set up inside every container's \
         namespace; `bridge` and `none` do not. The plugin runs as users run it (release build, \
         `LOG_LEVEL=info`, dataplane mode `{}`; `auto`, the default, means standalone firewall \
         rules: an endpoint's are inserted before Join answers and removed after DeleteEndpoint \
         answers).",
        common::docker::ENGINE_VAR,
        common::docker::engine().name,
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
        for (n, label2) in NETS {
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
        for (n, label2) in NETS {
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

/// `docker args...`, killed after `timeout`, asserting success.
fn docker_within(d: &Dockerd, args: &[&str], timeout: Duration) {
    let out = d
        .docker_timeout(args, timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
