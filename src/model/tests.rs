//! Golden JSON: a fully-populated value of every serialized model type, written and read
//! back against the exact bytes Calico's Go structs produce. Any change to a field name,
//! field order or `omitempty` rule shows up here.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::*;
use crate::model::block::AllocationAttribute;
use crate::model::resources::{IpNat, NodeAddress, NodeBgpSpec, OrchRef, WorkloadEndpointPort};

/// An `extra` map with one unknown field, to pin where flattened fields land.
fn extra(name: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(name.to_string(), json!(1));
    m
}

/// Serializes `value`, compares with `golden`, and reads `golden` back into `value`.
fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T, golden: &str) {
    let out = serde_json::to_string(value).unwrap();
    if out != golden {
        eprintln!("ACTUAL {}: {out}", std::any::type_name::<T>());
    }
    assert_eq!(out, golden);
    let back: T = serde_json::from_str(golden).unwrap();
    assert_eq!(&back, value);
}

fn meta() -> ObjectMeta {
    ObjectMeta {
        name: "n".into(),
        namespace: "ns".into(),
        uid: "u".into(),
        resource_version: String::new(),
        creation_timestamp: Some(Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap()),
        deletion_timestamp: Some(Utc.with_ymd_and_hms(2025, 6, 2, 12, 0, 0).unwrap()),
        labels: BTreeMap::from([("l".into(), "v".into())]),
        annotations: BTreeMap::from([("a".into(), "v".into())]),
        extra: extra("generation"),
    }
}

fn entity_rule(tag: &str) -> EntityRule {
    EntityRule {
        nets: vec![format!("10.{tag}.0.0/16")],
        selector: format!("has({tag})"),
        namespace_selector: "all()".into(),
        services: Some(json!({"name": "svc"})),
        ports: vec![NumOrString::Num(80), NumOrString::Str("http".into())],
        not_nets: vec!["10.9.0.0/16".into()],
        not_selector: "x == 'y'".into(),
        not_ports: vec![NumOrString::Str("1000:2000".into())],
        service_accounts: Some(json!({"names": ["sa"]})),
        extra: extra("futureEntity"),
    }
}

fn rule() -> Rule {
    Rule {
        action: "Allow".into(),
        ip_version: Some(4),
        protocol: Some(NumOrString::Str("TCP".into())),
        icmp: Some(json!({"type": 8})),
        not_protocol: Some(NumOrString::Num(17)),
        not_icmp: Some(json!({"type": 0})),
        source: entity_rule("1"),
        destination: entity_rule("2"),
        http: Some(json!({"methods": ["GET"]})),
        metadata: Some(json!({"annotations": {"k": "v"}})),
        extra: extra("futureRule"),
    }
}

#[test]
fn entity_rule_json() {
    check(
        &entity_rule("1"),
        r#"{"nets":["10.1.0.0/16"],"selector":"has(1)","namespaceSelector":"all()","services":{"name":"svc"},"ports":[80,"http"],"notNets":["10.9.0.0/16"],"notSelector":"x == 'y'","notPorts":["1000:2000"],"serviceAccounts":{"names":["sa"]},"futureEntity":1}"#,
    );
}

#[test]
fn rule_json() {
    check(
        &rule(),
        r#"{"action":"Allow","ipVersion":4,"protocol":"TCP","icmp":{"type":8},"notProtocol":17,"notICMP":{"type":0},"source":{"nets":["10.1.0.0/16"],"selector":"has(1)","namespaceSelector":"all()","services":{"name":"svc"},"ports":[80,"http"],"notNets":["10.9.0.0/16"],"notSelector":"x == 'y'","notPorts":["1000:2000"],"serviceAccounts":{"names":["sa"]},"futureEntity":1},"destination":{"nets":["10.2.0.0/16"],"selector":"has(2)","namespaceSelector":"all()","services":{"name":"svc"},"ports":[80,"http"],"notNets":["10.9.0.0/16"],"notSelector":"x == 'y'","notPorts":["1000:2000"],"serviceAccounts":{"names":["sa"]},"futureEntity":1},"http":{"methods":["GET"]},"metadata":{"annotations":{"k":"v"}},"futureRule":1}"#,
    );
}

