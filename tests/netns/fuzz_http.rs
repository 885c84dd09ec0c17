//! Hostile and malformed input through the HTTP layer: every route, fed mutations of real
//! Docker requests (tests/fuzz-corpus/requests.json) and random bytes. Nothing may panic or
//! hang; every answer is 200, 400, 404, 413 or 500 with a JSON body, `Err` on failure; a
//! request refused as bad input (4xx) changes nothing in the datastore.
//!
//! Bounded: `FUZZ_CASES` sequences of up to 8 requests (default 3,000: about 12,000 requests).
//! Runs in a private network namespace, so a mutation that happens to reach Join creates
//! its veth there, not on the host. Failures found are kept in
//! tests/fuzz-corpus/regressions.txt and replayed first.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use calico_libnetwork::datastore::local::LocalStore;
use calico_libnetwork::datastore::Datastore;
use calico_libnetwork::driver::{Driver, DriverSettings};
use calico_libnetwork::plugin::{self, AppState};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use tower::ServiceExt;

const METHODS: &[&str] = &[
    "Plugin.Activate",
    "NetworkDriver.GetCapabilities",
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.DeleteNetwork",
    "NetworkDriver.AllocateNetwork",
    "NetworkDriver.FreeNetwork",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.DeleteEndpoint",
    "NetworkDriver.EndpointOperInfo",
    "NetworkDriver.Join",
    "NetworkDriver.Leave",
    "NetworkDriver.DiscoverNew",
    "NetworkDriver.DiscoverDelete",
    "NetworkDriver.ProgramExternalConnectivity",
    "NetworkDriver.RevokeExternalConnectivity",
    "IpamDriver.GetCapabilities",
    "IpamDriver.GetDefaultAddressSpaces",
    "IpamDriver.RequestPool",
    "IpamDriver.ReleasePool",
    "IpamDriver.RequestAddress",
    "IpamDriver.ReleaseAddress",
    "Nope.Method",
    "NetworkDriver.Join/../../etc",
];

const HOSTILE: &[&str] = &[
    "",
    "../../../etc/passwd",
    "\u{0}",
    "caliXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "0.0.0.0/0",
    "::/0",
    "255.255.255.255/33",
    "10.0.0.0/8",
    "fe80::/10",
    "a;rm -rf /",
    "ééé\u{202e}",
    "-",
    "99999999999999999999999",
];

/// One mutated request: (method, body bytes).
#[derive(Clone, Debug)]
enum Mutation {
    Verbatim,
    Truncate(usize),
    FlipByte(usize, u8),
    ReplaceString(usize, usize),
    DropField(usize),
    RandomBytes(Vec<u8>),
    Huge,
}

fn corpus() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fuzz-corpus/requests.json"
    ))
    .expect("read the fuzz corpus");
    serde_json::from_str(&text).expect("corpus is JSON")
}

fn mutate(body: &str, m: &Mutation) -> Vec<u8> {
    match m {
        Mutation::Verbatim => body.as_bytes().to_vec(),
        Mutation::Truncate(n) => body.as_bytes()[..(*n % (body.len() + 1))].to_vec(),
        Mutation::FlipByte(i, b) => {
            let mut v = body.as_bytes().to_vec();
            if !v.is_empty() {
                let i = i % v.len();
                v[i] = *b;
            }
            v
        }
        Mutation::ReplaceString(which, hostile) => {
            let Ok(mut v) = serde_json::from_str::<serde_json::Value>(body) else {
                return body.as_bytes().to_vec();
            };
            let mut strings = Vec::new();
            collect_strings(&mut v, &mut strings);
            if !strings.is_empty() {
                let n = strings.len();
                *strings[which % n] =
                    serde_json::Value::String(HOSTILE[hostile % HOSTILE.len()].into());
            }
            serde_json::to_vec(&v).unwrap()
        }
        Mutation::DropField(which) => {
            let Ok(mut v) = serde_json::from_str::<serde_json::Value>(body) else {
                return body.as_bytes().to_vec();
            };
            if let Some(o) = v.as_object_mut() {
                if !o.is_empty() {
                    let k = o.keys().nth(which % o.len()).unwrap().clone();
                    o.remove(&k);
                }
            }
            serde_json::to_vec(&v).unwrap()
        }
        Mutation::RandomBytes(b) => b.clone(),
        Mutation::Huge => {
            // Just over the plugin's 1 MiB limit.
            let mut v = b"{\"PoolID\":\"".to_vec();
            v.extend(std::iter::repeat_n(b'x', (1 << 20) + 10));
            v.extend(b"\"}");
            v
        }
    }
}

