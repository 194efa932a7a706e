"""
Integration tests of C{workers = 2}: C{twistd -n sockproxy} run as a user
runs it, on loopback. Sessions are served by both workers; a worker killed
is restarted and logged while the other goes on serving; SIGHUP reaches
both; the status site's totals are the sums of the workers' figures; SIGTERM
stops every process.

Every wait is bounded (log lines, socket timeouts, loops of a fixed count).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from typing import Any

from tests.integration_support import (
    BOUND,
    LOOPBACK,
    Deadline,
    Server,
    Twistd,
    connect,
    echoHandler,
    exchange,
    tomlString,
)
from tests.test_integration import _IntegrationTestCase


def taggedHandler(tag: bytes) -> Any:
    """
    A backend that answers every connection with C{tag} and closes.
    """

    def handler(conn: socket.socket, server: Server) -> None:
        conn.sendall(tag)
        conn.close()

    return handler


def alive(pid: int) -> bool:
    """
    Whether process C{pid} runs (a zombie does not).
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


class WorkersIntegrationTests(_IntegrationTestCase):
    """
    C{workers = 2} under C{twistd -n sockproxy}.
    """

    def writeConfig(self, backend: str, label: str) -> str:
        path = os.path.join(self.tmp, "sockproxy.toml")
        text = "\n".join([
            "workers = 2",
            "[status]",
            f"listen = {tomlString(LOOPBACK)}",
            "[[proxy]]",
            'name = "p"',
            f"listen = {tomlString(LOOPBACK)}",
            "[[proxy.backend]]",
            f"label = {tomlString(label)}",
            f"endpoint = {tomlString(backend)}",
        ]) + "\n"
        with open(path + ".new", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".new", path)
        return path

    def start(self, backend: Server, label: str = "one",
              **env: str) -> tuple[Twistd, int, int]:
        """
        Start the proxy with 2 workers; return it, its proxy port and its
        status port (both bound by the parent).
        """
        proxy = self.startTwistd(["sockproxy", "--config", self.writeConfig(backend.endpoint,
                                                                             label)],
                                 ready="serving", readyCount=2, env=self.environ(**env))
        ports = {}
        for line in proxy.lines:
            match = BOUND.search(line)
            if match is not None and " worker " not in line:
                ports[match["owner"]] = int(match["address"].rpartition(":")[2])
        return proxy, ports["proxy p"], ports["status"]

    def status(self, port: int, path: str = "status.json") -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=10) as answer:
            body = answer.read().decode("utf-8")
        return json.loads(body) if path.endswith(".json") else body

    def sessionsOnBothWorkers(self, proxyPort: int, statusPort: int, check: Any) -> dict[str, Any]:
        """
        Open sessions, 10 at once, until both workers have served some
        (at most 30 rounds); C{check(conn, deadline)} runs each.

        @return: the last status document.
        """
        for _ in range(30):
            deadline = Deadline(10, "a round of sessions")
            conns = [connect(("127.0.0.1", proxyPort)) for _ in range(10)]
            for conn in conns:
                with conn:
                    check(conn, deadline)
            document = self.status(statusPort)
            served = [w["status"]["proxies"][0]["accepted"] for w in document["workers"]]
            if all(served):
                return document
        self.fail(f"sessions were not served by both workers: {served}")

    def test_bothWorkersServeAndStatusTotals(self) -> None:
        """
        Sessions are served by both workers; the status site's totals
        (status.json, metrics, server-statistics) are the sums of the
        workers' figures; a reload on SIGHUP reaches both (both use the
        changed backend); SIGTERM stops the parent and both workers.
        """
        backend = self.startServer(echoHandler)
        proxy, proxyPort, statusPort = self.start(backend)

        def echoes(conn: socket.socket, deadline: Deadline) -> None:
            self.assertEqual(exchange(conn, b"ping", deadline), b"ping")

        document = self.sessionsOnBothWorkers(proxyPort, statusPort, echoes)
        workers = document["workers"]
        self.assertEqual([w["worker"] for w in workers], [0, 1])
        self.assertEqual([w["state"] for w in workers], ["serving", "serving"])
        pids = [w["pid"] for w in workers]
        self.assertEqual(len(set(pids + [proxy.pid])), 3)
        for key in ("accepted", "active", "refused"):
            self.assertEqual(document["proxies"][0][key],
                             sum(w["status"]["proxies"][0][key] for w in workers), key)
        for key in ("connected", "bytes_in", "bytes_out", "failed"):
            self.assertEqual(
                document["proxies"][0]["backends"][0][key],
                sum(w["status"]["proxies"][0]["backends"][0][key] for w in workers), key)
        accepted = document["proxies"][0]["accepted"]
        metrics = self.status(statusPort, "metrics")
        self.assertIn(f'sockproxy_accepted_total{{proxy="p"}} {accepted}\n', metrics)
        for w in workers:
            count = w["status"]["proxies"][0]["accepted"]
            self.assertIn(f'sockproxy_worker_accepted_total{{proxy="p",worker="{w["worker"]}"}} '
                          f"{float(count)}", metrics)
        statistics = self.status(statusPort, "server-statistics")
        connected = document["proxies"][0]["backends"][0]["connected"]
        self.assertIn(f"sockproxy.requests: {connected}\n", statistics)
        page = self.status(statusPort, "")
        self.assertIn('data-worker="1"', page)

        # A reload reaches both workers: both use the new backend.
        changed = self.startServer(taggedHandler(b"changed"))
        self.writeConfig(changed.endpoint, "two")
        os.kill(proxy.pid, signal.SIGHUP)
        # Each worker's line, and the parent's once both answered.
        proxy.waitFor("reload: applied", count=3, timeout=15)
        proxy.waitFor("(2 workers)", timeout=15)
        self.assertEqual(proxy.matching("kept its running configuration"), [])

        def tagged(conn: socket.socket, deadline: Deadline) -> None:
            conn.settimeout(deadline.remaining())
            self.assertEqual(conn.recv(100), b"changed")

        before = {w["worker"]: w["status"]["proxies"][0]["accepted"] for w in workers}
        for _ in range(30):
            document = self.status(statusPort)
            served = [w["status"]["proxies"][0]["backends"][0]["connected"]
                      for w in document["workers"]]
            if all(served) and document["proxies"][0]["backends"][0]["label"] == "two":
                break
            deadline = Deadline(10, "a round of sessions")
            for conn in [connect(("127.0.0.1", proxyPort)) for _ in range(10)]:
                with conn:
                    tagged(conn, deadline)
        else:
            self.fail(f"the new backend was not used by both workers: {served}")
        self.assertTrue(all(w["status"]["proxies"][0]["accepted"] > before[w["worker"]]
                            for w in document["workers"]))

        # SIGTERM: the parent and both workers end.
        os.kill(proxy.pid, signal.SIGTERM)
        # twistd ends with the signal that stopped it, as in one process.
        self.assertEqual(proxy.waitForExit(timeout=20), -signal.SIGTERM, proxy.output)
        self.assertEqual(len(proxy.matching("exited with status 0")), 2)
        for pid in pids:
            self.assertFalse(alive(pid), f"worker {pid} left running")
        self.assertEqual(proxy.matching("died"), [])
        self.assertNoHandlerErrors(backend, changed)

    def killWorker(self, **env: str) -> bool:
        """
        Start the proxy, kill worker 1 with SIGKILL, and check that it is
        logged once with its signal and restarted, and that every session
        opened meanwhile is served.

        @return: whether a session was served before the restarted worker
            was serving.
        """
        backend = self.startServer(echoHandler)
        proxy, proxyPort, statusPort = self.start(backend, **env)
        document = self.status(statusPort)
        victim = document["workers"][1]["pid"]
        os.kill(victim, signal.SIGKILL)
        servedBefore = False
        deadline = Deadline(20, "sessions while a worker restarts")
        for i in range(20):
            with connect(("127.0.0.1", proxyPort)) as conn:
                self.assertEqual(exchange(conn, b"x%d" % i, deadline), b"x%d" % i)
            servedBefore = servedBefore or len(proxy.matching(") serving")) < 3
        [died] = proxy.waitFor("died", count=1, timeout=15)
        self.assertIn(f"worker 1 (pid {victim}) died: killed by signal 9 (SIGKILL)", died)
        self.assertIn("restarting at once", died)
        proxy.waitFor(") serving", count=3, timeout=15)
        document = self.status(statusPort)
        restarted = document["workers"][1]
        self.assertEqual((restarted["state"], restarted["restarts"]), ("serving", 1))
        self.assertNotEqual(restarted["pid"], victim)
        self.assertFalse(alive(victim))
        self.assertEqual(document["proxies"][0]["refused"], 0)
        deadline = Deadline(10, "sessions after the restart")
        for _ in range(5):
            with connect(("127.0.0.1", proxyPort)) as conn:
                self.assertEqual(exchange(conn, b"y", deadline), b"y")
        self.assertEqual(len(proxy.matching("died")), 1)
        self.assertNoHandlerErrors(backend)
        return servedBefore

    def test_killedWorkerRestarted(self) -> None:
        """
        A worker killed with SIGKILL is logged once with its signal and
        restarted; every session opened meanwhile is served (with a socket
        per worker, those the kernel gives the dead worker's socket wait in
        it for the new worker).
        """
        self.killWorker()

    def test_killedWorkerSharedSocket(self) -> None:
        """
        With one shared socket, a worker killed is restarted and the other
        serves the sessions meanwhile, without waiting for the restart.
        """
        self.assertTrue(self.killWorker(TXSOCKPROXY_WORKER_SOCKETS="shared"))

    def test_burstSpreadOverWorkers(self) -> None:
        """
        With a socket per worker (the default for TCP), 40 connections
        opened at once are shared out about evenly by the kernel.
        """
        backend = self.startServer(echoHandler)
        proxy, proxyPort, statusPort = self.start(backend)
        conns = [connect(("127.0.0.1", proxyPort)) for _ in range(40)]
        deadline = Deadline(10, "a burst of sessions")
        for conn in conns:
            self.addCleanup(conn.close)
            conn.sendall(b"z")
        for conn in conns:
            conn.settimeout(deadline.remaining())
            self.assertEqual(conn.recv(1), b"z")
        document = self.status(statusPort)
        active = [w["status"]["proxies"][0]["active"] for w in document["workers"]]
        self.assertEqual(sum(active), 40)
        # A hash of 40 connections: both well used (a shared socket here
        # typically gives one worker two thirds or more).
        self.assertGreaterEqual(min(active), 8, active)

    def test_workerRestartedWhileFileBroken(self) -> None:
        """
        A worker killed while the configuration file is broken (an operator
        in the middle of an edit) comes back with the configuration the
        parent last loaded, and serves; a SIGHUP then refuses the file and
        every worker keeps serving.
        """
        backend = self.startServer(echoHandler)
        proxy, proxyPort, statusPort = self.start(backend)
        with open(os.path.join(self.tmp, "sockproxy.toml"), "w", encoding="utf-8") as f:
            f.write("workers = 2\n[[proxy]]\nname = ")
        victim = self.status(statusPort)["workers"][1]["pid"]
        os.kill(victim, signal.SIGKILL)
        proxy.waitFor("died", count=1, timeout=15)
        proxy.waitFor(") serving", count=3, timeout=15)
        self.assertEqual(proxy.matching("cannot serve"), [])

        def echoes(conn: socket.socket, deadline: Deadline) -> None:
            self.assertEqual(exchange(conn, b"ping", deadline), b"ping")

        document = self.sessionsOnBothWorkers(proxyPort, statusPort, echoes)
        self.assertEqual([w["state"] for w in document["workers"]], ["serving", "serving"])
        self.assertNotEqual(document["workers"][1]["pid"], victim)
        os.kill(proxy.pid, signal.SIGHUP)
        proxy.waitFor("reload failed: keeping the running configuration", timeout=15)
        deadline = Deadline(10, "sessions after the refused reload")
        for _ in range(10):
            with connect(("127.0.0.1", proxyPort)) as conn:
                echoes(conn, deadline)
        self.assertEqual(len(proxy.matching("died")), 1)
        self.assertNoHandlerErrors(backend)

    def test_stoppedWorkerNotAnswering(self) -> None:
        """
        A worker stopped with SIGSTOP holds up neither the status site
        (it is shown as not answering) nor a reload (applied by the other
        worker, logged as not answered); once continued, it answers again
        and is given the configuration it missed.
        """
        backend = self.startServer(echoHandler)
        proxy, proxyPort, statusPort = self.start(backend)
        victim = self.status(statusPort)["workers"][1]["pid"]
        os.kill(victim, signal.SIGSTOP)
        self.addCleanup(lambda: alive(victim) and os.kill(victim, signal.SIGCONT))
        worker = self.status(statusPort)["workers"][1]
        self.assertEqual((worker["answered"], worker["problem"]), (False, "not answering"))

        changed = self.startServer(taggedHandler(b"changed"))
        self.writeConfig(changed.endpoint, "two")
        os.kill(proxy.pid, signal.SIGHUP)
        [line] = proxy.waitFor("reload: worker 1 did not answer", timeout=30)
        self.assertIn("it is given the configuration when it answers again", line)
        proxy.waitFor("(1 workers)", timeout=15)
        self.assertEqual(len(proxy.matching(f"worker 1 (pid {victim}) is not answering")), 1)

        os.kill(victim, signal.SIGCONT)
        proxy.waitFor(f"worker 1 (pid {victim}) answers again", timeout=15)
        proxy.waitFor("worker 1 caught up", timeout=15)
        workers = self.status(statusPort)["workers"]
        self.assertEqual([w["answered"] for w in workers], [True, True])
        self.assertEqual([w["status"]["proxies"][0]["backends"][0]["label"] for w in workers],
                         ["two", "two"])
        self.assertEqual(workers[1]["pid"], victim)
        self.assertEqual(proxy.matching("died"), [])
        self.assertNoHandlerErrors(backend, changed)

    def test_stoppedWorkerFoundByHeartbeat(self) -> None:
        """
        A worker stopped with SIGSTOP is found by the parent's heartbeat,
        with nothing else asking it (no status request, no admin action):
        its own socket leaves the listener's SO_REUSEPORT group, and every
        new connection is served by the other worker at once. Continued, it
        answers again.
        """
        backend = self.startServer(echoHandler)
        proxy, proxyPort, statusPort = self.start(backend)
        victim = self.status(statusPort)["workers"][1]["pid"]
        os.kill(victim, signal.SIGSTOP)
        self.addCleanup(lambda: alive(victim) and os.kill(victim, signal.SIGCONT))
        [line] = proxy.waitFor(f"worker 1 (pid {victim}) is not answering", timeout=20)
        self.assertIn("no answer to Ping", line)
        self.assertIn("its own socket of 1 listener(s) closed meanwhile", line)
        deadline = Deadline(1.5, "sessions while worker 1 is stopped")
        for i in range(10):
            with connect(("127.0.0.1", proxyPort)) as conn:
                self.assertEqual(exchange(conn, b"s%d" % i, deadline), b"s%d" % i)
        os.kill(victim, signal.SIGCONT)
        proxy.waitFor(f"worker 1 (pid {victim}) answers again", timeout=15)
        self.assertNoHandlerErrors(backend)

    def test_allWorkersStopped(self) -> None:
        """
        With every worker stopped, the last socket stays in the group:
        new connections wait in its queue (none is refused) and are served
        once that socket's worker continues. (Had the other worker come
        back first, that socket would have left the group, and the
        connections queued there would have been reset: documented.)
        """
        backend = self.startServer(echoHandler)
        proxy, proxyPort, statusPort = self.start(backend)
        pids = [w["pid"] for w in self.status(statusPort)["workers"]]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            self.addCleanup(lambda pid=pid: alive(pid) and os.kill(pid, signal.SIGCONT))
        proxy.waitFor("is not answering", count=2, timeout=20)
        [kept] = proxy.matching("kept listening")
        self.assertIn("so new connections queue", kept)
        keeper = int(kept.split("(pid ", 1)[1].split(")", 1)[0])
        conns = [connect(("127.0.0.1", proxyPort)) for _ in range(6)]
        os.kill(keeper, signal.SIGCONT)
        deadline = Deadline(15, "sessions queued while every worker was stopped")
        for i, conn in enumerate(conns):
            with conn:
                self.assertEqual(exchange(conn, b"q%d" % i, deadline), b"q%d" % i)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        proxy.waitFor("answers again", count=2, timeout=15)
        self.assertNoHandlerErrors(backend)

    def test_noConnectionStrandedDuringBackoff(self) -> None:
        """
        While a worker that died again soon waits out its back-off (2 s at
        the fourth quick death), its own socket is out of the listener's
        SO_REUSEPORT group: every new connection is served by the other
        worker at once instead of waiting in the dead worker's queue.
        """
        backend = self.startServer(echoHandler)
        proxy, proxyPort, statusPort = self.start(backend)
        for deaths, when in enumerate(["at once", "in 0.5s", "in 1s", "in 2s"], 1):
            victim = self.status(statusPort)["workers"][1]["pid"]
            os.kill(victim, signal.SIGKILL)
            died = proxy.waitFor("died", count=deaths, timeout=15)[-1]
            self.assertIn(f"worker 1 (pid {victim}) died", died)
            self.assertIn(f"restarting {when}", died)
            if deaths < 4:
                proxy.waitFor(") serving", count=2 + deaths, timeout=15)
        self.assertIn("(its own socket of 1 listener(s) closed meanwhile)", died)
        conns = [connect(("127.0.0.1", proxyPort)) for _ in range(10)]
        deadline = Deadline(1.5, "sessions during the back-off")
        for i, conn in enumerate(conns):
            with conn:
                self.assertEqual(exchange(conn, b"b%d" % i, deadline), b"b%d" % i)
        self.assertEqual(len(proxy.matching(") serving")), 5)
        proxy.waitFor(") serving", count=6, timeout=15)
        self.assertNoHandlerErrors(backend)
