#!/usr/bin/env python3
"""Load comparison: the upstream directly, nginx, HAProxy, Caddy and `ingress` in
front of one upstream (nginx returning a small fixed body), measured in alternation
with wrk, on loopback only. Run it through `benches/load/run.sh`, which installs what
it needs and builds the release binaries.

Beside requests/s and latency, each target's row has the CPU time its processes
spent per request (user and system, µs, from /proc/PID/stat over the process and
its children, median of rounds) and the most established connections its processes
held to the upstream, sampled mid-round with `ss`. After the run it counts the
ingress log's "failed to acquire reusable stream" lines (cloudflare/pingora#998);
the log is `ingress.log` in the work directory (kept with --keep).

--tls compares HTTPS instead, ingress against nginx (and HAProxy with --tls-haproxy)
with one ECDSA P-256 certificate made with openssl, TLS 1.3, h2load -t1 as the
client: (a) HTTP/1.1 keep-alive, (b) h2 with 10 streams per connection, (c) a new
connection and full handshake per request, (d) plain HTTP with wrk (the reference
ratio, same run), (e) = (c) against a second ingress holding 10,000 certificates
(made by certgen.py into its tls.cert_dir). The negotiated protocol, cipher, key
exchange and ALPN are recorded once per target with `openssl s_client`.

--access-log measures two ingresses in alternation, one writing its JSON access
log to a file and one with `[log] access = "off"` (every other mode runs the
ingress with the access log off, as nginx runs with `access_log off`).

Binaries are taken from $CARGO_TARGET_DIR/release when CARGO_TARGET_DIR is set,
from target/release otherwise.

Every process this script starts is stopped when it ends (also on Ctrl-C and on
errors); every load loop is bounded by a request duration and a round count.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RELEASE = os.path.join(
    os.path.join(ROOT, os.environ["CARGO_TARGET_DIR"])  # absolute stays absolute
    if os.environ.get("CARGO_TARGET_DIR")
    else os.path.join(ROOT, "target"),
    "release",
)
TOKEN = "load-test-token-0123456789abcdef"
BODY = "hello from upstream\n"  # 20 bytes, as in the baseline notes
HOST_SUFFIX = "example.test"
LOOPBACK = "127.0.0.1"

PROCESSES = []


def log(message):
    print(message, file=sys.stderr, flush=True)


def free_port():
    """A port the kernel just handed out on loopback (released before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def start(args, name, workdir, env=None):
    out = open(os.path.join(workdir, f"{name}.log"), "wb")
    process = subprocess.Popen(
        args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    PROCESSES.append((name, process))
    return process


def stop_all():
    for name, process in reversed(PROCESSES):
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    for name, process in reversed(PROCESSES):
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=5)
    PROCESSES.clear()


def wait_for_port(port, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {LOOPBACK}:{port} within {timeout}s")


def http_get(url, host=None, timeout=5):
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, dict(response.headers), response.read()


# ------------------------------------------------------------------ processes

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def process_tree(pid):
    """`pid` and its descendants (nginx's workers), from /proc/PID/task/*/children."""
    pids, queue = [], [pid]
    while queue and len(pids) < 256:  # bounded: a proxy here has a handful
        current = queue.pop()
        pids.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    queue.extend(int(child) for child in f.read().split())
            except OSError:
                pass
    return pids


def cpu_ticks(pid):
    """{pid: (utime, stime)} in clock ticks for `pid` and its descendants; the
    per-process figures already cover all of a process's threads."""
    ticks = {}
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited between listing and reading
        ticks[member] = (int(fields[11]), int(fields[12]))
    return ticks


def cpu_spent(before, after):
    """User and system seconds spent between two `cpu_ticks` snapshots
    (a process that appeared meanwhile counts from zero)."""
    user = sum(u - before.get(p, (0, 0))[0] for p, (u, _) in after.items())
    system = sum(s - before.get(p, (0, 0))[1] for p, (_, s) in after.items())
    return user / CLOCK_TICK, system / CLOCK_TICK


SS_PID = re.compile(r"pid=(\d+),")


def upstream_connections(pid, upstream_port):
    """Established TCP connections held by `pid` or its descendants to the
    upstream port, from `ss -tnp` (None when ss is missing or fails)."""
    pids = set(process_tree(pid))
    try:
        out = subprocess.run(
            ["ss", "-tnp", "state", "established", f"( dport = :{upstream_port} )"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return sum(
        1 for line in out.stdout.splitlines()
        if any(int(p) in pids for p in SS_PID.findall(line))
    )


# ------------------------------------------------------------------ servers


def start_upstream(workdir, port):
    conf = os.path.join(workdir, "upstream.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {workdir}/upstream.pid;
error_log {workdir}/upstream.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen {LOOPBACK}:{port} reuseport backlog=4096;
    location / {{ return 200 "{BODY.strip()}\\n"; }}
  }}
}}
""")
    process = start(["nginx", "-c", conf, "-p", workdir], "upstream", workdir)
    wait_for_port(port, "the upstream nginx")
    return process


def start_nginx_proxy(workdir, port, upstream_port, workers):
    conf = os.path.join(workdir, "nginx-proxy.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes {workers};
daemon off;
pid {workdir}/nginx-proxy.pid;
error_log {workdir}/nginx-proxy.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream app {{ server {LOOPBACK}:{upstream_port}; keepalive 128; }}
  server {{
    listen {LOOPBACK}:{port} reuseport backlog=4096;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
""")
    process = start(["nginx", "-c", conf, "-p", workdir], "nginx-proxy", workdir)
    wait_for_port(port, "the nginx proxy")
    return process


def start_haproxy(workdir, port, upstream_port, threads):
    conf = os.path.join(workdir, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""
global
  nbthread {threads}
  maxconn 8192
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend fe
  bind {LOOPBACK}:{port}
  default_backend app
backend app
  server s1 {LOOPBACK}:{upstream_port}
""")
    process = start(["haproxy", "-f", conf, "-db"], "haproxy", workdir)
    wait_for_port(port, "haproxy")
    return process


def start_caddy(workdir, port, upstream_port, threads):
    """Caddy's reverse_proxy with admin, automatic HTTPS and access logs off and an
    upstream keep-alive pool of 128, like nginx's. The site address has no host:
    `http://127.0.0.1:PORT` would add a Host matcher, and requests for the preview
    host would get Caddy's empty 200 instead of being proxied; `bind` keeps it on
    loopback. GOMAXPROCS caps its Go scheduler at `threads` threads."""
    conf = os.path.join(workdir, "Caddyfile")
    with open(conf, "w") as f:
        f.write(f"""{{
\tadmin off
\tauto_https off
\tlog {{
\t\tlevel ERROR
\t}}
}}
http://:{port} {{
\tbind {LOOPBACK}
\treverse_proxy {LOOPBACK}:{upstream_port} {{
\t\ttransport http {{
\t\t\tkeepalive 120s
\t\t\tkeepalive_idle_conns 128
\t\t\tkeepalive_idle_conns_per_host 128
\t\t}}
\t}}
}}
""")
    home = os.path.join(workdir, "caddy-home")  # its autosave and data stay in here
    os.makedirs(home, exist_ok=True)
    env = dict(
        os.environ,
        GOMAXPROCS=str(threads),
        HOME=home,
        XDG_CONFIG_HOME=os.path.join(home, "config"),
        XDG_DATA_HOME=os.path.join(home, "data"),
    )
    process = start(
        ["caddy", "run", "--config", conf, "--adapter", "caddyfile"], "caddy", workdir, env=env
    )
    wait_for_port(port, "caddy")
    return process


class Ingress:
    """The `ingress` release binary with its own data directory and ports."""

    def __init__(self, workdir, threads, proxy_extra="", extra_config="", extra_tokens="",
                 access_log="off"):
        self.workdir = workdir
        # `[log] access`: off unless a mode measures it, as nginx runs with
        # `access_log off` here.
        self.access_log = access_log
        self.extra_tokens = extra_tokens
        self.port = free_port()
        self.grpc = free_port()
        self.http = free_port()
        self.threads = threads
        self.proxy_extra = proxy_extra
        self.extra_config = extra_config
        self.process = None

    def config_path(self):
        return os.path.join(self.workdir, "ingress.toml")

    def start(self):
        data = os.path.join(self.workdir, "ingress-data")
        os.makedirs(data, exist_ok=True)
        with open(self.config_path(), "w") as f:
            f.write(f"""
