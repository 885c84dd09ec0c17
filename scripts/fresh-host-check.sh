#!/usr/bin/env bash
# Checks that the README's commands work on a bare Debian 12 that has nothing but a Rust
# toolchain: builds a minimal bookworm root (mmdebstrap, variant `apt`: the Essential
# packages plus apt, no compiler, no protoc, no CA certificates) from this machine's own apt
# sources, binds the host's Rust toolchain into it read-only, clones the commit under test
# (HEAD: uncommitted changes are deliberately not part of the check) and there
#
#   1. runs `bash scripts/run-local.sh` (the README's first command: installs the Debian
#      packages, builds with a fresh CARGO_HOME and target/, starts the plugin) and checks
#      that the plugin answers Plugin.Activate on the root's /run/docker/plugins/calico.sock,
#      then stops it with SIGTERM;
#   2. runs the dependency step of the README's test command (scripts/test-deps.sh, which
#      scripts/test.sh runs first) and checks that etcd, dockerd, busybox, iptables and ip
#      are there afterwards, and sid's engine in its cache (scripts/fetch-docker-engine.sh).
#
# Run as root on Debian 12 (chroot, mounts):  bash scripts/fresh-host-check.sh
# Takes a while: the release build alone is several minutes on 2 cores.
# Environment: FRESH_HOST_BUILD_TIMEOUT (seconds, default 1500) bounds step 1;
# FRESH_HOST_TMPDIR (default /var/tmp) is where the temporary root goes.
# Needs network access to the apt mirror of this machine and to the crate registry.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build_timeout=${FRESH_HOST_BUILD_TIMEOUT:-1500}
t_all=$SECONDS

say() { printf 'fresh-host: %s\n' "$*"; }
fail() {
    printf 'fresh-host: FAILED: %s\n' "$*" >&2
    exit 1
}
# Prints the last lines of a log, for a failure.
tail_log() {
    [ -s "$1" ] || return 0
    printf 'fresh-host: last lines of %s:\n' "$(basename "$1")" >&2
    grep -v '^ *Downloaded ' "$1" | tail -n "${2:-40}" | sed 's/^/    /' >&2
}

[ "$(id -u)" = 0 ] || fail "run as root (mmdebstrap, chroot and mounts need it)"

# --- The host side: the toolchain to lend, the tools to build the root. -------------------
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
[ -d "$rustup_home/toolchains" ] && [ -x "$cargo_bin/cargo" ] ||
    fail "no rustup toolchain at $rustup_home with cargo in $cargo_bin (the check lends the host's Rust to the root)"
rev=$(git -C "$here" rev-parse HEAD)
if [ -n "$(git -C "$here" status --porcelain --untracked-files=no)" ]; then
    say "note: uncommitted changes are not checked: the root gets commit ${rev:0:12} only"
fi

host_missing=()
command -v mmdebstrap >/dev/null || host_missing+=(mmdebstrap)
command -v curl >/dev/null || host_missing+=(curl)
if [ "${#host_missing[@]}" -gt 0 ]; then
    say "installing on this host: ${host_missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${host_missing[@]}" >/dev/null
fi

