"""
Tests for L{txsockproxy.sessionlog} and the end reasons sessions record.
"""

from __future__ import annotations

import io
import json

from relay_fakes import Proxy, lost
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from txsockproxy.relay import Session
from txsockproxy.sessionlog import SessionLog, formatText


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
            finishedSession(proxy)
        [event] = [e for e in events if "session_end" in e]
        self.assertEqual(
            event["line"],
            'proxy=test listen=tcp:8080 client=127.0.0.2:40000 backend=a bytes_up=5 '
            'bytes_down=7 duration=2.5 end="client closed"',
        )
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
        finishedSession(proxy)
        [line] = files[0].getvalue().splitlines()
        self.assertEqual(json.loads(line), {
            "time": "1970-01-02T00:00:00Z", "proxy": "test", "listen": "",
            "client": "127.0.0.2:40000", "backend": "a", "bytes_up": 5, "bytes_down": 7,
            "duration": 2.5, "end": "client closed",
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
        a.adminState = "down"
        self.assertEqual(a.stateAt(proxy.clock.seconds()), "down")
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