[proxy]
listen = "{LOOPBACK}:{self.port}"
threads = {self.threads}
{self.proxy_extra}
[admin]
grpc_listen = "{LOOPBACK}:{self.grpc}"
http_listen = "{LOOPBACK}:{self.http}"
tokens = [{{ name = "load", secret = "{TOKEN}" }}{self.extra_tokens}]
[store]
data_dir = "{data}"
[log]
access = {json.dumps(self.access_log)}
{self.extra_config}
""")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.process = start(
            [os.path.join(RELEASE, "ingress"), "--config", self.config_path()],
            "ingress",
            self.workdir,
            env=env,
        )
        wait_for_port(self.grpc, "the ingress admin API", timeout=300)
        wait_for_port(self.port, "the ingress proxy", timeout=300)

    def ctl(self, *args, stdin=None):
        env = dict(
            os.environ,
            INGRESS_SERVER=f"http://{LOOPBACK}:{self.grpc}",
            INGRESS_TOKEN=TOKEN,
        )
        result = subprocess.run(
            [os.path.join(RELEASE, "ingressctl"), *args],
            env=env,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if result.returncode != 0:
            raise SystemExit(f"ingressctl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def cpu_seconds(self):
        """User + system CPU time of the process so far."""
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def metric(self, name):
        _, _, body = http_get(f"http://{LOOPBACK}:{self.http}/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None


def proxy_extra(args):
    """The `[proxy]` lines the command line asks for beyond `threads`."""
    return "" if args.work_stealing is None else f"work_stealing = {args.work_stealing}"


def app_name(i):
    return f"app{i}"


def import_apps(ingress, apps, labels, upstream_port):
    """Creates `apps` apps, each with one exact host, an active version and
    `labels` preview labels, all on the upstream, through `ingressctl import`."""
    path = os.path.join(ingress.workdir, f"import-{apps}x{labels}.jsonl")
    upstream = f"{LOOPBACK}:{upstream_port}"
    with open(path, "w") as f:
        for i in range(apps):
            record = {
                "app": app_name(i),
                "hosts": [f"{app_name(i)}.{HOST_SUFFIX}"],
                "upstreams": [upstream],
                "previews": [
                    {"label": f"pr{j}", "branch": f"feature-{j}", "upstreams": [upstream]}
                    for j in range(labels)
                ],
            }
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
    started = time.monotonic()
    ingress.ctl("import", path)
    elapsed = time.monotonic() - started
    log(f"imported {apps} apps x {labels} labels in {elapsed:.1f}s")
    return elapsed


def request_host(apps, labels):
    """The host the load hits: a preview label of an app in the middle."""
    app = app_name(apps // 2)
    if labels > 0:
        return f"pr{labels // 2}.{app}.{HOST_SUFFIX}"
    return f"{app}.{HOST_SUFFIX}"


# ------------------------------------------------------------------ load


WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_REQUESTS = re.compile(r"(\d+) requests in ")


def parse_latency(text, percentile):
    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port, host, seconds, connections, during=None, samples=2):
    """One wrk run. `during`, if given, is called `samples` times spread over the
    run (e.g. to count connections); its results are returned as "samples"."""
    args = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-H",
        f"Host: {host}",
        f"http://{LOOPBACK}:{port}/",
    ]
    wrk = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampled = []
    try:
        if during is not None:
            started = time.monotonic()
            for i in range(samples):
                time.sleep(max(0.0, started + seconds * (i + 1) / (samples + 1) - time.monotonic()))
                sampled.append(during())
        stdout, stderr = wrk.communicate(timeout=seconds + 30)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait(timeout=5)
    if wrk.returncode != 0:
        raise SystemExit(f"wrk failed: {stderr.strip()}")
    text = stdout
    rate = float(WRK_RATE.search(text).group(1))
    requests = WRK_REQUESTS.search(text)
    errors = 0
    for match in re.finditer(r"Non-2xx or 3xx responses:\s+(\d+)", text):
        errors += int(match.group(1))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return {
        "rps": rate,
        "p50": parse_latency(text, 50),
        "p99": parse_latency(text, 99),
        "errors": errors,
        "requests": int(requests.group(1)) if requests else 0,
        "samples": sampled,
    }


def count_lines(path, needle):
    """Lines of the file at `path` that contain `needle` (0 if it is missing)."""
    try:
        with open(path, errors="replace") as f:
            return sum(1 for line in f if needle in line)
    except OSError:
        return 0


def measure(targets, rounds, seconds, connections, host, upstream_port, log_counters=None):
    """Runs wrk against every target in turn, `rounds` times; returns the
    per-target list of results. Each target is (name, port, process): the
    process's tree is charged the CPU of its rounds, and for a proxy (every
    target but "upstream") its established connections to the upstream port
    are sampled twice mid-round. `log_counters` maps a target name to a function
    counting lines of interest in its log; each round records how many were added
    while it ran ("log_lines")."""
    log_counters = log_counters or {}
    results = {name: [] for name, _, _ in targets}
    for name, port, _ in targets:  # warm-up: connections, pools, leases, wakes
        run_wrk(port, host, 1, connections)
    for round_number in range(rounds):
        for name, port, process in targets:
            if process.poll() is not None:
                raise SystemExit(f"{name} exited (status {process.returncode}); see its log")
            during = None
            if name != "upstream":
                during = lambda: upstream_connections(process.pid, upstream_port)  # noqa: E731
            counter = log_counters.get(name)
            lines_before = counter() if counter else 0
            before = cpu_ticks(process.pid)
            result = run_wrk(port, host, seconds, connections, during=during)
            user, system = cpu_spent(before, cpu_ticks(process.pid))
            if counter:
                result["log_lines"] = counter() - lines_before
            served = max(result["requests"], 1)
            result["us_user"] = 1e6 * user / served
            result["us_sys"] = 1e6 * system / served
            counts = [c for c in result["samples"] if c is not None]
            result["conns"] = max(counts) if counts else None
            results[name].append(result)
            log(
                f"round {round_number + 1}/{rounds} {name:10} "
                f"{result['rps']:9.0f} req/s  p50 {result['p50']:.2f} ms  "
                f"p99 {result['p99']:.2f} ms  errors {result['errors']}  "
                f"CPU/req {result['us_user']:.1f} µs user {result['us_sys']:.1f} µs sys"
                + (f"  upstream conns {counts}" if during else "")
                + (f"  log lines {result['log_lines']}" if counter else "")
            )
    return results


def median(results, key):
    return statistics.median(r[key] for r in results)


def table(results):
    """The Markdown table; the CPU and upstream-connection columns appear when
    the results carry them (`measure` fills them, the --publish mode does not)."""
    cpu = any("us_user" in r for rounds in results.values() for r in rounds)
    header = "| target | requests/s (median) | range | p50 ms | p99 ms | errors |"
    rule = "|---|---|---|---|---|---|"
    if cpu:
        header += " µs user/req | µs sys/req | upstream conns (max) |"
        rule += "---|---|---|"
    lines = [header, rule]
    for name, rounds in results.items():
        rates = [r["rps"] for r in rounds]
        line = (
            f"| {name} | {median(rounds, 'rps'):.0f} | {min(rates):.0f}–{max(rates):.0f} "
            f"| {median(rounds, 'p50'):.2f} | {median(rounds, 'p99'):.2f} "
            f"| {sum(r['errors'] for r in rounds)} |"
        )
        if cpu:
            conns = [r["conns"] for r in rounds if r.get("conns") is not None]
            line += (
                f" {median(rounds, 'us_user'):.1f} | {median(rounds, 'us_sys'):.1f} "
                f"| {max(conns) if conns else '—'} |"
            )
        lines.append(line)
    return "\n".join(lines)


def ratios(results):
    lines = []
    ingress = results.get("ingress")
    if not ingress:
        return ""
    for other in ("nginx", "haproxy", "caddy"):
        if other in results:
            rate = median(ingress, "rps") / median(results[other], "rps")
            p99 = median(ingress, "p99") / median(results[other], "p99")
            lines.append(
                f"- ingress/{other}: requests/s ratio **{rate:.2f}**, p99 ratio {p99:.2f} "
                f"(ingress p99 {'≤' if p99 <= 1.0 else '>'} {other} p99)"
            )
    return "\n".join(lines)


def machine(extra_tools=()):
    """CPU count and model and the tools' versions; `extra_tools` are more
    version commands (the --tls mode adds h2load and openssl)."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = []
    for command in (["nginx", "-v"], ["haproxy", "-v"], ["caddy", "version"], ["wrk", "-v"],
                    *extra_tools):
        if shutil.which(command[0]) is None:
            continue
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
        first = (out.stdout + out.stderr).strip().splitlines()
        version = first[0] if first else command[0]
        versions.append(f"Caddy {version}" if command[0] == "caddy" else version)
    return f"{os.cpu_count()} CPUs ({cpu}); " + "; ".join(versions)


# ------------------------------------------------------------------ modes


REUSE_FAILURE = "failed to acquire reusable stream"  # pingora-core's error! (pingora#998)


