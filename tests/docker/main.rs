//! Tier 3, Docker: needs root and runs a dockerd of our own per test. Every test holds the
//! host lock (`common::docker`), so they run one at a time, also across test binaries.

#[path = "../common/mod.rs"]
mod common;

mod docker_compose;
mod docker_fleet;
mod docker_ipam;
mod docker_managed_plugin;
mod docker_multi;
mod docker_network;
mod docker_profiles;
mod docker_reliability;
mod docker_standalone;
