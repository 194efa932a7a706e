"""
Tests for L{txsockproxy.tap}: the C{twistd sockproxy} command line.
"""

from __future__ import annotations

import io
import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from textwrap import dedent

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor
from twisted.logger import capturedLogs, formatEvent
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.integration_support import TWISTD
from txsockproxy.balancers import balancerNames
from txsockproxy.config import BackendConfig, Config, ProxyConfig
from txsockproxy.loading import loadConfig
from txsockproxy.render import describeConfig
from txsockproxy.tap import Options, makeService

# Endpoint strings only: nothing here resolves a name or touches the network.
CONFIG = dedent(
    """\
    debug = 1
    [[proxy]]
    name = "web"
    listen = "tcp:8080:interface=127.0.0.1"
    balance = "round-robin"
    [[proxy.backend]]
    endpoint = "tcp:host=127.0.0.1:port=10001"
    label = "one"
    [[proxy.backend]]
    host = "/run/two.sock"
    """
)


class OptionsTestCase(SynchronousTestCase):
    """
    Runs L{Options} on a command line, capturing what it prints.
    """

    def options(self) -> Options:
        """
        An L{Options} whose output goes to L{io.StringIO}s.
        """
        options = Options()
        options.stdout = io.StringIO()
        options.stderr = io.StringIO()
        return options

    def parse(self, args: list[str]) -> Options:
        """
        Parse C{args}, which must be valid and not ask to exit.
        """
        options = self.options()
        options.parseOptions(args)
        self.assertEqual(options.stderr.getvalue(), "")
        return options

    def exits(self, args: list[str], code: int) -> tuple[str, str]:
        """
        Parse C{args}, which must exit with C{code}.

        @return: what was printed to stdout and to stderr.
        """
        options = self.options()
        exit = self.assertRaises(SystemExit, options.parseOptions, args)
        self.assertEqual(exit.code, code)
        stdout, stderr = options.stdout.getvalue(), options.stderr.getvalue()
        self.assertNotIn("Traceback", stdout + stderr)
        return stdout, stderr

    def problemLines(self, args: list[str]) -> list[str]:
        """
        Parse C{args}, which must be invalid: they exit 1 and print nothing
        to stdout, and only lines starting C{sockproxy: } to stderr.

        @return: those lines, without the prefix.
        """
        stdout, stderr = self.exits(args, 1)
        self.assertEqual(stdout, "")
        self.assertTrue(stderr.endswith("\n"), stderr)
        lines = stderr[:-1].split("\n")
        for line in lines:
            self.assertTrue(line.startswith("sockproxy: "), stderr)
        return [line[len("sockproxy: "):] for line in lines]

    def writeConfig(self, text: str = CONFIG) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


