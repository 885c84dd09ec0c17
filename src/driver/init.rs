//! Start-up preparation of the datastore for this host: its Calico Node resource (tied to
//! this machine) with this host's address (see `node_address`), ClusterInformation `default`
//! (which Felix waits for) with Calico's Tiers, and the default IP pool of each family that
//! has none. Every step creates only what is missing and never overwrites, but for the
//! Node's address (kept current) and the `calicoVersion` earlier builds wrote.

use super::Driver;
use crate::datastore::{resources, Datastore};
use crate::error::Result;
use crate::model::keys;
use crate::model::resources::{ClusterInformationSpec, NodeSpec, OrchRef};
use crate::model::{ClusterInformation, IpPool, Node, Tier};

impl Driver {
    /// Prepares the datastore for this host: its Node resource, ClusterInformation, and
    /// each of `default_pools` whose family has no pool (see [`crate::ipam::default_pool`]).
    /// Idempotent.
    pub async fn init(&self, default_pools: &[IpPool]) -> Result<()> {
        let host = &self.settings.nodename;
        if ensure_node(self.store.as_ref(), host).await? {
            tracing::info!(node = %host, "created Calico Node resource");
            if let Some(path) = &self.settings.nodename_file {
                write_nodename_file(path, host);
            }
        }
        if let Some(mine) = &self.settings.machine_id {
            if let Some(other) = claim_node(self.store.as_ref(), host, mine).await? {
                tracing::error!(
                    node = %host, this_machine = %mine, other_machine = %other,
                    "another machine runs under this node name: clean-up of stale endpoints, veths and addresses is off until each host has its own NODENAME"
                );
                *self.foreign_owner.lock().unwrap() = Some(other);
            }
        }
        // Its address (spec.bgp), as calico-node writes it at start; a failure here leaves
        // the Node as it is until the next check (`keep_node_address_in_background`).
        match self.check_node_address().await {
            Ok(check)
                if check.ipv4.is_empty()
                    && check.ipv6.is_empty()
                    && check.not_found.is_empty()
                    && check.conflict.is_none() =>
            {
                tracing::info!(node = %host, "this host's Node has no address (IP and IP6 are none): other hosts cannot route to its containers");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(node = %host, error = %e, "write this host's address on its Node")
            }
        }
        let ci = ensure_cluster_information(self.store.as_ref()).await?;
        if ci == ClusterInfo::Created {
            tracing::info!("created ClusterInformation default");
        }
        // A datastore Calico has not initialised: the Tiers it creates with ClusterInformation,
        // so that policies can be created before calico-node ever ran (also after a start cut
        // short between the two).
        if ci != ClusterInfo::Calicos {
            for name in ensure_tiers(self.store.as_ref()).await? {
                tracing::info!(tier = %name, "created Tier");
            }
        }
        for name in self.ipam.ensure_default_pools(default_pools).await? {
            tracing::info!(pool = %name, "created default IP pool (no pool of its family existed)");
        }
        // The firewall rules are rebuilt by `keep_rules_in_background`, after the socket is
        // up: until then the rules of the running containers stay as they are.
        Ok(())
    }
}

/// Creates this host's Node resource if it is missing (never overwrites one).
/// Returns whether it was created.
pub async fn ensure_node(store: &dyn Datastore, host: &str) -> Result<bool> {
    let key = keys::node_key(host);
    if store.get(&key).await?.is_some() {
        return Ok(false);
    }
    let mut node = Node::new(
        host,
        NodeSpec {
            orch_refs: vec![OrchRef {
                node_name: host.to_string(),
                orchestrator: "libnetwork".to_string(),
            }],
            ..Default::default()
        },
    );
    match resources::create(store, &mut node).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_exists() => Ok(false),
        Err(e) => Err(e.context(format!("create Node {host}"))),
    }
}

/// Writes `host` to calico-node's nodename file, as calico-node does at start
/// (`WriteNodeConfig`: the bare name, mode 0644), unless the file exists (never overwritten)
/// or its directory does not (calico-node creates neither: `/var/lib/calico` is its mount).
/// Calico's CNI plugin and a later calico-node then use the same name. Failures are logged.
fn write_nodename_file(path: &std::path::Path, host: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .and_then(|mut f| f.write_all(host.as_bytes()));
    match written {
        Ok(()) => {
            tracing::info!(node = %host, file = %path.display(), "wrote the node name to calico-node's nodename file")
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(file = %path.display(), "no directory for calico-node's nodename file; not written")
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "write calico-node's nodename file")
        }
    }
}

