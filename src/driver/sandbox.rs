//! What Join gave each Calico endpoint of one container sandbox (network namespace), so a
//! container on several Calico networks gets routes Docker can install side by side.
//!
//! Every Calico endpoint routes through a link-local gateway that exists nowhere: the host
//! veth has `proxy_arp` on, and the kernel answers ARP on it for any address the host routes
//! out of another interface (169.254.1.0/24 goes out of the host's default route), with the
//! veth's MAC. So any 169.254.1.N works as a gateway, and each endpoint of a sandbox gets its
//! own: the first 169.254.1.1 (Calico's usual one), the next 169.254.1.2, and so on. Were
//! they all 169.254.1.1, Docker would add the connected route `169.254.1.1/32` a second time
//! on `eth1` and fail with "file exists" (calicoctl #1031, #1069).
//!
//! Kept in memory only and dropped with the sandbox's last endpoint (Leave or
//! DeleteEndpoint). After a plugin restart the table starts empty: a container that joins
//! one more network then gets 169.254.1.1 again, as before this existed.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use ipnet::IpNet;

use crate::error::{Error, Result};

/// One route Docker installs in the container (Join's `StaticRoutes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRoute {
    /// Destination CIDR.
    pub destination: IpNet,
    /// `None`: connected (RouteType 1, bound to the endpoint's interface); `Some`: via this
    /// next hop (RouteType 0).
    pub next_hop: Option<IpAddr>,
}

/// The gateway and routes of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinPlan {
    /// IPv4 gateway (`None` without IPv4).
    pub gateway: Option<Ipv4Addr>,
    /// Routes for Docker to install, in order.
    pub routes: Vec<ContainerRoute>,
}

#[derive(Clone, Debug)]
struct Member {
    endpoint_id: String,
    gateway: Option<Ipv4Addr>,
    destinations: Vec<IpNet>,
}

/// Sandbox key → its endpoints, in join order.
#[derive(Default)]
pub struct Sandboxes {
    inner: Mutex<HashMap<String, Vec<Member>>>,
}

/// The `n`th gateway (1-based): 169.254.1.n.
fn nth_gateway(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 1, n)
}

