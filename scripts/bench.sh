#!/usr/bin/env bash
# Runs the benchmark of BENCHMARKS.md (as root, on Debian 12): installs what it needs, builds
# the release binary, then `cargo bench --bench plugin`. Results: bench-results/results.md,
# bench-results/latency.svg, bench-results/plugin-latency.svg.
# Parts and sizes: BENCH_PARTS=docker,plugin,rtt,ipam,footprint BENCH_N=1000 ... (see
# benches/plugin/); e.g. a quick run: BENCH_N=100 BENCH_DOCKER_RUNS=5 bash scripts/bench.sh
# Routes between hosts (issue 17; iperf3 and ping for it): BENCH_PARTS=routes bash scripts/bench.sh
# Isolation across hosts (issue 18; ipset sets): BENCH_PARTS=members bash scripts/bench.sh
#
# The Docker part runs first on Debian 12's engine (20.10), in the run above, then once more
# on each engine of BENCH_ENGINES (default: those of scripts/engines.sh, i.e. sid's Docker 28,
# fetched by scripts/fetch-docker-engine.sh; empty: none), each with its own results directory,
# bench-results/engine-<suite>/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh etcd-server docker.io containerd runc busybox-static \
  containernetworking-plugins iproute2 iptables ipset nftables procps kmod debian-archive-keyring \
  iputils-ping iperf3
cargo build --release --locked --bin calico-libnetwork
cargo bench --locked --bench plugin "$@"
parts=${BENCH_PARTS:-docker,plugin,rtt,ipam,footprint}
case ",$parts," in *,docker,* | *,all,*) ;; *) exit 0 ;; esac
. scripts/engines.sh
for suite in ${BENCH_ENGINES-$EXTRA_DOCKER_ENGINES}; do
  bash scripts/fetch-docker-engine.sh "$suite" >/dev/null
  CALICO_TEST_DOCKER_ENGINE=$suite BENCH_PARTS=docker BENCH_OUT="$PWD/bench-results/engine-$suite" \
    cargo bench --locked --bench plugin "$@"
done
