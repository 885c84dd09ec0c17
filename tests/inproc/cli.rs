//! The binary as users start it: flags, environment, refusal of bad configuration,
//! the socket it serves and its graceful stop.

use crate::common;

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
    c.env("CALICO_NODENAME_FILE", common::NO_NODENAME_FILE);
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
    // One variable, refused by its own name.
    for (var, value) in [
        ("LOG_LEVEL", "loud"),
        ("CALICO_LIBNETWORK_REQUEST_TIMEOUT", "soon"),
        ("CALICO_IPV4POOL_CIDR", "10.0.0.0/33"),
        ("CALICO_IPV4POOL_IPIP", "sometimes"),
        ("CALICO_IPV4POOL_VXLAN", "sometimes"),
        ("CALICO_IPV6POOL_VXLAN", "sometimes"),
        ("CALICO_IPV4POOL_NAT_OUTGOING", "maybe"),
        ("CALICO_IPV6POOL_NAT_OUTGOING", "maybe"),
        ("CALICO_IPV4POOL_BLOCK_SIZE", "33"),
        ("CALICO_IPV6POOL_BLOCK_SIZE", "26"),
        ("CALICO_IPV4POOL_NODE_SELECTOR", "has("),
        ("CALICO_IPV6POOL_NODE_SELECTOR", "has("),
        ("CALICO_IPV4POOL_DISABLE_BGP_EXPORT", "maybe"),
        ("CALICO_IPV6POOL_DISABLE_BGP_EXPORT", "maybe"),
        ("CALICO_LIBNETWORK_DOCKER_HOST", "/var/run/docker.sock"),
        ("DOCKER_HOST", "ssh://somewhere"),
        ("CALICO_LIBNETWORK_LABEL_ENDPOINTS", "maybe"),
        ("CALICO_LIBNETWORK_LABEL_POLL_TIMEOUT", "0s"),
    ] {
        refuses(&[(var, value)], var);
    }
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
    common::wait_until("plugin socket up", Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&sock).map(drop)
    });
    Running {
        child,
        sock,
        _dir: dir,
    }
}

