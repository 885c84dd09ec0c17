//! Calico's block allocator over the datastore.
//!
//! The data and the algorithm are Calico's (`libcalico-go/lib/ipam`): addresses come from
//! host-affine blocks (`/calico/ipam/v2/assignment/...`), claimed through block affinities
//! (`/calico/ipam/v2/host/<node>/...`) and counted in handles (`/calico/ipam/v2/handle/...`).
//! Every write is a compare-and-swap on the key's revision, retried a bounded number of
//! times on conflict. Where Calico writes two keys in two steps (handle then block; block
//! then affinity), we write both in one datastore transaction, so no reader ever sees one
//! without the other.

mod affinity;
mod assign;
mod cache;
use cache::{CachedBlock, FULL_BLOCK_TTL};
mod handle;
mod host;
mod pools;
mod release;
mod reservations;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use chrono::Utc;
use ipnet::IpNet;

use crate::datastore::{Datastore, KeyValue, Revision};
use crate::error::{Error, Result};
use crate::model::block::AllocationBlock;
use crate::model::keys;
use crate::model::IpFamily;
use crate::model::{IpamConfig, IpamHandle};

pub use affinity::block_order;
pub use host::HostRelease;
pub use pools::{default_pool, PoolSummary};

/// How many times a lost compare-and-swap is retried (Calico's `datastoreRetries`).
pub const RETRIES: usize = 100;
/// Blocks a host may own when neither the config nor the request sets a limit.
pub const DEFAULT_MAX_BLOCKS: usize = 20;
/// The use our addresses are for.
pub const USE_WORKLOAD: &str = crate::model::ippool::USE_WORKLOAD;

/// Arguments of [`Ipam::auto_assign`] (one address family per call).
#[derive(Clone, Debug)]
pub struct AutoAssign {
    /// How many addresses.
    pub num: usize,
    /// Which family.
    pub family: IpFamily,
    /// Pools to use, in order (CIDRs); empty means every enabled pool that selects the node.
    pub pools: Vec<IpNet>,
    /// Handle the addresses are recorded under.
    pub handle: String,
    /// Attributes stored with the allocation (`node`, `timestamp`, ...).
    pub attrs: BTreeMap<String, String>,
    /// The host allocating.
    pub host: String,
    /// Per-request limit on blocks owned by the host.
    pub max_blocks: Option<usize>,
    /// Intended use (`Workload`).
    pub intended_use: String,
}

impl AutoAssign {
    /// `num` workload addresses of `family` for `host` under `handle`.
    pub fn new(num: usize, family: IpFamily, host: &str, handle: &str) -> Self {
        AutoAssign {
            num,
            family,
            pools: Vec::new(),
            handle: handle.to_string(),
            attrs: default_attrs(host),
            host: host.to_string(),
            max_blocks: None,
            intended_use: USE_WORKLOAD.to_string(),
        }
    }
}

/// The attributes every allocation of ours carries.
pub fn default_attrs(host: &str) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert("node".to_string(), host.to_string());
    a.insert(
        "timestamp".to_string(),
        crate::model::go_time_string(&Utc::now()),
    );
    a
}

/// What [`Ipam::auto_assign`] got.
#[derive(Clone, Debug, Default)]
pub struct Assigned {
    /// Addresses, with the block's prefix length (Calico's convention).
    pub ips: Vec<IpNet>,
    /// Why fewer than asked were assigned, in Calico's words.
    pub msgs: Vec<String>,
    /// Set when the host's block limit stopped the assignment.
    pub block_limit: Option<String>,
}

impl Assigned {
    /// Calico's `PartialFulfillmentError` text.
    pub fn shortfall(&self, asked: usize, family: IpFamily) -> String {
        let mut s = format!(
            "Assigned {} out of {} requested IPv{} addresses",
            self.ips.len(),
            asked,
            family.number()
        );
        for m in self.msgs.iter().chain(self.block_limit.iter()) {
            s.push_str("; ");
            s.push_str(m);
        }
        s
    }
}

/// Arguments of [`Ipam::assign_ip`].
#[derive(Clone, Debug)]
pub struct AssignIp {
    /// The address.
    pub ip: IpAddr,
    /// Handle it is recorded under.
    pub handle: String,
    /// Attributes stored with it.
    pub attrs: BTreeMap<String, String>,
    /// The host.
    pub host: String,
    /// Intended use; empty skips the check.
    pub intended_use: String,
}

/// Calico's IPAM over one datastore.
#[derive(Clone)]
pub struct Ipam {
    store: Arc<dyn Datastore>,
    /// Blocks as last read or written, with their revision. Writes are still compare-and-swap
    /// on the revision, so a stale entry costs a retry, never a wrong allocation.
    blocks: Arc<std::sync::Mutex<HashMap<IpNet, CachedBlock>>>,
}

fn handle_id(h: &str) -> String {
    // Calico cuts handle IDs at the first carriage return.
    h.split('\r').next().unwrap_or("").to_string()
}

fn enc<T: serde::Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::msg(format!("encode {what}: {e}")))
}

fn dec<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|e| Error::json(&kv.key, e))
}

/// A stored block, decoded and checked (one allocation entry per address, attribute
/// indexes in range, ...): the allocator indexes into it, so a damaged one (edited by hand,
/// written by a buggy tool) is an error naming its key, never a panic.
fn dec_block(kv: &KeyValue) -> Result<AllocationBlock> {
    AllocationBlock::from_json(&kv.value).map_err(|e| e.context(format!("read {}", kv.key)))
}

/// A block as read, with its revision.
struct BlockKv {
    block: AllocationBlock,
    rev: Revision,
}

/// A handle as known: not yet read, read absent, or read at a revision.
#[derive(Clone, Debug)]
enum HandleState {
    Unknown,
    Absent,
    At(IpamHandle, Revision),
}

impl Ipam {
    /// The allocator over `store`.
    pub fn new(store: Arc<dyn Datastore>) -> Self {
        Ipam {
            store,
            blocks: Default::default(),
        }
    }

    /// The datastore.
    pub fn store(&self) -> &Arc<dyn Datastore> {
        &self.store
    }

    // ------------------------------------------------------------ config

    /// IPAM config; a missing key reads as Calico's defaults and writes nothing.
    pub async fn get_config(&self) -> Result<IpamConfig> {
        let kv = self.store.get(keys::IPAM_CONFIG_KEY).await?;
        IpamConfig::from_stored(kv.as_ref().map(|kv| kv.value.as_slice()))
    }

    /// Sets the IPAM config, with Calico's rules.
    pub async fn set_config(&self, cfg: &IpamConfig) -> Result<()> {
        cfg.validate()?;
        self.store
            .put(keys::IPAM_CONFIG_KEY, enc("ipam config", cfg)?)
            .await
            .map(|_| ())
    }
}
