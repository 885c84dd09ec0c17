//! The default pools section: the pool of each family created at start when that family has
//! none, with calico-node's variables, defaults, checks and messages (`configureIPPools` and
//! `createIPPool` in calico-node's start-up).

use ipnet::IpNet;

use super::values::{bad, parse_bool};
use super::ConfigArgs;
use crate::error::Result;
use crate::ipam::default_pool;
use crate::model::ippool::{MODE_ALWAYS, MODE_CROSS_SUBNET, MODE_NEVER};
use crate::model::{IpFamily, IpPool, Selector};

/// One family's settings as given.
struct FamilyArgs<'a> {
    family: IpFamily,
    cidr: Option<&'a str>,
    ipip: Option<&'a str>,
    vxlan: Option<&'a str>,
    nat_outgoing: Option<&'a str>,
    block_size: Option<&'a str>,
    node_selector: Option<&'a str>,
    disable_bgp_export: Option<&'a str>,
}

impl ConfigArgs {
    /// The default pools: IPv4 (`CALICO_IPV4POOL_CIDR`, `192.168.0.0/16` unless `none`) and,
    /// when `CALICO_IPV6POOL_CIDR` is set (and not `none`), IPv6; none with
    /// `NO_DEFAULT_POOLS`.
    pub(super) fn resolve_default_pools(&self) -> Result<Vec<IpPool>> {
        if parse_bool("NO_DEFAULT_POOLS", &self.no_default_pools)? {
            return Ok(Vec::new());
        }
        let v4 = FamilyArgs {
            family: IpFamily::V4,
            cidr: Some(self.ipv4_pool_cidr.as_str()),
            // calico-node has no IPIP setting for IPv6: IPv6 pools never use IPIP.
            ipip: self.ipv4_pool_ipip.as_deref(),
            vxlan: self.ipv4_pool_vxlan.as_deref(),
            nat_outgoing: self.ipv4_pool_nat_outgoing.as_deref(),
            block_size: self.ipv4_pool_block_size.as_deref(),
            node_selector: self.ipv4_pool_node_selector.as_deref(),
            disable_bgp_export: self.ipv4_pool_disable_bgp_export.as_deref(),
        };
        let v6 = FamilyArgs {
            family: IpFamily::V6,
            cidr: self.ipv6_pool_cidr.as_deref(),
            ipip: None,
            vxlan: self.ipv6_pool_vxlan.as_deref(),
            nat_outgoing: self.ipv6_pool_nat_outgoing.as_deref(),
            block_size: self.ipv6_pool_block_size.as_deref(),
            node_selector: self.ipv6_pool_node_selector.as_deref(),
            disable_bgp_export: self.ipv6_pool_disable_bgp_export.as_deref(),
        };
        let mut pools = Vec::new();
        for family in [v4, v6] {
            if let Some(pool) = family.resolve()? {
                pools.push(pool);
            }
        }
        Ok(pools)
    }
}

