#!/usr/bin/env python3
"""
Robustness figures of issue 12, items 1-3: what a peer's reset, a stalled side and a
descriptor spike do to sessions relayed by txsockproxy.

Not a test: it prints figures, before and after a change, for the same command.  Every
scenario starts its own proxy (twistd -n sockproxy --config FILE, the file written to a
temporary directory) in front of backends this script serves on 127.0.0.1, and stops it
afterwards.  One summary line per scenario run goes to stdout; progress to stderr.

  reset-up    N sessions (default 200).  The backend streams down and reads; the client
              streams up (payload 1 KiB-8 MiB, random) while reading, and resets
              (SO_LINGER 0 close) once it has sent a random 20-80 % of its payload and
              received a byte.  Figure: backends that saw a clean EOF (recv() returned
              b'') instead of a reset (ECONNRESET/EPIPE).  A correct relay gives 0.
  reset-down  The same with the roles swapped: the backend resets mid-transfer while the
              client streams up and reads.  Figure: clients that saw a clean EOF.
  paused      One backend that never reads; 21 clients send until their sessions stall
              (no progress for 1 s), then reset.  Figure: sessions still open 5 s and 30 s
              later, seen from the backend (poll() of its sockets reports no error, hang-up
              or FIN), and the proxy's descriptor count.  A correct relay gives 0 and 0.
  emfile      Two echo backends, disable-time = 10.  Once the proxy runs, its
              RLIMIT_NOFILE is lowered to its open descriptors + 51 (an odd number
              free, so that a backend socket() is what fails, not an accept(); see
              bench/README.md); 300 connections are opened at once, held 1.5 s and
              closed; then 115 probes over ~10 s (one echo each).  Figure: probes
              refused or failed while both backends were up (they are checked to
              answer directly at the end).

Usage (from the project's root, with the venv's Python):

    /work/venv/bin/python bench/robustness.py                           # all, default mode
    /work/venv/bin/python bench/robustness.py --scenarios reset-up,reset-down --mode splice,copy,off
    /work/venv/bin/python bench/robustness.py --tree /tmp/before --scenarios paused --mode off

--tree PATH runs the proxy from another checkout (default: the one holding this script):
PATH goes first on PYTHONPATH and the proxy's working directory is a temporary one, so
both the txsockproxy package and its twisted/plugins/ come from PATH; the proxy prints
the txsockproxy it imported, and the run stops if that is not under PATH.  --mode sets
TXSOCKPROXY_FASTPATH (splice, copy, off); "default" leaves it unset.

Linux only (/proc, SO_LINGER, poll's POLLRDHUP); needs psutil.  Only 127.0.0.1 is used;
only processes this script started are signalled.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import resource
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

try:
    import psutil  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover
    sys.exit("robustness.py needs psutil (pip install psutil)")

HOST = "127.0.0.1"
CHUNK = 64 * 1024
READY_TIMEOUT = 20.0
CONNECTING = 32
SCENARIOS = ("reset-up", "reset-down", "paused", "emfile")
MODES = ("default", "splice", "copy", "off")
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TREE = os.path.dirname(HERE)

# Imports txsockproxy from PYTHONPATH, says where from, then is twistd.
LAUNCHER = (
    "import sys, txsockproxy\n"
    "print('robustness: txsockproxy from', txsockproxy.__file__, flush=True)\n"
    "from twisted.scripts.twistd import run\n"
    "sys.argv[0] = 'twistd'\n"
    "run()\n"
)

CONFIG = """\
debug = {debug}
session-log = "off"
shutdown-timeout = 1

[[proxy]]
name = "bench"
listen = "tcp:0:interface={host}"
balance = "round-robin"
connect-timeout = 2
disable-time = {disable}
"""

BACKEND = """
[[proxy.backend]]
label = "b{n}"
endpoint = "tcp:host={host}:port={port}"
"""

LINGER0 = struct.pack("ii", 1, 0)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def reset(sock: socket.socket) -> None:
    """
    Close C{sock} with an RST (SO_LINGER on, timeout 0).
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    except OSError:
        pass
    sock.close()


