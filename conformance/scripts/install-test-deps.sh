#!/bin/bash
# Install what the kubenet-bridge conformance tests need on a fresh Debian bookworm machine
# (run as root): the kernel tools the tests drive (iproute2, nftables, iptables), Debian's
# reference CNI plugins in /usr/lib/cni (portmap and bandwidth are chained after ours; bridge
# proves the harness), jq, python3 (the UDP listener that reports source addresses), iperf3,
# and cnitool, built offline from Debian's CNI 1.1.2 source package with Debian's Go.
# For the vxlan-overlay tests and bench: etcd-server, etcd-client, protobuf-compiler and
# libprotobuf-dev (protoc and the well-known types it imports), ethtool, curl.
# For the runtime and packaging tests: containerd, runc, podman, busybox-static, lintian, a CRI client
# (grpcio venv + stubs from Debian's containerd source) and cargo-deb, all under $TOOLS.
#
# Idempotent: apt skips installed packages and the cnitool build is skipped when
# ${CNI_SUITE_TOOLS:-/var/tmp/cni-suite-tools}/bin/cnitool already exists (the CRI client and
# cargo-deb likewise, when present).
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
    # vxlan-overlay (tests/vxlan_overlay.rs, vxlan-bench): Debian's etcd 3.4 server and
    # etcdctl, protoc and its well-known .proto files (libprotobuf-dev: protobuf-compiler only
    # recommends it) for the etcd-client crate's build, ethtool for the bench's offload
    # settings (iperf3 is above), curl for the agent's /metrics and /healthz
    etcd-server etcd-client protobuf-compiler libprotobuf-dev ethtool curl
    # the three-member TLS etcd (tests/overlay_etcd_tls.rs) makes its certificates with openssl
    openssl
    # Runtimes end to end (tests/runtimes.rs): containerd 1.6 with its CRI plugin, podman 4
    # with its CNI backend, runc for both, busybox-static for local images, python3-venv for
    # the CRI client
    containerd runc podman busybox-static python3-venv
    # Kubernetes (tests/kubernetes.rs) needs nothing more from apt: containerd, runc,
    # busybox-static (its images), etcd-server, openssl (its CA), curl and iptables are above;
    # its binaries are built from Go modules by build-kubernetes.sh with the machine's Go
    # The release test checks the .deb as a packager would (tests/packaging/release.rs)
    lintian
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

# The CRI v1 client of tests/runtimes.rs (crictl is not packaged): grpcio in a venv, and
# Python stubs generated from the CRI api.proto vendored in Debian's containerd source package.
CRI="$TOOLS/cri"
if [ ! -f "$CRI/api_pb2_grpc.py" ] || [ ! -x "$CRI/venv/bin/python" ]; then
    W=$(mktemp -d "$TOOLS/cri-build.XXXXXX")
    mkdir -p "$W/apt/lists/partial" "$W/src" "$CRI"
    echo 'deb-src http://deb.debian.org/debian bookworm main' >"$W/apt/src.list"
    APT_SRC=(-o "Dir::Etc::SourceList=$W/apt/src.list" -o Dir::Etc::SourceParts=/nonexistent
             -o "Dir::State::Lists=$W/apt/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
    step apt-get "${APT_SRC[@]}" update -qq
    cd "$W/src"
    step apt-get "${APT_SRC[@]}" source --download-only containerd
    STEP="extract the CRI api.proto"
    tar xOf "$(ls containerd_*.orig.tar.*)" --wildcards '*/vendor/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto' \
        | sed '/gogoproto/d' >"$W/api.proto" 2>>"$LOG"
    grep -q 'service RuntimeService' "$W/api.proto" || { echo "no RuntimeService in api.proto" >>"$LOG"; exit 1; }
    [ -x "$CRI/venv/bin/python" ] || step /usr/bin/python3 -m venv "$CRI/venv"
    step "$CRI/venv/bin/pip" install -q grpcio grpcio-tools
    cp "$W/api.proto" "$CRI/api.proto"
    cd "$CRI"
    step "$CRI/venv/bin/python" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. api.proto
    rm -rf "$W"
fi

# cargo-deb for packaging/release.sh's .deb (tests/packaging.rs), built once into $TOOLS/bin.
# From /, with its own target dir, so this workspace's static-target config does not apply.
if [ ! -x "$TOOLS/bin/cargo-deb" ]; then
    STEP="cargo install cargo-deb"
    (cd / && CARGO_TARGET_DIR="$TOOLS/cargo-deb-build" \
        cargo install cargo-deb --version 3.8.0 --locked --root "$TOOLS") >>"$LOG" 2>&1
fi

STEP="check cnitool"
# cnitool without arguments prints its usage and exits 1; the usage proves the binary runs.
usage=$("$CNITOOL" 2>&1 || true)
grep -q 'cnitool add' <<<"$usage" || { echo "$CNITOOL does not run: $usage" >>"$LOG"; exit 1; }
