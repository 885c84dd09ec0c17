//! The resolvers, from flags and a fixed environment: the settings they give, or the exact
//! error (naming the variable) they stop with.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, FromArgMatches};

use super::*;
use crate::dataplane::iptables::BackendChoice;
use crate::dataplane::iptables::DataplaneMode;

/// The settings clap gives for `flags`, with every default and no environment variable.
fn args(flags: &[&str]) -> ConfigArgs {
    let cmd = ConfigArgs::augment_args(clap::Command::new("test"))
        .mut_args(|a| a.env(None::<&'static str>));
    let matches = cmd
        .try_get_matches_from(std::iter::once("test").chain(flags.iter().copied()))
        .unwrap_or_else(|e| panic!("{flags:?}: {e}"));
    ConfigArgs::from_arg_matches(&matches).unwrap()
}

/// Resolves `flags` with only `env` as the environment (and a node name, so the host's
/// does not matter unless the test sets one).
fn resolve(flags: &[&str], env: &[(&str, &str)]) -> Result<Config> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut all = flags.to_vec();
    if !flags.contains(&"--nodename") {
        all.extend(["--nodename", "node-1"]);
    }
    args(&all).resolve_with(&|name: &str| env.get(name).cloned())
}

fn ok(flags: &[&str]) -> Config {
    resolve(flags, &[]).unwrap_or_else(|e| panic!("{flags:?}: {e}"))
}

fn err(flags: &[&str], env: &[(&str, &str)]) -> String {
    match resolve(flags, env) {
        Ok(c) => panic!("{flags:?} {env:?}: expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn etcd(c: &Config) -> &EtcdConfig {
    match &c.datastore {
        DatastoreConfig::Etcd(e) => e,
        other => panic!("expected etcd, got {other:?}"),
    }
}

fn temp_file() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(b"pem").unwrap();
    f
}

#[test]
fn defaults() {
    let c = ok(&[]);
    assert!(
        matches!(&c.datastore, DatastoreConfig::Local(p) if p == &PathBuf::from(DEFAULT_STORE))
    );
    assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
    assert_eq!(c.nodename, "node-1");
    assert_eq!(c.nodename_file, PathBuf::from("/var/lib/calico/nodename"));
    assert_eq!(c.log_level, "info");
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.request_timeout, Duration::from_secs(10));
    assert_eq!(
        pools_json(&c),
        [(
            "default-ipv4-ippool".to_string(),
            serde_json::json!({"cidr": "192.168.0.0/16", "vxlanMode": "Never", "ipipMode": "Never", "natOutgoing": true, "blockSize": 26})
        )]
    );
    assert!(c.create_profiles);
    assert_eq!(c.ifprefix, "eth");
    assert_eq!(c.veth_mtu, None);
    assert_eq!(c.metrics_addr, None);
    assert_eq!(c.scope, "local");
    assert_eq!(c.docker_host, "unix:///var/run/docker.sock");
    assert!(!c.label_endpoints);
    assert_eq!(c.label_poll_timeout, Duration::from_secs(30));
    assert_eq!(c.reconcile_grace, Duration::from_secs(120));
    assert_eq!(c.reconcile_interval, Duration::from_secs(600));
    assert_eq!(c.rules_check_interval, Duration::from_secs(30));
    assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(c.dataplane, DataplaneMode::Auto);
    assert_eq!(c.iptables_backend, BackendChoice::Auto);
}

#[test]
fn etcd_endpoints_choose_etcd_and_are_trimmed() {
    let c = ok(&[
        "--etcd-endpoints",
        " http://10.0.0.1:2379/ ,,https://etcd.example:2379",
        "--datastore-timeout",
        "2s",
    ]);
    let e = etcd(&c);
    assert_eq!(
        e.endpoints,
        vec!["http://10.0.0.1:2379", "https://etcd.example:2379"]
    );
    assert_eq!(e.timeout, Duration::from_secs(2));
    assert_eq!(e.username, None);
}

#[test]
fn calico_prefixed_variables_count_when_the_plain_ones_are_unset() {
    let c = resolve(&[], &[("CALICO_ETCD_ENDPOINTS", "http://a:2379")]).unwrap();
    assert_eq!(etcd(&c).endpoints, vec!["http://a:2379"]);
    let c = resolve(
        &["--etcd-endpoints", "http://plain:2379"],
        &[("CALICO_ETCD_ENDPOINTS", "http://prefixed:2379")],
    )
    .unwrap();
    assert_eq!(etcd(&c).endpoints, vec!["http://plain:2379"]);
    let c = resolve(
        &["--etcd-endpoints", "http://a:2379"],
        &[("CALICO_DATASTORE_TYPE", "local")],
    )
    .unwrap();
    assert!(matches!(c.datastore, DatastoreConfig::Local(_)));
}

#[test]
fn etcd_authority_and_scheme() {
    let c = ok(&["--etcd-authority", "etcd:2379"]);
    assert_eq!(etcd(&c).endpoints, vec!["http://etcd:2379"]);
    let c = ok(&["--etcd-authority", "etcd:2379", "--etcd-scheme", "https"]);
    assert_eq!(etcd(&c).endpoints, vec!["https://etcd:2379"]);
    // ETCD_ENDPOINTS wins over the authority.
    let c = ok(&[
        "--etcd-authority",
        "etcd:2379",
        "--etcd-endpoints",
        "http://other:2379",
    ]);
    assert_eq!(etcd(&c).endpoints, vec!["http://other:2379"]);
    assert_eq!(
        err(
            &["--etcd-authority", "etcd:2379", "--etcd-scheme", "ftp"],
            &[]
        ),
        "invalid configuration: ETCD_SCHEME: expected http or https, got 'ftp'"
    );
}

#[test]
fn bad_endpoints_name_their_variable() {
    assert_eq!(
        err(&["--etcd-endpoints", "ftp://etcd:2379"], &[]),
        "invalid configuration: ETCD_ENDPOINTS: URL 'ftp://etcd:2379' must start with http:// \
         or https://"
    );
    assert_eq!(
        err(&["--etcd-endpoints", "etcd:2379"], &[]),
        "invalid configuration: ETCD_ENDPOINTS: URL 'etcd:2379' must start with http:// or \
         https://"
    );
    assert!(
        err(&["--etcd-endpoints", "http://bad host"], &[]).starts_with(
            "invalid configuration: ETCD_ENDPOINTS: cannot parse URL 'http://bad host': "
        )
    );
}

#[test]
fn datastore_type() {
    assert!(matches!(
        ok(&[
            "--datastore-type",
            "local",
            "--etcd-endpoints",
            "http://a:1"
        ])
        .datastore,
        DatastoreConfig::Local(_)
    ));
    assert_eq!(
        err(&["--datastore-type", "kubernetes"], &[]),
        "invalid configuration: DATASTORE_TYPE: the kubernetes datastore is not supported; use \
         etcdv3 or local"
    );
    assert_eq!(
        err(&["--datastore-type", "consul"], &[]),
        "invalid configuration: DATASTORE_TYPE: unknown datastore type 'consul' (expected \
         etcdv3 or local)"
    );
    assert_eq!(
        err(&["--datastore-type", "etcdv3"], &[]),
        "invalid configuration: ETCD_ENDPOINTS: DATASTORE_TYPE is etcdv3 but no etcd endpoint \
         is set (ETCD_ENDPOINTS or ETCD_AUTHORITY)"
    );
    // clap refuses an empty value; the resolver still checks.
    let mut a = args(&["--nodename", "node-1"]);
    a.store_path = PathBuf::new();
    assert_eq!(
        a.resolve_with(&|_: &str| None).unwrap_err().to_string(),
        "invalid configuration: CALICO_LIBNETWORK_STORE: must not be empty"
    );
}

#[test]
fn etcd_tls_and_credentials_come_in_pairs() {
    let cert = temp_file();
    let cert = cert.path().to_str().unwrap();
    let https = ["--etcd-endpoints", "https://etcd:2379"];
    assert_eq!(
        err(&[&https[..], &["--etcd-cert-file", cert]].concat(), &[]),
        "invalid configuration: ETCD_KEY_FILE: ETCD_CERT_FILE and ETCD_KEY_FILE must be set \
         together"
    );
    assert_eq!(
        err(&[&https[..], &["--etcd-key-file", cert]].concat(), &[]),
        "invalid configuration: ETCD_CERT_FILE: ETCD_CERT_FILE and ETCD_KEY_FILE must be set \
         together"
    );
    assert_eq!(
        err(
            &[
                "--etcd-endpoints",
                "http://etcd:2379",
                "--etcd-ca-cert-file",
                cert
            ],
            &[]
        ),
        "invalid configuration: ETCD_ENDPOINTS: TLS certificates are set but an endpoint uses \
         http://; use https://"
    );
    assert_eq!(
        err(&[&https[..], &["--etcd-username", "u"]].concat(), &[]),
        "invalid configuration: ETCD_PASSWORD: ETCD_USERNAME and ETCD_PASSWORD must be set \
         together"
    );
    assert_eq!(
        err(&https, &[("CALICO_ETCD_PASSWORD", "p")]),
        "invalid configuration: ETCD_USERNAME: ETCD_USERNAME and ETCD_PASSWORD must be set \
         together"
    );
    let c = resolve(
        &[
            &https[..],
            &["--etcd-ca-cert-file", cert, "--etcd-cert-file", cert],
            &["--etcd-key-file", cert, "--etcd-username", "u"],
        ]
        .concat(),
        &[("CALICO_ETCD_PASSWORD", "p")],
    )
    .unwrap();
    let e = etcd(&c);
    assert_eq!(e.ca_cert_file.as_deref(), Some(std::path::Path::new(cert)));
    assert_eq!(e.username.as_deref(), Some("u"));
    assert_eq!(e.password.as_ref().map(|p| p.expose()), Some("p"));
}

#[test]
fn unreadable_certificate_files_are_named() {
    let e = err(
        &[
            "--etcd-endpoints",
            "https://etcd:2379",
            "--etcd-ca-cert-file",
            "/nonexistent/ca.pem",
        ],
        &[],
    );
    assert!(
        e.starts_with(
            "invalid configuration: ETCD_CA_CERT_FILE: cannot read /nonexistent/ca.pem: "
        ),
        "{e}"
    );
}

/// The node name `flags` and `env` give, with the nodename file at `file` (which may not
/// exist), and nothing else of the host's.
fn nodename(flags: &[&str], file: &std::path::Path, env: &[(&str, &str)]) -> Result<String> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let file = file.to_str().unwrap();
    args(&[flags, &["--nodename-file", file]].concat())
        .resolve_with(&|name: &str| env.get(name).cloned())
        .map(|c| c.nodename)
}

