//! This host's address on its Node (`spec.bgp.ipv4Address` / `ipv6Address`), which other
//! hosts route this host's blocks to: found as calico-node finds it (see
//! [`crate::dataplane::autodetect`]), written at start ([`Driver::init`]) and checked again
//! every `AUTODETECT_POLL_INTERVAL`, as calico-node's start-up and its monitor do
//! (`configureAndCheckIPAddressSubnets` and `MonitorIPAddressSubnets`, startup.go).
//!
//! Each version's rule is calico-node's `configureIPsAndSubnets`: `autodetect` writes what
//! the method finds, and keeps the Node's address when it finds nothing; `none` never
//! writes (an address already there stays); an address is written as given (an IPv4 one
//! without a prefix length takes its interface's prefix). A Node with no address has no
//! `bgp` section, as calico-node leaves it.
//!
//! A changed address is first checked against every other Node's (`checkConflictingNodes`):
//! calico-node exits when another Node has it, and would be restarted into the same exit by
//! dockerd's plugin supervision, with every container start failing meanwhile. The plugin
//! instead does not write it, logs an error at every check, and records why on its Node
//! ([`ADDRESS_CONFLICT_ANNOTATION`], which `calico-libnetwork status` reports); like
//! calico-node, it clears its own old address of that version when it was autodetected (the
//! host no longer has it, and another host may be waiting for it). Everything else on the
//! Node (BIRD's and Felix's fields, tunnel addresses, AS number) is kept: the write is a
//! compare-and-swap of the Node as read. A host whose Node another machine has claimed
//! (one node name on two machines) writes nothing to it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::Driver;
use crate::dataplane::autodetect::{self, Interface, IpSetting, IpVersion};
use crate::datastore::resources;
use crate::error::{Error, Result};
use crate::model::keys;
use crate::model::resources::{NodeBgpSpec, NodeSpec};
use crate::model::Node;

/// The annotation on this host's Node that says why its address was not written (another
/// Node has it); absent when nothing is wrong.
pub const ADDRESS_CONFLICT_ANNOTATION: &str = "libnetwork.projectcalico.org/address-conflict";

/// What one check of this host's address found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressCheck {
    /// The Node's IPv4 address after the check (empty: none).
    pub ipv4: String,
    /// The Node's IPv6 address after the check (empty: none).
    pub ipv6: String,
    /// Whether the check wrote the Node.
    pub written: bool,
    /// Why an address was not written ([`ADDRESS_CONFLICT_ANNOTATION`]).
    pub conflict: Option<String>,
    /// For each version that should have an address and has none: why none was found.
    pub not_found: Vec<String>,
}

/// One version's outcome of calico-node's `configureIPsAndSubnets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Planned {
    /// The address to write; `None`: the Node's stays as it is.
    pub(crate) value: Option<String>,
    /// Autodetection found nothing and the Node has no address of this version.
    pub(crate) not_found: Option<String>,
}

/// calico-node's `configureIPsAndSubnets` for one version: what `setting` makes of the
/// Node's `current` address, given what autodetection found (`detected`, asked only for
/// `autodetect`) and the host's interfaces `all`.
pub(crate) fn plan(
    setting: &IpSetting,
    version: IpVersion,
    current: &str,
    detected: Option<&std::result::Result<IpNet, String>>,
    all: &[Interface],
) -> Planned {
    let v = version.number();
    let keep = Planned {
        value: None,
        not_found: None,
    };
    match setting {
        IpSetting::Autodetect => match detected {
            Some(Ok(cidr)) => Planned {
                value: Some(cidr.to_string()),
                not_found: None,
            },
            Some(Err(e)) if current.is_empty() => Planned {
                value: None,
                not_found: Some(e.clone()),
            },
            Some(Err(e)) => {
                tracing::warn!(error = %e, existing = current, "autodetection of the IPv{v} address failed, keeping the Node's");
                keep
            }
            None => keep,
        },
        IpSetting::None => keep,
        IpSetting::Address {
            addr,
            prefix: Some(p),
        } => Planned {
            value: IpNet::new(*addr, *p).ok().map(|n| n.to_string()),
            not_found: None,
        },
        // `GetLocalCIDR` is asked for IP only: IP6 without a prefix length is a /128.
        IpSetting::Address { addr, prefix: None } => {
            let found = match version {
                IpVersion::V4 => autodetect::local_cidr(all, *addr).map(|f| f.cidr),
                IpVersion::V6 => None,
            };
            let cidr = found.unwrap_or_else(|| {
                if version == IpVersion::V4 {
                    tracing::warn!(address = %addr, "no interface has the address of IP: written as a /32");
                }
                IpNet::new(*addr, version.max_prefix()).expect("host prefix")
            });
            Planned {
                value: Some(cidr.to_string()),
                not_found: None,
            }
        }
    }
}

