"""
lighttpd's C{$HTTP["remoteip"]} conditions around C{sockproxy.server}, as
access rules (L{txsockproxy.acl}).

lighttpd 1.4.69 decides at accept whether mod_sockproxy takes a connection:
it patches the connection's config with every condition that matches (only
C{$SERVER["socket"]} and C{$HTTP["remoteip"]} can be evaluated then), in the
order the conditions were written, so that the B{last} block that matches and
sets C{sockproxy.server} decides; C{sockproxy.server = ()} turns proxying off.
Access rules are the other way round: the B{first} rule that matches decides,
and no match allows. L{accessRules} turns one into the other.
"""

from __future__ import annotations

import ipaddress
from typing import Optional, Sequence, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# (whether the client is proxied, the network it concerns; None: everyone)
_Rule = tuple[bool, Optional[Network]]


def parseNetwork(text: str) -> Network:
    """
    Read the value of C{$HTTP["remoteip"] == "..."}: an address, or a network
    (C{10.0.0.0/8}; host bits are ignored, as lighttpd ignores them).

    @raise ValueError: it is neither.
    """
    return ipaddress.ip_network(text.strip(), strict=False)


def _within(rules: Sequence[_Rule], network: Network) -> list[_Rule]:
    """
    C{rules} (ending with a rule for everyone) as they decide for clients of
    C{network} only. Two networks are nested or disjoint, so that each rule
    keeps its network, narrows to C{network}, or drops out.
    """
    out: list[_Rule] = []
    for proxied, other in rules:
        if other is None or (other.version == network.version and network.subnet_of(
                other)):  # type: ignore[arg-type]
            out.append((proxied, network))
            return out
        if other.version == network.version and other.subnet_of(network):  # type: ignore[arg-type]
            out.append((proxied, other))
    return out


def accessRules(
    proxiedByDefault: bool, blocks: Sequence[tuple[bool, Network, bool]]
) -> tuple[str, ...]:
    """
    The access rules that decide as lighttpd does.

    @param proxiedByDefault: whether a client no block matches is proxied.
    @param blocks: in the order written, each C{$HTTP["remoteip"]} block that
        sets C{sockproxy.server}: (C{True} for C{==}, C{False} for C{!=}; the
        network; whether it turns proxying on).
    @return: C{"allow NETWORK"}/C{"deny NETWORK"}/C{"deny all"} rules, first
        match deciding; empty when every client is proxied.
    """
    rules: list[_Rule] = [(proxiedByDefault, None)]
    for equal, network, proxied in blocks:
        if equal:
            rules.insert(0, (proxied, network))
        else:
            # Clients outside the network are decided here; those inside,
            # by what was written before.
            rules = _within(rules, network) + [(proxied, None)]
    # A rule is redundant when the rules after it decide its clients alike.
    # Only the last rule is for everyone.
    kept: list[_Rule] = []
    for decision, concerns in reversed(rules):
        if concerns is None:
            if not decision:
                kept.append((decision, concerns))
            continue  # no match allows
        after = _within(kept + [(True, None)], concerns)
        if all(p == decision for p, _ in after):
            continue
        kept.insert(0, (decision, concerns))
    return tuple(
        f"{'allow' if decision else 'deny'} {concerns if concerns is not None else 'all'}"
        for decision, concerns in kept
    )


__all__ = ["accessRules", "parseNetwork"]
