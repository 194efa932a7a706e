"""
Counting the clients that Twisted's listening ports close at accept because
the process is out of file descriptors.

When C{accept()} fails with C{EMFILE}, Twisted's TCP port frees a descriptor
it keeps in reserve, accepts the waiting clients and closes them at once,
and logs each ("EMFILE recovery: Closed socket from ..."). No counter of
the proxy sees those clients; L{AcceptRecoveryCounter} counts them from
those log events (a public observer of the global log publisher), on every
reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import ILogObserver, LogPublisher, globalLogPublisher
from zope.interface import implementer

# The format of Twisted's event for each client closed in EMFILE recovery.
RECOVERY_CLOSE_FORMAT = "EMFILE recovery: Closed socket from {address}"


@implementer(ILogObserver)
class AcceptRecoveryCounter:
    """
    Counts Twisted's EMFILE-recovery closes while started.

    @ivar closed: clients closed at accept for lack of descriptors, since
        this counter was made.
    """

    def __init__(self, publisher: LogPublisher = globalLogPublisher) -> None:
        self.publisher = publisher
        self.closed = 0
        self._started = False

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_format") == RECOVERY_CLOSE_FORMAT:
            self.closed += 1

    def start(self) -> None:
        """
        Start counting.
        """
        if not self._started:
            self._started = True
            self.publisher.addObserver(self)

    def stop(self) -> None:
        """
        Stop counting.
        """
        if self._started:
            self._started = False
            self.publisher.removeObserver(self)


__all__ = ["AcceptRecoveryCounter", "RECOVERY_CLOSE_FORMAT"]
