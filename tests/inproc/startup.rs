//! The plugin's start-up preparation of the datastore (`Driver::init`), checked against what
//! Calico's own initialisation (calico-node, clientv3's `EnsureInitialized`) leaves there, on
//! both datastores.

use crate::common;

use calico_libnetwork::driver::{Driver, DriverSettings};
use calico_libnetwork::ipam::default_pool;
use calico_libnetwork::model::IpPool;
use common::backends::{backends, Store};
use serde_json::{json, Value};

const CI_KEY: &str = "/calico/resources/v3/projectcalico.org/clusterinformations/default";
const TIERS: &str = "/calico/resources/v3/projectcalico.org/tiers/";
const POOLS: &str = "/calico/resources/v3/projectcalico.org/ippools/";

/// Runs the start-up preparation of node `host-a` with the IPv4 default pool 10.80.0.0/16.
async fn init(store: &Store) {
    init_with(store, &[default_pool(&"10.80.0.0/16".parse().unwrap())]).await;
}

/// Runs the start-up preparation of node `host-a` with `pools` as the default pools.
async fn init_with(store: &Store, pools: &[IpPool]) {
    let driver = Driver::new(store.clone(), DriverSettings::new("host-a"));
    driver.init(pools).await.unwrap();
}

/// The stored JSON at `key`, if any.
async fn stored(store: &Store, key: &str) -> Option<Value> {
    let kv = store.get(key).await.unwrap()?;
    Some(serde_json::from_slice(&kv.value).unwrap())
}

/// Each stored Tier's name and spec.
async fn tiers(store: &Store) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for kv in store.list(TIERS).await.unwrap() {
        let v: Value = serde_json::from_slice(&kv.value).unwrap();
        out.push((kv.key[TIERS.len()..].to_string(), v["spec"].clone()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

// calicoctl/calicoctl/commands/common/version_mismatch.go, CheckVersionMismatch: an empty
// calicoVersion skips the check; Go's omitempty leaves the empty string out.
async fn fresh_cluster_information_has_no_calico_version(store: Store) {
    init(&store).await;
    let ci = stored(&store, CI_KEY).await.expect("ClusterInformation");
    let spec = ci["spec"].as_object().unwrap();
    assert!(!spec.contains_key("calicoVersion"), "{ci}");
    assert_eq!(spec["datastoreReady"], true, "{ci}");
    let guid = spec["clusterGUID"].as_str().unwrap();
    assert!(
        guid.len() == 32 && guid.chars().all(|c| c.is_ascii_hexdigit()),
        "{ci}"
    );
    // A second start changes nothing.
    let rev = store.get(CI_KEY).await.unwrap().unwrap().revision;
    init(&store).await;
    assert_eq!(store.get(CI_KEY).await.unwrap().unwrap().revision, rev);
}

// libcalico-go/lib/clientv3/client.go, ensureClusterInformation: calico-node's
// ClusterInformation keeps its version and GUID, and a false datastoreReady stays false.
async fn an_existing_cluster_information_is_left_as_it_is(store: Store) {
    let calicos = json!({
        "kind": "ClusterInformation",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "default", "uid": "5c2f8a36-6e0e-4f5e-9d3c-1f0e7c1b2a44", "creationTimestamp": "2025-06-01T12:00:00Z"},
        "spec": {"clusterGUID": "0123456789abcdef0123456789abcdef", "clusterType": "k8s,bgp", "calicoVersion": "v3.30.0", "datastoreReady": false}
    });
    let bytes = serde_json::to_vec(&calicos).unwrap();
    store.put(CI_KEY, bytes.clone()).await.unwrap();
    let before = store.get(CI_KEY).await.unwrap().unwrap();
    init(&store).await;
    let after = store.get(CI_KEY).await.unwrap().unwrap();
    assert_eq!(after, before, "ClusterInformation rewritten");
    assert_eq!(after.value, bytes);
    // Calico's initialisation ran here (it wrote its version): its Tiers are its business.
    assert_eq!(tiers(&store).await, []);
    // The plugin did prepare the rest: its Node and the default pool.
    assert!(stored(
        &store,
        "/calico/resources/v3/projectcalico.org/nodes/host-a"
    )
    .await
    .is_some());
    assert!(stored(
        &store,
        "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool"
    )
    .await
    .is_some());
}

// calicoctl/calicoctl/commands/common/version_mismatch.go, CheckVersionMismatch: the
// "calico-libnetwork-0.1.0" earlier builds wrote reads as version "calico", a mismatch
// with every calicoctl; it is emptied, every other field kept.
async fn this_plugins_former_calico_version_is_emptied(store: Store) {
    let old = json!({
        "kind": "ClusterInformation",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "default", "uid": "u-1", "creationTimestamp": "2025-06-01T12:00:00Z"},
        "spec": {"clusterGUID": "0123456789abcdef0123456789abcdef", "clusterType": "libnetwork", "calicoVersion": "calico-libnetwork-0.1.0", "datastoreReady": true}
    });
    store
        .put(CI_KEY, serde_json::to_vec(&old).unwrap())
        .await
        .unwrap();
    init(&store).await;
    let mut expected = old.clone();
    expected["spec"]
        .as_object_mut()
        .unwrap()
        .remove("calicoVersion");
    assert_eq!(stored(&store, CI_KEY).await.unwrap(), expected);
    // Calico's initialisation never ran: its Tiers are created.
    assert_eq!(tiers(&store).await.len(), 3);
}

// libcalico-go/lib/clientv3/client.go, EnsureInitialized and ensureTierExists: with
// ClusterInformation come the Tiers default (Deny, order 1e6), kube-admin (Pass, 1e3) and
// kube-baseline (Pass, 1e7).
async fn a_fresh_datastore_gets_calicos_tiers(store: Store) {
    init(&store).await;
    assert_eq!(
        tiers(&store).await,
        [
            (
                "default".to_string(),
                json!({"order": 1000000, "defaultAction": "Deny"})
            ),
            (
                "kube-admin".to_string(),
                json!({"order": 1000, "defaultAction": "Pass"})
            ),
            (
                "kube-baseline".to_string(),
                json!({"order": 10000000, "defaultAction": "Pass"})
            ),
        ]
    );
    // Stored as clientv3 stores a resource it creates: uid, creation time, an empty status.
    let admin = stored(&store, &format!("{TIERS}kube-admin")).await.unwrap();
    assert_eq!(admin["kind"], "Tier");
    assert_eq!(admin["apiVersion"], "projectcalico.org/v3");
    assert_eq!(admin["metadata"]["name"], "kube-admin");
    assert_eq!(admin["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(admin["metadata"]["creationTimestamp"].is_string());
    assert_eq!(admin["status"], json!({}));
}

// libcalico-go/lib/clientv3/client.go, ensureTierExists: a Tier that exists is left alone
// (Create, AlreadyExists ignored).
async fn an_existing_tier_is_never_changed(store: Store) {
    let own = json!({
        "kind": "Tier",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "default"},
        "spec": {"order": 7}
    });
    let own_bytes = serde_json::to_vec(&own).unwrap();
    let key = format!("{TIERS}default");
    store.put(&key, own_bytes.clone()).await.unwrap();
    init(&store).await;
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, own_bytes);
    let names: Vec<String> = tiers(&store).await.into_iter().map(|t| t.0).collect();
    assert_eq!(names, ["default", "kube-admin", "kube-baseline"]);
}

/// Each stored IPPool's name and spec.
async fn pools(store: &Store) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for kv in store.list(POOLS).await.unwrap() {
        let v: Value = serde_json::from_slice(&kv.value).unwrap();
        out.push((kv.key[POOLS.len()..].to_string(), v["spec"].clone()));
    }
    out
}

