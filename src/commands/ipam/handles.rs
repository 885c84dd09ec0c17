//! The handles of our allocations: what the blocks hold per handle, what the handles
//! record, and `--repair`'s rewrite of a handle from its blocks.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::allocations::{all_allocations, Alloc, HANDLE_PREFIX};
use crate::datastore::{Datastore, Write};
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::model::{keys, IpamHandle};

/// A handle's per-block counts, blocks as their network address, zero counts left out.
pub(super) fn normalize_counts(h: &IpamHandle) -> BTreeMap<String, u64> {
    h.block
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| {
            let k = k
                .parse::<IpNet>()
                .map(|c| c.trunc().to_string())
                .unwrap_or_else(|_| k.clone());
            (k, *n)
        })
        .collect()
}

/// `2 in 10.0.0.0/26, 1 in 10.0.0.64/26`, or `nothing`.
pub(super) fn fmt_counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "nothing".to_string();
    }
    m.iter()
        .map(|(k, v)| format!("{v} in {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per handle (ours only), per block: how many addresses the blocks hold.
pub(super) fn counts_from_blocks(
    allocs: &BTreeMap<IpAddr, Alloc>,
) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for a in allocs.values() {
        if let Some(h) = a.our_handle() {
            *out.entry(h.to_string())
                .or_default()
                .entry(a.block.trunc().to_string())
                .or_default() += 1;
        }
    }
    out
}

/// Stored handles of ours, with their revisions.
pub(super) async fn our_handles(
    store: &dyn Datastore,
) -> Result<BTreeMap<String, (IpamHandle, i64)>> {
    let mut out = BTreeMap::new();
    for kv in store.list(keys::HANDLES_PREFIX).await? {
        let Some(id) = keys::parse_handle_key(&kv.key) else {
            continue;
        };
        if !id.starts_with(HANDLE_PREFIX) {
            continue;
        }
        out.insert(
            id.to_string(),
            (IpamHandle::from_json(&kv.value)?, kv.revision),
        );
    }
    Ok(out)
}

/// Rewrites one handle to what the blocks hold, read afresh; compare-and-swap on the handle
/// (our allocator writes a handle and its block together, so a concurrent change shows as a
/// changed handle). Returns what was done.
pub(super) async fn repair_handle(ipam: &Ipam, store: &dyn Datastore, id: &str) -> Result<String> {
    for _ in 0..5 {
        let key = keys::handle_key(id);
        let stored = store.get(&key).await?;
        let actual = counts_from_blocks(&all_allocations(ipam).await?)
            .remove(id)
            .unwrap_or_default();
        let write = match &stored {
            None if actual.is_empty() => return Ok("nothing to do any more".to_string()),
            None => {
                let h = IpamHandle {
                    block: actual.clone(),
                    ..Default::default()
                };
                Write::create(&key, h.to_json()?)
            }
            Some(kv) => {
                let mut h = IpamHandle::from_json(&kv.value)?;
                if normalize_counts(&h) == actual {
                    return Ok("nothing to do any more".to_string());
                }
                if actual.is_empty() {
                    Write::delete(&key, kv.revision)
                } else {
                    h.block = actual.clone();
                    Write::update(&key, h.to_json()?, kv.revision)
                }
            }
        };
        match store.txn(vec![write]).await {
            Ok(_) if actual.is_empty() => return Ok("deleted the empty handle".to_string()),
            Ok(_) => return Ok(format!("set the handle to {}", fmt_counts(&actual))),
            Err(e) if e.is_lost_race() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::msg(format!(
        "repair handle {id}: it kept changing (is the plugin busy?)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_counts_are_per_handle_of_ours_and_per_block() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let allocs = BTreeMap::from([
            (
                ip("10.0.0.1"),
                Alloc::in_block("10.0.0.0/26", Some("libnetwork.a")),
            ),
            (
                ip("10.0.0.2"),
                Alloc::in_block("10.0.0.0/26", Some("libnetwork.a")),
            ),
            (
                ip("10.0.0.65"),
                Alloc::in_block("10.0.0.64/26", Some("libnetwork.a")),
            ),
            (
                ip("10.0.0.3"),
                Alloc::in_block("10.0.0.0/26", Some("k8s-pod-network.b")),
            ),
            (ip("10.0.0.4"), Alloc::in_block("10.0.0.0/26", None)),
        ]);
        let counts = counts_from_blocks(&allocs);
        assert_eq!(counts.len(), 1);
        assert_eq!(
            fmt_counts(&counts["libnetwork.a"]),
            "2 in 10.0.0.0/26, 1 in 10.0.0.64/26"
        );
    }

    #[test]
    fn handle_counts_compare_by_truncated_block() {
        let mut h = IpamHandle::default();
        h.block.insert("10.0.0.5/26".to_string(), 2);
        h.block.insert("10.0.1.0/26".to_string(), 0);
        let counts = normalize_counts(&h);
        assert_eq!(fmt_counts(&counts), "2 in 10.0.0.0/26");
        assert_eq!(fmt_counts(&BTreeMap::new()), "nothing");
    }
}