#[test]
fn workload_endpoint_json() {
    let spec = WorkloadEndpointSpec {
        orchestrator: "cni".into(),
        workload: "w".into(),
        node: "h".into(),
        container_id: "c".into(),
        pod: "p".into(),
        endpoint: "e".into(),
        service_account_name: "sa".into(),
        ip_networks: vec!["10.0.0.1/32".into()],
        ip_nats: vec![IpNat {
            internal_ip: "10.0.0.1".into(),
            external_ip: "192.0.2.1".into(),
        }],
        ipv4_gateway: "169.254.1.1".into(),
        ipv6_gateway: "fe80::1".into(),
        profiles: vec!["net1".into()],
        interface_name: "cali0".into(),
        mac: "ee:ee:ee:ee:ee:ee".into(),
        ports: vec![WorkloadEndpointPort {
            name: "http".into(),
            protocol: NumOrString::Str("TCP".into()),
            port: 80,
            host_port: 8080,
            host_ip: "0.0.0.0".into(),
        }],
        allow_spoofed_source_prefixes: vec!["10.1.0.0/16".into()],
        qos_controls: Some(json!({"ingressBandwidth": 1000})),
        extra: extra("futureSpec"),
    };
    let mut w = WorkloadEndpoint::namespaced("ns", "n", spec);
    w.metadata = meta();
    w.status = Some(json!({"s": 1}));
    w.extra = extra("futureTop");
    check(
        &w,
        r#"{"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3","metadata":{"name":"n","namespace":"ns","uid":"u","creationTimestamp":"2025-06-01T12:00:00Z","deletionTimestamp":"2025-06-02T12:00:00Z","labels":{"l":"v"},"annotations":{"a":"v"},"generation":1},"spec":{"orchestrator":"cni","workload":"w","node":"h","containerID":"c","pod":"p","endpoint":"e","serviceAccountName":"sa","ipNetworks":["10.0.0.1/32"],"ipNATs":[{"internalIP":"10.0.0.1","externalIP":"192.0.2.1"}],"ipv4Gateway":"169.254.1.1","ipv6Gateway":"fe80::1","profiles":["net1"],"interfaceName":"cali0","mac":"ee:ee:ee:ee:ee:ee","ports":[{"name":"http","protocol":"TCP","port":80,"hostPort":8080,"hostIP":"0.0.0.0"}],"allowSpoofedSourcePrefixes":["10.1.0.0/16"],"qosControls":{"ingressBandwidth":1000},"futureSpec":1},"status":{"s":1},"futureTop":1}"#,
    );
}

#[test]
fn profile_json() {
    let spec = ProfileSpec {
        ingress: vec![rule()],
        egress: vec![Rule::action("Deny")],
        labels_to_apply: BTreeMap::from([("net1".into(), String::new())]),
        extra: extra("futureSpec"),
    };
    check(
        &Profile::new("p", spec),
        r#"{"kind":"Profile","apiVersion":"projectcalico.org/v3","metadata":{"name":"p"},"spec":{"ingress":[{"action":"Allow","ipVersion":4,"protocol":"TCP","icmp":{"type":8},"notProtocol":17,"notICMP":{"type":0},"source":{"nets":["10.1.0.0/16"],"selector":"has(1)","namespaceSelector":"all()","services":{"name":"svc"},"ports":[80,"http"],"notNets":["10.9.0.0/16"],"notSelector":"x == 'y'","notPorts":["1000:2000"],"serviceAccounts":{"names":["sa"]},"futureEntity":1},"destination":{"nets":["10.2.0.0/16"],"selector":"has(2)","namespaceSelector":"all()","services":{"name":"svc"},"ports":[80,"http"],"notNets":["10.9.0.0/16"],"notSelector":"x == 'y'","notPorts":["1000:2000"],"serviceAccounts":{"names":["sa"]},"futureEntity":1},"http":{"methods":["GET"]},"metadata":{"annotations":{"k":"v"}},"futureRule":1}],"egress":[{"action":"Deny"}],"labelsToApply":{"net1":""},"futureSpec":1}}"#,
    );
}

