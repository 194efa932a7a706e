"""
Fast paths of the relay for plain TCP and unix-socket transports.

Twisted reads at most 64 KiB per C{recv()} and only writes in the reactor's
next turn (C{write()} buffers, C{doWrite()} sends once the socket is reported
writable).  For a proxy that costs two C{epoll_ctl()} calls, a reactor turn and
a copy per chunk, and most of its latency.  Once a session is relaying
between two plain sockets, L{install} replaces each transport's C{doRead} (an
instance attribute: the reactor looks the method up on the object) with a
L{Relay} that moves bytes straight from one socket to the other:

 - C{copy}: C{recv()} up to L{READ_SIZE} bytes, then C{send()} them at once
   when the peer's write buffer is empty; whatever the socket does not take
   goes to the peer transport's ordinary buffer, so Twisted's producer
   machinery pauses the reader exactly as before.
 - C{splice} (Linux): once a direction carries bulk data (a read of at least
   L{SPLICE_THRESHOLD} bytes), it gets a pipe of its own, and bytes move
   socket -> pipe -> socket with C{splice(2)}, never entering user space.
   What the peer socket does not take stays in the pipe: the reader stops,
   and the peer transport's C{doWrite} drains the pipe when the socket is
   writable again, then resumes the reader.  So a stalled peer holds at most
   one pipe (L{PIPE_SIZE}, 1 MiB) of kernel memory, and no process memory.

Whenever the peer transport has anything buffered by Twisted, or is closing,
or half-closed, a read takes the ordinary path (the session's C{fromClient} /
C{fromBackend} and C{transport.write()}), so ordering, half-close and flow
control stay Twisted's.  EOF and errors are returned from C{doRead} as
Twisted's own C{doRead} returns them, so the reactor delivers
C{readConnectionLost} / C{connectionLost} as it always does.

TLS transports (C{ssl:} endpoints, TLS listeners, C{startTLS}), wrapped
transports (e.g. PROXY-protocol listeners) and other transport types are left
alone: L{install} returns L{False} and the session relays through Twisted.

C{TXSOCKPROXY_FASTPATH} in the environment chooses the mode: C{splice}
(default where C{os.splice} exists), C{copy}, or C{off}.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from errno import EALREADY, EINPROGRESS, EISCONN, EWOULDBLOCK
from typing import Any, Optional

from twisted.internet import abstract, defer, error, main, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python import failure, log

from txsockproxy import tcpport

try:
    from twisted.internet import unix

    _UNIX: tuple[type, ...] = (unix.Server, unix.Client)
except ImportError:  # pragma: no cover (no unix sockets on this platform)
    _UNIX = ()

# Transport classes whose socket the fast path may use directly.
PLAIN_TRANSPORTS: tuple[type, ...] = (tcp.Server, tcp.Client, tcpport.Server) + _UNIX

# The same, and their subclasses made by _fastClass.
_plain: set[type] = set(PLAIN_TRANSPORTS)

# Bytes asked for per read.  Larger reads halve the reads, wakeups and
# sends per byte of a bulk transfer; small messages are not affected.
READ_SIZE = 256 * 1024

# The buffer of every read on the copying path.  One is enough (the reactor
# runs in one thread, and what must outlive a read is copied out of it), and
# it must be reused: a fresh recv(READ_SIZE) allocates 256 KiB per read, which
# glibc maps and unmaps each time (~16 µs, even for a one-byte read).
_BUFFER = bytearray(READ_SIZE)
_VIEW = memoryview(_BUFFER)

# A read at least this large makes a direction use splice(2) from then on.
SPLICE_THRESHOLD = 64 * 1024

# Capacity asked for each direction's pipe (F_SETPIPE_SZ): one splice moves
# at most a pipe's capacity.  1 MiB (Linux's default pipe-max-size) halves
# the CPU per byte of 256 KiB pipes.  Pipes count against the user's pipe
# quota (fs.pipe-user-pages-soft, 64 MiB by default; past it, the kernel
# gives the user's new pipes two pages), which root is not held to.  Not
# running as root, our pipes take 1 MiB each up to a quarter of the quota,
# then SMALL_PIPE_SIZE up to half of it, then the default size.
PIPE_SIZE = 1024 * 1024
SMALL_PIPE_SIZE = 256 * 1024

CAN_SPLICE = sys.platform.startswith("linux") and hasattr(os, "splice")
_F_SETPIPE_SZ = 1031


def _pipeBudget() -> int:
    """
    Bytes of pipe capacity our pipes may take: half the user's soft pipe
    quota, or no limit (-1) where there is none.
    """
    try:
        with open("/proc/sys/fs/pipe-user-pages-soft") as f:
            pages = int(f.read())
    except (OSError, ValueError):
        return -1
    return -1 if pages <= 0 else pages * 4096 // 2


PIPE_BUDGET = _pipeBudget()

# Capacity of the resized pipes open now.
_pipeBytes = 0
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR)


def defaultMode() -> str:
    """
    The fast-path mode chosen by C{TXSOCKPROXY_FASTPATH}: C{"splice"},
    C{"copy"} or C{"off"}; C{"splice"} falls back to C{"copy"} where
    splice(2) is not available.
    """
    mode = os.environ.get("TXSOCKPROXY_FASTPATH", "splice").strip().lower()
    if mode not in ("splice", "copy", "off"):
        mode = "splice"
    if mode == "splice" and not CAN_SPLICE:
        mode = "copy"
    return mode


MODE = defaultMode()


def isPlain(transport: Any) -> bool:
    """
    Whether C{transport} is a plain, connected TCP or unix-socket transport
    of the reactor's own (no TLS layer in it or over it).
    """
    return bool(
        type(transport) in _plain
        and transport.connected
        and not transport.TLS
        and hasattr(transport, "socket")
    )


def _quiet(transport: Any) -> bool:
    """
    Whether C{transport} can take bytes straight to its socket now: nothing
    buffered by Twisted, not closing and not half-closed.
    """
    return not (
        transport._tempDataLen
        or len(transport.dataBuffer) > transport.offset
        or transport.disconnecting
        or transport._writeDisconnecting
        or transport._writeDisconnected
        or not transport.connected
    )


class Relay:
    """
    One direction of a session, C{source} -> C{sink}: the C{doRead} of the
    source transport while the fast path is installed.

    @ivar owner: the session: its C{fromClient}/C{fromBackend} take bytes on
        the ordinary path, its C{countUp}/C{countDown} count those relayed on
        the fast path, its C{sidePaused}/C{sideResumed} hear when the source
        is not read while the pipe waits for the sink (methods looked up per call: bound methods kept per
        session would cost memory).
    @ivar up: L{True} for client -> backend.
    @ivar pending: bytes in the pipe, not yet taken by the sink's socket.
    """

    __slots__ = (
        "source", "sink", "owner", "up", "mode", "readFd", "writeFd", "pending", "stalled",
        "capacity",
    )

    def __init__(self, source: Any, sink: Any, owner: Any, up: bool, mode: str) -> None:
        self.source = source
        self.sink = sink
        self.owner = owner
        self.up = up
        self.mode = mode
        self.readFd = -1
        self.writeFd = -1
        self.pending = 0
        self.stalled = False
        self.capacity = 0  # of the pipe, once resized (else 0: default size)

    def ordinary(self, data: bytes) -> None:
        """
        Bytes for the ordinary path: the owner's C{fromClient}/C{fromBackend}.
        """
        if self.up:
            self.owner.fromClient(data)
        else:
            self.owner.fromBackend(data)

    def count(self, n: int) -> None:
        """
        Count C{n} bytes relayed on the fast path: the owner's
        C{countUp}/C{countDown}.
        """
        if self.up:
            self.owner.countUp(n)
        else:
            self.owner.countDown(n)

    # -- reading ------------------------------------------------------------

    def doRead(self) -> Optional[Exception]:
        """
        The source socket is readable: relay what it has.

        @return: what Twisted's C{doRead} returns: L{None}, or
            C{CONNECTION_DONE} on EOF, or C{CONNECTION_LOST} on an error.
        """
        if self.pending:
            # Resumed by someone else while the sink is stalled.
            if self._drain() is not None:
                failSoon(self.sink)
                return None
            if self.pending:
                self._stall()
                return None
        if self.readFd >= 0 and _quiet(self.sink):
            return self._spliceRead()
        try:
            n = self.source.socket.recv_into(_BUFFER)
        except OSError as e:
            if e.errno in _AGAIN:
                return None
            return main.CONNECTION_LOST
        if not n:
            return main.CONNECTION_DONE
        sink = self.sink
        # _quiet(sink), inline: this runs for every read.
        if (
            sink._tempDataLen
            or sink.disconnecting
            or sink._writeDisconnecting
            or sink._writeDisconnected
            or len(sink.dataBuffer) > sink.offset
            or not sink.connected
        ):
            self.ordinary(_VIEW[:n].tobytes())
            return None
        if self.up:
            self.owner.countUp(n)
        else:
            self.owner.countDown(n)
        try:
            sent = sink.socket.send(_VIEW[:n])
        except OSError as e:
            if e.errno not in _AGAIN:
                # Reset: this send took the socket's error, so its next read
                # would say EOF. Report the reset now, as Twisted's doWrite
                # would have.
                failSoon(sink)
                return None
            sent = 0
        if sent < n:
            sink.write(_VIEW[sent:n].tobytes())
        if self.mode == "splice" and n >= SPLICE_THRESHOLD and self.readFd < 0:
            self._openPipe()
        return None

    def _spliceRead(self) -> Optional[Exception]:
        try:
            n = os.splice(
                self.source.fileno(), self.writeFd, self.capacity or READ_SIZE, flags=_SPLICE_FLAGS
            )
        except OSError as e:
            if e.errno in _AGAIN:
                return None
            return main.CONNECTION_LOST
        if not n:
            self.closePipe()
            return main.CONNECTION_DONE
        self.count(n)
        self.pending = n
        if self._drain() is not None:
            failSoon(self.sink)
            return None
        if self.pending:
            self._stall()
        return None

    # -- the pipe -----------------------------------------------------------

    def _openPipe(self) -> None:
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            # Out of descriptors: stay on the copying path.
            self.mode = "copy"
            return
        global _pipeBytes
        limited = PIPE_BUDGET >= 0 and os.geteuid() != 0
        for size, budget in ((PIPE_SIZE, PIPE_BUDGET // 2), (SMALL_PIPE_SIZE, PIPE_BUDGET)):
            if limited and _pipeBytes + size > budget:
                continue
            try:
                import fcntl

                self.capacity = fcntl.fcntl(w, _F_SETPIPE_SZ, size)
            except OSError:
                continue  # over a limit: smaller, or the default size
            _pipeBytes += self.capacity
            break
        self.readFd, self.writeFd = r, w

    def closePipe(self) -> None:
        """
        Close the pipe, if any (the session ended, or the source sent EOF
        with the pipe empty).
        """
        global _pipeBytes
        if self.readFd >= 0:
            os.close(self.readFd)
            os.close(self.writeFd)
            self.readFd = self.writeFd = -1
            _pipeBytes -= self.capacity
            self.capacity = 0
        self.pending = 0

    def _drain(self) -> Optional[Exception]:
        """
        Move what the pipe holds to the sink's socket, as far as it takes it.
        """
        try:
            while self.pending:
                n = os.splice(self.readFd, self.sink.fileno(), self.pending, flags=_SPLICE_FLAGS)
                if not n:
                    break
                self.pending -= n
        except OSError as e:
            if e.errno not in _AGAIN:
                return main.CONNECTION_LOST
        return None

    def _stall(self) -> None:
        """
        The sink's socket is full: stop reading the source, and drain the
        pipe from the sink's C{doWrite} when its socket is writable.
        """
        if not self.stalled:
            self.stalled = True
            self.sink.doWrite = self.doWrite
            # The source is not read meanwhile: the owner watches it.
            self.owner.sidePaused(self.up)
        self.source.stopReading()
        self.sink.startWriting()

    def doWrite(self) -> Optional[Exception]:
        """
        The sink's C{doWrite} while the pipe holds bytes.
        """
        sink = self.sink
        failed = self._drain()
        if failed is not None:
            self.pending = 0
            self._unstall()
            return failed
        if self.pending:
            return None
        self._unstall()
        source = self.source
        if source.connected and not source.disconnecting:
            source.startReading()
        # Twisted's own doWrite: stops writing, and completes a close or
        # half-close asked for meanwhile.
        result: Optional[Exception] = sink.doWrite()
        return result

    def _unstall(self) -> None:
        if self.stalled:
            self.stalled = False
            self.owner.sideResumed(self.up)
            try:
                del self.sink.doWrite
            except AttributeError:
                pass

    def uninstall(self) -> None:
        """
        Give the source its own C{doRead} back and release the pipe.
        """
        if self.stalled:
            self._unstall()
        source = self.source
        base = _relayedBases.get(type(source))
        if base is not None:
            source.__class__ = base
        elif "doRead" in source.__dict__:
            del source.doRead
        if self.readFd >= 0:
            self.closePipe()


_fastClasses: dict[type, type] = {}

# The other way: each class made by _fastClass -> the class it was made of.
_relayedBases: dict[type, type] = {}


def _relayedRead(self: Any) -> Optional[Exception]:
    # doRead of a transport on the fast path: its protocol holds the Relay.
    relay: Relay = self.protocol.relay
    return relay.doRead()


def _readConnectionLost(self: Any, reason: Any) -> None:
    # tcp.Connection's, less the adaptation to IHalfCloseableProtocol: the
    # relay's protocols provide it.
    try:
        self.protocol.readConnectionLost()
    except BaseException:
        log.err()
        self.connectionLost(failure.Failure())


def _connectionLost(self: Any, reason: failure.Failure) -> None:
    # tcp.Connection's (and, for clients, _BaseBaseClient's once connected),
    # with an isinstance test where Twisted's Failure.check builds the names
    # of every class of the exception, twice per proxied connection.
    if not hasattr(self, "socket"):
        return
    abstract.FileDescriptor.connectionLost(self, reason)
    self._closeSocket(not isinstance(reason.value, error.ConnectionAborted))
    protocol = self.protocol
    del self.protocol
    del self.socket
    del self.fileno
    protocol.connectionLost(reason)
    connector = getattr(self, "connector", None)
    if connector is not None:
        connector.connectionLost(reason)


def _fastClass(cls: type) -> type:
    """
    A subclass of transport class C{cls} whose C{doRead} is its protocol's
    L{Relay}.  Switching a transport's class costs no memory per session,
    where an instance attribute would cost a dict entry (and, on these
    transports, turn their key-sharing dict into a larger one: ~0.9 KB per
    session).
    """
    fast = _fastClasses.get(cls)
    if fast is None:
        fast = type(
            f"Relayed{cls.__name__}",
            (cls,),
            {
                "doRead": _relayedRead,
                "readConnectionLost": _readConnectionLost,
                "connectionLost": _connectionLost,
                "__module__": __name__,
            },
        )
        _fastClasses[cls] = fast
        _relayedBases[fast] = cls
        _plain.add(fast)
    return fast


def _attach(transport: Any, protocol: Any, relay: Relay) -> None:
    if protocol is not None:
        protocol.relay = relay
    if protocol is not None and transport.protocol is protocol:
        transport.__class__ = _fastClass(type(transport))
    else:
        # Wrapped (e.g. by an endpoint): an instance attribute works too.
        transport.doRead = relay.doRead


def install(
    client: Any,
    backend: Any,
    owner: Any,
    mode: Optional[str] = None,
    clientProtocol: Any = None,
    backendProtocol: Any = None,
) -> Optional[tuple[Relay, Relay]]:
    """
    Relay between transports C{client} and C{backend} on the fast path, if
    both are plain sockets.

    @param owner: the session (see L{Relay.owner}).
    @param clientProtocol: the client transport's protocol, if it has a
        C{relay} attribute to hold its L{Relay} (likewise C{backendProtocol}).

    @return: the two L{Relay}s (up, down), or L{None} if the fast path does
        not apply and the session relays through Twisted.
    """
    mode = MODE if mode is None else mode
    if mode == "off" or not (isPlain(client) and isPlain(backend)):
        return None
    up = Relay(client, backend, owner, True, mode)
    down = Relay(backend, client, owner, False, mode)
    _attach(client, clientProtocol, up)
    _attach(backend, backendProtocol, down)
    return up, down


# -- ending a direction, or a connection, without a reactor turn ------------

def _idle(transport: Any) -> bool:
    """
    Whether C{transport} may be shut or closed at once, as Twisted would do in
    the reactor's next turn: a plain socket, nothing buffered, no producer,
    not closing, and not waiting on the reactor to write.  Only a reactor that
    keeps its registrations by descriptor (epoll, poll) can tell the last.
    """
    if MODE == "off" or not isPlain(transport) or not _quiet(transport):
        return False
    if transport.producer is not None:
        return False
    writes = getattr(transport.reactor, "_writes", None)
    if writes is None or getattr(transport.reactor, "_selectables", None) is None:
        return False
    return transport.fileno() not in writes


def shutWrite(transport: Any) -> None:
    """
    End C{transport}'s write side, as C{loseWriteConnection()} does, but at
    once (C{shutdown(SHUT_WR)} now) when nothing is left to write: that saves
    a reactor turn and two C{epoll_ctl()} calls per direction.
    """
    if not _idle(transport):
        transport.loseWriteConnection()
        return
    transport._writeDisconnecting = True
    transport._writeDisconnected = True
    transport._closeWriteConnection()


def close(transport: Any, drained: bool = False) -> None:
    """
    Close C{transport} with C{loseConnection()}.  Once its write side is shut,
    Twisted closes at once, but first calls C{shutdown(SHUT_RDWR)}, which has
    nothing left to do (our FIN is sent; unread bytes make C{close()} reset
    the connection either way): skip that system call.

    @param drained: the peer's EOF has been read (nothing more can arrive).
        Then a socket with nothing left to write is closed at once, without
        C{shutdown()}: C{close()} sends the FIN, as unread bytes cannot be
        there to turn it into a reset.  (Twisted would shut it a reactor turn
        later, then close it.)
    """
    if MODE != "off" and isPlain(transport):
        if transport._writeDisconnected:
            transport._shouldShutdown = False
        elif drained and _idle(transport):
            transport._writeDisconnecting = True
            transport._writeDisconnected = True
            transport._shouldShutdown = False
        if transport._writeDisconnected and not transport.disconnecting:
            # What loseConnection() does then, with a shared reason (as the
            # reactor's own) rather than a new Failure per call.
            transport.connectionLost(_CONNECTION_DONE)
            return
    transport.loseConnection()


_CONNECTION_DONE = failure.Failure(main.CONNECTION_DONE)


def writeNow(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}: straight to its socket when it is a plain
    one with nothing buffered (what the socket does not take is buffered by
    Twisted as usual), else through C{write()}.
    """
    if MODE == "off" or not isPlain(transport) or not _quiet(transport):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except OSError as e:
        if e.errno not in _AGAIN:
            # The send took the socket's error (see Relay.doRead).
            failSoon(transport)
            return
        sent = 0
    if sent < len(data):
        transport.write(data[sent:] if sent else data)


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


