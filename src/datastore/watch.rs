//! Following a prefix of the datastore: a list, then a watch from the list's revision, and
//! the same again whenever the watch ends, so that a consumer never misses a change.
//!
//! [`Watcher`] remembers, for each key under its prefix, the revision its consumer last saw
//! (the key and one number: small for thousands of keys; values are not kept). When the
//! watch ends (etcd compacted the revisions it needed, the connection broke, etcd
//! restarted) or periodically, it lists again and gives the difference from that memory:
//! a put for each key new or changed, a delete for each key gone. Then it watches on from
//! the new list's revision.
//!
//! ```ignore
//! let mut w = Watcher::new(store, "/calico/ipam/v2/host-affinity/");
//! loop {
//!     match w.next().await {
//!         Ok(Update::Events(events)) => apply(events),
//!         Ok(Update::Resynced { diff, .. }) => apply(diff),
//!         // The store is out of reach: the next call retries, after a pause.
//!         Err(e) => tracing::warn!(error = %e, "follow affinities"),
//!     }
//! }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::{dir_prefix, Datastore, Event, Revision, WatchStream};
use crate::error::{Error, Result};

/// Why a [`Watcher`] listed again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resync {
    /// The first list: every key is new to the consumer.
    Start,
    /// The store no longer kept the changes the watch needed.
    Compacted,
    /// The watch stream broke (connection lost, etcd restarted or cancelled it).
    Broken,
    /// The periodic check ([`Watcher::resync_every`]).
    Periodic,
}

/// What [`Watcher::next`] gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Changes as they were made, in revision order.
    Events(Vec<Event>),
    /// A fresh list at `revision`: `diff` turns what the consumer last saw into the store's
    /// state at that revision (puts for new or changed keys in key order, then deletes for
    /// keys gone, at `revision` since the moment they went is unknown). Empty when nothing
    /// was missed.
    Resynced {
        reason: Resync,
        revision: Revision,
        diff: Vec<Event>,
    },
}

/// First pause before listing again after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between attempts while the store is out of reach.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Follows every key under a prefix; see the module's documentation.
pub struct Watcher {
    store: Arc<dyn Datastore>,
    prefix: String,
    /// Each key the consumer knows, with the revision it saw.
    seen: HashMap<String, Revision>,
    /// The revision the consumer's view is at.
    revision: Revision,
    stream: Option<WatchStream>,
    /// Why the next call must list again (`None` while the watch runs).
    pending: Option<Resync>,
    /// Failed attempts since the last success.
    failures: u32,
    retry_at: Option<Instant>,
    every: Option<Duration>,
    periodic_at: Option<Instant>,
}

/// What ended a wait for the watch stream.
enum Woken {
    Item(Option<Result<Vec<Event>>>),
    Periodic,
}

impl Watcher {
    /// A watcher of `prefix` (a directory, as for [`Datastore::list`]); its first
    /// [`Watcher::next`] lists it ([`Resync::Start`], every key a put).
    pub fn new(store: Arc<dyn Datastore>, prefix: &str) -> Self {
        Watcher {
            store,
            prefix: dir_prefix(prefix),
            seen: HashMap::new(),
            revision: 0,
            stream: None,
            pending: Some(Resync::Start),
            failures: 0,
            retry_at: None,
            every: None,
            periodic_at: None,
        }
    }

    /// A watcher that carries on from a state its consumer already has: `known` (each key
    /// with the revision seen) at `revision`, e.g. from its own
    /// [`Datastore::list_with_revision`]. Its first [`Watcher::next`] watches from
    /// `revision`; if the store no longer keeps that history, it lists and gives the diff
    /// ([`Resync::Compacted`]).
    pub fn resume(
        store: Arc<dyn Datastore>,
        prefix: &str,
        known: impl IntoIterator<Item = (String, Revision)>,
        revision: Revision,
    ) -> Self {
        Watcher {
            seen: known.into_iter().collect(),
            revision,
            pending: None,
            ..Watcher::new(store, prefix)
        }
    }

    /// Lists again every `every` as well ([`Resync::Periodic`]), a check that costs one list.
    pub fn resync_every(mut self, every: Duration) -> Self {
        self.every = Some(every);
        self
    }

    /// The prefix followed (ending in `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The store revision the consumer's view is at (0 before the first list).
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// How many keys the consumer knows of.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when the consumer knows of no key.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The revision at which the consumer saw `key` last, if it knows of it.
    pub fn seen(&self, key: &str) -> Option<Revision> {
        self.seen.get(key).copied()
    }

