//! The etcd v3 backend, on the `etcd-client` crate.
//!
//! Each trait call is one etcd request, bounded by a deadline so an unreachable etcd gives a
//! clear error instead of a hang. Conditional writes are one `Txn`: the conditions as
//! compares, the writes in the success branch, and a `Get` of every key in the failure
//! branch so the error can say which key failed and why, as Calico's own client does.
//!
//! Every endpoint (a member of the cluster) has a connection of its own, made on first use.
//! A call goes to the member that answered last. When its request provably never reached
//! that member (connection refused, connect timeout, request dropped unsent) or the member
//! refused it for want of a leader, the call moves on to the next member, within the same
//! deadline. A read also moves on after a failure that may have reached the member (no
//! answer in time, connection lost); a write then fails, since it may have been applied. A
//! member that failed is tried after the others for a few seconds.
//!
//! A watch is one gRPC stream of etcd's Watch service per call, opened like a read and with
//! no deadline once open: HTTP/2 keep-alive pings notice a dead connection, and etcd cancels
//! a watch on a member that lost its leader (every request asks for one).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KvClient,
    TxnOp, TxnOpResponse, WatchClient, WatchOptions, WatchResponse,
};
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio::time::Instant;

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
    /// Deadline of each call, over all the members it tries (connecting to one waits a
    /// third of it, at most 1 s).
    pub timeout: Duration,
}

/// The etcd v3 store. Connects lazily, so the plugin can start before etcd is up.
pub struct EtcdStore {
    config: EtcdConfig,
    /// One per endpoint, in the configured order.
    members: Vec<Member>,
    /// The member tried first: the last one that answered.
    preferred: AtomicUsize,
    stats: Stats,
}

/// One endpoint: its connection, once made, and whether it failed a moment ago.
struct Member {
    endpoint: String,
    clients: Mutex<Option<Clients>>,
    /// Until then it is tried after the others.
    failed_until: std::sync::Mutex<Option<Instant>>,
}

impl Member {
    fn backing_off(&self, now: Instant) -> bool {
        let until = self.failed_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|t| t > now)
    }

    fn set_failed_until(&self, until: Option<Instant>) {
        *self.failed_until.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }
}

/// The services used, on one member's connection.
#[derive(Clone)]
struct Clients {
    kv: KvClient,
    watch: WatchClient,
    /// The member's endpoint (for a watch's errors).
    endpoint: Arc<str>,
}

/// How long a member that failed is tried only after the others.
const BACKOFF: Duration = Duration::from_secs(3);
/// Longest wait for a TCP connection to one member (a third of a shorter deadline), so that
/// a member whose host is gone leaves time to try the others.
const MAX_CONNECT: Duration = Duration::from_secs(1);
/// Pause before asking the members again when none had a leader (an election under way).
const ELECTION_PAUSE: Duration = Duration::from_millis(100);
/// etcd's refusal by a member without a leader, with `require_leader` on
/// (`rpctypes.ErrGRPCNoLeader`, code Unavailable): its gRPC interceptor refuses before the
/// request is handled, so even a write may go to another member.
const NO_LEADER: &str = "etcdserver: no leader";

/// Whether a call changes etcd: a write goes to another member only when the first
/// provably did not act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// What a failed request says about its fate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// It never reached the member (refused or timed-out connection, dropped unsent).
    NotSent,
    /// The member refused it unhandled: it has no leader.
    NoLeader,
    /// It may have reached the member and been carried out (no answer in time, connection
    /// lost, etcd's own timeout).
    Unknown,
    /// The member answered it (permission denied, invalid argument, ...): final.
    Answer,
}

