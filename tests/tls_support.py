"""
Certificates for the TLS listener tests, made with C{cryptography}: an
authority, certificates for DNS names signed by it (or self-signed), and
Python C{ssl} clients that report what the server showed them.
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
from cryptography.x509.oid import NameOID


@dataclass
class Issued:
    """
    A certificate and its key, in memory and as PEM.
    """

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certPEM(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def keyPEM(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, directory: str, stem: str) -> tuple[str, str]:
        """
        Write C{STEM.pem} and C{STEM.key} in C{directory}.

        @return: their paths.
        """
        cert = os.path.join(directory, stem + ".pem")
        key = os.path.join(directory, stem + ".key")
        with open(cert, "wb") as f:
            f.write(self.certPEM)
        with open(key, "wb") as f:
            f.write(self.keyPEM)
        return cert, key


def issue(
    names: tuple[str, ...],
    issuer: Optional[Issued] = None,
    authority: bool = False,
    days: int = 30,
    start: int = -1,
    addresses: tuple[str, ...] = (),
    curve: ec.EllipticCurve = ec.SECP256R1(),
) -> Issued:
    """
    A certificate for the DNS C{names} (the first also its common name),
    signed by C{issuer} or self-signed, valid from C{start} days from now
    for C{days} days; the IP C{addresses} are in its subjectAltName too.
    Its key is on C{curve}.
    """
    key = ec.generate_private_key(curve)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=start))
        .not_valid_after(now + datetime.timedelta(days=start + days))
        .add_extension(x509.BasicConstraints(ca=authority, path_length=None), critical=True)
    )
    if not authority:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names]
                + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
            ),
            critical=False,
        )
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def clientContext(
    version: Optional[ssl.TLSVersion] = None, cert: Optional[tuple[str, str]] = None
) -> ssl.SSLContext:
    """
    A client context that does not check the server (the tests look at the
    certificate it shows), limited to C{version} if given, presenting
    C{cert} (certificate and key files) if given.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if version is not None:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = version
        context.maximum_version = version
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def served(
    port: int, serverName: Optional[str], payload: bytes = b"ping",
    context: Optional[ssl.SSLContext] = None,
) -> tuple[x509.Certificate, bytes]:
    """
    Connect to C{port} on loopback with TLS, asking for C{serverName} by
    SNI, send C{payload} and read as many bytes back.

    @return: the certificate the server showed, and what came back.
    """
    context = context if context is not None else clientContext()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=serverName) as conn:
            der = conn.getpeercert(binary_form=True)
            assert der is not None
            conn.sendall(payload)
            received = b""
            while len(received) < len(payload):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                received += chunk
    return x509.load_der_x509_certificate(der), received
