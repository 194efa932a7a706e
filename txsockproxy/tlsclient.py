"""
TLS to backends, as part of connecting: a backend's connect succeeds only
once its TLS handshake and certificate check have, so that a backend whose
certificate does not verify (or whose handshake fails or times out) is a
failed connect like a refused one (disabled, counted, logged, and the
session fails over) rather than a session reset under a client.

L{HandshakingEndpoint} wraps a TLS client endpoint (Twisted's
C{wrapClientTLS}, or a C{tls:} endpoint string): its C{connect()} fires with
the protocol only after the handshake, and fails with a L{TLSConnectError}
saying why. L{backendEndpoint} builds a backend's endpoint from its config;
L{readCertificates}, L{readKey} and L{endpointHost} check a config's TLS
keys when it is loaded.
"""

from __future__ import annotations

import datetime
import ipaddress
from contextvars import ContextVar
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.pyopenssl import verify_hostname, verify_ip_address
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, wrapClientTLS
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from txsockproxy.config import BackendConfig, BackendTLS
from txsockproxy.readfile import readBounded
from txsockproxy.tlsconfig import openSSLRefuses

_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}


class TLSConnectError(Exception):
    """
    A backend's TLS handshake failed or did not finish in time; C{str()}
    says why, in one line.
    """


def isTLSEndpoint(description: str) -> bool:
    """
    Whether the client endpoint string C{description} is Twisted's C{tls:}.
    """
    return description.split(":", 1)[0].strip().lower() == "tls"


# -- the endpoint ---------------------------------------------------------------


class _Attempt:
    """
    One connect through a L{HandshakingEndpoint}: the TCP connect, then the
    handshake, then the caller's protocol.
    """

    def __init__(self, factory: IProtocolFactory, name: Optional[str]) -> None:
        self.factory = factory
        self.name = name
        self.result: defer.Deferred[IProtocol] = defer.Deferred(self._cancel)
        self.connecting: Optional[defer.Deferred[Any]] = None
        self.waiter: Optional[_Handshaking] = None

    def _cancel(self, result: defer.Deferred[IProtocol]) -> None:
        waiter = self.waiter
        if waiter is None:
            if self.connecting is not None:
                # Still connecting: its failure fails the result.
                self.connecting.cancel()
            return
        # Connected, handshaking: the connect timeout (a client that left
        # cancels too, but its session does not report the failure).
        self.waiter = None
        result.errback(
            Failure(TLSConnectError("TLS handshake timeout (not done within connect-timeout)"))
        )
        waiter.transport.abortConnection()  # type: ignore[union-attr]

    def connectFailed(self, reason: Failure) -> None:
        self.connecting = None
        if not self.result.called:
            self.result.errback(reason)

    def handshakeCompleted(self, waiter: _Handshaking) -> None:
        if self.result.called:
            return
        self.waiter = None
        tls = waiter.transport
        if not isinstance(tls, ProtocolWrapper) or tls.wrappedProtocol is not waiter:
            # Not Twisted's TLS protocol around us: nothing to hand over to.
            self.result.errback(Failure(TLSConnectError("not a TLS transport")))
            tls.abortConnection()  # type: ignore[union-attr]
            return
        if self.name is not None:
            problem = identityProblem(tls.getHandle(), self.name)
            if problem:
                self.result.errback(Failure(TLSConnectError(problem)))
                tls.abortConnection()
                return
        protocol = self.factory.buildProtocol(waiter.address)
        if protocol is None:
            self.result.errback(Failure(TLSConnectError("connection refused by the factory")))
            tls.abortConnection()
            return
        # From now on the TLS layer talks to the caller's protocol, with no
        # layer of ours in between.
        tls.wrappedProtocol = protocol
        protocol.makeConnection(tls)
        self.result.callback(protocol)

    def lost(self, waiter: _Handshaking, reason: Failure) -> None:
        self.waiter = None
        if not self.result.called:
            self.result.errback(Failure(TLSConnectError(describeHandshakeFailure(waiter, reason))))


