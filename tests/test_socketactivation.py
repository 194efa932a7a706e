"""
Tests for L{txsockproxy.socketactivation}: C{systemd:} listen strings read
without looking the socket up, and served from a socket handed over.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactor
from twisted.protocols.policies import WrappingFactory
from twisted.python.systemd import ListenFDs
from twisted.trial.unittest import SynchronousTestCase

from txsockproxy.adopting import AdoptingReactor, InheritedSocket
from txsockproxy.endpoints import checkEndpoint
from txsockproxy.socketactivation import SystemdSocket, activatedHere, serverEndpoint, systemdSocket


class NotActivated:
    """
    Mixin: this process runs as if systemd had not started it with
    sockets.
    """

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.patch(endpoints._SystemdParser, "_sddaemon",  # type: ignore[attr-defined]
                   ListenFDs([], ()))


class SystemdSocketTests(SynchronousTestCase):
    """
    L{systemdSocket} reads what a C{systemd:} string names.
    """

    def test_index(self) -> None:
        """
        C{domain=} gives the family, C{index=} the place.
        """
        self.assertEqual(systemdSocket("systemd:domain=INET:index=0"),
                         SystemdSocket(socket.AF_INET, 0, None))
        self.assertEqual(systemdSocket("systemd:domain=INET6:index=12"),
                         SystemdSocket(socket.AF_INET6, 12, None))

    def test_name(self) -> None:
        """
        C{name=} gives the C{FileDescriptorName=}; a backslash escapes the
        next character; the domain may come first without C{domain=}.
        """
        self.assertEqual(systemdSocket(r"systemd:UNIX:name=a\=b"),
                         SystemdSocket(socket.AF_UNIX, None, "a=b"))

    def test_wrapped(self) -> None:
        """
        Behind C{haproxy:}, the socket is the same, marked wrapped.
        """
        self.assertEqual(systemdSocket("haproxy:systemd:domain=INET:name=web"),
                         SystemdSocket(socket.AF_INET, None, "web", wrapped=True))

    def test_otherStrings(self) -> None:
        """
        Other listen strings are not read.
        """
        for description in ("tcp:80", "haproxy:tcp:80", "unix:/run/systemd.sock", "systemd",
                            "systemd:"):
            self.assertIsNone(systemdSocket(description), description)

    def test_mistakes(self) -> None:
        """
        What Twisted's parser refuses whatever sockets systemd passed is a
        C{ValueError} saying why.
        """
        cases = {
            "systemd:index=0": "missing domain= (INET, INET6 or UNIX)",
            "systemd:domain=IPX:index=0": "domain=IPX: expected INET, INET6 or UNIX",
            "systemd:domain=INET": "give exactly one of index= and name=",
            "systemd:domain=INET:index=0:name=web": "give exactly one of index= and name=",
            "systemd:domain=INET:index=one": "index=one: expected a whole number below 100000",
            "systemd:domain=INET:index=0:backlog=5": "unknown parameter 'backlog'",
            "systemd:INET:domain=INET:index=0": "unexpected 'INET' (a colon inside a value is "
                                                "written \\:)",
            "systemd:domain=INET:domain=INET6:index=0": "domain= given twice",
            "systemd:domain=INET:index=0:index=1": "index= given twice",
            "systemd:domain=INET:index=99999999999999999999": (
                "index=99999999999999999999: expected a whole number below 100000"),
            "systemd:domain=INET:index=\u0661": (
                "index=\u0661: expected a whole number below 100000"),
            "systemd:domain=INET:name=": "name= must have 1 to 255 characters",
            "systemd:domain=INET:name=" + "n" * 256: "name= must have 1 to 255 characters",
            "systemd:domain=INET:name=pg\\": "a backslash at the end escapes nothing",
            "systemd:domain=INET:name=p\\:g": (
                "name= must be printable ASCII without ':' (as FileDescriptorName= is)"),
            "systemd:domain=INET:name=a\nb": (
                "name= must be printable ASCII without ':' (as FileDescriptorName= is)"),
            "systemd:domain=INET:name=caf\u00e9": (
                "name= must be printable ASCII without ':' (as FileDescriptorName= is)"),
            "systemd:domain=INET:name=a:b": "unexpected 'b' (a colon inside a value is "
                                            "written \\:)",
            "systemd:INET:UNIX:index=0": "unexpected 'UNIX' (a colon inside a value is "
                                         "written \\:)",
        }
        for description, reason in cases.items():
            with self.assertRaises(ValueError, msg=description) as caught:
                systemdSocket(description)
            self.assertEqual(str(caught.exception), reason)


class CheckOutsideActivationTests(NotActivated, SynchronousTestCase):
    """
    L{checkEndpoint} in a process that systemd did not start with sockets
    (a worker, a process taking over, C{--check} by hand) checks what a
    C{systemd:} string says, not whether the socket is there.
    """

    def test_notActivated(self) -> None:
        """
        This process is not socket-activated.
        """
        self.assertFalse(activatedHere())

    def test_valid(self) -> None:
        """
        A well-formed string passes.
        """
        for description in ("systemd:domain=INET:index=0", "haproxy:systemd:domain=UNIX:name=x"):
            self.assertIsNone(checkEndpoint(description, server=True), description)

    def test_invalid(self) -> None:
        """
        A malformed one is refused, saying why in the string's terms (also
        where Twisted's parser fails on it first, with a message of its
        own).
        """
        self.assertEqual(
            checkEndpoint("systemd:domain=INET:name=a:b", server=True),
            "bad server endpoint 'systemd:domain=INET:name=a:b': unexpected 'b' (a colon "
            "inside a value is written \\:)",
        )
        self.assertEqual(
            checkEndpoint("systemd:domain=IPX:index=0", server=True),
            "bad server endpoint 'systemd:domain=IPX:index=0': domain=IPX: expected INET, "
            "INET6 or UNIX",
        )


class CheckUnderActivationTests(SynchronousTestCase):
    """
    Under socket activation, L{checkEndpoint} looks the socket up.
    """

    def setUp(self) -> None:
        self.patch(endpoints._SystemdParser, "_sddaemon", ListenFDs([3], ("web",)))

    def test_missing(self) -> None:
        """
        A socket systemd did not pass is refused.
        """
        self.assertTrue(activatedHere())
        self.assertIsNone(checkEndpoint("systemd:domain=INET:name=web", server=True))
        self.assertEqual(
            checkEndpoint("systemd:domain=INET:index=3", server=True),
            "bad server endpoint 'systemd:domain=INET:index=3': systemd passed no such socket "
            "(is this process started by systemd socket activation?)",
        )


class ServerEndpointTests(NotActivated, SynchronousTestCase):
    """
    L{serverEndpoint}.
    """

    def handed(self) -> tuple[MemoryReactor, AdoptingReactor, InheritedSocket]:
        reactor = MemoryReactor()
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listening.close)
        inherited = InheritedSocket(os.dup(listening.fileno()), socket.AF_INET)
        self.addCleanup(inherited.close)
        return reactor, AdoptingReactor(reactor, inherited), inherited

    def test_handed(self) -> None:
        """
        A C{systemd:} listener whose socket was handed over adopts that
        socket, whatever the environment says.
        """
        reactor, adopting, inherited = self.handed()
        fileno = inherited.fileno
        factory = object()
        endpoint = serverEndpoint(adopting, "systemd:domain=INET:name=web", handed=True)
        self.successResultOf(endpoint.listen(factory))
        self.assertEqual(reactor.adoptedPorts, [(fileno, socket.AF_INET, factory)])
        self.assertEqual(inherited.fileno, -1)

    def test_handedBehindPROXY(self) -> None:
        """
        Behind C{haproxy:}, the adopted socket's connections are wrapped in
        the PROXY protocol reader.
        """
        reactor, adopting, _ = self.handed()
        endpoint = serverEndpoint(adopting, "haproxy:systemd:domain=INET:name=web", handed=True)
        ours = object()
        self.successResultOf(endpoint.listen(ours))
        [(_, _, factory)] = reactor.adoptedPorts
        self.assertIsInstance(factory, WrappingFactory)
        self.assertIs(factory.wrappedFactory, ours)

    def test_notPassed(self) -> None:
        """
        Neither handed nor passed by systemd: listening fails with one line
        saying so.
        """
        endpoint = serverEndpoint(MemoryReactor(), "systemd:domain=INET:name=web")
        failure = self.failureResultOf(endpoint.listen(object()), OSError)
        self.assertEqual(
            str(failure.value),
            "systemd passed this process no socket with name 'web' (is it started by systemd "
            "socket activation?)",
        )

    def test_otherStrings(self) -> None:
        """
        Other strings are Twisted's endpoints, handed or not.
        """
        reactor, adopting, _ = self.handed()
        self.assertIsInstance(serverEndpoint(reactor, "tcp:0"), endpoints.TCP4ServerEndpoint)
        self.assertIsInstance(serverEndpoint(adopting, "tcp:0", handed=True),
                              endpoints.TCP4ServerEndpoint)
