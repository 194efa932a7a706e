"""
Tests for L{txsockproxy._fast.port} (the TCP ports of txsockproxy's reactor) and
for the lean construction of L{fastconnect.TCPClient}: loopback integration
tests on a private reactor turned by hand, a bounded number of times.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any, Optional

from twisted.internet import address, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import globalLogPublisher

from tests.accelerator.reactor_support import ReactorTestCase, RecordingFactory, recordCalls
from txsockproxy import handles
from txsockproxy._fast import connect as fastconnect
from txsockproxy._fast import port as tcpport
from txsockproxy._fast import relay as fastrelay
from txsockproxy.service import systemBacklog, withBacklog


class Accepted(Protocol):
    """
    A server protocol that records its address and connection.
    """

    def __init__(self, addr: Any) -> None:
        self.addr = addr
        self.made = False

    def connectionMade(self) -> None:
        self.made = True


class AcceptingFactory(ServerFactory):
    """
    Records the protocols it builds; C{refuse} makes it build none.
    """

    noisy = False

    def __init__(self) -> None:
        self.built: list[Accepted] = []
        self.refuse = False
        self.onBuild: Optional[Any] = None

    def buildProtocol(self, addr: Any) -> Optional[Accepted]:  # type: ignore[override]
        if self.onBuild is not None:
            self.onBuild()
        if self.refuse:
            return None
        protocol = Accepted(addr)
        self.built.append(protocol)
        return protocol


class NoAddressFactory(AcceptingFactory):
    """
    Declares that it does not use the address (as the proxy's factory does).
    """

    wantsAddress = False


class PortTests(ReactorTestCase):
    """
    L{tcpport.Port} accepts clients as Twisted's port does, with less work.
    """

    def listen(self, factory: ServerFactory, interface: str = "127.0.0.1") -> Any:
        port = self.reactor.listenTCP(0, factory, interface=interface)
        self.addCleanup(lambda: port.connected and port.connectionLost(None))
        return port

    def clients(self, port: Any, count: int, family: int = socket.AF_INET) -> list[socket.socket]:
        clients = []
        host = port.getHost()
        for _ in range(count):
            client = socket.socket(family)
            self.addCleanup(client.close)
            client.connect((host.host, host.port))
            clients.append(client)
        return clients

    def test_listenTCPUsesLeanPort(self) -> None:
        """
        The reactor's C{listenTCP} listens with L{tcpport.Port}, whose
        transports are L{tcpport.Server}s.
        """
        factory = AcceptingFactory()
        port = self.listen(factory)
        self.assertIsInstance(port, tcpport.Port)
        self.clients(port, 1)
        self.turnUntil(lambda: len(factory.built) == 1)
        self.assertIsInstance(factory.built[0].transport, tcpport.Server)
        self.assertTrue(factory.built[0].made)

    def test_clientSocketOfCType(self) -> None:
        """
        A client's socket is of the C type under C{socket.socket} (no Python
        constructor per client), non-blocking, and what
        L{handles.socketOf} finds under the transport, so that the
        session's C{TCP_NODELAY} and its checks of the socket's error work.
        """
        factory = AcceptingFactory()
        port = self.listen(factory)
        [client] = self.clients(port, 1)
        self.turnUntil(lambda: len(factory.built) == 1)
        transport = factory.built[0].transport
        self.assertIs(type(transport.socket), socket.SocketType)
        self.assertNotIsInstance(transport.socket, socket.socket)
        self.assertFalse(transport.socket.getblocking())
        self.assertIs(handles.socketOf(transport), transport.socket)
        self.assertTrue(handles.noDelay(transport))
        self.assertEqual(
            transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1
        )
        self.assertEqual(handles.pendingError(transport), 0)

    def test_addressGiven(self) -> None:
        """
        A factory gets each client's address, as with Twisted's port.
        """
        factory = AcceptingFactory()
        port = self.listen(factory)
        clients = self.clients(port, 3)
        self.turnUntil(lambda: len(factory.built) == 3)
        expected = sorted(c.getsockname()[1] for c in clients)
        self.assertEqual(sorted(p.addr.port for p in factory.built), expected)
        for protocol in factory.built:
            self.assertEqual(protocol.addr.host, "127.0.0.1")
            self.assertEqual(protocol.addr, protocol.transport.getPeer())

    def test_noAddressForFactoryThatDoesNotWantIt(self) -> None:
        """
        A factory with C{wantsAddress = False} gets L{None}; the transport
        still knows the peer.
        """
        factory = NoAddressFactory()
        port = self.listen(factory)
        [client] = self.clients(port, 1)
        self.turnUntil(lambda: len(factory.built) == 1)
        protocol = factory.built[0]
        self.assertIsNone(protocol.addr)
        self.assertEqual(
            protocol.transport.getPeer(), address.IPv4Address("TCP", *client.getsockname())
        )

    def test_logPrefixAndRepr(self) -> None:
        """
        The transport's log prefix and C{repr()} read as Twisted's do, made
        when asked; a log prefix set replaces it.
        """
        factory = AcceptingFactory()
        port = self.listen(factory)
        self.clients(port, 2)
        self.turnUntil(lambda: len(factory.built) == 2)
        second = max(factory.built, key=lambda p: p.transport.sessionno)
        transport = second.transport
        self.assertEqual(transport.sessionno, 1)
        self.assertEqual(transport.logPrefix(), "Accepted,1,127.0.0.1")
        self.assertEqual(repr(transport), f"<Accepted #1 on {port.getHost().port}>")
        self.assertNotIn("logstr", transport.__dict__)
        transport.logstr = "changed"
        transport.repstr = "<changed>"
        self.assertEqual(transport.logPrefix(), "changed")
        self.assertEqual(repr(transport), "<changed>")

    def test_logPrefixAndReprOnceClosed(self) -> None:
        """
        Once closed (its protocol gone), the transport still has a log
        prefix and a C{repr()}, as Twisted's does (Twisted logs with them
        when it disconnects everything at shutdown).
        """
        factory = AcceptingFactory()
        port = self.listen(factory)
        self.clients(port, 1)
        self.turnUntil(lambda: len(factory.built) == 1)
        transport = factory.built[0].transport
        transport.loseConnection()
        self.turnUntil(lambda: not hasattr(transport, "socket"))
        self.assertEqual(transport.logPrefix(), "Uninitialized,0,127.0.0.1")
        self.assertEqual(repr(transport), f"<closed #0 on {port.getHost().port}>")

    def test_waitingClientsAcceptedInOneRead(self) -> None:
        """
        One readiness event accepts every client waiting (up to Twisted's
        adaptive limit), and the limit follows what was accepted.
        """
        factory = AcceptingFactory()
        port = self.listen(factory)
        self.clients(port, 5)
        port.doRead()
        self.assertEqual(len(factory.built), 5)
        self.assertEqual(port.numberAccepts, 5)
        port.doRead()
        self.assertEqual(port.numberAccepts, 1)

    def test_refusedClientClosed(self) -> None:
        """
        When the factory builds no protocol, the client's socket is closed.
        """
        factory = AcceptingFactory()
        factory.refuse = True
        port = self.listen(factory)
        [client] = self.clients(port, 1)
        port.doRead()
        client.settimeout(5)
        self.assertEqual(client.recv(1), b"")

    def test_stopsAcceptingOnceStopped(self) -> None:
        """
        A port stopped by a protocol it built accepts no more in that read.
        """
        factory = AcceptingFactory()
        port = self.listen(factory)
        factory.onBuild = port.stopListening
        self.clients(port, 3)
        port.doRead()
        self.assertEqual(len(factory.built), 1)

    def test_otherAcceptErrorsGoToTwisted(self) -> None:
        """
        An accept error other than "no more clients" is handled by Twisted's
        C{doRead}: out of descriptors in the whole system is logged, and the
        port goes on accepting.
        """
        factory = AcceptingFactory()
        port = self.listen(factory)
        real = port.socket

        class Exhausted:
            def _accept(self) -> Any:
                raise OSError(errno.ENFILE, "Too many open files in system")

            def accept(self) -> Any:
                raise OSError(errno.ENFILE, "Too many open files in system")

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        port.socket = Exhausted()
        self.clients(port, 1)
        port.doRead()
        self.assertEqual(factory.built, [])
        self.assertIn("ENFILE", [e.get("acceptError") for e in events])
        port.socket = real
        port.doRead()
        self.assertEqual(len(factory.built), 1)

    def test_ipv6(self) -> None:
        """
        An IPv6 port gives IPv6 addresses.
        """
        if not socket.has_ipv6:
            self.skipTest("no IPv6")
        factory = AcceptingFactory()
        try:
            port = self.listen(factory, interface="::1")
        except Exception as e:
            self.skipTest(f"cannot listen on ::1: {e}")
        [client] = self.clients(port, 1, socket.AF_INET6)
        self.turnUntil(lambda: len(factory.built) == 1)
        protocol = factory.built[0]
        self.assertIsInstance(protocol.addr, address.IPv6Address)
        self.assertEqual(protocol.addr.port, client.getsockname()[1])
        self.assertEqual(protocol.transport.getPeer(), protocol.addr)

    def test_relayedLikeTwistedsServer(self) -> None:
        """
        The fast path takes L{tcpport.Server} for a plain socket, as it does
        Twisted's C{tcp.Server}.
        """
        factory = AcceptingFactory()
        port = self.listen(factory)
        self.clients(port, 1)
        self.turnUntil(lambda: len(factory.built) == 1)
        self.assertTrue(fastrelay.isPlain(factory.built[0].transport))


def listenBacklog(sock: socket.socket) -> int:
    """
    The backlog a listening TCP socket was given by C{listen()}, as the kernel
    keeps it (Linux reports it in C{tcpi_sacked} of a listening socket's
    C{TCP_INFO}, where C{ss -lt} reads its Send-Q).
    """
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("8B6I", info)[-1])


class BacklogTests(ReactorTestCase):
    """
    The listen backlog of a proxy's listener reaches C{listen()} of the
    reactor's L{tcpport.Port}: the system's longest by default, the endpoint
    string's own when it gives one.
    """

    def listenWith(self, description: str) -> Any:
        """
        Listen on C{description} as the proxy's service does: with its
        default backlog, through Twisted's endpoint parsing.
        """
        endpoint = serverFromString(self.reactor, withBacklog(description, systemBacklog()))
        port = self.successResultOf(endpoint.listen(AcceptingFactory()))
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, tcpport.Port)
        return port

    def test_defaultIsSystems(self) -> None:
        """
        A C{tcp:} listener whose string gives no backlog listens with the
        system's longest (C{net.core.somaxconn}), not Twisted's 50.
        """
        port = self.listenWith("tcp:0:interface=127.0.0.1")
        self.assertEqual(listenBacklog(port.socket), systemBacklog())
        self.assertGreater(systemBacklog(), 50)

    def test_givenBacklogWins(self) -> None:
        """
        A C{backlog=} in the endpoint string is the one given to C{listen()}.
        """
        port = self.listenWith("tcp:0:interface=127.0.0.1:backlog=37")
        self.assertEqual(listenBacklog(port.socket), 37)

    def test_portListensWithBacklog(self) -> None:
        """
        The reactor's C{listenTCP} passes its C{backlog} to C{listen()}.
        """
        port = self.reactor.listenTCP(0, AcceptingFactory(), backlog=41, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.assertEqual(listenBacklog(port.socket), 41)


class TCPClientTests(ReactorTestCase):
    """
    L{fastconnect.TCPClient} to an IPv4 address is made with less work than
    Twisted's, and otherwise by Twisted's constructor.
    """

    # Its tests record calls on the proxy's sockets.
    pythonSockets = True

    def test_nonBlockingFromCreation(self) -> None:
        """
        To an IPv4 address, the socket is created non-blocking: no
        C{setblocking()} call, and the connect completes.
        """
        calls = recordCalls(self, "setblocking")
        server = self.listenTCP()
        factory, connecting = self.connectTCP(server)
        self.assertEqual(connecting.transport.socket.gettimeout(), 0.0)
        self.assertEqual(calls, [])
        self.turnUntil(lambda: factory.protocol is not None and factory.protocol.made)
        peer, _ = server.accept()
        self.addCleanup(peer.close)
        self.assertEqual(peer.getpeername(), connecting.transport.socket.getsockname())

    def test_bindAddressThroughTwisted(self) -> None:
        """
        With a bind address, Twisted's constructor makes the transport (and
        binds it).
        """
        server = self.listenTCP()
        factory = RecordingFactory()
        endpoint = TCP4ClientEndpoint(
            self.reactor, "127.0.0.1", server.getsockname()[1], bindAddress=("127.0.0.1", 0)
        )
        calls: list[Any] = []
        original = tcp.Client.__init__

        def recording(self: Any, *args: Any) -> None:
            calls.append(args[:3])
            original(self, *args)

        self.patch(tcp.Client, "__init__", recording)
        connecting = fastconnect.connect(endpoint, factory, 5.0)
        assert connecting is not None
        connecting.start()
        self.turnUntil(lambda: factory.protocol is not None and factory.protocol.made)
        self.assertEqual(calls, [("127.0.0.1", server.getsockname()[1], ("127.0.0.1", 0))])
        peer, _ = server.accept()
        self.addCleanup(peer.close)

    def test_peerShared(self) -> None:
        """
        C{getPeer()} gives the address Twisted's would, one object per
        backend address: connections to the same address share it.
        """
        server = self.listenTCP()
        peers = []
        for _ in range(2):
            factory, connecting = self.connectTCP(server)
            self.turnUntil(lambda f=factory: f.protocol is not None and f.protocol.made)
            accepted, _ = server.accept()
            self.addCleanup(accepted.close)
            peers.append(connecting.transport.getPeer())
        self.assertEqual(peers[0], address.IPv4Address("TCP", *server.getsockname()))
        self.assertIs(peers[0], peers[1])

    def test_ipv4Literals(self) -> None:
        """
        Only IPv4 address literals take the lean construction.
        """
        self.assertTrue(fastconnect._isIPv4("127.0.0.1"))
        self.assertFalse(fastconnect._isIPv4("localhost"))
        self.assertFalse(fastconnect._isIPv4("::1"))


class AddressRecordingFactory(RecordingFactory):
    """
    Records the address given to C{buildProtocol}; C{refuse} builds none.
    """

    def __init__(self) -> None:
        super().__init__()
        self.addresses: list[Any] = []
        self.refuse = False

    def buildProtocol(self, addr: Any) -> Any:
        self.addresses.append(addr)
        if self.refuse:
            return None
        return super().buildProtocol(addr)


class NoAddressRecordingFactory(AddressRecordingFactory):
    """
    Declares that it does not use the address (as the session's backend
    factory does).
    """

    wantsAddress = False


class ConnectDoneTests(ReactorTestCase):
    """
    A connect started by L{fastconnect.connect} completes as Twisted's
    C{_connectDone} does, less the address for a factory that does not want
    it and the log prefix until asked for.
    """

    def connectWith(self, factory: AddressRecordingFactory) -> tuple[Any, socket.socket, socket.socket]:
        """
        Connect C{factory} to a loopback listener until its C{buildProtocol}
        is called: (transport, listening socket, the accepted peer).
        """
        server = self.listenTCP()
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", server.getsockname()[1])
        connecting = fastconnect.connect(endpoint, factory, 5.0)
        assert connecting is not None
        connecting.start()
        self.turnUntil(lambda: bool(factory.addresses))
        peer, _ = server.accept()
        self.addCleanup(peer.close)
        return connecting.transport, server, peer

    def test_addressGiven(self) -> None:
        """
        A factory gets the peer's address, as with Twisted's transport.
        """
        factory = AddressRecordingFactory()
        transport, server, _ = self.connectWith(factory)
        self.assertEqual(factory.addresses, [address.IPv4Address("TCP", *server.getsockname())])
        assert factory.protocol is not None
        self.assertTrue(factory.protocol.made)

    def test_socketOfCType(self) -> None:
        """
        The transport's socket is of the C type under C{socket.socket}, and
        what L{handles.socketOf} finds under it.
        """
        transport, _, _ = self.connectWith(AddressRecordingFactory())
        self.assertIs(type(transport.socket), socket.SocketType)
        self.assertIs(handles.socketOf(transport), transport.socket)

    def test_noAddressForFactoryThatDoesNotWantIt(self) -> None:
        """
        A factory with C{wantsAddress = False} gets L{None}; the transport
        still knows its peer.
        """
        factory = NoAddressRecordingFactory()
        transport, server, _ = self.connectWith(factory)
        self.assertEqual(factory.addresses, [None])
        self.assertEqual(transport.getPeer(), address.IPv4Address("TCP", *server.getsockname()))

    def test_logPrefix(self) -> None:
        """
        The log prefix reads as Twisted's (C{"<protocol>,client"}), made when
        asked; a value set replaces it; once closed it is the class default.
        """
        factory = AddressRecordingFactory()
        transport, server, _ = self.connectWith(factory)
        self.assertNotIn("logstr", transport.__dict__)
        self.assertEqual(transport.logPrefix(), "Recording,client")
        transport.logstr = "changed"
        self.assertEqual(transport.logPrefix(), "changed")
        del transport.__dict__["_logstr"]
        transport.loseConnection()
        self.turnUntil(lambda: not hasattr(transport, "socket"))
        self.assertEqual(transport.logPrefix(), "Uninitialized")

    def test_noProtocol(self) -> None:
        """
        A factory that builds no protocol gets the connection dropped, as
        with Twisted's transport.
        """
        factory = AddressRecordingFactory()
        factory.refuse = True
        transport, _, peer = self.connectWith(factory)
        peer.settimeout(5)
        self.turnUntil(lambda: not hasattr(transport, "socket"))
        self.assertEqual(peer.recv(16), b"")


class AdoptedPortTests(ReactorTestCase):
    """
    The reactor's C{adoptStreamPort}: a worker process's listening sockets,
    handed over by its parent, accept as C{listenTCP}'s do.
    """

    def test_adoptedTCPUsesLeanPort(self) -> None:
        """
        An adopted TCP socket is listened on with L{tcpport.Port}, accepts
        clients with L{tcpport.Server} transports, again after a pause, and
        the adopting process's copy is its own: closing it leaves the
        original open.
        """
        bound = socket.socket()
        self.addCleanup(bound.close)
        bound.bind(("127.0.0.1", 0))
        bound.listen(5)
        bound.setblocking(False)
        factory = AcceptingFactory()
        port = self.reactor.adoptStreamPort(bound.fileno(), socket.AF_INET, factory)
        self.addCleanup(lambda: port.connected and port.connectionLost(None))
        self.assertIsInstance(port, tcpport.Port)
        self.assertEqual(port.getHost().port, bound.getsockname()[1])
        client = socket.socket()
        self.addCleanup(client.close)
        client.connect(bound.getsockname())
        self.turnUntil(lambda: len(factory.built) == 1)
        self.assertIsInstance(factory.built[0].transport, tcpport.Server)
        # Paused and resumed (as at max-connections), it accepts again.
        port.stopReading()
        port.startReading()
        again = socket.socket()
        self.addCleanup(again.close)
        again.connect(bound.getsockname())
        self.turnUntil(lambda: len(factory.built) == 2)
        port.connectionLost(None)
        self.assertEqual(bound.getsockname()[0], "127.0.0.1")

    def test_adoptedUnixAsTwistedDoes(self) -> None:
        """
        An adopted unix socket is listened on as Twisted's reactor does.
        """
        import os
        import tempfile

        from twisted.internet import unix

        path = os.path.join(tempfile.mkdtemp(prefix="sp-"), "s")
        bound = socket.socket(socket.AF_UNIX)
        self.addCleanup(bound.close)
        bound.bind(path)
        bound.listen(5)
        bound.setblocking(False)
        factory = AcceptingFactory()
        port = self.reactor.adoptStreamPort(bound.fileno(), socket.AF_UNIX, factory)
        self.addCleanup(lambda: port.connected and port.connectionLost(None))
        self.assertIsInstance(port, unix.Port)
        client = socket.socket(socket.AF_UNIX)
        self.addCleanup(client.close)
        client.connect(path)
        self.turnUntil(lambda: len(factory.built) == 1)
