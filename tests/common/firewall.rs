//! Host commands and the clean-up of the plugin's forward chain, for the Docker tests.

use std::process::Command;

/// The chain the plugin jumps to from FORWARD (see `src/dataplane/firewall.rs`).
pub const CHAIN: &str = "CALICO-LIBNETWORK-FORWARD";

/// Runs a host program (Debian's binaries first on PATH); success and stdout+stderr.
pub fn host(prog: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(prog)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Removes our forward chain and its jump after the test if they were not there before it.
/// Needed: the harness only undoes rules naming `DOCKER` or its bridge, and not ip6tables.
/// Create it after taking the host lock and drop it before releasing it.
pub struct FirewallCleanup {
    present_before: Vec<(&'static str, bool)>,
}

impl FirewallCleanup {
    /// Notes whether the chain exists now (iptables and ip6tables).
    pub fn new() -> Self {
        FirewallCleanup {
            present_before: ["iptables", "ip6tables"]
                .into_iter()
                .map(|b| (b, host(b, &["-w", "-n", "-L", CHAIN]).0))
                .collect(),
        }
    }
}

impl Default for FirewallCleanup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FirewallCleanup {
    fn drop(&mut self) {
        // Everything the plugin owns (filter and nat, both families), unless the host had
        // our rules before the test (a real plugin running here).
        if self.present_before.iter().all(|(_, before)| !before) {
            calico_libnetwork::dataplane::standalone::remove_all();
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
    for bin in ["iptables", "ip6tables"] {
        for table in ["filter", "nat"] {
            let (_, rules) = host(bin, &["-w", "-t", table, "-S"]);
            assert!(
                !rules.contains("CALICO-LIBNETWORK") && !rules.contains("CLN-"),
                "{bin} {table}: plugin rules left:\n{rules}"
            );
        }
    }
}
