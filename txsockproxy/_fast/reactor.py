"""
The reactor C{twistd sockproxy} runs on by default on Linux: Twisted's epoll
reactor, less one cost per I/O event.

Twisted's reactors call every C{doRead}/C{doWrite} through
C{twisted.python.log.callWithLogger}, which asks the transport for its log
prefix and pushes a legacy logging context (the C{system} of old-style
C{log.msg} calls made inside the handler), for every event, about 5 events
per proxied connection (its cost: doc/performance.md).  txsockproxy logs with
C{twisted.logger}, whose events do not use that context; the only visible
difference is that a traceback Twisted logs from inside an I/O handler is
labelled C{[-]} instead of with the transport's prefix.

Its main loop also does less per turn: Twisted's enters an error handler,
runs C{runUntilCurrent} and asks C{timeout()} (each taking in new timed calls
and reading the clock) every turn; this one handles errors once around the
loop and runs the timed calls only when one is due or something else is
waiting for that step (a call from a thread, a new timed call, a stop, many
cancelled calls to sweep).

It is the reactor plugin C{txsockproxy} (C{twistd --reactor=txsockproxy}),
and C{twistd sockproxy} installs it by default when nothing has chosen a
reactor and the accelerator is on (see L{txsockproxy.accelerator}).
"""

from __future__ import annotations

import errno
import sys
from select import EPOLLIN, EPOLLOUT
from typing import Any, Optional

from twisted.internet import base, epollreactor, error
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import failure, log

# Readable, not writable: what a relay's read event has of these bits.
_IN_NOT_OUT = EPOLLIN | EPOLLOUT

# What a transport's readConnectionLost is given at its EOF (as by
# _disconnectSelectable: one Failure shared by every EOF).
_DONE = failure.Failure(error.ConnectionDone())


