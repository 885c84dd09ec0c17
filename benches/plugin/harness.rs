//! Processes, namespaces and the plugin socket: a keep-alive client (`Conn`), the plugin
//! on a socket of its own (`Proc`), Docker's call sequence per container, the stores.

use super::*;

/// Runs `f` on a thread of its own inside a fresh network namespace with `lo` up. Children
/// spawned from that thread (etcd, the plugin, CNI plugins) are in the namespace too.
pub(crate) fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    common::netns::fresh(move || {
        common::host::run_ok("ip", &["link", "set", "lo", "up"]);
        f()
    })
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn hex64() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A keep-alive HTTP/1.1 client on the plugin socket, sending what Docker sends.
pub(crate) struct Conn {
    pub(crate) path: PathBuf,
    pub(crate) r: Option<BufReader<UnixStream>>,
}

impl Conn {
    pub(crate) fn new(path: &Path) -> Conn {
        Conn {
            path: path.to_path_buf(),
            r: None,
        }
    }

    pub(crate) fn try_call(&mut self, method: &str, body: &str) -> std::io::Result<(u16, String)> {
        if self.r.is_none() {
            let s = UnixStream::connect(&self.path)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.r = Some(BufReader::new(s));
        }
        let r = self.r.as_mut().unwrap();
        let req = format!(
            "POST /{method} HTTP/1.1\r\nHost: plugin.moby.localhost\r\nUser-Agent: Go-http-client/1.1\r\n\
             Content-Length: {}\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\
             Accept-Encoding: gzip\r\n\r\n{body}",
            body.len()
        );
        r.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            } else if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = len {
            out.resize(n, 0);
            r.read_exact(&mut out)?;
        } else {
            r.read_to_end(&mut out)?;
            close = true;
        }
        if close {
            self.r = None;
        }
        Ok((status, String::from_utf8_lossy(&out).into_owned()))
    }

    /// One call; reconnects once if the kept-alive connection went away.
    pub(crate) fn call(&mut self, method: &str, body: &Value) -> (u16, Value) {
        let body = if body.is_null() {
            String::new()
        } else {
            format!("{body}\n")
        };
        let (st, text) = match self.try_call(method, &body) {
            Ok(x) => x,
            Err(_) => {
                self.r = None;
                self.try_call(method, &body)
                    .unwrap_or_else(|e| panic!("{method}: {e}"))
            }
        };
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (st, v)
    }

    pub(crate) fn ok(&mut self, method: &str, body: Value) -> Value {
        let (st, v) = self.call(method, &body);
        assert!(
            st == 200 && v.get("Err").is_none(),
            "{method} {body} -> {st} {v}"
        );
        v
    }
}

/// Where a plugin process keeps its state.
#[derive(Clone)]
pub(crate) enum Store {
    Etcd(String),
    Local(PathBuf),
}

/// The real plugin binary on a socket of its own (not Docker's fixed one), with the
/// dataplane firewall off; killed with its spawning thread (PR_SET_PDEATHSIG).
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) socket: PathBuf,
    pub(crate) _dir: tempfile::TempDir,
}