# This machine's apt sources (one-line and deb822 files alike: mmdebstrap takes a file path
# as a mirror argument and pastes it into the root's sources).
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -qE '^[[:space:]]*(deb|Types:)' "$f" && sources+=("$f")
done
[ "${#sources[@]}" -gt 0 ] || fail "no apt sources found in /etc/apt/sources.list{,.d}"
# The host's apt settings for reaching its mirror (proxies, snapshot dates: Acquire::...),
# but not the rest (package-manager hooks, index targets of desktop tools, ...).
aptopts=()
for f in /etc/apt/apt.conf.d/*; do
    [ -f "$f" ] || continue
    if grep -qE '^[[:space:]]*Acquire::(Check-Valid-Until|Check-Date|Max-ValidTime|https?|ftp|Proxy|Retries|ForceIPv[46])' "$f"; then
        aptopts+=("--aptopt=$f")
    fi
done

# --- Temporary root, and the clean-up that always runs. -----------------------------------
work=$(mktemp -d "${FRESH_HOST_TMPDIR:-/var/tmp}/fresh-host.XXXXXX")
root=$work/root
plugin_pid=
passed=

# Mount points under $work, as the kernel sees them now (parents before children).
mounts_under_work() {
    findmnt -rn -o TARGET | awk -v w="$work" '$0 == w || index($0, w "/") == 1'
}

# Stops what this script started: the plugin's session (setsid: its own process group) and
# any other process whose root directory is our root (apt, cargo, ... started in it).
stop_processes() {
    local sig pid r hit
    for sig in TERM KILL; do
        hit=
        if [ -n "$plugin_pid" ] && kill -0 "$plugin_pid" 2>/dev/null; then
            kill "-$sig" -- "-$plugin_pid" 2>/dev/null && hit=1
        fi
        for pid in /proc/[0-9]*; do
            r=$(readlink "$pid/root" 2>/dev/null) || continue
            [ "$r" = "$root" ] || continue
            kill "-$sig" "${pid#/proc/}" 2>/dev/null && hit=1
        done
        [ -n "$hit" ] || break
        say "stopped what was still running in the root (SIG$sig)"
        sleep 3
    done
}

cleanup() {
    local rc=$? t=$SECONDS m left
    trap - EXIT INT TERM
    set +e
    stop_processes
    # Unmount in reverse order of mounting, recursively (the /dev bind has submounts);
    # lazily only as a last resort.
    for m in $(mounts_under_work | tac); do
        umount -R "$m" 2>/dev/null || umount -R -l "$m" 2>/dev/null
    done
    left=$(mounts_under_work)
    if [ -n "$left" ]; then
        # Never delete through a mount: /dev, /proc or the host's toolchain would go with it.
        printf 'fresh-host: FAILED: still mounted, NOT removing %s:\n%s\n' "$work" "$left" >&2
        exit 1
    fi
    rm -rf --one-file-system "$work"
    if [ -e "$work" ]; then
        printf 'fresh-host: FAILED: could not remove %s\n' "$work" >&2
        exit 1
    fi
    say "cleaned up (mounts, $work) in $((SECONDS - t)) s"
    say "total $((SECONDS - t_all)) s"
    if [ "$rc" = 0 ] && [ -n "$passed" ]; then
        echo "fresh-host check: passed"
    else
        echo "fresh-host check: FAILED" >&2
        [ "$rc" != 0 ] || rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. The root. -------------------------------------------------------------------------
t=$SECONDS
say "making a bare Debian 12 root in $root (mmdebstrap --variant=apt, from ${sources[*]})"
mmdebstrap --mode=root --variant=apt "${aptopts[@]}" bookworm "$root" "${sources[@]}" \
    >"$work/mmdebstrap.log" 2>&1 || { tail_log "$work/mmdebstrap.log"; fail "mmdebstrap"; }

# Keys named by Signed-By in the sources that the root lacks (third-party repositories).
for key in $(sed -nE 's/^[[:space:]]*Signed-By:[[:space:]]*(\/[^[:space:]]+).*/\1/p; s/.*signed-by=(\/[^] ]+).*/\1/p' "${sources[@]}" | sort -u); do
    if [ -f "$key" ] && [ ! -e "$root$key" ]; then
        mkdir -p "$root$(dirname "$key")" && cp "$key" "$root$key"
    fi
