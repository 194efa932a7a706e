#!/usr/bin/env python3
"""
Figures of the protection keys (issue 15): what a flood from one client address, a burst
into the proxy's queue and a proxy out of descriptors do.

Not a test: it prints figures.  Every scenario starts its own proxy (twistd -n sockproxy
--config FILE, the file written to a temporary directory) in front of an echo backend
this script serves on 127.0.0.1 (one thread, selectors), and stops it afterwards.  One
summary line per scenario to stdout; progress to stderr.

  flood   client-max-connections = 10.  A steady client on 127.0.0.1 opens a session
          every 20 ms (connect, 16 bytes echoed, close) for --steady-before seconds
          (default 3), then on while a flood of --flood connections (default 2000) from
          127.0.0.2 arrives, --flood-rate per second (1000; 0: as fast as it can),
          up to 200 connecting at once; a flood connection that is
          served (its byte echoed) stays open until the flood is over, one that is
          closed without an echo is counted refused.  Figures: the steady client's
          connect+echo latency p50/p99 before and during the flood, its failures, the
          flood's served/refused counts, its duration, and the proxy's CPU during it.
  queue   max-connections = 20, max-queue = 100, queue-timeout = 2.  --clients (200)
          clients connect one after the other as fast as they can, each sending its
          4-byte number at once; a served client (its number echoed) holds its session
          --hold seconds (0.5) and closes.  Figures: served, refused at once (queue
          full), closed after waiting (queue timeout), as the clients saw them and as
          status.json counts them; whether the backend saw the served clients in their
          connect order (pairs out of order); the wait of served clients p50/max.
  emfile  Once the proxy holds 4 sessions, its RLIMIT_NOFILE (soft) is lowered to the
          descriptors it holds; 4 threads knock continuously (connect, close; each
          connect waits at most 0.2 s) for --knock seconds (5).  Figures: the proxy's
          CPU (% of one core) over those seconds, the knocks that connected, and
          whether a client is served again once the 4 sessions end (descriptors free).

Usage (from the project's root, with the venv's Python):

    /work/venv/bin/python bench/protection.py                         # all three
    /work/venv/bin/python bench/protection.py --scenarios emfile --tree /tmp/before-gate

--tree PATH runs the proxy from another checkout, as bench/robustness.py does: PATH goes
first on PYTHONPATH, the proxy's working directory is a temporary one, and the run stops
if the proxy did not import txsockproxy from PATH.

Linux only; needs psutil.  Only 127.0.0.1 and 127.0.0.2 are used; only processes this
script started are signalled.  Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Optional

try:
    import psutil
except ImportError:  # pragma: no cover
    sys.exit("protection.py needs psutil (pip install psutil)")

HOST = "127.0.0.1"
OTHER = "127.0.0.2"
READY_TIMEOUT = 20.0
SCENARIOS = ("flood", "queue", "emfile")
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TREE = os.path.dirname(HERE)

LAUNCHER = (
    "import sys, txsockproxy\n"
    "print('protection: txsockproxy from', txsockproxy.__file__, flush=True)\n"
    "from twisted.scripts.twistd import run\n"
    "sys.argv[0] = 'twistd'\n"
    "run()\n"
)

CONFIG = """\
debug = 0
session-log = "off"
shutdown-timeout = 1

[status]
listen = "tcp:0:interface={host}"

[[proxy]]
name = "bench"
listen = "tcp:0:interface={host}"
{keys}

[[proxy.backend]]
endpoint = "tcp:host={host}:port={port}"
"""

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tree_label(tree: str) -> str:
    try:
        out = subprocess.run(["git", "-C", tree, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tree


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------------------
# the echo backend
# ---------------------------------------------------------------------------


class EchoBackend:
    """
    An echo server on 127.0.0.1, one thread with a selector; it records the
    first 4 bytes of each connection (a client's number) in arrival order.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((HOST, 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.firsts: list[bytes] = []
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, None)
        heads: dict[socket.socket, bytes] = {}
        while not self._stop.is_set():
            for key, _ in sel.select(0.1):
                if key.data is None:
                    try:
                        conn, _ = self.sock.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    self.accepted += 1
                    heads[conn] = b""
                    sel.register(conn, selectors.EVENT_READ, 1)
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(conn)
                    heads.pop(conn, None)
                    conn.close()
                    continue
                head = heads.get(conn)
                if head is not None and len(head) < 4:
                    head += data[: 4 - len(head)]
                    heads[conn] = head
                    if len(head) == 4:
                        self.firsts.append(head)
                try:
                    conn.sendall(data)  # small echoes: the buffer takes them
                except OSError:
                    pass
        for conn in heads:
            conn.close()
        sel.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


