#!/usr/bin/env python3
"""
TLS termination and PROXY protocol figures of issue 14 ("At the edge"): txsockproxy
beside nginx (stream, ssl) and HAProxy (mode tcp, bind ... ssl), interleaved round by
round, in one run, on 127.0.0.1.

  bulk        one TLS connection (--bulk-conns) moves --bulk-bytes to a sink (up) or
              from a source (down) behind the proxy, which relays plaintext (the
              proxybench backend, pb_backend).  Figure: MB/s (10^6 B/s).
  handshakes  --conc connections at once, each in a loop for --duration seconds:
              connect, full TLS handshake (no session resumption), 1-byte echo, close.
              Figure: new sessions per second.
  send-proxy  plain TCP, the same loop without TLS, through txsockproxy with and without
              send-proxy = "v1" / "v2" on its backend (an echo backend that reads and
              skips the PROXY header first and counts the headers it saw).  Figure:
              connections per second, and the ratio to the same proxy without the key
              in the same round.  HAProxy (send-proxy, send-proxy-v2) and nginx
              (proxy_protocol on: v1 only) are measured the same way, for reference.
              A txsockproxy that refuses the key (--check fails) skips the scenario;
              without txsockproxy in --proxies it measures the references only.

Every txsockproxy runs twice: with its defaults (congestion control "auto") and with
client-congestion = "system" / congestion = "system" (the project reads both).

The load generator and the PROXY-aware backend are tls_load.c, compiled at start with
gcc (needs libssl-dev); the TLS certificate (RSA 2048, self-signed) is made with openssl.
The client offers TLS 1.3, TLS_AES_128_GCM_SHA256 and X25519 only, so every proxy
negotiates the same; the report shows what was negotiated with each.

Pinning (default, --no-pin to turn off): every proxy runs on CPU 1 (a single process /
worker / thread), the load generator and the backend on CPU 0.  The report gives the
CPU each used and the machine's other load during each measurement.

Usage (from the project's root, with the venv's Python):

    /work/venv/bin/python bench/tls.py                              # all, 3 rounds, ~5 min
    /work/venv/bin/python bench/tls.py --scenarios handshakes --rounds 5
    /work/venv/bin/python bench/tls.py --tree /tmp/other-checkout --scenarios send-proxy

--tree PATH runs txsockproxy from another checkout (as bench/robustness.py does).  Linux
only; needs psutil.  Only 127.0.0.1 is used; only processes this script started are
signalled.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "proxybench"))

import proxybench as pb  # noqa: E402
from robustness import DEFAULT_TREE, Proxy, tree_label  # noqa: E402

HOST = "127.0.0.1"
SCENARIOS = ("bulk", "handshakes", "send-proxy")
PROXIES = ("nginx", "haproxy", "txsockproxy", "txsockproxy-system")
PROXY_CPU = 1
GEN_CPU = 0

NGINX_CFG = """\
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{
    worker_connections 10000;
}}
stream {{
    server {{
        listen {host}:{listen}{ssl} backlog=1024;
{ssl_lines}        proxy_pass {host}:{backend};
        proxy_protocol {pp};
        proxy_connect_timeout 5s;
        proxy_timeout 1h;
    }}
}}
"""

NGINX_SSL = """\
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
"""

HAPROXY_CFG = """\
global
    maxconn 4000
    nbthread 1
    tune.ssl.cachesize 0
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    maxconn 4000
frontend fe
    bind {host}:{listen}{ssl}
    backlog 1024
    default_backend be
backend be
    server s1 {host}:{backend} maxconn 4000{pp}
"""

TXSP_CFG = """\
session-log = "off"
shutdown-timeout = 1