/// An address as calico-node's `ParseCIDROrIP` reads it (`10.0.0.5/24` or `10.0.0.5`):
/// the address alone; `None` when it is neither.
fn parse_cidr_or_ip(s: &str) -> Option<IpAddr> {
    match s.split_once('/') {
        Some(_) => s.parse::<IpNet>().ok().map(|n| n.addr()),
        None => s.parse().ok(),
    }
}

/// Which versions of this host's new addresses another Node already has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Conflicts {
    /// Another Node has the IPv4 address: `(its name, the address)`.
    pub(crate) v4: Option<(String, String)>,
    /// Another Node has the IPv6 address.
    pub(crate) v6: Option<(String, String)>,
}

/// calico-node's `checkConflictingNodes`: which of `ipv4` / `ipv6` (this host's new
/// addresses, empty for none) another of `nodes` has, comparing the addresses without their
/// prefix lengths. A Node without a `bgp` section is skipped; one whose address does not
/// parse makes the check fail, as it makes calico-node's.
pub(crate) fn conflicting_nodes(
    nodes: &[Node],
    host: &str,
    ipv4: &str,
    ipv6: &str,
) -> std::result::Result<Conflicts, String> {
    let ours = |s: &str| -> std::result::Result<Option<IpAddr>, String> {
        if s.is_empty() {
            return Ok(None);
        }
        parse_cidr_or_ip(s)
            .map(Some)
            .ok_or_else(|| format!("this host's address '{s}' does not parse"))
    };
    let (our4, our6) = (ours(ipv4)?, ours(ipv6)?);
    let mut found = Conflicts::default();
    for node in nodes {
        let Some(bgp) = &node.spec.bgp else {
            continue;
        };
        let name = node.name();
        let theirs = |s: &str| -> std::result::Result<Option<IpAddr>, String> {
            if s.is_empty() {
                return Ok(None);
            }
            parse_cidr_or_ip(s)
                .map(Some)
                .ok_or_else(|| format!("Node {name} has an address that does not parse: '{s}'"))
        };
        let (their4, their6) = (theirs(&bgp.ipv4_address)?, theirs(&bgp.ipv6_address)?);
        // This host's own Node: a change is what it looks like, or two hosts under one name.
        if name == host {
            continue;
        }
        if our4.is_some() && their4 == our4 {
            found.v4 = Some((name.to_string(), ipv4.to_string()));
        }
        if our6.is_some() && their6 == our6 {
            found.v6 = Some((name.to_string(), ipv6.to_string()));
        }
    }
    Ok(found)
}

/// `spec.bgp` with `ipv4` and `ipv6` as this host's addresses; `None` when nothing is left in
/// it (calico-node sets an empty `NodeBGPSpec` to nil).
fn with_addresses(bgp: Option<NodeBgpSpec>, ipv4: &str, ipv6: &str) -> Option<NodeBgpSpec> {
    let mut bgp = bgp.unwrap_or_default();
    bgp.ipv4_address = ipv4.to_string();
    bgp.ipv6_address = ipv6.to_string();
    (bgp != NodeBgpSpec::default()).then_some(bgp)
}

