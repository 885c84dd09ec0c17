//! The plugin's iptables rules: Calico's network semantics on a host with no Felix
//! (standalone mode), and only published ports where Felix runs (felix mode).
//!
//! The plugin keeps, in iptables chains it owns (names start `CALICO-LIBNETWORK-` or `CLN-`,
//! never `cali`, `felix-` or `DOCKER`, which Felix and Docker own):
//! - forwarding for its endpoints accepted despite Docker's `FORWARD DROP` policy;
//! - isolation by profile: an endpoint accepts traffic only from endpoints that share one of
//!   its profiles (what the Profile written to the datastore says: ingress from members,
//!   egress anywhere), plus replies and published ports;
//! - NAT outgoing for pools with `natOutgoing: true`;
//! - published ports (`-p HOSTPORT:PORT`) through DNAT, also from the host via localhost.
//!
//! The whole rule set is rendered from the endpoint/pool state and applied with one
//! `iptables-restore --noflush` per table, so applying is atomic, idempotent, and never
//! duplicates a rule; chains of endpoints that went away are deleted afterwards.
//! In `felix` mode only the published-port NAT is kept: Felix owns filtering and NAT
//! outgoing (its `cali-FORWARD` and `cali-nat-outgoing` chains).
//!
//! - [`render`]: the rule set as `iptables-restore` input, from state alone (no process).
//! - [`apply`]: the [`Applier`] that brings the kernel's tables to a rendering, and the jumps
//!   from the built-in chains.
//! - `remove`: listing and removing every rule the plugin owns, in both iptables variants
//!   ([`list_owned`], [`remove_all`]).
//! - `exec`: running iptables with the xtables-lock wait and a hard deadline.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

mod apply;
mod exec;
mod remove;
mod render;
#[cfg(test)]
mod tests;

pub use apply::{apply, felix_present, Applier};
pub(crate) use exec::output_within;
pub use exec::{SUBPROCESS_DEADLINE, XTABLES_WAIT_SECS};
pub use remove::{list_owned, list_owned_in, owned_lines, remove_all, remove_family, TABLES};
pub use render::{profile_hash, render, Rendered};
// Each part sees the others' crate-private helpers through `use super::*`.
use exec::*;

/// Which firewall the plugin keeps (`CALICO_LIBNETWORK_DATAPLANE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataplaneMode {
    /// `felix` when Felix's rules are on the host at start, else `standalone`.
    Auto,
    /// The plugin keeps forwarding, isolation, NAT outgoing and published ports.
    Standalone,
    /// Felix does policy and NAT outgoing; the plugin keeps only published ports.
    Felix,
    /// The plugin touches no firewall rule (published ports are refused).
    Off,
}

impl DataplaneMode {
    /// Parses `auto`, `standalone`, `felix` or `off`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Some(DataplaneMode::Auto),
            "standalone" => Some(DataplaneMode::Standalone),
            "felix" => Some(DataplaneMode::Felix),
            "off" | "none" => Some(DataplaneMode::Off),
            _ => None,
        }
    }
}

/// Filter chain jumped to from `FORWARD`.
pub const FORWARD_CHAIN: &str = "CALICO-LIBNETWORK-FORWARD";
/// Filter chain jumped to from `INPUT` (IPv4): the loopback guard.
pub const INPUT_CHAIN: &str = "CALICO-LIBNETWORK-INPUT";
/// Filter chain for traffic from workloads.
pub const FROM_WL: &str = "CLN-FROM-WL";
/// Filter chain for traffic to workloads.
pub const TO_WL: &str = "CLN-TO-WL";
/// NAT chain for published ports, jumped to from `PREROUTING` and `OUTPUT`.
pub const DNAT_CHAIN: &str = "CALICO-LIBNETWORK-DNAT";
/// NAT chain jumped to from `POSTROUTING`.
pub const POSTROUTING_CHAIN: &str = "CALICO-LIBNETWORK-SNAT";
/// NAT chain doing NAT outgoing.
pub const NAT_OUT: &str = "CLN-NAT-OUT";
/// Docker's bridge interfaces (its default bridge, and `br-<id>` for each user-defined
/// bridge network): traffic from workloads towards them is left to Docker's chains.
pub const DOCKER_BRIDGES: [&str; 2] = ["docker0", "br-+"];
/// Prefix of every per-endpoint and per-profile chain.
pub const CHAIN_PREFIX: &str = "CLN-";

/// Which rules the plugin keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No Felix: forwarding, isolation, NAT outgoing and published ports.
    Standalone,
    /// Felix runs: only published ports.
    Felix,
}

/// One published port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortMap {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Host address it is published on (`None`: every local address).
    pub host_ip: Option<IpAddr>,
    /// Host port.
    pub host_port: u16,
    /// Container port.
    pub port: u16,
}

/// What the rules need of one endpoint on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointRules {
    /// Host-side interface (`cali...`).
    pub iface: String,
    /// The endpoint's addresses.
    pub ips: Vec<IpAddr>,
    /// Its profiles.
    pub profiles: Vec<String>,
    /// Published ports.
    pub ports: Vec<PortMap>,
    /// The container sandbox (Docker's `SandboxKey`) it is joined to; empty when not known.
    /// A container on several networks is one host to its peers: its addresses count as
    /// members of every profile of its endpoints (see [`render`]).
    pub sandbox: String,
}

