//! IPPool: spec, clientv3's defaulting and validation, and the helpers IPAM needs.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::keys;
use super::omitempty::{null_default, omitempty};
use super::resources::{Resource, Spec};
use super::selector::Selector;
use super::IpFamily;
use crate::error::{Error, Result};

/// An IPPool.
pub type IpPool = Resource<IpPoolSpec>;

/// Encapsulation mode: never.
pub const MODE_NEVER: &str = "Never";
/// Encapsulation mode: always.
pub const MODE_ALWAYS: &str = "Always";
/// Encapsulation mode: only across subnets.
pub const MODE_CROSS_SUBNET: &str = "CrossSubnet";
/// Allowed use: workload addresses.
pub const USE_WORKLOAD: &str = "Workload";
/// Allowed use: tunnel addresses.
pub const USE_TUNNEL: &str = "Tunnel";
/// Allowed use: LoadBalancer services.
pub const USE_LOAD_BALANCER: &str = "LoadBalancer";
/// Assignment mode: used by automatic assignment.
pub const ASSIGNMENT_AUTOMATIC: &str = "Automatic";
/// Assignment mode: only when asked for by name.
pub const ASSIGNMENT_MANUAL: &str = "Manual";

const V4_LINK_LOCAL: &str = "169.254.0.0/16";
const V6_LINK_LOCAL: &str = "fe80::/10";

/// IPPoolSpec, in Calico's field order; everything but `cidr` is `omitempty`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct IpPoolSpec {
    /// The pool's CIDR (strictly masked, canonical form).
    pub cidr: String,
    /// `Never`, `Always` or `CrossSubnet`.
    #[serde(skip_serializing_if = "omitempty")]
    pub vxlan_mode: String,
    /// `Never`, `Always` or `CrossSubnet`.
    #[serde(skip_serializing_if = "omitempty")]
    pub ipip_mode: String,
    /// Masquerade traffic leaving the pool.
    #[serde(skip_serializing_if = "omitempty")]
    pub nat_outgoing: bool,
    /// No new allocations.
    #[serde(skip_serializing_if = "omitempty")]
    pub disabled: bool,
    /// Don't advertise over BGP.
    #[serde(rename = "disableBGPExport", skip_serializing_if = "omitempty")]
    pub disable_bgp_export: bool,
    /// Block prefix length (0 = unset).
    #[serde(skip_serializing_if = "omitempty")]
    pub block_size: u8,
    /// Which nodes may use the pool.
    #[serde(skip_serializing_if = "omitempty")]
    pub node_selector: String,
    /// Which namespaces may use the pool.
    #[serde(skip_serializing_if = "omitempty")]
    pub namespace_selector: String,
    /// `Workload`, `Tunnel`, `LoadBalancer`.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "omitempty")]
    pub allowed_uses: Vec<String>,
    /// `Automatic` or `Manual` (a pointer in Go; `None` = unset).
    #[serde(skip_serializing_if = "omitempty")]
    pub assignment_mode: Option<String>,
    /// Fields this version does not know (deprecated `ipip`, `nat-outgoing`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Spec for IpPoolSpec {
    const KIND: &'static str = "IPPool";
    const PLURAL: &'static str = keys::PLURAL_IP_POOLS;
}

impl IpPoolSpec {
    /// A spec with just a CIDR.
    pub fn with_cidr(cidr: &IpNet) -> Self {
        IpPoolSpec {
            cidr: cidr.to_string(),
            ..Default::default()
        }
    }

    /// The CIDR parsed (host bits, if any, kept: see [`IpPoolSpec::validate`]).
    pub fn cidr_net(&self) -> Result<IpNet> {
        if self.cidr.is_empty() {
            return Err(Error::invalid("parse ip pool cidr: cidr must be specified"));
        }
        self.cidr.parse::<IpNet>().map_err(|_| {
            Error::invalid(format!(
                "parse ip pool cidr {:?}: must be a valid subnet",
                self.cidr
            ))
        })
    }

    /// The pool's address family, if the CIDR parses.
    pub fn family(&self) -> Option<IpFamily> {
        self.cidr_net().ok().map(|n| IpFamily::of_net(&n))
    }

