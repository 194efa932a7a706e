"""
Tests for L{txsockproxy.acceptgate}: listeners paused at the global limit
and when accepting runs out of descriptors, on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogPublisher, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from txsockproxy.acceptgate import FIRST_BACKOFF, MAX_BACKOFF, AcceptGate


class Port:
    """
    A listening port that records whether it reads.
    """

    def __init__(self) -> None:
        self.reading = True
        self.changes = 0

    def stopReading(self) -> None:
        self.reading = False
        self.changes += 1

    def startReading(self) -> None:
        self.reading = True
        self.changes += 1


class AcceptGateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.ports = [Port(), Port()]
        self.publisher = LogPublisher()
        self.gate = AcceptGate(self.clock, lambda: self.ports, self.publisher)
        self.gate.start()
        self.addCleanup(self.gate.stop)

    def reading(self) -> list[bool]:
        return [p.reading for p in self.ports]

    def test_limit(self) -> None:
        """
        At the global limit every listener stops reading (logged once), and
        reads again when a session ends.
        """
        self.gate.limit = 3
        with capturedLogs() as events:
            for count in (1, 2, 3):
                self.gate.sessionsChanged(count)
            self.assertEqual(self.reading(), [False, False])
            self.gate.sessionsChanged(3)
            self.gate.sessionsChanged(2)
        self.assertEqual(self.reading(), [True, True])
        self.assertEqual(self.ports[0].changes, 2)
        self.assertEqual(len(events), 2)
        self.assertIn("3 sessions open, the global max-connections", formatEvent(events[0]))

    def test_noLimit(self) -> None:
        for count in range(100):
            self.gate.sessionsChanged(count)
        self.assertEqual(self.ports[0].changes, 0)

    def emfile(self) -> None:
        self.publisher({
            "log_format": "Could not accept new connection ({acceptError})",
            "acceptError": "EMFILE", "log_level": None,
        })

    def test_outOfDescriptors(self) -> None:
        """
        A failed accept pauses the listeners (one line), they are tried
        again after a back-off that doubles while accepting keeps failing,
        and the episode ends (one line) after a back-off without failures.
        """
        with capturedLogs() as events:
            self.emfile()
            self.emfile()
            self.assertEqual(self.reading(), [False, False])
            self.clock.advance(FIRST_BACKOFF)
            self.assertEqual(self.reading(), [True, True])
            self.emfile()
            self.assertEqual(self.reading(), [False, False])
            self.clock.advance(FIRST_BACKOFF)
            self.assertEqual(self.reading(), [False, False], "the back-off doubled")
            self.clock.advance(FIRST_BACKOFF)
            self.assertEqual(self.reading(), [True, True])
            self.clock.advance(2 * FIRST_BACKOFF)
        self.assertFalse(self.gate.starved)
        text = [formatEvent(e) for e in events]
        self.assertEqual(len(text), 2, text)
        self.assertIn("accepting failed (EMFILE", text[0])
        self.assertIn("accepting again, after 0.5s out of descriptors (3 failed accepts)", text[1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_backoffBounded(self) -> None:
        for _ in range(20):
            self.emfile()
            self.clock.advance(self.gate._backoff)
        self.assertEqual(self.gate._backoff, MAX_BACKOFF)

    def test_sessionEndRetries(self) -> None:
        """
        A session ending while out of descriptors retries at once.
        """
        self.gate.sessionsChanged(5)
        self.emfile()
        self.assertEqual(self.reading(), [False, False])
        self.gate.sessionsChanged(4)
        self.assertEqual(self.reading(), [True, True])

    def test_limitAndStarvation(self) -> None:
        """
        Either reason keeps the listeners paused.
        """
        self.gate.limit = 1
        self.gate.sessionsChanged(1)
        self.emfile()
        self.clock.advance(FIRST_BACKOFF)
        self.assertEqual(self.reading(), [False, False])
        self.gate.sessionsChanged(0)
        self.assertEqual(self.reading(), [True, True])
