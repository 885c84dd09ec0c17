//! Background work that needs the Docker API: naming profiles after Docker network names,
//! and copying container labels onto WorkloadEndpoints.
//!
//! Docker never sends a network's name to the driver, and a handler must never wait on the
//! Docker API (see [`super::docker`]). So `CreateNetwork` records the network with a
//! fallback profile named after the network ID and returns; a task spawned from it asks
//! Docker for the name (Docker finishes creating the network only after our answer) and
//! then moves the network, and its endpoints, to the profile named after the network name.
//! Every datastore write here is a compare-and-swap, so these tasks and the handlers (on
//! this host or another) may interleave freely.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::docker::DockerApi;
use super::DriverSettings;
use crate::datastore::resources;
use crate::datastore::{Datastore, KeyValue, Write};
use crate::error::{Error, Result};
use crate::model::libnetwork::{NetworkRecord, WEP_NAMESPACE};
use crate::model::resources::{WorkloadEndpointSpec, LABEL_NAMESPACE, LABEL_ORCHESTRATOR};
use crate::model::{keys, Profile, ProfileSpec};

/// How long a new network's name is looked for before its fallback profile is kept.
pub const NAME_LOOKUP_WINDOW: Duration = Duration::from_secs(120);
/// How long the start-up pass keeps trying to reach the datastore and Docker.
pub const STARTUP_WINDOW: Duration = Duration::from_secs(300);
/// Attempts of one compare-and-swap update before giving up.
pub(crate) const CAS_ATTEMPTS: usize = 10;

use crate::model::libnetwork::{fallback_profile, named_profile};

/// What a background task needs: owned handles, no borrow of the driver.
#[derive(Clone)]
pub(crate) struct Background {
    pub store: Arc<dyn Datastore>,
    pub docker: Arc<DockerApi>,
    pub settings: DriverSettings,
    pub rules: super::rules::Rules,
    /// Docker's events, which wake the label tasks.
    pub events: Arc<super::docker::DockerEvents>,
}

pub(crate) fn decode_record(kv: &KeyValue) -> Result<NetworkRecord> {
    serde_json::from_slice(&kv.value).map_err(|e| Error::json(&kv.key, e))
}

/// Creates the CNI-shaped profile `name` if it is missing (an existing one is left alone).
pub(crate) async fn ensure_profile(store: &dyn Datastore, name: &str) -> Result<()> {
    let mut p = Profile::new(name, ProfileSpec::for_network(name));
    match resources::create(store, &mut p).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_exists() => Ok(()),
        Err(e) => Err(e.context(format!("create profile {name}"))),
    }
}

/// The writes deleting those of profiles `names` that are (still) the profile the plugin
/// creates: one someone changed, or made by hand under the name of a network, stays. One
/// read for all; each write expects the revision read, so a change made meanwhile makes it
/// fail as a conflict.
pub(crate) async fn profile_delete_writes(
    store: &dyn Datastore,
    names: &[String],
) -> Result<Vec<Write>> {
    let pkeys: Vec<String> = names.iter().map(|n| keys::profile_key(n)).collect();
    let mut writes = Vec::new();
    for ((name, key), found) in names.iter().zip(&pkeys).zip(store.get_many(&pkeys).await?) {
        let Some(found) = found else { continue };
        // One we cannot read is not one we made: it stays.
        let Ok(p) = serde_json::from_slice::<Profile>(&found.value) else {
            tracing::info!(profile = %name, "profile does not decode; left in place");
            continue;
        };
        if !p.spec.is_for_network(name) {
            tracing::info!(profile = %name, "profile differs from the one the plugin creates; left in place");
            continue;
        }
        writes.push(Write::delete(key.clone(), found.revision));
    }
    Ok(writes)
}

/// Of `names`, the profiles no network record in `records` (of any host) and no
/// WorkloadEndpoint uses (one listing of WorkloadEndpoints, only if some are left to check).
pub(crate) async fn unused_profiles(
    store: &dyn Datastore,
    records: &[NetworkRecord],
    names: Vec<String>,
) -> Result<Vec<String>> {
    let mut left: Vec<String> = names
        .into_iter()
        .filter(|n| !n.is_empty() && !records.iter().any(|r| &r.profile == n))
        .collect();
    if !left.is_empty() {
        // Every namespace: Calico's CNI plugin gives a network's endpoints (namespace
        // `default` or a pod's) the same-named profile of the same shape, and never deletes it.
        let kvs = store
            .list(&keys::resource_prefix(
                keys::PLURAL_WORKLOAD_ENDPOINTS,
                None,
            ))
            .await?;
        for kv in &kvs {
            match resources::decode::<WorkloadEndpointSpec>(kv) {
                Ok(w) => left.retain(|n| !w.spec.profiles.contains(n)),
                // One that does not decode may use any profile its text names: those stay.
                Err(_) => {
                    let text = String::from_utf8_lossy(&kv.value);
                    left.retain(|n| !text.contains(&format!("\"{n}\"")));
                }
            }
        }
    }
    Ok(left)
}