    /// Fills unset fields the way clientv3 does on write and on read: block size 26/122,
    /// `nodeSelector` `all()`, `allowedUses` `[Workload, Tunnel]`, modes `Never`,
    /// `assignmentMode` `Automatic`. The block size is left alone if the CIDR doesn't parse.
    pub fn set_defaults(&mut self) {
        if self.block_size == 0 {
            if let Some(fam) = self.family() {
                self.block_size = fam.default_block_size();
            }
        }
        if self.node_selector.is_empty() {
            self.node_selector = "all()".into();
        }
        if self.allowed_uses.is_empty() {
            self.allowed_uses = vec![USE_WORKLOAD.into(), USE_TUNNEL.into()];
        }
        if self.ipip_mode.is_empty() {
            self.ipip_mode = MODE_NEVER.into();
        }
        if self.vxlan_mode.is_empty() {
            self.vxlan_mode = MODE_NEVER.into();
        }
        if self.assignment_mode.is_none() {
            self.assignment_mode = Some(ASSIGNMENT_AUTOMATIC.into());
        }
    }

    /// What the allocator needs of a stored pool: a CIDR that parses and a block size within
    /// the family's range (Calico refuses others too). Looser than [`IpPoolSpec::validate`],
    /// which is for pools being created.
    pub fn check_usable(&self) -> Result<()> {
        let net = self.cidr_net()?;
        let bs = self.block_size_or_default();
        let range = match IpFamily::of_net(&net) {
            IpFamily::V4 => 20..=32,
            IpFamily::V6 => 116..=128,
        };
        if !range.contains(&bs) {
            return Err(Error::invalid(format!(
                "ip pool {}: block size /{bs} is outside {}..={}",
                self.cidr,
                range.start(),
                range.end()
            )));
        }
        Ok(())
    }

    /// Checks the spec as clientv3 and its validator would (after defaulting; unset
    /// fields are treated as their defaults):
    /// strictly masked CIDR; block size 20..=32 (v4) / 116..=128 (v6); pool prefix no longer
    /// than the block size unless disabled; modes among Never|Always|CrossSubnet; not both
    /// IPIP and VXLAN; no IPIP on IPv6; no overlap with link-local ranges; known uses, with
    /// LoadBalancer alone; a known assignment mode; a parseable node selector.
    pub fn validate(&self) -> Result<()> {
        let fail = |why: String| {
            Err(Error::invalid(format!(
                "validate ip pool {}: {why}",
                self.cidr
            )))
        };
        let net = self.cidr_net()?;
        if net.addr() != net.network() {
            return fail(format!(
                "cidr is not strictly masked (did you mean {}?)",
                net.trunc()
            ));
        }
        let fam = IpFamily::of_net(&net);
        let bs = self.block_size_or_default();
        let range = match fam {
            IpFamily::V4 => 20..=32,
            IpFamily::V6 => 116..=128,
        };
        if !range.contains(&bs) {
            return fail(format!(
                "block size /{bs} is outside {}..={} for {fam}",
                range.start(),
                range.end()
            ));
        }
        if net.prefix_len() > bs && !self.disabled {
            return fail(format!(
                "pool /{} is smaller than its block size /{bs} (only allowed when disabled)",
                net.prefix_len()
            ));
        }
        for (field, mode) in [
            ("ipipMode", &self.ipip_mode),
            ("vxlanMode", &self.vxlan_mode),
        ] {
            if !matches!(
                mode.as_str(),
                "" | MODE_NEVER | MODE_ALWAYS | MODE_CROSS_SUBNET
            ) {
                return fail(format!(
                    "invalid {field} {mode:?} (expected Never, Always or CrossSubnet)"
                ));
            }
        }
        let on = |m: &str| !m.is_empty() && m != MODE_NEVER;
        if on(&self.ipip_mode) && on(&self.vxlan_mode) {
            return fail("ipipMode and vxlanMode cannot both be enabled".into());
        }
        if on(&self.ipip_mode) && fam == IpFamily::V6 {
            return fail("ipipMode is not supported on IPv6 pools".into());
        }
        let link_local: IpNet = match fam {
            IpFamily::V4 => V4_LINK_LOCAL,
            IpFamily::V6 => V6_LINK_LOCAL,
        }
        .parse()
        .expect("constant cidr");
        if net.contains(&link_local) || link_local.contains(&net) {
            return fail(format!("cidr overlaps the link-local range {link_local}"));
        }
        for u in &self.allowed_uses {
            if !matches!(u.as_str(), USE_WORKLOAD | USE_TUNNEL | USE_LOAD_BALANCER) {
                return fail(format!("unknown allowed use {u:?}"));
            }
        }
        if self.allowed_uses.iter().any(|u| u == USE_LOAD_BALANCER) && self.allowed_uses.len() > 1 {
            return fail("LoadBalancer cannot be combined with Workload or Tunnel".into());
        }
        if let Some(m) = &self.assignment_mode {
            if !matches!(m.as_str(), ASSIGNMENT_AUTOMATIC | ASSIGNMENT_MANUAL) {
                return fail(format!(
                    "invalid assignmentMode {m:?} (expected Automatic or Manual)"
                ));
            }
        }
        if let Err(e) = Selector::parse(&self.node_selector) {
            return fail(format!("invalid nodeSelector: {e}"));
        }
        Ok(())
    }

