"""
Rate-limited logging, for log lines that a client (or a flood of clients)
can trigger: a refused admin request, a malformed header, a session closed
for lack of descriptors. A flood must not fill the disk with them, nor hide
the first of them.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel


class RateLimitedLog:
    """
    Logs at most C{burst} events in each window of C{interval} seconds
    (windows start with the first event after a quiet one); the events past
    that are counted, and one summary line says how many were left out when
    the window ends.

    One instance per kind of event: each has its own budget.

    @ivar suppressed: events left out in the current window.
    """

    def __init__(
        self,
        clock: IReactorTime,
        log: Logger,
        what: str,
        interval: float = 10.0,
        burst: int = 10,
        now: Optional[Callable[[], str]] = None,
    ) -> None:
        """
        @param what: what the events are, for the summary line (e.g.
            C{"refused admin requests"}).
        @param now: gives, for the summary line, how things stand when it
            is logged (e.g. C{"down"}), when the events left out change a
            state the last line logged no longer tells.
        """
        self.clock = clock
        self.log = log
        self.what = what
        self.interval = interval
        self.burst = burst
        self.now = now
        self.suppressed = 0
        self._logged = 0
        self._window: Optional[IDelayedCall] = None

    def emit(self, level: LogLevel, format: str, **kwargs: Any) -> bool:
        """
        Log C{format} with C{kwargs} at C{level}, unless this window's budget
        is spent.

        @return: whether the event was logged.
        """
        if self._window is None:
            self._logged = 0
            self._window = self.clock.callLater(self.interval, self._windowEnded)
        if self._logged >= self.burst:
            self.suppressed += 1
            return False
        self._logged += 1
        self.log.emit(level, format, **kwargs)
        return True

    def _windowEnded(self) -> None:
        self._window = None
        if self.suppressed:
            count, self.suppressed = self.suppressed, 0
            if self.now is None:
                self.log.warn(
                    "{count} more {what} not logged in the last {interval:g}s",
                    count=count, what=self.what, interval=self.interval,
                )
            else:
                self.log.warn(
                    "{count} more {what} not logged in the last {interval:g}s; now {now}",
                    count=count, what=self.what, interval=self.interval, now=self.now(),
                )

    def stop(self) -> None:
        """
        Cancel the pending window (the owner is shutting down): nothing
        further is logged about it.
        """
        if self._window is not None and self._window.active():
            self._window.cancel()
        self._window = None
        self.suppressed = 0


__all__ = ["RateLimitedLog"]
