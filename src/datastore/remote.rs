//! The datastore of a running plugin, reached through its socket: how operator commands
//! (`pool`, `ipam`, `endpoint`, `status`) work on the embedded store while the plugin holds
//! its file (redb allows one process per file).
//!
//! The plugin serves one extra route, [`ROUTE`], beside Docker's calls: a [`Request`] (get,
//! get several, list, transaction) is run on the plugin's own store and answered as a
//! [`Reply`], or as `{"Err", "Kind", "Key"}` so that a lost compare-and-swap stays a
//! [`Error::Conflict`] on this side. Docker never calls it (it only calls the methods of the
//! drivers a plugin announces), and only root (or the plugin's own user) may use it: the
//! socket is mode 0660 and the server also checks the caller's credentials.
//!
//! [`RemoteStore`] is the client: a [`Datastore`] whose every call is one HTTP request on
//! the socket, so the commands run the same code, with the same output and exit codes, as
//! on a store they open themselves.
//!
//! It offers no watches ([`Datastore::watch`] and [`Datastore::list_with_revision`] say
//! so): commands read, change and exit; whatever follows changes runs inside the plugin,
//! on its own store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};

use super::{Datastore, Expect, KeyValue, Listing, Revision, Stats, WatchStream, Write};
use crate::error::{Error, Result};

/// The route on the plugin socket (not a Docker method: `/<Kind>.<Method>` names no driver
/// Docker knows).
pub const ROUTE: &str = "/CalicoLibnetwork.Datastore";

/// Deadline of one proxied call (the plugin's own datastore deadline is shorter).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One stored key on the wire; the value is hex (values are bytes; nearly always JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireKv {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Value")]
    pub value: String,
    #[serde(rename = "Revision")]
    pub revision: Revision,
}

/// One write of a transaction on the wire.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireWrite {
    #[serde(rename = "Key")]
    pub key: String,
    /// Hex value; absent to delete.
    #[serde(rename = "Value", default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `any`, `absent`, `present` or `revision`.
    #[serde(rename = "Expect")]
    pub expect: String,
    /// The revision expected (with `revision`).
    #[serde(rename = "Revision", default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Revision>,
}

/// A call on the plugin's datastore.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "Op")]
pub enum Request {
    /// Which backend the plugin runs (`local` or `etcdv3`).
    Kind,
    Get {
        #[serde(rename = "Key")]
        key: String,
    },
    GetMany {
        #[serde(rename = "Keys")]
        keys: Vec<String>,
    },
    List {
        #[serde(rename = "Prefix")]
        prefix: String,
    },
    Txn {
        #[serde(rename = "Writes")]
        writes: Vec<WireWrite>,
    },
}

/// A successful answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Reply {
    Kind(String),
    /// Get and GetMany: one entry per key asked, `null` when absent. List: every key found.
    Kvs(Vec<Option<WireKv>>),
    /// Txn: the revision written at.
    Revision(Revision),
}

/// A failed answer: the message, and enough of the kind to rebuild the same [`Error`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireError {
    #[serde(rename = "Err")]
    pub err: String,
    /// `exists`, `not-found`, `conflict`, `unavailable`, `invalid` or `other`.
    #[serde(rename = "Kind")]
    pub kind: String,
    #[serde(rename = "Key", default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    let bad = || Error::invalid("decode datastore value: not hex");
    if s.len() % 2 != 0 {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

impl From<&KeyValue> for WireKv {
    fn from(kv: &KeyValue) -> Self {
        WireKv {
            key: kv.key.clone(),
            value: hex(&kv.value),
            revision: kv.revision,
        }
    }
}

impl WireKv {
    fn decode(self) -> Result<KeyValue> {
        Ok(KeyValue {
            value: unhex(&self.value)?,
            key: self.key,
            revision: self.revision,
        })
    }
}

impl From<&Write> for WireWrite {
    fn from(w: &Write) -> Self {
        let (expect, revision) = match w.expect {
            Expect::Any => ("any", None),
            Expect::Absent => ("absent", None),
            Expect::Present => ("present", None),
            Expect::Revision(r) => ("revision", Some(r)),
        };
        WireWrite {
            key: w.key.clone(),
            value: w.value.as_deref().map(hex),
            expect: expect.to_string(),
            revision,
        }
    }
}

impl WireWrite {
    fn decode(self) -> Result<Write> {
        let expect = match (self.expect.as_str(), self.revision) {
            ("any", _) => Expect::Any,
            ("absent", _) => Expect::Absent,
            ("present", _) => Expect::Present,
            ("revision", Some(r)) => Expect::Revision(r),
            (other, _) => {
                return Err(Error::invalid(format!(
                    "decode write of {}: unknown condition '{}'",
                    self.key,
                    other.escape_default()
                )))
            }
        };
        Ok(Write {
            value: self.value.as_deref().map(unhex).transpose()?,
            key: self.key,
            expect,
        })
    }
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        let (kind, key) = match e.root() {
            Error::Exists { key } => ("exists", Some(key.clone())),
            Error::NotFound { key } => ("not-found", Some(key.clone())),
            Error::Conflict { key } => ("conflict", Some(key.clone())),
            Error::Unavailable(_) | Error::Timeout { .. } => ("unavailable", None),
            Error::Invalid(_) => ("invalid", None),
            _ => ("other", None),
        };
        WireError {
            err: e.to_string(),
            kind: kind.to_string(),
            key,
        }
    }
}

