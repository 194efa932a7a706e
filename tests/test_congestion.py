"""
Tests for L{txsockproxy.congestion}: which sockets get which TCP congestion
control algorithm, and what happens when the kernel refuses one.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Optional

from reactor_support import ReactorTestCase
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txsockproxy import congestion
from txsockproxy.congestion import Congestion, check, isLoopback, paces

KERNEL_NAMES = congestion.available()
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)


def algorithmOf(sock: socket.socket) -> str:
    """
    The congestion control algorithm of C{sock}, as the kernel reports it.
    """
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16).rstrip(b"\0").decode()


class FakeSocket:
    """
    A socket that records the algorithms set on it, refusing those in
    C{refuse} with the error given there.
    """

    def __init__(self, refuse: Optional[dict[bytes, int]] = None) -> None:
        self.refuse = refuse or {}
        self.set: list[bytes] = []

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        assert (level, option) == (socket.IPPROTO_TCP, TCP_CONGESTION)
        if value in self.refuse:
            raise OSError(self.refuse[value], "refused")
        self.set.append(value)


class FakeTransport:
    """
    A transport holding C{socket}, accepted from C{client} (as
    C{tcp.Server} holds it).
    """

    def __init__(self, sock: Any, client: Any) -> None:
        self.socket = sock
        self.client = client


class Wrapping:
    """
    A transport over another one, as a TLS transport is.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport


def captureWarnings(case: SynchronousTestCase) -> list[str]:
    """
    The text of the warnings logged from now until the end of C{case}.
    """
    seen: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return seen


class SettingTests(SynchronousTestCase):
    """
    What each setting chooses, for a given system algorithm and kernel.
    """

    NAMES = ("reno", "cubic", "bbr")

    def test_autoUnderBBR(self) -> None:
        """
        C{"auto"}, when the system's algorithm is BBR, gives loopback peers
        C{cubic}.
        """
        c = Congestion("auto", default="bbr", names=self.NAMES)
        self.assertEqual((c.name, c.loopbackOnly), (b"cubic", True))

    def test_autoWithoutCubic(self) -> None:
        """
        C{"auto"} falls back to C{reno} where the kernel has no C{cubic}.
        """
        c = Congestion("auto", default="bbr", names=("reno", "bbr"))
        self.assertEqual(c.name, b"reno")

    def test_autoUnderOthers(self) -> None:
        """
        C{"auto"} changes nothing when the system's algorithm does not pace,
        or cannot be read.
        """
        for default in ("cubic", "reno", "dctcp", ""):
            self.assertIsNone(Congestion("auto", default=default, names=self.NAMES).name)

    def test_system(self) -> None:
        """
        C{"system"} changes nothing, whatever the system's algorithm.
        """
        self.assertIsNone(Congestion("system", default="bbr", names=self.NAMES).name)

    def test_named(self) -> None:
        """
        An algorithm's name is given to every socket, loopback or not.
        """
        c = Congestion("reno", default="bbr", names=self.NAMES)
        self.assertEqual((c.name, c.loopbackOnly), (b"reno", False))

    def test_paces(self) -> None:
        """
        BBR and its versions pace; the loss-based algorithms do not.
        """
        self.assertEqual(
            [paces(n) for n in ("bbr", "bbr2", "bbr3", "cubic", "reno", None)],
            [True, True, True, False, False, False],
        )

    def test_check(self) -> None:
        """
        L{check} accepts C{"auto"}, C{"system"} and the kernel's algorithms,
        and names the choices when given another name; without the kernel's
        list (not Linux) it accepts only the first two.
        """
        self.assertIsNone(check("auto", self.NAMES))
        self.assertIsNone(check("system", None))
        self.assertIsNone(check("cubic", self.NAMES))
        self.assertEqual(
            check("vegas", self.NAMES),
            "'vegas' is not an algorithm of this kernel: one of auto, system, reno, cubic, bbr",
        )
        message = check("cubic", ())
        assert message is not None
        self.assertIn("one of auto, system", message)

    def test_summary(self) -> None:
        """
        L{congestion.summary} says what C{"auto"} does, or nothing when it
        changes nothing.
        """
        self.assertEqual(
            congestion.summary("bbr", ("reno", "bbr")),
            "TCP congestion control: the system's is bbr; with the default (auto),"
            " sockets with a loopback peer use reno",
        )
        self.assertIsNone(congestion.summary("cubic", self.NAMES))

    def test_isLoopback(self) -> None:
        """
        IPv4 loopback addresses, C{::1} and IPv4-mapped loopback addresses
        are loopback; others, and what is not an address, are not.
        """
        yes = ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"]
        no = ["10.0.0.1", "::ffff:10.0.0.1", "fe80::1", "", None, b"127.0.0.1"]
        self.assertEqual([isLoopback(h) for h in yes], [True] * len(yes))
        self.assertEqual([isLoopback(h) for h in no], [False] * len(no))


