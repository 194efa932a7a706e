"""
Registers txsockproxy's built-in balancers as L{IBalancerFactory} plugins, the
same way a third-party balancer is registered.
"""

from txsockproxy.balancers import fair, leastConnection, roundRobin

__all__ = ["fair", "leastConnection", "roundRobin"]