/// Deletes profile `name` unless a network record (of any host) or a WorkloadEndpoint still
/// uses it, or it is not (any more) the profile the plugin creates. Returns whether it was
/// deleted.
pub(crate) async fn delete_profile_if_unused(store: &dyn Datastore, name: &str) -> Result<bool> {
    let records: Vec<NetworkRecord> = store
        .list(&keys::networks_prefix())
        .await?
        .iter()
        .filter_map(|kv| decode_record(kv).ok())
        .collect();
    if unused_profiles(store, &records, vec![name.to_string()])
        .await?
        .is_empty()
    {
        return Ok(false);
    }
    let writes = profile_delete_writes(store, &[name.to_string()]).await?;
    if writes.is_empty() {
        return Ok(false);
    }
    match store.txn(writes).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_lost_race() => Ok(false),
        Err(e) => Err(e.context(format!("delete profile {name}"))),
    }
}

/// Replaces profile `from` by `to` in one WorkloadEndpoint (compare-and-swap, retried).
/// Returns whether it changed it.
pub(crate) async fn move_wep_profile(
    store: &dyn Datastore,
    key: &str,
    from: &str,
    to: &str,
) -> Result<bool> {
    resources::update_with::<WorkloadEndpointSpec, _>(store, key, |wep| {
        if !wep.spec.profiles.iter().any(|p| p == from) {
            return false;
        }
        let mut profiles = Vec::new();
        for p in &wep.spec.profiles {
            let p = if p == from { to } else { p.as_str() };
            if !p.is_empty() && !profiles.iter().any(|q: &String| q == p) {
                profiles.push(p.to_string());
            }
        }
        wep.spec.profiles = profiles;
        true
    })
    .await
}

impl Background {
    fn store(&self) -> &dyn Datastore {
        self.store.as_ref()
    }

