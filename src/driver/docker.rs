//! A small client of the Docker Engine API (over `bollard`), for the background tasks that
//! learn network names and container labels.
//!
//! **Never call this from a request handler.** dockerd waits for our answer to a plugin call
//! while holding its own locks; a plugin that calls back into the Docker API from inside a
//! handler can deadlock dockerd (the Go plugin did, at start-up: libnetwork-plugin #49). Every
//! call here is bounded by a short timeout, and the connection is opened lazily (dockerd may
//! start after us, and its socket may not exist yet).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Error, Result};

/// Deadline of each Docker API call (and of connecting).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Prefix of the container labels copied onto WorkloadEndpoints (removed on the way).
pub const LABEL_PREFIX: &str = "org.projectcalico.label.";

fn docker_err(what: &str, e: bollard::errors::Error) -> Error {
    Error::Docker(format!("{what}: {e}"))
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The Docker API at one address. Cheap to create: nothing is opened until the first call.
pub struct DockerApi {
    host: String,
    timeout: Duration,
    client: tokio::sync::Mutex<Option<bollard::Docker>>,
}

impl std::fmt::Debug for DockerApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerApi")
            .field("host", &self.host)
            .finish()
    }
}

impl DockerApi {
    /// A client of the API at `host` (`unix:///path`, `tcp://host:port` or `http://host:port`,
    /// checked by the configuration); calls time out after `timeout`.
    pub fn new(host: &str, timeout: Duration) -> Self {
        DockerApi {
            host: host.to_string(),
            timeout,
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// The address.
    pub fn host(&self) -> &str {
        &self.host
    }

    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = std::result::Result<T, bollard::errors::Error>>,
    ) -> Result<std::result::Result<T, bollard::errors::Error>> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("docker API {what}"),
                after: self.timeout,
            })
    }

    /// The connected client; connects and agrees on the API version on first use (Docker
    /// 20.10 speaks at most API 1.41, Docker 29 at least 1.44).
    async fn client(&self) -> Result<bollard::Docker> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let secs = self.timeout.as_secs().max(1);
        let c = if self.host.starts_with("unix://") {
            bollard::Docker::connect_with_unix(&self.host, secs, bollard::API_DEFAULT_VERSION)
        } else {
            let addr = self.host.replacen("tcp://", "http://", 1);
            bollard::Docker::connect_with_http(&addr, secs, bollard::API_DEFAULT_VERSION)
        }
        .map_err(|e| docker_err(&format!("connect {}", self.host), e))?;
        let c = self
            .bounded("version", c.negotiate_version())
            .await?
            .map_err(|e| docker_err(&format!("version at {}", self.host), e))?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Forgets the connection after a failure, so the next call connects afresh (dockerd
    /// restarted, perhaps as another version).
    async fn reset(&self) {
        *self.client.lock().await = None;
    }

    /// Runs one API call under the deadline: `None` for Docker's 404; after any other
    /// failure the connection is forgotten, so the next call connects afresh.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = std::result::Result<T, bollard::errors::Error>>,
    ) -> Result<Option<T>> {
        let failed = match self.bounded(what, fut).await {
            Ok(Ok(v)) => return Ok(Some(v)),
            Ok(Err(e)) if is_not_found(&e) => return Ok(None),
            Ok(Err(e)) => docker_err(what, e),
            Err(e) => e,
        };
        self.reset().await;
        Err(failed)
    }

    async fn inspect_network(&self, id: &str) -> Result<Option<bollard::models::NetworkInspect>> {
        let c = self.client().await?;
        self.call(
            &format!("inspect network {id}"),
            c.inspect_network(id, None),
        )
        .await
    }

    /// The name of network `id`, `None` while Docker does not know it (yet).
    pub async fn network_name(&self, id: &str) -> Result<Option<String>> {
        let Some(n) = self.inspect_network(id).await? else {
            return Ok(None);
        };
        // Inspect also matches names and ID prefixes: only the network itself counts.
        if n.id.as_deref() != Some(id) {
            return Ok(None);
        }
        Ok(n.name.filter(|s| !s.is_empty()))
    }

    /// The container holding endpoint `endpoint_id` on network `network_id`, once Docker
    /// lists it there (after Join).
    pub async fn endpoint_container(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<Option<String>> {
        let Some(n) = self.inspect_network(network_id).await? else {
            return Ok(None);
        };
        Ok(container_of_endpoint(
            n.containers
                .unwrap_or_default()
                .iter()
                .map(|(k, v)| (k.as_str(), v.endpoint_id.as_deref().unwrap_or_default())),
            endpoint_id,
        ))
    }

    /// The labels of container `id`; `None` if Docker does not know it.
    pub async fn container_labels(&self, id: &str) -> Result<Option<BTreeMap<String, String>>> {
        let c = self.client().await?;
        let ctr = self
            .call(
                &format!("inspect container {id}"),
                c.inspect_container(id, None),
            )
            .await?;
        Ok(ctr.map(|ctr| {
            ctr.config
                .and_then(|c| c.labels)
                .unwrap_or_default()
                .into_iter()
                .collect()
        }))
    }
}