fn collect_strings<'a>(v: &'a mut serde_json::Value, out: &mut Vec<&'a mut serde_json::Value>) {
    match v {
        serde_json::Value::String(_) => out.push(v),
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| collect_strings(x, out)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => Just(Mutation::Verbatim),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipByte(i, b)),
        4 => (any::<usize>(), any::<usize>()).prop_map(|(i, h)| Mutation::ReplaceString(i, h)),
        2 => any::<usize>().prop_map(Mutation::DropField),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Mutation::RandomBytes),
        1 => Just(Mutation::Huge),
    ]
}

async fn dump(store: &dyn Datastore) -> Vec<(String, Vec<u8>)> {
    store
        .list("/calico")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

#[test]
fn fuzz_every_route() {
    if !common::require_root("fuzz_every_route") {
        return;
    }
    let cases: u32 = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    // Joins that the fuzzer reaches create veths in this namespace only.
    common::netns::fresh(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Datastore> =
            Arc::new(LocalStore::open(dir.path().join("store.redb")).unwrap());
        let driver = Arc::new(Driver::new(store.clone(), DriverSettings::new("fuzz-host")));
        rt.block_on(driver.init(&[calico_libnetwork::ipam::default_pool(
            &"10.66.0.0/16".parse().unwrap(),
        )]))
        .unwrap();
        let app = plugin::router(Arc::new(AppState {
            driver,
            timeout: Duration::from_secs(5),
        }));
        let corpus = corpus();
        let strategy = proptest::collection::vec(
            (0..corpus.len(), 0..METHODS.len(), any::<bool>(), mutation()),
            1..8,
        );
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fuzz-corpus/regressions.txt"
            )))),
            ..Config::default()
        });
        let sent = std::cell::Cell::new(0u64);
        let refused = std::cell::Cell::new(0u64);
        let result = runner.run(&strategy, |seq| {
            for (i, m, other_method, mu) in seq {
                let (method, body) = &corpus[i];
                let method = if other_method {
                    METHODS[m]
                } else {
                    method.as_str()
                };
                let bytes = mutate(body, &mu);
                let before = rt.block_on(dump(store.as_ref()));
                let req = axum::http::Request::post(format!("/{method}"))
                    .body(Body::from(bytes.clone()))
                    .unwrap();
                let resp = rt
                    .block_on(async {
                        tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(req))
                            .await
                    })
                    .map_err(|_| TestCaseError::fail(format!("{method} hung")))?
                    .unwrap();
                sent.set(sent.get() + 1);
                let status = resp.status().as_u16();
                let body = rt.block_on(resp.into_body().collect()).unwrap().to_bytes();
                prop_assert!(
                    [200, 400, 404, 413, 500].contains(&status),
                    "{method}: status {status}"
                );
                let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                    TestCaseError::fail(format!(
                        "{method} -> {status}: body not JSON ({e}): {body:?}"
                    ))
                })?;
                if status != 200 {
                    refused.set(refused.get() + 1);
                    prop_assert!(
                        v["Err"].is_string(),
                        "{method} -> {status} without Err: {v}"
                    );
                }
                if (400..500).contains(&status) {
                    let after = rt.block_on(dump(store.as_ref()));
                    prop_assert!(
                        before == after,
                        "{method} refused ({status}: {v}) but the datastore changed; body {:?}",
                        String::from_utf8_lossy(&bytes)
                            .chars()
                            .take(300)
                            .collect::<String>()
                    );
                }
            }
            Ok(())
        });
        eprintln!(
            "fuzz: {} requests sent, {} refused, over {cases} sequences",
            sent.get(),
            refused.get()
        );
        if let Err(e) = result {
            panic!("{e}");
        }
    });
}
