//! Docker Compose v2 (`docker compose`: Debian sid's `docker-compose`, a CLI plugin of sid's
//! Docker 28, fetched by `scripts/fetch-docker-engine.sh`) with networks of `driver: calico`
//! and `ipam: driver: calico`: services reach each other by service name, `docker compose
//! down` leaves nothing, `ipam.config` subnets become pools of their own, and `driver_opts`
//! the plugin does not support (and `internal: true`) are refused with its error. Our own dockerd, a real etcd and
//! the real `calico-libnetwork` binary (with our dockerd's API, for network names); iptables
//! FORWARD stays at DROP throughout.
//!
//! Debian 12's engine has no Compose v2 (its `docker-compose` is the Python Compose v1): on
//! it the test says it skips; run it with `CALICO_TEST_DOCKER_ENGINE=sid`.
//!
//! Needs root. Every test holds the host lock, so they run one at a time.

use crate::common;

use common::{PROFILES_PREFIX, WEPS_PREFIX};

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use super::docker_multi::{
    assert_no_cali_links, assert_no_endpoints_or_allocations, attachment, exec, finish, in_net,
    pool_cidrs,
};
use calico_libnetwork::model::{keys, resource_name_from};
use common::docker::{self, Dockerd};
use common::plugin::DockerEnv;
use common::wait_until;

/// A Compose project: its `compose.yaml` in a temp dir of its own. Brought `down` when
/// dropped after an `up` that was not followed by [`Project::down`] (a failed test), while
/// dockerd and the plugin still run.
struct Project<'a> {
    d: &'a Dockerd,
    name: String,
    dir: tempfile::TempDir,
    up: bool,
}

