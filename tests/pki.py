"""
A small certificate authority for the TLS backend tests, made with
C{cryptography} when a test asks for it: a CA, server certificates it signs
(for a name, expired, or for another host), a certificate of an unknown CA,
and client certificates for mutual TLS; and TLS servers on threads
(Python's C{ssl}) that serve them as backends.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration_support import Handler, Server

_DAY = datetime.timedelta(days=1)


def _key() -> ec.EllipticCurvePrivateKey:
    # EC keys: an RSA key takes tens of milliseconds to make.
    return ec.generate_private_key(ec.SECP256R1())


def _keyPEM(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Issued:
    """
    A certificate and its key, PEM.
    """

    cert: bytes
    key: bytes

    def write(self, directory: str, name: str) -> tuple[str, str]:
        """
        Write the certificate and the key to C{name}.crt and C{name}.key
        under C{directory}.

        @return: their paths.
        """
        certPath = os.path.join(directory, f"{name}.crt")
        keyPath = os.path.join(directory, f"{name}.key")
        with open(certPath, "wb") as f:
            f.write(self.cert)
        with open(keyPath, "wb") as f:
            f.write(self.key)
        return certPath, keyPath


class Authority:
    """
    A self-signed CA that issues server and client certificates.
    """

    def __init__(self, name: str = "txsockproxy test CA") -> None:
        self.key = _key()
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        """
        The CA's certificate, PEM: what C{tls-ca} names.
        """
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        names: tuple[str, ...] = ("localhost", "127.0.0.1"),
        expired: bool = False,
        client: bool = False,
        alternativeNames: bool = True,
    ) -> Issued:
        """
        A certificate for C{names} (DNS names, or IP addresses), signed by
        this CA: valid now, or (C{expired}) until yesterday; for a server, or
        (C{client}) for a client; with the names as subjectAltNames, or (not
        C{alternativeNames}) the first as its common name only.
        """
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        start, end = (now - 30 * _DAY, now - _DAY) if expired else (now - _DAY, now + 30 * _DAY)
        alternatives: list[x509.GeneralName] = []
        for name in names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
        )
        if alternativeNames:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alternatives), critical=False
            )
        cert = (
            builder
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _keyPEM(key))

    def writeCA(self, directory: str, name: str = "ca") -> str:
        """
        Write the CA's certificate to C{name}.pem under C{directory}.

        @return: its path.
        """
        path = os.path.join(directory, f"{name}.pem")
        with open(path, "wb") as f:
            f.write(self.pem)
        return path


def serverContext(
    issued: Issued, directory: str, clientCA: Optional[str] = None
) -> ssl.SSLContext:
    """
    A server context presenting C{issued}; requiring a client certificate
    signed by the CA in the file C{clientCA}, if given.
    """
    certPath, keyPath = issued.write(directory, f"server-{id(issued)}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certPath, keyPath)
    if clientCA is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(clientCA)
    return context


def tlsEchoHandler(context: ssl.SSLContext) -> Handler:
    """
    A handler for L{Server} that does the TLS handshake with C{context},
    then echoes until the client's end of stream (close_notify or FIN),
    and closes. A failed handshake ends the connection quietly: that is
    what the tests provoke.
    """

    def handle(conn: socket.socket, server: Server) -> None:
        try:
            tls = context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            while True:
                try:
                    data = tls.recv(65536)
                except ssl.SSLEOFError:
                    data = b""
                if not data:
                    break
                tls.sendall(data)
            try:
                tls.unwrap()
            except (ssl.SSLError, OSError):
                pass
        finally:
            tls.close()

    return handle
