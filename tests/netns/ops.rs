//! Operator commands against a real etcd and the real binary: `status`, `endpoint list`,
//! `ipam check [--repair]` (inconsistencies planted in etcd and a real host veth), the
//! request log line and the Prometheus metrics endpoint.

use crate::common;

use common::block_on;

use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calico_libnetwork::datastore::Datastore;
use calico_libnetwork::ipam::{AutoAssign, Ipam};
use calico_libnetwork::model::resources::WorkloadEndpointSpec;
use calico_libnetwork::model::{IpFamily, IpPool, IpPoolSpec, WorkloadEndpoint};
use common::etcd::Etcd;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_calico-libnetwork");
const NODE: &str = "ops-test-node";
const NET_ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const EP_ID: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn bin(etcd: &Etcd) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("ETCD_ENDPOINTS", etcd.endpoint())
        .env("NODENAME", NODE)
        .env("CALICO_NODENAME_FILE", common::NO_NODENAME_FILE)
        .env("CALICO_LIBNETWORK_DATAPLANE", "off")
        .env(
            "CALICO_LIBNETWORK_DOCKER_HOST",
            "unix:///nonexistent/docker.sock",
        );
    c
}

/// (exit code, stdout, stderr).
fn run(etcd: &Etcd, socket: &Path, args: &[&str]) -> (i32, String, String) {
    common::host::code_out_err(bin(etcd).env("CALICO_LIBNETWORK_SOCKET", socket).args(args))
}

fn run_json(etcd: &Etcd, socket: &Path, args: &[&str]) -> (i32, Value) {
    let (code, out, err) = run(etcd, socket, args);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}{err}"));
    (code, v)
}

struct Running {
    child: Child,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        crate::common::host::signal(&self.child, libc::SIGTERM);
        let _ = self.child.wait();
    }
}

fn start_plugin(etcd: &Etcd, dir: &Path, metrics_port: u16) -> Running {
    start_plugin_with(etcd, dir, metrics_port, &[])
}

