//! Profiles named after Docker network names, learned from the Docker API in the background,
//! with the network-ID fallback; `CALICO_LIBNETWORK_CREATE_PROFILES=false`; container labels
//! onto WorkloadEndpoints. Our own real dockerd (Debian's 20.10), a real etcd and the real
//! `calico-libnetwork` binary, pointed at that dockerd's API socket.
//!
//! Needs root. Every test holds the host lock, so they run one at a time.

use crate::common;

use common::{PROFILES_PREFIX, WEPS_PREFIX};

use std::time::{Duration, Instant};

use calico_libnetwork::datastore::Datastore;
use calico_libnetwork::model::{label_key, resource_name_from};
use common::plugin::DockerEnv;
use common::wait_until;
use serde_json::{json, Value};

const NETWORKS_PREFIX: &str = "/calico/libnetwork/v1/networks/";

/// Lock, etcd, dockerd, then the plugin pointed at that dockerd (or at `docker_host`),
/// with `extra` settings.
fn start(docker_host: Option<&str>, extra: &[(&str, &str)]) -> DockerEnv {
    let mut b = DockerEnv::builder().etcd().docker_api();
    if let Some(h) = docker_host {
        b = b.plugin_env("CALICO_LIBNETWORK_DOCKER_HOST", h);
    }
    b.plugin_envs(extra).start()
}

/// Containers and networks gone, then dockerd and the plugin stopped: no endpoint,
/// allocation or handle is left in etcd, and the plugin removed its own rules (checked
/// before the harness's clean-up could hide a leak).
fn assert_nothing_left(env: &mut DockerEnv) {
    assert!(
        env.list(WEPS_PREFIX).is_empty(),
        "{:?}",
        env.list(WEPS_PREFIX)
    );
    for prefix in common::BLOCKS_PREFIXES {
        for (key, b) in env.list(prefix) {
            let used = b["allocations"]
                .as_array()
                .unwrap_or_else(|| panic!("{key}: no allocations array: {b}"))
                .iter()
                .filter(|a| !a.is_null())
                .count();
            assert_eq!(used, 0, "{key} still allocates: {b}");
        }
    }
    assert!(
        env.list(common::HANDLES_PREFIX).is_empty(),
        "{:?}",
        env.list(common::HANDLES_PREFIX)
    );
    env.docker.shutdown();
    env.plugin.stop();
    common::firewall::assert_no_chain();
}

fn profiles(env: &DockerEnv) -> Vec<String> {
    env.list(PROFILES_PREFIX)
        .into_iter()
        .map(|(k, _)| k[PROFILES_PREFIX.len()..].to_string())
        .collect()
}

fn profile(env: &DockerEnv, name: &str) -> Option<Value> {
    env.list(PROFILES_PREFIX)
        .into_iter()
        .find(|(k, _)| k[PROFILES_PREFIX.len()..] == *name)
        .map(|(_, v)| v)
}

fn record(env: &DockerEnv, net_id: &str) -> Value {
    env.list(NETWORKS_PREFIX)
        .into_iter()
        .find(|(k, _)| k.ends_with(net_id))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no network record for {net_id}"))
}

/// The WorkloadEndpoint of container `name`.
fn wep(env: &DockerEnv, name: &str) -> Value {
    let ep = env.docker.docker_ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.EndpointID}}{{end}}",
        name,
    ]);
    let weps = env.list(WEPS_PREFIX);
    weps.into_iter()
        .find(|(_, w)| w["spec"]["endpoint"] == ep.as_str())
        .map(|(_, w)| w)
        .unwrap_or_else(|| panic!("{name}: no WorkloadEndpoint for endpoint {ep}"))
}

fn wep_profiles(w: &Value) -> Value {
    match &w["spec"]["profiles"] {
        Value::Null => json!([]),
        v => v.clone(),
    }
}

/// The CNI shape of the profile of network `name`.
/// The profile spec Calico CNI writes for a network profile; its label key is the profile's
/// name cut to Calico's 63-character label limit (a fallback profile's 64-character network
/// ID is not a valid label key).
fn cni_profile_spec(name: &str) -> Value {
    let key = label_key(name);
    assert!(key.len() <= 63, "label key {key:?} over Calico's limit");
    json!({
        "ingress": [{"action": "Allow", "source": {"selector": format!("has({key})")}}],
        "egress": [{"action": "Allow"}],
        "labelsToApply": {key: ""},
    })
}

