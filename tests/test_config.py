"""
Tests for the native TOML format (L{txsockproxy.tomlconfig}, loaded through
L{txsockproxy.loading}), the command-line config (L{txsockproxy.cmdline}) and
the endpoint checks (L{txsockproxy.endpoints}); and the config layer's import
structure.
"""

from __future__ import annotations

import ast
import datetime
import json
import math
import os
import tomllib
from textwrap import dedent
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from twisted.internet import endpoints
from twisted.internet.endpoints import clientFromString, quoteStringArgument
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.python.systemd import ListenFDs
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeResolver
from txsockproxy import congestion
from txsockproxy.balancers import balancerNames
from txsockproxy.cmdline import configFromArguments
from txsockproxy.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DISABLE_TIME,
    DEFAULT_HALF_CLOSED_TIMEOUT,
    BackendConfig,
    Config,
    ConfigError,
    DiscoveryConfig,
    Problem,
    ProxyConfig,
)
from txsockproxy.endpoints import checkEndpoint, resolveFirst
from txsockproxy.loading import loadConfig
from txsockproxy.render import describeConfig
from txsockproxy.tomlconfig import parseConfig, readToken

BALANCERS = frozenset({"fair", "least-connection", "round-robin"})
SOURCE = "test.toml"


def parse(text: str, resolve: FakeResolver | None = None) -> Config:
    """
    Parse C{text} (dedented) with the test balancers and a resolver that
    knows nothing unless given.
    """
    return parseConfig(
        dedent(text), SOURCE, resolve if resolve is not None else FakeResolver(), BALANCERS
    )


def minimal(backend: str = 'endpoint = "tcp:host=127.0.0.1:port=10000"') -> str:
    """
    A valid one-proxy config whose only backend is C{backend}.
    """
    return f'[[proxy]]\nlisten = "tcp:8080"\n[[proxy.backend]]\n{backend}\n'


def connectedTo(endpoint: str) -> tuple[str, Any]:
    """
    Where a client endpoint string connects: C{("tcp", (host, port))} or
    C{("unix", path)}, found by connecting it with a L{MemoryReactor}.
    """
    reactor = MemoryReactor()
    clientFromString(reactor, endpoint).connect(Factory.forProtocol(Protocol))
    if reactor.tcpClients:
        host, port = reactor.tcpClients[0][:2]
        return "tcp", (host, port)
    return "unix", reactor.unixClients[0][0]


class ConfigTestCase(SynchronousTestCase):
    """
    Assertions about the problems a configuration is reported with.
    """

    def problems(self, text: str, resolve: FakeResolver | None = None) -> list[Problem]:
        """
        The problems reported for C{text}, which must be invalid.
        """
        error = self.assertRaises(ConfigError, parse, text, resolve)
        return list(error.problems)

    def assertOneProblem(
        self,
        text: str,
        line: int | None,
        key: str,
        message: str,
        resolve: FakeResolver | None = None,
    ) -> Problem:
        """
        C{text} is reported with exactly one problem, at C{line} and C{key},
        whose message contains C{message}, printed as one line naming all three.
        """
        problems = self.problems(text, resolve)
        self.assertEqual(len(problems), 1, problems)
        [problem] = problems
        self.assertEqual((problem.source, problem.line, problem.key), (SOURCE, line, key))
        self.assertIn(message, problem.message)
        where = SOURCE if line is None else f"{SOURCE}:{line}"
        prefix = f"{where}: {key}: " if key else f"{where}: "
        self.assertEqual(str(problem), prefix + problem.message)
        self.assertNotIn("\n", str(problem))
        return problem


