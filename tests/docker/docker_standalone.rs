//! Standalone mode end to end: the plugin's own firewall rules on a Docker host with
//! Docker's default firewall settings (FORWARD policy DROP) and no Felix, so the default
//! dataplane mode `auto` chooses `standalone`. Our own dockerd (Debian's 20.10), a real etcd
//! and the real `calico-libnetwork` binary, pointed at our dockerd so that network names
//! (and so the profiles named after them) are learned as on a user's host.
//!
//! Covered: forwarding despite the DROP policy; isolation between networks (profiles) and a
//! container on two networks; NAT outgoing on and off, seen by a server in an "outside"
//! network namespace; published TCP and UDP ports from outside and from the host via
//! 127.0.0.1; rules removed with their container; plugin restarts leave the rule set
//! identical; `felix` mode keeps only the port NAT.
//!
//! Needs root. Holds the host lock for the whole test.

use crate::common;

use common::WEPS_PREFIX;

use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use calico_libnetwork::datastore::Datastore;
use common::docker::Dockerd;
use common::firewall;
use common::host::{run as host, run_ok as host_ok};
use common::netns;
use common::outside::{udp_ask, Outside, UdpEcho, NS_PREFIX};
use common::plugin::DockerEnv;
use common::wait_until;
use serde_json::Value;

/// Host port published by the web container.
const WEB_PORT: &str = "18080";
/// Host port published over UDP, and the container port behind it.
const UDP_PORT: u16 = 18053;
const UDP_INNER: u16 = 5353;

// ---------------------------------------------------------------------------------------------
// The Docker setup.

/// Root (or `None`: skipped, loudly), then etcd, dockerd, the plugin (pointed at that
/// dockerd, with `plugin_env`), busybox and FORWARD at DROP. A test that needs the outside
/// namespace starts an [`Outside`] after this, so that it goes first.
fn start(test: &str, plugin_env: &[(&str, &str)]) -> Option<DockerEnv> {
    DockerEnv::builder()
        .etcd()
        .docker_api()
        .busybox()
        .forward_drop()
        .plugin_envs(plugin_env)
        .start_if_root(test)
}

/// [`start`], with the plugin checking its rules every `interval`.
fn start_checking_rules_every(test: &str, interval: &str) -> Option<DockerEnv> {
    start(
        test,
        &[("CALICO_LIBNETWORK_RULES_CHECK_INTERVAL", interval)],
    )
}

/// `docker run -d --name name --net net extra...` of busybox's httpd answering `body`
/// on port 80.
fn httpd(env: &DockerEnv, name: &str, net: &str, extra: &[&str], body: &str) {
    let script =
        format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www");
    let mut args = vec!["run", "-d", "--name", name, "--net", net];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[env.image(), "sh", "-c", &script]);
    env.d().docker_ok(&args);
}