class CommandLineProxyTests(OptionsTestCase):
    """
    L{Options} builds a one-proxy configuration from C{--listen},
    C{--backend}, C{--balance} and C{--debug}.
    """

    def test_listenAndBackend(self) -> None:
        """
        L{Options} collects repeated C{--listen} (or C{-l}) and C{--backend}
        options, in order, into one proxy with the default balancer.
        """
        options = self.parse(
            [
                "--listen", "tcp:8080",
                "--backend", "tcp:host=127.0.0.1:port=10000",
                "-l", "unix:/run/proxy.sock",
                "--backend", "unix:/run/app.sock",
            ]
        )
        self.assertEqual(
            options["configObject"],
            Config(
                proxies=(
                    ProxyConfig(
                        name="tcp:8080",
                        listen=("tcp:8080", "unix:/run/proxy.sock"),
                        backends=(
                            BackendConfig(
                                "tcp:host=127.0.0.1:port=10000", "tcp:host=127.0.0.1:port=10000"
                            ),
                            BackendConfig("unix:/run/app.sock", "unix:/run/app.sock"),
                        ),
                        balance="fair",
                    ),
                ),
                debug=0,
                source="<command line>",
            ),
        )

    def test_balance(self) -> None:
        """
        L{Options} uses the balancer named by C{--balance}.
        """
        options = self.parse(
            ["--listen", "tcp:1", "--backend", "unix:/a", "--balance", "round-robin"]
        )
        self.assertEqual(options["configObject"].proxies[0].balance, "round-robin")

    def test_debug(self) -> None:
        """
        L{Options} sets the debug level given by C{--debug}.
        """
        options = self.parse(["--listen", "tcp:1", "--backend", "unix:/a", "--debug", "2"])
        self.assertEqual(options["configObject"].debug, 2)

    def test_badDebug(self) -> None:
        """
        L{Options} reports a C{--debug} that is not an integer from 0 to 3.
        """
        for value, message in [("x", "must be an integer 0 to 3, not 'x'"), ("4", "must be 0 to 3, not 4")]:
            lines = self.problemLines(["--listen", "tcp:1", "--backend", "unix:/a", "--debug", value])
            self.assertEqual(lines, [f"<command line>: --debug: {message}"])

    def test_unknownBalancer(self) -> None:
        """
        L{Options} reports an unknown C{--balance}, listing the installed
        balancers.
        """
        lines = self.problemLines(["--listen", "tcp:1", "--backend", "unix:/a", "-b", "nope"])
        self.assertEqual(
            lines,
            [
                "<command line>: --balance: unknown balancer 'nope' "
                f"(available: {', '.join(balancerNames())})"
            ],
        )

    def test_badEndpoints(self) -> None:
        """
        L{Options} reports every bad C{--listen} and C{--backend}, one line
        each.
        """
        lines = self.problemLines(
            ["--listen", "tcp:http", "--backend", "tcp:host=a", "--backend", "nosuch:x"]
        )
        self.assertEqual(
            lines,
            [
                "<command line>: --listen: bad server endpoint 'tcp:http': "
                "expected a whole number, not 'http'",
                "<command line>: --backend: bad client endpoint 'tcp:host=a': missing 'port'",
                "<command line>: --backend: bad client endpoint 'nosuch:x': "
                "Unknown endpoint type: 'nosuch'",
            ],
        )

    def test_listenWithoutBackend(self) -> None:
        """
        L{Options} reports C{--listen} without C{--backend}, and the reverse.
        """
        self.assertEqual(
            self.problemLines(["--listen", "tcp:1"]),
            ["<command line>: --backend: missing: give at least one client endpoint"],
        )
        self.assertEqual(
            self.problemLines(["--backend", "unix:/a"]),
            ["<command line>: --listen: missing: give at least one server endpoint"],
        )

    def test_nothing(self) -> None:
        """
        L{Options} reports a command line giving neither a config file nor a
        proxy.
        """
        self.assertEqual(
            self.problemLines([]),
            ["<command line>: nothing to do: give --config FILE, or --listen and --backend"],
        )
        self.assertEqual(len(self.problemLines(["--check"])), 1)

    def test_unknownOption(self) -> None:
        """
        L{Options} raises L{usage.UsageError} for an option it does not know,
        so that twistd prints the usage and the error and exits 1.
        """
        options = self.options()
        self.assertRaises(usage.UsageError, options.parseOptions, ["--lisen", "tcp:1"])

    def test_conflicts(self) -> None:
        """
        C{--config} twice is a usage error naming both files (not "the last
        one wins"); C{--check} with C{--print-toml} is one line asking for
        one of them.
        """
        path = self.writeConfig()
        error = self.assertRaises(
            usage.UsageError, self.options().parseOptions, ["--config", path, "-c", "b.toml"]
        )
        self.assertEqual(str(error), f"--config given twice ({path!r} and 'b.toml')")
        self.assertEqual(
            self.problemLines(["--config", path, "--check", "--print-toml"]),
            ["--check and --print-toml: give one of them"],
        )


