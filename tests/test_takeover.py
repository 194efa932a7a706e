"""
Tests for L{txsockproxy.takeover}: the description of the sockets, the new
process's side (over a socket pair, the old side played by the test), the
old process's side (with a memory reactor and a fake unix transport), the
pidfile given up, and the service's listeners in a take-over.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tempfile
from typing import Any, Optional, cast

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from txsockproxy import instancelock
from txsockproxy.adopting import InheritedSocket
from txsockproxy.config import BackendConfig, Config, ProxyConfig, StatusConfig
from txsockproxy.instancelock import InstanceLocks
from txsockproxy.reuseport import InheritedReusePortReactor
from txsockproxy.service import ListenKey, ProxyService, listenKeys
from txsockproxy.takeover import (
    HANDOVER_TIMEOUT,
    PROTOCOL,
    Received,
    TakenOverProxyService,
    TakeoverError,
    TakeoverService,
    TwistdPidfile,
    describe,
    notifySystemd,
    parseDescription,
    processHolds,
    receive,
    servingRefusal,
)
from txsockproxy.tap import Options
from txsockproxy.workerprotocol import Serve

KEY_A: ListenKey = (False, "tcp:8080", 0)
KEY_B: ListenKey = (False, "unix:/run/p.sock", 0)
KEY_STATUS: ListenKey = (True, "tcp:9180:interface=127.0.0.1", 0)
# Keys whose listen string matches the test's sockets (an ephemeral port).
KEY_L0: ListenKey = (False, "tcp:0:interface=127.0.0.1", 0)
KEY_L1: ListenKey = (True, "tcp:0:interface=127.0.0.1", 0)


def shortPath(case: SynchronousTestCase) -> str:
    """
    A path for a unix socket, short enough for one (trial's mktemp() paths
    are not), removed with its directory after C{case}.
    """
    directory = tempfile.mkdtemp(prefix="takeover-", dir="/tmp")
    case.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "s.sock")


def isOpen(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class DescriptionTests(SynchronousTestCase):
    """
    L{describe} and L{parseDescription}.
    """

    def test_roundTrip(self) -> None:
        """
        L{parseDescription} reads back the pid and the key and family of
        each socket, in order, from one line that L{describe} made.
        """
        listeners = [(KEY_A, socket.AF_INET, 0), (KEY_A, socket.AF_INET, 1),
                     (KEY_B, socket.AF_UNIX, 0)]
        line = describe(1234, listeners)
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        self.assertEqual(parseDescription(line.rstrip(b"\n")), (1234, listeners, []))
        self.assertNotIn(b"locks", line)
        line = describe(1234, listeners, ["tcp/0.0.0.0/8080"])
        self.assertEqual(parseDescription(line.rstrip(b"\n")),
                         (1234, listeners, ["tcp/0.0.0.0/8080"]))

    def test_refusal(self) -> None:
        """
        An error line is a L{TakeoverError} giving the old process's reason.
        """
        with self.assertRaises(TakeoverError) as caught:
            parseDescription(b'{"error": "uid 1001 may not take over"}')
        self.assertIn("refused: uid 1001 may not take over", str(caught.exception))

    def test_otherProtocol(self) -> None:
        """
        A description of another protocol version is refused, naming both.
        """
        with self.assertRaises(TakeoverError) as caught:
            parseDescription(b'{"protocol": "txsockproxy-takeover/9", "pid": 1, '
                             b'"listeners": []}')
        self.assertIn("txsockproxy-takeover/9", str(caught.exception))
        self.assertIn(PROTOCOL, str(caught.exception))

    def test_garbage(self) -> None:
        """
        Bytes that are not JSON, JSON that is not an object, and a listener
        without a proper key are each a L{TakeoverError}.
        """
        for line in (b"\xff\xfe", b"[1, 2]", b"hello",
                     json.dumps({"protocol": PROTOCOL, "pid": 1,
                                 "listeners": [{"key": ["x", 1, 0], "family": 2}]}).encode()):
            self.assertRaises(TakeoverError, parseDescription, line)

    def test_hostile(self) -> None:
        """
        JSON nested beyond the parser's depth and a pid of infinity are a
        L{TakeoverError}, not a traceback; a refusal's reason is logged as
        one printable line.
        """
        for line in (b"[" * 100000 + b"]" * 100000,
                     b'{"protocol": "%s", "pid": Infinity, "listeners": []}'
                     % PROTOCOL.encode()):
            self.assertRaises(TakeoverError, parseDescription, line)
        with self.assertRaises(TakeoverError) as caught:
            parseDescription(b'{"error": "line1\\nline2\\u001b[31m' + b"x" * 500 + b'"}')
        message = str(caught.exception)
        self.assertTrue(message.isprintable(), message)
        self.assertIn("line1\\nline2\\x1b[31m", message)
        self.assertLess(len(message), 300)


class PausablePort:
    """
    A listening port of L{PausingReactor}: Twisted's fake port, with
    C{stopReading} and C{startReading} (accepting paused and resumed).
    """

    def __init__(self, port: Any) -> None:
        self._port = port
        self.reading = True
        self.stopped = False

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    def stopListening(self) -> Any:
        self.stopped = True
        return self._port.stopListening()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port, name)


class PausingReactor(MemoryReactorClock):
    """
    A memory reactor whose unix listening ports can pause accepting.
    """

    def listenUNIX(self, *args: Any, **kwargs: Any) -> Any:
        self.port = PausablePort(super().listenUNIX(*args, **kwargs))
        return self.port


class ProcessHoldsTests(SynchronousTestCase):
    """
    L{processHolds} reads C{/proc/PID/fd}.
    """

    def test_thisProcess(self) -> None:
        """
        This process holds a socket it has open, and not one it has closed.
        """
        held = socket.socket()
        self.addCleanup(held.close)
        gone = socket.socket()
        goneInode = os.fstat(gone.fileno()).st_ino
        gone.close()
        inode = os.fstat(held.fileno()).st_ino
        self.assertTrue(processHolds(os.getpid(), frozenset({inode, goneInode})))
        self.assertFalse(processHolds(os.getpid(), frozenset({goneInode})))

    def test_noSuchProcess(self) -> None:
        """
        A process that does not exist holds nothing; without C{/proc}, it
        cannot be told.
        """
        proc = self.mktemp()
        os.makedirs(os.path.join(proc, "self"))
        self.assertFalse(processHolds(12345, frozenset({1}), proc=proc))
        self.assertIsNone(processHolds(12345, frozenset({1}), proc=self.mktemp()))

    def test_unreadable(self) -> None:
        """
        Another user's process (its C{fd} directory unreadable) cannot be
        told.
        """
        proc = self.mktemp()
        os.makedirs(os.path.join(proc, "self"))
        os.makedirs(os.path.join(proc, "77"))
        with open(os.path.join(proc, "77", "fd"), "w"):
            pass
        self.assertIsNone(processHolds(77, frozenset({1}), proc=proc))


class ServingRefusalTests(SynchronousTestCase):
    """
    L{servingRefusal}: whom the old process believes when told C{serving
    PID}.
    """

    def proc(self) -> str:
        proc = self.mktemp()
        os.makedirs(os.path.join(proc, "self"))
        return proc

    def process(self, proc: str, pid: int, ppid: int, uid: int,
                sockets: Optional[list[int]] = None) -> None:
        """
        A process in the fake C{/proc}: its status, and its descriptors
        (L{None}: unreadable).
        """
        os.makedirs(os.path.join(proc, str(pid)))
        with open(os.path.join(proc, str(pid), "status"), "w") as f:
            f.write(f"Name:\tx\nPPid:\t{ppid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        if sockets is None:
            with open(os.path.join(proc, str(pid), "fd"), "w"):
                pass
            return
        os.makedirs(os.path.join(proc, str(pid), "fd"))
        for n, inode in enumerate(sockets):
            os.symlink(f"socket:[{inode}]", os.path.join(proc, str(pid), "fd", str(n)))

    def test_newProcess(self) -> None:
        """
        Another process that holds one of the sockets is believed; one that
        holds none, or does not run, is not.
        """
        proc = self.proc()
        self.process(proc, 500, 1, 1000, [7, 8])
        self.process(proc, 501, 1, 1000, [9])
        inodes = frozenset({8, 20})
        self.assertIsNone(servingRefusal(500, inodes, 100, 1, 1000, proc))
        self.assertEqual(servingRefusal(501, inodes, 100, 1, 1000, proc),
                         "it holds none of the sockets handed over")
        self.assertEqual(servingRefusal(502, inodes, 100, 1, 1000, proc), "no such process runs")

    def test_holdersThatAreNotNew(self) -> None:
        """
        This process, its parent (systemd holds activated sockets), init
        and this process's workers hold the sockets too: naming them is
        refused.
        """
        proc = self.proc()
        self.process(proc, 300, 100, 1000, [8])
        inodes = frozenset({8})
        for pid in (100, 1, 0, 50):
            self.assertEqual(servingRefusal(pid, inodes, 100, 50, 1000, proc),
                             "that names init, this process or its parent")
        self.assertEqual(servingRefusal(300, inodes, 100, 50, 1000, proc),
                         "that names one of this process's own workers")

    def test_unreadable(self) -> None:
        """
        A process whose descriptors cannot be read is believed if it runs
        as this process's user (started as root, then switched), not
        otherwise; without C{/proc}, anything is.
        """
        proc = self.proc()
        self.process(proc, 600, 1, 1000)
        self.process(proc, 601, 1, 0)
        self.assertIsNone(servingRefusal(600, frozenset({8}), 100, 1, 1000, proc))
        self.assertEqual(servingRefusal(601, frozenset({8}), 100, 1, 1000, proc),
                         "it runs as uid 0 and its descriptors cannot be read")
        self.assertIsNone(servingRefusal(601, frozenset({8}), 100, 1, 1000, self.mktemp()))


class OldEnd:
    """
    The old process's end of a socket pair, played by the test: it sends
    the description and descriptors of real listening sockets.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        case.addCleanup(self.ours.close)
        case.addCleanup(self.theirs.close)
        self.listening = []
        for _ in range(2):
            s = socket.socket()
            case.addCleanup(s.close)
            s.bind(("127.0.0.1", 0))
            s.listen(5)
            self.listening.append(s)

    def send(self, line: bytes, fds: list[int]) -> None:
        # As Twisted's sendFileDescriptor does: one descriptor per byte.
        for i, fd in enumerate(fds):
            socket.send_fds(self.ours, [line[i:i + 1]], [fd])
        self.ours.sendall(line[len(fds):])

    def connect(self, path: str, timeout: float) -> socket.socket:
        return self.theirs