class ApplyTests(SynchronousTestCase):
    """
    L{Congestion.apply} sets the algorithm on the sockets that qualify.
    """

    def test_loopbackPeer(self) -> None:
        """
        C{"auto"} sets its algorithm on a socket whose peer is on loopback.
        """
        sock = FakeSocket()
        Congestion("auto", default="bbr", names=("cubic",)).apply(
            FakeTransport(sock, ("127.0.0.1", 4000))
        )
        self.assertEqual(sock.set, [b"cubic"])

    def test_remotePeer(self) -> None:
        """
        C{"auto"} leaves a socket whose peer is elsewhere alone; a named
        algorithm is set on it.
        """
        sock = FakeSocket()
        transport = FakeTransport(sock, ("192.0.2.7", 4000))
        Congestion("auto", default="bbr", names=("cubic",)).apply(transport)
        self.assertEqual(sock.set, [])
        Congestion("reno", default="bbr", names=("reno",)).apply(transport)
        self.assertEqual(sock.set, [b"reno"])

    def test_clientTransport(self) -> None:
        """
        A client transport's peer is its resolved address (C{realAddress}).
        """

        class Client:
            def __init__(self) -> None:
                self.socket = FakeSocket()
                self.realAddress = ("::1", 80, 0, 0)

        client = Client()
        Congestion("auto", default="bbr", names=("cubic",)).apply(client)
        self.assertEqual(client.socket.set, [b"cubic"])

    def test_underWrapping(self) -> None:
        """
        Through a wrapping transport (TLS), the socket underneath gets it.
        """
        sock = FakeSocket()
        Congestion("reno", names=("reno",)).apply(
            Wrapping(Wrapping(FakeTransport(sock, ("127.0.0.1", 1))))
        )
        self.assertEqual(sock.set, [b"reno"])

    def test_noSocket(self) -> None:
        """
        A transport with no socket underneath is left alone.
        """
        Congestion("reno", names=("reno",)).apply(Wrapping(object()))

    def test_unixPeer(self) -> None:
        """
        A unix socket (peer C{(path, None)} on a server, a path on a client)
        is left alone, even with a named algorithm.
        """
        sock = FakeSocket()
        c = Congestion("reno", names=("reno",))
        c.apply(FakeTransport(sock, ("/run/x.sock", None)))
        c.apply(FakeTransport(sock, "/run/x.sock"))
        self.assertEqual(sock.set, [])

    def test_refusedFallsBack(self) -> None:
        """
        If the kernel refuses C{"auto"}'s first choice, the next one is set,
        and used from then on, and the refusal is logged once.
        """
        seen = captureWarnings(self)
        congestion._reported.clear()
        c = Congestion("auto", default="bbr", names=("reno", "cubic"))
        refusing = FakeSocket({b"cubic": errno.EPERM})
        c.apply(FakeTransport(refusing, ("127.0.0.1", 1)))
        self.assertEqual((refusing.set, c.name), ([b"reno"], b"reno"))
        other = FakeSocket({b"cubic": errno.EPERM})
        c.apply(FakeTransport(other, ("127.0.0.1", 2)))
        self.assertEqual(other.set, [b"reno"])
        self.assertEqual(len(seen), 1, seen)
        self.assertIn("'cubic' cannot be set", seen[0])
        self.assertIn("using 'reno'", seen[0])

    def test_refusedAltogether(self) -> None:
        """
        If the kernel refuses every choice, sockets keep the system's
        algorithm and nothing more is tried.
        """
        seen = captureWarnings(self)
        congestion._reported.clear()
        c = Congestion("reno", names=("reno",))
        c.apply(FakeTransport(FakeSocket({b"reno": errno.ENOENT}), ("127.0.0.1", 1)))
        self.assertIsNone(c.name)
        self.assertEqual(len(seen), 1)
        self.assertIn("keeping the system's", seen[0])

    def test_closedSocket(self) -> None:
        """
        A socket closed meanwhile (C{EBADF}) changes nothing and logs nothing.
        """
        seen = captureWarnings(self)
        c = Congestion("reno", names=("reno",))
        c.apply(FakeTransport(FakeSocket({b"reno": errno.EBADF}), ("127.0.0.1", 1)))
        self.assertEqual((c.name, seen), (b"reno", []))


class ProxySocketsTests(ReactorTestCase):
    """
    A proxy gives its client and backend sockets the configured algorithms.
    """

    def setUp(self) -> None:
        if not KERNEL_NAMES:
            raise self.skipTest("needs Linux's congestion control algorithms")
        super().setUp()

    def sessionSockets(self, clientCongestion: str, backendCongestion: str) -> tuple[str, str]:
        """
        The algorithms of the client and backend sockets of one session of a
        proxy with these settings.
        """
        backend = self.listenTCP()
        factory, listening = self.proxy(backend, clientCongestion, backendCongestion)
        client = socket.create_connection(("127.0.0.1", listening.getHost().port))
        self.addCleanup(client.close)
        self.turnUntil(lambda: any(s.backendTransport for s in factory.sessions.open))
        accepted, _ = backend.accept()
        self.addCleanup(accepted.close)
        [session] = factory.sessions.open
        return (
            algorithmOf(session.clientTransport.socket),
            algorithmOf(session.backendTransport.socket),
        )

    def test_named(self) -> None:
        """
        Named algorithms are set on the client and the backend sockets.
        """
        self.assertEqual(self.sessionSockets("reno", "reno"), ("reno", "reno"))

    def test_system(self) -> None:
        """
        With C{"system"}, both sockets keep the system's algorithm.
        """
        default = congestion.systemDefault()
        self.assertEqual(self.sessionSockets("system", "system"), (default, default))

    def test_auto(self) -> None:
        """
        With C{"auto"} (the default), loopback sockets get C{cubic} when the
        system's algorithm is BBR, and keep the system's otherwise.
        """
        default = congestion.systemDefault()
        assert KERNEL_NAMES is not None
        if paces(default):
            expected = "cubic" if "cubic" in KERNEL_NAMES else "reno"
        else:
            expected = default or ""
        self.assertEqual(self.sessionSockets("auto", "auto"), (expected, expected))