impl WireError {
    /// The error as the plugin's store gave it (same kind, same message).
    fn into_error(self) -> Error {
        match (self.kind.as_str(), self.key) {
            ("exists", Some(key)) => Error::Exists { key },
            ("not-found", Some(key)) => Error::NotFound { key },
            ("conflict", Some(key)) => Error::Conflict { key },
            ("unavailable", _) => Error::Unavailable(format!("the plugin's store: {}", self.err)),
            ("invalid", _) => Error::Invalid(self.err),
            _ => Error::Message(self.err),
        }
    }
}

/// Runs one request on `store` (the plugin's side of [`ROUTE`]).
pub async fn serve(store: &dyn Datastore, req: Request) -> std::result::Result<Reply, WireError> {
    let res = match req {
        Request::Kind => Ok(Reply::Kind(store.kind().to_string())),
        Request::Get { key } => store
            .get(&key)
            .await
            .map(|kv| Reply::Kvs(vec![kv.as_ref().map(WireKv::from)])),
        Request::GetMany { keys } => store
            .get_many(&keys)
            .await
            .map(|kvs| Reply::Kvs(kvs.iter().map(|kv| kv.as_ref().map(WireKv::from)).collect())),
        Request::List { prefix } => store
            .list(&prefix)
            .await
            .map(|kvs| Reply::Kvs(kvs.iter().map(|kv| Some(WireKv::from(kv))).collect())),
        Request::Txn { writes } => {
            match writes
                .into_iter()
                .map(WireWrite::decode)
                .collect::<Result<Vec<_>>>()
            {
                Ok(writes) => store.txn(writes).await.map(Reply::Revision),
                Err(e) => Err(e),
            }
        }
    };
    res.map_err(|e| WireError::from(&e))
}

/// A [`Datastore`] that is the running plugin's, reached through its socket.
pub struct RemoteStore {
    socket: PathBuf,
    kind: &'static str,
    stats: Stats,
}

impl RemoteStore {
    /// Connects to the plugin serving `socket` and learns which backend it runs.
    pub async fn connect(socket: &Path) -> Result<Self> {
        let mut store = RemoteStore {
            socket: socket.to_path_buf(),
            kind: "local",
            stats: Stats::default(),
        };
        store.kind = match store.call(&Request::Kind).await? {
            Reply::Kind(k) if k == "etcdv3" => "etcdv3",
            Reply::Kind(k) if k == "local" => "local",
            other => {
                return Err(Error::msg(format!(
                    "reach the plugin's datastore on {}: unexpected answer {other:?}",
                    socket.display()
                )))
            }
        };
        Ok(store)
    }

