"""
Registers the C{failover} balancer with txsockproxy.

Twisted finds plugins in every C{twisted/plugins/} directory on C{sys.path}
(this directory has no C{__init__.py}, on purpose). The proxy collects every
module-level object here that provides L{IBalancerFactory} and L{IPlugin}.
Keep this file small: it is imported whenever plugins are listed.
"""

from failover_balancer import failover

__all__ = ["failover"]
