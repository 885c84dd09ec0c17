#!/usr/bin/env bash
# Builds calico-libnetwork and starts it on the embedded store, serving
# /run/docker/plugins/calico.sock. Run as root. Extra arguments go to the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh protobuf-compiler iproute2 iptables
cargo build --release --locked
export DATASTORE_TYPE="${DATASTORE_TYPE:-local}"
exec ./target/release/calico-libnetwork "$@"
