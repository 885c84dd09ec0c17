//! Prometheus metrics, served on a TCP address of their own when
//! `CALICO_LIBNETWORK_METRICS_ADDR` is set (off by default: recording is then a no-op).
//!
//! - `calico_libnetwork_requests_total{call,outcome}`: Docker requests per call and outcome
//!   (`ok`, `error`, `bad-request`).
//! - `calico_libnetwork_request_duration_seconds{call}`: latency histogram per call.
//! - `calico_libnetwork_addresses_allocated_total`, `..._addresses_released_total`: IPAM
//!   addresses handed to and given back by Docker.
//! - `calico_libnetwork_datastore_round_trips_total`, `..._datastore_conflicts_total` (CAS
//!   writes refused), `..._datastore_reads_total`, `..._datastore_writes_total`,
//!   `..._datastore_deletes_total`: the datastore's counters, read at each scrape.
//! - `calico_libnetwork_background_restarts_total{task}`: background loops restarted after a
//!   panic (a bug: each restart is also logged at error level).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::datastore::Datastore;
use crate::error::{Error, Result};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallOutcome {
    call: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Task {
    task: String,
}

/// The metrics of this process.
pub struct Metrics {
    registry: Registry,
    requests: Family<CallOutcome, Counter>,
    latency: Family<Call, Histogram>,
    allocated: Counter,
    released: Counter,
    restarts: Family<Task, Counter>,
}

/// The datastore's counters, read at each scrape.
struct StoreStats(Arc<dyn Datastore>);

impl std::fmt::Debug for StoreStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreStats")
    }
}

impl Collector for StoreStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        let s = self.0.stats().snapshot();
        for (name, help, v) in [
            (
                "calico_libnetwork_datastore_round_trips",
                "Calls that went to the datastore (a transaction counts once).",
                s.round_trips,
            ),
            (
                "calico_libnetwork_datastore_conflicts",
                "Conditional (compare-and-swap) writes refused because the key had changed.",
                s.conflicts,
            ),
            (
                "calico_libnetwork_datastore_reads",
                "Gets and lists.",
                s.reads,
            ),
            (
                "calico_libnetwork_datastore_writes",
                "Keys created or replaced.",
                s.writes,
            ),
            (
                "calico_libnetwork_datastore_deletes",
                "Keys deleted.",
                s.deletes,
            ),
        ] {
            let c = ConstCounter::new(v);
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        Ok(())
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

impl Metrics {
    fn new(store: Arc<dyn Datastore>) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<CallOutcome, Counter>::default();
        let latency = Family::<Call, Histogram>::new_with_constructor(|| {
            // 0.5 ms .. ~16 s.
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let allocated = Counter::default();
        let released = Counter::default();
        registry.register(
            "calico_libnetwork_requests",
            "Docker plugin requests, per call and outcome.",
            requests.clone(),
        );
        registry.register(
            "calico_libnetwork_request_duration_seconds",
            "Time to answer Docker plugin requests, per call.",
            latency.clone(),
        );
        registry.register(
            "calico_libnetwork_addresses_allocated",
            "Addresses handed to Docker (IpamDriver.RequestAddress answered).",
            allocated.clone(),
        );
        registry.register(
            "calico_libnetwork_addresses_released",
            "Addresses given back by Docker (IpamDriver.ReleaseAddress answered).",
            released.clone(),
        );
        let restarts = Family::<Task, Counter>::default();
        registry.register(
            "calico_libnetwork_background_restarts",
            "Background tasks (reconciliation, firewall keeper) restarted after a panic.",
            restarts.clone(),
        );
        registry.register_collector(Box::new(StoreStats(store)));
        Metrics {
            registry,
            requests,
            latency,
            allocated,
            released,
            restarts,
        }
    }

    /// The metrics in the Prometheus/OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Turns recording on (idempotent: the first store wins) and returns the metrics.
pub fn install(store: Arc<dyn Datastore>) -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(store))
}

/// Records one answered Docker request (no-op unless [`install`]ed).
pub fn request(call: &str, outcome: &str, elapsed: Duration) {
    let Some(m) = METRICS.get() else { return };
    m.requests
        .get_or_create(&CallOutcome {
            call: call.to_string(),
            outcome: outcome.to_string(),
        })
        .inc();
    m.latency
        .get_or_create(&Call {
            call: call.to_string(),
        })
        .observe(elapsed.as_secs_f64());
    if outcome == "ok" {
        match call {
            "IpamDriver.RequestAddress" => {
                m.allocated.inc();
            }
            "IpamDriver.ReleaseAddress" => {
                m.released.inc();
            }
            _ => {}
        }
    }
}

/// Records a background task restarted after a panic (no-op unless [`install`]ed).
pub fn background_restart(task: &str) {
    if let Some(m) = METRICS.get() {
        m.restarts
            .get_or_create(&Task {
                task: task.to_string(),
            })
            .inc();
    }
}

/// Binds `addr` and serves `GET /metrics` there from a task of its own; returns the bound
/// address (useful with port 0).
pub async fn serve(addr: SocketAddr, store: Arc<dyn Datastore>) -> Result<SocketAddr> {
    let metrics = install(store);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("bind metrics address {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("metrics address", e))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                metrics.render(),
            )
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}
