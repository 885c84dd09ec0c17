//! calico-libnetwork: Calico's network and IPAM driver for Docker.
//!
//! # Layout
//! Dependencies point one way:
//! `cli → commands → plugin (HTTP + wire types) → driver (network, ipam) → {ipam allocator,
//! dataplane} → {datastore, model} → error`.
//!
//! - [`error`]: the one error type and its message conventions.
//! - [`config`]: settings from flags and environment.
//! - [`datastore`]: the key-value trait with etcd v3 and embedded (redb) backends.
//! - [`model`]: Calico's resources, IPAM objects and key paths, in Calico's exact JSON.
//! - [`ipam`]: Calico's block allocator over the datastore.
//! - [`dataplane`]: the kernel side: veths, routes and sysctls over netlink behind the
//!   [`dataplane::Dataplane`] trait, and the plugin's iptables rules ([`dataplane::iptables`]).
//! - [`driver`]: Docker's network driver ([`driver::Driver`]) and IPAM driver
//!   ([`driver::ipam::IpamDriver`]) calls, start-up preparation, profiles, firewall state,
//!   clean-up after crashes.
//! - [`plugin`]: the HTTP server on Docker's plugin socket and the wire types.
//! - [`metrics`]: Prometheus metrics (optional).
//! - [`cli`]: the command line's top-level clap types and `main_entry`.
//! - `commands`: one file per command (`serve`, `pool`, `ipam`, `node`, `status`, `endpoint`,
//!   `firewall`), each with its subcommands' types, and the table and JSON output.

pub mod cli;
mod commands;
pub mod config;
pub mod error;

pub use error::{Error, Result};
pub mod dataplane;
pub mod datastore;
pub mod driver;
pub mod ipam;
pub mod metrics;
pub mod model;
pub mod plugin;
