"""
What the accelerator relies on in Twisted (and Python) beyond their public
API, checked before it is used: a Twisted that lacks any of it gets the
portable path, with one line saying why, never an C{AttributeError} in a
session.
"""

from __future__ import annotations

import socket
import sys
from typing import Any, Optional

# The Twisted releases the accelerator was tested with, (major, minor),
# oldest and newest.
TESTED = ((26, 4), (26, 10))

# Class attributes and methods it calls, overrides or copies.
_CLASS_ATTRIBUTES = {
    "twisted.internet.abstract.FileDescriptor": (
        "connectionLost", "startReading", "stopReading", "startWriting", "stopWriting",
        "doWrite", "write", "loseConnection", "registerProducer",
    ),
    "twisted.internet.tcp.Connection": (
        "_closeWriteConnection", "_closeSocket", "_getLogPrefix", "loseWriteConnection",
        "readConnectionLost", "TLS", "_aborting",
    ),
    "twisted.internet.tcp.Server": ("_addressType",),
    "twisted.internet.tcp.Client": (
        "failIfNotConnected", "stopConnecting", "_setRealAddress", "resolveAddress",
        "_commonConnection", "_finishInit", "doConnect",
    ),
    "twisted.internet.tcp.Port": (
        "doRead", "_buildAddr", "addressFamily", "startListening", "transport",
        "_fromListeningDescriptor",
    ),
    "twisted.internet.epollreactor.EPollReactor": (
        "doPoll", "addReader", "addWriter", "removeReader", "removeWriter",
        "_doReadOrWrite", "_disconnectSelectable", "mainLoop", "runUntilCurrent", "timeout",
    ),
}

# Module attributes it imports.
_MODULE_ATTRIBUTES = {
    "twisted.internet.posixbase": ("_NO_FILEDESC",),
    "twisted.internet.tcp": ("Server", "Client", "Port", "Connection"),
    "twisted.internet.unix": ("Server", "Client"),
    "twisted.internet.epollreactor": ("EPollReactor",),
}

# Attributes of instances, set by constructors: (what builds one, names).
_ENDPOINT_ATTRIBUTES = ("_host", "_port", "_bindAddress", "_timeout", "_reactor")
_UNIX_ENDPOINT_ATTRIBUTES = ("_path", "_checkPID", "_timeout", "_reactor")
_TRANSPORT_ATTRIBUTES = (
    "_tempDataBuffer", "_tempDataLen", "dataBuffer", "offset", "disconnecting",
    "_writeDisconnecting", "_writeDisconnected", "producer", "connected", "disconnected",
    "socket", "fileno", "reactor",
)
# Of an epoll reactor instance (the running one, or the accelerator's own).
REACTOR_ATTRIBUTES = (
    "_reads", "_writes", "_selectables", "_poller", "_started", "_justStopped",
    "_cancellations", "_continuousPolling", "_newTimedCalls", "_pendingTimedCalls",
)


def _resolve(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def versionProblem(version: Any = None) -> Optional[str]:
    """
    Why the accelerator should not run on this Twisted, by its version
    (outside L{TESTED}), or L{None}.
    """
    if version is None:
        from twisted import version
    if version is None:  # pragma: no cover
        return "Twisted's version is unknown"
    current = (version.major, version.minor)
    oldest, newest = TESTED
    if not oldest <= current <= newest:
        return (
            f"Twisted {version.major}.{version.minor} is outside the versions it was "
            f"tested with ({oldest[0]}.{oldest[1]} to {newest[0]}.{newest[1]})"
        )
    return None


def missing(reactor: Any = None) -> list[str]:
    """
    The names the accelerator relies on that this Twisted (or Python), or
    C{reactor} (an epoll reactor), lacks.
    """
    absent: list[str] = []
    if reactor is not None:
        absent.extend(
            f"{type(reactor).__name__}.{n}" for n in REACTOR_ATTRIBUTES if not hasattr(reactor, n)
        )
    if not sys.platform.startswith("linux"):
        return ["Linux (epoll, splice)"]
    for module, names in _MODULE_ATTRIBUTES.items():
        try:
            loaded = __import__(module, fromlist=["_"])
        except Exception:
            absent.append(module)
            continue
        absent.extend(f"{module}.{n}" for n in names if not hasattr(loaded, n))
    for dotted, names in _CLASS_ATTRIBUTES.items():
        try:
            cls = _resolve(dotted)
        except Exception:
            absent.append(dotted)
            continue
        absent.extend(f"{dotted}.{n}" for n in names if not hasattr(cls, n))
    if not hasattr(socket.socket, "_accept"):
        absent.append("socket.socket._accept")
    absent.extend(_instanceProblems())
    return absent


def _instanceProblems() -> list[str]:
    absent: list[str] = []
    try:
        from twisted.internet import tcp
        from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
        from twisted.internet.protocol import Protocol
        from twisted.internet.testing import MemoryReactorClock
    except Exception as e:
        return [f"an import: {e}"]
    clock = MemoryReactorClock()
    tcpEndpoint = TCP4ClientEndpoint(clock, "127.0.0.1", 1)
    absent.extend(
        f"TCP4ClientEndpoint.{n}" for n in _ENDPOINT_ATTRIBUTES if not hasattr(tcpEndpoint, n)
    )
    unixEndpoint = UNIXClientEndpoint(clock, "/nonexistent")
    absent.extend(
        f"UNIXClientEndpoint.{n}" for n in _UNIX_ENDPOINT_ATTRIBUTES
        if not hasattr(unixEndpoint, n)
    )
    a, b = socket.socketpair()
    try:
        transport = tcp.Connection(a, Protocol(), clock)
        absent.extend(
            f"tcp.Connection().{n}" for n in _TRANSPORT_ATTRIBUTES if not hasattr(transport, n)
        )
    except Exception as e:
        absent.append(f"tcp.Connection(): {e}")
    finally:
        a.close()
        b.close()
    return absent


__all__ = ["REACTOR_ATTRIBUTES", "TESTED", "missing", "versionProblem"]
