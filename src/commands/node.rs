//! `node remove`: removes a node that is gone for good, and everything the datastore holds
//! for it (see `driver::node_remove`).

use crate::commands::output::{print_json, Output};
use crate::config::Config;
use crate::driver::node_remove::{remove_node, NodeRemoval};
use crate::error::Result;

use super::open_datastore_for_command;

/// `node` subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum NodeCommand {
    /// Remove a node that is gone for good: its IPAM addresses (workloads' and tunnel
    /// addresses) and handles, its block affinities, its WorkloadEndpoints, its BGPPeers,
    /// HostEndpoints, FelixConfiguration and BGPConfiguration, and its Node.
    /// Refused while the node's plugin renews its heartbeat (in the last three
    /// CALICO_LIBNETWORK_HEARTBEAT_INTERVALs: 90 s by default).
    Remove {
        /// The node's name.
        name: String,
        /// Remove it even though its heartbeat is recent (its plugin may be running).
        #[arg(long)]
        force: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// Runs a `node` subcommand; returns the exit code.
pub(crate) async fn run(config: &Config, cmd: NodeCommand) -> Result<i32> {
    let NodeCommand::Remove {
        name,
        force,
        output,
    } = cmd;
    let store = open_datastore_for_command(config).await?;
    let removed = remove_node(&store, &name, force, config.heartbeat_interval).await?;
    if output == Output::Json {
        print_json(&removed);
    } else {
        print!("{}", summary(&removed));
    }
    Ok(0)
}

/// What was removed, one line per kind of record.
fn summary(r: &NodeRemoval) -> String {
    let mut s = format!(
        "removed node {}\n  addresses released:         {}\n  handles released:           {}\n  block affinities released:  {}\n  workload endpoints deleted: {}\n",
        r.node, r.addresses, r.handles, r.affinities, r.workload_endpoints
    );
    for key in &r.node_resources {
        s.push_str(&format!("  deleted {key}\n"));
    }
    s
}
