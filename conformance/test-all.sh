#!/usr/bin/env bash
# Every test of the suite: installs what the tests need (apt packages, cnitool), builds the
# workspace once in release, then runs the unit tests of every crate and the black-box suites
# that exec the built plugins in network namespaces. Run as root; CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "test-all: must run as root (the tests create network namespaces, veths and bridges)" >&2
    exit 1
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/cni-suite-target}
export CARGO_TERM_COLOR=never

echo "== test dependencies"
conformance/scripts/install-test-deps.sh

echo "== format"
cargo fmt --all -- --check

echo "== lint"
cargo clippy --workspace --all-targets -- -D warnings

# Before the workspace's build: the previous release builds in the same target directory
# (its dependencies are reused) and its binaries are kept outside it, keyed by commit; the
# workspace's build then puts this release's binaries back in the target directory.
echo "== previous release (for the rolling-upgrade tests)"
conformance/scripts/build-previous-release.sh

# Kubernetes for the cluster tests (tests/kubernetes.rs): kube-apiserver, controller-manager,
# scheduler, kubelet, kube-proxy, kubectl, crictl and CoreDNS from Go modules, once per pinned
# release (kept in /var/tmp/cni-suite-k8s/<release>; a no-op when present).
echo "== Kubernetes (Go build, once per release)"
start=$(date +%s)
conformance/scripts/build-kubernetes.sh
echo "Kubernetes binaries ready after $(($(date +%s) - start)) s"

# flanneld for the interop tests (tests/flannel_interop.rs): one Go build of its module at the
# pinned release (kept in /var/tmp/cni-suite-flannel/<release>; a no-op when present).
echo "== flannel (Go build, once per release)"
start=$(date +%s)
conformance/scripts/build-flannel.sh
echo "flanneld ready after $(($(date +%s) - start)) s"

echo "== build (release, once)"
cargo build --release --workspace --bins

echo "== tests"
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT
set +e
cargo test --release --workspace --no-fail-fast 2>&1 | tee "$RESULTS"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run: cargo prints a result line per test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$RESULTS"
[ "$status" -eq 0 ] || exit "$status"

echo "== fuzz (a short run of every target)"
bash conformance/fuzz/short.sh
