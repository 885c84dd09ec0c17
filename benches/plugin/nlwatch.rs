//! The kernel's own route and neighbour notifications, read from a raw netlink socket of the
//! current thread's namespace (`RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH`): the moment a route of
//! the plugin reaches the kernel, without polling (a dump every few ms would compete with the
//! plugin for the 2 cores). Also a one-shot dump of the IPv4 routes, to check the final count.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use ipnet::Ipv4Net;

const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTA_DST: u16 = 1;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NUD_PERMANENT: u16 = 0x80;
const AF_BRIDGE: u8 = 7;

/// One notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NlEvent {
    /// A route added (or replaced: `true`) or deleted (`false`), with its protocol.
    Route {
        added: bool,
        dst: Ipv4Net,
        protocol: u8,
    },
    /// A permanent IPv4 neighbour entry (added: `true`) on interface `ifindex`.
    Neigh {
        added: bool,
        ifindex: i32,
        ip: Ipv4Addr,
    },
    /// A permanent forwarding (FDB) entry for `mac` towards `dst` on interface `ifindex`.
    Fdb {
        added: bool,
        ifindex: i32,
        mac: [u8; 6],
        dst: Option<IpAddr>,
    },
}

/// A netlink socket subscribed to IPv4 route and neighbour changes.
pub(crate) struct NlWatch {
    fd: OwnedFd,
    buf: Vec<u8>,
}