/// (a) + (d): the profile is named after the network name, CNI-shaped, carried by the
/// container's endpoint and removed with the network; `org.projectcalico.label.*` container
/// labels reach the WorkloadEndpoint.
#[test]
fn profile_named_after_network_and_container_labels() {
    if !common::require_root("profile_named_after_network_and_container_labels") {
        return;
    }
    let t0 = Instant::now();
    let mut env = start(None, &[("CALICO_LIBNETWORK_LABEL_ENDPOINTS", "true")]);
    let image = env.docker.import_busybox();
    let net_id = env.network("net1", &[]);
    let spec = wait_until("profile net1", Duration::from_secs(10), || {
        profile(&env, "net1")
    })
    .clone();
    assert_eq!(spec["spec"], cni_profile_spec("net1"), "{spec}");
    assert_eq!(spec["kind"], "Profile");
    // The network-ID fallback is gone once the name is known.
    wait_until("fallback profile deleted", Duration::from_secs(10), || {
        (profiles(&env) == ["net1"]).then_some(())
    });
    let rec = record(&env, &net_id);
    assert_eq!(
        (&rec["name"], &rec["profile"]),
        (&json!("net1"), &json!("net1"))
    );
    eprintln!("net1 named ({:?})", t0.elapsed());

    env.docker.docker_ok(&[
        "run",
        "-d",
        "--net",
        "net1",
        "--name",
        "c1",
        "--label",
        "org.projectcalico.label.role=db",
        "--label",
        "other=x",
        image,
        "sleep",
        "600",
    ]);
    let w = wep(&env, "c1");
    assert_eq!(wep_profiles(&w), json!(["net1"]), "{w}");
    let labels = wait_until(
        "label role=db on the WorkloadEndpoint",
        Duration::from_secs(10),
        || {
            let w = wep(&env, "c1");
            (w["metadata"]["labels"]["role"] == "db").then(|| w["metadata"]["labels"].clone())
        },
    );
    assert_eq!(
        labels,
        json!({
            "projectcalico.org/namespace": "libnetwork",
            "projectcalico.org/orchestrator": "libnetwork",
            "role": "db",
        })
    );
    eprintln!("c1 labelled ({:?})", t0.elapsed());

    // A name Calico does not accept as it is gets a valid, stable profile name.
    let hostile = "My_Net.1";
    env.network(hostile, &[]);
    let p = resource_name_from(hostile);
    let prof = wait_until("profile of My_Net.1", Duration::from_secs(10), || {
        profile(&env, &p)
    });
    assert_eq!(prof["spec"], cni_profile_spec(&p));

    env.docker.docker_ok(&["rm", "-f", "c1"]);
    env.docker.docker_ok(&["network", "rm", "net1", hostile]);
    assert!(profiles(&env).is_empty(), "{:?}", profiles(&env));
    assert!(env.list(NETWORKS_PREFIX).is_empty());
    assert_nothing_left(&mut env);
    drop(env);
    eprintln!("total {:?}", t0.elapsed());
}

