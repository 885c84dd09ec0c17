# calico-libnetwork as a container image, built from the release binary in the build context:
# no Rust toolchain in the image and, for the `bundled` target, no registry either.
#
#   cargo build --release
#   bash scripts/build-managed-plugin.sh        # assembles build/plugin/rootfs
#   docker build --target bundled -t calico-libnetwork .
#
# The binary is linked against glibc, so the runtime stage needs glibc: the `bundled` stage
# carries the build host's glibc (copied with the binary's other libraries, found by ldd,
# and iptables); the `debian` stage (the default, last one) takes Debian's and needs the
# debian:bookworm-slim image, local or from a registry. The managed plugin
# (scripts/build-managed-plugin.sh, packaging/plugin/config.json) is the tested way to run the
# plugin under Docker; this image is for `docker run` (see README.md, "Packaging").

ARG DEBIAN_IMAGE=debian:bookworm-slim

# Self-contained, from scratch: the rootfs of the managed-plugin bundle.
FROM scratch AS bundled
COPY build/plugin/rootfs/ /
ENTRYPOINT ["/usr/bin/calico-libnetwork"]

# Debian-based: Debian's glibc and iptables, our binary. What the binary runs: iptables,
# iptables-restore and their ip6tables twins (all in `iptables`) for the standalone firewall
# rules, and `nft` (`nftables`) to see whether Felix's nft table is there. Nothing else: the
# veths, routes and sysctls are netlink and /proc/sys, and etcd TLS trusts only
# ETCD_CA_CERT_FILE (no system CA bundle, so no ca-certificates).
FROM ${DEBIAN_IMAGE} AS debian
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables nftables \
    && rm -rf /var/lib/apt/lists/*
COPY target/release/calico-libnetwork /usr/bin/calico-libnetwork
ENTRYPOINT ["/usr/bin/calico-libnetwork"]
