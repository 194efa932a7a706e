"""
Tests for L{txsockproxy.healthcheck}: probes on a L{Clock} against fake
endpoints; rise, fall, timeouts, jitter.
"""

from __future__ import annotations

import random

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeEndpoint, lost
from txsockproxy.healthcheck import (
    CHECK_DOWN,
    CHECK_UP,
    CONNECT,
    REPLY_LIMIT,
    SEND_EXPECT,
    HealthCheck,
)


class HealthCheckTests(SynchronousTestCase):
    """
    A L{HealthCheck} probes every interval and changes state after C{fall}
    failures or C{rise} successes in a row.
    """

    def check(self, **kwargs: object) -> HealthCheck:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.changes: list[tuple[str, str]] = []
        settings: dict[str, object] = dict(
            kind=CONNECT, interval=2.0, timeout=1.0, rise=2, fall=3, jitter=0.0,
            rng=random.Random(1),
        )
        settings.update(kwargs)
        check = HealthCheck(
            self.clock, self.endpoint, lambda c, why: self.changes.append((c.state, why)),
            **settings,  # type: ignore[arg-type]
        )
        check.start()
        self.addCleanup(check.stop)
        return check

    def probe(self) -> None:
        """
        Let the next probe start (at most one interval).
        """
        before = len(self.endpoint.attempts)
        for _ in range(300):
            if len(self.endpoint.attempts) > before:
                return
            self.clock.advance(0.01)
        self.fail("no probe within 3 s")

    def test_probesLogNothing(self) -> None:
        """
        A probe that succeeds logs nothing: its factory is not noisy (Twisted
        would log its start and stop, two lines per probe).
        """
        self.check()
        self.probe()
        factory, _ = self.endpoint.attempts[-1]
        with capturedLogs() as events:
            factory.doStart()
            self.endpoint.succeed()
            factory.doStop()
        self.assertEqual([formatEvent(e) for e in events], [])

    def test_firstProbeWithinOneInterval(self) -> None:
        """
        The first probe comes at a random point of the first interval.
        """
        self.check()
        self.assertEqual(len(self.endpoint.attempts), 0)
        self.clock.advance(2.0)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_fallThenRise(self) -> None:
        """
        C{fall} failed probes in a row take the backend down (once, with
        the reason); C{rise} good ones bring it back.
        """
        check = self.check()
        for i in range(3):
            self.probe()
            self.endpoint.fail(ConnectionRefusedError())
            if i < 2:
                self.assertEqual(check.state, CHECK_UP)
        self.assertEqual(check.state, CHECK_DOWN)
        self.assertEqual(self.changes, [(CHECK_DOWN, "connection refused")])
        self.probe()
        self.endpoint.fail(ConnectionRefusedError())
        self.assertEqual(len(self.changes), 1, "logged once per change")
        self.probe()
        self.endpoint.succeed()
        self.assertEqual(check.state, CHECK_DOWN)
        self.probe()
        self.endpoint.succeed()
        self.assertEqual(check.state, CHECK_UP)
        self.assertEqual(self.changes[-1], (CHECK_UP, "2 good checks in a row"))
        self.assertEqual((check.checks, check.failures, check.lastResult), (6, 4, "ok"))

    def test_streakBroken(self) -> None:
        """
        A good probe between failures starts the count again.
        """
        check = self.check()
        for outcome in ("fail", "fail", "ok", "fail", "fail"):
            self.probe()
            if outcome == "ok":
                self.endpoint.succeed()
            else:
                self.endpoint.fail(ConnectionRefusedError())
        self.assertEqual(check.state, CHECK_UP)

    def test_connectTimeout(self) -> None:
        """
        A connect that takes longer than C{timeout} fails the probe and is
        cancelled.
        """
        check = self.check(fall=1)
        self.probe()
        self.clock.advance(1.0)
        self.assertEqual(self.endpoint.cancelled, 1)
        self.assertEqual(check.state, CHECK_DOWN)
        self.assertEqual(check.lastResult, "no connection within 1s")

    def test_sendExpect(self) -> None:
        """
        C{send-expect} writes its bytes and passes when the reply contains
        the expected ones, even split across reads.
        """
        check = self.check(kind=SEND_EXPECT, send=b"PING\r\n", expect=b"+PONG", fall=1)
        self.probe()
        protocol, transport = self.endpoint.succeed()
        self.assertEqual(transport.value(), b"PING\r\n")
        protocol.dataReceived(b"+PO")
        self.assertEqual(check.checks, 0)
        protocol.dataReceived(b"NG\r\n")
        self.assertEqual((check.checks, check.lastResult), (1, "ok"))
        self.assertTrue(transport.disconnecting)

    def test_sendExpectWrongReply(self) -> None:
        """
        A reply without the expected bytes, then a close, fails the probe
        with what was received.
        """
        check = self.check(kind=SEND_EXPECT, send=b"PING\r\n", expect=b"+PONG", fall=1)
        self.probe()
        protocol, _ = self.endpoint.succeed()
        protocol.dataReceived(b"-ERR auth\r\n")
        protocol.connectionLost(lost())
        self.assertEqual(check.state, CHECK_DOWN)
        self.assertEqual(check.lastResult, "closed before replying b'+PONG' (got b'-ERR auth\\r\\n')")

    def test_sendExpectFirstBytesOnly(self) -> None:
        """
        The expected bytes are looked for in the first C{REPLY_LIMIT} bytes
        of the reply only: found there (even at its very end) the probe
        passes; a reply that reaches the limit without them fails at once,
        its connection aborted, whatever comes after.
        """
        check = self.check(kind=SEND_EXPECT, send=b"PING\r\n", expect=b"+PONG", fall=1)
        self.probe()
        protocol, _ = self.endpoint.succeed()
        protocol.dataReceived(b"x" * (REPLY_LIMIT - 5) + b"+PONG" + b"y" * 100)
        self.assertEqual((check.checks, check.lastResult), (1, "ok"))
        self.probe()
        protocol, transport = self.endpoint.succeed()
        protocol.dataReceived(b"x" * 10000)
        self.assertEqual(check.checks, 1)
        protocol.dataReceived(b"x" * 10000 + b"+PONG\r\n")
        self.assertEqual(check.checks, 2)
        self.assertEqual(check.state, CHECK_DOWN)
        self.assertEqual(
            check.lastResult,
            f"no b'+PONG' in the first {REPLY_LIMIT} bytes of the reply (got {b'x' * 40!r})",
        )
        self.assertTrue(transport.aborted)
        protocol.dataReceived(b"+PONG")
        protocol.connectionLost(lost())
        self.assertEqual((check.checks, check.state), (2, CHECK_DOWN))

    def test_replyTimeout(self) -> None:
        """
        A backend that accepts and never answers fails at C{timeout}; its
        connection is aborted.
        """
        check = self.check(kind=SEND_EXPECT, send=b"PING\r\n", expect=b"+PONG", fall=1)
        self.probe()
        _, transport = self.endpoint.succeed()
        self.clock.advance(1.0)
        self.assertEqual(check.lastResult, "no expected reply within 1s")
        self.assertTrue(transport.aborted)

    def test_stopCancels(self) -> None:
        """
        Stopping cancels the pending probe and the next one.
        """
        check = self.check()
        self.probe()
        check.stop()
        self.assertEqual(self.endpoint.cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(check.checks, 0)

    def test_jitter(self) -> None:
        """
        With jitter, intervals vary within C{interval * (1 ± jitter)}.
        """
        self.check(jitter=0.2, rng=random.Random(7))
        times = []
        for _ in range(20):
            self.probe()
            times.append(self.clock.seconds())
            self.endpoint.succeed()
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        self.assertTrue(all(1.6 - 0.011 <= g <= 2.4 + 0.011 for g in gaps), gaps)
        self.assertGreater(max(gaps) - min(gaps), 0.1)
