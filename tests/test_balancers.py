"""
Tests for the built-in balancers, their plugin registration, and the pool.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.logger import capturedLogs
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.fakes import BackendInfo as Info
from tests.fakes import Proxy
from txsockproxy.backends import describeFailure
from txsockproxy.balancers import (
    FairBalancer,
    HashBalancer,
    RandomTwoBalancer,
    RoundRobinBalancer,
    StickyBalancer,
    balancerFactories,
    balancerFactory,
    balancerNames,
    stableHash,
)
from txsockproxy.interfaces import IBalancer, IBalancerFactory
from txsockproxy.relay import ConnectionInfo

CONNECTION = ConnectionInfo(
    IPv4Address("TCP", "192.0.2.1", 40000), IPv4Address("TCP", "127.0.0.1", 8080)
)


def sequence(balancer: IBalancer, backends: list[Info], n: int) -> str:
    """
    The labels of C{n} successive choices among C{backends}, joined.
    """
    out = []
    for _ in range(n):
        chosen = balancer.choose(backends, CONNECTION)
        assert chosen is not None
        out.append(chosen.label)
    return "".join(out)


class PluginTests(SynchronousTestCase):
    """
    The built-in balancers are found as Twisted plugins, by name.
    """

    def test_builtinsFoundByName(self) -> None:
        """
        C{fair}, C{least-connection} and C{round-robin} are installed
        L{IBalancerFactory} plugins, each providing L{IPlugin}.
        """
        factories = balancerFactories()
        for name in ("fair", "least-connection", "round-robin"):
            factory = factories[name]
            verifyObject(IBalancerFactory, factory)
            self.assertTrue(IPlugin.providedBy(factory))
            self.assertEqual(factory.name, name)
        self.assertIn("round-robin", balancerNames())

    def test_factoriesMakeFreshBalancers(self) -> None:
        """
        Calling a factory gives a new L{IBalancer}, so each proxy has its
        own state.
        """
        for name in ("fair", "least-connection", "round-robin"):
            first, second = balancerFactory(name)(), balancerFactory(name)()
            verifyObject(IBalancer, first)
            self.assertIsNot(first, second)

    def test_unknownName(self) -> None:
        """
        Asking for a balancer nobody installed raises L{KeyError}.
        """
        self.assertRaises(KeyError, balancerFactory, "no-such-balancer")


class FairTests(SynchronousTestCase):
    """
    L{FairBalancer}: least connections relative to weight.
    """

    def test_fewestActive(self) -> None:
        """
        The backend with the fewest active sessions is chosen.
        """
        backends = [Info("a", active=3), Info("b", active=1), Info("c", active=2)]
        self.assertEqual(FairBalancer().choose(backends, CONNECTION).label, "b")  # type: ignore[union-attr]

    def test_tiesGoToFirst(self) -> None:
        """
        Among equally loaded backends, the first in config order wins.
        """
        backends = [Info("a", active=1), Info("b", active=0), Info("c", active=0)]
        self.assertEqual(FairBalancer().choose(backends, CONNECTION).label, "b")  # type: ignore[union-attr]

    def test_weightScalesLoad(self) -> None:
        """
        Active sessions are compared relative to weight: 3 sessions on a
        weight-4 backend is lighter than 1 on a weight-1 backend.
        """
        backends = [Info("a", active=1), Info("b", weight=4, active=3)]
        self.assertEqual(FairBalancer().choose(backends, CONNECTION).label, "b")  # type: ignore[union-attr]

    def test_sessionsHeldOpen(self) -> None:
        """
        Through a proxy, sessions held open spread evenly, each new one going
        to the least-loaded backend, and a closed session frees its slot.
        """
        proxy = Proxy(labels=("a", "b", "c"))
        chosen = []
        sessions = []
        for _ in range(6):
            client, _ = proxy.accept()
            sessions.append(client)
            chosen.append(client.session.backend.label)  # type: ignore[union-attr]
        self.assertEqual(chosen, ["a", "b", "c", "a", "b", "c"])
        for label in "abc":
            self.assertEqual(proxy.backends[label].active, 2)
        # Connect b's sessions and close one of them: b is now the lightest.
        proxy.endpoints["b"].succeed()
        sessions[1].readConnectionLost()
        from tests.fakes import lost

        sessions[1].connectionLost(lost(clean=False))
        self.assertEqual(proxy.backends["b"].active, 1)
        client, _ = proxy.accept()
        self.assertEqual(client.session.backend.label, "b")  # type: ignore[union-attr]


class RoundRobinTests(SynchronousTestCase):
    """
    L{RoundRobinBalancer}: smooth weighted round-robin.
    """

    def test_plainSequence(self) -> None:
        """
        With equal weights the backends are taken in config order, cyclically.
        """
        backends = [Info("a"), Info("b"), Info("c")]
        self.assertEqual(sequence(RoundRobinBalancer(), backends, 7), "abcabca")

    def test_weightedIsSmooth(self) -> None:
        """
        Weights 3:1 give aaba aaba, never aaab.
        """
        backends = [Info("a", weight=3), Info("b", weight=1)]
        self.assertEqual(sequence(RoundRobinBalancer(), backends, 8), "aabaaaba")

    def test_weighted521(self) -> None:
        """
        nginx's example weights 5:1:1 give a a b a c a a per cycle of 7.
        """
        backends = [Info("a", weight=5), Info("b"), Info("c")]
        self.assertEqual(sequence(RoundRobinBalancer(), backends, 7), "aabacaa")

    def test_skipsUnavailable(self) -> None:
        """
        A backend missing from the candidates is skipped; the cycle restarts
        over the remaining ones, which share the connections equally, and
        again over all of them once it is back.
        """
        a, b, c = Info("a"), Info("b"), Info("c")
        balancer = RoundRobinBalancer()
        self.assertEqual(sequence(balancer, [a, b, c], 2), "ab")
        self.assertEqual(sequence(balancer, [a, c], 4), "acac")
        self.assertEqual(sequence(balancer, [a, b, c], 6), "abcabc")

    def test_onePerProxy(self) -> None:
        """
        Each proxy's balancer has its own cursor.
        """
        backends = [Info("a"), Info("b")]
        first, second = RoundRobinBalancer(), RoundRobinBalancer()
        self.assertEqual(sequence(first, backends, 1), "a")
        self.assertEqual(sequence(second, backends, 1), "a")
        self.assertEqual(sequence(first, backends, 1), "b")


class PoolTests(SynchronousTestCase):
    """
    L{BackendPool} asks the balancer among available backends only.
    """

    def test_balancerSeesOnlyAvailable(self) -> None:
        """
        A disabled backend is not offered to the balancer until its
        disable-time is over.
        """
        seen: list[list[str]] = []

        @implementer(IBalancer)
        class Recorder:
            def choose(self, candidates, connection):  # type: ignore[no-untyped-def]
                seen.append([c.label for c in candidates])
                return candidates[0]

        proxy = Proxy(labels=("a", "b"), balancer=Recorder(), disableTime=3)
        proxy.backends["a"].disabledUntil = 3
        proxy.accept()
        proxy.clock.advance(3)
        proxy.accept()
        self.assertEqual(seen, [["b"], ["a", "b"]])

    def test_balancerMayRefuse(self) -> None:
        """
        A balancer that returns L{None} refuses the connection: the client is
        closed and counted as refused.
        """

        @implementer(IBalancer)
        class Refuser:
            def choose(self, candidates, connection):  # type: ignore[no-untyped-def]
                return None

        proxy = Proxy(balancer=Refuser())
        with capturedLogs() as events:
            _, ct = proxy.accept()
        self.assertTrue(ct.disconnecting)
        self.assertEqual(proxy.pool.refused, 1)
        # The backends are not down: nothing says so.
        self.assertFalse(any("all backends down" in e.get("log_format", "") for e in events))


class DescribeFailureTests(SynchronousTestCase):
    """
    L{describeFailure} says in a few words why a connect failed.
    """

    def test_reasons(self) -> None:
        """
        Refused, timed out (also as a cancelled connect, as wrapped
        endpoints report the timeout), unresolvable, and an OS error by its
        message.
        """
        from twisted.internet import defer, error
        from twisted.python.failure import Failure

        def describe(e: BaseException) -> str:
            return describeFailure(Failure(e), 2)

        self.assertEqual(describe(error.ConnectionRefusedError()), "connection refused")
        self.assertEqual(describe(defer.TimeoutError()), "connect timeout after 2s")
        self.assertEqual(describe(defer.CancelledError()), "connect timeout after 2s")
        self.assertEqual(describe(error.ConnectingCancelledError(None)),
                         "connect timeout after 2s")
        self.assertEqual(describe(error.ConnectError(2, "No such file or directory")),
                         "No such file or directory")
        self.assertIn("cannot resolve", describe(error.DNSLookupError("x.invalid")))


def connectionFrom(ip: str, port: int = 40000, serverName: str | None = None) -> ConnectionInfo:
    """
    A connection from C{ip}:C{port} to the listener 127.0.0.1:8080.
    """
    return ConnectionInfo(
        IPv4Address("TCP", ip, port), IPv4Address("TCP", "127.0.0.1", 8080), serverName
    )


ips = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))


class StableHashTests(SynchronousTestCase):
    """
    L{stableHash} is fixed across processes and releases.
    """

    def test_knownValues(self) -> None:
        """
        The hash of known inputs has known values (a change here would move
        every sticky client after an upgrade).
        """
        self.assertEqual(stableHash("192.0.2.1", "tcp:host=10.0.0.1:port=80"), 0x065E7F2F11FEBD91)
        self.assertEqual(stableHash(""), 0xE4A6A0577479B2B4)

    def test_otherProcess(self) -> None:
        """
        Another Python process (with another hash seed) computes the same.
        """
        import subprocess
        import sys

        out = subprocess.run(
            [sys.executable, "-c",
             "from txsockproxy.balancers import stableHash; print(stableHash('a', 'b'))"],
            capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin",
                 "PYTHONPATH": ":".join(sys.path)},
        ).stdout
        self.assertEqual(int(out), stableHash("a", "b"))


class StickyTests(SynchronousTestCase):
    """
    L{StickyBalancer}: weighted rendezvous hashing of the client IP.
    """

    def test_samePlaceWhateverThePort(self) -> None:
        """
        Connections from one IP go to one backend whatever their source port.
        """
        backends = [Info(x) for x in "abcde"]
        balancer = StickyBalancer()
        chosen = {balancer.choose(backends, connectionFrom("198.51.100.7", port)).label  # type: ignore[union-attr]
                  for port in range(1000, 1050)}
        self.assertEqual(len(chosen), 1)

    @settings(max_examples=20, deadline=None)
    @given(weights=st.lists(st.integers(1, 5), min_size=2, max_size=6))
    def test_spreadFollowsWeights(self, weights: list[int]) -> None:
        """
        Over 6000 client IPs each backend's share is within 4 percentage
        points of its weight's share.
        """
        backends = [Info(f"b{i}", weight=w) for i, w in enumerate(weights)]
        balancer = StickyBalancer()
        counts = dict.fromkeys(range(len(backends)), 0)
        n = 6000
        for i in range(n):
            ip = f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"
            chosen = balancer.choose(backends, connectionFrom(ip))
            counts[backends.index(chosen)] += 1  # type: ignore[arg-type]
        total = sum(weights)
        for i, w in enumerate(weights):
            self.assertLess(abs(counts[i] / n - w / total), 0.04, (weights, counts))

    @settings(max_examples=40, deadline=None)
    @given(
        n=st.integers(2, 8),
        removed=st.integers(0, 7),
        clients=st.lists(ips, min_size=1, max_size=60, unique=True),
    )
    def test_removalMovesOnlyItsKeys(self, n: int, removed: int, clients: list[str]) -> None:
        """
        Removing one of N backends moves only the clients that were on it;
        every other client keeps its backend.
        """
        backends = [Info(f"b{i}", weight=1 + i % 3) for i in range(n)]
        gone = backends[removed % n]
        rest = [b for b in backends if b is not gone]
        balancer = StickyBalancer()
        for ip in clients:
            before = balancer.choose(backends, connectionFrom(ip))
            after = balancer.choose(rest, connectionFrom(ip))
            if before is not gone:
                self.assertIs(after, before)
            else:
                self.assertIsNot(after, gone)


class HashTests(SynchronousTestCase):
    """
    L{HashBalancer}: rendezvous hashing of the SNI name, else the listen
    address.
    """

    def test_plainListenerUsesOneBackend(self) -> None:
        """
        Without an SNI name every connection to one listener goes to one
        backend whatever the client, and fails over in a stable order.
        """
        backends = [Info(x) for x in "abcd"]
        balancer = HashBalancer()
        chosen = {balancer.choose(backends, connectionFrom(f"10.0.0.{i}")).label  # type: ignore[union-attr]
                  for i in range(50)}
        self.assertEqual(len(chosen), 1)
        first = chosen.pop()
        rest = [b for b in backends if b.label != first]
        second = balancer.choose(rest, connectionFrom("10.0.0.1"))
        self.assertEqual(balancer.choose(rest, connectionFrom("10.9.9.9")), second)

    def test_serverNameDecides(self) -> None:
        """
        With an SNI name the name decides, case-insensitively, whatever the
        client's address.
        """
        backends = [Info(x) for x in "abcdefgh"]
        balancer = HashBalancer()
        self.assertTrue(balancer.wantsServerName)
        names = [f"host{i}.example" for i in range(40)]
        placed = {n: balancer.choose(backends, connectionFrom("10.0.0.1", serverName=n)) for n in names}
        self.assertGreater(len({b.label for b in placed.values() if b}), 4)
        for n in names:
            again = balancer.choose(backends, connectionFrom("10.7.7.7", serverName=n.upper()))
            self.assertIs(again, placed[n])

    @settings(max_examples=40, deadline=None)
    @given(
        n=st.integers(2, 8),
        removed=st.integers(0, 7),
        names=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=40, unique=True),
    )
    def test_removalMovesOnlyItsKeys(self, n: int, removed: int, names: list[str]) -> None:
        """
        Removing one of N backends moves only the names that were on it.
        """
        backends = [Info(f"b{i}") for i in range(n)]
        gone = backends[removed % n]
        rest = [b for b in backends if b is not gone]
        balancer = HashBalancer()
        for name in names:
            before = balancer.choose(backends, connectionFrom("10.0.0.1", serverName=name))
            after = balancer.choose(rest, connectionFrom("10.0.0.1", serverName=name))
            if before is not gone:
                self.assertIs(after, before)


class RandomTwoTests(SynchronousTestCase):
    """
    L{RandomTwoBalancer}: the less loaded of two random candidates.
    """

    def test_neverTheMostLoaded(self) -> None:
        """
        Of two distinct random candidates the less loaded wins, so the single
        most loaded backend is never chosen.
        """
        import random

        backends = [Info("a", active=1), Info("b", active=9), Info("c", active=2)]
        balancer = RandomTwoBalancer(random.Random(4))
        chosen = sequence(balancer, backends, 200)
        self.assertNotIn("b", chosen)
        self.assertIn("a", chosen)
        self.assertIn("c", chosen)

    def test_single(self) -> None:
        """
        A single candidate is chosen.
        """
        self.assertEqual(sequence(RandomTwoBalancer(), [Info("a", active=5)], 3), "aaa")

    def test_evenSpreadWhenIdle(self) -> None:
        """
        With equal loads and weights every backend gets a fair share.
        """
        import random

        backends = [Info(x) for x in "abcd"]
        chosen = sequence(RandomTwoBalancer(random.Random(1)), backends, 4000)
        for x in "abcd":
            self.assertLess(abs(chosen.count(x) / 4000 - 0.25), 0.04)


class AllBalancersTests(SynchronousTestCase):
    """
    Every built-in balancer provides L{IBalancer} and picks a candidate.
    """

    def test_verifyAll(self) -> None:
        """
        Every installed built-in balancer and its factory verify, and the
        balancer returns one of the candidates.
        """
        backends = [Info("a"), Info("b", weight=2)]
        for name in ("fair", "least-connection", "round-robin", "sticky", "hash", "random-two"):
            factory = balancerFactory(name)
            verifyObject(IBalancerFactory, factory)
            balancer = factory()
            verifyObject(IBalancer, balancer)
            self.assertIn(balancer.choose(backends, CONNECTION), backends)
