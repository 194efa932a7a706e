"""
Read an existing lighttpd.conf: the mod_sockproxy part of lighttpd's
configuration language, into the same config objects as the native TOML.

Three stages, one module each:

  1. L{txsockproxy.lighttpd.lexer} turns a file into tokens the way
     lighttpd's own tokenizer (C{configfile.c}) does.
  2. L{txsockproxy.lighttpd.evaluator} parses and evaluates at once, as
     lighttpd's grammar (C{configparser.y}) does: variables, C{+=},
     C{include}, C{include_shell}, conditions; the result is a tree of blocks.
  3. L{txsockproxy.lighttpd.mapper} reads what sockproxy needs from the tree
     into listeners, proxies and backends.

Errors name the file, the line and the column and quote the token; whatever
does not concern sockproxy is reported once, as a notice, not rejected.
doc/lighttpd-config.md describes the mapping for users.

The public entry points are here: L{looksLikeLighttpd}, L{parseLighttpd},
L{runShell}/L{ShellError} (how C{include_shell} runs), and L{originFields}.
The stage modules are this package's internals.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

from txsockproxy.checks import knownBalancers
from txsockproxy.config import Config, ConfigError, Problem
from txsockproxy.endpoints import Resolver, originFields, resolveFirst
from txsockproxy.lighttpd.evaluator import (
    MAX_FILE_SIZE,
    MAX_INCLUDE_DEPTH,
    MAX_NESTING,
    SHELL_TIMEOUT,
    Evaluator,
    ShellError,
    ShellRunner,
    runShell,
)
from txsockproxy.lighttpd.lexer import StopParsing
from txsockproxy.lighttpd.mapper import Mapper, systemIsDualStack

__all__ = [
    "MAX_FILE_SIZE",
    "MAX_INCLUDE_DEPTH",
    "MAX_NESTING",
    "SHELL_TIMEOUT",
    "ShellError",
    "ShellRunner",
    "looksLikeLighttpd",
    "originFields",
    "parseLighttpd",
    "runShell",
]


_LIGHTTPD_HINTS = re.compile(
    r"""=>|\$(?:SERVER|HTTP|REQUEST_HEADER)\s*\[|^\s*include(?:_shell)?\s+"|"""
    r"""^\s*[A-Za-z0-9_.\-]+\s*(?:\+=|:=|=\s*\()""",
    re.MULTILINE,
)


def looksLikeLighttpd(path: str, text: str) -> bool:
    """
    Whether the config file at C{path} with contents C{text} is in lighttpd's
    syntax rather than TOML: its name ends in C{.conf}, or (unless it ends in
    C{.toml}) it holds something TOML never does (C{=>}, C{$SERVER[},
    C{include "..."}, C{+=}, C{:=}, C{= (}).
    """
    name = path.lower()
    if name.endswith(".conf"):
        return True
    if name.endswith(".toml"):
        return False
    return _LIGHTTPD_HINTS.search(text) is not None


def parseLighttpd(
    text: str,
    source: str = "<string>",
    resolve: Resolver = resolveFirst,
    balancers: frozenset[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    shell: ShellRunner = runShell,
    dualStack: bool | None = None,
    cwd: str | None = None,
    pid: int | None = None,
) -> Config:
    """
    Parse a lighttpd configuration and map its mod_sockproxy part.

    @param text: the main file's contents.
    @param source: its path: includes are resolved against its directory.
    @param resolve: resolves host names of backends and sockets.
    @param balancers: the balancer names that may be used; by default,
        those of the installed balancer plugins.
    @param environ: what C{env.NAME} reads (default: C{os.environ}).
    @param shell: runs C{include_shell} commands (default: L{runShell}).
    @param dualStack: whether an IPv6 listener on C{::} also takes IPv4
        connections (default: read from C{/proc}).
    @param cwd: C{var.CWD} (default: the working directory).
    @param pid: C{var.PID} (default: this process's id).

    @raise ConfigError: the config has errors; each names file, line, column.
    """
    if balancers is None:
        balancers = knownBalancers()
    ev = Evaluator(
        source,
        os.environ if environ is None else environ,
        shell,
        os.getcwd() if cwd is None else cwd,
        os.getpid() if pid is None else pid,
    )
    try:
        ev.parseText(text, source)
    except StopParsing as e:
        raise ConfigError([e.problem]) from None
    except RecursionError:
        raise ConfigError([Problem(source, None, "", "nested too deeply")]) from None
    if dualStack is None:
        dualStack = systemIsDualStack()
    return Mapper(ev, source, resolve, balancers, dualStack).run()
