//! etcd with TLS (CA + client certificates, made here with openssl) and with
//! username/password auth: what works, what is refused with a clear message, and that no
//! secret ever shows up in an error or a log line.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use calico_libnetwork::datastore::etcd::{EtcdConfig, EtcdStore};
use calico_libnetwork::datastore::Datastore;
use common::client::PluginClient;
use common::etcd::{Etcd, Tls};
use serde_json::json;

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("run openssl");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    sh(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA and a certificate/key pair signed by it, for `cn` with SAN IP 127.0.0.1.
fn issue(dir: &Path, ca: &str, name: &str) -> (PathBuf, PathBuf) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let crt = format!("{name}.crt");
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    openssl(dir, &["genrsa", "-out", &key, "2048"]);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ],
    );
    (dir.join(crt), dir.join(key))
}

fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(dir, &["genrsa", "-out", &format!("{name}.key"), "2048"]);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "2",
            "-out",
            &format!("{name}.crt"),
        ],
    );
    dir.join(format!("{name}.crt"))
}

fn tls_files(dir: &Path) -> Tls {
    let ca = make_ca(dir, "ca");
    let (server_cert, server_key) = issue(dir, "ca", "server");
    let (client_cert, client_key) = issue(dir, "ca", "client");
    Tls {
        ca,
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let tls = tls_files(certs.path());
    let etcd = Etcd::start_tls(tls.clone());
    assert!(etcd.endpoint().starts_with("https://"));

    // The right CA and a client certificate: works.
    let store = etcd.store();
    store
        .create("/calico/tls-check", b"ok".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.get("/calico/tls-check").await.unwrap().unwrap().value,
        b"ok"
    );

    // A CA that did not sign the server's certificate: refused, clearly, within the deadline.
    let wrong_ca = make_ca(certs.path(), "other-ca");
    let bad = EtcdStore::new(EtcdConfig {
        ca_cert_file: Some(wrong_ca),
        ..etcd.config(Duration::from_secs(2))
    })
    .unwrap();
    let t = Instant::now();
    let err = bad.get("/calico/tls-check").await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        err.to_string().contains(&etcd.endpoint()),
        "names the endpoint: {err}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // No client certificate: etcd refuses (client-cert-auth).
    let anon = EtcdStore::new(EtcdConfig {
        cert_file: None,
        key_file: None,
        ..etcd.config(Duration::from_secs(2))
    })
    .unwrap();
    assert!(anon.get("/calico/tls-check").await.is_err());

    // The plugin binary on TLS etcd, configured through the environment.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("calico.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_calico-libnetwork"))
        .env_clear()
        .env("ETCD_ENDPOINTS", etcd.endpoint())
        .env("ETCD_CA_CERT_FILE", &tls.ca)
        .env("ETCD_CERT_FILE", &tls.client_cert)
        .env("ETCD_KEY_FILE", &tls.client_key)
        .env("CALICO_LIBNETWORK_SOCKET", &sock)
        .env("CALICO_NODENAME_FILE", common::NO_NODENAME_FILE)
        .env("CALICO_LIBNETWORK_DATAPLANE", "off")
        .env("NODENAME", "tls-host")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "socket never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = PluginClient::new(&sock);
    let a = c
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID": "CalicoPoolIPv4", "Address": ""}),
        )
        .await;
    assert!(
        a["Address"].as_str().unwrap().starts_with("192.168."),
        "{a}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn etcdctl(endpoint: &str, args: &[&str]) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .output()
        .expect("run etcdctl (Debian's etcd-client)");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The plugin on etcd at `ep` as user `calico` with `password`, serving `dir`/calico.sock
/// (its output in `dir`/out.log and err.log: at trace level it outgrows a pipe nobody reads
/// yet), once the socket is up.
fn plugin_as_calico(
    ep: &str,
    password: &str,
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> common::ChildGuard {
    let sock = dir.join("calico.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_calico-libnetwork"))
        .env_clear()
        .env("ETCD_ENDPOINTS", ep)
        .env("ETCD_USERNAME", "calico")
        .env("ETCD_PASSWORD", password)
        .env("CALICO_LIBNETWORK_SOCKET", &sock)
        .env("CALICO_NODENAME_FILE", common::NO_NODENAME_FILE)
        .env("CALICO_LIBNETWORK_DATAPLANE", "off")
        .envs(extra.iter().copied())
        .stdout(std::fs::File::create(dir.join("out.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("err.log")).unwrap())
        .spawn()
        .map(common::ChildGuard::new)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "socket never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

const ROOT_PW: &str = "r00t-Secret-9f2c";
const PW: &str = "calico-Secret-4d1e";

/// Turns etcd's authentication on: a root user, and a user `calico` (password [`PW`]) that
/// may read and write `/calico/` only.
fn enable_auth(ep: &str) {
    etcdctl(ep, &["user", "add", &format!("root:{ROOT_PW}")]);
    etcdctl(ep, &["user", "add", &format!("calico:{PW}")]);
    etcdctl(ep, &["role", "add", "calico"]);
    etcdctl(
        ep,
        &[
            "role",
            "grant-permission",
            "calico",
            "--prefix=true",
            "readwrite",
            "/calico/",
        ],
    );
    etcdctl(ep, &["user", "grant-role", "calico", "calico"]);
    etcdctl(ep, &["auth", "enable"]);
}

/// etcd's auth tokens expire (simple tokens after `--auth-token-ttl` idle, 300 s by default;
/// 2 s here): the plugin gets a new one and keeps allocating, instead of failing every call
/// until it is restarted.
#[tokio::test]
async fn the_plugin_keeps_working_after_its_auth_token_expires() {
    let etcd = Etcd::start_with_args(&["--auth-token-ttl", "2"]);
    let ep = etcd.endpoint();
    enable_auth(&ep);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("calico.sock");
    let mut child = plugin_as_calico(
        &ep,
        PW,
        dir.path(),
        &[
            ("CALICO_IPV4POOL_CIDR", "10.68.0.0/16"),
            ("NODENAME", "auth-ttl-host"),
        ],
    );
    let c = PluginClient::new(&sock);
    let pool = c
        .ok(
            "IpamDriver.RequestPool",
            json!({"AddressSpace": "CalicoGlobalAddressSpace", "Pool": "", "SubPool": "", "Options": {}, "V6": false}),
        )
        .await;
    let first = c
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID": pool["PoolID"], "Address": ""}),
        )
        .await;
    // Idle past the token's lifetime (the plugin's background passes may use it meanwhile;
    // what matters is that no call fails from now on).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, second) = c
        .call(
            "IpamDriver.RequestAddress",
            json!({"PoolID": pool["PoolID"], "Address": ""}),
        )
        .await;
    child.stop();
    assert_eq!(
        status,
        200,
        "RequestAddress after the token expired: {second}\n{}",
        std::fs::read_to_string(dir.path().join("out.log")).unwrap()
    );
    assert_ne!(first["Address"], second["Address"]);
    assert!(second["Address"].as_str().unwrap().starts_with("10.68."));
}

#[tokio::test]
async fn username_and_password_auth_and_no_secret_in_errors_or_logs() {
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    enable_auth(&ep);

    let with = |user: &str, pw: &str| {
        EtcdStore::new(EtcdConfig {
            username: Some(user.into()),
            password: Some(pw.into()),
            ..etcd.config(Duration::from_secs(3))
        })
        .unwrap()
    };
    // The right user: reads and writes under /calico/.
    let store = with("calico", PW);
    store
        .create("/calico/auth-check", b"1".to_vec())
        .await
        .unwrap();
    assert_eq!(store.list("/calico").await.unwrap().len(), 1);
    // Outside its permission: refused.
    assert!(store.put("/elsewhere", b"x".to_vec()).await.is_err());

    // A wrong password: a clear error that never repeats the password.
    let wrong = "Wrong-Pass-7a7a";
    let err = with("calico", wrong)
        .get("/calico/auth-check")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("authentication") || msg.contains("auth"),
        "{msg}"
    );
    assert!(
        !msg.contains(wrong) && !msg.contains(PW),
        "secret in error: {msg}"
    );

    // No credentials at all once auth is on: refused.
    let anon = etcd.store_with_timeout(Duration::from_secs(3));
    assert!(anon.get("/calico/auth-check").await.is_err());

    // The plugin with a wrong password, at debug level: no secret in anything it prints.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("calico.sock");
    let child = plugin_as_calico(
        &ep,
        wrong,
        dir.path(),
        &[
            ("CALICO_LIBNETWORK_DATASTORE_TIMEOUT", "1s"),
            ("LOG_LEVEL", "trace"),
            ("NODENAME", "auth-host"),
        ],
    );
    let c = PluginClient::new(&sock);
    let (_, err) = c
        .err(
            "IpamDriver.RequestAddress",
            json!({"PoolID": "CalicoPoolIPv4", "Address": ""}),
        )
        .await;
    assert!(!err.contains(wrong), "secret in Docker's error: {err}");
    let mut child = child;
    child.stop();
    let all = format!(
        "{}{}",
        std::fs::read_to_string(dir.path().join("out.log")).unwrap(),
        std::fs::read_to_string(dir.path().join("err.log")).unwrap()
    );
    assert!(all.contains("auth"), "the failure is logged: {all}");
    assert!(!all.contains(wrong), "secret in the plugin's output");
    // --help shows the variable but never its value.
    let help = Command::new(env!("CARGO_BIN_EXE_calico-libnetwork"))
        .arg("--help")
        .env("ETCD_PASSWORD", wrong)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains(wrong));
}
