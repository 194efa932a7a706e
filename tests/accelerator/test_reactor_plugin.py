"""
Tests for txsockproxy's reactor plugin: Twisted finds it, and twistd runs
the proxy on it when asked with C{--reactor=txsockproxy}.
"""

from __future__ import annotations

import socket

from twisted.application.reactors import IReactorInstaller, getReactorTypes
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.integration_support import LOOPBACK, boundPort, connect, echoHandler, proxyConfig
from tests.test_integration import _IntegrationTestCase


class ReactorPluginTests(SynchronousTestCase):
    """
    The plugin C{txsockproxy} is found among Twisted's reactor plugins and
    names the accelerator's reactor module.
    """

    def test_found(self) -> None:
        """
        L{getReactorTypes} lists C{txsockproxy}, whose module has an
        C{install} function.
        """
        [plugin] = [r for r in getReactorTypes() if r.shortName == "txsockproxy"]
        verifyObject(IReactorInstaller, plugin)
        self.assertEqual(plugin.moduleName, "txsockproxy._fast.reactor")
        from txsockproxy._fast import reactor

        self.assertTrue(callable(reactor.install))


class ReactorPluginIntegrationTests(_IntegrationTestCase):
    """
    C{twistd --reactor=txsockproxy sockproxy ...} runs on it.
    """

    def test_twistdReactorOption(self) -> None:
        """
        The start-up log names txsockproxy's reactor, and sessions relay.
        """
        backend = self.startServer(echoHandler)
        config = proxyConfig(self.tmp, [LOOPBACK], [{"endpoint": backend.endpoint}])
        process = self.startTwistd(
            ["sockproxy", "--config", config],
            daemonArgs=("-n", "--pidfile=", "--logfile=-", "--reactor=txsockproxy"),
        )
        self.assertTrue(process.matching("txsockproxy._fast.reactor.EPollReactor"))
        with connect(("127.0.0.1", boundPort(process))) as conn:
            conn.sendall(b"ping")
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(10)
            self.assertEqual(conn.recv(16), b"ping")
