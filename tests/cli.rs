//! The binary as users start it: flags, environment, refusal of bad configuration,
//! the socket it serves and its graceful stop.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::client::PluginClient;

const BIN: &str = env!("CARGO_BIN_EXE_calico-libnetwork");

fn bin() -> Command {
    let mut c = Command::new(BIN);
    // Start from a clean slate: none of the host's datastore settings leak in.
    for v in [
        "DATASTORE_TYPE",
        "ETCD_ENDPOINTS",
        "ETCD_AUTHORITY",
        "ETCD_SCHEME",
        "ETCD_CA_CERT_FILE",
        "ETCD_CERT_FILE",
        "ETCD_KEY_FILE",
        "ETCD_USERNAME",
        "ETCD_PASSWORD",
        "CALICO_ETCD_ENDPOINTS",
        "CALICO_DATASTORE_TYPE",
        "LOG_LEVEL",
        "CALICO_DEBUG",
        "NODENAME",
    ] {
        c.env_remove(v);
    }
    // These tests exercise start-up and configuration, not the host firewall.
    c.env("CALICO_LIBNETWORK_DATAPLANE", "off");
    c
}

/// Runs the binary with env settings and expects it to refuse to start, naming `var`.
fn refuses(envs: &[(&str, &str)], var: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .envs(envs.iter().copied())
        .env("CALICO_LIBNETWORK_SOCKET", dir.path().join("c.sock"))
        .env("CALICO_LIBNETWORK_STORE", dir.path().join("s.redb"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{envs:?}: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(var), "{envs:?} -> {err}");
    assert!(!dir.path().join("c.sock").exists());
}

#[test]
fn help_and_version() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "ETCD_ENDPOINTS",
        "DATASTORE_TYPE",
        "LOG_LEVEL",
        "NODENAME",
        "CALICO_LIBNETWORK_SOCKET",
    ] {
        assert!(help.contains(var), "--help mentions {var}");
    }
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("calico-libnetwork {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn invalid_configuration_stops_at_start_naming_the_variable() {
    refuses(&[("ETCD_ENDPOINTS", "not a url")], "ETCD_ENDPOINTS");
    refuses(
        &[("ETCD_ENDPOINTS", "ftp://127.0.0.1:2379")],
        "ETCD_ENDPOINTS",
    );
    refuses(&[("CALICO_ETCD_ENDPOINTS", "::bad")], "ETCD_ENDPOINTS");
    refuses(&[("DATASTORE_TYPE", "zookeeper")], "DATASTORE_TYPE");
    refuses(&[("DATASTORE_TYPE", "etcdv3")], "ETCD_ENDPOINTS");
    refuses(
        &[
            ("ETCD_ENDPOINTS", "https://127.0.0.1:2379"),
            ("ETCD_CA_CERT_FILE", "/nonexistent/ca.pem"),
        ],
        "ETCD_CA_CERT_FILE",
    );
    refuses(
        &[
            ("ETCD_AUTHORITY", "127.0.0.1:2379"),
            ("ETCD_SCHEME", "gopher"),
        ],
        "ETCD_SCHEME",
    );
    refuses(&[("LOG_LEVEL", "loud")], "LOG_LEVEL");
    refuses(
        &[("CALICO_LIBNETWORK_REQUEST_TIMEOUT", "soon")],
        "CALICO_LIBNETWORK_REQUEST_TIMEOUT",
    );
    refuses(
        &[("CALICO_IPV4POOL_CIDR", "10.0.0.0/33")],
        "CALICO_IPV4POOL_CIDR",
    );
    refuses(
        &[("CALICO_LIBNETWORK_DOCKER_HOST", "/var/run/docker.sock")],
        "CALICO_LIBNETWORK_DOCKER_HOST",
    );
    refuses(&[("DOCKER_HOST", "ssh://somewhere")], "DOCKER_HOST");
    refuses(
        &[("CALICO_LIBNETWORK_LABEL_ENDPOINTS", "maybe")],
        "CALICO_LIBNETWORK_LABEL_ENDPOINTS",
    );
    refuses(
        &[("CALICO_LIBNETWORK_LABEL_POLL_TIMEOUT", "0s")],
        "CALICO_LIBNETWORK_LABEL_POLL_TIMEOUT",
    );
}

