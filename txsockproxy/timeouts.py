"""
Timeouts that are almost always cancelled, cheaply.

Every session arms a connect timeout, and every session that half-closes a
half-closed timeout; nearly all are cancelled long before they expire.  With
the reactor's C{callLater}, each is a C{DelayedCall} (a dozen attributes, a
place in the reactor's heap, a sweep once cancelled).  L{Timeouts} keeps
timeouts of one length in a queue instead: timeouts of one length armed one
after the other expire in the order they were armed, so the queue needs no
sorting, and one C{DelayedCall} (for the earliest live timeout) serves the
whole queue.  A cancelled timeout is only marked; the queue skips it when it
reaches it, or sweeps when more than half of it is cancelled.

Timeouts expire exactly when the reactor's would (the queue's call is set
for the earliest live timeout), and the queue leaves no call pending once no
timeout in it is live.  A timeout that would expire before the last one of
its queue (the clock went back) is left to the reactor's C{callLater}.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

from twisted.logger import Logger

_log = Logger()

# The queue's call while its timeouts are being run (see _Queue.expire).
_RUNNING: Any = object()

# A timeout this close to due is run (rather than waited for again over a
# rounding error).
_EPSILON = 1e-6


class Timeout:
    """
    One timeout of a L{Timeouts}: what C{callLater} returns, as far as a
    session uses it (C{active()}, C{cancel()}).
    """

    __slots__ = ("time", "func", "queue")

    def __init__(self, time: float, func: Callable[[], Any], queue: _Queue) -> None:
        self.time = time
        self.func: Optional[Callable[[], Any]] = func
        self.queue = queue

    def active(self) -> bool:
        return self.func is not None

    def cancel(self) -> None:
        if self.func is not None:
            self.func = None
            self.queue.cancelled()


class _Queue:
    """
    The timeouts of one length, in the order they expire.
    """

    __slots__ = ("clock", "entries", "live", "call")

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.entries: deque[Timeout] = deque()
        self.live = 0
        self.call: Any = None

    def add(self, delay: float, func: Callable[[], Any]) -> Any:
        clock = self.clock
        time = clock.seconds() + delay
        entries = self.entries
        if entries and time < entries[-1].time:
            return clock.callLater(delay, func)
        timeout = Timeout(time, func, self)
        entries.append(timeout)
        self.live += 1
        if self.call is None:
            self.call = clock.callLater(delay, self.expire)
        return timeout

    def cancelled(self) -> None:
        self.live -= 1
        entries = self.entries
        if not self.live:
            entries.clear()
            if self.call is not None and self.call is not _RUNNING:
                self.call.cancel()
                self.call = None
        elif len(entries) > 64 and self.live * 2 < len(entries):
            self.entries = deque(t for t in entries if t.func is not None)

    def expire(self) -> None:
        """
        Run the timeouts due, then wait for the earliest live one left.
        """
        # Timeouts added meanwhile must not set a call of their own: the
        # earliest live one left gets it, below.
        self.call = _RUNNING
        try:
            now = self.clock.seconds()
            entries = self.entries
            while entries:
                timeout = entries[0]
                func = timeout.func
                if func is None:
                    entries.popleft()
                    continue
                if timeout.time > now + _EPSILON:
                    break
                entries.popleft()
                timeout.func = None
                self.live -= 1
                try:
                    func()
                except Exception:
                    _log.failure("while handling a timeout")
                # A timeout run may have cancelled or added others.
                entries = self.entries
        finally:
            # Even if a BaseException escapes (else the queue never runs
            # again); from the time now, not before the timeouts ran (else
            # the next one is late by their run time); and a hair early, as
            # a time recomputed from a delay may round up past the timeout's
            # own (expire runs a timeout that close to due).
            self.call = None
            if self.live:
                delay = self.entries[0].time - self.clock.seconds() - _EPSILON / 2
                self.call = self.clock.callLater(max(0.0, delay), self.expire)


class Timeouts:
    """
    C{callLater} for timeouts, one queue per length (see the module's
    docstring).
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._queues: dict[float, _Queue] = {}

    def seconds(self) -> float:
        return float(self.clock.seconds())

    def callLater(self, delay: float, func: Callable[[], Any]) -> Any:
        """
        Call C{func} in C{delay} seconds, unless cancelled.

        @return: an object with C{active()} and C{cancel()}.
        """
        queue = self._queues.get(delay)
        if queue is None:
            if len(self._queues) >= 64:
                # Lengths of earlier configurations: drop their empty queues.
                self._queues = {d: q for d, q in self._queues.items() if q.live}
            if len(self._queues) >= 64:
                # Not a timeout of the configuration: no queue for it.
                return self.clock.callLater(delay, func)
            queue = self._queues[delay] = _Queue(self.clock)
        return queue.add(delay, func)


__all__ = ["Timeout", "Timeouts"]