fn sigterm_and_wait(r: &mut Running) -> std::process::Output {
    crate::common::host::signal(&r.child, libc::SIGTERM);
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

/// Serves once on the embedded store `store` with `envs` (no NODENAME unless given), until
/// answered, then stops with SIGTERM.
async fn serve_once(store: &std::path::Path, envs: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("calico.sock");
    let child = bin()
        .env_remove("HOSTNAME")
        .envs(envs.iter().copied())
        .env("CALICO_LIBNETWORK_SOCKET", &sock)
        .env("CALICO_LIBNETWORK_STORE", store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut r = Running {
        child,
        sock,
        _dir: dir,
    };
    wait_serving(&r.sock);
    assert!(sigterm_and_wait(&mut r).status.success());
}

/// The Node resources in the embedded store `store` (the plugin stopped).
async fn node_names(store: &std::path::Path) -> Vec<String> {
    use calico_libnetwork::datastore::Datastore;
    let db = calico_libnetwork::datastore::local::LocalStore::open(store).unwrap();
    let prefix = "/calico/resources/v3/projectcalico.org/nodes/";
    let mut names: Vec<String> = db
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key[prefix.len()..].to_string())
        .collect();
    names.sort();
    names
}

// calico-node names its node NODENAME, else its nodename file, else HOSTNAME lowercased
// (node/pkg/lifecycle/utils/utils.go, DetermineNodeName), and writes the name to that file
// at start (WriteNodeConfig: the bare name, mode 0644).
#[tokio::test]
async fn the_node_is_named_like_calico_node_and_its_nodename_file_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.redb");
    let file = dir.path().join("nodename");
    let file_var = ("CALICO_NODENAME_FILE", file.to_str().unwrap());
    // An uppercase host name, no file: Node `docker-01`, and the file says so.
    serve_once(&store, &[file_var, ("HOSTNAME", "Docker-01")]).await;
    assert_eq!(node_names(&store).await, ["docker-01"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "docker-01");
    let mode = std::os::unix::fs::PermissionsExt::mode(&file.metadata().unwrap().permissions());
    assert_eq!(mode & 0o777 & !0o644, 0, "at most 0644: {mode:o}");
    assert_eq!(mode & 0o600, 0o600, "{mode:o}");
    // The Node exists already: nothing written.
    std::fs::remove_file(&file).unwrap();
    serve_once(&store, &[file_var, ("HOSTNAME", "Docker-01")]).await;
    assert!(!file.exists(), "written although the Node was not created");
    // The file's name wins over HOSTNAME (its Node is created); the file stays as it was.
    std::fs::write(&file, "stored-name\n").unwrap();
    serve_once(&store, &[file_var, ("HOSTNAME", "Docker-01")]).await;
    assert_eq!(node_names(&store).await, ["docker-01", "stored-name"]);
    // NODENAME wins over the file, which is never overwritten.
    serve_once(&store, &[file_var, ("NODENAME", "explicit")]).await;
    assert_eq!(
        node_names(&store).await,
        ["docker-01", "explicit", "stored-name"]
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "stored-name\n");
}

/// Runs an operator command against a datastore given by `envs`; returns (exit code, stdout, stderr).
pub(super) fn op(envs: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    common::host::code_out_err(bin().envs(envs.iter().copied()).args(args))
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

    // The pool goes, its block in use stays: a pool over it with another block size is
    // refused with Calico's words (libcalico-go clientv3/ippool.go Create), the same size
    // is not.
    assert_eq!(op(&envs, &["pool", "delete", "p1"]).0, 0);
    let (code, _, err) = op(
        &envs,
        &["pool", "add", "p2", "10.64.0.0/24", "--block-size", "28"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "IPPool blocksSize conflicts with existing allocations that use a different blockSize"
        ),
        "{err}"
    );
    let (code, out, err) = op(&envs, &["pool", "add", "p2", "10.64.0.0/24"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Node `gone` with one address and a fresh heartbeat, written by its driver on `store`.
async fn seed_gone_node(store: std::sync::Arc<dyn calico_libnetwork::datastore::Datastore>) {
    use calico_libnetwork::driver::{Driver, DriverSettings};
    let d = Driver::new(store, DriverSettings::new("gone"));
    d.init(&[calico_libnetwork::ipam::default_pool(
        &"10.65.0.0/24".parse().unwrap(),
    )])
    .await
    .unwrap();
    d.request_address("CalicoPoolIPv4", None, &Default::default())
        .await
        .unwrap();
    assert!(d.renew_heartbeat().await.unwrap());
}

/// `node remove`: refused while the heartbeat is fresh (exit 1, one line saying why), done
/// with --force (the counts printed), refused again once the Node is gone.
fn node_remove_command(envs: &[(&str, &str)]) {
    let (code, out, err) = op(envs, &["node", "remove", "gone"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("remove node gone: its plugin is likely running") && err.contains("--force"),
        "{err}"
    );
    let (code, out, err) = op(envs, &["node", "remove", "gone", "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("removed node gone\n"), "{out}");
    assert!(out.contains("addresses released:         1\n"), "{out}");
    assert!(out.contains("block affinities released:  1\n"), "{out}");
    let (code, out, err) = op(envs, &["node", "remove", "gone", "--force", "-o", "json"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("remove node gone: Node gone does not exist"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_remove_on_etcd() {
    let etcd = common::etcd::Etcd::start();
    seed_gone_node(std::sync::Arc::new(etcd.store())).await;
    let endpoint = etcd.endpoint();
    tokio::task::block_in_place(|| node_remove_command(&[("ETCD_ENDPOINTS", &endpoint)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_remove_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let store = calico_libnetwork::datastore::local::LocalStore::open(&path).unwrap();
        seed_gone_node(std::sync::Arc::new(store)).await;
    }
    tokio::task::block_in_place(|| {
        node_remove_command(&[("CALICO_LIBNETWORK_STORE", path.to_str().unwrap())])
    });
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

// ------------------------------------------------------------ the plugin as run-local.sh runs it

/// The binary as a serving plugin of these tests: node `cli-test-host`, and no Docker here
/// (the background tasks that ask it give up quietly).
fn plugin_bin() -> Command {
    let mut c = bin();
    c.env("NODENAME", "cli-test-host").env(
        "CALICO_LIBNETWORK_DOCKER_HOST",
        "unix:///nonexistent/docker.sock",
    );
    c
}

/// Waits (up to 20 s) until the plugin answers `Plugin.Activate` on `sock`.
fn wait_serving(sock: &std::path::Path) {
    common::wait_until(
        "plugin answers Plugin.Activate",
        Duration::from_secs(20),
        || {
            matches!(
                common::plugin::call(sock, "Plugin.Activate", ""),
                Ok((200, _))
            )
        },
    );
}

/// Starts the binary as `scripts/run-local.sh` does (embedded store, the default firewall
/// mode, `auto`: standalone on a host without Felix), on private paths under `dir`.
fn start_like_run_local(dir: &std::path::Path) -> Running {
    let sock = dir.join("plugins/calico.sock");
    let child = plugin_bin()
        .env_remove("CALICO_LIBNETWORK_DATAPLANE")
        .env("DATASTORE_TYPE", "local")
        .env("CALICO_LIBNETWORK_SOCKET", &sock)
        .env("CALICO_LIBNETWORK_STORE", dir.join("store.redb"))
        .env("CALICO_IPV4POOL_CIDR", "10.67.0.0/16")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_serving(&sock);
    Running {
        child,
        sock,
        _dir: tempfile::tempdir().unwrap(),
    }
}

/// What a test of the host's own firewall holds: root (checked loudly), the host lock (no
/// other test's plugin writes rules meanwhile), the clean-up of plugin rules and a temp dir.
struct HostTest {
    dir: tempfile::TempDir,
    _fw: common::firewall::HostCleanup,
    _lock: common::docker::HostLock,
}

impl HostTest {
    fn take(test: &str) -> Option<HostTest> {
        if !common::require_root(test) {
            return None;
        }
        let lock = common::docker::lock();
        Some(HostTest {
            dir: tempfile::tempdir().unwrap(),
            _fw: common::firewall::HostCleanup::new(),
            _lock: lock,
        })
    }
}

/// Waits (up to 10 s) for the plugin's jump from FORWARD.
fn wait_for_forward_jump() {
    common::wait_until("the jump from FORWARD", Duration::from_secs(10), || {
        let rules = common::firewall::owned_rules();
        if rules
            .iter()
            .any(|l| l.ends_with("-A FORWARD -j CALICO-LIBNETWORK-FORWARD"))
        {
            Ok(())
        } else {
            Err(format!("no jump from FORWARD: {rules:#?}"))
        }
    });
}

/// Stops the plugin with `sig` (SIGINT is Ctrl-C) and returns its output.
fn stop_with(r: &mut Running, sig: i32) -> std::process::Output {
    crate::common::host::signal(&r.child, sig);
    let child = std::mem::replace(&mut r.child, Command::new("true").spawn().unwrap());
    child.wait_with_output().unwrap()
}

const NET_ID: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const EP_ID: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn plugin_ok(sock: &std::path::Path, method: &str, body: serde_json::Value) -> serde_json::Value {
    let (st, resp) = common::plugin::call(sock, method, &body.to_string()).unwrap();
    assert_eq!(st, 200, "{method}: {resp}");
    serde_json::from_str(&resp).unwrap()
}

/// A network and an endpoint on it, made with the calls Docker makes (no Join: no veth).
fn network_and_endpoint(sock: &std::path::Path) {
    let pool = plugin_ok(
        sock,
        "IpamDriver.RequestPool",
        serde_json::json!({"AddressSpace": "CalicoGlobalAddressSpace", "Pool": "", "SubPool": "", "Options": {}, "V6": false}),
    );
    let addr = plugin_ok(
        sock,
        "IpamDriver.RequestAddress",
        // As Docker 29 asks: with the container's name.
        serde_json::json!({"PoolID": pool["PoolID"], "Address": "", "Options": {"com.docker.network.endpoint.name": "web-1"}}),
    );
    plugin_ok(
        sock,
        "NetworkDriver.CreateNetwork",
        serde_json::json!({"NetworkID": NET_ID, "Options": {}, "IPv4Data": [{"AddressSpace": "x", "Pool": "0.0.0.0/0", "Gateway": "0.0.0.0/0"}], "IPv6Data": []}),
    );
    plugin_ok(
        sock,
        "NetworkDriver.CreateEndpoint",
        serde_json::json!({"NetworkID": NET_ID, "EndpointID": EP_ID, "Interface": {"Address": addr["Address"]}, "Options": {}}),
    );
}

/// The README's first command, then Ctrl-C, then its second: a stopped plugin with no endpoint
/// left leaves none of its firewall rules behind (the suite would take them for a leak); one
/// stopped with an endpoint left keeps them, so running containers keep working until it is
/// back, and removes them once that endpoint is gone.
#[test]
fn a_plugin_stopped_with_no_endpoint_left_leaves_no_firewall_rule() {
    let Some(host) =
        HostTest::take("a_plugin_stopped_with_no_endpoint_left_leaves_no_firewall_rule")
    else {
        return;
    };
    let dir = &host.dir;

    // Positive control: serving, it keeps its chains and the jump from FORWARD (written in
    // the background once the socket is up).
    let mut r = start_like_run_local(dir.path());
    wait_for_forward_jump();
    let out = stop_with(&mut r, libc::SIGINT);
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("firewall rules removed"), "{log}");
    common::firewall::assert_no_chain();

    // Stopped with an endpoint left: its rules stay.
    let mut r = start_like_run_local(dir.path());
    network_and_endpoint(&r.sock);
    let out = stop_with(&mut r, libc::SIGTERM);
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(!log.contains("firewall rules removed"), "{log}");
    let rules = common::firewall::owned_rules();
    assert!(
        rules
            .iter()
            .any(|l| l.ends_with("-A FORWARD -j CALICO-LIBNETWORK-FORWARD")),
        "the rules are kept for the endpoint: {rules:#?}"
    );
    // Back, the endpoint goes, then the plugin: nothing is left.
    let mut r = start_like_run_local(dir.path());
    plugin_ok(
        &r.sock,
        "NetworkDriver.DeleteEndpoint",
        serde_json::json!({"NetworkID": NET_ID, "EndpointID": EP_ID}),
    );
    let out = stop_with(&mut r, libc::SIGTERM);
    assert!(out.status.success(), "{out:?}");
    common::firewall::assert_no_chain();
}

/// `firewall show` lists every rule the plugin owns; `firewall remove` refuses while the
/// plugin serves, removes them all with `--force` or once it has stopped.
#[test]
fn firewall_show_and_remove() {
    let Some(host) = HostTest::take("firewall_show_and_remove") else {
        return;
    };
    let mut r = start_like_run_local(host.dir.path());
    wait_for_forward_jump();
    network_and_endpoint(&r.sock);
    let sock = r.sock.to_str().unwrap().to_string();
    let env = [("CALICO_LIBNETWORK_SOCKET", sock.as_str())];

    let (code, out, err) = op(&env, &["firewall", "show"]);
    assert_eq!(code, 0, "{out}{err}");
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("# iptables") && first.ends_with(" -t filter"),
        "{out}"
    );
    assert!(
        out.contains("-A FORWARD -j CALICO-LIBNETWORK-FORWARD"),
        "{out}"
    );
    assert!(
        out.contains("-A PREROUTING -m addrtype --dst-type LOCAL -j CALICO-LIBNETWORK-DNAT"),
        "{out}"
    );
    // Exactly what iptables holds of ours, line for line.
    let listed: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    let owned = common::firewall::owned_rules();
    assert_eq!(listed.len(), owned.len(), "{out}\n{owned:#?}");

    let (code, _, err) = op(&env, &["firewall", "remove"]);
    assert_eq!(code, 1, "refused while the plugin serves: {err}");
    assert!(
        err.contains("the plugin is serving") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(common::firewall::owned_rules(), owned, "nothing removed");

    let (code, out, err) = op(&env, &["firewall", "remove", "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "removed {} calico-libnetwork firewall rules",
            owned.len()
        )),
        "{out}"
    );
    common::firewall::assert_no_chain();
    let (code, out, _) = op(&env, &["firewall", "show"]);
    assert_eq!(code, 0);
    assert!(out.contains("no calico-libnetwork firewall rules"), "{out}");

    // Stopped, it has nothing left to remove; `remove` says so and succeeds.
    stop_with(&mut r, libc::SIGTERM);
    let (code, out, err) = op(&env, &["firewall", "remove"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no calico-libnetwork firewall rules"), "{out}");
}

// ------------------------------------------------- operator commands with the plugin running

/// Every operator command with the plugin serving, on the store `envs` selects: the same
/// output and exit codes as with the plugin stopped.
fn operator_commands_while_serving(envs: &[(&str, &str)], sock: &std::path::Path) {
    let sock = sock.to_str().unwrap();
    let mut all: Vec<(&str, &str)> = envs.to_vec();
    all.push(("CALICO_LIBNETWORK_SOCKET", sock));
    all.push(("NODENAME", "cli-test-host"));
    pool_and_ipam_commands(&all);

    let (code, out, err) = op(&all, &["pool", "add", "p9", "10.70.0.0/24"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = op(&all, &["status", "-o", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["datastore"]["reachable"], true, "{st:#}");
    assert_eq!(st["node_resource"], true, "{st:#}");
    assert_eq!(st["socket"]["up"], true, "{st:#}");
    assert_eq!(st["endpoints"], 0, "{st:#}");
    let (code, out, err) = op(&all, &["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("reachable") && !out.contains("skipped"),
        "{out}"
    );

    network_and_endpoint(std::path::Path::new(sock));
    let (code, out, err) = op(&all, &["endpoint", "list", "-o", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let eps: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(eps[0]["endpoint"], EP_ID, "{eps:#}");
    // Docker 29's container name, from RequestAddress, names the endpoint.
    assert_eq!(eps[0]["container"], "web-1", "{eps:#}");
    let (code, out, err) = op(&all, &["endpoint", "list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines().next().unwrap_or("").contains("CONTAINER") && out.contains(" web-1 "),
        "{out}"
    );
    let (code, out, err) = op(&all, &["ipam", "check", "--no-veths"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 inconsistencies found"), "{out}");
    let (code, out, err) = op(&all, &["ipam", "check", "--no-veths", "--repair"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// The plugin on the datastore `envs` selects, serving `sock` (no default pool, no Docker,
/// no firewall), once it answers.
fn serve_quietly(envs: &[(&str, &str)], sock: &std::path::Path) -> common::ChildGuard {
    let child = plugin_bin()
        .envs(envs.iter().copied())
        .env("CALICO_LIBNETWORK_SOCKET", sock)
        .env("NO_DEFAULT_POOLS", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(common::ChildGuard::new)
        .unwrap();
    wait_serving(sock);
    child
}

#[test]
fn operator_commands_on_the_embedded_store_go_through_the_running_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.redb");
    let sock = dir.path().join("calico.sock");
    let store_arg = store.to_str().unwrap();
    let mut child = serve_quietly(
        &[
            ("DATASTORE_TYPE", "local"),
            ("CALICO_LIBNETWORK_STORE", store_arg),
        ],
        &sock,
    );
    let store_env = store.to_str().unwrap().to_string();
    let envs = [("CALICO_LIBNETWORK_STORE", store_env.as_str())];
    // The plugin holds the file: opening it directly is impossible.
    match calico_libnetwork::datastore::local::LocalStore::open(&store) {
        Err(e) => assert!(e.is_in_use(), "{e}"),
        Ok(_) => panic!("the store file opened twice"),
    }
    operator_commands_while_serving(&envs, &sock);

    // A socket that does not answer: one line naming both causes, exit 1.
    let (code, _, err) = op(
        &[
            ("CALICO_LIBNETWORK_STORE", store_env.as_str()),
            ("CALICO_LIBNETWORK_SOCKET", "/nonexistent/calico.sock"),
        ],
        &["pool", "list"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("in use by another process") && err.contains("/nonexistent/calico.sock"),
        "{err}"
    );
    assert!(child.stop().success());
}

#[test]
fn operator_commands_on_etcd_with_the_plugin_running() {
    let etcd = common::etcd::Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("calico.sock");
    let endpoint = etcd.endpoint();
    let mut child = serve_quietly(&[("ETCD_ENDPOINTS", &endpoint)], &sock);
    operator_commands_while_serving(&[("ETCD_ENDPOINTS", &endpoint)], &sock);
    assert!(child.stop().success());
}

// ------------------------------------------------------------ iptables variants, xtables lock

/// A named network namespace of this test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("cln-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        Netns(name)
    }

    /// Runs `prog args` inside the namespace: (success, stdout+stderr).
    fn run(&self, prog: &str, args: &[&str]) -> (bool, String) {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.0, prog])
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The plugin writes its rules with the iptables variant the host's rules are in (`auto`, as
/// Felix and kube-proxy choose), or the one configured; every firewall command has a deadline,
/// so an xtables lock held by someone else makes a call fail after its wait (never hang), and
/// it works again once the lock is free.
#[test]
fn iptables_variant_and_a_held_xtables_lock() {
    if !common::require_root("iptables_variant_and_a_held_xtables_lock") {
        return;
    }
    // The xtables lock is host-wide: no other test of ours may need it meanwhile.
    let _lock = common::docker::lock();
    let ns = Netns::new("bk");
    // This "host" already uses iptables-legacy (one rule there, none in nf_tables).
    let (ok, out) = ns.run(
        "iptables-legacy",
        &["-w", "-A", "FORWARD", "-s", "10.99.0.1", "-j", "ACCEPT"],
    );
    assert!(ok, "{out}");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("calico.sock");
    let mut child = serve_in(&ns, dir.path(), "cli-backend-host", &[]);
    common::wait_until(
        "the jump in iptables-legacy",
        Duration::from_secs(20),
        || {
            let (_, legacy) = ns.run("iptables-legacy", &["-w", "-S", "FORWARD"]);
            if legacy.contains("-j CALICO-LIBNETWORK-FORWARD") {
                Ok(())
            } else {
                Err(format!(
                    "no jump in iptables-legacy: {legacy}\n{}",
                    std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
                ))
            }
        },
    );
    let (_, nft) = ns.run("iptables-nft", &["-w", "-S"]);
    assert!(
        !nft.contains("CALICO-LIBNETWORK"),
        "nothing in nf_tables: {nft}"
    );
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(
        log.contains("iptables variant chosen") && log.contains("Legacy"),
        "{log}"
    );

    // Someone holds the xtables lock (iptables-legacy's; nf_tables has none).
    let lockfile = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/xtables.lock")
        .unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file this test opened.
    let locked = unsafe { libc::flock(lockfile.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(locked, 0);
    let show = || {
        let t = Instant::now();
        let o = Command::new("ip")
            .args(["netns", "exec", &ns.0, BIN, "firewall", "show"])
            .env("CALICO_LIBNETWORK_IPTABLES_BACKEND", "legacy")
            .env("CALICO_LIBNETWORK_SOCKET", &sock)
            .output()
            .unwrap();
        (o, t.elapsed())
    };
    let (o, took) = show();
    assert!(!o.status.success(), "{o:?}");
    assert!(
        took < Duration::from_secs(12),
        "a held lock is waited for at most its deadline: {took:?}"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("xtables lock"), "{err}");
    // SAFETY: as above.
    unsafe { libc::flock(lockfile.as_raw_fd(), libc::LOCK_UN) };
    let (o, _) = show();
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("# iptables-legacy -t filter")
            && out.contains("-A FORWARD -j CALICO-LIBNETWORK-FORWARD"),
        "{out}"
    );
    assert!(child.stop().success());
    let (_, legacy) = ns.run("iptables-legacy", &["-w", "-S"]);
    assert!(
        !legacy.contains("CALICO-LIBNETWORK") && legacy.contains("-s 10.99.0.1/32 -j ACCEPT"),
        "stopped with no endpoint: its rules gone, the host's kept: {legacy}"
    );
}

/// The plugin serving in namespace `ns` on the embedded store, with its store, socket
/// (`calico.sock`) and log (`log`) in `dir`, as node `node`, with `extra` settings.
fn serve_in(
    ns: &Netns,
    dir: &std::path::Path,
    node: &str,
    extra: &[(&str, &str)],
) -> common::ChildGuard {
    Command::new("ip")
        .args(["netns", "exec", &ns.0, BIN])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DATASTORE_TYPE", "local")
        .env("CALICO_LIBNETWORK_STORE", dir.join("store.redb"))
        .env("CALICO_LIBNETWORK_SOCKET", dir.join("calico.sock"))
        .envs(extra.iter().copied())
        .env("NODENAME", node)
        .env("CALICO_NODENAME_FILE", common::NO_NODENAME_FILE)
        .env(
            "CALICO_LIBNETWORK_DOCKER_HOST",
            "unix:///nonexistent/docker.sock",
        )
        .stdout(std::fs::File::create(dir.join("log")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .map(common::ChildGuard::new)
        .unwrap()
}

/// `auto` looks for Felix at every rules check, not only at start: Felix starting on the host
/// later takes filtering over (our filter chains go, the published-port NAT stays), and
/// standalone mode comes back when it goes.
#[test]
fn auto_mode_follows_felix_coming_and_going() {
    if !common::require_root("auto_mode_follows_felix_coming_and_going") {
        return;
    }
    let ns = Netns::new("fx");
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve_in(
        &ns,
        dir.path(),
        "cli-felix-host",
        &[("CALICO_LIBNETWORK_RULES_CHECK_INTERVAL", "1s")],
    );
    let wait_for = |what: &str, check: &dyn Fn(&str, &str) -> bool| {
        common::wait_until(what, Duration::from_secs(15), || {
            let (_, filter) = ns.run("iptables", &["-w", "-S"]);
            let (_, nat) = ns.run("iptables", &["-w", "-t", "nat", "-S"]);
            if check(&filter, &nat) {
                Ok(())
            } else {
                Err(format!(
                    "\n{filter}\n{nat}\n{}",
                    std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
                ))
            }
        });
    };
    let forward = "-A FORWARD -j CALICO-LIBNETWORK-FORWARD";
    let dnat = "-j CALICO-LIBNETWORK-DNAT";
    wait_for("standalone at start", &|f, n| {
        f.contains(forward) && n.contains(dnat)
    });
    // Felix starts: its FORWARD hook appears.
    for args in [
        &["-w", "-N", "cali-FORWARD"][..],
        &["-w", "-A", "FORWARD", "-j", "cali-FORWARD"][..],
    ] {
        let (ok, out) = ns.run("iptables", args);
        assert!(ok, "{out}");
    }
    wait_for("felix mode once Felix runs", &|f, n| {
        !f.contains("CALICO-LIBNETWORK-FORWARD") && n.contains(dnat)
    });
    // Felix goes.
    for args in [
        &["-w", "-D", "FORWARD", "-j", "cali-FORWARD"][..],
        &["-w", "-X", "cali-FORWARD"][..],
    ] {
        let (ok, out) = ns.run("iptables", args);
        assert!(ok, "{out}");
    }
    wait_for("standalone again", &|f, n| {
        f.contains(forward) && n.contains(dnat)
    });
    assert!(child.stop().success());
}