class HelpTests(SynchronousTestCase):
    """
    C{twistd sockproxy --help}.
    """

    def test_descriptionsReadAsWritten(self) -> None:
        """
        Every option's description in the rendered help is single-spaced
        prose: no indentation of a docstring's second line shows inside it
        (as in C{"(repeatable),         e.g."}).
        """
        lines = str(Options()).splitlines()
        start = lines.index("Options:") + 1
        end = lines.index("", start)
        column = lines[start].index("Balancer for")
        descriptions = " ".join(line[column:] for line in lines[start:end])
        self.assertIn("(repeatable), e.g. tcp:9180:interface=127.0.0.1.", descriptions)
        self.assertNotIn("  ", descriptions)


class ConfigFileOptionTests(OptionsTestCase):
    """
    L{Options} loads C{--config}, and C{--debug} alone may override it.
    """

    def test_config(self) -> None:
        """
        L{Options} loads the configuration file given by C{--config}.
        """
        path = self.writeConfig()
        options = self.parse(["--config", path])
        config = options["configObject"]
        self.assertEqual(config, loadConfig(path))
        self.assertEqual(config.source, path)
        self.assertEqual([b.label for b in config.proxies[0].backends], ["one", "unix:path=/run/two.sock"])

    def test_debugOverridesFile(self) -> None:
        """
        L{Options} uses C{--debug} instead of the file's C{debug}, and the
        file's value without it.
        """
        path = self.writeConfig()
        self.assertEqual(self.parse(["--config", path])["configObject"].debug, 1)
        self.assertEqual(self.parse(["-c", path, "--debug", "3"])["configObject"].debug, 3)
        self.assertEqual(self.parse(["--debug", "0", "--config", path])["configObject"].debug, 0)

    def test_configWithCommandLineProxy(self) -> None:
        """
        L{Options} refuses C{--listen}, C{--backend} or C{--balance} with
        C{--config}, naming each option given.
        """
        path = self.writeConfig()
        lines = self.problemLines(
            ["--config", path, "--listen", "tcp:1", "--backend", "unix:/a", "--balance", "fair"]
        )
        message = "cannot be combined with --config: put it in the file (only --debug overrides the file)"
        self.assertEqual(
            lines,
            [f"<command line>: --{name}: {message}" for name in ["listen", "backend", "balance"]],
        )
        self.assertEqual(
            self.problemLines(["--config", path, "--balance", "fair"]),
            [f"<command line>: --balance: {message}"],
        )

    def test_invalidFile(self) -> None:
        """
        L{Options} prints one line per problem of an invalid file, naming the
        file, line and key, and exits 1.
        """
        path = self.writeConfig(
            CONFIG.replace('balance = "round-robin"', 'balance = "nope"\nidle_timeout = 3')
            .replace('label = "one"', "weight = 0")
        )
        lines = self.problemLines(["--config", path])
        self.assertEqual(
            [line.split(": ")[:2] for line in lines],
            [
                [f"{path}:5", "proxy[0].balance"],
                [f"{path}:6", "proxy[0].idle_timeout"],
                [f"{path}:9", "proxy[0].backend[0].weight"],
            ],
        )

    def test_syntaxError(self) -> None:
        """
        L{Options} prints a TOML syntax error as one line with the file and line.
        """
        path = self.writeConfig('[[proxy]]\nlisten = "tcp:1"\nbalance = \n')
        [line] = self.problemLines(["--config", path])
        self.assertTrue(line.startswith(f"{path}:3: TOML syntax error: "), line)

    def test_missingFile(self) -> None:
        """
        L{Options} reports a C{--config} file that cannot be read.
        """
        path = self.mktemp()
        self.assertEqual(
            self.problemLines(["--config", path]),
            [f"{path}: cannot read: No such file or directory"],
        )


