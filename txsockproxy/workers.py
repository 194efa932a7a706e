"""
The parent process of a proxy run with C{workers = N} (N > 1): it binds
every listen endpoint (in C{privilegedStartService}, so before C{twistd -u}
drops privileges), starts N worker processes (L{txsockproxy.worker}) with
C{reactor.spawnProcess}, hands each the listening sockets over its control
connection (AMP over a unix socket pair; the sockets as descriptors) and the
configuration it last loaded successfully (a worker never reads the file: one
restarted while the file is being edited runs what the others run), and
never accepts a connection itself: for a TCP listener, each worker gets a
socket of its own bound with SO_REUSEPORT and the kernel spreads new
connections among them; other listeners (unix sockets, systemd's) are one
socket that every worker adopts.

It restarts a worker that dies (at once; after a back-off when it dies again
soon: L{Backoff}), logging the death once with its exit status; during a
back-off it pauses the dead worker's own SO_REUSEPORT socket of each TCP
listener (L{txsockproxy.listenpause}), so that the kernel gives new
connections to the other workers instead of queueing them where nobody
accepts (unless no other worker serves and answers: the last sockets go on
listening, so that new connections queue instead of being refused); hands SIGHUP (reload) and SIGTERM (graceful
stop) on to every worker; serves the instance's status site, asking the
workers for snapshots (L{txsockproxy.instancestatus}).

Every command to a worker has a deadline (L{CALL_DEADLINE}): a worker that
does not answer in time (stopped with SIGSTOP, wedged) is "not answering"
until it answers again; meanwhile it is sent nothing more, its own
SO_REUSEPORT sockets are paused as during a back-off, the status site shows
it so, and admin actions and reloads answer for the other workers. When it
answers again it is given what it missed (listeners, the configuration,
admin actions). So that a worker nobody asks anything is found out too, the
parent sends every worker serving and answering a L{Ping} every
L{HEARTBEAT} seconds, with a deadline of L{HEARTBEAT_DEADLINE}.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.error import (
    ConnectionClosed,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.protocols import amp
from twisted.python.failure import Failure

from txsockproxy.adopting import AdoptingReactor, InheritedSocket, familyOf
from txsockproxy.config import Config
from txsockproxy.listenpause import pauseListening, resumeListening
from txsockproxy.loading import loadConfig
from txsockproxy.reuseport import InheritedReusePortReactor, ReusePortReactor
from txsockproxy.service import (
    ListenError,
    ListenerService,
    ListenKey,
    StartupError,
    ThreadRunner,
    listenKeys,
    reactorThreadRunner,
    reloadRefused,
    systemBacklog,
    withBacklog,
)
from txsockproxy.socketactivation import serverEndpoint
from txsockproxy.workerprotocol import (
    Admin,
    Configure,
    HandListener,
    Ping,
    QuietAMP,
    Reload,
    Serve,
    Snapshot,
    Stop,
    encodeKey,
    packConfig,
    unpackSnapshot,
)

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# A worker that ran this long before dying is restarted at once.
STABLE = 60.0
# How long the parent waits for a worker's answer to a command; a worker
# starting (Python starting, imports) has longer for the commands that start
# it. A stopping worker has shutdown-timeout plus STOP_GRACE.
CALL_DEADLINE = 10.0
START_DEADLINE = 30.0
# Every HEARTBEAT seconds the parent pings each worker serving and answering
# (one ping at a time); one that lets HEARTBEAT_DEADLINE pass is not
# answering: a stopped worker is found out within their sum, 7 s. Shorter
# than CALL_DEADLINE: a ping waits for nothing, and until it is found out a
# stopped worker's socket takes its share of new connections.
HEARTBEAT = 2.0
HEARTBEAT_DEADLINE = 5.0
# Beyond shutdown-timeout, how long the parent waits for a stopping worker
# before killing it.
STOP_GRACE = 5.0
SHARED = "shared"
REUSEPORT = "reuseport"
# Chooses how workers share a TCP listener (see WorkersService.sockets).
SOCKETS_VARIABLE = "TXSOCKPROXY_WORKER_SOCKETS"


def workerCount(setting: int | str, cpus: Optional[Callable[[], int]] = None) -> int:
    """
    How many workers C{setting} (the C{workers} key) asks for: a count as
    it is; C{"auto"}, the CPUs this process may run on (its affinity mask,
    where the system has one, else the CPU count).
    """
    if isinstance(setting, int):
        return setting
    if cpus is None:
        cpus = _allowedCPUs
    return max(1, cpus())


def _allowedCPUs() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return len(affinity(0))
    return os.cpu_count() or 1


class Backoff:
    """
    Delays before restarting a worker that died: none the first time, then
    C{first} seconds, doubling at each death up to C{maximum}; none again
    after a worker ran C{stable} seconds.
    """

    def __init__(self, first: float = FIRST_BACKOFF, maximum: float = MAX_BACKOFF,
                 stable: float = STABLE) -> None:
        self.first = first
        self.maximum = maximum
        self.stable = stable
        self._next = 0.0

    def delay(self, ranFor: float) -> float:
        """
        The delay before restarting a worker that died after running
        C{ranFor} seconds.
        """
        if ranFor >= self.stable:
            self._next = 0.0
        delay = self._next
        self._next = min(self._next * 2, self.maximum) if delay else self.first
        return delay


def exitDescription(reason: Failure) -> str:
    """
    How a process ended, in words: C{exited with status 1}, C{killed by
    signal 9 (SIGKILL)}.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                name = signal.Signals(value.signal).name
            except ValueError:
                name = "?"
            return f"killed by signal {value.signal} ({name})"
        return f"exited with status {value.exitCode}"
    return str(value)


