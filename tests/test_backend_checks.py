"""
Tests of active health checks wired into backends, pools, the service, the
status site and the config reader: a backend down by its checks gets no new
sessions, passive and active checks combine, each change is logged once,
checks count in no session counter, and a reload keeps a staying backend's
check.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeEndpoint, Proxy
from tests.test_status import render
from txsockproxy.backends import FAILING, MAINTENANCE, UNHEALTHY, UP, Backend
from txsockproxy.config import (
    BackendConfig,
    CheckConfig,
    Config,
    ConfigError,
    ProxyConfig,
    StatusConfig,
)
from txsockproxy.healthcheck import CHECK_DOWN
from txsockproxy.proxyprotocol import localHeader, parseHeader
from txsockproxy.render import describeConfig, renderToml
from txsockproxy.service import ProxyService
from txsockproxy.status import statusPage, statusResource
from txsockproxy.tomlconfig import parseConfig

CONNECT = CheckConfig("connect", interval=2.0, timeout=1.0, rise=2, fall=3)


def probe(proxy: Proxy, label: str) -> FakeEndpoint:
    """
    Advance C{proxy}'s clock until the next probe of backend C{label}
    starts (at most one interval and its jitter).
    """
    endpoint = proxy.endpoints[label]
    before = len(endpoint.attempts)
    for _ in range(400):
        if len(endpoint.attempts) > before:
            return endpoint
        proxy.clock.advance(0.01)
    raise AssertionError(f"no probe of {label} within 4 s")


def failProbes(proxy: Proxy, label: str, count: int) -> None:
    for _ in range(count):
        probe(proxy, label).fail(ConnectionRefusedError())


def passProbes(proxy: Proxy, label: str, count: int) -> None:
    for _ in range(count):
        probe(proxy, label).succeed()


def messages(logs: list[dict[str, Any]], text: str) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in logs if text in formatEvent(e)]


class AvailabilityTests(SynchronousTestCase):
    """
    A backend takes new sessions only when an operator has it up, no
    disable-time runs, and its health check does not say down.
    """

    def setUp(self) -> None:
        self.proxy = Proxy(check=CONNECT)
        self.proxy.pool.startChecks()
        self.addCleanup(self.proxy.pool.stopChecks)
        self.a = self.proxy.backends["a"]
        self.b = self.proxy.backends["b"]

    def test_downByChecksGetsNoSessions(self) -> None:
        """
        After C{fall} failed probes the backend is C{unhealthy}: new sessions
        go to the other backend, and no connect of a session is tried on it.
        """
        failProbes(self.proxy, "a", 3)
        now = self.proxy.clock.seconds()
        self.assertEqual(self.a.stateAt(now), UNHEALTHY)
        self.assertFalse(self.a.availableAt(now))
        before = {label: len(e.attempts) for label, e in self.proxy.endpoints.items()}
        for _ in range(4):
            self.proxy.accept()
        after = {label: len(e.attempts) for label, e in self.proxy.endpoints.items()}
        self.assertEqual((after["a"] - before["a"], after["b"] - before["b"]), (0, 4))

    def test_comesBackAfterRise(self) -> None:
        """
        A backend down by checks takes sessions again after C{rise} good
        probes in a row, not after fewer.
        """
        failProbes(self.proxy, "a", 3)
        passProbes(self.proxy, "a", 1)
        self.assertFalse(self.a.availableAt(self.proxy.clock.seconds()))
        passProbes(self.proxy, "a", 1)
        self.assertTrue(self.a.availableAt(self.proxy.clock.seconds()))
        self.assertEqual(self.a.stateAt(self.proxy.clock.seconds()), UP)

    def test_passiveAndActiveCombine(self) -> None:
        """
        A failed session connect disables the backend for its disable-time
        even while its checks say up; a good probe does not end that
        disable-time; an operator's down wins over both; checks down keep
        it out once the disable-time is over.
        """
        self.proxy.pool.stopChecks()
        self.proxy = Proxy(check=CONNECT, disableTime=10.0)
        self.proxy.pool.startChecks()
        self.addCleanup(self.proxy.pool.stopChecks)
        self.a = self.proxy.backends["a"]
        pool, clock = self.proxy.pool, self.proxy.clock
        self.a.active += 1  # as pick() does for the session
        pool.connectFailed(self.a, _refused())
        self.assertEqual(self.a.stateAt(clock.seconds()), FAILING)
        passProbes(self.proxy, "a", 2)
        self.assertLess(clock.seconds(), 10.0)
        self.assertEqual(self.a.stateAt(clock.seconds()), FAILING)
        self.assertFalse(self.a.availableAt(clock.seconds()))
        clock.advance(10.0)
        self.assertTrue(self.a.availableAt(clock.seconds()))
        self.a.adminState = MAINTENANCE
        self.assertEqual(self.a.stateAt(clock.seconds()), MAINTENANCE)
        self.assertFalse(self.a.availableAt(clock.seconds()))
        self.a.adminState = UP
        failProbes(self.proxy, "a", 3)
        self.assertEqual(self.a.stateAt(clock.seconds()), UNHEALTHY)
        self.a.adminState = MAINTENANCE
        self.assertEqual(self.a.stateAt(clock.seconds()), MAINTENANCE, "the operator's state first")
        self.a.adminState = UP
        self.assertFalse(self.a.availableAt(clock.seconds()))

    def test_checksAreNotSessions(self) -> None:
        """
        Probes, good or failed, touch no session counter of the backend or
        the proxy; the check keeps its own.
        """
        failProbes(self.proxy, "a", 2)
        passProbes(self.proxy, "a", 3)
        pool = self.proxy.pool
        self.assertEqual(
            (self.a.active, self.a.connected, self.a.failed, self.a.lastError),
            (0, 0, 0, ""),
        )
        self.assertEqual(self.a.disabledUntil, 0.0)
        self.assertEqual((pool.accepted, pool.active, pool.refused), (0, 0, 0))
        assert self.a.health is not None
        self.assertEqual((self.a.health.checks, self.a.health.failures), (5, 2))

    def test_loggedOncePerChange(self) -> None:
        """
        Going down is logged once, at warning level, with the reason and
        the run of failures; more failures log nothing; coming back is
        logged once with the run of good checks.
        """
        with capturedLogs() as logs:
            failProbes(self.proxy, "a", 6)
            passProbes(self.proxy, "a", 4)
        down = messages(logs, "backend a is down")
        self.assertEqual(down, [
            "proxy test: backend a is down (health check: connection refused, "
            "3 failed checks in a row)"
        ])
        self.assertEqual(messages(logs, "backend a is up again"),
                         ["proxy test: backend a is up again (2 good checks in a row)"])
        levels = {formatEvent(e): e["log_level"].name for e in logs}
        self.assertEqual(levels[down[0]], "warn")

    def test_changeLinesBounded(self) -> None:
        """
        A backend that flaps (rise = fall = 1) logs at most 10 changes a
        minute, then one line saying how many were left out and where it
        stands; its counters and state stay exact. Another backend has a
        budget of its own.
        """
        proxy = Proxy(check=CheckConfig("connect", interval=0.1, timeout=1.0, rise=1, fall=1))
        proxy.pool.startChecks()
        self.addCleanup(proxy.pool.stopChecks)
        with capturedLogs() as logs:
            for _ in range(20):
                failProbes(proxy, "a", 1)
                passProbes(proxy, "a", 1)
            failProbes(proxy, "a", 1)
            failProbes(proxy, "b", 1)
            logged = len(messages(logs, "backend a is"))
            a = proxy.backends["a"]
            assert a.health is not None
            self.assertEqual((a.health.checks, a.health.failures), (41, 21))
            proxy.clock.advance(60)
        self.assertEqual(logged, 10)
        self.assertEqual(len(messages(logs, "backend b is down (health check: ")), 1)
        self.assertEqual(messages(logs, "more health-check changes"), [
            "31 more health-check changes of backend a of proxy test not logged in the last 60s; "
            "now down"
        ])
        self.assertEqual(a.health.state, CHECK_DOWN)

    def test_allDownByChecks(self) -> None:
        """
        With every backend down by checks, a client is refused and "all
        backends down" is logged once.
        """
        with capturedLogs() as logs:
            failProbes(self.proxy, "a", 3)
            failProbes(self.proxy, "b", 3)
            for _ in range(3):
                self.proxy.accept()
        self.assertEqual(self.proxy.pool.refused, 3)
        self.assertEqual(len(messages(logs, "all backends down")), 1)

    def test_stopLeavesNothingScheduled(self) -> None:
        """
        L{BackendPool.stopChecks} cancels the probes' timers and the probe
        in flight: nothing stays scheduled on the clock.
        """
        probe(self.proxy, "a")  # one in flight
        self.proxy.pool.stopChecks()
        self.assertEqual(self.proxy.clock.getDelayedCalls(), [])
        self.assertEqual(self.proxy.endpoints["a"].cancelled, 1)

    def test_stopWhileAwaitingReply(self) -> None:
        """
        A check stopped while connected and waiting for its reply aborts
        the connection and leaves no timeout scheduled, even before the
        connection is reported closed.
        """
        proxy = Proxy(check=CheckConfig("send-expect", send=b"PING\r\n", expect=b"+PONG"))
        proxy.pool.startChecks()
        _, transport = probe(proxy, "a").succeed()
        proxy.pool.stopChecks()
        self.assertTrue(transport.aborted)
        self.assertEqual(proxy.clock.getDelayedCalls(), [])


class ProxyHeaderCheckTests(SynchronousTestCase):
    """
    Probes of a backend sent PROXY protocol headers send one first, for a
    connection of the proxy's own.
    """

    def test_headerFirst(self) -> None:
        """
        A C{send-proxy = "v1"} backend's probe sends C{PROXY UNKNOWN} and
        then C{check-send}; the reply is then looked for as usual.
        """
        proxy = Proxy(sendProxy="v1", check=CheckConfig(
            "send-expect", send=b"PING\r\n", expect=b"+PONG"))
        proxy.pool.startChecks()
        self.addCleanup(proxy.pool.stopChecks)
        protocol, transport = probe(proxy, "a").succeed()
        self.assertEqual(transport.value(), b"PROXY UNKNOWN\r\nPING\r\n")
        protocol.dataReceived(b"+PONG\r\n")
        health = proxy.backends["a"].health
        assert health is not None
        self.assertEqual((health.checks, health.lastResult), (1, "ok"))

    def test_localHeaderParses(self) -> None:
        """
        The version 2 header probes send is a valid C{LOCAL} header: a
        server reading it keeps the connection's own addresses.
        """
        parsed = parseHeader(localHeader("v2") + b"rest")
        assert not isinstance(parsed, str), parsed
        self.assertEqual(len(localHeader("v2")), 16)
        self.assertIsNone(parsed.source)
        self.assertEqual(parseHeader(localHeader("v1")).source, None)  # type: ignore[union-attr]


def formatEvent(event: dict[str, Any]) -> str:
    from twisted.logger import formatEvent as format

    return format(event)


def _refused() -> Any:
    from twisted.python.failure import Failure

    return Failure(ConnectionRefusedError())


A = BackendConfig(endpoint="tcp:host=10.0.0.1:port=80", label="a", check=CONNECT)
B = BackendConfig(endpoint="tcp:host=10.0.0.2:port=80", label="b", check=CONNECT)
C = BackendConfig(endpoint="tcp:host=10.0.0.3:port=80", label="c", check=CONNECT)


def config(*backends: BackendConfig, status: bool = False) -> Config:
    return Config(
        proxies=(ProxyConfig(name="web", listen=("tcp:8080",), backends=backends),),
        status=StatusConfig(listen=("tcp:9180",)) if status else None,
    )


class ServiceCheckTests(SynchronousTestCase):
    """
    The service starts the checks when it serves, stops them when it stops,
    and a reload keeps a staying backend's check.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.service = ProxyService(config(A, B), self.reactor)

    def backend(self, label: str) -> Backend:
        found = self.service.pools["web"].backend(label)
        assert found is not None
        return found

    def failUntilDown(self, label: str) -> None:
        # Probes to the memory reactor never connect: each times out.
        health = self.backend(label).health
        assert health is not None
        for _ in range(200):
            if health.state == CHECK_DOWN:
                return
            self.reactor.advance(0.1)
        self.fail(f"{label} not down after 20 s")

    def test_startWhenServing(self) -> None:
        """
        Before the service starts no probe is made; once it serves, each
        checked backend is probed within its interval.
        """
        self.reactor.advance(10)
        self.assertEqual(self.reactor.tcpClients, [])
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.reactor.advance(2.0)
        self.assertEqual(sorted(c[0] for c in self.reactor.tcpClients),
                         ["10.0.0.1", "10.0.0.2"])

    def test_stopLeavesNothing(self) -> None:
        """
        Stopping the service stops every check: no probe scheduled or in
        flight keeps the reactor busy.
        """
        self.service.startService()
        self.reactor.advance(1.9)
        self.service.stopService()
        for label in ("a", "b"):
            health = self.backend(label).health
            assert health is not None
            self.assertFalse(health.running)
        made = len(self.reactor.tcpClients)
        self.reactor.advance(30)
        self.assertEqual(len(self.reactor.tcpClients), made)

    def test_reloadKeepsState(self) -> None:
        """
        On reload a backend that stays keeps its check (state and counters)
        with the new settings; a removed backend's check stops; a new
        backend's check starts.
        """
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.failUntilDown("a")
        before = self.backend("a").health
        assert before is not None
        checks = before.checks
        slower = CheckConfig("connect", interval=5.0, timeout=1.0, rise=1, fall=3)
        removed = self.backend("b").health
        with capturedLogs() as logs:
            self.service.apply(config(
                BackendConfig(endpoint=A.endpoint, label="a", check=slower), C
            ))
        after = self.backend("a").health
        self.assertIs(after, before)
        assert after is not None
        self.assertEqual((after.state, after.checks), (CHECK_DOWN, checks))
        self.assertEqual((after.interval, after.rise), (5.0, 1))
        self.assertTrue(after.running)
        assert removed is not None
        self.assertFalse(removed.running)
        newcomer = self.backend("c").health
        assert newcomer is not None
        self.assertTrue(newcomer.running)
        self.assertEqual(messages(logs, "is down"), [])
        self.assertEqual(messages(logs, "is up again"), [])

    def test_reloadTurnsCheckOff(self) -> None:
        """
        A reload that turns a backend's check off puts it back in rotation
        at once, and says so once.
        """
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.failUntilDown("a")
        with capturedLogs() as logs:
            self.service.apply(config(BackendConfig(endpoint=A.endpoint, label="a"), B))
        a = self.backend("a")
        self.assertIsNone(a.health)
        self.assertTrue(a.availableAt(self.reactor.seconds()))
        self.assertEqual(messages(logs, "backend a is up again"),
                         ["proxy web: backend a is up again (health check turned off)"])


