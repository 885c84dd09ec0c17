//! The command line: `calico-libnetwork` (serve, the default), and operator subcommands.
//!
//! The clap types live here; each command's body lives in `crate::commands`, one file
//! per command.

pub(crate) mod output;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::config::ConfigArgs;
use output::Output;

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
pub(crate) enum FirewallCommand {
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
pub(crate) enum EndpointCommand {
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

/// `pool` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum PoolCommand {
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
pub(crate) enum IpamCommand {
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
            Command::Status { output } => commands::status::run(&config, output).await,
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
