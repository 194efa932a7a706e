"""
Tests for the hardening of the status site (L{txsockproxy.status}): endpoint
strings shown without the paths of secrets, request bodies refused before
they are read, refusals logged at a bounded rate, and connections capped in
number and in time.
"""

from __future__ import annotations

import json
from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families
from test_status import backends, makeService, render
from twisted.trial.unittest import SynchronousTestCase

from txsockproxy.status import REDACTED, redactEndpoint, statusResource

# Endpoint strings naming files a reader of the status page must not learn.
SECRET_LISTEN = "ssl:5433:privateKey=/etc/secret/server.key:certKey=/etc/secret/server.crt"
SECRET_BACKEND = (
    "tls:db.example:5432:trustRoots=/etc/secret/ca:certificate=/etc/secret/client.crt"
    ":privateKey=/etc/secret/client.key"
)


class RedactEndpointTests(SynchronousTestCase):
    """
    L{redactEndpoint} hides the values of parameters naming keys,
    certificates and other secrets, and nothing else.
    """

    def test_keywordParameters(self) -> None:
        """
        The values of C{privateKey}, C{certKey}, C{trustRoots},
        C{certificate}, C{caCertsDir}, C{extraCertChain} and C{dhParameters}
        are replaced; other parameters are kept.
        """
        self.assertEqual(
            redactEndpoint(SECRET_LISTEN, server=True),
            f"ssl:5433:privateKey={REDACTED}:certKey={REDACTED}",
        )
        self.assertEqual(
            redactEndpoint(SECRET_BACKEND),
            f"tls:db.example:5432:trustRoots={REDACTED}:certificate={REDACTED}"
            f":privateKey={REDACTED}",
        )
        self.assertEqual(
            redactEndpoint("ssl:host=a.example:port=443:caCertsDir=/etc/ca:certKey=/c"),
            f"ssl:host=a.example:port=443:caCertsDir={REDACTED}:certKey={REDACTED}",
        )
        self.assertEqual(
            redactEndpoint("ssl:443:extraCertChain=/x:dhParameters=/y:interface=10.0.0.1",
                           server=True),
            f"ssl:443:extraCertChain={REDACTED}:dhParameters={REDACTED}:interface=10.0.0.1",
        )

    def test_escapes(self) -> None:
        """
        Backslash escapes are honoured as Twisted's parser honours them: an
        escaped colon inside a secret value does not leave part of it shown,
        and an escaped colon in another value is kept as written.
        """
        self.assertEqual(
            redactEndpoint(r"ssl:443:privateKey=C\:\\keys\\k.pem:interface=127.0.0.1",
                           server=True),
            f"ssl:443:privateKey={REDACTED}:interface=127.0.0.1",
        )
        ipv6 = r"tcp6:5432:interface=fd00\:\:1"
        self.assertEqual(redactEndpoint(ipv6, server=True), ipv6)

    def test_nested(self) -> None:
        """
        An endpoint string nested in a parameter's value (escaped) is
        redacted too, and stays escaped.
        """
        self.assertEqual(
            redactEndpoint(r"tls:a.example:443:endpoint=ssl\:host\=a\:port\=1\:certKey\=/k"),
            rf"tls:a.example:443:endpoint=ssl\:host\=a\:port\=1\:certKey\={REDACTED}",
        )

    def test_positional(self) -> None:
        """
        A server C{ssl:} endpoint's key and certificate given as positional
        arguments are replaced, also inside a wrapper such as C{haproxy:},
        and so is the certificate directory of C{le:}; a client string's
        positional host and port are not.
        """
        self.assertEqual(redactEndpoint("ssl:443:/k.pem:/c.pem:interface=::1", server=True),
                         f"ssl:443:{REDACTED}:{REDACTED}:interface=::1")
        self.assertEqual(redactEndpoint("haproxy:ssl:443:/k.pem", server=True),
                         f"haproxy:ssl:443:{REDACTED}")
        self.assertEqual(redactEndpoint("le:/srv/certs:tcp:443", server=True),
                         f"le:{REDACTED}:tcp:443")
        self.assertEqual(redactEndpoint("ssl:db.example:5432"), "ssl:db.example:5432")

    def test_unchanged(self) -> None:
        """
        Endpoint strings without secrets, and plain names, are shown as
        they are.
        """
        for description in ("tcp:host=10.0.0.1:port=5432", "unix:/run/db.sock",
                            "tcp:5432:interface=127.0.0.1", "systemd:domain=INET:index=0", "db"):
            self.assertEqual(redactEndpoint(description, server=True), description)


class RedactedPagesTests(SynchronousTestCase):
    """
    No page of the status site shows the paths of secrets in listen
    strings, backend endpoints, or the names and labels that default to
    them.
    """

    def setUp(self) -> None:
        self.service = makeService()
        pool = self.service.pools["db"]
        # As the configuration names a proxy and a backend without a name or
        # label of their own: after their endpoint strings.
        pool.config = replace(pool.config, listen=(SECRET_LISTEN,))
        primary, _ = backends(self.service)
        primary.key = primary.label = SECRET_BACKEND
        pool.name = SECRET_LISTEN
        self.service.pools = {SECRET_LISTEN: pool}
        self.root = statusResource(self.service)

    def assertNoSecrets(self, body: bytes) -> None:
        """
        C{body} names no file of the secrets, and shows where they were
        redacted.
        """
        self.assertNotIn(b"/etc/secret", body)
        self.assertIn(REDACTED.encode(), body.replace(b"&lt;", b"<").replace(b"&gt;", b">"))

    def test_json(self) -> None:
        """
        C{/status.json} shows the proxy's name and listen strings and the
        backend's label and endpoint redacted.
        """
        code, body, _ = render(self.root, b"/status.json")
        self.assertEqual(code, 200)
        self.assertNoSecrets(body)
        [proxy] = json.loads(body)["proxies"]
        shown = redactEndpoint(SECRET_LISTEN, server=True)
        self.assertEqual((proxy["name"], proxy["listen"]), (shown, [shown]))
        primary = proxy["backends"][0]
        self.assertEqual((primary["label"], primary["endpoint"]),
                         (redactEndpoint(SECRET_BACKEND), redactEndpoint(SECRET_BACKEND)))

    def test_page(self) -> None:
        """
        The HTML page shows them redacted.
        """
        code, body, _ = render(self.root, b"/")
        self.assertEqual(code, 200)
        self.assertNoSecrets(body)

    def test_metrics(self) -> None:
        """
        The C{proxy} and C{backend} labels of C{/metrics} are redacted.
        """
        code, body, _ = render(self.root, b"/metrics")
        self.assertEqual(code, 200)
        self.assertNoSecrets(body)
        labels = {
            (s.labels.get("proxy"), s.labels.get("backend"))
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        self.assertIn(
            (redactEndpoint(SECRET_LISTEN, server=True), redactEndpoint(SECRET_BACKEND)), labels
        )

    def test_serverStatistics(self) -> None:
        """
        The backend labels in C{/server-statistics} counter names are
        redacted.
        """
        code, body, _ = render(self.root, b"/server-statistics")
        self.assertEqual(code, 200)
        self.assertNoSecrets(body)
        self.assertIn(f"gw.backend.{redactEndpoint(SECRET_BACKEND)}.0.connected: 0\n".encode(),
                      body)
