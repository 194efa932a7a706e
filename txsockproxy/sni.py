"""
Reading the TLS SNI server name from the first bytes a client sends (its
ClientHello), without terminating TLS, so that a TLS-passthrough connection can
be routed by name (C{[[proxy.route]]}) and placed by the C{hash} balancer.
"""

from __future__ import annotations

from typing import Optional

# What parseServerName returns besides a name.
NEED_MORE = "need more"
NOT_TLS = "not tls"

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_SERVER_NAME = 0x0000
_HOST_NAME = 0x00
# A ClientHello bigger than this is not worth waiting for.
MAX_HELLO = 65536


def parseServerName(data: bytes) -> tuple[str, Optional[str]]:
    """
    Look for the SNI host name in the bytes a client sent first.

    @param data: everything received so far from the client.
    @return: C{(NEED_MORE, None)} when the ClientHello is not complete yet;
        C{(NOT_TLS, None)} when the bytes are not a TLS ClientHello (or are
        malformed); otherwise C{("ok", name)} where C{name} is the host name
        in lower case, or L{None} when the hello carries none.
    """
    return HelloReader().feed(data)


class HelloReader:
    """
    L{parseServerName} for bytes that arrive a piece at a time: each call of
    L{feed} goes on from where the last one stopped, so that a ClientHello
    sent in many small records costs the proxy its length once, not its
    length once per piece.
    """

    def __init__(self) -> None:
        self._data = bytearray()
        # Where the next record starts, and the handshake bytes so far.
        self._offset = 0
        self._handshake = bytearray()
        self._result: Optional[tuple[str, Optional[str]]] = None

    def feed(self, data: bytes) -> tuple[str, Optional[str]]:
        """
        Add the client's next bytes.

        @return: as L{parseServerName} for all the bytes fed so far.
        """
        if self._result is not None:
            return self._result
        self._data += data
        result = self._advance()
        if result[0] != NEED_MORE:
            self._result = result
            self._data = self._handshake = bytearray()
        return result

    def _advance(self) -> tuple[str, Optional[str]]:
        data = self._data
        handshake = self._handshake
        # Reassemble the handshake message from as many records as it spans.
        while True:
            offset = self._offset
            if len(data) - offset < 5:
                return (NEED_MORE, None) if _plausible(data[offset:]) else (NOT_TLS, None)
            if data[offset] != _HANDSHAKE or data[offset + 1] != 3:
                return NOT_TLS, None
            length = int.from_bytes(data[offset + 3 : offset + 5], "big")
            if length == 0 or length > 16384 + 2048:
                return NOT_TLS, None
            if len(data) - offset - 5 < length:
                if len(data) > MAX_HELLO:
                    return NOT_TLS, None
                return NEED_MORE, None
            handshake += data[offset + 5 : offset + 5 + length]
            self._offset = offset + 5 + length
            if len(handshake) >= 4:
                if handshake[0] != _CLIENT_HELLO:
                    return NOT_TLS, None
                needed = 4 + int.from_bytes(handshake[1:4], "big")
                if needed > MAX_HELLO:
                    return NOT_TLS, None
                if len(handshake) >= needed:
                    return _helloServerName(bytes(handshake[4:needed]))


def _plausible(data: bytes | bytearray) -> bool:
    # The first bytes of a TLS record so far: 0x16 0x03 ...
    return (len(data) < 1 or data[0] == _HANDSHAKE) and (len(data) < 2 or data[1] == 3)


def _helloServerName(hello: bytes) -> tuple[str, Optional[str]]:
    try:
        pos = 2 + 32  # client_version, random
        pos += 1 + hello[pos]  # session_id
        pos += 2 + int.from_bytes(hello[pos : pos + 2], "big")  # cipher_suites
        pos += 1 + hello[pos]  # compression_methods
        if pos == len(hello):
            return "ok", None  # no extensions at all
        end = pos + 2 + int.from_bytes(hello[pos : pos + 2], "big")
        if end > len(hello):
            return NOT_TLS, None
        pos += 2
        while pos + 4 <= end:
            kind = int.from_bytes(hello[pos : pos + 2], "big")
            size = int.from_bytes(hello[pos + 2 : pos + 4], "big")
            body = hello[pos + 4 : pos + 4 + size]
            if len(body) != size:
                return NOT_TLS, None
            if kind == _SERVER_NAME:
                return _serverNameExtension(body)
            pos += 4 + size
        return "ok", None
    except IndexError:
        return NOT_TLS, None


def _serverNameExtension(body: bytes) -> tuple[str, Optional[str]]:
    listEnd = 2 + int.from_bytes(body[0:2], "big")
    if listEnd != len(body):
        # The list is the whole extension (RFC 6066): a length saying
        # otherwise is a malformed hello.
        return NOT_TLS, None
    pos = 2
    while pos + 3 <= listEnd:
        kind = body[pos]
        size = int.from_bytes(body[pos + 1 : pos + 3], "big")
        name = body[pos + 3 : pos + 3 + size]
        if len(name) != size:
            return NOT_TLS, None
        if kind == _HOST_NAME:
            try:
                text = name.decode("ascii")
            except UnicodeDecodeError:
                return NOT_TLS, None
            return "ok", text.lower().rstrip(".") or None
        pos += 3 + size
    return "ok", None
