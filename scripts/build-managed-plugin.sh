#!/usr/bin/env bash
# Builds a Docker managed-plugin bundle (config.json + rootfs/) from the release binary,
# without any registry or base image: the rootfs holds the binary, the shared libraries it
# links (from ldd), iptables (for the standalone firewall mode: both variants, nft and legacy,
# with their extension modules) and nft when present.
#
#   cargo build --release
#   bash scripts/build-managed-plugin.sh [BINARY] [OUTDIR]     # defaults below
#   docker plugin create calico-libnetwork:latest build/plugin
#   docker plugin set calico-libnetwork:latest ETCD_ENDPOINTS=http://10.0.0.1:2379
#   docker plugin enable calico-libnetwork:latest
#
# The same rootfs is the build context of the Dockerfile's `bundled` stage.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$here/target/release/calico-libnetwork}
out=${2:-$here/build/plugin}
config=$here/packaging/plugin/config.json

[ -x "$bin" ] || { echo "build-managed-plugin: no binary at $bin (cargo build --release)" >&2; exit 1; }
command -v ldd >/dev/null || { echo "build-managed-plugin: ldd is needed" >&2; exit 1; }

root=$out/rootfs
rm -rf "$out"
mkdir -p "$root"/usr/bin "$root"/usr/sbin "$root"/usr/lib "$root"/usr/lib64 \
    "$root"/run/docker/plugins "$root"/etc "$root"/tmp "$root"/var/lib/calico-libnetwork \
    "$root"/host/etc "$root"/proc "$root"/sys "$root"/dev
chmod 1777 "$root"/tmp
# Merged /usr, as on current Debian: ldd names libraries under /lib and /usr/lib alike.
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
cp "$config" "$out/config.json"

# Copies a file (following links) to the same path in the rootfs.
put() {
    local src=$1
    mkdir -p "$root$(dirname "$src")"
    cp -L "$src" "$root$src"
}

# Copies the shared libraries (and the loader) an ELF file needs.
put_libs() {
    local f=$1 lib
    for lib in $(ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
        [ -e "$root$lib" ] || put "$lib"
    done
}

install -m 0755 "$bin" "$root/usr/bin/calico-libnetwork"
# Debug information is most of a debug build's size; the plugin does not need it.
if command -v strip >/dev/null; then strip --strip-debug "$root/usr/bin/calico-libnetwork"; fi
put_libs "$bin"

# iptables: both variants' multi-call binaries with their applet names (the plugin writes its
# rules with the variant the host's rules are in, which the bundle cannot know in advance),
# and plain `iptables` as the build host's default.
if ipt=$(command -v iptables 2>/dev/null); then
    real=$(readlink -f "$ipt")
    install -m 0755 "$real" "$root/usr/sbin/$(basename "$real")"
    put_libs "$real"
    for name in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do
        ln -sf "$(basename "$real")" "$root/usr/sbin/$name"
    done
    for variant in legacy nft; do
        multi=$(command -v "xtables-$variant-multi" 2>/dev/null) || continue
        install -m 0755 "$(readlink -f "$multi")" "$root/usr/sbin/xtables-$variant-multi"
        put_libs "$multi"
        for name in iptables ip6tables; do
            for suffix in "" -restore -save; do
                ln -sf "xtables-$variant-multi" "$root/usr/sbin/$name-$variant$suffix"
            done
        done
    done
    # Match and target extensions are loaded with dlopen (ldd does not show them).
    for dir in /usr/lib/x86_64-linux-gnu/xtables /usr/lib/aarch64-linux-gnu/xtables /usr/lib/xtables /usr/lib64/xtables; do
        [ -d "$dir" ] || continue
        mkdir -p "$root$dir"
        for so in "$dir"/*.so; do
            cp -L "$so" "$root$dir/"
            put_libs "$so"
        done
    done
    for f in /etc/protocols /etc/services /etc/ethertypes; do
        [ -e "$f" ] && put "$f"
    done
else
    echo "build-managed-plugin: iptables not found: the bundle will only work with CALICO_LIBNETWORK_DATAPLANE=off or felix" >&2
fi
# ipset: the sets of other hosts' members the standalone rules match (routes between hosts).
if ipset_bin=$(command -v ipset 2>/dev/null); then
    install -m 0755 "$(readlink -f "$ipset_bin")" "$root/usr/sbin/ipset"
    put_libs "$ipset_bin"
else
    echo "build-managed-plugin: ipset not found: isolation across hosts will not work in the bundle" >&2
fi
if nft=$(command -v nft 2>/dev/null); then
    install -m 0755 "$(readlink -f "$nft")" "$root/usr/sbin/nft"
    put_libs "$nft"
fi

echo "managed plugin bundle in $out ($(du -sh "$root" | cut -f1))"