class ValidConfigTests(SynchronousTestCase):
    """
    L{parseConfig} turns valid files into the config objects they describe.
    """

    def test_minimalDefaults(self) -> None:
        """
        L{parseConfig} fills every optional key with its default when a proxy
        gives only C{listen} and one backend C{endpoint}: the name is the first
        listen endpoint, the label is the endpoint string.
        """
        config = parse(minimal())
        backend = BackendConfig(
            endpoint="tcp:host=127.0.0.1:port=10000",
            label="tcp:host=127.0.0.1:port=10000",
            weight=1,
            disableTime=DEFAULT_DISABLE_TIME,
            connectTimeout=DEFAULT_CONNECT_TIMEOUT,
        )
        proxy = ProxyConfig(
            name="tcp:8080",
            listen=("tcp:8080",),
            backends=(backend,),
            balance="fair",
            idleTimeout=0.0,
            halfClosedTimeout=DEFAULT_HALF_CLOSED_TIMEOUT,
        )
        self.assertEqual(config, Config(proxies=(proxy,), debug=0, source=SOURCE))
        self.assertEqual((DEFAULT_CONNECT_TIMEOUT, DEFAULT_DISABLE_TIME), (8.0, 1.0))

    def test_debug(self) -> None:
        """
        L{parseConfig} reads the top-level C{debug} level.
        """
        self.assertEqual(parse("debug = 3\n" + minimal()).debug, 3)

    def test_listenString(self) -> None:
        """
        L{parseConfig} accepts C{listen} as a single endpoint string.
        """
        config = parse(minimal())
        self.assertEqual(config.proxies[0].listen, ("tcp:8080",))

    def test_listenArray(self) -> None:
        """
        L{parseConfig} keeps one entry per endpoint, in order, when C{listen}
        is an array.
        """
        config = parse(
            """\
            [[proxy]]
            listen = ["tcp:5432", "tcp6:5432", "unix:/run/pg.sock"]
            [[proxy.backend]]
            endpoint = "unix:/run/real.sock"
            """
        )
        self.assertEqual(
            config.proxies[0].listen, ("tcp:5432", "tcp6:5432", "unix:/run/pg.sock")
        )

    def test_proxyKeys(self) -> None:
        """
        L{parseConfig} reads a proxy's C{name}, C{balance}, C{idle-timeout},
        C{half-closed-timeout} and C{inspect-delay}, as floats of seconds.
        """
        config = parse(
            """\
            [[proxy]]
            name = "db"
            listen = "tcp:5432"
            balance = "round-robin"
            idle-timeout = 300
            half-closed-timeout = 2.5
            inspect-delay = 3
            [[proxy.backend]]
            endpoint = "tcp:host=10.0.0.2:port=5432"
            """
        )
        [proxy] = config.proxies
        self.assertEqual(
            (proxy.name, proxy.balance, proxy.idleTimeout, proxy.halfClosedTimeout,
             proxy.inspectDelay),
            ("db", "round-robin", 300.0, 2.5, 3.0),
        )
        self.assertIsInstance(proxy.idleTimeout, float)

    def test_backendKeys(self) -> None:
        """
        L{parseConfig} reads a backend's C{label}, C{weight}, C{disable-time}
        and C{connect-timeout}.
        """
        config = parse(
            minimal(
                'endpoint = "tcp:host=10.0.0.2:port=5432"\nlabel = "primary"\n'
                "weight = 3\ndisable-time = 5\nconnect-timeout = 0.5"
            )
        )
        [backend] = config.proxies[0].backends
        self.assertEqual(
            backend,
            BackendConfig(
                endpoint="tcp:host=10.0.0.2:port=5432",
                label="primary",
                weight=3,
                disableTime=5.0,
                connectTimeout=0.5,
            ),
        )

    def test_congestionKeys(self) -> None:
        """
        L{parseConfig} reads a proxy's C{client-congestion} and a backend's
        C{congestion}, both C{"auto"} when not written.
        """
        names = congestion.available()
        named = "reno" if names and "reno" in names else "system"
        config = parse(
            f"""\
            [[proxy]]
            listen = "tcp:5432"
            client-congestion = "system"
            [[proxy.backend]]
            endpoint = "tcp:host=10.0.0.2:port=5432"
            congestion = "{named}"
            [[proxy.backend]]
            endpoint = "tcp:host=10.0.0.3:port=5432"
            """
        )
        [proxy] = config.proxies
        self.assertEqual(
            (proxy.clientCongestion, [b.congestion for b in proxy.backends]),
            ("system", [named, "auto"]),
        )
        self.assertEqual(parse(minimal()).proxies[0].clientCongestion, "auto")

    def test_proxyTimeoutsAreBackendDefaults(self) -> None:
        """
        L{parseConfig} uses a proxy's C{connect-timeout} and C{disable-time} for
        its backends that do not give their own, and a backend's own value when
        it does.
        """
        config = parse(
            """\
            [[proxy]]
            listen = "tcp:8080"
            connect-timeout = 2
            disable-time = 7
            [[proxy.backend]]
            endpoint = "tcp:host=10.0.0.1:port=1"
            [[proxy.backend]]
            endpoint = "tcp:host=10.0.0.2:port=1"
            connect-timeout = 3
            disable-time = 0
            """
        )
        first, second = config.proxies[0].backends
        self.assertEqual((first.connectTimeout, first.disableTime), (2.0, 7.0))
        self.assertEqual((second.connectTimeout, second.disableTime), (3.0, 0.0))

    def test_hostAndPort(self) -> None:
        """
        L{parseConfig} resolves a lighttpd-style C{host} at load time, through
        the given resolver, and makes a TCP endpoint to its first address and
        C{port}; C{origin} says what was written.
        """
        resolver = FakeResolver({"db3.internal": "10.0.0.3"})
        config = parse(minimal('host = "db3.internal"\nport = 5432'), resolver)
        [backend] = config.proxies[0].backends
        self.assertEqual(resolver.asked, ["db3.internal"])
        self.assertEqual(backend.endpoint, "tcp:host=10.0.0.3:port=5432")
        self.assertEqual(backend.label, backend.endpoint)
        self.assertEqual(backend.origin, "host = 'db3.internal', port = 5432")
        self.assertEqual(connectedTo(backend.endpoint), ("tcp", ("10.0.0.3", 5432)))

    def test_portDefaultsTo80(self) -> None:
        """
        L{parseConfig} uses port 80, as lighttpd does, for a C{host} without
        C{port}.
        """
        resolver = FakeResolver({"web": "192.0.2.1"})
        config = parse(minimal('host = "web"'), resolver)
        self.assertEqual(config.proxies[0].backends[0].endpoint, "tcp:host=192.0.2.1:port=80")

    def test_ipv6Address(self) -> None:
        """
        L{parseConfig} makes a TCP client endpoint that connects to the IPv6
        address when a C{host} resolves to one (Twisted's C{tcp:} client
        connects to IPv6 literals; there is no C{tcp6:} client endpoint).
        """
        resolver = FakeResolver({"v6.internal": "2001:db8::7"})
        config = parse(minimal('host = "v6.internal"\nport = 5432'), resolver)
        endpoint = config.proxies[0].backends[0].endpoint
        self.assertEqual(endpoint, "tcp:host=" + quoteStringArgument("2001:db8::7") + ":port=5432")
        self.assertIsNone(checkEndpoint(endpoint, server=False))
        self.assertEqual(connectedTo(endpoint), ("tcp", ("2001:db8::7", 5432)))

    def test_unixHost(self) -> None:
        """
        L{parseConfig} makes a unix endpoint, with the path's colons quoted, of
        a C{host} starting with C{/}, without resolving it.
        """
        resolver = FakeResolver()
        config = parse(minimal('host = "/run/app:1.sock"'), resolver)
        backend = config.proxies[0].backends[0]
        self.assertEqual(resolver.asked, [])
        self.assertEqual(backend.endpoint, "unix:path=/run/app\\:1.sock")
        self.assertEqual(connectedTo(backend.endpoint), ("unix", "/run/app:1.sock"))

    def test_socket(self) -> None:
        """
        L{parseConfig} makes a unix endpoint of a C{socket} path.
        """
        config = parse(minimal('socket = "/run/pg.sock"'))
        backend = config.proxies[0].backends[0]
        self.assertEqual(backend.endpoint, "unix:path=/run/pg.sock")
        self.assertEqual(backend.origin, "socket = '/run/pg.sock'")
        self.assertEqual(connectedTo(backend.endpoint), ("unix", "/run/pg.sock"))

    def test_endpointNotResolved(self) -> None:
        """
        L{parseConfig} leaves the names in an C{endpoint} string to the
        endpoint, and does not call the resolver.
        """
        resolver = FakeResolver()
        config = parse(minimal('endpoint = "tcp:host=db.example:port=5432"'), resolver)
        self.assertEqual(resolver.asked, [])
        self.assertEqual(config.proxies[0].backends[0].endpoint, "tcp:host=db.example:port=5432")

    def test_severalProxies(self) -> None:
        """
        L{parseConfig} reads every C{[[proxy]]} with its own backends, in order.
        """
        config = parse(
            """\
            [[proxy]]
            name = "a"
            listen = "tcp:1001"
            [[proxy.backend]]
            endpoint = "tcp:host=10.0.0.1:port=1"
            [[proxy.backend]]
            endpoint = "tcp:host=10.0.0.2:port=1"
            [[proxy]]
            name = "b"
            listen = "tcp:1002"
            [[proxy.backend]]
            endpoint = "unix:/run/b.sock"
            """
        )
        self.assertEqual([p.name for p in config.proxies], ["a", "b"])
        self.assertEqual(
            [[b.endpoint for b in p.backends] for p in config.proxies],
            [["tcp:host=10.0.0.1:port=1", "tcp:host=10.0.0.2:port=1"], ["unix:/run/b.sock"]],
        )

    def test_inlineTables(self) -> None:
        """
        L{parseConfig} reads proxies and backends written as inline tables.
        """
        config = parse(
            'proxy = [{listen = "tcp:1", backend = [{endpoint = "unix:/a"}, {socket = "/b"}]}]\n'
        )
        self.assertEqual(
            [b.endpoint for b in config.proxies[0].backends], ["unix:/a", "unix:path=/b"]
        )

    def test_ephemeralPortRepeats(self) -> None:
        """
        L{parseConfig} accepts C{tcp:0} (an ephemeral port) as the listen
        endpoint of several proxies: each gets its own port.
        """
        config = parse(minimal() + minimal().replace("tcp:8080", "tcp:0") * 2)
        self.assertEqual([p.listen for p in config.proxies], [("tcp:8080",), ("tcp:0",), ("tcp:0",)])
        self.assertEqual([p.name for p in config.proxies], ["tcp:8080", "tcp:0", "tcp:0#2"])

    def test_defaultNamesUnique(self) -> None:
        """
        L{parseConfig} names a proxy without a name after its first listen
        endpoint, with a suffix when another proxy already has that name
        (written, or by default).
        """
        named = minimal().replace("tcp:8080", "tcp:1").replace(
            "[[proxy.backend]]", 'name = "tcp:0"\n[[proxy.backend]]'
        )
        ephemeral = minimal().replace("tcp:8080", "tcp:0")
        config = parse(ephemeral + named + ephemeral)
        self.assertEqual([p.name for p in config.proxies], ["tcp:0#2", "tcp:0", "tcp:0#3"])

    def test_defaultBalancersArePlugins(self) -> None:
        """
        L{parseConfig} accepts the names of the installed balancer plugins when
        not given a set of names.
        """
        text = minimal().replace('listen = "tcp:8080"', 'listen = "tcp:8080"\nbalance = "round-robin"')
        config = parseConfig(text, SOURCE, FakeResolver())
        self.assertEqual(config.proxies[0].balance, "round-robin")
        error = self.assertRaises(
            ConfigError, parseConfig, text.replace("round-robin", "nope"), SOURCE, FakeResolver()
        )
        self.assertIn(
            "(available: " + ", ".join(balancerNames()) + ")", error.problems[0].message
        )

    def test_describe(self) -> None:
        """
        L{Config.describe} shows the source, debug level, and every proxy and
        backend setting, with where a backend's endpoint came from.
        """
        resolver = FakeResolver({"db3": "10.0.0.3"})
        config = parse(
            """\
            debug = 2
            [[proxy]]
            name = "db"
            listen = ["tcp:5432", "unix:/run/db.sock"]
            balance = "round-robin"
            idle-timeout = 30
            client-congestion = "system"
            [[proxy.backend]]
            host = "db3"
            port = 5432
            label = "three"
            weight = 2
            connect-timeout = 1.5
            """,
            resolver,
        )
        self.assertEqual(
            describeConfig(config),
            dedent(
                """\
                # effective configuration from test.toml
                debug = 2
                session-log = off (text)
                shutdown-timeout = 30s

                proxy 'db'
                  listen              tcp:5432
                  listen              unix:/run/db.sock
                  balance             round-robin
                  idle-timeout        30s
                  half-closed-timeout 300s
                  client-congestion   system
                  backend 'three': tcp:host=10.0.0.3:port=5432  (from host = 'db3', port = 5432)  weight=2 connect-timeout=1.5s disable-time=1s congestion=auto"""
            ),
        )

    def test_crlfAndUnicodeLineBreaks(self) -> None:
        """
        L{parseConfig} reads files with CRLF line ends, and characters that are
        line breaks to Python but not to TOML, with the same line numbers as
        TOML counts them.
        """
        text = (
            '# a comment with a next-line \x85 and a \u2028 line separator\r\n'
            '[[proxy]]\r\nlisten = "tcp:1"\r\nbogus = 1\r\n'
            '[[proxy.backend]]\r\nendpoint = "unix:/a"\r\n'
        )
        error = self.assertRaises(ConfigError, parse, text)
        self.assertEqual([(p.line, p.key) for p in error.problems], [(4, "proxy[0].bogus")])


class CheckEndpointTests(SynchronousTestCase):
    """
    L{checkEndpoint} parses an endpoint string without using it, and says
    why it does not parse.
    """

    def test_valid(self) -> None:
        """
        L{checkEndpoint} returns L{None} for strings that parse, as servers or
        as clients.
        """
        for desc in ["tcp:0", "tcp:8080:interface=127.0.0.1", "tcp6:80", "unix:/run/a.sock"]:
            self.assertIsNone(checkEndpoint(desc, server=True), desc)
        for desc in ["tcp:host=a:port=1", "tcp:a:1", "unix:path=/a", "tls:host=a:port=443"]:
            self.assertIsNone(checkEndpoint(desc, server=False), desc)

    def test_serverIsNotClient(self) -> None:
        """
        L{checkEndpoint} refuses a client endpoint string where a server one
        is expected, and the reverse.
        """
        self.assertEqual(
            checkEndpoint("tcp:host=a:port=1", server=True),
            "bad server endpoint 'tcp:host=a:port=1': unknown parameter 'host'",
        )
        self.assertEqual(
            checkEndpoint("tcp6:80", server=False),
            "bad client endpoint 'tcp6:80': Unknown endpoint type: 'tcp6'",
        )

    def test_empty(self) -> None:
        """
        L{checkEndpoint} refuses an empty or blank string.
        """
        self.assertEqual(checkEndpoint(" ", server=True), "empty endpoint string")

    def test_systemdOutsideSocketActivation(self) -> None:
        """
        L{checkEndpoint} accepts a well-formed C{systemd:} listen endpoint in
        a process that systemd did not start with sockets (a worker, a
        process that takes over, a check by hand): whether the socket is
        there is found when listening (see L{txsockproxy.socketactivation}).
        """
        self.patch(endpoints._SystemdParser, "_sddaemon", ListenFDs([], ()))
        self.assertIsNone(checkEndpoint("systemd:domain=INET:index=0", server=True))