class ReceiveTests(SynchronousTestCase):
    """
    L{receive}: the new process's side, before the reactor runs.
    """

    def test_received(self) -> None:
        """
        The sockets passed are received by key, each a new descriptor for
        the same listening socket, with the old process's pid.
        """
        old = OldEnd(self)
        fds = [s.fileno() for s in old.listening]
        old.send(describe(77, [(KEY_L0, socket.AF_INET, 0), (KEY_L1, socket.AF_INET, 0)]),
                 fds)
        received = receive("/nowhere", timeout=5, connect=old.connect)
        assert received is not None
        self.addCleanup(received.abandon)
        self.assertEqual(received.pid, 77)
        self.assertEqual(list(received.sockets), [KEY_L0, KEY_L1])
        for key, s in zip((KEY_L0, KEY_L1), old.listening, strict=True):
            inherited = received.sockets[key]
            self.assertEqual(inherited.family, socket.AF_INET)
            self.assertNotIn(inherited.fileno, fds)
            copy = socket.socket(fileno=os.dup(inherited.fileno))
            self.addCleanup(copy.close)
            self.assertEqual(copy.getsockname(), s.getsockname())

    def test_reusePortGroup(self) -> None:
        """
        The other SO_REUSEPORT sockets of a listener (parts 1 and up) are
        received apart, in order.
        """
        old = OldEnd(self)
        fds = [s.fileno() for s in old.listening]
        old.send(describe(77, [(KEY_L0, socket.AF_INET, 0), (KEY_L0, socket.AF_INET, 1)]), fds)
        received = receive("/nowhere", timeout=5, connect=old.connect)
        assert received is not None
        self.addCleanup(received.abandon)
        self.assertEqual(list(received.sockets), [KEY_L0])
        [extra] = received.extra[KEY_L0]
        copy = socket.socket(fileno=os.dup(extra.fileno))
        self.addCleanup(copy.close)
        self.assertEqual(copy.getsockname(), old.listening[1].getsockname())
        received.keep([])
        self.assertEqual((received.sockets, received.extra), ({}, {}))
        self.assertEqual(extra.fileno, -1)

    def test_noProcess(self) -> None:
        """
        No socket file, or a stale one (refused), is L{None}: nothing to
        take over.
        """
        for error in (FileNotFoundError, ConnectionRefusedError):
            def connect(path: str, timeout: float, error: type[OSError] = error) -> Any:
                raise error()
            self.assertIsNone(receive("/nowhere", connect=connect))

    def test_cannotConnect(self) -> None:
        """
        Another connect error (permission denied) is a L{TakeoverError}
        naming the path.
        """
        def connect(path: str, timeout: float) -> Any:
            raise PermissionError(13, "Permission denied")

        with self.assertRaises(TakeoverError) as caught:
            receive("/run/t.sock", connect=connect)
        self.assertEqual(str(caught.exception), "cannot connect to /run/t.sock: "
                         "Permission denied")

    def test_refused(self) -> None:
        """
        The old process's refusal is a L{TakeoverError} with its reason,
        and the connection is closed.
        """
        old = OldEnd(self)
        old.send(b'{"error": "a take-over is running already"}\n', [])
        with self.assertRaises(TakeoverError) as caught:
            receive("/nowhere", timeout=5, connect=old.connect)
        self.assertIn("a take-over is running already", str(caught.exception))
        self.assertEqual(old.theirs.fileno(), -1)

    def test_countMismatch(self) -> None:
        """
        Fewer descriptors than sockets described is a L{TakeoverError}, and
        the descriptors received are closed.
        """
        old = OldEnd(self)
        old.send(describe(1, [(KEY_L0, socket.AF_INET, 0), (KEY_B, socket.AF_UNIX, 0)]),
                 [old.listening[0].fileno()])
        before = set(os.listdir("/proc/self/fd"))
        with self.assertRaises(TakeoverError) as caught:
            receive("/nowhere", timeout=5, connect=old.connect)
        self.assertIn("described 2 socket(s) but passed 1", str(caught.exception))
        # The descriptor received and the connection are closed again.
        self.assertTrue(set(os.listdir("/proc/self/fd")) <= before)

    def test_closed(self) -> None:
        """
        An old process that closes before sending a whole line is a
        L{TakeoverError}.
        """
        old = OldEnd(self)
        old.ours.sendall(b'{"protocol"')
        old.ours.close()
        with self.assertRaises(TakeoverError) as caught:
            receive("/nowhere", timeout=5, connect=old.connect)
        self.assertIn("closed the connection", str(caught.exception))

    def test_timeout(self) -> None:
        """
        An old process that sends nothing within the timeout is a
        L{TakeoverError} saying so.
        """
        old = OldEnd(self)
        with self.assertRaises(TakeoverError) as caught:
            receive("/nowhere", timeout=0.01, connect=old.connect)
        self.assertIn("no answer from the process on /nowhere within 0.01s",
                      str(caught.exception))



