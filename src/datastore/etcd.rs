//! The etcd v3 backend, on the `etcd-client` crate.
//!
//! Each trait call is one etcd request, bounded by a deadline so an unreachable etcd gives a
//! clear error instead of a hang. Conditional writes are one `Txn`: the conditions as
//! compares, the writes in the success branch, and a `Get` of every key in the failure
//! branch so the error can say which key failed and why, as Calico's own client does.
//!
//! A watch is one gRPC stream of etcd's Watch service per call, with no deadline once open:
//! HTTP/2 keep-alive pings notice a dead connection, and etcd cancels a watch on a member
//! that lost its leader (every request asks for one).

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KvClient,
    TxnOp, TxnOpResponse, WatchClient, WatchOptions, WatchResponse,
};
use futures::StreamExt;
use tokio::sync::Mutex;

use super::{
    condition_error, dir_prefix, Datastore, Event, Expect, KeyValue, Listing, Revision, Stats,
    WatchStream, Write,
};
use crate::error::{Error, Result};

/// A secret (the etcd password): kept as given, never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// How to reach etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdConfig {
    /// Endpoint URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Username for etcd auth.
    pub username: Option<String>,
    /// Password for etcd auth (never logged, never in `Debug`).
    pub password: Option<Secret>,
    /// PEM CA certificate file for TLS.
    pub ca_cert_file: Option<std::path::PathBuf>,
    /// PEM client certificate file for TLS.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM client key file for TLS.
    pub key_file: Option<std::path::PathBuf>,
    /// Deadline for each request (and for connecting).
    pub timeout: Duration,
}

/// The etcd v3 store. Connects lazily, so the plugin can start before etcd is up.
pub struct EtcdStore {
    config: EtcdConfig,
    clients: Mutex<Option<Clients>>,
    stats: Stats,
}

/// The services used, on one connection.
#[derive(Clone)]
struct Clients {
    kv: KvClient,
    watch: WatchClient,
}

impl EtcdStore {
    /// Builds the store; the first request connects.
    pub fn new(config: EtcdConfig) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(Error::Config("no etcd endpoint configured".into()));
        }
        Ok(EtcdStore {
            config,
            clients: Mutex::new(None),
            stats: Stats::default(),
        })
    }

    fn where_(&self) -> String {
        self.config.endpoints.join(",")
    }

    fn options(&self) -> Result<ConnectOptions> {
        let c = &self.config;
        let mut opts = ConnectOptions::new()
            .with_timeout(c.timeout)
            .with_connect_timeout(c.timeout)
            .with_keep_alive(Duration::from_secs(10), c.timeout)
            // A member cut off from its cluster would keep a watch open and silent: with this,
            // etcd cancels it (and refuses requests) once the member has no leader.
            .with_require_leader(true);
        if let (Some(u), Some(p)) = (&c.username, &c.password) {
            // etcd's auth tokens expire (simple tokens after 300 s idle by default): without
            // the refresh every call fails from then on, until a restart.
            opts = opts
                .with_user(u.clone(), p.expose().to_string())
                .with_auto_token_refresh(true);
        }
        if c.ca_cert_file.is_some() || c.cert_file.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &c.ca_cert_file {
                let pem = std::fs::read(ca).map_err(|e| {
                    Error::io(format!("read ETCD_CA_CERT_FILE {}", ca.display()), e)
                })?;
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&c.cert_file, &c.key_file) {
                let cert_pem = std::fs::read(cert)
                    .map_err(|e| Error::io(format!("read ETCD_CERT_FILE {}", cert.display()), e))?;
                let key_pem = std::fs::read(key)
                    .map_err(|e| Error::io(format!("read ETCD_KEY_FILE {}", key.display()), e))?;
                tls = tls.identity(etcd_client::Identity::from_pem(cert_pem, key_pem));
            }
            opts = opts.with_tls(tls);
        }
        Ok(opts)
    }

    async fn client(&self) -> Result<KvClient> {
        Ok(self.clients().await?.kv)
    }

    async fn clients(&self) -> Result<Clients> {
        let mut guard = self.clients.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let opts = self.options()?;
        let connect = Client::connect(&self.config.endpoints, Some(opts));
        let client = tokio::time::timeout(self.config.timeout, connect)
            .await
            .map_err(|_| self.unavailable("connect", "no answer"))?
            .map_err(|e| self.unavailable("connect", e))?;
        // One value (a large block) may exceed tonic's default 4 MiB; lists are paged.
        let clients = Clients {
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            // One revision's events come in one message (a transaction of large values).
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
        };
        *guard = Some(clients.clone());
        Ok(clients)
    }

    fn unavailable(&self, op: &str, e: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!(
            "{op} etcd at {} (deadline {:?}): {}",
            self.where_(),
            self.config.timeout,
            redact(&e.to_string())
        ))
    }

    async fn call<T, F>(&self, op: &str, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(self.config.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.unavailable(op, e)),
            Err(_) => Err(self.unavailable(op, "no answer")),
        }
    }
}

