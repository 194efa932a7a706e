"""
Integration tests of backends from DNS: a C{twisted.names} authoritative
server (L{tests.dns_server}, a subprocess) whose records the test changes,
and C{twistd sockproxy} (a subprocess) that follows them, with backends on
127.0.0.2 and 127.0.0.3 (loopback addresses both, on Linux).

Every wait is bounded: on a log line, a socket timeout, or a poll of
C{/status.json} under a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from typing import Any

from tests.integration_support import (
    REPO,
    START_TIMEOUT,
    Deadline,
    Server,
    boundPorts,
    connect,
    recvExactly,
    tomlString,
)
from tests.test_integration import _IntegrationTestCase

DNS_SERVER = os.path.join(REPO, "tests", "dns_server.py")
ADDRESSES = ("127.0.0.2", "127.0.0.3")


def identifying(name: bytes) -> Any:
    """
    A backend handler that says C{name} first, then echoes.
    """

    def handler(conn: socket.socket, server: Server) -> None:
        conn.sendall(name)
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)

    return handler


class DNSServer:
    """
    The test's DNS server, a subprocess, and its records.
    """

    def __init__(self, tmp: str) -> None:
        self.path = os.path.join(tmp, "records.json")
        self.write({})
        self.process = subprocess.Popen(
            [sys.executable, DNS_SERVER, self.path], cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        self.port = 0
        done = threading.Event()
        first: list[bytes] = []

        def readFirst() -> None:
            assert self.process.stdout is not None
            first.append(self.process.stdout.readline())
            done.set()

        threading.Thread(target=readFirst, daemon=True).start()
        if not done.wait(START_TIMEOUT) or not first[0].startswith(b"dns-server listening"):
            self.stop()
            raise AssertionError(f"the DNS server did not start: {first!r}")
        self.port = int(first[0].split()[-1])

    def write(self, records: dict[str, Any]) -> None:
        """
        Replace the records (at once: the server reads the file per query).
        """
        temporary = self.path + ".new"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump({"ttl": 1, **records}, f)
        os.replace(temporary, self.path)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def boundPair(case: Any) -> tuple[socket.socket, socket.socket]:
    """
    Two listening-ready TCP sockets, on 127.0.0.2 and 127.0.0.3, with the
    same port (A records give every address one port).
    """
    for _ in range(20):
        first = socket.socket()
        first.bind((ADDRESSES[0], 0))
        port = first.getsockname()[1]
        second = socket.socket()
        try:
            second.bind((ADDRESSES[1], port))
        except OSError:
            first.close()
            second.close()
            continue
        case.addCleanup(first.close)
        case.addCleanup(second.close)
        return first, second
    raise AssertionError("no port free on both 127.0.0.2 and 127.0.0.3")


class DiscoveryIntegrationTests(_IntegrationTestCase):
    """
    A proxy whose backend is a DNS name follows its records.
    """

    def status(self, port: int) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5) as r:
            document: dict[str, Any] = json.load(r)
        return document

    def session(self, port: int) -> tuple[socket.socket, bytes]:
        """
        A client session through the proxy, and the name of the backend
        that serves it.
        """
        conn = connect(("127.0.0.1", port))
        self.addCleanup(conn.close)
        return conn, recvExactly(conn, 1, Deadline(10, "backend's name"))

    def test_followsRecords(self) -> None:
        """
        The proxy takes the addresses of the A records as backends, and an
        SRV record's target and port likewise; when the records change the
        new address takes sessions and the one removed drains: its session
        in flight goes on, status shows it draining, and it leaves when
        that session ends. A reload keeps the backends and their counters.
        With the DNS server gone, the last addresses are kept, the failure
        logged once, and sessions still served.
        """
        dns = DNSServer(self.tmp)
        self.addCleanup(dns.stop)
        two, three = boundPair(self)
        port = two.getsockname()[1]
        servers = [Server(identifying(b"2"), bound=two), Server(identifying(b"3"), bound=three)]
        for server in servers:
            self.addCleanup(server.stop)
        dns.write({"a": {"db.test": ["127.0.0.2"]},
                   "srv": {"_echo._tcp.test": [[0, 1, port, "db.test"]]}})
        resolver = tomlString(f"127.0.0.1:{dns.port}")
        config = os.path.join(self.tmp, "dns.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(f"""\
[status]
listen = "tcp:0:interface=127.0.0.1"

[[proxy]]
name = "db"
listen = "tcp:0:interface=127.0.0.1"
resolver = {resolver}
resolve-min = 0.2
resolve-max = 1

[[proxy.backend]]
label = "db"
host = "db.test"
port = {port}
resolve = "dns"

[[proxy]]
name = "srv"
listen = "tcp:0:interface=127.0.0.1"