done
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# CAs this host trusts beyond Debian's set (a local or proxy CA in its bundle) go where
# Debian takes local CAs from, /usr/local/share/ca-certificates: they reach the root's
# bundle only when the ca-certificates package is installed there (by scripts/deps.sh), so
# the check still fails if that package is missing, but does not fail for a network that
# only this host's trust lets through.
pem_bodies() {
    awk '/-----BEGIN CERTIFICATE-----/ { b = ""; in_cert = 1; next }
         /-----END CERTIFICATE-----/ { if (in_cert) print b; in_cert = 0; next }
         in_cert { gsub(/[ \t\r]/, ""); b = b $0 }' "$@"
}
local_cas=0
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    while read -r body; do
        local_cas=$((local_cas + 1))
        { echo '-----BEGIN CERTIFICATE-----'; fold -w 64 <<<"$body"; echo '-----END CERTIFICATE-----'; } \
            >"$root/usr/local/share/ca-certificates/fresh-host-$local_cas.crt"
    done < <(grep -vxFf <(find /usr/share/ca-certificates -name '*.crt' -exec cat {} + 2>/dev/null | pem_bodies) \
        <(pem_bodies /etc/ssl/certs/ca-certificates.crt) || true)
fi
# No service starts in the root: a package's init script (dockerd, etcd, containerd) would
# run in this host's network namespace and touch its firewall. Daemons are not what is
# checked here; that the packages install is.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

# The root must be bare, or the check proves nothing.
for p in /usr/bin/cc /usr/bin/gcc /usr/bin/protoc /usr/include/google/protobuf/descriptor.proto \
    /etc/ssl/certs/ca-certificates.crt /root/.cargo; do
    [ ! -e "$root$p" ] || fail "the new root already has $p: not a bare Debian"
done
say "root made in $((SECONDS - t)) s ($(du -sm "$root" | cut -f1) MB, $(chroot "$root" dpkg-query -W -f='.\n' | wc -l) packages; no cc, protoc, descriptor.proto or CA bundle; $local_cas local CA(s) of this host staged)"

# Mounts: a /proc and a read-only /sys of their own, the host's /dev (apt and cargo need
# /dev/null and friends), the host's Rust toolchain read-only. rslave: unmounting here
# never propagates back to the host's /dev.
mkdir -p "$root/root/.rustup" "$root/root/.cargo/bin"
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount --make-rslave "$root/dev"
mount --bind "$rustup_home" "$root/root/.rustup"
mount -o remount,bind,ro "$root/root/.rustup"
mount --bind "$cargo_bin" "$root/root/.cargo/bin"
mount -o remount,bind,ro "$root/root/.cargo/bin"

git clone -q "$here" "$root/root/calico-libnetwork"
git -C "$root/root/calico-libnetwork" checkout -q --detach "$rev"
say "cloned commit ${rev:0:12} into the root"

# A clean environment: the toolchain's proxies on PATH, a CARGO_HOME of the root's own (an
# empty crate cache: every crate is downloaded, as on a new machine), no setting from here.
chroot_env=(
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    HOME=/root
    LANG=C.UTF-8
    TERM=dumb
    CARGO_HOME=/root/.cargo
    CARGO_TERM_COLOR=never
    RUSTUP_HOME=/root/.rustup
    RUSTUP_AUTO_INSTALL=0
)
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -n "${!v:-}" ] && chroot_env+=("$v=${!v}")
done
in_root() {
    chroot "$root" /usr/bin/env -i "${chroot_env[@]}" "$@"
}

# --- 2. The README's first command. -------------------------------------------------------
# The plugin runs in this host's network namespace (a chroot is no network namespace), so:
# CALICO_LIBNETWORK_DATAPLANE=off: it writes no firewall rule of this host, and removes none
# when it stops; NODENAME=fresh-host-check: its records (in the root's embedded store) are
# of a node of its own; CALICO_LIBNETWORK_DOCKER_HOST names a socket that does not exist, so
# no Docker API answers and its start-up reconciliation removes no veth of this host.
t=$SECONDS
sock=$root/run/docker/plugins/calico.sock
log=$work/run-local.log
say "running 'bash scripts/run-local.sh' in the root (Debian packages, release build, plugin; up to ${build_timeout} s)"
setsid chroot "$root" /usr/bin/env -i "${chroot_env[@]}" \
    CALICO_LIBNETWORK_DATAPLANE=off NODENAME=fresh-host-check \
    CALICO_LIBNETWORK_DOCKER_HOST=unix:///run/fresh-host-check-no-docker.sock \
    nice -n 10 bash -c 'cd /root/calico-libnetwork && exec bash scripts/run-local.sh' \
    >"$log" 2>&1 </dev/null &
