"""
The AMP commands the parent process (L{txsockproxy.workers}) and its worker
processes (L{txsockproxy.worker}) exchange over the unix socket pair each
worker is started with. The parent asks; the worker answers.

Listening sockets travel as file descriptors (C{SCM_RIGHTS}, AMP's
L{amp.Descriptor}): a worker started later, or a reload that adds a
listener, gets them the same way, and so could any process taking over the
sockets of another.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, ClassVar

from twisted.protocols import amp
from twisted.python.failure import Failure

from txsockproxy.service import ListenKey

# AMP values are at most 65,535 bytes: snapshots go in parts of this size.
PART_SIZE = 60_000


def encodeKey(key: ListenKey) -> str:
    """
    A listener's key (see L{txsockproxy.service.listenKeys}) as AMP sends it.
    """
    return json.dumps(list(key))


def decodeKey(text: str) -> ListenKey:
    """
    The listener key L{encodeKey} made C{text} of.

    @raise ValueError: C{text} is not one.
    """
    isStatus, desc, n = json.loads(text)
    if not (isinstance(isStatus, bool) and isinstance(desc, str) and isinstance(n, int)):
        raise ValueError(f"not a listener key: {text!r}")
    return (isStatus, desc, n)


def packSnapshot(snapshot: dict[str, Any]) -> list[bytes]:
    """
    C{snapshot} (JSON-able) as the parts L{Snapshot} answers with, in
    order.
    """
    packed = zlib.compress(json.dumps(snapshot, separators=(",", ":")).encode("utf-8"))
    return [packed[i:i + PART_SIZE] for i in range(0, len(packed), PART_SIZE)] or [b""]


def unpackSnapshot(parts: list[bytes]) -> dict[str, Any]:
    """
    The snapshot L{packSnapshot} made C{parts} of.
    """
    result: dict[str, Any] = json.loads(zlib.decompress(b"".join(parts)).decode("utf-8"))
    return result


class QuietAMP(amp.AMP):
    """
    AMP without its log line per connection made and lost: the workers'
    starts and deaths are logged already, in words.
    """

    def makeConnection(self, transport: Any) -> None:
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None


class StartFailed(Exception):
    """
    The worker cannot serve (its configuration, a socket it cannot adopt).
    """


class HandListener(amp.Command):
    """
    Parent to worker: here is the listening socket of a listener.
    """

    arguments = [
        (b"key", amp.Unicode()),
        (b"family", amp.Integer()),
        (b"socket", amp.Descriptor()),
    ]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class Serve(amp.Command):
    """
    Parent to worker: read the configuration and serve, with the sockets
    handed; answers once serving, with the worker's pid.
    """

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response = [(b"pid", amp.Integer())]
    errors = {StartFailed: b"START_FAILED"}


class Reload(amp.Command):
    """
    Parent to worker: read the configuration file again and apply it, as
    on SIGHUP; answers whether it was applied.
    """

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response = [(b"applied", amp.Boolean())]


class Stop(amp.Command):
    """
    Parent to worker: stop accepting and end gracefully, as on SIGTERM
    (sessions get the shutdown timeout); answers when the sessions are
    done, and the worker exits.
    """

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class Snapshot(amp.Command):
    """
    Parent to worker: part C{part} of the worker's status now (see
    L{packSnapshot}): part 0 takes a new snapshot.
    """

    arguments = [(b"part", amp.Integer())]
    response = [(b"data", amp.String()), (b"more", amp.Boolean())]


class Admin(amp.Command):
    """
    Parent to worker: an admin action on one backend (what C{POST
    /backends/PROXY/LABEL/ACTION} asks; the parent checked the token).
    Answers with the HTTP status code and the JSON body the worker's own
    status site would have given.
    """

    arguments = [
        (b"proxy", amp.Unicode()),
        (b"label", amp.Unicode()),
        (b"action", amp.Unicode()),
        (b"timeout", amp.Float(optional=True)),
    ]
    response = [(b"code", amp.Integer()), (b"body", amp.Unicode())]


__all__ = [
    "Admin", "HandListener", "PART_SIZE", "QuietAMP", "Reload", "Serve", "Snapshot", "StartFailed", "Stop",
    "decodeKey", "encodeKey", "packSnapshot", "unpackSnapshot",
]