// calico-node's order (node/pkg/lifecycle/utils/utils.go, DetermineNodeName): NODENAME, then
// the nodename file, then HOSTNAME lowercased, then the kernel hostname lowercased.
#[test]
fn nodename_in_calico_nodes_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nodename");
    let host = [("HOSTNAME", " Docker-01 ")];
    // Nothing but HOSTNAME: lowercased and trimmed (names.Hostname's rule).
    assert_eq!(nodename(&[], &file, &host).unwrap(), "docker-01");
    // The file comes before HOSTNAME, trimmed, as written.
    std::fs::write(&file, "stored-name\n").unwrap();
    assert_eq!(nodename(&[], &file, &host).unwrap(), "stored-name");
    // NODENAME comes before the file, trimmed but not lowercased.
    assert_eq!(
        nodename(&["--nodename", " Explicit-1 "], &file, &host).unwrap(),
        "Explicit-1"
    );
    // An empty file counts as none.
    std::fs::write(&file, " \n").unwrap();
    assert_eq!(nodename(&[], &file, &host).unwrap(), "docker-01");
    // A file that cannot be read stops the program, as it stops calico-node.
    let e = nodename(&[], dir.path(), &host).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "invalid configuration: CALICO_NODENAME_FILE: cannot read {}: ",
            dir.path().display()
        )),
        "{e}"
    );
}

