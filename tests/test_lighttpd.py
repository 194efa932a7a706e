"""
Tests for L{txsockproxy.lighttpd}: reading lighttpd's configuration language
and mapping its mod_sockproxy part; and for L{txsockproxy.render}, the TOML
that C{--print-toml} writes.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import replace
from textwrap import dedent
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeResolver, certificate
from tests.tls_support import issue
from txsockproxy import tap
from txsockproxy.config import (
    DEFAULT_SHUTDOWN_TIMEOUT,
    BackendConfig,
    Config,
    ConfigError,
    ProxyConfig,
    StatusConfig,
)
from txsockproxy.endpoints import backendFromHost
from txsockproxy.lighttpd import (
    ShellError,
    looksLikeLighttpd,
    originFields,
    parseLighttpd,
    runShell,
)
from txsockproxy.loading import loadConfig, parseConfig
from txsockproxy.render import describeConfig, renderToml, tomlNumber, tomlString

BALANCERS = frozenset(
    {"fair", "least-connection", "round-robin", "hash", "sticky", "random-two"}
)
SOURCE = "/srv/lt/lighttpd.conf"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def refuseShell(command: str, cwd: str | None) -> str:
    """
    A shell runner for tests that must not run a shell.
    """
    raise AssertionError(f"include_shell {command!r} ran")


def parse(text: str, source: str = SOURCE, **kwargs: Any) -> Config:
    """
    Parse C{text} (dedented) as a lighttpd config named C{source}, with a
    fake resolver, an empty environment, no shell, and a dual-stack system.
    """
    kwargs.setdefault("resolve", FakeResolver())
    kwargs.setdefault("environ", {})
    kwargs.setdefault("shell", refuseShell)
    kwargs.setdefault("dualStack", True)
    kwargs.setdefault("cwd", "/cwd")
    kwargs.setdefault("pid", 4242)
    return parseLighttpd(dedent(text), source, balancers=BALANCERS, **kwargs)


def sockproxy(block: str, socket: str = "127.0.0.1:8080", head: str = "") -> str:
    """
    A config with mod_sockproxy loaded and C{block} inside one
    C{$SERVER["socket"]} block.
    """
    return (
        'server.modules = ( "mod_sockproxy" )\n' + head
        + f'$SERVER["socket"] == "{socket}" {{\n{block}\n}}\n'
    )


ONE_HOST = 'sockproxy.server = ( "" => ( "a" => ( "host" => "127.0.0.1", "port" => 9001 ) ) )'



class LighttpdTestCase(SynchronousTestCase):
    """
    Helpers for checking configs and their problems.
    """

    def problems(self, text: str, **kwargs: Any) -> list[str]:
        """
        The problems parsing C{text} reports, as printed.
        """
        with self.assertRaises(ConfigError) as caught:
            parse(text, **kwargs)
        return [str(p) for p in caught.exception.problems]

    def assertProblem(self, text: str, expected: str, **kwargs: Any) -> None:
        """
        Parsing C{text} reports exactly the problem C{expected}.
        """
        self.assertEqual(self.problems(text, **kwargs), [expected])

    def only(self, config: Config) -> ProxyConfig:
        self.assertEqual(len(config.proxies), 1, config.proxies)
        return config.proxies[0]

    def notice(self, config: Config, text: str) -> str:
        """
        The one notice of C{config} containing C{text}.
        """
        # (The source may be a temporary path holding the test's name.)
        found = [n for n in config.notices if text in n.split(": ", 1)[-1]]
        self.assertEqual(len(found), 1, config.notices)
        return found[0]

    def tempdir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def write(self, directory: str, name: str, text: str) -> str:
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(dedent(text))
        return path


# The fixture of /work/shared/lighttpd.md section 7.1, the config lighttpd
# 1.4.69 was measured with, with its ports and paths as placeholders.
FIXTURE = """\
# lighttpd 1.4.69 (Debian bookworm) mod_sockproxy test fixture -- loopback only
server.modules = ( "mod_sockproxy", "mod_status", "mod_accesslog", "mod_openssl" )
server.document-root = "{dir}/www"
server.errorlog      = "{dir}/error.log"
accesslog.filename   = "{dir}/access.log"
server.pid-file      = "{dir}/lighttpd.pid"
server.bind          = "127.0.0.1"
server.port          = {p[http]}          # plain HTTP: mod_status lives here
status.statistics-url = "/server-statistics"
status.status-url     = "/server-status"
status.config-url     = "/server-config"

# 1. the fixture asked for: two unlabeled TCP backends, round-robin
$SERVER["socket"] == "127.0.0.1:{p[rr]}" {{
  sockproxy.server = ("" => (("host"=>"127.0.0.1","port"=>{p[A]}),("host"=>"127.0.0.1","port"=>{p[B]})))
  sockproxy.balance = "round-robin"
}}

# 2. fair (least-connection), labeled hosts
$SERVER["socket"] == "127.0.0.1:{p[fair]}" {{
  sockproxy.server = ("" => ( "fairA" => ("host"=>"127.0.0.1","port"=>{p[A]}),
                              "fairB" => ("host"=>"127.0.0.1","port"=>{p[B]}) ))
  sockproxy.balance = "fair"
}}

# 3. hash, same IP different ports (1.4.69: port not part of host hash)
$SERVER["socket"] == "127.0.0.1:{p[hash]}" {{
  sockproxy.server = ("" => ( "hashA" => ("host"=>"127.0.0.1","port"=>{p[A]}),
                              "hashB" => ("host"=>"127.0.0.1","port"=>{p[B]}) ))
  sockproxy.balance = "hash"
}}

# 4. sticky (hash of client IP string)
$SERVER["socket"] == "127.0.0.1:{p[sticky]}" {{
  sockproxy.server = ("" => ( "stA" => ("host"=>"127.0.0.1","port"=>{p[A]}),
                              "stB" => ("host"=>"127.0.0.1","port"=>{p[B]}) ))
  sockproxy.balance = "sticky"
}}

# 5. unix-domain-socket backend ("host" starting with "/" == unix socket)
$SERVER["socket"] == "127.0.0.1:{p[unix]}" {{
  sockproxy.server = ("/" => ( "ux" => ("host"=>"{dir}/x.sock") ))
}}

# 6. round-robin with one backend down (nothing listens on {p[down]}), debug 3
$SERVER["socket"] == "127.0.0.1:{p[rrdown]}" {{
  sockproxy.server = ("" => ( "up"   => ("host"=>"127.0.0.1","port"=>{p[A]}),
                              "down" => ("host"=>"127.0.0.1","port"=>{p[down]}) ))
  sockproxy.balance = "round-robin"
  sockproxy.debug = 3
}}

# 7. hash / sticky across *different host IPs* (127.0.0.2 / 127.0.0.3)
$SERVER["socket"] == "127.0.0.1:{p[haship]}" {{
  sockproxy.server = ("" => ( "ip2" => ("host"=>"127.0.0.2","port"=>{p[ip]}),
                              "ip3" => ("host"=>"127.0.0.3","port"=>{p[ip]}) ))
  sockproxy.balance = "hash"
}}
$SERVER["socket"] == "127.0.0.1:{p[stickyip]}" {{
  sockproxy.server = ("" => ( "sip2" => ("host"=>"127.0.0.2","port"=>{p[ip]}),
                              "sip3" => ("host"=>"127.0.0.3","port"=>{p[ip]}) ))
  sockproxy.balance = "sticky"
}}

# 8. explicit tcp-fin-propagate (needed in 1.4.69; forced on since 1.4.74)
$SERVER["socket"] == "127.0.0.1:{p[fin]}" {{
  sockproxy.server = ("" => ( "fin" => ("host"=>"127.0.0.1","port"=>{p[A]},
                                        "tcp-fin-propagate"=>"enable") ))
}}

# 9. short client idle timeouts
$SERVER["socket"] == "127.0.0.1:{p[idle]}" {{
  server.max-read-idle  = 3
  server.max-write-idle = 5
  sockproxy.server = ("" => ( "idle" => ("host"=>"127.0.0.1","port"=>{p[A]}) ))
}}

# 10. all backends down
$SERVER["socket"] == "127.0.0.1:{p[dead]}" {{
  sockproxy.server = ("" => ( "dead1" => ("host"=>"127.0.0.1","port"=>{p[dead1]}),
                              "dead2" => ("host"=>"127.0.0.1","port"=>{p[dead2]}) ))
  sockproxy.debug = 1
}}

# 11. TLS terminated by lighttpd, plaintext to backend
$SERVER["socket"] == "127.0.0.1:{p[tls]}" {{
  ssl.engine  = "enable"
  ssl.pemfile = "{dir}/server.pem"
  sockproxy.server = ("" => ( "tls" => ("host"=>"127.0.0.1","port"=>{p[A]}) ))
}}

