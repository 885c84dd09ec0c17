//! `ipam show` (per pool and per block: size, used, free, affinity) and `ipam check`
//! (inconsistencies, see [`check`]).

mod allocations;
pub(crate) mod check;
mod handles;
pub(crate) mod report;

use crate::commands::output::{header, print_json, table, Output};
use crate::config::Config;
use crate::error::Result;
use crate::ipam::Ipam;

use super::open_datastore_for_command;
use check::ipam_check;
use report::{CheckOptions, CheckReport};

/// `ipam` subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum IpamCommand {
    /// Per pool and per block: size, used, free, affinity.
    Show {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Find allocations without an endpoint, endpoints without an allocation, handles that
    /// disagree with blocks, and `cali*` veths without an endpoint (exit 1 if any remain),
    /// among this host's records (or --node's, or with --all-hosts every host's).
    Check {
        /// Fix the safe ones, of this host's records (or --node's): release orphan
        /// allocations older than --grace, set handle counts from the blocks, delete orphan
        /// veths.
        #[arg(long)]
        repair: bool,
        /// Check every host's records (--repair still fixes only this host's, or --node's).
        #[arg(long)]
        all_hosts: bool,
        /// Check (and with --repair, fix) this node's records instead of this host's. With
        /// --repair, refused unless its heartbeat has lapsed (`status --all-hosts` shows it
        /// dead).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
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

/// Runs an `ipam` subcommand; returns the exit code (`check`: 1 when inconsistencies
/// remain).
pub(crate) async fn run(config: &Config, cmd: IpamCommand) -> Result<i32> {
    let store = open_datastore_for_command(config).await?;
    match cmd {
        IpamCommand::Check {
            repair,
            all_hosts,
            node,
            grace,
            no_veths,
            output,
        } => {
            let opts = CheckOptions {
                target: node.unwrap_or_else(|| config.nodename.clone()),
                nodename: config.nodename.clone(),
                all_hosts,
                repair,
                grace,
                check_veths: !no_veths,
                machine_id: crate::model::machine_id(),
                heartbeat_interval: config.heartbeat_interval,
            };
            let report = ipam_check(store, &opts).await?;
            if output == Output::Json {
                print_json(&report);
            } else {
                print_check(&report);
            }
            Ok(i32::from(report.unresolved() > 0))
        }
        IpamCommand::Show { output } => {
            show(&Ipam::new(store), output).await?;
            Ok(0)
        }
    }
}

fn print_check(report: &CheckReport) {
    if !report.findings.is_empty() {
        let mut rows = vec![header(&["KIND", "NODE", "OBJECT", "DETAIL", "ACTION"])];
        for f in &report.findings {
            rows.push(vec![
                f.kind.to_string(),
                f.node.clone().unwrap_or_else(|| "-".to_string()),
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
    let unresolved = report.unresolved();
    let repaired = report.findings.len() - unresolved;
    println!(
        "{} inconsistencies found, {repaired} repaired, {unresolved} left ({})",
        report.findings.len(),
        report.scope
    );
}

async fn show(ipam: &Ipam, output: Output) -> Result<()> {
    let summary = ipam.summary().await?;
    if output == Output::Json {
        print_json(&summary);
        return Ok(());
    }
    let mut rows = vec![header(&[
        "POOL/BLOCK",
        "CIDR",
        "SIZE",
        "USED",
        "FREE",
        "AFFINITY",
    ])];
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
    Ok(())
}