_CONNECTION_LOST = failure.Failure(main.CONNECTION_LOST)


def failSoon(transport: Any) -> None:
    """
    Report C{transport}'s connection as lost by an error (a reset), in the
    reactor's next turn, as Twisted's C{abortConnection} reports an abort;
    meanwhile it is neither read nor written.

    For a socket whose error a C{send()} or C{splice()} of ours has taken:
    the kernel then reports the next read on it as EOF, which must not pass
    for the peer's clean close.
    """
    if transport.disconnected or transport._aborting:
        return
    transport._aborting = True
    transport.stopReading()
    transport.stopWriting()
    transport.doRead = transport.doWrite = _nothing
    transport.reactor.callLater(0, transport.connectionLost, _CONNECTION_LOST)


# -- connecting -------------------------------------------------------------


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
        self.doWrite = self.doRead = self._connecting
        if not hasattr(self, "connector"):
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
            self.reactor.addReaderAndWriter(self)  # type: ignore[attr-defined]
        elif result and result != EISCONN:
            self.failIfNotConnected(  # type: ignore[attr-defined]
                error.getConnectError((result, os.strerror(result)))
            )
        else:
            self._connected(self.fileno() in self.reactor._writes)  # type: ignore[attr-defined]

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

    def _connected(self, registered: bool) -> None:
        del self.doWrite, self.doRead
        if registered:
            # Still registered for reading, which _connectDone wants.
            self.stopWriting()  # type: ignore[attr-defined]
        self._connectDone()

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
            transport.startReading()
            protocol.makeConnection(transport)

    logstr = tcpport.madeWhenAsked(
        "logstr",
        lambda self: "Uninitialized" if self.__dict__.get("protocol") is None
        else f"{tcpport.logPrefixOf(self)},client",
    )

    def _finishInit(self, whenDone: Any, skt: Any, error: Any, reactor: Any) -> None:
        if whenDone:
            self._commonConnection.__init__(self, skt, None, reactor)  # type: ignore[attr-defined]
            whenDone()
        else:
            reactor.callLater(0, self.failIfNotConnected, error)  # type: ignore[attr-defined]


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
        if bindAddress is not None or not _isIPv4(host):
            tcp.Client.__init__(self, host, port, bindAddress, connector, reactor)
            return
        try:
            skt = socket.socket(socket.AF_INET, socket.SOCK_STREAM | _NONBLOCK)
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
        self.socket = skt
        if not _NONBLOCK:  # pragma: no cover (Linux has SOCK_NONBLOCK)
            skt.setblocking(False)
        self.fileno = skt.fileno
        self.protocol = None  # type: ignore[assignment]
        # The backend's congestion control, set before the connect when the
        # address tells already (see Congestion.beforeConnect).
        congestion = getattr(connector, "congestion", None)
        if congestion is not None and congestion.name is not None:
            self.congestionSet = congestion.beforeConnect(skt, host)
        self.doConnect()

    def resolveAddress(self) -> None:
        if self._requiresResolution:
            tcp.Client.resolveAddress(self)
        else:
            self._setRealAddress(self.addr)


