"""
Registers txsockproxy's built-in balancers as L{IBalancerFactory} plugins, the
same way a third-party balancer is registered.
"""

from txsockproxy.balancers import (
    fair,
    hashKey,
    leastConnection,
    randomTwo,
    roundRobin,
    sticky,
)

__all__ = ["fair", "hashKey", "leastConnection", "randomTwo", "roundRobin", "sticky"]
