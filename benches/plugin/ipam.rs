//! Part 4: IPAM throughput and scale.

use super::*;

pub(crate) async fn driver_on(store: Arc<dyn Datastore>, node: &str) -> (Arc<Driver>, String) {
    let d = Arc::new(Driver::new(store, DriverSettings::new(node)));
    d.init(&[calico_libnetwork::ipam::default_pool(
        &"192.168.0.0/16".parse().unwrap(),
    )])
    .await
    .unwrap();
    let g = d
        .ipam_driver()
        .request_pool(PoolRequest::default())
        .await
        .unwrap();
    (d, g.pool_id)
}

pub(crate) fn open_store(env: &StoreEnv) -> Arc<dyn Datastore> {
    match &env.store {
        Store::Etcd(_) => Arc::new(env._etcd.as_ref().unwrap().store()),
        Store::Local(p) => Arc::new(LocalStore::open(p).unwrap()),
    }
}

pub(crate) fn part_ipam(cfg: &Cfg, rep: &mut Report) {
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
                d.ipam_driver()
                    .release_address(&pool, ip.addr())
                    .await
                    .unwrap();
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
