//! `pool list`, `pool add`, `pool delete`: Calico IP pools.

use crate::commands::output::{header, print_json, table, Output};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::model::{IpPool, IpPoolSpec};

use super::open_datastore_for_command;

/// `pool` subcommands.
#[derive(clap::Subcommand, Debug)]
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

/// Runs a `pool` subcommand; returns the exit code.
pub(crate) async fn run(config: &Config, cmd: PoolCommand) -> Result<i32> {
    let ipam = Ipam::new(open_datastore_for_command(config).await?);
    match cmd {
        PoolCommand::List { output } => list(&ipam, output).await?,
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
            let net: ipnet::IpNet = cidr
                .parse()
                .map_err(|_| Error::invalid(format!("add pool {name}: invalid CIDR '{cidr}'")))?;
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

async fn list(ipam: &Ipam, output: Output) -> Result<()> {
    let pools = ipam.list_pools().await?;
    if output == Output::Json {
        let v: Vec<serde_json::Value> = pools
            .iter()
            .map(|p| serde_json::json!({"name": p.name(), "spec": p.spec}))
            .collect();
        print_json(&v);
        return Ok(());
    }
    let mut rows = vec![header(&[
        "NAME", "CIDR", "BLOCK", "IPIP", "VXLAN", "NAT", "DISABLED", "SELECTOR",
    ])];
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
    Ok(())
}