# 12. streaming response body w/o BUFMIN (server.stream-response-body = 1)
$SERVER["socket"] == "127.0.0.1:{p[stream]}" {{
  server.stream-response-body = 1
  server.stream-request-body  = 1
  sockproxy.server = ("" => ( "nobufmin" => ("host"=>"127.0.0.1","port"=>{p[A]}) ))
}}
"""

FIXTURE_PORTS = {
    name: 18000 + i for i, name in enumerate(
        ["http", "rr", "fair", "hash", "sticky", "unix", "rrdown", "haship", "stickyip", "fin",
         "idle", "dead", "tls", "stream", "A", "B", "down", "ip", "dead1", "dead2"]
    )
}


def tcp(port: int, host: str = "127.0.0.1") -> str:
    return f"tcp:host={host}:port={port}"


class FixtureTests(LighttpdTestCase):
    """
    The config lighttpd 1.4.69 was measured with (lighttpd.md section 7.1)
    maps to twelve proxies, as the measurements describe them.
    """

    def setUp(self) -> None:
        self.dir = self.tempdir()
        with open(os.path.join(self.dir, "server.pem"), "wb") as f:
            f.write(certificate())
        self.ports = FIXTURE_PORTS
        self.path = self.write(self.dir, "lighttpd.conf",
                               FIXTURE.format(p=self.ports, dir=self.dir))
        self.config = loadConfig(self.path, FakeResolver(), BALANCERS)
        self.proxies = {p.name: p for p in self.config.proxies}

    def proxy(self, port: str) -> ProxyConfig:
        return self.proxies[f"127.0.0.1:{self.ports[port]}"]

    def test_everySocketIsAProxy(self) -> None:
        """
        L{loadConfig} reads a C{.conf} file as lighttpd's syntax, and each
        C{$SERVER["socket"]} block holding C{sockproxy.server} becomes a
        proxy named after its socket, listening there, in config order.
        """
        names = ["rr", "fair", "hash", "sticky", "unix", "rrdown", "haship", "stickyip", "fin",
                 "idle", "dead", "tls", "stream"]
        self.assertEqual([p.name for p in self.config.proxies],
                         [f"127.0.0.1:{self.ports[n]}" for n in names])
        self.assertEqual(self.proxy("rr").listen,
                         (f"tcp:{self.ports['rr']}:interface=127.0.0.1",))
        self.assertEqual(self.config.source, self.path)

    def test_balancers(self) -> None:
        """
        C{sockproxy.balance} names the proxy's balancer; without it the
        balancer is C{fair}, lighttpd's default.
        """
        balances = {name: self.proxy(name).balance for name in
                    ("rr", "fair", "hash", "sticky", "unix", "rrdown", "fin")}
        self.assertEqual(balances, {"rr": "round-robin", "fair": "fair", "hash": "hash",
                                    "sticky": "sticky", "unix": "fair",
                                    "rrdown": "round-robin", "fin": "fair"})

    def test_unlabeledHosts(self) -> None:
        """
        Unlabeled hosts (lighttpd labels them all C{""}) are labeled by their
        address, and a notice says so.
        """
        a, b = self.ports["A"], self.ports["B"]
        self.assertEqual(
            self.proxy("rr").backends,
            (BackendConfig(tcp(a), f"127.0.0.1:{a}",
                           origin=f"host = '127.0.0.1', port = {a}"),
             BackendConfig(tcp(b), f"127.0.0.1:{b}",
                           origin=f"host = '127.0.0.1', port = {b}")),
        )
        self.assertEqual(
            self.notice(self.config, "unlabeled"),
            f"{self.path}:15: sockproxy.server: unlabeled hosts are labeled by their address: "
            f"127.0.0.1:{a}, 127.0.0.1:{b} (lighttpd labels them all \"\")",
        )

    def test_labelsAndUnixHost(self) -> None:
        """
        A host's key in the array is its label; a host starting with C{/}
        is a unix socket, under the extension C{"/"} as under C{""}.
        """
        self.assertEqual([b.label for b in self.proxy("fair").backends], ["fairA", "fairB"])
        self.assertEqual(self.proxy("unix").backends, (
            BackendConfig(f"unix:path={self.dir}/x.sock", "ux",
                          origin=f"host = '{self.dir}/x.sock'"),
        ))
        self.assertEqual(
            [b.endpoint for b in self.proxy("haship").backends],
            [tcp(self.ports["ip"], "127.0.0.2"), tcp(self.ports["ip"], "127.0.0.3")],
        )

    def test_tls(self) -> None:
        """
        C{ssl.engine} with C{ssl.pemfile} on a sockproxy socket terminates
        TLS: the listener is a C{tcp:} endpoint of a proxy whose
        C{tls-certificates} is the pemfile, as certificate and as key.
        """
        proxy = self.proxy("tls")
        pem = f"{self.dir}/server.pem"
        self.assertEqual(proxy.listen, (f"tcp:{self.ports['tls']}:interface=127.0.0.1",))
        assert proxy.tls is not None
        self.assertEqual([(c.cert, c.key, c.names) for c in proxy.tls.certificates],
                         [(pem, pem, ("localhost",))])
        self.assertEqual((proxy.tls.clientCA, proxy.tls.verifyClient, proxy.tls.minVersion),
                         ("", "off", "1.2"))

    def test_debugIsTheHighest(self) -> None:
        """
        C{sockproxy.debug} is per socket in lighttpd; here the highest one
        applies, and a notice says so.
        """
        self.assertEqual(self.config.debug, 3)
        self.assertIn("the highest, 3, applies to all of them",
                      self.notice(self.config, "sockproxy.debug"))

    def test_ignored(self) -> None:
        """
        Directives that do not concern sockproxy are listed in one notice,
        with what to use instead where there is an equivalent; so is the
        HTTP socket of C{server.bind}/C{server.port}.
        """
        self.assertEqual(
            self.notice(self.config, "ignored"),
            f"{self.path}: ignored, not used by sockproxy: server.document-root, "
            "server.errorlog (twistd --logfile), accesslog.filename, server.pid-file "
            "(twistd --pidfile), status.statistics-url (the native [status] listen), "
            "status.status-url (the native [status] listen), status.config-url, "
            "server.max-read-idle (read-timeout), server.max-write-idle (write-timeout), "
            "server.stream-response-body, server.stream-request-body",
        )
        self.assertEqual(
            self.notice(self.config, "HTTP socket"),
            f"{self.path}: lighttpd's HTTP socket(s) without sockproxy.server are not served "
            f"(sockproxy only proxies): 127.0.0.1:{self.ports['http']}",
        )

    def test_printToml(self) -> None:
        """
        The TOML that C{--print-toml} writes for the fixture loads back to
        the same configuration.
        """
        text = renderToml(self.config)
        again = parseConfig(text, "fixture.toml", FakeResolver(), BALANCERS)
        self.assertEqual(replace(again, source=self.path), self.config)


class DetectionTests(SynchronousTestCase):
    """
    L{looksLikeLighttpd} tells lighttpd configs from TOML ones.
    """

    def test_byName(self) -> None:
        """
        A C{.conf} file is lighttpd's, a C{.toml} file TOML, whatever they
        hold.
        """
        self.assertTrue(looksLikeLighttpd("/etc/lighttpd/lighttpd.conf", "debug = 1\n"))
        self.assertTrue(looksLikeLighttpd("X.CONF", ""))
        self.assertFalse(looksLikeLighttpd("sockproxy.toml", 'a = ( "b" => 1 )\n'))

    def test_byContent(self) -> None:
        """
        Another name is lighttpd's when it holds something TOML never does.
        """
        for text in ('sockproxy.server = ( "" => ( ( "host" => "x" ) ) )\n',
                     '$SERVER["socket"] == ":80" { }\n',
                     'include "conf.d/*.conf"\n',
                     'server.modules += ( "mod_sockproxy" )\n',
                     'index-file.names := ( "x" )\n',
                     'server.modules = (\n"mod_sockproxy")\n'):
            self.assertTrue(looksLikeLighttpd("sockproxy.cfg", text), text)
        for text in ('debug = 1\n[[proxy]]\nlisten = ["tcp:80"]\n',
                     'name = "x"\n'):
            self.assertFalse(looksLikeLighttpd("sockproxy.cfg", text), text)

    def test_loadConfigDispatches(self) -> None:
        """
        L{loadConfig} reads a lighttpd config by content when its name says
        nothing, and TOML otherwise.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "proxy.cfg")
        with open(path, "w") as f:
            f.write(sockproxy(ONE_HOST))
        config = loadConfig(path, FakeResolver(), BALANCERS)
        self.assertEqual(config.proxies[0].listen, ("tcp:8080:interface=127.0.0.1",))
        with open(path, "w") as f:
            f.write('[[proxy]]\nlisten = "tcp:1"\n[[proxy.backend]]\nendpoint = "tcp:h:2"\n')
        self.assertEqual(loadConfig(path, FakeResolver(), BALANCERS).proxies[0].listen,
                         ("tcp:1",))


class LanguageTests(LighttpdTestCase):
    """
    lighttpd's configuration language: values, variables, operators and
    blocks are evaluated as lighttpd evaluates them.
    """

    def backend(self, hostOptions: str, head: str = "", **kwargs: Any) -> BackendConfig:
        """
        The one backend of a config whose only host has C{hostOptions}.
        """
        text = sockproxy(f'sockproxy.server = ( "" => ( "a" => ( {hostOptions} ) ) )',
                         head=head)
        return self.only(parse(text, **kwargs)).backends[0]

    def test_commentsAndLayout(self) -> None:
        """
        Comments run to the end of the line; newlines inside parentheses are
        blank space; C{\\r\\n} ends lines; a comma outside parentheses is
        skipped; a statement may follow C{"}"} on its line.
        """
        text = (
            '# comment\r\nserver.modules = ( # a comment inside\r\n  "mod_sockproxy",\r\n)\r\n'
            '$SERVER["socket"] == ":8080" { sockproxy.server = ( "" => (\n'
            '   ( "host" => "127.0.0.1" ,\n "port" => 1, ),,  # trailing commas\n'
            ') ) } var.after = 1,\n'
        )
        config = parse(text)
        self.assertEqual(self.only(config).backends[0].endpoint, tcp(1))
        self.assertEqual(self.only(config).listen, ("tcp:8080",))

    def test_variables(self) -> None:
        """
        C{var.NAME} and a bare C{NAME} (short for C{var.NAME}) are set and
        read back; any directive set earlier can be read; C{var.CWD} and
        C{var.PID} are predefined.
        """
        head = 'var.host = "127.0.0.1"\nport = 90\nserver.port = 8000\n'
        backend = self.backend('"host" => var.host, "port" => var.port + server.port', head)
        self.assertEqual(backend.endpoint, tcp(8090))
        backend = self.backend('"socket" => var.CWD + "/" + var.PID')
        self.assertEqual(backend.endpoint, "unix:path=/cwd/4242")

    def test_environment(self) -> None:
        """
        C{env.NAME} reads the environment as a string; lighttpd reads a
        string of digits where it wants a number.
        """
        backend = self.backend('"host" => env.HOST, "port" => env.PORT',
                               environ={"HOST": "10.0.0.1", "PORT": "5432"})
        self.assertEqual(backend.endpoint, tcp(5432, "10.0.0.1"))

    def test_concatenation(self) -> None:
        """
        C{+} joins strings (an integer becomes its digits), adds integers
        and appends arrays.
        """
        head = ('var.a = "127.0." + 0 + ".1"\nvar.n = 1 + 2 + 3\nvar.x = 5 + "0"\n'
                'var.hosts = ( "h1" => ( "host" => var.a, "port" => var.n ) ) + '
                '( "h2" => ( "socket" => "/s" + var.x ) )\n')
        text = sockproxy('sockproxy.server = ( "" => var.hosts )', head=head)
        backends = self.only(parse(text)).backends
        self.assertEqual([(b.label, b.endpoint) for b in backends],
                         [("h1", tcp(6)), ("h2", "unix:path=/s50")])

    def test_assignmentOperators(self) -> None:
        """
        C{+=} appends (to the value of an enclosing block, if not set in
        this one), C{:=} replaces, C{=} refuses to set a value twice.
        """
        head = ('var.list = ( "one" => ( "host" => "10.0.0.1" ) )\n'
                'var.list += ( "two" => ( "host" => "10.0.0.2" ) )\n'
                'var.port = 1\nvar.port := 2\n')
        text = sockproxy('var.list += ( "three" => ( "socket" => "/x" ) )\n'
                         'sockproxy.server = ( "" => var.list )', head=head)
        backends = self.only(parse(text)).backends
        self.assertEqual([b.label for b in backends], ["one", "two", "three"])
        self.assertProblem(
            "var.port = 1\nvar.port = 2\n",
            f"{SOURCE}:2: var.port: already set at {SOURCE}:1 (use := to replace a value, "
            "+= to add to it) (column 1)",
        )

    def test_stringEscapes(self) -> None:
        """
        Inside a string, C{\\"} is a quote; every other backslash is itself;
        a string may span lines.
        """
        backend = self.backend('"socket" => "/a\\"b\\\\c\nd"')
        self.assertEqual(originFields(backend.origin), {"socket": '/a"b\\\\c\nd'})

    def test_integers(self) -> None:
        """
        Integers are decimal (a leading zero is no octal), and may be
        written as strings of digits where a number is wanted.
        """
        self.assertEqual(self.backend('"host" => "10.0.0.1", "port" => 010').endpoint,
                         tcp(10, "10.0.0.1"))
        self.assertEqual(self.backend('"host" => "10.0.0.1", "port" => " 22 "').endpoint,
                         tcp(22, "10.0.0.1"))

    def test_enableDisable(self) -> None:
        """
        Booleans are C{"enable"}/C{"disable"} and the other spellings lighttpd
        accepts, in any case, or an integer (0 is false): each is read as the
        value it spells (here C{extforward.hap-PROXY}, which wraps the listen
        endpoint in C{haproxy:} when true).
        """
        plain = "tcp:8080:interface=127.0.0.1"
        spellings = [
            *((f'"{word}"', True) for word in ("enable", "Enable", "true", "TRUE", "on", "1")),
            *((f'"{word}"', False) for word in ("disable", "Disable", "false", "off", "0")),
            ("1", True), ("2", True), ("0", False),
        ]
        for value, expected in spellings:
            config = parse(sockproxy(ONE_HOST + f"\nextforward.hap-PROXY = {value}"))
            listen = self.only(config).listen
            self.assertEqual(listen, (f"haproxy:{plain}",) if expected else (plain,), value)

    def test_enableDisableAccepted(self) -> None:
        """
        A host's C{tcp-fin-propagate} takes every boolean spelling and leaves
        the backend as it is without it (half-close is always forwarded).
        """
        without = self.backend('"host" => "10.0.0.1"')
        for value in ('"enable"', '"Enable"', '"true"', '"on"', '"1"', '"disable"', '"false"',
                      '"off"', '"0"', "1", "0"):
            self.assertEqual(
                self.backend(f'"host" => "10.0.0.1", "tcp-fin-propagate" => {value}'),
                without,
                value,
            )

    def test_globalBlock(self) -> None:
        """
        C{global { ... }} sets global values.
        """
        text = 'global {\n  sockproxy.balance = "hash"\n}\n' + sockproxy(ONE_HOST)
        self.assertEqual(self.only(parse(text)).balance, "hash")

    def test_sameConditionTwice(self) -> None:
        """
        Two blocks with the same condition are one block, as in lighttpd.
        """
        text = sockproxy(ONE_HOST) + '$SERVER["socket"] == "127.0.0.1:8080" {\n' \
            '  sockproxy.balance = "sticky"\n}\n'
        config = parse(text)
        self.assertEqual(self.only(config).balance, "sticky")

    def test_else(self) -> None:
        """
        C{else} may chain conditions (also spelt C{else if}, C{elseif},
        C{elsif}, C{elif}; a leading C{if} is allowed), on the line after
        C{"}"} or the same one; an C{else $SERVER["socket"] == ...} block
        is a socket of its own.
        """
        for word in ("else", "else if", "elseif", "elsif", "elif"):
            text = (
                'server.modules = ( "mod_sockproxy" )\n'
                f'if $SERVER["socket"] == ":1" {{ {ONE_HOST} }}\n'
                '# a comment between\n'
                f'{word} $SERVER["socket"] == ":2" {{ {ONE_HOST} }} else {{ var.x = 1 }}\n'
            )
            config = parse(text)
            self.assertEqual([p.listen for p in config.proxies], [("tcp:1",), ("tcp:2",)],
                             word)

    def test_ifOnlyBeforeCondition(self) -> None:
        """
        C{if} is a keyword only before a condition; elsewhere it is a name.
        """
        config = parse("if = 1\n" + sockproxy(ONE_HOST))
        self.assertEqual(self.only(config).name, "127.0.0.1:8080")

    def test_noBreakSpace(self) -> None:
        """
        A no-break space (U+00A0) is blank space, as lighttpd treats it.
        """
        config = parse(sockproxy(ONE_HOST).replace(" = ", "\u00a0=\u00a0"))
        self.assertEqual(len(config.proxies), 1)


