//! The driver's order of kernel operations, checked without root against the recording
//! dataplane ([`crate::dataplane::fake::Recording`]) over a real embedded store: what Docker's
//! CreateEndpoint → Join → Leave → DeleteEndpoint sequence does to links, and what a failure
//! half-way leaves behind. The same sequence runs against the kernel and dockerd in the
//! integration suites.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Driver, DriverSettings, EndpointSpec, NetworkSpec};
use crate::dataplane::fake::{Call, Recording};
use crate::datastore::local::LocalStore;
use crate::datastore::Datastore;
use crate::model::keys;
use crate::model::libnetwork::WEP_NAMESPACE;

struct Env {
    _dir: tempfile::TempDir,
    store: Arc<dyn Datastore>,
    dp: Arc<Recording>,
    driver: Arc<Driver>,
    net: String,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Datastore> = Arc::new(LocalStore::open(dir.path().join("s.redb")).unwrap());
    let dp = Arc::new(Recording::default());
    let driver = Arc::new(Driver::with_dataplane(
        store.clone(),
        DriverSettings::new("seq-host"),
        dp.clone(),
    ));
    driver
        .init(&[crate::ipam::default_pool(&"10.11.0.0/24".parse().unwrap())])
        .await
        .unwrap();
    let net = "ab".repeat(32);
    driver
        .create_network(NetworkSpec {
            network_id: net.clone(),
            ipv4_data: vec![("CalicoPoolIPv4".into(), "0.0.0.0/0".into())],
            ..Default::default()
        })
        .await
        .unwrap();
    Env {
        _dir: dir,
        store,
        dp,
        driver,
        net,
    }
}

