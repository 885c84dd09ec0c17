#!/usr/bin/env bash
# Runs the whole test suite against real components (etcd, the kernel, dockerd).
# Run as root on Debian 12. Installs the Debian packages the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh protobuf-compiler etcd-server etcd-client docker.io containerd busybox-static openssl python3 \
  iproute2 iptables iputils-ping curl procps
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked "$@"
