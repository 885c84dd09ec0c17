//! Several Docker hosts on one etcd cluster, as network namespaces of this machine:
//! [`Fleet`], made by [`Fleet::builder`].
//!
//! ```text
//!            router namespace (forwarding on)
//!     seg-a 10.N.1.1/24 (bridge)      seg-b 10.N.2.1/24 (bridge)
//!        |               |                  |
//!   h1 10.N.1.11     h2 10.N.1.12      h3 10.N.2.13
//! ```
//!
//! IPv6 likewise: segment `i` is `fd0a:N:i::/64` (router `::1`, host `::<last octet>`), with
//! IPv6 forwarding on in the router and the hosts and ip6tables `FORWARD` at `DROP` (as
//! Docker 28, whose ip6tables is on by default, leaves it).
//!
//! h1 and h2 share one L2 segment; h3 is on another subnet, reached through the router (so
//! a pool's `CrossSubnet` matters). Every host's default route goes via the router; the
//! underlay MTU is 1500. `N` is the first of 210..=219 whose `10.N.0.0/16` meets none of the
//! host's routes. Each host namespace has `ip_forward` on and iptables `FORWARD` at `DROP`, as
//! a Docker host has them, and runs:
//! - a member of one three-member etcd cluster ([`super::etcd::EtcdCluster`]) on its
//!   address (`http://10.N.x.y:2379`, peers on 2380);
//! - the plugin ([`super::plugin::Plugin::start_in_netns`]) with `NODENAME=h1` (`h2`, `h3`),
//!   `ETCD_ENDPOINTS` listing the three members, its own socket `<dir>/h1/plugins/calico.sock`
//!   and its own log;
//! - with [`FleetBuilder::dockerd`], a dockerd of its own ([`super::docker::Dockerd`] with
//!   [`super::docker::DockerdOptions`]) in the host's namespace (`--bridge=none`) and in a
//!   mount namespace of its own where `/run/docker/plugins` is `<dir>/h1/plugins`: it sees
//!   its host's `calico` plugin and no other; the busybox image is imported into each.
//!
//! The plugins route between the hosts (`CALICO_LIBNETWORK_ROUTES` is `auto`: on with etcd).
//!
//! Names are unique per fleet (`clf<PID>x<k>-h1`, `-r` for the router), so tests and test
//! processes may run fleets side by side; a fleet without dockerd needs no host lock, one
//! with dockerd takes it ([`super::docker::lock`]). Everything is stopped by PID and removed
//! by name on drop, also after a panic: dockerds (containers removed while the plugins still
//! answer), plugins, etcd, then the namespaces (their veths and bridges go with them).
//! Namespaces of an earlier test process that was killed are deleted by the next fleet.
//! Processes get PR_SET_PDEATHSIG: start a fleet on the test's own thread.
//!
//! Needs root: [`FleetBuilder::start_if_root`].

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::Value;

use super::docker::{self, Dockerd, DockerdOptions, HostLock, HostRestore};
use super::etcd::{EtcdCluster, MemberSpec};
use super::host::{run as host_run, run_ok as host_ok, run_with_timeout, PATH};
use super::plugin::{self, Plugin};

/// Prefix of every fleet namespace: `clf<PID>x<k>-<host>`.
pub const NS_PREFIX: &str = "clf";
/// etcd's client and peer ports (each member in a namespace of its own).
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
/// The underlay MTU.
pub const MTU: u16 = 1500;
/// Deadline of one command run in a host ([`Host::exec`]).
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// The hosts: name (also the node name), segment (0: `seg-a`, 1: `seg-b`), last octet.
const HOSTS: [(&str, u8, u8); 3] = [("h1", 0, 11), ("h2", 0, 12), ("h3", 1, 13)];
/// The router's bridges, one per segment, with the router's address `.1` on each.
const SEGMENTS: [&str; 2] = ["seg-a", "seg-b"];

/// Options of a [`Fleet`]; [`FleetBuilder::start`] starts it.
#[must_use]
pub struct FleetBuilder {
    dockerd: bool,
    plugin_env: Vec<(String, String)>,
    caller_holds_lock: bool,
}

impl FleetBuilder {
    /// A dockerd per host (with the busybox image), for end-to-end cases. Takes the host
    /// lock for the fleet's life.
    pub fn dockerd(mut self) -> Self {
        self.dockerd = true;
        self
    }

