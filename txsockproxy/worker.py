"""
A worker process of a proxy run with C{workers = N}: started by the parent
(L{txsockproxy.workers}) as C{python -m txsockproxy.worker}, it is handed
the listening sockets and the configuration the parent last loaded over its
control connection (AMP over a unix socket pair, descriptor 3): it never
reads the configuration file itself. It serves the sockets with the same L{ProxyService} a single
process runs (accelerated where the accelerator applies), and does what the
parent asks: reload, stop, a status snapshot, an admin action.

Its limits are its share of the instance's (L{shareOf}); it serves no status
site (the parent serves the instance's); its log lines go to its standard
output, which the parent logs with the worker's number.

It ignores SIGHUP and SIGINT (the parent hands them on as it decides: a
Ctrl-C in a terminal reaches the whole process group); SIGTERM, or the
parent going away, stops it gracefully.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from dataclasses import replace
from typing import Any, Callable, Optional, TextIO

from prometheus_client import generate_latest
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    formatEvent,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from txsockproxy.adopting import InheritedSocket
from txsockproxy.config import BackendConfig, Config, ConfigError, Problem, ProxyConfig
from txsockproxy.listening import LISTENING
from txsockproxy.service import ListenKey, ProxyService, StartupError, listenKeys
from txsockproxy.status import adminAction, metricsRegistry, serverStatistics, statusDocument
from txsockproxy.workerprotocol import (
    Admin,
    Configure,
    HandListener,
    Ping,
    QuietAMP,
    Reload,
    Serve,
    Snapshot,
    StartFailed,
    Stop,
    decodeKey,
    packSnapshot,
    unpackConfig,
)

# The descriptor the control connection is on.
CONTROL_FD = 3


def share(limit: int, index: int, count: int) -> int:
    """
    Worker C{index}'s share of a limit of C{limit} among C{count} workers:
    the shares add up to C{limit} (the first C{limit % count} workers have
    one more); 0 (no limit) stays 0. A limit below C{count} gives some
    workers a share of 0, which would mean no limit: they get 1, and the
    instance may then hold C{count} sessions rather than C{limit}.
    """
    if limit <= 0:
        return 0
    part = limit // count + (1 if index < limit % count else 0)
    return max(part, 1)


def _backendShare(backend: BackendConfig, index: int, count: int) -> BackendConfig:
    return replace(backend, maxConnections=share(backend.maxConnections, index, count))


def _proxyShare(proxy: ProxyConfig, index: int, count: int) -> ProxyConfig:
    protection = proxy.protection
    return replace(
        proxy,
        protection=replace(
            protection,
            maxConnections=share(protection.maxConnections, index, count),
            maxQueue=share(protection.maxQueue, index, count),
        ),
        backends=tuple(_backendShare(b, index, count) for b in proxy.backends),
        routes=tuple(
            replace(route, backends=tuple(_backendShare(b, index, count) for b in route.backends))
            for route in proxy.routes
        ),
    )


def shareOf(config: Config, index: int, count: int) -> Config:
    """
    C{config} as worker C{index} of C{count} runs it: the instance-wide
    session limits (the global C{max-connections}, each proxy's
    C{max-connections} and C{max-queue}, each backend's C{max-connections})
    are split among the workers (L{share}); no status site (the parent
    serves the instance's). Per-client limits and rates stay as they are:
    they hold per worker.
    """
    return replace(
        config,
        status=None,
        maxConnections=share(config.maxConnections, index, count),
        proxies=tuple(_proxyShare(p, index, count) for p in config.proxies),
    )


class Worker:
    """
    What a worker process does when its parent asks.

    @ivar inherited: the listening sockets handed so far, by listener key.
    @ivar configuration: the configuration handed last (L{Configure}), as
        the parent loaded it, or L{None}.
    @ivar service: the proxy service, once serving.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        configPath: str,
        index: int,
        count: int,
        debug: Optional[int] = None,
        serviceFactory: Callable[..., ProxyService] = ProxyService,
    ) -> None:
        self.reactor = reactor
        self.configPath = configPath
        self.index = index
        self.count = count
        self.debug = debug
        self._serviceFactory = serviceFactory
        self.inherited: dict[ListenKey, InheritedSocket] = {}
        self.configuration: Optional[Config] = None
        self._configParts: list[bytes] = []
        self.service: Optional[ProxyService] = None
        self._registry: Any = None
        self._parts: list[bytes] = []
        self._stopping: Optional[defer.Deferred[None]] = None
        # Why this reactor runs (for the start-up log).
        self.reactorChoice = "given by the program that embeds the proxy"

    def configure(self, part: int, data: bytes, more: bool) -> None:
        """
        Take part C{part} of the configuration the parent hands (see
        L{Configure}); the last part replaces L{configuration}.

        @raise StartFailed: the parts are out of order or make no
            configuration.
        """
        if part == 0:
            self._configParts = []
        if part != len(self._configParts):
            self._configParts = []
            raise StartFailed(f"configuration part {part} out of order")
        self._configParts.append(data)
        if more:
            return
        parts, self._configParts = self._configParts, []
        try:
            self.configuration = unpackConfig(parts)
        except ValueError as e:
            raise StartFailed(str(e)) from None

    def load(self, path: str) -> Config:
        """
        The configuration handed last as this worker runs it (L{shareOf},
        and the command line's C{--debug}); C{path} (the file it came from)
        is not read: the parent read it (what the proxy service's reload
        calls).

        @raise txsockproxy.config.ConfigError: none was handed.
        """
        if self.configuration is None:
            raise ConfigError([Problem(path, None, "", "no configuration handed by the parent")])
        config = shareOf(self.configuration, self.index, self.count)
        if self.debug is not None:
            config = replace(config, debug=self.debug)
        return config

    def hand(self, key: ListenKey, inherited: InheritedSocket) -> None:
        """
        Keep the listening socket of listener C{key}: a listener built
        later adopts it. One handed again replaces the earlier one; the
        running listener of C{key} adopts it when its own copy was closed
        (the parent paused the socket while this worker did not answer: the
        reactor found it no longer listening, and closed its port).
        """
        old = self.inherited.get(key)
        if old is not None:
            old.close()
        listener = self._listenerOf(key)
        if old is None or listener is None:
            self.inherited[key] = inherited
            return
        # The listener's endpoint adopts the socket object it was built
        # with: that one holds the new descriptor.
        old.fileno, old.family = inherited.fileno, inherited.family
        if getattr(listener.port, "connected", True):
            return
        listener.port = None
        try:
            listener.bind()
            if listener.port is not None:
                # The closed port's address was never taken out.
                LISTENING.remove(listener.port.getHost())
        except StartupError as e:
            self.log.error("{listen}: cannot listen again: {error}",
                           listen=listener.description, error=str(e))

    def _listenerOf(self, key: ListenKey) -> Any:
        """
        The running listener of C{key}, or L{None}.
        """
        service = self.service
        if service is None:
            return None
        keyed = dict(zip(listenKeys(service.config), service.listeners, strict=False))
        return keyed.get(key)

    def serve(self) -> int:
        """
        Serve the configuration handed with the sockets handed.

        @return: this process's id.
        @raise StartFailed: it cannot (saying why).
        """
        if self.service is not None:
            return os.getpid()
        try:
            config = self.load(self.configPath)
            service = self._serviceFactory(
                config, self.reactor, configPath=self.configPath, loader=self.load,
                inherited=self.inherited,
            )
            service.reactorChoice = self.reactorChoice
            service.privilegedStartService()
            service.startService()
        except StartupError as e:
            raise StartFailed(str(e)) from None
        except Exception as e:
            raise StartFailed(f"{type(e).__name__}: {e}") from None
        self.service = service
        # Rates are sampled while a status site listens; the instance's is
        # the parent's, which reads them from here.
        service.statusView.rates.start()
        self._registry = metricsRegistry(service.statusView)
        return os.getpid()

    def reload(self) -> defer.Deferred[bool]:
        """
        Apply the configuration handed since, as one process does on SIGHUP.

        @return: a Deferred firing with whether the configuration was applied.
        """
        if self.service is None:
            return defer.succeed(False)
        return self.service.reload()

    def stop(self) -> defer.Deferred[None]:
        """
        Stop gracefully (once, however often asked).

        @return: a Deferred that fires when the sessions have ended.
        """
        if self._stopping is None:
            if self.service is None or not self.service.running:
                self._stopping = defer.succeed(None)
            else:
                self.service.statusView.rates.stop()
                self._stopping = defer.maybeDeferred(self.service.stopService)
        stopping: defer.Deferred[None] = defer.Deferred()

        def tell(result: Any) -> Any:
            stopping.callback(None)
            return result

        self._stopping.addBoth(tell)
        return stopping

    def snapshot(self) -> dict[str, Any]:
        """
        This worker's status now: C{/status.json}'s document, C{/metrics}'
        text, C{/server-statistics}' text, and its pid and number.
        """
        if self.service is None:
            return {"index": self.index, "pid": os.getpid(), "serving": False}
        view = self.service.statusView
        return {
            "index": self.index,
            "pid": os.getpid(),
            "serving": True,
            "status": statusDocument(view),
            "metrics": generate_latest(self._registry).decode("utf-8"),
            "statistics": serverStatistics(view),
        }

    def snapshotPart(self, part: int) -> tuple[bytes, bool]:
        """
        Part C{part} of a snapshot: part 0 takes a new one.

        @return: the part and whether more follow.
        """
        if part == 0:
            self._parts = packSnapshot(self.snapshot())
        if not 0 <= part < len(self._parts):
            return b"", False
        return self._parts[part], part + 1 < len(self._parts)

    def admin(self, proxy: str, label: str, action: str,
              timeout: Optional[float]) -> tuple[int, dict[str, Any]]:
        """
        An admin action on one backend.

        @return: the HTTP status code and JSON document answered.
        """
        if self.service is None:
            return 503, {"error": "worker not serving yet"}
        return adminAction(self.service.statusView, proxy, label, action, timeout)


class WorkerControl(QuietAMP):
    """
    The worker's end of the control connection: runs the parent's commands
    on a L{Worker}; when the parent goes away, the worker stops.
    """

    def __init__(self, worker: Worker, onLost: Callable[[], None]) -> None:
        super().__init__()
        self.worker = worker
        self._onLost = onLost

    @HandListener.responder
    def handListener(self, key: str, family: int, socket: int) -> dict[str, Any]:
        self.worker.hand(decodeKey(key), InheritedSocket(socket, family))
        return {}

    @Configure.responder
    def configure(self, part: int, data: bytes, more: bool) -> dict[str, Any]:
        self.worker.configure(part, data, more)
        return {}

    @Serve.responder
    def serve(self) -> dict[str, Any]:
        return {"pid": self.worker.serve()}

    @Reload.responder
    def reload(self) -> defer.Deferred[dict[str, Any]]:
        return self.worker.reload().addCallback(lambda applied: {"applied": applied})

    @Stop.responder
    def stop(self) -> defer.Deferred[dict[str, Any]]:
        return self.worker.stop().addCallback(lambda _: {})

    @Snapshot.responder
    def snapshot(self, part: int) -> dict[str, Any]:
        data, more = self.worker.snapshotPart(part)
        return {"data": data, "more": more}

    @Ping.responder
    def ping(self) -> dict[str, Any]:
        return {}

    @Admin.responder
    def admin(self, proxy: str, label: str, action: str,
              timeout: Optional[float] = None) -> dict[str, Any]:
        code, body = self.worker.admin(proxy, label, action, timeout)
        return {"code": code, "body": json.dumps(body)}

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self._onLost()


_LEVELS = {
    LogLevel.debug: "debug", LogLevel.info: "info", LogLevel.warn: "warn",
    LogLevel.error: "error", LogLevel.critical: "critical",
}


@implementer(ILogObserver)
class LineObserver:
    """
    Writes each log event as lines C{LEVEL<TAB>TEXT} (a traceback's lines
    each with the event's level) for the parent to log.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        level = _LEVELS.get(event.get("log_level", LogLevel.info), "info")
        text = formatEvent(event) or ""
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}".strip()
        try:
            for line in text.splitlines() or [""]:
                self._out.write(f"{level}\t{line}\n")
            self._out.flush()
        except (OSError, ValueError):
            pass


class _One(Factory):
    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Any:
        return self._protocol


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m txsockproxy.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--debug", type=int, default=None)
    parser.add_argument("--control-fd", type=int, default=CONTROL_FD)
    parser.add_argument("--reactor", default=None)
    # The configuration's accelerator key, which picks the reactor before
    # the configuration itself is handed.
    parser.add_argument("--accelerator", default="auto")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> None:
    """
    Run a worker process: what the parent spawns.
    """
    args = _arguments(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from txsockproxy.accelerator import installReactor, setting

    if args.reactor is not None:
        from twisted.application.reactors import installReactor as installNamed

        installNamed(args.reactor)
        reactorChoice = "chosen with twistd --reactor"
    else:
        reactorChoice = installReactor(setting(args.accelerator)) or "installed already"
    from twisted.internet import reactor as installed

    reactor: Any = installed

    globalLogBeginner.beginLoggingTo([LineObserver(sys.stdout)], redirectStandardIO=False)
    worker = Worker(reactor, args.config, args.index, args.count, args.debug)
    worker.reactorChoice = reactorChoice
    exiting: list[bool] = []

    def stopAndExit() -> None:
        if exiting:
            return
        exiting.append(True)
        worker.stop().addBoth(lambda _: reactor.stop())

    def parentGone() -> None:
        reactor.callLater(0, stopAndExit)

    control = WorkerControl(worker, parentGone)
    reactor.adoptStreamConnection(args.control_fd, socket.AF_UNIX, _One(control))
    os.close(args.control_fd)
    signal.signal(signal.SIGTERM, lambda signum, frame: reactor.callFromThread(stopAndExit))
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    main()


__all__ = ["CONTROL_FD", "LineObserver", "Worker", "WorkerControl", "main", "share", "shareOf"]
