"""
Checks of single values that every configuration reader makes (the native
TOML reader, the lighttpd.conf importer, the command line), so that the same
mistake gets the same message whichever way it was written.
"""

from __future__ import annotations

from txsockproxy.balancers import balancerNames


def quote(text: str) -> str:
    """
    Quote C{text} for a message; unlike C{repr}, an endpoint string's
    backslashes stay as the user wrote them.
    """
    if text.isprintable() and "'" not in text:
        return f"'{text}'"
    return repr(text)


def nulProblem(value: str) -> str:
    """
    What is wrong with a string value that holds a NUL character: no file
    name, host name or endpoint can (the system would refuse it, or cut it
    short, only when it is used).
    """
    return f"must not contain a NUL character (\\x00): {quote(value)}"


def knownBalancers() -> frozenset[str]:
    """
    The balancer names a configuration may use: those of the installed
    balancer plugins.
    """
    return frozenset(balancerNames())


def unknownBalancer(name: str, balancers: frozenset[str]) -> str:
    """
    What is wrong with the balancer C{name}, which is not in C{balancers}.
    """
    available = ", ".join(sorted(balancers)) or "none installed"
    return f"unknown balancer {name!r} (available: {available})"
