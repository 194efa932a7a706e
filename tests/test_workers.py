"""
Unit tests of worker processes: the parent's restart back-off, start, stop
and status gathering (L{txsockproxy.workers}), the worker's side
(L{txsockproxy.worker}), the AMP commands between them, and the merging of
the workers' status (L{txsockproxy.instancestatus}). No process is started:
fake processes, fake control connections and L{task.Clock}.
"""

from __future__ import annotations

import json
import pickle
import signal
import socket
from dataclasses import replace
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txsockproxy.config import Config
from txsockproxy.instancestatus import mergeDocuments, mergeMetrics, mergeStatistics
from txsockproxy.tomlconfig import parseConfig
from txsockproxy.worker import LineObserver, Worker, WorkerControl, share, shareOf
from txsockproxy.workerprotocol import (
    Admin,
    Configure,
    HandListener,
    Ping,
    Reload,
    Serve,
    Snapshot,
    decodeKey,
    encodeKey,
    packConfig,
    packSnapshot,
    unpackConfig,
    unpackSnapshot,
)
from txsockproxy.workers import (
    CALL_DEADLINE,
    HEARTBEAT,
    HEARTBEAT_DEADLINE,
    START_DEADLINE,
    Backoff,
    WorkerProcess,
    WorkersService,
    exitDescription,
    workerCount,
)

CONFIG = """
workers = 2
max-connections = 5
[[proxy]]
name = "p"
listen = "tcp:0:interface=127.0.0.1"
[[proxy.backend]]
label = "one"
endpoint = "tcp:host=127.0.0.1:port=1"
max-connections = 3
"""


def config(text: str = CONFIG) -> Config:
    return parseConfig(text, "w.toml")


class BackoffTests(SynchronousTestCase):
    """
    L{Backoff}.
    """

    def test_doubles(self) -> None:
        """
        L{Backoff.delay} restarts the first death at once, then waits 0.5 s
        and doubles at each quick death, up to 30 s.
        """
        backoff = Backoff()
        self.assertEqual([backoff.delay(1.0) for _ in range(10)],
                         [0, 0.5, 1, 2, 4, 8, 16, 30, 30, 30])

    def test_resetAfterStableMinute(self) -> None:
        """
        A worker that ran a minute before dying is restarted at once again.
        """
        backoff = Backoff()
        for _ in range(5):
            backoff.delay(0.1)
        self.assertEqual(backoff.delay(60.0), 0)
        self.assertEqual(backoff.delay(1.0), 0.5)


class WorkerCountTests(SynchronousTestCase):
    """
    L{workerCount}.
    """

    def test_count(self) -> None:
        """
        A count is the count.
        """
        self.assertEqual(workerCount(3), 3)

    def test_auto(self) -> None:
        """
        C{"auto"} is the CPUs the process may use, at least 1.
        """
        self.assertEqual(workerCount("auto", lambda: 6), 6)
        self.assertEqual(workerCount("auto", lambda: 0), 1)
        self.assertGreaterEqual(workerCount("auto"), 1)


class ShareTests(SynchronousTestCase):
    """
    L{share} and L{shareOf}: a worker's part of the instance's limits.
    """

    def test_sharesAddUp(self) -> None:
        """
        The shares of a limit add up to the limit when it is at least the
        number of workers, and differ by at most one.
        """
        for count in range(1, 9):
            for limit in range(count, 50):
                parts = [share(limit, i, count) for i in range(count)]
                self.assertEqual(sum(parts), limit)
                self.assertLessEqual(max(parts) - min(parts), 1)

    def test_noLimit(self) -> None:
        """
        No limit (0) stays no limit.
        """
        self.assertEqual(share(0, 1, 4), 0)

    def test_belowCount(self) -> None:
        """
        A limit below the number of workers gives every worker 1 (0 would be
        no limit).
        """
        self.assertEqual([share(2, i, 4) for i in range(4)], [1, 1, 1, 1])

    def test_shareOf(self) -> None:
        """
        L{shareOf} splits the global, proxy and backend C{max-connections}
        and drops the status site.
        """
        text = CONFIG.replace('interface=127.0.0.1"\n',
                              'interface=127.0.0.1"\nmax-connections = 7\nmax-queue = 3\n')
        text += '[status]\nlisten = "tcp:0"\n'
        whole = config(text)
        parts = [shareOf(whole, i, 2) for i in range(2)]
        self.assertEqual([p.maxConnections for p in parts], [3, 2])
        self.assertEqual([p.proxies[0].protection.maxConnections for p in parts], [4, 3])
        self.assertEqual([p.proxies[0].protection.maxQueue for p in parts], [2, 1])
        self.assertEqual([p.proxies[0].backends[0].maxConnections for p in parts], [2, 1])
        self.assertEqual([p.status for p in parts], [None, None])


class ExitDescriptionTests(SynchronousTestCase):
    """
    L{exitDescription}.
    """

    def test_descriptions(self) -> None:
        """
        An exit status, or the signal by name.
        """
        self.assertEqual(exitDescription(Failure(ProcessDone(0))), "exited with status 0")
        self.assertEqual(exitDescription(Failure(ProcessTerminated(exitCode=3))),
                         "exited with status 3")
        self.assertEqual(exitDescription(Failure(ProcessTerminated(signal=signal.SIGKILL))),
                         "killed by signal 9 (SIGKILL)")


class KeyAndSnapshotTests(SynchronousTestCase):
    """
    What the AMP commands carry.
    """

    def test_keyRoundTrip(self) -> None:
        """
        A listener key survives L{encodeKey} and L{decodeKey}; anything else
        is refused.
        """
        key = (False, "tcp:0:interface=127.0.0.1", 2)
        self.assertEqual(decodeKey(encodeKey(key)), key)
        self.assertRaises(ValueError, decodeKey, '["x", 1, 2]')

    def test_configRoundTrip(self) -> None:
        """
        L{unpackConfig} gives back the configuration L{packConfig} packed,
        from parts of at most 65,535 bytes; anything else is refused.
        """
        many = "".join(
            f'[[proxy]]\nname = "p{i}"\nlisten = "tcp:{1000 + i}"\n'
            f'[[proxy.backend]]\nendpoint = "tcp:host=127.0.0.1:port={2000 + i}"\n'
            for i in range(400))
        big = config(many)
        parts = packConfig(big)
        self.assertGreater(len(parts), 1)
        self.assertTrue(all(len(p) <= 65535 for p in parts))
        self.assertEqual(unpackConfig(parts), big)
        self.assertRaises(ValueError, unpackConfig, [b"junk"])
        self.assertRaises(ValueError, unpackConfig, [pickle.dumps({"not": "a config"})])

    def test_largeSnapshot(self) -> None:
        """
        A snapshot larger than an AMP value goes in several parts, each
        within AMP's limit, and comes back whole.
        """
        import os

        big = {"data": os.urandom(200_000).hex()}
        parts = packSnapshot(big)
        self.assertGreater(len(parts), 1)
        self.assertTrue(all(len(p) <= 65535 for p in parts))
        self.assertEqual(unpackSnapshot(parts), big)


