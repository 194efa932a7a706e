"""
Differential integration tests: Debian's lighttpd (C{/usr/sbin/lighttpd -D -f
FILE}) and C{twistd sockproxy --config FILE} run on the same lighttpd.conf,
unchanged, in front of the same loopback backends (threads that answer with
their label). Only the ports differ, and the file reads them from the
environment (C{env.SP_RR} etc.), so that both can run at once.

They choose the same backends for round-robin and fair; txsockproxy succeeds
where lighttpd 1.4.69 fails (a lone FIN after a pause, failover past a
refused backend). Where lighttpd cannot run the config (not installed, or
without C{lighttpd-mod-openssl}, a Recommends of Debian's lighttpd that
C{apt-get --no-install-recommends} leaves out), txsockproxy's side still runs,
checked against what lighttpd was measured to do, and the test is then
reported as skipped with the reason.

Nothing sleeps: every wait is on a log line, an event or a socket, under a
deadline.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from typing import Iterable, Optional

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.fakes import certificate
from tests.integration_support import (
    START_TIMEOUT,
    Deadline,
    Server,
    Twistd,
    connect,
    recvAll,
    refusedPort,
)
from tests.test_lighttpd import REPO
from tests.tls_support import clientContext, issue

LIGHTTPD = "/usr/sbin/lighttpd"


@functools.cache
def lighttpdMissing() -> Optional[str]:
    """
    Why Debian's lighttpd cannot run the configs of these tests here, or
    C{None} when it can.

    They load C{mod_openssl}, which Debian ships apart, in
    C{lighttpd-mod-openssl}: C{lighttpd -tt} on a config that loads it says
    whether it loads.
    """
    if not os.access(LIGHTTPD, os.X_OK):
        return f"{LIGHTTPD} is not installed (apt-get install lighttpd)"
    with tempfile.TemporaryDirectory(prefix="sockproxy-lt-") as tmp:
        path = os.path.join(tmp, "probe.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write('server.modules = ( "mod_openssl" )\nserver.document-root = var.CWD\n')
        done = subprocess.run([LIGHTTPD, "-tt", "-f", path], cwd=tmp, capture_output=True,
                              timeout=30, check=False)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        # Without lighttpd's time stamp and source line.
        why = re.sub(r"^.*?: \(\S+\) ", "", lines[0]) if lines else f"exit {done.returncode}"
        return f"lighttpd cannot load mod_openssl (apt-get install lighttpd-mod-openssl): {why}"
    return None

# One file for both servers. server.port and the sockets come from the
# environment, so each server gets ports of its own; the backends are the
# same for both.
CONFIG = """\
# Run unchanged by Debian's lighttpd and by twistd sockproxy.
server.modules = ( "mod_sockproxy", "mod_openssl" )
server.document-root = var.CWD
server.bind = "127.0.0.1"
server.port = env.SP_HTTP

var.A = ( "host" => "127.0.0.1", "port" => env.SP_A )
var.B = ( "host" => "127.0.0.1", "port" => env.SP_B )

$SERVER["socket"] == "127.0.0.1:" + env.SP_RR {
  sockproxy.server = ( "" => ( "A" => var.A, "B" => var.B ) )
  sockproxy.balance = "round-robin"
  sockproxy.debug = 1
}

$SERVER["socket"] == "127.0.0.1:" + env.SP_FAIR {
  sockproxy.server = ( "" => ( "A" => var.A, "B" => var.B ) )
  sockproxy.balance = "fair"
  sockproxy.debug = 1
}

# "down": nothing listens there
$SERVER["socket"] == "127.0.0.1:" + env.SP_FAILOVER {
  sockproxy.server = ( "" => ( "up"   => var.A,
                               "down" => ( "host" => "127.0.0.1", "port" => env.SP_DOWN ) ) )
  sockproxy.balance = "round-robin"
  sockproxy.debug = 1
}

# TLS terminated here; the backend gets plaintext
$SERVER["socket"] == "127.0.0.1:" + env.SP_TLS {
  ssl.engine  = "enable"
  ssl.pemfile = env.SP_PEM
  sockproxy.server = ( "" => ( "A" => var.A ) )
}