impl Sandboxes {
    /// Records `endpoint_id` joining `sandbox` and says which gateway and routes it gets.
    ///
    /// - `ipv4`: the endpoint has IPv4; it gets the lowest 169.254.1.N no other endpoint of
    ///   the sandbox has, a connected `/32` route to it, and a route via it to each of
    ///   `pools` (the network's own IPv4 pools; pass none for "all of Calico's pools") that
    ///   no other endpoint of the sandbox routes already.
    /// - `gateway_v6`: the host veth's link-local, if the endpoint has IPv6. Every host veth
    ///   has the same MAC and so usually the same link-local; the connected `/128` route to
    ///   it is given only if no other endpoint of the sandbox has it (Docker reaches a
    ///   link-local gateway on any interface through that interface's `fe80::/64` anyway).
    ///   No next-hop routes for IPv6 pools: a shared link-local cannot pick the interface.
    ///
    /// An empty `sandbox` (an old Docker that sends none) is not recorded: 169.254.1.1.
    /// Joining again (Docker retrying) replaces the endpoint's earlier record.
    pub fn join(
        &self,
        sandbox: &str,
        endpoint_id: &str,
        ipv4: bool,
        gateway_v6: Option<Ipv6Addr>,
        pools: &[IpNet],
    ) -> Result<JoinPlan> {
        let mut all = self.inner.lock().unwrap();
        let mut none = Vec::new();
        let others: &mut Vec<Member> = if sandbox.is_empty() {
            &mut none
        } else {
            all.entry(sandbox.to_string()).or_default()
        };
        others.retain(|m| m.endpoint_id != endpoint_id);
        let taken = |d: &IpNet| others.iter().any(|m| m.destinations.contains(d));
        let mut routes = Vec::new();
        let gateway = if ipv4 {
            let gw = (1..=254u8)
                .map(nth_gateway)
                .find(|g| others.iter().all(|m| m.gateway != Some(*g)))
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "join endpoint {}: the container already has 254 Calico IPv4 endpoints",
                        &endpoint_id[..endpoint_id.len().min(12)]
                    ))
                })?;
            routes.push(ContainerRoute {
                destination: IpNet::from(IpAddr::V4(gw)),
                next_hop: None,
            });
            for pool in pools.iter().filter(|p| matches!(p, IpNet::V4(_))) {
                let pool = pool.trunc();
                if pool.prefix_len() == 0
                    || taken(&pool)
                    || routes.iter().any(|r| r.destination == pool)
                {
                    continue;
                }
                routes.push(ContainerRoute {
                    destination: pool,
                    next_hop: Some(IpAddr::V4(gw)),
                });
            }
            Some(gw)
        } else {
            None
        };
        if let Some(ll) = gateway_v6 {
            let dest = IpNet::from(IpAddr::V6(ll));
            if !taken(&dest) {
                routes.push(ContainerRoute {
                    destination: dest,
                    next_hop: None,
                });
            }
        }
        if !sandbox.is_empty() {
            others.push(Member {
                endpoint_id: endpoint_id.to_string(),
                gateway,
                destinations: routes.iter().map(|r| r.destination).collect(),
            });
        }
        Ok(JoinPlan { gateway, routes })
    }

    /// Forgets `endpoint_id` (Leave, DeleteEndpoint), and its sandbox with its last
    /// endpoint. Unknown endpoints are fine.
    pub fn leave(&self, endpoint_id: &str) {
        let mut all = self.inner.lock().unwrap();
        all.retain(|_, members| {
            members.retain(|m| m.endpoint_id != endpoint_id);
            !members.is_empty()
        });
    }

    /// How many sandboxes are recorded (for tests and logs).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().len()
    }

    /// Whether no sandbox is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SB: &str = "/var/run/docker/netns/0123456789ab";

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn connected(s: &str) -> ContainerRoute {
        ContainerRoute {
            destination: net(s),
            next_hop: None,
        }
    }

    fn via(s: &str, gw: &str) -> ContainerRoute {
        ContainerRoute {
            destination: net(s),
            next_hop: Some(gw.parse().unwrap()),
        }
    }

    #[test]
    fn distinct_gateways_per_sandbox() {
        let s = Sandboxes::default();
        let a = s.join(SB, "ep-a", true, None, &[net("0.0.0.0/0")]).unwrap();
        assert_eq!(a.gateway, Some(Ipv4Addr::new(169, 254, 1, 1)));
        assert_eq!(a.routes, vec![connected("169.254.1.1/32")]);
        let b = s
            .join(SB, "ep-b", true, None, &[net("10.82.0.0/24")])
            .unwrap();
        assert_eq!(b.gateway, Some(Ipv4Addr::new(169, 254, 1, 2)));
        assert_eq!(
            b.routes,
            vec![
                connected("169.254.1.2/32"),
                via("10.82.0.0/24", "169.254.1.2")
            ]
        );
        // Another sandbox starts again at .1.
        let c = s.join("/other", "ep-c", true, None, &[]).unwrap();
        assert_eq!(c.gateway, Some(Ipv4Addr::new(169, 254, 1, 1)));
        assert_eq!(s.len(), 2);
        // A freed gateway is reused; the pool route is not given twice.
        s.leave("ep-a");
        let d = s
            .join(SB, "ep-d", true, None, &[net("10.82.0.0/24")])
            .unwrap();
        assert_eq!(d.gateway, Some(Ipv4Addr::new(169, 254, 1, 1)));
        assert_eq!(d.routes, vec![connected("169.254.1.1/32")]);
        // Retrying a Join keeps the endpoint's gateway.
        let b2 = s
            .join(SB, "ep-b", true, None, &[net("10.82.0.0/24")])
            .unwrap();
        assert_eq!(b2, b);
        for ep in ["ep-b", "ep-c", "ep-d"] {
            s.leave(ep);
        }
        assert!(s.is_empty());
    }

    #[test]
    fn shared_ipv6_link_local_route_once() {
        let s = Sandboxes::default();
        let ll: Ipv6Addr = "fe80::ecee:eeff:feee:eeee".parse().unwrap();
        let a = s
            .join(SB, "ep-a", true, Some(ll), &[net("fd82::/64")])
            .unwrap();
        assert_eq!(
            a.routes,
            vec![
                connected("169.254.1.1/32"),
                connected("fe80::ecee:eeff:feee:eeee/128")
            ]
        );
        let b = s.join(SB, "ep-b", false, Some(ll), &[]).unwrap();
        assert_eq!(b.gateway, None);
        assert!(b.routes.is_empty(), "{b:?}");
    }

    #[test]
    fn no_sandbox_key_is_not_recorded() {
        let s = Sandboxes::default();
        for ep in ["a", "b"] {
            let p = s.join("", ep, true, None, &[]).unwrap();
            assert_eq!(p.gateway, Some(Ipv4Addr::new(169, 254, 1, 1)));
        }
        assert!(s.is_empty());
    }
}