@implementer(IHandshakeListener)
class _Handshaking(Protocol):
    """
    The protocol under the TLS layer until its handshake is done.
    """

    def __init__(self, attempt: _Attempt, address: Optional[IAddress]) -> None:
        self.attempt = attempt
        self.address = address

    def connectionMade(self) -> None:
        self.attempt.waiter = self

    def handshakeCompleted(self) -> None:
        self.attempt.handshakeCompleted(self)

    def dataReceived(self, data: bytes) -> None:
        # TLS delivers no application data before its handshake is done,
        # and after it the caller's protocol has taken over.
        pass

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.attempt.lost(self, reason)


class _HandshakingFactory(Factory):
    """
    Builds the L{_Handshaking} protocol of one attempt.
    """

    noisy = False

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt

    def buildProtocol(self, addr: IAddress) -> Optional[Protocol]:  # type: ignore[override]
        return _Handshaking(self.attempt, addr)


@implementer(IStreamClientEndpoint)
class HandshakingEndpoint:
    """
    A TLS client endpoint whose connects succeed only once the TLS handshake
    (certificate check included) is done: the caller's protocol is built and
    connected then, and a failed or cancelled handshake fails the connect
    with a L{TLSConnectError}.

    @ivar wrapped: the TLS endpoint (C{wrapClientTLS}, or a C{tls:} endpoint
        string's): its protocols are told of the handshake
        (L{IHandshakeListener}).
    @ivar name: the name the certificate must be valid for, checked again
        once the handshake is done (see L{identityProblem}), or L{None}.
    """

    def __init__(self, wrapped: IStreamClientEndpoint, name: Optional[str] = None) -> None:
        self.wrapped = wrapped
        self.name = name

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        attempt = _Attempt(protocolFactory, self.name)
        # Bytes to send in clear before the handshake (a PROXY protocol
        # header): for the PreambleEndpoint under the TLS layer, which the
        # TLS endpoint connects within this call.
        token = _preamble.set(getattr(protocolFactory, "preamble", b""))
        try:
            connecting = self.wrapped.connect(_HandshakingFactory(attempt))
        finally:
            _preamble.reset(token)
        attempt.connecting = connecting
        connecting.addCallbacks(_forget, attempt.connectFailed)
        return attempt.result


def _forget(result: object) -> None:
    return None


# What HandshakingEndpoint.connect gives the PreambleEndpoint under it.
_preamble: ContextVar[bytes] = ContextVar("txsockproxy.tlsclient.preamble", default=b"")


class _PreambleProtocol(ProtocolWrapper):
    """
    Sends the preamble on the bare connection, then hands it to the
    wrapped (TLS) protocol.
    """

    def connectionMade(self) -> None:
        self.transport.write(self.factory.preamble)  # type: ignore[union-attr]
        super().connectionMade()


class _PreambleFactory(WrappingFactory):
    protocol = _PreambleProtocol
    noisy = False

    def __init__(self, wrappedFactory: IProtocolFactory, preamble: bytes) -> None:
        super().__init__(wrappedFactory)
        self.preamble = preamble


