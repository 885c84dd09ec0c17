//! Black-box tests of the IPAM allocator (`calico_libnetwork::ipam`), adapted from Calico's
//! own IPAM tests (libcalico-go `lib/ipam/ipam_test.go`: AutoAssign, AssignIP, ReleaseIPs,
//! affinities, borrowing, handles; the case numbers below follow that file's order), each
//! run against a real etcd and against the embedded local store.
//!
//! Our block order is not Calico's Go-RNG walk (we start at an FNV-1 offset of the host
//! name), so no test asserts a block CIDR that depends on it: tests assert properties (the
//! address is in the pool, the block is affine to the host, the affinity is confirmed, ...).
//! After every scenario [`check_consistent`] reads the raw IPAM keys and checks the data
//! invariants Calico relies on (see [`check_consistent`]).

use crate::common;

use common::backends::{backends, Store};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use calico_libnetwork::datastore::resources;
use calico_libnetwork::ipam::{default_attrs, AssignIp, Assigned, AutoAssign, Ipam};
use calico_libnetwork::model::{
    keys, AllocationBlock, BlockAffinity, IpFamily, IpPool, IpPoolSpec, IpamConfig, IpamHandle,
    Node, NodeSpec,
};
use ipnet::IpNet;
use serde_json::Value;

// ------------------------------------------------------------------ helpers

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An allocator over `s` with a Node resource for each of `hosts`.
async fn setup(s: &Store, hosts: &[&str]) -> Ipam {
    let ipam = Ipam::new(s.clone());
    for h in hosts {
        calico_libnetwork::driver::init::ensure_node(ipam.store().as_ref(), h)
            .await
            .unwrap();
    }
    ipam
}

/// Creates pool `name` with `cidr` and block size `bs` (0 = the family default).
async fn add_pool(ipam: &Ipam, name: &str, cidr: &str, bs: u8) -> IpPool {
    add_pool_spec(
        ipam,
        name,
        IpPoolSpec {
            cidr: cidr.to_string(),
            block_size: bs,
            ..Default::default()
        },
    )
    .await
}

async fn add_pool_spec(ipam: &Ipam, name: &str, spec: IpPoolSpec) -> IpPool {
    ipam.create_pool(IpPool::new(name, spec))
        .await
        .unwrap_or_else(|e| panic!("create pool {name}: {e}"))
}

/// An IPv4 AutoAssign request.
fn req(n: usize, host: &str, handle: &str) -> AutoAssign {
    AutoAssign::new(n, IpFamily::V4, host, handle)
}

/// An IPv4 AutoAssign request restricted to `pools`.
/// AutoAssign of `n` addresses for `host` under `handle`, asserting that it gave all `n`.
async fn assign_all(ipam: &Ipam, n: usize, host: &str, handle: &str) -> Assigned {
    let a = ipam.auto_assign(&req(n, host, handle)).await.unwrap();
    assert_eq!(a.ips.len(), n, "{a:?}");
    a
}

fn req_pools(n: usize, host: &str, handle: &str, pools: &[&str]) -> AutoAssign {
    let mut r = req(n, host, handle);
    r.pools = pools.iter().map(|p| net(p)).collect();
    r
}

fn assign_ip_args(addr: &str, host: &str, handle: &str) -> AssignIp {
    AssignIp {
        ip: ip(addr),
        handle: handle.to_string(),
        attrs: default_attrs(host),
        host: host.to_string(),
        intended_use: "Workload".to_string(),
    }
}

fn addrs(ips: &[IpNet]) -> Vec<IpAddr> {
    ips.iter().map(|n| n.addr()).collect()
}

fn distinct(ips: &[IpNet]) -> usize {
    ips.iter().map(|n| n.addr()).collect::<HashSet<_>>().len()
}

fn strict_config(max_blocks: u32) -> IpamConfig {
    IpamConfig {
        strict_affinity: true,
        auto_allocate_blocks: true,
        max_blocks_per_host: max_blocks,
        ..IpamConfig::missing()
    }
}

/// Every host affinity: (host, block, value).
async fn affinities(s: &Store) -> Vec<(String, IpNet, BlockAffinity)> {
    s.list(&keys::all_host_affinities_prefix())
        .await
        .unwrap()
        .into_iter()
        .map(|kv| {
            let (host, cidr) = keys::parse_block_affinity_key(&kv.key)
                .unwrap_or_else(|| panic!("unexpected key under host/: {}", kv.key));
            (host, cidr, BlockAffinity::from_json(&kv.value).unwrap())
        })
        .collect()
}

/// The blocks `host` has an affinity for.
async fn affine_blocks(s: &Store, host: &str) -> BTreeSet<IpNet> {
    affinities(s)
        .await
        .into_iter()
        .filter(|(h, _, _)| h == host)
        .map(|(_, c, _)| c)
        .collect()
}

/// Every block (both families).
async fn blocks(ipam: &Ipam) -> Vec<AllocationBlock> {
    ipam.list_blocks(None)
        .await
        .unwrap()
        .into_iter()
        .map(|(b, _)| b)
        .collect()
}

async fn block_of(ipam: &Ipam, cidr: &IpNet) -> Option<AllocationBlock> {
    blocks(ipam).await.into_iter().find(|b| b.cidr == *cidr)
}

