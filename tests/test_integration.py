"""
Integration tests: C{twistd sockproxy} runs as a subprocess, the way a user
runs it, between loopback clients and backends served from threads (or socat).

Every wait is bounded: on a log line, an event, a select() or a socket
timeout, under a deadline. Nothing sleeps.
"""

from __future__ import annotations

import hashlib
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional

import psutil
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.integration_support import (
    LOOPBACK,
    REPO,
    START_TIMEOUT,
    TWIST,
    TWISTD,
    Deadline,
    Handler,
    Server,
    Twistd,
    boundPort,
    connect,
    echoHandler,
    exchange,
    proxyConfig,
    readVmHWM,
    recvAll,
    recvExactly,
    refusedEndpoint,
    refusedPort,
    refusingSocket,
    tcpBackend,
    tcpListen,
    tomlString,
)

MiB = 1024 * 1024


class _IntegrationTestCase(SynchronousTestCase):
    """
    Starts backends and C{twistd sockproxy} processes, and cleans them up.
    """

    def setUp(self) -> None:
        # A short path under /tmp: unix socket paths are limited to 107 bytes.
        self.tmp = tempfile.mkdtemp(prefix="sockproxy-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def environ(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SOCKPROXY_CONFIG", None)
        env.update(extra)
        return env

    def startServer(
        self, handler: Handler, unixPath: Optional[str] = None, port: int = 0
    ) -> Server:
        server = Server(handler, unixPath=unixPath, port=port)
        self.addCleanup(server.stop)
        return server

    def assertNoHandlerErrors(self, *servers: Server) -> None:
        for server in servers:
            self.assertEqual(server.errors, [], f"backend {server.endpoint} failed")

    def startTwistd(
        self,
        args: Sequence[str],
        ready: Optional[str] = "listening on",
        readyCount: int = 1,
        env: Optional[dict[str, str]] = None,
        program: str = TWISTD,
        daemonArgs: Sequence[str] = ("-n", "--pidfile=", "--logfile=-"),
    ) -> Twistd:
        """
        Start C{twistd ... sockproxy ARGS} in the temporary directory and wait
        for it to log C{ready} (C{readyCount} times).
        """
        process = Twistd(
            args, cwd=self.tmp, env=env or self.environ(), program=program,
            daemonArgs=daemonArgs,
        )
        self.addCleanup(process.stop)
        if ready is not None:
            process.waitFor(ready, count=readyCount, timeout=START_TIMEOUT)
        return process

    def startProxy(self, configPath: str, readyCount: int = 1) -> Twistd:
        return self.startTwistd(["sockproxy", "--config", configPath], readyCount=readyCount)

    def runToExit(
        self,
        args: Sequence[str],
        program: str = TWISTD,
        daemonArgs: Sequence[str] = ("-n", "--pidfile=", "--logfile=-"),
        timeout: float = 15.0,
    ) -> tuple[int, str]:
        """
        Run C{twistd} to completion; return its exit status and output.
        """
        process = self.startTwistd(args, ready=None, program=program, daemonArgs=daemonArgs)
        code = process.waitForExit(timeout)
        return code, process.output

    def echoThrough(self, address: Any, payload: bytes, seconds: float = 10.0) -> bytes:
        """
        Send C{payload} through the proxy at C{address}, half-close, and
        return everything received until EOF.
        """
        with connect(address) as conn:
            return exchange(conn, payload, Deadline(seconds, "echo through the proxy"))


