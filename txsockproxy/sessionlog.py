"""
The session log: one line per finished session, as text or as JSON, into the
twistd log or into a file of its own.
"""

from __future__ import annotations

import json
import math
import time
from json.encoder import encode_basestring_ascii
from typing import IO, TYPE_CHECKING, Any, Callable, Optional

from twisted.logger import Logger, LogLevel

from txsockproxy.addresses import formatAddress

if TYPE_CHECKING:
    from txsockproxy.relay import Session

# A module-level logger: as a class attribute, Logger takes the class's name
# as its namespace, and operators filter on this one.
_log = Logger(namespace="txsockproxy.session")

# What json.dumps(fields, separators=(",", ":")) uses, made once: json.dumps
# with any non-default argument builds a new encoder per call.
_jsonEncoder = json.JSONEncoder(separators=(",", ":"))

_Values = tuple[str, str, str, str, int, int, float, str, str, str]

# A proxy with routes adds a last field, "route": the name of the group of
# backends its server name chose ("default" when no route matched).
_FIELDS = (
    "proxy", "listen", "client", "backend", "bytes_up", "bytes_down", "duration", "end", "id",
    "route",
)


def _sessionValues(session: Session) -> _Values:
    """
    What the session log records of C{session}, in the order of C{_FIELDS};
    its route is C{""} when the proxy has none.
    """
    backend = session.backend
    pool = session.pool
    route = ""
    if pool.routes:
        route = backend.route if backend is not None else pool.groupOf(session.connection).name
    return (
        session.pool.name,
        session.factory.listen,
        formatAddress(session.connection.peer),
        backend.label if backend is not None and session.backendTransport is not None
        else "-",
        session.bytesFromClient,
        session.bytesFromBackend,
        round(session.duration, 6),
        session.ended or "closed",
        session.id,
        route,
    )


def sessionFields(session: Session) -> dict[str, Any]:
    """
    What the session log records of C{session}.
    """
    values = _sessionValues(session)
    fields = dict(zip(_FIELDS, values, strict=True))
    if not values[-1]:
        del fields["route"]
    return fields


def formatText(fields: dict[str, Any]) -> str:
    """
    A session as one line of C{key=value} pairs; values with spaces quoted.
    """
    return " ".join(f"{key}={_textValue(str(value))}" for key, value in fields.items())


def _textValue(text: str) -> str:
    """
    C{text} as a value in a C{key=value} line: JSON-quoted when it is empty
    or holds a space, C{"} or C{=}, so that the line splits back into its
    fields; as it is otherwise.
    """
    if not text or " " in text or '"' in text or "=" in text:
        # What json.dumps(text) returns for a str, without its dispatch.
        return encode_basestring_ascii(text)
    return text


def _textLine(values: _Values) -> str:
    """
    C{formatText(dict(zip(_FIELDS, values)))}, without the dict.

    Numbers need no quoting: C{str} of an int or a float is never empty and
    holds no space, C{"} or C{=}.
    """
    proxy, listen, client, backend, up, down, duration, end, sid, route = values
    line = (
        f"proxy={_textValue(proxy)} listen={_textValue(listen)} client={_textValue(client)} "
        f"backend={_textValue(backend)} bytes_up={up} bytes_down={down} duration={duration} "
        f"end={_textValue(end)} id={_textValue(sid)}"
    )
    return f"{line} route={_textValue(route)}" if route else line


def _jsonObject(values: _Values, stamp: Optional[str]) -> str:
    """
    C{json.dumps(fields, separators=(",", ":"))} of C{dict(zip(_FIELDS,
    values))}, with a first C{"time"} field of C{stamp} unless it is
    L{None}, made without the dict.
    """
    proxy, listen, client, backend, up, down, duration, end, sid, route = values
    if not math.isfinite(duration):
        # JSON's NaN and Infinity are not Python's repr of them.
        fields = dict(zip(_FIELDS, values, strict=True))
        if not route:
            del fields["route"]
        return _jsonEncoder.encode(fields if stamp is None else {"time": stamp, **fields})
    # json writes ints and floats with int.__repr__ and float.__repr__ and
    # every str with encode_basestring_ascii (ensure_ascii is on).
    line = (
        f'"proxy":{encode_basestring_ascii(proxy)},'
        f'"listen":{encode_basestring_ascii(listen)},'
        f'"client":{encode_basestring_ascii(client)},'
        f'"backend":{encode_basestring_ascii(backend)},'
        f'"bytes_up":{up!r},"bytes_down":{down!r},"duration":{duration!r},'
        f'"end":{encode_basestring_ascii(end)},'
        f'"id":{encode_basestring_ascii(sid)}'
        + (f',"route":{encode_basestring_ascii(route)}}}' if route else "}")
    )
    if stamp is None:
        return "{" + line
    return f'{{"time":{encode_basestring_ascii(stamp)},{line}'


class SessionLog:
    """
    Writes one line per finished session.

    @param destination: C{"log"} (the Twisted log), C{"off"}, or a file path.
    @param logFormat: C{"text"} or C{"json"}.
    @param now: the time, for the timestamp of each line in a file.
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
        # The timestamp of every time in [_stampFrom, _stampUntil), one whole
        # second: time.strftime costs more than the rest of a text line.
        self._stamp = ""
        self._stampFrom = self._stampUntil = 0.0
        if destination not in ("log", "off"):
            self._file = opener(destination)

    def _timestamp(self) -> str:
        """
        The UTC time now, to the second, as C{2026-11-30T04:55:10Z}.
        """
        now = self._now()
        if not self._stampFrom <= now < self._stampUntil:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
            # gmtime rounds down, to the start of the second it names.
            self._stampFrom = math.floor(now)
            self._stampUntil = self._stampFrom + 1
        return self._stamp

    def __call__(self, session: Session) -> None:
        """
        Write the line of C{session}, which has ended.
        """
        if self.destination == "off":
            return
        values = _sessionValues(session)
        if self._file is None:
            if self.logFormat == "json":
                line = _jsonObject(values, None)
            else:
                line = _textLine(values)
            proxy, listen, client, backend, up, down, duration, end, sid, route = values
            _log.emit(
                LogLevel.info, "{line}", line=line, session_proxy=proxy,
                session_listen=listen, session_client=client, session_backend=backend,
                session_bytes_up=up, session_bytes_down=down, session_duration=duration,
                session_end=end, session_id=sid,
                **({"session_route": route} if route else {}),
            )
            return
        stamp = self._timestamp()
        if self.logFormat == "json":
            line = _jsonObject(values, stamp) + "\n"
        else:
            line = f"{stamp} {_textLine(values)}\n"
        try:
            self._file.write(line)
        except (OSError, ValueError) as e:
            _log.error("session log {path}: {error}", path=self.destination, error=e)

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
