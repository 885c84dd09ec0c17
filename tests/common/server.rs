//! The plugin server run in-process on a temporary socket, over a given datastore.

use std::sync::Arc;
use std::time::Duration;

use calico_libnetwork::datastore::Datastore;
use calico_libnetwork::driver::{Driver, DriverSettings};
use calico_libnetwork::plugin::{self, AppState};

use super::client::PluginClient;

pub struct Server {
    pub client: PluginClient,
    pub driver: Arc<Driver>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Serves on a temp socket for node `node`; runs the start-up preparation (Node
    /// resource, default pools from `default_pools`) first.
    pub async fn start(store: Arc<dyn Datastore>, node: &str, default_pools: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("plugins/calico.sock");
        let driver = Arc::new(Driver::new(store, DriverSettings::new(node)));
        let pools: Vec<_> = default_pools
            .iter()
            .map(|p| calico_libnetwork::ipam::default_pool(&p.parse().unwrap()))
            .collect();
        driver.init(&pools).await.unwrap();
        let listener = plugin::bind(&sock).unwrap();
        let state = Arc::new(AppState {
            driver: driver.clone(),
            timeout: Duration::from_secs(10),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let path = sock.clone();
        let task = tokio::spawn(async move {
            plugin::serve(listener, path, state, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Server {
            client: PluginClient::new(&sock),
            driver,
            stop: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Stops serving; returns the socket path (which must be gone).
    pub async fn stop(mut self) -> std::path::PathBuf {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap();
        self.client.path.clone()
    }
}