class NotAnswering(Exception):
    """
    A worker did not answer a command within its deadline, or has not
    answered since one it missed (it is then sent nothing more).
    """


class _NoConnections(Factory):
    """
    The factory the parent's listeners are bound with: they never accept
    (the workers do), and would close a connection they did.
    """

    def buildProtocol(self, addr: Any) -> None:
        return None


class _One(Factory):
    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Any:
        return self._protocol


@dataclass
class WorkerSnapshot:
    """
    What a worker answered when asked for its status, or why not.

    @ivar snapshot: its snapshot (see L{txsockproxy.worker.Worker.snapshot}),
        or L{None} when it did not answer.
    """

    index: int
    pid: Optional[int]
    state: str
    restarts: int
    snapshot: Optional[dict[str, Any]]
    problem: str = ""


class WorkerProcess(ProcessProtocol):
    """
    One worker slot: its process now (restarted when it dies), its control
    connection, its output logged with its number.

    @ivar state: C{starting}, C{serving}, C{restarting} (dead, to be
        restarted), C{stopping}, C{stopped}.
    @ivar configured: the configuration last handed to the process running
        now, or L{None}.
    @ivar handed: the keys of the listeners handed to it.
    @ivar answering: L{False} from a command's deadline passing unanswered
        until the worker answers again.
    @ivar missed: whether it missed a reload or an admin action while not
        answering (it is given them when it answers again).
    @ivar pending: how many commands sent to it are not answered yet.
    """

    log = Logger()

    def __init__(self, parent: WorkersService, index: int) -> None:
        self.parent = parent
        self.index = index
        self.pid: Optional[int] = None
        self.state = "starting"
        self.restarts = 0
        self.control: Optional[amp.AMP] = None
        self.startedAt = 0.0
        self.configured: Optional[Config] = None
        self.handed: set[ListenKey] = set()
        self.answering = True
        self.missed = False
        self.pending = 0
        self._pinging = False
        self._buffers: dict[int, bytes] = {}
        self._ended: list[defer.Deferred[None]] = []
        self.processTransport: Any = None

    # -- the process ----------------------------------------------------------

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._buffers.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        if len(rest) > 65536:
            lines.append(rest)
            rest = b""
        self._buffers[childFD] = rest
        for line in lines:
            self._logLine(line.decode("utf-8", "replace"), childFD)

    def _logLine(self, line: str, childFD: int) -> None:
        level, tab, text = line.partition("\t")
        logLevel = LogLevel.levelWithName(level) if tab and level in _LEVEL_NAMES else None
        if logLevel is None:
            logLevel, text = (LogLevel.warn if childFD == 2 else LogLevel.info), line
        self.log.emit(logLevel, "worker {index}: {line}", index=self.index, line=text)

    def processEnded(self, reason: Failure) -> None:
        for childFD, rest in self._buffers.items():
            if rest:
                self._logLine(rest.decode("utf-8", "replace"), childFD)
        self._buffers = {}
        if self.control is not None and self.control.transport is not None:
            self.control.transport.loseConnection()
        self.control = None
        self.configured = None
        self.handed = set()
        self.answering = True
        self.missed = False
        self.pending = 0
        self._pinging = False
        pid, self.pid = self.pid, None
        self.processTransport = None
        ended, self._ended = self._ended, []
        self.parent.workerEnded(self, pid, reason)
        for d in ended:
            d.callback(None)

    def whenEnded(self) -> defer.Deferred[None]:
        """
        A Deferred that fires when the process running now has ended (at
        once when none runs).
        """
        if self.processTransport is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._ended.append(d)
        return d

    def signal(self, name: str) -> None:
        """
        Send signal C{name} (C{"TERM"}, C{"KILL"}) to the process, if one runs.
        """
        if self.processTransport is not None:
            try:
                self.processTransport.signalProcess(name)
            except (ProcessExitedAlready, OSError):
                pass

    def call(self, command: type[amp.Command], deadline: Optional[float] = CALL_DEADLINE,
             **arguments: Any) -> defer.Deferred[Any]:
        """
        Send C{command} to the worker, unless it is not answering.

        @param deadline: seconds to wait for the answer (L{None}: no limit);
            past it the worker is not answering (logged once) until it
            answers something.
        @return: its answer, or a failure (not connected, connection lost,
            the worker's error, L{NotAnswering}). Cancelling it drops the
            answer; the deadline still holds for the worker.
        """
        if self.control is None:
            return defer.fail(ConnectionError(f"worker {self.index} is not connected"))
        if not self.answering:
            return defer.fail(NotAnswering("not answering"))
        sent = self.control.callRemote(command, **arguments)
        self.pending += 1

        def done(outcome: Any) -> Any:
            self.pending -= 1
            return outcome

        sent.addBoth(done)
        if deadline is None:
            return sent
        # The answer arrives here or nowhere: AMP keeps the call until the
        # worker answers or its connection is lost, and nothing more is sent
        # to a worker not answering, so the calls kept stay few.
        result: defer.Deferred[Any] = defer.Deferred()
        expiry = self.parent.reactor.callLater(deadline, self._expired, command.__name__,
                                               deadline, result)

        def answered(outcome: Any) -> None:
            if expiry.active():
                expiry.cancel()
            lost = isinstance(outcome, Failure) and outcome.check(ConnectionClosed)
            if not lost:
                self._answered()
            if result.called:
                return
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

        sent.addBoth(answered)
        return result

    def ping(self) -> None:
        """
        Send the worker a L{Ping} (with L{HEARTBEAT_DEADLINE}) unless the
        last one is not answered yet, or it is not answering: a late answer
        is what brings it back.
        """
        if self._pinging or not self.answering or self.control is None:
            return
        self._pinging = True

        def done(_: object) -> None:
            self._pinging = False

        self.call(Ping, HEARTBEAT_DEADLINE).addBoth(done)

    def _expired(self, command: str, deadline: float, result: defer.Deferred[Any]) -> None:
        if not result.called:
            result.errback(NotAnswering(f"no answer to {command} within {deadline:g}s"))
        if self.answering and self.control is not None:
            self.answering = False
            paused = self.parent.workerNotAnswering(self)
            self.log.warn("worker {index} (pid {pid}) is not answering (no answer to {command} "
                          "within {deadline:g}s): left out until it answers{paused}",
                          index=self.index, pid=self.pid, command=command, deadline=deadline,
                          paused=paused)

    def _answered(self) -> None:
        # Only once every command sent before the deadline has been answered
        # (applied, in order: AMP runs them in the order sent): what it is
        # given then comes after them all, never undone by a stale one.
        if self.answering or self.control is None or self.pending:
            return
        self.answering = True
        self.log.info("worker {index} (pid {pid}) answers again (every late command applied)",
                      index=self.index, pid=self.pid)
        self.parent.workerAnswers(self)


