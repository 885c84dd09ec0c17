//! A plugin-socket client speaking HTTP/1.1 like Docker: POST, no Content-Type, keep-alive.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub struct PluginClient {
    pub path: PathBuf,
}

impl PluginClient {
    pub fn new(path: impl AsRef<Path>) -> Self {
        PluginClient {
            path: path.as_ref().to_path_buf(),
        }
    }

    /// POSTs `body` (raw) to `/<method>`; returns the status and the decoded JSON body.
    pub async fn raw(&self, method: &str, body: &str) -> (u16, Value) {
        let stream = tokio::net::UnixStream::connect(&self.path)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.path.display()));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = hyper::Request::post(format!("/{method}"))
            .header("Host", "plugin.moby.localhost")
            .header("Accept", "application/vnd.docker.plugins.v1.2+json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = sender.send_request(req).await.expect("send request");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method}: body is not JSON ({e}): {bytes:?}"));
        (status, json)
    }

    /// POSTs a JSON value the way Docker's Go encoder does (trailing newline).
    pub async fn call(&self, method: &str, body: Value) -> (u16, Value) {
        self.raw(method, &format!("{body}\n")).await
    }

    /// Calls and asserts success (200, no Err), returning the body.
    pub async fn ok(&self, method: &str, body: Value) -> Value {
        let (status, v) = self.call(method, body.clone()).await;
        assert_eq!(status, 200, "{method} {body} -> {status} {v}");
        assert!(v.get("Err").is_none(), "{method} -> {v}");
        v
    }

    /// Calls and asserts failure, returning the Err message.
    pub async fn err(&self, method: &str, body: Value) -> (u16, String) {
        let (status, v) = self.call(method, body.clone()).await;
        assert_ne!(status, 200, "{method} {body} unexpectedly succeeded: {v}");
        let msg = v["Err"]
            .as_str()
            .unwrap_or_else(|| panic!("{method}: no Err in {v}"))
            .to_string();
        (status, msg)
    }

    /// `IpamDriver.RequestAddress` of any address of `pool` as Docker asks it (`Options`
    /// null), asserting success: the address as answered, with its prefix length.
    pub async fn request_address(&self, pool: &str) -> String {
        let a = self
            .ok(
                "IpamDriver.RequestAddress",
                serde_json::json!({"PoolID": pool, "Address": "", "Options": null}),
            )
            .await;
        a["Address"]
            .as_str()
            .unwrap_or_else(|| panic!("RequestAddress from {pool}: no Address in {a}"))
            .to_string()
    }

    /// [`Self::request_address`] without its prefix length.
    pub async fn request_any_address(&self, pool: &str) -> String {
        let a = self.request_address(pool).await;
        a.split('/').next().unwrap().to_string()
    }

    /// `IpamDriver.ReleaseAddress` of `address` in `pool`, asserting success.
    pub async fn release_address(&self, pool: &str, address: &str) {
        self.ok(
            "IpamDriver.ReleaseAddress",
            serde_json::json!({"PoolID": pool, "Address": address}),
        )
        .await;
    }
}
