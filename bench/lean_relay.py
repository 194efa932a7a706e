"""
The floor for a correct proxy written in Python: what minimal_relay.py does,
plus what a session of txsockproxy must do on every connection, and nothing
else.  Not a proxy to use (one backend, no configuration, no logging, no
status); a yardstick for how cheap a session could be in Python, to size a
leaner session path (see doc/performance.md, "How far a Python relay goes
here").

    python bench/lean_relay.py LISTEN_PORT BACKEND_PORT [PROCESSES]

Per connection, as txsockproxy: Nagle off on both sides (the client's
inherited from the listening socket); CUBIC on the backend's socket before
its connect; a non-blocking connect with a connect timeout (one queue of
timeouts, as txsockproxy.timeouts); flow control (a side whose peer cannot
take more is not read until it can); half-close (an EOF becomes a
shutdown(SHUT_WR) of the other side once what is held for it is sent); an
end of stream checked for a pending error (SO_ERROR), a reset passed on as a
reset (SO_LINGER 0); a half-closed timeout; byte and session counters; both
sides closed once both directions are over.  With PROCESSES, that many
processes, each with its own SO_REUSEPORT listener.
"""

import collections
import errno
import os
import select
import socket
import struct
import sys
import time

CONNECT_TIMEOUT = 5.0
HALF_CLOSED_TIMEOUT = 60.0
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)
_LINGER0 = struct.pack("ii", 1, 0)
_BUFFER = bytearray(65536)
_VIEW = memoryview(_BUFFER)
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT


class Side:
    __slots__ = ("sock", "fd", "session", "peer", "held", "eof", "shut", "reading", "mask")

    def __init__(self, sock: socket.socket, session: "Session") -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.session = session
        self.peer: Side = self
        self.held = b""
        self.eof = False
        self.shut = False
        self.reading = True
        self.mask = 0  # what epoll watches for; 0: not registered


class Session:
    __slots__ = ("client", "backend", "up", "down", "timer", "connecting", "done")

    def __init__(self) -> None:
        self.up = self.down = 0
        self.timer: list = []
        self.connecting = False
        self.done = False


