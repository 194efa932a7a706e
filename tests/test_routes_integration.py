"""
Integration tests of routing TLS passthrough by server name: a C{twistd
sockproxy} subprocess on loopback, TLS backends that terminate TLS
themselves, and TLS clients (Python's C{ssl} with C{server_hostname}).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl

from tests.fakes import certificate
from tests.integration_support import (
    LOOPBACK,
    Deadline,
    Handler,
    Server,
    boundPort,
    recvAll,
    tomlString,
)
from tests.test_integration import _IntegrationTestCase
from tests.test_sni import clientHello


def tlsHandler(name: bytes, certFile: str) -> Handler:
    """
    A backend that terminates TLS and answers C{NAME:} and what it got.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certFile)

    def handle(conn: socket.socket, server: Server) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            data = tls.recv(100)
            tls.sendall(name + b":" + data)

    return handle


def recordingHandler(received: list[bytes]) -> Handler:
    """
    A backend that records everything a connection sends until its EOF,
    and then answers C{done}.
    """

    def handle(conn: socket.socket, server: Server) -> None:
        received.append(recvAll(conn, Deadline(10, "the client's bytes")))
        conn.sendall(b"done")
        conn.shutdown(socket.SHUT_WR)

    return handle


def askOverTLS(port: int, serverName: str) -> bytes:
    """
    Connect to C{port} with TLS and SNI C{serverName}, send C{ping} and
    return the backend's answer.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = Deadline(10, f"an answer for {serverName}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=serverName) as tls:
            tls.sendall(b"ping")
            answer = b""
            while b":" not in answer or not answer.endswith(b"ping"):
                tls.settimeout(deadline.remaining())
                chunk = tls.recv(100)
                if not chunk:
                    break
                answer += chunk
            return answer


class RoutesIntegrationTests(_IntegrationTestCase):
    """
    C{[[proxy.route]]} with a real C{twistd sockproxy}.
    """

    def writeConfig(self, routes: list[tuple[str, list[str], str]], default: str) -> str:
        """
        Write a config with one proxy on loopback, C{default} as its own
        backend and C{routes} as (name, patterns, backend endpoint).
        """
        lines = [
            'session-log = "log"',
            "[[proxy]]", 'name = "tls"', f"listen = {tomlString(LOOPBACK)}",
            "inspect-delay = 2",
            "[[proxy.backend]]", f"endpoint = {tomlString(default)}", 'label = "fallback"',
        ]
        for name, patterns, endpoint in routes:
            lines += [
                "[[proxy.route]]", f"name = {tomlString(name)}",
                "names = [" + ", ".join(tomlString(p) for p in patterns) + "]",
                "[[proxy.route.backend]]", f"endpoint = {tomlString(endpoint)}",
                f"label = {tomlString(name + '-1')}",
            ]
        path = os.path.join(self.tmp, "routes.toml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def setUp(self) -> None:
        super().setUp()
        self.certFile = os.path.join(self.tmp, "server.pem")
        with open(self.certFile, "wb") as f:
            f.write(certificate())
        self.received: list[bytes] = []
        self.api = self.startServer(tlsHandler(b"api", self.certFile))
        self.web = self.startServer(tlsHandler(b"web", self.certFile))
        self.fallback = self.startServer(tlsHandler(b"default", self.certFile))
        self.raw = self.startServer(recordingHandler(self.received))

    def routes(self, swapped: bool = False) -> list[tuple[str, list[str], str]]:
        api, web = (self.web, self.api) if swapped else (self.api, self.web)
        return [
            ("api", ["api.example.com"], api.endpoint),
            ("web", ["*.example.org"], web.endpoint),
            ("raw", ["raw.example.net"], self.raw.endpoint),
        ]

    def test_routedByServerName(self) -> None:
        """
        TLS clients reach the backend of the route their server name
        matches (exact, or by wildcard, in any case); an unknown name and
        no name at all reach the default backend; each session's route is
        in the session log.
        """
        proxy = self.startProxy(self.writeConfig(self.routes(), self.fallback.endpoint))
        port = boundPort(proxy)
        self.assertEqual(askOverTLS(port, "api.example.com"), b"api:ping")
        self.assertEqual(askOverTLS(port, "WWW.Example.ORG"), b"web:ping")
        self.assertEqual(askOverTLS(port, "a.b.example.org"), b"web:ping")
        self.assertEqual(askOverTLS(port, "unknown.example.com"), b"default:ping")
        self.assertEqual(askOverTLS(port, "127.0.0.1"), b"default:ping")  # no SNI for an IP
        lines = proxy.waitFor("route=", count=5)
        self.assertEqual(sorted(line.rsplit("route=", 1)[1] for line in lines),
                         ["api", "default", "default", "web", "web"])
        self.assertEqual(proxy.matching("Traceback"), [])
        self.assertNoHandlerErrors(self.api, self.web, self.fallback)

    def test_clientHelloDeliveredByteForByte(self) -> None:
        """
        The ClientHello a route was chosen by reaches the backend exactly as
        the client sent it, followed by what came after; a client that is
        not TLS goes to the default backend.
        """
        proxy = self.startProxy(self.writeConfig(self.routes(), self.raw.endpoint))
        port = boundPort(proxy)
        hello = clientHello(b"raw.example.net")
        sent = hello + b"and then some"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            # In pieces, the first smaller than a record header.
            for piece in (sent[:3], sent[3:40], sent[40:]):
                client.sendall(piece)
            client.shutdown(socket.SHUT_WR)
            self.assertEqual(recvAll(client, Deadline(10, "the answer")), b"done")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"SSH-2.0-test\r\n")
            client.shutdown(socket.SHUT_WR)
            self.assertEqual(recvAll(client, Deadline(10, "the answer")), b"done")
        self.assertEqual(self.received, [sent, b"SSH-2.0-test\r\n"])
        lines = proxy.waitFor("route=", count=2)
        self.assertEqual([line.rsplit("route=", 1)[1] for line in lines], ["raw", "default"])
        self.assertNoHandlerErrors(self.raw)

    def test_partialHelloGoesToDefault(self) -> None:
        """
        A client that sends part of a ClientHello and waits is sent to the
        default backend after inspect-delay, with the part it sent.
        """
        proxy = self.startProxy(self.writeConfig(self.routes(), self.raw.endpoint))
        port = boundPort(proxy)
        part = clientHello(b"api.example.com")[:30]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(part)
            self.raw.waitForAccepted(1, timeout=10)
            client.shutdown(socket.SHUT_WR)
            self.assertEqual(recvAll(client, Deadline(10, "the answer")), b"done")
        self.assertEqual(self.received, [part])
        self.assertEqual(self.api.accepted, 0)

    def test_reloadChangesRoutes(self) -> None:
        """
        After SIGHUP with the routes' backends swapped, new sessions follow
        the new routes.
        """
        path = self.writeConfig(self.routes(), self.fallback.endpoint)
        proxy = self.startProxy(path)
        port = boundPort(proxy)
        self.assertEqual(askOverTLS(port, "api.example.com"), b"api:ping")
        self.writeConfig(self.routes(swapped=True), self.fallback.endpoint)
        proxy.process.send_signal(signal.SIGHUP)
        proxy.waitFor("reload: applied")
        self.assertEqual(askOverTLS(port, "api.example.com"), b"web:ping")
        self.assertEqual(askOverTLS(port, "x.example.org"), b"api:ping")
        self.assertEqual(proxy.matching("Traceback"), [])