[[proxy]]
name = "bench"
listen = "{listen}"
{client_congestion}
[[proxy.backend]]
label = "b1"
endpoint = "tcp:host={host}:port={backend}"
{congestion}{send_proxy}"""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pin(cpu: Optional[int]) -> None:
    """
    Pin the calling thread (so the processes it starts next) to C{cpu}; L{None}: all.
    """
    if cpu is None or PIN_OFF:
        os.sched_setaffinity(0, ALL_CPUS)
    else:
        os.sched_setaffinity(0, {cpu})


PIN_OFF = False
ALL_CPUS = os.sched_getaffinity(0)


def busy_cores_since(start: tuple[float, float]) -> float:
    """
    Cores in use, machine-wide, since C{start} (a L{cpu_stat} reading).
    """
    now = cpu_stat()
    total = now[0] - start[0]
    return (now[1] - start[1]) / total * len(ALL_CPUS) if total > 0 else 0.0


def cpu_stat() -> tuple[float, float]:
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]), sum(fields[:8]) - idle


# ---------------------------------------------------------------------------
# set-up: helpers, certificate
# ---------------------------------------------------------------------------


class Setup:
    def __init__(self, keep: bool) -> None:
        self.dir = tempfile.mkdtemp(prefix="tlsbench-")
        self.keep = keep
        self.key = os.path.join(self.dir, "key.pem")
        self.cert = os.path.join(self.dir, "cert.pem")
        self.both = os.path.join(self.dir, "both.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key,
             "-out", self.cert, "-days", "2", "-subj", "/CN=localhost"],
            check=True, capture_output=True,
        )
        with open(self.both, "w") as out:
            for p in (self.cert, self.key):
                with open(p) as f:
                    out.write(f.read())
        self.load = os.path.join(self.dir, "tls_load")
        self.pbBackend = os.path.join(self.dir, "pb_backend")
        for src, dst, libs in (
            (os.path.join(HERE, "tls_load.c"), self.load, ["-lssl", "-lcrypto", "-lpthread"]),
            (os.path.join(HERE, "proxybench", "pb_backend.c"), self.pbBackend, []),
        ):
            r = subprocess.run(["gcc", "-O2", "-o", dst, src, *libs], capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"tls.py: gcc {src} failed (libssl-dev installed?):\n{r.stderr}")

    def cleanup(self) -> None:
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


class Backend:
    """
    pb_backend (sink/source/echo) or tls_load backend (PROXY-aware echo), on CPU 0.
    """

    def __init__(self, setup: Setup, kind: str) -> None:
        self.port = pb.free_port()
        cmd = [setup.pbBackend, str(self.port)] if kind == "pb" else [setup.load, "backend", str(self.port)]
        pin(GEN_CPU)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
        pb._children.append(self.proc)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "READY" not in line:
            raise RuntimeError(f"backend did not start: {cmd}")

    def cpu_s(self) -> float:
        return pb.proc_cpu_s(self.proc.pid)

    def stop(self) -> dict[str, Any]:
        """
        Stop it; the PROXY-aware backend's header counts (empty for pb_backend).
        """
        counts: dict[str, Any] = {}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=5)
            for line in out.splitlines():
                if line.startswith("{"):
                    counts = json.loads(line)
        except subprocess.TimeoutExpired:
            pb.kill_group(self.proc, grace=1)
        return counts


# ---------------------------------------------------------------------------
# the proxies
# ---------------------------------------------------------------------------


class Running:
    """
    A proxy under test: its port, CPU, and how to stop it.
    """

    def __init__(self, port: int, pid: int, stop: Callable[[], None], describe: str) -> None:
        self.port, self.pid, self._stop, self.describe = port, pid, stop, describe

    def cpu_s(self) -> float:
        return pb.Tree(self.pid).cpu_s()

    def stop(self) -> None:
        self._stop()


def start_external(name: str, setup: Setup, backend: int, tls: bool, pp: str) -> Running:
    """
    nginx or haproxy, in the foreground, own session, config in a fresh directory.
    C{pp}: "" (off), "v1" or "v2" (the PROXY header it sends to the backend).
    """
    workdir = tempfile.mkdtemp(prefix=name + "-", dir=setup.dir)
    port = pb.free_port()
    if name == "nginx":
        if pp == "v2":
            raise ValueError("nginx sends PROXY v1 only")
        text = NGINX_CFG.format(
            workdir=workdir, host=HOST, listen=port, backend=backend, ssl=" ssl" if tls else "",
            ssl_lines=NGINX_SSL.format(cert=setup.cert, key=setup.key) if tls else "",
            pp="on" if pp else "off",
        )
        path = os.path.join(workdir, "nginx.conf")
        cmd = ["nginx", "-e", os.path.join(workdir, "nginx-error.log"), "-p", workdir, "-c", path,
               "-g", "daemon off;"]
    else:
        text = HAPROXY_CFG.format(
            host=HOST, listen=port, backend=backend,
            ssl=f" ssl crt {setup.both} no-tls-tickets" if tls else "",
            pp={"": "", "v1": " send-proxy", "v2": " send-proxy-v2"}[pp],
        )
        path = os.path.join(workdir, "haproxy.cfg")
        cmd = ["haproxy", "-db", "-f", path]
    with open(path, "w") as f:
        f.write(text)
    log = open(os.path.join(workdir, "out.log"), "w")
    pin(PROXY_CPU)
    proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    pin(GEN_CPU)
    pb._children.append(proc)
    err = pb.wait_accepting((HOST, port), proc)
    if err:
        pb.kill_group(proc, grace=1)
        raise RuntimeError(f"{name} did not start ({err}): see {workdir}")
    return Running(port, proc.pid, lambda: pb.kill_group(proc), f"{name} ({workdir})")


def txsp_config(setup: Setup, backend: int, tls: bool, system: bool, pp: str) -> str:
    listen = (f"ssl:0:interface={HOST}:privateKey={setup.key}:certKey={setup.cert}" if tls
              else f"tcp:0:interface={HOST}")
    return TXSP_CFG.format(
        listen=listen, host=HOST, backend=backend,
        client_congestion='client-congestion = "system"\n' if system else "",
        congestion='congestion = "system"\n' if system else "",
        send_proxy=f'send-proxy = "{pp}"\n' if pp else "",
    )


def start_txsp(args: argparse.Namespace, setup: Setup, backend: int, tls: bool, system: bool,
               pp: str) -> Running:
    pin(PROXY_CPU)
    try:
        proxy = Proxy(args.tree, "default", txsp_config(setup, backend, tls, system, pp), args.python)
    finally:
        pin(GEN_CPU)
    return Running(proxy.port, proxy.proc.pid, proxy.stop, f"txsockproxy ({proxy.workdir})")


def check_send_proxy(args: argparse.Namespace, setup: Setup) -> Optional[str]:
    """
    None if the tree's txsockproxy accepts send-proxy = "v1" and "v2", else its error line.
    """
    for pp in ("v1", "v2"):
        path = os.path.join(setup.dir, f"check-{pp}.toml")
        with open(path, "w") as f:
            f.write(txsp_config(setup, 9, False, False, pp))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([args.tree] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        r = subprocess.run(
            [args.python, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0]='twistd'; run()",
             "sockproxy", "--config", path, "--check"],
            cwd=setup.dir, env=env, capture_output=True, text=True, timeout=60,
        )
        if r.returncode != 0:
            lines = [x for x in (r.stderr + r.stdout).splitlines() if x.strip()]
            return lines[-1] if lines else f"exit status {r.returncode}"
    return None


def start(args: argparse.Namespace, setup: Setup, proxy: str, backend: int, tls: bool, pp: str = "") -> Running:
    if proxy.startswith("txsockproxy"):
        return start_txsp(args, setup, backend, tls, proxy.endswith("-system"), pp)
    return start_external(proxy, setup, backend, tls, pp)


def tls_ready(port: int, timeout: float = 10.0) -> None:
    """
    One handshake and one echoed byte through the proxy (the backend echoes).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    last: Exception = RuntimeError("no attempt")
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
                s.sendall(b"x")
                if s.recv(1) == b"x":
                    return
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"no TLS echo through port {port}: {last}")


