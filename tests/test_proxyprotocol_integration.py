"""
Integration tests of the PROXY protocol: C{twistd sockproxy} runs as a
subprocess, the way a user runs it.

1. Real peers behind the proxy (HAProxy, and nginx's stream module), each
   told the client's address with C{send-proxy = "v1"} or C{"v2"}: the
   address a client's own header gave the proxy's C{haproxy:} listener
   (documentation addresses, never 127.0.0.1) is the address the peer
   reports, in its reply and its log.
2. A C{haproxy:} listener holds up: malformed, missing and late headers
   open no backend connection, each costs its client only, is counted in
   C{bad_proxy_headers} and logged at a bounded rate; C{UNKNOWN} headers and
   half-closed clients work.

Real peers listen on sockets the test binds and hands over (HAProxy's
C{fd@N}, nginx's inherited sockets): they accept from the moment they
start, no port is raced for, and no wait for readiness is needed. Every
wait is bounded: on a log line, a socket timeout, under a deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional

from twisted.trial.unittest import SkipTest

from tests.integration_support import (
    LOOPBACK,
    Deadline,
    Server,
    Twistd,
    boundPorts,
    connect,
    exchange,
    recvAll,
    tcpBackend,
    tomlString,
)
from tests.test_integration import _IntegrationTestCase, countThenReplyHandler
from tests.test_operations_integration import expectClosed, http, textFields

HAPROXY = "/usr/sbin/haproxy"
NGINX = "/usr/sbin/nginx"
NGINX_STREAM_MODULES = (
    "/usr/lib/nginx/modules/ngx_stream_module.so",
    "/usr/share/nginx/modules/ngx_stream_module.so",
)

# The addresses clients claim in their own headers: documentation ranges
# (RFC 5737, RFC 3849), so a peer that reports one was told it.
CLIENT_V4 = ("203.0.113.7", 4242)
CLIENT_V4_OTHER = ("203.0.113.8", 4243)
CLIENT_V6 = ("2001:db8::7", 4244)
SERVER_V4 = ("198.51.100.1", 443)
SERVER_V6 = ("2001:db8::1", 443)

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def headerV1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """
    A version 1 header, written here by hand (not by the code under test).
    """
    family = "TCP6" if ":" in source[0] else "TCP4"
    return (
        f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    ).encode("ascii")


def headerV2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """
    A version 2 PROXY/STREAM header, written here by hand.
    """
    if ":" in source[0]:
        family, af = 0x21, socket.AF_INET6
    else:
        family, af = 0x11, socket.AF_INET
    body = (
        socket.inet_pton(af, source[0]) + socket.inet_pton(af, destination[0])
        + struct.pack("!HH", source[1], destination[1])
    )
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def clientHello(serverName: str) -> bytes:
    """
    The first flight of a TLS client asking for C{serverName}.
    """
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=serverName)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class Peer:
    """
    A real server (HAProxy, nginx) in the foreground, given listening
    sockets, its merged output read line by line on a thread.

    @ivar lines: every output line so far.
    """

    def __init__(
        self, argv: Sequence[str], cwd: str, sockets: Sequence[socket.socket],
        env: Optional[dict[str, str]] = None,
    ) -> None:
        self.argv = list(argv)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.ended = False
        self.process = subprocess.Popen(
            self.argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=[s.fileno() for s in sockets],
        )
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self.cond.notify_all()
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    @property
    def output(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def waitFor(self, text: str, timeout: float = 10.0) -> str:
        """
        Wait for an output line containing C{text}; return it.
        """
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    why = "exited" if self.ended else f"did not log it within {timeout:g}s"
                    raise AssertionError(
                        f"waiting for {text!r}: {self.argv[0]} {why}; output:\n"
                        + "\n".join(self.lines)
                    )
                self.cond.wait(left)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def listeningSocket(case: Any) -> socket.socket:
    """
    A loopback TCP socket listening on a port of the kernel's choice, to
    hand to a peer; closed (in this process) at the end of C{case}.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    case.addCleanup(sock.close)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def proxyToml(
    backends: Sequence[dict[str, Any]], extra: Sequence[str] = (),
    status: bool = False, sessionLog: bool = False,
) -> str:
    """
    A configuration with one proxy C{test} on a C{haproxy:} loopback
    listener (and a status endpoint on loopback if C{status}).
    """
    lines = ["debug = 1"]
    if sessionLog:
        lines.append('session-log = "log"')
    if status:
        lines += ["[status]", f"listen = {tomlString(LOOPBACK)}"]
    lines += [
        "[[proxy]]", 'name = "test"',
        f"listen = [{tomlString('haproxy:' + LOOPBACK)}]", *extra,
    ]
    for backend in backends:
        lines.append("[[proxy.backend]]")
        for key, value in backend.items():
            rendered = tomlString(value) if isinstance(value, str) else repr(value)
            lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


