"""
Pausing the proxy's listeners rather than accepting what cannot be served:

  - at the global C{max-connections} (sessions of all proxies), until a
    session ends: clients wait in the system's listen backlog;
  - when accepting fails for lack of descriptors or memory (C{EMFILE},
    C{ENFILE}, C{ENOBUFS}, C{ENOMEM}): Twisted's port logs the failure and
    returns, and its socket, still readable, would be read again at once
    for ever (a spin at 100 % CPU). The listeners pause, and resume after
    a back-off (0.1 s, doubling to 2 s while it goes on) or as soon as a
    session ends. One line when an episode starts, one when it ends.

Listeners are paused with the public C{stopReading}/C{startReading} of the
listening ports (Twisted's descriptors); a port without them is left as it
is.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import ILogObserver, Logger, LogPublisher, globalLogPublisher
from zope.interface import implementer

# What Twisted's port logs when accept() fails for lack of a resource (its
# EMFILE recovery first closes the waiting clients, and logs that too).
ACCEPT_FAILED_FORMATS = frozenset({
    "Could not accept new connection ({acceptError})",
    "EMFILE encountered; releasing reserved file descriptor.",
})

FIRST_BACKOFF = 0.1
MAX_BACKOFF = 2.0


@implementer(ILogObserver)
class AcceptGate:
    """
    Pauses and resumes the listeners of the proxies.

    @ivar limit: the global C{max-connections}; 0: none.
    @ivar pausedForLimit: whether the listeners are paused at the limit.
    @ivar starved: whether an out-of-descriptors episode is going on.
    @ivar episodes: out-of-descriptors episodes, ever.
    @ivar limitPauses: times the listeners were paused at the limit, ever.
    """

    log = Logger(namespace="txsockproxy.acceptgate")

    def __init__(
        self,
        clock: IReactorTime,
        ports: Callable[[], Iterable[Any]],
        publisher: LogPublisher = globalLogPublisher,
    ) -> None:
        self.clock = clock
        self.ports = ports
        self.publisher = publisher
        self.limit = 0
        self.pausedForLimit = False
        self.starved = False
        self.episodes = 0
        self.limitPauses = 0
        self._backoff = FIRST_BACKOFF
        self._retry: Optional[IDelayedCall] = None
        self._since = 0.0
        self._failures = 0
        self._probing = False
        self._paused = False
        self._started = False
        self._lastCount = 0

    # -- the global limit ------------------------------------------------------

    def sessionsChanged(self, count: int) -> None:
        """
        The proxies hold C{count} sessions now.
        """
        if self.limit and count >= self.limit:
            if not self.pausedForLimit:
                self.pausedForLimit = True
                self.limitPauses += 1
                self.log.warn(
                    "{count} sessions open, the global max-connections: not accepting "
                    "until one ends", count=count,
                )
                self._update()
        elif self.pausedForLimit:
            self.pausedForLimit = False
            self.log.info("below the global max-connections again: accepting")
            self._update()
        if self.starved and not self._probing and count < self._lastCount:
            # A session ended: descriptors may be free again; try now.
            self._retryNow()
        self._lastCount = count

    # -- out of descriptors ----------------------------------------------------

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_format") in ACCEPT_FAILED_FORMATS:
            self.acceptFailed(str(event.get("acceptError") or "EMFILE"))

    def acceptFailed(self, error: str) -> None:
        """
        A listener could not accept for lack of a resource (C{error}).
        """
        self._failures += 1
        if not self.starved:
            self.starved = True
            self.episodes += 1
            self._since = self.clock.seconds()
            self._backoff = FIRST_BACKOFF
            self.log.error(
                "accepting failed ({error}: out of file descriptors or memory): listeners "
                "paused, retrying after a back-off of up to {most:g}s",
                error=error, most=MAX_BACKOFF,
            )
        elif self._probing:
            # Resumed, and failing again: wait longer this time.
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self._probing = False
        self._cancelRetry()
        self._retry = self.clock.callLater(self._backoff, self._retryNow)
        self._update()

    def _cancelRetry(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _retryNow(self) -> None:
        # Resume, and call the episode over if a back-off passes without a
        # failed accept.
        self._cancelRetry()
        self._probing = True
        self._update()
        self._retry = self.clock.callLater(self._backoff, self._quiet)

    def _quiet(self) -> None:
        self._retry = None
        self._probing = False
        self.starved = False
        self.log.info(
            "accepting again, after {seconds:.1f}s out of descriptors ({failures} failed "
            "accepts)", seconds=self.clock.seconds() - self._since, failures=self._failures,
        )
        self._failures = 0
        self._update()

    # -- pausing ---------------------------------------------------------------

    def _update(self) -> None:
        pause = self.pausedForLimit or (self.starved and not self._probing)
        if pause == self._paused:
            return
        self._paused = pause
        for port in self.ports():
            method = getattr(port, "stopReading" if pause else "startReading", None)
            if method is not None:
                method()

    def start(self) -> None:
        """
        Watch Twisted's accept failures.
        """
        if not self._started:
            self._started = True
            self.publisher.addObserver(self)

    def stop(self) -> None:
        """
        Stop watching; cancel a pending retry.
        """
        if self._started:
            self._started = False
            self.publisher.removeObserver(self)
        self._cancelRetry()


__all__ = ["ACCEPT_FAILED_FORMATS", "AcceptGate"]
