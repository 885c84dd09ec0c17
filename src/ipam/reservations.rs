//! IP reservations as an address filter (libcalico-go `ipam/addr_filter.go`,
//! `reserved.go`): read once per request, then asked per block and per address.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::datastore::{resources, KeyValue};
use crate::model::{AllocationBlock, IpReservationSpec};

/// The reserved CIDRs of every IPReservation.
#[derive(Clone, Debug, Default)]
pub struct Reservations {
    cidrs: Vec<IpNet>,
}

/// An entry of `reservedCIDRs`: a CIDR (host bits dropped, as Go's `net.ParseCIDR` does) or
/// a bare address (a /32 or /128), surrounding spaces ignored (Calico's `ParseCIDROrIP`).
fn parse_entry(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(n.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

impl Reservations {
    /// The reservations in the listed IPReservation keys. An undecodable resource or a
    /// malformed entry is logged and skipped, as Calico's list and `reservedCIDRs` do.
    pub fn from_kvs(kvs: &[KeyValue]) -> Self {
        let mut cidrs = Vec::new();
        for kv in kvs {
            let r = match resources::decode::<IpReservationSpec>(kv) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "skipping an unreadable IP reservation");
                    continue;
                }
            };
            for entry in &r.spec.reserved_cidrs {
                if entry.trim().is_empty() {
                    continue;
                }
                match parse_entry(entry) {
                    Some(n) => cidrs.push(n),
                    None => tracing::warn!(
                        reservation = %r.metadata.name,
                        cidr = %entry,
                        "ignoring a malformed CIDR in an IP reservation"
                    ),
                }
            }
        }
        Reservations { cidrs }
    }

    /// Reservations of exactly these CIDRs.
    #[cfg(test)]
    pub fn of(cidrs: impl IntoIterator<Item = IpNet>) -> Self {
        Reservations {
            cidrs: cidrs.into_iter().map(|n| n.trunc()).collect(),
        }
    }

    /// True when nothing is reserved.
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
    }

    /// Whether `ip` is reserved.
    pub fn matches_ip(&self, ip: &IpAddr) -> bool {
        self.cidrs.iter().any(|c| c.contains(ip))
    }

    /// Whether some address of `net` is reserved.
    pub fn matches_some(&self, net: &IpNet) -> bool {
        self.cidrs
            .iter()
            .any(|c| c.contains(&net.network()) || net.contains(&c.network()))
    }

    /// Whether every address of `net` is reserved: one reservation covers it, or the
    /// reservations inside it together do.
    pub fn matches_whole(&self, net: &IpNet) -> bool {
        if self.cidrs.iter().any(|c| c.contains(net)) {
            return true;
        }
        let inside: Vec<&IpNet> = self.cidrs.iter().filter(|c| net.contains(*c)).collect();
        if inside.is_empty() {
            return false;
        }
        // Count each address once: a reservation nested in another adds nothing.
        let mut covered: u128 = 0;
        for (i, c) in inside.iter().enumerate() {
            let nested = inside
                .iter()
                .enumerate()
                .any(|(j, o)| o.contains(*c) && (**o != **c || j < i));
            if !nested {
                covered = covered.saturating_add(size(c));
            }
        }
        covered >= size(net)
    }
}

impl Reservations {
    /// The free addresses of `block` that are not reserved (Calico's `NumFreeAddresses`).
    pub fn free_in(&self, block: &AllocationBlock) -> usize {
        if self.is_empty() || !self.matches_some(&block.cidr) {
            return block.free_count();
        }
        if self.matches_whole(&block.cidr) {
            return 0;
        }
        block
            .unallocated
            .iter()
            .filter_map(|&o| block.ip_of(o as usize))
            .filter(|ip| !self.matches_ip(ip))
            .count()
    }
}

/// Number of addresses in `n`, saturated at `u128::MAX` for `::/0`.
fn size(n: &IpNet) -> u128 {
    let host_bits = u32::from(n.max_prefix_len() - n.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    // libcalico-go ipam/addr_filter.go (cidrSliceFilter) and reserved.go (reservedCIDRs).
    #[test]
    fn filter_rules() {
        let r = Reservations::of([
            net("10.0.0.1/32"),
            net("10.0.0.32/30"),
            net("10.0.1.0/24"),
            net("fd00::/126"),
        ]);
        assert!(r.matches_ip(&"10.0.0.1".parse().unwrap()));
        assert!(r.matches_ip(&"10.0.0.35".parse().unwrap()));
        assert!(!r.matches_ip(&"10.0.0.36".parse().unwrap()));
        assert!(r.matches_whole(&net("10.0.1.64/26")), "covered by one");
        assert!(!r.matches_whole(&net("10.0.0.0/26")));
        assert!(r.matches_some(&net("10.0.0.0/26")));
        assert!(!r.matches_some(&net("10.0.0.64/26")));
        assert!(r.matches_whole(&net("fd00::/126")));
        assert!(!r.matches_whole(&net("fd00::/125")));
        // Pieces that add up, with a duplicate and a nested one that must not count twice.
        let pieces = Reservations::of([
            net("10.0.2.0/27"),
            net("10.0.2.32/27"),
            net("10.0.2.32/27"),
            net("10.0.2.40/29"),
        ]);
        assert!(pieces.matches_whole(&net("10.0.2.0/26")));
        let short = Reservations::of([
            net("10.0.2.0/27"),
            net("10.0.2.32/28"),
            net("10.0.2.40/29"),
            net("10.0.2.40/29"),
        ]);
        assert!(
            !short.matches_whole(&net("10.0.2.0/26")),
            "16 + 8 + 32 < 64"
        );
        assert!(!Reservations::default().matches_whole(&net("10.0.0.0/26")));
    }

    #[test]
    fn entries_parse_like_calico() {
        assert_eq!(parse_entry(" 10.0.0.5 "), Some(net("10.0.0.5/32")));
        assert_eq!(parse_entry("10.0.0.5/30"), Some(net("10.0.0.4/30")));
        assert_eq!(parse_entry("cafe::1"), Some(net("cafe::1/128")));
        assert_eq!(parse_entry("nonsense"), None);
        let kv = KeyValue {
            key: "/calico/resources/v3/projectcalico.org/ipreservations/r".into(),
            value: br#"{"kind":"IPReservation","apiVersion":"projectcalico.org/v3","metadata":{"name":"r"},"spec":{"reservedCIDRs":["10.0.0.5","bad"," "]}}"#.to_vec(),
            revision: 3,
        };
        let broken = KeyValue {
            key: "/calico/resources/v3/projectcalico.org/ipreservations/x".into(),
            value: b"{".to_vec(),
            revision: 4,
        };
        let r = Reservations::from_kvs(&[kv, broken]);
        assert_eq!(r.cidrs, vec![net("10.0.0.5/32")]);
    }
}