// libcalico-go/lib/names/hostname.go, Hostname: the kernel hostname, trimmed and lowercased.
#[test]
fn nodename_from_the_kernel_hostname_is_lowercased() {
    let none = || Ok(None);
    let kernel = || " Docker-01\n".to_string();
    assert_eq!(
        super::settings::determine_nodename(None, none, None, kernel).unwrap(),
        "docker-01"
    );
    assert_eq!(
        super::settings::determine_nodename(Some(" "), none, Some(String::new()), kernel).unwrap(),
        "docker-01"
    );
}

#[test]
fn nodename_is_checked() {
    let file = std::path::Path::new("/nonexistent/nodename");
    assert_eq!(
        nodename(&[], file, &[("HOSTNAME", " host-a ")]).unwrap(),
        "host-a"
    );
    assert_eq!(
        err(&["--nodename", "a b"], &[]),
        "invalid configuration: NODENAME: 'a b' is not a valid node name"
    );
    assert_eq!(
        err(&["--nodename", "a/b"], &[]),
        "invalid configuration: NODENAME: 'a/b' is not a valid node name"
    );
}

#[test]
fn log_level_and_format() {
    let level = |flags: &[&str], env: &[(&str, &str)]| resolve(flags, env).unwrap().log_level;
    assert_eq!(level(&["--log-level", " WARNING "], &[]), "warn");
    assert_eq!(level(&["--log-level", "fatal"], &[]), "error");
    assert_eq!(level(&["--log-level", "trace"], &[]), "trace");
    assert_eq!(level(&[], &[("CALICO_DEBUG", "1")]), "debug");
    assert_eq!(level(&[], &[("CALICO_DEBUG", "anything")]), "debug");
    assert_eq!(level(&[], &[("CALICO_DEBUG", "false")]), "info");
    assert_eq!(
        level(&["--log-level", "warn"], &[("CALICO_DEBUG", "1")]),
        "warn"
    );
    assert_eq!(
        err(&["--log-level", "loud"], &[]),
        "invalid configuration: LOG_LEVEL: unknown level 'loud' (expected error, warn, info, \
         debug or trace)"
    );
    assert_eq!(ok(&["--log-format", "JSON"]).log_format, LogFormat::Json);
    assert_eq!(
        err(&["--log-format", "xml"], &[]),
        "invalid configuration: LOG_FORMAT: expected text or json, got 'xml'"
    );
}

