"""
Helpers for txsockproxy's integration tests: run C{twistd sockproxy} as a
subprocess the way a user would, serve small backends from threads, and do
bounded client I/O on loopback.

Nothing here sleeps. Every wait is on a condition variable, an event, a
C{select()} or a socket timeout, and every loop runs under a L{Deadline}.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
TWIST = os.path.join(BIN, "twist")

# The repository under test: sockproxy.tac and examples/ live here.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# How long a proxy may take to start (interpreter start-up and plugin scan).
START_TIMEOUT = 15.0

# Set to a reactor name (select, poll, asyncio, epoll), it makes every twistd
# and twist that L{Twistd} runs use that reactor, chosen the way a user does
# (C{--reactor=NAME}): CI runs the same integration tests on each reactor.
TEST_REACTOR_VARIABLE = "TXSOCKPROXY_TEST_REACTOR"

Address = Union[tuple[str, int], str]


class Deadline:
    """
    A point in time after which a wait has failed.
    """

    def __init__(self, seconds: float, what: str = "operation") -> None:
        self.seconds = seconds
        self.what = what
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        """
        Seconds left, always more than 0.

        @raise TimeoutError: the deadline has passed.
        """
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{self.what} did not finish within {self.seconds:g}s")
        return left


def refusingSocket(case: Any) -> socket.socket:
    """
    A loopback TCP socket bound to a port of the kernel's choice and not
    listening, held until the end of C{case}: connecting to its port is
    refused, and no other process can take the port meanwhile (nor can a
    connect pick it as its source port). L{Server} can listen on it later.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    case.addCleanup(sock.close)
    sock.bind(("127.0.0.1", 0))
    return sock


def refusedPort(case: Any) -> int:
    """
    A loopback TCP port that refuses connections until the end of C{case}
    (see L{refusingSocket}).
    """
    return int(refusingSocket(case).getsockname()[1])


def refusedEndpoint(case: Any) -> str:
    """
    A loopback TCP backend endpoint that refuses connections until the end
    of C{case} (see L{refusingSocket}).
    """
    return tcpBackend(refusedPort(case))


def tcpListen(port: int) -> str:
    """
    The server endpoint string for a loopback TCP listener on C{port}.
    """
    return f"tcp:{port}:interface=127.0.0.1"


def tcpBackend(port: int) -> str:
    """
    The client endpoint string for a loopback TCP backend on C{port}.
    """
    return f"tcp:host=127.0.0.1:port={port}"


# How C{twistd sockproxy} logs each listener once it is bound: C{"proxy NAME:
# LISTEN is bound to ADDRESS"} (or C{"status: ..."}), the address being
# C{127.0.0.1:41234}, C{[::1]:41234} or C{unix:/path}.
BOUND = re.compile(r"(?P<owner>proxy \S+|status): (?P<listen>\S+) is bound to (?P<address>\S+)$")

# Where a test's proxy listens: a port of the kernel's choice on loopback,
# read back with L{boundPorts}.
LOOPBACK = "tcp:0:interface=127.0.0.1"


def tomlString(value: str) -> str:
    """
    C{value} as a TOML basic string (JSON's escapes are a subset of TOML's).
    """
    return json.dumps(value)


def reactorUnderTest() -> Optional[str]:
    """
    The reactor name that C{TXSOCKPROXY_TEST_REACTOR} asks the integration
    tests to run twistd on, or L{None} (twistd's own choice) when it is
    unset or empty.
    """
    return os.environ.get(TEST_REACTOR_VARIABLE) or None


def skipUnderTestReactor(what: str) -> None:
    """
    Skip the running test when C{TXSOCKPROXY_TEST_REACTOR} chose a reactor:
    for expectations that hold only for the reactor twistd chooses itself
    (for example the reactor class named in the start-up log).

    @param what: the expectation, for the skip message.
    @raise SkipTest: a test reactor is set.
    """
    from twisted.trial.unittest import SkipTest

    name = reactorUnderTest()
    if name is not None:
        raise SkipTest(f"{what}: twistd runs --reactor={name} ({TEST_REACTOR_VARIABLE})")


def reactorArguments(
    program: str, daemonArgs: Sequence[str], args: Sequence[str]
) -> list[str]:
    """
    The C{--reactor=NAME} option to give C{program}: one when it is twistd
    or twist, C{TXSOCKPROXY_TEST_REACTOR} is set, and the command line does
    not choose a reactor already; none otherwise.
    """
    name = reactorUnderTest()
    if name is None or os.path.basename(program) not in ("twistd", "twist"):
        return []
    for arg in (*daemonArgs, *args):
        if arg in ("-r", "--reactor") or arg.startswith("--reactor="):
            return []
    return [f"--reactor={name}"]


