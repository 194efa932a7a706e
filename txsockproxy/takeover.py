"""
Upgrading without refusing a connection: a running proxy hands its listening
sockets to a new process (a new version, a new Python), which serves them
while the old one drains its sessions as on SIGTERM.

The running process listens on the unix socket of the C{takeover-socket}
key (mode 0600; a peer whose uid is neither this process's nor root's is
refused, checked with C{SO_PEERCRED}). A process started with
C{--take-over} connects to it, before it binds anything, and the exchange
is line-based::

    old -> new   one JSON line: {"protocol": "txsockproxy-takeover/1",
                 "pid": OLD_PID, "listeners": [{"key": [IS_STATUS, LISTEN, N],
                 "family": AF}, ...]}, the listening sockets' descriptors
                 riding on its first bytes (SCM_RIGHTS), one per listener,
                 in order; or {"error": "..."}, and the connection closes
    new -> old   "serving PID\\n", once the new process serves (its listeners
                 adopted the sockets its configuration still has, bound its
                 new ones, and started)
    old -> new   "draining\\n"; the old process stops accepting (lets its
                 copies go without shutting the sockets down: they stay
                 open, and listening, in the new process, so no connection
                 is refused) and stops as on SIGTERM: sessions in flight get
                 shutdown-timeout seconds.

The new side runs before the reactor does (at start-up, in blocking calls
bounded by a timeout: L{receive}); the old side is a Twisted protocol
(L{TakeoverService}), which sends the descriptors with the public
C{IUNIXTransport.sendFileDescriptor}. A take-over that ends before
"serving" (the new process failed) leaves the old one serving, listening
again for the next attempt.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import ISystemHandle
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from txsockproxy.adopting import InheritedSocket, familyOf
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


def describe(pid: int, listeners: Sequence[Handed]) -> bytes:
    """
    The line the old process sends with its sockets: its pid, and the key,
    address family and part of each listening socket, in the order of the
    descriptors.
    """
    document = {
        "protocol": PROTOCOL,
        "pid": pid,
        "listeners": [{"key": list(key), "family": family, "part": part}
                      for key, family, part in listeners],
    }
    return json.dumps(document, separators=(",", ":")).encode("utf-8") + b"\n"


def parseDescription(line: bytes) -> tuple[int, list[Handed]]:
    """
    The pid and listeners that L{describe} made C{line} of.

    @raise TakeoverError: the old process refused (its reason), or the line
        is not a description this version reads.
    """
    try:
        document = json.loads(line.decode("utf-8"))
    except ValueError:
        raise TakeoverError("the running process sent something else than a "
                            "description of its sockets") from None
    if not isinstance(document, dict):
        raise TakeoverError("the running process sent something else than a "
                            "description of its sockets")
    if "error" in document:
        raise TakeoverError(f"the running process refused: {document['error']}")
    if document.get("protocol") != PROTOCOL:
        raise TakeoverError(f"the running process speaks {document.get('protocol')!r}, "
                            f"not {PROTOCOL!r}")
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
    except (KeyError, TypeError, ValueError):
        raise TakeoverError("the running process sent a description this version "
                            "cannot read") from None
    return pid, listeners


# -- the new process's side -----------------------------------------------------


class Received:
    """
    What a new process received from the one it takes over, until it
    serves.

    @ivar pid: the old process's.
    @ivar sockets: the listening sockets, by listener key.
    @ivar extra: the other SO_REUSEPORT sockets of a listener whose old
        workers had one each, by listener key.
    """

    def __init__(self, connection: socket.socket, pid: int,
                 sockets: dict[ListenKey, InheritedSocket],
                 extra: Optional[dict[ListenKey, list[InheritedSocket]]] = None) -> None:
        self._connection: Optional[socket.socket] = connection
        self.pid = pid
        self.sockets = sockets
        self.extra = extra or {}

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
        return closed

    def serving(self, timeout: float = TIMEOUT) -> bool:
        """
        Tell the old process that this one serves, and wait (at most
        C{timeout} seconds) for it to answer that it drains.

        @return: whether it answered so.
        """
        connection, self._connection = self._connection, None
        if connection is None:
            return False
        try:
            connection.settimeout(timeout)
            # Its pid now: a daemonizing twistd has forked since it
            # connected.
            connection.sendall(SERVING + f" {os.getpid()}\n".encode("ascii"))
            answer = b""
            deadline = time.monotonic() + timeout
            while b"\n" not in answer and len(answer) < 64:
                connection.settimeout(max(deadline - time.monotonic(), 0.001))
                data = connection.recv(64)
                if not data:
                    break
                answer += data
            return answer.split(b"\n", 1)[0] == DRAINING
        except OSError:
            return False
        finally:
            connection.close()

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


def receive(
    path: str,
    timeout: float = TIMEOUT,
    connect: Callable[[str, float], socket.socket] = lambda path, timeout: _connect(path,
                                                                                     timeout),
) -> Optional[Received]:
    """
    Connect to the process that listens on C{path} and receive its
    listening sockets, within C{timeout} seconds.

    @return: what was received; or L{None} when no process listens there
        (no such file, or a stale one: refused), so that nothing is taken
        over.
    @raise TakeoverError: the process refused, did not answer in time, or
        sent what this version cannot read. Nothing it sent is kept open.
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
        pid, listeners = parseDescription(data.split(b"\n", 1)[0])
        if len(fds) != len(listeners):
            raise TakeoverError(f"the process on {path} described {len(listeners)} "
                                f"socket(s) but passed {len(fds)}")
    except (TakeoverError, OSError) as e:
        for fd in fds:
            os.close(fd)
        connection.close()
        if isinstance(e, OSError):
            raise TakeoverError(f"receiving from {path}: {e.strerror or e}") from None
        raise
    sockets: dict[ListenKey, InheritedSocket] = {}
    extra: dict[ListenKey, list[InheritedSocket]] = {}
    for (key, family, part), fd in zip(listeners, fds, strict=True):
        if part == 0 and key not in sockets:
            sockets[key] = InheritedSocket(fd, family)
        else:
            extra.setdefault(key, []).append(InheritedSocket(fd, family))
    return Received(connection, pid, sockets, extra)


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
            if pid.isdigit():
                self.peer = int(pid)
            self.served = True
            self.cancelDeadline()
            self.transport.write(DRAINING + b"\n")
            self.transport.loseConnection()
            self.service.handedOver(self)
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
    ) -> None:
        self.path = path
        self.reactor = reactor
        self.listening = listening
        self.stop = stop
        self.received = received
        self.pidfile = pidfile
        self.uid = os.getuid() if uid is None else uid
        self.credentials = credentials
        self._givenPid = pid
        self.serving = serving
        self.environ = os.environ if environ is None else environ
        self.extraSockets = extraSockets
        self.handoverTimeout = handoverTimeout
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
            self._removeStale()
            self.port = self.reactor.listenUNIX(self.path, Factory.forProtocol(
                lambda: _Handover(self)), mode=0o600)
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
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ListenError(f"{self.path} exists and is not a socket")
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

    def _stopListening(self) -> defer.Deferred[Any]:
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
        if received is not None:
            # Now, while the old process's workers still accept from them.
            received.closeUnused()
            if received.serving():
                self.log.info("take-over: serving; pid {pid} stops accepting and drains its "
                              "sessions", pid=received.pid)
            else:
                self.log.warn("take-over: serving; pid {pid} did not confirm that it drains: "
                              "it may still be accepting too", pid=received.pid)
            try:
                self.listen()
            except ListenError as e:
                self.log.error("take-over: {error}: no later take-over is possible",
                               error=str(e))
        else:
            self.listen()
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
        if self.handover is not None or self.handedOverTo is not None or not self.running:
            handover.refuse("a take-over is running already, or this process is stopping")
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
        self.handover = handover
        handover.peer = pid
        handover.deadline = self.reactor.callLater(self.handoverTimeout, self._timedOut,
                                                   handover)
        line = describe(self.pid, handed)
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

        # No one else connects meanwhile; the file is gone before the new
        # process listens on it.
        self._stopListening().addCallback(send).addErrback(
            lambda f: self.log.failure("take-over: handing over", f))

    def _timedOut(self, handover: _Handover) -> None:
        handover.deadline = None
        if self.handover is not handover or handover.served:
            return
        self.attempts.emit(LogLevel.warn, "take-over: pid {pid} did not serve within "
                           "{timeout:g}s: abandoning the take-over", pid=handover.peer,
                           timeout=self.handoverTimeout)
        # handoverEnded follows, as the connection closes.
        handover.transport.abortConnection()

    def handedOver(self, handover: _Handover) -> None:
        """
        The new process serves: stop accepting at once (the stop as on
        SIGTERM follows when the connection has closed, its last words
        sent).
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
        if self.running:
            try:
                self.listen(again=True)
            except ListenError as e:
                self.log.error("take-over: {error}", error=str(e))


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
    "notifySystemd", "parseDescription", "peerCredentials", "receive",
]
