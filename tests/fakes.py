"""
Fakes shared by the unit tests: a DNS resolver, a backend as a balancer sees
it, a transport wrapping another (as TLS does), and for the relay a transport
that half-closes, an endpoint whose connects the test completes by hand, and
a builder for a proxy with fake backends.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import struct
from typing import Any, Callable, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txsockproxy.backends import Backend, BackendGroup, BackendPool
from txsockproxy.balancers import FairBalancer
from txsockproxy.config import BackendConfig, CheckConfig, Protection, ProxyConfig, RouteConfig
from txsockproxy.interfaces import IBackendInfo, IBalancer
from txsockproxy.relay import FrontendProtocol, ProxyFactory


class FakeResolver:
    """
    Resolves IP literals to themselves and names from a table; other names
    fail as an unknown DNS name does. Records the names asked.
    """

    def __init__(self, table: dict[str, str] | None = None) -> None:
        self.table = dict(table or {})
        self.asked: list[str] = []

    def __call__(self, host: str) -> str:
        self.asked.append(host)
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
        try:
            return self.table[host]
        except KeyError:
            raise OSError(-2, "Name or service not known") from None


@implementer(IBackendInfo)
class BackendInfo:
    """
    A backend as a balancer sees it, with a key made from its label.
    """

    def __init__(self, label: str, weight: int = 1, active: int = 0) -> None:
        self.label = label
        self.key = f"tcp:host=127.0.0.1:port={sum(map(ord, label))}"
        self.weight = weight
        self.active = active



def tcpPair() -> tuple[socket.socket, socket.socket]:
    """
    Two ends of a loopback TCP connection: (the proxy's end, the peer's).
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    peer = socket.create_connection(listener.getsockname(), timeout=5)
    ours, _ = listener.accept()
    listener.close()
    return ours, peer


def resetSocket(sock: socket.socket) -> None:
    """
    Close C{sock} with a reset (RST) rather than a FIN. Over loopback the
    other end has it when this returns.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class SocketTransport:
    """
    A transport with a socket as its handle, as Twisted's TCP transports.
    """

    def __init__(self, skt: socket.socket) -> None:
        self.skt = skt

    def getHandle(self) -> socket.socket:
        return self.skt


class WrappingTransport:
    """
    A transport over another one, as a TLS transport is: its handle is not a
    socket.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def getHandle(self) -> object:
        return object()


