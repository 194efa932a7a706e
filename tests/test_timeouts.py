"""
Tests for L{txsockproxy.timeouts}: timeouts of one length in a queue, with
one reactor call for the queue.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txsockproxy.timeouts import Timeout, Timeouts


class TimeoutsTests(SynchronousTestCase):
    """
    L{Timeouts.callLater} runs each timeout when the reactor's would, never
    a cancelled one, and leaves no reactor call once none is live.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.timeouts = Timeouts(self.clock)
        self.ran: list[str] = []

    def arm(self, delay: float, name: str) -> Timeout:
        timeout = self.timeouts.callLater(delay, lambda: self.ran.append(name))
        assert isinstance(timeout, Timeout)
        return timeout

    def test_runsWhenDue(self) -> None:
        """
        Timeouts armed one after the other run at their own times, not
        before.
        """
        self.arm(5, "a")
        self.clock.advance(1)
        self.arm(5, "b")
        self.clock.advance(3.9)
        self.assertEqual(self.ran, [])
        self.clock.advance(0.1)
        self.assertEqual(self.ran, ["a"])
        self.clock.advance(0.9)
        self.assertEqual(self.ran, ["a"])
        self.clock.advance(0.1)
        self.assertEqual(self.ran, ["a", "b"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneReactorCallPerLength(self) -> None:
        """
        However many timeouts of one length are armed, the reactor has one
        call for them.
        """
        for i in range(100):
            self.arm(5, str(i))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.arm(7, "other")
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.clock.advance(5)
        self.assertEqual(len(self.ran), 100)

    def test_cancelled(self) -> None:
        """
        A cancelled timeout never runs, and is no longer active.
        """
        a = self.arm(5, "a")
        self.arm(5, "b")
        self.assertTrue(a.active())
        a.cancel()
        self.assertFalse(a.active())
        a.cancel()
        self.clock.advance(5)
        self.assertEqual(self.ran, ["b"])

    def test_noCallLeftWhenNoneLive(self) -> None:
        """
        Once every timeout is cancelled (or has run), no reactor call is left.
        """
        timeouts = [self.arm(5, str(i)) for i in range(10)]
        for timeout in timeouts:
            timeout.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.arm(5, "again")
        self.clock.advance(5)
        self.assertEqual(self.ran, ["again"])

    def test_waitsForEarliestLive(self) -> None:
        """
        With the earliest timeouts cancelled, the reactor call is moved to
        the earliest live one once the cancelled ones' time comes: it runs on
        time.
        """
        early = [self.arm(5, "early") for _ in range(3)]
        self.clock.advance(2)
        self.arm(5, "live")
        for timeout in early:
            timeout.cancel()
        self.clock.advance(3)
        self.assertEqual(self.ran, [])
        [call] = self.clock.getDelayedCalls()
        self.assertAlmostEqual(call.getTime(), 7, places=5)
        self.clock.advance(2)
        self.assertEqual(self.ran, ["live"])

    def test_sweptWhenMostlyCancelled(self) -> None:
        """
        A queue mostly of cancelled timeouts is swept; the live ones still
        run on time.
        """
        live = []
        for i in range(200):
            timeout = self.arm(5, str(i))
            if i % 10:
                timeout.cancel()
            else:
                live.append(str(i))
        [queue] = self.timeouts._queues.values()
        self.assertLess(len(queue.entries), 100)
        self.clock.advance(5)
        self.assertEqual(self.ran, live)

    def test_armedWhileRunning(self) -> None:
        """
        A timeout armed by a timeout that runs (same length) runs at its own
        time; one cancelled by it does not run.
        """
        later: list[Timeout] = []

        def first() -> None:
            self.ran.append("first")
            later.append(self.arm(5, "rearmed"))
            second.cancel()

        self.timeouts.callLater(5, first)
        second = self.arm(5, "second")
        third = self.arm(5, "third")
        self.clock.advance(5)
        self.assertEqual(self.ran, ["first", "third"])
        self.assertFalse(third.active())
        self.clock.advance(4.9)
        self.assertEqual(self.ran, ["first", "third"])
        self.clock.advance(0.1)
        self.assertEqual(self.ran, ["first", "third", "rearmed"])

    def test_errorLoggedOthersRun(self) -> None:
        """
        A timeout that raises is logged; the others due still run.
        """

        def broken() -> None:
            raise RuntimeError("broken timeout")

        self.timeouts.callLater(5, broken)
        self.arm(5, "after")
        self.clock.advance(5)
        self.assertEqual(self.ran, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_clockWentBack(self) -> None:
        """
        A timeout that would expire before the last of its queue (the clock
        went back) is left to the reactor, and still runs on time.
        """
        self.clock.advance(10)
        self.arm(5, "first")
        self.clock.rightNow = 8
        timeout = self.timeouts.callLater(5, lambda: self.ran.append("back"))
        self.assertNotIsInstance(timeout, Timeout)
        self.assertTrue(timeout.active())
        self.clock.advance(5)
        self.assertEqual(self.ran, ["back"])
        self.clock.advance(2)
        self.assertEqual(self.ran, ["back", "first"])

    def test_manyLengthsToReactor(self) -> None:
        """
        Past 64 lengths (not a configuration's timeouts), the reactor's
        C{callLater} is used.
        """
        for i in range(64):
            self.arm(1 + i, str(i))
        timeout = self.timeouts.callLater(1000, lambda: None)
        self.assertNotIsInstance(timeout, Timeout)
        timeout.cancel()

    def test_nextOnTimeAfterSlowTimeouts(self) -> None:
        """
        The time the due timeouts take to run does not delay the next one.
        """

        def slow() -> None:
            self.ran.append("slow")
            self.clock.rightNow += 0.5  # half a second of work

        self.timeouts.callLater(5, slow)
        self.clock.advance(0.7)
        self.arm(5, "next")
        self.clock.advance(4.3)
        self.assertEqual(self.ran, ["slow"])
        self.clock.advance(0.2)
        self.assertEqual(self.ran, ["slow", "next"])

    def test_queueRunsAfterBaseException(self) -> None:
        """
        A timeout that raises a C{BaseException} (which the reactor logs)
        does not stop the queue: later timeouts of its length still run.
        """

        def interrupted() -> None:
            raise KeyboardInterrupt()

        self.timeouts.callLater(5, interrupted)
        self.assertRaises(KeyboardInterrupt, self.clock.advance, 5)
        self.arm(5, "later")
        self.clock.advance(5)
        self.assertEqual(self.ran, ["later"])

    def test_oldLengthsDropped(self) -> None:
        """
        Queues of lengths no longer in use (earlier configurations) make
        room for new ones.
        """
        for i in range(64):
            self.arm(1 + i, str(i))
        self.clock.advance(100)
        self.assertIsInstance(self.timeouts.callLater(1000, lambda: None), Timeout)
