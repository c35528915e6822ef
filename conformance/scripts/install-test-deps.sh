#!/bin/bash
# Install what the kubenet-bridge conformance tests need on a fresh Debian bookworm machine
# (run as root): the kernel tools the tests drive (iproute2, nftables, iptables), Debian's
# reference CNI plugins in /usr/lib/cni (portmap and bandwidth are chained after ours; bridge
# proves the harness), jq, python3 (the UDP listener that reports source addresses), iperf3,
# and cnitool, built offline from Debian's CNI 1.1.2 source package with Debian's Go.
#
# Idempotent: apt skips installed packages and the cnitool build is skipped when
# ${CNI_SUITE_TOOLS:-/var/tmp/cni-suite-tools}/bin/cnitool already exists.
# Quiet on success; on failure prints the failing step and its captured output, exits non-zero.
set -euo pipefail

TOOLS=${CNI_SUITE_TOOLS:-/var/tmp/cni-suite-tools}
CNITOOL="$TOOLS/bin/cnitool"
LOG=$(mktemp /tmp/install-test-deps.XXXXXX.log)
trap 'rc=$?; if [ $rc -ne 0 ]; then echo "install-test-deps: FAILED (exit $rc) in: $STEP" >&2; tail -n 40 "$LOG" >&2; fi; rm -f "$LOG"' EXIT

STEP=init
# Runs one step with its output captured in $LOG; the EXIT trap shows it when the step fails.
step() {
    STEP="$*"
    "$@" >>"$LOG" 2>&1
}

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: must run as root (apt-get, and the tests create network namespaces)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
PACKAGES=(
    iproute2 iputils-ping nftables iptables containernetworking-plugins jq python3 iperf3
    # cnitool's build: Go, the CNI library sources it imports, and what `apt-get source` needs
    golang-go golang-github-appc-cni-dev golang-github-containernetworking-plugins-dev
    dpkg-dev xz-utils ca-certificates
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    step apt-get update -qq
    step apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

for f in /usr/lib/cni/bridge /usr/lib/cni/portmap /usr/lib/cni/bandwidth /usr/lib/cni/host-local; do
    [ -x "$f" ] || { STEP="check reference plugins"; echo "missing $f" >>"$LOG"; exit 1; }
done

if [ ! -x "$CNITOOL" ]; then
    W="$TOOLS/cnitool-build"
    rm -rf "$W"
    mkdir -p "$W/apt/lists/partial" "$W/src" "$TOOLS/bin"
    # cnitool/ is not shipped in golang-github-appc-cni-dev: fetch Debian's *source* package
    # through a private deb-src list, leaving /etc/apt untouched.
    echo 'deb-src http://deb.debian.org/debian bookworm main' >"$W/apt/src.list"
    APT_SRC=(-o "Dir::Etc::SourceList=$W/apt/src.list" -o Dir::Etc::SourceParts=/nonexistent
             -o "Dir::State::Lists=$W/apt/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
    step apt-get "${APT_SRC[@]}" update -qq
    cd "$W/src"
    step apt-get "${APT_SRC[@]}" source --download-only golang-github-appc-cni
    step tar xf "$(ls golang-github-appc-cni_*.orig.tar.xz)"
    SRC=$(ls -d "$W"/src/golang-github-appc-cni-*/)

    # GOPATH mode: our own dir first, Debian's /usr/share/gocode second (libcni, pkg/* ...).
    GP="$W/gopath"
    mkdir -p "$GP/src/cnitool"
    cp "$SRC/cnitool/cnitool.go" "$GP/src/cnitool/"
    cd "$GP/src"
    STEP="go build cnitool"
    GOPATH="$GP:/usr/share/gocode" GO111MODULE=off GOFLAGS= GOPROXY=off GOCACHE="$W/gocache" \
        go build -o "$CNITOOL.tmp" ./cnitool >>"$LOG" 2>&1
    mv "$CNITOOL.tmp" "$CNITOOL"
    rm -rf "$W"
fi

STEP="check cnitool"
# cnitool without arguments prints its usage and exits 1; the usage proves the binary runs.
usage=$("$CNITOOL" 2>&1 || true)
grep -q 'cnitool add' <<<"$usage" || { echo "$CNITOOL does not run: $usage" >>"$LOG"; exit 1; }