# ---------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------


def measure(cmd: list[str], running: Running, backend: Backend, timeout: float) -> dict[str, Any]:
    """
    Run the load generator (on CPU 0); add proxy/backend CPU and the machine's load.
    """
    pin(GEN_CPU)
    p0, b0, s0, t0 = running.cpu_s(), backend.cpu_s(), cpu_stat(), time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    busy = busy_cores_since(s0)
    res: dict[str, Any] = {}
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            res = json.loads(line)
    if not res:
        raise RuntimeError(f"load generator gave no result (status {r.returncode}): {r.stderr.strip()[-300:]}")
    res["proxy_cpu_s"] = running.cpu_s() - p0
    res["backend_cpu_s"] = backend.cpu_s() - b0
    res["wall_s"] = wall
    res["busy_cores"] = busy
    res["other_cores"] = max(0.0, busy - (res["proxy_cpu_s"] + res["backend_cpu_s"] + res.get("gen_cpu_s", 0)) / wall)
    return res


def unit(args: argparse.Namespace, setup: Setup, scenario: str, proxy: str, case: str) -> dict[str, Any]:
    """
    One measurement: fresh backend and proxy, measure, stop both.
    """
    if scenario == "send-proxy":
        backend = Backend(setup, "pp")
        pp = "" if case == "off" else case
    else:
        backend = Backend(setup, "pb")
        pp = ""
    running = None
    try:
        tls = scenario != "send-proxy"
        running = start(args, setup, proxy, backend.port, tls, pp)
        if tls:
            tls_ready(running.port)
        else:
            err = pb.echo_check((HOST, running.port))
            if err:
                raise RuntimeError(f"no echo through the proxy: {err}")
        if scenario == "bulk":
            cmd = [setup.load, case, str(running.port), str(args.bulk_bytes), str(args.bulk_conns)]
            res = measure(cmd, running, backend, timeout=20 + args.bulk_bytes / 20e6)
            res["figure"] = res["MBps"] if res["ok"] == res["conns"] else None
        else:
            cmd = [setup.load, "hs", str(running.port), str(args.conc), str(args.duration)]
            if scenario == "send-proxy":
                cmd.append("plain")
            res = measure(cmd, running, backend, timeout=args.duration + 30)
            errors = res["err_connect"] + res["err_tls"] + res["err_io"]
            res["figure"] = res["per_s"] if errors <= 0.01 * max(1, res["cycles"]) else None
    finally:
        if running is not None:
            running.stop()
        counts = backend.stop()
    if scenario == "send-proxy":
        res["headers"] = counts
        want = {"off": "none", "v1": "v1", "v2": "v2"}[case]
        seen = counts.get(want, 0)
        # the readiness echo adds one; every other connection must have brought the header
        res["headers_ok"] = counts.get("bad", 1) == 0 and seen >= res["cycles"] and sum(
            v for k, v in counts.items() if k not in (want, "bad")) == 0
        if not res["headers_ok"]:
            res["figure"] = None
    return res


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def med(xs: list[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x: Optional[float], nd: int = 0) -> str:
    if x is None:
        return "–"
    return f"{x:,.{nd}f}"


def per_cpu(r: dict[str, Any]) -> Optional[float]:
    """
    Work per second of proxy CPU (MB or sessions/connections), L{None} if it failed.
    """
    if not r.get("figure") or r.get("proxy_cpu_s", 0) <= 0:
        return None
    work = r["bytes"] / 1e6 if "bytes" in r else r["cycles"]
    return float(work / r["proxy_cpu_s"])


def ratios(results: dict, key: tuple, ref: tuple,
           value: Callable[[dict[str, Any]], Optional[float]] = lambda r: r.get("figure")) -> Optional[float]:
    """
    Median over rounds of this unit's value ÷ the reference unit's value, same round.
    """
    out = []
    for rnd in results["rounds"]:
        a, b = rnd.get(key), rnd.get(ref)
        va, vb = (value(a), value(b)) if a and b else (None, None)
        if va and vb:
            out.append(va / vb)
    return med(out)


def report(results: dict, args: argparse.Namespace) -> str:
    lines = [f"# TLS and PROXY protocol benchmark ({results['started']})", ""]
    lines.append(f"txsockproxy: {results['tree']} ({results['tree_label']}); {results['versions']}")
    lines.append(f"certificate: RSA 2048, self-signed; client: TLS 1.3, TLS_AES_128_GCM_SHA256, X25519; "
                 f"rounds {args.rounds}, order rotated; "
                 + ("proxies pinned to CPU 1, generator and backend to CPU 0" if not PIN_OFF else "no pinning")
                 + f"; machine load average at start {results['loadavg']}")
    lines.append("")
    units = results["units"]
    for scen in results["scenarios"]:
        if scen in results.get("skipped", {}):
            lines += [f"## {scen}", "", f"skipped: {results['skipped'][scen]}", ""]
            continue
        keys = [k for k in units if k[0] == scen]
        if not keys:
            continue
        unitname = {"bulk": "MB/s", "handshakes": "sessions/s", "send-proxy": "conn/s"}[scen]
        lines += [f"## {scen}", ""]
        if scen == "send-proxy":
            lines.append("| proxy | PROXY header | conn/s (median) | min–max | × same proxy without | "
                         "per CPU s × without | proxy CPU % | proxy CPU µs/conn | gen CPU % | other cores | "
                         "headers seen ok |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        else:
            lines.append(f"| case | proxy | {unitname} (median) | min–max | × nginx | × haproxy | "
                         f"per CPU s × nginx | proxy CPU % | proxy CPU {'s/GB' if scen == 'bulk' else 'µs/session'} | "
                         "gen CPU % | other cores | negotiated |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for key in keys:
            _, proxy, case = key
            rs = [rnd[key] for rnd in results["rounds"] if key in rnd]
            figs = [r.get("figure") for r in rs if r.get("figure")]
            m = med(figs)
            span = f"{fmt(min(figs))}–{fmt(max(figs))}" if figs else "–"
            cpu_pct = med([100 * r["proxy_cpu_s"] / r["seconds"] for r in rs if r.get("seconds")])
            gen_pct = med([100 * r["gen_cpu_s"] / r["seconds"] for r in rs if r.get("seconds")])
            other = med([r["other_cores"] for r in rs])
            if scen == "bulk":
                per = med([r["proxy_cpu_s"] / (r["bytes"] / 1e9) for r in rs if r.get("bytes")])
                perf = fmt(per, 2)
            else:
                per = med([1e6 * r["proxy_cpu_s"] / r["cycles"] for r in rs if r.get("cycles")])
                perf = fmt(per)
            if scen == "send-proxy":
                ok = all(r.get("headers_ok") for r in rs)
                ref = (scen, proxy, "off")
                x = "1" if case == "off" else fmt(ratios(results, key, ref), 3)
                xc = "1" if case == "off" else fmt(ratios(results, key, ref, per_cpu), 3)
                lines.append(f"| {proxy} | {case} | {fmt(m)} | {span} | {x} | {xc} | {fmt(cpu_pct)} | {perf} | "
                             f"{fmt(gen_pct)} | {fmt(other, 2)} | {'yes' if ok else 'NO'} |")
            else:
                tls = next((r.get("tls") for r in rs if r.get("tls")), None)
                neg = f"{tls['version']} {tls['cipher']} {tls['group']} {tls['signature']}" if tls else "?"
                xn = ratios(results, key, (scen, "nginx", case))
                xh = ratios(results, key, (scen, "haproxy", case))
                xc = ratios(results, key, (scen, "nginx", case), per_cpu)
                lines.append(f"| {case} | {proxy} | {fmt(m)} | {span} | {fmt(xn, 2)} | {fmt(xh, 2)} | {fmt(xc, 2)} | "
                             f"{fmt(cpu_pct)} | "
                             f"{perf} | {fmt(gen_pct)} | {fmt(other, 2)} | {neg} |")
        lines.append("")
    if results.get("failures"):
        lines += ["## failures", ""] + [f"- {f}" for f in results["failures"]] + [""]
    return "\n".join(lines)


def versions() -> str:
    out = []
    for cmd in (["nginx", "-v"], ["haproxy", "-v"], ["openssl", "version"]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            out.append((r.stdout + r.stderr).strip().splitlines()[0])
        except (OSError, IndexError, subprocess.SubprocessError):
            out.append(f"{cmd[0]}: not found")
    return "; ".join(out)


def loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def parse_size(s: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * mult[s[-1].upper()]) if s[-1].upper() in mult else int(s)


def main() -> int:
    global PIN_OFF
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--proxies", default=",".join(PROXIES),
                    help="nginx, haproxy, txsockproxy (defaults), txsockproxy-system (congestion = \"system\")")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bulk-bytes", type=parse_size, default=parse_size("512M"))
    ap.add_argument("--bulk-conns", type=int, default=1)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per handshake / connection-rate run")
    ap.add_argument("--conc", type=int, default=50)
    ap.add_argument("--tree", default=DEFAULT_TREE)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for TAG.md and TAG.json")
    ap.add_argument("--tag", default=datetime.date.today().isoformat() + "-tls")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    ap.add_argument("--report", metavar="FILE.json", help="only print the report of an earlier run's JSON")
    args = ap.parse_args()
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        saved["units"] = [tuple(u) for u in saved["units"]]
        saved["rounds"] = [{tuple(k.split("|")): v for k, v in r.items()} for r in saved["rounds"]]
        PIN_OFF = saved["args"].get("no_pin", False)
        print(report(saved, argparse.Namespace(**saved["args"])))
        return 0
    args.tree = os.path.abspath(args.tree)
    PIN_OFF = args.no_pin or len(ALL_CPUS) < 2
    scenarios = [s for s in args.scenarios.split(",") if s]
    proxies = [p for p in args.proxies.split(",") if p]
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}")
    for p in proxies:
        if p not in PROXIES:
            ap.error(f"unknown proxy {p!r}")
        if not p.startswith("txsockproxy") and not shutil.which(p):
            ap.error(f"{p} is not installed")

    setup = Setup(args.keep)
    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "tree": args.tree, "tree_label": tree_label(args.tree), "versions": versions(),
        "loadavg": loadavg(), "scenarios": scenarios,
        "skipped": {}, "failures": [], "rounds": [], "units": [],
    }
    plan: dict[str, list[tuple[str, str]]] = {}
    for scen in scenarios:
        if scen == "bulk":
            plan[scen] = [(p, d) for d in ("up", "down") for p in proxies]
        elif scen == "handshakes":
            plan[scen] = [(p, "new") for p in proxies]
        else:
            txsp = [p for p in proxies if p.startswith("txsockproxy")]
            refused = check_send_proxy(args, setup) if txsp else None
            if refused:
                msg = f"this txsockproxy refuses the send-proxy key ({refused})"
                say(f"send-proxy: skipped: {msg}")
                results["skipped"][scen] = msg
                continue
            plan[scen] = [(p, c) for p in proxies for c in ("off", "v1", "v2")
                          if not (p == "nginx" and c == "v2")]
    units: list[tuple[str, str, str]] = [(s, p, c) for s in plan for p, c in plan[s]]
    results["units"] = units
    say(f"tls.py: {len(units)} measurements per round, {args.rounds} rounds; work dir {setup.dir}")
    try:
        for rnd in range(args.rounds):
            here: dict[tuple, Any] = {}
            for scen in plan:
                order = plan[scen][rnd % len(plan[scen]):] + plan[scen][:rnd % len(plan[scen])]
                for proxy, case in order:
                    key = (scen, proxy, case)
                    try:
                        res = unit(args, setup, scen, proxy, case)
                    except Exception as e:  # one line, the run goes on
                        msg = f"round {rnd + 1} {scen} {proxy} {case}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                        say("FAILED " + msg)
                        results["failures"].append(msg)
                        continue
                    here[key] = res
                    say(f"round {rnd + 1} {scen:10} {proxy:18} {case:4} -> {fmt(res.get('figure'))} "
                        f"(proxy CPU {res['proxy_cpu_s']:.2f} s, gen {res.get('gen_cpu_s', 0):.2f} s, "
                        f"other cores {res['other_cores']:.2f})")
            results["rounds"].append(here)
    finally:
        pin(None)
        setup.cleanup()
    text = report(results, args)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, args.tag + ".md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, args.tag + ".json"), "w") as f:
        json.dump({**results, "units": [list(u) for u in units],
                   "rounds": [{"|".join(k): v for k, v in r.items()} for r in results["rounds"]],
                   "args": {k: v for k, v in vars(args).items()}}, f, indent=1)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
