"""
Backends from DNS: looking a name's addresses up through C{twisted.names}
(A and AAAA records of a host name, or the targets of SRV records), and
doing it again and again, at the answer's TTL kept within bounds.

A lookup never blocks the reactor: C{twisted.names} asks the servers
itself. It asks them over TCP, on one connection kept open per server:
its UDP client opens (and logs the opening and closing of) a socket per
query, four log lines a lookup, and an answer with many addresses (a
Kubernetes service of 40 pods) does not fit in the 512 bytes of a UDP
answer anyway. What the addresses become (backends that take sessions, and
backends that drain) is the pool's business (see L{txsockproxy.backends});
this module only says which addresses DNS gives, and when that fails.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any, Callable, NamedTuple, Optional, Sequence

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectError, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.names import client, common, dns, hosts, resolve
from twisted.names.error import (
    DNSFormatError,
    DNSNameError,
    DNSNotImplementedError,
    DNSQueryRefusedError,
    DNSQueryTimeoutError,
    DNSServerError,
    DNSUnknownError,
    DomainError,
)
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from txsockproxy.config import DiscoveryConfig
from txsockproxy.ratelimit import RateLimitedLog

# The port of a DNS server when a resolver key names none.
DNS_PORT = 53
# Seconds a whole lookup may take (every query and connect of it, SRV
# targets included).
QUERY_TIMEOUT = 5
# Where the system keeps its resolvers and its host names.
RESOLV_CONF = "/etc/resolv.conf"
HOSTS = "/etc/hosts"


class Target(NamedTuple):
    """
    One address DNS gives for a backend: a backend of its own.

    @ivar address: an IPv4 or IPv6 address.
    @ivar port: the port to connect to.
    @ivar priority: the SRV priority (lower is preferred); 0 for A/AAAA.
    @ivar weight: the SRV weight; 0 for A/AAAA (the config's is used).
    """

    address: str
    port: int
    priority: int = 0
    weight: int = 0


def canonical(targets: Sequence[Target]) -> list[Target]:
    """
    C{targets} without repeats, in one order whatever order DNS gave them
    in (DNS servers rotate their answers): by priority, then address
    (IPv4 before IPv6, numerically), then port. Balancers that break ties
    by order (C{fair}, C{round-robin}) then do the same after every lookup.
    """
    seen: dict[tuple[str, int], Target] = {}
    for target in targets:
        key = (target.address, target.port)
        # One address reached through two SRV records: the preferred one.
        if key not in seen or target.priority < seen[key].priority:
            seen[key] = target
    return sorted(
        seen.values(),
        key=lambda t: (t.priority, _addressKey(t.address), t.port),
    )


def _addressKey(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return (ip.version, int(ip))


def parseServer(text: str) -> tuple[str, int]:
    """
    The address and port of a DNS server as the C{resolver} key writes it:
    C{"10.0.0.53"}, C{"10.0.0.53:5353"}, C{"fd00::53"}, C{"[::1]:5353"}. An
    IPv6 address with a port is written in brackets; one without brackets
    whose last group could be read as a port (C{"::1:53"}) is refused as
    ambiguous.

    C{twisted.names} takes a server as an IP address and a port, not as an
    endpoint string: there is no endpoint type for DNS to parse it with.

    @raise ValueError: it is not an IP address with an optional port.
    """
    text = text.strip()
    host, port = text, DNS_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':PORT' after ']'")
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, portText = text.partition(":")
        port = _port(text, portText)
    elif ":" in text:
        # An IPv6 address: one whose last group could be a port is
        # ambiguous ("::1:53" is an address, and ::1 port 53 too).
        before, _, last = text.rpartition(":")
        if last.isascii() and last.isdigit() and _isIPv6(before):
            raise ValueError(
                f"{text!r} is ambiguous: write an IPv6 address with a port in brackets, "
                f"\"[{before}]:{last}\", or \"[{text}]\" for the address alone"
            )
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address (with an optional port, e.g. "
            "\"10.0.0.53:53\" or \"[fd00::53]:53\")"
        ) from None
    return str(address), port


def _isIPv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def _port(text: str, portText: str) -> int:
    if not (portText.isascii() and portText.isdigit()) or not 1 <= int(portText) <= 65535:
        raise ValueError(f"{text!r}: the port must be 1 to 65535, not {portText!r}")
    return int(portText)


class _Connection(dns.DNSProtocol):
    """
    One TCP connection to a DNS server, on which queries are sent without
    waiting for the answers of those before (RFC 7766 pipelining: each
    has its own id). A message that is unreadable or answers no query in
    flight is not logged (a hostile server sends them by the thousand): the
    controller is told, and drops the connection.
    """

    controller: StreamResolver
    # Set at the first bad message: what the same read brought after it
    # is not looked at (nor counted, nor logged).
    dropped = False
    # What has come of the message being received (its 2-byte length
    # first). The framing and the dispatch are done here, not by
    # DNSProtocol: Twisted 26.4 frames in dataReceived (and lets a bad
    # message raise there), 26.10 in an Int16StringReceiver.
    _framed = b""

    def dataReceived(self, data: bytes) -> None:
        framed = self._framed + data
        while len(framed) >= 2 and not self.dropped:
            (length,) = struct.unpack("!H", framed[:2])
            if len(framed) < 2 + length:
                break
            self.messageReceived(framed[2:2 + length])
            framed = framed[2 + length:]
        self._framed = b"" if self.dropped else framed

    def query(self, queries: list[dns.Query], timeout: float = QUERY_TIMEOUT) -> Any:
        """
        Send C{queries}, in a message of their own.

        @return: a Deferred of the answer, failing with
            L{twisted.names.error.DNSQueryTimeoutError} when none comes
            within C{timeout} seconds. A query not answered in time drops
            the connection, whether it is still waited for or not (a
            cancelled lookup leaves its timer running): a server that
            stalls, or that declared a message longer than what it sent (the
            bytes that follow would all be read as part of it), must not keep
            the connection every later query would wait on.
        """
        id = self.pickID()
        message = dns.Message(id, recDes=1)
        message.queries = queries
        try:
            self.writeMessage(message)
        except BaseException:
            return defer.fail()
        result: defer.Deferred[dns.Message] = defer.Deferred()
        timer = self.callLater(timeout, self._timedOut, result, id)
        self.liveMessages[id] = (result, timer)
        return result

    def _timedOut(self, result: defer.Deferred[dns.Message], id: int) -> None:
        self.liveMessages.pop(id, None)
        # Forgotten first: a query asked again at once connects afresh.
        self.controller.dropConnection(self)
        if not result.called:
            result.errback(DNSQueryTimeoutError(id))

    def messageReceived(self, data: bytes) -> None:
        """
        One whole DNS message from the server: the answer to a query in
        flight, else a bad message (the connection is dropped).
        """
        message = dns.Message()
        try:
            message.fromStr(data)
        except (EOFError, ValueError) as e:
            self.controller.badMessage(self, f"an unreadable message ({e or 'truncated'})")
            return
        answered = self.liveMessages.pop(message.id, None)
        if answered is None:
            self.controller.badMessage(self, f"an answer to no query (id {message.id})")
            return
        d, timeout = answered
        if timeout.active():
            timeout.cancel()
        d.callback(message)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Twisted leaves the queries of a lost connection to their
        # timeouts: they fail now, so that the next server is tried.
        # The controller forgets it first: a query asked again at once
        # must not come back to it.
        super().connectionLost(reason)
        live, self.liveMessages = self.liveMessages or {}, {}
        for d, timeout in live.values():
            if timeout.active():
                timeout.cancel()
            d.errback(ConnectionLost())


class _ConnectionFactory(protocol.Factory):
    noisy = False

    def __init__(self, controller: StreamResolver) -> None:
        self.controller = controller

    def buildProtocol(self, addr: Any) -> _Connection:
        return _Connection(self.controller, self.controller.reactor)


class StreamResolver:
    """
    Answers queries (the C{query} of
    L{twisted.internet.interfaces.IResolver}) by asking DNS servers over
    TCP, on one connection kept open per server, on which queries of every
    backend go at once (pipelined): a slow answer holds up no other.

    A query tries the servers in turn (the next after a refusal, a server
    failure, a lost connection or its share of the time), all within
    C{timeout} seconds, connecting included. A kept connection lost as a
    query goes (servers close idle ones) is made again, once, for it. One
    on which a query is not answered in time is dropped (see
    L{_Connection.query}): the next query connects afresh.

    @ivar badMessages: connections dropped for an unreadable or unexpected
        message, ever.
    @ivar timedOut: connections dropped for a query not answered in time
        (see L{_Connection.query}), ever.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        servers: Callable[[], Sequence[tuple[str, int]]],
        timeout: float = QUERY_TIMEOUT,
    ) -> None:
        """
        @param servers: gives the servers' addresses and ports, in the
            order they are tried (read at each query: resolv.conf changes).
        """
        self.reactor = reactor
        self.servers = servers
        self.timeout = timeout
        self.badMessages = 0
        self.timedOut = 0
        self._connections: dict[tuple[str, int], _Connection] = {}
        self._connecting: dict[tuple[str, int], list[defer.Deferred[_Connection]]] = {}
        self._factory = _ConnectionFactory(self)
        self._errors = common.ResolverBase()
        self._badLog = RateLimitedLog(reactor, self.log, "bad messages from DNS servers")

    # The controller's side of each _Connection.

    def connectionMade(self, connection: _Connection) -> None:
        pass

    def connectionLost(self, connection: _Connection) -> None:
        for server, known in list(self._connections.items()):
            if known is connection:
                del self._connections[server]

    def messageReceived(self, message: dns.Message, connection: _Connection) -> None:
        self.badMessage(connection, f"an answer to no query (id {message.id})")

    def badMessage(self, connection: _Connection, what: str) -> None:
        """
        C{connection}'s server sent C{what}: drop the connection (its queries
        fail, and are asked again of the next server or at the next lookup).
        """
        if connection.dropped:
            return
        self.badMessages += 1
        transport: Any = connection.transport
        peer: Any = transport.getPeer() if transport is not None else None
        self._badLog.emit(
            LogLevel.warn,
            "DNS server {server} sent {what}: dropping its connection",
            server=f"{peer.host}:{peer.port}" if peer is not None else "?", what=what,
        )
        self._drop(connection)

    def dropConnection(self, connection: _Connection) -> None:
        """
        A query on C{connection} was not answered in time: abort it (its
        other queries fail, and are asked again), so that the next query
        connects afresh. The lookup's failure is what is logged.
        """
        if connection.dropped:
            return
        self.timedOut += 1
        self._drop(connection)

    def _drop(self, connection: _Connection) -> None:
        connection.dropped = True
        self.connectionLost(connection)
        transport: Any = connection.transport
        if transport is not None:
            transport.abortConnection()

    def close(self) -> None:
        """
        Close its connections (no backend uses it any more).
        """
        connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            if connection.transport is not None:
                connection.transport.loseConnection()

    # Queries.

    def _connect(self, server: tuple[str, int], timeout: float) -> defer.Deferred[_Connection]:
        known = self._connections.get(server)
        if known is not None:
            return defer.succeed(known)
        waiting: defer.Deferred[_Connection] = defer.Deferred(
            lambda d: self._connecting.get(server, []).remove(d)
            if d in self._connecting.get(server, []) else None)
        if server in self._connecting:
            self._connecting[server].append(waiting)
            return waiting
        self._connecting[server] = [waiting]
        host, port = server
        endpoint: Any
        if ":" in host:
            endpoint = TCP6ClientEndpoint(self.reactor, host, port, timeout=timeout)
        else:
            endpoint = TCP4ClientEndpoint(self.reactor, host, port, timeout=timeout)

        def connected(connection: _Connection) -> None:
            self._connections[server] = connection
            for d in self._connecting.pop(server, []):
                d.callback(connection)

        def failed(reason: Failure) -> None:
            for d in self._connecting.pop(server, []):
                d.errback(reason)

        endpoint.connect(self._factory).addCallbacks(connected, failed)
        return waiting

    def query(self, query: dns.Query, timeout: Any = None) -> defer.Deferred[Any]:
        """
        Ask for C{query}.

        @return: a Deferred of the answer's sections (answers, authority,
            additional), or failing as C{twisted.names} does: an unknown
            name with L{twisted.names.error.DNSNameError}, a server
            failure with L{twisted.names.error.DNSServerError}, no answer
            in time with L{twisted.internet.defer.TimeoutError}, and so on.
            Cancelling it stops it.
        """
        return defer.ensureDeferred(self._ask(query))

    async def _ask(self, query: dns.Query) -> Any:
        deadline = self.reactor.seconds() + self.timeout
        servers = list(self.servers())
        last: Failure = Failure(defer.TimeoutError(f"no DNS server answered for {query.name}"))
        i = 0
        retried = False
        while i < len(servers):
            server = servers[i]
            left = deadline - self.reactor.seconds()
            if left <= 0:
                break
            # Each server left has its share of the time left.
            share = left / (len(servers) - i)
            reused = server in self._connections
            try:
                connection = await self._connect(server, share)
                answer = await connection.query([query], share)
            except defer.CancelledError:
                raise
            except ConnectionLost:
                last = Failure()
                if reused and not retried:
                    # A kept connection the server closed (idle) as the
                    # query went: the same server again, on a new one.
                    retried = True
                    continue
                i += 1
                continue
            except Exception:
                last = Failure()
                i += 1
                continue
            i += 1
            if answer.rCode in (dns.ESERVER, dns.EREFUSED, dns.EFORMAT, dns.ENOTIMP) and (
                    i < len(servers)):
                last = Failure(self._errors.exceptionForCode(answer.rCode)(answer))
                continue
            if answer.rCode != dns.OK:
                raise self._errors.exceptionForCode(answer.rCode)(answer)
            return (answer.answers, answer.authority, answer.additional)
        last.raiseException()