class RelayIntegrationTests(_IntegrationTestCase):
    """
    Bytes go through C{twistd sockproxy} unchanged, over TCP and unix sockets.
    """

    def test_largeEcho(self) -> None:
        """
        8 MiB of random bytes sent through a TCP listener to a TCP echo
        backend come back byte for byte.
        """
        backend = self.startServer(echoHandler)
        config = proxyConfig(self.tmp, [LOOPBACK], [{"endpoint": backend.endpoint}])
        port = boundPort(self.startProxy(config))
        payload = os.urandom(8 * MiB)
        received = self.echoThrough(("127.0.0.1", port), payload, seconds=30)
        self.assertEqual(len(received), len(payload))
        self.assertTrue(received == payload, "echoed bytes differ from those sent")
        self.assertNoHandlerErrors(backend)

    def test_noDelayAdded(self) -> None:
        """
        The proxy adds no delay of its own: a second small write, made once
        the first has reached the other side, reaches it at once, both ways,
        in most of six rounds. With Nagle's algorithm on the proxy's sockets
        it waited for the acknowledgement of the first, which a peer that
        has just sent (and so expects to answer) delays: 40 ms or more on
        Linux.
        """
        gaps: queue.Queue[float] = queue.Queue()
        # Each side's "got the first byte", for the other to write the second.
        backendGot = threading.Event()
        clientGot = threading.Event()

        def twoByTwo(conn: socket.socket, server: Server) -> None:
            # Nagle off at the ends: only the proxy's own delay is measured.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = Deadline(10, "the client's writes")
            for _ in range(6):
                if recvExactly(conn, 1, deadline) != b"a":
                    raise AssertionError("expected the client's first byte")
                start = time.monotonic()
                backendGot.set()
                if recvExactly(conn, 1, deadline) != b"b":
                    raise AssertionError("expected the client's second byte")
                gaps.put(time.monotonic() - start)
                conn.sendall(b"A")
                if not clientGot.wait(deadline.remaining()):
                    raise TimeoutError("the client did not get the first byte")
                clientGot.clear()
                conn.sendall(b"B")

        backend = self.startServer(twoByTwo)
        config = proxyConfig(self.tmp, [LOOPBACK], [{"endpoint": backend.endpoint}])
        port = boundPort(self.startProxy(config))
        toClient = []
        with connect(("127.0.0.1", port)) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = Deadline(10, "the backend's writes")
            for _ in range(6):
                conn.sendall(b"a")
                self.assertTrue(backendGot.wait(deadline.remaining()))
                backendGot.clear()
                conn.sendall(b"b")
                self.assertEqual(recvExactly(conn, 1, deadline), b"A")
                start = time.monotonic()
                clientGot.set()
                self.assertEqual(recvExactly(conn, 1, deadline), b"B")
                toClient.append(time.monotonic() - start)
        toBackend = [gaps.get(timeout=10) for _ in range(6)]
        # Without the fix, most rounds took 40 ms or more.
        self.assertLess(sorted(toClient)[3], 0.030, toClient)
        self.assertLess(sorted(toBackend)[3], 0.030, toBackend)
        self.assertNoHandlerErrors(backend)

    def test_unixListenerAndUnixBackends(self) -> None:
        """
        A C{unix:PATH} listener relays to a unix-socket backend given either
        lighttpd-style (C{host = "/path"}) or as C{endpoint = "unix:PATH"}.
        """
        backendPath = os.path.join(self.tmp, "backend.sock")
        backend = self.startServer(echoHandler, unixPath=backendPath)
        viaHost = os.path.join(self.tmp, "via-host.sock")
        viaEndpoint = os.path.join(self.tmp, "via-endpoint.sock")
        config = os.path.join(self.tmp, "unix.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(
                f"""
[[proxy]]
name = "via-host"
listen = {tomlString("unix:" + viaHost)}
[[proxy.backend]]
host = {tomlString(backendPath)}

[[proxy]]
name = "via-endpoint"
listen = {tomlString("unix:" + viaEndpoint)}
[[proxy.backend]]
endpoint = {tomlString("unix:" + backendPath)}
"""
            )
        self.startProxy(config, readyCount=2)
        for listener in (viaHost, viaEndpoint):
            payload = os.urandom(256 * 1024)
            self.assertTrue(
                self.echoThrough(listener, payload) == payload,
                f"echo through {listener} differs",
            )
        self.assertEqual(backend.accepted, 2)
        self.assertNoHandlerErrors(backend)

    def test_quickMode(self) -> None:
        """
        C{twistd sockproxy --listen ... --backend ... --backend ... --balance
        round-robin} relays, taking the backends in turn.
        """
        one = self.startServer(echoHandler)
        two = self.startServer(echoHandler)
        proxy = self.startTwistd(
            [
                "sockproxy",
                "--listen", LOOPBACK,
                "--backend", one.endpoint,
                "--backend", two.endpoint,
                "--balance", "round-robin",
            ]
        )
        port = boundPort(proxy)
        for i in range(4):
            payload = f"quick mode {i}\n".encode()
            self.assertEqual(self.echoThrough(("127.0.0.1", port), payload), payload)
        self.assertEqual((one.accepted, two.accepted), (2, 2))
        self.assertNoHandlerErrors(one, two)


