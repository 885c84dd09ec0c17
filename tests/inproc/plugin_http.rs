//! The plugin server over a real unix socket, spoken to as Docker speaks.

use crate::common;

use std::sync::Arc;

use calico_libnetwork::datastore::local::LocalStore;
use calico_libnetwork::plugin;
use common::client::PluginClient;
use common::server::Server;
use serde_json::json;

async fn start() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path().join("store.redb")).unwrap());
    (Server::start(store, "test-host", &[]).await, dir)
}

#[tokio::test]
async fn activate_answers_both_driver_kinds() {
    let (s, _dir) = start().await;
    // Docker sends Activate with an empty body and no Content-Type.
    let (status, v) = s.client.raw("Plugin.Activate", "").await;
    assert_eq!(status, 200);
    assert_eq!(v, json!({"Implements": ["NetworkDriver", "IpamDriver"]}));
    s.stop().await;
}

#[tokio::test]
async fn capabilities_and_address_spaces() {
    let (s, _dir) = start().await;
    let (_, v) = s.client.raw("NetworkDriver.GetCapabilities", "").await;
    assert_eq!(v, json!({"Scope": "local", "ConnectivityScope": "local"}));
    let (_, v) = s.client.raw("IpamDriver.GetCapabilities", "").await;
    assert_eq!(
        v,
        json!({"RequiresMACAddress": false, "RequiresRequestReplay": false})
    );
    let (_, v) = s.client.raw("IpamDriver.GetDefaultAddressSpaces", "").await;
    assert_eq!(
        v,
        json!({"LocalDefaultAddressSpace": "CalicoLocalAddressSpace",
               "GlobalDefaultAddressSpace": "CalicoGlobalAddressSpace"})
    );
    s.stop().await;
}

/// Sends `body` to `method`, asserting the answer is `status` with an Err; the Err.
async fn refused(c: &PluginClient, method: &str, body: &str, status: u16) -> String {
    let (got, v) = c.raw(method, body).await;
    assert_eq!(got, status, "{method} {body:?} -> {v}");
    v["Err"]
        .as_str()
        .unwrap_or_else(|| panic!("{method}: no Err in {v}"))
        .to_string()
}

#[tokio::test]
async fn unknown_method_is_404_with_err() {
    let (s, _dir) = start().await;
    let msg = refused(&s.client, "NetworkDriver.Frobnicate", "{}", 404).await;
    assert!(msg.contains("NetworkDriver.Frobnicate"), "{msg}");
    s.stop().await;
}

#[tokio::test]
async fn malformed_body_is_400_naming_the_problem() {
    let (s, _dir) = start().await;
    let c = &s.client;
    // What Docker sends when it retries a call a plugin restart cut short: no body.
    let msg = refused(c, "NetworkDriver.CreateEndpoint", "", 400).await;
    assert!(msg.contains("empty body"), "{msg}");

    let msg = refused(c, "NetworkDriver.Join", "{not json", 400).await;
    assert!(
        msg.starts_with("decode NetworkDriver.Join request"),
        "{msg}"
    );

    // As Docker's Go encoder sends JSON (a trailing newline; see PluginClient::call).
    let msg = refused(c, "NetworkDriver.Join", "{\"EndpointID\":\"ab\"}\n", 400).await;
    assert!(msg.contains("NetworkID"), "{msg}");

    let msg = refused(c, "IpamDriver.ReleaseAddress", "{\"PoolID\":\"x\"}\n", 400).await;
    assert!(msg.contains("Address"), "{msg}");
    s.stop().await;
}

#[tokio::test]
async fn hostile_ids_are_refused_before_use() {
    let (s, _dir) = start().await;
    for id in ["../../etc/passwd", "", "zz", &"a".repeat(65), "abc\u{0}def"] {
        let (status, msg) = s
            .client
            .err(
                "NetworkDriver.DeleteEndpoint",
                json!({"NetworkID": "a".repeat(64), "EndpointID": id}),
            )
            .await;
        assert_eq!(status, 400, "{id:?}");
        assert!(msg.contains("invalid EndpointID"), "{msg}");
    }
    s.stop().await;
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection_and_concurrently() {
    let (s, _dir) = start().await;
    let path = s.client.path.clone();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = PluginClient::new(&path);
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let (status, _) = c.raw("Plugin.Activate", "").await;
                assert_eq!(status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    s.stop().await;
}

#[tokio::test]
async fn stale_socket_is_replaced_and_live_one_is_not_stolen() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("calico.sock");
    // A stale socket file: bound once, its listener gone.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let live = plugin::bind(&sock).expect("stale socket replaced");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode");
    let err = plugin::bind(&sock).unwrap_err();
    assert!(err.to_string().contains("another process"), "{err}");
    drop(live);
}

#[tokio::test]
async fn shutdown_removes_the_socket() {
    let (s, _dir) = start().await;
    let path = s.stop().await;
    assert!(!path.exists(), "socket removed at shutdown");
}
