"""
A one-proxy configuration given on the command line (C{twistd sockproxy
--listen ... --backend ...}), checked as a file would be: every problem names
its option.
"""

from __future__ import annotations

from typing import Sequence

from txsockproxy.checks import knownBalancers, quote, unknownBalancer
from txsockproxy.config import (
    DEFAULT_BALANCE,
    BackendConfig,
    Config,
    ConfigError,
    Problem,
    ProxyConfig,
    StatusConfig,
)
from txsockproxy.endpoints import checkEndpoint, listenKey


def configFromArguments(
    listen: Sequence[str],
    backends: Sequence[str],
    balance: str | None,
    debug: int,
    balancers: frozenset[str] | None = None,
    status: Sequence[str] = (),
) -> Config:
    """
    Build a one-proxy configuration from command-line values.

    @param status: server endpoint strings for the status page (no admin
        token: admin actions are refused).

    @raise ConfigError: listing every problem, each naming its option.
    """
    if balancers is None:
        balancers = knownBalancers()
    source = "<command line>"
    problems: list[Problem] = []

    def problem(option: str, message: str) -> None:
        problems.append(Problem(source, None, option, message))

    if not listen:
        problem("--listen", "missing: give at least one server endpoint")
    if not backends:
        problem("--backend", "missing: give at least one client endpoint")
    seenListen: dict[str, str] = {}
    for desc in listen:
        error = checkEndpoint(desc, server=True)
        if error:
            problem("--listen", error)
            continue
        key = listenKey(desc)
        if key is None:
            continue
        if key in seenListen:
            problem("--listen", f"duplicate listen endpoint {quote(desc)}")
        seenListen.setdefault(key, desc)
    seenBackends: set[str] = set()
    for desc in backends:
        error = checkEndpoint(desc, server=False)
        if error:
            problem("--backend", error)
        elif desc in seenBackends:
            problem("--backend", f"duplicate backend {quote(desc)}")
        seenBackends.add(desc)
    if balance is None:
        balance = DEFAULT_BALANCE
    elif balance not in balancers:
        problem("--balance", unknownBalancer(balance, balancers))
    if not 0 <= debug <= 3:
        problem("--debug", f"must be 0 to 3, not {debug}")
    for desc in status:
        error = checkEndpoint(desc, server=True)
        if error:
            problem("--status", error)
        elif listenKey(desc) is not None and listenKey(desc) in seenListen:
            problem("--status", f"{quote(desc)} is already a --listen endpoint")
    if problems:
        raise ConfigError(problems)
    proxy = ProxyConfig(
        name=listen[0],
        listen=tuple(listen),
        backends=tuple(BackendConfig(endpoint=d, label=d) for d in backends),
        balance=balance,
    )
    return Config(
        proxies=(proxy,), debug=debug, source=source,
        status=StatusConfig(listen=tuple(status)) if status else None,
    )
