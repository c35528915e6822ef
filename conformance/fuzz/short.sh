#!/usr/bin/env bash
# The short fuzz run for the test command: every target for ${1:-10} seconds (about a minute
# in all, plus the build the first time). Fails on any crash; see run.sh for everything else.
set -euo pipefail
exec bash "$(dirname "$0")/run.sh" "${1:-10}"
