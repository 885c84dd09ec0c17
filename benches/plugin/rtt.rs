//! Part 3: datastore round trips per Docker call.

use super::*;

/// Runs one call on the in-process server and returns what it cost the datastore.
pub(crate) async fn counted(
    c: &common::client::PluginClient,
    store: &Arc<dyn Datastore>,
    method: &str,
    body: Value,
) -> (StatsSnapshot, Value, u16) {
    let before = store.stats().snapshot();
    let (st, v) = c.call(method, body).await;
    (store.stats().snapshot().since(&before), v, st)
}

pub(crate) fn rtt_rows(kind: &str) -> Vec<(String, StatsSnapshot, String)> {
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

pub(crate) fn part_rtt(cfg: &Cfg, rep: &mut Report) {
    rep.h(2, "3. Datastore round trips per Docker call");
    let stores = cfg.stores.clone();
    let all = in_netns(move || {
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