#[test]
fn node_json() {
    let spec = NodeSpec {
        bgp: Some(NodeBgpSpec {
            as_number: Some(json!(64512)),
            ipv4_address: "192.0.2.10/24".into(),
            ipv6_address: "2001:db8::10/64".into(),
            ipv4_ipip_tunnel_addr: "10.0.0.1".into(),
            route_reflector_cluster_id: "224.0.0.1".into(),
            extra: extra("futureBgp"),
        }),
        ipv4_vxlan_tunnel_addr: "10.0.0.2".into(),
        vxlan_tunnel_mac_addr: "ee:ee:ee:ee:ee:01".into(),
        ipv6_vxlan_tunnel_addr: "fd00::2".into(),
        vxlan_tunnel_mac_addr_v6: "ee:ee:ee:ee:ee:02".into(),
        orch_refs: vec![OrchRef {
            node_name: "h".into(),
            orchestrator: "k8s".into(),
        }],
        wireguard: Some(json!({"interfaceIPv4Address": "10.0.0.3"})),
        addresses: vec![NodeAddress {
            address: "192.0.2.10/24".into(),
            kind: "CalicoNodeIP".into(),
        }],
        extra: extra("interfaces"),
    };
    check(
        &Node::new("h", spec),
        r#"{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"h"},"spec":{"bgp":{"asNumber":64512,"ipv4Address":"192.0.2.10/24","ipv6Address":"2001:db8::10/64","ipv4IPIPTunnelAddr":"10.0.0.1","routeReflectorClusterID":"224.0.0.1","futureBgp":1},"ipv4VXLANTunnelAddr":"10.0.0.2","vxlanTunnelMACAddr":"ee:ee:ee:ee:ee:01","ipv6VXLANTunnelAddr":"fd00::2","vxlanTunnelMACAddrV6":"ee:ee:ee:ee:ee:02","orchRefs":[{"nodeName":"h","orchestrator":"k8s"}],"wireguard":{"interfaceIPv4Address":"10.0.0.3"},"addresses":[{"address":"192.0.2.10/24","type":"CalicoNodeIP"}],"interfaces":1}}"#,
    );
}

#[test]
fn cluster_information_json() {
    let spec = ClusterInformationSpec {
        cluster_guid: "g".into(),
        cluster_type: "docker".into(),
        calico_version: "v3.30.0".into(),
        datastore_ready: Some(true),
        variant: "Calico".into(),
        extra: extra("futureSpec"),
    };
    check(
        &ClusterInformation::new("default", spec),
        r#"{"kind":"ClusterInformation","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"clusterGUID":"g","clusterType":"docker","calicoVersion":"v3.30.0","datastoreReady":true,"variant":"Calico","futureSpec":1}}"#,
    );
}