def listener() -> socket.socket:
    """
    A listening socket on 127.0.0.1, port chosen by the kernel (never bind-close-reuse).
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    s.listen(4096)
    s.setblocking(False)
    return s


def tree_label(tree: str) -> str:
    """
    C{git describe --always --dirty} of C{tree}, or its path if that fails.
    """
    try:
        out = subprocess.run(
            ["git", "-C", tree, "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tree


# ---------------------------------------------------------------------------
# the proxy
# ---------------------------------------------------------------------------


class Proxy:
    """
    twistd -n sockproxy from C{tree}, its log read from stdout by a thread.
    """

    def __init__(self, tree: str, mode: str, config: str, python: str) -> None:
        self.workdir = tempfile.mkdtemp(prefix="robustness-")
        self.configPath = os.path.join(self.workdir, "sockproxy.toml")
        with open(self.configPath, "w") as f:
            f.write(config)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([tree] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.pop("TXSOCKPROXY_FASTPATH", None)
        if mode != "default":
            env["TXSOCKPROXY_FASTPATH"] = mode
        self.lines: collections.deque[str] = collections.deque(maxlen=5000)
        self.nlines = 0
        self.port = 0
        self.ps: Any = None
        self.module: Optional[str] = None
        self.listening = False
        self._logFile = open(os.path.join(self.workdir, "proxy.log"), "w")
        self.proc = subprocess.Popen(
            [python, "-c", LAUNCHER, "-n", "--pidfile=", "--logfile=-",
             "sockproxy", "--config", self.configPath],
            cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace", start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not (self.listening and self.port) and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        if not (self.listening and self.port):
            self.stop()
            raise RuntimeError("proxy did not start:\n" + self.tail())
        real = os.path.realpath(tree) + os.sep
        if not self.module or not os.path.realpath(self.module).startswith(real):
            self.stop()
            raise RuntimeError(f"proxy imported txsockproxy from {self.module}, not from {tree}")
        self.ps = psutil.Process(self.proc.pid)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self.nlines += 1
            self._logFile.write(line)
            if self.module is None and line.startswith("robustness: txsockproxy from "):
                self.module = line.split(" from ", 1)[1].strip()
            elif not self.port:
                m = re.search(r"starting on (\d+)", line)
                if m:
                    self.port = int(m.group(1))
            if "listening on" in line:
                self.listening = True
        self._logFile.close()

    def tail(self, n: int = 30) -> str:
        return "".join(list(self.lines)[-n:])

    def count(self, pattern: str) -> int:
        """
        Log lines (of the last 5000) matching the regular expression C{pattern}.
        """
        r = re.compile(pattern)
        return sum(1 for line in list(self.lines) if r.search(line))

    def fds(self) -> int:
        try:
            return int(self.ps.num_fds())
        except psutil.Error:
            return -1

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


def proxy_config(ports: list[int], disable: float = 1, debug: int = 0) -> str:
    text = CONFIG.format(host=HOST, disable=disable, debug=debug)
    for n, port in enumerate(ports, 1):
        text += BACKEND.format(n=n, host=HOST, port=port)
    return text


# ---------------------------------------------------------------------------
# 1. reset-up / reset-down
# ---------------------------------------------------------------------------


@dataclass
class Stream:
    """
    One socket of a streaming session.  Both ends send and read all the time; the
    resetter stops sending at C{cut} bytes and, once it has also received a byte,
    resets.  The watcher's outcome is how its connection ended.
    """

    sock: socket.socket
    resetter: bool
    cut: int = 0
    sent: int = 0
    recvd: int = 0
    outcome: Optional[str] = None
    writing: bool = True


def run_reset(proxy_start: Callable[[list[int]], Proxy], direction: str, n: int,
              timeout: float, rng: random.Random) -> dict[str, Any]:
    """
    C{direction} "up": clients reset, backends watch; "down": the reverse.
    """
    sel = selectors.DefaultSelector()
    ls = listener()
    proxy = proxy_start([ls.getsockname()[1]])
    data = memoryview(os.urandom(CHUNK))
    buf = bytearray(256 * 1024)
    streams: list[tuple[str, Stream]] = []

    started = False

    def add(sock: socket.socket, side: str) -> None:
        resetter = (side == "client") == (direction == "up")
        cut = int(rng.randint(1024, 8 << 20) * rng.uniform(0.2, 0.8)) if resetter else 0
        st = Stream(sock, resetter, max(cut, 1))
        streams.append((side, st))
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if started else 0)
        sel.register(sock, events, st)

    def finish(st: Stream, outcome: str, rst: bool = False) -> None:
        st.outcome = outcome
        try:
            sel.unregister(st.sock)
        except (KeyError, ValueError):
            pass
        if rst:
            reset(st.sock)
        else:
            st.sock.close()

    sel.register(ls, selectors.EVENT_READ, None)
    try:
        opened = 0
        accepted = 0
        concurrent = 0
        deadline = time.monotonic() + timeout
        # Connecting ends when every session reached the backend (the proxy connects
        # to it at once), or after a quarter of the deadline.
        connectDeadline = time.monotonic() + timeout / 4
        while time.monotonic() < deadline and (not started or any(st.outcome is None for _, st in streams)):
            # First all sessions are opened, at most CONNECTING at a time not yet at
            # the backend (a flood of connects overflows an accept queue of 50, the
            # old default, and the kernel then resets connections the proxy never
            # saw); then all of them stream at once.
            while opened < n and opened - accepted < CONNECTING:
                c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                c.setblocking(False)
                c.connect_ex((HOST, proxy.port))
                add(c, "client")
                opened += 1
            if not started and (accepted >= n or time.monotonic() > connectDeadline):
                started = True
                concurrent = accepted
                for _, st in streams:
                    if st.outcome is None:
                        sel.modify(st.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
            for key, mask in sel.select(0.1):
                st = key.data
                if st is None:
                    while True:
                        try:
                            b, _ = ls.accept()
                        except BlockingIOError:
                            break
                        b.setblocking(False)
                        accepted += 1
                        add(b, "backend")
                    continue
                if st.outcome is not None:
                    continue
                if mask & selectors.EVENT_READ:
                    try:
                        got = st.sock.recv_into(buf)
                    except BlockingIOError:
                        got = -1
                    except (ConnectionResetError, BrokenPipeError):
                        finish(st, "reset")
                        continue
                    except OSError as e:
                        finish(st, f"error {e.errno}")
                        continue
                    if got == 0:
                        finish(st, "eof")
                        continue
                    if got > 0:
                        st.recvd += got
                if mask & selectors.EVENT_WRITE and st.writing:
                    want = min(CHUNK, st.cut - st.sent) if st.resetter else CHUNK
                    try:
                        st.sent += st.sock.send(data[:want])
                    except BlockingIOError:
                        pass
                    except (ConnectionResetError, BrokenPipeError):
                        finish(st, "reset")
                        continue
                    except OSError as e:
                        finish(st, f"error {e.errno}")
                        continue
                    if st.resetter and st.sent >= st.cut:
                        st.writing = False
                        sel.modify(st.sock, selectors.EVENT_READ, st)
                if st.resetter and not st.writing and st.recvd > 0:
                    finish(st, "reset sent", rst=True)
    finally:
        for _, st in streams:
            if st.outcome is None:
                finish(st, "open")
        sel.close()
        ls.close()
        proxy.stop()
    watchers = [st for side, st in streams if not st.resetter]
    resetters = [st for side, st in streams if st.resetter]
    outcomes = collections.Counter(st.outcome for st in watchers)
    early = collections.Counter(st.outcome for st in resetters if st.outcome != "reset sent")
    watcherSide = "backends" if direction == "up" else "clients"
    other = {str(k): v for k, v in outcomes.items() if k not in ("eof", "reset", "open")}
    result: dict[str, Any] = {
        "sessions": n,
        "concurrent": concurrent,
        "watchers": len(watchers),
        "clean_eof": outcomes.get("eof", 0),
        "reset": outcomes.get("reset", 0),
        "open": outcomes.get("open", 0),
        "other": other,
        "resets_sent": sum(1 for st in resetters if st.outcome == "reset sent"),
        "resetter_other": dict(early),
        "bytes_up": sum(st.sent for side, st in streams if side == "client"),
    }
    figure = (
        f"{watcherSide} saw a clean EOF: {result['clean_eof']}/{len(watchers)}"
        f" (reset {result['reset']}, open {result['open']}"
        + "".join(f", {k} {v}" for k, v in other.items())
        + f"; resets sent {result['resets_sent']}/{n}, {concurrent} sessions streaming at once"
        + "".join(f", resetter {k} {v}" for k, v in early.items())
        + ")"
    )
    result["figure"] = figure
    return result


# ---------------------------------------------------------------------------
# 2. paused
# ---------------------------------------------------------------------------


def still_open(socks: list[socket.socket]) -> int:
    """
    How many of C{socks} have seen neither an error, a hang-up nor a FIN.
    """
    p = select.poll()
    for s in socks:
        p.register(s, select.POLLRDHUP)
    ended = {fd for fd, ev in p.poll(0) if ev & (select.POLLERR | select.POLLHUP | select.POLLRDHUP)}
    return sum(1 for s in socks if s.fileno() not in ended)


def run_paused(proxy_start: Callable[[list[int]], Proxy], n: int, checks: tuple[float, ...],
               fill_timeout: float) -> dict[str, Any]:
    ls = listener()
    proxy = proxy_start([ls.getsockname()[1]])
    backends: list[socket.socket] = []
    clients: list[socket.socket] = []
    data = memoryview(os.urandom(CHUNK))
    result: dict[str, Any] = {"sessions": n, "fds_idle": proxy.fds()}
    try:
        sel = selectors.DefaultSelector()
        sent = {}
        progress = {}
        for _ in range(n):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            c.connect_ex((HOST, proxy.port))
            clients.append(c)
            sent[c] = 0
            progress[c] = time.monotonic()
            sel.register(c, selectors.EVENT_WRITE)
        deadline = time.monotonic() + fill_timeout
        while time.monotonic() < deadline:
            while True:
                try:
                    b, _ = ls.accept()
                except BlockingIOError:
                    break
                backends.append(b)  # never read
            now = time.monotonic()
            if len(backends) >= n and all(sent[c] > 0 and now - progress[c] >= 1.0 for c in clients):
                break
            for key, _mask in sel.select(0.1):
                c = key.fileobj  # type: ignore[assignment]
                try:
                    got = c.send(data)
                except BlockingIOError:
                    continue
                except OSError:
                    sel.unregister(c)
                    continue
                sent[c] += got
                progress[c] = time.monotonic()
        sel.close()
        now = time.monotonic()
        result["stalled"] = sum(1 for c in clients if sent[c] > 0 and now - progress[c] >= 1.0)
        result["backends_connected"] = len(backends)
        result["mb_per_session"] = round(sum(sent.values()) / max(n, 1) / 1e6, 1)
        result["fds_filled"] = proxy.fds()
        for c in clients:
            reset(c)
        clients = []
        t0 = time.monotonic()
        for t in checks:
            time.sleep(max(0.0, t0 + t - time.monotonic()))
            result[f"open_{t:g}s"] = still_open(backends)
            result[f"fds_{t:g}s"] = proxy.fds()
    finally:
        for s in clients + backends:
            s.close()
        ls.close()
        proxy.stop()
    result["figure"] = (
        "sessions open after "
        + ", ".join(f"{t:g} s: {result[f'open_{t:g}s']}/{result['backends_connected']}" for t in checks)
        + f"; proxy fds idle {result['fds_idle']}, filled {result['fds_filled']}, "
        + ", ".join(f"{t:g} s {result[f'fds_{t:g}s']}" for t in checks)
        + f" (stalled {result['stalled']}/{n} at {result['mb_per_session']} MB each)"
    )
    return result


# ---------------------------------------------------------------------------
# 3. emfile
# ---------------------------------------------------------------------------


class EchoBackends:
    """
    Echo servers on 127.0.0.1 served by one selector thread.
    """

    def __init__(self, count: int) -> None:
        self.listeners = [listener() for _ in range(count)]
        self.ports = [s.getsockname()[1] for s in self.listeners]
        self.sel = selectors.DefaultSelector()
        for s in self.listeners:
            self.sel.register(s, selectors.EVENT_READ, "listen")
        self._stop = False
        self.accepted = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        pending: dict[socket.socket, bytes] = {}
        while not self._stop:
            for key, mask in self.sel.select(0.2):
                s: socket.socket = key.fileobj  # type: ignore[assignment]
                if key.data == "listen":
                    while True:
                        try:
                            c, _ = s.accept()
                        except OSError:
                            break
                        c.setblocking(False)
                        self.accepted += 1
                        self.sel.register(c, selectors.EVENT_READ, "conn")
                    continue
                try:
                    if mask & selectors.EVENT_READ:
                        got = s.recv(65536)
                        if not got:
                            raise ConnectionResetError
                        pending[s] = pending.get(s, b"") + got
                    if pending.get(s):
                        pending[s] = pending[s][s.send(pending[s]):]
                    writing = selectors.EVENT_WRITE if pending.get(s) else 0
                    self.sel.modify(s, selectors.EVENT_READ | writing, "conn")
                except BlockingIOError:
                    pass
                except OSError:
                    pending.pop(s, None)
                    self.sel.unregister(s)
                    s.close()
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()

    def stop(self) -> None:
        self._stop = True
        self.thread.join(5)


def echo_once(port: int, payload: bytes, timeout: float) -> str:
    """
    Connect, send C{payload}, expect it back: "ok" or why not.
    """
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(payload)
            got = b""
            end = time.monotonic() + timeout
            while len(got) < len(payload):
                s.settimeout(max(0.01, end - time.monotonic()))
                more = s.recv(4096)
                if not more:
                    return "closed"
                got += more
            return "ok" if got == payload else "wrong bytes"
    except ConnectionRefusedError:
        return "refused"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except TimeoutError:
        return "timeout"
    except OSError as e:
        return f"error {e.errno}"


def run_emfile(proxy_start: Callable[[list[int]], Proxy], spike: int, probes: int,
               span: float, headroom: int, hold: float) -> dict[str, Any]:
    echo = EchoBackends(2)
    proxy = proxy_start(echo.ports)
    spikeSocks: list[socket.socket] = []
    result: dict[str, Any] = {"spike": spike, "probes": probes}
    try:
        before = echo_once(proxy.port, b"hello\n", 3)
        if before != "ok":
            raise RuntimeError(f"proxy does not echo before the spike: {before}")
        fds = proxy.fds()
        limit = fds + headroom
        proxy.ps.rlimit(psutil.RLIMIT_NOFILE, (limit, limit))
        result["fds_before"] = fds
        result["rlimit"] = limit
        for _ in range(spike):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((HOST, proxy.port))
            spikeSocks.append(s)
        peak = 0
        end = time.monotonic() + hold
        while time.monotonic() < end:
            peak = max(peak, proxy.fds())
            time.sleep(0.05)
        result["fds_peak"] = peak
        for s in spikeSocks:
            s.close()
        spikeSocks = []
        outcomes: list[Optional[str]] = [None] * probes
        t0 = time.monotonic()

        started: list[float] = [0.0] * probes

        def probe(i: int) -> None:
            started[i] = time.monotonic() - t0
            outcomes[i] = echo_once(proxy.port, b"probe %d\n" % i, 3)

        threads = []
        for i in range(probes):
            time.sleep(max(0.0, t0 + i * span / probes - time.monotonic()))
            t = threading.Thread(target=probe, args=(i,), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(10)
        counts = collections.Counter(o or "no answer" for o in outcomes)
        result["failed"] = probes - counts.get("ok", 0)
        result["outcomes"] = dict(counts)
        result["failed_at"] = [round(started[i], 2) for i in range(probes) if outcomes[i] != "ok"]
        result["backends_direct"] = [echo_once(p, b"direct\n", 3) for p in echo.ports]
        result["log_all_down"] = proxy.count(r"all backends down")
        result["log_backend_failed"] = proxy.count(r"backend .*failed")
        result["log_out_of_resources"] = proxy.count(r"out of resources|lack of resources")
        result["log_closed_at_accept"] = proxy.count(r"EMFILE recovery: Closed socket")
    finally:
        for s in spikeSocks:
            s.close()
        proxy.stop()
        echo.stop()
    up = "both backends up" if result["backends_direct"] == ["ok", "ok"] else f"backends directly: {result['backends_direct']}"
    result["figure"] = (
        f"probes failed: {result['failed']}/{probes} ({up}; "
        + ", ".join(f"{k} {v}" for k, v in sorted(result["outcomes"].items()))
        + f"); fds {result['fds_before']} -> limit {result['rlimit']}, peak {result['fds_peak']}; "
        + (f"failed probes started {min(result['failed_at']):.1f}-{max(result['failed_at']):.1f} s after the spike; "
           if result["failed_at"] else "")
        + f"log lines: 'all backends down' {result['log_all_down']}, a backend's connect failed "
        f"{result['log_backend_failed']}, proxy out of resources {result['log_out_of_resources']}, "
        f"closed at accept (EMFILE recovery) {result['log_closed_at_accept']}"
    )
    return result


# ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all)")
    ap.add_argument("--mode", default="default",
                    help="TXSOCKPROXY_FASTPATH: splice, copy, off or default (unset); comma-separated for several")
    ap.add_argument("--tree", default=DEFAULT_TREE, help="checkout to run the proxy from (default: %(default)s)")
    ap.add_argument("--python", default=sys.executable,
                    help="Python with Twisted and psutil to run twistd with (default: this one)")
    ap.add_argument("--sessions", type=int, default=200, help="sessions for reset-up/reset-down (default 200)")
    ap.add_argument("--paused-sessions", type=int, default=21, help="sessions for paused (default 21)")
    ap.add_argument("--timeout", type=float, default=60.0, help="deadline of a reset-* run, seconds (default 60)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each scenario and mode (default 1)")
    ap.add_argument("--headroom", type=int, default=51,
                    help="emfile: descriptors left free under the lowered limit (default 51; see bench/README.md)")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--debug", type=int, default=0, help="the proxy's debug level (log in the temporary directory)")
    ap.add_argument("--json", metavar="FILE", help="also write every result as JSON")
    args = ap.parse_args()

    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}")
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}")
    tree = os.path.abspath(args.tree)
    if not os.path.isfile(os.path.join(tree, "twisted", "plugins", "sockproxy_plugin.py")):
        ap.error(f"{tree} has no twisted/plugins/sockproxy_plugin.py")
    label = tree_label(tree)
    # This process holds every client, backend and spike socket.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))

    results = []
    failures = 0
    for scenario in scenarios:
        for mode in modes:
            for run in range(args.repeat):
                rng = random.Random(args.seed * 1000 + run)
                say(f"robustness: {scenario} mode={mode} tree={tree} ({label}) run {run + 1}/{args.repeat}")

                def start(ports: list[int], mode: str = mode, disable: float = 10 if scenario == "emfile" else 1) -> Proxy:
                    return Proxy(tree, mode, proxy_config(ports, disable, args.debug), args.python)

                t0 = time.monotonic()
                try:
                    if scenario == "reset-up":
                        r = run_reset(start, "up", args.sessions, args.timeout, rng)
                    elif scenario == "reset-down":
                        r = run_reset(start, "down", args.sessions, args.timeout, rng)
                    elif scenario == "paused":
                        r = run_paused(start, args.paused_sessions, (5.0, 30.0), 30.0)
                    else:
                        r = run_emfile(start, spike=300, probes=115, span=10.0, headroom=args.headroom, hold=1.5)
                except (RuntimeError, OSError) as e:
                    failures += 1
                    r = {"figure": f"could not run: {e}".splitlines()[0], "error": str(e)}
                    say(str(e))
                r.update(scenario=scenario, mode=mode, tree=tree, commit=label,
                         seconds=round(time.monotonic() - t0, 1))
                results.append(r)
                print(f"{scenario:<10} mode={mode:<7} tree={tree} ({label})  {r['figure']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
