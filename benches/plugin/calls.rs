//! Part 2: the plugin's own time per container, against the kernel floor and CNI `ptp`.

use super::*;

pub(crate) struct PluginTimes {
    pub(crate) setup: Vec<f64>,
    pub(crate) teardown: Vec<f64>,
    pub(crate) calls: Vec<CallTimes>,
}

pub(crate) fn plugin_loop(env: &StoreEnv, n: usize) -> PluginTimes {
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
pub(crate) fn kernel_floor(n: usize) -> [(Vec<f64>, Vec<f64>); 2] {
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
pub(crate) fn cni_ptp(n: usize) -> Option<(Vec<f64>, Vec<f64>)> {
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

pub(crate) fn part_plugin(cfg: &Cfg, rep: &mut Report) {
    rep.h(2, "2. The plugin's own time per container");
    let n = cfg.n;
    let stores = cfg.stores.clone();
    let (results, floor, cni) = in_netns(move || {
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