/// The profiles of the WorkloadEndpoint of `a`, from etcd.
fn wep_profiles(env: &DockerEnv, a: &Attachment) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kvs = rt
        .block_on(env.etcd().store().list(WEPS_PREFIX))
        .unwrap_or_else(|e| panic!("list {WEPS_PREFIX}: {e}"));
    kvs.iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .find(|w| w["spec"]["endpoint"] == a.endpoint_id.as_str())
        .map(|w| {
            w["spec"]["profiles"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_else(|| panic!("no WorkloadEndpoint for {}", a.endpoint_id))
}

fn network_id(env: &DockerEnv, name: &str) -> String {
    env.d()
        .docker_ok(&["network", "inspect", "-f", "{{.Id}}", name])
}

fn exec(env: &DockerEnv, c: &str, args: &[&str]) -> std::process::Output {
    let mut a = vec!["exec", c];
    a.extend_from_slice(args);
    env.d().docker(&a)
}

fn ping(env: &DockerEnv, from: &str, to: IpAddr) {
    let out = exec(env, from, &["ping", "-c", "1", "-W", "3", &to.to_string()]);
    assert!(
        out.status.success(),
        "ping {from} -> {to}: {}{}\nroutes in {from}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&exec(env, from, &["ip", "route"]).stdout),
        our_rules("filter").join("\n"),
    );
}

fn no_ping(env: &DockerEnv, from: &str, to: IpAddr) {
    let out = exec(env, from, &["ping", "-c", "1", "-W", "1", &to.to_string()]);
    assert!(
        !out.status.success(),
        "ping {from} -> {to} must fail across networks: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `wget -qO- url` in container `c` (killed after 10 s): success and body or error.
/// (Debian's busybox 1.35 `wget -T` crashes: `timeout` bounds it instead.)
fn wget(env: &DockerEnv, c: &str, url: &str) -> (bool, String) {
    let out = exec(env, c, &["timeout", "10", "wget", "-qO-", url]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `wget -qO- url` on the host with Debian's busybox (killed after 5 s): success and body or
/// error.
fn host_wget(url: &str) -> (bool, String) {
    host("timeout", &["5", "/bin/busybox", "wget", "-qO-", url])
}

/// One container's endpoint on one network.
#[derive(Clone, Debug)]
struct Attachment {
    endpoint_id: String,
    ip: IpAddr,
}

impl Attachment {
    /// The endpoint's `CLN-TW-` chain (named after its host veth).
    fn tw_chain(&self) -> String {
        format!("CLN-TW-{}", &self.endpoint_id[..11])
    }
}

fn attachment(d: &Dockerd, c: &str, net: &str) -> Attachment {
    let out = d.docker_ok(&["inspect", "-f", "{{json .NetworkSettings.Networks}}", c]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{c}: {e}: {out}"));
    let e = &v[net];
    Attachment {
        endpoint_id: e["EndpointID"]
            .as_str()
            .unwrap_or_else(|| panic!("{c} is not on {net}: {out}"))
            .to_string(),
        ip: e["IPAddress"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{c}: no IPv4 address on {net}: {out}")),
    }
}

fn in_net(ip: IpAddr, net: &str) -> bool {
    net.parse::<ipnet::IpNet>().unwrap().contains(&ip)
}

/// The lines of `iptables -t table -S` that belong to the plugin (its chains, rules and jumps).
fn our_rules(table: &str) -> Vec<String> {
    let (ok, out) = host("iptables", &["-w", "-t", table, "-S"]);
    assert!(ok, "iptables -t {table} -S: {out}");
    out.lines()
        .filter(|l| l.contains("CALICO-LIBNETWORK") || l.contains("CLN-"))
        .map(str::to_string)
        .collect()
}

fn count(lines: &[String], want: &str) -> usize {
    lines.iter().filter(|l| l.as_str() == want).count()
}

/// Exactly one of each jump into our chains.
fn assert_one_jump_each(what: &str) {
    let filter = our_rules("filter");
    let nat = our_rules("nat");
    for (lines, want) in [
        (&filter, "-A FORWARD -j CALICO-LIBNETWORK-FORWARD"),
        (&filter, "-A INPUT -j CALICO-LIBNETWORK-INPUT"),
        (
            &nat,
            "-A PREROUTING -m addrtype --dst-type LOCAL -j CALICO-LIBNETWORK-DNAT",
        ),
        (
            &nat,
            "-A OUTPUT -m addrtype --dst-type LOCAL -j CALICO-LIBNETWORK-DNAT",
        ),
        (&nat, "-A POSTROUTING -j CALICO-LIBNETWORK-SNAT"),
    ] {
        assert_eq!(
            count(lines, want),
            1,
            "{what}: want exactly one {want:?} in:\n{}",
            lines.join("\n")
        );
    }
}

fn assert_forward_drop(what: &str) {
    assert_eq!(firewall::forward_policy(), "-P FORWARD DROP", "{what}");
}

#[test]
fn standalone_isolation_nat_ports_restart_and_felix_mode() {
    const T: &str = "standalone_isolation_nat_ports_restart_and_felix_mode";
    let t0 = Instant::now();
    let Some(mut env) = start(T, &[]) else {
        return;
    };
    let outside = Outside::start();
    let lap = |what: &str| eprintln!("{T}: {what} ({:?})", t0.elapsed());
    lap("started");
    assert_forward_drop("at start");
    wait_until(
        "auto mode chooses standalone",
        Duration::from_secs(5),
        || {
            let log = env.plugin.log();
            if log.contains("mode=\"standalone\"") || log.contains("mode=standalone") {
                Ok(())
            } else {
                Err(log)
            }
        },
    );

    // ---- 1. Forwarding on the default pool, despite FORWARD DROP.
    env.network("net1", &[]);
    env.run("c1", &["--net", "net1"]);
    env.run("c2", &["--net", "net1"]);
    let c1 = attachment(env.d(), "c1", "net1");
    let c2 = attachment(env.d(), "c2", "net1");
    assert!(in_net(c1.ip, "192.168.0.0/16"), "c1 got {}", c1.ip);
    ping(&env, "c1", c2.ip);
    ping(&env, "c2", c1.ip);
    assert_forward_drop("after pings on net1");
    lap("net1 pings ok");

    // ---- 1b. A network whose name is learned only at the plugin's next start: its
    // endpoints move from the network-ID profile to the named one in the background, and
    // the rules must follow (an old endpoint and a new one are on one profile).
    let ours = env.d().host();
    env.plugin.set_env(
        "CALICO_LIBNETWORK_DOCKER_HOST",
        "unix:///run/cln-test-no-docker.sock",
    );
    env.plugin.restart();
    env.network("late", &[]);
    env.run("l1", &["--net", "late"]);
    let l1 = attachment(env.d(), "l1", "late");
    assert_eq!(wep_profiles(&env, &l1), vec![network_id(&env, "late")]);
    env.plugin.set_env("CALICO_LIBNETWORK_DOCKER_HOST", &ours);
    env.plugin.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while wep_profiles(&env, &l1) != ["late"] {
        assert!(
            Instant::now() < deadline,
            "l1 not moved to profile late: {:?}",
            wep_profiles(&env, &l1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    env.run("l2", &["--net", "late"]);
    let l2 = attachment(env.d(), "l2", "late");
    ping(&env, "l2", l1.ip);
    ping(&env, "l1", l2.ip);
    env.d().docker_ok(&["rm", "-f", "l1", "l2"]);
    env.d().docker_ok(&["network", "rm", "late"]);
    lap("profile move followed");

    // ---- 2. Two networks are isolated; a container on both reaches both.
    env.network("neta", &["--subnet", "10.86.0.0/24"]);
    env.network("netb", &["--subnet", "10.87.0.0/24"]);
    env.run("a1", &["--net", "neta"]);
    env.run("a2", &["--net", "neta"]);
    env.run("b1", &["--net", "netb"]);
    let a1 = attachment(env.d(), "a1", "neta");
    let a2 = attachment(env.d(), "a2", "neta");
    let b1 = attachment(env.d(), "b1", "netb");
    assert!(in_net(a1.ip, "10.86.0.0/24") && in_net(b1.ip, "10.87.0.0/24"));
    ping(&env, "a1", a2.ip);
    no_ping(&env, "a1", b1.ip);
    no_ping(&env, "b1", a1.ip);
    // net1 and neta are isolated too.
    no_ping(&env, "c1", a1.ip);
    env.d().docker_ok(&["network", "connect", "netb", "a1"]);
    let a1b = attachment(env.d(), "a1", "netb");
    assert!(in_net(a1b.ip, "10.87.0.0/24"), "a1 on netb got {}", a1b.ip);
    ping(&env, "a1", a2.ip);
    ping(&env, "a1", b1.ip);
    ping(&env, "b1", a1b.ip);
    // b1 still reaches nothing of neta, not even a1's neta address; a2 not b1.
    no_ping(&env, "b1", a1.ip);
    no_ping(&env, "a2", b1.ip);
    lap("isolation ok");

    // ---- 3. NAT outgoing: the default pool masquerades, a nat-outgoing=false pool does not.
    let o = &outside;
    let (ok, body) = wget(&env, "c1", &o.url("natout"));
    assert!(ok, "c1 -> outside: {body}");
    assert_eq!(body.trim(), "outside-ok");
    assert_eq!(
        o.client_of("natout"),
        o.host_addr(),
        "NAT outgoing: the server must see the host's address, not c1's {}",
        c1.ip
    );
    env.network(
        "natoff",
        &[
            "--subnet",
            "10.84.0.0/24",
            "--ipam-opt",
            "nat-outgoing=false",
        ],
    );
    env.run("q1", &["--net", "natoff"]);
    let q1 = attachment(env.d(), "q1", "natoff");
    host_ok(
        "ip",
        &[
            "-n",
            &o.ns,
            "route",
            "add",
            "10.84.0.0/24",
            "via",
            &o.host_addr(),
        ],
    );
    let (ok, body) = wget(&env, "q1", &o.url("natoff"));
    assert!(ok, "q1 -> outside: {body}");
    assert_eq!(
        o.client_of("natoff"),
        q1.ip.to_string(),
        "no NAT outgoing: the server must see the container's own address"
    );
    lap("NAT outgoing ok");

    // ---- 4. A published port, from outside and from the host via localhost.
    env.d().docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("{WEB_PORT}:80"),
        "--net",
        "net1",
        env.image(),
        "sh",
        "-c",
        "mkdir -p /www && echo hello-calico > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    let web = attachment(env.d(), "web", "net1");
    // httpd listening: from a peer on net1, directly.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, body) = wget(&env, "c2", &format!("http://{}:80/", web.ip));
        if ok && body.trim() == "hello-calico" {
            break;
        }
        assert!(Instant::now() < deadline, "c2 -> web:80: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let url = format!("http://{}:{WEB_PORT}/", o.host_addr());
    let (ok, body) = o.exec(&["timeout", "10", "/bin/busybox", "wget", "-qO-", &url]);
    assert!(
        ok && body.trim() == "hello-calico",
        "outside -> {url}: {body}\nnat:\n{}",
        our_rules("nat").join("\n")
    );
    let local = format!("http://127.0.0.1:{WEB_PORT}/");
    let (ok, body) = host("timeout", &["10", "/bin/busybox", "wget", "-qO-", &local]);
    assert!(
        ok && body.trim() == "hello-calico",
        "host -> {local}: {body}\nnat:\n{}",
        our_rules("nat").join("\n")
    );
    // Not published to containers of other networks beyond the port: b1 cannot reach web.
    no_ping(&env, "b1", web.ip);
    assert_forward_drop("after published ports");
    lap("published port ok");

    // ---- 4b. A published UDP port, from outside and from the host via localhost. Busybox
    // has no UDP server (its `nc` has no `-u`), so the echo runs in the container's network
    // namespace from this process: the datagrams still take the DNAT path into the container.
    env.d().docker_ok(&[
        "run",
        "-d",
        "--name",
        "udp",
        "-p",
        &format!("{UDP_PORT}:{UDP_INNER}/udp"),
        "--net",
        "net1",
        env.image(),
        "sleep",
        "600",
    ]);
    let udp = attachment(env.d(), "udp", "net1");
    let pid = env
        .d()
        .docker_ok(&["inspect", "-f", "{{.State.Pid}}", "udp"])
        .trim()
        .to_string();
    let echo = UdpEcho::start(&format!("/proc/{pid}/ns/net"), UDP_INNER);
    let from_out = udp_ask(
        Some(&format!("/run/netns/{}", o.ns)),
        &format!("{}:{UDP_PORT}", o.host_addr()),
        "udp-outside",
    );
    assert_eq!(
        from_out.as_deref(),
        Ok("echo udp-outside"),
        "outside -> udp {}:{UDP_PORT}\nnat:\n{}",
        o.host_addr(),
        our_rules("nat").join("\n")
    );
    let from_host = udp_ask(None, &format!("127.0.0.1:{UDP_PORT}"), "udp-local");
    assert_eq!(
        from_host.as_deref(),
        Ok("echo udp-local"),
        "host -> udp 127.0.0.1:{UDP_PORT}\nnat:\n{}",
        our_rules("nat").join("\n")
    );
    // The echo saw the outside client's own address (DNAT only) and, for localhost, the host.
    let seen = echo.senders();
    assert!(
        seen.iter().any(|s| s.ip().to_string() == o.addr()),
        "udp echo in {} never saw the outside client {}: {seen:?}",
        udp.ip,
        o.addr()
    );
    env.d().docker_ok(&["rm", "-f", "udp"]);
    drop(echo);
    let dnat = format!("--dport {UDP_PORT} -j DNAT");
    wait_until(
        "the UDP DNAT goes with its container",
        Duration::from_secs(5),
        || {
            let nat = our_rules("nat");
            (!nat.iter().any(|l| l.contains(&dnat)))
                .then_some(())
                .ok_or(nat.join("\n"))
        },
    );
    lap("published UDP port ok");

    // ---- 5. Rules go with their container; restarts leave the rule set as it was.
    let tw = web.tw_chain();
    assert!(
        our_rules("filter").iter().any(|l| l.contains(&tw)),
        "{tw} missing while web runs"
    );
    env.d().docker_ok(&["rm", "-f", "web"]);
    // Removals are applied just after DeleteEndpoint answers.
    let ip_marks = [format!("{}/", web.ip), format!("{}:", web.ip)];
    wait_until(
        "the rules of the removed container go",
        Duration::from_secs(5),
        || {
            for table in ["filter", "nat"] {
                let (_, all) = host("iptables", &["-w", "-t", table, "-S"]);
                if let Some(l) = all
                    .lines()
                    .find(|l| l.contains(&tw) || ip_marks.iter().any(|m| l.contains(m.as_str())))
                {
                    return Err(format!("{table}: rule left: {l}\n{all}"));
                }
            }
            Ok(())
        },
    );
    assert_one_jump_each("before restart");
    let before = (our_rules("filter"), our_rules("nat"));
    for i in 1..=2 {
        env.plugin.restart();
        let after = (our_rules("filter"), our_rules("nat"));
        assert_eq!(
            after.0,
            before.0,
            "filter rules changed by restart {i}:\nbefore:\n{}\nafter:\n{}",
            before.0.join("\n"),
            after.0.join("\n")
        );
        assert_eq!(
            after.1,
            before.1,
            "nat rules changed by restart {i}:\nbefore:\n{}\nafter:\n{}",
            before.1.join("\n"),
            after.1.join("\n")
        );
        assert_one_jump_each(&format!("after restart {i}"));
    }
    // Still working after the restarts.
    ping(&env, "c1", c2.ip);
    no_ping(&env, "a2", b1.ip);
    assert_forward_drop("after restarts");
    lap("removal and restarts ok");

    // ---- 6. felix mode: no filter chain of ours but the loopback guard, and the port NAT.
    env.plugin.set_env("CALICO_LIBNETWORK_DATAPLANE", "felix");
    env.plugin.restart();
    env.d().docker_ok(&[
        "run",
        "-d",
        "--name",
        "fx",
        "-p",
        "18081:80",
        "--net",
        "net1",
        env.image(),
        "sleep",
        "600",
    ]);
    let fx = attachment(env.d(), "fx", "net1");
    // Felix filters; ours is only the loopback guard (Felix does not drop what a workload
    // sends to 127.0.0.0/8 through a route_localnet veth).
    let filter: Vec<String> = our_rules("filter")
        .into_iter()
        .filter(|l| !l.contains("CALICO-LIBNETWORK-INPUT"))
        .collect();
    assert!(
        filter.is_empty(),
        "felix mode: filter rules of ours left:\n{}",
        filter.join("\n")
    );
    assert!(
        our_rules("filter").contains(&"-A INPUT -j CALICO-LIBNETWORK-INPUT".to_string()),
        "felix mode keeps the loopback guard"
    );
    let nat = our_rules("nat");
    let dnat = format!("--dport 18081 -j DNAT --to-destination {}:80", fx.ip);
    assert!(
        nat.iter().any(|l| l.contains(&dnat)),
        "felix mode: no DNAT for fx:\n{}",
        nat.join("\n")
    );
    assert!(
        !nat.iter().any(|l| l.contains("CLN-NAT-OUT")),
        "felix mode: NAT outgoing is Felix's:\n{}",
        nat.join("\n")
    );
    lap("felix mode ok");

    // Containers gone and the plugin stopped: it removed its rules itself (checked before
    // the harness's clean-up, which would hide a leak).
    env.docker.shutdown();
    env.plugin.stop();
    firewall::assert_no_chain();
    // The outside namespace first, as a local declared after the env would go.
    drop(outside);
    drop(env);
    let (_, ns) = host("ip", &["netns", "list"]);
    assert!(
        !ns.contains(&format!("{NS_PREFIX}{}", std::process::id())),
        "outside namespace left: {ns}"
    );
    eprintln!("{T}: total {:?}", t0.elapsed());
}

/// An IPv4 + UDP packet from `src` to `dst`:`port` (UDP checksum 0: none, allowed in IPv4).
fn udp_packet(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let mut sum: u32 = p
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    p[10..12].copy_from_slice(&csum.to_be_bytes());
    let ulen = (8 + payload.len()) as u16;
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&ulen.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// Sends `packet` as a raw frame from the container whose network namespace is `ns`, out of
/// its `eth0` to Calico's gateway MAC `ee:ee:ee:ee:ee:ee`, as a process with CAP_NET_RAW (which
/// Docker grants by default) can: no route of the container is consulted.
fn send_raw_frame(ns: &str, packet: Vec<u8>) {
    netns::enter(ns, move || {
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket/sendto calls on a socket this function owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto));
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
            assert!(ifindex > 0, "no eth0 in the container");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&[0xee; 6]);
            let n = libc::sendto(
                fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(
                n,
                packet.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
            libc::close(fd);
        }
    });
}

/// Host veths have `route_localnet=1` (published ports via localhost need it), which would
/// let a container reach services the host binds to 127.0.0.1 with a hand-made frame
/// (CVE-2020-8558). The plugin's INPUT guard drops those; published ports via localhost
/// still work (`standalone_isolation_nat_ports_restart_and_felix_mode`).
#[test]
fn a_container_cannot_reach_the_hosts_loopback_services() {
    let Some(env) = start("a_container_cannot_reach_the_hosts_loopback_services", &[]) else {
        return;
    };
    env.network("lonet", &[]);
    env.run("lo1", &["--net", "lonet"]);
    let a = attachment(env.d(), "lo1", "lonet");
    let IpAddr::V4(src) = a.ip else {
        panic!("IPv4 expected: {}", a.ip)
    };
    let pid = env
        .d()
        .docker_ok(&["inspect", "-f", "{{.State.Pid}}", "lo1"]);
    let ns = format!("/proc/{}/ns/net", pid.trim());
    // A host service listening on loopback only.
    let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
    listener
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let probe = |msg: &'static [u8]| {
        send_raw_frame(
            &ns,
            udp_packet(src, std::net::Ipv4Addr::LOCALHOST, port, msg),
        );
        let mut buf = [0u8; 64];
        listener
            .recv_from(&mut buf)
            .ok()
            .map(|(n, _)| buf[..n].to_vec())
    };
    assert_eq!(
        probe(b"guarded"),
        None,
        "a container reached 127.0.0.1:{port}"
    );
    // Positive control: without the guard the same frame gets through (the exposure is real
    // and the probe can see it).
    host_ok(
        "iptables",
        &["-w", "-D", "INPUT", "-j", "CALICO-LIBNETWORK-INPUT"],
    );
    assert_eq!(
        probe(b"unguarded").as_deref(),
        Some(&b"unguarded"[..]),
        "the raw frame never arrived even without the guard: the probe proves nothing"
    );
}

/// A plugin restarted while one of this node's WorkloadEndpoints does not decode (a record
/// written by a buggy tool, half an upgrade): it loads the rest one by one, so a container
/// started afterwards gets its rules without taking away the running containers' (before,
/// the failed load left the state empty and the new container's Join rewrote the rule set
/// with its own endpoint alone).
#[test]
fn an_undecodable_record_at_restart_never_takes_running_containers_rules_away() {
    let Some(mut env) = start(
        "an_undecodable_record_at_restart_never_takes_running_containers_rules_away",
        &[],
    ) else {
        return;
    };
    env.network("rbnet", &[]);
    for c in ["rb1", "rb2"] {
        env.run(c, &["--net", "rbnet"]);
    }
    let (a1, a2) = (
        attachment(env.d(), "rb1", "rbnet"),
        attachment(env.d(), "rb2", "rbnet"),
    );
    ping(&env, "rb1", a2.ip);
    env.plugin.stop();
    // One of this node's records, as no version of Calico would write it.
    let bad_key = format!("{WEPS_PREFIX}calico--test--node-libnetwork-libnetwork-broken");
    common::block_on(env.etcd().store().put(
        &bad_key,
        br#"{"kind":"WorkloadEndpoint","spec":{"node":7}}"#.to_vec(),
    ))
    .unwrap();
    env.plugin.restart();
    env.run("rb3", &["--net", "rbnet"]);
    let a3 = attachment(env.d(), "rb3", "rbnet");
    ping(&env, "rb1", a2.ip);
    ping(&env, "rb2", a1.ip);
    ping(&env, "rb3", a1.ip);
    ping(&env, "rb1", a3.ip);
    let filter = our_rules("filter");
    for a in [&a1, &a2, &a3] {
        assert!(
            filter
                .iter()
                .any(|l| l.starts_with(&format!("-N {}", a.tw_chain()))),
            "{}: rules gone:\n{}",
            a.endpoint_id,
            filter.join("\n")
        );
    }
    assert!(
        env.plugin
            .log()
            .contains("skipping a WorkloadEndpoint that does not decode"),
        "the bad record is logged"
    );
    common::block_on(env.etcd().store().delete(&bad_key, None)).unwrap();
}

/// Rules removed behind the plugin's back (a firewall reload, `netfilter-persistent reload`,
/// an administrator's flush) with containers running: within the check interval the plugin
/// notices and writes them again, so connectivity and published ports come back. Only our
/// own chains are touched here (other software's rules on this host are not ours to flush).
#[test]
fn rules_removed_behind_the_plugins_back_come_back() {
    let Some(env) =
        start_checking_rules_every("rules_removed_behind_the_plugins_back_come_back", "2s")
    else {
        return;
    };
    env.network("flnet", &[]);
    env.run("fl1", &["--net", "flnet"]);
    httpd(&env, "flweb", "flnet", &["-p", "18090:80"], "hello-again");
    let web = attachment(env.d(), "flweb", "flnet");
    let works = |env: &DockerEnv| -> Result<(), String> {
        let (ok, body) = wget(env, "fl1", &format!("http://{}:80/", web.ip));
        if !(ok && body.trim() == "hello-again") {
            return Err(format!("fl1 -> flweb:80: {body}"));
        }
        let (ok, body) = host_wget("http://127.0.0.1:18090/");
        if !(ok && body.trim() == "hello-again") {
            return Err(format!("host -> 127.0.0.1:18090: {body}"));
        }
        Ok(())
    };
    wait_until("before", Duration::from_secs(5), || works(&env));

    for (what, undo) in [
        ("all our chains and jumps removed", None),
        (
            "our forward chain flushed",
            Some("CALICO-LIBNETWORK-FORWARD"),
        ),
    ] {
        match undo {
            None => {
                calico_libnetwork::dataplane::iptables::remove_all().unwrap();
            }
            Some(chain) => {
                host_ok("iptables", &["-w", "-F", chain]);
            }
        }
        // Positive control: the removal did break the path.
        no_ping(&env, "fl1", web.ip);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match works(&env) {
                Ok(()) => break,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "{what}: not back within 15 s: {e}\n{}",
                    our_rules("filter").join("\n")
                ),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        assert_one_jump_each(what);
    }
    assert!(
        env.plugin
            .log()
            .contains("changed or removed behind its back"),
        "the repair is logged"
    );
}

/// Docker's own isolation stays Docker's: a calico container reaches a bridge container only
/// where Docker allows it (a published port, as from any other network), never an
/// `--internal` network's, and the administrator's `DOCKER-USER` rules apply to it.
#[test]
fn dockers_bridges_and_docker_user_keep_their_say() {
    let Some(env) =
        start_checking_rules_every("dockers_bridges_and_docker_user_keep_their_say", "1s")
    else {
        return;
    };
    env.network("dbnet", &[]);
    env.run("db1", &["--net", "dbnet"]);
    let me = attachment(env.d(), "db1", "dbnet");
    let web = |name: &str, net: &str, extra: &[&str]| -> IpAddr {
        httpd(&env, name, net, extra, "bridged");
        let ip = env.d().docker_ok(&[
            "inspect",
            "-f",
            &format!("{{{{.NetworkSettings.Networks.{net}.IPAddress}}}}"),
            name,
        ]);
        ip.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}: {ip}"))
    };
    env.d().docker_ok(&["network", "create", "pubnet"]);
    env.d()
        .docker_ok(&["network", "create", "--internal", "intnet"]);
    let published = web("pubweb", "pubnet", &["-p", "18095:80"]);
    let internal = web("intweb", "intnet", &[]);
    // Docker moves its own jumps first whenever it makes a network; ours is put back where
    // it belongs when something removed it (a firewall reload): the order Docker's
    // isolation must survive.
    host_ok(
        "iptables",
        &["-w", "-D", "FORWARD", "-j", "CALICO-LIBNETWORK-FORWARD"],
    );
    wait_until("our FORWARD jump back", Duration::from_secs(5), || {
        let (_, rules) = host("iptables", &["-w", "-S", "FORWARD"]);
        if rules.contains("-j CALICO-LIBNETWORK-FORWARD") {
            Ok(())
        } else {
            Err(rules)
        }
    });
    let (_, forward) = host("iptables", &["-w", "-S", "FORWARD"]);
    let order: Vec<&str> = forward
        .lines()
        .filter(|l| l.contains("-j DOCKER-USER") || l.contains("-j CALICO-LIBNETWORK-FORWARD"))
        .collect();
    assert_eq!(
        order,
        [
            "-A FORWARD -j DOCKER-USER",
            "-A FORWARD -j CALICO-LIBNETWORK-FORWARD"
        ],
        "DOCKER-USER first:\n{forward}"
    );
    // The published port: straight to the container's address on Docker 20.10; Docker 28
    // drops packets to a published container's address that do not come from its bridge
    // (its raw-table "direct routing" protection, for every other network alike), so there
    // through the port published on the host (here: pubnet's gateway address).
    let published = if common::docker::engine().is_debian() {
        format!("{published}:80")
    } else {
        let gw = env.d().docker_ok(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            "pubnet",
        ]);
        format!("{gw}:18095")
    };
    let get = |to: &str| wget(&env, "db1", &format!("http://{to}/"));
    let internal = format!("{internal}:80");
    // Positive control: a published port of a bridge container.
    wait_until(
        "db1 -> published bridge container",
        Duration::from_secs(5),
        || match get(&published) {
            (true, body) if body.trim() == "bridged" => Ok(()),
            (_, body) => Err(body),
        },
    );
    // An --internal network is out of reach (Docker's isolation rule sees the packet).
    let (ok, body) = get(&internal);
    assert!(
        !ok,
        "db1 reached the --internal network's container: {body}"
    );
    // DOCKER-USER applies to calico containers too.
    let rule = ["-s", &format!("{}/32", me.ip), "-j", "DROP"];
    let mut ins = vec!["-w", "-I", "DOCKER-USER"];
    ins.extend_from_slice(&rule);
    host_ok("iptables", &ins);
    let (ok, body) = get(&published);
    let mut del = vec!["-w", "-D", "DOCKER-USER"];
    del.extend_from_slice(&rule);
    host_ok("iptables", &del);
    assert!(
        !ok,
        "DOCKER-USER's DROP did not apply to a calico container: {body}"
    );
    wait_until(
        "db1 -> published bridge container again",
        Duration::from_secs(5),
        || match get(&published) {
            (true, body) if body.trim() == "bridged" => Ok(()),
            (_, body) => Err(body),
        },
    );
}

/// `docker run` of container `name` on ponet publishing host port `port` is refused: the
/// port is already allocated.
fn assert_port_refused(env: &DockerEnv, name: &str, port: &str) {
    let publish = format!("{port}:80");
    let err = env.d().docker_err(&[
        "run",
        "-d",
        "--name",
        name,
        "--net",
        "ponet",
        "-p",
        &publish,
        env.image(),
        "sleep",
        "600",
    ]);
    assert!(err.contains("port is already allocated"), "{name}: {err}");
}

/// A published port is one owner's: a second container asking for it, or one a program of
/// the host holds, is refused in Docker's words; and a port published on all addresses
/// takes localhost (127.0.0.1) but not the host's other loopback services.
#[test]
fn published_ports_have_one_owner() {
    let Some(env) = start("published_ports_have_one_owner", &[]) else {
        return;
    };
    env.network("ponet", &[]);
    httpd(&env, "po1", "ponet", &["-p", "18097:80"], "from-container");
    assert_port_refused(&env, "po2", "18097");
    // A host program holds a port: refused too.
    let held = std::net::TcpListener::bind("0.0.0.0:18098").unwrap();
    assert_port_refused(&env, "po3", "18098");
    drop(held);
    // po1's 18097 answers on localhost ...
    wait_until(
        "host -> 127.0.0.1:18097",
        Duration::from_secs(5),
        || match host_wget("http://127.0.0.1:18097/") {
            (true, body) if body.trim() == "from-container" => Ok(()),
            (_, body) => Err(body),
        },
    );
    // ... but a host service on another loopback address keeps its own port.
    let local = std::net::TcpListener::bind("127.0.0.2:18097").unwrap();
    local.set_nonblocking(false).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut c, _) = local.accept().unwrap();
        let mut buf = [0u8; 512];
        let _ = c.read(&mut buf);
        let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 8\r\n\r\nfrom-host");
    });
    let (ok, body) = host_wget("http://127.0.0.2:18097/");
    assert!(
        ok && body.starts_with("from-hos"),
        "127.0.0.2:18097 went elsewhere: {body}"
    );
    server.join().unwrap();
}
