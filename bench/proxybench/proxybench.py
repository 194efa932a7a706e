#!/usr/bin/env python3
# ruff: noqa  (vendored from the team's shared proxybench harness; kept as is)
"""proxybench: interleaved, ratio-based benchmark harness for TCP socket proxies.

Every proxy (and a no-proxy "direct" baseline) is measured in the same
invocation, interleaved round by round, and reported as ratios against
"direct" and against a reference proxy, because absolute numbers on a small
shared machine are unstable.

Load generation and the backend are small C programs (pb_load.c,
pb_backend.c) compiled with gcc at start-up; see README.md.

Only 127.0.0.1 / unix sockets are ever used.  Every load loop is bounded in
count and in time.  Only processes started by this script are signalled, by
their own PID / process group.
"""
import argparse
import atexit
import datetime
import json
import os
import platform
import random
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HOST = "127.0.0.1"
MiB = 1 << 20
GiB = 1 << 30

# --------------------------------------------------------------------------
# built-in proxies (command template + config file templates)
#
# Placeholders substituted in commands and config files (unknown {words} and
# other braces are left alone):
#   {listen} {listen_host} {listen_unix} {backend} {backend_host}
#   {backend_unix} {workdir} {python} {here} {maxconn} {fdlimit}
# readiness = the listen address accepts a connection and echoes one byte.
# --------------------------------------------------------------------------
HAPROXY_CFG = """\
global
    maxconn {maxconn}
    nbthread {nbthread}
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    maxconn {maxconn}
frontend fe
    bind {listen_host}:{listen}
    backlog 1024
    default_backend be
backend be
    server s1 {backend_host}:{backend} maxconn {maxconn}
"""

NGINX_CFG = """\
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes {workers};
worker_rlimit_nofile {fdlimit};
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{
    worker_connections {worker_connections};
}}
stream {{
    server {{
        listen {listen_host}:{listen} backlog=1024;
        proxy_pass {backend_host}:{backend};
        proxy_connect_timeout 5s;
        proxy_timeout 1h;
    }}
}}
"""

LIGHTTPD_CFG = """\
server.modules = ( "mod_sockproxy" )
server.document-root = "{workdir}"
server.errorlog = "{workdir}/lighttpd-error.log"
server.bind = "{listen_host}"
server.port = {listen}
server.max-fds = {fdlimit}
server.max-connections = {maxconn}
server.listen-backlog = 1024
server.max-read-idle = 3600
server.max-write-idle = 3600
$SERVER["socket"] == "{listen_host}:{listen}" {{
    sockproxy.server = ( "" => ( ( "host" => "{backend_host}", "port" => {backend} ) ) )
}}
"""

BUILTIN = {
    "direct": None,
    "haproxy": {
        "cmd": "haproxy -db -f {workdir}/haproxy.cfg",
        "files": {"haproxy.cfg": HAPROXY_CFG},
        "vars": {"nbthread": 1},
        "version": ["haproxy", "-v"],
        "note": "mode tcp, nbthread 1",
    },
    "haproxy2": {
        "cmd": "haproxy -db -f {workdir}/haproxy.cfg",
        "files": {"haproxy.cfg": HAPROXY_CFG},
        "vars": {"nbthread": 2},
        "version": ["haproxy", "-v"],
        "note": "mode tcp, nbthread 2",
    },
    "nginx": {
        "cmd": "nginx -e {workdir}/nginx-error.log -p {workdir} -c {workdir}/nginx.conf -g 'daemon off;'",
        "files": {"nginx.conf": NGINX_CFG},
        "vars": {"workers": 1},
        "version": ["nginx", "-v"],
        "note": "stream module, worker_processes 1",
    },
    "nginx2": {
        "cmd": "nginx -e {workdir}/nginx-error.log -p {workdir} -c {workdir}/nginx.conf -g 'daemon off;'",
        "files": {"nginx.conf": NGINX_CFG},
        "vars": {"workers": 2},
        "version": ["nginx", "-v"],
        "note": "stream module, worker_processes 2",
    },
    "lighttpd": {
        "cmd": "lighttpd -D -f {workdir}/lighttpd.conf",
        "files": {"lighttpd.conf": LIGHTTPD_CFG},
        "version": ["lighttpd", "-v"],
        "note": "mod_sockproxy, single process",
    },
    "socat": {
        "cmd": "socat TCP-LISTEN:{listen},bind={listen_host},fork,reuseaddr,backlog=1024 TCP:{backend_host}:{backend}",
        "version": ["socat", "-V"],
        "note": "fork per connection",
    },
    "pproxy": {
        "cmd": "pproxy -l tunnel{{backend_host}:{backend}}://{listen_host}:{listen}",
        "version": ["pproxy", "--version"],
        "note": "asyncio, tunnel mode",
    },
    "twisted": {
        "cmd": "{python} {here}/twisted_portforward.py {listen} {backend_host} {backend}",
        "version": ["{python}", "-c", "import twisted; print('Twisted', twisted.__version__)"],
        "note": "twisted.protocols.portforward, epoll reactor",
    },
    "nobp": {
        "cmd": "{python} {here}/nobp_proxy.py {listen} {backend_host} {backend}",
        "version": ["{python}", "-c", "import sys; print('asyncio (CPython', sys.version.split()[0] + ')')"],
        "note": "NEGATIVE CONTROL: asyncio proxy that ignores backpressure (not a real peer)",
    },
}
DEFAULT_PROXIES = ["direct", "haproxy", "haproxy2", "nginx", "nginx2", "lighttpd", "socat", "pproxy", "twisted"]
ALL_SCENARIOS = ["bulk", "conn", "rr", "idle", "slowreader", "iperf"]
DEFAULT_SCENARIOS = ["bulk", "conn", "rr", "idle", "slowreader"]

