//! Standalone mode: Calico's network semantics on a host with no Felix.
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
//! outgoing (firewall-notes §6).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use tracing::{debug, warn};

use crate::error::{Error, Result};

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
    fn matches(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
    fn host_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
    fn restore_bin_in(self, b: Backend) -> &'static str {
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
fn on_path(prog: &str) -> bool {
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
fn rule_count(b: Backend) -> Option<usize> {
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

/// A short stable name part for a profile (chain names are limited to 28 characters): a
/// 64-bit FNV-1a hash, so two profiles of one host sharing a chain (and so their members)
/// is out of reach in practice (32 bits would collide among ~65,000 profiles by chance).
fn profile_chain(profile: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in profile.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{CHAIN_PREFIX}PRO-{h:016x}")
}

fn endpoint_chain(iface: &str) -> String {
    // `cali` + 11 characters: unique per endpoint on this host.
    format!("{CHAIN_PREFIX}TW-{}", iface.trim_start_matches("cali"))
}

/// The filter and nat tables, as `iptables-restore --noflush` input, and every chain they
/// declare (to tell which old chains to delete).
pub struct Rendered {
    /// `*filter ... COMMIT` (empty in felix mode).
    pub filter: String,
    /// `*nat ... COMMIT`.
    pub nat: String,
    /// Chains declared, per table.
    pub chains: BTreeMap<&'static str, BTreeSet<String>>,
}

/// Renders the rules of one family.
pub fn render(state: &RuleState, family: Family, mode: Mode) -> Rendered {
    let mut chains: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    let eps: Vec<(&String, &EndpointRules, Vec<&IpAddr>)> = state
        .endpoints
        .iter()
        .map(|(id, e)| {
            (
                id,
                e,
                e.ips
                    .iter()
                    .filter(|ip| family.matches(ip))
                    .collect::<Vec<_>>(),
            )
        })
        // An endpoint with no address of this family has no rules in it either, so adding
        // an IPv4-only endpoint leaves the IPv6 rule set unchanged (and not re-applied).
        .filter(|(_, _, ips)| !ips.is_empty())
        .collect();
    let len = family.host_len();

    // ---- filter
    let mut filter = String::new();
    let mut decl = Vec::new();
    let mut rules = Vec::new();
    if family == Family::V4 {
        // Host veths have route_localnet=1 (for published ports reached via localhost), so
        // the kernel would deliver a frame a workload addresses to 127.0.0.0/8 to the
        // host's loopback-only services (CVE-2020-8558). Only replies, and traffic a rule
        // DNATed there on purpose, may arrive from a workload with such a destination.
        decl.push(INPUT_CHAIN.to_string());
        rules.push(format!(
            "-A {INPUT_CHAIN} -d 127.0.0.0/8 -i cali+ -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        ));
    }
    if mode == Mode::Standalone {
        decl.extend([
            FORWARD_CHAIN.to_string(),
            FROM_WL.to_string(),
            TO_WL.to_string(),
        ]);
        // Replies first; INVALID never reaches a workload.
        rules.push(format!(
            "-A {FORWARD_CHAIN} -i cali+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ));
        rules.push(format!(
            "-A {FORWARD_CHAIN} -o cali+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ));
        rules.push(format!(
            "-A {FORWARD_CHAIN} -i cali+ -m conntrack --ctstate INVALID -j DROP"
        ));
        rules.push(format!(
            "-A {FORWARD_CHAIN} -o cali+ -m conntrack --ctstate INVALID -j DROP"
        ));
        // From a workload: its own addresses only (RETURN), anything else is spoofed.
        rules.push(format!("-A {FORWARD_CHAIN} -i cali+ -j {FROM_WL}"));
        // To a workload: allowed by its profiles, or a published port.
        rules.push(format!("-A {FORWARD_CHAIN} -o cali+ -j {TO_WL}"));
        // Towards Docker's own bridges, Docker's chains decide (its isolation between
        // networks, `--internal`, unpublished ports); the names are Docker's defaults.
        for bridge in DOCKER_BRIDGES {
            rules.push(format!("-A {FORWARD_CHAIN} -i cali+ -o {bridge} -j RETURN"));
        }
        // Left: workload to a non-workload destination. Profiles allow all egress.
        rules.push(format!("-A {FORWARD_CHAIN} -i cali+ -j ACCEPT"));

        for (_, e, ips) in &eps {
            for ip in ips {
                rules.push(format!(
                    "-A {FROM_WL} -i {} -s {ip}/{len} -j RETURN",
                    e.iface
                ));
            }
        }
        // Like Felix: an unknown cali interface, or a spoofed source, is dropped.
        rules.push(format!("-A {FROM_WL} -j DROP"));

        // Published ports: Docker's own bridge does the same with ctstate DNAT.
        rules.push(format!("-A {TO_WL} -m conntrack --ctstate DNAT -j ACCEPT"));
        let mut members: BTreeMap<&str, Vec<&IpAddr>> = BTreeMap::new();
        for (_, e, ips) in &eps {
            for p in &e.profiles {
                members
                    .entry(p.as_str())
                    .or_default()
                    .extend(ips.iter().copied());
            }
        }
        for (_, e, _) in &eps {
            let chain = endpoint_chain(&e.iface);
            rules.push(format!("-A {TO_WL} -o {} -j {chain}", e.iface));
            for p in &e.profiles {
                rules.push(format!("-A {chain} -j {}", profile_chain(p)));
            }
            rules.push(format!("-A {chain} -j DROP"));
            decl.push(chain);
        }
        rules.push(format!("-A {TO_WL} -j DROP"));
        for (p, ips) in &members {
            let chain = profile_chain(p);
            // Ingress from the profile's members (the `has(<profile>)` selector).
            for ip in ips {
                rules.push(format!("-A {chain} -s {ip}/{len} -j ACCEPT"));
            }
            decl.push(chain);
        }
    }
    // In felix mode Felix owns filtering: only the loopback guard is ours.
    decl.sort();
    decl.dedup();
    if !decl.is_empty() {
        filter.push_str("*filter\n");
        for c in &decl {
            filter.push_str(&format!(":{c} - [0:0]\n"));
        }
        for r in rules {
            filter.push_str(&r);
            filter.push('\n');
        }
        filter.push_str("COMMIT\n");
    }
    chains.insert("filter", decl.into_iter().collect());

    // ---- nat
    let mut decl = vec![DNAT_CHAIN.to_string(), POSTROUTING_CHAIN.to_string()];
    let mut rules = Vec::new();
    for (_, e, ips) in &eps {
        let Some(target) = ips.first() else { continue };
        for p in &e.ports {
            if let Some(hip) = &p.host_ip {
                if !family.matches(hip) {
                    continue;
                }
            }
            // Every local address, but of the loopback ones only localhost itself: the host's
            // other loopback services (systemd-resolved's 127.0.0.53, ...) stay its own.
            let dsts: Vec<String> = match (p.host_ip, family) {
                (Some(h), _) => vec![format!(" -d {h}/{len}")],
                (None, Family::V4) => vec![
                    " ! -d 127.0.0.0/8".to_string(),
                    " -d 127.0.0.1/32".to_string(),
                ],
                (None, Family::V6) => vec![String::new()],
            };
            let to = match target {
                IpAddr::V4(a) => format!("{a}:{}", p.port),
                IpAddr::V6(a) => format!("[{a}]:{}", p.port),
            };
            for dst in dsts {
                rules.push(format!(
                    "-A {DNAT_CHAIN}{dst} -p {proto} -m {proto} --dport {hp} -j DNAT --to-destination {to}",
                    proto = p.protocol,
                    hp = p.host_port
                ));
            }
        }
    }
    if family == Family::V4 {
        // Published ports reached via localhost: the source 127.x must not leave on a veth.
        rules.push(format!(
            "-A {POSTROUTING_CHAIN} -o cali+ -s 127.0.0.0/8 -j MASQUERADE"
        ));
    }
    if mode == Mode::Standalone {
        let pools: Vec<&PoolRules> = state
            .pools
            .iter()
            .filter(|p| family.matches(&p.cidr.addr()))
            .collect();
        if pools.iter().any(|p| p.nat_outgoing) {
            decl.push(NAT_OUT.to_string());
            for p in pools.iter().filter(|p| p.nat_outgoing) {
                rules.push(format!("-A {POSTROUTING_CHAIN} -s {} -j {NAT_OUT}", p.cidr));
            }
            // Destinations inside any Calico pool keep their source address.
            for p in &pools {
                rules.push(format!("-A {NAT_OUT} -d {} -j RETURN", p.cidr));
            }
            rules.push(format!("-A {NAT_OUT} -j MASQUERADE"));
        }
    }
    let mut nat = String::from("*nat\n");
    for c in &decl {
        nat.push_str(&format!(":{c} - [0:0]\n"));
    }
    for r in rules {
        nat.push_str(&r);
        nat.push('\n');
    }
    nat.push_str("COMMIT\n");
    chains.insert("nat", decl.into_iter().collect());
    Rendered {
        filter,
        nat,
        chains,
    }
}

/// How long an iptables command waits for the xtables lock (`-w`) before giving up.
pub const XTABLES_WAIT_SECS: &str = "5";
/// Past this, a firewall subprocess is killed: no caller waits on iptables for ever.
pub const SUBPROCESS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `cmd` to completion, feeding it `input`, and kills it past [`SUBPROCESS_DEADLINE`].
/// Waiting (and feeding the input) happens on a thread of its own, so a child that blocks
/// never blocks the caller beyond the deadline.
fn output_within(cmd: Command, input: Option<String>) -> Result<std::process::Output> {
    output_within_deadline(cmd, input, SUBPROCESS_DEADLINE)
}

fn output_within_deadline(
    mut cmd: Command,
    input: Option<String>,
    deadline: std::time::Duration,
) -> Result<std::process::Output> {
    let what = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::msg(format!("run {what}: {e}")))?;
    let pid = child.id();
    let stdin = child.stdin.take();
    let (tx, rx) = std::sync::mpsc::channel();
    if let (Some(mut stdin), Some(input)) = (stdin, input) {
        // Fed on a thread of its own, while the output is read: a child that writes before
        // it has read all its input never deadlocks against us. A write error shows in the
        // exit status and stderr.
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.map_err(|e| Error::io(format!("wait for {what}"), e)),
        Err(_) => {
            // SAFETY: `pid` is our unreaped child (the waiting thread has not returned), so
            // the number cannot have been reused.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = rx.recv();
            Err(Error::Timeout {
                what: format!("{what} (killed; the xtables lock held too long?)"),
                after: deadline,
            })
        }
    }
}

fn run(bin: &str, args: &[&str]) -> Result<std::process::Output> {
    // -w N: wait for the xtables lock (dockerd or firewalld may hold it), but not for ever.
    let mut cmd = Command::new(bin);
    cmd.args(["-w", XTABLES_WAIT_SECS]).args(args);
    output_within(cmd, None)
}

fn restore(family: Family, input: &str) -> Result<()> {
    restore_in(backend(), family, input)
}

fn restore_in(b: Backend, family: Family, input: &str) -> Result<()> {
    let mut cmd = Command::new(family.restore_bin_in(b));
    cmd.args(["-w", XTABLES_WAIT_SECS, "--noflush"]);
    let out = output_within(cmd, Some(input.to_string()))?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "apply rules with {}: {}",
            family.restore_bin_in(b),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Inserts `rule` at the top of `chain` in `table` unless it is there already.
fn ensure_jump(family: Family, table: &str, chain: &str, rule: &[&str]) -> Result<()> {
    let mut check = vec!["-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if run(family.bin(), &check)?.status.success() {
        return Ok(());
    }
    let pos = jump_position(family, table, chain)?.to_string();
    let mut insert = vec!["-t", table, "-I", chain, pos.as_str()];
    insert.extend_from_slice(rule);
    let out = run(family.bin(), &insert)?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "insert jump into {table} {chain}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Where our jump goes in `chain`: first, except in filter `FORWARD`, where it goes just
/// after Docker's jump to `DOCKER-USER` when there is one, so that the administrator's
/// rules there apply to containers on calico networks too (Docker puts that jump first,
/// and puts it back first when it restarts).
fn jump_position(family: Family, table: &str, chain: &str) -> Result<usize> {
    if (table, chain) != ("filter", "FORWARD") {
        return Ok(1);
    }
    let out = run(family.bin(), &["-t", table, "-S", chain])?;
    let rules: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect();
    Ok(rules
        .iter()
        .position(|l| l.ends_with("-j DOCKER-USER"))
        .map_or(1, |i| i + 2))
}

fn remove_jump(family: Family, table: &str, chain: &str, rule: &[&str]) {
    let mut del = vec!["-t", table, "-D", chain];
    del.extend_from_slice(rule);
    // Delete every copy (a jump may have been inserted twice by an old version).
    for _ in 0..8 {
        match run(family.bin(), &del) {
            Ok(o) if o.status.success() => continue,
            _ => break,
        }
    }
}

/// Our chains present in `table`.
fn our_chains(family: Family, table: &str) -> Result<BTreeSet<String>> {
    let out = run(family.bin(), &["-t", table, "-S"])?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "list {table} chains: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|c| c.starts_with(CHAIN_PREFIX) || c.starts_with("CALICO-LIBNETWORK-"))
        .map(str::to_string)
        .collect())
}

const JUMP_FORWARD: &[&str] = &["-j", FORWARD_CHAIN];
const JUMP_INPUT: &[&str] = &["-j", INPUT_CHAIN];
const JUMP_DNAT: &[&str] = &["-m", "addrtype", "--dst-type", "LOCAL", "-j", DNAT_CHAIN];
const JUMP_POSTROUTING: &[&str] = &["-j", POSTROUTING_CHAIN];

/// The jumps into our chains that `mode` keeps in `family`: (table, chain, rule), each
/// inserted first in its chain:
/// - `INPUT` (IPv4): the loopback guard, before anything that accepts (an administrator's
///   `-i cali+ -j ACCEPT`, firewalld's zones);
/// - `FORWARD` (standalone): Docker's FORWARD policy is DROP and its rules only name its
///   bridges, so our accepts must be reached from filter FORWARD itself (an nft table of our
///   own cannot undo iptables' DROP); Docker <=27 re-inserts DOCKER-USER above us, which
///   only RETURNs, so that is harmless;
/// - `PREROUTING` and `OUTPUT`: published ports from outside and from this host;
/// - `POSTROUTING`: our masquerade decisions precede Docker's.
fn jumps(family: Family, mode: Mode) -> Vec<(&'static str, &'static str, &'static [&'static str])> {
    let mut out = Vec::new();
    if family == Family::V4 {
        out.push(("filter", "INPUT", JUMP_INPUT));
    }
    if mode == Mode::Standalone {
        out.push(("filter", "FORWARD", JUMP_FORWARD));
    }
    out.push(("nat", "PREROUTING", JUMP_DNAT));
    out.push(("nat", "OUTPUT", JUMP_DNAT));
    out.push(("nat", "POSTROUTING", JUMP_POSTROUTING));
    out
}

/// How long jumps into our chains are trusted before being checked again (a firewalld
/// reload or an administrator may remove them behind our back).
const JUMP_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// One table's rules: chain → rule bodies (what follows `-A CHAIN `), in order.
type TableRules = BTreeMap<String, Vec<String>>;

/// The chains and rules of `iptables-restore` input as rendered by [`render`].
fn parse_table(text: &str) -> TableRules {
    let mut t = TableRules::new();
    for l in text.lines() {
        if let Some(decl) = l.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or(decl);
            t.entry(chain.to_string()).or_default();
        } else if let Some(rest) = l.strip_prefix("-A ") {
            let (chain, body) = rest.split_once(' ').unwrap_or((rest, ""));
            t.entry(chain.to_string())
                .or_default()
                .push(body.to_string());
        }
    }
    t
}

/// If `new` is `old` with rules added (anywhere), the 1-based positions, in order, at
/// which to insert them; `None` when a rule of `old` is missing from `new`.
fn insertions<'a>(old: &[String], new: &'a [String]) -> Option<Vec<(usize, &'a str)>> {
    let mut j = 0;
    let mut out = Vec::new();
    for (i, r) in new.iter().enumerate() {
        if j < old.len() && old[j] == *r {
            j += 1;
        } else {
            // Inserted at i+1, the chain reads new[..=i] followed by old[j..].
            out.push((i + 1, r.as_str()));
        }
    }
    (j == old.len()).then_some(out)
}

/// `iptables-restore --noflush` input turning `old` into `new` in `table`, touching only
/// what changed: new chains are created, rules only added to a chain are inserted in place,
/// a chain that lost rules is rewritten, and chains no longer wanted are deleted (last, once
/// nothing refers to them). Empty when nothing changed.
///
/// Kernel quirk: an nf_tables transaction that removes rules waits for an RCU grace period
/// (about 16 ms here), one that only adds rules does not (about 1 ms), so a new endpoint
/// costs little; removals are paid once per transaction.
fn table_delta(table: &str, old: &TableRules, new: &TableRules) -> String {
    let mut decl: Vec<&str> = Vec::new();
    let mut cmds: Vec<String> = Vec::new();
    for (chain, rules) in new {
        match old.get(chain) {
            Some(o) if o == rules => {}
            Some(o) => match insertions(o, rules) {
                Some(ins) => {
                    for (pos, r) in ins {
                        cmds.push(format!("-I {chain} {pos} {r}"));
                    }
                }
                None => {
                    // Declaring an existing chain in --noflush mode flushes it.
                    decl.push(chain);
                    cmds.extend(rules.iter().map(|r| format!("-A {chain} {r}")));
                }
            },
            None => {
                decl.push(chain);
                cmds.extend(rules.iter().map(|r| format!("-A {chain} {r}")));
            }
        }
    }
    let stale: Vec<&String> = old.keys().filter(|c| !new.contains_key(*c)).collect();
    decl.extend(stale.iter().map(|c| c.as_str()));
    cmds.extend(stale.iter().map(|c| format!("-X {c}")));
    if decl.is_empty() && cmds.is_empty() {
        return String::new();
    }
    let mut out = format!("*{table}\n");
    for c in decl {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    for c in cmds {
        out.push_str(&c);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// What was last applied for one family.
#[derive(Default)]
struct Applied {
    mode: Option<Mode>,
    /// Per table, the rules as applied (our chains only).
    tables: Option<BTreeMap<&'static str, TableRules>>,
    /// When the jumps into our chains were last checked and everything last rewritten.
    jumps_checked: Option<std::time::Instant>,
}

/// Applies rule sets and remembers what it applied, so that the common case costs one
/// small `iptables-restore`: a new endpoint only inserts rules, a removed one rewrites the
/// chains it was in and deletes its own. Every 30 s (on the next change) and after any
/// failure, the whole rule set is rewritten and the jumps into it are re-checked.
#[derive(Default)]
pub struct Applier {
    families: [Applied; 2],
    /// The newest state snapshot applied (see [`Applier::take_turn`]).
    applied_seq: u64,
    /// Stopping: nothing is applied any more.
    closed: bool,
}

impl Applier {
    /// Whether the snapshot numbered `seq` may be applied: not when a newer one already was
    /// (it holds every change this one does), nor once closed. Records `seq` when it may.
    pub fn take_turn(&mut self, seq: u64) -> bool {
        if self.closed || seq <= self.applied_seq {
            return false;
        }
        self.applied_seq = seq;
        true
    }

    /// Applies nothing from now on (the plugin is stopping and removes its rules).
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Makes the next apply of each family a full rewrite with the jumps re-checked.
    pub fn invalidate(&mut self) {
        for slot in &mut self.families {
            slot.jumps_checked = None;
        }
    }

    /// Whether the rules last applied in `family` are all in the kernel: each chain with
    /// as many rules as applied, and the jumps into them. True when nothing was applied.
    pub fn verify(&self, family: Family) -> Result<bool> {
        let slot = &self.families[family as usize];
        let (Some(tables), Some(mode)) = (&slot.tables, slot.mode) else {
            return Ok(true);
        };
        for (table, want) in tables {
            let out = run(family.bin(), &["-t", table, "-S"])?;
            if !out.status.success() {
                return Err(Error::msg(format!(
                    "list {} {table} rules: {}",
                    family.bin(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let listing = String::from_utf8_lossy(&out.stdout);
            let mut live: BTreeMap<&str, usize> = BTreeMap::new();
            for l in listing.lines() {
                let mut w = l.split_whitespace();
                match (w.next(), w.next()) {
                    (Some("-N"), Some(c)) => {
                        live.entry(c).or_default();
                    }
                    (Some("-A"), Some(c)) => *live.entry(c).or_default() += 1,
                    _ => {}
                }
            }
            if want
                .iter()
                .any(|(chain, rules)| live.get(chain.as_str()) != Some(&rules.len()))
            {
                return Ok(false);
            }
        }
        for (table, chain, rule) in jumps(family, mode) {
            let mut check = vec!["-t", table, "-C", chain];
            check.extend_from_slice(rule);
            if !run(family.bin(), &check)?.status.success() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Applies the rules of one family (blocking: run it off the async workers).
    pub fn apply(&mut self, state: &RuleState, family: Family, mode: Mode) -> Result<()> {
        let slot = &mut self.families[family as usize];
        let r = render(state, family, mode);
        let mut wanted: BTreeMap<&'static str, TableRules> = BTreeMap::new();
        wanted.insert("filter", parse_table(&r.filter));
        wanted.insert("nat", parse_table(&r.nat));
        let fresh = slot
            .jumps_checked
            .is_some_and(|t| t.elapsed() < JUMP_RECHECK);
        if let (true, Some(old)) = (fresh && slot.mode == Some(mode), &slot.tables) {
            let delta: String = ["filter", "nat"]
                .iter()
                .map(|t| table_delta(t, &old[t], &wanted[t]))
                .collect();
            if delta.is_empty() {
                return Ok(());
            }
            match restore(family, &delta) {
                Ok(()) => {
                    slot.tables = Some(wanted);
                    debug!(?family, endpoints = state.endpoints.len(), "rules updated");
                    return Ok(());
                }
                // Our chains changed behind our back (an administrator, a firewall reload):
                // rewrite everything below.
                Err(e) => warn!(error = %e, "incremental rule update failed, rewriting all rules"),
            }
        }
        let known = match slot.tables.take() {
            Some(t) if slot.mode == Some(mode) => Some(t),
            _ => None,
        };
        *slot = Applied::default();
        if family == Family::V4 {
            // Routed containers need forwarding; Docker turns it on only when it manages a
            // bridge.
            let _ = super::sysctl::write("net/ipv4/ip_forward", "1");
        }
        // Both tables in one iptables-restore: one process, each table atomic.
        restore(family, &format!("{}{}", r.filter, r.nat))?;
        // Each jump goes first in its chain (see `jumps`); felix mode keeps no FORWARD one.
        for (table, chain, rule) in jumps(family, mode) {
            ensure_jump(family, table, chain, rule)?;
        }
        if mode != Mode::Standalone {
            remove_jump(family, "filter", "FORWARD", JUMP_FORWARD);
        }
        // Chains of endpoints and profiles that went away. Without a previous rule set (first
        // apply, a mode change, a failure), list what is there: rules of an earlier run go too.
        let known: BTreeMap<&str, BTreeSet<String>> = match known {
            Some(t) => t
                .into_iter()
                .map(|(k, v)| (k, v.into_keys().collect()))
                .collect(),
            None => {
                let mut k = BTreeMap::new();
                for table in ["filter", "nat"] {
                    k.insert(table, our_chains(family, table)?);
                }
                k
            }
        };
        for (table, had) in &known {
            let want = r.chains.get(table);
            let stale: Vec<String> = had
                .iter()
                .filter(|c| !want.is_some_and(|w| w.contains(*c)))
                .cloned()
                .collect();
            delete_chains(family, table, &stale);
        }
        slot.tables = Some(wanted);
        slot.mode = Some(mode);
        slot.jumps_checked = Some(std::time::Instant::now());
        debug!(
            ?family,
            ?mode,
            endpoints = state.endpoints.len(),
            "rules applied"
        );
        Ok(())
    }
}

/// Applies the rules of one family once, with no memory of earlier applies.
pub fn apply(state: &RuleState, family: Family, mode: Mode) -> Result<()> {
    Applier::default().apply(state, family, mode)
}

fn delete_chains(family: Family, table: &str, chains: &[String]) {
    for c in chains {
        let _ = run(family.bin(), &["-t", table, "-F", c]);
    }
    for c in chains {
        match run(family.bin(), &["-t", table, "-X", c]) {
            Ok(o) if o.status.success() => {}
            _ => warn!(table, chain = %c, "delete stale chain failed"),
        }
    }
}

/// Whether `chain` is one of ours (by name: nobody else uses these prefixes).
fn is_our_chain(chain: &str) -> bool {
    chain.starts_with(CHAIN_PREFIX) || chain.starts_with("CALICO-LIBNETWORK-")
}

/// The lines of an `iptables -S` listing that belong to the plugin: its chains, their rules,
/// and the rules of other chains (`FORWARD`, `PREROUTING`, ...) that jump into them.
pub fn owned_lines(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            let (Some(cmd), Some(chain)) = (words.next(), words.next()) else {
                return false;
            };
            match cmd {
                "-N" | "-A" if is_our_chain(chain) => true,
                "-A" => {
                    let rest: Vec<&str> = words.collect();
                    rest.windows(2)
                        .any(|w| matches!(w[0], "-j" | "-g") && is_our_chain(w[1]))
                }
                _ => false,
            }
        })
        .map(str::to_string)
        .collect()
}

/// The tables the plugin writes to.
pub const TABLES: [&str; 2] = ["filter", "nat"];

/// Every rule the plugin owns in one family's `table`, as `iptables -S` lines.
pub fn list_owned(family: Family, table: &str) -> Result<Vec<String>> {
    list_owned_in(backend(), family, table)
}

/// [`list_owned`] in backend `b`.
pub fn list_owned_in(b: Backend, family: Family, table: &str) -> Result<Vec<String>> {
    let out = run(family.bin_in(b), &["-t", table, "-S"])?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "list {} {table} rules: {}",
            family.bin_in(b),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(owned_lines(&String::from_utf8_lossy(&out.stdout)))
}

/// The `iptables-restore --noflush` input that deletes `owned` (lines of one table, as
/// [`list_owned`] gives them): the jumps into our chains, then the chains' rules, then the
/// chains. Empty when nothing is owned.
fn removal(table: &str, owned: &[String]) -> String {
    let mut jumps = Vec::new();
    let mut chains = Vec::new();
    for l in owned {
        if let Some(c) = l.strip_prefix("-N ") {
            chains.push(c.trim().to_string());
        } else if let Some(rule) = l.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            if !is_our_chain(chain) {
                jumps.push(format!("-D {rule}"));
            }
        }
    }
    if jumps.is_empty() && chains.is_empty() {
        return String::new();
    }
    let mut out = format!("*{table}\n");
    for j in jumps {
        out.push_str(&j);
        out.push('\n');
    }
    // Flush all first: our chains jump to each other, and a chain still referenced cannot go.
    for c in &chains {
        out.push_str(&format!("-F {c}\n"));
    }
    for c in &chains {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str("COMMIT\n");
    out
}

/// Removes every rule and chain the plugin owns in one family (both tables, each in one
/// atomic `iptables-restore`); returns how many listed lines went. A family whose tool
/// cannot list its tables (no ip6tables, IPv6 off) has nothing of ours and is skipped.
pub fn remove_family(b: Backend, family: Family) -> Result<usize> {
    let mut removed = 0;
    for table in TABLES {
        let mut attempt = 0;
        loop {
            let owned = match list_owned_in(b, family, table) {
                Ok(o) => o,
                Err(e) if family == Family::V6 => {
                    debug!(error = %e, "ip6tables unusable: no IPv6 rules to remove");
                    return Ok(removed);
                }
                Err(e) => return Err(e),
            };
            let script = removal(table, &owned);
            if script.is_empty() {
                break;
            }
            match restore_in(b, family, &script) {
                Ok(()) => {
                    removed += owned.len();
                    break;
                }
                // Something changed the table between listing and removing: list again.
                Err(e) if attempt < 3 => {
                    debug!(error = %e, "remove rules: retrying with a fresh listing");
                    attempt += 1;
                }
                Err(e) => {
                    return Err(e.context(format!("remove {} {table} rules", family.bin_in(b))))
                }
            }
        }
    }
    Ok(removed)
}

/// Removes every rule and chain the plugin owns (both families, both tables): what
/// `calico-libnetwork firewall remove` and a stop with no endpoint left do.
/// Every variant this host has is cleaned (rules of a run with the other variant too).
pub fn remove_all() -> Result<usize> {
    let mut removed = 0;
    for b in backends() {
        removed += remove_family(b, Family::V4)? + remove_family(b, Family::V6)?;
    }
    Ok(removed)
}

/// Felix is taken to be in charge when its FORWARD hook or its nft table is present
/// (firewall-notes §3: the rules Felix programs).
pub fn felix_present() -> bool {
    // In either iptables variant: Felix may use the other one than Docker.
    let ipt = backends().into_iter().any(|b| {
        run(Family::V4.bin_in(b), &["-t", "filter", "-S", "FORWARD"])
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("-j cali-FORWARD"))
            .unwrap_or(false)
    });
    let mut nft = Command::new("nft");
    nft.args(["list", "table", "ip", "calico"]);
    let nft = output_within(nft, None)
        .map(|o| o.status.success())
        .unwrap_or(false);
    ipt || nft
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RuleState {
        let mut s = RuleState::default();
        s.endpoints.insert(
            "a".repeat(64),
            EndpointRules {
                iface: "caliaaaaaaaaaaa".into(),
                ips: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
                profiles: vec!["net1".into()],
                ports: vec![PortMap {
                    protocol: "tcp".into(),
                    host_ip: None,
                    host_port: 18080,
                    port: 80,
                }],
            },
        );
        s.endpoints.insert(
            "b".repeat(64),
            EndpointRules {
                iface: "calibbbbbbbbbbb".into(),
                ips: vec!["10.0.0.2".parse().unwrap()],
                profiles: vec!["net2".into()],
                ports: vec![],
            },
        );
        s.pools = vec![
            PoolRules {
                cidr: "10.0.0.0/24".parse().unwrap(),
                nat_outgoing: true,
            },
            PoolRules {
                cidr: "10.1.0.0/24".parse().unwrap(),
                nat_outgoing: false,
            },
        ];
        s
    }

    #[test]
    fn standalone_v4_rules_isolate_profiles_and_publish_ports() {
        let r = render(&state(), Family::V4, Mode::Standalone);
        let f = &r.filter;
        assert!(f.contains(":CALICO-LIBNETWORK-FORWARD - [0:0]"));
        assert!(f.contains("-A CLN-FROM-WL -i caliaaaaaaaaaaa -s 10.0.0.1/32 -j RETURN"));
        assert!(!f.contains("fd00::1"), "no IPv6 in IPv4 rules");
        assert!(f.contains("-A CLN-TO-WL -o caliaaaaaaaaaaa -j CLN-TW-aaaaaaaaaaa"));
        let pro1 = profile_chain("net1");
        assert!(f.contains(&format!("-A CLN-TW-aaaaaaaaaaa -j {pro1}")));
        assert!(f.contains(&format!("-A {pro1} -s 10.0.0.1/32 -j ACCEPT")));
        assert!(
            !f.contains(&format!("-A {pro1} -s 10.0.0.2/32")),
            "net2's member is not in net1"
        );
        assert!(r.nat.contains("-A CALICO-LIBNETWORK-DNAT ! -d 127.0.0.0/8 -p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.0.0.1:80"));
        assert!(r.nat.contains("-A CALICO-LIBNETWORK-DNAT -d 127.0.0.1/32 -p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.0.0.1:80"));
        assert!(r
            .nat
            .contains("-A CALICO-LIBNETWORK-SNAT -s 10.0.0.0/24 -j CLN-NAT-OUT"));
        assert!(!r.nat.contains("-s 10.1.0.0/24 -j CLN-NAT-OUT"));
        assert!(r.nat.contains("-A CLN-NAT-OUT -d 10.1.0.0/24 -j RETURN"));
        assert!(r.nat.trim_end().ends_with("COMMIT"));
    }

    #[test]
    fn ipv4_only_endpoint_leaves_ipv6_rules_unchanged() {
        let before = render(&state(), Family::V6, Mode::Standalone);
        let mut s = state();
        s.endpoints.insert(
            "c".repeat(64),
            EndpointRules {
                iface: "caliccccccccccc".into(),
                ips: vec!["10.0.0.3".parse().unwrap()],
                profiles: vec!["net1".into()],
                ports: vec![],
            },
        );
        let after = render(&s, Family::V6, Mode::Standalone);
        assert_eq!(before.filter, after.filter);
        assert_eq!(before.nat, after.nat);
        assert!(render(&s, Family::V4, Mode::Standalone)
            .filter
            .contains("CLN-TW-ccccccccccc"));
    }

    #[test]
    fn felix_mode_keeps_only_port_nat_and_the_loopback_guard() {
        let r = render(&state(), Family::V4, Mode::Felix);
        assert!(!r.filter.contains(FORWARD_CHAIN), "{}", r.filter);
        assert!(
            r.filter.contains("-A CALICO-LIBNETWORK-INPUT -d 127.0.0.0/8 -i cali+ -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"),
            "{}",
            r.filter
        );
        assert!(render(&state(), Family::V6, Mode::Felix).filter.is_empty());
        assert!(r.nat.contains("--dport 18080"));
        assert!(!r.nat.contains(NAT_OUT));
    }

    #[test]
    fn v6_rules_use_v6_addresses_and_brackets() {
        let r = render(&state(), Family::V6, Mode::Standalone);
        assert!(r.filter.contains("-s fd00::1/128 -j RETURN"));
        assert!(r.nat.contains("--to-destination [fd00::1]:80"));
        assert!(!r.nat.contains("127.0.0.0/8"));
    }

    #[test]
    fn owned_lines_are_our_chains_and_the_jumps_into_them() {
        let listing = "-P FORWARD DROP\n\
            -N CALICO-LIBNETWORK-FORWARD\n\
            -N CLN-TW-aaa\n\
            -N DOCKER-USER\n\
            -A FORWARD -j CALICO-LIBNETWORK-FORWARD\n\
            -A FORWARD -j DOCKER-USER\n\
            -A FORWARD -m comment --comment \"to CLN-x\" -j ACCEPT\n\
            -A CALICO-LIBNETWORK-FORWARD -o cali+ -j CLN-TW-aaa\n\
            -A CLN-TW-aaa -j DROP\n\
            -A DOCKER-USER -j RETURN\n";
        let owned = owned_lines(listing);
        assert_eq!(
            owned,
            vec![
                "-N CALICO-LIBNETWORK-FORWARD",
                "-N CLN-TW-aaa",
                "-A FORWARD -j CALICO-LIBNETWORK-FORWARD",
                "-A CALICO-LIBNETWORK-FORWARD -o cali+ -j CLN-TW-aaa",
                "-A CLN-TW-aaa -j DROP",
            ]
        );
        assert_eq!(
            removal("filter", &owned),
            "*filter\n-D FORWARD -j CALICO-LIBNETWORK-FORWARD\n\
             -F CALICO-LIBNETWORK-FORWARD\n-F CLN-TW-aaa\n\
             -X CALICO-LIBNETWORK-FORWARD\n-X CLN-TW-aaa\nCOMMIT\n"
        );
        assert_eq!(removal("nat", &[]), "");
    }

    #[test]
    fn a_subprocess_past_its_deadline_is_killed() {
        let t = std::time::Instant::now();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo $$; exec sleep 30"]);
        let e =
            output_within_deadline(cmd, None, std::time::Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        // A child that reads all its input and answers is waited for as usual.
        let mut cat = Command::new("cat");
        cat.arg("-");
        let out = output_within(cat, Some("x".repeat(1 << 20))).unwrap();
        assert_eq!(
            out.stdout.len(),
            1 << 20,
            "a large input and output do not block"
        );
    }

    #[test]
    fn chain_names_fit_iptables_limit() {
        for c in [
            FORWARD_CHAIN,
            DNAT_CHAIN,
            POSTROUTING_CHAIN,
            &profile_chain("x"),
            &endpoint_chain("cali0123456789a"),
        ] {
            assert!(c.len() <= 28, "{c}");
        }
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn insertions_rebuild_new_from_old() {
        let old = strs(&["a", "b", "c"]);
        let new = strs(&["x", "a", "b", "y", "c", "z"]);
        let ins = insertions(&old, &new).unwrap();
        assert_eq!(ins, vec![(1, "x"), (4, "y"), (6, "z")]);
        // Replaying the inserts in order on `old` gives `new`.
        let mut chain = old.clone();
        for (pos, r) in ins {
            chain.insert(pos - 1, r.to_string());
        }
        assert_eq!(chain, new);
        assert_eq!(insertions(&old, &strs(&["a", "c"])), None);
        assert_eq!(insertions(&old, &strs(&["b", "a", "c"])), None);
        assert_eq!(insertions(&old, &old), Some(vec![]));
    }

    #[test]
    fn adding_an_endpoint_only_inserts_removing_rewrites() {
        let one = state();
        let mut two = one.clone();
        two.endpoints.insert(
            "c".repeat(64),
            EndpointRules {
                iface: "calicccccccccc1".into(),
                ips: vec!["10.65.0.9".parse().unwrap()],
                profiles: vec!["net1".into()],
                ports: vec![],
            },
        );
        let tables = |s: &RuleState| {
            let r = render(s, Family::V4, Mode::Standalone);
            (parse_table(&r.filter), parse_table(&r.nat))
        };
        let (f1, n1) = tables(&one);
        let (f2, n2) = tables(&two);
        let add = table_delta("filter", &f1, &f2);
        assert!(
            add.starts_with("*filter\n") && add.ends_with("COMMIT\n"),
            "{add}"
        );
        // Only the new endpoint's chain is declared; nothing existing is flushed or removed.
        let decls: Vec<&str> = add.lines().filter(|l| l.starts_with(':')).collect();
        assert_eq!(decls, vec![":CLN-TW-cccccccccc1 - [0:0]"], "{add}");
        assert!(add.contains("-I CLN-FROM-WL "), "{add}");
        assert!(!add.contains("-X ") && !add.contains("-D "), "{add}");
        // No published port: the nat table is untouched.
        assert_eq!(table_delta("nat", &n1, &n2), "");
        assert_eq!(table_delta("filter", &f2, &f2), "");
        // Removing it rewrites the chains it was in and deletes its own chain last.
        let rm = table_delta("filter", &f2, &f1);
        assert!(rm.contains(":CLN-FROM-WL - [0:0]"), "{rm}");
        assert!(
            rm.trim_end().ends_with("-X CLN-TW-cccccccccc1\nCOMMIT"),
            "{rm}"
        );
    }
}
