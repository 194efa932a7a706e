"""
Tests for L{txsockproxy.instancelock}, and for the instance lock that
L{txsockproxy.reuseport} takes before binding.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from txsockproxy import instancelock
from txsockproxy.instancelock import InstanceLocks, LockHeld, tcpLockName
from txsockproxy.reuseport import InheritedReusePortReactor, ReusePortReactor, bindReusePort


def uniqueName(case: SynchronousTestCase) -> str:
    """
    A lock name no other test (or process) uses.
    """
    return f"test/{os.getpid()}/{id(case)}/{case.id()}"


class LockTests(SynchronousTestCase):
    """
    L{instancelock.acquire}, L{instancelock.adopt} and the names.
    """

    def test_exclusive(self) -> None:
        """
        A lock held cannot be taken again (by this process or another)
        until it is released.
        """
        name = uniqueName(self)
        lock = instancelock.acquire(name)
        assert lock is not None
        self.assertRaises(LockHeld, instancelock.acquire, name)
        lock.release()
        self.assertEqual(lock.fileno, -1)
        again = instancelock.acquire(name)
        assert again is not None
        again.release()

    def test_perUser(self) -> None:
        """
        A lock is named under the effective user id: another user holding
        the same name under its own id (abstract names have no permissions)
        does not block this user's lock.
        """
        name = uniqueName(self)
        squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(squatter.close)
        squatter.bind(f"\0{instancelock.PREFIX}{os.geteuid() + 1}/{name}")
        lock = instancelock.acquire(name)
        assert lock is not None
        self.addCleanup(lock.release)
        self.assertEqual(socket.socket(fileno=os.dup(lock.fileno)).getsockname(),
                         f"\0{instancelock.PREFIX}{os.geteuid()}/{name}".encode())

    def test_spellings(self) -> None:
        """
        Every spelling of one TCP address has one lock name; the wildcard
        of each family is named explicitly; a long name is hashed to fit.
        """
        self.assertEqual(tcpLockName("", 8080), tcpLockName("0.0.0.0", 8080))
        self.assertEqual(tcpLockName("", 8080), "tcp/0.0.0.0/8080")
        self.assertEqual(tcpLockName("0:0::1", 80, socket.AF_INET6), "tcp/::1/80")
        self.assertEqual(tcpLockName("", 80, socket.AF_INET6), "tcp/::/80")
        long = instancelock.pathLockName("takeover", "/" + "x" * 106)
        self.assertLessEqual(len(instancelock.PREFIX + long), instancelock.MAX_NAME)
        self.assertTrue(long.startswith("sha256/"))

    def test_adopt(self) -> None:
        """
        L{instancelock.adopt} holds a lock's socket handed over; a
        descriptor that is not that lock is closed and refused.
        """
        name = uniqueName(self)
        lock = instancelock.acquire(name)
        assert lock is not None
        self.addCleanup(lock.release)
        adopted = instancelock.adopt(name, os.dup(lock.fileno))
        assert adopted is not None
        lock.release()
        self.assertRaises(LockHeld, instancelock.acquire, name)
        adopted.release()
        other = socket.socket()
        fd = os.dup(other.fileno())
        other.close()
        self.assertIsNone(instancelock.adopt(name, fd))
        self.assertRaises(OSError, os.fstat, fd)


class InstanceLocksTests(SynchronousTestCase):
    """
    L{InstanceLocks}: the locks of a process.
    """

    def test_heldElsewhere(self) -> None:
        """
        A lock another holder has is L{LockHeld} saying that another
        process serves the address.
        """
        name = uniqueName(self)
        first, second = InstanceLocks(), InstanceLocks()
        first.acquire(name, "127.0.0.1:1")
        self.addCleanup(first.release, name)
        with self.assertRaises(LockHeld) as caught:
            second.acquire(name, "127.0.0.1:1")
        self.assertEqual(str(caught.exception), "another process serves 127.0.0.1:1")
        # Held already here: nothing to do.
        first.acquire(name, "127.0.0.1:1")
        self.assertEqual(len(first.held()), 1)

    def test_noLocks(self) -> None:
        """
        Where locks cannot be made, binding goes on without them, with one
        warning for the process.
        """
        events: list[dict[str, Any]] = []
        locks = InstanceLocks(lambda name: None)
        locks.log = Logger(observer=events.append)
        locks.acquire("a", "127.0.0.1:1")
        locks.acquire("b", "127.0.0.1:2")
        self.assertEqual(locks.held(), [])
        self.assertEqual(len(events), 1)
        self.assertIn("no instance lock", formatEvent(events[0]))


class ReusePortLockTests(SynchronousTestCase):
    """
    L{ReusePortReactor} takes the address's instance lock before binding
    with C{SO_REUSEPORT}.
    """

    def setUp(self) -> None:
        # An instance serving a port: its SO_REUSEPORT socket and lock.
        self.serving = bindReusePort(socket.AF_INET, ("127.0.0.1", 0), 5)
        self.addCleanup(self.serving.close)
        self.port = self.serving.getsockname()[1]
        self.servingLocks = InstanceLocks()
        self.name = tcpLockName("127.0.0.1", self.port)
        self.servingLocks.acquire(self.name, "x")
        self.addCleanup(self.servingLocks.release, self.name)

    def test_secondInstanceRefused(self) -> None:
        """
        A second instance cannot join the port's SO_REUSEPORT group: it is
        a C{CannotListenError} saying another process serves the address,
        and nothing is bound.
        """
        reactor = MemoryReactorClock()
        binder = ReusePortReactor(reactor, 2, InstanceLocks())
        with self.assertRaises(CannotListenError) as caught:
            binder.listenTCP(self.port, Factory(), interface="127.0.0.1")
        self.assertEqual(caught.exception.socketError.strerror,
                         f"another process serves 127.0.0.1:{self.port}")
        self.assertEqual((reactor.adoptedPorts, binder.extra), ([], []))

    def test_heldUntilClosed(self) -> None:
        """
        The lock is held from binding until L{ReusePortReactor.close}.
        """
        self.servingLocks.release(self.name)
        self.serving.close()
        locks = InstanceLocks()
        binder = ReusePortReactor(MemoryReactorClock(), 2, locks)
        binder.listenTCP(self.port, Factory(), interface="127.0.0.1")
        self.assertEqual([lock.name for lock in locks.held()], [self.name])
        self.assertRaises(LockHeld, instancelock.acquire, self.name)
        binder.close()
        self.assertEqual(locks.held(), [])

    def test_takenOverHoldsAdopted(self) -> None:
        """
        A process that took over (L{InheritedReusePortReactor}) binds with
        the lock adopted from the old process; without it, while the old
        process holds it, it is refused too.
        """
        reactor = _AdoptingReactor(self.serving)
        refused = InheritedReusePortReactor(reactor, [], 1, InstanceLocks())
        self.assertRaises(CannotListenError, refused.listenTCP, self.port, Factory(),
                          interface="127.0.0.1")
        self.assertEqual(reactor.listened, [])
        locks = InstanceLocks()
        [held] = self.servingLocks.held()
        adopted = instancelock.adopt(self.name, os.dup(held.fileno))
        assert adopted is not None
        locks.adopt(adopted)
        binder = InheritedReusePortReactor(reactor, [], 1, locks)
        binder.listenTCP(self.port, Factory(), interface="127.0.0.1")
        self.assertEqual(reactor.listened, [self.port])
        binder.close()
        self.assertEqual(locks.held(), [])


class _AdoptingReactor:
    """
    Stands in for an L{txsockproxy.adopting.AdoptingReactor}: listening
    gives a port over the socket handed over.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.listened: list[int] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        self.listened.append(port)
        sock = self.sock

        class Port:
            def fileno(self) -> int:
                return sock.fileno()

        return Port()