/// Sorts an etcd-client error into a [`Failure`].
fn classify(e: &etcd_client::Error) -> Failure {
    let status = match e {
        etcd_client::Error::GRpcStatus(s) => s,
        // etcd-client 0.21 gives this only while building a connection (a bad TLS setting),
        // before any request: requests fail with a GRpcStatus.
        etcd_client::Error::TransportError(_) => return Failure::NotSent,
        _ => return Failure::Answer,
    };
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(err) = next {
        // tonic wraps every failure to connect (refused, unreachable, connect timeout, TLS
        // handshake) in ConnectError and reports it as Unavailable with only the outer text:
        // the type, kept as the Status's source, is what proves nothing was sent.
        if err.is::<tonic::ConnectError>() {
            return Failure::NotSent;
        }
        // hyper's "canceled" means the request was dropped before it was written (the
        // connection closed or was not ready); tonic reports it as Cancelled.
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return Failure::NotSent;
        }
        next = err.source();
    }
    match status.code() {
        tonic::Code::Unavailable if status.message() == NO_LEADER => Failure::NoLeader,
        // A lost connection or keep-alive timeout (Unavailable, Internal, Unknown), etcd's own
        // "request timed out" (Unavailable), a stream reset by either end (Cancelled).
        tonic::Code::Unavailable
        | tonic::Code::Unknown
        | tonic::Code::Internal
        | tonic::Code::Cancelled
        | tonic::Code::DeadlineExceeded => Failure::Unknown,
        _ => Failure::Answer,
    }
}