class ReceiveChecksTests(SynchronousTestCase):
    """
    L{receive} checks who it takes over from, and what it is passed.
    """

    def refused(self, old: OldEnd, **kwargs: Any) -> str:
        """
        L{receive} from C{old} fails: its message, once every descriptor
        received is closed again.
        """
        before = set(os.listdir("/proc/self/fd"))
        with self.assertRaises(TakeoverError) as caught:
            receive("/nowhere", timeout=5, connect=old.connect, **kwargs)
        self.assertTrue(set(os.listdir("/proc/self/fd")) <= before)
        self.assertEqual(old.theirs.fileno(), -1)
        self.assertNotIn("\n", str(caught.exception))
        return str(caught.exception)

    def sendOne(self, old: OldEnd, listen: str, family: int, fd: int) -> None:
        old.send(describe(77, [((False, listen, 0), family, 0)]), [fd])

    def test_otherUser(self) -> None:
        """
        A process on the path that runs as another uid (not this process's,
        not root's, not one to drop to) is refused, without reading what
        it sent.
        """
        old = OldEnd(self)
        self.sendOne(old, "tcp:0", socket.AF_INET, old.listening[0].fileno())
        message = self.refused(old, credentials=lambda c: (66, os.getuid() + 1, 0))
        self.assertIn(f"(pid 66) runs as uid {os.getuid() + 1}, not as one of", message)

    def test_rootOrDroppedUid(self) -> None:
        """
        A process running as root, or as the uid this one will drop to
        (twistd's C{-u}), may be taken over from; so may one of this
        process's own uid (over a real socket pair).
        """
        other = os.getuid() + 1
        for uid, peerUids in ((0, ()), (other, (other,)), (None, ())):
            old = OldEnd(self)
            self.sendOne(old, "tcp:0:interface=127.0.0.1", socket.AF_INET,
                         old.listening[0].fileno())
            credentials: Any = {} if uid is None else {
                "credentials": lambda c, uid=uid: (66, uid, 0)}
            received = receive("/nowhere", timeout=5, connect=old.connect,
                               peerUids=peerUids, **credentials)
            assert received is not None
            self.addCleanup(received.abandon)
            self.assertEqual(len(received.sockets), 1)

    def test_notListening(self) -> None:
        """
        A socket that does not listen is refused.
        """
        old = OldEnd(self)
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        self.sendOne(old, "tcp:0", socket.AF_INET, s.fileno())
        self.assertIn("passed for tcp:0 a socket that is not listening", self.refused(old))

    def test_notStream(self) -> None:
        """
        A datagram socket is refused.
        """
        old = OldEnd(self)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        self.sendOne(old, "tcp:0", socket.AF_INET, s.fileno())
        self.assertIn("is not a stream socket", self.refused(old))

    def test_otherFamily(self) -> None:
        """
        A socket of another family than described is refused.
        """
        old = OldEnd(self)
        self.sendOne(old, "tcp6:0", socket.AF_INET6, old.listening[0].fileno())
        self.assertIn(f"is of address family {int(socket.AF_INET)}, not "
                      f"{int(socket.AF_INET6)}", self.refused(old))

    def test_otherAddress(self) -> None:
        """
        A TCP socket bound to another port, or another interface, than its
        listen string names is refused; so is a unix socket bound to
        another path.
        """
        old = OldEnd(self)
        port = old.listening[0].getsockname()[1]
        wrongPort = port + 1 if port < 65535 else port - 1
        self.sendOne(old, f"tcp:{wrongPort}", socket.AF_INET, old.listening[0].fileno())
        self.assertIn(f"is bound to port {port}, not {wrongPort}", self.refused(old))
        old = OldEnd(self)
        port = old.listening[0].getsockname()[1]
        self.sendOne(old, f"tcp:{port}:interface=127.0.0.2", socket.AF_INET,
                     old.listening[0].fileno())
        self.assertIn("is bound to 127.0.0.1, not 127.0.0.2", self.refused(old))
        old = OldEnd(self)
        path = shortPath(self)
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(u.close)
        u.bind(path)
        u.listen(1)
        self.sendOne(old, "unix:/run/elsewhere.sock", socket.AF_UNIX, u.fileno())
        self.assertIn(f"is bound to {path!r}, not '/run/elsewhere.sock'", self.refused(old))

    def test_matchingAddress(self) -> None:
        """
        Sockets bound where their listen strings say (a TCP port and
        interface, behind C{haproxy:} too; a unix path) are received.
        """
        old = OldEnd(self)
        port = old.listening[0].getsockname()[1]
        path = shortPath(self)
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(u.close)
        u.bind(path)
        u.listen(1)
        old.send(describe(77, [((False, f"tcp:{port}:interface=127.0.0.1", 0), socket.AF_INET,
                                0),
                               ((False, f"haproxy:tcp:port={port}", 0), socket.AF_INET, 0),
                               ((False, f"unix:{path}", 0), socket.AF_UNIX, 0)]),
                 [old.listening[0].fileno(), old.listening[0].fileno(), u.fileno()])
        received = receive("/nowhere", timeout=5, connect=old.connect)
        assert received is not None
        self.addCleanup(received.abandon)
        self.assertEqual(len(received.sockets), 3)


