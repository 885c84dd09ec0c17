//! The plugin's heartbeat on this host's Node: the annotation [`HEARTBEAT_ANNOTATION`], an
//! RFC 3339 UTC time renewed every [`HEARTBEAT_INTERVAL`] by the node-address loop
//! ([`Driver::keep_node_address_in_background`]). `calico-libnetwork node remove` refuses to
//! remove a Node whose heartbeat is younger than [`HEARTBEAT_FRESH`] (its plugin is likely
//! running). An annotation is metadata: Calico's shape of the Node is untouched, and the
//! write is a compare-and-swap of the Node as read, keeping every other field.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use super::Driver;
use crate::datastore::resources;
use crate::error::Result;
use crate::model::keys;
use crate::model::resources::NodeSpec;
use crate::model::Node;

/// The annotation on a Node with the last time its plugin said it was running.
pub const HEARTBEAT_ANNOTATION: &str = "calico-libnetwork/heartbeat";

/// How often the plugin renews its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// A heartbeat younger than this (three renewals) says the Node's plugin is running.
pub const HEARTBEAT_FRESH: Duration = Duration::from_secs(3 * HEARTBEAT_INTERVAL.as_secs());

/// The heartbeat of `node`, if it has one that parses.
pub fn heartbeat_of(node: &Node) -> Option<DateTime<Utc>> {
    let raw = node.metadata.annotations.get(HEARTBEAT_ANNOTATION)?;
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The heartbeat's text for `at` (`2025-06-01T12:00:00Z`).
pub fn heartbeat_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Driver {
    /// Writes the current time as this host's heartbeat on its Node. Returns whether it
    /// wrote: not when the Node does not exist (it is never created here: a removed Node
    /// stays removed until the plugin starts again), nor when another machine runs under
    /// this node name (the Node is that machine's).
    pub async fn renew_heartbeat(&self) -> Result<bool> {
        let host = &self.settings.nodename;
        if self.foreign_owner.lock().unwrap().is_some() {
            return Ok(false);
        }
        // A datastore migration lock (datastoreReady false) holds every write.
        self.check_ready().await?;
        let now = heartbeat_text(Utc::now());
        resources::update_with::<NodeSpec, _>(self.store.as_ref(), &keys::node_key(host), |n| {
            n.metadata
                .annotations
                .insert(HEARTBEAT_ANNOTATION.to_string(), now.clone());
            true
        })
        .await
        .map_err(|e| e.context(format!("renew the heartbeat on Node {host}")))
    }
}