PROFILES = {
    "quick": dict(reps=1, mem_reps=1, bulk_bytes=256 * MiB, bulk_parallel=[1, 8], bulk_timeout=60,
                  conn_duration=2.0, conn_conc=[50], rr_duration=2.0, rr_warmup=0.3,
                  rr_cases=[(1, 1), (50, 64)], idle_conns=2000, idle_settle=0.5,
                  slow_bytes=256 * MiB, slow_pause_ms=2000, iperf_bytes=256 * MiB, budget_min=6),
    "full": dict(reps=3, mem_reps=1, bulk_bytes=2 * GiB, bulk_parallel=[1, 8], bulk_timeout=180,
                 conn_duration=5.0, conn_conc=[50], rr_duration=5.0, rr_warmup=0.5,
                 rr_cases=[(1, 1), (50, 64)], idle_conns=8000, idle_settle=1.0,
                 slow_bytes=1 * GiB, slow_pause_ms=5000, iperf_bytes=2 * GiB, budget_min=60),
}

# headline metric per scenario: (key, label, unit, higher_is_better)
HEADLINE = {
    "bulk": ("MBps", "throughput", "MB/s", True),
    "iperf": ("MBps", "iperf3 throughput", "MB/s", True),
    "conn": ("conn_per_s", "connection rate", "conn/s", True),
    "rr": ("req_per_s", "request rate", "req/s", True),
    "idle": ("rss_per_conn", "RSS per proxied idle connection", "bytes", False),
    "slowreader": ("peak_growth", "peak RSS growth", "bytes", False),
}

_children = []  # Popen objects we started (for emergency cleanup)


