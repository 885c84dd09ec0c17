#!/usr/bin/env bash
# Builds calico-libnetwork and starts it on the embedded store, serving
# /run/docker/plugins/calico.sock. Run as root. Extra arguments go to the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
# Run time: iptables (with ip6tables) for the standalone firewall rules, nft to see whether
# Felix's nft table is there, iproute2 to look at what the plugin sets up, ipset for the
# isolation across hosts (with etcd). deps.sh adds the
# build's own needs (C compiler, protoc, ...).
bash scripts/deps.sh iproute2 iptables ipset nftables
cargo build --release --locked
export DATASTORE_TYPE="${DATASTORE_TYPE:-local}"
exec ./target/release/calico-libnetwork "$@"