    /// The caller holds the host lock (to compare the host before and after the fleet):
    /// the fleet takes none.
    pub fn under_lock(mut self, _held: &HostLock) -> Self {
        self.caller_holds_lock = true;
        self
    }

    /// An environment variable of every host's plugin, on top of the fleet's.
    pub fn plugin_env(mut self, key: &str, value: &str) -> Self {
        self.plugin_env.push((key.to_string(), value.to_string()));
        self
    }

    /// [`Self::start`] when we are root; `None` (after saying loudly that `test` is skipped,
    /// or panicking: see [`super::require_root`]) when not.
    pub fn start_if_root(self, test: &str) -> Option<Fleet> {
        super::require_root(test).then(|| self.start())
    }

    /// Makes the namespaces, starts the etcd cluster, the dockerds (if asked, with busybox)
    /// and the plugins, and waits until every plugin answers `Plugin.Activate`.
    pub fn start(self) -> Fleet {
        let t0 = Instant::now();
        // Built in this order, dropped in the reverse (also when a step panics).
        let lock = (self.dockerd && !self.caller_holds_lock).then(docker::lock);
        let restore = self.dockerd.then(HostRestore::take);
        let net = Underlay::create();
        let dir = tempfile::Builder::new()
            .prefix("cln-fleet-")
            .tempdir_in("/tmp")
            .expect("fleet temp dir");
        let etcd = EtcdCluster::start(
            net.hosts
                .iter()
                .map(|h| MemberSpec {
                    name: h.name.clone(),
                    netns: Some(netns_path(&h.ns)),
                    addr: h.addr.into(),
                    client_port: ETCD_CLIENT_PORT,
                    peer_port: ETCD_PEER_PORT,
                })
                .collect(),
        );
        let t_etcd = t0.elapsed();
        let mut hosts = Vec::new();
        for h in &net.hosts {
            let plugins_dir = dir.path().join(&h.name).join("plugins");
            std::fs::create_dir_all(&plugins_dir).unwrap();
            let docker = self.dockerd.then(|| {
                let mut d = Dockerd::start_opts(DockerdOptions {
                    // No nameserver in the pools' way (dockerd checks pools against it).
                    resolv_conf: Some(format!("nameserver {}\n", h.gateway)),
                    netns: Some(netns_path(&h.ns)),
                    plugins_dir: Some(plugins_dir.clone()),
                });
                d.import_busybox();
                d
            });
            let docker_host = docker.as_ref().map_or_else(
                || "unix:///nonexistent/calico-libnetwork-test/docker.sock".to_string(),
                Dockerd::host,
            );
            let endpoints = etcd.endpoints_var();
            let mut env: Vec<(&str, &str)> = vec![
                ("DATASTORE_TYPE", "etcdv3"),
                ("ETCD_ENDPOINTS", &endpoints),
                ("NODENAME", &h.name),
                ("CALICO_LIBNETWORK_DOCKER_HOST", &docker_host),
            ];
            env.extend(
                self.plugin_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
            let socket = plugins_dir.join("calico.sock");
            let plugin = Plugin::start_in_netns(&netns_path(&h.ns), &socket, &env);
            hosts.push(Host {
                docker,
                plugin,
                net: h.clone(),
                plugins_dir,
            });
        }
        eprintln!(
            "fleet {} on {}: etcd cluster up in {t_etcd:?}, all up in {:?}",
            net.id,
            net.block,
            t0.elapsed()
        );
        Fleet {
            hosts,
            etcd,
            _restore: restore,
            net,
            dir,
            _lock: lock,
        }
    }
}

/// Three hosts, a router and one etcd cluster (see the module documentation).
///
/// Dropped in field order: the hosts (each its dockerd, then its plugin), the etcd cluster,
/// the host files dockerd created, the namespaces, the temp dir, the lock.
pub struct Fleet {
    pub hosts: Vec<Host>,
    pub etcd: EtcdCluster,
    _restore: Option<HostRestore>,
    net: Underlay,
    pub dir: tempfile::TempDir,
    _lock: Option<HostLock>,
}

impl Fleet {
    /// Options, starting from: no dockerd, the plugins with the fleet's settings only.
    pub fn builder() -> FleetBuilder {
        FleetBuilder {
            dockerd: false,
            plugin_env: Vec::new(),
            caller_holds_lock: false,
        }
    }

