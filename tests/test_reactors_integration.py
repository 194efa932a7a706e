"""
Integration tests: C{twistd sockproxy} relays on each of Twisted's reactors
that a user can name with C{twistd --reactor=NAME} (select, poll, asyncio,
epoll), with the accelerator off; and C{TXSOCKPROXY_TEST_REACTOR}, with which
CI runs the other integration tests on one of them, does reach twistd.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any, Optional, cast

from twisted.application.reactors import getReactorTypes
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.integration_support import (
    TEST_REACTOR_VARIABLE,
    TWIST,
    TWISTD,
    Deadline,
    Server,
    connect,
    exchange,
    reactorArguments,
    reactorUnderTest,
    recvAll,
    tcpListen,
)
from tests.test_integration import _IntegrationTestCase

MiB = 1024 * 1024

# The reactors the portable path is tested on (see doc/deployment.md).
REACTORS = ("select", "poll", "asyncio", "epoll")


def reactorModule(name: str) -> str:
    """
    The module of Twisted's reactor plugin C{name}, as in
    C{twistd --help-reactors}.

    @raise SkipTest: no such reactor here.
    """
    for installer in getReactorTypes():
        if installer.shortName == name:
            return str(cast(Any, installer).moduleName)
    raise SkipTest(f"no reactor named {name!r} here")


class ReactorArgumentsTests(SynchronousTestCase):
    """
    L{reactorArguments} gives twistd and twist C{--reactor=NAME} when
    C{TXSOCKPROXY_TEST_REACTOR} names a reactor, and nothing otherwise.
    """

    def withVariable(self, value: Optional[str]) -> None:
        environ = {k: v for k, v in os.environ.items() if k != TEST_REACTOR_VARIABLE}
        if value is not None:
            environ[TEST_REACTOR_VARIABLE] = value
        self.patch(os, "environ", environ)

    def test_unset(self) -> None:
        """
        Unset or empty, the variable adds no option: twistd chooses.
        """
        for value in (None, ""):
            self.withVariable(value)
            self.assertIsNone(reactorUnderTest())
            self.assertEqual(reactorArguments(TWISTD, (), ["sockproxy"]), [])

    def test_twistdAndTwist(self) -> None:
        """
        Set, it gives twistd and twist the option naming that reactor.
        """
        self.withVariable("select")
        self.assertEqual(reactorUnderTest(), "select")
        for program in (TWISTD, TWIST, "twistd"):
            self.assertEqual(
                reactorArguments(program, ("-n",), ["sockproxy"]), ["--reactor=select"]
            )

    def test_otherPrograms(self) -> None:
        """
        Programs other than twistd and twist (lighttpd, say) get nothing.
        """
        self.withVariable("poll")
        self.assertEqual(reactorArguments("/usr/sbin/lighttpd", ("-D",), []), [])

    def test_commandLineChoosesFirst(self) -> None:
        """
        A command line that names a reactor itself keeps it.
        """
        self.withVariable("poll")
        for daemonArgs, args in [
            (("--reactor=epoll",), ["sockproxy"]),
            (("-r", "epoll"), ["sockproxy"]),
            ((), ["--reactor", "epoll", "sockproxy"]),
        ]:
            self.assertEqual(reactorArguments(TWISTD, daemonArgs, args), [])


class ReactorRelayIntegrationTests(_IntegrationTestCase):
    """
    On each reactor, with C{TXSOCKPROXY_FASTPATH=off}, C{twistd sockproxy}
    runs on the reactor named and relays bytes exactly, with half-close in
    both directions.
    """

    def relayOn(self, name: str) -> None:
        """
        Run C{twistd --reactor=NAME sockproxy} in front of a backend that
        reads the client's 4 MiB up to its FIN, then answers with their
        digest and 4 MiB of its own and shuts its write side.
        """
        module = reactorModule(name)
        reply = os.urandom(4 * MiB)

        def handler(conn: socket.socket, server: Server) -> None:
            data = recvAll(conn, Deadline(30, "the client's bytes"))
            conn.sendall(hashlib.sha256(data).digest() + reply)
            conn.shutdown(socket.SHUT_WR)

        backend = self.startServer(handler)
        # Port 0: the proxy's port is the one it logs having bound.
        process = self.startTwistd(
            ["sockproxy", "--listen", tcpListen(0), "--backend", backend.endpoint],
            env=self.environ(TXSOCKPROXY_FASTPATH="off"),
            daemonArgs=("-n", "--pidfile=", "--logfile=-", f"--reactor={name}"),
        )
        [line] = process.waitFor("reactor class:")
        self.assertIn(f"reactor class: {module}.", line)
        port = int(process.waitFor("ProxyFactory starting on ")[0].rsplit(" ", 1)[1])
        payload = os.urandom(4 * MiB)
        with connect(("127.0.0.1", port)) as conn:
            received = exchange(conn, payload, Deadline(30, f"relay on {name}"))
        self.assertEqual(received[:32], hashlib.sha256(payload).digest())
        self.assertTrue(received[32:] == reply, "the backend's bytes arrived altered")
        self.assertNoHandlerErrors(backend)
        self.assertEqual(process.matching("Traceback"), [])

    def test_select(self) -> None:
        """
        C{--reactor=select}.
        """
        self.relayOn("select")

    def test_poll(self) -> None:
        """
        C{--reactor=poll}.
        """
        self.relayOn("poll")

    def test_asyncio(self) -> None:
        """
        C{--reactor=asyncio}.
        """
        self.relayOn("asyncio")

    def test_epoll(self) -> None:
        """
        C{--reactor=epoll} (Twisted's own epoll reactor).
        """
        self.relayOn("epoll")


class ReactorVariableIntegrationTests(_IntegrationTestCase):
    """
    C{TXSOCKPROXY_TEST_REACTOR} reaches the twistd and twist that the
    integration tests run, so a CI step run with it tests that reactor and
    not the default one.
    """

    def setUp(self) -> None:
        name = reactorUnderTest()
        if name is None:
            raise SkipTest(f"{TEST_REACTOR_VARIABLE} is not set")
        self.module = reactorModule(name)
        super().setUp()

    def test_twistd(self) -> None:
        """
        A twistd started as the integration tests start it runs that reactor.
        """
        process = self.startTwistd(
            ["sockproxy", "--listen", tcpListen(0), "--backend", "tcp:host=127.0.0.1:port=1"]
        )
        [line] = process.matching("reactor class:")
        self.assertIn(f"reactor class: {self.module}.", line)

    def test_twist(self) -> None:
        """
        A twist started as the integration tests start it runs that reactor:
        twist does not log it, but the epoll and asyncio reactors hold an
        epoll instance and the select and poll reactors none.
        """
        name = reactorUnderTest()
        if name not in REACTORS:
            raise SkipTest(f"no epoll expectation for the {name} reactor")
        process = self.startTwistd(
            ["sockproxy", "--listen", tcpListen(0), "--backend", "tcp:host=127.0.0.1:port=1"],
            program=TWIST,
            daemonArgs=("--log-format=text",),
        )
        process.waitFor("Starting reactor")
        self.assertEqual(epollInstances(process.pid) > 0, name in ("epoll", "asyncio"))


def epollInstances(pid: int) -> int:
    """
    How many epoll instances process C{pid} holds open (Linux).
    """
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[eventpoll]":
                count += 1
        except OSError:
            pass  # closed meanwhile
    return count
