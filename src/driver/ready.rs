//! Whether Calico lets the plugin write: `spec.datastoreReady` of ClusterInformation
//! `default`, which `calicoctl datastore migrate lock` sets to false for a datastore migration
//! or upgrade. Calico's CNI plugin then refuses ADD and DEL; every plugin call that writes the
//! datastore refuses likewise (see `plugin::handlers`), and reconciliation waits.
//!
//! The flag is read at most once per [`READY_TTL`], by the first writing call after that:
//! an idle host reads nothing, a busy one one key per second, and a lock holds on this host
//! within a second of being set (Calico's CNI plugin reads it in every call).

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
    /// When the flag was read and what it said. Held across the read, so that concurrent
    /// calls wait for one read instead of each making one.
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl ReadyGate {
    pub(crate) fn new(store: Arc<dyn Datastore>, ttl: Duration) -> Self {
        ReadyGate {
            store,
            ttl,
            last: Default::default(),
        }
    }

    /// `Ok` unless `datastoreReady` is false; [`Error::NotReady`] then.
    pub(crate) async fn check(&self) -> Result<()> {
        let mut last = self.last.lock().await;
        let ready = match *last {
            Some((at, ready)) if at.elapsed() < self.ttl => ready,
            _ => {
                let at = Instant::now();
                match self.read().await {
                    Some(ready) => {
                        *last = Some((at, ready));
                        ready
                    }
                    // Unknown (the datastore does not answer): the call goes on and meets
                    // the same failure in its own reads and writes.
                    None => true,
                }
            }
        };
        if ready {
            Ok(())
        } else {
            Err(Error::NotReady)
        }
    }

    /// The flag; `None` when it cannot be read.
    async fn read(&self) -> Option<bool> {
        let key = keys::cluster_information_key("default");
        match resources::get::<ClusterInformationSpec>(self.store.as_ref(), &key).await {
            // Only an explicit false locks: unset reads as ready, as clientv3 defaults it,
            // and without ClusterInformation there is no lock to honour.
            Ok(ci) => Some(ci.and_then(|c| c.spec.datastore_ready) != Some(false)),
            Err(e) if matches!(e.root(), Error::Json { .. }) => {
                tracing::warn!(error = %e, "ClusterInformation default does not decode; taken as ready");
                Some(true)
            }
            Err(e) => {
                tracing::debug!(error = %e, "read datastoreReady");
                None
            }
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
}
