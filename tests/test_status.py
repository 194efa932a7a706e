"""
Unit tests for L{txsockproxy.status}: the status resources and admin actions,
rendered in memory against a service on a fake reactor.
"""

from __future__ import annotations

import json
import re
from typing import Optional
from urllib.parse import unquote as unquoteText
from urllib.parse import unquote_to_bytes as unquote

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from txsockproxy.backends import Backend
from txsockproxy.config import BackendConfig, Config, ProxyConfig, StatusConfig
from txsockproxy.service import ProxyService
from txsockproxy.status import serverStatistics, statisticsLabel, statusResource

TOKEN = "0123456789abcdef-token"


def makeService(token: str = TOKEN) -> ProxyService:
    """
    A service with one proxy "db" of two backends, "primary" and "standby".
    """
    config = Config(
        proxies=(
            ProxyConfig(
                name="db",
                listen=("tcp:5432",),
                backends=(
                    BackendConfig(endpoint="tcp:host=10.0.0.1:port=5432", label="primary"),
                    BackendConfig(endpoint="tcp:host=10.0.0.2:port=5432", label="standby",
                                  weight=2),
                ),
            ),
        ),
        status=StatusConfig(listen=("tcp:9180",), adminTokenFile="t" if token else "",
                            adminToken=token),
    )
    return ProxyService(config, MemoryReactorClock())


def render(
    root: Resource, path: bytes, method: bytes = b"GET", authorization: Optional[str] = None
) -> tuple[int, bytes, DummyRequest]:
    """
    Render C{path} of C{root} in memory.

    @return: the response code, the body, and the request.
    """
    # As twisted.web.server.Request does: split the path, then unquote.
    request = DummyRequest([unquote(p) for p in path.lstrip(b"/").split(b"/")])
    request.method = method
    if authorization is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [authorization.encode()])
    resource = getChildForRequest(root, request)
    body = resource.render(request)
    assert isinstance(body, bytes)
    return request.responseCode or 200, body, request


def backends(service: ProxyService) -> tuple[Backend, Backend]:
    """
    The two backends of the test service.
    """
    pool = service.pools["db"]
    return pool.backends[0], pool.backends[1]