plugin_pid=$!
# setsid made it the leader of a new session and process group (it does not fork when, as
# here, the caller is no group leader): killing that group kills only what it started.
[ "$(ps -o pgid= -p "$plugin_pid" | tr -d ' ')" = "$plugin_pid" ] ||
    fail "run-local.sh did not get a process group of its own"

answer=
next_note=$((SECONDS + 60))
while :; do
    if [ -S "$sock" ] &&
        answer=$(curl -sS --max-time 5 --unix-socket "$sock" -X POST http://x/Plugin.Activate 2>/dev/null); then
        break
    fi
    if ! kill -0 "$plugin_pid" 2>/dev/null; then
        rc=0
        wait "$plugin_pid" || rc=$?
        plugin_pid=
        tail_log "$log"
        fail "run-local.sh exited with status $rc before the plugin answered"
    fi
    if [ $((SECONDS - t)) -ge "$build_timeout" ]; then
        tail_log "$log"
        fail "no answer on $sock after ${build_timeout} s"
    fi
    if [ "$SECONDS" -ge "$next_note" ]; then
        say "  ... $((SECONDS - t)) s: $(grep -E '^ *(Compiling|Downloaded|Finished|installing)' "$log" | tail -n 1 | sed 's/^ *//' || true)"
        next_note=$((SECONDS + 60))
    fi
    sleep 2
done
case $answer in
    *'"Implements":["NetworkDriver","IpamDriver"]'*) ;;
    *) tail_log "$log"; fail "unexpected Plugin.Activate answer: $answer" ;;
esac
say "run-local.sh built and served Plugin.Activate in $((SECONDS - t)) s: $answer"

# The plugin is the process we started (run-local.sh execs it), so SIGTERM goes to that PID.
t=$SECONDS
exe=$(readlink "/proc/$plugin_pid/exe" || true)
[ "$exe" = "$root/root/calico-libnetwork/target/release/calico-libnetwork" ] ||
    fail "process $plugin_pid is $exe, not the plugin run-local.sh should have exec'd"
kill -TERM "$plugin_pid"
for _ in $(seq 1 60); do
    kill -0 "$plugin_pid" 2>/dev/null || break
    sleep 0.5
done
if kill -0 "$plugin_pid" 2>/dev/null; then
    tail_log "$log"
    fail "the plugin did not stop within 30 s of SIGTERM"
fi
rc=0
wait "$plugin_pid" || rc=$?
plugin_pid=
[ "$rc" = 0 ] || { tail_log "$log"; fail "the plugin exited with status $rc on SIGTERM"; }
say "plugin stopped by SIGTERM in $((SECONDS - t)) s (exit status 0)"

# --- 3. The dependency step of the README's test command. ---------------------------------
t=$SECONDS
say "running 'bash scripts/test-deps.sh' (the first step of scripts/test.sh) in the root"
in_root bash -c 'cd /root/calico-libnetwork && bash scripts/test-deps.sh' >"$work/test-deps.log" 2>&1 </dev/null ||
    { tail_log "$work/test-deps.log"; fail "scripts/test-deps.sh failed"; }
for b in etcd etcdctl dockerd containerd busybox iptables ip; do
    in_root sh -c "command -v $b" >/dev/null || fail "no $b in the root after scripts/test-deps.sh"
done
sid_root=/var/cache/calico-libnetwork-test/engines/sid
for b in usr/sbin/dockerd usr/bin/docker usr/bin/containerd usr/libexec/docker/cli-plugins/docker-compose; do
    [ -x "$root$sid_root/$b" ] || fail "no $sid_root/$b in the root after scripts/test-deps.sh (scripts/fetch-docker-engine.sh)"
done
say "test.sh's dependency step done in $((SECONDS - t)) s: etcd, etcdctl, dockerd, containerd, busybox, iptables, ip and sid's engine (with Compose) present"

passed=1
exit 0 # cleanup (the EXIT trap) removes the root and prints the verdict