/// (b) the Docker API unreachable: creating a network does not wait for it, and the profile
/// is the network-ID fallback; with the API back (plugin restart), the start-up pass moves
/// the network and its endpoint to the named profile. (c) CREATE_PROFILES=false: no profile,
/// and endpoints carry none.
#[test]
fn fallback_profile_without_docker_api_and_profiles_off() {
    if !common::require_root("fallback_profile_without_docker_api_and_profiles_off") {
        return;
    }
    let t0 = Instant::now();
    let mut env = start(Some("unix:///nonexistent/docker.sock"), &[]);
    let image = env.docker.import_busybox();
    let t = Instant::now();
    let net_id = env.network("net2", &[]);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "network create took {took:?}"
    );
    let fallback = resource_name_from(&net_id);
    assert_eq!(fallback, net_id);
    env.docker.docker_ok(&[
        "run", "-d", "--net", "net2", "--name", "c2", image, "sleep", "600",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(profiles(&env), vec![fallback.clone()]);
    let spec = profile(&env, &fallback).unwrap();
    assert_eq!(spec["spec"], cni_profile_spec(&fallback));
    assert_eq!(wep_profiles(&wep(&env, "c2")), json!([fallback]));
    assert_eq!(record(&env, &net_id)["name"], "");
    eprintln!("fallback ok (create took {took:?}; {:?})", t0.elapsed());

    // The Docker API back: the start-up pass learns the name.
    let ours = env.docker.host();
    env.plugin.set_env("CALICO_LIBNETWORK_DOCKER_HOST", &ours);
    env.plugin.restart();
    wait_until("c2 moved to profile net2", Duration::from_secs(15), || {
        (wep_profiles(&wep(&env, "c2")) == json!(["net2"])).then_some(())
    });
    wait_until("only profile net2 left", Duration::from_secs(10), || {
        (profiles(&env) == ["net2"]).then_some(())
    });
    assert_eq!(record(&env, &net_id)["name"], "net2");
    env.docker.docker_ok(&["rm", "-f", "c2"]);
    env.docker.docker_ok(&["network", "rm", "net2"]);
    assert!(profiles(&env).is_empty(), "{:?}", profiles(&env));
    eprintln!("resolved at start ({:?})", t0.elapsed());

    // (c) Profiles off: none created, none carried, also once the name is known.
    env.plugin
        .set_env("CALICO_LIBNETWORK_CREATE_PROFILES", "false");
    env.plugin.restart();
    let net3 = env.network("net3", &[]);
    env.docker.docker_ok(&[
        "run", "-d", "--net", "net3", "--name", "c3", image, "sleep", "600",
    ]);
    wait_until("record of net3 named", Duration::from_secs(10), || {
        (record(&env, &net3)["name"] == "net3").then_some(())
    });
    assert!(profiles(&env).is_empty(), "{:?}", profiles(&env));
    assert_eq!(wep_profiles(&wep(&env, "c3")), json!([]));
    assert_eq!(record(&env, &net3)["profile"], "");
    env.docker.docker_ok(&["rm", "-f", "c3"]);
    env.docker.docker_ok(&["network", "rm", "net3"]);
    assert!(profiles(&env).is_empty());
    assert_nothing_left(&mut env);
    drop(env);
    eprintln!("total {:?}", t0.elapsed());
}

/// Networks the plugin has no record of (issue 19): Docker keeps its networks and never calls
/// CreateNetwork for them again. (a) etcd: the network's record is deleted while a container
/// runs on it; after a plugin restart a new container starts on it, both end on the same
/// profile as before (named after the network) and reach each other. (b) The embedded store
/// file is removed (what `docker plugin rm` of a managed plugin does): after a plugin restart,
/// new containers on the old network start, on the same profile, and reach each other.
#[test]
fn networks_without_a_record_are_adopted() {
    const T: &str = "networks_without_a_record_are_adopted";
    if !common::require_root(T) {
        return;
    }
    let t0 = Instant::now();
    for local in [false, true] {
        let b = DockerEnv::builder().docker_api().busybox().forward_drop();
        let mut env = if local { b.local_store() } else { b.etcd() }.start();
        let what = if local {
            "embedded store removed"
        } else {
            "record deleted"
        };
        let net_id = env.network("keep", &[]);
        env.run("c1", &["--net", "keep"]);
        wait_until("c1 on profile keep", Duration::from_secs(10), || {
            (endpoint_profiles(&env, "c1") == json!(["keep"])).then_some(())
        });
        if local {
            // Nothing of the old store survives: its containers go first (their addresses
            // would be handed out again).
            env.docker.docker_ok(&["rm", "-f", "c1"]);
            env.plugin.stop();
            std::fs::remove_file(env.plugin.store_path()).unwrap();
            env.plugin.restart();
        } else {
            let key = format!("{NETWORKS_PREFIX}{net_id}");
            common::block_on(env.etcd().store().delete(&key, None)).unwrap();
            env.plugin.restart();
        }
        env.run("c2", &["--net", "keep"]);
        env.run("c3", &["--net", "keep"]);
        if !local {
            let rec = record(&env, &net_id);
            assert_eq!(rec["ipv4Pools"], json!(["0.0.0.0/0"]), "{what}: {rec}");
        }
        let peers: &[&str] = if local {
            &["c2", "c3"]
        } else {
            &["c1", "c2", "c3"]
        };
        for c in peers {
            wait_until(
                &format!("{what}: {c} on profile keep"),
                Duration::from_secs(15),
                || (endpoint_profiles(&env, c) == json!(["keep"])).then_some(()),
            );
        }
        let ip = |c: &str| {
            env.docker
                .docker_ok(&[
                    "inspect",
                    "-f",
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                    c,
                ])
                .trim()
                .to_string()
        };
        for (from, to) in [("c2", "c3"), ("c3", "c2")].into_iter().chain(
            (!local)
                .then_some([("c1", "c2"), ("c2", "c1")])
                .into_iter()
                .flatten(),
        ) {
            let out = env
                .docker
                .docker(&["exec", from, "ping", "-c", "1", "-W", "3", &ip(to)]);
            assert!(out.status.success(), "{what}: {from} -> {to}: {out:?}");
        }
        assert!(
            env.plugin.log().contains("adopted a network"),
            "{what}: the adoption is not logged"
        );
        eprintln!(
            "{T}: {what}: adopted, containers reach each other ({:?})",
            t0.elapsed()
        );
        let mut rm = vec!["rm", "-f", "c2", "c3"];
        if !local {
            rm.push("c1");
        }
        env.docker.docker_ok(&rm);
        env.docker.docker_ok(&["network", "rm", "keep"]);
        if local {
            let left = endpoint_list(&env);
            assert_eq!(left, json!([]), "{what}: endpoints left");
        } else {
            assert!(env.list(NETWORKS_PREFIX).is_empty());
            assert!(profiles(&env).is_empty(), "{:?}", profiles(&env));
            assert_nothing_left(&mut env);
        }
    }
}

/// `calico-libnetwork endpoint list -o json` on the env's datastore (through the running
/// plugin for the embedded store, whose file it holds).
fn endpoint_list(env: &DockerEnv) -> Value {
    let mut cmd = std::process::Command::new(common::plugin::BINARY);
    cmd.args(["endpoint", "list", "-o", "json"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("NODENAME", common::plugin::NODENAME)
        .env("CALICO_LIBNETWORK_SOCKET", common::plugin::SOCKET);
    match env.plugin.env_value("CALICO_LIBNETWORK_STORE") {
        Some(store) => cmd
            .env("DATASTORE_TYPE", "local")
            .env("CALICO_LIBNETWORK_STORE", store),
        None => cmd.env("ETCD_ENDPOINTS", env.etcd().endpoint()),
    };
    let o = cmd.output().expect("run calico-libnetwork endpoint list");
    assert!(o.status.success(), "endpoint list: {o:?}");
    serde_json::from_slice(&o.stdout).expect("endpoint list JSON")
}

/// The profiles of container `c`'s endpoint, from `endpoint list`.
fn endpoint_profiles(env: &DockerEnv, c: &str) -> Value {
    let ep = env.docker.docker_ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.EndpointID}}{{end}}",
        c,
    ]);
    endpoint_list(env)
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["endpoint"] == ep.trim())
        .map(|r| r["profiles"].clone())
        .unwrap_or(Value::Null)
}