#[test]
fn durations() {
    assert_eq!(
        ok(&["--request-timeout", "500ms"]).request_timeout,
        Duration::from_millis(500)
    );
    assert_eq!(
        err(&["--request-timeout", "0s"], &[]),
        "invalid configuration: CALICO_LIBNETWORK_REQUEST_TIMEOUT: must be greater than zero"
    );
    assert!(err(&["--label-poll-timeout", "soon"], &[]).starts_with(
        "invalid configuration: CALICO_LIBNETWORK_LABEL_POLL_TIMEOUT: cannot parse duration \
         'soon': "
    ));
    // Only the reconcile interval may be 0 (no periodic pass).
    assert_eq!(
        ok(&["--reconcile-interval", "0"]).reconcile_interval,
        Duration::ZERO
    );
    assert_eq!(
        err(&["--reconcile-interval", "0s"], &[]),
        "invalid configuration: CALICO_LIBNETWORK_RECONCILE_INTERVAL: must be greater than zero"
    );
    assert_eq!(
        err(&["--rules-check-interval", "0"], &[]),
        "invalid configuration: CALICO_LIBNETWORK_RULES_CHECK_INTERVAL: must be greater than \
         zero"
    );
}

#[test]
fn heartbeat_interval() {
    let every = |v: &str| ok(&["--heartbeat-interval", v]).heartbeat_interval;
    assert_eq!(every("1s"), Duration::from_secs(1));
    assert_eq!(every(" 45s "), Duration::from_secs(45));
    assert_eq!(every("2m"), Duration::from_secs(120));
    assert_eq!(every("1500ms"), Duration::from_millis(1500));
    let var = "invalid configuration: CALICO_LIBNETWORK_HEARTBEAT_INTERVAL";
    assert_eq!(
        err(&["--heartbeat-interval", "999ms"], &[]),
        format!("{var}: '999ms' is shorter than the minimum of 1s")
    );
    assert_eq!(
        err(&["--heartbeat-interval", "0s"], &[]),
        format!("{var}: must be greater than zero")
    );
    for bad in ["often", "30", "-1s", ""] {
        let e = err(&[&format!("--heartbeat-interval={bad}")], &[]);
        assert!(
            e.starts_with(&format!("{var}: cannot parse duration '{bad}': ")),
            "{bad:?}: {e}"
        );
    }
    // The flag's variable, as the plugin and the commands read it.
    let cmd = ConfigArgs::augment_args(clap::Command::new("test"));
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_id() == "heartbeat_interval")
        .unwrap();
    assert_eq!(
        arg.get_env(),
        Some(std::ffi::OsStr::new("CALICO_LIBNETWORK_HEARTBEAT_INTERVAL"))
    );
}

/// Each default pool's name and spec, as stored.
fn pools_json(c: &Config) -> Vec<(String, serde_json::Value)> {
    c.default_pools
        .iter()
        .map(|p| (p.name().to_string(), serde_json::to_value(&p.spec).unwrap()))
        .collect()
}