class IncludeTests(LighttpdTestCase):
    """
    C{include} and C{include_shell}.
    """

    def test_relativeToMainFile(self) -> None:
        """
        An included file's relative include is resolved against the main
        file's directory, as lighttpd does (not the including file's).
        """
        d = self.tempdir()
        main = self.write(d, "lighttpd.conf", 'include "conf.d/a.conf"\n')
        self.write(d, "conf.d/a.conf", 'include "conf.d/b.conf"\n')
        self.write(d, "conf.d/conf.d/b.conf", 'var.wrong = 1\n')
        self.write(d, "conf.d/b.conf", sockproxy(ONE_HOST))
        config = loadConfig(main, FakeResolver(), BALANCERS)
        self.assertEqual(self.only(config).name, "127.0.0.1:8080")

    def test_globSortedBraces(self) -> None:
        """
        An include may be a glob (with C{{a,b}} alternatives), read in
        sorted order; a glob matching nothing is no error.
        """
        d = self.tempdir()
        main = self.write(d, "main.conf", 'include "enabled/*.conf"\ninclude "none/*.conf"\n'
                          'include "x/{one,two}.conf"\n' + sockproxy(
                              'sockproxy.server = ( "" => var.hosts )'))
        self.write(d, "enabled/20-b.conf", 'var.hosts += ( "b" => ( "host" => "10.0.0.2" ) )\n')
        self.write(d, "enabled/10-a.conf", 'var.hosts = ( "a" => ( "host" => "10.0.0.1" ) )\n')
        self.write(d, "x/two.conf", 'var.hosts += ( "d" => ( "host" => "10.0.0.4" ) )\n')
        self.write(d, "x/one.conf", 'var.hosts += ( "c" => ( "host" => "10.0.0.3" ) )\n')
        config = loadConfig(main, FakeResolver(), BALANCERS)
        self.assertEqual([b.label for b in self.only(config).backends], ["a", "b", "c", "d"])

    def test_includeInBlock(self) -> None:
        """
        What an included file sets inside a block belongs to that block.
        """
        d = self.tempdir()
        main = self.write(d, "main.conf", sockproxy('include "proxy.inc"'))
        self.write(d, "proxy.inc", ONE_HOST + '\nsockproxy.balance = "round-robin"\n')
        config = loadConfig(main, FakeResolver(), BALANCERS)
        self.assertEqual(self.only(config).balance, "round-robin")

    def test_missing(self) -> None:
        """
        A missing include file is an error at the C{include}.
        """
        d = self.tempdir()
        main = self.write(d, "main.conf", 'var.x = 1\n  include "nothing.conf"\n')
        with self.assertRaises(ConfigError) as caught:
            loadConfig(main, FakeResolver(), BALANCERS)
        self.assertEqual([str(p) for p in caught.exception.problems], [
            f'{main}:2: include: include file not found: "{d}/nothing.conf" (column 3)'])

    def test_errorInIncludedFile(self) -> None:
        """
        An error in an included file names that file, line and column.
        """
        d = self.tempdir()
        main = self.write(d, "main.conf", 'include "a.conf"\n')
        a = self.write(d, "a.conf", '\nvar.x = var.nothing\n')
        with self.assertRaises(ConfigError) as caught:
            loadConfig(main, FakeResolver(), BALANCERS)
        self.assertEqual([str(p) for p in caught.exception.problems], [
            f"{a}:2: var.nothing: unknown variable 'var.nothing': nothing of that name is set "
            "before this line, here or in an enclosing block (column 9)"])

    def test_includesItself(self) -> None:
        """
        A file that includes itself is reported, not followed for ever.
        """
        d = self.tempdir()
        main = self.write(d, "main.conf", 'include "main.conf"\n')
        with self.assertRaises(ConfigError) as caught:
            loadConfig(main, FakeResolver(), BALANCERS)
        self.assertIn("includes nested more than 32 deep (does a file include itself?)",
                      str(caught.exception))

    def test_includeShell(self) -> None:
        """
        C{include_shell} runs the command in the main file's directory and
        reads its output as config text; errors in the output name the
        command.
        """
        calls: list[tuple[str, str | None]] = []

        def shell(command: str, cwd: str | None) -> str:
            calls.append((command, cwd))
            if command == "broken":
                return "var.x = (\n"
            return ONE_HOST + "\n"

        config = parse(sockproxy('include_shell "print-" + "hosts"'), shell=shell)
        self.assertEqual(self.only(config).backends[0].label, "a")
        self.assertEqual(calls, [("print-hosts", "/srv/lt/")])
        self.assertProblem(
            'include_shell "broken"\n',
            "include_shell \"broken\":1: syntax error: '(' is never closed (column 9)",
            shell=shell,
        )

    def test_includeShellFails(self) -> None:
        """
        A failing C{include_shell} command is an error at the directive.
        """

        def shell(command: str, cwd: str | None) -> str:
            raise ShellError("exited with status 3: no such thing")

        self.assertProblem(
            'include_shell "x"\n',
            f'{SOURCE}:1: include_shell: command "x" exited with status 3: no such thing '
            "(column 1)",
            shell=shell,
        )

    def test_runShell(self) -> None:
        """
        L{runShell} runs C{/bin/sh -c} in the given directory and returns
        its output; a non-zero exit is a L{ShellError} quoting stderr.
        """
        d = self.tempdir()
        self.assertEqual(runShell("pwd; echo var.x = 1", d), f"{d}\nvar.x = 1\n")
        with self.assertRaises(ShellError) as caught:
            runShell("echo oops >&2; exit 3", d)
        self.assertEqual(str(caught.exception), "exited with status 3: oops")