class _ProxyProtocolTestCase(_IntegrationTestCase):

    def startWith(self, text: str, listeners: int = 1) -> tuple[Twistd, list[int]]:
        path = os.path.join(self.tmp, "sockproxy.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        proxy = self.startProxy(path, readyCount=1)
        return proxy, boundPorts(proxy, listeners)


# -- 1. real peers ---------------------------------------------------------------------


class RealPeerTests(_ProxyProtocolTestCase):
    """
    HAProxy and nginx behind the proxy report the client address that the
    client's own header gave the proxy.
    """

    def startHAProxy(self) -> tuple[Peer, int, int]:
        """
        HAProxy with two PROXY protocol frontends: C{http} answers every
        request with the addresses and unique id it was told, and logs
        them; C{tls} logs them and the authority of a TLS client.

        @return: HAProxy, the http and the tls frontend's ports.
        """
        if not os.access(HAPROXY, os.X_OK):
            raise SkipTest(f"{HAPROXY} is not installed (Debian package haproxy)")
        web, tls = listeningSocket(self), listeningSocket(self)
        fields = "client=%ci:%cp frontend=%fi:%fp uid=%[fc_pp_unique_id]"
        config = f"""\
global
    log stdout format raw local0 info
defaults
    log global
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend http
    mode http
    bind fd@{web.fileno()} accept-proxy
    log-format "haproxy-http {fields}"
    http-request return status 200 content-type text/plain lf-string "{fields}\\n"
frontend tls
    mode tcp
    bind fd@{tls.fileno()} accept-proxy
    log-format "haproxy-tls {fields} authority=%[fc_pp_authority]"
    tcp-request inspect-delay 5s
    tcp-request content reject if {{ req.ssl_hello_type 1 }}
"""
        path = os.path.join(self.tmp, "haproxy.cfg")
        with open(path, "w", encoding="ascii") as f:
            f.write(config)
        peer = Peer([HAPROXY, "-db", "-f", path], self.tmp, [web, tls])
        self.addCleanup(peer.stop)
        return peer, web.getsockname()[1], tls.getsockname()[1]

    def startNginx(self) -> tuple[Peer, int]:
        """
        nginx (master and one worker, in the foreground) with a stream
        server on a PROXY protocol listener that answers each connection
        with the client address it was told, and logs it to stderr.
        """
        if not os.access(NGINX, os.X_OK):
            raise SkipTest(f"{NGINX} is not installed (Debian package nginx)")
        modules = [path for path in NGINX_STREAM_MODULES if os.path.exists(path)]
        if not modules:
            raise SkipTest("nginx's stream module is not installed (libnginx-mod-stream)")
        sock = listeningSocket(self)
        port = sock.getsockname()[1]
        config = f"""\
load_module {modules[0]};
daemon off;
worker_processes 1;
pid {self.tmp}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
stream {{
    log_format pp 'nginx-stream client=$proxy_protocol_addr:$proxy_protocol_port '
                  'server=$proxy_protocol_server_addr:$proxy_protocol_server_port';
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        access_log /dev/stderr pp;
        return "client=$proxy_protocol_addr:$proxy_protocol_port\\n";
    }}
}}
"""
        path = os.path.join(self.tmp, "nginx.conf")
        with open(path, "w", encoding="ascii") as f:
            f.write(config)
        # nginx takes listening sockets from $NGINX (as when its binary is
        # upgraded) instead of binding their address again.
        env = dict(os.environ, NGINX=f"{sock.fileno()};")
        peer = Peer(
            [NGINX, "-p", self.tmp, "-e", "stderr", "-c", path], self.tmp, [sock], env=env
        )
        self.addCleanup(peer.stop)
        return peer, port

    def through(self, port: int, data: bytes) -> bytes:
        """
        Send C{data} to the proxy's listener, half-close, read to EOF.
        """
        with connect(("127.0.0.1", port)) as conn:
            return exchange(conn, data, Deadline(10, "a reply through the proxy"))

    def test_haproxyV1(self) -> None:
        """
        With C{send-proxy = "v1"}, HAProxy is told the address and port
        the client's version 1 header gave, source and destination.
        """
        peer, web, _ = self.startHAProxy()
        proxy, (port,) = self.startWith(
            proxyToml([{"endpoint": tcpBackend(web), "send-proxy": "v1"}])
        )
        reply = self.through(
            port, headerV1(CLIENT_V4, SERVER_V4) + b"GET / HTTP/1.0\r\n\r\n"
        )
        self.assertIn(b"200 OK", reply)
        self.assertIn(b"client=203.0.113.7:4242 frontend=198.51.100.1:443 uid=\n", reply)
        line = peer.waitFor("haproxy-http client=")
        self.assertIn("client=203.0.113.7:4242 frontend=198.51.100.1:443", line)
        proxy.waitFor("proxy test: 203.0.113.7:4242 -> backend")

    def test_haproxyV2(self) -> None:
        """
        With C{send-proxy = "v2"} (the proxy's default here), HAProxy is
        told the address the client's version 2 header gave, and the
        session's id as the unique id: the id of the session log.
        """
        peer, web, _ = self.startHAProxy()
        proxy, (port,) = self.startWith(
            proxyToml([{"endpoint": tcpBackend(web)}], ['send-proxy = "v2"'], sessionLog=True)
        )
        reply = self.through(
            port, headerV2(CLIENT_V4_OTHER, SERVER_V4) + b"GET / HTTP/1.0\r\n\r\n"
        )
        self.assertIn(b"client=203.0.113.8:4243 frontend=198.51.100.1:443 uid=", reply)
        line = peer.waitFor("haproxy-http client=")
        fields = textFields(proxy.waitFor("client=203.0.113.8:4243 ")[0])
        self.assertTrue(fields.get("id"), fields)
        self.assertIn(
            f"client=203.0.113.8:4243 frontend=198.51.100.1:443 uid={fields['id']}", line
        )
        self.assertIn(f"uid={fields['id']}\n".encode(), reply)

    def test_haproxyV2Authority(self) -> None:
        """
        A TLS client's server name, read by the proxy (C{inspect-delay}),
        reaches HAProxy as the version 2 header's authority.
        """
        peer, _, tls = self.startHAProxy()
        proxy, (port,) = self.startWith(proxyToml(
            [{"endpoint": tcpBackend(tls), "send-proxy": "v2"}],
            ['balance = "hash"', "inspect-delay = 5"],
        ))
        with connect(("127.0.0.1", port)) as conn:
            conn.sendall(headerV1(CLIENT_V4, SERVER_V4) + clientHello("db.example.test"))
            # HAProxy rejects the connection once it has logged it.
            recvAll(conn, Deadline(10, "HAProxy closing the TLS client"))
        line = peer.waitFor("haproxy-tls client=")
        self.assertIn("client=203.0.113.7:4242 frontend=198.51.100.1:443", line)
        self.assertIn("authority=db.example.test", line)

    def test_nginxV1(self) -> None:
        """
        nginx is told, with C{send-proxy = "v1"}, the address the client's
        version 1 header gave.
        """
        peer, web = self.startNginx()
        _, (port,) = self.startWith(
            proxyToml([{"endpoint": tcpBackend(web), "send-proxy": "v1"}])
        )
        self.assertEqual(
            self.through(port, headerV1(CLIENT_V4, SERVER_V4)), b"client=203.0.113.7:4242\n"
        )
        line = peer.waitFor("nginx-stream client=")
        self.assertIn("client=203.0.113.7:4242 server=198.51.100.1:443", line)

    def test_nginxV2(self) -> None:
        """
        nginx is told, with C{send-proxy = "v2"}, the address the client's
        header gave: IPv4, and IPv6.
        """
        peer, web = self.startNginx()
        _, (port,) = self.startWith(
            proxyToml([{"endpoint": tcpBackend(web), "send-proxy": "v2"}])
        )
        self.assertEqual(
            self.through(port, headerV2(CLIENT_V4_OTHER, SERVER_V4)),
            b"client=203.0.113.8:4243\n",
        )
        self.assertIn("server=198.51.100.1:443", peer.waitFor("client=203.0.113.8:4243 "))
        self.assertEqual(
            self.through(port, headerV1(CLIENT_V6, SERVER_V6)), b"client=2001:db8::7:4244\n"
        )
        self.assertIn("server=2001:db8::1:443", peer.waitFor("client=2001:db8::7:4244 "))


# -- 2. the listener holds up ----------------------------------------------------------

BANNER = b"BANNER\n"


def bannerEchoHandler(conn: socket.socket, server: Server) -> None:
    """
    Greet first (a client that gets this reached a backend), then echo
    until EOF.
    """
    conn.sendall(BANNER)
    while True:
        data = conn.recv(65536)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)


