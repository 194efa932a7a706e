"""
A leaner TLS layer for TLS listeners: Twisted's L{TLSMemoryBIOProtocol}
with its two hot loops replaced, so that a bulk transfer costs one call up
the stack per socket read or write rather than one per TLS record.

 - Receiving: Twisted hands each decrypted record (16 KiB at most) to the
   protocol as it comes out of OpenSSL; here the records that one read of
   the socket brought are decrypted first and handed over together (up to
   L{DELIVER_LIMIT}), so the session relays them with one write. Where
   pyOpenSSL's bindings have what it takes, OpenSSL decrypts them straight
   into one buffer (C{SSL_read}), copied out once, instead of one bytes
   object per record joined afterwards.
 - Sending: Twisted encrypts 16 KiB, then reads at most 32 KiB of records
   out of the memory BIO and writes them to the socket, once per record;
   here everything written is encrypted first, and the records are written
   to the socket with one call.

The order of the bytes, of the errors and of the end of the stream are
Twisted's: the protocol gets every byte decrypted before an alert or a
close_notify, and the records written before an error are sent.

Everything else (handshake, shutdown, producers, aborts) is Twisted's own;
L{missing} says which of its private names this relies on, checked before
it is used (L{tlsFactory} falls back to Twisted's factory).
"""

from __future__ import annotations

from typing import Any, Optional

from OpenSSL import SSL
from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.protocol import Protocol
from twisted.protocols import tls
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from txsockproxy._fast.relay import writeNow

# Plaintext handed to the protocol in one call at most (bytes).
DELIVER_LIMIT = 1 << 18

# The largest TLS record's plaintext, and what one SSL_read returns at most.
_RECORD = 1 << 14

# What one bio_read of the sending BIO takes at most (bytes).
_SEND_CHUNK = 1 << 18

# Private names of pyOpenSSL the direct read uses (Connection._ssl too,
# looked up per connection).
_OPENSSL_NAMES = ("SSL_read", "SSL_get_error", "SSL_ERROR_WANT_READ")

# Private names of twisted.protocols.tls this module uses.
_PROTOCOL_NAMES = (
    "_tlsConnection", "_lostTLSConnection", "_aborted", "_flushReceiveBIO", "_flushSendBIO",
    "_write", "_bufferedWrite", "_shutdownTLS", "_tlsShutdownFinished",
)


# The names Twisted's TLSMemoryBIOProtocol.makeConnection uses (26.4-26.10).
_MAKE_CONNECTION_NAMES = frozenset({
    "_tlsConnection", "factory", "_creatorCallable", "_appSendBuffer", "providedBy",
    "directlyProvides", "Protocol", "makeConnection", "registerProtocol", "_connectWrapped",
    "ProtocolWrapper", "_checkHandshakeStatus",
})


def _openssl() -> tuple[Any, Any]:
    """
    pyOpenSSL's OpenSSL bindings (C{lib}, C{ffi}), when they have what the
    direct read uses; else (L{None}, L{None}): records are read with
    C{Connection.recv}.
    """
    lib = getattr(SSL, "_lib", None)
    ffi = getattr(SSL, "_ffi", None)
    if not all(hasattr(lib, name) for name in _OPENSSL_NAMES) or not hasattr(ffi, "from_buffer"):
        return None, None
    return lib, ffi


_lib, _ffi = _openssl()
_WANT_READ = getattr(_lib, "SSL_ERROR_WANT_READ", None)
# The buffer records are decrypted into, shared (delivery copies out of it
# before the protocol runs), and where it is full: one more record might
# not fit.
_INBOX = bytearray(DELIVER_LIMIT)
_INBOX_VIEW = memoryview(_INBOX)
_INBOX_C = _ffi.from_buffer(_INBOX) if _ffi is not None else None
_INBOX_FULL = DELIVER_LIMIT - _RECORD


def _base() -> Any:
    return getattr(tls, "BufferingTLSTransport", tls.TLSMemoryBIOProtocol)


# What Twisted's makeConnection leaves directly provided, by what the
# transport provides (see FastTLSProtocol.makeConnection).
_lastInterface: dict[Any, Any] = {}