/// What the rules need of one IP pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRules {
    /// The pool's CIDR.
    pub cidr: IpNet,
    /// Masquerade traffic leaving it.
    pub nat_outgoing: bool,
}

/// The state rules are rendered from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleState {
    /// Endpoints of this host, by endpoint ID.
    pub endpoints: BTreeMap<String, EndpointRules>,
    /// Every IP pool.
    pub pools: Vec<PoolRules>,
    /// Other hosts route to this host's workloads (`CALICO_LIBNETWORK_ROUTES`): traffic
    /// arriving from outside with a source in a pool is accepted to every workload.
    pub other_hosts: bool,
}

/// IPv4 or IPv6 rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// iptables.
    V4 = 0,
    /// ip6tables.
    V6,
}

impl Family {
    pub(super) fn matches(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
    pub(super) fn host_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
    pub(super) fn restore_bin_in(self, b: Backend) -> &'static str {
        match (b, self) {
            (Backend::Legacy, Family::V4) => "iptables-legacy-restore",
            (Backend::Legacy, Family::V6) => "ip6tables-legacy-restore",
            (Backend::Nft, Family::V4) => "iptables-nft-restore",
            (Backend::Nft, Family::V6) => "ip6tables-nft-restore",
            (Backend::System, Family::V4) => "iptables-restore",
            (Backend::System, Family::V6) => "ip6tables-restore",
        }
    }
    /// The family's command in the backend in use (`iptables-nft`, `ip6tables-legacy`, ...).
    pub fn bin(self) -> &'static str {
        self.bin_in(backend())
    }
    /// The family's command in backend `b`.
    pub fn bin_in(self, b: Backend) -> &'static str {
        match (b, self) {
            (Backend::Legacy, Family::V4) => "iptables-legacy",
            (Backend::Legacy, Family::V6) => "ip6tables-legacy",
            (Backend::Nft, Family::V4) => "iptables-nft",
            (Backend::Nft, Family::V6) => "ip6tables-nft",
            (Backend::System, Family::V4) => "iptables",
            (Backend::System, Family::V6) => "ip6tables",
        }
    }
}

/// The iptables variant the rules are written with: the one the host's other rules (Docker's,
/// kube-proxy's, Felix's) are in, as Felix (`FELIX_IPTABLESBACKEND`) and kube-proxy decide it.
/// Rules written with the other variant would sit in tables the host's own rules never pass
/// through in the expected order (legacy and nf_tables chains are separate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-legacy` (x_tables).
    Legacy,
    /// `iptables-nft` (nf_tables).
    Nft,
    /// Whatever `iptables` is (a system with neither variant's own command).
    System,
}

/// `CALICO_LIBNETWORK_IPTABLES_BACKEND`: a variant, or `Auto` to detect it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// The variant holding more rules (Docker's, ...); with none anywhere, the system's
    /// `iptables`.
    #[default]
    Auto,
    /// Always `iptables-legacy`.
    Legacy,
    /// Always `iptables-nft`.
    Nft,
}

impl BackendChoice {
    /// Parses `auto`, `legacy` or `nft` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(BackendChoice::Auto),
            "legacy" => Some(BackendChoice::Legacy),
            "nft" | "nftables" => Some(BackendChoice::Nft),
            _ => None,
        }
    }
}

static BACKEND_CHOICE: std::sync::OnceLock<BackendChoice> = std::sync::OnceLock::new();
static BACKEND: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();

/// Sets the configured variant (once, at start; later calls change nothing).
pub fn configure_backend(choice: BackendChoice) {
    let _ = BACKEND_CHOICE.set(choice);
}

/// Whether `prog` is a command on `PATH`.
pub(crate) fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// The variants whose commands this host has (the one in use first).
pub fn backends() -> Vec<Backend> {
    let mut out = vec![backend()];
    for b in [Backend::Nft, Backend::Legacy] {
        if !out.contains(&b) && on_path(Family::V4.bin_in(b)) {
            out.push(b);
        }
    }
    out
}

/// Rule lines (`-A`) in one variant's tables (IPv4), or `None` without that variant.
pub(super) fn rule_count(b: Backend) -> Option<usize> {
    if !on_path(Family::V4.bin_in(b)) {
        return None;
    }
    let mut n = 0;
    for table in ["filter", "nat", "mangle"] {
        let out = run(Family::V4.bin_in(b), &["-t", table, "-S"]).ok()?;
        n += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count();
    }
    Some(n)
}

/// The variant in use (detected once; blocking on first use: call it off the async workers).
pub fn backend() -> Backend {
    *BACKEND.get_or_init(|| {
        let choice = BACKEND_CHOICE.get().copied().unwrap_or_default();
        let chosen = match choice {
            BackendChoice::Legacy => Backend::Legacy,
            BackendChoice::Nft => Backend::Nft,
            BackendChoice::Auto => match (rule_count(Backend::Legacy), rule_count(Backend::Nft)) {
                // kube-proxy's and Felix's rule: the variant with more rules is the one the
                // host uses; a tie (nothing anywhere) goes to nf_tables, Debian's default.
                (Some(l), Some(n)) if l > n => Backend::Legacy,
                (_, Some(_)) => Backend::Nft,
                (Some(_), None) => Backend::Legacy,
                (None, None) => Backend::System,
            },
        };
        tracing::info!(backend = ?chosen, configured = ?choice, "iptables variant chosen");
        chosen
    })
}
