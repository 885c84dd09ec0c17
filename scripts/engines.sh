# The Docker engines the Docker test tier runs on, beside Debian 12's own (20.10): Debian
# suites whose docker.io scripts/fetch-docker-engine.sh fetches. Adding an engine is adding
# its suite here. Sourced by scripts/test-deps.sh, scripts/test.sh and scripts/bench.sh.
# shellcheck shell=bash
EXTRA_DOCKER_ENGINES=${CALICO_TEST_EXTRA_ENGINES-sid}
