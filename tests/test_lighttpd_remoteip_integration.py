"""
Differential integration tests of C{$HTTP["remoteip"]} around
C{sockproxy.server}: Debian's lighttpd and C{twistd sockproxy} run the same
lighttpd.conf, and clients from 127.0.0.1 and from 127.0.0.2 (both loopback
on Linux) are proxied, or not, alike by both. A client lighttpd does not
proxy gets an HTTP answer; one txsockproxy refuses is closed: neither
reaches the backend.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.integration_support import START_TIMEOUT, Deadline, Twistd
from tests.test_lighttpd_integration import LIGHTTPD, LabelBackend, unusedPorts

CONFIG = """\
server.modules = ( "mod_sockproxy" )
server.document-root = var.CWD
server.bind = "127.0.0.1"
server.port = env.SP_HTTP

var.A = ( "" => ( "A" => ( "host" => "127.0.0.1", "port" => env.SP_A ) ) )

# Proxied for 127.0.0.1 only: access = ["allow 127.0.0.1/32", "deny all"]
$SERVER["socket"] == "127.0.0.1:" + env.SP_ONLY_1 {
  sockproxy.server = var.A
  $HTTP["remoteip"] != "127.0.0.1" {
    sockproxy.server = ()
  }
}

# Proxied for 127.0.0.2 only: access = ["allow 127.0.0.2/32", "deny all"]
$SERVER["socket"] == "127.0.0.1:" + env.SP_ONLY_2 {
  $HTTP["remoteip"] == "127.0.0.2/32" {
    sockproxy.server = var.A
  }
}

# Proxied for all but 127.0.0.2: access = ["deny 127.0.0.2/32"]
$SERVER["socket"] == "127.0.0.1:" + env.SP_NOT_2 {
  sockproxy.server = var.A
  $HTTP["remoteip"] == "127.0.0.2" {
    sockproxy.server = ()
  }
}
"""

SOCKETS = ("SP_ONLY_1", "SP_ONLY_2", "SP_NOT_2")
CLIENTS = ("127.0.0.1", "127.0.0.2")
# Which client each socket proxies, in lighttpd's reading of CONFIG.
EXPECTED = {
    ("SP_ONLY_1", "127.0.0.1"): True, ("SP_ONLY_1", "127.0.0.2"): False,
    ("SP_ONLY_2", "127.0.0.1"): False, ("SP_ONLY_2", "127.0.0.2"): True,
    ("SP_NOT_2", "127.0.0.1"): True, ("SP_NOT_2", "127.0.0.2"): False,
}


def proxiedFrom(source: str, port: int, deadline: Deadline) -> bool:
    """
    Connect from C{source} to loopback C{port}, send an HTTP request and read
    the first line: whether it is the backend's label (the connection was
    proxied) rather than an HTTP answer or the end of the connection.
    """
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with conn:
        conn.settimeout(deadline.remaining())
        conn.bind((source, 0))
        conn.connect(("127.0.0.1", port))
        data = b""
        try:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            while not data.endswith(b"\n"):
                conn.settimeout(deadline.remaining())
                chunk = conn.recv(1)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    return data == b"A\n"


class RemoteIPDifferentialTests(SynchronousTestCase):
    """
    lighttpd and txsockproxy proxy the same clients of the same config.
    """

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="sockproxy-lt-ip-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.config = os.path.join(self.tmp, "lighttpd.conf")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(CONFIG)
        self.backend = LabelBackend("A")
        self.addCleanup(self.backend.server.stop)

    def environ(self, ports: dict[str, int]) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SOCKPROXY_CONFIG", None)
        env.update({name: str(port) for name, port in ports.items()})
        env["SP_A"] = str(self.backend.server.port)
        return env

    def decisions(self, ports: dict[str, int]) -> dict[tuple[str, str], bool]:
        return {
            (name, client): proxiedFrom(client, ports[name], Deadline(10, f"{name} {client}"))
            for name in SOCKETS for client in CLIENTS
        }

    def test_txsockproxy(self) -> None:
        """
        txsockproxy proxies a client where lighttpd's conditions would, and
        closes the others before any backend work.
        """
        ports = unusedPorts(("SP_HTTP", *SOCKETS))
        process = Twistd(["sockproxy", "--config", self.config], cwd=self.tmp,
                         env=self.environ(ports))
        self.addCleanup(process.stop)
        process.waitFor("listening on", count=len(SOCKETS), timeout=START_TIMEOUT)
        self.assertEqual(self.decisions(ports), EXPECTED)
        proxied = sum(EXPECTED.values())
        self.assertEqual(self.backend.server.accepted, proxied)

    def test_lighttpd(self) -> None:
        """
        lighttpd 1.4.69 decides so: it evaluates C{$HTTP["remoteip"]} when
        it accepts the connection, before mod_sockproxy takes it.
        """
        if not os.access(LIGHTTPD, os.X_OK):
            raise SkipTest(f"{LIGHTTPD} is not installed (apt-get install lighttpd)")
        ports = unusedPorts(("SP_HTTP", *SOCKETS))
        process = Twistd([], cwd=self.tmp, env=self.environ(ports), program=LIGHTTPD,
                         daemonArgs=("-D", "-f", self.config))
        self.addCleanup(process.stop)
        process.waitFor("server started", timeout=START_TIMEOUT)
        self.assertEqual(self.decisions(ports), EXPECTED)
        self.assertEqual(self.backend.server.accepted, sum(EXPECTED.values()))
