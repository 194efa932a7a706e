"""
Upgrading without refusing a connection: a running proxy hands its listening
sockets to a new process (a new version, a new Python), which serves them
while the old one drains its sessions as on SIGTERM.

The running process listens on the unix socket of the C{takeover-socket}
key (mode 0600; a peer whose uid is neither this process's nor root's is
refused, checked with C{SO_PEERCRED}). A process started with
C{--take-over} connects to it, before it binds anything (and trusts it
only if its uid is its own, root's or the one it will drop to, and only
the listening sockets it describes), and the exchange is line-based::

    old -> new   one JSON line: {"protocol": "txsockproxy-takeover/1",
                 "pid": OLD_PID, "listeners": [{"key": [IS_STATUS, LISTEN, N],
                 "family": AF, "part": P}, ...], "locks": [NAME, ...]}, the
                 listening sockets' descriptors riding on its first bytes
                 (SCM_RIGHTS), one per listener, in order, then one per
                 instance lock (L{txsockproxy.instancelock}; "locks" is
                 absent when there are none); or {"error": "..."}, and the
                 connection closes
    new -> old   "serving PID\\n", once the new process serves (its listeners
                 adopted the sockets its configuration still has, bound its
                 new ones, and started)
    old -> new   "draining\\n"; the old process stops accepting (lets its
                 copies go without shutting the sockets down: they stay
                 open, and listening, in the new process, so no connection
                 is refused) and stops as on SIGTERM: sessions in flight get
                 shutdown-timeout seconds.

The new side receives before the reactor runs (at start-up, in blocking
calls bounded by a timeout: L{receive}); once it serves, its last exchange
runs in the reactor, without blocking it (L{Received.serving}). The old side is a Twisted protocol
(L{TakeoverService}), which sends the descriptors with the public
C{IUNIXTransport.sendFileDescriptor}. A take-over that ends before
"serving" (the new process failed) leaves the old one serving, listening
again for the next attempt.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, NamedTuple, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import ISystemHandle
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from txsockproxy import instancelock, procfs
from txsockproxy.adopting import InheritedSocket, familyOf
from txsockproxy.instancelock import LOCKS, InstanceLock, InstanceLocks, LockHeld
from txsockproxy.ratelimit import RateLimitedLog
from txsockproxy.service import ListenError, ListenerService, ListenKey, ProxyService

PROTOCOL = "txsockproxy-takeover/1"
# Seconds the new process waits for the old one at each step.
TIMEOUT = 10.0
# Seconds the old process waits, once it has handed its sockets over, for
# the new one to serve: generous, as the new one may be starting workers.
HANDOVER_TIMEOUT = 60.0
# A description longer than this is not one.
MAX_LINE = 1 << 20
SERVING = b"serving"
DRAINING = b"draining"


class TakeoverError(Exception):
    """
    A take-over failed; the message is one line saying why.
    """


# -- the description of the sockets -------------------------------------------


# A socket handed over: its listener's key, its address family, and which
# socket of the listener it is (0; 1 to N-1: the other SO_REUSEPORT sockets
# of a listener of N workers).
Handed = tuple[ListenKey, int, int]


class Description(NamedTuple):
    """
    What the old process sends: its pid, its listening sockets, and the
    names of its instance locks (L{txsockproxy.instancelock}), whose
    sockets follow the listening ones.
    """

    pid: int
    listeners: list[Handed]
    locks: list[str]


def describe(pid: int, listeners: Sequence[Handed], locks: Sequence[str] = ()) -> bytes:
    """
    The line the old process sends with its sockets: its pid, the key,
    address family and part of each listening socket, and the name of each
    instance lock, in the order of the descriptors (the listening sockets,
    then the locks).
    """
    document: dict[str, Any] = {
        "protocol": PROTOCOL,
        "pid": pid,
        "listeners": [{"key": list(key), "family": family, "part": part}
                      for key, family, part in listeners],
    }
    if locks:
        # Absent without locks: a version without them reads the line.
        document["locks"] = list(locks)
    return json.dumps(document, separators=(",", ":")).encode("utf-8") + b"\n"


def parseDescription(line: bytes) -> Description:
    """
    The pid, listeners and locks that L{describe} made C{line} of.

    @raise TakeoverError: the old process refused (its reason), or the line
        is not a description this version reads.
    """
    try:
        document = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        raise TakeoverError("the running process sent something else than a "
                            "description of its sockets") from None
    if not isinstance(document, dict):
        raise TakeoverError("the running process sent something else than a "
                            "description of its sockets")
    if "error" in document:
        raise TakeoverError(f"the running process refused: {_printable(document['error'])}")
    if document.get("protocol") != PROTOCOL:
        raise TakeoverError(f"the running process speaks "
                            f"{_printable(repr(document.get('protocol')))}, not {PROTOCOL!r}")
    try:
        pid = int(document["pid"])
        listeners = []
        for entry in document["listeners"]:
            isStatus, desc, n = entry["key"]
            part = entry.get("part", 0)
            if not (isinstance(isStatus, bool) and isinstance(desc, str)
                    and isinstance(n, int) and isinstance(entry["family"], int)
                    and isinstance(part, int)):
                raise TypeError(entry)
            listeners.append(((isStatus, desc, n), entry["family"], part))
        locks = document.get("locks", [])
        if not (isinstance(locks, list) and all(isinstance(name, str) for name in locks)):
            raise TypeError(locks)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise TakeoverError("the running process sent a description this version "
                            "cannot read") from None
    return Description(pid, listeners, locks)


def _printable(text: object, limit: int = 200) -> str:
    """
    C{text} as one line of printable characters (others escaped), cut at
    C{limit}: what a peer sent, fit to be logged.
    """
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return line if len(line) <= limit else line[:limit] + "…"


# -- the new process's side -----------------------------------------------------


class Received:
    """
    What a new process received from the one it takes over, until it
    serves.

    @ivar pid: the old process's.
    @ivar sockets: the listening sockets, by listener key.
    @ivar extra: the other SO_REUSEPORT sockets of a listener whose old
        workers had one each, by listener key.
    @ivar locks: the old process's instance locks, by name, until adopted
        (L{adoptLocks}).
    """

    def __init__(self, connection: socket.socket, pid: int,
                 sockets: dict[ListenKey, InheritedSocket],
                 extra: Optional[dict[ListenKey, list[InheritedSocket]]] = None,
                 locks: Optional[dict[str, InstanceLock]] = None) -> None:
        self._connection: Optional[socket.socket] = connection
        self.pid = pid
        self.sockets = sockets
        self.extra = extra or {}
        self.locks = locks or {}

    def keep(self, keys: Iterable[ListenKey]) -> list[str]:
        """
        Keep the sockets of the listeners C{keys} (a configuration's) and
        close the others.

        @return: the listen strings closed, in the order received.
        """
        wanted = set(keys)
        closed = []
        for key in list(self.sockets):
            if key not in wanted:
                self.sockets.pop(key).close()
                for inherited in self.extra.pop(key, []):
                    inherited.close()
                closed.append(key[1])
        kept = {_lockName(key[1]) for key in self.sockets}
        for name in list(self.locks):
            if name not in kept:
                self.locks.pop(name).release()
        return closed

    def adoptLocks(self, locks: InstanceLocks = LOCKS) -> None:
        """
        Hold the instance locks received (those L{keep} kept), in
        C{locks}: this process's listeners find them held.
        """
        received, self.locks = self.locks, {}
        for lock in received.values():
            locks.adopt(lock)

    def serving(self, reactor: Any, timeout: float = TIMEOUT) -> defer.Deferred[bool]:
        """
        Tell the old process that this one serves, and wait (at most
        C{timeout} seconds) for it to answer that it drains, without
        blocking C{reactor} (an C{IReactorSocket} and C{IReactorTime}): the
        connection is adopted into it.

        @return: a Deferred that fires with whether it answered so.
        """
        connection, self._connection = self._connection, None
        if connection is None:
            return defer.succeed(False)
        done: defer.Deferred[bool] = defer.Deferred()
        exchange = _Serving(done)
        try:
            connection.setblocking(False)
            reactor.adoptStreamConnection(connection.fileno(), socket.AF_UNIX,
                                          Factory.forProtocol(lambda: exchange))
        except (OSError, AttributeError, NotImplementedError):
            # Not an IReactorSocket: the old process is not told (it warns).
            return defer.succeed(False)
        finally:
            # The reactor has its own copy.
            connection.close()
        exchange.timeout = reactor.callLater(timeout, exchange.timedOut)
        return done

    def abandon(self) -> None:
        """
        Give up: close the connection (the old process goes on serving) and
        every socket not adopted.
        """
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
        self.closeUnused()

    def closeUnused(self) -> None:
        """
        Close every socket received that was not adopted: e.g. the old
        workers' SO_REUSEPORT sockets that fewer workers, or one process,
        do not take. Kept open, such a socket would go on being given
        connections that no one accepts.
        """
        for inherited in self.sockets.values():
            inherited.close()
        for extra in self.extra.values():
            for inherited in extra:
                inherited.close()
        locks, self.locks = self.locks, {}
        for lock in locks.values():
            lock.release()


def _lockName(listen: str) -> Optional[str]:
    """
    The name of the instance lock of the listen string C{listen}'s TCP
    address, if it names one (a port other than 0).
    """
    address = _boundAddress(listen)
    if not isinstance(address, tuple) or not address[1]:
        return None
    interface, port = address
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    return instancelock.tcpLockName(interface, port, family)


class _Serving(LineReceiver):
    """
    The new process's end of the last exchange: C{serving PID}, then the
    old process's C{draining}.
    """

    delimiter = b"\n"
    MAX_LENGTH = 64
    transport: Any

    def __init__(self, done: defer.Deferred[bool]) -> None:
        self.done = done
        self.timeout: Any = None

    def connectionMade(self) -> None:
        # Its pid now: a daemonizing twistd has forked since it connected.
        self.transport.write(SERVING + f" {os.getpid()}\n".encode("ascii"))

    def lineReceived(self, line: bytes) -> None:
        self._finish(line == DRAINING)
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._finish(False)
        self.transport.loseConnection()

    def timedOut(self) -> None:
        """
        No answer in time.
        """
        self.timeout = None
        self._finish(False)
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._finish(False)

    def _finish(self, drains: bool) -> None:
        timeout, self.timeout = self.timeout, None
        if timeout is not None and timeout.active():
            timeout.cancel()
        if not self.done.called:
            self.done.callback(drains)


def socketCredentials(connection: socket.socket) -> tuple[int, int, int]:
    """
    The pid, uid and gid of the process at the other end of the unix socket
    C{connection} (C{SO_PEERCRED}: for a connecting socket, the process
    that listened).
    """
    pid, uid, gid = struct.unpack(
        "3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i")))
    return pid, uid, gid


def receive(
    path: str,
    timeout: float = TIMEOUT,
    connect: Callable[[str, float], socket.socket] = lambda path, timeout: _connect(path,
                                                                                     timeout),
    peerUids: Iterable[int] = (),
    credentials: Callable[[socket.socket], tuple[int, int, int]] = socketCredentials,
) -> Optional[Received]:
    """
    Connect to the process that listens on C{path} and receive its
    listening sockets, within C{timeout} seconds.

    The process must run as this process's uid, as root, or as one of
    C{peerUids} (the uid that this process will drop to: twistd's C{-u}),
    and each socket it passes must be a listening stream socket of the
    family described, bound to the address its listen string names (when
    the string names one: a TCP port other than 0, a unix path).

    @return: what was received; or L{None} when no process listens there
        (no such file, or a stale one: refused), so that nothing is taken
        over.
    @raise TakeoverError: the process runs as another user, refused, did
        not answer in time, or sent what this version cannot read or
        sockets that are not what it described. Nothing it sent is kept
        open.
    """
    try:
        connection = connect(path, timeout)
    except FileNotFoundError:
        return None
    except ConnectionRefusedError:
        return None
    except OSError as e:
        raise TakeoverError(f"cannot connect to {path}: {e.strerror or e}") from None
    fds: list[int] = []
    try:
        try:
            peerPid, peerUid, _ = credentials(connection)
        except (OSError, struct.error) as e:
            raise TakeoverError(f"cannot tell who listens on {path}: {e}") from None
        allowed = {os.getuid(), os.geteuid(), 0, *peerUids}
        if peerUid not in allowed:
            raise TakeoverError(
                f"the process on {path} (pid {peerPid}) runs as uid {peerUid}, not as "
                f"one of {', '.join(map(str, sorted(allowed)))}: not taking over from it")
        data = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TakeoverError(f"no answer from the process on {path} within "
                                    f"{timeout:g}s")
            connection.settimeout(left)
            try:
                chunk, received, _, _ = socket.recv_fds(connection, 65536, 256)
            except TimeoutError:
                raise TakeoverError(f"no answer from the process on {path} within "
                                    f"{timeout:g}s") from None
            fds.extend(received)
            if not chunk:
                raise TakeoverError(f"the process on {path} closed the connection")
            data += chunk
            if len(data) > MAX_LINE:
                raise TakeoverError(f"the process on {path} sent too long a description")
        pid, listeners, lockNames = parseDescription(data.split(b"\n", 1)[0])
        if len(fds) != len(listeners) + len(lockNames):
            raise TakeoverError(f"the process on {path} described "
                                f"{len(listeners) + len(lockNames)} socket(s) but passed "
                                f"{len(fds)}")
        for (key, family, _), fd in zip(listeners, fds, strict=False):
            wrong = checkListening(fd, family, key[1])
            if wrong is not None:
                raise TakeoverError(f"the process on {path} passed for {key[1]} a socket "
                                    f"that {wrong}")
        for name, fd in zip(lockNames, fds[len(listeners):], strict=True):
            if not instancelock.isLock(fd, name):
                raise TakeoverError(f"the process on {path} passed for the instance lock "
                                    f"{name} a socket that is not it")
    except (TakeoverError, OSError) as e:
        for fd in fds:
            os.close(fd)
        connection.close()
        if isinstance(e, OSError):
            raise TakeoverError(f"receiving from {path}: {e.strerror or e}") from None
        raise
    sockets: dict[ListenKey, InheritedSocket] = {}
    extra: dict[ListenKey, list[InheritedSocket]] = {}
    for (key, family, part), fd in zip(listeners, fds, strict=False):
        if part == 0 and key not in sockets:
            sockets[key] = InheritedSocket(fd, family)
        else:
            extra.setdefault(key, []).append(InheritedSocket(fd, family))
    locks: dict[str, InstanceLock] = {}
    for name, fd in zip(lockNames, fds[len(listeners):], strict=True):
        lock = instancelock.adopt(name, fd)
        if lock is not None:
            locks[name] = lock
    return Received(connection, pid, sockets, extra, locks)


def checkListening(fd: int, family: int, listen: str) -> Optional[str]:
    """
    Check that the descriptor C{fd} is a listening stream socket of
    C{family} and, when the listen string C{listen} names a TCP port (not
    0), an interface or an absolute unix path, that it is bound to it.

    @return: L{None}, or what is wrong with it (to follow "a socket that").
    """
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError as e:
        return f"is not one ({e.strerror or e})"
    try:
        if probe.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != socket.SOCK_STREAM:
            return "is not a stream socket"
        if probe.family != family:
            return f"is of address family {int(probe.family)}, not {family}"
        if not probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return "is not listening"
        bound = probe.getsockname()
    except OSError as e:
        return f"cannot be checked ({e.strerror or e})"
    finally:
        probe.close()
    expected = _boundAddress(listen)
    if expected is None:
        return None
    if isinstance(expected, str):
        if family == socket.AF_UNIX and expected.startswith("/") and bound != expected:
            return f"is bound to {bound!r}, not {expected!r}"
        return None
    interface, port = expected
    if family not in (socket.AF_INET, socket.AF_INET6):
        return f"is of address family {family}, not TCP's"
    host, boundPort = bound[0], bound[1]
    if port and boundPort != port:
        return f"is bound to port {boundPort}, not {port}"
    if interface and not _sameHost(interface, host):
        return f"is bound to {host}, not {interface}"
    return None


def _sameHost(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


class _Bound(Exception):
    """
    What a listen string would have bound (see L{_boundAddress}).
    """

    def __init__(self, address: Any) -> None:
        super().__init__(address)
        self.address = address


class _RecordingReactor:
    """
    A reactor that, asked to listen, raises L{_Bound} with the address
    asked for: the public way to learn what an endpoint string binds,
    whatever wraps it (C{haproxy:}, TLS).
    """

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        raise _Bound((interface, port))

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        raise _Bound((interface, port))

    def listenUNIX(self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666,
                   wantPID: int = 0) -> Any:
        raise _Bound(address)

    def __getattr__(self, name: str) -> Any:
        raise _Bound(None)


def _boundAddress(listen: str) -> Any:
    """
    The (interface, port) of a TCP listen string, the path of a unix one,
    or L{None}: unknown (systemd's sockets, a string that does not parse).
    """
    from twisted.internet.endpoints import serverFromString

    try:
        endpoint = serverFromString(_RecordingReactor(), listen)
        d = endpoint.listen(Factory())
    except _Bound as bound:
        return bound.address
    except Exception:
        return None
    found: list[Any] = []
    d.addErrback(lambda f: found.append(f.value))
    if found and isinstance(found[0], _Bound):
        return found[0].address
    return None


def _connect(path: str, timeout: float) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(timeout)
        connection.connect(path)
    except BaseException:
        connection.close()
        raise
    return connection


class TakenOverProxyService(ProxyService):
    """
    The proxy service of a process that took over another's sockets
    (C{inherited}): the listeners that no socket was handed for (new in
    its configuration, or added by a later reload) bind their own.
    """

    bindUnhanded = True


# -- the running process's side -----------------------------------------------------


def peerCredentials(transport: Any) -> tuple[int, int, int]:
    """
    The pid, uid and gid of the process at the other end of the unix socket
    connection C{transport} (C{SO_PEERCRED}).
    """
    handle: Any = ISystemHandle(transport).getHandle()
    pid, uid, gid = struct.unpack(
        "3i", handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    )
    return pid, uid, gid


class TwistdPidfile:
    """
    The pidfile that twistd wrote for this process (its C{--pidfile}
    option), given up to the process that takes over: removed at once, and
    twistd's option emptied so that twistd does not remove, at exit, the one
    the new process has written by then. Written back if the take-over is
    abandoned.
    """

    def __init__(self, options: MutableMapping[str, Any], pid: Optional[int] = None) -> None:
        self._options = options
        self._givenPid = pid
        self._released: Optional[str] = None

    @property
    def _pid(self) -> int:
        # This process's, looked up when needed: a daemonizing twistd forks
        # after the service is built.
        return os.getpid() if self._givenPid is None else self._givenPid

    def release(self) -> None:
        """
        Remove the pidfile, if it names this process.
        """
        path = self._options.get("pidfile")
        if not path:
            return
        try:
            with open(path, encoding="ascii") as f:
                if f.read().strip() != str(self._pid):
                    return
            os.remove(path)
        except OSError:
            return
        self._released = path
        self._options["pidfile"] = ""

    def restore(self) -> None:
        """
        Write the pidfile again, if L{release} removed it.
        """
        path, self._released = self._released, None
        if path is None:
            return
        try:
            with open(path, "w", encoding="ascii") as f:
                f.write(f"{self._pid}\n")
        except OSError:
            return
        self._options["pidfile"] = path


# What a running service hands over: each listener with its key.
Listening = Callable[[], Sequence[tuple[ListenKey, ListenerService]]]


class _Handover(LineReceiver):
    """
    The old process's end of one take-over.
    """

    delimiter = b"\n"
    MAX_LENGTH = 64
    # A unix socket connection (IUNIXTransport), once connected.
    transport: Any

    def __init__(self, service: TakeoverService) -> None:
        self.service = service
        self.peer: Optional[int] = None
        self.served = False
        # The inode numbers of the listening sockets handed over.
        self.inodes: frozenset[int] = frozenset()
        # Until the new process serves (see TakeoverService.handoverTimeout).
        self.deadline: Any = None

    def cancelDeadline(self) -> None:
        """
        The handover has ended, or the new process serves: no deadline.
        """
        deadline, self.deadline = self.deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def connectionMade(self) -> None:
        self.service.handoverStarted(self)

    def refuse(self, reason: str) -> None:
        """
        Say why not, and close.
        """
        self.transport.write(json.dumps({"error": reason}).encode("utf-8") + b"\n")
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        word, _, pid = line.partition(b" ")
        if word == SERVING and self.peer is not None and not self.served:
            if pid.isdigit() and len(pid) < 12:
                self.peer = int(pid)
            if not self.service.confirms(self):
                self.transport.loseConnection()
                return
            self.served = True
            self.cancelDeadline()

            def answer(_: object) -> None:
                self.transport.write(DRAINING + b"\n")
                self.transport.loseConnection()

            self.service.handedOver(self).addBoth(answer)
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.cancelDeadline()
        self.service.handoverEnded(self)


class TakeoverService(Service):
    """
    Take-over, both ends, as a child service of the proxy's service.

    In a process started with C{--take-over} (C{received}), starting tells
    the old process that this one serves (with C{serving}, once the
    Deferred it returns has fired: the workers' parent, once its workers
    serve). Then it listens on C{path} for the
    next take-over: it hands over the sockets of the listeners that
    C{listening} returns, and when the new process serves, stops accepting
    on them and calls C{stop} (C{reactor.stop}: twistd then stops the
    service gracefully, as on SIGTERM).

    A take-over whose new process has not said C{serving} within
    C{handoverTimeout} seconds of being handed the sockets is abandoned.
    The lines logged for each attempt are rate-limited: any local process
    of the same user can connect, as often as it likes.

    @ivar path: the C{takeover-socket}.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        reactor: Any,
        listening: Listening,
        stop: Callable[[], None],
        received: Optional[Received] = None,
        pidfile: Optional[TwistdPidfile] = None,
        uid: Optional[int] = None,
        credentials: Callable[[Any], tuple[int, int, int]] = peerCredentials,
        pid: Optional[int] = None,
        serving: Optional[Callable[[], defer.Deferred[None]]] = None,
        environ: Optional[Mapping[str, str]] = None,
        extraSockets: Callable[[ListenerService], list[int]] = lambda listener: [],
        handoverTimeout: float = HANDOVER_TIMEOUT,
        locks: InstanceLocks = LOCKS,
        vouch: Callable[[int, frozenset[int]], Optional[str]] = lambda pid, inodes:
            servingRefusal(pid, inodes, os.getpid(), os.getppid(), os.geteuid()),
    ) -> None:
        self.path = path
        self.reactor = reactor
        self.listening = listening
        self.stop = stop
        self.received = received
        self.pidfile = pidfile
        self.uid = os.getuid() if uid is None else uid
        self.credentials = credentials
        self.vouch = vouch
        self._givenPid = pid
        self.serving = serving
        self.environ = os.environ if environ is None else environ
        self.extraSockets = extraSockets
        self.handoverTimeout = handoverTimeout
        self.locks = locks
        # Held while listening on path: the proof that a live process
        # listens there (see _removeStale).
        self._pathLock: Optional[InstanceLock] = None
        self._warnedNoLock = False
        self.attempts = RateLimitedLog(reactor, self.log, "take-over attempt lines")
        self.port: Any = None
        self.handover: Optional[_Handover] = None
        self.handedOverTo: Optional[int] = None

    @property
    def pid(self) -> int:
        """
        This process's id (looked up when needed: a daemonizing twistd forks
        after the service is built).
        """
        return os.getpid() if self._givenPid is None else self._givenPid

    # -- listening on the takeover socket ---------------------------------------

    def listen(self, again: bool = False) -> None:
        """
        Listen on L{path}, owner only, removing a stale socket file first.

        @param again: after a take-over attempt (its line is rate-limited).
        @raise ListenError: it cannot.
        """
        if self.port is not None:
            return
        try:
            try:
                self._removeStale()
                self.port = self.reactor.listenUNIX(self.path, Factory.forProtocol(
                    lambda: _Handover(self)), mode=0o600)
            except BaseException:
                self._releasePathLock()
                raise
        except (OSError, ListenError, CannotListenError) as e:
            if isinstance(e, CannotListenError) and isinstance(e.socketError, OSError):
                e = e.socketError
            detail = getattr(e, "strerror", None) or str(e)
            raise ListenError(f"{detail}: cannot listen on takeover-socket {self.path}") from None
        if again:
            self.attempts.emit(LogLevel.info, "take-over: listening on {path}", path=self.path)
        else:
            self.log.info("take-over: listening on {path}", path=self.path)

    def _removeStale(self) -> None:
        """
        Take the lock of L{path} (an abstract socket named after it, held
        while listening there), then remove a socket file left there: no
        live process of ours holds the lock, so none listens on it. Without
        locks (not Linux), a file that refuses a connection is stale; but
        connecting to a live process starts a take-over there.

        @raise ListenError: another process listens on it, or the file is
            not a socket.
        """
        try:
            self._pathLock = instancelock.acquire(
                instancelock.pathLockName("takeover", self.path))
        except LockHeld:
            raise ListenError("another process listens on it") from None
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ListenError(f"{self.path} exists and is not a socket")
        if self._pathLock is not None:
            os.remove(self.path)
            return
        if not self._warnedNoLock:
            self._warnedNoLock = True
            self.log.warn("take-over: no lock on {path} (abstract unix sockets are Linux's): "
                          "probing it by connecting", path=self.path)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(self.path)
        except ConnectionRefusedError:
            # Left behind by a process that is gone.
            os.remove(self.path)
            return
        except OSError:
            return
        finally:
            probe.close()
        raise ListenError("another process listens on it")

    def _releasePathLock(self) -> None:
        lock, self._pathLock = self._pathLock, None
        if lock is not None:
            lock.release()

    def _stopListening(self) -> defer.Deferred[Any]:
        self._releasePathLock()
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.received is None:
            # Before twistd drops privileges, and with the proxies' bind
            # errors: one line and exit status 1.
            self.listen()

    def startService(self) -> None:
        super().startService()
        if self.received is not None and self.serving is not None:
            # Once its workers serve.
            self.serving().addCallback(lambda _: self._served())
        else:
            self._served()

    def _served(self) -> None:
        if not self.running:
            return
        received, self.received = self.received, None
        if received is None:
            self.listen()
            self._ready()
            return
        # Now, while the old process's workers still accept from them.
        received.closeUnused()

        def answered(drains: bool) -> None:
            if drains:
                self.log.info("take-over: serving; pid {pid} stops accepting and drains its "
                              "sessions", pid=received.pid)
            else:
                self.log.warn("take-over: serving; pid {pid} did not confirm that it drains: "
                              "it may still be accepting too", pid=received.pid)
            if not self.running:
                return
            try:
                self.listen()
            except ListenError as e:
                self.log.error("take-over: {error}: no later take-over is possible",
                               error=str(e))
            self._ready()

        received.serving(self.reactor).addCallback(answered).addErrback(
            lambda f: self.log.failure("take-over: serving", f))

    def _ready(self) -> None:
        # Under systemd (Type=notify, NotifyAccess=all): this process is the
        # service's main process now, and ready.
        notifySystemd(f"MAINPID={self.pid}\nREADY=1", self.environ)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        if self.received is not None:
            self.received.abandon()
            self.received = None
        self.attempts.stop()
        return self._stopListening()

    # -- handing over -------------------------------------------------------------

    def handoverStarted(self, handover: _Handover) -> None:
        """
        A process connected to take over: hand it the sockets, unless
        another take-over runs, it has finished already, or the peer is
        another user's.
        """
        try:
            pid, uid, _ = self.credentials(handover.transport)
        except (OSError, TypeError) as e:
            self.attempts.emit(LogLevel.error, "take-over: cannot tell who connected: {error}",
                               error=e)
            handover.refuse("cannot tell who you are")
            return
        if uid not in (self.uid, 0):
            self.attempts.emit(LogLevel.error, "take-over: refused pid {pid}: uid {uid} is not "
                               "this process's ({own})", pid=pid, uid=uid, own=self.uid)
            handover.refuse(f"uid {uid} may not take over a process of uid {self.uid}")
            return
        if self.handover is not None:
            handover.refuse(f"a take-over by pid {self.handover.peer} is running already (it "
                            f"has {self.handoverTimeout:g}s to serve)")
            return
        if self.handedOverTo is not None or not self.running:
            handover.refuse("this process is stopping")
            return
        handed: list[Handed] = []
        descriptors: list[int] = []
        for key, listener in self.listening():
            port = listener.port
            if port is None:
                continue
            try:
                family = familyOf(port.getHost())
                fd = port.fileno()  # type: ignore[attr-defined]
            except (ValueError, AttributeError):
                self.attempts.emit(LogLevel.warn, "take-over: {listen} cannot be handed over "
                                   "(not a TCP or unix socket): the new process binds it",
                                   listen=listener.description)
                continue
            handed.append((key, family, 0))
            descriptors.append(fd)
            for part, extra in enumerate(self.extraSockets(listener), 1):
                handed.append((key, family, part))
                descriptors.append(extra)
        # The instance locks go with the sockets: the new process holds
        # them before this one stops, so no third one binds meanwhile.
        locks = [lock for lock in self.locks.held() if lock.fileno >= 0]
        handover.inodes = frozenset(_inodes(descriptors))
        descriptors.extend(lock.fileno for lock in locks)
        self.handover = handover
        handover.peer = pid
        handover.deadline = self.reactor.callLater(self.handoverTimeout, self._timedOut,
                                                   handover)
        line = describe(self.pid, handed, [lock.name for lock in locks])
        self.attempts.emit(LogLevel.info, "take-over: pid {pid} is taking over: handing over "
                           "{count} listening socket(s)", pid=pid, count=len(handed))

        def send(_: object) -> None:
            # The pidfile is gone before the new process has the sockets:
            # twistd there checks it next.
            if self.pidfile is not None:
                self.pidfile.release()
            for fd in descriptors:
                handover.transport.sendFileDescriptor(fd)
            handover.transport.write(line)

        # The take-over socket stays open (an attempt costs no line of
        # Twisted's "starting on", "Closed"): another connection meanwhile
        # is refused at once, saying why. The file goes, with the path's
        # lock, once the new process serves: before it listens there.
        send(None)

    def confirms(self, handover: _Handover) -> bool:
        """
        Whether to believe the process that says it serves: any process of
        this user can connect and say C{serving}, and this process would
        then stop serving. See L{servingRefusal}.
        """
        if not handover.inodes:
            return True
        refusal = self.vouch(handover.peer or 0, handover.inodes)
        if refusal is not None:
            self.attempts.emit(LogLevel.error, "take-over: pid {pid} says it serves, but "
                               "{refusal}: refused; still serving", pid=handover.peer,
                               refusal=refusal)
            return False
        return True

    def _timedOut(self, handover: _Handover) -> None:
        handover.deadline = None
        if self.handover is not handover or handover.served:
            return
        self.attempts.emit(LogLevel.warn, "take-over: pid {pid} did not serve within "
                           "{timeout:g}s: abandoning the take-over", pid=handover.peer,
                           timeout=self.handoverTimeout)
        # handoverEnded follows, as the connection closes.
        handover.transport.abortConnection()

    def handedOver(self, handover: _Handover) -> defer.Deferred[Any]:
        """
        The new process serves: stop accepting at once (the stop as on
        SIGTERM follows when the connection has closed, its last words
        sent).

        @return: a Deferred that fires once the take-over socket is closed
            (the file and its lock gone): the new process may listen there.
        """
        self.handedOverTo = handover.peer
        self.log.info("take-over: pid {pid} serves: stopped accepting; draining as on "
                      "SIGTERM", pid=handover.peer)
        listeners = [listener for _, listener in self.listening()]
        restoring = [_keepName(listener) for listener in listeners]
        for listener in listeners:
            if listener.port is not None:
                _letGo(listener.port)
        unbinding = [listener.unbind() for listener in listeners]

        def restore(_: object) -> None:
            for names in restoring:
                names()

        defer.gatherResults(unbinding, consumeErrors=True).addBoth(restore)
        return self._stopListening().addErrback(
            lambda f: self.log.failure("take-over: closing {path}", f, path=self.path))

    def handoverEnded(self, handover: _Handover) -> None:
        """
        The connection of a take-over closed: if the new process did not
        serve, go on serving, and listen for the next attempt.
        """
        if self.handover is not handover:
            return
        self.handover = None
        if handover.served:
            self.stop()
            return
        self.attempts.emit(LogLevel.warn, "take-over by pid {pid} abandoned before it served: "
                           "still serving here", pid=handover.peer)
        if self.pidfile is not None:
            self.pidfile.restore()
        if not self.running or self.port is not None:
            return
        try:
            self.listen(again=True)
        except ListenError as e:
            self.log.error("take-over: {error}", error=str(e))


def _inodes(descriptors: Iterable[int]) -> Iterator[int]:
    for fd in descriptors:
        try:
            yield os.fstat(fd).st_ino
        except OSError:
            continue


def processHolds(pid: int, inodes: frozenset[int], proc: str = procfs.PROC) -> Optional[bool]:
    """
    Whether the process C{pid} has a descriptor of one of the sockets
    whose inode numbers are C{inodes} (read from C{/proc/PID/fd}).

    @return: L{None} when that cannot be told (not Linux, or another
        user's process); false for a process that does not run.
    """
    held = procfs.socketInodes(pid, proc)
    if held is not None:
        return not held.isdisjoint(inodes)
    if procfs.available(proc) and not os.path.isdir(os.path.join(proc, str(pid))):
        return False
    return None


def servingRefusal(pid: int, inodes: frozenset[int], own: int, parent: int, uid: int,
                   proc: str = procfs.PROC) -> Optional[str]:
    """
    Why not to believe the process C{pid} that says it serves after being
    handed the listening sockets whose inode numbers are C{inodes}; L{None}
    to believe it.

    It must be a process other than this one (C{own}), its parent (e.g.
    systemd, which holds socket-activated sockets), init and this process's
    children (its workers, which hold the sockets too), and it must hold one
    of the sockets (C{/proc/PID/fd}). Where its descriptors cannot be read,
    it must run as this process's user (C{uid}): a new process started as
    root that has switched to this user is not readable by it. Without
    C{/proc} (not Linux) nothing can be told: believed.
    """
    if not procfs.available(proc):
        return None
    if pid <= 1 or pid in (own, parent):
        return "that names init, this process or its parent"
    status = procfs.processStatus(pid, proc)
    if status is None:
        return "no such process runs"
    ppid, owner = status
    if ppid == own:
        return "that names one of this process's own workers"
    holds = processHolds(pid, inodes, proc)
    if holds:
        return None
    if holds is False:
        return "it holds none of the sockets handed over"
    if owner == uid:
        return None
    return f"it runs as uid {owner} and its descriptors cannot be read"


def notifySystemd(state: str, environ: Mapping[str, str]) -> bool:
    """
    Send C{state} to the service manager (C{sd_notify}), when C{environ}
    has a C{NOTIFY_SOCKET}.

    @return: whether it was sent.
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address.startswith("@"):
        # An abstract socket.
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.connect(address)
            notify.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True


def _letGo(port: Any) -> None:
    """
    Stop accepting on C{port} and drop this process's reference to its
    socket, leaving the socket listening in the process that took it over.

    Closing the port would not do: a Twisted port that bound its socket
    itself calls C{shutdown()} on it before closing, and C{shutdown()} acts
    on the socket, not on this process's descriptor: the socket would stop
    listening in the new process too. So the port stops reading (its
    descriptor leaves the reactor's epoll set while it still names the
    socket), and an unconnected socket is put under its descriptor number
    (C{dup2}): the port later shuts down and closes that one.
    """
    try:
        family = familyOf(port.getHost())
        fd = port.fileno()
        port.stopReading()
    except (ValueError, AttributeError):
        return
    spare = socket.socket(family, socket.SOCK_STREAM)
    try:
        os.dup2(spare.fileno(), fd)
    finally:
        spare.close()


def _keepName(listener: ListenerService) -> Callable[[], None]:
    """
    For a unix socket listener, which Twisted's port unlinks when it stops
    listening although the socket lives on in the new process: hard-link
    the file now; the returned callable, once the port has stopped, puts the
    link back under the socket's name. (Between the two, for the time of a
    reactor turn, the name is missing: connects to it fail.)
    """
    port = listener.port
    address = port.getHost() if port is not None else None
    if not isinstance(address, UNIXAddress) or not address.name:
        return _nothing
    name = os.fsdecode(address.name)
    if name.startswith("\0"):
        return _nothing
    spare = f"{name}.takeover-{os.getpid()}"
    try:
        os.link(name, spare)
    except OSError:
        return _nothing

    def restore() -> None:
        try:
            os.rename(spare, name)
        except OSError as e:
            if e.errno != errno.ENOENT:
                try:
                    os.remove(spare)
                except OSError:
                    pass

    return restore


def _nothing() -> None:
    return None


__all__ = [
    "PROTOCOL", "Received", "TakenOverProxyService", "TakeoverError", "TakeoverService", "TwistdPidfile", "describe",
    "notifySystemd", "parseDescription", "peerCredentials", "processHolds", "receive",
    "servingRefusal",
]
