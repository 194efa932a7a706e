"""
Reading a file an operator names (a configuration, an include, a certificate,
a key, a token) without being held up by what the path turns out to be: a
FIFO would block the open or the read until a writer came, and C{/dev/zero}
or a huge file would be read until memory ran out.
"""

from __future__ import annotations

import errno
import os
import stat

#: The most a file named in a configuration may hold.
MAX_FILE_SIZE = 32 * 1024 * 1024


def readBounded(path: str, limit: int = MAX_FILE_SIZE) -> bytes:
    """
    The contents of the regular file C{path}, of at most C{limit} bytes.

    @raise OSError: it cannot be opened or read, is not a regular file
        (C{strerror} says so: a directory, a FIFO, a device), or is larger
        than C{limit}; C{strerror} is one line saying which.
    @raise ValueError: the path has a NUL in it.
    """
    # O_NONBLOCK: opening a FIFO does not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(errno.EFBIG, f"larger than {_describe(limit)}")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _describe(limit: int) -> str:
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    return f"{limit} bytes"


__all__ = ["MAX_FILE_SIZE", "readBounded"]