class StatusDocumentTests(SynchronousTestCase):
    """
    C{/status.json}, C{/metrics}, C{/server-statistics} and C{/}.
    """

    def setUp(self) -> None:
        self.service = makeService()
        self.root = statusResource(self.service.statusView)
        primary, standby = backends(self.service)
        pool = self.service.pools["db"]
        pool.accepted, pool.active, pool.refused = 7, 2, 1
        primary.connected, primary.active, primary.bytesIn, primary.bytesOut = 5, 2, 300, 40
        standby.failed = 1
        pool.clock = self.service.reactor
        pool.connectFailed(standby, _refused())
        standby.active += 1  # connectFailed assumes the session had counted it

    def test_json(self) -> None:
        """
        C{/status.json} lists every proxy with its counters and every backend
        with label, endpoint, state, counters and last error.
        """
        code, body, request = render(self.root, b"/status.json")
        self.assertEqual(code, 200)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                         [b"application/json"])
        [proxy] = json.loads(body)["proxies"]
        self.assertEqual(
            {k: proxy[k] for k in ("name", "listen", "accepted", "active", "refused")},
            {"name": "db", "listen": ["tcp:5432"], "accepted": 7, "active": 2, "refused": 1},
        )
        primary, standby = proxy["backends"]
        self.assertEqual(primary, {
            "label": "primary", "endpoint": "tcp:host=10.0.0.1:port=5432", "state": "up",
            "weight": 1, "active": 2, "connected": 5, "failed": 0, "bytes_in": 300,
            "bytes_out": 40, "last_error": "", "max_connections": None, "drain_closed": 0,
            "check": None,
            "legacy_state": "up", "retry_in": None,
            "rates": {"sessions": 0.0, "max_sessions": 0.0, "bytes": 0.0, "max_bytes": 0.0},
        })
        self.assertEqual(
            (standby["state"], standby["legacy_state"], standby["failed"],
             standby["last_error"]),
            ("failing", "disabled", 2, "connection refused"),
        )
        # disable-time (1 s by default) from the failure, at time 0.
        self.assertEqual(standby["retry_in"], 1.0)

    def test_metrics(self) -> None:
        """
        C{/metrics} is Prometheus text: C{sockproxy_} names, labels C{proxy}
        and C{backend}, the state as a one-hot gauge.
        """
        code, body, _ = render(self.root, b"/metrics")
        self.assertEqual(code, 200)
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        self.assertEqual(samples[("sockproxy_accepted_total", (("proxy", "db"),))], 7)
        self.assertEqual(samples[("sockproxy_active_sessions", (("proxy", "db"),))], 2)
        self.assertEqual(samples[("sockproxy_refused_total", (("proxy", "db"),))], 1)
        primary = (("backend", "primary"), ("proxy", "db"))
        standby = (("backend", "standby"), ("proxy", "db"))
        self.assertEqual(samples[("sockproxy_backend_connects_total", primary)], 5)
        self.assertEqual(samples[("sockproxy_backend_received_bytes_total", primary)], 300)
        self.assertEqual(samples[("sockproxy_backend_sent_bytes_total", primary)], 40)
        self.assertEqual(samples[("sockproxy_backend_connect_failures_total", standby)], 2)
        self.assertEqual(samples[("sockproxy_backend_up", primary)], 1)
        self.assertEqual(samples[("sockproxy_backend_up", standby)], 0)
        self.assertEqual(
            samples[("sockproxy_backend_state", standby + (("state", "failing"),))], 1
        )
        self.assertEqual(samples[("sockproxy_backend_state", standby + (("state", "up"),))], 0)

    def test_serverStatistics(self) -> None:
        """
        C{/server-statistics} is lighttpd's C{name: value} text with its
        counter names, sorted by length then name.
        """
        code, body, _ = render(self.root, b"/server-statistics")
        self.assertEqual(code, 200)
        lines = body.decode().splitlines()
        values = dict(line.split(": ") for line in lines)
        self.assertEqual(values["sockproxy.requests"], "5")
        self.assertEqual(values["gw.active-requests"], "2")
        self.assertEqual(values["gw.backend.primary.load"], "2")
        self.assertEqual(values["gw.backend.primary.0.connected"], "5")
        self.assertEqual(values["gw.backend.standby.0.died"], "2")
        self.assertEqual(values["gw.backend.standby.0.overloaded"], "0")
        names = [line.split(": ")[0] for line in lines]
        self.assertEqual(names, sorted(names, key=lambda n: (len(n), n)))

    def test_sameLabelSummed(self) -> None:
        """
        Backends sharing a label in two proxies are summed, as lighttpd
        merges hosts that share a label.
        """
        service = makeService()
        other = ProxyConfig(name="other", listen=("tcp:1",), backends=(
            BackendConfig(endpoint="tcp:host=10.0.0.9:port=1", label="primary"),))
        from dataclasses import replace

        service.apply(replace(service.config, proxies=service.config.proxies + (other,)))
        service.pools["db"].backends[0].connected = 2
        service.pools["other"].backends[0].connected = 3
        self.assertIn("gw.backend.primary.0.connected: 5\n", serverStatistics(service.statusView))

    def test_unsafeLabels(self) -> None:
        """
        Backend labels with a newline, or made of dots, are written in
        C{/server-statistics} so that it stays one C{name: value} a line and
        every backend's names are its own: a newline cannot add a line, and
        C{.} and C{..} give names with no empty part.
        """
        primary, standby = backends(self.service)
        primary.label = "evil\nsockproxy.requests: 999999\r"
        standby.label = "."
        service = makeService()
        service.pools["db"].backends[0].label = ".."
        self.service.statusView.pools = {"db": self.service.pools["db"],
                                         "other": service.pools["db"]}
        text = serverStatistics(self.service.statusView)
        lines = text.splitlines()
        self.assertEqual(len(lines), 2 + 4 * 6, text)
        for line in lines:
            self.assertRegex(line, r"^[^\s]+: [0-9]+$")
        names = dict(line.split(": ") for line in lines)
        self.assertEqual(names["sockproxy.requests"], "5")
        self.assertIn("gw.backend.evil%0Asockproxy.requests:%20999999%0D.0.connected", names)
        self.assertIn("gw.backend.%2E.0.died", names)
        self.assertIn("gw.backend.%2E%2E.0.died", names)
        for name in names:
            self.assertNotIn("..", name)

    @settings(deadline=None)
    @given(st.text())
    def test_labelProperty(self, label: str) -> None:
        """
        For every label, L{statisticsLabel} gives one word with no
        whitespace, control character or empty dot-separated part, from
        which the label is read back by percent-decoding.
        """
        shown = statisticsLabel(label)
        self.assertEqual(unquoteText(shown, errors="surrogatepass"), label)
        if label:
            self.assertTrue(shown.isprintable(), shown)
            self.assertIsNone(re.search(r"\s", shown))
            self.assertNotIn("", shown.split("."))

    def test_page(self) -> None:
        """
        C{/} is an HTML page that refreshes itself, with no external assets,
        and a table row per backend; text from the config is escaped.
        """
        self.service.pools["db"].backends[0].lastError = "<b>bad</b>"
        code, body, request = render(self.root, b"/")
        self.assertEqual(code, 200)
        page = body.decode()
        self.assertIn('<meta http-equiv="refresh"', page)
        self.assertNotIn("http://", page)
        self.assertNotIn("https://", page)
        self.assertIn('<tr class="up"><td class="text">primary</td>', page)
        self.assertIn('<tr class="failing"><td class="text">standby</td>', page)
        self.assertIn('<td class="state text st-failing">failing (retry in 1 s)</td>', page)
        self.assertIn("&lt;b&gt;bad&lt;/b&gt;", page)