impl EtcdStore {
    /// Builds the store; the first request connects.
    pub fn new(config: EtcdConfig) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(Error::Config("no etcd endpoint configured".into()));
        }
        let members = config
            .endpoints
            .iter()
            .map(|e| Member {
                endpoint: e.clone(),
                clients: Mutex::new(None),
                failed_until: std::sync::Mutex::new(None),
            })
            .collect();
        Ok(EtcdStore {
            config,
            members,
            preferred: AtomicUsize::new(0),
            stats: Stats::default(),
        })
    }

    /// The endpoint calls go to first: the last one that answered (the first configured
    /// until one has).
    pub fn current_endpoint(&self) -> &str {
        &self.members[self.preferred.load(Ordering::Relaxed)].endpoint
    }

    fn where_(&self) -> String {
        self.config.endpoints.join(",")
    }

    /// How long connecting to one member may take.
    fn connect_timeout(&self) -> Duration {
        (self.config.timeout / 3).min(MAX_CONNECT)
    }

    fn options(&self) -> Result<ConnectOptions> {
        let c = &self.config;
        // No per-request timeout of tonic's: the call's own deadline bounds all its attempts
        // (and tonic's would end them as "Timeout expired", a Cancelled status).
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout())
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

    /// Member `i`'s services, connecting first if need be. The outer error is ours (the
    /// configuration), the inner one etcd's.
    async fn clients(&self, i: usize) -> Result<std::result::Result<Clients, etcd_client::Error>> {
        let m = &self.members[i];
        let mut guard = m.clients.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(Ok(c.clone()));
        }
        let opts = self.options()?;
        // One endpoint per client: etcd-client balances a client's endpoints in one tonic
        // channel, which keeps sending a share of the calls to a member that is down.
        // Without credentials this only sets the connection up (the first request makes
        // it); with them it asks this member for a token.
        let client = match Client::connect([m.endpoint.as_str()], Some(opts)).await {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        // One value (a large block) may exceed tonic's default 4 MiB; lists are paged.
        let clients = Clients {
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            // One revision's events come in one message (a transaction of large values).
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            endpoint: m.endpoint.as_str().into(),
        };
        *guard = Some(clients.clone());
        Ok(Ok(clients))
    }

    /// The members in the order to try them: from the preferred one on, round the list,
    /// those that failed a moment ago last.
    fn order(&self) -> Vec<usize> {
        let n = self.members.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let now = Instant::now();
        let (mut order, later): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|k| (first + k) % n)
            .partition(|&i| !self.members[i].backing_off(now));
        order.extend(later);
        order
    }

    fn unavailable(&self, op: &str, e: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!(
            "{op} etcd at {} (deadline {:?}): {}",
            self.where_(),
            self.config.timeout,
            redact(&e.to_string())
        ))
    }

    /// The error of a call that no member answered: the last failure of each member tried
    /// (named when there are several).
    fn failed(&self, op: &str, failures: &[(usize, String)]) -> Error {
        if self.members.len() == 1 {
            let cause = failures.last().map_or("no answer", |(_, c)| c.as_str());
            return self.unavailable(op, cause);
        }
        let mut parts: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        for (i, cause) in failures.iter().rev() {
            if !seen.contains(i) {
                seen.push(*i);
                parts.push(format!("{}: {cause}", self.members[*i].endpoint));
            }
        }
        parts.reverse();
        if parts.is_empty() {
            parts.push("no answer".into());
        }
        self.unavailable(op, parts.join("; "))
    }

    /// Member `i` answered: it is the one to try first from now on.
    fn answered(&self, i: usize, op: &str, failures: &[(usize, String)]) {
        self.members[i].set_failed_until(None);
        let before = self.preferred.swap(i, Ordering::Relaxed);
        if before != i {
            let causes: Vec<String> = failures
                .iter()
                .map(|(j, c)| format!("{}: {c}", self.members[*j].endpoint))
                .collect();
            tracing::warn!(
                op,
                from = %self.members[before].endpoint,
                to = %self.members[i].endpoint,
                failures = %redact(&causes.join("; ")),
                "etcd: now using another member"
            );
        }
    }

    /// Runs one request (`attempt`, given a member's services) on the members in turn
    /// until one answers, within the call's deadline; see the module documentation for
    /// which failures move on to the next member.
    async fn run<T, F, Fut>(&self, kind: Kind, op: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut(Clients) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let timeout = self.config.timeout;
        let deadline = Instant::now() + timeout;
        let mut failures: Vec<(usize, String)> = Vec::new();
        loop {
            let mut no_leader = false;
            let order = self.order();
            for (n, &i) in order.iter().enumerate() {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                // A silent member gets half the deadline when others are left to try (a
                // read can still go to them); the last one gets what remains.
                let cap = if n + 1 < order.len() {
                    deadline.min(now + timeout / 2)
                } else {
                    deadline
                };
                let (failure, cause) = match tokio::time::timeout_at(cap, self.clients(i)).await {
                    Ok(Ok(Ok(clients))) => {
                        let limit = if kind == Kind::Read { cap } else { deadline };
                        match tokio::time::timeout_at(limit, attempt(clients)).await {
                            Ok(Ok(v)) => {
                                self.answered(i, op, &failures);
                                return Ok(v);
                            }
                            Ok(Err(e)) => (classify(&e), redact(&e.to_string())),
                            Err(_) => (Failure::Unknown, "no answer".to_string()),
                        }
                    }
                    // Connecting (with credentials: asking for a token) sent nothing of this
                    // call: any failure moves on, but an answer (a refused password).
                    Ok(Ok(Err(e))) => match classify(&e) {
                        Failure::Unknown => (Failure::NotSent, redact(&e.to_string())),
                        failure => (failure, redact(&e.to_string())),
                    },
                    Ok(Err(ours)) => return Err(ours),
                    Err(_) => (Failure::NotSent, "no answer while connecting".to_string()),
                };
                if failure == Failure::Answer {
                    return Err(self.unavailable(op, cause));
                }
                self.members[i].set_failed_until(Some(Instant::now() + BACKOFF));
                failures.push((i, cause));
                match failure {
                    Failure::NoLeader => no_leader = true,
                    Failure::Unknown if kind == Kind::Write => {
                        if let Some((_, cause)) = failures.last_mut() {
                            cause.push_str(" (it may have been carried out: not sent again)");
                        }
                        return Err(self.failed(op, &failures));
                    }
                    _ => {}
                }
            }
            // Every member lacked a leader: an election, which may end within the deadline.
            if !no_leader || Instant::now() + ELECTION_PAUSE >= deadline {
                return Err(self.failed(op, &failures));
            }
            tokio::time::sleep(ELECTION_PAUSE).await;
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
        let resp = self
            .run(Kind::Read, "get", |mut c| async move {
                c.kv.get(key, None).await
            })
            .await?;
        resp.kvs().first().map(to_kv).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        Ok(self.list_with_revision(prefix).await?.kvs)
    }

    async fn list_with_revision(&self, prefix: &str) -> Result<Listing> {
        let prefix = dir_prefix(prefix);
        let end = prefix_end(&prefix);
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
            let resp = self
                .run(Kind::Read, "list", |mut c| {
                    let (from, opts) = (from.clone(), opts.clone());
                    async move { c.kv.get(from, Some(opts)).await }
                })
                .await?;
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
        // Opened like a read: on the next member when one fails.
        let (stream, first, endpoint) = self
            .run(Kind::Read, "watch", |mut c| {
                let (prefix, opts) = (prefix.clone(), opts.clone());
                async move {
                    let mut stream = c.watch.watch(prefix, Some(opts)).await?;
                    let first = stream.message().await?;
                    Ok((stream, first, c.endpoint))
                }
            })
            .await?;
        // etcd confirms the watch first; a compacted start revision comes after that.
        match first {
            Some(resp) if resp.created() => {
                watch_events(&prefix, after, &resp)?;
            }
            Some(_) => return Err(self.unavailable("watch", "no confirmation from etcd")),
            None => return Err(self.unavailable("watch", "etcd closed the stream")),
        }
        let broken = move |prefix: &str, e: &dyn std::fmt::Display| {
            Error::Unavailable(format!(
                "watch {prefix} on etcd at {endpoint}: {}",
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
        let txn = etcd_client::Txn::new().and_then(ops);
        let resp = self
            .run(Kind::Read, "get", |mut c| {
                let txn = txn.clone();
                async move { c.kv.txn(txn).await }
            })
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
        let txn = etcd_client::Txn::new().and_then(ops);
        let resp = self
            .run(Kind::Read, "list", |mut c| {
                let txn = txn.clone();
                async move { c.kv.txn(txn).await }
            })
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
        // Sent again elsewhere only when it provably never reached a member.
        let resp = self
            .run(Kind::Write, "write", |mut c| {
                let txn = txn.clone();
                async move { c.kv.txn(txn).await }
            })
            .await?;
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

    fn status(s: tonic::Status) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(s)
    }

    #[test]
    fn a_failure_to_connect_proves_nothing_was_sent() {
        // As tonic builds it: the connect error in the Status's source chain.
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let s = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(classify(&status(s)), Failure::NotSent);
    }

    #[test]
    fn no_leader_is_a_refusal_and_other_unavailables_are_unknown() {
        let no_leader = tonic::Status::unavailable("etcdserver: no leader");
        assert_eq!(classify(&status(no_leader)), Failure::NoLeader);
        for s in [
            tonic::Status::unavailable("etcdserver: request timed out"),
            tonic::Status::unavailable("error trying to connect: connection closed"),
            tonic::Status::cancelled("Timeout expired"),
            tonic::Status::unknown("h2 protocol error"),
        ] {
            assert_eq!(classify(&status(s)), Failure::Unknown);
        }
    }

    #[test]
    fn answers_are_final() {
        for s in [
            tonic::Status::permission_denied("etcdserver: permission denied"),
            tonic::Status::invalid_argument("etcdserver: authentication failed"),
            tonic::Status::resource_exhausted("etcdserver: too many requests"),
        ] {
            assert_eq!(classify(&status(s)), Failure::Answer);
        }
        let other = etcd_client::Error::WatchError("closed".into());
        assert_eq!(classify(&other), Failure::Answer);
    }

    #[test]
    fn members_are_tried_from_the_preferred_one_on_those_that_failed_last() {
        let store = EtcdStore::new(EtcdConfig {
            endpoints: vec![
                "http://a:2379".into(),
                "http://b:2379".into(),
                "http://c:2379".into(),
            ],
            timeout: Duration::from_secs(5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(store.order(), vec![0, 1, 2]);
        assert_eq!(store.connect_timeout(), Duration::from_secs(1));
        store.preferred.store(1, Ordering::Relaxed);
        assert_eq!(store.order(), vec![1, 2, 0]);
        store.members[2].set_failed_until(Some(Instant::now() + BACKOFF));
        assert_eq!(store.order(), vec![1, 0, 2]);
        store.members[2].set_failed_until(Some(Instant::now()));
        assert_eq!(store.order(), vec![1, 2, 0]);
        assert_eq!(store.current_endpoint(), "http://b:2379");
    }

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
