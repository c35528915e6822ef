#!/usr/bin/env bash
# Builds the previous release's plugins (the commit in conformance/previous-release) for the
# rolling-upgrade tests (conformance/testkit/tests/upgrade.rs, vpc-routes-aws/tests/upgrade.rs),
# which add pods with these binaries and then CHECK, DEL and GC them with the new ones.
#
# The binaries are kept outside the clone, keyed by commit, in
# ${CNI_SUITE_PEERS:-/var/tmp/cni-suite-peers}/release-<commit>/, so a warm run builds nothing.
# The source comes from this clone's history (`git archive`); it builds in the same
# CARGO_TARGET_DIR as the workspace, so dependencies compiled with the same versions and
# features are reused, and the release's own crates are built once more. Prints the directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
commit=$(tr -d '[:space:]' < conformance/previous-release)
peers=${CNI_SUITE_PEERS:-/var/tmp/cni-suite-peers}
out="$peers/release-$commit"
bins=(kubenet-bridge vxlan-overlay vpc-route)
if [ -x "$out/${bins[-1]}" ] && for b in "${bins[@]}"; do [ -x "$out/$b" ] || exit 1; done; then
    echo "$out"
    exit 0
fi
git cat-file -e "$commit^{commit}" 2>/dev/null || {
    echo "build-previous-release: commit $commit is not in this clone's history (a shallow clone?): git fetch --unshallow" >&2
    exit 1
}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/cni-suite-target}
src=$(mktemp -d /var/tmp/cni-suite-previous.XXXXXX)
trap 'rm -rf "$src"' EXIT
git archive "$commit" | tar -x -C "$src"
# --locked: the release's own Cargo.lock, as it was built then. The workspace's target
# directory is shared, so the build lock keeps this from running beside another cargo build.
(cd "$src" && cargo build --release --locked --quiet $(printf -- '-p %s ' "${bins[@]}")) >&2
mkdir -p "$out.tmp"
for b in "${bins[@]}"; do
    cp "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/$b" "$out.tmp/$b"
done
git log -1 --format='%H %cI %s' "$commit" > "$out.tmp/COMMIT"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
