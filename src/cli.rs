//! The command line: `calico-libnetwork` (serve, the default), and operator subcommands.

use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigArgs, DatastoreConfig, LogFormat};
use crate::datastore::etcd::EtcdStore;
use crate::datastore::local::LocalStore;
use crate::datastore::remote::RemoteStore;
use crate::datastore::Datastore;
use crate::driver::{Driver, DriverSettings};
use crate::error::{Error, Result};
use crate::plugin::{self, AppState};

/// Calico network and IPAM plugin for Docker.
#[derive(Parser, Debug)]
#[command(name = "calico-libnetwork", version, about, long_about = None)]
pub struct Cli {
    /// Settings (each also read from its environment variable).
    #[command(flatten)]
    pub config: ConfigArgs,
    /// What to do; serving the plugin socket when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve Docker's plugin socket (the default).
    Run,
    /// Calico IP pools: list, add, delete.
    Pool {
        #[command(subcommand)]
        cmd: PoolCommand,
    },
    /// Calico IPAM state.
    Ipam {
        #[command(subcommand)]
        cmd: IpamCommand,
    },
    /// Health: datastore, Node resource, pools, plugin socket, endpoints (exit 1 on a
    /// problem, one line each saying what to do).
    Status {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// This host's container endpoints (WorkloadEndpoints).
    Endpoint {
        #[command(subcommand)]
        cmd: EndpointCommand,
    },
    /// The firewall rules the plugin owns on this host (iptables and ip6tables, filter
    /// and nat): show them, or remove them all (uninstalling).
    Firewall {
        #[command(subcommand)]
        cmd: FirewallCommand,
    },
}

/// `firewall` subcommands.
#[derive(Subcommand, Debug)]
pub enum FirewallCommand {
    /// Print every rule and chain the plugin owns, as `iptables -S` lines per table.
    Show,
    /// Delete every rule and chain the plugin owns (refused while the plugin serves).
    Remove {
        /// Remove them even while the plugin serves (its containers lose their forwarding,
        /// isolation and published ports until the plugin rewrites them).
        #[arg(long)]
        force: bool,
    },
}

/// `endpoint` subcommands.
#[derive(Subcommand, Debug)]
pub enum EndpointCommand {
    /// Endpoint, network/profile, addresses, interface, container MAC.
    List {
        /// Every host's endpoints, not only this node's.
        #[arg(long)]
        all_hosts: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// Output format of the operator commands.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// Aligned tables for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

/// `pool` subcommands.
#[derive(Subcommand, Debug)]
pub enum PoolCommand {
    /// List IP pools.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Add an IP pool (refused if invalid or overlapping another pool).
    Add {
        /// Pool name (a DNS-1123 subdomain).
        name: String,
        /// Pool CIDR, e.g. 10.20.0.0/16.
        cidr: String,
        /// Block prefix length (default 26 for IPv4, 122 for IPv6).
        #[arg(long)]
        block_size: Option<u8>,
        /// IP-in-IP mode: Never, Always or CrossSubnet.
        #[arg(long, default_value = "Never")]
        ipip_mode: String,
        /// VXLAN mode: Never, Always or CrossSubnet.
        #[arg(long, default_value = "Never")]
        vxlan_mode: String,
        /// Masquerade traffic leaving the pool.
        #[arg(long)]
        nat_outgoing: bool,
        /// Create the pool disabled (no new allocations).
        #[arg(long)]
        disabled: bool,
        /// Calico selector of the nodes that use this pool.
        #[arg(long, default_value = "all()")]
        node_selector: String,
    },
    /// Delete an IP pool (Calico's way: disable, release block affinities, delete).
    Delete {
        /// Pool name.
        name: String,
    },
}

/// `ipam` subcommands.
#[derive(Subcommand, Debug)]
pub enum IpamCommand {
    /// Per pool and per block: size, used, free, affinity.
    Show {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Find allocations without an endpoint, endpoints without an allocation, handles that
    /// disagree with blocks, and `cali*` veths without an endpoint (exit 1 if any remain).
    Check {
        /// Fix the safe ones: release orphan allocations older than --grace, set handle
        /// counts from the blocks, delete orphan veths.
        #[arg(long)]
        repair: bool,
        /// Orphan allocations younger than this are left alone (a container may be starting).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// Do not look at this host's `cali*` veths.
        #[arg(long)]
        no_veths: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

async fn run_pool(config: &Config, cmd: PoolCommand) -> Result<i32> {
    use crate::model::{IpPool, IpPoolSpec};
    let ipam = crate::ipam::Ipam::new(open_datastore_for_command(config).await?);
    match cmd {
        PoolCommand::List { output } => {
            let pools = ipam.list_pools().await?;
            if output == Output::Json {
                let v: Vec<serde_json::Value> = pools
                    .iter()
                    .map(|p| serde_json::json!({"name": p.name(), "spec": p.spec}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(0);
            }
            let mut rows = vec![[
                "NAME", "CIDR", "BLOCK", "IPIP", "VXLAN", "NAT", "DISABLED", "SELECTOR",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()];
            for p in pools {
                rows.push(vec![
                    p.name().to_string(),
                    p.spec.cidr.clone(),
                    p.spec.block_size_or_default().to_string(),
                    p.spec.ipip_mode.clone(),
                    p.spec.vxlan_mode.clone(),
                    p.spec.nat_outgoing.to_string(),
                    p.spec.disabled.to_string(),
                    p.spec.node_selector.clone(),
                ]);
            }
            print!("{}", table(rows));
        }
        PoolCommand::Add {
            name,
            cidr,
            block_size,
            ipip_mode,
            vxlan_mode,
            nat_outgoing,
            disabled,
            node_selector,
        } => {
            let net: ipnet::IpNet = cidr.parse().map_err(|_| {
                crate::Error::invalid(format!("add pool {name}: invalid CIDR '{cidr}'"))
            })?;
            let mut spec = IpPoolSpec::with_cidr(&net);
            spec.cidr = cidr.clone();
            spec.block_size = block_size.unwrap_or(0);
            spec.ipip_mode = ipip_mode;
            spec.vxlan_mode = vxlan_mode;
            spec.nat_outgoing = nat_outgoing;
            spec.disabled = disabled;
            spec.node_selector = node_selector;
            let p = ipam.create_pool(IpPool::new(&name, spec)).await?;
            println!("added pool {} ({})", p.name(), p.spec.cidr);
        }
        PoolCommand::Delete { name } => {
            ipam.delete_pool(&name)
                .await
                .map_err(|e| e.context(format!("delete pool {name}")))?;
            println!("deleted pool {name}");
        }
    }
    Ok(0)
}

async fn run_ipam(config: &Config, cmd: IpamCommand) -> Result<i32> {
    let store = open_datastore_for_command(config).await?;
    let ipam = crate::ipam::Ipam::new(store.clone());
    match cmd {
        IpamCommand::Check {
            repair,
            grace,
            no_veths,
            output,
        } => {
            let opts = crate::ops::CheckOptions {
                nodename: config.nodename.clone(),
                repair,
                grace,
                check_veths: !no_veths,
                machine_id: crate::model::machine_id(),
            };
            let report = crate::ops::ipam_check(store, &opts).await?;
            let unresolved = report.unresolved();
            if output == Output::Json {
                print_json(&report);
            } else {
                if !report.findings.is_empty() {
                    let mut rows = vec![["KIND", "OBJECT", "DETAIL", "ACTION"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()];
                    for f in &report.findings {
                        rows.push(vec![
                            f.kind.to_string(),
                            f.object.clone(),
                            f.detail.clone(),
                            f.action.clone(),
                        ]);
                    }
                    print!("{}", table(rows));
                }
                for n in &report.notes {
                    println!("note: {n}");
                }
                let repaired = report.findings.len() - unresolved;
                println!(
                    "{} inconsistencies found, {repaired} repaired, {unresolved} left",
                    report.findings.len()
                );
            }
            return Ok(i32::from(unresolved > 0));
        }
        IpamCommand::Show { output } => {
            let summary = ipam.summary().await?;
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&summary).unwrap_or_default()
                );
                return Ok(0);
            }
            let mut rows = vec![["POOL/BLOCK", "CIDR", "SIZE", "USED", "FREE", "AFFINITY"]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()];
            for p in summary {
                rows.push(vec![
                    p.name.clone(),
                    p.cidr.clone(),
                    p.size.to_string(),
                    p.used.to_string(),
                    p.size.saturating_sub(p.used as u128).to_string(),
                    String::new(),
                ]);
                for b in p.blocks {
                    rows.push(vec![
                        "  block".to_string(),
                        b.cidr,
                        b.size.to_string(),
                        b.used.to_string(),
                        b.free.to_string(),
                        b.affinity.unwrap_or_else(|| "-".to_string()),
                    ]);
                }
            }
            print!("{}", table(rows));
        }
    }
    Ok(0)
}

async fn run_status(config: &Config, output: Output) -> Result<i32> {
    let kind = match config.datastore {
        DatastoreConfig::Etcd(_) => "etcdv3",
        DatastoreConfig::Local(_) => "local",
    };
    let st = crate::ops::status(
        &config.nodename,
        &config.socket,
        kind,
        open_datastore_for_command(config).await,
    )
    .await;
    if output == Output::Json {
        print_json(&st);
    } else {
        let ok = |b: bool| if b { "ok" } else { "FAIL" }.to_string();
        let mut rows = vec![["CHECK", "STATUS", "DETAIL"]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()];
        let ds = &st.datastore;
        rows.push(vec![
            "datastore".into(),
            if ds.reachable {
                "ok".into()
            } else if st.problems.iter().any(|p| p.contains("datastore")) {
                "FAIL".into()
            } else {
                "skipped".into()
            },
            match (ds.latency_ms, &ds.error) {
                (Some(ms), _) => format!("{} reachable, {ms:.1} ms per read", ds.kind),
                (None, Some(e)) => format!("{}: {e}", ds.kind),
                (None, None) => ds.kind.clone(),
            },
        ]);
        if let Some(exists) = st.node_resource {
            rows.push(vec![
                "node".into(),
                ok(exists),
                format!(
                    "Node resource {} {}",
                    st.node,
                    if exists { "exists" } else { "missing" }
                ),
            ]);
        }
        for p in &st.pools {
            rows.push(vec![
                "pool".into(),
                ok(p.disabled || u128::from(p.used) < p.size),
                format!(
                    "{} {}: {}/{} used ({:.1}%){}",
                    p.name,
                    p.cidr,
                    p.used,
                    p.size,
                    p.percent_used,
                    if p.disabled { ", disabled" } else { "" }
                ),
            ]);
        }
        rows.push(vec![
            "socket".into(),
            ok(st.socket.up),
            match &st.socket.error {
                None => format!("{} answers Plugin.Activate", st.socket.path),
                Some(e) => format!("{}: {e}", st.socket.path),
            },
        ]);
        if let Some(n) = st.endpoints {
            rows.push(vec![
                "endpoints".into(),
                "ok".into(),
                format!("{n} on node {}", st.node),
            ]);
        }
        print!("{}", table(rows));
        for n in &st.notes {
            println!("note: {n}");
        }
        for p in &st.problems {
            println!("problem: {p}");
        }
    }
    Ok(i32::from(!st.problems.is_empty()))
}

async fn run_endpoint(config: &Config, cmd: EndpointCommand) -> Result<i32> {
    let EndpointCommand::List { all_hosts, output } = cmd;
    let store = open_datastore_for_command(config).await?;
    let node = (!all_hosts).then_some(config.nodename.as_str());
    let rows = crate::ops::endpoints(store.as_ref(), node).await?;
    if output == Output::Json {
        print_json(&rows);
        return Ok(0);
    }
    let mut head = vec![
        "ENDPOINT",
        "NETWORK",
        "PROFILES",
        "ADDRESSES",
        "INTERFACE",
        "MAC",
    ];
    if all_hosts {
        head.insert(1, "NODE");
    }
    let mut out = vec![head.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for r in rows {
        let short = r.endpoint.chars().take(12).collect::<String>();
        let mut row = vec![
            short,
            r.network.unwrap_or_else(|| "-".to_string()),
            if r.profiles.is_empty() {
                "-".to_string()
            } else {
                r.profiles.join(",")
            },
            r.addresses.join(","),
            r.interface,
            r.mac,
        ];
        if all_hosts {
            row.insert(1, r.node);
        }
        out.push(row);
    }
    print!("{}", table(out));
    Ok(0)
}

async fn run_firewall(config: &Config, cmd: FirewallCommand) -> Result<i32> {
    use crate::dataplane::standalone::{self, Family, TABLES};
    match cmd {
        FirewallCommand::Show => {
            let listing = tokio::task::spawn_blocking(|| {
                let mut out: Vec<(String, std::result::Result<Vec<String>, Error>)> = Vec::new();
                for (i, b) in standalone::backends().into_iter().enumerate() {
                    for family in [Family::V4, Family::V6] {
                        for table in TABLES {
                            let listed = standalone::list_owned_in(b, family, table);
                            // The variant not in use is shown only where it holds rules of
                            // ours (left by a run with it).
                            if i > 0 && !listed.as_ref().is_ok_and(|l| !l.is_empty()) {
                                continue;
                            }
                            let fatal = listed.is_err() && family == Family::V4;
                            out.push((format!("{} -t {table}", family.bin_in(b)), listed));
                            if fatal {
                                // iptables itself fails (its lock held, ...): say so now.
                                return out;
                            }
                        }
                    }
                }
                out
            })
            .await
            .map_err(|e| Error::msg(format!("list firewall rules: {e}")))?;
            let mut total = 0;
            for (heading, listed) in listing {
                match listed {
                    Ok(lines) => {
                        println!("# {heading}");
                        total += lines.len();
                        for l in lines {
                            println!("{l}");
                        }
                    }
                    // ip6tables may be unusable (IPv6 off): nothing of ours there.
                    Err(e) if heading.starts_with("ip6") => {
                        println!("# {heading}: not available ({e})");
                    }
                    Err(e) => return Err(e),
                }
            }
            if total == 0 {
                println!("no calico-libnetwork firewall rules on this host");
            }
            Ok(0)
        }
        FirewallCommand::Remove { force } => {
            let serving =
                crate::ops::plugin_activate(&config.socket, crate::ops::SOCKET_TIMEOUT).await;
            if serving.is_ok() {
                if !force {
                    return Err(Error::msg(format!(
                        "remove firewall rules: the plugin is serving on {} and its \
                         containers need them; stop it first (it removes them itself when no \
                         endpoint is left), or pass --force",
                        config.socket.display()
                    )));
                }
                eprintln!(
                    "warning: the plugin serving on {} will write its rules again at its next \
                     change",
                    config.socket.display()
                );
            }
            let removed = tokio::task::spawn_blocking(standalone::remove_all)
                .await
                .map_err(|e| Error::msg(format!("remove firewall rules: {e}")))??;
            if removed == 0 {
                println!("no calico-libnetwork firewall rules on this host");
            } else {
                println!("removed {removed} calico-libnetwork firewall rules and chains");
            }
            Ok(0)
        }
    }
}

/// Sets up logging to stdout at the configured level and format.
/// Returns the guard that flushes buffered log lines when dropped (keep it until exit).
pub fn init_logging(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    // Keep the transport crates quiet below warn unless tracing is asked for.
    let directive = if config.log_level == "trace" {
        "trace".to_string()
    } else {
        format!(
            "{},h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn",
            config.log_level
        )
    };
    let filter = tracing_subscriber::EnvFilter::new(directive);
    // Lines go through a bounded queue to a writer thread, and are dropped (never waited
    // for) when stdout stalls: a full log pipe must not freeze request handling, and with
    // it dockerd.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colour codes only on a terminal, never in log files or `docker logs`.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let _ = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

/// Opens the configured datastore.
pub fn open_datastore(config: &Config) -> Result<Arc<dyn Datastore>> {
    Ok(match &config.datastore {
        DatastoreConfig::Etcd(c) => Arc::new(EtcdStore::new(c.clone())?),
        DatastoreConfig::Local(path) => Arc::new(LocalStore::open(path)?),
    })
}

/// Opens the datastore for an operator command: the configured one, or, when the embedded
/// store's file is held by the plugin running on this host, that plugin's store through
/// its socket (same data, same code above it).
pub async fn open_datastore_for_command(config: &Config) -> Result<Arc<dyn Datastore>> {
    match open_datastore(config) {
        Err(e) if e.is_in_use() => {
            let store = RemoteStore::connect(&config.socket)
                .await
                .map_err(|remote| {
                    Error::msg(format!(
                        "{e}, and the plugin socket {} does not serve it ({remote}): stop the \
                     process holding the store, or point CALICO_LIBNETWORK_SOCKET at the \
                     plugin's socket",
                        config.socket.display()
                    ))
                })?;
            Ok(Arc::new(store))
        }
        other => other,
    }
}

/// Builds the driver from settings.
pub async fn build_driver(config: &Config, store: Arc<dyn Datastore>) -> Result<Arc<Driver>> {
    let settings = DriverSettings {
        nodename: config.nodename.clone(),
        scope: config.scope.clone(),
        create_profiles: config.create_profiles,
        ifprefix: config.ifprefix.clone(),
        veth_mtu: config.veth_mtu,
        docker_host: Some(config.docker_host.clone()),
        label_endpoints: config.label_endpoints,
        label_poll_timeout: config.label_poll_timeout,
        dataplane: config.dataplane,
        reconcile_grace: config.reconcile_grace,
        reconcile_interval: config.reconcile_interval,
        rules_check_interval: config.rules_check_interval,
        machine_id: crate::model::machine_id(),
    };
    Ok(Arc::new(Driver::new(store, settings)))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}

/// Serves the plugin socket until SIGTERM or SIGINT.
pub async fn run_server(config: Config) -> Result<()> {
    // A Docker managed plugin sees /proc/sys read-only; the veth knobs need it writable.
    match crate::dataplane::sysctl::ensure_proc_sys_writable() {
        Ok(true) => tracing::info!("remounted /proc/sys read-write (managed plugin)"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "/proc/sys is read-only; veth set-up will fail"),
    }
    if let DatastoreConfig::Etcd(c) = &config.datastore {
        if c.username.is_some() && c.endpoints.iter().any(|e| e.starts_with("http://")) {
            tracing::warn!(
                "etcd credentials are sent over plain http:// (ETCD_ENDPOINTS): anyone on the \
                 path can read the password; use https:// endpoints"
            );
        }
    }
    let store = open_datastore(&config)?;
    let driver = build_driver(&config, store.clone()).await?;
    // Prepare the datastore (Node, default pools) before answering, so a first request
    // never races the default pool; if the datastore is down, serve anyway and retry in
    // the background: Docker gives up on a plugin that is absent for about 15 s.
    let pools = config.default_pools.clone();
    // Once prepared, clean up after a crash (see `driver::reconcile`), in the background.
    let init = match driver.init(&pools).await {
        Ok(()) => {
            driver.reconcile_in_background();
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "prepare datastore; retrying in the background");
            let driver = driver.clone();
            Some(tokio::spawn(async move {
                let mut delay = std::time::Duration::from_millis(500);
                loop {
                    tokio::time::sleep(delay).await;
                    match driver.init(&pools).await {
                        Ok(()) => {
                            driver.reconcile_in_background();
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?delay, "prepare datastore");
                            delay = (delay * 2).min(std::time::Duration::from_secs(10));
                        }
                    }
                }
            }))
        }
    };
    // Networks recorded without a name (older records, or a lookup cut short by a
    // restart): learn their names from the Docker API, in the background.
    driver.resolve_network_names_in_background();
    let listener = plugin::bind(&config.socket)?;
    // The firewall rules: loaded from the datastore (retried until it answers) and kept in
    // place, in the background: iptables waits for its lock, and Docker waits for the socket.
    driver.keep_rules_in_background();
    if let Some(addr) = config.metrics_addr {
        let bound = crate::metrics::serve(addr, store.clone()).await?;
        tracing::info!(address = %bound, "serving Prometheus metrics at /metrics");
    }
    tracing::info!(
        socket = %config.socket.display(),
        datastore = store.kind(),
        node = %config.nodename,
        version = env!("CARGO_PKG_VERSION"),
        "calico-libnetwork serving"
    );
    let state = Arc::new(AppState {
        driver: driver.clone(),
        timeout: config.request_timeout,
    });
    plugin::serve(listener, config.socket.clone(), state, shutdown_signal()).await?;
    if let Some(task) = init {
        task.abort();
    }
    // A removal applied in the background may be running an iptables-restore that would
    // outlive us: let it finish (bounded), so no rule is written after we are gone.
    if tokio::time::timeout(std::time::Duration::from_secs(5), driver.settle_rules())
        .await
        .is_err()
    {
        tracing::warn!("stopping with a firewall update still running");
    }
    // With no endpoint left nothing needs our rules: a stopped plugin leaves none behind.
    // With endpoints, their containers keep working until the plugin is back.
    match driver.remove_rules_if_idle().await {
        Ok(true) => tracing::info!("no endpoint left on this host: firewall rules removed"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "remove firewall rules at stop"),
    }
    tracing::info!("stopped; socket removed");
    Ok(())
}

/// Runs the program; returns the process exit code.
pub fn main_entry() -> i32 {
    let cli = Cli::parse();
    let config = match cli.config.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("calico-libnetwork: {e}");
            return 2;
        }
    };
    crate::dataplane::standalone::configure_backend(config.iptables_backend);
    // Operator commands print results, not logs, unless asked.
    let _log_guard = (matches!(cli.command, None | Some(Command::Run))
        || std::env::var_os("LOG_LEVEL").is_some())
    .then(|| init_logging(&config));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("calico-libnetwork: start runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(async move {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => run_server(config).await.map(|()| 0),
            Command::Pool { cmd } => run_pool(&config, cmd).await,
            Command::Ipam { cmd } => run_ipam(&config, cmd).await,
            Command::Status { output } => run_status(&config, output).await,
            Command::Endpoint { cmd } => run_endpoint(&config, cmd).await,
            Command::Firewall { cmd } => run_firewall(&config, cmd).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("calico-libnetwork: {e}");
            1
        }
    }
}
