#!/usr/bin/env bash
# Fetches a Docker engine of another Debian suite for the Docker test tier, without installing
# it: downloads the .deb files of docker.io, docker-cli, containerd, tini-static (docker.io's
# docker-init) and docker-compose (Compose v2, the `docker compose` CLI plugin) from the suite
# (default: sid) of the machine's own Debian sources, with a private apt
# configuration (its own sources list, package lists and archive directory: the system's apt
# state is left untouched), and unpacks them with `dpkg-deb -x` into a cache directory.
# Prints the unpacked root (its usr/sbin/dockerd, usr/bin/docker,
# usr/libexec/docker/cli-plugins/docker-compose, ...) on stdout.
#
# No runc: sid's (1.3) needs glibc 2.38 and does not run on Debian 12, so the engine runs
# containers with Debian 12's runc (scripts/test-deps.sh installs it with docker.io), which
# containerd's shim finds on PATH after the root's directories.
#
#   bash scripts/fetch-docker-engine.sh [suite]
#
# Idempotent: does nothing when the root already has the binaries; a root that lacks one (say,
# one fetched before docker-compose was added) is fetched again whole. Needs apt-get, dpkg-deb
# and debian-archive-keyring (all on a bare Debian 12; scripts/test-deps.sh makes sure).
# Environment:
#   CALICO_TEST_ENGINE_CACHE   where roots go (default /var/cache/calico-libnetwork-test/engines);
#                              the root is <cache>/<suite>
#   CALICO_TEST_DEBIAN_MIRROR  the Debian archive URI (default: the first URI of this machine's
#                              own Debian sources, read from /etc/apt/sources.list{,.d})
set -euo pipefail

suite=${1:-sid}
cache=${CALICO_TEST_ENGINE_CACHE:-/var/cache/calico-libnetwork-test/engines}
root=$cache/$suite
packages=(docker.io docker-cli containerd tini-static docker-compose)
# What the test harness (tests/common/docker.rs) runs from the root.
binaries=(usr/sbin/dockerd usr/bin/docker usr/bin/containerd usr/bin/containerd-shim-runc-v2
    usr/bin/tini-static usr/libexec/docker/cli-plugins/docker-compose)

say() { printf 'fetch-docker-engine: %s\n' "$*" >&2; }
fail() {
    printf 'fetch-docker-engine: FAILED: %s\n' "$*" >&2
    exit 1
}

complete() {
    local b
    for b in "${binaries[@]}"; do
        [ -x "$1/$b" ] || return 1
    done
}

if complete "$root"; then
    echo "$root"
    exit 0
fi

for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || fail "no $tool (Debian's apt and dpkg)"
done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || fail "no $keyring (install debian-archive-keyring)"

# The machine's own Debian archive: the URI of its first source that is not a security one.
mirror=${CALICO_TEST_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        mirror=$(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")
        [ -z "$mirror" ] || break
    done
fi
if [ -z "$mirror" ]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        mirror=$(sed -nE 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' "$f" |
            grep -v security | head -n 1 || true)
        [ -z "$mirror" ] || break
    done
fi
[ -n "$mirror" ] || fail "no Debian source found in /etc/apt/sources.list{,.d}; set CALICO_TEST_DEBIAN_MIRROR"

mkdir -p "$cache"
work=$(mktemp -d "$cache/.fetch-$suite.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/debs" "$work/root"
echo "deb [signed-by=$keyring] $mirror $suite main" >"$work/sources.list"
# A private apt: own sources, lists and archives; no index targets of other tools (Contents,
# DEP-11); the host's apt.conf.d still applies (proxies).
apt_opts=(
    -o "Dir::Etc::SourceList=$work/sources.list"
    -o Dir::Etc::SourceParts=/nonexistent
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache::Archives=$work/archives"
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
    -o APT::Sandbox::User=root
    -o Debug::NoLocking=1
)
say "fetching ${packages[*]} from $suite"
apt-get "${apt_opts[@]}" -qq update >"$work/apt.log" 2>&1 ||
    { cat "$work/apt.log" >&2; fail "apt-get update of $suite"; }
(cd "$work/debs" && apt-get "${apt_opts[@]}" -qq download "${packages[@]}") >>"$work/apt.log" 2>&1 ||
    { cat "$work/apt.log" >&2; fail "apt-get download ${packages[*]}"; }
for deb in "$work"/debs/*.deb; do
    dpkg-deb -x "$deb" "$work/root"
    say "  $(dpkg-deb -f "$deb" Package Version | paste -sd' ')"
done
complete "$work/root" || fail "the unpacked packages lack one of: ${binaries[*]}"
# The root appears whole or not at all.
rm -rf --one-file-system "$root"
mv "$work/root" "$root"
echo "$root"