class HalfCloseTransport(StringTransport):
    """
    A L{StringTransport} that records half-closes and aborts, and that, like a
    real transport, lets a producer be unregistered when none is.

    @ivar writeClosed: L{True} once C{loseWriteConnection} was called.
    @ivar aborted: L{True} once C{abortConnection} was called.
    @ivar handle: what C{getHandle()} gives: L{None}, or a socket a test
        gives to stand for the transport's own (as for a real transport, it
        is the same for the transport's whole life: the session asks once).
    """

    def __init__(self, peer: Optional[IPv4Address] = None, handle: Any = None) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=peer or IPv4Address("TCP", "127.0.0.2", 40000),
            lenient=True,
        )
        self.writeClosed = False
        self.aborted = False
        self.handle: Any = handle

    def getHandle(self) -> Any:
        return self.handle

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    An endpoint whose C{connect} returns a Deferred that the test fires with
    L{FakeEndpoint.succeed} or L{FakeEndpoint.fail}.

    @ivar attempts: (factory, Deferred) for each connect, in order.
    @ivar cancelled: how many attempts were cancelled.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[IProtocolFactory, defer.Deferred[Protocol]]] = []
        self.cancelled = 0

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Protocol]:
        def cancel(d: defer.Deferred[Protocol]) -> None:
            self.cancelled += 1

        d: defer.Deferred[Protocol] = defer.Deferred(cancel)
        self.attempts.append((factory, d))
        return d

    def succeed(
        self, peer: Optional[IPv4Address] = None, handle: Any = None
    ) -> tuple[Any, HalfCloseTransport]:
        """
        Complete the latest connect: build the protocol, give it a transport
        (whose peer is C{peer}, by default C{127.0.0.2:40000}; whose handle
        is C{handle}).

        @return: the backend protocol and its transport.
        """
        factory, d = self.attempts[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.9", 9000))
        transport = HalfCloseTransport(peer, handle)
        assert protocol is not None
        protocol.makeConnection(transport)
        d.callback(protocol)
        return protocol, transport

    def fail(self, reason: Exception) -> None:
        """
        Fail the latest connect with C{reason}.
        """
        self.attempts[-1][1].errback(Failure(reason))


class Proxy:
    """
    A proxy with fake backends on a L{Clock}, as the unit tests use it.
    """

    def __init__(
        self,
        labels: Sequence[str] = ("a", "b"),
        balancer: Optional[IBalancer] = None,
        idleTimeout: float = 0.0,
        halfClosedTimeout: float = 0.0,
        connectTimeout: float = 8.0,
        disableTime: float = 1.0,
        debug: int = 0,
        inspectDelay: float = 0.0,
        listen: str = "tcp:8080",
        sendProxy: str = "",
        protection: Protection = Protection(),
        backendMax: int = 0,
        routes: Sequence[tuple[str, Sequence[str], Sequence[str]]] = (),
        check: Optional[CheckConfig] = None,
    ) -> None:
        """
        @param check: the health check of every backend, if any.
        @param routes: for each route, its name, its server-name patterns
            and its backends' labels (all labels unique); its balancer is
            a L{FairBalancer}.
        """
        self.clock = Clock()
        allLabels = list(labels) + [label for _, _, routed in routes for label in routed]
        backendConfigs = {
            label: BackendConfig(
                endpoint=f"tcp:host=127.0.0.1:port={10000 + i}",
                label=label,
                connectTimeout=connectTimeout,
                disableTime=disableTime,
                sendProxy=sendProxy,
                maxConnections=backendMax,
                check=check,
            )
            for i, label in enumerate(allLabels)
        }
        configs = tuple(backendConfigs[label] for label in labels)
        self.config = ProxyConfig(
            name="test",
            listen=(listen,),
            backends=configs,
            idleTimeout=idleTimeout,
            halfClosedTimeout=halfClosedTimeout,
            inspectDelay=inspectDelay,
            routes=tuple(
                RouteConfig(name, tuple(names), tuple(backendConfigs[x] for x in routed))
                for name, names, routed in routes
            ),
            protection=protection,
        )
        self.endpoints = {label: FakeEndpoint() for label in allLabels}
        self.backends = {
            label: Backend(c, self.endpoints[label]) for label, c in backendConfigs.items()
        }
        self.pool = BackendPool(
            self.config, [self.backends[label] for label in labels],
            balancer or FairBalancer(), self.clock,
            [
                BackendGroup(name, [self.backends[x] for x in routed], FairBalancer(), names)
                for name, names, routed in routes
            ],
        )
        self.factory = ProxyFactory(self.pool, self.clock, debug, listen=listen)

    def accept(
        self, peer: Optional[IPv4Address] = None, transport: Optional[HalfCloseTransport] = None
    ) -> tuple[FrontendProtocol, HalfCloseTransport]:
        """
        A client connects (over C{transport} if given).

        @return: the frontend protocol and the client's transport.
        """
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 40000))
        transport = transport or HalfCloseTransport(peer)
        protocol.makeConnection(transport)
        return protocol, transport


def lost(clean: bool = True) -> Failure:
    """
    The reason a connection was lost: closed cleanly, or reset.
    """
    return Failure(ConnectionDone() if clean else ConnectionLost("reset"))


_CERTIFICATE: list[bytes] = []


def certificate() -> bytes:
    """
    A self-signed certificate and its key, PEM, as a lighttpd pemfile holds
    them (made once per test run).
    """
    if not _CERTIFICATE:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        _CERTIFICATE.append(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        )
    return _CERTIFICATE[0]


class PrivateReactorTestCase(SynchronousTestCase):
    """
    A real reactor of the test's own (not installed), turned by the test a
    bounded number of times: Twisted's select reactor, or what
    L{makeReactor} makes.
    """

    def makeReactor(self) -> Any:
        from twisted.internet.selectreactor import SelectReactor

        return SelectReactor()

    def setUp(self) -> None:
        self.reactor = self.makeReactor()
        self.addCleanup(self.closeReactor)

    def closeReactor(self) -> None:
        """
        Close what the reactor still watches, its calls and its waker.
        """
        for selectable in self.reactor.removeAll():
            selectable.connectionLost(Failure(ConnectionDone()))
        for call in self.reactor.getDelayedCalls():
            call.cancel()
        self.reactor.waker.connectionLost(None)

    def turnUntil(self, condition: Callable[[], bool], turns: int = 200) -> None:
        """
        Turn the reactor until C{condition()} holds, at most C{turns} times
        (each waits at most 50 ms for an event).
        """
        for _ in range(turns):
            if condition():
                return
            self.reactor.runUntilCurrent()
            due = self.reactor.timeout()
            self.reactor.doIteration(0.05 if due is None else min(due, 0.05))
        self.assertTrue(condition(), "the condition never held")
