//! One conformance suite, run against both backends: a real etcd and the embedded store.

use crate::common;

use common::backends::{backends, Store};

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calico_libnetwork::datastore::local::{LocalStore, HISTORY_BYTES};
use calico_libnetwork::datastore::watch::{Resync, Update, Watcher};
use calico_libnetwork::datastore::{Datastore, Event, KeyValue, Revision, WatchStream, Write};
use calico_libnetwork::Error;
use futures::StreamExt;

async fn get_create_update_delete(s: Store) {
    assert!(s.get("/t/k").await.unwrap().is_none());
    let r1 = s.create("/t/k", b"one".to_vec()).await.unwrap();
    assert!(r1 > 0);
    let kv = s.get("/t/k").await.unwrap().unwrap();
    assert_eq!(
        (kv.key.as_str(), kv.value.as_slice(), kv.revision),
        ("/t/k", &b"one"[..], r1)
    );

    let e = s.create("/t/k", b"again".to_vec()).await.unwrap_err();
    assert!(
        matches!(e, Error::Exists { .. }),
        "create of existing key: {e}"
    );
    assert_eq!(s.get("/t/k").await.unwrap().unwrap().value, b"one");

    let r2 = s.update("/t/k", b"two".to_vec(), r1).await.unwrap();
    assert!(r2 > r1);
    let e = s.update("/t/k", b"stale".to_vec(), r1).await.unwrap_err();
    assert!(e.is_conflict(), "stale update: {e}");
    assert_eq!(s.get("/t/k").await.unwrap().unwrap().value, b"two");

    let e = s.update("/t/missing", b"x".to_vec(), r1).await.unwrap_err();
    assert!(e.is_not_found(), "update of missing key: {e}");

    let e = s.delete("/t/k", Some(r1)).await.unwrap_err();
    assert!(e.is_conflict(), "stale delete: {e}");
    s.delete("/t/k", Some(r2)).await.unwrap();
    assert!(s.get("/t/k").await.unwrap().is_none());
    let e = s.delete("/t/k", None).await.unwrap_err();
    assert!(e.is_not_found(), "delete of missing key: {e}");

    let r3 = s.put("/t/p", b"a".to_vec()).await.unwrap();
    let r4 = s.put("/t/p", b"b".to_vec()).await.unwrap();
    assert!(r4 > r3);
    s.delete("/t/p", None).await.unwrap();
}

async fn prefix_listing_is_by_directory(s: Store) {
    for k in ["/a/2", "/a/1", "/ab/1", "/a", "/a/sub/3", "/b/1"] {
        s.put(k, k.as_bytes().to_vec()).await.unwrap();
    }
    for prefix in ["/a", "/a/"] {
        let keys: Vec<String> = s
            .list(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, vec!["/a/1", "/a/2", "/a/sub/3"], "list {prefix}");
    }
    assert!(s.list("/nothing").await.unwrap().is_empty());
    let listed = s.list("/b").await.unwrap();
    assert_eq!(listed[0].value, b"/b/1");
    assert_eq!(
        listed[0].revision,
        s.get("/b/1").await.unwrap().unwrap().revision
    );
}

async fn transactions_are_all_or_nothing(s: Store) {
    let ry = s.create("/tx/y", b"y0".to_vec()).await.unwrap();
    // A failing condition on the second write: nothing is written.
    let e = s
        .txn(vec![
            Write::create("/tx/x", b"x".to_vec()),
            Write::update("/tx/y", b"y1".to_vec(), ry + 100),
        ])
        .await
        .unwrap_err();
    assert!(e.is_conflict(), "{e}");
    assert!(e.to_string().contains("/tx/y"), "error names the key: {e}");
    assert!(s.get("/tx/x").await.unwrap().is_none());
    assert_eq!(s.get("/tx/y").await.unwrap().unwrap().value, b"y0");

    // An existing key under create: Exists names it.
    let e = s
        .txn(vec![Write::create("/tx/y", b"dup".to_vec())])
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Exists { ref key } if key == "/tx/y"),
        "{e}"
    );

    // All conditions hold: every write lands at one revision.
    let rz = s.create("/tx/z", b"z".to_vec()).await.unwrap();
    let rev = s
        .txn(vec![
            Write::create("/tx/x", b"x".to_vec()),
            Write::update("/tx/y", b"y1".to_vec(), ry),
            Write::delete("/tx/z", rz),
        ])
        .await
        .unwrap();
    assert_eq!(s.get("/tx/x").await.unwrap().unwrap().revision, rev);
    assert_eq!(s.get("/tx/y").await.unwrap().unwrap().revision, rev);
    assert!(s.get("/tx/z").await.unwrap().is_none());
}

