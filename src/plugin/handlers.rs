//! One function per plugin method: check the request, call the driver, shape the answer.
//!
//! Every call that writes the datastore first asks [`Driver::check_ready`], and is refused
//! while Calico's `datastoreReady` is false or cannot be read (with the datastore's error),
//! as Calico's CNI plugin refuses ADD and DEL:
//! RequestPool, ReleasePool, RequestAddress, ReleaseAddress, CreateNetwork, DeleteNetwork,
//! CreateEndpoint, Join; DeleteEndpoint still removes what is on this host (Docker forgets
//! the endpoint whatever it hears) but leaves the WorkloadEndpoint. Leave and the read-only
//! calls go on.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::wire::*;
use crate::driver::{Driver, EndpointSpec, NetworkSpec, PoolRequest};
use crate::error::{Error, Result};

/// Docker's network and endpoint IDs are 64 hex characters; nothing else reaches a key,
/// an interface name or a log line.
pub fn check_id(what: &str, id: &str) -> Result<()> {
    crate::model::libnetwork::DockerId::parse(what, id).map(drop)
}

/// Both IDs of an endpoint call.
fn check_endpoint_ids(network_id: &str, endpoint_id: &str) -> Result<()> {
    check_id("NetworkID", network_id)?;
    check_id("EndpointID", endpoint_id)
}

fn parse_cidr(what: &str, s: &str) -> Result<Option<IpNet>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<IpNet>().map(Some).map_err(|_| {
        Error::invalid(format!(
            "invalid {what} '{}': not a CIDR",
            s.escape_default()
        ))
    })
}

fn parse_ip(what: &str, s: &str) -> Result<Option<IpAddr>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    // Docker sends plain addresses; tolerate a prefix length too.
    let ip = s.split('/').next().unwrap_or(s);
    ip.parse::<IpAddr>().map(Some).map_err(|_| {
        Error::invalid(format!(
            "invalid {what} '{}': not an IP address",
            s.escape_default()
        ))
    })
}

pub async fn activate(_: Arc<Driver>, _: Empty0) -> Result<ActivateResponse> {
    Ok(ActivateResponse {
        implements: vec!["NetworkDriver".into(), "IpamDriver".into()],
    })
}

/// `Plugin.Activate` on the IPAM-only socket (`calico-ipam`, the Go plugin's IPAM name).
pub async fn activate_ipam(_: Arc<Driver>, _: Empty0) -> Result<ActivateResponse> {
    Ok(ActivateResponse {
        implements: vec!["IpamDriver".into()],
    })
}

/// Calls without arguments accept any body (Docker sends none; `null` and `{}` are fine).
pub type Empty0 = serde::de::IgnoredAny;

pub async fn network_capabilities(d: Arc<Driver>, _: Empty0) -> Result<NetworkCapabilities> {
    let scope = d.scope().to_string();
    Ok(NetworkCapabilities {
        connectivity_scope: scope.clone(),
        scope,
    })
}

pub async fn create_network(d: Arc<Driver>, req: CreateNetworkRequest) -> Result<Empty> {
    check_id("NetworkID", &req.network_id)?;
    let spec = NetworkSpec {
        network_id: req.network_id,
        options: req.options,
        ipv4_data: req
            .ipv4_data
            .into_iter()
            .map(|x| (x.pool, x.gateway))
            .collect(),
        ipv6_data: req
            .ipv6_data
            .into_iter()
            .map(|x| (x.pool, x.gateway))
            .collect(),
    };
    d.check_ready().await?;
    d.create_network(spec).await?;
    Ok(Empty {})
}

pub async fn delete_network(d: Arc<Driver>, req: NetworkIdRequest) -> Result<Empty> {
    check_id("NetworkID", &req.network_id)?;
    d.check_ready().await?;
    d.delete_network(&req.network_id).await?;
    Ok(Empty {})
}

/// Swarm-manager call; legacy plugins never see it outside swarm.
pub async fn allocate_network(
    _: Arc<Driver>,
    _: AllocateNetworkRequest,
) -> Result<AllocateNetworkResponse> {
    Ok(AllocateNetworkResponse::default())
}

/// Swarm-manager call; nothing to free.
pub async fn free_network(_: Arc<Driver>, _: NetworkIdRequest) -> Result<Empty> {
    Ok(Empty {})
}

pub async fn create_endpoint(
    d: Arc<Driver>,
    req: CreateEndpointRequest,
) -> Result<CreateEndpointResponse> {
    check_endpoint_ids(&req.network_id, &req.endpoint_id)?;
    let ipv4 = parse_cidr("Interface.Address", &req.interface.address)?;
    let ipv6 = parse_cidr("Interface.AddressIPv6", &req.interface.address_ipv6)?;
    let mac = req.interface.mac_address.trim();
    let mac = if mac.is_empty() {
        None
    } else {
        Some(crate::driver::parse_mac(mac)?)
    };
    let spec = EndpointSpec {
        network_id: req.network_id,
        endpoint_id: req.endpoint_id,
        ipv4,
        ipv6,
        mac,
        options: req.options,
    };
    d.check_ready().await?;
    let filled_mac = d.create_endpoint(spec).await?;
    Ok(CreateEndpointResponse {
        interface: filled_mac.map(|m| EndpointInterface {
            mac_address: m,
            ..Default::default()
        }),
    })
}

