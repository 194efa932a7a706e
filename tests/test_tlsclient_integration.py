"""
Integration tests of TLS to backends (L{txsockproxy.tlsclient}):
C{twistd sockproxy} as a subprocess, TLS backends served by Python's C{ssl}
on threads with certificates of a CA made for the test (L{tests.pki}).

A backend whose certificate does not verify, whose handshake fails or
times out, is a failed connect: the client is served by the next backend,
the bad one is disabled and counted in C{failed}, and the log says why.
Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from typing import Any, Optional

from tests.integration_support import (
    LOOPBACK,
    Deadline,
    Server,
    Twistd,
    boundAddresses,
    connect,
    exchange,
    tomlString,
)
from tests.pki import Authority, Issued, serverContext, tlsEchoHandler
from tests.test_integration import _IntegrationTestCase

# A disable-time longer than a test: a bad backend fails once, then stays
# out of rotation, so that counts and log lines are exact.
LONG = 600


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return tomlString(value)
    return repr(value)


def silentHandler(conn: Any, server: Server) -> None:
    """
    Accept and never answer (a backend that hangs in the TLS handshake).
    """
    server.stopped.wait(30)


class TLSBackendIntegrationTests(_IntegrationTestCase):
    """
    TLS backends through C{twistd sockproxy}, with the accelerator on (its
    default, C{auto}) and off: the relay paths share the TLS endpoint.
    """

    def setUp(self) -> None:
        super().setUp()
        self.ca = Authority()
        self.caFile = self.ca.writeCA(self.tmp)

    def tlsServer(
        self,
        issued: Issued,
        clientCA: Optional[str] = None,
        maximum: Optional[ssl.TLSVersion] = None,
    ) -> Server:
        context = serverContext(issued, self.tmp, clientCA)
        if maximum is not None:
            context.maximum_version = maximum
        return self.startServer(tlsEchoHandler(context))

    def startTLSProxy(
        self, proxies: list[tuple[str, list[dict[str, Any]]]], accelerator: str
    ) -> tuple[Twistd, dict[str, int], int]:
        """
        Start a proxy per C{(name, backends)} (balance fair: the first
        backend is tried first) and the status site.

        @return: the process, each proxy's port by name, the status port.
        """
        lines = [f"accelerator = {_toml(accelerator)}", "",
                 "[status]", f"listen = [{_toml(LOOPBACK)}]"]
        for name, backends in proxies:
            lines += ["", "[[proxy]]", f"name = {_toml(name)}", f"listen = [{_toml(LOOPBACK)}]"]
            for backend in backends:
                lines += ["", "[[proxy.backend]]"]
                lines += [f"{key} = {_toml(value)}" for key, value in backend.items()]
        path = os.path.join(self.tmp, "tls.toml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        proxy = self.startProxy(path, readyCount=len(proxies))
        ports: dict[str, int] = {}
        status = 0
        for owner, _, address in boundAddresses(proxy, len(proxies) + 1):
            port = int(address.rsplit(":", 1)[1])
            if owner == "status":
                status = port
            else:
                ports[owner.split(" ", 1)[1]] = port
        return proxy, ports, status

    def backendTable(self, server: Server, label: str, **keys: Any) -> dict[str, Any]:
        table: dict[str, Any] = {
            "endpoint": server.endpoint, "label": label, "tls": True,
            "tls-ca": self.caFile, "disable-time": LONG,
        }
        table.update(keys)
        return table

    def status(self, port: int) -> dict[str, dict[str, Any]]:
        """
        Each proxy's C{/status.json} entry, by name.
        """
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=10) as reply:
            document = json.load(reply)
        return {p["name"]: p for p in document["proxies"]}

    def waitIdle(self, port: int) -> dict[str, dict[str, Any]]:
        """
        Wait (bounded) until no session is open, as the status site says.
        """
        deadline = Deadline(10, "sessions to end")
        while True:
            proxies = self.status(port)
            if all(p["active"] == 0 for p in proxies.values()):
                return proxies
            deadline.remaining()

    def echo(self, port: int, payload: bytes) -> bytes:
        with connect(("127.0.0.1", port)) as conn:
            return exchange(conn, payload, Deadline(10, "echo through the proxy"))

    def checkFailover(self, accelerator: str) -> None:
        good = self.tlsServer(self.ca.issue())
        cases = {
            "expired": (
                self.tlsServer(self.ca.issue(expired=True)), {},
                "TLS certificate verify failed: certificate has expired",
            ),
            "unknown-ca": (
                self.tlsServer(Authority("another CA").issue()), {},
                "TLS certificate verify failed: not signed by a trusted CA",
            ),
            "wrong-host": (
                self.tlsServer(self.ca.issue(names=("db.example",))), {},
                "TLS certificate does not match the name: not valid for '127.0.0.1'",
            ),
            "no-alt-names": (
                self.tlsServer(self.ca.issue(names=("127.0.0.1",), alternativeNames=False)), {},
                "TLS certificate is not valid for '127.0.0.1'",
            ),
            "wrong-name": (
                self.tlsServer(self.ca.issue()), {"tls-name": "db.example"},
                "TLS certificate does not match the name: not valid for 'db.example'",
            ),
            "client-cert": (
                self.tlsServer(self.ca.issue(), clientCA=self.caFile,
                               maximum=ssl.TLSVersion.TLSv1_2), {},
                "TLS handshake failed:",
            ),
            "old-version": (
                self.tlsServer(self.ca.issue(), maximum=ssl.TLSVersion.TLSv1_2),
                {"tls-min-version": "1.3"}, "TLS handshake failed:",
            ),
            "timeout": (
                self.startServer(silentHandler), {"connect-timeout": 0.5},
                "TLS handshake timeout",
            ),
        }
        proxies = [
            (name, [self.backendTable(bad, "bad", **keys), self.backendTable(good, "good")])
            for name, (bad, keys, _) in cases.items()
        ]
        proxy, ports, statusPort = self.startTLSProxy(proxies, accelerator)
        payload = b"through TLS\n" * 20000
        for name in cases:
            for i in range(3):
                self.assertEqual(self.echo(ports[name], payload), payload, f"{name} #{i}")
        status = self.waitIdle(statusPort)
        proxy.stop()
        for name, (_, _, why) in cases.items():
            backends = {b["label"]: b for b in status[name]["backends"]}
            self.assertEqual(backends["bad"]["failed"], 1, name)
            self.assertEqual(backends["bad"]["state"], "failing", name)
            self.assertIn(why, backends["bad"]["last_error"], name)
            self.assertEqual(backends["good"]["connected"], 3, name)
            self.assertEqual(backends["good"]["failed"], 0, name)
            logged = proxy.matching(f"proxy {name}: connecting to backend bad")
            self.assertEqual(len(logged), 1, proxy.output)
            self.assertIn(why, logged[0])
            self.assertIn(f"disabled for {LONG}", logged[0])
        self.assertEqual(proxy.matching("Unhandled Error"), [], proxy.output)
        # Not even Twisted's for the certificate without subjectAltName
        # (service_identity's CertificateError raised in its own check).
        self.assertEqual(proxy.matching("Traceback"), [], proxy.output)
        self.assertEqual(proxy.matching("shutting down: waiting"), [], proxy.output)
        self.assertNoHandlerErrors(good)

    def test_failoverAcceleratorOn(self) -> None:
        """
        With the accelerator on, a TLS backend whose certificate has expired,
        is of an unknown CA, for another name or without subjectAltName
        (which Twisted accepts for any name), whose server wants a client
        certificate, speaks too old a TLS or never finishes its handshake, is
        failed over: the client gets the good backend's bytes, the bad one
        is disabled, counted in C{failed} once, and logged once saying why;
        nothing is logged as unhandled, and no session is left at shutdown.
        """
        self.checkFailover("auto")

    def test_failoverAcceleratorOff(self) -> None:
        """
        The same with the accelerator off (C{accelerator = "off"}).
        """
        self.checkFailover("off")

    def checkGood(self, accelerator: str) -> None:
        mutual = self.ca.issue(names=("proxy.client",), client=True)
        clientCert, clientKey = mutual.write(self.tmp, "client")
        plain = self.tlsServer(self.ca.issue())
        needsClient = self.tlsServer(self.ca.issue(), clientCA=self.caFile)
        cadir = os.path.join(self.tmp, "cas")
        os.mkdir(cadir)
        self.ca.writeCA(cadir)
        proxies = [
            ("tls-key", [self.backendTable(plain, "good")]),
            ("mutual", [self.backendTable(needsClient, "good", **{
                "tls-cert": clientCert, "tls-key": clientKey, "tls-min-version": "1.3",
            })]),
            ("tls-string", [{
                "endpoint": f"tls:host=127.0.0.1:port={plain.port}:trustRoots={cadir}",
                "label": "good",
            }]),
        ]
        proxy, ports, statusPort = self.startTLSProxy(proxies, accelerator)
        payload = os.urandom(3 * 1024 * 1024)
        for name, _ in proxies:
            self.assertEqual(self.echo(ports[name], payload), payload, name)
            self.assertEqual(self.echo(ports[name], b""), b"", name)
        status = self.waitIdle(statusPort)
        proxy.stop()
        for name, _ in proxies:
            [backend] = status[name]["backends"]
            self.assertEqual((backend["connected"], backend["failed"]), (2, 0), name)
            self.assertEqual(backend["bytes_in"], len(payload), name)
        self.assertEqual(proxy.matching("Unhandled Error"), [], proxy.output)
        self.assertEqual(proxy.matching("Traceback"), [], proxy.output)
        self.assertEqual(proxy.matching("shutting down: waiting"), [], proxy.output)
        self.assertNoHandlerErrors(plain, needsClient)

    def test_goodBackendsAcceleratorOn(self) -> None:
        """
        With the accelerator on, a client gets 3 MiB echoed through a TLS
        backend (C{tls = true} and C{tls-ca}; with a client certificate to a
        server that requires one; and a C{tls:} endpoint string), its
        half-close is relayed as the end of the TLS stream, and the proxy
        logs nothing unhandled and has no session left at shutdown.
        """
        self.checkGood("auto")

    def test_goodBackendsAcceleratorOff(self) -> None:
        """
        The same with the accelerator off (C{accelerator = "off"}).
        """
        self.checkGood("off")

    def test_sendProxyBeforeHandshake(self) -> None:
        """
        A TLS backend with C{send-proxy = "v1"} gets the PROXY protocol
        header first, in clear, then the handshake (as nginx's C{listen ...
        ssl proxy_protocol} and HAProxy's C{accept-proxy ssl} expect), with
        the accelerator on and off.
        """
        for accelerator in ("auto", "off"):
            headers: list[bytes] = []
            context = serverContext(self.ca.issue(), self.tmp)
            echo = tlsEchoHandler(context)

            def handler(
                conn: Any, server: Server, headers: list[bytes] = headers, echo: Any = echo
            ) -> None:
                header = b""
                while not header.endswith(b"\r\n") and len(header) < 108:
                    byte = conn.recv(1)
                    if not byte:
                        return
                    header += byte
                headers.append(header)
                echo(conn, server)

            backend = self.startServer(handler)
            proxy, ports, _ = self.startTLSProxy(
                [("pp", [self.backendTable(backend, "b", **{"send-proxy": "v1"})])], accelerator
            )
            with connect(("127.0.0.1", ports["pp"])) as client:
                received = exchange(client, b"inside TLS", Deadline(10, "the echo"))
                self.assertEqual(received, b"inside TLS")
                port = client.getsockname()[1]
            self.assertEqual(len(headers), 1)
            self.assertTrue(
                headers[0].startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 %d " % port), headers
            )
            proxy.stop()
