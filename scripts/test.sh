#!/usr/bin/env bash
# Runs the whole test suite against real components (etcd, the kernel, dockerd).
# Run as root on Debian 12. Installs the Debian packages the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-deps.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet
bash scripts/unused-deps.sh
cargo test --locked "$@"
