//! Docker's network driver calls for networks: CreateNetwork, DeleteNetwork and the
//! network records they keep.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::IpNet;
use serde_json::Value;

use super::{Driver, NetworkSpec};
use crate::error::{Error, Result, ResultExt};
use crate::model::keys;
use crate::model::libnetwork::{fallback_profile, NetworkRecord};

/// Calico's fixed IPv4 next hop for workloads; the host veth answers ARP for it. A
/// container's further Calico endpoints get 169.254.1.2, ... (see `super::sandbox`).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

fn option_flag(options: &BTreeMap<String, Value>, key: &str) -> bool {
    match options.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

/// `-o` options Docker itself acts on, accepted without a word.
const DOCKER_OWN_OPTIONS: &[&str] = &[
    "com.docker.network.enable_ipv4",
    "com.docker.network.enable_ipv6",
];

impl Driver {
    pub(super) async fn network_record(&self, network_id: &str) -> Result<Option<NetworkRecord>> {
        if let Some(r) = self.settled_records.lock().unwrap().get(network_id) {
            return Ok(Some(r.clone()));
        }
        let key = keys::network_key(network_id);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let rec: NetworkRecord =
            serde_json::from_slice(&kv.value).map_err(|e| Error::json(&key, e))?;
        if rec.profile != fallback_profile(network_id) {
            self.settled_records
                .lock()
                .unwrap()
                .insert(network_id.to_string(), rec.clone());
        }
        Ok(Some(rec))
    }

    /// `NetworkDriver.CreateNetwork`.
    pub async fn create_network(&self, spec: NetworkSpec) -> Result<()> {
        if option_flag(&spec.options, "com.docker.network.internal") {
            return Err(Error::invalid(
                "Calico driver does not support the flag --internal.",
            ));
        }
        if let Some(Value::Object(generic)) = spec.options.get("com.docker.network.generic") {
            // Docker acts on these itself (they mirror --ipv4/--ipv6, and Docker 28 documents
            // them as -o options): nothing for the driver to do, so nothing to refuse.
            let mut flags: Vec<String> = generic
                .keys()
                .filter(|k| !DOCKER_OWN_OPTIONS.contains(&k.as_str()))
                .cloned()
                .collect();
            if !flags.is_empty() {
                flags.sort();
                return Err(Error::invalid(format!(
                    "Calico driver does not support the flag{} {} (-o/--opt; Compose: driver_opts).",
                    if flags.len() > 1 { "s" } else { "" },
                    flags.join(", ")
                )));
            }
        }
        for (pool, gw) in spec.ipv4_data.iter().chain(spec.ipv6_data.iter()) {
            // Calico IPAM marks its pools with a 0/0 dummy gateway; anything else means
            // Docker's own IPAM, whose subnets Calico does not know.
            if gw != "0.0.0.0/0" && gw != "::/0" {
                return Err(Error::invalid(format!(
                    "Non-Calico IPAM driver is used. calico networks need Calico IPAM: add --ipam-driver calico (pool {pool}, gateway {gw} came from another IPAM driver)"
                )));
            }
        }
        let profile = if self.settings.create_profiles {
            // Docker sends no network name: the network ID names the profile until a
            // background task learns the name from the Docker API (see `super::profiles`).
            let name = fallback_profile(&spec.network_id);
            super::profiles::ensure_profile(self.store.as_ref(), &name).await?;
            name
        } else {
            String::new()
        };
        let rec = NetworkRecord {
            network_id: spec.network_id.clone(),
            profile,
            name: String::new(),
            ipv4_pools: spec.ipv4_data.iter().map(|(p, _)| p.clone()).collect(),
            ipv6_pools: spec.ipv6_data.iter().map(|(p, _)| p.clone()).collect(),
        };
        let value = serde_json::to_vec(&rec)
            .map_err(|e| Error::msg(format!("encode network record: {e}")))?;
        self.store
            .put(&keys::network_key(&spec.network_id), value)
            .await
            .ctx(format!("record network {}", spec.network_id))?;
        self.network_pools.lock().unwrap().insert(
            spec.network_id.clone(),
            rec.ipv4_pools
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect(),
        );
        // Docker finishes creating the network only after we answer: ask it for the name
        // from a task of its own, never from this handler (dockerd could deadlock).
        if let Some(bg) = self.background() {
            let id = spec.network_id.clone();
            tokio::spawn(async move {
                bg.learn_network_name(&id, super::profiles::NAME_LOOKUP_WINDOW, false)
                    .await
            });
        }
        Ok(())
    }

    /// `NetworkDriver.DeleteNetwork` (idempotent): deletes the network record and, with the
    /// last network record (of any host) and endpoint using it, its profile (named after
    /// the network once its name is learned) and its network-ID fallback, which may outlive
    /// the switch to the name. One listing of the records, one of the endpoints, one read of
    /// the profiles and one transaction; retried if anything changed meanwhile.
    pub async fn delete_network(&self, network_id: &str) -> Result<()> {
        use super::profiles::{self, decode_record};
        self.network_pools.lock().unwrap().remove(network_id);
        self.settled_records.lock().unwrap().remove(network_id);
        let key = keys::network_key(network_id);
        for _ in 0..profiles::CAS_ATTEMPTS {
            let records = self.store.list(&keys::networks_prefix()).await?;
            let Some(mine) = records.iter().find(|kv| kv.key == key) else {
                return Ok(());
            };
            let mut writes = vec![crate::datastore::Write::delete(key.clone(), mine.revision)];
            // A record we cannot read has no profile we know of: it just goes.
            if let Some(rec) = decode_record(mine).ok().filter(|r| !r.profile.is_empty()) {
                let others: Vec<NetworkRecord> = records
                    .iter()
                    .filter(|kv| kv.key != key)
                    .filter_map(|kv| decode_record(kv).ok())
                    .collect();
                let mut names = vec![rec.profile.clone()];
                let fallback = fallback_profile(network_id);
                if fallback != rec.profile {
                    names.push(fallback);
                }
                let store = self.store.as_ref();
                let profile_writes = async {
                    let unused = profiles::unused_profiles(store, &others, names).await?;
                    if unused.is_empty() {
                        return Ok(Vec::new());
                    }
                    profiles::profile_delete_writes(store, &unused).await
                };
                match profile_writes.await {
                    Ok(w) => writes.extend(w),
                    // The record must not outlive the network (it would keep its profiles
                    // in use forever): it goes alone, its profiles stay behind.
                    Err(e) => tracing::warn!(
                        network = %network_id, error = %e,
                        "delete network: profiles not checked, left in place"
                    ),
                }
            }
            match self.store.txn(writes).await {
                Ok(_) => {
                    // A Join racing this call may have cached the record again.
                    self.settled_records.lock().unwrap().remove(network_id);
                    return Ok(());
                }
                // The record or a profile changed since read: look again.
                Err(e) if e.is_lost_race() => continue,
                Err(e) => return Err(e.context(format!("delete network {network_id}"))),
            }
        }
        Err(Error::msg(format!(
            "delete network {network_id}: still conflicting after {} attempts",
            profiles::CAS_ATTEMPTS
        )))
    }

    /// The record of a network Docker knows and we have no record of (the datastore was
    /// lost or switched, or the network was made by the original plugins): made as
    /// CreateNetwork would make it, from the endpoint's addresses. An address in a pool that
    /// only explicit requests use (a `--subnet` pool) gives that pool; any other, all of
    /// Calico's pools (what `0.0.0.0/0` means in CreateNetwork's data). Created only if
    /// still missing: two endpoints adopting one network at once agree on one record. The
    /// profile is the network-ID fallback until the name is learned in the background, as
    /// for a new network. Nothing here waits on Docker.
    pub(super) async fn adopt_network(
        &self,
        network_id: &str,
        addrs: &[std::net::IpAddr],
    ) -> Result<NetworkRecord> {
        let pools = self.ipam.list_pools().await?;
        let pool_of = |ip: &std::net::IpAddr, all: &str| -> String {
            pools
                .iter()
                .filter(|p| !p.spec.is_automatic())
                .find(|p| p.spec.contains(ip))
                .map(|p| p.spec.cidr.clone())
                .unwrap_or_else(|| all.to_string())
        };
        let mut ipv4_pools: Vec<String> = addrs
            .iter()
            .filter(|a| a.is_ipv4())
            .map(|a| pool_of(a, "0.0.0.0/0"))
            .collect();
        let mut ipv6_pools: Vec<String> = addrs
            .iter()
            .filter(|a| a.is_ipv6())
            .map(|a| pool_of(a, "::/0"))
            .collect();
        ipv4_pools.dedup();
        ipv6_pools.dedup();
        let profile = if self.settings.create_profiles {
            let name = fallback_profile(network_id);
            super::profiles::ensure_profile(self.store.as_ref(), &name).await?;
            name
        } else {
            String::new()
        };
        let rec = NetworkRecord {
            network_id: network_id.to_string(),
            profile,
            name: String::new(),
            ipv4_pools,
            ipv6_pools,
        };
        let value = serde_json::to_vec(&rec)
            .map_err(|e| Error::msg(format!("encode network record: {e}")))?;
        match self
            .store
            .create(&keys::network_key(network_id), value)
            .await
        {
            Ok(_) => {
                tracing::info!(
                    network = %network_id,
                    ipv4_pools = ?rec.ipv4_pools,
                    ipv6_pools = ?rec.ipv6_pools,
                    "adopted a network Docker knows but calico-libnetwork had no record of (datastore lost or switched, or made by the original plugins)"
                );
                if let Some(bg) = self.background() {
                    let id = network_id.to_string();
                    tokio::spawn(async move {
                        bg.learn_network_name(&id, super::profiles::NAME_LOOKUP_WINDOW, false)
                            .await
                    });
                }
                Ok(rec)
            }
            // Adopted meanwhile by another request: theirs.
            Err(e) if e.is_exists() => self.network_record(network_id).await?.ok_or_else(|| {
                Error::msg(format!(
                    "adopt network {network_id}: its record came and went"
                ))
            }),
            Err(e) => Err(e.context(format!("adopt network {network_id}"))),
        }
    }

    /// Pools of a network as recorded, for tools.
    pub async fn network_pools(&self, network_id: &str) -> Result<Vec<IpNet>> {
        let rec = self.network_record(network_id).await?.unwrap_or_default();
        Ok(rec
            .ipv4_pools
            .iter()
            .chain(rec.ipv6_pools.iter())
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}
