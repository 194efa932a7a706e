"""
The built-in balancers, and finding balancers (ours and third parties') by name.

Every balancer, ours included, is reached through a Twisted plugin providing
L{IBalancerFactory}; ours are registered in C{twisted/plugins/sockproxy_balancers.py}.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from txsockproxy.interfaces import (
    IBackendInfo,
    IBalancer,
    IBalancerFactory,
    IConnectionInfo,
)


@implementer(IBalancer)
class FairBalancer:
    """
    Least-connection: the candidate with the fewest active sessions relative
    to its weight; ties go to the first in config order.
    """

    def choose(
        self, candidates: Sequence[IBackendInfo], connection: IConnectionInfo
    ) -> Optional[IBackendInfo]:
        best = candidates[0]
        bestLoad = best.active / best.weight
        for backend in candidates[1:]:
            load = backend.active / backend.weight
            # Strictly less: ties stay with the earlier backend, as lighttpd.
            if load < bestLoad:
                best, bestLoad = backend, load
        return best


@implementer(IBalancer)
class RoundRobinBalancer:
    """
    Smooth weighted round-robin (nginx's algorithm), one state per proxy.

    With equal weights this is plain round-robin in config order; weights 3:1
    give A A B A, never A A A B. When the set of candidates changes (a backend
    is disabled or comes back) the cycle starts afresh over the new set, so
    credit left over from the old set cannot skew the new one.
    """

    def __init__(self) -> None:
        self._current: dict[str, int] = {}
        self._keys: tuple[str, ...] = ()

    def choose(
        self, candidates: Sequence[IBackendInfo], connection: IConnectionInfo
    ) -> Optional[IBackendInfo]:
        keys = tuple(backend.key for backend in candidates)
        if keys != self._keys:
            self._keys = keys
            self._current = {}
        total = 0
        best: Optional[IBackendInfo] = None
        bestWeight = 0
        current = self._current
        for backend in candidates:
            weight = current.get(backend.key, 0) + backend.weight
            current[backend.key] = weight
            total += backend.weight
            if best is None or weight > bestWeight:
                best, bestWeight = backend, weight
        assert best is not None
        current[best.key] = bestWeight - total
        return best


@implementer(IPlugin, IBalancerFactory)
class BalancerFactory:
    """
    An L{IBalancerFactory} that makes balancers by calling C{make}.
    """

    def __init__(self, name: str, make: Callable[[], IBalancer], description: str) -> None:
        self.name = name
        self.description = description
        self._make = make

    def __call__(self) -> IBalancer:
        return self._make()

    def __repr__(self) -> str:
        return f"<BalancerFactory {self.name!r}>"


fair = BalancerFactory(
    "fair", FairBalancer, "fewest active sessions relative to weight (default)"
)
leastConnection = BalancerFactory(
    "least-connection", FairBalancer, "the same as fair"
)
roundRobin = BalancerFactory(
    "round-robin", RoundRobinBalancer, "smooth weighted round-robin, one cursor per proxy"
)


def balancerFactories() -> dict[str, IBalancerFactory]:
    """
    Every installed balancer, by name: ours and any third party's plugins.

    When two plugins claim one name, the first found wins.
    """
    import twisted.plugins

    found: dict[str, IBalancerFactory] = {}
    for factory in getPlugins(IBalancerFactory, twisted.plugins):
        name = getattr(factory, "name", None)
        if isinstance(name, str) and name not in found:
            found[name] = factory
    return found


def balancerNames() -> list[str]:
    """
    The names that may be written in C{balance = "..."}.
    """
    return sorted(balancerFactories())


def balancerFactory(name: str) -> IBalancerFactory:
    """
    The balancer factory called C{name}.

    @raise KeyError: no installed balancer has that name.
    """
    return balancerFactories()[name]