def countThenReplyHandler(
    reply: bytes, results: queue.Queue[tuple[int, str]]
) -> Handler:
    """
    A backend that reads until EOF, records how many bytes came and their
    SHA-256, then sends C{reply} and closes.
    """

    def handler(conn: socket.socket, server: Server) -> None:
        digest = hashlib.sha256()
        count = 0
        while True:
            data = conn.recv(262144)
            if not data:
                break
            digest.update(data)
            count += len(data)
        results.put((count, digest.hexdigest()))
        conn.sendall(reply)
        conn.shutdown(socket.SHUT_WR)

    return handler


class HalfCloseIntegrationTests(_IntegrationTestCase):
    """
    EOF is forwarded each way while the other direction keeps flowing.
    """

    def proxyTo(self, backend: Server, debug: int = 0) -> tuple[str, int]:
        config = proxyConfig(
            self.tmp, [LOOPBACK], [{"endpoint": backend.endpoint}], debug=debug
        )
        self.proxy = self.startProxy(config)
        return ("127.0.0.1", boundPort(self.proxy))

    def test_clientHalfClose(self) -> None:
        """
        When the client sends data and then shuts its write side down, the
        backend sees EOF after every byte, and the 1 MiB reply it sends
        afterwards reaches the client in full, followed by EOF.
        """
        payload = os.urandom(2 * MiB)
        reply = os.urandom(1 * MiB)
        results: queue.Queue[tuple[int, str]] = queue.Queue()
        backend = self.startServer(countThenReplyHandler(reply, results))
        address = self.proxyTo(backend)
        received = self.echoThrough(address, payload)
        count, digest = results.get(timeout=5)
        self.assertEqual(count, len(payload))
        self.assertEqual(digest, hashlib.sha256(payload).hexdigest())
        self.assertEqual(len(received), len(reply))
        self.assertTrue(received == reply, "the reply arrived altered")
        self.assertNoHandlerErrors(backend)

    def test_loneClientFINAfterPause(self) -> None:
        """
        When the client's FIN comes alone, after the backend has acknowledged
        all the data (so the FIN is not in the same read as the data), the
        backend still sees EOF and its reply, sent after that EOF, reaches
        the client. (lighttpd tears the tunnel down here.)
        """
        payload = b"request " * 1000
        reply = os.urandom(256 * 1024)
        sawEOF = threading.Event()

        def handler(conn: socket.socket, server: Server) -> None:
            got = recvExactly(conn, len(payload), Deadline(10, "request"))
            assert got == payload, "request altered"
            conn.sendall(b"A")
            if conn.recv(1) != b"":
                raise AssertionError("expected EOF after the request")
            sawEOF.set()
            conn.sendall(reply)
            conn.shutdown(socket.SHUT_WR)

        backend = self.startServer(handler)
        address = self.proxyTo(backend)
        deadline = Deadline(10, "lone FIN exchange")
        with connect(address) as conn:
            conn.sendall(payload)
            conn.settimeout(deadline.remaining())
            self.assertEqual(conn.recv(1), b"A")
            # The backend has everything: this FIN travels on its own.
            conn.shutdown(socket.SHUT_WR)
            received = recvAll(conn, deadline)
        self.assertTrue(sawEOF.is_set(), "the backend never saw EOF")
        self.assertEqual(len(received), len(reply))
        self.assertTrue(received == reply, "the reply arrived altered")
        self.assertNoHandlerErrors(backend)

    def test_socatClientHalfClose(self) -> None:
        """
        socat as the client (it shuts its write side down at the end of its
        input and waits for the reply) gets the backend's whole reply.
        """
        if shutil.which("socat") is None:
            raise SkipTest("socat is not installed (apt-get install socat)")
        payload = os.urandom(512 * 1024)
        reply = os.urandom(512 * 1024)
        results: queue.Queue[tuple[int, str]] = queue.Queue()
        backend = self.startServer(countThenReplyHandler(reply, results))
        host, port = self.proxyTo(backend)
        result = subprocess.run(
            ["socat", "-t", "10", "-T", "10", "-", f"TCP:{host}:{port}"],
            input=payload, capture_output=True, timeout=20, check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr.decode(errors="replace"))
        self.assertEqual(results.get(timeout=5)[0], len(payload))
        self.assertTrue(result.stdout == reply, "socat received an altered reply")
        self.assertNoHandlerErrors(backend)

    def test_backendHalfClose(self) -> None:
        """
        When the backend sends a reply and shuts its write side down, the
        client gets the reply and then EOF, and can still send: what it
        sends after that EOF reaches the backend. When the client then shuts
        down too, the session ends.
        """
        greeting = os.urandom(300 * 1024)
        late = os.urandom(300 * 1024)
        received: queue.Queue[bytes] = queue.Queue()

        def handler(conn: socket.socket, server: Server) -> None:
            conn.sendall(greeting)
            conn.shutdown(socket.SHUT_WR)
            received.put(recvAll(conn, Deadline(10, "data after the backend's EOF")))

        backend = self.startServer(handler)
        address = self.proxyTo(backend, debug=1)
        deadline = Deadline(10, "backend half-close exchange")
        with connect(address) as conn:
            host, port = conn.getsockname()
            clientAddress = f"{host}:{port}"
            got = recvAll(conn, deadline)
            self.assertTrue(got == greeting, "the backend's reply arrived altered")
            # EOF received: the proxy must still carry this direction.
            conn.sendall(late)
            conn.shutdown(socket.SHUT_WR)
            self.assertTrue(received.get(timeout=deadline.remaining()) == late)
            self.proxy.waitFor(f"session of {clientAddress} ended", timeout=deadline.remaining())
            conn.settimeout(deadline.remaining())
            self.assertEqual(conn.recv(1), b"")
        self.assertNoHandlerErrors(backend)