class Twistd:
    """
    A C{twistd} (or C{twist}) subprocess, its merged stdout and stderr read
    line by line on a thread, so that tests can wait for a log line.

    When C{TXSOCKPROXY_TEST_REACTOR} is set, twistd and twist get
    C{--reactor=NAME} after C{daemonArgs}, before C{args} (the subcommand).

    @ivar lines: every output line so far, without line endings.
    """

    def __init__(
        self,
        args: Sequence[str],
        cwd: str,
        env: Optional[dict[str, str]] = None,
        program: str = TWISTD,
        daemonArgs: Sequence[str] = ("-n", "--pidfile=", "--logfile=-"),
    ) -> None:
        self.argv = [program, *daemonArgs, *reactorArguments(program, daemonArgs, args), *args]
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self.process = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def output(self) -> str:
        """
        Everything the process printed so far.
        """
        with self._cond:
            return "\n".join(self.lines)

    def matching(self, text: str) -> list[str]:
        """
        The output lines so far that contain C{text}.
        """
        with self._cond:
            return [line for line in self.lines if text in line]

    def waitFor(self, text: str, count: int = 1, timeout: float = 10.0) -> list[str]:
        """
        Wait until C{count} output lines contain C{text}.

        @return: those lines.
        @raise AssertionError: the process ended, or C{timeout} passed, first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self.lines if text in line]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "exited" if self._eof else f"did not log it within {timeout:g}s"
                    raise AssertionError(
                        f"waiting for {count} line(s) containing {text!r}: "
                        f"{' '.join(self.argv)} {why}; output:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(left)

    def waitForExit(self, timeout: float = 15.0) -> int:
        """
        Wait for the process to exit on its own and for all its output.

        @return: its exit status.
        """
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{' '.join(self.argv)} still running after {timeout:g}s; output:\n"
                + self.output
            ) from None
        self._reader.join(timeout)
        return code

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """
        End the process (SIGTERM, then SIGKILL) and collect its output.
        Safe to call more than once.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self._reader.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


def boundAddresses(proxy: Twistd, count: int) -> list[tuple[str, str, str]]:
    """
    Wait for C{count} listeners of C{proxy} to log the address they are
    bound to; return (owner, listen, address) of each, in log order.
    """
    lines = proxy.waitFor(" is bound to ", count=count, timeout=START_TIMEOUT)
    found = []
    for line in lines:
        match = BOUND.search(line)
        assert match is not None, line
        found.append((match["owner"], match["listen"], match["address"]))
    return found


def boundPorts(proxy: Twistd, count: int = 1) -> list[int]:
    """
    Wait for C{count} listeners of C{proxy} to log the address they are
    bound to; return the port of each (all TCP), in log order: the proxies'
    listeners in the order of the config, then the status endpoint's.
    """
    ports = []
    for _, _, address in boundAddresses(proxy, count)[:count]:
        host, _, port = address.rpartition(":")
        assert host and port.isdigit(), address
        ports.append(int(port))
    return ports


def boundPort(proxy: Twistd) -> int:
    """
    The port that C{proxy}'s only (or first) TCP listener is bound to.
    """
    return boundPorts(proxy, 1)[0]


Handler = Callable[[socket.socket, "Server"], None]


