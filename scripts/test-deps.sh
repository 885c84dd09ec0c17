#!/usr/bin/env bash
# The dependency step of scripts/test.sh, alone: installs (as root, on Debian 12) the build's
# needs (scripts/deps.sh) and what the tests run: etcd and etcdctl, dockerd with containerd
# (and kmod: dockerd loads br_netfilter and overlay with modprobe), a static busybox (the
# test image), openssl (test certificates), python3 (a test server), iproute2, iptables,
# ipset (isolation across hosts), nftables, ping, curl, ps. Then fetches (not installs) the
# second engine of the Docker tier,
# sid's Docker 28 (scripts/fetch-docker-engine.sh, with apt-get, dpkg-deb and the Debian
# archive keyring: debian-archive-keyring is listed to be sure it is there).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh etcd-server etcd-client docker.io containerd runc busybox-static openssl python3 \
  iproute2 iptables ipset nftables iputils-ping curl procps kmod debian-archive-keyring
. scripts/engines.sh
for suite in $EXTRA_DOCKER_ENGINES; do
  bash scripts/fetch-docker-engine.sh "$suite" >/dev/null
done
