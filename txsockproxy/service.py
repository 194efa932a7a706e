"""
The proxy as a Twisted service: one ServerFactory per listen endpoint, under one
L{ProxyService} (a MultiService), built from a L{Config}.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.logger import Logger

from txsockproxy.backends import BackendPool
from txsockproxy.balancers import balancerFactory
from txsockproxy.config import Config
from txsockproxy.relay import ProxyFactory


class ListenError(Exception):
    """
    A listen endpoint could not be bound; start-up stops.
    """


class ProxyService(MultiService):
    """
    Every proxy of a configuration, listening.

    @ivar pools: the L{BackendPool} of each proxy, by proxy name.
    @ivar factories: the L{ProxyFactory} of each listen endpoint, in config order.
    """

    log = Logger()

    # Called with the L{ListenError} when a listener cannot bind, instead of
    # raising it: the twistd plugin reports it as one line and exits.
    onListenError: Optional[Callable[[ListenError], None]] = None

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.pools: dict[str, BackendPool] = {}
        self.factories: list[ProxyFactory] = []
        self._listeners: list[tuple[str, str, Any]] = []
        self._bound = False
        for proxy in config.proxies:
            balancer = balancerFactory(proxy.balance)()
            pool = BackendPool.fromConfig(proxy, balancer, reactor)
            self.pools[proxy.name] = pool
            for desc in proxy.listen:
                factory = ProxyFactory(pool, reactor, config.debug)
                self.factories.append(factory)
                listener = strports.service(desc, factory, reactor=reactor)
                listener.setServiceParent(self)
                self._listeners.append((proxy.name, desc, listener))
        if config.debug >= 3:
            ticker = TimerService(1.0, self._logBackendStates)
            ticker.clock = reactor
            ticker.setServiceParent(self)

    def privilegedStartService(self) -> None:
        # Bind every listener now (strports raises bind errors synchronously)
        # and turn a failure into one clear line instead of a traceback.
        self._bound = True
        for name, desc, listener in self._listeners:
            try:
                listener.privilegedStartService()
            except Exception as e:
                reason = getattr(e, "socketError", None) or e
                detail = getattr(reason, "strerror", None) or str(reason)
                # The reason comes first: a daemonizing twistd passes only
                # the first 100 bytes of the error to the waiting parent.
                named = f" (proxy {name})" if name != desc else ""
                error = ListenError(f"{detail}: cannot listen on {desc}{named}")
                if self.onListenError is not None:
                    self.onListenError(error)
                raise error from None
        listeners = [listener for _, _, listener in self._listeners]
        for child in self:
            if all(child is not listener for listener in listeners):
                child.privilegedStartService()

    def startService(self) -> None:
        # "twist" and embedding programs may start us without the privileged
        # step; binding here keeps bind errors just as clear.
        if not self._bound:
            self.privilegedStartService()
        super().startService()
        for name, pool in self.pools.items():
            self.log.info(
                "proxy {proxy}: listening on {listen}, {count} backend(s), balance {balance}",
                proxy=name,
                listen=", ".join(pool.config.listen),
                count=len(pool.backends),
                balance=pool.config.balance,
            )

    def _logBackendStates(self) -> None:
        now = self.reactor.seconds()
        for name, pool in self.pools.items():
            for backend in pool.backends:
                self.log.info(
                    "proxy {proxy}: backend {label} {state}: active {active}, "
                    "connected {connected}, failed {failed}",
                    proxy=name, label=backend.label, state=backend.stateAt(now),
                    active=backend.active, connected=backend.connected,
                    failed=backend.failed,
                )


def makeProxyService(config: Config, reactor: Any = None) -> ProxyService:
    """
    Build the service for C{config}; C{reactor} defaults to the global one.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    return ProxyService(config, reactor)
