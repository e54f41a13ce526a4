#!/usr/bin/env bash
# The load comparison: installs wrk, nginx and HAProxy (apt) and cmake if missing,
# builds the release binaries, then runs compare.py (see its --help), which
# prints a Markdown table. Loopback only; every process it starts is stopped.
#
#   benches/load/run.sh                 # ingress vs nginx vs HAProxy, 10,000 apps
#   benches/load/run.sh --scale         # throughput and RSS at 10 / 10,000 / 100,000 routes (x10 labels)
#   benches/load/run.sh --publish       # p99 while a change is published every 10 ms
set -euo pipefail
cd "$(dirname "$0")/../.."
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ "${#missing[@]}" -gt 0 ]; then
  scripts/install-system-packages "${missing[@]}"
fi
export PATH="$PATH:/usr/sbin"
cargo build --release --bins --example churn
exec python3 benches/load/compare.py "$@"