class HostsResolver(hosts.Resolver):
    """
    The names of a hosts file, answered as C{getaddrinfo} does: a name the
    file has is answered from the file alone, in both families (the family
    it has no address of gets an empty answer, not a referral to DNS, so
    that a name of C{/etc/hosts} needs no DNS server); a name it does not
    have fails with L{DomainError}, for the next resolver of the chain.
    """

    def lookupAddress(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._authoritative(super().lookupAddress(name, timeout), name)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._authoritative(super().lookupIPV6Address(name, timeout), name)

    def _authoritative(self, d: defer.Deferred[Any], name: str) -> defer.Deferred[Any]:
        def missing(reason: Failure) -> Any:
            reason.trap(DomainError)
            raw = name.encode("idna") if isinstance(name, str) else name
            if hosts.searchFileForAll(FilePath(self.file), raw):
                return ([], [], [])
            return reason

        return d.addErrback(missing)


def makeResolver(reactor: Any, server: str = "") -> resolve.ResolverChain:
    """
    The L{twisted.internet.interfaces.IResolver} a backend's lookups go
    through: the configured C{server} (C{"ADDRESS[:PORT]"}), or, for C{""},
    the system's: C{/etc/hosts} (see L{HostsResolver}), then the servers of
    C{/etc/resolv.conf} in turn (read again when it changes, as
    C{twisted.names} does; its C{search} and C{ndots} are not used: names
    are looked up as written). Servers are asked over TCP (see
    L{StreamResolver}).
    """
    if server:
        address = parseServer(server)
        return resolve.ResolverChain([StreamResolver(reactor, lambda: [address])])
    system = client.Resolver(resolv=RESOLV_CONF, reactor=reactor)
    return resolve.ResolverChain([
        HostsResolver(file=HOSTS.encode()),
        StreamResolver(reactor, lambda: list(system.servers) + list(system.dynServers)),
    ])


class EmptyAnswer(Exception):
    """
    DNS answered, with no usable address; C{str()} says why, when more is
    known.
    """


# The most CNAMEs followed from the name asked, within one answer (a
# hostile answer may loop).
_CNAME_CHAIN = 8


def _nameKey(name: Any) -> bytes:
    raw = name.name if isinstance(name, dns.Name) else dns.Name(name).name
    return raw.lower().rstrip(b".")


def _records(result: Any, kind: int, name: Any) -> tuple[list[dns.RRHeader], list[bytes]]:
    """
    The records of type C{kind} in the answer section of C{result} whose
    owner is C{name}, or a name it is a CNAME of in the same answer; and
    the owners of those of that type left out (records of other names a
    server put in its answer are not the name's addresses).
    """
    answers, authority, additional = result
    wanted = {_nameKey(name)}
    for _ in range(_CNAME_CHAIN):
        more = {_nameKey(r.payload.name) for r in answers
                if r.type == dns.CNAME and _nameKey(r.name) in wanted} - wanted
        if not more:
            break
        wanted |= more
    kept, others = [], []
    for r in answers:
        if r.type == kind:
            if _nameKey(r.name) in wanted:
                kept.append(r)
            else:
                others.append(r.name.name)
    return kept, others


def _otherNames(asked: Any, others: Sequence[bytes]) -> EmptyAnswer:
    """
    The failure of an answer whose records are all of names other than
    C{asked}.
    """
    other = others[0].decode("ascii", "replace")[:64]
    return EmptyAnswer(f"its records are for other names, e.g. {other!r}, "
                       f"not {str(asked)[:64]!r}")


def _addressesOf(records: Sequence[dns.RRHeader], port: int) -> list[Target]:
    targets = []
    for r in records:
        payload: Any = r.payload
        if r.type == dns.A:
            targets.append(Target(payload.dottedQuad(), port))
        elif r.type == dns.AAAA:
            targets.append(Target(socket.inet_ntop(socket.AF_INET6, payload.address), port))
    return targets


def _ttl(records: Sequence[dns.RRHeader]) -> Optional[float]:
    return min((float(r.ttl) for r in records), default=None)


def _noSuchName(failure: Failure) -> bool:
    """
    Whether C{failure} says that a name does not exist (DNS's NXDOMAIN, or
    C{/etc/hosts} not knowing it), rather than that the lookup went wrong
    (a timeout, a server failure, an unreachable server).
    """
    return failure.check(DNSNameError) is not None or type(failure.value) is DomainError


def lookupAddresses(
    resolver: Any, name: str, port: int
) -> defer.Deferred[tuple[list[Target], Optional[float]]]:
    """
    Ask C{resolver} for the A and AAAA records of C{name} (at once).

    @return: a Deferred of the addresses (each with C{port}) and the
        shortest TTL of their records (L{None} when there are none). It
        fails when both lookups fail, or when one goes wrong (a timeout, a
        server failure): the addresses of the other alone would make those
        of the first drain. One that finds no such name leaves the other's.
        A name of C{/etc/hosts} never gets a DNS answer here: the system
        resolver answers it from the file alone, in both families (see
        L{HostsResolver}). Only records of C{name} (or of a name it is a
        CNAME of, in the same answer) count: an answer with records of
        other names alone fails with L{EmptyAnswer}.
    """
    lookups = [resolver.lookupAddress(name), resolver.lookupIPV6Address(name)]

    def combine(
        results: list[tuple[bool, Any]],
    ) -> tuple[list[Target], Optional[float]] | Failure:
        good = [value for ok, value in results if ok]
        failures = [value for ok, value in results if not ok]
        wrong = [f for f in failures if not _noSuchName(f)]
        if wrong or not good:
            return (wrong or failures)[0]
        records: list[dns.RRHeader] = []
        others: list[bytes] = []
        for result in good:
            for kind in (dns.A, dns.AAAA):
                kept, left = _records(result, kind, name)
                records += kept
                others += left
        if not records and others:
            return Failure(_otherNames(name, others))
        return _addressesOf(records, port), _ttl(records)

    return defer.DeferredList(lookups, consumeErrors=True).addCallback(combine)


def lookupService(
    resolver: Any, name: str
) -> defer.Deferred[tuple[list[Target], Optional[float]]]:
    """
    Ask C{resolver} for the SRV records of C{name}, and for the addresses of
    their targets (from the answer's additional section when it gives them,
    as Consul does, else by A and AAAA lookups, all at once). A target that
    does not exist is left out, and so is one with port 0 (logged once); one
    whose lookup goes wrong fails the whole. SRV records of another name
    than C{name} are left out (with nothing else, it fails with
    L{EmptyAnswer}).

    @return: a Deferred of the targets' addresses, each with its record's
        port, priority and weight, and the shortest TTL of the records used.
    """

    def gotService(result: Any) -> defer.Deferred[tuple[list[Target], Optional[float]]]:
        srv, others = _records(result, dns.SRV, name)
        if not srv and others:
            return defer.fail(_otherNames(name, others))
        additional = result[2]
        ttls = [_ttl(srv)]
        lookups = []
        for record in srv:
            payload: Any = record.payload
            target = payload.target.name.decode("ascii", "replace")
            if target in ("", "."):
                # "Decidedly not available at this domain" (RFC 2782).
                continue
            if payload.port == 0:
                # Nothing listens on port 0: a backend of it never connects.
                _portZero(name, target)
                continue
            known = [r for r in additional if r.type in (dns.A, dns.AAAA)
                     and r.name.name.lower() == payload.target.name.lower()]
            found: defer.Deferred[tuple[list[Target], Optional[float]]]
            if known:
                found = defer.succeed((_addressesOf(known, payload.port), _ttl(known)))
            else:
                found = lookupAddresses(resolver, target, payload.port)
            lookups.append(found.addCallback(_withSRV, int(payload.priority),
                                             int(payload.weight)))

        def combine(
            results: list[tuple[bool, Any]],
        ) -> tuple[list[Target], Optional[float]] | Failure:
            targets: list[Target] = []
            for ok, value in results:
                if ok:
                    targets.extend(value[0])
                    ttls.append(value[1])
                elif not _noSuchName(value):
                    # A lookup that went wrong: the whole answer is not
                    # known (its target's backends would drain otherwise).
                    return value
                # A target that does not exist is left out; the others stay.
            known = [t for t in ttls if t is not None]
            return targets, min(known) if known else None

        return defer.DeferredList(lookups, consumeErrors=True).addCallback(combine)

    return resolver.lookupService(name).addCallback(gotService)


_log = Logger()
# The SRV records with port 0 logged already, as (name, target): each
# once, and no more than _PORT_ZERO_LOGGED of them (a hostile server could
# make up names without end).
_portZeroLogged: set[tuple[str, str]] = set()
_PORT_ZERO_LOGGED = 1000


def _portZero(name: str, target: str) -> None:
    if (name, target) in _portZeroLogged or len(_portZeroLogged) >= _PORT_ZERO_LOGGED:
        return
    _portZeroLogged.add((name, target))
    _log.warn("SRV {name}: target {target} has port 0, left out", name=name, target=target)


def _withSRV(
    found: tuple[list[Target], Optional[float]], priority: int, weight: int
) -> tuple[list[Target], Optional[float]]:
    targets, ttl = found
    return [t._replace(priority=priority, weight=weight) for t in targets], ttl


def lookup(resolver: Any, config: DiscoveryConfig) -> defer.Deferred[tuple[list[Target], Optional[float]]]:
    """
    The addresses C{config} stands for now, and their TTL.
    """
    if config.srv:
        return lookupService(resolver, config.name)
    return lookupAddresses(resolver, config.name, config.port)


def describe(config: DiscoveryConfig) -> str:
    """
    What a backend's addresses come from, in words for a log line.
    """
    if config.srv:
        return f"SRV {config.name}"
    return f"{config.name} port {config.port}"


# What an error code of DNS's answer means, in words; DNSNameError
# (NXDOMAIN) alone says that the name does not exist.
_DNS_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (DNSServerError, "server failure (SERVFAIL)"),
    (DNSQueryRefusedError, "refused (REFUSED)"),
    (DNSFormatError, "format error (FORMERR)"),
    (DNSNotImplementedError, "not implemented by the server (NOTIMP)"),
    (DNSUnknownError, "unknown error code in the answer"),
)


