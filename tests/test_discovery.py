"""
Tests for L{txsockproxy.discovery} and the backends it gives a pool:
lookups of A/AAAA and SRV records through a fake C{twisted.names}
resolver, their timing on a L{Clock}, and what the pool does with the
addresses (new ones take sessions, gone ones drain, failures keep the last
good set).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names import dns, resolve
from twisted.names.error import (
    DNSFormatError,
    DNSNameError,
    DNSNotImplementedError,
    DNSQueryRefusedError,
    DNSServerError,
    DomainError,
)
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from tests import fakes
from txsockproxy import discovery
from txsockproxy.backends import (
    DRAINING,
    UP,
    Backend,
    BackendPool,
    DiscoveredBackends,
    ResolverCache,
    discoveredConfig,
)
from txsockproxy.balancers import FairBalancer, balancerFactory
from txsockproxy.config import (
    BackendConfig,
    CheckConfig,
    Config,
    DiscoveryConfig,
    ProxyConfig,
)
from txsockproxy.discovery import (
    EmptyAnswer,
    HostsResolver,
    Resolution,
    StreamResolver,
    Target,
    canonical,
    lookupAddresses,
    lookupService,
    makeResolver,
    parseServer,
    whyFailed,
)
from txsockproxy.listening import LISTENING, Listening, isLocalAddress
from txsockproxy.relay import ProxyFactory
from txsockproxy.service import ProxyService
from txsockproxy.status import StatusView, statusDocument


def a(name: str, address: str, ttl: int = 30) -> dns.RRHeader:
    return dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A(address, ttl))


def aaaa(name: str, address: str, ttl: int = 30) -> dns.RRHeader:
    return dns.RRHeader(name, dns.AAAA, dns.IN, ttl, dns.Record_AAAA(address, ttl))


def srv(name: str, target: str | bytes, port: int, priority: int = 0, weight: int = 0,
        ttl: int = 30) -> dns.RRHeader:
    return dns.RRHeader(name, dns.SRV, dns.IN, ttl,
                        dns.Record_SRV(priority, weight, port, target, ttl))


class FakeDNS:
    """
    A C{twisted.names} resolver (the lookups a backend from DNS makes)
    answering from tables the test changes: C{records[(name, type)]} is the
    answer section; C{additional[name]} the additional one of an SRV
    answer; a name in C{failing} fails as a timeout does, and one that is
    in no table as a name that does not exist. With C{hold} set, lookups
    wait in C{held} for the test to fire them.
    """

    def __init__(self) -> None:
        self.records: dict[tuple[str, int], list[dns.RRHeader]] = {}
        self.additional: dict[str, list[dns.RRHeader]] = {}
        self.failing: set[str] = set()
        self.asked: list[tuple[str, int]] = []
        self.hold = False
        self.held: list[defer.Deferred[Any]] = []

    def set(self, name: str, *addresses: str, ttl: int = 30) -> None:
        """
        Make C{name} have C{addresses} (A and AAAA records).
        """
        self.records[(name, dns.A)] = [a(name, x, ttl) for x in addresses if ":" not in x]
        self.records[(name, dns.AAAA)] = [aaaa(name, x, ttl) for x in addresses if ":" in x]

    def _lookup(self, name: str, kind: int) -> defer.Deferred[Any]:
        self.asked.append((name, kind))
        if self.hold:
            d: defer.Deferred[Any] = defer.Deferred()
            self.held.append(d)
            return d
        if name in self.failing:
            return defer.fail(defer.TimeoutError(name))
        if (name, kind) not in self.records:
            return defer.fail(DNSNameError(name))
        return defer.succeed((list(self.records[(name, kind)]), [],
                              list(self.additional.get(name, []))))

    def lookupAddress(self, name: str) -> defer.Deferred[Any]:
        return self._lookup(name, dns.A)

    def lookupIPV6Address(self, name: str) -> defer.Deferred[Any]:
        return self._lookup(name, dns.AAAA)

    def lookupService(self, name: str) -> defer.Deferred[Any]:
        return self._lookup(name, dns.SRV)


class Events:
    """
    Records log events while a test runs.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def containing(self, text: str) -> list[dict[str, Any]]:
        return [e for e in self.events if text in e.get("log_format", "")]


