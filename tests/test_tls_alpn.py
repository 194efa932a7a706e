"""
Tests for L{txsockproxy.alpn}: TLS listeners built from C{ssl:} endpoint
strings complete the handshake with clients that offer ALPN.

The unit tests run the handshake in memory, between a pyOpenSSL client and
Twisted's TLS protocol built around the context factory an C{ssl:} endpoint
gives to C{listenSSL}.  The integration tests listen on loopback, with
Python's C{ssl} module and C{openssl s_client} as clients, through the proxy
to a backend.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import ssl
import subprocess
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional, cast

import OpenSSL
from OpenSSL import SSL
from twisted.application import strports
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import (
    IOpenSSLContextFactory,
    IProtocolNegotiationFactory,
    IReactorSSL,
    IReactorTCP,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.fakes import certificate
from tests.integration_support import Deadline, Server, boundPort, echoHandler, proxyConfig
from tests.test_integration import _IntegrationTestCase
from twisted import version as twistedVersion
from txsockproxy.alpn import (
    ALPNDecliningReactor,
    contextFactoryDecliningALPN,
    declineUnmatchedALPN,
    reactorDecliningALPN,
    selectProtocol,
)

# Twisted 26.4 began installing its ALPN select callback on every context;
# before, a listener without protocols ignored ALPN and needed no help.
TWISTED_FAILS_ALPN = (twistedVersion.major, twistedVersion.minor) >= (26, 4)

# pyOpenSSL 26.2 began refusing to change a context once it made a connection.
PYOPENSSL_FREEZES_CONTEXTS = tuple(int(n) for n in OpenSSL.__version__.split(".")[:2]) >= (26, 2)



@contextmanager
def capturedLogs() -> Iterator[list[dict[str, Any]]]:
    """
    The events logged to the global log publisher meanwhile.
    """
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def tlsListen(case: SynchronousTestCase, port: int = 0) -> str:
    """
    An C{ssl:} listen endpoint on loopback with a self-signed certificate,
    as a proxy's configuration gives it.
    """
    path = os.path.abspath(case.mktemp())
    with open(path, "wb") as f:
        f.write(certificate())
    return f"ssl:{port}:interface=127.0.0.1:privateKey={path}"


class Echo(Protocol):
    """
    Sends back what it receives.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


@implementer(IProtocolNegotiationFactory)
class NegotiatingEchoFactory(Factory):
    """
    An echo factory that, like Twisted's C{Site}, names the protocols it
    speaks over ALPN.
    """

    protocol = Echo

    def __init__(self, protocols: Sequence[bytes]) -> None:
        self.protocols = list(protocols)

    def acceptableProtocols(self) -> list[bytes]:
        return self.protocols


class Handshake:
    """
    A pyOpenSSL client with memory BIOs against Twisted's TLS server
    protocol on a L{StringTransport}: the TLS of a listener, in memory.

    @ivar error: the client's handshake error, if it failed.
    """

    def __init__(self, contextFactory: Any, factory: Factory, offered: Sequence[bytes]) -> None:
        # Twisted's TLS protocol gathers small writes until the clock turns.
        self.clock = Clock()
        self.server = TLSMemoryBIOFactory(
            contextFactory, False, factory, clock=self.clock
        ).buildProtocol(IPv4Address("TCP", "127.0.0.1", 443))
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        self.client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        self.client.set_connect_state()
        if offered:
            self.client.set_alpn_protos(list(offered))
        self.error: Optional[SSL.Error] = None
        self._run()

    def _pump(self) -> None:
        while True:
            try:
                data = self.client.bio_read(65536)
            except SSL.WantReadError:
                break
            self.server.dataReceived(data)
        self.clock.advance(0)
        sent = self.transport.value()
        self.transport.clear()
        if sent:
            self.client.bio_write(sent)

    def _run(self) -> None:
        for _ in range(10):
            try:
                self.client.do_handshake()
                self._pump()
                return
            except SSL.WantReadError:
                self._pump()
            except SSL.Error as e:
                self.error = e
                return
        raise AssertionError("the handshake neither finished nor failed")

    def exchange(self, data: bytes) -> bytes:
        """
        Send C{data} over the established connection and return the reply.
        """
        self.client.send(data)
        self._pump()
        return self.client.recv(65536)

    def negotiated(self) -> bytes:
        """
        The protocol ALPN selected, C{b""} for none.
        """
        return self.client.get_alpn_proto_negotiated()


