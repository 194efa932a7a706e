"""
Tests for L{txsockproxy.tlsclient}: the handshaking endpoint (with fake
endpoints, fake TLS transports and a L{Clock}), the description of failed
handshakes, building a backend's endpoint, the TLS keys of the TOML config
and their rendering, and shutting a TLS transport's write side.

The TLS handshakes themselves run in L{tests.test_tlsclient_integration}.
"""

from __future__ import annotations

import os
import tempfile
from textwrap import dedent
from typing import Any, Optional

from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, DNSMismatch
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.pki import Authority
from tests.tls_support import issue
from txsockproxy.config import BackendConfig, BackendTLS, ConfigError
from txsockproxy.portable import PortableRelayPath, shutWrite
from txsockproxy.render import renderToml
from txsockproxy.tlsclient import (
    HandshakingEndpoint,
    TLSConnectError,
    backendEndpoint,
    describeHandshakeFailure,
    endpointHost,
    identityProblem,
)
from txsockproxy.tomlconfig import parseConfig


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    An endpoint whose connects the test completes: C{connected()} connects
    the factory's protocol to a fake TLS transport.
    """

    def __init__(self) -> None:
        self.factory: Any = None
        self.attempt: Optional[defer.Deferred[Any]] = None
        self.cancelled = False

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.factory = factory

        def cancel(d: defer.Deferred[Any]) -> None:
            self.cancelled = True

        self.attempt = defer.Deferred(cancel)
        return self.attempt

    def connected(self) -> tuple[ProtocolWrapper, StringTransport]:
        """
        The TCP connect is done: the factory's protocol under a TLS layer
        (a L{ProtocolWrapper}, as Twisted's TLS protocol is), over a
        L{StringTransport}.
        """
        waiter = self.factory.buildProtocol(None)
        tls = ProtocolWrapper(WrappingFactory(Factory()), waiter)
        transport = StringTransport()
        tls.makeConnection(transport)
        assert self.attempt is not None
        self.attempt.callback(waiter)
        return tls, transport


class Recorder(Protocol):
    """
    The caller's protocol: records what it is told.
    """

    def __init__(self) -> None:
        self.made = 0
        self.received: list[bytes] = []
        self.lost: list[Failure] = []

    def connectionMade(self) -> None:
        self.made += 1

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost.append(reason)


class RecordingClientFactory(ClientFactory):
    """
    A client factory that builds one L{Recorder} and records failures, as
    the relay's backend factory does.
    """

    def __init__(self) -> None:
        self.built: list[Recorder] = []
        self.failures: list[Failure] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        protocol = Recorder()
        self.built.append(protocol)
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failures.append(reason)


class HandshakingEndpointTests(SynchronousTestCase):
    """
    L{HandshakingEndpoint} connects once the TLS handshake is done, and
    fails with a L{TLSConnectError} when it is not.
    """

    def setUp(self) -> None:
        self.wrapped = FakeEndpoint()
        self.endpoint = HandshakingEndpoint(self.wrapped)
        self.factory = RecordingClientFactory()

    def test_interface(self) -> None:
        """
        L{HandshakingEndpoint} provides L{IStreamClientEndpoint}.
        """
        self.assertTrue(verifyObject(IStreamClientEndpoint, self.endpoint))

    def test_connectedAfterHandshake(self) -> None:
        """
        The TCP connect alone does not fire the connect, nor build the
        caller's protocol; the handshake does: the protocol is connected to
        the TLS transport, which delivers to it from then on.
        """
        d = self.endpoint.connect(self.factory)
        tls, _ = self.wrapped.connected()
        self.assertNoResult(d)
        self.assertEqual(self.factory.built, [])
        tls.wrappedProtocol.handshakeCompleted()  # type: ignore[attr-defined]
        [protocol] = self.factory.built
        self.assertIs(self.successResultOf(d), protocol)
        self.assertEqual(protocol.made, 1)
        self.assertIs(protocol.transport, tls)
        self.assertIs(tls.wrappedProtocol, protocol)
        tls.dataReceived(b"hello")
        self.assertEqual(protocol.received, [b"hello"])

    def test_lostDuringHandshake(self) -> None:
        """
        A connection lost before the handshake is done fails the connect
        with a L{TLSConnectError} saying so; no protocol is built.
        """
        d = self.endpoint.connect(self.factory)
        tls, _ = self.wrapped.connected()
        tls.connectionLost(Failure(ConnectionLost("gone")))
        failure = self.failureResultOf(d, TLSConnectError)
        self.assertIn("connection lost during TLS handshake", str(failure.value))
        self.assertEqual(self.factory.built, [])

    def test_connectFails(self) -> None:
        """
        A failed TCP connect fails the connect with its own reason.
        """
        d = self.endpoint.connect(self.factory)
        assert self.wrapped.attempt is not None
        self.wrapped.attempt.errback(Failure(ConnectionRefusedError()))
        self.failureResultOf(d, ConnectionRefusedError)

    def test_cancelWhileConnecting(self) -> None:
        """
        Cancelling before the TCP connect is done cancels it.
        """
        d = self.endpoint.connect(self.factory)
        d.cancel()
        self.assertTrue(self.wrapped.cancelled)
        self.failureResultOf(d, defer.CancelledError)

    def test_timeoutWhileHandshaking(self) -> None:
        """
        The connect timeout (of the portable relay path) running out during
        the handshake fails the connect with "TLS handshake timeout", not a
        plain timeout, and aborts the connection; its loss later is ignored.
        """
        clock = Clock()
        PortableRelayPath(clock).connect(self.endpoint, self.factory, 5, None)
        tls, transport = self.wrapped.connected()
        clock.advance(5)
        [failure] = self.factory.failures
        self.assertIsInstance(failure.value, TLSConnectError)
        self.assertIn("TLS handshake timeout", str(failure.value))
        self.assertTrue(transport.disconnecting)
        tls.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(self.factory.failures), 1)
        self.assertEqual(self.factory.built, [])


def _expiredChain() -> list[crypto.X509]:
    issued = Authority().issue(expired=True)
    return [crypto.load_certificate(crypto.FILETYPE_PEM, issued.cert)]


class _Handle:
    def __init__(self, chain: Optional[list[crypto.X509]]) -> None:
        self.chain = chain

    def get_peer_cert_chain(self) -> Optional[list[crypto.X509]]:
        return self.chain


class _Transport:
    def __init__(self, chain: Optional[list[crypto.X509]]) -> None:
        self.handle = _Handle(chain)

    def getHandle(self) -> _Handle:
        return self.handle


def _waiter(chain: Optional[list[crypto.X509]] = None) -> Protocol:
    waiter = Protocol()
    waiter.transport = _Transport(chain)  # type: ignore[assignment]
    return waiter


_VERIFY_FAILED = SSL.Error([("SSL routines", "", "certificate verify failed")])


class DescribeHandshakeFailureTests(SynchronousTestCase):
    """
    L{describeHandshakeFailure} says in one line why a handshake failed.
    """

    def test_nameMismatch(self) -> None:
        """
        A certificate not valid for the name: the name is given.
        """
        error = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("db.example"))])
        self.assertEqual(
            describeHandshakeFailure(_waiter(), Failure(error)),
            "TLS certificate does not match the name: not valid for 'db.example'",
        )

    def test_expired(self) -> None:
        """
        A chain that did not verify, whose certificate has expired.
        """
        text = describeHandshakeFailure(_waiter(_expiredChain()), Failure(_VERIFY_FAILED))
        self.assertTrue(
            text.startswith("TLS certificate verify failed: certificate has expired"), text
        )

    def test_unknownCA(self) -> None:
        """
        A chain that did not verify, with valid dates: an unknown CA.
        """
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, Authority().issue().cert)]
        self.assertEqual(
            describeHandshakeFailure(_waiter(chain), Failure(_VERIFY_FAILED)),
            "TLS certificate verify failed: not signed by a trusted CA (unknown CA, or self-signed)",
        )

    def test_otherError(self) -> None:
        """
        Another OpenSSL error: its reason strings.
        """
        error = SSL.Error([("SSL routines", "", "tlsv1 alert protocol version")])
        self.assertEqual(
            describeHandshakeFailure(_waiter(), Failure(error)),
            "TLS handshake failed: tlsv1 alert protocol version",
        )


class BackendEndpointTests(SynchronousTestCase):
    """
    L{backendEndpoint} handshakes before connecting for TLS backends only.
    """

    def test_plain(self) -> None:
        """
        A backend without TLS gets its endpoint string's endpoint itself
        (which the accelerator's connector knows).
        """
        endpoint = backendEndpoint(
            MemoryReactorClock(), BackendConfig("tcp:host=127.0.0.1:port=1", "b")
        )
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)

    def test_tlsKey(self) -> None:
        """
        A backend with C{tls = true} gets a L{HandshakingEndpoint}.
        """
        config = BackendConfig("tcp:host=127.0.0.1:port=1", "b", tls=BackendTLS("db"))
        endpoint = backendEndpoint(MemoryReactorClock(), config)
        self.assertIsInstance(endpoint, HandshakingEndpoint)

    def test_tlsString(self) -> None:
        """
        A backend with a C{tls:} endpoint string gets a L{HandshakingEndpoint}.
        """
        config = BackendConfig("tls:host=127.0.0.1:port=1", "b")
        endpoint = backendEndpoint(MemoryReactorClock(), config)
        self.assertIsInstance(endpoint, HandshakingEndpoint)

    def test_endpointHost(self) -> None:
        """
        L{endpointHost} finds the host of a C{tcp:} endpoint string, and
        none in a unix one.
        """
        self.assertEqual(endpointHost("tcp:host=db.internal:port=5432"), "db.internal")
        self.assertEqual(endpointHost("tcp:db.internal:5432"), "db.internal")
        self.assertIsNone(endpointHost("unix:/run/db.sock"))


class ShutWriteTests(SynchronousTestCase):
    """
    L{shutWrite} ends a TLS transport's write side with C{loseConnection()}
    (close_notify), any other's with C{loseWriteConnection()}.
    """

    def test_tls(self) -> None:
        """
        A TLS transport is shut with C{loseConnection()}.
        """
        from twisted.internet.interfaces import ISSLTransport
        from zope.interface import directlyProvides

        transport = StringTransport()
        directlyProvides(transport, ISSLTransport)
        shutWrite(transport)
        self.assertTrue(transport.disconnecting)

    def test_plain(self) -> None:
        """
        Another transport is shut with C{loseWriteConnection()}.
        """
        calls: list[str] = []

        class Plain:
            def loseWriteConnection(self) -> None:
                calls.append("loseWriteConnection")

            def loseConnection(self) -> None:
                calls.append("loseConnection")

        shutWrite(Plain())
        self.assertEqual(calls, ["loseWriteConnection"])


class TLSConfigTests(SynchronousTestCase):
    """
    The C{tls} keys of C{[[proxy.backend]]}: checked at load, each mistake
    one line naming the file, line and key.
    """

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        ca = Authority()
        self.caFile = ca.writeCA(self.tmp)
        self.cert, self.key = ca.issue(("proxy.client",), client=True).write(self.tmp, "client")
        self.other = Authority().issue().write(self.tmp, "other")[1]
        self.junk = os.path.join(self.tmp, "junk")
        with open(self.junk, "w") as f:
            f.write("not PEM\n")
        # A key OpenSSL refuses to use (P-192: 96 bits, under its level).
        self.weakCert, self.weakKey = issue(("proxy.client",), curve=ec.SECP192R1()).write(
            self.tmp, "weak"
        )

    def parse(self, backend: str) -> Any:
        text = '[[proxy]]\nlisten = "tcp:8080"\n[[proxy.backend]]\n' + dedent(backend)
        return parseConfig(text, "test.toml", lambda host: "10.0.0.9")

    def problems(self, backend: str) -> list[str]:
        error = self.assertRaises(ConfigError, self.parse, backend)
        return [str(p) for p in error.problems]

    def test_full(self) -> None:
        """
        Every key read: the name, the files and their contents.
        """
        config = self.parse(f"""\
            endpoint = "tcp:host=10.0.0.2:port=5432"
            tls = true
            tls-name = "db.internal"
            tls-ca = "{self.caFile}"
            tls-cert = "{self.cert}"
            tls-key = "{self.key}"
            tls-min-version = "1.3"
        """)
        tls = config.proxies[0].backends[0].tls
        self.assertEqual(
            (tls.name, tls.ca, tls.cert, tls.key, tls.minVersion),
            ("db.internal", self.caFile, self.cert, self.key, "1.3"),
        )
        with open(self.caFile, "rb") as f:
            self.assertEqual(tls.caPEM, f.read())

    def test_defaults(self) -> None:
        """
        Without C{tls-name} the name is the endpoint's host (or the
        lighttpd-style C{host} as written, not its address); the system's
        CAs, no client certificate, TLS 1.2 and later.
        """
        tls = self.parse('endpoint = "tcp:host=10.0.0.2:port=5432"\ntls = true\n') \
            .proxies[0].backends[0].tls
        self.assertEqual(tls, BackendTLS(name="10.0.0.2"))
        tls = self.parse('host = "db.internal"\nport = 5432\ntls = true\n') \
            .proxies[0].backends[0].tls
        self.assertEqual(tls, BackendTLS(name="db.internal"))
        self.assertIsNone(
            self.parse('endpoint = "tcp:host=10.0.0.2:port=5432"\n').proxies[0].backends[0].tls
        )

    def test_mistakes(self) -> None:
        """
        Each mistake is one line naming the file, the line and the key.
        """
        cases = [
            ('tls = "yes"', 5, "tls", "must be true or false, not a string ('yes')"),
            (f'tls-ca = "{self.caFile}"', 5, "tls-ca", "needs tls = true"),
            ('tls = true\ntls-ca = "/nonexistent/ca.pem"', 6, "tls-ca",
             "cannot read '/nonexistent/ca.pem': No such file or directory"),
            (f'tls = true\ntls-ca = "{self.junk}"', 6, "tls-ca",
             f"{self.junk!r} holds no PEM certificate (or a broken one)"),
            (f'tls = true\ntls-cert = "{self.cert}"', 6, "tls-cert",
             "needs tls-key too (a client certificate and its key)"),
            (f'tls = true\ntls-cert = "{self.cert}"\ntls-key = "{self.junk}"', 7, "tls-key",
             f"{self.junk!r} holds no unencrypted PEM private key (or a broken one)"),
            (f'tls = true\ntls-cert = "{self.cert}"\ntls-key = "{self.other}"', 7, "tls-key",
             f"{self.other!r} is not the key of the certificate in tls-cert"),
            (f'tls = true\ntls-cert = "{self.weakCert}"\ntls-key = "{self.weakKey}"', 7,
             "tls-key", f"{self.weakKey!r} and tls-cert: OpenSSL refuses it: ee key too small"),
            ('tls = true\ntls-min-version = "1.1"', 6, "tls-min-version",
             "must be one of '1.2', '1.3', not '1.1'"),
        ]
        for extra, line, key, message in cases:
            problems = self.problems(f'endpoint = "tcp:host=10.0.0.2:port=1"\n{extra}\n')
            self.assertEqual(
                problems, [f"test.toml:{line}: proxy[0].backend[0].{key}: {message}"], extra
            )

    def test_unixNeedsName(self) -> None:
        """
        A unix-socket backend has no host to check its certificate for.
        """
        self.assertEqual(
            self.problems('endpoint = "unix:/run/db.sock"\ntls = true\n'),
            ["test.toml:5: proxy[0].backend[0].tls: needs tls-name: "
             "the endpoint has no host name to check the certificate for"],
        )

    def test_tlsStringWithTLSKey(self) -> None:
        """
        C{tls = true} on a C{tls:} endpoint string is refused, saying what
        to write instead.
        """
        self.assertEqual(
            self.problems('endpoint = "tls:host=10.0.0.2:port=1"\ntls = true\n'),
            ["test.toml:5: proxy[0].backend[0].tls: the endpoint is a tls: one already: "
             "write tcp: with tls = true"],
        )

    def test_sendProxyOverTLSString(self) -> None:
        """
        C{send-proxy} on a C{tls:} endpoint string is refused: the header
        would go inside TLS, where servers do not look for it.
        """
        [problem] = self.problems('endpoint = "tls:host=10.0.0.2:port=1"\nsend-proxy = "v2"\n')
        self.assertIn("proxy[0].backend[0].send-proxy: send-proxy with a tls: endpoint", problem)
        self.assertIn("write a tcp: endpoint with tls = true", problem)

    def test_trustRootsFile(self) -> None:
        """
        A C{tls:} string whose C{trustRoots=} names a file says to use
        C{tls-ca} (Twisted's parser only says C{UnlistableError}).
        """
        [problem] = self.problems(
            f'endpoint = "tls:host=10.0.0.2:port=1:trustRoots={self.caFile}"\n'
        )
        self.assertIn("trustRoots= must name a directory of CA certificates", problem)
        self.assertIn("tls = true and tls-ca = FILE", problem)

    def test_rendered(self) -> None:
        """
        C{--print-toml} writes the TLS keys, and what it writes loads to the
        same configuration.
        """
        config = self.parse(f"""\
            host = "db.internal"
            port = 5432
            tls = true
            tls-ca = "{self.caFile}"
            tls-cert = "{self.cert}"
            tls-key = "{self.key}"
            tls-min-version = "1.3"
        """)
        text = renderToml(config)
        self.assertIn('tls-name = "db.internal"', text)
        self.assertIn(f'tls-ca = "{self.caFile}"', text)
        again = parseConfig(text, "rendered.toml", lambda host: "10.0.0.9")
        self.assertEqual(again.proxies, config.proxies)


class _PeerConnection:
    """
    What L{identityProblem} asks of a pyOpenSSL connection.
    """

    def __init__(self, pem: bytes) -> None:
        self.cert = crypto.load_certificate(crypto.FILETYPE_PEM, pem)

    def get_peer_certificate(self) -> crypto.X509:
        return self.cert


class IdentityProblemTests(SynchronousTestCase):
    """
    L{identityProblem} checks the peer certificate against the name again,
    refusing what Twisted lets through.
    """

    def test_valid(self) -> None:
        """
        A certificate with the name (DNS or IP address) among its
        subjectAltNames is valid.
        """
        connection = _PeerConnection(Authority().issue(("db.internal", "10.0.0.2")).cert)
        self.assertIsNone(identityProblem(connection, "db.internal"))
        self.assertIsNone(identityProblem(connection, "10.0.0.2"))

    def test_otherName(self) -> None:
        """
        A certificate for other names is not valid; the name is given.
        """
        connection = _PeerConnection(Authority().issue(("db.internal",)).cert)
        self.assertEqual(
            identityProblem(connection, "web.internal"),
            "TLS certificate does not match the name: not valid for 'web.internal'",
        )

    def test_noAlternativeNames(self) -> None:
        """
        A certificate without subjectAltName is valid for no name, not even
        its common name (Twisted's own check lets it through).
        """
        pem = Authority().issue(("db.internal",), alternativeNames=False).cert
        problem = identityProblem(_PeerConnection(pem), "db.internal")
        self.assertIsNotNone(problem)
        self.assertIn("TLS certificate is not valid for 'db.internal'", problem or "")
