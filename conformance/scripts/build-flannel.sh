#!/usr/bin/env bash
# Builds flanneld for the interop tests (tests/flannel_interop.rs), once per pinned release,
# from its Go module (github.com/flannel-io/flannel, whose main package is the module root), in a
# generated wrapper module.
#
# Why a wrapper module: flannel's go.mod has no replace directive, but it requires
# github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc v1.3.188, which the Go module
# proxy this project reaches refuses ("403 This module version is not available", and it lists
# no version of that module at all). flanneld links every backend, its Tencent Cloud route
# backend included, so the wrapper replaces that one module with a stub (tencentcloud-vpc-stub/:
# the few types and calls flannel's backend/tencentvpc uses from its package v20170312, every
# call failing). Nothing else of flannel changes; the tests use its vxlan backend, which never
# reaches the stub.
# cgo: flannel's UDP backend on amd64 (udp_network_amd64.go) calls into C (cproxy_amd64.go) and
# does not build without it, and main.go links every backend; flannel's own Makefile sets
# CGO_ENABLED=1 on amd64 and 0 elsewhere, and so does this script (gcc is Debian's).
#
# Everything lives under $FLANNEL_ROOT (default /var/tmp/cni-suite-flannel/<release>): bin/,
# gomod/ (GOMODCACHE), gocache/ (GOCACHE), wrapper/ (the generated go.mod and the stub). A run
# whose bin/ already holds flanneld does nothing. Prints the path of flanneld on its last line.
set -euo pipefail

FLANNEL_VERSION=${FLANNEL_VERSION:-v0.28.10}
FLANNEL_ROOT=${FLANNEL_ROOT:-/var/tmp/cni-suite-flannel/${FLANNEL_VERSION}}
BIN=$FLANNEL_ROOT/bin
FLANNELD=$BIN/flanneld

if [[ -x $FLANNELD ]]; then
    echo "$FLANNELD"
    exit 0
fi

# One build at a time (the test kit's fixture runs this script too); the second finds it done.
mkdir -p "$FLANNEL_ROOT"
exec 9>"$FLANNEL_ROOT/.lock"
flock 9
if [[ -x $FLANNELD ]]; then
    echo "$FLANNELD"
    exit 0
fi

# The machine's Go (/usr/local/go) before Debian's golang-go (1.19, installed for cnitool's
# build), which predates GOTOOLCHAIN; flannel's module asks for a newer Go than either may be.
GO=${GO:-}
if [[ -z $GO ]]; then
    if [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go; else GO=$(command -v go || true); fi
fi
[[ -n $GO ]] || { echo "build-flannel: no go command (Go >= 1.21 needed; newer is fetched by GOTOOLCHAIN)" >&2; exit 1; }
gominor=$("$GO" env GOVERSION | sed -nE 's/^go1\.([0-9]+).*/\1/p')
if [[ -z $gominor || $gominor -lt 21 ]]; then
    echo "build-flannel: $GO is $("$GO" env GOVERSION 2>/dev/null || echo unknown); Go >= 1.21 needed (set GO=/path/to/go)" >&2
    exit 1
fi
export PATH=$(dirname "$GO"):$PATH

cgo=0
[[ $("$GO" env GOARCH) == amd64 ]] && cgo=1
export GOMODCACHE=$FLANNEL_ROOT/gomod GOCACHE=$FLANNEL_ROOT/gocache GOFLAGS=-modcacherw CGO_ENABLED=$cgo
# flannel's go.mod names the Go it needs; an older machine Go fetches that one (GOTOOLCHAIN=auto,
# Go's default), so say it explicitly.
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
W=$FLANNEL_ROOT/wrapper
mkdir -p "$W/tencentcloud-vpc-stub/v20170312" "$BIN" "$GOMODCACHE" "$GOCACHE"
cd "$W"
cat >go.mod <<EOF
module cni-suite.local/flannel-build

go 1.26.0

require github.com/flannel-io/flannel $FLANNEL_VERSION

replace github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc => ./tencentcloud-vpc-stub
EOF
cat >tools.go <<'EOF'
//go:build tools

package tools

import _ "github.com/flannel-io/flannel"
EOF
cat >tencentcloud-vpc-stub/go.mod <<'EOF'
module github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc

go 1.21
EOF
cat >tencentcloud-vpc-stub/v20170312/vpc.go <<'EOF'
// Package v20170312 stands in for Tencent Cloud's VPC SDK, which the module proxy does not serve:
// the names flannel's tencentvpc backend uses, every call failing. The interop tests run the
// vxlan backend only.
package v20170312

import "errors"

var errStub = errors.New("flanneld built by cni-suite without Tencent Cloud's VPC SDK: the tencent-vpc backend is unavailable")

type Filter struct {
	Name   *string
	Values []*string
}

type Route struct {
	DestinationCidrBlock *string
	GatewayType          *string
	GatewayId            *string
	RouteId              *uint64
	RouteType            *string
	Enabled              *bool
}

type RouteTable struct {
	RouteTableId *string
	RouteSet     []*Route
}

type DescribeRouteTablesRequest struct{ Filters []*Filter }

type DescribeRouteTablesResponse struct {
	Response *struct{ RouteTableSet []*RouteTable }
}

type DeleteRoutesRequest struct {
	RouteTableId *string
	Routes       []*Route
}

type DeleteRoutesResponse struct{}

type CreateRoutesRequest struct {
	RouteTableId *string
	Routes       []*Route
}

type CreateRoutesResponse struct{}

type Client struct{}

func NewClientWithSecretId(secretID, secretKey, region string) (*Client, error) {
	return &Client{}, errStub
}

func NewDescribeRouteTablesRequest() *DescribeRouteTablesRequest { return &DescribeRouteTablesRequest{} }
func NewDeleteRoutesRequest() *DeleteRoutesRequest               { return &DeleteRoutesRequest{} }
func NewCreateRoutesRequest() *CreateRoutesRequest               { return &CreateRoutesRequest{} }

func (*Client) DescribeRouteTables(*DescribeRouteTablesRequest) (*DescribeRouteTablesResponse, error) {
	return nil, errStub
}

func (*Client) DeleteRoutes(*DeleteRoutesRequest) (*DeleteRoutesResponse, error) {
	return nil, errStub
}

func (*Client) CreateRoutes(*CreateRoutesRequest) (*CreateRoutesResponse, error) {
	return nil, errStub
}
EOF
# go.sum for the wrapper (and a go line raised to what flannel asks, if a later release asks
# more). A failure here is not fatal on its own: whatever is missing fails the build below,
# with the error printed.
go mod tidy 2>&1 | grep -v '^go: downloading' >&2 || true
# Into a temporary directory first, so that a cut-short build never leaves a flanneld that the
# check above would take for done.
tmp=$(mktemp -d "$FLANNEL_ROOT/.out.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
go build -trimpath \
    -ldflags "-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$FLANNEL_VERSION" \
    -o "$tmp/flanneld" github.com/flannel-io/flannel
echo "build-flannel: go build took $(($(date +%s) - start)) s" >&2
mv "$tmp/flanneld" "$FLANNELD"
echo "$FLANNELD"
