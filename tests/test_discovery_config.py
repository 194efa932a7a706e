"""
Tests for the configuration of backends from DNS: the C{resolve},
C{resolve-min}, C{resolve-max}, C{srv} and C{resolver} keys, what
C{--check} and C{--print-toml} show of them.
"""

from __future__ import annotations

from textwrap import dedent

from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeResolver
from txsockproxy.config import BackendConfig, ConfigError, DiscoveryConfig
from txsockproxy.render import describeConfig, renderToml
from txsockproxy.tomlconfig import parseConfig

SOURCE = "dns.toml"
BALANCERS = frozenset({"fair", "round-robin"})


def parse(text: str, resolve: FakeResolver | None = None):  # type: ignore[no-untyped-def]
    known = FakeResolver({"a.example": "10.0.0.9", "web2.internal": "10.0.0.3"})
    return parseConfig(dedent(text), SOURCE, resolve or known, BALANCERS)


def backends(text: str) -> tuple[BackendConfig, ...]:
    return parse(text).proxies[0].backends


class DiscoveryKeysTests(SynchronousTestCase):
    """
    The resolve keys give backends from DNS.
    """

    def test_hostByDNS(self) -> None:
        """
        C{resolve = "dns"} on a backend given by host name looks nothing up
        when loading; the backend stands for the name's addresses, labelled
        after the name by default.
        """
        resolver = FakeResolver()
        [backend] = parse("""\
            [[proxy]]
            listen = "tcp:5432"
            [[proxy.backend]]
            host = "db.internal"
            port = 5432
            resolve = "dns"
            """, resolver).proxies[0].backends
        self.assertEqual(resolver.asked, [])
        self.assertEqual(backend.label, "db.internal")
        self.assertEqual(backend.endpoint, "tcp:host=db.internal:port=5432")
        self.assertEqual(backend.discovery, DiscoveryConfig("db.internal", 5432))

    def test_proxyDefaults(self) -> None:
        """
        In C{[[proxy]]}, the keys are defaults for its backends given by
        host name; an IP address, an endpoint and a socket stay as they are.
        """
        found = backends("""\
            [[proxy]]
            listen = "tcp:80"
            resolve = "dns"
            resolve-min = 5
            resolve-max = 60
            resolver = "127.0.0.1:8600"
            [[proxy.backend]]
            host = "web.internal"
            [[proxy.backend]]
            host = "10.0.0.1"
            [[proxy.backend]]
            endpoint = "tcp:host=10.0.0.2:port=80"
            [[proxy.backend]]
            host = "web2.internal"
            resolve = "start"
            """)
        self.assertEqual(found[0].discovery,
                         DiscoveryConfig("web.internal", 80, False, 5.0, 60.0, "127.0.0.1:8600"))
        self.assertEqual([b.discovery for b in found[1:3]], [None, None])
        self.assertIsNone(found[3].discovery)

    def test_srv(self) -> None:
        """
        C{srv} names SRV records; it is always re-resolved.
        """
        [backend] = backends("""\
            [[proxy]]
            listen = "tcp:5432"
            [[proxy.backend]]
            srv = "_postgres._tcp.db.service.consul"
            label = "pg"
            """)
        self.assertEqual(backend.discovery,
                         DiscoveryConfig("_postgres._tcp.db.service.consul", 0, True))
        self.assertEqual(backend.endpoint, "srv:_postgres._tcp.db.service.consul")

    def assertProblem(self, backend: str, line: int, key: str, message: str) -> None:
        text = f'[[proxy]]\nlisten = "tcp:1"\n[[proxy.backend]]\n{backend}\n'
        error = self.assertRaises(ConfigError, parse, text)
        self.assertEqual(len(error.problems), 1, error.problems)
        [problem] = error.problems
        self.assertEqual((problem.line, problem.key), (line, key))
        self.assertIn(message, problem.message)
        self.assertTrue(str(problem).startswith(f"{SOURCE}:{line}: {key}: "))

    def test_errors(self) -> None:
        """
        Bad values are one problem each, naming file, line and key.
        """
        b = "proxy[0].backend[0]"
        self.assertProblem('host = "a.example"\nresolve = "always"', 5, f"{b}.resolve",
                           "must be one of 'start', 'dns'")
        self.assertProblem('endpoint = "tcp:host=a:port=1"\nresolve = "dns"', 5,
                           f"{b}.resolve", "needs a host name")
        self.assertProblem('socket = "/run/a"\nresolve = "dns"', 5, f"{b}.resolve",
                           "needs a host name")
        self.assertProblem('srv = "_a._tcp.example"\nhost = "a.example"', 4, f"{b}.srv",
                           "give either 'srv' or 'host'")
        self.assertProblem('srv = "_a._tcp.example"\nresolve = "start"', 5, f"{b}.resolve",
                           "always looked up again")
        self.assertProblem('srv = "not a name"', 4, f"{b}.srv", "is not a DNS name")
        self.assertProblem('host = "a.example"\nresolve = "dns"\nresolve-min = 10\n'
                           'resolve-max = 5', 7, f"{b}.resolve-max", "must not be less than")
        self.assertProblem('host = "a.example"\nresolve = "dns"\nresolve-min = 0', 6,
                           f"{b}.resolve-min", "must be more than 0")
        self.assertProblem('srv = "_a._tcp.example"\nresolver = "dns.example"', 5,
                           f"{b}.resolver", "is not an IP address")
        self.assertProblem('srv = "_a._tcp.example"\nresolver = "10.0.0.1:99999"', 5,
                           f"{b}.resolver", "the port must be 1 to 65535")
        self.assertProblem('host = "a.example"\nresolve = "dns"\nresolve-min = 0.01', 6,
                           f"{b}.resolve-min", "must be at least 0.1s")
        self.assertProblem('srv = "_a._tcp.example"\nresolver = "10.0.0.1:\u00b2"', 5,
                           f"{b}.resolver", "the port must be 1 to 65535")
        self.assertProblem('srv = "_a._tcp.example"\nresolver = "::1:53"', 5,
                           f"{b}.resolver", 'ambiguous: write an IPv6 address with a port '
                           'in brackets, "[::1]:53"')
        self.assertProblem('endpoint = "tcp:host=a:port=1"\nresolve-max = 5', 5,
                           f"{b}.resolve-max", 'applies to backends with resolve = "dns"')
        self.assertProblem('srv = "_a._tcp.example"\ntls = true', 5, f"{b}.tls",
                           "needs tls-name")

    def test_badResolveAlone(self) -> None:
        """
        A bad C{resolve}, C{resolve-min} or C{resolve-max} (of the proxy or
        the backend), or C{srv} in the proxy's table, is the one problem
        reported: the backend's host is not looked up at load (as the
        C{"start"} it would fall back to would), and no other error follows.
        """
        for proxyKeys, backendKeys, key in (
            ('resolve = "always"\n', "", "proxy[0].resolve"),
            ("resolve-max = -1\n", "", "proxy[0].resolve-max"),
            ('srv = "_a._tcp.x"\n', "", "proxy[0].srv"),
            ("", 'resolve = "always"\n', "proxy[0].backend[0].resolve"),
            ("", "resolve-min = 0\n", "proxy[0].backend[0].resolve-min"),
        ):
            resolver = FakeResolver()
            text = (f'[[proxy]]\nlisten = "tcp:1"\n{proxyKeys}[[proxy.backend]]\n'
                    f'host = "db.example"\nport = 5\n{backendKeys}')
            error = self.assertRaises(ConfigError, parse, text, resolver)
            self.assertEqual([p.key for p in error.problems], [key])
            self.assertEqual(resolver.asked, [])

    def test_reservedLabels(self) -> None:
        """
        A label starting with C{LABEL/}, where C{LABEL} is that of a backend
        looked up in DNS in the same proxy (routes included), is refused at
        its line: the discovered backends are labelled so. Elsewhere a
        C{/} in a label is allowed.
        """
        text = dedent("""\
            [[proxy]]
            listen = "tcp:1"
            [[proxy.backend]]
            label = "db"
            srv = "_pg._tcp.example"
            [[proxy.backend]]
            label = "db/127.0.0.3:17100"
            endpoint = "tcp:host=127.0.0.3:port=17100"
            [[proxy.backend]]
            label = "web/1"
            endpoint = "tcp:host=127.0.0.4:port=80"
            """)
        error = self.assertRaises(ConfigError, parse, text)
        [problem] = error.problems
        self.assertEqual((problem.line, problem.key), (7, "proxy[0].backend[1].label"))
        self.assertIn("label 'db/127.0.0.3:17100' is reserved", problem.message)
        self.assertIn("is looked up in DNS", problem.message)
        parse(text.replace('srv = "_pg._tcp.example"', 'endpoint = "tcp:host=a:port=1"'))

    def test_unknownInProxyHint(self) -> None:
        """
        C{srv} in a C{[[proxy]]} table is a backend's key.
        """
        error = self.assertRaises(ConfigError, parse,
                                  '[[proxy]]\nlisten = "tcp:1"\nsrv = "_a._tcp.x"\n'
                                  '[[proxy.backend]]\nendpoint = "tcp:host=a:port=1"\n')
        self.assertIn("a key of [[proxy.backend]]", error.problems[0].message)


