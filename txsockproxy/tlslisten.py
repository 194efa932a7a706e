"""
TLS termination on a proxy's own listeners (the C{tls-*} keys): several
certificates on one listener, chosen by the client's SNI name, the first
being the default; optional checking of clients' certificates; a lowest TLS
version; certificates replaced on a reload without closing the listener.

A L{ServerTLS} makes one pyOpenSSL context per certificate, through
Twisted's L{CertificateOptions}, and gives each connection the default one;
a server-name callback on it switches the connection to the context of the
name the client asked for.  L{TLSListenEndpoint} wraps a plain server
endpoint (C{tcp:}, C{unix:}, C{systemd:}, C{haproxy:}...) so that what it
accepts speaks TLS, through Twisted's public L{TLSMemoryBIOFactory}: the
relay sees the same TLS transport as on an C{ssl:} listener (it waits for
the handshake, and reads the SNI name from the transport's handle).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL.crypto import X509, PKey
from OpenSSL.SSL import Connection, Context
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from txsockproxy.alpn import declineUnmatchedALPN
from txsockproxy.config import ListenTLSConfig, TLSCertificateConfig

_VERSIONS = {
    "1.2": TLSVersion.TLSv1_2,
    "1.3": TLSVersion.TLSv1_3,
}


def _context(certificate: TLSCertificateConfig, config: ListenTLSConfig) -> Context:
    """
    The server context of one certificate, with the listener's settings.
    """
    chain = x509.load_pem_x509_certificates(certificate.certPEM)
    key = serialization.load_pem_private_key(certificate.keyPEM, password=None)
    options: dict[str, Any] = {"raiseMinimumTo": _VERSIONS[config.minVersion]}
    if config.verifyClient != "off":
        options["verify"] = True
        options["caCerts"] = [
            X509.from_cryptography(ca) for ca in x509.load_pem_x509_certificates(
                config.clientCAPEM)
        ]
        options["requireCertificate"] = config.verifyClient == "required"
    context = CertificateOptions(
        privateKey=PKey.from_cryptography_key(key),  # type: ignore[arg-type]
        certificate=X509.from_cryptography(chain[0]),
        extraCertChain=[X509.from_cryptography(c) for c in chain[1:]],
        **options,
    ).getContext()
    # Twisted's ALPN callback fails clients that offer ALPN (txsockproxy.alpn).
    declineUnmatchedALPN(context)
    return context


def matchName(name: str, names: dict[str, Context]) -> Optional[Context]:
    """
    The context for the SNI name C{name}: the certificate naming it exactly,
    else one with a wildcard for its first label (C{*.example.com}).
    """
    found = names.get(name)
    if found is None:
        _, dot, parent = name.partition(".")
        if dot and parent:
            found = names.get("*." + parent)
    return found


def _nothing() -> None:
    return None


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS side of a listener: its contexts, by SNI name, and the default.

    @ivar config: the settings its contexts were made from.
    """

    def __init__(self, config: ListenTLSConfig) -> None:
        self.config = config
        self._default, self._byName = self._contexts(config)

    @staticmethod
    def _contexts(config: ListenTLSConfig) -> tuple[Context, dict[str, Context]]:
        contexts = [_context(c, config) for c in config.certificates]
        byName: dict[str, Context] = {}
        for certificate, context in zip(config.certificates, contexts, strict=True):
            for name in certificate.names:
                # The first certificate naming a name serves it.
                byName.setdefault(name, context)
        default = contexts[0]

        def chooseByName(connection: Connection) -> None:
            raw = connection.get_servername()
            if not raw:
                return
            context = matchName(raw.decode("ascii", "replace").lower().rstrip("."), byName)
            if context is not None and context is not default:
                connection.set_context(context)

        default.set_tlsext_servername_callback(chooseByName)
        return default, byName

    def prepare(self, config: ListenTLSConfig) -> Callable[[], None]:
        """
        Make the contexts of C{config} now (the part that can fail), to be
        used once the returned switch is called: from then on new
        connections get C{config}'s certificates and settings; connections
        open go on with theirs.

        @raise Exception: OpenSSL refuses the certificates (the reader
            checked them: not expected); nothing was changed.
        """
        if config == self.config:
            return _nothing
        default, byName = self._contexts(config)

        def switch() -> None:
            self._default, self._byName, self.config = default, byName, config

        return switch

    def use(self, config: ListenTLSConfig) -> None:
        """
        Serve new connections with C{config} (see L{prepare}).
        """
        self.prepare(config)()

    def names(self) -> list[str]:
        """
        The SNI names served by a certificate of their own.
        """
        return sorted(self._byName)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Connection:
        """
        A connection with the default context; the SNI callback may switch.

        @return: a new L{Connection}.
        """
        return Connection(self._default, None)


@implementer(IStreamServerEndpoint)
class TLSListenEndpoint:
    """
    A server endpoint that listens with C{endpoint}, with TLS on what it
    accepts, terminated by C{tls}, through the factory C{wrap} makes (called
    as L{TLSMemoryBIOFactory}, the default).
    """

    def __init__(
        self, endpoint: IStreamServerEndpoint, tls: ServerTLS,
        wrap: Callable[[Any, bool, Any], IProtocolFactory] = TLSMemoryBIOFactory,
    ) -> None:
        self.endpoint = endpoint
        self.tls = tls
        # Called as TLSMemoryBIOFactory (the accelerator's may stand in).
        self.wrap = wrap

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen with the wrapped endpoint, wrapping C{protocolFactory}'s
        protocols in TLS.

        @return: the wrapped endpoint's Deferred of its port.
        """
        return self.endpoint.listen(self.wrap(self.tls, False, protocolFactory))


__all__ = ["ServerTLS", "TLSListenEndpoint", "matchName"]