class LookupTests(SynchronousTestCase):
    """
    L{lookupAddresses} and L{lookupService} turn DNS answers into targets.
    """

    def test_addresses(self) -> None:
        """
        Every A and AAAA record of a name is a target with the configured
        port; the TTL is the shortest of theirs.
        """
        resolver = FakeDNS()
        resolver.records[("db", dns.A)] = [a("db", "10.0.0.2", 40), a("db", "10.0.0.1", 20)]
        resolver.records[("db", dns.AAAA)] = [aaaa("db", "fd00::1", 60)]
        targets, ttl = self.successResultOf(lookupAddresses(resolver, "db", 5432))
        self.assertEqual(
            sorted(targets),
            [Target("10.0.0.1", 5432), Target("10.0.0.2", 5432), Target("fd00::1", 5432)],
        )
        self.assertEqual(ttl, 20.0)

    def test_oneFamilyFailing(self) -> None:
        """
        A DNS name whose AAAA lookup finds no such name gives its A
        records; one whose lookups both fail fails; and so does one whose
        AAAA lookup times out, rather than give the A records alone (a
        flaky AAAA lookup would otherwise drain the backends of the A
        records). Names of /etc/hosts never get here: see L{HostsTests}.
        """
        resolver = FakeDNS()
        resolver.records[("db", dns.A)] = [a("db", "10.0.0.1")]
        targets, _ = self.successResultOf(lookupAddresses(resolver, "db", 1))
        self.assertEqual(targets, [Target("10.0.0.1", 1)])
        self.failureResultOf(lookupAddresses(resolver, "nowhere", 1), DNSNameError)

        class HalfTimingOut(FakeDNS):
            def lookupIPV6Address(self, name: str) -> defer.Deferred[Any]:
                return defer.fail(defer.TimeoutError(name))

        flaky = HalfTimingOut()
        flaky.set("db", "10.0.0.1")
        self.failureResultOf(lookupAddresses(flaky, "db", 1), defer.TimeoutError)

    def test_otherNamesIgnored(self) -> None:
        """
        Records whose owner is not the name asked are not its addresses:
        an answer with only those fails as an empty one, naming the other
        name; beside records of the name they are left out. Names compare
        without case or trailing dot.
        """
        resolver = FakeDNS()
        resolver.records[("db.test", dns.A)] = [a("other.test", "127.0.0.9")]
        failure = self.failureResultOf(lookupAddresses(resolver, "db.test", 1), EmptyAnswer)
        self.assertIn("'other.test'", whyFailed(failure))
        self.assertTrue(whyFailed(failure).startswith("no addresses in the answer ("))
        resolver.records[("db.test", dns.A)] = [a("other.test", "127.0.0.9"),
                                                a("DB.test.", "10.0.0.1")]
        resolver.records[("db.test", dns.AAAA)] = [aaaa("other.test", "fd00::9")]
        targets, _ = self.successResultOf(lookupAddresses(resolver, "db.test", 1))
        self.assertEqual(targets, [Target("10.0.0.1", 1)])

    def test_cnameFollowed(self) -> None:
        """
        The records of a name the name asked is a CNAME of, in the same
        answer (chains included), are its addresses; a CNAME loop ends.
        """
        def cname(name: str, target: str) -> dns.RRHeader:
            return dns.RRHeader(name, dns.CNAME, dns.IN, 30, dns.Record_CNAME(target, 30))

        resolver = FakeDNS()
        resolver.records[("db.test", dns.A)] = [
            cname("db.test", "lb.test"), cname("lb.test", "x.test"),
            a("x.test", "10.0.0.1"), a("other.test", "127.0.0.9"),
        ]
        targets, _ = self.successResultOf(lookupAddresses(resolver, "db.test", 1))
        self.assertEqual(targets, [Target("10.0.0.1", 1)])
        resolver.records[("db.test", dns.A)] = [cname("db.test", "db.test")]
        self.assertEqual(self.successResultOf(lookupAddresses(resolver, "db.test", 1)),
                         ([], None))

    def test_serviceOtherNamesIgnored(self) -> None:
        """
        SRV records of another name than the one asked are left out; an
        answer with only those fails.
        """
        resolver = FakeDNS()
        name = "_pg._tcp.example"
        resolver.records[(name, dns.SRV)] = [srv("_evil._tcp.example", "t2.example", 2),
                                             srv(name, "t1.example", 1)]
        resolver.set("t1.example", "10.0.0.1")
        resolver.set("t2.example", "10.0.0.2")
        targets, _ = self.successResultOf(lookupService(resolver, name))
        self.assertEqual(targets, [Target("10.0.0.1", 1)])
        resolver.records[(name, dns.SRV)] = [srv("_evil._tcp.example", "t2.example", 2)]
        self.failureResultOf(lookupService(resolver, name), EmptyAnswer)

    def test_serviceWithAdditional(self) -> None:
        """
        SRV records give port, priority and weight; the addresses of their
        targets come from the additional section when it has them (as
        Consul gives), without another lookup.
        """
        resolver = FakeDNS()
        name = "_pg._tcp.db.service.consul"
        resolver.records[(name, dns.SRV)] = [
            srv(name, "n1.node.consul", 5432, 1, 10),
            srv(name, "n2.node.consul", 5433, 2, 0),
        ]
        resolver.additional[name] = [a("n1.node.consul", "10.0.0.1", 5),
                                     a("n2.node.consul", "10.0.0.2")]
        targets, ttl = self.successResultOf(lookupService(resolver, name))
        self.assertEqual(sorted(targets), [Target("10.0.0.1", 5432, 1, 10),
                                           Target("10.0.0.2", 5433, 2, 0)])
        self.assertEqual(ttl, 5.0)
        self.assertEqual(resolver.asked, [(name, dns.SRV)])

    def test_serviceTargetsLookedUp(self) -> None:
        """
        Without additional records, each SRV target is looked up (A and
        AAAA); a target that does not exist, and the target C{.} (no
        service), are left out; one whose lookup times out fails the
        whole answer (its backends would drain otherwise).
        """
        resolver = FakeDNS()
        name = "_pg._tcp.example"
        resolver.records[(name, dns.SRV)] = [
            srv(name, "t1.example", 1),
            srv(name, "missing.example", 2),
            srv(name, b"", 3),  # the root name: "."
        ]
        resolver.set("t1.example", "10.0.0.1", "fd00::1")
        targets, _ = self.successResultOf(lookupService(resolver, name))
        self.assertEqual(sorted(targets), [Target("10.0.0.1", 1), Target("fd00::1", 1)])
        resolver.failing.add("missing.example")
        self.failureResultOf(lookupService(resolver, name), defer.TimeoutError)

    def test_servicePortZero(self) -> None:
        """
        An SRV record with port 0 (nothing listens there) is left out, and
        logged once, however often it comes.
        """
        events = Events(self)
        resolver = FakeDNS()
        name = "_pg._tcp.zero.example"
        resolver.records[(name, dns.SRV)] = [srv(name, "t1.example", 0),
                                             srv(name, "t2.example", 5432)]
        resolver.set("t1.example", "10.0.0.1")
        resolver.set("t2.example", "10.0.0.2")
        for _ in range(3):
            targets, _ = self.successResultOf(lookupService(resolver, name))
            self.assertEqual(targets, [Target("10.0.0.2", 5432)])
        self.assertEqual(len(events.containing("has port 0")), 1)


class CanonicalTests(SynchronousTestCase):
    """
    L{canonical} orders targets whatever order DNS gave them in.
    """

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(["10.0.0.2", "10.0.0.10", "::1", "9.0.0.1"]),
                              st.integers(1, 3), st.integers(0, 2)), max_size=8),
           st.randoms())
    def test_orderIndependent(self, raw: list[tuple[str, int, int]], rng: random.Random) -> None:
        """
        Any permutation of the same targets gives the same list, without
        repeats, by priority then numeric address (IPv4 first) then port.
        """
        targets = [Target(addr, port, prio) for addr, port, prio in raw]
        shuffled = list(targets)
        rng.shuffle(shuffled)
        result = canonical(targets)
        self.assertEqual(canonical(shuffled), result)
        self.assertEqual(len({(t.address, t.port) for t in result}), len(result))
        keys = [(t.priority, ":" in t.address, t.address.count(".") and
                 tuple(int(p) for p in t.address.split(".")), t.port) for t in result]
        self.assertEqual(keys, sorted(keys))


