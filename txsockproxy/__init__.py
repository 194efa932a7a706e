"""
txsockproxy: a transparent socket proxy for Twisted.

To embed the proxy in a Twisted program::

    from txsockproxy import loadConfig, ProxyService
    service = ProxyService(loadConfig("sockproxy.toml"), reactor)
    service.setServiceParent(application)

Nothing here imports the global reactor.
"""

from txsockproxy.backends import Backend, BackendPool
from txsockproxy.balancers import balancerFactory, balancerNames
from txsockproxy.cmdline import configFromArguments
from txsockproxy.config import BackendConfig, Config, ConfigError, ProxyConfig
from txsockproxy.loading import loadConfig, parseConfig
from txsockproxy.relay import ProxyFactory
from txsockproxy.service import ProxyService, makeProxyService

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendPool",
    "balancerFactory",
    "balancerNames",
    "BackendConfig",
    "Config",
    "ConfigError",
    "ProxyConfig",
    "ProxyFactory",
    "ProxyService",
    "configFromArguments",
    "loadConfig",
    "makeProxyService",
    "parseConfig",
    "__version__",
]