// calico-node's default pools (node/pkg/lifecycle/startup/startup.go, configureIPPools and
// createIPPool): IPv4 NAT outgoing on, IPv6 off, no encapsulation, blocks /26 and /122, the
// variables' values where set.
#[test]
fn default_pools_like_calico_nodes() {
    let v6 = ["--ipv6-pool-cidr", "fd00::5/64"];
    assert_eq!(
        pools_json(&ok(
            &[&["--ipv4-pool-cidr", "10.1.2.3/16"], &v6[..]].concat()
        )),
        [
            (
                "default-ipv4-ippool".to_string(),
                serde_json::json!({"cidr": "10.1.0.0/16", "vxlanMode": "Never", "ipipMode": "Never", "natOutgoing": true, "blockSize": 26})
            ),
            (
                "default-ipv6-ippool".to_string(),
                serde_json::json!({"cidr": "fd00::/64", "vxlanMode": "Never", "ipipMode": "Never", "blockSize": 122})
            ),
        ]
    );
    let c = ok(&[
        &v6[..],
        &[
            "--ipv4-pool-ipip",
            "cross-subnet",
            "--ipv4-pool-nat-outgoing",
            "F",
        ],
        &[
            "--ipv4-pool-block-size",
            "28",
            "--ipv4-pool-node-selector",
            "zone == 'a'",
        ],
        &[
            "--ipv4-pool-disable-bgp-export",
            "true",
            "--ipv6-pool-vxlan",
            "Always",
        ],
        &[
            "--ipv6-pool-nat-outgoing",
            "yes",
            "--ipv6-pool-block-size",
            "120",
        ],
        &[
            "--ipv6-pool-node-selector",
            "has(v6)",
            "--ipv6-pool-disable-bgp-export",
            "0",
        ],
    ]
    .concat());
    assert_eq!(
        pools_json(&c),
        [
            (
                "default-ipv4-ippool".to_string(),
                serde_json::json!({"cidr": "192.168.0.0/16", "vxlanMode": "Never", "ipipMode": "CrossSubnet", "disableBGPExport": true, "blockSize": 28, "nodeSelector": "zone == 'a'"})
            ),
            (
                "default-ipv6-ippool".to_string(),
                serde_json::json!({"cidr": "fd00::/64", "vxlanMode": "Always", "ipipMode": "Never", "natOutgoing": true, "blockSize": 120, "nodeSelector": "has(v6)"})
            ),
        ]
    );
    // calico-node's spellings of the modes: any case, `off`, `cross-subnet`.
    let c = ok(&[
        "--ipv4-pool-vxlan",
        "CrossSubnet",
        "--ipv4-pool-ipip",
        "OFF",
    ]);
    assert_eq!(c.default_pools[0].spec.vxlan_mode, "CrossSubnet");
    assert_eq!(c.default_pools[0].spec.ipip_mode, "Never");
    // A pool smaller than a block gets blocks of its own size unless one is set.
    assert_eq!(
        ok(&["--ipv4-pool-cidr", "10.9.0.0/28"]).default_pools[0]
            .spec
            .block_size,
        28
    );
    // `none` turns one family off; NO_DEFAULT_POOLS both.
    assert!(ok(&["--ipv4-pool-cidr", "none"]).default_pools.is_empty());
    let c = ok(&[&["--ipv4-pool-cidr", "none"], &v6[..]].concat());
    assert_eq!(pools_json(&c)[0].0, "default-ipv6-ippool");
    assert!(
        ok(&["--no-default-pools", "yes", "--ipv4-pool-cidr", "junk"])
            .default_pools
            .is_empty()
    );
}

