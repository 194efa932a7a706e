"""
Connecting to a backend with less work than Twisted's endpoints and
connectors (txsockproxy's accelerator): at once rather than in the reactor's
next turn, with one timer, and with fewer system calls per connect.
"""

from __future__ import annotations

import os
import socket
from errno import EALREADY, EINPROGRESS, EISCONN, EWOULDBLOCK
from typing import Any, Optional

from twisted.internet import abstract, error, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python import failure

from txsockproxy._fast import port
from txsockproxy._fast.reactor import EPollReactor
from txsockproxy._fast.relay import registerPlain

try:
    from twisted.internet import unix

    _UNIX = True
except ImportError:  # pragma: no cover (no unix sockets on this platform)
    _UNIX = False

_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_SocketType = port.SocketType


class _ConnectAtOnce:
    """
    Mixed into Twisted's client transports: start the connect in the
    constructor, not in the reactor's next turn (Twisted's
    C{callLater(0, ...)}, and for TCP a Deferred for an address that needs no
    resolving); and complete it with fewer system calls than Twisted's
    C{doConnect}: no C{SO_ERROR} check before the first C{connect()}, and one
    C{epoll_ctl()} instead of three to go from connecting to reading.
    """

    def doConnect(self) -> None:
        if not hasattr(self, "connector"):
            self.doWrite = self.doRead = self._connecting
            return
        self._connectStep()

    # Whether a connect in progress is asked again at once (see _connectStep).
    askAgain = True

    def _connectStep(self, first: bool = True) -> None:
        """
        Call C{connect()}: connected, in progress, or failed.  Once the socket
        is readable or writable, C{connect()} again is what tells "connected"
        from "still in progress" (C{SO_ERROR} is 0 in both).

        @param first: whether this starts the connect.  Then, if it is in
            progress, C{connect()} is asked again at once: to an address of
            this host, Linux completes the handshake within the first call
            (which still says "in progress"), and the answer then saves
            waiting for the socket to become writable (an event, a
            C{getsockopt} and an C{epoll_ctl}: the socket is registered for
            reading only).  Elsewhere it says "in progress" again.
        """
        try:
            connect = self.socket.connect_ex  # type: ignore[attr-defined]
            result = connect(self.realAddress)  # type: ignore[attr-defined]
            if first and result == EINPROGRESS and self.askAgain:
                result = connect(self.realAddress)  # type: ignore[attr-defined]
        except OSError as e:
            result = e.errno if e.errno is not None else -1
            if result == -1:
                self.failIfNotConnected(error.ConnectError(string=str(e)))  # type: ignore[attr-defined]
                return
        if result in (EINPROGRESS, EWOULDBLOCK, EALREADY):
            # Readable or writable: connected, or failed (one epoll_ctl).
            # Only then are events handled as connect events (a connect
            # that completes at once is spared making and dropping these).
            self.doWrite = self.doRead = self._connecting
            self.reactor.addReaderAndWriter(self)  # type: ignore[attr-defined]
        elif result and result != EISCONN:
            self.failIfNotConnected(  # type: ignore[attr-defined]
                error.getConnectError((result, os.strerror(result)))
            )
        else:
            if self.fileno() in self.reactor._writes:  # type: ignore[attr-defined]
                # Registered while in progress (above): still registered
                # for reading, which _connectDone wants.
                del self.doWrite, self.doRead
                self.stopWriting()  # type: ignore[attr-defined]
            self._connectDone()

    def _connecting(self) -> None:
        """
        The socket is readable or writable while connecting: connected,
        unless C{SO_ERROR} says why not.
        """
        if not hasattr(self, "connector"):
            return
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[attr-defined]
        if err:
            self.failIfNotConnected(error.getConnectError((err, os.strerror(err))))  # type: ignore[attr-defined]
            return
        self._connectStep(first=False)

    def _connectDone(self) -> None:
        """
        Twisted's C{BaseClient._connectDone}, less two things made per
        connection that the proxy does not use: the peer's address for a
        factory that declares C{wantsAddress = False}, and the log prefix
        (made when asked for, see L{logstr}).
        """
        transport: Any = self
        connector = transport.connector
        wants = getattr(getattr(connector, "factory", None), "wantsAddress", True)
        protocol = connector.buildProtocol(transport.getPeer() if wants else None)
        transport.connected = 1
        if protocol is None:
            # As Twisted: a stand-in protocol, and the connection dropped.
            transport.protocol = Protocol()
            transport.loseConnection()
        else:
            transport.protocol = protocol
            transport.reactor.addReader(transport)  # startReading()
            protocol.makeConnection(transport)

    logstr = port.madeWhenAsked(
        "logstr",
        lambda self: "Uninitialized" if self.__dict__.get("protocol") is None
        else f"{port.logPrefixOf(self)},client",
    )

    def _finishInit(self, whenDone: Any, skt: Any, error: Any, reactor: Any) -> None:
        if whenDone:
            self._commonConnection.__init__(self, skt, None, reactor)  # type: ignore[attr-defined]
            whenDone()
        else:
            reactor.callLater(0, self.failIfNotConnected, error)  # type: ignore[attr-defined]