async fn concurrent_cas_loses_no_update(s: Store) {
    const N: usize = 40;
    s.create("/cas/counter", b"0".to_vec()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..N {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let kv = s.get("/cas/counter").await.unwrap().unwrap();
                let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                match s
                    .update(
                        "/cas/counter",
                        (n + 1).to_string().into_bytes(),
                        kv.revision,
                    )
                    .await
                {
                    Ok(_) => return,
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let kv = s.get("/cas/counter").await.unwrap().unwrap();
    assert_eq!(kv.value, N.to_string().into_bytes());
    assert!(s.stats().snapshot().conflicts > 0 || N == 1);
}

async fn stats_count_round_trips(s: Store) {
    let before = s.stats().snapshot();
    s.get("/st/a").await.unwrap();
    s.list("/st").await.unwrap();
    s.txn(vec![
        Write::put("/st/a", b"1".to_vec()),
        Write::put("/st/b", b"2".to_vec()),
    ])
    .await
    .unwrap();
    s.delete("/st/a", None).await.unwrap();
    let _ = s.create("/st/b", b"x".to_vec()).await;
    let d = s.stats().snapshot().since(&before);
    assert_eq!(d.round_trips, 5);
    assert_eq!(d.reads, 2);
    assert_eq!(d.writes, 3);
    assert_eq!(d.deletes, 1);
    assert_eq!(d.conflicts, 1);
}

async fn get_many_answers_in_key_order(s: Store) {
    let ra = s.create("/gm/a", b"A".to_vec()).await.unwrap();
    let rc = s.create("/gm/c", b"C".to_vec()).await.unwrap();
    let keys: Vec<String> = ["/gm/c", "/gm/b", "/gm/a"]
        .iter()
        .map(|k| k.to_string())
        .collect();
    let before = s.stats().snapshot();
    let got = s.get_many(&keys).await.unwrap();
    // One round trip for all the keys.
    assert_eq!(s.stats().snapshot().since(&before).round_trips, 1);
    let got: Vec<Option<(String, Vec<u8>, i64)>> = got
        .into_iter()
        .map(|kv| kv.map(|kv| (kv.key, kv.value, kv.revision)))
        .collect();
    assert_eq!(
        got,
        vec![
            Some(("/gm/c".to_string(), b"C".to_vec(), rc)),
            None,
            Some(("/gm/a".to_string(), b"A".to_vec(), ra)),
        ]
    );
    assert!(s.get_many(&[]).await.unwrap().is_empty());
}

/// Several prefixes in one call: each answered as `list` would (directory semantics, key
/// order), in the order asked, in one round trip; a prefix past one page is still complete.
async fn list_many_answers_like_list(s: Store) {
    for k in ["/lm/a/1", "/lm/a/2", "/lm/b/1", "/lm/ab/1"] {
        s.put(k, k.as_bytes().to_vec()).await.unwrap();
    }
    let prefixes: Vec<String> = ["/lm/b", "/lm/a/", "/lm/none"]
        .iter()
        .map(|p| p.to_string())
        .collect();
    let before = s.stats().snapshot();
    let got = s.list_many(&prefixes).await.unwrap();
    assert_eq!(s.stats().snapshot().since(&before).round_trips, 1);
    let mut want = Vec::new();
    for p in &prefixes {
        want.push(s.list(p).await.unwrap());
    }
    assert_eq!(got, want);
    let keys: Vec<Vec<&str>> = got
        .iter()
        .map(|l| l.iter().map(|kv| kv.key.as_str()).collect())
        .collect();
    assert_eq!(
        keys,
        vec![vec!["/lm/b/1"], vec!["/lm/a/1", "/lm/a/2"], vec![]]
    );

    for chunk in 0..7 {
        let writes = (0..100)
            .map(|i| Write::put(format!("/lm/big/{:04}", chunk * 100 + i), b"v".to_vec()))
            .collect();
        s.txn(writes).await.unwrap();
    }
    let got = s
        .list_many(&["/lm/big".to_string(), "/lm/a".to_string()])
        .await
        .unwrap();
    assert_eq!((got[0].len(), got[1].len()), (700, 2));
    assert_eq!(got[0][699].key, "/lm/big/0699");
}

/// A list past one page (500 keys) and past gRPC's default 4 MiB message (a cluster's
/// WorkloadEndpoints or blocks): every key, in order, values intact.
async fn large_lists_are_complete(s: Store) {
    let big = vec![b'x'; 100 * 1024];
    for i in 0..60 {
        s.put(&format!("/big/b{i:04}"), big.clone()).await.unwrap();
    }
    for chunk in 0..12 {
        let writes = (0..100)
            .map(|i| Write::put(format!("/big/s{:05}", chunk * 100 + i), b"small".to_vec()))
            .collect();
        s.txn(writes).await.unwrap();
    }
    let all = s.list("/big").await.unwrap();
    assert_eq!(all.len(), 60 + 1200);
    let keys: Vec<&str> = all.iter().map(|kv| kv.key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "in key order");
    assert!(all[..60].iter().all(|kv| kv.value == big));
    assert!(all[60..].iter().all(|kv| kv.value == b"small"));
    assert_eq!(all[1259].key, "/big/s01199");
}

pub(crate) fn put(key: &str, value: &str, revision: Revision) -> Event {
    Event::Put(KeyValue {
        key: key.to_string(),
        value: value.as_bytes().to_vec(),
        revision,
    })
}

pub(crate) fn del(key: &str, revision: Revision) -> Event {
    Event::Delete {
        key: key.to_string(),
        revision,
    }
}

/// The next batches of `stream` until they hold `n` events (panics after 10 s without one,
/// naming what came).
async fn batches(stream: &mut WatchStream, n: usize) -> Vec<Vec<Event>> {
    let mut got: Vec<Vec<Event>> = Vec::new();
    while got.iter().map(Vec::len).sum::<usize>() < n {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(batch))) => {
                assert!(!batch.is_empty(), "an empty batch after {got:?}");
                got.push(batch);
            }
            Ok(Some(Err(e))) => panic!("watch failed after {got:?}: {e}"),
            Ok(None) => panic!("watch ended after {got:?}"),
            Err(_) => panic!("{n} events expected, 10 s without one after {got:?}"),
        }
    }
    got
}

