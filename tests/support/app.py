"""A small app for the process-runtime tests, run by the ingress with HOST and
PORT set: it listens on $HOST:$PORT (HOST defaults to 127.0.0.1).

Options:
  --starts FILE    append one line to FILE at each start (to count starts)
  --pid FILE       write the process id to FILE once listening
  --delay-ms N     wait N ms before listening (a slow start)
  --exit CODE      print a message and exit with CODE instead of serving
  --ready-file F   write time.time_ns() to F once listening (benches time from it)
  --ignore-term    ignore SIGTERM (only SIGKILL stops it)

Paths: /slow?ms=N answers after N ms; anything else answers at once with the
version id from INGRESS_VERSION. Every answer says in `x-served-on` the address
(IP:PORT) the request arrived at.
"""
import http.server
import os
import signal
import socket
import sys
import time
import urllib.parse


def option(name, default=None):
    if name in sys.argv:
        return sys.argv[sys.argv.index(name) + 1]
    return default


if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
starts = option("--starts")
if starts:
    with open(starts, "a") as f:
        f.write("start\n")
version = os.environ.get("INGRESS_VERSION", "?")
if option("--exit") is not None:
    print(f"app {version}: missing configuration, giving up", flush=True)
    sys.exit(int(option("--exit")))
time.sleep(int(option("--delay-ms", "0")) / 1000)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/slow":
            ms = int(urllib.parse.parse_qs(url.query).get("ms", ["1000"])[0])
            time.sleep(ms / 1000)
        body = f"hello from {version}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        local = self.connection.getsockname()
        self.send_header("x-served-on", f"{local[0]}:{local[1]}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print(f"app {version}: {self.command} {self.path}", flush=True)


class Server(http.server.ThreadingHTTPServer):
    # The default backlog of 5 drops connections when hundreds arrive at once.
    request_queue_size = 1024


host = os.environ.get("HOST", "127.0.0.1")
if ":" in host:
    Server.address_family = socket.AF_INET6
server = Server((host, int(os.environ["PORT"])), Handler)
pid = option("--pid")
if pid:
    with open(pid, "w") as f:
        f.write(str(os.getpid()))
print(f"app {version}: listening on {host} port {os.environ['PORT']}", flush=True)
ready_file = option("--ready-file")
if ready_file:
    with open(ready_file + ".tmp", "w") as f:
        f.write(str(time.time_ns()))
    os.replace(ready_file + ".tmp", ready_file)
server.serve_forever()