impl Proc {
    /// Starts the plugin; returns it and the time from spawn to Activate answered.
    pub(crate) fn start(store: &Store) -> (Proc, Duration) {
        let dir = tempfile::Builder::new()
            .prefix("calico-bench-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("calico.sock");
        let mut cmd = Command::new(BINARY);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CALICO_LIBNETWORK_SOCKET", &socket)
            .env("NODENAME", NODE)
            .env("CALICO_NODENAME_FILE", common::NO_NODENAME_FILE)
            .env("LOG_LEVEL", "info")
            .env("CALICO_LIBNETWORK_DATAPLANE", "off")
            // No Docker API here: the network-name lookup fails fast in the background.
            .env(
                "CALICO_LIBNETWORK_DOCKER_HOST",
                "unix:///run/calico-bench-no-docker.sock",
            );
        match store {
            Store::Etcd(ep) => {
                cmd.env("DATASTORE_TYPE", "etcdv3")
                    .env("ETCD_ENDPOINTS", ep);
            }
            Store::Local(p) => {
                cmd.env("DATASTORE_TYPE", "local")
                    .env("CALICO_LIBNETWORK_STORE", p);
            }
        }
        let t0 = Instant::now();
        let child = common::host::spawn_logged(
            cmd,
            &dir.path().join("plugin.log"),
            libc::SIGKILL,
            "calico-libnetwork",
        );
        let mut p = Proc {
            child,
            socket,
            _dir: dir,
        };
        let deadline = t0 + Duration::from_secs(20);
        loop {
            if let Ok((200, body)) = common::plugin::call(&p.socket, "Plugin.Activate", "") {
                if body.contains("NetworkDriver") {
                    return (p, t0.elapsed());
                }
            }
            if let Ok(Some(s)) = p.child.try_wait() {
                panic!(
                    "plugin exited ({s}): {}",
                    std::fs::read_to_string(p._dir.path().join("plugin.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "plugin not ready within 20 s");
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stop(mut self) {
        common::host::stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(10));
    }
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
pub(crate) fn rss_mib(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// A calico network created the way Docker creates it (RequestPool, then CreateNetwork).
pub(crate) struct Net {
    pub(crate) id: String,
    pub(crate) pool_id: String,
}

pub(crate) fn create_network(c: &mut Conn) -> Net {
    let p = c.ok(
        "IpamDriver.RequestPool",
        json!({"AddressSpace": "CalicoLocalAddressSpace", "Pool": "", "SubPool": "", "Options": {}, "V6": false}),
    );
    let pool_id = p["PoolID"].as_str().unwrap().to_string();
    let id = hex64();
    c.ok(
        "NetworkDriver.CreateNetwork",
        json!({
            "NetworkID": id,
            "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {}},
            "IPv4Data": [{"AddressSpace": "CalicoLocalAddressSpace", "Pool": p["Pool"], "Gateway": "0.0.0.0/0"}],
            "IPv6Data": []
        }),
    );
    Net { id, pool_id }
}

/// One container's endpoint, set up with Docker's calls.
pub(crate) struct Ep {
    pub(crate) id: String,
    pub(crate) addr: String,
}

/// Time of each call of one container's setup and teardown, in ms.
#[derive(Default, Clone)]
pub(crate) struct CallTimes {
    pub(crate) setup: [f64; 4],
    pub(crate) teardown: [f64; 3],
}
pub(crate) const SETUP_CALLS: [&str; 4] = [
    "IpamDriver.RequestAddress",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.Join",
    "NetworkDriver.EndpointOperInfo",
];
pub(crate) const TEARDOWN_CALLS: [&str; 3] = [
    "NetworkDriver.Leave",
    "NetworkDriver.DeleteEndpoint",
    "IpamDriver.ReleaseAddress",
];

pub(crate) fn setup_container(c: &mut Conn, net: &Net, t: &mut CallTimes) -> Ep {
    let id = hex64();
    let t0 = Instant::now();
    let a = c.ok(
        "IpamDriver.RequestAddress",
        json!({"PoolID": net.pool_id, "Address": "", "Options": null}),
    );
    let addr = a["Address"].as_str().unwrap().to_string();
    let t1 = Instant::now();
    c.ok(
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": net.id, "EndpointID": id,
               "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""},
               "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}}),
    );
    let t2 = Instant::now();
    c.ok(
        "NetworkDriver.Join",
        json!({"NetworkID": net.id, "EndpointID": id,
               "SandboxKey": format!("/var/run/docker/netns/{}", &hex64()[..12]), "Options": {}}),
    );
    let t3 = Instant::now();
    c.ok(
        "NetworkDriver.EndpointOperInfo",
        json!({"NetworkID": net.id, "EndpointID": id}),
    );
    let t4 = Instant::now();
    t.setup = [ms(t1 - t0), ms(t2 - t1), ms(t3 - t2), ms(t4 - t3)];
    Ep {
        id,
        addr: addr.split('/').next().unwrap().to_string(),
    }
}

pub(crate) fn teardown_container(c: &mut Conn, net: &Net, ep: &Ep, t: &mut CallTimes) {
    let t0 = Instant::now();
    c.ok(
        "NetworkDriver.Leave",
        json!({"NetworkID": net.id, "EndpointID": ep.id}),
    );
    let t1 = Instant::now();
    c.ok(
        "NetworkDriver.DeleteEndpoint",
        json!({"NetworkID": net.id, "EndpointID": ep.id}),
    );
    let t2 = Instant::now();
    c.ok(
        "IpamDriver.ReleaseAddress",
        json!({"PoolID": net.pool_id, "Address": ep.addr}),
    );
    let t3 = Instant::now();
    t.teardown = [ms(t1 - t0), ms(t2 - t1), ms(t3 - t2)];
}

/// The datastore of a part, started in the current (namespace) thread.
pub(crate) struct StoreEnv {
    pub(crate) name: &'static str,
    pub(crate) store: Store,
    pub(crate) _etcd: Option<Etcd>,
    pub(crate) _dir: tempfile::TempDir,
}

pub(crate) fn store_env(kind: &str) -> StoreEnv {
    let dir = tempfile::tempdir().unwrap();
    match kind {
        "etcd" => {
            let etcd = Etcd::start();
            StoreEnv {
                name: "etcd",
                store: Store::Etcd(etcd.endpoint()),
                _etcd: Some(etcd),
                _dir: dir,
            }
        }
        _ => StoreEnv {
            name: "embedded",
            store: Store::Local(dir.path().join("store.redb")),
            _etcd: None,
            _dir: dir,
        },
    }
}
