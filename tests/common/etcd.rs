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
        parse_list(prefix, super::block_on(self.store().list(prefix)))
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

/// The keys and values a list of `prefix` gave, each value parsed as JSON (panics on a
/// failed list or a value that is not JSON).
fn parse_list<E: std::fmt::Display>(
    prefix: &str,
    listed: Result<Vec<calico_libnetwork::datastore::KeyValue>, E>,
) -> Vec<(String, serde_json::Value)> {
    listed
        .unwrap_or_else(|e| panic!("list {prefix}: {e}"))
        .into_iter()
        .map(|kv| {
            let v = serde_json::from_slice(&kv.value)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", kv.key));
            (kv.key, v)
        })
        .collect()
}

/// Where one member of an [`EtcdCluster`] runs: its name, network namespace (`None`: the
/// test's own), and the address and ports it listens on (clients and peers).
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub name: String,
    /// A `/run/netns/NAME` path.
    pub netns: Option<String>,
    pub addr: std::net::IpAddr,
    pub client_port: u16,
    pub peer_port: u16,
}

impl MemberSpec {
    /// `http://addr:client_port`.
    pub fn client_url(&self) -> String {
        url(self.addr, self.client_port)
    }

    /// `http://addr:peer_port`.
    pub fn peer_url(&self) -> String {
        url(self.addr, self.peer_port)
    }
}

fn url(addr: std::net::IpAddr, port: u16) -> String {
    format!("http://{}", std::net::SocketAddr::new(addr, port))
}

