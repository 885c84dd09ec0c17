//! Tier 2, the kernel: needs root. Most tests run in a network namespace of their own;
//! those touching host-wide state (the host's firewall, the xtables lock) hold the host lock.

#[path = "../common/mod.rs"]
mod common;

mod dataplane;
mod fleet;
mod fuzz_http;
mod node_address;
mod ops;
mod reliability;
mod routes_kernel;
mod standalone_rules;