class ReceiveLocksTests(SynchronousTestCase):
    """
    L{receive} and L{Received} with the old process's instance locks.
    """

    def lock(self, port: int) -> instancelock.InstanceLock:
        lock = instancelock.acquire(instancelock.tcpLockName("127.0.0.1", port))
        assert lock is not None
        self.addCleanup(lock.release)
        return lock

    def test_locks(self) -> None:
        """
        The locks passed after the listening sockets are received by name;
        L{Received.keep} keeps the lock of a listener kept and lets the
        others go; L{Received.adoptLocks} makes this process hold them.
        """
        old = OldEnd(self)
        ports = [s.getsockname()[1] for s in old.listening]
        keys = [(False, f"tcp:{port}:interface=127.0.0.1", 0) for port in ports]
        locks = [self.lock(port) for port in ports]
        old.send(describe(77, [(key, socket.AF_INET, 0) for key in keys],
                          [lock.name for lock in locks]),
                 [s.fileno() for s in old.listening] + [lock.fileno for lock in locks])
        received = receive("/nowhere", timeout=5, connect=old.connect)
        assert received is not None
        self.addCleanup(received.abandon)
        self.assertEqual(sorted(received.locks), sorted(lock.name for lock in locks))
        received.keep([keys[0]])
        self.assertEqual(list(received.locks), [locks[0].name])
        registry = InstanceLocks()
        received.adoptLocks(registry)
        self.assertEqual([lock.name for lock in registry.held()], [locks[0].name])
        self.assertEqual(received.locks, {})
        # The old process's copy gone, the lock stays held here.
        locks[0].release()
        locks[1].release()
        self.assertRaises(instancelock.LockHeld, instancelock.acquire, locks[0].name)
        self.assertIsNotNone(self.lock(ports[1]))
        registry.release(locks[0].name)

    def test_notALock(self) -> None:
        """
        A descriptor passed for a lock that is not that lock's socket is a
        L{TakeoverError}; nothing received is kept open.
        """
        old = OldEnd(self)
        other = self.lock(1)
        before = set(os.listdir("/proc/self/fd"))
        old.send(describe(77, [], [instancelock.tcpLockName("127.0.0.1", 2)]), [other.fileno])
        with self.assertRaises(TakeoverError) as caught:
            receive("/nowhere", timeout=5, connect=old.connect)
        self.assertIn("a socket that is not it", str(caught.exception))
        self.assertTrue(set(os.listdir("/proc/self/fd")) <= before)


