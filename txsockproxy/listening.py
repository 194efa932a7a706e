"""
The addresses this process listens on, so that addresses it is told to
connect to (by DNS) can be checked against them: a backend that is one of
the proxy's own listeners makes every session connect to the proxy again,
in a loop that ends when descriptors run out.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from functools import lru_cache
from typing import Any, Optional


@lru_cache(maxsize=1024)
def isLocalAddress(address: str) -> bool:
    """
    Whether C{address} (an IP address) is one of this host's: a loopback
    or unspecified one, or one the system routes to itself (it is its own
    source address when a socket is aimed at it: no packet is sent).

    Remembered (a backend connect may ask, for a backend on a port the
    proxy listens on): an address the host takes or drops later is seen
    as it was when first asked.
    """
    ip = ipaddress.ip_address(address)
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((str(ip), 9))
            source = probe.getsockname()[0]
    except OSError:
        return False
    try:
        return ipaddress.ip_address(source.split("%")[0]) == ip
    except ValueError:
        return False


def _socketPath(name: Any) -> Optional[str]:
    """
    A unix socket's path, as one string per socket file (symbolic links and
    relative paths resolved; an abstract name as it is), or L{None}.
    """
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if not isinstance(name, str) or not name:
        return None
    if name.startswith("\0"):
        return name
    return os.path.realpath(name)


class Listening:
    """
    The TCP addresses of this process's listeners (each as bound: a
    wildcard address stands for every address of the host, of its
    family; C{::} for IPv4 ones too, as a dual-stack socket takes them),
    and the paths of its unix-socket listeners.
    """

    def __init__(self) -> None:
        self._bound: list[tuple[str, int]] = []
        # The ports alone: most addresses asked about (every backend
        # connect) are ruled out by their port.
        self._ports: set[int] = set()
        self._paths: list[str] = []

    def add(self, address: Any) -> None:
        """
        A listener is bound to C{address} (an L{IAddress}: an IP address and
        port, or a unix socket's path).
        """
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        if isinstance(host, str) and isinstance(port, int):
            self._bound.append((host, port))
            self._ports.add(port)
            return
        path = _socketPath(getattr(address, "name", None))
        if path is not None:
            self._paths.append(path)

    def remove(self, address: Any) -> None:
        """
        A listener bound to C{address} stopped.
        """
        key = (getattr(address, "host", None), getattr(address, "port", None))
        if key in self._bound:
            self._bound.remove(key)
            self._ports = {port for _, port in self._bound}
            return
        path = _socketPath(getattr(address, "name", None))
        if path is not None and path in self._paths:
            self._paths.remove(path)

    def coversPath(self, name: Any) -> bool:
        """
        Whether C{name}, the path (or abstract name) of a unix socket
        connected to, is one of the listeners'.
        """
        if not self._paths:
            return False
        path = _socketPath(name)
        return path is not None and path in self._paths

    def covers(self, address: str, port: int) -> bool:
        """
        Whether connecting to C{address} port C{port} reaches one of the
        listeners.
        """
        if port not in self._ports:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        for host, bound in self._bound:
            if bound != port:
                continue
            try:
                listener = ipaddress.ip_address(host.split("%")[0])
            except ValueError:
                continue
            if listener == ip or (mapped is not None and listener == mapped):
                return True
            if listener.is_unspecified and (
                listener.version == ip.version or listener.version == 6
            ) and (self._boundTo(ip) or isLocalAddress(str(ip))):
                return True
        return False

    def _boundTo(self, ip: Any) -> bool:
        for host, _ in self._bound:
            try:
                if ipaddress.ip_address(host.split("%")[0]) == ip:
                    return True
            except ValueError:
                pass
        return False


# This process's listeners: the service adds each as it binds.
LISTENING = Listening()