class EPollReactor(epollreactor.EPollReactor):
    """
    Twisted's epoll reactor, dispatching I/O events without a logging
    context per event.
    """

    # The longest wait epoll_wait(2) takes, in seconds (Twisted's limit).
    _LONGEST = 2147483

    def __init__(self) -> None:
        super().__init__()
        # Descriptors unregistered since the last poll returned; an event of a
        # batch for one of them is stale (see doPoll).
        self._unregistered: set[int] = set()
        # Descriptors whose reads a relay of the accelerator takes
        # (txsockproxy._fast.relay.Relay): descriptor -> an object with
        # .source (the transport it reads) and .doRead().  A plain read event
        # of a descriptor still read by that same transport goes straight to
        # its doRead (see doPoll); an entry left by a closed transport is
        # ignored, as the descriptor's number then names another one.
        self.relays: dict[int, Any] = {}

    def mainLoop(self) -> None:
        """
        Twisted's main loop, in fewer steps per turn: one error handler for
        the whole loop rather than one entered per turn, and the timed calls
        run only when one is due (or a call from a thread, a new timed call or
        a stop is waiting), as Twisted's C{runUntilCurrent} would find.
        """
        while self._started:
            with base._topHandler:
                self._turns()
        base._log.info("Main loop terminated.")

    def _turns(self) -> None:
        """
        Run turns of the main loop until the reactor stops (or an error
        escapes a turn).
        """
        seconds = self.seconds
        longest = self._LONGEST
        while self._started:
            if self.threadCallQueue or self._newTimedCalls or self._justStopped:
                self.runUntilCurrent()
                timeout = self.timeout()
            else:
                pending = self._pendingTimedCalls
                if not pending:
                    timeout = None
                else:
                    timeout = pending[0].time - seconds()
                    cancelled = self._cancellations
                    if timeout <= 0 or (cancelled > 50 and cancelled > len(pending) >> 1):
                        # Due, or the heap is to be swept of cancelled calls.
                        self.runUntilCurrent()
                        timeout = self.timeout()
                    elif timeout > longest:
                        timeout = longest
            if not self.running:
                timeout = 0
            self.doPoll(timeout)

    def doPoll(self, timeout: Optional[float]) -> None:
        """
        Poll for events and dispatch them to their descriptors.

        An event for a descriptor unregistered by an earlier event of the same
        batch is dropped: the descriptor may have been closed and its number
        given to a new socket (an accepted client, a backend connect started
        at once), which must not receive the old socket's readiness or hang
        up.  A descriptor still watched reports again at the next poll.
        """
        if timeout is None:
            timeout = -1  # Wait indefinitely.
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        gone = self._unregistered
        if gone:
            gone.clear()
        relays = self.relays
        reads = self._reads
        for fd, event in events:
            if gone and fd in gone:
                continue
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if event == EPOLLIN or event & _IN_NOT_OUT == EPOLLIN:
                relay = relays.get(fd)
            else:
                relay = None
            if relay is not None:
                # A relay's read (readable, not writable; with or without a
                # hang-up or an error, which the read finds as Twisted's
                # dispatch would): straight to it, without the transport's
                # doRead, its descriptor check and the general dispatch
                # below (most events of a busy proxy).
                if relay.source is selectable and fd in reads:
                    try:
                        lost: Any = relay.doRead()
                    except BaseException:
                        lost = sys.exc_info()[1]
                        log.err()
                    if lost:
                        self._relayLost(selectable, fd, lost)
                    continue
            # Each event on its own, as Twisted's log.callWithLogger does: an
            # error is logged, and the batch goes on.
            try:
                # Readable and not writable (with or without a hang-up or an
                # error), or only writable: what _doReadOrWrite does then,
                # inline (nearly all events of a proxy are these).
                if event & EPOLLIN:
                    if event & EPOLLOUT:
                        self._doReadOrWrite(selectable, fd, event)
                        continue
                    reading = True
                elif event == EPOLLOUT:
                    reading = False
                else:
                    self._doReadOrWrite(selectable, fd, event)
                    continue
                inRead = False
                try:
                    if selectable.fileno() == -1:
                        why: Any = _NO_FILEDESC
                    elif reading:
                        why = selectable.doRead()
                        inRead = True
                    else:
                        why = selectable.doWrite()
                except BaseException:
                    why = sys.exc_info()[1]
                    log.err()
                if why:
                    self._disconnectSelectable(selectable, why, inRead)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err()

    doIteration = doPoll

    def _relayLost(self, selectable: Any, fd: int, lost: Any) -> None:
        """
        A relay's read of C{selectable} (descriptor C{fd}) found its EOF or
        an error (C{lost}): what C{_disconnectSelectable} does, and for an
        EOF (the relay's transports are half-closeable) without
        C{removeReader}'s checks.  (A method of its own: in doPoll, this
        code made every relayed read dearer.)
        """
        try:
            if (
                lost is CONNECTION_DONE
                and fd in self._reads
                and IHalfCloseableDescriptor.providedBy(selectable)
            ):
                self._stopReading(fd)
                selectable.readConnectionLost(_DONE)
            else:
                self._disconnectSelectable(selectable, lost, True)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err()

    # Registration: what Twisted's methods do for sockets, in one call each
    # instead of three (a transport starts or stops reading or writing ~15
    # times per proxied connection).  Anything unusual (descriptors epoll
    # refuses, closed ones) goes to Twisted's own code.

    def addReader(self, reader: Any) -> None:
        fd = reader.fileno()
        if fd in self._reads:
            return
        try:
            if fd in self._writes:
                self._poller.modify(fd, EPOLLIN | EPOLLOUT)
            else:
                self._poller.register(fd, EPOLLIN)
        except OSError:
            super().addReader(reader)
            return
        self._reads.add(fd)
        self._selectables[fd] = reader

    def addWriter(self, writer: Any) -> None:
        fd = writer.fileno()
        if fd in self._writes:
            return
        try:
            if fd in self._reads:
                self._poller.modify(fd, EPOLLIN | EPOLLOUT)
            else:
                self._poller.register(fd, EPOLLOUT)
        except OSError:
            super().addWriter(writer)
            return
        self._writes.add(fd)
        self._selectables[fd] = writer

    def addReaderAndWriter(self, selectable: Any) -> None:
        """
        C{addReader(selectable)} and C{addWriter(selectable)}, in one
        C{epoll_ctl()} when it is watched for neither yet.
        """
        fd = selectable.fileno()
        if fd in self._reads or fd in self._writes:
            self.addReader(selectable)
            self.addWriter(selectable)
            return
        try:
            self._poller.register(fd, EPOLLIN | EPOLLOUT)
        except OSError:
            super().addReader(selectable)
            super().addWriter(selectable)
            return
        self._reads.add(fd)
        self._writes.add(fd)
        self._selectables[fd] = selectable

    def removeReader(self, reader: Any) -> None:
        fd = reader.fileno()
        if fd not in self._reads:
            if fd < 0 or self._continuousPolling.isReading(reader):
                super().removeReader(reader)
            return
        self._stopReading(fd)

    def _stopReading(self, fd: int) -> None:
        # removeReader of a descriptor in _reads.
        if fd in self._writes:
            self._poller.modify(fd, EPOLLOUT)
        else:
            del self._selectables[fd]
            self._poller.unregister(fd)
            self._unregistered.add(fd)
        self._reads.remove(fd)

    def removeWriter(self, writer: Any) -> None:
        fd = writer.fileno()
        if fd not in self._writes:
            if fd < 0 or self._continuousPolling.isWriting(writer):
                super().removeWriter(writer)
            return
        if fd in self._reads:
            self._poller.modify(fd, EPOLLIN)
        else:
            del self._selectables[fd]
            self._poller.unregister(fd)
            self._unregistered.add(fd)
        self._writes.remove(fd)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        """
        Listen with a L{txsockproxy._fast.port.Port}: Twisted's, accepting
        with less work per connection.
        """
        from txsockproxy._fast.port import Port

        listening = Port(port, factory, backlog, interface, self)
        listening.startListening()
        return listening

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: Any, factory: Any) -> Any:
        """
        Adopt a listening TCP socket (one a worker process was handed) with
        a L{txsockproxy._fast.port.Port}, as L{listenTCP} listens; other
        families (unix sockets) as Twisted does.
        """
        import socket

        if addressFamily not in (socket.AF_INET, socket.AF_INET6):
            return super().adoptStreamPort(fileDescriptor, addressFamily, factory)
        from txsockproxy._fast.port import Port

        listening = Port._fromListeningDescriptor(self, fileDescriptor, addressFamily, factory)
        listening.startListening()
        return listening

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
        interface: str = "",
    ) -> Any:
        """
        Listen as Twisted does (TLS over L{listenTCP}), with the
        accelerator's leaner TLS layer (L{txsockproxy._fast.tls}) where this
        Twisted has what it relies on.
        """
        from txsockproxy._fast.tls import tlsFactory

        listening = self.listenTCP(port, tlsFactory(contextFactory, False, factory), backlog,
                                   interface)
        listening._type = "TLS"
        return listening


def install() -> EPollReactor:
    """
    Install L{EPollReactor} as the global reactor.
    """
    from twisted.internet.main import installReactor

    reactor = EPollReactor()
    installReactor(reactor)
    return reactor


__all__ = ["EPollReactor", "install"]
