"""
Loading a configuration file: the one entry point that reads a file and hands
it to the right reader (native TOML, or a lighttpd.conf), giving the same
immutable config objects of L{txsockproxy.config} either way.
"""

from __future__ import annotations

from txsockproxy.config import Config, ConfigError, Problem
from txsockproxy.endpoints import Resolver, resolveFirst
from txsockproxy.lighttpd import looksLikeLighttpd, parseLighttpd
from txsockproxy.readfile import readBounded
from txsockproxy.tomlconfig import parseConfig

__all__ = ["loadConfig", "parseConfig"]


def loadConfig(
    path: str, resolve: Resolver = resolveFirst, balancers: frozenset[str] | None = None
) -> Config:
    """
    Read and validate the configuration file at C{path}: native TOML, or a
    lighttpd.conf (see L{txsockproxy.lighttpd.looksLikeLighttpd}).

    @param resolve: resolves lighttpd-style C{host} names at load time.
    @param balancers: the balancer names that may be used; by default, those
        of the installed balancer plugins.
    @raise ConfigError: the file cannot be read or is invalid.
    """
    try:
        raw = readBounded(path)
    except (OSError, ValueError) as e:
        # ValueError: a path the system refuses before trying (a NUL in it).
        why = getattr(e, "strerror", None) or e
        raise ConfigError([Problem(path, None, "", f"cannot read: {why}")]) from None
    try:
        # utf-8-sig: editors on Windows may start the file with a BOM.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            [Problem(path, line, "", f"not valid UTF-8 (byte {raw[e.start]:#04x})")]
        ) from None
    if looksLikeLighttpd(path, text):
        return parseLighttpd(text, path, resolve, balancers)
    return parseConfig(text, path, resolve, balancers)
