"""
Tests for L{txsockproxy.instancelock}, and for the instance lock that
L{txsockproxy.reuseport} takes before binding.
"""

from __future__ import annotations

import os
import socket
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
