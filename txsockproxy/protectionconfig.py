"""
Reading a proxy's protection keys (limits, queue, client access rules,
drain deadline, keepalive) and a backend's C{max-connections} and
C{keepalive} from the native TOML configuration, for
L{txsockproxy.tomlconfig}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from txsockproxy.acl import parseRule
from txsockproxy.config import (
    DEFAULT_CLIENT_IPV6_PREFIX,
    DEFAULT_QUEUE_TIMEOUT,
    KeepaliveConfig,
    Protection,
)

# The keys of [[proxy]] read here.
PROTECTION_KEYS = (
    "max-connections",
    "max-queue",
    "queue-timeout",
    "client-max-connections",
    "client-rate",
    "client-burst",
    "client-ipv6-prefix",
    "access",
    "drain-timeout",
    "client-keepalive",
    "backend-keepalive",
)
# The keys of [[proxy.backend]] read here.
BACKEND_PROTECTION_KEYS = ("max-connections", "keepalive")

_KEEPALIVE_KEYS = ("idle", "interval", "count")


def readProtection(raw: Mapping[str, Any], path: tuple[Any, ...], reader: Any) -> Protection:
    """
    Read the protection keys of the proxy table C{raw} at C{path}, reporting
    mistakes to C{reader} (a L{txsockproxy.tomlconfig} reader).
    """
    maxConnections = reader.integer(raw, path, "max-connections", 0) or 0
    maxQueue = reader.integer(raw, path, "max-queue", 0) or 0
    if maxQueue and not maxConnections:
        reader.problem(path + ("max-queue",), "needs max-connections: clients queue beyond it")
    queueTimeout = reader.seconds(raw, path, "queue-timeout", DEFAULT_QUEUE_TIMEOUT, positive=True)
    clientMax = reader.integer(raw, path, "client-max-connections", 0) or 0
    clientRate = _rate(raw, path, reader)
    burst = reader.integer(raw, path, "client-burst", 1)
    if burst is not None and not clientRate:
        reader.problem(path + ("client-burst",), "needs client-rate")
    if burst is None:
        burst = max(1, math.ceil(clientRate))
    prefix = reader.integer(raw, path, "client-ipv6-prefix", 1, 128)
    access = _access(raw, path, reader)
    drainTimeout = reader.seconds(raw, path, "drain-timeout", 0.0)
    return Protection(
        maxConnections=maxConnections,
        maxQueue=maxQueue,
        queueTimeout=queueTimeout,
        clientMaxConnections=clientMax,
        clientRate=clientRate,
        clientBurst=burst if clientRate else 0,
        clientIPv6Prefix=prefix if prefix is not None else DEFAULT_CLIENT_IPV6_PREFIX,
        access=access,
        drainTimeout=drainTimeout,
        clientKeepalive=readKeepalive(raw, path, "client-keepalive", reader),
    )


def _rate(raw: Mapping[str, Any], path: tuple[Any, ...], reader: Any) -> float:
    if "client-rate" not in raw:
        return 0.0
    value = raw["client-rate"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        reader.problem(
            path + ("client-rate",),
            f"must be a number of new connections per second, more than 0, not {value!r}",
        )
        return 0.0
    return float(value)


def _access(raw: Mapping[str, Any], path: tuple[Any, ...], reader: Any) -> tuple[str, ...]:
    if "access" not in raw:
        return ()
    value = raw["access"]
    if not isinstance(value, list):
        reader.problem(
            path + ("access",),
            'must be an array of rules ("allow 10.0.0.0/8", "deny all", ...)',
        )
        return ()
    rules: list[str] = []
    for i, text in enumerate(value):
        if not isinstance(text, str):
            reader.problem(path + ("access", i), f"must be a string rule, not {text!r}")
            continue
        try:
            rules.append(str(parseRule(text)))
        except ValueError as e:
            reader.problem(path + ("access", i), str(e))
    return tuple(rules)


#: The longest keepalive idle time and probe interval the system takes.
KEEPALIVE_MAX_SECONDS = 32767


def readKeepalive(
    raw: Mapping[str, Any], path: tuple[Any, ...], key: str, reader: Any,
    default: KeepaliveConfig = KeepaliveConfig(),
) -> KeepaliveConfig:
    """
    Read a keepalive table (C{{idle = 60, interval = 10, count = 5}}).
    """
    if key not in raw:
        return default
    value = raw[key]
    here = path + (key,)
    if not isinstance(value, dict):
        reader.problem(here, "must be a table: { idle = SECONDS, interval = SECONDS, count = N }")
        return default
    reader.unknownKeys(value, here, _KEEPALIVE_KEYS, {})
    idle = reader.seconds(value, here, "idle", 0.0, positive=True)
    if "idle" not in value:
        reader.problem(here, "needs idle (the seconds without traffic before probing)")
    interval = reader.seconds(value, here, "interval", 0.0, positive=True)
    for name, seconds in (("idle", idle), ("interval", interval)):
        if seconds > KEEPALIVE_MAX_SECONDS:
            # The system refuses more (Linux: TCP_KEEPIDLE, TCP_KEEPINTVL).
            reader.problem(
                here + (name,), f"must be at most {KEEPALIVE_MAX_SECONDS} seconds, not {value[name]}"
            )
    count = reader.integer(value, here, "count", 1, 127)
    return KeepaliveConfig(idle=idle, interval=interval, count=count or 0)


def readBackendProtection(
    raw: Mapping[str, Any], path: tuple[Any, ...], reader: Any, keepalive: KeepaliveConfig
) -> tuple[int, KeepaliveConfig]:
    """
    Read a backend's C{max-connections} and C{keepalive} (C{keepalive}: the
    proxy's C{backend-keepalive}, its default).
    """
    maxConnections = reader.integer(raw, path, "max-connections", 0) or 0
    return maxConnections, readKeepalive(raw, path, "keepalive", reader, keepalive)


__all__ = [
    "BACKEND_PROTECTION_KEYS",
    "KEEPALIVE_MAX_SECONDS",
    "PROTECTION_KEYS",
    "readBackendProtection",
    "readKeepalive",
    "readProtection",
]
