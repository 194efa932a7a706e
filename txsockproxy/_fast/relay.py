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

import _socket
import errno
import os
import sys
import types
from typing import Any, Callable, Optional

from twisted.internet import abstract, error, main, tcp
from twisted.python import failure, log

from txsockproxy import portable
from txsockproxy._fast import port

try:
    from twisted.internet.epollreactor import EPollReactor as _EPollReactor

    # For isinstance(): empty where there is no epoll (nothing is one then).
    _EPOLL: Any = (_EPollReactor,)
except ImportError:  # pragma: no cover (no epoll on this platform)
    _EPOLL = ()


def byDescriptor(reactor: Any) -> bool:
    """
    Whether C{reactor} keeps its registrations as sets of descriptors
    (C{_reads}, C{_writes}): an epoll reactor, Twisted's or txsockproxy's (a
    subclass).  A transport of such a reactor is in C{_writes} exactly while
    it has something to write or a close or half-close to finish (see
    L{Relay.writes}).  (This module's own hot paths test
    C{isinstance(reactor, _EPOLL)} in place: a call less.)
    """
    return isinstance(reactor, _EPOLL)

try:
    from twisted.internet import unix

    _UNIX: tuple[type, ...] = (unix.Server, unix.Client)
except ImportError:  # pragma: no cover (no unix sockets on this platform)
    _UNIX = ()

# socket.socket's close() without its two Python frames (socket.socket's
# close and _real_close, for makefile()'s reference counting, which
# transports do not use): the close of the C socket type under it.
_closeC = _socket.socket.close

# Transport classes whose socket the fast path may use directly.
PLAIN_TRANSPORTS: tuple[type, ...] = (tcp.Server, tcp.Client, port.Server) + _UNIX

# The same, and their subclasses made by _fastClass.
_plain: set[type] = set(PLAIN_TRANSPORTS)

# Bytes asked for per read.  Larger reads halve the reads, wakeups and
# sends per byte of a bulk transfer; small messages are not affected.
READ_SIZE = 256 * 1024

# The buffer of every read on the copying path.  One is enough (the reactor
# runs in one thread, and what must outlive a read is copied out of it), and
# it must be reused: a fresh recv(READ_SIZE) allocates 256 KiB per read, which
# glibc maps and unmaps each time, even for a one-byte read.
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
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR)


def defaultMode() -> str:
    """
    The mode chosen by C{TXSOCKPROXY_FASTPATH}: C{"splice"} (the default),
    C{"copy"} or C{"off"}; C{"splice"} falls back to C{"copy"} where
    splice(2) is not available.
    """
    mode = os.environ.get("TXSOCKPROXY_FASTPATH", "splice").strip().lower()
    if mode not in ("splice", "copy", "off"):
        mode = "splice"
    if mode == "splice" and not CAN_SPLICE:
        mode = "copy"
    return mode


