//! The command line: `calico-libnetwork` (serve, the default), and operator subcommands.

use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigArgs, DatastoreConfig, LogFormat};
use crate::datastore::etcd::EtcdStore;
use crate::datastore::local::LocalStore;
use crate::datastore::Datastore;
use crate::driver::{Driver, DriverSettings};
use crate::error::Result;
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
}

/// Sets up logging to stdout at the configured level and format.
pub fn init_logging(config: &Config) {
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Opens the configured datastore.
pub fn open_datastore(config: &Config) -> Result<Arc<dyn Datastore>> {
    Ok(match &config.datastore {
        DatastoreConfig::Etcd(c) => Arc::new(EtcdStore::new(c.clone())?),
        DatastoreConfig::Local(path) => Arc::new(LocalStore::open(path)?),
    })
}

/// Builds the driver from settings.
pub async fn build_driver(config: &Config, store: Arc<dyn Datastore>) -> Result<Arc<Driver>> {
    let settings = DriverSettings {
        nodename: config.nodename.clone(),
        scope: config.scope.clone(),
        create_profiles: config.create_profiles,
        ifprefix: config.ifprefix.clone(),
        veth_mtu: config.veth_mtu,
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
    let store = open_datastore(&config)?;
    let driver = build_driver(&config, store.clone()).await?;
    // Prepare the datastore (Node, default pools) before answering, so a first request
    // never races the default pool; if the datastore is down, serve anyway and retry in
    // the background: Docker gives up on a plugin that is absent for about 15 s.
    let pools = config.default_pools.clone();
    let init = match driver.init(&pools).await {
        Ok(()) => None,
        Err(e) => {
            tracing::warn!(error = %e, "prepare datastore; retrying in the background");
            let driver = driver.clone();
            Some(tokio::spawn(async move {
                let mut delay = std::time::Duration::from_millis(500);
                loop {
                    tokio::time::sleep(delay).await;
                    match driver.init(&pools).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?delay, "prepare datastore");
                            delay = (delay * 2).min(std::time::Duration::from_secs(10));
                        }
                    }
                }
            }))
        }
    };
    let listener = plugin::bind(&config.socket)?;
    tracing::info!(
        socket = %config.socket.display(),
        datastore = store.kind(),
        node = %config.nodename,
        version = env!("CARGO_PKG_VERSION"),
        "calico-libnetwork serving"
    );
    let state = Arc::new(AppState {
        driver,
        timeout: config.request_timeout,
    });
    plugin::serve(listener, config.socket.clone(), state, shutdown_signal()).await?;
    if let Some(task) = init {
        task.abort();
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
    init_logging(&config);
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
            Command::Run => run_server(config).await,
        }
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("calico-libnetwork: {e}");
            1
        }
    }
}
