"""
Reading the C{tls-*} keys of a proxy (TLS termination on its own listeners)
into a L{ListenTLSConfig}, and reading and checking the certificate, key and
client-CA files they name, when a configuration is loaded.

Loading runs on a thread on a reload (see L{txsockproxy.service}), so the
files are read here, never when a listener makes its contexts: a listener
gets the bytes read and checked, or keeps what it had.  Every problem is one
line naming the file and what is wrong with it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID
from OpenSSL import SSL

from txsockproxy.config import (
    DEFAULT_TLS_MIN_VERSION,
    TLS_VERSIONS,
    VERIFY_CLIENT,
    ListenTLSConfig,
    TLSCertificateConfig,
)
from txsockproxy.readfile import readBounded


def _read(path: str) -> tuple[bytes, str]:
    try:
        return readBounded(path), ""
    except (OSError, ValueError) as e:
        # ValueError: a path the system refuses before trying (a NUL in it).
        return b"", f"cannot read {path!r}: {getattr(e, 'strerror', None) or e}"


def _certificates(pem: bytes, path: str) -> tuple[list[x509.Certificate], str]:
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        return [], f"{path!r} holds no PEM certificate"
    try:
        return x509.load_pem_x509_certificates(pem), ""
    except ValueError as e:
        return [], f"{path!r}: not a valid PEM certificate: {e}"


def certificateNames(certificate: x509.Certificate) -> tuple[str, ...]:
    """
    The DNS names a certificate serves: its C{subjectAltName} DNS names, or
    its common name when it has none; lower case, without a final dot.
    """
    names: list[str] = []
    try:
        san = certificate.extensions.get_extension_for_oid(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME
        ).value
    except x509.ExtensionNotFound:
        san = None
    if isinstance(san, x509.SubjectAlternativeName):
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    if not names:
        names = [str(a.value) for a in certificate.subject.get_attributes_for_oid(
            NameOID.COMMON_NAME)]
    return tuple(dict.fromkeys(n.lower().rstrip(".") for n in names if n))


def openSSLRefuses(certPEM: bytes, keyPEM: bytes) -> Optional[str]:
    """
    Why OpenSSL, with its default security level, would refuse to use the
    certificate (the first of C{certPEM}) and key C{keyPEM} (a key too
    small, a digest too weak, ...), or L{None}: what loads as PEM may still
    be refused when a connection is made with it.
    """
    try:
        context = SSL.Context(SSL.TLS_METHOD)
        context.use_certificate(x509.load_pem_x509_certificates(certPEM)[0])
        context.use_privatekey(
            serialization.load_pem_private_key(keyPEM, password=None)  # type: ignore[arg-type]
        )
        context.check_privatekey()
    except SSL.Error as e:
        reasons = [str(entry[-1]) for entry in (e.args[0] if e.args else ()) if entry]
        return "OpenSSL refuses it: " + ("; ".join(reasons) or str(e))
    return None


def readCertificatePair(
    cert: str, key: str, now: Optional[datetime.datetime] = None
) -> tuple[Optional[TLSCertificateConfig], str, tuple[str, ...]]:
    """
    Read a certificate file (the certificate, then its chain) and its key
    file, and check that they are PEM and belong together.

    @param now: the time to check validity against; by default, now.
    @return: the certificate (or L{None}), what is wrong (or C{""}), and
        notices: a certificate that is expired or not valid yet is used,
        and said so.
    """
    certPEM, error = _read(cert)
    if error:
        return None, error, ()
    keyPEM, error = _read(key)
    if error:
        return None, error, ()
    chain, error = _certificates(certPEM, cert)
    if error:
        return None, error, ()
    if b"-----BEGIN" not in keyPEM or b"PRIVATE KEY-----" not in keyPEM:
        return None, f"{key!r} holds no PEM private key", ()
    try:
        privateKey = serialization.load_pem_private_key(keyPEM, password=None)
    except TypeError:
        return None, f"{key!r}: the key is encrypted: give an unencrypted key", ()
    except (ValueError, UnsupportedAlgorithm) as e:
        return None, f"{key!r}: not a valid PEM private key: {e}", ()
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if leaf.public_key().public_bytes(der, public) != privateKey.public_key().public_bytes(
        der, public
    ):
        return None, f"{key!r} is not the key of the certificate in {cert!r}", ()
    refused = openSSLRefuses(certPEM, keyPEM)
    if refused:
        return None, f"{cert!r} and {key!r}: {refused}", ()
    notices: list[str] = []
    when = now if now is not None else datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc < when:
        notices.append(
            f"the certificate in {cert!r} expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
        )
    elif leaf.not_valid_before_utc > when:
        notices.append(
            f"the certificate in {cert!r} is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M}Z"
        )
    config = TLSCertificateConfig(
        cert=cert, key=key, names=certificateNames(leaf), certPEM=certPEM, keyPEM=keyPEM
    )
    return config, "", tuple(notices)


def readClientCA(path: str) -> tuple[bytes, str]:
    """
    Read a file of PEM certificate authorities for checking clients'
    certificates.

    @return: its contents and C{""}, or C{b""} and what is wrong.
    """
    pem, error = _read(path)
    if error:
        return b"", error
    _, error = _certificates(pem, path)
    if error:
        return b"", error
    return pem, ""


class Reader(Protocol):
    """
    What collects the problems of a configuration source (the TOML
    reader's).
    """

    notices: list[str]

    def problem(self, path: tuple[Any, ...], message: str) -> None:
        """
        Record a problem at the key C{path}.
        """

    def string(
        self, table: Mapping[str, Any], path: tuple[Any, ...], key: str, nonEmpty: bool = True
    ) -> Optional[str]:
        """
        Read a string at C{key}: the value, or L{None} when missing or wrong.
        """


_KEYS = ("tls-certificates", "tls-client-ca", "tls-verify-client", "tls-min-version")
_PAIR_KEYS = ("cert", "key")


def _sslListeners(listen: Sequence[str]) -> list[str]:
    return [desc for desc in listen if desc.split(":", 1)[0].strip().lower() == "ssl"]


def readListenTLS(
    raw: Mapping[str, Any], path: tuple[Any, ...], listen: Sequence[str], reader: Reader
) -> Optional[ListenTLSConfig]:
    """
    Read the C{tls-*} keys of the proxy table C{raw} at C{path}, reading the
    files they name.

    @param listen: the proxy's listen endpoint strings (an C{ssl:} one has
        its own certificate, and cannot have these).
    @return: the proxy's TLS settings, or L{None} when it has none (or they
        are wrong: the problems are recorded in C{reader}).
    """
    given = [key for key in _KEYS if key in raw]
    if not given:
        return None
    if "tls-certificates" not in raw:
        reader.problem(path + (given[0],),
                       "needs tls-certificates (the listeners' certificates and keys)")
        return None
    certificates = _readCertificates(raw["tls-certificates"], path + ("tls-certificates",),
                                     reader)
    for desc in _sslListeners(listen):
        reader.problem(path + ("listen",),
                       f"{desc!r} has a certificate of its own: with tls-certificates, "
                       "listen on tcp:, tcp6:, unix:... and the proxy adds TLS")
    clientCA = reader.string(raw, path, "tls-client-ca") or ""
    clientCAPEM = b""
    if clientCA:
        clientCAPEM, error = readClientCA(clientCA)
        if error:
            reader.problem(path + ("tls-client-ca",), error)
    verify = reader.string(raw, path, "tls-verify-client")
    if verify is None:
        verify = "required" if clientCA else "off"
    elif verify not in VERIFY_CLIENT:
        reader.problem(path + ("tls-verify-client",),
                       f"must be one of {', '.join(map(repr, VERIFY_CLIENT))}, not {verify!r}")
        verify = "off"
    elif verify != "off" and not clientCA:
        reader.problem(path + ("tls-verify-client",),
                       f"{verify!r} needs tls-client-ca (the authorities to check against)")
    minVersion = _readVersion(raw, path, reader)
    if certificates is None or not certificates:
        return None
    return ListenTLSConfig(
        certificates=tuple(certificates), clientCA=clientCA, clientCAPEM=clientCAPEM,
        verifyClient=verify, minVersion=minVersion,
    )


def _readVersion(raw: Mapping[str, Any], path: tuple[Any, ...], reader: Reader) -> str:
    value = raw.get("tls-min-version", DEFAULT_TLS_MIN_VERSION)
    # A TOML float (1.2) is what was meant too.
    if isinstance(value, float):
        value = f"{value:.1f}"
    if not isinstance(value, str) or value not in TLS_VERSIONS:
        reader.problem(path + ("tls-min-version",),
                       f"must be one of {', '.join(map(repr, TLS_VERSIONS))}, not {value!r}")
        return DEFAULT_TLS_MIN_VERSION
    return value


def _readCertificates(
    value: Any, path: tuple[Any, ...], reader: Reader
) -> Optional[list[TLSCertificateConfig]]:
    if not isinstance(value, list) or not value:
        reader.problem(path, 'must be a non-empty array of tables: [{cert = "a.pem", '
                             'key = "a.key"}, ...]')
        return None
    certificates: list[TLSCertificateConfig] = []
    for j, pair in enumerate(value):
        here = path + (j,)
        if not isinstance(pair, dict):
            reader.problem(here, 'must be a table: {cert = "a.pem", key = "a.key"}')
            continue
        for key in pair:
            if key not in _PAIR_KEYS:
                reader.problem(here + (key,), "unknown key (give cert and key)")
        cert = reader.string(pair, here, "cert")
        key = reader.string(pair, here, "key")
        for name in ("cert", "key"):
            if name not in pair:
                reader.problem(here + (name,), "missing")
        if cert is None or key is None:
            continue
        certificate, error, notices = readCertificatePair(cert, key)
        if certificate is None:
            reader.problem(here, error)
            continue
        reader.notices.extend(notices)
        certificates.append(certificate)
    return certificates


__all__ = [
    "certificateNames",
    "openSSLRefuses",
    "readCertificatePair",
    "readClientCA",
    "readListenTLS",
]