class SocketTests(LighttpdTestCase):
    """
    Sockets lighttpd listens on become Twisted server endpoint strings.
    """

    def listen(self, socket: str, head: str = "", **kwargs: Any) -> tuple[str, ...]:
        return self.only(parse(sockproxy(ONE_HOST, socket, head), **kwargs)).listen

    def test_forms(self) -> None:
        """
        C{"ip:port"}, C{":port"}, C{"[ipv6]:port"}, a unix socket path, a
        host name (resolved), and an address without a port (the global
        C{server.port}) each give the matching endpoint.
        """
        resolve = FakeResolver({"proxy.example": "192.0.2.7"})
        self.assertEqual(self.listen("127.0.0.1:8080"), ("tcp:8080:interface=127.0.0.1",))
        self.assertEqual(self.listen(":8080"), ("tcp:8080",))
        self.assertEqual(self.listen("[::1]:8080"), ("tcp6:8080:interface=\\:\\:1",))
        self.assertEqual(self.listen("[::]:8080"), ("tcp6:8080:interface=\\:\\:",))
        self.assertEqual(self.listen("/run/a:b=c.sock"), ("unix:/run/a\\:b\\=c.sock",))
        self.assertEqual(self.listen("proxy.example:1", resolve=resolve),
                         ("tcp:1:interface=192.0.2.7",))
        self.assertEqual(self.listen("10.0.0.1", head="server.port = 81\n"),
                         ("tcp:81:interface=10.0.0.1",))
        self.assertEqual(self.listen("10.0.0.1"), ("tcp:80:interface=10.0.0.1",))

    def test_useIPv6(self) -> None:
        """
        With C{server.use-ipv6} enabled, C{":port"} listens on IPv6 C{::}.
        """
        self.assertEqual(self.listen(":8080", head='server.use-ipv6 = "enable"\n'),
                         ("tcp6:8080:interface=\\:\\:",))

    def test_invalid(self) -> None:
        """
        A socket that is not one is an error at its condition.
        """
        for socket in ("::1:80", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:http", "[::1",
                       ":"):
            self.assertProblem(
                sockproxy(ONE_HOST, socket),
                f'{SOURCE}:2: $SERVER["socket"]: "{socket}": not a socket: give "ip:port", '
                '":port", "[ipv6]:port" or a unix socket path (column 1)',
            )

    def test_unresolvable(self) -> None:
        """
        A socket host name that does not resolve is an error.
        """
        self.assertProblem(
            sockproxy(ONE_HOST, "nowhere.invalid:80"),
            f'{SOURCE}:2: $SERVER["socket"]: "nowhere.invalid:80": cannot resolve '
            "'nowhere.invalid': Name or service not known (column 1)",
        )

    def test_globalServer(self) -> None:
        """
        A global C{sockproxy.server} applies to the C{server.bind}/
        C{server.port} socket (default: every address, port 80) and to every
        C{$SERVER["socket"]} block without one of its own: sockets sharing
        one definition are one proxy, sharing its backends' state.
        """
        config = parse(f"""\
            server.modules = ( "mod_sockproxy" )
            {ONE_HOST}
            $SERVER["socket"] == "127.0.0.1:81" {{ }}
            $SERVER["socket"] == "127.0.0.1:82" {{
              sockproxy.server = ( "" => ( "b" => ( "host" => "10.0.0.2" ) ) )
            }}
            $SERVER["socket"] == "127.0.0.1:83" {{ sockproxy.balance = "sticky" }}
            """)
        self.assertEqual([(p.name, p.listen, p.balance) for p in config.proxies], [
            (":80", ("tcp:80", "tcp:81:interface=127.0.0.1"), "fair"),
            ("127.0.0.1:82", ("tcp:82:interface=127.0.0.1",), "fair"),
            ("127.0.0.1:83", ("tcp:83:interface=127.0.0.1",), "sticky"),
        ])
        self.assertEqual(config.proxies[0].backends, config.proxies[2].backends)

    def test_bindAndPort(self) -> None:
        """
        C{server.bind} may be an address, an IPv6 address with or without
        brackets, or a unix socket path; a block for the same socket
        configures it.
        """
        def listen(head: str) -> tuple[str, ...]:
            return self.only(parse(head + ONE_HOST)).listen

        self.assertEqual(listen('server.bind = "10.0.0.1"\nserver.port = 81\n'),
                         ("tcp:81:interface=10.0.0.1",))
        self.assertEqual(listen('server.bind = "::1"\n'), ("tcp6:80:interface=\\:\\:1",))
        self.assertEqual(listen('server.bind = "[::1]"\n'), ("tcp6:80:interface=\\:\\:1",))
        self.assertEqual(listen('server.bind = "/run/s.sock"\n'), ("unix:/run/s.sock",))
        config = parse('server.bind = "127.0.0.1"\nserver.port = 8080\n'
                       + sockproxy(ONE_HOST + '\nsockproxy.balance = "hash"'))
        self.assertEqual((self.only(config).name, self.only(config).balance),
                         ("127.0.0.1:8080", "hash"))

    def test_sameSocketTwice(self) -> None:
        """
        Two blocks naming one socket differently are an error.
        """
        self.assertProblem(
            sockproxy(ONE_HOST, "127.0.0.1:80")
            + '$SERVER["socket"] == "127.0.0.1:080" { }\n',
            f'{SOURCE}:5: $SERVER["socket"]: "127.0.0.1:080" is the same socket as '
            f'"127.0.0.1:80" ({SOURCE}:2) (column 1)',
        )

    def test_dualStack(self) -> None:
        """
        lighttpd binds C{[::]:P} IPv6-only beside C{0.0.0.0:P}; on a
        dual-stack system the IPv6 listener serves both when they share a
        proxy, and they cannot both listen otherwise.
        """
        text = f'server.modules = ( "mod_sockproxy" )\n{ONE_HOST}\n' \
            '$SERVER["socket"] == "[::]:80" { }\n'
        config = parse(text)
        self.assertEqual(self.only(config).listen, ("tcp6:80:interface=\\:\\:",))
        self.notice(config, '":80" is served by the IPv6 listener of "[::]:80"')
        config = parse(text, dualStack=False)
        self.assertEqual(self.only(config).listen, ("tcp:80", "tcp6:80:interface=\\:\\:"))
        self.assertProblem(
            text.replace("{ }", '{ sockproxy.balance = "hash" }'),
            f"{SOURCE}:3: $SERVER[\"socket\"]: \":80\" and \"[::]:80\" cannot both listen: "
            "Twisted's IPv6 listener on :: takes IPv4 connections too on this system "
            "(net.ipv6.bindv6only = 0), and the two are configured differently: configure "
            "them alike, or drop one (column 1)",
        )

    def test_tls(self) -> None:
        """
        C{ssl.pemfile} may be inherited from the global scope; C{ssl.privkey}
        names a separate key; C{ssl.dh-file} is not used, and said so.
        """
        d = self.tempdir()
        pem = os.path.join(d, "server.pem")
        with open(pem, "wb") as f:
            f.write(certificate())
        cert, key = issue(("proxy.example",)).write(d, "proxy")
        head = f'ssl.pemfile = "{pem}"\n'
        config = parse(sockproxy(ONE_HOST + '\nssl.engine = "enable"', ":443", head))
        proxy = self.only(config)
        self.assertEqual(proxy.listen, ("tcp:443",))
        assert proxy.tls is not None
        self.assertEqual([(c.cert, c.key) for c in proxy.tls.certificates], [(pem, pem)])
        config = parse(sockproxy(ONE_HOST + f'\nssl.engine = "enable"\nssl.privkey = "{key}"'
                                 f'\nssl.pemfile = "{cert}"\nssl.dh-file = "/x/dh.pem"',
                                 "[::1]:443"))
        proxy = self.only(config)
        self.assertEqual(proxy.listen, ("tcp6:443:interface=\\:\\:1",))
        assert proxy.tls is not None
        self.assertEqual([(c.cert, c.key, c.names) for c in proxy.tls.certificates],
                         [(cert, key, ("proxy.example",))])
        self.assertIn(f"{SOURCE}:7: ssl.dh-file: not used: sockproxy's TLS uses ECDHE key "
                      "exchange, not DHE", config.notices)

    def writeCA(self) -> tuple[str, str, str]:
        """
        A pemfile and a client CA file in a new directory.

        @return: the pemfile, the CA file and another CA file.
        """
        d = self.tempdir()
        pem = os.path.join(d, "server.pem")
        with open(pem, "wb") as f:
            f.write(certificate())
        ca, _ = issue(("Clients CA",), authority=True).write(d, "ca")
        other, _ = issue(("Other CA",), authority=True).write(d, "other")
        return pem, ca, other

    def verifying(self, pem: str, lines: str) -> str:
        """
        A config of one TLS socket with C{pem} and the directives C{lines}.
        """
        return sockproxy(ONE_HOST + f'\nssl.engine = "enable"\nssl.pemfile = "{pem}"\n'
                         + lines)

    def test_clientVerification(self) -> None:
        """
        C{ssl.verifyclient.activate} with C{ssl.ca-file} requires a client
        certificate that chains to the CA file's authorities, as lighttpd's
        default C{ssl.verifyclient.enforce} does.
        """
        pem, ca, _ = self.writeCA()
        config = parse(self.verifying(pem, f'ssl.ca-file = "{ca}"\n'
                                           'ssl.verifyclient.activate = "enable"'))
        tls = self.only(config).tls
        assert tls is not None
        with open(ca, "rb") as f:
            self.assertEqual((tls.clientCA, tls.clientCAPEM, tls.verifyClient),
                             (ca, f.read(), "required"))
        self.assertNotIn("ssl.ca-file", "".join(config.notices))
        config = parse(self.verifying(pem, f'ssl.ca-file = "{ca}"\n'
                                           'ssl.verifyclient.activate = "enable"\n'
                                           'ssl.verifyclient.enforce = "enable"\n'
                                           'ssl.verifyclient.depth = 10'))
        tls = self.only(config).tls
        assert tls is not None
        self.assertEqual(tls.verifyClient, "required")
        self.assertFalse([n for n in config.notices if "ssl.verifyclient" in n], config.notices)

    def test_clientVerificationOptional(self) -> None:
        """
        With C{ssl.verifyclient.enforce} disabled a client certificate is
        optional; a notice says that one that does not verify is refused
        (lighttpd accepts it).
        """
        pem, ca, _ = self.writeCA()
        config = parse(self.verifying(pem, f'ssl.ca-file = "{ca}"\n'
                                           'ssl.verifyclient.activate = "enable"\n'
                                           'ssl.verifyclient.enforce = "disable"'))
        tls = self.only(config).tls
        assert tls is not None
        self.assertEqual(tls.verifyClient, "optional")
        self.assertIn(f"{SOURCE}:8: ssl.verifyclient.enforce: disabled: a client without a "
                      "certificate is accepted, but one whose certificate does not verify is "
                      "refused (lighttpd accepts it, and tells only HTTP backends, which a "
                      "socket proxy has not)", config.notices)

    def test_clientVerificationCAFile(self) -> None:
        """
        C{ssl.verifyclient.ca-file} names the authorities before
        C{ssl.ca-file}; without C{ssl.verifyclient.activate} neither is
        used, and C{ssl.ca-file} is listed as ignored.
        """
        pem, ca, other = self.writeCA()
        config = parse(self.verifying(pem, f'ssl.ca-file = "{other}"\n'
                                           f'ssl.verifyclient.ca-file = "{ca}"\n'
                                           'ssl.verifyclient.activate = "enable"'))
        tls = self.only(config).tls
        assert tls is not None
        self.assertEqual(tls.clientCA, ca)
        config = parse(self.verifying(pem, f'ssl.ca-file = "{ca}"'))
        tls = self.only(config).tls
        assert tls is not None
        self.assertEqual((tls.clientCA, tls.verifyClient), ("", "off"))
        self.assertIn(f"{SOURCE}: ignored, not used by sockproxy: ssl.ca-file", config.notices)

    def test_clientVerificationErrors(self) -> None:
        """
        Client verification without a CA file, with one that holds no
        certificate, with revocation lists, issuer names or a depth below
        lighttpd's default is a one-line error at the directive.
        """
        pem, ca, _ = self.writeCA()
        activate = 'ssl.verifyclient.activate = "enable"'
        self.assertProblem(
            self.verifying(pem, activate),
            f"{SOURCE}:6: ssl.verifyclient.activate: needs ssl.ca-file (or "
            "ssl.verifyclient.ca-file): the authorities clients' certificates must chain to "
            "(column 1)",
        )
        self.assertProblem(
            self.verifying(pem, f'ssl.ca-file = "{pem}.missing"\n' + activate),
            f"{SOURCE}:6: ssl.ca-file: cannot read '{pem}.missing': No such file or "
            "directory (column 1)",
        )
        self.assertProblem(
            self.verifying(pem, f'ssl.verifyclient.ca-file = "{ca}"\n' + activate
                           + '\nssl.verifyclient.ca-crl-file = "/x/crl.pem"'),
            f"{SOURCE}:8: ssl.verifyclient.ca-crl-file: revocation lists are not supported "
            "(revoked certificates would be accepted) (column 1)",
        )
        self.assertProblem(
            self.verifying(pem, f'ssl.ca-file = "{ca}"\n' + activate
                           + '\nssl.ca-dn-file = "/x/dn.pem"'),
            f"{SOURCE}:8: ssl.ca-dn-file: limiting the issuers by name is not supported: put "
            "only the authorities to accept in ssl.ca-file (column 1)",
        )
        self.assertProblem(
            self.verifying(pem, f'ssl.ca-file = "{ca}"\n' + activate
                           + '\nssl.verifyclient.depth = 1'),
            f"{SOURCE}:8: ssl.verifyclient.depth: 1: a limit below 9 (lighttpd's default) is "
            "not supported: sockproxy accepts a client's chain of up to 10 certificates above "
            "its own (column 1)",
        )
        config = parse(self.verifying(pem, f'ssl.ca-file = "{ca}"\n' + activate
                                      + '\nssl.verifyclient.depth = 9'))
        self.assertIn(f"{SOURCE}:8: ssl.verifyclient.depth: 9: sockproxy accepts a client's "
                      "chain of up to 10 certificates above its own, as "
                      "ssl.verifyclient.depth = 10 does", config.notices)

    def test_minProtocol(self) -> None:
        """
        C{ssl.openssl.ssl-conf-cmd}'s C{MinProtocol} C{TLSv1.3} becomes
        C{tls-min-version = "1.3"}; older versions are TLS 1.2, said so;
        other commands are ignored, said so.
        """
        d = self.tempdir()
        pem = os.path.join(d, "server.pem")
        with open(pem, "wb") as f:
            f.write(certificate())
        config = parse(self.verifying(pem, 'ssl.openssl.ssl-conf-cmd = ( "MinProtocol" => '
                                           '"TLSv1.3", "CipherString" => "HIGH" )'))
        tls = self.only(config).tls
        assert tls is not None
        self.assertEqual(tls.minVersion, "1.3")
        self.assertIn(f"{SOURCE}:6: ssl.openssl.ssl-conf-cmd: only MinProtocol is used; "
                      "ignored: CipherString (sockproxy's TLS defaults apply)", config.notices)
        config = parse(self.verifying(pem, 'ssl.openssl.ssl-conf-cmd = ( "MinProtocol" => '
                                           '"TLSv1" )'))
        tls = self.only(config).tls
        assert tls is not None
        self.assertEqual(tls.minVersion, "1.2")
        self.assertIn(f'{SOURCE}:6: ssl.openssl.ssl-conf-cmd: MinProtocol "TLSv1": sockproxy '
                      "accepts TLS 1.2 and 1.3 only", config.notices)

    def test_tlsAndPlainSockets(self) -> None:
        """
        A TLS socket and a plain one with the same C{sockproxy.server} are
        two proxies (TLS termination is a proxy's), said so.
        """
        d = self.tempdir()
        pem = os.path.join(d, "server.pem")
        with open(pem, "wb") as f:
            f.write(certificate())
        text = ('server.modules = ( "mod_sockproxy" )\n' + ONE_HOST + "\n"
                'server.bind = "127.0.0.1"\nserver.port = 8080\n'
                '$SERVER["socket"] == "127.0.0.1:8443" {\n'
                f'ssl.engine = "enable"\nssl.pemfile = "{pem}"\n}}\n')
        config = parse(text)
        self.assertEqual([(p.name, p.listen, p.tls is not None) for p in config.proxies],
                         [("127.0.0.1:8080", ("tcp:8080:interface=127.0.0.1",), False),
                          ("127.0.0.1:8443", ("tcp:8443:interface=127.0.0.1",), True)])
        self.assertIn(f'{SOURCE}:5: sockproxy.server: "127.0.0.1:8443" and "127.0.0.1:8080" '
                      "share it, but only one terminates TLS: they are two proxies, each "
                      "balancing on its own", config.notices)

    def test_tlsPrintedAsToml(self) -> None:
        """
        A TLS socket with client verification prints as the native keys
        (C{--print-toml}), which load back to the same config.
        """
        pem, ca, _ = self.writeCA()
        config = parse(self.verifying(pem, f'ssl.ca-file = "{ca}"\n'
                                           'ssl.verifyclient.activate = "enable"\n'
                                           'ssl.verifyclient.enforce = "disable"'))
        text = renderToml(config)
        self.assertIn(f"tls-certificates = [{{cert = {tomlString(pem)}, key = "
                      f"{tomlString(pem)}}}]\ntls-client-ca = {tomlString(ca)}\n"
                      'tls-verify-client = "optional"\n', text)
        again = parseConfig(text, "printed.toml", FakeResolver(), BALANCERS)
        self.assertEqual(again.proxies, config.proxies)

    def test_tlsErrors(self) -> None:
        """
        TLS without a pemfile, with a missing one, on a unix socket, or with
        a missing key file is an error.
        """
        self.assertProblem(
            sockproxy(ONE_HOST + '\nssl.engine = "enable"'),
            f'{SOURCE}:4: ssl.engine: enabled for "127.0.0.1:8080" but ssl.pemfile is not set '
            "(column 1)",
        )
        self.assertProblem(
            sockproxy(ONE_HOST + '\nssl.engine = "enable"\nssl.pemfile = "/nonexistent.pem"'),
            f"{SOURCE}:5: ssl.pemfile: cannot read '/nonexistent.pem': No such file or "
            "directory (column 1)",
        )
        self.assertProblem(
            sockproxy(ONE_HOST + '\nssl.engine = "enable"\nssl.pemfile = "/x.pem"', "/run/s"),
            f'{SOURCE}:2: $SERVER["socket"]: "/run/s": TLS (ssl.engine) on a unix socket is '
            "not supported (column 1)",
        )
        d = self.tempdir()
        pem = os.path.join(d, "server.pem")
        with open(pem, "wb") as f:
            f.write(certificate())
        self.assertProblem(
            sockproxy(ONE_HOST + f'\nssl.engine = "enable"\nssl.pemfile = "{pem}"\n'
                      f'ssl.privkey = "{pem}.key"'),
            f"{SOURCE}:6: ssl.privkey: cannot read '{pem}.key': No such file or directory "
            "(column 1)",
        )

    def test_proxyProtocol(self) -> None:
        """
        C{extforward.hap-PROXY} on a sockproxy socket reads a PROXY protocol
        header first (Twisted's C{haproxy:} endpoint).
        """
        config = parse(sockproxy(ONE_HOST + '\nextforward.hap-PROXY = "enable"'))
        self.assertEqual(self.only(config).listen, ("haproxy:tcp:8080:interface=127.0.0.1",))
        self.notice(config, "extforward.forwarder is not consulted")


class ServerTests(LighttpdTestCase):
    """
    C{sockproxy.server} hosts become backends.
    """

    def backends(self, hosts: str, **kwargs: Any) -> tuple[BackendConfig, ...]:
        return self.only(parse(sockproxy(f'sockproxy.server = ( "" => ( {hosts} ) )'),
                               **kwargs)).backends

    def test_hostOptions(self) -> None:
        """
        C{disable-time}, C{connect-timeout} and C{weight} are the backend's;
        C{port} defaults to 80; C{socket} is a unix socket; a DNS name is
        resolved now.
        """
        backends = self.backends(
            '"a" => ( "host" => "db.internal", "disable-time" => 5, "connect-timeout" => 2,'
            ' "weight" => 3 ), "b" => ( "socket" => "/run/b.sock" )',
            resolve=FakeResolver({"db.internal": "10.1.1.1"}),
        )
        self.assertEqual(backends, (
            BackendConfig(tcp(80, "10.1.1.1"), "a", weight=3, disableTime=5.0,
                          connectTimeout=2.0, origin="host = 'db.internal', port = 80"),
            BackendConfig("unix:path=/run/b.sock", "b", origin="socket = '/run/b.sock'"),
        ))

    def test_idleTimeout(self) -> None:
        """
        The smallest C{read-timeout}/C{write-timeout} of the hosts is the
        proxy's idle timeout; a notice says so when they differ.
        """
        config = parse(sockproxy('sockproxy.server = ( "" => ( '
                                 '"a" => ( "host" => "10.0.0.1", "read-timeout" => 30 ), '
                                 '"b" => ( "host" => "10.0.0.2", "write-timeout" => 20, '
                                 '"read-timeout" => 0 ) ) )'))
        self.assertEqual(self.only(config).idleTimeout, 20.0)
        self.notice(config, "the smallest set, 20s, is the idle timeout")
        config = parse(sockproxy('sockproxy.server = ( "" => ( '
                                 '"a" => ( "host" => "10.0.0.1", "read-timeout" => 30 ) ) )'))
        self.assertEqual(self.only(config).idleTimeout, 30.0)
        self.assertEqual([n for n in config.notices if "timeout" in n], [])

    def test_tcpFinPropagate(self) -> None:
        """
        C{tcp-fin-propagate} is accepted (half-close is always forwarded)
        and produces no notice.
        """
        config = parse(sockproxy('sockproxy.server = ( "" => ( "a" => ( "host" => "10.0.0.1",'
                                 ' "tcp-fin-propagate" => "enable" ) ) )'))
        self.assertEqual(self.only(config).backends[0].label, "a")
        self.assertEqual([n for n in config.notices if "fin" in n], [])

    def test_labels(self) -> None:
        """
        Unlabeled hosts are labeled by address (C{[v6]:port}, a unix path),
        made unique against written labels (which are unique: keys of one
        array).
        """
        backends = self.backends(
            '( "host" => "::1", "port" => 5 ), ( "host" => "/run/u" ), '
            '"10.0.0.1:80" => ( "host" => "10.0.0.9" ), ( "host" => "10.0.0.1" )'
        )
        self.assertEqual([b.label for b in backends],
                         ["[::1]:5", "/run/u", "10.0.0.1:80", "10.0.0.1:80#2"])

    def test_unixHostWithPort(self) -> None:
        """
        lighttpd ignores C{port} for a unix socket C{host}; so does this,
        with a notice.
        """
        config = parse(sockproxy('sockproxy.server = ( "" => ( "u" => ( "host" => "/run/u",'
                                 ' "port" => 80 ) ) )'))
        self.assertEqual(self.only(config).backends[0].endpoint, "unix:path=/run/u")
        self.notice(config, 'port is ignored: host "/run/u" is a unix socket')

    def test_otherOptions(self) -> None:
        """
        Host options meaningless for a socket proxy, and unknown ones, are
        noticed and ignored, as lighttpd ignores them.
        """
        config = parse(sockproxy('sockproxy.server = ( "" => ( "a" => ( "host" => "10.0.0.1",'
                                 ' "check-local" => "disable", "bogus" => 1 ) ) )'))
        self.assertEqual(
            [n for n in config.notices if 'host "a"' in n], [
                f'{SOURCE}:3: sockproxy.server: host "a": "check-local" is ignored: it concerns '
                "HTTP gateways or spawned backends, not socket proxying",
                f'{SOURCE}:3: sockproxy.server: host "a": unknown option "bogus" is ignored (as '
                "lighttpd ignores it)",
            ])

    def test_secondExtension(self) -> None:
        """
        As in lighttpd, only the first of the extensions C{""} and C{"/"}
        is used.
        """
        config = parse(sockproxy('sockproxy.server = ( "" => ( "a" => ( "host" => "10.0.0.1" ) '
                                 '), "/" => ( "b" => ( "host" => "10.0.0.2" ) ) )'))
        self.assertEqual([b.label for b in self.only(config).backends], ["a"])
        self.notice(config, 'extension "/" is never used')

    def test_balance(self) -> None:
        """
        Every balancer name is accepted (lighttpd's and plugins'); an empty
        one is C{fair}.
        """
        for name in sorted(BALANCERS):
            config = parse(sockproxy(ONE_HOST + f'\nsockproxy.balance = "{name}"'))
            self.assertEqual(self.only(config).balance, name)
        config = parse(sockproxy(ONE_HOST + '\nsockproxy.balance = ""'))
        self.assertEqual(self.only(config).balance, "fair")


class GlobalSettingsTests(LighttpdTestCase):
    """
    Server-wide directives sockproxy maps or notices.
    """

    def test_modules(self) -> None:
        """
        A config without C{"mod_sockproxy"} in C{server.modules} is read,
        with a notice: lighttpd would not proxy.
        """
        config = parse(sockproxy(ONE_HOST).replace('"mod_sockproxy"', '"mod_status"'))
        self.assertEqual(
            self.notice(config, "mod_sockproxy"),
            f'{SOURCE}:1: server.modules: "mod_sockproxy" is not loaded: lighttpd would not '
            "proxy with this config, sockproxy does",
        )
        config = parse(sockproxy(ONE_HOST))
        self.assertEqual([n for n in config.notices if "mod_sockproxy" in n], [])

    def test_gracefulShutdown(self) -> None:
        """
        lighttpd's graceful shutdown timeout (a feature flag, or the older
        directive) is the shutdown timeout.
        """
        flag = ('server.feature-flags += ( "server.graceful-shutdown-timeout" => 5, '
                '"server.h2proto" => "enable" )\n')
        self.assertEqual(parse(sockproxy(ONE_HOST, head=flag)).shutdownTimeout, 5.0)
        older = "server.graceful-shutdown-timeout = 7\n"
        self.assertEqual(parse(sockproxy(ONE_HOST, head=older)).shutdownTimeout, 7.0)
        config = parse(sockproxy(ONE_HOST, head="server.graceful-shutdown-timeout = 0\n"))
        self.assertEqual(config.shutdownTimeout, DEFAULT_SHUTDOWN_TIMEOUT)
        self.notice(config, "0 (wait for ever) is not supported")

    def test_maxWorker(self) -> None:
        """
        More than one lighttpd worker gives as many worker processes, with a
        notice saying so; one, or none, a single process.
        """
        config = parse(sockproxy(ONE_HOST, head="server.max-worker = 4\n"))
        self.assertEqual(config.workers, 4)
        self.notice(config, "4 workers: sockproxy runs 4 worker processes (workers = 4)")
        self.assertEqual(parse(sockproxy(ONE_HOST, head="server.max-worker = 1\n")).workers, 1)
        self.assertEqual(parse(sockproxy(ONE_HOST)).workers, 1)

    def test_debug(self) -> None:
        """
        C{sockproxy.debug} sets the debug level; above 3 it is 3.
        """
        self.assertEqual(parse(sockproxy(ONE_HOST + "\nsockproxy.debug = 2")).debug, 2)
        config = parse(sockproxy(ONE_HOST + "\nsockproxy.debug = 9"))
        self.assertEqual(config.debug, 3)
        self.notice(config, "9 is more than 3: 3 is used")

    def test_otherConditions(self) -> None:
        """
        Conditions sockproxy cannot honour are ignored (with their
        directives listed in the notice) unless they hold sockproxy
        directives.
        """
        config = parse(sockproxy(ONE_HOST) + '$HTTP["remoteip"] == "10.0.0.0/8" {\n'
                       '  url.access-deny = ( "" )\n}\n')
        self.assertIn("url.access-deny", self.notice(config, "ignored"))


class ErrorTests(LighttpdTestCase):
    """
    Every mistake is one line naming file, line, key and column, and
    quoting the token; never a traceback.
    """

    def test_syntax(self) -> None:
        """
        Syntax errors point at the offending token.
        """
        cases = {
            'var.x = ( "a"\n': "1: syntax error: '(' is never closed (column 9)",
            'var.x = ( "a"\nvar.y = 1\n': "2: syntax error: unexpected '=' inside the '(' of "
            "line 1 column 9: use '=>' for \"key\" => value in arrays, or close the '(' first "
            "(column 7)",
            'var.x = "a" )\n': "1: syntax error: ')' without a matching '(' (column 13)",
            '$SERVER["socket"] == ":1" {\nvar.x = 1\n': "1: syntax error: '{' is never closed "
            "(column 27)",
            'var.x = 1\n}\n': "2: syntax error: '}' without a matching '{' (column 1)",
            'var.x = "a" "b"\n': "1: syntax error: two strings in a row: combine strings with "
            "'+', or separate them with ',' or '=>' in arrays (column 13)",
            'var.x "a"\n': "1: syntax error: missing '=' after 'var.x' (column 7)",
            'var.x var.y\n': "1: syntax error: missing '=' or '+' between 'var.x' and 'var.y' "
            "(column 7)",
            'var.x = 1 ; var.y = 2\n': "1: syntax error: unexpected character ';' (column 11)",
            'var.x = "a\n': "1: syntax error: missing closing '\"' of this string (column 9)",
            'var.x = 1\x00\n': "1: syntax error: stray NUL character (column 10)",
            'var.x = ( "a" = "b" )\n': "1: syntax error: unexpected '=' inside the '(' of line "
            "1 column 9: use '=>' for \"key\" => value in arrays, or close the '(' first "
            "(column 15)",
            'var.x : 1\n': "1: syntax error: unexpected ':' (':=' replaces a value) (column 7)",
            'var.x = !1\n': "1: syntax error: unexpected '!' (only '!=' and '!~' compare, in a "
            "condition) (column 9)",
            '$SERVER["socket"] < ":1" { }\n': "1: syntax error: unexpected '<' in a condition "
            "(expected e.g. $SERVER[\"socket\"] == \"...\") (column 19)",
            'var.x = ( , 1 )\n': "1: syntax error: unexpected ',' (expected a value: a string, "
            "a number, an array or a variable) (column 11)",
            'else { }\n': "1: syntax error: 'else' must follow a condition's '}' (column 1)",
            '$SERVER["socket"] == ":1" { } else { } else { }\n':
                "1: syntax error: nothing can follow the catch-all 'else { ... }' (column 40)",
            'var.x = 1 +\n': "1: syntax error: unexpected end of line (expected a value: a "
            "string, a number, an array or a variable) (column 12)",
            'var.x = 0x10\n': "1: syntax error: unexpected end of line (expected '=', ':=' or "
            "'+=' after 'x10') (column 13)",
            '$SERVER["socket"] == ":1" { } var.x\n': "1: syntax error: unexpected end of line "
            "(expected '=', ':=' or '+=' after 'var.x') (column 36)",
            'global { $SERVER["socket"] == ":1" { } }\n': "1: syntax error: a condition cannot "
            "be used inside 'global { ... }' (column 10)",
            '$SERVER["socket"] == ":1" { global { } }\n': "1: syntax error: 'global { ... }' "
            "cannot be used inside a condition (column 29)",
        }
        for text, expected in cases.items():
            with self.subTest(text=text):
                self.assertEqual(self.problems(text), [f"{SOURCE}:{expected}"])

    def test_semantics(self) -> None:
        """
        Unknown variables, wrong types, duplicate keys and bad operands
        are reported at the token.
        """
        cases = {
            "var.x = var.y\n": "1: var.y: unknown variable 'var.y': nothing of that name is "
            "set before this line, here or in an enclosing block (column 9)",
            "var.x = y\n": "1: var.y: unknown variable 'var.y': nothing of that name is set "
            "before this line, here or in an enclosing block (column 9)",
            "var.x = env.NOPE\n": "1: env.NOPE: undefined environment variable 'NOPE' "
            "(column 9)",
            'env.X = "a"\n': "1: env.X: environment variables cannot be set (column 1)",
            'var.x = ( "a" => 1, "a" => 2 )\n': "1: var.x: duplicate array key \"a\": already "
            "in this array at line 1 (column 21)",
            'var.x = ( "a" => 1 ) + ( "a" => 2 )\n': f"1: var.x: duplicate array key \"a\": "
            f"already in the array at {SOURCE}:1 (column 26)",
            'var.x = ( 1 ) + "a"\n': "1: var.x: cannot combine an array with a string (\"a\") "
            "(column 15)",
            "var.x = 99999999999999999999\n": "1: var.x: number too large: "
            "99999999999999999999 (column 9)",
            'include ( "a" )\n': "1: include: needs a string, not an array (column 1)",
            '$SERVER["sock"] == ":1" { }\n': "1: $SERVER[\"sock\"]: unknown condition: $SERVER "
            "has only [\"socket\"] (column 9)",
            '$HTTP["nope"] == "x" { }\n': "1: $HTTP[\"nope\"]: unknown condition field "
            "(column 7)",
            '$SERVER["socket"] == 1 { }\n': "1: $SERVER[\"socket\"]: must be compared with a "
            "string, not an integer (1) (column 22)",
            'var.x = ( ( 1 ) => 2 )\n': "1: var.x: an array key must be a string, not an "
            "array (column 11)",
        }
        for text, expected in cases.items():
            with self.subTest(text=text):
                self.assertEqual(self.problems(text), [f"{SOURCE}:{expected}"])

    def test_sockproxyServer(self) -> None:
        """
        A C{sockproxy.server} of the wrong shape or types is reported, every
        mistake at once.
        """
        def server(value: str) -> list[str]:
            return self.problems(sockproxy(f"sockproxy.server = {value}"))

        prefix = f"{SOURCE}:3: sockproxy.server: "
        self.assertEqual(server('"x"'), [
            prefix + 'must be an array like ( "" => ( "label" => ( "host" => "10.0.0.2", "port" '
            '=> 5432 ) ) ), not a string ("x") (column 1)'])
        self.assertEqual(server("( )"), [
            prefix + 'is empty: write ( "" => ( "label" => ( "host" => "10.0.0.2", "port" => '
            "5432 ) ) ) (column 1)"])
        self.assertEqual(server('( "/x" => ( ( "host" => "a" ) ) )'), [
            prefix + 'extension "/x": must be "" or "/" (mod_sockproxy matches the path "/" '
            "only; lighttpd would never use these hosts) (column 22)"])
        self.assertEqual(server('( ( "host" => "a" ) )'), [
            prefix + 'must be an array like ( "" => ( "label" => ( "host" => "10.0.0.2", "port" '
            '=> 5432 ) ) ): each element is "" => ( hosts ), not an array (column 22)'])
        self.assertEqual(server('( "" => ( ) )'), [prefix + "has no hosts (column 22)"])
        self.assertEqual(server('( "" => ( "h" => "x" ) )'), [
            prefix + 'host "h": must be an array of "option" => value, like ( "host" => '
            '"10.0.0.2", "port" => 5432 ), not a string ("x") (column 30)'])
        self.assertEqual(server('( "" => ( "h" => ( "host" => 5, "port" => "x", "weight" => 0,'
                                ' "disable_time" => 1 ) ) )'), [
            prefix + 'host "h": "disable_time": write "disable-time" (with \'-\', not \'_\') '
            "(column 82)",
            prefix + 'host "h": host: must be a string, not an integer (5) (column 39)',
            prefix + 'host "h": port: must be an integer, not a string ("x") (column 52)',
            prefix + 'host "h": weight: must be at least 1, not 0 (column 67)'])
        self.assertEqual(server('( "" => ( "h" => ( "host" => "a", "port" => 70000 ) ) )'), [
            prefix + 'host "h": port: must be 1 to 65535, not 70000 (column 54)'])
        self.assertEqual(server('( "" => ( "h" => ( "port" => 1 ) ) )'), [
            prefix + "host \"h\": 'port' needs a 'host' (column 39)"])
        self.assertEqual(server('( "" => ( "h" => ( "weight" => 1 ) ) )'), [
            prefix + 'host "h": needs "host" (and "port") or "socket" (column 30)'])
        self.assertEqual(server('( "" => ( "h" => ( "host" => "a", "socket" => "/s" ) ) )'), [
            prefix + "host \"h\": 'socket' cannot be combined with 'host' or 'port' "
            "(column 54)"])
        self.assertEqual(server('( "" => ( "h" => ( "host" => "a.invalid" ) ) )'), [
            prefix + "host \"h\": cannot resolve host 'a.invalid': Name or service not known "
            "(column 39)"])
        self.assertEqual(server('( "" => ( "h" => ( "socket" => "/s", "bin-path" => "/x" ) ) )'),
                         [prefix + 'host "h": bin-path: spawning backends is not supported: '
                          "start the backend yourself and give its host and port, or socket "
                          "(column 57)"])
        self.assertEqual(server('( "" => ( "h" => ( "host" => "a", "connect-timeout" => 0 ) ) )'),
                         [prefix + 'host "h": connect-timeout: 0 (no limit) is not supported: '
                          "give the seconds a connect may take (column 54)"])
        self.assertEqual(
            server('( "" => ( ( "host" => "a", "tcp-fin-propagate" => "maybe" ) ) )'),
            [prefix + 'host: tcp-fin-propagate: must be "enable" or "disable", not a string '
             '("maybe") (column 47)'])
        self.assertEqual(
            server('( "" => ( ( "host" => "10.0.0.1" ), ( "host" => "10.0.0.1" ) ) )'),
            [prefix + f"10.0.0.1:80 is already a host, at {SOURCE}:3: sockproxy needs each "
             'backend once; give it a "weight" instead (column 56)'])

    def test_directiveTypes(self) -> None:
        """
        Directives sockproxy reads must have the right type.
        """
        self.assertEqual(self.problems(sockproxy(ONE_HOST + "\nsockproxy.balance = 5")), [
            f"{SOURCE}:4: sockproxy.balance: must be a string, not an integer (5) (column 1)"])
        self.assertEqual(self.problems(sockproxy(ONE_HOST + '\nsockproxy.debug = "x"')), [
            f'{SOURCE}:4: sockproxy.debug: must be an integer, not a string ("x") (column 1)'])
        self.assertEqual(self.problems(sockproxy(ONE_HOST + '\nsockproxy.balance = "nope"')), [
            f"{SOURCE}:4: sockproxy.balance: unknown balancer 'nope' (available: fair, hash, "
            "least-connection, random-two, round-robin, sticky) (lighttpd would log an error "
            "and use fair) (column 1)"])
        self.assertEqual(self.problems(sockproxy(ONE_HOST, head='server.port = "http"\n')), [
            f'{SOURCE}:2: server.port: must be an integer, not a string ("http") (column 1)'])

    def test_conditionsSockproxyCannotHonour(self) -> None:
        """
        sockproxy directives inside conditions other than a top-level
        C{$SERVER["socket"] == ...} are errors; so is a nested socket block
        a global C{sockproxy.server} would apply to.
        """
        self.assertEqual(self.problems(
            sockproxy(ONE_HOST) + '$HTTP["remoteip"] == "10.0.0.0/8" {\n'
            '  sockproxy.balance = "hash"\n}\n'), [
            f"{SOURCE}:6: sockproxy.balance: inside $HTTP[\"remoteip\"] == \"10.0.0.0/8\": "
            "only sockproxy.server (a socket's own, or ()) can be set per client address: "
            "it becomes the proxy's access rules (column 3)"])
        self.assertEqual(self.problems(
            sockproxy(ONE_HOST + '\n$HTTP["host"] =~ "a\\.test" {\n' + ONE_HOST + "\n}")), [
            f"{SOURCE}:5: sockproxy.server: inside $HTTP[\"host\"] =~ \"a\\.test\": only "
            "$HTTP[\"host\"] == \"name\" and $HTTP[\"host\"] =$ \".domain\", at the top level "
            "or directly inside a $SERVER[\"socket\"] block, become routes by TLS server name "
            "(column 1)"])
        self.assertEqual(self.problems(
            sockproxy(ONE_HOST) + "else {\n" + ONE_HOST + "\n}\n"), [
            f"{SOURCE}:6: sockproxy.server: inside else (of $SERVER[\"socket\"] == "
            "\"127.0.0.1:8080\"): sockproxy honours sockproxy directives only globally and "
            "directly inside $SERVER[\"socket\"] == \"...\" blocks (column 1)"])
        self.assertEqual(self.problems(
            ONE_HOST + '\n$HTTP["host"] == "x" {\n  $SERVER["socket"] == ":81" { }\n}\n'), [
            f"{SOURCE}:3: $SERVER[\"socket\"]: \":81\" inside another condition: lighttpd would "
            "proxy it with the global sockproxy.server; sockproxy needs $SERVER[\"socket\"] "
            "blocks at the top level (column 3)"])

    def test_systemdActivation(self) -> None:
        """
        lighttpd's systemd socket activation is an error: the native config
        has C{systemd:} endpoints for it.
        """
        self.assertEqual(self.problems(
            sockproxy(ONE_HOST, head='server.systemd-socket-activation = "enable"\n')), [
            f"{SOURCE}:2: server.systemd-socket-activation: not supported for lighttpd "
            "configs: use the native config with systemd: listen endpoints (column 1)"])

    def test_nothingToProxy(self) -> None:
        """
        A config without any C{sockproxy.server} is an error.
        """
        self.assertEqual(self.problems('server.document-root = "/var/www"\n'), [
            f"{SOURCE}: sockproxy.server: not set for any socket: nothing to proxy (sockproxy "
            "runs only the mod_sockproxy part of a lighttpd config)"])

    def test_badUtf8(self) -> None:
        """
        A file that is not UTF-8 is reported with its line.
        """
        path = os.path.abspath(self.mktemp()) + ".conf"
        with open(path, "wb") as f:
            f.write(b'var.x = 1\nvar.y = "\xff"\n')
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path, FakeResolver(), BALANCERS)
        self.assertEqual(str(caught.exception), f"{path}:2: not valid UTF-8 (byte 0xff)")

    def test_deepNesting(self) -> None:
        """
        Arrays or blocks nested too deeply are an error, not a crash.
        """
        self.assertEqual(self.problems("var.x = " + "(" * 100 + ")" * 100 + "\n"), [
            f"{SOURCE}:1: nested more than 64 deep (column 73)"])
        text = '$HTTP["host"] == "x" {\n' * 100 + "}\n" * 100
        self.assertEqual(self.problems(text), [
            f"{SOURCE}:65: nested more than 64 deep (column 22)"])

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.sampled_from(
        list('()[]{}$"=<>+:,!~^#\\\n\r\t /.-_1é\u00a0')
        + ["sockproxy.server", "var.x", "include", "else", "$SERVER", '"socket"', "=>",
           '"host"', '"127.0.0.1"', '"port"', "+=", ":=", "global", "if"]),
        max_size=60).map("".join))
    def test_neverATraceback(self, text: str) -> None:
        """
        Whatever the text, parsing either succeeds or raises L{ConfigError}
        whose problems are one line each.
        """
        try:
            parse(text, dualStack=False)
        except ConfigError as e:
            for problem in e.problems:
                self.assertNotIn("\n", str(problem))
                self.assertTrue(str(problem).startswith(SOURCE) or "include" in str(problem))


