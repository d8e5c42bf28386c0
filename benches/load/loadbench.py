#!/usr/bin/env python3
"""Load benchmark: the Jadugar gateway against nginx, HAProxy and Caddy.

Run through ``benches/load/run.sh`` (which installs the tools and builds the
binaries), or directly once they are present:

    python3 benches/load/loadbench.py --bin-dir target/release

Every target proxies to the same upstream (``bench_upstream``). Each proxy is
pinned to core 1 with one worker/thread; wrk/h2load and the upstream share
core 0. Every cell is measured BENCH_REPS times (warm-up before each), the
repetitions interleaved across targets so that background load spreads over
all rows alike, and the median is reported. The result is ONE markdown table
on stdout (and in --out if given).

Python 3.11, standard library only. Every process started here is killed on
exit, whatever the exit path.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
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
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
HERE = Path(__file__).resolve().parent


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        die(f"{name}={value!r} is not an integer")
    return default


def log(msg: str) -> None:
    print(f"[loadbench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> None:
    print(f"loadbench: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


# --------------------------------------------------------------------------
# Processes: every child is started in its own session and killed at exit.
# --------------------------------------------------------------------------

CHILDREN: list[subprocess.Popen] = []


def kill_child(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


def kill_all_children() -> None:
    while CHILDREN:
        kill_child(CHILDREN.pop())


def on_signal(signum, _frame) -> None:
    log(f"signal {signum}: stopping every process started here")
    kill_all_children()
    sys.exit(128 + signum)


def spawn(cmd: list[str], logfile: Path, env: dict | None = None) -> subprocess.Popen:
    out = open(logfile, "ab")
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as error:
        die(f"cannot start {cmd[0]}: {error}")
        raise
    finally:
        out.close()
    CHILDREN.append(proc)
    return proc


def pinned(core: int | None, cmd: list[str]) -> list[str]:
    if core is None:
        return cmd
    return ["taskset", "-c", str(core), *cmd]


# --------------------------------------------------------------------------
# /proc accounting
# --------------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """The pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after it.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    total = 0
    for pid in process_tree(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def peak_rss_kib(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        if match:
            total += int(match.group(1))
    return total


# --------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Ports:
    def __init__(self, base: int) -> None:
        self.next = base

    def take(self) -> int:
        while self.next < 65000:
            port = self.next
            self.next += 1
            if port_free(port):
                return port
        die("no free TCP port found above BENCH_PORT_BASE")
        return 0


def wait_listening(port: int, proc: subprocess.Popen, name: str, logfile: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            die(f"{name} exited with status {proc.returncode} before listening on {port}; its log:\n{tail(logfile)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    die(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s; its log:\n{tail(logfile)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------

PATH_1K = "/api/1k"
PATH_64K = "/api/64k"


@dataclass
class Target:
    key: str
    label: str
    h1_port: int = 0
    h2_port: int = 0
    proc: subprocess.Popen | None = None
    logfile: Path | None = None
    access_logs: list[Path] = field(default_factory=list)
    unavailable: str = ""
    # Peak RSS is per process lifetime: one value per pass.
    rss_kib: dict[str, int] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bin_dir = Path(args.bin_dir).resolve()
        keep = os.environ.get("BENCH_KEEP_TMP") == "1"
        self.tmp = Path(tempfile.mkdtemp(prefix="jadugar-load-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
        if not keep:
            atexit.register(shutil.rmtree, self.tmp, True)
        else:
            log(f"keeping {self.tmp}")
        self.ports = Ports(env_int("BENCH_PORT_BASE", 18000))
        ncpu = os.cpu_count() or 1
        if ncpu >= 2 and shutil.which("taskset"):
            self.client_core, self.proxy_core = 0, 1
        else:
            log("fewer than 2 cores or no taskset: processes are NOT pinned")
            self.client_core = self.proxy_core = None
        self.duration = env_int("BENCH_DURATION", 10)
        self.warmup = env_int("BENCH_WARMUP", 2)
        self.reps = env_int("BENCH_REPS", 3)
        self.connections = env_int("BENCH_CONNECTIONS", 64)
        self.threads = env_int("BENCH_THREADS", 1)
        self.h2_clients = env_int("BENCH_H2_CLIENTS", 16)
        self.h2_streams = env_int("BENCH_H2_STREAMS", 10)
        self.api_key = ""
        self.upstream_port = 0
        self.upstream: subprocess.Popen | None = None
        self.upstream_log = self.tmp / "upstream.log"

    # ---- upstream ----

    def start_upstream(self) -> None:
        exe = self.bin_dir / "bench_upstream"
        if not exe.exists():
            die(f"{exe} not found: build it with `cargo build --release -p jadugar-benches --bin bench_upstream`")
        self.upstream_port = self.ports.take()
        self.upstream = spawn(
            pinned(self.client_core, [str(exe), "--listen", f"127.0.0.1:{self.upstream_port}"]),
            self.upstream_log,
        )
        wait_listening(self.upstream_port, self.upstream, "bench_upstream", self.upstream_log)

    def upstream_stats(self) -> dict:
        url = f"http://127.0.0.1:{self.upstream_port}/stats"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    # ---- targets ----

    def make_targets(self) -> list[Target]:
        keys = [
            ("direct", "1 upstream direct"),
            ("nginx", "2 nginx"),
            ("haproxy", "3 HAProxy"),
            ("caddy", "4 Caddy"),
            ("jadugar-plain", "5 jadugar plain"),
            ("jadugar-full", "6 jadugar auth+limit+transform"),
            ("jadugar-many", "7 jadugar 10k routes"),
            ("jadugar-host", "8 jadugar host binary, plain route"),
        ]
        wanted = self.args.targets.split(",") if self.args.targets else [k for k, _ in keys]
        unknown = set(wanted) - {k for k, _ in keys}
        if unknown:
            die(f"unknown target(s) {sorted(unknown)}; known: {[k for k, _ in keys]}")
        return [Target(k, label) for k, label in keys if k in wanted]

    def start(self, target: Target, logs_on: bool) -> None:
        target.access_logs = []
        target.unavailable = ""
        d = self.tmp / f"{target.key}-{'logs' if logs_on else 'nologs'}"
        d.mkdir(parents=True, exist_ok=True)
        target.logfile = d / "process.log"
        if target.key == "direct":
            target.h1_port = target.h2_port = self.upstream_port
            target.proc = self.upstream
            return
        target.h1_port = self.ports.take()
        target.h2_port = self.ports.take()
        starter = {
            "nginx": self.start_nginx,
            "haproxy": self.start_haproxy,
            "caddy": self.start_caddy,
            "jadugar-host": self.start_jadugar_host,
        }.get(target.key, self.start_jadugar)
        starter(target, d, logs_on)
        if target.unavailable:
            return
        assert target.proc is not None
        wait_listening(target.h1_port, target.proc, target.key, target.logfile)
        if target.h2_port != target.h1_port:
            wait_listening(target.h2_port, target.proc, target.key, target.logfile)
        # One request through the proxy proves the route works before measuring.
        self.check_route(target)

    def check_route(self, target: Target) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{target.h1_port}{PATH_1K}")
        if self.key_for(target):
            request.add_header("authorization", f"Bearer {self.key_for(target)}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
        except Exception as error:  # noqa: BLE001 - any failure is reported the same way
            die(f"{target.key}: GET {PATH_1K} failed: {error}; its log:\n{tail(target.logfile)}")
            return
        if len(body) != 1024:
            die(f"{target.key}: GET {PATH_1K} returned {len(body)} bytes, expected 1024")

    def stop(self, target: Target) -> None:
        if target.key == "direct" or target.proc is None:
            return
        kill_child(target.proc)
        if target.proc in CHILDREN:
            CHILDREN.remove(target.proc)
        target.proc = None

    def start_nginx(self, target: Target, d: Path, logs_on: bool) -> None:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (d / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        access = f"access_log {d}/access.log;" if logs_on else "access_log off;"
        if logs_on:
            target.access_logs.append(d / "access.log")
        user = "user root;" if os.geteuid() == 0 else ""
        conf = f"""
{user}
worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    {access}
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    # Room for a whole 64 KiB response in memory: no temp files.
    proxy_buffer_size 16k;
    proxy_buffers 8 16k;
    upstream up {{
        server 127.0.0.1:{self.upstream_port};
        keepalive 512;
        keepalive_requests 10000000;
        keepalive_timeout 120s;
    }}
    server {{
        listen 127.0.0.1:{target.h1_port} backlog=4096;
        listen 127.0.0.1:{target.h2_port} http2 backlog=4096;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
        (d / "nginx.conf").write_text(conf)
        cmd = [exe, "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")]
        check = subprocess.run([*cmd, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            die(f"nginx rejected its configuration:\n{check.stderr}")
        target.proc = spawn(pinned(self.proxy_core, cmd), target.logfile)

    def start_haproxy(self, target: Target, d: Path, logs_on: bool) -> None:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        glog = "    log stdout format raw local0 info\n" if logs_on else ""
        dlog = "    log global\n    option httplog\n" if logs_on else ""
        if logs_on:
            target.access_logs.append(target.logfile)
        conf = f"""global
    nbthread 1
    maxconn 4096
{glog}
defaults
    mode http
{dlog}    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse always

frontend fe
    bind 127.0.0.1:{target.h1_port}
    bind 127.0.0.1:{target.h2_port} proto h2
    default_backend be

backend be
    server up 127.0.0.1:{self.upstream_port} pool-max-conn -1
"""
        (d / "haproxy.cfg").write_text(conf)
        check = subprocess.run([exe, "-c", "-f", str(d / "haproxy.cfg")], capture_output=True, text=True)
        if check.returncode != 0:
            die(f"haproxy rejected its configuration:\n{check.stdout}{check.stderr}")
        target.proc = spawn(pinned(self.proxy_core, [exe, "-db", "-f", str(d / "haproxy.cfg")]), target.logfile)

    def start_caddy(self, target: Target, d: Path, logs_on: bool) -> None:
        exe = shutil.which("caddy") or "/usr/bin/caddy"
        site_log = f"    log {{\n        output file {d}/access.log\n    }}\n" if logs_on else ""
        if logs_on:
            target.access_logs.append(d / "access.log")
        # One listener speaks HTTP/1.1 and h2c (prior knowledge).
        target.h2_port = target.h1_port
        conf = f"""{{
    admin off
    auto_https off
    servers {{
        protocols h1 h2 h2c
    }}
}}
http://127.0.0.1:{target.h1_port} {{
{site_log}    reverse_proxy 127.0.0.1:{self.upstream_port} {{
        transport http {{
            keepalive 120s
            keepalive_idle_conns 1024
            keepalive_idle_conns_per_host 1024
        }}
    }}
}}
"""
        (d / "Caddyfile").write_text(conf)
        env = dict(os.environ, GOMAXPROCS="1", XDG_DATA_HOME=str(d / "data"), XDG_CONFIG_HOME=str(d / "config"), HOME=str(d))
        check = subprocess.run(
            [exe, "validate", "--config", str(d / "Caddyfile"), "--adapter", "caddyfile"],
            capture_output=True, text=True, env=env,
        )
        if check.returncode != 0:
            die(f"caddy rejected its configuration:\n{check.stdout}{check.stderr}")
        target.proc = spawn(
            pinned(self.proxy_core, [exe, "run", "--config", str(d / "Caddyfile"), "--adapter", "caddyfile"]),
            target.logfile,
            env=env,
        )

    def start_jadugar(self, target: Target, d: Path, logs_on: bool) -> None:
        exe = self.bin_dir / "bench_gateway"
        if not exe.exists():
            target.unavailable = "bench_gateway not built"
            return
        mode = target.key.removeprefix("jadugar-")
        mode = {"many": "many-routes"}.get(mode, mode)
        key_file = d / "api-key"
        target.h2_port = target.h1_port
        cmd = [
            str(exe), "--mode", mode,
            "--listen", f"127.0.0.1:{target.h1_port}",
            "--upstream", f"127.0.0.1:{self.upstream_port}",
            "--key-file", str(key_file),
        ]
        if logs_on:
            cmd.append("--access-log")
            target.access_logs.append(target.logfile)
        target.proc = spawn(pinned(self.proxy_core, cmd), target.logfile)
        if mode == "full":
            deadline = time.monotonic() + 30
            while not key_file.exists() or not key_file.read_text().strip():
                if target.proc.poll() is not None or time.monotonic() > deadline:
                    die(f"bench_gateway --mode full wrote no API key; its log:\n{tail(target.logfile)}")
                time.sleep(0.1)
            self.api_key = key_file.read_text().strip()

    def start_jadugar_host(self, target: Target, d: Path, logs_on: bool) -> None:
        """The `jadugar` binary as users run it: one `[[gateway.routes]]`
        prefix route, one worker thread, its own access log and metrics."""
        exe = self.bin_dir / "jadugar"
        if not exe.exists():
            target.unavailable = "jadugar not built"
            return
        target.h2_port = target.h1_port
        config = d / "jadugar.toml"
        config.write_text(
            f'listen = "127.0.0.1:{target.h1_port}"\n'
            f'data_dir = "{d / "data"}"\n'
            f'log_level = "{"info" if logs_on else "warn"}"\n'
            "[[gateway.routes]]\n"
            'id = "api"\npath = "/api"\npath_match = "prefix"\n'
            f'upstream = {{ targets = ["http://127.0.0.1:{self.upstream_port}"] }}\n'
        )
        if logs_on:
            target.access_logs.append(target.logfile)
        env = dict(os.environ, TOKIO_WORKER_THREADS="1", JADUGAR_ADMIN_PASSWORD="load-benchmark-admin")
        target.proc = spawn(
            pinned(self.proxy_core, [str(exe), "--config", str(config), "serve"]),
            target.logfile,
            env=env,
        )

    # ---- load generators ----

    def key_for(self, target: Target) -> str:
        """The API key every target's requests carry (the same bytes for
        all), except the host binary's: its auth layer would refuse a key
        it never issued, and its row measures the plain route."""
        return "" if target.key == "jadugar-host" else self.api_key

    def wrk(self, port: int, path: str, seconds: int, api_key: str) -> dict:
        script = HERE / "report.lua"
        cmd = [
            "wrk", "-t", str(self.threads), "-c", str(self.connections), "-d", f"{seconds}s",
            "--timeout", "5s", "-s", str(script),
        ]
        if api_key:
            cmd += ["-H", f"authorization: Bearer {api_key}"]
        cmd.append(f"http://127.0.0.1:{port}{path}")
        proc = subprocess.run(pinned(self.client_core, cmd), capture_output=True, text=True, timeout=seconds + 60)
        if proc.returncode != 0:
            die(f"wrk failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        match = re.search(r"^JSON (\{.*\})$", proc.stdout, re.M)
        if not match:
            die(f"wrk printed no summary:\n{proc.stdout}{proc.stderr}")
        raw = json.loads(match.group(1))
        errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
        return {
            "requests": raw["requests"],
            "rps": raw["requests"] / (raw["duration_us"] / 1e6),
            "p50": raw["p50"] / 1000,
            "p99": raw["p99"] / 1000,
            "p999": raw["p999"] / 1000,
            "errors": errors,
            "bytes_per_response": raw["bytes"] / max(raw["requests"], 1),
        }

    def h2load(self, port: int, path: str, seconds: int, api_key: str, measure: bool) -> dict:
        logfile = self.tmp / "h2load.log"
        cmd = [
            "h2load", "-t", "1", "-c", str(self.h2_clients), "-m", str(self.h2_streams),
            "-D", str(seconds),
        ]
        if measure:
            cmd.append(f"--log-file={logfile}")
        if api_key:
            cmd += ["-H", f"authorization: Bearer {api_key}"]
        cmd.append(f"http://127.0.0.1:{port}{path}")
        proc = subprocess.run(pinned(self.client_core, cmd), capture_output=True, text=True, timeout=seconds + 60)
        if proc.returncode != 0:
            die(f"h2load failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        done = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", proc.stdout)
        counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", proc.stdout)
        proto = re.search(r"Application protocol: (\S+)", proc.stdout)
        if not done or not counts:
            die(f"cannot parse h2load output:\n{proc.stdout}{proc.stderr}")
        if proto and proto.group(1) != "h2c":
            die(f"h2load negotiated {proto.group(1)}, not h2c, on port {port}")
        elapsed = float(done.group(1)) / (1000 if done.group(2) == "ms" else 1)
        succeeded = int(counts.group(4))
        result = {
            "requests": succeeded,
            "rps": succeeded / elapsed if elapsed else 0.0,
            "errors": int(counts.group(5)) + int(counts.group(6)) + int(counts.group(7)),
            "p50": 0.0, "p99": 0.0, "p999": 0.0,
            "bytes_per_response": 0.0,
        }
        if measure:
            latencies = []
            with open(logfile) as fh:
                for line in fh:
                    parts = line.split("\t")
                    if len(parts) >= 3:
                        latencies.append(int(parts[2]))
                        if not parts[1].startswith("2"):
                            result["errors"] += 1
            logfile.unlink(missing_ok=True)
            latencies.sort()
            if latencies:
                for key, q in (("p50", 0.50), ("p99", 0.99), ("p999", 0.999)):
                    result[key] = latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000
        return result

    def measure(self, target: Target, proto: str, path: str) -> dict:
        assert target.proc is not None
        port = target.h2_port if proto == "h2" else target.h1_port
        api_key = self.key_for(target)
        if self.warmup > 0:
            if proto == "h2":
                self.h2load(port, path, self.warmup, api_key, measure=False)
            else:
                self.wrk(port, path, self.warmup, api_key)
        stats_before = self.upstream_stats()
        cpu_before = cpu_seconds(target.proc.pid)
        wall_before = time.monotonic()
        if proto == "h2":
            result = self.h2load(port, path, self.duration, api_key, measure=True)
        else:
            result = self.wrk(port, path, self.duration, api_key)
        cpu = cpu_seconds(target.proc.pid) - cpu_before
        wall = time.monotonic() - wall_before
        stats_after = self.upstream_stats()
        result["upstream_conns"] = stats_after["connections"] - stats_before["connections"]
        result["cpu_per_100k"] = cpu / result["requests"] * 100_000 if result["requests"] else float("nan")
        result["busy"] = 100 * cpu / wall if wall > 0 else float("nan")
        for access_log in target.access_logs:
            # Bounded disk use: the log was written during the run; drop it.
            try:
                os.truncate(access_log, 0)
            except OSError:
                pass
        return result


# --------------------------------------------------------------------------
# Scenarios and the table
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    proto: str  # "h1" or "h2"
    path: str
    logs_on: bool


def scenarios(log_pass: str) -> list[Scenario]:
    off = [
        Scenario("1 KiB, HTTP/1.1, logs off", "h1", PATH_1K, False),
        Scenario("64 KiB, HTTP/1.1, logs off", "h1", PATH_64K, False),
        Scenario("1 KiB, HTTP/2 (h2c), logs off", "h2", PATH_1K, False),
    ]
    if log_pass == "none":
        return off
    on = [Scenario("1 KiB, HTTP/1.1, access logs on", "h1", PATH_1K, True)]
    if log_pass == "all":
        on += [
            Scenario("64 KiB, HTTP/1.1, access logs on", "h1", PATH_64K, True),
            Scenario("1 KiB, HTTP/2 (h2c), access logs on", "h2", PATH_1K, True),
        ]
    return off + on


def fmt(value: float, digits: int = 2) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


# Below this ratio of the direct row's requests/s to nginx's, the client
# side (not the proxies) limits how far the req/s ratios can spread.
CLIENT_BOUND = 1.25


def render(results: dict, targets: list[Target], scens: list[Scenario], header: list[str]) -> str:
    lines = list(header)
    lines.append("")
    lines.append("| target | scenario | req/s | p50 ms | p99 ms | p99.9 ms | CPU s / 100k req | core busy % | peak RSS MiB | new upstream conns | req/s ÷ nginx | p99 ÷ nginx |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for scen in scens:
        base = results.get((scen, "nginx"))
        direct = results.get((scen, "direct"))
        if isinstance(base, list) and isinstance(direct, list):
            # wrk and the upstream share a core with each other in every
            # row: what they reach alone bounds what any proxy can show.
            direct_rps = statistics.median(r["rps"] for r in direct)
            base_rps = statistics.median(r["rps"] for r in base)
            if base_rps and direct_rps < CLIENT_BOUND * base_rps:
                notes.append(
                    f"client-bound: {scen.name}: wrk and the upstream alone reach {fmt(direct_rps, 0)} req/s, "
                    f"{direct_rps / base_rps:.2f}x nginx's, and they do the same work behind any proxy: "
                    "req/s ratios cannot spread much above that here; compare the CPU column"
                )
        for target in targets:
            if scen.logs_on and target.key == "direct":
                continue
            cell = results.get((scen, target.key))
            if cell is None:
                continue
            if isinstance(cell, str):
                lines.append(f"| {target.label} | {scen.name} | {cell} | | | | | | | | | |")
                continue
            med = {k: statistics.median(r[k] for r in cell) for k in ("rps", "p50", "p99", "p999", "cpu_per_100k", "busy")}
            conns = sum(r["upstream_conns"] for r in cell)
            errors = sum(r["errors"] for r in cell)
            rss = target.rss_kib.get("on" if scen.logs_on else "off", 0) / 1024
            if isinstance(base, list):
                bmed_rps = statistics.median(r["rps"] for r in base)
                bmed_p99 = statistics.median(r["p99"] for r in base)
                ratio_rps = f"{med['rps'] / bmed_rps:.2f}x" if bmed_rps else "n/a"
                ratio_p99 = f"{med['p99'] / bmed_p99:.2f}x" if bmed_p99 else "n/a"
            else:
                ratio_rps = ratio_p99 = "n/a"
            mark = ""
            if errors:
                mark = f" ⚠{len(notes) + 1}"
                notes.append(f"⚠{len(notes) + 1}: {target.label}, {scen.name}: {errors} failed requests over all repetitions")
            lines.append(
                f"| {target.label}{mark} | {scen.name} | {fmt(med['rps'], 0)} | {fmt(med['p50'])} | {fmt(med['p99'])} | "
                f"{fmt(med['p999'])} | {fmt(med['cpu_per_100k'])} | {fmt(med['busy'], 0)} | {fmt(rss, 1)} | {conns} | {ratio_rps} | {ratio_p99} |"
            )
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines) + "\n"


def machine_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} cores, {model}, Linux {platform.release()}; "
        f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", required=True, help="directory holding bench_upstream (and bench_gateway)")
    parser.add_argument("--targets", default=os.environ.get("BENCH_TARGETS", ""),
                        help="comma-separated subset of direct,nginx,haproxy,caddy,jadugar-plain,jadugar-full,jadugar-many,jadugar-host")
    parser.add_argument("--log-pass", choices=["none", "1k", "all"], default=os.environ.get("BENCH_LOG_PASS", "1k"),
                        help="second pass with access logs on: none, the 1 KiB HTTP/1.1 scenario (default), or all scenarios")
    parser.add_argument("--out", default=os.environ.get("BENCH_OUT", ""), help="also write the table to this file")
    args = parser.parse_args()

    for tool in ("wrk", "h2load"):
        if not shutil.which(tool):
            die(f"{tool} is not installed (benches/load/run.sh installs it)")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    atexit.register(kill_all_children)

    bench = Bench(args)
    machine = machine_description()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    bench.start_upstream()
    targets = bench.make_targets()
    for target in targets:
        if target.key in ("nginx", "haproxy", "caddy") and not shutil.which(target.key):
            die(f"{target.key} is not installed (benches/load/run.sh installs it)")
    scens = scenarios(args.log_pass)
    results: dict = {}

    for logs_on in (False, True):
        pass_scens = [s for s in scens if s.logs_on == logs_on]
        if not pass_scens:
            continue
        pass_targets = [t for t in targets if not (logs_on and t.key == "direct")]
        log(f"pass with access logs {'on' if logs_on else 'off'}: starting {', '.join(t.key for t in pass_targets)}")
        for target in pass_targets:
            bench.start(target, logs_on)
            if target.unavailable:
                log(f"{target.key}: not run ({target.unavailable})")
        live = [t for t in pass_targets if not t.unavailable]
        for scen in pass_scens:
            for target in pass_targets:
                if target.unavailable:
                    results[(scen, target.key)] = f"not run: {target.unavailable}"
        # Repetitions interleaved across targets: rep 1 of every cell, then rep 2...
        for rep in range(bench.reps):
            for scen in pass_scens:
                for target in live:
                    log(f"rep {rep + 1}/{bench.reps} {scen.name}: {target.key}")
                    outcome = bench.measure(target, scen.proto, scen.path)
                    expected = 64 * 1024 if scen.path == PATH_64K else 1024
                    if scen.proto == "h1" and outcome["bytes_per_response"] < expected:
                        die(f"{target.key} answered {outcome['bytes_per_response']:.0f} bytes per response, expected more than {expected}")
                    log(f"    {outcome['rps']:,.0f} req/s p99 {outcome['p99']:.2f} ms, {outcome['upstream_conns']} new upstream conns, {outcome['errors']} errors")
                    results.setdefault((scen, target.key), []).append(outcome)
        for target in live:
            if target.proc is not None:
                target.rss_kib["on" if logs_on else "off"] = peak_rss_kib(target.proc.pid)
            bench.stop(target)

    load_end = os.getloadavg()
    header = [
        f"Load benchmark, {started}. Machine: {machine}; at end {load_end[0]:.2f}.",
        f"wrk -t{bench.threads} -c{bench.connections} -d{bench.duration}s (h2load -t1 -c{bench.h2_clients} -m{bench.h2_streams} -D{bench.duration}), "
        f"warm-up {bench.warmup}s before each run, median of {bench.reps} interleaved repetitions. "
        f"Proxy on core {bench.proxy_core}, client and upstream on core {bench.client_core}.",
        "The machine is shared with other work: absolute figures vary between runs; compare the ratios within this one run.",
        "CPU s / 100k req and peak RSS are the proxy's (all its processes), or the upstream's on the direct row. "
        "'core busy %' is the proxy's CPU time over the run's wall time (100 = its core saturated; below, the client side or other load limited the rate). "
        "'new upstream conns' is the number of connections the upstream accepted during the measured runs (0 = all reused).",
    ]
    table = render(results, targets, scens, header)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
        log(f"table written to {args.out}")


if __name__ == "__main__":
    main()