class DiscoveryRenderTests(SynchronousTestCase):
    """
    C{--print-toml} writes the keys back, C{--check} shows them.
    """

    TEXT = """\
        [[proxy]]
        listen = "tcp:5432"
        resolve-max = 60
        [[proxy.backend]]
        host = "db.internal"
        port = 5432
        resolve = "dns"
        tls = true
        [[proxy.backend]]
        srv = "_postgres._tcp.db.service.consul"
        label = "pg"
        resolve-min = 2
        resolver = "[fd00::53]:8600"
        [[proxy.route]]
        names = ["x.example"]
        [[proxy.route.backend]]
        srv = "_x._tcp.example"
        """

    def test_roundTrip(self) -> None:
        """
        The rendered TOML loads back to the same configuration.
        """
        config = parse(self.TEXT)
        text = renderToml(config)
        self.assertIn('srv = "_postgres._tcp.db.service.consul"', text)
        self.assertIn('resolve = "dns"', text)
        self.assertIn('resolver = "[fd00::53]:8600"', text)
        self.assertEqual(parseConfig(text, SOURCE, FakeResolver(), BALANCERS), config)

    def test_describe(self) -> None:
        """
        C{--check} shows where each backend's addresses come from, and
        the bounds of its TTL.
        """
        text = describeConfig(parse(self.TEXT))
        self.assertIn("backend 'db.internal': tcp:host=db.internal:port=5432", text)
        self.assertIn("resolve=dns resolve-min=1s resolve-max=60s resolver=system", text)
        self.assertIn("srv=_postgres._tcp.db.service.consul resolve-min=2s resolve-max=60s "
                      "resolver=[fd00::53]:8600", text)
        self.assertIn("tls='db.internal'", text)