class ConfigErrorTests(ConfigTestCase):
    """
    L{parseConfig} reports each mistake as one L{Problem} naming the file,
    the line and the key.
    """

    def test_syntaxError(self) -> None:
        """
        L{parseConfig} reports a TOML syntax error at the line C{tomllib} gives.
        """
        self.assertOneProblem('debug = 1\n[[proxy]]\nlisten = "tcp:1\n', 3, "", "TOML syntax error")

    def test_syntaxErrorAtEnd(self) -> None:
        """
        L{parseConfig} reports a syntax error at the end of the document at the
        file's last line.
        """
        problem = self.assertOneProblem("debug = 1\nname = ", 2, "", "TOML syntax error")
        self.assertIn("end of file", problem.message)

    def test_deeplyNested(self) -> None:
        """
        L{parseConfig} reports arrays nested deeper than C{tomllib} can parse as
        a syntax error, not a L{RecursionError}.
        """
        self.assertOneProblem("x = " + "[" * 5000, None, "", "nested too deeply")

    def test_noProxy(self) -> None:
        """
        L{parseConfig} reports a file without any C{[[proxy]]}.
        """
        self.assertOneProblem("debug = 0\n", None, "", "no [[proxy]]")

    def test_emptyProxyArray(self) -> None:
        """
        L{parseConfig} reports C{proxy = []} as having nothing to do.
        """
        self.assertOneProblem("proxy = []\n", 1, "proxy", "nothing to do")

    def test_proxyNotArray(self) -> None:
        """
        L{parseConfig} reports C{[proxy]} (a table, not an array of tables).
        """
        self.assertOneProblem('[proxy]\nlisten = "tcp:1"\n', 1, "proxy", "array of tables")

    def test_unknownTopKey(self) -> None:
        """
        L{parseConfig} reports an unknown top-level key, and says where a proxy
        or backend key written before the first C{[[proxy]]} belongs.
        """
        self.assertOneProblem("verbose = 1\n" + minimal(), 1, "verbose", "unknown key")
        problem = self.assertOneProblem('balance = "fair"\n' + minimal(), 1, "balance", "unknown key")
        self.assertIn("(a key of [[proxy]])", problem.message)
        problem = self.assertOneProblem('socket = "/a"\n' + minimal(), 1, "socket", "unknown key")
        self.assertIn("(a key of [[proxy.backend]])", problem.message)

    def test_unknownProxyKey(self) -> None:
        """
        L{parseConfig} reports an unknown key in a C{[[proxy]]}, with the dashed
        spelling when the key has an underscore instead, or the close match.
        """
        text = minimal().replace("[[proxy.backend]]", "idle_timeout = 5\n[[proxy.backend]]")
        problem = self.assertOneProblem(text, 3, "proxy[0].idle_timeout", "unknown key")
        self.assertIn("did you mean 'idle-timeout'?", problem.message)
        text = minimal().replace("[[proxy.backend]]", 'balanse = "fair"\n[[proxy.backend]]')
        problem = self.assertOneProblem(text, 3, "proxy[0].balanse", "unknown key")
        self.assertIn("did you mean 'balance'?", problem.message)

    def test_backendKeyInProxy(self) -> None:
        """
        L{parseConfig} says that a backend key written in a C{[[proxy]]} belongs
        in a C{[[proxy.backend]]}.
        """
        text = minimal().replace("[[proxy.backend]]", 'label = "x"\n[[proxy.backend]]')
        problem = self.assertOneProblem(text, 3, "proxy[0].label", "unknown key")
        self.assertIn("[[proxy.backend]]", problem.message)

    def test_unknownCongestion(self) -> None:
        """
        L{parseConfig} reports a congestion control algorithm that the
        kernel does not have, naming the choices, and a value of the wrong
        type; C{congestion} written in a C{[[proxy]]} is said to be a
        backend's key, with the proxy's own spelling for the clients.
        """
        text = minimal().replace("[[proxy.backend]]", 'client-congestion = "vegas9"\n[[proxy.backend]]')
        problem = self.assertOneProblem(text, 3, "proxy[0].client-congestion", "'vegas9'")
        self.assertIn("auto, system", problem.message)
        self.assertOneProblem(
            minimal('endpoint = "unix:/a"\ncongestion = 3'),
            5,
            "proxy[0].backend[0].congestion",
            "must be a string",
        )
        text = minimal().replace("[[proxy.backend]]", 'congestion = "auto"\n[[proxy.backend]]')
        problem = self.assertOneProblem(text, 3, "proxy[0].congestion", "unknown key")
        self.assertIn("write client-congestion", problem.message)

    def test_unknownBackendKey(self) -> None:
        """
        L{parseConfig} reports an unknown key in a C{[[proxy.backend]]}, with
        the dashed spelling, and says where a proxy key written there belongs.
        """
        problem = self.assertOneProblem(
            minimal('endpoint = "unix:/a"\nconnect_timeout = 3'),
            5,
            "proxy[0].backend[0].connect_timeout",
            "unknown key",
        )
        self.assertIn("did you mean 'connect-timeout'?", problem.message)
        problem = self.assertOneProblem(
            minimal('endpoint = "unix:/a"\nbalance = "fair"'),
            5,
            "proxy[0].backend[0].balance",
            "unknown key",
        )
        self.assertIn("before the proxy's first [[proxy.backend]]", problem.message)
        self.assertOneProblem(
            minimal('endpoint = "unix:/a"\nserver = "x"'),
            5,
            "proxy[0].backend[0].server",
            "unknown key",
        )

    def test_oddKeysStayOnOneLine(self) -> None:
        """
        L{parseConfig} writes an unknown key that needs quoting as a quoted
        TOML key, so that a newline in it cannot break the message in two.
        """
        problem = self.assertOneProblem('"a\\nb" = 1\n' + minimal(), 1, '"a\\nb"', "unknown key")
        self.assertEqual(str(problem), 'test.toml:1: "a\\nb": unknown key')

    def test_stringForNumber(self) -> None:
        """
        L{parseConfig} reports a string where a number of seconds is expected.
        """
        self.assertOneProblem(
            minimal('endpoint = "unix:/a"\nconnect-timeout = "8"'),
            5,
            "proxy[0].backend[0].connect-timeout",
            "must be a number of seconds, not a string ('8')",
        )

    def test_boolForNumber(self) -> None:
        """
        L{parseConfig} reports a boolean given for a number (TOML booleans are
        not integers, whatever Python thinks).
        """
        self.assertOneProblem(
            minimal('endpoint = "unix:/a"\nweight = true'),
            5,
            "proxy[0].backend[0].weight",
            "must be an integer, not a boolean",
        )
        self.assertOneProblem("debug = false\n" + minimal(), 1, "debug", "must be an integer")
        self.assertOneProblem(
            minimal('endpoint = "unix:/a"\ndisable-time = true'),
            5,
            "proxy[0].backend[0].disable-time",
            "not a boolean",
        )

    def test_floatForInteger(self) -> None:
        """
        L{parseConfig} reports a float where an integer is expected.
        """
        self.assertOneProblem(
            minimal('host = "h"\nport = 80.0'),
            5,
            "proxy[0].backend[0].port",
            "must be an integer, not a float",
            FakeResolver({"h": "10.0.0.1"}),
        )

    def test_dateForNumber(self) -> None:
        """
        L{parseConfig} names a TOML date given for a number as a date.
        """
        self.assertOneProblem(
            minimal('endpoint = "unix:/a"\nconnect-timeout = 1979-05-27'),
            5,
            "proxy[0].backend[0].connect-timeout",
            "not a date",
        )

    def test_wrongTypeForStrings(self) -> None:
        """
        L{parseConfig} reports a non-string where a string is expected.
        """
        text = minimal().replace("[[proxy.backend]]", "name = 5\n[[proxy.backend]]")
        self.assertOneProblem(text, 3, "proxy[0].name", "must be a string, not an integer")
        self.assertOneProblem(
            minimal("endpoint = ['unix:/a']"),
            4,
            "proxy[0].backend[0].endpoint",
            "must be a string, not an array",
        )
        self.assertOneProblem(
            minimal().replace('"tcp:8080"', "8080"),
            2,
            "proxy[0].listen",
            "must be an endpoint string or a non-empty array",
        )
        self.assertOneProblem(
            minimal().replace('"tcp:8080"', '["tcp:8080", 8081]'),
            2,
            "proxy[0].listen",
            "must hold strings, not an integer",
        )

    def test_proxyNotTable(self) -> None:
        """
        L{parseConfig} reports a proxy or backend that is not a table.
        """
        self.assertOneProblem("proxy = [1]\n", 1, "proxy[0]", "must be a table, not an integer")
        self.assertOneProblem(
            '[[proxy]]\nlisten = "tcp:1"\nbackend = ["unix:/a"]\n',
            3,
            "proxy[0].backend[0]",
            "must be a table, not a string",
        )

    def test_unknownBalancer(self) -> None:
        """
        L{parseConfig} reports an unknown balancer and lists those available.
        """
        text = minimal().replace("[[proxy.backend]]", 'balance = "sticky"\n[[proxy.backend]]')
        problem = self.assertOneProblem(text, 3, "proxy[0].balance", "unknown balancer 'sticky'")
        self.assertIn("(available: fair, least-connection, round-robin)", problem.message)
        text = minimal().replace("[[proxy.backend]]", 'balance = ""\n[[proxy.backend]]')
        self.assertOneProblem(text, 3, "proxy[0].balance", "unknown balancer ''")

    def test_badListenEndpoint(self) -> None:
        """
        L{parseConfig} reports a listen string that is not a server endpoint,
        saying why Twisted refused it.
        """
        problem = self.assertOneProblem(
            minimal().replace('"tcp:8080"', '["tcp:8080", "tcp:http"]'),
            2,
            "proxy[0].listen",
            "bad server endpoint 'tcp:http'",
        )
        self.assertIn("expected a whole number, not 'http'", problem.message)
        self.assertOneProblem(
            minimal().replace("tcp:8080", "nosuch:8080"),
            2,
            "proxy[0].listen",
            "Unknown endpoint type: 'nosuch'",
        )
        self.assertOneProblem(
            minimal().replace('"tcp:8080"', '""'), 2, "proxy[0].listen", "empty endpoint string"
        )

    def test_badBackendEndpoint(self) -> None:
        """
        L{parseConfig} reports an C{endpoint} that is not a client endpoint,
        naming the parameter that is wrong or missing, or the backslash it
        ends with (Twisted's parser says "generator raised StopIteration").
        """
        problem = self.assertOneProblem(
            minimal('endpoint = "tcp:host=a:port=1:bogus=2"'),
            4,
            "proxy[0].backend[0].endpoint",
            "bad client endpoint 'tcp:host=a:port=1:bogus=2'",
        )
        self.assertIn("unknown parameter 'bogus'", problem.message)
        problem = self.assertOneProblem(
            minimal('endpoint = "tcp:host=a"'),
            4,
            "proxy[0].backend[0].endpoint",
            "bad client endpoint",
        )
        self.assertIn("missing 'port'", problem.message)
        problem = self.assertOneProblem(
            minimal('endpoint = "tcp:host=a:port=1:bindAddress=\\\\"'),
            4,
            "proxy[0].backend[0].endpoint",
            "bad client endpoint",
        )
        self.assertIn("ends with a backslash", problem.message)

    def test_missingListen(self) -> None:
        """
        L{parseConfig} reports a proxy without C{listen}, at its header line.
        """
        self.assertOneProblem(
            '[[proxy]]\nname = "x"\n[[proxy.backend]]\nendpoint = "unix:/a"\n',
            1,
            "proxy[0].listen",
            "missing",
        )

    def test_emptyListen(self) -> None:
        """
        L{parseConfig} reports an empty C{listen} array.
        """
        self.assertOneProblem(
            minimal().replace('"tcp:8080"', "[]"), 2, "proxy[0].listen", "non-empty array"
        )

    def test_missingBackend(self) -> None:
        """
        L{parseConfig} reports a proxy without backends, and an empty backend
        array.
        """
        self.assertOneProblem(
            '[[proxy]]\nlisten = "tcp:1"\n', 1, "proxy[0].backend", "at least one [[proxy.backend]]"
        )
        self.assertOneProblem(
            '[[proxy]]\nlisten = "tcp:1"\nbackend = []\n', 3, "proxy[0].backend", "non-empty array"
        )

    def test_backendWithoutAddress(self) -> None:
        """
        L{parseConfig} reports a backend with neither C{endpoint}, C{host} nor
        C{socket}, and a C{port} without C{host}.
        """
        self.assertOneProblem(
            minimal('label = "x"'), 3, "proxy[0].backend[0]", "needs 'endpoint', 'host' or 'socket'"
        )
        self.assertOneProblem(
            minimal("port = 80"), 4, "proxy[0].backend[0].port", "'port' needs a 'host'"
        )

    def test_endpointWithHost(self) -> None:
        """
        L{parseConfig} reports C{endpoint} combined with C{host}, C{port} or
        C{socket}, and resolves nothing.
        """
        for other in ['host = "h"', "port = 80", 'socket = "/s"']:
            resolver = FakeResolver({"h": "10.0.0.1"})
            self.assertOneProblem(
                minimal(f'endpoint = "unix:/a"\n{other}'),
                4,
                "proxy[0].backend[0].endpoint",
                "either 'endpoint' or 'host'/'port'/'socket', not both",
                resolver,
            )
            self.assertEqual(resolver.asked, [])

    def test_socketWithHost(self) -> None:
        """
        L{parseConfig} reports C{socket} combined with C{host} or C{port}.
        """
        for other in ['host = "h"', "port = 80"]:
            self.assertOneProblem(
                minimal(f'socket = "/s"\n{other}'),
                4,
                "proxy[0].backend[0].socket",
                "'socket' cannot be combined with 'host' or 'port'",
            )

    def test_unixHostWithPort(self) -> None:
        """
        L{parseConfig} reports a C{port} given with a unix socket C{host}.
        """
        self.assertOneProblem(
            minimal('host = "/run/x.sock"\nport = 80'),
            4,
            "proxy[0].backend[0].host",
            "'port' makes no sense with a unix socket host",
        )

    def test_unresolvableHost(self) -> None:
        """
        L{parseConfig} reports a C{host} that does not resolve, with the
        resolver's reason.
        """
        self.assertOneProblem(
            minimal('host = "nowhere.invalid"\nport = 5432'),
            4,
            "proxy[0].backend[0].host",
            "cannot resolve host 'nowhere.invalid': Name or service not known",
        )

    def test_invalidHostName(self) -> None:
        """
        L{resolveFirst} raises L{OSError}, as for any name that does not
        resolve, for a name C{getaddrinfo} refuses before asking DNS (a label
        longer than 63 characters); L{parseConfig} reports it.
        """
        name = "a" * 64 + ".invalid"
        self.assertRaises(OSError, resolveFirst, name)
        error = self.assertRaises(
            ConfigError, parseConfig, minimal(f'host = "{name}"'), SOURCE, resolveFirst, BALANCERS
        )
        self.assertEqual([p.key for p in error.problems], ["proxy[0].backend[0].host"])
        self.assertIn("cannot resolve host", error.problems[0].message)

    def test_emptyHost(self) -> None:
        """
        L{parseConfig} reports an empty C{host} or C{socket} without resolving it.
        """
        resolver = FakeResolver()
        self.assertOneProblem(
            minimal('host = ""'), 4, "proxy[0].backend[0].host", "must not be empty", resolver
        )
        self.assertOneProblem(
            minimal('socket = ""'), 4, "proxy[0].backend[0].socket", "must not be empty"
        )
        self.assertEqual(resolver.asked, [])

    def test_portOutOfRange(self) -> None:
        """
        L{parseConfig} reports a C{port} outside 1..65535.
        """
        for port in ["0", "65536", "-1"]:
            self.assertOneProblem(
                minimal(f'host = "h"\nport = {port}'),
                5,
                "proxy[0].backend[0].port",
                f"must be 1 to 65535, not {port}",
                FakeResolver({"h": "10.0.0.1"}),
            )

    def test_badNumbers(self) -> None:
        """
        L{parseConfig} reports negative durations, a zero connect timeout,
        timeouts and check intervals below their floors, a weight below 1, an
        out-of-range debug level, and durations that are not finite or do
        not fit a float.
        """
        cases = [
            ("disable-time = -1", "proxy[0].backend[0].disable-time", "must not be negative"),
            ("connect-timeout = 0", "proxy[0].backend[0].connect-timeout", "must be more than 0"),
            ("weight = 0", "proxy[0].backend[0].weight", "must be at least 1, not 0"),
            ("connect-timeout = nan", "proxy[0].backend[0].connect-timeout", "finite"),
            ("disable-time = inf", "proxy[0].backend[0].disable-time", "finite"),
            ("disable-time = " + "9" * 400, "proxy[0].backend[0].disable-time", "too large"),
            # Floors: every connect would fail, or checks would spin.
            ("connect-timeout = 1e-320", "proxy[0].backend[0].connect-timeout",
             "must be at least 0.01s, not 1e-320"),
            ("check-interval = 1e-9", "proxy[0].backend[0].check-interval",
             "must be at least 0.1s, not 1e-09"),
            ("check-timeout = 0.001", "proxy[0].backend[0].check-timeout",
             "must be at least 0.01s, not 0.001"),
        ]
        for setting, key, message in cases:
            self.assertOneProblem(minimal(f'endpoint = "unix:/a"\n{setting}'), 5, key, message)
        self.assertOneProblem("debug = 4\n" + minimal(), 1, "debug", "must be 0 to 3, not 4")
        self.assertOneProblem("debug = -1\n" + minimal(), 1, "debug", "must be 0 to 3, not -1")
        text = minimal().replace("[[proxy.backend]]", "idle-timeout = -5\n[[proxy.backend]]")
        self.assertOneProblem(text, 3, "proxy[0].idle-timeout", "must not be negative")

    def test_emptyNames(self) -> None:
        """
        L{parseConfig} reports an empty proxy name or backend label.
        """
        text = minimal().replace("[[proxy.backend]]", 'name = " "\n[[proxy.backend]]')
        self.assertOneProblem(text, 3, "proxy[0].name", "must not be empty")
        self.assertOneProblem(
            minimal('endpoint = "unix:/a"\nlabel = ""'), 5, "proxy[0].backend[0].label", "must not be empty"
        )

    def test_duplicateLabels(self) -> None:
        """
        L{parseConfig} reports a backend label used twice in one proxy, saying
        which backend has it first.
        """
        self.assertOneProblem(
            minimal('endpoint = "unix:/a"\nlabel = "x"\n[[proxy.backend]]\nendpoint = "unix:/b"\nlabel = "x"'),
            8,
            "proxy[0].backend[1].label",
            "duplicate backend label 'x': already used by proxy[0].backend[0] (line 3)",
        )

    def test_sameLabelInTwoProxies(self) -> None:
        """
        L{parseConfig} accepts one label in two proxies: labels are per proxy.
        """
        config = parse(minimal() + minimal().replace("tcp:8080", "tcp:8081"))
        self.assertEqual(
            [p.backends[0].label for p in config.proxies], ["tcp:host=127.0.0.1:port=10000"] * 2
        )

    def test_duplicateBackend(self) -> None:
        """
        L{parseConfig} reports two backends of one proxy that connect to the
        same endpoint (including two names resolving to one address), and
        suggests a weight.
        """
        self.assertOneProblem(
            minimal('endpoint = "unix:/a"\n[[proxy.backend]]\nendpoint = "unix:/a"'),
            6,
            "proxy[0].backend[1].endpoint",
            "duplicate backend 'unix:/a': already used by proxy[0].backend[0] (line 3); "
            "give one backend a weight instead",
        )
        resolver = FakeResolver({"a": "10.0.0.1", "b": "10.0.0.1"})
        self.assertOneProblem(
            minimal('host = "a"\n[[proxy.backend]]\nhost = "b"'),
            6,
            "proxy[0].backend[1].host",
            "duplicate backend 'tcp:host=10.0.0.1:port=80'",
            resolver,
        )

    def test_duplicateProxyNames(self) -> None:
        """
        L{parseConfig} reports a proxy name used twice.
        """
        text = minimal().replace("[[proxy.backend]]", 'name = "db"\n[[proxy.backend]]')
        second = text.replace("tcp:8080", "tcp:8081")
        self.assertOneProblem(
            text + second, 8, "proxy[1].name", "duplicate proxy name 'db': already used by proxy[0] (line 1)"
        )

    def test_listenTwiceInOneProxy(self) -> None:
        """
        L{parseConfig} reports a listen endpoint given twice in one proxy, also
        when spelled differently.
        """
        self.assertOneProblem(
            minimal().replace('"tcp:8080"', '["tcp:8080", "tcp:8080"]'),
            2,
            "proxy[0].listen",
            "duplicate listen endpoint 'tcp:8080'",
        )
        self.assertOneProblem(
            minimal().replace('"tcp:8080"', '["tcp:8080", "tcp:port=8080:interface=0.0.0.0"]'),
            2,
            "proxy[0].listen",
            "(the same address as 'tcp:8080')",
        )

    def test_listenInTwoProxies(self) -> None:
        """
        L{parseConfig} reports a listen endpoint that is already another
        proxy's, naming that proxy.
        """
        text = minimal().replace("[[proxy.backend]]", 'name = "one"\n[[proxy.backend]]')
        self.assertOneProblem(
            text + minimal(),
            7,
            "proxy[1].listen",
            "'tcp:8080' is already a listen endpoint of proxy 'one'",
        )

    def test_duplicatesBesideOtherErrors(self) -> None:
        """
        L{parseConfig} still finds duplicate names and listen endpoints among
        proxies when an earlier proxy has an error of its own, and names the
        right proxy.
        """
        broken = minimal('endpoint = "bogus:"').replace(
            "[[proxy.backend]]", 'name = "a"\n[[proxy.backend]]'
        )
        good = minimal().replace("[[proxy.backend]]", 'name = "a"\n[[proxy.backend]]')
        problems = self.problems(broken + good)
        self.assertEqual(
            [(p.line, p.key) for p in problems],
            [(5, "proxy[0].backend[0].endpoint"), (7, "proxy[1].listen"), (8, "proxy[1].name")],
        )

    def test_exactLines(self) -> None:
        """
        L{parseConfig} reports every problem of a file with several proxies and
        backends at the line of its key, or of its table when the key is
        missing, in file order.
        """
        text = """\
            debug = 1

            [[proxy]]
            name = "web"
            listen = "tcp:8080"
            balance = "fair"

            [[proxy.backend]]
            endpoint = "tcp:host=10.0.0.1:port=80"
            label = "a"

            [[proxy.backend]]
            # lighttpd style
            host = "unknown.example"
            port = 80

            [[proxy]]
            name = "db"
            listen = ["tcp:5432", "tcp:8080"]
            connect-timeout = "fast"

            [[proxy.backend]]
            endpoint = "unix:/run/pg.sock"

            [[proxy.backend]]
            socket = "/run/pg2.sock"
            weight = 0

            [[proxy.backend]]
            label = "third"
            """
        problems = self.problems(text)
        self.assertEqual(
            [(p.line, p.key) for p in problems],
            [
                (14, "proxy[0].backend[1].host"),
                (19, "proxy[1].listen"),
                (20, "proxy[1].connect-timeout"),
                (27, "proxy[1].backend[1].weight"),
                (29, "proxy[1].backend[2]"),
            ],
        )
        self.assertTrue(all(p.source == SOURCE for p in problems))

    def test_allProblemsReported(self) -> None:
        """
        L{parseConfig} reports every problem in a file, also several in one
        backend, each on its own line of the error's message.
        """
        text = minimal('endpoint = "tcp:host=a"\nlable = "x"\nweight = "heavy"\ndisable-time = -1')
        text = "debug = 9\n" + text.replace('"tcp:8080"', '"tcp:x"')
        error = self.assertRaises(ConfigError, parse, text)
        self.assertEqual(
            [(p.line, p.key) for p in error.problems],
            [
                (1, "debug"),
                (3, "proxy[0].listen"),
                (5, "proxy[0].backend[0].endpoint"),
                (6, "proxy[0].backend[0].lable"),
                (7, "proxy[0].backend[0].weight"),
                (8, "proxy[0].backend[0].disable-time"),
            ],
        )
        self.assertEqual(str(error).split("\n"), [str(p) for p in error.problems])

    def test_linesInMultilineValues(self) -> None:
        """
        L{parseConfig} does not take C{key =} inside multi-line strings, or
        headers inside arrays, for the keys they look like.
        """
        text = dedent(
            '''\
            [[proxy]]
            name = """
            listen = "not this"
            [[proxy.backend]]
            """
            listen = [
                "tcp:8080",
                "tcp:x",
            ]
            [[proxy.backend]]
            endpoint = "unix:/a"
            weight = -1
            '''
        )
        error = self.assertRaises(ConfigError, parse, text)
        self.assertEqual(
            [(p.line, p.key) for p in error.problems],
            [(6, "proxy[0].listen"), (12, "proxy[0].backend[0].weight")],
        )

    def test_inlineTableLines(self) -> None:
        """
        L{parseConfig} reports a problem in an inline table at the line of the
        key holding it.
        """
        text = 'debug = 0\nproxy = [{listen = "tcp:1", backend = [{endpoint = "unix:/a", weight = 0}]}]\n'
        self.assertOneProblem(text, 2, "proxy[0].backend[0].weight", "must be at least 1")


PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "txsockproxy")
# The config layer: the objects, their readers and their rendering.
CONFIG_LAYER = (
    "txsockproxy.config", "txsockproxy.checks", "txsockproxy.endpoints",
    "txsockproxy.tomlconfig", "txsockproxy.cmdline", "txsockproxy.loading",
    "txsockproxy.render", "txsockproxy.lighttpd", "txsockproxy.lighttpd.lexer",
    "txsockproxy.lighttpd.evaluator", "txsockproxy.lighttpd.mapper",
)


def _modules() -> dict[str, str]:
    """
    Every module of the txsockproxy package, by name, with its file.
    """
    found = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3]
                module = relative.replace(os.sep, ".").removesuffix(".__init__")
                found[module] = path
    return found


def _imports(path: str, modules: dict[str, str]) -> list[tuple[str, str | None]]:
    """
    The txsockproxy modules that the file at C{path} imports, wherever the
    import is written (a function's body too), each with the name imported
    from it (L{None} for a whole module).
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    found.append((submodule, None))
                else:
                    found.append((node.module, alias.name))
    return [(m, n) for m, n in found if m.split(".")[0] == "txsockproxy"]


class ConfigLayoutTests(SynchronousTestCase):
    """
    The config layer's modules import one way: L{txsockproxy.config} is a leaf,
    the readers import it, L{txsockproxy.loading} imports the readers.
    """

    def test_configIsALeaf(self) -> None:
        """
        L{txsockproxy.config} imports nothing of txsockproxy, anywhere in it.
        """
        modules = _modules()
        self.assertEqual(_imports(modules["txsockproxy.config"], modules), [])

    def test_noCycle(self) -> None:
        """
        No module of the config layer reaches itself through its imports
        (function-level ones included).
        """
        modules = _modules()
        graph = {
            name: {m for m, _ in _imports(path, modules) if m in modules}
            for name, path in modules.items()
        }
        for start in CONFIG_LAYER:
            seen: set[str] = set()
            stack = list(graph[start])
            while stack:
                module = stack.pop()
                if module not in seen:
                    seen.add(module)
                    stack.extend(graph[module])
            self.assertNotIn(start, seen, f"{start} imports itself through a cycle")

    def test_noPrivateImports(self) -> None:
        """
        No module of the config layer imports another module's private
        (underscored) name.
        """
        modules = _modules()
        private = [
            (name, module, imported)
            for name in CONFIG_LAYER
            for module, imported in _imports(modules[name], modules)
            if imported is not None and imported.startswith("_") and module != name
        ]
        self.assertEqual(private, [])


class LoadConfigTests(ConfigTestCase):
    """
    L{loadConfig} reads a file and reports what keeps it from being read.
    """

    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_load(self) -> None:
        """
        L{loadConfig} parses the file, naming it as the config's source.
        """
        path = self.write(minimal().encode("utf-8"))
        config = loadConfig(path, FakeResolver(), BALANCERS)
        self.assertEqual(config.source, path)
        self.assertEqual(config.proxies[0].listen, ("tcp:8080",))

    def test_byteOrderMark(self) -> None:
        """
        L{loadConfig} accepts a file starting with a UTF-8 byte order mark.
        """
        path = self.write(b"\xef\xbb\xbf" + minimal().encode("utf-8"))
        self.assertEqual(len(loadConfig(path, FakeResolver(), BALANCERS).proxies), 1)

    def test_problemsNameTheFile(self) -> None:
        """
        L{loadConfig} reports problems with the file's name.
        """
        path = self.write(b"debug = 7\n" + minimal().encode("utf-8"))
        error = self.assertRaises(ConfigError, loadConfig, path, FakeResolver(), BALANCERS)
        self.assertEqual([str(p) for p in error.problems], [f"{path}:1: debug: must be 0 to 3, not 7"])

    def test_missingFile(self) -> None:
        """
        L{loadConfig} reports a file that does not exist, with the reason.
        """
        path = self.mktemp()
        error = self.assertRaises(ConfigError, loadConfig, path, FakeResolver(), BALANCERS)
        self.assertEqual([str(p) for p in error.problems], [f"{path}: cannot read: No such file or directory"])

    def test_directory(self) -> None:
        """
        L{loadConfig} reports a directory given as the file.
        """
        path = self.mktemp()
        os.mkdir(path)
        error = self.assertRaises(ConfigError, loadConfig, path, FakeResolver(), BALANCERS)
        self.assertEqual([str(p) for p in error.problems], [f"{path}: cannot read: Is a directory"])

    def test_unreadable(self) -> None:
        """
        L{loadConfig} reports a file it may not read.
        """
        if os.getuid() == 0:
            self.skipTest("root reads any file")
        path = self.write(minimal().encode("utf-8"))
        os.chmod(path, 0)
        error = self.assertRaises(ConfigError, loadConfig, path, FakeResolver(), BALANCERS)
        self.assertEqual([str(p) for p in error.problems], [f"{path}: cannot read: Permission denied"])

    def test_notUtf8(self) -> None:
        """
        L{loadConfig} reports a file that is not UTF-8, at the line of the
        first bad byte.
        """
        path = self.write(b"debug = 0\n# caf\xe9\n" + minimal().encode("utf-8"))
        error = self.assertRaises(ConfigError, loadConfig, path, FakeResolver(), BALANCERS)
        self.assertEqual(
            [str(p) for p in error.problems], [f"{path}:2: not valid UTF-8 (byte 0xe9)"]
        )


class ConfigFromArgumentsTests(SynchronousTestCase):
    """
    L{configFromArguments} builds a one-proxy configuration from command-line
    values, naming the option of each problem.
    """

    def test_build(self) -> None:
        """
        L{configFromArguments} makes one proxy listening on every C{--listen},
        with one backend (labelled by its endpoint) per C{--backend}.
        """
        config = configFromArguments(
            ["tcp:8080", "unix:/run/p.sock"], ["tcp:host=a:port=1", "unix:/b"], "round-robin", 2,
            BALANCERS,
        )
        self.assertEqual(
            config,
            Config(
                proxies=(
                    ProxyConfig(
                        name="tcp:8080",
                        listen=("tcp:8080", "unix:/run/p.sock"),
                        backends=(
                            BackendConfig("tcp:host=a:port=1", "tcp:host=a:port=1"),
                            BackendConfig("unix:/b", "unix:/b"),
                        ),
                        balance="round-robin",
                    ),
                ),
                debug=2,
                source="<command line>",
            ),
        )

    def test_defaultBalance(self) -> None:
        """
        L{configFromArguments} uses the fair balancer when none is given.
        """
        config = configFromArguments(["tcp:1"], ["unix:/b"], None, 0, BALANCERS)
        self.assertEqual(config.proxies[0].balance, "fair")

    def test_problems(self) -> None:
        """
        L{configFromArguments} reports every problem, in option order, each
        naming its option.
        """
        error = self.assertRaises(
            ConfigError,
            configFromArguments,
            ["tcp:1", "tcp:x", "tcp:port=1"],
            ["unix:/a", "nosuch:", "unix:/a"],
            "sticky",
            5,
            BALANCERS,
        )
        self.assertEqual(
            [str(p) for p in error.problems],
            [
                "<command line>: --listen: bad server endpoint 'tcp:x': "
                "expected a whole number, not 'x'",
                "<command line>: --listen: duplicate listen endpoint 'tcp:port=1'",
                "<command line>: --backend: bad client endpoint 'nosuch:': "
                "Unknown endpoint type: 'nosuch'",
                "<command line>: --backend: duplicate backend 'unix:/a'",
                "<command line>: --balance: unknown balancer 'sticky' "
                "(available: fair, least-connection, round-robin)",
                "<command line>: --debug: must be 0 to 3, not 5",
            ],
        )

    def test_missing(self) -> None:
        """
        L{configFromArguments} reports a missing C{--listen} or C{--backend}.
        """
        error = self.assertRaises(ConfigError, configFromArguments, [], [], None, 0, BALANCERS)
        self.assertEqual([p.key for p in error.problems], ["--listen", "--backend"])


# Property tests. Example counts stay small so that the suite stays fast;
# TXSOCKPROXY_EXAMPLES=5000 searches harder.

_settings = settings(
    max_examples=int(os.environ.get("TXSOCKPROXY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Any name but one with a NUL character (refused: see NulTests).
_names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\0"),
    min_size=1, max_size=12,
).filter(lambda s: s.strip() != "")
_seconds = st.one_of(
    st.integers(0, 10**6), st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
)
# Timeouts: at least tomlconfig's MIN_TIMEOUT.
_positiveSeconds = st.one_of(
    st.integers(1, 10**6), st.floats(0.01, 1e6, allow_nan=False, allow_infinity=False)
)
_addresses = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)
)
_paths = st.text(
    st.characters(codec="ascii", min_codepoint=33, max_codepoint=126), min_size=1, max_size=20
).map(lambda s: "/" + s)


def _tomlString(text: str) -> str:
    """
    Render C{text} as a TOML basic string: control characters escaped, the
    rest as is (JSON's surrogate-pair escapes are not TOML).
    """
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml(value: object) -> str:
    """
    Render C{value} as a TOML value (inline tables and arrays).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _tomlString(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_tomlString(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def _tables(data: dict[str, Any], header: tuple[str, ...] = ()) -> str:
    """
    Render C{data} as a TOML document, writing arrays of tables as
    C{[[header]]} sections as a person would.
    """
    lines: list[str] = []
    nested: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            nested.append((key, value))
        else:
            lines.append(f"{_tomlString(key)} = {_toml(value)}")
    for key, items in nested:
        name = header + (key,)
        for item in items:
            lines.append("[[" + ".".join(_tomlString(n) for n in name) + "]]")
            lines.append(_tables(item, name))
    return "\n".join(lines) + "\n"


@st.composite
def _backends(draw: st.DrawFn, proxyDefaults: dict[str, float]) -> tuple[dict[str, Any], BackendConfig, str, str]:
    """
    One backend: its TOML table, the L{BackendConfig} it must give, and the
    host name and address the fake resolver must know (or empty strings).
    """
    table: dict[str, Any] = {}
    host = address = origin = ""
    kind = draw(st.sampled_from(["endpoint", "host", "unixHost", "socket", "dns", "srv"]))
    discovery = None
    if kind in ("dns", "srv"):
        # Backends from DNS: nothing is resolved when loading.
        name = draw(st.from_regex(r"_?[a-z][a-z0-9]{0,10}\.example", fullmatch=True))
        resolveMin = draw(st.none() | st.integers(1, 10))
        resolveMax = draw(st.none() | st.integers(10, 600))
        resolver = draw(st.none() | st.sampled_from(["127.0.0.1:8600", "[fd00::53]:53",
                                                     "10.0.0.53"]))
        if kind == "srv":
            table["srv"] = name
            endpoint = f"srv:{name}"
        else:
            port = draw(st.integers(1, 65535))
            table.update({"host": name, "port": port, "resolve": "dns"})
            endpoint = f"tcp:host={name}:port={port}"
        for key, value in (("resolve-min", resolveMin), ("resolve-max", resolveMax),
                           ("resolver", resolver)):
            if value is not None:
                table[key] = value
        discovery = DiscoveryConfig(
            name=name, port=0 if kind == "srv" else port, srv=kind == "srv",
            resolveMin=float(resolveMin or 1), resolveMax=float(resolveMax or 300),
            resolver=resolver or "",
        )
    elif kind == "endpoint":
        port = draw(st.integers(1, 65535))
        endpoint = f"tcp:host=backend.example:port={port}"
        table["endpoint"] = endpoint
    elif kind == "host":
        host = draw(st.from_regex(r"[a-z][a-z0-9]{0,10}\.example", fullmatch=True))
        address = draw(_addresses)
        port = draw(st.none() | st.integers(1, 65535))
        table["host"] = host
        if port is not None:
            table["port"] = port
        port = 80 if port is None else port
        endpoint = f"tcp:host={quoteStringArgument(address)}:port={port}"
        origin = f"host = {host!r}, port = {port}"
    else:
        path = draw(_paths)
        table["host" if kind == "unixHost" else "socket"] = path
        endpoint = f"unix:path={quoteStringArgument(path)}"
        origin = f"{'host' if kind == 'unixHost' else 'socket'} = {path!r}"
    label = draw(st.none() | _names)
    weight = draw(st.none() | st.integers(1, 1000))
    disableTime = draw(st.none() | _seconds)
    connectTimeout = draw(st.none() | _positiveSeconds)
    backendCongestion = draw(st.none() | _congestions)
    for key, value in [("label", label), ("weight", weight), ("disable-time", disableTime),
                       ("connect-timeout", connectTimeout), ("congestion", backendCongestion)]:
        if value is not None:
            table[key] = value
    backend = BackendConfig(
        endpoint=endpoint,
        label=(discovery.name if discovery else endpoint) if label is None else label,
        weight=1 if weight is None else weight,
        disableTime=float(proxyDefaults["disable-time"] if disableTime is None else disableTime),
        connectTimeout=float(
            proxyDefaults["connect-timeout"] if connectTimeout is None else connectTimeout
        ),
        origin=origin,
        congestion=backendCongestion or "auto",
        discovery=discovery,
    )
    return table, backend, host, address


# Congestion control settings valid here: the kernel's algorithms too.
_congestions = st.sampled_from(["auto", "system", *(congestion.available() or ())])


@st.composite
def _configs(draw: st.DrawFn) -> tuple[str, Config, dict[str, str]]:
    """
    A valid configuration: its TOML text, the L{Config} it must give, and
    the resolver's table.
    """
    resolverTable: dict[str, str] = {}
    resolverNames: list[str] = []
    ports = draw(st.lists(st.integers(1, 65535), min_size=1, max_size=6, unique=True))
    proxyCount = draw(st.integers(1, min(3, len(ports))))
    names = draw(st.lists(_names, min_size=proxyCount, max_size=proxyCount, unique=True))
    debug = draw(st.none() | st.integers(0, 3))
    data: dict[str, Any] = {} if debug is None else {"debug": debug}
    proxies: list[ProxyConfig] = []
    rawProxies: list[dict[str, Any]] = []
    for i in range(proxyCount):
        mine = ports[i::proxyCount]
        listen = [f"tcp:{p}" for p in mine]
        table: dict[str, Any] = {}
        named = draw(st.booleans())
        if named:
            table["name"] = names[i]
        table["listen"] = listen[0] if len(listen) == 1 and draw(st.booleans()) else listen
        balance = draw(st.none() | st.sampled_from(sorted(BALANCERS)))
        if balance is not None:
            table["balance"] = balance
        defaults = {"connect-timeout": 8.0, "disable-time": 1.0}
        optional = {
            "connect-timeout": draw(st.none() | _positiveSeconds),
            "disable-time": draw(st.none() | _seconds),
            "idle-timeout": draw(st.none() | _seconds),
            "half-closed-timeout": draw(st.none() | _seconds),
            "inspect-delay": draw(st.none() | _seconds),
            "client-congestion": draw(st.none() | _congestions),
        }
        for key, value in optional.items():
            if value is not None:
                table[key] = value
                defaults[key] = value
        backends = draw(
            st.lists(
                _backends(defaults),
                min_size=1,
                max_size=4,
                unique_by=(lambda b: b[1].endpoint, lambda b: b[1].label),
            )
        )
        table["backend"] = [b[0] for b in backends]
        for _, _, host, address in backends:
            if host:
                resolverTable[host] = address
                resolverNames.append(host)
        rawProxies.append(table)
        proxies.append(
            ProxyConfig(
                name=names[i] if named else listen[0],
                listen=tuple(listen),
                backends=tuple(b[1] for b in backends),
                balance=balance or "fair",
                idleTimeout=float(optional["idle-timeout"] or 0.0),
                halfClosedTimeout=float(
                    300.0 if optional["half-closed-timeout"] is None
                    else optional["half-closed-timeout"]
                ),
                inspectDelay=float(optional["inspect-delay"] or 0.0),
                clientCongestion=optional["client-congestion"] or "auto",
            )
        )
    # One name resolves to one address: a name drawn twice, with two
    # addresses, would make the expected config wrong.
    assume(len(resolverNames) == len(set(resolverNames)))
    data["proxy"] = rawProxies
    expected = Config(proxies=tuple(proxies), debug=debug or 0, source=SOURCE)
    return _tables(data), expected, resolverTable


_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(
        ["tcp:1", "tcp:0", "tcp6:80", "unix:/a", "tcp:host=a:port=1", "/run/x", "fair",
         "round-robin", "host.example", "ssl:443", "systemd:domain=INET:index=0", ""]
    ),
    st.dates(),
    st.times(),
    st.datetimes(),
)
_keys = st.one_of(
    st.sampled_from(
        ["debug", "proxy", "name", "listen", "balance", "connect-timeout", "disable-time",
         "idle-timeout", "half-closed-timeout", "inspect-delay", "backend", "endpoint",
         "host", "port",
         "socket", "label", "weight"]
    ),
    st.text(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=12,
)
_listenSamples = st.sampled_from(["tcp:1", "tcp:0", "tcp:port=1", "tcp6:2", "unix:/a", "tcp:x", ""])
_endpointSamples = st.sampled_from(["tcp:host=a:port=1", "unix:/a", "unix:/b", "tcp:a", "bogus:"])
# For each key, values that are right or nearly so: arbitrary values alone
# would almost never get past the type checks to the deeper ones.
_plausible: dict[str, st.SearchStrategy[Any]] = {
    "debug": st.integers(-1, 4),
    "name": st.sampled_from(["a", "b", "tcp:1", " "]),
    "listen": _listenSamples | st.lists(_listenSamples, max_size=3),
    "balance": st.sampled_from(["fair", "round-robin", "nope", ""]),
    "connect-timeout": st.integers(-1, 10) | st.floats(),
    "disable-time": st.integers(-1, 10) | st.floats(),
    "idle-timeout": st.integers(-1, 10) | st.floats(),
    "half-closed-timeout": st.integers(-1, 10) | st.floats(),
    "endpoint": _endpointSamples,
    "host": st.sampled_from(["a.example", "bb.example", "ccc.example", "/run/x", "", "::1"]),
    "port": st.integers(-1, 70000),
    "socket": st.sampled_from(["/a", "/b", "", "/run/x"]),
    "label": st.sampled_from(["x", "y", ""]),
    "weight": st.integers(-1, 3),
    "congestion": st.sampled_from(["auto", "system", "reno", "nope", ""]),
    "client-congestion": st.sampled_from(["auto", "cubic", "nope"]),
    "resolve": st.sampled_from(["start", "dns", "nope", ""]),
    "resolve-min": st.integers(-1, 10) | st.floats(),
    "resolve-max": st.integers(-1, 10) | st.floats(),
    "srv": st.sampled_from(["_a._tcp.example", "a.example", "", "no name", "."]),
    "resolver": st.sampled_from(["127.0.0.1:53", "[::1]:5353", "::1", "x:1", "[::1", ""]),
}


@st.composite
def _tablesOf(
    draw: st.DrawFn,
    keys: list[str],
    usual: dict[str, st.SearchStrategy[Any]],
) -> dict[str, Any]:
    """
    A table holding some of C{keys}, mostly with plausible values; each of
    the C{usual} keys, mostly; and sometimes a key of any name.
    """
    table: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(keys), unique=True)):
        table[key] = draw(st.one_of(_plausible[key], _plausible[key], _values))
    for key, strategy in usual.items():
        if draw(st.sampled_from([True, True, True, True, False])):
            table[key] = draw(strategy)
    table.update(draw(st.dictionaries(_keys, _values, max_size=1)))
    return table


_backendTables = _tablesOf(
    ["endpoint", "host", "port", "socket", "label", "weight", "disable-time", "connect-timeout",
     "congestion", "resolve", "resolve-min", "resolve-max", "srv", "resolver"],
    {},
)
_proxyTables = _tablesOf(
    ["name", "balance", "connect-timeout", "disable-time", "idle-timeout",
     "half-closed-timeout", "client-congestion", "resolve", "resolve-min", "resolve-max",
     "resolver"],
    {
        "listen": st.one_of(_plausible["listen"], _plausible["listen"], _values),
        "backend": st.lists(_backendTables, min_size=1, max_size=3) | _values,
    },
)
_documents = _tablesOf(
    ["debug"], {"proxy": st.lists(_proxyTables, min_size=1, max_size=3) | _values}
)


def _anyResolver(host: str) -> str:
    """
    A resolver for arbitrary input: fails, or gives an IPv4 or IPv6 address.
    """
    if len(host) % 3 == 0:
        raise OSError("no such host")
    return "::1" if len(host) % 3 == 1 else "127.0.0.1"


class ConfigPropertyTests(SynchronousTestCase):
    """
    Rules of L{parseConfig} that hold for all input.
    """

    @_settings
    @given(_configs())
    def test_roundTrip(self, case: tuple[str, Config, dict[str, str]]) -> None:
        """
        L{parseConfig} gives back exactly the values of any valid
        configuration rendered as TOML.
        """
        text, expected, table = case
        self.assertEqual(parseConfig(text, SOURCE, FakeResolver(table), BALANCERS), expected)

    def assertOnlyConfigError(self, text: str) -> None:
        """
        L{parseConfig} of C{text} returns a L{Config} or raises L{ConfigError}
        whose problems each print on one line, and nothing else.
        """
        try:
            parseConfig(text, SOURCE, _anyResolver, BALANCERS)
        except ConfigError as e:
            self.assertTrue(e.problems)
            for problem in e.problems:
                self.assertIsInstance(problem, Problem)
                self.assertNotIn("\n", str(problem))
                self.assertNotIn("\r", str(problem))
                self.assertTrue(str(problem).startswith(SOURCE))

    @_settings
    @given(st.text(max_size=200))
    def test_arbitraryText(self, text: str) -> None:
        """
        L{parseConfig} raises nothing but L{ConfigError} for arbitrary text.
        """
        self.assertOnlyConfigError(text)

    @_settings
    @given(_documents)
    def test_arbitraryDocuments(self, data: dict[str, Any]) -> None:
        """
        L{parseConfig} raises nothing but L{ConfigError} for arbitrary TOML
        documents shaped roughly like a configuration.
        """
        text = _tables(data)
        # The document is valid TOML: the checks after parsing are exercised.
        tomllib.loads(text)
        self.assertOnlyConfigError(text)


class OperationsConfigTests(ConfigTestCase):
    """
    The status endpoint, session log and shutdown keys.
    """

    def test_defaults(self) -> None:
        """
        Without them: no status endpoint, no session log (text when turned
        on), and sessions get 30 seconds at shutdown.
        """
        config = parse(minimal())
        self.assertIsNone(config.status)
        self.assertEqual(
            (config.sessionLog, config.logFormat, config.shutdownTimeout), ("off", "text", 30.0)
        )

    def test_status(self) -> None:
        """
        C{[status]} takes C{listen} (one or more server endpoints) and an
        C{admin-token-file}, whose first line is read as the token.
        """
        token = self.mktemp()
        with open(token, "w") as f:
            f.write("s3cret-token-0123456789\n")
        config = parse(
            f'[status]\nlisten = ["tcp:9180:interface=127.0.0.1", "unix:/run/s.sock"]\n'
            f"admin-token-file = {json.dumps(token)}\n\n" + minimal()
        )
        assert config.status is not None
        self.assertEqual(
            config.status.listen, ("tcp:9180:interface=127.0.0.1", "unix:/run/s.sock")
        )
        self.assertEqual(config.status.adminToken, "s3cret-token-0123456789")
        self.assertNotIn("s3cret", repr(config))

    def test_statusLimits(self) -> None:
        """
        C{[status]} takes the site's limits: C{max-connections},
        C{request-timeout} and C{max-body-size}, with defaults of 64, 10 s
        and 1 KiB; bad values are one problem each at their key.
        """
        config = parse('[status]\nlisten = "tcp:9180"\n\n' + minimal())
        assert config.status is not None
        self.assertEqual(
            (config.status.maxConnections, config.status.requestTimeout,
             config.status.maxBodySize),
            (64, 10.0, 1024),
        )
        config = parse(
            '[status]\nlisten = "tcp:9180"\nmax-connections = 8\nrequest-timeout = 2.5\n'
            "max-body-size = 0\n\n" + minimal()
        )
        assert config.status is not None
        self.assertEqual(
            (config.status.maxConnections, config.status.requestTimeout,
             config.status.maxBodySize),
            (8, 2.5, 0),
        )
        self.assertOneProblem(
            '[status]\nlisten = "tcp:9180"\nmax-connections = 0\n' + minimal(),
            3, "status.max-connections", "at least 1",
        )
        self.assertOneProblem(
            '[status]\nlisten = "tcp:9180"\nrequest-timeout = 0\n' + minimal(),
            3, "status.request-timeout", "more than 0",
        )
        self.assertOneProblem(
            '[status]\nlisten = "tcp:9180"\nmax-body-size = "1k"\n' + minimal(),
            3, "status.max-body-size", "integer",
        )

    def test_logging(self) -> None:
        """
        C{session-log}, C{log-format} and C{shutdown-timeout} are read.
        """
        config = parse(
            'session-log = "/var/log/sessions.log"\nlog-format = "json"\n'
            "shutdown-timeout = 5\n" + minimal()
        )
        self.assertEqual(
            (config.sessionLog, config.logFormat, config.shutdownTimeout),
            ("/var/log/sessions.log", "json", 5.0),
        )

    def test_badValues(self) -> None:
        """
        Each bad value is one problem naming its line and key.
        """
        self.assertOneProblem(
            'session-log = "sessions.log"\n' + minimal(), 1, "session-log", "absolute file path"
        )
        self.assertOneProblem('log-format = "xml"\n' + minimal(), 1, "log-format", '"json"')
        self.assertOneProblem(
            "shutdown-timeout = -1\n" + minimal(), 1, "shutdown-timeout", "negative"
        )
        self.assertOneProblem(
            '[status]\nlisten = "tcp:9180"\nbogus = 1\n' + minimal(), 3, "status.bogus",
            "unknown key",
        )
        problems = self.problems("[status]\nadmin = 1\n" + minimal())
        self.assertEqual(
            [(p.line, p.key) for p in problems], [(1, "status.listen"), (2, "status.admin")]
        )

    def test_tokenProblems(self) -> None:
        """
        A missing or too short token file is reported at C{admin-token-file}.
        """
        missing = self.mktemp()
        self.assertOneProblem(
            f'[status]\nlisten = "tcp:9180"\nadmin-token-file = {json.dumps(missing)}\n'
            + minimal(),
            3, "status.admin-token-file", "cannot read",
        )
        short = self.mktemp()
        with open(short, "w") as f:
            f.write("abc\n")
        self.assertOneProblem(
            f'[status]\nlisten = "tcp:9180"\nadmin-token-file = {json.dumps(short)}\n'
            + minimal(),
            3, "status.admin-token-file", "too short",
        )

    def test_statusClashesWithProxy(self) -> None:
        """
        The status endpoint cannot listen where a proxy listens.
        """
        self.assertOneProblem(
            '[status]\nlisten = "tcp:port=10000"\n\n'
            '[[proxy]]\nlisten = "tcp:10000"\n[[proxy.backend]]\nendpoint = "tcp:host=a:port=1"\n',
            2, "status.listen", "already a listen endpoint",
        )


# Where each key is written, in a config that is valid as it is: the table
# path, and whether the key takes a string (else a string is the wrong type).
_NUL_BASE: dict[str, Any] = {
    "session-log": "/var/log/sockproxy/sessions.log",
    "status": {"listen": "tcp:9000"},
    "proxy": [{"listen": ["tcp:8000"], "backend": [{"endpoint": "unix:/run/a.sock"}]}],
}
_STRING_KEYS: list[tuple[tuple[Any, ...], str]] = [
    ((), "session-log"), ((), "log-format"),
    (("status",), "listen"), (("status",), "admin-token-file"),
    (("proxy", 0), "name"), (("proxy", 0), "listen"), (("proxy", 0), "balance"),
    (("proxy", 0), "client-congestion"),
    (("proxy", 0, "backend", 0), "endpoint"), (("proxy", 0, "backend", 0), "host"),
    (("proxy", 0, "backend", 0), "socket"), (("proxy", 0, "backend", 0), "label"),
    (("proxy", 0, "backend", 0), "congestion"),
]
_OTHER_KEYS: list[tuple[tuple[Any, ...], str]] = [
    ((), "debug"), ((), "shutdown-timeout"), ((), "proxy"), ((), "status"),
    (("proxy", 0), "connect-timeout"), (("proxy", 0), "disable-time"),
    (("proxy", 0), "idle-timeout"), (("proxy", 0), "half-closed-timeout"),
    (("proxy", 0), "inspect-delay"), (("proxy", 0), "backend"),
    (("proxy", 0, "backend", 0), "port"), (("proxy", 0, "backend", 0), "weight"),
    (("proxy", 0, "backend", 0), "disable-time"),
    (("proxy", 0, "backend", 0), "connect-timeout"),
    ((), "unknown"), (("proxy", 0), "unknown"), (("proxy", 0, "backend", 0), "unknown"),
]
_oddText = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
_withNul = st.builds(lambda a, b: a + "\0" + b, _oddText, _oddText)


def _nulConfig(path: tuple[Any, ...], key: str, value: str, inArray: bool = False) -> str:
    """
    The TOML of L{_NUL_BASE} with C{key} of the table at C{path} set to
    C{value} (as the one item of an array, if C{inArray}); a backend given a
    C{host} or C{socket} loses its C{endpoint}.
    """
    data = json.loads(json.dumps(_NUL_BASE))
    table = data
    for part in path:
        table = table[part]
    if key in ("host", "socket"):
        del table["endpoint"]
    table[key] = [value] if inArray else value
    return _tables(data)


def _keyText(path: tuple[Any, ...], key: str) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else ("." if i else "") + p
                   for i, p in enumerate(path)) + ("." if path else "") + key