// calico-node stops at start on each of these (startup.go: createIPPool's "Unrecognized IPIP
// mode", validateBlockSize's "Invalid blocksize", validateNodeSelector's "Invalid node
// selector", and clientv3's pool validation when it creates the pool); we stop naming the
// variable.
#[test]
fn bad_default_pool_settings_name_their_variable() {
    let bad = |flags: &[&str]| err(flags, &[]);
    assert_eq!(
        bad(&["--ipv4-pool-cidr", "fd00::/64"]),
        "invalid configuration: CALICO_IPV4POOL_CIDR: must be an IPv4 CIDR"
    );
    assert_eq!(
        bad(&["--ipv6-pool-cidr", "10.0.0.0/8"]),
        "invalid configuration: CALICO_IPV6POOL_CIDR: must be an IPv6 CIDR"
    );
    assert!(bad(&["--ipv4-pool-cidr", "10.0.0.0"])
        .starts_with("invalid configuration: CALICO_IPV4POOL_CIDR: invalid CIDR '10.0.0.0': "));
    assert_eq!(
        bad(&["--no-default-pools", "maybe"]),
        "invalid configuration: NO_DEFAULT_POOLS: expected true or false, got 'maybe'"
    );
    assert_eq!(
        bad(&["--ipv4-pool-ipip", "sometimes"]),
        "invalid configuration: CALICO_IPV4POOL_IPIP: unrecognized IPIP mode 'sometimes' \
         (expected Never, Always or CrossSubnet)"
    );
    assert_eq!(
        bad(&["--ipv6-pool-vxlan", "on"]),
        "invalid configuration: CALICO_IPV6POOL_VXLAN: unrecognized VXLAN mode 'on' (expected \
         Never, Always or CrossSubnet)"
    );
    assert_eq!(
        bad(&[
            "--ipv4-pool-ipip",
            "Always",
            "--ipv4-pool-vxlan",
            "CrossSubnet"
        ]),
        "invalid configuration: CALICO_IPV4POOL_VXLAN: cannot be CrossSubnet while \
         CALICO_IPV4POOL_IPIP is Always (a Calico pool uses IPIP or VXLAN, not both)"
    );
    assert_eq!(
        bad(&["--ipv4-pool-nat-outgoing", "maybe"]),
        "invalid configuration: CALICO_IPV4POOL_NAT_OUTGOING: expected true or false, got \
         'maybe'"
    );
    assert_eq!(
        bad(&["--ipv6-pool-disable-bgp-export", "off"]),
        "invalid configuration: CALICO_IPV6POOL_DISABLE_BGP_EXPORT: expected true or false, \
         got 'off'"
    );
    assert_eq!(
        bad(&["--ipv4-pool-block-size", "26x"]),
        "invalid configuration: CALICO_IPV4POOL_BLOCK_SIZE: unable to convert blocksize '26x' \
         to int"
    );
    assert_eq!(
        bad(&["--ipv4-pool-block-size", "33"]),
        "invalid configuration: CALICO_IPV4POOL_BLOCK_SIZE: invalid blocksize 33 for version 4 \
         (expected 20 to 32)"
    );
    // Checked even without CALICO_IPV6POOL_CIDR, as calico-node checks it.
    assert_eq!(
        bad(&["--ipv6-pool-block-size", "115"]),
        "invalid configuration: CALICO_IPV6POOL_BLOCK_SIZE: invalid blocksize 115 for version \
         6 (expected 116 to 128)"
    );
    assert_eq!(
        bad(&[
            "--ipv4-pool-cidr",
            "10.9.0.0/28",
            "--ipv4-pool-block-size",
            "26"
        ]),
        "invalid configuration: CALICO_IPV4POOL_BLOCK_SIZE: blocks of /26 do not fit in the \
         pool 10.9.0.0/28 (CALICO_IPV4POOL_CIDR): use a block size of at least 28"
    );
    let e = bad(&["--ipv4-pool-node-selector", "has(zone"]);
    assert!(
        e.starts_with(
            "invalid configuration: CALICO_IPV4POOL_NODE_SELECTOR: invalid node selector \
             'has(zone': "
        ),
        "{e}"
    );
    let e = bad(&["--ipv4-pool-cidr", "169.254.0.0/16"]);
    assert!(
        e.starts_with("invalid configuration: CALICO_IPV4POOL_CIDR: ") && e.contains("link-local"),
        "{e}"
    );
    // A family turned off is not checked further.
    assert!(ok(&["--ipv4-pool-cidr", "none", "--ipv4-pool-ipip", "x"])
        .default_pools
        .is_empty());
}

#[test]
fn interfaces_and_scope() {
    let c = ok(&[
        "--ifprefix",
        " cali_x ",
        "--veth-mtu",
        "1450",
        "--scope",
        "global",
        "--create-profiles",
        "off",
    ]);
    assert_eq!(
        (c.ifprefix.as_str(), c.veth_mtu, c.scope.as_str()),
        ("cali_x", Some(1450), "global")
    );
    assert!(!c.create_profiles);
    assert_eq!(ok(&["--veth-mtu", "0"]).veth_mtu, None);
    assert_eq!(
        err(&["--ifprefix", "much-too-long-x"], &[]),
        "invalid configuration: CALICO_LIBNETWORK_IFPREFIX: 'much-too-long-x' must be 1 to 12 \
         characters of letters, digits, '_' or '-'"
    );
    assert_eq!(
        err(&["--veth-mtu", "67"], &[]),
        "invalid configuration: CALICO_LIBNETWORK_VETH_MTU: '67' is not an MTU between 68 and \
         65535"
    );
    assert_eq!(
        err(&["--scope", "swarm"], &[]),
        "invalid configuration: CALICO_LIBNETWORK_SCOPE: expected local or global, got 'swarm'"
    );
}

