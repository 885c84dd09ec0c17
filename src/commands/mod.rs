//! The commands' bodies, one file per command (as netavark's `src/commands/`):
//! [`serve`] runs the plugin; the operator commands each gather a report (serializable for
//! `-o json`) and print it as a table, every problem with one line saying what to do.

pub(crate) mod endpoint;
pub(crate) mod firewall;
pub(crate) mod ipam;
pub(crate) mod node;
pub(crate) mod output;
pub(crate) mod plugin_socket;
pub(crate) mod pool;
pub(crate) mod serve;
pub(crate) mod status;

use std::sync::Arc;

use crate::config::{Config, DatastoreConfig};
use crate::datastore::etcd::EtcdStore;
use crate::datastore::local::LocalStore;
use crate::datastore::remote::RemoteStore;
use crate::datastore::Datastore;
use crate::error::{Error, Result};

/// Opens the configured datastore.
pub(crate) fn open_datastore(config: &Config) -> Result<Arc<dyn Datastore>> {
    Ok(match &config.datastore {
        DatastoreConfig::Etcd(c) => Arc::new(EtcdStore::new(c.clone())?),
        DatastoreConfig::Local(path) => Arc::new(LocalStore::open(path)?),
    })
}

/// Opens the datastore for an operator command: the configured one, or, when the embedded
/// store's file is held by the plugin running on this host, that plugin's store through
/// its socket (same data, same code above it).
pub(crate) async fn open_datastore_for_command(config: &Config) -> Result<Arc<dyn Datastore>> {
    match open_datastore(config) {
        Err(e) if e.is_in_use() => {
            let store = RemoteStore::connect(&config.socket)
                .await
                .map_err(|remote| {
                    Error::msg(format!(
                        "{e}, and the plugin socket {} does not serve it ({remote}): stop the \
                     process holding the store, or point CALICO_LIBNETWORK_SOCKET at the \
                     plugin's socket",
                        config.socket.display()
                    ))
                })?;
            Ok(Arc::new(store))
        }
        other => other,
    }
}
