"""
An example txsockproxy balancer: C{failover}.

Every connection goes to the first available backend in config order; the
backends after it are standbys that take over, in order, while the ones
before them are disabled (after a failed connect) or drained. This is the
usual set-up for a primary database with a hot standby, where spreading
clients over both would be wrong.

The balancer is registered as a Twisted plugin by
C{twisted/plugins/failover_balancer_plugin.py} beside this file; see
doc/writing-a-balancer.md.
"""

from __future__ import annotations

from typing import Optional, Sequence

from twisted.plugin import IPlugin
from zope.interface import implementer

from txsockproxy.interfaces import (
    IBackendInfo,
    IBalancer,
    IBalancerFactory,
    IConnectionInfo,
)


@implementer(IBalancer)
class FailoverBalancer:
    """
    Choose the first candidate: the candidates are the available backends,
    in config order.
    """

    def choose(
        self, candidates: Sequence[IBackendInfo], connection: IConnectionInfo
    ) -> Optional[IBackendInfo]:
        return candidates[0]


@implementer(IPlugin, IBalancerFactory)
class FailoverBalancerFactory:
    """
    Makes one L{FailoverBalancer} per proxy that says C{balance = "failover"}.
    """

    name = "failover"
    description = "the first available backend in config order; the others are standbys"

    def __call__(self) -> IBalancer:
        return FailoverBalancer()


failover = FailoverBalancerFactory()