class ParseServerTests(SynchronousTestCase):
    """
    L{parseServer} reads the C{resolver} key.
    """

    def test_forms(self) -> None:
        """
        An IPv4 or IPv6 address, with a port or not (53).
        """
        self.assertEqual(parseServer("10.0.0.53"), ("10.0.0.53", 53))
        self.assertEqual(parseServer("127.0.0.1:8600"), ("127.0.0.1", 8600))
        self.assertEqual(parseServer("fd00::53"), ("fd00::53", 53))
        self.assertEqual(parseServer("[fd00::53]:5353"), ("fd00::53", 5353))

    def test_bad(self) -> None:
        """
        A name, a bad port or a broken bracket is refused.
        """
        for text in ("dns.example", "10.0.0.1:0", "10.0.0.1:x", "[::1", "[::1]x", ""):
            self.assertRaises(ValueError, parseServer, text)

    def test_makeResolver(self) -> None:
        """
        A configured server gives a resolver that asks that server alone;
        none, the system's: C{/etc/hosts} first, then the servers of
        C{/etc/resolv.conf}.
        """
        reactor = MemoryReactorClock()
        chain = makeResolver(reactor, "127.0.0.1:5353")
        [stream] = chain.resolvers
        assert isinstance(stream, StreamResolver)
        self.assertEqual(list(stream.servers()), [("127.0.0.1", 5353)])
        resolvConf = FilePath(self.mktemp())
        resolvConf.setContent(b"nameserver 192.0.2.53\nnameserver 192.0.2.54\n")
        self.patch(discovery, "RESOLV_CONF", resolvConf.path)
        system = makeResolver(reactor, "")
        hostsFile, stream = system.resolvers
        self.assertIsInstance(hostsFile, HostsResolver)
        self.assertEqual(hostsFile.file, discovery.HOSTS.encode())
        assert isinstance(stream, StreamResolver)
        self.assertEqual(list(stream.servers()), [("192.0.2.53", 53), ("192.0.2.54", 53)])


def framed(message: dns.Message) -> bytes:
    data = message.toStr()
    return len(data).to_bytes(2, "big") + data


class Server:
    """
    The far end of one connection a L{StreamResolver} made through a
    L{MemoryReactorClock}: reads its queries, answers them.
    """

    def __init__(self, reactor: MemoryReactorClock, index: int) -> None:
        self.host, self.port, self.factory, self.timeout, _ = reactor.tcpClients[index]
        self.transport = StringTransport()
        self.protocol: Any = None

    def accept(self) -> Server:
        self.protocol = self.factory.buildProtocol(IPv4Address("TCP", self.host, self.port))
        self.protocol.makeConnection(self.transport)
        return self

    def refuse(self) -> None:
        self.factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def queries(self) -> list[dns.Message]:
        data, messages = self.transport.value(), []
        while data:
            size = int.from_bytes(data[:2], "big")
            message = dns.Message()
            message.fromStr(data[2:2 + size])
            messages.append(message)
            data = data[2 + size:]
        return messages

    def answer(self, query: dns.Message, *records: dns.RRHeader, rCode: int = dns.OK) -> None:
        answer = dns.Message(id=query.id, answer=True, rCode=rCode)
        answer.queries = query.queries
        answer.answers = list(records)
        self.protocol.dataReceived(framed(answer))