# ---------------------------------------------------------------------------
# the proxy
# ---------------------------------------------------------------------------


class Proxy:
    """
    twistd -n sockproxy from C{tree}, its log read from stdout by a thread.
    """

    def __init__(self, tree: str, config: str, python: str) -> None:
        self.workdir = tempfile.mkdtemp(prefix="protection-")
        path = os.path.join(self.workdir, "sockproxy.toml")
        with open(path, "w") as f:
            f.write(config)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [tree] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.lines: collections.deque[str] = collections.deque(maxlen=20000)
        self.ports: list[int] = []
        self.port = self.statusPort = 0
        self.ps: Any = None
        self.module: Optional[str] = None
        self.listening = False
        self.proc = subprocess.Popen(
            [python, "-c", LAUNCHER, "-n", "--pidfile=", "--logfile=-",
             "sockproxy", "--config", path],
            cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not (self.listening and len(self.ports) >= 2) and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        if not (self.listening and len(self.ports) >= 2):
            self.stop()
            raise RuntimeError("proxy did not start:\n" + "".join(list(self.lines)[-30:]))
        real = os.path.realpath(tree) + os.sep
        if not self.module or not os.path.realpath(self.module).startswith(real):
            self.stop()
            raise RuntimeError(f"proxy imported txsockproxy from {self.module}, not {tree}")
        self.port, self.statusPort = self.ports[0], self.ports[1]
        self.ps = psutil.Process(self.proc.pid)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if self.module is None and line.startswith("protection: txsockproxy from "):
                self.module = line.split(" from ", 1)[1].strip()
            m = re.search(r" is bound to 127\.0\.0\.1:(\d+)", line)
            if m:
                self.ports.append(int(m.group(1)))
            if "listening on" in line:
                self.listening = True

    def count(self, text: str) -> int:
        return sum(1 for line in list(self.lines) if text in line)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def status(self) -> dict[str, Any]:
        with _opener.open(f"http://{HOST}:{self.statusPort}/status.json", timeout=5) as r:
            return dict(json.load(r)["proxies"][0])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


def start(args: argparse.Namespace, keys: str) -> tuple[EchoBackend, Proxy]:
    backend = EchoBackend()
    try:
        proxy = Proxy(args.tree, CONFIG.format(host=HOST, port=backend.port, keys=keys),
                      args.python)
    except BaseException:
        backend.stop()
        raise
    return backend, proxy


def echo_once(port: int, payload: bytes, timeout: float = 5.0) -> Optional[float]:
    """
    Connect from 127.0.0.1, send C{payload}, read its echo, close: the
    seconds it took, or L{None} if it failed.
    """
    started = time.perf_counter()
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as conn:
            conn.sendall(payload)
            got = b""
            while len(got) < len(payload):
                data = conn.recv(65536)
                if not data:
                    return None
                got += data
    except OSError:
        return None
    return time.perf_counter() - started


# ---------------------------------------------------------------------------
# flood
# ---------------------------------------------------------------------------


class Steady(threading.Thread):
    """
    One session every C{interval} seconds from 127.0.0.1, its latency kept
    with the phase it started in.
    """

    def __init__(self, port: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.phase = "before"
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.failed: collections.Counter[str] = collections.Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 300
        nxt = time.monotonic()
        while not self.stopping.is_set() and time.monotonic() < deadline:
            phase = self.phase
            took = echo_once(self.port, b"steady-client-16")
            if took is None:
                self.failed[phase] += 1
            else:
                self.latency[phase].append(took)
            nxt += self.interval
            self.stopping.wait(max(0.0, nxt - time.monotonic()))


def flood(
    port: int, total: int, rate: float, inflight: int = 200, limit: float = 60.0
) -> dict[str, Any]:
    """
    C{total} connections from 127.0.0.2, at most C{inflight} unresolved at
    once, opened at C{rate} per second (0: as fast as they can); served
    ones are held until the end.
    """
    sel = selectors.DefaultSelector()
    started = opened = served = refused = errors = 0
    held: list[socket.socket] = []
    pending = 0
    t0 = time.monotonic()
    deadline = t0 + limit
    while (opened < total or pending) and time.monotonic() < deadline:
        while opened < total and pending < inflight and (
            not rate or opened < (time.monotonic() - t0) * rate
        ):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.bind((OTHER, 0))
            opened += 1
            try:
                s.connect((HOST, port))
            except BlockingIOError:
                pass
            except OSError:
                errors += 1
                s.close()
                continue
            sel.register(s, selectors.EVENT_WRITE, "connecting")
            pending += 1
        for key, _ in sel.select(0.001 if rate else 0.5):
            s = key.fileobj  # type: ignore[assignment]
            if key.data == "connecting":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    sel.unregister(s)
                    s.close()
                    # Reset by the proxy before the connect was seen done.
                    if err == errno.ECONNRESET:
                        refused += 1
                    else:
                        errors += 1
                    pending -= 1
                    continue
                try:
                    s.send(b"f")
                except OSError:
                    pass
                sel.modify(s, selectors.EVENT_READ, "waiting")
                continue
            try:
                data = s.recv(16)
            except OSError:
                data = b""
            sel.unregister(s)
            pending -= 1
            if data:
                served += 1
                held.append(s)
            else:
                refused += 1
                s.close()
    duration = time.monotonic() - t0
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    for s in held:
        s.close()
    started = opened
    return {"opened": started, "served": served, "refused": refused, "errors": errors,
            "unresolved": pending, "seconds": duration}


def run_flood(args: argparse.Namespace) -> str:
    backend, proxy = start(args, "client-max-connections = 10")
    try:
        steady = Steady(proxy.port)
        steady.start()
        time.sleep(args.steady_before)
        steady.phase = "during"
        cpu0, t0 = proxy.cpu(), time.monotonic()
        result = flood(proxy.port, args.flood, args.flood_rate)
        cpu = (proxy.cpu() - cpu0) / (time.monotonic() - t0)
        steady.phase = "after"
        time.sleep(1.0)
        steady.stopping.set()
        steady.join(10)
        status = proxy.status()
    finally:
        proxy.stop()
        backend.stop()

    def lat(phase: str) -> str:
        values = steady.latency[phase]
        return (f"{phase}: n={len(values)} p50={percentile(values, 0.5) * 1e3:.2f} ms "
                f"p99={percentile(values, 0.99) * 1e3:.2f} ms failed={steady.failed[phase]}")

    return (
        f"flood [{tree_label(args.tree)}]: {result['opened']} connections from {OTHER} in "
        f"{result['seconds']:.2f} s ({result['opened'] / result['seconds']:.0f}/s): "
        f"served {result['served']}, refused {result['refused']}, other errors "
        f"{result['errors']}, unresolved {result['unresolved']}; status client_limited="
        f"{status['client_limited']}; proxy CPU during the flood {cpu * 100:.0f} %; steady "
        f"client {lat('before')}; {lat('during')}; {lat('after')}"
    )


# ---------------------------------------------------------------------------
# queue
# ---------------------------------------------------------------------------


def run_queue(args: argparse.Namespace) -> str:
    backend, proxy = start(args, "max-connections = 20\nmax-queue = 100\nqueue-timeout = 2")
    n = args.clients
    sel = selectors.DefaultSelector()
    sent: dict[int, float] = {}
    outcome: dict[int, tuple[str, float]] = {}
    closeAt: dict[int, float] = {}
    socks: dict[int, socket.socket] = {}
    try:
        for i in range(n):
            s = socket.create_connection((HOST, proxy.port), timeout=5)
            s.sendall(b"%04d" % i)
            sent[i] = time.monotonic()
            s.setblocking(False)
            socks[i] = s
            sel.register(s, selectors.EVENT_READ, i)
        deadline = time.monotonic() + 60
        while len(outcome) < n or closeAt:
            if time.monotonic() > deadline:
                break
            now = time.monotonic()
            for i in [i for i, t in closeAt.items() if t <= now]:
                socks[i].close()
                del closeAt[i]
            for key, _ in sel.select(0.02):
                i = key.data
                s = socks[i]
                try:
                    data = s.recv(16)
                except OSError:
                    data = b""
                sel.unregister(s)
                now = time.monotonic()
                if data:
                    outcome[i] = ("served", now - sent[i])
                    closeAt[i] = now + args.hold
                else:
                    outcome[i] = ("closed", now - sent[i])
                    s.close()
        time.sleep(0.3)
        status = proxy.status()
    finally:
        for s in socks.values():
            s.close()
        proxy.stop()
        backend.stop()
    served = [i for i in range(n) if outcome.get(i, ("",))[0] == "served"]
    closed = [(i, outcome[i][1]) for i in range(n) if outcome.get(i, ("",))[0] == "closed"]
    atOnce = [i for i, waited in closed if waited < 1.0]
    afterWait = [i for i, waited in closed if waited >= 1.0]
    order = [int(f) for f in backend.firsts]
    inversions = sum(1 for a, b in zip(order, order[1:], strict=False) if b < a)
    waits = [outcome[i][1] for i in served]
    queue = status["queue"]
    return (
        f"queue [{tree_label(args.tree)}]: {n} clients, hold {args.hold:g} s: served "
        f"{len(served)} (wait p50 {percentile(waits, 0.5):.2f} s, max {max(waits):.2f} s), "
        f"closed at once {len(atOnce)}, closed after waiting {len(afterWait)} "
        f"(waited {min((w for _, w in closed if w >= 1.0), default=0):.2f}-"
        f"{max((w for _, w in closed if w >= 1.0), default=0):.2f} s), no outcome "
        f"{n - len(outcome)}; status: queue full={queue['full']} timeouts={queue['timeouts']} "
        f"total queued={queue['total']} max waiting={queue['max_waiting']}; backend saw "
        f"{len(order)} clients, adjacent pairs out of connect order: {inversions}; served "
        f"clients = numbers 0-{max(served) if served else -1}, "
        f"{'contiguous' if served == list(range(len(served))) else 'NOT contiguous'}"
    )


# ---------------------------------------------------------------------------
# emfile
# ---------------------------------------------------------------------------


def run_emfile(args: argparse.Namespace) -> str:
    backend, proxy = start(args, "")
    held: list[socket.socket] = []
    try:
        for _ in range(4):
            s = socket.create_connection((HOST, proxy.port), timeout=5)
            s.sendall(b"held")
            s.recv(16)
            held.append(s)
        _, hard = proxy.ps.rlimit(psutil.RLIMIT_NOFILE)
        proxy.ps.rlimit(psutil.RLIMIT_NOFILE, (proxy.ps.num_fds(), hard))
        stop = threading.Event()
        knocks = [0, 0]

        def knock() -> None:
            end = time.monotonic() + args.knock + 30
            while not stop.is_set() and time.monotonic() < end and knocks[0] < 1_000_000:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(0.2)
                try:
                    s.connect((HOST, proxy.port))
                    knocks[0] += 1
                except OSError:
                    knocks[1] += 1
                finally:
                    s.close()

        threads = [threading.Thread(target=knock, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # let the first failure happen
        k0 = knocks[0]
        cpu0, t0 = proxy.cpu(), time.monotonic()
        time.sleep(args.knock)
        cpu = (proxy.cpu() - cpu0) / (time.monotonic() - t0)
        connected = knocks[0] - k0
        stop.set()
        for thread in threads:
            thread.join(5)
        failedLines = proxy.count("accepting failed")
        recovery = proxy.count("EMFILE recovery")
        for s in held:
            s.close()
        took = None
        t1 = time.monotonic()
        while time.monotonic() - t1 < 15:
            if echo_once(proxy.port, b"after", timeout=3) is not None:
                took = time.monotonic() - t1
                break
        proxy.ps.rlimit(psutil.RLIMIT_NOFILE, (min(hard, 65536), hard))
    finally:
        for s in held:
            s.close()
        proxy.stop()
        backend.stop()
    served = "never" if took is None else f"after {took:.2f} s"
    return (
        f"emfile [{tree_label(args.tree)}]: proxy CPU {cpu * 100:.1f} % of a core over "
        f"{args.knock:g} s of knocking at the descriptor limit; {connected} knocks "
        f"connected ({connected / args.knock:.0f}/s), {knocks[1]} timed out or failed; "
        f"'accepting failed' lines {failedLines}, 'EMFILE recovery' lines {recovery}; "
        f"a client served again {served} once 4 sessions ended"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--tree", default=DEFAULT_TREE)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--flood-rate", type=float, default=1000.0)
    parser.add_argument("--steady-before", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--hold", type=float, default=0.5)
    parser.add_argument("--knock", type=float, default=5.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    runners = {"flood": run_flood, "queue": run_queue, "emfile": run_emfile}
    status = 0
    for name in args.scenarios.split(","):
        if name not in runners:
            say(f"unknown scenario {name!r}: {', '.join(SCENARIOS)}")
            return 2
        say(f"running {name} with {args.tree}")
        try:
            print(runners[name](args), flush=True)
        except Exception as e:  # one line, and on to the next scenario
            print(f"{name}: failed: {e}", flush=True)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