class ReceivedTests(SynchronousTestCase):
    """
    L{Received}: keeping the sockets a configuration has, and telling the
    old process.
    """

    def received(self) -> tuple[Received, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(ours.close)
        sockets = {}
        for key in (KEY_A, KEY_B):
            s = socket.socket()
            sockets[key] = InheritedSocket(s.detach(), socket.AF_INET)
        received = Received(theirs, 5, sockets)
        self.addCleanup(received.abandon)
        return received, ours

    def test_keep(self) -> None:
        """
        L{Received.keep} closes the sockets of listeners not given and
        returns their listen strings.
        """
        received, _ = self.received()
        fdB = received.sockets[KEY_B].fileno
        self.assertEqual(received.keep([KEY_A, KEY_STATUS]), ["unix:/run/p.sock"])
        self.assertEqual(list(received.sockets), [KEY_A])
        self.assertFalse(isOpen(fdB))

    def adopted(self, reactor: MemoryReactorClock) -> tuple[Any, StringTransport]:
        """
        The protocol of the connection that C{reactor} was asked to adopt,
        connected to a transport of the test's.
        """
        [(fd, family, factory)] = reactor.adoptedStreamConnections
        self.assertEqual(family, socket.AF_UNIX)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_serving(self) -> None:
        """
        L{Received.serving} hands the connection to the reactor (without
        waiting on it), sends C{serving PID} there, and its Deferred fires
        true when the old process answers C{draining}.
        """
        received, _ = self.received()
        reactor = MemoryReactorClock()
        serving = received.serving(reactor, timeout=5)
        self.assertNoResult(serving)
        protocol, transport = self.adopted(reactor)
        self.assertEqual(transport.value(), f"serving {os.getpid()}\n".encode())
        protocol.dataReceived(b"draining\n")
        self.assertTrue(self.successResultOf(serving))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_servingNoAnswer(self) -> None:
        """
        L{Received.serving}'s Deferred fires false when the old process
        closes without answering, when it answers something else, when it
        does not answer within the timeout (the connection is then
        aborted), and when it was abandoned.
        """
        for answer in (None, b"nope\n"):
            received, _ = self.received()
            reactor = MemoryReactorClock()
            serving = received.serving(reactor, timeout=5)
            protocol, _ = self.adopted(reactor)
            if answer is None:
                protocol.connectionLost(None)
            else:
                protocol.dataReceived(answer)
            self.assertFalse(self.successResultOf(serving))
        received, _ = self.received()
        reactor = MemoryReactorClock()
        serving = received.serving(reactor, timeout=5)
        protocol, transport = self.adopted(reactor)
        reactor.advance(4.9)
        self.assertNoResult(serving)
        reactor.advance(0.1)
        self.assertFalse(self.successResultOf(serving))
        self.assertTrue(transport.disconnected)
        self.assertFalse(self.successResultOf(received.serving(reactor, timeout=5)))

    def test_closeUnused(self) -> None:
        """
        L{Received.closeUnused} closes the sockets not adopted, extra ones
        included, and leaves the connection open.
        """
        received, old = self.received()
        extra = InheritedSocket(socket.socket().detach(), socket.AF_INET)
        received.extra[KEY_A] = [extra]
        adopted = received.sockets[KEY_A]
        fd, adopted.fileno = adopted.fileno, -1
        self.addCleanup(os.close, fd)
        unused = received.sockets[KEY_B].fileno
        received.closeUnused()
        self.assertTrue(isOpen(fd))
        self.assertFalse(isOpen(unused))
        self.assertEqual(extra.fileno, -1)
        reactor = MemoryReactorClock()
        received.serving(reactor)
        self.assertEqual(len(reactor.adoptedStreamConnections), 1)

    def test_abandon(self) -> None:
        """
        L{Received.abandon} closes the connection and every socket.
        """
        received, old = self.received()
        fds = [s.fileno for s in received.sockets.values()]
        received.abandon()
        self.assertEqual(old.recv(10), b"")
        self.assertFalse(any(isOpen(fd) for fd in fds))


class FakeUNIXTransport(StringTransport):
    """
    A unix socket connection's transport that records the descriptors sent
    before each write.
    """

    def __init__(self) -> None:
        super().__init__()
        self.descriptors: list[int] = []

    def sendFileDescriptor(self, descriptor: int) -> None:
        self.descriptors.append(descriptor)


class FakePort:
    """
    A listening port over a real listening socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reading = True

    def getHost(self) -> IPv4Address:
        host, port = self.sock.getsockname()
        return IPv4Address("TCP", host, port)

    def fileno(self) -> int:
        return self.sock.fileno()

    def stopReading(self) -> None:
        self.reading = False


class FakeListener:
    """
    A listener with a port; L{unbind} forgets it.
    """

    def __init__(self, description: str, port: Optional[FakePort]) -> None:
        self.description = description
        self.port = port
        self.unbound = 0

    def unbind(self) -> defer.Deferred[None]:
        self.unbound += 1
        self.port = None
        return defer.succeed(None)


class TakeoverServiceTests(SynchronousTestCase):
    """
    L{TakeoverService} in the running process: who may take over, what is
    handed, and what happens when the new process serves or gives up.
    """

    def setUp(self) -> None:
        self.reactor = PausingReactor()
        self.path = shortPath(self)
        self.sockets = []
        for _ in range(2):
            s = socket.socket()
            self.addCleanup(s.close)
            s.bind(("127.0.0.1", 0))
            s.listen(5)
            self.sockets.append(s)
        self.listeners = [FakeListener("tcp:8080", FakePort(self.sockets[0])),
                          FakeListener("tcp:9180:interface=127.0.0.1",
                                       FakePort(self.sockets[1]))]
        self.stops = 0
        self.peer = (4321, os.getuid(), os.getgid())
        pidfile = self.mktemp()
        with open(pidfile, "w") as f:
            f.write("99\n")
        self.twistd = {"pidfile": pidfile}
        self.service = TakeoverService(
            self.path, self.reactor,
            lambda: [(KEY_A, cast(Any, self.listeners[0])),
                     (KEY_STATUS, cast(Any, self.listeners[1]))],
            self.stop, pidfile=TwistdPidfile(self.twistd, 99),
            credentials=lambda transport: self.peer, pid=99,
            environ={"NOTIFY_SOCKET": self.notifySocket()},
            vouch=self.vouch,
        )
        self.service.privilegedStartService()
        self.service.startService()

    def stop(self) -> None:
        self.stops += 1

    # The processes believed when they say they serve (None: any).
    holding: Optional[set[int]] = {4322}

    def vouch(self, pid: int, inodes: frozenset[int]) -> Optional[str]:
        self.assertEqual(inodes, {os.fstat(s.fileno()).st_ino for s in self.sockets})
        if self.holding is None or pid in self.holding:
            return None
        return "it holds none of the sockets handed over"

    def notifySocket(self) -> str:
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(self.notify.close)
        path = shortPath(self)
        self.notify.bind(path)
        self.notify.setblocking(False)
        return path

    def test_notifiesSystemd(self) -> None:
        """
        Once started, it tells systemd (C{NOTIFY_SOCKET}) that this process
        is the service's main process, and ready.
        """
        self.assertEqual(self.notify.recv(100), b"MAINPID=99\nREADY=1")

    def connect(self) -> tuple[Any, FakeUNIXTransport]:
        factory = self.reactor.unixServers[-1][1]
        protocol = factory.buildProtocol(None)
        transport = FakeUNIXTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_listens(self) -> None:
        """
        It listens on its path, for its owner only.
        """
        self.assertEqual(len(self.reactor.unixServers), 1)
        path, _, _, mode, _ = self.reactor.unixServers[0]
        self.assertEqual((path, mode), (self.path, 0o600))

    def test_handsOver(self) -> None:
        """
        A process of the same user is handed every listening socket: the
        descriptors in the order of the description line, which names the
        listeners' keys and this process's pid. It stops listening on its
        path first, and the pidfile naming this process is removed (and
        twistd's option emptied).
        """
        _, transport = self.connect()
        self.assertEqual(transport.descriptors, [s.fileno() for s in self.sockets])
        line = transport.value()
        self.assertEqual(parseDescription(line.rstrip(b"\n")),
                         (99, [(KEY_A, socket.AF_INET, 0), (KEY_STATUS, socket.AF_INET, 0)],
                          []))
        self.assertFalse(os.path.exists(self.twistd["pidfile"] or "x"))
        self.assertEqual(self.twistd["pidfile"], "")
        self.assertEqual(self.stops, 0)

    def test_handsReusePortGroup(self) -> None:
        """
        A listener's other SO_REUSEPORT sockets (the workers' parent's) are
        handed right after its own, numbered from 1.
        """
        extra = socket.socket()
        self.addCleanup(extra.close)
        self.service.extraSockets = (
            lambda listener: [extra.fileno()] if listener is self.listeners[0] else [])
        _, transport = self.connect()
        self.assertEqual(transport.descriptors, [self.sockets[0].fileno(), extra.fileno(),
                                                      self.sockets[1].fileno()])
        _, listeners, _ = parseDescription(transport.value().rstrip(b"\n"))
        self.assertEqual(listeners, [(KEY_A, socket.AF_INET, 0), (KEY_A, socket.AF_INET, 1),
                                     (KEY_STATUS, socket.AF_INET, 0)])

    def test_otherUser(self) -> None:
        """
        A process of another user (not root) is refused: an error line,
        nothing handed, still listening for a take-over.
        """
        self.peer = (4321, os.getuid() + 1, 0)
        protocol, transport = self.connect()
        self.assertEqual(transport.descriptors, [])
        self.assertIn(b'"error"', transport.value())
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.assertIsNotNone(self.service.port)

    def test_oneAtATime(self) -> None:
        """
        A second take-over while one runs is refused.
        """
        self.connect()
        _, second = self.connect()
        self.assertEqual(second.descriptors, [])
        self.assertIn(b"a take-over by pid 4321 is running already", second.value())

    def test_serving(self) -> None:
        """
        When the new process says it serves, the old one answers
        C{draining}, stops accepting at once (its ports stop reading, their
        descriptors no longer name the listening sockets, which keep
        listening, and the listeners are unbound), and, once the connection
        has closed, stops (as on SIGTERM).
        """
        protocol, transport = self.connect()
        addresses = [s.getsockname() for s in self.sockets]
        # The new process's copies.
        copies = [s.dup() for s in self.sockets]
        for copy in copies:
            self.addCleanup(copy.close)
        ports = [listener.port for listener in self.listeners]
        transport.clear()
        protocol.dataReceived(b"serving 4322\n")
        self.assertEqual(transport.value(), b"draining\n")
        self.assertTrue(transport.disconnecting)
        for port, listener in zip(ports, self.listeners, strict=True):
            assert port is not None
            self.assertFalse(port.reading)
            self.assertEqual(listener.unbound, 1)
        for s, copy, address in zip(self.sockets, copies, addresses, strict=True):
            # This process's descriptor names an unbound socket now...
            self.assertNotEqual(s.getsockname(), address)
            # ...and the socket listens on in the new process.
            self.assertEqual(copy.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1)
        self.assertEqual(self.stops, 0)
        protocol.connectionLost(None)
        self.assertEqual(self.stops, 1)
        # The pid it gave (a daemonizing twistd forks after connecting).
        self.assertEqual(self.service.handedOverTo, 4322)
        # Its pidfile stays the new process's.
        self.assertEqual(self.twistd["pidfile"], "")

    def test_abandoned(self) -> None:
        """
        A take-over whose connection ends before the new process serves
        leaves this process serving: its pidfile is written again and it
        listens for the next attempt; nothing is stopped.
        """
        protocol, _ = self.connect()
        # Meanwhile, another attempt is refused at once, saying why; the
        # socket stays open.
        _, other = self.connect()
        self.assertIn(b"a take-over by pid 4321 is running already", other.value())
        self.assertTrue(other.disconnecting)
        protocol.connectionLost(None)
        self.assertEqual(self.stops, 0)
        self.assertFalse(self.reactor.port.stopped)
        self.assertEqual(len(self.reactor.unixServers), 1)
        pidfile = self.twistd["pidfile"]
        with open(pidfile) as f:
            self.assertEqual(f.read(), "99\n")
        for listener in self.listeners:
            self.assertEqual(listener.unbound, 0)
        _, transport = self.connect()
        self.assertEqual(len(transport.descriptors), 2)

    def test_deadline(self) -> None:
        """
        A new process that has not said C{serving} within
        C{handoverTimeout} seconds of being handed the sockets is given up
        on, with one line: the connection is aborted, and this process
        writes its pidfile again and listens for the next attempt.
        """
        events: list[dict[str, Any]] = []
        self.service.log = Logger(observer=events.append)
        self.service.attempts.log = self.service.log
        protocol, transport = self.connect()
        self.reactor.advance(HANDOVER_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnected)
        self.assertIn("did not serve within 60s: abandoning the take-over",
                      [formatEvent(e) for e in events][-1])
        protocol.connectionLost(None)
        self.assertEqual(self.stops, 0)
        self.assertFalse(self.reactor.port.stopped)
        with open(self.twistd["pidfile"]) as f:
            self.assertEqual(f.read(), "99\n")

    def test_servingWithoutTheSockets(self) -> None:
        """
        A process that says it serves but holds none of the sockets handed
        over (any process of this user can connect and say so) is not
        believed: no C{draining}, one line, and this process serves on,
        listening for the next take-over.
        """
        events: list[dict[str, Any]] = []
        self.service.attempts.log = Logger(observer=events.append)
        protocol, transport = self.connect()
        transport.clear()
        protocol.dataReceived(b"serving 1\n")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.assertEqual(self.stops, 0)
        self.assertIsNone(self.service.handedOverTo)
        self.assertIn("pid 1 says it serves, but it holds none of the sockets handed over: "
                      "refused; still serving", " ".join(formatEvent(e) for e in events))
        self.assertTrue(all(listener.port is not None for listener in self.listeners))
        self.assertFalse(self.reactor.port.stopped)

    def test_servingUnknown(self) -> None:
        """
        Where it cannot be told which sockets the process holds, its word is
        taken.
        """
        self.holding = None
        protocol, transport = self.connect()
        transport.clear()
        protocol.dataReceived(b"serving 1\n")
        self.assertEqual(transport.value(), b"draining\n")

    def test_noDeadlineOnceServing(self) -> None:
        """
        Once the new process serves, the deadline is cancelled: the
        handover is not abandoned later.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"serving 4322\n")
        self.assertEqual([call for call in self.reactor.getDelayedCalls()
                          if call.getTime() >= HANDOVER_TIMEOUT], [])
        self.reactor.advance(HANDOVER_TIMEOUT * 2)
        self.assertFalse(transport.disconnected)
        protocol.connectionLost(None)
        self.assertEqual(self.stops, 1)

    def test_attemptsRateLimited(self) -> None:
        """
        A process that connects again and again (refused, or abandoning
        each attempt) gets a bounded number of lines logged: at most the
        rate limit's burst, then one line counting those left out.
        """
        events: list[dict[str, Any]] = []
        self.service.log = Logger(observer=events.append)
        self.service.attempts.log = self.service.log
        for i in range(100):
            self.peer = (4321, os.getuid() + (i % 2), 0)
            protocol, _ = self.connect()
            protocol.connectionLost(None)
        self.assertLessEqual(len(events), self.service.attempts.burst)
        self.reactor.advance(self.service.attempts.interval)
        self.assertIn("not logged in the last", formatEvent(events[-1]))
        self.assertLessEqual(len(events), self.service.attempts.burst + 1)


    def test_staleSocket(self) -> None:
        """
        A socket file left behind by a process that is gone is removed
        before listening; a file that is not a socket is a L{ListenError}.
        """
        from txsockproxy.service import ListenError

        stale = shortPath(self)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(stale)
        s.close()
        service = TakeoverService(stale, self.reactor, list, self.stop)
        service.listen()
        self.assertFalse(os.path.exists(stale))
        plain = os.path.abspath(self.mktemp())
        with open(plain, "w"):
            pass
        service = TakeoverService(plain, self.reactor, list, self.stop)
        with self.assertRaises(ListenError) as caught:
            service.listen()
        self.assertIn("is not a socket", str(caught.exception))

    def test_busySocket(self) -> None:
        """
        A path another live process listens on (holding its lock) is a
        L{ListenError}, found without connecting to it: a connection would
        start a take-over there.
        """
        from txsockproxy.service import ListenError

        busy = shortPath(self)
        live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(live.close)
        live.bind(busy)
        live.listen(1)
        live.setblocking(False)
        # Its lock, as its listen() takes it.
        lock = instancelock.acquire(instancelock.pathLockName("takeover", busy))
        assert lock is not None
        self.addCleanup(lock.release)
        service = TakeoverService(busy, self.reactor, list, self.stop)
        with self.assertRaises(ListenError) as caught:
            service.listen()
        self.assertIn("another process listens on it", str(caught.exception))
        self.assertRaises(BlockingIOError, live.accept)
        self.assertTrue(os.path.exists(busy))

    def test_pathLock(self) -> None:
        """
        A process listening on its path holds the path's lock, so a second
        one cannot, also while a take-over runs; it lets it go (and the
        file) once the new process serves, before answering C{draining},
        so that the new process can listen there.
        """
        from txsockproxy.service import ListenError

        other = TakeoverService(self.path, MemoryReactorClock(), list, self.stop)
        self.assertRaises(ListenError, other.listen)
        protocol, transport = self.connect()
        self.assertRaises(ListenError, other.listen)
        transport.clear()
        protocol.dataReceived(b"serving 4322\n")
        self.assertTrue(self.reactor.port.stopped)
        self.assertEqual(transport.value(), b"draining\n")
        other.listen()
        other._stopListening()

    def test_handsOverLocks(self) -> None:
        """
        The instance locks this process holds are handed over after the
        listening sockets, named in the description.
        """
        locks = InstanceLocks()
        name = instancelock.tcpLockName("127.0.0.1", self.sockets[0].getsockname()[1])
        locks.acquire(name, "127.0.0.1")
        self.addCleanup(locks.release, name)
        self.service.locks = locks
        _, transport = self.connect()
        [lock] = locks.held()
        self.assertEqual(transport.descriptors,
                         [s.fileno() for s in self.sockets] + [lock.fileno])
        self.assertEqual(parseDescription(transport.value().rstrip(b"\n")).locks, [name])

    def test_cannotListen(self) -> None:
        """
        A path the reactor cannot listen on (C{CannotListenError}, e.g. one
        too long for a unix socket address) is a L{ListenError} of one
        line, not a traceback.
        """
        from twisted.internet.error import CannotListenError

        from txsockproxy.service import ListenError

        class Refusing(MemoryReactorClock):
            def listenUNIX(self, address: str, factory: Any, backlog: int = 50,
                           mode: int = 0o666, wantPID: int = 0) -> Any:
                raise CannotListenError(None, address, OSError(36, "File name too long"))

        service = TakeoverService(shortPath(self), Refusing(), list, self.stop)
        with self.assertRaises(ListenError) as caught:
            service.listen()
        self.assertIn("File name too long: cannot listen on takeover-socket",
                      str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))


