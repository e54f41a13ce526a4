#!/usr/bin/env bash
# The load comparison: installs wrk, nginx, HAProxy, Caddy, h2load (nghttp2-client),
# openssl and Python's cryptography (apt) and cmake if missing, builds the release
# binaries, then runs compare.py (see its --help), which
# prints a Markdown table: requests/s, latency, CPU µs (user and system) per request
# and upstream connections for each target, the ingress/nginx, ingress/haproxy and
# ingress/caddy ratios, and the cloudflare/pingora#998 check (the ingress's upstream
# connections under load, its "failed to acquire reusable stream" log lines).
# Loopback only; every process it starts is stopped, also on errors and Ctrl-C.
# Set CARGO_TARGET_DIR to build into (and run the binaries from) another target dir.
#
#   benches/load/run.sh                 # ingress vs nginx vs HAProxy vs Caddy, 10,000 apps
#   benches/load/run.sh --rounds 2 --duration 3   # a quick check that it all works
#   benches/load/run.sh --scale         # throughput and RSS at 10 / 10,000 / 100,000 routes (x10 labels)
#   benches/load/run.sh --publish       # p99 while a change is published every 10 ms
#   benches/load/run.sh --tls           # HTTPS (TLS 1.3, same ECDSA P-256 certificate) against
#                                       # nginx with h2load: HTTP/1.1 keep-alive, h2 -m10, a new
#                                       # connection per request, plain HTTP for the reference
#                                       # ratio, and handshakes with 10 vs 10,000 certificates
#   benches/load/run.sh --tls --rounds 2 --seconds 3   # its quick check
#   benches/load/run.sh --replicas      # a control node with 10,000 apps and two replicas:
#                                       # change-to-visible per replica over 100 changes 30 ms
#                                       # apart, the routing stream's bytes per change, and a
#                                       # fresh replica's time to the whole state
#   benches/load/run.sh --replicas --apps 100 --changes 20   # its quick check
#   benches/load/run.sh --access-log    # requests/s with the JSON access log to a file vs
#                                       # [log] access = "off", two ingresses in alternation
set -euo pipefail
cd "$(dirname "$0")/../.."
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v caddy >/dev/null 2>&1 || missing+=(caddy)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# certgen.py (the --tls mode's 10,000 certificates) needs cryptography in python3
# or in Debian's /usr/bin/python3.
if ! python3 -c 'import cryptography' >/dev/null 2>&1 \
    && ! /usr/bin/python3 -c 'import cryptography' >/dev/null 2>&1; then
  missing+=(python3-cryptography)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  scripts/install-system-packages "${missing[@]}"
fi
export PATH="$PATH:/usr/sbin"
cargo build --release --bins --example churn --example visible
exec python3 benches/load/compare.py "$@"
