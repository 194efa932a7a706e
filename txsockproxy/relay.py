"""
The relay: one L{Session} per client connection, joining a frontend protocol (the
client's) and a backend protocol built by a L{BackendFactory} (a ClientFactory)
connected through the backend's endpoint.

Rules the session keeps:
 - Until the backend is connected, at most C{HOLD_LIMIT} bytes are read from the
   client and held; then the client is paused. Reading that little lets the proxy
   see the client leave while the connect is pending, and cancel it.
 - Once connected, each transport is the other's streaming producer, so a slow
   reader pauses the fast writer: memory per session stays bounded.
 - EOF from one side becomes C{loseWriteConnection()} on the other; the other
   direction keeps flowing. The session ends when both directions are done, or
   at once on an error or reset from either side, which becomes a reset of
   the other side (never a FIN: a truncated stream must not look complete).
 - A side that is not being read (paused by flow control) is still watched
   (L{PausedWatch}): its reset ends the session, its FIN starts the
   half-closed timeout.
 - A connect failure disables that backend and the session moves on to the next
   one the balancer picks; when none is left the client is closed at once.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txsockproxy.addresses import formatAddress
from txsockproxy.backends import localResourceError
from txsockproxy.congestion import Congestion
from txsockproxy.endpoints import isProxyProtocolListen
from txsockproxy.handles import AcceptedNoDelay, setNoDelay, socketError, socketOf
from txsockproxy.interfaces import ICancellable, IConnectionInfo, IRelayPath
from txsockproxy.keepalive import applyKeepalive
from txsockproxy.listening import LISTENING
from txsockproxy.portable import PortableRelayPath
from txsockproxy.proxyprotocol import HeaderError, ProxyHeader, encodeV1, encodeV2, parseHeader
from txsockproxy.ratelimit import RateLimitedLog
from txsockproxy.sni import NEED_MORE, HelloReader
from txsockproxy.timeouts import Timeouts
from txsockproxy.watch import PausedWatch

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from txsockproxy.backends import Backend, BackendPool

# Bytes read from a client and held while the backend connect is pending.
HOLD_LIMIT = 65536

# Why a session ended whose TLS client closed while the backend still had
# its direction open: that direction ends too.
_TLS_CLIENT_CLOSED = "client closed TLS (no half-close)"

# Seconds a client of a TLS listener has to complete its handshake, before
# which no backend is chosen or connected.
HANDSHAKE_TIMEOUT = 10.0

# Seconds a TLS client that no backend will serve has to answer the proxy's
# close_notify (or close) before its connection is aborted.
CLOSING_TIMEOUT = 5.0

# Seconds after one direction of a session ends before the side that ended
# it is watched for a reset and the half-closed timeout is armed (both then
# count from there): most sessions end the other direction within it, and
# need neither (see ProxyFactory.settle).
SETTLE_TIME = 0.05

# What a connected session holds (nothing; shared, it costs no memory).
_NOTHING_HELD: list[bytes] = []

# The sides of a session, as bits of Session._paused.
_CLIENT = 1
_BACKEND = 2


@implementer(IConnectionInfo)
class ConnectionInfo:
    """
    What a balancer knows of a client connection.

    Built by a session with L{ConnectionInfo.ofTransport}, the peer and
    local addresses are only made when first asked for (most sessions never
    need them: an idle session then holds neither, and a short one saves the
    system call); sessions of one listen address share one local address.
    """

    __slots__ = ("_local", "_peer", "_transport", "serverName")

    def __init__(
        self, peer: IAddress, local: IAddress, serverName: Optional[str] = None
    ) -> None:
        self._peer: Optional[IAddress] = peer
        self._local: Optional[IAddress] = local
        self._transport: Any = None
        self.serverName = serverName

    @classmethod
    def ofTransport(cls, transport: Any) -> ConnectionInfo:
        """
        The info of a client connected over C{transport}; its addresses are
        asked of the transport when first needed.
        """
        info = cls(None, None)  # type: ignore[arg-type]
        info._transport = transport
        return info

    @property
    def peer(self) -> IAddress:
        if self._peer is None and self._transport is not None:
            self._peer = self._transport.getPeer()
        return self._peer  # type: ignore[return-value]

    @peer.setter
    def peer(self, value: IAddress) -> None:
        self._peer = value

    @property
    def local(self) -> IAddress:
        if self._local is None and self._transport is not None:
            try:
                self._local = _localOf(self._transport)
            except (AttributeError, OSError):
                # Asked first once the connection is closed: the socket is
                # gone, and with it the address.
                return None  # type: ignore[return-value]
        return self._local  # type: ignore[return-value]

    @local.setter
    def local(self, value: IAddress) -> None:
        self._local = value

    def __repr__(self) -> str:
        return f"<ConnectionInfo peer={self.peer} local={self.local} sni={self.serverName}>"


# Local addresses seen, shared by the sessions (memory per session).
_locals: dict[IAddress, IAddress] = {}

# The local address of every connection of a listening port bound to one
# address (the first 64 ports seen; None: bound to a wildcard address).
_portLocals: dict[Any, Optional[IAddress]] = {}

_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def _localOf(transport: Any) -> IAddress:
    """
    The local address of C{transport}'s connection: its C{getHost()}
    (a system call, and an address object made), asked once per listening
    port (C{transport.server}, as on Twisted's TCP transports) when that
    port is bound to one address: every connection it accepts has that
    address then.
    """
    port = getattr(transport, "server", None)
    known = _portLocals.get(port) if port is not None else None
    if known is not None:
        return known
    address = _shared(transport.getHost())
    if port is not None and port not in _portLocals and len(_portLocals) < 64:
        _portLocals[port] = address if _boundTo(port, address) else None
    return address


def _boundTo(port: Any, address: IAddress) -> bool:
    """
    Whether listening port C{port} is bound to C{address}'s host (not to a
    wildcard address): then every connection it accepts has C{address}.
    """
    try:
        host = getattr(port.getHost(), "host", None)
    except (OSError, AttributeError):
        return False
    return host is not None and host not in _WILDCARDS and host == getattr(address, "host", None)


def _shared(address: IAddress) -> IAddress:
    """
    One shared object per local address (the first 256 seen).
    """
    try:
        known = _locals.get(address)
    except TypeError:  # not hashable
        return address
    if known is not None:
        return known
    if len(_locals) < 256:
        _locals[address] = address
    return address


class Sessions:
    """
    What the sessions of one service share: the debug level, the session
    log, and the set of sessions open now (so that a shutdown can wait for
    them, and end them).

    @ivar recorder: called with each session when it ends, or L{None}.
    """

    def __init__(self, debug: int = 0, recorder: Optional[Callable[[Session], None]] = None) -> None:
        self.debug = debug
        self.recorder = recorder
        self.open: set[Session] = set()
        self._whenEmpty: list[defer.Deferred[None]] = []
        # Session ids: this process's random prefix, and a count.
        self.prefix = os.urandom(4).hex()
        self.count = 0
        # Told the number of open sessions when it changes (the global
        # max-connections), if set.
        self.onCount: Optional[Callable[[int], None]] = None

    def add(self, session: Session) -> None:
        self.count += 1
        session.serial = self.count
        self.open.add(session)
        if self.onCount is not None:
            self.onCount(len(self.open))

    def remove(self, session: Session) -> None:
        self.open.discard(session)
        if self.onCount is not None:
            self.onCount(len(self.open))
        try:
            if self.recorder is not None:
                self.recorder(session)
        finally:
            if not self.open:
                self._notifyIfEmpty()

    def _notifyIfEmpty(self) -> None:
        if not self.open:
            waiting, self._whenEmpty = self._whenEmpty, []
            for d in waiting:
                d.callback(None)

    def whenEmpty(self) -> defer.Deferred[None]:
        """
        A Deferred that fires once no session is open.
        """
        if not self.open:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._whenEmpty.append(d)
        return d

    def abortAll(self, why: str) -> None:
        """
        End every open session at once, recording C{why}.
        """
        for session in list(self.open):
            session.abort(why)


class ProxyFactory(ServerFactory):
    """
    The ServerFactory of one listen endpoint of a proxy: every connection it
    accepts becomes a L{Session} drawing on the proxy's L{BackendPool}.

    @ivar listen: the listen endpoint string, for the session log.
    """

    noisy = False

    # buildProtocol ignores the address: txsockproxy's ports need not make it.
    wantsAddress = False

    def __init__(
        self,
        pool: BackendPool,
        reactor: IReactorTime,
        debug: int = 0,
        listen: str = "",
        sessions: Optional[Sessions] = None,
        relayPath: Optional[IRelayPath] = None,
    ) -> None:
        """
        @param relayPath: how sessions connect and relay; by default
            Twisted's public API (L{PortableRelayPath}).
        """
        self.reactor = reactor
        self.listen = listen
        self.relayPath: IRelayPath = (
            relayPath if relayPath is not None else PortableRelayPath(reactor)
        )
        self.sessions = sessions if sessions is not None else Sessions(debug)
        # The connect and inactivity timeouts of its sessions.
        self.timeouts = Timeouts(reactor)
        # The sides of its sessions that are not being read.
        self.watch = PausedWatch(reactor)
        # Sessions that ended one direction since the last settle(): their
        # watch and half-closed timer wait for SETTLE_TIME (see settle).
        self.settling: set[Session] = set()
        self._settleCall: Optional[IDelayedCall] = None
        # Nagle's algorithm off on its clients' sockets, by way of the
        # listening socket where it can.
        self.noDelay = AcceptedNoDelay()
        # Failed TLS handshakes: a client can make as many as it likes.
        self.tlsLog = RateLimitedLog(reactor, Session.log, "failed TLS handshakes")
        # Behind a PROXY protocol listener (haproxy:...): each client sends
        # a header first; bad ones, as many as a client likes, are logged
        # at a bounded rate.
        self.proxyHeader = isProxyProtocolListen(listen)
        self.headerLog = RateLimitedLog(reactor, Session.log, "bad PROXY protocol headers")
        # Sessions that raised while starting (a bug): each client closed.
        self.startLog = RateLimitedLog(reactor, Session.log, "sessions that failed to start")
        self.usePool(pool)

    def refuseHeader(self, transport: Any, why: str, peer: Optional[IAddress] = None) -> None:
        """
        Close (reset) a client of a PROXY protocol listener for what is
        wrong with its header (C{why}); count it and log it, at a bounded
        rate. C{transport} L{None}: it is closed already (at C{peer}).
        """
        self.pool.badHeaders += 1
        self.headerLog.emit(
            LogLevel.warn, "proxy {proxy}: closing {client}: {why}",
            proxy=self.pool.name,
            client=formatAddress(peer if transport is None else transport.getPeer()),  # type: ignore[arg-type]
            why=why,
        )
        if transport is not None:
            transport.abortConnection()

    def usePool(self, pool: BackendPool) -> None:
        """
        Send new sessions to C{pool}, with its proxy's settings (at start, and
        when the configuration is reloaded).
        """
        self.pool = pool
        pool.sessions = self.sessions
        self.idleTimeout = pool.config.idleTimeout
        self.halfClosedTimeout = pool.config.halfClosedTimeout
        # Read again on a reload: the system's algorithm may have changed.
        congestion = Congestion(pool.config.clientCongestion)
        congestion.adopted = _adopted(self.listen)
        previous = getattr(self, "congestion", None)
        if previous is not None:
            congestion.takeOver(previous)
        self.congestion = congestion
        # Wait for the SNI name only if routes or the balancer use it.
        self.inspectDelay = pool.inspectDelay

    @property
    def debug(self) -> int:
        return self.sessions.debug

    def buildProtocol(self, addr: Optional[IAddress]) -> FrontendProtocol:
        return FrontendProtocol(self)

    def settle(self, session: Session) -> None:
        """
        C{session} just ended one direction: call its C{settled()} in
        L{SETTLE_TIME} seconds, unless it ends first (L{unsettle}); one call
        for all those of a moment.
        """
        self.settling.add(session)
        if self._settleCall is None:
            self._settleCall = self.reactor.callLater(SETTLE_TIME, self._settled)

    def unsettle(self, session: Session) -> None:
        """
        C{session}, which may be settling, has ended: forget it (no
        reference kept to a finished session, and no call left pending for
        none).
        """
        settling = self.settling
        settling.discard(session)
        if not settling and self._settleCall is not None:
            self._settleCall.cancel()
            self._settleCall = None

    def _settled(self) -> None:
        self._settleCall = None
        settling, self.settling = self.settling, set()
        for session in settling:
            try:
                session.settled()
            except Exception:
                Session.log.failure("while watching a half-closed session")


@implementer(IPushProducer)
class SideProducer:
    """
    A session's protocol as the producer of the other side's transport: it
    pauses and resumes its own transport as Twisted's flow control asks, and
    tells the session, which watches a side while it is not read.  (The
    protocols themselves, rather than an object more per side and session.)

    @cvar clientSide: whether this is the client's side.
    """

    __slots__ = ()

    clientSide: bool

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        self.session.sidePaused(self.clientSide)  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()  # type: ignore[attr-defined]
        self.session.sideResumed(self.clientSide)  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        # The other side's transport is closing: Twisted asks its producer,
        # this side, to stop, which for a transport means loseConnection()
        # (and at once, for a side whose write side is shut). The session
        # decides instead, as it hears of the close a moment later: closed
        # cleanly or reset, as the other side ended.
        pass


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class FrontendProtocol(SideProducer, Protocol):
    """
    The client's side of a session.
    """

    # Slots, here and below: no per-connection __dict__.
    __slots__ = ("factory", "session", "transport", "connected", "relay", "header", "headerTimer")

    clientSide = True

    def __init__(self, factory: ProxyFactory) -> None:
        self.factory = factory
        self.session: Optional[Session] = None
        # What an accelerated relay path keeps with the protocol, if any.
        self.relay: Any = None
        # Behind a PROXY protocol listener: what arrived of the header, and
        # its deadline.
        self.header: Optional[bytes] = None
        self.headerTimer: Optional[IDelayedCall] = None

    def connectionMade(self) -> None:
        skt = socketOf(self.transport)
        self.factory.noDelay.apply(self.transport, skt)
        congestion = self.factory.congestion
        if congestion.name is not None:
            congestion.applyAccepted(self.transport)
        if self.factory.proxyHeader:
            # No session, and no backend work, before a valid header.
            self.header = b""
            self.headerTimer = self.factory.reactor.callLater(
                self.factory.pool.config.proxyHeaderTimeout, self._headerTimedOut
            )
            return
        self.session = Session(self.factory, self, skt)
        self._start(self.session)

    def _start(self, session: Session) -> None:
        """
        Start C{session}.  Should that raise (a bug), its client is closed,
        which ends the session (its counts and slots given back), and the
        error logged at a bounded rate: left open, the connection would
        hold its descriptor and its place among the sessions for good.
        """
        try:
            session.start()
        except Exception:
            session.ended = session.ended or "internal error"
            self.factory.startLog.emit(
                LogLevel.critical, "proxy {proxy}: session of {client} failed to start: closed",
                proxy=self.factory.pool.name, client=formatAddress(session.connection.peer),
                log_failure=Failure(),
            )
            if not session.clientGone:
                self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.session is None:
            self._headerReceived(data)
            return
        self.session.fromClient(data)

    def _headerReceived(self, data: bytes) -> None:
        if self.header is None:
            return  # refused already
        received = self.header + data
        try:
            header = parseHeader(received)
        except HeaderError as e:
            self._refuse(str(e))
            return
        if not isinstance(header, ProxyHeader):
            self.header = received
            return
        self._cancelHeaderTimer()
        self.header = None
        session = Session(self.factory, self, socketOf(self.transport))
        if header.source is not None:
            session.connection.peer = header.source
            if header.destination is not None:
                session.connection.local = header.destination
        self.session = session
        self._start(session)
        if session.handshaking:
            # Over TLS the header came after the handshake.
            session.handshakeCompleted()
        rest = received[header.length:]
        if rest and self.session is not None and not session.finished:
            session.fromClient(rest)

    def _refuse(self, why: str) -> None:
        self._cancelHeaderTimer()
        self.header = None
        self.factory.refuseHeader(self.transport, why)

    def _headerTimedOut(self) -> None:
        self.headerTimer = None
        if self.header is not None:
            self._refuse(
                f"no complete PROXY protocol header within "
                f"{self.factory.pool.config.proxyHeaderTimeout:g}s"
            )

    def _cancelHeaderTimer(self) -> None:
        if self.headerTimer is not None:
            if self.headerTimer.active():
                self.headerTimer.cancel()
            self.headerTimer = None

    def readConnectionLost(self) -> None:
        if self.session is None:
            if self.header is not None:
                self._refuse("closed before a complete PROXY protocol header")
            return
        self.session.clientEOF()

    def handshakeCompleted(self) -> None:
        # Behind a PROXY protocol listener over TLS, the header comes after
        # the handshake: the session starts with it done.
        if self.session is not None:
            self.session.handshakeCompleted()

    def writeConnectionLost(self) -> None:
        if self.session is not None:
            self.session.clientFlushed()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self.header is not None:
            # Gone (reset) before a complete header, and not refused yet.
            self._cancelHeaderTimer()
            self.header = None
            how = "closed" if isinstance(reason.value, ConnectionDone) else "reset"
            self.factory.refuseHeader(
                None, f"{how} before a complete PROXY protocol header",
                self.transport.getPeer(),  # type: ignore[union-attr]
            )
        if self.headerTimer is not None:
            self._cancelHeaderTimer()
        self.header = None
        if self.session is not None:
            self.session.clientLost(reason)


class OwnListenerError(Exception):
    """
    A backend connection reached one of the proxy's own listeners.
    """

    def __str__(self) -> str:
        return "the backend is one of this proxy's own listening addresses"


class _Detached:
    """
    Stands for the session of a backend connection that was given up
    (see L{OwnListenerError}): what that connection still reports goes
    nowhere.
    """

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


_DETACHED = _Detached()


@implementer(IHalfCloseableProtocol)
class BackendProtocol(SideProducer, Protocol):
    """
    The backend's side of a session.
    """

    __slots__ = ("session", "transport", "connected", "relay")

    clientSide = False

    def __init__(self, session: Session) -> None:
        self.session = session
        # What an accelerated relay path keeps with the protocol, if any.
        self.relay: Any = None

    def connectionMade(self) -> None:
        self.session.backendConnected(self)

    def dataReceived(self, data: bytes) -> None:
        self.session.fromBackend(data)

    def readConnectionLost(self) -> None:
        self.session.backendEOF()

    def writeConnectionLost(self) -> None:
        self.session.backendFlushed()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.session.backendLost(reason)


class BackendFactory(ClientFactory):
    """
    Builds the backend protocol of one session; connected through the
    backend's endpoint.
    """

    noisy = False

    # buildProtocol ignores the address: a connector need not make it.
    wantsAddress = False

    __slots__ = ("session", "done", "preamble")

    def __init__(self, session: Session, preamble: bytes = b"") -> None:
        self.session = session
        # The connect has succeeded or failed.
        self.done = False
        # What a TLS backend's endpoint sends before its handshake: the
        # PROXY protocol header of a send-proxy backend.
        self.preamble = preamble

    def buildProtocol(self, addr: Optional[IAddress]) -> BackendProtocol:
        self.done = True
        return BackendProtocol(self.session)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        # The relay path reports a failed, timed out or cancelled connect
        # here, possibly a reactor turn after it was found.
        if self.done:
            return
        self.done = True
        session = self.session
        # A client that left meanwhile has cancelled the connect, and its
        # session finishes in clientLost.
        session._connectFailed(reason, session.backend)


class Session:
    """
    One proxied connection: a client, and the backend chosen for it.

    @ivar ended: why the session ended (e.g. C{"client closed"}), once it has.
    @ivar bytesFromClient: bytes relayed from the client (likewise
        C{bytesFromBackend}); with the backend's C{bytesOut} and C{bytesIn},
        and C{lastActivity}, what a relay path that moves bytes itself keeps
        up to date (see L{IRelayPath.join}).
    @ivar inactivityTimeout: the inactivity timeout of the session's phase
        (idle or half-closed), or 0 (none): while it is set, C{lastActivity}
        is the time (C{clock.seconds()}) bytes last moved.
    """

    # Slots: an idle session costs a few hundred bytes less than with a
    # __dict__ (its attributes are too many for a key-sharing dict).
    __slots__ = (
        "factory", "pool", "clock", "client", "clientTransport", "backend",
        "backendProtocol", "backendTransport", "connecting", "tried", "held",
        "heldSize", "clientPaused", "clientDone", "backendDone", "clientGone",
        "backendGone", "bytesFromClient", "bytesFromBackend", "ended", "finished",
        "inspecting", "_inspectTimer", "started", "_timer", "inactivityTimeout",
        "_timeoutReason", "lastActivity", "connection", "finSeen", "_paused",
        "handshaking", "joined", "_shut", "_flushed", "serial", "clientKey", "served",
        "queueTimer", "waitingBackend", "clientSocket", "backendSocket", "closingTimer", "hello",
        "__weakref__",
    )

    log = Logger()

    def __init__(
        self, factory: ProxyFactory, client: FrontendProtocol, clientSocket: Optional[socket.SocketType]
    ) -> None:
        """
        @param clientSocket: the socket under the client's transport (see
            L{socketOf}), or L{None}.
        """
        self.factory = factory
        self.pool = factory.pool
        self.clock = factory.reactor
        self.client = client
        transport: Any = client.transport
        self.clientTransport = transport
        self.backend: Optional[Backend] = None
        self.backendProtocol: Optional[BackendProtocol] = None
        self.backendTransport: Any = None
        # The sockets under the transports (see socketOf), asked at each
        # side's end of stream (socketError) and watched while a side is
        # not read; the backend's once connected.
        self.clientSocket = clientSocket
        self.backendSocket: Optional[socket.SocketType] = None
        # What cancels the connect in progress.
        self.connecting: Optional[ICancellable] = None
        self.tried: frozenset[Backend] = frozenset()
        self.held: list[bytes] = []
        self.heldSize = 0
        self.clientPaused = False
        self.clientDone = False  # the client sent EOF
        self.backendDone = False  # the backend sent EOF
        self.clientGone = False  # the client transport is closed
        self.backendGone = False  # the backend transport is closed
        self.bytesFromClient = 0
        self.bytesFromBackend = 0
        self.ended: Optional[str] = None
        self.finished = False
        self.inspecting = False
        self._inspectTimer: Optional[IDelayedCall] = None
        self.started = self.clock.seconds()
        self._timer: Optional[IDelayedCall] = None
        self.inactivityTimeout = 0.0
        self._timeoutReason = ""
        self.lastActivity = self.started
        self.connection = ConnectionInfo.ofTransport(transport)
        # A side not being read has sent its FIN (not read yet).
        self.finSeen = False
        # The sides not being read now: _CLIENT | _BACKEND.
        self._paused = 0
        # Waiting for a TLS listener's handshake (with inspecting).
        self.handshaking = False
        # What the relay path's join() gave, released at the end.
        self.joined: Any = None
        # The sides whose write side was shut, and those whose write side
        # is done (shut, and what was buffered for it sent): _CLIENT | _BACKEND.
        self._shut = 0
        self._flushed = 0
        # Its number among the proxy's sessions (set when it starts).
        self.serial = 0
        # Admission (see txsockproxy.admission): what its client is counted
        # under, whether it holds a slot, its wait in the queue, and
        # whether it waits there for a backend slot.
        self.clientKey: Optional[str] = None
        self.served = False
        self.queueTimer: Optional[IDelayedCall] = None
        self.waitingBackend = False
        # A TLS client no backend will serve, being closed: its deadline.
        self.closingTimer: Optional[IDelayedCall] = None
        # While inspecting a passthrough client: what its ClientHello tells.
        self.hello: Optional[HelloReader] = None

    # -- connecting ---------------------------------------------------------

    def start(self) -> None:
        """
        Account for the new client and start connecting to a backend.
        """
        pool = self.pool
        pool.accepted += 1
        pool.active += 1
        self.factory.sessions.add(self)
        admission = pool.admission
        refusal = admission.admit(self) if admission.checking else None
        if refusal is None:
            entered = admission.enter(self)
            if entered is None:
                refusal = "queue full"
            elif not entered:
                return  # queued: dequeued() goes on
        if refusal is not None:
            self.ended = refusal
            self.clientTransport.abortConnection()
            return
        keepalive = pool.config.protection.clientKeepalive
        if keepalive.idle:
            applyKeepalive(keepalive, self.clientTransport)
        self._begin()

    def dequeued(self) -> None:
        """
        Its turn in the queue came: go on where it waited.
        """
        if self.clientGone:
            return
        if self.waitingBackend:
            self.waitingBackend = False
            self._connectNext()
            return
        keepalive = self.pool.config.protection.clientKeepalive
        if keepalive.idle:
            applyKeepalive(keepalive, self.clientTransport)
        self._begin()

    def queueTimedOut(self) -> None:
        """
        It waited C{queue-timeout} in the queue: close the client.
        """
        self.ended = "queue timeout"
        if not self.clientGone:
            self.clientTransport.abortConnection()

    def _begin(self) -> None:
        if _reportsHandshake(self.clientTransport):
            # A TLS listener: no backend work before the client's handshake
            # is done (its SNI name is known then, too).
            self.inspecting = self.handshaking = True
            self._inspectTimer = self.clock.callLater(
                HANDSHAKE_TIMEOUT, self._handshakeTimedOut
            )
            return
        delay = self.factory.inspectDelay
        if delay:
            # The balancer places connections by SNI name: wait (at most
            # inspect-delay) for the ClientHello, or on a TLS listener for
            # the handshake, before choosing.
            self.inspecting = True
            self._inspectTimer = self.clock.callLater(delay, self._inspected, None)
            if self.held and not ISSLTransport.providedBy(self.clientTransport):
                # Sent while the session waited in the queue.
                self._inspectHeld(b"".join(self.held))
            return
        self._connectNext()

    def _inspected(self, serverName: Optional[str]) -> None:
        """
        Inspection is over: choose a backend, by C{serverName} if known.
        """
        if not self.inspecting:
            return
        self.inspecting = False
        self.hello = None
        if self._inspectTimer is not None:
            if self._inspectTimer.active():
                self._inspectTimer.cancel()
            self._inspectTimer = None
        self.connection.serverName = serverName
        if self.factory.sessions.debug >= 2:
            self.log.info(
                "proxy {proxy}: {client} SNI name {name}",
                proxy=self.pool.name, client=formatAddress(self.connection.peer),
                name=serverName or "(none)",
            )
        self._connectNext()

    def _inspectHeld(self, data: bytes) -> None:
        """
        Look for the SNI name in the client's next bytes, C{data} (each
        byte is looked at once: see L{HelloReader}).
        """
        if self.hello is None:
            self.hello = HelloReader()
        status, name = self.hello.feed(data)
        if status != NEED_MORE:
            self._inspected(name)

    def _handshakeTimedOut(self) -> None:
        self._inspectTimer = None
        self.inspecting = self.handshaking = False
        self.ended = self.ended or "TLS handshake timeout"
        self.factory.tlsLog.emit(
            LogLevel.warn,
            "proxy {proxy}: closing {client}: no TLS handshake within {seconds:g}s",
            proxy=self.pool.name, client=formatAddress(self.connection.peer),
            seconds=HANDSHAKE_TIMEOUT,
        )
        self.clientTransport.abortConnection()

    def handshakeCompleted(self) -> None:
        """
        A TLS listener finished its handshake: choose and connect a backend
        now, by the SNI name if the balancer uses it.
        """
        if not self.inspecting:
            return
        self.handshaking = False
        name: Optional[str] = None
        try:
            raw = self.clientTransport.getHandle().get_servername()
        except Exception:
            raw = None
        if raw:
            name = raw.decode("ascii", "replace").lower().rstrip(".")
        self._inspected(name)

    def _connectNext(self) -> None:
        backend = self.pool.pick(self.connection, self.tried)
        if backend is None and self.pool.lastFull and self.pool.config.protection.maxQueue:
            # Every backend it may use is full: wait for a slot.
            waiting = self.pool.admission.waitForBackend(self)
            if waiting is False:
                self.waitingBackend = True
                return
            self.ended = "queue full"
            self.clientTransport.abortConnection()
            return
        if backend is None:
            self.pool.refused += 1
            self.ended = self.pool.whyRefused(self.connection)
            self._closeUnserved()
            return
        self.backend = backend
        self.tried = self.tried | {backend}
        if self.factory.sessions.debug >= 1:
            self.log.info(
                "proxy {proxy}: {client} -> backend {label}",
                proxy=self.pool.name, client=formatAddress(self.connection.peer),
                label=backend.label,
            )
        if self.factory.sessions.debug >= 2:
            self.log.info(
                "proxy {proxy}: connecting to {endpoint}",
                proxy=self.pool.name, endpoint=backend.key,
            )
        preamble = b""
        if backend.config.sendProxy and backend.config.tls is not None:
            # In clear, before the TLS handshake, as servers expect it.
            preamble = self._proxyHeader(backend.config.sendProxy)
        factory = BackendFactory(self, preamble)
        connecting = self.factory.relayPath.connect(
            backend.endpoint, factory, backend.config.connectTimeout, backend.congestion
        )
        if not factory.done:
            # Still under way (it may succeed or fail within connect()).
            self.connecting = connecting

    def _closeUnserved(self) -> None:
        """
        Close the client, which no backend will serve (C{ended} says why).
        A plain client is closed at once.  A TLS client is sent close_notify
        (C{loseConnection()}), which Twisted's TLS follows by waiting for the
        client's own or its close: so it is read again if it was paused (what
        it sends is dropped), and aborted if it has not closed within
        L{CLOSING_TIMEOUT}.
        """
        transport = self.clientTransport
        transport.loseConnection()
        if self.clientGone or not ISSLTransport.providedBy(transport):
            return
        if self.clientPaused:
            self.clientPaused = False
            self.clientTransport.resumeProducing()
            self.sideResumed(True)
        if self.closingTimer is None:
            self.closingTimer = self.clock.callLater(CLOSING_TIMEOUT, self._closingTimedOut)

    def _closingTimedOut(self) -> None:
        self.closingTimer = None
        if not self.clientGone:
            self.clientTransport.abortConnection()

    def _connectFailed(self, reason: Failure, backend: Optional[Backend]) -> None:
        self.connecting = None
        assert backend is not None
        if self.clientGone:
            # We cancelled it ourselves: the client left.
            self.pool.released(backend)
            return
        if localResourceError(reason) is not None:
            # Out of descriptors or memory: the proxy's problem, not the
            # backend's, and no other backend would fare better.
            self.pool.resourceError(backend, reason, formatAddress(self.connection.peer))
            self.backend = None
            self.ended = "out of resources"
            self._closeUnserved()
            return
        self.pool.connectFailed(backend, reason)
        self.backend = None
        self._connectNext()

    def backendConnected(self, protocol: BackendProtocol) -> None:
        """
        The backend accepted the connection: flush what the client sent
        meanwhile and join the two transports.
        """
        self.connecting = None
        backend = self.backend
        if self.clientGone or backend is None:
            # The connect was cancelled, but the endpoint connected anyway.
            protocol.transport.abortConnection()  # type: ignore[union-attr]
            return
        peer: Any = protocol.transport.getPeer()  # type: ignore[union-attr]
        host = getattr(peer, "host", None)
        if (
            LISTENING.covers(host, peer.port) if host is not None
            else LISTENING.coversPath(getattr(peer, "name", None))
        ):
            # Connected to the proxy itself (a backend, or an address DNS
            # gave, that is one of its listeners): every session would do
            # so again, until descriptors run out.
            protocol.session = _DETACHED  # type: ignore[assignment]
            protocol.transport.abortConnection()  # type: ignore[union-attr]
            self._connectFailed(Failure(OwnListenerError()), backend)
            return
        self.pool.connectSucceeded(backend)
        # Failover is over: drop the set of backends tried (memory per
        # session; the empty frozenset is shared).
        self.tried = frozenset()
        if self.factory.sessions.debug >= 2:
            self.log.info(
                "proxy {proxy}: connected to backend {label} for {client}",
                proxy=self.pool.name, label=backend.label,
                client=formatAddress(self.connection.peer),
            )
        self.backendProtocol = protocol
        bt: Any = protocol.transport
        self.backendTransport = bt
        if backend.congestion.name is not None and not getattr(bt, "congestionSet", False):
            backend.congestion.apply(bt)
        bs = self.backendSocket = socketOf(bt)
        setNoDelay(bs)
        if backend.config.keepalive.idle:
            applyKeepalive(backend.config.keepalive, bt)
        ct = self.clientTransport
        version = backend.config.sendProxy
        header = b""
        if version and backend.config.tls is None:
            header = self._proxyHeader(version)
        if self.held:
            backend.bytesOut += self.heldSize
            # The header and what the client sent meanwhile, in one write.
            self.factory.relayPath.write(bt, b"".join([header, *self.held]))
            self.heldSize = 0
        elif header:
            sent = self.factory.relayPath.writePreamble(ct, bt, header)
            if sent:
                self.countUp(sent)
        self.held = _NOTHING_HELD
        # Joined first: an accelerated path may give the transports methods
        # of its own (as registerProducer, without TLS's test, for plain
        # sockets).
        self.joined = self.factory.relayPath.join(self.client, protocol, self)
        ct.registerProducer(protocol, True)
        if self.clientDone:
            self._shutWrite(False)
        else:
            bt.registerProducer(self.client, True)
            if self.clientPaused:
                self.clientPaused = False
                ct.resumeProducing()
                self.sideResumed(True)
        if self.factory.idleTimeout or self.clientDone or self.finSeen:
            self._updateTimer()  # (else it has nothing to arm)

    def _proxyHeader(self, version: str) -> bytes:
        """
        The PROXY protocol header (C{version} C{"v1"} or C{"v2"}) that tells
        the backend who the client is.
        """
        connection = self.connection
        if version == "v1":
            return encodeV1(connection.peer, connection.local)
        return encodeV2(
            connection.peer, connection.local, authority=connection.serverName,
            uniqueId=self.id.encode("ascii"),
        )

    @property
    def id(self) -> str:
        """
        The session's id: unique among this process's sessions, and across
        processes with overwhelming likelihood (the session log's C{id}).
        """
        return f"{self.factory.sessions.prefix}-{self.serial:x}"

    # -- relaying -----------------------------------------------------------

    def fromClient(self, data: bytes) -> None:
        """
        Bytes from the client: to the backend, or held until it connects.
        """
        self.bytesFromClient += len(data)
        if self.inactivityTimeout:
            self.lastActivity = self.clock.seconds()
        bt = self.backendTransport
        if bt is not None:
            self.backend.bytesOut += len(data)  # type: ignore[union-attr]
            self.factory.relayPath.write(bt, data)
            return
        if self.closingTimer is not None:
            return  # no backend will take it (see _closeUnserved)
        self.held.append(data)
        self.heldSize += len(data)
        if self.heldSize >= HOLD_LIMIT and not self.clientPaused:
            self.clientPaused = True
            self.clientTransport.pauseProducing()
            self.sidePaused(True)
        if self.inspecting and not ISSLTransport.providedBy(self.clientTransport):
            self._inspectHeld(data)

    def countUp(self, n: int) -> None:
        """
        Count C{n} bytes from the client relayed on the fast path.
        """
        self.bytesFromClient += n
        self.backend.bytesOut += n  # type: ignore[union-attr]
        if self.inactivityTimeout:
            self.lastActivity = self.clock.seconds()

    def countDown(self, n: int) -> None:
        """
        Count C{n} bytes from the backend relayed on the fast path.
        """
        self.bytesFromBackend += n
        self.backend.bytesIn += n  # type: ignore[union-attr]
        if self.inactivityTimeout:
            self.lastActivity = self.clock.seconds()

    def sidePaused(self, client: bool) -> None:
        """
        The client's (C{client}) or the backend's side is no longer read
        (paused by flow control, or its EOF read): watch it for a reset or a
        FIN meanwhile.
        """
        bit = _CLIENT if client else _BACKEND
        if self._paused & bit or self.finished:
            return
        self._paused |= bit
        self.factory.watch.addSocket(
            self, client, self.clientSocket if client else self.backendSocket
        )

    def sideResumed(self, client: bool) -> None:
        """
        That side is read again.
        """
        bit = _CLIENT if client else _BACKEND
        if self._paused & bit:
            self._paused &= ~bit
            self.factory.watch.discard(self, client)

    def pausedSideFailed(self, client: bool, errno: int) -> None:
        """
        A side that is not being read was reset: end the session with a reset of both sides.
        """
        self._paused &= ~(_CLIENT if client else _BACKEND)
        self._sideReset(client, errno, "while not being read")

    def _sideReset(self, client: bool, errno: int, when: str) -> None:
        # A reset after that side's EOF still makes the session a reset one.
        self.ended = "client reset" if client else "backend reset"
        if self.factory.sessions.debug >= 2:
            self.log.info(
                "proxy {proxy}: {side} of {client} reset {when}: {error}",
                proxy=self.pool.name, side="client" if client else "backend",
                client=formatAddress(self.connection.peer), when=when,
                error=os.strerror(errno),
            )
        if self.backendTransport is not None and not self.backendGone:
            self.backendTransport.abortConnection()
        if not self.clientGone:
            self.clientTransport.abortConnection()

    def pausedSideFinished(self, client: bool) -> None:
        """
        A side that is not being read has sent its FIN, behind bytes not yet
        relayed: the half-closed timeout applies from now.
        """
        if not self.finSeen:
            self.finSeen = True
            self._updateTimer()

    def fromBackend(self, data: bytes) -> None:
        """
        Bytes from the backend: to the client.
        """
        self.bytesFromBackend += len(data)
        self.backend.bytesIn += len(data)  # type: ignore[union-attr]
        if self.inactivityTimeout:
            self.lastActivity = self.clock.seconds()
        self.factory.relayPath.write(self.clientTransport, data)

    def clientEOF(self) -> None:
        """
        The client will send no more: end the write side towards the backend,
        after what is buffered, and keep relaying the other way.
        """
        if self.clientDone:
            return
        err = socketError(self.clientSocket)
        if err:
            # A reset reported as an end of stream (see txsockproxy.handles.pendingError).
            self._sideReset(True, err, "at its end of stream")
            return
        self.clientDone = True
        if not self.backendDone:
            self.ended = self.ended or "client closed"
        if self.handshaking:
            # Gone before its TLS handshake was done: nothing to relay.
            self.ended = "client closed during TLS handshake"
            self._closeUnserved()
            return
        if self.inspecting:
            # No more bytes will come, and those held did not complete a
            # ClientHello (else inspection would be over): no name.
            self._inspected(None)
        bt = self.backendTransport
        if bt is not None and not self.backendGone:
            # The client is done producing: unregister it first, or a paused
            # producer would be resumed instead of the write side being shut.
            bt.unregisterProducer()
            if not self.backendDone:
                self._shutWrite(False)
            # else both directions are done: _closeBoth shuts it.
        # Both directions over: close; else, once settled, the watch of
        # this side (no longer read, but its reset must still be heard) and
        # the half-closed timeout.
        if self.backendDone:
            self._closeBoth()
        else:
            self.factory.settle(self)

    def backendEOF(self) -> None:
        """
        The backend will send no more: end the write side towards the client,
        and keep relaying the other way.
        """
        if self.backendDone:
            return
        err = socketError(self.backendSocket)
        if err:
            # A reset reported as an end of stream (see txsockproxy.handles.pendingError).
            self._sideReset(False, err, "at its end of stream")
            return
        self.backendDone = True
        if not self.clientDone:
            self.ended = self.ended or "backend closed"
        if not self.clientGone:
            ct = self.clientTransport
            ct.unregisterProducer()
            if not self.clientDone:
                self._shutWrite(True)
        # As in clientEOF.
        if self.clientDone:
            self._closeBoth()
        else:
            self.factory.settle(self)

    def settled(self) -> None:
        """
        One direction ended a moment ago (L{SETTLE_TIME}) and the session is
        still half-closed: watch the side that sent its EOF (no longer read,
        but its reset must still be heard), and arm the half-closed timeout.
        Most sessions end both directions within that moment, and never need
        either.
        """
        if self.finished or self.clientDone == self.backendDone:
            return
        if self.clientDone:
            if not self.clientGone:
                self.sidePaused(True)
        elif self.backendTransport is not None and not self.backendGone:
            self.sidePaused(False)
        self._updateTimer()

    def _shutWrite(self, client: bool) -> None:
        """
        End the write side of the client (C{client}) or the backend, after
        what is buffered for it.
        """
        bit = _CLIENT if client else _BACKEND
        if self._shut & bit:
            return
        self._shut |= bit
        transport = self.clientTransport if client else self.backendTransport
        if not _reportsWriteDone(transport):
            # It will not say when it is done (TLS, wrappers): as good as done.
            self._flushed |= bit
        if isinstance(transport, TLSMemoryBIOProtocol):
            # TLS's end of stream is close_notify, which loseConnection()
            # sends; Twisted's TLS goes on reading until the peer's own.
            # (loseWriteConnection() would reach the socket under TLS: a
            # bare FIN, which TLS clients take for a truncation.)
            transport.loseConnection()
            return
        self.factory.relayPath.shutWrite(transport)

    def clientFlushed(self) -> None:
        """
        The client's write side is shut, everything for it handed to the
        system.
        """
        self._flushed |= _CLIENT
        if self.clientDone and self.backendDone:
            self._closeIfFlushed()

    def backendFlushed(self) -> None:
        """
        The backend's write side is shut, everything for it handed to the
        system.
        """
        self._flushed |= _BACKEND
        if self.clientDone and self.backendDone:
            self._closeIfFlushed()

    def _closeBoth(self) -> None:
        # Both directions are done (each side's EOF read). With nothing held
        # for either side, close both now. Else shut the write sides not
        # shut yet, and close both sockets once what was buffered for each
        # is handed to the system, so that until then a reset of either
        # (found writing to it) still resets the other. The timer still
        # guards a peer that never reads.
        if not self._closeIfDrained():
            if not self.clientGone:
                self._shutWrite(True)
            if self.backendTransport is not None and not self.backendGone:
                self._shutWrite(False)
            self._closeIfFlushed()
        if not self.finished:
            self._updateTimer()

    def _closeIfDrained(self) -> bool:
        """
        Both directions are done: when nothing is left to write to either
        side (each one's write side shut and flushed, or nothing held for
        it), close both now.  C{close()} sends the FIN of a side whose write
        side was not shut: one C{shutdown()} less per session.  Where the
        relay path cannot tell (L{IRelayPath.drained}), or bytes are still
        held, the write sides are shut and the sockets closed once flushed.
        """
        path = self.factory.relayPath
        shut, flushed = self._shut, self._flushed
        sides = 0  # the sides still open
        if not self.clientGone:
            sides = _CLIENT
            if shut & _CLIENT:
                if not flushed & _CLIENT:
                    return False
            elif not path.drained(self.clientTransport):
                return False
        if self.backendTransport is not None and not self.backendGone:
            sides |= _BACKEND
            if shut & _BACKEND:
                if not flushed & _BACKEND:
                    return False
            elif not path.drained(self.backendTransport):
                return False
        self._shut = shut | sides
        self._flushed = flushed | sides
        self._closeIfFlushed()
        return True

    def _closeIfFlushed(self) -> None:
        if not (self.clientDone and self.backendDone):
            return
        clientOpen = not self.clientGone
        backendOpen = self.backendTransport is not None and not self.backendGone
        if clientOpen and not self._flushed & _CLIENT:
            return
        if backendOpen and not self._flushed & _BACKEND:
            return
        if clientOpen:
            self.factory.relayPath.close(self.clientTransport, True)
        if backendOpen and not self.backendGone:
            self.factory.relayPath.close(self.backendTransport, True)

    # -- ending ---------------------------------------------------------------

    def clientLost(self, reason: Failure) -> None:
        """
        The client connection is closed (by us, by the client, or by an error).
        """
        self.clientGone = True
        if self.handshaking:
            self.handshaking = False
            if not isinstance(reason.value, ConnectionDone):
                self.ended = self.ended or "TLS handshake failed"
                self.factory.tlsLog.emit(
                    LogLevel.warn,
                    "proxy {proxy}: TLS handshake with {client} failed: {error}",
                    proxy=self.pool.name, client=formatAddress(self.connection.peer),
                    error=_describeTLSError(reason),
                )
        if self.queueTimer is not None:
            self.ended = self.ended or "client left while queued"
        if self.inspecting:
            self.ended = self.ended or "client left while inspecting"
            self.inspecting = False
            if self._inspectTimer is not None and self._inspectTimer.active():
                self._inspectTimer.cancel()
            self._inspectTimer = None
        if self.connecting is not None:
            self.ended = self.ended or "client left while connecting"
            d, self.connecting = self.connecting, None
            d.cancel()
        elif self.backendTransport is not None and not self.backendGone:
            if isinstance(reason.value, ConnectionDone):
                # Everything the client sent has arrived: deliver it. A
                # producer left registered would keep the close pending.
                # (Lost by an error, even after its EOF, the client did not
                # get all the backend sent: that is a reset.)
                if not self.backendDone and isinstance(
                    self.clientTransport, TLSMemoryBIOProtocol
                ):
                    # Twisted's TLS answers a client's close_notify by
                    # closing the connection: the backend's direction cannot
                    # go on (no half-close from a TLS client).
                    self.ended = self.ended or _TLS_CLIENT_CLOSED
                self.ended = self.ended or "client closed"
                self.backendTransport.unregisterProducer()
                self.factory.relayPath.close(self.backendTransport, self.backendDone)
            else:
                self.ended = _resetNow(self.ended, "client reset")
                self.backendTransport.abortConnection()
        self._maybeFinished()

    def backendLost(self, reason: Failure) -> None:
        """
        The backend connection is closed.
        """
        self.backendGone = True
        if not self.clientGone:
            if isinstance(reason.value, ConnectionDone):
                # Everything the backend sent has arrived: deliver it. (Lost
                # by an error, even after its EOF, it did not get all the
                # client sent: that is a reset.)
                self.ended = self.ended or "backend closed"
                self.clientTransport.unregisterProducer()
                self.factory.relayPath.close(self.clientTransport, self.clientDone)
            else:
                self.ended = _resetNow(self.ended, "backend reset")
                self.clientTransport.abortConnection()
        self._maybeFinished()

    def _maybeFinished(self) -> None:
        if self.finished or not self.clientGone:
            return
        if self.backendTransport is not None and not self.backendGone:
            return
        if self.connecting is not None:
            return
        self.finished = True
        if self._timer is not None:
            self._cancelTimer()
        if self.closingTimer is not None:
            if self.closingTimer.active():
                self.closingTimer.cancel()
            self.closingTimer = None
        paused = self._paused
        if paused:
            self._paused = 0
            if paused & _CLIENT:
                self.factory.watch.discard(self, True)
            if paused & _BACKEND:
                self.factory.watch.discard(self, False)
        if self.joined is not None:
            joined, self.joined = self.joined, None
            joined.release()
        if self.clientDone or self.backendDone:
            # It may be settling (see ProxyFactory.settle).
            self.factory.unsettle(self)
        if self.backendTransport is not None:
            self.pool.released(self.backend)  # type: ignore[arg-type]
        self.pool.active -= 1
        self.pool.admission.release(self)
        self.factory.sessions.remove(self)
        # The protocols point back at the session: break those cycles, so that
        # reference counting frees a finished session and its transports at
        # once, rather than the cyclic garbage collector, later and at a cost.
        self.client = None  # type: ignore[assignment]
        self.backendProtocol = None
        if self.factory.sessions.debug >= 1:
            self.log.info(
                "proxy {proxy}: session of {client} ended ({why}): "
                "{up} bytes up, {down} bytes down, {duration:.3f}s",
                proxy=self.pool.name,
                client=formatAddress(self.connection.peer),
                why=self.ended or "closed",
                up=self.bytesFromClient,
                down=self.bytesFromBackend,
                duration=self.clock.seconds() - self.started,
            )

    # -- timeouts -------------------------------------------------------------

    def _updateTimer(self) -> None:
        """
        Arm the inactivity timer for the session's current phase: the idle
        timeout while both directions flow; the shorter of it and the
        half-closed timeout once one direction has ended.
        """
        idle = self.factory.idleTimeout
        timeout, why = idle, "idle timeout"
        if self.clientDone or self.backendDone or self.finSeen:
            half = self.factory.halfClosedTimeout
            if half and (not idle or half < idle):
                timeout, why = half, "half-closed timeout"
        self._timeoutReason = why
        if timeout == self.inactivityTimeout:
            return
        self.inactivityTimeout = timeout
        self.lastActivity = self.clock.seconds()
        if self._timer is not None:
            self._cancelTimer()
        if timeout:
            self._timer = self.factory.timeouts.callLater(timeout, self._checkTimeout)

    def _checkTimeout(self) -> None:
        self._timer = None
        remaining = self.lastActivity + self.inactivityTimeout - self.clock.seconds()
        if remaining > 0:
            self._timer = self.clock.callLater(remaining, self._checkTimeout)
            return
        self.ended = self._timeoutReason
        self.log.info(
            "proxy {proxy}: closing session of {client}: {why} ({seconds:g}s)",
            proxy=self.pool.name, client=formatAddress(self.connection.peer),
            why=self.ended, seconds=self.inactivityTimeout,
        )
        # Abort rather than close: a peer that stopped reading would
        # otherwise keep a graceful close pending forever.
        if self.backendTransport is not None and not self.backendGone:
            self.backendTransport.abortConnection()
        if not self.clientGone:
            self.clientTransport.abortConnection()

    def abort(self, why: str) -> None:
        """
        End the session at once (e.g. at the end of a graceful shutdown).
        """
        self.ended = self.ended or why
        if self.connecting is not None and not self.clientGone:
            self.clientTransport.abortConnection()
            return
        if self.backendTransport is not None and not self.backendGone:
            self.backendTransport.abortConnection()
        if not self.clientGone:
            self.clientTransport.abortConnection()

    @property
    def duration(self) -> float:
        """
        Seconds since the client connected.
        """
        return self.clock.seconds() - self.started

    def _cancelTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None


def _adopted(listen: str) -> bool:
    """
    Whether the listen endpoint string C{listen} names a listening socket
    handed over by systemd (also behind a PROXY-protocol wrapper).
    """
    kinds = listen.split(":", 2)
    return kinds[0] == "systemd" or kinds[:2] == ["haproxy", "systemd"]


def _reportsHandshake(transport: Any) -> bool:
    """
    Whether C{transport} is a TLS transport that tells its protocol when its
    handshake is done (L{IHandshakeListener}): TLS, but not a wrapper around
    TLS (as a PROXY-protocol listener inside C{ssl:}), which does not pass
    that on.
    """
    return ISSLTransport.providedBy(transport) and not isinstance(
        getattr(transport, "transport", None), TLSMemoryBIOProtocol
    )


def _resetNow(ended: Optional[str], reset: str) -> str:
    """
    Why a session ended, once a side was reset: a reset after a side's EOF
    makes it a reset session; an earlier reason of ours (a timeout, a
    shutdown) stays.
    """
    if ended is None or ended in ("client closed", "backend closed"):
        return reset
    return ended


def _reportsWriteDone(transport: Any) -> bool:
    """
    Whether C{transport} tells its protocol when its write side is shut
    (C{IHalfCloseableProtocol.writeConnectionLost}): a plain TCP or unix
    transport, not TLS nor a wrapper (which do not pass it on).
    """
    return (
        IHalfCloseableDescriptor.providedBy(transport)
        and not ISSLTransport.providedBy(transport)
        and not isinstance(transport, ProtocolWrapper)
    )


def _describeTLSError(reason: Failure) -> str:
    """
    One line for a TLS handshake's failure: OpenSSL's reason strings (as
    "certificate unknown"), or the exception's.
    """
    value = reason.value
    errors = getattr(value, "args", ())
    reasons: list[str] = []
    if errors and isinstance(errors[0], list):
        for entry in errors[0]:
            if isinstance(entry, tuple) and entry:
                reasons.append(str(entry[-1]))
    text = "; ".join(reasons) or str(value).strip()
    return text or type(value).__name__


# Until sessionlog imports formatAddress itself.
_address = formatAddress


__all__ = [
    "BackendFactory",
    "BackendProtocol",
    "ConnectionInfo",
    "FrontendProtocol",
    "CLOSING_TIMEOUT",
    "HOLD_LIMIT",
    "ProxyFactory",
    "Session",
    "SideProducer",
]
