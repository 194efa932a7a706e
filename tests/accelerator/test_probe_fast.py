"""
Tests for the accelerator's start-up checks (L{txsockproxy._fast.probe})
and the choice they lead to (L{txsockproxy.accelerator}): a Twisted that
lacks what the accelerator relies on, or one it was not tested with, gets
the portable path and one line saying why, never a crash.
"""

from __future__ import annotations

import os
import socket
import textwrap

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.selectreactor import SelectReactor
from twisted.python.versions import Version
from twisted.trial.unittest import SynchronousTestCase

from tests.integration_support import LOOPBACK, boundPort, connect, echoHandler, proxyConfig
from tests.test_integration import _IntegrationTestCase
from txsockproxy import accelerator
from txsockproxy._fast import accelerate, probe
from txsockproxy._fast.path import AcceleratedRelayPath
from txsockproxy.portable import PortableRelayPath


class ProbeTests(SynchronousTestCase):
    """
    L{probe.missing} names what is absent; L{probe.versionProblem} the
    versions outside those tested.
    """

    def test_nothingMissingHere(self) -> None:
        """
        The Twisted these tests run on has everything the accelerator uses,
        and so has an epoll reactor of it.
        """
        reactor = EPollReactor()
        self.addCleanup(reactor._poller.close)
        self.assertEqual(probe.missing(reactor), [])

    def test_missingClassAttribute(self) -> None:
        """
        A class attribute it relies on that is not there is named.
        """
        self.patch(
            probe, "_CLASS_ATTRIBUTES",
            {"twisted.internet.tcp.Connection": ("_closeWriteConnection", "_goneInTwisted99")},
        )
        self.assertEqual(probe.missing(), ["twisted.internet.tcp.Connection._goneInTwisted99"])

    def test_missingReactorAttribute(self) -> None:
        """
        An attribute of the reactor it relies on that is not there is named.
        """
        self.assertIn("SelectReactor._poller", probe.missing(SelectReactor()))

    def test_versions(self) -> None:
        """
        The versions tested, oldest and newest, pass; older and newer ones
        are named.
        """
        (oldMajor, oldMinor), (newMajor, newMinor) = probe.TESTED
        self.assertIsNone(probe.versionProblem(Version("Twisted", oldMajor, oldMinor, 0)))
        self.assertIsNone(probe.versionProblem(Version("Twisted", newMajor, newMinor, 1)))
        newer = probe.versionProblem(Version("Twisted", newMajor + 1, 0, 0))
        assert newer is not None
        self.assertIn(f"Twisted {newMajor + 1}.0 is outside the versions it was tested with", newer)
        self.assertIsNotNone(probe.versionProblem(Version("Twisted", oldMajor, oldMinor - 1, 0)))


class ChoiceTests(SynchronousTestCase):
    """
    L{accelerator.relayPathFor} gives the accelerated path only where it
    applies, else the portable one, and says why.
    """

    def epoll(self) -> EPollReactor:
        reactor = EPollReactor()
        self.addCleanup(reactor._poller.close)
        return reactor

    def test_accelerated(self) -> None:
        """
        On an epoll reactor of a tested Twisted, C{auto} is the splice path.
        """
        path, why = accelerator.relayPathFor(self.epoll(), "auto")
        self.assertIsInstance(path, AcceleratedRelayPath)
        self.assertEqual(why, "relay path: accelerated (splice)")

    def test_off(self) -> None:
        """
        C{off} is the portable path.
        """
        path, why = accelerator.relayPathFor(self.epoll(), "off")
        self.assertIsInstance(path, PortableRelayPath)
        self.assertEqual(why, "relay path: portable (accelerator off)")

    def test_otherReactor(self) -> None:
        """
        Another reactor gets the portable path, and the line names it.
        """
        path, why = accelerator.relayPathFor(SelectReactor(), "splice")
        self.assertIsInstance(path, PortableRelayPath)
        self.assertIn("needs an epoll reactor", why)
        self.assertIn("SelectReactor", why)

    def test_missingName(self) -> None:
        """
        A Twisted lacking a name the accelerator relies on gets the portable
        path, with the name in the line.
        """
        self.patch(
            probe, "_CLASS_ATTRIBUTES",
            {"twisted.internet.tcp.Connection": ("_goneInTwisted99",)},
        )
        path, why = accelerator.relayPathFor(self.epoll(), "auto")
        self.assertIsInstance(path, PortableRelayPath)
        self.assertIn("_goneInTwisted99", why)

    def test_untestedVersion(self) -> None:
        """
        A Twisted newer than those tested gets the portable path with
        C{auto}; naming a mode tries the accelerator anyway (its names are
        still checked).
        """
        self.patch(probe, "TESTED", ((1, 0), (1, 1)))
        path, why = accelerator.relayPathFor(self.epoll(), "auto")
        self.assertIsInstance(path, PortableRelayPath)
        self.assertIn("outside the versions it was tested with", why)
        path, _ = accelerator.relayPathFor(self.epoll(), "copy")
        self.assertIsInstance(path, AcceleratedRelayPath)

    def test_accelerateDirectly(self) -> None:
        """
        L{accelerate} says why it declines.
        """
        self.patch(probe, "TESTED", ((1, 0), (1, 1)))
        path, why = accelerate(self.epoll(), "splice")
        self.assertIsNone(path)
        self.assertTrue(why.startswith("accelerator off: Twisted "))

    def test_setting(self) -> None:
        """
        The environment variable, when set to a setting, wins over the
        configuration's key; anything else leaves the key's.
        """
        self.assertEqual(accelerator.setting("copy", {}), "copy")
        self.assertEqual(accelerator.setting("copy", {"TXSOCKPROXY_FASTPATH": "off"}), "off")
        self.assertEqual(accelerator.setting("off", {"TXSOCKPROXY_FASTPATH": "fast"}), "off")


class NewerTwistedIntegrationTests(_IntegrationTestCase):
    """
    C{twistd sockproxy} on a Twisted that says it is newer than those the
    accelerator was tested with: the proxy runs on the portable path (and
    Twisted's default reactor), says so, and relays.
    """

    def test_portableOnNewerTwisted(self) -> None:
        """
        With C{twisted.version} made 99.1 before the proxy starts, the
        start-up log says why the accelerator is off, and bytes flow both
        ways with half-close.
        """
        site = os.path.join(self.tmp, "site")
        os.mkdir(site)
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            f.write(textwrap.dedent("""\
                import twisted
                from twisted.python.versions import Version
                twisted.version = Version("Twisted", 99, 1, 0)
            """))
        env = self.environ()
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (site, env.get("PYTHONPATH", "")) if p
        )
        env.pop("TXSOCKPROXY_FASTPATH", None)
        backend = self.startServer(echoHandler)
        config = proxyConfig(self.tmp, [LOOPBACK], [{"endpoint": backend.endpoint}])
        process = self.startTwistd(["sockproxy", "--config", config], env=env)
        [line] = process.matching("relay path:")
        self.assertIn("Twisted 99.1 is outside the versions it was tested with", line)
        self.assertIn("relay path: portable", line)
        with connect(("127.0.0.1", boundPort(process))) as conn:
            conn.sendall(b"still relayed")
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(10)
            self.assertEqual(conn.recv(64), b"still relayed")
