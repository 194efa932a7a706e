"""
Limits per client address: how many sessions one client may hold at once,
and how many new connections per second it may open (a token bucket that
allows bursts of up to C{burst}). IPv6 clients are grouped by network (a
/64 by default: one site, or one host with many addresses, counts once);
unix-socket clients are not limited.

Entries live while a client holds a session or its bucket is refilling;
they are swept, so that a flood from many addresses leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime

# Seconds between sweeps of entries no longer needed.
SWEEP_INTERVAL = 10.0


def clientKey(address: IAddress, ipv6Prefix: int = 64) -> Optional[str]:
    """
    What one client is counted as: its IPv4 address (an IPv4-mapped IPv6
    one too), its IPv6 network of C{ipv6Prefix} bits; L{None} for clients
    not on IP.
    """
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return None
    try:
        ip = ipaddress.ip_address(address.host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6Prefix), strict=False))
    return str(ip)


class _Entry:
    __slots__ = ("active", "tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.active = 0
        self.tokens = tokens
        self.stamp = stamp


class ClientLimits:
    """
    The per-client limits of one proxy.

    @ivar maxConcurrent: sessions one client may hold at once; 0: no limit.
    @ivar rate: new connections per second one client may open; 0: no limit.
    @ivar burst: how many it may open at once after a quiet time.
    """

    def __init__(
        self,
        clock: IReactorTime,
        maxConcurrent: int = 0,
        rate: float = 0.0,
        burst: int = 0,
        ipv6Prefix: int = 64,
    ) -> None:
        self.clock = clock
        self.maxConcurrent = maxConcurrent
        self.rate = rate
        self.burst = max(burst, 1) if rate else 0
        self.ipv6Prefix = ipv6Prefix
        self._entries: dict[str, _Entry] = {}
        self._sweep: Optional[IDelayedCall] = None

    def __bool__(self) -> bool:
        return bool(self.maxConcurrent or self.rate)

    def __len__(self) -> int:
        return len(self._entries)

    def admit(self, address: IAddress) -> tuple[Optional[str], Optional[str]]:
        """
        Count a new connection of the client at C{address}, if its limits
        allow it.

        @return: (the key it was counted under, or L{None} when it is not
            counted), and L{None} if it is admitted, else why not (words
            for a log line). An admitted client must be L{release}d with
            the key when its session ends.
        """
        key = clientKey(address, self.ipv6Prefix)
        if key is None:
            return None, None
        now = self.clock.seconds()
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(float(self.burst), now)
            self._scheduleSweep()
        if self.maxConcurrent and entry.active >= self.maxConcurrent:
            return None, f"{entry.active} sessions open, the most per client ({key})"
        if self.rate:
            entry.tokens = min(float(self.burst), entry.tokens + (now - entry.stamp) * self.rate)
            entry.stamp = now
            if entry.tokens < 1.0:
                return None, (
                    f"more than {self.rate:g} new connections per second "
                    f"(burst {self.burst}) from {key}"
                )
            entry.tokens -= 1.0
        entry.active += 1
        return key, None

    def release(self, key: Optional[str]) -> None:
        """
        A session admitted under C{key} ended.
        """
        if key is None:
            return
        entry = self._entries.get(key)
        if entry is not None and entry.active > 0:
            entry.active -= 1

    def _scheduleSweep(self) -> None:
        if self._sweep is None:
            self._sweep = self.clock.callLater(SWEEP_INTERVAL, self._sweepNow)

    def _sweepNow(self) -> None:
        self._sweep = None
        now = self.clock.seconds()
        full = float(self.burst)
        for key, entry in list(self._entries.items()):
            if entry.active:
                continue
            if not self.rate or entry.tokens + (now - entry.stamp) * self.rate >= full:
                del self._entries[key]
        if self._entries:
            self._scheduleSweep()

    def stop(self) -> None:
        """
        Stop sweeping (the proxy is going).
        """
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None


__all__ = ["ClientLimits", "SWEEP_INTERVAL", "clientKey"]