impl Driver {
    /// Finds this host's addresses and writes what changed to its Node, keeping every other
    /// field (see the module documentation). Does nothing when the Node does not exist.
    pub async fn check_node_address(&self) -> Result<AddressCheck> {
        let cfg = &self.settings.node_address;
        let host = &self.settings.nodename;
        let key = keys::node_key(host);
        // Two machines under one node name would overwrite each other's address at every
        // check: the Node is the other machine's (see `init::claim_node`).
        if let Some(other) = self.foreign_owner.lock().unwrap().clone() {
            tracing::error!(node = %host, other_machine = %other, "another machine runs under this node name: this host's address is not written to its Node");
            return Ok(AddressCheck::default());
        }
        let versions = [IpVersion::V4, IpVersion::V6];
        let all = if versions.iter().all(|v| cfg.setting(*v) == &IpSetting::None) {
            Vec::new()
        } else {
            self.dataplane
                .interfaces()
                .await
                .map_err(|e| e.context("list this host's interfaces"))?
        };
        let mut detected = Vec::new();
        for v in versions {
            detected.push(if cfg.setting(v) == &IpSetting::Autodetect {
                let found =
                    autodetect::autodetect(self.dataplane.as_ref(), &all, cfg.method(v), v).await;
                if let Ok(f) = &found {
                    tracing::debug!(version = v.number(), interface = %f.interface, address = %f.cidr, method = %cfg.method(v), "autodetected address");
                }
                Some(found.map(|f| f.cidr).map_err(|e| e.to_string()))
            } else {
                None
            });
        }
        for _ in 0..resources::UPDATE_ATTEMPTS {
            let Some(mut node) = resources::get::<NodeSpec>(self.store.as_ref(), &key).await?
            else {
                tracing::debug!(node = %host, "no Node resource: its address is not written");
                return Ok(AddressCheck::default());
            };
            let bgp = node.spec.bgp.clone().unwrap_or_default();
            let current = [bgp.ipv4_address.clone(), bgp.ipv6_address.clone()];
            let mut new = current.clone();
            let mut not_found = Vec::new();
            for (i, v) in versions.into_iter().enumerate() {
                let p = plan(cfg.setting(v), v, &current[i], detected[i].as_ref(), &all);
                if let Some(value) = p.value {
                    new[i] = value;
                }
                if let Some(why) = p.not_found {
                    not_found.push(why);
                }
            }
            let mut conflict = None;
            if new != current && cfg.check_conflicts {
                let nodes = resources::list::<NodeSpec>(self.store.as_ref(), None).await?;
                match conflicting_nodes(&nodes, host, &new[0], &new[1]) {
                    Ok(found) => {
                        let mut why = Vec::new();
                        for (i, (v, clash)) in
                            versions.into_iter().zip([found.v4, found.v6]).enumerate()
                        {
                            let Some((other, address)) = clash else {
                                continue;
                            };
                            why.push(format!(
                                "IPv{} address {address} is already Node {other}'s",
                                v.number()
                            ));
                            // calico-node's clearNodeIPs: an autodetected old address goes.
                            new[i] = if cfg.setting(v) == &IpSetting::Autodetect {
                                String::new()
                            } else {
                                current[i].clone()
                            };
                        }
                        if !why.is_empty() {
                            conflict = Some(format!("{}: not written", why.join("; ")));
                        }
                    }
                    Err(e) => {
                        new = current.clone();
                        conflict = Some(format!(
                            "cannot check this host's new address against the other Nodes ({e}): not written"
                        ));
                    }
                }
            }
            // Without a change nothing is refused: a conflict recorded earlier is over.
            let before = node.clone();
            node.spec.bgp = with_addresses(node.spec.bgp.take(), &new[0], &new[1]);
            let annotations = &mut node.metadata.annotations;
            match &conflict {
                Some(why) => {
                    annotations.insert(ADDRESS_CONFLICT_ANNOTATION.to_string(), why.clone());
                }
                None => {
                    annotations.remove(ADDRESS_CONFLICT_ANNOTATION);
                }
            }
            let report = AddressCheck {
                ipv4: new[0].clone(),
                ipv6: new[1].clone(),
                written: node != before,
                conflict,
                not_found,
            };
            if report.written {
                // A datastore migration lock (datastoreReady false) holds every write.
                self.check_ready().await?;
                match resources::update(self.store.as_ref(), &mut node).await {
                    Ok(_) => {}
                    Err(e) if e.is_conflict() => continue,
                    Err(e) if e.is_not_found() => return Ok(AddressCheck::default()),
                    Err(e) => return Err(e.context(format!("write the address of Node {host}"))),
                }
                if new != current {
                    tracing::info!(node = %host, ipv4 = %new[0], ipv6 = %new[1], old_ipv4 = %current[0], old_ipv6 = %current[1], "wrote this host's address on its Node");
                }
            }
            log_problems(host, &report);
            return Ok(report);
        }
        Err(Error::msg(format!(
            "write the address of Node {host}: still conflicting after {} attempts",
            resources::UPDATE_ATTEMPTS
        )))
    }