def _refused():  # type: ignore[no-untyped-def]
    from twisted.python.failure import Failure

    return Failure(ConnectionRefusedError())


class AdminTests(SynchronousTestCase):
    """
    C{POST /backends/<proxy>/<label>/<action>}.
    """

    def setUp(self) -> None:
        self.service = makeService()
        self.root = statusResource(self.service.statusView)

    def post(self, path: bytes, token: Optional[str] = TOKEN) -> tuple[int, dict[str, object]]:
        code, body, _ = render(
            self.root, path, b"POST", None if token is None else f"Bearer {token}"
        )
        return code, json.loads(body)

    def test_drainDisableEnable(self) -> None:
        """
        With the token, drain sets "draining", disable "maintenance"
        (C{legacy_state} "down"), enable "up"; the reply is the backend's
        status; the change is logged.
        """
        primary, _ = backends(self.service)
        with capturedLogs() as events:
            code, reply = self.post(b"/backends/db/primary/drain")
        self.assertEqual((code, reply["state"]), (200, "draining"))
        self.assertEqual(primary.stateAt(0), "draining")
        self.assertTrue(any("set backend" in e.get("log_format", "") for e in events))
        reply = self.post(b"/backends/db/primary/disable")[1]
        self.assertEqual((reply["state"], reply["legacy_state"]), ("maintenance", "down"))
        self.assertEqual(self.post(b"/backends/db/primary/enable")[1]["state"], "up")

    def test_missingToken(self) -> None:
        """
        Without a bearer token: 401 with a WWW-Authenticate header, nothing
        changed.
        """
        code, body, request = render(self.root, b"/backends/db/primary/drain", b"POST")
        self.assertEqual(code, 401)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"www-authenticate"),
                         [b'Bearer realm="sockproxy"'])
        self.assertEqual(backends(self.service)[0].adminState, "up")

    def test_wrongToken(self) -> None:
        """
        A wrong token: 403 and a log line naming the client, nothing changed.
        """
        with capturedLogs() as events:
            code, _ = self.post(b"/backends/db/primary/drain", token="x" * len(TOKEN))
        self.assertEqual(code, 403)
        refusals = [e for e in events if "wrong token" in e.get("log_format", "")]
        self.assertEqual(len(refusals), 1)
        self.assertEqual(backends(self.service)[0].adminState, "up")

    def test_noTokenConfigured(self) -> None:
        """
        Without an admin-token-file every action is refused, whatever token
        is sent.
        """
        service = makeService(token="")
        code, body, _ = render(statusResource(service.statusView), b"/backends/db/primary/drain",
                               b"POST", "Bearer anything")
        self.assertEqual(code, 403)
        self.assertIn(b"admin-token-file", body)
        self.assertEqual(backends(service)[0].adminState, "up")

    def test_unknownTargets(self) -> None:
        """
        An unknown proxy or label is 404; an unknown action 400; GET 405.
        """
        self.assertEqual(self.post(b"/backends/nope/primary/drain")[0], 404)
        self.assertEqual(self.post(b"/backends/db/nope/drain")[0], 404)
        self.assertEqual(self.post(b"/backends/db/primary/explode")[0], 400)
        self.assertEqual(self.post(b"/backends/db/primary")[0], 404)
        self.assertEqual(render(self.root, b"/backends/db/primary/drain")[0], 405)

    def test_escapedProxyName(self) -> None:
        """
        A proxy name with a slash (the default name is the listen string)
        is given URL-encoded.
        """
        from dataclasses import replace

        proxy = replace(self.service.config.proxies[0], name="unix:/run/db.sock")
        self.service.apply(replace(self.service.config, proxies=(proxy,)))
        code, body, _ = render(
            self.root, b"/backends/unix:%2Frun%2Fdb.sock/primary/drain", b"POST",
            f"Bearer {TOKEN}",
        )
        self.assertEqual(code, 200, body)


