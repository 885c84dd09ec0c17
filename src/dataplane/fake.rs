//! A recording [`Dataplane`] for tests that check the driver's order of kernel operations
//! without root: it keeps the links it was asked to make in memory, records every call, and
//! fails the calls a test names.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::{Dataplane, EndpointVeth, VethInfo};
use crate::error::{Error, Result};

/// One call, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `setup_endpoint_veth` of this host end.
    Setup(String),
    /// `teardown_endpoint_veth` of this host end.
    Teardown(String),
}

/// The fake: links by name, the calls in order, and the host ends whose set-up or
/// teardown must fail.
#[derive(Default)]
pub struct Recording {
    links: Mutex<BTreeSet<String>>,
    calls: Mutex<Vec<Call>>,
    fail_setup: Mutex<BTreeSet<String>>,
    fail_teardown: Mutex<BTreeSet<String>>,
    interfaces: Mutex<Vec<super::autodetect::Interface>>,
}

impl Recording {
    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The links that exist now.
    pub fn links(&self) -> Vec<String> {
        self.links.lock().unwrap().iter().cloned().collect()
    }

    /// Makes set-up of host end `name` fail (as a kernel error would).
    pub fn fail_setup_of(&self, name: &str) {
        self.fail_setup.lock().unwrap().insert(name.to_string());
    }

    /// The interfaces [`Dataplane::interfaces`] reports from now on (none at first).
    pub fn set_interfaces(&self, interfaces: Vec<super::autodetect::Interface>) {
        *self.interfaces.lock().unwrap() = interfaces;
    }

    /// Makes teardown of host end `name` fail.
    pub fn fail_teardown_of(&self, name: &str) {
        self.fail_teardown.lock().unwrap().insert(name.to_string());
    }
}

#[async_trait::async_trait]
impl Dataplane for Recording {
    async fn setup_endpoint_veth(&self, veth: EndpointVeth) -> Result<VethInfo> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Setup(veth.host_name.clone()));
        if self.fail_setup.lock().unwrap().contains(&veth.host_name) {
            return Err(Error::msg(format!(
                "create veth {}: injected failure",
                veth.host_name
            )));
        }
        let mut links = self.links.lock().unwrap();
        links.insert(veth.host_name.clone());
        links.insert(veth.temp_name.clone());
        Ok(VethInfo {
            container_mac: veth.container_mac.unwrap_or([0x02, 0, 0, 0, 0, 1]),
            host_ipv6_link_local: (!veth.ipv6.is_empty())
                .then(|| super::eui64_link_local(super::HOST_VETH_MAC)),
        })
    }

    async fn teardown_endpoint_veth(&self, host_name: &str) -> Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Teardown(host_name.to_string()));
        if self.fail_teardown.lock().unwrap().contains(host_name) {
            return Err(Error::msg(format!(
                "delete link {host_name}: injected failure"
            )));
        }
        self.links.lock().unwrap().remove(host_name);
        Ok(())
    }

    async fn link_exists(&self, name: &str) -> Result<bool> {
        Ok(self.links.lock().unwrap().contains(name))
    }

    async fn list_veths_marked(&self, prefix: &str) -> Result<Vec<(String, bool)>> {
        Ok(self
            .links
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .map(|l| (l.clone(), true))
            .collect())
    }

    async fn interfaces(&self) -> Result<Vec<super::autodetect::Interface>> {
        Ok(self.interfaces.lock().unwrap().clone())
    }

    /// The first of the interfaces' addresses of the destination's version inside a prefix
    /// that holds the destination (a connected route), as the kernel would pick it.
    async fn source_address_towards(&self, dest: std::net::SocketAddr) -> Result<std::net::IpAddr> {
        let ip = dest.ip();
        self.interfaces
            .lock()
            .unwrap()
            .iter()
            .flat_map(|i| i.addresses.iter())
            .find(|a| a.contains(&ip))
            .map(|a| a.addr())
            .ok_or_else(|| {
                Error::msg(format!(
                    "connect a UDP socket to {dest}: network is unreachable"
                ))
            })
    }
}
