#!/usr/bin/env bash
# Runs the whole test suite against real components (etcd, the kernel, dockerd), then the
# Docker tier again on the second engine: Debian 12's Docker 20.10 first, then sid's Docker 28
# (fetched, not installed, by scripts/test-deps.sh; see tests/common/docker.rs).
# Run as root on Debian 12. Installs the Debian packages the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-deps.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet
bash scripts/unused-deps.sh
cargo test --locked "$@"
. scripts/engines.sh
for suite in $EXTRA_DOCKER_ENGINES; do
  CALICO_TEST_DOCKER_ENGINE=$suite cargo test --locked --test docker
done