fn start_plugin_with(
    etcd: &Etcd,
    dir: &Path,
    metrics_port: u16,
    extra: &[(&str, &str)],
) -> Running {
    let socket = dir.join("calico.sock");
    let log = dir.join("plugin.log");
    let f = std::fs::File::create(&log).unwrap();
    let child = bin(etcd)
        .envs(extra.iter().copied())
        .env("CALICO_LIBNETWORK_SOCKET", &socket)
        .env(
            "CALICO_LIBNETWORK_METRICS_ADDR",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("CALICO_IPV4POOL_CIDR", "10.66.0.0/16")
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let r = Running { child, log };
    common::wait_until(
        "the plugin comes up",
        Duration::from_secs(20),
        || match common::plugin::call(&socket, "Plugin.Activate", "") {
            Ok((200, _)) => Ok(()),
            _ => Err(std::fs::read_to_string(&r.log).unwrap_or_default()),
        },
    );
    // The plugin prepares the datastore before listening: Node and pool exist now.
    r
}

fn plugin_ok(socket: &Path, method: &str, body: Value) -> Value {
    let (st, resp) = common::plugin::call(socket, method, &body.to_string()).unwrap();
    assert_eq!(st, 200, "{method}: {resp}");
    serde_json::from_str(&resp).unwrap()
}

/// The default IPv4 pool's ID and an address from it, as Docker asks for them.
fn pool_and_address(socket: &Path) -> (String, String) {
    let pool = plugin_ok(
        socket,
        "IpamDriver.RequestPool",
        json!({"AddressSpace": "CalicoGlobalAddressSpace", "Pool": "", "SubPool": "", "Options": {}, "V6": false}),
    );
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    let addr = plugin_ok(
        socket,
        "IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {}}),
    );
    (pool_id, addr["Address"].as_str().unwrap().to_string())
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the sample line starting with `prefix` (name and labels).
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{metrics}"))
}

#[test]
fn status_endpoint_list_request_log_and_metrics() {
    let t0 = Instant::now();
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("calico.sock");

    // Nothing running, nothing in etcd: the socket and the Node resource are problems.
    let (code, out, _) = run(&etcd, &socket, &["status"]);
    assert_eq!(code, 1, "{out}");
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert!(
        problems.iter().any(|p| p.contains("plugin socket")),
        "{out}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("Node resource") && p.contains(NODE)),
        "{out}"
    );
    assert!(
        out.contains("datastore") && out.contains("ms per read"),
        "{out}"
    );

    let port = common::free_port();
    let plugin = start_plugin(&etcd, dir.path(), port);

    let (code, st) = run_json(&etcd, &socket, &["status", "-o", "json"]);
    assert_eq!(code, 0, "{st:#}");
    assert_eq!(st["datastore"]["reachable"], true);
    assert!(st["datastore"]["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(st["node_resource"], true);
    assert_eq!(st["socket"]["up"], true);
    assert_eq!(st["endpoints"], 0);
    assert_eq!(st["pools"][0]["cidr"], "10.66.0.0/16");
    assert_eq!(st["problems"].as_array().unwrap().len(), 0);

    // A network and an endpoint, as Docker makes them.
    let (pool_id, address) = pool_and_address(&socket);
    plugin_ok(
        &socket,
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET_ID, "Options": {}, "IPv4Data": [{"AddressSpace": "x", "Pool": "0.0.0.0/0", "Gateway": "0.0.0.0/0"}], "IPv6Data": []}),
    );
    let ep = plugin_ok(
        &socket,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NET_ID, "EndpointID": EP_ID, "Interface": {"Address": address}, "Options": {}}),
    );
    let mac = ep["Interface"]["MacAddress"].as_str().unwrap().to_string();

    // One info line per request, with its IDs and outcome (the log is written by a thread
    // of its own: wait for it).
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&plugin.log).unwrap();
        if log.contains("NetworkDriver.CreateEndpoint") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let line = log
        .lines()
        .find(|l| l.contains("NetworkDriver.CreateEndpoint") && l.contains("INFO"))
        .unwrap_or_else(|| panic!("no CreateEndpoint line:\n{log}"));
    for want in [NET_ID, EP_ID, "outcome=\"ok\"", "duration_ms"] {
        assert!(line.contains(want), "{want} in {line}");
    }
    let line = log
        .lines()
        .find(|l| l.contains("IpamDriver.RequestAddress") && l.contains("INFO"))
        .unwrap();
    assert!(line.contains(&format!("pool_id=\"{pool_id}\"")), "{line}");

    // Another host's endpoint, written straight to etcd.
    let store = etcd.store();
    let mut other = WorkloadEndpoint::namespaced(
        "libnetwork",
        "other--host-libnetwork-libnetwork-abc",
        WorkloadEndpointSpec {
            orchestrator: "libnetwork".into(),
            workload: "libnetwork".into(),
            node: "other-host".into(),
            endpoint: "abc".into(),
            ip_networks: vec!["10.66.99.9/32".into()],
            interface_name: "caliabc".into(),
            mac: "02:00:00:00:00:01".into(),
            ..Default::default()
        },
    );
    other.metadata.stamp_create();
    block_on(store.put(&other.key().unwrap(), other.to_json().unwrap())).unwrap();

    let (code, eps) = run_json(&etcd, &socket, &["endpoint", "list", "-o", "json"]);
    assert_eq!(code, 0);
    let eps = eps.as_array().unwrap();
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0]["endpoint"], EP_ID);
    assert_eq!(eps[0]["node"], NODE);
    assert_eq!(eps[0]["mac"], mac);
    assert_eq!(eps[0]["interface"], format!("cali{}", &EP_ID[..11]));
    assert_eq!(eps[0]["network"], NET_ID);
    let ip = address.split('/').next().unwrap();
    assert_eq!(eps[0]["addresses"][0], format!("{ip}/32"));
    let (code, table, _) = run(&etcd, &socket, &["endpoint", "list", "--all-hosts"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("ENDPOINT") && lines[0].contains("NODE"),
        "{table}"
    );
    assert!(
        table.contains("other-host") && table.contains(&mac),
        "{table}"
    );
    // Aligned: every column starts at the same offset on each line.
    let col = lines[0].find("NETWORK").unwrap();
    assert!(lines.iter().skip(1).all(|l| l.as_bytes()[col - 1] == b' '));

    let (code, st) = run_json(&etcd, &socket, &["status", "-o", "json"]);
    assert_eq!(code, 0, "{st:#}");
    assert_eq!(st["endpoints"], 1);

    // Metrics move with the requests.
    let m = scrape(port);
    let req = "calico_libnetwork_requests_total{call=\"IpamDriver.RequestAddress\",outcome=\"ok\"}";
    assert_eq!(sample(&m, req), 1.0);
    assert_eq!(
        sample(&m, "calico_libnetwork_addresses_allocated_total"),
        1.0
    );
    let rt = sample(&m, "calico_libnetwork_datastore_round_trips_total");
    assert!(rt > 0.0);
    sample(&m, "calico_libnetwork_datastore_conflicts_total");
    assert!(
        m.contains("calico_libnetwork_request_duration_seconds_bucket{le=\"0.0005\",call=\"NetworkDriver.CreateEndpoint\"}")
            || m.contains("calico_libnetwork_request_duration_seconds_count{call=\"NetworkDriver.CreateEndpoint\"} 1"),
        "{m}"
    );
    plugin_ok(
        &socket,
        "IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {}}),
    );
    let (st, _) = common::plugin::call(&socket, "IpamDriver.RequestAddress", "{").unwrap();
    assert_eq!(st, 400);
    let m = scrape(port);
    assert_eq!(sample(&m, req), 2.0);
    assert_eq!(
        sample(&m, "calico_libnetwork_addresses_allocated_total"),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            "calico_libnetwork_requests_total{call=\"IpamDriver.RequestAddress\",outcome=\"bad-request\"}"
        ),
        1.0
    );
    assert!(sample(&m, "calico_libnetwork_datastore_round_trips_total") > rt);
    drop(plugin);

    // Plugin gone: status fails and says what to do.
    let (code, out, _) = run(&etcd, &socket, &["status"]);
    assert_eq!(code, 1);
    assert!(out.contains("problem: plugin socket"), "{out}");
    eprintln!("status/endpoint/metrics test took {:?}", t0.elapsed());
}

