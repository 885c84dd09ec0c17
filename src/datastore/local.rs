//! The embedded single-host store: a redb file with etcd's revision semantics.
//!
//! One table maps each key to `revision (8 bytes, little endian) ++ value`; a second holds
//! the store-wide revision counter, bumped once per committed transaction, exactly like
//! etcd's. redb serialises write transactions, so each conditional transaction checks its
//! conditions and writes under one lock, and commits durably before answering.
//!
//! Watches: the issue of watching says the embedded store "needs none" (one host, so no
//! routes to other hosts to follow), but it offers them anyway, as an in-process broadcast
//! of its own writes. That is complete, not a shortcut: redb locks the file for one process,
//! so every write to it goes through this process's [`LocalStore`] (commands reach it
//! through the plugin's socket). It costs a bounded copy of the recent changes
//! ([`HISTORY_CHANGES`], [`HISTORY_BYTES`]), which lets a watch start from a list's
//! revision of a moment ago; older revisions are compacted, as in etcd, and
//! [`super::watch::Watcher`] lists again. So consumers need no second code path, and the
//! conformance suite holds both backends to one meaning of a watch.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use async_trait::async_trait;
use futures::StreamExt;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    condition_error, dir_prefix, Datastore, Event, KeyValue, Listing, Revision, Stats, WatchStream,
    Write,
};
use crate::error::{Error, Result};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

/// Most transactions kept for watches started from a past revision.
pub const HISTORY_CHANGES: usize = 1024;
/// Most bytes (keys and values) kept for watches started from a past revision.
pub const HISTORY_BYTES: usize = 1 << 20;

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct LocalStore {
    db: Arc<Database>,
    path: PathBuf,
    stats: Arc<Stats>,
    /// Held from a transaction's start to its publication, so changes publish in revision
    /// order (redb's own lock is released at commit, before the publication).
    writer: Arc<Mutex<()>>,
    hub: Arc<Mutex<Hub>>,
}

/// One committed transaction's events.
struct Change {
    revision: Revision,
    events: Vec<Event>,
    bytes: usize,
}

/// The recent changes, for watches.
struct Hub {
    /// Every change after this revision is in `history` (the revision at open, at first).
    compacted: Revision,
    /// Consecutive revisions, oldest first.
    history: VecDeque<Change>,
    bytes: usize,
    /// The last revision published; watch streams wait on it.
    tx: tokio::sync::watch::Sender<Revision>,
}

impl Hub {
    fn new(revision: Revision) -> Self {
        Hub {
            compacted: revision,
            history: VecDeque::new(),
            bytes: 0,
            tx: tokio::sync::watch::Sender::new(revision),
        }
    }

    fn publish(&mut self, change: Change) {
        let revision = change.revision;
        self.bytes += change.bytes;
        self.history.push_back(change);
        while self.history.len() > HISTORY_CHANGES || self.bytes > HISTORY_BYTES {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.bytes -= old.bytes;
            self.compacted = old.revision;
        }
        self.tx.send_replace(revision);
    }

    /// The events under `prefix` after revision `after`, and the last revision looked at;
    /// [`Error::Compacted`] if some are no longer kept.
    fn since(&self, prefix: &str, after: Revision) -> Result<(Vec<Event>, Revision)> {
        if after < self.compacted {
            return Err(Error::Compacted {
                what: format!("{prefix} after revision {after}"),
                compacted: self.compacted,
            });
        }
        let start = self.history.partition_point(|c| c.revision <= after);
        let mut out = Vec::new();
        let mut last = after;
        for c in self.history.range(start..) {
            last = c.revision;
            out.extend(
                c.events
                    .iter()
                    .filter(|e| e.key().starts_with(prefix))
                    .cloned(),
            );
        }
        Ok((out, last))
    }
}

/// A watch stream's state: its place in the history, and the hub (weak, so that a watch
/// left open does not keep the store, and its file lock, alive).
struct Cursor {
    hub: Weak<Mutex<Hub>>,
    rx: tokio::sync::watch::Receiver<Revision>,
    prefix: String,
    after: Revision,
}

impl Cursor {
    /// The next batch, or the error that ends the stream.
    async fn next(&mut self) -> Result<Vec<Event>> {
        loop {
            // Marked seen before reading the history: a publication after this wakes us.
            self.rx.borrow_and_update();
            {
                let Some(hub) = self.hub.upgrade() else {
                    return Err(self.closed());
                };
                let hub = hub.lock().unwrap_or_else(PoisonError::into_inner);
                let (events, last) = hub.since(&self.prefix, self.after)?;
                self.after = last;
                if !events.is_empty() {
                    return Ok(events);
                }
            }
            if self.rx.changed().await.is_err() {
                return Err(self.closed());
            }
        }
    }

