//! The key-value datastore under everything: a trait with two backends.
//!
//! - [`etcd::EtcdStore`]: etcd v3, the store Calico itself uses, shared between hosts.
//! - [`local::LocalStore`]: an embedded single-host store (redb) with the same revision
//!   semantics, for hosts with no etcd.
//! - [`remote::RemoteStore`]: the store of the plugin running on this host, through its
//!   socket (operator commands, while the plugin holds the embedded store's file).
//!
//! Every value carries the revision at which it was last modified (etcd's `mod_revision`).
//! Writes are conditional: create-if-absent, update-if-revision, delete(-if-revision), and a
//! transaction of several conditional writes that all apply or none do. Both backends pass
//! one conformance suite (`tests/inproc/datastore_conformance.rs`).
//!
//! Changes are watched, not polled: [`Datastore::list_with_revision`] reads a prefix at a
//! revision R, [`Datastore::watch`] gives every change under it after R, in revision order,
//! and [`watch::Watcher`] keeps that going across compaction and broken streams (a fresh
//! list, and the difference from what its consumer last saw).

pub mod etcd;
pub mod local;
pub mod remote;
pub mod resources;
pub mod watch;

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::error::{Error, Result};

/// A store revision. etcd's revisions are positive; 0 never names a stored value.
pub type Revision = i64;

/// One stored key with its value and the revision that last modified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key.
    pub key: String,
    /// The raw value (JSON for everything Calico stores).
    pub value: Vec<u8>,
    /// The revision of the last write to this key.
    pub revision: Revision,
}

/// Every key under a prefix and the store revision they were read at: a watch from that
/// revision (`after = revision`) misses no change and repeats none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The keys, in key order, as [`Datastore::list`] gives them.
    pub kvs: Vec<KeyValue>,
    /// The store's revision when they were read (at least that of every key listed).
    pub revision: Revision,
}

/// One change under a watched prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The key was created or replaced: its new value, at the revision of the write.
    Put(KeyValue),
    /// The key was deleted at `revision`.
    Delete { key: String, revision: Revision },
}

impl Event {
    /// The key changed.
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}

/// What [`Datastore::watch`] gives: batches of events (never empty) in revision order, the
/// events of one transaction in one batch. An `Err` ends it (nothing follows):
/// [`Error::Compacted`] when the store no longer keeps the changes asked for,
/// [`Error::Unavailable`] when the stream broke. Either way the answer is a fresh
/// [`Datastore::list_with_revision`] and a new watch from its revision, which is what
/// [`watch::Watcher`] does.
pub type WatchStream = futures::stream::BoxStream<'static, Result<Vec<Event>>>;

/// What must hold of a key for a [`Write`] in a transaction to go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Nothing is checked (an unconditional put or delete).
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist, at any revision.
    Present,
    /// The key must exist with exactly this revision.
    Revision(Revision),
}

/// One write inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The key written.
    pub key: String,
    /// The new value, or `None` to delete the key.
    pub value: Option<Vec<u8>>,
    /// The condition the key must meet.
    pub expect: Expect,
}

impl Write {
    /// Create `key` with `value`; fails as [`Error::Exists`] if it is present.
    pub fn create(key: impl Into<String>, value: Vec<u8>) -> Self {
        Write {
            key: key.into(),
            value: Some(value),
            expect: Expect::Absent,
        }
    }
    /// Replace `key` if its revision is still `rev`.
    pub fn update(key: impl Into<String>, value: Vec<u8>, rev: Revision) -> Self {
        Write {
            key: key.into(),
            value: Some(value),
            expect: Expect::Revision(rev),
        }
    }
    /// Delete `key` if its revision is still `rev`.
    pub fn delete(key: impl Into<String>, rev: Revision) -> Self {
        Write {
            key: key.into(),
            value: None,
            expect: Expect::Revision(rev),
        }
    }
    /// Write `key` whatever it holds.
    pub fn put(key: impl Into<String>, value: Vec<u8>) -> Self {
        Write {
            key: key.into(),
            value: Some(value),
            expect: Expect::Any,
        }
    }
    /// Create when `rev` is `None`, else update at `rev`.
    pub fn create_or_update(key: impl Into<String>, value: Vec<u8>, rev: Option<Revision>) -> Self {
        match rev {
            None => Write::create(key, value),
            Some(r) => Write::update(key, value, r),
        }
    }
}

/// Counters kept by every backend: one round trip per call to the store.
#[derive(Debug, Default)]
pub struct Stats {
    round_trips: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    deletes: AtomicU64,
    conflicts: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Calls that went to the store (a transaction counts once).
    pub round_trips: u64,
    /// Gets, lists and watches opened.
    pub reads: u64,
    /// Keys created or replaced.
    pub writes: u64,
    /// Keys deleted.
    pub deletes: u64,
    /// Conditional writes refused because the key had changed or existed.
    pub conflicts: u64,
}

impl StatsSnapshot {
    /// The difference `self - earlier`, for counting what one operation cost.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            round_trips: self.round_trips - earlier.round_trips,
            reads: self.reads - earlier.reads,
            writes: self.writes - earlier.writes,
            deletes: self.deletes - earlier.deletes,
            conflicts: self.conflicts - earlier.conflicts,
        }
    }
}