class FastTLSProtocol(_base()):  # type: ignore[misc]
    """
    Twisted's TLS protocol, receiving and sending in batches.
    """

    def makeConnection(self, transport: Any) -> None:
        """
        Twisted's C{makeConnection}, with its per-connection loop over the
        transport's interfaces (nine C{directlyProvides} calls, each
        replacing the last: about a tenth of a handshake's Python time)
        replaced by the one call whose result it leaves, looked up once per
        kind of transport.
        """
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer: list[bytes] = []
        spec = providedBy(transport)
        try:
            last = _lastInterface[spec]
        except (KeyError, TypeError):
            last = next(reversed(list(spec)), None)
            if len(_lastInterface) < 64:
                try:
                    _lastInterface[spec] = last
                except TypeError:
                    pass
        if last is not None:
            directlyProvides(self, last)
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()

    def _deliver(self, chunks: list[bytes]) -> None:
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if not self._aborted:
            self.wrappedProtocol.dataReceived(data)

    def _flushReceiveBIO(self) -> None:
        ssl = getattr(self._tlsConnection, "_ssl", None)
        if ssl is None or _INBOX_C is None:
            self._receiveByRecv()
            return
        # The records decrypted straight into one buffer (SSL_read), handed
        # over as one bytes object: no bytes object per record, no join.
        read = _lib.SSL_read
        n = 0
        while not self._lostTLSConnection:
            result = read(ssl, _INBOX_C + n, _RECORD)
            if result > 0:
                n += result
                if n > _INBOX_FULL:
                    self._deliverInbox(n)
                    n = 0
                continue
            if _lib.SSL_get_error(ssl, result) == _WANT_READ:
                break
            # An alert, a close_notify or an error: pyOpenSSL's recv (the
            # same SSL_read again) raises what Twisted's loop expects.
            if n:
                self._deliverInbox(n)
                n = 0
            self._receiveByRecv()
            return
        if n:
            self._deliverInbox(n)
        self._flushSendBIO()

    def _deliverInbox(self, n: int) -> None:
        # Copied out before the protocol runs: the buffer is shared.
        data = bytes(_INBOX_VIEW[:n])
        if not self._aborted:
            self.wrappedProtocol.dataReceived(data)

    def _receiveByRecv(self) -> None:
        connection = self._tlsConnection
        chunks: list[bytes] = []
        size = 0
        while not self._lostTLSConnection:
            try:
                data = connection.recv(_RECORD)
            except WantReadError:
                break
            except ZeroReturnError:
                if chunks:
                    self._deliver(chunks)
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                failure = Failure()
                if chunks:
                    self._deliver(chunks)
                self._tlsShutdownFinished(failure)
            else:
                chunks.append(data)
                size += len(data)
                if size >= DELIVER_LIMIT:
                    size = 0
                    self._deliver(chunks)
        if chunks:
            self._deliver(chunks)
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        connection = self._tlsConnection
        chunks: list[bytes] = []
        while True:
            try:
                data = connection.bio_read(_SEND_CHUNK)
            except WantReadError:
                break
            chunks.append(data)
            if len(data) < _SEND_CHUNK:
                break
        if chunks:
            writeNow(self.transport, chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        view = memoryview(data)
        total = len(data)
        sent = 0
        failure: Optional[Failure] = None
        while sent < total:
            try:
                sent += connection.send(view[sent:sent + _RECORD])
            except WantReadError:
                self._bufferedWrite(data[sent:])
                break
            except Error:
                failure = Failure()
                break
        view.release()
        self._flushSendBIO()
        if failure is not None:
            self._tlsShutdownFinished(failure)


class FastTLSFactory(tls.TLSMemoryBIOFactory):
    """
    Twisted's L{TLSMemoryBIOFactory}, making L{FastTLSProtocol}s.
    """

    protocol = FastTLSProtocol


def missing() -> list[str]:
    """
    The private names of Twisted's TLS layer this module relies on that
    this Twisted lacks.
    """
    cls = tls.TLSMemoryBIOProtocol
    absent = [f"TLSMemoryBIOProtocol.{n}" for n in _PROTOCOL_NAMES[1:] if not hasattr(cls, n)]
    # Set by makeConnection, not a class attribute.
    makeConnection = getattr(cls, "makeConnection", None)
    code = getattr(makeConnection, "__code__", None)
    names = () if code is None else code.co_names
    # FastTLSProtocol.makeConnection does what this one does, so it must be
    # the one it was written from: the same names, nothing else called.
    if set(names) != _MAKE_CONNECTION_NAMES:
        absent.append("TLSMemoryBIOProtocol.makeConnection as of Twisted 26.4-26.10")
    return absent


def tlsFactory(contextFactory: Any, isClient: bool, wrappedFactory: Any) -> Any:
    """
    A L{FastTLSFactory} if this Twisted has what it relies on, else
    Twisted's L{TLSMemoryBIOFactory}, with the same arguments.
    """
    if _usable():
        return FastTLSFactory(contextFactory, isClient, wrappedFactory)
    return tls.TLSMemoryBIOFactory(contextFactory, isClient, wrappedFactory)


_checked: Optional[bool] = None


def _usable() -> bool:
    global _checked
    if _checked is None:
        _checked = not missing()
    return _checked


__all__ = ["DELIVER_LIMIT", "FastTLSFactory", "FastTLSProtocol", "missing", "tlsFactory"]