class CheckTests(OptionsTestCase):
    """
    C{--check} validates the configuration, prints it, and exits.
    """

    def test_checkFile(self) -> None:
        """
        L{Options} with C{--check} prints the effective configuration of a
        valid file, with C{--debug} applied, and exits 0.
        """
        path = self.writeConfig()
        stdout, stderr = self.exits(["--config", path, "--debug", "2", "--check"], 0)
        self.assertEqual(stderr, "")
        expected = loadConfig(path)
        self.assertEqual(
            stdout, describeConfig(expected).replace("debug = 1", "debug = 2") + "\n"
        )
        self.assertIn("backend 'one': tcp:host=127.0.0.1:port=10001", stdout)

    def test_checkCommandLine(self) -> None:
        """
        L{Options} with C{--check} prints the effective configuration of a
        command-line proxy and exits 0.
        """
        stdout, stderr = self.exits(
            ["--check", "--listen", "tcp:1", "--backend", "unix:/a", "--balance", "round-robin"], 0
        )
        self.assertEqual(stderr, "")
        self.assertIn("# effective configuration from <command line>", stdout)
        self.assertIn("listen              tcp:1", stdout)
        self.assertIn("balance             round-robin", stdout)
        self.assertIn("backend 'unix:/a': unix:/a", stdout)

    def test_checkInvalid(self) -> None:
        """
        L{Options} with C{--check} on an invalid file prints only the
        problems, and exits 1.
        """
        path = self.writeConfig(CONFIG.replace("debug = 1", "debug = 9"))
        self.assertEqual(
            self.problemLines(["--config", path, "--check"]),
            [f"{path}:1: debug: must be 0 to 3, not 9"],
        )


