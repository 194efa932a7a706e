"""
Client access lists: an ordered list of C{allow}/C{deny} rules, checked at
accept before any backend work; the first rule that matches decides, and a
client no rule matches is allowed (as nginx's C{allow}/C{deny}: end the
list with C{deny all} to allow only what is listed).

A rule is C{"allow WHAT"} or C{"deny WHAT"}, WHAT being an IPv4 or IPv6
address or network (C{10.0.0.0/8}, C{2001:db8::/32}, C{192.0.2.7}),
C{all}, or for clients of a unix-socket listener their credentials:
C{uid=N} or C{gid=N} (the peer's, from C{SO_PEERCRED}).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclass(frozen=True)
class Rule:
    """
    One rule: C{allow} (or deny) clients matching C{network}, C{uid},
    C{gid}, or everyone (all three L{None}).
    """

    allow: bool
    network: Optional[Network] = None
    uid: Optional[int] = None
    gid: Optional[int] = None

    def __str__(self) -> str:
        what = (
            str(self.network) if self.network is not None
            else f"uid={self.uid}" if self.uid is not None
            else f"gid={self.gid}" if self.gid is not None
            else "all"
        )
        return f"{'allow' if self.allow else 'deny'} {what}"


def parseRule(text: str) -> Rule:
    """
    Read one rule.

    @raise ValueError: it is not a rule; the message says why.
    """
    parts = text.split()
    if len(parts) != 2 or parts[0] not in ("allow", "deny"):
        raise ValueError(f"{text!r} is not 'allow WHAT' or 'deny WHAT'")
    allow = parts[0] == "allow"
    what = parts[1]
    if what == "all":
        return Rule(allow)
    for key in ("uid", "gid"):
        if what.startswith(key + "="):
            number = what[len(key) + 1:]
            if not number.isdigit() or not number.isascii():
                raise ValueError(f"{what!r}: {key} must be a number")
            value = int(number)
            return Rule(allow, uid=value) if key == "uid" else Rule(allow, gid=value)
    try:
        network = ipaddress.ip_network(what, strict=False)
    except ValueError:
        raise ValueError(
            f"{what!r} is not an address, a network (10.0.0.0/8), all, uid=N or gid=N"
        ) from None
    return Rule(allow, network=network)


def _ip(address: IAddress) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return None
    try:
        ip = ipaddress.ip_address(address.host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def peerCredentials(handle: object) -> Optional[tuple[int, int]]:
    """
    The (uid, gid) of the peer of a unix socket, or L{None}.
    """
    if not isinstance(handle, socket.SocketType) or handle.family != socket.AF_UNIX:
        return None
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        raw = handle.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    _, uid, gid = struct.unpack("3i", raw)
    return uid, gid


class AccessList:
    """
    Rules in order; L{allows} says whether a client may connect, and which
    rule decided.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def decide(
        self, address: IAddress, credentials: Optional[tuple[int, int]] = None
    ) -> tuple[bool, Optional[Rule]]:
        """
        Whether the client at C{address} (with unix C{credentials}, if any)
        is allowed, and the rule that said so (L{None}: no rule matched).
        """
        ip = _ip(address)
        for rule in self.rules:
            if rule.network is not None:
                if ip is not None and ip.version == rule.network.version and (
                    ip in rule.network
                ):
                    return rule.allow, rule
            elif rule.uid is not None:
                if credentials is not None and credentials[0] == rule.uid:
                    return rule.allow, rule
            elif rule.gid is not None:
                if credentials is not None and credentials[1] == rule.gid:
                    return rule.allow, rule
            else:
                return rule.allow, rule
        return True, None


__all__ = ["AccessList", "Rule", "parseRule", "peerCredentials"]