    /// Keeps this host's Node current, in the background, returning at once: its address
    /// checked every `AUTODETECT_POLL_INTERVAL` after the check [`Driver::init`] runs (not
    /// when `IP` and `IP6` are both `none`), its tunnel addresses reconciled at once and
    /// then every [`super::tunnel::TUNNEL_INTERVAL`] or `AUTODETECT_POLL_INTERVAL`, whichever
    /// is shorter (see `tunnel`; in `felix` mode calico-node keeps them and the pass changes
    /// nothing), and the plugin's heartbeat renewed at once and then every
    /// [`DriverSettings::heartbeat_interval`](super::DriverSettings::heartbeat_interval)
    /// (see `heartbeat`). One task, so that these
    /// writes of the Node never race each other.
    pub fn keep_node_address_in_background(self: &Arc<Self>) {
        let me = self.clone();
        super::supervise("node-address", move || {
            let driver = me.clone();
            async move { driver.keep_node_current().await }
        });
    }

    /// The loop of [`Driver::keep_node_address_in_background`]; never returns.
    async fn keep_node_current(&self) {
        use tokio::time::Instant;
        let cfg = &self.settings.node_address;
        let address = !(cfg.ipv4 == IpSetting::None && cfg.ipv6 == IpSetting::None);
        // Embedding code may give a zero interval: never spin.
        let floor = Duration::from_millis(100);
        let address_every = cfg.poll_interval.max(floor);
        // calico-node sees a pool change through its watch; the plugin polls, at least this
        // often: 10 s, or the address interval when that is shorter.
        let tunnel_every = super::tunnel::TUNNEL_INTERVAL.min(address_every);
        let heartbeat_every = self.settings.heartbeat_interval.max(floor);
        let start = Instant::now();
        let (mut next_address, mut next_tunnel, mut next_heartbeat) =
            (start + address_every, start, start);
        loop {
            let mut wake = next_tunnel.min(next_heartbeat);
            if address {
                wake = wake.min(next_address);
            }
            tokio::time::sleep_until(wake).await;
            let now = Instant::now();
            if address && now >= next_address {
                if let Err(e) = self.check_node_address().await {
                    tracing::warn!(error = %e, "check this host's address on its Node");
                }
                next_address = Instant::now() + address_every;
            }
            if now >= next_tunnel {
                if let Err(e) = self.reconcile_tunnel_addresses().await {
                    tracing::warn!(error = %e, "reconcile this host's tunnel addresses");
                }
                next_tunnel = Instant::now() + tunnel_every;
            }
            if now >= next_heartbeat {
                if let Err(e) = self.renew_heartbeat().await {
                    tracing::warn!(error = %e, "renew this host's heartbeat on its Node");
                }
                next_heartbeat = Instant::now() + heartbeat_every;
            }
        }
    }
}