impl Env {
    /// An address and an endpoint `ep` with it, as Docker asks for them.
    async fn endpoint(&self, ep: &str) {
        let ip = self
            .driver
            .request_address("CalicoPoolIPv4", None, &BTreeMap::new())
            .await
            .unwrap();
        self.driver
            .create_endpoint(EndpointSpec {
                network_id: self.net.clone(),
                endpoint_id: ep.to_string(),
                ipv4: Some(ip),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn wep_count(&self) -> usize {
        self.store
            .list(&keys::resource_prefix(
                keys::PLURAL_WORKLOAD_ENDPOINTS,
                Some(WEP_NAMESPACE),
            ))
            .await
            .unwrap()
            .len()
    }

    /// Waits for Leave's teardown, which runs after Leave has answered.
    async fn settle(&self, calls: usize) {
        for _ in 0..200 {
            if self.dp.calls().len() >= calls {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn ep_id(c: char) -> String {
    c.to_string().repeat(64)
}

#[tokio::test]
async fn create_join_leave_delete_makes_and_removes_one_veth() {
    let env = env().await;
    let ep = ep_id('c');
    env.endpoint(&ep).await;
    assert!(env.dp.calls().is_empty(), "CreateEndpoint touches no link");
    assert_eq!(env.wep_count().await, 1);

    let join = env.driver.join(&env.net, &ep, "sandbox-1").await.unwrap();
    assert_eq!(join.src_name, "tempccccccccccc");
    assert_eq!(join.gateway, Some("169.254.1.1".parse().unwrap()));
    assert_eq!(env.dp.links(), ["caliccccccccccc", "tempccccccccccc"]);

    env.driver.leave(&env.net, &ep).await.unwrap();
    env.settle(2).await;
    env.driver.delete_endpoint(&env.net, &ep).await.unwrap();
    assert_eq!(
        env.dp.calls(),
        [
            Call::Setup("caliccccccccccc".into()),
            Call::Teardown("caliccccccccccc".into()),
            Call::Teardown("caliccccccccccc".into()),
        ]
    );
    assert!(env.dp.links().iter().all(|l| !l.starts_with("cali")));
    assert_eq!(env.wep_count().await, 0);
    // Idempotent: Docker may send DeleteEndpoint again.
    env.driver.delete_endpoint(&env.net, &ep).await.unwrap();
}

#[tokio::test]
async fn a_failed_veth_set_up_fails_join_naming_the_endpoint() {
    let env = env().await;
    let ep = ep_id('d');
    env.endpoint(&ep).await;
    env.dp.fail_setup_of("caliddddddddddd");
    let e = env
        .driver
        .join(&env.net, &ep, "sandbox-1")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("join endpoint dddddddddddd: "), "{e}");
    assert!(e.contains("injected failure"), "{e}");
    assert!(env.dp.links().is_empty(), "{:?}", env.dp.links());
    // Docker then deletes the endpoint: the record goes, the (absent) veth is asked again.
    env.driver.delete_endpoint(&env.net, &ep).await.unwrap();
    assert_eq!(env.wep_count().await, 0);
}

#[tokio::test]
async fn delete_endpoint_carries_on_past_a_failed_veth_removal_and_says_so() {
    let env = env().await;
    let ep = ep_id('e');
    env.endpoint(&ep).await;
    env.driver.join(&env.net, &ep, "sandbox-1").await.unwrap();
    env.dp.fail_teardown_of("calieeeeeeeeeee");
    let e = env
        .driver
        .delete_endpoint(&env.net, &ep)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("delete veth calieeeeeeeeeee: delete link calieeeeeeeeeee"),
        "{e}"
    );
    // The steps before and after the failure still ran.
    assert_eq!(env.wep_count().await, 0, "the WorkloadEndpoint is deleted");
    assert!(
        env.driver.endpoint_cache(&ep).await.is_err(),
        "the endpoint is forgotten"
    );
}

#[tokio::test]
async fn docker_own_network_options_are_accepted_others_refused_by_name() {
    let env = env().await;
    let create = |generic: serde_json::Value, id: char| {
        let driver = env.driver.clone();
        async move {
            let mut options = BTreeMap::new();
            options.insert("com.docker.network.generic".to_string(), generic);
            driver
                .create_network(NetworkSpec {
                    network_id: id.to_string().repeat(64),
                    options,
                    ipv4_data: vec![("CalicoPoolIPv4".into(), "0.0.0.0/0".into())],
                    ..Default::default()
                })
                .await
        }
    };
    let own = serde_json::json!({
        "com.docker.network.enable_ipv4": "true",
        "com.docker.network.enable_ipv6": "false",
    });
    create(own, '1').await.unwrap();
    let mixed = serde_json::json!({"com.docker.network.enable_ipv6": "true", "mtu": "1400"});
    let e = create(mixed, '2').await.unwrap_err().to_string();
    assert_eq!(
        e,
        "Calico driver does not support the flag mtu (-o/--opt; Compose: driver_opts)."
    );
    assert!(env
        .store
        .get(&keys::network_key(&"2".repeat(64)))
        .await
        .unwrap()
        .is_none());
}

/// Join records the container's sandbox on the WorkloadEndpoint (an annotation), so the reach
/// a container on several networks has survives a plugin restart; a Join again (Docker
/// retrying) writes nothing new.
#[tokio::test]
async fn join_records_the_sandbox_on_the_workload_endpoint() {
    let env = env().await;
    let ep = ep_id('e');
    env.endpoint(&ep).await;
    let name =
        crate::model::workload_endpoint_name("seq-host", "libnetwork", "libnetwork", &ep).unwrap();
    let key = keys::workload_endpoint_key(WEP_NAMESPACE, &name);
    let before = env.store.get(&key).await.unwrap().unwrap();
    env.driver
        .join(&env.net, &ep, "/var/run/docker/netns/5b1c")
        .await
        .unwrap();
    let after = env.store.get(&key).await.unwrap().unwrap();
    let wep: serde_json::Value = serde_json::from_slice(&after.value).unwrap();
    assert_eq!(
        wep["metadata"]["annotations"][crate::model::libnetwork::SANDBOX_ANNOTATION],
        "/var/run/docker/netns/5b1c",
        "{wep}"
    );
    assert_ne!(before.revision, after.revision);
    env.driver
        .join(&env.net, &ep, "/var/run/docker/netns/5b1c")
        .await
        .unwrap();
    let again = env.store.get(&key).await.unwrap().unwrap();
    assert_eq!(
        again.revision, after.revision,
        "an unchanged sandbox is not written again"
    );
    env.driver.leave(&env.net, &ep).await.unwrap();
    env.driver.delete_endpoint(&env.net, &ep).await.unwrap();
}

/// Docker retrying a CreateEndpoint rewrites the WorkloadEndpoint but keeps its `uid` and
/// `creationTimestamp`, as Calico's clientv3 does on every update (libcalico-go's
/// `resources.go` update path never sets them).
#[tokio::test]
async fn create_endpoint_again_keeps_the_workload_endpoint_uid() {
    let env = env().await;
    let ep = ep_id('f');
    let name =
        crate::model::workload_endpoint_name("seq-host", "libnetwork", "libnetwork", &ep).unwrap();
    let key = keys::workload_endpoint_key(WEP_NAMESPACE, &name);
    let meta = |v: &[u8]| -> (String, String) {
        let w: serde_json::Value = serde_json::from_slice(v).unwrap();
        (
            w["metadata"]["uid"].as_str().unwrap().to_string(),
            w["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    env.endpoint(&ep).await;
    let first = meta(&env.store.get(&key).await.unwrap().unwrap().value);
    assert_eq!(first.0.len(), 36);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.endpoint(&ep).await;
    let again = env.store.get(&key).await.unwrap().unwrap();
    assert_eq!(meta(&again.value), first);
    env.driver.delete_endpoint(&env.net, &ep).await.unwrap();
}