class StreamResolverTests(SynchronousTestCase):
    """
    L{StreamResolver} asks DNS servers over TCP: queries at once on one
    connection, within one deadline, the next server when one fails.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.events = Events(self)

    def resolver(self, *servers: tuple[str, int]) -> StreamResolver:
        return StreamResolver(self.reactor, lambda: list(servers))

    def test_pipelined(self) -> None:
        """
        Queries sent while others wait go at once, on the one connection
        (its connect shared): an answer that does not come holds up none
        of the others.
        """
        resolver = self.resolver(("192.0.2.53", 53))
        slow = resolver.query(dns.Query("slow.example", dns.A))
        fast = resolver.query(dns.Query("fast.example", dns.A))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        server = Server(self.reactor, 0).accept()
        first, second = server.queries()
        self.assertEqual(second.queries[0].name.name, b"fast.example")
        server.answer(second, a("fast.example", "10.0.0.1"))
        self.assertEqual(self.successResultOf(fast)[0][0].payload.dottedQuad(), "10.0.0.1")
        self.assertNoResult(slow)
        again = resolver.query(dns.Query("again.example", dns.A))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(len(server.queries()), 3)
        self.assertNoResult(again)
        self.reactor.advance(5)
        self.failureResultOf(slow, defer.TimeoutError)
        self.failureResultOf(again, defer.TimeoutError)

    def test_errorCodes(self) -> None:
        """
        An error code in the answer fails the query with its
        C{twisted.names} error.
        """
        resolver = self.resolver(("192.0.2.53", 53))
        missing = resolver.query(dns.Query("missing.example", dns.A))
        broken = resolver.query(dns.Query("broken.example", dns.A))
        server = Server(self.reactor, 0).accept()
        first, second = server.queries()
        server.answer(first, rCode=dns.ENAME)
        server.answer(second, rCode=dns.ESERVER)
        self.failureResultOf(missing, DNSNameError)
        self.failureResultOf(broken, DNSServerError)

    def test_connectBounded(self) -> None:
        """
        Connecting is bounded by the query's time: a server that never
        accepts fails the query as a timeout after 5 seconds, not after
        the 30 seconds of a connect's default timeout.
        """
        resolver = self.resolver(("192.0.2.53", 53))
        asked = resolver.query(dns.Query("db.example", dns.A))
        self.assertLessEqual(Server(self.reactor, 0).timeout, 5)
        resolution = Resolution(self.reactor, lambda: asked, lambda t: None, 1.0, 300.0,
                                what="backend db")
        resolution.start()
        self.reactor.advance(5)
        self.assertTrue(resolution.failing)
        self.assertEqual(resolution.lastError, "no answer (timeout)")
        resolution.stop()

    def test_nextServer(self) -> None:
        """
        A server that refuses the connection, or answers REFUSED, is
        followed by the next one, within the same query.
        """
        resolver = self.resolver(("192.0.2.53", 53), ("192.0.2.54", 53), ("192.0.2.55", 53))
        asked = resolver.query(dns.Query("db.example", dns.A))
        Server(self.reactor, 0).refuse()
        second = Server(self.reactor, 1).accept()
        self.assertEqual(second.host, "192.0.2.54")
        second.answer(second.queries()[0], rCode=dns.EREFUSED)
        third = Server(self.reactor, 2).accept()
        third.answer(third.queries()[0], a("db.example", "10.0.0.1"))
        self.assertEqual(len(self.successResultOf(asked)[0]), 1)

    def test_idleClosedRetried(self) -> None:
        """
        A query sent on a kept connection that the server closes (as
        servers close idle ones) is asked again, once, on a new
        connection to the same server.
        """
        resolver = self.resolver(("192.0.2.53", 53))
        first = resolver.query(dns.Query("a.example", dns.A))
        server = Server(self.reactor, 0).accept()
        server.answer(server.queries()[0], a("a.example", "10.0.0.1"))
        self.successResultOf(first)
        second = resolver.query(dns.Query("b.example", dns.A))
        server.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(second)
        again = Server(self.reactor, 1).accept()
        self.assertEqual(again.host, "192.0.2.53")
        [query] = again.queries()
        self.assertEqual(query.queries[0].name.name, b"b.example")
        again.answer(query, a("b.example", "10.0.0.2"))
        self.assertEqual(len(self.successResultOf(second)[0]), 1)

    def test_timeoutDropsConnection(self) -> None:
        """
        A lookup that times out on a kept connection (here one whose server
        declared a 65535-byte message and sent 20 bytes of it) drops that
        connection: the next lookup connects afresh, and is answered.
        """
        resolver = self.resolver(("192.0.2.53", 53))
        first = resolver.query(dns.Query("a.example", dns.A))
        server = Server(self.reactor, 0).accept()
        server.answer(server.queries()[0], a("a.example", "10.0.0.1"))
        self.successResultOf(first)
        answers: list[list[Target]] = []
        chain = resolve.ResolverChain([resolver])
        resolution = Resolution(
            self.reactor, lambda: lookupAddresses(chain, "db.example", 5432),
            answers.append, 1.0, 300.0, what="backend db",
        )
        self.addCleanup(resolution.stop)
        resolution.start()
        self.assertEqual(len(server.queries()), 3)
        server.protocol.dataReceived(b"\xff\xff" + b"\x00" * 20)
        self.reactor.advance(5)
        self.assertEqual(resolution.lastError, "no answer (timeout)")
        self.assertTrue(server.transport.disconnecting)
        self.assertEqual(resolver.timedOut, 1)
        server.protocol.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        fresh = Server(self.reactor, 1).accept()
        ipv4, ipv6 = fresh.queries()
        fresh.answer(ipv4, a("db.example", "10.0.0.2"))
        fresh.answer(ipv6)
        self.assertFalse(resolution.failing)
        self.assertEqual(answers, [[Target("10.0.0.2", 5432)]])

    def test_cancelledQueryStillDrops(self) -> None:
        """
        A query whose lookup was cancelled (the lookup's deadline came
        first) still drops its connection when its own time is up without
        an answer.
        """
        resolver = self.resolver(("192.0.2.53", 53))
        asked = resolver.query(dns.Query("a.example", dns.A))
        server = Server(self.reactor, 0).accept()
        self.reactor.advance(1)
        asked.cancel()
        self.failureResultOf(asked, defer.CancelledError)
        self.assertFalse(server.transport.disconnecting)
        self.reactor.advance(4)
        self.assertTrue(server.transport.disconnecting)
        again = resolver.query(dns.Query("a.example", dns.A))
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertNoResult(again)
        Server(self.reactor, 1).refuse()
        self.failureResultOf(again)

    def test_unusedDropped(self) -> None:
        """
        L{ResolverCache} gives one resolver per setting; one that no backend
        uses after a reload is dropped, closing its connection; the
        system's stays.
        """
        cache = ResolverCache(self.reactor)
        chain = cache("192.0.2.53:53")
        self.assertIs(cache("192.0.2.53:53"), chain)
        system = cache("")
        [stream] = chain.resolvers
        asked = stream.query(dns.Query("db.example", dns.A))
        server = Server(self.reactor, 0).accept()
        cache.keepOnly(["192.0.2.99:53"])
        self.assertTrue(server.transport.disconnecting)
        server.protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(asked, ConnectionLost)
        self.assertIsNot(cache("192.0.2.53:53"), chain)
        self.assertIs(cache(""), system)

    def test_unexpectedMessages(self) -> None:
        """
        A server that sends an answer to no query, or bytes that are no
        DNS message, has its connection dropped (its queries fail at
        once) and is counted, once however many more the same read
        brought; the lines logged about such messages are bounded, however
        many come.
        """
        resolver = self.resolver(("192.0.2.53", 53))
        asked = resolver.query(dns.Query("db.example", dns.A))
        server = Server(self.reactor, 0).accept()
        stray = dns.Message(id=(server.queries()[0].id + 1) % 65536, answer=True)
        server.protocol.dataReceived(framed(stray) * 50)
        self.assertTrue(server.transport.disconnected or server.transport.disconnecting)
        self.assertEqual(resolver.badMessages, 1)
        server.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(whyFailed(self.failureResultOf(asked)),
                         "the DNS server closed the connection")
        for i in range(1, 100):
            more = resolver.query(dns.Query("db.example", dns.A))
            server = Server(self.reactor, i).accept()
            server.protocol.dataReceived(b"\x00\x03abc" if i % 2 else framed(stray))
            server.protocol.connectionLost(Failure(ConnectionDone()))
            self.failureResultOf(more, ConnectionLost)
        self.assertEqual(resolver.badMessages, 100)
        logged = self.events.containing("DNS server {server} sent")
        self.assertLessEqual(len(logged), 10)
        self.assertEqual(
            [e for e in self.events.events if "Unexpected message" in str(e.get("log_format"))
             or "Invalid packet" in str(e.get("log_format"))], [])


class ListeningTests(SynchronousTestCase):
    """
    L{Listening} tells whether an address reaches one of the process's
    listeners.
    """

    def test_covers(self) -> None:
        """
        A listener bound to an address covers that address and port; one
        bound to a wildcard address covers the port at any address of the
        host (loopback ones, and those bound by any listener); C{::} covers
        IPv4 ones too. Another port, or a host that is not this one, is
        not covered; a listener removed covers nothing.
        """
        listening = Listening()
        listening.add(IPv4Address("TCP", "127.0.0.1", 8000))
        listening.add(IPv4Address("TCP", "192.0.2.77", 9000))
        listening.add(IPv4Address("TCP", "0.0.0.0", 8001))
        listening.add(IPv6Address("TCP", "::", 8002))
        self.assertTrue(listening.covers("127.0.0.1", 8000))
        self.assertFalse(listening.covers("127.0.0.2", 8000))
        self.assertFalse(listening.covers("127.0.0.1", 8003))
        for address in ("127.0.0.1", "127.1.2.3", "192.0.2.77", "0.0.0.0"):
            self.assertTrue(listening.covers(address, 8001), address)
        for address in ("::1", "127.0.0.5", "::ffff:127.0.0.1"):
            self.assertTrue(listening.covers(address, 8002), address)
        self.assertFalse(listening.covers("192.0.2.1", 8001))
        self.assertFalse(listening.covers("::1", 8001))
        listening.remove(IPv4Address("TCP", "0.0.0.0", 8001))
        self.assertFalse(listening.covers("127.0.0.1", 8001))

    def test_localAddress(self) -> None:
        """
        L{isLocalAddress} is true of loopback and unspecified addresses,
        and false of a documentation address no host has.
        """
        self.assertTrue(isLocalAddress("127.0.0.9"))
        self.assertTrue(isLocalAddress("::1"))
        self.assertFalse(isLocalAddress("192.0.2.1"))


class HostsTests(SynchronousTestCase):
    """
    With no resolver configured, a name of C{/etc/hosts} is answered from
    it alone, as C{getaddrinfo} does.
    """

    def test_hostsNeedNoDNS(self) -> None:
        """
        A name that C{/etc/hosts} has with an IPv4 address only gives that
        address when DNS fails (its AAAA lookup does not reach DNS).
        """
        hostsFile = FilePath(self.mktemp())
        hostsFile.setContent(b"10.0.0.7 db.internal\n")
        failingDNS = FakeDNS()
        failingDNS.failing.add("db.internal")
        failingDNS.failing.add("other.example")

        class Queries:
            def query(self, query: dns.Query, timeout: Any = None) -> defer.Deferred[Any]:
                return failingDNS._lookup(query.name.name.decode(), query.type)

        chain = resolve.ResolverChain([HostsResolver(file=hostsFile.path.encode()), Queries()])
        targets, _ = self.successResultOf(lookupAddresses(chain, "db.internal", 5432))
        self.assertEqual(targets, [Target("10.0.0.7", 5432)])
        self.assertEqual(failingDNS.asked, [])
        self.failureResultOf(lookupAddresses(chain, "other.example", 1), defer.TimeoutError)


class WhyFailedTests(SynchronousTestCase):
    """
    L{whyFailed} says why a lookup failed in words.
    """

    def test_errorCodes(self) -> None:
        """
        NXDOMAIN alone is "no such name"; SERVFAIL, REFUSED, FORMERR and
        NOTIMP say what they are.
        """
        message = dns.Message()
        for error, words in ((DNSNameError(message), "no such name"),
                             (DomainError("x"), "no such name"),
                             (DNSServerError(message), "server failure (SERVFAIL)"),
                             (DNSQueryRefusedError(message), "refused (REFUSED)"),
                             (DNSFormatError(message), "format error (FORMERR)"),
                             (DNSNotImplementedError(message),
                              "not implemented by the server (NOTIMP)")):
            self.assertEqual(whyFailed(Failure(error)), words)


class ResolutionTests(SynchronousTestCase):
    """
    L{Resolution} looks up again at the TTL, within bounds, and keeps the
    last good answer when DNS fails.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.dns = FakeDNS()
        self.answers: list[list[Target]] = []
        self.events = Events(self)
        self.resolution = Resolution(
            self.clock, lambda: lookupAddresses(self.dns, "db", 1), self.answers.append,
            resolveMin=1.0, resolveMax=300.0, what="proxy p: backend db",
        )
        self.addCleanup(self.resolution.stop)

    def test_ttlClamped(self) -> None:
        """
        The next lookup comes at the TTL, but no sooner than resolve-min
        and no later than resolve-max.
        """
        for ttl, delay in ((30, 30.0), (0, 1.0), (86400, 300.0)):
            self.dns.set("db", "10.0.0.1", ttl=ttl)
            self.resolution.stop()
            self.resolution.start()
            self.assertEqual(self.resolution.nextAt, self.clock.seconds() + delay)
        asked = len(self.dns.asked)
        self.clock.advance(299.9)
        self.assertEqual(len(self.dns.asked), asked)
        self.clock.advance(0.1)
        self.assertEqual(len(self.dns.asked), asked + 2)

    def test_failureKeepsLastAndLogsOnce(self) -> None:
        """
        Failed and empty answers do not reach C{onAnswer}; the first is
        logged, the next are not, and the answer that comes again is
        logged once. Retries come after resolve-min, doubling.
        """
        self.dns.set("db", "10.0.0.1", ttl=5)
        self.resolution.start()
        self.assertEqual(self.answers, [[Target("10.0.0.1", 1)]])
        self.dns.failing.add("db")
        self.clock.advance(5)
        self.assertTrue(self.resolution.failing)
        self.assertEqual(self.resolution.nextAt, 6.0)
        self.clock.advance(1)
        self.assertEqual(self.resolution.nextAt, 8.0)
        self.dns.failing.clear()
        self.dns.set("db")  # an empty answer fails too
        self.clock.advance(2)
        self.assertEqual(self.resolution.lastError, "no addresses in the answer")
        self.assertEqual(len(self.answers), 1)
        self.assertEqual(
            [formatEvent(e) for e in self.events.containing("DNS lookup failed")],
            ["proxy p: backend db: DNS lookup failed (no answer (timeout)); keeping the "
             "last good addresses until it answers again"],
        )
        self.dns.set("db", "10.0.0.2", ttl=5)
        self.clock.advance(4)
        self.assertEqual(self.answers[-1], [Target("10.0.0.2", 1)])
        self.assertFalse(self.resolution.failing)
        self.assertEqual(len(self.events.containing("DNS answers again")), 1)
        self.assertEqual(self.resolution.failures, 3)

    def test_failureBeforeAnyAnswer(self) -> None:
        """
        A lookup that fails before any answer came (at start-up, or after a
        reload that changed the resolver) says there are no addresses
        until DNS answers, not that the last good ones are kept.
        """
        self.dns.failing.add("db")
        self.resolution.start()
        self.assertEqual(
            [formatEvent(e) for e in self.events.containing("DNS lookup failed")],
            ["proxy p: backend db: DNS lookup failed (no answer (timeout)); "
             "no addresses until it answers"],
        )
        self.assertEqual(self.answers, [])

    def test_deadline(self) -> None:
        """
        A lookup that does not end within the deadline (5 seconds) is
        cancelled and counts as a failure: the backend says it fails, and
        the next lookup comes after resolve-min.
        """
        self.dns.hold = True
        self.resolution.start()
        self.clock.advance(4.9)
        self.assertFalse(self.resolution.failing)
        self.clock.advance(0.1)
        self.assertTrue(self.resolution.failing)
        self.assertEqual(self.resolution.lastError, "no answer (timeout)")
        self.assertEqual((self.resolution.lookups, self.resolution.failures), (1, 1))
        self.assertEqual(self.resolution.nextAt, 6.0)
        self.assertTrue(all(d.called for d in self.dns.held))

    def test_reconfigureEarlier(self) -> None:
        """
        A resolve-max lowered on reload moves a lookup scheduled later than
        the new bound to it.
        """
        self.dns.set("db", "10.0.0.1", ttl=3600)
        self.resolution.start()
        self.assertEqual(self.resolution.nextAt, 300.0)
        self.clock.advance(10)
        self.resolution.configure(1.0, 30.0)
        self.assertEqual(self.resolution.nextAt, 40.0)
        asked = len(self.dns.asked)
        self.clock.advance(30)
        self.assertEqual(len(self.dns.asked), asked + 2)

    def test_stop(self) -> None:
        """
        Stopped, it schedules nothing, and a lookup in flight is ignored.
        """
        self.dns.hold = True
        self.resolution.start()
        self.assertEqual(len(self.dns.held), 2)
        self.resolution.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.resolution.nextAt)
        self.assertEqual(self.answers, [])


