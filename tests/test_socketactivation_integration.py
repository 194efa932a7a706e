"""
Integration tests of C{systemd:} listen strings under socket activation:
C{systemd-socket-activate} (systemd's own tool, which binds the socket and
starts the command with C{LISTEN_FDS} as systemd does) starts C{twistd
sockproxy}; with workers, and taken over by a process that systemd did not
start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Optional

from twisted.trial.unittest import SkipTest, TestCase

from tests.integration_support import TWISTD, Server, Twistd, echoHandler, tomlString
from tests.test_lighttpd_integration import unusedPort
from tests.test_takeover_integration import LongSession, ShortConnections

ACTIVATE = shutil.which("systemd-socket-activate")


class SocketActivationIntegrationTests(TestCase):
    """
    A proxy whose listener is C{systemd:domain=INET:name=web}, started by
    C{systemd-socket-activate}.
    """

    LISTEN = "systemd:domain=INET:name=web"

    def setUp(self) -> None:
        if ACTIVATE is None:
            raise SkipTest("systemd-socket-activate is not installed (Debian package systemd)")
        self.tmp = tempfile.mkdtemp(prefix="activate-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.backend = Server(echoHandler)
        self.addCleanup(self.backend.stop)
        self.port = unusedPort()

    def writeConfig(self, workers: int, name: str = "s.toml") -> str:
        path = os.path.join(self.tmp, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                f"takeover-socket = {tomlString(os.path.join(self.tmp, 'takeover.sock'))}\n"
                f"shutdown-timeout = 20\nworkers = {workers}\n\n"
                f'[[proxy]]\nname = "t"\nlisten = {tomlString(self.LISTEN)}\n\n'
                f"[[proxy.backend]]\nendpoint = {tomlString(self.backend.endpoint)}\n"
            )
        return path

    def twistd(self, config: str, *more: str) -> Twistd:
        """
        C{twistd sockproxy}, not started by systemd (no C{LISTEN_*}
        variables).
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        proxy = Twistd(["sockproxy", "--config", config, *more], cwd=self.tmp, env=env)
        self.addCleanup(proxy.stop)
        return proxy

    def activated(self, config: str) -> Twistd:
        """
        C{twistd sockproxy --config C{config}} as systemd socket activation
        starts it, with a TCP socket on L{port} named C{web}.
        """
        assert ACTIVATE is not None
        proxy = Twistd(["sockproxy", "--config", config], cwd=self.tmp,
                       program=ACTIVATE,
                       daemonArgs=("-l", f"127.0.0.1:{self.port}", "--fdname=web", TWISTD,
                                   "-n", "--pidfile=", "--logfile=-"))
        self.addCleanup(proxy.stop)
        # As systemd does, systemd-socket-activate starts the service at
        # the first connection; that one is served once it has started.
        proxy.waitFor(f"Listening on 127.0.0.1:{self.port}")
        LongSession(self.port).close()
        return proxy

    def waitServing(self, proxy: Twistd, workers: int) -> None:
        if workers > 1:
            proxy.waitFor(") serving", count=workers, timeout=20)
        else:
            proxy.waitFor(f"{self.LISTEN} is bound to", timeout=20)

    def test_workers(self) -> None:
        """
        With C{workers = 2}, the parent adopts the socket systemd passed and
        hands it to its workers, which serve it (they were not started by
        systemd: their C{systemd:} string names the socket handed to them).
        """
        proxy = self.activated(self.writeConfig(2))
        self.waitServing(proxy, 2)
        for _ in range(4):
            LongSession(self.port).close()
        self.assertEqual(proxy.matching("cannot serve"), [])

    def upgrade(self, workers: int, newWorkers: Optional[int] = None) -> None:
        config = self.writeConfig(workers)
        old = self.activated(config)
        self.waitServing(old, workers)
        old.waitFor("take-over: listening on")
        load = ShortConnections(self.port)
        self.addCleanup(load.stop)
        load.waitForMore(20)
        session = LongSession(self.port)
        self.addCleanup(session.close)
        newConfig = config
        if newWorkers is not None:
            newConfig = self.writeConfig(newWorkers, name="new.toml")
        new = self.twistd(newConfig, "--take-over")
        new.waitFor("take-over: serving; pid", timeout=20)
        self.waitServing(new, newWorkers or workers)
        load.waitForMore(50)
        session.exchange()
        session.close()
        self.assertEqual(old.waitForExit(timeout=20), 0)
        load.waitForMore(20)
        counts = load.stop()
        self.assertEqual((counts["refused"], counts["reset"], counts["other"]), (0, 0, 0),
                         (counts, load.errors))
        # The new process answers, and a reload there keeps the listener.
        new.process.send_signal(1)
        new.waitFor("reload: applied")
        LongSession(self.port).close()

    def test_takeOver(self) -> None:
        """
        A process that systemd did not start (C{ExecReload=}, or by hand)
        takes the activated socket over from one process: no connection is
        refused or reset, and it serves on after the old one has gone.
        """
        self.upgrade(workers=1)

    def test_takeOverWithWorkers(self) -> None:
        """
        The same with C{workers = 2} in both instances.
        """
        self.upgrade(workers=2)

    def test_notActivated(self) -> None:
        """
        Started without socket activation (and nothing to take over), the
        proxy stops at once with one line saying that systemd passed no
        such socket, exit status 1.
        """
        proxy = self.twistd(self.writeConfig(1))
        self.assertEqual(proxy.waitForExit(timeout=20), 1)
        self.assertTrue(proxy.matching(
            "systemd passed this process no socket with name 'web' (is it started by systemd "
            f"socket activation?): cannot listen on {self.LISTEN}"), proxy.output)
        self.assertFalse(proxy.matching("Traceback"), proxy.output)