def listenedContextFactory(case: SynchronousTestCase, declining: bool) -> Any:
    """
    The context factory that an C{ssl:} listener built as the proxy builds
    its listeners (C{strports.service}) gives to C{listenSSL}, through
    L{reactorDecliningALPN} if C{declining}.
    """
    memory = MemoryReactor()
    wrapped = reactorDecliningALPN(memory) if declining else memory
    service = strports.service(tlsListen(case, 443), Factory.forProtocol(Echo), reactor=wrapped)
    service.privilegedStartService()
    [(port, factory, contextFactory, backlog, interface)] = memory.sslServers
    return contextFactory


class SelectProtocolTests(SynchronousTestCase):
    """
    L{selectProtocol} answers an ALPN offer.
    """

    def test_preferred(self) -> None:
        """
        Of the protocols both sides speak, ours preferred first wins.
        """
        self.assertEqual(selectProtocol([b"http/1.1", b"h2"], [b"h2", b"http/1.1"]), b"h2")

    def test_noneInCommon(self) -> None:
        """
        Without a protocol in common, or with none of ours, ALPN is
        declined: pyOpenSSL's C{NO_OVERLAPPING_PROTOCOLS}, never C{b""}
        (which fails the handshake).
        """
        self.assertIs(selectProtocol([b"http/1.1"], [b"h2"]), SSL.NO_OVERLAPPING_PROTOCOLS)
        self.assertIs(selectProtocol([b"http/1.1"], []), SSL.NO_OVERLAPPING_PROTOCOLS)


class ListenerALPNTests(SynchronousTestCase):
    """
    An C{ssl:} listener built through L{ALPNDecliningReactor} completes the
    handshake with clients that offer ALPN, in memory.
    """

    def test_alpnClient(self) -> None:
        """
        A client offering ALPN gets TLS without ALPN, and its bytes flow.
        """
        handshake = Handshake(listenedContextFactory(self, True),
                              Factory.forProtocol(Echo), [b"http/1.1"])
        self.assertIsNone(handshake.error)
        self.assertEqual(handshake.negotiated(), b"")
        self.assertEqual(handshake.exchange(b"hello"), b"hello")

    def test_noALPNClient(self) -> None:
        """
        A client offering no ALPN is served as before.
        """
        handshake = Handshake(listenedContextFactory(self, True),
                              Factory.forProtocol(Echo), [])
        self.assertIsNone(handshake.error)
        self.assertEqual(handshake.exchange(b"hello"), b"hello")

    def test_withoutTheWorkaround(self) -> None:
        """
        Without L{ALPNDecliningReactor}, Twisted 26.4 and later fail the
        handshake of a client offering ALPN with an internal error.  If this
        fails on a newer Twisted, that Twisted is fixed: the workaround may
        then be skipped there.
        """
        if not TWISTED_FAILS_ALPN:
            raise SkipTest(f"Twisted {twistedVersion.short()} ignores ALPN without protocols")
        handshake = Handshake(listenedContextFactory(self, False),
                              Factory.forProtocol(Echo), [b"http/1.1"])
        self.assertIsInstance(handshake.error, SSL.Error)
        self.assertIn("internal error", str(handshake.error))

    def test_factoryProtocols(self) -> None:
        """
        A wrapped factory's ALPN protocols (Twisted's C{Site} has some) are
        still negotiated: ours preferred first.
        """
        if not TWISTED_FAILS_ALPN and PYOPENSSL_FREEZES_CONTEXTS:
            raise SkipTest(f"Twisted {twistedVersion.short()} sets a negotiating factory's "
                           "protocols on the shared context for each connection, which "
                           f"pyOpenSSL {OpenSSL.__version__} refuses")
        handshake = Handshake(listenedContextFactory(self, True),
                              NegotiatingEchoFactory([b"h2", b"http/1.1"]),
                              [b"http/1.1", b"h2"])
        self.assertIsNone(handshake.error)
        self.assertEqual(handshake.negotiated(), b"h2")

    def test_factoryProtocolsUnmatched(self) -> None:
        """
        When none of a wrapped factory's protocols were offered, ALPN is
        declined and the handshake goes on.
        """
        if not TWISTED_FAILS_ALPN:
            raise SkipTest(f"Twisted {twistedVersion.short()} installs its own ALPN callback "
                           "for each connection of a negotiating factory")
        handshake = Handshake(listenedContextFactory(self, True),
                              NegotiatingEchoFactory([b"h2"]), [b"http/1.1"])
        self.assertIsNone(handshake.error)
        self.assertEqual(handshake.negotiated(), b"")
        self.assertEqual(handshake.exchange(b"hello"), b"hello")


