"""
Routing by TLS server name: the patterns a route may give (exact names and
C{*.} wildcards), checking them, and the table that finds the route of a
name.

Precedence does not depend on the order routes are written in: an exact
name beats every wildcard, and of the wildcards that match, the longest
(the most specific) wins. C{*.example.com} matches C{a.example.com} and
C{a.b.example.com}, not C{example.com} itself. Names and patterns are
compared in lower case, without a trailing dot.
"""

from __future__ import annotations

import re
from typing import Generic, Iterable, Optional, TypeVar

T = TypeVar("T")

WILDCARD = "*."

# A label of a host name as SNI carries it (an IDN in its xn-- form); "_" is
# accepted because internal names use it.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?")
_MAX_NAME = 253


def normalizeName(name: str) -> str:
    """
    C{name} as it is compared: lower case, without a trailing dot.
    """
    return name.lower().rstrip(".")


def checkPattern(pattern: str) -> tuple[str, str]:
    """
    Check a server-name pattern.

    @return: the pattern normalized and C{""}; or C{""} and what is wrong,
        in words.
    """
    if not isinstance(pattern, str):
        return "", "must be a string"
    if not pattern.strip():
        return "", "a server name must not be empty"
    normal = pattern.lower()
    if normal.endswith(".") and not normal.endswith("..") and normal != WILDCARD:
        normal = normal[:-1]
    shown = repr(pattern)
    if not normal.isascii():
        return "", (f"{shown} is not ASCII: write an internationalized name in its "
                    "xn-- (punycode) form, as TLS clients send it")
    rest = normal[len(WILDCARD):] if normal.startswith(WILDCARD) else normal
    if "*" in rest:
        return "", (f"{shown}: '*' may only be the whole first label, as in "
                    "'*.example.com'")
    if not rest:
        return "", f"{shown}: a wildcard needs a domain after '*.'"
    if len(rest) > _MAX_NAME:
        return "", f"{shown} is longer than {_MAX_NAME} characters"
    for label in rest.split("."):
        if not label:
            return "", f"{shown} has an empty label"
        if not _LABEL.fullmatch(label):
            return "", (f"{shown}: label {label!r} is not a host name label "
                        "(letters, digits, '-' and '_'; 1 to 63 characters; "
                        "no '-' first or last)")
    return normal, ""


class RouteTable(Generic[T]):
    """
    Server-name patterns, each leading to a value (a route).
    """

    def __init__(self, entries: Iterable[tuple[str, T]] = ()) -> None:
        """
        @param entries: normalized patterns (see L{checkPattern}) and their
            values; a pattern given twice keeps its first value.
        """
        self._exact: dict[str, T] = {}
        self._wildcards: dict[str, T] = {}
        for pattern, value in entries:
            if pattern.startswith(WILDCARD):
                # Kept as ".example.com": a name matches when it ends so.
                self._wildcards.setdefault(pattern[1:], value)
            else:
                self._exact.setdefault(pattern, value)

    def __bool__(self) -> bool:
        return bool(self._exact or self._wildcards)

    def lookup(self, name: Optional[str]) -> Optional[T]:
        """
        The value of the pattern that matches C{name} best, or L{None} when
        none does (or there is no name).
        """
        if not name:
            return None
        name = normalizeName(name)
        found = self._exact.get(name)
        if found is not None:
            return found
        if not self._wildcards:
            return None
        # Try the name's own suffixes, longest first: as many dictionary
        # look-ups as the name has dots, whatever the number of patterns.
        dot = name.find(".")
        while dot > 0:
            value = self._wildcards.get(name[dot:])
            if value is not None:
                return value
            dot = name.find(".", dot + 1)
        return None
