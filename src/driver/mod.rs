//! Docker's network and IPAM driver calls, on top of the allocator and the dataplane.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use serde_json::Value;

use crate::datastore::Datastore;
use crate::error::{Error, Result};

/// Address space names the IPAM driver reports (the original plugin's names).
pub const LOCAL_ADDRESS_SPACE: &str = "CalicoLocalAddressSpace";
/// See [`LOCAL_ADDRESS_SPACE`].
pub const GLOBAL_ADDRESS_SPACE: &str = "CalicoGlobalAddressSpace";

/// Settings of the driver.
#[derive(Clone, Debug)]
pub struct DriverSettings {
    /// This host's node name.
    pub nodename: String,
    /// `local` or `global` capability scope.
    pub scope: String,
}

/// A `RequestPool` call, decoded.
#[derive(Clone, Debug, Default)]
pub struct PoolRequest {
    /// `--subnet`.
    pub pool: Option<IpNet>,
    /// `--ip-range`.
    pub sub_pool: Option<IpNet>,
    /// `--ipam-opt`.
    pub options: BTreeMap<String, String>,
    /// IPv6 pool.
    pub v6: bool,
}

/// The answer to `RequestPool`.
#[derive(Clone, Debug)]
pub struct PoolGrant {
    /// Our ID for the pool request.
    pub pool_id: String,
    /// What Docker is told the pool is.
    pub pool: IpNet,
    /// Pool data (the dummy gateway).
    pub data: BTreeMap<String, String>,
}

/// A `CreateNetwork` call, decoded.
#[derive(Clone, Debug, Default)]
pub struct NetworkSpec {
    /// Docker's network ID.
    pub network_id: String,
    /// Docker's options map.
    pub options: BTreeMap<String, Value>,
    /// (pool, gateway) per IPv4 data entry.
    pub ipv4_data: Vec<(String, String)>,
    /// (pool, gateway) per IPv6 data entry.
    pub ipv6_data: Vec<(String, String)>,
}

/// A `CreateEndpoint` call, decoded.
#[derive(Clone, Debug, Default)]
pub struct EndpointSpec {
    /// Docker's network ID.
    pub network_id: String,
    /// Docker's endpoint ID.
    pub endpoint_id: String,
    /// IPv4 address from IPAM.
    pub ipv4: Option<IpNet>,
    /// IPv6 address from IPAM.
    pub ipv6: Option<IpNet>,
    /// `--mac-address`.
    pub mac: Option<[u8; 6]>,
    /// Endpoint options.
    pub options: BTreeMap<String, Value>,
}

/// What `Join` answers.
#[derive(Clone, Debug)]
pub struct JoinInfo {
    /// The temporary veth peer Docker moves into the container.
    pub src_name: String,
    /// Container interface name prefix.
    pub dst_prefix: String,
    /// IPv4 gateway.
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 gateway (the host veth's link-local address).
    pub gateway_ipv6: Option<Ipv6Addr>,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || Error::invalid(format!("invalid MAC address '{}'", s.escape_default()));
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// Formats a MAC as lowercase `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The network and IPAM driver.
pub struct Driver {
    store: Arc<dyn Datastore>,
    settings: DriverSettings,
}

fn not_yet(call: &str) -> Error {
    Error::msg(format!(
        "{call}: not implemented yet in this build of calico-libnetwork"
    ))
}

impl Driver {
    /// Builds the driver over a datastore.
    pub fn new(store: Arc<dyn Datastore>, settings: DriverSettings) -> Self {
        Driver { store, settings }
    }

    /// The datastore.
    pub fn store(&self) -> &Arc<dyn Datastore> {
        &self.store
    }

    /// Capability scope.
    pub fn scope(&self) -> &str {
        &self.settings.scope
    }

    /// `IpamDriver.RequestPool`.
    pub async fn request_pool(&self, _req: PoolRequest) -> Result<PoolGrant> {
        Err(not_yet("request pool"))
    }
    /// `IpamDriver.ReleasePool`.
    pub async fn release_pool(&self, _pool_id: &str) -> Result<()> {
        Err(not_yet("release pool"))
    }
    /// `IpamDriver.RequestAddress`.
    pub async fn request_address(
        &self,
        _pool_id: &str,
        _address: Option<IpAddr>,
        _options: &BTreeMap<String, String>,
    ) -> Result<IpNet> {
        Err(not_yet("request address"))
    }
    /// `IpamDriver.ReleaseAddress`.
    pub async fn release_address(&self, _pool_id: &str, _address: IpAddr) -> Result<()> {
        Err(not_yet("release address"))
    }
    /// `NetworkDriver.CreateNetwork`.
    pub async fn create_network(&self, _spec: NetworkSpec) -> Result<()> {
        Err(not_yet("create network"))
    }
    /// `NetworkDriver.DeleteNetwork`.
    pub async fn delete_network(&self, _network_id: &str) -> Result<()> {
        Err(not_yet("delete network"))
    }
    /// `NetworkDriver.CreateEndpoint`; returns a MAC to fill in when Docker left it empty.
    pub async fn create_endpoint(&self, _spec: EndpointSpec) -> Result<Option<String>> {
        Err(not_yet("create endpoint"))
    }
    /// `NetworkDriver.DeleteEndpoint`.
    pub async fn delete_endpoint(&self, _network_id: &str, _endpoint_id: &str) -> Result<()> {
        Err(not_yet("delete endpoint"))
    }
    /// `NetworkDriver.EndpointOperInfo`.
    pub async fn endpoint_oper_info(
        &self,
        _network_id: &str,
        _endpoint_id: &str,
    ) -> Result<BTreeMap<String, Value>> {
        Ok(BTreeMap::new())
    }
    /// `NetworkDriver.Join`.
    pub async fn join(&self, _network_id: &str, _endpoint_id: &str) -> Result<JoinInfo> {
        Err(not_yet("join"))
    }
    /// `NetworkDriver.Leave`.
    pub async fn leave(&self, _network_id: &str, _endpoint_id: &str) -> Result<()> {
        Err(not_yet("leave"))
    }
    /// `NetworkDriver.ProgramExternalConnectivity`.
    pub async fn program_external_connectivity(
        &self,
        _network_id: &str,
        _endpoint_id: &str,
        _options: &BTreeMap<String, Value>,
    ) -> Result<()> {
        Ok(())
    }
    /// `NetworkDriver.RevokeExternalConnectivity`.
    pub async fn revoke_external_connectivity(
        &self,
        _network_id: &str,
        _endpoint_id: &str,
    ) -> Result<()> {
        Ok(())
    }
}
