//! Published ports: Docker's port map, checked and turned into rules and WorkloadEndpoint ports.

use std::net::IpAddr;

use serde_json::Value;

use crate::dataplane::iptables::PortMap;
use crate::error::{Error, Result};
use crate::model::resources::WorkloadEndpointPort;
use crate::model::NumOrString;

/// Whether a program of this host holds the port (a bind on it fails as in use). TCP and UDP
/// only; a bind is one instant system call.
pub(super) fn held_by_host(p: &PortMap) -> bool {
    let ip = p
        .host_ip
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let addr = std::net::SocketAddr::new(ip, p.host_port);
    let res = match p.protocol.as_str() {
        "tcp" => std::net::TcpListener::bind(addr).map(drop),
        "udp" => std::net::UdpSocket::bind(addr).map(drop),
        _ => Ok(()),
    };
    matches!(res, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

/// Docker's protocol numbers in `com.docker.network.portmap`.
pub(super) fn proto_name(n: u64) -> Option<&'static str> {
    match n {
        6 => Some("tcp"),
        17 => Some("udp"),
        132 => Some("sctp"),
        _ => None,
    }
}

/// Decodes Docker's `com.docker.network.portmap` option.
pub fn parse_portmap(options: &std::collections::BTreeMap<String, Value>) -> Result<Vec<PortMap>> {
    let Some(Value::Array(entries)) = options.get("com.docker.network.portmap") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries {
        let num = |k: &str| e.get(k).and_then(Value::as_u64).unwrap_or(0);
        let proto = proto_name(num("Proto")).ok_or_else(|| {
            Error::invalid(format!("publish port: unknown protocol {}", num("Proto")))
        })?;
        let port = num("Port");
        let host_port = num("HostPort");
        if host_port == 0 {
            // Remote drivers get no port from Docker's allocator: say so instead of guessing.
            return Err(Error::invalid(format!(
                "publish port {port}/{proto}: calico networks need an explicit host port (-p HOSTPORT:{port})"
            )));
        }
        if port == 0 || port > 65535 || host_port > 65535 {
            return Err(Error::invalid(format!(
                "publish port {host_port}:{port}: out of range"
            )));
        }
        let host_ip = match e.get("HostIP").and_then(Value::as_str).unwrap_or("") {
            "" | "0.0.0.0" | "::" => None,
            s => Some(s.parse::<IpAddr>().map_err(|_| {
                Error::invalid(format!(
                    "publish port {host_port}:{port}: invalid host address {s:?}"
                ))
            })?),
        };
        out.push(PortMap {
            protocol: proto.to_string(),
            host_ip,
            host_port: host_port as u16,
            port: port as u16,
        });
    }
    Ok(out)
}

/// The WorkloadEndpoint `ports` entries for published ports (Calico's shape).
pub fn wep_ports(ports: &[PortMap]) -> Vec<WorkloadEndpointPort> {
    ports
        .iter()
        .map(|p| WorkloadEndpointPort {
            name: String::new(),
            protocol: NumOrString::Str(p.protocol.to_ascii_uppercase()),
            port: p.port,
            host_port: p.host_port,
            host_ip: p.host_ip.map(|i| i.to_string()).unwrap_or_default(),
        })
        .collect()
}
