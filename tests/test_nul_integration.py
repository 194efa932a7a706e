"""
Integration tests: a NUL character in a config value, given to C{twistd
sockproxy} as a user would, with C{--check} and at start-up: exit status 1,
one line naming FILE:LINE and the key, no traceback.
"""

from __future__ import annotations

import os

from tests.test_integration import _IntegrationTestCase

PROXY = '[[proxy]]\nlisten = "tcp:0:interface=127.0.0.1"\n[[proxy.backend]]\nendpoint = "unix:/a"\n'


class NulIntegrationTests(_IntegrationTestCase):
    """
    C{twistd sockproxy --config F [--check]} with a NUL in a value of F.
    """

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.tmp, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def assertOneLine(self, args: list[str], path: str, expected: str) -> None:
        """
        twistd with C{args} exits with status 1, printing one line about
        C{path}, which ends with C{expected}, and no traceback.
        """
        code, output = self.runToExit(args)
        self.assertEqual(code, 1, output)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if path in line]
        self.assertEqual(len(lines), 1, output)
        self.assertTrue(lines[0].endswith(expected), output)

    def test_adminTokenFile(self) -> None:
        """
        An C{admin-token-file} with a NUL (TOML's C{\\u0000}): one line at its
        key, with C{--check} and at start-up.
        """
        path = self.write(
            "nul.toml",
            '[status]\nlisten = "tcp:0:interface=127.0.0.1"\n'
            'admin-token-file = "/etc/tok\\u0000en"\n' + PROXY,
        )
        expected = (f"{path}:3: status.admin-token-file: must not contain a NUL character "
                    "(\\x00): '/etc/tok\\x00en'")
        self.assertOneLine(["sockproxy", "--config", path, "--check"], path, expected)
        self.assertOneLine(["sockproxy", "--config", path], path, expected)

    def test_sessionLog(self) -> None:
        """
        A C{session-log} path with a NUL, which C{--check} used to accept and
        start-up then failed on with a traceback: one line at its key.
        """
        path = self.write("nul.toml", 'session-log = "/tmp/s\\u0000.log"\n' + PROXY)
        expected = (f"{path}:1: session-log: must not contain a NUL character (\\x00): "
                    "'/tmp/s\\x00.log'")
        self.assertOneLine(["sockproxy", "--config", path, "--check"], path, expected)
        self.assertOneLine(["sockproxy", "--config", path], path, expected)

    def test_includeShell(self) -> None:
        """
        A lighttpd C{include_shell} command with a NUL byte in the file: one
        line at the directive.
        """
        path = self.write(
            "nul.conf",
            'server.modules = ( "mod_sockproxy" )\ninclude_shell "echo\0 x"\n'
            '$SERVER["socket"] == "127.0.0.1:0" {\n'
            '  sockproxy.server = ( "" => ( ( "host" => "127.0.0.1", "port" => 9 ) ) )\n}\n',
        )
        expected = (f"{path}:2: include_shell: must not contain a NUL character (\\x00): "
                    "'echo\\x00 x' (column 15)")
        self.assertOneLine(["sockproxy", "--config", path, "--check"], path, expected)
