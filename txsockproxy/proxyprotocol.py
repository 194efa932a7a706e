"""
The PROXY protocol's headers (HAProxy's specification, versions 1 and 2):
writing one for a backend, and reading one from a load balancer in front.

Reading is strict and incremental: L{parseHeader} is given what arrived so
far and says whether a header is complete, incomplete, or wrong (and why,
in words fit for a log line). It never raises on what a peer sends.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, field
from typing import Optional, Union

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
# The longest version 1 header, CRLF included (the specification's figure).
V1_MAX = 107
# The longest version 2 header read: its fixed 16 bytes, the longest
# address block (unix: 216 bytes) and up to 2 KiB of TLVs. Longer headers
# are refused rather than buffered.
V2_MAX = 16 + 216 + 2048

# Version 2 commands, families and TLV types.
_LOCAL = 0x0
_PROXY = 0x1
_UNSPEC = 0x0
_INET = 0x1
_INET6 = 0x2
_UNIX = 0x3
_STREAM = 0x1
_ADDRESS_LENGTHS = {_INET: 12, _INET6: 36, _UNIX: 216}
TLV_AUTHORITY = 0x02
TLV_UNIQUE_ID = 0x05
# The specification's limit on the unique id.
UNIQUE_ID_MAX = 128

Address = Union[IPv4Address, IPv6Address, UNIXAddress]

# What parseHeader says besides a header.
NEED_MORE = "need more"


class HeaderError(ValueError):
    """
    What a peer sent is not a valid PROXY protocol header; C{str()} says why.
    """


@dataclass(frozen=True)
class ProxyHeader:
    """
    A PROXY protocol header read from a peer.

    @ivar version: 1 or 2.
    @ivar source: the client's address it gives, or L{None}: the header
        gives none (version 1 C{UNKNOWN}, version 2 C{LOCAL} or an
        unspecified family), and the connection's own addresses stand.
    @ivar destination: the address the client connected to, or L{None}.
    @ivar length: the header's length in bytes: what follows is payload.
    @ivar tlvs: version 2 TLVs, by type (the last one of a type).
    """

    version: int
    source: Optional[Address]
    destination: Optional[Address]
    length: int
    tlvs: dict[int, bytes] = field(default_factory=dict)


# -- writing ------------------------------------------------------------------


def _ip(address: IAddress) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    if isinstance(address, (IPv4Address, IPv6Address)):
        try:
            return ipaddress.ip_address(address.host.split("%", 1)[0])
        except ValueError:
            return None
    return None


def _ipPair(
    source: IAddress, destination: IAddress
) -> Optional[tuple[int, bytes, bytes, int, int]]:
    """
    The family (4 or 6) and packed addresses and ports of an IP pair, an
    IPv4-mapped IPv6 address taken as IPv4 when both are IPv4, IPv4 mapped
    into IPv6 when the other is IPv6; L{None} if either is not IP.
    """
    src, dst = _ip(source), _ip(destination)
    if src is None or dst is None:
        return None
    if isinstance(src, ipaddress.IPv6Address) and src.ipv4_mapped is not None:
        src = src.ipv4_mapped
    if isinstance(dst, ipaddress.IPv6Address) and dst.ipv4_mapped is not None:
        dst = dst.ipv4_mapped
    if src.version != dst.version:
        src = src if src.version == 6 else ipaddress.IPv6Address(f"::ffff:{src}")
        dst = dst if dst.version == 6 else ipaddress.IPv6Address(f"::ffff:{dst}")
    return (
        src.version, src.packed, dst.packed,
        source.port, destination.port,  # type: ignore[attr-defined]
    )


def encodeV1(source: IAddress, destination: IAddress) -> bytes:
    """
    A version 1 header for a client at C{source} that connected to
    C{destination}: C{TCP4}/C{TCP6}, or C{UNKNOWN} when they are not both IP
    (a unix-socket client, as the specification says).
    """
    if type(source) is IPv4Address and type(destination) is IPv4Address:
        # The common case, without parsing: the system writes IPv4
        # addresses in their one form.
        return b"PROXY TCP4 %s %s %d %d\r\n" % (
            source.host.encode("ascii"), destination.host.encode("ascii"),
            source.port, destination.port,
        )
    pair = _ipPair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    version, src, dst, sport, dport = pair
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    return (
        f"PROXY TCP{version} {socket.inet_ntop(family, src)} "
        f"{socket.inet_ntop(family, dst)} {sport} {dport}\r\n"
    ).encode("ascii")


def _unixPath(address: IAddress) -> bytes:
    name = address.name if isinstance(address, UNIXAddress) else None
    if isinstance(name, str):
        name = name.encode("utf-8", "surrogateescape")
    path = name or b""
    return path[:108].ljust(108, b"\x00")


def encodeV2(
    source: IAddress,
    destination: IAddress,
    authority: Optional[str] = None,
    uniqueId: Optional[bytes] = None,
) -> bytes:
    """
    A version 2 header (command C{PROXY}, stream transport) for a client at
    C{source} that connected to C{destination}: C{INET}/C{INET6} addresses,
    C{UNIX} paths for a unix-socket client, C{UNSPEC} otherwise; with an
    C{AUTHORITY} TLV (the server name the client asked for) and a
    C{UNIQUE_ID} TLV (at most 128 bytes) when given.
    """
    if type(source) is IPv4Address and type(destination) is IPv4Address:
        pair: Optional[tuple[int, bytes, bytes, int, int]] = (
            4, socket.inet_aton(source.host), socket.inet_aton(destination.host),
            source.port, destination.port,
        )
    else:
        pair = _ipPair(source, destination)
    if pair is not None:
        version, src, dst, sport, dport = pair
        family = _INET if version == 4 else _INET6
        block = src + dst + struct.pack("!HH", sport, dport)
    elif isinstance(source, UNIXAddress) or isinstance(destination, UNIXAddress):
        family = _UNIX
        block = _unixPath(source) + _unixPath(destination)
    else:
        family = _UNSPEC
        block = b""
    tlvs = b""
    if authority:
        value = authority.encode("utf-8")[:255]
        tlvs += struct.pack("!BH", TLV_AUTHORITY, len(value)) + value
    if uniqueId:
        value = uniqueId[:UNIQUE_ID_MAX]
        tlvs += struct.pack("!BH", TLV_UNIQUE_ID, len(value)) + value
    body = block + tlvs
    transport = _STREAM if family != _UNSPEC else 0
    return (
        V2_SIGNATURE
        + bytes([0x20 | _PROXY, (family << 4) | transport])
        + struct.pack("!H", len(body))
        + body
    )


def localHeader(version: str) -> bytes:
    """
    The header of a connection the proxy makes on its own behalf (a health
    check), which relays no client: version 1 C{PROXY UNKNOWN}, version 2
    command C{LOCAL}; servers then keep the connection's own addresses.

    @param version: C{"v1"} or C{"v2"}.
    """
    if version == "v1":
        return b"PROXY UNKNOWN\r\n"
    return V2_SIGNATURE + bytes([0x20 | _LOCAL, _UNSPEC << 4]) + struct.pack("!H", 0)


# -- reading ------------------------------------------------------------------


def parseHeader(data: bytes) -> Union[ProxyHeader, str]:
    """
    Read a PROXY protocol header, version 1 or 2, at the start of C{data}.

    @return: the header (its C{length} says where the payload starts), or
        L{NEED_MORE} when C{data} is the beginning of one.
    @raise HeaderError: C{data} does not start with a valid header.
    """
    if data[:1] == V1_PREFIX[:1]:
        return _parseV1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parseV2(data)
    if not data:
        return NEED_MORE
    raise HeaderError("not a PROXY protocol header")


def _parseV1(data: bytes) -> Union[ProxyHeader, str]:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if not data.startswith(V1_PREFIX[: len(data)]) or (
            len(data) >= len(V1_PREFIX) and not data.startswith(V1_PREFIX)
        ):
            raise HeaderError("not a PROXY protocol header")
        if len(data) >= V1_MAX:
            raise HeaderError(f"version 1 header without CRLF in its first {V1_MAX} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise HeaderError("version 1 header: a stray CR or LF")
        return NEED_MORE
    line = data[:end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise HeaderError("version 1 header: not ASCII") from None
    if not text.isprintable() or "\r" in text or "\n" in text:
        raise HeaderError("version 1 header: control characters")
    fields = text.split(" ")
    if fields[0] != "PROXY" or len(fields) < 2:
        raise HeaderError("not a PROXY protocol header")
    length = end + 2
    if fields[1] == "UNKNOWN":
        # The rest of the line, if any, is to be ignored.
        return ProxyHeader(1, None, None, length)
    if fields[1] not in ("TCP4", "TCP6"):
        raise HeaderError(f"version 1 header: unknown protocol {fields[1][:16]!r}")
    if len(fields) != 6:
        raise HeaderError("version 1 header: expected 4 fields after the protocol")
    _, proto, src, dst, sport, dport = fields
    factory = IPv4Address if proto == "TCP4" else IPv6Address
    wanted = ipaddress.IPv4Address if proto == "TCP4" else ipaddress.IPv6Address
    for address in (src, dst):
        try:
            wanted(address)
        except ValueError:
            raise HeaderError(f"version 1 header: bad {proto} address {address[:45]!r}") from None
    ports = []
    for port in (sport, dport):
        if not port.isdigit() or not port.isascii() or (len(port) > 1 and port[0] == "0"):
            raise HeaderError(f"version 1 header: bad port {port[:8]!r}")
        value = int(port)
        if value > 65535:
            raise HeaderError(f"version 1 header: bad port {port[:8]!r}")
        ports.append(value)
    return ProxyHeader(
        1, factory("TCP", src, ports[0]), factory("TCP", dst, ports[1]), length
    )


def _parseV2(data: bytes) -> Union[ProxyHeader, str]:
    if len(data) < 16:
        if not V2_SIGNATURE.startswith(data[:12]):
            raise HeaderError("not a PROXY protocol header")
        return NEED_MORE
    if not data.startswith(V2_SIGNATURE):
        raise HeaderError("not a PROXY protocol header")
    verCmd, famProto, size = struct.unpack("!BBH", data[12:16])
    if verCmd >> 4 != 2:
        raise HeaderError(f"version 2 header: version {verCmd >> 4}")
    command = verCmd & 0x0F
    if command not in (_LOCAL, _PROXY):
        raise HeaderError(f"version 2 header: unknown command {command}")
    length = 16 + size
    if length > V2_MAX:
        raise HeaderError(f"version 2 header of {length} bytes, more than {V2_MAX}")
    if len(data) < length:
        return NEED_MORE
    body = data[16:length]
    family, transport = famProto >> 4, famProto & 0x0F
    if command == _LOCAL:
        # Sent by the load balancer itself (a health check): its own
        # addresses stand, the address block is ignored.
        return ProxyHeader(2, None, None, length)
    if family not in (_UNSPEC, _INET, _INET6, _UNIX):
        raise HeaderError(f"version 2 header: unknown address family {family}")
    if family == _UNSPEC:
        return ProxyHeader(2, None, None, length)
    if transport != _STREAM:
        raise HeaderError("version 2 header: not a stream connection")
    need = _ADDRESS_LENGTHS[family]
    if size < need:
        raise HeaderError(f"version 2 header: address block of {size} bytes, {need} needed")
    source: Address
    destination: Address
    if family == _INET:
        sport, dport = struct.unpack("!HH", body[8:12])
        source = IPv4Address("TCP", socket.inet_ntop(socket.AF_INET, body[0:4]), sport)
        destination = IPv4Address("TCP", socket.inet_ntop(socket.AF_INET, body[4:8]), dport)
    elif family == _INET6:
        sport, dport = struct.unpack("!HH", body[32:36])
        source = IPv6Address("TCP", socket.inet_ntop(socket.AF_INET6, body[0:16]), sport)
        destination = IPv6Address("TCP", socket.inet_ntop(socket.AF_INET6, body[16:32]), dport)
    else:
        source = UNIXAddress(body[0:108].split(b"\x00", 1)[0] or None)
        destination = UNIXAddress(body[108:216].split(b"\x00", 1)[0] or None)
    tlvs: dict[int, bytes] = {}
    rest = body[need:]
    while rest:
        if len(rest) < 3:
            raise HeaderError("version 2 header: truncated TLV")
        kind, tlvLength = struct.unpack("!BH", rest[:3])
        if len(rest) < 3 + tlvLength:
            raise HeaderError("version 2 header: truncated TLV")
        tlvs[kind] = rest[3 : 3 + tlvLength]
        rest = rest[3 + tlvLength :]
    return ProxyHeader(2, source, destination, length, tlvs)


__all__ = [
    "HeaderError",
    "NEED_MORE",
    "ProxyHeader",
    "TLV_AUTHORITY",
    "TLV_UNIQUE_ID",
    "encodeV1",
    "encodeV2",
    "parseHeader",
]