# The address object of each backend address seen (see TCPClient.getPeer).
_peers: dict[Any, Any] = {}

# Whether each host seen is an IPv4 address literal (the first 1024 seen).
_ipv4: dict[str, bool] = {}


def _isIPv4(host: str) -> bool:
    known = _ipv4.get(host)
    if known is None:
        known = abstract.isIPAddress(host)
        if len(_ipv4) < 1024:
            _ipv4[host] = known
    return known


class TCPClient(_ConnectAtOnce, tcp.Client):
    """
    A TCP client transport that connects at once (see L{connect}).

    To an IPv4 address with no bind address, it is also made with less work
    than Twisted's: the address is known to be one without parsing it again,
    and the socket is made non-blocking as it is created (Twisted sets it so
    twice more, with an C{ioctl()} each time).
    """

    def __init__(
        self, host: str, port: int, bindAddress: Any, connector: Any, reactor: Any
    ) -> None:
        if bindAddress is not None or not (_ipv4.get(host) or _isIPv4(host)):
            tcp.Client.__init__(self, host, port, bindAddress, connector, reactor)
            return
        try:
            skt = _SocketType(socket.AF_INET, socket.SOCK_STREAM | _NONBLOCK)
        except OSError:
            # Out of descriptors, ...: Twisted's constructor reports it.
            tcp.Client.__init__(self, host, port, bindAddress, connector, reactor)
            return
        # What Twisted's constructors set (FileDescriptor, Connection,
        # _BaseTCPClient, _BaseBaseClient), then the connect.
        self.connector = connector
        self.addr = self.realAddress = (host, port)
        self._requiresResolution = False
        self.reactor = reactor
        self._tempDataBuffer: list[bytes] = []
        self._tempDataLen = 0
        self.socket = skt  # type: ignore[assignment]
        if not _NONBLOCK:  # pragma: no cover (Linux has SOCK_NONBLOCK)
            skt.setblocking(False)
        self.fileno = skt.fileno
        self.protocol = None  # type: ignore[assignment]
        # The backend's congestion control, set before the connect when the
        # address tells already (see Congestion.beforeConnect).
        congestion = getattr(connector, "congestion", None)
        if congestion is not None and congestion.name is not None:
            self.congestionSet = congestion.beforeConnect(skt, host)
        self._connectStep()  # doConnect(), which knows the connector is set

    def resolveAddress(self) -> None:
        if self._requiresResolution:
            tcp.Client.resolveAddress(self)
        else:
            self._setRealAddress(self.addr)

    def getPeer(self) -> Any:
        """
        Twisted's, but one address object per backend address (the first
        1024 seen), not one per call: the session asks for it once per
        connection, and Twisted's address objects are dear to make.
        """
        key = self.realAddress
        peer = _peers.get(key)
        if peer is None:
            peer = tcp.Client.getPeer(self)
            if len(_peers) < 1024:
                _peers[key] = peer
        return peer


