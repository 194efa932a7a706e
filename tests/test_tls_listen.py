"""
Unit tests for TLS termination on a proxy's own listeners: reading the
C{tls-*} keys and their files (L{txsockproxy.tlsconfig}), and the contexts
chosen by SNI (L{txsockproxy.tlslisten}), with handshakes run in memory.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.tls_support import Issued, issue
from txsockproxy.config import Config, ConfigError, Problem
from txsockproxy.render import describeConfig, renderToml
from txsockproxy.service import ProxyService, StartupError
from txsockproxy.tlsconfig import certificateNames, readCertificatePair
from txsockproxy.tlslisten import ServerTLS, TLSListenEndpoint, matchName
from txsockproxy.tomlconfig import parseConfig

SOURCE = "tls.toml"


def toml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Files(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def pair(self, stem: str, *names: str, **kw: Any) -> tuple[str, str]:
        issued = issue(names or (f"{stem}.example",), **kw)
        self.issued = getattr(self, "issued", {})
        self.issued[stem] = issued
        return issued.write(self.dir, stem)

    def config(self, keys: str, listen: str = '"tcp:8443"') -> str:
        return (f"[[proxy]]\nlisten = {listen}\n{keys}\n"
                '[[proxy.backend]]\nendpoint = "tcp:host=127.0.0.1:port=10000"\n')

    def parse(self, text: str) -> Config:
        return parseConfig(text, SOURCE, balancers=frozenset({"fair"}))

    def problems(self, text: str) -> list[Problem]:
        with self.assertRaises(ConfigError) as caught:
            self.parse(text)
        return list(caught.exception.problems)

    def certificates(self, *pairs: tuple[str, str]) -> str:
        return "tls-certificates = [" + ", ".join(
            f"{{cert = {toml(c)}, key = {toml(k)}}}" for c, k in pairs) + "]"


class TLSConfigTests(_Files):
    """
    The C{tls-*} keys of C{[[proxy]]} are read into a L{ListenTLSConfig},
    with one problem naming file, line and key for each mistake.
    """

    def test_certificates(self) -> None:
        """
        C{tls-certificates} gives the certificates in order, with their
        files' contents and the DNS names they serve; verification is off
        and the lowest version is 1.2 by default.
        """
        a = self.pair("a", "a.example", "www.a.example")
        b = self.pair("b", "*.b.example")
        tls = self.parse(self.config(self.certificates(a, b))).proxies[0].tls
        assert tls is not None
        self.assertEqual([(c.cert, c.key) for c in tls.certificates], [a, b])
        self.assertEqual(tls.certificates[0].names, ("a.example", "www.a.example"))
        self.assertEqual(tls.certificates[1].names, ("*.b.example",))
        with open(a[0], "rb") as f:
            self.assertEqual(tls.certificates[0].certPEM, f.read())
        self.assertEqual((tls.verifyClient, tls.minVersion, tls.clientCA), ("off", "1.2", ""))

    def test_rendered(self) -> None:
        """
        C{--print-toml} writes the C{tls-*} keys so that they load back the
        same; C{--check} shows the certificates with their names.
        """
        ca = issue(("CA",), authority=True)
        caFile = os.path.join(self.dir, "ca.pem")
        with open(caFile, "wb") as f:
            f.write(ca.certPEM)
        keys = (self.certificates(self.pair("a", "a.example"), self.pair("b"))
                + f'\ntls-client-ca = {toml(caFile)}\ntls-verify-client = "optional"'
                + '\ntls-min-version = "1.3"')
        config = self.parse(self.config(keys))
        again = self.parse(renderToml(config))
        self.assertEqual(again.proxies, config.proxies)
        described = describeConfig(config)
        self.assertIn("a.pem (a.example), key", described)
        self.assertIn("optional (" + caFile + ")", described)

    def test_noTLS(self) -> None:
        """
        A proxy without C{tls-*} keys has no TLS settings.
        """
        self.assertIsNone(self.parse(self.config("")).proxies[0].tls)

    def test_clientCA(self) -> None:
        """
        C{tls-client-ca} makes client certificates required unless
        C{tls-verify-client} says otherwise.
        """
        ca = issue(("CA",), authority=True)
        caFile = os.path.join(self.dir, "ca.pem")
        with open(caFile, "wb") as f:
            f.write(ca.certPEM)
        keys = self.certificates(self.pair("a")) + f"\ntls-client-ca = {toml(caFile)}"
        tls = self.parse(self.config(keys)).proxies[0].tls
        assert tls is not None
        self.assertEqual((tls.verifyClient, tls.clientCAPEM), ("required", ca.certPEM))
        tls = self.parse(self.config(keys + '\ntls-verify-client = "optional"')).proxies[0].tls
        assert tls is not None
        self.assertEqual(tls.verifyClient, "optional")

    def test_minVersion(self) -> None:
        """
        C{tls-min-version} is C{"1.2"} or C{"1.3"}, as a string or a float.
        """
        for written, version in (('"1.3"', "1.3"), ("1.3", "1.3"), ('"1.2"', "1.2")):
            keys = self.certificates(self.pair("a")) + f"\ntls-min-version = {written}"
            tls = self.parse(self.config(keys)).proxies[0].tls
            assert tls is not None
            self.assertEqual(tls.minVersion, version)

    def assertOneProblem(self, text: str, line: int, key: str, *words: str) -> Problem:
        problems = self.problems(text)
        self.assertEqual(len(problems), 1, problems)
        problem = problems[0]
        self.assertEqual((problem.source, problem.line, problem.key), (SOURCE, line, key))
        for word in words:
            self.assertIn(word, problem.message)
        self.assertNotIn("\n", str(problem))
        return problem

    def test_missingFile(self) -> None:
        """
        A certificate file that cannot be read is a problem naming it and
        the system's reason.
        """
        missing = os.path.join(self.dir, "missing.pem")
        _, key = self.pair("a")
        self.assertOneProblem(self.config(self.certificates((missing, key))), 3,
                              "proxy[0].tls-certificates[0]", repr(missing),
                              "No such file or directory")

    def test_notPEM(self) -> None:
        """
        A certificate or key file that holds no PEM is a problem naming it.
        """
        cert, key = self.pair("a")
        garbage = os.path.join(self.dir, "garbage")
        with open(garbage, "wb") as f:
            f.write(b"not PEM\n")
        self.assertOneProblem(self.config(self.certificates((garbage, key))), 3,
                              "proxy[0].tls-certificates[0]", repr(garbage),
                              "no PEM certificate")
        self.assertOneProblem(self.config(self.certificates((cert, garbage))), 3,
                              "proxy[0].tls-certificates[0]", repr(garbage),
                              "no PEM private key")

    def test_keyNotMatching(self) -> None:
        """
        A key that is not the certificate's is a problem naming both files.
        """
        a = self.pair("a")
        b = self.pair("b")
        self.assertOneProblem(self.config(self.certificates(a, (b[0], a[1]))), 3,
                              "proxy[0].tls-certificates[1]", repr(a[1]), repr(b[0]),
                              "is not the key")

    def test_keyOpenSSLRefuses(self) -> None:
        """
        A certificate and key that load as PEM but that OpenSSL refuses to
        use (a key too small for its security level: P-192, 96 bits) is a
        problem naming both and OpenSSL's reason, not a traceback at start.
        """
        weak = self.pair("weak", curve=ec.SECP192R1())
        self.assertOneProblem(self.config(self.certificates(weak)), 3,
                              "proxy[0].tls-certificates[0]", repr(weak[0]), repr(weak[1]),
                              "OpenSSL refuses it", "too small")

    def test_expiredIsNotice(self) -> None:
        """
        An expired certificate is used, and a notice says so; so is one not
        valid yet.
        """
        old = self.pair("old", start=-10, days=5)
        future = self.pair("future", start=5)
        config = self.parse(self.config(self.certificates(old, future)))
        self.assertEqual(len(config.notices), 2, config.notices)
        self.assertIn(f"{old[0]!r} expired on", config.notices[0])
        self.assertIn(f"{future[0]!r} is not valid before", config.notices[1])

    def test_wrongKeys(self) -> None:
        """
        Each wrong use of the keys is one problem at its key.
        """
        a = self.pair("a")
        cases = [
            ('tls-client-ca = "/x"', "proxy[0].tls-client-ca", "needs tls-certificates"),
            ("tls-certificates = []", "proxy[0].tls-certificates", "non-empty array"),
            ('tls-certificates = ["a.pem"]', "proxy[0].tls-certificates[0]", "must be a table"),
            (f"tls-certificates = [{{cert = {toml(a[0])}}}]",
             "proxy[0].tls-certificates[0].key", "missing"),
            (f"tls-certificates = [{{cert = {toml(a[0])}, key = {toml(a[1])}, pem = 1}}]",
             "proxy[0].tls-certificates[0].pem", "unknown key"),
            (self.certificates(a) + '\ntls-verify-client = "required"',
             "proxy[0].tls-verify-client", "needs tls-client-ca"),
            (self.certificates(a) + '\ntls-verify-client = "yes"',
             "proxy[0].tls-verify-client", "must be one of"),
            (self.certificates(a) + '\ntls-min-version = "1.1"',
             "proxy[0].tls-min-version", "must be one of '1.2', '1.3'"),
            (self.certificates(a) + f'\ntls-client-ca = {toml(a[1])}',
             "proxy[0].tls-client-ca", "no PEM certificate"),
        ]
        for keys, key, words in cases:
            problems = self.problems(self.config(keys))
            self.assertEqual([(p.key, words in p.message) for p in problems], [(key, True)],
                             (keys, problems))
            self.assertIsNotNone(problems[0].line)

    def test_sslListener(self) -> None:
        """
        An C{ssl:} listen string in a proxy with C{tls-certificates} is a
        problem: it has a certificate of its own.
        """
        a = self.pair("a")
        ssl = f"ssl:8444:privateKey={a[1]}:certKey={a[0]}"
        problems = self.problems(self.config(self.certificates(a),
                                             listen=f'["tcp:8443", {toml(ssl)}]'))
        self.assertEqual([p.key for p in problems], ["proxy[0].listen"])
        self.assertIn("has a certificate of its own", problems[0].message)

    def test_namesFromCommonName(self) -> None:
        """
        A certificate without a subjectAltName serves its common name.
        """
        ca = issue(("Some.Example.",), authority=True)
        self.assertEqual(certificateNames(ca.certificate), ("some.example",))

    def test_encryptedKey(self) -> None:
        """
        An encrypted key is refused with a line saying so.
        """
        from cryptography.hazmat.primitives import serialization

        issued = issue(("a.example",))
        cert, key = issued.write(self.dir, "enc")
        with open(key, "wb") as f:
            f.write(issued.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret")))
        certificate, error, _ = readCertificatePair(cert, key)
        self.assertIsNone(certificate)
        self.assertIn("encrypted", error)


def handshake(server: SSL.Connection, serverName: Optional[bytes],
              client: Optional[SSL.Connection] = None) -> SSL.Connection:
    """
    Run a TLS handshake in memory between C{server} and a client asking for
    C{serverName}.

    @return: the client's connection.
    """
    if client is None:
        client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    client.set_connect_state()
    if serverName is not None:
        client.set_tlsext_host_name(serverName)
    server.set_accept_state()
    for _ in range(20):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        for a, b in ((client, server), (server, client)):
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
        try:
            server.do_handshake()
            client.do_handshake()
            return client
        except SSL.WantReadError:
            continue
    raise AssertionError("no handshake in 20 rounds")


def shown(tls: ServerTLS, name: Optional[bytes]) -> x509.Certificate:
    client = handshake(tls.serverConnectionForTLS(None), name)
    certificate = client.get_peer_certificate(as_cryptography=True)
    assert certificate is not None
    return certificate


class ServerTLSTests(_Files):
    """
    L{ServerTLS} gives each connection the default context and switches it
    to the certificate of the SNI name.
    """

    def serverTLS(self, *pairs: tuple[str, str]) -> ServerTLS:
        tls = self.parse(self.config(self.certificates(*pairs))).proxies[0].tls
        assert tls is not None
        return ServerTLS(tls)

    def test_interface(self) -> None:
        """
        L{ServerTLS} provides L{IOpenSSLServerConnectionCreator}.
        """
        verifyObject(IOpenSSLServerConnectionCreator, self.serverTLS(self.pair("a")))

    def test_bySNI(self) -> None:
        """
        The certificate naming the SNI name exactly, or by a wildcard of its
        first label, is shown; without a name, or with one no certificate
        has, the first; names are matched without regard to case.
        """
        tls = self.serverTLS(self.pair("a", "a.example"), self.pair("b", "b.example",
                                                                      "*.w.example"))
        a, b = self.issued["a"].certificate, self.issued["b"].certificate
        self.assertEqual(shown(tls, b"b.example"), b)
        self.assertEqual(shown(tls, b"B.Example"), b)
        self.assertEqual(shown(tls, b"x.w.example"), b)
        self.assertEqual(shown(tls, b"x.y.w.example"), a)
        self.assertEqual(shown(tls, b"a.example"), a)
        self.assertEqual(shown(tls, b"other.example"), a)
        self.assertEqual(shown(tls, None), a)
        self.assertEqual(tls.names(), ["*.w.example", "a.example", "b.example"])

    def test_firstNamingWins(self) -> None:
        """
        Of two certificates with the same name, the first serves it.
        """
        tls = self.serverTLS(self.pair("a", "x.example"), self.pair("b", "x.example"))
        self.assertEqual(shown(tls, b"x.example"), self.issued["a"].certificate)

    def test_use(self) -> None:
        """
        After L{ServerTLS.use}, new connections get the new certificates;
        nothing changes until the switch of L{ServerTLS.prepare} is called.
        """
        first = self.pair("a")
        tls = self.serverTLS(first)
        old = self.issued["a"].certificate
        newConfig = self.parse(self.config(self.certificates(self.pair("a")))).proxies[0].tls
        assert newConfig is not None
        switch = tls.prepare(newConfig)
        self.assertEqual(shown(tls, None), old)
        switch()
        self.assertEqual(shown(tls, None), self.issued["a"].certificate)
        self.assertIs(tls.config, newConfig)

    def test_clientRequired(self) -> None:
        """
        With C{verifyClient} required, a client without a certificate fails
        the handshake.
        """
        ca = issue(("CA",), authority=True)
        caFile = os.path.join(self.dir, "ca.pem")
        with open(caFile, "wb") as f:
            f.write(ca.certPEM)
        keys = self.certificates(self.pair("a")) + f"\ntls-client-ca = {toml(caFile)}"
        config = self.parse(self.config(keys)).proxies[0].tls
        assert config is not None
        tls = ServerTLS(config)
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        with self.assertRaises(SSL.Error):
            handshake(tls.serverConnectionForTLS(None), b"a.example",
                      SSL.Connection(context, None))
        client: Issued = issue(("client",), issuer=ca)
        context = SSL.Context(SSL.TLS_METHOD)
        context.use_certificate(client.certificate)  # type: ignore[arg-type]
        context.use_privatekey(client.key)  # type: ignore[arg-type]
        connection = handshake(tls.serverConnectionForTLS(None), b"a.example",
                               SSL.Connection(context, None))
        self.assertIsNotNone(connection.get_peer_certificate())


class MatchNameTests(SynchronousTestCase):
    """
    L{matchName} finds a name exactly, or by a wildcard for its first label.
    """

    @given(st.lists(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), min_size=1, max_size=5))
    def test_rule(self, labels: list[str]) -> None:
        """
        For any name: the exact entry first, else the wildcard of its parent,
        never a wildcard further up.
        """
        name = ".".join(labels)
        exact, wild, higher = object(), object(), object()
        parent = ".".join(labels[1:])
        table: dict[str, Any] = {name: exact}
        self.assertIs(matchName(name, table), exact)
        table = {"*." + parent: wild} if parent else {}
        if len(labels) > 2:
            table["*." + ".".join(labels[2:])] = higher
        self.assertIs(matchName(name, table), wild if parent else None)


@implementer(IStreamServerEndpoint)
class RecordingEndpoint:
    """
    A server endpoint that records the factory it is asked to listen with.
    """

    def __init__(self) -> None:
        self.factories: list[Any] = []

    def listen(self, protocolFactory: Any) -> Any:
        self.factories.append(protocolFactory)
        return succeed("port")


class TLSListenEndpointTests(_Files):
    """
    L{TLSListenEndpoint} listens with the endpoint it wraps, with TLS
    (Twisted's L{TLSMemoryBIOFactory}) around the factory.
    """

    def test_listen(self) -> None:
        """
        The wrapped endpoint gets a L{TLSMemoryBIOFactory} of the given
        factory, and its result is passed on.
        """
        config = self.parse(self.config(self.certificates(self.pair("a")))).proxies[0].tls
        assert config is not None
        inner = RecordingEndpoint()
        endpoint = TLSListenEndpoint(inner, ServerTLS(config))
        verifyObject(IStreamServerEndpoint, endpoint)
        factory = Factory.forProtocol(Protocol)
        self.assertEqual(self.successResultOf(endpoint.listen(factory)), "port")
        [wrapping] = inner.factories
        self.assertIsInstance(wrapping, TLSMemoryBIOFactory)
        self.assertIs(wrapping.wrappedFactory, factory)



class ServiceTLSTests(_Files):
    """
    L{ProxyService} wraps the listeners of a proxy with C{tls-certificates}
    in TLS, and a reload switches the listeners it keeps to the
    certificates read again.
    """

    def load(self, keys: str) -> Config:
        return self.parse(self.config(keys, listen='"tcp:0:interface=127.0.0.1"'))

    def test_reloadSwitches(self) -> None:
        """
        Applying a configuration with the same listen string and new
        certificate files keeps the listener and its L{ServerTLS}, which
        then shows the new certificate.
        """
        pair = self.pair("a")
        service = ProxyService(self.load(self.certificates(pair)), MemoryReactorClock())
        [listener] = service.listeners
        assert listener.tls is not None
        tls = listener.tls
        self.assertIsInstance(listener.endpoint, TLSListenEndpoint)
        self.assertEqual(shown(tls, None), self.issued["a"].certificate)
        self.pair("a")
        service.apply(self.load(self.certificates(pair)))
        self.assertEqual(service.listeners, [listener])
        self.assertIs(listener.tls, tls)
        self.assertEqual(shown(tls, None), self.issued["a"].certificate)

    def test_addingOrRemovingNeedsRestart(self) -> None:
        """
        A reload that would add TLS to a kept listener, or remove it, is
        refused with one line; nothing changes.
        """
        pair = self.pair("a")
        plain = self.load("")
        withTLS = self.load(self.certificates(pair))
        service = ProxyService(plain, MemoryReactorClock())
        error = self.assertRaises(StartupError, service.apply, withTLS)
        self.assertEqual(str(error), "adding tls-certificates on tcp:0:interface=127.0.0.1 "
                                     "needs a restart")
        self.assertIs(service.config, plain)
        service = ProxyService(withTLS, MemoryReactorClock())
        error = self.assertRaises(StartupError, service.apply, plain)
        self.assertIn("removing tls-certificates", str(error))

    def test_plainListener(self) -> None:
        """
        A proxy without C{tls-*} keys gets plain listeners.
        """
        service = ProxyService(self.load(""), MemoryReactorClock())
        [listener] = service.listeners
        self.assertIsNone(listener.tls)
        self.assertNotIsInstance(listener.endpoint, TLSListenEndpoint)