class NulTests(ConfigTestCase):
    """
    A NUL character in a string value is a one-line problem at its key, in
    every key: no file name, host name or endpoint can hold one, and the
    system would refuse it only when it is used (a traceback at start-up).
    """

    def test_pathKeys(self) -> None:
        """
        C{admin-token-file}, C{session-log}, a backend's C{socket} and
        C{host} with a NUL are each reported at their line and key.
        """
        self.assertOneProblem(
            '[status]\nlisten = "tcp:1"\nadmin-token-file = "/etc/token\\u0000x"\n'
            + minimal(), 3, "status.admin-token-file",
            "must not contain a NUL character (\\x00): '/etc/token\\x00x'",
        )
        problem = self.assertOneProblem(
            'session-log = "/var/log/s\\u0000"\n' + minimal(), 1, "session-log",
            "must not contain a NUL character",
        )
        self.assertEqual(
            str(problem),
            "test.toml:1: session-log: must not contain a NUL character (\\x00): "
            "'/var/log/s\\x00'",
        )
        self.assertOneProblem(minimal('socket = "/run/a\\u0000.sock"'), 4,
                              "proxy[0].backend[0].socket", "must not contain a NUL")
        self.assertOneProblem(minimal('host = "/run/a\\u0000.sock"'), 4,
                              "proxy[0].backend[0].host", "must not contain a NUL")

    def test_listenItem(self) -> None:
        """
        A listen endpoint with a NUL, alone or in an array, is reported at
        the proxy's C{listen}.
        """
        text = _nulConfig(("proxy", 0), "listen", "unix:/run/p\0.sock", inArray=True)
        self.assertOneProblem(text, 4, "proxy[0].listen", "must not contain a NUL")

    def test_readToken(self) -> None:
        """
        L{readToken} reports a path with a NUL as a file it cannot read.
        """
        token, error = readToken("/etc/token\0")
        self.assertEqual(token, "")
        self.assertIn("cannot read '/etc/token\\x00'", error)

    @_settings
    @given(st.sampled_from(_STRING_KEYS), _withNul, st.booleans())
    def test_nulInStringKeys(
        self, where: tuple[tuple[Any, ...], str], value: str, inArray: bool
    ) -> None:
        """
        A string value with a NUL character in any key that takes a string
        is a problem at that key saying so, on one line.
        """
        path, key = where
        inArray = inArray and key == "listen"
        text = _nulConfig(path, key, value, inArray)
        with self.assertRaises(ConfigError) as caught:
            parseConfig(text, SOURCE, resolve=FakeResolver(), balancers=BALANCERS)
        problems = caught.exception.problems
        self.assertIn(
            (_keyText(path, key), True),
            [(p.key, p.message.startswith("must not contain a NUL character")) for p in problems],
        )
        for problem in problems:
            self.assertTrue(str(problem).isprintable(), str(problem))

    @_settings
    @given(st.sampled_from(_STRING_KEYS + _OTHER_KEYS), _withNul)
    def test_nulInAnyKey(self, where: tuple[tuple[Any, ...], str], value: str) -> None:
        """
        A string value with a NUL character in any key, one that takes a
        string or not, known or not, gives a L{ConfigError} and nothing else.
        """
        path, key = where
        text = _nulConfig(path, key, value)
        with self.assertRaises(ConfigError) as caught:
            parseConfig(text, SOURCE, resolve=FakeResolver(), balancers=BALANCERS)
        for problem in caught.exception.problems:
            self.assertTrue(str(problem).isprintable(), str(problem))

    @_settings
    @given(st.sampled_from(_STRING_KEYS + _OTHER_KEYS), _oddText)
    def test_oddTextInAnyKey(self, where: tuple[tuple[Any, ...], str], value: str) -> None:
        """
        Any string (control characters, newlines, any script) in any key
        gives a config or a L{ConfigError} of one-line problems, never
        another exception.
        """
        path, key = where
        text = _nulConfig(path, key, value)
        try:
            parseConfig(text, SOURCE, resolve=FakeResolver(), balancers=BALANCERS)
        except ConfigError as e:
            for problem in e.problems:
                self.assertTrue(str(problem).isprintable(), str(problem))