def compare(args, workdir):
    upstream_port = free_port()
    upstream = start_upstream(workdir, upstream_port)
    nginx_port = free_port()
    nginx = start_nginx_proxy(workdir, nginx_port, upstream_port, args.nginx_workers)
    haproxy_port = free_port()
    haproxy = start_haproxy(workdir, haproxy_port, upstream_port, args.haproxy_threads)
    caddy_port = free_port()
    caddy = start_caddy(workdir, caddy_port, upstream_port, args.caddy_threads)
    extra = proxy_extra(args)
    ingress = Ingress(workdir, args.threads, proxy_extra=extra)
    ingress.start()
    import_apps(ingress, args.apps, args.labels, upstream_port)
    host = request_host(args.apps, args.labels)
    status, headers, _ = http_get(f"http://{LOOPBACK}:{ingress.port}/", host=host)
    log(f"ingress answers {status} for {host} (version {headers.get('x-ingress-version')})")
    targets = [
        ("upstream", upstream_port, upstream),
        ("nginx", nginx_port, nginx),
        ("haproxy", haproxy_port, haproxy),
        ("caddy", caddy_port, caddy),
        ("ingress", ingress.port, ingress.process),
    ]
    # Every target must really proxy: a proxy answering on its own (Caddy with a
    # site that does not match the Host, say) would be measured as very fast.
    for name, port, _ in targets:
        status, _, body = http_get(f"http://{LOOPBACK}:{port}/", host=host)
        if status != 200 or body.decode(errors="replace") != BODY:
            raise SystemExit(f"{name} answered {status} {body[:80]!r}, not the upstream's body")
    log_path = os.path.join(workdir, "ingress.log")  # the ingress's stdout and stderr
    results = measure(
        targets, args.rounds, args.seconds, args.connections, host, upstream_port,
        log_counters={"ingress": lambda: count_lines(log_path, REUSE_FAILURE)},
    )
    ingress_conns = [r["conns"] for r in results["ingress"] if r.get("conns") is not None]
    reuse_failures = count_lines(log_path, REUSE_FAILURE)
    per_round = [r["log_lines"] for r in results["ingress"]]
    per_1k = [1000 * r["log_lines"] / max(r["requests"], 1) for r in results["ingress"]]
    report = [
        f"Machine: {machine()}",
        f"Load: wrk -t1 -c{args.connections} -d{args.seconds}s, {args.rounds} rounds in alternation; "
        f"ingress with {args.apps} apps and {args.labels} preview labels per app "
        f"(threads {args.threads}), request host {host}; nginx {args.nginx_workers} workers, "
        f"HAProxy {args.haproxy_threads} threads, Caddy GOMAXPROCS={args.caddy_threads}. "
        f"CPU per request: user and system time of the target's processes over the round "
        f"divided by the requests wrk completed, median of rounds; upstream conns: "
        f"established connections to the upstream held by the target, sampled twice a round.",
        "",
        table(results),
        "",
        ratios(results),
        f"- ingress upstream connections during load: "
        f"{max(ingress_conns) if ingress_conns else 'unknown (ss failed)'} (max seen; "
        f"per round {ingress_conns}); \"{REUSE_FAILURE}\" log lines: {reuse_failures} "
        f"(cloudflare/pingora#998), of which per measured round {per_round}, "
        f"{statistics.median(per_1k):.1f} per 1,000 requests (median of rounds)",
    ]
    print("\n".join(report))


def access_log(args, workdir):
    """Requests/s of two ingresses measured in alternation: one writing its
    JSON access log to a file, one with `[log] access = "off"`."""
    upstream_port = free_port()
    start_upstream(workdir, upstream_port)
    extra = proxy_extra(args)
    log_path = os.path.join(workdir, "log-on", "access.log")
    targets = []
    ingresses = {}
    for name, access, own_dir in (("ingress log on", log_path, "log-on"),
                                  ("ingress log off", "off", "log-off")):
        subdir = os.path.join(workdir, own_dir)
        os.makedirs(subdir, exist_ok=True)
        ingress = Ingress(subdir, args.threads, proxy_extra=extra, access_log=access)
        ingress.start()
        import_apps(ingress, args.apps, args.labels, upstream_port)
        ingresses[name] = ingress
    host = request_host(args.apps, args.labels)
    for name, ingress in ingresses.items():
        status, _, body = http_get(f"http://{LOOPBACK}:{ingress.port}/", host=host)
        if status != 200 or body.decode(errors="replace") != BODY:
            raise SystemExit(f"{name} answered {status} {body[:80]!r}, not the upstream's body")
        targets.append((name, ingress.port, ingress.process))
    results = measure(targets, args.rounds, args.seconds, args.connections, host, upstream_port)
    time.sleep(1)  # the writer's last batch
    lines = count_lines(log_path, '"request_id"')
    served = sum(r["requests"] for r in results["ingress log on"])
    dropped = ingresses["ingress log on"].metric("ingress_access_log_dropped_total")
    on = median(results["ingress log on"], "rps")
    off = median(results["ingress log off"], "rps")
    report = [
        f"Machine: {machine()}",
        f"Load: wrk -t1 -c{args.connections} -d{args.seconds}s, {args.rounds} rounds in "
        f"alternation; two ingresses (threads {args.threads}, {args.apps} apps x "
        f"{args.labels} labels), one with `[log] access = FILE` (JSON), one with "
        f"`access = \"off\"`; request host {host}.",
        "",
        table(results),
        "",
        f"- log on / log off: {on / off:.3f} (requests/s, medians: {on:.0f} / {off:.0f}); "
        f"cost {100 * (1 - on / off):.1f}%",
        f"- access-log lines written: {lines} (the measured rounds served {served} "
        f"requests, plus warm-up and checks); dropped (ingress_access_log_dropped_total): "
        f"{dropped:.0f}",
    ]
    print("\n".join(report))


