//! A real etcd (Debian's `etcd-server`) on free loopback ports with its own data directory.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use calico_libnetwork::datastore::etcd::{EtcdConfig, EtcdStore};
use calico_libnetwork::datastore::Datastore;

/// PEM files for an etcd serving TLS with client-certificate auth.
#[derive(Clone, Debug)]
pub struct Tls {
    pub ca: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
}

/// A running etcd; killed (by its PID) and its data removed on drop.
pub struct Etcd {
    child: Option<Child>,
    pub port: u16,
    /// The peer port (kept for [`Etcd::restart`]).
    peer: u16,
    pub dir: tempfile::TempDir,
    pub tls: Option<Tls>,
    /// Extra command-line flags (kept for [`Etcd::restart`]).
    args: Vec<String>,
}

impl Etcd {
    /// Starts etcd and waits until it answers (at most 20 s).
    pub fn start() -> Etcd {
        Self::start_with(None)
    }

    /// Starts etcd serving `https://` with client-certificate authentication.
    pub fn start_tls(tls: Tls) -> Etcd {
        Self::start_with(Some(tls))
    }

    /// Starts etcd with extra flags (`--auth-token-ttl 2`, ...).
    pub fn start_with_args(args: &[&str]) -> Etcd {
        Self::start_full(None, args)
    }

    fn start_with(tls: Option<Tls>) -> Etcd {
        Self::start_full(tls, &[])
    }

    fn start_full(tls: Option<Tls>, args: &[&str]) -> Etcd {
        let dir = tempfile::tempdir().expect("etcd temp dir");
        let mut etcd = Etcd {
            child: None,
            port: super::free_port(),
            peer: super::free_port(),
            dir,
            tls,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        etcd.spawn();
        etcd
    }

    /// Starts etcd again after [`Etcd::stop`], on the same ports and data directory (an
    /// outage ending), and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd still running");
        self.spawn();
    }

    fn spawn(&mut self) {
        let (port, peer, dir, tls) = (self.port, self.peer, &self.dir, &self.tls);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("test={peer_url}"))
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn")
            .args(&self.args)
            .args(tls.iter().flat_map(|t| {
                [
                    "--cert-file".into(),
                    t.server_cert.clone().into_os_string(),
                    "--key-file".into(),
                    t.server_key.clone().into_os_string(),
                    "--trusted-ca-file".into(),
                    t.ca.clone().into_os_string(),
                    "--client-cert-auth".into(),
                ]
            }));
        // Dies with the test thread if the test process is killed before Drop runs.
        let child = super::host::spawn_logged(
            cmd,
            &dir.path().join("etcd.log"),
            libc::SIGKILL,
            "etcd (install Debian's etcd-server package)",
        );
        self.child = Some(child);
        self.wait_ready();
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Port open: check that it serves requests (on a thread of its own, so this
                // works from inside an async test too).
                let store = self.store_with_timeout(Duration::from_secs(1));
                let ok = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(store.get("/ready-check")).is_ok()
                })
                .join()
                .unwrap();
                if ok {
                    return;
                }
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                panic!("etcd did not become ready on port {}: {log}", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn config(&self, timeout: Duration) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.endpoint()],
            timeout,
            ca_cert_file: self.tls.as_ref().map(|t| t.ca.clone()),
            cert_file: self.tls.as_ref().map(|t| t.client_cert.clone()),
            key_file: self.tls.as_ref().map(|t| t.client_key.clone()),
            ..Default::default()
        }
    }

    pub fn store_with_timeout(&self, timeout: Duration) -> EtcdStore {
        EtcdStore::new(self.config(timeout)).unwrap()
    }

    pub fn store(&self) -> EtcdStore {
        self.store_with_timeout(Duration::from_secs(5))
    }

    /// Every key under `prefix` with its value parsed as JSON (panics on either failing).
    pub fn list_json(&self, prefix: &str) -> Vec<(String, serde_json::Value)> {
        super::block_on(self.store().list(prefix))
            .unwrap_or_else(|e| panic!("list {prefix}: {e}"))
            .into_iter()
            .map(|kv| {
                let v = serde_json::from_slice(&kv.value)
                    .unwrap_or_else(|e| panic!("{}: not JSON: {e}", kv.key));
                (kv.key, v)
            })
            .collect()
    }

    /// Stops etcd now (SIGKILL by PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::host::signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
