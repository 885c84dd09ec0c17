//! The command line: `calico-libnetwork` (serve, the default), and operator subcommands.
//!
//! The top-level clap types live here; each command's subcommands and body live in
//! `crate::commands`, one file per command.

use clap::{Parser, Subcommand};

use crate::commands;
use crate::commands::endpoint::EndpointCommand;
use crate::commands::firewall::FirewallCommand;
use crate::commands::ipam::IpamCommand;
use crate::commands::node::NodeCommand;
use crate::commands::output::Output;
use crate::commands::pool::PoolCommand;
use crate::config::ConfigArgs;

/// Calico network and IPAM plugin for Docker.
#[derive(Parser, Debug)]
#[command(name = "calico-libnetwork", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Settings (each also read from its environment variable).
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// What to do; serving the plugin socket when omitted.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
        /// Every Node too: its address, tunnel addresses, blocks, endpoints and heartbeat
        /// (`alive`, `dead` once older than three CALICO_LIBNETWORK_HEARTBEAT_INTERVALs: 90 s by
        /// default, or `no heartbeat`); a dead one is a problem.
        #[arg(long)]
        all_hosts: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Calico nodes: remove one that is gone for good, with its addresses, affinities
    /// and endpoints.
    Node {
        #[command(subcommand)]
        cmd: NodeCommand,
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
    crate::dataplane::iptables::configure_backend(config.iptables_backend);
    // Operator commands print results, not logs, unless asked.
    let _log_guard = (matches!(cli.command, None | Some(Command::Run))
        || std::env::var_os("LOG_LEVEL").is_some())
    .then(|| commands::serve::init_logging(&config));
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
            Command::Run => commands::serve::run_server(config).await.map(|()| 0),
            Command::Pool { cmd } => commands::pool::run(&config, cmd).await,
            Command::Ipam { cmd } => commands::ipam::run(&config, cmd).await,
            Command::Status { all_hosts, output } => {
                commands::status::run(&config, all_hosts, output).await
            }
            Command::Node { cmd } => commands::node::run(&config, cmd).await,
            Command::Endpoint { cmd } => commands::endpoint::run(&config, cmd).await,
            Command::Firewall { cmd } => commands::firewall::run(&config, cmd).await,
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