    fn closed(&self) -> Error {
        Error::Unavailable(format!("watch {}: the local store was closed", self.prefix))
    }
}

fn storage_err(op: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{op} local store {}: {e}", path.display()))
}

/// A stored value: its revision (8 bytes, little endian), then the value. A shorter one is
/// a damaged file, reported with its key (never a panic).
fn split<'a>(key: &str, stored: &'a [u8]) -> Result<(Revision, &'a [u8])> {
    match stored.split_first_chunk::<8>() {
        Some((rev, value)) => Ok((i64::from_le_bytes(*rev), value)),
        None => Err(Error::msg(format!(
            "read {key} from the local store: damaged record ({} bytes)",
            stored.len()
        ))),
    }
}

impl LocalStore {
    /// Opens (or creates) the store file at `path`, creating its directory if needed.
    /// Fails if another process holds the file open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                // The store holds every address and endpoint of the host: its own directory
                // is for its owner only (an existing directory is left as it is).
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| Error::io(format!("create directory {}", dir.display()), e))?;
            }
        }
        let db = Database::create(&path).map_err(|e| match e {
            // redb takes an exclusive file lock: a running plugin holds the store.
            redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse {
                what: format!("open local store {}", path.display()),
            },
            e => storage_err("open", &path, e),
        })?;
        // Create both tables up front so read transactions never meet a missing table.
        let txn = db
            .begin_write()
            .map_err(|e| storage_err("open", &path, e))?;
        {
            txn.open_table(KV)
                .map_err(|e| storage_err("open", &path, e))?;
            txn.open_table(META)
                .map_err(|e| storage_err("open", &path, e))?;
        }
        txn.commit().map_err(|e| storage_err("open", &path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("set mode of {}", path.display()), e))?;
        let revision = current_revision(&db, &path)?;
        Ok(LocalStore {
            db: Arc::new(db),
            path,
            stats: Arc::new(Stats::default()),
            writer: Arc::new(Mutex::new(())),
            hub: Arc::new(Mutex::new(Hub::new(revision))),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &Path) -> Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        let path = self.path.clone();
        // redb is synchronous and fsyncs on commit: keep it off the async workers.
        tokio::task::spawn_blocking(move || f(&db, &path))
            .await
            .map_err(|e| Error::msg(format!("local store task failed: {e}")))?
    }
}

/// The store-wide revision (0 for a new store).
fn current_revision(db: &Database, path: &Path) -> Result<Revision> {
    let txn = db.begin_read().map_err(|e| storage_err("read", path, e))?;
    read_revision(&txn, path)
}

fn read_revision(txn: &redb::ReadTransaction, path: &Path) -> Result<Revision> {
    let meta = txn
        .open_table(META)
        .map_err(|e| storage_err("read", path, e))?;
    let rev = meta
        .get(REVISION)
        .map_err(|e| storage_err("read", path, e))?
        .map(|v| v.value())
        .unwrap_or(0);
    Ok(rev as Revision)
}