#[test]
fn docker_host_and_the_variable_it_came_from() {
    let host = |flags: &[&str], env: &[(&str, &str)]| resolve(flags, env).unwrap().docker_host;
    assert_eq!(
        host(&[], &[("DOCKER_HOST", " tcp://docker:2375 ")]),
        "tcp://docker:2375"
    );
    assert_eq!(
        host(
            &["--docker-host", "unix:///run/d.sock"],
            &[("DOCKER_HOST", "tcp://docker:2375")]
        ),
        "unix:///run/d.sock"
    );
    assert_eq!(
        err(&[], &[("DOCKER_HOST", "ssh://docker")]),
        "invalid configuration: DOCKER_HOST: 'ssh://docker' must start with unix://, tcp:// or \
         http://"
    );
    assert_eq!(
        err(&["--docker-host", "unix://relative.sock"], &[]),
        "invalid configuration: CALICO_LIBNETWORK_DOCKER_HOST: 'unix://relative.sock' needs an \
         absolute socket path (unix:///path)"
    );
}

#[test]
fn metrics_and_firewall() {
    let c = ok(&[
        "--metrics-addr",
        "127.0.0.1:9091",
        "--dataplane",
        "Felix",
        "--iptables-backend",
        "nftables",
        "--label-endpoints",
        "true",
    ]);
    assert_eq!(c.metrics_addr, Some("127.0.0.1:9091".parse().unwrap()));
    assert_eq!(c.dataplane, DataplaneMode::Felix);
    assert_eq!(c.iptables_backend, BackendChoice::Nft);
    assert!(c.label_endpoints);
    assert_eq!(
        err(&["--metrics-addr", "localhost"], &[]),
        "invalid configuration: CALICO_LIBNETWORK_METRICS_ADDR: expected a TCP address like \
         127.0.0.1:9091, got 'localhost'"
    );
    assert_eq!(
        err(&["--dataplane", "ebpf"], &[]),
        "invalid configuration: CALICO_LIBNETWORK_DATAPLANE: expected auto, standalone, felix \
         or off, got 'ebpf'"
    );
    assert_eq!(
        err(&["--iptables-backend", "ipset"], &[]),
        "invalid configuration: CALICO_LIBNETWORK_IPTABLES_BACKEND: expected auto, legacy or \
         nft, got 'ipset'"
    );
}

#[test]
fn the_first_bad_section_is_reported() {
    // A bad datastore is reported before a bad log level, which comes before a bad scope.
    assert_eq!(
        err(
            &["--datastore-type", "x", "--log-level", "x", "--scope", "x"],
            &[]
        ),
        "invalid configuration: DATASTORE_TYPE: unknown datastore type 'x' (expected etcdv3 \
         or local)"
    );
    assert_eq!(
        err(&["--log-level", "x", "--scope", "x"], &[]),
        "invalid configuration: LOG_LEVEL: unknown level 'x' (expected error, warn, info, \
         debug or trace)"
    );
}

#[test]
fn docker_host_addresses() {
    use super::values::check_docker_host;
    for ok in [
        "unix:///var/run/docker.sock",
        "tcp://127.0.0.1:2375",
        "http://localhost:2375",
    ] {
        assert!(check_docker_host("DOCKER_HOST", ok).is_ok(), "{ok}");
    }
    for (bad, why) in [
        ("unix://", "needs an absolute socket path"),
        ("unix://relative.sock", "needs an absolute socket path"),
        (
            "/var/run/docker.sock",
            "must start with unix://, tcp:// or http://",
        ),
        ("ssh://host", "must start with unix://, tcp:// or http://"),
        ("tcp://", "has no host"),
    ] {
        let e = check_docker_host("DOCKER_HOST", bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("DOCKER_HOST: '{bad}'")), "{e}");
        assert!(e.contains(why), "{e}");
    }
}

/// The IPAM-only `calico-ipam` socket: beside the plugin socket by default, anywhere
/// absolute, or off.
#[test]
fn ipam_alias_socket_defaults_beside_the_plugin_socket() {
    assert_eq!(
        ok(&[]).ipam_alias_socket,
        Some(PathBuf::from("/run/docker/plugins/calico-ipam.sock"))
    );
    assert_eq!(
        ok(&["--socket", "/tmp/x/calico.sock"]).ipam_alias_socket,
        Some(PathBuf::from("/tmp/x/calico-ipam.sock"))
    );
    for off in ["off", "OFF", "", "false"] {
        assert_eq!(
            ok(&["--ipam-alias-socket", off]).ipam_alias_socket,
            None,
            "{off:?}"
        );
    }
    assert_eq!(
        ok(&["--ipam-alias-socket", "/run/x.sock"]).ipam_alias_socket,
        Some(PathBuf::from("/run/x.sock"))
    );
    assert!(err(&["--ipam-alias-socket", "rel.sock"], &[]).contains(
        "CALICO_LIBNETWORK_IPAM_ALIAS_SOCKET: 'rel.sock' must be an absolute path, or off"
    ));
    assert!(err(
        &["--ipam-alias-socket", "/run/docker/plugins/calico.sock"],
        &[]
    )
    .contains("is the plugin socket itself"));
}

