#!/usr/bin/env python3
"""
Single-connection relay throughput: txsockproxy against socat, haproxy and no proxy.

Sends SIZE bytes (default 1 GiB) through ONE TCP connection over 127.0.0.1, in each
direction:

  up    client (sender) -> proxy -> backend (sink)
  down  backend (sender) -> proxy -> client (sink)

through txsockproxy (twistd sockproxy), socat, haproxy (mode tcp, nbthread 1) and
"direct" (the client connects straight to the backend: the baseline).  Each proxy is
started fresh for every transfer and stopped afterwards.  Within a round the proxies are
interleaved (their order rotates every round); every figure in the table is a median
over the rounds.

Time = from the sender's first send() to the moment the sink has counted SIZE bytes
(CLOCK_MONOTONIC, which all processes share).  After that, the sender's half-close must
arrive at the sink as EOF with no extra bytes, and the sender must see the connection
close; otherwise the transfer counts as failed.  Sender and sink are separate Python
processes doing sendall() of a preallocated 256 KiB buffer / recv_into() a 256 KiB
bytearray.  The proxy's CPU time (user+system, its whole process tree) and peak RSS
(kernel high-water mark, VmHWM) are read with psutil and /proc.

Usage (from the project's root):

    /work/venv/bin/python bench/relay_throughput.py                 # 1 GiB, 3 rounds
    /work/venv/bin/python bench/relay_throughput.py --size 256M --rounds 5
    /work/venv/bin/python bench/relay_throughput.py --proxies direct,txsockproxy --json out.json

Linux only (uses /proc).  Only 127.0.0.1 is used; only processes this script started
are signalled.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

try:
    import psutil  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover
    sys.exit("relay_throughput.py needs psutil (pip install psutil)")

HOST = "127.0.0.1"
CHUNK = 256 * 1024
MiB = 1 << 20
ALL_PROXIES = ("direct", "txsockproxy", "socat", "haproxy")
DIRECTIONS = ("up", "down")
READY_TIMEOUT = 20.0  # s for a proxy to start listening
STOP_GRACE = 5.0  # s between SIGTERM and SIGKILL
SAMPLE_INTERVAL = 0.1  # s between RSS samples of the proxy tree


def _now() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# ---------------------------------------------------------------------------
# endpoints: run in their own processes (multiprocessing, spawn)
# ---------------------------------------------------------------------------


def _send(sock: socket.socket, size: int, deadline: float) -> dict[str, Any]:
    """
    Send C{size} bytes, half-close, then read until the peer closes.
    """
    buf = memoryview(bytes(CHUNK))
    cpu0 = time.process_time()
    t0 = _now()
    left = size
    while left > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"send: deadline passed with {left} bytes unsent")
        n = CHUNK if left >= CHUNK else left
        sock.sendall(buf[:n])
        left -= n
    t1 = _now()
    cpu1 = time.process_time()
    sock.shutdown(socket.SHUT_WR)
    # The peer closes once it has seen our EOF; anything it sends is unexpected.
    junk = 0
    closed = False
    scratch = bytearray(65536)
    while time.monotonic() < deadline:
        try:
            n = sock.recv_into(scratch)
        except ConnectionResetError:
            break
        if n == 0:
            closed = True
            break
        junk += n
    return {
        "role": "send", "t_first": t0, "t_last": t1, "bytes": size,
        "cpu": cpu1 - cpu0, "peer_closed": closed, "extra": junk,
    }


def _sink(sock: socket.socket, size: int, deadline: float) -> dict[str, Any]:
    """
    Count C{size} bytes, then wait for EOF (the sender's half-close).
    """
    ba = bytearray(CHUNK)
    got = 0
    t_first = None
    cpu0 = time.process_time()
    while got < size:
        if time.monotonic() > deadline:
            raise TimeoutError(f"sink: deadline passed after {got} of {size} bytes")
        n = sock.recv_into(ba)
        if n == 0:
            raise EOFError(f"sink: EOF after {got} of {size} bytes")
        if t_first is None:
            t_first = _now()
        got += n
    t_last = _now()
    cpu1 = time.process_time()
    extra = got - size
    eof = False
    while time.monotonic() < deadline:
        n = sock.recv_into(ba)
        if n == 0:
            eof = True
            break
        extra += n
    return {
        "role": "sink", "t_first": t_first, "t_last": t_last, "bytes": got - extra,
        "cpu": cpu1 - cpu0, "eof": eof, "extra": extra,
    }


def _run_role(sock: socket.socket, role: str, size: int, deadline: float) -> dict[str, Any]:
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    if role == "send":
        return _send(sock, size, deadline)
    return _sink(sock, size, deadline)


def backend_worker(pipe: Any, role: str, size: int, timeout: float) -> None:
    """
    Listen on 127.0.0.1:0, report the port, serve exactly one connection.
    """
    try:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.bind((HOST, 0))
        ls.listen(8)
        pipe.send(("port", ls.getsockname()[1]))
        deadline = time.monotonic() + timeout
        ls.settimeout(timeout)
        conn, _ = ls.accept()
        ls.close()
        with conn:
            result = _run_role(conn, role, size, deadline)
        pipe.send(("result", result))
    except BaseException as e:  # report everything, the parent decides
        pipe.send(("error", f"backend: {type(e).__name__}: {e}"))


def client_worker(pipe: Any, port: int, role: str, size: int, timeout: float) -> None:
    """
    Say "ready", wait for "go", then connect to 127.0.0.1:port and send or sink
    C{size} bytes.  (The handshake keeps this process's start-up out of the
    parent's CPU measurements.)
    """
    try:
        pipe.send(("ready", None))
        if not pipe.poll(60) or pipe.recv() != "go":
            raise TimeoutError("no go from the parent")
        deadline = time.monotonic() + timeout
        conn = socket.create_connection((HOST, port), timeout=10)
        with conn:
            result = _run_role(conn, role, size, deadline)
        pipe.send(("result", result))
    except BaseException as e:
        pipe.send(("error", f"client: {type(e).__name__}: {e}"))


# ---------------------------------------------------------------------------
# proxies
# ---------------------------------------------------------------------------

HAPROXY_CFG = """\
global
    nbthread 1
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend fe
    bind {host}:{listen}
    default_backend be
backend be
    server s1 {host}:{backend}
"""


def find_twistd() -> Optional[str]:
    here = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(here, os.X_OK):
        return here
    return shutil.which("twistd")


def free_port() -> int:
    """
    A port that was free a moment ago (bind port 0, read it, close).  There is a small
    race until the proxy binds it; a failed start is retried with another port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _listening(pid: int, port: int) -> bool:
    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
        for q in procs:
            conns = q.net_connections("tcp4") if hasattr(q, "net_connections") else q.connections("tcp4")
            for c in conns:
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
                    return True
    except psutil.Error:
        return False
    return False


@dataclass
class RunningProxy:
    name: str
    proc: subprocess.Popen[bytes]
    workdir: str
    log: str
    port: int

    def log_tail(self, n: int = 15) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """
        SIGTERM to the process group we created, SIGKILL after STOP_GRACE.
        """
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(STOP_GRACE)
        else:
            # the leader is gone; make sure nothing of its group is left (socat children)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)


def _proxy_command(name: str, port: int, bport: int, workdir: str, log: str, tools: dict[str, str]) -> list[str]:
    if name == "txsockproxy":
        return [
            tools["twistd"], "-n", "--pidfile=", f"--logfile={log}", "sockproxy",
            "--listen", f"tcp:{port}:interface={HOST}",
            "--backend", f"tcp:host={HOST}:port={bport}",
        ]
    if name == "socat":
        return [
            tools["socat"], f"TCP-LISTEN:{port},bind={HOST},reuseaddr,fork",
            f"TCP:{HOST}:{bport}",
        ]
    if name == "haproxy":
        cfg = os.path.join(workdir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(host=HOST, listen=port, backend=bport))
        return [tools["haproxy"], "-db", "-f", cfg]
    raise ValueError(name)


def start_proxy(name: str, bport: int, tools: dict[str, str]) -> RunningProxy:
    """
    Start C{name} relaying a fresh port to C{bport}; return once it listens.
    Readiness: txsockproxy's "listening on" log line; for the others, a LISTEN socket
    on the port owned by the process.  Polled under a deadline, no fixed sleeps.
    """
    errors = []
    for _attempt in range(3):
        port = free_port()
        workdir = tempfile.mkdtemp(prefix=f"relaybench-{name}-")
        log = os.path.join(workdir, "proxy.log")
        cmd = _proxy_command(name, port, bport, workdir, log, tools)
        # twistd writes its own log (--logfile); stdout/stderr catch the rest.
        out = open(os.path.join(workdir, "stdout.log"), "wb")
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        rp = RunningProxy(name, proc, workdir, log if name == "txsockproxy" else out.name, port)
        deadline = time.monotonic() + READY_TIMEOUT
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            if name == "txsockproxy":
                try:
                    with open(log, errors="replace") as f:
                        ready = "listening on" in f.read()
                except FileNotFoundError:
                    pass
            else:
                ready = _listening(proc.pid, port)
            if ready:
                break
            time.sleep(0.02)
        if ready:
            return rp
        state = f"exited {proc.returncode}" if proc.poll() is not None else f"not ready after {READY_TIMEOUT}s"
        errors.append(f"{name} on port {port}: {state}\n{rp.log_tail()}")
        rp.stop()
    raise RuntimeError("could not start proxy:\n" + "\n".join(errors))


# ---------------------------------------------------------------------------
# proxy CPU / memory
# ---------------------------------------------------------------------------


def _vm(pid: int) -> tuple[int, int]:
    """
    (VmRSS, VmHWM) of C{pid} in bytes, (0, 0) if gone.
    """
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return rss, hwm


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return [root]


def tree_cpu(root: psutil.Process) -> float:
    """
    User+system seconds of the tree, including children already reaped by the root.
    """
    total = 0.0
    for p in _tree(root):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _cpu_stat() -> list[int]:
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return []


def _busy_cores(a: list[int], b: list[int]) -> Optional[float]:
    """
    How many cores were busy (not idle or iowait), on average, between two
    /proc/stat readings.
    """
    if len(a) < 5 or len(a) != len(b):
        return None
    d = [y - x for x, y in zip(a, b, strict=True)]
    total = sum(d[:8])  # guest time is already counted in user
    if total <= 0:
        return None
    return (os.cpu_count() or 1) * (total - d[3] - d[4]) / total


def _tree_pids(root: psutil.Process) -> list[int]:
    """
    PIDs of C{root} and its descendants, from /proc/PID/task/TID/children (cheap:
    psutil's children() scans every process on the machine).
    """
    pids, todo = [], [root.pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except (OSError, ValueError):
                pass
    return pids


class MemSampler(threading.Thread):
    """
    Every SAMPLE_INTERVAL, record each tree process's VmHWM; the peak of the tree is
    the sum of the per-process high-water marks (exact for a single process; for
    socat's forked child it counts shared pages twice).
    """

    def __init__(self, root: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.hwm: dict[int, int] = {}
        self.stopped = threading.Event()

    def sample(self) -> None:
        for pid in _tree_pids(self.root):
            _, hwm = _vm(pid)
            if hwm > self.hwm.get(pid, 0):
                self.hwm[pid] = hwm

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_INTERVAL):
            self.sample()

    def finish(self) -> int:
        self.stopped.set()
        self.join(5)
        self.sample()
        return sum(self.hwm.values())


# ---------------------------------------------------------------------------
# one measurement
# ---------------------------------------------------------------------------


@dataclass
class Result:
    proxy: str
    direction: str
    round: int
    seconds: Optional[float] = None
    proxy_cpu: Optional[float] = None
    rss_start: Optional[int] = None  # VmRSS of the tree once ready, before the transfer
    hwm_start: Optional[int] = None  # its high-water mark at that moment
    rss_peak: Optional[int] = None  # sum of per-process VmHWM at the end of the transfer
    sender_cpu: Optional[float] = None
    sink_cpu: Optional[float] = None
    machine_busy: Optional[float] = None  # cores busy machine-wide (all processes)
    window: Optional[float] = None  # s over which machine_busy was measured ("go" to results)
    error: Optional[str] = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def other_load(self) -> Optional[float]:
        """
        Cores used by everything except proxy, sender and sink (approximate: the
        endpoints' CPU is counted over their own part of the transfer only).
        """
        if self.machine_busy is None or not self.window:
            return None
        ours = (self.proxy_cpu or 0.0) + (self.sender_cpu or 0.0) + (self.sink_cpu or 0.0)
        return max(0.0, self.machine_busy - ours / self.window)


def _wait_msg(pipe: Any, kinds: tuple[str, ...], deadline: float, what: str) -> Any:
    left = deadline - time.monotonic()
    if left <= 0 or not pipe.poll(left):
        raise TimeoutError(f"{what}: no answer before the deadline")
    kind, value = pipe.recv()
    if kind == "error":
        raise RuntimeError(value)
    if kind not in kinds:
        raise RuntimeError(f"{what}: unexpected message {kind!r}")
    return value


def _reap(proc: Optional[Any]) -> None:
    if proc is None:
        return
    proc.join(5)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def measure(
    ctx: Any, name: str, direction: str, size: int, timeout: float, rnd: int, tools: dict[str, str]
) -> Result:
    res = Result(name, direction, rnd)
    backend_role = "sink" if direction == "up" else "send"
    client_role = "send" if direction == "up" else "sink"
    backend = client = None
    proxy: Optional[RunningProxy] = None
    sampler: Optional[MemSampler] = None
    bpipe, bchild = ctx.Pipe(duplex=False)
    cpipe, cchild = ctx.Pipe(duplex=True)
    try:
        deadline = time.monotonic() + timeout + 30
        backend = ctx.Process(target=backend_worker, args=(bchild, backend_role, size, timeout + 20), daemon=True)
        backend.start()
        bchild.close()
        bport = _wait_msg(bpipe, ("port",), time.monotonic() + 30, "backend start")
        port = bport
        root = None
        if name != "direct":
            proxy = start_proxy(name, bport, tools)
            port = proxy.port
            root = psutil.Process(proxy.proc.pid)
        client = ctx.Process(target=client_worker, args=(cchild, port, client_role, size, timeout), daemon=True)
        client.start()
        cchild.close()
        _wait_msg(cpipe, ("ready",), time.monotonic() + 30, "client start")
        if root is not None:
            cpu0 = tree_cpu(root)
            res.rss_start = sum(_vm(p.pid)[0] for p in _tree(root))
            sampler = MemSampler(root)
            sampler.sample()
            res.hwm_start = sum(sampler.hwm.values())
            sampler.start()
        stat0, w0 = _cpu_stat(), time.monotonic()
        cpipe.send("go")
        r_client = _wait_msg(cpipe, ("result",), deadline, "client")
        r_backend = _wait_msg(bpipe, ("result",), deadline, "backend")
        res.machine_busy = _busy_cores(stat0, _cpu_stat())
        res.window = time.monotonic() - w0
        sender, sink = (r_client, r_backend) if direction == "up" else (r_backend, r_client)
        res.detail = {"sender": sender, "sink": sink}
        problems = []
        if sink["bytes"] != size:
            problems.append(f"sink counted {sink['bytes']} bytes, expected {size}")
        if sink["extra"]:
            problems.append(f"sink got {sink['extra']} bytes too many")
        if not sink["eof"]:
            problems.append("sink never saw EOF after the data (half-close not relayed)")
        if not sender["peer_closed"]:
            problems.append("sender never saw the connection close")
        if sender["extra"]:
            problems.append(f"sender received {sender['extra']} unexpected bytes")
        res.seconds = (sink["t_last"] - sender["t_first"]) / 1e9
        res.sender_cpu = sender["cpu"]
        res.sink_cpu = sink["cpu"]
        if root is not None and sampler is not None:
            res.rss_peak = sampler.finish()
            sampler = None
            # socat's per-connection child must exit (and be reaped) so that its CPU
            # time shows up in the parent's children_* counters; bounded wait.
            end = time.monotonic() + 5
            while time.monotonic() < end:
                try:
                    if not root.children(recursive=True):
                        break
                except psutil.Error:
                    break
                time.sleep(0.01)
            res.proxy_cpu = tree_cpu(root) - cpu0
            if proxy is not None and proxy.proc.poll() is not None:
                problems.append(f"proxy exited with {proxy.proc.returncode}")
        if problems:
            res.error = "; ".join(problems)
    except Exception as e:
        res.error = f"{type(e).__name__}: {e}"
        if proxy is not None:
            tail = proxy.log_tail(5).strip()
            if tail:
                res.error += "\n  proxy log tail:\n  " + tail.replace("\n", "\n  ")
    finally:
        if sampler is not None:
            sampler.finish()
        if proxy is not None:
            proxy.stop()
        for proc in (client, backend):
            _reap(proc)
        for p in (bpipe, cpipe):
            p.close()
    return res


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def parse_size(text: str) -> int:
    t = text.strip().upper().rstrip("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t)


def human_size(n: int) -> str:
    for unit, m in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m} {unit}"
    return f"{n} B"


def _med(values: list[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _ratios(results: list[Result], name: str, ref: str, direction: str) -> list[float]:
    """
    Per-round throughput ratio name/ref (= ref seconds / name seconds).
    """
    by = {(r.proxy, r.round): r for r in results if r.direction == direction and r.error is None}
    out = []
    for (p, rnd), r in by.items():
        if p == name and (ref, rnd) in by and r.seconds:
            out.append(by[(ref, rnd)].seconds / r.seconds)  # type: ignore[operator]
    return out


def render(results: list[Result], proxies: list[str], size: int) -> str:
    lines = []
    head = ["proxy", "dir", "seconds", "min–max s", "MB/s", "× direct", "× socat",
            "proxy CPU s", "proxy CPU %", "proxy RSS MiB", "RSS growth MiB", "snd/sink CPU %", "busy cores", "other cores", "ok"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|")
    for direction in DIRECTIONS:
        for name in proxies:
            rs = [r for r in results if r.proxy == name and r.direction == direction]
            ok = [r for r in rs if r.error is None]
            secs = [r.seconds for r in ok if r.seconds]
            sec = _med(secs)
            mbs = size / sec / 1e6 if sec else None
            vs_direct = _med(_ratios(results, name, "direct", direction)) if name != "direct" else 1.0
            vs_socat = _med(_ratios(results, name, "socat", direction)) if "socat" in proxies else None
            cpu = _med([r.proxy_cpu for r in ok if r.proxy_cpu is not None])
            cpupct = _med([100 * r.proxy_cpu / r.seconds for r in ok if r.proxy_cpu is not None and r.seconds])
            rss = _med([r.rss_peak / MiB for r in ok if r.rss_peak])
            grow = _med([(r.rss_peak - r.hwm_start) / MiB for r in ok
                         if r.rss_peak is not None and r.hwm_start is not None])
            snd = _med([100 * r.sender_cpu / r.seconds for r in ok if r.sender_cpu is not None and r.seconds])
            snk = _med([100 * r.sink_cpu / r.seconds for r in ok if r.sink_cpu is not None and r.seconds])
            busy = _med([r.machine_busy for r in ok if r.machine_busy is not None])
            other = _med([r.other_load for r in ok if r.other_load is not None])
            rng = f"{min(secs):.2f}–{max(secs):.2f}" if secs else "-"
            if secs and sec and (max(secs) - min(secs)) / sec > 0.10:
                rng += " ⚠"
            row = [
                name, direction, _fmt(sec, ".3f"), rng, _fmt(mbs, ".0f"),
                "-" if vs_direct is None else f"{vs_direct:.2f}",
                "-" if vs_socat is None else f"{vs_socat:.2f}",
                _fmt(cpu, ".2f"), _fmt(cpupct, ".0f"), _fmt(rss, ".1f"), _fmt(grow, ".2f"),
                f"{_fmt(snd, '.0f')}/{_fmt(snk, '.0f')}", _fmt(busy, ".2f"), _fmt(other, ".2f"),
                f"{len(ok)}/{len(rs)}",
            ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _version(cmd: list[str], match: str = "") -> str:
    """
    The first line of C{cmd}'s output (containing C{match}, if given).
    """
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = [ln.strip() for ln in (out.stdout or out.stderr).splitlines() if match in ln]
    return lines[0] if lines else "?"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="bytes per transfer, K/M/G = KiB/MiB/GiB (default 1G)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--proxies", default=",".join(ALL_PROXIES),
                    help="comma-separated subset of {}; direct is always added".format(",".join(ALL_PROXIES)))
    ap.add_argument("--directions", default="up,down", help="up, down or up,down (default)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds allowed per transfer (default 20 + size at 20 MB/s)")
    ap.add_argument("--json", metavar="FILE", help="also write every per-round result as JSON")
    args = ap.parse_args(argv)

    size = parse_size(args.size)
    if size <= 0 or args.rounds < 1:
        ap.error("--size and --rounds must be positive")
    timeout = args.timeout if args.timeout else 20 + size / 20e6
    directions = [d for d in args.directions.split(",") if d]
    if not directions or any(d not in DIRECTIONS for d in directions):
        ap.error("--directions: up and/or down")
    wanted = [p.strip() for p in args.proxies.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in ALL_PROXIES]
    if unknown:
        ap.error(f"unknown proxies {unknown}; known: {', '.join(ALL_PROXIES)}")

    tools: dict[str, str] = {}
    versions: dict[str, str] = {}
    proxies = ["direct"]
    # haproxy lives in /usr/sbin, which is not on every user's PATH
    sbin = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    for name in ALL_PROXIES[1:]:
        if name not in wanted:
            continue
        path = find_twistd() if name == "txsockproxy" else shutil.which(name, path=sbin)
        if not path:
            print(f"note: {name} not found, skipped", file=sys.stderr)
            continue
        tools["twistd" if name == "txsockproxy" else name] = path
        proxies.append(name)
    if "txsockproxy" in proxies:
        versions["txsockproxy"] = _version([sys.executable, "-c",
            "import os, subprocess, twisted, txsockproxy as t; "
            "d = os.path.dirname(os.path.abspath(t.__file__)); "
            "g = subprocess.run(['git', '-C', d, 'describe', '--always', '--dirty'], "
            "capture_output=True, text=True).stdout.strip(); "
            "print('txsockproxy', getattr(t, '__version__', '?'), 'from', d, "
            "'(git ' + g + ')' if g else '', '/ Twisted', twisted.__version__)"])
    if "socat" in proxies:
        versions["socat"] = _version([tools["socat"], "-V"], match="socat version")
    if "haproxy" in proxies:
        versions["haproxy"] = _version([tools["haproxy"], "-v"])

    ctx = mp.get_context("spawn")
    results: list[Result] = []
    started = time.monotonic()
    print(f"relay_throughput: {human_size(size)} per transfer, {args.rounds} round(s), "
          f"proxies {', '.join(proxies)}, directions {', '.join(directions)}, "
          f"timeout {timeout:.0f} s per transfer", file=sys.stderr)
    try:
        for rnd in range(args.rounds):
            order = proxies[rnd % len(proxies):] + proxies[:rnd % len(proxies)]
            dirs = directions if rnd % 2 == 0 else directions[::-1]
            for direction in dirs:
                for name in order:
                    r = measure(ctx, name, direction, size, timeout, rnd, tools)
                    results.append(r)
                    if r.error:
                        print(f"[round {rnd + 1}] {direction:4} {name:12} FAILED: {r.error}", file=sys.stderr)
                    else:
                        extra = ""
                        if r.proxy_cpu is not None:
                            extra = (f"  proxy cpu {r.proxy_cpu:.2f} s ({100 * r.proxy_cpu / r.seconds:.0f} %)"  # type: ignore[operator]
                                     f"  rss {r.rss_peak / MiB:.1f} MiB")  # type: ignore[operator]
                        print(f"[round {rnd + 1}] {direction:4} {name:12} {r.seconds:7.3f} s "
                              f"{size / r.seconds / 1e6:7.0f} MB/s{extra}", file=sys.stderr)  # type: ignore[operator]
    except KeyboardInterrupt:
        print("interrupted; reporting what was measured", file=sys.stderr)
    elapsed = time.monotonic() - started

    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    print(f"# relay throughput, one connection, {human_size(size)} per transfer, "
          f"median of {args.rounds} interleaved round(s)")
    print()
    print(f"machine: {os.cpu_count()} CPU ({cpu_model or platform.machine()}), "
          f"Linux {platform.release()}, Python {platform.python_version()}; run took {elapsed / 60:.1f} min")
    for name, v in versions.items():
        print(f"{name}: {v}")
    print()
    print(render(results, proxies, size))
    print()
    ncpu = os.cpu_count()
    for line in (
        "up = client → proxy → backend; down = backend → proxy → client",
        "seconds: sender's first byte → sink's last byte; MB/s = 10^6 B/s; "
        "⚠ = (max−min)/median > 10 %",
        "× direct, × socat: median of per-round throughput ratios (1.00 = as fast, < 1 = slower)",
        "proxy CPU: user+system of the proxy's process tree during the transfer; "
        "% of one core = CPU s / seconds",
        "proxy RSS: peak (VmHWM) of a proxy started fresh for the transfer; RSS growth: how much "
        "the transfer raised it (socat: parent + forked child, shared pages counted twice)",
        "snd/sink CPU %: the two endpoint processes; busy cores: machine-wide CPU in use during "
        f"the transfer (all processes, of {ncpu}); other cores: busy cores minus proxy, sender and "
        "sink (other work on the machine, plus this script's sampling); ok: transfers that passed the checks",
    ):
        print(f"- {line}")
    failed = [r for r in results if r.error]
    if failed:
        print()
        print("failures:")
        for r in failed:
            print(f"- round {r.round + 1} {r.direction} {r.proxy}: {r.error}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "size": size, "rounds": args.rounds, "proxies": proxies, "versions": versions,
                "results": [dict(r.__dict__, other_load=r.other_load) for r in results],
            }, f, indent=1)
        print(f"\nraw results: {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