@implementer(IOpenSSLContextFactory)
class FreshContexts:
    """
    A context factory that makes a new context every time, with an ALPN
    callback failing as Twisted 26.4's does.

    @ivar made: how many contexts it made.
    """

    def __init__(self) -> None:
        self.made = 0

    def getContext(self) -> SSL.Context:
        from twisted.internet.ssl import PrivateCertificate

        self.made += 1
        loaded = PrivateCertificate.loadPEM(certificate())
        context = SSL.Context(SSL.TLS_METHOD)
        context.use_certificate(loaded.original)
        context.use_privatekey(loaded.privateKey.original)
        context.set_alpn_select_callback(lambda connection, offered: b"")
        return context


class ContextFactoryTests(SynchronousTestCase):
    """
    L{contextFactoryDecliningALPN} and L{declineUnmatchedALPN} fix context
    factories whatever they do with their contexts.
    """

    def test_keptContextFixedInPlace(self) -> None:
        """
        A context factory that keeps its context (Twisted's
        C{CertificateOptions}) is returned itself, its context fixed.
        """
        contextFactory = listenedContextFactory(self, False)
        self.assertIs(contextFactoryDecliningALPN(contextFactory), contextFactory)
        handshake = Handshake(contextFactory, Factory.forProtocol(Echo), [b"http/1.1"])
        self.assertIsNone(handshake.error)

    def test_freshContextsWrapped(self) -> None:
        """
        A context factory that makes a new context every time is wrapped:
        each of its contexts declines unmatched ALPN.
        """
        fresh = FreshContexts()
        self.assertIsNotNone(Handshake(fresh, Factory.forProtocol(Echo), [b"http/1.1"]).error)
        contextFactory = contextFactoryDecliningALPN(fresh)
        self.assertIsNot(contextFactory, fresh)
        self.assertTrue(verifyObject(IOpenSSLContextFactory, contextFactory))
        made = fresh.made
        handshake = Handshake(contextFactory, Factory.forProtocol(Echo), [b"http/1.1"])
        self.assertIsNone(handshake.error)
        self.assertGreater(fresh.made, made)

    def test_usedContextLeft(self) -> None:
        """
        A context that already made a connection, which pyOpenSSL 26.2 and
        later refuse to change, is left as it is, with a warning logged.
        """
        if not PYOPENSSL_FREEZES_CONTEXTS:
            raise SkipTest(f"pyOpenSSL {OpenSSL.__version__} lets a used context change")
        contextFactory = listenedContextFactory(self, False)
        SSL.Connection(contextFactory.getContext(), None)
        with capturedLogs() as events:
            self.assertIs(contextFactoryDecliningALPN(contextFactory), contextFactory)
        self.assertEqual([e["log_format"] for e in events],
                         ["TLS listener: ALPN left as Twisted sets it: {error}"])

    def test_configuredProtocols(self) -> None:
        """
        Protocols a context was configured with, given again, are
        negotiated.
        """
        fresh = FreshContexts()
        context = fresh.getContext()
        declineUnmatchedALPN(context, [b"http/1.1"])

        @implementer(IOpenSSLContextFactory)
        class Fixed:
            def getContext(self) -> SSL.Context:
                return context

        handshake = Handshake(Fixed(), Factory.forProtocol(Echo), [b"h2", b"http/1.1"])
        self.assertIsNone(handshake.error)
        self.assertEqual(handshake.negotiated(), b"http/1.1")


