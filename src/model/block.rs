//! The IPAM allocation block: one CIDR's table of which ordinal is taken by whom.
//!
//! JSON (libcalico-go `model/block.go`, field order kept):
//! `{"cidr","affinity"(null when none),"affinity_claim_time"(omitempty),"allocations"
//! (attribute index or null per ordinal),"unallocated"(FIFO queue),"attributes",
//! "sequenceNumber","sequenceNumberForAllocation","deleted"}` plus legacy fields kept verbatim
//! (`hostAffinity`, `strictAffinity`). `attributes` is `null` where Go's slice is nil (a fresh
//! block, or one read with `null`, until an attribute comes or goes) and `[]` once emptied,
//! as Go writes it; both read the same.
//!
//! Invariants kept by every method here: each ordinal is either allocated (`allocations[o]`
//! points at an attribute) or in `unallocated`, never both; every attribute is referenced by
//! at least one allocation; `unallocated` is never reordered (take from the head, return to
//! the tail). Every *update* write must [`AllocationBlock::bump_sequence`] first; a freshly
//! created block starts at the creation time in Unix nanoseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::gotime::{opt_time, trunc_secs};
use super::omitempty::{null_default, omitempty};
use crate::error::{Error, Result};

/// Handle Windows hosts use to reserve addresses; such allocations don't make a block non-empty.
pub const WINDOWS_RESERVED_HANDLE: &str = "windows-reserved-ipam-handle";
/// Secondary attribute: the node that made the allocation.
pub const ATTR_NODE: &str = "node";
/// Secondary attribute: when it was made (Go `time.Time.String()`: written by
/// [`super::go_time_string`], read by [`super::parse_go_time`]).
pub const ATTR_TIMESTAMP: &str = "timestamp";
/// Secondary attribute: k8s pod.
pub const ATTR_POD: &str = "pod";
/// Secondary attribute: k8s namespace.
pub const ATTR_NAMESPACE: &str = "namespace";
/// Secondary attribute: allocation type (tunnel addresses).
pub const ATTR_TYPE: &str = "type";

/// The most host bits a block may have (a /20 v4 or /116 v6 block: 4096 addresses).
const MAX_BLOCK_HOST_BITS: u8 = 12;

/// Metadata shared by the allocations pointing at it. All fields are `omitempty`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
// Go's tags are camelCase except `handle_id`.
#[serde(default, rename_all = "camelCase")]
pub struct AllocationAttribute {
    /// The handle (`libnetwork.<endpointID>`); legacy data may hold `null`.
    #[serde(rename = "handle_id", skip_serializing_if = "omitempty")]
    pub handle_id: Option<String>,
    /// Owner attributes (`node`, `timestamp`, ...); empty means absent.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub secondary: BTreeMap<String, String>,
    /// Attributes of an alternate owner (live migration).
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub alternate_owner_attrs: BTreeMap<String, String>,
    /// Set on the shared attribute of released ordinals still in cooldown.
    #[serde(with = "opt_time", skip_serializing_if = "omitempty")]
    pub released_at: Option<DateTime<Utc>>,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl AllocationAttribute {
    /// The handle with anything from the first `\r` cut off, as Calico sanitizes it
    /// (host-local migration wrote malformed handles); `None` for no or empty handle.
    pub fn handle(&self) -> Option<&str> {
        self.handle_id
            .as_deref()
            .map(|h| h.split('\r').next().unwrap_or(h))
            .filter(|h| !h.is_empty())
    }
}

/// A block's attribute list, remembering whether Go would hold it as a nil slice: Go's
/// `newBlock` leaves it nil, written `null`; once an attribute is added (or the list is
/// compacted) the slice is non-nil, written `[]` even when empty again. Reads as a `Vec`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes {
    list: Vec<AllocationAttribute>,
    nil: bool,
}

impl Attributes {
    /// Go's nil slice: no attributes, written `null`.
    pub fn nil() -> Self {
        Attributes {
            list: Vec::new(),
            nil: true,
        }
    }

    /// Appends `attr`, returning its index.
    pub fn push(&mut self, attr: AllocationAttribute) -> u32 {
        self.nil = false;
        self.list.push(attr);
        (self.list.len() - 1) as u32
    }

    /// Takes the list out, leaving an empty non-nil one (Go's compaction assigns `[]`).
    fn take(&mut self) -> Vec<AllocationAttribute> {
        self.nil = false;
        std::mem::take(&mut self.list)
    }
}

impl From<Vec<AllocationAttribute>> for Attributes {
    fn from(list: Vec<AllocationAttribute>) -> Self {
        Attributes { list, nil: false }
    }
}

impl std::ops::Deref for Attributes {
    type Target = Vec<AllocationAttribute>;
    fn deref(&self) -> &Self::Target {
        &self.list
    }
}

impl Serialize for Attributes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if self.nil && self.list.is_empty() {
            s.serialize_none()
        } else {
            self.list.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(match Option::<Vec<AllocationAttribute>>::deserialize(d)? {
            Some(list) => Attributes { list, nil: false },
            None => Attributes::nil(),
        })
    }
}

/// What to release: an address, optionally guarded by its handle and sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseOptions {
    /// The address.
    pub address: IpAddr,
    /// If set, the stored handle must equal it.
    pub handle: Option<String>,
    /// If set, the ordinal's stored sequence number must equal it.
    pub sequence_number: Option<u64>,
}

impl ReleaseOptions {
    /// Release `address` unconditionally.
    pub fn new(address: IpAddr) -> Self {
        ReleaseOptions {
            address,
            handle: None,
            sequence_number: None,
        }
    }

    /// Require the stored handle to be `handle`.
    pub fn with_handle(mut self, handle: impl Into<String>) -> Self {
        self.handle = Some(handle.into());
        self
    }

    /// Require the stored sequence number to be `seq`.
    pub fn with_sequence(mut self, seq: u64) -> Self {
        self.sequence_number = Some(seq);
        self
    }
}