def malformedHeaders(count: int, seed: int = 7) -> list[tuple[str, bytes, bool]]:
    """
    C{count} malformed headers, mixed: (kind, bytes, whether the client
    must half-close for the header to be known incomplete).
    """
    rng = random.Random(seed)
    found = []
    for i in range(count):
        kind = ("random", "bad address", "non-ASCII digits", "truncated v2")[i % 4]
        if kind == "random":
            # Not P nor CR: no prefix of a header.
            first = rng.choice([b for b in range(256) if b not in (0x50, 0x0D)])
            data = bytes([first]) + rng.randbytes(rng.randrange(0, 200))
            found.append((kind, data, False))
        elif kind == "bad address":
            data = f"PROXY TCP4 {rng.randrange(256, 1000)}.0.2.1 198.51.100.1 1234 80\r\n"
            found.append((kind, data.encode("ascii"), False))
        elif kind == "non-ASCII digits":
            data = "PROXY TCP4 192.0.2.1 198.51.100.1 \u0661\u0662\u0663 80\r\n"
            found.append((kind, data.encode("utf-8"), False))
        else:
            whole = headerV2(CLIENT_V4, SERVER_V4)
            found.append((kind, whole[: rng.randrange(1, len(whole))], True))
    return found


class ListenerHoldsUpTests(_ProxyProtocolTestCase):
    """
    Bad, missing and late headers cost their own client only.
    """

    def setUp(self) -> None:
        super().setUp()
        self.backend = self.startServer(bannerEchoHandler)

    def start(self, debug: int = 1, backend: Optional[Server] = None) -> Twistd:
        text = proxyToml(
            [{"endpoint": (backend or self.backend).endpoint}], ["proxy-header-timeout = 1"], status=True
        ).replace("debug = 1", f"debug = {debug}")
        self.proxy, (self.port, self.statusPort) = self.startWith(text, listeners=2)
        return self.proxy

    def badHeaders(self) -> int:
        code, _, body = http(f"http://127.0.0.1:{self.statusPort}/status.json")
        self.assertEqual(code, 200, body)
        (proxy,) = json.loads(body)["proxies"]
        return int(proxy["bad_proxy_headers"])

    def assertNoTraceback(self) -> None:
        for text in ("Traceback", "Unhandled"):
            self.assertNotIn(text, self.proxy.output)

    def test_malformedHeaders(self) -> None:
        """
        200 malformed headers: each client is closed without a byte from a
        backend, no backend connection is opened, all are counted in
        C{bad_proxy_headers}, and the log says why at a bounded rate (at
        most the burst of 10 lines), without a traceback.
        """
        self.start()
        headers = malformedHeaders(200)
        for kind, data, halfClose in headers:
            with connect(("127.0.0.1", self.port), timeout=5) as conn:
                conn.sendall(data)
                if halfClose:
                    conn.shutdown(socket.SHUT_WR)
                expectClosed(conn, Deadline(5, f"the proxy closing a {kind} header's client"))
        # Each was counted before its client was closed.
        self.assertEqual(self.badHeaders(), 200)
        self.assertEqual(self.backend.accepted, 0)
        closing = self.proxy.matching("proxy test: closing 127.0.0.1:")
        self.assertTrue(1 <= len(closing) <= 10, closing)
        self.assertNoTraceback()

    def test_silentClient(self) -> None:
        """
        A client that sends nothing gets no backend's banner, and is closed
        at C{proxy-header-timeout} (1 s here), counted and logged.
        """
        self.start()
        with connect(("127.0.0.1", self.port), timeout=5) as conn:
            started = time.monotonic()
            expectClosed(conn, Deadline(5, "the proxy closing a silent client"))
            waited = time.monotonic() - started
        self.assertTrue(0.9 <= waited < 3.0, f"closed after {waited:.2f}s")
        self.proxy.waitFor("no complete PROXY protocol header within 1s")
        self.assertEqual(self.badHeaders(), 1)
        self.assertEqual(self.backend.accepted, 0)
        self.assertNoTraceback()

    def test_unknownTenTimes(self) -> None:
        """
        C{PROXY UNKNOWN} (the connection's own addresses stand) works 10
        times in 10.
        """
        self.start()
        for i in range(10):
            payload = f"unknown {i}\n".encode()
            with connect(("127.0.0.1", self.port)) as conn:
                received = exchange(
                    conn, b"PROXY UNKNOWN\r\n" + payload, Deadline(10, "an UNKNOWN session")
                )
            self.assertEqual(received, BANNER + payload)
        self.assertEqual(self.backend.accepted, 10)
        self.assertEqual(self.badHeaders(), 0)
        self.assertNoHandlerErrors(self.backend)

    def test_halfClose(self) -> None:
        """
        A client that sends its header and request, then shuts its write
        side down, still receives the whole reply, which the backend sends
        only once it has read the request to its end: 20 times in 20, each
        request arriving whole at the backend, without the header.
        """
        reply = os.urandom(256 * 1024)
        results: queue.Queue[tuple[int, str]] = queue.Queue()
        backend = self.startServer(countThenReplyHandler(reply, results))
        self.start(debug=0, backend=backend)
        request = os.urandom(64 * 1024)
        digest = hashlib.sha256(request).hexdigest()
        for i in range(20):
            with connect(("127.0.0.1", self.port)) as conn:
                received = exchange(
                    conn, headerV1(CLIENT_V4, SERVER_V4) + request,
                    Deadline(10, f"half-closed session {i}"),
                )
            self.assertEqual(results.get(timeout=5), (len(request), digest), f"session {i}")
            self.assertEqual(len(received), len(reply), f"session {i}")
            self.assertTrue(received == reply, f"session {i}: reply altered")
        self.assertEqual(backend.accepted, 20)
        self.assertEqual(self.badHeaders(), 0)
        self.assertNoHandlerErrors(backend)
