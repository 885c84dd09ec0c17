#!/usr/bin/env bash
# Runs the benchmark of BENCHMARKS.md (as root, on Debian 12): installs what it needs, builds
# the release binary, then `cargo bench --bench plugin`. Results: bench-results/results.md,
# bench-results/latency.svg, bench-results/plugin-latency.svg.
# Parts and sizes: BENCH_PARTS=docker,plugin,rtt,ipam,footprint BENCH_N=1000 ... (see
# benches/plugin/); e.g. a quick run: BENCH_N=100 BENCH_DOCKER_RUNS=5 bash scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh etcd-server docker.io containerd busybox-static containernetworking-plugins \
  iproute2 iptables nftables procps kmod
cargo build --release --locked --bin calico-libnetwork
cargo bench --locked --bench plugin "$@"