class TwistdPidfileTests(SynchronousTestCase):
    """
    L{TwistdPidfile}.
    """

    def test_otherProcess(self) -> None:
        """
        A pidfile naming another process is left alone.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("12\n")
        options = {"pidfile": path}
        TwistdPidfile(options, 99).release()
        self.assertTrue(os.path.exists(path))
        self.assertEqual(options["pidfile"], path)

    def test_none(self) -> None:
        """
        Without a pidfile, nothing is done.
        """
        options = {"pidfile": ""}
        pidfile = TwistdPidfile(options, 99)
        pidfile.release()
        pidfile.restore()
        self.assertEqual(options, {"pidfile": ""})


def config(status: bool = False) -> Config:
    return Config(
        proxies=(ProxyConfig(name="p", listen=("tcp:8080", "tcp:8081"),
                             backends=(BackendConfig(endpoint="tcp:host=h:port=1",
                                                    label="b"),)),),
        status=StatusConfig(listen=("tcp:9180:interface=127.0.0.1",)) if status else None,
    )


class ServiceInTakeoverTests(SynchronousTestCase):
    """
    A L{ProxyService} of a process that took over: listeners handed adopt
    their socket, the others bind.
    """

    def test_adoptOrBind(self) -> None:
        """
        In a L{TakenOverProxyService}, a listener whose socket was handed adopts it
        (the status listener too); one without binds its own.
        """
        reactor = MemoryReactorClock()
        s1, s2 = socket.socket(), socket.socket()
        cfg = config(status=True)
        keys = listenKeys(cfg)
        inherited = {keys[0]: InheritedSocket(s1.detach(), socket.AF_INET),
                     keys[2]: InheritedSocket(s2.detach(), socket.AF_INET)}
        service = TakenOverProxyService(cfg, reactor, inherited=inherited)
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(reactor.adoptedPorts), 2)
        self.assertEqual([port[0] for port in reactor.tcpServers], [8081])
        self.assertEqual([i.fileno for i in inherited.values()], [-1, -1])

    def test_workerStillFails(self) -> None:
        """
        Without C{bindUnhanded} (a worker), a listener without a socket
        handed is a start-up error, as before.
        """
        from txsockproxy.service import StartupError

        with self.assertRaises(StartupError) as caught:
            ProxyService(config(), MemoryReactorClock(), inherited={})
        self.assertIn("no listening socket was handed over for tcp:8080",
                      str(caught.exception))


class OptionsTests(SynchronousTestCase):
    """
    C{--take-over} on the command line.
    """

    def options(self, receive: Any) -> Options:
        options = Options()
        options.stderr = io.StringIO()
        options.receive = receive
        return options

    def configFile(self, takeover: bool = True) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            if takeover:
                f.write('takeover-socket = "/run/sockproxy/takeover.sock"\n')
            f.write('[[proxy]]\nlisten = ["tcp:8080"]\n[[proxy.backend]]\n'
                    'endpoint = "tcp:host=127.0.0.1:port=1"\n')
        return path

    def test_received(self) -> None:
        """
        C{--take-over} receives from the configuration's takeover-socket
        while the options are parsed (before twistd checks its pidfile).
        """
        asked = []
        received = Received(socket.socket(), 5, {})
        self.addCleanup(received.abandon)

        def receive(path: str, peerUids: list[int]) -> Any:
            asked.append(path)
            self.assertEqual(peerUids, [])
            return received

        options = self.options(receive)
        options.parseOptions(["--config", self.configFile(), "--take-over"])
        self.assertEqual(asked, ["/run/sockproxy/takeover.sock"])
        self.assertIs(options["received"], received)

    def test_droppedUid(self) -> None:
        """
        Under twistd's C{-u UID}, the process on the takeover socket may
        run as that uid (this root process drops to it).
        """
        asked = []

        def receive(path: str, peerUids: list[int]) -> Any:
            asked.append(peerUids)
            return None

        options = self.options(receive)
        options.parent = {"uid": 4242}  # type: ignore[attr-defined]
        options.parseOptions(["--config", self.configFile(), "--take-over"])
        self.assertEqual(asked, [[4242]])

    def test_nothingThere(self) -> None:
        """
        When no process listens there, nothing is received, and start-up
        goes on (binding).
        """
        options = self.options(lambda path, peerUids: None)
        options.parseOptions(["--config", self.configFile(), "--take-over"])
        self.assertIsNone(options["received"])

    def test_failed(self) -> None:
        """
        A take-over that fails is one line on stderr and exit status 1.
        """
        def receive(path: str, peerUids: list[int]) -> Any:
            raise TakeoverError("the running process refused: no")

        options = self.options(receive)
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(["--config", self.configFile(), "--take-over"])
        self.assertEqual(caught.exception.code, 1)
        self.assertEqual(options.stderr.getvalue(),  # type: ignore[attr-defined]
                         "sockproxy: take-over: the running process refused: no; the "
                         "running process is left as it was\n")

    def test_noSocketConfigured(self) -> None:
        """
        C{--take-over} with a configuration without takeover-socket is one
        line and exit status 1, nothing attempted.
        """
        options = self.options(lambda path, peerUids: self.fail("attempted"))
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(["--config", self.configFile(takeover=False), "--take-over"])
        self.assertEqual(caught.exception.code, 1)
        self.assertIn("has no takeover-socket", options.stderr.getvalue())  # type: ignore[attr-defined]

    def test_notWithoutOption(self) -> None:
        """
        Without C{--take-over}, nothing is received.
        """
        options = self.options(lambda path, peerUids: self.fail("attempted"))
        options.parseOptions(["--config", self.configFile()])
        self.assertIsNone(options["received"])


class WorkersInTakeoverTests(SynchronousTestCase):
    """
    The workers' parent (L{txsockproxy.workers.WorkersService}) in a
    take-over: it adopts the sockets handed, hands its own over, and says
    when its workers serve.
    """

    def service(self, inherited: Optional[dict[ListenKey, InheritedSocket]] = None) -> Any:
        from txsockproxy.workers import WorkersService

        reactor = MemoryReactorClock()
        return reactor, WorkersService(config(), reactor, "w.toml", 2, inherited=inherited,
                                       sockets="shared")

    def test_adoptOrBind(self) -> None:
        """
        A listener whose socket was handed over adopts it; the others bind.
        """
        keys = listenKeys(config())
        inherited = {keys[0]: InheritedSocket(socket.socket().detach(), socket.AF_INET)}
        reactor, service = self.service(inherited)
        listeners = service.keyedListeners()
        self.assertEqual([key for key, _ in listeners], keys)
        for _, listener in listeners:
            listener.bind()
        self.assertEqual(len(reactor.adoptedPorts), 1)
        self.assertEqual([port[0] for port in reactor.tcpServers], [8081])
        self.assertEqual(inherited[keys[0]].fileno, -1)

    def test_whenServing(self) -> None:
        """
        L{WorkersService.whenServing} fires once every worker serves.
        """
        _, service = self.service()
        serving = service.whenServing()
        answers = []
        for worker in service.workers:
            control = _Control()
            worker.control = control
            service._handAndServe(worker, [])
            answers.append(control.answer)
        answers[0].callback({"pid": 10})
        self.assertNoResult(serving)
        answers[1].callback({"pid": 11})
        self.successResultOf(serving)
        self.successResultOf(service.whenServing())


class _Control:
    """
    A worker's control connection that answers L{Serve} when the test fires
    L{answer}, and the commands before it (L{Configure}) at once.
    """

    def __init__(self) -> None:
        self.answer: defer.Deferred[Any] = defer.Deferred()

    def callRemote(self, command: Any, **arguments: Any) -> defer.Deferred[Any]:
        if command is not Serve:
            return defer.succeed({})
        return self.answer


class NotifySystemdTests(SynchronousTestCase):
    """
    L{notifySystemd}.
    """

    def test_abstract(self) -> None:
        """
        An address starting with C{@} is an abstract socket.
        """
        name = f"txsockproxy-test-{os.getpid()}"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(server.close)
        server.bind("\0" + name)
        server.setblocking(False)
        self.assertTrue(notifySystemd("READY=1", {"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(server.recv(100), b"READY=1")

    def test_none(self) -> None:
        """
        Without C{NOTIFY_SOCKET}, or with one nobody listens on, nothing is
        sent.
        """
        self.assertFalse(notifySystemd("READY=1", {}))
        self.assertFalse(notifySystemd("READY=1", {"NOTIFY_SOCKET": "/nonexistent/n"}))


def reusePortGroup(case: SynchronousTestCase, count: int, reuse: bool = True
                   ) -> list[socket.socket]:
    """
    C{count} listening sockets on one loopback port, with SO_REUSEPORT
    (or one without, if not C{reuse}).
    """
    group: list[socket.socket] = []
    port = 0
    for _ in range(count if reuse else 1):
        s = socket.socket()
        case.addCleanup(s.close)
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        port = s.getsockname()[1]
        s.listen(5)
        group.append(s)
    return group


class _AdoptedPort:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.stopped = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def stopListening(self) -> None:
        self.stopped = True


class _Adopting:
    """
    Stands for an L{AdoptingReactor}: listenTCP gives a port over the
    first socket of the group.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.port = _AdoptedPort(sock)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        return self.port