if _UNIX:

    class UNIXClient(_ConnectAtOnce, unix.Client):
        """
        A unix-socket client transport that connects at once (see
        L{connect}).
        """

    PLAIN_TRANSPORTS += (TCPClient, UNIXClient)
else:  # pragma: no cover
    PLAIN_TRANSPORTS += (TCPClient,)
_plain.update(PLAIN_TRANSPORTS)


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
        "factory", "transport", "timer", "reactor", "timeouts", "congestion", "_plan", "_starting"
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

    def start(self) -> None:
        """
        Start connecting.
        """
        assert self._plan is not None, "started twice"
        timeout, transportType, *args = self._plan
        self._plan = None
        self.timer = self.timeouts.callLater(timeout, self._timedOut)
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

    def buildProtocol(self, addr: Any) -> Any:
        self._stopTimer()
        return self.factory.buildProtocol(addr)

    def connectionFailed(self, reason: failure.Failure) -> None:
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
    global _ourReactor
    if _ourReactor is None:
        try:
            from txsockproxy.reactor import EPollReactor
        except ImportError:  # pragma: no cover (no epoll here)
            return False
        _ourReactor = EPollReactor
    return isinstance(reactor, _ourReactor)


_ourReactor: Optional[type] = None


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
    if MODE == "off":
        return None
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