// Go's v3 Tier (api/pkg/apis/projectcalico/v3/tier.go, Tier and TierSpec): `order` and
// `defaultAction` omitempty pointers, a float64 order written without a fraction, the
// non-pointer `status` always written; the three of clientv3/client.go, EnsureInitialized.
#[test]
fn tier_json() {
    let [default, admin, baseline] = <[Tier; 3]>::try_from(Tier::calico_defaults()).unwrap();
    check(
        &default,
        r#"{"kind":"Tier","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"order":1000000,"defaultAction":"Deny"},"status":{}}"#,
    );
    check(
        &admin,
        r#"{"kind":"Tier","apiVersion":"projectcalico.org/v3","metadata":{"name":"kube-admin"},"spec":{"order":1000,"defaultAction":"Pass"},"status":{}}"#,
    );
    check(
        &baseline,
        r#"{"kind":"Tier","apiVersion":"projectcalico.org/v3","metadata":{"name":"kube-baseline"},"spec":{"order":10000000,"defaultAction":"Pass"},"status":{}}"#,
    );
    assert_eq!(
        default.key().unwrap(),
        "/calico/resources/v3/projectcalico.org/tiers/default"
    );
    let spec = TierSpec {
        order: Some(100.5),
        default_action: None,
        extra: extra("futureSpec"),
    };
    check(
        &Tier::new("t", spec),
        r#"{"kind":"Tier","apiVersion":"projectcalico.org/v3","metadata":{"name":"t"},"spec":{"order":100.5,"futureSpec":1}}"#,
    );
}

