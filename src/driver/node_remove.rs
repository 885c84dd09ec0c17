//! Removing a node that is gone for good (`calico-libnetwork node remove <name>`): what
//! Calico's `calicoctl delete node` does for a Node (libcalico-go `clientv3/node.go`,
//! `nodes.Delete`), with IPAM released as calico-kube-controllers' garbage collection
//! releases a deleted node's addresses: every allocation naming the node (workloads and
//! tunnel addresses) with its handle, its block affinities (`RemoveIPAMHost`), its
//! WorkloadEndpoints, the resources Calico keeps for a node (BGPPeers and HostEndpoints
//! whose `spec.node` names it, FelixConfiguration and BGPConfiguration `node.<name>`), and
//! last the Node itself.
//!
//! The plugin's own records under `/calico/libnetwork/v1/` (networks, pools) are shared by
//! every host, none is a node's: nothing of them goes.
//!
//! A node whose plugin is likely running ([`Liveness::Alive`]: its heartbeat, see
//! `heartbeat`, is younger than three heartbeat intervals: [`fresh_for`](super::heartbeat::fresh_for)) is
//! not removed unless forced: it would allocate again at once, and its containers would lose
//! their endpoints.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::heartbeat::{alive_refusal, liveness, Liveness};
use super::tunnel::TunnelKind;
use crate::datastore::{resources, Datastore};
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::model::keys;
use crate::model::resources::{NodeSpec, WorkloadEndpointSpec};
use crate::model::{Node, WorkloadEndpoint};

/// What [`remove_node`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeRemoval {
    /// The node's name.
    pub node: String,
    /// IPAM addresses released (workloads' and tunnel addresses).
    pub addresses: usize,
    /// IPAM handles released.
    pub handles: usize,
    /// Block affinities released.
    pub affinities: usize,
    /// WorkloadEndpoints deleted.
    pub workload_endpoints: usize,
    /// The node's own configuration deleted, by key: BGPPeers and HostEndpoints naming it,
    /// FelixConfiguration and BGPConfiguration `node.<name>`.
    pub node_resources: Vec<String>,
}

/// Removes node `name` and everything the datastore holds for it (see the module
/// documentation). Refuses, changing nothing, when the Node does not exist
/// ([`Error::NotFound`]) or its heartbeat, renewed every `heartbeat_interval` by a running
/// plugin, is fresh and `force` is not set. Each step tolerates what an earlier,
/// interrupted run already removed.
pub async fn remove_node(
    store: &Arc<dyn Datastore>,
    name: &str,
    force: bool,
    heartbeat_interval: Duration,
) -> Result<NodeRemoval> {
    let ctx = |e: Error| e.context(format!("remove node {name}"));
    let key = keys::node_key(name);
    let node = resources::get::<NodeSpec>(store.as_ref(), &key)
        .await
        .map_err(ctx)?
        .ok_or_else(|| {
            ctx(Error::NotFound {
                key: format!("Node {name}"),
            })
        })?;
    refuse_if_running(&node, force, heartbeat_interval).map_err(ctx)?;

    let ipam = Ipam::new(store.clone());
    let released = ipam.release_host(name).await.map_err(ctx)?;
    let mut out = NodeRemoval {
        node: name.to_string(),
        addresses: released.addresses,
        handles: released.handles,
        affinities: released.affinities,
        workload_endpoints: 0,
        node_resources: Vec::new(),
    };
    // Tunnel handles left without an address (a count the blocks no longer back).
    for kind in TunnelKind::ALL {
        match ipam.release_by_handle(&kind.handle(name)).await {
            Ok(()) => out.handles += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(ctx(e)),
        }
    }

    // `nodes.Delete` lists by the name prefix and checks `spec.node` (another node's name
    // may begin with this one's); every namespace, Calico's own orchestrators' too.
    let weps: Vec<WorkloadEndpoint> = resources::list::<WorkloadEndpointSpec>(store.as_ref(), None)
        .await
        .map_err(ctx)?;
    for wep in weps.iter().filter(|w| w.spec.node == name) {
        let key = wep.key().map_err(ctx)?;
        match store.delete(&key, wep.metadata.revision()).await {
            Ok(()) => out.workload_endpoints += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(ctx(e.context(format!("delete {key}")))),
        }
    }

    // What `nodes.Delete` deletes besides: the node's BGPPeers and HostEndpoints (by
    // `spec.node`) and its own FelixConfiguration and BGPConfiguration.
    for plural in [keys::PLURAL_BGP_PEERS, keys::PLURAL_HOST_ENDPOINTS] {
        for kv in store
            .list(&keys::resource_prefix(plural, None))
            .await
            .map_err(ctx)?
        {
            if spec_node(&kv.value).as_deref() == Some(name) {
                delete_config(store.as_ref(), &kv.key, Some(kv.revision), &mut out)
                    .await
                    .map_err(ctx)?;
            }
        }
    }
    for plural in [
        keys::PLURAL_FELIX_CONFIGURATIONS,
        keys::PLURAL_BGP_CONFIGURATIONS,
    ] {
        let key = keys::resource_key(plural, None, &format!("node.{name}"));
        delete_config(store.as_ref(), &key, None, &mut out)
            .await
            .map_err(ctx)?;
    }

    // Last the Node, as read: if its plugin renewed the heartbeat meanwhile, check again.
    let mut node = node;
    for _ in 0..resources::UPDATE_ATTEMPTS {
        match store.delete(&key, node.metadata.revision()).await {
            Ok(()) => return Ok(out),
            Err(e) if e.is_not_found() => return Ok(out),
            Err(e) if e.is_conflict() => {
                let Some(again) = resources::get::<NodeSpec>(store.as_ref(), &key)
                    .await
                    .map_err(ctx)?
                else {
                    return Ok(out);
                };
                refuse_if_running(&again, force, heartbeat_interval).map_err(ctx)?;
                node = again;
            }
            Err(e) => return Err(ctx(e.context(format!("delete {key}")))),
        }
    }
    Err(ctx(Error::msg(format!(
        "delete {key}: still conflicting after {} attempts",
        resources::UPDATE_ATTEMPTS
    ))))
}

/// The `spec.node` of a resource's JSON, when it has one (a BGPPeer's, a HostEndpoint's).
fn spec_node(value: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    v.get("spec")?.get("node")?.as_str().map(str::to_string)
}

/// Deletes `key` (at `revision` when given) and counts it in `out`; one already gone is
/// not an error (an interrupted earlier run).
async fn delete_config(
    store: &dyn Datastore,
    key: &str,
    revision: Option<crate::datastore::Revision>,
    out: &mut NodeRemoval,
) -> Result<()> {
    match store.delete(key, revision).await {
        Ok(()) => {
            out.node_resources.push(key.to_string());
            Ok(())
        }
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.context(format!("delete {key}"))),
    }
}

/// Refuses a Node whose plugin is likely running ([`Liveness::Alive`]), unless `force`. A
/// Node without a heartbeat (calico-node's, or from before heartbeats) is not running a
/// plugin that renews one: removed.
fn refuse_if_running(node: &Node, force: bool, interval: Duration) -> Result<()> {
    let now = Utc::now();
    if force || liveness(node, now, interval) != Liveness::Alive {
        return Ok(());
    }
    Err(alive_refusal(node, now, interval, ", or use --force"))
}
