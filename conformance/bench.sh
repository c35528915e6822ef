#!/usr/bin/env bash
# The performance table in one command: ADD/DEL latency (median, p99; single and 50 concurrent)
# and peak RSS of kubenet-bridge against the reference bridge + host-local (cni-bench), the
# vxlan-overlay throughput and convergence table (vxlan-bench), and the binary sizes. Writes
# conformance/results/performance.{md,json} plus each part's own files (bench.svg is the chart).
# Run as root after `cargo build --release --workspace --bins`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root" >&2; exit 1; }
BIN=${CARGO_TARGET_DIR:-/var/tmp/cni-suite-target}/x86_64-unknown-linux-gnu/release
OUT=${1:-conformance/results}
mkdir -p "$OUT"
"$BIN/cni-bench" --rounds "${ROUNDS:-40}" --concurrency "${CONCURRENCY:-50}" --dual-stack --out "$OUT" >/dev/null
"$BIN/vxlan-bench" --vxlan-tx-csum on --out "$OUT" >/dev/null
{
    echo "## ADD and DEL latency, peak RSS"
    echo
    cat "$OUT/bench.md"
    echo
    cat "$OUT/vxlan-bench.md"
    echo
    echo "## Binary sizes (static, stripped)"
    echo
    echo "| binary | size |"
    echo "|---|---|"
    for b in kubenet-bridge vxlan-overlay vpc-route cni-suite; do
        [ -f "$BIN/$b" ] && printf '| %s | %.1f MB |\n' "$b" "$(stat -c %s "$BIN/$b" | awk '{print $1/1e6}')"
    done
    for b in bridge host-local; do
        printf '| reference %s | %.1f MB |\n' "$b" "$(stat -c %s "/usr/lib/cni/$b" | awk '{print $1/1e6}')"
    done
} > "$OUT/performance.md"
sizes=$(for b in kubenet-bridge vxlan-overlay vpc-route cni-suite; do
    [ -f "$BIN/$b" ] && printf '"%s": %s,' "$b" "$(stat -c %s "$BIN/$b")"; done)
printf '{"latency": %s, "vxlan": %s, "binary_bytes": {%s}}\n' \
    "$(cat "$OUT/bench.json")" "$(cat "$OUT/vxlan-bench.json")" "${sizes%,}" > "$OUT/performance.json"
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$OUT/performance.json"
cat "$OUT/performance.md"
