"""
Fakes shared by the unit tests: a DNS resolver and a backend as a balancer
sees it.
"""

from __future__ import annotations

import ipaddress

from zope.interface import implementer

from txsockproxy.interfaces import IBackendInfo


class FakeResolver:
    """
    Resolves IP literals to themselves and names from a table; other names
    fail as an unknown DNS name does. Records the names asked.
    """

    def __init__(self, table: dict[str, str] | None = None) -> None:
        self.table = dict(table or {})
        self.asked: list[str] = []

    def __call__(self, host: str) -> str:
        self.asked.append(host)
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
        try:
            return self.table[host]
        except KeyError:
            raise OSError(-2, "Name or service not known") from None


@implementer(IBackendInfo)
class BackendInfo:
    """
    A backend as a balancer sees it, with a key made from its label.
    """

    def __init__(self, label: str, weight: int = 1, active: int = 0) -> None:
        self.label = label
        self.key = f"tcp:host=127.0.0.1:port={sum(map(ord, label))}"
        self.weight = weight
        self.active = active
