#!/usr/bin/env python3
"""
Upgrades under load (issue 16): how many connections a take-over refuses or resets.

Not a test: it prints figures.  It starts a proxy (twistd -n sockproxy --config FILE,
with takeover-socket set) in front of an echo backend that this script serves on
127.0.0.1, puts a steady load of short connections on it (--clients threads, each
looping connect, send 64 bytes, read them back, close), and --rounds times starts a
new process with --take-over, which takes the listening sockets over while the old one
drains (with --restart, for comparison: the old one gets SIGTERM and the new one starts
without --take-over).  In each round, --long sessions opened before the upgrade go on exchanging a
message every 50 ms through the old process for --hold seconds after it, then close.

Per round it prints the short connections made, refused (ECONNREFUSED), reset
(ECONNRESET, EPIPE, or an echo cut short) and otherwise failed, whether every long
session completed, how long the new process took from its start to "serving", how long
the old one took to exit after that, and which process served the short connections
(from each process's session log lines); then totals.

Usage (from the project's root, with the venv's Python):

    /work/venv/bin/python bench/takeover.py                         # 5 rounds, 4 clients
    /work/venv/bin/python bench/takeover.py --rounds 20 --clients 8 --workers 2

Only 127.0.0.1 and a temporary directory are used; only processes this script started
are signalled.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
PAYLOAD = b"x" * 64


class Echo:
    """
    An echo server on 127.0.0.1, one thread per connection.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        conn.settimeout(60)
        with conn:
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
            except OSError:
                return

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()


class Proxy:
    """
    One twistd process, its output read line by line on a thread.
    """

    def __init__(self, args: list[str], cwd: str) -> None:
        self.started = time.monotonic()
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile=-", "sockproxy", *args], cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.eof = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def waitFor(self, pattern: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    raise SystemExit(f"no line matching {pattern!r}; output:\n"
                                     + "\n".join(self.lines))
                self.cond.wait(left)

    def count(self, pattern: str) -> int:
        with self.cond:
            return sum(1 for line in self.lines if re.search(pattern, line))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class Load:
    """
    --clients threads of short connections, counting outcomes.
    """

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "refused": 0, "reset": 0, "other": 0}
        self.errors: list[str] = []
        self.running = True
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _one(self) -> str:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
                conn.sendall(PAYLOAD)
                got = b""
                while len(got) < len(PAYLOAD):
                    data = conn.recv(65536)
                    if not data:
                        return "reset"
                    got += data
                return "ok" if got == PAYLOAD else "other"
        except ConnectionRefusedError:
            return "refused"
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except OSError as e:
            with self.lock:
                self.errors.append(f"{errno.errorcode.get(e.errno or 0, '?')}: {e}")
            return "other"

    def _run(self) -> None:
        while self.running:
            outcome = self._one()
            with self.lock:
                self.counts[outcome] += 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)

    def stop(self) -> None:
        self.running = False
        for thread in self.threads:
            thread.join(15)