class PrintTomlTests(OptionsTestCase):
    """
    C{--print-toml}.
    """

    def test_defaultsLeftOut(self) -> None:
        """
        C{--print-toml} leaves out the keys a file sets to their default
        (C{debug = 0}, C{balance = "fair"}, a backend's C{weight = 1}) and
        keeps the others.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(dedent(
                """\
                debug = 0
                [[proxy]]
                name = "a"
                listen = "tcp:8080"
                balance = "fair"
                [[proxy.backend]]
                endpoint = "unix:/a"
                weight = 1
                [[proxy]]
                name = "b"
                listen = "tcp:8081"
                balance = "round-robin"
                [[proxy.backend]]
                endpoint = "unix:/b"
                """))
        out, err = self.exits(["--config", path, "--print-toml"], 0)
        self.assertEqual((out, err), (dedent(
            f"""\
            # txsockproxy configuration, from {path}

            [[proxy]]
            name = "a"
            listen = ["tcp:8080"]

            [[proxy.backend]]
            label = "unix:/a"
            endpoint = "unix:/a"

            [[proxy]]
            name = "b"
            listen = ["tcp:8081"]
            balance = "round-robin"

            [[proxy.backend]]
            label = "unix:/b"
            endpoint = "unix:/b"
            """), ""))


class MakeServiceTests(OptionsTestCase):
    """
    L{makeService} builds the proxy service from parsed L{Options}.
    """

    def test_makeService(self) -> None:
        """
        L{makeService} builds the service of the options' configuration on
        the reactor it is given.
        """
        options = self.parse(["--listen", "tcp:0", "--backend", "unix:/a"])
        reactor = MemoryReactorClock()
        service = makeService(options, reactor)
        self.assertIs(service.config, options["configObject"])
        self.assertIs(service.reactor, reactor)

    def test_startupErrorOneLine(self) -> None:
        """
        A listener the configuration's checks let through but that cannot
        be made (OpenSSL refusing its certificates) is one line on stderr
        and exit status 1, not a traceback.
        """
        from txsockproxy import service
        from txsockproxy.service import StartupError

        def refused(*args: object, **kwargs: object) -> None:
            raise StartupError("tcp:8443: cannot use the certificates: ee key too small")

        self.patch(service, "makeProxyService", refused)
        options = self.parse(["--listen", "tcp:0", "--backend", "unix:/a"])
        exit = self.assertRaises(SystemExit, makeService, options, MemoryReactorClock())
        self.assertEqual(exit.code, 1)
        self.assertEqual(
            options.stderr.getvalue(),
            "sockproxy: tcp:8443: cannot use the certificates: ee key too small\n",
        )

    def test_startUpObjectsFrozen(self) -> None:
        """
        L{makeService} collects start-up's garbage and freezes what remains,
        so that the collector's full passes no longer walk it.
        """
        import gc

        gc.unfreeze()
        self.addCleanup(gc.unfreeze)
        options = self.parse(["--listen", "tcp:0", "--backend", "unix:/a"])
        self.assertEqual(gc.get_freeze_count(), 0)
        makeService(options, MemoryReactorClock())
        self.assertGreater(gc.get_freeze_count(), 0)

    def test_debugOverrideSurvivesReload(self) -> None:
        """
        C{--debug} overrides the file's debug after a reload too.
        """
        path = self.mktemp()
        config = '[[proxy]]\nlisten = "tcp:0"\n[[proxy.backend]]\nendpoint = "unix:/a"\n'
        with open(path, "w") as f:
            f.write("debug = 0\n" + config)
        options = self.parse(["--config", path, "--debug", "2"])
        service = makeService(options, MemoryReactorClock())
        self.assertEqual(service.config.debug, 2)
        with open(path, "w") as f:
            f.write("debug = 1\n" + config)
        self.assertTrue(service.reload())
        self.assertEqual(service.config.debug, 2)

    def test_noReactorImport(self) -> None:
        """
        Importing L{txsockproxy.tap} (as twistd does when it scans plugins)
        does not import, and so install, the global reactor.
        """
        code = "import sys, txsockproxy.tap; print('twisted.internet.reactor' in sys.modules)"
        output = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        ).stdout
        self.assertEqual(output, "False\n")


def daemonizingTwistd(**overrides: object) -> usage.Options:
    """
    Options like those of a daemonizing C{twistd} (no C{-n}) that has not
    forked yet, as L{makeService} finds them in its options' C{parent}.
    """
    parent = usage.Options()
    parent.update({"nodaemon": False, "chroot": None, "rundir": ".", "pidfile": "twistd.pid"})
    parent.update(overrides)
    return parent


class BindBeforeDaemonizingTests(OptionsTestCase):
    """
    Under a daemonizing C{twistd}, L{makeService} binds the listeners in the
    process the user started, before twistd forks.
    """

    ARGS = ["--listen", "tcp:5432:interface=127.0.0.1", "--backend", "tcp:host=127.0.0.1:port=1"]

    def daemonOptions(self, **overrides: object) -> Options:
        options = self.parse(self.ARGS)
        options.parent = daemonizingTwistd(**overrides)
        return options

    def test_boundOnce(self) -> None:
        """
        The listeners are bound by L{makeService}; twistd's privileged start
        and start, after the fork, do not bind them again.
        """
        reactor = MemoryReactorClock()
        service = makeService(self.daemonOptions(), reactor)
        self.assertEqual([port for port, *_ in reactor.tcpServers], [5432])
        service.privilegedStartService()
        service.startService()
        self.assertEqual(len(reactor.tcpServers), 1)
        self.assertTrue(service.running)
        self.assertTrue(service.proxy.running)

    def test_bindErrorPrinted(self) -> None:
        """
        A listener that cannot be bound ends L{makeService} with exit status
        1 and one plain line on stderr, in the format of the config's
        errors.
        """
        options = self.daemonOptions()
        reactor = RaisingMemoryReactor(
            listenException=CannotListenError("127.0.0.1", 5432, OSError(98, "Address already in use"))
        )
        exit = self.assertRaises(SystemExit, makeService, options, reactor)
        self.assertEqual(exit.code, 1)
        self.assertEqual(
            options.stderr.getvalue(),
            "sockproxy: Address already in use: cannot listen on tcp:5432:interface=127.0.0.1\n",
        )

    def test_notWhenNotDaemonizing(self) -> None:
        """
        With C{-n}, after twistd has forked (its status pipe is there), and
        with C{--chroot} or C{--rundir} (applied before the fork),
        L{makeService} binds nothing: twistd's privileged start does.
        """
        for overrides in [{"nodaemon": True}, {"statusPipe": 7}, {"chroot": "/srv"},
                          {"rundir": "/srv"}]:
            with self.subTest(overrides=overrides):
                reactor = MemoryReactorClock()
                service = makeService(self.daemonOptions(**overrides), reactor)
                self.assertEqual(reactor.tcpServers, [])
                service.privilegedStartService()
                self.assertEqual([port for port, *_ in reactor.tcpServers], [5432])


class StrandedPidfileTests(OptionsTestCase):
    """
    With C{twistd --uid}, L{makeService} warns when the user it switches to
    will not be able to delete the pidfile at exit.
    """

    NOBODY = 65534

    def setUp(self) -> None:
        # A directory every user may enter: trial's own may be private.
        self.tmp = tempfile.mkdtemp(prefix="sockproxy-pid-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        os.chmod(self.tmp, 0o755)

    def warnings(self, directory: str, mode: int, **twistd: object) -> list[str]:
        """
        The warnings L{makeService} logs for a pidfile in C{directory}, made
        with C{mode}, under a C{twistd -n --uid NOBODY}.
        """
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, mode)
        self.addCleanup(os.chmod, directory, 0o755)
        options = self.parse(["--listen", "tcp:0", "--backend", "unix:/a"])
        defaults: dict[str, object] = {
            "uid": self.NOBODY, "gid": self.NOBODY, "nodaemon": True,
            "pidfile": os.path.join(directory, "twistd.pid"),
        }
        defaults.update(twistd)
        options.parent = daemonizingTwistd(**defaults)
        with capturedLogs() as events:
            makeService(options, MemoryReactorClock())
        return [formatEvent(e) for e in events if e["log_level"].name == "warn"]

    def test_rootsDirectory(self) -> None:
        """
        A pidfile in a directory the user cannot write to is reported, with
        what to do.
        """
        directory = os.path.join(self.tmp, "root")
        self.assertEqual(self.warnings(directory, 0o755), [
            f"{directory}/twistd.pid will be left behind at exit: uid 65534 cannot write "
            f"to {directory}; give the pidfile a directory of its own that uid 65534 "
            f"owns, or run without one"
        ])

    def test_stickyDirectory(self) -> None:
        """
        A pidfile in a sticky directory (such as C{/tmp}) the user does not
        own is reported: the file is root's.
        """
        directory = os.path.join(self.tmp, "sticky")
        [warning] = self.warnings(directory, 0o1777)
        self.assertIn(f"{directory} is sticky and the pidfile is root's", warning)

    def test_closedAncestor(self) -> None:
        """
        A pidfile under a directory the user cannot enter is reported.
        """
        closed = os.path.join(self.tmp, "closed")
        os.makedirs(closed)
        os.chmod(closed, 0o700)
        self.addCleanup(os.chmod, closed, 0o755)
        [warning] = self.warnings(os.path.join(closed, "run"), 0o777)
        self.assertIn(f"uid 65534 cannot enter {closed};", warning)

    def test_writableDirectory(self) -> None:
        """
        No warning when the user may delete the pidfile, when there is no
        pidfile, and without C{--uid}.
        """
        directory = os.path.join(self.tmp, "open")
        self.assertEqual(self.warnings(directory, 0o777), [])
        self.assertEqual(self.warnings(directory, 0o755, pidfile=""), [])
        self.assertEqual(self.warnings(directory, 0o755, uid=None, gid=None), [])

    def test_ownDirectory(self) -> None:
        """
        No warning for a directory the user owns, as the documentation's
        C{/run/sockproxy} (needs root, to give it away).
        """
        if os.getuid() != 0:
            raise SkipTest("giving a directory to another user needs root")
        directory = os.path.join(self.tmp, "own")
        os.makedirs(directory)
        os.chown(directory, self.NOBODY, self.NOBODY)
        self.assertEqual(self.warnings(directory, 0o755), [])


class StartupErrorAfterForkTests(OptionsTestCase):
    """
    A start-up error after a daemonizing twistd has forked goes to the
    parent waiting on twistd's status pipe.
    """

    def test_pidfileRemovedBeforeParentIsTold(self) -> None:
        """
        The pidfile is deleted before the reason is written to the status
        pipe: once the parent (and the shell that started it) has exited,
        no pidfile is left.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        pidfile = os.path.abspath(self.mktemp())
        with open(pidfile, "w") as f:
            f.write("1234")
        options = self.parse(["--listen", "tcp:5432", "--backend", "unix:/a"])
        options.parent = daemonizingTwistd(statusPipe=write, pidfile=pidfile)
        service = makeService(options, RaisingMemoryReactor(
            listenException=CannotListenError("", 5432, OSError(98, "Address already in use"))))
        realWrite = os.write
        seen = []

        def write_(fd: int, data: bytes) -> int:
            if fd == write:
                seen.append((data, os.path.exists(pidfile)))
            return realWrite(fd, data)

        self.patch(os, "write", write_)
        with capturedLogs():
            self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(seen, [(b"1 Address already in use: cannot listen on tcp:5432", False)])