class FakeProxyService:
    """
    What L{Worker} runs, faked: records what it is asked.
    """

    def __init__(self, config: Config, reactor: Any, configPath: str, loader: Any,
                 inherited: Any) -> None:
        from txsockproxy.status import StatusView

        self.config = config
        self.loader = loader
        self.inherited = inherited
        self.reactorChoice = ""
        self.started = False
        self.running = False
        self.reloads: list[defer.Deferred[bool]] = []
        self.listeners: list[Any] = []
        self.stopping: Optional[defer.Deferred[None]] = None
        self.statusView = StatusView(clock=reactor)

    def privilegedStartService(self) -> None:
        pass

    def startService(self) -> None:
        self.started = self.running = True

    def reload(self) -> defer.Deferred[bool]:
        d: defer.Deferred[bool] = defer.Deferred()
        self.reloads.append(d)
        return d

    def stopService(self) -> defer.Deferred[None]:
        self.running = False
        self.stopping = defer.Deferred()
        return self.stopping


class WorkerTests(SynchronousTestCase):
    """
    L{Worker} and L{WorkerControl}: the worker's side.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.services: list[FakeProxyService] = []

        def factory(*args: Any, **kwargs: Any) -> FakeProxyService:
            service = FakeProxyService(*args, **kwargs)
            self.services.append(service)
            return service

        self.worker = Worker(self.clock, "w.toml", 1, 2, debug=2, serviceFactory=factory)
        self.worker.configuration = config()

    def connected(self) -> tuple[amp.AMP, iosim.IOPump, list[bool]]:
        """
        A parent's AMP connected to a L{WorkerControl} of C{self.worker}.
        """
        lost: list[bool] = []
        control = WorkerControl(self.worker, lambda: lost.append(True))
        parent = amp.AMP()
        pump = iosim.connect(control, iosim.makeFakeServer(control),
                             parent, iosim.makeFakeClient(parent))
        return parent, pump, lost

    def test_serve(self) -> None:
        """
        L{Serve} makes the worker load its share of the configuration (the
        command line's debug level too) and start serving with the sockets
        handed; it answers with the worker's pid.
        """
        from txsockproxy.adopting import InheritedSocket

        handed = InheritedSocket(-1, socket.AF_INET)
        self.worker.hand((False, "tcp:0", 0), handed)
        parent, pump, _ = self.connected()
        answer = parent.callRemote(Serve)
        pump.flush()
        import os

        self.assertEqual(self.successResultOf(answer), {"pid": os.getpid()})
        [service] = self.services
        self.assertTrue(service.started)
        self.assertEqual(service.config.debug, 2)
        self.assertEqual(service.config.maxConnections, 2)
        self.assertEqual(service.inherited, {(False, "tcp:0", 0): handed})

    def test_serveWhatIsHanded(self) -> None:
        """
        L{Configure} hands the configuration in parts; L{Serve} serves it
        (the worker reads no file: C{w.toml} does not exist), and the
        service's reload applies the one handed since.
        """
        self.worker.configuration = None
        parent, pump, _ = self.connected()

        def configure(text: str) -> None:
            parts = packConfig(config(text))
            for i, data in enumerate(parts):
                parent.callRemote(Configure, part=i, data=data, more=i + 1 < len(parts))

        configure(CONFIG.replace("max-connections = 5", "max-connections = 8"))
        answer = parent.callRemote(Serve)
        pump.flush()
        self.successResultOf(answer)
        [service] = self.services
        self.assertEqual(service.config.maxConnections, 4)
        configure(CONFIG.replace("max-connections = 5", "max-connections = 10"))
        pump.flush()
        self.assertEqual(service.loader("w.toml").maxConnections, 5)

    def serveFailure(self) -> Failure:
        """
        Ask the worker to L{Serve}, and return how that failed.
        """
        parent, pump, _ = self.connected()
        caught: list[Failure] = []
        # Handled before the answer arrives, or AMP drops the connection.
        parent.callRemote(Serve).addErrback(caught.append)
        pump.flush()
        [failure] = caught
        return failure

    def test_serveWithoutConfiguration(self) -> None:
        """
        A worker handed no configuration cannot serve, and says so.
        """
        from txsockproxy.workerprotocol import StartFailed

        self.worker.configuration = None
        failure = self.serveFailure()
        self.assertTrue(failure.check(StartFailed))
        self.assertIn("w.toml: no configuration handed by the parent", failure.getErrorMessage())

    def test_configurePartsOutOfOrder(self) -> None:
        """
        Parts of a configuration out of order, or parts that make none, are
        refused with one line saying so; the configuration handed before
        stays.
        """
        from txsockproxy.workerprotocol import StartFailed

        before = self.worker.configuration
        self.assertRaises(StartFailed, self.worker.configure, 1, b"x", False)
        error = self.assertRaises(StartFailed, self.worker.configure, 0, b"junk", False)
        self.assertIn("cannot read the configuration handed", str(error))
        self.assertIs(self.worker.configuration, before)

    def test_serveFails(self) -> None:
        """
        A configuration that cannot be served is the L{Serve} command's error,
        saying why.
        """
        from txsockproxy.workerprotocol import StartFailed

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise ValueError("no such thing")

        self.worker._serviceFactory = broken
        failure = self.serveFailure()
        self.assertTrue(failure.check(StartFailed))
        self.assertIn("no such thing", failure.getErrorMessage())

    def test_reload(self) -> None:
        """
        L{Reload} answers whether the worker's service applied the file.
        """
        parent, pump, _ = self.connected()
        parent.callRemote(Serve)
        pump.flush()
        answer = parent.callRemote(Reload)
        pump.flush()
        self.assertNoResult(answer)
        self.services[0].reloads[0].callback(True)
        pump.flush()
        self.assertEqual(self.successResultOf(answer), {"applied": True})

    def test_ping(self) -> None:
        """
        L{Ping} is answered at once, serving or not.
        """
        parent, pump, _ = self.connected()
        answer = parent.callRemote(Ping)
        pump.flush()
        self.assertEqual(self.successResultOf(answer), {})

    def test_snapshotAndAdmin(self) -> None:
        """
        L{Snapshot} gives the worker's status in parts; L{Admin} answers an
        unknown proxy with 404.
        """
        parent, pump, _ = self.connected()
        parent.callRemote(Serve)
        pump.flush()
        answer = parent.callRemote(Snapshot, part=0)
        pump.flush()
        result = self.successResultOf(answer)
        self.assertFalse(result["more"])
        snapshot = unpackSnapshot([result["data"]])
        self.assertEqual((snapshot["index"], snapshot["serving"]), (1, True))
        self.assertIn("proxies", snapshot["status"])
        self.assertIn("sockproxy.requests", snapshot["statistics"])
        admin = parent.callRemote(Admin, proxy="nope", label="one", action="drain")
        pump.flush()
        answered = self.successResultOf(admin)
        self.assertEqual(answered["code"], 404)
        self.assertIn("no proxy", json.loads(answered["body"])["error"])

    def test_parentGone(self) -> None:
        """
        When the control connection is lost, the worker is told (it then
        stops and exits).
        """
        parent, pump, lost = self.connected()
        parent.transport.loseConnection()
        pump.flush()
        self.assertEqual(lost, [True])

    def test_stopOnce(self) -> None:
        """
        L{Worker.stop} stops the service once, however often asked, and
        fires when it has stopped.
        """
        self.worker.serve()
        first, second = self.worker.stop(), self.worker.stop()
        self.assertNoResult(first)
        service = self.services[0]
        assert service.stopping is not None
        service.stopping.callback(None)
        self.successResultOf(first)
        self.successResultOf(second)

    def test_handAgain(self) -> None:
        """
        A socket handed again for the same listener replaces (and closes)
        the one handed before.
        """
        import os

        from txsockproxy.adopting import InheritedSocket

        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        first = os.dup(a.fileno())
        self.worker.hand((False, "tcp:0", 0), InheritedSocket(first, socket.AF_UNIX))
        self.worker.hand((False, "tcp:0", 0), InheritedSocket(-1, socket.AF_UNIX))
        self.assertRaises(OSError, os.fstat, first)

    def test_handAgainAfterPortClosed(self) -> None:
        """
        A socket handed again while serving, for a listener whose port was
        closed (the parent paused the socket while the worker was stopped),
        is adopted by that listener, which listens again; a listener whose
        port is still open is left alone.
        """
        from txsockproxy.adopting import InheritedSocket
        from txsockproxy.service import listenKeys

        key = listenKeys(self.worker.configuration)[0]  # type: ignore[arg-type]
        first = InheritedSocket(-1, socket.AF_INET)
        self.worker.hand(key, first)
        parent, pump, _ = self.connected()
        parent.callRemote(Serve)
        pump.flush()
        adopted: list[int] = []

        class Port:
            connected = True

            def getHost(self) -> None:
                return None

        class Listener:
            description = "tcp:0"
            port: Any = Port()

            def bind(self) -> None:
                adopted.append(first.fileno)
                self.port = Port()

        listener = Listener()
        self.services[0].listeners = [listener]
        self.worker.hand(key, InheritedSocket(-1, socket.AF_INET))
        self.assertEqual(adopted, [])
        listener.port.connected = False
        self.worker.hand(key, InheritedSocket(-7, socket.AF_INET6))
        self.assertEqual(adopted, [-7])
        self.assertTrue(listener.port.connected)
        self.assertIs(self.worker.inherited[key], first)


class LineObserverTests(SynchronousTestCase):
    """
    L{LineObserver}: how a worker's log reaches the parent.
    """

    def test_lines(self) -> None:
        """
        Each event is C{LEVEL<TAB>TEXT}, one line per line of text.
        """
        import io

        from twisted.logger import LogLevel

        out = io.StringIO()
        LineObserver(out)({"log_format": "a {x}\nb", "x": 1, "log_level": LogLevel.warn})
        self.assertEqual(out.getvalue(), "warn\ta 1\nwarn\tb\n")


class FakeProcess:
    """
    A spawned process, faked.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class FakeControl:
    """
    A control connection whose commands the test answers.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[type[amp.Command], dict[str, Any], defer.Deferred[Any]]] = []
        self.transport = self
        self.lost = False

    def callRemote(self, command: type[amp.Command], **arguments: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.calls.append((command, arguments, d))
        return d

    def loseConnection(self) -> None:
        self.lost = True


class FakeListener:
    """
    A listener bound, faked: its port's descriptor is a real socket's.
    """

    description = "tcp:0"

    def __init__(self, fd: int) -> None:
        self.port = self
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


class FakeBinder:
    """
    A L{txsockproxy.reuseport.ReusePortReactor} that bound C{extra}.
    """

    def __init__(self, extra: list[int]) -> None:
        self.extra = extra


class ParentTests(SynchronousTestCase):
    """
    L{WorkersService}: restarting, stopping, gathering the workers' status.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.started: list[WorkerProcess] = []
        self.service = WorkersService(config(), self.clock, "w.toml", 2)
        self.service._start = self.started.append  # type: ignore[method-assign]
        self.events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def serving(self, worker: WorkerProcess, pid: int) -> FakeControl:
        worker.state = "serving"
        worker.pid = pid
        worker.processTransport = FakeProcess(pid)
        control = FakeControl()
        worker.control = control  # type: ignore[assignment]
        return control

    def logged(self, text: str) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if text in formatEvent(e)]

    def test_deathRestartsWithBackoff(self) -> None:
        """
        A worker that dies is logged once with its exit status and restarted
        at once; dying again soon, after 0.5 s, then 1 s.
        """
        worker = self.service.workers[1]
        self.serving(worker, 100)
        self.clock.advance(2)
        worker.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        [line] = self.logged("died")
        self.assertEqual(
            line, "worker 1 (pid 100) died: killed by signal 9 (SIGKILL) after 2.0s; "
            "restarting at once")
        self.assertEqual((worker.state, worker.restarts, worker.pid), ("restarting", 1, None))
        self.assertEqual(self.started, [])
        self.clock.advance(0)
        self.assertEqual(self.started, [worker])
        worker.processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.assertIn("restarting in 0.5s", self.logged("died")[1])
        self.clock.advance(0.4)
        self.assertEqual(self.started, [worker])
        self.clock.advance(0.1)
        self.assertEqual(self.started, [worker, worker])
        worker.processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.assertIn("restarting in 1s", self.logged("died")[2])

    def test_ownSocketsPausedDuringBackoff(self) -> None:
        """
        While a worker waits out a back-off, its own SO_REUSEPORT socket of
        each TCP listener does not listen (the kernel gives its share of new
        connections to the other workers); restarted, it listens again on
        the same port. A death restarted at once pauses nothing.
        """
        from tests.test_listenpause import listening
        from txsockproxy.reuseport import bindReusePort

        sockets = [bindReusePort(socket.AF_INET, ("127.0.0.1", 0), 50)]
        port = sockets[0].getsockname()[1]
        sockets.append(bindReusePort(socket.AF_INET, ("127.0.0.1", port), 50))
        for s in sockets:
            self.addCleanup(s.close)
        listener = FakeListener(sockets[0].fileno())
        self.service._listeners = {(False, "tcp:0", 0): listener}  # type: ignore[dict-item]
        self.service._binders[id(listener)] = FakeBinder([sockets[1].fileno()])
        for worker, own, other in [(self.service.workers[1], *sockets[::-1]),
                                   (self.service.workers[0], *sockets)]:
            self.serving(self.service.workers[1 - worker.index], 20)
            self.serving(worker, 10)
            worker.processEnded(Failure(ProcessTerminated(exitCode=1)))
            self.clock.advance(0)
            self.assertTrue(listening(own))
            self.serving(worker, 11)
            worker.processEnded(Failure(ProcessTerminated(exitCode=1)))
            self.assertIn("restarting in 0.5s (its own socket of 1 listener(s) closed meanwhile)",
                          self.logged("died")[-1])
            self.assertEqual((listening(own), listening(other)), (False, True))
            self.clock.advance(0.5)
            self.assertEqual(self.started[-1], worker)
            self.assertTrue(listening(own))
            self.assertEqual(own.getsockname(), ("127.0.0.1", port))

    def test_stopTellsEveryWorker(self) -> None:
        """
        Stopping sends L{Stop} to every worker, closes each control
        connection once answered, and fires when every process has ended;
        nothing is restarted.
        """
        controls = [self.serving(w, 10 + w.index) for w in self.service.workers]
        stopped = self.service.stopService()
        for control in controls:
            [(command, _, answer)] = control.calls
            self.assertEqual(command.__name__, "Stop")
            answer.callback({})
            self.assertTrue(control.lost)
        self.assertNoResult(stopped)
        for worker in self.service.workers:
            worker.processEnded(Failure(ProcessDone(0)))
        self.successResultOf(stopped)
        self.clock.advance(100)
        self.assertEqual(self.started, [])
        self.assertEqual(len(self.logged("exited with status 0")), 2)

    def test_stopKillsLaggards(self) -> None:
        """
        A worker still running shutdown-timeout plus 5 s after the stop is
        killed.
        """
        self.serving(self.service.workers[0], 10)
        self.service.stopService()
        process = self.service.workers[0].processTransport
        self.clock.advance(self.service.config.shutdownTimeout + 4.9)
        self.assertEqual(process.signals, [])
        self.clock.advance(0.2)
        self.assertEqual(process.signals, ["KILL"])

    def test_snapshots(self) -> None:
        """
        L{WorkersService.snapshots} asks every serving worker, in parts; a
        worker that does not answer within the timeout, or does not serve,
        is shown without a snapshot and why.
        """
        first = self.serving(self.service.workers[0], 10)
        second = self.serving(self.service.workers[1], 11)
        gathered = self.service.snapshots()
        parts = packSnapshot({"status": {"proxies": []}})
        [(_, arguments, answer)] = first.calls
        self.assertEqual(arguments, {"part": 0})
        answer.callback({"data": parts[0], "more": False})
        self.assertNoResult(gathered)
        self.clock.advance(self.service.snapshotTimeout)
        one, two = self.successResultOf(gathered)
        self.assertEqual((one.index, one.pid, one.snapshot), (0, 10, {"status": {"proxies": []}}))
        self.assertEqual((two.index, two.snapshot, two.problem), (1, None, "not answering"))
        self.assertEqual(len(second.calls), 1)
        self.service.workers[1].state = "restarting"
        gathered = self.service.snapshots()
        answer = first.calls[1][2]
        answer.callback({"data": parts[0], "more": False})
        self.assertEqual(self.successResultOf(gathered)[1].problem, "restarting")

    def test_admin(self) -> None:
        """
        An admin action goes to every serving worker; one that fails to
        answer counts as 503.
        """
        first = self.serving(self.service.workers[0], 10)
        second = self.serving(self.service.workers[1], 11)
        result = self.service.admin("p", "one", "drain", 5.0)
        self.assertEqual(first.calls[0][1],
                         {"proxy": "p", "label": "one", "action": "drain", "timeout": 5.0})
        first.calls[0][2].callback({"code": 200, "body": "{}"})
        second.calls[0][2].errback(ConnectionError("gone"))
        self.assertEqual(self.successResultOf(result),
                         [(0, 200, "{}"), (1, 503, '{"error": "worker 1 did not answer: gone"}')])

    def test_adminStateReplayed(self) -> None:
        """
        A worker that starts serving after an admin action (restarted) is
        given it too; C{enable} is kept (and given) too.
        """
        first = self.serving(self.service.workers[0], 10)
        self.service.admin("p", "one", "drain", None)
        first.calls[0][2].callback({"code": 200, "body": "{}"})
        restarted = self.service.workers[1]
        control = FakeControl()
        restarted.control = control  # type: ignore[assignment]
        restarted.processTransport = FakeProcess(12)
        self.service._handAndServe(restarted, [])
        control.calls[0][2].callback({})
        [_, (serve, _, answer)] = control.calls
        self.assertEqual(serve.__name__, "Serve")
        answer.callback({"pid": 12})
        self.assertEqual([(c.__name__, a) for c, a, _ in control.calls[2:]],
                         [("Admin", {"proxy": "p", "label": "one", "action": "drain"})])
        self.service.admin("p", "one", "enable", None)
        for _, _, d in first.calls[1:] + control.calls[3:]:
            d.callback({"code": 200, "body": "{}"})
        self.assertEqual(self.service._adminStates, {("p", "one"): "enable"})

    def test_restartServesLastGoodConfig(self) -> None:
        """
        A worker (re)started is handed the configuration the parent last
        loaded successfully, and only then told to serve: a file broken on
        disk since (a reload refused it) does not reach it.
        """
        from txsockproxy.config import ConfigError, Problem

        def broken(path: str) -> Config:
            raise ConfigError([Problem(path, 3, "", "half-written")])

        self.service.loader = broken
        self.service.runInThread = lambda f, *a: defer.maybeDeferred(f, *a)
        self.assertFalse(self.successResultOf(self.service.reload()))
        worker = self.service.workers[1]
        control = FakeControl()
        worker.control = control  # type: ignore[assignment]
        worker.processTransport = FakeProcess(12)
        self.service._handAndServe(worker, [])
        [(command, arguments, answer)] = control.calls
        self.assertEqual(command, Configure)
        self.assertEqual(unpackConfig([arguments["data"]]), self.service.config)
        self.assertEqual((arguments["part"], arguments["more"]), (0, False))
        answer.callback({})
        self.assertEqual([c for c, _, _ in control.calls], [Configure, Serve])
        control.calls[1][2].callback({"pid": 12})
        self.assertEqual(worker.state, "serving")
        self.assertIs(worker.configured, self.service.config)

    def test_reloadHandsConfig(self) -> None:
        """
        A reload whose file is valid hands the new configuration to every
        serving worker, then tells it to apply it.
        """
        controls = [self.serving(w, 10 + w.index) for w in self.service.workers]
        changed = config(CONFIG.replace("max-connections = 5", "max-connections = 7"))
        self.service.loader = lambda path: changed
        self.service.runInThread = lambda f, *a: defer.maybeDeferred(f, *a)
        reloading = self.service.reload()
        for control in controls:
            [(command, arguments, answer)] = control.calls
            self.assertEqual(command, Configure)
            self.assertEqual(unpackConfig([arguments["data"]]), changed)
            answer.callback({})
            self.assertEqual(control.calls[1][0], Reload)
            control.calls[1][2].callback({"applied": True})
        self.assertTrue(self.successResultOf(reloading))
        self.assertIs(self.service.config, changed)

    def test_notAnswering(self) -> None:
        """
        A worker that does not answer within L{CALL_DEADLINE} (stopped with
        SIGSTOP) is "not answering", logged once: admin actions, status and
        reloads answer for the other worker at the deadline, then at once,
        sending it nothing more; when it answers the old call, it is logged
        and given the configuration and admin action it missed.
        """
        first = self.serving(self.service.workers[0], 10)
        second = self.serving(self.service.workers[1], 11)
        result = self.service.admin("p", "one", "drain", None)
        first.calls[0][2].callback({"code": 200, "body": "{}"})
        self.clock.advance(CALL_DEADLINE - 0.1)
        self.assertNoResult(result)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(result)[1], (1, 503, json.dumps(
            {"error": "worker 1 did not answer: no answer to Admin within 10s"})))
        [line] = self.logged("not answering")
        self.assertEqual(line, "worker 1 (pid 11) is not answering (no answer to Admin within "
                         "10s): left out until it answers")

        result = self.service.admin("p", "one", "disable", None)
        first.calls[1][2].callback({"code": 200, "body": "{}"})
        self.assertEqual(self.successResultOf(result)[1], (1, 503, json.dumps(
            {"error": "worker 1 did not answer: not answering"})))
        gathered = self.service.snapshots()
        first.calls[2][2].callback({"data": packSnapshot({})[0], "more": False})
        self.assertEqual(self.successResultOf(gathered)[1].problem, "not answering")

        changed = config(CONFIG.replace("max-connections = 5", "max-connections = 7"))
        self.service.loader = lambda path: changed
        self.service.runInThread = lambda f, *a: defer.maybeDeferred(f, *a)
        reloading = self.service.reload()
        first.calls[3][2].callback({})
        first.calls[4][2].callback({"applied": True})
        self.assertTrue(self.successResultOf(reloading))
        self.assertEqual(len(second.calls), 1)
        self.assertEqual(len(self.logged("is not answering")), 1)
        self.assertEqual(len(self.logged("reload: worker 1 did not answer")), 1)

        second.calls[0][2].callback({"code": 200, "body": "{}"})
        self.assertEqual(self.logged(") answers again"), ["worker 1 (pid 11) answers again (every late command applied)"])
        [(command, arguments, answer)] = second.calls[1:]
        self.assertEqual(command, Configure)
        self.assertEqual(unpackConfig([arguments["data"]]), changed)
        answer.callback({})
        self.assertEqual(second.calls[2][0], Reload)
        second.calls[2][2].callback({"applied": True})
        self.assertEqual([(c, a) for c, a, _ in second.calls[3:]],
                         [(Admin, {"proxy": "p", "label": "one", "action": "disable"})])
        self.assertIs(self.service.workers[1].configured, changed)

    def test_staleAdminUndoneOnCatchUp(self) -> None:
        """
        An admin action sent to a worker that then stops answering is
        applied late when it resumes; a later C{enable} it missed is given
        to it after every late command has been answered (and so applied),
        and only then is it logged as answering again, then as caught up.
        """
        first = self.serving(self.service.workers[0], 10)
        second = self.serving(self.service.workers[1], 11)
        self.service.workers[1].call(Snapshot, part=0).addErrback(lambda f: None)
        result = self.service.admin("p", "one", "drain", None)
        first.calls[0][2].callback({"code": 200, "body": "{}"})
        self.clock.advance(CALL_DEADLINE)
        self.successResultOf(result)
        result = self.service.admin("p", "one", "enable", None)
        first.calls[1][2].callback({"code": 200, "body": "{}"})
        self.assertEqual(self.successResultOf(result)[1][1], 503)

        second.calls[0][2].callback({"data": packSnapshot({})[0], "more": False})
        self.assertEqual(self.logged("answers again"), [])
        self.assertEqual(len(second.calls), 2)
        second.calls[1][2].callback({"code": 200, "body": "{}"})
        self.assertEqual(self.logged("answers again"),
                         ["worker 1 (pid 11) answers again (every late command applied)"])
        second.calls[2][2].callback({})
        self.assertEqual(second.calls[3][0], Reload)
        second.calls[3][2].callback({"applied": True})
        [(command, arguments, answer)] = second.calls[4:]
        self.assertEqual((command, arguments),
                         (Admin, {"proxy": "p", "label": "one", "action": "enable"}))
        self.assertEqual(self.logged("caught up"), [])
        answer.callback({"code": 200, "body": "{}"})
        [line] = self.logged("caught up")
        self.assertIn("1 admin state(s) replayed", line)

    def test_ownSocketsPausedWhileNotAnswering(self) -> None:
        """
        While a worker is not answering, its own SO_REUSEPORT socket of each
        TCP listener does not listen (new connections go to the other
        worker); when it answers again, the socket listens again and is
        handed to it again before anything else.
        """
        from tests.test_listenpause import listening
        from txsockproxy.reuseport import bindReusePort

        own = bindReusePort(socket.AF_INET, ("127.0.0.1", 0), 50)
        port = own.getsockname()[1]
        other = bindReusePort(socket.AF_INET, ("127.0.0.1", port), 50)
        for s in (own, other):
            self.addCleanup(s.close)
        key = (False, "tcp:0", 0)
        listener = FakeListener(other.fileno())
        from twisted.internet.address import IPv4Address

        listener.getHost = lambda: IPv4Address("TCP", "127.0.0.1", port)  # type: ignore[attr-defined]
        self.service._listeners = {key: listener}  # type: ignore[dict-item]
        self.service._binders[id(listener)] = FakeBinder([own.fileno()])
        worker = self.service.workers[1]
        self.serving(self.service.workers[0], 10)
        control = self.serving(worker, 11)
        worker.handed = {key}
        worker.call(Snapshot, part=0).addErrback(lambda f: None)
        self.clock.advance(CALL_DEADLINE)
        self.assertEqual((listening(own), listening(other)), (False, True))
        [line] = self.logged("is not answering")
        self.assertIn("(its own socket of 1 listener(s) closed meanwhile)", line)
        control.calls[0][2].callback({"data": b"", "more": False})
        self.assertEqual(listening(own), True)
        self.assertEqual(own.getsockname(), ("127.0.0.1", port))
        self.assertEqual(control.calls[1][0], HandListener)
        self.assertEqual(control.calls[1][1]["socket"], own.fileno())

    def test_heartbeat(self) -> None:
        """
        Every L{HEARTBEAT} seconds each worker serving and answering is sent
        a L{Ping}, one at a time; a worker that lets L{HEARTBEAT_DEADLINE}
        pass is not answering (logged once, sent no more pings) though
        nothing else asked it; its late answer brings it back, pinged again.
        A worker starting is not pinged, nor any once stopping.
        """
        first = self.serving(self.service.workers[0], 10)
        second = self.serving(self.service.workers[1], 11)
        # (Nothing to catch up on when it answers again.)
        self.service.workers[1].configured = self.service.config
        self.service.workers[1].handed = set(self.service._listeners)
        self.service.heartbeat.start(HEARTBEAT, now=False)
        self.clock.advance(HEARTBEAT)
        self.assertEqual([c for c, _, _ in first.calls + second.calls], [Ping, Ping])
        first.calls[0][2].callback({})
        self.clock.advance(HEARTBEAT)
        self.assertEqual((len(first.calls), len(second.calls)), (2, 1))
        first.calls[1][2].callback({})
        self.clock.advance(HEARTBEAT_DEADLINE - HEARTBEAT - 0.1)
        self.assertEqual(self.logged("not answering"), [])
        self.clock.advance(0.1)
        self.assertEqual(self.logged("not answering"), [
            "worker 1 (pid 11) is not answering (no answer to Ping within 5s): left out until "
            "it answers"])
        self.assertFalse(self.service.workers[1].answering)
        for call in first.calls[2:]:
            call[2].callback({})
        self.clock.advance(4 * HEARTBEAT)
        self.assertEqual(len(second.calls), 1)
        self.assertEqual(len(self.logged("not answering")), 1)

        second.calls[0][2].callback({})
        self.assertEqual(len(self.logged(") answers again")), 1)
        self.clock.advance(HEARTBEAT)
        self.assertEqual([c for c, _, _ in second.calls], [Ping, Ping])

        self.service.workers[1].state = "starting"
        count = len(second.calls)
        for call in first.calls + second.calls:
            if not call[2].called:
                call[2].callback({})
        self.clock.advance(HEARTBEAT)
        self.assertEqual(len(second.calls), count)
        self.service.stopService()
        self.assertFalse(self.service.heartbeat.running)

    def reusePortGroup(self) -> tuple[socket.socket, socket.socket]:
        """
        Two SO_REUSEPORT sockets of one listener the parent holds: worker
        0's own, then worker 1's.
        """
        from twisted.internet.address import IPv4Address

        from txsockproxy.reuseport import bindReusePort

        first = bindReusePort(socket.AF_INET, ("127.0.0.1", 0), 50)
        port = first.getsockname()[1]
        second = bindReusePort(socket.AF_INET, ("127.0.0.1", port), 50)
        for s in (first, second):
            self.addCleanup(s.close)
        listener = FakeListener(first.fileno())
        listener.getHost = lambda: IPv4Address("TCP", "127.0.0.1", port)  # type: ignore[attr-defined]
        self.service._listeners = {(False, "tcp:0", 0): listener}  # type: ignore[dict-item]
        self.service._binders[id(listener)] = FakeBinder([second.fileno()])
        return first, second

    def test_lastSocketsListenWhileNoneAnswers(self) -> None:
        """
        A worker not answering has its own sockets paused only while another
        serves and answers: when every worker stops answering, the socket
        of the last one found keeps listening (new connections queue there,
        not refused), and the one paused before stays paused. When the last
        one answers again, nothing moves (the connections queued are its
        to accept); when the other does, it listens again.
        """
        from tests.test_listenpause import listening

        sockets = self.reusePortGroup()
        workers = self.service.workers
        controls = [self.serving(w, 10 + w.index) for w in workers]
        workers[1].call(Snapshot, part=0).addErrback(lambda f: None)
        self.clock.advance(CALL_DEADLINE)
        self.assertEqual([listening(s) for s in sockets], [True, False])
        workers[0].call(Snapshot, part=0).addErrback(lambda f: None)
        self.clock.advance(CALL_DEADLINE)
        self.assertEqual([listening(s) for s in sockets], [True, False])
        self.assertIn("(its own socket of 1 listener(s) kept listening: no other worker serves "
                      "and answers, so new connections queue)",
                      self.logged("worker 0 (pid 10) is not answering")[0])
        self.assertEqual(self.logged("worker 1's own socket"), [])

        controls[0].calls[0][2].callback({"data": b"", "more": False})
        self.assertEqual([listening(s) for s in sockets], [True, False])
        controls[1].calls[0][2].callback({"data": b"", "more": False})
        self.assertEqual([listening(s) for s in sockets], [True, True])
        self.assertEqual(controls[1].calls[1][0], HandListener)

    def test_lastSocketsSwitchWhenTheOtherComesBack(self) -> None:
        """
        When every worker stopped answering and the one whose socket was
        paused comes back first, it listens again and the last one's socket
        (still not answering) is paused: logged once.
        """
        from tests.test_listenpause import listening

        sockets = self.reusePortGroup()
        workers = self.service.workers
        controls = [self.serving(w, 10 + w.index) for w in workers]
        workers[1].call(Snapshot, part=0).addErrback(lambda f: None)
        self.clock.advance(CALL_DEADLINE)
        workers[0].call(Snapshot, part=0).addErrback(lambda f: None)
        self.clock.advance(CALL_DEADLINE)
        controls[1].calls[0][2].callback({"data": b"", "more": False})
        self.assertEqual([listening(s) for s in sockets], [False, True])
        self.assertEqual(self.logged("worker 0's own socket"), [
            "worker 0's own socket of 1 listener(s) closed: worker 1 serves and answers"])
        self.assertEqual(controls[1].calls[1][0], HandListener)

    def test_lastSocketsListenWhileAllBackOff(self) -> None:
        """
        When every worker waits out a restart back-off, their sockets go on
        listening (new connections queue); once one restarts and serves,
        the other, still waiting, is paused.
        """
        from tests.test_listenpause import listening

        sockets = self.reusePortGroup()
        workers = self.service.workers
        for worker in workers:
            self.serving(worker, 10 + worker.index)
            self.service._backoffs[worker.index].delay(0)
        workers[0].processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.assertEqual([listening(s) for s in sockets], [False, True])
        workers[1].processEnded(Failure(ProcessTerminated(exitCode=1)))
        # Worker 0's stays paused: worker 1's listens, and queues.
        self.assertEqual([listening(s) for s in sockets], [False, True])
        self.assertIn("kept listening", self.logged("worker 1 (pid 11) died")[0])

        self.clock.advance(0.5)
        self.assertEqual(self.started, [workers[0], workers[1]])
        workers[1].processEnded(Failure(ProcessTerminated(exitCode=1)))
        control = FakeControl()
        workers[0].control = control  # type: ignore[assignment]
        workers[0].processTransport = FakeProcess(12)
        workers[0].state = "starting"
        self.service._handAndServe(workers[0], [])
        control.calls[0][2].callback({})
        self.assertEqual([listening(s) for s in sockets], [True, True])
        control.calls[1][2].callback({"pid": 12})
        self.assertEqual(workers[0].state, "serving")
        self.assertEqual([listening(s) for s in sockets], [True, False])
        self.assertEqual(self.logged("worker 1's own socket"), [
            "worker 1's own socket of 1 listener(s) closed: worker 0 serves and answers"])

    def test_reloadWhileStarting(self) -> None:
        """
        A worker that starts serving after a reload applied while it started
        (it was handed the configuration before) is given the new one, then
        the admin actions.
        """
        worker = self.service.workers[1]
        control = FakeControl()
        worker.control = control  # type: ignore[assignment]
        worker.processTransport = FakeProcess(12)
        self.service._handAndServe(worker, [])
        control.calls[0][2].callback({})
        changed = config(CONFIG.replace("max-connections = 5", "max-connections = 7"))
        self.service.loader = lambda path: changed
        self.service.runInThread = lambda f, *a: defer.maybeDeferred(f, *a)
        self.service._adminStates[("p", "one")] = "drain"
        self.assertTrue(self.successResultOf(self.service.reload()))
        control.calls[1][2].callback({"pid": 12})
        [(command, arguments, answer)] = control.calls[2:]
        self.assertEqual(unpackConfig([arguments["data"]]), changed)
        answer.callback({})
        self.assertEqual(control.calls[3][0], Reload)
        control.calls[3][2].callback({"applied": True})
        self.assertEqual([(c, a) for c, a, _ in control.calls[4:]],
                         [(Admin, {"proxy": "p", "label": "one", "action": "drain"})])

    def test_lateAnswerIgnored(self) -> None:
        """
        A call whose answer was given up on (cancelled, as the status site's
        snapshot timeout does) drops the answer when it comes, and the
        deadline timer is gone: nothing is left behind.
        """
        worker = self.service.workers[0]
        control = self.serving(worker, 10)
        asked = worker.call(Snapshot, part=0)
        asked.cancel()
        self.failureResultOf(asked, defer.CancelledError)
        control.calls[0][2].callback({"data": b"", "more": False})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(worker.answering)

    def test_startDeadline(self) -> None:
        """
        A worker that does not answer the commands that start it within
        L{START_DEADLINE} is killed (and so restarted).
        """
        worker = self.service.workers[1]
        control = FakeControl()
        worker.control = control  # type: ignore[assignment]
        worker.processTransport = process = FakeProcess(12)
        worker.pid = 12
        self.service._handAndServe(worker, [])
        self.clock.advance(START_DEADLINE - 0.1)
        self.assertEqual(process.signals, [])
        self.clock.advance(0.1)
        self.assertEqual(process.signals, ["KILL"])
        self.assertEqual(self.logged("cannot serve"), [
            "worker 1 (pid 12) cannot serve: no answer to Configure within 30s"])

    def test_stopWaitsWithoutDeadline(self) -> None:
        """
        L{Stop} has no deadline of its own (sessions may take
        shutdown-timeout): the worker is not called not answering.
        """
        self.serving(self.service.workers[0], 10)
        self.service.stopService()
        self.clock.advance(CALL_DEADLINE + 1)
        self.assertTrue(self.service.workers[0].answering)
        self.assertEqual(self.logged("not answering"), [])

    def test_workerOutput(self) -> None:
        """
        A worker's output lines are logged with its number and their level.
        """
        from twisted.logger import LogLevel

        worker = self.service.workers[0]
        worker.childDataReceived(1, b"error\tbad thing\ninfo\tpar")
        worker.childDataReceived(1, b"tial\n")
        worker.childDataReceived(2, b"Traceback\n")
        lines = [(e["log_level"], e["line"]) for e in self.events if "line" in e]
        self.assertEqual(lines, [(LogLevel.error, "bad thing"), (LogLevel.info, "partial"),
                                 (LogLevel.warn, "Traceback")])


