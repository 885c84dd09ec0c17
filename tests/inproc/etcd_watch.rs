//! Watches on etcd where only etcd can make the fault: compaction by etcd's own API, the
//! etcd process killed and started again, a hung etcd, a watch outliving the request
//! deadline. What both backends share is in `datastore_conformance`.

use crate::common;
use crate::datastore_conformance::{del, put, watcher_resumes_past_compaction};

use std::sync::Arc;
use std::time::Duration;

use calico_libnetwork::datastore::watch::{Resync, Update, Watcher};
use calico_libnetwork::datastore::Datastore;
use common::backends::Store;
use common::etcd::Etcd;
use futures::StreamExt;

/// Compacts etcd's history up to its current revision, as `etcdctl compact` does.
async fn compact(etcd: &Etcd) -> i64 {
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let rev = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    rev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resumes_past_etcd_compaction() {
    let etcd = Etcd::start();
    let s: Store = Arc::new(etcd.store());
    watcher_resumes_past_compaction(s, || async {
        compact(&etcd).await;
    })
    .await;
}

/// etcd killed under a running watch and started again: the watch's stream ends with an
/// error, the watcher says it cannot list while etcd is down, then lists again and gives
/// what changed meanwhile (a key deleted, one created), and later writes arrive as events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resyncs_after_etcd_restarts() {
    let mut etcd = Etcd::start();
    let s: Store = Arc::new(etcd.store_with_timeout(Duration::from_secs(2)));
    s.put("/rs/a", b"a".to_vec()).await.unwrap();
    let rb = s.put("/rs/b", b"b".to_vec()).await.unwrap();
    let mut w = Watcher::new(s.clone(), "/rs");
    match w.next().await.unwrap() {
        Update::Resynced {
            reason: Resync::Start,
            diff,
            ..
        } => assert_eq!(diff.len(), 2, "{diff:?}"),
        other => panic!("{other:?}"),
    }
    let listing = s.list_with_revision("/rs").await.unwrap();
    let mut raw = s.watch("/rs", listing.revision).await.unwrap();

    etcd.stop();
    match tokio::time::timeout(Duration::from_secs(20), raw.next()).await {
        Ok(Some(Err(e))) => assert!(e.is_unavailable(), "{e}"),
        other => panic!("the stream breaks with etcd: {other:?}"),
    }
    match tokio::time::timeout(Duration::from_secs(20), w.next()).await {
        Ok(Err(e)) => assert!(e.is_unavailable(), "{e}"),
        other => panic!("no list while etcd is down: {other:?}"),
    }

    etcd.restart();
    // Changes the watcher does not follow: it is not being asked.
    let other = etcd.store();
    other.delete("/rs/a", None).await.unwrap();
    let rc = other.put("/rs/c", b"c".to_vec()).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (revision, diff) = loop {
        match tokio::time::timeout_at(deadline, w.next()).await {
            Ok(Ok(Update::Resynced {
                reason: Resync::Broken,
                revision,
                diff,
            })) => break (revision, diff),
            Ok(Ok(other)) => panic!("{other:?}"),
            // Reconnecting may take another attempt.
            Ok(Err(e)) => assert!(e.is_unavailable(), "{e}"),
            Err(_) => panic!("no resync within 30 s of etcd's restart: {w:?}"),
        }
    };
    assert_eq!(diff, vec![put("/rs/c", "c", rc), del("/rs/a", revision),]);
    let rd = s.put("/rs/d", b"d".to_vec()).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Ok(Update::Events(events))) => assert_eq!(events, vec![put("/rs/d", "d", rd)]),
        other => panic!("{other:?}"),
    }
    assert_eq!((w.seen("/rs/b"), w.seen("/rs/a")), (Some(rb), None));
}

/// A watch stays open past the store's request deadline: the deadline bounds opening it,
/// not waiting for changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_outlives_the_request_deadline() {
    let etcd = Etcd::start();
    // A deadline that the list, the watch's opening and the put meet even on a loaded CI
    // machine (300 ms once failed with the suite's other etcds busy); the wait is
    // three times as long.
    let s = etcd.store_with_timeout(Duration::from_secs(1));
    let listing = s.list_with_revision("/dl").await.unwrap();
    let mut w = s.watch("/dl", listing.revision).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = s.put("/dl/k", b"v".to_vec()).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Some(Ok(events))) => assert_eq!(events, vec![put("/dl/k", "v", r)]),
        other => panic!("{other:?}"),
    }
}

/// etcd hung (SIGSTOP: the connection stays up, nothing answers, as behind a cut link):
/// HTTP/2 keep-alive (every 10 s, answered within the deadline) breaks the watch, so the
/// watcher does not wait forever on a silent stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_etcd_breaks_the_watch() {
    let etcd = Etcd::start();
    let s = etcd.store_with_timeout(Duration::from_secs(1));
    let listing = s.list_with_revision("/hung").await.unwrap();
    let mut w = s.watch("/hung", listing.revision).await.unwrap();
    let pid = etcd.pid().unwrap() as i32;
    assert!(common::host::signal_pid(pid, libc::SIGSTOP));
    let started = std::time::Instant::now();
    let item = tokio::time::timeout(Duration::from_secs(30), w.next()).await;
    assert!(common::host::signal_pid(pid, libc::SIGCONT));
    match item {
        Ok(Some(Err(e))) => assert!(e.is_unavailable(), "{e}"),
        other => panic!("the watch of a hung etcd: {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the break came from the keep-alive, not at once: {:?}",
        started.elapsed()
    );
}