/// The result of [`AllocationBlock::release`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Requested addresses that were not allocated (or already cooling down).
    pub unallocated: Vec<IpAddr>,
    /// Addresses released, in request order.
    pub released: Vec<IpAddr>,
    /// Released addresses per (sanitized) handle, for decrementing handle records.
    pub count_by_handle: BTreeMap<String, u64>,
}

/// A refusal from a block operation. Converts into the crate [`Error`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The address is outside the block.
    #[error("locate {ip}: not in block {cidr}")]
    NotInBlock {
        /// The address.
        ip: IpAddr,
        /// The block.
        cidr: IpNet,
    },
    /// The address is already allocated (Calico's ErrorResourceAlreadyExists).
    #[error("assign {ip}: Address already assigned in block")]
    AlreadyAssigned {
        /// The address.
        ip: IpAddr,
    },
    /// A release named a handle other than the stored one (the block is left untouched).
    #[error("release {ip}: handle {requested:?} does not match stored handle {expected:?}")]
    HandleMismatch {
        /// The address.
        ip: IpAddr,
        /// The handle in the request.
        requested: String,
        /// The stored handle ("" for none).
        expected: String,
    },
    /// A release carried a stale sequence number (the block is left untouched).
    #[error("release {ip}: sequence number {requested} does not match stored {expected}")]
    SequenceMismatch {
        /// The address.
        ip: IpAddr,
        /// The sequence number in the request.
        requested: u64,
        /// The stored one (0 when none).
        expected: u64,
    },
}

impl From<BlockError> for Error {
    fn from(e: BlockError) -> Self {
        match e {
            BlockError::NotInBlock { .. } => Error::invalid(e),
            other => Error::msg(other),
        }
    }
}

/// An allocation block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Go's tags are camelCase except `affinity_claim_time`.
#[serde(rename_all = "camelCase")]
pub struct AllocationBlock {
    /// The block's CIDR (masked on read).
    #[serde(deserialize_with = "masked_cidr")]
    pub cidr: IpNet,
    /// `host:<node>`, `virtual:<name>` or `None` (written as `null`).
    #[serde(default)]
    pub affinity: Option<String>,
    /// When the affinity was claimed (RFC3339 seconds); absent on old blocks.
    #[serde(
        rename = "affinity_claim_time",
        default,
        with = "opt_time",
        skip_serializing_if = "omitempty"
    )]
    pub affinity_claim_time: Option<DateTime<Utc>>,
    /// Per ordinal: index into `attributes`, or `None` when free.
    #[serde(default, deserialize_with = "null_default")]
    pub allocations: Vec<Option<u32>>,
    /// Free ordinals, a FIFO queue.
    #[serde(default, deserialize_with = "null_default")]
    pub unallocated: Vec<u32>,
    /// Allocation attributes (`null` when absent, as Go reads a missing field: nil).
    #[serde(default = "Attributes::nil")]
    pub attributes: Attributes,
    /// Bumped on every update write.
    #[serde(default)]
    pub sequence_number: u64,
    /// Ordinal (decimal string) → `sequenceNumber` when it was allocated.
    #[serde(default, deserialize_with = "null_default")]
    pub sequence_number_for_allocation: BTreeMap<String, u64>,
    /// Only the Kubernetes backend sets this; always false in etcd.
    #[serde(default)]
    pub deleted: bool,
    /// Legacy and unknown fields (`hostAffinity`, `strictAffinity`, ...), kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn masked_cidr<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<IpNet, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| serde::de::Error::custom(format!("invalid block cidr {s:?}")))
}

impl AllocationBlock {
    /// A new empty block: every ordinal free in order, `sequenceNumber` = `now` in Unix
    /// nanoseconds; with a host, `affinity` is `host:<host>` and `affinity_claim_time` is
    /// `now`. Fails for blocks larger than 4096 addresses.
    pub fn new(cidr: IpNet, affinity_host: Option<&str>, now: DateTime<Utc>) -> Result<Self> {
        let cidr = cidr.trunc();
        let host_bits = cidr.max_prefix_len() - cidr.prefix_len();
        if host_bits > MAX_BLOCK_HOST_BITS {
            return Err(Error::invalid(format!(
                "create block {cidr}: more than {} addresses",
                1u32 << MAX_BLOCK_HOST_BITS
            )));
        }
        let n = 1u32 << host_bits;
        Ok(AllocationBlock {
            cidr,
            affinity: affinity_host.map(|h| format!("host:{h}")),
            affinity_claim_time: affinity_host.map(|_| trunc_secs(now)),
            allocations: vec![None; n as usize],
            unallocated: (0..n).collect(),
            attributes: Attributes::nil(),
            sequence_number: unix_nanos(now),
            sequence_number_for_allocation: BTreeMap::new(),
            deleted: false,
            extra: Map::new(),
        })
    }