impl FamilyArgs<'_> {
    /// The variable `CALICO_IPV<n>POOL_<what>` of this family.
    fn var(&self, what: &str) -> String {
        format!("CALICO_IPV{}POOL_{what}", self.family.number())
    }

    /// This family's default pool; `None` when its CIDR is unset, empty or `none`. The other
    /// settings are checked unless the CIDR is `none`, as calico-node checks them (it makes
    /// an IPv6 pool of its own when `CALICO_IPV6POOL_CIDR` is unset).
    fn resolve(&self) -> Result<Option<IpPool>> {
        let cidr = self.cidr.map(str::trim).unwrap_or_default();
        // calico-node's way to turn one family's default pool off.
        if cidr == "none" {
            return Ok(None);
        }
        let ipip = self.mode("IPIP", self.ipip)?;
        let vxlan = self.mode("VXLAN", self.vxlan)?;
        if ipip != MODE_NEVER && vxlan != MODE_NEVER {
            return Err(bad(
                &self.var("VXLAN"),
                format!(
                    "cannot be {vxlan} while {} is {ipip} (a Calico pool uses IPIP or VXLAN, not both)",
                    self.var("IPIP"),
                ),
            ));
        }
        let nat_outgoing = self
            .nat_outgoing
            .map(|v| calico_bool(&self.var("NAT_OUTGOING"), v))
            .transpose()?;
        let block_size = self.block_size()?;
        let node_selector = self.node_selector.map(str::trim).unwrap_or_default();
        Selector::parse(node_selector).map_err(|e| {
            bad(
                &self.var("NODE_SELECTOR"),
                format!("invalid node selector '{node_selector}': {e}"),
            )
        })?;
        let disable_bgp_export = self
            .disable_bgp_export
            .map(|v| calico_bool(&self.var("DISABLE_BGP_EXPORT"), v))
            .transpose()?;
        if cidr.is_empty() {
            return Ok(None);
        }
        let cidr_var = self.var("CIDR");
        let net: IpNet = cidr
            .parse()
            .map_err(|e| bad(&cidr_var, format!("invalid CIDR '{cidr}': {e}")))?;
        if IpFamily::of_net(&net) != self.family {
            return Err(bad(
                &cidr_var,
                format!("must be an IPv{} CIDR", self.family.number()),
            ));
        }
        let mut pool = default_pool(&net);
        let spec = &mut pool.spec;
        spec.ipip_mode = ipip.to_string();
        spec.vxlan_mode = vxlan.to_string();
        if let Some(nat) = nat_outgoing {
            spec.nat_outgoing = nat;
        }
        if let Some(bs) = block_size {
            if bs < net.prefix_len() {
                return Err(bad(
                    &self.var("BLOCK_SIZE"),
                    format!(
                        "blocks of /{bs} do not fit in the pool {net} ({cidr_var}): use a block size of at least {}",
                        net.prefix_len()
                    ),
                ));
            }
            spec.block_size = bs;
        }
        spec.node_selector = node_selector.to_string();
        spec.disable_bgp_export = disable_bgp_export.unwrap_or(false);
        // Calico's own checks of a pool (a link-local CIDR, ...), which it would apply when
        // the pool is created: refused now rather than at every start-up attempt.
        pool.spec
            .clone()
            .prepare()
            .map_err(|e| bad(&cidr_var, e.to_string()))?;
        Ok(Some(pool))
    }

    /// An encapsulation mode as calico-node reads it: case-insensitive, `off` for Never and
    /// `cross-subnet` for CrossSubnet accepted; unset or empty is Never.
    fn mode(&self, what: &str, value: Option<&str>) -> Result<&'static str> {
        let v = value.unwrap_or_default().trim();
        match v.to_ascii_lowercase().as_str() {
            "" | "off" | "never" => Ok(MODE_NEVER),
            "crosssubnet" | "cross-subnet" => Ok(MODE_CROSS_SUBNET),
            "always" => Ok(MODE_ALWAYS),
            _ => Err(bad(
                &self.var(what),
                format!("unrecognized {what} mode '{v}' (expected Never, Always or CrossSubnet)"),
            )),
        }
    }

    /// The block size: an integer in the family's range (20 to 32, 116 to 128); `None` when
    /// unset (the default, or the pool's own size when it is smaller than a block).
    fn block_size(&self) -> Result<Option<u8>> {
        let var = self.var("BLOCK_SIZE");
        let Some(v) = self.block_size.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let n: i64 = v
            .parse()
            .map_err(|_| bad(&var, format!("unable to convert blocksize '{v}' to int")))?;
        let range = match self.family {
            IpFamily::V4 => 20..=32,
            IpFamily::V6 => 116..=128,
        };
        if !range.contains(&n) {
            return Err(bad(
                &var,
                format!(
                    "invalid blocksize {n} for version {} (expected {} to {})",
                    self.family.number(),
                    range.start(),
                    range.end()
                ),
            ));
        }
        Ok(Some(n as u8))
    }
}

/// A boolean as calico-node reads it (`evaluateENVBool`): `false`, `0`, `no`, `n`, `f` are
/// false (any case). calico-node takes any other value for true; only `true`, `1`, `yes`,
/// `y`, `t` are, and anything else stops the program, so a typo cannot turn a setting on.
fn calico_bool(var: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "false" | "0" | "no" | "n" | "f" => Ok(false),
        "true" | "1" | "yes" | "y" | "t" => Ok(true),
        other => Err(bad(var, format!("expected true or false, got '{other}'"))),
    }
}