# ---------------------------------------------------------------------------
# Generated configs: config -> lighttpd text -> parse gives the config.

_LABEL_ALPHABET = st.characters(
    codec="utf-8", exclude_characters="\\:/#\x00", exclude_categories=("Cs",))


@st.composite
def backendModels(draw: Any, index: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["tcp", "tcp-default-port", "unix-host", "socket"]))
    model: dict[str, Any] = {"kind": kind, "index": index}
    if kind.startswith("tcp"):
        model["host"] = f"10.0.{index // 250}.{index % 250 + 1}"
        model["port"] = None if kind == "tcp-default-port" else draw(st.integers(1, 65535))
    else:
        model["path"] = f"/run/backend{index}.sock"
    label = draw(st.one_of(st.none(), st.text(_LABEL_ALPHABET, min_size=1, max_size=12)))
    model["label"] = label
    for option, low, high in (("disable-time", 0, 1000), ("connect-timeout", 1, 1000),
                              ("weight", 1, 100), ("read-timeout", 0, 1000),
                              ("write-timeout", 0, 1000)):
        model[option] = draw(st.one_of(st.none(), st.integers(low, high)))
    model["tcp-fin-propagate"] = draw(st.sampled_from([None, "enable", "disable"]))
    return model


@st.composite
def configModels(draw: Any) -> dict[str, Any]:
    count = draw(st.integers(1, 3))
    # Not 80: lighttpd's own socket (server.port, 80 by default) is ":80",
    # and a $SERVER["socket"] block for it is merged into it (tested apart).
    ports = draw(st.lists(
        st.integers(1, 65535).filter(lambda p: p != 80), min_size=count, max_size=count,
        unique=True,
    ))
    proxies = []
    nextBackend = 0
    for i, port in enumerate(ports):
        form = draw(st.sampled_from(["ip", "any", "ipv6", "unix"]))
        socket = {"ip": f"127.0.0.1:{port}", "any": f":{port}", "ipv6": f"[::1]:{port}",
                  "unix": f"/run/listen{i}.sock"}[form]
        n = draw(st.integers(1, 4))
        backends = [draw(backendModels(nextBackend + j)) for j in range(n)]
        nextBackend += n
        labels = [b["label"] for b in backends if b["label"] is not None]
        if len(set(labels)) != len(labels):
            for j, b in enumerate(backends):
                if b["label"] is not None:
                    b["label"] = f"{b['label']}-{j}"
        proxies.append({
            "socket": socket,
            "balance": draw(st.sampled_from([None, "fair", "least-connection", "round-robin",
                                             "hash", "sticky"])),
            "debug": draw(st.one_of(st.none(), st.integers(0, 3))),
            "extension": draw(st.sampled_from(["", "/"])),
            "backends": backends,
        })
    return {"proxies": proxies, "modules": draw(st.booleans())}