class StatusViewTests(SynchronousTestCase):
    """
    The status site reads a L{StatusView} (pools, clock, admin token and the
    closed-at-accept count), never the service.
    """

    def test_viewWithoutService(self) -> None:
        """
        A L{StatusView} built by hand, with no service at all, is enough
        for every page and for the admin actions: the document shows its
        pools and count, states are read at its clock's time, and actions
        need its token.
        """
        from txsockproxy.backends import BackendPool
        from txsockproxy.balancers import balancerFactory
        from txsockproxy.status import StatusView

        clock = MemoryReactorClock()
        proxy = ProxyConfig(name="db", listen=("tcp:5432",), backends=(
            BackendConfig(endpoint="tcp:host=10.0.0.1:port=5432", label="primary"),))
        pool = BackendPool.fromConfig(proxy, balancerFactory("fair")(), clock)
        pool.backends[0].disabledUntil = 10.0
        view = StatusView(clock=clock, pools={"db": pool}, adminToken=TOKEN,
                          closedAtAccept=lambda: 4)
        root = statusResource(view)
        document = json.loads(render(root, b"/status.json")[1])
        self.assertEqual(document["closed_at_accept"], 4)
        self.assertEqual([(p["name"], p["backends"][0]["state"]) for p in document["proxies"]],
                         [("db", "failing")])
        clock.advance(10)
        document = json.loads(render(root, b"/status.json")[1])
        self.assertEqual(document["proxies"][0]["backends"][0]["state"], "up")
        metrics = render(root, b"/metrics")[1].decode()
        self.assertIn("sockproxy_closed_at_accept_total 4.0", metrics)
        self.assertIn("gw.backend.primary.0.connected: 0", render(root, b"/server-statistics")[1]
                      .decode())
        self.assertIn(b"proxy db", render(root, b"/")[1])
        self.assertEqual(render(root, b"/backends/db/primary/drain", b"POST",
                                "Bearer wrong-token-of-same-size")[0], 403)
        code, _, _ = render(root, b"/backends/db/primary/drain", b"POST", f"Bearer {TOKEN}")
        self.assertEqual((code, pool.backends[0].adminState), (200, "draining"))

    def test_statusImportsNoService(self) -> None:
        """
        L{txsockproxy.status} does not import L{txsockproxy.service}, not
        even for type checking: the service imports the status site, not
        the other way around.
        """
        import ast

        import txsockproxy.status

        path = txsockproxy.status.__file__
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        self.assertIn("txsockproxy.backends", imported)
        self.assertEqual([name for name in imported if name.startswith("txsockproxy.service")],
                         [])

    def test_serviceKeepsItsViewCurrent(self) -> None:
        """
        The service's view shows its pools (also after a reload replaces
        them), its reactor's time, the admin token of the running config,
        and the count of its accept-recovery counter.
        """
        from dataclasses import replace

        service = makeService()
        view = service.statusView
        self.assertIs(view.clock, service.reactor)
        self.assertIs(view.pools, service.pools)
        self.assertEqual(view.adminToken, TOKEN)
        service.acceptRecovery.closed = 6
        self.assertEqual(view.closedAtAccept(), 6)
        other = ProxyConfig(name="other", listen=("tcp:1",), backends=(
            BackendConfig(endpoint="tcp:host=10.0.0.9:port=1", label="x"),))
        status = replace(service.config.status, adminToken="another-token-0123456789")
        service.apply(replace(service.config, proxies=(other,), status=status))
        self.assertIs(view.pools, service.pools)
        self.assertEqual(list(view.pools), ["other"])
        self.assertEqual(view.adminToken, "another-token-0123456789")
        code, _, _ = render(statusResource(view), b"/backends/other/x/disable", b"POST",
                            "Bearer another-token-0123456789")
        self.assertEqual((code, service.pools["other"].backends[0].adminState),
                         (200, "maintenance"))
