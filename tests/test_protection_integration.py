"""
Integration tests of the protection keys, with C{twistd sockproxy} run as a
subprocess the way a user runs it: access rules, per-client limits, the
proxy's queue, backends' limits, drain with a deadline, TCP keepalive, the
global C{max-connections} and the pause of the listeners when accepting
fails for lack of descriptors.

Clients bind to 127.0.0.2 to be another client address than 127.0.0.1.
Every wait is bounded: on a log line, a condition, a select() or a socket
timeout, under a deadline. Nothing sleeps, except the bounded waits that
must expire (a client that must not be served within them).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import socket
import threading
import time
import urllib.request
from typing import Any, Optional

import psutil
from twisted.trial.unittest import SkipTest

from tests.integration_support import (
    LOOPBACK,
    Deadline,
    Server,
    Twistd,
    boundPorts,
    echoHandler,
    recvExactly,
    tomlString,
)
from tests.test_integration import _IntegrationTestCase

OTHER = "127.0.0.2"

# No proxy from the environment: the status endpoint is on loopback.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def clientFrom(host: str, port: int, timeout: float = 10.0) -> socket.socket:
    """
    A blocking client socket bound to C{host} (a loopback address) and
    connected to the proxy's C{port} on 127.0.0.1.
    """
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.bind((host, 0))
        conn.connect(("127.0.0.1", port))
    except BaseException:
        conn.close()
        raise
    return conn


def echoes(conn: socket.socket, payload: bytes, seconds: float = 10.0) -> bool:
    """
    Send C{payload}; whether it comes back (L{False}: the proxy closed the
    connection, with EOF or a reset, first).
    """
    deadline = Deadline(seconds, "an echo through the proxy")
    try:
        conn.sendall(payload)
        return recvExactly(conn, len(payload), deadline) == payload
    except (EOFError, ConnectionResetError, BrokenPipeError):
        return False


def closedByProxy(conn: socket.socket, seconds: float = 10.0) -> bool:
    """
    Whether the proxy closes C{conn} (EOF or reset) within C{seconds},
    without sending anything.
    """
    conn.settimeout(seconds)
    try:
        return conn.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def silentFor(conn: socket.socket, seconds: float) -> bool:
    """
    Whether C{conn} receives nothing, and is not closed, for C{seconds}
    (a bounded wait that must expire).
    """
    readable, _, _ = select.select([conn], [], [], seconds)
    return not readable


def idEchoHandler(order: list[bytes], lock: threading.Condition) -> Any:
    """
    An echo handler that first records the client's first 4 bytes (its id)
    in C{order}, in the order the backend receives them.
    """

    def handler(conn: socket.socket, server: Server) -> None:
        first = recvExactly(conn, 4, Deadline(30, "a client's id"))
        with lock:
            order.append(first)
            lock.notify_all()
        conn.sendall(first)
        echoHandler(conn, server)

    return handler


class ProtectionIntegrationTests(_IntegrationTestCase):
    """
    The protection keys of a proxy, seen from its clients and backends.
    """

    def startProtected(
        self,
        keys: str,
        backends: list[dict[str, Any]],
        top: str = "",
        tokenFile: Optional[str] = None,
        balance: str = "round-robin",
    ) -> tuple[Twistd, int]:
        """
        Start one proxy "p" (on loopback, with C{keys}) with C{backends},
        and a status endpoint.

        @return: the process and the proxy's port (the status endpoint's is
            in C{self.statusPort}).
        """
        lines = ["debug = 1", 'session-log = "off"', top, "", "[status]",
                 f"listen = {tomlString(LOOPBACK)}"]
        if tokenFile is not None:
            lines.append(f"admin-token-file = {tomlString(tokenFile)}")
        lines += ["", "[[proxy]]", 'name = "p"', f"listen = {tomlString(LOOPBACK)}",
                  f"balance = {tomlString(balance)}", keys]
        for backend in backends:
            lines.append("[[proxy.backend]]")
            for key, value in backend.items():
                lines.append(f"{key} = {_toml(value)}")
        path = os.path.join(self.tmp, "sockproxy.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        process = self.startTwistd(["sockproxy", "--config", path])
        port, self.statusPort = boundPorts(process, 2)
        return process, port

    def status(self) -> dict[str, Any]:
        with _opener.open(f"http://127.0.0.1:{self.statusPort}/status.json", timeout=5) as r:
            [proxy] = json.load(r)["proxies"]
            return dict(proxy)

    def waitStatus(self, what: str, test: Any, seconds: float = 10.0) -> dict[str, Any]:
        """
        Poll C{/status.json} until C{test(proxy)} holds.
        """
        deadline = Deadline(seconds, what)
        while True:
            proxy = self.status()
            if test(proxy):
                return proxy
            select.select([], [], [], min(0.05, deadline.remaining()))

    def client(self, host: str, port: int) -> socket.socket:
        conn = clientFrom(host, port)
        self.addCleanup(conn.close)
        return conn

    # -- access rules ------------------------------------------------------------

    def test_accessRules(self) -> None:
        """
        With C{access = ["allow 127.0.0.1", "deny all"]}, clients from
        127.0.0.2 are closed without reaching the backend, and counted in
        "denied"; clients from 127.0.0.1 are served.
        """
        backend = self.startServer(echoHandler)
        _, port = self.startProtected(
            'access = ["allow 127.0.0.1", "deny all"]', [{"endpoint": backend.endpoint}]
        )
        for i in range(3):
            denied = self.client(OTHER, port)
            self.assertTrue(closedByProxy(denied), f"client {i} of 127.0.0.2 not closed")
        served = self.client("127.0.0.1", port)
        self.assertTrue(echoes(served, b"allowed"))
        self.assertEqual(backend.accepted, 1)
        proxy = self.status()
        self.assertEqual(proxy["denied"], 3)
        self.assertEqual(proxy["client_limited"], 0)
        self.assertNoHandlerErrors(backend)

    # -- per-client limits -------------------------------------------------------

    def test_clientMaxConnections(self) -> None:
        """
        C{client-max-connections = 2}: a third session from 127.0.0.2 is
        closed while its two are open, and counted in "client_limited";
        127.0.0.1 is served meanwhile; once one of 127.0.0.2's sessions
        ends, it is served again.
        """
        backend = self.startServer(echoHandler)
        _, port = self.startProtected("client-max-connections = 2",
                                      [{"endpoint": backend.endpoint}])
        held = [self.client(OTHER, port) for _ in range(2)]
        for i, conn in enumerate(held):
            self.assertTrue(echoes(conn, b"held %d" % i))
        third = self.client(OTHER, port)
        self.assertTrue(closedByProxy(third), "a third session of 127.0.0.2 was not closed")
        others = [self.client("127.0.0.1", port) for _ in range(2)]
        for i, conn in enumerate(others):
            self.assertTrue(echoes(conn, b"other %d" % i), f"127.0.0.1 client {i} not served")
        self.assertEqual(self.status()["client_limited"], 1)
        held[0].close()
        self.waitStatus("the closed session to end", lambda p: p["active"] == 3)
        again = self.client(OTHER, port)
        self.assertTrue(echoes(again, b"again"), "127.0.0.2 not served after a session ended")
        self.assertEqual(backend.accepted, 5)
        self.assertEqual(self.status()["client_limited"], 1)
        self.assertNoHandlerErrors(backend)

    def test_clientRateBurst(self) -> None:
        """
        C{client-rate = 0.2}, C{client-burst = 3}: 127.0.0.2 may open 3
        connections at once, the next ones (within the next 5 s) are
        closed; 127.0.0.1 has a bucket of its own.
        """
        backend = self.startServer(echoHandler)
        _, port = self.startProtected("client-rate = 0.2\nclient-burst = 3",
                                      [{"endpoint": backend.endpoint}])
        started = time.monotonic()
        results = []
        for i in range(5):
            with clientFrom(OTHER, port) as conn:
                results.append(echoes(conn, b"burst %d" % i))
        # One token comes back every 5 s: the five took far less.
        self.assertLess(time.monotonic() - started, 4.0)
        self.assertEqual(results, [True, True, True, False, False])
        for i in range(3):
            with clientFrom("127.0.0.1", port) as conn:
                self.assertTrue(echoes(conn, b"own %d" % i), f"127.0.0.1 client {i} refused")
        self.assertEqual(self.status()["client_limited"], 2)
        self.assertEqual(backend.accepted, 6)
        self.assertNoHandlerErrors(backend)

    # -- the proxy's queue -------------------------------------------------------

    def test_queueOrderAndFull(self) -> None:
        """
        C{max-connections = 2}, C{max-queue = 3}: clients 3-5 wait, in
        arrival order, the sixth is closed (queue full); as sessions end
        the waiting ones are served in the order they came.
        """
        order: list[bytes] = []
        lock = threading.Condition()
        backend = self.startServer(idEchoHandler(order, lock))
        _, port = self.startProtected(
            "max-connections = 2\nmax-queue = 3\nqueue-timeout = 60",
            [{"endpoint": backend.endpoint}],
        )
        clients = []
        for i in range(5):
            conn = self.client("127.0.0.1", port)
            conn.sendall(b"c%03d" % i)
            clients.append(conn)
            # One at a time: the first two served (their backend sessions
            # are under way in that order), the proxy has seen each queued
            # one before the next.
            if i < 2:
                self.assertEqual(recvExactly(conn, 4, Deadline(10, "echo")), b"c%03d" % i)
            self.waitStatus(f"client {i} to be served or queued",
                            lambda p, i=i: p["serving"] + p["queue"]["waiting"] == i + 1)
        full = self.client("127.0.0.1", port)
        self.assertTrue(closedByProxy(full), "a client beyond the queue was not closed")
        proxy = self.status()
        self.assertEqual((proxy["serving"], proxy["queue"]["waiting"]), (2, 3))
        self.assertEqual(proxy["queue"]["full"], 1)
        self.assertEqual(backend.accepted, 2)
        for i in range(2, 5):
            self.assertTrue(silentFor(clients[i], 0.2), f"queued client {i} was answered")
        for ending, next in ((0, 2), (1, 3), (2, 4)):
            clients[ending].close()
            self.assertEqual(
                recvExactly(clients[next], 4, Deadline(10, f"client {next} served")),
                b"c%03d" % next,
            )
        self.assertEqual(order, [b"c%03d" % i for i in range(5)])
        proxy = self.status()
        self.assertEqual(proxy["queue"]["total"], 3)
        self.assertEqual(proxy["queue"]["max_waiting"], 3)
        self.assertEqual(proxy["queue"]["timeouts"], 0)
        self.assertNoHandlerErrors(backend)

    def test_queueTimeout(self) -> None:
        """
        C{queue-timeout = 1}: a client waiting longer is closed after about
        1 s, and counted in the queue's "timeouts".
        """
        backend = self.startServer(echoHandler)
        _, port = self.startProtected(
            "max-connections = 1\nmax-queue = 2\nqueue-timeout = 1",
            [{"endpoint": backend.endpoint}],
        )
        held = self.client("127.0.0.1", port)
        self.assertTrue(echoes(held, b"held"))
        waiting = self.client("127.0.0.1", port)
        started = time.monotonic()
        self.assertTrue(closedByProxy(waiting, 10), "the queued client was not closed")
        waited = time.monotonic() - started
        self.assertGreater(waited, 0.8)
        self.assertLess(waited, 5.0)
        proxy = self.status()
        self.assertEqual(proxy["queue"]["timeouts"], 1)
        self.assertEqual(backend.accepted, 1)
        self.assertTrue(echoes(held, b"still served"))

    # -- backends' limits --------------------------------------------------------

    def test_fullBackendSkipped(self) -> None:
        """
        Round robin over a (C{max-connections = 1}) and b: once a holds a
        session it is skipped, and b takes the rest.
        """
        a = self.startServer(echoHandler)
        b = self.startServer(echoHandler)
        _, port = self.startProtected("", [
            {"endpoint": a.endpoint, "label": "a", "max-connections": 1},
            {"endpoint": b.endpoint, "label": "b"},
        ])
        held = [self.client("127.0.0.1", port) for _ in range(4)]
        for i, conn in enumerate(held):
            self.assertTrue(echoes(conn, b"session %d" % i), f"session {i} not served")
        self.assertEqual((a.accepted, b.accepted), (1, 3))
        shown = {backend["label"]: backend for backend in self.status()["backends"]}
        self.assertEqual((shown["a"]["active"], shown["a"]["max_connections"]), (1, 1))
        self.assertEqual(shown["b"]["active"], 3)
        self.assertNoHandlerErrors(a, b)

    # -- drain with a deadline ---------------------------------------------------

    def test_drainDeadline(self) -> None:
        """
        C{POST /backends/p/a/drain?timeout=1}: new sessions go to b; the
        session open on a is closed about 1 s later, counted in a's
        "drain_closed"; the one on b is undisturbed.
        """
        a = self.startServer(echoHandler)
        b = self.startServer(echoHandler)
        token = "t0k3n-" + os.urandom(8).hex()
        tokenFile = os.path.join(self.tmp, "admin-token")
        with open(tokenFile, "w", encoding="ascii") as f:
            f.write(token + "\n")
        process, port = self.startProtected("", [
            {"endpoint": a.endpoint, "label": "a"},
            {"endpoint": b.endpoint, "label": "b"},
        ], tokenFile=tokenFile)
        onA = self.client("127.0.0.1", port)
        self.assertTrue(echoes(onA, b"on a"))
        a.waitForAccepted(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.statusPort}/backends/p/a/drain?timeout=1",
            method="POST", headers={"Authorization": f"Bearer {token}"},
        )
        started = time.monotonic()
        with _opener.open(request, timeout=5) as reply:
            self.assertEqual(reply.status, 200)
            self.assertEqual(json.load(reply)["state"], "draining")
        onB = self.client("127.0.0.1", port)
        self.assertTrue(echoes(onB, b"on b"))
        self.assertEqual((a.accepted, b.accepted), (1, 1))
        self.assertTrue(closedByProxy(onA, 10), "the session on a was not closed")
        waited = time.monotonic() - started
        self.assertGreater(waited, 0.8)
        self.assertLess(waited, 5.0)
        process.waitFor("backend a drained: 1 session(s) still open")
        shown = {backend["label"]: backend for backend in self.status()["backends"]}
        self.assertEqual(shown["a"]["drain_closed"], 1)
        self.assertEqual(shown["b"]["drain_closed"], 0)
        self.assertTrue(echoes(onB, b"still on b"))

    # -- keepalive ---------------------------------------------------------------

    def test_keepaliveApplied(self) -> None:
        """
        C{client-keepalive} and a backend's C{keepalive} set SO_KEEPALIVE,
        TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT on the proxy's socket
        to the client and to the backend (read from a duplicate of the
        proxy's descriptor, C{pidfd_getfd}).
        """
        backend = self.startServer(echoHandler)
        process, port = self.startProtected(
            "client-keepalive = { idle = 7, interval = 3, count = 4 }",
            [{"endpoint": backend.endpoint,
              "keepalive": {"idle": 11, "interval": 5, "count": 6}}],
        )
        conn = self.client("127.0.0.1", port)
        self.assertTrue(echoes(conn, b"keepalive"))
        clientPort = conn.getsockname()[1]
        sockets = {}
        for c in psutil.Process(process.pid).net_connections(kind="tcp"):
            if c.raddr and c.raddr.port == clientPort:
                sockets["client"] = c.fd
            elif c.raddr and c.raddr.port == backend.port:
                sockets["backend"] = c.fd
        self.assertEqual(set(sockets), {"client", "backend"})
        expected = {"client": (7, 3, 4), "backend": (11, 5, 6)}
        for side, fd in sockets.items():
            skt = _peerSocket(process.pid, fd)
            try:
                self.assertEqual(skt.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1,
                                 side)
                self.assertEqual(
                    tuple(skt.getsockopt(socket.IPPROTO_TCP, option) for option in (
                        socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)),
                    expected[side], side,
                )
            finally:
                skt.close()
        # The status endpoint's socket (no keepalive configured) is left alone.
        self.assertNoHandlerErrors(backend)

    # -- the global max-connections ----------------------------------------------

    def test_globalMaxConnections(self) -> None:
        """
        Top-level C{max-connections = 2}: a third client stays in the
        listen backlog, unserved, until a session ends; then it is served.
        """
        backend = self.startServer(echoHandler)
        process, port = self.startProtected("", [{"endpoint": backend.endpoint}],
                                            top="max-connections = 2")
        held = [self.client("127.0.0.1", port) for _ in range(2)]
        for i, conn in enumerate(held):
            self.assertTrue(echoes(conn, b"held %d" % i))
        process.waitFor("the global max-connections: not accepting")
        third = self.client("127.0.0.1", port)  # the kernel completes the handshake
        third.sendall(b"third")
        self.assertTrue(silentFor(third, 0.5), "the third client was answered")
        self.assertEqual(backend.accepted, 2)
        self.assertEqual(self.status()["accepted"], 2)
        held[0].close()
        self.assertEqual(recvExactly(third, 5, Deadline(10, "the third client served")),
                         b"third")
        process.waitFor("below the global max-connections again")
        self.assertEqual(backend.accepted, 3)
        self.assertNoHandlerErrors(backend)

    # -- out of descriptors ------------------------------------------------------

    def test_outOfDescriptors(self) -> None:
        """
        With the proxy's descriptor limit at the descriptors it holds,
        clients that keep knocking make accept() fail: the listeners pause
        ("accepting failed"), the proxy uses well under 30 % of a core
        meanwhile, and once sessions end and free descriptors it accepts
        again ("accepting again") and serves.
        """
        backend = self.startServer(echoHandler)
        process, port = self.startProtected("", [{"endpoint": backend.endpoint}])
        proxy = psutil.Process(process.pid)
        held = [self.client("127.0.0.1", port) for _ in range(4)]
        for i, conn in enumerate(held):
            self.assertTrue(echoes(conn, b"held %d" % i))
        _, hard = proxy.rlimit(psutil.RLIMIT_NOFILE)
        self.addCleanup(_restoreLimit, proxy, hard)
        # The soft limit only: raising it again needs no privilege.
        proxy.rlimit(psutil.RLIMIT_NOFILE, (proxy.num_fds(), hard))
        stop = threading.Event()
        knocks = [0]

        def knock() -> None:
            # New clients all along, closed after a moment; bounded in
            # count and time.
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline and knocks[0] < 20000:
                conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                conn.settimeout(0.2)
                try:
                    conn.connect(("127.0.0.1", port))
                    knocks[0] += 1
                except OSError:
                    pass
                finally:
                    conn.close()
                stop.wait(0.005)

        knocker = threading.Thread(target=knock, daemon=True)
        knocker.start()
        self.addCleanup(knocker.join, 5)
        self.addCleanup(stop.set)
        process.waitFor("accepting failed", timeout=10)
        before = proxy.cpu_times()
        knocksBefore = knocks[0]
        started = time.monotonic()
        stop.wait(2.0)  # a bounded wait that must expire: the measurement
        after = proxy.cpu_times()
        elapsed = time.monotonic() - started
        cpu = (after.user - before.user + after.system - before.system) / elapsed
        self.assertGreater(knocks[0] - knocksBefore, 10, "the clients stopped knocking")
        self.assertLess(cpu, 0.3, f"the proxy used {cpu:.0%} of a core out of descriptors")
        stop.set()
        knocker.join(5)
        for conn in held:
            conn.close()
        process.waitFor("accepting again", timeout=15)
        deadline = Deadline(15, "a client served once descriptors are free")
        while True:
            deadline.remaining()
            with clientFrom("127.0.0.1", port) as conn:
                if echoes(conn, b"served again"):
                    break
        self.assertNoHandlerErrors(backend)


def _toml(value: Any) -> str:
    """
    C{value} (a string, number or table) as TOML.
    """
    if isinstance(value, str):
        return tomlString(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)


def _restoreLimit(proxy: psutil.Process, hard: int) -> None:
    try:
        proxy.rlimit(psutil.RLIMIT_NOFILE, (min(hard, 65536), hard))
    except psutil.Error:
        pass


_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture


def _peerSocket(pid: int, fd: int) -> socket.socket:
    """
    A socket object on a duplicate of descriptor C{fd} of process C{pid}
    (Linux 5.6+, C{pidfd_getfd}; needs the right to ptrace it).

    @raise SkipTest: the system does not allow it.
    """
    if not hasattr(os, "pidfd_open"):
        raise SkipTest("no pidfd_open: cannot read the proxy's socket options")
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        dup = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if dup < 0:
            error = ctypes.get_errno()
            raise SkipTest(f"pidfd_getfd: {os.strerror(error)}: cannot read the proxy's "
                           "socket options")
    finally:
        os.close(pidfd)
    return socket.socket(fileno=dup)
