#!/usr/bin/env bash
# Installs, on Debian 12, what building this crate needs plus the Debian packages named as
# arguments (what the calling script needs at run time), skipping those already installed.
# Enough on a bare Debian 12 that has only a Rust toolchain (scripts/fresh-host-check.sh
# checks that). What the build needs:
#   gcc, libc6-dev      the linker rustc calls (`cc`), and the C and assembly of `ring`
#   protobuf-compiler   protoc, for etcd-client's build script (tonic-build/prost-build)
#   libprotobuf-dev     google/protobuf/*.proto that etcd's protos import: only a
#                       Recommends of protobuf-compiler, so --no-install-recommends leaves it out
#   ca-certificates     cargo downloads crates over https
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: no Rust toolchain found; install stable Rust (rustup) first" >&2
  exit 1
fi
build=(gcc libc6-dev protobuf-compiler libprotobuf-dev ca-certificates)
missing=()
for p in "${build[@]}" "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
