#!/usr/bin/env bash
# Fuzzes every parser target of the suite for SECONDS each (default 60), one after the other:
#   conformance/fuzz/run.sh [SECONDS]
# Targets (fuzz_targets/, properties in src/lib.rs): netconf, conflist, result, env, subnet_env.
#
# cargo-fuzz needs nightly flags; the only toolchain here is stable, so RUSTC_BOOTSTRAP=1 lets
# it accept them. cargo-fuzz is installed (once, --locked) into $CNI_SUITE_TOOLS/cargo-fuzz when
# missing. The build goes to its own target directory, never the workspace's: instrumented
# artifacts must not mix with release plugins.
#
# libFuzzer writes what it learns into a scratch corpus under $CNI_SUITE_FUZZ_WORK and only
# reads the seed corpus kept in the repo (corpus/<target>/), so a run never edits the repo.
# Crashing inputs land in $CNI_SUITE_FUZZ_WORK/artifacts/<target>/; the script prints how to
# replay each one. Exit status: 0 when every target ran its time without a crash.
#
# Environment: CNI_SUITE_TOOLS (default /var/tmp/cni-suite-tools), CNI_SUITE_FUZZ_WORK (default
# /var/tmp/cni-suite-fuzz), CNI_SUITE_FUZZ_TARGET_DIR (default /var/tmp/cni-suite-fuzz-target),
# FUZZ_SANITIZER (default none: the targets are safe Rust, where debug assertions, always on
# here, catch more than ASan and cost less; set address to use ASan anyway).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
seconds=${1:-60}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS per target, default 60]" >&2
    exit 2
fi
tools=${CNI_SUITE_TOOLS:-/var/tmp/cni-suite-tools}
work=${CNI_SUITE_FUZZ_WORK:-/var/tmp/cni-suite-fuzz}
target_dir=${CNI_SUITE_FUZZ_TARGET_DIR:-/var/tmp/cni-suite-fuzz-target}
sanitizer=${FUZZ_SANITIZER:-none}

export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
# The workspace's CARGO_TARGET_DIR must not capture this build.
unset CARGO_TARGET_DIR

if ! [ -x "$tools/cargo-fuzz/bin/cargo-fuzz" ]; then
    echo "== installing cargo-fuzz into $tools/cargo-fuzz"
    cargo install cargo-fuzz --locked --root "$tools/cargo-fuzz"
fi
export PATH="$tools/cargo-fuzz/bin:$PATH"

# Run from the fuzz directory so cargo reads its own Cargo.lock; --fuzz-dir names it.
cd "$here"
fuzz=(cargo fuzz)
opts=(--fuzz-dir "$here" --sanitizer "$sanitizer" --debug-assertions --target-dir "$target_dir")

echo "== building fuzz targets ($target_dir)"
"${fuzz[@]}" build "${opts[@]}"

mapfile -t targets < <("${fuzz[@]}" list --fuzz-dir "$here")
failed=()
summary=()
for t in "${targets[@]}"; do
    scratch="$work/corpus/$t"
    artifacts="$work/artifacts/$t"
    mkdir -p "$scratch" "$artifacts"
    log="$work/$t.log"
    echo "== fuzzing $t for ${seconds}s (log: $log)"
    set +e
    "${fuzz[@]}" run "${opts[@]}" "$t" "$scratch" "$here/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ "$rc" -eq 0 ]; then
        summary+=("$(printf '%-11s ok     %10s runs %8s/s' "$t" "${runs:-?}" "${rate:-?}")")
    else
        failed+=("$t")
        summary+=("$(printf '%-11s FAILED (exit %s) after %s runs' "$t" "$rc" "${runs:-?}")")
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -20 || true
        for a in "$artifacts"/*; do
            [ -e "$a" ] || continue
            echo "   replay: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir $here $t $a"
        done
    fi
done

echo "== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz: crashes in: ${failed[*]}" >&2
    exit 1
fi