def directConnect(
    endpoint: Any, factory: ClientFactory, timeout: float
) -> Optional[defer.Deferred[Any]]:
    """
    Connect C{factory} the way C{endpoint} would, straight through the
    reactor's C{connectTCP}/C{connectUNIX} with C{timeout} (the shorter of it
    and the endpoint's own), if C{endpoint} is a plain
    L{TCP4ClientEndpoint} or L{UNIXClientEndpoint}.

    The endpoint would wrap the factory and its protocol (to forward
    half-closes, which our protocols take themselves), chain Deferreds and
    arm a second timer for the timeout: a third of the cost of a backend
    connect.  C{factory.clientConnectionFailed} must fail the returned
    Deferred (see L{connectFailed}); cancelling it stops the connect.

    @return: a Deferred that fails when the connect fails or is cancelled
        (success is reported to the factory's protocol), or L{None} when
        C{endpoint} is of another type: then use C{endpoint.connect}.
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
    connector = None

    def cancel(d: defer.Deferred[Any]) -> None:
        if connector is not None:
            connector.stopConnecting()

    d: defer.Deferred[Any] = defer.Deferred(cancel)
    factory.connecting = d  # type: ignore[attr-defined]
    connector = connect(*args, factory, timeout=timeout, **extra)
    return d


def connectFailed(factory: ClientFactory, reason: Any) -> None:
    """
    Fail the Deferred of a L{directConnect} of C{factory} with C{reason},
    unless it was cancelled (and so has failed) already.
    """
    d = getattr(factory, "connecting", None)
    if d is not None and not d.called:
        factory.connecting = None  # type: ignore[attr-defined]
        d.errback(reason)


__all__ = [
    "CAN_SPLICE", "MODE", "Relay", "connectFailed", "directConnect", "install", "isPlain",
]