fn socket(groups: u32) -> OwnedFd {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    assert!(
        fd >= 0,
        "netlink socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // 16 MiB: a burst of 1,000 route notifications must not overflow (ENOBUFS). Root may
    // exceed rmem_max with SO_RCVBUFFORCE.
    let size: libc::c_int = 16 << 20;
    // SAFETY: setsockopt reads `size` (a c_int that outlives the call) for its stated length.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    // SAFETY: bind reads `addr` (alive for the call) for its stated length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "netlink bind: {}", std::io::Error::last_os_error());
    fd
}

impl NlWatch {
    /// Subscribes; notifications from now on are queued until read.
    pub(crate) fn open() -> NlWatch {
        NlWatch {
            fd: socket(RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH),
            buf: vec![0; 1 << 20],
        }
    }

    /// The notifications of one datagram, waiting at most `timeout`; empty on timeout.
    /// Panics on ENOBUFS (notifications lost): the figures would be wrong.
    pub(crate) fn next(&mut self, timeout: std::time::Duration) -> Vec<NlEvent> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll reads and writes the one pollfd it is given, which outlives the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            return Vec::new();
        }
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`, which it borrows mutably.
        let len = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                0,
            )
        };
        if len < 0 {
            let e = std::io::Error::last_os_error();
            panic!("netlink notifications: {e} (lost notifications: the timing would be wrong)");
        }
        parse(&self.buf[..len as usize])
    }
}

/// The payloads of the messages a dump request (`ty`, header `family`, a 12-byte rtmsg or
/// ndmsg) answers, on a socket of its own.
fn dump(ty: u16, family: u8) -> Vec<(u16, Vec<u8>)> {
    let fd = socket(0);
    // nlmsghdr (16) + rtmsg / ndmsg (12), NLM_F_REQUEST | NLM_F_DUMP.
    let mut req = [0u8; 28];
    req[0..4].copy_from_slice(&28u32.to_ne_bytes());
    req[4..6].copy_from_slice(&ty.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = family;
    // SAFETY: send reads `req` (alive for the call) for its length.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    assert_eq!(
        sent,
        28,
        "netlink dump request: {}",
        std::io::Error::last_os_error()
    );
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Vec::new();
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        let len = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(
            len >= 0,
            "netlink dump: {}",
            std::io::Error::last_os_error()
        );
        for (t, payload) in messages(&buf[..len as usize]) {
            match t {
                NLMSG_DONE => return out,
                NLMSG_ERROR => panic!("netlink dump {ty}: error {payload:?}"),
                _ => out.push((t, payload.to_vec())),
            }
        }
    }
}

/// Every IPv4 route of the main table with protocol `protocol`.
pub(crate) fn dump_routes(protocol: u8) -> Vec<Ipv4Net> {
    dump(RTM_GETROUTE, libc::AF_INET as u8)
        .into_iter()
        .filter(|(t, p)| *t == RTM_NEWROUTE && p.get(4) == Some(&254))
        .filter_map(|(_, p)| match route(true, &p) {
            Some(NlEvent::Route {
                dst, protocol: pr, ..
            }) if pr == protocol => Some(dst),
            _ => None,
        })
        .collect()
}

/// Permanent IPv4 neighbour entries (address) and FDB entries with a destination (MAC).
pub(crate) fn dump_vteps() -> (Vec<Ipv4Addr>, Vec<[u8; 6]>) {
    let mut ips = Vec::new();
    let mut macs = Vec::new();
    for family in [libc::AF_INET as u8, AF_BRIDGE] {
        for (t, p) in dump(RTM_GETNEIGH, family) {
            match neigh(t == RTM_NEWNEIGH, &p) {
                Some(NlEvent::Neigh { ip, .. }) => ips.push(ip),
                Some(NlEvent::Fdb {
                    mac, dst: Some(_), ..
                }) => macs.push(mac),
                _ => {}
            }
        }
    }
    (ips, macs)
}

/// (type, payload) of each message in a datagram.
fn messages(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
        if len < 16 || len > b.len() {
            break;
        }
        let ty = u16::from_ne_bytes(b[4..6].try_into().unwrap());
        out.push((ty, &b[16..len]));
        let next = (len + 3) & !3;
        b = &b[next.min(b.len())..];
    }
    out
}

/// (type, value) of each attribute.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes(b[0..2].try_into().unwrap()) as usize;
        if len < 4 || len > b.len() {
            break;
        }
        let ty = u16::from_ne_bytes(b[2..4].try_into().unwrap()) & 0x3fff;
        out.push((ty, &b[4..len]));
        let next = (len + 3) & !3;
        b = &b[next.min(b.len())..];
    }
    out
}

fn parse(b: &[u8]) -> Vec<NlEvent> {
    messages(b)
        .into_iter()
        .filter_map(|(ty, p)| match ty {
            RTM_NEWROUTE | RTM_DELROUTE => route(ty == RTM_NEWROUTE, p),
            RTM_NEWNEIGH | RTM_DELNEIGH => neigh(ty == RTM_NEWNEIGH, p),
            _ => None,
        })
        .collect()
}

/// An IPv4 route message (rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
/// type, flags).
fn route(added: bool, p: &[u8]) -> Option<NlEvent> {
    if p.len() < 12 || p[0] != libc::AF_INET as u8 {
        return None;
    }
    let (dst_len, protocol) = (p[1], p[5]);
    let dst = attrs(&p[12..])
        .into_iter()
        .find(|(t, v)| *t == RTA_DST && v.len() == 4)
        .map(|(_, v)| Ipv4Addr::new(v[0], v[1], v[2], v[3]))
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    Some(NlEvent::Route {
        added,
        dst: Ipv4Net::new(dst, dst_len).ok()?,
        protocol,
    })
}

/// A permanent neighbour or FDB message (ndmsg: family, pad, pad, ifindex, state, flags,
/// type).
fn neigh(added: bool, p: &[u8]) -> Option<NlEvent> {
    if p.len() < 12 {
        return None;
    }
    let family = p[0];
    let ifindex = i32::from_ne_bytes(p[4..8].try_into().unwrap());
    let state = u16::from_ne_bytes(p[8..10].try_into().unwrap());
    // A deletion reports the entry's last state; only permanent ones are ours.
    if state & NUD_PERMANENT == 0 {
        return None;
    }
    let a = attrs(&p[12..]);
    let get = |t: u16| a.iter().find(|(ty, _)| *ty == t).map(|(_, v)| *v);
    let ip = |v: &[u8]| -> Option<IpAddr> {
        match v.len() {
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(v).ok()?)),
            _ => None,
        }
    };
    if family == AF_BRIDGE {
        let mac: [u8; 6] = get(NDA_LLADDR)?.try_into().ok()?;
        return Some(NlEvent::Fdb {
            added,
            ifindex,
            mac,
            dst: get(NDA_DST).and_then(ip),
        });
    }
    if family != libc::AF_INET as u8 {
        return None;
    }
    match get(NDA_DST).and_then(ip)? {
        IpAddr::V4(ip) => Some(NlEvent::Neigh { added, ifindex, ip }),
        IpAddr::V6(_) => None,
    }
}
