//! Docker's IPAM and network-create flows end to end: our own real dockerd (Debian's 20.10),
//! a real etcd and the real `calico-libnetwork` binary on `/run/docker/plugins/calico.sock`.
//!
//! Needs root. Every test holds the host lock (through `DockerEnv` or `lock()`), so they run
//! one at a time whatever `--test-threads` says.

use crate::common;

use common::{block_on, POOLS_PREFIX};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use calico_libnetwork::datastore::Datastore;
use common::docker::{self, Dockerd};
use common::etcd::Etcd;
use common::plugin::{DockerEnv, DockerEnvBuilder};

const DEFAULT_POOL: &str = "192.168.0.0/16";

/// Calico IP pools in etcd: name -> spec.cidr.
fn pools(etcd: &Etcd) -> BTreeMap<String, String> {
    let kvs = block_on(etcd.store().list(POOLS_PREFIX)).expect("list IP pools in etcd");
    kvs.into_iter()
        .map(|kv| {
            let name = kv.key.strip_prefix(POOLS_PREFIX).unwrap().to_string();
            let v: serde_json::Value = serde_json::from_slice(&kv.value)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", kv.key));
            let cidr = v["spec"]["cidr"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no spec.cidr in {v}", kv.key))
                .to_string();
            (name, cidr)
        })
        .collect()
}

fn pool_with_cidr(etcd: &Etcd, cidr: &str) -> Option<String> {
    pools(etcd)
        .into_iter()
        .find(|(_, c)| c == cidr)
        .map(|(n, _)| n)
}

/// The plugin creates the default pool in the background after it starts serving: wait for it.
fn wait_default_pool(etcd: &Etcd) -> String {
    common::wait_until(
        &format!("the plugin's default pool {DEFAULT_POOL}"),
        Duration::from_secs(15),
        || pool_with_cidr(etcd, DEFAULT_POOL).ok_or_else(|| format!("pools: {:?}", pools(etcd))),
    )
}

/// Root, then the env `builder` makes; runs `body` on it and says how long the test took.
fn run_on(test: &str, builder: DockerEnvBuilder, body: impl FnOnce(&mut DockerEnv)) {
    let t0 = Instant::now();
    let Some(mut env) = builder.start_if_root(test) else {
        return;
    };
    eprintln!(
        "{test}: datastore + plugin + dockerd up in {:?}",
        t0.elapsed()
    );
    body(&mut env);
    eprintln!("{test}: {:?}", t0.elapsed());
}

/// [`run_on`] with etcd, the plugin and dockerd.
fn run(test: &str, body: impl FnOnce(&mut DockerEnv)) {
    run_on(test, DockerEnv::builder().etcd(), body)
}

fn inspect(d: &Dockerd, net: &str, format: &str) -> String {
    d.docker_ok(&["network", "inspect", "-f", format, net])
}

fn assert_no_network(d: &Dockerd, net: &str) {
    let nets = d.networks();
    assert!(
        !nets.iter().any(|n| n == net),
        "network {net} left behind: {nets:?}"
    );
}

/// `net`'s network and IPAM drivers are Calico's, and its subnet is `subnet`.
fn assert_calico_network(d: &Dockerd, net: &str, subnet: &str) {
    assert_eq!(
        inspect(d, net, "{{.Driver}} {{.IPAM.Driver}}"),
        "calico calico"
    );
    assert_eq!(
        inspect(d, net, "{{range .IPAM.Config}}{{.Subnet}}{{end}}"),
        subnet
    );
}

/// `docker network rm net`, and the network is gone.
fn network_rm(d: &Dockerd, net: &str) {
    d.docker_ok(&["network", "rm", net]);
    assert_no_network(d, net);
}

/// (a) A Calico network with Calico IPAM and no subnet.
#[test]
fn network_create_with_calico_driver_and_ipam() {
    run("network_create_with_calico_driver_and_ipam", |env| {
        let d = &env.docker;
        let id = d.calico_network("net1", &[]);
        assert_eq!(id.len(), 64, "network ID: {id}");
        // RequestPool answered 0.0.0.0/0 (no --subnet), with the dummy gateway in the pool data.
        assert_calico_network(d, "net1", "0.0.0.0/0");
        network_rm(d, "net1");
    });
}

/// (b) `--subnet` of no existing pool: the plugin creates a Calico pool for it, and
/// `docker network rm` deletes that pool again.
#[test]
fn subnet_creates_pool_and_network_rm_deletes_it() {
    run("subnet_creates_pool_and_network_rm_deletes_it", |env| {
        let (d, etcd) = (&env.docker, env.etcd());
        wait_default_pool(etcd);
        assert_eq!(pool_with_cidr(etcd, "10.77.0.0/24"), None);
        d.calico_network("net77", &["--subnet", "10.77.0.0/24"]);
        let name = pool_with_cidr(etcd, "10.77.0.0/24").unwrap_or_else(|| {
            panic!(
                "no Calico pool 10.77.0.0/24 after network create: {:?}",
                pools(etcd)
            )
        });
        let key = format!("{POOLS_PREFIX}{name}");
        assert!(block_on(etcd.store().get(&key)).unwrap().is_some());
        assert_calico_network(d, "net77", "10.77.0.0/24");

        network_rm(d, "net77");
        assert!(
            block_on(etcd.store().get(&key)).unwrap().is_none(),
            "pool {name} still in etcd after network rm: {:?}",
            pools(etcd)
        );
        assert_eq!(
            pools(etcd).values().cloned().collect::<Vec<_>>(),
            vec![DEFAULT_POOL.to_string()]
        );
    });
}

/// (c) `--subnet` equal to an existing pool's CIDR uses that pool and leaves it in place.
#[test]
fn subnet_of_existing_pool_uses_and_keeps_it() {
    run("subnet_of_existing_pool_uses_and_keeps_it", |env| {
        let (d, etcd) = (&env.docker, env.etcd());
        let default = wait_default_pool(etcd);
        let before = pools(etcd);
        d.calico_network("netdef", &["--subnet", DEFAULT_POOL]);
        assert_eq!(pools(etcd), before, "no pool created for an existing CIDR");
        assert_eq!(
            inspect(d, "netdef", "{{range .IPAM.Config}}{{.Subnet}}{{end}}"),
            DEFAULT_POOL
        );
        network_rm(d, "netdef");
        assert_eq!(
            pools(etcd),
            before,
            "network rm must keep pool {default}, which the plugin did not create for it"
        );
    });
}

/// Networks made with the Go plugin's IPAM name, `--ipam-driver calico-ipam`, work: the
/// plugin also serves its IPAM driver on `calico-ipam.sock`, which answers Activate with the
/// IPAM driver alone. Containers on such a network get Calico addresses and reach each
/// other; removing it leaves nothing.
#[test]
fn go_plugin_ipam_name_calico_ipam_works() {
    let builder = DockerEnv::builder().etcd().busybox().forward_drop();
    run_on("go_plugin_ipam_name_calico_ipam_works", builder, |env| {
        let (code, body) = common::plugin::call(
            std::path::Path::new(common::plugin::IPAM_SOCKET),
            "Plugin.Activate",
            "",
        )
        .expect("calico-ipam socket");
        assert_eq!(
            (code, body.trim()),
            (200, r#"{"Implements":["IpamDriver"]}"#)
        );
        let d = &env.docker;
        d.docker_ok(&[
            "network",
            "create",
            "-d",
            "calico",
            "--ipam-driver",
            "calico-ipam",
            "gonet",
        ]);
        assert_eq!(inspect(d, "gonet", "{{.IPAM.Driver}}"), "calico-ipam");
        for c in ["go1", "go2"] {
            env.run(c, &["--net", "gonet"]);
        }
        let ip = |c: &str| {
            d.docker_ok(&[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                c,
            ])
            .trim()
            .to_string()
        };
        let (a, b) = (ip("go1"), ip("go2"));
        assert!(
            a.starts_with("192.168."),
            "go1 got {a}, not from the default Calico pool"
        );
        let out = d.docker(&["exec", "go1", "ping", "-c", "1", "-W", "3", &b]);
        assert!(out.status.success(), "go1 -> go2 ({b}): {out:?}");
        assert_eq!(env.list(common::WEPS_PREFIX).len(), 2);
        d.docker_ok(&["rm", "-f", "go1", "go2"]);
        d.docker_ok(&["network", "rm", "gonet"]);
        assert!(env.list(common::WEPS_PREFIX).is_empty());
        assert!(
            env.list(common::HANDLES_PREFIX).is_empty(),
            "addresses left"
        );
    });
}

/// (d) Options Calico refuses: Docker's error carries the plugin's message, and nothing is
/// left behind (no network, no pool).
#[test]
fn refused_options_show_plugin_message_and_leave_nothing() {
    run(
        "refused_options_show_plugin_message_and_leave_nothing",
        |env| {
            let (d, etcd) = (&env.docker, env.etcd());
            wait_default_pool(etcd);
            let before = pools(etcd);
            let nets_before = d.networks();
            // Each refusal starts with the original plugin's sentence (its own tests' strings),
            // then says what to do instead.
            let cases: &[(&[&str], &str)] = &[
                (
                    &["--subnet", "10.79.0.0/24", "--ip-range", "10.79.0.0/25"],
                    "IpamDriver.RequestPool: Calico IPAM does not support sub pool configuration on 'docker create network'. Calico IP Pools should be configured first and IP assignment is from those pre-configured pools. (--ip-range 10.79.0.0/25",
                ),
                (
                    &["--gateway", "10.78.0.5", "--subnet", "10.78.0.0/24"],
                    "IpamDriver.RequestAddress: Calico IPAM does not support specifying a gateway. Containers",
                ),
                (
                    &["--ipam-opt", "foo=bar"],
                    "IpamDriver.RequestPool: Arbitrary options are not supported: Calico IPAM does not support --ipam-opt foo",
                ),
                (
                    &["--subnet", "192.168.5.0/24"],
                    "IpamDriver.RequestPool: The requested subnet must match the CIDR of a configured Calico IP Pool. --subnet 192.168.5.0/24 overlaps",
                ),
            ];
            for (opts, want) in cases {
                let args = Dockerd::calico_network_args("refused", opts);
                let err = d.docker_err(&args);
                eprintln!("docker {}:\n  {err}", args.join(" "));
                assert!(
                    err.contains(want),
                    "docker {}: error should mention {want:?}: {err}",
                    args.join(" ")
                );
                assert!(
                    err.contains("IpamDriver."),
                    "the refusal should come from the plugin's IPAM driver: {err}"
                );
                assert_no_network(d, "refused");
                assert_eq!(d.networks(), nets_before);
                assert_eq!(
                    pools(etcd),
                    before,
                    "after refusing {opts:?} the pools must be as before"
                );
            }
        },
    );
}

/// The plugin restarted between `network create` and `network rm`: Docker re-dials the
/// socket and the plugin finds the pool it created in etcd.
#[test]
fn plugin_restart_between_create_and_rm() {
    run("plugin_restart_between_create_and_rm", |env| {
        wait_default_pool(env.etcd());
        env.docker
            .calico_network("netr", &["--subnet", "10.77.1.0/24"]);
        assert!(pool_with_cidr(env.etcd(), "10.77.1.0/24").is_some());
        let old = env.plugin.pid();
        env.plugin.restart();
        assert_ne!(env.plugin.pid(), old);
        network_rm(&env.docker, "netr");
        assert_eq!(
            pool_with_cidr(env.etcd(), "10.77.1.0/24"),
            None,
            "pool kept after network rm: {:?}",
            pools(env.etcd())
        );
    });
}

/// The same flow on the embedded (local) datastore.
#[test]
fn network_create_and_rm_on_local_datastore() {
    run_on(
        "network_create_and_rm_on_local_datastore",
        DockerEnv::builder().local_store(),
        |env| {
            let d = &env.docker;
            d.calico_network("netl", &["--subnet", "10.77.2.0/24"]);
            assert_eq!(
                inspect(
                    d,
                    "netl",
                    "{{.Driver}} {{.IPAM.Driver}} {{range .IPAM.Config}}{{.Subnet}}{{end}}"
                ),
                "calico calico 10.77.2.0/24"
            );
            let err = d.docker_err(&Dockerd::calico_network_args(
                "netl2",
                &["--subnet", "10.77.2.0/25"],
            ));
            assert!(err.contains("overlaps"), "{err}");
            network_rm(d, "netl");
            assert!(env.plugin.store_path().exists());
        },
    );
}

/// Harness check: the busybox image runs on the default bridge of our dockerd.
#[test]
fn harness_busybox_runs_on_default_bridge() {
    let Some((_lock, t0)) = docker::lock_if_root("harness_busybox_runs_on_default_bridge") else {
        return;
    };
    let mut d = Dockerd::start();
    let image = d.import_busybox();
    let out = d.docker_ok(&[
        "run",
        "--rm",
        image,
        "sh",
        "-c",
        "ip -4 -o addr show eth0; hostname; ping -c1 -W2 172.31.250.1 >/dev/null && echo pong",
    ]);
    assert!(out.contains("172.31.250."), "{out}");
    assert!(out.contains("pong"), "{out}");
    eprintln!("harness_busybox_runs_on_default_bridge: {:?}", t0.elapsed());
}

/// What the host looks like to the harness's clean-up.
#[derive(Debug, PartialEq)]
pub(super) struct HostState {
    links: Vec<String>,
    leftover_procs: Vec<String>,
    leftover_mounts: Vec<String>,
    leftover_dirs: Vec<String>,
    paths: Vec<(String, bool)>,
    cgroups: Vec<String>,
    /// Only compared when no other dockerd runs.
    iptables: Option<Vec<String>>,
    sysctls: Option<Vec<String>>,
}

pub(super) fn host_state() -> HostState {
    let sh = |c: &str| -> String {
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(c)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let lines = |s: String| s.lines().map(str::to_string).collect::<Vec<_>>();
    let exclusive = docker::other_dockerds(None).is_empty();
    HostState {
        links: lines(sh("ls /sys/class/net | sort")),
        leftover_procs: lines(sh(
            "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -E '/tmp/cdt-' | grep -v grep; done",
        )),
        leftover_mounts: lines(sh("grep -E ' /tmp/cdt-' /proc/self/mountinfo")),
        leftover_dirs: lines(sh("ls -d /tmp/cdt-* 2>/dev/null")),
        paths: [
            "/etc/docker",
            "/run/containerd",
            "/opt/containerd",
            "/var/lib/docker",
            "/var/lib/containerd",
        ]
        .iter()
        .map(|p| (p.to_string(), std::path::Path::new(p).exists()))
        .collect(),
        cgroups: lines(sh(&format!(
            "ls -d /sys/fs/cgroup/*/{} 2>/dev/null",
            docker::CGROUP_PARENT
        ))),
        iptables: exclusive.then(|| lines(sh("iptables -w -S; iptables -w -t nat -S"))),
        sysctls: exclusive.then(|| {
            lines(sh(
                "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null",
            ))
        }),
    }
}

/// Harness check: a dockerd with a running container, dropped, leaves the host as it found it;
/// twice in a row.
#[test]
fn harness_leaves_nothing_behind() {
    let Some((_lock, t0)) = docker::lock_if_root("harness_leaves_nothing_behind") else {
        return;
    };
    let before = host_state();
    for round in 1..=2 {
        {
            let mut d = Dockerd::start();
            let image = d.import_busybox();
            d.docker_ok(&["run", "-d", "--name", "sleeper", image, "sleep", "600"]);
            assert_eq!(d.docker_ok(&["ps", "-q"]).lines().count(), 1);
            // A bridge network of the test's own: its host bridge must go too.
            d.docker_ok(&["network", "create", "leakcheck"]);
        }
        let after = host_state();
        assert_eq!(after, before, "round {round}: the host changed");
    }
    eprintln!("harness_leaves_nothing_behind: {:?}", t0.elapsed());
}
