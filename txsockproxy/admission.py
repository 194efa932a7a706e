"""
What a proxy admits, and when: its access rules and per-client limits,
checked when a client connects, before any backend work; and its limit on
the sessions it serves at once, beyond which clients wait in a queue, in
arrival order, at most C{queue-timeout} each.

A session is I{served} from the moment it leaves the queue (or never
waits) until it ends: it counts against C{max-connections} while it
connects, relays, or waits for a backend slot.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from txsockproxy.acl import AccessList, parseRule, peerCredentials
from txsockproxy.addresses import formatAddress
from txsockproxy.clientlimits import ClientLimits
from txsockproxy.config import Protection
from txsockproxy.handles import socketOf
from txsockproxy.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from txsockproxy.relay import Session


class Admission:
    """
    The admission of one proxy's clients.

    @ivar denied: clients closed by an access rule.
    @ivar limited: clients closed by a per-client limit.
    @ivar queueFull: clients closed because the queue was full.
    @ivar queueTimeouts: clients closed after C{queue-timeout} in the queue.
    @ivar queuedTotal: clients that waited in the queue, ever.
    @ivar serving: sessions served now.
    @ivar maxQueued: the longest the queue has been.
    """

    log = Logger(namespace="txsockproxy.admission")

    def __init__(self, clock: IReactorTime, name: str, protection: Protection) -> None:
        self.clock = clock
        self.name = name
        self.denied = 0
        self.limited = 0
        self.queueFull = 0
        self.queueTimeouts = 0
        self.queuedTotal = 0
        self.serving = 0
        self.maxQueued = 0
        self.queue: deque[Session] = deque()
        self._refusals = RateLimitedLog(clock, self.log, "refused clients")
        self.reconfigure(protection)

    def reconfigure(self, protection: Protection) -> None:
        """
        Use new settings (at start and on a reload); per-client counts stay.
        """
        self.protection = protection
        self.access = AccessList([parseRule(rule) for rule in protection.access])
        limits = getattr(self, "clients", None)
        if limits is None:
            limits = ClientLimits(self.clock)
        limits.maxConcurrent = protection.clientMaxConnections
        limits.rate = protection.clientRate
        limits.burst = protection.clientBurst
        limits.ipv6Prefix = protection.clientIPv6Prefix
        self.clients = limits
        # Whether admit() has anything to check (read per session).
        self.checking = bool(self.access) or bool(limits)
        self.wake()

    # -- at connect -----------------------------------------------------------

    def admit(self, session: Session) -> Optional[str]:
        """
        Check C{session}'s client against the access rules and the
        per-client limits; count it under its client if admitted (in
        C{session.clientKey}, for L{release}).

        @return: L{None}, or why it is refused (for the session log).
        """
        if not self.checking:
            return None  # nothing to check: the peer is not even asked for
        peer = session.connection.peer
        if self.access:
            credentials = None
            if getattr(peer, "host", None) is None:
                credentials = peerCredentials(socketOf(session.clientTransport))
            allowed, rule = self.access.decide(peer, credentials)
            if not allowed:
                self.denied += 1
                self._refuse(peer, f"denied by access rule {str(rule)!r}")
                return "denied"
        if self.clients:
            key, why = self.clients.admit(peer)
            if why is not None:
                self.limited += 1
                self._refuse(peer, why)
                return "client limit"
            session.clientKey = key
        return None

    def _refuse(self, peer: Any, why: str) -> None:
        self._refusals.emit(
            LogLevel.warn, "proxy {proxy}: refusing {client}: {why}",
            proxy=self.name, client=formatAddress(peer), why=why,
        )

    # -- the queue ------------------------------------------------------------

    def enter(self, session: Session) -> Optional[bool]:
        """
        Serve C{session} now if a slot is free, else queue it.

        @return: L{True}: served now; L{False}: queued (its C{dequeued} is
            called when its turn comes, its C{queueTimedOut} if it does not
            come in time); L{None}: refused, the queue is full.
        """
        limit = self.protection.maxConnections
        if not limit or (self.serving < limit and not self.queue):
            self.serving += 1
            session.served = True
            return True
        return self._wait(session, first=False)

    def waitForBackend(self, session: Session) -> Optional[bool]:
        """
        Every backend C{session} may use is full: give its slot back and
        wait at the head of the queue for a backend slot (when the proxy
        has a queue).

        @return: as L{enter}, never L{True}.
        """
        if session.served:
            session.served = False
            self.serving -= 1
        return self._wait(session, first=True)

    def _wait(self, session: Session, first: bool) -> Optional[bool]:
        if len(self.queue) >= self.protection.maxQueue:
            self.queueFull += 1
            self._refuse(
                session.connection.peer,
                f"the queue is full ({self.protection.maxQueue} clients waiting)",
            )
            return None
        if first:
            self.queue.appendleft(session)
        else:
            self.queue.append(session)
        self.queuedTotal += 1
        self.maxQueued = max(self.maxQueued, len(self.queue))
        session.queueTimer = self.clock.callLater(
            self.protection.queueTimeout, self._timedOut, session
        )
        return False

    def _timedOut(self, session: Session) -> None:
        session.queueTimer = None
        try:
            self.queue.remove(session)
        except ValueError:
            return
        self.queueTimeouts += 1
        self._refuse(
            session.connection.peer,
            f"waited {self.protection.queueTimeout:g}s in the queue",
        )
        session.queueTimedOut()

    def wake(self) -> None:
        """
        Serve queued sessions while slots are free (a session ended, a
        backend slot freed, the limit was raised).
        """
        limit = self.protection.maxConnections
        while self.queue and (not limit or self.serving < limit):
            session = self.queue.popleft()
            timer, session.queueTimer = session.queueTimer, None
            if timer is not None and timer.active():
                timer.cancel()
            self.serving += 1
            session.served = True
            session.dequeued()
            if session.queueTimer is not None:
                # Back in the queue: every backend it may use is full, and
                # the others behind it would find the same.
                break

    # -- at the end -----------------------------------------------------------

    def release(self, session: Session) -> None:
        """
        C{session} ended: its client count, its slot or its place in the
        queue are given back, and the next in the queue served.
        """
        if session.clientKey is not None:
            self.clients.release(session.clientKey)
            session.clientKey = None
        if session.queueTimer is not None:
            timer, session.queueTimer = session.queueTimer, None
            if timer.active():
                timer.cancel()
            try:
                self.queue.remove(session)
            except ValueError:
                pass
        if session.served:
            session.served = False
            self.serving -= 1
        if self.queue:
            self.wake()

    def stop(self) -> None:
        """
        The proxy is going: stop sweeping client counts.
        """
        self.clients.stop()


__all__ = ["Admission"]
