"""
Active health checks of one backend: a probe every C{interval} seconds
(with jitter, so that checks of many backends do not align), the backend
marked down after C{fall} failed probes in a row and up again after C{rise}
good ones.

A probe connects through the backend's own endpoint (for a TLS backend the
connect includes the handshake and the certificate check), and, for
C{send-expect}, writes some bytes and waits for a reply that contains the
expected ones. A probe is not a session: it counts in no session counter.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from txsockproxy.config import CHECK_KINDS

# Kinds of check (CHECK_KINDS: these and "off").
CONNECT = "connect"
SEND_EXPECT = "send-expect"

# How much of a reply the expected bytes are looked for in: its first
# REPLY_LIMIT bytes; a reply without them there fails the probe.
REPLY_LIMIT = 16384

# Up and down, as checks see a backend.
CHECK_UP = "up"
CHECK_DOWN = "down"


class ProbeFailed(Exception):
    """
    A probe failed; C{str()} says why, in words for a log line.
    """


class _Probe(Protocol):
    """
    The protocol of one probe: sends, and looks for the expected reply.
    """

    def __init__(
        self, send: bytes, expect: bytes, done: defer.Deferred[None], preamble: bytes = b""
    ) -> None:
        self.preamble = preamble
        self.send = send
        self.expect = expect
        self.done = done
        self.received = b""

    def connectionMade(self) -> None:
        if self.preamble:
            self.transport.write(self.preamble)  # type: ignore[union-attr]
        if not self.expect:
            self._finish()
            return
        if self.send:
            self.transport.write(self.send)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.received = (self.received + data)[:REPLY_LIMIT]
        if self.expect in self.received:
            self._finish()
        elif len(self.received) >= REPLY_LIMIT:
            # Decided: what comes after the first REPLY_LIMIT bytes is
            # not looked at (nor read).
            self.done.errback(
                ProbeFailed(f"no {self.expect[:40]!r} in the first {REPLY_LIMIT} bytes "
                            f"of the reply (got {self.received[:40]!r})")
            )
            self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if not self.done.called:
            got = self.received[:40]
            self.done.errback(
                ProbeFailed(
                    f"closed before replying {self.expect[:40]!r}"
                    + (f" (got {got!r})" if got else " (got nothing)")
                )
            )

    def _finish(self) -> None:
        if not self.done.called:
            self.done.callback(None)
        self.transport.loseConnection()  # type: ignore[union-attr]


class HealthCheck:
    """
    The active checks of one backend.

    @ivar state: L{CHECK_UP} or L{CHECK_DOWN}: what the checks say (a
        backend starts up, and goes down only after C{fall} failures).
    @ivar lastResult: the last probe's result in words (C{"ok"} or why it
        failed), or C{""} before the first.
    @ivar lastChange: reactor time of the last change of C{state} (or of
        the start).
    @ivar checks: probes finished, ever; C{failures}: those that failed.
    """

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: IStreamClientEndpoint,
        onChange: Callable[[HealthCheck, str], None],
        kind: str = CONNECT,
        interval: float = 2.0,
        timeout: float = 1.0,
        rise: int = 2,
        fall: int = 3,
        send: bytes = b"",
        expect: bytes = b"",
        jitter: float = 0.1,
        rng: Optional[random.Random] = None,
        preamble: bytes = b"",
        endpointSendsPreamble: bool = False,
    ) -> None:
        """
        @param onChange: called with this check and the reason each time
            C{state} changes.
        @param jitter: each interval is drawn from C{interval * (1 ± jitter)}.
        @param preamble: bytes every probe sends first, whatever its kind (a
            PROXY protocol header, for a backend that expects one).
        @param endpointSendsPreamble: whether C{endpoint} sends the preamble
            itself (a TLS endpoint, in clear before its handshake, taking it
            from the factory's C{preamble}), rather than the probe once
            connected.
        """
        self.clock = clock
        self.endpoint = endpoint
        self.onChange = onChange
        self.kind = kind
        self.interval = interval
        self.timeout = timeout
        self.rise = rise
        self.fall = fall
        self.send = send
        self.expect = expect if kind == SEND_EXPECT else b""
        self.jitter = jitter
        self.preamble = preamble
        self.endpointSendsPreamble = endpointSendsPreamble
        self.rng = rng or random.Random()
        self.state = CHECK_UP
        self.lastResult = ""
        self.lastChange = clock.seconds()
        self.checks = 0
        self.failures = 0
        self._streak = 0  # good (> 0) or failed (< 0) probes in a row
        self._call: Optional[IDelayedCall] = None
        self._timer: Optional[IDelayedCall] = None  # the probe in flight's timeout
        self._probe: Optional[defer.Deferred[None]] = None
        # The connect of the probe in flight, and its protocol once connected.
        self._connecting: Optional[defer.Deferred[Any]] = None
        self._connected: list[Any] = []
        self._running = False

    @property
    def streak(self) -> int:
        """
        The run of the latest results: good probes in a row (> 0), or
        failed ones (< 0).
        """
        return self._streak

    @property
    def running(self) -> bool:
        """
        Whether it is checking (started and not stopped).
        """
        return self._running

    def configure(
        self,
        kind: str,
        interval: float,
        timeout: float,
        rise: int,
        fall: int,
        send: bytes = b"",
        expect: bytes = b"",
    ) -> None:
        """
        Use new settings from the next probe on, keeping the state, the
        counters and the run of results (a reload that changes them).
        """
        self.kind = kind
        self.interval = interval
        self.timeout = timeout
        self.rise = rise
        self.fall = fall
        self.send = send
        self.expect = expect if kind == SEND_EXPECT else b""

    def start(self) -> None:
        """
        Start checking: the first probe within one interval, at a random
        point of it, so that backends started together spread out.
        """
        if self._running:
            return
        self._running = True
        self._call = self.clock.callLater(self.rng.uniform(0, self.interval), self._run)

    def stop(self) -> None:
        """
        Stop checking (the backend is gone, or the proxy stops); a probe in
        flight is cancelled.
        """
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._timer is not None and self._timer.active():
            # Its connection may take a turn of the reactor to close.
            self._timer.cancel()
        self._timer = None
        if self._probe is not None:
            self._probe = None
            _abort(self._connecting, self._connected)

    def _next(self) -> None:
        if not self._running:
            return
        spread = self.interval * self.jitter
        delay = max(0.0, self.interval + self.rng.uniform(-spread, spread))
        self._call = self.clock.callLater(delay, self._run)

    def _run(self) -> None:
        self._call = None
        done: defer.Deferred[None] = defer.Deferred()
        connected: list[Any] = []
        self._connected = connected
        inClear = self.preamble if self.endpointSendsPreamble else b""
        factory = Factory.forProtocol(
            lambda: _Probe(self.send, self.expect, done, self.preamble if not inClear else b"")
        )
        # Not noisy: Twisted would log two lines per probe ("Starting
        # factory", "Stopping factory").
        factory.noisy = False
        if inClear:
            factory.preamble = inClear  # type: ignore[attr-defined]
        connecting = self.endpoint.connect(factory)
        self._connecting = connecting

        def connectFailed(reason: Failure) -> None:
            if not done.called:
                done.errback(reason)

        connecting.addCallbacks(connected.append, connectFailed)
        timer = self.clock.callLater(self.timeout, self._timedOut, done)
        self._timer = timer

        def finished(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        self._probe = done
        done.addBoth(finished)
        done.addCallbacks(lambda _: self._result(done, None), lambda f: self._result(done, f))

    def _timedOut(self, done: defer.Deferred[None]) -> None:
        if done.called:
            return
        connecting, connected = self._connecting, self._connected
        what = "no expected reply" if connected else "no connection"
        done.errback(ProbeFailed(f"{what} within {self.timeout:g}s"))
        _abort(connecting, connected)

    def _result(self, probe: defer.Deferred[None], failure: Optional[Failure]) -> None:
        if self._probe is not probe:
            return  # stopped meanwhile
        self._probe = None
        self._connecting = None
        self.checks += 1
        if failure is None:
            self.lastResult = "ok"
            self._streak = max(self._streak, 0) + 1
            if self.state == CHECK_DOWN and self._streak >= self.rise:
                self._change(CHECK_UP, f"{self._streak} good checks in a row")
        else:
            self.failures += 1
            self.lastResult = describeProbeFailure(failure)
            self._streak = min(self._streak, 0) - 1
            if self.state == CHECK_UP and -self._streak >= self.fall:
                self._change(CHECK_DOWN, self.lastResult)
        self._next()

    def _change(self, state: str, why: str) -> None:
        self.state = state
        self.lastChange = self.clock.seconds()
        self.onChange(self, why)


def _abort(connecting: Optional[defer.Deferred[Any]], connected: list[Any]) -> None:
    """
    End a probe in flight: its connection, or its connect.
    """
    if connected:
        transport = connected[0].transport
        if transport is not None:
            transport.abortConnection()
    elif connecting is not None:
        connecting.cancel()


def describeProbeFailure(reason: Failure) -> str:
    """
    Why a probe failed, in a few words.
    """
    from twisted.internet import error

    value = reason.value
    if isinstance(value, ProbeFailed):
        return str(value)
    if reason.check(error.ConnectionRefusedError):
        return "connection refused"
    if reason.check(defer.CancelledError, error.ConnectingCancelledError):
        return "cancelled"
    if isinstance(value, error.ConnectError) and value.osError:
        import os

        return os.strerror(value.osError)
    text = str(value) or type(value).__name__
    return " ".join(text.split())[:200]


__all__ = [
    "CHECK_DOWN",
    "CHECK_KINDS",
    "CHECK_UP",
    "CONNECT",
    "SEND_EXPECT",
    "HealthCheck",
    "ProbeFailed",
    "describeProbeFailure",
]