/// Every handle ID with its stored value.
async fn handles(s: &Store) -> BTreeMap<String, IpamHandle> {
    s.list(keys::HANDLES_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .map(|kv| {
            let id = kv
                .key
                .strip_prefix(keys::HANDLES_PREFIX)
                .unwrap()
                .to_string();
            (id, IpamHandle::from_json(&kv.value).unwrap())
        })
        .collect()
}

/// Allocated addresses over all blocks.
async fn allocated(ipam: &Ipam) -> Vec<IpAddr> {
    blocks(ipam)
        .await
        .iter()
        .flat_map(|b| b.allocated_ips())
        .collect()
}

fn u64_field(v: &Value, field: &str, key: &str) -> u64 {
    let n = v.get(field).unwrap_or_else(|| panic!("{key}: no {field}"));
    n.as_u64()
        .unwrap_or_else(|| panic!("{key}: {field} is not a u64 integer: {n}"))
}

/// Checks, on the raw stored JSON, what must hold whenever no IPAM operation is in flight:
/// - every affinity is confirmed, and its block exists and carries `host:<host>`;
/// - every block with a `host:` affinity has that host's affinity key;
/// - `sequenceNumber` is an exact u64 and every `sequenceNumberForAllocation` value is
///   strictly below it; every allocated ordinal has one;
/// - each ordinal is either allocated or queued in `unallocated` (exactly once);
/// - every attribute is referenced; every allocation's attribute has the `node` attribute
///   and (with `require_handles`) a handle;
/// - handle counts agree exactly with the blocks (both directions).
async fn check_consistent(s: &Store, require_handles: bool) {
    let affs = affinities(s).await;
    let block_kvs = s.list(keys::ALL_BLOCKS_PREFIX).await.unwrap();
    let mut by_cidr: HashMap<IpNet, AllocationBlock> = HashMap::new();
    // (handle, block) -> allocations counted from the blocks
    let mut counted: BTreeMap<(String, String), u64> = BTreeMap::new();
    for kv in &block_kvs {
        let key = &kv.key;
        let raw: Value = serde_json::from_slice(&kv.value).unwrap();
        let seq = u64_field(&raw, "sequenceNumber", key);
        assert!(
            seq > 1_600_000_000_000_000_000,
            "{key}: sequenceNumber {seq} should start at a Unix-nanosecond time"
        );
        let sfa = raw
            .get("sequenceNumberForAllocation")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (ord, v) in &sfa {
            let v = v
                .as_u64()
                .unwrap_or_else(|| panic!("{key}: seqForAlloc[{ord}] not a u64: {v}"));
            assert!(
                v < seq,
                "{key}: sequenceNumberForAllocation[{ord}]={v} is not below sequenceNumber={seq}"
            );
        }
        let b = AllocationBlock::from_json(&kv.value).unwrap();
        assert_eq!(keys::block_key(&b.cidr), *key, "block key matches its cidr");
        let size = b.size();
        assert_eq!(b.allocations.len(), size, "{key}: allocations length");
        let mut queued = HashSet::new();
        for o in &b.unallocated {
            assert!((*o as usize) < size, "{key}: ordinal {o} out of range");
            assert!(queued.insert(*o), "{key}: ordinal {o} queued twice");
            assert!(
                b.allocations[*o as usize].is_none(),
                "{key}: ordinal {o} both queued and allocated"
            );
        }
        let mut referenced = HashSet::new();
        for (ord, a) in b.allocations.iter().enumerate() {
            match a {
                None => assert!(
                    queued.contains(&(ord as u32)),
                    "{key}: free ordinal {ord} missing from unallocated"
                ),
                Some(idx) => {
                    referenced.insert(*idx);
                    let attr = b
                        .attributes
                        .get(*idx as usize)
                        .unwrap_or_else(|| panic!("{key}: attribute {idx} missing"));
                    assert!(
                        sfa.contains_key(&ord.to_string()),
                        "{key}: allocated ordinal {ord} has no sequenceNumberForAllocation"
                    );
                    assert!(
                        attr.secondary.get("node").is_some_and(|n| !n.is_empty()),
                        "{key}: ordinal {ord} has no node attribute: {attr:?}"
                    );
                    match attr.handle() {
                        Some(h) => {
                            *counted
                                .entry((h.to_string(), b.cidr.to_string()))
                                .or_default() += 1
                        }
                        None => assert!(
                            !require_handles,
                            "{key}: ordinal {ord} has no handle: {attr:?}"
                        ),
                    }
                }
            }
        }
        for i in 0..b.attributes.len() {
            assert!(
                referenced.contains(&(i as u32)),
                "{key}: attribute {i} is referenced by no allocation"
            );
        }
        by_cidr.insert(b.cidr, b);
    }
    for (host, cidr, aff) in &affs {
        assert!(
            aff.is_confirmed(),
            "affinity {host} {cidr}: {:?}",
            aff.state
        );
        let b = by_cidr
            .get(cidr)
            .unwrap_or_else(|| panic!("affinity {host} {cidr} has no block"));
        assert_eq!(
            b.affinity.as_deref(),
            Some(format!("host:{host}").as_str()),
            "block {cidr} disagrees with the affinity of {host}"
        );
    }
    for b in by_cidr.values() {
        if let Some(h) = b.host_affinity() {
            assert!(
                affs.iter().any(|(ah, c, _)| ah == h && *c == b.cidr),
                "block {} is affine to {h} but has no affinity key",
                b.cidr
            );
        }
    }
    let mut stored: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (id, h) in handles(s).await {
        assert!(!id.is_empty(), "a handle with an empty ID was written");
        assert!(!h.is_empty(), "handle {id} is stored empty");
        for (blk, n) in h.block {
            stored.insert((id.clone(), blk), n);
        }
    }
    assert_eq!(
        stored, counted,
        "handle counts (left) disagree with block allocations (right)"
    );
}

// ------------------------------------------------------------------ cases 2, 3

/// Cases 2 and 3: the first address claims a block (affinity `host:host-a`, affinity key
/// confirmed, with Calico's key shapes); the next address comes from the same block.
async fn first_ip_claims_confirmed_affine_block(s: Store) {
    let ipam = setup(&s, &["host-a", "test-host"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/24", 0).await;

    let a = ipam.auto_assign(&req(1, "host-a", "h1")).await.unwrap();
    assert_eq!(a.ips.len(), 1, "{a:?}");
    assert!(a.msgs.is_empty() && a.block_limit.is_none(), "{a:?}");
    let first = a.ips[0];
    assert_eq!(first.prefix_len(), 26, "returned with the block's prefix");
    assert!(net("10.0.0.0/24").contains(&first.addr()));
    let block = first.trunc();
    assert_eq!(
        first.addr(),
        block.network(),
        "ordinal 0 is handed out first"
    );

    let all = blocks(&ipam).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].cidr, block);
    assert_eq!(all[0].affinity.as_deref(), Some("host:host-a"));
    assert!(all[0].affinity_claim_time.is_some());

    let seg = format!("{}-26", block.network());
    let bkey = format!("/calico/ipam/v2/assignment/ipv4/block/{seg}");
    let akey = format!("/calico/ipam/v2/host/host-a/ipv4/block/{seg}");
    assert_eq!(keys::block_key(&block), bkey);
    assert!(s.get(&bkey).await.unwrap().is_some());
    let aff = s.get(&akey).await.unwrap().expect("affinity key");
    let v: Value = serde_json::from_slice(&aff.value).unwrap();
    assert_eq!(v, serde_json::json!({"state":"confirmed","deleted":false}));
    let h = s.get("/calico/ipam/v2/handle/h1").await.unwrap().unwrap();
    let v: Value = serde_json::from_slice(&h.value).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"block":{block.to_string():1},"deleted":false})
    );

    let b = ipam.auto_assign(&req(1, "host-a", "h2")).await.unwrap();
    assert_eq!(b.ips.len(), 1);
    assert_eq!(
        b.ips[0].trunc(),
        block,
        "second address from the same block"
    );
    let next = match first.addr() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
        IpAddr::V6(_) => unreachable!(),
    };
    assert_eq!(b.ips[0].addr(), next);
    assert_eq!(blocks(&ipam).await.len(), 1, "no second block claimed");

    // Another host claims a block of its own.
    let c = ipam.auto_assign(&req(1, "test-host", "h3")).await.unwrap();
    assert_eq!(c.ips.len(), 1);
    assert_ne!(c.ips[0].trunc(), block);
    assert!(net("10.0.0.0/24").contains(&c.ips[0].addr()));
    assert_eq!(
        affine_blocks(&s, "test-host").await,
        BTreeSet::from([c.ips[0].trunc()])
    );

    // Attributes: handle and node.
    let blk = block_of(&ipam, &block).await.unwrap();
    let attr = blk.attribute_of(&first.addr()).unwrap();
    assert_eq!(attr.handle(), Some("h1"));
    assert_eq!(
        attr.secondary.get("node").map(String::as_str),
        Some("host-a")
    );
    assert!(attr.secondary.contains_key("timestamp"));
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 4

