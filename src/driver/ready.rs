//! Whether Calico lets the plugin write: `spec.datastoreReady` of ClusterInformation
//! `default`, which `calicoctl datastore migrate lock` sets to false for a datastore migration
//! or upgrade. Calico's CNI plugin then refuses ADD and DEL; every plugin call that writes the
//! datastore refuses likewise (see `plugin::handlers`), and reconciliation waits.
//!
//! The flag is read at most once per [`READY_TTL`], by the first writing call after that:
//! an idle host reads nothing, a busy one one key per second, and a lock holds on this host
//! within a second of being set (Calico's CNI plugin reads it in every call).
//!
//! A read that fails (the datastore does not answer) fails the call, with the datastore's
//! error, as Calico's CNI plugin fails when it cannot get ClusterInformation; calls that
//! were waiting for that read share its failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::datastore::{resources, Datastore};
use crate::error::{Error, Result};
use crate::model::keys;
use crate::model::ClusterInformationSpec;

/// How long a read of the flag is trusted.
pub const READY_TTL: Duration = Duration::from_secs(1);

/// The flag as last read, shared by all calls.
pub(crate) struct ReadyGate {
    store: Arc<dyn Datastore>,
    ttl: Duration,
    /// The last read: when it started and what the flag said, or when it ended and why it
    /// failed (the datastore's message). Held across the read, so that concurrent calls
    /// wait for one read instead of each making one.
    last: tokio::sync::Mutex<Option<LastRead>>,
}

/// What [`ReadyGate::last`] holds.
enum LastRead {
    /// Read at that instant: the flag.
    Read(Instant, bool),
    /// A read that ended at that instant, the datastore unavailable: its message.
    Failed(Instant, String),
}

/// The context of a failed read of the flag.
const READ_FLAG: &str = "read datastoreReady of ClusterInformation default";

impl ReadyGate {
    pub(crate) fn new(store: Arc<dyn Datastore>, ttl: Duration) -> Self {
        ReadyGate {
            store,
            ttl,
            last: Default::default(),
        }
    }

    /// `Ok` unless `datastoreReady` is false ([`Error::NotReady`] then) or cannot be read
    /// (the datastore's error).
    pub(crate) async fn check(&self) -> Result<()> {
        let arrived = Instant::now();
        let mut last = self.last.lock().await;
        let ready = match &*last {
            Some(LastRead::Read(at, ready)) if at.elapsed() < self.ttl => *ready,
            // A read this call waited for failed: the same answer at once. Each waiting call
            // reading again would spend a datastore deadline more, one after the other.
            Some(LastRead::Failed(ended, msg)) if *ended >= arrived => {
                return Err(Error::Unavailable(msg.clone()).context(READ_FLAG));
            }
            _ => {
                let at = Instant::now();
                match self.read().await {
                    Ok(ready) => {
                        *last = Some(LastRead::Read(at, ready));
                        ready
                    }
                    // The datastore does not answer: the call fails now, naming it. Going on
                    // (as before) spent a second datastore deadline in the call's own first
                    // read: with the defaults (5 s each, 10 s a request) Docker then heard
                    // "timed out after 10s" instead of what was wrong.
                    Err(e) => {
                        if let Error::Unavailable(msg) = e.root() {
                            *last = Some(LastRead::Failed(Instant::now(), msg.clone()));
                        }
                        return Err(e.context(READ_FLAG));
                    }
                }
            }
        };
        if ready {
            Ok(())
        } else {
            Err(Error::NotReady)
        }
    }

    /// The flag, or why it cannot be read.
    async fn read(&self) -> Result<bool> {
        let key = keys::cluster_information_key("default");
        match resources::get::<ClusterInformationSpec>(self.store.as_ref(), &key).await {
            // Only an explicit false locks: unset reads as ready, as clientv3 defaults it,
            // and without ClusterInformation there is no lock to honour.
            Ok(ci) => Ok(ci.and_then(|c| c.spec.datastore_ready) != Some(false)),
            Err(e) if matches!(e.root(), Error::Json { .. }) => {
                tracing::warn!(error = %e, "ClusterInformation default does not decode; taken as ready");
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::local::LocalStore;

    /// The ClusterInformation `calicoctl datastore migrate lock` (false) or `unlock` (true)
    /// leaves.
    fn ci(ready: bool) -> Vec<u8> {
        format!(
            r#"{{"kind":"ClusterInformation","apiVersion":"projectcalico.org/v3","metadata":{{"name":"default"}},"spec":{{"clusterGUID":"0123456789abcdef0123456789abcdef","calicoVersion":"v3.30.0","datastoreReady":{ready}}}}}"#
        )
        .into_bytes()
    }

    // cni-plugin/pkg/plugin/plugin.go, cmdAdd/cmdDel: refused while datastoreReady is false.
    // Measured cost: one read of the key per TTL, however many calls.
    #[tokio::test]
    async fn the_flag_is_read_once_per_ttl_and_a_lock_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Datastore> =
            Arc::new(LocalStore::open(dir.path().join("s.redb")).unwrap());
        let key = keys::cluster_information_key("default");
        let ttl = Duration::from_millis(300);
        let gate = ReadyGate::new(store.clone(), ttl);
        // No ClusterInformation: nothing locks.
        gate.check().await.unwrap();
        store.put(&key, ci(false)).await.unwrap();
        let before = store.stats().snapshot();
        // Within the TTL the last read holds, however many calls come.
        for _ in 0..100 {
            gate.check().await.unwrap();
        }
        assert_eq!(store.stats().snapshot().since(&before).reads, 0);
        tokio::time::sleep(ttl).await;
        let e = gate.check().await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Calico is currently not ready to process requests ("),
            "{e}"
        );
        for _ in 0..100 {
            assert!(matches!(gate.check().await, Err(Error::NotReady)));
        }
        assert_eq!(store.stats().snapshot().since(&before).reads, 1);
        store.put(&key, ci(true)).await.unwrap();
        tokio::time::sleep(ttl).await;
        gate.check().await.unwrap();
        assert_eq!(store.stats().snapshot().since(&before).reads, 2);
    }

    // cni-plugin/pkg/plugin/plugin.go: a ClusterInformation that cannot be read fails the
    // call. A datastore that never answers (an etcd "member" that accepts connections and
    // says nothing) costs one datastore deadline, not one for the flag and one more for the
    // call's own read, and calls waiting for the failed read share its answer.
    #[tokio::test]
    async fn an_unreadable_flag_fails_the_call_once_for_all_waiting() {
        use crate::datastore::etcd::{EtcdConfig, EtcdStore};
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let deadline = Duration::from_millis(600);
        let store: Arc<dyn Datastore> = Arc::new(
            EtcdStore::new(EtcdConfig {
                endpoints: vec![format!("http://{}", silent.local_addr().unwrap())],
                timeout: deadline,
                ..Default::default()
            })
            .unwrap(),
        );
        let gate = Arc::new(ReadyGate::new(store, READY_TTL));
        let t = Instant::now();
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.check().await })
            })
            .collect();
        for c in calls {
            let e = c.await.unwrap().unwrap_err();
            assert!(e.is_unavailable(), "{e}");
            let text = e.to_string();
            assert!(
                text.starts_with(READ_FLAG) && text.contains("etcd at http://127.0.0.1:"),
                "{text}"
            );
        }
        assert!(t.elapsed() < deadline * 2, "{:?}", t.elapsed());
        // A later call reads again (the datastore may be back).
        let t = Instant::now();
        assert!(gate.check().await.is_err());
        assert!(t.elapsed() >= deadline / 2, "{:?}", t.elapsed());
    }
}