class WorkersConfigTests(ConfigTestCase):
    """
    The top-level C{workers} key.
    """

    def test_default(self) -> None:
        """
        Without C{workers}, the process serves its listeners itself (1), and
        neither C{--check} nor C{--print-toml} mention the key.
        """
        from txsockproxy.render import renderToml

        config = parse(minimal())
        self.assertEqual(config.workers, 1)
        self.assertNotIn("workers", describeConfig(config))
        self.assertNotIn("workers", renderToml(config))

    def test_countAndAuto(self) -> None:
        """
        C{workers} is a count or C{"auto"}; C{--check} and C{--print-toml}
        show it, and the TOML they print reads back the same.
        """
        from txsockproxy.render import renderToml

        for value, expected in (("2", 2), ('"auto"', "auto")):
            config = parse(f"workers = {value}\n" + minimal())
            self.assertEqual(config.workers, expected)
            self.assertIn(f"workers = {expected}", describeConfig(config))
            self.assertIn(f"workers = {value}", renderToml(config))
            self.assertEqual(parseConfig(renderToml(config), SOURCE), config)

    def test_bad(self) -> None:
        """
        C{workers = 0}, a word other than C{"auto"}, a float or a boolean is
        one problem naming the line and the key.
        """
        for value in ("0", '"lots"', "1.5", "true", "-2", "100000"):
            self.assertOneProblem(f"workers = {value}\n" + minimal(), 1, "workers",
                                  'integer 1 to 256 or "auto"')