/// The next update of `w` (panics after 10 s, or on an error).
async fn update(w: &mut Watcher) -> Update {
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => panic!("{w:?}: {e}"),
        Err(_) => panic!("{w:?}: no update in 10 s"),
    }
}

/// Puts, updates and deletes under a prefix come in revision order, a transaction's events
/// in one batch, from just after the revision asked; other prefixes' (a sibling sharing
/// the prefix's name too) never.
async fn watch_gives_changes_in_order_under_its_prefix(s: Store) {
    let r0 = s.put("/w/before", b"0".to_vec()).await.unwrap();
    let from = s.list_with_revision("/w").await.unwrap();
    assert_eq!(from.kvs.len(), 1);
    assert!(from.revision >= r0, "{from:?}");
    let mut w = s.watch("/w", from.revision).await.unwrap();
    let mut sibling = s.watch("/wx/", from.revision).await.unwrap();

    let r1 = s.put("/w/a", b"1".to_vec()).await.unwrap();
    let r2 = s.create("/w/b", b"2".to_vec()).await.unwrap();
    let rx = s.put("/wx/a", b"sibling".to_vec()).await.unwrap();
    s.put("/other/a", b"elsewhere".to_vec()).await.unwrap();
    let r3 = s.update("/w/a", b"1b".to_vec(), r1).await.unwrap();
    let r4 = s
        .txn(vec![
            Write::create("/w/c", b"3".to_vec()),
            Write::delete("/w/b", r2),
        ])
        .await
        .unwrap();
    let r5 = s.txn(vec![Write::delete("/w/before", r0)]).await.unwrap();

    let got = batches(&mut w, 6).await;
    assert!(
        got.iter()
            .any(|b| b.contains(&put("/w/c", "3", r4)) && b.contains(&del("/w/b", r4))),
        "one transaction, one batch: {got:?}"
    );
    assert_eq!(
        got.concat(),
        vec![
            put("/w/a", "1", r1),
            put("/w/b", "2", r2),
            put("/w/a", "1b", r3),
            put("/w/c", "3", r4),
            del("/w/b", r4),
            del("/w/before", r5),
        ]
    );
    // The sibling's write, between r2 and r3, went to its own watch only.
    assert_eq!(
        batches(&mut sibling, 1).await.concat(),
        vec![put("/wx/a", "sibling", rx)]
    );
}