    /// The next changes. An error means the store is out of reach (the list or the new
    /// watch failed); the next call tries again, after a pause that grows with each
    /// failure. Cancel-safe: dropping the future loses nothing (use it in `select!`).
    pub async fn next(&mut self) -> Result<Update> {
        loop {
            if let Some(reason) = self.pending {
                if let Some(at) = self.retry_at {
                    tokio::time::sleep_until(at).await;
                }
                return match self.resync(reason).await {
                    Ok(update) => Ok(update),
                    Err(e) => Err(self.failed(e)),
                };
            }
            if self.stream.is_none() {
                // Resuming from a known state: watch on from its revision.
                match self.store.watch(&self.prefix, self.revision).await {
                    Ok(stream) => {
                        self.stream = Some(stream);
                        self.periodic_at = self.every.map(|d| Instant::now() + d);
                    }
                    Err(e) => {
                        self.pending = Some(Resync::Broken);
                        return Err(self.failed(e));
                    }
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let woken = match self.periodic_at {
                Some(at) => tokio::select! {
                    item = stream.next() => Woken::Item(item),
                    _ = tokio::time::sleep_until(at) => Woken::Periodic,
                },
                None => Woken::Item(stream.next().await),
            };
            match woken {
                Woken::Item(Some(Ok(events))) => {
                    self.apply(&events);
                    return Ok(Update::Events(events));
                }
                Woken::Item(Some(Err(e))) => {
                    let reason = if e.is_compacted() {
                        Resync::Compacted
                    } else {
                        Resync::Broken
                    };
                    tracing::warn!(prefix = %self.prefix, error = %e, "watch ended; listing again");
                    self.restart(reason);
                }
                Woken::Item(None) => {
                    tracing::warn!(prefix = %self.prefix, "watch ended without a reason; listing again");
                    self.restart(Resync::Broken);
                }
                Woken::Periodic => self.restart(Resync::Periodic),
            }
        }
    }

    /// Counts a failed attempt and sets the pause before the next.
    fn failed(&mut self, e: Error) -> Error {
        self.failures += 1;
        self.retry_at = Some(Instant::now() + backoff(self.failures));
        e.context(format!("follow {}", self.prefix))
    }

    fn restart(&mut self, reason: Resync) {
        self.stream = None;
        self.pending = Some(reason);
    }

    fn apply(&mut self, events: &[Event]) {
        for e in events {
            match e {
                Event::Put(kv) => {
                    self.seen.insert(kv.key.clone(), kv.revision);
                }
                Event::Delete { key, .. } => {
                    self.seen.remove(key);
                }
            }
            self.revision = self.revision.max(e.revision());
        }
    }

    /// Lists, opens the watch from the list's revision, and only then changes any state
    /// (so a failure, or a dropped future, leaves the watcher as it was).
    async fn resync(&mut self, reason: Resync) -> Result<Update> {
        let listing = self.store.list_with_revision(&self.prefix).await?;
        let stream = self.store.watch(&self.prefix, listing.revision).await?;
        let mut seen = HashMap::with_capacity(listing.kvs.len());
        let mut diff = Vec::new();
        for kv in listing.kvs {
            let changed = self.seen.get(&kv.key) != Some(&kv.revision);
            seen.insert(kv.key.clone(), kv.revision);
            if changed {
                diff.push(Event::Put(kv));
            }
        }
        let mut gone: Vec<&String> = self
            .seen
            .keys()
            .filter(|k| !seen.contains_key(*k))
            .collect();
        gone.sort();
        diff.extend(gone.into_iter().map(|key| Event::Delete {
            key: key.clone(),
            revision: listing.revision,
        }));
        seen.shrink_to_fit();
        self.seen = seen;
        self.revision = listing.revision;
        self.stream = Some(stream);
        self.pending = None;
        self.failures = 0;
        self.retry_at = None;
        self.periodic_at = self.every.map(|d| Instant::now() + d);
        Ok(Update::Resynced {
            reason,
            revision: listing.revision,
            diff,
        })
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("store", &self.store.kind())
            .field("prefix", &self.prefix)
            .field("keys", &self.seen.len())
            .field("revision", &self.revision)
            .field("pending", &self.pending)
            .field("failures", &self.failures)
            .finish()
    }
}

/// The pause before attempt `failures + 1`.
fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        let got: Vec<u128> = (1..=7).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(got, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