def template(name: str = "db.example", srv: bool = False, **kw: Any) -> BackendConfig:
    discovery = DiscoveryConfig(name=name, port=0 if srv else 5432, srv=srv)
    endpoint = f"srv:{name}" if srv else f"tcp:host={name}:port=5432"
    return BackendConfig(endpoint, kw.pop("label", "db"), discovery=discovery, **kw)


class Connection:
    """
    The connection a pick is for (an L{IConnectionInfo}).
    """

    def __init__(self, host: str = "192.0.2.1") -> None:
        self.peer = IPv4Address("TCP", host, 1234)
        self.local = IPv4Address("TCP", "127.0.0.1", 5432)
        self.serverName: Optional[str] = None
        self.hashKey = host


class FakeEndpoint:
    def connect(self, factory: Any) -> defer.Deferred[Any]:
        return defer.Deferred()


def makeBackend(config: BackendConfig) -> Backend:
    return Backend(config, FakeEndpoint())  # type: ignore[arg-type]


class DiscoveredPoolTests(SynchronousTestCase):
    """
    A pool whose backend config has its addresses from DNS has a backend
    per address, and follows DNS as it changes.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.dns = FakeDNS()
        self.events = Events(self)

    def pool(self, *configs: BackendConfig, balance: str = "fair") -> BackendPool:
        members = [DiscoveredBackends(c, self.dns, self.clock, makeBackend, "p")
                   for c in configs]
        pool = BackendPool(ProxyConfig("p", ("tcp:0",), configs, balance=balance),
                           members, balancerFactory(balance)(), self.clock)
        pool.startChecks()
        self.addCleanup(pool.stopChecks)
        return pool

    def labels(self, pool: BackendPool) -> list[str]:
        return [b.label for b in pool.backends]

    def test_addressesAreBackends(self) -> None:
        """
        Each address is a backend labelled C{LABEL/ADDRESS:PORT}, with an
        endpoint of its own, in canonical order; a new address takes
        sessions as soon as it is answered.
        """
        self.dns.set("db.example", "10.0.0.9", "10.0.0.10", "fd00::1", ttl=10)
        pool = self.pool(template())
        self.assertEqual(self.labels(pool), ["db/10.0.0.9:5432", "db/10.0.0.10:5432",
                                             "db/[fd00::1]:5432"])
        self.assertEqual(pool.backends[2].key, "tcp:host=fd00\\:\\:1:port=5432")
        self.dns.set("db.example", "10.0.0.9", "10.0.0.10", "fd00::1", "10.0.0.1", ttl=10)
        self.clock.advance(10)
        self.assertEqual(pool.backends[0].label, "db/10.0.0.1:5432")
        # fair: the new one has fewest sessions, and comes first.
        for b in pool.backends[1:]:
            b.active = 1
        self.assertIs(pool.pick(Connection()), pool.backends[0])
        self.assertEqual(len(self.events.containing("DNS gives")), 2)

    def test_changeLinesBounded(self) -> None:
        """
        A change line names at most 8 backends, then how many more; and an
        answer that flaps at every lookup logs at most 10 change lines a
        minute, then one line saying how many were left out.
        """
        many = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(300)]
        self.dns.set("db.example", *many, ttl=1)
        self.pool(template())
        [line] = self.events.containing("DNS gives")
        self.assertIn("and 292 more", line["added"])
        self.assertEqual(line["added"].count(","), 7)
        for i in range(30):
            self.dns.set("db.example", "10.1.0.1" if i % 2 else "10.1.0.2", ttl=1)
            self.clock.advance(1)
        self.assertEqual(len(self.events.containing("DNS gives")), 10)
        self.clock.advance(60)
        self.assertEqual(len(self.events.containing("more {what} not logged")), 1)

    def test_removalDrains(self) -> None:
        """
        An address DNS gives no more takes no new session but keeps those
        it has, shown as draining; it leaves the pool with its last one.
        One that has none leaves at once.
        """
        self.dns.set("db.example", "10.0.0.1", "10.0.0.2", ttl=10)
        pool = self.pool(template())
        first, second = pool.backends
        first.active = 1
        self.dns.set("db.example", "10.0.0.3", ttl=10)
        self.clock.advance(10)
        self.assertEqual(self.labels(pool), ["db/10.0.0.3:5432", "db/10.0.0.1:5432"])
        self.assertEqual(first.stateAt(self.clock.seconds()), DRAINING)
        self.assertTrue(second.gone)
        for _ in range(5):
            chosen = pool.pick(Connection())
            self.assertEqual(chosen.label, "db/10.0.0.3:5432")
            pool.released(chosen)
        pool.released(first)
        self.assertEqual(self.labels(pool), ["db/10.0.0.3:5432"])
        self.assertEqual(len(self.events.containing("drained: its last session ended")), 1)

    def test_returnsWhileDraining(self) -> None:
        """
        An address that comes back while its backend drains is that
        backend again, taking sessions, its counters kept.
        """
        self.dns.set("db.example", "10.0.0.1", ttl=10)
        pool = self.pool(template())
        backend = pool.backends[0]
        backend.active, backend.connected = 1, 7
        self.dns.set("db.example", "10.0.0.2", ttl=10)
        self.clock.advance(10)
        self.dns.set("db.example", "10.0.0.1", ttl=10)
        self.clock.advance(10)
        self.assertEqual(pool.backends, [backend])
        self.assertEqual(backend.stateAt(self.clock.seconds()), UP)
        self.assertEqual(backend.connected, 7)

    def test_beforeFirstAnswer(self) -> None:
        """
        Until DNS answers, the proxy has no backend: a client is refused as
        when all backends are down (not for want of a route), logged once.
        """
        self.dns.failing.add("db.example")
        pool = self.pool(template())
        self.assertIsNone(pool.pick(Connection()))
        self.assertIsNone(pool.pick(Connection()))
        self.assertEqual(pool.whyRefused(Connection()), "all backends down")
        self.assertEqual(len(self.events.containing("all backends down")), 1)
        self.assertEqual(self.events.containing("no route"), [])

    def test_failureKeepsSet(self) -> None:
        """
        While DNS fails (or answers nothing) the backends stay as they
        were, and sessions go to them.
        """
        self.dns.set("db.example", "10.0.0.1", ttl=10)
        pool = self.pool(template())
        self.dns.failing.add("db.example")
        self.clock.advance(10)
        self.clock.advance(30)
        self.assertEqual(self.labels(pool), ["db/10.0.0.1:5432"])
        self.assertIsNotNone(pool.pick(Connection()))
        self.assertEqual(len(self.events.containing("DNS lookup failed")), 1)

    def test_srvPriorityAndWeight(self) -> None:
        """
        SRV records give each backend its weight (0 counts as 1); sessions
        go to the lowest priority whose backends can take them, and to a
        higher one only when none of those can.
        """
        name = "_pg._tcp.example"
        self.dns.records[(name, dns.SRV)] = [
            srv(name, "a.example", 1, priority=10, weight=3),
            srv(name, "b.example", 2, priority=20, weight=0),
        ]
        self.dns.set("a.example", "10.0.0.1")
        self.dns.set("b.example", "10.0.0.2")
        pool = self.pool(template(name, srv=True, label="pg"))
        primary, backup = pool.backends
        self.assertEqual((primary.label, primary.weight, primary.priority),
                         ("pg/10.0.0.1:1", 3, 10))
        self.assertEqual((backup.weight, backup.priority), (1, 20))
        primary.active = 100
        self.assertIs(pool.pick(Connection()), primary)
        primary.disabledUntil = self.clock.seconds() + 5
        self.assertIs(pool.pick(Connection()), backup)

    def test_healthChecks(self) -> None:
        """
        Discovered backends get the health check of their config; one DNS
        gives no more stops checking.
        """
        self.dns.set("db.example", "10.0.0.1", "10.0.0.2", ttl=10)
        pool = self.pool(template(check=CheckConfig("connect")))
        first, second = pool.backends
        self.assertTrue(first.health.running)
        check = second.health
        second.active = 1
        self.dns.set("db.example", "10.0.0.1", ttl=10)
        self.clock.advance(10)
        self.assertIsNone(second.health)
        self.assertFalse(check.running)
        self.assertTrue(first.health.running)

    def test_stickyDeterministic(self) -> None:
        """
        The sticky and hash balancers place a client on the same backend
        whatever order DNS gives the same addresses in.
        """
        addresses = [f"10.0.0.{n}" for n in range(1, 9)]
        for balance in ("sticky", "hash"):
            chosen = set()
            for seed in range(4):
                shuffled = list(addresses)
                random.Random(seed).shuffle(shuffled)
                self.dns.set("db.example", *shuffled)
                pool = self.pool(template(), balance=balance)
                backend = pool.pick(Connection("198.51.100.7"))
                chosen.add(backend.label)
                pool.stopChecks()
            self.assertEqual(len(chosen), 1, balance)

    def test_statusShowsDiscovered(self) -> None:
        """
        status.json lists discovered backends, a draining one as draining.
        """
        self.dns.set("db.example", "10.0.0.1", "10.0.0.2", ttl=10)
        pool = self.pool(template())
        pool.backends[1].active = 1
        self.dns.set("db.example", "10.0.0.1", ttl=10)
        self.clock.advance(10)
        view = StatusView(clock=self.clock)
        view.pools = {"p": pool}
        shown = statusDocument(view)["proxies"][0]["backends"]
        self.assertEqual([(b["label"], b["state"]) for b in shown],
                         [("db/10.0.0.1:5432", "up"), ("db/10.0.0.2:5432", "draining")])
        self.dns.failing.add("db.example")
        self.clock.advance(10)
        [dnsStatus] = statusDocument(view)["proxies"][0]["dns"]
        self.assertEqual(dnsStatus, {
            "label": "db", "name": "db.example", "record": "A/AAAA", "port": 5432,
            "resolver": "system", "addresses": 1, "draining": 1, "failing": True,
            "last_error": "no answer (timeout)", "lookups": 3, "failures": 1,
            "next_lookup_in": 1.0,
        })


class DiscoveredSessionTests(SynchronousTestCase):
    """
    Sessions of a backend DNS gives no more.
    """

    def test_clientLeavesWhileConnecting(self) -> None:
        """
        A gone backend whose only session's client leaves while it connects
        leaves the pool then (the cancelled connect was its last session).
        """
        clock = Clock()
        resolver = FakeDNS()
        # Shorter than the connect timeout (8 s).
        resolver.set("db.example", "10.0.0.1", ttl=5)
        endpoints: dict[str, fakes.FakeEndpoint] = {}

        def makeFakeBackend(config: BackendConfig) -> Backend:
            endpoints[config.label] = fakes.FakeEndpoint()
            return Backend(config, endpoints[config.label])

        member = DiscoveredBackends(template(), resolver, clock, makeFakeBackend, "p")
        pool = BackendPool(ProxyConfig("p", ("tcp:8080",), ()), [member], FairBalancer(), clock)
        pool.startChecks()
        self.addCleanup(pool.stopChecks)
        factory = ProxyFactory(pool, clock, 0, listen="tcp:8080")
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 40000))
        protocol.makeConnection(fakes.HalfCloseTransport())
        [backend] = pool.backends
        self.assertEqual(backend.active, 1)
        resolver.set("db.example", "10.0.0.2", ttl=5)
        clock.advance(5)
        self.assertEqual([b.label for b in pool.backends],
                         ["db/10.0.0.2:5432", "db/10.0.0.1:5432"])
        protocol.connectionLost(fakes.lost())
        self.assertEqual(backend.active, 0)
        self.assertEqual([b.label for b in pool.backends], ["db/10.0.0.2:5432"])


class DiscoveredConfigTests(SynchronousTestCase):
    """
    L{discoveredConfig} makes the config of one address.
    """

    def test_settingsKept(self) -> None:
        """
        The address's backend has its template's settings, a C{tcp:}
        endpoint, and (A records) the template's weight.
        """
        base = template(weight=4, connectTimeout=2.0)
        config = discoveredConfig(base, Target("10.0.0.1", 5432))
        self.assertEqual(config, replace(base, endpoint="tcp:host=10.0.0.1:port=5432",
                                         label="db/10.0.0.1:5432", discovery=None))


class DiscoveredServiceTests(SynchronousTestCase):
    """
    L{ProxyService} builds discovered backends, starts their lookups when
    it starts, and keeps them across a reload that keeps their config.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.dns = FakeDNS()
        self.dns.set("db.example", "10.0.0.1", "10.0.0.2", ttl=10)
        self.configs: dict[str, Config] = {}
        self.servers: list[str] = []

    def resolverFor(self, server: str) -> FakeDNS:
        self.servers.append(server)
        return self.dns

    def config(self, *backends: BackendConfig) -> Config:
        return Config(proxies=(ProxyConfig("p", ("tcp:5432",), backends),))

    def service(self, config: Config) -> ProxyService:
        service = ProxyService(config, self.reactor, configPath="c.toml",
                               loader=self.configs.__getitem__, resolverFor=self.resolverFor)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_ownListenerLeftOut(self) -> None:
        """
        An address DNS gives that is one of the proxy's own listeners (here
        a wildcard bind of port 5432, reached through 127.0.0.1) is left
        out, with one log line however often it comes; a listener that
        stops is forgotten.
        """
        events = Events(self)
        self.dns.set("db.example", "127.0.0.1", "10.0.0.1", ttl=10)
        service = self.service(self.config(template()))
        pool = service.pools["p"]
        self.assertEqual([b.label for b in pool.backends], ["db/10.0.0.1:5432"])
        self.reactor.advance(10)
        self.assertEqual([b.label for b in pool.backends], ["db/10.0.0.1:5432"])
        self.assertEqual(len(events.containing("a listener of this proxy")), 1)
        self.assertTrue(LISTENING.covers("127.0.0.1", 5432))
        service.stopService()
        self.assertFalse(LISTENING.covers("127.0.0.1", 5432))

    def test_lookupsStartWithService(self) -> None:
        """
        Nothing is looked up before the service starts; then every address
        is a backend of the pool.
        """
        service = ProxyService(self.config(template()), self.reactor,
                               resolverFor=self.resolverFor)
        self.assertEqual(self.dns.asked, [])
        self.assertEqual(service.pools["p"].backends, [])
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([b.label for b in service.pools["p"].backends],
                         ["db/10.0.0.1:5432", "db/10.0.0.2:5432"])

    def test_reloadKeeps(self) -> None:
        """
        A reload that keeps the backend config (other settings may change)
        keeps its backends, counters and all, without a new lookup; one
        that changes its resolver starts again.
        """
        service = self.service(self.config(template()))
        before = list(service.pools["p"].backends)
        before[0].connected = 3
        asked = len(self.dns.asked)
        self.configs["c.toml"] = self.config(template(connectTimeout=2.0))
        self.assertTrue(self.successResultOf(service.reload()))
        after = service.pools["p"].backends
        self.assertEqual(after, before)
        self.assertEqual(after[0].connected, 3)
        self.assertEqual(after[0].config.connectTimeout, 2.0)
        self.assertEqual(len(self.dns.asked), asked)
        moved = replace(template(), discovery=replace(template().discovery,
                                                      resolver="127.0.0.1:5353"))
        self.configs["c.toml"] = self.config(moved)
        self.assertTrue(self.successResultOf(service.reload()))
        self.assertNotEqual(service.pools["p"].backends[0], before[0])
        self.assertEqual(self.servers[-1], "127.0.0.1:5353")

    def test_reloadDropsResolvers(self) -> None:
        """
        A reload after which no backend uses a resolver setting drops its
        resolver from the service's L{ResolverCache}.
        """
        dns = self.dns

        class Cache(ResolverCache):
            def __call__(self, server: str) -> Any:
                self.made.setdefault(server, dns)
                return dns

        self.resolverFor = Cache(self.reactor)  # type: ignore[assignment]
        moved = replace(template(), discovery=replace(template().discovery,
                                                      resolver="127.0.0.1:5353"))
        service = self.service(self.config(moved))
        self.assertEqual(list(self.resolverFor.made), ["127.0.0.1:5353"])  # type: ignore[attr-defined]
        self.configs["c.toml"] = self.config(template())
        self.assertTrue(self.successResultOf(service.reload()))
        self.assertEqual(list(self.resolverFor.made), [""])  # type: ignore[attr-defined]

    def test_stopStopsLookups(self) -> None:
        """
        A stopped service schedules no lookup.
        """
        service = self.service(self.config(template()))
        member = service.pools["p"].discovered[0]
        self.assertIsNotNone(member.resolution.nextAt)
        service.stopService()
        self.assertFalse(member.resolution.running)
        self.assertIsNone(member.resolution.nextAt)


class PoolFairTests(SynchronousTestCase):
    """
    A pool mixing backends of its own and discovered ones.
    """

    def test_mixed(self) -> None:
        """
        The group's backends are its own and the discovered ones, in config
        order.
        """
        clock = Clock()
        resolver = FakeDNS()
        resolver.set("db.example", "10.0.0.1")
        own = makeBackend(BackendConfig("tcp:host=10.9.9.9:port=1", "own"))
        member = DiscoveredBackends(template(), resolver, clock, makeBackend, "p")
        pool = BackendPool(ProxyConfig("p", ("tcp:0",), ()), [own, member], FairBalancer(),
                           clock)
        pool.startChecks()
        self.addCleanup(pool.stopChecks)
        self.assertEqual([b.label for b in pool.backends], ["own", "db/10.0.0.1:5432"])