struct Running {
    child: std::process::Child,
    sock: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(envs: &[(&str, &str)]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("plugins/calico.sock");
    let child = bin()
        .envs(envs.iter().copied())
        .env("CALICO_LIBNETWORK_SOCKET", &sock)
        .env("CALICO_LIBNETWORK_STORE", dir.path().join("store.redb"))
        .env("NODENAME", "cli-test-host")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "plugin socket never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Running {
        child,
        sock,
        _dir: dir,
    }
}

fn sigterm_and_wait(r: &mut Running) -> std::process::Output {
    unsafe {
        libc::kill(r.child.id() as i32, libc::SIGTERM);
    }
    let child = std::mem::replace(&mut r.child, Command::new("true").spawn().unwrap());
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn serves_on_embedded_store_and_stops_cleanly_on_sigterm() {
    let mut r = start(&[("LOG_FORMAT", "json")]);
    let c = PluginClient::new(&r.sock);
    let (status, v) = c.raw("Plugin.Activate", "").await;
    assert_eq!(status, 200);
    assert_eq!(v["Implements"][1], "IpamDriver");
    let out = sigterm_and_wait(&mut r);
    assert!(out.status.success(), "{out:?}");
    assert!(!r.sock.exists(), "socket removed on SIGTERM");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
        .collect();
    let serving = lines
        .iter()
        .find(|l| l["message"] == "calico-libnetwork serving")
        .expect("a 'serving' line");
    assert_eq!(serving["datastore"], "local");
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "created Calico Node resource"),
        "the Node resource is created at start: {stdout}"
    );
}

#[tokio::test]
async fn log_level_is_set_by_environment_without_rebuild() {
    let mut r = start(&[("LOG_LEVEL", "debug")]);
    let c = PluginClient::new(&r.sock);
    c.raw("Plugin.Activate", "").await;
    let out = sigterm_and_wait(&mut r);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("DEBUG"), "debug lines present: {stdout}");

    let mut r = start(&[("LOG_LEVEL", "warn")]);
    let c = PluginClient::new(&r.sock);
    c.raw("Plugin.Activate", "").await;
    let out = sigterm_and_wait(&mut r);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("INFO") && !stdout.contains("DEBUG"),
        "{stdout}"
    );
}

#[tokio::test]
async fn calico_prefixed_etcd_variables_select_etcd() {
    let etcd = common::etcd::Etcd::start();
    let mut r = start(&[
        ("CALICO_ETCD_ENDPOINTS", &etcd.endpoint()),
        ("LOG_FORMAT", "json"),
    ]);
    let c = PluginClient::new(&r.sock);
    assert_eq!(c.raw("Plugin.Activate", "").await.0, 200);
    let out = sigterm_and_wait(&mut r);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"datastore\":\"etcdv3\""), "{stdout}");
}