def expectedConfig(model: dict[str, Any], source: str) -> Config:
    """
    The config a model describes, built without the lighttpd reader.
    """
    proxies = []
    for proxy in model["proxies"]:
        backends = []
        timeouts = []
        for b in proxy["backends"]:
            if b["kind"].startswith("tcp"):
                endpoint, origin = backendFromHost(b["host"], b["port"], None, FakeResolver())
                port = b["port"] or 80
                address = f"{b['host']}:{port}"
            elif b["kind"] == "unix-host":
                endpoint, origin = backendFromHost(b["path"], None, None, FakeResolver())
                address = b["path"]
            else:
                endpoint, origin = backendFromHost(None, None, b["path"], FakeResolver())
                address = b["path"]
            backends.append(BackendConfig(
                endpoint=endpoint, label=(b["label"] or "").strip() and b["label"] or address,
                weight=b["weight"] or 1,
                disableTime=float(1 if b["disable-time"] is None else b["disable-time"]),
                connectTimeout=float(b["connect-timeout"] or 8), origin=origin,
            ))
            hostTimeouts = [t for t in (b["read-timeout"], b["write-timeout"]) if t]
            timeouts.append(min(hostTimeouts) if hostTimeouts else 0)
        positive = [t for t in timeouts if t]
        socket = proxy["socket"]
        if socket.startswith("/"):
            listen = f"unix:{socket}"
        elif socket.startswith("["):
            listen = f"tcp6:{socket.rsplit(':', 1)[1]}:interface=\\:\\:1"
        elif socket.startswith(":"):
            listen = f"tcp{socket}"
        else:
            listen = f"tcp:{socket.split(':')[1]}:interface=127.0.0.1"
        proxies.append(ProxyConfig(
            name=socket, listen=(listen,), backends=tuple(backends),
            balance=proxy["balance"] or "fair", idleTimeout=float(min(positive or [0])),
        ))
    debug = max([p["debug"] or 0 for p in model["proxies"]])
    return Config(proxies=tuple(proxies), debug=debug, source=source)