/// Keeps any password-looking text out of messages (etcd-client errors never carry one,
/// but this is the single exit for etcd error text, so it is checked here).
fn redact(s: &str) -> String {
    s.replace(char::is_control, " ")
}

/// Keys per page of a list.
const LIST_PAGE: i64 = 500;
/// Largest answer accepted from etcd (a page of large values, or one large value).
const MAX_MESSAGE: usize = 64 << 20;

/// The end of the key range of `prefix` (exclusive): its last byte plus one, as etcd's own
/// prefix option computes it. `prefix` ends in `/`, so that byte is never 0xff.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// The events of one watch response: `None` for one without events (created, progress),
/// an error for a cancelled watch (compacted history, or refused).
fn watch_events(prefix: &str, after: Revision, resp: &WatchResponse) -> Result<Option<Vec<Event>>> {
    // A compacted start revision: etcd cancels the watch and names its compaction revision.
    if resp.compact_revision() > 0 {
        return Err(Error::Compacted {
            what: format!("{prefix} after revision {after}"),
            compacted: resp.compact_revision(),
        });
    }
    if resp.canceled() {
        return Err(Error::Unavailable(format!(
            "watch {prefix}: etcd cancelled it: {}",
            redact(resp.cancel_reason())
        )));
    }
    if resp.events().is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(resp.events().len());
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        out.push(match ev.event_type() {
            EventType::Put => Event::Put(to_kv(kv)?),
            // A delete event's key-value holds the key and the deletion's revision.
            EventType::Delete => Event::Delete {
                key: to_kv(kv)?.key,
                revision: kv.mod_revision(),
            },
        });
    }
    Ok(Some(out))
}

fn to_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: kv
            .key_str()
            .map_err(|e| Error::msg(format!("decode etcd key: {e}")))?
            .to_string(),
        value: kv.value().to_vec(),
        revision: kv.mod_revision(),
    })
}

