//! The two datastores a suite runs on: a real etcd ([`etcd`]) and the embedded store
//! ([`local`]), and [`backends!`](crate::common::backends::backends), which makes one test
//! per backend of each named `async fn(Store)`:
//!
//! ```ignore
//! backends!(threads = 4, timeout = Some(Duration::from_secs(60)), [first_test, second_test]);
//! ```
//!
//! gives `etcd::first_test`, `local::first_test`, ... next to the functions, each on a
//! multi-thread runtime of `threads` workers, failing after `timeout` (`None`: no limit).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use calico_libnetwork::datastore::local::LocalStore;
use calico_libnetwork::datastore::Datastore;

use super::etcd::Etcd;

/// What every backend test takes.
pub type Store = Arc<dyn Datastore>;

/// A store on a fresh etcd, and the etcd (stopped when dropped).
pub fn etcd() -> (Store, Etcd) {
    let etcd = Etcd::start();
    (Arc::new(etcd.store()), etcd)
}

/// A fresh embedded store, and its directory (removed when dropped).
pub fn local() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("store.redb")).unwrap();
    (Arc::new(store), dir)
}

/// Runs `test`, failing it after `timeout` if one is given.
pub async fn within(timeout: Option<Duration>, test: impl Future<Output = ()>) {
    match timeout {
        Some(t) => tokio::time::timeout(t, test).await.expect("test timed out"),
        None => test.await,
    }
}

/// One `#[tokio::test]` per backend (`etcd::NAME`, `local::NAME`) of each `async fn
/// NAME(Store)` listed; see the module's documentation.
#[allow(unused_macros)]
macro_rules! backends {
    (threads = $threads:tt, timeout = $timeout:expr, [$($name:ident),* $(,)?]) => {
        $crate::common::backends::backends!(@one etcd, $threads, $timeout, [$($name),*]);
        $crate::common::backends::backends!(@one local, $threads, $timeout, [$($name),*]);
    };
    (@one $backend:ident, $threads:tt, $timeout:expr, [$($name:ident),*]) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
                async fn $name() {
                    let (store, _guard) = $crate::common::backends::$backend();
                    $crate::common::backends::within($timeout, super::$name(store)).await;
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use backends;
