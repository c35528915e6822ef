#!/usr/bin/env bash
# Builds the suite in release (static x86_64 binaries) and packs it:
#   dist/cni-suite-linux-amd64-<version>.tgz   the plugins (bin/), the operator command
#                                              (sbin/cni-suite), examples/, kubernetes/
#                                              (DaemonSet, installer, Containerfile), SHA256SUMS
#   dist/cni-suite-linux-amd64-<version>.tgz.sha256
#   dist/cni-suite_<version>-1_amd64.deb       plugins in /opt/cni/bin, cni-suite in /usr/sbin,
#                                              examples in /usr/share/doc/cni-suite (cargo-deb)
# <version> is [workspace.package] version of Cargo.toml.
#
#   packaging/release.sh [--no-deb] [--no-build] [--out DIR]
#
# Every release carries all three plugins and cni-suite: they are built here (vpc-route's AWS
# SDK takes a while on a cold target dir; cargo reuses an earlier build), or with --no-build
# taken as the test command built them (the tests pack the artifacts they test, and a cargo
# run from inside a test sees another environment, which made build scripts run again and
# the AWS SDK compile anew). cargo-deb is installed once into
# ${CNI_SUITE_TOOLS:-/var/tmp/cni-suite-tools}/bin when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

OUT=dist
DEB=1
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --no-deb) DEB=0 ;;
        --no-build) BUILD=0 ;;
        --out) OUT=${2:?--out needs a directory}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "release: unknown argument $1" >&2; exit 1 ;;
    esac
    shift
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/cni-suite-target}
TOOLS=${CNI_SUITE_TOOLS:-/var/tmp/cni-suite-tools}
CARGO_DEB_VERSION=3.8.0
TARGET=x86_64-unknown-linux-gnu
REL="$CARGO_TARGET_DIR/$TARGET/release"

version=$(awk '/^\[workspace\.package\]/ { s = 1; next } /^\[/ { s = 0 }
               s && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' Cargo.toml)
[ -n "$version" ] || { echo "release: no [workspace.package] version in Cargo.toml" >&2; exit 1; }
echo "== cni-suite $version"

binaries=(kubenet-bridge vxlan-overlay vpc-route)
# Not plugins, kept out of bin/ (the CNI bin dir): the operator command and the overlay agent.
commands=(cni-suite vxlan-overlay-agent)
# The whole workspace, as the test command builds it: cargo unifies dependency features over
# the packages of one build, so building only the four shipped ones compiled the AWS SDK a
# second time (about 15 minutes here) with a feature set of its own.
if [ "$BUILD" -eq 1 ]; then
    echo "== build (release, static, $TARGET): the workspace's binaries; shipped: ${binaries[*]} ${commands[*]}"
    cargo build --release --locked --workspace --bins
fi

for b in "${binaries[@]}" "${commands[@]}"; do
    [ -x "$REL/$b" ] || { echo "release: $REL/$b missing after the build" >&2; exit 1; }
    # Plugins are exec'd per pod and may run with a minimal environment: static only.
    if ! ldd "$REL/$b" 2>&1 | grep -Eq 'statically linked|not a dynamic executable'; then
        echo "release: $REL/$b is dynamically linked (.cargo/config.toml sets crt-static)" >&2
        exit 1
    fi
done

name="cni-suite-$version"
stage=$(mktemp -d "$OUT/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
tree="$stage/$name"
mkdir -p "$tree/bin" "$tree/sbin" "$tree/examples" "$tree/kubernetes"
for b in "${binaries[@]}"; do install -m 0755 "$REL/$b" "$tree/bin/$b"; done
for c in "${commands[@]}"; do install -m 0755 "$REL/$c" "$tree/sbin/$c"; done
install -m 0644 packaging/examples/* "$tree/examples/"
install -m 0644 packaging/kubernetes/daemonset.yaml packaging/kubernetes/vxlan-overlay-kubernetes.yaml packaging/kubernetes/Containerfile "$tree/kubernetes/"
install -m 0755 packaging/kubernetes/install-cni.sh "$tree/kubernetes/"
cp -r packaging/kubernetes/conflists "$tree/kubernetes/"
install -m 0644 README.md "$tree/README.md"
(cd "$tree" && find . -type f ! -name SHA256SUMS | LC_ALL=C sort | sed 's#^\./##' | xargs sha256sum > SHA256SUMS)

# Reproducible: fixed order, owners and mtimes (the last commit's time), gzip without a name.
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
tgz="$OUT/cni-suite-linux-amd64-$version.tgz"
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner -C "$stage" -cf - "$name" \
    | gzip -n -9 > "$tgz.tmp"
mv -f "$tgz.tmp" "$tgz"
(cd "$OUT" && sha256sum "$(basename "$tgz")" > "$(basename "$tgz").sha256")
echo "== $tgz"
sed 's/^/   /' "$tree/SHA256SUMS"

if [ "$DEB" = 1 ]; then
    if [ ! -x "$TOOLS/bin/cargo-deb" ]; then
        echo "== installing cargo-deb $CARGO_DEB_VERSION into $TOOLS (once)"
        # From /, with its own target dir: this workspace's .cargo/config.toml (static target)
        # must not apply to the tool's build.
        (cd / && CARGO_TARGET_DIR="$TOOLS/cargo-deb-build" \
            cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --root "$TOOLS")
    fi
    echo "== .deb (cargo-deb)"
    PATH="$TOOLS/bin:$PATH" cargo deb -p cni-suite --no-build --no-strip --target "$TARGET" \
        --output "$OUT/cni-suite_${version}-1_amd64.deb"
    echo "== $OUT/cni-suite_${version}-1_amd64.deb"
    dpkg-deb --contents "$OUT/cni-suite_${version}-1_amd64.deb" | awk '{ print "   " $6 }' | grep -v '/$'
fi
cd "$ROOT"
