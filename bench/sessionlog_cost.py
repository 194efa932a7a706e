"""
What the session log costs per finished session, in microseconds per call of
L{txsockproxy.sessionlog.SessionLog}, for each format (text, json) and each
destination (the Twisted log, a file, off).

    python bench/sessionlog_cost.py [--number N] [--repeat R]

The session is a stand-in with the attributes the session log reads (a real
L{txsockproxy.relay.Session} needs a factory, a pool and transports). Its
peer address is an C{IPv4Address}, as on a TCP listener.

The "log" destination emits into the global log publisher with one observer
that drops every event: what is measured is the cost of making the line and
the event, not that of the observer twistd installs (which formats and writes
the event again). The "file" destination writes, line-buffered as the real
one, to C{os.devnull}, with the real clock (C{time.time}).

Printed figures are the best of R repeats of N calls each.
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.address import IPv4Address
from twisted.logger import ILogObserver, globalLogBeginner

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from txsockproxy.sessionlog import SessionLog  # noqa: E402

if TYPE_CHECKING:
    from txsockproxy.relay import Session


class _Named:
    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)


class _Session:
    """
    What the session log reads of a finished session that relayed a few
    kilobytes for 0.2 s and was closed by its client.
    """

    __slots__ = ("pool", "factory", "connection", "backend", "backendTransport",
                 "bytesFromClient", "bytesFromBackend", "ended", "started", "_now")

    def __init__(self) -> None:
        self.pool = _Named(name="web")
        self.factory = _Named(listen="tcp:8080:interface=127.0.0.1")
        self.connection = _Named(peer=IPv4Address("TCP", "127.0.0.1", 45670))
        self.backend = _Named(label="a")
        self.backendTransport = object()
        self.bytesFromClient = 1234
        self.bytesFromBackend = 56789
        self.ended = "client closed"
        self.started = 1000.0
        self._now = 1000.202476

    @property
    def duration(self) -> float:
        return self._now - self.started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    dropAll = cast(ILogObserver, lambda event: None)
    globalLogBeginner.beginLoggingTo([dropAll], redirectStandardIO=False)
    session = cast("Session", _Session())
    print(f"{'format':<6} {'destination':<11} µs/call")
    for logFormat in ("text", "json"):
        for destination in ("log", "file", "off"):
            log = SessionLog(os.devnull if destination == "file" else destination, logFormat)
            times = timeit.repeat(lambda: log(session), number=args.number,  # noqa: B023
                                  repeat=args.repeat)
            log.close()
            print(f"{logFormat:<6} {destination:<11} {min(times) / args.number * 1e6:7.3f}")


if __name__ == "__main__":
    main()