def lighttpdString(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def renderLighttpd(model: dict[str, Any], choose: Callable[[Any], Any]) -> str:
    """
    A model as lighttpd config text, in a layout C{choose} (drawing from
    strategies) varies: blank space, comments, trailing commas, variables,
    concatenation.
    """
    def gap() -> str:
        return str(choose(st.sampled_from([" ", "", "  ", "\t", " # comment\n  ", "\n   "])))

    lines = ["# generated"]
    if model["modules"]:
        lines.append('server.modules = ( "mod_sockproxy" )')
    for i, proxy in enumerate(model["proxies"]):
        hosts = []
        for b in proxy["backends"]:
            options = []
            if b["kind"].startswith("tcp"):
                host = b["host"]
                if choose(st.booleans()):
                    head, tail = host.rsplit(".", 1)
                    rendered = f'"{head}." + {tail}'
                else:
                    rendered = lighttpdString(host)
                options.append(f'"host"{gap()}=>{gap()}{rendered}')
                if b["port"] is not None:
                    if choose(st.booleans()):
                        lines.append(f"var.p{b['index']} = {b['port']}")
                        options.append(f'"port" => var.p{b["index"]}')
                    else:
                        options.append(f'"port" => "{b["port"]}"' if choose(st.booleans())
                                       else f'"port" => {b["port"]}')
            elif b["kind"] == "unix-host":
                options.append(f'"host" => {lighttpdString(b["path"])}')
            else:
                options.append(f'"socket" => {lighttpdString(b["path"])}')
            for option in ("disable-time", "connect-timeout", "weight", "read-timeout",
                           "write-timeout", "tcp-fin-propagate"):
                value = b[option]
                if value is not None:
                    rendered = lighttpdString(value) if isinstance(value, str) else str(value)
                    options.append(f'"{option}" => {rendered}')
            body = f"({gap()}" + f",{gap()}".join(options) + (",)" if choose(st.booleans())
                                                               else f"{gap()})")
            label = b["label"]
            hosts.append(body if label is None else f"{lighttpdString(label)} =>{gap()}{body}")
        server = (f'sockproxy.server = ( {lighttpdString(proxy["extension"])} =>{gap()}( '
                  + f",{gap()}".join(hosts) + " ) )")
        block = [server]
        if proxy["balance"] is not None:
            block.append(f'sockproxy.balance = "{proxy["balance"]}"')
        if proxy["debug"] is not None:
            block.append(f"sockproxy.debug = {proxy['debug']}")
        if choose(st.booleans()):
            block.append(f"server.document-root = {lighttpdString('/var/www/' + str(i))}")
        separator = choose(st.sampled_from(["\n", "\n\n  ", " "]))
        lines.append(f'$SERVER["socket"] == {lighttpdString(proxy["socket"])} {{'
                     + separator + separator.join(block) + "\n}")
    return "\n".join(lines) + "\n"


class RoundTripTests(LighttpdTestCase):
    """
    Configs generated at random survive the trip to lighttpd text and back,
    and to TOML and back.
    """

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(configModels(), st.data())
    def test_lighttpdTextRoundTrip(self, model: dict[str, Any], data: st.DataObject) -> None:
        """
        A config written as lighttpd text parses to that config; and its
        TOML (C{--print-toml}) loads to it again.
        """
        text = renderLighttpd(model, data.draw)
        config = parse(text)
        self.assertEqual(config, expectedConfig(model, SOURCE), text)
        again = parseConfig(renderToml(config), "printed.toml", FakeResolver(), BALANCERS)
        self.assertEqual(replace(again, source=SOURCE), config)


# Directives a string is written in, by template: each is a valid config
# once {v} is replaced by a quoted string that fits.
_STRING_SLOTS = {
    "include_shell": 'include_shell {v}\n' + sockproxy(ONE_HOST),
    "include": 'include {v}\n' + sockproxy(ONE_HOST),
    "var": 'var.x = {v}\n' + sockproxy(ONE_HOST),
    "server.errorlog": 'server.errorlog = {v}\n' + sockproxy(ONE_HOST),
    "server.bind": 'server.modules = ( "mod_sockproxy" )\nserver.bind = {v}\n' + ONE_HOST + "\n",
    "socket": 'server.modules = ( "mod_sockproxy" )\n$SERVER["socket"] == {v} {{\n'
              + ONE_HOST + "\n}}\n",
    "host": sockproxy('sockproxy.server = ( "" => ( "a" => ( "host" => {v} ) ) )'),
    "host socket": sockproxy('sockproxy.server = ( "" => ( "a" => ( "socket" => {v} ) ) )'),
    "label": sockproxy('sockproxy.server = ( "" => ( {v} => ( "host" => "127.0.0.1" ) ) )'),
    "balance": sockproxy(ONE_HOST + "\nsockproxy.balance = {v}"),
    "pemfile": sockproxy(ONE_HOST + '\nssl.engine = "enable"\nssl.pemfile = {v}'),
    "condition": sockproxy(ONE_HOST) + '$HTTP["host"] == {v} {{\n}}\n',
}
# lighttpd's only escape is \": a backslash before the closing quote would
# escape it.
_lighttpdOdd = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters='\\"\0'),
    max_size=30,
)


