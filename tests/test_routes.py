"""
Tests for routing TLS passthrough by server name: the patterns and their
precedence (L{txsockproxy.routes}), the C{[[proxy.route]]} configuration,
and the relay sending each session to its route's backends
(L{txsockproxy.backends.BackendPool}, with fakes and a L{Clock}).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import Proxy, certificate, lost
from tests.test_config import SOURCE, ConfigTestCase, parse
from tests.test_lighttpd import SOURCE as LIGHTTPD_SOURCE
from tests.test_lighttpd import LighttpdTestCase
from tests.test_lighttpd import parse as lighttpdParse
from tests.test_sni import clientHello, records
from tests.test_status import render
from txsockproxy.config import (
    DEFAULT_ROUTE_INSPECT_DELAY,
    BackendConfig,
    Config,
    ProxyConfig,
    RouteConfig,
)
from txsockproxy.render import describeConfig, renderToml
from txsockproxy.routes import RouteTable, checkPattern
from txsockproxy.service import ProxyService
from txsockproxy.sessionlog import sessionFields
from txsockproxy.status import StatusView, statusDocument, statusPage, statusResource

# A proxy with a default backend "d", a route "api" (backends a1, a2) and a
# route "web" (backend w1) with a more specific wildcard of its own.
ROUTES = (
    ("api", ("api.example.com", "*.example.com"), ("a1", "a2")),
    ("web", ("*.web.example.com", "www.example.org"), ("w1",)),
)


def routed(serverNames: dict[str, str]) -> RouteTable[str]:
    return RouteTable((checkPattern(p)[0], v) for p, v in serverNames.items())


class PatternTests(SynchronousTestCase):
    """
    L{checkPattern} accepts exact names and C{*.} wildcards, normalized, and
    names what is wrong with anything else.
    """

    def test_normalized(self) -> None:
        """
        Patterns are lower-cased and lose one trailing dot.
        """
        self.assertEqual(checkPattern("API.Example.COM."), ("api.example.com", ""))
        self.assertEqual(checkPattern("*.Example.com"), ("*.example.com", ""))
        self.assertEqual(checkPattern("xn--bcher-kva.example"), ("xn--bcher-kva.example", ""))
        self.assertEqual(checkPattern("localhost"), ("localhost", ""))

    def test_bad(self) -> None:
        """
        Empty names, stray or inner wildcards, empty labels, characters no
        host name has, non-ASCII names and over-long labels are refused,
        each with a message naming the pattern.
        """
        for pattern, words in [
            ("", "empty"),
            ("  ", "empty"),
            ("*", "'*' may only be"),
            ("*.", "needs a domain"),
            ("*..", "empty label"),
            ("a.*.com", "'*' may only be"),
            ("*example.com", "'*' may only be"),
            ("**.example.com", "'*' may only be"),
            ("a..example.com", "empty label"),
            (".example.com", "empty label"),
            ("example.com..", "empty label"),
            ("exa mple.com", "not a host name label"),
            ("-a.example.com", "not a host name label"),
            ("a:443", "not a host name label"),
            ("bücher.example", "xn--"),
            ("a" * 64 + ".com", "not a host name label"),
            ("a." * 127 + "com", "longer than 253"),
        ]:
            normal, error = checkPattern(pattern)
            self.assertEqual(normal, "", pattern)
            self.assertIn(words, error, pattern)
            self.assertNotIn("\n", error)


class RouteTableTests(SynchronousTestCase):
    """
    L{RouteTable.lookup}: an exact name beats every wildcard; of the
    wildcards, the longest wins; whatever the order they were given in.
    """

    def test_precedence(self) -> None:
        """
        Exact beats wildcard, a longer wildcard beats a shorter one, and a
        wildcard needs at least one label in front of its domain.
        """
        table = routed({
            "*.example.com": "wild", "api.example.com": "exact",
            "*.api.example.com": "deeper",
        })
        self.assertEqual(table.lookup("api.example.com"), "exact")
        self.assertEqual(table.lookup("v1.api.example.com"), "deeper")
        self.assertEqual(table.lookup("a.b.api.example.com"), "deeper")
        self.assertEqual(table.lookup("shop.example.com"), "wild")
        self.assertEqual(table.lookup("a.b.example.com"), "wild")
        self.assertIsNone(table.lookup("example.com"))
        self.assertIsNone(table.lookup("example.org"))
        self.assertIsNone(table.lookup("notexample.com"))

    def test_caseAndTrailingDot(self) -> None:
        """
        Names are matched case-insensitively, a trailing dot ignored.
        """
        table = routed({"API.example.com": "exact", "*.Example.COM": "wild"})
        self.assertEqual(table.lookup("api.EXAMPLE.com."), "exact")
        self.assertEqual(table.lookup("Shop.Example.Com."), "wild")

    def test_noName(self) -> None:
        """
        A client without a name matches nothing; an empty table nothing.
        """
        self.assertIsNone(routed({"*.example.com": "wild"}).lookup(None))
        self.assertIsNone(routed({"*.example.com": "wild"}).lookup(""))
        self.assertIsNone(RouteTable[str]().lookup("a.example.com"))
        self.assertFalse(RouteTable[str]())

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(st.booleans(), st.lists(st.sampled_from("abc"), min_size=1, max_size=4)),
            max_size=8,
        ),
        st.lists(st.sampled_from("abc"), min_size=1, max_size=5),
    )
    def test_matchesReference(
        self, patterns: list[tuple[bool, list[str]]], labels: list[str]
    ) -> None:
        """
        For any patterns and name, the table finds what the documented rule
        says: the exact pattern if given, else the longest matching wildcard.
        """
        written = [("*." if wild else "") + ".".join(p) for wild, p in patterns]
        order = list(dict.fromkeys(written))
        table = RouteTable((p, p) for p in order)
        name = ".".join(labels)
        expected: Optional[str] = name if name in order else None
        if expected is None:
            wild = [p for p in order if p.startswith("*.") and name.endswith(p[1:])]
            expected = max(wild, key=len) if wild else None
        self.assertEqual(table.lookup(name), expected)


CONFIG = '''\
[[proxy]]
name = "tls"
listen = "tcp:8443"
balance = "round-robin"

[[proxy.backend]]
endpoint = "tcp:host=127.0.0.1:port=10000"

[[proxy.route]]
names = ["API.example.com.", "*.api.example.com"]
balance = "fair"

[[proxy.route.backend]]
endpoint = "tcp:host=127.0.0.1:port=10001"
label = "api-1"

[[proxy.route.backend]]
endpoint = "tcp:host=127.0.0.1:port=10002"

[[proxy.route]]
name = "shop"
names = ["shop.example.com"]

[[proxy.route.backend]]
endpoint = "tcp:host=127.0.0.1:port=10000"
label = "shop-1"
'''


class RouteConfigTests(ConfigTestCase):
    """
    C{[[proxy.route]]} tables: read into L{RouteConfig}s, and checked.
    """

    def test_read(self) -> None:
        """
        Routes are read with their normalized names, their balancer and
        backends; a route without a name is named after its first pattern.
        The same endpoint may serve several routes under other labels.
        """
        [proxy] = parse(CONFIG).proxies
        self.assertEqual([b.label for b in proxy.backends], ["tcp:host=127.0.0.1:port=10000"])
        api, shop = proxy.routes
        self.assertEqual((api.name, api.names, api.balance),
                         ("api.example.com", ("api.example.com", "*.api.example.com"), "fair"))
        self.assertEqual([b.label for b in api.backends],
                         ["api-1", "tcp:host=127.0.0.1:port=10002"])
        self.assertEqual((shop.name, shop.names, shop.balance),
                         ("shop", ("shop.example.com",), "fair"))
        self.assertEqual(proxy.inspectDelay, 0)
        self.assertIn(f"inspect-delay       {DEFAULT_ROUTE_INSPECT_DELAY:g}s",
                      describeConfig(parse(CONFIG)))

    def test_renderedAndReadBack(self) -> None:
        """
        L{renderToml} writes routes so that they read back the same.
        """
        config = parse(CONFIG)
        again = parse(renderToml(config))
        self.assertEqual(again.proxies, config.proxies)

    def test_onlyRoutes(self) -> None:
        """
        A proxy may have no backends of its own when it has routes.
        """
        [proxy] = parse(
            '[[proxy]]\nlisten = "tcp:8443"\n[[proxy.route]]\nnames = ["a.example"]\n'
            '[[proxy.route.backend]]\nendpoint = "tcp:host=127.0.0.1:port=1"\n'
        ).proxies
        self.assertEqual(proxy.backends, ())
        self.assertEqual(len(proxy.routes), 1)

    def test_neitherBackendsNorRoutes(self) -> None:
        """
        A proxy with neither backends nor routes is still an error.
        """
        self.assertOneProblem('[[proxy]]\nlisten = "tcp:8443"\n', 1, "proxy[0].backend",
                              "at least one [[proxy.backend]]")

    def test_duplicatePattern(self) -> None:
        """
        A server name routed twice (once normalized) is reported where it is
        written again, naming where it was first.
        """
        problem = self.assertOneProblem(
            CONFIG + '\n[[proxy.route]]\nnames = ["Shop.Example.com."]\n'
            '[[proxy.route.backend]]\nendpoint = "tcp:host=127.0.0.1:port=10003"\n',
            29, "proxy[0].route[2].names", "duplicate server name 'shop.example.com'",
        )
        self.assertIn("proxy[0].route[1].names (line 22)", problem.message)

    def test_duplicateInOneRoute(self) -> None:
        """
        The same pattern twice in one route is reported too.
        """
        self.assertOneProblem(
            CONFIG.replace('"*.api.example.com"', '"api.example.com"'), 10,
            "proxy[0].route[0].names", "duplicate server name 'api.example.com'",
        )

    def test_badPattern(self) -> None:
        """
        A bad pattern is one line naming the file, the line and the key.
        """
        problem = self.assertOneProblem(
            CONFIG.replace('"shop.example.com"', '"shop.*.com"'), 22,
            "proxy[0].route[1].names", "'*' may only be the whole first label",
        )
        self.assertTrue(str(problem).startswith(f"{SOURCE}:22: proxy[0].route[1].names: "))

    def test_routeProblems(self) -> None:
        """
        A route without names, with names that are not strings, without
        backends, named "default", or with an unknown key or balancer, is
        reported.
        """
        base = '[[proxy]]\nlisten = "tcp:8443"\n[[proxy.route]]\n'
        backend = '[[proxy.route.backend]]\nendpoint = "tcp:host=127.0.0.1:port=1"\n'
        self.assertOneProblem(base + backend, 3, "proxy[0].route[0].names", "missing")
        self.assertOneProblem(base + "names = []\n" + backend, 4, "proxy[0].route[0].names",
                              "non-empty array")
        self.assertOneProblem(base + "names = [1]\n" + backend, 4, "proxy[0].route[0].names",
                              "must hold strings")
        self.assertOneProblem(base + 'names = ["a.b"]\n', 3, "proxy[0].route[0].backend",
                              "at least one [[proxy.route.backend]]")
        self.assertOneProblem(base + 'names = ["a.b"]\nname = "default"\n' + backend, 5,
                              "proxy[0].route[0].name", "names the proxy's own backends")
        self.assertOneProblem(base + 'names = ["a.b"]\nbalance = "nope"\n' + backend, 5,
                              "proxy[0].route[0].balance", "nope")
        self.assertOneProblem(base + 'names = ["a.b"]\nidle-timeout = 3\n' + backend, 5,
                              "proxy[0].route[0].idle-timeout", "a key of [[proxy]]")
        self.assertOneProblem('[[proxy]]\nlisten = "tcp:8443"\nroute = 3\n', 3,
                              "proxy[0].route", "array of tables")

    def test_duplicateRouteName(self) -> None:
        """
        Route names are unique within a proxy.
        """
        self.assertOneProblem(
            CONFIG.replace('name = "shop"', 'name = "api.example.com"'),
            21, "proxy[0].route[1].name", "duplicate route name 'api.example.com'",
        )

    def test_labelsUniqueAcrossRoutes(self) -> None:
        """
        Backend labels are unique across the proxy, routes included: they
        name backends on the status page and in its admin actions.
        """
        self.assertOneProblem(
            CONFIG.replace('label = "shop-1"', 'label = "api-1"'), 26,
            "proxy[0].route[1].backend[0].label", "duplicate backend label 'api-1'",
        )


def serve(proxy: Proxy, data: bytes, label: str) -> bytes:
    """
    A client sends C{data}; the connect to backend C{label} succeeds.

    @return: what that backend received.
    """
    client, _ = proxy.accept()
    client.dataReceived(data)
    _, bt = proxy.endpoints[label].succeed()
    return bt.value()


class RoutingTests(SynchronousTestCase):
    """
    A proxy with routes sends each session to the group its ClientHello's
    server name leads to; anything else goes to the default group.
    """

    def test_routedByName(self) -> None:
        """
        A name of a route goes to that route's backends, through its own
        balancer; the best match wins; the ClientHello reaches the backend
        byte for byte.
        """
        proxy = Proxy(labels=("d",), routes=ROUTES)
        for name, label in [
            (b"api.example.com", "a1"), (b"Shop.Example.com", "a2"),
            (b"x.web.example.com", "w1"), (b"www.example.org", "w1"),
        ]:
            hello = clientHello(name)
            self.assertEqual(serve(proxy, hello, label), hello, name)
        self.assertEqual([b.active for b in proxy.pool.backends], [0, 1, 1, 2])
        self.assertEqual([(g.name, g.routed) for g in proxy.pool.groups],
                         [("default", 0), ("api", 2), ("web", 2)])

    def test_unknownName(self) -> None:
        """
        A name no route matches goes to the default group.
        """
        proxy = Proxy(labels=("d",), routes=ROUTES)
        hello = clientHello(b"example.com")
        self.assertEqual(serve(proxy, hello, "d"), hello)

    def test_noServerName(self) -> None:
        """
        A ClientHello without SNI goes to the default group at once.
        """
        proxy = Proxy(labels=("d",), routes=ROUTES)
        hello = clientHello(None)
        self.assertEqual(serve(proxy, hello, "d"), hello)

    def test_notTLS(self) -> None:
        """
        A first byte that is not TLS sends the session to the default group
        at once, with what it sent.
        """
        proxy = Proxy(labels=("d",), routes=ROUTES)
        self.assertEqual(serve(proxy, b"GET / HTTP/1.0\r\n", "d"), b"GET / HTTP/1.0\r\n")

    def test_malformed(self) -> None:
        """
        A ClientHello whose extensions overrun it is malformed: default
        group, bytes unchanged, no error logged.
        """
        hello = bytearray(clientHello(b"api.example.com"))
        # After the record (5) and handshake (4) headers: version, random,
        # session id, cipher suites, compression methods, then the
        # extensions' length, made larger than the hello.
        body = bytes(hello[9:])
        pos = 2 + 32
        pos += 1 + body[pos]
        pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
        pos += 1 + body[pos]
        hello[9 + pos:9 + pos + 2] = (0xFFFF).to_bytes(2, "big")
        proxy = Proxy(labels=("d",), routes=ROUTES)
        with capturedLogs() as events:
            self.assertEqual(serve(proxy, bytes(hello), "d"), bytes(hello))
        self.assertEqual([e for e in events if e["log_level"].name in ("error", "critical")], [])

    def test_splitOverRecords(self) -> None:
        """
        A ClientHello split over several TLS records and several reads is
        still routed by its name, and delivered as it came.
        """
        proxy = Proxy(labels=("d",), routes=ROUTES)
        hello = records(clientHello(b"api.example.com"), 100)
        client, _ = proxy.accept()
        for i in range(0, len(hello), 7):
            self.assertEqual(proxy.endpoints["a1"].attempts, [])
            client.dataReceived(hello[i:i + 7])
        _, bt = proxy.endpoints["a1"].succeed()
        self.assertEqual(bt.value(), hello)

    def test_partialTimesOut(self) -> None:
        """
        With routes and inspect-delay 0, a partial ClientHello waits 5 s,
        then goes to the default group with what it sent.
        """
        proxy = Proxy(labels=("d",), routes=ROUTES)
        hello = clientHello(b"api.example.com")
        client, _ = proxy.accept()
        client.dataReceived(hello[:50])
        proxy.clock.advance(DEFAULT_ROUTE_INSPECT_DELAY - 0.1)
        self.assertEqual(proxy.endpoints["d"].attempts, [])
        proxy.clock.advance(0.1)
        _, bt = proxy.endpoints["d"].succeed()
        self.assertEqual(bt.value(), hello[:50])

    def test_inspectDelayGiven(self) -> None:
        """
        A proxy's own inspect-delay is used when it is not 0.
        """
        proxy = Proxy(labels=("d",), routes=ROUTES, inspectDelay=1)
        self.assertEqual(proxy.factory.inspectDelay, 1)
        proxy.accept()
        proxy.clock.advance(1)
        self.assertEqual(len(proxy.endpoints["d"].attempts), 1)

    def test_oversizedHello(self) -> None:
        """
        A ClientHello announcing more than the proxy waits for (64 KiB) is
        not waited for: default group as soon as its first record is in,
        with what was sent.
        """
        proxy = Proxy(labels=("d",), routes=ROUTES)
        record = b"\x16\x03\x01\x40\x00" + b"\x01\x01\x00\x00" + b"\x00" * (0x4000 - 4)
        client, _ = proxy.accept()
        client.dataReceived(record[:-1])
        self.assertEqual(proxy.endpoints["d"].attempts, [])
        client.dataReceived(record[-1:])
        _, bt = proxy.endpoints["d"].succeed()
        self.assertEqual(bt.value(), record)

    def test_failoverStaysInRoute(self) -> None:
        """
        A route's backend that fails is replaced by another of the same
        route, never by a default backend; with none left, the client is
        closed.
        """
        proxy = Proxy(labels=("d",), routes=ROUTES)
        client, ct = proxy.accept()
        client.dataReceived(clientHello(b"api.example.com"))
        proxy.endpoints["a1"].fail(ConnectionRefusedError())
        proxy.endpoints["a2"].fail(ConnectionRefusedError())
        self.assertEqual(proxy.endpoints["d"].attempts, [])
        self.assertTrue(ct.disconnecting)
        self.assertEqual(proxy.pool.refused, 1)
        self.assertEqual(client.session.ended, "all backends down")  # type: ignore[union-attr]

    def test_noDefaultBackends(self) -> None:
        """
        A proxy whose backends are all in routes closes a client whose name
        matches no route (and one that is not TLS), counting it refused,
        with warnings naming the server name, at a bounded rate.
        """
        proxy = Proxy(labels=(), routes=ROUTES)
        with capturedLogs() as events:
            for data in [clientHello(b"other.example"), b"SSH-2.0-x\r\n"] * 10:
                client, ct = proxy.accept()
                client.dataReceived(data)
                self.assertTrue(ct.disconnecting)
                self.assertEqual(client.session.ended, "no route")  # type: ignore[union-attr]
                client.connectionLost(lost())
            proxy.clock.advance(10)
        self.assertEqual((proxy.pool.refused, proxy.pool.active), (20, 0))
        warnings = [formatEvent(e) for e in events if "no route" in formatEvent(e)]
        self.assertEqual(len(warnings), 10, warnings)
        self.assertIn("no route for server name 'other.example' and no default backends",
                      warnings[0])
        self.assertIn("no route for server name (none)", warnings[1])
        self.assertIn("10 more sessions closed for want of a route", formatEvent(events[-1]))
        hello = clientHello(b"api.example.com")
        self.assertEqual(serve(proxy, hello, "a1"), hello)

    def test_clientLeavesWhileInspecting(self) -> None:
        """
        A client that leaves before its ClientHello is complete costs no
        connect and leaves no timer.
        """
        proxy = Proxy(labels=("d",), routes=ROUTES)
        client, _ = proxy.accept()
        client.dataReceived(b"\x16\x03\x01")
        client.connectionLost(lost(False))
        self.assertEqual(sum(len(e.attempts) for e in proxy.endpoints.values()), 0)
        self.assertEqual(proxy.clock.getDelayedCalls(), [])
        self.assertEqual(proxy.pool.active, 0)

    def test_sessionLogRoute(self) -> None:
        """
        The session log of a proxy with routes records the route taken;
        without routes it has no route field.
        """
        proxy = Proxy(labels=("d",), routes=ROUTES)
        client, _ = proxy.accept()
        session = client.session
        client.dataReceived(clientHello(b"x.web.example.com"))
        proxy.endpoints["w1"].succeed()
        self.assertEqual(sessionFields(session)["route"], "web")  # type: ignore[arg-type]
        client, _ = proxy.accept()
        client.dataReceived(b"\x00")
        self.assertEqual(sessionFields(client.session)["route"], "default")  # type: ignore[arg-type]
        plain = Proxy()
        client, _ = plain.accept()
        self.assertNotIn("route", sessionFields(client.session))  # type: ignore[arg-type]

    def test_status(self) -> None:
        """
        /status.json lists a proxy's routes (default first) with their
        sessions, and each backend's route; the page shows them.
        """
        proxy = Proxy(labels=("d",), routes=ROUTES)
        serve(proxy, clientHello(b"api.example.com"), "a1")
        view = StatusView(clock=proxy.clock, pools={"test": proxy.pool})
        [document] = json.loads(json.dumps(statusDocument(view)))["proxies"]
        self.assertEqual(
            [(r["name"], r["names"], r["sessions"], r["backends"]) for r in document["routes"]],
            [("default", [], 0, ["d"]),
             ("api", ["api.example.com", "*.example.com"], 1, ["a1", "a2"]),
             ("web", ["*.web.example.com", "www.example.org"], 0, ["w1"])],
        )
        self.assertEqual([(b["label"], b["route"]) for b in document["backends"]],
                         [("d", "default"), ("a1", "api"), ("a2", "api"), ("w1", "web")])
        page = statusPage(view)
        self.assertIn('<b class="route-sessions" data-route="api">1</b>', page)
        metrics = render(statusResource(view), b"/metrics")[1].decode()
        self.assertIn('sockproxy_route_sessions_total{proxy="test",route="api"} 1.0', metrics)
        self.assertIn('sockproxy_route_sessions_total{proxy="test",route="default"} 0.0',
                      metrics)
        plain = Proxy()
        [document] = statusDocument(StatusView(clock=plain.clock,
                                               pools={"test": plain.pool}))["proxies"]
        self.assertNotIn("routes", document)
        self.assertNotIn("route", document["backends"][0])


def routesConfig(balance: str = "fair", extra: bool = False) -> Config:
    """
    A proxy with a default backend "d" and a route "api" (backend "a1",
    and "a2" if C{extra}) balanced by C{balance}.
    """
    backend = BackendConfig(endpoint="tcp:host=10.0.0.1:port=1", label="d")
    api = [BackendConfig(endpoint="tcp:host=10.0.0.2:port=1", label="a1")]
    if extra:
        api.append(BackendConfig(endpoint="tcp:host=10.0.0.3:port=1", label="a2"))
    return Config(proxies=(ProxyConfig(
        name="tls", listen=("tcp:8443",), backends=(backend,),
        routes=(RouteConfig("api", ("*.example.com",), tuple(api), balance),),
    ),))


class RouteReloadTests(SynchronousTestCase):
    """
    A reload keeps a proxy's routes' counters, backends and balancers where
    they stay, and routes new sessions by the new routes.
    """

    def test_reloadKeepsRoutes(self) -> None:
        """
        A route that stays keeps its session count, its backends (with
        their counters) and, with the same balance, its balancer; a new
        balance gets a new balancer; the factory waits for names.
        """
        reactor = MemoryReactorClock()
        configs = {"c.toml": routesConfig()}
        service = ProxyService(routesConfig(), reactor, configPath="c.toml",
                               loader=configs.__getitem__)
        service.startService()
        self.addCleanup(service.stopService)
        pool = service.pools["tls"]
        api = pool.route("api")
        assert api is not None
        a1 = pool.backend("a1")
        assert a1 is not None
        api.routed, a1.connected = 3, 7
        balancer = api.balancer
        self.assertEqual(service.factories[0].inspectDelay, DEFAULT_ROUTE_INSPECT_DELAY)

        configs["c.toml"] = routesConfig(extra=True)
        self.assertTrue(self.successResultOf(service.reload()))
        self.assertIs(service.pools["tls"], pool)
        api = pool.route("api")
        assert api is not None
        self.assertEqual(api.routed, 3)
        self.assertIs(api.balancer, balancer)
        self.assertIs(api.backends[0], a1)
        self.assertEqual(a1.connected, 7)
        self.assertEqual([(b.label, b.route) for b in pool.backends],
                         [("d", "default"), ("a1", "api"), ("a2", "api")])

        configs["c.toml"] = routesConfig("round-robin", extra=True)
        self.assertTrue(self.successResultOf(service.reload()))
        api = pool.route("api")
        assert api is not None
        self.assertIsNot(api.balancer, balancer)
        self.assertEqual(api.routed, 3)

        configs["c.toml"] = Config(proxies=(replace(routesConfig().proxies[0], routes=()),))
        self.assertTrue(self.successResultOf(service.reload()))
        self.assertEqual(pool.routes, [])
        self.assertEqual(service.factories[0].inspectDelay, 0)


def lighttpdHost(label: str, port: int) -> str:
    return f'sockproxy.server = ( "" => ( "{label}" => ( "host" => "127.0.0.1", "port" => {port} ) ) )'


LIGHTTPD_ROUTES = f'''\
server.modules = ( "mod_sockproxy" )
$SERVER["socket"] == "127.0.0.1:8443" {{
  {lighttpdHost("b", 18082)}
  $HTTP["host"] == "A.test" {{
    {lighttpdHost("a", 18081)}
  }}
  $HTTP["host"] =$ ".example.com" {{
    {lighttpdHost("b", 18083)}
    sockproxy.balance = "round-robin"
  }}
}}
'''


class LighttpdRouteTests(LighttpdTestCase):
    """
    C{$HTTP["host"]} blocks around C{sockproxy.server} in a lighttpd.conf
    become routes by TLS server name, as lighttpd 1.4.83+ chooses backends by
    SNI.
    """

    def test_hostBlocksBecomeRoutes(self) -> None:
        """
        C{== "name"} becomes an exact route, C{=$ ".domain"} a wildcard; a
        route takes the block's C{sockproxy.balance}, else the socket's; a
        label taken in the proxy is renamed, with a notice; the socket's own
        backends are the default group.
        """
        config = lighttpdParse(LIGHTTPD_ROUTES)
        proxy = self.only(config)
        self.assertEqual([b.label for b in proxy.backends], ["b"])
        self.assertEqual(
            [(r.name, r.names, r.balance, [(b.label, b.endpoint) for b in r.backends])
             for r in proxy.routes],
            [("a.test", ("a.test",), "fair", [("a", "tcp:host=127.0.0.1:port=18081")]),
             ("*.example.com", ("*.example.com",), "round-robin",
              [("b@*.example.com", "tcp:host=127.0.0.1:port=18083")])],
        )
        self.notice(config, 'is labelled "b@*.example.com"')
        self.notice(config, "is not TLS: lighttpd chooses by $HTTP[\"host\"] only on TLS")
        # What --convert writes loads back as the same proxy.
        self.assertEqual(parse(renderToml(config)).proxies[0].routes, proxy.routes)

    def test_topLevelHostBlock(self) -> None:
        """
        A top-level C{$HTTP["host"]} block routes on every sockproxy socket.
        """
        config = lighttpdParse(
            'server.modules = ( "mod_sockproxy" )\n'
            f'$SERVER["socket"] == "127.0.0.1:8443" {{\n{lighttpdHost("b", 18082)}\n}}\n'
            f'$HTTP["host"] == "a.test" {{\n{lighttpdHost("a", 18081)}\n}}\n'
        )
        [route] = self.only(config).routes
        self.assertEqual(route.names, ("a.test",))

    def test_tlsSocket(self) -> None:
        """
        On a TLS socket (ssl.engine) the routes use the handshake's server
        name, and no passthrough notice is given.
        """
        directory = self.tempdir()
        pem = self.write(directory, "server.pem", certificate().decode())
        config = lighttpdParse(LIGHTTPD_ROUTES.replace(
            '"127.0.0.1:8443" {\n',
            f'"127.0.0.1:8443" {{\n  ssl.engine = "enable"\n  ssl.pemfile = "{pem}"\n'))
        proxy = self.only(config)
        self.assertEqual(proxy.listen, ("tcp:8443:interface=127.0.0.1",))
        self.assertIsNotNone(proxy.tls)
        self.assertEqual(len(proxy.routes), 2)
        self.assertEqual([n for n in config.notices if "is not TLS" in n], [])

    def test_problems(self) -> None:
        """
        A suffix without a leading dot, a bad name, a name routed twice, a
        regular expression, and another sockproxy directive in a host block
        are each one error at their line.
        """
        def inSocket(block: str) -> str:
            return ('server.modules = ( "mod_sockproxy" )\n'
                    f'$SERVER["socket"] == "127.0.0.1:8443" {{\n{lighttpdHost("b", 1)}\n'
                    f'{block}\n}}\n')

        self.assertProblem(
            inSocket(f'$HTTP["host"] =$ "example.com" {{\n{lighttpdHost("a", 2)}\n}}'),
            f'{LIGHTTPD_SOURCE}:4: $HTTP["host"]: =$ "example.com": a suffix becomes a route '
            'only when it starts with "." (=$ ".example.com" is *.example.com) (column 1)')
        [problem] = self.problems(
            inSocket(f'$HTTP["host"] == "a b" {{\n{lighttpdHost("a", 2)}\n}}'))
        self.assertTrue(problem.startswith(f'{LIGHTTPD_SOURCE}:4: $HTTP["host"]: \'a b\''),
                        problem)
        self.assertProblem(
            inSocket(f'$HTTP["host"] == "a.test" {{\n{lighttpdHost("a", 2)}\n}}\n'
                     f'$HTTP["host"] == "A.TEST" {{\n{lighttpdHost("c", 3)}\n}}'),
            f'{LIGHTTPD_SOURCE}:7: $HTTP["host"]: "A.TEST": server name \'a.test\' is already '
            f"routed at {LIGHTTPD_SOURCE}:4 (column 1)")
        self.assertProblem(
            inSocket(f'$HTTP["host"] == "a.test" {{\n{lighttpdHost("a", 2)}\n'
                     'sockproxy.debug = 1\n}'),
            f'{LIGHTTPD_SOURCE}:6: sockproxy.debug: inside $HTTP["host"] == "a.test": only '
            "sockproxy.server and sockproxy.balance can be set per server name (column 1)")