def log(*a):
    print("[%s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def subst(template, mapping):
    """Replace {word} for known words only; leave other braces alone."""
    def rep(m):
        k = m.group(1)
        return str(mapping[k]) if k in mapping else m.group(0)
    return re.sub(r"\{(\w+)\}", rep, template)


def subst_cfg(template, mapping):
    """Config templates use str.format escaping ({{ }} for literal braces)."""
    return template.format(**mapping)


# --------------------------------------------------------------------------
# process / memory accounting
# --------------------------------------------------------------------------
CLK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()


def session_pids(sid):
    """All live processes in session `sid` (we start proxies with setsid)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fl = _stat_fields(int(d))
        except (OSError, ValueError):
            continue
        if int(fl[3]) == sid and fl[0] != "Z":
            out.append(int(d))
    return out


def proc_status_kb(pid, keys=("VmRSS", "VmHWM")):
    res = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k = line.split(":", 1)[0]
                if k in keys:
                    res[k] = int(line.split()[1])
    except OSError:
        pass
    return res


def proc_pss_kb(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_cpu_s(pid):
    try:
        fl = _stat_fields(pid)
        return sum(int(x) for x in fl[11:15]) / CLK
    except (OSError, ValueError, IndexError):
        return 0.0


class Tree:
    """Memory/CPU of a proxy's whole process tree (its session)."""

    def __init__(self, sid):
        self.sid = sid
        self._pids = [sid]
        self._pids_t = 0

    def pids(self, refresh=True):
        if refresh or time.time() - self._pids_t > 0.5:
            self._pids = session_pids(self.sid) or []
            self._pids_t = time.time()
        return self._pids

    def rss_kb(self, refresh=True):
        return sum(proc_status_kb(p).get("VmRSS", 0) for p in self.pids(refresh))

    def snapshot(self):
        pids = self.pids()
        rss = sum(proc_status_kb(p).get("VmRSS", 0) for p in pids)
        pss = sum(proc_pss_kb(p) for p in pids)
        cpu = sum(proc_cpu_s(p) for p in pids)
        return {"rss_kb": rss, "pss_kb": pss, "cpu_s": cpu, "nprocs": len(pids)}

    def cpu_s(self):
        return sum(proc_cpu_s(p) for p in self.pids())


class PeakSampler(threading.Thread):
    def __init__(self, tree, interval=0.05):
        super().__init__(daemon=True)
        self.tree, self.interval = tree, interval
        self.peak_kb, self.samples = 0, []
        self._halt = threading.Event()
        self.t0 = time.time()

    def run(self):
        while not self._halt.is_set():
            v = self.tree.rss_kb(refresh=False)
            self.samples.append((round(time.time() - self.t0, 3), v))
            self.peak_kb = max(self.peak_kb, v)
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(5)


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def kill_group(p, grace=5.0):
    """Terminate a process we started and its process group (setsid'd by us)."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # stragglers in the group (forked children) get SIGKILL
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        pass
    # wait for the whole session to disappear (socat children etc.)
    t_end = time.time() + 10
    while session_pids(p.pid) and time.time() < t_end:
        time.sleep(0.05)


@atexit.register
def _cleanup():
    for p in _children:
        try:
            kill_group(p, grace=2)
        except Exception:
            pass


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
_used_ports = set()


def free_port():
    for _ in range(200):
        port = random.randint(20000, 31999)  # below the ephemeral range
        if port in _used_ports:
            continue
        s = socket.socket()
        try:
            s.bind((HOST, port))
        except OSError:
            continue
        finally:
            s.close()
        _used_ports.add(port)
        return port
    raise RuntimeError("no free port")


def wait_accepting(addr, proc=None, timeout=20.0):
    t_end = time.time() + timeout
    while time.time() < t_end:
        if proc is not None and proc.poll() is not None:
            return "process exited with code %s" % proc.returncode
        try:
            if isinstance(addr, str):
                s = socket.socket(socket.AF_UNIX)
            else:
                s = socket.socket()
            s.settimeout(1)
            s.connect(addr)
            s.close()
            return None
        except OSError:
            time.sleep(0.05)
    return "not accepting after %.0fs" % timeout


def echo_check(addr, timeout=5.0):
    try:
        s = socket.socket(socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET)
        s.settimeout(timeout)
        s.connect(addr)
        s.sendall(b"x")
        data = s.recv(1)
        s.close()
        return None if data == b"x" else "echo check got %r" % data
    except OSError as e:
        return "echo check failed: %s" % e


def tail(path, n=2000):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def compile_helpers(builddir):
    os.makedirs(builddir, exist_ok=True)
    bins = {}
    for name in ("pb_backend", "pb_load"):
        src = os.path.join(HERE, name + ".c")
        out = os.path.join(builddir, name)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", out, src], check=True)
        bins[name] = out
    return bins


def run_json(cmd, timeout):
    """Run a load generator; return (last json object, gen cpu s, wall s, raw)."""
    c0, t0 = children_cpu_s(), time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out, err = p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = "timeout after %ss" % timeout
    wall = time.time() - t0
    gen_cpu = children_cpu_s() - c0
    obj = None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                pass
    if obj is None:
        obj = {"error": "no output: %s" % (err or out)[-300:]}
    return obj, gen_cpu, wall


# --------------------------------------------------------------------------
# backend and proxies
# --------------------------------------------------------------------------
class Backend:
    def __init__(self, binary, rundir):
        self.binary, self.rundir = binary, rundir
        self.port = free_port()
        self.unix = os.path.join(rundir, "backend.sock")
        self.procs = []
        self.start()

    def start(self):
        for p in self.procs:
            kill_group(p)
        self.procs = []
        for addr in (str(self.port), "unix:" + self.unix):
            p = subprocess.Popen([self.binary, addr], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            _children.append(p)
            line = p.stdout.readline().decode().strip()
            if line != "READY":
                raise RuntimeError("backend failed to start: %s" % line)
            self.procs.append(p)

    def ensure(self):
        if any(p.poll() is not None for p in self.procs):
            log("backend died; restarting")
            self.start()

    def cpu_s(self):
        return sum(proc_cpu_s(p.pid) for p in self.procs)


class IperfServer:
    def __init__(self, rundir):
        self.port = free_port()
        self.logf = open(os.path.join(rundir, "iperf3-server.log"), "w")
        self.p = subprocess.Popen(["iperf3", "-s", "-B", HOST, "-p", str(self.port)], stdout=self.logf,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        _children.append(self.p)
        err = wait_accepting((HOST, self.port), self.p, 10)
        if err:
            raise RuntimeError("iperf3 -s: " + err)

    def ensure(self):
        if self.p.poll() is not None:
            raise RuntimeError("iperf3 server died")


class ProxyInstance:
    """One started proxy (or the direct pseudo-proxy)."""

    def __init__(self, name, spec, rundir, backend_port, backend_unix, limits):
        self.name, self.spec = name, spec
        self.proc, self.tree = None, None
        self.error = None
        if spec is None:  # direct
            self.target = "%s:%d" % (HOST, backend_port)
            self.addr = (HOST, backend_port)
            return
        self.workdir = tempfile.mkdtemp(prefix=name + "-", dir=rundir)
        listen = free_port()
        mapping = {
            "listen": listen, "listen_host": HOST, "listen_unix": os.path.join(self.workdir, "listen.sock"),
            "backend": backend_port, "backend_host": HOST, "backend_unix": backend_unix,
            "workdir": self.workdir, "python": sys.executable, "here": HERE,
            "maxconn": limits["maxconn"], "fdlimit": limits["fdlimit"],
            "worker_connections": limits["fdlimit"] - 64,
        }
        mapping.update(spec.get("vars", {}))
        for fname, tmpl in spec.get("files", {}).items():
            with open(os.path.join(self.workdir, fname), "w") as f:
                f.write(subst_cfg(tmpl, mapping))
        cmd = subst(spec["cmd"], mapping)
        self.cmd = cmd
        if "{listen_unix}" in spec["cmd"]:
            self.target = "unix:" + mapping["listen_unix"]
            self.addr = mapping["listen_unix"]
        else:
            self.target = "%s:%d" % (HOST, listen)
            self.addr = (HOST, listen)
        self.logpath = os.path.join(self.workdir, "proxy.log")
        with open(self.logpath, "w") as logf:
            self.proc = subprocess.Popen(shlex.split(cmd), stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.workdir)
        _children.append(self.proc)
        self.tree = Tree(self.proc.pid)

    def ready(self, sanity=True):
        if self.spec is None:
            return echo_check(self.addr) if sanity else None
        err = wait_accepting(self.addr, self.proc)
        if err is None and sanity:
            err = echo_check(self.addr)
        if err:
            self.error = "%s; log: %s" % (err, tail(self.logpath, 600).strip().replace("\n", " | "))
        return self.error

    def alive(self):
        return self.spec is None or self.proc.poll() is None

    def stop(self):
        if self.proc is not None:
            kill_group(self.proc)
            if self.proc in _children:
                _children.remove(self.proc)

    # measurement helpers -------------------------------------------------
    def snapshot(self):
        return self.tree.snapshot() if self.tree else None

    def settle(self, timeout=3.0):
        """Wait until the process count is stable (e.g. socat's child for the
        readiness check has exited) so that 'before' snapshots are clean."""
        if not self.tree:
            return
        t_end, last, stable = time.time() + timeout, None, 0
        while time.time() < t_end:
            n = len(self.tree.pids())
            stable = stable + 1 if n == last else 0
            if stable >= 3:
                return
            last = n
            time.sleep(0.1)

    def cpu_s(self):
        return self.tree.cpu_s() if self.tree else None


# --------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------
def _cpu_fields(px, backend, cpu0, bcpu0, t0, gen_cpu, gen_wall, res):
    wall = time.time() - t0
    if px.tree is not None:
        res["proxy_cpu_s"] = round(px.cpu_s() - cpu0, 3)
        res["proxy_cpu_pct"] = round(100 * res["proxy_cpu_s"] / wall, 1)
    res["backend_cpu_pct"] = round(100 * (backend.cpu_s() - bcpu0) / wall, 1)
    res["gen_cpu_pct"] = round(100 * gen_cpu / max(gen_wall, 1e-9), 1)


def loadavg1():
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError):
        return None


def measured(px, backend, cmd, timeout):
    cpu0 = px.cpu_s() if px.tree else 0
    bcpu0, t0 = backend.cpu_s(), time.time()
    res, gen_cpu, gen_wall = run_json(cmd, timeout)
    _cpu_fields(px, backend, cpu0, bcpu0, t0, gen_cpu, gen_wall, res)
    res["loadavg1"] = loadavg1()
    return res


def sc_bulk(px, ctx):
    P = ctx.prm
    out = {}
    for par in P["bulk_parallel"]:
        for d in ("up", "down"):
            cmd = [ctx.bins["pb_load"], "bulk", "--target", px.target, "-c", str(par), "-l", str(P["bulk_bytes"]),
                   "--dir", d, "-t", str(P["bulk_timeout"])]
            r = measured(px, ctx.backend, cmd, P["bulk_timeout"] + 30)
            if "proxy_cpu_s" in r and r.get("bytes"):
                r["proxy_cpu_s_per_GB"] = round(r["proxy_cpu_s"] / (r["bytes"] / 1e9), 3)
            if not r.get("complete"):
                r["failed"] = r.get("error") or "incomplete (%s bytes)" % r.get("bytes")
            out["%s x%d" % (d, par)] = r
    return out


def sc_conn(px, ctx):
    P = ctx.prm
    out = {}
    for conc in P["conn_conc"]:
        cmd = [ctx.bins["pb_load"], "conn", "--target", px.target, "-c", str(conc), "-d", str(P["conn_duration"]),
               "-n", "5000000", "-s", "64"]
        r = measured(px, ctx.backend, cmd, P["conn_duration"] + 60)
        if "proxy_cpu_s" in r and r.get("ok"):
            r["proxy_cpu_us_per_conn"] = round(1e6 * r["proxy_cpu_s"] / r["ok"], 1)
        errs = sum((r.get("errors") or {}).values())
        r["error_count"] = errs
        if "lat_us" in r:
            r["p50_us"] = r["lat_us"]["p50"]
            r["p99_us"] = r["lat_us"]["p99"]
        if "error" in r or not r.get("ok"):
            r["failed"] = r.get("error", "no successful connection")
        out["c%d" % conc] = r
    return out


def sc_rr(px, ctx):
    P = ctx.prm
    out = {}
    for conns, msg in P["rr_cases"]:
        cmd = [ctx.bins["pb_load"], "rr", "--target", px.target, "-c", str(conns), "-d", str(P["rr_duration"]),
               "-n", "100000000", "-s", str(msg), "-w", str(P["rr_warmup"])]
        r = measured(px, ctx.backend, cmd, P["rr_duration"] + P["rr_warmup"] + 60)
        if "proxy_cpu_s" in r and r.get("recorded"):
            r["proxy_cpu_us_per_req"] = round(1e6 * r["proxy_cpu_s"] / r["recorded"], 2)
        if "lat_us" in r:
            r["p50_us"] = r["lat_us"]["p50"]
            r["p99_us"] = r["lat_us"]["p99"]
        if "error" in r:
            r["failed"] = r["error"]
        out["c%d %dB" % (conns, msg)] = r
    return out


def sc_idle(px, ctx):
    P = ctx.prm
    n = ctx.idle_n
    px.settle()
    before = px.snapshot()
    cmd = [ctx.bins["pb_load"], "idle", "--target", px.target, "-c", str(n), "-t", "240", "-o", "10"]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _children.append(p)
    res = {"target": n}
    try:
        r, _, _ = select.select([p.stdout], [], [], 250)
        if not r:
            raise RuntimeError("idle: no READY within 250s")
        ready = json.loads(p.stdout.readline())
        time.sleep(P["idle_settle"])
        during = px.snapshot()
        res.update(open_ok=ready["ok"], open_failed=ready["failed"], open_s=ready["open_s"],
                   open_errors=ready.get("errors"))
        p.stdin.write("GO\n")
        p.stdin.flush()
        r, _, _ = select.select([p.stdout], [], [], 120)
        if not r:
            raise RuntimeError("idle: no check result within 120s")
        checked = json.loads(p.stdout.readline())
        res.update(check_ok=checked["check_ok"], check_failed=checked["check_failed"], check_s=checked["check_s"])
        if before is not None:
            res.update(rss_before_kb=before["rss_kb"], rss_during_kb=during["rss_kb"], pss_before_kb=before["pss_kb"],
                       pss_during_kb=during["pss_kb"], nprocs_during=during["nprocs"])
            ok = max(1, ready["ok"])
            res["rss_per_conn"] = round((during["rss_kb"] - before["rss_kb"]) * 1024 / ok)
            res["pss_per_conn"] = round((during["pss_kb"] - before["pss_kb"]) * 1024 / ok)
        res["open_stalled"] = ready.get("stalled")
        if ready["ok"] < n:
            errs = {k: v for k, v in (ready.get("errors") or {}).items() if v}
            res["failed"] = "only %d/%d connections opened%s (errors %s)" % (
                ready["ok"], n, ", stalled >10s without progress" if ready.get("stalled") else "", errs)
        elif checked["check_ok"] < ready["ok"]:
            res["failed"] = "%d/%d connections stopped echoing" % (ready["ok"] - checked["check_ok"], ready["ok"])
    except Exception as e:  # noqa: BLE001
        res["failed"] = str(e)
    finally:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p in _children:
            _children.remove(p)
    return {"%d conns" % n: res}


def sc_slow(px, ctx, direction):
    P = ctx.prm
    px.settle()
    before = px.snapshot()
    sampler = PeakSampler(px.tree) if px.tree else None
    if sampler:
        sampler.start()
    cmd = [ctx.bins["pb_load"], "slow", "--target", px.target, "-l", str(P["slow_bytes"]), "--dir", direction,
           "-p", str(P["slow_pause_ms"]), "-t", str(P["slow_pause_ms"] / 1000 + 120)]
    r, gen_cpu, wall = run_json(cmd, P["slow_pause_ms"] / 1000 + 150)
    if sampler:
        sampler.stop()
        after = px.snapshot()
        r["rss_before_kb"] = before["rss_kb"]
        r["peak_rss_kb"] = sampler.peak_kb
        r["rss_after_kb"] = after["rss_kb"]
        r["peak_growth"] = max(0, sampler.peak_kb - before["rss_kb"]) * 1024
        # coarse RSS trace (every ~0.5 s) for the report
        r["rss_trace_kb"] = sampler.samples[::10]
    if not r.get("complete"):
        r["failed"] = r.get("error") or "incomplete: %s of %s bytes" % (r.get("bytes"), r.get("target_bytes"))
    return {direction: r}


def sc_iperf(px, ctx):
    P = ctx.prm
    out = {}
    for par in P["bulk_parallel"]:
        for rev in (False, True):
            host, port = px.addr
            cmd = ["iperf3", "-c", host, "-p", str(port), "-n", str(P["iperf_bytes"]), "-J", "-P", str(par)]
            if rev:
                cmd.append("-R")
            cpu0 = px.cpu_s() if px.tree else 0
            bcpu0, t0 = 0.0, time.time()
            c0 = children_cpu_s()
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=P["bulk_timeout"] + 30)
                j = json.loads(p.stdout)
                if "error" in j:
                    r = {"failed": j["error"]}
                else:
                    bps = j["end"]["sum_received"]["bits_per_second"]
                    r = {"MBps": round(bps / 8 / 1e6, 1), "bytes": j["end"]["sum_received"]["bytes"],
                         "elapsed": j["end"]["sum_received"]["seconds"]}
            except (subprocess.TimeoutExpired, ValueError, KeyError) as e:
                r = {"failed": "iperf3: %s" % str(e)[:200]}
            gen_wall = time.time() - t0
            _cpu_fields(px, ctx.iperf_backend_cpu, cpu0, bcpu0, t0, children_cpu_s() - c0, gen_wall, r)
            if "proxy_cpu_s" in r and r.get("bytes"):
                r["proxy_cpu_s_per_GB"] = round(r["proxy_cpu_s"] / (r["bytes"] / 1e9), 3)
            out["%s x%d" % ("down" if rev else "up", par)] = r
            time.sleep(0.3)  # let iperf3 -s go back to listening
    return out


class _NullCPU:
    def cpu_s(self):
        return 0.0


# units = (scenario, unit-name, function); each unit gets a freshly started proxy
def scenario_units(scenarios):
    units = []
    for s in scenarios:
        if s == "bulk":
            units.append(("bulk", sc_bulk))
        elif s == "conn":
            units.append(("conn", sc_conn))
        elif s == "rr":
            units.append(("rr", sc_rr))
        elif s == "idle":
            units.append(("idle", sc_idle))
        elif s == "slowreader":
            units.append(("slowreader", lambda px, ctx: sc_slow(px, ctx, "up")))
            units.append(("slowreader", lambda px, ctx: sc_slow(px, ctx, "down")))
        elif s == "iperf":
            units.append(("iperf", sc_iperf))
    return units


MEM_SCENARIOS = {"idle", "slowreader"}


# --------------------------------------------------------------------------
# aggregation and report
# --------------------------------------------------------------------------
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def aggregate(raw, proxies, ref):
    """raw[scenario][case][proxy] = list of (round, result) -> summary."""
    summ = {}
    for sc, cases in raw.items():
        key = HEADLINE[sc][0]
        summ[sc] = {}
        for case, per_proxy in cases.items():
            rows = {}
            # per-round values of the headline metric
            vals = {px: {rnd: r.get(key) for rnd, r in lst if not r.get("failed") and r.get(key) is not None}
                    for px, lst in per_proxy.items()}
            for px in proxies:
                lst = per_proxy.get(px, [])
                if not lst:
                    continue
                ok = [r for _, r in lst if not r.get("failed")]
                fails = [r.get("failed") for _, r in lst if r.get("failed")]
                row = {"n": len(ok), "failures": fails}
                v = list(vals.get(px, {}).values())
                if v:
                    m = med(v)
                    row["median"] = m
                    row["min"], row["max"] = min(v), max(v)
                    row["spread_pct"] = round(100 * (max(v) - min(v)) / m, 1) if m else None
                    row["values"] = v
                for other, label in (("direct", "x_direct"), (ref, "x_ref")):
                    if other is None or other not in vals or other == px:
                        continue
                    paired = [vals[px][rnd] / vals[other][rnd] for rnd in vals.get(px, {})
                              if rnd in vals[other] and vals[other][rnd]]
                    if paired:
                        row[label] = round(med(paired), 3)
                for extra in ("p50_us", "p99_us", "proxy_cpu_s_per_GB", "proxy_cpu_us_per_conn",
                              "proxy_cpu_us_per_req", "proxy_cpu_pct", "gen_cpu_pct", "backend_cpu_pct",
                              "error_count", "pss_per_conn", "rss_before_kb", "rss_during_kb", "peak_rss_kb",
                              "rss_after_kb", "client_bytes_during_pause", "open_ok", "check_ok", "open_s",
                              "nprocs_during", "elapsed"):
                    ev = [r.get(extra) for _, r in lst if not r.get("failed") and r.get(extra) is not None]
                    if ev:
                        row[extra] = med(ev)
                rows[px] = row
            summ[sc][case] = rows
    return summ


def fmt_num(v, unit=None):
    if v is None:
        return "–"
    if unit == "bytes":
        if abs(v) >= 10 * MiB:
            return "%.0f MiB" % (v / MiB)
        if abs(v) >= 10 * 1024:
            return "%.0f KiB" % (v / 1024)
        return "%.0f B" % v
    if isinstance(v, float) and abs(v) < 10:
        return "%.2f" % v
    return "{:,.0f}".format(v)


def fmt_ratio(v):
    return "–" if v is None else "%.2f" % v


def render_overview(summ, proxies):
    """One row per proxy: headline ratio vs direct per case, memory in bytes."""
    cols = []
    for sc in summ:
        for case in summ[sc]:
            cols.append((sc, case))
    if not cols:
        return []
    L = ["## Overview", "",
         "Throughput/rate cells: median × direct (higher is better). idle: RSS per proxied connection. "
         "slowreader: peak RSS growth of the proxy while the reader stalls (lower is better).", ""]
    hdr = ["proxy"] + ["%s %s" % (sc, case) for sc, case in cols]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for px in proxies:
        cells = [px]
        for sc, case in cols:
            row = summ[sc][case].get(px)
            unit = HEADLINE[sc][2]
            if row is None:
                cells.append("–")
            elif row.get("median") is None:
                cells.append("FAILED" if row.get("failures") else "n/a")
            elif unit == "bytes":
                cells.append(fmt_num(row["median"], "bytes"))
            elif px == "direct":
                cells.append("1 (%s %s)" % (fmt_num(row["median"]), unit))
            else:
                cells.append(fmt_ratio(row.get("x_direct")) + ("*" if row.get("failures") else ""))
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    L.append("(* = at least one round failed; see the detailed table)")
    L.append("")
    return L


def render_md(meta, summ, proxies, ref, raw):
    L = []
    L.append("# proxybench results (%s mode)" % meta["mode"])
    L.append("")
    L.append("- started: %s, took %.1f min; rounds: %d (memory scenarios: %d)" % (
        meta["started"], meta["duration_s"] / 60, meta["params"]["reps"], meta["params"]["mem_reps"]))
    L.append("- machine: %s, %s CPUs, kernel %s; loadavg at start %s, at end %s" % (
        meta["cpu_model"], meta["ncpu"], meta["kernel"], meta["loadavg_start"], meta["loadavg_end"]))
    L.append("- RLIMIT_NOFILE: %s (idle scenario uses %d connections)" % (meta["fd_limit"], meta["idle_n"]))
    L.append("- ratio columns: per-round ratio value/direct (or value/%s), median over rounds; "
             "rounds interleave all proxies, rotating the order each round" % ref)
    L.append("- spread = (max-min)/median of the per-round values; > 10% is flagged as noisy")
    L.append("")
    L.append("## Versions")
    L.append("")
    for k, v in meta["versions"].items():
        L.append("- %s: `%s`" % (k, v))
    L.append("")
    L.append("## Proxies")
    L.append("")
    for px in proxies:
        L.append("- **%s**: `%s`%s" % (px, meta["commands"].get(px, "(no proxy: load generator -> backend)"),
                                        " — " + meta["notes"][px] if meta["notes"].get(px) else ""))
    L.append("")
    L.extend(render_overview(summ, proxies))
    for sc in summ:
        key, label, unit, hib = HEADLINE[sc]
        L.append("## %s — %s (%s, %s is better)" % (sc, label, unit, "higher" if hib else "lower"))
        L.append("")
        for case, rows in summ[sc].items():
            L.append("### %s / %s" % (sc, case))
            L.append("")
            extra_cols = []
            if sc in ("bulk", "iperf"):
                extra_cols = [("proxy_cpu_s_per_GB", "proxy CPU s/GB"), ("proxy_cpu_pct", "proxy CPU%"),
                              ("gen_cpu_pct", "gen CPU%")]
            elif sc == "conn":
                extra_cols = [("p50_us", "p50 µs"), ("p99_us", "p99 µs"), ("proxy_cpu_us_per_conn", "proxy CPU µs/conn"),
                              ("proxy_cpu_pct", "proxy CPU%"), ("gen_cpu_pct", "gen CPU%"), ("error_count", "errors")]
            elif sc == "rr":
                extra_cols = [("p50_us", "p50 µs"), ("p99_us", "p99 µs"), ("proxy_cpu_us_per_req", "proxy CPU µs/req"),
                              ("proxy_cpu_pct", "proxy CPU%"), ("gen_cpu_pct", "gen CPU%")]
            elif sc == "idle":
                extra_cols = [("pss_per_conn", "PSS/conn"), ("rss_before_kb", "RSS before KiB"),
                              ("rss_during_kb", "RSS with conns KiB"), ("open_ok", "opened"), ("check_ok", "still echo"),
                              ("open_s", "open time s"), ("nprocs_during", "procs")]
            elif sc == "slowreader":
                extra_cols = [("rss_before_kb", "RSS before KiB"), ("peak_rss_kb", "peak RSS KiB"),
                              ("rss_after_kb", "RSS after KiB"), ("client_bytes_during_pause", "client sent during stall"),
                              ("elapsed", "total s")]
            hdr = ["proxy", "%s (median)" % unit, "min–max", "spread", "× direct", "× %s" % ref]
            hdr += [c[1] for c in extra_cols] + ["notes"]
            L.append("| " + " | ".join(hdr) + " |")
            L.append("|" + "---|" * len(hdr))
            for px in proxies:
                if px not in rows:
                    continue
                row = rows[px]
                m = row.get("median")
                if m is None and not row.get("failures"):
                    cells = [px, "n/a", "–", "–", "–", "–"] + ["–"] * len(extra_cols)
                    if sc in ("idle", "slowreader"):
                        for k, _ in extra_cols:
                            if k in ("open_ok", "check_ok", "open_s", "client_bytes_during_pause", "elapsed"):
                                cells[6 + [c[0] for c in extra_cols].index(k)] = fmt_num(row.get(k), "bytes" if k == "client_bytes_during_pause" else None)
                elif m is None:
                    cells = [px, "FAILED", "–", "–", "–", "–"] + ["–"] * len(extra_cols)
                else:
                    spread = row.get("spread_pct")
                    sp = "–" if spread is None or row["n"] < 2 else ("%.0f%%%s" % (spread, " ⚠" if spread > 10 else ""))
                    cells = [px, fmt_num(m, unit), "%s–%s" % (fmt_num(row["min"], unit), fmt_num(row["max"], unit)), sp,
                             fmt_ratio(row.get("x_direct")), fmt_ratio(row.get("x_ref"))]
                    for k, _ in extra_cols:
                        v = row.get(k)
                        if k in ("pss_per_conn",):
                            cells.append(fmt_num(v, "bytes"))
                        elif k == "client_bytes_during_pause":
                            cells.append(fmt_num(v, "bytes"))
                        else:
                            cells.append(fmt_num(v))
                notes = "; ".join(sorted(set(str(f) for f in row.get("failures", []))))[:300]
                if row.get("failures") and m is not None:
                    notes = "%d failed round(s): %s" % (len(row["failures"]), notes)
                cells.append(notes.replace("|", "/"))
                L.append("| " + " | ".join(cells) + " |")
            # generator-bottleneck check
            if hib and "direct" in rows and rows["direct"].get("median"):
                best = max((r.get("x_direct") or 0) for p, r in rows.items() if p != "direct") if len(rows) > 1 else 0
                if best > 0.8:
                    L.append("")
                    L.append("> ⚠ best proxy reaches %.0f%% of direct: for this case the load generator/backend "
                             "(or the 2 shared cores) may be the limit, not the proxy." % (best * 100))
            L.append("")
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------
# versions / metadata
# --------------------------------------------------------------------------
def version_of(cmdv):
    try:
        p = subprocess.run(cmdv, capture_output=True, text=True, timeout=20)
        txt = (p.stdout + p.stderr).strip().splitlines()
        for line in txt:
            if line.strip():
                if "socat" in cmdv[0]:
                    for l2 in txt:
                        if "socat version" in l2:
                            return l2.strip()
                return line.strip()[:160]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "unavailable"


def collect_meta(proxies, specs, args):
    versions = {}
    for px in proxies:
        spec = specs.get(px)
        if spec and spec.get("version"):
            cmdv = [subst(c, {"python": sys.executable}) for c in spec["version"]]
            versions[px] = version_of(cmdv)
    versions["iperf3"] = version_of(["iperf3", "--version"])
    versions["gcc"] = version_of(["gcc", "--version"])
    versions["python"] = sys.version.split()[0]
    cpu_model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "versions": versions, "kernel": platform.release(), "ncpu": os.cpu_count(), "cpu_model": cpu_model,
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
class Ctx:
    pass


def parse_size(s):
    s = str(s).strip().upper()
    mult = 1
    for suf, m in (("G", GiB), ("M", MiB), ("K", 1024)):
        if s.endswith(suf) or s.endswith(suf + "IB"):
            mult = m
            s = s.rstrip("IB").rstrip(suf)
            break
    return int(float(s) * mult)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxies", default=",".join(DEFAULT_PROXIES),
                    help="comma list (built-ins: %s; 'direct' is always added)" % ",".join(BUILTIN))
    ap.add_argument("--proxy-cmd", action="append", default=[], metavar="NAME=TEMPLATE",
                    help="add a proxy: command template with {listen} {backend} (see README); may repeat")
    ap.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS), help="comma list of " + ",".join(ALL_SCENARIOS))
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 round (~3 min for all built-ins)")
    ap.add_argument("--reps", type=int, help="rounds for throughput/latency scenarios")
    ap.add_argument("--mem-reps", type=int, help="rounds for idle/slowreader")
    ap.add_argument("--bulk-bytes", help="bytes per bulk transfer, e.g. 2G")
    ap.add_argument("--slow-bytes", help="bytes for the slow-reader test, e.g. 1G")
    ap.add_argument("--slow-pause-ms", type=int)
    ap.add_argument("--idle-conns", type=int)
    ap.add_argument("--conn-duration", type=float)
    ap.add_argument("--conn-conc", help="comma list of concurrencies for the conn scenario")
    ap.add_argument("--rr-duration", type=float)
    ap.add_argument("--ref", default=None, help="reference proxy for the second ratio column (default haproxy)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    ap.add_argument("--tag", default=None, help="file name tag (default: timestamp)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--budget-min", type=float, help="stop starting new units after this many minutes")
    ap.add_argument("--keep", action="store_true", help="keep the temp run dir (configs, logs)")
    ap.add_argument("--list", action="store_true", help="print built-in proxy templates and exit")
    ap.add_argument("--report", metavar="JSON", help="re-render the markdown of a saved run and exit")
    args = ap.parse_args()

    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        m = saved["meta"]
        md = render_md(m, saved["summary"], m["proxies"], m["ref"], saved.get("raw"))
        if m.get("stopped_early"):
            md = md.replace("\n## Versions", "\n**Run stopped early: %s — tables are partial.**\n\n## Versions"
                            % m["stopped_early"], 1)
        out = os.path.splitext(args.report)[0] + ".md"
        with open(out, "w") as f:
            f.write(md)
        print(md)
        return 0

    if args.list:
        for n, s in BUILTIN.items():
            print("%-9s %s" % (n, s["cmd"] if s else "(no proxy)"))
        return 0

    prm = dict(PROFILES["quick" if args.quick else "full"])
    for a, k in (("reps", "reps"), ("mem_reps", "mem_reps"), ("slow_pause_ms", "slow_pause_ms"),
                 ("idle_conns", "idle_conns"), ("conn_duration", "conn_duration"), ("rr_duration", "rr_duration"),
                 ("budget_min", "budget_min")):
        if getattr(args, a) is not None:
            prm[k] = getattr(args, a)
    if args.bulk_bytes:
        prm["bulk_bytes"] = parse_size(args.bulk_bytes)
        prm["iperf_bytes"] = prm["bulk_bytes"]
    if args.slow_bytes:
        prm["slow_bytes"] = parse_size(args.slow_bytes)
    if args.conn_conc:
        prm["conn_conc"] = [int(x) for x in args.conn_conc.split(",")]

    specs = dict(BUILTIN)
    proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    for pc in args.proxy_cmd:
        name, _, tmpl = pc.partition("=")
        if not tmpl or ("{listen}" not in tmpl and "{listen_unix}" not in tmpl):
            ap.error("--proxy-cmd needs NAME=TEMPLATE with {listen} (or {listen_unix})")
        specs[name] = {"cmd": tmpl, "note": "user template"}
        if name not in proxies:
            proxies.append(name)
    for p in proxies:
        if p not in specs:
            ap.error("unknown proxy %r (use --proxy-cmd)" % p)
    if "direct" not in proxies:
        proxies.insert(0, "direct")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in ALL_SCENARIOS:
            ap.error("unknown scenario %r" % s)
    ref = args.ref or ("haproxy" if "haproxy" in proxies else next((p for p in proxies if p != "direct"), None))

    # file descriptor limits: raise soft to hard; the idle test needs 2 fds per
    # proxied connection in the proxy process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fdlimit = hard
    idle_cap = (fdlimit - 128) // 2
    idle_n = min(prm["idle_conns"], idle_cap)
    if idle_n < prm["idle_conns"]:
        log("RLIMIT_NOFILE hard limit %d: idle scenario capped at %d connections (proxy needs 2 fds each)"
            % (fdlimit, idle_n))
    limits = {"fdlimit": fdlimit, "maxconn": max(100, (fdlimit - 128) // 2)}

    random.seed(args.seed)
    rundir = tempfile.mkdtemp(prefix="proxybench-")
    t_start = time.time()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    log("run dir", rundir)
    bins = compile_helpers(os.path.join(rundir, "bin"))

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)

    ctx = Ctx()
    ctx.prm, ctx.bins, ctx.idle_n = prm, bins, idle_n
    ctx.backend = Backend(bins["pb_backend"], rundir)
    ctx.iperf_backend_cpu = _NullCPU()
    iperf = IperfServer(rundir) if "iperf" in scenarios else None

    meta = collect_meta(proxies, specs, args)
    meta.update(mode="quick" if args.quick else "full", started=started, params=prm, idle_n=idle_n, fd_limit=fdlimit,
                proxies=proxies, scenarios=scenarios, ref=ref,
                notes={p: (specs[p] or {}).get("note", "") for p in proxies}, commands={})

    units = scenario_units(scenarios)
    raw = {}
    budget_s = prm["budget_min"] * 60
    stopped_early = None
    try:
        for rnd in range(max(prm["reps"], prm["mem_reps"])):
            order = proxies[rnd % len(proxies):] + proxies[:rnd % len(proxies)]
            for sc, fn in units:
                if sc in MEM_SCENARIOS and rnd >= prm["mem_reps"]:
                    continue
                if sc not in MEM_SCENARIOS and rnd >= prm["reps"]:
                    continue
                for px_name in order:
                    if time.time() - t_start > budget_s:
                        stopped_early = "time budget of %.0f min exhausted" % prm["budget_min"]
                        raise StopIteration
                    ctx.backend.ensure()
                    if sc == "iperf":
                        iperf.ensure()
                        bport = iperf.port
                    else:
                        bport = ctx.backend.port
                    px = ProxyInstance(px_name, specs[px_name], rundir, bport, ctx.backend.unix, limits)
                    if px.spec is not None:
                        meta["commands"][px_name] = px.cmd
                    t_u = time.time()
                    try:
                        err = px.ready(sanity=(sc != "iperf"))
                        if err:
                            results = {"_start": {"failed": "proxy did not start: " + err}}
                        else:
                            results = fn(px, ctx)
                            if not px.alive():
                                for r in results.values():
                                    r.setdefault("failed", "proxy exited during the test: " +
                                                 tail(px.logpath, 300).replace("\n", " | "))
                    finally:
                        px.stop()
                    for case, r in results.items():
                        if case == "_start":
                            # mark every case of this unit as failed
                            continue
                        raw.setdefault(sc, {}).setdefault(case, {}).setdefault(px_name, []).append((rnd, r))
                    if "_start" in results:
                        raw.setdefault(sc, {}).setdefault("(start)", {}).setdefault(px_name, []).append(
                            (rnd, results["_start"]))
                    brief = {c: (r.get("failed") or r.get(HEADLINE[sc][0])) for c, r in results.items()}
                    log("round %d %-10s %-9s %5.1fs %s" % (rnd + 1, sc, px_name, time.time() - t_u,
                                                            json.dumps(brief, default=str)[:200]))
    except StopIteration:
        log("stopping early:", stopped_early)
    except KeyboardInterrupt:
        stopped_early = "interrupted"
        log("interrupted; writing partial results")
    finally:
        for p in list(_children):
            kill_group(p, grace=2)
            _children.remove(p)

    # (start) pseudo-cases: fold into a dedicated scenario key for reporting
    for sc in list(raw):
        if "(start)" in raw[sc]:
            starts = raw[sc].pop("(start)")
            for case in list(raw[sc]) or ["all"]:
                for px_name, lst in starts.items():
                    raw[sc].setdefault(case, {}).setdefault(px_name, []).extend(lst)

    meta["duration_s"] = time.time() - t_start
    meta["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    meta["stopped_early"] = stopped_early
    summ = aggregate(raw, proxies, ref)
    md = render_md(meta, summ, proxies, ref, raw)
    if stopped_early:
        md = md.replace("\n## Versions", "\n**Run stopped early: %s — tables are partial.**\n\n## Versions"
                        % stopped_early, 1)
    os.makedirs(args.out, exist_ok=True)
    tag = args.tag or time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "-full")
    with open(os.path.join(args.out, tag + ".json"), "w") as f:
        json.dump({"meta": meta, "summary": summ,
                   "raw": {sc: {c: {p: lst for p, lst in d.items()} for c, d in cases.items()}
                           for sc, cases in raw.items()}}, f, indent=1, default=str)
    with open(os.path.join(args.out, tag + ".md"), "w") as f:
        f.write(md)
    print(md)
    log("wrote", os.path.join(args.out, tag + ".md"), "and .json; took %.1f min" % (meta["duration_s"] / 60))
    if not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