    /// The host named `name` (`h1`, `h2`, `h3`).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name() == name)
            .unwrap_or_else(|| panic!("no host {name} in the fleet"))
    }

    /// [`Self::host`], to restart or kill its plugin or dockerd.
    pub fn host_mut(&mut self, name: &str) -> &mut Host {
        self.hosts
            .iter_mut()
            .find(|h| h.name() == name)
            .unwrap_or_else(|| panic!("no host {name} in the fleet"))
    }

    /// This fleet's unique tag (`clf<PID>x<k>`), the prefix of its namespaces.
    pub fn id(&self) -> &str {
        &self.net.id
    }

    /// The router's namespace name.
    pub fn router_ns(&self) -> &str {
        &self.net.router
    }

    /// The `/16` the underlay uses (`10.N.0.0/16`).
    pub fn block(&self) -> Ipv4Net {
        self.net.block
    }

    /// The subnet of segment `i` (0: `seg-a` with h1 and h2, 1: `seg-b` with h3).
    pub fn segment(&self, i: u8) -> Ipv4Net {
        segment_net(self.net.block, i)
    }

    /// Runs `prog args...` in the router's namespace: (success, stdout+stderr).
    pub fn router_exec(&self, prog: &str, args: &[&str]) -> (bool, String) {
        exec_in(&self.net.router, prog, args)
    }

    /// Every key under `prefix` in etcd, its value parsed as JSON (read from inside a host
    /// namespace, through the running members).
    pub fn list(&self, prefix: &str) -> Vec<(String, Value)> {
        self.etcd.list_json(prefix)
    }

    /// The value of `key` in etcd parsed as JSON, if it exists.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.etcd.get_json(key)
    }

    /// Kills etcd member `i` (the host `hosts[i]`'s; member 0 is the first of every plugin's
    /// `ETCD_ENDPOINTS`) and checks that the kill hit: its process is gone and its URL
    /// refuses connections from the next host; then waits (at most 15 s) until the next
    /// member reports healthy (the two left have a leader: an election when the killed one
    /// led). [`EtcdCluster::restart`] brings it back.
    pub fn kill_etcd_member(&mut self, i: usize) {
        let name = self.hosts[i].name().to_string();
        let pid = self
            .etcd
            .pid(i)
            .unwrap_or_else(|| panic!("member {name} not running"));
        self.etcd.kill(i);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "etcd member {name} (pid {pid}) still there"
        );
        let next = &self.hosts[(i + 1) % self.hosts.len()];
        let url = format!("{}/health", self.etcd.endpoints()[i]);
        let (ok, out) = next.exec("curl", &["-sS", "-m", "2", &url]);
        assert!(!ok, "member {name} still answers after the kill: {out}");
        // Positive control: the next host's own member answers the same way.
        let url = format!(
            "{}/health",
            self.etcd.endpoints()[(i + 1) % self.hosts.len()]
        );
        let t = Instant::now();
        super::wait_until(
            &format!("member {} healthy", next.name()),
            Duration::from_secs(15),
            || {
                let out = next.exec_ok("curl", &["-sS", "-m", "2", &url]);
                if out.contains(r#""health":"true""#) {
                    Ok(())
                } else {
                    Err(out)
                }
            },
        );
        eprintln!(
            "etcd member {name} killed; {} healthy after {:?}",
            next.name(),
            t.elapsed()
        );
    }

    /// What the fleet made on this machine, to check that it is gone after drop.
    pub fn footprint(&self) -> Footprint {
        let mut pids = Vec::new();
        for i in 0..self.etcd.len() {
            pids.extend(self.etcd.pid(i));
        }
        for h in &self.hosts {
            pids.extend(h.plugin.pid());
            pids.extend(h.docker.as_ref().and_then(Dockerd::pid));
        }
        let mut paths = vec![self.dir.path().to_path_buf(), self.etcd.dir.path().into()];
        for h in &self.hosts {
            paths.push(h.plugin.dir.path().into());
            paths.extend(h.docker.as_ref().map(|d| d.dir.path().to_path_buf()));
        }
        let namespaces = self.net.all_ns();
        let ns_inodes = namespaces
            .iter()
            .map(|n| {
                std::fs::metadata(netns_path(n))
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                    .unwrap_or_else(|e| panic!("stat namespace {n}: {e}"))
            })
            .collect();
        Footprint {
            namespaces,
            ns_inodes,
            pids,
            paths,
        }
    }
}