    /// Records the learned `name` of network `network_id` and, with profiles on, moves the
    /// network and its endpoints from their current (fallback) profile to the named one,
    /// deleting the fallback when nothing uses it any more. Idempotent.
    pub async fn apply_network_name(&self, network_id: &str, name: &str) -> Result<()> {
        let key = keys::network_key(network_id);
        let mut old_profile = String::new();
        let mut new_profile = String::new();
        let mut changed = false;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let Some(kv) = self.store().get(&key).await? else {
                break; // deleted meanwhile: undo below
            };
            let mut rec = decode_record(&kv)?;
            // Profiles are switched only where the record has one (profiles were on when
            // the network was created) and profiles are on now.
            let switch = self.settings.create_profiles && !rec.profile.is_empty();
            let target = if switch {
                named_profile(name)
            } else {
                rec.profile.clone()
            };
            if rec.name == name && rec.profile == target {
                // Already applied (perhaps by an earlier run that stopped half-way): still
                // move any endpoint left on the fallback profile.
                if switch {
                    old_profile = fallback_profile(network_id);
                    new_profile = target;
                }
                break;
            }
            if switch && rec.profile != target {
                ensure_profile(self.store(), &target).await?;
            }
            old_profile = rec.profile.clone();
            new_profile = target.clone();
            rec.name = name.to_string();
            rec.profile = target;
            let value = serde_json::to_vec(&rec)
                .map_err(|e| Error::msg(format!("encode network record: {e}")))?;
            match self.store().update(&key, value, kv.revision).await {
                Ok(_) => {
                    changed = true;
                    break;
                }
                Err(e) if e.is_lost_race() && attempts < CAS_ATTEMPTS => continue,
                Err(e) => return Err(e.context(format!("record name of network {network_id}"))),
            }
        }
        // The record was gone or unchanged when nothing was written: undo a profile we may
        // have created for a network deleted meanwhile.
        if self.store().get(&key).await?.is_none() {
            if !new_profile.is_empty() {
                delete_profile_if_unused(self.store(), &new_profile).await?;
            }
            return Ok(());
        }
        if old_profile == new_profile || old_profile.is_empty() {
            return Ok(());
        }
        if changed {
            tracing::info!(
                network = %network_id.get(..12).unwrap_or(network_id),
                name = %name,
                profile = %new_profile,
                fallback = %old_profile,
                "network name learned from Docker; endpoints move to its profile"
            );
        }
        let weps =
            resources::list::<WorkloadEndpointSpec>(self.store(), Some(WEP_NAMESPACE)).await?;
        for w in weps {
            if w.spec.profiles.contains(&old_profile) {
                let wkey = w.key()?;
                move_wep_profile(self.store(), &wkey, &old_profile, &new_profile).await?;
            }
        }
        // The firewall follows: this host's endpoints are now members of the named profile.
        self.rules.rename_profile(&old_profile, &new_profile).await;
        if delete_profile_if_unused(self.store(), &old_profile).await? {
            tracing::debug!(profile = %old_profile, "deleted fallback profile");
        }
        Ok(())
    }

    /// Asks Docker for the name of `network_id` until it knows it (with backoff, for at most
    /// `window`), then applies it. `missing_ok`: Docker saying "no such network" ends the
    /// search at once (the start-up pass: another host's network, or a stale record).
    pub async fn learn_network_name(&self, network_id: &str, window: Duration, missing_ok: bool) {
        let short = network_id.get(..12).unwrap_or(network_id);
        let deadline = Instant::now() + window;
        let mut delay = Duration::from_millis(100);
        let mut last_err = None;
        let name = loop {
            match self.docker.network_name(network_id).await {
                Ok(Some(name)) => break name,
                Ok(None) if missing_ok => {
                    tracing::debug!(network = %short, "not a network of this Docker; name left unknown");
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(network = %short, error = %e, "docker API: network name");
                    last_err = Some(e);
                }
            }
            // Stop early when the network went away.
            if let Ok(None) = self.store().get(&keys::network_key(network_id)).await {
                return;
            }
            if Instant::now() + delay > deadline {
                tracing::warn!(
                    network = %short,
                    docker = %self.docker.host(),
                    error = %last_err.map(|e| e.to_string()).unwrap_or_else(|| "network not found".into()),
                    "could not learn the network's name from Docker; its profile stays named after the network ID"
                );
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        };
        let mut delay = Duration::from_millis(200);
        loop {
            match self.apply_network_name(network_id, &name).await {
                Ok(()) => return,
                Err(e) if Instant::now() + delay < deadline => {
                    tracing::warn!(network = %short, name = %name, error = %e, retry_in = ?delay, "apply network name");
                }
                Err(e) => {
                    tracing::warn!(network = %short, name = %name, error = %e, "apply network name; giving up");
                    return;
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// At start: learns the names of the networks recorded without one.
    pub async fn resolve_unnamed_networks(&self) {
        let deadline = Instant::now() + STARTUP_WINDOW;
        let mut delay = Duration::from_millis(500);
        let records = loop {
            match self.store().list(&keys::networks_prefix()).await {
                Ok(kvs) => break kvs,
                Err(e) if Instant::now() + delay < deadline => {
                    tracing::debug!(error = %e, "list network records; retrying");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "list network records; network names not learned");
                    return;
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        };
        for kv in records {
            let Ok(rec) = decode_record(&kv) else {
                continue;
            };
            if !rec.name.is_empty() || rec.network_id.is_empty() {
                continue;
            }
            let window = deadline.saturating_duration_since(Instant::now());
            self.learn_network_name(&rec.network_id, window, true).await;
        }
    }

    /// Waits (at most `settings.label_poll_timeout`) for Docker to list the container holding
    /// `endpoint_id`, then copies its `org.projectcalico.label.*` labels onto the endpoint's
    /// WorkloadEndpoint.
    pub async fn label_endpoint(&self, network_id: &str, endpoint_id: &str, wep_key: &str) {
        let short = endpoint_id.get(..12).unwrap_or(endpoint_id);
        let deadline = Instant::now() + self.settings.label_poll_timeout;
        let mut delay = Duration::from_millis(100);
        let mut last_err = None;
        let mut woken = self.events.subscribe();
        let labels = loop {
            woken.borrow_and_update();
            match self
                .docker
                .endpoint_container(network_id, endpoint_id)
                .await
            {
                Ok(Some(container)) => match self.docker.container_labels(&container).await {
                    Ok(Some(labels)) => break labels,
                    Ok(None) => {}
                    Err(e) => last_err = Some(e),
                },
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
            if let Ok(None) = self.store().get(wep_key).await {
                return; // the endpoint went away
            }
            if Instant::now() + delay > deadline {
                tracing::warn!(
                    endpoint = %short,
                    error = %last_err.map(|e| e.to_string()).unwrap_or_else(|| "no container holds the endpoint".into()),
                    "could not read the container's labels from Docker within {:?}; endpoint not labelled",
                    self.settings.label_poll_timeout
                );
                return;
            }
            if self.events.is_open() {
                // Docker says when a container starts or joins a network: wait for that (with
                // a slow look now and then, should an event be missed), not a poll.
                let _ = tokio::time::timeout(Duration::from_secs(5), woken.changed()).await;
            } else {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        };
        let (wanted, refused) = super::docker::calico_labels(&labels);
        if !refused.is_empty() {
            tracing::warn!(endpoint = %short, labels = ?refused, "container labels not valid as Calico labels; ignored");
        }
        if wanted.is_empty() {
            return;
        }
        match set_wep_labels(self.store(), wep_key, &wanted).await {
            Ok(true) => {
                tracing::info!(endpoint = %short, labels = ?wanted, "labelled WorkloadEndpoint")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(endpoint = %short, error = %e, "label WorkloadEndpoint"),
        }
    }
}

/// Adds `labels` to a WorkloadEndpoint's labels, keeping Calico's own two (compare-and-swap,
/// retried). Returns whether it wrote.
pub(crate) async fn set_wep_labels(
    store: &dyn Datastore,
    key: &str,
    labels: &BTreeMap<String, String>,
) -> Result<bool> {
    resources::update_with::<WorkloadEndpointSpec, _>(store, key, |wep| {
        let mut next = wep.metadata.labels.clone();
        for (k, v) in labels {
            if k != LABEL_NAMESPACE && k != LABEL_ORCHESTRATOR {
                next.insert(k.clone(), v.clone());
            }
        }
        if next == wep.metadata.labels {
            return false;
        }
        wep.metadata.labels = next;
        wep.apply_calico_labels();
        true
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::local::LocalStore;
    use crate::model::validate_resource_name;

    #[test]
    fn hostile_network_names_make_valid_profile_names() {
        // Valid names are kept as they are: `net1` is profile `net1` on every host.
        assert_eq!(named_profile("net1"), "net1");
        let p = named_profile("My_Net.1");
        assert!(validate_resource_name(&p).is_ok(), "{p}");
        assert!(p.starts_with("my-net.1-"), "{p}");
        assert_eq!(p, named_profile("My_Net.1"), "stable");
        assert_ne!(
            p,
            named_profile("my-net.1"),
            "distinct inputs stay distinct"
        );
        let long = "N".repeat(300);
        let p = named_profile(&long);
        assert!(p.len() <= 253, "{}", p.len());
        assert!(validate_resource_name(&p).is_ok(), "{p}");
        for hostile in ["..", "_", "ÄÖÜ", "a/b", "has(x)", " ", "-net-"] {
            let p = named_profile(hostile);
            assert!(validate_resource_name(&p).is_ok(), "{hostile:?} -> {p}");
            // The profile's own selector parses.
            let spec = ProfileSpec::for_network(&p);
            let sel = spec.ingress[0].source.selector.clone();
            crate::model::Selector::parse(&sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
        }
        assert_eq!(fallback_profile(&"ab".repeat(32)), "ab".repeat(32));
        // Every profile's label key is one calicoctl accepts (Calico's `validateLabels`, in
        // libcalico-go/lib/validator/v3/validator.go): the fallback's 64-character network
        // ID and a 253-character network name too; the selector uses the same key.
        for name in [
            fallback_profile(&"ab".repeat(32)),
            named_profile(&long),
            "net1".into(),
        ] {
            let spec = ProfileSpec::for_network(&name);
            let key = spec.labels_to_apply.keys().next().unwrap().clone();
            assert!(crate::model::names::is_label_name(&key), "{name} -> {key}");
            assert_eq!(spec.ingress[0].source.selector, format!("has({key})"));
            assert!(spec.is_for_network(&name));
        }
    }

    #[test]
    fn old_records_still_read() {
        let old = r#"{"networkId":"n1","profile":"n1","ipv4Pools":["0.0.0.0/0"],"ipv6Pools":[]}"#;
        let r: NetworkRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.name, "");
        assert_eq!(r.profile, "n1");
    }

    fn wep(name: &str, profiles: &[&str]) -> crate::model::WorkloadEndpoint {
        let mut w = crate::model::WorkloadEndpoint::namespaced(
            WEP_NAMESPACE,
            name,
            WorkloadEndpointSpec {
                orchestrator: "libnetwork".into(),
                workload: "libnetwork".into(),
                node: "h".into(),
                endpoint: name.into(),
                profiles: profiles.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        );
        w.apply_calico_labels();
        w
    }

    /// The switch from the fallback to the named profile, on the embedded store.
    #[tokio::test]
    async fn apply_name_moves_network_and_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Datastore> = Arc::new(LocalStore::open(dir.path().join("s")).unwrap());
        let id = "ab".repeat(32);
        let fallback = fallback_profile(&id);
        ensure_profile(store.as_ref(), &fallback).await.unwrap();
        let rec = NetworkRecord {
            network_id: id.clone(),
            profile: fallback.clone(),
            ..Default::default()
        };
        store
            .put(&keys::network_key(&id), serde_json::to_vec(&rec).unwrap())
            .await
            .unwrap();
        let mut w1 = wep("h-libnetwork-libnetwork-e1", &[&fallback]);
        let mut w2 = wep("h-libnetwork-libnetwork-e2", &["other"]);
        resources::create(store.as_ref(), &mut w1).await.unwrap();
        resources::create(store.as_ref(), &mut w2).await.unwrap();
        let mut settings = DriverSettings::new("h");
        settings.docker_host = Some("unix:///nonexistent".into());
        let bg = Background {
            store: store.clone(),
            docker: Arc::new(DockerApi::new(
                "unix:///nonexistent",
                Duration::from_secs(1),
            )),
            settings,
            rules: crate::driver::rules::Rules::new(
                crate::dataplane::iptables::DataplaneMode::Off,
                crate::ipam::Ipam::new(store.clone()),
                "h",
            ),
            events: Default::default(),
        };
        bg.apply_network_name(&id, "My_Net.1").await.unwrap();
        let named = named_profile("My_Net.1");
        let rec: NetworkRecord = serde_json::from_slice(
            &store
                .get(&keys::network_key(&id))
                .await
                .unwrap()
                .unwrap()
                .value,
        )
        .unwrap();
        assert_eq!(
            (rec.name.as_str(), rec.profile.as_str()),
            ("My_Net.1", named.as_str())
        );
        let p: Profile = resources::get(store.as_ref(), &keys::profile_key(&named))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.spec, ProfileSpec::for_network(&named));
        assert!(store
            .get(&keys::profile_key(&fallback))
            .await
            .unwrap()
            .is_none());
        let w1: crate::model::WorkloadEndpoint = resources::get(store.as_ref(), &w1.key().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(w1.spec.profiles, vec![named.clone()]);
        let w2: crate::model::WorkloadEndpoint = resources::get(store.as_ref(), &w2.key().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(w2.spec.profiles, vec!["other".to_string()]);
        // Idempotent.
        bg.apply_network_name(&id, "My_Net.1").await.unwrap();

        // Labels: added, Calico's own two kept.
        let labels = BTreeMap::from([("role".to_string(), "db".to_string())]);
        assert!(set_wep_labels(store.as_ref(), &w1.key().unwrap(), &labels)
            .await
            .unwrap());
        let w1: crate::model::WorkloadEndpoint = resources::get(store.as_ref(), &w1.key().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(w1.metadata.labels["role"], "db");
        assert_eq!(w1.metadata.labels[LABEL_NAMESPACE], "libnetwork");
        assert_eq!(w1.metadata.labels[LABEL_ORCHESTRATOR], "libnetwork");

        // A profile still used by an endpoint stays; an unused one goes.
        assert!(!delete_profile_if_unused(store.as_ref(), &named)
            .await
            .unwrap());
        store.delete(&keys::network_key(&id), None).await.unwrap();
        assert!(!delete_profile_if_unused(store.as_ref(), &named)
            .await
            .unwrap());
        store.delete(&w1.key().unwrap(), None).await.unwrap();
        assert!(delete_profile_if_unused(store.as_ref(), &named)
            .await
            .unwrap());
        // A profile made (or changed) by hand under a network's name is left alone.
        let mut spec = ProfileSpec::for_network("net9");
        spec.egress.clear();
        resources::create(store.as_ref(), &mut Profile::new("net9", spec))
            .await
            .unwrap();
        assert!(!delete_profile_if_unused(store.as_ref(), "net9")
            .await
            .unwrap());
        assert!(store
            .get(&keys::profile_key("net9"))
            .await
            .unwrap()
            .is_some());
    }
}
