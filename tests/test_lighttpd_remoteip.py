"""
Tests for lighttpd's C{$HTTP["remoteip"]} conditions around
C{sockproxy.server}: L{txsockproxy.lighttpd.clientrules} and how the lighttpd
importer turns them into a proxy's access rules, or refuses them.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase

from tests.test_lighttpd import ONE_HOST, SOURCE, LighttpdTestCase, parse, sockproxy
from txsockproxy.acl import AccessList, parseRule
from txsockproxy.lighttpd.clientrules import accessRules, parseNetwork

OFF = "sockproxy.server = ()"
OTHER = 'sockproxy.server = ( "" => ( "b" => ( "host" => "127.0.0.1", "port" => 9002 ) ) )'

_NETWORKS = [parseNetwork(n) for n in (
    "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3", "192.168.0.0/16", "0.0.0.0/0",
    "::/0", "2001:db8::/32", "2001:db8::1",
)]
_CLIENTS = ["10.0.0.1", "10.1.0.1", "10.1.2.1", "10.1.2.3", "192.168.1.1", "8.8.8.8",
            "2001:db8::1", "2001:db8::2", "2001:dead::1"]


def lighttpdDecides(default: bool, blocks: list[tuple[bool, object, bool]], client: str) -> bool:
    """
    Whether lighttpd proxies C{client}: the last matching block decides.
    """
    ip = ipaddress.ip_address(client)
    proxied = default
    for equal, network, on in blocks:
        assert isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network))
        inside = ip.version == network.version and ip in network
        if inside == equal:
            proxied = on
    return proxied


class AccessRulesTests(SynchronousTestCase):
    """
    L{accessRules} turns lighttpd's last-match conditions into first-match
    access rules.
    """

    @given(st.booleans(), st.lists(st.tuples(st.booleans(), st.sampled_from(_NETWORKS),
                                             st.booleans()), max_size=6))
    def test_decidesAsLighttpd(self, default: bool,
                               blocks: list[tuple[bool, object, bool]]) -> None:
        """
        For every client, the rules allow exactly the clients lighttpd
        would proxy.
        """
        rules = AccessList([parseRule(r) for r in accessRules(default, blocks)])  # type: ignore[arg-type]
        for client in _CLIENTS:
            address = (IPv6Address("TCP", client, 1) if ":" in client
                       else IPv4Address("TCP", client, 1))
            self.assertEqual(rules.decide(address)[0], lighttpdDecides(default, blocks, client),
                             client)

    def test_simple(self) -> None:
        """
        C{==} enabling one network on a socket not proxied otherwise is
        C{allow NET, deny all}; C{!=} disabling all but one network is the
        same; no block at all is no rule.
        """
        net = parseNetwork("10.0.0.0/8")
        self.assertEqual(accessRules(False, [(True, net, True)]), ("allow 10.0.0.0/8", "deny all"))
        self.assertEqual(accessRules(True, [(False, net, False)]), ("allow 10.0.0.0/8", "deny all"))
        self.assertEqual(accessRules(True, [(True, net, False)]), ("deny 10.0.0.0/8",))
        self.assertEqual(accessRules(True, []), ())


class MappingTests(LighttpdTestCase):
    """
    C{$HTTP["remoteip"]} blocks that turn C{sockproxy.server} on or off
    become the proxy's C{access} rules.
    """

    def test_disableOutside(self) -> None:
        """
        A socket's C{sockproxy.server} with C{$HTTP["remoteip"] != NET {
        sockproxy.server = () }} inside allows NET only.
        """
        config = parse(sockproxy(ONE_HOST + '\n$HTTP["remoteip"] != "10.0.0.0/8" {\n'
                                 + OFF + "\n}"))
        self.assertEqual(config.proxies[0].protection.access, ("allow 10.0.0.0/8", "deny all"))

    def test_enableInside(self) -> None:
        """
        A socket block with only C{$HTTP["remoteip"] == NET {
        sockproxy.server = ... }} proxies NET only.
        """
        config = parse(sockproxy('$HTTP["remoteip"] == "192.0.2.7" {\n' + ONE_HOST + "\n}"))
        (proxy,) = config.proxies
        self.assertEqual(proxy.protection.access, ("allow 192.0.2.7/32", "deny all"))
        self.assertEqual([b.label for b in proxy.backends], ["a"])

    def test_topLevelOrder(self) -> None:
        """
        A top-level block applies to the sockets whose own
        C{sockproxy.server} comes before it, not to those after (lighttpd
        applies conditions in the order written); a socket without a
        C{sockproxy.server} of its own is proxied only where the block says.
        """
        text = ('server.modules = ( "mod_sockproxy" )\n'
                '$SERVER["socket"] == ":7001" {\n' + ONE_HOST + "\n}\n"
                '$HTTP["remoteip"] == "203.0.113.0/24" {\n' + OFF + "\n}\n"
                '$SERVER["socket"] == ":7002" {\n' + ONE_HOST + "\n}\n")
        config = parse(text)
        access = {p.listen: p.protection.access for p in config.proxies}
        self.assertEqual(access, {("tcp:7001",): ("deny 203.0.113.0/24",), ("tcp:7002",): ()})

    def test_noticeless(self) -> None:
        """
        A C{$HTTP["remoteip"]} block without sockproxy directives changes
        nothing.
        """
        config = parse(sockproxy(ONE_HOST) + '$HTTP["remoteip"] == "10.0.0.0/8" {\n'
                       '  url.access-deny = ( "" )\n}\n')
        self.assertEqual(config.proxies[0].protection.access, ())


class RefusedTests(LighttpdTestCase):
    """
    What cannot become access rules is one error naming file and line.
    """

    def test_otherBackends(self) -> None:
        """
        Other backends for some clients.
        """
        self.assertEqual(self.problems(sockproxy(
            ONE_HOST + '\n$HTTP["remoteip"] == "10.0.0.0/8" {\n' + OTHER + "\n}")), [
            f'{SOURCE}:5: sockproxy.server: inside $HTTP["remoteip"] == "10.0.0.0/8": other '
            f"backends than at {SOURCE}:3: backends chosen by the client's address are not "
            'supported; a $HTTP["remoteip"] block may only turn proxying on (with the same '
            "backends) or off (sockproxy.server = ()): that becomes the proxy's access rules "
            "(column 1)"])

    def test_regex(self) -> None:
        """
        C{=~} and the other string operators.
        """
        self.assertEqual(self.problems(sockproxy(
            ONE_HOST + '\n$HTTP["remoteip"] =~ "^10\\\\." {\n' + OFF + "\n}")), [
            f'{SOURCE}:4: $HTTP["remoteip"]: $HTTP["remoteip"] =~ "^10\\\\.": only == and != '
            '"address[/bits]" become access rules (=~, !~, =^ and =$ are not supported '
            "around sockproxy.server) (column 1)"])

    def test_else(self) -> None:
        """
        C{else}, plain or chained.
        """
        problems = self.problems(sockproxy(
            '$HTTP["remoteip"] == "10.0.0.0/8" {\n' + ONE_HOST + "\n} else {\n" + OFF + "\n}"))
        self.assertEqual(len(problems), 1)
        self.assertIn(f"{SOURCE}:5: $HTTP[\"remoteip\"]: else (of", problems[0])
        self.assertIn("'else' is not supported around sockproxy.server", problems[0])
        problems = self.problems(sockproxy(
            '$HTTP["remoteip"] == "10.0.0.0/8" {\n' + ONE_HOST + "\n} else "
            '$HTTP["remoteip"] == "10.1.0.0/16" {\n' + OFF + "\n}"))
        self.assertEqual(len(problems), 1)
        self.assertIn(f"{SOURCE}:5: $HTTP[\"remoteip\"]", problems[0])

    def test_badAddress(self) -> None:
        """
        A value that is not an address or a network.
        """
        self.assertEqual(self.problems(sockproxy(
            ONE_HOST + '\n$HTTP["remoteip"] != "10.0.0.0/99" {\n' + OFF + "\n}")), [
            f'{SOURCE}:4: $HTTP["remoteip"]: "10.0.0.0/99" is not an address or a network '
            "(10.0.0.0/8, 2001:db8::/32) (column 1)"])

    def test_nested(self) -> None:
        """
        A block nested in another condition.
        """
        problems = self.problems(sockproxy(
            ONE_HOST + '\n$HTTP["host"] == "a.test" {\n$HTTP["remoteip"] != "10.0.0.0/8" {\n'
            + OFF + "\n}\n}"))
        self.assertIn("becomes access rules only at the top level or directly inside a "
                      '$SERVER["socket"] block', " ".join(problems))

    def test_unixSocket(self) -> None:
        """
        A unix socket: its clients have no address.
        """
        self.assertEqual(self.problems(sockproxy(
            ONE_HOST + '\n$HTTP["remoteip"] != "10.0.0.0/8" {\n' + OFF + "\n}",
            socket="/run/sp.sock")), [
            f'{SOURCE}:4: $HTTP["remoteip"]: "/run/sp.sock" is a unix socket: its clients '
            "have no address to match (column 1)"])

    def test_proxyProtocol(self) -> None:
        """
        C{extforward.hap-PROXY}: lighttpd decides on the load balancer's
        address.
        """
        problems = self.problems(sockproxy(
            'extforward.hap-PROXY = "enable"\n' + ONE_HOST
            + '\n$HTTP["remoteip"] != "10.0.0.0/8" {\n' + OFF + "\n}"))
        self.assertEqual(problems, [
            f'{SOURCE}:5: $HTTP["remoteip"]: "127.0.0.1:8080": not supported with '
            "extforward.hap-PROXY (lighttpd matches the proxy's address, not the one in the "
            "PROXY header) (column 1)"])

    def test_otherDirective(self) -> None:
        """
        Another sockproxy directive than sockproxy.server.
        """
        problems = self.problems(sockproxy(
            ONE_HOST + '\n$HTTP["remoteip"] != "10.0.0.0/8" {\nsockproxy.balance = "hash"\n}'))
        self.assertEqual(problems, [
            f'{SOURCE}:5: sockproxy.balance: inside $HTTP["remoteip"] != "10.0.0.0/8": only '
            "sockproxy.server (a socket's own, or ()) can be set per client address: it "
            "becomes the proxy's access rules (column 1)"])
