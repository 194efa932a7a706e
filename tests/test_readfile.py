"""
Tests for L{txsockproxy.readfile}: files an operator names are read without
hanging on a FIFO or reading a device or a huge file without end.
"""

from __future__ import annotations

import errno
import os

from twisted.trial.unittest import SynchronousTestCase

from txsockproxy.config import ConfigError
from txsockproxy.loading import loadConfig
from txsockproxy.readfile import readBounded
from txsockproxy.tomlconfig import readToken


class ReadBoundedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_regularFile(self) -> None:
        """
        A regular file up to the limit is read whole.
        """
        path = self.write("a", b"x" * 100)
        self.assertEqual(readBounded(path, 100), b"x" * 100)

    def test_tooLarge(self) -> None:
        """
        A file over the limit is refused, saying so.
        """
        path = self.write("big", b"x" * 101)
        error = self.assertRaises(OSError, readBounded, path, 100)
        self.assertEqual((error.errno, error.strerror), (errno.EFBIG, "larger than 100 bytes"))

    def test_fifoDoesNotBlock(self) -> None:
        """
        A FIFO (no writer) is refused at once, not waited on.
        """
        path = os.path.join(self.dir, "fifo")
        os.mkfifo(path)
        error = self.assertRaises(OSError, readBounded, path)
        self.assertEqual(error.strerror, "not a regular file")

    def test_device(self) -> None:
        """
        A device such as C{/dev/zero} is refused, not read without end.
        """
        error = self.assertRaises(OSError, readBounded, "/dev/zero")
        self.assertEqual(error.strerror, "not a regular file")

    def test_directory(self) -> None:
        """
        A directory is refused as the system would (C{EISDIR}).
        """
        error = self.assertRaises(OSError, readBounded, self.dir)
        self.assertEqual(error.errno, errno.EISDIR)


class NamedFilesTests(SynchronousTestCase):
    """
    The configuration file and the files it names go through it: one line
    for each of these mistakes.
    """

    def test_configFile(self) -> None:
        """
        A configuration path that is a device or a FIFO is one problem.
        """
        fifo = os.path.abspath(self.mktemp())
        os.mkfifo(fifo)
        for path in ("/dev/zero", fifo):
            error = self.assertRaises(ConfigError, loadConfig, path)
            self.assertEqual(
                [str(p) for p in error.problems], [f"{path}: cannot read: not a regular file"]
            )

    def test_tokenFile(self) -> None:
        """
        So is an admin token file that is a device.
        """
        self.assertEqual(
            readToken("/dev/zero"), ("", "cannot read '/dev/zero': not a regular file")
        )