class InheritedReusePortReactorTests(SynchronousTestCase):
    """
    L{InheritedReusePortReactor}: a new workers' parent keeps the old one's
    SO_REUSEPORT sockets of a listener.
    """

    def inherit(self, sockets: list[socket.socket]) -> list[InheritedSocket]:
        return [InheritedSocket(os.dup(s.fileno()), socket.AF_INET) for s in sockets]

    def test_sameCount(self) -> None:
        """
        As many workers as before: the sockets handed are the extra ones,
        in order.
        """
        group = reusePortGroup(self, 3)
        inherited = self.inherit(group[1:])
        reactor = InheritedReusePortReactor(_Adopting(group[0]), inherited, 3)
        self.addCleanup(reactor.close)
        reactor.listenTCP(0, None)
        names = [socket.socket(fileno=os.dup(fd)) for fd in reactor.extra]
        for s in names:
            self.addCleanup(s.close)
        self.assertEqual(len(reactor.extra), 2)
        self.assertEqual([n.getsockname() for n in names],
                         [s.getsockname() for s in group[1:]])
        self.assertEqual([i.fileno for i in inherited], [-1, -1])

    def test_moreAndFewer(self) -> None:
        """
        More workers than before: sockets are bound for them on the same
        port; fewer: the sockets left over are closed.
        """
        group = reusePortGroup(self, 2)
        reactor = InheritedReusePortReactor(_Adopting(group[0]), self.inherit(group[1:]), 4)
        self.addCleanup(reactor.close)
        reactor.listenTCP(0, None)
        self.assertEqual(len(reactor.extra), 3)
        for fd in reactor.extra:
            s = socket.socket(fileno=os.dup(fd))
            self.addCleanup(s.close)
            self.assertEqual(s.getsockname(), group[0].getsockname())
        group = reusePortGroup(self, 3)
        inherited = self.inherit(group[1:])
        surplus = inherited[1].fileno
        reactor = InheritedReusePortReactor(_Adopting(group[0]), inherited, 2)
        self.addCleanup(reactor.close)
        reactor.listenTCP(0, None)
        self.assertEqual(len(reactor.extra), 1)
        self.assertFalse(isOpen(surplus))

    def test_sharedBefore(self) -> None:
        """
        A socket handed over without SO_REUSEPORT stays one shared socket:
        no other is bound.
        """
        group = reusePortGroup(self, 1, reuse=False)
        reactor = InheritedReusePortReactor(_Adopting(group[0]), [], 3)
        reactor.listenTCP(0, None)
        self.assertEqual(reactor.extra, [])


