"""
Integration tests of active health checks: C{twistd sockproxy} as a
subprocess, with redis-server (when installed) and loopback servers on
threads as backends, TLS backends with certificates of a CA made for the
test. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any, Sequence

from twisted.trial.unittest import SkipTest

from tests.integration_support import (
    LOOPBACK,
    Deadline,
    Server,
    Twistd,
    boundAddresses,
    connect,
    echoHandler,
    exchange,
    refusingSocket,
    tomlString,
)
from tests.pki import Authority, serverContext, tlsEchoHandler
from tests.test_integration import _IntegrationTestCase

REDIS = "/usr/bin/redis-server"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return tomlString(value)
    return repr(value)


def writeConfig(
    tmp: str, proxies: Sequence[tuple[str, dict[str, Any], Sequence[dict[str, Any]]]]
) -> str:
    """
    Write a config of C{proxies} (name, proxy keys, backends' keys) and a
    status site, each listening on a loopback port of its own choice.
    """
    lines = ["[status]", f"listen = [{_toml(LOOPBACK)}]"]
    for name, keys, backends in proxies:
        lines += ["", "[[proxy]]", f"name = {_toml(name)}", f"listen = [{_toml(LOOPBACK)}]"]
        lines += [f"{key} = {_toml(value)}" for key, value in keys.items()]
        for backend in backends:
            lines += ["", "[[proxy.backend]]"]
            lines += [f"{key} = {_toml(value)}" for key, value in backend.items()]
    path = os.path.join(tmp, "checks.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


class _ChecksTestCase(_IntegrationTestCase):
    def startChecked(
        self, proxies: Sequence[tuple[str, dict[str, Any], Sequence[dict[str, Any]]]]
    ) -> tuple[Twistd, dict[str, int], int]:
        """
        Start C{twistd sockproxy} with C{proxies}.

        @return: the process, each proxy's port by name, the status port.
        """
        proxy = self.startProxy(writeConfig(self.tmp, proxies), readyCount=len(proxies))
        ports: dict[str, int] = {}
        status = 0
        for owner, _, address in boundAddresses(proxy, len(proxies) + 1):
            port = int(address.rsplit(":", 1)[1])
            if owner == "status":
                status = port
            else:
                ports[owner.split(" ", 1)[1]] = port
        return proxy, ports, status

    def status(self, port: int) -> dict[str, dict[str, dict[str, Any]]]:
        """
        Each proxy's backends, by proxy name and label, as C{/status.json}
        shows them; the proxy's own counters under the label C{""}.
        """
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=10) as r:
            document = json.load(r)
        found = {}
        for p in document["proxies"]:
            backends = {b["label"]: b for b in p["backends"]}
            backends[""] = p
            found[p["name"]] = backends
        return found


def startRedis(case: _IntegrationTestCase, path: str) -> Twistd:
    """
    Start redis-server listening on the unix socket C{path} only (no TCP
    port to race for), and wait until it accepts connections.
    """
    process = Twistd(
        ["--port", "0", "--unixsocket", path, "--save", "", "--appendonly", "no",
         "--dir", case.tmp],
        cwd=case.tmp, program=REDIS, daemonArgs=(),
    )
    case.addCleanup(process.stop)
    process.waitFor("ready to accept connections", timeout=10)
    return process


def ping(port: int) -> bytes:
    """
    Send a redis PING through the proxy on C{port}; return the reply.
    """
    with connect(("127.0.0.1", port)) as conn:
        return exchange(conn, b"PING\r\n", Deadline(10, "PING through the proxy"))


class RedisCheckIntegrationTests(_ChecksTestCase):
    """
    A redis backend checked with C{send-expect} (PING, +PONG).
    """

    def test_killAndRestart(self) -> None:
        """
        When redis is killed, its backend is marked down within C{fall}
        intervals (and a probe's timeout), once in the log; clients go to
        the other backend meanwhile, none refused; once redis is back it
        is up again after C{rise} good checks and takes clients again.
        """
        if not os.path.exists(REDIS):
            raise SkipTest(f"{REDIS} is not installed")
        interval, fall, rise = 0.3, 3, 2
        paths = [os.path.join(self.tmp, f"r{i}.sock") for i in (1, 2)]
        first = startRedis(self, paths[0])
        startRedis(self, paths[1])
        check = {
            "check": "send-expect", "check-send": "PING\r\n", "check-expect": "+PONG",
            "check-interval": interval, "check-timeout": 0.5, "fall": fall, "rise": rise,
        }
        proxy, ports, statusPort = self.startChecked([(
            "redis", {"balance": "round-robin", **check},
            [{"endpoint": f"unix:{paths[0]}", "label": "r1"},
             {"endpoint": f"unix:{paths[1]}", "label": "r2"}],
        )])
        port = ports["redis"]
        for _ in range(4):
            self.assertEqual(ping(port), b"+PONG\r\n")
        first.process.kill()
        first.waitForExit(10)
        killed = time.monotonic()
        [down] = proxy.waitFor("backend r1 is down", timeout=10)
        tookDown = time.monotonic() - killed
        self.assertIn("(health check: ", down)
        self.assertIn(f"{fall} failed checks in a row)", down)
        # The first failed probe comes within one interval (and its jitter),
        # then fall - 1 more; the slack is for a loaded machine.
        self.assertLess(tookDown, fall * interval * 1.1 + 0.5 + 1.0)
        before = self.status(statusPort)["redis"]
        self.assertEqual(before["r1"]["state"], "unhealthy")
        for _ in range(10):
            self.assertEqual(ping(port), b"+PONG\r\n")
        after = self.status(statusPort)["redis"]
        self.assertEqual(after[""]["refused"], 0)
        self.assertEqual(after["r1"]["failed"], before["r1"]["failed"],
                         "no session tried the backend down by checks")
        self.assertEqual(after["r2"]["connected"] - before["r2"]["connected"], 10)

        startRedis(self, paths[0])
        restarted = time.monotonic()
        [up] = proxy.waitFor("backend r1 is up again", timeout=10)
        self.assertIn(f"({rise} good checks in a row)", up)
        tookUp = time.monotonic() - restarted
        for _ in range(4):
            self.assertEqual(ping(port), b"+PONG\r\n")
        final = self.status(statusPort)["redis"]
        self.assertGreater(final["r1"]["connected"], after["r1"]["connected"])
        self.assertEqual(final["r1"]["check"]["state"], "up")
        self.assertEqual(final[""]["refused"], 0)
        proxy.stop()
        self.assertEqual(len(proxy.matching("backend r1 is down")), 1, proxy.output)
        self.assertEqual(len(proxy.matching("backend r1 is up again")), 1, proxy.output)
        self.assertEqual(proxy.matching("Traceback"), [], proxy.output)
        print(f"\nredis killed: down after {tookDown:.2f}s (interval {interval}s, fall {fall}); "
              f"restarted: up after {tookUp:.2f}s (rise {rise})")


def echoOnce(port: int) -> bool:
    """
    One short session through the proxy on C{port}: whether it was echoed.
    """
    try:
        with connect(("127.0.0.1", port), timeout=5) as conn:
            return exchange(conn, b"hello\n", Deadline(5, "echo")) == b"hello\n"
    except OSError:
        return False


def killUnderLoad(
    case: _ChecksTestCase, seconds: float, interval: float = 0.2
) -> dict[str, dict[str, int]]:
    """
    Two proxies, C{checked} (connect checks every C{interval}, fall 2) and
    C{passive} (none), each with a victim backend and a good one (both
    proxies share them), disable-time 0.2 s, balance round-robin. Sessions
    run through both proxies in turn; the victim is killed; sessions go on
    for C{seconds}.

    @return: per proxy, the session connects the victim failed after it
        was killed, the clients not served, and the proxy's refused count.
    """
    victimSocket = refusingSocket(case)
    victim = Server(echoHandler, bound=victimSocket)
    case.addCleanup(victim.stop)
    good = case.startServer(echoHandler)
    backends = [
        {"endpoint": victim.endpoint, "label": "victim", "disable-time": 0.2},
        {"endpoint": good.endpoint, "label": "good", "disable-time": 0.2},
    ]
    proxy, ports, statusPort = case.startChecked([
        ("checked", {"balance": "round-robin", "check": "connect",
                     "check-interval": interval, "check-timeout": 0.5, "fall": 2},
         backends),
        ("passive", {"balance": "round-robin"}, backends),
    ])
    for _ in range(4):
        for name in ports:
            assert echoOnce(ports[name])
    before = case.status(statusPort)
    victim.stop()
    unserved = {name: 0 for name in ports}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for name in ports:
            if not echoOnce(ports[name]):
                unserved[name] += 1
    after = case.status(statusPort)
    proxy.stop()
    return {
        name: {
            "failed": after[name]["victim"]["failed"] - before[name]["victim"]["failed"],
            "unserved": unserved[name],
            "refused": after[name][""]["refused"],
            "sessions": after[name][""]["accepted"] - before[name][""]["accepted"],
        }
        for name in ports
    }


class KilledUnderLoadIntegrationTests(_ChecksTestCase):
    """
    A backend killed while clients come: health checks stop the failed
    connects that passive checks alone keep paying.
    """

    def test_checksStopFailedConnects(self) -> None:
        """
        With checks, sessions stop trying the killed backend once it is
        down; without, every disable-time a session tries it again and
        fails over. Clients are served either way.
        """
        result = killUnderLoad(self, seconds=3.0)
        checked, passive = result["checked"], result["passive"]
        print(f"\nbackend killed under load, 3 s: {result}")
        self.assertEqual((checked["unserved"], passive["unserved"]), (0, 0))
        self.assertEqual((checked["refused"], passive["refused"]), (0, 0))
        self.assertLess(checked["failed"], passive["failed"])
        self.assertLessEqual(checked["failed"], 3)


class TLSCheckIntegrationTests(_ChecksTestCase):
    """
    The C{connect} check of a TLS backend is its TLS handshake and
    certificate check, through the backend's own endpoint.
    """

    def test_certificateChecked(self) -> None:
        """
        A TLS backend whose certificate is not valid for its name accepts
        TCP connects, yet its connect check fails with the certificate's
        problem and marks it down; a backend with a good certificate stays
        up. Probes count in no session counter.
        """
        ca = Authority()
        caFile = ca.writeCA(self.tmp)
        wrong = self.startServer(tlsEchoHandler(serverContext(
            ca.issue(names=("db.example",)), self.tmp)))
        right = self.startServer(tlsEchoHandler(serverContext(ca.issue(), self.tmp)))
        check = {"check": "connect", "check-interval": 0.2, "fall": 2, "tls": True,
                 "tls-ca": caFile}
        proxy, _, statusPort = self.startChecked([(
            "tls", {},
            [{"endpoint": wrong.endpoint, "label": "wrong", **check},
             {"endpoint": right.endpoint, "label": "right", **check}],
        )])
        [down] = proxy.waitFor("backend wrong is down", timeout=10)
        self.assertIn("TLS certificate does not match the name", down)
        deadline = Deadline(10, "checks of the good backend")
        while self.status(statusPort)["tls"]["right"]["check"]["checks"] < 3:
            deadline.remaining()
        status = self.status(statusPort)["tls"]
        proxy.stop()
        self.assertEqual(status["wrong"]["state"], "unhealthy")
        self.assertIn("TLS certificate does not match the name",
                      status["wrong"]["check"]["last_result"])
        self.assertEqual(status["right"]["state"], "up")
        self.assertEqual(status["right"]["check"]["failures"], 0)
        for label in ("wrong", "right"):
            b = status[label]
            self.assertEqual((b["active"], b["connected"], b["failed"]), (0, 0, 0))
        self.assertGreater(wrong.accepted, 0, "the probes connected over TCP")
        self.assertEqual(proxy.matching("backend right is down"), [])