def _emptyShell(command: str, cwd: str | None) -> str:
    """
    A shell runner whose commands print nothing.
    """
    return ""


def _slot(name: str, value: str) -> str:
    """
    The config of C{_STRING_SLOTS[name]} with C{value} as its string.
    """
    return _STRING_SLOTS[name].replace("{{", "{").replace("}}", "}").replace(
        "{v}", lighttpdString(value))


class NulTests(LighttpdTestCase):
    """
    A NUL character in a string of a lighttpd config is an error at its
    directive, wherever the string is.
    """

    def test_pathDirectives(self) -> None:
        """
        C{include_shell}, C{include}, a unix socket and a backend's socket
        with a NUL are one-line errors naming the directive; no shell runs.
        """
        self.assertProblem(
            'include_shell "echo\0x"\n',
            f"{SOURCE}:1: include_shell: must not contain a NUL character (\\x00): "
            "'echo\\x00x' (column 15)",
        )
        self.assertProblem(
            'include "a\0.conf"\n',
            f"{SOURCE}:1: include: must not contain a NUL character (\\x00): "
            "'a\\x00.conf' (column 9)",
        )
        self.assertProblem(
            _slot("socket", "/run/p\0.sock"),
            f'{SOURCE}:2: $SERVER["socket"]: must not contain a NUL character (\\x00): '
            "'/run/p\\x00.sock' (column 22)",
        )
        [problem] = self.problems(_slot("host socket", "/run/b\0"))
        self.assertIn("sockproxy.server: must not contain a NUL character", problem)

    def test_runShellNul(self) -> None:
        """
        L{runShell} reports a command with a NUL (which no process can be
        given) as a L{ShellError}.
        """
        with self.assertRaises(ShellError) as caught:
            runShell("echo\0", None)
        self.assertEqual(str(caught.exception), "cannot run it: embedded null byte")

    @settings(max_examples=int(os.environ.get("TXSOCKPROXY_EXAMPLES", "60")), deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(sorted(_STRING_SLOTS)), _lighttpdOdd, _lighttpdOdd)
    def test_nulAnywhere(self, name: str, before: str, after: str) -> None:
        """
        A string with a NUL character in any of the directives that take
        one is a L{ConfigError}, saying so, on one line.
        """
        problems = self.problems(_slot(name, before + "\0" + after), shell=_emptyShell)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("must not contain a NUL character", problems[0])
        self.assertTrue(problems[0].isprintable(), problems[0])

    @settings(max_examples=int(os.environ.get("TXSOCKPROXY_EXAMPLES", "60")), deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(sorted(_STRING_SLOTS)), _lighttpdOdd)
    def test_oddTextAnywhere(self, name: str, value: str) -> None:
        """
        Any string (control characters, newlines, any script) in those
        directives gives a config or a L{ConfigError} of one-line problems,
        never another exception.
        """
        try:
            parse(_slot(name, value), shell=_emptyShell)
        except ConfigError as e:
            for problem in e.problems:
                self.assertTrue(str(problem).isprintable(), str(problem))


class RenderTests(SynchronousTestCase):
    """
    L{renderToml} writes any config as TOML that loads back to it.
    """

    def test_everyKey(self) -> None:
        """
        Status (its admin token file and its limits), session log, log
        format, shutdown timeout, idle, half-closed
        and inspect timeouts, weights, per-backend timeouts and congestion
        control settings all survive.
        """
        token = os.path.abspath(self.mktemp())
        with open(token, "w") as f:
            f.write("a-token-of-more-than-16-characters\n")
        config = Config(
            proxies=(ProxyConfig(
                name='a "quoted"\tname', listen=("tcp:1", "unix:/run/x\\:y"),
                backends=(BackendConfig("tcp:host=10.0.0.1:port=2", "one", weight=3,
                                        disableTime=0.5, connectTimeout=2.0,
                                        congestion="system"),
                          BackendConfig("unix:path=/run/é", "two\u007f")),
                balance="round-robin", idleTimeout=30.0, halfClosedTimeout=1.25,
                inspectDelay=0.1, clientCongestion="system"),),
            debug=2, source="x", status=StatusConfig(("tcp:9180",), token,
                                                     "a-token-of-more-than-16-characters",
                                                     maxConnections=5, requestTimeout=2.5,
                                                     maxBodySize=0),
            sessionLog="/var/log/sessions.log", logFormat="json", shutdownTimeout=5.0,
        )
        text = renderToml(config)
        self.assertEqual(parseConfig(text, "x", FakeResolver(), BALANCERS), config)

    def test_defaultsOmitted(self) -> None:
        """
        Keys at their default are not written.
        """
        config = Config(proxies=(ProxyConfig("p", ("tcp:1",), (BackendConfig("tcp:h:2", "b"),)),),
                        source="s")
        self.assertEqual(renderToml(config), dedent("""\
            # txsockproxy configuration, from s

            [[proxy]]
            name = "p"
            listen = ["tcp:1"]

            [[proxy.backend]]
            label = "b"
            endpoint = "tcp:h:2"
            """))

    def test_describeStatus(self) -> None:
        """
        L{describeConfig} (what C{--check} prints) shows the status site's
        endpoints, its admin token file and its limits.
        """
        config = Config(
            proxies=(ProxyConfig("p", ("tcp:1",), (BackendConfig("tcp:h:2", "b"),)),),
            source="s",
            status=StatusConfig(("tcp:9180",), maxConnections=5, requestTimeout=2.5,
                                maxBodySize=0),
        )
        self.assertIn(dedent("""\
            status
              listen              tcp:9180
              admin-token-file    (none: admin actions refused)
              max-connections     5
              request-timeout     2.5s
              max-body-size       0
            """), describeConfig(config))

    def test_tomlString(self) -> None:
        """
        L{tomlString} escapes quotes, backslashes and control characters.
        """
        self.assertEqual(tomlString('a"b\\c\n\x01\x7fé'), '"a\\"b\\\\c\\n\\u0001\\u007Fé"')

    def test_tomlNumber(self) -> None:
        """
        Whole numbers are written as integers, others as floats that read
        back the same.
        """
        self.assertEqual([tomlNumber(v) for v in (8.0, 0.5, 1e-05, 1e300)],
                         ["8", "0.5", "1e-05", "1e+300"])


class CommandLineTests(LighttpdTestCase):
    """
    C{--check} and C{--print-toml} on a lighttpd config, and notices at
    start-up.
    """

    def runOptions(self, args: list[str]) -> tuple[str, str]:
        options = tap.Options()
        options.stdout = io.StringIO()
        options.stderr = io.StringIO()
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(args)
        self.assertEqual(caught.exception.code, 0)
        return options.stdout.getvalue(), options.stderr.getvalue()

    def configFile(self) -> str:
        return self.write(self.tempdir(), "lighttpd.conf", sockproxy(
            'sockproxy.server = ( "" => ( ( "host" => "127.0.0.1", "port" => 9 ) ) )'))

    def test_check(self) -> None:
        """
        C{--check} prints the effective config, and the notices on stderr.
        """
        path = self.configFile()
        out, err = self.runOptions(["--config", path, "--check"])
        self.assertIn("backend '127.0.0.1:9': tcp:host=127.0.0.1:port=9", out)
        self.assertEqual(err, f"sockproxy: notice: {path}:3: sockproxy.server: unlabeled hosts "
                         "are labeled by their address: 127.0.0.1:9 (lighttpd labels them all "
                         '"")\n'
                         f"sockproxy: notice: {path}: lighttpd's HTTP socket(s) without "
                         "sockproxy.server are not served (sockproxy only proxies): :80\n")

    def test_printToml(self) -> None:
        """
        C{--print-toml} prints TOML that loads to the same config.
        """
        path = self.configFile()
        out, err = self.runOptions(["--config", path, "--print-toml"])
        self.assertIn("unlabeled", err)
        self.assertEqual(replace(parseConfig(out, "x.toml"), source=path), loadConfig(path))

    def test_noticesLogged(self) -> None:
        """
        C{makeService} logs every notice as a warning.
        """
        options = tap.Options()
        options.parseOptions(["--config", self.configFile()])
        events: list[dict[str, Any]] = []
        self.patch(tap, "_log", Logger(observer=events.append))
        from twisted.internet.testing import MemoryReactorClock

        tap.makeService(options, MemoryReactorClock())
        self.assertEqual([e["notice"] for e in events], list(options["configObject"].notices))
        self.assertEqual({e["log_level"].name for e in events}, {"warn"})


class DocumentationTests(LighttpdTestCase):
    """
    The lighttpd examples of doc/lighttpd-config.md and examples/lighttpd/
    load, and the errors the doc quotes are the errors given.
    """

    def test_docExamples(self) -> None:
        """
        Every C{```lighttpd} block of doc/lighttpd-config.md loads; every
        C{```lighttpd error} block is refused with exactly the message of
        the C{```text} block after it (as if the file were
        /etc/lighttpd/lighttpd.conf).
        """
        with open(os.path.join(REPO, "doc", "lighttpd-config.md"), encoding="utf-8") as f:
            doc = f.read()
        d = self.tempdir()
        pem = os.path.join(d, "server.pem")
        with open(pem, "wb") as f:
            f.write(certificate())
        source = os.path.join(d, "lighttpd.conf")
        blocks = re.findall(r"```lighttpd( error)?\n(.*?)```(?:\n\n```text\n(.*?)```)?", doc,
                            re.DOTALL)
        self.assertEqual(len(blocks), 9)
        for error, block, expected in blocks:
            block = block.replace("/etc/lighttpd/server.pem", pem)
            with self.subTest(block=block):
                if not error:
                    config = parse(block, source, environ={"BACKEND_HOST": "10.0.0.5"})
                    self.assertTrue(config.proxies)
                    continue
                with self.assertRaises(ConfigError) as caught:
                    parse(block, source)
                shown = str(caught.exception).replace(d, "/etc/lighttpd")
                self.assertEqual(shown, expected.strip())

    def test_examples(self) -> None:
        """
        Every config in examples/lighttpd/ loads, with nothing to notice
        but lighttpd's HTTP socket and its document root.
        """
        directory = os.path.join(REPO, "examples", "lighttpd")
        names = sorted(n for n in os.listdir(directory) if n.endswith(".conf"))
        self.assertEqual(names, ["lighttpd.conf"])
        path = os.path.join(directory, "lighttpd.conf")
        config = loadConfig(path, FakeResolver(), BALANCERS)
        self.assertEqual([(p.name, p.balance, p.idleTimeout, [b.label for b in p.backends])
                          for p in config.proxies],
                         [("127.0.0.1:8080", "round-robin", 300.0, ["one", "two"])])
        self.assertEqual(config.notices, (
            f"{path}: lighttpd's HTTP socket(s) without sockproxy.server are not served "
            "(sockproxy only proxies): 127.0.0.1:8090",
            f"{path}: ignored, not used by sockproxy: server.document-root",
        ))