    /// Decodes a stored block and checks its invariants (sizes and indexes in range).
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let b: AllocationBlock = super::decode("allocation block", bytes)?;
        b.check()?;
        Ok(b)
    }

    /// The JSON to store.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        super::encode(format_args!("block {}", self.cidr), self)
    }

    /// Checks the structure is usable: one allocation entry per address, attribute indexes
    /// and free ordinals in range.
    pub fn check(&self) -> Result<()> {
        let fail = |why: String| Err(Error::msg(format!("check block {}: {why}", self.cidr)));
        let host_bits = self.cidr.max_prefix_len() - self.cidr.prefix_len();
        if host_bits > MAX_BLOCK_HOST_BITS {
            return fail("block too large".into());
        }
        let size = self.size();
        if self.allocations.len() != size {
            return fail(format!(
                "{} allocation entries for {size} addresses",
                self.allocations.len()
            ));
        }
        if let Some(i) = self
            .allocations
            .iter()
            .flatten()
            .find(|&&i| i as usize >= self.attributes.len())
        {
            return fail(format!("attribute index {i} out of range"));
        }
        if let Some(o) = self.unallocated.iter().find(|&&o| o as usize >= size) {
            return fail(format!("free ordinal {o} out of range"));
        }
        Ok(())
    }

    /// Number of addresses in the block.
    pub fn size(&self) -> usize {
        1usize << (self.cidr.max_prefix_len() - self.cidr.prefix_len())
    }

    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.cidr.contains(ip)
    }

    /// The ordinal of `ip` (its offset from the block's first address).
    pub fn ordinal_of(&self, ip: &IpAddr) -> Option<usize> {
        if !self.contains(ip) {
            return None;
        }
        Some((addr_to_u128(ip) - addr_to_u128(&self.cidr.network())) as usize)
    }

    /// The address at `ordinal` (ordinal 0 is the block's first address; it is handed out).
    pub fn ip_of(&self, ordinal: usize) -> Option<IpAddr> {
        if ordinal >= self.size() {
            return None;
        }
        let v = addr_to_u128(&self.cidr.network()) + ordinal as u128;
        Some(match self.cidr {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
        })
    }

    /// Number of allocated ordinals (including ones in cooldown and Windows reservations).
    pub fn in_use_count(&self) -> usize {
        self.allocations.iter().filter(|a| a.is_some()).count()
    }

    /// Number of free ordinals.
    pub fn free_count(&self) -> usize {
        self.unallocated.len()
    }

    /// True when nothing is allocated, ignoring Windows reservations (Calico's `empty()`).
    pub fn is_empty(&self) -> bool {
        self.allocations.iter().flatten().all(|&i| {
            self.attributes
                .get(i as usize)
                .and_then(|a| a.handle_id.as_deref())
                .is_some_and(|h| h.eq_ignore_ascii_case(WINDOWS_RESERVED_HANDLE))
        })
    }

    /// The host of a `host:<n>` affinity.
    pub fn host_affinity(&self) -> Option<&str> {
        self.affinity.as_deref()?.strip_prefix("host:")
    }

    /// Whether the block is affine to `host`.
    pub fn is_affine_to(&self, host: &str) -> bool {
        self.host_affinity() == Some(host)
    }

    /// Makes the block affine to `host`, claimed at `now`.
    pub fn set_host_affinity(&mut self, host: &str, now: DateTime<Utc>) {
        self.affinity = Some(format!("host:{host}"));
        self.affinity_claim_time = Some(trunc_secs(now));
    }

    /// Drops the affinity and its claim time (both written as absent/null).
    pub fn clear_affinity(&mut self) {
        self.affinity = None;
        self.affinity_claim_time = None;
    }

    /// `sequenceNumber += 1`; call before every update write (not on create).
    pub fn bump_sequence(&mut self) {
        self.sequence_number = self.sequence_number.wrapping_add(1);
    }

    /// The sequence number stored for `ordinal` (0 when none, as in Go).
    pub fn sequence_for(&self, ordinal: usize) -> u64 {
        self.sequence_number_for_allocation
            .get(&ordinal.to_string())
            .copied()
            .unwrap_or(0)
    }

    /// The attribute of an allocated `ip`.
    pub fn attribute_of(&self, ip: &IpAddr) -> Option<&AllocationAttribute> {
        let idx = (*self.allocations.get(self.ordinal_of(ip)?)?)?;
        self.attributes.get(idx as usize)
    }

    /// Allocated addresses, in ordinal order.
    pub fn allocated_ips(&self) -> Vec<IpAddr> {
        (0..self.size())
            .filter(|&o| self.allocations[o].is_some())
            .filter_map(|o| self.ip_of(o))
            .collect()
    }

    /// Takes up to `n` addresses from the head of the free queue for `handle` with `attrs`.
    pub fn assign(
        &mut self,
        n: usize,
        handle: Option<&str>,
        attrs: &BTreeMap<String, String>,
    ) -> Vec<IpAddr> {
        self.assign_filtered(n, handle, attrs, |_| false)
    }

    /// [`AllocationBlock::assign`] skipping addresses for which `reserved` is true; those stay
    /// in the queue, in place. All addresses taken share one attribute (an equal existing one
    /// is reused) and get `seqForAlloc = sequenceNumber`.
    pub fn assign_filtered(
        &mut self,
        n: usize,
        handle: Option<&str>,
        attrs: &BTreeMap<String, String>,
        reserved: impl Fn(&IpAddr) -> bool,
    ) -> Vec<IpAddr> {
        let mut ips = Vec::new();
        let mut attr_idx = None;
        let mut keep = Vec::with_capacity(self.unallocated.len());
        let queue = std::mem::take(&mut self.unallocated);
        for ord in queue {
            if ips.len() >= n {
                keep.push(ord);
                continue;
            }
            let Some(ip) = self.ip_of(ord as usize) else {
                continue; // Out of range: check() rejects such blocks; drop defensively.
            };
            if reserved(&ip) {
                keep.push(ord);
                continue;
            }
            let idx = *attr_idx.get_or_insert_with(|| self.find_or_add_attribute(handle, attrs));
            self.allocations[ord as usize] = Some(idx);
            self.stamp_sequence(ord as usize);
            ips.push(ip);
        }
        self.unallocated = keep;
        ips
    }

    /// Allocates the specific address `ip` for `handle` with `attrs`.
    pub fn assign_specific(
        &mut self,
        ip: &IpAddr,
        handle: Option<&str>,
        attrs: &BTreeMap<String, String>,
    ) -> std::result::Result<(), BlockError> {
        let ord = self.ordinal_of(ip).ok_or(BlockError::NotInBlock {
            ip: *ip,
            cidr: self.cidr,
        })?;
        if self.allocations[ord].is_some() {
            return Err(BlockError::AlreadyAssigned { ip: *ip });
        }
        let idx = self.find_or_add_attribute(handle, attrs);
        self.allocations[ord] = Some(idx);
        self.unallocated.retain(|&o| o as usize != ord);
        self.stamp_sequence(ord);
        Ok(())
    }

    /// Releases addresses with no cooldown (freed ordinals go straight to the queue's tail).
    pub fn release(
        &mut self,
        opts: &[ReleaseOptions],
    ) -> std::result::Result<Released, BlockError> {
        self.release_with_cooldown(opts, Utc::now(), Duration::ZERO)
    }

    /// Releases addresses as Calico does.
    ///
    /// Duplicates are ignored (the last options for an address win). A handle or sequence
    /// mismatch on any address fails the whole call and leaves the block untouched. Free or
    /// cooling-down addresses are reported in `unallocated`. Released ordinals point at a new
    /// `{releasedAt: now}` attribute and get `seqForAlloc = sequenceNumber`; then
    /// [`AllocationBlock::garbage_collect`] frees those whose cooldown has passed (all of
    /// them with a zero cooldown) and compacts unreferenced attributes.
    pub fn release_with_cooldown(
        &mut self,
        opts: &[ReleaseOptions],
        now: DateTime<Utc>,
        cooldown: Duration,
    ) -> std::result::Result<Released, BlockError> {
        let mut unique: Vec<&ReleaseOptions> = Vec::new();
        for o in opts {
            match unique.iter_mut().find(|u| u.address == o.address) {
                Some(u) => *u = o,
                None => unique.push(o),
            }
        }
        let mut out = Released::default();
        let mut ordinals = Vec::new();
        for o in unique {
            let ip = o.address;
            let ord = self.ordinal_of(&ip).ok_or(BlockError::NotInBlock {
                ip,
                cidr: self.cidr,
            })?;
            if let Some(req) = o.sequence_number {
                let stored = self.sequence_for(ord);
                if req != stored {
                    return Err(BlockError::SequenceMismatch {
                        ip,
                        requested: req,
                        expected: stored,
                    });
                }
            }
            let attr = self.allocations[ord].and_then(|i| self.attributes.get(i as usize));
            let Some(attr) = attr.filter(|a| a.released_at.is_none()) else {
                out.unallocated.push(ip);
                continue;
            };
            let stored = attr.handle().unwrap_or("").to_string();
            if let Some(req) = o.handle.as_deref().filter(|h| !h.is_empty()) {
                if req != stored {
                    return Err(BlockError::HandleMismatch {
                        ip,
                        requested: req.to_string(),
                        expected: stored,
                    });
                }
            }
            if !stored.is_empty() {
                *out.count_by_handle.entry(stored).or_default() += 1;
            }
            ordinals.push(ord);
            out.released.push(ip);
        }
        if !ordinals.is_empty() {
            let cool = self.add_cooldown_attribute(now);
            for ord in ordinals {
                self.allocations[ord] = Some(cool);
                self.stamp_sequence(ord);
            }
            self.garbage_collect(now, cooldown);
        }
        Ok(out)
    }

    /// Releases every address allocated to `handle` (no cooldown); returns how many.
    /// With `sequence`, only ordinals whose stored sequence number equals it are released.
    pub fn release_by_handle(&mut self, handle: &str, sequence: Option<u64>) -> usize {
        self.release_by_handle_with_cooldown(handle, sequence, Utc::now(), Duration::ZERO)
    }

    /// [`AllocationBlock::release_by_handle`] with an explicit clock and cooldown.
    pub fn release_by_handle_with_cooldown(
        &mut self,
        handle: &str,
        sequence: Option<u64>,
        now: DateTime<Utc>,
        cooldown: Duration,
    ) -> usize {
        let indexes = self.attribute_indexes_for(handle);
        if indexes.is_empty() {
            return 0;
        }
        let mut cool = None;
        let mut count = 0;
        for ord in 0..self.size() {
            let Some(idx) = self.allocations[ord] else {
                continue;
            };
            if !indexes.contains(&idx) || sequence.is_some_and(|s| s != self.sequence_for(ord)) {
                continue;
            }
            let c = *cool.get_or_insert_with(|| self.add_cooldown_attribute(now));
            self.allocations[ord] = Some(c);
            count += 1;
        }
        self.garbage_collect(now, cooldown);
        count
    }

    /// Addresses allocated to `handle`, in ordinal order.
    pub fn ips_with_handle(&self, handle: &str) -> Vec<IpAddr> {
        let indexes = self.attribute_indexes_for(handle);
        (0..self.size())
            .filter(|&o| self.allocations[o].is_some_and(|i| indexes.contains(&i)))
            .filter_map(|o| self.ip_of(o))
            .collect()
    }

    /// Frees ordinals whose `releasedAt` is at or before `now - cooldown` (appending them to
    /// the queue's tail in ordinal order and clearing their sequence entries), then drops
    /// attributes nothing points at, renumbering allocations. Returns whether anything changed.
    pub fn garbage_collect(&mut self, now: DateTime<Utc>, cooldown: Duration) -> bool {
        let cutoff = chrono::Duration::from_std(cooldown)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut changed = false;
        let mut used = BTreeSet::new();
        for ord in 0..self.allocations.len() {
            let Some(idx) = self.allocations[ord] else {
                continue;
            };
            let released = self
                .attributes
                .get(idx as usize)
                .and_then(|a| a.released_at)
                .is_some_and(|t| t <= cutoff);
            if released {
                self.allocations[ord] = None;
                self.unallocated.push(ord as u32);
                self.sequence_number_for_allocation.remove(&ord.to_string());
                changed = true;
            } else {
                used.insert(idx);
            }
        }
        if used.len() != self.attributes.len() {
            let mut renumber = BTreeMap::new();
            let old = self.attributes.take();
            for (i, attr) in old.into_iter().enumerate() {
                if used.contains(&(i as u32)) {
                    renumber.insert(i as u32, self.attributes.push(attr));
                }
            }
            for a in self.allocations.iter_mut().flatten() {
                *a = renumber[&*a];
            }
            changed = true;
        }
        changed
    }

    fn stamp_sequence(&mut self, ordinal: usize) {
        self.sequence_number_for_allocation
            .insert(ordinal.to_string(), self.sequence_number);
    }

    fn find_or_add_attribute(
        &mut self,
        handle: Option<&str>,
        attrs: &BTreeMap<String, String>,
    ) -> u32 {
        let attr = AllocationAttribute {
            handle_id: handle.map(str::to_string),
            secondary: attrs.clone(),
            ..Default::default()
        };
        if let Some(i) = self.attributes.iter().position(|a| *a == attr) {
            return i as u32;
        }
        self.attributes.push(attr)
    }

    fn add_cooldown_attribute(&mut self, now: DateTime<Utc>) -> u32 {
        self.attributes.push(AllocationAttribute {
            released_at: Some(now),
            ..Default::default()
        })
    }

    fn attribute_indexes_for(&self, handle: &str) -> BTreeSet<u32> {
        self.attributes
            .iter()
            .enumerate()
            .filter(|(_, a)| a.handle() == Some(handle))
            .map(|(i, _)| i as u32)
            .collect()
    }
}

