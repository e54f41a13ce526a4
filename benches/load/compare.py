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

    def __init__(self, workdir, threads, proxy_extra="", extra_config=""):
        self.workdir = workdir
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
tokens = [{{ name = "load", secret = "{TOKEN}" }}]
[store]
data_dir = "{data}"
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


def machine():
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
    for command in (["nginx", "-v"], ["haproxy", "-v"], ["caddy", "version"], ["wrk", "-v"]):
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
    parser.add_argument("--interval-ms", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 50 or not 1 <= args.seconds <= 120:
        parser.error("--rounds must be 1..50 and --seconds 1..120")
    tools = ("wrk", "nginx") if args.scale or args.publish else ("wrk", "nginx", "haproxy", "caddy")
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