/// An etcd cluster of several members (`--initial-cluster`), each with its own data
/// directory and, optionally, its own network namespace (a host of
/// `super::hosts::Fleet`). Members are killed (by PID) on drop, and one at a time with
/// [`EtcdCluster::kill`] (an outage: the others keep a quorum) and started again on the
/// same data with [`EtcdCluster::restart`].
pub struct EtcdCluster {
    members: Vec<(MemberSpec, Option<Child>)>,
    pub dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts every member (all at once: a member serves only once a quorum has formed),
    /// then waits until each answers a read (at most 30 s). Start it on the test's own
    /// thread (the members get PR_SET_PDEATHSIG).
    pub fn start(specs: Vec<MemberSpec>) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("cln-etcd-")
            .tempdir_in("/tmp")
            .expect("etcd cluster temp dir");
        let mut c = EtcdCluster {
            members: specs.into_iter().map(|s| (s, None)).collect(),
            dir,
        };
        for i in 0..c.members.len() {
            c.spawn(i);
        }
        for i in 0..c.members.len() {
            c.wait_ready(i);
        }
        c
    }

    /// `n` members on 127.0.0.1 (free ports, the test's own namespace).
    pub fn start_loopback(n: usize) -> EtcdCluster {
        let specs = (1..=n)
            .map(|i| MemberSpec {
                name: format!("m{i}"),
                netns: None,
                addr: std::net::Ipv4Addr::LOCALHOST.into(),
                client_port: super::free_port(),
                peer_port: super::free_port(),
            })
            .collect();
        Self::start(specs)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn spec(&self, i: usize) -> &MemberSpec {
        &self.members[i].0
    }

    /// Every member's client URL, as `ETCD_ENDPOINTS` lists them.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|(s, _)| s.client_url()).collect()
    }

    /// [`Self::endpoints`], comma-separated (`ETCD_ENDPOINTS`).
    pub fn endpoints_var(&self) -> String {
        self.endpoints().join(",")
    }

    /// Member `i`'s PID while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].1.as_ref().map(|c| c.id())
    }

    /// Member `i`'s log file.
    pub fn log_path(&self, i: usize) -> std::path::PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].0.name))
    }

    fn spawn(&mut self, i: usize) {
        let initial = self
            .members
            .iter()
            .map(|(s, _)| format!("{}={}", s.name, s.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("cln-{}", self.dir.path().display());
        let spec = self.members[i].0.clone();
        let data = self.dir.path().join(format!("{}.data", spec.name));
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&spec.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(spec.client_url())
            .arg("--advertise-client-urls")
            .arg(spec.client_url())
            .arg("--listen-peer-urls")
            .arg(spec.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(spec.peer_url())
            // Read only on the first start (the data directory then holds the membership).
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-token", &token])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-level", "warn"]);
        if let Some(ns) = &spec.netns {
            super::netns::command_in(&mut cmd, ns);
        }
        let child = super::host::spawn_logged(
            cmd,
            &self.log_path(i),
            libc::SIGKILL,
            "etcd (install Debian's etcd-server package)",
        );
        self.members[i].1 = Some(child);
    }

    /// Runs `f` on a thread of its own in member `i`'s network namespace (where the other
    /// members are reachable too).
    fn in_ns_of<T: Send + 'static>(&self, i: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
        match &self.members[i].0.netns {
            Some(ns) => super::netns::enter(ns, f),
            None => std::thread::spawn(f).join().unwrap(),
        }
    }

    /// Waits until member `i` answers a (linearizable) read: it has joined a quorum.
    fn wait_ready(&mut self, i: usize) {
        let spec = self.members[i].0.clone();
        let log = self.log_path(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(s))) = self.members[i].1.as_mut().map(|c| c.try_wait()) {
                self.members[i].1 = None;
                panic!(
                    "etcd member {} exited ({s}): {}",
                    spec.name,
                    super::host::log_tail(&log, 40)
                );
            }
            let endpoint = spec.client_url();
            let answered = self.in_ns_of(i, move || {
                let store = EtcdStore::new(EtcdConfig {
                    endpoints: vec![endpoint],
                    timeout: Duration::from_secs(1),
                    ..Default::default()
                })
                .unwrap();
                super::block_on(store.get("/ready-check")).map_err(|e| e.to_string())
            });
            match answered {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!(
                    "etcd member {} did not answer within 30 s ({e}): {}",
                    spec.name,
                    super::host::log_tail(&log, 40)
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Kills member `i` now (SIGKILL by PID) and waits for it: the others keep serving as
    /// long as they are a majority.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].1.take() {
            super::host::signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Starts member `i` again after [`Self::kill`], on its data directory, and waits until
    /// it answers.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].1.is_none(), "member {i} still running");
        self.spawn(i);
        self.wait_ready(i);
    }

    /// Runs `f` with a store on the running members' endpoints, on a thread in the network
    /// namespace of the first of them, and returns what it gives.
    pub fn with_store<T, Fut>(&self, f: impl FnOnce(EtcdStore) -> Fut + Send + 'static) -> T
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        let i = (0..self.len())
            .find(|&i| self.members[i].1.is_some())
            .expect("no etcd member running");
        let endpoints = (0..self.len())
            .filter(|&i| self.members[i].1.is_some())
            .map(|i| self.members[i].0.client_url())
            .collect();
        self.in_ns_of(i, move || {
            let store = EtcdStore::new(EtcdConfig {
                endpoints,
                timeout: Duration::from_secs(5),
                ..Default::default()
            })
            .unwrap();
            super::block_on(f(store))
        })
    }

    /// The value of `key` parsed as JSON, if the key exists (panics on a failed read or
    /// on a value that is not JSON).
    pub fn get_json(&self, key: &str) -> Option<serde_json::Value> {
        let k = key.to_string();
        self.with_store(move |store| async move { store.get(&k).await })
            .unwrap_or_else(|e| panic!("get {key}: {e}"))
            .map(|kv| {
                serde_json::from_slice(&kv.value).unwrap_or_else(|e| panic!("{key}: not JSON: {e}"))
            })
    }

    /// Writes `value` under `key` as calicoctl would (unconditionally; panics on failure).
    pub fn put_json(&self, key: &str, value: &serde_json::Value) {
        let (k, v) = (key.to_string(), serde_json::to_vec(value).unwrap());
        self.with_store(move |store| async move {
            store
                .txn(vec![calico_libnetwork::datastore::Write::put(k, v)])
                .await
        })
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    /// Every key under `prefix` with its value parsed as JSON (panics on either failing).
    pub fn list_json(&self, prefix: &str) -> Vec<(String, serde_json::Value)> {
        let p = prefix.to_string();
        parse_list(
            prefix,
            self.with_store(move |store| async move { store.list(&p).await }),
        )
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