impl<'a> Project<'a> {
    fn new(d: &'a Dockerd, name: &str, yaml: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cdt-compose-")
            .tempdir_in("/tmp")
            .expect("compose temp dir");
        std::fs::write(dir.path().join("compose.yaml"), yaml).unwrap();
        Project {
            d,
            name: name.to_string(),
            dir,
            up: false,
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("compose.yaml")
    }

    /// `docker compose -f <its file> -p <its name> args...`.
    fn compose(&self, args: &[&str]) -> Output {
        let file = self.file().display().to_string();
        let mut all = vec!["compose", "-f", &file, "-p", &self.name];
        all.extend_from_slice(args);
        self.d.docker(&all)
    }

    /// `up -d`: its output (stdout and stderr), and whether it succeeded.
    fn up(&mut self) -> (bool, String) {
        self.up = true;
        let o = self.compose(&["up", "-d"]);
        (o.status.success(), text(&o))
    }

    /// `down`, expecting success.
    fn down(&mut self) {
        let o = self.compose(&["down"]);
        assert!(
            o.status.success(),
            "compose down {}: {}",
            self.name,
            text(&o)
        );
        self.up = false;
    }

    /// The container of `service` (Compose v2's name: `<project>-<service>-1`).
    fn container(&self, service: &str) -> String {
        format!("{}-{service}-1", self.name)
    }

    /// The Docker network of the project's network `net` (`<project>_<net>`).
    fn network(&self, net: &str) -> String {
        format!("{}_{net}", self.name)
    }
}

impl Drop for Project<'_> {
    fn drop(&mut self) {
        if self.up {
            let o = self.compose(&["down"]);
            if !o.status.success() {
                eprintln!("compose down {} (clean-up): {}", self.name, text(&o));
            }
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A service of busybox that keeps running; `init: true` (Docker's docker-init as PID 1)
/// lets it stop at once on `down`'s SIGTERM. `networks` is the YAML of its `networks:`.
fn service(image: &str, name: &str, networks: &str) -> String {
    format!(
        "  {name}:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    init: true\n    networks: {networks}\n"
    )
}

/// From the container of service `from`, `ping -c 1 <to>` by service name: the name must
/// resolve (Docker's embedded DNS) to `want` and answer.
fn ping_by_name(env: &DockerEnv, p: &Project, from: &str, to: &str, want: IpAddr) {
    let c = p.container(from);
    let out = env
        .d()
        .docker(&["exec", &c, "ping", "-c", "1", "-W", "3", to]);
    let said = text(&out);
    assert!(
        out.status.success(),
        "{from}: ping {to}: {said}\n{c}'s resolv.conf:\n{}",
        exec(env, &c, &["cat", "/etc/resolv.conf"])
    );
    assert!(
        said.contains(&format!("PING {to} ({want})")),
        "{from}: {to} resolved elsewhere than {want}: {said}"
    );
}

/// The `spec.endpoint` of every WorkloadEndpoint with its `spec.profiles`.
fn weps(env: &DockerEnv) -> Vec<(String, serde_json::Value)> {
    env.list(WEPS_PREFIX)
        .into_iter()
        .map(|(_, w)| {
            (
                w["spec"]["endpoint"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                w["spec"]["profiles"].clone(),
            )
        })
        .collect()
}

fn profiles(env: &DockerEnv) -> Vec<String> {
    env.list(PROFILES_PREFIX)
        .into_iter()
        .map(|(k, _)| k[PROFILES_PREFIX.len()..].to_string())
        .collect()
}

/// After a project went down, or never came up: no WorkloadEndpoint, allocation, handle,
/// network record, profile or `cali*` veth, and Docker has no network of the project.
fn assert_nothing_left(env: &DockerEnv, p: &Project, what: &str) {
    let prefix = format!("{}_", p.name);
    let nets = env.d().networks();
    assert!(
        !nets.iter().any(|n| n.starts_with(&prefix)),
        "{what}: networks left: {nets:?}"
    );
    let ps = env.d().docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(ps.is_empty(), "{what}: containers left: {ps}");
    assert_no_endpoints_or_allocations(env, what);
    let records = env.list(&keys::networks_prefix());
    assert!(
        records.is_empty(),
        "{what}: network records left: {records:?}"
    );
    let left = profiles(env);
    assert!(left.is_empty(), "{what}: profiles left: {left:?}");
    assert_no_cali_links();
}

/// Compose project with two services on a calico network (Calico's default pools): each
/// reaches the other by service name; their WorkloadEndpoints carry the profile named after
/// Compose's network name (`<project>_appnet`, made a valid Calico name); `down` leaves no
/// endpoint, address, profile or veth. Then a network with `ipam.config` (a subnet: a pool of
/// its own, gone with the network) and a fixed `ipv4_address`; then `driver_opts` the plugin
/// does not support, and `internal: true`: `up` fails with the plugin's error and leaves
/// nothing.
#[test]
fn compose_project_on_docker_28() {
    const T: &str = "compose_project_on_docker_28";
    if !common::require_root(T) {
        return;
    }
    let e = docker::engine();
    if e.is_debian() {
        common::say_skipped(&format!(
            "{T}: needs Compose v2 (`docker compose`), which the harness has with Debian sid's \
             engine only (Debian 12's docker-compose is the Python Compose v1); run with {}=sid",
            docker::ENGINE_VAR
        ));
        return;
    }
    assert!(
        e.has_compose(),
        "{}={}: no docker-compose CLI plugin in the engine's root: run `bash \
         scripts/fetch-docker-engine.sh {}` (it fetches a root that lacks it again)",
        docker::ENGINE_VAR,
        e.name,
        e.name
    );
    let t0 = Instant::now();
    let env = DockerEnv::builder()
        .etcd()
        .docker_api()
        .busybox()
        .forward_drop()
        .start();
    let d = env.d();
    let image = env.image();

    // (a) Two services on one calico network, reaching each other by name.
    let yaml = format!(
        "services:\n{}{}networks:\n  appnet:\n    driver: calico\n    ipam:\n      driver: calico\n",
        service(image, "web", "[appnet]"),
        service(image, "db", "[appnet]"),
    );
    let mut p = Project::new(d, "calico-compose", &yaml);
    let t = Instant::now();
    let (ok, out) = p.up();
    assert!(ok, "compose up: {out}");
    eprintln!("{T}: (a) up in {:?}", t.elapsed());
    let net = p.network("appnet");
    let web = attachment(d, &p.container("web"), &net);
    let db = attachment(d, &p.container("db"), &net);
    let (web_ip, db_ip) = (
        web.ipv4.expect("web: no IPv4"),
        db.ipv4.expect("db: no IPv4"),
    );
    assert!(in_net(web_ip, "192.168.0.0/16"), "web got {web_ip}");
    assert!(in_net(db_ip, "192.168.0.0/16"), "db got {db_ip}");
    ping_by_name(&env, &p, "web", "db", db_ip);
    ping_by_name(&env, &p, "db", "web", web_ip);
    // One WorkloadEndpoint per service, moved (by the plugin's background task, which asks
    // our dockerd for the name) to the profile named after Compose's network name.
    let profile = resource_name_from(&net);
    let want: BTreeSet<String> = [&web.endpoint_id, &db.endpoint_id]
        .into_iter()
        .cloned()
        .collect();
    wait_until(
        "both WorkloadEndpoints on the named profile",
        Duration::from_secs(15),
        || {
            let now = weps(&env);
            let eps: BTreeSet<String> = now.iter().map(|(e, _)| e.clone()).collect();
            let named = now
                .iter()
                .all(|(_, pr)| *pr == serde_json::json!([profile.clone()]));
            if eps == want && named {
                Ok(())
            } else {
                Err(format!("want {want:?} on [{profile}], have {now:?}"))
            }
        },
    );
    assert_eq!(profiles(&env), std::slice::from_ref(&profile), "profiles");
    eprintln!(
        "{T}: (a) web {web_ip} and db {db_ip} reach each other by name, profile {profile} ({:?})",
        t0.elapsed()
    );
    let t = Instant::now();
    p.down();
    eprintln!("{T}: (a) down in {:?}", t.elapsed());
    assert_nothing_left(&env, &p, "after (a) down");
    drop(p);

    // (b) `ipam.config`: a subnet no pool has becomes a pool of the network's own; a fixed
    // `ipv4_address` is given exactly.
    let yaml = format!(
        "services:\n{}{}networks:\n  fixed:\n    driver: calico\n    ipam:\n      driver: calico\n      config:\n        - subnet: 10.87.0.0/24\n",
        service(image, "a", "[fixed]"),
        service(image, "b", "{fixed: {ipv4_address: 10.87.0.50}}"),
    );
    let mut p = Project::new(d, "calico-compose-subnet", &yaml);
    let (ok, out) = p.up();
    assert!(ok, "compose up (subnet): {out}");
    let pools = pool_cidrs(&env);
    assert_eq!(
        pools.get("libnetwork-10-87-0-0-24").map(String::as_str),
        Some("10.87.0.0/24"),
        "{pools:?}"
    );
    let net = p.network("fixed");
    let a_ip = attachment(d, &p.container("a"), &net)
        .ipv4
        .expect("a: no IPv4");
    let b_ip = attachment(d, &p.container("b"), &net)
        .ipv4
        .expect("b: no IPv4");
    assert!(in_net(a_ip, "10.87.0.0/24"), "a got {a_ip}");
    assert_eq!(b_ip.to_string(), "10.87.0.50");
    ping_by_name(&env, &p, "a", "b", b_ip);
    ping_by_name(&env, &p, "b", "a", a_ip);
    p.down();
    assert_nothing_left(&env, &p, "after (b) down");
    let pools = pool_cidrs(&env);
    assert!(!pools.contains_key("libnetwork-10-87-0-0-24"), "{pools:?}");
    drop(p);
    eprintln!(
        "{T}: (b) subnet 10.87.0.0/24 pool made and removed ({:?})",
        t0.elapsed()
    );

    // (c) What the plugin refuses: `driver_opts` it does not support, and `internal: true`
    // (`--internal`). `up` fails with its error; nothing is made.
    let pools_before = pool_cidrs(&env);
    let cases = [
        (
            "driver_opts foo: bar",
            "    driver_opts:\n      foo: bar\n",
            "Calico driver does not support the flag foo (-o/--opt; Compose: driver_opts)",
        ),
        (
            "internal: true",
            "    internal: true\n",
            "Calico driver does not support the flag --internal",
        ),
    ];
    for (what, extra, needle) in cases {
        let yaml = format!(
            "services:\n{}networks:\n  bad:\n    driver: calico\n{extra}    ipam:\n      driver: calico\n",
            service(image, "x", "[bad]"),
        );
        let mut p = Project::new(d, "calico-compose-bad", &yaml);
        let (ok, out) = p.up();
        assert!(!ok, "compose up with {what} succeeded: {out}");
        assert!(out.contains(needle), "compose up with {what}: {out}");
        eprintln!("{T}: (c) {what} -> {}", out.trim().replace('\n', " | "));
        assert_nothing_left(&env, &p, &format!("after (c) {what}"));
        assert_eq!(pool_cidrs(&env), pools_before);
        p.down();
    }

    finish(T, env, t0);
}