def killFromPidfile(pidfile: str) -> None:
    """
    Stop a daemonized twistd that a test did not expect to keep running.
    """
    try:
        with open(pidfile, encoding="ascii") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


class FailoverIntegrationTests(_IntegrationTestCase):
    """
    A refused backend is skipped without the client noticing; with no
    backend left the client is closed at once.
    """

    def checkFailover(self, balance: str) -> None:
        # With the first backend refusing and the second working, every one
        # of N client connections is echoed by the working backend, and the
        # log names the refused backend's failure.
        working = self.startServer(echoHandler)
        down = refusedEndpoint(self)
        config = proxyConfig(
            self.tmp,
            [LOOPBACK],
            [
                {"endpoint": down, "label": "refusing", "disable-time": 0},
                {"endpoint": working.endpoint, "label": "working", "disable-time": 0},
            ],
            balance=balance,
        )
        proxy = self.startProxy(config)
        port = boundPort(proxy)
        connections = 10
        for i in range(connections):
            payload = f"{balance} connection {i}\n".encode() * 100
            self.assertEqual(self.echoThrough(("127.0.0.1", port), payload), payload)
        self.assertEqual(working.accepted, connections)
        # Fair prefers the first backend on ties, so with no disable-time
        # every connection tries it first and fails over.
        failures = proxy.waitFor(down, count=connections if balance == "fair" else 1)
        for line in failures:
            self.assertIn("refused", line)
        self.assertNoHandlerErrors(working)

    def test_failoverRoundRobin(self) -> None:
        """
        With C{balance = "round-robin"}, every client is served by the
        working backend when the other refuses, and the log says so.
        """
        self.checkFailover("round-robin")

    def test_failoverFair(self) -> None:
        """
        With C{balance = "fair"}, every client is served by the working
        backend when the first (always preferred on ties) refuses, and the
        log says so.
        """
        self.checkFailover("fair")

    def connectAndTimeClose(self, port: int) -> float:
        """
        Connect to the proxy and return how long it took to be closed
        (EOF or reset); fail if it took 5 s.
        """
        start = time.monotonic()
        with connect(("127.0.0.1", port), timeout=5) as conn:
            try:
                self.assertEqual(conn.recv(1024), b"")
            except ConnectionResetError:
                pass
            except TimeoutError:
                self.fail("the proxy left the client connection open for 5 s")
        return time.monotonic() - start

    def test_allBackendsDown(self) -> None:
        """
        When every backend refuses, each client connection is closed within
        a second instead of being left open, and "all backends down" is
        logged once per outage: not again for later clients, and again only
        after a backend has answered in between.
        """
        refusing = [refusingSocket(self), refusingSocket(self)]
        config = proxyConfig(
            self.tmp,
            [LOOPBACK],
            [
                {"endpoint": tcpBackend(sock.getsockname()[1]), "label": f"b{i}",
                 "disable-time": 0}
                for i, sock in enumerate(refusing)
            ],
        )
        proxy = self.startProxy(config)
        listen = boundPort(proxy)
        closeTimes = [self.connectAndTimeClose(listen) for _ in range(5)]

        # A backend answers again...
        revived = Server(echoHandler, bound=refusing[0])
        self.addCleanup(revived.stop)
        self.assertEqual(self.echoThrough(("127.0.0.1", listen), b"hello"), b"hello")
        revived.stop()
        # ...and goes away: a new outage.
        closeTimes += [self.connectAndTimeClose(listen) for _ in range(3)]

        proxy.stop()
        print(f"\nall backends down: client closed after {max(closeTimes) * 1000:.1f} ms at most")
        for elapsed in closeTimes:
            self.assertLess(elapsed, 1.0)
        lines = proxy.lines
        down = [
            i for i, line in enumerate(lines)
            if "all backends down, closing" in line
        ]
        again = [i for i, line in enumerate(lines) if "backend b0 answers again" in line]
        self.assertEqual(len(down), 2, proxy.output)
        self.assertEqual(len(again), 1, proxy.output)
        self.assertTrue(down[0] < again[0] < down[1], proxy.output)