class ALPNDecliningReactorTests(SynchronousTestCase):
    """
    L{ALPNDecliningReactor} is the reactor it wraps for everything but the
    context factory of C{listenSSL}.
    """

    def test_interfaces(self) -> None:
        """
        It provides the wrapped reactor's interfaces.
        """
        reactor = ALPNDecliningReactor(MemoryReactor())
        self.assertTrue(verifyObject(IReactorSSL, reactor))
        self.assertTrue(verifyObject(IReactorTCP, reactor))

    def test_otherCallsPassThrough(self) -> None:
        """
        A C{tcp:} listener listens on the wrapped reactor, unchanged.
        """
        memory = MemoryReactor()
        factory = Factory.forProtocol(Echo)
        strports.service("tcp:8080:interface=127.0.0.1", factory,
                         reactor=reactorDecliningALPN(memory)).privilegedStartService()
        self.assertEqual(memory.tcpServers, [(8080, factory, 50, "127.0.0.1")])

    def test_listenSSL(self) -> None:
        """
        C{listenSSL} listens on the wrapped reactor with the same port,
        factory, backlog and interface, and returns its port.
        """
        memory = MemoryReactor()
        factory = Factory.forProtocol(Echo)
        contextFactory = FreshContexts()
        port = ALPNDecliningReactor(memory).listenSSL(443, factory, contextFactory, 7, "::1")
        [(number, listened, used, backlog, interface)] = memory.sslServers
        self.assertEqual((number, listened, backlog, interface), (443, factory, 7, "::1"))
        self.assertEqual(port.getHost().port, 443)
        self.assertIsNone(Handshake(used, Factory.forProtocol(Echo), [b"http/1.1"]).error)


class RecordingReactor(ALPNDecliningReactor):
    """
    An L{ALPNDecliningReactor} that keeps the ports it listened on, so that
    a test learns the port number a listener on port 0 got.
    """

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self.ports: list[Any] = []

    def listenSSL(self, *args: Any, **kwargs: Any) -> Any:
        port = super().listenSSL(*args, **kwargs)
        self.ports.append(port)
        return port


