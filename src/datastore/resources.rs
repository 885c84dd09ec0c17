//! Typed reads and writes of Calico v3 resources over the datastore: the one part of
//! `datastore` that knows the model's resource envelope.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::datastore::{Datastore, KeyValue, Revision};
use crate::error::{Error, Result};
use crate::model::resources::{Resource, Spec};

/// Reads the resource at `key` (with `resourceVersion` set), if present.
pub async fn get<S>(store: &dyn Datastore, key: &str) -> Result<Option<Resource<S>>>
where
    S: Spec + Serialize + DeserializeOwned,
{
    match store.get(key).await? {
        Some(kv) => Ok(Some(decode(&kv)?)),
        None => Ok(None),
    }
}

/// Decodes one stored resource.
pub fn decode<S>(kv: &KeyValue) -> Result<Resource<S>>
where
    S: Spec + Serialize + DeserializeOwned,
{
    Resource::<S>::from_stored(&kv.key, &kv.value, kv.revision)
}

/// Lists every resource of the kind (in `namespace` if given), in name order.
pub async fn list<S>(store: &dyn Datastore, namespace: Option<&str>) -> Result<Vec<Resource<S>>>
where
    S: Spec + Serialize + DeserializeOwned,
{
    let kvs = store.list(&Resource::<S>::list_prefix(namespace)).await?;
    // As Calico's client lists (`convertListResponse` in libcalico-go's etcdv3 backend): a
    // record that does not decode is logged and skipped, never a reason to list nothing.
    Ok(kvs
        .iter()
        .filter_map(|kv| match decode(kv) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "skipping a {} that does not decode", S::KIND);
                None
            }
        })
        .collect())
}

/// [`list`], but failing on the first record that does not decode: for decisions that
/// must see every record (what `ipam check --repair` releases as unused).
pub async fn list_strict<S>(
    store: &dyn Datastore,
    namespace: Option<&str>,
) -> Result<Vec<Resource<S>>>
where
    S: Spec + Serialize + DeserializeOwned,
{
    let kvs = store.list(&Resource::<S>::list_prefix(namespace)).await?;
    kvs.iter().map(decode).collect()
}

/// Creates the resource, stamping `uid` and `creationTimestamp`; `Exists` if present.
pub async fn create<S>(store: &dyn Datastore, r: &mut Resource<S>) -> Result<Revision>
where
    S: Spec + Serialize + DeserializeOwned,
{
    r.metadata.stamp_create();
    let key = r.key()?;
    let rev = store.create(&key, r.to_json()?).await?;
    r.metadata.resource_version = rev.to_string();
    Ok(rev)
}

/// Replaces the resource if unchanged since it was read (its `resourceVersion`).
pub async fn update<S>(store: &dyn Datastore, r: &mut Resource<S>) -> Result<Revision>
where
    S: Spec + Serialize + DeserializeOwned,
{
    let key = r.key()?;
    let rev = r.metadata.revision().unwrap_or(0);
    let new = store.update(&key, r.to_json()?, rev).await?;
    r.metadata.resource_version = new.to_string();
    Ok(new)
}

/// How many times a read-modify-write of one resource is tried before giving up.
pub const UPDATE_ATTEMPTS: usize = 10;

/// Reads the resource at `key`, lets `change` edit it and, when `change` returns `true`,
/// writes it back with compare-and-swap on the revision read; a write that lost a race is
/// retried from the read, at most [`UPDATE_ATTEMPTS`] times (Kubernetes' `RetryOnConflict`).
///
/// Returns whether it wrote: `false` when the resource is absent (or deleted meanwhile) or
/// `change` left it as it was.
pub async fn update_with<S, F>(store: &dyn Datastore, key: &str, mut change: F) -> Result<bool>
where
    S: Spec + Serialize + DeserializeOwned,
    F: FnMut(&mut Resource<S>) -> bool,
{
    for _ in 0..UPDATE_ATTEMPTS {
        let Some(mut r) = get::<S>(store, key).await? else {
            return Ok(false);
        };
        if !change(&mut r) {
            return Ok(false);
        }
        match update(store, &mut r).await {
            Ok(_) => return Ok(true),
            Err(e) if e.is_conflict() => continue,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e.context(format!("update {} {key}", S::KIND))),
        }
    }
    Err(Error::msg(format!(
        "update {} {key}: still conflicting after {UPDATE_ATTEMPTS} attempts",
        S::KIND
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::local::LocalStore;
    use crate::model::{keys, WorkloadEndpoint};

    /// A record that does not decode is skipped by [`list`], as Calico's client skips it
    /// (`convertListResponse` in libcalico-go/lib/backend/etcdv3/conversion.go), and fails
    /// [`list_strict`], naming its key.
    #[tokio::test]
    async fn lists_skip_what_does_not_decode_unless_strict() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("s.redb")).unwrap();
        let good = serde_json::json!({"kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "h-libnetwork-libnetwork-aa", "namespace": "libnetwork"},
            "spec": {"node": "h", "endpoint": "aa", "ipNetworks": ["10.0.0.1/32"]}});
        let good_key = keys::workload_endpoint_key("libnetwork", "h-libnetwork-libnetwork-aa");
        let bad_key = keys::workload_endpoint_key("libnetwork", "h-libnetwork-libnetwork-bb");
        store
            .put(&good_key, good.to_string().into_bytes())
            .await
            .unwrap();
        store
            .put(&bad_key, b"{\"spec\": 42".to_vec())
            .await
            .unwrap();
        let listed: Vec<WorkloadEndpoint> = list(&store, Some("libnetwork")).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].spec.endpoint, "aa");
        let e = list_strict::<crate::model::resources::WorkloadEndpointSpec>(&store, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(&bad_key), "{e}");
    }
}
