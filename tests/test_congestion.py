"""
Tests for L{txsockproxy.congestion}: which sockets get which TCP congestion
control algorithm, and what happens when the kernel refuses one.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Optional

from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import WrappingTransport
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

    def __init__(
        self,
        refuse: Optional[dict[bytes, int]] = None,
        local: str = "10.9.9.9",
        algorithm: bytes = b"bbr",
    ) -> None:
        self.refuse = refuse or {}
        self.local = local
        self.algorithm = algorithm
        self.set: list[bytes] = []
        self.asked = 0

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        assert (level, option) == (socket.IPPROTO_TCP, TCP_CONGESTION)
        self.asked += 1
        return self.algorithm.ljust(size, b"\0")

    def getsockname(self) -> tuple[str, int]:
        return (self.local, 5000)

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        assert (level, option) == (socket.IPPROTO_TCP, TCP_CONGESTION)
        if value in self.refuse:
            raise OSError(self.refuse[value], "refused")
        self.set.append(value)
        self.algorithm = value


class FakeTransport:
    """
    A transport holding C{socket}, accepted from C{client} (as
    C{tcp.Server} holds it).
    """

    def __init__(self, sock: Any, client: Any) -> None:
        self.socket = sock
        self.client = client


class FakePort:
    """
    A listening port bound to C{host}.
    """

    def __init__(self, host: str) -> None:
        self.socket = FakeSocket(local=host)


class Accepted(FakeTransport):
    """
    A connection accepted by C{port}, from C{client}; its socket was given
    C{algorithm} when the kernel created it.
    """

    def __init__(self, port: FakePort, client: Any, algorithm: bytes = b"bbr") -> None:
        super().__init__(FakeSocket(algorithm=algorithm), client)
        self.server = port


def captureLog(case: SynchronousTestCase) -> list[str]:
    """
    The messages logged at level info or above from now until the end of
    C{case}, each after its level's name (C{"warn: ..."}).
    """
    seen: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.info:
            seen.append(f"{level.name}: {formatEvent(event)}")

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
        C{"auto"}, when the system's algorithm is BBR, gives peers on this
        host C{cubic}.
        """
        c = Congestion("auto", default="bbr", names=self.NAMES)
        self.assertEqual((c.name, c.loopbackOnly), (b"cubic", True))

    def test_autoWithoutCubic(self) -> None:
        """
        C{"auto"} falls back to C{reno} where the kernel has no C{cubic}.
        """
        c = Congestion("auto", default="bbr", names=("reno", "bbr"))
        self.assertEqual(c.name, b"reno")

    def test_autoNotAllowed(self) -> None:
        """
        C{"auto"} chooses only among the algorithms the process may set:
        C{reno} where C{cubic} is not allowed to it.
        """
        names = ("reno", "cubic", "bbr")
        self.assertEqual(Congestion("auto", "bbr", names, allowed=("reno", "bbr")).name, b"reno")
        self.assertEqual(Congestion("auto", "bbr", names, allowed=congestion.ALL).name, b"cubic")

    def test_allowedToUs(self) -> None:
        """
        Root may set every algorithm; another user those of
        C{net.ipv4.tcp_allowed_congestion_control}.
        """
        self.patch(congestion, "_read", lambda name: {"tcp_allowed_congestion_control": "reno bbr"}[name])
        self.patch(congestion.os, "geteuid", lambda: 0)
        self.assertIs(congestion._allowedToUs(), congestion.ALL)
        self.patch(congestion.os, "geteuid", lambda: 1000)
        self.assertEqual(congestion._allowedToUs(), ("reno", "bbr"))

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
            " sockets whose peer is on this host use reno",
        )
        self.assertIsNone(congestion.summary("cubic", self.NAMES))

    def test_isLoopback(self) -> None:
        """
        IPv4 loopback addresses, C{::1} and IPv4-mapped loopback addresses
        are loopback; others, and what is not an address, are not.
        """
        yes = ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"]
        no = ["10.0.0.1", "::ffff:10.0.0.1", "fe80::1", "0.0.0.0", "::", "", None, b"127.0.0.1"]
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

    def test_ownAddress(self) -> None:
        """
        C{"auto"} sets its algorithm on a socket whose peer has the socket's
        own address (another address of this host, carried over loopback).
        """
        sock = FakeSocket(local="192.0.2.7")
        Congestion("auto", default="bbr", names=("cubic",)).apply(
            FakeTransport(sock, ("192.0.2.7", 4000))
        )
        self.assertEqual(sock.set, [b"cubic"])

    def test_onThisHost(self) -> None:
        """
        L{congestion.onThisHost}: loopback addresses, the unspecified
        addresses (connected to, they reach this host), and the socket's own
        address; not another address, nor when the socket cannot tell.
        """

        class Closed:
            def getsockname(self) -> Any:
                raise OSError(errno.EBADF, "closed")

        self.assertTrue(congestion.onThisHost(Closed(), "127.0.0.1"))
        self.assertTrue(congestion.onThisHost(Closed(), "0.0.0.0"))
        self.assertTrue(congestion.onThisHost(Closed(), "::"))
        self.assertTrue(congestion.onThisHost(FakeSocket(local="192.0.2.7"), "192.0.2.7"))
        self.assertFalse(congestion.onThisHost(FakeSocket(local="192.0.2.7"), "192.0.2.8"))
        self.assertFalse(congestion.onThisHost(Closed(), "192.0.2.8"))

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
            WrappingTransport(WrappingTransport(FakeTransport(sock, ("127.0.0.1", 1))))
        )
        self.assertEqual(sock.set, [b"reno"])

    def test_noSocket(self) -> None:
        """
        A transport with no socket underneath is left alone.
        """
        seen = captureLog(self)
        # A TCP transport once closed: it still knows its peer, but its
        # socket is gone (Twisted deletes the attribute).
        closed = FakeTransport(None, ("127.0.0.1", 1))
        del closed.socket
        c = Congestion("reno", names=("reno",))
        for transport in (WrappingTransport(object()), WrappingTransport(closed), closed):
            c.apply(transport)
        self.assertFalse(hasattr(closed, "socket"))
        # Nothing was tried, so nothing was refused: the choice stands, and
        # the next transport with a socket gets it.
        self.assertEqual((c.name, seen), (b"reno", []))
        sock = FakeSocket()
        c.apply(FakeTransport(sock, ("127.0.0.1", 1)))
        self.assertEqual(sock.set, [b"reno"])

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
        and used from then on, and the refusal is logged once, as
        information: C{"auto"} does what it is meant to.
        """
        seen = captureLog(self)
        congestion._reported.clear()
        c = Congestion("auto", default="bbr", names=("reno", "cubic"))
        refusing = FakeSocket({b"cubic": errno.EPERM})
        c.apply(FakeTransport(refusing, ("127.0.0.1", 1)))
        self.assertEqual((refusing.set, c.name), ([b"reno"], b"reno"))
        other = FakeSocket({b"cubic": errno.EPERM})
        c.apply(FakeTransport(other, ("127.0.0.1", 2)))
        self.assertEqual(other.set, [b"reno"])
        self.assertEqual(len(seen), 1, seen)
        self.assertTrue(seen[0].startswith("info: "), seen)
        self.assertIn("'cubic' cannot be set", seen[0])
        self.assertIn("using 'reno'", seen[0])

    def test_refusedAltogether(self) -> None:
        """
        If the kernel refuses every choice, sockets keep the system's
        algorithm and nothing more is tried; that is a warning.
        """
        seen = captureLog(self)
        congestion._reported.clear()
        c = Congestion("reno", names=("reno",))
        c.apply(FakeTransport(FakeSocket({b"reno": errno.ENOENT}), ("127.0.0.1", 1)))
        self.assertIsNone(c.name)
        self.assertEqual(len(seen), 1)
        self.assertTrue(seen[0].startswith("warn: "), seen)
        self.assertIn("keeping the system's", seen[0])

    def test_eachOutcomeReported(self) -> None:
        """
        The same refusal leading to another outcome for another setting is
        reported too: C{"auto"} going on with C{reno} does not hide a named
        C{cubic} left off.
        """
        seen = captureLog(self)
        congestion._reported.clear()
        refusing = {b"cubic": errno.EPERM}
        auto = Congestion("auto", default="bbr", names=("cubic", "reno"))
        named = Congestion("cubic", names=("cubic",))
        auto.apply(FakeTransport(FakeSocket(refusing), ("127.0.0.1", 1)))
        named.apply(FakeTransport(FakeSocket(refusing), ("127.0.0.1", 2)))
        self.assertEqual((auto.name, named.name), (b"reno", None))
        self.assertEqual(len(seen), 2, seen)
        self.assertIn("info: ", seen[0])
        self.assertIn("using 'reno'", seen[0])
        self.assertIn("warn: ", seen[1])
        self.assertIn("keeping the system's", seen[1])

    def test_closedSocket(self) -> None:
        """
        A socket closed meanwhile (C{EBADF}) changes nothing and logs nothing.
        """
        seen = captureLog(self)
        c = Congestion("reno", names=("reno",))
        c.apply(FakeTransport(FakeSocket({b"reno": errno.EBADF}), ("127.0.0.1", 1)))
        self.assertEqual((c.name, seen), (b"reno", []))


class BeforeConnectTests(SynchronousTestCase):
    """
    L{Congestion.beforeConnect} gives a socket about to connect the
    algorithm when the address is enough to tell.
    """

    def test_loopback(self) -> None:
        """
        C{"auto"} sets its algorithm before a connect to a loopback or
        unspecified address, and says nothing is left to do.
        """
        for host in ("127.0.0.1", "::1", "0.0.0.0"):
            sock = FakeSocket()
            self.assertTrue(Congestion("auto", "bbr", ("cubic",)).beforeConnect(sock, host))
            self.assertEqual(sock.set, [b"cubic"])

    def test_otherAddress(self) -> None:
        """
        Before a connect to another address, C{"auto"} leaves the socket
        alone and says it must be looked at once connected (it may be this
        host's own address); a named algorithm is set.
        """
        sock = FakeSocket()
        self.assertFalse(Congestion("auto", "bbr", ("cubic",)).beforeConnect(sock, "192.0.2.7"))
        self.assertEqual(sock.set, [])
        self.assertTrue(Congestion("reno", names=("reno",)).beforeConnect(sock, "192.0.2.7"))
        self.assertEqual(sock.set, [b"reno"])

    def test_refused(self) -> None:
        """
        A refused choice gives way to the next one before the connect too.
        """
        captureLog(self)
        congestion._reported.clear()
        sock = FakeSocket({b"cubic": errno.EPERM})
        c = Congestion("auto", "bbr", ("cubic", "reno"))
        self.assertTrue(c.beforeConnect(sock, "127.0.0.1"))
        self.assertEqual((sock.set, c.name), ([b"reno"], b"reno"))


class ApplyAcceptedTests(SynchronousTestCase):
    """
    L{Congestion.applyAccepted} gives the listening socket the algorithm
    when every connection it accepts qualifies, so that the kernel gives it
    to the connections it creates from then on.
    """

    def test_loopbackListener(self) -> None:
        """
        Under C{"auto"}, the first connection of a port bound to a loopback
        address gets the algorithm, and so does the listening socket; a
        connection created before that is found and switched; once one
        created after it is seen, later ones are not looked at.
        """
        port = FakePort("127.0.0.1")
        c = Congestion("auto", "bbr", ("cubic",))
        first = Accepted(port, ("127.0.0.1", 1))
        c.applyAccepted(first)
        self.assertEqual((first.socket.set, port.socket.set), ([b"cubic"], [b"cubic"]))
        earlier = Accepted(port, ("127.0.0.1", 2))  # created before the change
        c.applyAccepted(earlier)
        self.assertEqual(earlier.socket.set, [b"cubic"])
        later = Accepted(port, ("127.0.0.1", 3), algorithm=b"cubic")
        c.applyAccepted(later)
        self.assertEqual((later.socket.set, later.socket.asked), ([], 1))
        last = Accepted(port, ("127.0.0.1", 4), algorithm=b"cubic")
        c.applyAccepted(last)
        self.assertEqual((last.socket.set, last.socket.asked), ([], 0))
        self.assertEqual(port.socket.set, [b"cubic"])

    def test_wildcardListener(self) -> None:
        """
        Under C{"auto"}, a port bound to all addresses keeps the system's
        algorithm: each connection is looked at on its own.
        """
        port = FakePort("0.0.0.0")
        c = Congestion("auto", "bbr", ("cubic",))
        local = Accepted(port, ("127.0.0.1", 1))
        remote = Accepted(port, ("192.0.2.9", 2))
        c.applyAccepted(local)
        c.applyAccepted(remote)
        c.applyAccepted(local)
        self.assertEqual(
            (port.socket.set, local.socket.set, remote.socket.set), ([], [b"cubic"] * 2, [])
        )

    def test_namedAnyListener(self) -> None:
        """
        A named algorithm is given to any TCP listening socket.
        """
        port = FakePort("0.0.0.0")
        Congestion("reno", names=("reno",)).applyAccepted(Accepted(port, ("192.0.2.9", 2)))
        self.assertEqual(port.socket.set, [b"reno"])

    def test_adoptedListener(self) -> None:
        """
        A listening socket the proxy did not make (handed over by systemd,
        as its listener says: C{adopted}) outlives the proxy: it is left
        alone, and each connection is looked at on its own.
        """
        port = FakePort("127.0.0.1")
        c = Congestion("auto", "bbr", ("cubic",))
        c.adopted = True
        first = Accepted(port, ("127.0.0.1", 1))
        second = Accepted(port, ("127.0.0.1", 2))
        c.applyAccepted(first)
        c.applyAccepted(second)
        self.assertEqual(
            (port.socket.set, first.socket.set, second.socket.set), ([], [b"cubic"], [b"cubic"])
        )

    def test_takeOverSame(self) -> None:
        """
        A reload to a setting that chooses the same algorithm leaves the
        listening socket as it is and goes on with the search for the
        connections created before it was changed: none is left behind.
        """
        port = FakePort("127.0.0.1")
        old = Congestion("auto", "bbr", ("cubic",))
        old.applyAccepted(Accepted(port, ("127.0.0.1", 1)))
        new = Congestion("auto", "bbr", ("cubic",))
        new.takeOver(old)
        earlier = Accepted(port, ("127.0.0.1", 2))  # created before the first change
        new.applyAccepted(earlier)
        later = Accepted(port, ("127.0.0.1", 3), algorithm=b"cubic")
        new.applyAccepted(later)
        self.assertEqual(
            (port.socket.set, earlier.socket.set, later.socket.set, later.socket.asked),
            ([b"cubic"], [b"cubic"], [], 1),
        )

    def test_takeOverOther(self) -> None:
        """
        A reload to another algorithm gives the listening socket the new one
        at once; connections created before (with the old one or the
        system's) are found and switched.
        """
        port = FakePort("127.0.0.1")
        old = Congestion("auto", "bbr", ("cubic", "reno"))
        old.applyAccepted(Accepted(port, ("127.0.0.1", 1)))
        new = Congestion("reno", "bbr", ("cubic", "reno"))
        new.takeOver(old)
        self.assertEqual(port.socket.set, [b"cubic", b"reno"])
        queued = Accepted(port, ("127.0.0.1", 2), algorithm=b"cubic")
        new.applyAccepted(queued)
        self.assertEqual(queued.socket.set, [b"reno"])

    def test_takeOverNone(self) -> None:
        """
        A reload to a setting that gives no algorithm gives the listening
        socket the system's algorithm as it is now.
        """
        self.patch(congestion, "systemDefault", lambda: "bbr")
        port = FakePort("127.0.0.1")
        old = Congestion("auto", "bbr", ("cubic",))
        old.applyAccepted(Accepted(port, ("127.0.0.1", 1)))
        Congestion("system").takeOver(old)
        self.assertEqual(port.socket.set, [b"cubic", b"bbr"])

    def test_takeOverUntouched(self) -> None:
        """
        After a setting that did not change the listening socket, a new one
        tries it at its first connection.
        """
        port = FakePort("0.0.0.0")
        old = Congestion("auto", "bbr", ("cubic",))
        old.applyAccepted(Accepted(port, ("127.0.0.1", 1)))
        new = Congestion("reno", "bbr", ("reno",))
        new.takeOver(old)
        new.applyAccepted(Accepted(port, ("192.0.2.1", 2)))
        self.assertEqual(port.socket.set, [b"reno"])