class NewSideTests(SynchronousTestCase):
    """
    L{TakeoverService} in a process started with C{--take-over}.
    """

    def test_servesThenListens(self) -> None:
        """
        Started, it closes the sockets it did not adopt, tells the old
        process it serves, then listens for the next take-over; with
        C{serving}, only once the Deferred it returns has fired.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(ours.close)
        unused = InheritedSocket(socket.socket().detach(), socket.AF_INET)
        received = Received(theirs, 5, {}, {KEY_A: [unused]})
        reactor = MemoryReactorClock()
        workersServe: defer.Deferred[None] = defer.Deferred()
        service = TakeoverService(shortPath(self), reactor, list, lambda: None,
                                  received=received, environ={},
                                  serving=lambda: workersServe)
        service.privilegedStartService()
        service.startService()
        self.assertEqual(reactor.unixServers, [])
        self.assertNotEqual(unused.fileno, -1)
        workersServe.callback(None)
        self.assertEqual(unused.fileno, -1)
        [(_, _, factory)] = reactor.adoptedStreamConnections
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), f"serving {os.getpid()}\n".encode())
        # Listening for the next take-over once the old process has answered.
        self.assertEqual(reactor.unixServers, [])
        protocol.dataReceived(b"draining\n")
        self.assertEqual(len(reactor.unixServers), 1)
