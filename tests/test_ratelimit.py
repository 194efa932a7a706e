"""
Tests for L{txsockproxy.ratelimit}: log lines a flood can trigger are
bounded per window, and what was left out is summed up.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from txsockproxy.ratelimit import RateLimitedLog


class RateLimitedLogTests(SynchronousTestCase):
    """
    L{RateLimitedLog.emit} logs at most C{burst} events per C{interval},
    then one summary line with the count of those left out.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.limited = RateLimitedLog(
            self.clock, Logger(observer=self.events.append), "refused requests",
            interval=10, burst=3,
        )

    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def test_burstThenSummary(self) -> None:
        """
        A flood of 100 events in one window gives C{burst} lines, then one
        line counting the other 97 when the window ends.
        """
        logged = [
            self.limited.emit(LogLevel.warn, "refused {peer}", peer=str(i)) for i in range(100)
        ]
        self.assertEqual(logged, [True] * 3 + [False] * 97)
        self.assertEqual(self.lines(), ["refused 0", "refused 1", "refused 2"])
        self.clock.advance(10)
        self.assertEqual(
            self.lines()[3:], ["97 more refused requests not logged in the last 10s"]
        )
        self.assertEqual(self.events[3]["log_level"], LogLevel.warn)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_newWindowNewBudget(self) -> None:
        """
        Once a window is over, the next event starts a new one with a full
        budget; a window in which nothing was left out ends silently.
        """
        for i in range(3):
            self.limited.emit(LogLevel.info, "e{i}", i=i)
        self.clock.advance(10)
        self.assertEqual(len(self.events), 3)
        self.assertTrue(self.limited.emit(LogLevel.info, "later"))
        self.assertEqual(self.lines()[-1], "later")

    def test_stop(self) -> None:
        """
        L{RateLimitedLog.stop} cancels the window's reactor call: no summary
        is logged after it.
        """
        for _ in range(5):
            self.limited.emit(LogLevel.info, "e")
        self.limited.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.events), 3)
