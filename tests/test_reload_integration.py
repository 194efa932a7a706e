"""
Integration tests of reloading (SIGHUP) with C{twistd sockproxy} run as a
subprocess: the configuration is read away from the reactor thread, so a
slow C{include_shell} does not stop relaying.

Every wait is bounded: on a log line, an event or a socket timeout, under a
deadline. The test itself does not sleep; the proxy's C{include_shell} does.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from itertools import pairwise

from tests.integration_support import Address, Deadline, connect, echoHandler
from tests.test_integration import _IntegrationTestCase

# How long the include_shell of a slow reload takes, in seconds.
SLOW = 2.0


class PingPong(threading.Thread):
    """
    One session that sends a byte and waits for its echo, again and again,
    recording when each round trip ended.
    """

    def __init__(self, address: Address) -> None:
        super().__init__(daemon=True)
        self.conn = connect(address)
        if not isinstance(address, str):
            self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stamps: list[float] = []
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.conn.sendall(b"x")
                if self.conn.recv(1) != b"x":
                    raise AssertionError("the echo ended")
                self.stamps.append(time.monotonic())
        except BaseException as e:
            self.errors.append(e)

    def longestGap(self, start: float, end: float) -> float:
        """
        The longest time without a round trip between C{start} and C{end}
        (counting from C{start} to the first and from the last to C{end}).
        """
        inside = [start] + [t for t in self.stamps if start < t < end] + [end]
        return max(b - a for a, b in pairwise(inside))

    def finish(self) -> None:
        self.stopping.set()
        self.join(10)
        self.conn.close()


class SlowReloadIntegrationTests(_IntegrationTestCase):
    """
    A reload whose C{include_shell} takes seconds does not stop the sessions
    in flight.
    """

    def test_relayingGoesOnDuringSlowReload(self) -> None:
        """
        While a SIGHUP reload runs an C{include_shell "sleep 2"}, a session
        keeps relaying: no gap between its round trips is longer than 1 s
        (before the config was read on a thread, the whole 2 s was one gap),
        and the reload is still applied.
        """
        backend = self.startServer(echoHandler)
        # A unix socket: the lighttpd importer, as lighttpd, wants a port
        # other than 0 in a TCP socket condition.
        path = os.path.join(self.tmp, "p.sock")
        config = os.path.join(self.tmp, "lighttpd.conf")
        with open(config, "w", encoding="utf-8") as f:
            # Slow only once the marker exists: start-up stays quick.
            f.write(
                'server.modules = ( "mod_sockproxy" )\n'
                f'include_shell "test -e slow && sleep {SLOW:g}; echo"\n'
                f'$SERVER["socket"] == "{path}" {{\n'
                '  sockproxy.server = ( "" => ( ( "host" => "127.0.0.1", '
                f'"port" => {backend.port} ) ) )\n'
                "}\n"
            )
        proxy = self.startProxy(config)
        pinger = PingPong(path)
        self.addCleanup(pinger.finish)
        pinger.start()
        deadline = Deadline(10, "the first round trips")
        while len(pinger.stamps) < 10:
            self.assertEqual(pinger.errors, [])
            pinger.join(min(0.05, deadline.remaining()))
        with open(os.path.join(self.tmp, "slow"), "w"):
            pass
        start = time.monotonic()
        proxy.process.send_signal(signal.SIGHUP)
        proxy.waitFor("reload: applied", timeout=SLOW + 10)
        end = time.monotonic()
        pinger.finish()
        self.assertEqual(pinger.errors, [])
        self.assertGreaterEqual(end - start, SLOW, "the reload was not slow: nothing measured")
        gap = pinger.longestGap(start, end)
        self.assertLess(gap, 1.0, f"relaying stopped for {gap:.3f} s during the reload")
        self.assertEqual([line for line in proxy.lines if "Traceback" in line], [])
