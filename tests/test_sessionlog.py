"""
Tests for L{txsockproxy.sessionlog} and the end reasons sessions record.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any, Callable, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import Proxy, lost
from txsockproxy import sessionlog
from txsockproxy.relay import Session
from txsockproxy.sessionlog import SessionLog, formatText, sessionFields


class _File(io.StringIO):
    def close(self) -> None:
        self.closedTimes = getattr(self, "closedTimes", 0) + 1


def finishedSession(proxy: Proxy) -> Session:
    """
    A session of C{proxy} that relayed 5 bytes up and 7 down in 2.5 s and
    was closed by the client first.
    """
    client, _ = proxy.accept()
    backend, _ = proxy.endpoints["a"].succeed()
    client.dataReceived(b"hello")
    backend.dataReceived(b"goodbye")
    proxy.clock.advance(2.5)
    client.readConnectionLost()
    backend.readConnectionLost()
    client.connectionLost(lost())
    backend.connectionLost(lost())
    assert client.session is not None
    return client.session


def referenceText(fields: dict[str, Any]) -> str:
    """
    The text line as the session log first wrote it, the rule its faster
    code must keep to the byte.
    """
    parts = []
    for key, value in fields.items():
        text = str(value)
        if not text or any(c in text for c in ' "='):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def referenceStamp(now: float) -> str:
    """
    The timestamp of a line written at C{now}, as the session log first
    made it (for every line).
    """
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + "Z"


class _Named:
    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)


class _FakeSession:
    """
    What the session log reads of a session, each part chosen by the test.
    """

    def __init__(self, proxy: str = "web", listen: str = "tcp:8080", host: str = "127.0.0.1",
                 port: object = 45670, label: str = "a", connected: bool = True,
                 up: int = 2, down: int = 28, duration: float = 0.2024761,
                 ended: str | None = "client closed", sid: str = "0a1b2c3d-1f",
                 route: str = "") -> None:
        # A pool with routes has at least the default group and one route.
        self.pool = _Named(name=proxy, routes=["a route"] if route else [])
        self.factory = _Named(listen=listen)
        self.connection = _Named(peer=_Named(host=host, port=port))
        self.backend = _Named(label=label, route=route)
        self.backendTransport = object() if connected else None
        self.bytesFromClient = up
        self.bytesFromBackend = down
        self.duration = duration
        self.ended = ended
        self.id = sid

    def asSession(self) -> Session:
        return cast(Session, self)


def logged(logFormat: str, session: Session) -> dict[str, Any]:
    """
    The event that a L{SessionLog} into the Twisted log emits for C{session}.
    """
    with capturedLogs() as events:
        SessionLog("log", logFormat)(session)
    [event] = events
    return cast("dict[str, Any]", event)


def written(logFormat: str, session: Session, times: list[float]) -> str:
    """
    What a L{SessionLog} into a file writes for C{session}, once at each of
    C{times}.
    """
    out = _File()
    clock = iter(times)
    log = SessionLog("/s.log", logFormat, opener=lambda path: out, now=lambda: next(clock))
    for _ in times:
        log(session)
    return out.getvalue()


texts = st.text(max_size=12) | st.sampled_from(["", " ", '"', "=", "a b", "tcp:80:interface=::1"])


class SessionLogTests(SynchronousTestCase):
    """
    L{SessionLog} writes one line per finished session.
    """

    def test_recordedAtEnd(self) -> None:
        """
        The service's recorder is called once, when the session has ended.
        """
        proxy = Proxy()
        recorded: list[Session] = []
        proxy.factory.sessions.recorder = recorded.append
        session = finishedSession(proxy)
        self.assertEqual(recorded, [session])

    def test_textIntoLog(self) -> None:
        """
        By default a session is one C{key=value} line in the Twisted log,
        with client, listener, backend, bytes each way, duration and how it
        ended; the fields are also in the event.
        """
        proxy = Proxy()
        proxy.factory.listen = "tcp:8080"
        proxy.factory.sessions.recorder = SessionLog("log", "text")
        with capturedLogs() as events:
            session = finishedSession(proxy)
        [event] = [e for e in events if "session_end" in e]
        self.assertEqual(
            event["line"],
            'proxy=test listen=tcp:8080 client=127.0.0.2:40000 backend=a bytes_up=5 '
            f'bytes_down=7 duration=2.5 end="client closed" id={session.id}',
        )
        self.assertRegex(session.id, r"^[0-9a-f]{8}-[0-9a-f]+$")
        self.assertEqual(event["session_bytes_down"], 7)

    def test_jsonFile(self) -> None:
        """
        Into a file of its own, as JSON lines with a UTC timestamp.
        """
        files: list[_File] = []

        def opener(path: str) -> _File:
            self.assertEqual(path, "/var/log/s.log")
            files.append(_File())
            return files[-1]

        log = SessionLog("/var/log/s.log", "json", opener=opener, now=lambda: 86400.0)
        proxy = Proxy()
        proxy.factory.sessions.recorder = log
        session = finishedSession(proxy)
        [line] = files[0].getvalue().splitlines()
        self.assertEqual(json.loads(line), {
            "time": "1970-01-02T00:00:00Z", "proxy": "test", "listen": "tcp:8080",
            "client": "127.0.0.2:40000", "backend": "a", "bytes_up": 5, "bytes_down": 7,
            "duration": 2.5, "end": "client closed", "id": session.id,
        })
        log.reopen()
        self.assertEqual(len(files), 2)
        self.assertEqual(files[0].closedTimes, 1)

    def test_off(self) -> None:
        """
        C{"off"} writes nothing.
        """
        proxy = Proxy()
        proxy.factory.sessions.recorder = SessionLog("off", "text")
        with capturedLogs() as events:
            finishedSession(proxy)
        self.assertEqual([e for e in events if "session_end" in e], [])

    def test_quoting(self) -> None:
        """
        Values with spaces, quotes or C{=} are quoted, so a line splits back
        into its fields.
        """
        self.assertEqual(formatText({"a": "x y", "b": 'q"', "c": "", "d": 1}),
                         'a="x y" b="q\\"" c="" d=1')


    def test_eventFields(self) -> None:
        """
        The event in the Twisted log carries every field of the session as
        C{session_}I{name}, with the values of L{sessionFields}.
        """
        proxy = Proxy()
        proxy.factory.sessions.recorder = SessionLog("log", "json")
        with capturedLogs() as events:
            session = finishedSession(proxy)
        [event] = [e for e in events if "session_end" in e]
        expected = {"session_" + k: v for k, v in sessionFields(session).items()}
        self.assertEqual({k: v for k, v in event.items() if k.startswith("session_")}, expected)
        self.assertEqual(event["line"], json.dumps(sessionFields(session), separators=(",", ":")))
        self.assertEqual(event["log_format"], "{line}")
        self.assertEqual(event["log_namespace"], "txsockproxy.session")
        self.assertEqual(event["log_level"].name, "info")

    def test_sessionFields(self) -> None:
        """
        L{sessionFields} names what the session log records, in the order of
        a line; a session that never connected a backend has backend C{-},
        one without an end reason ended C{closed}.
        """
        session = _FakeSession(connected=False, ended=None, duration=1.23456789)
        self.assertEqual(list(sessionFields(session.asSession()).items()), [
            ("proxy", "web"), ("listen", "tcp:8080"), ("client", "127.0.0.1:45670"),
            ("backend", "-"), ("bytes_up", 2), ("bytes_down", 28), ("duration", 1.234568),
            ("end", "closed"), ("id", "0a1b2c3d-1f"),
        ])

    def test_quotingEdges(self) -> None:
        """
        L{formatText} quotes exactly the values that are empty or hold a
        space, C{"} or C{=}, as JSON strings (non-ASCII escaped); numbers
        and other text go as they are.
        """
        self.assertEqual(
            formatText({"a": "=", "b": " ", "c": "x\ty", "d": "é", "e": "é f", "f": 0.0,
                        "g": -1, "h": "a:b,c", "i": "\\"}),
            'a="=" b=" " c=x\ty d=é e="\\u00e9 f" f=0.0 g=-1 h=a:b,c i=\\',
        )

    @settings(max_examples=300, deadline=None)
    @given(data=st.data())
    def test_sameAsReference(self, data: st.DataObject) -> None:
        """
        For any names, addresses, counts, durations (NaN and infinities
        too) and end reasons, each format writes to the byte what the first
        session log wrote: text with quoting by L{formatText}'s rule, JSON
        as C{json.dumps} with compact separators, with the same event
        fields and the same timestamp in a file.
        """
        session = _FakeSession(
            proxy=data.draw(texts), listen=data.draw(texts), host=data.draw(texts),
            port=data.draw(st.integers(0, 65535) | texts), label=data.draw(texts),
            connected=data.draw(st.booleans()), up=data.draw(st.integers(min_value=0)),
            down=data.draw(st.integers(min_value=0)),
            duration=data.draw(st.floats() | st.integers(0, 10**6)),
            ended=data.draw(st.none() | texts),
        ).asSession()
        now = data.draw(st.floats(min_value=-1e9, max_value=4e9))
        fields = sessionFields(session)
        self.assertEqual(formatText(fields), referenceText(fields))
        reference = {
            "text": referenceText(fields),
            "json": json.dumps(fields, separators=(",", ":")),
        }
        for logFormat in ("text", "json"):
            event = logged(logFormat, session)
            self.assertEqual(event["line"], reference[logFormat])
            for key, value in fields.items():
                # NaN is not equal to itself: compare its text.
                self.assertEqual(repr(event["session_" + key]), repr(value))
        self.assertEqual(written("text", session, [now]),
                         f"{referenceStamp(now)} {reference['text']}\n")
        stamped = {"time": referenceStamp(now), **fields}
        self.assertEqual(written("json", session, [now]),
                         json.dumps(stamped, separators=(",", ":")) + "\n")


class TimestampTests(SynchronousTestCase):
    """
    A session log file stamps each line with the UTC second it was written
    in, formatting that second once.
    """

    def test_rollsOver(self) -> None:
        """
        Lines within one second share its stamp; the first line at or after
        the next second has the next one, and a clock set back gets the
        earlier second again.
        """
        times = [86400.0, 86400.25, 86400.999999, 86401.0, 86401.5, 86400.5, 86462.0]
        lines = written("text", _FakeSession().asSession(), times).splitlines()
        self.assertEqual([line.split(" ", 1)[0] for line in lines], [
            "1970-01-02T00:00:00Z", "1970-01-02T00:00:00Z", "1970-01-02T00:00:00Z",
            "1970-01-02T00:00:01Z", "1970-01-02T00:00:01Z", "1970-01-02T00:00:00Z",
            "1970-01-02T00:01:02Z",
        ])
        self.assertEqual([line.split(" ", 1)[0] for line in lines],
                         [referenceStamp(t) for t in times])

    def test_beforeTheEpoch(self) -> None:
        """
        A time before 1970 is stamped with the second that holds it, as
        C{time.gmtime} rounds it, and the next second follows.
        """
        lines = written("json", _FakeSession().asSession(), [-0.5, -0.000001, 0.0]).splitlines()
        self.assertEqual([json.loads(line)["time"] for line in lines],
                         ["1969-12-31T23:59:59Z", "1969-12-31T23:59:59Z", "1970-01-01T00:00:00Z"])

    def test_formattedOncePerSecond(self) -> None:
        """
        The time is turned into text once per second that lines are written
        in, not once per line.
        """
        calls: list[float] = []
        gmtime: Callable[[float], time.struct_time] = time.gmtime

        def counting(seconds: float) -> time.struct_time:
            calls.append(seconds)
            return gmtime(seconds)

        self.patch(sessionlog.time, "gmtime", counting)
        lines = written("text", _FakeSession().asSession(),
                        [10.0, 10.5, 10.9, 11.1, 11.2]).splitlines()
        self.assertEqual(len(lines), 5)
        self.assertEqual(calls, [10.0, 11.1])


class EndReasonTests(SynchronousTestCase):
    """
    How a session ended, as the session log says it.
    """

    def end(self, steps) -> str:  # type: ignore[no-untyped-def]
        proxy = Proxy(labels=("a",), idleTimeout=5)
        client, ct = proxy.accept()
        steps(proxy, client)
        assert client.session is not None
        return client.session.ended or ""

    def test_reasons(self) -> None:
        """
        Each way a session ends has its own words.
        """

        def backendFirst(proxy, client):  # type: ignore[no-untyped-def]
            backend, _ = proxy.endpoints["a"].succeed()
            backend.readConnectionLost()
            client.readConnectionLost()

        def reset(proxy, client):  # type: ignore[no-untyped-def]
            proxy.endpoints["a"].succeed()
            client.connectionLost(lost(clean=False))

        def idle(proxy, client):  # type: ignore[no-untyped-def]
            proxy.endpoints["a"].succeed()
            proxy.clock.advance(5)

        def down(proxy, client):  # type: ignore[no-untyped-def]
            proxy.endpoints["a"].fail(ConnectionRefusedError())

        def leaves(proxy, client):  # type: ignore[no-untyped-def]
            client.connectionLost(lost())

        self.assertEqual(self.end(backendFirst), "backend closed")
        self.assertEqual(self.end(reset), "client reset")
        self.assertEqual(self.end(idle), "idle timeout")
        self.assertEqual(self.end(down), "all backends down")
        self.assertEqual(self.end(leaves), "client left while connecting")


class AdminStateTests(SynchronousTestCase):
    """
    Backends drained or disabled by an operator take no new sessions.
    """

    def test_drainedAndDownSkipped(self) -> None:
        """
        A draining or down backend is not chosen; its sessions in flight go
        on; enabled again, it is chosen again.
        """
        proxy = Proxy(labels=("a", "b"))
        client, _ = proxy.accept()
        proxy.endpoints["a"].succeed()
        a = proxy.backends["a"]
        a.adminState = "draining"
        for _ in range(3):
            other, _ = proxy.accept()
            self.assertEqual(other.session.backend.label, "b")  # type: ignore[union-attr]
        self.assertEqual(a.active, 1)
        self.assertEqual(a.stateAt(proxy.clock.seconds()), "draining")
        a.adminState = "maintenance"
        self.assertEqual(a.stateAt(proxy.clock.seconds()), "maintenance")
        proxy.accept()
        self.assertEqual(len(proxy.endpoints["a"].attempts), 1)
        a.adminState = "up"
        late, _ = proxy.accept()
        self.assertEqual(late.session.backend.label, "a")  # type: ignore[union-attr]


class FailureTests(SynchronousTestCase):
    """
    A session log that fails costs no session and no shutdown.
    """

    def test_reopenFailureKeepsOldFile(self) -> None:
        """
        When the file cannot be reopened, the error is logged and lines keep
        going to the old file.
        """
        files = [_File()]

        def opener(path: str) -> _File:
            if len(files) == 1 and getattr(files[0], "opened", False):
                raise PermissionError(13, "Permission denied")
            files[0].opened = True  # type: ignore[attr-defined]
            return files[0]

        log = SessionLog("/var/log/s.log", "text", opener=opener)
        with capturedLogs() as events:
            log.reopen()
        self.assertTrue(any("cannot reopen" in e.get("log_format", "") for e in events))
        proxy = Proxy()
        proxy.factory.sessions.recorder = log
        finishedSession(proxy)
        self.assertEqual(len(files[0].getvalue().splitlines()), 1)

    def test_recorderErrorStillEndsSession(self) -> None:
        """
        A recorder that raises does not keep a shutdown waiting: the
        session is still removed and C{whenEmpty} fires.
        """
        proxy = Proxy()

        def broken(session: Session) -> None:
            raise ValueError("I/O operation on closed file")

        proxy.factory.sessions.recorder = broken
        client, _ = proxy.accept()
        waiting = proxy.factory.sessions.whenEmpty()
        self.assertRaises(ValueError, client.connectionLost, lost())
        self.successResultOf(waiting)
        self.assertEqual(proxy.factory.sessions.open, set())