def scale(args, workdir):
    """Throughput and p99 at each route count, all instances up at once and
    measured in alternation, with each instance's resident memory."""
    upstream_port = free_port()
    start_upstream(workdir, upstream_port)
    counts = [int(c) for c in args.scale_counts.split(",")]
    extra = proxy_extra(args)
    # Enough lease-cache room for every version, as an operator would configure it.
    targets, instances = [], {}
    for count in counts:
        sub = os.path.join(workdir, f"routes-{count}")
        os.makedirs(sub)
        ingress = Ingress(
            sub,
            args.threads,
            proxy_extra=extra + f"\nlease_cache_capacity = {max(100000, count * (args.labels + 1))}",
        )
        ingress.start()
        rss_before = ingress.rss_bytes()
        seconds = import_apps(ingress, count, args.labels, upstream_port)
        instances[count] = (ingress, rss_before, seconds)
        targets.append((f"{count} routes", ingress.port))
    host_of = {f"{c} routes": request_host(c, args.labels) for c in counts}
    results = {name: [] for name, _ in targets}
    # CPU the instances not under load spend meanwhile (their control loops):
    # it competes with the measured one for the same two cores.
    idle_cpu = {count: 0.0 for count in counts}
    idle_wall = {count: 0.0 for count in counts}
    for name, port in targets:
        run_wrk(port, host_of[name], 1, args.connections)
    for round_number in range(args.rounds):
        for (name, port), loaded in zip(targets, counts):
            before = {c: instances[c][0].cpu_seconds() for c in counts}
            started = time.monotonic()
            result = run_wrk(port, host_of[name], args.seconds, args.connections)
            wall = time.monotonic() - started
            for c in counts:
                if c != loaded:
                    idle_cpu[c] += instances[c][0].cpu_seconds() - before[c]
                    idle_wall[c] += wall
            results[name].append(result)
            log(f"round {round_number + 1}/{args.rounds} {name:14} {result['rps']:9.0f} req/s "
                f"p99 {result['p99']:.2f} ms errors {result['errors']}")
    lines = [
        f"Machine: {machine()}",
        f"Load: wrk -t1 -c{args.connections} -d{args.seconds}s, {args.rounds} rounds in alternation; "
        f"each app has 1 exact host and {args.labels} preview labels; the request hits a label.",
        "",
        "| routes | labels | requests/s (median) | range | p50 ms | p99 ms | errors | import s | RSS MiB | CPU when not loaded |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = None
    for count in counts:
        name = f"{count} routes"
        ingress, rss_before, seconds = instances[count]
        rss = ingress.rss_bytes()
        rounds = results[name]
        rates = [r["rps"] for r in rounds]
        lines.append(
            f"| {count} | {count * args.labels} | {median(rounds, 'rps'):.0f} | "
            f"{min(rates):.0f}–{max(rates):.0f} | {median(rounds, 'p50'):.2f} | "
            f"{median(rounds, 'p99'):.2f} | {sum(r['errors'] for r in rounds)} | "
            f"{seconds:.1f} | {rss / 2**20:.0f} | "
            f"{100 * idle_cpu[count] / max(idle_wall[count], 1e-9):.1f}% |"
        )
        if base is None:
            base = (count, rss, median(rounds, "rps"))
    lines.append("")
    first_count, first_rss, first_rps = base
    for count in counts[1:]:
        ingress, _, _ = instances[count]
        rate = median(results[f"{count} routes"], "rps")
        per_route = (ingress.rss_bytes() - first_rss) / max(1, count - first_count)
        lines.append(
            f"- {count} routes: throughput {100 * (rate / first_rps - 1):+.1f}% against "
            f"{first_count} routes; about {per_route:.0f} bytes of RSS per route with its "
            f"{args.labels} labels and versions ({per_route / (args.labels + 1):.0f} per version)"
        )
    print("\n".join(lines))


def publish(args, workdir):
    """p99 and errors while a routing change is published every few ms, against
    the same instance with an idle control plane, in alternation."""
    upstream_port = free_port()
    start_upstream(workdir, upstream_port)
    extra = proxy_extra(args)
    ingress = Ingress(workdir, args.threads, proxy_extra=extra)
    ingress.start()
    import_apps(ingress, args.apps, args.labels, upstream_port)
    host = request_host(args.apps, args.labels)
    churn_bin = os.path.join(RELEASE, "examples", "churn")
    run_wrk(ingress.port, host, 1, args.connections)
    results = {"idle control plane": [], "publishing": []}
    churn_reports = []
    for round_number in range(args.rounds):
        for name in results:
            churn = None
            if name == "publishing":
                churn = subprocess.Popen(
                    [
                        churn_bin,
                        "--server", f"http://{LOOPBACK}:{ingress.grpc}",
                        "--token", TOKEN,
                        "--app", app_name(0),
                        "--upstream", f"{LOOPBACK}:{upstream_port}",
                        "--interval-ms", str(args.interval_ms),
                        "--seconds", str(args.seconds + 1),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                PROCESSES.append(("churn", churn))
                time.sleep(0.5)
            result = run_wrk(ingress.port, host, args.seconds, args.connections)
            results[name].append(result)
            if churn is not None:
                out, _ = churn.communicate(timeout=60)
                report = json.loads(out.strip().splitlines()[-1])
                churn_reports.append(report)
                log(f"churn: {report}")
            log(f"round {round_number + 1}/{args.rounds} {name:18} {result['rps']:9.0f} req/s "
                f"p99 {result['p99']:.2f} ms errors {result['errors']}")
    idle_p99 = median(results["idle control plane"], "p99")
    busy_p99 = median(results["publishing"], "p99")
    changes = sum(r["changes"] for r in churn_reports)
    failed = sum(r["failed"] for r in churn_reports)
    lines = [
        f"Machine: {machine()}",
        f"Load: wrk -t1 -c{args.connections} -d{args.seconds}s on {host}, {args.rounds} rounds; "
        f"{args.apps} apps x {args.labels} labels; the publisher redeploys a preview label "
        f"of {app_name(0)} every {args.interval_ms} ms (each a routing change).",
        "",
        table(results),
        "",
        f"- changes published: {changes} ({failed} refused); change RPC latency median of "
        f"rounds: p50 {statistics.median(r['p50_ms'] for r in churn_reports):.1f} ms, "
        f"p99 {statistics.median(r['p99_ms'] for r in churn_reports):.1f} ms, "
        f"max {max(r['max_ms'] for r in churn_reports):.1f} ms; "
        f"achieved {changes / (args.rounds * (args.seconds + 1)):.0f} changes/s",
        f"- proxy p99 publishing / idle: {busy_p99 / idle_p99:.2f} (goal ≤ 1.20)",
    ]
    print("\n".join(lines))


# ------------------------------------------------------------------ replicas (--replicas)
#
# A control node (`node.role = "control"`) with --apps apps imported and two
# proxy-only replicas following its routing stream: change-to-visible on each
# replica (the `visible` example, benches/load/visible.rs), the routing stream's
# bytes per change, and the time a fresh replica takes to get the whole state.

REPLICA_TOKEN = "load-replica-token-0123456789abcdef"


class Replica:
    """A proxy-only `ingress` (release binary) following a control node."""

    def __init__(self, workdir, node_id, control_grpc):
        self.workdir = workdir
        self.node_id = node_id
        self.control_grpc = control_grpc
        self.port = free_port()
        self.grpc = free_port()
        self.http = free_port()
        self.process = None

    def start(self):
        config = os.path.join(self.workdir, f"{self.node_id}.toml")
        with open(config, "w") as f:
            f.write(f"""
[node]
role = "proxy"
id = "{self.node_id}"
[log]
access = "off"
[control]
endpoints = ["http://{LOOPBACK}:{self.control_grpc}"]
token = "{REPLICA_TOKEN}"
[proxy]
listen = "{LOOPBACK}:{self.port}"
[admin]
grpc_listen = "{LOOPBACK}:{self.grpc}"
http_listen = "{LOOPBACK}:{self.http}"
""")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.process = start(
            [os.path.join(RELEASE, "ingress"), "--config", config], self.node_id, self.workdir,
            env=env,
        )


def routing(http_port, wait, timeout_ms):
    """`/routing?wait_generation=G&timeout_ms=T` on an admin listener: (status,
    generation applied); (0, 0) when it does not answer."""
    url = f"http://{LOOPBACK}:{http_port}/routing?wait_generation={wait}&timeout_ms={timeout_ms}"
    try:
        status, _, body = http_get(url, timeout=timeout_ms / 1000 + 5)
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except OSError:
        return 0, 0
    try:
        return status, json.loads(body)["generation"]
    except (ValueError, KeyError):
        return status, 0


def stream_bytes(grpc_port):
    """Bytes received so far by each process on its established TCP connections
    to `grpc_port` (`ss -tinp`'s bytes_received: TCP payload, that is HTTP/2
    frames, without IP and TCP headers), by pid."""
    out = subprocess.run(
        ["ss", "-tinpH", "state", "established", f"( dport = :{grpc_port} )"],
        capture_output=True, text=True, timeout=30,
    ).stdout
    received = {}
    pid = None
    for line in out.splitlines():
        found = re.search(r"pid=(\d+)", line)
        if found:
            pid = int(found.group(1))
        count = re.search(r"bytes_received:(\d+)", line)
        if count and pid is not None:
            received[pid] = received.get(pid, 0) + int(count.group(1))
    return received


def fresh_replica(workdir, node_id, control, limit=120):
    """Starts a replica and times it: until its ports answer, and until its
    /routing reports the control node's generation (the whole state applied).
    Returns (replica, listening s, current s, generation)."""
    wanted = routing(control.http, 0, 0)[1]
    replica = Replica(workdir, node_id, control.grpc)
    started = time.monotonic()
    replica.start()
    wait_for_port(replica.http, f"replica {node_id}", timeout=limit)
    listening = time.monotonic() - started
    deadline = started + limit
    while time.monotonic() < deadline:
        status, _ = routing(replica.http, wanted, 5000)
        if status == 200:
            return replica, listening, time.monotonic() - started, wanted
    raise SystemExit(f"replica {node_id} did not apply generation {wanted} within {limit}s")


def replicas(args, workdir):
    upstream_port = free_port()
    start_upstream(workdir, upstream_port)
    control = Ingress(
        workdir, args.threads, proxy_extra=proxy_extra(args),
        extra_config='[node]\nrole = "control"\n',
        extra_tokens=f', {{ name = "edge", secret = "{REPLICA_TOKEN}", role = "replica" }}',
    )
    control.start()
    import_seconds = import_apps(control, args.apps, args.labels, upstream_port)
    # The preview labels the changes redeploy (churn-0..4 of app0) exist
    # before anything is measured.
    for k in range(5):
        control.ctl("deploy", app_name(0), "--upstream", f"{LOOPBACK}:{upstream_port}",
                    "--ephemeral", f"churn-{k}")
    followers = []
    initial = []
    for i in range(2):
        replica, listening, current, generation = fresh_replica(workdir, f"r{i}", control)
        followers.append(replica)
        initial.append((listening, current))
        log(f"replica r{i}: listening after {listening:.2f}s, whole state (generation "
            f"{generation}) after {current:.2f}s")
    time.sleep(1)
    before_generation = routing(control.http, 0, 0)[1]
    before = stream_bytes(control.grpc)
    visible_bin = os.path.join(RELEASE, "examples", "visible")
    out = subprocess.run(
        [
            visible_bin,
            "--server", f"http://{LOOPBACK}:{control.grpc}",
            "--token", TOKEN,
            "--app", app_name(0),
            "--upstream", f"{LOOPBACK}:{upstream_port}",
            "--control-http", f"{LOOPBACK}:{control.http}",
            "--replica-http", ",".join(f"{LOOPBACK}:{r.http}" for r in followers),
            "--changes", str(args.changes),
            "--interval-ms", str(args.interval_ms),
        ],
        capture_output=True, text=True, timeout=600,
    )
    if out.returncode != 0:
        raise SystemExit(f"visible failed: {out.stderr.strip()}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"visible: {report}")
    # Settled: the endpoint updates that follow the last deploys have reached
    # both replicas before the bytes are read again.
    time.sleep(1)
    after_generation = routing(control.http, 0, 0)[1]
    for r in followers:
        routing(r.http, after_generation, 5000)
    after = stream_bytes(control.grpc)
    updates = after_generation - before_generation
    per_replica_bytes = [after.get(r.process.pid, 0) - before.get(r.process.pid, 0)
                         for r in followers]
    # A fresh replica now, with the control node idle.
    fresh, listening, current, generation = fresh_replica(workdir, "r-fresh", control)
    time.sleep(0.5)
    full_bytes = stream_bytes(control.grpc).get(fresh.process.pid, 0)
    rss = control.rss_bytes()
    lines = [
        f"Machine: {machine().split(';')[0]}",
        f"Setup: release build; a control node with {args.apps} apps x {args.labels} preview "
        f"labels imported with `ingressctl import` ({import_seconds:.1f} s), two replicas on "
        "loopback; `visible` (benches/load/visible.rs) redeploys a preview label of "
        f"{app_name(0)} {args.changes} times, every {args.interval_ms} ms, over one gRPC "
        "connection.",
        "",
        "| replica | changes seen | p50 ms | p99 ms | max ms | waits timed out |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(report["replicas"]):
        lines.append(f"| r{i} | {r['samples']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['max_ms']:.2f} | {r['missed']} |")
    lines += [
        "",
        f"- changes: {report['changes']} in {report['seconds']:.1f} s ({report['failed']} refused); "
        f"deploy call p50 {report['deploy_p50_ms']:.2f} ms, p99 {report['deploy_p99_ms']:.2f} ms",
        f"- routing stream: generations {before_generation} -> {after_generation} "
        f"({updates} updates for {args.changes} changes); bytes received per replica on its "
        f"connection to the control node: " + ", ".join(
            f"r{i} {b} ({b / args.changes:.0f} per change, {b / max(updates, 1):.0f} per update)"
            for i, b in enumerate(per_replica_bytes)),
        f"- the first two replicas got the whole state (generation after import) in "
        + ", ".join(f"{c:.2f} s (listening after {l:.2f} s)" for l, c in initial),
        f"- a fresh replica with the control node idle: listening after {listening:.2f} s, "
        f"whole state (generation {generation}) applied after {current:.2f} s; "
        f"{full_bytes} bytes received ({full_bytes / 1048576:.2f} MiB)",
        f"- control node RSS {rss / 1048576:.0f} MiB",
    ]
    print("\n".join(lines))


# ------------------------------------------------------------------ TLS (--tls)
#
# HTTPS against nginx with the same certificate: h2load over TLS 1.3 for HTTP/1.1
# keep-alive, HTTP/2 with multiplexed streams and a new connection per request,
# wrk over plain HTTP for the reference ratio, and the handshake scenario again
# against a second ingress holding 10,000 certificates.

# h2load's default TLS 1.3 offer (1.52), given to `openssl s_client` as well so
# that the record shows what h2load negotiates.
H2LOAD_TLS13_CIPHERS = (
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
    "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_CCM_SHA256"
)
H2LOAD_GROUPS = "X25519:P-256:P-384:P-521"

TLS_SCENARIOS = [
    # key, label, what runs it, the ALPN protocol it must negotiate (None: plain)
    ("h1", "(a) HTTPS HTTP/1.1 keep-alive", "h2load --h1", "http/1.1"),
    ("h2", "(b) HTTPS h2, 10 streams per connection", "h2load -m10", "h2"),
    ("handshake", "(c) HTTPS new connection per request", "h2load --h1 -n N, Connection: close",
     "http/1.1"),
    ("plain", "(d) plain HTTP/1.1 keep-alive", "wrk", None),
]

H2LOAD_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s")
H2LOAD_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
    r"(\d+) failed, (\d+) errored, (\d+) timeout"
)
H2LOAD_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
H2LOAD_NEGOTIATED = {
    "protocol": re.compile(r"^TLS Protocol: (\S+)", re.M),
    "cipher": re.compile(r"^Cipher: (\S+)", re.M),
    "key": re.compile(r"^Server Temp Key: (\S+)", re.M),
    "alpn": re.compile(r"^Application protocol: (\S+)", re.M),
}


def openssl(*args, cwd):
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise SystemExit(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


def make_certificate(workdir, app_host):
    """One ECDSA P-256 CA and a leaf for `app_host` and `*.app_host` signed by it,
    made with openssl. Returns the paths (ca.crt, ca.key, leaf key, full chain =
    leaf + CA, and leaf + CA + key in one file for HAProxy)."""
    d = os.path.join(workdir, "pki")
    os.makedirs(d)
    ec = ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    openssl(*ec, "-out", "ca.key", cwd=d)
    openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=ingress load-test CA",
            "-days", "30", "-out", "ca.crt",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl(*ec, "-out", "leaf.key", cwd=d)
    openssl("req", "-new", "-key", "leaf.key", "-subj", f"/CN={app_host}", "-out", "leaf.csr",
            cwd=d)
    with open(os.path.join(d, "leaf.ext"), "w") as f:
        f.write(f"subjectAltName=DNS:{app_host},DNS:*.{app_host}\n"
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", "1", "-days", "30", "-extfile", "leaf.ext", "-out", "leaf.crt",
            cwd=d)
    paths = {name: os.path.join(d, name) for name in ("ca.crt", "ca.key", "leaf.key")}
    paths["fullchain"] = os.path.join(d, "fullchain.pem")
    paths["combined"] = os.path.join(d, "combined.pem")
    parts = {}
    for name in ("leaf.crt", "ca.crt", "leaf.key"):
        with open(os.path.join(d, name)) as f:
            parts[name] = f.read()
    with open(paths["fullchain"], "w") as f:
        f.write(parts["leaf.crt"] + parts["ca.crt"])
    with open(paths["combined"], "w") as f:
        f.write(parts["leaf.crt"] + parts["ca.crt"] + parts["leaf.key"])
    return paths


def cryptography_python():
    """An interpreter that can import `cryptography` (this one, else Debian's)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        if candidate and os.path.exists(candidate):
            probe = subprocess.run([candidate, "-c", "import cryptography"],
                                   capture_output=True, timeout=60)
            if probe.returncode == 0:
                return candidate
    raise SystemExit("the --tls mode needs Python's cryptography package "
                     "(Debian: python3-cryptography); run benches/load/run.sh")


def generate_cert_dir(paths, cert_dir, count, skip_index):
    """`count` leaves for app0..appN (leaving out `skip_index`, whose certificate
    is added through the API) into `cert_dir` with certgen.py; returns seconds."""
    started = time.monotonic()
    last = count if count > skip_index else count - 1  # count leaves, skip_index left out
    subprocess.run(
        [cryptography_python(), os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "certgen.py"),
         "--ca-cert", paths["ca.crt"], "--ca-key", paths["ca.key"], "--dir", cert_dir,
         "--suffix", HOST_SUFFIX, "--indices", f"0-{last}", "--skip", str(skip_index)],
        check=True, capture_output=True, timeout=1800,
    )
    written = len([n for n in os.listdir(cert_dir) if n.endswith(".crt")])
    if written != count:
        raise SystemExit(f"certgen.py wrote {written} certificates into {cert_dir}, not {count}")
    return time.monotonic() - started


def start_nginx_tls(workdir, port, tls_port, upstream_port, workers, paths):
    """nginx with the plain proxy of `start_nginx_proxy` and a TLS 1.3 listener
    (HTTP/2 by ALPN) proxying to the same upstream keep-alive pool. The pool keeps
    1,024 idle connections per worker instead of 128: scenario (b) has 640
    requests in flight (64 connections x 10 streams), and with 128 nginx would
    open and close upstream connections all through it, which the ingress (1,024
    per thread, `upstream_keepalive_pool_size`) does not. With 64 connections
    (a, c, d) the size makes no difference."""
    conf = os.path.join(workdir, "nginx-tls.conf")
    location = """
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }"""
    with open(conf, "w") as f:
        f.write(f"""
worker_processes {workers};
daemon off;
pid {workdir}/nginx-tls.pid;
error_log {workdir}/nginx-tls.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream app {{ server {LOOPBACK}:{upstream_port}; keepalive 1024; }}
  server {{
    listen {LOOPBACK}:{port} reuseport backlog=4096;{location}
  }}
  server {{
    listen {LOOPBACK}:{tls_port} ssl http2 reuseport backlog=4096;
    ssl_certificate {paths["fullchain"]};
    ssl_certificate_key {paths["leaf.key"]};
    ssl_protocols TLSv1.3;{location}
  }}
}}
""")
    process = start(["nginx", "-c", conf, "-p", workdir], "nginx-tls", workdir)
    wait_for_port(port, "the nginx proxy")
    wait_for_port(tls_port, "the nginx TLS proxy")
    return process


def start_haproxy_tls(workdir, port, tls_port, upstream_port, threads, paths):
    """HAProxy as in `start_haproxy`, plus a TLS 1.3 bind with ALPN h2,http/1.1."""
    conf = os.path.join(workdir, "haproxy-tls.cfg")
    with open(conf, "w") as f:
        f.write(f"""
global
  nbthread {threads}
  maxconn 8192
  # HAProxy picks by its own order: put AES-128-GCM first, as the others negotiate
  ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend fe
  bind {LOOPBACK}:{port}
  bind {LOOPBACK}:{tls_port} ssl crt {paths["combined"]} alpn h2,http/1.1 ssl-min-ver TLSv1.3
  default_backend app
backend app
  server s1 {LOOPBACK}:{upstream_port}
""")
    process = start(["haproxy", "-f", conf, "-db"], "haproxy-tls", workdir)
    wait_for_port(port, "haproxy")
    wait_for_port(tls_port, "haproxy's TLS bind")
    return process


def https_get(port, host, cafile, timeout=10):
    """One HTTP/1.1 GET over TLS to loopback `port` with SNI `host`, the chain
    verified against `cafile` for `host`; returns (status, body)."""
    import ssl

    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while len(data) < 1 << 20:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    if b"transfer-encoding: chunked" in head.lower():
        decoded, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2:]
        body = decoded
    return status, body


def s_client(port, host, cafile, *extra):
    """`openssl s_client` once against loopback `port`; returns its output."""
    args = [
        "openssl", "s_client", "-connect", f"{LOOPBACK}:{port}", "-servername", host,
        "-CAfile", cafile, *extra,
    ]
    try:
        out = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return ""
    return (out.stdout + out.stderr).decode(errors="replace")


def negotiated(port, host, cafile):
    """What a handshake offering h2load's defaults gets, from `openssl s_client`,
    and whether TLS 1.2 alone is accepted."""
    text = s_client(port, host, cafile, "-alpn", "h2,http/1.1",
                    "-ciphersuites", H2LOAD_TLS13_CIPHERS, "-groups", H2LOAD_GROUPS)

    def find(pattern):
        match = re.search(pattern, text, re.M)
        return match.group(1).strip() if match else "?"

    tls12 = s_client(port, host, cafile, "-tls1_2", "-alpn", "http/1.1")
    tls12_ok = re.search(r"^New, TLSv1\.2, Cipher is (?!\(NONE\))", tls12, re.M) is not None
    return {
        "protocol": find(r"^New, (TLSv[\d.]+), Cipher is"),
        "cipher": find(r"^New, TLSv[\d.]+, Cipher is (\S+)"),
        "key": find(r"^Server Temp Key: ([^,\n]+)"),
        "signature": find(r"^Peer signature type: (\S+)"),
        "alpn": find(r"^ALPN protocol: (\S+)"),
        "verify": find(r"^Verify return code: (.+)$"),
        "tls12": "accepted" if tls12_ok else "refused",
    }


def tcp_passive_opens():
    """The kernel's count of accepted TCP connections (machine-wide)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("PassiveOpens")])


def latency_percentiles(log_path):
    """p50 and p99 in ms of the per-request times h2load wrote to --log-file
    (failed requests, status -1, left out)."""
    times = []
    try:
        with open(log_path) as f:
            for line in f:
                fields = line.split("\t")
                if len(fields) >= 3 and fields[1] != "-1":
                    times.append(int(fields[2]))
    except OSError:
        pass
    if not times:
        return float("nan"), float("nan")
    times.sort()

    def at(fraction):
        return times[min(len(times) - 1, int(fraction * len(times)))] / 1000.0

    return at(0.50), at(0.99)


def run_h2load(scenario, port, host, seconds, connections, workdir, requests=None,
               during=None, samples=2):
    """One h2load run of `scenario` ("h1", "h2" or "handshake"), -t1, against
    loopback `port` with SNI and :authority `host`. "handshake" is count-based
    (`requests` requests, each on a new connection: h2load reconnects when the
    server answers `Connection: close`; with -D it would not); the others run
    `seconds`. `during` is sampled like run_wrk's."""
    log_path = os.path.join(workdir, "h2load-requests.log")
    args = ["h2load", "-t1", f"-c{connections}", f"--connect-to={LOOPBACK}:{port}",
            f"--log-file={log_path}"]
    if scenario == "h1":
        args += ["--h1", "-D", str(seconds)]
    elif scenario == "h2":
        args += ["-m10", "-D", str(seconds)]
    elif scenario == "handshake":
        args += ["--h1", "-n", str(requests), "-H", "Connection: close"]
    else:
        raise ValueError(scenario)
    args.append(f"https://{host}/")
    limit = seconds + 60 if scenario != "handshake" else 10 * seconds + 60
    opens_before = tcp_passive_opens()
    started = time.monotonic()
    h2load = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampled = []
    try:
        if during is not None:
            for i in range(samples):
                time.sleep(max(0.0, started + seconds * (i + 1) / (samples + 1) - time.monotonic()))
                if h2load.poll() is not None:
                    break
                sampled.append(during())
        stdout, stderr = h2load.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"h2load ran past {limit}s: {' '.join(args)}")
    finally:
        if h2load.poll() is None:
            h2load.kill()
            h2load.wait(timeout=5)
    opens = tcp_passive_opens() - opens_before
    finished = H2LOAD_FINISHED.search(stdout)
    counts = H2LOAD_REQUESTS.search(stdout)
    if h2load.returncode != 0 or not finished or not counts:
        raise SystemExit(f"h2load failed ({h2load.returncode}): {' '.join(args)}\n"
                         f"{stdout[-2000:]}\n{stderr[-2000:]}")
    total, started_n, done, succeeded, failed, errored, timeout = (int(g) for g in counts.groups())
    status = H2LOAD_STATUS.search(stdout)
    s2xx, s3xx, s4xx, s5xx = (int(g) for g in status.groups()) if status else (0, 0, 0, 0)
    p50, p99 = latency_percentiles(log_path)
    try:
        os.remove(log_path)
    except OSError:
        pass
    found = {key: pattern.search(stdout) for key, pattern in H2LOAD_NEGOTIATED.items()}
    return {
        "rps": float(finished.group(3)),
        "p50": p50,
        "p99": p99,
        # failed covers errored and timeout, and 4xx/5xx; a 3xx is no answer either
        "errors": failed + s3xx,
        "detail": f"{failed} failed, {errored} errored, {timeout} timeout, "
                  f"{s3xx} 3xx, {s4xx} 4xx, {s5xx} 5xx",
        "requests": succeeded,
        "conns_per_request": opens / max(done, 1),
        "negotiated": {k: (m.group(1) if m else "?") for k, m in found.items()},
        "samples": sampled,
    }


def tls(args, workdir):
    """The --tls comparison: see TLS_SCENARIOS and the module's --help."""
    upstream_port = free_port()
    start_upstream(workdir, upstream_port)
    host = request_host(args.apps, args.labels)
    app_index = args.apps // 2
    app_host = f"{app_name(app_index)}.{HOST_SUFFIX}"
    started = time.monotonic()
    paths = make_certificate(workdir, app_host)
    log(f"CA and leaf for {app_host}, *.{app_host} made in {time.monotonic() - started:.1f}s")
    if args.tls_many_certs < 2 or args.tls_many_certs > args.apps:
        raise SystemExit(f"--tls-many-certs must be 2..--apps ({args.apps})")
    cert_counts = [10, args.tls_many_certs]

    nginx_port, nginx_tls_port = free_port(), free_port()
    nginx = start_nginx_tls(workdir, nginx_port, nginx_tls_port, upstream_port,
                            args.nginx_workers, paths)
    haproxy = None
    if args.tls_haproxy:
        haproxy_port, haproxy_tls_port = free_port(), free_port()
        haproxy = start_haproxy_tls(workdir, haproxy_port, haproxy_tls_port, upstream_port,
                                    args.haproxy_threads, paths)

    # Two ingress instances: 10 certificates (every scenario) and many (the
    # handshake scenario again). The bench host's certificate goes in through the
    # API, the others through tls.cert_dir and `ingressctl cert reload`.
    instances = {}
    setup_notes = []
    for count in cert_counts:
        sub = os.path.join(workdir, f"ingress-{count}-certs")
        cert_dir = os.path.join(sub, "certs")
        os.makedirs(cert_dir)
        generated = generate_cert_dir(paths, cert_dir, count - 1, app_index)
        tls_port = free_port()
        ingress = Ingress(
            sub, args.threads, proxy_extra=proxy_extra(args),
            extra_config=f"""
[tls]
listen = "{LOOPBACK}:{tls_port}"
h2 = true
cert_dir = "{cert_dir}"
reload_interval = "0s"
redirect_http = false
""",
        )
        ingress.tls_port = tls_port
        ingress.start()
        wait_for_port(tls_port, "the ingress TLS listener", timeout=300)
        import_apps(ingress, args.apps, args.labels, upstream_port)
        t0 = time.monotonic()
        ingress.ctl("cert", "add", "--cert", paths["fullchain"], "--key", paths["leaf.key"])
        added = time.monotonic() - t0
        t0 = time.monotonic()
        out = ingress.ctl("cert", "reload", "--output", "json")
        reloaded = time.monotonic() - t0
        loaded = len(json.loads(out)["loaded"])
        if loaded != count - 1:
            raise SystemExit(f"cert reload loaded {loaded} certificates, not {count - 1}")
        check = ingress.ctl("cert", "check", host)
        instances[count] = ingress
        setup_notes.append(
            f"{count} certificates: {count - 1} leaves generated in {generated:.1f}s, "
            f"`cert add` {added:.2f}s, `cert reload` of {count - 1} {reloaded:.2f}s, "
            f"RSS {ingress.rss_bytes() / 2**20:.0f} MiB; `cert check {host}`: {check.strip()}"
        )
        log(setup_notes[-1])
    ingress = instances[10]
    many = instances[cert_counts[1]]

    proxies = [("nginx", nginx, nginx_port, nginx_tls_port)]
    if haproxy:
        proxies.append(("haproxy", haproxy, haproxy_port, haproxy_tls_port))
    proxies.append(("ingress", ingress.process, ingress.port, ingress.tls_port))
    # Every target must really proxy, over TLS with the chain verified for the host.
    for name, _, port, tls_port in proxies + [
            (f"ingress {cert_counts[1]} certs", many.process, many.port, many.tls_port)]:
        status, _, body = http_get(f"http://{LOOPBACK}:{port}/", host=host)
        if status != 200 or body.decode(errors="replace") != BODY:
            raise SystemExit(f"{name} answered {status} {body[:80]!r} on plain HTTP")
        status, body = https_get(tls_port, host, paths["ca.crt"])
        if status != 200 or body.decode(errors="replace") != BODY:
            raise SystemExit(f"{name} answered {status} {body[:80]!r} over TLS")
    records = {name: negotiated(tls_port, host, paths["ca.crt"])
               for name, _, _, tls_port in proxies}
    for name, record in records.items():
        log(f"{name}: {record}")

    many_name = f"ingress, {cert_counts[1]:,} certs"
    plan = {  # scenario -> [(target name, process, port)]
        "h1": [(n, p, t) for n, p, _, t in proxies],
        "h2": [(n, p, t) for n, p, _, t in proxies],
        "handshake": [(n, p, t) for n, p, _, t in proxies] + [(many_name, many.process,
                                                                many.tls_port)],
        "plain": [(n, p, port) for n, p, port, _ in proxies],
    }
    handshake_requests = {}

    def run(scenario, name, process, port, warm=False):
        seconds = 1 if warm else args.seconds
        during = None if warm else (lambda: upstream_connections(process.pid, upstream_port))
        if scenario == "plain":
            return run_wrk(port, host, seconds, args.connections, during=during)
        requests = None
        if scenario == "handshake":
            requests = 4 * args.connections if warm else handshake_requests[name]
        return run_h2load(scenario, port, host, seconds, args.connections, workdir,
                          requests=requests, during=during)

    # Warm-up: connections, pools, leases; the handshake rate sizes the
    # count-based runs to about --seconds each.
    for scenario, targets in plan.items():
        for name, process, port in targets:
            result = run(scenario, name, process, port, warm=True)
            if scenario == "handshake":
                handshake_requests[name] = handshake_count(result["rps"], args)
    results = {(s, name): [] for s, targets in plan.items() for name, _, _ in targets}
    # cloudflare/pingora#998 lines in each ingress's log, per run.
    reuse_counters = {
        name: (lambda path=os.path.join(instance.workdir, "ingress.log"):
               count_lines(path, REUSE_FAILURE))
        for name, instance in (("ingress", ingress), (many_name, many))
    }
    for round_number in range(args.rounds):
        for scenario, targets in plan.items():
            # Alternate the order within a scenario from round to round.
            ordered = targets if round_number % 2 == 0 else list(reversed(targets))
            for name, process, port in ordered:
                if process.poll() is not None:
                    raise SystemExit(f"{name} exited (status {process.returncode}); see its log")
                counter = reuse_counters.get(name)
                lines_before = counter() if counter else 0
                before = cpu_ticks(process.pid)
                result = run(scenario, name, process, port)
                user, system = cpu_spent(before, cpu_ticks(process.pid))
                if counter:
                    result["log_lines"] = counter() - lines_before
                served = max(result["requests"], 1)
                result["us_user"] = 1e6 * user / served
                result["us_sys"] = 1e6 * system / served
                counts = [c for c in result["samples"] if c is not None]
                result["conns"] = max(counts) if counts else None
                if scenario == "handshake":
                    handshake_requests[name] = handshake_count(result["rps"], args)
                results[(scenario, name)].append(result)
                log(f"round {round_number + 1}/{args.rounds} {scenario:9} {name:22} "
                    f"{result['rps']:9.0f} req/s  p99 {result['p99']:.2f} ms  "
                    f"errors {result['errors']}  CPU/req {result['us_user']:.1f} + "
                    f"{result['us_sys']:.1f} µs"
                    + (f"  conns/req {result['conns_per_request']:.2f}"
                       if "conns_per_request" in result else "")
                    + (f"  #998 lines {result['log_lines']}" if counter else ""))

    print(tls_report(args, host, app_host, paths, records, setup_notes, plan, results,
                     cert_counts, many_name, [n for n, _, _, _ in proxies]))


def handshake_count(rate, args):
    """Requests for a count-based handshake run of about --seconds at `rate`."""
    return int(min(200_000, max(4 * args.connections, rate * args.seconds)))


def tls_report(args, host, app_host, paths, records, setup_notes, plan, results,
               cert_counts, many_name, proxy_names):
    labels = {key: label for key, label, _, _ in TLS_SCENARIOS}
    alpn_expected = {key: alpn for key, _, _, alpn in TLS_SCENARIOS}
    lines = [
        f"Machine: {machine(extra_tools=(['h2load', '--version'], ['openssl', 'version']))}",
        f"Load: {args.rounds} rounds in alternation (the order of targets reversed every "
        f"other round), -c{args.connections}, one client thread, host {host} (a preview "
        f"label; the ingress has {args.apps} apps x {args.labels} labels, threads "
        f"{args.threads}; nginx {args.nginx_workers} workers"
        + (f", HAProxy {args.haproxy_threads} threads" if "haproxy" in proxy_names else "")
        + "). (a) `h2load --h1 -t1 -c{c} -D {s}`; (b) `h2load -t1 -c{c} -m10 -D {s}`; "
          "(c) `h2load --h1 -t1 -c{c} -n N -H 'Connection: close'` (N sized to about {s} s: "
          "a full TLS 1.3 handshake per request, req/s = handshakes/s); (d) `wrk -t1 "
          "-c{c} -d{s}s` on the plain listeners; (e) = (c) against a second ingress "
          "holding {m:,} certificates. p50/p99 from h2load's per-request log (request "
          "sent to response end; for (c) the handshake comes before it). CPU per "
          "request: user and system time of the target's processes over the run divided "
          "by the requests that succeeded, median of rounds; upstream conns: "
          "established connections to the upstream held by the target, idle pooled "
          "ones included, sampled twice a run.".format(
              c=args.connections, s=args.seconds, m=cert_counts[1]),
        "",
        f"Certificate: ECDSA P-256 leaf for {app_host} and *.{app_host}, signed by an "
        "ECDSA P-256 CA, both made with openssl; the same PEM files for nginx "
        "(`ssl_protocols TLSv1.3`) and the ingress (`ingressctl cert add`). The other "
        "certificates (one shared P-256 key, each for appI and *.appI) come from "
        "certgen.py through tls.cert_dir and `ingressctl cert reload`.",
    ]
    lines += [f"- {note}" for note in setup_notes]
    lines += ["", "Negotiated (openssl s_client offering h2load's TLS 1.3 suites and groups, "
              "ALPN h2,http/1.1):", ""]
    for name, r in records.items():
        lines.append(f"- {name}: {r['protocol']}, {r['cipher']}, key exchange {r['key']}, "
                     f"{r['signature']} signature, ALPN {r['alpn']}, chain verify: "
                     f"{r['verify']}; TLS 1.2 offered alone: {r['tls12']}")
    # What h2load itself negotiated, every run.
    seen, mismatches = set(), []
    for (scenario, name), rounds in results.items():
        for r in rounds:
            n = r.get("negotiated")
            if not n:
                continue
            seen.add(f"{n['protocol']} {n['cipher']} {n['key']}")
            if n["protocol"] != "TLSv1.3" or n["alpn"] != alpn_expected[scenario]:
                mismatches.append(f"{scenario} {name}: {n}")
    lines.append(f"- h2load, every run: {', '.join(sorted(seen))}; ALPN "
                 + ("as expected (http/1.1 for a, c, e; h2 for b)" if not mismatches
                    else f"**NOT as expected**: {mismatches[:5]}"))

    lines += [
        "",
        "| scenario | target | req/s (median) | range | p50 ms | p99 ms | errors "
        "| µs user/req | µs sys/req | upstream conns (max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = ["h1", "h2", "handshake", "plain"]
    for scenario in order:
        for name, _, _ in plan[scenario]:
            rounds = results[(scenario, name)]
            rates = [r["rps"] for r in rounds]
            conns = [r["conns"] for r in rounds if r.get("conns") is not None]
            label = labels[scenario]
            if name == many_name:
                label = f"(e) = (c) with {cert_counts[1]:,} certificates"
            elif scenario == "handshake" and name == "ingress":
                label += f" ({cert_counts[0]} certificates)"
            lines.append(
                f"| {label} | {name} | {median(rounds, 'rps'):.0f} | "
                f"{min(rates):.0f}–{max(rates):.0f} | {median(rounds, 'p50'):.2f} | "
                f"{median(rounds, 'p99'):.2f} | {sum(r['errors'] for r in rounds)} | "
                f"{median(rounds, 'us_user'):.1f} | {median(rounds, 'us_sys'):.1f} | "
                f"{max(conns) if conns else '—'} |"
            )

    def ratio(scenario, a, b, key="rps"):
        return median(results[(scenario, a)], key) / median(results[(scenario, b)], key)

    def cpu(scenario, name):
        rounds = results[(scenario, name)]
        return median(rounds, "us_user") + median(rounds, "us_sys")

    plain = ratio("plain", "ingress", "nginx")
    others = [n for n in proxy_names if n != "ingress"]
    header = "| scenario | " + " | ".join(
        f"ingress/{o} req/s | p99 ingress/{o} | CPU per request ingress/{o}" for o in others
    ) + " | plain-HTTP ingress/nginx, same run |"
    lines += ["", header, "|---|" + "---|" * (3 * len(others) + 1)]
    for scenario in order:
        for name in (["ingress", many_name] if scenario == "handshake" else ["ingress"]):
            label = labels[scenario] if name == "ingress" else (
                f"(e) = (c) with {cert_counts[1]:,} certificates")
            cells = []
            for o in others:
                cells.append(f"**{ratio(scenario, name, o):.2f}** | "
                             f"{ratio(scenario, name, o, 'p99'):.2f} | "
                             f"{cpu(scenario, name) / cpu(scenario, o):.2f}")
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {plain:.2f} |")

    lines.append("")
    scale = ratio("handshake", many_name, "ingress")
    rounds_10 = [f"{r['rps']:.0f}" for r in results[("handshake", "ingress")]]
    rounds_many = [f"{r['rps']:.0f}" for r in results[("handshake", many_name)]]
    lines.append(f"- certificate scale: handshakes/s with {cert_counts[1]:,} certificates / "
                 f"with {cert_counts[0]}: **{scale:.2f}** (rounds {', '.join(rounds_many)} "
                 f"against {', '.join(rounds_10)})")
    for scenario in order:
        rates = ", ".join(f"{r['rps']:.0f}" for r in results[(scenario, "ingress")])
        lines.append(f"- ingress rounds, {labels[scenario]}: {rates} req/s")
    lines.append(
        f"- \"{REUSE_FAILURE}\" lines in the ingress's log (cloudflare/pingora#998), "
        "per round: " + "; ".join(
            f"{key} {[r.get('log_lines', 0) for r in results[(key, 'ingress')]]}"
            for key in order))
    upstream_opens = [
        f"{name} {statistics.median(r['conns_per_request'] for r in results[('h2', name)]):.3f}"
        for name in proxy_names
    ]
    lines.append("- (b) new TCP connections accepted per request (machine-wide, so upstream "
                 "connections a proxy opens beyond its pool; median): "
                 + ", ".join(upstream_opens))
    per_conn = {
        name: statistics.median(r["conns_per_request"] for r in results[("handshake", name)])
        for name, _, _ in plan["handshake"]
    }
    lines.append("- (c)/(e) new TCP connections accepted per request (machine-wide "
                 "TcpPassiveOpens over the run, median): "
                 + ", ".join(f"{n} {v:.2f}" for n, v in per_conn.items()))
    errored = [(key, r["detail"]) for key, rounds in results.items() for r in rounds
               if r["errors"] and "detail" in r]
    errored += [(key, f"{r['errors']} wrk errors") for key, rounds in results.items()
                for r in rounds if r["errors"] and "detail" not in r]
    lines.append("- errors: " + ("none in any run (h2load failed/errored/timeout, non-2xx, "
                                 "wrk socket errors)" if not errored
                                 else f"**{len(errored)} runs with errors**: {errored[:8]}"))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", "--duration", type=int, default=6,
                        help="seconds of load per round and target")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--apps", type=int, default=10000)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="ingress proxy threads")
    parser.add_argument(
        "--work-stealing", choices=["true", "false"], help="ingress proxy.work_stealing"
    )
    parser.add_argument("--nginx-workers", type=int, default=2)
    parser.add_argument("--haproxy-threads", type=int, default=2)
    parser.add_argument("--caddy-threads", type=int, default=2, help="Caddy's GOMAXPROCS")
    parser.add_argument("--scale", action="store_true",
                        help="throughput and memory at each of --scale-counts routes")
    parser.add_argument("--scale-counts", default="10,10000,100000")
    parser.add_argument("--publish", action="store_true",
                        help="p99 while a change is published every --interval-ms")
    parser.add_argument("--interval-ms", type=int, default=None,
                        help="--publish: ms between changes (10); --replicas: (30)")
    parser.add_argument("--replicas", action="store_true",
                        help="a control node with --apps apps and two replicas: "
                             "change-to-visible on each replica, the routing stream's "
                             "bytes per change, a fresh replica's time to the whole state")
    parser.add_argument("--changes", type=int, default=100,
                        help="--replicas: changes made (1..1000)")
    parser.add_argument(
        "--tls", action="store_true",
        help="HTTPS against nginx with the same ECDSA P-256 certificate, TLS 1.3, with "
             "h2load: (a) HTTP/1.1 keep-alive, (b) h2 with 10 streams per connection, "
             "(c) a new connection (full handshake) per request, (d) plain HTTP with wrk "
             "for the reference ratio, (e) = (c) against a second ingress holding "
             "--tls-many-certs certificates; ingress/nginx ratios per scenario",
    )
    parser.add_argument("--tls-many-certs", type=int, default=10000,
                        help="certificates of the second ingress in --tls (e)")
    parser.add_argument("--tls-haproxy", action="store_true",
                        help="with --tls: HAProxy too (bind ... ssl crt ... alpn h2,http/1.1)")
    parser.add_argument("--access-log", action="store_true",
                        help="requests/s with the JSON access log to a file vs access = off, "
                             "two ingresses measured in alternation")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 50 or not 1 <= args.seconds <= 120:
        parser.error("--rounds must be 1..50 and --seconds 1..120")
    if sum(map(bool, (args.tls, args.scale, args.publish, args.replicas, args.access_log))) > 1:
        parser.error("--tls, --scale, --publish, --replicas and --access-log are separate runs")
    if not 1 <= args.changes <= 1000:
        parser.error("--changes must be 1..1000")
    if args.interval_ms is None:
        args.interval_ms = 30 if args.replicas else 10
    if args.replicas:
        tools = ("ss", "nginx")
    elif args.tls:
        tools = ("wrk", "nginx", "h2load", "openssl") + (("haproxy",) if args.tls_haproxy else ())
    elif args.scale or args.publish:
        tools = ("wrk", "nginx")
    elif args.access_log:
        tools = ("wrk",)
    else:
        tools = ("wrk", "nginx", "haproxy", "caddy")
    for tool in tools:
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed; run benches/load/run.sh")
    workdir = tempfile.mkdtemp(prefix="ingress-load-")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    try:
        if args.scale:
            scale(args, workdir)
        elif args.publish:
            publish(args, workdir)
        elif args.tls:
            tls(args, workdir)
        elif args.replicas:
            replicas(args, workdir)
        elif args.access_log:
            access_log(args, workdir)
        else:
            compare(args, workdir)
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"work directory kept: {workdir}")


if __name__ == "__main__":
    main()
