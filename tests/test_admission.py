"""
Tests for what a proxy admits (L{txsockproxy.admission}) through sessions
on fakes and a L{Clock}: access rules, per-client limits, the proxy's
limit and queue, backends' limits.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import Proxy, lost
from txsockproxy.config import ConfigError, KeepaliveConfig, Protection
from txsockproxy.render import renderToml
from txsockproxy.tomlconfig import parseConfig


def ip(host: str, port: int = 40000) -> IPv4Address:
    return IPv4Address("TCP", host, port)


class AccessTests(SynchronousTestCase):
    def test_deniedBeforeBackendWork(self) -> None:
        """
        A client an access rule denies is closed (reset) at once: nothing is
        connected, it is counted and logged, and its session says why.
        """
        proxy = Proxy(protection=Protection(access=("allow 10.0.0.0/8", "deny all")))
        with capturedLogs() as events:
            client, ct = proxy.accept(ip("192.0.2.1"))
        self.assertTrue(ct.aborted)
        self.assertEqual(proxy.endpoints["a"].attempts, [])
        self.assertEqual(proxy.pool.admission.denied, 1)
        self.assertEqual(client.session.ended, "denied")  # type: ignore[union-attr]
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["proxy test: refusing 192.0.2.1:40000: denied by access rule 'deny all'"],
        )
        allowed, act = proxy.accept(ip("10.1.2.3"))
        self.assertFalse(act.aborted)
        self.assertEqual(len(proxy.endpoints["a"].attempts), 1)

    def test_floodLoggedAtBoundedRate(self) -> None:
        proxy = Proxy(protection=Protection(access=("deny all",)))
        with capturedLogs() as events:
            for i in range(500):
                proxy.accept(ip("192.0.2.1", 1000 + i))
        self.assertEqual(proxy.pool.admission.denied, 500)
        self.assertLessEqual(len(events), 11)


class ClientLimitTests(SynchronousTestCase):
    def test_concurrent(self) -> None:
        """
        A client holding C{client-max-connections} sessions is refused
        another; others are not; when one of its sessions ends it may open
        one again.
        """
        proxy = Proxy(protection=Protection(clientMaxConnections=2))
        first, _ = proxy.accept(ip("192.0.2.1", 1))
        proxy.accept(ip("192.0.2.1", 2))
        third, tt = proxy.accept(ip("192.0.2.1", 3))
        self.assertTrue(tt.aborted)
        self.assertEqual(third.session.ended, "client limit")  # type: ignore[union-attr]
        third.connectionLost(lost(clean=False))
        _, other = proxy.accept(ip("192.0.2.2"))
        self.assertFalse(other.aborted)
        first.connectionLost(lost(clean=False))
        _, again = proxy.accept(ip("192.0.2.1", 4))
        self.assertFalse(again.aborted)
        self.assertEqual(proxy.pool.admission.limited, 1)

    def test_rate(self) -> None:
        """
        New connections per second per client: a burst passes, then the
        client waits for its bucket to refill.
        """
        proxy = Proxy(protection=Protection(clientRate=2, clientBurst=2))
        results = [proxy.accept(ip("192.0.2.1", i))[1].aborted for i in range(3)]
        self.assertEqual(results, [False, False, True])
        proxy.clock.advance(0.5)
        self.assertFalse(proxy.accept(ip("192.0.2.1", 9))[1].aborted)


class QueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proxy = Proxy(
            labels=("a",),
            protection=Protection(maxConnections=1, maxQueue=2, queueTimeout=5),
        )
        self.attempts = self.proxy.endpoints["a"].attempts

    def test_arrivalOrder(self) -> None:
        """
        Beyond C{max-connections} clients wait, and are served in arrival
        order as sessions end; beyond C{max-queue} they are closed.
        """
        first, _ = self.proxy.accept(ip("192.0.2.1"))
        second, _ = self.proxy.accept(ip("192.0.2.2"))
        third, _ = self.proxy.accept(ip("192.0.2.3"))
        fourth, ft = self.proxy.accept(ip("192.0.2.4"))
        self.assertEqual(len(self.attempts), 1)
        self.assertTrue(ft.aborted)
        self.assertEqual(fourth.session.ended, "queue full")  # type: ignore[union-attr]
        admission = self.proxy.pool.admission
        self.assertEqual((len(admission.queue), admission.queueFull), (2, 1))
        second.dataReceived(b"held while queued")
        backend, _ = self.proxy.endpoints["a"].succeed()
        first.connectionLost(lost())
        backend.connectionLost(lost())
        self.assertEqual(len(self.attempts), 2)
        _, bt = self.proxy.endpoints["a"].succeed()
        self.assertEqual(bt.value(), b"held while queued")
        self.assertEqual(len(admission.queue), 1)
        self.assertIs(admission.queue[0], third.session)

    def test_timeout(self) -> None:
        """
        A client that waits C{queue-timeout} is closed and counted; the
        others keep their place.
        """
        self.proxy.accept(ip("192.0.2.1"))
        second, st = self.proxy.accept(ip("192.0.2.2"))
        self.proxy.clock.advance(4)
        third, tt = self.proxy.accept(ip("192.0.2.3"))
        self.proxy.clock.advance(1)
        self.assertTrue(st.aborted)
        self.assertFalse(tt.aborted)
        self.assertEqual(second.session.ended, "queue timeout")  # type: ignore[union-attr]
        self.assertEqual(self.proxy.pool.admission.queueTimeouts, 1)

    def test_clientLeavesQueue(self) -> None:
        """
        A client that leaves while queued gives its place up.
        """
        self.proxy.accept(ip("192.0.2.1"))
        second, _ = self.proxy.accept(ip("192.0.2.2"))
        session = second.session
        assert session is not None
        second.connectionLost(lost(clean=False))
        self.assertEqual(len(self.proxy.pool.admission.queue), 0)
        self.assertTrue(session.finished)
        self.assertEqual(session.ended, "client left while queued")
        self.assertEqual(self.proxy.pool.active, 1)


class BackendLimitTests(SynchronousTestCase):
    def test_fullSkipped(self) -> None:
        """
        A backend at its C{max-connections} is skipped; when all are full a
        client is refused ("all backends full") without a queue.
        """
        proxy = Proxy(backendMax=1)
        proxy.accept(ip("192.0.2.1"))
        proxy.accept(ip("192.0.2.2"))
        self.assertEqual(
            (len(proxy.endpoints["a"].attempts), len(proxy.endpoints["b"].attempts)), (1, 1)
        )
        third, tt = proxy.accept(ip("192.0.2.3"))
        self.assertTrue(tt.disconnecting or tt.aborted)
        self.assertEqual(third.session.ended, "all backends full")  # type: ignore[union-attr]

    def test_waitsForBackendSlot(self) -> None:
        """
        With a queue, a client that finds every backend full waits at the
        head of the queue and is connected when a backend slot frees.
        """
        proxy = Proxy(
            labels=("a",), backendMax=1,
            protection=Protection(maxConnections=10, maxQueue=5),
        )
        first, _ = proxy.accept(ip("192.0.2.1"))
        backend, _ = proxy.endpoints["a"].succeed()
        waiting, wt = proxy.accept(ip("192.0.2.2"))
        self.assertFalse(wt.aborted)
        self.assertEqual(len(proxy.endpoints["a"].attempts), 1)
        self.assertEqual(len(proxy.pool.admission.queue), 1)
        first.connectionLost(lost())
        backend.connectionLost(lost())
        self.assertEqual(len(proxy.endpoints["a"].attempts), 2)
        self.assertEqual(len(proxy.pool.admission.queue), 0)


class DrainTests(SynchronousTestCase):
    def test_deadline(self) -> None:
        """
        Sessions still open on a draining backend at C{drain-timeout} are
        closed (reset), counted and logged; the other backend's are not.
        """
        proxy = Proxy(protection=Protection(drainTimeout=30))
        _, ct1 = proxy.accept(ip("192.0.2.1"))
        proxy.endpoints["a"].succeed()
        _, ct2 = proxy.accept(ip("192.0.2.2"))
        proxy.endpoints["b"].succeed()
        a = proxy.backends["a"]
        proxy.pool.setAdminState(a, "draining")
        proxy.clock.advance(29)
        self.assertFalse(ct1.aborted)
        with capturedLogs() as events:
            proxy.clock.advance(1)
        self.assertTrue(ct1.aborted)
        self.assertFalse(ct2.aborted)
        self.assertEqual(a.drainClosed, 1)
        self.assertIn("backend a drained: 1 session(s) still open after 30s closed",
                      formatEvent(events[0]))

    def test_drainedBeforeDeadline(self) -> None:
        """
        A backend whose sessions all ended before the deadline is not
        warned about at the deadline.
        """
        proxy = Proxy(labels=("a",), protection=Protection(drainTimeout=5))
        proxy.pool.setAdminState(proxy.backends["a"], "draining")
        with capturedLogs() as events:
            proxy.clock.advance(5)
        self.assertEqual([formatEvent(e) for e in events], [])
        self.assertEqual(proxy.backends["a"].drainClosed, 0)

    def test_explicitDeadlineAndCancel(self) -> None:
        """
        A deadline given with the drain replaces the proxy's; enabling the
        backend again cancels it; without either, drain waits for ever.
        """
        proxy = Proxy(labels=("a",))
        _, ct = proxy.accept(ip("192.0.2.1"))
        proxy.endpoints["a"].succeed()
        a = proxy.backends["a"]
        proxy.pool.setAdminState(a, "draining")
        self.assertIsNone(a.drainTimer)
        proxy.pool.setAdminState(a, "draining", 5)
        proxy.pool.setAdminState(a, "up")
        proxy.clock.advance(10)
        self.assertFalse(ct.aborted)
        proxy.pool.setAdminState(a, "draining", 5)
        proxy.clock.advance(5)
        self.assertTrue(ct.aborted)


FULL = """\
max-connections = 1000

