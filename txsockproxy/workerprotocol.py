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
import pickle
import zlib
from typing import Any, ClassVar

from twisted.protocols import amp
from twisted.python.failure import Failure

from txsockproxy.config import Config
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


def packConfig(config: Config) -> list[bytes]:
    """
    C{config} as the parts L{Configure} carries, in order. Pickled: a
    worker takes it only from its own parent, over the socket pair the
    parent made (nothing else can write to it), and gets exactly the
    objects the parent validated, host names resolved and files included.
    """
    packed = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
    return [packed[i:i + PART_SIZE] for i in range(0, len(packed), PART_SIZE)] or [b""]


def unpackConfig(parts: list[bytes]) -> Config:
    """
    The configuration L{packConfig} made C{parts} of.

    @raise ValueError: C{parts} do not make one.
    """
    try:
        config = pickle.loads(b"".join(parts))
    except Exception as e:
        raise ValueError(f"cannot read the configuration handed: {type(e).__name__}: {e}") from None
    if not isinstance(config, Config):
        raise ValueError(f"not a configuration: {type(config).__name__}")
    return config


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


class Configure(amp.Command):
    """
    Parent to worker: part C{part} of the configuration the parent last
    loaded successfully (L{packConfig}; part 0 begins one, the part without
    C{more} completes it). The worker serves it at the next L{Serve} and
    applies it at the next L{Reload}; it never reads the file itself.
    """

    arguments = [
        (b"part", amp.Integer()),
        (b"data", amp.String()),
        (b"more", amp.Boolean()),
    ]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    errors = {StartFailed: b"START_FAILED"}


class Serve(amp.Command):
    """
    Parent to worker: serve the configuration handed (L{Configure}) with the
    sockets handed; answers once serving, with the worker's pid.
    """

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response = [(b"pid", amp.Integer())]
    errors = {StartFailed: b"START_FAILED"}


class Reload(amp.Command):
    """
    Parent to worker: apply the configuration handed since (L{Configure}),
    as one process applies its file on SIGHUP; answers whether it was
    applied.
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


class Ping(amp.Command):
    """
    Parent to worker: answer at once. The parent's heartbeat: a worker that
    does not answer in time (stopped, wedged) is found out without anything
    else asking it.
    """

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


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
    "Admin", "Configure", "HandListener", "PART_SIZE", "Ping", "QuietAMP", "Reload", "Serve",
    "Snapshot", "StartFailed", "Stop", "decodeKey", "encodeKey", "packConfig", "packSnapshot",
    "unpackConfig", "unpackSnapshot",
]