# TLS with client certificates from env.SP_CA: required (lighttpd's default
# ssl.verifyclient.enforce), and optional
$SERVER["socket"] == "127.0.0.1:" + env.SP_MTLS {
  ssl.engine  = "enable"
  ssl.pemfile = env.SP_PEM
  ssl.ca-file = env.SP_CA
  ssl.verifyclient.activate = "enable"
  sockproxy.server = ( "" => ( "A" => var.A ) )
}

$SERVER["socket"] == "127.0.0.1:" + env.SP_MTLS_OPT {
  ssl.engine  = "enable"
  ssl.pemfile = env.SP_PEM
  ssl.ca-file = env.SP_CA
  ssl.verifyclient.activate = "enable"
  ssl.verifyclient.enforce = "disable"
  sockproxy.server = ( "" => ( "A" => var.A ) )
}

$SERVER["socket"] == "127.0.0.1:" + env.SP_FIN {
  sockproxy.server = ( "" => ( "fin" => ( "host" => "127.0.0.1", "port" => env.SP_FINB,
                                          "tcp-fin-propagate" => "enable" ) ) )
  sockproxy.debug = 1
}
"""

SOCKETS = ("SP_RR", "SP_FAIR", "SP_FAILOVER", "SP_TLS", "SP_MTLS", "SP_MTLS_OPT", "SP_FIN")

# What lighttpd 1.4.69 was measured to do (lighttpd.md section 7.2).
ALTERNATING = ["A", "B"] * 5


class LabelBackend:
    """
    A loopback backend that sends its label and a newline, then counts
    what it reads; C{got} is set once it has read something. On EOF it
    answers C{saw EOF after N bytes} and closes.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.got = threading.Event()
        self.replies: list[str] = []
        self.server = Server(self._handle)

    def _handle(self, conn: socket.socket, server: Server) -> None:
        conn.sendall(self.label.encode() + b"\n")
        total = 0
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return  # torn down by the proxy
            if not data:
                break
            total += len(data)
            self.got.set()
        try:
            conn.sendall(f"saw EOF after {total} bytes\n".encode())
            self.replies.append("sent")
        except OSError as e:
            # lighttpd closed the backend socket: the reply is lost.
            self.replies.append(type(e).__name__)


def readLabel(port: int, deadline: Deadline) -> tuple[str, socket.socket]:
    """
    Connect to loopback C{port} and read one line: the backend's label, or
    C{"<EOF>"} if the proxy closed the connection first.
    """
    conn = connect(("127.0.0.1", port), timeout=deadline.remaining())
    data = b""
    while not data.endswith(b"\n"):
        conn.settimeout(deadline.remaining())
        chunk = conn.recv(1)
        if not chunk:
            return "<EOF>", conn
        data += chunk
    return data.decode().strip(), conn


def unusedPorts(names: Iterable[str]) -> dict[str, int]:
    """
    Distinct loopback TCP ports that nothing listens on right now, one per
    name (each bound to port 0, all held until the last is chosen so no two
    are the same, then released), for the differential tests alone: lighttpd
    refuses port 0 in a C{$SERVER["socket"]} condition and does not say
    which port it bound, and its config, shared with txsockproxy, tells the
    sockets apart by port; and txsockproxy's lighttpd importer refuses
    C{server.port = 0}. Another process may take a port before the server
    binds it: the server then fails to start, and the test with it.
    """
    with contextlib.ExitStack() as stack:
        ports = {}
        for name in names:
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports[name] = int(s.getsockname()[1])
        return ports


def unusedPort() -> int:
    """
    One loopback TCP port that nothing listens on right now (see
    L{unusedPorts}).
    """
    return unusedPorts(["port"])["port"]


class Side:
    """
    One of the two servers under test, and how to tell that it has ended a
    tunnel.
    """

    def __init__(self, name: str, process: Twistd, ports: dict[str, int],
                 ended: str) -> None:
        self.name = name
        self.process = process
        self.ports = ports
        self.ended = ended

    def endedCount(self) -> int:
        return len(self.process.matching(self.ended))

    def waitEnded(self, count: int) -> None:
        self.process.waitFor(self.ended, count=count, timeout=10)