fn addr_to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(*v4)),
        IpAddr::V6(v6) => u128::from(*v6),
    }
}

fn unix_nanos(t: DateTime<Utc>) -> u64 {
    t.timestamp_nanos_opt().map_or(0, |n| n.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn no_attrs() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// A 100.64.0.0/24 block as in Calico's block unit tests.
    fn test_block() -> AllocationBlock {
        AllocationBlock::new("100.64.0.0/24".parse().unwrap(), Some("h"), t0()).unwrap()
    }

    /// Allocates `ordinals` to a fresh attribute with `handle`, like the upstream test helper.
    fn allocate(b: &mut AllocationBlock, ordinals: &[u32], handle: &str) {
        let idx = b.attributes.push(AllocationAttribute {
            handle_id: Some(handle.into()),
            ..Default::default()
        });
        for &o in ordinals {
            b.allocations[o as usize] = Some(idx);
        }
        b.unallocated.retain(|o| !ordinals.contains(o));
    }

    fn allocated(b: &AllocationBlock) -> Vec<u32> {
        (0..b.size() as u32)
            .filter(|&o| b.allocations[o as usize].is_some())
            .collect()
    }

    /// The invariants of the upstream `validate()` helper.
    fn validate(b: &AllocationBlock) {
        b.check().unwrap();
        let referenced: BTreeSet<u32> = b.allocations.iter().flatten().copied().collect();
        assert_eq!(
            referenced.len(),
            b.attributes.len(),
            "every attribute referenced"
        );
        let free: BTreeSet<u32> = b.unallocated.iter().copied().collect();
        assert_eq!(
            free.len(),
            b.unallocated.len(),
            "no duplicate free ordinals"
        );
        for o in &free {
            assert!(
                b.allocations[*o as usize].is_none(),
                "free ordinal {o} not allocated"
            );
        }
        assert_eq!(
            free.len() + b.in_use_count(),
            b.size(),
            "all addresses accounted for"
        );
    }

    const CALICO_BLOCK: &str = r#"{"cidr":"192.168.91.192/26","affinity":"host:my-host","affinity_claim_time":"2025-06-01T12:00:00Z","allocations":[0,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null],"unallocated":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63],"attributes":[{"handle_id":"libnetwork.abc","secondary":{"node":"my-host","timestamp":"2025-06-01 12:00:00.123456789 +0000 UTC"}}],"sequenceNumber":1748779200000000001,"sequenceNumberForAllocation":{"0":1748779200000000000},"deleted":false}"#;

    #[test]
    fn calico_block_round_trips_exactly() {
        let b = AllocationBlock::from_json(CALICO_BLOCK.as_bytes()).unwrap();
        assert_eq!(b.sequence_number, 1_748_779_200_000_000_001);
        assert_eq!(b.sequence_for(0), 1_748_779_200_000_000_000);
        assert_eq!(b.host_affinity(), Some("my-host"));
        assert_eq!(b.allocated_ips(), vec![ip("192.168.91.192")]);
        assert_eq!(
            String::from_utf8(b.to_json().unwrap()).unwrap(),
            CALICO_BLOCK
        );
        validate(&b);
    }

    #[test]
    fn fresh_block_shape() {
        let b = AllocationBlock::new("10.0.0.0/30".parse().unwrap(), Some("host-a"), t0()).unwrap();
        assert_eq!(
            String::from_utf8(b.to_json().unwrap()).unwrap(),
            r#"{"cidr":"10.0.0.0/30","affinity":"host:host-a","affinity_claim_time":"2025-06-01T12:00:00Z","allocations":[null,null,null,null],"unallocated":[0,1,2,3],"attributes":null,"sequenceNumber":1748779200000000000,"sequenceNumberForAllocation":{},"deleted":false}"#
        );
        let unaffine = AllocationBlock::new("10.0.0.0/30".parse().unwrap(), None, t0()).unwrap();
        let v: Value = serde_json::from_slice(&unaffine.to_json().unwrap()).unwrap();
        assert_eq!(v["affinity"], Value::Null);
        assert!(v.get("affinity_claim_time").is_none());
        assert!(AllocationBlock::new("10.0.0.0/16".parse().unwrap(), None, t0()).is_err());
    }

    // ipam_block.go newBlock leaves Attributes nil (`"attributes":null`); an allocation
    // appends to it, and a release's compaction (garbageCollect) assigns a fresh, non-nil
    // slice: `[]` once emptied. A block read with `null` or `[]` is written back as read.
    #[test]
    fn attributes_null_like_go() {
        let attrs = |b: &AllocationBlock| -> Value {
            serde_json::from_slice::<Value>(&b.to_json().unwrap()).unwrap()["attributes"].clone()
        };
        let mut b = AllocationBlock::new("10.0.0.0/30".parse().unwrap(), Some("h"), t0()).unwrap();
        assert_eq!(attrs(&b), Value::Null, "fresh");
        let ips = b.assign(1, Some("x"), &no_attrs());
        assert_eq!(attrs(&b), json!([{"handle_id": "x"}]));
        b.release(&[ReleaseOptions::new(ips[0])]).unwrap();
        assert!(b.attributes.is_empty());
        assert_eq!(attrs(&b), json!([]), "emptied by a release");
        for (read, written) in [("null", Value::Null), ("[]", json!([]))] {
            let src = format!(
                r#"{{"cidr":"10.0.0.0/31","affinity":null,"allocations":[null,null],"unallocated":[0,1],"attributes":{read},"sequenceNumber":5,"sequenceNumberForAllocation":{{}},"deleted":false}}"#
            );
            let mut b = AllocationBlock::from_json(src.as_bytes()).unwrap();
            assert_eq!(attrs(&b), written, "read {read}");
            b.bump_sequence();
            assert_eq!(attrs(&b), written, "rewritten after {read}");
        }
        let missing: AllocationBlock = serde_json::from_value(json!({
            "cidr": "10.0.0.0/31", "allocations": [null, null], "unallocated": [0, 1]
        }))
        .unwrap();
        assert_eq!(attrs(&missing), Value::Null, "absent reads as Go's nil");
    }

    #[test]
    fn legacy_block_reads_and_keeps_legacy_fields() {
        // Old shape: hostAffinity/strictAffinity, null handle and secondary, null attributes
        // list elsewhere, no sequence fields.
        let src = json!({
            "cidr": "10.0.0.0/30", "affinity": "host:old", "hostAffinity": "old", "strictAffinity": false,
            "allocations": [0, null, null, null], "unallocated": [1, 2, 3],
            "attributes": [{"handle_id": null, "secondary": null}]
        });
        let b: AllocationBlock = serde_json::from_value(src).unwrap();
        b.check().unwrap();
        assert_eq!(b.sequence_number, 0);
        assert!(b.sequence_number_for_allocation.is_empty());
        assert_eq!(b.attributes[0].handle(), None);
        let back: Value = serde_json::from_slice(&b.to_json().unwrap()).unwrap();
        assert_eq!(back["hostAffinity"], "old");
        assert_eq!(back["strictAffinity"], false);
        assert_eq!(back["sequenceNumber"], 0);

        let fresh_go: AllocationBlock = serde_json::from_value(json!({
            "cidr": "10.0.0.0/31", "affinity": null, "allocations": [null, null],
            "unallocated": [0, 1], "attributes": null, "sequenceNumber": 5,
            "sequenceNumberForAllocation": null, "deleted": false
        }))
        .unwrap();
        assert!(fresh_go.attributes.is_empty() && fresh_go.is_empty());
    }

    #[test]
    fn sequence_numbers_never_go_through_f64() {
        let mut b = AllocationBlock::from_json(CALICO_BLOCK.as_bytes()).unwrap();
        b.bump_sequence();
        let v: Value = serde_json::from_slice(&b.to_json().unwrap()).unwrap();
        assert_eq!(
            v["sequenceNumber"].as_u64(),
            Some(1_748_779_200_000_000_002)
        );
        // Every stored per-allocation number stays below the block's own: libcalico-go
        // (`ipam_block.go`) stamps an allocation with the current number and bumps it before the
        // write. At ~1.7e18 an f64 cannot add 1, so a float round-trip would break this.
        assert!(b
            .sequence_number_for_allocation
            .values()
            .all(|&s| s < b.sequence_number));
    }

    #[test]
    fn ordinals_and_addresses() {
        let b = AllocationBlock::new("fd80:24e2:f998:72d6::40/122".parse().unwrap(), None, t0())
            .unwrap();
        assert_eq!(b.size(), 64);
        assert_eq!(b.ip_of(0), Some(ip("fd80:24e2:f998:72d6::40")));
        assert_eq!(b.ip_of(63), Some(ip("fd80:24e2:f998:72d6::7f")));
        assert_eq!(b.ip_of(64), None);
        assert_eq!(b.ordinal_of(&ip("fd80:24e2:f998:72d6::45")), Some(5));
        assert_eq!(b.ordinal_of(&ip("fd80:24e2:f998:72d6::80")), None);
        assert_eq!(b.ordinal_of(&ip("10.0.0.1")), None);
        let b4 = test_block();
        assert_eq!(b4.ordinal_of(&ip("100.64.0.13")), Some(13));
        assert_eq!(b4.ip_of(255), Some(ip("100.64.0.255")));
    }

    #[test]
    fn assign_takes_from_head_and_shares_attribute() {
        let mut b = AllocationBlock::new("10.0.0.0/30".parse().unwrap(), Some("h"), t0()).unwrap();
        let attrs = BTreeMap::from([("node".to_string(), "h".to_string())]);
        let got = b.assign(2, Some("H"), &attrs);
        assert_eq!(got, vec![ip("10.0.0.0"), ip("10.0.0.1")]);
        assert_eq!(b.unallocated, vec![2, 3]);
        assert_eq!(b.attributes.len(), 1);
        assert_eq!(b.sequence_for(0), b.sequence_number);
        // Same handle and attrs: the attribute is reused.
        b.assign(1, Some("H"), &attrs);
        assert_eq!(b.attributes.len(), 1);
        // Different attrs: a new one.
        b.assign(1, Some("H"), &no_attrs());
        assert_eq!(b.attributes.len(), 2);
        assert!(b.assign(1, Some("H"), &attrs).is_empty(), "block is full");
        assert_eq!(b.ips_with_handle("H").len(), 4);
        validate(&b);
    }

    #[test]
    fn assign_filtered_leaves_reserved_in_place() {
        let mut b = AllocationBlock::new("10.0.0.0/29".parse().unwrap(), None, t0()).unwrap();
        let got = b.assign_filtered(3, None, &no_attrs(), |a| {
            *a == ip("10.0.0.1") || *a == ip("10.0.0.2")
        });
        assert_eq!(got, vec![ip("10.0.0.0"), ip("10.0.0.3"), ip("10.0.0.4")]);
        assert_eq!(b.unallocated, vec![1, 2, 5, 6, 7]);
        validate(&b);
    }

    #[test]
    fn assign_specific_and_already_assigned() {
        let mut b = test_block();
        b.assign_specific(&ip("100.64.0.7"), Some("x"), &no_attrs())
            .unwrap();
        assert!(!b.unallocated.contains(&7));
        assert_eq!(b.unallocated[..8], [0, 1, 2, 3, 4, 5, 6, 8]);
        let e = b
            .assign_specific(&ip("100.64.0.7"), Some("x"), &no_attrs())
            .unwrap_err();
        assert_eq!(
            e,
            BlockError::AlreadyAssigned {
                ip: ip("100.64.0.7")
            }
        );
        assert!(Error::from(e)
            .to_string()
            .contains("Address already assigned in block"));
        let e = b
            .assign_specific(&ip("100.65.0.7"), None, &no_attrs())
            .unwrap_err();
        assert!(matches!(e, BlockError::NotInBlock { .. }));
        assert!(Error::from(e).is_invalid());
        validate(&b);
    }

    #[test]
    fn release_single_ip_counts_by_handle() {
        let mut b = test_block();
        allocate(&mut b, &[13], "unlucky");
        let r = b
            .release(&[ReleaseOptions::new(ip("100.64.0.13")).with_handle("unlucky")])
            .unwrap();
        assert!(r.unallocated.is_empty());
        assert_eq!(
            r.count_by_handle,
            BTreeMap::from([("unlucky".to_string(), 1)])
        );
        assert_eq!(allocated(&b), Vec::<u32>::new());
        assert_eq!(
            *b.unallocated.last().unwrap(),
            13,
            "freed ordinal at the tail"
        );
        assert!(b.attributes.is_empty(), "unreferenced attributes compacted");
        validate(&b);
    }

    #[test]
    fn shared_attribute_survives_partial_release() {
        let mut b = test_block();
        allocate(&mut b, &[13, 26, 39], "lucky");
        let r = b
            .release(&[ReleaseOptions::new(ip("100.64.0.13"))])
            .unwrap();
        assert_eq!(
            r.count_by_handle,
            BTreeMap::from([("lucky".to_string(), 1)])
        );
        assert_eq!(allocated(&b), vec![26, 39]);
        assert_eq!(b.attributes.len(), 1);
        validate(&b);

        let r = b
            .release(&[
                ReleaseOptions::new(ip("100.64.0.26")),
                ReleaseOptions::new(ip("100.64.0.39")),
                ReleaseOptions::new(ip("100.64.0.39")),
            ])
            .unwrap();
        assert_eq!(r.count_by_handle["lucky"], 2, "duplicates ignored");
        assert!(allocated(&b).is_empty() && b.attributes.is_empty());
        assert_eq!(b.unallocated[b.unallocated.len() - 3..], [13, 26, 39]);
        validate(&b);
    }

    #[test]
    fn release_of_free_ip_reports_unallocated() {
        let mut b = test_block();
        let r = b
            .release(&[ReleaseOptions::new(ip("100.64.0.13")).with_handle("unlucky")])
            .unwrap();
        assert_eq!(r.unallocated, vec![ip("100.64.0.13")]);
        assert!(r.count_by_handle.is_empty());
        validate(&b);
    }

    #[test]
    fn release_mismatches_fail_and_change_nothing() {
        let mut b = test_block();
        allocate(&mut b, &[100], "newstuff");
        allocate(&mut b, &[13], "unlucky");
        b.sequence_number_for_allocation.insert("13".into(), 10);
        let before = b.clone();
        let e = b
            .release(&[
                ReleaseOptions::new(ip("100.64.0.13")),
                ReleaseOptions::new(ip("100.64.0.100")).with_handle("oldstuff"),
            ])
            .unwrap_err();
        assert!(matches!(e, BlockError::HandleMismatch { .. }), "{e}");
        assert_eq!(b, before);
        let e = b
            .release(&[ReleaseOptions::new(ip("100.64.0.13"))
                .with_handle("unlucky")
                .with_sequence(999)])
            .unwrap_err();
        assert_eq!(
            e,
            BlockError::SequenceMismatch {
                ip: ip("100.64.0.13"),
                requested: 999,
                expected: 10
            }
        );
        assert!(
            !Error::from(e).is_conflict(),
            "not a CAS conflict: must not be retried"
        );
        assert_eq!(b, before);
        b.release(&[ReleaseOptions::new(ip("100.64.0.13")).with_sequence(10)])
            .unwrap();
        validate(&b);
    }

    #[test]
    fn release_by_handle_appends_at_tail() {
        let mut b = test_block();
        assert_eq!(b.release_by_handle("nosuchhandle", None), 0);
        allocate(&mut b, &[15], "fifteen");
        allocate(&mut b, &[20], "twenty");
        assert_eq!(b.release_by_handle("fifteen", None), 1);
        assert_eq!(allocated(&b), vec![20]);
        assert_eq!(*b.unallocated.last().unwrap(), 15);
        validate(&b);

        allocate(&mut b, &[35], "several");
        allocate(&mut b, &[25], "several");
        allocate(&mut b, &[45], "several");
        assert_eq!(b.ips_with_handle("several").len(), 3);
        assert_eq!(b.release_by_handle("several", None), 3);
        assert_eq!(b.unallocated[b.unallocated.len() - 3..], [25, 35, 45]);
        validate(&b);
    }

    #[test]
    fn release_by_handle_skips_only_seq_mismatches() {
        let mut b = test_block();
        allocate(&mut b, &[15], "teens");
        allocate(&mut b, &[16], "teens");
        allocate(&mut b, &[17, 18], "teens");
        for (o, s) in [("15", 10), ("16", 10), ("17", 999), ("18", 10)] {
            b.sequence_number_for_allocation.insert(o.into(), s);
        }
        assert_eq!(b.release_by_handle("teens", Some(10)), 3);
        assert_eq!(allocated(&b), vec![17]);
        assert_eq!(b.sequence_for(17), 999);
        assert_eq!(b.sequence_for(15), 0, "cleared on free");
        validate(&b);
    }

    #[test]
    fn handles_are_sanitized_at_carriage_return() {
        let mut b = test_block();
        allocate(&mut b, &[3], "k8s-pod-network.abc\r\neth0");
        assert_eq!(
            b.ips_with_handle("k8s-pod-network.abc"),
            vec![ip("100.64.0.3")]
        );
        let r = b
            .release(&[ReleaseOptions::new(ip("100.64.0.3")).with_handle("k8s-pod-network.abc")])
            .unwrap();
        assert_eq!(r.count_by_handle["k8s-pod-network.abc"], 1);
    }

    #[test]
    fn cooldown_holds_addresses_until_gc() {
        let mut b = test_block();
        allocate(&mut b, &[1], "a");
        allocate(&mut b, &[2], "b");
        let cd = Duration::from_secs(30);
        b.release_with_cooldown(&[ReleaseOptions::new(ip("100.64.0.1"))], t0(), cd)
            .unwrap();
        b.release_with_cooldown(
            &[ReleaseOptions::new(ip("100.64.0.2"))],
            t0() + chrono::Duration::seconds(20),
            cd,
        )
        .unwrap();
        assert_eq!(allocated(&b), vec![1, 2], "both cooling down");
        assert_eq!(
            b.attributes.len(),
            2,
            "two releasedAt attributes, handles dropped"
        );
        // A cooling address is reported as unallocated, not released twice.
        let r = b
            .release_with_cooldown(&[ReleaseOptions::new(ip("100.64.0.1"))], t0(), cd)
            .unwrap();
        assert_eq!(r.unallocated, vec![ip("100.64.0.1")]);
        assert!(b.garbage_collect(t0() + chrono::Duration::seconds(30), cd));
        assert_eq!(allocated(&b), vec![2]);
        assert_eq!(b.attributes.len(), 1);
        validate(&b);
        let v: Value = serde_json::from_slice(&b.to_json().unwrap()).unwrap();
        assert_eq!(v["attributes"][0]["releasedAt"], "2025-06-01T12:00:20Z");
        assert!(b.garbage_collect(t0() + chrono::Duration::seconds(50), cd));
        assert!(allocated(&b).is_empty() && b.attributes.is_empty());
        assert!(!b.garbage_collect(t0() + chrono::Duration::seconds(60), cd));
    }

    #[test]
    fn fifo_reuse_after_release() {
        // A released ordinal goes to the tail of `unallocated` (libcalico-go `ipam_block.go`), so
        // assign/release rounds walk the whole block before an address comes back.
        let mut b = AllocationBlock::new("10.0.0.168/30".parse().unwrap(), Some("wrap-node"), t0())
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..5 {
            let got = b.assign(1, Some("H"), &no_attrs());
            seen.push(got[0]);
            b.bump_sequence();
            b.release(&[ReleaseOptions::new(got[0])]).unwrap();
            b.bump_sequence();
        }
        let expect: Vec<IpAddr> = [
            "10.0.0.168",
            "10.0.0.169",
            "10.0.0.170",
            "10.0.0.171",
            "10.0.0.168",
        ]
        .iter()
        .map(|s| ip(s))
        .collect();
        assert_eq!(seen, expect);
        validate(&b);
    }

    #[test]
    fn aba_protection_sequence_moves_on() {
        // ABA protection (libcalico-go `ipam_block.go`): an address released by handle and
        // assigned again gets a new sequence number, so a release naming the old one fails.
        let mut b = AllocationBlock::new("10.0.0.0/30".parse().unwrap(), Some("h"), t0()).unwrap();
        let a = b.assign(1, Some("H"), &no_attrs())[0];
        let old = b.sequence_for(0);
        b.bump_sequence();
        assert_eq!(b.release_by_handle("H", None), 1);
        b.bump_sequence();
        b.assign_specific(&a, Some("H"), &no_attrs()).unwrap();
        assert_eq!(b.sequence_for(0), old + 2);
        b.bump_sequence();
        assert!(b
            .release(&[ReleaseOptions::new(a).with_sequence(old)])
            .is_err());
        let r = b
            .release(&[ReleaseOptions::new(a).with_sequence(old + 2)])
            .unwrap();
        assert_eq!(r.released, vec![a]);
    }

    #[test]
    fn emptiness_and_windows_reservations() {
        let mut b = test_block();
        assert!(b.is_empty());
        allocate(&mut b, &[255], WINDOWS_RESERVED_HANDLE);
        assert!(b.is_empty());
        assert_eq!(b.in_use_count(), 1);
        allocate(&mut b, &[32], "alloc");
        assert!(!b.is_empty());
        assert_eq!(b.free_count(), 254);
    }

    #[test]
    fn affinity_helpers() {
        let mut b = test_block();
        assert!(b.is_affine_to("h"));
        b.affinity = Some("virtual:h".into());
        assert_eq!(b.host_affinity(), None);
        b.set_host_affinity("other", t0());
        assert_eq!(b.host_affinity(), Some("other"));
        b.clear_affinity();
        let v: Value = serde_json::from_slice(&b.to_json().unwrap()).unwrap();
        assert_eq!(v["affinity"], Value::Null);
        assert!(v.get("affinity_claim_time").is_none());
    }

    #[test]
    fn corrupt_blocks_are_rejected() {
        let bad = r#"{"cidr":"10.0.0.0/30","affinity":null,"allocations":[null],"unallocated":[0],"attributes":[],"sequenceNumber":1,"sequenceNumberForAllocation":{},"deleted":false}"#;
        assert!(AllocationBlock::from_json(bad.as_bytes()).is_err());
        let bad = r#"{"cidr":"10.0.0.0/31","affinity":null,"allocations":[3,null],"unallocated":[1],"attributes":[],"sequenceNumber":1,"sequenceNumberForAllocation":{},"deleted":false}"#;
        assert!(AllocationBlock::from_json(bad.as_bytes()).is_err());
        let e = AllocationBlock::from_json(b"{\"cidr\":1}").unwrap_err();
        assert!(
            e.to_string().starts_with("decode allocation block: "),
            "{e}"
        );
    }
}