/// An IPPool as an operator would create it with calicoctl.
async fn put_pool(store: &Store, name: &str, cidr: &str) {
    let pool = json!({
        "kind": "IPPool",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, "nodeSelector": "all()"}
    });
    store
        .put(
            &format!("{POOLS}{name}"),
            serde_json::to_vec(&pool).unwrap(),
        )
        .await
        .unwrap();
}

/// Starts with the IPv4 and IPv6 defaults where pool `name` (`cidr`) exists: the pools then.
async fn defaults_beside(store: &Store, name: &str, cidr: &str) -> Vec<String> {
    put_pool(store, name, cidr).await;
    let v4 = default_pool(&"10.80.0.0/16".parse().unwrap());
    let v6 = default_pool(&"fd80::/64".parse().unwrap());
    init_with(store, &[v4, v6]).await;
    pools(store).await.into_iter().map(|p| p.0).collect()
}

// node/pkg/lifecycle/startup/startup.go, configureIPPools: a default pool for each family
// that has no pool ("Ensure there are pools created for each IP version").
async fn an_ipv4_pool_leaves_the_ipv6_default(store: Store) {
    assert_eq!(
        defaults_beside(&store, "operators-v4", "10.81.0.0/16").await,
        ["default-ipv6-ippool", "operators-v4"]
    );
}

// node/pkg/lifecycle/startup/startup.go, configureIPPools: likewise for IPv4.
async fn an_ipv6_pool_leaves_the_ipv4_default(store: Store) {
    assert_eq!(
        defaults_beside(&store, "operators-v6", "fd81::/64").await,
        ["default-ipv4-ippool", "operators-v6"]
    );
}

// node/pkg/lifecycle/startup/startup.go, createIPPool: the settings as given, stored with
// clientv3's defaults (libcalico-go/lib/clientv3/ippool.go, Create); IPv6 NAT outgoing off.
async fn default_pools_are_stored_like_calico_nodes(store: Store) {
    let mut v4 = default_pool(&"10.80.0.0/16".parse().unwrap());
    v4.spec.vxlan_mode = "CrossSubnet".into();
    v4.spec.block_size = 28;
    v4.spec.node_selector = "zone == 'a'".into();
    let v6 = default_pool(&"fd80::/64".parse().unwrap());
    init_with(&store, &[v4, v6]).await;
    assert_eq!(
        pools(&store).await,
        [
            (
                "default-ipv4-ippool".to_string(),
                json!({"cidr": "10.80.0.0/16", "vxlanMode": "CrossSubnet", "ipipMode": "Never", "natOutgoing": true, "blockSize": 28, "nodeSelector": "zone == 'a'", "allowedUses": ["Workload", "Tunnel"], "assignmentMode": "Automatic"})
            ),
            (
                "default-ipv6-ippool".to_string(),
                json!({"cidr": "fd80::/64", "vxlanMode": "Never", "ipipMode": "Never", "blockSize": 122, "nodeSelector": "all()", "allowedUses": ["Workload", "Tunnel"], "assignmentMode": "Automatic"})
            ),
        ]
    );
}

backends!(
    threads = 2,
    timeout = Some(std::time::Duration::from_secs(60)),
    [
        fresh_cluster_information_has_no_calico_version,
        an_existing_cluster_information_is_left_as_it_is,
        this_plugins_former_calico_version_is_emptied,
        a_fresh_datastore_gets_calicos_tiers,
        an_existing_tier_is_never_changed,
        an_ipv4_pool_leaves_the_ipv6_default,
        an_ipv6_pool_leaves_the_ipv4_default,
        default_pools_are_stored_like_calico_nodes,
    ]
);
