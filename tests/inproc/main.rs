//! Tier 1, in-process: needs no root, only the process itself and a local `etcd-server`
//! (started per test on a free loopback port). The newcomer's loop: `cargo test --test inproc`.
//!
//! `cli` is here because most of its tests only run the binary; its few firewall and
//! iptables-variant tests need root, and fail (or, with `CALICO_TEST_ALLOW_SKIP=1`, say
//! loudly that they skipped) without it.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod datastore_conformance;
mod etcd_failover;
mod etcd_security;
mod etcd_watch;
mod fleet_ops;
mod ipam_allocator;
mod node_remove;
mod plugin_http;
mod plugin_ipam;
mod startup;
mod tunnel;
