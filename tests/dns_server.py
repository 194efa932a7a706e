"""
An authoritative DNS server on C{twisted.names} for the integration tests
of backends from DNS, run as a subprocess:
C{python tests/dns_server.py RECORDS.json}.

It listens on 127.0.0.1, TCP and UDP, on one port of the kernel's choice,
and prints C{dns-server listening on PORT} once bound. It reads the records from the
JSON file at every query, so a test changes them by replacing the file:

    {"ttl": 1,
     "a": {"db.test": ["127.0.0.2"]},
     "srv": {"_echo._tcp.test": [[priority, weight, port, "db.test"]]}}

A name in no table does not exist (NXDOMAIN); an SRV answer carries the A
records of its targets in its additional section, as Consul's does. A name
in C{"hang"} (a list) is never answered.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.names import dns, error, server


class JSONAuthority:
    """
    Answers queries (the C{query} of
    L{twisted.internet.interfaces.IResolver}) from a JSON file.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        with open(self.path, encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
        return data

    def query(self, query: dns.Query, timeout: Any = None) -> defer.Deferred[Any]:
        data = self._read()
        ttl = int(data.get("ttl", 1))
        name = query.name.name.decode("ascii").lower()
        if name in data.get("hang", []):
            return defer.Deferred()
        addresses = data.get("a", {})
        services = data.get("srv", {})
        if name not in addresses and name not in services:
            return defer.fail(error.DomainError(name))
        answers = []
        additional = []
        if query.type == dns.A:
            answers = [dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A(a, ttl), auth=True)
                       for a in addresses.get(name, [])]
        elif query.type == dns.SRV:
            for priority, weight, port, target in services.get(name, []):
                answers.append(dns.RRHeader(
                    name, dns.SRV, dns.IN, ttl,
                    dns.Record_SRV(priority, weight, port, target, ttl), auth=True,
                ))
                additional.extend(
                    dns.RRHeader(target, dns.A, dns.IN, ttl, dns.Record_A(a, ttl), auth=True)
                    for a in addresses.get(target, [])
                )
        return defer.succeed((answers, [], additional))


def main(path: str) -> None:
    from twisted.internet import reactor

    factory = server.DNSServerFactory(authorities=[JSONAuthority(path)])
    factory.noisy = False
    for _ in range(100):
        tcp = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        port = tcp.getHost().port
        try:
            reactor.listenUDP(  # type: ignore[attr-defined]
                port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1"
            )
        except CannotListenError:
            tcp.stopListening()
            continue
        break
    else:
        raise SystemExit("no port free for both TCP and UDP")
    print(f"dns-server listening on {port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1])