class Server:
    """
    A loopback TCP or unix-socket server on threads: one thread accepts, and
    each connection runs C{handler(conn, server)} on a thread of its own.

    @ivar accepted: connections accepted so far.
    @ivar errors: exceptions raised by handlers (a test asserts it is empty).
    @ivar stopped: set when the server is stopped; handlers that wait for
        the end of the test wait on it.
    """

    def __init__(
        self,
        handler: Handler,
        unixPath: Optional[str] = None,
        port: int = 0,
        bound: Optional[socket.socket] = None,
    ) -> None:
        self.handler = handler
        self.accepted = 0
        self.errors: list[BaseException] = []
        self.stopped = threading.Event()
        self._cond = threading.Condition()
        self._connections: list[socket.socket] = []
        if bound is not None:
            # A socket bound already (L{refusingSocket}): listening on it
            # brings a refused backend back on the same port.
            self.socket = bound
            self.port = int(bound.getsockname()[1])
            self.address = ("127.0.0.1", self.port)
            self.endpoint = tcpBackend(self.port)
        elif unixPath is not None:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.socket.bind(unixPath)
            self.address: Address = unixPath
            self.endpoint = f"unix:{unixPath}"
        else:
            self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(("127.0.0.1", port))
            self.port = int(self.socket.getsockname()[1])
            self.address = ("127.0.0.1", self.port)
            self.endpoint = tcpBackend(self.port)
        self.socket.listen(128)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.socket.accept()
            except OSError:
                return  # stop() shut the listening socket down
            conn.settimeout(30)
            with self._cond:
                if self.stopped.is_set():
                    conn.close()
                    return
                self.accepted += 1
                self._connections.append(conn)
                self._cond.notify_all()
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self.handler(conn, self)
        except BaseException as e:
            if not self.stopped.is_set():
                self.errors.append(e)
        finally:
            conn.close()

    def waitForAccepted(self, count: int, timeout: float = 10.0) -> None:
        """
        Wait until C{count} connections have been accepted.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self.accepted >= count, timeout):
                raise AssertionError(
                    f"backend accepted {self.accepted} connection(s), expected {count}"
                )

    def stop(self) -> None:
        """
        Stop accepting and break every open connection; safe to call twice.
        """
        if self.stopped.is_set():
            return
        self.stopped.set()
        try:
            # Wakes the thread blocked in accept() (Linux returns EINVAL).
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.socket.close()
        self._thread.join(5)
        with self._cond:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def recvAll(conn: socket.socket, deadline: Deadline) -> bytes:
    """
    Read from C{conn} until EOF.
    """
    chunks = []
    while True:
        conn.settimeout(deadline.remaining())
        data = conn.recv(262144)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def recvExactly(conn: socket.socket, size: int, deadline: Deadline) -> bytes:
    """
    Read exactly C{size} bytes from C{conn}.

    @raise EOFError: the connection ended first.
    """
    chunks = []
    got = 0
    while got < size:
        conn.settimeout(deadline.remaining())
        data = conn.recv(min(262144, size - got))
        if not data:
            raise EOFError(f"EOF after {got} of {size} bytes")
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def echoHandler(conn: socket.socket, server: Server) -> None:
    """
    Send back everything received; on EOF, shut the write side down too.
    """
    while True:
        data = conn.recv(262144)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)


def connect(address: Address, timeout: float = 10.0) -> socket.socket:
    """
    A blocking client socket connected to C{address} (a host/port pair or a
    unix socket path), with a timeout on every operation.
    """
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    conn = socket.socket(family, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    conn.connect(address)
    return conn


def exchange(
    conn: socket.socket, payload: bytes, deadline: Deadline, shutdown: bool = True
) -> bytes:
    """
    Send C{payload} while reading whatever comes back, then (if C{shutdown})
    shut the write side down, and read until EOF.

    Sending and reading at once is what lets an echo of several MiB through:
    a client that only sent would stall once every buffer on the way is full.

    @return: everything received before EOF.
    """
    conn.setblocking(False)
    view = memoryview(payload)
    sent = 0
    received: list[bytes] = []
    writing = True
    if not payload and shutdown:
        conn.shutdown(socket.SHUT_WR)
        writing = False
    try:
        while True:
            wanted = [conn] if writing else []
            readable, writable, _ = select.select([conn], wanted, [], deadline.remaining())
            if readable:
                data = conn.recv(262144)
                if not data:
                    if writing:
                        raise AssertionError(
                            f"EOF from the proxy after sending {sent} of {len(payload)} bytes"
                        )
                    return b"".join(received)
                received.append(data)
            if writable:
                try:
                    sent += conn.send(view[sent : sent + 262144])
                except BlockingIOError:
                    pass
                if sent == len(payload):
                    writing = False
                    if shutdown:
                        conn.shutdown(socket.SHUT_WR)
                    else:
                        return b"".join(received)
    finally:
        conn.setblocking(True)


def proxyConfig(
    tmp: str,
    listen: Sequence[str],
    backends: Sequence[dict[str, Any]],
    name: str = "test",
    balance: Optional[str] = None,
    debug: int = 0,
    extra: str = "",
    filename: str = "sockproxy.toml",
) -> str:
    """
    Write a one-proxy TOML configuration under C{tmp}.

    @param backends: the keys of each C{[[proxy.backend]]} table.
    @param extra: more C{[[proxy]]} keys, as TOML lines.
    @return: the file's path.
    """
    lines = [f"debug = {debug}", "", "[[proxy]]", f"name = {tomlString(name)}"]
    lines.append("listen = [" + ", ".join(tomlString(desc) for desc in listen) + "]")
    if balance is not None:
        lines.append(f"balance = {tomlString(balance)}")
    if extra:
        lines.append(extra)
    for backend in backends:
        lines.append("")
        lines.append("[[proxy.backend]]")
        for key, value in backend.items():
            rendered = tomlString(value) if isinstance(value, str) else repr(value)
            lines.append(f"{key} = {rendered}")
    path = os.path.join(tmp, filename)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def readVmHWM(pid: int) -> Optional[int]:
    """
    The peak resident set size of process C{pid} in bytes (Linux), if known.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def assertRefused(port: int, seconds: float = 2.0) -> None:
    """
    Assert that loopback C{port} refuses connections, within C{seconds}.

    Twisted logs "(TCP Port N Closed)" just before it closes the listening
    socket, so a connect right after that line may still be accepted by the
    kernel, or be reset as the socket closes with it in its queue; and a
    connect to a free ephemeral port can, rarely, pick that same port as its
    source and connect to itself. All are retried, under the deadline.
    """
    deadline = Deadline(seconds, f"127.0.0.1:{port} to refuse connections")
    while True:
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # remaining() raises TimeoutError once the deadline has passed.
        conn.settimeout(deadline.remaining())
        try:
            conn.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return
        except ConnectionResetError:
            pass  # in the closing socket's queue: try again
        finally:
            conn.close()