/// Ties Node `host` to this machine (`machine_id`, from `/etc/machine-id`): records it
/// in the Node's annotation [`crate::model::MACHINE_ID_ANNOTATION`] when the Node has
/// none (compare-and-swap; Calico's fields untouched), and returns the other machine's ID
/// when the Node already names another one (two hosts with one node name: cloned VMs, a
/// copied configuration). `None` when the Node is this machine's or absent.
pub async fn claim_node(
    store: &dyn Datastore,
    host: &str,
    machine_id: &str,
) -> Result<Option<String>> {
    let mut other = None;
    resources::update_with::<NodeSpec, _>(store, &keys::node_key(host), |node| {
        let annotations = &mut node.metadata.annotations;
        match annotations.get(crate::model::MACHINE_ID_ANNOTATION) {
            Some(id) => {
                other = (id != machine_id).then(|| id.clone());
                false
            }
            None => {
                other = None;
                annotations.insert(
                    crate::model::MACHINE_ID_ANNOTATION.to_string(),
                    machine_id.to_string(),
                );
                true
            }
        }
    })
    .await
    .map_err(|e| e.context(format!("record machine-id on Node {host}")))?;
    Ok(other)
}

/// Whose ClusterInformation `default` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterInfo {
    /// Created just now, by this call.
    Created,
    /// Created by this plugin (its cluster type, no Calico version): Calico's own
    /// initialisation has not run on this datastore.
    Ours,
    /// Written or taken over by Calico (calico-node writes its version), or unreadable.
    Calicos,
}

/// The cluster type this plugin writes in the ClusterInformation it creates.
const CLUSTER_TYPE: &str = "libnetwork";

/// How earlier builds of this plugin filled `calicoVersion`, which calicoctl reads as
/// version "calico" and refuses to work with.
const OLD_VERSION_PREFIX: &str = "calico-libnetwork-";

/// Creates ClusterInformation `default` (which Felix waits for) if it is missing, with
/// `datastoreReady: true` and no `calicoVersion`: calicoctl compares that with its own version
/// and refuses every command on a mismatch, but skips the check when it is empty. One that
/// exists (calico-node's, or locked by `calicoctl datastore migrate lock`) is never changed,
/// except that the `calicoVersion` earlier builds of this plugin wrote is emptied.
pub async fn ensure_cluster_information(store: &dyn Datastore) -> Result<ClusterInfo> {
    let key = keys::cluster_information_key("default");
    if let Some(kv) = store.get(&key).await? {
        return match resources::decode::<ClusterInformationSpec>(&kv) {
            Ok(ci) if ours(&ci) && ci.spec.calico_version.starts_with(OLD_VERSION_PREFIX) => {
                clear_old_version(store, &key).await?;
                Ok(ClusterInfo::Ours)
            }
            Ok(ci) if ours(&ci) && ci.spec.calico_version.is_empty() => Ok(ClusterInfo::Ours),
            Ok(_) => Ok(ClusterInfo::Calicos),
            Err(e) => {
                tracing::warn!(error = %e, "ClusterInformation default does not decode; left as it is");
                Ok(ClusterInfo::Calicos)
            }
        };
    }
    let mut ci = ClusterInformation::new(
        "default",
        ClusterInformationSpec {
            cluster_guid: uuid::Uuid::new_v4().simple().to_string(),
            cluster_type: CLUSTER_TYPE.to_string(),
            datastore_ready: Some(true),
            ..Default::default()
        },
    );
    match resources::create(store, &mut ci).await {
        Ok(_) => Ok(ClusterInfo::Created),
        // Another host (or calico-node) created it meanwhile: whose it is decides.
        Err(e) if e.is_exists() => Box::pin(ensure_cluster_information(store)).await,
        Err(e) => Err(e.context("create ClusterInformation default")),
    }
}

/// Whether this plugin created `ci` (its cluster type; calico-node adds its own types).
fn ours(ci: &ClusterInformation) -> bool {
    ci.spec.cluster_type == CLUSTER_TYPE
}

/// Empties the `calicoVersion` an earlier build of this plugin wrote (compare-and-swap, every
/// other field kept); a version calico-node wrote meanwhile stays.
async fn clear_old_version(store: &dyn Datastore, key: &str) -> Result<()> {
    let cleared = resources::update_with::<ClusterInformationSpec, _>(store, key, |ci| {
        let old = ci.spec.calico_version.starts_with(OLD_VERSION_PREFIX);
        if old {
            ci.spec.calico_version.clear();
        }
        old
    })
    .await
    .map_err(|e| e.context("clear this plugin's calicoVersion in ClusterInformation default"))?;
    if cleared {
        tracing::info!("emptied the calicoVersion an earlier build of this plugin wrote in ClusterInformation default (calicoctl refused to work with it)");
    }
    Ok(())
}

/// Creates each Tier of [`Tier::calico_defaults`] that is missing (never changing one that
/// exists). Returns the names created.
pub async fn ensure_tiers(store: &dyn Datastore) -> Result<Vec<String>> {
    let mut created = Vec::new();
    for mut tier in Tier::calico_defaults() {
        let name = tier.name().to_string();
        match resources::create(store, &mut tier).await {
            Ok(_) => created.push(name),
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(e.context(format!("create Tier {name}"))),
        }
    }
    Ok(created)
}