if _UNIX:

    class UNIXClient(_ConnectAtOnce, unix.Client):
        """
        A unix-socket client transport that connects at once (see
        L{connect}).
        """

    registerPlain(TCPClient, UNIXClient)
else:  # pragma: no cover
    registerPlain(TCPClient)


class Connecting:
    """
    A connect started by L{connect}: the connector of its transport (what
    Twisted's C{Connector} would be, without its Deferred-free bookkeeping
    and second timer), and what the session cancels if the client leaves.

    The factory's C{buildProtocol} is called once connected, its
    C{clientConnectionFailed(connecting, reason)} on failure, timeout
    (L{error.TimeoutError}) or cancellation (L{error.UserError}).  A failure
    found while C{start} runs (an address that cannot be reached at all) is
    reported in the reactor's next turn, as Twisted's connectors do: a
    session failing over along many such backends must not recurse.
    """

    __slots__ = (
        "factory", "transport", "timer", "reactor", "timeouts", "congestion", "_plan", "_starting",
        "_over",
    )

    def __init__(
        self,
        factory: ClientFactory,
        reactor: Any,
        timeout: float,
        plan: tuple[Any, ...],
        timeouts: Any = None,
        congestion: Any = None,
    ) -> None:
        self.factory = factory
        self.reactor = reactor
        self.timeouts = timeouts if timeouts is not None else reactor
        self.congestion = congestion
        self.transport: Any = None
        self.timer: Any = None
        self._plan: Optional[tuple[Any, ...]] = (timeout,) + plan
        self._starting = False
        # Connected or failed.
        self._over = False

    def start(self) -> None:
        """
        Start connecting, and arm the connect timeout unless the connect is
        over by then: to an address of this host, and to a unix socket, it
        usually completes (or fails) within the first C{connect()}.
        """
        assert self._plan is not None, "started twice"
        timeout, transportType, *args = self._plan
        self._plan = None
        self._starting = True
        try:
            # Once finished (even within this call), the transport ignores
            # cancel() and the timeout.
            self.transport = transportType(*args, self, self.reactor)
        except Exception as e:
            # Keep the errno: out of descriptors is the proxy's problem.
            code = e.errno if isinstance(e, OSError) else None
            self.connectionFailed(
                failure.Failure(error.ConnectError(osError=code, string=str(e)))
            )
        finally:
            self._starting = False
        if not self._over:
            self.timer = self.timeouts.callLater(timeout, self._timedOut)

    def buildProtocol(self, addr: Any) -> Any:
        self._over = True
        if self.timer is not None:
            self._stopTimer()
        return self.factory.buildProtocol(addr)

    def connectionFailed(self, reason: failure.Failure) -> None:
        self._over = True
        self._stopTimer()
        if self._starting:
            self.reactor.callLater(0, self._report, reason)
        else:
            self._report(reason)

    def _report(self, reason: failure.Failure) -> None:
        self.factory.clientConnectionFailed(self, reason)  # type: ignore[arg-type]

    def connectionLost(self, reason: failure.Failure) -> None:
        """
        The connection, once made, ended: the protocol has been told.  Forget
        the factory and the transport: the transport keeps this connector,
        and the factory (by way of the session) the transport.
        """
        self.factory = None  # type: ignore[assignment]
        self.transport = None

    def getDestination(self) -> Any:
        return self.transport.getPeer() if self.transport is not None else None

    def cancel(self) -> None:
        """
        Stop connecting (the factory hears of it as a failure).
        """
        if self.transport is not None:
            self.transport.stopConnecting()

    def _timedOut(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.transport.failIfNotConnected(error.TimeoutError())

    def _stopTimer(self) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None


def _connectsAtOnce(reactor: Any) -> bool:
    """
    Whether a connect may start inside an event handler of C{reactor}: only on
    txsockproxy's reactor, which drops the stale events of a batch that a
    socket given a recycled descriptor number would otherwise receive.
    """
    return isinstance(reactor, EPollReactor)


def connect(
    endpoint: Any,
    factory: ClientFactory,
    timeout: float,
    timeouts: Any = None,
    congestion: Any = None,
) -> Optional[Connecting]:
    """
    Prepare to connect C{factory} the way C{endpoint} would, but at once and
    with one timer, if C{endpoint} is a plain L{TCP4ClientEndpoint} or
    L{UNIXClientEndpoint} on txsockproxy's reactor.  L{Connecting.start} starts
    the connect, which may even complete (unix sockets) or fail (an address
    that cannot be reached) before C{start} returns: keep the L{Connecting}
    first.

    @param timeouts: what arms the timer (its C{callLater}): a
        L{txsockproxy.timeouts.Timeouts}, or by default the reactor.
    @param congestion: the L{txsockproxy.congestion.Congestion} a TCP
        socket is given before it connects, where the address allows
        (the transport's C{congestionSet} then says so).

    @return: the L{Connecting}, or L{None} when C{endpoint} is of another
        kind, or the reactor is not txsockproxy's: then use L{directConnect}
        or C{endpoint.connect}.
    """
    reactor = getattr(endpoint, "_reactor", None)
    if not _connectsAtOnce(reactor):
        return None
    kind = type(endpoint)
    if kind is TCP4ClientEndpoint:
        args: tuple[Any, ...] = (
            TCPClient, endpoint._host, endpoint._port, endpoint._bindAddress
        )
    elif kind is UNIXClientEndpoint and _UNIX and not endpoint._checkPID:
        args = (UNIXClient, endpoint._path)
    else:
        return None
    if endpoint._timeout and endpoint._timeout < timeout:
        timeout = endpoint._timeout
    return Connecting(factory, reactor, timeout, args, timeouts, congestion)


class _Stop:
    """
    What cancels a connect of Twisted's connector: its C{stopConnecting}.
    """

    __slots__ = ("connector",)

    def __init__(self, connector: Any) -> None:
        self.connector = connector

    def cancel(self) -> None:
        try:
            self.connector.stopConnecting()
        except error.NotConnectingError:
            pass


def directConnect(endpoint: Any, factory: ClientFactory, timeout: float) -> Optional[_Stop]:
    """
    Connect C{factory} the way C{endpoint} would, straight through the
    reactor's C{connectTCP}/C{connectUNIX} with C{timeout} (the shorter of it
    and the endpoint's own), if C{endpoint} is a plain
    L{TCP4ClientEndpoint} or L{UNIXClientEndpoint}.

    The endpoint would wrap the factory and its protocol (to forward
    half-closes, which our protocols take themselves), chain Deferreds and
    arm a second timer for the timeout.  A failure is reported to
    C{factory.clientConnectionFailed} by Twisted's connector.

    @return: what cancels the connect, or L{None} when C{endpoint} is of
        another type: then use C{endpoint.connect}.
    """
    kind = type(endpoint)
    if kind is TCP4ClientEndpoint:
        connect = endpoint._reactor.connectTCP
        args: tuple[Any, ...] = (endpoint._host, endpoint._port)
        extra: dict[str, Any] = {"bindAddress": endpoint._bindAddress}
    elif kind is UNIXClientEndpoint:
        connect = endpoint._reactor.connectUNIX
        args = (endpoint._path,)
        extra = {"checkPID": endpoint._checkPID}
    else:
        return None
    if endpoint._timeout and endpoint._timeout < timeout:
        timeout = endpoint._timeout
    return _Stop(connect(*args, factory, timeout=timeout, **extra))


__all__ = ["Connecting", "TCPClient", "connect", "directConnect"]