pub async fn delete_endpoint(d: Arc<Driver>, req: EndpointRequest) -> Result<Empty> {
    check_endpoint_ids(&req.network_id, &req.endpoint_id)?;
    d.delete_endpoint(&req.network_id, &req.endpoint_id).await?;
    Ok(Empty {})
}

pub async fn endpoint_oper_info(
    d: Arc<Driver>,
    req: EndpointRequest,
) -> Result<EndpointInfoResponse> {
    check_endpoint_ids(&req.network_id, &req.endpoint_id)?;
    Ok(EndpointInfoResponse {
        value: d
            .endpoint_oper_info(&req.network_id, &req.endpoint_id)
            .await?,
    })
}

pub async fn join(d: Arc<Driver>, req: JoinRequest) -> Result<JoinResponse> {
    check_endpoint_ids(&req.network_id, &req.endpoint_id)?;
    // Part of a container's start, which Calico's CNI plugin refuses as a whole (ADD); it
    // records the sandbox on the WorkloadEndpoint.
    d.check_ready().await?;
    let j = d
        .join(&req.network_id, &req.endpoint_id, &req.sandbox_key)
        .await?;
    // Docker installs these in the container. RouteType 1 is "connected" (bound to this
    // endpoint's interface, no next hop), 0 is "via NextHop".
    let static_routes = j
        .static_routes
        .iter()
        .map(|r| StaticRoute {
            destination: r.destination.to_string(),
            route_type: if r.next_hop.is_some() { 0 } else { 1 },
            next_hop: r.next_hop.map(|h| h.to_string()).unwrap_or_default(),
        })
        .collect();
    Ok(JoinResponse {
        interface_name: InterfaceName {
            src_name: j.src_name,
            dst_prefix: j.dst_prefix,
        },
        gateway: j.gateway.map(|g| g.to_string()).unwrap_or_default(),
        gateway_ipv6: j.gateway_ipv6.map(|g| g.to_string()).unwrap_or_default(),
        static_routes,
        // With a gateway returned Docker would not add docker_gwbridge anyway; say so explicitly.
        disable_gateway_service: true,
    })
}

pub async fn leave(d: Arc<Driver>, req: EndpointRequest) -> Result<Empty> {
    check_endpoint_ids(&req.network_id, &req.endpoint_id)?;
    d.leave(&req.network_id, &req.endpoint_id).await?;
    Ok(Empty {})
}

pub async fn discover(_: Arc<Driver>, _: DiscoveryRequest) -> Result<Empty> {
    Ok(Empty {})
}

pub async fn program_external_connectivity(
    d: Arc<Driver>,
    req: ProgramExternalConnectivityRequest,
) -> Result<Empty> {
    check_endpoint_ids(&req.network_id, &req.endpoint_id)?;
    d.program_external_connectivity(&req.network_id, &req.endpoint_id, &req.options)
        .await?;
    Ok(Empty {})
}

pub async fn revoke_external_connectivity(d: Arc<Driver>, req: EndpointRequest) -> Result<Empty> {
    check_endpoint_ids(&req.network_id, &req.endpoint_id)?;
    d.revoke_external_connectivity(&req.network_id, &req.endpoint_id)
        .await?;
    Ok(Empty {})
}

pub async fn ipam_capabilities(_: Arc<Driver>, _: Empty0) -> Result<IpamCapabilities> {
    Ok(IpamCapabilities {
        requires_mac_address: false,
        requires_request_replay: false,
    })
}

pub async fn default_address_spaces(_: Arc<Driver>, _: Empty0) -> Result<AddressSpaces> {
    Ok(AddressSpaces {
        local_default_address_space: crate::driver::LOCAL_ADDRESS_SPACE.into(),
        global_default_address_space: crate::driver::GLOBAL_ADDRESS_SPACE.into(),
    })
}

pub async fn request_pool(d: Arc<Driver>, req: RequestPoolRequest) -> Result<RequestPoolResponse> {
    let pool = parse_cidr("Pool (--subnet)", &req.pool)?;
    let sub_pool = parse_cidr("SubPool (--ip-range)", &req.sub_pool)?;
    // It may create a pool for --subnet; and refused here, `docker network create` stops
    // before anything needs undoing.
    d.check_ready().await?;
    let grant = d
        .ipam_driver()
        .request_pool(PoolRequest {
            pool,
            sub_pool,
            options: req.options,
            v6: req.v6,
        })
        .await?;
    Ok(RequestPoolResponse {
        pool_id: grant.pool_id,
        pool: grant.pool.to_string(),
        data: grant.data,
    })
}

pub async fn release_pool(d: Arc<Driver>, req: ReleasePoolRequest) -> Result<Empty> {
    d.check_ready().await?;
    d.ipam_driver().release_pool(&req.pool_id).await?;
    Ok(Empty {})
}

pub async fn request_address(
    d: Arc<Driver>,
    req: RequestAddressRequest,
) -> Result<RequestAddressResponse> {
    let address = parse_ip("Address", &req.address)?;
    d.check_ready().await?;
    let net = d
        .request_address(&req.pool_id, address, &req.options)
        .await?;
    Ok(RequestAddressResponse {
        address: net.to_string(),
        data: Default::default(),
    })
}

pub async fn release_address(d: Arc<Driver>, req: ReleaseAddressRequest) -> Result<Empty> {
    let Some(address) = parse_ip("Address", &req.address)? else {
        return Err(Error::invalid("ReleaseAddress: Address is empty"));
    };
    d.check_ready().await?;
    d.ipam_driver()
        .release_address(&req.pool_id, address)
        .await?;
    Ok(Empty {})
}
