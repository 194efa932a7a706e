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
   one pipe (L{PIPE_SIZE}) of kernel memory, and no process memory.

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
from typing import Any, Callable, Optional

from twisted.internet import main, tcp

try:
    from twisted.internet import unix

    _UNIX: tuple[type, ...] = (unix.Server, unix.Client)
except ImportError:  # pragma: no cover (no unix sockets on this platform)
    _UNIX = ()

# Transport classes whose socket the fast path may use directly.
PLAIN_TRANSPORTS: tuple[type, ...] = (tcp.Server, tcp.Client) + _UNIX

# Bytes asked for per read.  Larger reads halve the reads, wakeups and
# sends per byte of a bulk transfer; small messages are not affected.
READ_SIZE = 256 * 1024

# A read at least this large makes a direction use splice(2) from then on.
SPLICE_THRESHOLD = 64 * 1024

# Capacity asked for each direction's pipe (F_SETPIPE_SZ): one splice moves
# at most a pipe's capacity.
PIPE_SIZE = 256 * 1024

CAN_SPLICE = sys.platform.startswith("linux") and hasattr(os, "splice")
_F_SETPIPE_SZ = 1031
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
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
    return (
        type(transport) in PLAIN_TRANSPORTS
        and not getattr(transport, "TLS", False)
        and getattr(transport, "connected", False)
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

    @ivar ordinary: the session's own handler of bytes read (C{fromClient}
        or C{fromBackend}): the ordinary path.
    @ivar count: called with the size of every chunk relayed on the fast
        path, for the session's counters.
    @ivar pending: bytes in the pipe, not yet taken by the sink's socket.
    """

    __slots__ = (
        "source", "sink", "ordinary", "count", "mode", "sourceSocket",
        "sinkSocket", "sourceFd", "sinkFd", "readFd", "writeFd", "pending",
        "stalled",
    )

    def __init__(
        self,
        source: Any,
        sink: Any,
        ordinary: Callable[[bytes], None],
        count: Callable[[int], None],
        mode: str,
    ) -> None:
        self.source = source
        self.sink = sink
        self.ordinary = ordinary
        self.count = count
        self.mode = mode
        self.sourceSocket: socket.socket = source.socket
        self.sinkSocket: socket.socket = sink.socket
        self.sourceFd = source.fileno()
        self.sinkFd = sink.fileno()
        self.readFd = -1
        self.writeFd = -1
        self.pending = 0
        self.stalled = False

    # -- reading ------------------------------------------------------------

    def doRead(self) -> Optional[Exception]:
        """
        The source socket is readable: relay what it has.

        @return: what Twisted's C{doRead} returns: L{None}, or
            C{CONNECTION_DONE} on EOF, or C{CONNECTION_LOST} on an error.
        """
        if self.pending:
            # Resumed by someone else while the sink is stalled.
            self._drain()
            if self.pending:
                self._stall()
                return None
        if self.readFd >= 0 and _quiet(self.sink):
            return self._spliceRead()
        try:
            data = self.sourceSocket.recv(READ_SIZE)
        except OSError as e:
            if e.errno in _AGAIN:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        sink = self.sink
        if not _quiet(sink):
            self.ordinary(data)
            return None
        self.count(len(data))
        try:
            sent = self.sinkSocket.send(data)
        except OSError:
            # Full, or an error: the sink's own doWrite meets the error
            # again and reports it.
            sent = 0
        if sent < len(data):
            sink.write(data[sent:] if sent else data)
        if (
            self.mode == "splice"
            and len(data) >= SPLICE_THRESHOLD
            and self.readFd < 0
        ):
            self._openPipe()
        return None

    def _spliceRead(self) -> Optional[Exception]:
        try:
            n = os.splice(self.sourceFd, self.writeFd, READ_SIZE, flags=_SPLICE_FLAGS)
        except OSError as e:
            if e.errno in _AGAIN:
                return None
            return main.CONNECTION_LOST
        if not n:
            self.closePipe()
            return main.CONNECTION_DONE
        self.count(n)
        self.pending = n
        self._drain()
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
        try:
            import fcntl

            fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # over the user's pipe quota: a default-sized pipe works too
        self.readFd, self.writeFd = r, w

    def closePipe(self) -> None:
        """
        Close the pipe, if any (the session ended, or the source sent EOF
        with the pipe empty).
        """
        if self.readFd >= 0:
            os.close(self.readFd)
            os.close(self.writeFd)
            self.readFd = self.writeFd = -1
        self.pending = 0

    def _drain(self) -> Optional[Exception]:
        """
        Move what the pipe holds to the sink's socket, as far as it takes it.
        """
        try:
            while self.pending:
                n = os.splice(self.readFd, self.sinkFd, self.pending, flags=_SPLICE_FLAGS)
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
            try:
                del self.sink.doWrite
            except AttributeError:
                pass

    def uninstall(self) -> None:
        """
        Give the source its own C{doRead} back and release the pipe.
        """
        self._unstall()
        try:
            del self.source.doRead
        except AttributeError:
            pass
        self.closePipe()


def install(
    client: Any,
    backend: Any,
    fromClient: Callable[[bytes], None],
    fromBackend: Callable[[bytes], None],
    countUp: Callable[[int], None],
    countDown: Callable[[int], None],
    mode: Optional[str] = None,
) -> Optional[tuple[Relay, Relay]]:
    """
    Relay between transports C{client} and C{backend} on the fast path, if
    both are plain sockets.

    @return: the two L{Relay}s (up, down), or L{None} if the fast path does
        not apply and the session relays through Twisted.
    """
    mode = MODE if mode is None else mode
    if mode == "off" or not (isPlain(client) and isPlain(backend)):
        return None
    up = Relay(client, backend, fromClient, countUp, mode)
    down = Relay(backend, client, fromBackend, countDown, mode)
    client.doRead = up.doRead
    backend.doRead = down.doRead
    return up, down


__all__ = ["CAN_SPLICE", "MODE", "Relay", "install", "isPlain"]
