#!/usr/bin/env bash
# The benchmark before and after, side by side: cni-bench run against the previous release's
# plugins (conformance/previous-release, built by scripts/build-previous-release.sh) and
# against this build's, each run with the reference bridge + host-local beside it, so the
# ours-÷-reference ratios of the two runs can be compared across machine noise. Binary sizes
# of all three plugins too. Writes conformance/results/compare.{md,json}.
# Run as root after `cargo build --release --workspace --bins`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-compare: run as root" >&2; exit 1; }
BIN=${CARGO_TARGET_DIR:-/var/tmp/cni-suite-target}/x86_64-unknown-linux-gnu/release
OUT=${1:-conformance/results}
PREV=$(conformance/scripts/build-previous-release.sh)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Alternating runs: drift of the machine during the bench falls on both sides.
for round in 1 2; do
    for side in previous new; do
        dir=$BIN
        [ "$side" = previous ] && dir=$PREV
        mkdir -p "$work/$side-$round"
        "$BIN/cni-bench" --ours "$dir" --rounds "${ROUNDS:-40}" --concurrency "${CONCURRENCY:-50}" \
            --out "$work/$side-$round" >/dev/null
    done
done
mkdir -p "$OUT"
python3 - "$work" "$PREV" "$BIN" "$OUT" "$(cat conformance/previous-release)" <<'PY'
import json, os, statistics, sys
work, prev, new, out, commit = sys.argv[1:]
runs = {side: [json.load(open(f"{work}/{side}-{r}/bench.json")) for r in (1, 2)]
        for side in ("previous", "new")}
metrics = [("add", "ADD median"), ("del", "DEL median"),
           ("add_concurrent", "ADD median ×50"), ("del_concurrent", "DEL median ×50")]
def per_plugin(side, plugin, key):
    return statistics.median(
        next(p for p in run["results"] if p["plugin"] == plugin)[key]["median_ms"]
        for run in runs[side])
def ratio(side, key):
    return statistics.median(run["ratio_median"][key] for run in runs[side])
rows, data = [], {"previous_release": commit, "plugins": {}, "ratios": {}, "binary_bytes": {}}
rows.append("| plugin | metric | previous release | this build | change |")
rows.append("|---|---|---|---|---|")
for plugin in ("kubenet-bridge", "vxlan-overlay"):
    data["plugins"][plugin] = {}
    for key, label in metrics:
        a, b = per_plugin("previous", plugin, key), per_plugin("new", plugin, key)
        data["plugins"][plugin][key] = {"previous_ms": a, "new_ms": b}
        rows.append(f"| {plugin} | {label} | {a:.2f} ms | {b:.2f} ms | {100 * (b - a) / a:+.0f} % |")
rows.append("")
rows.append("| kubenet-bridge ÷ reference (medians) | previous release | this build |")
rows.append("|---|---|---|")
for key, label in metrics:
    a, b = ratio("previous", key), ratio("new", key)
    data["ratios"][key] = {"previous": a, "new": b}
    rows.append(f"| {label.replace(' median', '')} | {a:.2f}× | {b:.2f}× |")
rows.append("")
rows.append("| binary | previous release | this build | change |")
rows.append("|---|---|---|---|")
for b in ("kubenet-bridge", "vxlan-overlay", "vpc-route"):
    x, y = os.path.getsize(f"{prev}/{b}"), os.path.getsize(f"{new}/{b}")
    data["binary_bytes"][b] = {"previous": x, "new": y}
    rows.append(f"| {b} | {x:,} B | {y:,} B | {100 * (y - x) / x:+.1f} % |")
head = (f"Previous release {commit[:7]} against this build: cni-bench twice on each, "
        "alternating; medians of the two runs.\n\n")
open(f"{out}/compare.md", "w").write(head + "\n".join(rows) + "\n")
json.dump(data, open(f"{out}/compare.json", "w"), indent=2, sort_keys=True)
print(head + "\n".join(rows))
PY