@implementer(IStreamClientEndpoint)
class PreambleEndpoint:
    """
    Connects through C{endpoint}; when a L{HandshakingEndpoint} over it
    connects for a factory with a C{preamble} (the PROXY protocol header a
    C{send-proxy} backend is sent), those bytes go first, in clear, before
    the TLS handshake, as a server that expects both reads them.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self.endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        preamble = _preamble.get()
        if not preamble:
            return self.endpoint.connect(protocolFactory)
        return self.endpoint.connect(_PreambleFactory(protocolFactory, preamble))


# -- why a handshake failed -------------------------------------------------------


def identityProblem(connection: Any, name: str) -> Optional[str]:
    """
    Check that the peer certificate of C{connection} (a pyOpenSSL
    connection whose handshake is done) is valid for C{name}.

    Twisted checks it during the handshake, but takes a certificate without
    a subjectAltName (which service_identity refuses with a
    C{CertificateError}, not a C{VerificationError}) for valid for any
    name, logging a traceback: it is refused here.

    @return: L{None}, or why it is not valid, in one line.
    """
    try:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            verify_hostname(connection, name)
        else:
            verify_ip_address(connection, name)
    except VerificationError as e:
        return f"TLS certificate does not match the name: {_identityErrors(e)}"
    except CertificateError as e:
        return f"TLS certificate is not valid for {name!r}: {e}"
    return None


def describeHandshakeFailure(waiter: Protocol, reason: Failure) -> str:
    """
    One line for a TLS handshake that ended with C{reason}: the hostname
    mismatch, the certificate's expiry, an unknown CA, OpenSSL's reason
    strings, or a connection closed during the handshake.
    """
    value = reason.value
    name = type(value).__name__
    if name == "VerificationError":
        # service_identity's: the certificate is not for the name.
        return f"TLS certificate does not match the name: {_identityErrors(value)}"
    reasons = _opensslReasons(value)
    if isinstance(value, SSL.Error):
        text = "; ".join(reasons) or str(value)
        if "certificate verify failed" in text:
            return f"TLS certificate verify failed: {_leafProblem(waiter)}"
        return f"TLS handshake failed: {text}"
    text = str(value).strip() or name
    return f"connection lost during TLS handshake: {text}"


def _identityErrors(value: Any) -> str:
    errors = getattr(value, "errors", None) or ()
    names = []
    for error in errors:
        mismatched = getattr(error, "mismatched_id", None)
        wanted = getattr(mismatched, "hostname", None) or getattr(mismatched, "ip", None)
        if isinstance(wanted, bytes):
            wanted = wanted.decode("ascii", "replace")
        if wanted is not None:
            names.append(f"not valid for {str(wanted)!r}")
    return "; ".join(names) or str(value)


def _opensslReasons(value: Any) -> list[str]:
    errors = getattr(value, "args", ())
    reasons: list[str] = []
    if errors and isinstance(errors[0], list):
        for entry in errors[0]:
            if isinstance(entry, tuple) and entry:
                reasons.append(str(entry[-1]))
    return reasons


def _leafProblem(waiter: Protocol) -> str:
    """
    Why the backend's certificate did not verify, as far as its own dates
    tell: OpenSSL says only "certificate verify failed".
    """
    try:
        chain = waiter.transport.getHandle().get_peer_cert_chain()  # type: ignore[union-attr]
    except Exception:
        chain = None
    if chain:
        leaf = chain[0].to_cryptography()
        now = datetime.datetime.now(datetime.UTC)
        if now > leaf.not_valid_after_utc:
            return f"certificate has expired (not valid after {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC)"
        if now < leaf.not_valid_before_utc:
            return f"certificate is not yet valid (not before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC)"
    return "not signed by a trusted CA (unknown CA, or self-signed)"


# -- building a backend's endpoint ----------------------------------------------


def connectionCreator(tls: BackendTLS) -> IOpenSSLClientConnectionCreator:
    """
    The TLS client settings of C{tls}: its name (sent as SNI; the
    certificate is checked against it by L{HandshakingEndpoint}, see
    L{ChainVerdict}), its trusted CAs (the system's when none are given),
    its client certificate and the oldest TLS version.
    """
    trustRoot: Any = None
    if tls.caPEM:
        trustRoot = trustRootFromCertificates(
            [Certificate.loadPEM(pem) for pem in _certificatePEMs(tls.caPEM)]
        )
    clientCertificate = None
    extra: dict[str, Any] = {"raiseMinimumTo": _VERSIONS[tls.minVersion]}
    if tls.certPEM:
        first, *chain = _certificatePEMs(tls.certPEM)
        clientCertificate = PrivateCertificate.loadPEM(first + tls.keyPEM)
        if chain:
            extra["extraCertChain"] = [Certificate.loadPEM(pem).original for pem in chain]
    return ChainVerdict(optionsForClientTLS(
        tls.name, trustRoot=trustRoot, clientCertificate=clientCertificate,
        extraCertificateOptions=extra,
    ))


@implementer(IOpenSSLClientConnectionCreator)
class ChainVerdict:
    """
    The TLS client connections of C{creator}, whose certificate check is
    OpenSSL's verdict on the chain alone; the name is checked once the
    handshake is done (L{identityProblem}, by L{HandshakingEndpoint}),
    before a byte of the client's is sent.

    Twisted's own check of the name, during the handshake, raises inside
    OpenSSL's callback for a certificate without a subjectAltName
    (service_identity's C{CertificateError}), logs that as a traceback at
    critical level, and lets the certificate through: one traceback per
    connect and per health check of such a backend.
    """

    def __init__(self, creator: IOpenSSLClientConnectionCreator) -> None:
        self.creator = creator

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self.creator.clientConnectionForTLS(tlsProtocol)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _chainVerdict)
        return connection


def _chainVerdict(connection: Any, certificate: Any, errno: int, depth: int, ok: int) -> bool:
    return bool(ok)


def backendEndpoint(reactor: Any, config: BackendConfig) -> IStreamClientEndpoint:
    """
    The endpoint a backend connects through: its endpoint string's, in TLS
    when C{config.tls} asks for it, and handshaking before it reports a
    connect for TLS (C{tls}, or a C{tls:} endpoint string).
    """
    endpoint = clientFromString(reactor, config.endpoint)
    if config.tls is not None:
        endpoint = wrapClientTLS(
            connectionCreator(config.tls), PreambleEndpoint(endpoint), clock=reactor
        )
        return HandshakingEndpoint(endpoint, config.tls.name)
    if isTLSEndpoint(config.endpoint):
        return HandshakingEndpoint(endpoint)
    return endpoint


# -- checking a config ------------------------------------------------------------


def _certificatePEMs(data: bytes) -> list[bytes]:
    return [
        cert.public_bytes(serialization.Encoding.PEM)
        for cert in x509.load_pem_x509_certificates(data)
    ]


def _read(path: str) -> bytes:
    try:
        return readBounded(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path!r}: {getattr(e, 'strerror', None) or e}") from None


def readCertificates(path: str) -> bytes:
    """
    Read the PEM certificates of the file C{path}.

    @return: its contents.
    @raise ValueError: it cannot be read, or holds no PEM certificate (or a
        broken one); the message says which, in one line.
    """
    data = _read(path)
    try:
        _certificatePEMs(data)
    except ValueError:
        raise ValueError(f"{path!r} holds no PEM certificate (or a broken one)") from None
    return data


def readKey(path: str, certPEM: bytes) -> bytes:
    """
    Read the PEM private key of the file C{path}, which must be that of the
    first certificate in C{certPEM}.

    @return: its contents.
    @raise ValueError: it cannot be read, is not an unencrypted PEM private
        key, or is not the certificate's key.
    """
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(
            f"{path!r} holds no unencrypted PEM private key (or a broken one)"
        ) from None
    if certPEM:
        cert = x509.load_pem_x509_certificates(certPEM)[0]
        mine = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        theirs = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if mine != theirs:
            raise ValueError(f"{path!r} is not the key of the certificate in tls-cert")
        refused = openSSLRefuses(certPEM, data)
        if refused:
            raise ValueError(f"{path!r} and tls-cert: {refused}")
    return data


class _Found(Exception):
    def __init__(self, host: str) -> None:
        self.host = host


@implementer(IReactorTCP)
class _HostRecorder:
    """
    Stands in for a reactor to learn which host a client endpoint string's
    endpoint would connect to (Twisted keeps it in private attributes).
    """

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,
                   bindAddress: Any = None) -> Any:
        raise _Found(host)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise NotImplementedError("only connects are recorded")


def endpointHost(description: str) -> Optional[str]:
    """
    The host a C{tcp:} client endpoint string connects to, or L{None} for
    other endpoint types (whose TLS needs C{tls-name}).
    """
    try:
        endpoint = clientFromString(_HostRecorder(), description)
    except Exception:
        return None
    found: list[str] = []

    def failed(reason: Failure) -> None:
        if isinstance(reason.value, _Found):
            found.append(reason.value.host)

    try:
        endpoint.connect(Factory.forProtocol(Protocol)).addErrback(failed)
    except Exception:
        return None
    return found[0] if found else None


__all__ = [
    "ChainVerdict",
    "HandshakingEndpoint",
    "TLSConnectError",
    "backendEndpoint",
    "connectionCreator",
    "describeHandshakeFailure",
    "endpointHost",
    "identityProblem",
    "isTLSEndpoint",
    "readCertificates",
    "readKey",
]