def longSession(port: int, hold: threading.Event, results: list[bool]) -> None:
    """
    A session opened now that exchanges a message every 50 ms until C{hold}
    is set, then closes; appends whether every message came back.
    """
    ok = False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            n = 0
            while True:
                message = f"{n:08d}".encode()
                conn.sendall(message)
                got = b""
                while len(got) < len(message):
                    data = conn.recv(64)
                    if not data:
                        raise ConnectionResetError("closed")
                    got += data
                if got != message:
                    raise ValueError(got)
                n += 1
                if hold.wait(0.05):
                    break
            ok = True
    except (OSError, ValueError):
        ok = False
    results.append(ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--long", type=int, default=3)
    parser.add_argument("--hold", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--new-workers", type=int, default=None,
                        help="the workers of the processes that take over (default: "
                        "--workers): the first upgrade changes the count")
    parser.add_argument("--restart", action="store_true",
                        help="for comparison: SIGTERM the old process, then start the new "
                        "one without --take-over (a plain restart)")
    args = parser.parse_args()
    echo = Echo()
    with tempfile.TemporaryDirectory(prefix="takeover-bench-") as tmp:
        config = os.path.join(tmp, "sockproxy.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(
                f'takeover-socket = "{tmp}/takeover.sock"\nshutdown-timeout = 30\n'
                f'session-log = "log"\nworkers = {args.workers}\n\n'
                '[[proxy]]\nname = "bench"\nlisten = ["tcp:0:interface=127.0.0.1"]\n\n'
                f'[[proxy.backend]]\nendpoint = "tcp:host=127.0.0.1:port={echo.port}"\n'
            )
        newConfig = config
        if args.new_workers is not None:
            newConfig = os.path.join(tmp, "new.toml")
            with open(config, encoding="utf-8") as f:
                text = f.read()
            with open(newConfig, "w", encoding="utf-8") as f:
                f.write(text.replace(f"workers = {args.workers}\n",
                                     f"workers = {args.new_workers}\n"))
        proxy = Proxy(["--config", config], tmp)
        line = proxy.waitFor(r"is bound to 127\.0\.0\.1:\d+")
        port = int(line.rsplit(":", 1)[1])
        proxy.waitFor(r"take-over: listening on")
        if args.restart:
            # A restart binds the port again: the same one, given.
            with open(config, encoding="utf-8") as f:
                text = f.read()
            with open(config, "w", encoding="utf-8") as f:
                f.write(text.replace("tcp:0:", f"tcp:{port}:"))
        load = Load(port, args.clients)
        time.sleep(0.5)
        totals = {"ok": 0, "refused": 0, "reset": 0, "other": 0}
        longFailed = 0
        print(f"{'round':>5} {'conns':>6} {'refused':>7} {'reset':>5} {'other':>5} "
              f"{'long ok':>7} {'to serve':>8} {'old exit':>8} {'old/new served':>15}")
        try:
            for n in range(1, args.rounds + 1):
                before = load.snapshot()
                hold = threading.Event()
                results: list[bool] = []
                sessions = [threading.Thread(target=longSession, args=(port, hold, results))
                            for _ in range(args.long)]
                for thread in sessions:
                    thread.start()
                time.sleep(0.3)
                old = proxy
                if args.restart:
                    old.process.terminate()
                    proxy = Proxy(["--config", config], tmp)
                    proxy.waitFor(r"take-over: listening on")
                else:
                    proxy = Proxy(["--config", newConfig, "--take-over"], tmp)
                    proxy.waitFor(r"take-over: serving")
                serving = time.monotonic()
                toServe = serving - proxy.started
                time.sleep(args.hold)
                hold.set()
                for thread in sessions:
                    thread.join(15)
                try:
                    old.process.wait(30)
                except subprocess.TimeoutExpired:
                    old.stop()
                oldExit = time.monotonic() - serving
                time.sleep(0.3)
                after = load.snapshot()
                delta = {k: after[k] - before[k] for k in after}
                for k in totals:
                    totals[k] += delta[k]
                okLong = sum(results)
                longFailed += args.long - okLong
                served = f"{old.count('bytes_up=')}/{proxy.count('bytes_up=')}"
                print(f"{n:>5} {sum(delta.values()):>6} {delta['refused']:>7} "
                      f"{delta['reset']:>5} {delta['other']:>5} {okLong:>4}/{args.long:<2} "
                      f"{toServe:>7.2f}s {oldExit:>7.2f}s {served:>15}", flush=True)
        finally:
            load.stop()
            proxy.stop()
            echo.stop()
        print(f"total: {sum(totals.values())} connections, {totals['refused']} refused, "
              f"{totals['reset']} reset, {totals['other']} other; long sessions failed: "
              f"{longFailed} of {args.rounds * args.long}")
        for error in load.errors[:5]:
            print(f"  error: {error}")


if __name__ == "__main__":
    main()