class Relay:
    def __init__(self, listenPort: int, backendPort: int) -> None:
        self.backend = ("127.0.0.1", backendPort)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.listener.bind(("127.0.0.1", listenPort))
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.poller = select.epoll()
        self.poller.register(self.listener.fileno(), EPOLLIN)
        self.sides: dict[int, Side] = {}
        self.timeouts: dict[float, collections.deque] = {}
        self.sessions = self.active = self.bytes = 0

    # -- timeouts: one queue per length, as txsockproxy.timeouts --------------

    def arm(self, session: Session, length: float) -> None:
        entry = [time.monotonic() + length, session]
        session.timer = entry
        self.timeouts.setdefault(length, collections.deque()).append(entry)

    def expire(self, now: float) -> None:
        for queue in self.timeouts.values():
            while queue and (queue[0][1] is None or queue[0][0] <= now):
                _, session = queue.popleft()
                if session is not None and not session.done:
                    self.reset(session)

    def watch(self, side: Side, mask: int) -> None:
        # A side with nothing to watch is unregistered: epoll reports a
        # hang-up whatever the mask, so a registered idle side would spin.
        if mask == side.mask:
            return
        if not mask:
            self.poller.unregister(side.fd)
        elif not side.mask:
            self.poller.register(side.fd, mask)
        else:
            self.poller.modify(side.fd, mask)
        side.mask = mask

    # -- sessions -------------------------------------------------------------

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            session = Session()
            self.sessions += 1
            self.active += 1
            client = session.client = Side(sock, session)
            b = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            b.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"cubic")
            backend = session.backend = Side(b, session)
            client.peer, backend.peer = backend, client
            self.sides[client.fd] = client
            self.sides[backend.fd] = backend
            code = b.connect_ex(self.backend)
            if code == errno.EINPROGRESS:
                code = b.connect_ex(self.backend)
            if code in (0, errno.EISCONN):
                self.watch(client, EPOLLIN)
                self.watch(backend, EPOLLIN)
            elif code in (errno.EINPROGRESS, errno.EALREADY):
                session.connecting = True
                client.reading = False
                self.watch(backend, EPOLLOUT)
                self.arm(session, CONNECT_TIMEOUT)
            else:
                self.end(session)

    def connected(self, side: Side) -> None:
        session = side.session
        session.connecting = False
        session.timer[1] = None
        if side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.end(session)
            return
        side.session.client.reading = True
        self.watch(side, EPOLLIN)
        self.watch(side.peer, EPOLLIN)

    def read(self, side: Side) -> None:
        try:
            n = side.sock.recv_into(_BUFFER)
        except BlockingIOError:
            return
        except OSError:
            self.reset(side.session)
            return
        if not n:
            self.eof(side)
            return
        if side is side.session.client:
            side.session.up += n
        else:
            side.session.down += n
        self.bytes += n
        peer = side.peer
        try:
            sent = peer.sock.send(_VIEW[:n])
        except BlockingIOError:
            sent = 0
        except OSError:
            self.reset(side.session)
            return
        if sent < n:
            # Flow control: hold the rest, stop reading until it is sent.
            peer.held = _VIEW[sent:n].tobytes()
            side.reading = False
            self.watch(side, 0)
            self.watch(peer, EPOLLOUT | (EPOLLIN if peer.reading else 0))

    def write(self, side: Side) -> None:
        if side.session.connecting:
            self.connected(side)
            return
        try:
            sent = side.sock.send(side.held)
        except BlockingIOError:
            return
        except OSError:
            self.reset(side.session)
            return
        side.held = side.held[sent:]
        if side.held:
            return
        self.watch(side, EPOLLIN if side.reading else 0)
        source = side.peer
        if source.eof:
            self.shutWrite(side)
        else:
            source.reading = True
            self.watch(source, EPOLLIN)

    def eof(self, side: Side) -> None:
        if side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.reset(side.session)
            return
        side.eof = True
        side.reading = False
        peer = side.peer
        if peer.eof:
            if not side.held and not peer.held:
                self.end(side.session)
            return
        self.watch(side, EPOLLOUT if side.held else 0)
        if not peer.held:
            self.shutWrite(peer)
        self.arm(side.session, HALF_CLOSED_TIMEOUT)

    def shutWrite(self, side: Side) -> None:
        if not side.shut:
            side.shut = True
            side.sock.shutdown(socket.SHUT_WR)
        if side.peer.eof and side.eof:
            self.end(side.session)

    def reset(self, session: Session) -> None:
        for side in (session.client, session.backend):
            try:
                side.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            except OSError:
                pass
        self.end(session)

    def end(self, session: Session) -> None:
        if session.done:
            return
        session.done = True
        if session.timer:
            session.timer[1] = None
        self.active -= 1
        for side in (session.client, session.backend):
            self.sides.pop(side.fd, None)
            self.watch(side, 0)
            side.sock.close()

    def run(self) -> None:
        listenFd = self.listener.fileno()
        sides = self.sides
        while True:
            timeout = 1.0 if any(self.timeouts.values()) else -1
            for fd, events in self.poller.poll(timeout, 64):
                if fd == listenFd:
                    self.accept()
                    continue
                side = sides.get(fd)
                if side is None:
                    continue
                if events & EPOLLOUT:
                    self.write(side)
                    if side.session.done:
                        continue
                if events & (EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and side.reading:
                    self.read(side)
            if any(self.timeouts.values()):
                self.expire(time.monotonic())


if __name__ == "__main__":
    for _ in range(int(sys.argv[3]) - 1 if len(sys.argv) > 3 else 0):
        if os.fork() == 0:
            break
    Relay(int(sys.argv[1]), int(sys.argv[2])).run()
