//! What `ipam check` reports, and its settings.

use std::time::Duration;

use serde::Serialize;

/// Kinds of inconsistency found by `ipam check`.
pub(crate) mod kind {
    /// An address allocated under a `libnetwork.` handle that no WorkloadEndpoint uses.
    pub(crate) const ORPHAN_ALLOCATION: &str = "orphan-allocation";
    /// A WorkloadEndpoint address that is not allocated.
    pub(crate) const UNALLOCATED_ADDRESS: &str = "unallocated-endpoint-address";
    /// A handle whose per-block counts differ from the blocks (or that is missing).
    pub(crate) const HANDLE_MISMATCH: &str = "handle-mismatch";
    /// A `cali*` veth on this host that belongs to no WorkloadEndpoint of this node.
    pub(crate) const ORPHAN_VETH: &str = "orphan-veth";
}

/// One inconsistency.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Finding {
    /// One of [`kind`].
    pub(crate) kind: &'static str,
    /// The address, handle or interface.
    pub(crate) object: String,
    /// The node whose record it is: an allocation's `node` attribute (else its block's
    /// affinity), a handle's addresses' node, an endpoint's node; `None` when nothing names
    /// one.
    pub(crate) node: Option<String>,
    /// What is wrong.
    pub(crate) detail: String,
    /// Whether `--repair` fixes it.
    pub(crate) repairable: bool,
    /// Whether this run fixed it.
    pub(crate) repaired: bool,
    /// What to do (or what was done).
    pub(crate) action: String,
}

/// What `ipam check` found (and did).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct CheckReport {
    /// Every inconsistency.
    pub(crate) findings: Vec<Finding>,
    /// Remarks (parts not checked, and why).
    pub(crate) notes: Vec<String>,
    /// Whose records were checked: `node <name>`, or `all hosts`.
    pub(crate) scope: String,
}

impl CheckReport {
    /// Findings not fixed by this run.
    pub(crate) fn unresolved(&self) -> usize {
        self.findings.iter().filter(|f| !f.repaired).count()
    }
}

/// Settings of [`super::check::ipam_check`].
#[derive(Clone, Debug)]
pub(crate) struct CheckOptions {
    /// This host's node name (for its veths).
    pub(crate) nodename: String,
    /// The node whose records are checked and repaired (`--node`; else this host's).
    pub(crate) target: String,
    /// Check every host's records; `--repair` still repairs only `target`'s.
    pub(crate) all_hosts: bool,
    /// Fix what is safe to fix, of `target`'s records.
    pub(crate) repair: bool,
    /// Orphan allocations younger than this are left alone (a container may be starting).
    pub(crate) grace: Duration,
    /// Look at this host's `cali*` veths.
    pub(crate) check_veths: bool,
    /// This machine's ID: `--repair` refuses when the Node names another machine.
    pub(crate) machine_id: Option<String>,
    /// How often plugins renew their heartbeats (`CALICO_LIBNETWORK_HEARTBEAT_INTERVAL`):
    /// `--repair --node` needs that node's older than three.
    pub(crate) heartbeat_interval: Duration,
}

impl CheckOptions {
    /// Whether the records checked are this host's own (no `--node`, or `--node` naming it).
    pub(crate) fn on_this_host(&self) -> bool {
        self.target == self.nodename
    }

    /// Whether a record of `owner` is checked.
    pub(crate) fn shows(&self, owner: Option<&str>) -> bool {
        self.all_hosts || owner == Some(self.target.as_str())
    }

    /// Whether `--repair` fixes a record of `owner`: the target's, and with `--all-hosts`
    /// those naming no node (no host's plugin writes them).
    pub(crate) fn repairs(&self, owner: Option<&str>) -> bool {
        self.repair
            && match owner {
                Some(n) => n == self.target,
                None => self.all_hosts,
            }
    }

    /// What the report says was checked.
    pub(crate) fn scope(&self) -> String {
        if self.all_hosts {
            "all hosts".to_string()
        } else {
            format!("node {}", self.target)
        }
    }
}