/// A host veth `calitest<pid>` (peer `cltpeer<pid>`), deleted on drop.
struct Veth(String);

impl Veth {
    /// A veth marked as the plugin marks its own (interface alias `calico-libnetwork`).
    fn create() -> Veth {
        let v = Veth::create_as("calitest", "cltpeer");
        let o = Command::new("ip")
            .args(["link", "set", &v.0, "alias", "calico-libnetwork"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        v
    }

    /// A `cali*` veth of another program (Calico CNI's pod veths look the same): no mark.
    fn create_as(prefix: &str, peer_prefix: &str) -> Veth {
        let name = format!("{prefix}{}", std::process::id() % 10_000_000);
        let peer = format!("{peer_prefix}{}", std::process::id() % 10_000_000);
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        let o = Command::new("ip")
            .args(["link", "add", &name, "type", "veth", "peer", "name", &peer])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        Veth(name)
    }

    fn exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.0).exists()
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

fn finding<'a>(report: &'a Value, kind: &str, object: &str) -> Option<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == kind && f["object"] == object)
}

#[test]
fn ipam_check_finds_and_repairs_planted_inconsistencies() {
    if !common::require_root("ipam_check_finds_and_repairs_planted_inconsistencies") {
        return;
    }
    // Holds the host lock: `--repair` deletes every `cali*` veth without an endpoint, and
    // the Docker tests make such veths.
    let _lock = common::docker::lock();
    let t0 = Instant::now();
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let store: Arc<dyn Datastore> = Arc::new(etcd.store());
    let ipam = Ipam::new(store.clone());
    let cidr: ipnet::IpNet = "10.77.0.0/16".parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (orphan_ip, used_ip, block) = rt.block_on(async {
        calico_libnetwork::driver::init::ensure_node(ipam.store().as_ref(), NODE)
            .await
            .unwrap();
        ipam.create_pool(IpPool::new("ops-pool", IpPoolSpec::with_cidr(&cidr)))
            .await
            .unwrap();
        // An allocation no endpoint uses.
        let a = ipam
            .auto_assign(&AutoAssign::new(1, IpFamily::V4, NODE, "libnetwork.orphan"))
            .await
            .unwrap();
        // An allocation an endpoint uses, whose handle we then corrupt.
        let b = ipam
            .auto_assign(&AutoAssign::new(1, IpFamily::V4, NODE, "libnetwork.used"))
            .await
            .unwrap();
        (a.ips[0].addr(), b.ips[0].addr(), b.ips[0].trunc())
    });
    let wep = |name: &str, ip: String, iface: &str| {
        let mut w = WorkloadEndpoint::namespaced(
            "libnetwork",
            name,
            WorkloadEndpointSpec {
                orchestrator: "libnetwork".into(),
                workload: "libnetwork".into(),
                node: NODE.into(),
                endpoint: name.into(),
                ip_networks: vec![ip],
                interface_name: iface.into(),
                mac: "02:00:00:00:00:02".into(),
                ..Default::default()
            },
        );
        w.metadata.stamp_create();
        rt.block_on(store.put(&w.key().unwrap(), w.to_json().unwrap()))
            .unwrap();
        w.key().unwrap()
    };
    wep("ops-used", format!("{used_ip}/32"), "calinotthere1");
    let bad_wep = wep("ops-unallocated", "10.77.200.9/32".into(), "calinotthere2");
    rt.block_on(
        store.put(
            "/calico/ipam/v2/handle/libnetwork.used",
            json!({"block": {block.to_string(): 5}})
                .to_string()
                .into_bytes(),
        ),
    )
    .unwrap();
    let veth = Veth::create();
    let foreign = Veth::create_as("californ", "cfnpeer");

    // Check only: everything found, nothing changed; the young orphan is not repairable.
    let (code, r) = run_json(&etcd, &socket, &["ipam", "check", "-o", "json"]);
    assert_eq!(code, 1, "{r:#}");
    let f = finding(&r, "orphan-allocation", &orphan_ip.to_string()).expect("orphan allocation");
    assert_eq!(f["repairable"], false, "{f}");
    assert!(f["detail"].as_str().unwrap().contains("libnetwork.orphan"));
    let f = finding(&r, "handle-mismatch", "libnetwork.used").expect("handle mismatch");
    assert!(f["detail"].as_str().unwrap().contains("5 in"), "{f}");
    assert!(
        finding(&r, "unallocated-endpoint-address", "10.77.200.9").is_some(),
        "{r:#}"
    );
    assert!(finding(&r, "orphan-veth", &veth.0).is_some(), "{r:#}");
    assert!(
        finding(&r, "orphan-veth", &foreign.0).is_none(),
        "a veth the plugin did not make is not its to judge: {r:#}"
    );
    assert!(
        r["notes"].to_string().contains("not made by this plugin"),
        "{r:#}"
    );
    assert!(finding(&r, "orphan-allocation", &used_ip.to_string()).is_none());
    assert!(veth.exists());
    // The table: aligned, one line per finding, and a summary.
    let (code, out, _) = run(&etcd, &socket, &["ipam", "check"]);
    assert_eq!(code, 1);
    assert!(out.starts_with("KIND"), "{out}");
    assert!(out.contains("4 inconsistencies found, 0 repaired"), "{out}");

    // Repair with no grace period.
    let (code, r) = run_json(
        &etcd,
        &socket,
        &["ipam", "check", "--repair", "--grace", "0s", "-o", "json"],
    );
    assert_eq!(code, 1, "the unallocated endpoint address stays: {r:#}");
    for (kind, obj) in [
        ("orphan-allocation", orphan_ip.to_string()),
        ("handle-mismatch", "libnetwork.used".to_string()),
        ("orphan-veth", veth.0.clone()),
    ] {
        let f = finding(&r, kind, &obj).unwrap_or_else(|| panic!("{kind} {obj}: {r:#}"));
        assert_eq!(f["repaired"], true, "{f}");
        assert!(f["action"].as_str().unwrap().starts_with("repaired"), "{f}");
    }
    let f = finding(&r, "unallocated-endpoint-address", "10.77.200.9").unwrap();
    assert_eq!(f["repaired"], false);
    assert!(!veth.exists(), "orphan veth deleted");
    assert!(foreign.exists(), "another program's veth left alone");
    rt.block_on(async {
        assert!(ipam.ips_by_handle("libnetwork.orphan").await.is_err());
        assert_eq!(
            ipam.ips_by_handle("libnetwork.used").await.unwrap(),
            vec![used_ip]
        );
        let h = store
            .get("/calico/ipam/v2/handle/libnetwork.used")
            .await
            .unwrap()
            .unwrap();
        let h: Value = serde_json::from_slice(&h.value).unwrap();
        assert_eq!(h["block"][block.to_string()], 1);
        store.delete(&bad_wep, None).await.unwrap();
    });

    // Clean now.
    let (code, out, _) = run(&etcd, &socket, &["ipam", "check", "--no-veths"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 inconsistencies found"), "{out}");
    eprintln!("ipam check test took {:?}", t0.elapsed());
}

/// An address leaked after start (RequestAddress with no endpoint ever created, as when a
/// DeleteEndpoint/ReleaseAddress was lost) is released by the periodic reconciliation,
/// not only by the passes at start.
#[test]
fn periodic_reconciliation_releases_a_leaked_address() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("calico.sock");
    let port = common::free_port();
    let plugin = start_plugin_with(
        &etcd,
        dir.path(),
        port,
        &[
            ("CALICO_LIBNETWORK_RECONCILE_GRACE", "1s"),
            ("CALICO_LIBNETWORK_RECONCILE_INTERVAL", "2s"),
        ],
    );
    let log = || std::fs::read_to_string(&plugin.log).unwrap_or_default();
    let wait_for = |what: &str, f: &dyn Fn(&str) -> bool| {
        common::wait_until(what, Duration::from_secs(20), || {
            let l = log();
            if f(&l) {
                Ok(())
            } else {
                Err(format!("log:\n{l}"))
            }
        });
    };
    // The start-up passes are over (the second one runs after the grace period).
    wait_for("no second reconciliation pass", &|l| {
        l.lines()
            .any(|l| l.contains("reconciliation done") && l.contains("pass=2"))
    });
    let (pool_id, address) = pool_and_address(&socket);
    let ip = address.split('/').next().unwrap().to_string();
    wait_for("leaked address not released by a later pass", &|l| {
        l.lines()
            .any(|l| l.contains("reconcile: released address") && l.contains(&ip))
    });
    // What a user sees: the address can be asked for again.
    let again = plugin_ok(
        &socket,
        "IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": ip, "Options": {}}),
    );
    assert!(
        again["Address"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{ip}/")),
        "{again}"
    );
    drop(plugin);
}