class TakeoverSocketConfigTests(ConfigTestCase):
    """
    The top-level C{takeover-socket} key.
    """

    def test_default(self) -> None:
        """
        Without C{takeover-socket}, no process can take over (C{""}), and
        neither C{--check} nor C{--print-toml} mention it.
        """
        from txsockproxy.render import renderToml

        config = parse(minimal())
        self.assertEqual(config.takeoverSocket, "")
        self.assertNotIn("takeover", describeConfig(config))
        self.assertNotIn("takeover", renderToml(config))

    def test_path(self) -> None:
        """
        C{takeover-socket} is an absolute path; C{--check} and
        C{--print-toml} show it, and the TOML printed reads back the same.
        """
        from txsockproxy.render import renderToml

        config = parse('takeover-socket = "/run/sockproxy/takeover.sock"\n' + minimal())
        self.assertEqual(config.takeoverSocket, "/run/sockproxy/takeover.sock")
        self.assertIn("takeover-socket = /run/sockproxy/takeover.sock", describeConfig(config))
        self.assertEqual(parseConfig(renderToml(config), SOURCE), config)

    def test_bad(self) -> None:
        """
        A relative path, an empty string or a number is one problem naming
        the line and the key.
        """
        for value, message in (('"takeover.sock"', "absolute path"), ('""', "empty"),
                               ("3", "string")):
            self.assertOneProblem(f"takeover-socket = {value}\n" + minimal(), 1,
                                  "takeover-socket", message)

    def test_tooLong(self) -> None:
        """
        A path longer than a unix socket address holds (107 bytes) is one
        problem naming the line and the key, not a traceback when the
        process listens on it; 107 bytes is accepted.
        """
        longest = "/" + "x" * 106
        self.assertEqual(parse(f'takeover-socket = "{longest}"\n' + minimal()).takeoverSocket,
                         longest)
        self.assertOneProblem(f'takeover-socket = "{longest}x"\n' + minimal(), 1,
                              "takeover-socket", "108 bytes long: a unix socket path has at "
                              "most 107")