def registerPlain(*types: type) -> None:
    """
    Let the fast path use the sockets of transports of C{types} directly.
    """
    global PLAIN_TRANSPORTS
    PLAIN_TRANSPORTS += types
    _plain.update(types)


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
        the ordinary path; those relayed on the fast path are counted in its
        counters (L{count}); its C{sidePaused}/C{sideResumed} hear when the
        source is not read while the pipe waits for the sink (methods looked
        up per call: bound methods kept per session would cost memory).
    @ivar up: L{True} for client -> backend.
    @ivar pending: bytes in the pipe, not yet taken by the sink's socket.
    @ivar writes: on an epoll reactor (txsockproxy's, or Twisted's), its set
        of descriptors watched for writing: the sink's descriptor is in it
        exactly while the sink has something to write or a close or
        half-close to finish (Twisted's C{write()}, C{loseConnection()} and
        C{loseWriteConnection()} all start writing), which is what L{_quiet}
        tells from the transport's own attributes.  Else L{None}, and
        L{_quiet} is asked.
    @ivar relays: on txsockproxy's reactor, its map of descriptors whose
        plain read events go straight to a relay (C{EPollReactor.relays}),
        where L{install} enters this one under the source's descriptor
        (L{sourceFd}); else L{None}.

    The relay reads the sockets, the sink's descriptor and that set from its
    own slots rather than from the transports on every read: the two
    directions' transports are of two classes (a server's and a client's),
    and an attribute read at one place in the code from objects of two
    classes, or one that the class also defines (Twisted's transports
    define defaults for their state), is not specialized by the
    interpreter (CPython 3.11): each such read costs a dictionary and a type
    lookup.
    """

    __slots__ = (
        "source", "sink", "owner", "up", "mode", "readFd", "writeFd", "pending", "stalled",
        "capacity", "sourceSocket", "sinkSocket", "sinkFd", "writes", "sourceFd", "relays",
    )

    def __init__(self, source: Any, sink: Any, owner: Any, up: bool, mode: str) -> None:
        self.source = source
        self.sink = sink
        self.sourceSocket = source.socket
        self.sinkSocket = sink.socket
        self.sinkFd = self.sinkSocket.fileno()
        self.sourceFd = self.sourceSocket.fileno()
        reactor: Any = getattr(sink, "reactor", None)
        if isinstance(reactor, _EPOLL):
            self.writes: Optional[set[int]] = reactor._writes
            self.relays: Optional[dict[int, Relay]] = getattr(reactor, "relays", None)
        else:
            self.writes = self.relays = None
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
        Count C{n} bytes relayed on the fast path, as the owner's
        C{countUp}/C{countDown} would (see L{IRelayPath.join}).
        """
        owner = self.owner
        if self.up:
            owner.bytesFromClient += n
            owner.backend.bytesOut += n
        else:
            owner.bytesFromBackend += n
            owner.backend.bytesIn += n
        if owner.inactivityTimeout:
            owner.lastActivity = owner.clock.seconds()

    # -- reading ------------------------------------------------------------

    def doRead(self) -> Optional[Exception]:
        """
        The source socket is readable: relay what it has.

        @return: what Twisted's C{doRead} returns: L{None}, or
            C{CONNECTION_DONE} on EOF, or C{CONNECTION_LOST} on an error.
        """
        if self.readFd >= 0:
            # Splicing (only then can the pipe hold bytes).
            if self.pending:
                # Resumed by someone else while the sink is stalled.
                self._pushPipe()
                if self.pending:
                    return None
            if self.sinkQuiet():
                return self._spliceRead()
        try:
            n = self.sourceSocket.recv_into(_BUFFER)
        except OSError as e:
            if e.errno in _AGAIN:
                return None
            return main.CONNECTION_LOST
        if not n:
            return main.CONNECTION_DONE
        # sinkQuiet(), inline: this runs for every read.
        writes = self.writes
        if (self.sinkFd in writes) if writes is not None else not _quiet(self.sink):
            self.ordinary(_VIEW[:n].tobytes())
            return None
        # count(n), inline: a call less per read.
        owner = self.owner
        if self.up:
            owner.bytesFromClient += n
            owner.backend.bytesOut += n
        else:
            owner.bytesFromBackend += n
            owner.backend.bytesIn += n
        if owner.inactivityTimeout:
            owner.lastActivity = owner.clock.seconds()
        try:
            sent = self.sinkSocket.send(_VIEW[:n])
        except OSError as e:
            if e.errno not in _AGAIN:
                # Reset: this send took the socket's error, so its next read
                # would say EOF. Report the reset now, as Twisted's doWrite
                # would have.
                failSoon(self.sink)
                return None
            sent = 0
        if sent < n:
            self.sink.write(_VIEW[sent:n].tobytes())
        if n >= SPLICE_THRESHOLD and self.mode == "splice" and self.readFd < 0:
            self._openPipe()
        return None

    def sinkQuiet(self) -> bool:
        """
        Whether the sink can take bytes straight to its socket now (see
        L{_quiet} and L{writes}).
        """
        writes = self.writes
        if writes is not None:
            return self.sinkFd not in writes
        return _quiet(self.sink)

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
        self._pushPipe()
        return None

    def _pushPipe(self) -> None:
        """
        Move what the pipe holds to the sink: on a reset of the sink, report
        it lost; if the sink's socket is full, stall.
        """
        if self._drain() is not None:
            failSoon(self.sink)
        elif self.pending:
            self._stall()

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
        Give the source its own C{doRead} back (its own class, unless it is
        closed by now) and release the pipe.
        """
        if self.stalled:
            self._unstall()
        relays = self.relays
        if relays is not None and relays.get(self.sourceFd) is self:
            del relays[self.sourceFd]
        source = self.source
        base = _relayedBases.get(type(source))
        if base is not None:
            if not source.disconnected:
                # (A closed transport keeps the class: nothing reads it.)
                source.__class__ = base
        elif "doRead" in source.__dict__:
            # (Also once closed: the bound method is a reference cycle.)
            del source.doRead
        if self.readFd >= 0:
            self.closePipe()


_fastClasses: dict[type, type] = {}

# The other way: each class made by _fastClass -> the class it was made of.
_relayedBases: dict[type, type] = {}


def _relayedRead(self: Any) -> Optional[Exception]:
    # doRead of a transport on the fast path: its protocol holds the Relay.
    # Each class made by _fastClass has its own copy (see _ownCopy).
    relay: Relay = self.protocol.relay
    return relay.doRead()


def _ownCopy(function: Callable[..., Any]) -> Callable[..., Any]:
    """
    A copy of C{function} with a code object of its own.  CPython (3.11 and
    later) specializes each attribute read in a code object for the class
    it meets there; a read that meets two classes (a server's transport and
    a client's, their two protocols) falls back to the general lookup.  A
    copy per class keeps each one specialized.
    """
    return types.FunctionType(
        function.__code__.replace(), function.__globals__, function.__name__,
        function.__defaults__, function.__closure__,
    )


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
    reactor = self.reactor
    if self.producer is None and isinstance(reactor, _EPOLL):
        # FileDescriptor.connectionLost, less its stopReading() and
        # stopWriting() when the reactor watches the descriptor for neither
        # (the usual case by now: both ends' EOF was read, nothing is left
        # to write).
        self.disconnected = 1
        self.connected = 0
        fd = self.fileno()
        if fd in reactor._reads or fd in reactor._writes:
            self.stopReading()
            self.stopWriting()
    else:
        abstract.FileDescriptor.connectionLost(self, reason)
    aborted = isinstance(reason.value, error.ConnectionAborted)
    if aborted or self._shouldShutdown or not self._twistedClose:
        self._closeSocket(not aborted)
    else:
        # Twisted's _closeSocket(True) with nothing to shut down (see
        # close()), less socket.socket.close()'s two Python frames.
        try:
            _closeC(self.socket)
        except OSError:
            pass
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
                "doRead": _ownCopy(_relayedRead),
                "readConnectionLost": _readConnectionLost,
                "connectionLost": _connectionLost,
                # A plain transport's (no TLS in it: see isPlain), without
                # the TLS test of _newtls's wrappers around them.
                "registerProducer": abstract.FileDescriptor.registerProducer,
                "unregisterProducer": abstract.FileDescriptor.unregisterProducer,
                # Whether its _closeSocket is Twisted's (which
                # _connectionLost may then do itself).
                "_twistedClose": getattr(cls, "_closeSocket", None) is tcp.Connection._closeSocket,
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
        cls = type(transport)
        transport.__class__ = _fastClasses.get(cls) or _fastClass(cls)
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
    mode = defaultMode() if mode is None else mode
    if mode == "off" or not (isPlain(client) and isPlain(backend)):
        return None
    up = Relay(client, backend, owner, True, mode)
    down = Relay(backend, client, owner, False, mode)
    _attach(client, clientProtocol, up)
    _attach(backend, backendProtocol, down)
    if up.relays is not None:
        up.relays[up.sourceFd] = up
    if down.relays is not None:
        down.relays[down.sourceFd] = down
    return up, down


# -- ending a direction, or a connection, without a reactor turn ------------

def idle(transport: Any) -> bool:
    """
    Whether C{transport} may be shut or closed at once, as Twisted would do in
    the reactor's next turn: a plain socket, nothing buffered, no producer,
    not closing, and not waiting on the reactor to write.  Only a reactor that
    keeps its registrations by descriptor (epoll, poll) can tell the last.
    """
    # isPlain(), inline (this runs two or three times per session).
    if (
        type(transport) not in _plain
        or not transport.connected
        or transport.TLS
        or transport.producer is not None
        or not hasattr(transport, "socket")
    ):
        return False
    reactor = transport.reactor
    if isinstance(reactor, _EPOLL):
        return transport.fileno() not in reactor._writes and not transport._writeDisconnected
    if not _quiet(transport):
        return False
    writes = getattr(reactor, "_writes", None)
    if writes is None or getattr(reactor, "_selectables", None) is None:
        return False
    return transport.fileno() not in writes


def shutWrite(transport: Any) -> None:
    """
    End C{transport}'s write side, as C{loseWriteConnection()} does, but at
    once (C{shutdown(SHUT_WR)} now) when nothing is left to write: that saves
    a reactor turn and two C{epoll_ctl()} calls per direction.
    """
    if not idle(transport):
        portable.shutWrite(transport)
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
    if isPlain(transport):
        if transport._writeDisconnected:
            transport._shouldShutdown = False
        elif drained and idle(transport):
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
    if not isPlain(transport) or not _quiet(transport):
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


#: At most this much of what a client sent is read to go with a preamble.
PREAMBLE_READ = 65536


def writePreamble(client: Any, backend: Any, data: bytes) -> int:
    """
    Write C{data} to C{backend} with, in the same C{send()}, what C{client}'s
    socket already holds (up to L{PREAMBLE_READ} bytes): a client that
    speaks first has usually sent its first bytes by the time its backend
    connects, and one segment instead of two saves a system call here and
    a wake-up of the backend.

    @return: how many of the client's bytes went with C{data}.
    """
    if not (isPlain(client) and isPlain(backend)) or client.disconnecting:
        writeNow(backend, data)
        return 0
    try:
        first = client.socket.recv(PREAMBLE_READ)
    except OSError as e:
        if e.errno not in _AGAIN:
            # The recv() took the socket's error (see Relay.doRead).
            failSoon(client)
        first = b""
    # b"" is also the client's EOF, which the kernel reports again at the
    # next read: the ordinary path hears it there.
    writeNow(backend, data + first if first else data)
    return len(first)


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


__all__ = [
    "CAN_SPLICE", "Relay", "byDescriptor", "close", "defaultMode", "failSoon", "idle", "install",
    "isPlain", "registerPlain", "shutWrite", "writeNow", "writePreamble",
]