/// A list at revision R and a watch from R, while another task writes all along (and one
/// write lands between the list and the watch): the listed state with every event applied
/// is exactly the store's state at the end.
async fn list_then_watch_misses_nothing_under_concurrent_writes(s: Store) {
    const WRITES: usize = 300;
    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (s, done) = (s.clone(), done.clone());
        tokio::spawn(async move {
            for i in 0..WRITES {
                let key = format!("/lw/k{:02}", i % 17);
                if i % 5 == 4 {
                    match s.delete(&key, None).await {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => panic!("delete {key}: {e}"),
                    }
                } else {
                    s.put(&key, i.to_string().into_bytes()).await.unwrap();
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    while done.load(Ordering::SeqCst) < 10 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let listing = s.list_with_revision("/lw").await.unwrap();
    let written_at_list = done.load(Ordering::SeqCst);
    s.put("/lw/gap", b"between the list and the watch".to_vec())
        .await
        .unwrap();
    let mut w = s.watch("/lw", listing.revision).await.unwrap();
    writer.await.unwrap();
    let end = s.put("/lw/end", b"end".to_vec()).await.unwrap();
    assert!(
        written_at_list < WRITES / 2,
        "the list was read while the writer wrote ({written_at_list} of {WRITES} done)"
    );

    let mut state: BTreeMap<String, (Vec<u8>, Revision)> = listing
        .kvs
        .into_iter()
        .map(|kv| (kv.key, (kv.value, kv.revision)))
        .collect();
    let (mut last, mut seen) = (listing.revision, 0);
    while last < end {
        let batch = batches(&mut w, 1).await.concat();
        for e in batch {
            assert!(e.revision() > listing.revision, "{e:?}");
            assert!(e.revision() >= last, "out of order: {e:?} after {last}");
            last = e.revision();
            seen += 1;
            match e {
                Event::Put(kv) => {
                    state.insert(kv.key, (kv.value, kv.revision));
                }
                Event::Delete { key, .. } => {
                    assert!(state.remove(&key).is_some(), "delete of unknown {key}");
                }
            }
        }
    }
    assert!(seen > WRITES / 2, "{seen} events");
    let now: BTreeMap<String, (Vec<u8>, Revision)> = s
        .list("/lw")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, (kv.value, kv.revision)))
        .collect();
    assert_eq!(state, now);
    assert!(state.contains_key("/lw/gap"));
}

/// A [`Watcher`] starts with every key, follows changes, and its periodic list finds
/// nothing missed; it carries on watching after it.
async fn watcher_follows_and_resyncs_periodically(s: Store) {
    let ra = s.put("/wr/a", b"a".to_vec()).await.unwrap();
    s.put("/wrx/a", b"sibling".to_vec()).await.unwrap();
    let mut w = Watcher::new(s.clone(), "/wr").resync_every(Duration::from_millis(300));
    match update(&mut w).await {
        Update::Resynced {
            reason: Resync::Start,
            revision,
            diff,
        } => {
            assert_eq!(diff, vec![put("/wr/a", "a", ra)]);
            assert_eq!(w.revision(), revision);
        }
        other => panic!("{other:?}"),
    }
    let rb = s.put("/wr/b", b"b".to_vec()).await.unwrap();
    assert_eq!(
        update(&mut w).await,
        Update::Events(vec![put("/wr/b", "b", rb)])
    );
    match update(&mut w).await {
        Update::Resynced {
            reason: Resync::Periodic,
            revision,
            diff,
        } => {
            assert!(diff.is_empty(), "nothing was missed: {diff:?}");
            assert!(revision >= rb);
        }
        other => panic!("{other:?}"),
    }
    s.delete("/wr/a", None).await.unwrap();
    match update(&mut w).await {
        Update::Events(events) => {
            assert!(
                matches!(&events[..], [Event::Delete { key, .. }] if key == "/wr/a"),
                "{events:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        (w.len(), w.seen("/wr/b"), w.seen("/wr/a")),
        (1, Some(rb), None)
    );
}

/// A consumer that knew the state at revision R resumes from R after the store compacted
/// it (`compact`): the watch says so, and the [`Watcher`] lists again and gives what it
/// missed: a put for the changed and the new key, a delete for the one deleted meanwhile,
/// nothing for the unchanged one; later writes follow as events.
pub async fn watcher_resumes_past_compaction<F, Fut>(s: Store, compact: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    s.put("/rc/keep", b"k".to_vec()).await.unwrap();
    s.put("/rc/change", b"v1".to_vec()).await.unwrap();
    s.put("/rc/gone", b"g".to_vec()).await.unwrap();
    let listing = s.list_with_revision("/rc").await.unwrap();
    let known: Vec<(String, Revision)> = listing
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.revision))
        .collect();

    let r_change = s.put("/rc/change", b"v2".to_vec()).await.unwrap();
    s.delete("/rc/gone", None).await.unwrap();
    let r_new = s.put("/rc/new", b"n".to_vec()).await.unwrap();
    compact().await;

    // The fault: the store no longer has the history after R.
    let mut raw = s.watch("/rc", listing.revision).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), raw.next()).await {
        Ok(Some(Err(e))) => {
            assert!(e.is_compacted(), "{e}");
            assert!(e.to_string().contains("/rc/"), "names the prefix: {e}");
        }
        other => panic!("a compacted watch: {other:?}"),
    }
    assert!(raw.next().await.is_none(), "the stream ends with its error");

    let mut w = Watcher::resume(s.clone(), "/rc", known, listing.revision);
    match update(&mut w).await {
        Update::Resynced {
            reason: Resync::Compacted,
            revision,
            diff,
        } => assert_eq!(
            diff,
            vec![
                put("/rc/change", "v2", r_change),
                put("/rc/new", "n", r_new),
                del("/rc/gone", revision),
            ]
        ),
        other => panic!("{other:?}"),
    }
    let r_later = s.put("/rc/later", b"l".to_vec()).await.unwrap();
    assert_eq!(
        update(&mut w).await,
        Update::Events(vec![put("/rc/later", "l", r_later)])
    );
    assert_eq!(w.len(), 4);
}