class StatusCheckTests(SynchronousTestCase):
    """
    The status site shows each backend's check.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.service = ProxyService(
            config(A, BackendConfig(endpoint=B.endpoint, label="b"), status=True), self.reactor
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        health = self.service.pools["web"].backends[0].health
        assert health is not None
        for _ in range(200):
            if health.state == CHECK_DOWN:
                break
            self.reactor.advance(0.1)
        self.downAt = self.reactor.seconds()
        self.reactor.advance(1.0)
        self.root = statusResource(self.service.statusView)

    def test_json(self) -> None:
        """
        C{check} is null for an unchecked backend; for a checked one it
        gives state, last result, seconds since the last change, and counts.
        """
        _, body, _ = render(self.root, b"/status.json")
        a, b = json.loads(body)["proxies"][0]["backends"]
        self.assertIsNone(b["check"])
        self.assertEqual(a["state"], UNHEALTHY)
        check = a["check"]
        self.assertEqual(
            (check["kind"], check["state"], check["last_result"], check["failures"]),
            ("connect", "down", "no connection within 1s", check["checks"]),
        )
        self.assertGreaterEqual(check["checks"], 3)
        self.assertAlmostEqual(check["last_change"], self.reactor.seconds() - self.downAt, 3)

    def test_metrics(self) -> None:
        """
        C{sockproxy_backend_check_up} is 0 for a backend down by checks and
        given only for checked backends; the check counters are there, and
        the state gauge says C{unhealthy}.
        """
        _, body, _ = render(self.root, b"/metrics")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        a = (("backend", "a"), ("proxy", "web"))
        b = (("backend", "b"), ("proxy", "web"))
        self.assertEqual(samples[("sockproxy_backend_check_up", a)], 0)
        self.assertNotIn(("sockproxy_backend_check_up", b), samples)
        self.assertGreaterEqual(samples[("sockproxy_backend_checks_total", a)], 3)
        self.assertEqual(samples[("sockproxy_backend_checks_total", a)],
                         samples[("sockproxy_backend_check_failures_total", a)])
        self.assertEqual(
            samples[("sockproxy_backend_state", a + (("state", "unhealthy"),))], 1
        )

    def test_page(self) -> None:
        """
        The HTML page shows the state C{unhealthy} and the check in the
        backend's row, and C{–} for an unchecked one.
        """
        page = statusPage(self.service.statusView)
        self.assertIn('<tr class="unhealthy">', page)
        self.assertIn('<td class="state text st-unhealthy">unhealthy</td>', page)
        self.assertIn('<span class="state st-unhealthy">down</span> for 1 s'
                      "<small>no connection within 1s · 3 checks, 3 failed</small>", page)
        self.assertIn('<td class="check none">–</td>', page)


TOML = """
[[proxy]]
name = "db"
listen = ["tcp:6380"]
check = "connect"
check-interval = 0.5
fall = 2

