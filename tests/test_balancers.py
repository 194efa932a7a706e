"""
Tests for the built-in balancers, their plugin registration, and the pool.
"""

from __future__ import annotations

from relay_fakes import Proxy
from twisted.internet.address import IPv4Address
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txsockproxy.balancers import (
    FairBalancer,
    RoundRobinBalancer,
    balancerFactories,
    balancerFactory,
    balancerNames,
)
from txsockproxy.interfaces import IBackendInfo, IBalancer, IBalancerFactory
from txsockproxy.relay import ConnectionInfo


@implementer(IBackendInfo)
class Info:
    """
    A backend as a balancer sees it.
    """

    def __init__(self, label: str, weight: int = 1, active: int = 0) -> None:
        self.label = label
        self.key = f"tcp:host=127.0.0.1:port={sum(map(ord, label))}"
        self.weight = weight
        self.active = active


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
        from relay_fakes import lost

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
        _, ct = proxy.accept()
        self.assertTrue(ct.disconnecting)
        self.assertEqual(proxy.pool.refused, 1)
