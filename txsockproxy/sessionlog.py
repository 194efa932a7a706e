"""
The session log: one line per finished session, as text or as JSON, into the
twistd log or into a file of its own.
"""

from __future__ import annotations

import json
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Optional

from twisted.logger import Logger

if TYPE_CHECKING:
    from txsockproxy.relay import Session

# A module-level logger: as a class attribute, Logger takes the class's name
# as its namespace, and operators filter on this one.
_log = Logger(namespace="txsockproxy.session")


def sessionFields(session: Session) -> dict[str, Any]:
    """
    What the session log records of C{session}.
    """
    from txsockproxy.relay import _address

    backend = session.backend
    return {
        "proxy": session.pool.name,
        "listen": session.factory.listen,
        "client": _address(session.connection.peer),
        "backend": backend.label if backend is not None and session.backendTransport is not None
        else "-",
        "bytes_up": session.bytesFromClient,
        "bytes_down": session.bytesFromBackend,
        "duration": round(session.duration, 6),
        "end": session.ended or "closed",
    }


def formatText(fields: dict[str, Any]) -> str:
    """
    A session as one line of C{key=value} pairs; values with spaces quoted.
    """
    parts = []
    for key, value in fields.items():
        text = str(value)
        if not text or any(c in text for c in ' "='):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


class SessionLog:
    """
    Writes one line per finished session.

    @param destination: C{"log"} (the Twisted log), C{"off"}, or a file path.
    @param logFormat: C{"text"} or C{"json"}.
    """

    def __init__(
        self,
        destination: str,
        logFormat: str,
        opener: Callable[[str], IO[str]] = lambda path: open(path, "a", buffering=1),
        now: Callable[[], float] = time.time,
    ) -> None:
        self.destination = destination
        self.logFormat = logFormat
        self._opener = opener
        self._now = now
        self._file: Optional[IO[str]] = None
        if destination not in ("log", "off"):
            self._file = opener(destination)

    def __call__(self, session: Session) -> None:
        if self.destination == "off":
            return
        fields = sessionFields(session)
        if self.logFormat == "json":
            line = json.dumps(fields, separators=(",", ":"))
        else:
            line = formatText(fields)
        if self._file is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self._now()))
            if self.logFormat == "json":
                fields = {"time": stamp + "Z", **fields}
                line = json.dumps(fields, separators=(",", ":"))
            else:
                line = f"{stamp}Z {line}"
            try:
                self._file.write(line + "\n")
            except (OSError, ValueError) as e:
                _log.error("session log {path}: {error}", path=self.destination, error=e)
        else:
            _log.info("{line}", line=line, **{"session_" + k: v for k, v in fields.items()})

    def reopen(self) -> None:
        """
        Reopen the file (after logrotate moved it away). If the new file
        cannot be opened, the error is logged and the old one is kept.
        """
        if self._file is None:
            return
        try:
            new = self._opener(self.destination)
        except OSError as e:
            _log.error("session log {path}: cannot reopen ({error}); keeping the old file",
                       path=self.destination, error=e.strerror or e)
            return
        old, self._file = self._file, new
        old.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
