"""
Integration tests of the take-over: C{twistd -n sockproxy} processes on
loopback, the new one started with C{--take-over} while a client thread
keeps connecting through the old one and long sessions are in flight.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import urllib.request
from typing import Any, Optional

from twisted.trial.unittest import TestCase

from tests.integration_support import (
    LOOPBACK,
    Deadline,
    Server,
    Twistd,
    boundPorts,
    echoHandler,
    recvExactly,
    refusedPort,
    tcpListen,
    tomlString,
)

PAYLOAD = b"p" * 64


def pidRuns(pid: int) -> bool:
    """
    Whether a process C{pid} exists.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def statusDocument(port: int) -> dict[str, Any]:
    """
    The status page's JSON document on loopback C{port}.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=10) as r:
        document: dict[str, Any] = json.load(r)
    return document


class ShortConnections:
    """
    A thread that makes short connections (connect, send, read the echo,
    close) one after the other until stopped, counting how each ended.
    """

    def __init__(self, port: int, seconds: float = 60.0) -> None:
        self.port = port
        self.deadline = Deadline(seconds, "the client load")
        self.counts = {"ok": 0, "refused": 0, "reset": 0, "other": 0}
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _one(self) -> str:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
                conn.sendall(PAYLOAD)
                got = b""
                while len(got) < len(PAYLOAD):
                    data = conn.recv(4096)
                    if not data:
                        return "reset"
                    got += data
                return "ok" if got == PAYLOAD else "other"
        except ConnectionRefusedError:
            return "refused"
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except OSError as e:
            self.errors.append(repr(e))
            return "other"

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.deadline.remaining()
            except TimeoutError:
                return
            outcome = self._one()
            with self.lock:
                self.counts[outcome] += 1

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def waitForMore(self, count: int, timeout: float = 10.0) -> None:
        """
        Wait until C{count} more connections have been made.
        """
        target = self.total() + count
        deadline = Deadline(timeout, f"{count} more client connections")
        while self.total() < target:
            self.stopping.wait(min(0.01, deadline.remaining()))

    def stop(self) -> dict[str, int]:
        self.stopping.set()
        self.thread.join(15)
        return dict(self.counts)


class LongSession:
    """
    A session opened now, exchanging a numbered message whenever asked.
    """

    def __init__(self, port: int) -> None:
        self.conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.n = 0
        self.exchange()

    def exchange(self) -> None:
        message = f"{self.n:08d}".encode()
        self.conn.sendall(message)
        assert recvExactly(self.conn, len(message), Deadline(10)) == message
        self.n += 1

    def close(self) -> None:
        self.conn.close()


class TakeoverIntegrationTests(TestCase):
    """
    C{twistd sockproxy --take-over} against a running C{twistd sockproxy}.
    """

    def setUp(self) -> None:
        # Short: unix socket paths have a limit of 108 bytes.
        self.tmp = tempfile.mkdtemp(prefix="takeover-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.backend = Server(echoHandler)
        self.addCleanup(self.backend.stop)
        self.pidfile = os.path.join(self.tmp, "twistd.pid")

    def writeConfig(self, listen: list[str], workers: int = 1, name: str = "s.toml",
                    status: bool = False) -> str:
        path = os.path.join(self.tmp, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                f"takeover-socket = {tomlString(os.path.join(self.tmp, 'takeover.sock'))}\n"
                f'shutdown-timeout = 20\nsession-log = "log"\nworkers = {workers}\n\n'
                + (f"[status]\nlisten = [{tomlString(LOOPBACK)}]\n\n" if status else "") +
                '[[proxy]]\nname = "t"\n'
                "listen = [" + ", ".join(tomlString(d) for d in listen) + "]\n\n"
                f"[[proxy.backend]]\nendpoint = {tomlString(self.backend.endpoint)}\n"
            )
        return path

    def twistd(self, config: str, *more: str, env: Optional[dict[str, str]] = None) -> Twistd:
        proxy = Twistd(["sockproxy", "--config", config, *more], cwd=self.tmp, env=env,
                       daemonArgs=("-n", f"--pidfile={self.pidfile}", "--logfile=-"))
        self.addCleanup(proxy.stop)
        return proxy

    def pidfileHolds(self) -> Optional[int]:
        try:
            with open(self.pidfile, encoding="ascii") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def upgradeUnderLoad(self, workers: int, newWorkers: Optional[int] = None,
                         resetsAllowed: int = 0) -> None:
        config = self.writeConfig([LOOPBACK], workers=workers)
        newConfig = config
        if newWorkers is not None:
            newConfig = self.writeConfig([LOOPBACK], workers=newWorkers, name="new.toml")
        # As systemd (Type=notify) would be told.
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(notify.close)
        notify.bind(os.path.join(self.tmp, "notify"))
        notify.settimeout(20)
        env = dict(os.environ, NOTIFY_SOCKET=os.path.join(self.tmp, "notify"))
        old = self.twistd(config, env=env)
        port = boundPorts(old, 1)[0]
        old.waitFor("take-over: listening on")
        oldWorkers = []
        if workers > 1:
            for line in old.waitFor(") serving", count=workers, timeout=20):
                oldWorkers.append(int(line.split("(pid ", 1)[1].split(")", 1)[0]))
        self.assertEqual(self.pidfileHolds(), old.pid)
        load = ShortConnections(port)
        self.addCleanup(load.stop)
        load.waitForMore(20)
        sessions = [LongSession(port) for _ in range(3)]
        for session in sessions:
            self.addCleanup(session.close)

        self.assertEqual(notify.recv(100), f"MAINPID={old.pid}\nREADY=1".encode())
        new = self.twistd(newConfig, "--take-over", env=env)
        new.waitFor("take-over: serving; pid", timeout=20)
        old.waitFor(f"take-over: pid {new.pid} serves: stopped accepting")
        # With workers, each has its own SO_REUSEPORT socket: all are handed.
        old.waitFor(f"handing over {workers} listening socket(s)")
        self.assertEqual(notify.recv(100), f"MAINPID={new.pid}\nREADY=1".encode())
        if (newWorkers or workers) > 1:
            new.waitFor(") serving", count=newWorkers or workers, timeout=20)
        load.waitForMore(50)
        # The old process still relays the sessions in flight, and waits
        # for them.
        for session in sessions:
            session.exchange()
        self.assertIsNone(old.process.poll())
        for session in sessions:
            session.exchange()
            session.close()
        self.assertEqual(old.waitForExit(timeout=20), 0)
        # No process of the old instance is left (its workers have ended).
        for pid in oldWorkers:
            self.assertFalse(pidRuns(pid), f"old worker {pid} still runs")
        # New connections go to the new process.
        served = len(new.matching("bytes_up="))
        load.waitForMore(20)
        counts = load.stop()
        self.assertEqual(counts["refused"], 0, counts)
        self.assertLessEqual(counts["reset"], resetsAllowed, counts)
        self.assertEqual(counts["other"], 0, (counts, load.errors))
        self.assertGreater(counts["ok"], 90)
        new.waitFor("bytes_up=", count=served + 20)
        # The long sessions ended in the old process, and it said so.
        self.assertEqual(len(old.matching("bytes_up=24 ")), 3, old.output)
        self.assertEqual(self.pidfileHolds(), new.pid)
        self.assertEqual(new.stop(), -signal.SIGTERM)
        self.assertIsNone(self.pidfileHolds())

    def test_upgradeUnderLoad(self) -> None:
        """
        A new process started with C{--take-over} serves the old one's
        listening socket while a client connects steadily: no connection is
        refused or reset; the old process relays its sessions in flight to
        their end, then exits (status 0); connections made after it are the
        new process's; the pidfile names the new process, which removes it
        when it stops.
        """
        self.upgradeUnderLoad(workers=1)

    def test_upgradeUnderLoadWithWorkers(self) -> None:
        """
        The same with C{workers = 2}: the old parent hands its sockets (the
        listener's two SO_REUSEPORT sockets) to the new one, which hands them
        to its workers; the old workers drain.
        """
        self.upgradeUnderLoad(workers=2)

    def test_upgradeToFewerWorkers(self) -> None:
        """
        From C{workers = 2} to one process: the old second worker's
        SO_REUSEPORT socket is closed by the new process (it would otherwise
        be given connections no one accepts): nothing is refused, no client
        waits in vain, the sessions in flight complete. A connection that
        waits in that socket at the moment the old worker lets it go is
        reset (at most the one the single client thread has in flight).
        """
        self.upgradeUnderLoad(workers=2, newWorkers=1, resetsAllowed=1)

    def test_statusTakenOver(self) -> None:
        """
        The status listener is taken over like the proxies': with workers,
        the status page answers on the same port, from the new parent, and
        lists the new workers.
        """
        config = self.writeConfig([LOOPBACK], workers=2, status=True)
        old = self.twistd(config)
        statusPort = boundPorts(old, 2)[1]
        old.waitFor(") serving", count=2, timeout=20)
        before = {w["pid"] for w in statusDocument(statusPort)["workers"]}
        new = self.twistd(config, "--take-over")
        new.waitFor("take-over: serving; pid", timeout=20)
        self.assertEqual(old.waitForExit(timeout=20), 0)
        workers = statusDocument(statusPort)["workers"]
        self.assertEqual([w["state"] for w in workers], ["serving", "serving"])
        self.assertEqual(before & {w["pid"] for w in workers}, set())

    def test_unixListenerKeepsItsName(self) -> None:
        """
        A unix socket listener taken over still answers on its path after
        the old process has stopped (its port removes the file when it
        closes; the name is put back).
        """
        path = os.path.join(self.tmp, "p.sock")
        config = self.writeConfig([f"unix:{path}"])
        old = self.twistd(config)
        old.waitFor("take-over: listening on")
        new = self.twistd(config, "--take-over")
        new.waitFor("take-over: serving; pid")
        self.assertEqual(old.waitForExit(timeout=20), 0)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(path)
            conn.sendall(PAYLOAD)
            self.assertEqual(recvExactly(conn, len(PAYLOAD), Deadline(10)), PAYLOAD)
        self.assertEqual(os.listdir(self.tmp).count("p.sock"), 1)
        self.assertEqual([name for name in os.listdir(self.tmp) if "takeover-" in name], [])

    def test_failedTakeoverLeavesOldServing(self) -> None:
        """
        A new process that cannot start (a listen endpoint of its
        configuration cannot be bound) exits with status 1 and one line;
        the old one serves on, undisturbed, its pidfile in place, and a
        later take-over succeeds.
        """
        config = self.writeConfig([LOOPBACK])
        old = self.twistd(config)
        port = boundPorts(old, 1)[0]
        old.waitFor("take-over: listening on")
        taken = refusedPort(self)
        bad = self.writeConfig([LOOPBACK, tcpListen(taken)], name="bad.toml")
        new = self.twistd(bad, "--take-over")
        self.assertEqual(new.waitForExit(timeout=20), 1)
        self.assertTrue(new.matching(f"cannot listen on {tcpListen(taken)}"), new.output)
        old.waitFor(f"take-over by pid {new.pid} abandoned before it served: still serving")
        # Still listening on the take-over socket: it was never closed.
        self.assertEqual(self.pidfileHolds(), old.pid)
        session = LongSession(port)
        self.addCleanup(session.close)
        session.close()
        again = self.twistd(config, "--take-over")
        again.waitFor("take-over: serving; pid")
        self.assertEqual(old.waitForExit(timeout=20), 0)

    def test_secondInstanceRefused(self) -> None:
        """
        With workers (SO_REUSEPORT sockets), a second instance binding the
        same TCP address stops with one line and exit status 1 instead of
        serving the port too; the instance lock moves with a take-over, so
        a second instance is refused after it as well.
        """
        # A fixed port, reserved race-free: a socket of the SO_REUSEPORT
        # group that never listens.
        reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(reserved.close)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        config = self.writeConfig([tcpListen(port)], workers=2)
        with open(config, encoding="utf-8") as f:
            text = f.read()
        second = os.path.join(self.tmp, "second.toml")
        with open(second, "w", encoding="utf-8") as f:
            f.write(text.replace("takeover.sock", "second.sock"))
        old = self.twistd(config)
        old.waitFor("take-over: listening on")
        other = Twistd(["sockproxy", "--config", second], cwd=self.tmp,
                       daemonArgs=("-n", "--pidfile=", "--logfile=-"))
        self.addCleanup(other.stop)
        self.assertEqual(other.waitForExit(timeout=20), 1)
        self.assertTrue(other.matching(f"another process serves 127.0.0.1:{port}"),
                        other.output)
        new = self.twistd(config, "--take-over")
        new.waitFor("take-over: serving; pid", timeout=20)
        self.assertEqual(old.waitForExit(timeout=20), 0)
        again = Twistd(["sockproxy", "--config", second], cwd=self.tmp,
                       daemonArgs=("-n", "--pidfile=", "--logfile=-"))
        self.addCleanup(again.stop)
        self.assertEqual(again.waitForExit(timeout=20), 1)
        self.assertTrue(again.matching(f"another process serves 127.0.0.1:{port}"),
                        again.output)

    def test_nothingToTakeOver(self) -> None:
        """
        With no process on the takeover socket, C{--take-over} says so and
        binds its listeners as any start does.
        """
        config = self.writeConfig([LOOPBACK])
        new = self.twistd(config, "--take-over")
        port = boundPorts(new, 1)[0]
        new.waitFor("take-over: no process listens on")
        new.waitFor("take-over: listening on")
        session = LongSession(port)
        session.close()
