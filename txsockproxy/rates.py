"""
Rates of counters that only grow (sessions, bytes), as the status page shows
them: sampled once a second on the reactor, each gives its rate over the last
second, the highest such rate seen, and a short history of averages for the
page's sparklines.

Sampling is a chain of C{callLater} calls, running only while someone
L{RateTracker.start}ed it and has not L{RateTracker.stop}ped it: the status
site starts it when it starts listening and stops it when it stops.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Mapping, Optional, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Seconds between two samples.
INTERVAL = 1.0
#: Samples averaged into one point of the history.
POINT_SAMPLES = 5
#: Points of history kept: with the two above, the last 10 minutes.
POINTS = 120

#: What a rate is kept by: a proxy's name, or a proxy's name and a
#: backend's label.
Key = tuple[str, ...]


class Rate:
    """
    The rates of the counters of one thing (a proxy, a backend), in units a
    second.

    @ivar current: each counter's rate over the last sample interval.
    @ivar highest: each counter's highest C{current} so far.
    @ivar history: the oldest first, each counter's average rate over
        C{POINT_SAMPLES} intervals, for at most C{POINTS} of them.
    """

    def __init__(self, values: Sequence[int], points: int) -> None:
        self.last = tuple(values)
        size = len(values)
        self.current = (0.0,) * size
        self.highest = (0.0,) * size
        self.history: deque[tuple[float, ...]] = deque(maxlen=points)
        self._sums = [0.0] * size
        self._samples = 0


class RateTracker:
    """
    The rates of the counters that C{read} returns, by key, sampled every
    C{interval} seconds of C{clock} while started.

    A counter that went down (a backend replaced by a reload has new
    counters) counts as no change over that interval. A key that C{read}
    no longer returns is forgotten.

    @ivar rates: the L{Rate} of each key sampled so far.
    """

    def __init__(
        self,
        clock: IReactorTime,
        read: Callable[[], Mapping[Key, Sequence[int]]],
        interval: float = INTERVAL,
        pointSamples: int = POINT_SAMPLES,
        points: int = POINTS,
    ) -> None:
        self._clock = clock
        self._read = read
        self.interval = interval
        self.pointSamples = pointSamples
        self.points = points
        self.rates: dict[Key, Rate] = {}
        self._users = 0
        self._call: Optional[IDelayedCall] = None
        self._lastTime = 0.0

    @property
    def running(self) -> bool:
        """
        Whether it samples now.
        """
        return self._call is not None

    def start(self) -> None:
        """
        Start sampling, unless started already: each call needs a L{stop}.
        """
        self._users += 1
        if self._users == 1:
            self._lastTime = self._clock.seconds()
            for key, values in self._read().items():
                self.rates[key] = Rate(values, self.points)
            self._call = self._clock.callLater(self.interval, self._tick)

    def stop(self) -> None:
        """
        Stop sampling when every L{start} has had its C{stop}.
        """
        if self._users == 0:
            return
        self._users -= 1
        if self._users == 0 and self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _tick(self) -> None:
        self._call = self._clock.callLater(self.interval, self._tick)
        self.sample()

    def sample(self) -> None:
        """
        Read the counters and update every rate now (L{start} has it done
        every C{interval} seconds).
        """
        now = self._clock.seconds()
        elapsed = now - self._lastTime
        self._lastTime = now
        seen = self._read()
        rates = self.rates
        for key in [k for k in rates if k not in seen]:
            del rates[key]
        for key, values in seen.items():
            rate = rates.get(key)
            if rate is None or len(rate.last) != len(values):
                rates[key] = Rate(values, self.points)
                continue
            current = tuple(
                (new - old) / elapsed if new >= old and elapsed > 0 else 0.0
                for new, old in zip(values, rate.last, strict=True)
            )
            rate.last = tuple(values)
            rate.current = current
            rate.highest = tuple(map(max, rate.highest, current))
            sums = rate._sums
            for i, value in enumerate(current):
                sums[i] += value
            rate._samples += 1
            if rate._samples == self.pointSamples:
                rate.history.append(tuple(s / self.pointSamples for s in sums))
                rate._sums = [0.0] * len(sums)
                rate._samples = 0

    def rate(self, key: Key) -> Optional[Rate]:
        """
        The rates of C{key}, if it was sampled.
        """
        return self.rates.get(key)
