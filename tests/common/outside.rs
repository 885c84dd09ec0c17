//! Peers outside Docker for end-to-end tests: [`Outside`], a network namespace joined to the
//! host by a veth pair with an HTTP server in it (the "internet" a container's NAT-outgoing
//! traffic reaches), and [`UdpEcho`], a UDP echo server in any namespace, with [`udp_ask`]
//! its client. Needs root; hold the host lock ([`super::docker::lock`]).

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::host::{run as host, run_ok as host_ok, spawn_logged, stop_child, PATH};
use super::netns;

/// Port of the outside HTTP server (in its own namespace: cannot clash with the host).
pub const OUTSIDE_PORT: u16 = 8080;

/// A network namespace `cln-out-<pid>` joined to the host by veth `clnout<pid>`
/// (10.250.X.1/24 on the host, 10.250.X.2/24 inside), running `python3 -m http.server`.
/// Everything is removed on drop, by PID and by name.
pub struct Outside {
    /// The namespace's name (`ip netns`).
    pub ns: String,
    host_if: String,
    /// The third octet X.
    x: u8,
    server: Option<Child>,
    dir: tempfile::TempDir,
}

pub const NS_PREFIX: &str = "cln-out-";
const IF_PREFIX: &str = "clnout";

/// Deletes namespaces and veths of earlier runs whose process is gone (we hold the lock).
fn sweep_leftovers() {
    let (_, list) = host("ip", &["netns", "list"]);
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_err() || std::path::Path::new("/proc").join(pid).exists() {
            continue;
        }
        eprintln!("deleting leftover namespace {name}");
        let _ = host("ip", &["netns", "del", name]);
        let _ = host("ip", &["link", "del", &format!("{IF_PREFIX}{pid}")]);
    }
}

/// A third octet X such that nothing on the host uses 10.250.X.0/24.
fn free_octet() -> u8 {
    let (_, addrs) = host("ip", &["-4", "-o", "addr", "show"]);
    let (_, routes) = host("ip", &["-4", "route", "show", "table", "all"]);
    let start = (std::process::id() % 200) as u8;
    (0..200u8)
        .map(|i| 20 + (start + i) % 200)
        .find(|x| {
            let net = format!("10.250.{x}.");
            !addrs.contains(&net) && !routes.contains(&net) && !routes.contains("10.250.0.0/16")
        })
        .expect("no free 10.250.X.0/24 on this host")
}

impl Outside {
    pub fn start() -> Outside {
        sweep_leftovers();
        let pid = std::process::id();
        let mut o = Outside {
            ns: format!("{NS_PREFIX}{pid}"),
            host_if: format!("{IF_PREFIX}{pid}"),
            x: free_octet(),
            server: None,
            dir: tempfile::Builder::new()
                .prefix("cln-out-")
                .tempdir_in("/tmp")
                .expect("outside temp dir"),
        };
        let (ns, hif) = (o.ns.clone(), o.host_if.clone());
        host_ok("ip", &["netns", "add", &ns]);
        host_ok(
            "ip",
            &[
                "link", "add", &hif, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        );
        host_ok(
            "ip",
            &["addr", "add", &format!("{}/24", o.host_addr()), "dev", &hif],
        );
        host_ok("ip", &["link", "set", &hif, "up"]);
        host_ok(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", o.addr()),
                "dev",
                "eth0",
            ],
        );
        host_ok("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        host_ok("ip", &["-n", &ns, "link", "set", "lo", "up"]);

        std::fs::write(o.dir.path().join("index.html"), "outside-ok\n").unwrap();
        let mut cmd = Command::new("/usr/sbin/ip");
        cmd.args([
            "netns",
            "exec",
            &ns,
            "/usr/bin/python3",
            "-u",
            "-m",
            "http.server",
        ])
        .arg(OUTSIDE_PORT.to_string())
        .args(["--bind", &o.addr(), "--directory"])
        .arg(o.dir.path())
        .env_clear()
        .env("PATH", PATH);
        // `ip netns exec` execs python in place: this PID is the server's.
        o.server = Some(spawn_logged(
            cmd,
            &o.log_path(),
            libc::SIGKILL,
            "python3 http.server",
        ));
        // Ready when it accepts a connection (a bare connect logs no request).
        let sa: SocketAddr = format!("{}:{OUTSIDE_PORT}", o.addr()).parse().unwrap();
        super::wait_until("http.server listening", Duration::from_secs(15), || {
            if let Some(Ok(Some(s))) = o.server.as_mut().map(|c| c.try_wait()) {
                panic!("http.server exited ({s}): {}", o.log());
            }
            TcpStream::connect_timeout(&sa, Duration::from_millis(200))
                .map_err(|e| format!("{sa}: {e}: {}", o.log()))
        });
        o
    }

    /// The host's address on the veth.
    pub fn host_addr(&self) -> String {
        format!("10.250.{}.1", self.x)
    }

    /// The outside namespace's (and the server's) address.
    pub fn addr(&self) -> String {
        format!("10.250.{}.2", self.x)
    }

    pub fn url(&self, tag: &str) -> String {
        format!("http://{}:{OUTSIDE_PORT}/?from={tag}", self.addr())
    }

    pub fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The client address the server logged for the request tagged `tag`.
    pub fn client_of(&self, tag: &str) -> String {
        let needle = format!("GET /?from={tag} ");
        let log = self.log();
        log.lines()
            .find(|l| l.contains(&needle))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no request {tag:?} in the server log:\n{log}"))
            .to_string()
    }

    /// Runs a command in the outside namespace.
    pub fn exec(&self, args: &[&str]) -> (bool, String) {
        let mut a = vec!["netns", "exec", &self.ns];
        a.extend_from_slice(args);
        host("ip", &a)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            stop_child(&mut c, libc::SIGTERM, Duration::from_secs(5));
        }
        if std::thread::panicking() {
            eprintln!("----- outside server log -----\n{}\n-----", self.log());
        }
        let _ = host("ip", &["netns", "del", &self.ns]);
        if std::path::Path::new("/sys/class/net")
            .join(&self.host_if)
            .exists()
        {
            let _ = host("ip", &["link", "del", &self.host_if]);
        }
    }
}

/// A UDP echo server on 0.0.0.0:`port` in a network namespace: answers `echo <payload>`
/// and records every sender. Stops on drop.
pub struct UdpEcho {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    pub fn start(ns: &str, port: u16) -> UdpEcho {
        let sock = netns::enter(ns, move || UdpSocket::bind(("0.0.0.0", port)))
            .unwrap_or_else(|e| panic!("bind udp :{port} in {ns}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (st, se) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    se.lock().unwrap().push(from);
                    let mut reply = b"echo ".to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        UdpEcho {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    pub fn senders(&self) -> Vec<SocketAddr> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `msg` over UDP to `to` from namespace `ns` (None: the host's) and returns the
/// answer; retries for a few seconds, as a datagram may be lost while rules settle.
pub fn udp_ask(ns: Option<&str>, to: &str, msg: &str) -> Result<String, String> {
    let bind = || UdpSocket::bind("0.0.0.0:0");
    let sock = match ns {
        Some(ns) => netns::enter(ns, bind),
        None => bind(),
    }
    .map_err(|e| format!("bind udp client: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 1500];
    loop {
        sock.send_to(msg.as_bytes(), to)
            .map_err(|e| format!("send to {to}: {e}"))?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("no answer from {to}: {e}"))
            }
            Err(_) => {}
        }
    }
}
