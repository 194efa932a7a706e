"""
The built-in balancers, and finding balancers (ours and third parties') by name.

Every balancer, ours included, is reached through a Twisted plugin providing
L{IBalancerFactory}; ours are registered in C{twisted/plugins/sockproxy_balancers.py}.
"""

from __future__ import annotations

import hashlib
import math
import random
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


def stableHash(*parts: str) -> int:
    """
    A 64-bit hash of C{parts} that is the same in every process, on every
    machine, across restarts (unlike Python's salted C{hash()}).
    """
    digest = hashlib.blake2b(
        "\x00".join(parts).encode("utf-8", "surrogateescape"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big")


def rendezvous(key: str, candidates: Sequence[IBackendInfo]) -> IBackendInfo:
    """
    Weighted rendezvous (highest-random-weight) hashing: the candidate with
    the highest score C{weight / -ln(u)}, where C{u} in (0, 1) is drawn from a
    stable hash of C{key} and the backend's key.

    Each backend receives a share of keys proportional to its weight, and
    removing a backend moves only the keys it had, each to its next-highest
    backend.
    """
    best = candidates[0]
    bestScore = -1.0
    for backend in candidates:
        u = (stableHash(key, backend.key) + 0.5) / 2.0**64
        score = backend.weight / -math.log(u)
        if score > bestScore:
            best, bestScore = backend, score
    return best


def addressKey(address: object) -> str:
    """
    The part of an address that identifies a host: the IP for TCP (no port),
    the path for unix sockets, else its text.
    """
    host = getattr(address, "host", None)
    if isinstance(host, str):
        return host
    name = getattr(address, "name", None)
    if isinstance(name, (str, bytes)):
        return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name
    return str(address)


@implementer(IBalancer)
class StickyBalancer:
    """
    Weighted rendezvous hashing of the client's IP address (without the
    port): a client keeps reaching the same backend while it is available,
    in this process and after a restart.
    """

    def choose(
        self, candidates: Sequence[IBackendInfo], connection: IConnectionInfo
    ) -> Optional[IBackendInfo]:
        return rendezvous(addressKey(connection.peer), candidates)


@implementer(IBalancer)
class HashBalancer:
    """
    Weighted rendezvous hashing of the connection's hash key: the TLS SNI
    server name when known, else the listen address. On a plain listener that
    sends every connection to one backend, failing over in a stable order, as
    lighttpd's C{hash} does.
    """

    wantsServerName = True

    def choose(
        self, candidates: Sequence[IBackendInfo], connection: IConnectionInfo
    ) -> Optional[IBackendInfo]:
        name = connection.serverName
        if name:
            key = "sni:" + name.lower()
        else:
            local = connection.local
            port = getattr(local, "port", None)
            key = "listen:" + addressKey(local) + (f":{port}" if port is not None else "")
        return rendezvous(key, candidates)


@implementer(IBalancer)
class RandomTwoBalancer:
    """
    Power of two random choices: draw two distinct candidates at random
    (weighted) and take the one with fewer active sessions relative to its
    weight (HAProxy's C{random(2)}, nginx's C{random two least_conn}).
    """

    def __init__(self, rng: Optional[random.Random] = None) -> None:
        self._random = rng or random.Random()

    def choose(
        self, candidates: Sequence[IBackendInfo], connection: IConnectionInfo
    ) -> Optional[IBackendInfo]:
        if len(candidates) == 1:
            return candidates[0]
        weights = [backend.weight for backend in candidates]
        first = self._random.choices(range(len(candidates)), weights)[0]
        rest = [i for i in range(len(candidates)) if i != first]
        second = self._random.choices(rest, [weights[i] for i in rest])[0]
        a, b = candidates[first], candidates[second]
        # Ties go to the first draw, so idle backends share connections evenly.
        return b if b.active / b.weight < a.active / a.weight else a


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
sticky = BalancerFactory(
    "sticky", StickyBalancer, "weighted rendezvous hashing of the client IP"
)
hashKey = BalancerFactory(
    "hash", HashBalancer,
    "weighted rendezvous hashing of the TLS SNI name, else the listen address",
)
randomTwo = BalancerFactory(
    "random-two", RandomTwoBalancer,
    "two random choices, the one with fewer active sessions",
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