[[proxy]]
listen = "tcp:8080"
max-connections = 100
max-queue = 50
queue-timeout = 5
client-max-connections = 10
client-rate = 20
client-burst = 40
client-ipv6-prefix = 48
access = ["deny 10.1.0.0/16", "allow 10.0.0.0/8", "deny all"]
drain-timeout = 30
client-keepalive = { idle = 60, interval = 10, count = 5 }
backend-keepalive = { idle = 30 }

[[proxy.backend]]
endpoint = "tcp:host=127.0.0.1:port=1"
max-connections = 40

[[proxy.backend]]
endpoint = "tcp:host=127.0.0.1:port=2"
keepalive = { idle = 120, count = 3 }
"""


class ConfigTests(SynchronousTestCase):
    """
    The protection keys as the native configuration reads and writes them.
    """

    def test_read(self) -> None:
        config = parseConfig(FULL, "p.toml")
        [proxy] = config.proxies
        self.assertEqual(config.maxConnections, 1000)
        self.assertEqual(proxy.protection, Protection(
            maxConnections=100, maxQueue=50, queueTimeout=5, clientMaxConnections=10,
            clientRate=20, clientBurst=40, clientIPv6Prefix=48,
            access=("deny 10.1.0.0/16", "allow 10.0.0.0/8", "deny all"), drainTimeout=30,
            clientKeepalive=KeepaliveConfig(60, 10, 5),
        ))
        first, second = proxy.backends
        self.assertEqual((first.maxConnections, first.keepalive), (40, KeepaliveConfig(30)))
        self.assertEqual(second.keepalive, KeepaliveConfig(120, 0, 3))

    def test_roundTrip(self) -> None:
        """
        --print-toml writes them back as they were read.
        """
        config = parseConfig(FULL, "p.toml")
        again = parseConfig(renderToml(config), "p.toml")
        self.assertEqual(again.proxies, config.proxies)
        self.assertEqual(again.maxConnections, config.maxConnections)

    def test_mistakes(self) -> None:
        """
        Each mistake is one problem naming the file, line and key.
        """
        cases = {
            "max-queue = 5": "p.toml:3: proxy[0].max-queue: needs max-connections",
            "client-burst = 5": "p.toml:3: proxy[0].client-burst: needs client-rate",
            'access = ["permit all"]': "p.toml:3: proxy[0].access[0]: 'permit all' is not",
            'access = "deny all"': "p.toml:3: proxy[0].access: must be an array of rules",
            "client-rate = -1": "p.toml:3: proxy[0].client-rate: must be a number",
            "client-keepalive = { interval = 5 }": "p.toml:3: proxy[0].client-keepalive: needs idle",
            "client-keepalive = { idle = 5, often = 1 }":
                "p.toml:3: proxy[0].client-keepalive.often: unknown key",
            # Beyond what the system takes (it failed every session once).
            "client-keepalive = { idle = 2147483648 }":
                "p.toml:3: proxy[0].client-keepalive.idle: must be at most 32767 seconds",
            "backend-keepalive = { idle = 60, interval = 40000 }":
                "p.toml:3: proxy[0].backend-keepalive.interval: must be at most 32767 seconds",
            "client-ipv6-prefix = 200": "p.toml:3: proxy[0].client-ipv6-prefix: must be 1 to 128",
        }
        for line, expected in cases.items():
            text = f'[[proxy]]\nlisten = "tcp:8080"\n{line}\n[[proxy.backend]]\nendpoint = "tcp:host=127.0.0.1:port=1"\n'
            with self.assertRaises(ConfigError, msg=line) as caught:
                parseConfig(text, "p.toml")
            problems = [str(p) for p in caught.exception.problems]
            self.assertTrue(any(p.startswith(expected) for p in problems), (line, problems))


class ReloadTests(SynchronousTestCase):
    def test_raisedLimitServesQueue(self) -> None:
        """
        A reload that raises C{max-connections} serves waiting clients at
        once; per-client counts survive it.
        """
        from dataclasses import replace

        proxy = Proxy(
            labels=("a",),
            protection=Protection(maxConnections=1, maxQueue=5, clientMaxConnections=3),
        )
        proxy.accept(ip("192.0.2.1", 1))
        proxy.accept(ip("192.0.2.1", 2))
        self.assertEqual(len(proxy.endpoints["a"].attempts), 1)
        config = replace(proxy.config, protection=replace(proxy.config.protection,
                                                          maxConnections=5))
        proxy.pool.reconfigure(config, proxy.pool.default.backends, proxy.pool.balancer)
        self.assertEqual(len(proxy.endpoints["a"].attempts), 2)
        self.assertEqual(len(proxy.pool.admission.queue), 0)
        proxy.accept(ip("192.0.2.1", 3))
        _, fourth = proxy.accept(ip("192.0.2.1", 4))
        self.assertTrue(fourth.aborted, "the client's count was kept: 3 sessions already")

    def test_rulesAddedAndRemoved(self) -> None:
        """
        Access rules and client limits added by a reload apply to the next
        client, and once removed by another reload no longer do (admission
        checks a client only while there is something to check).
        """
        from dataclasses import replace

        proxy = Proxy(labels=("a",))
        _, first = proxy.accept(ip("192.0.2.1", 1))
        self.assertFalse(first.aborted)
        # (Sessions admitted while there were no client limits are not
        # counted under their client: the second one here is.)
        for protection, allowed in (
            (Protection(access=("deny all",)), 0),
            (Protection(clientMaxConnections=1), 1),
        ):
            config = replace(proxy.config, protection=protection)
            proxy.pool.reconfigure(config, proxy.pool.default.backends, proxy.pool.balancer)
            with capturedLogs():
                results = [proxy.accept(ip("192.0.2.1", 2))[1].aborted for _ in range(2)]
            self.assertEqual(results, [False] * allowed + [True] * (2 - allowed), protection)
            config = replace(proxy.config, protection=Protection())
            proxy.pool.reconfigure(config, proxy.pool.default.backends, proxy.pool.balancer)
            _, admitted = proxy.accept(ip("192.0.2.1", 3))
            self.assertFalse(admitted.aborted, protection)