/// Namespaces, processes and directories of a [`Fleet`] ([`Fleet::footprint`]).
#[derive(Debug)]
pub struct Footprint {
    pub namespaces: Vec<String>,
    /// Their inodes: a process still in one (`/proc/PID/ns/net`) keeps it alive.
    pub ns_inodes: Vec<u64>,
    pub pids: Vec<u32>,
    pub paths: Vec<PathBuf>,
}

impl Footprint {
    /// What of it is still there: named namespaces, processes (in any state but gone),
    /// processes in one of its namespaces, paths. Empty when all is gone.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let listed = host_ok("ip", &["netns", "list"]);
        for n in &self.namespaces {
            if listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(n))
            {
                left.push(format!("namespace {n}"));
            }
        }
        for p in &self.pids {
            if Path::new(&format!("/proc/{p}")).exists() {
                left.push(format!("process {p}"));
            }
        }
        let inodes: Vec<String> = self
            .ns_inodes
            .iter()
            .map(|i| format!("net:[{i}]"))
            .collect();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                if let Ok(link) = std::fs::read_link(e.path().join("ns/net")) {
                    let link = link.display().to_string();
                    if inodes.contains(&link) {
                        left.push(format!(
                            "process {} in a fleet namespace ({link})",
                            e.file_name().to_string_lossy()
                        ));
                    }
                }
            }
        }
        for p in &self.paths {
            if p.exists() {
                left.push(format!("path {}", p.display()));
            }
        }
        left
    }
}

/// One host of a [`Fleet`]: its namespace and address, its plugin and (optionally) its
/// dockerd. Dropped in field order: dockerd (its containers removed while the plugin
/// answers), then the plugin.
pub struct Host {
    pub docker: Option<Dockerd>,
    pub plugin: Plugin,
    net: HostNet,
    plugins_dir: PathBuf,
}

impl Host {
    /// Its name: the node name its plugin runs as.
    pub fn name(&self) -> &str {
        &self.net.name
    }

    /// Its network namespace's name (`ip netns`).
    pub fn ns(&self) -> &str {
        &self.net.ns
    }

    /// `/run/netns/<ns>`.
    pub fn ns_path(&self) -> String {
        netns_path(&self.net.ns)
    }

    /// Its underlay address (on `eth0`).
    pub fn addr(&self) -> Ipv4Addr {
        self.net.addr
    }

    /// Its IPv6 address on the underlay (`fd0a:N:1::11`).
    pub fn addr6(&self) -> Ipv6Addr {
        segment_addr6(self.net.addr)
    }

    /// Its address with the segment's prefix length (`10.N.1.11/24`).
    pub fn addr_net(&self) -> Ipv4Net {
        Ipv4Net::new(self.net.addr, 24).unwrap()
    }

    /// The router's address on its segment (its default gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        self.net.gateway
    }

    /// Its plugin's socket.
    pub fn socket(&self) -> &Path {
        self.plugin.socket()
    }

    /// The directory its dockerd sees as `/run/docker/plugins`.
    pub fn plugins_dir(&self) -> &Path {
        &self.plugins_dir
    }

    /// Its dockerd (panics for a fleet built without [`FleetBuilder::dockerd`]).
    pub fn d(&self) -> &Dockerd {
        self.docker
            .as_ref()
            .expect("this fleet has no dockerd: Fleet::builder().dockerd()")
    }

    /// One call to its plugin (Docker's way: POST over the socket); status and JSON body.
    pub fn call(&self, method: &str, body: &Value) -> (u16, Value) {
        let (status, text) = plugin::call(self.socket(), method, &body.to_string())
            .unwrap_or_else(|e| panic!("{}: {method}: {e}", self.name()));
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {method}: not JSON ({e}): {text}", self.name()));
        (status, v)
    }

    /// [`Self::call`], asserting success (200, no `Err`); the body.
    pub fn call_ok(&self, method: &str, body: &Value) -> Value {
        let (status, v) = self.call(method, body);
        assert!(
            status == 200 && v.get("Err").is_none(),
            "{}: {method} {body} -> {status} {v}",
            self.name()
        );
        v
    }

    /// Runs `prog args...` in its network namespace (30 s at most): (success,
    /// stdout+stderr).
    pub fn exec(&self, prog: &str, args: &[&str]) -> (bool, String) {
        exec_in(&self.net.ns, prog, args)
    }

    /// [`Self::exec`], panicking with the output when it fails; stdout+stderr.
    pub fn exec_ok(&self, prog: &str, args: &[&str]) -> String {
        let (ok, out) = self.exec(prog, args);
        assert!(ok, "{}: {prog} {}: {out}", self.name(), args.join(" "));
        out
    }

    /// One ping from this host's namespace to `to` (2 s deadline): Ok, or its output.
    pub fn ping(&self, to: &str) -> Result<(), String> {
        match self.exec("ping", &["-c", "1", "-W", "2", to]) {
            (true, _) => Ok(()),
            (false, out) => Err(format!("{} -> {to}: {out}", self.name())),
        }
    }
}