def _procEntry(hexAddress: str, port: int, inode: int, state: str = "0A") -> str:
    return (f"   0: {hexAddress}:{port:04X} 00000000:0000 {state} 00000000:00000000 "
            f"00:00000000 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n")


class ListeningElsewhereTests(SynchronousTestCase):
    """
    L{instancelock.listeningElsewhere} finds a listener of another process
    whose address overlaps, in C{/proc/net/tcp} and C{tcp6}.
    """

    def proc(self, tcp: list[str], tcp6: list[str] = (), own: tuple[int, ...] = ()) -> str:
        proc = self.mktemp()
        os.makedirs(os.path.join(proc, "net"))
        os.makedirs(os.path.join(proc, "self", "fd"))
        header = "  sl  local_address rem_address   st ...\n"
        for name, lines in (("tcp", tcp), ("tcp6", tcp6)):
            with open(os.path.join(proc, "net", name), "w") as f:
                f.write(header + "".join(lines))
        for n, inode in enumerate(own):
            os.symlink(f"socket:[{inode}]", os.path.join(proc, "self", "fd", str(n)))
        return proc

    def test_overlapping(self) -> None:
        """
        A wildcard overlaps every address of its family; the IPv6 wildcard
        (dual-stack) every address; an IPv4-mapped IPv6 address its IPv4
        address.
        """
        loopback = _procEntry("0100007F", 8080, 11)
        wildcard6 = _procEntry("0" * 32, 8080, 12)
        mapped = _procEntry("0000000000000000FFFF00000200007F", 8080, 13)
        proc = self.proc([loopback])
        elsewhere = instancelock.listeningElsewhere
        self.assertEqual(elsewhere("0.0.0.0", 8080, proc), "127.0.0.1:8080")
        self.assertEqual(elsewhere("", 8080, proc), "127.0.0.1:8080")
        self.assertEqual(elsewhere("::", 8080, proc), "127.0.0.1:8080")
        self.assertIsNone(elsewhere("127.0.0.2", 8080, proc))
        self.assertIsNone(elsewhere("::1", 8080, proc))
        self.assertIsNone(elsewhere("0.0.0.0", 8081, proc))
        proc = self.proc([], [wildcard6, mapped])
        self.assertEqual(elsewhere("127.0.0.9", 8080, proc), "[::]:8080")
        proc = self.proc([], [mapped])
        self.assertEqual(elsewhere("127.0.0.2", 8080, proc), "127.0.0.2:8080")

    def test_notListeningOrOwn(self) -> None:
        """
        Sockets not listening, and this process's own, do not count;
        without C{/proc/net}, nothing is found.
        """
        proc = self.proc([_procEntry("0100007F", 8080, 11, state="06"),
                          _procEntry("0100007F", 8080, 12)], own=(12,))
        self.assertIsNone(instancelock.listeningElsewhere("0.0.0.0", 8080, proc))
        self.assertIsNone(instancelock.listeningElsewhere("0.0.0.0", 8080, self.mktemp()))

    def test_anotherProcess(self) -> None:
        """
        A real listener of another process is found, and a
        L{ReusePortReactor} does not bind an overlapping address beside it.
        """
        script = ("import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
                  "s.listen(1); print(s.getsockname()[1], flush=True); sys.stdin.read()")
        child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        self.addCleanup(child.wait)
        self.addCleanup(child.stdin.close)  # type: ignore[union-attr]
        port = int(child.stdout.readline())  # type: ignore[union-attr]
        child.stdout.close()  # type: ignore[union-attr]
        self.assertEqual(instancelock.listeningElsewhere("0.0.0.0", port), f"127.0.0.1:{port}")
        reactor = MemoryReactorClock()
        binder = ReusePortReactor(reactor, 2, InstanceLocks())
        with self.assertRaises(CannotListenError) as caught:
            binder.listenTCP(port, Factory(), interface="0.0.0.0")
        self.assertEqual(caught.exception.socketError.strerror,
                         f"another process listens on 127.0.0.1:{port}")
        self.assertEqual((reactor.adoptedPorts, binder.extra), ([], []))
