//! Docker's plugin wire types, with Docker's exact Go field names.
//!
//! Go decodes JSON case-insensitively and ignores unknown fields; we accept what Docker
//! sends (unknown fields ignored, `null` maps treated as empty) and always emit the exact
//! names Docker's structs use.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// `null` or absent decodes as the default (Docker sends `null` for empty maps).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Options map as Docker sends it: values are arbitrary JSON.
pub type Options = BTreeMap<String, Value>;

/// `Plugin.Activate` answer.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ActivateResponse {
    pub implements: Vec<String>,
}

/// `NetworkDriver.GetCapabilities` answer.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkCapabilities {
    pub scope: String,
    pub connectivity_scope: String,
}

/// One entry of `IPv4Data` / `IPv6Data` in `CreateNetwork`.
#[derive(Deserialize, Serialize, Debug, Default, Clone, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    #[serde(default)]
    pub address_space: String,
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub gateway: String,
    #[serde(default, deserialize_with = "null_default")]
    pub aux_addresses: BTreeMap<String, String>,
}

/// `NetworkDriver.CreateNetwork` request.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub options: Options,
    #[serde(rename = "IPv4Data", default, deserialize_with = "null_default")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default, deserialize_with = "null_default")]
    pub ipv6_data: Vec<IpamData>,
}

/// Requests that carry only a network ID (`DeleteNetwork`, `FreeNetwork`).
#[derive(Deserialize, Debug, Default)]
pub struct NetworkIdRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// `AllocateNetwork` request (swarm only).
#[derive(Deserialize, Debug, Default)]
pub struct AllocateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// `AllocateNetwork` answer.
#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct AllocateNetworkResponse {
    pub options: BTreeMap<String, String>,
}

/// The `Interface` of `CreateEndpoint`.
#[derive(Deserialize, Serialize, Debug, Default, Clone, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInterface {
    #[serde(default)]
    pub address: String,
    #[serde(rename = "AddressIPv6", default)]
    pub address_ipv6: String,
    #[serde(default)]
    pub mac_address: String,
}

/// `NetworkDriver.CreateEndpoint` request.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub interface: EndpointInterface,
    #[serde(default, deserialize_with = "null_default")]
    pub options: Options,
}

/// `CreateEndpoint` answer: only fields Docker left empty may be filled.
#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// Requests naming a network and an endpoint (`Leave`, `DeleteEndpoint`, `EndpointOperInfo`,
/// `RevokeExternalConnectivity`).
#[derive(Deserialize, Debug, Default)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// `ProgramExternalConnectivity` request.
#[derive(Deserialize, Debug, Default)]
pub struct ProgramExternalConnectivityRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Options,
}

/// `EndpointOperInfo` answer.
#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInfoResponse {
    pub value: BTreeMap<String, Value>,
}

/// `NetworkDriver.Join` request.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(default)]
    pub sandbox_key: String,
    #[serde(default, deserialize_with = "null_default")]
    pub options: Options,
}

/// `InterfaceName` in the `Join` answer.
#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    pub src_name: String,
    pub dst_prefix: String,
}

/// One static route in the `Join` answer. `RouteType` 0 = next hop, 1 = connected.
#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct StaticRoute {
    pub destination: String,
    pub route_type: u8,
    pub next_hop: String,
}

/// `Join` answer.
#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct JoinResponse {
    pub interface_name: InterfaceName,
    pub gateway: String,
    #[serde(rename = "GatewayIPv6")]
    pub gateway_ipv6: String,
    pub static_routes: Vec<StaticRoute>,
    pub disable_gateway_service: bool,
}

/// `DiscoverNew` / `DiscoverDelete` request.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct DiscoveryRequest {
    #[serde(default)]
    pub discovery_type: i64,
    #[serde(default)]
    pub discovery_data: Value,
}

/// `IpamDriver.GetCapabilities` answer.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    pub requires_request_replay: bool,
}

/// `GetDefaultAddressSpaces` answer.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AddressSpaces {
    pub local_default_address_space: String,
    pub global_default_address_space: String,
}

/// `RequestPool` request.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPoolRequest {
    #[serde(default)]
    pub address_space: String,
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub sub_pool: String,
    #[serde(default, deserialize_with = "null_default")]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub v6: bool,
}

/// `RequestPool` answer.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub pool: String,
    pub data: BTreeMap<String, String>,
}

/// `ReleasePool` request.
#[derive(Deserialize, Debug, Default)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// `RequestAddress` request.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(default)]
    pub address: String,
    #[serde(default, deserialize_with = "null_default")]
    pub options: BTreeMap<String, String>,
}

/// `RequestAddress` answer.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RequestAddressResponse {
    pub address: String,
    pub data: BTreeMap<String, String>,
}

/// `ReleaseAddress` request.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub address: String,
}

/// The empty success body `{}`.
#[derive(Serialize, Debug, Default)]
pub struct Empty {}