    /// The socket it talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn call(&self, req: &Request) -> Result<Reply> {
        let what = || format!("plugin datastore at {}", self.socket.display());
        let body = serde_json::to_vec(req).map_err(|e| Error::json("datastore request", e))?;
        let attempt = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| Error::Unavailable(format!("connect {}: {e}", what())))?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| Error::Unavailable(format!("connect {}: {e}", what())))?;
            tokio::spawn(conn);
            let request = http::Request::post(ROUTE)
                .header(http::header::HOST, "calico-libnetwork")
                .body(Full::new(axum::body::Bytes::from(body)))
                .map_err(|e| Error::msg(format!("build request to {}: {e}", what())))?;
            let resp = send
                .send_request(request)
                .await
                .map_err(|e| Error::Unavailable(format!("call {}: {e}", what())))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Unavailable(format!("read answer of {}: {e}", what())))?
                .to_bytes();
            Ok::<_, Error>((status, bytes))
        };
        let (status, bytes) =
            tokio::time::timeout(CALL_TIMEOUT, attempt)
                .await
                .map_err(|_| Error::Timeout {
                    what: what(),
                    after: CALL_TIMEOUT,
                })??;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| Error::json(what(), e));
        }
        if status == http::StatusCode::NOT_FOUND {
            return Err(Error::msg(format!(
                "{}: the plugin serving it does not offer its datastore (an older version?)",
                what()
            )));
        }
        match serde_json::from_slice::<WireError>(&bytes) {
            Ok(e) => Err(e.into_error()),
            Err(_) => Err(Error::msg(format!(
                "{}: answered {status}: {}",
                what(),
                String::from_utf8_lossy(&bytes).trim()
            ))),
        }
    }

    fn no_watches(&self, op: &str, prefix: &str, what: &str) -> Error {
        Error::msg(format!(
            "{op} {prefix}{what}: the plugin's datastore through {} offers no \
             watches (watch from inside the plugin)",
            self.socket.display()
        ))
    }

    async fn kvs(&self, req: &Request) -> Result<Vec<Option<KeyValue>>> {
        match self.call(req).await? {
            Reply::Kvs(kvs) => kvs
                .into_iter()
                .map(|kv| kv.map(WireKv::decode).transpose())
                .collect(),
            other => Err(Error::msg(format!(
                "plugin datastore: unexpected answer {other:?}"
            ))),
        }
    }
}

#[async_trait]
impl Datastore for RemoteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.stats.read();
        let mut kvs = self
            .kvs(&Request::Get {
                key: key.to_string(),
            })
            .await?;
        Ok(kvs.pop().flatten())
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        self.stats.read();
        let kvs = self
            .kvs(&Request::GetMany {
                keys: keys.to_vec(),
            })
            .await?;
        if kvs.len() != keys.len() {
            return Err(Error::msg(format!(
                "plugin datastore: {} answers for {} keys",
                kvs.len(),
                keys.len()
            )));
        }
        Ok(kvs)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.stats.read();
        Ok(self
            .kvs(&Request::List {
                prefix: prefix.to_string(),
            })
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    async fn list_with_revision(&self, prefix: &str) -> Result<Listing> {
        Err(self.no_watches("list", prefix, " with its revision"))
    }

    async fn watch(&self, prefix: &str, _after: Revision) -> Result<WatchStream> {
        Err(self.no_watches("watch", prefix, ""))
    }

    async fn txn(&self, writes: Vec<Write>) -> Result<Revision> {
        self.stats.txn(&writes);
        let req = Request::Txn {
            writes: writes.iter().map(WireWrite::from).collect(),
        };
        match self.call(&req).await {
            Ok(Reply::Revision(r)) => Ok(r),
            Ok(other) => Err(Error::msg(format!(
                "plugin datastore: unexpected answer {other:?}"
            ))),
            Err(e) => {
                if matches!(
                    e,
                    Error::Conflict { .. } | Error::Exists { .. } | Error::NotFound { .. }
                ) {
                    self.stats.conflict();
                }
                Err(e)
            }
        }
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn kind(&self) -> &'static str {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_writes_survive_the_wire() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&bytes)).unwrap(), bytes);
        assert!(unhex("abc").is_err());
        assert!(unhex("zz").is_err());
        for w in [
            Write::create("/a", b"{}".to_vec()),
            Write::update("/b", b"x".to_vec(), 7),
            Write::delete("/c", 9),
            Write::put("/d", vec![]),
            Write {
                key: "/e".into(),
                value: None,
                expect: Expect::Present,
            },
        ] {
            let wire: WireWrite =
                serde_json::from_str(&serde_json::to_string(&WireWrite::from(&w)).unwrap())
                    .unwrap();
            assert_eq!(wire.decode().unwrap(), w);
        }
    }

    #[test]
    fn error_kinds_survive_the_wire() {
        for e in [
            Error::Conflict { key: "/k".into() }.context("assign"),
            Error::Exists { key: "/k".into() },
            Error::NotFound { key: "/k".into() },
        ] {
            let back = WireError::from(&e).into_error();
            assert_eq!(
                std::mem::discriminant(back.root()),
                std::mem::discriminant(e.root())
            );
            assert_eq!(back.to_string(), e.root().to_string());
        }
        assert!(WireError::from(&Error::Unavailable("etcd down".into()))
            .into_error()
            .is_unavailable());
    }
}
