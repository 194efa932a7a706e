"""
Tests for the user documentation: the TOML examples in README.md and doc/*.md
are valid configurations, the files under examples/ load, the example
balancer plugin works, and the documents' links lead somewhere.

A TOML block may be preceded by an HTML comment saying what it is:

  - C{<!-- fragment -->}: valid TOML, but not a whole configuration;
  - C{<!-- invalid -->}: a configuration that must be refused;
  - C{<!-- needs-files -->}: names files that exist only on a deployed
    machine (TLS keys, an admin token); it must load, or fail only because
    those files are missing.

A Python block preceded by C{<!-- file: PATH -->} must be the file at PATH.

Nothing here uses the network: host names in examples resolve through a
fake resolver, and C{systemd:} endpoints see a fake socket activation.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

from twisted.application.service import IServiceCollection
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.plugin import IPlugin
from twisted.python.systemd import ListenFDs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.fakes import BackendInfo
from txsockproxy.balancers import balancerNames
from txsockproxy.config import Config, ConfigError
from txsockproxy.interfaces import IBalancer, IBalancerFactory
from txsockproxy.loading import loadConfig, parseConfig
from txsockproxy.relay import ConnectionInfo
from txsockproxy.service import ProxyService

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "doc").glob("*.md"))]
EXAMPLES = REPO / "examples"
PLUGIN_DIR = EXAMPLES / "balancer-plugin"
PLUGIN_FILE = PLUGIN_DIR / "twisted" / "plugins" / "failover_balancer_plugin.py"

MARKERS = ("fragment", "invalid", "needs-files")
# Blocks that are not checked as configurations at all: keep them few.
MAX_FRAGMENTS = 3

# What every example host name resolves to (TEST-NET-1).
EXAMPLE_ADDRESS = "192.0.2.10"


def fakeResolve(host: str) -> str:
    """
    Resolve C{host} without DNS: an address stands for itself, any name
    gives L{EXAMPLE_ADDRESS}.
    """
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return EXAMPLE_ADDRESS


def knownBalancers() -> frozenset[str]:
    """
    The installed balancers, and the example plugin's, which the documents
    use without it being installed.
    """
    return frozenset(balancerNames()) | {"failover"}


@dataclass(frozen=True)
class Block:
    """
    One fenced code block of a document.

    @ivar marker: the HTML comment just before it, without C{<!-- -->}.
    """

    path: Path
    line: int
    language: str
    marker: Optional[str]
    text: str

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


_FENCE = re.compile(r"^```(\S*)\s*$")
_COMMENT = re.compile(r"^<!--\s*(.*?)\s*-->$")


def codeBlocks(path: Path) -> list[Block]:
    """
    The fenced code blocks of the Markdown file at C{path}.
    """
    blocks = []
    lines = path.read_text(encoding="utf-8").split("\n")
    i = 0
    previous = ""
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        comment = _COMMENT.match(previous)
        marker = comment.group(1) if comment else None
        blocks.append(Block(path, start + 1, m.group(1), marker, "\n".join(body) + "\n"))
        previous = ""
        i += 1
    return blocks


def tomlBlocks() -> list[Block]:
    """
    Every TOML block of README.md and doc/*.md.
    """
    return [b for path in DOCUMENTS for b in codeBlocks(path) if b.language == "toml"]


class _FakeSocketActivation:
    """
    Mixin: endpoint strings C{systemd:domain=...:index=0} and C{...:name=pg}
    parse as they would under systemd socket activation.
    """

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.patch(  # type: ignore[attr-defined]
            endpoints._SystemdParser, "_sddaemon", ListenFDs([3], ("pg",))
        )

    def parse(self, block: Block) -> Config:
        """
        Load C{block} as a configuration.
        """
        return parseConfig(
            block.text, block.where(), resolve=fakeResolve, balancers=knownBalancers()
        )


class DocumentTOMLTests(_FakeSocketActivation, SynchronousTestCase):
    """
    The TOML blocks of README.md and doc/*.md.
    """

    def test_found(self) -> None:
        """
        The documents have TOML examples, and only known markers before them.
        """
        blocks = tomlBlocks()
        self.assertGreater(len(blocks), 10)
        for block in blocks:
            if block.marker is not None:
                self.assertIn(block.marker, MARKERS, f"{block.where()}: unknown marker")
        fragments = [b for b in blocks if b.marker == "fragment"]
        self.assertLessEqual(len(fragments), MAX_FRAGMENTS)

    def test_configurationsLoad(self) -> None:
        """
        Every unmarked TOML block is a complete, valid configuration.
        """
        for block in tomlBlocks():
            if block.marker is None:
                try:
                    self.parse(block)
                except ConfigError as e:
                    self.fail(f"{block.where()}: example does not load:\n{e}")

    def test_fragmentsAreTOML(self) -> None:
        """
        A block marked as a fragment is still valid TOML.
        """
        for block in tomlBlocks():
            if block.marker == "fragment":
                try:
                    tomllib.loads(block.text)
                except tomllib.TOMLDecodeError as e:
                    self.fail(f"{block.where()}: not TOML: {e}")

    def test_invalidAreRefused(self) -> None:
        """
        A block marked invalid is refused, with at least one problem that
        names a line of the block.
        """
        for block in tomlBlocks():
            if block.marker == "invalid":
                error = self.assertRaises(ConfigError, self.parse, block)
                self.assertTrue(
                    any(p.line is not None for p in error.problems), block.where()
                )

    def test_needsFilesFailOnlyForFiles(self) -> None:
        """
        A block marked needs-files loads, or fails only because a file it
        names does not exist here.
        """
        for block in tomlBlocks():
            if block.marker == "needs-files":
                try:
                    self.parse(block)
                except ConfigError as e:
                    for problem in e.problems:
                        self.assertIn(
                            "No such file or directory", problem.message,
                            f"{block.where()}: {problem}",
                        )


class ExampleFileTests(_FakeSocketActivation, SynchronousTestCase):
    """
    The configuration files and the .tac file under examples/.
    """

    def test_configurationsLoad(self) -> None:
        """
        Every sockproxy configuration under examples/ loads.
        """
        paths = [p for p in sorted(EXAMPLES.rglob("*.toml")) if p.name != "pyproject.toml"]
        self.assertIn(EXAMPLES / "sockproxy.toml", paths)
        for path in paths:
            try:
                loadConfig(str(path), resolve=fakeResolve, balancers=knownBalancers())
            except ConfigError as e:
                self.fail(f"{path}: does not load:\n{e}")

    def test_readmeExample(self) -> None:
        """
        The README's run example is examples/sockproxy.toml: a proxy on
        127.0.0.1:8080 with the two backends the quick start starts, and
        the README shows the file as it is.
        """
        path = EXAMPLES / "sockproxy.toml"
        config = loadConfig(str(path), resolve=fakeResolve)
        [proxy] = config.proxies
        self.assertEqual(proxy.listen, ("tcp:8080:interface=127.0.0.1",))
        self.assertEqual(
            [b.endpoint for b in proxy.backends],
            ["tcp:host=127.0.0.1:port=10001", "tcp:host=127.0.0.1:port=10002"],
        )
        shown = [
            b for b in codeBlocks(REPO / "README.md")
            if b.language == "toml" and "[[proxy]]" in b.text and 'name = "web"' in b.text
        ]
        self.assertEqual(len(shown), 1)
        self.assertIn(shown[0].text, path.read_text(encoding="utf-8"))

    def test_readmeExampleCanBeLeftRunning(self) -> None:
        """
        examples/sockproxy.toml writes no log line per session, into a twistd
        log that twistd never prunes: C{debug} is 0 (level 1 logs two lines
        per session) and the session log is off.
        """
        config = loadConfig(str(EXAMPLES / "sockproxy.toml"), resolve=fakeResolve)
        self.assertEqual((config.debug, config.sessionLog), (0, "off"))

    def test_embedTac(self) -> None:
        """
        examples/embed.tac builds an application holding a proxy service,
        without binding anything.
        """
        path = EXAMPLES / "embed.tac"
        namespace: dict[str, object] = {"__file__": str(path)}
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
        services = list(IServiceCollection(namespace["application"]))
        self.assertEqual(len(services), 1)
        self.assertIsInstance(services[0], ProxyService)
        self.assertFalse(services[0].running)


class ReadmeTests(SynchronousTestCase):
    """
    The start of README.md.
    """

    def test_startsWithCommands(self) -> None:
        """
        README.md starts (after its title) with the install-and-run and the
        install-and-test commands.
        """
        text = (REPO / "README.md").read_text(encoding="utf-8")
        first = codeBlocks(REPO / "README.md")[0]
        self.assertEqual(first.line, 3)
        self.assertTrue(text.startswith("# txsockproxy\n"))
        self.assertEqual(
            first.text.splitlines(),
            [
                "python3 -m venv .venv && .venv/bin/pip install . && "
                ".venv/bin/twistd -n sockproxy --config examples/sockproxy.toml",
                "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest",
            ],
        )


class CommandLineDocumentTests(SynchronousTestCase):
    """
    The command lines of doc/command-line.md, run.
    """

    def test_checkExample(self) -> None:
        """
        The C{--check} example shows what C{--check} prints for
        examples/sockproxy.toml.
        """
        import io
        import os

        from txsockproxy.tap import Options

        [block] = [
            b for b in codeBlocks(REPO / "doc" / "command-line.md")
            if b.text.startswith("$ twistd sockproxy --config examples/sockproxy.toml --check\n")
        ]
        previous = os.getcwd()
        os.chdir(REPO)
        self.addCleanup(os.chdir, previous)
        options = Options()
        options.stdout = io.StringIO()
        options.stderr = io.StringIO()
        exit = self.assertRaises(
            SystemExit, options.parseOptions, ["--config", "examples/sockproxy.toml", "--check"]
        )
        self.assertEqual(exit.code, 0)
        self.assertEqual(block.text.split("\n", 1)[1], options.stdout.getvalue())


def _slug(heading: str) -> str:
    """
    The anchor GitHub gives a Markdown heading.
    """
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    inFence = False
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("```"):
            inFence = not inFence
            continue
        if not inFence and line.startswith("#"):
            base = slug = _slug(line.lstrip("#"))
            n = 1
            while slug in anchors:
                slug = f"{base}-{n}"
                n += 1
            anchors.add(slug)
    return anchors


_LINK = re.compile(r"\]\(([^)\s]+)\)")


class LinkTests(SynchronousTestCase):
    """
    The relative links between the documents.
    """

    def test_relativeLinks(self) -> None:
        """
        Every relative link leads to an existing file, and every C{#anchor}
        to a heading of its document.
        """
        checked = 0
        for path in DOCUMENTS:
            text = path.read_text(encoding="utf-8")
            text = re.sub(r"```.*?```", "", text, flags=re.S)
            for target in _LINK.findall(text):
                if re.match(r"[a-z]+:", target):
                    continue
                name, _, anchor = target.partition("#")
                linked = (path.parent / name).resolve() if name else path
                self.assertTrue(linked.exists(), f"{path.name}: no {target}")
                if anchor:
                    self.assertIn(anchor, _anchors(linked), f"{path.name}: no {target}")
                checked += 1
        self.assertGreater(checked, 20)


def _importFrom(directory: Path, name: str, path: Path) -> ModuleType:
    """
    Import the module file C{path} as C{name}, with C{directory} first on
    C{sys.path} (the plugin module imports the balancer module by name).
    """
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    sys.path.insert(0, str(directory))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


CLIENT = ConnectionInfo(
    IPv4Address("TCP", "192.0.2.1", 40000), IPv4Address("TCP", "127.0.0.1", 15432)
)


class ExamplePluginTests(SynchronousTestCase):
    """
    The example balancer plugin under examples/balancer-plugin/.
    """

    def setUp(self) -> None:
        for name in ("failover_balancer", "failover_balancer_plugin"):
            self.addCleanup(sys.modules.pop, name, None)
        self.balancerModule = _importFrom(
            PLUGIN_DIR, "failover_balancer", PLUGIN_DIR / "failover_balancer.py"
        )
        sys.modules["failover_balancer"] = self.balancerModule
        self.pluginModule = _importFrom(PLUGIN_DIR, "failover_balancer_plugin", PLUGIN_FILE)

    def test_pluginModule(self) -> None:
        """
        The plugin module holds exactly one balancer plugin, as Twisted's
        plugin system would find it: an object providing L{IPlugin} and
        L{IBalancerFactory}, named C{failover}, a name no built-in
        balancer has.
        """
        found = [
            value for value in vars(self.pluginModule).values()
            if IPlugin(value, None) is not None and IBalancerFactory.providedBy(value)
        ]
        self.assertEqual(len(found), 1)
        [factory] = found
        verifyObject(IPlugin, factory)
        verifyObject(IBalancerFactory, factory)
        self.assertEqual(factory.name, "failover")
        self.assertNotIn("failover", balancerNames())
        self.assertTrue(factory.description)

    def test_balancer(self) -> None:
        """
        The factory makes a fresh L{IBalancer} each time.
        """
        factory = self.balancerModule.failover
        first, second = factory(), factory()
        verifyObject(IBalancer, first)
        self.assertIsNot(first, second)

    def test_choosesFirstAvailable(self) -> None:
        """
        The first candidate (the first available backend in config order)
        is chosen, however busy; when it is gone, the next one.
        """
        balancer = self.balancerModule.failover()
        primary, standby, spare = BackendInfo("primary", active=9), BackendInfo("standby"), BackendInfo("s")
        self.assertIs(balancer.choose([primary, standby, spare], CLIENT), primary)
        self.assertIs(balancer.choose([standby, spare], CLIENT), standby)
        unixClient = ConnectionInfo(UNIXAddress(None), UNIXAddress("/run/p.sock"))
        self.assertIs(balancer.choose([spare], unixClient), spare)

    def test_exampleConfiguration(self) -> None:
        """
        examples/balancer-plugin/failover.toml uses the plugin.
        """
        config = loadConfig(
            str(PLUGIN_DIR / "failover.toml"), resolve=fakeResolve, balancers=knownBalancers()
        )
        self.assertEqual([p.balance for p in config.proxies], ["failover"])

    def test_documentShowsFiles(self) -> None:
        """
        The Python blocks of the documents that say which file they are
        show that file as it is.
        """
        shown = 0
        for path in DOCUMENTS:
            for block in codeBlocks(path):
                if block.marker and block.marker.startswith("file:"):
                    name = block.marker[len("file:"):].strip()
                    self.assertEqual(
                        block.text, (REPO / name).read_text(encoding="utf-8"), block.where()
                    )
                    shown += 1
        self.assertEqual(shown, 2)