#[test]
fn ip_reservation_json() {
    // api/pkg/apis/projectcalico/v3/ipreservation.go: `spec` always written, `reservedCIDRs`
    // omitempty (an address or a CIDR per entry).
    let spec = IpReservationSpec {
        reserved_cidrs: vec![
            "10.0.0.5".into(),
            "10.0.1.0/30".into(),
            "cafe:f00d::/123".into(),
        ],
        extra: extra("futureSpec"),
    };
    check(
        &IpReservation::new("r", spec),
        r#"{"kind":"IPReservation","apiVersion":"projectcalico.org/v3","metadata":{"name":"r"},"spec":{"reservedCIDRs":["10.0.0.5","10.0.1.0/30","cafe:f00d::/123"],"futureSpec":1}}"#,
    );
    check(
        &IpReservation::new("empty", IpReservationSpec::default()),
        r#"{"kind":"IPReservation","apiVersion":"projectcalico.org/v3","metadata":{"name":"empty"},"spec":{}}"#,
    );
    let null: IpReservationSpec = serde_json::from_str(r#"{"reservedCIDRs":null}"#).unwrap();
    assert!(null.reserved_cidrs.is_empty());
    assert_eq!(
        IpReservation::new("r", IpReservationSpec::default())
            .key()
            .unwrap(),
        "/calico/resources/v3/projectcalico.org/ipreservations/r"
    );
}

#[test]
fn ip_pool_json() {
    let spec = IpPoolSpec {
        cidr: "10.0.0.0/16".into(),
        vxlan_mode: "Never".into(),
        ipip_mode: "Always".into(),
        nat_outgoing: true,
        disabled: true,
        disable_bgp_export: true,
        block_size: 26,
        node_selector: "all()".into(),
        namespace_selector: "all()".into(),
        allowed_uses: vec!["Workload".into()],
        assignment_mode: Some("Automatic".into()),
        extra: extra("ipip"),
    };
    check(
        &IpPool::new("p", spec),
        r#"{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"p"},"spec":{"cidr":"10.0.0.0/16","vxlanMode":"Never","ipipMode":"Always","natOutgoing":true,"disabled":true,"disableBGPExport":true,"blockSize":26,"nodeSelector":"all()","namespaceSelector":"all()","allowedUses":["Workload"],"assignmentMode":"Automatic","ipip":1}}"#,
    );
}

#[test]
fn allocation_block_json() {
    let block = AllocationBlock {
        cidr: "10.0.0.0/30".parse().unwrap(),
        affinity: Some("host:h".into()),
        affinity_claim_time: Some(Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap()),
        allocations: vec![Some(0), None, Some(0), None],
        unallocated: vec![3, 1],
        attributes: vec![AllocationAttribute {
            handle_id: Some("libnetwork.e".into()),
            secondary: BTreeMap::from([("node".into(), "h".into())]),
            alternate_owner_attrs: BTreeMap::from([("node".into(), "h2".into())]),
            released_at: Some(Utc.with_ymd_and_hms(2025, 6, 1, 13, 0, 0).unwrap()),
            extra: extra("futureAttr"),
        }]
        .into(),
        sequence_number: 7,
        sequence_number_for_allocation: BTreeMap::from([("0".into(), 5), ("2".into(), 6)]),
        deleted: true,
        extra: extra("strictAffinity"),
    };
    check(
        &block,
        r#"{"cidr":"10.0.0.0/30","affinity":"host:h","affinity_claim_time":"2025-06-01T12:00:00Z","allocations":[0,null,0,null],"unallocated":[3,1],"attributes":[{"handle_id":"libnetwork.e","secondary":{"node":"h"},"alternateOwnerAttrs":{"node":"h2"},"releasedAt":"2025-06-01T13:00:00Z","futureAttr":1}],"sequenceNumber":7,"sequenceNumberForAllocation":{"0":5,"2":6},"deleted":true,"strictAffinity":1}"#,
    );
}

#[test]
fn block_affinity_json() {
    let mut a = BlockAffinity::pending_deletion();
    a.deleted = true;
    a.extra = extra("future");
    check(
        &a,
        r#"{"state":"pendingDeletion","deleted":true,"future":1}"#,
    );
}

#[test]
fn ipam_handle_json() {
    let h = IpamHandle {
        block: BTreeMap::from([("10.0.0.0/26".into(), 2)]),
        deleted: true,
        extra: extra("future"),
    };
    check(
        &h,
        r#"{"block":{"10.0.0.0/26":2},"deleted":true,"future":1}"#,
    );
}

#[test]
fn ipam_config_json() {
    let c = IpamConfig {
        strict_affinity: true,
        auto_allocate_blocks: true,
        max_blocks_per_host: 4,
        kube_virt_vm_address_persistence: Some("Enabled".into()),
        ip_cooldown_seconds: 30,
        extra: extra("future"),
    };
    check(
        &c,
        r#"{"strict_affinity":true,"auto_allocate_blocks":true,"maxBlocksPerHost":4,"kubeVirtVMAddressPersistence":"Enabled","ipCooldownSeconds":30,"future":1}"#,
    );
}

/// `{}` reads as the type's default: absent fields take their zero value, as in Go.
fn reads_empty_as_default<T: DeserializeOwned + Default + PartialEq + std::fmt::Debug>() {
    let v: T = serde_json::from_str("{}").unwrap();
    assert_eq!(v, T::default(), "{}", std::any::type_name::<T>());
}

#[test]
fn absent_fields_read_as_zero_values() {
    reads_empty_as_default::<ObjectMeta>();
    reads_empty_as_default::<WorkloadEndpointSpec>();
    reads_empty_as_default::<IpNat>();
    reads_empty_as_default::<WorkloadEndpointPort>();
    reads_empty_as_default::<ProfileSpec>();
    reads_empty_as_default::<NodeSpec>();
    reads_empty_as_default::<NodeBgpSpec>();
    reads_empty_as_default::<OrchRef>();
    reads_empty_as_default::<NodeAddress>();
    reads_empty_as_default::<ClusterInformationSpec>();
    reads_empty_as_default::<TierSpec>();
    reads_empty_as_default::<IpReservationSpec>();
    reads_empty_as_default::<Rule>();
    reads_empty_as_default::<EntityRule>();
    reads_empty_as_default::<IpPoolSpec>();
    reads_empty_as_default::<AllocationAttribute>();
    reads_empty_as_default::<BlockAffinity>();
    reads_empty_as_default::<IpamHandle>();
    // IpamConfig's Default is the absent-key config; a present `{}` is all false/0.
    let present: IpamConfig = serde_json::from_str("{}").unwrap();
    assert!(!present.strict_affinity && !present.auto_allocate_blocks);
    assert_eq!(present.kube_virt_vm_address_persistence, None);
    let wep: WorkloadEndpoint = serde_json::from_str("{}").unwrap();
    assert_eq!(wep.spec, WorkloadEndpointSpec::default());
    assert_eq!(wep.metadata, ObjectMeta::default());
}