class FlowControlIntegrationTests(_IntegrationTestCase):
    """
    A backend that does not read pauses the client: the proxy does not buffer.
    """

    def test_boundedMemoryWithStalledBackend(self) -> None:
        """
        When the backend accepts but never reads, a client pushing up to 64
        MiB stalls, the proxy's resident memory grows by less than 16 MiB,
        and once the backend reads, every byte the client sent arrives.
        """
        total = 64 * MiB
        drain = threading.Event()
        counted: queue.Queue[int] = queue.Queue()

        def handler(conn: socket.socket, server: Server) -> None:
            drain.wait(30)
            if server.stopped.is_set():
                return
            count = 0
            deadline = Deadline(30, "draining")
            while True:
                conn.settimeout(deadline.remaining())
                data = conn.recv(262144)
                if not data:
                    break
                count += len(data)
            counted.put(count)

        backend = self.startServer(handler)
        self.addCleanup(drain.set)
        config = proxyConfig(self.tmp, [LOOPBACK], [{"endpoint": backend.endpoint}])
        proxy = self.startProxy(config)
        port = boundPort(proxy)
        process = psutil.Process(proxy.pid)

        with connect(("127.0.0.1", port)) as conn:
            backend.waitForAccepted(1)
            before = process.memory_info().rss
            hwmBefore = readVmHWM(proxy.pid)
            chunk = memoryview(os.urandom(MiB))
            conn.setblocking(False)
            sent = 0
            stalled = False
            deadline = Deadline(30, "pushing into a stalled backend")
            while sent < total:
                # A second without room to write: every buffer is full.
                _, writable, _ = select.select([], [conn], [], min(1.0, deadline.remaining()))
                if not writable:
                    stalled = True
                    break
                try:
                    sent += conn.send(chunk[sent % MiB :])
                except BlockingIOError:
                    pass
            after = process.memory_info().rss
            hwmAfter = readVmHWM(proxy.pid)
            growth = after - before
            print(
                f"\nflow control: client stalled after {sent / MiB:.1f} MiB; proxy RSS "
                f"{before / MiB:.1f} -> {after / MiB:.1f} MiB (growth {growth / MiB:.2f} MiB)"
                + (
                    f"; peak RSS {hwmBefore / MiB:.1f} -> {hwmAfter / MiB:.1f} MiB"
                    if hwmBefore and hwmAfter else ""
                )
            )
            self.assertTrue(stalled, f"the client sent all {total} bytes without stalling")
            self.assertLess(growth, 16 * MiB)

            # Let the backend read: everything sent so far must arrive.
            conn.setblocking(True)
            drain.set()
            conn.shutdown(socket.SHUT_WR)
            self.assertEqual(counted.get(timeout=30), sent)
        self.assertNoHandlerErrors(backend)