/// Runs an operator command against a datastore given by `envs`; returns (exit code, stdout, stderr).
fn op(envs: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = bin()
        .envs(envs.iter().copied())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn pool_and_ipam_commands(envs: &[(&str, &str)]) {
    let (code, out, err) = op(
        envs,
        &[
            "pool",
            "add",
            "p1",
            "10.60.0.0/24",
            "--block-size",
            "28",
            "--nat-outgoing",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("added pool p1 (10.60.0.0/24)"), "{out}");
    // Overlapping, invalid and duplicate pools are refused with one clear line.
    let (code, _, err) = op(envs, &["pool", "add", "p2", "10.60.0.128/25"]);
    assert_eq!(code, 1);
    assert!(err.contains("overlaps IP pool p1"), "{err}");
    let (code, _, err) = op(envs, &["pool", "add", "p3", "10.61.0.0/33"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid CIDR"), "{err}");
    let (code, _, err) = op(
        envs,
        &[
            "pool",
            "add",
            "p4",
            "10.62.0.0/24",
            "--ipip-mode",
            "Sometimes",
        ],
    );
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = op(envs, &["pool", "add", "Bad_Name", "10.63.0.0/24"]);
    assert_eq!(code, 1, "{err}");

    let (code, out, _) = op(envs, &["pool", "list"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("CIDR"),
        "{out}"
    );
    assert_eq!(lines.len(), 2, "header and p1 only: {out}");
    assert!(
        lines[1].contains("p1") && lines[1].contains("10.60.0.0/24") && lines[1].contains("28"),
        "{out}"
    );
    let (_, out, _) = op(envs, &["pool", "list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["name"], "p1");
    assert_eq!(v[0]["spec"]["natOutgoing"], true);

    let (code, out, _) = op(envs, &["ipam", "show", "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["cidr"], "10.60.0.0/24");
    assert_eq!(v[0]["size"], 256);
    assert_eq!(v[0]["used"], 0);
    let (code, out, _) = op(envs, &["ipam", "show"]);
    assert_eq!(code, 0);
    assert!(
        out.lines().next().unwrap().starts_with("POOL/BLOCK"),
        "{out}"
    );

    let (code, out, _) = op(envs, &["pool", "delete", "p1"]);
    assert_eq!(code, 0, "{out}");
    let (code, _, err) = op(envs, &["pool", "delete", "p1"]);
    assert_eq!(code, 1);
    assert!(err.contains("p1"), "{err}");
    let (_, out, _) = op(envs, &["pool", "list", "-o", "json"]);
    assert_eq!(out.trim(), "[]");
}

#[test]
fn pool_and_ipam_commands_on_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.redb");
    pool_and_ipam_commands(&[("CALICO_LIBNETWORK_STORE", store.to_str().unwrap())]);
}

#[test]
fn pool_and_ipam_commands_on_etcd() {
    let etcd = common::etcd::Etcd::start();
    pool_and_ipam_commands(&[("ETCD_ENDPOINTS", &etcd.endpoint())]);
}

#[tokio::test]
async fn ipam_show_reports_blocks_in_use() {
    let etcd = common::etcd::Etcd::start();
    let envs = [("ETCD_ENDPOINTS", etcd.endpoint())];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(op(&envs, &["pool", "add", "p1", "10.64.0.0/24"]).0, 0);
    let store: std::sync::Arc<dyn calico_libnetwork::datastore::Datastore> =
        std::sync::Arc::new(etcd.store());
    let s = common::server::Server::start(store, "show-host", &[]).await;
    for _ in 0..3 {
        s.client
            .ok(
                "IpamDriver.RequestAddress",
                serde_json::json!({"PoolID": "CalicoPoolIPv4", "Address": ""}),
            )
            .await;
    }
    s.stop().await;
    let (code, out, _) = op(&envs, &["ipam", "show", "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["used"], 3);
    assert_eq!(v[0]["blocks"][0]["used"], 3);
    assert_eq!(v[0]["blocks"][0]["free"], 61);
    assert_eq!(v[0]["blocks"][0]["affinity"], "host:show-host");
    let (_, table, _) = op(&envs, &["ipam", "show"]);
    assert!(table.contains("host:show-host"), "{table}");
}

#[tokio::test]
async fn a_stalled_log_pipe_never_blocks_requests() {
    // stdout is a pipe nobody reads: at trace level it fills within a few requests.
    let mut r = start(&[("LOG_LEVEL", "trace")]);
    let c = PluginClient::new(&r.sock);
    let t = Instant::now();
    for _ in 0..2000 {
        let (status, _) =
            tokio::time::timeout(Duration::from_secs(5), c.raw("Plugin.Activate", ""))
                .await
                .expect("answered although its log pipe is full");
        assert_eq!(status, 200);
    }
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    let _ = r.child.kill();
}