impl Stats {
    /// Counts one read round trip.
    pub fn read(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
    }
    /// Counts one transaction round trip with its writes and deletes.
    pub fn txn(&self, writes: &[Write]) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let deletes = writes.iter().filter(|w| w.value.is_none()).count() as u64;
        self.deletes.fetch_add(deletes, Ordering::Relaxed);
        self.writes
            .fetch_add(writes.len() as u64 - deletes, Ordering::Relaxed);
    }
    /// Counts a refused conditional write.
    pub fn conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }
    /// Reads all counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            round_trips: self.round_trips.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
        }
    }
}

/// The key-value store. Implementations are cheap to share (`Arc<dyn Datastore>`).
#[async_trait]
pub trait Datastore: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Lists every key under `prefix`, in key order. A `/` is appended to a prefix that
    /// lacks one, so `/a` lists `/a/x` but never `/ab`.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>>;

    /// Like [`Datastore::list`], with the store revision of the snapshot: the `after` of a
    /// [`Datastore::watch`] that must miss nothing. A backend without watches keeps this
    /// default, which says so.
    async fn list_with_revision(&self, prefix: &str) -> Result<Listing> {
        Err(no_watches(
            self.kind(),
            "list",
            prefix,
            " with its revision",
        ))
    }

    /// Watches every key under `prefix` (a directory, as for [`Datastore::list`]) for changes
    /// made after revision `after`; see [`WatchStream`]. Fails only when the store cannot
    /// be reached (or offers no watches: this default); a compacted `after` is the stream's
    /// first item. Dropping the stream ends the watch.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        // Named `after` (not `_after`) for the documentation; nothing to watch from here.
        let _ = after;
        Err(no_watches(self.kind(), "watch", prefix, ""))
    }

    /// Applies all `writes` atomically if every condition holds, returning the revision
    /// they were written at. Otherwise nothing is written and the error names the first
    /// key whose condition failed: [`Error::Exists`] (expected absent),
    /// [`Error::NotFound`] (expected a revision, key absent) or [`Error::Conflict`].
    async fn txn(&self, writes: Vec<Write>) -> Result<Revision>;

    /// Reads several keys; the answer is in the order of `keys`. A backend that can do it
    /// in one round trip (etcd: one read-only transaction) overrides this one-by-one default.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.get(k).await?);
        }
        Ok(out)
    }

    /// Lists several prefixes (as [`Datastore::list`] each); the answer is in the order of
    /// `prefixes`. A backend that can do it in one round trip (etcd: one read-only
    /// transaction, when each prefix fits in a page) overrides this one-by-one default.
    async fn list_many(&self, prefixes: &[String]) -> Result<Vec<Vec<KeyValue>>> {
        let mut out = Vec::with_capacity(prefixes.len());
        for p in prefixes {
            out.push(self.list(p).await?);
        }
        Ok(out)
    }

    /// Round-trip and conflict counters.
    fn stats(&self) -> &Stats;

    /// A short name for logs and errors: `etcdv3` or `local`.
    fn kind(&self) -> &'static str;

    /// Creates `key`; [`Error::Exists`] if present.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        self.txn(vec![Write::create(key, value)]).await
    }

    /// Replaces `key` if its revision is `rev`; [`Error::Conflict`] or [`Error::NotFound`].
    async fn update(&self, key: &str, value: Vec<u8>, rev: Revision) -> Result<Revision> {
        self.txn(vec![Write::update(key, value, rev)]).await
    }

    /// Writes `key` unconditionally.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        self.txn(vec![Write::put(key, value)]).await
    }

    /// Deletes `key`, if its revision is `rev` when given. [`Error::NotFound`] if absent.
    async fn delete(&self, key: &str, rev: Option<Revision>) -> Result<()> {
        let expect = match rev {
            Some(r) => Expect::Revision(r),
            // An unconditional delete still reports a missing key, like Calico's Delete.
            None => Expect::Present,
        };
        let w = Write {
            key: key.to_string(),
            value: None,
            expect,
        };
        self.txn(vec![w]).await.map(|_| ())
    }
}

/// The error of a backend that offers no watches.
fn no_watches(kind: &str, op: &str, prefix: &str, what: &str) -> Error {
    Error::msg(format!(
        "{op} {prefix}{what}: this {kind} datastore offers no watches"
    ))
}

/// Normalises a list prefix so that it ends in `/`.
pub(crate) fn dir_prefix(prefix: &str) -> String {
    if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// Decides which error a failed condition gives, from the key's current state.
pub(crate) fn condition_error(w: &Write, current: Option<Revision>) -> Option<Error> {
    let key = w.key.clone();
    match (w.expect, current) {
        (Expect::Any, _) => None,
        (Expect::Absent, None) => None,
        (Expect::Absent, Some(_)) => Some(Error::Exists { key }),
        (Expect::Present, Some(_)) => None,
        (Expect::Present, None) => Some(Error::NotFound { key }),
        (Expect::Revision(_), None) => Some(Error::NotFound { key }),
        (Expect::Revision(r), Some(c)) if r == c => None,
        (Expect::Revision(_), Some(_)) => Some(Error::Conflict { key }),
    }
}