class MergeTests(SynchronousTestCase):
    """
    The instance's status from the workers'.
    """

    def test_documents(self) -> None:
        """
        Counters are summed, settings are the first worker's, a backend's
        state is the one most worth attention, the uptime the longest.
        """
        def doc(accepted: int, state: str, uptime: float) -> dict[str, Any]:
            return {"version": "1", "uptime": uptime, "closed_at_accept": 1,
                    "proxies": [{"name": "p", "accepted": accepted, "balance": "fair",
                                 "max_connections": None,
                                 "backends": [{"label": "one", "state": state, "active": 1,
                                               "bytes_in": 10, "weight": 1,
                                               "retry_in": None}]}]}

        merged = mergeDocuments([doc(3, "up", 5.0), doc(4, "failing", 7.0)])
        self.assertEqual(merged["uptime"], 7.0)
        self.assertEqual(merged["closed_at_accept"], 2)
        [proxy] = merged["proxies"]
        self.assertEqual((proxy["name"], proxy["accepted"], proxy["balance"]), ("p", 7, "fair"))
        [backend] = proxy["backends"]
        self.assertEqual((backend["state"], backend["active"], backend["bytes_in"],
                          backend["weight"], backend["retry_in"]), ("failing", 2, 20, 1, None))

    def test_documentsDifferentBackends(self) -> None:
        """
        Backends are matched by label: one that only some workers list (a
        DNS answer they have not all had yet) is shown with their figures.
        """
        def doc(*labels: str) -> dict[str, Any]:
            return {"proxies": [{"name": "p", "accepted": 1, "backends": [
                {"label": label, "active": 1} for label in labels]}]}

        merged = mergeDocuments([doc("a", "b"), doc("b", "c"), doc("b")])
        self.assertEqual([(b["label"], b["active"]) for b in merged["proxies"][0]["backends"]],
                         [("a", 1), ("b", 3), ("c", 1)])
        self.assertEqual(merged["proxies"][0]["accepted"], 3)

    def test_metrics(self) -> None:
        """
        Samples are summed under their names, and each worker's are listed
        as C{sockproxy_worker_*} with a C{worker} label.
        """
        text = ("# HELP sockproxy_accepted Accepted.\n# TYPE sockproxy_accepted counter\n"
                'sockproxy_accepted_total{proxy="p"} %d\n'
                "# HELP process_open_fds Open.\n# TYPE process_open_fds gauge\n"
                "process_open_fds 9.0\n")
        merged = mergeMetrics([(0, text % 3), (1, text % 4)])
        self.assertIn('sockproxy_accepted_total{proxy="p"} 7\n', merged)
        self.assertIn('sockproxy_worker_accepted_total{proxy="p",worker="1"} 4\n', merged)
        self.assertIn('sockproxy_worker_process_open_fds{worker="0"} 9.0\n', merged)
        self.assertNotIn("\nprocess_open_fds", merged)
        self.assertEqual(merged.count("# TYPE sockproxy_accepted counter"), 1)

    def test_statistics(self) -> None:
        """
        lighttpd's counters are summed, in lighttpd's order.
        """
        self.assertEqual(
            mergeStatistics(["sockproxy.requests: 2\ngw.active-requests: 1\n",
                             "sockproxy.requests: 3\ngw.active-requests: 0\n"]),
            "gw.active-requests: 1\nsockproxy.requests: 5\n",
        )