/// `/run/netns/<name>`.
pub fn netns_path(name: &str) -> String {
    format!("/run/netns/{name}")
}

/// Runs `prog args...` (Debian's PATH) in namespace `ns`, entered between fork and exec.
fn exec_in(ns: &str, prog: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(prog);
    cmd.args(args).env_clear().env("PATH", PATH);
    super::netns::command_in(&mut cmd, &netns_path(ns));
    match run_with_timeout(cmd, None, EXEC_TIMEOUT) {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e),
    }
}

fn exec_in_ok(ns: &str, prog: &str, args: &[&str]) -> String {
    let (ok, out) = exec_in(ns, prog, args);
    assert!(ok, "in {ns}: {prog} {}: {out}", args.join(" "));
    out
}

fn segment_net(block: Ipv4Net, i: u8) -> Ipv4Net {
    let o = block.addr().octets();
    Ipv4Net::new(Ipv4Addr::new(o[0], o[1], i + 1, 0), 24).unwrap()
}

/// The IPv6 twin of an underlay address: `10.N.s.l` is `fd0a:N:s::l` (in hex digits the
/// decimal figures read the same: `fd0a:210:1::11`).
fn segment_addr6(v4: Ipv4Addr) -> Ipv6Addr {
    let o = v4.octets();
    format!("fd0a:{}:{}::{}", o[1], o[2], o[3]).parse().unwrap()
}

fn segment_addr(block: Ipv4Net, i: u8, last: u8) -> Ipv4Addr {
    let o = segment_net(block, i).addr().octets();
    Ipv4Addr::new(o[0], o[1], o[2], last)
}

/// A host's place on the underlay.
#[derive(Clone, Debug)]
struct HostNet {
    name: String,
    ns: String,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
}

/// The namespaces, bridges and veths; every namespace deleted on drop.
struct Underlay {
    id: String,
    block: Ipv4Net,
    router: String,
    hosts: Vec<HostNet>,
    /// Namespaces made so far (deleted on drop, also when creation stops half-way).
    made: Vec<String>,
}