def _handed(answer: object, worker: WorkerProcess, key: ListenKey) -> None:
    worker.handed.add(key)


def _all(calls: list[defer.Deferred[Any]]) -> defer.Deferred[list[Any]]:
    """
    The answers of C{calls}, or the first failure among them.
    """
    return defer.gatherResults(calls, consumeErrors=True).addErrback(
        lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)


_LEVEL_NAMES = frozenset({"debug", "info", "warn", "error", "critical"})


class WorkersService(MultiService):
    """
    The parent of N workers (see the module's docstring): its children are
    the listeners it binds (the proxies', never accepting, and the status
    site's, which it serves).

    @ivar workers: the worker slots, by number.
    @ivar count: how many.
    """

    log = Logger()
    onStartupError: Optional[Callable[[StartupError], None]] = None

    def __init__(
        self,
        config: Config,
        reactor: Any,
        configPath: str,
        count: int,
        loader: Callable[[str], Config] = loadConfig,
        debug: Optional[int] = None,
        runInThread: Optional[ThreadRunner] = None,
        spawn: Optional[Callable[..., Any]] = None,
        socketpair: Callable[[], tuple[socket.socket, socket.socket]] = (
            lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)),
        executable: str = sys.executable,
        snapshotTimeout: float = 2.0,
        reactorName: Optional[str] = None,
        sockets: str = "reuseport",
        inherited: Optional[Mapping[ListenKey, InheritedSocket]] = None,
        inheritedExtra: Optional[Mapping[ListenKey, list[InheritedSocket]]] = None,
    ) -> None:
        super().__init__()
        # The listening sockets of a process this one took over (see
        # txsockproxy.takeover), by listener key: adopted instead of bound;
        # and its other SO_REUSEPORT sockets of each.
        self.inherited = inherited or {}
        self.inheritedExtra = inheritedExtra or {}
        self._servingWaiters: list[defer.Deferred[None]] = []
        self.config = config
        self.reactor = reactor
        self.configPath = configPath
        self.count = count
        self.loader = loader
        self.debug = debug
        self.runInThread = runInThread or reactorThreadRunner(reactor)
        self._spawn = spawn
        self._socketpair = socketpair
        self.executable = executable
        self.snapshotTimeout = snapshotTimeout
        # twistd --reactor's choice, which the workers make too.
        self.reactorName = reactorName
        # "reuseport": TCP listeners get one SO_REUSEPORT socket per worker,
        # so that the kernel spreads connections evenly (a burst of them on
        # one shared socket goes mostly to the worker woken first);
        # "shared": every worker adopts the one socket of a listener. Other
        # listeners (unix, systemd) are always shared.
        self.sockets = sockets
        self._binders: dict[int, Any] = {}
        self.handleSignals = False
        self.reactorChoice = ""
        self.startedAt = reactor.seconds()
        self.workers = [WorkerProcess(self, i) for i in range(count)]
        self._backoffs = [Backoff() for _ in range(count)]
        self._restarts: dict[int, Any] = {}
        # The workers waiting out a back-off, by number.
        self._backingOff: set[int] = set()
        # The sockets paused of each worker waiting to restart or not
        # answering, by number: (listener, descriptor, address).
        self._paused: dict[int, list[tuple[ListenerService, int, Any]]] = {}
        self.heartbeat = task.LoopingCall(self._beat)
        self.heartbeat.clock = reactor
        self._listeners: dict[ListenKey, ListenerService] = {}
        self._status: list[ListenerService] = []
        self._statusKeys: list[ListenKey] = []
        self._bound = False
        self._stopping = False
        self._reloading: Optional[defer.Deferred[bool]] = None
        self._reloadAgain = False
        self._previousHUP: Any = None
        self._listeners = self._proxyListeners(config, {})
        self._statusSite: Any = None
        # The admin state of every backend acted on, by (proxy, backend
        # label), "enable" included: a worker restarted, or catching up, gets
        # them again (its backends start "up"; it may have applied a stale
        # action late).
        self._adminStates: dict[tuple[str, str], str] = {}

    # -- listeners --------------------------------------------------------------

    def _proxyListeners(
        self, config: Config, running: dict[ListenKey, ListenerService]
    ) -> dict[ListenKey, ListenerService]:
        listeners: dict[ListenKey, ListenerService] = {}
        for key in listenKeys(config):
            isStatus, desc, _ = key
            if isStatus:
                continue
            listener = running.get(key)
            if listener is None:
                reactor = self._listenReactor(key)
                binder: Any = None
                if self.sockets == REUSEPORT and reactor is self.reactor:
                    binder = reactor = ReusePortReactor(self.reactor, self.count)
                elif self.sockets == REUSEPORT:
                    # Taken over: the old parent's SO_REUSEPORT sockets too.
                    binder = reactor = InheritedReusePortReactor(
                        reactor, self.inheritedExtra.get(key, []), self.count)
                endpoint = serverEndpoint(reactor, withBacklog(desc, systemBacklog()),
                                          handed=self._handed(key))
                owner = next(p.name for p in config.proxies if desc in p.listen)
                listener = ListenerService(desc, owner, endpoint, _NoConnections())
                if binder is not None:
                    self._binders[id(listener)] = binder
            listeners[key] = listener
        return listeners

    def _handed(self, key: ListenKey) -> bool:
        handed = self.inherited.get(key)
        return handed is not None and handed.fileno >= 0

    def _listenReactor(self, key: ListenKey) -> Any:
        if not self._handed(key):
            return self.reactor
        return AdoptingReactor(self.reactor, self.inherited[key])

    def keyedListeners(self) -> list[tuple[ListenKey, ListenerService]]:
        """
        Every listener the parent holds with its key: the proxies', then
        the status site's.
        """
        return list(self._listeners.items()) + list(zip(self._statusKeys, self._status,
                                                        strict=True))

    def extraSockets(self, listener: ListenerService) -> list[int]:
        """
        The descriptors of the other SO_REUSEPORT sockets of C{listener}
        (one per worker but the first), or none: its one socket is shared.
        """
        # Handed on (a take-over): every socket listening.
        for index in list(self._paused):
            self._resume(index, [listener])
        binder = self._binders.get(id(listener))
        return list(binder.extra) if binder is not None else []

    def whenServing(self) -> defer.Deferred[None]:
        """
        A Deferred that fires once every worker serves (at once if they do).
        """
        if all(worker.state == "serving" for worker in self.workers):
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._servingWaiters.append(d)
        return d

    def _bindAll(self, listeners: list[ListenerService]) -> None:
        """
        Bind C{listeners} and keep their ports from accepting here.

        @raise ListenError: one cannot be bound (those bound are unbound).
        """
        bound: list[ListenerService] = []
        try:
            for listener in listeners:
                bound.append(listener)
                listener.bind()
                port = listener.port
                if port is None:
                    raise ListenError(f"{listener.description}: bound later than start-up; "
                                      "workers need their sockets at once")
                self._checkHandable(listener, port)
                # The workers accept; the parent's copy never does.
                port.stopReading()  # type: ignore[attr-defined]
        except StartupError:
            for listener in bound:
                listener.unbind()
            raise

    @staticmethod
    def _checkHandable(listener: ListenerService, port: IListeningPort) -> None:
        try:
            familyOf(port.getHost())
            port.fileno()  # type: ignore[attr-defined]
        except (ValueError, AttributeError):
            raise ListenError(f"{listener.description}: cannot be handed to worker processes "
                              "(not a TCP or unix socket); use workers = 1") from None

    def _buildStatus(self, config: Config) -> list[ListenerService]:
        from txsockproxy.instancestatus import instanceStatusSite

        status = config.status
        if status is None:
            return []
        self._statusSite = instanceStatusSite(self, status)
        keys = [key for key in listenKeys(config) if key[0]]
        # A reload does not change the status listeners.
        self._statusKeys = keys
        return [
            ListenerService(desc, None, serverEndpoint(self._listenReactor(key), desc,
                                                       handed=self._handed(key)),
                            self._statusSite)
            for key, desc in zip(keys, status.listen, strict=True)
        ]

    def _fail(self, error: StartupError) -> None:
        if self.onStartupError is not None:
            self.onStartupError(error)
        raise error

    def privilegedStartService(self) -> None:
        if self._bound:
            return
        self._bound = True
        self._status = self._buildStatus(self.config)
        try:
            self._bindAll(list(self._listeners.values()))
            for listener in self._status:
                listener.bind()
        except StartupError as e:
            for listener in list(self._listeners.values()) + self._status:
                listener.unbind()
            self._fail(e)
        for listener in list(self._listeners.values()) + self._status:
            listener.setServiceParent(self)
        super().privilegedStartService()

    def startService(self) -> None:
        if not self._bound:
            self.privilegedStartService()
        super().startService()
        if self.handleSignals:
            self._previousHUP = signal.signal(signal.SIGHUP, self._onSIGHUP)
        kind = type(self.reactor)
        self.log.info(
            "reactor: {module}.{name} ({why}); {count} worker processes serve the listeners",
            module=kind.__module__, name=kind.__name__, why=self.reactorChoice, count=self.count,
        )
        for worker in self.workers:
            self._start(worker)
        self.heartbeat.start(HEARTBEAT, now=False)

    def _beat(self) -> None:
        # Not while starting or stopping: those commands have deadlines of
        # their own.
        for worker in self.workers:
            if worker.state == "serving" and not self._stopping:
                worker.ping()

    # -- workers ----------------------------------------------------------------

    def _start(self, worker: WorkerProcess) -> None:
        self._restarts.pop(worker.index, None)
        if self._stopping:
            return
        ours, theirs = self._socketpair()
        try:
            args = [self.executable, "-m", "txsockproxy.worker", "--config", self.configPath,
                    "--index", str(worker.index), "--count", str(self.count),
                    "--accelerator", self.config.accelerator]
            if self.debug is not None:
                args += ["--debug", str(self.debug)]
            if self.reactorName is not None:
                args += ["--reactor", self.reactorName]
            worker.state = "starting"
            worker.startedAt = self.reactor.seconds()
            transport = (self._spawn or self.reactor.spawnProcess)(
                worker, self.executable, args, env=dict(os.environ),
                childFDs={0: "w", 1: "r", 2: "r", 3: theirs.fileno()},
            )
            worker.processTransport = transport
            worker.pid = getattr(transport, "pid", None)
            control = QuietAMP()
            worker.control = control
            self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, _One(control))
        finally:
            ours.close()
            theirs.close()
        self._handAndServe(worker, list(self._listeners.items()))

    def _handAndServe(self, worker: WorkerProcess,
                      listeners: list[tuple[ListenKey, ListenerService]]) -> None:
        handing = self._hand(worker, listeners, START_DEADLINE)

        def serve(_: object) -> defer.Deferred[Any]:
            return self._configure(worker, START_DEADLINE).addCallback(
                lambda _: worker.call(Serve, START_DEADLINE))

        def serving(answer: dict[str, Any]) -> None:
            if worker.state == "starting":
                worker.state = "serving"
                # Others kept listening as the last may now be paused.
                self._rebalance(worker)
            if self._servingWaiters and all(w.state == "serving" for w in self.workers):
                waiters, self._servingWaiters = self._servingWaiters, []
                for d in waiters:
                    d.callback(None)
            self.log.info("worker {index} (pid {pid}) serving", index=worker.index,
                          pid=answer["pid"])
            if worker.configured is not self.config:
                # A reload was applied while it started: catching up
                # replays the admin actions once reloaded.
                self.workerAnswers(worker)
            else:
                self._replayAdmin(worker)

        def failed(failure: Failure) -> None:
            if worker.processTransport is None or self._stopping:
                return
            self.log.error("worker {index} (pid {pid}) cannot serve: {error}",
                           index=worker.index, pid=worker.pid,
                           error=failure.getErrorMessage())
            worker.signal("KILL")

        handing.addCallback(serve).addCallbacks(serving, failed)

    def _hand(self, worker: WorkerProcess, listeners: list[tuple[ListenKey, ListenerService]],
              deadline: float = CALL_DEADLINE) -> defer.Deferred[Any]:
        calls = []
        for key, listener in listeners:
            port = listener.port
            if port is None:
                continue
            fd = self._ownSocket(worker, listener)
            if fd is None:
                fd = port.fileno()  # type: ignore[attr-defined]
            calls.append(worker.call(
                HandListener, deadline, key=encodeKey(key), family=familyOf(port.getHost()),
                socket=fd,
            ).addCallback(_handed, worker, key))
        return _all(calls)

    def _configure(self, worker: WorkerProcess,
                   deadline: float = CALL_DEADLINE) -> defer.Deferred[None]:
        """
        Hand C{worker} the configuration the parent runs (L{Configure}).
        """
        config = self.config
        parts = packConfig(config)
        calls = [worker.call(Configure, deadline, part=i, data=data, more=i + 1 < len(parts))
                 for i, data in enumerate(parts)]

        def configured(_: object) -> None:
            worker.configured = config

        return _all(calls).addCallback(configured)

    def workerEnded(self, worker: WorkerProcess, pid: Optional[int], reason: Failure) -> None:
        """
        Called by C{worker} when its process has ended: log it, and restart
        it after its back-off unless the parent is stopping.
        """
        how = exitDescription(reason)
        if self._stopping:
            worker.state = "stopped"
            self.log.info("worker {index} (pid {pid}) {how}", index=worker.index, pid=pid, how=how)
            return
        ranFor = self.reactor.seconds() - worker.startedAt
        delay = self._backoffs[worker.index].delay(ranFor)
        worker.state = "restarting"
        worker.restarts += 1
        when = "at once"
        if delay:
            self._backingOff.add(worker.index)
            when = f"in {delay:g}s" + self._rebalance(worker)
        self.log.error(
            "worker {index} (pid {pid}) died: {how} after {ranFor:.1f}s; restarting {when}",
            index=worker.index, pid=pid, how=how, ranFor=ranFor, when=when,
        )
        self._restarts[worker.index] = self.reactor.callLater(delay, self._restart, worker)

    def _restart(self, worker: WorkerProcess) -> None:
        self._backingOff.discard(worker.index)
        self._rebalance(worker)
        self._start(worker)

    def _ownSocket(self, worker: WorkerProcess, listener: ListenerService) -> Optional[int]:
        """
        The descriptor of C{worker}'s own SO_REUSEPORT socket of
        C{listener}, or L{None}: the listener has one socket, shared.
        """
        binder = self._binders.get(id(listener))
        if binder is None or not binder.extra or listener.port is None:
            return None
        if worker.index == 0:
            fd: int = listener.port.fileno()  # type: ignore[attr-defined]
            return fd
        return int(binder.extra[worker.index - 1])

    def _wantsOut(self, worker: WorkerProcess) -> bool:
        # Its sockets would only queue connections nobody accepts.
        return worker.index in self._backingOff or (
            worker.state == "serving" and not worker.answering)

    @staticmethod
    def _inGroup(worker: WorkerProcess) -> bool:
        return worker.state == "serving" and worker.answering and worker.control is not None

    def _rebalance(self, cause: Optional[WorkerProcess] = None) -> str:
        """
        Pause the own SO_REUSEPORT sockets (see L{txsockproxy.listenpause})
        of each worker waiting out a back-off or not answering, while
        another worker serves and answers; have all others listen, except
        that one paused already stays paused while another worker's socket
        listens. So the last sockets of a listener never stop listening:
        with every worker dead or stopped, new connections queue in the
        socket of the last one found (to be served when it comes back)
        instead of being refused. Called whenever a worker
        enters or leaves either state; a change to a worker other than
        C{cause} is logged.

        @return: what became of C{cause}'s sockets, for its own log line
            (C{""}: nothing to say).
        """
        if self._stopping:
            return ""
        said = ""
        for worker in self.workers:
            out = self._wantsOut(worker)
            others = [w.index for w in self.workers if w is not worker and self._inGroup(w)]
            if out and others:
                count = self._pause(worker)
            elif out and self._paused.get(worker.index) and any(
                not self._paused.get(w.index) for w in self.workers if w is not worker
            ):
                # Out already, and another's socket listens: the
                # connections queue there; listening again here would only
                # spread them over one more socket that may be paused (and
                # its queue reset) when either comes back.
                count = 0
            else:
                count = self._resume(worker.index)
            if worker is cause:
                own = sum(1 for listener in self._listeners.values()
                          if self._ownSocket(worker, listener) is not None)
                closed = len(self._paused.get(worker.index, []))
                if out and others and closed:
                    said = f" (its own socket of {closed} listener(s) closed meanwhile)"
                elif out and not others and own:
                    said = (f" (its own socket of {own} listener(s) kept listening: no other "
                            "worker serves and answers, so new connections queue)")
            elif count and out and others:
                self.log.info("worker {index}'s own socket of {count} listener(s) closed: "
                              "worker {other} serves and answers", index=worker.index,
                              count=count, other=others[0])
            elif count:
                self.log.info("worker {index}'s own socket of {count} listener(s) listening "
                              "again{why}", index=worker.index, count=count,
                              why=": no other worker serves and answers, so new connections "
                              "queue" if out else "")
        return said

    def _pause(self, worker: WorkerProcess) -> int:
        """
        Pause C{worker}'s own socket of each listener not paused yet until
        L{_resume}; it is handed to the worker again when it serves again
        (its copy finds the socket closed).

        @return: how many were paused.
        """
        paused = self._paused.setdefault(worker.index, [])
        count = 0
        for key, listener in self._listeners.items():
            fd = self._ownSocket(worker, listener)
            if fd is None or any(listener is p for p, _, _ in paused):
                continue
            try:
                address = pauseListening(fd)
            except OSError as e:
                self.log.debug("{listen}: cannot pause worker {index}'s socket: {error}",
                               listen=listener.description, index=worker.index, error=e)
                continue
            paused.append((listener, fd, address))
            worker.handed.discard(key)
            count += 1
        if not paused:
            del self._paused[worker.index]
        return count

    def _resume(self, index: int, listeners: Optional[list[ListenerService]] = None) -> int:
        """
        Have the sockets of worker C{index} paused (of C{listeners}, or all)
        listen again.

        @return: how many listen again.
        """
        kept = []
        count = 0
        for listener, fd, address in self._paused.pop(index, []):
            if listeners is not None and listener not in listeners:
                kept.append((listener, fd, address))
            elif self._ownSocket(self.workers[index], listener) == fd:
                # (Not a listener closed by a reload meanwhile.)
                try:
                    resumeListening(fd, address, systemBacklog())
                    count += 1
                except OSError as e:
                    self.log.error("{listen}: worker {index}'s own socket cannot listen again: "
                                   "{error}", listen=listener.description, index=index,
                                   error=e)
        if kept:
            self._paused[index] = kept
        return count

    def _eachServing(self, ask: Callable[[WorkerProcess], defer.Deferred[Any]]
                     ) -> defer.Deferred[list[tuple[WorkerProcess, Any]]]:
        """
        Ask every worker serving (C{ask(worker)}); a Deferred of each
        worker's answer, or of a list holding its failure.
        """
        serving = [w for w in self.workers if w.state == "serving"]
        # A failure as a result, not as a failure: every worker's is kept.
        calls = [ask(w).addErrback(self._missed, w) for w in serving]
        gathered = defer.gatherResults(calls)
        return gathered.addCallback(lambda answers: list(zip(serving, answers, strict=True)))

    @staticmethod
    def _missed(failure: Failure, worker: WorkerProcess) -> list[Failure]:
        # A failure as a result, not as a failure: every worker's is kept.
        if failure.check(NotAnswering):
            worker.missed = True
        return [failure]

    def _reload(self, worker: WorkerProcess) -> defer.Deferred[Any]:
        """
        Hand C{worker} the configuration and have it apply it.
        """
        return self._configure(worker).addCallback(lambda _: worker.call(Reload))

    def workerAnswers(self, worker: WorkerProcess) -> None:
        """
        Called by C{worker} when it answers again after not answering: give
        it what it missed (listeners added, the configuration, the admin
        actions), if anything: its own SO_REUSEPORT sockets paused meanwhile
        listen again first and are handed to it again (it found them closed);
        other workers' kept listening as the last are paused now.
        """
        self._rebalance(worker)
        missing = [(key, listener) for key, listener in self._listeners.items()
                   if key not in worker.handed]
        if worker.state != "serving" or self._stopping or not (
                worker.missed or missing or worker.configured is not self.config):
            return
        worker.missed = False

        def reloaded(answer: Any) -> Any:
            if not answer["applied"]:
                self.log.error("worker {index} kept its running configuration",
                               index=worker.index)
                return None
            return self._replayAdmin(worker).addCallback(caughtUp)

        def caughtUp(replayed: int) -> None:
            self.log.info("worker {index} caught up: {source}, {count} admin state(s) "
                          "replayed", index=worker.index, source=self.config.source,
                          count=replayed)

        def failed(failure: Failure) -> None:
            worker.missed = True
            self.log.error("worker {index} cannot catch up: {error}", index=worker.index,
                           error=failure.getErrorMessage())

        self._hand(worker, missing).addCallback(lambda _: self._reload(worker)).addCallbacks(
            reloaded, failed)

    def workerNotAnswering(self, worker: WorkerProcess) -> str:
        """
        Called by C{worker} when it stops answering: its own SO_REUSEPORT
        socket of each TCP listener is paused, as during a restart's
        back-off, so that the kernel queues no new connection where nobody
        accepts (unless no other worker serves and answers: see
        L{_rebalance}); they are handed to it again when it answers again.

        @return: what became of its sockets, for its log line.
        """
        return self._rebalance(worker)

    def _replayAdmin(self, worker: WorkerProcess) -> defer.Deferred[int]:
        """
        Give C{worker} the admin state of every backend ever acted on (an
        C{enable} too: it undoes an action the worker applied late).

        @return: a Deferred of how many it answered.
        """
        calls = [worker.call(Admin, proxy=proxy, label=label, action=action).addCallbacks(
            lambda _: 1, lambda f: 0) for (proxy, label), action in self._adminStates.items()]
        return defer.gatherResults(calls).addCallback(sum)

    # -- status -----------------------------------------------------------------

    def snapshots(self) -> defer.Deferred[list[WorkerSnapshot]]:
        """
        Every worker's status now, each within C{snapshotTimeout} seconds: a
        worker that does not answer in time, or is not serving, is shown
        without a snapshot.
        """
        return defer.gatherResults([self._snapshotOf(w) for w in self.workers])

    def _snapshotOf(self, worker: WorkerProcess) -> defer.Deferred[WorkerSnapshot]:
        def shown(snapshot: Optional[dict[str, Any]], problem: str = "") -> WorkerSnapshot:
            return WorkerSnapshot(worker.index, worker.pid, worker.state, worker.restarts,
                                  snapshot, problem)

        if worker.state != "serving":
            return defer.succeed(shown(None, worker.state))
        parts: list[bytes] = []

        def part(answer: dict[str, Any]) -> Any:
            parts.append(answer["data"])
            if answer["more"]:
                return worker.call(Snapshot, part=len(parts)).addCallback(part)
            return unpackSnapshot(parts)

        asking = worker.call(Snapshot, part=0).addCallback(part)
        asking.addTimeout(self.snapshotTimeout, self.reactor)
        return asking.addCallbacks(
            shown,
            lambda f: shown(None, "not answering" if f.check(defer.TimeoutError, NotAnswering)
                            else f.getErrorMessage()),
        )

    def admin(self, proxy: str, label: str, action: str, timeout: Optional[float]
              ) -> defer.Deferred[list[tuple[int, int, str]]]:
        """
        Apply an admin action in every worker serving.

        @return: a Deferred of (worker number, HTTP code, JSON body) for
            each, a worker that failed to answer with code 503.
        """
        arguments: dict[str, Any] = {"proxy": proxy, "label": label, "action": action}
        if timeout is not None:
            arguments["timeout"] = timeout

        def answers(results: list[tuple[WorkerProcess, Any]]) -> list[tuple[int, int, str]]:
            if any(not isinstance(answer, list) and answer["code"] == 200
                   for _, answer in results):
                # "enable" is kept too: a worker that applies an earlier
                # action late (it was stopped) is given it when it catches up.
                self._adminStates[(proxy, label)] = action
            out = []
            for worker, answer in results:
                if isinstance(answer, list):
                    error = f"worker {worker.index} did not answer: {answer[0].getErrorMessage()}"
                    out.append((worker.index, 503, json.dumps({"error": error})))
                else:
                    out.append((worker.index, answer["code"], answer["body"]))
            return out

        return self._eachServing(lambda w: w.call(Admin, **arguments)).addCallback(answers)

    @property
    def adminToken(self) -> str:
        """
        The token admin actions need, or C{""}.
        """
        status = self.config.status
        return status.adminToken if status is not None else ""

    # -- reloading --------------------------------------------------------------

    def _onSIGHUP(self, signum: int, frame: Any) -> None:
        if not self._stopping:
            self.reactor.callFromThread(self.reload)

    def reload(self) -> defer.Deferred[bool]:
        """
        Read the configuration again; if valid, bind its new listeners and
        close those it no longer has; hand the new ones and the new
        configuration to every worker and have every worker apply it (a
        worker never reads the file). An invalid file changes nothing.

        @return: a Deferred that fires with whether the parent applied the
            new configuration (each worker's result is logged). Never fails.
        """
        if self._stopping:
            self.log.info("reload: shutting down: not reloading")
            return defer.succeed(False)
        if self._reloading is not None:
            # One at a time; one more after it reads the file as it is then.
            self._reloadAgain = True
            waiting: defer.Deferred[bool] = defer.Deferred()

            def tell(result: Any) -> Any:
                waiting.callback(result)
                return result

            self._reloading.addBoth(tell)
            return waiting
        loading = self.runInThread(self.loader, self.configPath)
        self._reloading = loading.addCallbacks(self._applyLoaded, self._loadFailed)
        self._reloading.addErrback(self._reloadFailed)

        def done(result: bool) -> bool:
            self._reloading = None
            if self._reloadAgain:
                self._reloadAgain = False
                self.reload()
            return result

        return self._reloading.addCallback(done)

    def _reloadFailed(self, failure: Failure) -> bool:
        self.log.failure("reload failed: keeping the running configuration", failure)
        return False

    def _loadFailed(self, failure: Failure) -> bool:
        return reloadRefused(self.log, failure)

    def _applyLoaded(self, config: Config) -> Any:
        if self._stopping:
            return False
        if workerCount(config.workers) != self.count:
            self.log.warn("reload: workers = {workers} takes effect at the next start",
                          workers=config.workers)
        if config.status != self.config.status and (
            config.status is None or self.config.status is None
            or config.status.listen != self.config.status.listen
        ):
            self.log.warn("reload: a change of [status] listen takes effect at the next start")
        try:
            listeners = self._proxyListeners(config, self._listeners)
        except Exception as e:
            self.log.error("reload failed: {error}; keeping the running configuration",
                           error=str(e))
            return False
        added = [(k, new) for k, new in listeners.items() if self._listeners.get(k) is not new]
        removed = [old for k, old in self._listeners.items() if listeners.get(k) is not old]
        try:
            self._bindAll([listener for _, listener in added])
        except StartupError as e:
            self.log.error("reload failed: {error}; keeping the running configuration",
                           error=str(e))
            return False
        for _, listener in added:
            listener.setServiceParent(self)
        self._listeners = listeners
        self.config = config
        # A worker waiting to restart or not answering: its sockets of the
        # new listeners too.
        self._rebalance()
        for listener in removed:
            listener.disownServiceParent()
            self._closeExtra(listener)
            self.log.info("reload: closed listener {listen}", listen=listener.description)
        serving = [w for w in self.workers if w.state == "serving"]
        handing = [self._hand(w, added).addErrback(lambda f: None) for w in serving]

        def reloadWorkers(_: object) -> Any:
            return self._eachServing(self._reload)

        def logged(results: list[tuple[WorkerProcess, Any]]) -> bool:
            for worker, answer in results:
                if isinstance(answer, list) and answer[0].check(NotAnswering):
                    self.log.error("reload: worker {index} did not answer ({error}): it is "
                                   "given the configuration when it answers again",
                                   index=worker.index, error=answer[0].getErrorMessage())
                elif isinstance(answer, list):
                    self.log.error("reload: worker {index}: {error}", index=worker.index,
                                   error=answer[0].getErrorMessage())
                elif not answer["applied"]:
                    self.log.error("reload: worker {index} kept its running configuration",
                                   index=worker.index)
            applied = sum(1 for _, answer in results
                          if not isinstance(answer, list) and answer["applied"])
            self.log.info("reload: applied {source} ({count} workers)", source=config.source,
                          count=applied)
            return True

        return defer.gatherResults(handing).addCallback(reloadWorkers).addCallback(logged)

    # -- stopping ---------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop listening, stop every worker gracefully (each gives its
        sessions up to shutdown-timeout), kill those still running
        L{STOP_GRACE} seconds after that; fire when all have ended.
        """
        self._stopping = True
        if self.heartbeat.running:
            self.heartbeat.stop()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts = {}
        if self._previousHUP is not None:
            signal.signal(signal.SIGHUP, self._previousHUP)
            self._previousHUP = None
        stopped = super().stopService()
        for listener in self._listeners.values():
            self._closeExtra(listener)
        ended = []
        for worker in self.workers:
            ended.append(worker.whenEnded())
            if worker.processTransport is None:
                worker.state = "stopped"
                continue
            worker.state = "stopping"
            if worker.control is None:
                worker.signal("TERM")
                continue

            def close(_: object, worker: WorkerProcess = worker) -> None:
                # The worker exits once its control connection ends.
                if worker.control is not None and worker.control.transport is not None:
                    worker.control.transport.loseConnection()

            worker.call(Stop, None).addErrback(lambda f: None).addCallback(close)
        kill = self.reactor.callLater(self.config.shutdownTimeout + STOP_GRACE, self._killAll)

        def done(_: object) -> None:
            if kill.active():
                kill.cancel()

        return defer.gatherResults([defer.maybeDeferred(lambda: stopped)] + ended).addBoth(done)

    def _closeExtra(self, listener: ListenerService) -> None:
        binder = self._binders.pop(id(listener), None)
        if binder is not None:
            binder.close()

    def _killAll(self) -> None:
        for worker in self.workers:
            if worker.processTransport is not None:
                self.log.warn("worker {index} (pid {pid}) did not stop in time: killing it",
                              index=worker.index, pid=worker.pid)
                worker.signal("KILL")


__all__ = [
    "Backoff", "CALL_DEADLINE", "FIRST_BACKOFF", "HEARTBEAT", "HEARTBEAT_DEADLINE",
    "MAX_BACKOFF", "NotAnswering", "STABLE",
    "START_DEADLINE", "WorkerProcess", "WorkerSnapshot",
    "WorkersService", "exitDescription", "workerCount",
]
