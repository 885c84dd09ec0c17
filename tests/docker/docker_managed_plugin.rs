//! The Docker managed-plugin bundle, for real: `scripts/build-managed-plugin.sh` builds the
//! rootfs from the binary under test (no registry, no base image), then our own dockerd
//! creates and enables it as `calico-libnetwork:test`, a network is created with it as both
//! drivers, and two containers on it reach each other (so the bundled iptables works too).
//!
//! Needs root; holds the host lock. The harness's `Plugin` (the legacy socket) is not used.

use crate::common;

use common::block_on;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use calico_libnetwork::datastore::Datastore;
use common::docker::{self, Dockerd};
use common::etcd::Etcd;
use common::firewall::HostCleanup;

const BIN: &str = env!("CARGO_BIN_EXE_calico-libnetwork");
const NAME: &str = "calico-libnetwork:test";
const NODE: &str = "managed-plugin-node";

/// Disables and removes the plugin (and what uses it) even when the test fails, while
/// dockerd still runs.
struct PluginCleanup<'a>(&'a Dockerd);

impl Drop for PluginCleanup<'_> {
    fn drop(&mut self) {
        let d = self.0;
        if std::thread::panicking() {
            if let Ok(o) = d.docker_timeout(&["plugin", "inspect", NAME], Duration::from_secs(20)) {
                eprintln!("plugin inspect: {}", String::from_utf8_lossy(&o.stdout));
            }
            eprintln!(
                "----- dockerd log (plugin lines) -----\n{}",
                d.log()
                    .lines()
                    .filter(|l| l.contains("plugin="))
                    .rev()
                    .take(80)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        let t = Duration::from_secs(60);
        let _ = d.docker_timeout(&["rm", "-f", "mp-a", "mp-b"], t);
        let _ = d.docker_timeout(&["network", "rm", "mpnet"], t);
        let _ = d.docker_timeout(&["plugin", "disable", "-f", NAME], t);
        let _ = d.docker_timeout(&["plugin", "rm", "-f", NAME], t);
    }
}

#[test]
fn managed_plugin_serves_a_network_and_containers() {
    let Some((_lock, t0)) = docker::lock_if_root("managed_plugin_serves_a_network_and_containers")
    else {
        return;
    };
    let _fw = HostCleanup::new();
    let etcd = Etcd::start();
    let mut d = Dockerd::start();
    let image = d.import_busybox();

    // The bundle, from the binary under test.
    let bundle = tempfile::Builder::new()
        .prefix("cln-plugin-")
        .tempdir_in("/tmp")
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-managed-plugin.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(BIN)
        .arg(bundle.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-managed-plugin.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let t_bundle = t0.elapsed();
    // Both iptables variants travel with the plugin: it writes with the host's.
    for cmd in [
        "iptables-legacy-restore",
        "iptables-nft-restore",
        "ip6tables-nft",
        "iptables",
    ] {
        let p = bundle.path().join("rootfs/usr/sbin").join(cmd);
        assert!(p.exists(), "{} missing from the bundle", p.display());
    }

    let cleanup = PluginCleanup(&d);
    let dir = bundle.path().display().to_string();
    d.docker_ok(&["plugin", "create", NAME, &dir]);
    let sock_source = format!("docker-sock.source={}", d.socket().display());
    d.docker_ok(&[
        "plugin",
        "set",
        NAME,
        &format!("ETCD_ENDPOINTS={}", etcd.endpoint()),
        &format!("NODENAME={NODE}"),
        "LOG_LEVEL=debug",
        "CALICO_IPV4POOL_CIDR=10.71.0.0/16",
        "CALICO_LIBNETWORK_DATAPLANE=standalone",
        &sock_source,
    ]);
    d.docker_ok(&["plugin", "enable", NAME]);
    let enabled = d.docker_ok(&["plugin", "inspect", "-f", "{{.Enabled}}", NAME]);
    assert_eq!(enabled, "true");
    let t_enable = t0.elapsed();

    d.docker_ok(&[
        "network",
        "create",
        "-d",
        NAME,
        "--ipam-driver",
        NAME,
        "mpnet",
    ]);
    d.docker_ok(&[
        "run", "-d", "--name", "mp-a", "--net", "mpnet", image, "sleep", "600",
    ]);
    let ip_a = d.docker_ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        "mp-a",
    ]);
    assert!(
        ip_a.starts_with("10.71."),
        "address from the default pool: {ip_a}"
    );
    // Another container reaches it: routes, proxy ARP (sysctls written through the remounted
    // /proc/sys) and the forward rules of the bundled iptables all work.
    d.docker_ok(&[
        "run", "--name", "mp-b", "--net", "mpnet", image, "ping", "-c", "2", "-W", "5", &ip_a,
    ]);

    // The plugin wrote Calico's objects to etcd under its node name.
    let weps = block_on(
        etcd.store()
            .list("/calico/resources/v3/projectcalico.org/workloadendpoints/libnetwork/"),
    )
    .unwrap();
    // mp-b has exited (Docker releases a stopped container's endpoints): mp-a's is left.
    assert_eq!(weps.len(), 1, "the running container's WorkloadEndpoint");
    assert!(
        weps[0].key.contains(&NODE.replace('-', "--")),
        "{}",
        weps[0].key
    );
    // The plugin's log reaches dockerd's, and /proc/sys was made writable in the plugin.
    let log = d.log();
    assert!(
        log.contains("remounted /proc/sys read-write"),
        "no remount line"
    );
    assert!(log.contains("calico-libnetwork serving"), "no start line");

    // In use: disable is refused without -f.
    let err = d.docker_err(&["plugin", "disable", NAME]);
    assert!(err.contains("in use"), "{err}");

    d.docker_ok(&["rm", "-f", "mp-a", "mp-b"]);
    d.docker_ok(&["network", "rm", "mpnet"]);
    let weps = block_on(
        etcd.store()
            .list("/calico/resources/v3/projectcalico.org/workloadendpoints/libnetwork/"),
    )
    .unwrap();
    assert!(weps.is_empty(), "endpoints removed with the containers");
    d.docker_ok(&["plugin", "disable", NAME]);
    d.docker_ok(&["plugin", "rm", NAME]);
    drop(cleanup);
    eprintln!(
        "managed plugin test: bundle {:?}, enabled at {:?}, total {:?}",
        t_bundle,
        t_enable,
        t0.elapsed()
    );
}
