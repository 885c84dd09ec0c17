//! `run` (the default): serve Docker's plugin socket until SIGTERM or SIGINT.
//!
//! Start-up: logging, host and datastore preparation (retried in the background while the
//! datastore is down), the driver, the socket, the background tasks; at stop: let the
//! firewall settle and remove its rules when no endpoint is left.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::{Config, DatastoreConfig, LogFormat};
use crate::datastore::Datastore;
use crate::driver::{Driver, DriverSettings};
use crate::error::Result;
use crate::plugin::{self, AppState};

use super::open_datastore;

/// Sets up logging to stdout at the configured level and format.
/// Returns the guard that flushes buffered log lines when dropped (keep it until exit).
pub(crate) fn init_logging(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
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

/// Builds the driver from settings.
pub(crate) fn build_driver(config: &Config, store: Arc<dyn Datastore>) -> Arc<Driver> {
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
        heartbeat_interval: config.heartbeat_interval,
        machine_id: crate::model::machine_id(),
        nodename_file: Some(config.nodename_file.clone()),
        node_address: config.node_address.clone(),
        routes: config.routes,
    };
    Arc::new(Driver::new(store, settings))
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
pub(crate) async fn run_server(config: Config) -> Result<()> {
    prepare_host(&config);
    let store = open_datastore(&config)?;
    let driver = build_driver(&config, store.clone());
    // Prepare the datastore (Node, default pools) before answering, so a first request
    // never races the default pool; if the datastore is down, serve anyway and retry in
    // the background: Docker gives up on a plugin that is absent for about 15 s.
    let init = prepare_datastore(&driver, config.default_pools.clone()).await;
    // Networks recorded without a name (older records, or a lookup cut short by a
    // restart): learn their names from the Docker API, in the background.
    driver.resolve_network_names_in_background();
    // Container labels follow Docker's events (container start), polling only without them.
    driver.follow_docker_events_in_background();
    let listener = plugin::bind(&config.socket)?;
    // The Go plugin's IPAM name: best effort, the main socket serves either way.
    let alias = config
        .ipam_alias_socket
        .as_ref()
        .and_then(|path| match plugin::bind(path) {
            Ok(l) => Some((l, path.clone())),
            Err(e) => {
                tracing::warn!(error = %e, "not serving the calico-ipam socket");
                None
            }
        });
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
    // One stop signal for both sockets.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let alias_task = alias.map(|(l, path)| {
        tracing::info!(socket = %path.display(), "serving the IPAM driver as calico-ipam too");
        let mut rx = stop_rx.clone();
        tokio::spawn(plugin::serve_ipam(l, path, state.clone(), async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }))
    });
    let res = plugin::serve(listener, config.socket.clone(), state, async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    })
    .await;
    if let Some(task) = alias_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "calico-ipam socket"),
            Err(e) => tracing::warn!(error = %e, "calico-ipam socket task"),
            Ok(Ok(())) => {}
        }
    }
    res?;
    if let Some(task) = init {
        task.abort();
    }
    stop(&driver).await;
    tracing::info!("stopped; socket removed");
    Ok(())
}

/// What the host needs before the driver starts, and warnings about the settings.
fn prepare_host(config: &Config) {
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
}

/// Prepares the datastore (Node, default pools) and, once prepared, cleans up after a
/// crash (see `driver::reconcile`) in the background. When the datastore is down, returns
/// the background task that keeps retrying (500 ms doubling up to 10 s).
async fn prepare_datastore(
    driver: &Arc<Driver>,
    pools: Vec<crate::model::IpPool>,
) -> Option<JoinHandle<()>> {
    match driver.init(&pools).await {
        Ok(()) => {
            driver.reconcile_in_background();
            driver.keep_node_address_in_background();
            driver.keep_routes_in_background();
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "prepare datastore; retrying in the background");
            let driver = driver.clone();
            Some(tokio::spawn(async move {
                let mut delay = Duration::from_millis(500);
                loop {
                    tokio::time::sleep(delay).await;
                    match driver.init(&pools).await {
                        Ok(()) => {
                            driver.reconcile_in_background();
                            driver.keep_node_address_in_background();
                            driver.keep_routes_in_background();
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?delay, "prepare datastore");
                            delay = (delay * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }))
        }
    }
}

/// After the socket is closed: let a firewall update finish, and remove the rules when no
/// endpoint is left.
async fn stop(driver: &Driver) {
    // A removal applied in the background may be running an iptables-restore that would
    // outlive us: let it finish (bounded), so no rule is written after we are gone.
    if tokio::time::timeout(Duration::from_secs(5), driver.settle_rules())
        .await
        .is_err()
    {
        tracing::warn!("stopping with a firewall update still running");
    }
    // With no endpoint left nothing needs our rules: a stopped plugin leaves none behind.
    // With endpoints, their containers keep working until the plugin is back.
    match driver.remove_rules_if_idle().await {
        Ok(true) => {
            tracing::info!("no endpoint left on this host: firewall rules removed");
            // Nothing here sends to other hosts' containers any more.
            match driver.remove_routes().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(routes = n, "routes to other hosts removed"),
                Err(e) => tracing::warn!(error = %e, "remove routes at stop"),
            }
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "remove firewall rules at stop"),
    }
}
