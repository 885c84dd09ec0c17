//! The clean-up of the plugin's forward chain, for the Docker tests.

pub use super::host::run as host;

/// The chain the plugin jumps to from FORWARD (see `src/dataplane/firewall.rs`).
pub const CHAIN: &str = "CALICO-LIBNETWORK-FORWARD";

/// Every rule the plugin owns on this host now, as `<tool> -t <table>: <line>`.
/// In every iptables variant this host has (legacy and nf_tables).
pub fn owned_rules() -> Vec<String> {
    use calico_libnetwork::dataplane::iptables::{backends, list_owned_in, Family, TABLES};
    let mut out = Vec::new();
    for b in backends() {
        for family in [Family::V4, Family::V6] {
            for table in TABLES {
                // ip6tables may be unusable (IPv6 off): then it holds nothing of ours.
                for l in list_owned_in(b, family, table).unwrap_or_default() {
                    out.push(format!("{} -t {table}: {l}", family.bin_in(b)));
                }
            }
        }
    }
    out
}

/// The host's workload veths now: `cali` or `temp` + 11 characters.
pub fn workload_veths() -> Vec<String> {
    let (_, out) = host("ip", &["-o", "link", "show"]);
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| (n.starts_with("cali") || n.starts_with("temp")) && n.len() == 15)
        .collect()
}

/// Starts a test from a known firewall state and leaves none of the plugin's rules, nor
/// any workload veth made during the test, behind. Rules of ours found at the start were
/// left by an earlier run (a plugin killed, or stopped with endpoints): they are removed and
/// reported on stderr, never silently kept; a plugin serving the host's socket is refused
/// loudly instead (its rules are live). Veths a test leaves (a plugin SIGKILLed mid-call
/// leaves some until its reconciliation, minutes later) are removed and reported at the
/// end, so the next test's addresses never meet their routes.
/// Create it after taking the host lock and drop it before releasing it.
pub struct HostCleanup {
    veths_before: Vec<String>,
}

impl HostCleanup {
    /// Removes (and reports) stale plugin rules.
    pub fn new() -> Self {
        let stale = owned_rules();
        if !stale.is_empty() {
            let socket = std::path::Path::new(super::plugin::SOCKET);
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                panic!(
                    "a calico-libnetwork plugin we did not start serves {} and owns these \
                     firewall rules; stop it before running the Docker tests:\n{}",
                    socket.display(),
                    stale.join("\n")
                );
            }
            eprintln!(
                "!!!!! removing {} stale calico-libnetwork firewall rules left on this host by an \
                 earlier run (a plugin killed, or stopped with endpoints left):\n{}",
                stale.len(),
                stale.join("\n")
            );
            calico_libnetwork::dataplane::iptables::remove_all()
                .unwrap_or_else(|e| panic!("remove stale plugin rules: {e}"));
        }
        HostCleanup {
            veths_before: workload_veths(),
        }
    }
}

impl Default for HostCleanup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HostCleanup {
    fn drop(&mut self) {
        let left: Vec<String> = workload_veths()
            .into_iter()
            .filter(|v| !self.veths_before.contains(v))
            .collect();
        if !left.is_empty() {
            eprintln!(
                "!!!!! removing {} workload veths left by the test: {}",
                left.len(),
                left.join(" ")
            );
            for v in left {
                let _ = host("ip", &["link", "del", &v]);
            }
        }
        // Everything the plugin owns (filter and nat, both families).
        if let Err(e) = calico_libnetwork::dataplane::iptables::remove_all() {
            eprintln!("!!!!! remove the plugin's firewall rules after the test: {e}");
        }
    }
}

/// The first line of `iptables -S FORWARD`: its policy.
pub fn forward_policy() -> String {
    let (ok, out) = host("iptables", &["-w", "-S", "FORWARD"]);
    assert!(ok, "iptables -S FORWARD: {out}");
    out.lines().next().unwrap_or_default().to_string()
}

/// Checks our chain and its jump are gone (hold the host lock, so no other test's plugin can
/// have added them meanwhile).
pub fn assert_no_chain() {
    let left = owned_rules();
    assert!(left.is_empty(), "plugin rules left:\n{}", left.join("\n"));
}