[[proxy.backend]]
endpoint = "tcp:host=127.0.0.1:port=6379"
check = "send-expect"
check-send = "PING\\r\\n"
check-expect = "+PONG"
rise = 4

[[proxy.backend]]
endpoint = "tcp:host=127.0.0.1:port=6381"

[[proxy.backend]]
endpoint = "tcp:host=127.0.0.1:port=6382"
check = "off"
"""


class CheckConfigTests(SynchronousTestCase):
    """
    The check keys: per backend, with the proxy's as defaults; checked
    once, with one-line errors naming file, line and key.
    """

    def problems(self, text: str) -> list[str]:
        with self.assertRaises(ConfigError) as caught:
            parseConfig(text, "c.toml")
        return [str(p) for p in caught.exception.problems]

    def test_defaultsAndOverrides(self) -> None:
        """
        A backend takes the proxy's check keys unless it writes its own;
        C{check-send} holds TOML's escapes as bytes; C{check = "off"} turns
        it off; with no key at all the check is off.
        """
        first, second, third = parseConfig(TOML, "c.toml").proxies[0].backends
        self.assertEqual(first.check, CheckConfig(
            "send-expect", interval=0.5, timeout=1.0, rise=4, fall=2,
            send=b"PING\r\n", expect=b"+PONG",
        ))
        self.assertEqual(second.check, CheckConfig("connect", interval=0.5, fall=2))
        self.assertIsNone(third.check)
        plain = parseConfig('[[proxy]]\nlisten = ["tcp:1"]\n[[proxy.backend]]\n'
                            'endpoint = "tcp:host=h:port=2"\n', "c.toml")
        self.assertIsNone(plain.proxies[0].backends[0].check)

    def test_defaults(self) -> None:
        """
        C{check = "connect"} alone gives interval 2 s, timeout 1 s, rise 2,
        fall 3.
        """
        parsed = parseConfig('[[proxy]]\nlisten = ["tcp:1"]\n[[proxy.backend]]\n'
                             'endpoint = "tcp:host=h:port=2"\ncheck = "connect"\n', "c.toml")
        self.assertEqual(parsed.proxies[0].backends[0].check,
                         CheckConfig("connect", 2.0, 1.0, 2, 3))

    def test_errors(self) -> None:
        """
        Wrong check keys give one line each, naming file, line and key.
        """
        text = (
            '[[proxy]]\nlisten = ["tcp:1"]\n'
            '[[proxy.backend]]\nendpoint = "tcp:host=h:port=2"\ncheck = "ping"\n'
            '[[proxy.backend]]\nendpoint = "tcp:host=h:port=3"\ncheck = "send-expect"\n'
            '[[proxy.backend]]\nendpoint = "tcp:host=h:port=4"\nrise = 0\n'
            'check-interval = 0\n'
            '[[proxy.backend]]\nendpoint = "tcp:host=h:port=5"\ncheck = "connect"\n'
            'check-send = "x"\n'
            '[[proxy.backend]]\nendpoint = "tcp:host=h:port=6"\ncheck = "send-expect"\n'
            'check-expect = ""\n'
        )
        self.assertEqual(self.problems(text), [
            "c.toml:5: proxy[0].backend[0].check: must be one of 'off', 'connect', "
            "'send-expect', not 'ping'",
            'c.toml:8: proxy[0].backend[1].check: check = "send-expect" needs check-expect: '
            "the bytes a good reply contains",
            "c.toml:11: proxy[0].backend[2].rise: must be 1 to 1000, not 0",
            "c.toml:12: proxy[0].backend[2].check-interval: must be more than 0, not 0",
            'c.toml:16: proxy[0].backend[3].check-send: applies to check = "send-expect" '
            "only, not 'connect'",
            "c.toml:20: proxy[0].backend[4].check-expect: must not be empty (every reply "
            "contains nothing)",
        ])

    def test_proxyLevelError(self) -> None:
        """
        A proxy's C{check = "send-expect"} without C{check-expect} is one
        problem, at the proxy, not one per backend.
        """
        text = ('[[proxy]]\nlisten = ["tcp:1"]\ncheck = "send-expect"\n'
                '[[proxy.backend]]\nendpoint = "tcp:host=h:port=2"\n'
                '[[proxy.backend]]\nendpoint = "tcp:host=h:port=3"\n')
        self.assertEqual(self.problems(text), [
            'c.toml:3: proxy[0].check: check = "send-expect" needs check-expect: the bytes '
            "a good reply contains",
        ])

    def test_renderRoundTrip(self) -> None:
        """
        C{--print-toml} writes each backend's check, and reads back the same;
        C{--check} shows the settings.
        """
        parsed = parseConfig(TOML, "c.toml")
        again = parseConfig(renderToml(parsed), "c.toml")
        self.assertEqual(again.proxies, parsed.proxies)
        self.assertIn('check-send = "PING\\r\\n"', renderToml(parsed))
        described = describeConfig(parsed)
        self.assertIn(
            "check=send-expect check-interval=0.5s check-timeout=1s rise=4 fall=2 "
            "check-send=b'PING\\r\\n' check-expect=b'+PONG'", described,
        )
        self.assertIn("check=connect check-interval=0.5s check-timeout=1s rise=2 fall=2",
                      described)