// startup.go, configureIPsAndSubnets and getMonitorPollInterval: IP autodetect (the value
// Calico's manifests give calico-node), IP6 off, first-found, every 60 s, conflicts checked.
#[test]
fn node_address_defaults_and_values() {
    use crate::dataplane::autodetect::{IpSetting, Method, NodeAddressConfig};
    let c = ok(&[]).node_address;
    assert_eq!(
        c,
        NodeAddressConfig {
            ipv4: IpSetting::Autodetect,
            ..NodeAddressConfig::off()
        }
    );
    assert_eq!(c.poll_interval, Duration::from_secs(60));
    assert!(c.check_conflicts);
    // Empty is unset.
    assert_eq!(ok(&["--ip", ""]).node_address.ipv4, IpSetting::Autodetect);
    let c = ok(&[
        "--ip",
        "10.0.0.5",
        "--ip6",
        "autodetect",
        "--ip-autodetection-method",
        "can-reach=10.0.0.1",
        "--ip6-autodetection-method",
        "interface=eth0, ens.*",
        "--autodetect-poll-interval",
        "5s",
        "--disable-node-ip-check",
        "true",
    ])
    .node_address;
    assert_eq!(
        c.ipv4,
        IpSetting::Address {
            addr: "10.0.0.5".parse().unwrap(),
            prefix: None
        }
    );
    assert_eq!(c.ipv6, IpSetting::Autodetect);
    assert_eq!(c.ipv4_method, Method::CanReach("10.0.0.1".into()));
    assert_eq!(
        c.ipv6_method,
        Method::Interface(vec!["eth0".into(), "ens.*".into()])
    );
    assert_eq!(c.poll_interval, Duration::from_secs(5));
    assert!(!c.check_conflicts);
    assert_eq!(ok(&["--ip", "none"]).node_address.ipv4, IpSetting::None);
}

// calico-node exits on these (startup.go: parseIPEnvironment's "Environment does not contain
// a valid IPv4 address"; autodetection_methods.go: AutoDetectCIDR's "Invalid IP
// autodetection method", and finding no address after a bad regex or CIDR): we stop at
// start naming the variable.
#[test]
fn bad_node_address_settings_name_their_variable() {
    let bad = |flags: &[&str]| err(flags, &[]);
    assert_eq!(
        bad(&["--ip", "fd00::5"]),
        "invalid configuration: IP: 'fd00::5' is not a valid IPv4 address (expected an \
         address, with or without its prefix length, autodetect or none)"
    );
    assert!(bad(&["--ip6", "10.0.0.5/24"])
        .starts_with("invalid configuration: IP6: '10.0.0.5/24' is not a valid IPv6 address"));
    assert!(bad(&["--ip-autodetection-method", "first"]).starts_with(
        "invalid configuration: IP_AUTODETECTION_METHOD: invalid IP autodetection method 'first'"
    ));
    assert!(
        bad(&["--ip6-autodetection-method", "interface=eth("]).starts_with(
            "invalid configuration: IP6_AUTODETECTION_METHOD: invalid interface regex 'eth('"
        )
    );
    assert!(
        bad(&["--ip-autodetection-method", "kubernetes-internal-ip"]).starts_with(
            "invalid configuration: IP_AUTODETECTION_METHOD: kubernetes-internal-ip reads"
        )
    );
    assert_eq!(
        bad(&["--ip-autodetection-method", "cidr=fd00::/8"]),
        "invalid configuration: IP_AUTODETECTION_METHOD: 'fd00::/8' is not an IPv4 CIDR: it can never match"
    );
    assert!(bad(&["--autodetect-poll-interval", "0s"])
        .starts_with("invalid configuration: AUTODETECT_POLL_INTERVAL: must be greater than zero"));
    assert_eq!(
        bad(&["--disable-node-ip-check", "yes"]),
        "invalid configuration: DISABLE_NODE_IP_CHECK: expected true or false, got 'yes'"
    );
}