def opensslClient(openssl: str, port: int, line: bytes) -> str:
    """
    Run C{openssl s_client -alpn http/1.1}, send C{line}, and once it has
    come back, end the input (s_client then closes the connection).

    @return: everything s_client wrote.
    """
    deadline = Deadline(15, "openssl s_client")
    process = subprocess.Popen(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "http/1.1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert process.stdin is not None and process.stdout is not None
    stdout = process.stdout.fileno()
    output = b""

    def read() -> bool:
        if select.select([stdout], [], [], deadline.remaining())[0]:
            chunk = os.read(stdout, 65536)
            if not chunk:
                return False
            nonlocal output
            output += chunk
        return True

    try:
        process.stdin.write(line)
        process.stdin.flush()
        while line not in output and read():
            pass
        process.stdin.close()
        while read():
            pass
        process.wait(deadline.remaining())
        return output.decode("utf-8", "replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def pythonClient(port: int, data: bytes) -> tuple[Optional[str], bytes]:
    """
    Connect with Python's C{ssl} module offering C{h2} and C{http/1.1}, send
    C{data}, and read as many bytes back.

    @return: the protocol ALPN selected, and the bytes read.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    deadline = Deadline(10, "the TLS client")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw) as conn:
        conn.sendall(data)
        received = b""
        while len(received) < len(data):
            conn.settimeout(deadline.remaining())
            chunk = conn.recv(4096)
            if not chunk:
                break
            received += chunk
        return conn.selected_alpn_protocol(), received


class TLSProxyIntegrationTests(TestCase):
    """
    Integration tests: a proxy on a TLS listener, built as the service
    builds listeners, through L{ALPNDecliningReactor}, relays for clients
    that offer ALPN.  They run on the global reactor, which Twisted's TLS
    protocol uses to gather writes; the clients run on a thread.
    """

    timeout = 30

    def listen(self, handler: Any) -> int:
        """
        Start a proxy on an C{ssl:} listener relaying to a backend serving
        C{handler}; return the listener's port.
        """
        from twisted.internet import reactor

        from txsockproxy.backends import BackendPool
        from txsockproxy.balancers import FairBalancer
        from txsockproxy.config import BackendConfig, ProxyConfig
        from txsockproxy.relay import ProxyFactory

        backend = Server(handler)
        self.addCleanup(backend.stop)
        listen = tlsListen(self)
        config = ProxyConfig(
            name="t", listen=(listen,),
            backends=(BackendConfig(endpoint=backend.endpoint, label="b"),),
        )
        factory = ProxyFactory(BackendPool.fromConfig(config, FairBalancer(), reactor), reactor)
        recording = RecordingReactor(reactor)
        service = strports.service(listen, factory, reactor=cast(Any, recording))
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        [port] = recording.ports
        return int(port.getHost().port)

    @inlineCallbacks
    def test_pythonClient(self) -> Generator[Deferred[Any], Any, None]:
        """
        Python's C{ssl} client offering C{h2} and C{http/1.1} completes the
        handshake without ALPN, and bytes flow both ways through the proxy.
        """
        port = self.listen(echoHandler)
        alpn, received = yield deferToThread(pythonClient, port, b"hello through TLS")
        self.assertIsNone(alpn)
        self.assertEqual(received, b"hello through TLS")

    @inlineCallbacks
    def test_opensslClient(self) -> Generator[Deferred[Any], Any, None]:
        """
        C{openssl s_client -alpn http/1.1} completes the handshake, is told
        that no ALPN was negotiated, and its bytes flow both ways through
        the proxy.
        """
        openssl = shutil.which("openssl")
        if openssl is None:
            raise SkipTest("the openssl command is not installed")
        port = self.listen(echoHandler)
        output = yield deferToThread(opensslClient, openssl, port, b"hello from s_client\n")
        self.assertNotIn("alert internal error", output)
        self.assertIn("No ALPN negotiated", output)
        self.assertEqual(output.count("hello from s_client"), 1)


class TwistdTLSListenerIntegrationTests(_IntegrationTestCase):
    """
    C{twistd sockproxy} with an C{ssl:} listener, as a user runs it: clients
    that offer ALPN are served, and clients that never complete a handshake
    cost no backend connection.
    """

    def startProxy(self, backend: Server) -> int:
        config = proxyConfig(self.tmp, [tlsListen(self)], [{"endpoint": backend.endpoint}])
        return boundPort(self.startTwistd(["sockproxy", "--config", config]))

    def test_alpnClient(self) -> None:
        """
        A client offering C{h2} and C{http/1.1} completes its handshake (no
        protocol selected) and its bytes are relayed both ways.
        """
        backend = self.startServer(echoHandler)
        port = self.startProxy(backend)
        alpn, received = pythonClient(port, b"hello through TLS")
        self.assertIsNone(alpn)
        self.assertEqual(received, b"hello through TLS")

    def test_noBackendBeforeHandshake(self) -> None:
        """
        Clients that send garbage, or nothing, instead of a TLS handshake
        open no backend connection; a real client then still gets one.
        """
        backend = self.startServer(echoHandler)
        port = self.startProxy(backend)
        for payload in (b"GET / HTTP/1.0\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b""):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as garbage:
                if payload:
                    garbage.sendall(payload)
                    garbage.settimeout(10)
                    try:
                        while garbage.recv(4096):
                            pass
                    except OSError:
                        pass
        _, received = pythonClient(port, b"after the garbage")
        self.assertEqual(received, b"after the garbage")
        self.assertEqual(backend.accepted, 1)

    def test_proxyProtocolInsideTLS(self) -> None:
        """
        A C{haproxy:ssl:} listener (the PROXY header inside TLS) relays: the
        TLS layer's handshake event does not reach the session through the
        PROXY-protocol wrapper, and the session does not wait for it.
        """
        backend = self.startServer(echoHandler)
        config = proxyConfig(
            self.tmp, ["haproxy:" + tlsListen(self)], [{"endpoint": backend.endpoint}]
        )
        port = boundPort(self.startTwistd(["sockproxy", "--config", config]))
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10)
        ) as conn:
            conn.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 1111 2222\r\nhello")
            self.assertEqual(conn.recv(100), b"hello")