/// Docker's container events as the label tasks see them: a counter that moves at every
/// container start and network connect, and whether the event stream is open. While it is,
/// a label task waits for the next event instead of polling (see
/// `super::profiles::Background::label_endpoint`).
#[derive(Debug)]
pub struct DockerEvents {
    seen: tokio::sync::watch::Sender<u64>,
    open: std::sync::atomic::AtomicBool,
}

impl Default for DockerEvents {
    fn default() -> Self {
        DockerEvents {
            seen: tokio::sync::watch::channel(0).0,
            open: Default::default(),
        }
    }
}

impl DockerEvents {
    /// A receiver that sees each later event.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.seen.subscribe()
    }

    /// Whether the event stream is open (else: poll).
    pub fn is_open(&self) -> bool {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
    }

    fn event(&self) {
        self.seen.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl DockerApi {
    /// Follows Docker's events (container start, network connect) into `events` for as long
    /// as the process runs: reconnects after a failure (1 s, doubling up to 10 s), and marks
    /// the stream closed meanwhile, so that waiting tasks poll.
    pub async fn follow_events(&self, events: &DockerEvents) {
        use futures::StreamExt;
        let mut delay = Duration::from_secs(1);
        loop {
            let opened = async {
                let c = self.client().await?;
                // The stream itself has no deadline; a ping proves dockerd answers first.
                self.call("ping", c.ping()).await?;
                Ok::<_, Error>(c)
            }
            .await;
            match opened {
                Ok(c) => {
                    let filters = std::collections::HashMap::from([
                        (
                            "type".to_string(),
                            vec!["container".to_string(), "network".to_string()],
                        ),
                        (
                            "event".to_string(),
                            vec!["start".to_string(), "connect".to_string()],
                        ),
                    ]);
                    let mut stream = c.events(Some(bollard::query_parameters::EventsOptions {
                        filters: Some(filters),
                        ..Default::default()
                    }));
                    events.set_open(true);
                    // Something may have started while the stream was down.
                    events.event();
                    tracing::debug!(host = %self.host, "following Docker's events");
                    loop {
                        match stream.next().await {
                            Some(Ok(_)) => {
                                events.event();
                                delay = Duration::from_secs(1);
                            }
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "Docker event stream failed; polling meanwhile");
                                break;
                            }
                            None => {
                                tracing::debug!("Docker event stream ended; polling meanwhile");
                                break;
                            }
                        }
                    }
                    events.set_open(false);
                    self.reset().await;
                }
                Err(e) => {
                    events.set_open(false);
                    tracing::debug!(error = %e, retry_in = ?delay, "Docker event stream not open; polling meanwhile");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

impl DockerApi {
    /// Every endpoint ID Docker holds, on any of its networks (the containers attached to
    /// each, per network inspect). For the start-up reconciliation: an endpoint absent here
    /// is one Docker no longer knows. All networks, not only ours: a wider set only makes
    /// the reconciliation keep more.
    pub async fn endpoint_ids(&self) -> Result<std::collections::HashSet<String>> {
        Ok(self.view().await?.endpoints)
    }

    /// Every endpoint Docker knows, in any network and of any driver, with the addresses it
    /// gave them: the reconciliation never releases an address Docker has given to a
    /// container (a network of another driver may use Calico IPAM: `-d macvlan
    /// --ipam-driver calico`, whose endpoints have no WorkloadEndpoint).
    pub async fn view(&self) -> Result<DockerView> {
        let c = self.client().await?;
        let list = c.list_networks(None::<bollard::query_parameters::ListNetworksOptions>);
        let nets = self.call("list networks", list).await?.unwrap_or_default();
        let mut out = DockerView::default();
        for n in nets {
            let Some(id) = n.id else { continue };
            if let Some(n) = self.inspect_network(&id).await? {
                for (_, ep) in n.containers.unwrap_or_default() {
                    if let Some(e) = ep.endpoint_id.filter(|e| !e.is_empty()) {
                        out.endpoints.insert(e);
                    }
                    for cidr in [ep.ipv4_address, ep.ipv6_address].into_iter().flatten() {
                        let ip = cidr.split('/').next().unwrap_or_default();
                        if let Ok(ip) = ip.parse() {
                            out.addresses.insert(ip);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// What Docker knows of its endpoints, from [`DockerApi::view`].
#[derive(Clone, Debug, Default)]
pub struct DockerView {
    /// Endpoint IDs.
    pub endpoints: std::collections::HashSet<String>,
    /// Their addresses.
    pub addresses: std::collections::HashSet<std::net::IpAddr>,
}

/// From a network's `Containers` map (container ID → endpoint ID), the container holding
/// `endpoint_id`. Keys `ep-…` are endpoints without a container (load balancers).
pub fn container_of_endpoint<'a>(
    containers: impl IntoIterator<Item = (&'a str, &'a str)>,
    endpoint_id: &str,
) -> Option<String> {
    containers
        .into_iter()
        .find(|(k, ep)| !k.starts_with("ep-") && *ep == endpoint_id)
        .map(|(k, _)| k.to_string())
}

/// A Kubernetes-style label name: 1–63 characters of `[A-Za-z0-9-_.]`, starting and ending
/// alphanumeric.
fn label_name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label key: `name` or `prefix/name`, the prefix a DNS subdomain of at most 253
/// characters.
pub fn label_key_ok(key: &str) -> bool {
    match key.split_once('/') {
        None => label_name_ok(key),
        Some((prefix, name)) => {
            label_name_ok(name)
                && prefix.len() <= 253
                && crate::model::validate_resource_name(prefix).is_ok()
        }
    }
}

/// A label value: empty, or a valid label name.
pub fn label_value_ok(value: &str) -> bool {
    value.is_empty() || label_name_ok(value)
}

/// The Calico labels of a container: those prefixed [`LABEL_PREFIX`], prefix removed. Keys or
/// values Calico would not accept, and Calico's own `projectcalico.org/` keys, are left out
/// (returned second, for a warning).
pub fn calico_labels(labels: &BTreeMap<String, String>) -> (BTreeMap<String, String>, Vec<String>) {
    let mut keep = BTreeMap::new();
    let mut refused = Vec::new();
    for (k, v) in labels {
        let Some(key) = k.strip_prefix(LABEL_PREFIX) else {
            continue;
        };
        if label_key_ok(key) && label_value_ok(v) && !key.starts_with("projectcalico.org/") {
            keep.insert(key.to_string(), v.clone());
        } else {
            refused.push(k.clone());
        }
    }
    (keep, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With no Docker API at the address (a socket file that does not exist), the error is a
    /// Docker error, never taken for a datastore outage.
    #[tokio::test]
    async fn an_unreachable_docker_api_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let host = format!("unix://{}", dir.path().join("docker.sock").display());
        let api = DockerApi::new(&host, Duration::from_secs(2));
        let e = api.endpoint_ids().await.unwrap_err();
        assert!(e.is_docker(), "{e}");
        assert!(!e.is_unavailable(), "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with("docker API unavailable: "), "{msg}");
        assert!(!msg.contains("datastore"), "{msg}");
    }

    #[test]
    fn endpoint_owner() {
        let m = [("ep-abc", "e1"), ("c1", "e2"), ("c2", "e1")];
        assert_eq!(container_of_endpoint(m, "e1").as_deref(), Some("c2"));
        assert_eq!(container_of_endpoint(m, "e3"), None);
    }

    #[test]
    fn labels_filtered() {
        let long = "x".repeat(64);
        let src: BTreeMap<String, String> = [
            ("org.projectcalico.label.role", "db"),
            ("org.projectcalico.label.example.com/tier", "back-end"),
            ("org.projectcalico.label.empty", ""),
            ("other", "x"),
            ("org.projectcalico.label.bad key", "v"),
            ("org.projectcalico.label.bad-value", "a b"),
            (
                "org.projectcalico.label.projectcalico.org/namespace",
                "evil",
            ),
            ("org.projectcalico.label.", "v"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([(format!("{LABEL_PREFIX}{long}"), "v".to_string())])
        .collect();
        let (keep, refused) = calico_labels(&src);
        assert_eq!(
            keep,
            BTreeMap::from([
                ("empty".to_string(), String::new()),
                ("example.com/tier".to_string(), "back-end".to_string()),
                ("role".to_string(), "db".to_string()),
            ])
        );
        assert_eq!(refused.len(), 5, "{refused:?}");
    }
}