class StartupIntegrationTests(_IntegrationTestCase):
    """
    Start-up problems stop twistd with a clear message and no traceback.
    """

    def takenPort(self) -> tuple[str, str]:
        """
        Hold a loopback port for the rest of the test; return the listen
        endpoint string for it and a backend endpoint string.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        return tcpListen(taken.getsockname()[1]), refusedEndpoint(self)

    def assertOneClearBindLine(self, desc: str, output: str) -> None:
        self.assertNotIn("Traceback", output)
        naming = [line for line in output.splitlines() if desc in line]
        self.assertEqual(len(naming), 1, output)
        self.assertIn("in use", naming[0].lower(), output)
        self.assertNotIn("listening on", output)

    def test_listenCannotBind(self) -> None:
        """
        A listen endpoint that cannot be bound (the port is in use) stops
        start-up of C{twistd -n}: it exits non-zero with one line naming the
        endpoint and the reason, and no Python traceback.
        """
        desc, backend = self.takenPort()
        code, output = self.runToExit(["sockproxy", "--listen", desc, "--backend", backend])
        self.assertNotEqual(code, 0, output)
        self.assertOneClearBindLine(desc, output)

    def test_listenCannotBindTwist(self) -> None:
        """
        C{twist sockproxy} stops the same way when a listen endpoint cannot
        be bound: non-zero exit, one line naming the endpoint, no traceback.
        """
        desc, backend = self.takenPort()
        code, output = self.runToExit(
            ["sockproxy", "--listen", desc, "--backend", backend], program=TWIST, daemonArgs=()
        )
        self.assertNotEqual(code, 0, output)
        self.assertOneClearBindLine(desc, output)

    def test_listenCannotBindDaemon(self) -> None:
        """
        A daemonizing C{twistd} (no C{-n}) whose listen endpoint cannot be
        bound exits non-zero, tells the user which endpoint failed and why
        (the reason is not cut off), writes no traceback to its log file,
        and leaves no pidfile behind.
        """
        desc, backend = self.takenPort()
        pidfile = os.path.join(self.tmp, "twistd.pid")
        logfile = os.path.join(self.tmp, "twistd.log")
        self.addCleanup(killFromPidfile, pidfile)
        code, output = self.runToExit(
            ["sockproxy", "--listen", desc, "--backend", backend],
            daemonArgs=(f"--pidfile={pidfile}", f"--logfile={logfile}"),
        )
        log = ""
        if os.path.exists(logfile):  # a bind error stops twistd before it opens its log
            with open(logfile, encoding="utf-8", errors="replace") as f:
                log = f.read()
        self.assertNotEqual(code, 0, output)
        self.assertFalse(os.path.exists(pidfile), "pidfile left behind")
        self.assertIn(desc, output)
        self.assertIn("in use", output.lower(), output)
        self.assertNotIn("Traceback", log, log)

    def test_badConfig(self) -> None:
        """
        A config file with several mistakes makes twistd exit non-zero with
        one line per mistake naming FILE:LINE: key, and no traceback.
        """
        bad = os.path.join(self.tmp, "bad.toml")
        with open(bad, "w", encoding="utf-8") as f:
            f.write(
                "debug = 7\n"                      # 1
                "[[proxy]]\n"                      # 2
                'listen = "tcp:0"\n'               # 3
                'balance = "no-such-balancer"\n'   # 4
                "connect_timeout = 3\n"            # 5
                "[[proxy.backend]]\n"              # 6
                "port = 99999\n"                   # 7
            )
        code, output = self.runToExit(["sockproxy", "--config", bad])
        self.assertNotEqual(code, 0, output)
        self.assertNotIn("Traceback", output)
        expected = [
            f"{bad}:1: debug:",
            f"{bad}:4: proxy[0].balance:",
            f"{bad}:5: proxy[0].connect_timeout:",
            f"{bad}:7: proxy[0].backend[0].port:",
        ]
        problems = [line for line in output.splitlines() if bad in line]
        self.assertEqual(len(problems), len(expected), output)
        for prefix in expected:
            self.assertEqual(
                len([line for line in problems if prefix in line]), 1,
                f"no single line with {prefix!r} in:\n{output}",
            )

    def test_tomlSyntaxError(self) -> None:
        """
        A config file that is not valid TOML gives one line naming FILE:LINE,
        a non-zero exit, and no traceback.
        """
        bad = os.path.join(self.tmp, "syntax.toml")
        with open(bad, "w", encoding="utf-8") as f:
            f.write('[[proxy]]\nlisten = "tcp:0"\nbalance = \n')
        code, output = self.runToExit(["sockproxy", "--config", bad])
        self.assertNotEqual(code, 0, output)
        self.assertNotIn("Traceback", output)
        problems = [line for line in output.splitlines() if bad in line]
        self.assertEqual(len(problems), 1, output)
        self.assertIn(f"{bad}:3:", problems[0])

    def test_checkGoodConfig(self) -> None:
        """
        C{--check} on a valid file prints the effective configuration (its
        listen endpoint and backends) and exits 0 without listening.
        """
        # Nothing listens: ports that refuse connections, in case it did.
        port, backendPort, other = (refusedPort(self) for _ in range(3))
        config = proxyConfig(
            self.tmp,
            [tcpListen(port)],
            [
                {"endpoint": tcpBackend(backendPort), "label": "first"},
                {"host": "127.0.0.1", "port": other},
            ],
            name="checked",
            balance="round-robin",
        )
        code, output = self.runToExit(["sockproxy", "--config", config, "--check"])
        self.assertEqual(code, 0, output)
        self.assertNotIn("Traceback", output)
        self.assertIn(tcpListen(port), output)
        self.assertIn(tcpBackend(backendPort), output)
        self.assertIn("round-robin", output)
        self.assertIn("checked", output)
        self.assertNotIn("listening on", output)


class PackagingIntegrationTests(_IntegrationTestCase):
    """
    The installed package exposes its twistd plugin, balancer plugins and .tac.
    """

    def test_serviceMakerPlugin(self) -> None:
        """
        C{getPlugins(IServiceMaker)} finds exactly one plugin with tapname
        C{sockproxy}, and it provides L{IServiceMaker}.
        """
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins
        from zope.interface.verify import verifyObject

        found = [p for p in getPlugins(IServiceMaker) if p.tapname == "sockproxy"]
        self.assertEqual(len(found), 1)
        self.assertTrue(verifyObject(IServiceMaker, found[0]))

    def test_balancerPlugins(self) -> None:
        """
        The balancer plugins found by C{getPlugins(IBalancerFactory)} include
        fair, least-connection and round-robin, each an L{IBalancerFactory}.
        """
        from twisted.plugin import getPlugins
        from zope.interface.verify import verifyObject

        from txsockproxy.interfaces import IBalancerFactory

        factories = {f.name: f for f in getPlugins(IBalancerFactory)}
        for name in ("fair", "least-connection", "round-robin"):
            self.assertIn(name, factories)
            self.assertTrue(verifyObject(IBalancerFactory, factories[name]))

    def test_twistdHelpListsPlugin(self) -> None:
        """
        C{twistd --help}, run outside the source tree, lists C{sockproxy}.
        """
        code, output = self.runToExit(["--help"], daemonArgs=())
        self.assertEqual(code, 0, output)
        self.assertIn("sockproxy", output)

    def test_twistHelp(self) -> None:
        """
        C{twist sockproxy --help} exits 0 and describes the options.
        """
        code, output = self.runToExit(["sockproxy", "--help"], program=TWIST, daemonArgs=())
        self.assertEqual(code, 0, output)
        self.assertIn("--config", output)
        self.assertIn("--listen", output)

    def test_loadTac(self) -> None:
        """
        C{loadApplication(sockproxy.tac, "python")} with C{SOCKPROXY_CONFIG}
        set gives an application whose service collection holds the proxy
        service built from that file.
        """
        from twisted.application.service import IServiceCollection, loadApplication

        from txsockproxy.service import ProxyService

        # Nothing listens (the service is not started): ports that refuse
        # connections, in case it did.
        port = refusedPort(self)
        config = proxyConfig(
            self.tmp, [tcpListen(port)], [{"endpoint": refusedEndpoint(self)}], name="tac"
        )
        old = os.environ.get("SOCKPROXY_CONFIG")
        os.environ["SOCKPROXY_CONFIG"] = config
        try:
            application = loadApplication(os.path.join(REPO, "sockproxy.tac"), "python")
        finally:
            if old is None:
                del os.environ["SOCKPROXY_CONFIG"]
            else:
                os.environ["SOCKPROXY_CONFIG"] = old
        services = [
            s for s in IServiceCollection(application) if isinstance(s, ProxyService)
        ]
        self.assertEqual(len(services), 1)
        self.assertEqual(services[0].config.source, config)
        self.assertEqual(services[0].config.proxies[0].listen, (tcpListen(port),))
        self.assertFalse(services[0].running)

    def test_twistdTacRelays(self) -> None:
        """
        C{twistd -ny sockproxy.tac} with C{SOCKPROXY_CONFIG} set relays an
        echo end to end.
        """
        backend = self.startServer(echoHandler)
        config = proxyConfig(self.tmp, [LOOPBACK], [{"endpoint": backend.endpoint}])
        proxy = self.startTwistd(
            ["-y", os.path.join(REPO, "sockproxy.tac")],
            env=self.environ(SOCKPROXY_CONFIG=config),
        )
        port = boundPort(proxy)
        payload = b"through the tac\n" * 64
        self.assertEqual(self.echoThrough(("127.0.0.1", port), payload), payload)
        self.assertNoHandlerErrors(backend)