    /// What clientv3 does before storing: default, validate, then write the CIDR in
    /// canonical form.
    pub fn prepare(&mut self) -> Result<()> {
        self.set_defaults();
        self.validate()?;
        self.cidr = self.cidr_net()?.to_string();
        Ok(())
    }

    /// The block size, or the family default when unset.
    pub fn block_size_or_default(&self) -> u8 {
        match (self.block_size, self.family()) {
            (0, Some(f)) => f.default_block_size(),
            (bs, _) => bs,
        }
    }

    /// Whether the pool may be used for `intended_use` (`Workload`, `Tunnel`, ...); unset
    /// `allowedUses` means the defaults. An empty `intended_use` is always allowed.
    pub fn allows_use(&self, intended_use: &str) -> bool {
        if intended_use.is_empty() {
            return true;
        }
        if self.allowed_uses.is_empty() {
            return intended_use == USE_WORKLOAD || intended_use == USE_TUNNEL;
        }
        self.allowed_uses.iter().any(|u| u == intended_use)
    }

    /// Whether automatic assignment may pick the pool (`assignmentMode` unset or Automatic).
    pub fn is_automatic(&self) -> bool {
        self.assignment_mode
            .as_deref()
            .is_none_or(|m| m == ASSIGNMENT_AUTOMATIC)
    }

    /// The parsed node selector (empty = `all()`).
    pub fn node_selector(&self) -> Result<Selector> {
        Selector::parse(&self.node_selector)
    }

    /// Whether the `namespaceSelector` (Calico v3.31+) selects a workload with no namespace,
    /// as Docker's are: an empty selector selects everything, any other is evaluated against
    /// empty labels (libcalico-go `ipam/pools.go` `SelectsNamespace` with a nil namespace).
    pub fn selects_no_namespace(&self) -> Result<bool> {
        if self.namespace_selector.is_empty() {
            return Ok(true);
        }
        let sel = Selector::parse(&self.namespace_selector)
            .map_err(|e| e.context(format!("parse namespaceSelector of ip pool {}", self.cidr)))?;
        Ok(sel.matches(&Default::default()))
    }

    /// Whether `ip` lies in the pool.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.cidr_net().is_ok_and(|n| n.contains(ip))
    }

    /// The block (the pool's block size around `ip`) holding `ip`, if `ip` is in the pool.
    pub fn block_for(&self, ip: &IpAddr) -> Option<IpNet> {
        if !self.contains(ip) {
            return None;
        }
        IpNet::new(*ip, self.block_size_or_default())
            .ok()
            .map(|n| n.trunc())
    }
}

/// The status condition kube-controllers sets to `False` on a pool that must take no new
/// allocations (Calico v3.32+, `api/pkg/apis/projectcalico/v3/ippool.go`).
pub const CONDITION_ALLOCATABLE: &str = "Allocatable";

