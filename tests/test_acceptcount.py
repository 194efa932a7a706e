"""
Tests for L{txsockproxy.acceptcount}: clients that Twisted closes at accept
for lack of descriptors are counted.
"""

from __future__ import annotations

from twisted.logger import ILogObserver, Logger, LogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txsockproxy.acceptcount import AcceptRecoveryCounter


class AcceptRecoveryCounterTests(SynchronousTestCase):
    """
    L{AcceptRecoveryCounter} counts Twisted's EMFILE-recovery closes, and
    nothing else, while started.
    """

    def setUp(self) -> None:
        self.publisher = LogPublisher()
        self.counter = AcceptRecoveryCounter(self.publisher)

    def test_countsRecoveryCloses(self) -> None:
        """
        Each "EMFILE recovery: Closed socket" event counts one client; other
        events, and events while stopped, count none.
        """
        verifyObject(ILogObserver, self.counter)
        log = Logger(observer=self.publisher)
        log.info("EMFILE recovery: Closed socket from {address}", address=("127.0.0.1", 1))
        self.counter.start()
        log.info("EMFILE recovery: Closed socket from {address}", address=("127.0.0.1", 2))
        log.info("EMFILE recovery: Closed socket from {address}", address=("127.0.0.1", 3))
        log.info("Re-reserving EMFILE recovery file descriptor.")
        self.counter.stop()
        log.info("EMFILE recovery: Closed socket from {address}", address=("127.0.0.1", 4))
        self.assertEqual(self.counter.closed, 2)