[[proxy.backend]]
label = "echo"
srv = "_echo._tcp.test"
resolver = {resolver}
resolve-min = 0.2
resolve-max = 1
""")
        proxy = self.startProxy(config)
        proxyPort, srvPort, statusPort = boundPorts(proxy, 3)
        proxy.waitFor(f"backend db: DNS gives 1 address(es); new: db/127.0.0.2:{port}")
        proxy.waitFor(f"backend echo: DNS gives 1 address(es); new: echo/127.0.0.2:{port}")

        old, name = self.session(proxyPort)
        self.assertEqual(name, b"2")
        _, name = self.session(srvPort)
        self.assertEqual(name, b"2")

        # 127.0.0.3 replaces 127.0.0.2: new sessions go to it; the old one goes on.
        dns.write({"a": {"db.test": ["127.0.0.3"]},
                   "srv": {"_echo._tcp.test": [[0, 1, port, "db.test"]]}})
        proxy.waitFor(f"backend db: DNS gives 1 address(es); new: db/127.0.0.3:{port}; "
                      f"gone (draining): db/127.0.0.2:{port}")
        for _ in range(3):
            conn, name = self.session(proxyPort)
            self.assertEqual(name, b"3")
            conn.close()
        old.sendall(b"still here")
        self.assertEqual(recvExactly(old, 10, Deadline(10, "echo")), b"still here")
        shown = {b["label"]: b["state"]
                 for b in self.status(statusPort)["proxies"][0]["backends"]}
        self.assertEqual(shown, {f"db/127.0.0.3:{port}": "up",
                                 f"db/127.0.0.2:{port}": "draining"})
        old.close()
        proxy.waitFor(f"backend db/127.0.0.2:{port} drained: its last session ended")
        shown = {b["label"] for b in self.status(statusPort)["proxies"][0]["backends"]}
        self.assertEqual(shown, {f"db/127.0.0.3:{port}"})

        # A reload of the same file keeps the backend and its counters.
        [before] = self.status(statusPort)["proxies"][0]["backends"]
        os.kill(proxy.pid, signal.SIGHUP)
        proxy.waitFor("reload: applied")
        [after] = self.status(statusPort)["proxies"][0]["backends"]
        self.assertEqual((after["label"], after["connected"]),
                         (before["label"], before["connected"]))
        self.assertEqual(len(proxy.matching("backend db: DNS gives")), 2)

        # DNS gone: the last addresses stay, one line says so.
        dns.stop()
        proxy.waitFor("proxy db: backend db (db.test port", timeout=START_TIMEOUT)
        deadline = Deadline(30, "two failed lookups")
        while True:
            [lookups] = self.status(statusPort)["proxies"][0]["dns"]
            if lookups["failures"] >= 2:
                break
            threading.Event().wait(min(0.2, deadline.remaining()))
        self.assertTrue(lookups["failing"])
        failed = [line for line in proxy.matching("proxy db: backend db (db.test port")
                  if "DNS lookup failed" in line]
        self.assertEqual(len(failed), 1, proxy.output)
        self.assertIn("keeping the last good addresses", failed[0])
        self.assertIn("the DNS server refused the connection", failed[0])
        conn, name = self.session(proxyPort)
        self.assertEqual(name, b"3")
        for server in servers:
            self.assertEqual(server.errors, [])

    def test_slowNameHoldsUpNoOther(self) -> None:
        """
        Two backends share a DNS server, one of them an SRV name whose
        target the server never answers: the other's lookups go on at its
        own pace meanwhile, and the slow one fails after the 5 s deadline
        (status says so) rather than stay pending.
        """
        dns = DNSServer(self.tmp)
        self.addCleanup(dns.stop)
        dns.write({"a": {"db.test": ["127.0.0.2"]}, "hang": ["h.test"],
                   "srv": {"_slow._tcp.test": [[0, 1, 5432, "h.test"]]}})
        config = os.path.join(self.tmp, "slow.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(f"""\
[status]
listen = "tcp:0:interface=127.0.0.1"

[[proxy]]
name = "db"
listen = "tcp:0:interface=127.0.0.1"
resolver = {tomlString(f"127.0.0.1:{dns.port}")}
resolve-min = 0.2
resolve-max = 0.5

[[proxy.backend]]
label = "slow"
srv = "_slow._tcp.test"

[[proxy.backend]]
label = "db"
host = "db.test"
port = 5432
resolve = "dns"
""")
        proxy = self.startProxy(config)
        _, statusPort = boundPorts(proxy, 2)
        proxy.waitFor("backend db: DNS gives 1 address(es)")
        deadline = Deadline(4, "db's lookups while slow's is pending")
        while True:
            lookups = {d["label"]: d for d in self.status(statusPort)["proxies"][0]["dns"]}
            if lookups["db"]["lookups"] >= 4:
                break
            threading.Event().wait(min(0.1, deadline.remaining()))
        self.assertEqual(lookups["slow"]["lookups"], 0)
        proxy.waitFor("backend slow (SRV _slow._tcp.test): DNS lookup failed "
                      "(no answer (timeout))", timeout=10)
        slow = {d["label"]: d for d in self.status(statusPort)["proxies"][0]["dns"]}["slow"]
        self.assertTrue(slow["failing"])
        self.assertEqual(slow["last_error"], "no answer (timeout)")
