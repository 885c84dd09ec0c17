//! Watches on etcd where only etcd can make the fault: a hung etcd, a watch outliving the
//! request deadline. What both backends share is in `datastore_conformance`.

use crate::common;

use std::time::Duration;

use calico_libnetwork::datastore::{Datastore, Event, KeyValue};
use common::etcd::Etcd;
use futures::StreamExt;

/// A watch stays open past the store's request deadline: the deadline bounds opening it,
/// not waiting for changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_outlives_the_request_deadline() {
    let etcd = Etcd::start();
    let s = etcd.store_with_timeout(Duration::from_millis(300));
    let listing = s.list_with_revision("/dl").await.unwrap();
    let mut w = s.watch("/dl", listing.revision).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = s.put("/dl/k", b"v".to_vec()).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Some(Ok(events))) => assert_eq!(
            events,
            vec![Event::Put(KeyValue {
                key: "/dl/k".into(),
                value: b"v".to_vec(),
                revision: r,
            })]
        ),
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