def whyFailed(failure: Failure) -> str:
    """
    Why a lookup failed, in words.
    """
    value = failure.value
    for kind, why in _DNS_ERRORS:
        if isinstance(value, kind):
            return why
    if type(value) is DomainError or isinstance(value, DNSNameError):
        # NXDOMAIN, or a name that neither /etc/hosts nor DNS has.
        return "no such name"
    if isinstance(value, defer.TimeoutError):
        return "no answer (timeout)"
    if isinstance(value, EmptyAnswer):
        return f"no addresses in the answer ({value})" if str(value) else (
            "no addresses in the answer")
    if isinstance(value, ConnectionRefusedError):
        return "the DNS server refused the connection"
    if isinstance(value, ConnectError):
        return f"cannot reach the DNS server ({value.osError or value})"
    if isinstance(value, ConnectionLost):
        return "the DNS server closed the connection"
    text = str(value).strip()
    return f"{type(value).__name__}: {text}" if text else type(value).__name__


class Resolution:
    """
    Looks a backend's addresses up again and again: after each answer, at
    its TTL clamped to [C{resolveMin}, C{resolveMax}]; after a failed or
    empty one, again after C{resolveMin}, doubling up to C{resolveMax}. A
    lookup not done within C{deadline} seconds is cancelled, and fails as
    a timeout.

    A failed or empty answer changes nothing: C{onAnswer} is called with
    good answers only, so the backends keep the last good set (none before
    the first). It is logged once, saying which, and once more when an
    answer comes again.

    @ivar failing: whether the last lookup failed or gave nothing.
    @ivar lookups: lookups finished, ever; C{failures}: those that failed
        or gave no address.
    @ivar lastError: why the last lookup failed, in words, or C{""}.
    @ivar nextAt: the reactor time of the next lookup, when one is
        scheduled.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        lookup: Callable[[], defer.Deferred[tuple[list[Target], Optional[float]]]],
        onAnswer: Callable[[list[Target]], None],
        resolveMin: float,
        resolveMax: float,
        what: str,
        deadline: float = QUERY_TIMEOUT,
    ) -> None:
        """
        @param lookup: starts one lookup (cancelling its Deferred stops it).
        @param onAnswer: called with the addresses (in L{canonical} order)
            of each good answer.
        @param what: names the backend in log lines.
        """
        self.clock = clock
        self.lookup = lookup
        self.onAnswer = onAnswer
        self.resolveMin = resolveMin
        self.resolveMax = resolveMax
        self.what = what
        self.deadline = deadline
        self.failing = False
        self.lookups = 0
        self.failures = 0
        self.lastError = ""
        self.nextAt: Optional[float] = None
        self._answers = 0  # good answers, ever
        self._retry = resolveMin
        self._call: Optional[IDelayedCall] = None
        self._inFlight: Optional[defer.Deferred[Any]] = None
        self._running = False

    @property
    def running(self) -> bool:
        """
        Whether it looks up (between L{start} and L{stop}).
        """
        return self._running

    def configure(self, resolveMin: float, resolveMax: float) -> None:
        """
        Take new bounds (on reload): a lookup scheduled later than the new
        C{resolveMax} allows is moved to it.
        """
        self.resolveMin = resolveMin
        self.resolveMax = resolveMax
        self._retry = min(max(self._retry, resolveMin), resolveMax)
        call = self._call
        if call is not None and call.active():
            now = self.clock.seconds()
            if call.getTime() > now + resolveMax:
                call.reset(resolveMax)
                self.nextAt = now + resolveMax

    def start(self) -> None:
        """
        Look up now, and on from then; nothing if it runs already.
        """
        if self._running:
            return
        self._running = True
        self._lookUp()

    def stop(self) -> None:
        """
        Stop: nothing scheduled stays, and a lookup in flight is ignored.
        """
        self._running = False
        self.nextAt = None
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        inFlight, self._inFlight = self._inFlight, None
        if inFlight is not None:
            inFlight.cancel()

    def _lookUp(self) -> None:
        self._call = None
        self.nextAt = None
        try:
            d = self.lookup()
        except Exception:
            d = defer.fail()
        d.addTimeout(self.deadline, self.clock)
        self._inFlight = d
        d.addCallbacks(self._answered, self._failed, callbackArgs=(d,), errbackArgs=(d,))

    def _answered(self, result: tuple[list[Target], Optional[float]], d: Any) -> None:
        if d is not self._inFlight:
            return
        self._inFlight = None
        targets, ttl = result
        if not targets:
            self._failed(Failure(EmptyAnswer()), d, mine=True)
            return
        self.lookups += 1
        self._answers += 1
        if self.failing:
            self.failing = False
            self.lastError = ""
            self.log.info("{what}: DNS answers again", what=self.what)
        self._retry = self.resolveMin
        self.onAnswer(canonical(targets))
        self._schedule(self.resolveMax if ttl is None else ttl)

    def _failed(self, failure: Failure, d: Any, mine: bool = False) -> None:
        if not mine:
            if d is not self._inFlight:
                return
            self._inFlight = None
        self.lookups += 1
        self.failures += 1
        why = whyFailed(failure)
        if not self.failing:
            self.failing = True
            if self._answers:
                self.log.warn(
                    "{what}: DNS lookup failed ({why}); keeping the last good addresses "
                    "until it answers again", what=self.what, why=why,
                )
            else:
                # Started afresh (at start-up, or a reload that changed its
                # name or resolver): there is no last good answer to keep.
                self.log.warn(
                    "{what}: DNS lookup failed ({why}); no addresses until it answers",
                    what=self.what, why=why,
                )
        self.lastError = why
        delay = self._retry
        self._retry = min(self._retry * 2, self.resolveMax)
        self._schedule(delay)

    def _schedule(self, seconds: float) -> None:
        if not self._running:
            return
        delay = min(max(seconds, self.resolveMin), self.resolveMax)
        self.nextAt = self.clock.seconds() + delay
        self._call = self.clock.callLater(delay, self._lookUp)
