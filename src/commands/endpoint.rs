//! `endpoint list`: this host's (or every host's) container endpoints.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::commands::output::{header, print_json, table, Output};
use crate::config::Config;
use crate::datastore::resources;
use crate::datastore::Datastore;
use crate::error::Result;
use crate::model::libnetwork::{
    fallback_profile, NetworkRecord, CONTAINER_ANNOTATION, WEP_NAMESPACE,
};
use crate::model::resources::NodeSpec;
use crate::model::{keys, WorkloadEndpoint};

use super::open_datastore_for_command;
use super::status::node_addresses;

/// `endpoint` subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum EndpointCommand {
    /// Endpoint, container name (Docker 29+), network/profile, addresses, interface,
    /// container MAC, labels (CALICO_LIBNETWORK_LABEL_ENDPOINTS).
    List {
        /// Every host's endpoints, not only this node's, with the node and its address.
        #[arg(long)]
        all_hosts: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// One endpoint, for `endpoint list`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct EndpointRow {
    /// Docker's endpoint ID.
    pub(crate) endpoint: String,
    /// The WorkloadEndpoint's name.
    pub(crate) name: String,
    /// The container's name, when Docker gave it (Docker 29 and later).
    pub(crate) container: Option<String>,
    /// The node it is on.
    pub(crate) node: String,
    /// That node's address (its Node's `spec.bgp` IPv4 and IPv6 addresses, comma-separated),
    /// which other hosts route to it by; `None` when its Node has none, or does not exist.
    pub(crate) host_address: Option<String>,
    /// The Docker network (name once known, else its ID), when profiles tell.
    pub(crate) network: Option<String>,
    /// Calico profiles.
    pub(crate) profiles: Vec<String>,
    /// Addresses (CIDRs).
    pub(crate) addresses: Vec<String>,
    /// Host-side interface.
    pub(crate) interface: String,
    /// The container interface's MAC.
    pub(crate) mac: String,
    /// The WorkloadEndpoint's labels (the container's `org.projectcalico.label.*` ones,
    /// with `CALICO_LIBNETWORK_LABEL_ENDPOINTS`), without Calico's own `projectcalico.org/*`.
    pub(crate) labels: BTreeMap<String, String>,
}

/// The prefix of the labels Calico itself puts on every WorkloadEndpoint (namespace,
/// orchestrator): not shown.
const CALICO_LABEL_PREFIX: &str = "projectcalico.org/";

/// Runs `endpoint list`; returns the exit code.
pub(crate) async fn run(config: &Config, cmd: EndpointCommand) -> Result<i32> {
    let EndpointCommand::List { all_hosts, output } = cmd;
    let store = open_datastore_for_command(config).await?;
    let node = (!all_hosts).then_some(config.nodename.as_str());
    let rows = endpoints(store.as_ref(), node).await?;
    if output == Output::Json {
        print_json(&rows);
    } else {
        print!("{}", table(table_rows(rows, all_hosts)));
    }
    Ok(0)
}

/// Our WorkloadEndpoints: this node's (`node = Some`) or every host's.
pub(crate) async fn endpoints(
    store: &dyn Datastore,
    node: Option<&str>,
) -> Result<Vec<EndpointRow>> {
    let weps: Vec<WorkloadEndpoint> = resources::list(store, Some(WEP_NAMESPACE)).await?;
    let by_profile = networks_by_profile(store).await?;
    let addresses: HashMap<String, String> = resources::list::<NodeSpec>(store, None)
        .await?
        .iter()
        .map(|n| (n.name().to_string(), node_addresses(n)))
        .filter(|(_, a)| !a.is_empty())
        .collect();
    let mut rows: Vec<EndpointRow> = weps
        .into_iter()
        .filter(|w| node.is_none_or(|n| w.spec.node == n))
        .map(|w| EndpointRow {
            network: w
                .spec
                .profiles
                .iter()
                .find_map(|p| by_profile.get(p).cloned()),
            endpoint: w.spec.endpoint.clone(),
            name: w.name().to_string(),
            container: w.metadata.annotations.get(CONTAINER_ANNOTATION).cloned(),
            host_address: addresses.get(&w.spec.node).cloned(),
            node: w.spec.node.clone(),
            profiles: w.spec.profiles.clone(),
            addresses: w.spec.ip_networks.clone(),
            interface: w.spec.interface_name.clone(),
            mac: w.spec.mac.clone(),
            labels: w
                .metadata
                .labels
                .iter()
                .filter(|(k, _)| !k.starts_with(CALICO_LABEL_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
        .collect();
    rows.sort_by(|a, b| (&a.node, &a.endpoint).cmp(&(&b.node, &b.endpoint)));
    Ok(rows)
}

/// Profile name → the network it stands for (its name once known, else its ID), from the
/// plugin's network records.
async fn networks_by_profile(store: &dyn Datastore) -> Result<HashMap<String, String>> {
    let mut by_profile: HashMap<String, String> = HashMap::new();
    for kv in store.list(&keys::networks_prefix()).await? {
        let Ok(rec) = serde_json::from_slice::<NetworkRecord>(&kv.value) else {
            continue;
        };
        let label = if rec.name.is_empty() {
            rec.network_id.clone()
        } else {
            rec.name.clone()
        };
        if !rec.profile.is_empty() {
            by_profile.insert(rec.profile.clone(), label.clone());
        }
        by_profile
            .entry(fallback_profile(&rec.network_id))
            .or_insert(label);
    }
    Ok(by_profile)
}

/// `k=v,...`, escaped (stored text), or `-` when there is none.
fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_string();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{}={}", k.escape_default(), v.escape_default()))
        .collect::<Vec<_>>()
        .join(",")
}

fn table_rows(rows: Vec<EndpointRow>, all_hosts: bool) -> Vec<Vec<String>> {
    let mut head = vec![
        "ENDPOINT",
        "CONTAINER",
        "NETWORK",
        "PROFILES",
        "ADDRESSES",
        "INTERFACE",
        "MAC",
        "LABELS",
    ];
    if all_hosts {
        head.splice(1..1, ["NODE", "HOST ADDRESS"]);
    }
    let mut out = vec![header(&head)];
    for r in rows {
        let short = r.endpoint.chars().take(12).collect::<String>();
        let mut row = vec![
            short,
            // Stored text: shown escaped, so a record cannot write to the terminal.
            r.container
                .map(|c| c.escape_default().to_string())
                .unwrap_or_else(|| "-".to_string()),
            r.network.unwrap_or_else(|| "-".to_string()),
            if r.profiles.is_empty() {
                "-".to_string()
            } else {
                r.profiles.join(",")
            },
            r.addresses.join(","),
            r.interface,
            r.mac,
            labels_text(&r.labels),
        ];
        if all_hosts {
            let address = r.host_address.unwrap_or_else(|| "-".to_string());
            row.splice(1..1, [r.node, address]);
        }
        out.push(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_shown_escaped_in_key_order_or_a_dash() {
        assert_eq!(labels_text(&BTreeMap::new()), "-");
        let labels: BTreeMap<String, String> = [("tier", "db"), ("app", "shop\u{1b}[2J")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(labels_text(&labels), "app=shop\\u{1b}[2J,tier=db");
    }
}