#[async_trait]
impl Datastore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.stats.read();
        let mut kv = self.client().await?;
        let resp = self.call("get", kv.get(key, None)).await?;
        resp.kvs().first().map(to_kv).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        Ok(self.list_with_revision(prefix).await?.kvs)
    }

    async fn list_with_revision(&self, prefix: &str) -> Result<Listing> {
        let prefix = dir_prefix(prefix);
        let end = prefix_end(&prefix);
        let mut kv = self.client().await?;
        let mut out = Vec::new();
        let mut from = prefix.clone().into_bytes();
        // Pages of LIST_PAGE keys, all read at the first page's revision: one consistent
        // snapshot, however large (a cluster's WorkloadEndpoints, its blocks).
        let mut at = None;
        loop {
            self.stats.read();
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if let Some(rev) = at {
                opts = opts.with_revision(rev);
            }
            let resp = self.call("list", kv.get(from.clone(), Some(opts))).await?;
            let revision = *at.get_or_insert(resp.header().map(|h| h.revision()).unwrap_or(0));
            for k in resp.kvs() {
                out.push(to_kv(k)?);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    // The next page starts just after the last key read.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(Listing { kvs: out, revision }),
            }
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        self.stats.read();
        let prefix = dir_prefix(prefix);
        let opts = WatchOptions::new()
            .with_range(prefix_end(&prefix))
            .with_start_revision(after + 1);
        let mut client = self.clients().await?.watch;
        let mut stream = self
            .call("watch", client.watch(prefix.as_str(), Some(opts)))
            .await?;
        // etcd confirms the watch first; a compacted start revision comes after that.
        match self.call("watch", stream.message()).await? {
            Some(resp) if resp.created() => {
                watch_events(&prefix, after, &resp)?;
            }
            Some(_) => return Err(self.unavailable("watch", "no confirmation from etcd")),
            None => return Err(self.unavailable("watch", "etcd closed the stream")),
        }
        let where_ = self.where_();
        let broken = move |prefix: &str, e: &dyn std::fmt::Display| {
            Error::Unavailable(format!(
                "watch {prefix} on etcd at {where_}: {}",
                redact(&e.to_string())
            ))
        };
        Ok(futures::stream::unfold(Some(stream), move |state| {
            let prefix = prefix.clone();
            let broken = broken.clone();
            async move {
                let mut stream = state?;
                loop {
                    let item = match stream.message().await {
                        Ok(Some(resp)) => match watch_events(&prefix, after, &resp) {
                            Ok(Some(events)) => return Some((Ok(events), Some(stream))),
                            Ok(None) => continue,
                            Err(e) => Err(e),
                        },
                        Ok(None) => Err(broken(&prefix, &"etcd closed the stream")),
                        Err(e) => Err(broken(&prefix, &e)),
                    };
                    // An error ends the stream: the watch is over.
                    return Some((item, None));
                }
            }
        })
        .boxed())
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.stats.read();
        let ops: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
        let mut kv = self.client().await?;
        let resp = self
            .call("get", kv.txn(etcd_client::Txn::new().and_then(ops)))
            .await?;
        resp.op_responses()
            .iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(to_kv).transpose(),
                _ => Err(Error::msg("read keys: etcd answered a read with a write")),
            })
            .collect()
    }

    async fn list_many(&self, prefixes: &[String]) -> Result<Vec<Vec<KeyValue>>> {
        if prefixes.len() < 2 {
            let mut out = Vec::new();
            for p in prefixes {
                out.push(self.list(p).await?);
            }
            return Ok(out);
        }
        self.stats.read();
        let prefixes: Vec<String> = prefixes.iter().map(|p| dir_prefix(p)).collect();
        let ops: Vec<TxnOp> = prefixes
            .iter()
            .map(|p| {
                let opts = GetOptions::new()
                    .with_range(prefix_end(p))
                    .with_limit(LIST_PAGE);
                TxnOp::get(p.as_str(), Some(opts))
            })
            .collect();
        let mut kv = self.client().await?;
        let resp = self
            .call("list", kv.txn(etcd_client::Txn::new().and_then(ops)))
            .await?;
        let mut out = Vec::with_capacity(prefixes.len());
        for (p, r) in prefixes.iter().zip(resp.op_responses()) {
            let TxnOpResponse::Get(g) = r else {
                return Err(Error::msg("list keys: etcd answered a read with a write"));
            };
            if g.more() {
                // More than a page: read this prefix in pages of its own.
                out.push(self.list(p).await?);
            } else {
                out.push(g.kvs().iter().map(to_kv).collect::<Result<Vec<_>>>()?);
            }
        }
        Ok(out)
    }

    async fn txn(&self, writes: Vec<Write>) -> Result<Revision> {
        self.stats.txn(&writes);
        let mut compares = Vec::new();
        let mut then = Vec::new();
        let mut otherwise = Vec::new();
        for w in &writes {
            match w.expect {
                Expect::Any => {}
                Expect::Absent => {
                    compares.push(Compare::version(w.key.as_str(), CompareOp::Equal, 0))
                }
                Expect::Present => {
                    compares.push(Compare::version(w.key.as_str(), CompareOp::Greater, 0))
                }
                Expect::Revision(r) => {
                    compares.push(Compare::mod_revision(w.key.as_str(), CompareOp::Equal, r))
                }
            }
            then.push(match &w.value {
                Some(v) => TxnOp::put(w.key.as_str(), v.clone(), None),
                None => TxnOp::delete(w.key.as_str(), None::<DeleteOptions>),
            });
            otherwise.push(TxnOp::get(w.key.as_str(), None));
        }
        let txn = etcd_client::Txn::new()
            .when(compares)
            .and_then(then)
            .or_else(otherwise);
        let mut kv = self.client().await?;
        let resp = self.call("write", kv.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or_default());
        }
        self.stats.conflict();
        for (w, r) in writes.iter().zip(resp.op_responses()) {
            let current = match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            };
            if let Some(err) = condition_error(w, current) {
                return Err(err);
            }
        }
        // The compares failed but every key now matches: it changed and changed back.
        Err(Error::Conflict {
            key: writes.first().map(|w| w.key.clone()).unwrap_or_default(),
        })
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn kind(&self) -> &'static str {
        "etcdv3"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let c = EtcdConfig {
            username: Some("calico".into()),
            password: Some("s3cret-Pw".into()),
            ..Default::default()
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret-Pw") && shown.contains("<redacted>"),
            "{shown}"
        );
        assert_eq!(c.password.unwrap().expose(), "s3cret-Pw");
    }
}