/// Logs what keeps this host's Node without the address it should have, at every check.
fn log_problems(host: &str, report: &AddressCheck) {
    if let Some(why) = &report.conflict {
        tracing::error!(node = %host, "{why} (set IP / IP6 or IP_AUTODETECTION_METHOD to this host's own address, or remove the stale Node)");
    }
    for why in &report.not_found {
        tracing::warn!(node = %host, error = %why, "no address for this host's Node: other hosts cannot route to its containers (set IP / IP6 or IP_AUTODETECTION_METHOD)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Vec<Interface> {
        vec![Interface {
            name: "eth0".into(),
            addresses: vec![
                "10.0.0.5/24".parse().unwrap(),
                "fd00::5/64".parse().unwrap(),
            ],
        }]
    }

    fn set(v: &str) -> Planned {
        Planned {
            value: Some(v.to_string()),
            not_found: None,
        }
    }

    const KEEP: Planned = Planned {
        value: None,
        not_found: None,
    };

    fn address(s: &str) -> IpSetting {
        IpSetting::parse(
            s,
            IpVersion::of(&s.split('/').next().unwrap().parse().unwrap()),
        )
        .unwrap()
    }

    // startup.go, configureIPsAndSubnets: autodetect writes what it finds, keeps the Node's
    // when it finds nothing, and is a problem only when the Node has none.
    #[test]
    fn autodetect_writes_what_it_finds_and_keeps_the_nodes_otherwise() {
        let (v4, all) = (IpVersion::V4, host());
        let found: std::result::Result<IpNet, String> = Ok("10.0.0.5/24".parse().unwrap());
        let none: std::result::Result<IpNet, String> = Err("nothing".into());
        let a = &IpSetting::Autodetect;
        assert_eq!(plan(a, v4, "", Some(&found), &all), set("10.0.0.5/24"));
        assert_eq!(
            plan(a, v4, "10.1.1.1/16", Some(&found), &all),
            set("10.0.0.5/24")
        );
        assert_eq!(plan(a, v4, "10.1.1.1/16", Some(&none), &all), KEEP);
        assert_eq!(
            plan(a, v4, "", Some(&none), &all),
            Planned {
                value: None,
                not_found: Some("nothing".into())
            }
        );
    }

    // startup.go, configureIPsAndSubnets: `none` never writes, and leaves an address that
    // is already on the Node.
    #[test]
    fn none_leaves_the_node_as_it_is() {
        for current in ["", "10.1.1.1/16"] {
            assert_eq!(
                plan(&IpSetting::None, IpVersion::V4, current, None, &host()),
                KEEP
            );
        }
    }

    // startup.go, configureIPsAndSubnets with autodetection.GetLocalCIDR (IP only) and
    // parseIPEnvironment: a prefix as given; IPv4 without one takes its interface's, or /32;
    // IPv6 without one is /128.
    #[test]
    fn an_address_is_written_with_the_prefix_calico_node_gives_it() {
        let (v4, v6, all) = (IpVersion::V4, IpVersion::V6, host());
        assert_eq!(
            plan(&address("10.0.0.5/16"), v4, "", None, &all),
            set("10.0.0.5/16")
        );
        assert_eq!(
            plan(&address("10.0.0.5"), v4, "", None, &all),
            set("10.0.0.5/24")
        );
        assert_eq!(
            plan(&address("10.0.0.6"), v4, "", None, &all),
            set("10.0.0.6/32")
        );
        assert_eq!(
            plan(&address("fd00::5"), v6, "", None, &all),
            set("fd00::5/128")
        );
        assert_eq!(
            plan(&address("fd00::5/64"), v6, "", None, &all),
            set("fd00::5/64")
        );
    }

    fn node(name: &str, bgp: Option<(&str, &str)>) -> Node {
        Node::new(
            name,
            NodeSpec {
                bgp: bgp.map(|(v4, v6)| NodeBgpSpec {
                    ipv4_address: v4.into(),
                    ipv6_address: v6.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    // startup.go, checkConflictingNodes: another Node with the same address (prefix aside)
    // clashes; this host's own Node and Nodes without BGP do not; an unparsable address on
    // any Node fails the check.
    #[test]
    fn conflicts_are_found_as_calico_node_finds_them() {
        let nodes = vec![
            node("me", Some(("10.0.0.9/24", ""))),
            node("b", Some(("10.0.0.5/16", ""))),
            node("c", Some(("", "fd00::5"))),
            node("d", None),
        ];
        let found = conflicting_nodes(&nodes, "me", "10.0.0.5/24", "fd00::5/64").unwrap();
        assert_eq!(found.v4, Some(("b".into(), "10.0.0.5/24".into())));
        assert_eq!(found.v6, Some(("c".into(), "fd00::5/64".into())));
        // Our own old address is no clash, nor is an address nobody else has.
        let found = conflicting_nodes(&nodes, "me", "10.0.0.9/24", "").unwrap();
        assert_eq!(found, Conflicts::default());
        let mut bad = nodes.clone();
        bad.push(node("e", Some(("10.0.0.300/24", ""))));
        assert_eq!(
            conflicting_nodes(&bad, "me", "10.0.0.7/24", "").unwrap_err(),
            "Node e has an address that does not parse: '10.0.0.300/24'"
        );
    }

    // startup.go, configureAndCheckIPAddressSubnetsErr and clearNodeIPs: an empty BGP spec
    // becomes nil (no `bgp` in the Node); anything else in it stays.
    #[test]
    fn an_empty_bgp_section_is_left_out() {
        assert_eq!(with_addresses(None, "", ""), None);
        assert_eq!(with_addresses(Some(NodeBgpSpec::default()), "", ""), None);
        let other = NodeBgpSpec {
            ipv4_ipip_tunnel_addr: "192.168.0.1".into(),
            ..Default::default()
        };
        let got = with_addresses(Some(other.clone()), "10.0.0.5/24", "").unwrap();
        assert_eq!(got.ipv4_address, "10.0.0.5/24");
        assert_eq!(got.ipv4_ipip_tunnel_addr, "192.168.0.1");
        assert_eq!(with_addresses(Some(got), "", ""), Some(other));
    }
}