class ReplaceTests(SynchronousTestCase):
    """
    Worker limits as the status shows them.
    """

    def test_statusLimitsAddUp(self) -> None:
        """
        The workers' backend limits, summed as the instance's status sums
        them, are the configured limit.
        """
        whole = config()
        parts = [shareOf(whole, i, 2) for i in range(2)]
        self.assertEqual(sum(p.proxies[0].backends[0].maxConnections for p in parts), 3)
        self.assertEqual(replace(whole, workers=1).workers, 1)


class AdoptingMemoryReactor(MemoryReactorClock):
    """
    A memory reactor whose C{adoptStreamPort} takes any family (the
    memory reactor's own refuses unix sockets) and records it.
    """

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: Any, factory: Any) -> Any:
        self.adoptedPorts.append((fileDescriptor, addressFamily, factory))
        return object()


@implementer(IOpenSSLContextFactory)
class _Contexts:
    """
    A TLS server context factory.
    """

    def getContext(self) -> Any:
        from OpenSSL import SSL

        return SSL.Context(SSL.TLS_METHOD)


class AdoptingReactorTests(SynchronousTestCase):
    """
    L{AdoptingReactor}: a worker's listeners adopt the socket handed over.
    """

    def handed(self, family: int = socket.AF_INET) -> Any:
        import os

        from txsockproxy.adopting import InheritedSocket

        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        return InheritedSocket(os.dup(a.fileno()), family)

    def test_listenAdopts(self) -> None:
        """
        An endpoint built on it adopts the socket, whatever it would have
        bound, once; the descriptor handed over is then closed.
        """
        import os

        from twisted.internet.endpoints import serverFromString
        from twisted.internet.error import CannotListenError
        from twisted.internet.interfaces import IReactorTCP, IReactorUNIX
        from twisted.internet.protocol import Factory

        from txsockproxy.adopting import AdoptingReactor

        reactor = AdoptingMemoryReactor()
        for description, family in (("tcp:8080:interface=10.1.2.3", socket.AF_INET),
                                    ("unix:/nowhere/s", socket.AF_UNIX)):
            inherited = self.handed(family)
            fd = inherited.fileno
            adopting = AdoptingReactor(reactor, inherited)
            self.assertTrue(IReactorTCP.providedBy(adopting))
            self.assertTrue(IReactorUNIX.providedBy(adopting))
            factory = Factory()
            self.successResultOf(serverFromString(adopting, description).listen(factory))
            self.assertEqual(reactor.adoptedPorts[-1], (fd, family, factory))
            self.assertEqual(inherited.fileno, -1)
            self.assertRaises(OSError, os.fstat, fd)
            self.failureResultOf(serverFromString(adopting, description).listen(factory),
                                 CannotListenError)
        self.assertEqual(reactor.tcpServers, [])
        self.assertEqual(reactor.unixServers, [])

    def test_listenSSLWrapsFactory(self) -> None:
        """
        C{listenSSL} adopts the socket for the factory under TLS.
        """
        from twisted.internet.protocol import Factory
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from txsockproxy.adopting import AdoptingReactor

        reactor = AdoptingMemoryReactor()
        factory = Factory()
        AdoptingReactor(reactor, self.handed()).listenSSL(443, factory, _Contexts())
        adopted = reactor.adoptedPorts[0][2]
        self.assertIsInstance(adopted, TLSMemoryBIOFactory)
        self.assertIs(adopted.wrappedFactory, factory)


class ReusePortReactorTests(SynchronousTestCase):
    """
    L{ReusePortReactor}: one C{SO_REUSEPORT} socket per worker.
    """

    def test_socketsShareTheAddress(self) -> None:
        """
        C{listenTCP} on port 0 binds C{count} sockets to the same, chosen
        port: the first adopted as the reactor's port, the others left to
        the caller, all listening.
        """
        import os

        from twisted.internet.protocol import Factory

        from txsockproxy.reuseport import ReusePortReactor

        reactor = MemoryReactorClock()
        binder = ReusePortReactor(reactor, 3)
        binder.listenTCP(0, Factory(), 5, "127.0.0.1")
        self.addCleanup(binder.close)
        [(fd, family, _)] = reactor.adoptedPorts
        self.assertEqual(family, socket.AF_INET)
        self.assertEqual(len(binder.extra), 2)
        ports = set()
        for extra in binder.extra:
            s = socket.socket(fileno=os.dup(extra))
            self.addCleanup(s.close)
            self.assertEqual(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), 1)
            self.assertEqual(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1)
            ports.add(s.getsockname())
        self.assertEqual(len(ports), 1)
        binder.close()
        self.assertEqual(binder.extra, [])