impl IpPool {
    /// Whether the pool carries `status.conditions[type=Allocatable,status=False]`, which
    /// makes Calico skip it for every assignment (libcalico-go `clientv3/client.go`
    /// `filterIPPool`).
    pub fn marked_not_allocatable(&self) -> bool {
        let Some(conditions) = self
            .status
            .as_ref()
            .and_then(|s| s.get("conditions"))
            .and_then(Value::as_array)
        else {
            return false;
        };
        conditions.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some(CONDITION_ALLOCATABLE)
                && c.get("status").and_then(Value::as_str) == Some("False")
        })
    }

    /// Whether Calico counts the pool as enabled for `family` (`filterIPPool`): no
    /// deletion pending, not disabled, not marked Allocatable=False, of that family.
    pub fn is_enabled_for(&self, family: IpFamily) -> bool {
        self.metadata.deletion_timestamp.is_none()
            && !self.spec.disabled
            && !self.marked_not_allocatable()
            && self.spec.family() == Some(family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cidr: &str) -> IpPoolSpec {
        IpPoolSpec {
            cidr: cidr.into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaulted_pool_matches_reference_json() {
        let mut s = spec("192.168.0.0/16");
        s.ipip_mode = MODE_ALWAYS.into();
        s.nat_outgoing = true;
        s.prepare().unwrap();
        let p = IpPool::new("default-ipv4-ippool", s);
        let json = String::from_utf8(p.to_json().unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"default-ipv4-ippool"},"spec":{"cidr":"192.168.0.0/16","vxlanMode":"Never","ipipMode":"Always","natOutgoing":true,"blockSize":26,"nodeSelector":"all()","allowedUses":["Workload","Tunnel"],"assignmentMode":"Automatic"}}"#
        );
        let back = IpPool::from_json(json.as_bytes()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn v6_defaults_and_canonical_cidr() {
        let mut s = spec("FD80:24E2:F998:72D6:0:0:0:0/64");
        s.prepare().unwrap();
        assert_eq!(s.cidr, "fd80:24e2:f998:72d6::/64");
        assert_eq!(s.block_size, 122);
        assert_eq!(s.family(), Some(IpFamily::V6));
    }

    #[test]
    fn validation_rules() {
        let bad = |mut s: IpPoolSpec, frag: &str| {
            s.set_defaults();
            let e = s.validate().unwrap_err();
            assert!(e.is_invalid());
            assert!(e.to_string().contains(frag), "{e}");
        };
        bad(
            spec("10.0.0.1/24"),
            "not strictly masked (did you mean 10.0.0.0/24?)",
        );
        bad(spec("nonsense"), "must be a valid subnet");
        bad(spec(""), "must be specified");
        bad(
            IpPoolSpec {
                block_size: 19,
                ..spec("10.0.0.0/16")
            },
            "outside 20..=32",
        );
        bad(
            IpPoolSpec {
                block_size: 33,
                ..spec("10.0.0.0/16")
            },
            "outside 20..=32",
        );
        bad(
            IpPoolSpec {
                block_size: 115,
                ..spec("fd00::/48")
            },
            "outside 116..=128",
        );
        bad(spec("10.0.0.0/28"), "smaller than its block size /26");
        bad(
            IpPoolSpec {
                ipip_mode: "Always".into(),
                vxlan_mode: "CrossSubnet".into(),
                ..spec("10.0.0.0/16")
            },
            "cannot both",
        );
        bad(
            IpPoolSpec {
                ipip_mode: "Always".into(),
                ..spec("fd00::/48")
            },
            "not supported on IPv6",
        );
        bad(
            IpPoolSpec {
                ipip_mode: "Sometimes".into(),
                ..spec("10.0.0.0/16")
            },
            "invalid ipipMode",
        );
        bad(spec("169.254.0.0/24"), "link-local");
        bad(spec("169.0.0.0/8"), "link-local");
        bad(spec("fe80::/64"), "link-local");
        bad(
            IpPoolSpec {
                allowed_uses: vec!["LoadBalancer".into(), "Workload".into()],
                ..spec("10.0.0.0/16")
            },
            "LoadBalancer cannot be combined",
        );
        bad(
            IpPoolSpec {
                allowed_uses: vec!["Bogus".into()],
                ..spec("10.0.0.0/16")
            },
            "unknown allowed use",
        );
        bad(
            IpPoolSpec {
                assignment_mode: Some("Later".into()),
                ..spec("10.0.0.0/16")
            },
            "assignmentMode",
        );
        bad(
            IpPoolSpec {
                node_selector: "foo ==".into(),
                ..spec("10.0.0.0/16")
            },
            "invalid nodeSelector",
        );

        // A small pool is fine when disabled; /32 and /128 blocks are fine.
        let mut ok = IpPoolSpec {
            disabled: true,
            ..spec("10.0.0.0/28")
        };
        ok.prepare().unwrap();
        let mut ok = IpPoolSpec {
            block_size: 32,
            ..spec("10.0.0.0/24")
        };
        ok.prepare().unwrap();
        let mut ok = IpPoolSpec {
            block_size: 128,
            ..spec("fd00::/120")
        };
        ok.prepare().unwrap();
    }

    #[test]
    fn helpers() {
        let mut s = spec("10.0.0.0/24");
        assert!(
            s.allows_use(USE_WORKLOAD)
                && s.allows_use(USE_TUNNEL)
                && !s.allows_use(USE_LOAD_BALANCER)
        );
        assert!(s.is_automatic());
        assert_eq!(s.block_size_or_default(), 26);
        s.set_defaults();
        let ip: IpAddr = "10.0.0.77".parse().unwrap();
        assert_eq!(s.block_for(&ip), Some("10.0.0.64/26".parse().unwrap()));
        assert_eq!(s.block_for(&"10.0.1.1".parse().unwrap()), None);
        s.allowed_uses = vec![USE_TUNNEL.into()];
        assert!(!s.allows_use(USE_WORKLOAD));
        assert!(s.allows_use(""));
        s.assignment_mode = Some(ASSIGNMENT_MANUAL.into());
        assert!(!s.is_automatic());
        assert!(s.node_selector().unwrap().matches(&Default::default()));
    }

    #[test]
    fn allocatable_condition_and_namespace_selector() {
        // clientv3/client.go filterIPPool: only type Allocatable with status False excludes.
        let pool = |status: &str| {
            IpPool::from_json(
                format!(r#"{{"metadata":{{"name":"p"}},"spec":{{"cidr":"10.0.0.0/24"}},"status":{status}}}"#)
                    .as_bytes(),
            )
            .unwrap()
        };
        let no =
            pool(r#"{"conditions":[{"type":"Allocatable","status":"False","reason":"Overlap"}]}"#);
        assert!(no.marked_not_allocatable() && !no.is_enabled_for(IpFamily::V4));
        for ok in [
            r#"{"conditions":[{"type":"Allocatable","status":"True"}]}"#,
            r#"{"conditions":[{"type":"Ready","status":"False"}]}"#,
            r#"{}"#,
            "null",
        ] {
            let p = pool(ok);
            assert!(!p.marked_not_allocatable(), "{ok}");
            assert!(p.is_enabled_for(IpFamily::V4) && !p.is_enabled_for(IpFamily::V6));
        }
        // ipam/pools.go SelectsNamespace: no namespace means empty labels.
        let mut s = spec("10.0.0.0/24");
        assert!(s.selects_no_namespace().unwrap());
        s.namespace_selector = "all()".into();
        assert!(s.selects_no_namespace().unwrap());
        s.namespace_selector = "!has(team)".into();
        assert!(s.selects_no_namespace().unwrap());
        s.namespace_selector = "has(team)".into();
        assert!(!s.selects_no_namespace().unwrap());
        s.namespace_selector = "team ==".into();
        assert!(s.selects_no_namespace().is_err());
    }

    #[test]
    fn status_and_unknowns_survive() {
        let src = r#"{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"p"},"spec":{"cidr":"10.0.0.0/24","blockSize":26,"ipip":{"enabled":false},"nat-outgoing":false},"status":{"conditions":[{"type":"Ready"}]}}"#;
        let p = IpPool::from_json(src.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(p.to_json().unwrap()).unwrap(), src);
    }
}