/// Labels follow Docker's events (issue 19): with `CALICO_LIBNETWORK_LABEL_ENDPOINTS=true`,
/// a container's `org.projectcalico.label.*` labels are on its WorkloadEndpoint when read
/// once, 1 s after `docker run -d` returns, in 20 runs of 20 (the original plugin's own test
/// read the endpoint once, 1 s after `docker run`).
#[test]
fn labels_are_on_the_endpoint_a_second_after_docker_run() {
    const T: &str = "labels_are_on_the_endpoint_a_second_after_docker_run";
    if !common::require_root(T) {
        return;
    }
    let t0 = Instant::now();
    let mut env = start(None, &[("CALICO_LIBNETWORK_LABEL_ENDPOINTS", "true")]);
    let image = env.docker.import_busybox();
    env.network("lbl", &[]);
    let mut missed = Vec::new();
    for i in 0..20 {
        let name = format!("l{i:02}");
        let label = format!("org.projectcalico.label.run=r{i}");
        env.docker.docker_ok(&[
            "run", "-d", "--net", "lbl", "--name", &name, "--label", &label, image, "sleep", "600",
        ]);
        let returned = Instant::now();
        std::thread::sleep(Duration::from_secs(1).saturating_sub(returned.elapsed()));
        let w = wep(&env, &name);
        if w["metadata"]["labels"]["run"] != format!("r{i}").as_str() {
            missed.push(format!("{name}: {}", w["metadata"]["labels"]));
        }
    }
    assert!(
        missed.is_empty(),
        "labels not on the endpoint 1 s after docker run returned, in {} of 20: {missed:?}",
        missed.len()
    );
    let log = env.plugin.log();
    assert!(
        log.contains("labelled WorkloadEndpoint"),
        "no labelling logged"
    );
    assert!(
        log.contains("following Docker's events"),
        "the plugin did not follow Docker's events"
    );
    eprintln!("{T}: 20 of 20 labelled within 1 s ({:?})", t0.elapsed());
    let mut rm: Vec<String> = vec!["rm".into(), "-f".into()];
    rm.extend((0..20).map(|i| format!("l{i:02}")));
    env.docker
        .docker_ok(&rm.iter().map(String::as_str).collect::<Vec<_>>());
    env.docker.docker_ok(&["network", "rm", "lbl"]);
    assert_nothing_left(&mut env);
}