#[async_trait]
impl Datastore for LocalStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        // One key is one read transaction, like several.
        Ok(self.get_many(&[key.to_string()]).await?.pop().flatten())
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One read transaction for all, like etcd's one round trip.
        self.stats.read();
        let keys = keys.to_vec();
        self.blocking(move |db, path| {
            let txn = db.begin_read().map_err(|e| storage_err("read", path, e))?;
            let table = txn
                .open_table(KV)
                .map_err(|e| storage_err("read", path, e))?;
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                let found = table
                    .get(key.as_str())
                    .map_err(|e| storage_err("read", path, e))?;
                out.push(match found {
                    Some(v) => {
                        let (revision, value) = split(&key, v.value())?;
                        Some(KeyValue {
                            key: key.clone(),
                            value: value.to_vec(),
                            revision,
                        })
                    }
                    None => None,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        Ok(self.list_with_revision(prefix).await?.kvs)
    }

    async fn list_with_revision(&self, prefix: &str) -> Result<Listing> {
        let (mut all, revision) = self.list_at(&[prefix.to_string()]).await?;
        Ok(Listing {
            kvs: all.pop().unwrap_or_default(),
            revision,
        })
    }

    async fn list_many(&self, prefixes: &[String]) -> Result<Vec<Vec<KeyValue>>> {
        Ok(self.list_at(prefixes).await?.0)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        self.stats.read();
        let cursor = Cursor {
            rx: self
                .hub
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .tx
                .subscribe(),
            hub: Arc::downgrade(&self.hub),
            prefix: dir_prefix(prefix),
            after,
        };
        Ok(futures::stream::unfold(Some(cursor), |state| async move {
            let mut cursor = state?;
            match cursor.next().await {
                Ok(events) => Some((Ok(events), Some(cursor))),
                // An error ends the stream, as etcd's.
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed())
    }

    async fn txn(&self, writes: Vec<Write>) -> Result<Revision> {
        self.stats.txn(&writes);
        let stats = self.stats.clone();
        let writer = self.writer.clone();
        let hub = self.hub.clone();
        self.blocking(move |db, path| {
            let _order = writer.lock().unwrap_or_else(PoisonError::into_inner);
            let txn = db
                .begin_write()
                .map_err(|e| storage_err("write", path, e))?;
            let rev;
            let mut events = Vec::with_capacity(writes.len());
            {
                let mut table = txn
                    .open_table(KV)
                    .map_err(|e| storage_err("write", path, e))?;
                for w in &writes {
                    let current = match table
                        .get(w.key.as_str())
                        .map_err(|e| storage_err("write", path, e))?
                    {
                        Some(v) => Some(split(&w.key, v.value())?.0),
                        None => None,
                    };
                    if let Some(err) = condition_error(w, current) {
                        stats.conflict();
                        // Dropping the transaction without commit discards nothing written.
                        return Err(err);
                    }
                }
                let mut meta = txn
                    .open_table(META)
                    .map_err(|e| storage_err("write", path, e))?;
                let last = meta
                    .get(REVISION)
                    .map_err(|e| storage_err("write", path, e))?
                    .map(|v| v.value())
                    .unwrap_or(0);
                rev = last as i64 + 1;
                meta.insert(REVISION, rev as u64)
                    .map_err(|e| storage_err("write", path, e))?;
                for w in &writes {
                    match &w.value {
                        Some(v) => {
                            let mut stored = Vec::with_capacity(8 + v.len());
                            stored.extend_from_slice(&rev.to_le_bytes());
                            stored.extend_from_slice(v);
                            table
                                .insert(w.key.as_str(), stored.as_slice())
                                .map_err(|e| storage_err("write", path, e))?;
                            events.push(Event::Put(KeyValue {
                                key: w.key.clone(),
                                value: v.clone(),
                                revision: rev,
                            }));
                        }
                        None => {
                            let removed = table
                                .remove(w.key.as_str())
                                .map_err(|e| storage_err("write", path, e))?;
                            // Deleting an absent key changes nothing: no event, as in etcd.
                            if removed.is_some() {
                                events.push(Event::Delete {
                                    key: w.key.clone(),
                                    revision: rev,
                                });
                            }
                        }
                    }
                }
            }
            txn.commit().map_err(|e| storage_err("commit", path, e))?;
            let bytes = events
                .iter()
                .map(|e| match e {
                    Event::Put(kv) => kv.key.len() + kv.value.len(),
                    Event::Delete { key, .. } => key.len(),
                })
                .sum();
            hub.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .publish(Change {
                    revision: rev,
                    events,
                    bytes,
                });
            Ok(rev)
        })
        .await
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}

impl LocalStore {
    /// Lists several prefixes in one read transaction (like etcd's one round trip), with the
    /// store's revision at that read.
    async fn list_at(&self, prefixes: &[String]) -> Result<(Vec<Vec<KeyValue>>, Revision)> {
        self.stats.read();
        let prefixes: Vec<String> = prefixes.iter().map(|p| dir_prefix(p)).collect();
        self.blocking(move |db, path| {
            let txn = db.begin_read().map_err(|e| storage_err("list", path, e))?;
            let revision = read_revision(&txn, path)?;
            let table = txn
                .open_table(KV)
                .map_err(|e| storage_err("list", path, e))?;
            let mut all = Vec::with_capacity(prefixes.len());
            for prefix in &prefixes {
                let mut out = Vec::new();
                for item in table
                    .range(prefix.as_str()..)
                    .map_err(|e| storage_err("list", path, e))?
                {
                    let (k, v) = item.map_err(|e| storage_err("list", path, e))?;
                    if !k.value().starts_with(prefix.as_str()) {
                        break;
                    }
                    let (revision, value) = split(k.value(), v.value())?;
                    out.push(KeyValue {
                        key: k.value().to_string(),
                        value: value.to_vec(),
                        revision,
                    });
                }
                all.push(out);
            }
            Ok((all, revision))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let e = split("/calico/x", &[1, 2, 3]).unwrap_err();
        assert!(e.to_string().contains("/calico/x"), "{e}");
        let mut ok = 7i64.to_le_bytes().to_vec();
        ok.extend_from_slice(b"{}");
        assert_eq!(split("/k", &ok).unwrap(), (7, &b"{}"[..]));
    }

    #[test]
    fn the_store_is_for_its_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("var/lib/cln/store.redb");
        drop(LocalStore::open(&path).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // An existing directory is left as it is.
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(LocalStore::open(shared.join("s.redb")).unwrap());
        assert_eq!(mode(&shared), 0o755);
        assert_eq!(mode(&shared.join("s.redb")), 0o600);
    }
}