/// Case 4: explicitly requested pools; exhaustion gives 0 addresses and no error.
async fn explicit_pool_until_exhausted(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/24", 0).await;
    add_pool(&ipam, "pool2", "20.0.0.0/24", 0).await;
    let p2 = net("20.0.0.0/24");

    let a = ipam
        .auto_assign(&req_pools(1, "host-a", "h", &["20.0.0.0/24"]))
        .await
        .unwrap();
    assert_eq!(a.ips.len(), 1);
    assert!(p2.contains(&a.ips[0].addr()));
    let block = a.ips[0].trunc();
    let b = ipam
        .auto_assign(&req_pools(1, "host-a", "h", &["20.0.0.0/24"]))
        .await
        .unwrap();
    assert_eq!(b.ips.len(), 1);
    assert_eq!(b.ips[0].trunc(), block, "repeat requests stay in the block");

    let c = ipam
        .auto_assign(&req_pools(254, "host-a", "h", &["20.0.0.0/24"]))
        .await
        .unwrap();
    assert_eq!(c.ips.len(), 254, "{:?}", c.msgs);
    assert!(c.ips.iter().all(|n| p2.contains(&n.addr())));
    let mut all = a.ips.clone();
    all.extend(&b.ips);
    all.extend(&c.ips);
    assert_eq!(distinct(&all), 256);

    let d = ipam
        .auto_assign(&req_pools(1, "host-a", "h", &["20.0.0.0/24"]))
        .await
        .expect("an exhausted pool is not an error");
    assert!(d.ips.is_empty(), "{d:?}");
    assert_eq!(d.msgs, vec!["No IPs available in pools: [20.0.0.0/24]"]);
    assert!(
        blocks(&ipam).await.iter().all(|b| p2.contains(&b.cidr)),
        "nothing taken from pool1"
    );
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 5

/// Case 5: with strict affinity off, a host whose blocks are full borrows from another
/// host's block once the pool has no unclaimed block.
async fn borrowing_with_strict_off(s: Store) {
    let ipam = setup(&s, &["host-a", "host-b"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/25", 0).await;
    let a = assign_all(&ipam, 1, "host-a", "ha").await;
    let b = assign_all(&ipam, 1, "host-b", "hb").await;
    let (ba, bb) = (a.ips[0].trunc(), b.ips[0].trunc());
    assert_ne!(ba, bb, "each host claims its own block");
    assert_eq!(affine_blocks(&s, "host-a").await, BTreeSet::from([ba]));
    assert_eq!(affine_blocks(&s, "host-b").await, BTreeSet::from([bb]));

    let c = ipam.auto_assign(&req(64, "host-a", "ha")).await.unwrap();
    assert_eq!(c.ips.len(), 64, "{:?}", c.msgs);
    assert!(c.msgs.is_empty(), "{:?}", c.msgs);
    let own: Vec<_> = c.ips.iter().filter(|n| n.trunc() == ba).collect();
    let borrowed: Vec<_> = c.ips.iter().filter(|n| n.trunc() == bb).collect();
    assert_eq!((own.len(), borrowed.len()), (63, 1));
    // host-b took its block's ordinal 0; the borrowed one is the next in the queue.
    let expect = match bb.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
        IpAddr::V6(_) => unreachable!(),
    };
    assert_eq!(borrowed[0].addr(), expect);
    let blk = block_of(&ipam, &bb).await.unwrap();
    assert_eq!(
        blk.affinity.as_deref(),
        Some("host:host-b"),
        "borrowing keeps the owner"
    );
    let attr = blk.attribute_of(&expect).unwrap();
    assert_eq!(attr.handle(), Some("ha"));
    assert_eq!(
        attr.secondary.get("node").map(String::as_str),
        Some("host-a")
    );
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 6

/// Case 6: strict affinity stops at the host's blocks, with Calico's message and no error.
async fn strict_affinity_stops_at_affine_blocks(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    ipam.set_config(&strict_config(0)).await.unwrap();
    add_pool(&ipam, "pool1", "192.168.1.0/26", 0).await;
    add_pool(&ipam, "pool2", "192.168.1.64/26", 0).await;
    let a = ipam
        .auto_assign(&req_pools(256, "host-a", "h", &["192.168.1.0/26"]))
        .await
        .expect("no error under strict affinity");
    assert_eq!(a.ips.len(), 64);
    assert_eq!(distinct(&a.ips), 64);
    assert!(a
        .ips
        .iter()
        .all(|n| net("192.168.1.0/26").contains(&n.addr())));
    assert_eq!(
        a.msgs.first().map(String::as_str),
        Some("No more free affine blocks and strict affinity enabled"),
        "{:?}",
        a.msgs
    );
    assert!(a.block_limit.is_none());
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 7

/// Case 7: an exhausted pool (v4 /24 and v6 /120) gives what it has and a message.
async fn pool_exhausted_v4_and_v6(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "pool4", "192.168.1.0/24", 0).await;
    add_pool(&ipam, "pool6", "fd80:24e2:f998:72d6::/120", 0).await;

    let a = ipam.auto_assign(&req(257, "host-a", "h4")).await.unwrap();
    assert_eq!(a.ips.len(), 256);
    assert_eq!(distinct(&a.ips), 256);
    assert_eq!(a.msgs, vec!["No IPs available in pools: [192.168.1.0/24]"]);
    assert_eq!(
        a.shortfall(257, IpFamily::V4),
        "Assigned 256 out of 257 requested IPv4 addresses; No IPs available in pools: [192.168.1.0/24]"
    );

    let r6 = AutoAssign::new(257, IpFamily::V6, "host-a", "h6");
    let b = ipam.auto_assign(&r6).await.unwrap();
    assert_eq!(b.ips.len(), 256);
    assert_eq!(distinct(&b.ips), 256);
    assert!(b
        .ips
        .iter()
        .all(|n| n.prefix_len() == 122 && net("fd80:24e2:f998:72d6::/120").contains(&n.addr())));
    assert_eq!(
        b.msgs,
        vec!["No IPs available in pools: [fd80:24e2:f998:72d6::/120]"]
    );
    assert_eq!(ipam.list_blocks(Some(IpFamily::V6)).await.unwrap().len(), 4);
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 8

/// AutoAssign of 256 addresses for `host` with a per-request limit of `max_blocks` blocks:
/// asserts that it gave `got`, that `block_limit` says the limit stopped it, and that `host`
/// has `max_blocks` affine blocks.
async fn assign_to_block_limit(
    ipam: &Ipam,
    s: &Store,
    host: &str,
    handle: &str,
    max_blocks: usize,
    got: usize,
) -> Assigned {
    let mut r = req(256, host, handle);
    r.max_blocks = Some(max_blocks);
    let a = ipam.auto_assign(&r).await.unwrap();
    assert_eq!(a.ips.len(), got);
    assert_eq!(
        a.block_limit,
        Some(format!(
            "Need to allocate an IPAM block but could not - limit of {max_blocks} blocks reached for this node"
        ))
    );
    assert_eq!(affine_blocks(s, host).await.len(), max_blocks);
    a
}

/// Case 8: a per-request block limit stops the assignment with `block_limit` set.
async fn per_request_block_limit(s: Store) {
    let ipam = setup(&s, &["host-a", "host-b"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/24", 0).await;

    let a = assign_to_block_limit(&ipam, &s, "host-a", "ha", 1, 64).await;
    let b = assign_to_block_limit(&ipam, &s, "host-b", "hb", 2, 128).await;
    let mut all = a.ips.clone();
    all.extend(&b.ips);
    assert_eq!(distinct(&all), 192);
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 11

/// Case 11: AssignIP: ok, then already assigned; outside every pool an error; IPv6 ok.
async fn assign_ip_cases(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "pool4", "192.168.1.0/24", 0).await;
    add_pool(&ipam, "pool6", "fd80:24e2:f998:72d6::/64", 0).await;

    ipam.assign_ip(&assign_ip_args("192.168.1.0", "host-a", "h1"))
        .await
        .unwrap();
    let e = ipam
        .assign_ip(&assign_ip_args("192.168.1.0", "host-a", "h2"))
        .await
        .unwrap_err();
    assert!(e.is_exists(), "second assign of the same address: {e}");
    let e = ipam
        .assign_ip(&assign_ip_args("1.1.1.1", "host-a", "h3"))
        .await
        .unwrap_err();
    assert!(!e.is_exists(), "{e}");
    assert!(e.to_string().contains("1.1.1.1"), "{e}");
    ipam.assign_ip(&assign_ip_args("fd80:24e2:f998:72d6::", "host-a", "h6"))
        .await
        .unwrap();

    // The blocks were claimed for host-a (pending → created → confirmed).
    let b4 = net("192.168.1.0/26");
    let b6 = net("fd80:24e2:f998:72d6::/122");
    assert_eq!(affine_blocks(&s, "host-a").await, BTreeSet::from([b4, b6]));
    let blk = block_of(&ipam, &b4).await.unwrap();
    assert_eq!(blk.affinity.as_deref(), Some("host:host-a"));
    assert_eq!(blk.allocated_ips(), vec![ip("192.168.1.0")]);
    let attr = blk.attribute_of(&ip("192.168.1.0")).unwrap();
    assert_eq!(attr.handle(), Some("h1"));
    assert_eq!(
        ipam.ips_by_handle("h6").await.unwrap(),
        vec![ip("fd80:24e2:f998:72d6::")]
    );
    assert!(
        ipam.ips_by_handle("h2").await.is_err(),
        "failed assign left no handle"
    );
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 12

/// Case 12: ReleaseIPs returns what was not allocated.
async fn release_ips_results(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "pool1", "192.168.1.0/24", 0).await;

    assert_eq!(
        ipam.release_ips(&[ip("1.1.1.1")]).await.unwrap(),
        vec![ip("1.1.1.1")]
    );
    assert_eq!(
        ipam.release_ips(&[ip("192.168.1.0")]).await.unwrap(),
        vec![ip("192.168.1.0")]
    );

    ipam.assign_ip(&assign_ip_args("192.168.1.0", "host-a", "h1"))
        .await
        .unwrap();
    assert!(ipam
        .release_ips(&[ip("192.168.1.0")])
        .await
        .unwrap()
        .is_empty());
    assert!(
        handles(&s).await.is_empty(),
        "the emptied handle is deleted"
    );

    let a = assign_all(&ipam, 66, "host-a", "h2").await;
    let used: BTreeSet<IpNet> = a.ips.iter().map(|n| n.trunc()).collect();
    assert_eq!(used.len(), 2, "66 addresses take two /26 blocks");
    check_consistent(&s, true).await;
    let all = addrs(&a.ips);
    assert!(ipam.release_ips(&all).await.unwrap().is_empty());
    assert!(allocated(&ipam).await.is_empty());
    assert!(handles(&s).await.is_empty());
    // Releasing again: all unallocated.
    let mut again = ipam.release_ips(&all).await.unwrap();
    again.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(again, want);
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 16

/// Case 16: a full pool; releasing one address twice in one call; re-assigning it
/// without a handle; AutoAssign then gets nothing and no error.
async fn full_pool_double_release(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/26", 0).await;
    let a = assign_all(&ipam, 64, "host-a", "h").await;
    let x = a.ips[10].addr();

    let un = ipam.release_ips(&[x, x]).await.unwrap();
    assert!(un.is_empty(), "double release in one call: {un:?}");
    assert_eq!(allocated(&ipam).await.len(), 63);
    assert_eq!(handles(&s).await["h"].total(), 63);

    let mut args = assign_ip_args(&x.to_string(), "host-a", "");
    args.handle = String::new();
    ipam.assign_ip(&args).await.unwrap();
    let blk = block_of(&ipam, &a.ips[10].trunc()).await.unwrap();
    let attr = blk.attribute_of(&x).unwrap();
    assert_eq!(attr.handle(), None, "no handle: {attr:?}");
    assert_eq!(
        handles(&s).await.keys().cloned().collect::<Vec<_>>(),
        vec!["h".to_string()]
    );

    let b = ipam.auto_assign(&req(1, "host-a", "h2")).await.unwrap();
    assert!(b.ips.is_empty(), "{b:?}");
    check_consistent(&s, false).await;
}

// ------------------------------------------------------------------ case 19

/// Case 19: IPsByHandle before, during and after the handle's life.
async fn handle_lifecycle(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/24", 0).await;
    let e = ipam.ips_by_handle("my-handle").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let a = ipam
        .auto_assign(&req(1, "host-a", "my-handle"))
        .await
        .unwrap();
    assert_eq!(
        ipam.ips_by_handle("my-handle").await.unwrap(),
        addrs(&a.ips)
    );
    check_consistent(&s, true).await;
    ipam.release_by_handle("my-handle").await.unwrap();
    let e = ipam.ips_by_handle("my-handle").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let e = ipam.release_by_handle("my-handle").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(allocated(&ipam).await.is_empty());
    assert!(handles(&s).await.is_empty());
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 20

/// Case 20: releasing an affinity with must_be_empty fails on a block in use and keeps
/// the affinity; once empty it succeeds and the block is deleted.
async fn release_affinity_needs_empty_block(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/24", 0).await;
    let a = ipam.auto_assign(&req(1, "host-a", "h")).await.unwrap();
    let block = a.ips[0].trunc();

    assert!(ipam.release_affinity(&block, "host-a", true).await.is_err());
    assert_eq!(
        affine_blocks(&s, "host-a").await,
        BTreeSet::from([block]),
        "affinity kept"
    );
    assert_eq!(
        block_of(&ipam, &block).await.unwrap().affinity.as_deref(),
        Some("host:host-a")
    );
    check_consistent(&s, true).await;

    ipam.release_by_handle("h").await.unwrap();
    assert!(
        block_of(&ipam, &block).await.is_some(),
        "an empty affine block stays"
    );
    ipam.release_affinity(&block, "host-a", true).await.unwrap();
    assert!(block_of(&ipam, &block).await.is_none(), "block deleted");
    assert!(affinities(&s).await.is_empty());
    let e = ipam
        .release_affinity(&block, "host-a", true)
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 21

/// Case 21: empty affine blocks survive ReleaseByHandle; ReleaseHostAffinities(true)
/// fails on the one in use and keeps only it.
async fn empty_affine_blocks_survive(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/24", 30).await;
    let a = assign_all(&ipam, 12, "host-a", "h").await;
    let used: BTreeSet<IpNet> = a.ips.iter().map(|n| n.trunc()).collect();
    assert_eq!(used.len(), 3, "12 addresses take three /30 blocks");
    assert!(a.ips.iter().all(|n| n.prefix_len() == 30));

    ipam.release_by_handle("h").await.unwrap();
    let bs = blocks(&ipam).await;
    assert_eq!(bs.len(), 3, "empty affine blocks survive");
    assert!(bs.iter().all(|b| b.is_empty()));
    assert_eq!(affine_blocks(&s, "host-a").await, used);
    check_consistent(&s, true).await;

    let b = ipam.auto_assign(&req(1, "host-a", "h2")).await.unwrap();
    assert_eq!(b.ips.len(), 1);
    let in_use = b.ips[0].trunc();
    assert!(used.contains(&in_use), "reuses an affine block");
    assert!(ipam.release_host_affinities("host-a", true).await.is_err());
    let bs = blocks(&ipam).await;
    assert_eq!(bs.len(), 1);
    assert_eq!(bs[0].cidr, in_use);
    assert_eq!(affine_blocks(&s, "host-a").await, BTreeSet::from([in_use]));
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 22

/// Case 22: deleting a pool releases its affinities (blocks in use stay, unaffine); the
/// blocks go once their addresses are released. Also a pool removed behind our back:
/// ReleaseHostAffinities(false) and ReleaseIPs (addresses in no pool) still clean up.
async fn pool_deleted_releases_affinities(s: Store) {
    let ipam = setup(&s, &["host-a", "host-b"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/24", 30).await;
    assign_all(&ipam, 12, "host-a", "ha").await;
    assert_eq!(affine_blocks(&s, "host-a").await.len(), 3);

    ipam.delete_pool("pool1").await.unwrap();
    assert!(ipam.get_pool("pool1").await.unwrap().is_none());
    assert!(affinities(&s).await.is_empty(), "affinities released");
    ipam.release_host_affinities("host-a", false).await.unwrap();
    let bs = blocks(&ipam).await;
    assert_eq!(bs.len(), 3);
    assert!(bs.iter().all(|b| b.affinity.is_none()));
    assert_eq!(allocated(&ipam).await.len(), 12, "addresses stay allocated");
    check_consistent(&s, true).await;
    ipam.release_by_handle("ha").await.unwrap();
    assert!(blocks(&ipam).await.is_empty());
    assert!(handles(&s).await.is_empty());

    // The pool key removed directly (another tool).
    let p2 = add_pool(&ipam, "pool2", "20.0.0.0/24", 30).await;
    let b = ipam.auto_assign(&req(12, "host-b", "hb")).await.unwrap();
    assert_eq!(b.ips.len(), 12);
    s.delete(&keys::ip_pool_key(p2.name()), None).await.unwrap();
    ipam.release_host_affinities("host-b", false).await.unwrap();
    assert!(affinities(&s).await.is_empty());
    let bs = blocks(&ipam).await;
    assert_eq!(bs.len(), 3);
    assert!(bs.iter().all(|b| b.affinity.is_none()));
    check_consistent(&s, true).await;
    assert!(ipam.release_ips(&addrs(&b.ips)).await.unwrap().is_empty());
    assert!(blocks(&ipam).await.is_empty(), "empty unaffine blocks go");
    assert!(handles(&s).await.is_empty());
}

// ------------------------------------------------------------------ case 24

/// Case 24: a single-block pool: without strict affinity the second host borrows; with
/// it, the second host gets nothing and no error.
async fn borrowing_versus_strict(s: Store) {
    let ipam = setup(&s, &["host1", "host2"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/28", 28).await;
    let a = assign_all(&ipam, 1, "host1", "h1").await;
    let b = assign_all(&ipam, 1, "host2", "h2").await;
    assert_eq!(a.ips[0].trunc(), net("10.0.0.0/28"));
    assert_eq!(b.ips[0].trunc(), net("10.0.0.0/28"), "host2 borrows");
    assert_ne!(a.ips[0], b.ips[0]);
    assert_eq!(affinities(&s).await.len(), 1);
    assert_eq!(
        affine_blocks(&s, "host1").await,
        BTreeSet::from([net("10.0.0.0/28")])
    );
    check_consistent(&s, true).await;
    ipam.release_by_handle("h1").await.unwrap();
    ipam.release_by_handle("h2").await.unwrap();

    ipam.set_config(&strict_config(0)).await.unwrap();
    let c = ipam
        .auto_assign(&req(1, "host2", "h2"))
        .await
        .expect("no error");
    assert!(c.ips.is_empty(), "{c:?}");
    assert_eq!(
        c.msgs.first().map(String::as_str),
        Some("No more free affine blocks and strict affinity enabled")
    );
    let d = ipam.auto_assign(&req(1, "host1", "h1")).await.unwrap();
    assert_eq!(d.ips.len(), 1, "the owner still allocates");
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 25

/// Case 25: the global block limit (with strict affinity), and its interplay with a
/// per-request limit (the smaller wins).
async fn global_block_limit(s: Store) {
    let ipam = setup(&s, &["host1", "host2"]).await;
    ipam.set_config(&strict_config(2)).await.unwrap();
    add_pool(&ipam, "pool1", "10.0.0.0/28", 30).await;
    for i in 0..8 {
        let a = ipam
            .auto_assign(&req(1, "host1", &format!("h1-{i}")))
            .await
            .unwrap();
        assert_eq!(a.ips.len(), 1, "assign {i}: {a:?}");
        assert!(a.block_limit.is_none());
    }
    assert_eq!(affine_blocks(&s, "host1").await.len(), 2);
    let a = ipam.auto_assign(&req(1, "host1", "h1-8")).await.unwrap();
    assert!(a.ips.is_empty());
    assert_eq!(
        a.block_limit.as_deref(),
        Some("Need to allocate an IPAM block but could not - limit of 2 blocks reached for this node")
    );
    let b = ipam.auto_assign(&req(1, "host2", "h2")).await.unwrap();
    assert_eq!(b.ips.len(), 1, "another host is not limited: {b:?}");

    let mut r = req(1, "host1", "h1-9");
    r.max_blocks = Some(3);
    let c = ipam.auto_assign(&r).await.unwrap();
    assert!(c.ips.is_empty() && c.block_limit.is_some(), "{c:?}");
    assert!(c.block_limit.unwrap().contains("limit of 2 blocks"));

    ipam.set_config(&strict_config(3)).await.unwrap();
    let mut r = req(1, "host1", "h1-9");
    r.max_blocks = Some(2);
    let d = ipam.auto_assign(&r).await.unwrap();
    assert!(d.ips.is_empty() && d.block_limit.is_some(), "{d:?}");

    let e = ipam.auto_assign(&req(1, "host1", "h1-9")).await.unwrap();
    assert_eq!(e.ips.len(), 1, "{e:?}");
    assert!(e.block_limit.is_none());
    assert_eq!(affine_blocks(&s, "host1").await.len(), 3);
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 26

/// Case 26: pool node selectors decide which pools a node may use.
async fn node_selector_picks_pool(s: Store) {
    let ipam = Ipam::new(s.clone());
    let mut node = Node::new("host-a", NodeSpec::default());
    node.metadata
        .labels
        .insert("foo".to_string(), "bar".to_string());
    resources::create(s.as_ref(), &mut node).await.unwrap();
    calico_libnetwork::driver::init::ensure_node(ipam.store().as_ref(), "host-b")
        .await
        .unwrap();
    for (name, cidr, sel) in [
        ("pool1", "10.0.0.0/24", r#"foo == "bar""#),
        ("pool2", "20.0.0.0/24", r#"foo != "bar""#),
    ] {
        add_pool_spec(
            &ipam,
            name,
            IpPoolSpec {
                cidr: cidr.to_string(),
                node_selector: sel.to_string(),
                ..Default::default()
            },
        )
        .await;
    }
    let a = ipam.auto_assign(&req(300, "host-a", "ha")).await.unwrap();
    assert_eq!(a.ips.len(), 256);
    assert!(a.ips.iter().all(|n| net("10.0.0.0/24").contains(&n.addr())));
    assert_eq!(a.msgs, vec!["No IPs available in pools: [10.0.0.0/24]"]);

    let b = ipam.auto_assign(&req(1, "host-b", "hb")).await.unwrap();
    assert_eq!(b.ips.len(), 1);
    assert!(net("20.0.0.0/24").contains(&b.ips[0].addr()));
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 27

/// Case 27: lists of requested pools: disabled or unknown pools and pools of the wrong
/// family are errors; pools are used in the order given.
async fn requested_pool_lists(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/24", 0).await;
    add_pool(&ipam, "pool2", "20.0.0.0/24", 0).await;
    add_pool_spec(
        &ipam,
        "pool3",
        IpPoolSpec {
            cidr: "30.0.0.0/24".into(),
            disabled: true,
            ..Default::default()
        },
    )
    .await;

    let e = ipam
        .auto_assign(&req_pools(
            1,
            "host-a",
            "h",
            &["10.0.0.0/24", "30.0.0.0/24"],
        ))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("the given pool (30.0.0.0/24) does not exist, or is not enabled"),
        "{e}"
    );
    let mut r6 = AutoAssign::new(1, IpFamily::V6, "host-a", "h");
    r6.pools = vec![net("10.0.0.0/24")];
    assert!(
        ipam.auto_assign(&r6).await.is_err(),
        "v4 pool in a v6 request"
    );
    assert!(
        blocks(&ipam).await.is_empty(),
        "failed requests wrote nothing"
    );

    let both = ["10.0.0.0/24", "20.0.0.0/24"];
    let a = ipam
        .auto_assign(&req_pools(1, "host-a", "h", &both))
        .await
        .unwrap();
    assert_eq!(a.ips.len(), 1);
    assert!(
        net("10.0.0.0/24").contains(&a.ips[0].addr()),
        "first pool first"
    );
    let b = ipam
        .auto_assign(&req_pools(300, "host-a", "h", &both))
        .await
        .unwrap();
    assert_eq!(b.ips.len(), 300);
    let in_p1 = b
        .ips
        .iter()
        .filter(|n| net("10.0.0.0/24").contains(&n.addr()))
        .count();
    assert_eq!((in_p1, 300 - in_p1), (255, 45));
    let c = ipam
        .auto_assign(&req_pools(300, "host-a", "h", &both))
        .await
        .unwrap();
    assert_eq!(c.ips.len(), 211);
    let mut all = a.ips.clone();
    all.extend(&b.ips);
    all.extend(&c.ips);
    assert_eq!(distinct(&all), 512);

    let e = ipam
        .auto_assign(&req_pools(
            1,
            "host-a",
            "h",
            &["10.0.0.0/24", "40.0.0.0/24"],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the given pool (40.0.0.0/24) does not exist, or is not enabled"
    );
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 28

/// Case 28: ClaimAffinity: a block; a CIDR smaller than a block; a range with a block of
/// another host; a clean range claimed twice by different hosts.
async fn claim_affinity_cases(s: Store) {
    let ipam = setup(&s, &["host-a", "host-b"]).await;
    add_pool(&ipam, "pool1", "192.168.1.0/24", 0).await;
    add_pool(&ipam, "pool2", "10.0.0.0/24", 0).await;
    add_pool(&ipam, "pool3", "172.16.0.0/24", 0).await;

    let (claimed, failed) = ipam
        .claim_affinity(&net("192.168.1.0/26"), "host-a")
        .await
        .unwrap();
    assert_eq!((claimed, failed.len()), (vec![net("192.168.1.0/26")], 0));
    assert_eq!(
        block_of(&ipam, &net("192.168.1.0/26"))
            .await
            .unwrap()
            .affinity
            .as_deref(),
        Some("host:host-a")
    );
    let e = ipam
        .claim_affinity(&net("192.168.1.0/27"), "host-a")
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("The requested CIDR (192.168.1.0/27) is smaller than the minimum."),
        "{e}"
    );

    ipam.assign_ip(&assign_ip_args("10.0.0.1", "host-a", "h"))
        .await
        .unwrap();
    let (claimed, failed) = ipam
        .claim_affinity(&net("10.0.0.0/24"), "host-b")
        .await
        .unwrap();
    assert_eq!((claimed.len(), failed), (3, vec![net("10.0.0.0/26")]));
    assert!(!affine_blocks(&s, "host-b")
        .await
        .contains(&net("10.0.0.0/26")));

    let p3 = net("172.16.0.0/24");
    let (claimed, failed) = ipam.claim_affinity(&p3, "host-a").await.unwrap();
    assert_eq!((claimed.len(), failed.len()), (4, 0));
    let (claimed, failed) = ipam.claim_affinity(&p3, "host-a").await.unwrap();
    assert_eq!((claimed.len(), failed.len()), (4, 0), "claiming again");
    let (claimed, failed) = ipam.claim_affinity(&p3, "host-b").await.unwrap();
    assert_eq!((claimed.len(), failed.len()), (0, 4));
    assert!(affine_blocks(&s, "host-b")
        .await
        .iter()
        .all(|c| !p3.contains(c)));
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 29

/// Case 29: IPAM config: a missing key reads as Calico's defaults and writes nothing;
/// SetIPAMConfig's rules.
async fn ipam_config_rules(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    let c = ipam.get_config().await.unwrap();
    assert!(!c.strict_affinity && c.auto_allocate_blocks);
    assert_eq!(c.max_blocks_per_host, 0);
    assert!(
        s.get(keys::IPAM_CONFIG_KEY).await.unwrap().is_none(),
        "reading writes nothing"
    );

    let set = IpamConfig {
        strict_affinity: true,
        auto_allocate_blocks: false,
        ..IpamConfig::missing()
    };
    ipam.set_config(&set).await.unwrap();
    assert_eq!(ipam.get_config().await.unwrap(), set);
    let raw: Value =
        serde_json::from_slice(&s.get(keys::IPAM_CONFIG_KEY).await.unwrap().unwrap().value)
            .unwrap();
    assert_eq!(raw["strict_affinity"], Value::Bool(true));
    assert!(
        raw.get("auto_allocate_blocks").is_none(),
        "omitempty: {raw}"
    );

    let both_off = IpamConfig {
        strict_affinity: false,
        auto_allocate_blocks: false,
        ..IpamConfig::missing()
    };
    let e = ipam.set_config(&both_off).await.unwrap_err();
    assert!(e.to_string().contains("at the same time"), "{e}");
    let max_no_strict = IpamConfig {
        max_blocks_per_host: 2,
        ..IpamConfig::missing()
    };
    let e = ipam.set_config(&max_no_strict).await.unwrap_err();
    assert!(e.to_string().contains("requires StrictAffinity"), "{e}");
    assert_eq!(
        ipam.get_config().await.unwrap(),
        set,
        "rejected sets wrote nothing"
    );

    // With auto-allocation off and no affine block, nothing is assigned (no error).
    add_pool(&ipam, "pool1", "10.0.0.0/24", 0).await;
    let a = ipam.auto_assign(&req(1, "host-a", "h")).await.unwrap();
    assert!(a.ips.is_empty(), "{a:?}");
    assert!(blocks(&ipam).await.is_empty());
}

// ------------------------------------------------------------------ sequence numbers

/// Every write keeps `sequenceNumberForAllocation` strictly below `sequenceNumber`
/// (checked as exact u64s on the raw JSON), including after releases and re-assigns.
async fn sequence_numbers_stay_below_block_sequence(s: Store) {
    let ipam = setup(&s, &["host-a", "host-b"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/28", 30).await;
    let a = ipam.auto_assign(&req(3, "host-a", "h1")).await.unwrap();
    check_consistent(&s, true).await;
    let block = a.ips[0].trunc();
    let seq = |kv: &calico_libnetwork::datastore::KeyValue| -> u64 {
        let v: Value = serde_json::from_slice(&kv.value).unwrap();
        u64_field(&v, "sequenceNumber", &kv.key)
    };
    let s0 = seq(&s.get(&keys::block_key(&block)).await.unwrap().unwrap());
    ipam.release_ips(&[a.ips[1].addr()]).await.unwrap();
    let s1 = seq(&s.get(&keys::block_key(&block)).await.unwrap().unwrap());
    assert_eq!(s1, s0 + 1, "one update write, one increment");
    check_consistent(&s, true).await;
    ipam.assign_ip(&assign_ip_args(
        &a.ips[1].addr().to_string(),
        "host-a",
        "h2",
    ))
    .await
    .unwrap();
    let kv = s.get(&keys::block_key(&block)).await.unwrap().unwrap();
    assert_eq!(seq(&kv), s1 + 1);
    let v: Value = serde_json::from_slice(&kv.value).unwrap();
    let ord = match (a.ips[1].addr(), block.network()) {
        (IpAddr::V4(x), IpAddr::V4(n)) => u32::from(x) - u32::from(n),
        _ => unreachable!(),
    };
    assert_eq!(
        v["sequenceNumberForAllocation"][ord.to_string()].as_u64(),
        Some(s1),
        "the new allocation is stamped with the sequence number before the write"
    );
    ipam.auto_assign(&req(4, "host-b", "h3")).await.unwrap();
    ipam.release_by_handle("h1").await.unwrap();
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ case 30, 31

/// Case 30: 32 hosts race for one address each from a pool of 16 blocks: all succeed,
/// exactly 16 confirmed affinities, each agreeing with its block.
async fn race_many_hosts(s: Store) {
    let hosts: Vec<String> = (0..32).map(|i| format!("race-host-{i}")).collect();
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let ipam = setup(&s, &refs).await;
    add_pool(&ipam, "pool1", "10.0.0.0/22", 0).await;
    let mut tasks = Vec::new();
    for h in &hosts {
        let ipam = ipam.clone();
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            ipam.auto_assign(&req(1, &h, &format!("handle-{h}"))).await
        }));
    }
    let mut ips = Vec::new();
    for t in tasks {
        let a = t.await.unwrap().unwrap();
        assert_eq!(a.ips.len(), 1, "{a:?}");
        ips.extend(a.ips);
    }
    assert_eq!(distinct(&ips), 32);
    let affs = affinities(&s).await;
    assert_eq!(affs.len(), 16, "{affs:?}");
    assert!(affs.iter().all(|(_, _, a)| a.is_confirmed()));
    let bs = blocks(&ipam).await;
    assert_eq!(bs.len(), 16);
    for (host, cidr, _) in &affs {
        let b = bs.iter().find(|b| b.cidr == *cidr).unwrap();
        assert_eq!(b.affinity.as_deref(), Some(format!("host:{host}").as_str()));
    }
    check_consistent(&s, true).await;
}

/// Case 31: four concurrent AutoAssigns on one host end with one affinity.
async fn race_one_host(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/24", 0).await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let ipam = ipam.clone();
        tasks.push(tokio::spawn(async move {
            ipam.auto_assign(&req(1, "host-a", &format!("h{i}"))).await
        }));
    }
    let mut ips = Vec::new();
    for t in tasks {
        let a = t.await.unwrap().unwrap();
        assert_eq!(a.ips.len(), 1);
        ips.extend(a.ips);
    }
    assert_eq!(distinct(&ips), 4);
    assert_eq!(affinities(&s).await.len(), 1);
    assert_eq!(blocks(&ipam).await.len(), 1);
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ acceptance

/// The issue's acceptance test: 8 hosts allocate 100 addresses each at the same time from
/// one pool. All 800 are distinct; every affinity is confirmed and agrees with its block;
/// every allocation carries its handle and `node`. Releasing them all (half by address,
/// half by handle) leaves no allocation and no handle.
async fn eight_hosts_allocate_800_then_release_all(s: Store) {
    const HOSTS: usize = 8;
    const PER_HOST: usize = 100;
    const WORKERS: usize = 4; // concurrent requests per host
    let started = Instant::now();
    let hosts: Vec<String> = (0..HOSTS).map(|i| format!("node-{i}")).collect();
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let ipam = setup(&s, &refs).await;
    add_pool(&ipam, "pool1", "10.0.0.0/22", 0).await;

    let mut tasks = Vec::new();
    for h in &hosts {
        for w in 0..WORKERS {
            let ipam = ipam.clone();
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in (w..PER_HOST).step_by(WORKERS) {
                    let handle = format!("libnetwork.{h}-{i}");
                    let a = ipam
                        .auto_assign(&req(1, &h, &handle))
                        .await
                        .unwrap_or_else(|e| panic!("{h} #{i}: {e}"));
                    assert_eq!(a.ips.len(), 1, "{h} #{i}: {a:?}");
                    got.push((a.ips[0].addr(), h.clone(), handle));
                }
                got
            }));
        }
    }
    let mut owners: HashMap<IpAddr, (String, String)> = HashMap::new();
    for t in tasks {
        for (addr, h, handle) in t.await.unwrap() {
            assert!(
                owners.insert(addr, (h, handle)).is_none(),
                "{addr} handed out twice"
            );
        }
    }
    assert_eq!(owners.len(), HOSTS * PER_HOST);
    let allocation_time = started.elapsed();

    let affs = affinities(&s).await;
    assert!(affs.iter().all(|(_, _, a)| a.is_confirmed()), "{affs:?}");
    // 100 addresses need two /26 blocks; the pool has exactly 16. Concurrent requests of
    // one host share the blocks it claims instead of claiming more.
    for h in &hosts {
        let n = affs.iter().filter(|(ah, _, _)| ah == h).count();
        assert_eq!(n, 2, "{h} owns {n} blocks: {affs:?}");
    }
    let bs = blocks(&ipam).await;
    for (host, cidr, _) in &affs {
        let b = bs.iter().find(|b| b.cidr == *cidr).unwrap();
        assert_eq!(b.affinity.as_deref(), Some(format!("host:{host}").as_str()));
    }
    let mut seen = 0;
    for b in &bs {
        for addr in b.allocated_ips() {
            let (h, handle) = &owners[&addr];
            let attr = b.attribute_of(&addr).unwrap();
            assert_eq!(attr.handle(), Some(handle.as_str()), "{addr}");
            assert_eq!(attr.secondary.get("node"), Some(h), "{addr}");
            seen += 1;
        }
    }
    assert_eq!(seen, HOSTS * PER_HOST, "the blocks hold exactly the 800");
    assert_eq!(handles(&s).await.len(), HOSTS * PER_HOST);
    check_consistent(&s, true).await;

    // Release, concurrently per host: even-numbered by address, odd by handle.
    let mut tasks = Vec::new();
    for h in &hosts {
        let mine: Vec<(IpAddr, String)> = owners
            .iter()
            .filter(|(_, (oh, _))| oh == h)
            .map(|(a, (_, handle))| (*a, handle.clone()))
            .collect();
        let ipam = ipam.clone();
        tasks.push(tokio::spawn(async move {
            let (by_addr, by_handle): (Vec<_>, Vec<_>) = mine
                .into_iter()
                .partition(|(_, handle)| handle.ends_with(['0', '2', '4', '6', '8']));
            let addrs: Vec<IpAddr> = by_addr.iter().map(|(a, _)| *a).collect();
            let (first, second) = addrs.split_at(addrs.len() / 2);
            let un = ipam.release_ips(first).await.unwrap();
            assert!(un.is_empty(), "{un:?}");
            for a in second {
                let un = ipam.release_ips(&[*a]).await.unwrap();
                assert!(un.is_empty(), "{un:?}");
            }
            for (_, handle) in by_handle {
                ipam.release_by_handle(&handle).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(allocated(&ipam).await.is_empty(), "no allocation left");
    assert!(handles(&s).await.is_empty(), "no handle left");
    assert!(blocks(&ipam)
        .await
        .iter()
        .all(|b| b.is_empty() && b.unallocated.len() == b.size() && b.attributes.is_empty()));
    check_consistent(&s, true).await;
    eprintln!(
        "[{}] 800 allocations in {allocation_time:?}, all done in {:?}",
        s.kind(),
        started.elapsed()
    );
}

// ------------------------------------------------------------------ Calico fidelity

/// Writes `value` at `key` as another Calico component (calicoctl, kube-controllers) would.
async fn put_json(s: &Store, key: &str, value: Value) {
    s.put(key, serde_json::to_vec(&value).unwrap())
        .await
        .unwrap();
}

/// An IPReservation `name` of `cidrs`, in the JSON calicoctl stores.
async fn reserve(s: &Store, name: &str, cidrs: &[&str]) {
    put_json(
        s,
        &format!("/calico/resources/v3/projectcalico.org/ipreservations/{name}"),
        serde_json::json!({
            "kind": "IPReservation",
            "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": name, "uid": format!("uid-{name}"), "creationTimestamp": "2025-06-01T12:00:00Z"},
            "spec": {"reservedCIDRs": cidrs},
        }),
    )
    .await;
}

async fn unreserve(s: &Store, name: &str) {
    s.delete(
        &format!("/calico/resources/v3/projectcalico.org/ipreservations/{name}"),
        None,
    )
    .await
    .unwrap();
}

/// The raw stored block at `cidr`: its revision and `sequenceNumber`.
async fn block_rev_seq(s: &Store, cidr: &IpNet) -> (i64, u64) {
    let kv = s.get(&keys::block_key(cidr)).await.unwrap().unwrap();
    let v: Value = serde_json::from_slice(&kv.value).unwrap();
    (kv.revision, u64_field(&v, "sequenceNumber", &kv.key))
}

/// Sets `host`'s affinity for `cidr` to `state`, as another Calico process mid-claim (or a
/// Calico v3.32+ host reclaiming the block) leaves it.
async fn set_affinity_state(s: &Store, host: &str, cidr: &IpNet, state: &str) {
    put_json(
        s,
        &keys::block_affinity_key(host, cidr),
        serde_json::json!({"state": state, "deleted": false}),
    )
    .await;
}

/// IP reservations: reserved addresses are never auto-assigned, a block that is entirely
/// reserved (here by two reservations together) is never claimed, and dropping the
/// reservation makes both available again.
async fn reservations_skip_addresses_and_blocks(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/26", 28).await;
    // 16 (the whole of 10.0.0.16/28, in two halves) + 1 + 1 + 4 reserved: 42 assignable.
    reserve(&s, "r1", &["10.0.0.16/29", "10.0.0.1", "10.0.0.48/30"]).await;
    reserve(&s, "r2", &["10.0.0.24/29", " 10.0.0.35 "]).await;
    let reserved = |a: &IpAddr| {
        [
            "10.0.0.16/28",
            "10.0.0.1/32",
            "10.0.0.48/30",
            "10.0.0.35/32",
        ]
        .iter()
        .any(|c| net(c).contains(a))
    };

    // libcalico-go ipam/ipam_block.go autoAssign: a reserved address is skipped and stays
    // queued; ipam_block_reader_writer.go findUsableBlock: an entirely reserved block
    // (MatchesWholeCIDR) is not claimed.
    let a = ipam.auto_assign(&req(64, "host-a", "h")).await.unwrap();
    assert_eq!(a.ips.len(), 42, "{:?}", a.msgs);
    assert_eq!(distinct(&a.ips), 42);
    assert!(
        !a.ips.iter().any(|n| reserved(&n.addr())),
        "reserved address assigned: {:?}",
        addrs(&a.ips)
    );
    assert_eq!(a.msgs, vec!["No IPs available in pools: [10.0.0.0/26]"]);
    assert!(
        block_of(&ipam, &net("10.0.0.16/28")).await.is_none(),
        "an entirely reserved block is not claimed"
    );
    for c in ["10.0.0.0/28", "10.0.0.32/28", "10.0.0.48/28"] {
        let b = block_of(&ipam, &net(c)).await.expect(c);
        assert!(
            b.unallocated
                .iter()
                .all(|&o| reserved(&b.ip_of(o as usize).unwrap())),
            "{c}: only reserved addresses stay free"
        );
    }
    check_consistent(&s, true).await;

    // Reservations only bind new allocations: without them the rest is assignable.
    unreserve(&s, "r1").await;
    unreserve(&s, "r2").await;
    let b = ipam.auto_assign(&req(64, "host-a", "h")).await.unwrap();
    assert_eq!(b.ips.len(), 22, "{:?}", b.msgs);
    assert!(b.ips.iter().all(|n| reserved(&n.addr())));
    assert!(block_of(&ipam, &net("10.0.0.16/28")).await.is_some());
    check_consistent(&s, true).await;
}

/// Borrowing from another host's block skips reserved addresses too, and so does this
/// host's next assignment from its own (cached) block.
async fn borrowing_skips_reserved(s: Store) {
    let ipam = setup(&s, &["host-a", "host-b"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/28", 28).await;
    let first = assign_all(&ipam, 1, "host-a", "ha").await;
    assert_eq!(first.ips[0].addr(), ip("10.0.0.0"));
    // An allocated address that becomes reserved stays allocated.
    reserve(&s, "low", &["10.0.0.0/29"]).await;

    // ipam/ipam_block.go autoAssign, called with the request's reservations from both the
    // affine path and the non-affine (borrowing) path of ipam/ipam.go autoAssign.
    let own = assign_all(&ipam, 3, "host-a", "ha").await;
    assert_eq!(
        addrs(&own.ips),
        vec![ip("10.0.0.8"), ip("10.0.0.9"), ip("10.0.0.10")]
    );
    let b = ipam.auto_assign(&req(16, "host-b", "hb")).await.unwrap();
    assert_eq!(
        addrs(&b.ips),
        [
            "10.0.0.11",
            "10.0.0.12",
            "10.0.0.13",
            "10.0.0.14",
            "10.0.0.15"
        ]
        .iter()
        .map(|a| ip(a))
        .collect::<Vec<_>>(),
        "{:?}",
        b.msgs
    );
    assert_eq!(b.msgs, vec!["No IPs available in pools: [10.0.0.0/28]"]);
    assert!(affine_blocks(&s, "host-b").await.is_empty());
    let blk = block_of(&ipam, &net("10.0.0.0/28")).await.unwrap();
    assert_eq!(blk.affinity.as_deref(), Some("host:host-a"));
    assert_eq!(
        blk.in_use_count(),
        9,
        "10.0.0.0 and the eight above the reservation"
    );
    check_consistent(&s, true).await;
}

/// A specific address overrides reservations: Calico's AssignIP consults none (only
/// automatic assignment does), and its IPReservation reference says annotations that force
/// an address override them. Docker's `--ip` is that case.
async fn assign_ip_of_reserved_address(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/28", 28).await;
    reserve(&s, "r", &["10.0.0.5", "10.0.0.6"]).await;
    // libcalico-go ipam/ipam.go AssignIP: no getReservedIPs, unlike autoAssign.
    ipam.assign_ip(&assign_ip_args("10.0.0.5", "host-a", "manual"))
        .await
        .expect("a reserved address asked for by name is assigned");
    let a = ipam.auto_assign(&req(16, "host-a", "auto")).await.unwrap();
    assert_eq!(a.ips.len(), 14, "{:?}", a.msgs);
    assert!(!addrs(&a.ips).contains(&ip("10.0.0.6")), "auto skips it");
    assert_eq!(
        block_of(&ipam, &net("10.0.0.0/28"))
            .await
            .unwrap()
            .unallocated,
        vec![6]
    );
    ipam.assign_ip(&assign_ip_args("10.0.0.6", "host-a", "manual"))
        .await
        .unwrap();
    check_consistent(&s, true).await;
}

/// Requested pools go through the allowedUses filter too: a Tunnel- or LoadBalancer-only
/// pool never gives a Workload address, and the error names it with its allowedUses.
async fn requested_pools_filtered_by_use(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    for (name, cidr, uses) in [
        ("tunnels", "10.1.0.0/24", vec!["Tunnel"]),
        ("lb", "10.2.0.0/24", vec!["LoadBalancer"]),
        ("work", "10.3.0.0/24", vec![]),
    ] {
        add_pool_spec(
            &ipam,
            name,
            IpPoolSpec {
                cidr: cidr.into(),
                allowed_uses: uses.into_iter().map(String::from).collect(),
                ..Default::default()
            },
        )
        .await;
    }
    // libcalico-go ipam/ipam.go prepareAffinityBlocksForHost: filterPoolsByUse runs on what
    // determinePools returned, requested pools included.
    for (pool, name, uses) in [
        ("10.1.0.0/24", "tunnels", "[Tunnel]"),
        ("10.2.0.0/24", "lb", "[LoadBalancer]"),
    ] {
        let e = ipam
            .auto_assign(&req_pools(1, "host-a", "h", &[pool]))
            .await
            .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("no IPv4 pools match the required use (Workload)"),
            "{m}"
        );
        assert!(
            m.contains(&format!("pool {name} ({pool}) has allowedUses {uses}")),
            "{m}"
        );
        assert!(e.is_invalid(), "{e:?}");
    }
    assert!(
        blocks(&ipam).await.is_empty(),
        "refused requests wrote nothing"
    );
    // Of several requested pools, those allowing the use are used.
    let a = ipam
        .auto_assign(&req_pools(
            1,
            "host-a",
            "h",
            &["10.1.0.0/24", "10.3.0.0/24"],
        ))
        .await
        .unwrap();
    assert!(net("10.3.0.0/24").contains(&a.ips[0].addr()), "{a:?}");
    // The filter is by use: a Tunnel request may use the Tunnel pool.
    let mut tunnel = req_pools(1, "host-a", "tunnel-addr", &["10.1.0.0/24"]);
    tunnel.intended_use = "Tunnel".into();
    let t = ipam.auto_assign(&tunnel).await.unwrap();
    assert!(net("10.1.0.0/24").contains(&t.ips[0].addr()), "{t:?}");
    // With no pool requested, only the Workload pool.
    let all = ipam.auto_assign(&req(300, "host-a", "h")).await.unwrap();
    assert_eq!(all.ips.len(), 255);
    assert!(all
        .ips
        .iter()
        .all(|n| net("10.3.0.0/24").contains(&n.addr())));
    check_consistent(&s, true).await;
}

/// A pool's namespaceSelector is evaluated against empty labels (a Docker workload has no
/// namespace); requested pools skip selectors.
async fn namespace_selector_without_namespace(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    for (name, cidr, sel) in [
        ("team-only", "10.4.0.0/24", "has(team)"),
        ("no-team", "10.5.0.0/24", "!has(team)"),
    ] {
        add_pool_spec(
            &ipam,
            name,
            IpPoolSpec {
                cidr: cidr.into(),
                namespace_selector: sel.into(),
                ..Default::default()
            },
        )
        .await;
    }
    // libcalico-go ipam/pools.go SelectsNamespace with a nil namespace, called from
    // ipam/ipam.go determinePools for unrequested pools only.
    let a = ipam.auto_assign(&req(300, "host-a", "h")).await.unwrap();
    assert_eq!(a.ips.len(), 256);
    assert!(a.ips.iter().all(|n| net("10.5.0.0/24").contains(&n.addr())));
    assert_eq!(a.msgs, vec!["No IPs available in pools: [10.5.0.0/24]"]);
    let r = ipam
        .auto_assign(&req_pools(1, "host-a", "h", &["10.4.0.0/24"]))
        .await
        .unwrap();
    assert!(net("10.4.0.0/24").contains(&r.ips[0].addr()));
    check_consistent(&s, true).await;
}

/// A pool whose status carries the condition Allocatable=False (set by Calico's
/// kube-controllers) gives no address, automatic or specific, until the condition goes.
async fn allocatable_false_excludes_pool(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    let held = add_pool(&ipam, "held", "10.6.0.0/24", 0).await;
    add_pool(&ipam, "open", "10.7.0.0/24", 0).await;
    let key = keys::ip_pool_key("held");
    let mut v: Value = serde_json::from_slice(&held.to_json().unwrap()).unwrap();
    let mark = |v: &mut Value, status: &str| {
        v["status"] = serde_json::json!({"conditions": [{
            "type": "Allocatable", "status": status, "reason": "CIDROverlap",
            "message": "overlaps", "lastTransitionTime": "2025-06-01T12:00:00Z"
        }]});
    };
    mark(&mut v, "False");
    put_json(&s, &key, v.clone()).await;

    // libcalico-go clientv3/client.go filterIPPool: Allocatable=False is not enabled, for
    // determinePools and for AssignIP's getPoolForIP alike.
    let a = ipam.auto_assign(&req(300, "host-a", "h")).await.unwrap();
    assert_eq!(a.ips.len(), 256);
    assert!(a.ips.iter().all(|n| net("10.7.0.0/24").contains(&n.addr())));
    let e = ipam
        .auto_assign(&req_pools(1, "host-a", "h", &["10.6.0.0/24"]))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the given pool (10.6.0.0/24) does not exist, or is not enabled"
    );
    let e = ipam
        .assign_ip(&assign_ip_args("10.6.0.9", "host-a", "h"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("held, marked Allocatable=False"),
        "{e}"
    );
    assert!(blocks(&ipam)
        .await
        .iter()
        .all(|b| net("10.7.0.0/24").contains(&b.cidr)));

    mark(&mut v, "True");
    put_json(&s, &key, v).await;
    ipam.assign_ip(&assign_ip_args("10.6.0.9", "host-a", "h"))
        .await
        .unwrap();
    let r = ipam
        .auto_assign(&req_pools(1, "host-a", "h", &["10.6.0.0/24"]))
        .await
        .unwrap();
    assert!(net("10.6.0.0/24").contains(&r.ips[0].addr()));
    check_consistent(&s, true).await;
}

/// A pending or pendingDeletion affinity for a block affine to this host is confirmed only
/// with the block rewritten (sequenceNumber + 1, a new revision), so a Calico v3.32+ host
/// reclaiming the block at the revision it read fails. A fresh allocator each time: one
/// that starts (or another process) and finds the affinity so.
async fn unconfirmed_affinity_confirmed_with_block_rewrite(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/24", 26).await;
    let a = assign_all(&ipam, 1, "host-a", "h").await;
    let cidr = a.ips[0].trunc();
    // libcalico-go ipam/ipam.go getBlockFromAffinity: an unconfirmed affinity goes pending,
    // then updateBlock (sequenceNumber++, a CAS write), then confirmed; the allocation is a
    // second updateBlock.
    for state in ["pending", "pendingDeletion"] {
        set_affinity_state(&s, "host-a", &cidr, state).await;
        let (rev, seq) = block_rev_seq(&s, &cidr).await;
        let got = assign_all(&Ipam::new(s.clone()), 1, "host-a", "h").await;
        assert_eq!(
            got.ips[0].trunc(),
            cidr,
            "{state}: the affine block is used"
        );
        let (rev2, seq2) = block_rev_seq(&s, &cidr).await;
        assert_eq!(
            seq2,
            seq + 2,
            "{state}: one rewrite to confirm, one to allocate"
        );
        assert!(rev2 > rev);
        check_consistent(&s, true).await;
    }

    // A full block is rewritten to confirm its affinity all the same (findOrClaimBlock
    // checks for room after getBlockFromAffinity), then passed over.
    add_pool(&ipam, "small", "10.9.0.0/30", 30).await;
    let full = ipam
        .auto_assign(&req_pools(4, "host-a", "f", &["10.9.0.0/30"]))
        .await
        .unwrap();
    assert_eq!(full.ips.len(), 4);
    let small = net("10.9.0.0/30");
    set_affinity_state(&s, "host-a", &small, "pending").await;
    let before = block_of(&ipam, &small).await.unwrap();
    let (rev, seq) = block_rev_seq(&s, &small).await;
    let got = Ipam::new(s.clone())
        .auto_assign(&req_pools(1, "host-a", "h", &["10.9.0.0/30"]))
        .await
        .unwrap();
    assert_eq!(got.msgs, vec!["No IPs available in pools: [10.9.0.0/30]"]);
    let (rev2, seq2) = block_rev_seq(&s, &small).await;
    assert_eq!(
        (seq2, rev2 > rev),
        (seq + 1, true),
        "rewritten once, to confirm"
    );
    let after = block_of(&ipam, &small).await.unwrap();
    assert_eq!(
        after.allocations, before.allocations,
        "allocations untouched"
    );
    check_consistent(&s, true).await;
}

/// A block affine to this host whose affinity key is missing is used through its affinity,
/// created confirmed with the block rewritten: its routes are announced again.
async fn missing_affinity_recreated(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "pool1", "10.0.0.0/24", 26).await;
    let a = assign_all(&ipam, 1, "host-a", "h").await;
    let cidr = a.ips[0].trunc();
    let aff_key = keys::block_affinity_key("host-a", &cidr);
    s.delete(&aff_key, None).await.unwrap();
    let (_, seq) = block_rev_seq(&s, &cidr).await;

    // libcalico-go ipam_block_reader_writer.go findUsableBlock returns a block affine to us
    // with room; ipam/ipam.go findOrClaimBlock then takes getPendingAffinity (creates it
    // pending) and getBlockFromAffinity (block rewritten, affinity confirmed).
    let got = assign_all(&Ipam::new(s.clone()), 1, "host-a", "h").await;
    assert_eq!(got.ips[0].trunc(), cidr, "the block of ours is used");
    let aff = s.get(&aff_key).await.unwrap().expect("affinity recreated");
    assert!(BlockAffinity::from_json(&aff.value).unwrap().is_confirmed());
    assert_eq!(block_rev_seq(&s, &cidr).await.1, seq + 2);
    assert_eq!(blocks(&ipam).await.len(), 1, "no second block claimed");
    check_consistent(&s, true).await;
}

/// A pool over existing blocks of another block size is refused with Calico's message; the
/// same size, or no overlap, is accepted.
async fn pool_block_size_conflict(s: Store) {
    let ipam = setup(&s, &["host-a"]).await;
    add_pool(&ipam, "p1", "10.0.0.0/24", 26).await;
    assign_all(&ipam, 1, "host-a", "h").await;
    // The pool goes; its block, still holding the address, stays.
    ipam.delete_pool("p1").await.unwrap();
    assert_eq!(blocks(&ipam).await.len(), 1);

    // libcalico-go clientv3/ippool.go Create: a listed block of another size that
    // overlaps the pool refuses it.
    for (cidr, bs) in [
        ("10.0.0.0/24", 28),
        ("10.0.0.0/25", 27),
        ("10.0.0.0/16", 24),
    ] {
        let e = ipam
            .create_pool(IpPool::new(
                "p2",
                IpPoolSpec {
                    cidr: cidr.into(),
                    block_size: bs,
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains(
                "IPPool blocksSize conflicts with existing allocations that use a different blockSize"
            ),
            "{cidr} /{bs}: {e}"
        );
        assert!(e.is_invalid(), "{e:?}");
    }
    assert!(ipam.list_pools().await.unwrap().is_empty());
    add_pool(&ipam, "elsewhere", "10.0.1.0/24", 28).await;
    add_pool(&ipam, "p2", "10.0.0.0/24", 26).await;
    check_consistent(&s, true).await;
}

// ------------------------------------------------------------------ backends

backends!(
    threads = 4,
    timeout = Some(Duration::from_secs(60)),
    [
        first_ip_claims_confirmed_affine_block,
        explicit_pool_until_exhausted,
        borrowing_with_strict_off,
        strict_affinity_stops_at_affine_blocks,
        pool_exhausted_v4_and_v6,
        per_request_block_limit,
        assign_ip_cases,
        release_ips_results,
        full_pool_double_release,
        handle_lifecycle,
        release_affinity_needs_empty_block,
        empty_affine_blocks_survive,
        pool_deleted_releases_affinities,
        borrowing_versus_strict,
        global_block_limit,
        node_selector_picks_pool,
        requested_pool_lists,
        claim_affinity_cases,
        ipam_config_rules,
        sequence_numbers_stay_below_block_sequence,
        race_many_hosts,
        race_one_host,
        eight_hosts_allocate_800_then_release_all,
        reservations_skip_addresses_and_blocks,
        borrowing_skips_reserved,
        assign_ip_of_reserved_address,
        requested_pools_filtered_by_use,
        namespace_selector_without_namespace,
        allocatable_false_excludes_pool,
        unconfirmed_affinity_confirmed_with_block_rewrite,
        missing_affinity_recreated,
        pool_block_size_conflict,
    ]
);