backends!(
    threads = 4,
    timeout = None,
    [
        watch_gives_changes_in_order_under_its_prefix,
        list_then_watch_misses_nothing_under_concurrent_writes,
        watcher_follows_and_resyncs_periodically,
        get_create_update_delete,
        prefix_listing_is_by_directory,
        transactions_are_all_or_nothing,
        concurrent_cas_loses_no_update,
        stats_count_round_trips,
        get_many_answers_in_key_order,
        list_many_answers_like_list,
        large_lists_are_complete,
    ]
);

/// The embedded store keeps a bounded history (here, one value larger than its byte bound
/// pushes everything out): an older revision is compacted, as in etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_watcher_resumes_past_compaction() {
    let (s, _dir) = common::backends::local();
    let filler = s.clone();
    watcher_resumes_past_compaction(s, || async move {
        filler
            .put("/filler/big", vec![b'x'; HISTORY_BYTES + 1])
            .await
            .unwrap();
    })
    .await;
}

/// A watch of the embedded store ends, with an error, when the store is closed (it does
/// not keep the store's file open).
#[tokio::test]
async fn local_store_watch_ends_when_the_store_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let s = LocalStore::open(&path).unwrap();
    let mut w = s.watch("/k", 0).await.unwrap();
    let r = s.put("/k/a", b"1".to_vec()).await.unwrap();
    assert_eq!(batches(&mut w, 1).await.concat(), vec![put("/k/a", "1", r)]);
    drop(s);
    let reopened = LocalStore::open(&path).expect("the file is free again");
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Some(Err(e))) => assert!(e.is_unavailable(), "{e}"),
        other => panic!("{other:?}"),
    }
    drop(reopened);
}

#[tokio::test]
async fn local_store_reopen_keeps_data_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/store.redb");
    let rev = {
        let s = LocalStore::open(&path).unwrap();
        s.create("/k", b"v".to_vec()).await.unwrap()
    };
    let s = LocalStore::open(&path).unwrap();
    let kv = s.get("/k").await.unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.revision), (&b"v"[..], rev));
    let next = s.put("/k2", b"w".to_vec()).await.unwrap();
    assert!(next > rev, "revisions keep increasing after reopen");
}

#[tokio::test]
async fn local_store_refuses_a_second_opener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let _first = LocalStore::open(&path).unwrap();
    let err = LocalStore::open(&path)
        .err()
        .expect("second open must fail");
    assert!(err.to_string().contains("store.redb"), "{err}");
}

#[tokio::test]
async fn etcd_down_fails_within_deadline() {
    let mut etcd = common::etcd::Etcd::start();
    let store = etcd.store_with_timeout(Duration::from_millis(800));
    store.put("/x", b"1".to_vec()).await.unwrap();
    etcd.stop();
    for op in 0..3 {
        let t = Instant::now();
        let err = match op {
            0 => store.get("/x").await.map(|_| ()).unwrap_err(),
            1 => store.list("/").await.map(|_| ()).unwrap_err(),
            _ => store
                .put("/x", b"2".to_vec())
                .await
                .map(|_| ())
                .unwrap_err(),
        };
        assert!(err.is_unavailable(), "{err}");
        assert!(
            err.to_string().contains("127.0.0.1"),
            "names the endpoint: {err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
    }
}

#[tokio::test]
async fn etcd_never_started_fails_within_deadline() {
    let port = common::free_port();
    let store = calico_libnetwork::datastore::etcd::EtcdStore::new(
        calico_libnetwork::datastore::etcd::EtcdConfig {
            endpoints: vec![format!("http://127.0.0.1:{port}")],
            timeout: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    let err = store.get("/x").await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3));
}