class DaemonizingIntegrationTests(SynchronousTestCase):
    """
    Integration tests: a real daemonizing C{twistd sockproxy} (no C{-n}), run
    as a user would.
    """

    def test_bindErrorIsPlainText(self) -> None:
        """
        A daemonizing twistd whose listen port is taken prints the reason as
        one plain line (not twistd's C{An error has occurred: b'...'}),
        exits with status 1, and leaves no pidfile and no log behind.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        tmp = self.mktemp()
        os.makedirs(tmp)
        pidfile = os.path.join(tmp, "twistd.pid")
        logfile = os.path.join(tmp, "twistd.log")
        done = subprocess.run(
            [TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", "sockproxy",
             "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--backend", "tcp:host=127.0.0.1:port=1"],
            cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(
            (done.returncode, done.stdout, done.stderr),
            (1, "", f"sockproxy: Address already in use: cannot listen on "
                    f"tcp:{port}:interface=127.0.0.1\n"),
        )
        self.assertEqual(os.listdir(tmp), [])

    def test_errorAfterForkLeavesNoPidfile(self) -> None:
        """
        A start-up error after the fork (a session log file that cannot be
        opened) reaches the terminal through twistd's own message, with exit
        status 1; the pidfile is gone by the time twistd has exited.
        """
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        config = os.path.join(tmp, "sockproxy.toml")
        with open(config, "w") as f:
            f.write(dedent(
                """\
                session-log = "/nonexistent/sessions.log"
                [[proxy]]
                listen = "tcp:0:interface=127.0.0.1"
                [[proxy.backend]]
                endpoint = "tcp:host=127.0.0.1:port=1"
                """))
        done = subprocess.run(
            [TWISTD, "--pidfile=twistd.pid", "--logfile=twistd.log", "sockproxy",
             "--config", config],
            cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        reason = "cannot open session-log '/nonexistent/sessions.log': No such file or directory"
        self.assertEqual(
            (done.returncode, done.stderr),
            (1, f'An error has occurred: b"{reason}"\nPlease look at log file for more information.\n'),
        )
        self.assertEqual(sorted(os.listdir(tmp)), ["sockproxy.toml", "twistd.log"])

    def runAndStop(self, piddir: str, *twistdArgs: str) -> tuple[bool, str]:
        """
        Start a daemonizing C{twistd sockproxy} with its pidfile in
        C{piddir}, stop it with C{SIGTERM}, and wait until it has exited.

        @return: whether the pidfile is still there, and the log.
        """
        tmp = os.path.dirname(piddir)
        pidfile = os.path.join(piddir, "twistd.pid")
        logfile = os.path.join(tmp, "twistd.log")
        done = subprocess.run(
            [TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", *twistdArgs, "sockproxy",
             "--listen", "tcp:0:interface=127.0.0.1", "--backend", "tcp:host=127.0.0.1:port=1"],
            cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        with open(pidfile) as f:
            pid = int(f.read())
        # The signal handlers are installed once the reactor runs: until
        # then SIGTERM would kill it outright. The reactor is running once
        # the proxy has answered a client (by closing it: no backend).
        with open(logfile) as f:
            [port] = re.findall(r"ProxyFactory starting on (\d+)", f.read())
        with socket.create_connection(("127.0.0.1", int(port)), timeout=30) as client:
            try:
                self.assertEqual(client.recv(1), b"")
            except ConnectionResetError:
                pass
        # Not our child (twistd forked twice): wait on a pidfd.
        pidfd = os.pidfd_open(pid)
        self.addCleanup(os.close, pidfd)
        os.kill(pid, signal.SIGTERM)
        readable, _, _ = select.select([pidfd], [], [], 30)
        self.assertEqual(readable, [pidfd], "twistd did not exit within 30s")
        with open(logfile) as f:
            return os.path.exists(pidfile), f.read()

    def test_pidfileOfSwitchedUser(self) -> None:
        """
        With C{-u nobody -g nogroup}, a pidfile in a directory root owns is
        left behind at exit, as L{makeService} warns in the log; in a
        directory of its own that nobody owns (doc/deployment.md's
        C{/run/sockproxy}) it is deleted.
        """
        if os.getuid() != 0:
            raise SkipTest("switching user needs root")
        # Not under trial's temporary directory: nobody must be able to
        # enter every directory above the pidfile.
        tmp = tempfile.mkdtemp(prefix="sockproxy-pid-")
        self.addCleanup(shutil.rmtree, tmp, True)
        os.chmod(tmp, 0o755)
        rootsDir = os.path.join(tmp, "root")
        os.makedirs(rootsDir)
        switch = ("-u", "nobody", "-g", str(pwd.getpwnam("nobody").pw_gid))
        left, log = self.runAndStop(rootsDir, *switch)
        self.assertTrue(left)
        self.assertIn(f"{rootsDir}/twistd.pid will be left behind at exit", log)
        ownDir = os.path.join(tmp, "sockproxy")
        os.makedirs(ownDir)
        os.chown(ownDir, pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
        os.remove(os.path.join(tmp, "twistd.log"))
        left, log = self.runAndStop(ownDir, *switch)
        self.assertFalse(left)
        self.assertNotIn("left behind", log)


class WorkersServiceTests(OptionsTestCase):
    """
    L{makeService} with the C{workers} key.
    """

    def configFile(self, workers: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f'workers = {workers}\n[[proxy]]\nlisten = "tcp:0"\n'
                    '[[proxy.backend]]\nendpoint = "tcp:host=127.0.0.1:port=1"\n')
        return path

    def test_oneWorkerIsOneProcess(self) -> None:
        """
        C{workers = 1} builds the single-process L{ProxyService}, as without
        the key.
        """
        from txsockproxy.service import ProxyService

        service = makeService(self.parse(["--config", self.configFile("1")]),
                              MemoryReactorClock())
        self.assertIsInstance(service, ProxyService)

    def test_workersParent(self) -> None:
        """
        C{workers = 3} builds the parent of 3 workers, on the reactor given;
        the command line's C{--debug} is handed on to them.
        """
        from txsockproxy.workers import WorkersService

        reactor = MemoryReactorClock()
        options = self.parse(["--config", self.configFile("3"), "--debug", "2"])
        service = makeService(options, reactor)
        self.assertIsInstance(service, WorkersService)
        self.assertEqual((service.count, service.debug, service.reactor), (3, 2, reactor))
        self.assertEqual(len(service.workers), 3)
