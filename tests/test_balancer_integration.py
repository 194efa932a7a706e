"""
Integration tests for balancers run by C{twistd sockproxy}: a third-party
balancer plugin found on C{PYTHONPATH}, and C{hash} placing TLS connections by
their SNI name.
"""

from __future__ import annotations

import os
import socket
import textwrap

from tests.integration_support import (
    LOOPBACK,
    Deadline,
    Server,
    boundPort,
    connect,
    proxyConfig,
)
from tests.test_integration import _IntegrationTestCase
from tests.test_sni import clientHello
from txsockproxy.balancers import HashBalancer
from txsockproxy.relay import ConnectionInfo
from txsockproxy.sni import NEED_MORE, parseServerName

PLUGIN = '''
"""A balancer that always picks the last available backend."""

from twisted.plugin import IPlugin
from zope.interface import implementer

from txsockproxy.interfaces import IBalancer, IBalancerFactory


@implementer(IBalancer)
class LastBalancer:
    def choose(self, candidates, connection):
        return candidates[-1]


@implementer(IPlugin, IBalancerFactory)
class LastFactory:
    name = "always-last"
    description = "the last available backend"

    def __call__(self):
        return LastBalancer()


alwaysLast = LastFactory()
'''


def labelHandler(label: bytes, received: list[bytes] | None = None):  # type: ignore[no-untyped-def]
    """
    A backend that reads the client's first message (a whole ClientHello if
    it is TLS), records it in C{received}, answers with C{label} and closes.
    """

    def handle(conn: socket.socket, server: Server) -> None:
        conn.settimeout(10)
        data = conn.recv(65536)
        while data[:1] == b"\x16" and parseServerName(data)[0] == NEED_MORE:
            more = conn.recv(65536)
            if not more:
                break
            data += more
        if received is not None:
            received.append(data)
        conn.sendall(label)
        conn.shutdown(socket.SHUT_WR)

    return handle


def ask(port: int, payload: bytes) -> bytes:
    """
    Send C{payload} to the proxy on C{port} and return the whole reply.
    """
    deadline = Deadline(10, "reply through the proxy")
    with connect(("127.0.0.1", port)) as conn:
        conn.sendall(payload)
        reply = b""
        while True:
            conn.settimeout(deadline.remaining())
            data = conn.recv(4096)
            if not data:
                return reply
            reply += data


class BalancerPluginIntegrationTests(_IntegrationTestCase):
    """
    A balancer installed as a Twisted plugin is chosen by name.
    """

    def test_pluginFromPythonPath(self) -> None:
        """
        A balancer plugin in a directory on C{PYTHONPATH} is found by the
        name written in C{balance}, and decides where connections go.
        """
        plugins = os.path.join(self.tmp, "site", "twisted", "plugins")
        os.makedirs(plugins)
        with open(os.path.join(plugins, "lastbalancer.py"), "w") as f:
            f.write(textwrap.dedent(PLUGIN))
        backends = [self.startServer(labelHandler(x)) for x in (b"A", b"B", b"C")]
        config = proxyConfig(
            self.tmp, [LOOPBACK],
            [{"endpoint": b.endpoint, "label": b.endpoint[-5:]} for b in backends],
            balance="always-last",
        )
        env = self.environ(
            PYTHONPATH=os.pathsep.join(
                [os.path.join(self.tmp, "site"), os.environ.get("PYTHONPATH", "")]
            )
        )
        port = boundPort(self.startTwistd(["sockproxy", "--config", config], env=env))
        self.assertEqual([ask(port, b"hi") for _ in range(5)], [b"C"] * 5)

    def test_unknownNameListsPlugins(self) -> None:
        """
        Without the plugin on the path, its name is a config error that
        lists the balancers available.
        """
        config = proxyConfig(
            self.tmp, [LOOPBACK], [{"endpoint": "tcp:host=127.0.0.1:port=9"}],
            balance="always-last",
        )
        code, output = self.runToExit(["sockproxy", "--config", config, "--check"])
        self.assertEqual(code, 1, output)
        self.assertIn("unknown balancer 'always-last'", output)
        for name in ("fair", "hash", "least-connection", "random-two", "round-robin", "sticky"):
            self.assertIn(name, output)
        self.assertNotIn("Traceback", output)


class HashSNIIntegrationTests(_IntegrationTestCase):
    """
    C{balance = "hash"} with C{inspect-delay} places TLS passthrough
    connections by their SNI name.
    """

    def test_sniPlacement(self) -> None:
        """
        Each SNI name goes to the backend weighted rendezvous hashing gives
        it, every time; the ClientHello reaches the backend unchanged; a
        connection that is not TLS goes where the listen address hashes.
        """
        labels = [b"A", b"B", b"C", b"D"]
        received: list[bytes] = []
        backends = [self.startServer(labelHandler(x, received)) for x in labels]
        config = proxyConfig(
            self.tmp, [LOOPBACK],
            [{"endpoint": b.endpoint} for b in backends],
            balance="hash", extra="inspect-delay = 5",
        )
        port = boundPort(self.startTwistd(["sockproxy", "--config", config]))

        class Info:
            def __init__(self, endpoint: str, label: bytes) -> None:
                self.key = endpoint
                self.label = label
                self.weight = 1
                self.active = 0

        infos = [Info(b.endpoint, x) for b, x in zip(backends, labels, strict=True)]
        balancer = HashBalancer()
        names = [f"service{i}.example" for i in range(12)]
        placed = {}
        hellos = []
        for name in names:
            hello = clientHello(name.encode())
            hellos += [hello, hello]
            expected = balancer.choose(
                infos, ConnectionInfo(None, None, name)  # type: ignore[arg-type]
            )
            for _ in range(2):
                self.assertEqual(ask(port, hello), expected.label, name)  # type: ignore[union-attr]
            placed[name] = expected.label  # type: ignore[union-attr]
        self.assertGreater(len(set(placed.values())), 1)
        self.assertEqual(sorted(received), sorted(hellos))
        plain = {ask(port, b"GET / HTTP/1.0\r\n\r\n") for _ in range(4)}
        self.assertEqual(len(plain), 1)
