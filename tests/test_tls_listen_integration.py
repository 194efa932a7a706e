"""
Integration tests of TLS termination on a proxy's own listeners (the
C{tls-*} keys): C{twistd sockproxy} as a subprocess on loopback, clients
made with Python's C{ssl}, certificates made in the test.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import ssl
import time

from tests.integration_support import (
    Deadline,
    Server,
    boundPort,
    echoHandler,
    proxyConfig,
    recvAll,
    refusedEndpoint,
    tomlString,
)
from tests.test_integration import _IntegrationTestCase
from tests.tls_support import Issued, clientContext, issue, served


class TLSListenerIntegrationTests(_IntegrationTestCase):
    """
    A C{tcp:} listener with C{tls-certificates} terminates TLS, chooses the
    certificate by SNI, picks up new files on SIGHUP, checks client
    certificates, and refuses old TLS versions.
    """

    def startTLSProxy(
        self, backend: Server, pairs: list[tuple[str, str]], extra: str = "", debug: int = 0
    ) -> tuple[int, str]:
        certificates = ", ".join(
            f"{{cert = {tomlString(cert)}, key = {tomlString(key)}}}" for cert, key in pairs
        )
        lines = f"tls-certificates = [{certificates}]\n{extra}".rstrip()
        self.config = proxyConfig(
            self.tmp, ["tcp:0:interface=127.0.0.1"], [{"endpoint": backend.endpoint}],
            extra=lines, debug=debug,
        )
        self.proxy = self.startProxy(self.config)
        return boundPort(self.proxy), self.config

    def twoSites(self) -> tuple[Issued, Issued, list[tuple[str, str]]]:
        a = issue(("a.example", "www.a.example"))
        b = issue(("b.example", "*.b.example"))
        return a, b, [a.write(self.tmp, "a"), b.write(self.tmp, "b")]

    def test_chosenBySNI(self) -> None:
        """
        A client asking for a name gets the certificate that names it
        (exactly, or by a wildcard); one asking for no name, or a name no
        certificate has, gets the first; every one is relayed.
        """
        backend = self.startServer(echoHandler)
        a, b, pairs = self.twoSites()
        port, _ = self.startTLSProxy(backend, pairs)
        for name, expected in [("b.example", b), ("x.b.example", b), ("www.a.example", a),
                               (None, a), ("unknown.example", a)]:
            certificate, received = served(port, name, b"hello " + str(name).encode())
            self.assertEqual(certificate, expected.certificate, name)
            self.assertEqual(received, b"hello " + str(name).encode())

    def test_sniReachesTheSession(self) -> None:
        """
        The SNI name of a client of such a listener reaches the session, for
        the C{hash} balancer (logged at debug level 2).
        """
        backend = self.startServer(echoHandler)
        _, _, pairs = self.twoSites()
        port, _ = self.startTLSProxy(
            backend, pairs, extra='balance = "hash"\ninspect-delay = 1', debug=2)
        _, received = served(port, "X.b.example.", b"named")
        self.assertEqual(received, b"named")
        self.proxy.waitFor("SNI name x.b.example")

    def test_replyNotHeldByNagle(self) -> None:
        """
        A reply the backend gives at once reaches the TLS client at once.
        The client sends its last handshake record and its request in one
        segment (as OpenSSL's clients do); when the proxy writes the reply,
        its records that followed the handshake (the session tickets) are
        not yet acknowledged, and with Nagle's algorithm on the client's
        socket the reply waited for the client's delayed acknowledgement:
        40 ms or more on Linux, in every session. The fastest of five
        sessions is well under that.
        """
        backend = self.startServer(echoHandler)
        port, _ = self.startTLSProxy(backend, [issue(("a.example",)).write(self.tmp, "a")])
        context = clientContext(ssl.TLSVersion.TLSv1_3)
        times = []
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                tls = context.wrap_bio(incoming, outgoing, server_hostname="a.example")
                deadline = Deadline(10, "the handshake")
                while deadline.remaining():
                    try:
                        tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        raw.sendall(outgoing.read())
                        incoming.write(raw.recv(65536))
                tls.write(b"x")
                start = time.monotonic()
                raw.sendall(outgoing.read())
                reply = b""
                deadline = Deadline(10, "the reply")
                while not reply and deadline.remaining():
                    try:
                        reply = tls.read(1)
                    except ssl.SSLWantReadError:
                        incoming.write(raw.recv(65536))
                times.append(time.monotonic() - start)
                self.assertEqual(reply, b"x")
        self.assertLess(min(times), 0.030, times)

    def test_reloadServesNewCertificate(self) -> None:
        """
        On SIGHUP, with the configuration unchanged, new connections get the
        certificate now in the files; a replacement that is not a valid pair
        is refused with one line naming the file and why, and the
        certificate in use stays.
        """
        backend = self.startServer(echoHandler)
        old = issue(("a.example",))
        pair = old.write(self.tmp, "a")
        port, _ = self.startTLSProxy(backend, [pair])
        self.assertEqual(served(port, "a.example")[0], old.certificate)

        new = issue(("a.example",))
        new.write(self.tmp, "a")
        os.kill(self.proxy.pid, signal.SIGHUP)
        self.proxy.waitFor("reload: applied", count=1)
        certificate, received = served(port, "a.example")
        self.assertEqual(certificate, new.certificate)
        self.assertEqual(received, b"ping")

        # Another certificate's key: not a pair.
        with open(pair[1], "wb") as f:
            f.write(issue(("other.example",)).keyPEM)
        os.kill(self.proxy.pid, signal.SIGHUP)
        self.proxy.waitFor("reload failed", count=1)
        problems = self.proxy.matching("is not the key of the certificate in")
        self.assertEqual(len(problems), 1, self.proxy.output)
        self.assertIn(repr(pair[1]), problems[0])
        self.assertIn("tls-certificates[0]", problems[0])
        self.assertEqual(served(port, "a.example")[0], new.certificate)

        # Not PEM at all.
        with open(pair[0], "wb") as f:
            f.write(b"garbage\n")
        os.kill(self.proxy.pid, signal.SIGHUP)
        self.proxy.waitFor("reload failed", count=2)
        problems = self.proxy.matching("holds no PEM certificate")
        self.assertEqual(len(problems), 1, self.proxy.output)
        self.assertIn(repr(pair[0]), problems[0])
        self.assertEqual(served(port, "a.example")[0], new.certificate)

    def clientAuthority(self) -> tuple[Issued, str, tuple[str, str]]:
        authority = issue(("Test clients CA",), authority=True, days=60)
        caFile = os.path.join(self.tmp, "clients-ca.pem")
        with open(caFile, "wb") as f:
            f.write(authority.certPEM)
        client = issue(("client.example",), issuer=authority).write(self.tmp, "client")
        return authority, caFile, client

    def test_clientCertificateRequired(self) -> None:
        """
        With C{tls-client-ca}, a client without a certificate, or with one
        of another authority, is refused (its handshake fails, no backend is
        connected, the failure is logged); a client with a certificate of
        the authority is served.
        """
        backend = self.startServer(echoHandler)
        _, caFile, client = self.clientAuthority()
        stranger = issue(("stranger.example",)).write(self.tmp, "stranger")
        port, _ = self.startTLSProxy(
            backend, [issue(("a.example",)).write(self.tmp, "a")],
            extra=f"tls-client-ca = {tomlString(caFile)}",
        )
        for cert in (None, stranger):
            with self.assertRaises((ssl.SSLError, ConnectionError, AssertionError)):
                _, received = served(port, "a.example", context=clientContext(cert=cert))
                # TLS 1.3: the client's side of the handshake may end before
                # the server has refused it; then nothing comes back.
                self.assertEqual(received, b"ping")
        self.proxy.waitFor("TLS handshake with 127.0.0.1:", count=2)
        self.assertEqual(backend.accepted, 0)
        _, received = served(port, "a.example", context=clientContext(cert=client))
        self.assertEqual(received, b"ping")
        self.assertEqual(backend.accepted, 1)

    def test_clientCertificateOptional(self) -> None:
        """
        With C{tls-verify-client = "optional"}, a client without a
        certificate is served, and one with a certificate of another
        authority is refused.
        """
        backend = self.startServer(echoHandler)
        _, caFile, client = self.clientAuthority()
        stranger = issue(("stranger.example",)).write(self.tmp, "stranger")
        port, _ = self.startTLSProxy(
            backend, [issue(("a.example",)).write(self.tmp, "a")],
            extra=f'tls-client-ca = {tomlString(caFile)}\ntls-verify-client = "optional"',
        )
        self.assertEqual(served(port, "a.example")[1], b"ping")
        self.assertEqual(served(port, "a.example", context=clientContext(cert=client))[1],
                         b"ping")
        with self.assertRaises((ssl.SSLError, ConnectionError, AssertionError)):
            _, received = served(port, "a.example", context=clientContext(cert=stranger))
            self.assertEqual(received, b"ping")
        self.assertEqual(backend.accepted, 2)

    def test_oldVersionRefused(self) -> None:
        """
        A TLS 1.1 client is refused by default (the proxy logs the failed
        handshake); with C{tls-min-version = "1.3"} a TLS 1.2 client is too,
        and a TLS 1.3 client is served.
        """
        backend = self.startServer(echoHandler)
        port, _ = self.startTLSProxy(backend, [issue(("a.example",)).write(self.tmp, "a")])
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            with self.assertRaises((ssl.SSLError, ConnectionError)):
                served(port, "a.example", context=clientContext(version))
        self.assertEqual(served(port, "a.example",
                               context=clientContext(ssl.TLSVersion.TLSv1_2))[1], b"ping")
        lines = self.proxy.waitFor("TLS handshake with 127.0.0.1:", count=2)
        self.assertIn("unsupported protocol", lines[0])

    def test_minimumVersion13(self) -> None:
        """
        With C{tls-min-version = "1.3"}, a TLS 1.2 client is refused and a
        TLS 1.3 client served.
        """
        backend = self.startServer(echoHandler)
        port, _ = self.startTLSProxy(backend, [issue(("a.example",)).write(self.tmp, "a")],
                                     extra='tls-min-version = "1.3"')
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            served(port, "a.example", context=clientContext(ssl.TLSVersion.TLSv1_2))
        self.assertEqual(served(port, "a.example",
                               context=clientContext(ssl.TLSVersion.TLSv1_3))[1], b"ping")
        self.assertEqual(backend.accepted, 1)


class TLSUnservedIntegrationTests(_IntegrationTestCase):
    """
    A client of a TLS listener that no backend will serve (every backend
    refuses) is closed with close_notify, and its session ends: when it
    answers by closing, even after sending more than the proxy holds for a
    backend (64 KiB); when it does not, within C{CLOSING_TIMEOUT} (5 s).
    """

    def startRefusing(self) -> int:
        pair = issue(("a.example",)).write(self.tmp, "a")
        config = proxyConfig(
            self.tmp, ["tcp:0:interface=127.0.0.1"], [{"endpoint": refusedEndpoint(self)}],
            extra=f"tls-certificates = [{{cert = {tomlString(pair[0])}, key = {tomlString(pair[1])}}}]",
            debug=1,
        )
        self.proxy = self.startProxy(config)
        return boundPort(self.proxy)

    def test_closedAfterSending(self) -> None:
        """
        Clients that send 300 KB, read to the end (close_notify) and close:
        every session ends at once (it used to stay open for good, the
        client's FIN unread behind the 64 KiB held).
        """
        port = self.startRefusing()
        for i in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with clientContext().wrap_socket(raw, server_hostname="a.example") as conn:
                    conn.sendall(os.urandom(300_000))
                    try:
                        self.assertEqual(conn.recv(1024), b"", i)
                    except (ssl.SSLError, ConnectionError):
                        pass
            # Well before the proxy's own deadline (CLOSING_TIMEOUT, 5 s).
            self.proxy.waitFor(" ended (", count=i + 1, timeout=3)
        self.assertEqual(self.proxy.matching("Traceback"), [], self.proxy.output)

    def test_silentClientAborted(self) -> None:
        """
        A client that neither answers the close_notify nor closes has its
        connection aborted after C{CLOSING_TIMEOUT}, and its session ends.
        """
        port = self.startRefusing()
        with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
            with clientContext().wrap_socket(raw, server_hostname="a.example") as conn:
                start = time.monotonic()
                self.proxy.waitFor(" ended (", timeout=10)
                elapsed = time.monotonic() - start
                # It had been sent close_notify.
                self.assertEqual(conn.recv(10), b"")
        self.assertGreater(elapsed, 4.0)
        self.assertLess(elapsed, 8.0)


class TLSHalfCloseIntegrationTests(_IntegrationTestCase):
    """
    Half-close across the TLS hop of a C{tls-certificates} listener: what
    TLS (and Twisted's TLS transport) allows of it.
    """

    def startHalfClosing(self, backend: Server) -> int:
        pair = issue(("a.example",)).write(self.tmp, "a")
        config = proxyConfig(
            self.tmp, ["tcp:0:interface=127.0.0.1"], [{"endpoint": backend.endpoint}],
            extra=f"tls-certificates = [{{cert = {tomlString(pair[0])}, "
                  f"key = {tomlString(pair[1])}}}]",
            debug=1,
        )
        self.proxy = self.startProxy(config)
        return boundPort(self.proxy)

    def test_backendEOFIsCloseNotify(self) -> None:
        """
        A backend's EOF reaches the TLS client as close_notify (a clean TLS
        end of stream, not a truncation), and the client's direction keeps
        flowing: what it sends afterwards reaches the backend, followed by
        EOF once the client closes.
        """
        received: queue.Queue[bytes] = queue.Queue()

        def greetThenRead(conn: socket.socket, server: Server) -> None:
            conn.sendall(b"greeting")
            conn.shutdown(socket.SHUT_WR)
            received.put(recvAll(conn, Deadline(10, "the client's bytes")))

        backend = self.startServer(greetThenRead)
        port = self.startHalfClosing(backend)
        context = clientContext()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            conn = context.wrap_socket(raw, server_hostname="a.example",
                                       suppress_ragged_eofs=False)
            got = b""
            while True:
                # A bare FIN would raise SSLEOFError here.
                chunk = conn.recv(4096)
                if not chunk:
                    break
                got += chunk
            self.assertEqual(got, b"greeting")
            conn.sendall(b"after the backend's EOF")
            conn.unwrap()
        self.assertEqual(received.get(timeout=10), b"after the backend's EOF")
        self.proxy.waitFor("ended (backend closed)")

    def test_clientCloseNotifyEndsBoth(self) -> None:
        """
        A TLS client's close_notify ends the session both ways (Twisted's
        TLS closes the connection on it): the backend gets the client's
        bytes and EOF, and the session's end says there was no half-close.
        """
        received: queue.Queue[bytes] = queue.Queue()

        def read(conn: socket.socket, server: Server) -> None:
            received.put(recvAll(conn, Deadline(10, "the client's bytes")))

        backend = self.startServer(read)
        port = self.startHalfClosing(backend)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            conn = clientContext().wrap_socket(raw, server_hostname="a.example")
            conn.sendall(b"question")
            conn.unwrap()
        self.assertEqual(received.get(timeout=10), b"question")
        self.proxy.waitFor("ended (client closed TLS (no half-close))")

    def test_clientEOFToTLSBackend(self) -> None:
        """
        A plain client's EOF reaches a C{tls:} backend as close_notify, and
        the backend's direction keeps flowing: what it sends after reading
        the client's end reaches the client, then EOF.
        """
        authority = issue(("Test backends CA",), authority=True)
        roots = os.path.join(self.tmp, "roots")
        os.mkdir(roots)
        with open(os.path.join(roots, "ca.pem"), "wb") as f:
            f.write(authority.certPEM)
        cert, key = issue(("backend.example",), issuer=authority,
                          addresses=("127.0.0.1",)).write(self.tmp, "backend")
        serverContext = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        serverContext.load_cert_chain(cert, key)
        received: queue.Queue[bytes] = queue.Queue()

        def answerAfterEOF(conn: socket.socket, server: Server) -> None:
            with serverContext.wrap_socket(conn, server_side=True,
                                           suppress_ragged_eofs=False) as tlsConn:
                # A bare FIN would raise SSLEOFError here.
                received.put(recvAll(tlsConn, Deadline(10, "the client's bytes")))
                tlsConn.sendall(b"answer after EOF")
                tlsConn.unwrap()

        backend = self.startServer(answerAfterEOF)
        endpoint = f"tls:host=127.0.0.1:port={backend.port}:trustRoots={roots}"
        config = proxyConfig(self.tmp, ["tcp:0:interface=127.0.0.1"],
                             [{"endpoint": endpoint}], debug=1)
        self.proxy = self.startProxy(config)
        port = boundPort(self.proxy)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"question")
            conn.shutdown(socket.SHUT_WR)
            self.assertEqual(recvAll(conn, Deadline(10, "the answer")), b"answer after EOF")
        self.assertEqual(received.get(timeout=10), b"question")
        self.proxy.waitFor("ended (client closed)")


class HeaderBeforeTLSIntegrationTests(_IntegrationTestCase):
    """
    A C{haproxy:} listener with C{tls-certificates}: the PROXY protocol
    header comes in clear, then TLS (as HAProxy's C{send-proxy} sends it to
    a TLS server); the header's client is the session's.
    """

    def test_headerThenTLS(self) -> None:
        backend = self.startServer(echoHandler)
        site = issue(("a.example",))
        cert, key = site.write(self.tmp, "a")
        config = proxyConfig(
            self.tmp, ["haproxy:tcp:0:interface=127.0.0.1"], [{"endpoint": backend.endpoint}],
            extra=f"tls-certificates = [{{cert = {tomlString(cert)}, key = {tomlString(key)}}}]",
            debug=1,
        )
        proxy = self.startProxy(config)
        port = boundPort(proxy)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\n")
            with clientContext().wrap_socket(raw, server_hostname="a.example") as conn:
                conn.sendall(b"through TLS")
                received = b""
                while len(received) < len(b"through TLS"):
                    chunk = conn.recv(100)
                    if not chunk:
                        break
                    received += chunk
                self.assertEqual(received, b"through TLS")
        proxy.waitFor("203.0.113.7:4242 -> backend")

    def test_badHeaderBeforeTLS(self) -> None:
        """
        A ClientHello where the header should be is a bad header: the
        client is closed, nothing is connected, it is counted and logged.
        """
        backend = self.startServer(echoHandler)
        site = issue(("a.example",))
        cert, key = site.write(self.tmp, "a")
        config = proxyConfig(
            self.tmp, ["haproxy:tcp:0:interface=127.0.0.1"], [{"endpoint": backend.endpoint}],
            extra=f"tls-certificates = [{{cert = {tomlString(cert)}, key = {tomlString(key)}}}]",
        )
        proxy = self.startProxy(config)
        port = boundPort(proxy)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with self.assertRaises((ssl.SSLError, OSError)):
                clientContext().wrap_socket(raw, server_hostname="a.example")
        proxy.waitFor("not a PROXY protocol header")
        self.assertEqual(backend.accepted, 0)
