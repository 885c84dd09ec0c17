//! Part 5: footprint (RSS, start to ready).

use super::*;

pub(crate) fn part_footprint(cfg: &Cfg, rep: &mut Report) {
    rep.h(2, "5. Footprint");
    let n = cfg.n;
    let stores = cfg.stores.clone();
    let rows = in_netns(move || {
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