impl Underlay {
    fn create() -> Underlay {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        sweep_leftovers();
        let id = format!(
            "{NS_PREFIX}{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let block = free_block();
        let mut u = Underlay {
            router: format!("{id}-r"),
            hosts: HOSTS
                .iter()
                .map(|&(name, seg, last)| HostNet {
                    name: name.to_string(),
                    ns: format!("{id}-{name}"),
                    addr: segment_addr(block, seg, last),
                    gateway: segment_addr(block, seg, 1),
                })
                .collect(),
            id,
            block,
            made: Vec::new(),
        };
        u.add_ns(&u.router.clone());
        let r = u.router.clone();
        host_ok("ip", &["-n", &r, "link", "set", "lo", "up"]);
        exec_in_ok(&r, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        exec_in_ok(&r, "sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
        for (i, seg) in SEGMENTS.iter().enumerate() {
            let gw = Ipv4Net::new(segment_addr(block, i as u8, 1), 24).unwrap();
            let gw6 = format!("{}/64", segment_addr6(gw.addr()));
            let mtu = MTU.to_string();
            host_ok(
                "ip",
                &["-n", &r, "link", "add", seg, "mtu", &mtu, "type", "bridge"],
            );
            host_ok(
                "ip",
                &["-n", &r, "addr", "add", &gw.to_string(), "dev", seg],
            );
            // nodad: usable at once, not after duplicate address detection's second.
            host_ok("ip", &["-n", &r, "addr", "add", &gw6, "dev", seg, "nodad"]);
            host_ok("ip", &["-n", &r, "link", "set", seg, "up"]);
        }
        for (h, &(_, seg, _)) in u.hosts.clone().iter().zip(HOSTS.iter()) {
            u.add_ns(&h.ns);
            let mtu = MTU.to_string();
            // The router's end is named after the host; the host's is eth0.
            host_ok(
                "ip",
                &[
                    "-n", &r, "link", "add", &h.name, "mtu", &mtu, "type", "veth", "peer", "name",
                    "eth0", "mtu", &mtu, "netns", &h.ns,
                ],
            );
            host_ok(
                "ip",
                &[
                    "-n",
                    &r,
                    "link",
                    "set",
                    &h.name,
                    "master",
                    SEGMENTS[seg as usize],
                    "up",
                ],
            );
            let addr = Ipv4Net::new(h.addr, 24).unwrap().to_string();
            let gw = h.gateway.to_string();
            let addr6 = format!("{}/64", segment_addr6(h.addr));
            let gw6 = segment_addr6(h.gateway).to_string();
            for args in [
                &["link", "set", "lo", "up"][..],
                &["addr", "add", &addr, "dev", "eth0"],
                &["-6", "addr", "add", &addr6, "dev", "eth0", "nodad"],
                &["link", "set", "eth0", "up"],
                &["route", "add", "default", "via", &gw],
                &["-6", "route", "add", "default", "via", &gw6],
            ] {
                let mut a = vec!["-n", h.ns.as_str()];
                a.extend_from_slice(args);
                host_ok("ip", &a);
            }
            // As on a Docker host: forwarding on, FORWARD dropped unless a rule accepts.
            exec_in_ok(&h.ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
            exec_in_ok(&h.ns, "iptables", &["-w", "-P", "FORWARD", "DROP"]);
            exec_in_ok(&h.ns, "sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
            exec_in_ok(&h.ns, "ip6tables", &["-w", "-P", "FORWARD", "DROP"]);
        }
        u
    }

    fn add_ns(&mut self, name: &str) {
        host_ok("ip", &["netns", "add", name]);
        self.made.push(name.to_string());
    }

    /// The router's and the hosts' namespace names.
    fn all_ns(&self) -> Vec<String> {
        let mut v = vec![self.router.clone()];
        v.extend(self.hosts.iter().map(|h| h.ns.clone()));
        v
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        for n in self.made.iter().rev() {
            let (ok, out) = host_run("ip", &["netns", "del", n]);
            if !ok {
                eprintln!("ip netns del {n}: {}", out.trim());
            }
        }
    }
}

/// Deletes fleet namespaces of test processes that are gone (killed before their drop).
fn sweep_leftovers() {
    let (_, list) = host_run("ip", &["netns", "list"]);
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("deleting namespace {name} left by test process {pid}");
        let _ = host_run("ip", &["netns", "del", name]);
    }
}

/// The first `10.N.0.0/16` (N in 210..=219) that meets none of the host's routes (any
/// table; the default route aside), so that the fleet's addresses are nowhere else on this
/// machine.
fn free_block() -> Ipv4Net {
    let routes = host_ok("ip", &["-4", "route", "show", "table", "all"]);
    let taken: Vec<Ipv4Net> = routes
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let mut first = w.next()?;
            if matches!(
                first,
                "local" | "broadcast" | "unicast" | "blackhole" | "unreachable" | "prohibit"
            ) {
                first = w.next()?;
            }
            if first == "default" {
                return None;
            }
            first
                .parse::<Ipv4Net>()
                .ok()
                .or_else(|| first.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
        })
        .collect();
    (210..=219u8)
        .map(|n| Ipv4Net::new(Ipv4Addr::new(10, n, 0, 0), 16).unwrap())
        .find(|b| !taken.iter().any(|t| t.contains(b) || b.contains(t)))
        .unwrap_or_else(|| panic!("10.210.0.0/16 to 10.219.0.0/16 all meet a route:\n{routes}"))
}
