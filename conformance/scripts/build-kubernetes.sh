#!/usr/bin/env bash
# Builds the Kubernetes parts the cluster tests run, once per pinned release, from Go modules:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl
# (k8s.io/kubernetes), crictl (sigs.k8s.io/cri-tools) and coredns (github.com/coredns/coredns),
# in ONE `go build` of a generated wrapper module.
#
# Why a wrapper module: k8s.io/kubernetes's go.mod replaces its ~30 staging modules (k8s.io/api,
# k8s.io/client-go, ...) with ./staging paths, so `go install k8s.io/kubernetes/cmd/...@v` is
# refused. The wrapper requires k8s.io/kubernetes at the release and replaces every staging module
# with its published v0.<minor>.<patch>; crictl and CoreDNS pinned in the same module share those
# k8s.io modules (their own requirements are of the same minor), so one build, one module graph.
#
# Pairing (see README "Under real Kubernetes"): Kubernetes v1.34 is the newest release whose
# kubelet still runs on this VM's hybrid cgroup v1 without an opt-out and still accepts
# containerd 1.6 (Debian bookworm's 1.6.20); 1.35 refuses cgroup v1 unless failCgroupV1=false and
# 1.36 drops containerd 1.x.
#
# Everything lives under $K8S_ROOT (default /var/tmp/cni-suite-k8s/<release>): bin/, gomod/
# (GOMODCACHE), gocache/ (GOCACHE), wrapper/ (the generated go.mod). A run whose bin/ already holds
# every binary does nothing. Prints the bin directory on its last line.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
CRI_TOOLS_VERSION=${CRI_TOOLS_VERSION:-v1.34.0}
COREDNS_VERSION=${COREDNS_VERSION:-v1.12.4}
K8S_ROOT=${K8S_ROOT:-/var/tmp/cni-suite-k8s/${K8S_VERSION}}
BIN=$K8S_ROOT/bin
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl crictl coredns)

missing=0
for b in "${BINARIES[@]}"; do [[ -x $BIN/$b ]] || missing=1; done
if [[ $missing == 0 ]]; then
    echo "$BIN"
    exit 0
fi

# One build at a time (the test kit's fixture runs this script too); the second finds it done.
mkdir -p "$K8S_ROOT"
exec 9>"$K8S_ROOT/.lock"
flock 9
missing=0
for b in "${BINARIES[@]}"; do [[ -x $BIN/$b ]] || missing=1; done
if [[ $missing == 0 ]]; then
    echo "$BIN"
    exit 0
fi

# The machine's Go (/usr/local/go, 1.26 here) before Debian's golang-go (1.19, installed for
# cnitool's build), which is older than the modules' go 1.24 and predates GOTOOLCHAIN.
GO=${GO:-}
if [[ -z $GO ]]; then
    if [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go; else GO=$(command -v go || true); fi
fi
[[ -n $GO ]] || { echo "build-kubernetes: no go command (Go >= 1.21 needed; 1.24 or newer is fetched by GOTOOLCHAIN)" >&2; exit 1; }
gominor=$("$GO" env GOVERSION | sed -nE 's/^go1\.([0-9]+).*/\1/p')
if [[ -z $gominor || $gominor -lt 21 ]]; then
    echo "build-kubernetes: $GO is $("$GO" env GOVERSION 2>/dev/null || echo unknown); Go >= 1.21 needed (set GO=/path/to/go)" >&2
    exit 1
fi
export PATH=$(dirname "$GO"):$PATH

export GOMODCACHE=$K8S_ROOT/gomod GOCACHE=$K8S_ROOT/gocache GOFLAGS=-modcacherw CGO_ENABLED=0
# The modules ask for go 1.24; a machine with an older go takes the one they name from the module
# proxy (GOTOOLCHAIN=auto, Go's default), so say it explicitly.
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
W=$K8S_ROOT/wrapper
mkdir -p "$W" "$BIN" "$GOMODCACHE" "$GOCACHE"
cd "$W"

minor=${K8S_VERSION#v1.}
staging_version=v0.${minor}
{
    echo "module cni-suite.local/k8s-build"
    echo
    echo "go 1.24.0"
    echo
    echo "require ("
    echo "	k8s.io/kubernetes $K8S_VERSION"
    echo "	sigs.k8s.io/cri-tools $CRI_TOOLS_VERSION"
    echo "	github.com/coredns/coredns $COREDNS_VERSION"
    echo ")"
} >go.mod
# Every staging module named in k8s.io/kubernetes's own go.mod, at the published matching version.
go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
kmod=$GOMODCACHE/k8s.io/kubernetes@$K8S_VERSION/go.mod
{
    echo
    echo "replace ("
    sed -nE 's#^\s*(k8s\.io/[a-z0-9-]+) => \./staging/src/.*#\1#p' "$kmod" |
        while read -r m; do echo "	$m => $m $staging_version"; done
    echo ")"
} >>go.mod
cat >tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "github.com/coredns/coredns"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
)
EOF
go mod tidy -e >/dev/null

ver=k8s.io/component-base/version
ldflags="-s -w -X $ver.gitVersion=$K8S_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=${minor%%.*}"
ldflags+=" -X $ver.gitTreeState=clean -X $ver.buildDate=1970-01-01T00:00:00Z"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
ldflags+=" -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRI_TOOLS_VERSION#v}"
start=$(date +%s)
go build -trimpath -ldflags "$ldflags" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl \
    sigs.k8s.io/cri-tools/cmd/crictl \
    github.com/coredns/coredns
echo "build-kubernetes: go build took $(($(date +%s) - start)) s" >&2
echo "$BIN"