class DifferentialTests(SynchronousTestCase):
    """
    lighttpd and txsockproxy, on the same lighttpd.conf.
    """

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="sockproxy-lt-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.config = os.path.join(self.tmp, "lighttpd.conf")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(CONFIG)
        self.pem = os.path.join(self.tmp, "server.pem")
        with open(self.pem, "wb") as f:
            f.write(certificate())
        authority = issue(("Clients CA",), authority=True)
        self.ca, _ = authority.write(self.tmp, "ca")
        self.clientCerts = {
            "good": issue(("client.example",), issuer=authority).write(self.tmp, "good"),
            "foreign": issue(("client.example",), issuer=issue(
                ("Other CA",), authority=True)).write(self.tmp, "foreign"),
        }
        self.backends = {label: LabelBackend(label) for label in ("A", "B", "FIN")}
        for backend in self.backends.values():
            self.addCleanup(backend.server.stop)
        self.down = refusedPort(self)
        self.sides: list[Side] = []
        self.sides.append(self.startSockproxy())
        if lighttpdMissing() is None:
            self.sides.append(self.startLighttpd())

    def theirs(self) -> Side:
        """
        lighttpd's side. Where lighttpd cannot run here, this ends the test
        (txsockproxy's side has been checked by then) as skipped, with the
        reason.
        """
        reason = lighttpdMissing()
        if reason is not None:
            raise SkipTest(f"txsockproxy's side passed; lighttpd's side not run: {reason}")
        return self.sides[1]

    def environ(self, ports: dict[str, int]) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SOCKPROXY_CONFIG", None)
        env.update({name: str(port) for name, port in ports.items()})
        env["SP_A"] = str(self.backends["A"].server.port)
        env["SP_B"] = str(self.backends["B"].server.port)
        env["SP_FINB"] = str(self.backends["FIN"].server.port)
        env["SP_DOWN"] = str(self.down)
        env["SP_PEM"] = self.pem
        env["SP_CA"] = self.ca
        return env

    def freePorts(self) -> dict[str, int]:
        return unusedPorts(("SP_HTTP", *SOCKETS))

    def startSockproxy(self) -> Side:
        ports = self.freePorts()
        process = Twistd(["sockproxy", "--config", self.config], cwd=self.tmp,
                         env=self.environ(ports))
        self.addCleanup(process.stop)
        process.waitFor("listening on", count=len(SOCKETS), timeout=START_TIMEOUT)
        # The notices about the lighttpd config are logged at start-up.
        process.waitFor("config notice:", timeout=START_TIMEOUT)
        return Side("txsockproxy", process, ports, "session of 127.0.0.1")

    def startLighttpd(self) -> Side:
        ports = self.freePorts()
        process = Twistd([], cwd=self.tmp, env=self.environ(ports), program=LIGHTTPD,
                         daemonArgs=("-D", "-f", self.config))
        self.addCleanup(process.stop)
        process.waitFor("server started", timeout=START_TIMEOUT)
        # With sockproxy.debug = 1, lighttpd logs each tunnel's end so.
        return Side("lighttpd", process, ports, "released proc")

    def sequential(self, side: Side, socketName: str, count: int = 10,
                   waitForEnd: bool = True) -> list[str]:
        """
        Connect C{count} times one after the other, each time reading the
        label and closing, and waiting until the server has ended the tunnel.
        """
        labels = []
        port = side.ports[socketName]
        for _ in range(count):
            before = side.endedCount()
            label, conn = readLabel(port, Deadline(10, f"{side.name} label"))
            conn.close()
            labels.append(label)
            if waitForEnd and label != "<EOF>":
                side.waitEnded(before + 1)
        return labels

    def concurrent(self, side: Side, socketName: str, count: int = 10) -> list[str]:
        """
        Open C{count} connections, reading each one's label before opening
        the next, and hold them all; then close them.
        """
        labels = []
        conns = []
        try:
            for _ in range(count):
                label, conn = readLabel(side.ports[socketName],
                                        Deadline(10, f"{side.name} label"))
                labels.append(label)
                conns.append(conn)
        finally:
            for conn in conns:
                conn.close()
        return labels

    def both(self, socketName: str, expected: list[str], how: str) -> None:
        """
        Run C{how} (C{"sequential"} or C{"concurrent"}) on socket
        C{socketName} of every server; each must give C{expected}.
        """
        ours = getattr(self, how)(self.sides[0], socketName)
        self.assertEqual(ours, expected, "txsockproxy")
        theirs = getattr(self, how)(self.theirs(), socketName)
        self.assertEqual(theirs, expected, "lighttpd")

    def test_roundRobinSequential(self) -> None:
        """
        Round-robin alternates A, B, A, B, ... on both servers.
        """
        self.both("SP_RR", ALTERNATING, "sequential")

    def test_roundRobinConcurrent(self) -> None:
        """
        Round-robin alternates while all connections are held, on both.
        """
        self.both("SP_RR", ALTERNATING, "concurrent")

    def test_fairSequential(self) -> None:
        """
        Fair with one connection at a time always picks A: loads are back to
        0 after each tunnel, and ties go to the first host, on both.
        """
        self.both("SP_FAIR", ["A"] * 10, "sequential")

    def test_fairConcurrent(self) -> None:
        """
        Fair with every connection held alternates A, B: each goes to the
        least loaded host, on both.
        """
        self.both("SP_FAIR", ALTERNATING, "concurrent")

    def test_failoverPastRefusedBackend(self) -> None:
        """
        Round-robin over C{up} and a refused C{down}: txsockproxy fails the
        connection that meets C{down} over to C{up}; lighttpd 1.4.69 closes
        it (no data, EOF).
        """
        ours = self.sequential(self.sides[0], "SP_FAILOVER", count=6, waitForEnd=False)
        self.assertEqual(ours, ["A"] * 6)
        theirs = self.sequential(self.theirs(), "SP_FAILOVER", count=6, waitForEnd=False)
        self.assertEqual(theirs[:2], ["A", "<EOF>"], theirs)

    def test_tlsTermination(self) -> None:
        """
        C{ssl.engine} with C{ssl.pemfile}: both servers complete the TLS
        handshake with the pemfile's certificate, and relay plaintext.
        """
        certificatePem = certificate().split(b"-----END CERTIFICATE-----")[0]
        expected = ssl.PEM_cert_to_DER_cert(
            (certificatePem + b"-----END CERTIFICATE-----\n").decode())
        self.assertEqual(self.tlsLine(self.sides[0]), (b"A\n", expected), "txsockproxy")
        self.assertEqual(self.tlsLine(self.theirs()), (b"A\n", expected), "lighttpd")

    def tlsLine(self, side: Side) -> tuple[bytes, bytes | None]:
        """
        Complete a TLS handshake with C{side}'s TLS socket; return the first
        line received and the server's certificate (DER).
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        deadline = Deadline(10, f"{side.name} TLS")
        raw = connect(("127.0.0.1", side.ports["SP_TLS"]), timeout=deadline.remaining())
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            peer = conn.getpeercert(binary_form=True)
            line = b""
            while not line.endswith(b"\n"):
                conn.settimeout(deadline.remaining())
                chunk = conn.recv(1)
                if not chunk:
                    break
                line += chunk
        return line, peer

    def clientOutcome(self, side: Side, socketName: str, cert: str) -> str:
        """
        Connect to C{side}'s C{socketName} with TLS, presenting the client
        certificate C{cert} (C{"good"}: from the CA file, C{"foreign"}: from
        another authority, C{"none"}), and read a line.

        @return: C{"A"} when the backend's label came through, else
            C{"refused"} (the handshake failed, or the server closed: with
            TLS 1.3 a refused certificate shows only after the client's
            side of the handshake).
        """
        context = clientContext(cert=self.clientCerts.get(cert))
        deadline = Deadline(10, f"{side.name} client certificate {cert}")
        raw = connect(("127.0.0.1", side.ports[socketName]), timeout=deadline.remaining())
        line = b""
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as conn:
                while not line.endswith(b"\n"):
                    conn.settimeout(deadline.remaining())
                    chunk = conn.recv(1)
                    if not chunk:
                        break
                    line += chunk
        except (ssl.SSLError, ConnectionError):
            return "refused"
        finally:
            raw.close()
        return line.decode().strip() or "refused"

    def clientOutcomes(self, side: Side, socketName: str) -> dict[str, str]:
        return {cert: self.clientOutcome(side, socketName, cert)
                for cert in ("good", "none", "foreign")}

    def test_clientCertificateRequired(self) -> None:
        """
        C{ssl.verifyclient.activate} with C{ssl.ca-file}: both servers relay
        for a client whose certificate is from the CA file, and refuse a
        client without one or with one from another authority.
        """
        expected = {"good": "A", "none": "refused", "foreign": "refused"}
        self.assertEqual(self.clientOutcomes(self.sides[0], "SP_MTLS"), expected,
                         "txsockproxy")
        self.assertEqual(self.clientOutcomes(self.theirs(), "SP_MTLS"), expected, "lighttpd")

    def test_clientCertificateOptional(self) -> None:
        """
        With C{ssl.verifyclient.enforce = "disable"} both servers relay for
        a client without a certificate and one with a certificate from the
        CA file. A certificate from another authority: lighttpd 1.4.69
        accepts it (it only tells HTTP backends, in C{SSL_CLIENT_VERIFY});
        txsockproxy, which cannot tell a socket backend, refuses it.
        """
        ours = self.clientOutcomes(self.sides[0], "SP_MTLS_OPT")
        self.assertEqual(ours, {"good": "A", "none": "A", "foreign": "refused"})
        theirs = self.clientOutcomes(self.theirs(), "SP_MTLS_OPT")
        self.assertEqual(theirs, {"good": "A", "none": "A", "foreign": "A"})

    def loneFin(self, side: Side) -> bytes:
        """
        Send a line, wait until the backend has it, then half-close alone;
        return everything received after the label, until EOF.
        """
        backend = self.backends["FIN"]
        backend.got.clear()
        deadline = Deadline(10, f"{side.name} lone FIN")
        label, conn = readLabel(side.ports["SP_FIN"], deadline)
        with conn:
            self.assertEqual(label, "FIN")
            conn.sendall(b"hello\n")
            # The pause: the FIN leaves only once the data has arrived.
            self.assertTrue(backend.got.wait(deadline.remaining()), "backend got nothing")
            conn.shutdown(socket.SHUT_WR)
            return recvAll(conn, deadline)

    def test_loneFinAfterPause(self) -> None:
        """
        A client that half-closes after a pause still gets the backend's
        answer through txsockproxy, every time; lighttpd 1.4.69 tears the
        tunnel down on a lone FIN and the answer is lost.
        """
        ours = [self.loneFin(self.sides[0]) for _ in range(3)]
        self.assertEqual(ours, [b"saw EOF after 6 bytes\n"] * 3)
        theirs = [self.loneFin(self.theirs()) for _ in range(3)]
        self.assertEqual(theirs, [b""] * 3)


class LighttpdAcceptsTests(SynchronousTestCase):
    """
    The lighttpd configs of the tests, the docs and the examples are
    lighttpd's own syntax: C{lighttpd -tt} (parse, load and set up the
    modules) accepts them.
    """

    def setUp(self) -> None:
        if not os.access(LIGHTTPD, os.X_OK):
            raise SkipTest(f"{LIGHTTPD} is not installed (apt-get install lighttpd)")
        self.tmp = tempfile.mkdtemp(prefix="sockproxy-lt-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def needModOpenssl(self) -> None:
        """
        Skip the test, with the reason, where lighttpd cannot load
        C{mod_openssl}.
        """
        reason = lighttpdMissing()
        if reason is not None:
            raise SkipTest(reason)

    def assertAccepted(self, path: str, env: dict[str, str] | None = None) -> None:
        done = subprocess.run([LIGHTTPD, "-tt", "-f", path], env=env, cwd=self.tmp,
                              capture_output=True, timeout=30, check=False)
        self.assertEqual((done.returncode, done.stderr.decode()), (0, ""), path)

    def test_differentialConfig(self) -> None:
        """
        The config of the differential tests.
        """
        self.needModOpenssl()
        path = os.path.join(self.tmp, "lighttpd.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(CONFIG)
        pem = os.path.join(self.tmp, "server.pem")
        with open(pem, "wb") as f:
            f.write(certificate())
        ca, _ = issue(("Clients CA",), authority=True).write(self.tmp, "ca")
        env = dict(os.environ, SP_PEM=pem, SP_CA=ca)
        env.update({name: str(1000 + i) for i, name in enumerate(
            ("SP_HTTP", *SOCKETS, "SP_A", "SP_B", "SP_FINB", "SP_DOWN"))})
        self.assertAccepted(path, env)

    def test_examples(self) -> None:
        """
        examples/lighttpd/lighttpd.conf, with its include.
        """
        self.assertAccepted(os.path.join(REPO, "examples", "lighttpd", "lighttpd.conf"))

    def test_docExamples(self) -> None:
        """
        The examples of doc/lighttpd-config.md that txsockproxy loads (they
        are fragments: lighttpd also wants a C{server.document-root}). One
        terminates TLS.
        """
        self.needModOpenssl()
        with open(os.path.join(REPO, "doc", "lighttpd-config.md"), encoding="utf-8") as f:
            blocks = re.findall(r"```lighttpd\n(.*?)```", f.read(), re.DOTALL)
        self.assertEqual(len(blocks), 5)
        pem = os.path.join(self.tmp, "server.pem")
        with open(pem, "wb") as f:
            f.write(certificate())
        env = dict(os.environ, BACKEND_HOST="10.0.0.5")
        for i, block in enumerate(blocks):
            path = os.path.join(self.tmp, f"example{i}.conf")
            with open(path, "w", encoding="utf-8") as f:
                f.write('server.document-root = var.CWD\n'
                        + block.replace("/etc/lighttpd/server.pem", pem))
            with self.subTest(block=block):
                self.assertAccepted(path, env)


class DebianConfigTests(SynchronousTestCase):
    """
    Debian's own /etc/lighttpd/lighttpd.conf (its include_shell scripts,
    conf-enabled/ includes and all), with mod_sockproxy enabled the Debian
    way, runs under twistd sockproxy.
    """

    def setUp(self) -> None:
        if not os.path.exists("/etc/lighttpd/lighttpd.conf"):
            raise SkipTest("no /etc/lighttpd/lighttpd.conf (apt-get install lighttpd)")
        self.tmp = tempfile.mkdtemp(prefix="sockproxy-deb-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def test_stockConfig(self) -> None:
        """
        A copy of /etc/lighttpd, changed only to read its own conf-enabled/
        and to listen on a free port, with conf-available/10-sockproxy.conf
        enabled and its example global sockproxy.server uncommented, relays
        to the backend.
        """
        etc = os.path.join(self.tmp, "lighttpd")
        shutil.copytree("/etc/lighttpd", etc, symlinks=False)
        # The lighttpd importer refuses server.port = 0 (lighttpd takes it).
        port = unusedPort()
        main = os.path.join(etc, "lighttpd.conf")
        with open(main, encoding="utf-8") as f:
            text = f.read()
        text = text.replace('"/etc/lighttpd/conf-enabled/', '"conf-enabled/')
        text, count = re.subn(r"(?m)^server\.port\s*=\s*80$", f"server.port = {port}", text)
        self.assertEqual(count, 1, "Debian's lighttpd.conf changed: no server.port = 80")
        with open(main, "w", encoding="utf-8") as f:
            f.write(text)
        backend = LabelBackend("debian")
        self.addCleanup(backend.server.stop)
        with open(os.path.join(etc, "conf-available", "10-sockproxy.conf"),
                  encoding="utf-8") as f:
            enabled = f.read()
        enabled = enabled.replace("#sockproxy.server", "sockproxy.server")
        enabled = re.sub(r"(?m)^#( +[()\"])", r"\1", enabled)
        enabled = enabled.replace('"192.168.0.101"', '"127.0.0.1"').replace(
            "10000", str(backend.server.port))
        with open(os.path.join(etc, "conf-enabled", "10-sockproxy.conf"), "w",
                  encoding="utf-8") as f:
            f.write(enabled)
        process = Twistd(["sockproxy", "--config", main], cwd=self.tmp)
        self.addCleanup(process.stop)
        process.waitFor("listening on", timeout=START_TIMEOUT)
        label, conn = readLabel(port, Deadline(10, "through Debian's config"))
        conn.close()
        self.assertEqual(label, "debian")
        self.assertNoErrors(process)

    def assertNoErrors(self, process: Twistd) -> None:
        self.assertEqual([line for line in process.lines if "Traceback" in line], [])
